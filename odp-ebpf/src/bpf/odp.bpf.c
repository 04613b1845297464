// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Probes on the ODP fault and invalidation paths. Every function point has an fentry/fexit and a
 * kprobe/kretprobe variant built from the same handlers; the loader picks one per point for the
 * running kernel and disables the rest before load. One event per call is emitted on return,
 * carrying the entry time and the duration, so fault and invalidation intervals can be
 * overlapped afterwards.
 *
 * Fields of kernel structs are read only through core_fields.bpf.h, the CPU-fault path lives in
 * cpu_fault.bpf.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "odp_events.h"
#include "core_fields.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Puts the records into the object's BTF, so the skeleton's generated types carry them and
 * the Rust mirror's layout can be tested against them. */
struct odp_event odp_event_abi_anchor = {};
struct odp_cpu_fault odp_cpu_fault_abi_anchor = {};

/* Filters and mode, set by the loader before load. */
const volatile __u32 filter_tgid = 0;
const volatile char filter_comm[16] = {};
const volatile bool filter_comm_set = false;
const volatile char filter_device[16] = {};
const volatile bool filter_device_set = false;
const volatile bool emit_events = true;
const volatile bool all_mms = false;
/* Address filter [range_lo, range_hi), off when range_hi is 0: CPU page faults are checked at
 * the tracepoint, every other event with an address range when it completes. */
const volatile __u64 range_lo = 0;
const volatile __u64 range_hi = 0;
/* Wake the reader only once this much is waiting: a wake-up per event costs the traced task an
 * IPI and a context switch on the reader's CPU; the reader's poll timeout collects the rest. */
const volatile __u64 wakeup_bytes = 1 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* Calls seen per point (counted whether or not events are emitted). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ODP_POINT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

/* Calls not reported because their entry could not be recorded (the in-flight map was full),
 * per point. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ODP_POINT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} unpaired SEC(".maps");

/* Events lost because the ring buffer was full. A global, which the reader sees through its
 * mapping of .bss: reading a map by syscall holds off every kprobe program on that CPU for as
 * long as the syscall is preempted inside (bpf_disable_instrumentation), and sampling this
 * count that way cost the fault path one skipped run per read. */
__u64 ring_drops = 0;

struct inflight {
	__u64 ts;
	__u64 args[6];
};

/* Entry state of calls in progress, keyed by thread and point. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct inflight);
} inflight SEC(".maps");

/*
 * Address spaces that own ODP memory (learned from umems) or belong to the selected task. mm-wide
 * points (notifier ranges, HMM, CPU page faults) fire for every process on the machine; they are
 * only reported for these, unless all_mms is set.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} watched_mms SEC(".maps");


static __always_inline bool filtering(void)
{
	return filter_tgid != 0 || filter_comm_set;
}

/* Whether a 16-byte NUL-terminated name (a task's, a device's) is the one a filter asks for. */
static __always_inline bool name_is(const char *name, const volatile char *want)
{
	for (int i = 0; i < 16; i++) {
		if (name[i] != want[i])
			return false;
		if (!name[i])
			break;
	}
	return true;
}

/* Whether the current task is the one the user asked for (true when nothing was asked). */
static __always_inline bool task_selected(void)
{
	if (filter_tgid && (bpf_get_current_pid_tgid() >> 32) != filter_tgid)
		return false;
	if (filter_comm_set) {
		char comm[16];

		bpf_get_current_comm(comm, sizeof(comm));
		return name_is(comm, filter_comm);
	}
	return true;
}

/* task_selected for a task reached through its BTF pointer: plain loads, no helper calls. */
static __always_inline bool btf_task_selected(struct task_struct *task)
{
	if (filter_tgid && task->tgid != filter_tgid)
		return false;
	return !filter_comm_set || name_is(task->comm, filter_comm);
}

static __always_inline __u64 current_mm(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return (__u64)BPF_CORE_READ(task, mm);
}

static __always_inline void watch_mm(__u64 mm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (mm)
		bpf_map_update_elem(&watched_mms, &mm, &tgid, BPF_ANY);
}

static __always_inline bool mm_watched(__u64 mm)
{
	return mm && bpf_map_lookup_elem(&watched_mms, &mm);
}


static __always_inline bool is_err_ptr(__u64 p)
{
	return p >= (__u64)-4095;
}

/* The mm a point's arguments refer to, when cheap to find. */
static __always_inline __u64 point_mm(__u32 point, const __u64 *a)
{
	switch (point) {
	case ODP_POINT_UMEM_RELEASE:
	case ODP_POINT_MAP_DMA:
	case ODP_POINT_UNMAP_DMA:
		return umem_mm(a[0]);
	case ODP_POINT_INV_RANGE_START:
	case ODP_POINT_INV_RANGE_END: {
		struct mmu_notifier_range *r = (void *)a[0];

		return (__u64)BPF_CORE_READ(r, mm);
	}
	case ODP_POINT_RXE_INVALIDATE:
	case ODP_POINT_MLX5_INVALIDATE:
	case ODP_POINT_READ_BEGIN: {
		struct mmu_interval_notifier *sub = (void *)a[0];

		return (__u64)BPF_CORE_READ(sub, mm);
	}
	case ODP_POINT_HMM_FAULT:
	case ODP_POINT_HMM_FAULT_TIMEOUT:
		return notifier_mm(hmm_range_notifier(a[0]));
	case ODP_POINT_RXE_MAP_RANGE:
	case ODP_POINT_RXE_MR_COPY:
		return umem_mm(rxe_mr_umem(a[0]));
	default:
		return 0;
	}
}

