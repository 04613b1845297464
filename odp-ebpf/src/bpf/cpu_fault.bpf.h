/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The CPU page-fault path: per-CPU batches of compact records with their flush timer, and the
 * per-CPU cache of the faulting task. Part of odp.bpf.c's one object, included after its
 * filters, counters and the events ring, which it uses.
 */
#ifndef ODP_CPU_FAULT_BPF_H
#define ODP_CPU_FAULT_BPF_H

/*
 * CPU page faults of the watched processes (optionally within [range_lo, range_hi)). This is the
 * one point that fires at a process's full fault rate, and on the build host every helper call
 * here costs the faulting task 1-4% of a fault (BENCHMARKS.md). So under tp_btf the task is
 * found without a helper on most faults (faulting_task), its ids, mm and name are plain loads,
 * and records are batched per CPU: one ring-buffer write per CPU_FAULT_BATCH faults, and a
 * timer pinned to the CPU writes out a partial batch within CPU_FAULT_FLUSH_NS, so a quiet
 * stream is still seen live. The timer callback (softirq) and this program (a user-mode fault,
 * interrupts off) never run at the same time on one CPU, so a CPU's batch needs no lock. The
 * classic tracepoint (`task` NULL) reads the task through helpers and writes each record on its
 * own.
 */
#define CPU_FAULT_BATCH 64
#define CPU_FAULT_FLUSH_CLOCK 1 /* CLOCK_MONOTONIC */
#define CPU_FAULT_TIMER_BUSY -16 /* -EBUSY: set up by an earlier batch */
#define CPU_FAULT_FLUSH_NS 10000000ULL

struct cpu_fault_batch {
	struct bpf_timer flush;
	__u32 n;
	/* The timer is set up and pending. */
	bool armed;
	/* This kernel cannot pin the timer to the CPU (before 6.7): write records one by one. */
	bool unbatched;
	struct odp_cpu_fault rec[CPU_FAULT_BATCH];
};

/* One batch per CPU, indexed by CPU number (sized to the possible CPUs by the loader): a
 * per-CPU array cannot hold a bpf_timer. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_fault_batch);
} cpu_fault_batches SEC(".maps");

/* The reader's wake-up condition needs the ring's backlog, another helper call: it is asked once
 * per 64 faults on this CPU, plenty against a threshold of an eighth of the ring. */
static __always_inline __u64 cpu_fault_wakeup(__u64 n)
{
	return n % 64 == 0 ? wakeup_flags() : BPF_RB_NO_WAKEUP;
}

static __always_inline void write_cpu_fault_batch(struct cpu_fault_batch *b, __u64 flags)
{
	__u32 n = b->n;

	if (n > CPU_FAULT_BATCH)
		n = CPU_FAULT_BATCH;
	b->n = 0;
	if (n && bpf_ringbuf_output(&events, b->rec, n * sizeof(b->rec[0]), flags))
		count_drops(n);
}

static int flush_cpu_fault_batch(void *map, __u32 *key, struct cpu_fault_batch *b)
{
	b->armed = false;
	write_cpu_fault_batch(b, BPF_RB_NO_WAKEUP);
	return 0;
}

/* Starts the flush timer for a batch that just got its first record; false if it cannot run
 * pinned to this CPU, in which case the batch is written out now and the CPU stays unbatched. */
static __always_inline bool arm_cpu_fault_flush(struct cpu_fault_batch *b)
{
	long err = bpf_timer_init(&b->flush, &cpu_fault_batches, CPU_FAULT_FLUSH_CLOCK);

	if (err && err != CPU_FAULT_TIMER_BUSY)
		return false;
	if (bpf_timer_set_callback(&b->flush, flush_cpu_fault_batch))
		return false;
	if (bpf_timer_start(&b->flush, CPU_FAULT_FLUSH_NS, BPF_F_TIMER_CPU_PIN))
		return false;
	b->armed = true;
	return true;
}

