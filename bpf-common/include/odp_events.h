/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The event ABI between odp-ebpf's BPF programs and Rust. One header, included by the BPF C code;
 * bpf-common mirrors it in Rust and tests the layout against the skeleton's generated types.
 * Fixed-width fields only, 8-byte aligned, no implicit padding.
 */
#ifndef ODP_EVENTS_H
#define ODP_EVENTS_H

/*
 * Probe points. Values are part of the ABI: append, never renumber. Each point is documented
 * next to the signature its values come from: what obj, [start, end), ret and aux hold, and
 * the names of args[0..3] ("-": unused), exactly as bpf-common's catalog row names them (a test
 * holds the two together). Unless said otherwise ret is the function's int return, and mm is
 * the address space concerned. responder_qp and responder_psn: made by rxe's responder (in the
 * work item of a QP's recv_task), the QP's number (0 elsewhere) and the PSN of the request or
 * read response in hand.
 */
enum odp_point {
	ODP_POINT_NONE = 0,

	/* ib_core: the ODP umem lifecycle and the fault path */

	/* struct ib_umem_odp *ib_umem_odp_get(struct ib_device *device, unsigned long addr,
	 *                                     size_t size, int access, const ops *ops)
	 * obj: the umem returned (0 on error, ret then -errno); [addr, addr + size)
	 * args: access, -, device_name, device_name */
	ODP_POINT_UMEM_GET = 1,
	/* struct ib_umem_odp *ib_umem_odp_alloc_implicit(struct ib_device *device, int access)
	 * obj: the umem returned; no range
	 * args: access, -, device_name, device_name */
	ODP_POINT_UMEM_ALLOC_IMPLICIT = 2,
	/* struct ib_umem_odp *ib_umem_odp_alloc_child(struct ib_umem_odp *root, unsigned long addr,
	 *                                             size_t size, const ops *ops)
	 * obj: the child umem returned; [addr, addr + size)
	 * args: root, -, -, - */
	ODP_POINT_UMEM_ALLOC_CHILD = 3,
	/* void ib_umem_odp_release(struct ib_umem_odp *umem_odp)
	 * obj: umem_odp; its range and mm, read at entry (it is freed by the exit)
	 * args: -, -, -, - */
	ODP_POINT_UMEM_RELEASE = 4,
	/* int ib_umem_odp_map_dma_and_lock(struct ib_umem_odp *umem_odp, u64 user_virt, u64 bcnt,
	 *                                  u64 access_mask, bool fault)
	 * The fault. obj: umem_odp; [user_virt, user_virt + bcnt); ret: pages mapped or -errno;
	 * flags: ODP_FLAG_PREFETCH inside an advise call or its work item
	 * args: access, fault, responder_qp, responder_psn */
	ODP_POINT_MAP_DMA = 5,
	/* void ib_umem_odp_unmap_dma_pages(struct ib_umem_odp *umem_odp, u64 virt, u64 bound)
	 * obj: umem_odp; [virt, bound)
	 * args: -, -, -, - */
	ODP_POINT_UNMAP_DMA = 6,

	/* mm: notifiers and HMM (they fire for every address space: filtered by mm) */

	/* int __mmu_notifier_invalidate_range_start(struct mmu_notifier_range *range)
	 * obj: range; [range->start, range->end); aux: range->event as enum odp_mmu_event
	 * args: range_flags, -, -, - */
	ODP_POINT_INV_RANGE_START = 10,
	/* void __mmu_notifier_invalidate_range_end(struct mmu_notifier_range *range)
	 * as INV_RANGE_START, without ret
	 * args: range_flags, -, -, - */
	ODP_POINT_INV_RANGE_END = 11,
	/* unsigned long mmu_interval_read_begin(struct mmu_interval_notifier *interval_sub)
	 * One attempt of a fault. obj: the umem owning interval_sub; its interval; ret: the seq
	 * args: -, -, -, - */
	ODP_POINT_READ_BEGIN = 12,
	/* int hmm_range_fault(struct hmm_range *range)
	 * obj: the umem owning range->notifier; [range->start, range->end)
	 * args: -, -, -, - */
	ODP_POINT_HMM_FAULT = 13,
	/* int hmm_range_fault_unlocked_timeout(struct hmm_range *range, ...)  (7.3+)
	 * as HMM_FAULT
	 * args: -, -, -, - */
	ODP_POINT_HMM_FAULT_TIMEOUT = 14,

