/* Unit tests for the Prometheus listener (proxy/metrics.c) and the stats helpers it reads with. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "admin.h"
#include "bug.h"
#include "config.h"
#include "stats.h"

static struct stats_worker fake_stats[2];
static struct admin_core fake_cores[2];

static uint32_t fake_cores_n(void *ctx)
{
	return 2;
}

static int fake_core(void *ctx, uint32_t i, struct admin_core *out)
{
	if (i >= 2)
		return -EINVAL;
	*out = fake_cores[i];
	out->stats = &fake_stats[i];
	return 0;
}

static const char *fake_mode(void *ctx)
{
	return "kernel-hash";
}

static const char *fake_policy(void *ctx)
{
	return "hash";
}

static const char *fake_config_path(void *ctx)
{
	return "/x.yaml";
}

static uint32_t fake_backends_n(void *ctx)
{
	return 1;
}

static int fake_backend(void *ctx, uint32_t i, struct admin_backend *out)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->addr, sizeof(out->addr), "[::1]:8080");
	out->weight = 3;
	out->enabled = true;
	out->healthy = true;
	out->requests = 42;
	out->errors = 2;
	out->lat_sum_us = 1500000;
	return 0;
}

static const struct admin_ops fake_ops = {
	.version = "1.2.3 \"quoted\"",
	.cores_n = fake_cores_n,
	.core = fake_core,
	.steering_mode = fake_mode,
	.policy = fake_policy,
	.config_path = fake_config_path,
	.backends_n = fake_backends_n,
	.backend = fake_backend,
};

static struct metrics *m;

static void setup(void)
{
	struct cfg_addr a;
	char err[256];

	memset(fake_stats, 0, sizeof(fake_stats));
	fake_cores[0] = (struct admin_core){ .cpu = 0, .weight = 1, .steered = 5 };
	fake_cores[1] = (struct admin_core){
		.cpu = 1, .weight = 2, .steered = 6, .state = ADMIN_CORE_DRAINING
	};
	fake_stats[0].requests = 110;
	fake_stats[1].requests = 7;
	fake_stats[0].responses[STATS_2XX] = 100;
	fake_stats[0].responses[STATS_4XX] = 10;
	fake_stats[0].cpu_ns = 1500000000;
	fake_stats[0].lat_us[stats_bucket(100)] = 100;
	fake_stats[0].lat_us[stats_bucket(1000)] = 10;
	fake_stats[0].lat_sum_us = 100 * 100 + 10 * 1000;
	cr_assert_eq(config_parse_addr(&a, "127.0.0.1:0"), 0);
	cr_assert_eq(metrics_open(&m, &a, &fake_ops, err, sizeof(err)), 0, "%s", err);
	cr_assert_neq(metrics_port(m), 0);
}

static void teardown(void)
{
	metrics_close(m);
	m = NULL;
}

static int tcp_connect(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(metrics_port(m)) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	return fd;
}

/* Services the listener until the server closes fd's connection; returns what it sent. */
static char *read_all(int fd)
{
	static char buf[1 << 20];
	size_t len = 0;
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct pollfd p = { .fd = metrics_fd(m), .events = POLLIN };
		ssize_t n;

		poll(&p, 1, 10);
		metrics_service(m);
		n = recv(fd, buf + len, sizeof(buf) - 1 - len, MSG_DONTWAIT);
		if (n > 0) {
			len += (size_t)n;
			continue;
		}
		if (n == 0)
			break;
		clock_gettime(CLOCK_MONOTONIC, &t);
		cr_assert_lt(t.tv_sec - t0.tv_sec, 3, "no complete answer in time");
	}
	buf[len] = '\0';
	return strdup(buf);
}

