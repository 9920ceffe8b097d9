/* Control socket: JSON lines over a Unix socket, served by the main thread without blocking. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <jansson.h>

#include "admin.h"
#include "daemon.h"
#include "stats.h"
#include "tls.h"
#include "tls.h"

/* corralctl opens one connection per command; 32 covers several `top`s plus scripts. */
#define CTL_CLIENTS_MAX 32
/* Requests are a few tens of bytes; a longer line is a client bug, not a request. */
#define CTL_LINE_MAX 4096
/* A stats reply for 256 cores is ~200 KiB; this bounds one client's pending output. */
#define CTL_OUT_MAX (4u << 20)
/* Rates (requests/s, CPU %) are measured over the last 1-2 s, sampled by a 1 s timer. */
#define CTL_SAMPLE_NS 1000000000ull

enum {
	CTL_TAG_LISTEN = 0,
	CTL_TAG_TIMER = 1,
	CTL_TAG_CLIENT = 2
};

struct ctl_client {
	int fd; /* -1: free slot */
	char in[CTL_LINE_MAX];
	size_t in_len;
	char *out; /* malloc'd reply bytes not yet written */
	size_t out_len;
	size_t out_off;
	bool close_after; /* close once out is written (fatal request error) */
	bool waiting;	  /* an `upgrade` whose reply ctl_upgrade_done() sends */
};

/* Cumulative counters at one instant, for rates. */
struct ctl_sample {
	uint64_t t_ns; /* 0: not taken */
	uint64_t requests[CFG_CORES_MAX];
	uint64_t cpu_ns[CFG_CORES_MAX];
};

struct ctl {
	int ep;
	int lfd;
	int tfd;
	struct admin_listen ls; /* the listener's pause at EMFILE (admin.h) */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t dev; /* of the socket file we created: unlink only that one */
	ino_t ino;
	const struct admin_ops *ops;
	uint64_t started_ns;
	struct ctl_sample prev, cur;
	struct ctl_client clients[CTL_CLIENTS_MAX];
};

static uint64_t ctl_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t ctl_cores_n(const struct ctl *c)
{
	uint32_t n = c->ops->cores_n(c->ops->ctx);

	return n > CFG_CORES_MAX ? CFG_CORES_MAX : n;
}

static void ctl_take_sample(struct ctl *c, struct ctl_sample *s)
{
	uint32_t i, n = ctl_cores_n(c);
	struct admin_core core;

	memset(s, 0, sizeof(*s));
	for (i = 0; i < n; i++) {
		if (c->ops->core(c->ops->ctx, i, &core) < 0 || !core.stats)
			continue;
		s->requests[i] = __atomic_load_n(&core.stats->requests, __ATOMIC_RELAXED);
		s->cpu_ns[i] = __atomic_load_n(&core.stats->cpu_ns, __ATOMIC_RELAXED);
	}
	s->t_ns = ctl_now_ns();
}

/* The sample to measure rates from: at least ~1 s old when there is one. */
static const struct ctl_sample *ctl_rate_base(const struct ctl *c, uint64_t now)
{
	if (c->cur.t_ns && now - c->cur.t_ns >= CTL_SAMPLE_NS)
		return &c->cur;
	if (c->prev.t_ns)
		return &c->prev;
	return &c->cur;
}

static double ctl_rate(uint64_t now_v, uint64_t base_v, uint64_t dt_ns)
{
	if (dt_ns == 0 || now_v < base_v)
		return 0;
	return (double)(now_v - base_v) * 1e9 / (double)dt_ns;
}

static double ctl_round(double v, double unit)
{
	return (double)(long long)(v / unit + 0.5) * unit;
}

static const char *ctl_state_name(enum admin_core_state s)
{
	return s == ADMIN_CORE_DRAINING ? "draining" : "active";
}

/* The counters of one core (or of the total) in the `stats --json` shape. */
/* The TLS counters of one core (or of the total): handshakes, resumed, failures by reason. */
static json_t *ctl_tls_json(const struct stats_worker *s)
{
	json_t *f = json_object();

	for (int i = TLS_FAIL_NONE + 1; i < TLS_FAIL_REASONS; i++)
		json_object_set_new(f, tls_fail_name((enum tls_fail)i),
				    json_integer((json_int_t)s->tls_failures[i]));
	return json_pack("{s:I, s:I, s:o}", "handshakes", (json_int_t)s->tls_handshakes, "resumed",
			 (json_int_t)s->tls_resumed, "failures", f);
}

