/* Unit tests for the control socket (proxy/ctl.c) against a fake daemon on a real Unix socket. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <jansson.h>

#include "admin.h"
#include "daemon.h"
#include "stats.h"
#include "tls.h"
#include "tls-certs.h"

/* --- a fake daemon: 2 cores, 2 backends ----------------------------------------------- */

static struct stats_worker fake_stats[2];
static struct admin_core fake_cores[2];
static struct admin_backend fake_backends[2];
static char fake_policy[32] = "least-conn";
static int fake_reload_calls;
static bool fake_reload_fails;

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
	return "bpf";
}

static const char *fake_policy_name(void *ctx)
{
	return fake_policy;
}

static const char *fake_config_path(void *ctx)
{
	return "/etc/corral/corral.yaml";
}

static uint32_t fake_backends_n(void *ctx)
{
	return 2;
}

static int fake_backend(void *ctx, uint32_t i, struct admin_backend *out)
{
	if (i >= 2)
		return -EINVAL;
	*out = fake_backends[i];
	return 0;
}

static int fake_find_backend(const char *addr)
{
	for (int i = 0; i < 2; i++)
		if (!strcmp(fake_backends[i].addr, addr))
			return i;
	return -1;
}

static int fake_set_policy(void *ctx, const char *name, char *err, size_t errlen)
{
	if (strcmp(name, "hash") && strcmp(name, "least-conn") && strcmp(name, "round-robin")) {
		snprintf(err, errlen, "unknown policy '%s'", name);
		return -EINVAL;
	}
	snprintf(fake_policy, sizeof(fake_policy), "%s", name);
	return 0;
}

static int fake_set_weight(void *ctx, uint32_t core, uint32_t w, char *err, size_t errlen)
{
	fake_cores[core].weight = w;
	return 0;
}

static int fake_set_drained(void *ctx, uint32_t core, bool d, char *err, size_t errlen)
{
	fake_cores[core].state = d ? ADMIN_CORE_DRAINING : ADMIN_CORE_ACTIVE;
	return 0;
}

static int fake_backend_enable(void *ctx, const char *addr, bool on, bool force, char *err,
			       size_t errlen)
{
	int i = fake_find_backend(addr);

	if (i < 0)
		return -ENOENT;
	fake_backends[i].enabled = on;
	return 0;
}

static int fake_backend_weight(void *ctx, const char *addr, uint32_t w, char *err, size_t errlen)
{
	int i = fake_find_backend(addr);

	if (i < 0)
		return -ENOENT;
	fake_backends[i].weight = w;
	return 0;
}

static int fake_reload(void *ctx, char *err, size_t errlen)
{
	fake_reload_calls++;
	if (fake_reload_fails) {
		snprintf(err, errlen, "corral.yaml:3: listen: bad address 'x'");
		return -EINVAL;
	}
	return 0;
}

static uint64_t fake_config_version(void *ctx)
{
	return 1 + (uint64_t)fake_reload_calls;
}

/* Two TLS listeners' certificates: listen[1] with two, listen[2] with one that expired. */
static uint32_t fake_certs_n(void *ctx)
{
	return 3;
}

static int fake_cert(void *ctx, uint32_t i, struct admin_cert *out)
{
	static const struct {
		uint32_t listener, index;
		const char *listen, *file, *cn, *name;
		int64_t not_after;
	} rows[] = {
		{ 1, 0, "0.0.0.0:443", "/etc/corral/a.pem", "CN=a.test", "a.test", 1893456000 },
		{ 1, 1, "0.0.0.0:443", "/etc/corral/b.pem", "CN=b.test", "*.b.test", 1893456000 },
		{ 2, 0, "[::]:8443", "/etc/corral/old.pem", "CN=old.test", "old.test", 1000000000 },
	};

	if (i >= 3)
		return -ENOENT;
	memset(out, 0, sizeof(*out));
	out->listener = rows[i].listener;
	out->index = rows[i].index;
	snprintf(out->listen, sizeof(out->listen), "%s", rows[i].listen);
	snprintf(out->file, sizeof(out->file), "%s", rows[i].file);
	snprintf(out->info.subject, sizeof(out->info.subject), "%s", rows[i].cn);
	snprintf(out->info.issuer, sizeof(out->info.issuer), "CN=Test CA,O=corral");
	snprintf(out->info.names[0], sizeof(out->info.names[0]), "%s", rows[i].name);
	snprintf(out->info.names[1], sizeof(out->info.names[1]), "127.0.0.1");
	out->info.names_n = 2;
	out->info.names_total = 40;
	out->info.not_before = 1000;
	out->info.not_after = rows[i].not_after;
	return 0;
}