	/* rxe */

	/* bool rxe_ib_invalidate_range(struct mmu_interval_notifier *mni,
	 *                              const struct mmu_notifier_range *range,
	 *                              unsigned long cur_seq)
	 * obj: the umem owning mni; the range as INV_RANGE_START; ret: the bool
	 * args: range_flags, cur_seq, -, - */
	ODP_POINT_RXE_INVALIDATE = 20,
	/* int rxe_odp_mr_init_user(struct rxe_dev *rxe, u64 start, u64 length, u64 iova,
	 *                          int access_flags, struct rxe_mr *mr)
	 * obj: mr; [start, start + length)
	 * args: access, iova, -, - */
	ODP_POINT_RXE_MR_INIT = 21,
	/* int rxe_odp_map_range_and_lock(struct rxe_mr *mr, u64 iova, int length, u32 flags)
	 * rxe's device fault. obj: mr; [iova, iova + length)
	 * args: flags, umem, responder_qp, responder_psn */
	ODP_POINT_RXE_MAP_RANGE = 22,
	/* int rxe_ib_advise_mr(struct ib_pd *ibpd, enum ib_uverbs_advise_mr_advice advice,
	 *                      u32 flags, struct ib_sge *sg_list, u32 num_sge, attrs)
	 * obj: ibpd
	 * args: advice, advise_flags, num_sge, - */
	ODP_POINT_RXE_ADVISE = 23,
	/* void rxe_ib_prefetch_mr_work(struct work_struct *w)
	 * obj: w
	 * args: -, -, -, - */
	ODP_POINT_RXE_PREFETCH_WORK = 24,
	/* int rxe_odp_mr_copy(struct rxe_mr *mr, u64 iova, void *addr, unsigned int length,
	 *                     enum rxe_mr_copy_dir dir)
	 * obj: mr; [iova, iova + length)
	 * args: dir, umem, responder_qp, responder_psn */
	ODP_POINT_RXE_MR_COPY = 25,
	/* int rxe_completer(struct rxe_qp *qp)
	 * Emitted only for runs that moved the device's retry counters: a transport retry (the
	 * ACK timer expired and requests from psn on go again), retry exhaustion, an RNR NAK
	 * received, RNR retry exhaustion. obj: qp; psn: the first unacknowledged, next_psn: the
	 * next to be sent, at entry; aux: those four counts, one per byte from the low one
	 * (completer_retry_err, retry_exceeded_err, rcvd_rnr_err, retry_rnr_exceeded_err): exact
	 * while one completer at a time moves them on the device
	 * args: qp_num, dest_qp, psn, next_psn */
	ODP_POINT_RXE_COMPLETER = 27,

	/* mlx5 */

