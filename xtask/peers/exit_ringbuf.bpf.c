// SPDX-License-Identifier: GPL-2.0
// The C peer of detector's kernel side, for `cargo xtask bench`: the smallest program that does
// what detector's exit hook does for a storm of failing exits. At the death of a thread group
// (group_dead) with a non-zero exit code it writes {kernel time, pid, exit code} into a ring
// buffer; a failed reservation (buffer full) is counted, not reported.
//
// tp_btf/sched_process_exit is the BTF-typed raw tracepoint, the hook detector uses (as a raw
// tracepoint); its `group_dead` argument arrived in 6.16, so this program needs 6.16 or later:
// https://elixir.bootlin.com/linux/v6.16/source/include/trace/events/sched.h
// The task_struct below is a CO-RE stub: libbpf relocates the field offsets from the running
// kernel's BTF at load time, nothing is compiled in.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

struct task_struct {
	int exit_code;
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

struct event {
	__u64 ktime_ns;
	__u32 tgid;
	__s32 exit_code;
};

// 2 MiB, the size of detector's EVENTS ring buffer (detector-ebpf/src/maps.rs).
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} events SEC(".maps");

// Reservations that failed because the buffer was full.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p, _Bool group_dead)
{
	// do_exit() sets p->exit_code before the tracepoint (kernel/exit.c); single-threaded
	// storm children are their own group, so their exit code is the group's.
	int code = BPF_CORE_READ(p, exit_code);
	if (!group_dead || code == 0)
		return 0;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&drops, &zero);
		if (n)
			*n += 1;
		return 0;
	}
	e->ktime_ns = bpf_ktime_get_ns();
	e->tgid = BPF_CORE_READ(p, tgid);
	e->exit_code = code;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
