//! The catalog: one row per probe point, declared once. A row says where the point lives, what
//! its event means to the engine (its kind), what `obj`, `aux` and each of `args[0..4]` hold,
//! and, for library points, which functions carry it. Everything else (the engine, trace output,
//! stress matching, the loader) asks the row; `include/odp_events.h` documents the same
//! arguments next to the kernel signature they come from, and a test holds the two together.

use serde::Serialize;

use crate::OdpEvent;

/// What a point's event means to the correlation engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new ODP umem, the kernel's side of an MR (explicit, or the root of an implicit one).
    Register {
        implicit: bool,
    },
    /// A child umem of an implicit MR.
    RegisterChild,
    Release,
    /// A device page fault: the map-and-lock call every driver makes (or a prefetch's).
    Fault,
    /// One attempt of a fault: reads the notifier sequence, sleeping behind an invalidation.
    SequenceRead,
    /// HMM's walk of the CPU page tables inside a fault; -EBUSY sends the fault round again.
    HmmFault,
    /// The driver's zap of its own mappings.
    Unmap,
    /// The driver's invalidate callback on one MR.
    DriverInvalidate,
    /// An mm-wide notifier range, at its start and its end.
    NotifierStart,
    NotifierEnd,
    /// A driver's own MR setup for ODP.
    DriverRegister,
    /// A driver's device-fault step whose failure leaves the fault unresolved (rxe).
    DriverMap,
    /// A driver's device-fault handler, timed only (mlx5: the verdict is in the resume).
    DriverFault,
    /// The driver's resume of a faulted queue, with an error when the fault stays unresolved.
    FaultResume,
    /// The driver's copy to or from ODP memory.
    DriverCopy,
    /// The driver's handling of ibv_advise_mr.
    Advise,
    /// The work item of an asynchronous prefetch.
    PrefetchWork,
    /// A CPU page fault in user space.
    CpuFault,
    /// MR registration in libibverbs.
    VerbsRegister,
    /// Any other libibverbs call: it names the process behind an address space.
    VerbsCall,
    /// The requester's transport gave up waiting: a retry, retry exhaustion, or an RNR NAK.
    RequesterRetry,
}

impl Kind {
    /// Fires for every address space on the machine, not only for ODP memory.
    pub fn mm_wide(self) -> bool {
        matches!(
            self,
            Kind::NotifierStart
                | Kind::NotifierEnd
                | Kind::SequenceRead
                | Kind::HmmFault
                | Kind::CpuFault
        )
    }

    /// An invalidation the kernel reports: a driver callback, or the start of a notifier range
    /// (whose end closes the same invalidation).
    pub fn starts_invalidation(self) -> bool {
        matches!(self, Kind::DriverInvalidate | Kind::NotifierStart)
    }
}

/// What `obj` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Obj {
    /// The struct ib_umem_odp concerned (returned, for registrations; 0 when they fail).
    Umem,
    /// The struct mmu_notifier_range.
    NotifierRange,
    /// The struct rxe_mr.
    RxeMr,
    /// The driver's MR (struct mlx5_ib_mr).
    DriverMr,
    /// The struct mlx5_ib_dev.
    Device,
    /// The struct mlx5_pagefault.
    PageFault,
    /// The struct ib_pd (or ibv_pd in user space).
    Pd,
    /// The struct work_struct of the prefetch.
    Work,
    /// The user's struct ibv_mr.
    VerbsMr,
    /// The device list returned.
    DeviceList,
    /// The driver's QP (struct rxe_qp).
    Qp,
    /// Nothing.
    None,
}

/// What `aux` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aux {
    None,
    /// `enum mmu_notifier_event` of the range.
    MmuEvent,
    /// The page fault's error code (x86 PF_* bits).
    ErrorCode,
    /// mlx5_ib_page_fault_resume's `error` (1: the fault is left unresolved).
    ResumeError,
    /// Transport retries, retry exhaustions, RNR NAKs received and RNR retry exhaustions, one
    /// count per byte from the low one.
    RetryCounts,
}