static json_t *ctl_counters_json(const struct stats_worker *s, uint64_t steered,
				 uint64_t accept_queue, double rps, double cpu_pct)
{
	json_t *o = json_pack(
		"{s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I,"
		" s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:I, s:I, s:I,"
		" s:{s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:I, s:f, s:I, s:I, s:I, s:I, s:I, s:I, "
		"s:I}",
		"conns_active", (json_int_t)s->conns_active, "conns_accepted",
		(json_int_t)s->conns_accepted, "conns_rejected", (json_int_t)s->conns_rejected,
		"steered", (json_int_t)steered, "requests", (json_int_t)s->requests, "rps",
		ctl_round(rps, 0.1), "bytes_in", (json_int_t)s->bytes_in, "bytes_out",
		(json_int_t)s->bytes_out, "responses", "1xx", (json_int_t)s->responses[STATS_1XX],
		"2xx", (json_int_t)s->responses[STATS_2XX], "3xx",
		(json_int_t)s->responses[STATS_3XX], "4xx", (json_int_t)s->responses[STATS_4XX],
		"5xx", (json_int_t)s->responses[STATS_5XX], "upstream_errors",
		(json_int_t)s->upstream_errors, "upstream_retries", (json_int_t)s->upstream_retries,
		"parse_errors", (json_int_t)s->parse_errors, "timeouts", (json_int_t)s->timeouts,
		"latency_us", "p50", (json_int_t)stats_percentile(s->lat_us, 0.5), "p99",
		(json_int_t)stats_percentile(s->lat_us, 0.99), "p999",
		(json_int_t)stats_percentile(s->lat_us, 0.999), "pool", "idle",
		(json_int_t)s->pool_idle, "hits", (json_int_t)s->pool_hits, "misses",
		(json_int_t)s->pool_misses, "accept_queue", (json_int_t)accept_queue, "cpu_pct",
		ctl_round(cpu_pct, 0.1), "latency_count", (json_int_t)stats_lat_count(s),
		"no_backend", (json_int_t)s->no_backend, "log_lines_dropped",
		(json_int_t)s->log_lines_dropped, "client_aborts", (json_int_t)s->client_aborts,
		"conns_reclaimed", (json_int_t)s->conns_reclaimed, "fd_exhausted",
		(json_int_t)s->fd_exhausted, "proxy_protocol_errors",
		(json_int_t)s->proxy_protocol_errors);

	if (o)
		json_object_set_new(o, "tls", ctl_tls_json(s));
	/* TLS to backends (upstream_tls.c). */
	if (o)
		json_object_set_new(o, "upstream_tls",
				    json_pack("{s:I, s:I, s:I}", "handshakes",
					      (json_int_t)s->ups_tls_handshakes, "resumed",
					      (json_int_t)s->ups_tls_resumed, "failures",
					      (json_int_t)s->ups_tls_failures));
	return o;
}

static json_t *ctl_steering_json(const struct ctl *c)
{
	const char *mode = c->ops->steering_mode(c->ops->ctx);
	const char *policy = c->ops->policy(c->ops->ctx);

	return json_pack("{s:s, s:s}", "mode", mode ? mode : "kernel-hash", "policy",
			 policy ? policy : "hash");
}

/* max / mean over the active cores; 1.0 when the mean is 0 (nothing to be unbalanced). */
static double ctl_imbalance(const double *v, const bool *use, uint32_t n)
{
	double sum = 0, max = 0;
	uint32_t i, k = 0;

	for (i = 0; i < n; i++) {
		if (!use[i])
			continue;
		sum += v[i];
		if (v[i] > max)
			max = v[i];
		k++;
	}
	if (k == 0 || sum <= 0)
		return 1.0;
	return ctl_round(max / (sum / k), 0.01);
}

static json_t *ctl_stats(struct ctl *c)
{
	uint32_t i, n = ctl_cores_n(c);
	uint64_t now = ctl_now_ns();
	const struct ctl_sample *base = ctl_rate_base(c, now);
	uint64_t dt = now - base->t_ns;
	struct stats_worker total, s;
	uint64_t total_steered = 0, total_queue = 0;
	double total_rps = 0, total_cpu = 0;
	static double conns[CFG_CORES_MAX], cpu[CFG_CORES_MAX];
	static bool use[CFG_CORES_MAX];
	json_t *cores = json_array(), *reply;

	memset(&total, 0, sizeof(total));
	for (i = 0; i < n; i++) {
		struct admin_core core;
		double rps, cpu_pct;
		json_t *o;

		use[i] = false;
		if (c->ops->core(c->ops->ctx, i, &core) < 0 || !core.stats)
			continue;
		stats_read(&s, core.stats);
		rps = ctl_rate(s.requests, base->requests[i], dt);
		cpu_pct = ctl_rate(s.cpu_ns, base->cpu_ns[i], dt) / 1e7; /* ns/s -> % */
		o = ctl_counters_json(&s, core.steered, core.accept_queue, rps, cpu_pct);
		json_object_set_new(o, "core", json_integer(i));
		json_object_set_new(o, "cpu", json_integer(core.cpu));
		json_object_set_new(o, "state", json_string(ctl_state_name(core.state)));
		json_object_set_new(o, "weight", json_integer(core.weight));
		json_array_append_new(cores, o);

		stats_sum(&total, &s);
		total_steered += core.steered;
		total_queue += core.accept_queue;
		total_rps += rps;
		total_cpu += cpu_pct;
		conns[i] = (double)s.conns_active;
		cpu[i] = cpu_pct;
		use[i] = core.state == ADMIN_CORE_ACTIVE;
	}
	reply = json_pack(
		"{s:b, s:o, s:o, s:o, s:{s:f, s:f}, s:f}", "ok", 1, "steering",
		ctl_steering_json(c), "cores", cores, "total",
		ctl_counters_json(&total, total_steered, total_queue, total_rps, total_cpu),
		"imbalance", "conns", ctl_imbalance(conns, use, n), "cpu",
		ctl_imbalance(cpu, use, n), "interval_s", ctl_round((double)dt / 1e9, 0.001));
	if (reply && c->ops->steer_fallbacks)
		json_object_set_new(json_object_get(reply, "steering"), "fallbacks",
				    json_integer((json_int_t)c->ops->steer_fallbacks(c->ops->ctx)));
	return reply;
}

