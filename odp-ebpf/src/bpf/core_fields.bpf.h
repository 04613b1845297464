/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Every read of a kernel struct field the probes make, in one place. Types that live in modules
 * (ib_core, rdma_rxe, mlx5_ib) or that the build host's BTF lacks (hmm_range) are declared here
 * with a ___odp flavour, holding only the fields read, and relocated by CO-RE at load time
 * against the running kernel's (module) BTF. Each field says what kernel it needs where that
 * has moved. The layouts were built against 6.18 and loaded on 7.2 and 7.3.
 */
#ifndef ODP_CORE_FIELDS_BPF_H
#define ODP_CORE_FIELDS_BPF_H

/* ib_core (module BTF) */
struct ib_device___odp {
	char name[64];
} __attribute__((preserve_access_index));

struct ib_umem___odp {
	struct ib_device___odp *ibdev;	/* older kernels: a ucontext pointer instead (reads 0) */
	struct mm_struct *owning_mm;
	u64 iova;
	size_t length;
	unsigned long address;
} __attribute__((preserve_access_index));

struct ib_umem_odp___odp {
	struct ib_umem___odp umem;
	struct mmu_interval_notifier notifier;	/* since 5.5 (mmu_interval_notifier) */
} __attribute__((preserve_access_index));

/* vmlinux, but absent from the build host's BTF when HMM is configured out */
struct hmm_range___odp {
	struct mmu_interval_notifier *notifier;	/* since 5.5 */
	unsigned long start;
	unsigned long end;
} __attribute__((preserve_access_index));

/* rdma_rxe (module BTF); struct rxe_mem before 5.12, ODP on it only since 6.15 */
struct rxe_mr___odp {
	struct ib_umem___odp *umem;
} __attribute__((preserve_access_index));

/* ib_core's struct ib_qp and its attributes, and rxe's QP around them (module BTF). The
 * requester, completer and responder state rxe keeps per QP: PSNs of the send window and of
 * the request being answered, and the read response in progress. */
struct ib_qp___odp {
	struct ib_device___odp *device;
	u32 qp_num;
} __attribute__((preserve_access_index));

struct ib_qp_attr___odp {
	u32 dest_qp_num;
} __attribute__((preserve_access_index));

struct rxe_req_info___odp {
	u32 psn;
} __attribute__((preserve_access_index));

struct rxe_comp_info___odp {
	u32 psn;
} __attribute__((preserve_access_index));

struct resp_res___odp {
	u32 cur_psn;
} __attribute__((preserve_access_index));

struct rxe_resp_info___odp {
	u32 psn;
	struct resp_res___odp *res;
} __attribute__((preserve_access_index));

struct rxe_qp___odp;

/* rxe runs each QP's sending and receiving as work items (since the requester and completer
 * were merged into send_task, 6.9) on its workqueue. */
struct rxe_task___odp {
	struct work_struct work;
	struct rxe_qp___odp *qp;
} __attribute__((preserve_access_index));

struct rxe_qp___odp {
	struct ib_qp___odp ibqp;
	struct ib_qp_attr___odp attr;
	struct rxe_req_info___odp req;
	struct rxe_comp_info___odp comp;
	struct rxe_resp_info___odp resp;
	struct rxe_task___odp recv_task;
} __attribute__((preserve_access_index));

/* The device's hardware counters, as `rdma statistic` reads them. */
struct rxe_dev___odp {
	struct ib_device___odp ib_dev;
	atomic64_t stats_counters[1];
} __attribute__((preserve_access_index));

/* Matched by name: the numbering moved when ack_deferred was dropped. */
enum rxe_counters___odp {
	RXE_CNT_RCV_RNR,
	RXE_CNT_RETRY_EXCEEDED,
	RXE_CNT_RNR_RETRY_EXCEEDED,
	RXE_CNT_COMP_RETRY,
};

/*
 * Fields of structs that live in modules (ib_core, rxe) and in HMM are read only through these
 * accessors, each guarded with bpf_core_field_exists: on a kernel where a field is gone or
 * renamed, the relocation resolves to "absent", the programs still load, and the value reads
 * as 0 (shown as an unknown mm, device or range) instead of the whole object being refused.
 */
static __always_inline __u64 umem_of_notifier(__u64 sub)
{
	if (!sub || !bpf_core_field_exists(struct ib_umem_odp___odp, notifier))
		return 0;
	return sub - bpf_core_field_offset(struct ib_umem_odp___odp, notifier);
}