macro_rules! args {
    ($name:ident { $($variant:ident => $text:literal,)* }) => {
        /// The names of the point-specific values in `args[0..4]`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name the C header uses for it.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}

args!(Arg {
    Access => "access",
    FaultRequested => "fault",
    RootUmem => "root",
    Umem => "umem",
    NotifierFlags => "range_flags",
    Sequence => "cur_seq",
    Iova => "iova",
    MapFlags => "flags",
    CopyDirection => "dir",
    Advice => "advice",
    AdviseFlags => "advise_flags",
    SgList => "sg_list",
    SgeCount => "num_sge",
    Lkey => "lkey",
    Rkey => "rkey",
    DeviceName => "device_name",
    DeviceCount => "num_devices",
    UserVirt => "io_virt",
    UserVa => "user_va",
    ByteCount => "bcnt",
    BytesMapped => "bytes_mapped",
    BytesCommitted => "bytes_committed",
    FaultFlags => "pf_flags",
    OdpUmem => "odp",
    Pd => "pd",
    Key => "key",
    ResponderQp => "responder_qp",
    ResponderPsn => "responder_psn",
    QpNum => "qp_num",
    DestQp => "dest_qp",
    Psn => "psn",
    NextPsn => "next_psn",
});

/// One `args` slot: named, or unused.
macro_rules! slot {
    (_) => {
        None
    };
    ($arg:ident) => {
        Some(Arg::$arg)
    };
}

macro_rules! points {
    ($(
        $variant:ident = $value:literal {
            name: $name:literal, group: $group:ident, kind: $kind:expr, target: $target:literal,
            obj: $obj:ident, args: [$($slot:tt),*] $(, aux: $aux:ident)?
            $(, uprobes: [$($uprobe:expr),* $(,)?])? $(,)?
        }
    )*) => {
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

            /// What the point's event means to the engine (the row's kind, read without the
            /// row: the engine asks it of every event).
            #[inline]
            pub fn kind(self) -> Kind {
                match self {
                    $(Point::$variant => $kind,)*
                }
            }

            /// Short stable name used in output and filters (the row's name, read without the
            /// row: a recording is read by name, event by event).
            #[inline]
            pub fn name(self) -> &'static str {
                match self {
                    $(Point::$variant => $name,)*
                }
            }

            /// The point's catalog row.
            pub fn row(self) -> &'static Row {
                match self {
                    // Each row a constant, so the reference is 'static.
                    $(Point::$variant => {
                        const ROW: Row = Row {
                        name: $name,
                        variant: stringify!($variant),
                        group: Group::$group,
                        kind: $kind,
                        target: $target,
                        obj: Obj::$obj,
                        args: [$(slot!($slot)),*],
                        aux: points!(@aux $($aux)?),
                        uprobes: &[$($($uprobe),*)?],
                        };
                        &ROW
                    })*
                }
            }
        }
    };
    (@aux) => { Aux::None };
    (@aux $aux:ident) => { Aux::$aux };
}

/// A libibverbs function behind a library point: the entry program, the return program (None
/// where the function tail-jumps into another one that has it), and the symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uprobe {
    pub entry: &'static str,
    pub exit: Option<&'static str>,
    pub symbol: &'static str,
}

const fn uprobe(entry: &'static str, exit: Option<&'static str>, symbol: &'static str) -> Uprobe {
    Uprobe {
        entry,
        exit,
        symbol,
    }
}

/// Everything the toolkit knows about one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Short stable name used in output and filters.
    pub name: &'static str,
    variant: &'static str,
    pub group: Group,
    pub kind: Kind,
    /// The kernel function, tracepoint or library symbol probed.
    pub target: &'static str,
    pub obj: Obj,
    pub args: [Option<Arg>; 4],
    pub aux: Aux,
    /// Library points: the functions that carry it (MR registration has several entries).
    pub uprobes: &'static [Uprobe],
}

