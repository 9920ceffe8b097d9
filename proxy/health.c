/* Backend health: active HTTP checks on the main thread, and the passive view of traffic. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include "health.h"
#include "proxyproto.h"
#include "tls.h"
#include "worker.h"

/*
 * Request of a check: a send_proxy backend's LOCAL/UNKNOWN header (16 bytes at most), method,
 * path, Host, three fixed headers; bounded by the config sizes (about 300 bytes in all).
 */
#define HC_REQ_MAX 384
/* Only the status line is read; a longer first line than this is not HTTP. */
#define HC_IN_MAX 256
/* Ciphertext read per recv from a TLS backend: the session takes it all before the next. */
#define HC_TLS_IN_MAX 4096
#define HC_TAG_TIMER  UINT64_MAX

enum hc_phase {
	HC_IDLE = 0,
	HC_CONNECT, /* connect in progress: wait for EPOLLOUT */
	HC_SEND,    /* request partly sent: wait for EPOLLOUT */
	HC_RECV,    /* waiting for the status line */
};

/* One backend id's health state. Main thread only, except `down` in backend_rt. */
struct hc_be {
	char addr[64]; /* the address this state belongs to ("" = never used) */
	bool in_cfg;
	struct cfg_health cfg;
	uint8_t send_proxy; /* the backend's send_proxy: its checks begin with a LOCAL header */
	struct sockaddr_storage ss;
	socklen_t sl;

	int fd;
	uint8_t phase;
	uint64_t next_ms;     /* when the next check starts */
	uint64_t started_ms;  /* when the running check started */
	uint64_t deadline_ms; /* running check fails at this time */
	char req[HC_REQ_MAX];
	size_t req_len, req_off;
	char in[HC_IN_MAX];
	size_t in_len;
	/* A TLS backend's check runs in a client session (no resumption: checks are rare). */
	bool want_tls;		/* the backend has tls: (its checks speak TLS too) */
	bool tls_on;		/* tls holds the running check's session */
	size_t pp_len, pp_sent; /* a TLS check's PROXY header: req[0, pp_len) goes in clear first */
	struct tls_conn tls;
	uint8_t tls_in[HC_TLS_IN_MAX];

	bool down;
	bool passive; /* down because of a connect failure on a request, not a check */
	bool parked;  /* passive park (down_until_ms) seen, checks off */
	uint32_t ok_run, fail_run;
	uint64_t fail_seen_ms; /* newest worker connect failure already acted on */

	bool ramping;
	uint64_t ramp_start_ms;
	uint32_t ramp_target, ramp_last;

	struct health_view view;
};

struct health {
	struct daemon *d;
	int ep;
	int tfd;
	uint64_t timer_ms; /* when the timer is armed for, 0 = not armed */
	struct hc_be be[BACKEND_IDS_MAX];
};

int health_parse_status(const char *buf, size_t len)
{
	int st;

	/* "HTTP/1.1 200 OK": version, one space, three digits, then a space or the line end. */
	if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '0' && buf[7] != '1') ||
	    buf[8] != ' ')
		return -1;
	for (int i = 9; i < 12; i++)
		if (buf[i] < '0' || buf[i] > '9')
			return -1;
	if (len > 12 && buf[12] != ' ' && buf[12] != '\r' && buf[12] != '\n')
		return -1;
	st = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
	return st >= 100 ? st : -1;
}

static void hc_publish(struct health *h, uint32_t id, bool down)
{
	__atomic_store_n(&h->d->backends[id].down, down ? 1u : 0u, __ATOMIC_RELAXED);
}