static __always_inline __u64 umem_mm(__u64 umem)
{
	struct ib_umem_odp___odp *u = (void *)umem;

	if (!umem || !bpf_core_field_exists(u->umem.owning_mm))
		return 0;
	return (__u64)BPF_CORE_READ(u, umem.owning_mm);
}

static __always_inline __u64 umem_device(__u64 umem)
{
	struct ib_umem_odp___odp *u = (void *)umem;

	if (!umem || !bpf_core_field_exists(u->umem.ibdev))
		return 0;
	return (__u64)BPF_CORE_READ(u, umem.ibdev);
}

static __always_inline __u64 umem_address(__u64 umem)
{
	struct ib_umem_odp___odp *u = (void *)umem;

	if (!umem || !bpf_core_field_exists(u->umem.address))
		return 0;
	return BPF_CORE_READ(u, umem.address);
}

static __always_inline __u64 umem_length(__u64 umem)
{
	struct ib_umem_odp___odp *u = (void *)umem;

	if (!umem || !bpf_core_field_exists(u->umem.length))
		return 0;
	return BPF_CORE_READ(u, umem.length);
}

/* rxe_mr's umem: the ib_umem at the start of its ib_umem_odp, so the umem_* accessors apply. */
static __always_inline __u64 rxe_mr_umem(__u64 rxe_mr)
{
	struct rxe_mr___odp *mr = (void *)rxe_mr;

	if (!rxe_mr || !bpf_core_field_exists(mr->umem))
		return 0;
	return (__u64)BPF_CORE_READ(mr, umem);
}

static __always_inline __u64 hmm_range_notifier(__u64 range)
{
	struct hmm_range___odp *r = (void *)range;

	if (!range || !bpf_core_field_exists(r->notifier))
		return 0;
	return (__u64)BPF_CORE_READ(r, notifier);
}

static __always_inline __u64 notifier_mm(__u64 sub)
{
	struct mmu_interval_notifier *n = (void *)sub;

	return sub ? (__u64)BPF_CORE_READ(n, mm) : 0;
}

static __always_inline __u32 qp_num(__u64 qp)
{
	struct rxe_qp___odp *q = (void *)qp;

	if (!qp || !bpf_core_field_exists(q->ibqp.qp_num))
		return 0;
	return BPF_CORE_READ(q, ibqp.qp_num);
}

static __always_inline __u32 qp_dest_num(__u64 qp)
{
	struct rxe_qp___odp *q = (void *)qp;

	if (!qp || !bpf_core_field_exists(q->attr.dest_qp_num))
		return 0;
	return BPF_CORE_READ(q, attr.dest_qp_num);
}

static __always_inline __u64 qp_device(__u64 qp)
{
	struct rxe_qp___odp *q = (void *)qp;

	if (!qp || !bpf_core_field_exists(q->ibqp.device))
		return 0;
	return (__u64)BPF_CORE_READ(q, ibqp.device);
}

/*
 * The QP whose responder the current thread is running, or 0: a workqueue worker whose current
 * work item is a QP's recv_task. Found from the worker itself, so the faults made inside need no
 * probe on the responder's every packet. A work item of anything else reads as some address
 * that is not its own QP's recv_task, and is rejected by that check.
 */
static __always_inline __u64 responder_qp(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct rxe_task___odp *rxe_task;
	struct work_struct *work;
	struct kthread *kthread;
	struct worker *worker;
	__u64 qp;

	if (!(BPF_CORE_READ(task, flags) & 0x20 /* PF_WQ_WORKER */) ||
	    !bpf_core_field_exists(task->worker_private) ||
	    !bpf_core_field_exists(struct rxe_task___odp, qp) ||
	    !bpf_core_field_exists(struct rxe_qp___odp, recv_task))
		return 0;
	/* A kthread's worker_private is its struct kthread, whose data is the pool's worker. */
	kthread = BPF_CORE_READ(task, worker_private);
	if (!kthread)
		return 0;
	worker = BPF_CORE_READ(kthread, data);
	if (!worker)
		return 0;
	work = BPF_CORE_READ(worker, current_work);
	if (!work)
		return 0;
	rxe_task = (void *)work - bpf_core_field_offset(struct rxe_task___odp, work);
	qp = (__u64)BPF_CORE_READ(rxe_task, qp);
	if (!qp || qp + bpf_core_field_offset(struct rxe_qp___odp, recv_task) != (__u64)rxe_task)
		return 0;
	return qp;
}

