//! The event ABI shared by the BPF C programs and Rust.
//!
//! Owns: `include/odp_events.h` (the one C header the BPF code includes) and its Rust mirror,
//! with tests that the mirror matches the header's numbering and (in odp-ebpf, against the
//! skeleton's generated types) its layout.
//! Must not: load BPF, interpret sequences of events, or depend on other workspace crates.

use serde::Serialize;

/// The C header, for tools and tests that need to check themselves against it.
pub const HEADER: &str = include_str!("../include/odp_events.h");

/// `struct odp_event`, byte for byte.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

    /// The ib_device name carried by umem registrations (UMEM_GET, UMEM_ALLOC_IMPLICIT).
    pub fn device(&self) -> Option<String> {
        if !matches!(
            self.point(),
            Some(Point::UmemGet | Point::UmemAllocImplicit)
        ) {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.args[2].to_ne_bytes());
        bytes[8..].copy_from_slice(&self.args[3].to_ne_bytes());
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(16);
        (end > 0).then(|| String::from_utf8_lossy(&bytes[..end]).into_owned())
    }
}

macro_rules! points {
    ($($variant:ident = $value:literal, $name:literal, $group:ident, $target:literal;)*) => {
        /// Probe points (`enum odp_point`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(u16)]
        pub enum Point {
            $($variant = $value,)*
        }

        impl Point {
            pub const ALL: &'static [Point] = &[$(Point::$variant,)*];

            pub fn from_raw(raw: u16) -> Option<Point> {
                match raw {
                    $($value => Some(Point::$variant),)*
                    _ => None,
                }
            }

            /// Short stable name used in output and filters.
            pub fn name(self) -> &'static str {
                match self {
                    $(Point::$variant => $name,)*
                }
            }

            pub fn group(self) -> Group {
                match self {
                    $(Point::$variant => Group::$group,)*
                }
            }

            /// The kernel function, tracepoint or library symbol probed.
            pub fn target(self) -> &'static str {
                match self {
                    $(Point::$variant => $target,)*
                }
            }

            /// The C enumerator's name, e.g. ODP_POINT_MAP_DMA.
            pub fn c_name(self) -> String {
                let mut out = String::from("ODP_POINT_");
                for (i, ch) in stringify_variant(self).chars().enumerate() {
                    if ch.is_ascii_uppercase() && i > 0 {
                        out.push('_');
                    }
                    out.push(ch.to_ascii_uppercase());
                }
                out
            }
        }

        fn stringify_variant(p: Point) -> &'static str {
            match p {
                $(Point::$variant => stringify!($variant),)*
            }
        }
    };
}

points! {
    UmemGet = 1, "umem_get", IbCore, "ib_umem_odp_get";
    UmemAllocImplicit = 2, "umem_alloc_implicit", IbCore, "ib_umem_odp_alloc_implicit";
    UmemAllocChild = 3, "umem_alloc_child", IbCore, "ib_umem_odp_alloc_child";
    UmemRelease = 4, "umem_release", IbCore, "ib_umem_odp_release";
    MapDma = 5, "fault", IbCore, "ib_umem_odp_map_dma_and_lock";
    UnmapDma = 6, "unmap", IbCore, "ib_umem_odp_unmap_dma_pages";
    InvRangeStart = 10, "inv_range_start", Mm, "__mmu_notifier_invalidate_range_start";
    InvRangeEnd = 11, "inv_range_end", Mm, "__mmu_notifier_invalidate_range_end";
    ReadBegin = 12, "read_begin", Mm, "mmu_interval_read_begin";
    HmmFault = 13, "hmm_fault", Mm, "hmm_range_fault";
    HmmFaultTimeout = 14, "hmm_fault_timeout", Mm, "hmm_range_fault_unlocked_timeout";
    RxeInvalidate = 20, "rxe_invalidate", Rxe, "rxe_ib_invalidate_range";
    RxeMrInit = 21, "rxe_mr_init", Rxe, "rxe_odp_mr_init_user";
    RxeMapRange = 22, "rxe_map_range", Rxe, "rxe_odp_map_range_and_lock";
    RxeAdvise = 23, "rxe_advise", Rxe, "rxe_ib_advise_mr";
    RxePrefetchWork = 24, "rxe_prefetch_work", Rxe, "rxe_ib_prefetch_mr_work";
    RxeMrCopy = 25, "rxe_mr_copy", Rxe, "rxe_odp_mr_copy";
    Mlx5Invalidate = 30, "mlx5_invalidate", Mlx5, "mlx5_ib_invalidate_range";
    Mlx5PagefaultMr = 31, "mlx5_pagefault_mr", Mlx5, "pagefault_mr";
    Mlx5PagefaultReal = 32, "mlx5_pagefault_real", Mlx5, "pagefault_real_mr";
    Mlx5PagefaultImplicit = 33, "mlx5_pagefault_implicit", Mlx5, "pagefault_implicit_mr";
    Mlx5PfSingleSeg = 34, "mlx5_pf_single_seg", Mlx5, "pagefault_single_data_segment";
    Mlx5PfResume = 35, "mlx5_pf_resume", Mlx5, "mlx5_ib_page_fault_resume";
    Mlx5Advise = 36, "mlx5_advise", Mlx5, "mlx5_ib_advise_mr_prefetch";
    Mlx5PrefetchWork = 37, "mlx5_prefetch_work", Mlx5, "mlx5_ib_prefetch_mr_work";
    PageFaultUser = 40, "page_fault_user", Cpu, "exceptions:page_fault_user";
    VerbsRegMr = 50, "verbs_reg_mr", Verbs, "ibv_reg_mr_iova2";
    VerbsDeregMr = 51, "verbs_dereg_mr", Verbs, "ibv_dereg_mr";
    VerbsAdvise = 52, "verbs_advise", Verbs, "ibv_cmd_advise_mr";
    VerbsGetDevices = 53, "verbs_get_devices", Verbs, "ibv_get_device_list";
}

/// Where a point lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    IbCore,
    Mm,
    Rxe,
    Mlx5,
    Cpu,
    Verbs,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::IbCore => "ib_core",
            Group::Mm => "mm",
            Group::Rxe => "rxe",
            Group::Mlx5 => "mlx5",
            Group::Cpu => "cpu",
            Group::Verbs => "verbs",
        }
    }

    /// The kernel module whose BTF describes the group's functions (None: vmlinux).
    pub fn module(self) -> Option<&'static str> {
        match self {
            Group::IbCore => Some("ib_core"),
            Group::Rxe => Some("rdma_rxe"),
            Group::Mlx5 => Some("mlx5_ib"),
            Group::Mm | Group::Cpu | Group::Verbs => None,
        }
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

/// `enum mmu_notifier_event` names (6.18 numbering), for INV_RANGE_* and *_INVALIDATE aux.
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
