/*
 * The connection task, in three files along the path of a request:
 *
 *   client.c    accept, the client socket's completions, request head, lingering close,
 *               teardown (conn_*). Entered by the worker.
 *   exchange.c  one request's exchange: pick, connect or reuse, retry, request body and
 *               response towards the client, tunnel, end of the exchange (exchange_*, resp_*).
 *               Entered by client.c (forward) and by upstream.c's completions.
 *   upstream.c  the upstream connection object: slots, connect, the per-core idle pools,
 *               its completions (ups_*). Entered by exchange.c and by the worker.
 *
 * Calls go forward (client -> exchange -> upstream). Events come back only through the
 * entry points named in the "back" sections below.
 */
#ifndef CORRAL_CONN_H
#define CORRAL_CONN_H

#include <string.h>
#include "balance.h"
#include "http.h"
#include "stats.h"
#include "tls.h"
#include "worker.h"

/* --- the worker's entry points (client.c) ---------------------------------------------- */

/*
 * A new client socket from accept: takes a slot. Beyond connections_per_core it gets a 503
 * and is closed. At the worker's file-descriptor budget (w->fd_budget) an idle pooled upstream
 * connection, else the longest-idle client connection with no request in flight, is closed to
 * make room; only when there is none, a 503.
 */
void conn_accept(struct worker *w, int fd, uint32_t li);
/*
 * Work put off to the end of each batch of completions (an "idle" connection may have a
 * request in a completion still queued): the accepts conn_accept() deferred at the limit,
 * and the idle connections to shed for an fd shortage (w->shed_want).
 */
void conn_accept_deferred(struct worker *w);
/*
 * File descriptors ran out (EMFILE/ENFILE): closes up to n idle pooled upstream connections
 * and idle client connections (no request in flight). Returns how many were closed; their
 * fds are released once their cancelled ops complete. Only at the end of a batch.
 */
uint32_t conn_shed_idle(struct worker *w, uint32_t n);
/*
 * Room for one more fd (an upstream connect) in the worker's budget: true when it is there or
 * an idle pooled upstream or idle client connection was closed (or is, at the end of the
 * batch) for it; false when nothing is idle.
 */
bool conn_fd_room(struct worker *w);
/* Completion dispatch for client-side ops. */
void conn_on_cqe(struct worker *w, enum wop op, uint32_t idx, uint32_t gen, int res,
		 uint32_t flags);
/* A timer of class cls expired for connection idx. */
void conn_on_timeout(struct worker *w, uint32_t idx, enum tclass cls);
/* Re-arm a receive that failed for lack of buffers. */
void conn_retry_recv(struct worker *w, uint32_t idx);
/* Graceful stop: close idle connections now, make busy ones close after their response. */
void conn_stop_all(struct worker *w, bool force);

/* --- the worker's entry points (upstream.c) -------------------------------------------- */

/* Completion dispatch for upstream-side ops. */
void ups_on_cqe(struct worker *w, enum wop op, uint32_t idx, uint32_t gen, int res, uint32_t flags);
/* Upstream pool maintenance on each tick: close idle connections past upstream_idle_ms. */
void ups_pool_expire(struct worker *w);
void ups_pool_close_all(struct worker *w);

/* --- client.c, for exchange.c and upstream.c (events back to the connection) ---------- */

/*
 * Asserts the invariants of c's phase (enum conn_phase) at an event boundary. The checks are
 * BUG_ON_HOT: compiled in with -DDEBUG_STRICT=2, free otherwise.
 */
void conn_check(struct worker *w, struct conn *c);
/* Writes one line describing c (phase, states, flags, in-flight ops, buffers) to buf. */
int conn_show(struct worker *w, const struct conn *c, char *buf, size_t n);
/* A broken invariant on c: logs conn_show() and aborts (bug_fail). */
void conn_bug(struct worker *w, const struct conn *c, const char *what, const char *file, int line)
	__attribute__((noreturn, cold));