uint32_t ctl_snapshot_certs_n(const struct snapshot *s)
{
	uint32_t l, n = 0;

	for (l = 0; l < s->cfg.listen_n && l < CFG_LISTEN_MAX; l++)
		if (s->tls[l])
			n += tls_server_certs_n(s->tls[l]);
	return n;
}

int ctl_snapshot_cert(const struct snapshot *s, uint32_t i, struct admin_cert *out)
{
	uint32_t l, k;

	memset(out, 0, sizeof(*out));
	for (l = 0; l < s->cfg.listen_n && l < CFG_LISTEN_MAX; l++) {
		if (!s->tls[l])
			continue;
		k = tls_server_certs_n(s->tls[l]);
		if (i >= k) {
			i -= k;
			continue;
		}
		out->listener = l;
		out->index = i;
		snprintf(out->listen, sizeof(out->listen), "%s", s->cfg.listen[l].text);
		snprintf(out->file, sizeof(out->file), "%s", s->cfg.listen_tls[l].certs[i].cert);
		return tls_server_cert_info(s->tls[l], i, &out->info);
	}
	return -ENOENT;
}

static void ctl_iso_time(int64_t t, char *out, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!gmtime_r(&tt, &tm) || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, len, "?");
}

/* Every loaded certificate of every TLS listener (an empty array when there is none). */
static json_t *ctl_certs_json(struct ctl *c)
{
	uint32_t i, n = c->ops->certs_n && c->ops->cert ? c->ops->certs_n(c->ops->ctx) : 0;
	int64_t now = (int64_t)time(NULL);
	json_t *arr = json_array();

	for (i = 0; arr && i < n; i++) {
		struct admin_cert *ac = calloc(1, sizeof(*ac)); /* 2.6 KiB: off the stack */
		char before[32], after[32];
		json_t *o, *names;
		uint32_t k;

		if (!ac)
			break;
		if (c->ops->cert(c->ops->ctx, i, ac) < 0) {
			free(ac);
			continue;
		}
		ac->listen[sizeof(ac->listen) - 1] = '\0';
		ac->file[sizeof(ac->file) - 1] = '\0';
		ac->info.subject[sizeof(ac->info.subject) - 1] = '\0';
		ac->info.issuer[sizeof(ac->info.issuer) - 1] = '\0';
		names = json_array();
		for (k = 0; names && k < ac->info.names_n && k < TLS_CERT_NAMES_MAX; k++) {
			ac->info.names[k][sizeof(ac->info.names[k]) - 1] = '\0';
			json_array_append_new(names, json_string(ac->info.names[k]));
		}
		ctl_iso_time(ac->info.not_before, before, sizeof(before));
		ctl_iso_time(ac->info.not_after, after, sizeof(after));
		o = json_pack(
			"{s:I, s:s, s:I, s:b, s:s, s:s, s:o*, s:I, s:s, s:s, s:s, s:I, s:I, s:b}",
			"listener", (json_int_t)ac->listener, "listen", ac->listen, "index",
			(json_int_t)ac->index, "default", ac->index == 0, "file", ac->file,
			"subject", ac->info.subject, "names", names, "names_total",
			(json_int_t)ac->info.names_total, "issuer", ac->info.issuer, "not_before",
			before, "not_after", after, "not_after_unix",
			(json_int_t)ac->info.not_after, "expires_in_s",
			(json_int_t)(ac->info.not_after - now), "expired",
			ac->info.not_after < now);
		if (o)
			json_array_append_new(arr, o);
		free(ac);
	}
	return arr;
}

static json_t *ctl_status(struct ctl *c)
{
	uint32_t i, n = ctl_cores_n(c);
	const char *path = c->ops->config_path(c->ops->ctx);
	json_t *cores = json_array(), *reply;

	for (i = 0; i < n; i++) {
		struct admin_core core;

		if (c->ops->core(c->ops->ctx, i, &core) < 0)
			continue;
		json_array_append_new(cores, json_pack("{s:I, s:I, s:s, s:I}", "core",
						       (json_int_t)i, "cpu", (json_int_t)core.cpu,
						       "state", ctl_state_name(core.state),
						       "weight", (json_int_t)core.weight));
	}
	reply = json_pack("{s:b, s:s, s:I, s:f, s:s, s:o, s:o}", "ok", 1, "version",
			  c->ops->version ? c->ops->version : "unknown", "pid",
			  (json_int_t)getpid(), "uptime_s",
			  ctl_round((double)(ctl_now_ns() - c->started_ns) / 1e9, 0.001), "config",
			  path ? path : "", "steering", ctl_steering_json(c), "cores", cores);
	if (reply && c->ops->config_version)
		json_object_set_new(reply, "config_version",
				    json_integer((json_int_t)c->ops->config_version(c->ops->ctx)));
	if (reply && c->ops->upgrade_info) {
		struct admin_upgrade u;

		memset(&u, 0, sizeof(u));
		c->ops->upgrade_info(c->ops->ctx, &u);
		/* "upgrade": null until this process was started by an upgrade. */
		json_object_set_new(reply, "upgrade",
				    u.count ? json_pack("{s:I, s:I, s:I, s:s}", "count",
							(json_int_t)u.count, "from_pid",
							(json_int_t)u.from_pid, "at_unix",
							(json_int_t)u.at_unix, "at", u.at)
					    : json_null());
		json_object_set_new(reply, "upgrading", json_boolean(u.in_progress));
	}
	if (reply && c->ops->certs_n && c->ops->cert)
		json_object_set_new(reply, "certificates", ctl_certs_json(c));
	return reply;
}