/* The ib_device a point's arguments refer to, when cheap to find (0: unknown). */
static __always_inline __u64 point_device(__u32 point, const __u64 *a)
{
	switch (point) {
	case ODP_POINT_UMEM_GET:
	case ODP_POINT_UMEM_ALLOC_IMPLICIT:
		return a[0];
	case ODP_POINT_UMEM_ALLOC_CHILD:
	case ODP_POINT_UMEM_RELEASE:
	case ODP_POINT_MAP_DMA:
	case ODP_POINT_UNMAP_DMA:
		return umem_device(a[0]);
	case ODP_POINT_RXE_INVALIDATE:
	case ODP_POINT_MLX5_INVALIDATE:
		return umem_device(umem_of_notifier(a[0]));
	case ODP_POINT_RXE_MAP_RANGE:
	case ODP_POINT_RXE_MR_COPY:
		return umem_device(rxe_mr_umem(a[0]));
	case ODP_POINT_RXE_COMPLETER:
		return qp_device(a[0]);
	default:
		return 0;
	}
}

/* A point on a QP's transport, which rxe runs in its worker for whoever owns the QP: the task
 * filter cannot tell, readers match them to QPs by number. */
static __always_inline bool qp_point(__u32 point)
{
	return point == ODP_POINT_RXE_COMPLETER;
}


/* False when a device filter is set and the point's device is known and another one. */
static __always_inline bool device_selected(__u32 point, const __u64 *a)
{
	char name[16] = {};
	__u64 dev;

	if (!filter_device_set)
		return true;
	dev = point_device(point, a);
	if (!dev)
		return true;
	device_name(dev, name);
	return name_is(name, filter_device);
}

/* mm-wide points fire for every process; the rest are ODP-specific already. */
static __always_inline bool mm_wide(__u32 point)
{
	return point == ODP_POINT_INV_RANGE_START || point == ODP_POINT_INV_RANGE_END ||
	       point == ODP_POINT_READ_BEGIN || point == ODP_POINT_HMM_FAULT ||
	       point == ODP_POINT_HMM_FAULT_TIMEOUT;
}

/* Decides at entry whether a call is reported, and learns address spaces on the way. */
static __always_inline bool wanted(__u32 point, const __u64 *a)
{
	bool selected = task_selected();
	__u64 mm;

	if (!device_selected(point, a))
		return false;
	if (qp_point(point))
		return true;
	mm = point_mm(point, a);
	if (filtering() && selected)
		watch_mm(current_mm());
	if (mm_wide(point))
		return all_mms || mm_watched(mm) || (filtering() && selected);
	if (!filtering()) {
		/* Learn every ODP address space so mm-wide points can be matched to it. */
		if (mm && point != ODP_POINT_UMEM_RELEASE)
			watch_mm(mm);
		return true;
	}
	return selected || mm_watched(mm);
}

static __always_inline void count_unpaired(__u32 point)
{
	__u64 *n = bpf_map_lookup_elem(&unpaired, &point);

	if (n)
		*n += 1;
}

static __always_inline __u64 inflight_key(__u32 point)
{
	return ((bpf_get_current_pid_tgid() & 0xffffffff) << 8) | point;
}

static __always_inline int enter(__u32 point, const __u64 *a)
{
	struct inflight v = {};
	__u64 key = inflight_key(point);

	if (!wanted(point, a))
		return 0;
	v.ts = bpf_ktime_get_ns();
	for (int i = 0; i < 6; i++)
		v.args[i] = a[i];
	if (bpf_map_update_elem(&inflight, &key, &v, BPF_ANY))
		count_unpaired(point);
	return 0;
}

/* Counts a call of the point on this CPU and returns this CPU's count so far. */
static __always_inline __u64 count(__u32 point)
{
	__u64 *n = bpf_map_lookup_elem(&hits, &point);

	if (!n)
		return 0;
	*n += 1;
	return *n;
}

static __always_inline void count_drops(__u64 lost)
{
	__sync_fetch_and_add(&ring_drops, lost);
}

static __always_inline struct odp_event *reserve(void)
{
	struct odp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		count_drops(1);
	return e;
}

/* Wakes the reader only once a backlog of wakeup_bytes is waiting. */
static __always_inline __u64 wakeup_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP :
									      BPF_RB_NO_WAKEUP;
}

/* Submits any record reserved from the events ring. */
static __always_inline void submit(void *e)
{
	bpf_ringbuf_submit(e, wakeup_flags());
}

