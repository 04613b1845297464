//! The decoded form of a probe event: what `odp-ctl trace` prints and writes as JSON Lines, and
//! what the analysis (and `monitor --replay`) reads back. The one decoder from the raw ABI.

use bpf_common::{
    mmu_event_name, Method, OdpEvent, Point, FLAG_HAS_RET, FLAG_KTHREAD, FLAG_PREFETCH,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One probe event, decoded. Addresses are hex strings in JSON so they survive any JSON reader.
/// Names borrow from the event and the build's static tables, so writing a live event out
/// allocates nothing; a parsed one owns its strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<'a> {
    /// Nanoseconds on CLOCK_MONOTONIC at entry.
    pub ts_ns: u64,
    pub duration_ns: u64,
    pub point: Cow<'a, str>,
    pub group: Cow<'a, str>,
    pub method: Cow<'a, str>,
    pub pid: u32,
    pub tid: u32,
    pub comm: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kthread: bool,
    /// A fault taken on behalf of a prefetch, not by the device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
    /// The RDMA device, for umem registrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(with = "hex")]
    pub obj: u64,
    #[serde(with = "hex")]
    pub mm: u64,
    #[serde(with = "hex")]
    pub start: u64,
    #[serde(with = "hex")]
    pub end: u64,
    pub args: [u64; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    /// mmu_notifier_event name for invalidations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Cow<'a, str>>,
    /// Raw aux value (event kind, page-fault error code).
    pub aux: u32,
}

/// Addresses as "0x..." strings in JSON, for every serialized type of the crate.
pub mod hex {
    use serde::de::Visitor;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        // On the stack: a trace streams four of these per event.
        let mut buf = [0u8; 18];
        s.serialize_str(format(*v, &mut buf))
    }

    /// `v` as `{v:#x}` prints it, into `buf`.
    pub fn format(v: u64, buf: &mut [u8; 18]) -> &str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let digits = (16 - v.leading_zeros() as usize / 4).max(1);
        buf[0] = b'0';
        buf[1] = b'x';
        for i in 0..digits {
            buf[1 + digits - i] = DIGITS[((v >> (4 * i)) & 0xf) as usize];
        }
        // Only ASCII was written.
        std::str::from_utf8(&buf[..2 + digits]).unwrap_or("0x?")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        // A visitor, not String::deserialize: replaying a capture reads four of these per
        // event, and the allocation was a fifth of the parse.
        d.deserialize_str(HexVisitor)
    }

    struct HexVisitor;

    impl Visitor<'_> for HexVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a hex string such as \"0x7f00\"")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<u64, E> {
            let digits = text.strip_prefix("0x").unwrap_or(text);
            u64::from_str_radix(digits, 16).map_err(E::custom)
        }
    }
}

impl<'a> Record<'a> {
    pub fn from_event(e: &'a OdpEvent) -> Self {
        let point = e.point();
        Record {
            ts_ns: e.ts_ns,
            duration_ns: e.duration_ns,
            point: point.map_or_else(
                || Cow::Owned(format!("unknown_{}", e.point)),
                |p| Cow::Borrowed(p.name()),
            ),
            group: Cow::Borrowed(point.map_or("unknown", |p| p.group().name())),
            method: Cow::Borrowed(e.method().map_or("unknown", |m| m.name())),
            pid: e.pid,
            tid: e.tid,
            comm: e.comm_str(),
            kthread: e.in_kernel_thread(),
            prefetch: e.in_prefetch(),
            device: e.device(),
            obj: e.obj,
            mm: e.mm,
            start: e.start,
            end: e.end,
            args: e.args,
            ret: e.has_ret().then_some(e.ret),
            event: e.mmu_event().map(|v| Cow::Borrowed(mmu_event_name(v))),
            aux: e.aux,
        }
    }

    pub fn point(&self) -> Option<Point> {
        Point::by_name(&self.point)
    }

    /// Back to the ABI form, so a recorded stream feeds the same analysis as a live one.
    /// None for a point this build does not know.
    pub fn to_event(&self) -> Option<OdpEvent> {
        let point = self.point()?;
        let method = Method::ALL
            .iter()
            .copied()
            .find(|m| m.name() == self.method)
            .map_or(0, |m| m as u8);
        let mut comm = [0u8; 16];
        for (dst, src) in comm.iter_mut().take(15).zip(self.comm.bytes()) {
            *dst = src;
        }
        let mut flags = 0;
        for (set, flag) in [
            (self.ret.is_some(), FLAG_HAS_RET),
            (self.kthread, FLAG_KTHREAD),
            (self.prefetch, FLAG_PREFETCH),
        ] {
            if set {
                flags |= flag;
            }
        }
        Some(OdpEvent {
            ts_ns: self.ts_ns,
            duration_ns: self.duration_ns,
            obj: self.obj,
            mm: self.mm,
            start: self.start,
            end: self.end,
            args: self.args,
            ret: self.ret.unwrap_or(0),
            pid: self.pid,
            tid: self.tid,
            point: point as u16,
            method,
            flags,
            aux: self.aux,
            comm,
        })
    }