points! {
    UmemGet = 1 {
        name: "umem_get", group: IbCore, kind: Kind::Register { implicit: false },
        target: "ib_umem_odp_get", obj: Umem, args: [Access, _, DeviceName, DeviceName],
    }
    UmemAllocImplicit = 2 {
        name: "umem_alloc_implicit", group: IbCore, kind: Kind::Register { implicit: true },
        target: "ib_umem_odp_alloc_implicit", obj: Umem,
        args: [Access, _, DeviceName, DeviceName],
    }
    UmemAllocChild = 3 {
        name: "umem_alloc_child", group: IbCore, kind: Kind::RegisterChild,
        target: "ib_umem_odp_alloc_child", obj: Umem, args: [RootUmem, _, _, _],
    }
    UmemRelease = 4 {
        name: "umem_release", group: IbCore, kind: Kind::Release,
        target: "ib_umem_odp_release", obj: Umem, args: [_, _, _, _],
    }
    MapDma = 5 {
        name: "fault", group: IbCore, kind: Kind::Fault,
        target: "ib_umem_odp_map_dma_and_lock", obj: Umem,
        args: [Access, FaultRequested, ResponderQp, ResponderPsn],
    }
    UnmapDma = 6 {
        name: "unmap", group: IbCore, kind: Kind::Unmap,
        target: "ib_umem_odp_unmap_dma_pages", obj: Umem, args: [_, _, _, _],
    }
    InvRangeStart = 10 {
        name: "inv_range_start", group: Mm, kind: Kind::NotifierStart,
        target: "__mmu_notifier_invalidate_range_start", obj: NotifierRange,
        args: [NotifierFlags, _, _, _], aux: MmuEvent,
    }
    InvRangeEnd = 11 {
        name: "inv_range_end", group: Mm, kind: Kind::NotifierEnd,
        target: "__mmu_notifier_invalidate_range_end", obj: NotifierRange,
        args: [NotifierFlags, _, _, _], aux: MmuEvent,
    }
    ReadBegin = 12 {
        name: "read_begin", group: Mm, kind: Kind::SequenceRead,
        target: "mmu_interval_read_begin", obj: Umem, args: [_, _, _, _],
    }
    HmmFault = 13 {
        name: "hmm_fault", group: Mm, kind: Kind::HmmFault,
        target: "hmm_range_fault", obj: Umem, args: [_, _, _, _],
    }
    HmmFaultTimeout = 14 {
        name: "hmm_fault_timeout", group: Mm, kind: Kind::HmmFault,
        target: "hmm_range_fault_unlocked_timeout", obj: Umem, args: [_, _, _, _],
    }
    RxeInvalidate = 20 {
        name: "rxe_invalidate", group: Rxe, kind: Kind::DriverInvalidate,
        target: "rxe_ib_invalidate_range", obj: Umem, args: [NotifierFlags, Sequence, _, _],
        aux: MmuEvent,
    }
    RxeMrInit = 21 {
        name: "rxe_mr_init", group: Rxe, kind: Kind::DriverRegister,
        target: "rxe_odp_mr_init_user", obj: RxeMr, args: [Access, Iova, _, _],
    }
    RxeMapRange = 22 {
        name: "rxe_map_range", group: Rxe, kind: Kind::DriverMap,
        target: "rxe_odp_map_range_and_lock", obj: RxeMr,
        args: [MapFlags, Umem, ResponderQp, ResponderPsn],
    }
    RxeAdvise = 23 {
        name: "rxe_advise", group: Rxe, kind: Kind::Advise,
        target: "rxe_ib_advise_mr", obj: Pd, args: [Advice, AdviseFlags, SgeCount, _],
    }
    RxePrefetchWork = 24 {
        name: "rxe_prefetch_work", group: Rxe, kind: Kind::PrefetchWork,
        target: "rxe_ib_prefetch_mr_work", obj: Work, args: [_, _, _, _],
    }
    RxeMrCopy = 25 {
        name: "rxe_mr_copy", group: Rxe, kind: Kind::DriverCopy,
        target: "rxe_odp_mr_copy", obj: RxeMr,
        args: [CopyDirection, Umem, ResponderQp, ResponderPsn],
    }
    RxeCompleter = 27 {
        name: "rxe_completer", group: Rxe, kind: Kind::RequesterRetry,
        target: "rxe_completer", obj: Qp, args: [QpNum, DestQp, Psn, NextPsn],
        aux: RetryCounts,
    }
    Mlx5Invalidate = 30 {
        name: "mlx5_invalidate", group: Mlx5, kind: Kind::DriverInvalidate,
        target: "mlx5_ib_invalidate_range", obj: Umem, args: [NotifierFlags, Sequence, _, _],
        aux: MmuEvent,
    }
    Mlx5PagefaultMr = 31 {
        name: "mlx5_pagefault_mr", group: Mlx5, kind: Kind::DriverFault,
        target: "pagefault_mr", obj: DriverMr,
        args: [UserVirt, ByteCount, BytesMapped, FaultFlags],
    }
    Mlx5PagefaultReal = 32 {
        name: "mlx5_pagefault_real", group: Mlx5, kind: Kind::DriverFault,
        target: "pagefault_real_mr", obj: DriverMr,
        args: [OdpUmem, UserVa, ByteCount, BytesMapped],
    }
    Mlx5PagefaultImplicit = 33 {
        name: "mlx5_pagefault_implicit", group: Mlx5, kind: Kind::DriverFault,
        target: "pagefault_implicit_mr", obj: DriverMr,
        args: [OdpUmem, UserVa, ByteCount, BytesMapped],
    }
    Mlx5PfSingleSeg = 34 {
        name: "mlx5_pf_single_seg", group: Mlx5, kind: Kind::DriverFault,
        target: "pagefault_single_data_segment", obj: Device,
        args: [Pd, Key, UserVirt, ByteCount],
    }
    Mlx5PfResume = 35 {
        name: "mlx5_pf_resume", group: Mlx5, kind: Kind::FaultResume,
        target: "mlx5_ib_page_fault_resume", obj: PageFault, args: [_, _, _, _],
        aux: ResumeError,
    }
    Mlx5Advise = 36 {
        name: "mlx5_advise", group: Mlx5, kind: Kind::Advise,
        target: "mlx5_ib_advise_mr_prefetch", obj: Pd,
        args: [Advice, AdviseFlags, SgList, SgeCount],
    }
    Mlx5PrefetchWork = 37 {
        name: "mlx5_prefetch_work", group: Mlx5, kind: Kind::PrefetchWork,
        target: "mlx5_ib_prefetch_mr_work", obj: Work, args: [_, _, _, _],
    }
    PageFaultUser = 40 {
        name: "page_fault_user", group: Cpu, kind: Kind::CpuFault,
        target: "exceptions:page_fault_user", obj: None, args: [_, _, _, _], aux: ErrorCode,
    }
    // The entry stubs tail-jump into ibv_reg_mr_iova2; a return probe on each stub as well
    // would stack two uretprobes on one return, which loses the event on 7.3. ibv_reg_mr_ex
    // (rdma-core >= 59, arguments in a struct) has its own path, which ibv_reg_buf_mr
    // (rdma-core >= 64, what ibv_rc_pingpong 65 uses) takes.
    VerbsRegMr = 50 {
        name: "verbs_reg_mr", group: Verbs, kind: Kind::VerbsRegister,
        target: "ibv_reg_mr_iova2", obj: VerbsMr, args: [Access, Lkey, Rkey, Iova],
        uprobes: [
            uprobe("uprobe_reg_mr", Some("uretprobe_reg_mr"), "ibv_reg_mr_iova2"),
            uprobe("uprobe_reg_mr", None, "ibv_reg_mr_iova"),
            uprobe("uprobe_reg_mr_noiova", None, "ibv_reg_mr"),
            uprobe("uprobe_reg_mr_noiova", None, "__ibv_reg_mr"),
            uprobe("uprobe_reg_mr_ex", Some("uretprobe_reg_mr"), "ibv_reg_mr_ex"),
        ],
    }
    VerbsDeregMr = 51 {
        name: "verbs_dereg_mr", group: Verbs, kind: Kind::VerbsCall,
        target: "ibv_dereg_mr", obj: VerbsMr, args: [_, Lkey, _, _],
        uprobes: [uprobe("uprobe_dereg_mr", Some("uretprobe_dereg_mr"), "ibv_dereg_mr")],
    }
    VerbsAdvise = 52 {
        name: "verbs_advise", group: Verbs, kind: Kind::VerbsCall,
        target: "ibv_cmd_advise_mr", obj: Pd, args: [Advice, AdviseFlags, SgeCount, Lkey],
        uprobes: [uprobe("uprobe_advise_mr", Some("uretprobe_advise_mr"), "ibv_cmd_advise_mr")],
    }
    VerbsGetDevices = 53 {
        name: "verbs_get_devices", group: Verbs, kind: Kind::VerbsCall,
        target: "ibv_get_device_list", obj: DeviceList, args: [DeviceCount, _, _, _],
        uprobes: [uprobe(
            "uprobe_get_device_list",
            Some("uretprobe_get_device_list"),
            "ibv_get_device_list"
        )],
    }
}