static const char *ctl_backend_state(const struct admin_backend *b)
{
	if (!b->enabled)
		return "disabled";
	return b->healthy ? "up" : "down";
}

static json_t *ctl_backends(struct ctl *c)
{
	uint32_t i, n = c->ops->backends_n ? c->ops->backends_n(c->ops->ctx) : 0;
	json_t *arr = json_array();

	for (i = 0; i < n && c->ops->backend; i++) {
		struct admin_backend b;

		memset(&b, 0, sizeof(b));
		if (c->ops->backend(c->ops->ctx, i, &b) < 0)
			continue;
		b.addr[sizeof(b.addr) - 1] = '\0';
		json_t *o =
			json_pack("{s:s, s:I, s:s, s:I, s:I, s:I, s:I}", "addr", b.addr, "weight",
				  (json_int_t)b.weight, "state", ctl_backend_state(&b), "active",
				  (json_int_t)b.active, "requests", (json_int_t)b.requests,
				  "errors", (json_int_t)b.errors, "latency_us",
				  (json_int_t)(b.requests ? b.lat_sum_us / b.requests : 0));

		if (!o)
			continue;
		b.reason[sizeof(b.reason) - 1] = '\0';
		b.check_result[sizeof(b.check_result) - 1] = '\0';
		json_object_set_new(o, "reason", json_string(b.reason));
		json_object_set_new(o, "checks_on", json_boolean(b.checks_on));
		json_object_set_new(o, "checks", json_integer((json_int_t)b.checks));
		json_object_set_new(o, "checks_failed", json_integer((json_int_t)b.checks_failed));
		json_object_set_new(o, "transitions", json_integer((json_int_t)b.transitions));
		/* The last check: null until one has finished. */
		json_object_set_new(o, "last_check",
				    b.checked ? json_pack("{s:b, s:s, s:I}", "ok", b.check_ok,
							  "result", b.check_result, "age_ms",
							  (json_int_t)b.check_age_ms)
					      : json_null());
		json_array_append_new(arr, o);
	}
	return json_pack("{s:b, s:o}", "ok", 1, "backends", arr);
}

