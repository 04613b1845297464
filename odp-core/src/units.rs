//! Sizes, ranges and durations as people type them: `4096`, `64K`, `2MiB`, `0x1000`, `1M:64K`,
//! `500ms`, `10s`, `2m`.

use std::time::Duration;

/// Parses a byte count with an optional binary suffix (K, M, G, T; `iB`/`B` tolerated).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return usize::from_str_radix(hex, 16).map_err(|_| format!("bad hex size {text:?}"));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    let value: u128 = digits
        .parse()
        .map_err(|_| format!("bad size {text:?}: expected a number like 4096, 64K or 2M"))?;
    let unit = suffix.trim().trim_end_matches("iB").trim_end_matches('B');
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("bad size suffix in {text:?}: use K, M, G or T")),
    };
    let bytes = value << shift;
    usize::try_from(bytes)
        .ok()
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| format!("size {text:?} overflows the address space"))
}

/// Parses `OFFSET:LENGTH` (both sizes).
pub fn parse_range(text: &str) -> Result<(usize, usize), String> {
    let (off, len) = text
        .split_once(':')
        .ok_or_else(|| format!("bad range {text:?}: expected OFFSET:LENGTH, e.g. 0:64K"))?;
    Ok((parse_size(off)?, parse_size(len)?))
}

/// Parses a 32-bit key in decimal or 0x-hex.
pub fn parse_key(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("bad key {text:?}: expected a 32-bit number"))
}

/// The longest duration any flag or scenario accepts: longer than any run anyone means, and
/// short enough that adding it to a clock reading or summing a few of them cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 24 * 3600);

/// A duration of `secs` seconds, if it is a number from 0 to MAX_DURATION.
pub fn duration_from_secs(secs: f64, text: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {text:?}"));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("duration {text:?} is too long (at most 100 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a duration: a number with ms, us, s (default), m or h; at most MAX_DURATION.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use 10s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s, m or h")),
    };
    duration_from_secs(secs, text)
}

/// A size in the shortest binary unit that keeps it readable: 4K, 1.5M, 512M.
pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// serde's `skip_serializing_if` for a count left out of a report while it is zero.
pub fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("").is_err());
        assert!(parse_size("4Q")
            .expect_err("must be refused")
            .contains("suffix"));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T")
            .expect_err("must be refused")
            .contains("overflows"));
    }

    #[test]
    fn durations_past_the_bound_are_refused_not_overflowed() {
        for text in [
            "9999999999999999999999",
            "10000000000000000000",
            "1e30",
            "101d",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(parse_duration("2400h"), Ok(MAX_DURATION));
        assert!(parse_duration("2401h").is_err());
        assert!(duration_from_secs(1e300, "1e300").is_err());
        assert!(duration_from_secs(f64::NAN, "nan").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").expect_err("unit").contains("unit"));
    }

    #[test]
    fn ranges_and_keys_parse() {
        assert_eq!(parse_range("1M:64K"), Ok((1 << 20, 64 << 10)));
        assert!(parse_range("1M").is_err());
        assert_eq!(parse_key("0x1a2b"), Ok(0x1a2b));
        assert_eq!(parse_key("17"), Ok(17));
        assert!(parse_key("0x1_0000_0000").is_err());
    }
}