static const struct admin_ops fake_ops = {
	.version = "9.9.9",
	.cores_n = fake_cores_n,
	.core = fake_core,
	.steering_mode = fake_mode,
	.policy = fake_policy_name,
	.config_path = fake_config_path,
	.backends_n = fake_backends_n,
	.backend = fake_backend,
	.config_version = fake_config_version,
	.certs_n = fake_certs_n,
	.cert = fake_cert,
	.set_policy = fake_set_policy,
	.set_weight = fake_set_weight,
	.set_drained = fake_set_drained,
	.backend_enable = fake_backend_enable,
	.backend_weight = fake_backend_weight,
	.reload = fake_reload,
};

/* --- harness ------------------------------------------------------------------------ */

static char dir[64];
static char sock_path[128];
static struct ctl *ctl;

static void setup(void)
{
	char err[256];

	memset(fake_stats, 0, sizeof(fake_stats));
	fake_cores[0] =
		(struct admin_core){ .cpu = 0, .weight = 1, .steered = 10, .accept_queue = 1 };
	fake_cores[1] =
		(struct admin_core){ .cpu = 1, .weight = 1, .steered = 30, .accept_queue = 2 };
	fake_stats[0].requests = 100;
	fake_stats[1].requests = 300;
	fake_stats[0].conns_active = 2;
	fake_stats[1].conns_active = 6;
	fake_stats[0].responses[STATS_2XX] = 90;
	fake_stats[0].responses[STATS_5XX] = 10;
	fake_stats[1].responses[STATS_2XX] = 300;
	fake_stats[0].bytes_in = 1000;
	fake_stats[1].bytes_in = 3000;
	/* core 0: 100 samples at 100 us; core 1: 99 at 1000 us, 1 at 50000 us */
	fake_stats[0].lat_us[stats_bucket(100)] = 100;
	fake_stats[1].lat_us[stats_bucket(1000)] = 99;
	fake_stats[1].lat_us[stats_bucket(50000)] = 1;
	memset(fake_backends, 0, sizeof(fake_backends));
	snprintf(fake_backends[0].addr, sizeof(fake_backends[0].addr), "127.0.0.1:8081");
	snprintf(fake_backends[1].addr, sizeof(fake_backends[1].addr), "127.0.0.1:8082");
	for (int i = 0; i < 2; i++) {
		fake_backends[i].weight = 1;
		fake_backends[i].enabled = true;
		fake_backends[i].healthy = true;
		fake_backends[i].requests = 200;
		fake_backends[i].lat_sum_us = 200 * 150;
	}
	fake_backends[1].healthy = false;
	snprintf(fake_policy, sizeof(fake_policy), "least-conn");
	fake_reload_calls = 0;
	fake_reload_fails = false;

	snprintf(dir, sizeof(dir), "/tmp/corral-ctl-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(sock_path, sizeof(sock_path), "%s/run/corral.sock", dir);
	cr_assert_eq(ctl_open(&ctl, sock_path, &fake_ops, err, sizeof(err)), 0, "%s", err);
}

static void teardown(void)
{
	char path[160];

	ctl_close(ctl);
	ctl = NULL;
	snprintf(path, sizeof(path), "%s/run", dir);
	rmdir(path);
	rmdir(dir);
}

static int client_connect(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	cr_assert_geq(fd, 0);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0, "connect: %s",
		     strerror(errno));
	return fd;
}

