/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The event ABI between odp-ebpf's BPF programs and Rust. One header, included by the BPF C code;
 * bpf-common mirrors it in Rust and tests the layout against the skeleton's generated types.
 * Fixed-width fields only, 8-byte aligned, no implicit padding.
 */
#ifndef ODP_EVENTS_H
#define ODP_EVENTS_H

/* Probe points. Values are part of the ABI: append, never renumber. */
enum odp_point {
	ODP_POINT_NONE = 0,
	/* ib_core ODP umem lifecycle and fault path */
	ODP_POINT_UMEM_GET = 1,            /* ib_umem_odp_get */
	ODP_POINT_UMEM_ALLOC_IMPLICIT = 2, /* ib_umem_odp_alloc_implicit */
	ODP_POINT_UMEM_ALLOC_CHILD = 3,    /* ib_umem_odp_alloc_child */
	ODP_POINT_UMEM_RELEASE = 4,        /* ib_umem_odp_release */
	ODP_POINT_MAP_DMA = 5,             /* ib_umem_odp_map_dma_and_lock: the fault */
	ODP_POINT_UNMAP_DMA = 6,           /* ib_umem_odp_unmap_dma_pages */
	/* mm: notifiers and HMM */
	ODP_POINT_INV_RANGE_START = 10,    /* __mmu_notifier_invalidate_range_start */
	ODP_POINT_INV_RANGE_END = 11,      /* __mmu_notifier_invalidate_range_end */
	ODP_POINT_READ_BEGIN = 12,         /* mmu_interval_read_begin */
	ODP_POINT_HMM_FAULT = 13,          /* hmm_range_fault */
	ODP_POINT_HMM_FAULT_TIMEOUT = 14,  /* hmm_range_fault_unlocked_timeout (7.3+) */
	/* rxe */
	ODP_POINT_RXE_INVALIDATE = 20,     /* rxe_ib_invalidate_range */
	ODP_POINT_RXE_MR_INIT = 21,        /* rxe_odp_mr_init_user */
	ODP_POINT_RXE_MAP_RANGE = 22,      /* rxe_odp_map_range_and_lock */
	ODP_POINT_RXE_ADVISE = 23,         /* rxe_ib_advise_mr */
	ODP_POINT_RXE_PREFETCH_WORK = 24,  /* rxe_ib_prefetch_mr_work */
	ODP_POINT_RXE_MR_COPY = 25,        /* rxe_odp_mr_copy */
	/* mlx5 */
	ODP_POINT_MLX5_INVALIDATE = 30,    /* mlx5_ib_invalidate_range */
	ODP_POINT_MLX5_PAGEFAULT_MR = 31,  /* pagefault_mr */
	ODP_POINT_MLX5_PAGEFAULT_REAL = 32,     /* pagefault_real_mr */
	ODP_POINT_MLX5_PAGEFAULT_IMPLICIT = 33, /* pagefault_implicit_mr */
	ODP_POINT_MLX5_PF_SINGLE_SEG = 34, /* pagefault_single_data_segment */
	ODP_POINT_MLX5_PF_RESUME = 35,     /* mlx5_ib_page_fault_resume */
	ODP_POINT_MLX5_ADVISE = 36,        /* mlx5_ib_advise_mr_prefetch */
	ODP_POINT_MLX5_PREFETCH_WORK = 37, /* mlx5_ib_prefetch_mr_work */
	/* CPU side */
	ODP_POINT_PAGE_FAULT_USER = 40,    /* exceptions:page_fault_user */
	/* libibverbs (uprobes) */
	ODP_POINT_VERBS_REG_MR = 50,       /* ibv_reg_mr_iova2 */
	ODP_POINT_VERBS_DEREG_MR = 51,     /* ibv_dereg_mr */
	ODP_POINT_VERBS_ADVISE = 52,       /* ibv_cmd_advise_mr */
	ODP_POINT_VERBS_GET_DEVICES = 53,  /* ibv_get_device_list */
	ODP_POINT_MAX = 64,
};

/* How a point was attached. */
enum odp_method {
	ODP_METHOD_FENTRY = 1,
	ODP_METHOD_KPROBE = 2,
	ODP_METHOD_TP_BTF = 3,
	ODP_METHOD_TRACEPOINT = 4,
	ODP_METHOD_UPROBE = 5,
};

/* odp_event.flags */
#define ODP_FLAG_HAS_RET (1u << 0)  /* ret is meaningful (the call returned) */
#define ODP_FLAG_KTHREAD (1u << 1)  /* ran in a kernel thread (e.g. rxe's worker) */
#define ODP_FLAG_PREFETCH (1u << 2) /* MAP_DMA inside a prefetch (advise call or its work item) */

/*
 * One event per call, emitted when the call returns (or at entry for points without an exit):
 * ts_ns is the entry time and duration_ns the time inside, so intervals can be overlapped.
 *
 * Field meaning per point (others zero):
 *   obj    the ib_umem_odp for ib_core/rxe/mlx5 invalidate and fault points (for READ_BEGIN and
 *          HMM_FAULT: the umem that would own the interval notifier; match it against known
 *          umems), the ibv_mr for verbs points, the mmu_notifier_range for INV_RANGE_*
 *   mm     the mm_struct concerned
 *   start, end   the address range ([start, end))
 *   args   point-specific raw arguments (see odp-ebpf's catalog); for UMEM_GET and
 *          UMEM_ALLOC_IMPLICIT args[2..3] hold the first 16 bytes of the ib_device name, for
 *          RXE_MAP_RANGE and RXE_MR_COPY args[1] is the rxe_mr's ib_umem_odp
 *   ret    return value: pages mapped or -errno for MAP_DMA, seq for READ_BEGIN, 0/-errno for
 *          pointer-returning kernel points, 0/-1 for pointer-returning libibverbs calls
 *   aux    INV_RANGE_* / *_INVALIDATE: mmu_notifier_event; PAGE_FAULT_USER: error code
 */
struct odp_event {
	__u64 ts_ns;
	__u64 duration_ns;
	__u64 obj;
	__u64 mm;
	__u64 start;
	__u64 end;
	__u64 args[4];
	__s64 ret;
	__u32 pid;
	__u32 tid;
	__u16 point;
	__u8 method;
	__u8 flags;
	__u32 aux;
	char comm[16];
};

/*
 * The record for PAGE_FAULT_USER, the one point that fires at a process's full fault rate: 56
 * bytes, one 64-byte cache line with the ring buffer's 8-byte record header, where struct
 * odp_event takes two, so the faulting CPU writes and the reader's CPU takes over half the
 * lines, and there is no memset or task flags read. Readers tell it from struct odp_event by
 * its length and expand it: start = address, end = address + 1, aux = error_code, the rest
 * zero as in a full PAGE_FAULT_USER event.
 */
struct odp_cpu_fault {
	__u64 ts_ns;
	__u64 mm;
	__u64 address;
	__u32 pid;
	__u32 tid;
	__u16 point;
	__u8 method;
	__u8 flags;
	__u32 error_code;
	char comm[16];
};

#endif /* ODP_EVENTS_H */