/* The first PSN the requester has sent and not seen acknowledged. */
static __always_inline __u32 qp_unacked_psn(__u64 qp)
{
	struct rxe_qp___odp *q = (void *)qp;

	if (!qp || !bpf_core_field_exists(q->comp.psn))
		return 0;
	return BPF_CORE_READ(q, comp.psn);
}

/* The PSN the requester sends next. */
static __always_inline __u32 qp_next_psn(__u64 qp)
{
	struct rxe_qp___odp *q = (void *)qp;

	if (!qp || !bpf_core_field_exists(q->req.psn))
		return 0;
	return BPF_CORE_READ(q, req.psn);
}

/* The PSN of the packet the responder is handling: the read response it is building, else the
 * request it expects (a WRITE or SEND packet is executed before the PSN moves on). */
static __always_inline __u32 qp_responder_psn(__u64 qp)
{
	struct rxe_qp___odp *q = (void *)qp;
	struct resp_res___odp *res;

	if (!qp || !bpf_core_field_exists(q->resp.psn))
		return 0;
	if (bpf_core_field_exists(q->resp.res) && bpf_core_field_exists(res->cur_psn)) {
		res = BPF_CORE_READ(q, resp.res);
		if (res)
			return BPF_CORE_READ(res, cur_psn);
	}
	return BPF_CORE_READ(q, resp.psn);
}

/* rxe's retry counters on the QP's device, as `rdma statistic` reads them, into out[0..4]:
 * completer_retry_err, retry_exceeded_err, rcvd_rnr_err, retry_rnr_exceeded_err (left alone
 * where the kernel has no such counter). The device is looked up once for the four. */
#define RXE_COUNTER_INTO(slot, name)                                                        \
	if (bpf_core_enum_value_exists(enum rxe_counters___odp, name))                       \
		bpf_probe_read_kernel(&out[slot], sizeof(out[slot]),                         \
				      (void *)counters +                                     \
					      8 * bpf_core_enum_value(enum rxe_counters___odp, \
								      name));

static __always_inline void rxe_retry_counters(__u64 qp, __u64 *out)
{
	__u64 dev = qp_device(qp), counters;

	if (!dev || !bpf_core_field_exists(struct rxe_dev___odp, stats_counters))
		return;
	counters = dev - bpf_core_field_offset(struct rxe_dev___odp, ib_dev) +
		   bpf_core_field_offset(struct rxe_dev___odp, stats_counters);
	RXE_COUNTER_INTO(0, RXE_CNT_COMP_RETRY)
	RXE_COUNTER_INTO(1, RXE_CNT_RETRY_EXCEEDED)
	RXE_COUNTER_INTO(2, RXE_CNT_RCV_RNR)
	RXE_COUNTER_INTO(3, RXE_CNT_RNR_RETRY_EXCEEDED)
}

/* Copies the first 16 bytes of an ib_device's name (room enough for rxe0, mlx5_12...). */
static __always_inline void device_name(__u64 dev, char out[16])
{
	if (dev && bpf_core_field_exists(struct ib_device___odp, name))
		bpf_probe_read_kernel(out, 16,
				      (void *)dev + bpf_core_field_offset(struct ib_device___odp, name));
}

/* The kernel's enum mmu_notifier_event as the ABI numbers it: matched by name through CO-RE,
 * so a kernel that renumbers or drops a kind still reports the others rightly. */
#define MMU_EVENT(name)                                                                    \
	if (bpf_core_enum_value_exists(enum mmu_notifier_event, MMU_NOTIFY_##name) &&      \
	    event == bpf_core_enum_value(enum mmu_notifier_event, MMU_NOTIFY_##name))      \
		return ODP_MMU_##name;

static __always_inline __u32 odp_mmu_event(__u32 event)
{
	MMU_EVENT(UNMAP)
	MMU_EVENT(CLEAR)
	MMU_EVENT(PROTECTION_VMA)
	MMU_EVENT(PROTECTION_PAGE)
	MMU_EVENT(SOFT_DIRTY)
	MMU_EVENT(RELEASE)
	MMU_EVENT(MIGRATE)
	MMU_EVENT(EXCLUSIVE)
	return ODP_MMU_UNKNOWN;
}

#endif /* ODP_CORE_FIELDS_BPF_H */