/* Re-arms the connection's timer for its state; once per event, where events enter it. */
void conn_timer_update(struct worker *w, struct conn *c);
/* Frees the slot (and an attached upstream) once no op of either is in flight. */
void conn_try_finish(struct worker *w, struct conn *c);
/* Abortive close: cancel everything in flight, release once all completions are in. */
void conn_abort(struct worker *w, struct conn *c);
/* The same with an RST: the response was cut short. */
void conn_abort_reset(struct worker *w, struct conn *c);
/* The client went away during an exchange: a 499 log line, then conn_abort(). */
void conn_client_gone(struct worker *w, struct conn *c);
/* After the last response byte: shut the write side, linger while the client still sends. */
void conn_close_graceful(struct worker *w, struct conn *c);
/* Answers status with a canned error (or aborts when a response has started). */
void conn_send_error(struct worker *w, struct conn *c, int status);
/* Answers a request corral rejects; head[0..n) is what the log line shows of it. */
void conn_req_reject(struct worker *w, struct conn *c, const char *head, uint32_t n, int status,
		     const char *reason);
/* One access-log line for the exchange that ended with status. */
void conn_log(struct worker *w, struct conn *c, int status);
/* The exchange ended and its resources are back: the next request, discard, or close. */
void conn_exchange_done(struct worker *w, struct conn *c);
/* New client bytes are in c->in: the request head, body, discard or tunnel takes them. */
void conn_on_input(struct worker *w, struct conn *c);
/* The client's end of input: res 0 (EOF, or a TLS close_notify) or -errno. */
void conn_on_eof(struct worker *w, struct conn *c, int res);

/* --- exchange.c, for client.c and upstream.c ------------------------------------------- */

/* A request head was parsed (c->x->req.head holds it): pick a backend and connect or reuse. */
void exchange_connect(struct worker *w, struct conn *c);
/* Sends what the request direction has ready (head, then body, or tunnel bytes). */
void exchange_req_pump(struct worker *w, struct conn *c);
/* Forwards what the response direction has ready to the client. */
void resp_process(struct worker *w, struct conn *c);
/* The response was fully sent: pool or close the upstream, then conn_exchange_done(). */
void exchange_end(struct worker *w, struct conn *c);
/* Cancels an attached upstream's ops; it stays attached until the connection finishes. */
void exchange_abort_ups(struct worker *w, struct conn *c);
/* The upstream of c's exchange failed: retry, answer or abort (the one decision point). */
void exchange_fail(struct worker *w, struct conn *c, enum ups_fail why);
/* T_CONNECT or T_UPSTREAM expired for c. */
void exchange_on_timeout(struct worker *w, struct conn *c, enum tclass cls);
/* Completions of the upstream c uses (from ups_on_cqe). */
void exchange_on_connect(struct worker *w, struct conn *c, struct ups *u, int res);
void exchange_on_send(struct worker *w, struct conn *c, struct ups *u, int res);
void exchange_on_recv(struct worker *w, struct conn *c, struct ups *u, int res, uint32_t flags);

/* --- upstream.c, for exchange.c and client.c -------------------------------------------- */

/* Frees u's slot and fd; nothing of it may be in flight. */
void ups_release(struct worker *w, struct ups *u);
/* Starts closing an upstream that no connection owns any more. */
void ups_close(struct worker *w, struct ups *u);
/*
 * A pooled connection to backend id (opened to the address be names), unlinked from the
 * pool, or NULL. Pooled ones opened to an earlier address of the id are closed on the way.
 */
struct ups *ups_pool_take(struct worker *w, uint16_t id, const struct cfg_backend *be);
/* Pools u when it may be reused (else closes it); u is owned by no connection afterwards. */
void ups_pool_put(struct worker *w, struct ups *u);
/* Closes up to n idle pooled connections (the oldest first); returns how many. */
uint32_t ups_pool_shed(struct worker *w, uint32_t n);
/*
 * Opens a new connection to backend id at be and submits its connect. The new upstream, or
 * NULL with *err: -ENOBUFS when every upstream slot is in use, -EMFILE when the worker's fd
 * budget is full and nothing idle can be closed for it (conn_fd_room), else socket()'s -errno.
 */