static void hc_set_state(struct health *h, uint32_t id, bool down, const char *why)
{
	struct hc_be *b = &h->be[id];

	snprintf(b->view.reason, sizeof(b->view.reason), "%s", why);
	if (b->down == down)
		return;
	b->down = down;
	b->view.transitions++;
	hc_publish(h, id, down);
	log_info("backend %s %s: %s", b->addr, down ? "DOWN" : "UP", why);
	if (b->ramping &&
	    __atomic_load_n(&h->d->backends[id].weight, __ATOMIC_RELAXED) == b->ramp_last)
		__atomic_store_n(&h->d->backends[id].weight, b->ramp_target, __ATOMIC_RELAXED);
	b->ramping = false;
	if (!down && b->cfg.slow_start_ms) {
		/* Slow start: from weight 1 up to the weight it has now, over slow_start_ms. */
		b->ramp_target = __atomic_load_n(&h->d->backends[id].weight, __ATOMIC_RELAXED);
		if (b->ramp_target > 1) {
			b->ramping = true;
			b->ramp_start_ms = now_ms();
			b->ramp_last = 1;
			__atomic_store_n(&h->d->backends[id].weight, 1u, __ATOMIC_RELAXED);
		}
	}
}

static void hc_stop(struct health *h, struct hc_be *b)
{
	if (b->tls_on) {
		tls_conn_free(&b->tls);
		b->tls_on = false;
	}
	if (b->fd >= 0) {
		epoll_ctl(h->ep, EPOLL_CTL_DEL, b->fd, NULL);
		close(b->fd);
	}
	b->fd = -1;
	b->phase = HC_IDLE;
}

/* A check ended: count it, apply rise/fall, schedule the next one. */
static void hc_done(struct health *h, uint32_t id, bool ok, const char *result)
{
	struct hc_be *b = &h->be[id];
	uint64_t now = now_ms();
	char why[sizeof(b->view.reason)];

	hc_stop(h, b);
	b->next_ms = b->started_ms + b->cfg.interval_ms;
	if (b->next_ms <= now)
		b->next_ms = now + 1;
	b->view.checked = true;
	b->view.last_ok = ok;
	b->view.last_ms = now;
	b->view.checks++;
	snprintf(b->view.last_result, sizeof(b->view.last_result), "%s", result);
	if (ok) {
		bool was_failing = b->fail_run > 0 || b->view.transitions == 0;

		b->fail_run = 0;
		b->ok_run++;
		if (b->down && b->ok_run >= b->cfg.rise) {
			snprintf(why, sizeof(why), "%u check%s passed (%s)", b->ok_run,
				 b->ok_run == 1 ? "" : "s", result);
			b->passive = false;
			hc_set_state(h, id, false, why);
		} else if (b->down) {
			snprintf(b->view.reason, sizeof(b->view.reason),
				 "%u of %u checks passed (%s); still down", b->ok_run, b->cfg.rise,
				 result);
		} else if (was_failing) {
			snprintf(b->view.reason, sizeof(b->view.reason), "checks pass (%s)",
				 result);
		}
		return;
	}
	b->view.checks_failed++;
	b->ok_run = 0;
	b->fail_run++;
	if (!b->down && b->fail_run >= b->cfg.fall) {
		snprintf(why, sizeof(why), "%u check%s failed (%s)", b->fail_run,
			 b->fail_run == 1 ? "" : "s", result);
		hc_set_state(h, id, true, why);
	} else if (!b->down) {
		snprintf(b->view.reason, sizeof(b->view.reason),
			 "%u of %u checks failed (%s); still up", b->fail_run, b->cfg.fall, result);
	} else if (b->passive) {
		snprintf(b->view.reason, sizeof(b->view.reason),
			 "connect failed on a request (passive), then %u check%s failed (%s)",
			 b->fail_run, b->fail_run == 1 ? "" : "s", result);
	} else {
		snprintf(b->view.reason, sizeof(b->view.reason), "%u checks failed in a row (%s)",
			 b->fail_run, result);
	}
}

static void hc_want(struct health *h, uint32_t id, uint32_t events, int op)
{
	struct epoll_event ev = { .events = events, .data.u64 = id };

	epoll_ctl(h->ep, op, h->be[id].fd, &ev);
}

/*
 * Sends p[0..len) on check id's socket without waiting: the count sent, all of it or fewer
 * when the socket is full (the check then waits for EPOLLOUT), or -1 when the send failed
 * (the check is done).
 */