static __always_inline int page_fault(__u64 address, __u64 error_code, __u8 method,
				      struct task_struct *task)
{
	struct cpu_fault_batch *b = NULL;
	struct odp_cpu_fault *e;
	bool selected;
	__u64 n;

	if (filtering())
		selected = task ? btf_task_selected(task) : task_selected();
	else
		selected = mm_watched(task ? (__u64)task->mm : current_mm());
	if (!selected)
		return 0;
	if (range_hi && !address_selected(address))
		return 0;
	n = count(ODP_POINT_PAGE_FAULT_USER);
	if (!emit_events)
		return 0;
	if (task) {
		__u32 cpu = bpf_get_smp_processor_id();

		b = bpf_map_lookup_elem(&cpu_fault_batches, &cpu);
		if (b && b->unbatched)
			b = NULL;
	}
	if (b) {
		e = &b->rec[b->n & (CPU_FAULT_BATCH - 1)];
	} else {
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count_drops(1);
			return 0;
		}
	}
	/* Every field is written, so no memset: a user fault never runs in a kernel thread. */
	e->ts_ns = bpf_ktime_get_ns();
	e->address = address;
	e->point = ODP_POINT_PAGE_FAULT_USER;
	e->method = method;
	e->flags = 0;
	e->error_code = error_code;
	if (task) {
		e->mm = (__u64)task->mm;
		e->pid = task->tgid;
		e->tid = task->pid;
		__builtin_memcpy(e->comm, task->comm, sizeof(e->comm));
	} else {
		__u64 id = bpf_get_current_pid_tgid();

		e->mm = current_mm();
		e->pid = id >> 32;
		e->tid = (__u32)id;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	}
	if (!b) {
		bpf_ringbuf_submit(e, cpu_fault_wakeup(n));
		return 0;
	}
	b->n += 1;
	if (b->n >= CPU_FAULT_BATCH)
		write_cpu_fault_batch(b, cpu_fault_wakeup(0));
	else if (!b->armed && !arm_cpu_fault_flush(b)) {
		b->unbatched = true;
		write_cpu_fault_batch(b, BPF_RB_NO_WAKEUP);
	}
	return 0;
}

/*
 * The task of the last user fault on each CPU, so that the next fault of the same thread finds
 * its task without bpf_get_current_task_btf (a helper call: about 1% of a fault on the build
 * host). A user fault's registers sit at a fixed offset in the faulting task's stack, so the
 * cached task is the current one exactly when its stack is where the registers are: two live
 * tasks never share a stack, and a dead task's stack pointer is cleared before its stack can
 * go to another task. Fields are read afresh on every fault (exec and prctl change them).
 */
struct fault_task_cache {
	__u64 task;
	/* Where the user registers sit from the stack's base, learned from a real current task. */
	__u64 regs_offset;
	/* The registers' address as a number: stored here, it reads back as a scalar. */
	__u64 regs;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fault_task_cache);
} fault_tasks SEC(".maps");

/* Since 6.2; without it every fault asks the helper. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

static __always_inline struct task_struct *faulting_task(struct pt_regs *regs)
{
	__u32 zero = 0;
	struct fault_task_cache *c = bpf_map_lookup_elem(&fault_tasks, &zero);
	struct task_struct *task;

	if (!c || !bpf_ksym_exists(bpf_rdonly_cast))
		return bpf_get_current_task_btf();
	c->regs = (__u64)regs;
	if (c->task) {
		/* Loads through this pointer are fault-checked: a stale one cannot crash. */
		task = bpf_rdonly_cast((void *)c->task, bpf_core_type_id_kernel(struct task_struct));
		if (c->regs - (__u64)task->stack == c->regs_offset)
			return task;
	}
	task = bpf_get_current_task_btf();
	c->task = (__u64)task;
	c->regs_offset = c->regs - (__u64)task->stack;
	return task;
}

#endif /* ODP_CPU_FAULT_BPF_H */