struct ups *ups_connect(struct worker *w, const struct cfg_backend *be, uint16_t id, int *err);

/* --- upstream_tls.c: the TLS transport of an upstream connection, for upstream.c --------- */

/*
 * Between a TLS backend's socket completions and the exchange: after the connect the
 * handshake runs (still RS_CONNECT, so upstream_connect_ms bounds connect and handshake
 * together), then what c->x->req.out queues is encrypted and sent, and received ciphertext is
 * decrypted into u->in. A failed handshake or verification is the attempt's UF_CONNECT.
 */

/* A new upstream to a TLS backend: its client session on cl. 0 or -errno. */
int utls_start(struct worker *w, struct ups *u, const struct tls_client *cl);
/* Frees the session and what it holds (ups_release: nothing in flight). */
void utls_free(struct worker *w, struct ups *u);
/* The connect completed (res >= 0): the handshake starts. */
void utls_on_connect(struct worker *w, struct conn *c, struct ups *u);
/* A receive completed on an attached TLS upstream. */
void utls_on_recv(struct worker *w, struct conn *c, struct ups *u, int res, uint32_t flags);
/* The OP_U_TLS completion: read what the session holds (ups_arm_recv submitted it). */
void utls_on_pump(struct worker *w, struct conn *c, struct ups *u);
/* ups_arm_recv: true when the session holds input to read first (it submitted OP_U_TLS). */
bool utls_arm_pump(struct worker *w, struct ups *u);
/* ups_send for a TLS upstream: encrypts c->x->req.out and sends the ciphertext. */
void utls_send(struct worker *w, struct conn *c, struct ups *u);
/*
 * A send completion on an attached TLS upstream. true: *res is now the plaintext progress of
 * c->x->req.out (or an error) and the caller goes on with it; false: handled here.
 */
bool utls_on_send(struct worker *w, struct conn *c, struct ups *u, int *res);
/*
 * A receive completed on an idle pooled TLS upstream (bid, n bytes). true: only TLS records
 * came (a session ticket), the connection stays pooled and its receive is armed again;
 * false: it must be closed (data, close_notify, an error).
 */
bool utls_idle_recv(struct worker *w, struct ups *u, int32_t bid, int n);
/* May u go back to its pool (nothing unread in the session, no send in flight)? */
bool utls_poolable(struct worker *w, struct ups *u);
/* A clean close (ups_close): close_notify goes out first when the session can say it. */
void utls_close_notify(struct worker *w, struct ups *u);
/* --- ctls.c: the TLS transport of a client connection, for client.c and exchange.c ------- */

/*
 * Between the client socket's completions and HTTP on a TLS listener's connection: received
 * ciphertext is decrypted into c->in, what c->x->resp.out queues is encrypted and its
 * ciphertext sent, and the send's completion reports progress in plaintext bytes.
 */

/* A new connection on a TLS listener: its session on the listener's contexts. 0 or -errno. */
int ctls_start(struct worker *w, struct conn *c, SSL_CTX *ctx);
/* Frees the session and what it holds (teardown, nothing in flight). */
void ctls_free(struct worker *w, struct conn *c);
/* A receive completed with n ciphertext bytes in buffer bid. */
void ctls_on_recv(struct worker *w, struct conn *c, int32_t bid, int n);
/*
 * A proxy_protocol TLS listener's connection: the PROXY header (in clear) is read; what
 * followed it in c->in is the start of the TLS stream.
 */
void ctls_after_proxy_header(struct worker *w, struct conn *c);
/* The OP_C_TLS completion: read what the transport holds (conn_arm_recv submitted it). */
void ctls_on_pump(struct worker *w, struct conn *c);
/* conn_arm_recv: true when the transport holds input to read first (it submitted OP_C_TLS). */
bool ctls_arm_pump(struct worker *w, struct conn *c);
/* conn_send for a TLS connection: encrypts c->x->resp.out and sends the ciphertext. */
void ctls_send(struct worker *w, struct conn *c);
/*
 * A send completion on a TLS connection. true: *res is now the plaintext progress of
 * c->x->resp.out (or an error) and the caller goes on with it; false: handled here.
 */
