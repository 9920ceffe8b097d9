/* corral-backend: a small, fast epoll HTTP/1.1 origin server for corral's demos, tests and benchmarks. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/*
 * Buffers per connection. The input buffer bounds the request head (a larger head gets a 431);
 * the output buffer is twice that so that a /headers response (the whole head echoed back)
 * always fits once earlier pipelined responses have drained.
 */
#define BE_IN_BYTES  (32 * 1024)
#define BE_OUT_BYTES (64 * 1024)
/* Room that must be free in the output buffer before the next request is started. */
#define BE_OUT_RESERVE (BE_IN_BYTES + 1024)
#define BE_HEADERS_MAX 200
#define BE_EVENTS      256
/* Closed connections kept for reuse per thread, so that a close/open storm does not malloc. */
#define BE_FREE_MAX 1024
/* How long a closing connection drains the client's leftovers before the final close. */
#define BE_LINGER_MS 1000
/* The /bytes pattern: byte i of a body is (i % BE_PAT_PERIOD); a prime, so it never aligns. */
#define BE_PAT_PERIOD	251
#define BE_BYTES_MAX	(1ULL << 40)
#define BE_DELAY_MS_MAX 600000

enum be_state {
	ST_HEAD,    /* waiting for (or parsing) the next request head */
	ST_BODY,    /* consuming the request body: echoed or discarded */
	ST_GEN,	    /* streaming a generated /bytes body */
	ST_DELAY,   /* waiting for the /delay timer */
	ST_CLOSING, /* answer queued; flush, then shut down and linger */
	ST_LINGER,  /* write side shut; discard input until EOF or the linger timer */
};

enum be_route {
	R_ROOT,
	R_ECHO,
	R_BYTES,
	R_DELAY,
	R_WORK,
	R_STATUS,
	R_HEADERS,
	R_CLOSE,
	R_STATS,
	R_NOTFOUND,
};

enum be_kind {
	K_LISTEN,
	K_SOCK,
	K_TIMER
};

/* Chunked decoder states. */
enum {
	CS_SIZE,
	CS_EXT,
	CS_SIZE_LF,
	CS_DATA,
	CS_DATA_CR,
	CS_DATA_LF,
	CS_TR_START,
	CS_TR_LINE,
	CS_TR_LF,
	CS_END_LF
};

enum {
	BODY_NONE,
	BODY_LENGTH,
	BODY_CHUNKED
};

struct conn;

/* What an epoll event points at. */
struct evh {
	uint8_t kind;
	struct conn *c;
};

/* One per thread; touched only by its own thread. */
struct worker {
	int epfd;
	int lfd;
	struct evh lev;
	uint64_t rng;
	struct conn *free_list;
	uint32_t free_n;
	struct conn *dead; /* closed during this epoll batch; recycled after it */
};

/* One client connection; owned by the worker that accepted it. */
struct conn {
	struct worker *w;
	struct conn *next; /* free or dead list */
	struct evh ev_sock;
	struct evh ev_timer;
	int fd;
	int tfd; /* timerfd, created on first use and kept with the connection */
	uint32_t ep_mask;
	bool dead;
	bool eof;
	bool keep_alive;
	bool http10;
	bool head_only;
	bool echo;
	bool echo_chunked; /* echo body sent chunked */
	bool echo_raw;	   /* echo body close-delimited (HTTP/1.0 client, chunked upload) */
	bool gen_chunked;
	bool hold; /* an early answer waits in out[hold_at..] until the request body is consumed */
	uint8_t state;
	uint8_t route;
	uint8_t body;	    /* BODY_* framing of the request */
	uint8_t cstate;	    /* chunked decoder */
	uint64_t arg;	    /* route argument: /bytes N, /delay MS, /status N */
	uint64_t body_left; /* LENGTH: bytes left; CHUNKED: bytes left in this chunk */
	uint64_t gen_left;
	uint64_t gen_pos;
	uint32_t in_r, in_w;
	uint32_t out_r, out_w;
	uint32_t hold_at;
	char in[BE_IN_BYTES];
	char out[BE_OUT_BYTES];
};

/*
 * The only state shared between threads: counters for /__stats, updated and read with relaxed
 * atomics (they order nothing; tests read them after their own requests have completed).
 */
static _Atomic uint64_t stat_connections;
static _Atomic uint64_t stat_requests;
static _Atomic int64_t stat_active;

/* BE_OUT_BYTES plus one period, so that any offset can be copied with one memcpy. */
static char pattern[BE_OUT_BYTES + BE_PAT_PERIOD];
static const char *backend_id;

static void conn_close(struct conn *c);
static void conn_run(struct conn *c);

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_next(struct worker *w)
{
	/* xorshift64: cheap, per thread, good enough for spin lengths. */
	w->rng ^= w->rng << 13;
	w->rng ^= w->rng >> 7;
	w->rng ^= w->rng << 17;
	return w->rng;
}