impl Point {
    pub fn group(self) -> Group {
        self.row().group
    }

    /// The kernel function, tracepoint or library symbol probed.
    pub fn target(self) -> &'static str {
        self.row().target
    }

    /// Attached only when asked for by name: it fires on every acknowledgement, which under an
    /// emulator costs a run with probes more than all the other points together, and only the
    /// two-host commands read it.
    pub fn on_request(self) -> bool {
        self == Point::RxeCompleter
    }

    /// The point by its short name.
    pub fn by_name(name: &str) -> Option<Point> {
        Point::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// The C enumerator's name, e.g. ODP_POINT_MAP_DMA.
    pub fn c_name(self) -> String {
        let mut out = String::from("ODP_POINT_");
        for (i, ch) in self.row().variant.chars().enumerate() {
            if ch.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
    }
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
    pub const ALL: &'static [Group] = &[
        Group::IbCore,
        Group::Mm,
        Group::Rxe,
        Group::Mlx5,
        Group::Cpu,
        Group::Verbs,
    ];

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

    /// Probed as kernel functions (fentry or kprobe), not a tracepoint or a library.
    pub fn is_kernel_function(self) -> bool {
        !matches!(self, Group::Cpu | Group::Verbs)
    }
}

/// The point-specific values of an event, read by their catalog names.
impl OdpEvent {
    /// The value the point's row names `arg`, if the point carries it.
    pub fn arg(&self, arg: Arg) -> Option<u64> {
        let row = self.point()?.row();
        let slot = row.args.iter().position(|a| *a == Some(arg))?;
        Some(self.args[slot])
    }