static json_t *ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *ctl_error(const char *fmt, ...)
{
	char msg[ADMIN_ERR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

/* Turns an action callback's result into a reply. */
static json_t *ctl_action_reply(int rc, const char *err, const char *what)
{
	if (rc == 0)
		return json_pack("{s:b}", "ok", 1);
	if (err[0])
		return ctl_error("%s", err);
	return ctl_error("%s: %s", what, strerror(-rc));
}

/* Reads a non-negative integer member; false when missing or out of range. */
static bool ctl_get_u32(json_t *req, const char *key, uint32_t *out)
{
	json_t *v = json_object_get(req, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX)
		return false;
	*out = (uint32_t)json_integer_value(v);
	return true;
}

static json_t *ctl_core_arg(struct ctl *c, json_t *req, uint32_t *core)
{
	uint32_t n = ctl_cores_n(c);
	json_t *v = json_object_get(req, "core");

	if (!json_is_integer(v))
		return ctl_error("missing or non-integer \"core\"");
	if (json_integer_value(v) < 0 || json_integer_value(v) >= n)
		return ctl_error("unknown core %lld (cores are 0-%u)",
				 (long long)json_integer_value(v), n ? n - 1 : 0);
	*core = (uint32_t)json_integer_value(v);
	return NULL;
}

static json_t *ctl_certs(struct ctl *c)
{
	if (!c->ops->certs_n || !c->ops->cert)
		return ctl_error("certs: not supported by this daemon");
	return json_pack("{s:b, s:o}", "ok", 1, "certificates", ctl_certs_json(c));
}

static json_t *ctl_dispatch(struct ctl *c, json_t *req, bool *defer)
{
	const struct admin_ops *ops = c->ops;
	char err[ADMIN_ERR_MAX] = "";
	const char *cmd, *s;
	uint32_t core, w;
	json_t *bad;
	int rc;

	if (!json_is_object(req) || !json_is_string(json_object_get(req, "cmd")))
		return ctl_error("request must be a JSON object with a string \"cmd\"");
	cmd = json_string_value(json_object_get(req, "cmd"));

	if (!strcmp(cmd, "status"))
		return ctl_status(c);
	if (!strcmp(cmd, "stats"))
		return ctl_stats(c);
	if (!strcmp(cmd, "backends"))
		return ctl_backends(c);
	if (!strcmp(cmd, "certs"))
		return ctl_certs(c);
	if (!strcmp(cmd, "policy")) {
		s = json_string_value(json_object_get(req, "set"));
		if (!s)
			return json_pack("{s:b, s:o}", "ok", 1, "steering", ctl_steering_json(c));
		if (!ops->set_policy)
			return ctl_error("policy set: not supported by this daemon");
		rc = ops->set_policy(ops->ctx, s, err, sizeof(err));
		if (rc < 0 && !err[0] && rc == -EINVAL)
			snprintf(err, sizeof(err), "unknown policy '%s'", s);
		if (rc < 0)
			return ctl_action_reply(rc, err, "policy set");
		return json_pack("{s:b, s:o}", "ok", 1, "steering", ctl_steering_json(c));
	}
	if (!strcmp(cmd, "weight")) {
		if ((bad = ctl_core_arg(c, req, &core)))
			return bad;
		if (!ctl_get_u32(req, "weight", &w))
			return ctl_error("missing or bad \"weight\" (a non-negative integer)");
		if (!ops->set_weight)
			return ctl_error("weight: not supported by this daemon");
		return ctl_action_reply(ops->set_weight(ops->ctx, core, w, err, sizeof(err)), err,
					"weight");
	}
	if (!strcmp(cmd, "drain") || !strcmp(cmd, "undrain")) {
		bool drain = cmd[0] == 'd';

		if ((bad = ctl_core_arg(c, req, &core)))
			return bad;
		if (!ops->set_drained)
			return ctl_error("%s: not supported by this daemon", cmd);
		return ctl_action_reply(ops->set_drained(ops->ctx, core, drain, err, sizeof(err)),
					err, cmd);
	}
	if (!strcmp(cmd, "backend-enable") || !strcmp(cmd, "backend-disable") ||
	    !strcmp(cmd, "backend-weight")) {
		s = json_string_value(json_object_get(req, "addr"));
		if (!s)
			return ctl_error("missing \"addr\"");
		if (!strcmp(cmd, "backend-weight")) {
			if (!ctl_get_u32(req, "weight", &w))
				return ctl_error(
					"missing or bad \"weight\" (a non-negative integer)");
			if (!ops->backend_weight)
				return ctl_error("backend weight: not supported by this daemon");
			rc = ops->backend_weight(ops->ctx, s, w, err, sizeof(err));
		} else {
			if (!ops->backend_enable)
				return ctl_error("%s: not supported by this daemon", cmd);
			rc = ops->backend_enable(ops->ctx, s, cmd[8] == 'e',
						 json_is_true(json_object_get(req, "force")), err,
						 sizeof(err));
		}
		if (rc == -ENOENT && !err[0])
			snprintf(err, sizeof(err), "unknown backend '%s'", s);
		return ctl_action_reply(rc, err, cmd);
	}
	if (!strcmp(cmd, "upgrade")) {
		if (!ops->upgrade)
			return ctl_error("upgrade: not supported by this daemon");
		rc = ops->upgrade(ops->ctx, err, sizeof(err));
		if (rc < 0)
			return ctl_action_reply(rc, err, "upgrade");
		*defer = true; /* answered by ctl_upgrade_done() */
		return NULL;
	}
	if (!strcmp(cmd, "reload")) {
		json_t *reply;

		if (!ops->reload)
			return ctl_error("reload: not supported by this daemon");
		rc = ops->reload(ops->ctx, err, sizeof(err));
		if (rc < 0)
			return ctl_action_reply(rc, err, "reload");
		reply = json_pack("{s:b}", "ok", 1);
		if (ops->config_version)
			json_object_set_new(
				reply, "config_version",
				json_integer((json_int_t)ops->config_version(ops->ctx)));
		/* "restart_needed": the changed keys that only a restart applies. */
		if (ops->reload_restart_keys) {
			const char *k = ops->reload_restart_keys(ops->ctx);
			json_t *list = json_array();

			while (k && *k) {
				size_t n = strcspn(k, ",");

				json_array_append_new(list, json_stringn(k, n));
				k += n;
				k += strspn(k, ", ");
			}
			json_object_set_new(reply, "restart_needed", list);
		}
		return reply;
	}
	return ctl_error("unknown command '%s'", cmd);
}

static void ctl_client_close(struct ctl *c, struct ctl_client *cl)
{
	if (cl->fd < 0)
		return;
	epoll_ctl(c->ep, EPOLL_CTL_DEL, cl->fd, NULL);
	close(cl->fd);
	free(cl->out);
	cl->out = NULL;
	cl->out_len = cl->out_off = cl->in_len = 0;
	cl->close_after = false;
	cl->waiting = false;
	cl->fd = -1;
}

static void ctl_client_want(struct ctl *c, struct ctl_client *cl, uint32_t events)
{
	struct epoll_event ev = { .events = events,
				  .data.u64 = CTL_TAG_CLIENT + (cl - c->clients) };

	epoll_ctl(c->ep, EPOLL_CTL_MOD, cl->fd, &ev);
}

/* Writes what it can; returns false if the client was closed. */
static bool ctl_client_flush(struct ctl *c, struct ctl_client *cl)
{
	while (cl->out_off < cl->out_len) {
		ssize_t n = send(cl->fd, cl->out + cl->out_off, cl->out_len - cl->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			ctl_client_want(c, cl, EPOLLOUT);
			return true;
		}
		if (n <= 0) {
			ctl_client_close(c, cl);
			return false;
		}
		cl->out_off += (size_t)n;
	}
	free(cl->out);
	cl->out = NULL;
	cl->out_len = cl->out_off = 0;
	if (cl->close_after) {
		ctl_client_close(c, cl);
		return false;
	}
	ctl_client_want(c, cl, EPOLLIN);
	return true;
}

static void ctl_client_reply(struct ctl *c, struct ctl_client *cl, json_t *reply)
{
	char *text = NULL;
	size_t len;

	if (reply)
		text = json_dumps(reply, JSON_COMPACT | JSON_REAL_PRECISION(12));
	json_decref(reply);
	if (!text) {
		text = strdup("{\"ok\":false,\"error\":\"out of memory\"}");
		if (!text) {
			ctl_client_close(c, cl);
			return;
		}
	}
	len = strlen(text);
	if (len + 1 > CTL_OUT_MAX) {
		free(text);
		text = strdup("{\"ok\":false,\"error\":\"reply too large\"}");
		if (!text) {
			ctl_client_close(c, cl);
			return;
		}
		len = strlen(text);
	}
	/* Room for the newline: json_dumps gives exactly len + 1 bytes. */
	cl->out = realloc(text, len + 1);
	if (!cl->out) {
		free(text);
		ctl_client_close(c, cl);
		return;
	}
	cl->out[len] = '\n';
	cl->out_len = len + 1;
	cl->out_off = 0;
}

/* Answers buffered complete lines, one at a time, while no reply is pending. */
static void ctl_client_process(struct ctl *c, struct ctl_client *cl)
{
	while (cl->fd >= 0 && !cl->out && !cl->waiting) {
		char *nl = memchr(cl->in, '\n', cl->in_len);
		size_t line_len;
		json_error_t jerr;
		json_t *req, *reply;
		bool defer = false;

		if (!nl) {
			if (cl->in_len == sizeof(cl->in)) {
				cl->close_after = true;
				ctl_client_reply(c, cl,
						 ctl_error("request line longer than %d bytes",
							   CTL_LINE_MAX));
				ctl_client_flush(c, cl);
			}
			return;
		}
		line_len = (size_t)(nl - cl->in);
		if (line_len && cl->in[line_len - 1] == '\r')
			line_len--;
		req = line_len ? json_loadb(cl->in, line_len, 0, &jerr) : NULL;
		/* Consume the line before answering: a failed reply may close (and reset) cl. */
		cl->in_len -= (size_t)(nl + 1 - cl->in);
		memmove(cl->in, nl + 1, cl->in_len);
		if (line_len == 0)
			continue;
		if (!req)
			ctl_client_reply(c, cl, ctl_error("bad JSON: %s", jerr.text));
		else if ((reply = ctl_dispatch(c, req, &defer)) || !defer)
			ctl_client_reply(c, cl, reply);
		else {
			/* Until the answer: only a hang-up matters (more input waits for it). */
			cl->waiting = true;
			ctl_client_want(c, cl, EPOLLRDHUP);
		}
		json_decref(req);
		if (cl->out && !ctl_client_flush(c, cl))
			return;
	}
}

static void ctl_client_read(struct ctl *c, struct ctl_client *cl)
{
	for (;;) {
		ssize_t n;

		if (cl->in_len == sizeof(cl->in) || cl->out || cl->waiting)
			break;
		n = recv(cl->fd, cl->in + cl->in_len, sizeof(cl->in) - cl->in_len, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			/* EOF or error: an unterminated last line is not a request. */
			ctl_client_close(c, cl);
			return;
		}
		cl->in_len += (size_t)n;
		ctl_client_process(c, cl);
		if (cl->fd < 0)
			return;
	}
	ctl_client_process(c, cl);
}

void admin_listen_failed(struct admin_listen *l, int ep, int lfd, int err, const char *what)
{
	if (l->paused || !(err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM))
		return;
	epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL);
	l->paused = true;
	log_warn("%s: accept: %s; paused until the next second", what, strerror(err));
}

void admin_listen_tick(struct admin_listen *l, int ep, int lfd, uint64_t tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag };

	if (l->paused && !l->gone && epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) == 0)
		l->paused = false;
}

