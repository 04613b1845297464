// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Minimal programs used only to ask the running kernel whether fentry and kprobes work, by
 * loading and attaching them for real, before the main object is configured. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("fentry")
int feature_fentry(void *ctx)
{
	return 0;
}

SEC("kprobe")
int feature_kprobe(void *ctx)
{
	return 0;
}

/* Empty on purpose: attaching it shows whether tp_btf works, and held attached it is the floor
 * of what any program on the page-fault hook costs (the host benchmark's "empty program"). */
SEC("tp_btf/page_fault_user")
int feature_tp_btf(void *ctx)
{
	return 0;
}
