/* Kernel tests of steering: real reuseport listeners on loopback, the real program, real connects. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "need.h"
#include "steer.h"
#include "steer.skel.h"

#define NL_MAX 8 /* listeners per group in these tests */

/* Without root (or BPF) these tests cannot run: NEED() skips locally and fails under CI. */
static void need_root(void)
{
	NEED(geteuid() == 0, "steering tests need root (CAP_BPF, CAP_NET_ADMIN)");
}

static int quiet_libbpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return level == LIBBPF_WARN && getenv("STEER_TEST_VERBOSE") ? vfprintf(stderr, fmt, ap) : 0;
}

/* The instances this test process made, removed even when an assertion failed. */
static int instances_n;

static void remove_pins(void)
{
	static const char *const maps[] = { "ctl", "cores", "stats", "socks" };
	char path[256];
	int i;
	size_t m;

	for (i = 0; i < instances_n; i++) {
		for (m = 0; m < sizeof(maps) / sizeof(maps[0]); m++) {
			snprintf(path, sizeof(path), "/sys/fs/bpf/corral/test-%d-%d/%s",
				 (int)getpid(), i, maps[m]);
			unlink(path);
		}
		snprintf(path, sizeof(path), "/sys/fs/bpf/corral/test-%d-%d", (int)getpid(), i);
		rmdir(path);
	}
}

TestSuite(steer_kernel, .fini = remove_pins);

/* A test configuration for n workers, worker i pinned to CPU i % ncpu, unique instance. */
static void test_config(struct config *cfg, uint32_t n, const char *policy)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint32_t i;

	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->instance, sizeof(cfg->instance), "test-%d-%d", (int)getpid(), instances_n++);
	cfg->cores_n = n;
	for (i = 0; i < n; i++) {
		cfg->cores[i] = i % (uint32_t)(ncpu > 0 ? ncpu : 1);
		cfg->steering.weights[i] = 1;
	}
	cfg->steering.weights_n = n;
	snprintf(cfg->steering.policy, sizeof(cfg->steering.policy), "%s", policy);
}

static struct steer *open_or_die(const struct config *cfg)
{
	char err[256] = "";
	struct steer *s = NULL;
	int ret;

	libbpf_set_print(quiet_libbpf);
	ret = steer_open(&s, cfg, err, sizeof(err));
	if (ret && geteuid() == 0 && (ret == -EPERM || ret == -ENOSYS))
		NEED(false, "BPF unavailable: %s", err);
	cr_assert_eq(ret, 0, "steer_open: %d %s", ret, err);
	cr_assert_not_null(s);
	return s;
}

/* An address of either family from text ("127.0.0.1" or "::1"). */
static socklen_t sockaddr_of(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;

		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		cr_assert_eq(inet_pton(AF_INET6, ip, &a6->sin6_addr), 1);
		return sizeof(*a6);
	}
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;

	a4->sin_family = AF_INET;
	a4->sin_port = htons(port);
	cr_assert_eq(inet_pton(AF_INET, ip, &a4->sin_addr), 1);
	return sizeof(*a4);
}

static int listener(const char *ip, uint16_t port)
{
	struct sockaddr_storage a;
	socklen_t len = sockaddr_of(&a, ip, port);
	int fd, one = 1;

	fd = socket(a.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	cr_assert(fd >= 0);
	if (a.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, len), 0, "bind %s:%u: %s", ip, port,
		     strerror(errno));
	cr_assert_eq(listen(fd, 128), 0);
	return fd;
}

static uint16_t port_of(int fd)
{
	struct sockaddr_storage a;
	socklen_t len = sizeof(a);

	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	if (a.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
	return ntohs(((struct sockaddr_in *)&a)->sin_port);
}

/* n listeners of one reuseport group: the first binds port 0, the others its port. */
static uint16_t group(int *fds, int n, const char *ip, uint16_t port)
{
	int i;

	for (i = 0; i < n; i++) {
		fds[i] = listener(ip, port);
		port = port_of(fds[i]);
	}
	return port;
}

static void register_all(struct steer *s, uint32_t listen_idx, const int *fds, int n)
{
	int i, ret;

	for (i = 0; i < n; i++) {
		ret = steer_register(s, listen_idx, (uint32_t)i, fds[i]);
		cr_assert_eq(ret, 0, "steer_register(%u, %d): %s", listen_idx, i, strerror(-ret));
	}
}

/*
 * A client connection to ip:port from src:sport (src NULL = unbound). Returns the fd.
 * Tests that need to repeat a 4-tuple use their own source addresses (127.1.x.y), which
 * no other test uses, so that nobody else can hold the source port in between.
 */
static int client_from(const char *ip, uint16_t port, const char *src, uint16_t sport)
{
	struct sockaddr_storage a, b;
	socklen_t alen = sockaddr_of(&a, ip, port), blen;
	int fd, one = 1;

	fd = socket(a.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(fd >= 0);
	if (src) {
		blen = sockaddr_of(&b, src, sport);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		cr_assert_eq(bind(fd, (struct sockaddr *)&b, blen), 0, "bind %s:%u: %s", src, sport,
			     strerror(errno));
	}
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, alen), 0, "connect %s:%u: %s", ip, port,
		     strerror(errno));
	return fd;
}