static __always_inline void header(struct odp_event *e, __u32 point, __u8 method)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->point = point;
	e->method = method;
	e->flags = 0;
	if (BPF_CORE_READ(task, flags) & 0x00200000 /* PF_KTHREAD */)
		e->flags |= ODP_FLAG_KTHREAD;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}


static __always_inline void fill_range(struct odp_event *e, struct mmu_notifier_range *r)
{
	e->mm = (__u64)BPF_CORE_READ(r, mm);
	e->start = BPF_CORE_READ(r, start);
	e->end = BPF_CORE_READ(r, end);
	e->aux = odp_mmu_event(BPF_CORE_READ(r, event));
	e->args[0] = BPF_CORE_READ(r, flags);
}

/* Whether the current thread is inside a prefetch (sync advise or the async work item), so the
 * faults it takes are prefetches rather than device page faults. */
static __always_inline bool in_prefetch(void)
{
	const __u32 points[] = { ODP_POINT_RXE_ADVISE, ODP_POINT_RXE_PREFETCH_WORK,
				 ODP_POINT_MLX5_ADVISE, ODP_POINT_MLX5_PREFETCH_WORK };

	for (int i = 0; i < 4; i++) {
		__u64 key = inflight_key(points[i]);

		if (bpf_map_lookup_elem(&inflight, &key))
			return true;
	}
	return false;
}

/* Inside rxe's responder, the QP answered and the PSN in hand, into two argument slots. */
static __always_inline void responder_context(struct odp_event *e, int slot)
{
	__u64 qp = responder_qp();

	if (!qp || slot < 0 || slot > 2)
		return;
	e->args[slot] = qp_num(qp);
	e->args[slot + 1] = qp_responder_psn(qp);
}

/*
 * Decoding each point's saved arguments (a[], as at entry) and its return value into the event,
 * one function per point under the kernel signature it reads (the header documents the same
 * fields). The return value is kept only where the function has one.
 */
static __always_inline void keep_ret(struct odp_event *e, __s64 ret)
{
	e->ret = ret;
	e->flags |= ODP_FLAG_HAS_RET;
}

/* A pointer return: the object, or 0 with ret -errno (ret 0 for success). */
static __always_inline __u64 keep_ptr_ret(struct odp_event *e, __u64 ret)
{
	bool failed = is_err_ptr(ret);

	keep_ret(e, failed ? (__s64)ret : 0);
	return failed ? 0 : ret;
}

/* struct ib_umem_odp *ib_umem_odp_get(struct ib_device *device, unsigned long addr,
 *                                     size_t size, int access, ops) */
static __always_inline void fill_umem_get(struct odp_event *e, const __u64 *a, __u64 ret)
{
	__u64 device = a[0], addr = a[1], size = a[2], access = a[3];

	e->obj = keep_ptr_ret(e, ret);
	e->start = addr;
	e->end = addr + size;
	e->args[0] = access;
	device_name(device, (char *)&e->args[2]);
	e->mm = e->obj ? umem_mm(e->obj) : 0;
}

/* struct ib_umem_odp *ib_umem_odp_alloc_implicit(struct ib_device *device, int access) */
static __always_inline void fill_umem_alloc_implicit(struct odp_event *e, const __u64 *a,
						     __u64 ret)
{
	__u64 device = a[0], access = a[1];

	e->obj = keep_ptr_ret(e, ret);
	e->args[0] = access;
	device_name(device, (char *)&e->args[2]);
	e->mm = e->obj ? umem_mm(e->obj) : 0;
}

/* struct ib_umem_odp *ib_umem_odp_alloc_child(struct ib_umem_odp *root, unsigned long addr,
 *                                             size_t size, ops) */
static __always_inline void fill_umem_alloc_child(struct odp_event *e, const __u64 *a, __u64 ret)
{
	__u64 root = a[0], addr = a[1], size = a[2];

	e->obj = keep_ptr_ret(e, ret);
	e->args[0] = root;
	e->start = addr;
	e->end = addr + size;
	e->mm = umem_mm(root);
}

/* void ib_umem_odp_release(struct ib_umem_odp *umem_odp): its address, length and mm were
 * saved at entry (save_release_state), the umem is freed by the exit. */
static __always_inline void fill_umem_release(struct odp_event *e, const __u64 *a)
{
	__u64 umem_odp = a[0], address = a[1], length = a[2], mm = a[5];

	e->obj = umem_odp;
	e->mm = mm;
	e->start = address;
	e->end = address + length;
}

/* int ib_umem_odp_map_dma_and_lock(struct ib_umem_odp *umem_odp, u64 user_virt, u64 bcnt,
 *                                  u64 access_mask, bool fault) */
static __always_inline void fill_map_dma(struct odp_event *e, const __u64 *a, __u64 ret)
{
	__u64 umem_odp = a[0], user_virt = a[1], bcnt = a[2], access_mask = a[3];
	__u8 fault = a[4] & 0xff;

	keep_ret(e, (__s32)ret);
	e->obj = umem_odp;
	e->mm = umem_mm(umem_odp);
	e->start = user_virt;
	e->end = user_virt + bcnt;
	e->args[0] = access_mask;
	e->args[1] = fault;
	if (in_prefetch())
		e->flags |= ODP_FLAG_PREFETCH;
	responder_context(e, 2);
}

