//! The event ABI shared by the BPF C programs and Rust.
//!
//! Owns: `include/odp_events.h` (the one C header the BPF code includes) and its Rust mirror,
//! with tests that the mirror matches the header's numbering and (in odp-ebpf, against the
//! skeleton's generated types) its layout.
//! Must not: load BPF, interpret sequences of events, or depend on other workspace crates.

use serde::Serialize;

mod catalog;

pub use catalog::{Arg, Aux, Group, Kind, Obj, Point, Row, Uprobe};

/// The C header, for tools and tests that need to check themselves against it.
pub const HEADER: &str = include_str!("../include/odp_events.h");

/// `struct odp_event`, byte for byte.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OdpEvent {
    pub ts_ns: u64,
    pub duration_ns: u64,
    pub obj: u64,
    pub mm: u64,
    pub start: u64,
    pub end: u64,
    pub args: [u64; 4],
    pub ret: i64,
    pub pid: u32,
    pub tid: u32,
    pub point: u16,
    pub method: u8,
    pub flags: u8,
    pub aux: u32,
    pub comm: [u8; 16],
}

/// `struct odp_cpu_fault`, byte for byte: the compact record of a CPU page fault.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OdpCpuFault {
    pub ts_ns: u64,
    pub mm: u64,
    pub address: u64,
    pub pid: u32,
    pub tid: u32,
    pub point: u16,
    pub method: u8,
    pub flags: u8,
    pub error_code: u32,
    pub comm: [u8; 16],
}

impl From<OdpCpuFault> for OdpEvent {
    fn from(f: OdpCpuFault) -> Self {
        OdpEvent {
            ts_ns: f.ts_ns,
            mm: f.mm,
            start: f.address,
            end: f.address.wrapping_add(1),
            pid: f.pid,
            tid: f.tid,
            point: f.point,
            method: f.method,
            flags: f.flags,
            aux: f.error_code,
            comm: f.comm,
            ..OdpEvent::default()
        }
    }
}

// A batch of compact records must never have the length of a full one.
const _: () = assert!(size_of::<OdpEvent>() % size_of::<OdpCpuFault>() != 0);

/// Copies a plain-old-data record out of ring-buffer bytes of exactly its size.
fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; read_record is only used with the repr(C) records of
    // this module, plain old data with no invalid bit patterns, and read_unaligned copes with
    // the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub const FLAG_HAS_RET: u8 = 1 << 0;
pub const FLAG_KTHREAD: u8 = 1 << 1;
pub const FLAG_PREFETCH: u8 = 1 << 2;

impl OdpEvent {
    /// Decodes a ring-buffer record, told apart by length: one full event, or one or more
    /// compact CPU faults (the BPF side writes them in per-CPU batches); nothing for any other
    /// length.
    pub fn records(bytes: &[u8]) -> impl Iterator<Item = OdpEvent> + '_ {
        let full = read_record::<OdpEvent>(bytes);
        let compact = size_of::<OdpCpuFault>();
        let faults = if full.is_none() && !bytes.is_empty() && bytes.len() % compact == 0 {
            bytes.chunks_exact(compact)
        } else {
            bytes[..0].chunks_exact(compact)
        };
        full.into_iter()
            .chain(faults.filter_map(|chunk| read_record::<OdpCpuFault>(chunk).map(Into::into)))
    }

    pub fn point(&self) -> Option<Point> {
        Point::from_raw(self.point)
    }

    pub fn method(&self) -> Option<Method> {
        Method::from_raw(self.method)
    }

    pub fn comm(&self) -> String {
        self.comm_str().into_owned()
    }

    /// The task name borrowed from the event (copied only if it is not UTF-8).
    pub fn comm_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        String::from_utf8_lossy(&self.comm[..end])
    }

    pub fn has_ret(&self) -> bool {
        self.flags & FLAG_HAS_RET != 0
    }

    pub fn in_kernel_thread(&self) -> bool {
        self.flags & FLAG_KTHREAD != 0
    }

    pub fn in_prefetch(&self) -> bool {
        self.flags & FLAG_PREFETCH != 0
    }
}