static void ctl_accept(struct ctl *c)
{
	for (;;) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		struct epoll_event ev;
		uint32_t i;
		int fd = accept4(c->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			/* EAGAIN, or a transient error: the listener stays. */
			admin_listen_failed(&c->ls, c->ep, c->lfd, errno, "control socket");
			return;
		}
		/* The socket is 0600 already; refuse anyone but root and our own user anyway. */
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 ||
		    (cred.uid != 0 && cred.uid != geteuid())) {
			close(fd);
			continue;
		}
		for (i = 0; i < CTL_CLIENTS_MAX && c->clients[i].fd >= 0; i++)
			;
		if (i == CTL_CLIENTS_MAX) {
			static const char busy[] =
				"{\"ok\":false,\"error\":\"too many control clients\"}\n";

			if (send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
				/* Nothing more to do for it. */
			}
			close(fd);
			continue;
		}
		ev.events = EPOLLIN;
		ev.data.u64 = CTL_TAG_CLIENT + i;
		if (epoll_ctl(c->ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
			close(fd);
			continue;
		}
		c->clients[i].fd = fd;
		c->clients[i].in_len = 0;
	}
}

void ctl_service(struct ctl *c)
{
	struct epoll_event evs[16];
	int i, n;

	n = epoll_wait(c->ep, evs, 16, 0);
	for (i = 0; i < n; i++) {
		uint64_t tag = evs[i].data.u64;

		if (tag == CTL_TAG_LISTEN) {
			ctl_accept(c);
		} else if (tag == CTL_TAG_TIMER) {
			uint64_t ticks;

			admin_listen_tick(&c->ls, c->ep, c->lfd, CTL_TAG_LISTEN);
			if (read(c->tfd, &ticks, sizeof(ticks)) == sizeof(ticks)) {
				c->prev = c->cur;
				ctl_take_sample(c, &c->cur);
			}
		} else if (tag - CTL_TAG_CLIENT < CTL_CLIENTS_MAX) {
			struct ctl_client *cl = &c->clients[tag - CTL_TAG_CLIENT];

			if (cl->fd < 0)
				continue;
			if (cl->waiting) {
				/* Gone before its upgrade's answer: nobody to tell. */
				if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
					ctl_client_close(c, cl);
				continue;
			}
			if (cl->out) {
				if ((evs[i].events & (EPOLLERR | EPOLLHUP)) &&
				    !(evs[i].events & EPOLLOUT)) {
					ctl_client_close(c, cl);
					continue;
				}
				if (ctl_client_flush(c, cl))
					ctl_client_process(c, cl);
			} else {
				ctl_client_read(c, cl);
			}
		}
	}
}