/* void ib_umem_odp_unmap_dma_pages(struct ib_umem_odp *umem_odp, u64 virt, u64 bound) */
static __always_inline void fill_unmap_dma(struct odp_event *e, const __u64 *a)
{
	__u64 umem_odp = a[0], virt = a[1], bound = a[2];

	e->obj = umem_odp;
	e->mm = umem_mm(umem_odp);
	e->start = virt;
	e->end = bound;
}

/* unsigned long mmu_interval_read_begin(struct mmu_interval_notifier *interval_sub) */
static __always_inline void fill_read_begin(struct odp_event *e, const __u64 *a, __u64 ret)
{
	struct mmu_interval_notifier *interval_sub = (void *)a[0];

	keep_ret(e, (__s64)ret);
	e->obj = umem_of_notifier(a[0]);
	e->mm = (__u64)BPF_CORE_READ(interval_sub, mm);
	e->start = BPF_CORE_READ(interval_sub, interval_tree.start);
	e->end = BPF_CORE_READ(interval_sub, interval_tree.last) + 1;
}

/* int hmm_range_fault(struct hmm_range *range), and hmm_range_fault_unlocked_timeout's range */
static __always_inline void fill_hmm_fault(struct odp_event *e, const __u64 *a, __u64 ret)
{
	struct hmm_range___odp *range = (void *)a[0];
	__u64 sub = hmm_range_notifier(a[0]);

	keep_ret(e, (__s32)ret);
	e->obj = umem_of_notifier(sub);
	e->mm = notifier_mm(sub);
	if (bpf_core_field_exists(range->start) && bpf_core_field_exists(range->end)) {
		e->start = BPF_CORE_READ(range, start);
		e->end = BPF_CORE_READ(range, end);
	}
}

/* bool rxe_ib_invalidate_range / mlx5_ib_invalidate_range(struct mmu_interval_notifier *mni,
 *     const struct mmu_notifier_range *range, unsigned long cur_seq) */
static __always_inline void fill_driver_invalidate(struct odp_event *e, const __u64 *a, __u64 ret)
{
	__u64 mni = a[0], range = a[1], cur_seq = a[2];

	keep_ret(e, ret & 0xff);
	e->obj = umem_of_notifier(mni);
	fill_range(e, (void *)range);
	e->args[1] = cur_seq;
}

/* int rxe_odp_mr_init_user(struct rxe_dev *rxe, u64 start, u64 length, u64 iova,
 *                          int access_flags, struct rxe_mr *mr) */
static __always_inline void fill_rxe_mr_init(struct odp_event *e, const __u64 *a, __u64 ret)
{
	__u64 start = a[1], length = a[2], iova = a[3], access_flags = a[4], mr = a[5];

	keep_ret(e, (__s32)ret);
	e->obj = mr;
	e->start = start;
	e->end = start + length;
	e->args[0] = access_flags;
	e->args[1] = iova;
}

/* int rxe_odp_map_range_and_lock(struct rxe_mr *mr, u64 iova, int length, u32 flags)
 * int rxe_odp_mr_copy(struct rxe_mr *mr, u64 iova, void *addr, unsigned int length,
 *                     enum rxe_mr_copy_dir dir) */
static __always_inline void fill_rxe_mr_access(struct odp_event *e, __u32 point, const __u64 *a,
					       __u64 ret)
{
	__u64 mr = a[0], iova = a[1], umem = rxe_mr_umem(mr);
	bool copy = point == ODP_POINT_RXE_MR_COPY;
	__u32 length = copy ? a[3] : a[2];

	keep_ret(e, (__s32)ret);
	e->obj = mr;
	e->mm = umem_mm(umem);
	e->args[0] = copy ? a[4] /* dir */ : a[3] /* flags */;
	e->args[1] = umem;
	e->start = iova;
	e->end = iova + length;
	responder_context(e, 2);
}

/* int rxe_completer(struct rxe_qp *qp): the send window's end and the device's retry counters
 * were saved at entry (save_completer_state); a run that moved none is not reported. */
static __always_inline __u32 completer_outcome(const __u64 *a)
{
	__u64 now[4] = {};
	__u32 outcome = 0;

	rxe_retry_counters(a[0], now);
	for (int i = 0; i < 4; i++) {
		__u64 moved = now[i] - a[2 + i];

		outcome |= (moved > 0xff ? 0xff : (__u32)moved) << (8 * i);
	}
	return outcome;
}

static __always_inline void fill_rxe_completer(struct odp_event *e, const __u64 *a, __u64 ret,
					       __u32 outcome)
{
	__u64 qp = a[0], next_psn = a[1];

	keep_ret(e, (__s32)ret);
	e->obj = qp;
	e->aux = outcome;
	e->args[0] = qp_num(qp);
	e->args[1] = qp_dest_num(qp);
	e->args[2] = qp_unacked_psn(qp);
	e->args[3] = next_psn;
}