/* True when there are output bytes that may be written now. */
static bool out_pending(const struct conn *c)
{
	return (c->hold ? c->hold_at : c->out_w) > c->out_r;
}

static void conn_set_mask(struct conn *c)
{
	uint32_t m = 0;
	struct epoll_event ev;

	if (c->dead)
		return;
	if (out_pending(c))
		m |= EPOLLOUT;
	if (c->state == ST_LINGER) {
		m |= EPOLLIN;
	} else if (!c->eof && c->state != ST_CLOSING) {
		/* Reading more is useful only if there is room; otherwise backpressure the client. */
		if (c->in_w < BE_IN_BYTES || c->in_r > 0)
			m |= EPOLLIN;
	}
	if (m == c->ep_mask)
		return;
	ev.events = m;
	ev.data.ptr = &c->ev_sock;
	if (epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev) == -1) {
		conn_close(c);
		return;
	}
	c->ep_mask = m;
}

static uint32_t out_room(struct conn *c)
{
	if (c->out_r == c->out_w) {
		c->out_r = c->out_w = c->hold_at = 0;
	} else if (c->out_r > 0 && BE_OUT_BYTES - c->out_w < BE_OUT_BYTES / 2) {
		memmove(c->out, c->out + c->out_r, c->out_w - c->out_r);
		c->out_w -= c->out_r;
		c->hold_at = c->hold_at > c->out_r ? c->hold_at - c->out_r : 0;
		c->out_r = 0;
	}
	return BE_OUT_BYTES - c->out_w;
}

/* Appends to the output buffer; the callers check room first (heads are small). */
static void out_put(struct conn *c, const void *p, size_t n)
{
	if (out_room(c) < n)
		abort(); /* a sizing bug, never input-driven */
	memcpy(c->out + c->out_w, p, n);
	c->out_w += (uint32_t)n;
}

static void out_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	uint32_t room = out_room(c);
	int n;

	va_start(ap, fmt);
	n = vsnprintf(c->out + c->out_w, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (uint32_t)n >= room)
		abort(); /* a sizing bug, never input-driven */
	c->out_w += (uint32_t)n;
}

static const char *reason_of(uint32_t code)
{
	switch (code) {
	case 100:
		return "Continue";
	case 200:
		return "OK";
	case 201:
		return "Created";
	case 204:
		return "No Content";
	case 301:
		return "Moved Permanently";
	case 302:
		return "Found";
	case 304:
		return "Not Modified";
	case 400:
		return "Bad Request";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 408:
		return "Request Timeout";
	case 413:
		return "Content Too Large";
	case 429:
		return "Too Many Requests";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 502:
		return "Bad Gateway";
	case 503:
		return "Service Unavailable";
	case 504:
		return "Gateway Timeout";
	default:
		return "Status";
	}
}

/*
 * Writes a response head. len >= 0: Content-Length; len == -1: chunked; len == -2: no framing
 * header (204/304, or a close-delimited body).
 */
static void resp_head(struct conn *c, uint32_t code, int64_t len, const char *ctype)
{
	out_printf(c, "HTTP/1.1 %u %s\r\n", code, reason_of(code));
	if (len >= 0)
		out_printf(c, "Content-Length: %" PRId64 "\r\n", len);
	else if (len == -1)
		out_put(c, "Transfer-Encoding: chunked\r\n", 28);
	if (ctype)
		out_printf(c, "Content-Type: %s\r\n", ctype);
	if (backend_id)
		out_printf(c, "X-Backend-Id: %s\r\n", backend_id);
	if (!c->keep_alive)
		out_put(c, "Connection: close\r\n", 19);
	else if (c->http10)
		out_put(c, "Connection: keep-alive\r\n", 24);
	out_put(c, "\r\n", 2);
}

/* A complete small response with a body. */
static void resp_simple(struct conn *c, uint32_t code, const char *body, size_t len)
{
	resp_head(c, code, (int64_t)len, "text/plain");
	if (!c->head_only)
		out_put(c, body, len);
}

/* An error answer that ends the connection (bad input). */
static void resp_fail(struct conn *c, uint32_t code)
{
	char body[64];
	int n = snprintf(body, sizeof(body), "%u %s\n", code, reason_of(code));

	c->keep_alive = false;
	c->head_only = false;
	resp_simple(c, code, body, (size_t)n);
	c->state = ST_CLOSING;
}

static void pattern_init(void)
{
	for (size_t i = 0; i < sizeof(pattern); i++)
		pattern[i] = (char)(i % BE_PAT_PERIOD);
}

