/* Metrics listener: Prometheus text exposition on GET /metrics, served by the main thread. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include "admin.h"
#include "daemon.h"
#include "stats.h"
#include "tls.h"

/* Scrapers are few (Prometheus, an agent, a curl): more than this at once is abuse. */
#define METRICS_CONNS_MAX 16
/* A scrape request is a few hundred bytes; NGINX's default header buffer is 1 KiB + 8 KiB. */
#define METRICS_REQ_MAX 8192
/* A scraper that neither sends its request nor reads its answer in 10 s is gone. */
#define METRICS_CONN_NS (10 * 1000000000ull)
/*
 * Histogram bounds exposed: every power of two from 4 us to 2^27 us (~134 s). Each is an
 * exact bucket boundary of the stats histogram (stats_bucket_lo(4k)), so the cumulative
 * counts are exact, and 26 bounds keep a scrape cheap.
 */
#define METRICS_LE_FIRST 4
#define METRICS_LE_LAST	 104

enum {
	METRICS_TAG_LISTEN = 0,
	METRICS_TAG_TIMER = 1,
	METRICS_TAG_CONN = 2
};

struct metrics_conn {
	int fd;		/* -1: free */
	bool lingering; /* answer sent, write side shut: wait for the peer's close */
	uint64_t since_ns;
	char in[METRICS_REQ_MAX];
	size_t in_len;
	char *out;
	size_t out_len;
	size_t out_off;
};

struct metrics {
	int ep;
	int lfd;
	int tfd;
	struct admin_listen ls; /* the listener's pause at EMFILE (admin.h) */
	uint16_t port;
	const struct admin_ops *ops;
	struct metrics_conn conns[METRICS_CONNS_MAX];
};

/* A growable text buffer; on allocation failure it stops growing and remembers it. */
struct metrics_buf {
	char *p;
	size_t len;
	size_t cap;
	bool oom;
};