static ssize_t hc_send_some(struct health *h, uint32_t id, const void *p, size_t len)
{
	struct hc_be *b = &h->be[id];
	size_t off = 0;
	char res[64];
	ssize_t n;

	while (off < len) {
		n = send(b->fd, (const char *)p + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			b->phase = HC_SEND;
			hc_want(h, id, EPOLLOUT, EPOLL_CTL_MOD);
			break;
		}
		if (n <= 0) {
			snprintf(res, sizeof(res), "send: %s", n < 0 ? strerror(errno) : "closed");
			hc_done(h, id, false, res);
			return -1;
		}
		off += (size_t)n;
	}
	return (ssize_t)off;
}

/*
 * Receives into p[0..cap) on check id's socket without waiting: the count received, 0 when
 * the backend closed, -EAGAIN when nothing is there yet, or -1 when the receive failed (the
 * check is done).
 */
static ssize_t hc_recv_some(struct health *h, uint32_t id, void *p, size_t cap)
{
	struct hc_be *b = &h->be[id];
	char res[64];
	ssize_t n;

	for (;;) {
		n = recv(b->fd, p, cap, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return -EAGAIN;
		if (n < 0) {
			snprintf(res, sizeof(res), "recv: %s", strerror(errno));
			hc_done(h, id, false, res);
			return -1;
		}
		return n;
	}
}

static void hc_tls_pump(struct health *h, uint32_t id);

static void hc_send(struct health *h, uint32_t id)
{
	struct hc_be *b = &h->be[id];
	ssize_t n;

	if (b->tls_on) {
		hc_tls_pump(h, id);
		return;
	}
	n = hc_send_some(h, id, b->req + b->req_off, b->req_len - b->req_off);
	if (n < 0)
		return;
	b->req_off += (size_t)n;
	if (b->req_off < b->req_len)
		return; /* waits for EPOLLOUT */
	b->phase = HC_RECV;
	hc_want(h, id, EPOLLIN, EPOLL_CTL_MOD);
}

/* The status line in b->in (complete, or the buffer full) decides the check. */
static void hc_status(struct health *h, uint32_t id)
{
	struct hc_be *b = &h->be[id];
	const char *eol = memchr(b->in, '\n', b->in_len);
	char res[64];
	int st;

	st = eol ? health_parse_status(b->in, (size_t)(eol - b->in)) : -1;
	if (st < 0) {
		hc_done(h, id, false, "not an HTTP/1.x status line");
		return;
	}
	if (st >= b->cfg.expect_lo && st <= b->cfg.expect_hi) {
		snprintf(res, sizeof(res), "%d", st);
		hc_done(h, id, true, res);
	} else {
		snprintf(res, sizeof(res), "status %d, expected %u-%u", st, b->cfg.expect_lo,
			 b->cfg.expect_hi);
		hc_done(h, id, false, res);
	}
}

/* A TLS check failed: the session's reason ("certificate verify failed: ..."). */
static void hc_tls_fail(struct health *h, uint32_t id)
{
	struct hc_be *b = &h->be[id];
	char res[64];

	snprintf(res, sizeof(res), "TLS: %s%s",
		 b->tls.fail == TLS_FAIL_VERIFY ? "certificate verify failed: " : "",
		 b->tls.why ? b->tls.why : "handshake failed");
	hc_done(h, id, false, res);
}

/*
 * Drives a TLS check as far as it goes without waiting: the handshake, the request written
 * into the session, its ciphertext sent, the status line read. Waits for EPOLLOUT while
 * ciphertext is left, else for EPOLLIN.
 */
static void hc_tls_pump(struct health *h, uint32_t id)
{
	struct hc_be *b = &h->be[id];
	struct iovec iov;
	ssize_t n;
	int r;

	if (b->pp_sent < b->pp_len) {
		n = hc_send_some(h, id, b->req + b->pp_sent, b->pp_len - b->pp_sent);
		if (n < 0)
			return;
		b->pp_sent += (size_t)n;
		if (b->pp_sent < b->pp_len)
			return; /* waits for EPOLLOUT */
	}
	if (b->tls.state == TLS_HANDSHAKE) {
		r = tls_handshake(&b->tls);
		if (r == -EPROTO) {
			hc_tls_fail(h, id);
			return;
		}
	}
	if (b->tls.state == TLS_OPEN && b->req_off < b->req_len) {
		n = tls_write(&b->tls, (const uint8_t *)b->req + b->req_off,
			      b->req_len - b->req_off);
		if (n == -EPROTO) {
			hc_tls_fail(h, id);
			return;
		}
		if (n > 0)
			b->req_off += (size_t)n;
	}
	while (tls_out(&b->tls, &iov)) {
		n = hc_send_some(h, id, iov.iov_base, iov.iov_len);
		if (n < 0)
			return;
		if (n > 0)
			tls_out_done(&b->tls, (size_t)n);
		if ((size_t)n < iov.iov_len)
			return; /* waits for EPOLLOUT */
	}
	if (b->tls.state == TLS_OPEN && b->req_off == b->req_len) {
		n = tls_read(&b->tls, (uint8_t *)b->in + b->in_len, sizeof(b->in) - b->in_len);
		if (n == -EPROTO) {
			hc_tls_fail(h, id);
			return;
		}
		if (n == 0) {
			hc_done(h, id, false, "closed before a status line");
			return;
		}
		if (n > 0) {
			b->in_len += (size_t)n;
			if (memchr(b->in, '\n', b->in_len) || b->in_len == sizeof(b->in)) {
				hc_status(h, id);
				return;
			}
		}
	}
	b->phase = HC_RECV;
	hc_want(h, id, EPOLLIN, EPOLL_CTL_MOD);
}

/* EPOLLIN on a TLS check: the ciphertext goes into the session, which is driven on. */
static void hc_tls_recv(struct health *h, uint32_t id)
{
	struct hc_be *b = &h->be[id];
	ssize_t n;

	for (;;) {
		n = hc_recv_some(h, id, b->tls_in, sizeof(b->tls_in));
		if (n < 0)
			return; /* nothing yet, or the check failed */
		if (n == 0) {
			hc_done(h, id, false,
				b->tls.state == TLS_HANDSHAKE ? "closed during the TLS handshake"
							      : "closed before a status line");
			return;
		}
		if (tls_feed(&b->tls, b->tls_in, (size_t)n) < 0) {
			hc_tls_fail(h, id);
			return;
		}
		/* The session reads all of it before this returns (or the check ends). */
		while (b->fd >= 0 && b->tls_on && tls_in_pending(&b->tls)) {
			size_t before = tls_in_pending(&b->tls);

			hc_tls_pump(h, id);
			if (b->fd < 0 || !b->tls_on || tls_in_pending(&b->tls) == before)
				break;
		}
		if (b->fd < 0 || !b->tls_on)
			return;
		if (tls_in_pending(&b->tls)) {
			/* Cannot go on without sending first: the bytes are dropped with the check. */
			hc_done(h, id, false, "TLS: the backend's flight did not fit");
			return;
		}
	}
}

static void hc_recv(struct health *h, uint32_t id)
{
	struct hc_be *b = &h->be[id];
	const char *eol;
	ssize_t n;

	if (b->tls_on) {
		hc_tls_recv(h, id);
		return;
	}
	for (;;) {
		n = hc_recv_some(h, id, b->in + b->in_len, sizeof(b->in) - b->in_len);
		if (n < 0)
			return; /* nothing yet, or the check failed */
		if (n == 0) {
			hc_done(h, id, false, "closed before a status line");
			return;
		}
		b->in_len += (size_t)n;
		eol = memchr(b->in, '\n', b->in_len);
		if (eol || b->in_len == sizeof(b->in))
			break;
	}
	hc_status(h, id);
}

/* The TLS context of backend id in the live snapshot (main thread), or NULL. */
static const struct tls_client *hc_tls_client(const struct health *h, uint32_t id)
{
	const struct snapshot *s = h->d->snap;

	for (uint32_t i = 0; s && i < s->cfg.backends_n; i++)
		if (s->backend_id[i] == id)
			return s->btls[i];
	return NULL;
}

static void hc_start(struct health *h, uint32_t id, uint64_t now)
{
	struct hc_be *b = &h->be[id];
	char res[64];
	size_t off = 0;
	int n;

	b->started_ms = now;
	b->deadline_ms = now + b->cfg.timeout_ms;
	b->in_len = 0;
	b->req_off = 0;
	if (b->send_proxy) {
		/*
		 * A backend that wants a PROXY header wants it on its checks too (HAProxy's
		 * check-send-proxy): v1 UNKNOWN / v2 LOCAL, the spec's form for a balancer's own
		 * connections, with no client to speak for.
		 */
		n = pp_build((uint8_t *)b->req, sizeof(b->req), b->send_proxy, NULL, NULL);
		BUG_ON(n <= 0);
		off = (size_t)n;
	}
	n = snprintf(b->req + off, sizeof(b->req) - off,
		     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: corral-health/" CORRAL_VERSION
		     "\r\nAccept: */*\r\nConnection: close\r\n\r\n",
		     b->cfg.path, b->cfg.host[0] ? b->cfg.host : b->addr);
	BUG_ON(n < 0 || off + (size_t)n >= sizeof(b->req)); /* bounded by CFG_HEALTH_*_MAX */
	b->req_len = off + (size_t)n;
	if (b->want_tls) {
		const struct tls_client *cl = hc_tls_client(h, id);

		if (!cl || tls_conn_init_client(&b->tls, cl, NULL) < 0) {
			hc_done(h, id, false, "TLS: no session");
			return;
		}
		b->tls_on = true;
		/* The PROXY header goes in clear before the handshake; the request inside it. */
		b->pp_len = off;
		b->pp_sent = 0;
		b->req_off = off;
	}
	b->fd = socket(b->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (b->fd < 0) {
		snprintf(res, sizeof(res), "socket: %s", strerror(errno));
		hc_done(h, id, false, res);
		return;
	}
	hc_want(h, id, EPOLLOUT, EPOLL_CTL_ADD);
	if (connect(b->fd, (struct sockaddr *)&b->ss, b->sl) == 0) {
		hc_send(h, id);
		return;
	}
	if (errno != EINPROGRESS) {
		snprintf(res, sizeof(res), "connect: %s", strerror(errno));
		hc_done(h, id, false, res);
		return;
	}
	b->phase = HC_CONNECT;
}

static void hc_event(struct health *h, uint32_t id, uint32_t events)
{
	struct hc_be *b = &h->be[id];
	socklen_t sl = sizeof(int);
	char res[64];
	int e = 0;

	if (b->fd < 0)
		return;
	switch (b->phase) {
	case HC_CONNECT:
		if (getsockopt(b->fd, SOL_SOCKET, SO_ERROR, &e, &sl) < 0)
			e = errno;
		if (e) {
			snprintf(res, sizeof(res), "connect: %s", strerror(e));
			hc_done(h, id, false, res);
			return;
		}
		hc_send(h, id);
		return;
	case HC_SEND:
		hc_send(h, id);
		return;
	case HC_RECV:
		hc_recv(h, id);
		return;
	default:
		return;
	}
}

/* The newest connect failure any worker saw on backend id (0 = none). */
static uint64_t hc_fail_latest(const struct health *h, uint32_t id)
{
	uint64_t last = 0;

	for (uint32_t i = 0; i < h->d->workers_n; i++) {
		uint64_t t = STAT_GET(h->d->workers[i]->bstats[id].connect_fail_ms);

		if (t > last)
			last = t;
	}
	return last;
}

/* The workers' connect failures: passive detection, and the park of main.c seen as a state. */
static void hc_passive(struct health *h, uint32_t id, uint64_t now)
{
	struct hc_be *b = &h->be[id];
	struct backend_rt *rt = &h->d->backends[id];
	uint64_t last = hc_fail_latest(h, id), until;
	char why[sizeof(b->view.reason)];

	if (b->cfg.on) {
		if (last > b->fail_seen_ms) {
			b->fail_seen_ms = last;
			b->ok_run = 0;
			/* A check started before the failure must not be the one that passes. */
			if (b->phase != HC_IDLE) {
				hc_stop(h, b);
				b->next_ms = b->started_ms + b->cfg.interval_ms;
			}
			if (!b->down) {
				b->passive = true;
				b->fail_run = 0;
				hc_set_state(h, id, true,
					     "connect failed on a request (passive); down until a "
					     "check passes");
			}
		}
		return;
	}
	b->fail_seen_ms = last;
	until = __atomic_load_n(&rt->down_until_ms, __ATOMIC_RELAXED);
	if (!b->parked && until > now) {
		b->parked = true;
		b->view.transitions++;
		snprintf(why, sizeof(why),
			 "connect failed on a request (passive), parked for %llu ms",
			 (unsigned long long)(until - now));
		snprintf(b->view.reason, sizeof(b->view.reason), "%s", why);
		log_info("backend %s DOWN: %s", b->addr, why);
	} else if (b->parked && until <= now) {
		b->parked = false;
		b->view.transitions++;
		snprintf(b->view.reason, sizeof(b->view.reason),
			 "park ended (no health checks configured)");
		log_info("backend %s UP: park ended (no health checks configured)", b->addr);
	}
}

static void hc_ramp(struct health *h, uint32_t id, uint64_t now)
{
	struct hc_be *b = &h->be[id];
	uint32_t *wp = &h->d->backends[id].weight, w;
	uint64_t el = now - b->ramp_start_ms;

	if (!b->ramping)
		return;
	/* An operator's `backend weight` or a reload set a weight meanwhile: it wins. */
	if (__atomic_load_n(wp, __ATOMIC_RELAXED) != b->ramp_last) {
		b->ramping = false;
		return;
	}
	if (el >= b->cfg.slow_start_ms) {
		w = b->ramp_target;
		b->ramping = false;
	} else {
		w = (uint32_t)((uint64_t)b->ramp_target * el / b->cfg.slow_start_ms);
		if (w < 1)
			w = 1;
	}
	b->ramp_last = w;
	__atomic_store_n(wp, w, __ATOMIC_RELAXED);
}

static void hc_arm_timer(struct health *h)
{
	uint64_t next = UINT64_MAX;
	struct itimerspec its = { 0 };

	for (uint32_t id = 0; id < BACKEND_IDS_MAX; id++) {
		const struct hc_be *b = &h->be[id];

		if (!b->in_cfg || !b->cfg.on)
			continue;
		if (b->phase != HC_IDLE && b->deadline_ms < next)
			next = b->deadline_ms;
		if (b->phase == HC_IDLE && b->next_ms < next)
			next = b->next_ms;
	}
	if (next == UINT64_MAX || next == h->timer_ms)
		return;
	h->timer_ms = next;
	its.it_value.tv_sec = (time_t)(next / 1000);
	its.it_value.tv_nsec = (long)(next % 1000) * 1000000L;
	timerfd_settime(h->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

void health_service(struct health *h)
{
	struct epoll_event evs[32];
	uint64_t now;
	int n;

	if (!h)
		return;
	n = epoll_wait(h->ep, evs, 32, 0);
	for (int i = 0; i < n; i++) {
		if (evs[i].data.u64 == HC_TAG_TIMER) {
			uint64_t ticks;

			if (read(h->tfd, &ticks, sizeof(ticks)) < 0) {
				/* EAGAIN: nothing to take */
			}
			h->timer_ms = 0;
			continue;
		}
		if (evs[i].data.u64 < BACKEND_IDS_MAX)
			hc_event(h, (uint32_t)evs[i].data.u64, evs[i].events);
	}
	now = now_ms();
	for (uint32_t id = 0; id < BACKEND_IDS_MAX; id++) {
		struct hc_be *b = &h->be[id];
		char res[64];

		if (!b->in_cfg)
			continue;
		hc_passive(h, id, now);
		hc_ramp(h, id, now);
		if (!b->cfg.on)
			continue;
		if (b->phase != HC_IDLE && now >= b->deadline_ms) {
			snprintf(res, sizeof(res), "timeout after %u ms", b->cfg.timeout_ms);
			hc_done(h, id, false, res);
		}
		if (b->phase == HC_IDLE && now >= b->next_ms)
			hc_start(h, id, now);
	}
	hc_arm_timer(h);
}

void health_sync(struct health *h, const struct snapshot *s)
{
	uint64_t now = now_ms();

	if (!h)
		return;
	for (uint32_t id = 0; id < BACKEND_IDS_MAX; id++)
		h->be[id].in_cfg = false;
	for (uint32_t i = 0; i < s->cfg.backends_n; i++) {
		const struct cfg_backend *cb = &s->cfg.backends[i];
		uint32_t id = s->backend_id[i];
		struct hc_be *b = &h->be[id];
		bool was_on = b->cfg.on;

		BUG_ON(id >= BACKEND_IDS_MAX);
		if (strcmp(b->addr, cb->addr.text) != 0) {
			/* A new address on this id: a fresh state, up until checks say otherwise. */
			hc_stop(h, b);
			memset(b, 0, sizeof(*b));
			b->fd = -1;
			snprintf(b->addr, sizeof(b->addr), "%s", cb->addr.text);
			snprintf(b->view.reason, sizeof(b->view.reason),
				 "new in the configuration");
			hc_publish(h, id, false);
			was_on = false;
		}
		b->in_cfg = true;
		memcpy(&b->ss, &cb->addr.ss, cb->addr.len);
		b->sl = cb->addr.len;
		b->cfg = cb->health;
		b->send_proxy = cb->send_proxy;
		b->want_tls = cb->tls.on;
		b->view.checks_on = b->cfg.on;
		if (b->cfg.on && !was_on) {
			b->next_ms = now; /* first check at once */
			b->ok_run = b->fail_run = 0;
			/* Failures from before (another address on this id) are not news. */
			b->fail_seen_ms = hc_fail_latest(h, id);
			b->parked = false;
		}
		if (!b->cfg.on && was_on) {
			hc_stop(h, b);
			if (b->down)
				hc_set_state(h, id, false, "health checks turned off by a reload");
		}
	}
	for (uint32_t id = 0; id < BACKEND_IDS_MAX; id++)
		if (!h->be[id].in_cfg)
			hc_stop(h, &h->be[id]);
	hc_arm_timer(h);
}

void health_view(const struct health *h, uint32_t id, struct health_view *out)
{
	memset(out, 0, sizeof(*out));
	if (!h || id >= BACKEND_IDS_MAX)
		return;
	*out = h->be[id].view;
	out->down = h->be[id].down;
}

int health_fd(const struct health *h)
{
	return h ? h->ep : -1;
}

int health_open(struct health **out, struct daemon *d)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = HC_TAG_TIMER };
	struct health *h = calloc(1, sizeof(*h));
	int r;

	if (!h)
		return -ENOMEM;
	h->d = d;
	for (uint32_t id = 0; id < BACKEND_IDS_MAX; id++)
		h->be[id].fd = -1;
	h->ep = epoll_create1(EPOLL_CLOEXEC);
	h->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (h->ep < 0 || h->tfd < 0 || epoll_ctl(h->ep, EPOLL_CTL_ADD, h->tfd, &ev) < 0) {
		r = -errno;
		health_close(h);
		return r;
	}
	*out = h;
	return 0;
}

void health_close(struct health *h)
{
	if (!h)
		return;
	for (uint32_t id = 0; id < BACKEND_IDS_MAX; id++)
		if (h->be[id].fd >= 0)
			close(h->be[id].fd);
	if (h->tfd >= 0)
		close(h->tfd);
	if (h->ep >= 0)
		close(h->ep);
	free(h);
}