static int timer_arm(struct conn *c, uint64_t ms)
{
	struct itimerspec its = { 0 };
	struct epoll_event ev;

	if (c->tfd < 0) {
		c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		if (c->tfd < 0)
			return -errno;
		ev.events = EPOLLIN;
		ev.data.ptr = &c->ev_timer;
		if (epoll_ctl(c->w->epfd, EPOLL_CTL_ADD, c->tfd, &ev) == -1) {
			int err = -errno;

			close(c->tfd);
			c->tfd = -1;
			return err;
		}
	}
	/* A zero it_value disarms, so a 0 ms delay still waits one nanosecond. */
	its.it_value.tv_sec = (time_t)(ms / 1000);
	its.it_value.tv_nsec = (long)(ms % 1000) * 1000000L;
	if (ms == 0)
		its.it_value.tv_nsec = 1;
	if (timerfd_settime(c->tfd, 0, &its, NULL) == -1)
		return -errno;
	return 0;
}

static bool tok_eq(const char *p, size_t n, const char *lit)
{
	size_t l = strlen(lit);

	return n == l && strncasecmp(p, lit, l) == 0;
}

/* Parses a decimal number that must span all of p[0..n); false on junk or overflow. */
static bool parse_u64(const char *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0 || n > 19)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*out = v;
	return true;
}

static void route_of(struct conn *c, const char *t, size_t n)
{
	size_t plen;
	const char *q = memchr(t, '?', n);

	if (n > 7 && strncasecmp(t, "http://", 7) == 0) {
		/* absolute-form: drop scheme and authority */
		const char *s = memchr(t + 7, '/', n - 7);

		if (!s) {
			t = "/";
			n = 1;
			q = NULL;
		} else {
			n -= (size_t)(s - t);
			t = s;
			q = memchr(t, '?', n);
		}
	}
	plen = q ? (size_t)(q - t) : n;
	c->route = R_NOTFOUND;
	c->gen_chunked = false;
	if (plen == 1 && t[0] == '/') {
		c->route = R_ROOT;
	} else if (tok_eq(t, plen, "/echo")) {
		c->route = R_ECHO;
	} else if (plen > 7 && strncmp(t, "/bytes/", 7) == 0) {
		if (parse_u64(t + 7, plen - 7, &c->arg) && c->arg <= BE_BYTES_MAX)
			c->route = R_BYTES;
		if (q && memmem(q, n - plen, "chunked=1", 9))
			c->gen_chunked = true;
	} else if (plen > 7 && strncmp(t, "/delay/", 7) == 0) {
		if (parse_u64(t + 7, plen - 7, &c->arg) && c->arg <= BE_DELAY_MS_MAX)
			c->route = R_DELAY;
	} else if (plen > 8 && strncmp(t, "/status/", 8) == 0) {
		if (parse_u64(t + 8, plen - 8, &c->arg) && c->arg >= 200 && c->arg <= 599)
			c->route = R_STATUS;
	} else if (plen == 5 && strncmp(t, "/work", 5) == 0) {
		c->route = R_WORK;
	} else if (plen == 8 && strncmp(t, "/headers", 8) == 0) {
		c->route = R_HEADERS;
	} else if (plen == 6 && strncmp(t, "/close", 6) == 0) {
		c->route = R_CLOSE;
	} else if (plen == 8 && strncmp(t, "/__stats", 8) == 0) {
		c->route = R_STATS;
	}
}