void ctl_upgrade_done(struct ctl *c, int rc, int pid, const char *why)
{
	for (int i = 0; c && i < CTL_CLIENTS_MAX; i++) {
		struct ctl_client *cl = &c->clients[i];

		if (cl->fd < 0 || !cl->waiting)
			continue;
		cl->waiting = false;
		if (rc == 0)
			ctl_client_reply(c, cl,
					 json_pack("{s:b, s:I}", "ok", 1, "pid", (json_int_t)pid));
		else
			ctl_client_reply(c, cl, ctl_error("upgrade failed: %s", why));
		if (ctl_client_flush(c, cl))
			ctl_client_process(c, cl);
	}
}

int ctl_reclaim(struct ctl *c)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = CTL_TAG_LISTEN };
	struct stat st;
	mode_t old;
	int fd, rc;

	if (!c || c->lfd < 0)
		return -EINVAL;
	if (lstat(c->path, &st) == 0 && st.st_ino == c->ino && st.st_dev == c->dev)
		return 0; /* still ours */
	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s.%d", c->path, (int)getpid()) >=
	    sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	unlink(sun.sun_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	old = umask(0177);
	rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (rc == -1 || lstat(sun.sun_path, &st) == -1 || listen(fd, 64) == -1 ||
	    rename(sun.sun_path, c->path) == -1) {
		rc = -errno;
		unlink(sun.sun_path);
		close(fd);
		return rc;
	}
	epoll_ctl(c->ep, EPOLL_CTL_DEL, c->lfd, NULL);
	close(c->lfd);
	c->lfd = fd;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	epoll_ctl(c->ep, EPOLL_CTL_ADD, c->lfd, &ev);
	c->ls.paused = false;
	return 0;
}

void ctl_handoff(struct ctl *c, uint32_t timeout_ms)
{
	uint64_t end = ctl_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	bool open;

	if (!c)
		return;
	/* Whoever connected before the successor renamed its socket over the path is ours. */
	ctl_accept(c);
	epoll_ctl(c->ep, EPOLL_CTL_DEL, c->lfd, NULL);
	c->ls.gone = true;
	do {
		struct pollfd pf = { .fd = c->ep, .events = POLLIN };

		open = false;
		for (int i = 0; i < CTL_CLIENTS_MAX; i++)
			open |= c->clients[i].fd >= 0;
		if (!open)
			break;
		if (poll(&pf, 1, 10) > 0)
			ctl_service(c);
	} while (ctl_now_ns() < end);
}

int ctl_fd(const struct ctl *c)
{
	return c->ep;
}

/* Creates the parent folder of path (one level) as 0700 when it does not exist. */
static int ctl_mkdir_parent(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	if (mkdir(dir, 0700) == -1 && errno != EEXIST)
		return -errno;
	return 0;
}

/*
 * Removes a stale socket at path: one that nobody accepts on. Returns 0 when path is free
 * now, -EADDRINUSE when a live process listens there, or another -errno.
 */
static int ctl_clear_stale(const struct sockaddr_un *sun, char *err, size_t errlen)
{
	struct stat st;
	int fd, rc;

	if (lstat(sun->sun_path, &st) == -1) {
		if (errno == ENOENT)
			return 0;
		rc = -errno;
		snprintf(err, errlen, "control socket %s: %s", sun->sun_path, strerror(-rc));
		return rc;
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "control socket %s: exists and is not a socket",
			 sun->sun_path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "control socket: socket: %s", strerror(-rc));
		return rc;
	}
	if (connect(fd, (const struct sockaddr *)sun, sizeof(*sun)) == 0) {
		close(fd);
		snprintf(err, errlen, "control socket %s: another process is serving it",
			 sun->sun_path);
		return -EADDRINUSE;
	}
	rc = -errno;
	close(fd);
	if (rc != -ECONNREFUSED) {
		snprintf(err, errlen, "control socket %s: cannot probe it: %s", sun->sun_path,
			 strerror(-rc));
		return rc;
	}
	if (unlink(sun->sun_path) == -1 && errno != ENOENT) {
		rc = -errno;
		snprintf(err, errlen, "control socket %s: cannot remove stale socket: %s",
			 sun->sun_path, strerror(-rc));
		return rc;
	}
	return 0;
}