/* Services the ctl until `lines` reply lines (or EOF) arrive on fd; returns them (malloc'd). */
static char *pump(int fd, int lines, bool *eof)
{
	static char buf[1 << 20];
	size_t len = 0;
	struct timespec t0, t;

	*eof = false;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct pollfd p = { .fd = ctl_fd(ctl), .events = POLLIN };
		int seen = 0;

		poll(&p, 1, 10);
		ctl_service(ctl);
		for (;;) {
			ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, MSG_DONTWAIT);

			if (n > 0) {
				len += (size_t)n;
				continue;
			}
			if (n == 0)
				*eof = true;
			break;
		}
		for (size_t i = 0; i < len; i++)
			seen += buf[i] == '\n';
		if (seen >= lines || *eof)
			break;
		clock_gettime(CLOCK_MONOTONIC, &t);
		cr_assert_lt(t.tv_sec - t0.tv_sec, 3, "no reply in time");
	}
	buf[len] = '\0';
	return strdup(buf);
}

static json_t *ask(const char *req)
{
	json_error_t jerr;
	bool eof;
	int fd = client_connect(sock_path);
	char *line;
	json_t *reply;

	cr_assert_eq(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
	cr_assert_eq(send(fd, "\n", 1, 0), 1);
	line = pump(fd, 1, &eof);
	close(fd);
	reply = json_loads(line, JSON_DISABLE_EOF_CHECK, &jerr);
	cr_assert_not_null(reply, "bad reply '%s': %s", line, jerr.text);
	free(line);
	return reply;
}

static json_int_t jint(json_t *o, const char *path)
{
	char key[64];
	const char *dot;
	json_t *v = o;

	while ((dot = strchr(path, '.'))) {
		snprintf(key, sizeof(key), "%.*s", (int)(dot - path), path);
		v = json_object_get(v, key);
		path = dot + 1;
	}
	v = json_object_get(v, path);
	cr_assert(json_is_integer(v), "not an integer: %s", path);
	return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	cr_assert(json_is_string(v), "not a string: %s", key);
	return json_string_value(v);
}

TestSuite(ctl, .init = setup, .fini = teardown);

Test(ctl, socket_is_mode_0600_in_a_0700_folder)
{
	struct stat st;
	char parent[160];

	cr_assert_eq(lstat(sock_path, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0600);
	snprintf(parent, sizeof(parent), "%s/run", dir);
	cr_assert_eq(stat(parent, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0700);
}

Test(ctl, status_names_version_config_steering_and_cores)
{
	json_t *r = ask("{\"cmd\":\"status\"}");

	cr_assert(json_is_true(json_object_get(r, "ok")));
	cr_assert_str_eq(jstr(r, "version"), "9.9.9");
	cr_assert_str_eq(jstr(r, "config"), "/etc/corral/corral.yaml");
	cr_assert_str_eq(jstr(json_object_get(r, "steering"), "mode"), "bpf");
	cr_assert_str_eq(jstr(json_object_get(r, "steering"), "policy"), "least-conn");
	cr_assert_eq(json_array_size(json_object_get(r, "cores")), 2);
	cr_assert_str_eq(jstr(json_array_get(json_object_get(r, "cores"), 1), "state"), "active");
	cr_assert(json_is_real(json_object_get(r, "uptime_s")));
	cr_assert_eq(jint(r, "pid"), getpid());
	json_decref(r);
}

Test(ctl, certs_lists_every_listener_certificate_and_status_carries_them)
{
	json_t *r = ask("{\"cmd\":\"certs\"}"), *arr = json_object_get(r, "certificates"), *c;

	cr_assert(json_is_true(json_object_get(r, "ok")));
	cr_assert_eq(json_array_size(arr), 3);
	c = json_array_get(arr, 1);
	cr_assert_eq(jint(c, "listener"), 1);
	cr_assert_str_eq(jstr(c, "listen"), "0.0.0.0:443");
	cr_assert_eq(jint(c, "index"), 1);
	cr_assert(json_is_false(json_object_get(c, "default")));
	cr_assert_str_eq(jstr(c, "file"), "/etc/corral/b.pem");
	cr_assert_str_eq(jstr(c, "subject"), "CN=b.test");
	cr_assert_str_eq(jstr(c, "issuer"), "CN=Test CA,O=corral");
	cr_assert_eq(json_array_size(json_object_get(c, "names")), 2);
	cr_assert_str_eq(json_string_value(json_array_get(json_object_get(c, "names"), 0)),
			 "*.b.test");
	cr_assert_eq(jint(c, "names_total"), 40);
	cr_assert_str_eq(jstr(c, "not_after"), "2030-01-01T00:00:00Z");
	cr_assert_str_eq(jstr(c, "not_before"), "1970-01-01T00:16:40Z");
	cr_assert_eq(jint(c, "not_after_unix"), 1893456000);
	cr_assert(json_is_false(json_object_get(c, "expired")));
	cr_assert(jint(c, "expires_in_s") > 0);
	cr_assert(json_is_true(json_object_get(json_array_get(arr, 0), "default")));
	c = json_array_get(arr, 2);
	cr_assert_str_eq(jstr(c, "listen"), "[::]:8443");
	cr_assert(json_is_true(json_object_get(c, "expired")));
	cr_assert(jint(c, "expires_in_s") < 0);
	json_decref(r);

	r = ask("{\"cmd\":\"status\"}");
	arr = json_object_get(r, "certificates");
	cr_assert_eq(json_array_size(arr), 3);
	cr_assert_str_eq(jstr(json_array_get(arr, 2), "subject"), "CN=old.test");
	json_decref(r);
}

Test(ctl, stats_has_the_documented_shape_and_sums_cores_into_total)
{
	json_t *r = ask("{\"cmd\":\"stats\"}");
	json_t *cores = json_object_get(r, "cores"), *c0 = json_array_get(cores, 0),
	       *c1 = json_array_get(cores, 1), *tot = json_object_get(r, "total");

	cr_assert(json_is_true(json_object_get(r, "ok")));
	cr_assert_str_eq(jstr(json_object_get(r, "steering"), "mode"), "bpf");
	cr_assert_str_eq(jstr(json_object_get(r, "steering"), "policy"), "least-conn");
	cr_assert_eq(json_array_size(cores), 2);
	cr_assert_eq(jint(c0, "core"), 0);
	cr_assert_eq(jint(c1, "core"), 1);
	cr_assert_str_eq(jstr(c0, "state"), "active");
	cr_assert_eq(jint(c0, "requests"), 100);
	cr_assert_eq(jint(c1, "steered"), 30);
	cr_assert_eq(jint(c1, "accept_queue"), 2);
	cr_assert_eq(jint(c0, "responses.5xx"), 10);
	cr_assert(json_is_real(json_object_get(c0, "rps")));
	cr_assert(json_is_real(json_object_get(c0, "cpu_pct")));
	for (const char *const *k =
		     (const char *const[]){ "conns_active", "conns_accepted", "bytes_in",
					    "bytes_out", "upstream_errors", "pool.idle",
					    "pool.hits", "pool.misses", "responses.1xx",
					    "latency_us.p999", NULL };
	     *k; k++)
		(void)jint(c1, *k);

	cr_assert_eq(jint(tot, "requests"), 400);
	cr_assert_eq(jint(tot, "conns_active"), 8);
	cr_assert_eq(jint(tot, "steered"), 40);
	cr_assert_eq(jint(tot, "accept_queue"), 3);
	cr_assert_eq(jint(tot, "bytes_in"), 4000);
	cr_assert_eq(jint(tot, "responses.2xx"), 390);

	/* Percentiles are bucket midpoints: within 12.5% of the recorded value. */
	cr_assert(labs((long)jint(c0, "latency_us.p50") - 100) <= 13);
	cr_assert(labs((long)jint(c1, "latency_us.p50") - 1000) <= 125);
	cr_assert(labs((long)jint(c1, "latency_us.p999") - 50000) <= 6250);
	/* total: 200 samples, 100 at 100 us, 99 at 1000 us, 1 at 50 ms */
	cr_assert(labs((long)jint(tot, "latency_us.p99") - 1000) <= 125);

	/* conns 2 and 6: max/mean = 6/4 */
	cr_assert_float_eq(
		json_real_value(json_object_get(json_object_get(r, "imbalance"), "conns")), 1.5,
		0.001);
	cr_assert(json_is_real(json_object_get(json_object_get(r, "imbalance"), "cpu")));
	json_decref(r);
}

Test(ctl, stats_rates_come_from_the_one_second_sampler)
{
	struct timespec t0, t;
	json_t *r;

	/* 1.2 s of service so the 1 s timer has taken a sample, with 500 requests since. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		struct pollfd p = { .fd = ctl_fd(ctl), .events = POLLIN };

		poll(&p, 1, 50);
		ctl_service(ctl);
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < 1200);
	fake_stats[1].requests += 500;
	fake_stats[1].cpu_ns += 500000000; /* 0.5 s of CPU */
	r = ask("{\"cmd\":\"stats\"}");
	{
		json_t *c1 = json_array_get(json_object_get(r, "cores"), 1);
		double rps = json_real_value(json_object_get(c1, "rps"));
		double cpu = json_real_value(json_object_get(c1, "cpu_pct"));
		double dt = json_real_value(json_object_get(r, "interval_s"));

		cr_assert_gt(dt, 0.1);
		cr_assert_float_eq(rps, 500 / dt, 1.0, "rps %f over %f s", rps, dt);
		cr_assert_float_eq(cpu, 50 / dt, 1.0, "cpu %f over %f s", cpu, dt);
		cr_assert_float_eq(json_real_value(json_object_get(
					   json_array_get(json_object_get(r, "cores"), 0), "rps")),
				   0.0, 0.001);
	}
	json_decref(r);
}

Test(ctl, drain_and_undrain_reach_the_daemon_and_show_in_stats)
{
	json_t *r = ask("{\"cmd\":\"drain\",\"core\":1}");

	cr_assert(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
	cr_assert_eq(fake_cores[1].state, ADMIN_CORE_DRAINING);
	r = ask("{\"cmd\":\"stats\"}");
	cr_assert_str_eq(jstr(json_array_get(json_object_get(r, "cores"), 1), "state"), "draining");
	/* Imbalance counts the active cores only: core 0 alone is balanced. */
	cr_assert_float_eq(
		json_real_value(json_object_get(json_object_get(r, "imbalance"), "conns")), 1.0,
		0.001);
	json_decref(r);
	r = ask("{\"cmd\":\"undrain\",\"core\":1}");
	cr_assert(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
	cr_assert_eq(fake_cores[1].state, ADMIN_CORE_ACTIVE);
}

Test(ctl, unknown_core_is_an_error_that_names_the_range)
{
	json_t *r = ask("{\"cmd\":\"drain\",\"core\":7}");

	cr_assert(json_is_false(json_object_get(r, "ok")));
	cr_assert_str_eq(jstr(r, "error"), "unknown core 7 (cores are 0-1)");
	json_decref(r);
	r = ask("{\"cmd\":\"weight\",\"core\":-1,\"weight\":2}");
	cr_assert(json_is_false(json_object_get(r, "ok")));
	json_decref(r);
	r = ask("{\"cmd\":\"weight\",\"core\":1,\"weight\":5}");
	cr_assert(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
	cr_assert_eq(fake_cores[1].weight, 5);
}

Test(ctl, policy_get_set_and_unknown_policy)
{
	json_t *r = ask("{\"cmd\":\"policy\"}");

	cr_assert_str_eq(jstr(json_object_get(r, "steering"), "policy"), "least-conn");
	json_decref(r);
	r = ask("{\"cmd\":\"policy\",\"set\":\"round-robin\"}");
	cr_assert(json_is_true(json_object_get(r, "ok")));
	cr_assert_str_eq(jstr(json_object_get(r, "steering"), "policy"), "round-robin");
	json_decref(r);
	r = ask("{\"cmd\":\"policy\",\"set\":\"bogus\"}");
	cr_assert(json_is_false(json_object_get(r, "ok")));
	cr_assert_str_eq(jstr(r, "error"), "unknown policy 'bogus'");
	json_decref(r);
	cr_assert_str_eq(fake_policy, "round-robin");
}

Test(ctl, backends_list_and_change)
{
	json_t *r = ask("{\"cmd\":\"backends\"}"), *b;

	b = json_object_get(r, "backends");
	cr_assert_eq(json_array_size(b), 2);
	cr_assert_str_eq(jstr(json_array_get(b, 0), "addr"), "127.0.0.1:8081");
	cr_assert_str_eq(jstr(json_array_get(b, 0), "state"), "up");
	cr_assert_str_eq(jstr(json_array_get(b, 1), "state"), "down");
	cr_assert_eq(jint(json_array_get(b, 0), "latency_us"), 150);
	cr_assert_eq(jint(json_array_get(b, 0), "requests"), 200);
	json_decref(r);

	r = ask("{\"cmd\":\"backend-disable\",\"addr\":\"127.0.0.1:8081\"}");
	cr_assert(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
	cr_assert(!fake_backends[0].enabled);
	r = ask("{\"cmd\":\"backends\"}");
	cr_assert_str_eq(jstr(json_array_get(json_object_get(r, "backends"), 0), "state"),
			 "disabled");
	json_decref(r);
	r = ask("{\"cmd\":\"backend-enable\",\"addr\":\"127.0.0.1:8081\"}");
	cr_assert(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
	cr_assert(fake_backends[0].enabled);
	r = ask("{\"cmd\":\"backend-weight\",\"addr\":\"127.0.0.1:8082\",\"weight\":7}");
	cr_assert(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
	cr_assert_eq(fake_backends[1].weight, 7);
	r = ask("{\"cmd\":\"backend-disable\",\"addr\":\"10.0.0.1:1\"}");
	cr_assert(json_is_false(json_object_get(r, "ok")));
	cr_assert_str_eq(jstr(r, "error"), "unknown backend '10.0.0.1:1'");
	json_decref(r);
}

Test(ctl, reload_ok_and_rejected_with_the_reason)
{
	json_t *r = ask("{\"cmd\":\"reload\"}");

	cr_assert(json_is_true(json_object_get(r, "ok")));
	cr_assert_eq(jint(r, "config_version"), 2);
	json_decref(r);
	fake_reload_fails = true;
	r = ask("{\"cmd\":\"reload\"}");
	cr_assert(json_is_false(json_object_get(r, "ok")));
	cr_assert_str_eq(jstr(r, "error"), "corral.yaml:3: listen: bad address 'x'");
	json_decref(r);
	cr_assert_eq(fake_reload_calls, 2);
}

Test(ctl, bad_requests_get_an_error_reply)
{
	json_t *r = ask("not json");

	cr_assert(json_is_false(json_object_get(r, "ok")));
	cr_assert(strstr(jstr(r, "error"), "bad JSON") != NULL);
	json_decref(r);
	r = ask("{\"cmd\":\"frobnicate\"}");
	cr_assert_str_eq(jstr(r, "error"), "unknown command 'frobnicate'");
	json_decref(r);
	r = ask("[1,2]");
	cr_assert(json_is_false(json_object_get(r, "ok")));
	json_decref(r);
}

Test(ctl, pipelined_requests_are_answered_in_order_on_one_connection)
{
	const char req[] = "{\"cmd\":\"policy\"}\n{\"cmd\":\"status\"}\r\n\n{\"cmd\":\"stats\"}\n";
	int fd = client_connect(sock_path);
	bool eof;
	char *out, *l2, *l3;

	cr_assert_eq(send(fd, req, sizeof(req) - 1, 0), (ssize_t)sizeof(req) - 1);
	out = pump(fd, 3, &eof);
	cr_assert(!eof);
	l2 = strchr(out, '\n') + 1;
	l3 = strchr(l2, '\n') + 1;
	cr_assert(strstr(out, "\"steering\"") && strstr(out, "\"steering\"") < l2);
	cr_assert(strstr(l2, "\"version\"") && strstr(l2, "\"version\"") < l3);
	cr_assert(strstr(l3, "\"cores\"") && strstr(l3, "\"imbalance\""));
	free(out);
	close(fd);
}

Test(ctl, an_overlong_line_is_refused_and_the_connection_closed)
{
	static char big[8192];
	int fd = client_connect(sock_path);
	bool eof;
	char *out;

	memset(big, 'x', sizeof(big));
	cr_assert_eq(send(fd, big, sizeof(big), 0), (ssize_t)sizeof(big));
	out = pump(fd, 1, &eof);
	cr_assert(strstr(out, "longer than") != NULL, "got %s", out);
	free(out);
	out = pump(fd, 2, &eof);
	cr_assert(eof);
	free(out);
	close(fd);
}

Test(ctl, a_live_socket_is_not_stolen)
{
	struct ctl *second = NULL;
	char err[256];

	cr_assert_eq(ctl_open(&second, sock_path, &fake_ops, err, sizeof(err)), -EADDRINUSE);
	cr_assert(strstr(err, "another process") != NULL, "%s", err);
	/* The first one still answers. */
	json_t *r = ask("{\"cmd\":\"status\"}");
	cr_assert(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
}

Test(ctl, a_stale_socket_is_replaced)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char path[100], err[256];
	struct ctl *c2 = NULL;
	int fd;

	/* A socket file nobody listens on: what a crashed daemon leaves behind. */
	snprintf(path, sizeof(path), "%s/stale.sock", dir);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	cr_assert_eq(ctl_open(&c2, path, &fake_ops, err, sizeof(err)), 0, "%s", err);
	fd = client_connect(path);
	close(fd);
	ctl_close(c2);
	cr_assert_eq(access(path, F_OK), -1, "ctl_close must unlink its socket");
}

Test(ctl, a_regular_file_at_the_path_is_not_removed)
{
	char path[100], err[256];
	struct ctl *c2 = NULL;
	FILE *f;

	snprintf(path, sizeof(path), "%s/file", dir);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fclose(f);
	cr_assert_eq(ctl_open(&c2, path, &fake_ops, err, sizeof(err)), -EEXIST);
	cr_assert(strstr(err, "not a socket") != NULL, "%s", err);
	cr_assert_eq(access(path, F_OK), 0);
	unlink(path);
}

/* A daemon's certs_n/cert read the published snapshot: listen[0] plaintext, [1] with two
 * certificates, [2] with one. */
Test(ctl, snapshot_certs_walk_tls_listeners_in_order)
{
	static const char *const names[] = { "one", "two", "three" };
	static const uint32_t listener_of[] = { 1, 1, 2 }, index_of[] = { 0, 1, 0 };
	struct snapshot *snap = calloc(1, sizeof(*snap));
	struct admin_cert ac;
	struct tls_ctx_err e;
	char *d = cert_dir();

	cr_assert(snap && d);
	for (int i = 0; i < 3; i++) {
		char san[64];

		snprintf(san, sizeof(san), "DNS:%s.test", names[i]);
		cr_assert_eq(cert_make(d, names[i], names[i], san, 0, 86400), 0);
	}
	snap->cfg.listen_n = 3;
	for (int l = 0; l < 3; l++)
		snprintf(snap->cfg.listen[l].text, sizeof(snap->cfg.listen[l].text), "127.0.0.1:%d",
			 8000 + l);
	for (int i = 0; i < 3; i++) {
		struct cfg_tls *t = &snap->cfg.listen_tls[listener_of[i]];
		struct cfg_tls_cert *c = &t->certs[index_of[i]];

		t->on = true;
		t->session_tickets = true;
		t->protocols = CFG_TLS_V12 | CFG_TLS_V13;
		snprintf(c->cert, sizeof(c->cert), "%s/%s.pem", d, names[i]);
		snprintf(c->key, sizeof(c->key), "%s/%s.key", d, names[i]);
		t->certs_n = index_of[i] + 1;
	}
	for (int l = 1; l < 3; l++)
		cr_assert_eq(tls_server_new(&snap->tls[l], &snap->cfg.listen_tls[l], NULL, &e), 0,
			     "%s", e.msg);

	cr_assert_eq(ctl_snapshot_certs_n(snap), 3);
	for (uint32_t i = 0; i < 3; i++) {
		char want[64];

		cr_assert_eq(ctl_snapshot_cert(snap, i, &ac), 0);
		cr_assert_eq(ac.listener, listener_of[i], "cert %u", i);
		cr_assert_eq(ac.index, index_of[i], "cert %u", i);
		snprintf(want, sizeof(want), "127.0.0.1:%u", 8000 + listener_of[i]);
		cr_assert_str_eq(ac.listen, want);
		cr_assert_str_eq(ac.file,
				 snap->cfg.listen_tls[listener_of[i]].certs[index_of[i]].cert);
		snprintf(want, sizeof(want), "CN=%s", names[i]);
		cr_assert_str_eq(ac.info.subject, want);
		snprintf(want, sizeof(want), "%s.test", names[i]);
		cr_assert_str_eq(ac.info.names[0], want);
	}
	cr_assert_eq(ctl_snapshot_cert(snap, 3, &ac), -ENOENT);
	for (int l = 1; l < 3; l++)
		tls_server_free(snap->tls[l]);
	free(snap);
	cert_dir_remove();
}