    /// The ib_umem_odp the event concerns, whether it is `obj` or an argument.
    pub fn umem(&self) -> Option<u64> {
        match self.point()?.row().obj {
            Obj::Umem => Some(self.obj),
            _ => self.arg(Arg::Umem),
        }
    }

    /// Access flags of a registration or a fault (IB_ACCESS_* / IBV_ACCESS_*).
    pub fn access(&self) -> Option<u64> {
        self.arg(Arg::Access)
    }

    /// The root umem of an implicit MR's child.
    pub fn root_umem(&self) -> Option<u64> {
        self.arg(Arg::RootUmem)
    }

    pub fn lkey(&self) -> Option<u32> {
        self.arg(Arg::Lkey).map(|v| v as u32)
    }

    pub fn rkey(&self) -> Option<u32> {
        self.arg(Arg::Rkey).map(|v| v as u32)
    }

    /// ibv_advise_mr's advice (IB_UVERBS_ADVISE_MR_ADVICE_*).
    pub fn advice(&self) -> Option<u32> {
        self.arg(Arg::Advice).map(|v| v as u32)
    }

    /// ibv_advise_mr's flags (IB_UVERBS_ADVISE_MR_FLAG_FLUSH = 1: synchronous).
    pub fn advise_flags(&self) -> Option<u32> {
        self.arg(Arg::AdviseFlags).map(|v| v as u32)
    }

    /// `enum mmu_notifier_event` of an invalidation.
    pub fn mmu_event(&self) -> Option<u32> {
        (self.point()?.row().aux == Aux::MmuEvent).then_some(self.aux)
    }