bool ctls_on_send(struct worker *w, struct conn *c, int *res);
/* Graceful close: true while close_notify is on its way (the close goes on once sent). */
bool ctls_close_notify(struct worker *w, struct conn *c);
/* The response is cut short: no close_notify, drop what is unsent (the caller resets). */
void ctls_abort(struct worker *w, struct conn *c);
/* The T_HEADER deadline passed: counted as a TLS timeout while the handshake was running. */
void ctls_on_header_timeout(struct worker *w, struct conn *c);
/*
 * Whether c's TLS session is in the middle of something that is not idle: a handshake under
 * way, or received bytes not yet handed to HTTP. false for a plaintext connection.
 */
bool ctls_busy(struct worker *w, const struct conn *c);
/* The session of c, or NULL for a plaintext connection. */
static inline struct ctls *conn_tls(struct worker *w, const struct conn *c)
{
	return c->tls ? &w->tls[c->tls - 1] : NULL;
}

/* --- shared inline helpers -------------------------------------------------------------- */

/* BUG_ON / BUG_ON_HOT that show the connection in the log before aborting. */
#define CONN_BUG_ON(w, c, cond)                                                                    \
	do {                                                                                       \
		if (__builtin_expect(!!(cond), 0))                                                 \
			conn_bug(w, c, #cond, __FILE__, __LINE__);                                 \
	} while (0)
#if defined(DEBUG_STRICT) && DEBUG_STRICT >= 2
#define CONN_BUG_ON_HOT(w, c, cond) CONN_BUG_ON(w, c, cond)
#else
#define CONN_BUG_ON_HOT(w, c, cond) ((void)sizeof(!(cond)))
#endif

static inline bool conn_has(const struct conn *c, uint32_t flag)
{
	return (c->flags & flag) != 0;
}

static inline void conn_put(struct conn *c, uint32_t flag, bool on)
{
	c->flags = on ? c->flags | flag : c->flags & ~flag;
}

/* The connection's phase (enum conn_phase in conn-t.h): the one reading of its states. */
static inline enum conn_phase conn_phase(const struct conn *c)
{
	if (conn_has(c, CF_CLOSING))
		return conn_has(c, CF_LINGERING) ? CP_LINGER : CP_CLOSING;
	if (c->rs_state == RS_TUNNEL)
		return CP_TUNNEL;
	if (c->rs_state != RS_NONE)
		return CP_EXCHANGE;
	return c->req_state == RQ_BODY ? CP_DISCARD : CP_HEAD;
}

/*
 * In CP_HEAD: some bytes of the next head were read (a 408 on timeout, not a silent close);
 * exactly then the connection holds an exchange slot (conn_check).
 */
static inline bool conn_head_partial(const struct conn *c)
{
	return (c->x && c->x->req.accum.hbuf != NIL) || c->in.len > 0;
}

static inline uint32_t cidx(const struct worker *w, const struct conn *c)
{
	return (uint32_t)(c - w->conns);
}

static inline uint32_t uidx(const struct worker *w, const struct ups *u)
{
	return (uint32_t)(u - w->ups);
}

static inline struct ups *conn_ups(struct worker *w, struct conn *c)
{
	return c->ups == NIL ? NULL : &w->ups[c->ups];
}

static inline void limits_of(struct worker *w, struct http_limits *lim)
{
	const struct cfg_limits *l = &w->snap->cfg.limits;

	lim->header_bytes_max = l->header_bytes_max;
	lim->headers_max = l->headers_max < w->hdr_cap ? l->headers_max : w->hdr_cap;
	lim->uri_bytes_max = l->uri_bytes_max;
	lim->body_bytes_max = l->body_bytes_max;
}

/* Counts n responses of status in its class (n = -1 takes one back). */
static inline void count_status_n(struct worker *w, int status, int n)
{
	int cls = status / 100 - 1;

	if (cls < 0 || cls >= STATS_CLASSES)
		cls = STATS_5XX;
	STAT_ADD(w->stats->responses[cls], n);
}

static inline void count_status(struct worker *w, int status)
{
	count_status_n(w, status, 1);
}

static inline int32_t cqe_bid(int res, uint32_t flags)
{
	if (!(flags & IORING_CQE_F_BUFFER))
		return -1;
	(void)res;
	return (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);
}

static inline void sendq_reset(struct sendq *q)
{
	q->iov_n = 0;
}

static inline void sendq_add(struct sendq *q, const void *p, size_t n)
{
	if (n == 0)
		return;
	BUG_ON(q->iov_n >= sizeof(q->iov) / sizeof(q->iov[0]));
	q->iov[q->iov_n].iov_base = (void *)p;
	q->iov[q->iov_n].iov_len = n;
	q->iov_n++;
}

/*
 * Queues p[0..n) as one chunk of a chunked body (hdr: the direction's chunk-size line buffer,
 * 24 bytes), followed by the last chunk when last. n == 0 queues only the last chunk (if last).
 * Up to three iovecs; the one framing helper of both directions.
 */
static inline void sendq_add_chunk(struct sendq *q, char *hdr, const char *p, size_t n, bool last)
{
	if (n) {
		sendq_add(q, hdr, (size_t)http_chunk_header(hdr, n));
		sendq_add(q, p, n);
		if (last)
			sendq_add(q, "\r\n0\r\n\r\n", 7);
		else
			sendq_add(q, "\r\n", 2);
	} else if (last) {
		sendq_add(q, "0\r\n\r\n", 5);
	}
}

/*
 * Small pieces queued behind a head are copied into the head's buffer after it, so that the
 * queue goes out as one iovec (sendq_submit: a plain send). Copying up to this many bytes
 * costs less than the msghdr path of a sendmsg (its copy and check of the header and iovec
 * array from user memory, measured 2-3 % of a small request's CPU); a larger body is sent
 * where it is, from its receive buffer.
 */
#define SENDQ_COALESCE_MAX 2048

/*
 * When q starts with the whole of the head in buffer head (cap bytes) and what follows is
 * small, copies what follows into head after it: q becomes one iovec.
 */
static inline void sendq_coalesce(struct sendq *q, char *head, size_t cap)
{
	size_t len, rest = 0;

	if (q->iov_n < 2 || q->iov[0].iov_base != head)
		return;
	for (uint8_t i = 1; i < q->iov_n; i++)
		rest += q->iov[i].iov_len;
	len = q->iov[0].iov_len;
	if (rest > SENDQ_COALESCE_MAX || rest > cap - len)
		return;
	for (uint8_t i = 1; i < q->iov_n; i++) {
		memcpy(head + len, q->iov[i].iov_base, q->iov[i].iov_len);
		len += q->iov[i].iov_len;
	}
	q->iov[0].iov_len = len;
	q->iov_n = 1;
}

/* One iovec goes out as a send (no msghdr to copy in), more as a sendmsg. */
static inline void sendq_submit(struct worker *w, struct sendq *q, int fd, enum wop op,
				uint32_t idx, uint32_t gen)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	if (q->iov_n == 1) {
		io_uring_prep_send(sqe, fd, q->iov[0].iov_base, q->iov[0].iov_len, MSG_NOSIGNAL);
	} else {
		memset(&q->msg, 0, sizeof(q->msg));
		q->msg.msg_iov = q->iov;
		q->msg.msg_iovlen = q->iov_n;
		io_uring_prep_sendmsg(sqe, fd, &q->msg, MSG_NOSIGNAL);
	}
	sqe->user_data = ud_pack(op, idx, gen);
	q->busy = true;
}