static bool is_tchar(char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
		return true;
	return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Scans a Connection header value for the close / keep-alive tokens. */
static void connection_tokens(const char *v, size_t n, bool *close, bool *ka)
{
	size_t i = 0;

	while (i < n) {
		size_t s, e;

		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		s = i;
		while (i < n && v[i] != ',')
			i++;
		e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (tok_eq(v + s, e - s, "close"))
			*close = true;
		else if (tok_eq(v + s, e - s, "keep-alive"))
			*ka = true;
	}
}

/*
 * Parses the head at in[in_r .. in_r + len) (len includes the final CRLF CRLF).
 * Returns 0 or the status code to fail with.
 */
static uint32_t parse_head(struct conn *c, const char *h, size_t len, bool *expect)
{
	const char *end = h + len - 2; /* the last empty line */
	const char *p = h, *sp1, *sp2, *eol;
	bool has_cl = false, has_te = false, close = false, ka = false;
	uint64_t cl = 0;
	uint32_t nhdr = 0;

	eol = memchr(p, '\r', (size_t)(end - p));
	if (!eol || eol[1] != '\n')
		return 400;
	sp1 = memchr(p, ' ', (size_t)(eol - p));
	if (!sp1 || sp1 == p)
		return 400;
	for (const char *m = p; m < sp1; m++)
		if (!is_tchar(*m))
			return 400;
	sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
	if (!sp2 || sp2 == sp1 + 1)
		return 400;
	if (eol - sp2 - 1 != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0)
		return 400;
	if (sp2[8] == '1')
		c->http10 = false;
	else if (sp2[8] == '0')
		c->http10 = true;
	else
		return 400;
	for (const char *t = sp1 + 1; t < sp2; t++)
		if ((unsigned char)*t <= 0x20 || *t == 0x7f)
			return 400;
	c->head_only = (sp1 - p == 4 && strncmp(p, "HEAD", 4) == 0);
	route_of(c, sp1 + 1, (size_t)(sp2 - sp1 - 1));

	p = eol + 2;
	while (p < end) {
		const char *colon, *v, *ve;

		eol = memchr(p, '\r', (size_t)(end - p) + 1);
		if (!eol || eol[1] != '\n')
			return 400;
		if (++nhdr > BE_HEADERS_MAX)
			return 431;
		colon = memchr(p, ':', (size_t)(eol - p));
		if (!colon || colon == p)
			return 400;
		for (const char *m = p; m < colon; m++)
			if (!is_tchar(*m))
				return 400;
		v = colon + 1;
		while (v < eol && (*v == ' ' || *v == '\t'))
			v++;
		ve = eol;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		for (const char *m = v; m < ve; m++)
			if ((unsigned char)*m < 0x20 && *m != '\t')
				return 400;
		if (tok_eq(p, (size_t)(colon - p), "content-length")) {
			uint64_t v2;

			if (!parse_u64(v, (size_t)(ve - v), &v2))
				return 400;
			if (has_cl && v2 != cl)
				return 400;
			has_cl = true;
			cl = v2;
		} else if (tok_eq(p, (size_t)(colon - p), "transfer-encoding")) {
			if (has_te || !tok_eq(v, (size_t)(ve - v), "chunked"))
				return has_te ? 400 : 501;
			has_te = true;
		} else if (tok_eq(p, (size_t)(colon - p), "connection")) {
			connection_tokens(v, (size_t)(ve - v), &close, &ka);
		} else if (tok_eq(p, (size_t)(colon - p), "expect")) {
			if (tok_eq(v, (size_t)(ve - v), "100-continue"))
				*expect = true;
		}
		p = eol + 2;
	}
	if (has_cl && has_te)
		return 400;
	if (has_te && c->http10)
		return 400;
	c->body = has_te ? BODY_CHUNKED : (has_cl && cl > 0) ? BODY_LENGTH : BODY_NONE;
	c->body_left = has_te ? 0 : cl;
	c->cstate = CS_SIZE;
	c->keep_alive = c->http10 ? (ka && !close) : !close;
	return 0;
}

/* Starts a /bytes body (after its head). */
static void gen_start(struct conn *c)
{
	c->gen_left = c->head_only ? 0 : c->arg;
	c->gen_pos = 0;
	c->state = ST_GEN;
}

/* "Hello, world!": the benchmark response, written without formatting in the common case. */
static void resp_hello(struct conn *c)
{
	static const char hello[] = "Hello, world!";
	static const char full[] = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n"
				   "Content-Type: text/plain\r\n\r\nHello, world!";

	if (c->keep_alive && !c->http10 && !c->head_only && !backend_id)
		out_put(c, full, sizeof(full) - 1);
	else
		resp_simple(c, 200, hello, sizeof(hello) - 1);
}

/* Answers a request whose body has been consumed (every route but echo and headers). */
static void respond(struct conn *c)
{
	char buf[160];
	int n;

	c->state = ST_HEAD;
	switch (c->route) {
	case R_ROOT:
		resp_hello(c);
		break;
	case R_BYTES:
		if (c->gen_chunked && c->http10)
			c->gen_chunked = false;
		resp_head(c, 200, c->gen_chunked ? -1 : (int64_t)c->arg,
			  "application/octet-stream");
		gen_start(c);
		break;
	case R_DELAY:
		if (timer_arm(c, c->arg) < 0) {
			resp_fail(c, 500);
			break;
		}
		c->state = ST_DELAY;
		break;
	case R_WORK: {
		uint64_t spins = rng_next(c->w) % 11, until = now_ns() + spins * 10000;

		while (now_ns() < until)
			;
		resp_hello(c);
		break;
	}
	case R_STATUS:
		if (c->arg == 204 || c->arg == 304) {
			resp_head(c, (uint32_t)c->arg, -2, NULL);
		} else {
			n = snprintf(buf, sizeof(buf), "status %u\n", (unsigned)c->arg);
			resp_simple(c, (uint32_t)c->arg, buf, (size_t)n);
		}
		break;
	case R_CLOSE:
		c->keep_alive = false;
		resp_simple(c, 200, "bye\n", 4);
		break;
	case R_STATS:
		n = snprintf(buf, sizeof(buf),
			     "{\"connections\": %" PRIu64 ", \"requests\": %" PRIu64
			     ", \"active\": %" PRId64 "}\n",
			     atomic_load_explicit(&stat_connections, memory_order_relaxed),
			     atomic_load_explicit(&stat_requests, memory_order_relaxed),
			     atomic_load_explicit(&stat_active, memory_order_relaxed));
		resp_head(c, 200, n, "application/json");
		if (!c->head_only)
			out_put(c, buf, (size_t)n);
		break;
	default:
		resp_simple(c, 404, "not found\n", 10);
		break;
	}
	if (c->state == ST_HEAD && !c->keep_alive)
		c->state = ST_CLOSING;
}

/* The body is complete: finish the echo or answer the request. */
static void body_done(struct conn *c)
{
	if (c->echo) {
		if (c->echo_chunked)
			out_put(c, "0\r\n\r\n", 5);
		c->state = ST_HEAD;
		if (!c->keep_alive || c->echo_raw)
			c->state = ST_CLOSING;
		return;
	}
	if (c->route == R_HEADERS) {
		/* answered at head time; the answer may go out now */
		c->hold = false;
		c->state = c->keep_alive ? ST_HEAD : ST_CLOSING;
		return;
	}
	respond(c);
}

/* Takes n payload bytes from the input: copied to the output when echoing, else dropped. */
static void body_payload(struct conn *c, uint32_t n)
{
	if (c->echo && n) {
		if (c->echo_chunked)
			out_printf(c, "%x\r\n", n);
		out_put(c, c->in + c->in_r, n);
		if (c->echo_chunked)
			out_put(c, "\r\n", 2);
	}
	c->in_r += n;
}

/* Room for echoed payload in this step (0 when not echoing: no limit beyond the input). */
static uint32_t body_budget(struct conn *c)
{
	uint32_t room;

	if (!c->echo)
		return UINT32_MAX;
	room = out_room(c);
	return room > 32 ? room - 32 : 0;
}

/* Consumes request body bytes from the input. Returns true on progress; fails the connection on bad framing. */
static bool step_body(struct conn *c)
{
	bool progress = false;

	if (c->body == BODY_LENGTH) {
		uint32_t avail = c->in_w - c->in_r;
		uint64_t n = c->body_left < avail ? c->body_left : avail;
		uint32_t budget = body_budget(c);

		if (n > budget)
			n = budget;
		if (n) {
			body_payload(c, (uint32_t)n);
			c->body_left -= n;
			progress = true;
		}
		if (c->body_left == 0) {
			body_done(c);
			progress = true;
		}
		return progress;
	}
	while (c->in_r < c->in_w) {
		char ch = c->in[c->in_r];

		switch (c->cstate) {
		case CS_SIZE: {
			int d = -1;

			if (ch >= '0' && ch <= '9')
				d = ch - '0';
			else if (ch >= 'a' && ch <= 'f')
				d = ch - 'a' + 10;
			else if (ch >= 'A' && ch <= 'F')
				d = ch - 'A' + 10;
			if (d >= 0) {
				if (c->body_left >> 56)
					goto bad;
				c->body_left = c->body_left * 16 + (uint64_t)d;
			} else if (ch == ';' || ch == ' ' || ch == '\t') {
				c->cstate = CS_EXT;
			} else if (ch == '\r') {
				c->cstate = CS_SIZE_LF;
			} else {
				goto bad;
			}
			c->in_r++;
			break;
		}
		case CS_EXT:
			if (ch == '\r')
				c->cstate = CS_SIZE_LF;
			else if (ch == '\n')
				goto bad;
			c->in_r++;
			break;
		case CS_SIZE_LF:
			if (ch != '\n')
				goto bad;
			c->in_r++;
			c->cstate = c->body_left ? CS_DATA : CS_TR_START;
			break;
		case CS_DATA: {
			uint32_t avail = c->in_w - c->in_r;
			uint64_t n = c->body_left < avail ? c->body_left : avail;
			uint32_t budget = body_budget(c);

			if (n > budget)
				n = budget;
			if (n == 0)
				return progress; /* output full: wait for the client to read */
			body_payload(c, (uint32_t)n);
			c->body_left -= n;
			if (c->body_left == 0)
				c->cstate = CS_DATA_CR;
			break;
		}
		case CS_DATA_CR:
			if (ch != '\r')
				goto bad;
			c->in_r++;
			c->cstate = CS_DATA_LF;
			break;
		case CS_DATA_LF:
			if (ch != '\n')
				goto bad;
			c->in_r++;
			c->cstate = CS_SIZE;
			break;
		case CS_TR_START:
			c->in_r++;
			c->cstate = ch == '\r' ? CS_END_LF : CS_TR_LINE;
			break;
		case CS_TR_LINE:
			if (ch == '\r')
				c->cstate = CS_TR_LF;
			c->in_r++;
			break;
		case CS_TR_LF:
			if (ch != '\n')
				goto bad;
			c->in_r++;
			c->cstate = CS_TR_START;
			break;
		case CS_END_LF:
			if (ch != '\n')
				goto bad;
			c->in_r++;
			body_done(c);
			return true;
		}
		progress = true;
	}
	return progress;
bad:
	if (c->hold) {
		/* The held answer is for a request that turned out malformed: drop it. */
		c->out_w = c->hold_at;
		c->hold = false;
	}
	if (c->echo) {
		/* A response is already under way: the only honest signal left is a close. */
		c->keep_alive = false;
		c->state = ST_CLOSING;
	} else {
		resp_fail(c, 400);
	}
	return true;
}

/* Parses and starts the next request, if a whole head is buffered. */
static bool step_head(struct conn *c)
{
	const char *h = c->in + c->in_r, *e;
	size_t avail = c->in_w - c->in_r, len;
	bool expect = false;
	uint32_t code;

	if (out_room(c) < BE_OUT_RESERVE)
		return false;
	/* Tolerate empty lines between requests (RFC 9112 section 2.2). */
	while (avail >= 2 && h[0] == '\r' && h[1] == '\n') {
		c->in_r += 2;
		h += 2;
		avail -= 2;
	}
	if (avail == 0)
		return false;
	e = memmem(h, avail, "\r\n\r\n", 4);
	if (!e) {
		if (avail >= BE_IN_BYTES) {
			resp_fail(c, 431);
			return true;
		}
		return false;
	}
	len = (size_t)(e - h) + 4;
	c->echo = c->echo_chunked = c->echo_raw = false;
	c->keep_alive = true;
	code = parse_head(c, h, len, &expect);
	if (code) {
		resp_fail(c, code);
		return true;
	}
	if (c->route != R_STATS)
		atomic_fetch_add_explicit(&stat_requests, 1, memory_order_relaxed);
	if (expect && c->body != BODY_NONE && !c->http10)
		out_put(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
	/*
	 * An answer that is written before the body is read (the head is still in the buffer) is
	 * held back until the body has been consumed, as an ordinary server would answer.
	 */
	if ((c->route == R_HEADERS || (c->route == R_ECHO && c->head_only)) &&
	    c->body != BODY_NONE) {
		c->hold = true;
		c->hold_at = c->out_w;
	}
	if (c->route == R_HEADERS) {
		resp_head(c, 200, (int64_t)len, "text/plain");
		if (!c->head_only)
			out_put(c, h, len);
	}
	c->in_r += (uint32_t)len;
	if (c->route == R_ECHO) {
		c->echo = true;
		if (c->head_only) {
			resp_head(c, 200, c->body == BODY_LENGTH ? (int64_t)c->body_left : 0, NULL);
			c->echo = false;
			c->route = R_HEADERS; /* answered; drop the body */
		} else if (c->body == BODY_CHUNKED) {
			if (c->http10) {
				c->echo_raw = true;
				c->keep_alive = false;
				resp_head(c, 200, -2, "application/octet-stream");
			} else {
				c->echo_chunked = true;
				resp_head(c, 200, -1, "application/octet-stream");
			}
		} else {
			resp_head(c, 200, c->body == BODY_LENGTH ? (int64_t)c->body_left : 0,
				  "application/octet-stream");
		}
	}
	if (c->body == BODY_NONE)
		body_done(c);
	else
		c->state = ST_BODY;
	return true;
}

static bool step_gen(struct conn *c)
{
	bool progress = false;

	while (c->gen_left) {
		uint32_t room = out_room(c), n, off;

		if (c->gen_chunked)
			room = room > 32 ? room - 32 : 0;
		if (room < 4096 && room < c->gen_left)
			break; /* wait for a decent amount of room: fewer, larger writes */
		n = c->gen_left < room ? (uint32_t)c->gen_left : room;
		off = (uint32_t)(c->gen_pos % BE_PAT_PERIOD);
		if (c->gen_chunked)
			out_printf(c, "%x\r\n", n);
		memcpy(c->out + c->out_w, pattern + off, n);
		c->out_w += n;
		if (c->gen_chunked)
			out_put(c, "\r\n", 2);
		c->gen_left -= n;
		c->gen_pos += n;
		progress = true;
	}
	if (c->gen_left == 0) {
		if (c->gen_chunked && !c->head_only) {
			if (out_room(c) < 5)
				return progress;
			out_put(c, "0\r\n\r\n", 5);
		}
		c->state = c->keep_alive ? ST_HEAD : ST_CLOSING;
		progress = true;
	}
	return progress;
}

/* Does as much request work as the buffers allow. Returns true on any progress. */
static bool conn_step(struct conn *c)
{
	bool any = false;

	for (;;) {
		bool p = false;

		switch (c->state) {
		case ST_HEAD:
			p = step_head(c);
			break;
		case ST_BODY:
			p = step_body(c);
			break;
		case ST_GEN:
			p = step_gen(c);
			break;
		default:
			break;
		}
		if (!p)
			return any;
		any = true;
	}
}

/* Writes what the output buffer holds. Returns the bytes written, or -1 when the connection must close. */
static ssize_t conn_flush(struct conn *c)
{
	ssize_t total = 0;

	while (out_pending(c)) {
		uint32_t end = c->hold ? c->hold_at : c->out_w;
		ssize_t n = send(c->fd, c->out + c->out_r, end - c->out_r, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return total;
			return -1;
		}
		c->out_r += (uint32_t)n;
		total += n;
	}
	if (c->out_r == c->out_w)
		c->out_r = c->out_w = c->hold_at = 0;
	return total;
}

static void conn_linger(struct conn *c)
{
	shutdown(c->fd, SHUT_WR);
	c->state = ST_LINGER;
	c->in_r = c->in_w = 0;
	if (timer_arm(c, BE_LINGER_MS) < 0)
		conn_close(c);
}

static void conn_run(struct conn *c)
{
	for (;;) {
		bool progress = conn_step(c);
		ssize_t wrote = conn_flush(c);

		if (wrote < 0) {
			conn_close(c);
			return;
		}
		if (out_pending(c))
			break; /* socket full: EPOLLOUT brings us back */
		if (c->state == ST_CLOSING) {
			conn_linger(c);
			if (c->dead)
				return;
			break;
		}
		/* Draining the output may have unblocked work that had no room: go round again. */
		if (!progress && wrote == 0)
			break;
	}
	/* The client went away and nothing buffered can complete: done. */
	if (c->eof && !out_pending(c) && c->state != ST_DELAY && c->state != ST_LINGER &&
	    c->state != ST_GEN) {
		conn_close(c);
		return;
	}
	conn_set_mask(c);
}

static void conn_readable(struct conn *c)
{
	ssize_t n;

	if (c->state == ST_LINGER) {
		char sink[16384];

		n = recv(c->fd, sink, sizeof(sink), 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			conn_close(c);
		return;
	}
	if (c->in_r == c->in_w) {
		c->in_r = c->in_w = 0;
	} else if (c->in_r > 0 && c->in_w == BE_IN_BYTES) {
		memmove(c->in, c->in + c->in_r, c->in_w - c->in_r);
		c->in_w -= c->in_r;
		c->in_r = 0;
	}
	if (c->in_w < BE_IN_BYTES) {
		n = recv(c->fd, c->in + c->in_w, BE_IN_BYTES - c->in_w, 0);
		if (n > 0) {
			c->in_w += (uint32_t)n;
		} else if (n == 0) {
			c->eof = true;
		} else if (errno != EAGAIN && errno != EINTR) {
			conn_close(c);
			return;
		}
	}
	conn_run(c);
}

static void conn_timer(struct conn *c)
{
	uint64_t ticks;

	if (read(c->tfd, &ticks, sizeof(ticks)) != sizeof(ticks))
		return;
	if (c->state == ST_LINGER) {
		conn_close(c);
	} else if (c->state == ST_DELAY) {
		c->state = c->keep_alive ? ST_HEAD : ST_CLOSING;
		resp_simple(c, 200, "ok\n", 3);
		conn_run(c);
	}
}

static void conn_close(struct conn *c)
{
	if (c->dead)
		return;
	c->dead = true;
	close(c->fd);
	c->fd = -1;
	if (c->tfd >= 0) {
		close(c->tfd);
		c->tfd = -1;
	}
	atomic_fetch_sub_explicit(&stat_active, 1, memory_order_relaxed);
	c->next = c->w->dead;
	c->w->dead = c;
}

static void worker_reap(struct worker *w)
{
	while (w->dead) {
		struct conn *c = w->dead;

		w->dead = c->next;
		if (w->free_n < BE_FREE_MAX) {
			c->next = w->free_list;
			w->free_list = c;
			w->free_n++;
		} else {
			free(c);
		}
	}
}

static void worker_accept(struct worker *w)
{
	for (int i = 0; i < 64; i++) {
		int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), one = 1;
		struct epoll_event ev;
		struct conn *c;

		if (fd < 0)
			return; /* EAGAIN, or a transient error such as EMFILE: retried next event */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (w->free_list) {
			c = w->free_list;
			w->free_list = c->next;
			w->free_n--;
		} else {
			c = malloc(sizeof(*c));
			if (!c) {
				close(fd);
				return;
			}
		}
		/* Reset the header, not the buffers. */
		memset(c, 0, offsetof(struct conn, in));
		c->w = w;
		c->fd = fd;
		c->tfd = -1;
		c->ev_sock.kind = K_SOCK;
		c->ev_sock.c = c;
		c->ev_timer.kind = K_TIMER;
		c->ev_timer.c = c;
		c->state = ST_HEAD;
		c->ep_mask = EPOLLIN;
		ev.events = EPOLLIN;
		ev.data.ptr = &c->ev_sock;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
			close(fd);
			c->next = w->free_list;
			w->free_list = c;
			w->free_n++;
			continue;
		}
		atomic_fetch_add_explicit(&stat_connections, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&stat_active, 1, memory_order_relaxed);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[BE_EVENTS];

	for (;;) {
		int n = epoll_wait(w->epfd, evs, BE_EVENTS, -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			exit(1);
		}
		for (int i = 0; i < n; i++) {
			struct evh *h = evs[i].data.ptr;
			struct conn *c = h->c;

			if (h->kind == K_LISTEN) {
				worker_accept(w);
				continue;
			}
			if (c->dead)
				continue;
			if (h->kind == K_TIMER) {
				conn_timer(c);
				continue;
			}
			/*
			 * ERR or HUP: reset, or both directions shut; nothing more can be sent,
			 * and level-triggered HUP would spin while a delay or a full buffer waits.
			 */
			if (evs[i].events & (EPOLLERR | EPOLLHUP))
				conn_close(c);
			else if (evs[i].events & EPOLLIN)
				conn_readable(c);
			else if (evs[i].events & EPOLLOUT)
				conn_run(c);
		}
		worker_reap(w);
	}
	return NULL;
}

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[128];
	const char *colon;
	size_t hl;
	long port;
	char *end;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');

		if (!rb || rb[1] != ':')
			return -EINVAL;
		hl = (size_t)(rb - s - 1);
		if (hl >= sizeof(host))
			return -EINVAL;
		memcpy(host, s + 1, hl);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hl = (size_t)(colon - s);
		if (hl >= sizeof(host))
			return -EINVAL;
		memcpy(host, s, hl);
	}
	host[hl] = 0;
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno || *end || port < 0 || port > 65535)
		return -EINVAL;
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;

		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		*len = sizeof(*a);
	} else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		*len = sizeof(*a);
	} else {
		return -EINVAL;
	}
	return 0;
}

