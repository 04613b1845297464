//! Sizes and ranges as people type them: `4096`, `64K`, `2MiB`, `0x1000`, `1M:64K`.

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
    fn ranges_and_keys_parse() {
        assert_eq!(parse_range("1M:64K"), Ok((1 << 20, 64 << 10)));
        assert!(parse_range("1M").is_err());
        assert_eq!(parse_key("0x1a2b"), Ok(0x1a2b));
        assert_eq!(parse_key("17"), Ok(17));
        assert!(parse_key("0x1_0000_0000").is_err());
    }
}