/* int rxe_ib_advise_mr(struct ib_pd *ibpd, enum ib_uverbs_advise_mr_advice advice, u32 flags,
 *                      struct ib_sge *sg_list, u32 num_sge, attrs) */
static __always_inline void fill_rxe_advise(struct odp_event *e, const __u64 *a, __u64 ret)
{
	__u64 ibpd = a[0], advice = a[1], flags = a[2], num_sge = a[4];

	keep_ret(e, (__s32)ret);
	e->obj = ibpd;
	e->args[0] = advice;
	e->args[1] = flags;
	e->args[2] = num_sge;
}

/* void mlx5_ib_page_fault_resume(struct mlx5_ib_dev *dev, struct mlx5_pagefault *pfault,
 *                                int error) */
static __always_inline void fill_mlx5_pf_resume(struct odp_event *e, const __u64 *a)
{
	__u64 pfault = a[1], error = a[2];

	e->obj = pfault;
	e->aux = error;
}

/* mlx5's fault handlers and mlx5_ib_advise_mr_prefetch: the first argument, then the next four
 * as they come (the header names them per point). */
static __always_inline void fill_first_five(struct odp_event *e, const __u64 *a, __u64 ret)
{
	keep_ret(e, (__s32)ret);
	e->obj = a[0];
	e->args[0] = a[1];
	e->args[1] = a[2];
	e->args[2] = a[3];
	e->args[3] = a[4];
}

static __always_inline void fill(struct odp_event *e, __u32 point, const __u64 *a, __u64 ret)
{
	switch (point) {
	case ODP_POINT_UMEM_GET:
		fill_umem_get(e, a, ret);
		break;
	case ODP_POINT_UMEM_ALLOC_IMPLICIT:
		fill_umem_alloc_implicit(e, a, ret);
		break;
	case ODP_POINT_UMEM_ALLOC_CHILD:
		fill_umem_alloc_child(e, a, ret);
		break;
	case ODP_POINT_UMEM_RELEASE:
		fill_umem_release(e, a);
		break;
	case ODP_POINT_MAP_DMA:
		fill_map_dma(e, a, ret);
		break;
	case ODP_POINT_UNMAP_DMA:
		fill_unmap_dma(e, a);
		break;
	case ODP_POINT_INV_RANGE_START:
		/* int __mmu_notifier_invalidate_range_start(struct mmu_notifier_range *range) */
		keep_ret(e, (__s32)ret);
		e->obj = a[0];
		fill_range(e, (void *)a[0]);
		break;
	case ODP_POINT_INV_RANGE_END:
		/* void __mmu_notifier_invalidate_range_end(struct mmu_notifier_range *range) */
		e->obj = a[0];
		fill_range(e, (void *)a[0]);
		break;
	case ODP_POINT_READ_BEGIN:
		fill_read_begin(e, a, ret);
		break;
	case ODP_POINT_HMM_FAULT:
	case ODP_POINT_HMM_FAULT_TIMEOUT:
		fill_hmm_fault(e, a, ret);
		break;
	case ODP_POINT_RXE_INVALIDATE:
	case ODP_POINT_MLX5_INVALIDATE:
		fill_driver_invalidate(e, a, ret);
		break;
	case ODP_POINT_RXE_MR_INIT:
		fill_rxe_mr_init(e, a, ret);
		break;
	case ODP_POINT_RXE_MAP_RANGE:
	case ODP_POINT_RXE_MR_COPY:
		fill_rxe_mr_access(e, point, a, ret);
		break;
	case ODP_POINT_RXE_ADVISE:
		fill_rxe_advise(e, a, ret);
		break;
	case ODP_POINT_RXE_PREFETCH_WORK:
	case ODP_POINT_MLX5_PREFETCH_WORK:
		/* void rxe_ib_prefetch_mr_work / mlx5_ib_prefetch_mr_work(struct work_struct *w) */
		e->obj = a[0];
		break;
	case ODP_POINT_MLX5_PF_RESUME:
		fill_mlx5_pf_resume(e, a);
		break;
	default:
		fill_first_five(e, a, ret);
		break;
	}
}

/* Whether an address is inside the address filter [range_lo, range_hi) (which is set). */
static __always_inline bool address_selected(__u64 address)
{
	return address >= range_lo && address < range_hi;
}

/* False for an event with an address outside the address filter. An empty range (a zero-length
 * copy or unmap) still has its address; only events with no address at all pass. */
static __always_inline bool range_selected(const struct odp_event *e)
{
	if (!range_hi || !e->start)
		return true;
	if (e->end <= e->start)
		return address_selected(e->start);
	return e->start < range_hi && range_lo < e->end;
}

/* A completed event goes out, or back, by the address filter. */
static __always_inline void submit_selected(struct odp_event *e)
{
	if (range_selected(e))
		submit(e);
	else
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
}