static int client(const char *ip, uint16_t port, uint16_t sport)
{
	return client_from(ip, port, NULL, sport);
}

/* Closes with a reset, so that no TIME_WAIT keeps the 4-tuple busy. */
static void close_rst(int fd)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

/*
 * When set, which() does for each connection it accepts what the worker owning the listener
 * would: steer_conn_opened() and, the connection being closed at once, steer_conn_closed().
 * The load policies count connections placed but not taken as queued, so a test that asserts
 * a run of picks by them must take the connections as a worker would.
 */
static struct steer *as_worker;

/* Which listener got the one pending connection: waits up to 2 s. Returns its index. */
static int which(const int *fds, int n)
{
	struct pollfd p[NL_MAX];
	int i, c;

	for (i = 0; i < n; i++)
		p[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
	cr_assert(poll(p, (nfds_t)n, 2000) > 0, "no listener got the connection");
	for (i = 0; i < n; i++) {
		if (!(p[i].revents & POLLIN))
			continue;
		c = accept4(fds[i], NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		close_rst(c);
		if (as_worker) {
			steer_conn_opened(steer_core(as_worker, (uint32_t)i));
			steer_conn_closed(steer_core(as_worker, (uint32_t)i), false);
		}
		return i;
	}
	cr_assert_fail("a listener was readable but accept failed");
	return -1;
}

/* m connections, one at a time; counts per listener. */
static void spread(const int *fds, int n, uint16_t port, int m, int *hits)
{
	int i, c;

	memset(hits, 0, sizeof(int) * (size_t)n);
	for (i = 0; i < m; i++) {
		c = client("127.0.0.1", port, 0);
		hits[which(fds, n)]++;
		close_rst(c);
	}
}

static void close_all(int *fds, int n)
{
	int i;

	for (i = 0; i < n; i++)
		close(fds[i]);
}

/* The program's counters, read from the pinned map (as bpftool or corralctl would). */
static void pinned_stats(const struct config *cfg, struct steer_stats *sum)
{
	int fd, ncpu = libbpf_num_possible_cpus(), c, i;
	struct steer_stats *v;
	char path[256];
	__u32 zero = 0;

	snprintf(path, sizeof(path), "/sys/fs/bpf/corral/%s/stats", cfg->instance);
	fd = bpf_obj_get(path);
	cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
	v = calloc((size_t)ncpu, sizeof(*v));
	cr_assert_eq(bpf_map_lookup_elem(fd, &zero, v), 0);
	memset(sum, 0, sizeof(*sum));
	for (c = 0; c < ncpu; c++) {
		for (i = 0; i < STEER_CORES_MAX; i++)
			sum->steered[i] += v[c].steered[i];
		sum->migrated += v[c].migrated;
		for (i = 0; i < STEER_FB_N; i++)
			sum->fallback[i] += v[c].fallback[i];
	}
	free(v);
	close(fd);
}

Test(steer_kernel, round_robin_is_even_within_one)
{
	struct config cfg;
	struct steer *s;
	int fds[4], hits[4], i;
	uint16_t port;

	need_root();
	test_config(&cfg, 4, "round-robin");
	s = open_or_die(&cfg);
	cr_assert_str_eq(steer_policy_name(s), "round-robin");
	port = group(fds, 4, "127.0.0.1", 0);
	register_all(s, 0, fds, 4);
	spread(fds, 4, port, 202, hits);
	for (i = 0; i < 4; i++) {
		cr_assert(hits[i] >= 50 && hits[i] <= 51, "listener %d got %d", i, hits[i]);
		cr_assert_eq(steer_steered(s, (uint32_t)i), (uint64_t)hits[i]);
	}
	cr_assert_eq(steer_fallbacks(s), 0);
	close_all(fds, 4);
	steer_close(s);
}

Test(steer_kernel, weighted_three_to_one_within_three_percent)
{
	struct config cfg;
	struct steer *s;
	int fds[2], hits[2];
	uint16_t port;

	need_root();
	test_config(&cfg, 2, "weighted");
	cfg.steering.weights[0] = 3;
	cfg.steering.weights[1] = 1;
	s = open_or_die(&cfg);
	port = group(fds, 2, "127.0.0.1", 0);
	register_all(s, 0, fds, 2);
	spread(fds, 2, port, 400, hits);
	cr_assert(hits[0] >= 291 && hits[0] <= 309, "3:1 gave %d:%d", hits[0], hits[1]);
	cr_assert_eq(hits[0] + hits[1], 400);
	/* A zero weight takes nothing. */
	cr_assert_eq(steer_set_weight(s, 1, 0), 0);
	spread(fds, 2, port, 40, hits);
	cr_assert_eq(hits[1], 0);
	cr_assert_eq(steer_set_weight(s, 1, STEER_WEIGHT_MAX + 1), -EINVAL);
	cr_assert_eq(steer_set_weight(s, 2, 1), -EINVAL);
	close_all(fds, 2);
	steer_close(s);
}

Test(steer_kernel, drained_core_gets_nothing)
{
	struct config cfg;
	struct steer *s;
	int fds[3], hits[3];
	uint16_t port;
	size_t p;
	const char *policies[] = { "hash",	   "round-robin", "least-conn", "least-load",
				   "power-of-two", "weighted",	  "cpu-local" };

	need_root();
	test_config(&cfg, 3, "round-robin");
	s = open_or_die(&cfg);
	port = group(fds, 3, "127.0.0.1", 0);
	register_all(s, 0, fds, 3);
	cr_assert_eq(steer_set_drained(s, 1, true), 0);
	for (p = 0; p < sizeof(policies) / sizeof(policies[0]); p++) {
		cr_assert_eq(steer_set_policy(s, policies[p]), 0);
		spread(fds, 3, port, 30, hits);
		cr_assert_eq(hits[1], 0, "%s sent %d to the drained core", policies[p], hits[1]);
	}
	cr_assert_eq(steer_fallbacks(s), 0);
	/* Undrain asked: still skipped until the worker says its listener is back. */
	cr_assert_eq(steer_set_drained(s, 1, false), 0);
	cr_assert_eq(steer_set_policy(s, "round-robin"), 0);
	spread(fds, 3, port, 30, hits);
	cr_assert_eq(hits[1], 0, "the undraining core got %d before its listener was back",
		     hits[1]);
	/* Undrained: it takes its share again. */
	steer_undrain_done(s, 1);
	spread(fds, 3, port, 30, hits);
	cr_assert_eq(hits[1], 10);
	/* A drain after the ask wins over a late steer_undrain_done(). */
	cr_assert_eq(steer_set_drained(s, 1, true), 0);
	steer_undrain_done(s, 1);
	spread(fds, 3, port, 30, hits);
	cr_assert_eq(hits[1], 0);
	cr_assert_eq(steer_fallbacks(s), 0);
	close_all(fds, 3);
	steer_close(s);
}

struct pinned_client {
	int cpu;
	uint16_t port;
	int n;
};

static void *pinned_client_main(void *arg)
{
	struct pinned_client *pc = arg;
	cpu_set_t set;
	int i;

	CPU_ZERO(&set);
	CPU_SET(pc->cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		return (void *)(intptr_t)-errno;
	for (i = 0; i < pc->n; i++)
		close_rst(client("127.0.0.1", pc->port, 0));
	return NULL;
}

Test(steer_kernel, cpu_local_follows_the_client_cpu)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct pinned_client pc;
	struct config cfg;
	struct steer *s;
	int fds[NL_MAX] = { 0 }, hits[NL_MAX], n, cpu, i;
	uint16_t port;
	pthread_t t;
	void *rv;

	need_root();
	/* On one CPU every client runs on the only worker's CPU: the test would prove nothing. */
	NEED(ncpu >= 2, "cpu-local needs two CPUs to tell the workers apart");
	n = ncpu > NL_MAX ? NL_MAX : (int)ncpu;
	test_config(&cfg, (uint32_t)n, "cpu-local");
	/* Reverse the pinning so that "worker == cpu" by accident cannot pass the test. */
	for (i = 0; i < n; i++)
		cfg.cores[i] = (uint32_t)(n - 1 - i);
	s = open_or_die(&cfg);
	port = group(fds, n, "127.0.0.1", 0);
	register_all(s, 0, fds, n);
	for (cpu = 0; cpu < n; cpu++) {
		pc = (struct pinned_client){ .cpu = cpu, .port = port, .n = 20 };
		cr_assert_eq(pthread_create(&t, NULL, pinned_client_main, &pc), 0);
		cr_assert_eq(pthread_join(t, &rv), 0);
		cr_assert_null(rv, "client thread failed: %ld", (long)(intptr_t)rv);
		memset(hits, 0, sizeof(hits));
		for (i = 0; i < 20; i++)
			hits[which(fds, n)]++;
		cr_assert_eq(hits[n - 1 - cpu], 20, "cpu %d: worker %d got %d of 20", cpu,
			     n - 1 - cpu, hits[n - 1 - cpu]);
	}
	close_all(fds, n);
	steer_close(s);
}

/* More workers than CPUs: 4 workers, two per CPU (worker i on CPU i % 2). */
Test(steer_kernel, four_workers_on_two_cpus)
{
	struct pinned_client pc;
	struct config cfg;
	struct steer *s;
	int fds[4], hits[4], cpu, i;
	uint16_t port;
	pthread_t t;
	void *rv;

	need_root();
	NEED(sysconf(_SC_NPROCESSORS_ONLN) >= 2, "needs two CPUs");
	test_config(&cfg, 4, "round-robin");
	for (i = 0; i < 4; i++)
		cfg.cores[i] = (uint32_t)(i % 2);
	s = open_or_die(&cfg);
	port = group(fds, 4, "127.0.0.1", 0);
	register_all(s, 0, fds, 4);
	spread(fds, 4, port, 40, hits);
	for (i = 0; i < 4; i++)
		cr_assert_eq(hits[i], 10, "worker %d got %d of 40", i, hits[i]);

	/* cpu-local: a CPU's connections go to its two workers only, and to both. */
	cr_assert_eq(steer_set_policy(s, "cpu-local"), 0);
	for (cpu = 0; cpu < 2; cpu++) {
		pc = (struct pinned_client){ .cpu = cpu, .port = port, .n = 40 };
		cr_assert_eq(pthread_create(&t, NULL, pinned_client_main, &pc), 0);
		cr_assert_eq(pthread_join(t, &rv), 0);
		cr_assert_null(rv);
		memset(hits, 0, sizeof(hits));
		for (i = 0; i < 40; i++)
			hits[which(fds, 4)]++;
		cr_assert_eq(hits[cpu] + hits[cpu + 2], 40, "cpu %d: %d %d %d %d", cpu, hits[0],
			     hits[1], hits[2], hits[3]);
		cr_assert(hits[cpu] > 0 && hits[cpu + 2] > 0, "cpu %d: %d/%d", cpu, hits[cpu],
			  hits[cpu + 2]);
	}
	/* One of CPU 0's workers drained: the other takes CPU 0 alone. */
	cr_assert_eq(steer_set_drained(s, 2, true), 0);
	pc = (struct pinned_client){ .cpu = 0, .port = port, .n = 20 };
	cr_assert_eq(pthread_create(&t, NULL, pinned_client_main, &pc), 0);
	cr_assert_eq(pthread_join(t, &rv), 0);
	memset(hits, 0, sizeof(hits));
	for (i = 0; i < 20; i++)
		hits[which(fds, 4)]++;
	cr_assert_eq(hits[0], 20);
	cr_assert_eq(steer_fallbacks(s), 0);
	close_all(fds, 4);
	steer_close(s);
}

Test(steer_kernel, hash_matches_the_kernel_without_a_program)
{
	enum {
		N = 3,
		M = 60
	};
	struct config cfg;
	struct steer *s;
	int fds[N], got[M], c, i, zero = 0, hits[N] = { 0 };
	uint16_t port, sports[M];
	char src[M][32];

	need_root();
	test_config(&cfg, N, "hash");
	s = open_or_die(&cfg);
	port = group(fds, N, "127.0.0.1", 0);
	register_all(s, 0, fds, N);
	for (i = 0; i < M; i++) {
		snprintf(src[i], sizeof(src[i]), "127.1.%d.%d", i / 200, i % 200 + 1);
		c = client_from("127.0.0.1", port, src[i], 0);
		sports[i] = port_of(c);
		got[i] = which(fds, N);
		hits[got[i]]++;
		close_rst(c);
	}
	for (i = 0; i < N; i++)
		cr_assert(hits[i] >= M / N / 3, "listener %d got only %d of %d", i, hits[i], M);
	cr_assert_eq(steer_fallbacks(s), 0);
	/* The same 4-tuples again: the same listeners (deterministic per 4-tuple). */
	for (i = 0; i < M; i++) {
		c = client_from("127.0.0.1", port, src[i], sports[i]);
		cr_assert_eq(which(fds, N), got[i], "%s:%u moved", src[i], sports[i]);
		close_rst(c);
	}
	/* And the kernel alone, with the program detached, picks exactly the same ones. */
	cr_assert_eq(setsockopt(fds[0], SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &zero, sizeof(zero)),
		     0);
	for (i = 0; i < M; i++) {
		c = client_from("127.0.0.1", port, src[i], sports[i]);
		cr_assert_eq(which(fds, N), got[i], "kernel hash differs for %s:%u", src[i],
			     sports[i]);
		close_rst(c);
	}
	close_all(fds, N);
	steer_close(s);
}

Test(steer_kernel, policy_change_takes_effect_on_the_next_connection)
{
	struct config cfg;
	struct steer *s;
	int fds[2], hits[2], c;
	uint16_t port;

	need_root();
	test_config(&cfg, 2, "round-robin");
	s = open_or_die(&cfg);
	port = group(fds, 2, "127.0.0.1", 0);
	register_all(s, 0, fds, 2);
	as_worker = s;
	spread(fds, 2, port, 4, hits);
	cr_assert_eq(hits[0], 2);

	/* least-conn with worker 0 holding connections: the very next one goes to worker 1. */
	steer_conn_opened(steer_core(s, 0));
	steer_conn_opened(steer_core(s, 0));
	cr_assert_eq(steer_set_policy(s, "least-conn"), 0);
	cr_assert_str_eq(steer_policy_name(s), "least-conn");
	spread(fds, 2, port, 10, hits);
	cr_assert_eq(hits[1], 10);
	/* The worker's own counters move the choice, without any syscall. */
	steer_conn_closed(steer_core(s, 0), false);
	steer_conn_closed(steer_core(s, 0), false);
	for (c = 0; c < 3; c++)
		steer_conn_opened(steer_core(s, 1));
	spread(fds, 2, port, 10, hits);
	cr_assert_eq(hits[0], 10);

	/* least-load: worker 0 busy (tick figures), worker 1 idle with one request. */
	cr_assert_eq(steer_set_policy(s, "least-load"), 0);
	for (c = 0; c < 20; c++)
		steer_tick(steer_core(s, 0), 100000000, 100000000);
	steer_req_started(steer_core(s, 1), false);
	spread(fds, 2, port, 10, hits);
	cr_assert_eq(hits[1], 10);

	/* power-of-two with two workers: the lighter one every time. */
	cr_assert_eq(steer_set_policy(s, "power-of-two"), 0);
	spread(fds, 2, port, 10, hits);
	cr_assert_eq(hits[1], 10);

	cr_assert_eq(steer_set_policy(s, "no-such-policy"), -EINVAL);
	cr_assert_str_eq(steer_policy_name(s), "power-of-two");
	as_worker = NULL;
	close_all(fds, 2);
	steer_close(s);
}

/* The listener's accept queue length, as the kernel reports it (TCP_INFO of a listener). */
static uint32_t queue_len(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
	cr_assert_eq(ti.tcpi_state, TCP_LISTEN);
	return ti.tcpi_unacked;
}

static uint32_t queued(struct steer *s, uint32_t w)
{
	struct steer_core *c = steer_core(s, w);

	return __atomic_load_n(&c->steered, __ATOMIC_RELAXED) -
	       __atomic_load_n(&c->taken, __ATOMIC_RELAXED);
}

Test(steer_kernel, a_connection_weighs_on_its_worker_from_the_syn_on)
{
	enum {
		Q = 6
	};
	struct config cfg;
	struct steer *s;
	int fds[2], cli[Q], i, c;
	uint16_t port;

	need_root();
	test_config(&cfg, 2, "least-conn");
	s = open_or_die(&cfg);
	port = group(fds, 2, "127.0.0.1", 0);
	register_all(s, 0, fds, 2);
	/*
	 * Worker 1 holds two connections (placed by the program, then taken); nothing is
	 * accepted during the burst.
	 */
	__atomic_store_n(&steer_core(s, 1)->steered, 2, __ATOMIC_RELAXED);
	steer_conn_opened(steer_core(s, 1));
	steer_conn_opened(steer_core(s, 1));
	for (i = 0; i < Q; i++)
		cli[i] = client("127.0.0.1", port, 0);
	usleep(50000); /* let the last handshakes reach the accept queues */
	/*
	 * Worker 0 takes two, then they alternate (least-conn: held + queued). Counting only
	 * accepted connections, all six went to worker 0.
	 */
	cr_assert_eq(queue_len(fds[0]), 4, "worker 0 queue %u", queue_len(fds[0]));
	cr_assert_eq(queue_len(fds[1]), 2, "worker 1 queue %u", queue_len(fds[1]));
	cr_assert_eq(queued(s, 0), 4);
	cr_assert_eq(queued(s, 1), 2);

	/* A count left behind (a handshake that never completed): the tick's resync clears it. */
	c = (int)(queued(s, 0) + 100 + steer_core(s, 0)->taken);
	__atomic_store_n(&steer_core(s, 0)->steered, (uint32_t)c, __ATOMIC_RELAXED);
	cr_assert_eq(queued(s, 0), 104);
	steer_resync(steer_core(s, 0), fds, 1);
	cr_assert_eq(queued(s, 0), 4);
	/* Taking one (as the worker does on accept) leaves three; a resync agrees. */
	c = accept4(fds[0], NULL, NULL, SOCK_CLOEXEC);
	cr_assert(c >= 0);
	steer_conn_opened(steer_core(s, 0));
	cr_assert_eq(queued(s, 0), 3);
	steer_resync(steer_core(s, 0), fds, 1);
	cr_assert_eq(queued(s, 0), 3);
	/* Taken ahead of placed (the kernel's hash placed some): the resync restores it too. */
	__atomic_store_n(&steer_core(s, 1)->taken,
			 __atomic_load_n(&steer_core(s, 1)->steered, __ATOMIC_RELAXED) + 5,
			 __ATOMIC_RELAXED);
	steer_resync(steer_core(s, 1), &fds[1], 1);
	cr_assert_eq(queued(s, 1), 2);
	/* A listener that is not listening (-1, or shut down) counts nothing. */
	i = -1;
	steer_resync(steer_core(s, 1), &i, 1);
	cr_assert_eq(queued(s, 1), 0);
	close(c);
	for (i = 0; i < Q; i++)
		close_rst(cli[i]);
	close_all(fds, 2);
	steer_close(s);
}

Test(steer_kernel, drain_migrates_queued_connections_without_reset)
{
	enum {
		Q = 16
	};
	struct steer_stats st;
	struct config cfg;
	struct steer *s;
	int fds[2], cli[Q], acc[Q], n = 0, i, c, hits[2];
	struct pollfd p;
	uint16_t port;
	char ch;

	need_root();
	test_config(&cfg, 2, "round-robin");
	s = open_or_die(&cfg);
	port = group(fds, 2, "127.0.0.1", 0);
	register_all(s, 0, fds, 2);
	/* Q connections queued, not accepted: half on each listener. */
	for (i = 0; i < Q; i++)
		cli[i] = client("127.0.0.1", port, 0);
	usleep(50000); /* let the last handshakes reach the accept queues */

	/*
	 * Drain worker 1 the way the data plane does: mark it, then shut its listener down.
	 * (Worker 1's listener bound the port explicitly; one that bound port 0 loses its
	 * port on shutdown and would re-listen on another one.)
	 */
	cr_assert_eq(steer_set_drained(s, 1, true), 0);
	cr_assert_eq(shutdown(fds[1], SHUT_RDWR), 0);

	/* Every queued connection is now on listener 0. */
	p = (struct pollfd){ .fd = fds[0], .events = POLLIN };
	while (n < Q && poll(&p, 1, 1000) > 0) {
		c = accept4(fds[0], NULL, NULL, SOCK_CLOEXEC);
		if (c >= 0)
			acc[n++] = c;
	}
	cr_assert_eq(n, Q, "only %d of %d queued connections survived the drain", n, Q);
	pinned_stats(&cfg, &st);
	cr_assert_eq(st.migrated, Q / 2, "migrated %llu", (unsigned long long)st.migrated);
	cr_assert_eq(st.fallback[STEER_FB_SELECT] + st.fallback[STEER_FB_POLICY], 0);
	/* And none was reset: data goes through both ways. */
	for (i = 0; i < Q; i++)
		cr_assert_eq(write(acc[i], "x", 1), 1);
	for (i = 0; i < Q; i++) {
		cr_assert_eq(read(cli[i], &ch, 1), 1, "client %d: %s", i, strerror(errno));
		cr_assert_eq(ch, 'x');
		close_rst(cli[i]);
		close(acc[i]);
	}

	/*
	 * Undrain the way the data plane does: asked (main), then the worker listens again,
	 * registers again and ends the pending undrain; worker 1 takes its share.
	 */
	cr_assert_eq(steer_set_drained(s, 1, false), 0);
	cr_assert_eq(listen(fds[1], 128), 0);
	cr_assert_eq(port_of(fds[1]), port);
	cr_assert_eq(steer_register(s, 0, 1, fds[1]), 0);
	steer_undrain_done(s, 1);
	spread(fds, 2, port, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5, "after undrain %d/%d, fallbacks %llu", hits[0],
		  hits[1], (unsigned long long)steer_fallbacks(s));
	close_all(fds, 2);
	steer_close(s);
}

/*
 * A listener shut down without being marked drained first (a worker exiting): the policy
 * may pick it for a migrating connection, its slot is empty, and the kernel's hash moves
 * the connection to a remaining listener. Nothing is lost either.
 */
Test(steer_kernel, undrained_shutdown_still_migrates_everything)
{
	enum {
		Q = 12
	};
	struct steer_stats st;
	struct config cfg;
	struct steer *s;
	int fds[3], cli[Q], n = 0, i, c;
	struct pollfd p[2];

	need_root();
	test_config(&cfg, 3, "round-robin");
	s = open_or_die(&cfg);
	group(fds, 3, "127.0.0.1", 0);
	register_all(s, 0, fds, 3);
	for (i = 0; i < Q; i++)
		cli[i] = client("127.0.0.1", port_of(fds[0]), 0);
	usleep(50000);
	cr_assert_eq(shutdown(fds[2], SHUT_RDWR), 0); /* not drained: a plain exit */
	p[0] = (struct pollfd){ .fd = fds[0], .events = POLLIN };
	p[1] = (struct pollfd){ .fd = fds[1], .events = POLLIN };
	while (n < Q && poll(p, 2, 1000) > 0) {
		for (i = 0; i < 2; i++) {
			if (!(p[i].revents & POLLIN))
				continue;
			c = accept4(fds[i], NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0) {
				n++;
				close(c);
			}
		}
	}
	cr_assert_eq(n, Q, "only %d of %d queued connections survived", n, Q);
	pinned_stats(&cfg, &st);
	/*
	 * Q/3 were queued on the closed listener. Round-robin over 3 workers picks the closed
	 * one for at least one of them: that one fell back to the hash, the rest were steered.
	 */
	cr_assert_eq(st.migrated + st.fallback[STEER_FB_SELECT], Q / 3,
		     "migrated %llu, fell back %llu", (unsigned long long)st.migrated,
		     (unsigned long long)st.fallback[STEER_FB_SELECT]);
	cr_assert(st.fallback[STEER_FB_SELECT] >= 1);
	for (i = 0; i < Q; i++)
		close_rst(cli[i]);
	close_all(fds, 3);
	steer_close(s);
}

Test(steer_kernel, empty_slot_counts_a_fallback_and_never_refuses)
{
	struct steer_stats st;
	struct config cfg;
	struct steer *s;
	int fds[2], hits[2];
	uint16_t port;

	need_root();
	/* Three workers configured, only two listeners registered: slot 2 stays empty. */
	test_config(&cfg, 3, "round-robin");
	s = open_or_die(&cfg);
	port = group(fds, 2, "127.0.0.1", 0);
	register_all(s, 0, fds, 2);
	spread(fds, 2, port, 30, hits);
	cr_assert_eq(hits[0] + hits[1], 30); /* every connection accepted: the kernel's hash */
	cr_assert_eq(steer_fallbacks(s), 10);
	cr_assert_eq(steer_steered(s, 0), 10);
	cr_assert_eq(steer_steered(s, 1), 10);
	cr_assert_eq(steer_steered(s, 2), 0);
	pinned_stats(&cfg, &st);
	cr_assert_eq(st.fallback[STEER_FB_SELECT], 10);
	/* All drained: the policy gives up, the kernel still serves everyone. */
	cr_assert_eq(steer_set_drained(s, 0, true), 0);
	cr_assert_eq(steer_set_drained(s, 1, true), 0);
	cr_assert_eq(steer_set_drained(s, 2, true), 0);
	spread(fds, 2, port, 10, hits);
	cr_assert_eq(hits[0] + hits[1], 10);
	pinned_stats(&cfg, &st);
	cr_assert_eq(st.fallback[STEER_FB_POLICY], 10);
	cr_assert_eq(steer_fallbacks(s), 20);
	close_all(fds, 2);
	steer_close(s);
}

Test(steer_kernel, each_listen_address_is_its_own_group)
{
	struct config cfg;
	struct steer *s;
	int a[2], b[2], c2[2], d[2], hits[2];
	uint16_t pa, pb, pc, pd;

	need_root();
	test_config(&cfg, 2, "round-robin");
	s = open_or_die(&cfg);
	pa = group(a, 2, "127.0.0.1", 0);
	pb = group(b, 2, "127.0.0.1", 0);
	/* A third group on the same port as the second, another address. */
	pc = group(c2, 2, "127.0.0.2", pb);
	cr_assert_eq(pc, pb);
	register_all(s, 0, a, 2);
	register_all(s, 1, b, 2);
	register_all(s, 2, c2, 2);
	/* And IPv6 on the first group's port: same port, other family, its own group. */
	pd = group(d, 2, "::1", pa);
	cr_assert_eq(pd, pa);
	register_all(s, 3, d, 2);
	spread(a, 2, pa, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5, "group 0: %d/%d", hits[0], hits[1]);
	spread(b, 2, pb, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5, "group 1: %d/%d", hits[0], hits[1]);
	memset(hits, 0, sizeof(hits));
	for (int i = 0; i < 10; i++) {
		int c = client("127.0.0.2", pc, 0);

		hits[which(c2, 2)]++;
		close_rst(c);
	}
	cr_assert(hits[0] == 5 && hits[1] == 5, "group 2: %d/%d", hits[0], hits[1]);
	memset(hits, 0, sizeof(hits));
	for (int i = 0; i < 10; i++) {
		int c = client("::1", pd, 0);

		hits[which(d, 2)]++;
		close_rst(c);
	}
	cr_assert(hits[0] == 5 && hits[1] == 5, "group 3 (IPv6): %d/%d", hits[0], hits[1]);
	cr_assert_eq(steer_fallbacks(s), 0);
	cr_assert_eq(steer_steered(s, 0) + steer_steered(s, 1), 40);
	/* Registering the same listener twice is harmless; bad arguments are refused. */
	cr_assert_eq(steer_register(s, 0, 0, a[0]), 0);
	cr_assert_eq(steer_register(s, STEER_LISTEN_MAX, 0, a[0]), -EINVAL);
	cr_assert_eq(steer_register(s, 0, 2, a[0]), -EINVAL);
	close_all(a, 2);
	close_all(b, 2);
	close_all(c2, 2);
	close_all(d, 2);
	steer_close(s);
}

static bool exists(const char *dir, const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

Test(steer_kernel, pins_are_made_reused_after_a_crash_and_removed)
{
	struct config cfg;
	struct steer *s;
	char dir[128];
	int fds[2], hits[2], status;
	uint16_t port;
	pid_t pid;

	need_root();
	test_config(&cfg, 2, "round-robin");
	snprintf(dir, sizeof(dir), "/sys/fs/bpf/corral/%s", cfg.instance);

	/* A run that crashes: it opens, then dies without steer_close(). */
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char err[256];
		struct steer *cs = NULL;

		_exit(steer_open(&cs, &cfg, err, sizeof(err)) ? 1 : 0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	cr_assert(exists(dir, "ctl") && exists(dir, "cores") && exists(dir, "stats") &&
		  exists(dir, "socks"));

	/* The next run reuses them and works. */
	s = open_or_die(&cfg);
	port = group(fds, 2, "127.0.0.1", 0);
	register_all(s, 0, fds, 2);
	spread(fds, 2, port, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5);
	steer_close(s);
	close_all(fds, 2);
	cr_assert(!exists(dir, "ctl") && !exists(dir, "socks"));
	cr_assert_neq(access(dir, F_OK), 0, "%s left behind", dir);
}

Test(steer_kernel, two_live_owners_of_one_instance_do_not_share_maps)
{
	struct config cfg;
	struct steer *s1, *s2;
	char dir[128];
	int a[2], b[2], hits[2];
	uint16_t pa, pb;

	need_root();
	test_config(&cfg, 2, "round-robin");
	snprintf(dir, sizeof(dir), "/sys/fs/bpf/corral/%s", cfg.instance);
	s1 = open_or_die(&cfg);
	pa = group(a, 2, "127.0.0.1", 0);
	register_all(s1, 0, a, 2);
	/* A second daemon of the same instance (say, the new binary of an upgrade). */
	s2 = open_or_die(&cfg);
	pb = group(b, 2, "127.0.0.1", 0);
	register_all(s2, 0, b, 2);
	/* Each steers its own listeners: no slot was overwritten by the other. */
	spread(a, 2, pa, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5);
	spread(b, 2, pb, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5);
	cr_assert_eq(steer_fallbacks(s1), 0);
	cr_assert_eq(steer_fallbacks(s2), 0);
	cr_assert_eq(steer_set_drained(s1, 0, true), 0);
	spread(b, 2, pb, 10, hits); /* s1's drain does not touch s2 */
	cr_assert(hits[0] == 5 && hits[1] == 5);
	/* The newer one owns the pins; the older one leaves them alone on exit. */
	steer_close(s1);
	cr_assert(exists(dir, "ctl"));
	spread(b, 2, pb, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5);
	steer_close(s2);
	cr_assert_neq(access(dir, F_OK), 0);
	close_all(a, 2);
	close_all(b, 2);
}

Test(steer_kernel, incompatible_stale_pins_are_replaced)
{
	LIBBPF_OPTS(bpf_map_create_opts, o);
	struct config cfg;
	struct steer *s;
	char dir[128], path[192];
	int fd, fds[2], hits[2];
	uint16_t port;

	need_root();
	test_config(&cfg, 2, "round-robin");
	snprintf(dir, sizeof(dir), "/sys/fs/bpf/corral/%s", cfg.instance);
	mkdir("/sys/fs/bpf/corral", 0700);
	cr_assert_eq(mkdir(dir, 0700), 0, "%s: %s", dir, strerror(errno));
	/* A "cores" map of an older layout: a different value size. */
	fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "cores", 4, 32, 1, &o);
	cr_assert(fd >= 0, "bpf_map_create: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/cores", dir);
	cr_assert_eq(bpf_obj_pin(fd, path), 0);
	close(fd);

	s = open_or_die(&cfg);
	port = group(fds, 2, "127.0.0.1", 0);
	register_all(s, 0, fds, 2);
	spread(fds, 2, port, 10, hits);
	cr_assert(hits[0] == 5 && hits[1] == 5);
	steer_close(s);
	close_all(fds, 2);
	cr_assert_neq(access(dir, F_OK), 0);
}

/*
 * The verifier walks every policy's loops over up to 256 workers; the open-coded
 * iterators keep that near 10k instructions. A change that brings it near the 1M budget
 * (a loop the verifier starts unrolling) must show up here, not on a production kernel.
 */
Test(steer_kernel, verifier_cost_has_headroom)
{
	static char log[1 << 20];
	struct steer_bpf *skel;
	const char *p;
	long insns;

	need_root();
	libbpf_set_print(quiet_libbpf);
	skel = steer_bpf__open();
	cr_assert_not_null(skel);
	/* No pinning: this load must not touch any instance's pins. */
	cr_assert_eq(bpf_map__set_pin_path(skel->maps.ctl, NULL), 0);
	cr_assert_eq(bpf_map__set_pin_path(skel->maps.cores, NULL), 0);
	cr_assert_eq(bpf_map__set_pin_path(skel->maps.stats, NULL), 0);
	cr_assert_eq(bpf_map__set_pin_path(skel->maps.socks, NULL), 0);
	bpf_program__set_log_buf(skel->progs.steer_select, log, sizeof(log));
	bpf_program__set_log_level(skel->progs.steer_select, 4); /* statistics only */
	cr_assert_eq(steer_bpf__load(skel), 0, "load failed:\n%.2000s", log);
	p = strstr(log, "processed ");
	cr_assert_not_null(p, "no statistics in the log: %.500s", log);
	insns = strtol(p + strlen("processed "), NULL, 10);
	cr_assert(insns > 0 && insns < 100000, "the verifier processed %ld instructions", insns);
	steer_bpf__destroy(skel);
}

Test(steer_kernel, open_refuses_bad_configs_with_a_reason)
{
	struct config cfg;
	struct steer *s = (struct steer *)1;
	char err[256];

	test_config(&cfg, 2, "fastest");
	cr_assert_eq(steer_open(&s, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert_null(s);
	cr_assert(strstr(err, "fastest"), "%s", err);
	test_config(&cfg, 0, "hash");
	cr_assert_eq(steer_open(&s, &cfg, err, sizeof(err)), -EINVAL);
	test_config(&cfg, 2, "hash");
	snprintf(cfg.instance, sizeof(cfg.instance), "../etc");
	cr_assert_eq(steer_open(&s, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "instance"), "%s", err);
	test_config(&cfg, 2, "weighted");
	cfg.steering.weights[1] = STEER_WEIGHT_MAX + 1;
	cr_assert_eq(steer_open(&s, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "weights"), "%s", err);
}