static void mb_printf(struct metrics_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void mb_printf(struct metrics_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		size_t room = b->cap - b->len;

		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? b->cap * 2 : 65536;
		while (cap < b->len + (size_t)n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

/* Label values: backslash, double quote and newline are escaped (text format 0.0.4). */
static void mb_label(struct metrics_buf *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\')
			mb_printf(b, "\\\\");
		else if (*s == '"')
			mb_printf(b, "\\\"");
		else if (*s == '\n')
			mb_printf(b, "\\n");
		else
			mb_printf(b, "%c", *s);
	}
}

static uint64_t metrics_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void metrics_head(struct metrics_buf *b, const char *name, const char *type,
			 const char *help)
{
	mb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Per-core series read straight from a stats_worker field. */
struct metrics_field {
	const char *name;
	const char *type;
	const char *help;
	size_t off;
};

#define MF(n, t, h, f)                                                                             \
	{                                                                                          \
		n, t, h, offsetof(struct stats_worker, f)                                          \
	}
static const struct metrics_field metrics_fields[] = {
	MF("corral_connections_accepted_total", "counter", "Client connections accepted.",
	   conns_accepted),
	MF("corral_connections_active", "gauge", "Client connections open now.", conns_active),
	MF("corral_connections_rejected_total", "counter",
	   "Client connections refused because the connection table was full.", conns_rejected),
	MF("corral_requests_total", "counter", "Requests whose head was parsed.", requests),
	MF("corral_bytes_received_total", "counter", "Bytes received from clients.", bytes_in),
	MF("corral_bytes_sent_total", "counter", "Bytes sent to clients.", bytes_out),
	MF("corral_upstream_errors_total", "counter",
	   "Upstream connect failures, resets, timeouts and bad responses.", upstream_errors),
	MF("corral_upstream_retries_total", "counter", "Requests retried on another upstream.",
	   upstream_retries),
	MF("corral_no_backend_total", "counter",
	   "Requests answered 503 because no backend was eligible.", no_backend),
	MF("corral_access_log_lines_dropped_total", "counter",
	   "Access-log lines lost because the log could not be written fast enough.",
	   log_lines_dropped),
	MF("corral_connections_reclaimed_total", "counter",
	   "Idle client connections closed to make room at the connection or fd limit.",
	   conns_reclaimed),
	MF("corral_fd_exhausted_total", "counter",
	   "Accepts and upstream sockets that failed for want of a file descriptor.", fd_exhausted),
	MF("corral_client_aborts_total", "counter",
	   "Exchanges the client closed or reset before the response ended (logged 499).",
	   client_aborts),
	MF("corral_upstream_pool_idle", "gauge", "Idle keep-alive upstream connections.",
	   pool_idle),
	MF("corral_upstream_pool_hits_total", "counter",
	   "Requests that reused an idle upstream connection.", pool_hits),
	MF("corral_upstream_pool_misses_total", "counter",
	   "Requests that had to open a new upstream connection.", pool_misses),
	MF("corral_parse_errors_total", "counter", "Client requests rejected by the parser.",
	   parse_errors),
	MF("corral_timeouts_total", "counter", "Client and upstream timeouts.", timeouts),
	MF("corral_proxy_protocol_errors_total", "counter",
	   "Connections on a proxy_protocol listener closed without a valid PROXY header.",
	   proxy_protocol_errors),
	MF("corral_upstream_tls_handshakes_total", "counter",
	   "TLS handshakes to backends that completed.", ups_tls_handshakes),
	MF("corral_upstream_tls_resumed_total", "counter",
	   "TLS handshakes to backends that resumed a session.", ups_tls_resumed),
	MF("corral_upstream_tls_failures_total", "counter",
	   "TLS handshakes to backends that failed (verification, protocol, closed).",
	   ups_tls_failures),
	MF("corral_tls_handshakes_total", "counter",
	   "TLS handshakes completed on client connections.", tls_handshakes),
	MF("corral_tls_resumed_total", "counter",
	   "TLS handshakes that resumed a session from a ticket.", tls_resumed),
};
#undef MF

static const char *const metrics_class[STATS_CLASSES] = { "1xx", "2xx", "3xx", "4xx", "5xx" };

/* Prints a bound in seconds without trailing zeros: 0.000004, 0.5, 1, 134.217728. */
static void metrics_le(char *out, size_t len, uint64_t us)
{
	char *e;

	snprintf(out, len, "%llu.%06llu", (unsigned long long)(us / 1000000),
		 (unsigned long long)(us % 1000000));
	e = out + strlen(out) - 1;
	while (*e == '0')
		*e-- = '\0';
	if (*e == '.')
		*e = '\0';
}

static void metrics_render(struct metrics *m, struct metrics_buf *b)
{
	const struct admin_ops *ops = m->ops;
	uint32_t n = ops->cores_n(ops->ctx), nb, i, k, f;
	struct admin_core *cores;
	struct stats_worker *st;
	bool *ok;

	if (n > CFG_CORES_MAX)
		n = CFG_CORES_MAX;
	cores = calloc(n ? n : 1, sizeof(*cores));
	st = calloc(n ? n : 1, sizeof(*st));
	ok = calloc(n ? n : 1, sizeof(*ok));
	if (!cores || !st || !ok) {
		b->oom = true;
		goto out;
	}
	for (i = 0; i < n; i++) {
		ok[i] = ops->core(ops->ctx, i, &cores[i]) == 0 && cores[i].stats;
		if (ok[i])
			stats_read(&st[i], cores[i].stats);
	}

	metrics_head(b, "corral_info", "gauge", "Version and steering of this corral (always 1).");
	mb_printf(b, "corral_info{version=\"");
	mb_label(b, ops->version ? ops->version : "unknown");
	mb_printf(b, "\",steering_mode=\"");
	mb_label(b, ops->steering_mode(ops->ctx) ? ops->steering_mode(ops->ctx) : "kernel-hash");
	mb_printf(b, "\",policy=\"");
	mb_label(b, ops->policy(ops->ctx) ? ops->policy(ops->ctx) : "hash");
	mb_printf(b, "\"} 1\n");
	metrics_head(b, "corral_cores", "gauge", "Worker cores.");
	mb_printf(b, "corral_cores %u\n", n);
	if (ops->config_version) {
		metrics_head(b, "corral_config_version", "gauge",
			     "Version of the config snapshot in use (bumped by each reload).");
		mb_printf(b, "corral_config_version %llu\n",
			  (unsigned long long)ops->config_version(ops->ctx));
	}
	if (ops->steer_fallbacks) {
		metrics_head(b, "corral_steering_fallbacks_total", "counter",
			     "Connections the steering program left to the kernel's hash.");
		mb_printf(b, "corral_steering_fallbacks_total %llu\n",
			  (unsigned long long)ops->steer_fallbacks(ops->ctx));
	}
	metrics_head(b, "corral_internal_checks_total", "counter",
		     "Cannot-happen conditions corral detected and recovered from (CHECK_IF).");
	mb_printf(b, "corral_internal_checks_total %llu\n", (unsigned long long)bug_checks_total());

	metrics_head(b, "corral_core_draining", "gauge", "1 while the core is drained.");
	for (i = 0; i < n; i++)
		if (ok[i])
			mb_printf(b, "corral_core_draining{core=\"%u\"} %d\n", i,
				  cores[i].state == ADMIN_CORE_DRAINING);
	metrics_head(b, "corral_core_weight", "gauge", "Steering weight of the core.");
	for (i = 0; i < n; i++)
		if (ok[i])
			mb_printf(b, "corral_core_weight{core=\"%u\"} %u\n", i, cores[i].weight);
	metrics_head(b, "corral_connections_steered_total", "counter",
		     "Connections the steering program sent to the core.");
	for (i = 0; i < n; i++)
		if (ok[i])
			mb_printf(b, "corral_connections_steered_total{core=\"%u\"} %llu\n", i,
				  (unsigned long long)cores[i].steered);
	metrics_head(b, "corral_accept_queue_length", "gauge",
		     "Connections waiting in the core's accept queue.");
	for (i = 0; i < n; i++)
		if (ok[i])
			mb_printf(b, "corral_accept_queue_length{core=\"%u\"} %llu\n", i,
				  (unsigned long long)cores[i].accept_queue);

	for (f = 0; f < sizeof(metrics_fields) / sizeof(metrics_fields[0]); f++) {
		const struct metrics_field *mf = &metrics_fields[f];

		metrics_head(b, mf->name, mf->type, mf->help);
		for (i = 0; i < n; i++)
			if (ok[i])
				mb_printf(
					b, "%s{core=\"%u\"} %llu\n", mf->name, i,
					(unsigned long long)*(
						const uint64_t *)((const char *)&st[i] + mf->off));
	}
	metrics_head(b, "corral_responses_total", "counter",
		     "Responses sent to clients, by status class.");
	for (i = 0; i < n; i++)
		for (k = 0; k < STATS_CLASSES && ok[i]; k++)
			mb_printf(b, "corral_responses_total{core=\"%u\",class=\"%s\"} %llu\n", i,
				  metrics_class[k], (unsigned long long)st[i].responses[k]);
	metrics_head(b, "corral_tls_failures_total", "counter",
		     "TLS sessions on client connections that failed, by reason.");
	for (i = 0; i < n; i++)
		for (k = TLS_FAIL_NONE + 1; ok[i] && k < TLS_FAIL_REASONS; k++)
			mb_printf(b, "corral_tls_failures_total{core=\"%u\",reason=\"%s\"} %llu\n",
				  i, tls_fail_name((enum tls_fail)k),
				  (unsigned long long)st[i].tls_failures[k]);
	metrics_head(b, "corral_worker_cpu_seconds_total", "counter",
		     "CPU time used by the worker thread.");
	for (i = 0; i < n; i++)
		if (ok[i])
			mb_printf(b, "corral_worker_cpu_seconds_total{core=\"%u\"} %llu.%09llu\n",
				  i, (unsigned long long)(st[i].cpu_ns / 1000000000ull),
				  (unsigned long long)(st[i].cpu_ns % 1000000000ull));

	metrics_head(b, "corral_request_duration_seconds", "histogram",
		     "Request latency, from the parsed request head to the end of the response.");
	for (i = 0; i < n; i++) {
		uint64_t cum = 0, count = 0;
		uint32_t j = 0;

		if (!ok[i])
			continue;
		count = stats_lat_count(&st[i]);
		for (k = METRICS_LE_FIRST; k <= METRICS_LE_LAST; k += 4) {
			char le[32];

			/* Buckets below k hold exactly the samples under stats_bucket_lo(k) us. */
			for (; j < k; j++)
				cum += st[i].lat_us[j];
			metrics_le(le, sizeof(le), stats_bucket_lo(k));
			mb_printf(b,
				  "corral_request_duration_seconds_bucket{core=\"%u\",le=\"%s\"} "
				  "%llu\n",
				  i, le, (unsigned long long)cum);
		}
		mb_printf(b,
			  "corral_request_duration_seconds_bucket{core=\"%u\",le=\"+Inf\"} %llu\n",
			  i, (unsigned long long)count);
		mb_printf(b, "corral_request_duration_seconds_sum{core=\"%u\"} %llu.%06llu\n", i,
			  (unsigned long long)(st[i].lat_sum_us / 1000000),
			  (unsigned long long)(st[i].lat_sum_us % 1000000));
		mb_printf(b, "corral_request_duration_seconds_count{core=\"%u\"} %llu\n", i,
			  (unsigned long long)count);
	}

	nb = ops->backends_n && ops->backend ? ops->backends_n(ops->ctx) : 0;
	if (nb) {
		static const struct {
			const char *name, *type, *help;
		} bf[] = {
			{ "corral_backend_up", "gauge",
			  "1 when the backend is enabled and healthy." },
			{ "corral_backend_weight", "gauge", "Effective balancing weight." },
			{ "corral_backend_active", "gauge", "Requests in flight to the backend." },
			{ "corral_backend_requests_total", "counter",
			  "Requests sent to the backend." },
			{ "corral_backend_errors_total", "counter",
			  "Connect failures, resets, timeouts and bad responses." },
			{ "corral_backend_latency_seconds_total", "counter",
			  "Sum of request latencies through the backend." },
			{ "corral_backend_health_checks_total", "counter",
			  "Active health checks finished (result=ok|failed)." },
			{ "corral_backend_state_changes_total", "counter",
			  "Changes between up and down (checks or traffic)." },
		};
		struct admin_backend *be = calloc(nb, sizeof(*be));
		bool *bok = calloc(nb, sizeof(*bok));

		if (!be || !bok) {
			free(be);
			free(bok);
			b->oom = true;
			goto out;
		}
		for (i = 0; i < nb; i++) {
			bok[i] = ops->backend(ops->ctx, i, &be[i]) == 0;
			be[i].addr[sizeof(be[i].addr) - 1] = '\0';
		}
		for (f = 0; f < sizeof(bf) / sizeof(bf[0]); f++) {
			metrics_head(b, bf[f].name, bf[f].type, bf[f].help);
			for (i = 0; i < nb; i++) {
				const struct admin_backend *x = &be[i];

				if (!bok[i])
					continue;
				if (f == 6) {
					/* Two series each: ok and failed checks. */
					mb_printf(b, "%s{backend=\"", bf[f].name);
					mb_label(b, x->addr);
					mb_printf(
						b, "\",result=\"ok\"} %llu\n",
						(unsigned long long)(x->checks - x->checks_failed));
					mb_printf(b, "%s{backend=\"", bf[f].name);
					mb_label(b, x->addr);
					mb_printf(b, "\",result=\"failed\"} %llu\n",
						  (unsigned long long)x->checks_failed);
					continue;
				}
				mb_printf(b, "%s{backend=\"", bf[f].name);
				mb_label(b, x->addr);
				mb_printf(b, "\"} ");
				switch (f) {
				case 0:
					mb_printf(b, "%d\n", x->enabled && x->healthy);
					break;
				case 1:
					mb_printf(b, "%u\n", x->weight);
					break;
				case 2:
					mb_printf(b, "%llu\n", (unsigned long long)x->active);
					break;
				case 3:
					mb_printf(b, "%llu\n", (unsigned long long)x->requests);
					break;
				case 4:
					mb_printf(b, "%llu\n", (unsigned long long)x->errors);
					break;
				case 7:
					mb_printf(b, "%llu\n", (unsigned long long)x->transitions);
					break;
				default:
					mb_printf(b, "%llu.%06llu\n",
						  (unsigned long long)(x->lat_sum_us / 1000000),
						  (unsigned long long)(x->lat_sum_us % 1000000));
				}
			}
		}
		free(be);
		free(bok);
	}
out:
	free(cores);
	free(st);
	free(ok);
}

/* Builds the whole answer (head + body) for one request head. */
static void metrics_answer(struct metrics *m, struct metrics_conn *mc)
{
	struct metrics_buf body = { 0 }, resp = { 0 };
	const char *status = "200 OK", *sp1, *sp2, *end;
	bool head_only = false;
	size_t mlen, tlen;

	end = memchr(mc->in, '\n', mc->in_len);
	sp1 = end ? memchr(mc->in, ' ', (size_t)(end - mc->in)) : NULL;
	sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1)) : NULL;
	if (!sp2) {
		status = "400 Bad Request";
		mb_printf(&body, "bad request\n");
		goto send;
	}
	mlen = (size_t)(sp1 - mc->in);
	tlen = (size_t)(sp2 - sp1 - 1);
	head_only = mlen == 4 && !memcmp(mc->in, "HEAD", 4);
	if (!head_only && !(mlen == 3 && !memcmp(mc->in, "GET", 3))) {
		status = "405 Method Not Allowed";
		mb_printf(&body, "only GET and HEAD\n");
		goto send;
	}
	if ((tlen == 6 && !memcmp(sp1 + 1, "/ready", 6)) ||
	    (tlen > 6 && !memcmp(sp1 + 1, "/ready?", 7))) {
		bool ok = !m->ops->accepting || m->ops->accepting(m->ops->ctx);

		status = ok ? "200 OK" : "503 Service Unavailable";
		mb_printf(&body, ok ? "ready\n" : "draining\n");
		goto send;
	}
	if ((tlen == 8 && !memcmp(sp1 + 1, "/healthz", 8)) ||
	    (tlen > 8 && !memcmp(sp1 + 1, "/healthz?", 9))) {
		char why[ADMIN_ERR_MAX] = "";
		bool ok = !m->ops->alive || m->ops->alive(m->ops->ctx, why, sizeof(why)) == 0;

		status = ok ? "200 OK" : "503 Service Unavailable";
		mb_printf(&body, "%s\n", ok ? "ok" : why);
		goto send;
	}
	if (!((tlen == 8 && !memcmp(sp1 + 1, "/metrics", 8)) ||
	      (tlen > 8 && !memcmp(sp1 + 1, "/metrics?", 9)))) {
		status = "404 Not Found";
		mb_printf(&body, "see /metrics, /ready or /healthz\n");
		goto send;
	}
	metrics_render(m, &body);
	if (body.oom) {
		free(body.p);
		body = (struct metrics_buf){ 0 };
		status = "500 Internal Server Error";
		mb_printf(&body, "out of memory\n");
	}
send:
	mb_printf(&resp,
		  "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
		  "Content-Length: %zu\r\nConnection: close\r\n\r\n%.*s",
		  status, body.len, head_only ? 0 : (int)body.len, body.p ? body.p : "");
	free(body.p);
	if (resp.oom) {
		free(resp.p);
		resp = (struct metrics_buf){ 0 };
	}
	mc->out = resp.p;
	mc->out_len = resp.len;
	mc->out_off = 0;
}

static void metrics_conn_close(struct metrics *m, struct metrics_conn *mc)
{
	if (mc->fd < 0)
		return;
	epoll_ctl(m->ep, EPOLL_CTL_DEL, mc->fd, NULL);
	close(mc->fd);
	free(mc->out);
	mc->out = NULL;
	mc->fd = -1;
}

static void metrics_conn_want(struct metrics *m, struct metrics_conn *mc, uint32_t events)
{
	struct epoll_event ev = { .events = events,
				  .data.u64 = METRICS_TAG_CONN + (uint64_t)(mc - m->conns) };

	epoll_ctl(m->ep, EPOLL_CTL_MOD, mc->fd, &ev);
}

static void metrics_conn_flush(struct metrics *m, struct metrics_conn *mc)
{
	while (mc->out_off < mc->out_len) {
		ssize_t n = send(mc->fd, mc->out + mc->out_off, mc->out_len - mc->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			metrics_conn_want(m, mc, EPOLLOUT);
			return;
		}
		if (n <= 0) {
			metrics_conn_close(m, mc);
			return;
		}
		mc->out_off += (size_t)n;
	}
	/* All sent: close our side gracefully and wait for the scraper's close (no RST). */
	free(mc->out);
	mc->out = NULL;
	shutdown(mc->fd, SHUT_WR);
	mc->lingering = true;
	metrics_conn_want(m, mc, EPOLLIN);
}

static void metrics_conn_read(struct metrics *m, struct metrics_conn *mc)
{
	for (;;) {
		char drain[512];
		ssize_t n;

		if (mc->lingering) {
			n = recv(mc->fd, drain, sizeof(drain), MSG_DONTWAIT);
		} else {
			if (mc->in_len == sizeof(mc->in)) {
				/* Head too large: answer 431-ish as a 400 and close. */
				mc->in_len = 0;
				metrics_answer(m, mc);
				metrics_conn_flush(m, mc);
				return;
			}
			n = recv(mc->fd, mc->in + mc->in_len, sizeof(mc->in) - mc->in_len,
				 MSG_DONTWAIT);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			metrics_conn_close(m, mc);
			return;
		}
		if (mc->lingering)
			continue;
		mc->in_len += (size_t)n;
		if (memmem(mc->in, mc->in_len, "\r\n\r\n", 4) ||
		    memmem(mc->in, mc->in_len, "\n\n", 2)) {
			metrics_answer(m, mc);
			if (!mc->out) {
				metrics_conn_close(m, mc);
				return;
			}
			metrics_conn_flush(m, mc);
			return;
		}
	}
}

static void metrics_accept(struct metrics *m)
{
	for (;;) {
		struct epoll_event ev;
		uint32_t i;
		int fd = accept4(m->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			admin_listen_failed(&m->ls, m->ep, m->lfd, errno, "metrics");
			return;
		}
		for (i = 0; i < METRICS_CONNS_MAX && m->conns[i].fd >= 0; i++)
			;
		if (i == METRICS_CONNS_MAX) {
			close(fd);
			continue;
		}
		ev.events = EPOLLIN;
		ev.data.u64 = METRICS_TAG_CONN + i;
		if (epoll_ctl(m->ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
			close(fd);
			continue;
		}
		m->conns[i] = (struct metrics_conn){ .fd = fd, .since_ns = metrics_now_ns() };
	}
}

void metrics_service(struct metrics *m)
{
	struct epoll_event evs[16];
	int i, n;

	n = epoll_wait(m->ep, evs, 16, 0);
	for (i = 0; i < n; i++) {
		uint64_t tag = evs[i].data.u64;

		if (tag == METRICS_TAG_LISTEN) {
			metrics_accept(m);
		} else if (tag == METRICS_TAG_TIMER) {
			uint64_t ticks, now = metrics_now_ns();
			uint32_t j;

			admin_listen_tick(&m->ls, m->ep, m->lfd, METRICS_TAG_LISTEN);
			if (read(m->tfd, &ticks, sizeof(ticks)) < 0) {
				/* EAGAIN: another event already consumed it. */
			}
			for (j = 0; j < METRICS_CONNS_MAX; j++)
				if (m->conns[j].fd >= 0 &&
				    now - m->conns[j].since_ns > METRICS_CONN_NS)
					metrics_conn_close(m, &m->conns[j]);
		} else if (tag - METRICS_TAG_CONN < METRICS_CONNS_MAX) {
			struct metrics_conn *mc = &m->conns[tag - METRICS_TAG_CONN];

			if (mc->fd < 0)
				continue;
			if (mc->out)
				metrics_conn_flush(m, mc);
			else
				metrics_conn_read(m, mc);
		}
	}
}

int metrics_fd(const struct metrics *m)
{
	return m->ep;
}

void metrics_handoff(struct metrics *m, uint32_t timeout_ms)
{
	uint64_t end = metrics_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	bool open;

	if (!m)
		return;
	/* No new connection: they queue on the listener for the successor. */
	epoll_ctl(m->ep, EPOLL_CTL_DEL, m->lfd, NULL);
	m->ls.gone = true;
	do {
		struct pollfd pf = { .fd = m->ep, .events = POLLIN };
		uint32_t j;

		open = false;
		for (j = 0; j < METRICS_CONNS_MAX; j++)
			open |= m->conns[j].fd >= 0;
		if (!open)
			break;
		if (poll(&pf, 1, 10) > 0)
			metrics_service(m);
	} while (metrics_now_ns() < end);
}

int metrics_listen_fd(const struct metrics *m)
{
	return m ? m->lfd : -1;
}

uint16_t metrics_port(const struct metrics *m)
{
	return m->port;
}

/* Opens the listener at addr, or adopts inherited (>= 0: a listening socket), and serves it. */
static int metrics_open_as(struct metrics **out, const struct cfg_addr *addr, int inherited,
			   const struct admin_ops *ops, char *err, size_t errlen)
{
	struct itimerspec its = { .it_interval = { 1, 0 }, .it_value = { 1, 0 } };
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct epoll_event ev;
	char host[INET6_ADDRSTRLEN], where[INET6_ADDRSTRLEN + 8];
	struct metrics *m;
	int rc, one = 1, i;

	err[0] = '\0';
	if ((!addr && inherited < 0) || !ops || !ops->cores_n || !ops->core ||
	    !ops->steering_mode || !ops->policy) {
		if (inherited >= 0)
			close(inherited);
		snprintf(err, errlen, "metrics: no address or incomplete admin_ops");
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		snprintf(err, errlen, "metrics: out of memory");
		return -ENOMEM;
	}
	m->ep = m->lfd = m->tfd = -1;
	for (i = 0; i < METRICS_CONNS_MAX; i++)
		m->conns[i].fd = -1;
	m->ops = ops;

	if (inherited >= 0) {
		m->lfd = inherited;
		if (fcntl(m->lfd, F_SETFL, fcntl(m->lfd, F_GETFL) | O_NONBLOCK) == -1 ||
		    fcntl(m->lfd, F_SETFD, FD_CLOEXEC) == -1)
			goto fail_errno;
		goto bound;
	}
	m->lfd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (m->lfd < 0)
		goto fail_errno;
	if (setsockopt(m->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1)
		goto fail_errno;
	if (bind(m->lfd, (const struct sockaddr *)&addr->ss, addr->len) == -1)
		goto fail_errno;
	if (listen(m->lfd, 64) == -1)
		goto fail_errno;
bound:
	if (getsockname(m->lfd, (struct sockaddr *)&ss, &sl) == -1)
		goto fail_errno;
	if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		m->port = ntohs(s6->sin6_port);
		snprintf(where, sizeof(where), "[%s]:%u", host, m->port);
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		m->port = ntohs(s4->sin_port);
		snprintf(where, sizeof(where), "%s:%u", host, m->port);
	}

	m->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (m->tfd < 0 || timerfd_settime(m->tfd, 0, &its, NULL) == -1)
		goto fail_errno;
	m->ep = epoll_create1(EPOLL_CLOEXEC);
	if (m->ep < 0)
		goto fail_errno;
	ev.events = EPOLLIN;
	ev.data.u64 = METRICS_TAG_LISTEN;
	if (epoll_ctl(m->ep, EPOLL_CTL_ADD, m->lfd, &ev) == -1)
		goto fail_errno;
	ev.data.u64 = METRICS_TAG_TIMER;
	if (epoll_ctl(m->ep, EPOLL_CTL_ADD, m->tfd, &ev) == -1)
		goto fail_errno;

	/* Tests and operators find the port (port 0 asks the kernel) in this line. */
	log_info("metrics on %s", where);
	*out = m;
	return 0;

fail_errno:
	rc = -errno;
	snprintf(err, errlen, "metrics %s: %s", addr && addr->text[0] ? addr->text : "listener",
		 strerror(-rc));
	metrics_close(m);
	return rc;
}

int metrics_open(struct metrics **out, const struct cfg_addr *addr, const struct admin_ops *ops,
		 char *err, size_t errlen)
{
	return metrics_open_as(out, addr, -1, ops, err, errlen);
}

int metrics_open_fd(struct metrics **out, int fd, const struct admin_ops *ops, char *err,
		    size_t errlen)
{
	if (fd < 0) {
		snprintf(err, errlen, "metrics: no inherited listener");
		return -EBADF;
	}
	return metrics_open_as(out, NULL, fd, ops, err, errlen);
}

void metrics_close(struct metrics *m)
{
	int i;

	if (!m)
		return;
	for (i = 0; i < METRICS_CONNS_MAX; i++)
		metrics_conn_close(m, &m->conns[i]);
	if (m->lfd >= 0)
		close(m->lfd);
	if (m->tfd >= 0)
		close(m->tfd);
	if (m->ep >= 0)
		close(m->ep);
	free(m);
}