static __always_inline int leave(__u32 point, __u64 ret, __u8 method)
{
	__u64 key = inflight_key(point);
	struct inflight *v = bpf_map_lookup_elem(&inflight, &key);
	struct odp_event *e;
	__u32 outcome = 0;

	if (!v)
		return 0;
	count(point);
	if (point == ODP_POINT_RXE_COMPLETER)
		outcome = completer_outcome(v->args);
	if (point == ODP_POINT_RXE_COMPLETER && !outcome)
		goto out;
	if (emit_events) {
		e = reserve();
		if (e) {
			__builtin_memset(e, 0, sizeof(*e));
			header(e, point, method);
			e->ts_ns = v->ts;
			e->duration_ns = bpf_ktime_get_ns() - v->ts;
			if (point == ODP_POINT_RXE_COMPLETER)
				fill_rxe_completer(e, v->args, ret, outcome);
			else
				fill(e, point, v->args, ret);
			submit_selected(e);
		}
	}
out:
	bpf_map_delete_elem(&inflight, &key);
	return 0;
}

/* umem_release: remember the range and mm at entry, the umem is freed before the exit. */
static __always_inline void save_release_state(__u64 *a)
{
	a[1] = umem_address(a[0]);
	a[2] = umem_length(a[0]);
	a[5] = umem_mm(a[0]);
}

/* rxe_completer: the next PSN to send and the retry counters before the run. */
static __always_inline void save_completer_state(__u64 *a)
{
	a[1] = qp_next_psn(a[0]);
	a[2] = a[3] = a[4] = a[5] = 0;
	rxe_retry_counters(a[0], &a[2]);
}

static __always_inline void save_entry_state(__u32 point, __u64 *a)
{
	if (point == ODP_POINT_UMEM_RELEASE)
		save_release_state(a);
	else if (point == ODP_POINT_RXE_COMPLETER)
		save_completer_state(a);
}

static __always_inline int fentry_enter(void *ctx, __u32 point)
{
	__u64 a[6] = {};

	for (int i = 0; i < 6; i++)
		bpf_get_func_arg(ctx, i, &a[i]);
	save_entry_state(point, a);
	return enter(point, a);
}

static __always_inline int fexit_leave(void *ctx, __u32 point)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	return leave(point, ret, ODP_METHOD_FENTRY);
}

static __always_inline int kprobe_enter(struct pt_regs *ctx, __u32 point)
{
	__u64 a[6] = {
		PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx),
		PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx),
	};

	save_entry_state(point, a);
	return enter(point, a);
}

static __always_inline int kretprobe_leave(struct pt_regs *ctx, __u32 point)
{
	return leave(point, PT_REGS_RC(ctx), ODP_METHOD_KPROBE);
}