static int listen_on(struct sockaddr_storage *ss, socklen_t len)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1 ||
	    bind(fd, (struct sockaddr *)ss, len) == -1 || listen(fd, 4096) == -1) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: corral-backend [--listen ADDR:PORT] [--threads N] [--id NAME]\n"
		"  --listen   address to listen on (default 127.0.0.1:9000; port 0: the kernel "
		"picks;\n"
		"             \"listening on ADDR:PORT\" is printed on stdout either way)\n"
		"  --threads  epoll threads sharing the port with SO_REUSEPORT (default 1)\n"
		"  --id       adds an X-Backend-Id: NAME header to every response\n"
		"routes:\n"
		"  GET /              200 \"Hello, world!\"\n"
		"  /echo              the request body back (chunked if it came chunked)\n"
		"  /bytes/N           N bytes, byte i = i %% 251 (?chunked=1: chunked)\n"
		"  /delay/MS          200 after MS milliseconds (timer; other connections go on)\n"
		"  /work              200 after 0-10 x 10 us of CPU\n"
		"  /status/N          status N (200-599)\n"
		"  /headers           the request head as received, as the body\n"
		"  /close             200 with Connection: close, then closes\n"
		"  /__stats           {\"connections\", \"requests\", \"active\"} (not itself "
		"counted)\n");
}