static char *http(const char *req)
{
	int fd = tcp_connect();
	char *r;

	cr_assert_eq(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
	r = read_all(fd);
	close(fd);
	return r;
}

/* The value of the sample line that starts with `series ` (exact series text). */
static double sample(const char *text, const char *series)
{
	char key[256];
	const char *p;

	snprintf(key, sizeof(key), "\n%s ", series);
	p = strstr(text, key);
	cr_assert_not_null(p, "no sample %s", series);
	return strtod(p + strlen(key), NULL);
}

TestSuite(metrics, .init = setup, .fini = teardown);

Test(metrics, get_metrics_is_text_exposition_with_help_type_and_core_labels)
{
	char *r = http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
	const char *body = strstr(r, "\r\n\r\n");

	cr_assert(!strncmp(r, "HTTP/1.1 200 OK\r\n", 17), "%s", r);
	cr_assert(strstr(r, "Content-Type: text/plain; version=0.0.4") != NULL);
	cr_assert_not_null(body);
	cr_assert(strstr(r, "Content-Length: ") != NULL);
	cr_assert_eq(strtoul(strstr(r, "Content-Length: ") + 16, NULL, 10), strlen(body + 4));
	cr_assert(strstr(body, "# HELP corral_requests_total ") != NULL);
	cr_assert(strstr(body, "# TYPE corral_requests_total counter\n") != NULL);
	cr_assert(strstr(body, "# TYPE corral_connections_active gauge\n") != NULL);
	cr_assert_float_eq(sample(body, "corral_requests_total{core=\"0\"}"), 110, 0);
	cr_assert_float_eq(sample(body, "corral_requests_total{core=\"1\"}"), 7, 0);
	cr_assert_float_eq(sample(body, "corral_responses_total{core=\"0\",class=\"4xx\"}"), 10, 0);
	cr_assert_float_eq(sample(body, "corral_worker_cpu_seconds_total{core=\"0\"}"), 1.5, 1e-9);
	cr_assert_float_eq(sample(body, "corral_core_draining{core=\"1\"}"), 1, 0);
	cr_assert_float_eq(sample(body, "corral_core_weight{core=\"1\"}"), 2, 0);
	cr_assert_float_eq(sample(body, "corral_connections_steered_total{core=\"1\"}"), 6, 0);
	cr_assert_float_eq(sample(body, "corral_cores"), 2, 0);
	cr_assert_float_eq(sample(body, "corral_internal_checks_total"), (double)bug_checks_total(),
			   0);
	cr_assert(
		strstr(body,
		       "corral_info{version=\"1.2.3 \\\"quoted\\\"\",steering_mode=\"kernel-hash\","
		       "policy=\"hash\"} 1\n") != NULL);
	cr_assert_float_eq(sample(body, "corral_backend_requests_total{backend=\"[::1]:8080\"}"),
			   42, 0);
	cr_assert_float_eq(sample(body, "corral_backend_up{backend=\"[::1]:8080\"}"), 1, 0);
	cr_assert_float_eq(
		sample(body, "corral_backend_latency_seconds_total{backend=\"[::1]:8080\"}"), 1.5,
		1e-9);
	/* Every sample line's family was announced by a TYPE line before it. */
	for (const char *line = body + 4; *line;) {
		const char *nl = strchr(line, '\n');
		char name[128], type_line[160];
		size_t n = strcspn(line, "{ ");

		cr_assert_not_null(nl, "body must end with a newline");
		if (line[0] != '#') {
			snprintf(name, sizeof(name), "%.*s", (int)n, line);
			for (;;) {
				char *u;
				snprintf(type_line, sizeof(type_line), "# TYPE %s ", name);
				if (strstr(body, type_line) && strstr(body, type_line) < line)
					break;
				u = strrchr(name, '_');
				cr_assert_not_null(u, "no TYPE for %.*s", (int)n, line);
				*u = '\0'; /* _bucket, _sum, _count of a histogram */
			}
		}
		line = nl + 1;
	}
	free(r);
}

Test(metrics, latency_is_a_cumulative_histogram_in_seconds)
{
	char *r = http("GET /metrics HTTP/1.0\r\n\r\n");

	cr_assert(strstr(r, "# TYPE corral_request_duration_seconds histogram\n") != NULL);
	/* 100 samples at 100 us, 10 at 1000 us */
	cr_assert_float_eq(
		sample(r, "corral_request_duration_seconds_bucket{core=\"0\",le=\"0.000064\"}"), 0,
		0);
	cr_assert_float_eq(
		sample(r, "corral_request_duration_seconds_bucket{core=\"0\",le=\"0.000128\"}"),
		100, 0);
	cr_assert_float_eq(
		sample(r, "corral_request_duration_seconds_bucket{core=\"0\",le=\"0.000512\"}"),
		100, 0);
	cr_assert_float_eq(
		sample(r, "corral_request_duration_seconds_bucket{core=\"0\",le=\"0.001024\"}"),
		110, 0);
	cr_assert_float_eq(
		sample(r, "corral_request_duration_seconds_bucket{core=\"0\",le=\"+Inf\"}"), 110,
		0);
	cr_assert_float_eq(sample(r, "corral_request_duration_seconds_count{core=\"0\"}"), 110, 0);
	cr_assert_float_eq(sample(r, "corral_request_duration_seconds_sum{core=\"0\"}"), 0.02,
			   1e-9);
	cr_assert_float_eq(sample(r, "corral_request_duration_seconds_count{core=\"1\"}"), 0, 0);
	free(r);
}

Test(metrics, other_paths_and_methods_are_refused)
{
	char *r = http("GET / HTTP/1.1\r\n\r\n");

	cr_assert(!strncmp(r, "HTTP/1.1 404 ", 13), "%s", r);
	free(r);
	r = http("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
	cr_assert(!strncmp(r, "HTTP/1.1 405 ", 13), "%s", r);
	free(r);
	r = http("garbage\r\n\r\n");
	cr_assert(!strncmp(r, "HTTP/1.1 400 ", 13), "%s", r);
	free(r);
	r = http("GET /metricsfoo HTTP/1.1\r\n\r\n");
	cr_assert(!strncmp(r, "HTTP/1.1 404 ", 13), "%s", r);
	free(r);
}

Test(metrics, head_gets_headers_only_and_query_strings_are_accepted)
{
	char *r = http("HEAD /metrics HTTP/1.1\r\n\r\n");
	const char *body = strstr(r, "\r\n\r\n");

	cr_assert(!strncmp(r, "HTTP/1.1 200 ", 13), "%s", r);
	cr_assert_not_null(body);
	cr_assert_str_eq(body, "\r\n\r\n");
	free(r);
	r = http("GET /metrics?name[]=x HTTP/1.1\r\n\r\n");
	cr_assert(!strncmp(r, "HTTP/1.1 200 ", 13), "%s", r);
	free(r);
}

Test(metrics, a_request_in_pieces_is_answered_once_complete)
{
	int fd = tcp_connect();
	char *r;

	cr_assert_eq(send(fd, "GET /met", 8, 0), 8);
	for (int i = 0; i < 5; i++) {
		struct pollfd p = { .fd = metrics_fd(m), .events = POLLIN };

		poll(&p, 1, 10);
		metrics_service(m);
	}
	cr_assert_eq(send(fd, "rics HTTP/1.1\r\n\r\n", 17, 0), 17);
	r = read_all(fd);
	cr_assert(!strncmp(r, "HTTP/1.1 200 ", 13), "%s", r);
	free(r);
	close(fd);
}

Test(metrics, an_oversized_request_head_gets_400)
{
	static char big[10000];
	int fd = tcp_connect();
	char *r;

	memset(big, 'a', sizeof(big));
	memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
	cr_assert_eq(send(fd, big, sizeof(big), 0), (ssize_t)sizeof(big));
	r = read_all(fd);
	cr_assert(!strncmp(r, "HTTP/1.1 400 ", 13), "%s", r);
	free(r);
	close(fd);
}

Test(metrics, connections_beyond_the_limit_are_closed_and_others_still_served)
{
	int fds[20];
	char *r;

	for (int i = 0; i < 20; i++)
		fds[i] = tcp_connect();
	for (int i = 0; i < 5; i++) {
		struct pollfd p = { .fd = metrics_fd(m), .events = POLLIN };

		poll(&p, 1, 10);
		metrics_service(m);
	}
	/* The 17th and later were closed at once: they read EOF. */
	for (int i = 16; i < 20; i++) {
		char c;
		struct pollfd p = { .fd = fds[i], .events = POLLIN };

		cr_assert_eq(poll(&p, 1, 1000), 1);
		cr_assert_leq(recv(fds[i], &c, 1, 0), 0);
	}
	/* The first 16 still get answers. */
	cr_assert_eq(send(fds[0], "GET /metrics HTTP/1.1\r\n\r\n", 25, 0), 25);
	r = read_all(fds[0]);
	cr_assert(!strncmp(r, "HTTP/1.1 200 ", 13), "%s", r);
	free(r);
	for (int i = 0; i < 20; i++)
		close(fds[i]);
}

Test(metrics, a_busy_port_is_an_error_with_the_address)
{
	struct cfg_addr a;
	struct metrics *m2 = NULL;
	char err[256], text[64];
	int fd;
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);

	/* A listener without SO_REUSEADDR holds the port. */
	fd = socket(AF_INET, SOCK_STREAM, 0);
	sin = (struct sockaddr_in){ .sin_family = AF_INET,
				    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	getsockname(fd, (struct sockaddr *)&sin, &sl);
	snprintf(text, sizeof(text), "127.0.0.1:%u", ntohs(sin.sin_port));
	cr_assert_eq(config_parse_addr(&a, text), 0);
	cr_assert_eq(metrics_open(&m2, &a, &fake_ops, err, sizeof(err)), -EADDRINUSE);
	cr_assert(strstr(err, text) != NULL, "%s", err);
	close(fd);
}

/* --- the stats helpers the metrics and the control socket are built on ----------------- */

Test(stats, every_bucket_bound_maps_back_to_its_bucket)
{
	for (uint32_t i = 0; i < STATS_LAT_BUCKETS; i++) {
		uint64_t lo = stats_bucket_lo(i), hi = stats_bucket_lo(i + 1);

		cr_assert_eq(stats_bucket(lo), i, "lo(%u) = %llu", i, (unsigned long long)lo);
		cr_assert_gt(hi, lo, "bounds must grow at %u", i);
		if (i + 1 < STATS_LAT_BUCKETS)
			cr_assert_eq(stats_bucket(hi - 1), i, "hi(%u) - 1", i);
		/* log-linear: a bucket is at most a quarter of its lower bound wide */
		if (i >= 4 && i + 1 < STATS_LAT_BUCKETS)
			cr_assert_leq((hi - lo) * 4, lo, "bucket %u too wide", i);
	}
	cr_assert_eq(stats_bucket(0), 0);
	cr_assert_eq(stats_bucket(UINT64_MAX), STATS_LAT_BUCKETS - 1);
	cr_assert_eq(stats_bucket_lo(STATS_LAT_BUCKETS), UINT64_MAX);
}

Test(stats, percentiles_are_within_an_eighth_of_the_true_value)
{
	static const uint64_t values[] = { 1, 3, 7, 50, 999, 1000, 12345, 999999, 5000000 };
	static struct stats_worker s;

	for (size_t k = 0; k < sizeof(values) / sizeof(values[0]); k++) {
		uint64_t v = values[k], p;

		memset(&s, 0, sizeof(s));
		for (int i = 0; i < 10; i++)
			stats_record_latency(&s, v);
		p = stats_percentile(s.lat_us, 0.5);
		cr_assert(p * 8 >= v * 7 && p * 8 <= v * 9, "v %llu p50 %llu",
			  (unsigned long long)v, (unsigned long long)p);
		cr_assert_eq(s.lat_sum_us, 10 * v);
		cr_assert_eq(stats_lat_count(&s), 10);
	}
	/* 990 fast, 10 slow: p50 and p99 fast, p999 slow */
	memset(&s, 0, sizeof(s));
	for (int i = 0; i < 990; i++)
		stats_record_latency(&s, 100);
	for (int i = 0; i < 10; i++)
		stats_record_latency(&s, 100000);
	cr_assert_lt(stats_percentile(s.lat_us, 0.5), 120);
	cr_assert_lt(stats_percentile(s.lat_us, 0.99), 120);
	cr_assert_gt(stats_percentile(s.lat_us, 0.999), 80000);
	memset(&s, 0, sizeof(s));
	cr_assert_eq(stats_percentile(s.lat_us, 0.99), 0, "no sample: 0");
}

Test(stats, sum_adds_every_field)
{
	static struct stats_worker a, b;

	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.requests = 1;
	a.draining = 1;
	a.lat_us[5] = 2;
	b.requests = 10;
	b.cpu_ns = 7;
	b.lat_us[5] = 3;
	stats_sum(&a, &b);
	cr_assert_eq(a.requests, 11);
	cr_assert_eq(a.cpu_ns, 7);
	cr_assert_eq(a.lat_us[5], 5);
	cr_assert_eq(a.draining, 1);
	stats_read(&b, &a);
	cr_assert_eq(memcmp(&a, &b, offsetof(struct stats_worker, draining) + sizeof(uint64_t)), 0);
}

Test(stats, listen_queue_counts_connections_not_yet_accepted)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sin);
	int l = socket(AF_INET, SOCK_STREAM, 0), c[3];

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(l, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(l, 16), 0);
	getsockname(l, (struct sockaddr *)&sin, &sl);
	cr_assert_eq(stats_listen_queue(l), 0);
	for (int i = 0; i < 3; i++) {
		c[i] = socket(AF_INET, SOCK_STREAM, 0);
		cr_assert_eq(connect(c[i], (struct sockaddr *)&sin, sizeof(sin)), 0);
	}
	cr_assert_eq(stats_listen_queue(l), 3);
	close(accept(l, NULL, NULL));
	cr_assert_eq(stats_listen_queue(l), 2);
	cr_assert_eq(stats_listen_queue(-1), -EBADF);
	for (int i = 0; i < 3; i++)
		close(c[i]);
	close(l);
}