/* Advances q past n sent bytes; true when everything was sent. */
static inline bool sendq_advance(struct sendq *q, size_t n)
{
	uint8_t i = 0;

	while (i < q->iov_n && n >= q->iov[i].iov_len) {
		n -= q->iov[i].iov_len;
		i++;
	}
	if (i == q->iov_n) {
		q->iov_n = 0;
		return true;
	}
	q->iov[i].iov_base = (char *)q->iov[i].iov_base + n;
	q->iov[i].iov_len -= n;
	memmove(q->iov, q->iov + i, (size_t)(q->iov_n - i) * sizeof(q->iov[0]));
	q->iov_n -= i;
	return false;
}

static inline void cancel_fd(struct worker *w, int fd, enum wop op, uint32_t idx, uint32_t gen)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	sqe->user_data = ud_pack(op, idx, gen);
}

/* One receive at a time on the client (backpressure), into a provided buffer. */
static inline void conn_arm_recv(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *sqe;

	if (conn_has(c, CF_RECV_ARMED) || conn_has(c, CF_RECV_WANTED))
		return;
	if (c->tls && ctls_arm_pump(w, c))
		return;
	sqe = worker_sqe(w);
	io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = w->bgid;
	sqe->user_data = ud_pack(OP_C_RECV, cidx(w, c), c->gen);
	c->flags |= CF_RECV_ARMED;
	c->inflight++;
}

