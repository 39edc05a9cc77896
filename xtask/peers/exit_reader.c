// The C peer's user side, for `cargo xtask bench`: loads exit_ringbuf.bpf.o with libbpf and
// drains its ring buffer with ring_buffer__poll(), the way a plain libbpf tool does (default
// wakeups: the kernel wakes the reader for every record unless it is already awake).
//
// For each record the handler takes CLOCK_MONOTONIC, which is the clock of bpf_ktime_get_ns()
// (kernel/bpf/helpers.c: ktime_get_mono_fast_ns), and keeps the kernel->handler latency in
// memory: printing each one would measure the terminal, not the reader.
//
// Usage: exit-reader OBJECT. Prints "ready" on stderr once attached. On SIGTERM or SIGINT it
// prints one latency in ns per line on stdout, then "exit-reader stopped seen=N lost=M" on
// stderr (lost: records the kernel could not reserve, summed over CPUs).

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

struct event {
	__u64 ktime_ns;
	__u32 tgid;
	__s32 exit_code;
};

// Enough for a few minutes of the host's maximum failing-exit rate; beyond it records are
// still counted, their latency is not kept.
#define MAX_LATENCIES (8u << 20)

static volatile sig_atomic_t stop;
static __u32 *latencies;
static unsigned long long seen;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int on_event(void *ctx, void *data, size_t size)
{
	(void)ctx;
	const struct event *e = data;
	struct timespec now;
	if (size < sizeof(*e))
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &now);
	__u64 ns = (__u64)now.tv_sec * 1000000000ull + (__u64)now.tv_nsec;
	if (seen < MAX_LATENCIES) {
		__u64 d = ns > e->ktime_ns ? ns - e->ktime_ns : 0;
		latencies[seen] = d > 0xffffffffull ? 0xffffffffu : (__u32)d;
	}
	seen++;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s exit_ringbuf.bpf.o\n", argv[0]);
		return 2;
	}
	latencies = calloc(MAX_LATENCIES, sizeof(*latencies));
	if (!latencies) {
		fprintf(stderr, "exit-reader: out of memory\n");
		return 1;
	}
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		fprintf(stderr, "exit-reader: cannot open %s: %d\n", argv[1], -errno);
		return 1;
	}
	int err = bpf_object__load(obj);
	if (err) {
		fprintf(stderr, "exit-reader: the kernel refused the program: %d\n", err);
		return 1;
	}
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "on_exit");
	struct bpf_link *link = prog ? bpf_program__attach(prog) : NULL;
	if (!link) {
		fprintf(stderr, "exit-reader: cannot attach on_exit: %d\n", -errno);
		return 1;
	}
	int events_fd = bpf_object__find_map_fd_by_name(obj, "events");
	int drops_fd = bpf_object__find_map_fd_by_name(obj, "drops");
	struct ring_buffer *rb = ring_buffer__new(events_fd, on_event, NULL, NULL);
	if (events_fd < 0 || drops_fd < 0 || !rb) {
		fprintf(stderr, "exit-reader: cannot open the maps\n");
		return 1;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	fprintf(stderr, "ready\n");
	while (!stop) {
		err = ring_buffer__poll(rb, 100);
		if (err < 0 && err != -EINTR) {
			fprintf(stderr, "exit-reader: ring_buffer__poll: %d\n", err);
			break;
		}
	}
	// What the last wakeup left behind.
	ring_buffer__consume(rb);

	int cpus = libbpf_num_possible_cpus();
	unsigned long long lost = 0;
	__u64 *per_cpu = calloc(cpus > 0 ? cpus : 1, sizeof(__u64));
	__u32 zero = 0;
	if (per_cpu && cpus > 0 && bpf_map_lookup_elem(drops_fd, &zero, per_cpu) == 0)
		for (int i = 0; i < cpus; i++)
			lost += per_cpu[i];
	unsigned long long kept = seen < MAX_LATENCIES ? seen : MAX_LATENCIES;
	for (unsigned long long i = 0; i < kept; i++)
		printf("%u\n", latencies[i]);
	fflush(stdout);
	fprintf(stderr, "exit-reader stopped seen=%llu lost=%llu\n", seen, lost);
	ring_buffer__free(rb);
	bpf_link__destroy(link);
	bpf_object__close(obj);
	return 0;
}