#define FUNC_POINT(fn, point)                                                          \
	SEC("fentry/" #fn) int fentry_##fn(void *ctx) { return fentry_enter(ctx, point); }  \
	SEC("fexit/" #fn) int fexit_##fn(void *ctx) { return fexit_leave(ctx, point); }     \
	SEC("kprobe/" #fn) int kprobe_##fn(struct pt_regs *ctx)                            \
	{                                                                                  \
		return kprobe_enter(ctx, point);                                           \
	}                                                                                  \
	SEC("kretprobe/" #fn) int kretprobe_##fn(struct pt_regs *ctx)                      \
	{                                                                                  \
		return kretprobe_leave(ctx, point);                                        \
	}

FUNC_POINT(ib_umem_odp_get, ODP_POINT_UMEM_GET)
FUNC_POINT(ib_umem_odp_alloc_implicit, ODP_POINT_UMEM_ALLOC_IMPLICIT)
FUNC_POINT(ib_umem_odp_alloc_child, ODP_POINT_UMEM_ALLOC_CHILD)
FUNC_POINT(ib_umem_odp_release, ODP_POINT_UMEM_RELEASE)
FUNC_POINT(ib_umem_odp_map_dma_and_lock, ODP_POINT_MAP_DMA)
FUNC_POINT(ib_umem_odp_unmap_dma_pages, ODP_POINT_UNMAP_DMA)
FUNC_POINT(__mmu_notifier_invalidate_range_start, ODP_POINT_INV_RANGE_START)
FUNC_POINT(__mmu_notifier_invalidate_range_end, ODP_POINT_INV_RANGE_END)
FUNC_POINT(mmu_interval_read_begin, ODP_POINT_READ_BEGIN)
FUNC_POINT(hmm_range_fault, ODP_POINT_HMM_FAULT)
FUNC_POINT(hmm_range_fault_unlocked_timeout, ODP_POINT_HMM_FAULT_TIMEOUT)
FUNC_POINT(rxe_ib_invalidate_range, ODP_POINT_RXE_INVALIDATE)
FUNC_POINT(rxe_odp_mr_init_user, ODP_POINT_RXE_MR_INIT)
FUNC_POINT(rxe_odp_map_range_and_lock, ODP_POINT_RXE_MAP_RANGE)
FUNC_POINT(rxe_ib_advise_mr, ODP_POINT_RXE_ADVISE)
FUNC_POINT(rxe_ib_prefetch_mr_work, ODP_POINT_RXE_PREFETCH_WORK)
FUNC_POINT(rxe_odp_mr_copy, ODP_POINT_RXE_MR_COPY)
FUNC_POINT(rxe_completer, ODP_POINT_RXE_COMPLETER)
FUNC_POINT(mlx5_ib_invalidate_range, ODP_POINT_MLX5_INVALIDATE)
FUNC_POINT(pagefault_mr, ODP_POINT_MLX5_PAGEFAULT_MR)
FUNC_POINT(pagefault_real_mr, ODP_POINT_MLX5_PAGEFAULT_REAL)
FUNC_POINT(pagefault_implicit_mr, ODP_POINT_MLX5_PAGEFAULT_IMPLICIT)
FUNC_POINT(pagefault_single_data_segment, ODP_POINT_MLX5_PF_SINGLE_SEG)
FUNC_POINT(mlx5_ib_page_fault_resume, ODP_POINT_MLX5_PF_RESUME)
FUNC_POINT(mlx5_ib_advise_mr_prefetch, ODP_POINT_MLX5_ADVISE)
FUNC_POINT(mlx5_ib_prefetch_mr_work, ODP_POINT_MLX5_PREFETCH_WORK)

#include "cpu_fault.bpf.h"

SEC("tp_btf/page_fault_user")
int BPF_PROG(tp_btf_page_fault_user, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	return page_fault(address, error_code, ODP_METHOD_TP_BTF, faulting_task(regs));
}

/* The classic tracepoint's record: common header, then address, ip, error_code. */
struct page_fault_user_record {
	__u64 common;
	unsigned long address;
	unsigned long ip;
	unsigned long error_code;
};

SEC("tracepoint/exceptions/page_fault_user")
int tracepoint_page_fault_user(struct page_fault_user_record *rec)
{
	return page_fault(rec->address, rec->error_code, ODP_METHOD_TRACEPOINT, NULL);
}

/* libibverbs, in user space. ibv_mr: context, pd, addr, length, handle, lkey, rkey. */
struct ibv_mr_user {
	__u64 context;
	__u64 pd;
	__u64 addr;
	__u64 length;
	__u32 handle;
	__u32 lkey;
	__u32 rkey;
};

struct ibv_sge_user {
	__u64 addr;
	__u32 length;
	__u32 lkey;
};

/*
 * Library entry points call each other (ibv_reg_mr tail-jumps to ibv_reg_mr_iova2), so the
 * outermost call's state is kept and the return probe, on the function every path reaches,
 * emits one event per call whichever entry point the program used.
 */
static __always_inline int user_enter(__u32 point, __u64 *a)
{
	struct inflight v = {};
	__u64 key = inflight_key(point);

	struct inflight *outer;

	if (!task_selected())
		return 0;
	v.ts = bpf_ktime_get_ns();
	outer = bpf_map_lookup_elem(&inflight, &key);
	/* An entry younger than a second is the outer call of this one; an older one is left over
	 * from a call that never returned through a probed exit, and is replaced. */
	if (outer && v.ts - outer->ts < 1000000000ULL)
		return 0;
	for (int i = 0; i < 6; i++)
		v.args[i] = a[i];
	if (bpf_map_update_elem(&inflight, &key, &v, BPF_ANY))
		count_unpaired(point);
	return 0;
}

static __always_inline int user_leave(__u32 point, __u64 ret)
{
	__u64 key = inflight_key(point);
	struct inflight *v = bpf_map_lookup_elem(&inflight, &key);
	struct odp_event *e;

	if (!v)
		return 0;
	count(point);
	if (!emit_events)
		goto out;
	e = reserve();
	if (!e)
		goto out;
	__builtin_memset(e, 0, sizeof(*e));
	header(e, point, ODP_METHOD_UPROBE);
	e->ts_ns = v->ts;
	e->duration_ns = bpf_ktime_get_ns() - v->ts;
	e->mm = current_mm();
	e->ret = (__s64)ret;
	e->flags |= ODP_FLAG_HAS_RET;
	switch (point) {
	case ODP_POINT_VERBS_REG_MR: {
		struct ibv_mr_user mr = {};

		/* NULL means failure (errno in the caller); report 0 / -1 rather than a pointer. */
		e->ret = ret ? 0 : -1;
		e->obj = ret;
		e->start = v->args[1];
		e->end = v->args[1] + v->args[2];
		e->args[0] = v->args[4];
		e->args[3] = v->args[3];
		if (ret && !bpf_probe_read_user(&mr, sizeof(mr), (void *)ret)) {
			e->args[1] = mr.lkey;
			e->args[2] = mr.rkey;
		}
		break;
	}
	case ODP_POINT_VERBS_DEREG_MR:
		e->ret = (__s32)ret;
		e->obj = v->args[0];
		e->start = v->args[1];
		e->end = v->args[1] + v->args[2];
		e->args[1] = v->args[3];
		break;
	case ODP_POINT_VERBS_ADVISE:
		e->ret = (__s32)ret;
		e->obj = v->args[0];
		e->args[0] = v->args[1];
		e->args[1] = v->args[2];
		e->args[2] = v->args[4];
		e->start = v->args[5];
		e->end = v->args[5] + (v->args[3] & 0xffffffff);
		e->args[3] = v->args[3] >> 32;
		break;
	case ODP_POINT_VERBS_GET_DEVICES: {
		int n = 0;

		e->obj = ret;
		e->ret = ret ? 0 : -1;
		if (v->args[0])
			bpf_probe_read_user(&n, sizeof(n), (void *)v->args[0]);
		e->args[0] = ret ? n : 0;
		break;
	}
	}
	submit_selected(e);
out:
	bpf_map_delete_elem(&inflight, &key);
	return 0;
}

SEC("uprobe")
int BPF_UPROBE(uprobe_reg_mr, void *pd, void *addr, size_t length, __u64 iova, unsigned int access)
{
	__u64 a[6] = { (__u64)pd, (__u64)addr, length, iova, access, 0 };

	return user_enter(ODP_POINT_VERBS_REG_MR, a);
}

/* ibv_reg_mr and __ibv_reg_mr (the macro path of rdma-core >= 37): no iova argument. */
SEC("uprobe")
int BPF_UPROBE(uprobe_reg_mr_noiova, void *pd, void *addr, size_t length, unsigned int access)
{
	__u64 a[6] = { (__u64)pd, (__u64)addr, length, (__u64)addr, access, 0 };

	return user_enter(ODP_POINT_VERBS_REG_MR, a);
}

/* ibv_reg_mr_ex's argument (struct ibv_mr_init_attr, rdma-core >= 59), up to the fields read. */
struct ibv_mr_init_attr_user {
	__u64 length;
	__s32 access;
	__u32 pad;
	__u64 comp_mask;
	__u64 iova;
	__u64 addr;
};

#define IBV_REG_MR_MASK_IOVA (1u << 0)
#define IBV_REG_MR_MASK_ADDR (1u << 1)

/* ibv_reg_mr_ex: the arguments arrive in a struct, each valid only if its comp_mask bit is set.
 * ibv_reg_buf_mr (rdma-core >= 64, with ibv_alloc_buf, e.g. ibv_rc_pingpong) calls it. An
 * fd-based registration without an address reports start 0. */
SEC("uprobe")
int BPF_UPROBE(uprobe_reg_mr_ex, void *pd, void *attr)
{
	struct ibv_mr_init_attr_user in = {};
	__u64 a[6] = { (__u64)pd };

	if (attr && !bpf_probe_read_user(&in, sizeof(in), attr)) {
		__u64 addr = in.comp_mask & IBV_REG_MR_MASK_ADDR ? in.addr : 0;

		a[1] = addr;
		a[2] = in.length;
		a[3] = in.comp_mask & IBV_REG_MR_MASK_IOVA ? in.iova : addr;
		a[4] = (__u32)in.access;
	}
	return user_enter(ODP_POINT_VERBS_REG_MR, a);
}

SEC("uretprobe")
int BPF_URETPROBE(uretprobe_reg_mr, void *mr)
{
	return user_leave(ODP_POINT_VERBS_REG_MR, (__u64)mr);
}

SEC("uprobe")
int BPF_UPROBE(uprobe_dereg_mr, void *mr)
{
	struct ibv_mr_user m = {};
	__u64 a[6] = { (__u64)mr };

	if (mr && !bpf_probe_read_user(&m, sizeof(m), mr)) {
		a[1] = m.addr;
		a[2] = m.length;
		a[3] = m.lkey;
	}
	return user_enter(ODP_POINT_VERBS_DEREG_MR, a);
}

SEC("uretprobe")
int BPF_URETPROBE(uretprobe_dereg_mr, int ret)
{
	return user_leave(ODP_POINT_VERBS_DEREG_MR, (__u64)(__s64)ret);
}

SEC("uprobe")
int BPF_UPROBE(uprobe_advise_mr, void *pd, __u32 advice, __u32 flags, void *sg_list, __u32 num_sge)
{
	struct ibv_sge_user sge = {};
	__u64 a[6] = { (__u64)pd, advice, flags, 0, num_sge, 0 };

	if (sg_list && !bpf_probe_read_user(&sge, sizeof(sge), sg_list)) {
		a[3] = ((__u64)sge.lkey << 32) | sge.length;
		a[5] = sge.addr;
	}
	return user_enter(ODP_POINT_VERBS_ADVISE, a);
}

SEC("uretprobe")
int BPF_URETPROBE(uretprobe_advise_mr, int ret)
{
	return user_leave(ODP_POINT_VERBS_ADVISE, (__u64)(__s64)ret);
}

SEC("uprobe")
int BPF_UPROBE(uprobe_get_device_list, int *num)
{
	__u64 a[6] = { (__u64)num };

	return user_enter(ODP_POINT_VERBS_GET_DEVICES, a);
}

SEC("uretprobe")
int BPF_URETPROBE(uretprobe_get_device_list, void *list)
{
	return user_leave(ODP_POINT_VERBS_GET_DEVICES, (__u64)list);
}