static int ctl_open_as(struct ctl **out, const char *path, const struct admin_ops *ops,
		       bool takeover, char *err, size_t errlen)
{
	struct itimerspec its = { .it_interval = { 1, 0 }, .it_value = { 1, 0 } };
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct epoll_event ev;
	struct ctl *c;
	struct stat st;
	mode_t old;
	int rc, i;

	err[0] = '\0';
	if (!path || !path[0] || !ops || !ops->cores_n || !ops->core || !ops->steering_mode ||
	    !ops->policy || !ops->config_path) {
		snprintf(err, errlen, "control socket: no path or incomplete admin_ops");
		return -EINVAL;
	}
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "control socket path too long (max %zu bytes): %s",
			 sizeof(sun.sun_path) - 1, path);
		return -ENAMETOOLONG;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, errlen, "control socket: out of memory");
		return -ENOMEM;
	}
	c->ep = c->lfd = c->tfd = -1;
	for (i = 0; i < CTL_CLIENTS_MAX; i++)
		c->clients[i].fd = -1;
	c->ops = ops;
	snprintf(c->path, sizeof(c->path), "%s", path);
	memcpy(sun.sun_path, path, strlen(path) + 1);
	/*
	 * Taking over from a live predecessor: bind a name of our own next to the path and
	 * rename it over the path once listening, so that a client finds one of the two
	 * processes at every instant. The predecessor unlinks the path only if it is still its
	 * own file (dev and inode), which it no longer is.
	 */
	if (takeover && (size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s.%d", path,
					 (int)getpid()) >= sizeof(sun.sun_path))
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%.*s~", (int)strlen(path) - 1, path);

	rc = ctl_mkdir_parent(path);
	if (rc < 0) {
		snprintf(err, errlen, "control socket %s: cannot create its folder: %s", path,
			 strerror(-rc));
		goto fail;
	}
	rc = takeover ? 0 : ctl_clear_stale(&sun, err, errlen);
	if (takeover)
		unlink(sun.sun_path); /* a leftover of a crashed earlier attempt with our pid */
	if (rc < 0)
		goto fail;

	c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->lfd < 0)
		goto fail_errno;
	/* bind() creates the file with the umask applied: never let it exist wider than 0600. */
	old = umask(0177);
	rc = bind(c->lfd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (rc == -1)
		goto fail_errno;
	if (chmod(sun.sun_path, 0600) == -1 || lstat(sun.sun_path, &st) == -1)
		goto fail_errno;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	if (listen(c->lfd, 64) == -1)
		goto fail_errno;
	if (takeover && rename(sun.sun_path, path) == -1) {
		rc = -errno;
		unlink(sun.sun_path);
		snprintf(err, errlen, "control socket %s: rename over it: %s", path, strerror(-rc));
		goto fail;
	}

	c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (c->tfd < 0 || timerfd_settime(c->tfd, 0, &its, NULL) == -1)
		goto fail_errno;
	c->ep = epoll_create1(EPOLL_CLOEXEC);
	if (c->ep < 0)
		goto fail_errno;
	ev.events = EPOLLIN;
	ev.data.u64 = CTL_TAG_LISTEN;
	if (epoll_ctl(c->ep, EPOLL_CTL_ADD, c->lfd, &ev) == -1)
		goto fail_errno;
	ev.data.u64 = CTL_TAG_TIMER;
	if (epoll_ctl(c->ep, EPOLL_CTL_ADD, c->tfd, &ev) == -1)
		goto fail_errno;

	c->started_ns = ctl_now_ns();
	ctl_take_sample(c, &c->cur);
	*out = c;
	return 0;

fail_errno:
	rc = -errno;
	snprintf(err, errlen, "control socket %s: %s", path, strerror(-rc));
fail:
	ctl_close(c);
	return rc;
}

int ctl_open(struct ctl **out, const char *path, const struct admin_ops *ops, char *err,
	     size_t errlen)
{
	return ctl_open_as(out, path, ops, false, err, errlen);
}

int ctl_open_takeover(struct ctl **out, const char *path, const struct admin_ops *ops, char *err,
		      size_t errlen)
{
	return ctl_open_as(out, path, ops, true, err, errlen);
}

void ctl_close(struct ctl *c)
{
	struct stat st;
	int i;

	if (!c)
		return;
	for (i = 0; i < CTL_CLIENTS_MAX; i++)
		ctl_client_close(c, &c->clients[i]);
	if (c->lfd >= 0) {
		/* Unlink only the file we created, not a successor's socket. */
		if (c->ino && lstat(c->path, &st) == 0 && st.st_ino == c->ino &&
		    st.st_dev == c->dev)
			unlink(c->path);
		close(c->lfd);
	}
	if (c->tfd >= 0)
		close(c->tfd);
	if (c->ep >= 0)
		close(c->ep);
	free(c);
}