/// How a point was attached (`enum odp_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Fentry = 1,
    Kprobe = 2,
    TpBtf = 3,
    Tracepoint = 4,
    Uprobe = 5,
}

impl Method {
    pub const ALL: &'static [Method] = &[
        Method::Fentry,
        Method::Kprobe,
        Method::TpBtf,
        Method::Tracepoint,
        Method::Uprobe,
    ];

    pub fn from_raw(raw: u8) -> Option<Method> {
        Some(match raw {
            1 => Method::Fentry,
            2 => Method::Kprobe,
            3 => Method::TpBtf,
            4 => Method::Tracepoint,
            5 => Method::Uprobe,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Fentry => "fentry",
            Method::Kprobe => "kprobe",
            Method::TpBtf => "tp_btf",
            Method::Tracepoint => "tracepoint",
            Method::Uprobe => "uprobe",
        }
    }
}

/// `enum odp_mmu_event` names (the kernel's `mmu_notifier_event`, renumbered for the ABI by the
/// BPF side), for the aux of points whose row says `Aux::MmuEvent`.
pub fn mmu_event_name(aux: u32) -> &'static str {
    match aux {
        0 => "UNMAP",
        1 => "CLEAR",
        2 => "PROTECTION_VMA",
        3 => "PROTECTION_PAGE",
        4 => "SOFT_DIRTY",
        5 => "RELEASE",
        6 => "MIGRATE",
        7 => "EXCLUSIVE",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `ODP_POINT_X = N` in the header, as (name, value).
    fn header_points() -> Vec<(String, u16)> {
        HEADER
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let rest = line.strip_prefix("ODP_POINT_")?;
                let (name, value) = rest.split_once('=')?;
                let value = value.split_whitespace().next()?.trim_end_matches(',');
                Some((format!("ODP_POINT_{}", name.trim()), value.parse().ok()?))
            })
            .filter(|(name, _)| name != "ODP_POINT_NONE" && name != "ODP_POINT_MAX")
            .collect()
    }

    #[test]
    fn rust_points_match_the_c_header_exactly() {
        let header = header_points();
        assert_eq!(header.len(), Point::ALL.len(), "{header:?}");
        for (name, value) in &header {
            let point =
                Point::from_raw(*value).unwrap_or_else(|| panic!("{name} = {value} missing"));
            assert_eq!(&point.c_name(), name, "value {value}");
        }
    }

    #[test]
    fn mmu_event_names_match_the_c_header() {
        let mut seen = 0;
        for line in HEADER.lines() {
            let Some(rest) = line.trim().strip_prefix("ODP_MMU_") else {
                continue;
            };
            let (name, value) = rest.split_once(" = ").expect("NAME = value");
            let value: u32 = value
                .split(',')
                .next()
                .and_then(|v| v.trim().parse().ok())
                .expect("a number");
            assert_eq!(mmu_event_name(value), name, "{line}");
            seen += 1;
        }
        assert_eq!(seen, 9);
        assert_eq!(mmu_event_name(8), "UNKNOWN");
    }

    #[test]
    fn flags_match_the_c_header() {
        for (name, value) in [
            ("ODP_FLAG_HAS_RET", FLAG_HAS_RET),
            ("ODP_FLAG_KTHREAD", FLAG_KTHREAD),
            ("ODP_FLAG_PREFETCH", FLAG_PREFETCH),
        ] {
            let line = HEADER
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} not in the header"));
            let shift: u8 = line
                .split("<< ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("cannot read {line}"));
            assert_eq!(1u8 << shift, value, "{name}");
        }
    }

    #[test]
    fn device_names_decode_from_umem_registrations() {
        let mut e = OdpEvent {
            point: Point::UmemGet as u16,
            ..OdpEvent::default()
        };
        let mut name = [0u8; 16];
        name[..7].copy_from_slice(b"mlx5_12");
        e.args[2] = u64::from_ne_bytes(name[..8].try_into().expect("8 bytes"));
        e.args[3] = u64::from_ne_bytes(name[8..].try_into().expect("8 bytes"));
        assert_eq!(e.device().as_deref(), Some("mlx5_12"));
        e.point = Point::MapDma as u16;
        assert_eq!(e.device(), None, "only registrations carry a name");
    }

    #[test]
    fn event_layout_has_no_hidden_padding() {
        assert_eq!(std::mem::size_of::<OdpEvent>(), 120);
        assert_eq!(std::mem::align_of::<OdpEvent>(), 8);
        assert_eq!(std::mem::offset_of!(OdpEvent, ret), 80);
        assert_eq!(std::mem::offset_of!(OdpEvent, point), 96);
        assert_eq!(std::mem::offset_of!(OdpEvent, comm), 104);
        // With the ring buffer's 8-byte record header: exactly one cache line.
        assert_eq!(std::mem::size_of::<OdpCpuFault>(), 56);
        assert_eq!(std::mem::offset_of!(OdpCpuFault, point), 32);
        assert_eq!(std::mem::offset_of!(OdpCpuFault, comm), 40);
    }

    /// A record as the ring buffer would hand it over.
    fn bytes_of<T: Copy>(record: &T) -> &[u8] {
        // SAFETY: only used with this module's repr(C) records, plain old data without
        // padding (see event_layout_has_no_hidden_padding); the slice borrows the record.
        unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn records_decode_and_short_ones_are_refused() {
        let mut e = OdpEvent {
            point: Point::MapDma as u16,
            method: Method::Kprobe as u8,
            flags: FLAG_HAS_RET,
            ret: -16,
            ..OdpEvent::default()
        };
        e.comm[..4].copy_from_slice(b"test");
        let bytes = bytes_of(&e);
        let decoded: Vec<OdpEvent> = OdpEvent::records(bytes).collect();
        assert_eq!(decoded.len(), 1);
        let d = decoded[0];
        assert_eq!(d.point(), Some(Point::MapDma));
        assert_eq!(d.method(), Some(Method::Kprobe));
        assert_eq!(d.comm(), "test");
        assert!(d.has_ret() && d.ret == -16);
        assert_eq!(OdpEvent::records(&bytes[..119]).count(), 0);
        assert_eq!(OdpEvent::records(&[0u8; 129]).count(), 0);
        assert_eq!(OdpEvent::records(&[]).count(), 0);
    }

    #[test]
    fn a_compact_cpu_fault_decodes_as_the_full_event_it_stands_for() {
        let mut f = OdpCpuFault {
            ts_ns: 7,
            mm: 0xffff_8880_1234_0000,
            address: 0x7f00_0000_1000,
            pid: 42,
            tid: 43,
            point: Point::PageFaultUser as u16,
            method: Method::TpBtf as u8,
            flags: 0,
            error_code: 6,
            comm: [0; 16],
        };
        f.comm[..10].copy_from_slice(b"fault_loop");
        let bytes = bytes_of(&f);
        assert_eq!(bytes.len(), 56);
        let mut expected = OdpEvent {
            ts_ns: 7,
            mm: 0xffff_8880_1234_0000,
            start: 0x7f00_0000_1000,
            end: 0x7f00_0000_1001,
            pid: 42,
            tid: 43,
            point: Point::PageFaultUser as u16,
            method: Method::TpBtf as u8,
            aux: 6,
            ..OdpEvent::default()
        };
        expected.comm = f.comm;
        assert_eq!(OdpEvent::records(bytes).collect::<Vec<_>>(), vec![expected]);
        assert_eq!(OdpEvent::records(&bytes[..55]).count(), 0);

        // A batch: consecutive compact records in one ring-buffer record, in order.
        let mut batch = Vec::new();
        let mut want = Vec::new();
        for i in 0..3u64 {
            let mut g = f;
            g.address += i * 4096;
            batch.extend_from_slice(bytes_of(&g));
            let mut e = expected;
            e.start += i * 4096;
            e.end += i * 4096;
            want.push(e);
        }
        assert_eq!(OdpEvent::records(&batch).collect::<Vec<_>>(), want);
        assert_eq!(OdpEvent::records(&batch[..batch.len() - 1]).count(), 0);
    }
}