    /// The ib_device name carried by umem registrations (UMEM_GET, UMEM_ALLOC_IMPLICIT).
    pub fn device(&self) -> Option<String> {
        let row = self.point()?.row();
        let first = row.args.iter().position(|a| *a == Some(Arg::DeviceName))?;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.args[first].to_ne_bytes());
        bytes[8..].copy_from_slice(&self.args.get(first + 1)?.to_ne_bytes());
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(16);
        (end > 0).then(|| String::from_utf8_lossy(&bytes[..end]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HEADER;

    /// The lines of the header's comment block just above `name`'s enumerator.
    fn header_doc(c_name: &str) -> Vec<String> {
        let lines: Vec<&str> = HEADER.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("{c_name} =")))
            .unwrap_or_else(|| panic!("{c_name} not in the header"));
        let mut doc = Vec::new();
        for line in lines[..at].iter().rev() {
            let t = line.trim();
            if !(t.starts_with("/*") || t.starts_with('*')) {
                break;
            }
            doc.push(
                t.trim_start_matches("/*")
                    .trim_start_matches('*')
                    .trim()
                    .to_string(),
            );
        }
        doc.reverse();
        doc
    }

    #[test]
    fn the_header_documents_each_points_arguments_as_the_catalog_names_them() {
        for &point in Point::ALL {
            let doc = header_doc(&point.c_name());
            let function = point.target().rsplit(':').next().unwrap_or_default();
            assert!(
                doc.iter().any(|l| l.contains(function)),
                "{point:?}: the header should show {function}'s signature: {doc:?}"
            );
            let args_line = doc
                .iter()
                .find_map(|l| l.strip_prefix("args:"))
                .unwrap_or_else(|| panic!("{point:?}: no 'args:' line in {doc:?}"));
            let in_header: Vec<&str> = args_line
                .trim()
                .trim_end_matches("*/")
                .split(',')
                .map(str::trim)
                .collect();
            let in_catalog: Vec<&str> = point
                .row()
                .args
                .iter()
                .map(|a| a.map_or("-", Arg::name))
                .collect();
            assert_eq!(in_header, in_catalog, "{point:?}");
        }
    }

    #[test]
    fn library_points_and_only_they_name_their_functions() {
        for &point in Point::ALL {
            let row = point.row();
            assert_eq!(
                row.group == Group::Verbs,
                !row.uprobes.is_empty(),
                "{point:?}"
            );
            if row.group == Group::Verbs {
                assert!(
                    row.uprobes
                        .iter()
                        .any(|u| u.symbol == row.target && u.exit.is_some()),
                    "{point:?}: its target must be probed on return"
                );
            }
        }
    }

    #[test]
    fn the_fast_accessors_agree_with_the_rows() {
        for &point in Point::ALL {
            assert_eq!(point.name(), point.row().name);
            assert_eq!(point.kind(), point.row().kind);
        }
    }

    #[test]
    fn names_and_arguments_are_unambiguous() {
        let mut names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Point::ALL.len());
        for &point in Point::ALL {
            for arg in Arg::ALL {
                let slots = point
                    .row()
                    .args
                    .iter()
                    .filter(|a| **a == Some(*arg))
                    .count();
                // The device name spans two slots; every other value has one.
                assert!(slots <= 1 || *arg == Arg::DeviceName, "{point:?} {arg:?}");
            }
        }
    }

    #[test]
    fn accessors_read_the_slot_the_row_names() {
        let mut e = OdpEvent {
            point: Point::VerbsRegMr as u16,
            args: [0x7, 0x1234, 0x5678, 0x9000],
            ..OdpEvent::default()
        };
        assert_eq!(e.lkey(), Some(0x1234));
        assert_eq!(e.rkey(), Some(0x5678));
        assert_eq!(e.access(), Some(0x7));
        assert_eq!(e.advice(), None, "registrations carry no advice");
        e.point = Point::VerbsAdvise as u16;
        assert_eq!(
            e.lkey(),
            Some(0x9000),
            "the advised SGE's lkey is in args[3]"
        );
        assert_eq!(e.advise_flags(), Some(0x1234));
        e.point = Point::RxeMapRange as u16;
        e.obj = 0xaaaa;
        assert_eq!(e.umem(), Some(0x1234), "rxe map: the umem is an argument");
        e.point = Point::MapDma as u16;
        assert_eq!(e.umem(), Some(0xaaaa), "a fault's obj is the umem");
        e.point = Point::RxeInvalidate as u16;
        e.aux = 1;
        assert_eq!(e.mmu_event(), Some(1));
        e.point = Point::PageFaultUser as u16;
        assert_eq!(e.mmu_event(), None, "a CPU fault's aux is its error code");
    }
}