/* Submits c->x->resp.out. */
static inline void conn_send(struct worker *w, struct conn *c)
{
	if (c->tls) {
		ctls_send(w, c);
		return;
	}
	if (c->x->resp.head != NIL)
		sendq_coalesce(&c->x->resp.out, hbuf_addr(w, c->x->resp.head), w->hbuf_size);
	sendq_submit(w, &c->x->resp.out, c->fd, OP_C_SEND, cidx(w, c), c->gen);
	c->inflight++;
}

/*
 * empty: the socket is known to hold nothing yet (a connection just pooled, or just
 * connected): the receive waits for readiness first (IORING_RECVSEND_POLL_FIRST) instead of
 * trying a read that can only fail with -EAGAIN before it arms its poll.
 */
static inline void ups_arm_recv_hint(struct worker *w, struct ups *u, bool empty)
{
	struct io_uring_sqe *sqe;

	if (u->recv_armed)
		return;
	if (u->tls && utls_arm_pump(w, u))
		return;
	sqe = worker_sqe(w);
	io_uring_prep_recv(sqe, u->fd, NULL, 0, 0);
	if (empty)
		sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = w->bgid;
	sqe->user_data = ud_pack(OP_U_RECV, uidx(w, u), u->gen);
	u->recv_armed = true;
	u->inflight++;
}

static inline void ups_arm_recv(struct worker *w, struct ups *u)
{
	ups_arm_recv_hint(w, u, false);
}

/* Submits c->x->req.out on u. */
static inline void ups_send(struct worker *w, struct conn *c, struct ups *u)
{
	if (u->tls) {
		utls_send(w, c, u);
		return;
	}
	if (c->x->req.head != NIL)
		sendq_coalesce(&c->x->req.out, hbuf_addr(w, c->x->req.head), w->hbuf_size);
	sendq_submit(w, &c->x->req.out, u->fd, OP_U_SEND, uidx(w, u), u->gen);
	u->inflight++;
}

/* --- head assembly (inbuf.c): a head split across reads is assembled in a head buffer ---- */

/*
 * Where the next head is parsed from. While a head is being assembled (acc holds its start)
 * the new bytes of in are appended to acc, and acc is the source; otherwise in itself. NULL
 * when the bytes do not fit (the head is over any limit).
 */
struct inbuf *inbuf_head_src(struct worker *w, struct inbuf *acc, struct inbuf *in);
/* An incomplete head in src: its bytes wait in acc for the next read. false: no buffer. */
bool inbuf_head_keep(struct worker *w, struct inbuf *acc, struct inbuf *in, struct inbuf *src);
/* A head of n bytes was parsed from src: the bytes after it become in. */
void inbuf_head_consume(struct worker *w, struct inbuf *acc, struct inbuf *in, struct inbuf *src,
			uint32_t n);

#endif