    /// One human line; `t0` is the session's start on the same clock.
    pub fn human(&self, t0: u64) -> String {
        let t = self.ts_ns.saturating_sub(t0) as f64 / 1e9;
        let mut line = format!(
            "{t:12.6} {:<18} {:<15} {:>7}/{:<7}",
            self.point, self.comm, self.pid, self.tid
        );
        if self.obj != 0 {
            line.push_str(&format!(" obj={:#x}", self.obj));
        }
        if self.end > self.start {
            line.push_str(&format!(
                " [{:#x}, {:#x}) {}B",
                self.start,
                self.end,
                self.end - self.start
            ));
        } else if self.start != 0 {
            line.push_str(&format!(" addr={:#x}", self.start));
        }
        if let Some(device) = &self.device {
            line.push_str(&format!(" dev={device}"));
        }
        if self.prefetch {
            line.push_str(" prefetch");
        }
        if let Some(event) = &self.event {
            line.push_str(&format!(" event={event}"));
        }
        if self.duration_ns > 0 {
            line.push_str(&format!(" dur={:.1}us", self.duration_ns as f64 / 1e3));
        }
        if let Some(ret) = self.ret {
            if ret < 0 && ret > -4096 {
                line.push_str(&format!(
                    " ret={ret} ({})",
                    crate::error::errno_name(-ret as i32)
                ));
            } else {
                line.push_str(&format!(" ret={ret}"));
            }
        }
        line
    }
}

/// One event as a line of JSON (the `trace --json` and `monitor --record` format).
pub fn write_json_line<W: std::io::Write>(out: &mut W, e: &OdpEvent) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &Record::from_event(e))?;
    out.write_all(b"\n")
}

/// CLOCK_MONOTONIC now, in the BPF timestamps' units.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; the ids used here exist on every supported kernel.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The host's clocks read together: what lines events (stamped on the monotonic clock) up
/// with other traces of the same host (perf and system traces use boottime) and wall time.
/// A recording's first line, `{"clocks": {...}}`, carries the reading taken when its probes
/// attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReading {
    pub boottime_ns: u64,
    pub monotonic_ns: u64,
    pub realtime_ns: u64,
}

impl ClockReading {
    pub fn now() -> ClockReading {
        // Back to back: the offsets between the three are good to a few microseconds.
        // Monotonic first, so boottime (monotonic plus time suspended) is never behind it.
        let monotonic_ns = clock_ns(libc::CLOCK_MONOTONIC);
        let boottime_ns = clock_ns(libc::CLOCK_BOOTTIME);
        let realtime_ns = clock_ns(libc::CLOCK_REALTIME);
        ClockReading {
            boottime_ns,
            monotonic_ns,
            realtime_ns,
        }
    }
}

/// The first line of a recording: its clock reading.
pub fn write_clock_line<W: std::io::Write>(
    out: &mut W,
    clocks: &ClockReading,
) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &serde_json::json!({ "clocks": clocks }))?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpf_common::Method;

    #[test]
    fn records_round_trip_through_json() {
        let e = OdpEvent {
            ts_ns: 5_000,
            duration_ns: 1_500,
            obj: 0xffff_8880_1234_0000,
            mm: 0xffff_8880_0000_1000,
            start: 0x7f00_0000_0000,
            end: 0x7f00_0000_1000,
            point: Point::RxeInvalidate as u16,
            method: Method::Fentry as u8,
            flags: FLAG_HAS_RET | FLAG_KTHREAD,
            ret: 1,
            aux: 1,
            pid: 42,
            tid: 43,
            ..OdpEvent::default()
        };
        let r = Record::from_event(&e);
        assert_eq!(r.point, "rxe_invalidate");
        assert_eq!(r.event.as_deref(), Some("CLEAR"));
        assert!(r.kthread);
        let line = serde_json::to_string(&r).expect("json");
        assert!(line.contains("\"obj\":\"0xffff888012340000\""), "{line}");
        let back: Record = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, r);
        assert_eq!(back.point(), Some(Point::RxeInvalidate));
        assert_eq!(
            back.to_event(),
            Some(e),
            "JSON and back gives the same event"
        );
    }

    #[test]
    fn hex_matches_the_standard_formatting() {
        let mut buf = [0u8; 18];
        for v in [
            0,
            1,
            0xf,
            0x10,
            0xdead_beef,
            0x7f00_0000_1000,
            u64::MAX,
            1 << 63,
        ] {
            assert_eq!(hex::format(v, &mut buf), format!("{v:#x}"));
        }
    }

    #[test]
    fn a_json_line_is_the_record_and_a_newline() {
        let e = OdpEvent {
            point: Point::InvRangeStart as u16,
            comm: *b"odp-ctl\0\0\0\0\0\0\0\0\0",
            start: 0x7f00_0000_0000,
            end: 0x7f00_0020_0000,
            ..OdpEvent::default()
        };
        let mut out = Vec::new();
        write_json_line(&mut out, &e).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        let (line, rest) = text.split_once('\n').expect("one line");
        assert_eq!(rest, "");
        let back: Record = serde_json::from_str(line).expect("parse");
        assert_eq!(back, Record::from_event(&e));
        assert_eq!(back.comm, "odp-ctl");
        assert_eq!(back.event.as_deref(), Some("UNMAP"));
    }

    #[test]
    fn human_lines_name_errnos() {
        let e = OdpEvent {
            point: Point::MapDma as u16,
            flags: FLAG_HAS_RET,
            ret: -16,
            start: 0x1000,
            end: 0x3000,
            ..OdpEvent::default()
        };
        let line = Record::from_event(&e).human(0);
        assert!(
            line.contains("fault") && line.contains("ret=-16 (EBUSY)") && line.contains("8192B"),
            "{line}"
        );
    }
}