int main(int argc, char **argv)
{
	const char *listen_s = "127.0.0.1:9000";
	long threads = 1;
	struct sockaddr_storage ss;
	socklen_t sl;
	struct worker *ws;
	char host[INET6_ADDRSTRLEN];
	uint16_t port;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
			listen_s = argv[++i];
		} else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
			threads = strtol(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--id") && i + 1 < argc) {
			backend_id = argv[++i];
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage();
			return 0;
		} else {
			usage();
			return 2;
		}
	}
	if (threads < 1 || threads > 256 || parse_addr(listen_s, &ss, &sl) < 0 ||
	    (backend_id && strpbrk(backend_id, "\r\n"))) {
		usage();
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	pattern_init();
	ws = calloc((size_t)threads, sizeof(*ws));
	if (!ws)
		return 1;
	for (long i = 0; i < threads; i++) {
		struct worker *w = &ws[i];
		struct epoll_event ev;

		w->lfd = listen_on(&ss, sl);
		if (w->lfd < 0) {
			fprintf(stderr, "corral-backend: listen on %s: %s\n", listen_s,
				strerror(-w->lfd));
			return 1;
		}
		if (i == 0) {
			/* Port 0: every further thread joins the port the kernel chose. */
			sl = sizeof(ss);
			getsockname(w->lfd, (struct sockaddr *)&ss, &sl);
		}
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (w->epfd < 0) {
			perror("epoll_create1");
			return 1;
		}
		w->lev.kind = K_LISTEN;
		ev.events = EPOLLIN;
		ev.data.ptr = &w->lev;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd, &ev) == -1) {
			perror("epoll_ctl");
			return 1;
		}
		w->rng = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)i << 32) ^ now_ns();
		if (!w->rng)
			w->rng = 1;
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
		printf("listening on [%s]:%u\n", host, port);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
		printf("listening on %s:%u\n", host, port);
	}
	fflush(stdout);
	for (long i = 1; i < threads; i++) {
		pthread_t t;

		if (pthread_create(&t, NULL, worker_main, &ws[i]) != 0) {
			fprintf(stderr, "corral-backend: pthread_create failed\n");
			return 1;
		}
		pthread_detach(t);
	}
	worker_main(&ws[0]);
	return 0;
}