	/* bool mlx5_ib_invalidate_range(struct mmu_interval_notifier *mni,
	 *                               const struct mmu_notifier_range *range,
	 *                               unsigned long cur_seq)
	 * as RXE_INVALIDATE
	 * args: range_flags, cur_seq, -, - */
	ODP_POINT_MLX5_INVALIDATE = 30,
	/* int pagefault_mr(struct mlx5_ib_mr *mr, u64 io_virt, size_t bcnt, u32 *bytes_mapped,
	 *                  u32 flags, bool permissive_fault)
	 * obj: mr
	 * args: io_virt, bcnt, bytes_mapped, pf_flags */
	ODP_POINT_MLX5_PAGEFAULT_MR = 31,
	/* int pagefault_real_mr(struct mlx5_ib_mr *mr, struct ib_umem_odp *odp, u64 user_va,
	 *                       size_t bcnt, u32 *bytes_mapped, u64 flags)
	 * obj: mr
	 * args: odp, user_va, bcnt, bytes_mapped */
	ODP_POINT_MLX5_PAGEFAULT_REAL = 32,
	/* int pagefault_implicit_mr(struct mlx5_ib_mr *imr, struct ib_umem_odp *odp_imr,
	 *                           u64 user_va, size_t bcnt, u32 *bytes_mapped, u32 flags)
	 * obj: imr
	 * args: odp, user_va, bcnt, bytes_mapped */
	ODP_POINT_MLX5_PAGEFAULT_IMPLICIT = 33,
	/* int pagefault_single_data_segment(struct mlx5_ib_dev *dev, struct ib_pd *pd, u32 key,
	 *                                   u64 io_virt, size_t bcnt, u32 *bytes_committed,
	 *                                   u32 *bytes_mapped)
	 * obj: dev
	 * args: pd, key, io_virt, bcnt */
	ODP_POINT_MLX5_PF_SINGLE_SEG = 34,
	/* void mlx5_ib_page_fault_resume(struct mlx5_ib_dev *dev, struct mlx5_pagefault *pfault,
	 *                                int error)
	 * obj: pfault; aux: error (1: the fault is left unresolved)
	 * args: -, -, -, - */
	ODP_POINT_MLX5_PF_RESUME = 35,
	/* int mlx5_ib_advise_mr_prefetch(struct ib_pd *pd, enum ib_uverbs_advise_mr_advice advice,
	 *                                u32 flags, struct ib_sge *sg_list, u32 num_sge)
	 * obj: pd
	 * args: advice, advise_flags, sg_list, num_sge */
	ODP_POINT_MLX5_ADVISE = 36,
	/* void mlx5_ib_prefetch_mr_work(struct work_struct *w)
	 * obj: w
	 * args: -, -, -, - */
	ODP_POINT_MLX5_PREFETCH_WORK = 37,

	/* CPU side */

	/* TRACE_EVENT page_fault_user(unsigned long address, struct pt_regs *regs,
	 *                             unsigned long error_code), exceptions:page_fault_user
	 * Written as struct odp_cpu_fault. [address, address + 1); aux: error_code
	 * args: -, -, -, - */
	ODP_POINT_PAGE_FAULT_USER = 40,

	/* libibverbs (uprobes); ret 0/-1 for calls returning a pointer */

	/* struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length,
	 *                                 uint64_t iova, unsigned int access)
	 * (and ibv_reg_mr, ibv_reg_mr_iova, __ibv_reg_mr, ibv_reg_mr_ex)
	 * obj: the ibv_mr returned; [addr, addr + length)
	 * args: access, lkey, rkey, iova */
	ODP_POINT_VERBS_REG_MR = 50,
	/* int ibv_dereg_mr(struct ibv_mr *mr)
	 * obj: mr; [mr->addr, mr->addr + mr->length)
	 * args: -, lkey, -, - */
	ODP_POINT_VERBS_DEREG_MR = 51,
	/* int ibv_cmd_advise_mr(struct ibv_pd *pd, enum ibv_advise_mr_advice advice,
	 *                       uint32_t flags, struct ibv_sge *sg_list, uint32_t num_sge)
	 * obj: pd; the first SGE's [addr, addr + length)
	 * args: advice, advise_flags, num_sge, lkey */
	ODP_POINT_VERBS_ADVISE = 52,
	/* struct ibv_device **ibv_get_device_list(int *num_devices)
	 * obj: the list returned
	 * args: num_devices, -, -, - */
	ODP_POINT_VERBS_GET_DEVICES = 53,

	ODP_POINT_MAX = 64,
};

/*
 * enum mmu_notifier_event, numbered for the ABI: the BPF side translates the running kernel's
 * value by name through CO-RE enum relocation, so no reader depends on one kernel's numbering.
 */
enum odp_mmu_event {
	ODP_MMU_UNMAP = 0,
	ODP_MMU_CLEAR = 1,
	ODP_MMU_PROTECTION_VMA = 2,
	ODP_MMU_PROTECTION_PAGE = 3,
	ODP_MMU_SOFT_DIRTY = 4,
	ODP_MMU_RELEASE = 5,
	ODP_MMU_MIGRATE = 6,
	ODP_MMU_EXCLUSIVE = 7,
	ODP_MMU_UNKNOWN = 255, /* a value this build has no name for */
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
 * Field meaning per point is documented at each enum odp_point value above (others zero).
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
