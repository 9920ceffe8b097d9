/* The per-connection task: read a request, run its upstream exchange, stream the response, tear down. */
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <xxhash.h>
#include "conn.h"
#include "http.h"
#include "steer.h"
#include "stats.h"

static const char S_CRLF[] = "\r\n";
static const char S_LAST[] = "0\r\n\r\n";
static const char S_CRLF_LAST[] = "\r\n0\r\n\r\n";

static void conn_abort(struct worker *w, struct conn *c);
static void conn_try_finish(struct worker *w, struct conn *c);
static bool exchange_in_flight(const struct conn *c);
static void conn_log(struct worker *w, struct conn *c, int status);
static void send_error(struct worker *w, struct conn *c, int status);
static void req_process(struct worker *w, struct conn *c);
static void req_pump(struct worker *w, struct conn *c);
static void resp_process(struct worker *w, struct conn *c);
static void exchange_connect(struct worker *w, struct conn *c);
static void exchange_end(struct worker *w, struct conn *c);
static void ups_close(struct worker *w, struct ups *u);
static void pool_unlink(struct worker *w, struct ups *u);
static void req_next(struct worker *w, struct conn *c);
static void req_discard(struct worker *w, struct conn *c);

static inline uint32_t cidx(struct worker *w, struct conn *c)
{
	return (uint32_t)(c - w->conns);
}

static inline uint32_t uidx(struct worker *w, struct ups *u)
{
	return (uint32_t)(u - w->ups);
}

static inline struct ups *conn_ups(struct worker *w, struct conn *c)
{
	return c->ups == NIL ? NULL : &w->ups[c->ups];
}

static void limits_of(struct worker *w, struct http_limits *lim)
{
	const struct cfg_limits *l = &w->snap->cfg.limits;

	lim->header_bytes_max = l->header_bytes_max;
	lim->headers_max = l->headers_max < w->hdr_cap ? l->headers_max : w->hdr_cap;
	lim->uri_bytes_max = l->uri_bytes_max;
	lim->body_bytes_max = l->body_bytes_max;
}

static void count_status(struct worker *w, int status)
{
	int cls = status / 100 - 1;

	if (cls < 0 || cls >= STATS_CLASSES)
		cls = STATS_5XX;
	STAT_ADD(w->stats->responses[cls], 1);
}

/* --- timers ---------------------------------------------------------------------------- */

/*
 * Puts the connection on the timer list its state calls for. Called once per event, where
 * events enter a connection (accept, its completions, its timer, a buffer-wait retry), never
 * from inside the state machine: every completion is progress and re-arms a progress timer.
 */
static void conn_timer_update(struct worker *w, struct conn *c)
{
	const struct cfg_timeouts *t = &w->snap->cfg.timeouts;
	enum tclass cls;
	uint32_t ms;

	if (!c->active || (c->closing && !c->lingering))
		return;
	if (c->lingering) {
		cls = T_LINGER;
		ms = t->linger_ms;
	} else if (c->rs_state == RS_TUNNEL) {
		cls = T_TUNNEL;
		ms = t->tunnel_idle_ms;
	} else if (c->rs_state == RS_CONNECT) {
		cls = T_CONNECT;
		ms = t->upstream_connect_ms;
	} else if (c->rs_state == RS_NONE && c->req_state == RQ_BODY) {
		cls = T_BODY;
		ms = t->client_body_ms;
	} else if (c->rs_state == RS_NONE) {
		bool partial = c->accum.hbuf != NIL || c->in.len > 0;

		if (partial || c->requests == 0) {
			cls = T_HEADER;
			ms = t->client_header_ms;
		} else {
			cls = T_IDLE;
			ms = t->client_idle_ms;
		}
	} else if (c->to_client.busy || c->req_state == RQ_BODY) {
		cls = T_BODY;
		ms = t->client_body_ms;
	} else {
		cls = T_UPSTREAM;
		ms = t->upstream_response_ms;
	}
	/* The header deadline is absolute: a slow drip of bytes must not extend it. */
	if ((cls == T_HEADER || cls == T_LINGER || cls == T_CONNECT) && c->t.tclass == cls)
		return;
	timer_set(w, cidx(w, c), &c->t, cls, ms);
}

/* --- submission helpers ------------------------------------------------------------------ */

static void c_arm_recv(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *sqe;

	if (c->recv_armed || c->recv_wanted)
		return;
	sqe = worker_sqe(w);
	io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = w->bgid;
	sqe->user_data = ud_pack(OP_C_RECV, cidx(w, c), c->gen);
	c->recv_armed = true;
	c->inflight++;
}

/*
 * Watches the client for EOF or a reset while an exchange is in flight. The design keeps one
 * receive armed at a time (backpressure), so while a request waits for its response, or its
 * body waits for the upstream to take the last piece, nothing would notice a client that
 * went away until the response is written to it. A one-shot IORING_OP_POLL_ADD for POLLRDHUP
 * (plus POLLERR and POLLHUP, always reported) costs no buffer and no syscall: it is armed at
 * the first request of a connection and completes only when the client closes, so a
 * keep-alive connection pays one SQE for its lifetime, and a close one cancel more (the cancel
 * of every op on the fd that teardown submits anyway when something is in flight). A
 * zero-length recv would complete on every byte the client pipelines, which is normal traffic.
 * After a FIN the poll is armed again to see a reset, but io_uring always adds POLLRDHUP to a
 * poll's mask and the FIN leaves it set: the poll would complete at once, for ever (and each
 * round sent another 100 Continue). So it then waits POLL_RECHECK_MS first, behind a linked
 * timeout (hard link: the timeout's -ETIME must not cancel it; its CQE is OP_NONE, ignored).
 */
static void c_arm_poll(struct worker *w, struct conn *c)
{
	static struct __kernel_timespec recheck = { .tv_nsec = POLL_RECHECK_MS * 1000000L };
	struct io_uring_sqe *sqe;

	if (c->poll_armed || c->closing)
		return;
	if (c->eof) {
		if (io_uring_sq_space_left(&w->ring) < 2)
			io_uring_submit(&w->ring); /* the timeout and its poll in one submission */
		sqe = worker_sqe(w);
		io_uring_prep_timeout(sqe, &recheck, 0, 0);
		sqe->flags |= IOSQE_IO_HARDLINK;
		sqe->user_data = ud_pack(OP_NONE, 0, 0);
	}
	sqe = worker_sqe(w);
	io_uring_prep_poll_add(sqe, c->fd,
			       c->eof ? POLLERR | POLLHUP : POLLRDHUP | POLLERR | POLLHUP);
	sqe->user_data = ud_pack(OP_C_POLL, cidx(w, c), c->gen);
	c->poll_armed = true;
	c->inflight++;
}

static void u_arm_recv(struct worker *w, struct ups *u)
{
	struct io_uring_sqe *sqe;

	if (u->recv_armed)
		return;
	sqe = worker_sqe(w);
	io_uring_prep_recv(sqe, u->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = w->bgid;
	sqe->user_data = ud_pack(OP_U_RECV, uidx(w, u), u->gen);
	u->recv_armed = true;
	u->inflight++;
}

static void sendq_reset(struct sendq *q)
{
	q->iov_n = 0;
}

static void sendq_add(struct sendq *q, const void *p, size_t n)
{
	if (n == 0)
		return;
	BUG_ON(q->iov_n >= 4);
	q->iov[q->iov_n].iov_base = (void *)p;
	q->iov[q->iov_n].iov_len = n;
	q->iov_n++;
}

static void sendq_submit(struct worker *w, struct sendq *q, int fd, enum wop op, uint32_t idx,
			 uint32_t gen)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	memset(&q->msg, 0, sizeof(q->msg));
	q->msg.msg_iov = q->iov;
	q->msg.msg_iovlen = q->iov_n;
	io_uring_prep_sendmsg(sqe, fd, &q->msg, MSG_NOSIGNAL);
	sqe->user_data = ud_pack(op, idx, gen);
	q->busy = true;
}

/* Advances q past n sent bytes; true when everything was sent. */
static bool sendq_advance(struct sendq *q, size_t n)
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

static void c_send(struct worker *w, struct conn *c)
{
	sendq_submit(w, &c->to_client, c->fd, OP_C_SEND, cidx(w, c), c->gen);
	c->inflight++;
}

static void u_send(struct worker *w, struct conn *c, struct ups *u)
{
	sendq_submit(w, &c->to_ups, u->fd, OP_U_SEND, uidx(w, u), u->gen);
	u->inflight++;
}

static void cancel_fd(struct worker *w, int fd, enum wop op, uint32_t idx, uint32_t gen)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	sqe->user_data = ud_pack(op, idx, gen);
}

/* --- accept -------------------------------------------------------------------------------- */

static bool conn_reclaim(struct worker *w);

static void reject_full(struct worker *w, int fd)
{
	char out[256];
	int n = http_error_response(out, sizeof(out), 503, true);

	/* Rare overload path: one non-blocking send of a canned 503, then close. */
	if (n > 0 && send(fd, out, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) > 0)
		count_status(w, 503);
	STAT_ADD(w->stats->conns_rejected, 1);
	close(fd);
}

void conn_refuse(struct worker *w, int fd)
{
	reject_full(w, fd);
}

static void conn_accept_now(struct worker *w, int fd);

void conn_accept(struct worker *w, int fd)
{
	if (!w->stopping && w->conns_active + w->accept_defer_n >= w->conn_limit) {
		/*
		 * connections_per_core is the operator's cap: beyond it, 503. A lower limit that
		 * the fds set makes room by closing an idle connection, but only once every
		 * completion of this batch is handled: an "idle" connection may have a request
		 * in a receive completion still queued behind this accept.
		 */
		if (w->fd_limited && w->accept_defer_n < ACCEPT_DEFER_MAX) {
			w->accept_defer[w->accept_defer_n++] = fd;
			return;
		}
		reject_full(w, fd);
		return;
	}
	conn_accept_now(w, fd);
}

void conn_accept_deferred(struct worker *w)
{
	if (w->shed_want) {
		conn_shed_idle(w, w->shed_want);
		w->shed_want = 0;
	}
	for (uint32_t i = 0; i < w->accept_defer_n; i++) {
		int fd = w->accept_defer[i];

		/* The slot of the connection closed for it frees once its ops complete. */
		if (w->conns_active >= w->conn_limit && (w->stopping || !conn_reclaim(w)))
			reject_full(w, fd);
		else
			conn_accept_now(w, fd);
	}
	w->accept_defer_n = 0;
}

static void conn_accept_now(struct worker *w, int fd)
{
	struct conn *c;
	uint32_t idx, gen;
	socklen_t sl;

	/* In an upgrade's drain a connection accepted late is still served (with close). */
	if (w->conn_free == NIL || (w->stopping && !w->d->handover)) {
		reject_full(w, fd);
		return;
	}
	idx = w->conn_free;
	w->conn_free = w->conn_next_free[idx];
	c = &w->conns[idx];
	gen = c->gen;
	memset(c, 0, sizeof(*c));
	c->gen = gen;
	c->fd = fd;
	c->active = true;
	c->ups = NIL;
	c->hbuf_req = c->hbuf_resp = NIL;
	c->in.bid = c->accum.bid = -1;
	c->in.hbuf = c->accum.hbuf = NIL;
	c->t.prev = c->t.next = NIL;
	sl = sizeof(c->peer);
	if (getpeername(fd, (struct sockaddr *)&c->peer, &sl) == 0) {
		if (c->peer.v4.sin_family == AF_INET)
			inet_ntop(AF_INET, &c->peer.v4.sin_addr, c->peer_ip, sizeof(c->peer_ip));
		else
			inet_ntop(AF_INET6, &c->peer.v6.sin6_addr, c->peer_ip, sizeof(c->peer_ip));
	} else {
		strcpy(c->peer_ip, "unknown");
	}
	w->conns_active++;
	STAT_ADD(w->stats->conns_accepted, 1);
	STAT_SET(w->stats->conns_active, w->conns_active);
	steer_conn_opened(w->sc);
	c_arm_recv(w, c);
	conn_timer_update(w, c);
}

/*
 * Closes the longest-idle client connection that carries no request in flight: the head of
 * the keep-alive idle timer list (FIFO: the longest idle first), else the oldest connection
 * that has not sent a byte (on the head-deadline list; a few are looked at, not all).
 */
static bool reclaimable(const struct conn *c)
{
	int unread = 0;

	/* Bytes in the socket not read yet are a request on its way: not idle after all. */
	return !c->closing && c->accum.hbuf == NIL && c->in.len == 0 &&
	       ioctl(c->fd, FIONREAD, &unread) == 0 && unread == 0;
}

static bool conn_reclaim(struct worker *w)
{
	uint32_t i, n = 0;

	for (i = w->thead[T_IDLE]; i != NIL && n < 64; i = w->conns[i].t.next, n++)
		if (reclaimable(&w->conns[i]))
			break;
	if (i == NIL || n == 64) {
		n = 0;
		for (i = w->thead[T_HEADER]; i != NIL && n < 64; i = w->conns[i].t.next, n++)
			if (w->conns[i].requests == 0 && reclaimable(&w->conns[i]))
				break;
		if (n == 64)
			i = NIL;
	}
	if (i == NIL)
		return false;
	STAT_ADD(w->stats->conns_reclaimed, 1);
	w->conns[i].lingering = false;
	conn_abort(w, &w->conns[i]);
	return true;
}

uint32_t conn_shed_idle(struct worker *w, uint32_t n)
{
	uint32_t done = 0;

	/* Idle upstream connections first: closing them costs no client anything. */
	for (uint32_t b = 0; b < CFG_BACKENDS_MAX && done < n; b++) {
		while (w->pool_tail[b] != NIL && done < n) {
			struct ups *u = &w->ups[w->pool_tail[b]];

			pool_unlink(w, u);
			ups_close(w, u);
			done++;
		}
	}
	while (done < n && conn_reclaim(w))
		done++;
	return done;
}

/* --- teardown ------------------------------------------------------------------------------- */

static void ups_release(struct worker *w, struct ups *u)
{
	BUG_ON(u->inflight != 0);
	if (u->fd >= 0)
		close(u->fd);
	u->fd = -1;
	inbuf_release(w, &u->in);
	u->gen++;
	u->owner = NIL;
	u->closing = false;
	u->pool_next = w->ups_free;
	w->ups_free = uidx(w, u);
	w->ups_open--;
}

/* Starts closing an upstream that no connection owns any more. */
static void ups_close(struct worker *w, struct ups *u)
{
	u->owner = NIL;
	if (u->inflight == 0) {
		ups_release(w, u);
		return;
	}
	if (!u->closing) {
		u->closing = true;
		cancel_fd(w, u->fd, OP_U_CANCEL, uidx(w, u), u->gen);
		u->inflight++;
	}
}

/* Cancels an attached upstream's ops; it stays attached until the connection finishes. */
static void ups_abort_attached(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	if (!u || u->closing)
		return;
	u->closing = true;
	if (u->inflight) {
		cancel_fd(w, u->fd, OP_U_CANCEL, uidx(w, u), u->gen);
		u->inflight++;
	}
	/* Still attached and not closing: still counted (every other decrement detaches). */
	if (c->rs_state != RS_NONE) {
		balance_inflight_dec(&w->bal, c->backend);
		STAT_SET(w->bstats[c->backend].active, w->bal.inflight[c->backend]);
	}
}

static void conn_try_finish(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);
	uint32_t idx = cidx(w, c);

	if (c->inflight || (u && u->inflight))
		return;
	if (u) {
		ups_release(w, u);
		c->ups = NIL;
	}
	timer_clear(w, &c->t);
	inbuf_release(w, &c->in);
	inbuf_release(w, &c->accum);
	if (c->hbuf_req != NIL)
		hbuf_put(w, c->hbuf_req);
	if (c->hbuf_resp != NIL)
		hbuf_put(w, c->hbuf_resp);
	if (c->reset_close) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(c->fd);
	if (c->req_state != RQ_HEAD || c->rs_state != RS_NONE)
		steer_req_ended(w->sc);
	steer_conn_closed(w->sc);
	c->active = false;
	c->gen++;
	w->conns_active--;
	STAT_SET(w->stats->conns_active, w->conns_active);
	w->conn_next_free[idx] = w->conn_free;
	w->conn_free = idx;
}

/* Abortive close: cancel everything in flight, release once all completions are in. */
static void conn_abort(struct worker *w, struct conn *c)
{
	/* A response cut short (upstream failure, timeout): its one log line, status as sent. */
	if (!c->closing && c->resp_started && exchange_in_flight(c))
		conn_log(w, c, c->resp_code);
	c->closing = true;
	c->lingering = false;
	timer_clear(w, &c->t);
	ups_abort_attached(w, c);
	if (c->inflight && !c->cancel_sent) {
		c->cancel_sent = true;
		if (c->inflight == 1 && c->poll_armed && !c->reset_close) {
			/*
			 * Only the EOF poll is left (the usual end of a connection): shutting both
			 * directions completes it with POLLHUP. A cancel by fd would cost an SQE,
			 * a CQE and a scan of the ring's whole poll table.
			 */
			shutdown(c->fd, SHUT_RDWR);
		} else {
			cancel_fd(w, c->fd, OP_C_CANCEL, cidx(w, c), c->gen);
			c->inflight++;
		}
	}
	conn_try_finish(w, c);
}

/*
 * Abort a response that is cut short, with an RST: for a close-delimited body (HTTP/1.0
 * client) a FIN would make the truncated body look complete.
 */
static void conn_abort_reset(struct worker *w, struct conn *c)
{
	c->reset_close = true;
	conn_abort(w, c);
}

static void conn_log(struct worker *w, struct conn *c, int status);

/* The exchange's request head was parsed and its log line is not written yet. */
static bool exchange_in_flight(const struct conn *c)
{
	return c->hbuf_req != NIL && !c->x_logged && c->rs_state != RS_TUNNEL;
}

/*
 * The client closed or reset the connection while its exchange was in flight: close the
 * upstream (never pooled: the response is unread) and log status 499 (NGINX's "client closed
 * request") with the bytes actually sent. It counts as a 4xx response unless the response's
 * own status was counted already.
 */
static void client_gone(struct worker *w, struct conn *c)
{
	if (exchange_in_flight(c)) {
		if (!c->resp_started)
			count_status(w, 499);
		STAT_ADD(w->stats->client_aborts, 1);
		conn_log(w, c, 499);
	}
	conn_abort(w, c);
}

/* The client's EOF/RST poll completed with res (revents, or -errno). */
static void c_on_poll(struct worker *w, struct conn *c, int res)
{
	c->poll_armed = false;
	if (c->closing) {
		conn_try_finish(w, c);
		return;
	}
	/* Between requests, or in a tunnel, the reads see the EOF or the reset themselves. */
	if (res < 0 || !exchange_in_flight(c))
		return;
	c->eof = true; /* the client sends nothing more */
	if (res & (POLLERR | POLLHUP)) {
		client_gone(w, c); /* a reset: no byte will reach the client any more */
		return;
	}
	if (c->req_state == RQ_BODY && !c->in.len && !c->to_ups.busy && !c->recv_armed) {
		client_gone(w, c); /* the body can never be completed */
		return;
	}
	/*
	 * A FIN alone is a client that gave up, or one that half-closed and still reads
	 * (shutdown(SHUT_WR) after its request). Ask: an interim 100 is harmless to an HTTP/1.1
	 * client that still reads (RFC 9110 15.2: clients parse unexpected 1xx), and a client
	 * that closed answers it with a reset, which the re-armed poll sees within a round trip.
	 * Once the response has started its own bytes do the asking; an HTTP/1.0 client cannot
	 * be sent a 1xx and is assumed to still read.
	 */
	if (!c->probed && !c->resp_started && !c->to_client.busy && c->client_minor == 1 &&
	    c->req_state == RQ_DONE) {
		static const char probe[] = "HTTP/1.1 100 Continue\r\n\r\n";

		c->probed = true; /* once: the re-armed poll fires again while the FIN stays */
		sendq_reset(&c->to_client);
		sendq_add(&c->to_client, probe, sizeof(probe) - 1);
		c->x_bytes_out += sizeof(probe) - 1;
		c_send(w, c);
	}
	c_arm_poll(w, c);
}

/*
 * Graceful close after the last response byte was sent: shut our write side and read and
 * discard what the client still sends for a moment, so that unread request bytes do not make
 * the kernel reset the connection before the client has read our response.
 */
static void conn_close_graceful(struct worker *w, struct conn *c)
{
	int unread = 0;

	ups_abort_attached(w, c);
	/*
	 * Linger only when the client may still be sending: bytes already received but not
	 * processed, or bytes waiting in the socket. A client that is done sending gets our FIN
	 * and the slot is freed at once.
	 */
	if (c->in.len == 0 && c->accum.len == 0 && c->req_state != RQ_BODY &&
	    ioctl(c->fd, FIONREAD, &unread) == 0 && unread == 0)
		c->eof = true;
	if (c->eof) {
		shutdown(c->fd, SHUT_WR);
		conn_abort(w, c);
		return;
	}
	shutdown(c->fd, SHUT_WR);
	c->closing = true;
	c->lingering = true;
	inbuf_release(w, &c->in);
	inbuf_release(w, &c->accum);
	c_arm_recv(w, c);
}

static void linger_recv(struct worker *w, struct conn *c, int res, int32_t bid)
{
	buf_put(w, bid);
	if (res > 0 && c->lingering &&
	    c->linger_bytes + (uint32_t)res < w->snap->cfg.limits.linger_bytes_max) {
		c->linger_bytes += (uint32_t)res;
		c_arm_recv(w, c);
		return;
	}
	c->lingering = false;
	conn_abort(w, c);
}

/* --- access log ------------------------------------------------------------------------------- */

/* Finds header name (lower case) in a canonical head; the value span or an empty one. */
static struct alog_str head_field(const char *h, size_t n, const char *name)
{
	size_t nl = strlen(name);
	const char *p = memchr(h, '\n', n), *end = h + n;
	struct alog_str r = { NULL, 0 };

	while (p && p + 1 < end) {
		const char *line = p + 1, *eol = memchr(line, '\n', (size_t)(end - line));

		if (!eol || eol - line <= 1)
			break;
		if ((size_t)(eol - line) > nl + 1 && line[nl] == ':' &&
		    strncasecmp(line, name, nl) == 0) {
			const char *v = line + nl + 1;

			while (v < eol && *v == ' ')
				v++;
			r.p = v;
			r.len = (uint32_t)(eol - v - (eol[-1] == '\r'));
			return r;
		}
		p = eol;
	}
	return r;
}

/*
 * What can be read of a rejected request line in p[0..n): method, target and version, split
 * at single spaces; a missing piece stays absent (NULL).
 */
static void rejected_line(const char *p, uint32_t n, struct alog_entry *e)
{
	const char *eol = p ? memchr(p, '\n', n) : NULL, *sp1, *sp2, *end;

	e->protocol_unknown = true;
	if (!p || n == 0)
		return;
	end = eol ? eol - (eol > p && eol[-1] == '\r') : p + n;
	sp1 = memchr(p, ' ', (size_t)(end - p));
	e->method = (struct alog_str){ p, (uint32_t)((sp1 ? sp1 : end) - p) };
	if (!sp1)
		return;
	sp2 = memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1));
	e->target = (struct alog_str){ sp1 + 1, (uint32_t)((sp2 ? sp2 : end) - sp1 - 1) };
	if (eol && sp2 && sp2 + 1 < end) { /* a version only on a complete line */
		e->protocol = (struct alog_str){ sp2 + 1, (uint32_t)(end - sp2 - 1) };
		e->protocol_unknown = false;
	}
}

/* One access-log line for the exchange that just ended with status. */
static void conn_log(struct worker *w, struct conn *c, int status)
{
	struct alog_entry e;
	struct timespec ts;

	c->x_logged = true;
	if (w->alog_fd < 0)
		return;
	memset(&e, 0, sizeof(e));
	clock_gettime(CLOCK_REALTIME, &ts);
	e.time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
	e.core = w->id;
	e.client = c->peer_ip;
	if (c->hbuf_req != NIL) {
		const char *h = hbuf_addr(w, c->hbuf_req), *sp1, *sp2;
		size_t n = c->req_head_len;

		sp1 = memchr(h, ' ', n);
		sp2 = sp1 ? memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - h)) : NULL;
		if (sp1 && sp2) {
			e.method = (struct alog_str){ h, (uint32_t)(sp1 - h) };
			e.target = (struct alog_str){ sp1 + 1, (uint32_t)(sp2 - sp1 - 1) };
		}
		e.host = head_field(h, n, "host");
		e.referer = head_field(h, n, "referer");
		e.user_agent = head_field(h, n, "user-agent");
		if (c->attempts)
			e.upstream = w->d->backends[c->backend].addr;
	} else if (c->rej_reason) {
		rejected_line(c->rej_line, c->rej_len, &e);
	}
	e.reason = c->rej_reason;
	e.version_minor = c->client_minor;
	e.status = (uint16_t)status;
	e.bytes_in = c->req_in_head_len + c->req_body.total;
	e.bytes_out = c->x_bytes_out;
	e.duration_us = c->req_start_ns ? (now_ns() - c->req_start_ns) / 1000 : 0;
	if (c->hbuf_req == NIL && c->rej_reason) {
		/* Rejected before an exchange began: nothing of a previous one applies. */
		e.bytes_in = c->rej_len;
		e.duration_us = 0;
	}
	if (alog_append(&w->alog, &e) == 1)
		worker_log_flush(w);
}

/* --- errors ---------------------------------------------------------------------------------- */

static void send_error(struct worker *w, struct conn *c, int status)
{
	uint32_t hb;
	int n;

	c->close_after = true;
	c->keep_alive = false;
	c->req_state = RQ_DONE;
	ups_abort_attached(w, c);
	c->rs_state = RS_DONE;
	if (c->resp_started || c->closing) {
		conn_abort(w, c);
		return;
	}
	if (c->to_client.busy) {
		c->pending_status = (uint16_t)status;
		return;
	}
	hb = c->hbuf_resp != NIL ? c->hbuf_resp : hbuf_get(w);
	if (hb == NIL) {
		conn_abort(w, c);
		return;
	}
	c->hbuf_resp = hb;
	n = http_error_response(hbuf_addr(w, hb), w->hbuf_size, status, true);
	BUG_ON(n <= 0);
	if (c->req_is_head) {
		/* RFC 9110 9.3.2: a response to HEAD ends at its head (Content-Length stays). */
		const char *h = hbuf_addr(w, hb), *e = memmem(h, (size_t)n, "\r\n\r\n", 4);

		BUG_ON(!e);
		n = (int)(e + 4 - h);
	}
	c->resp_started = true;
	c->resp_code = (uint16_t)status;
	count_status(w, status);
	c->x_bytes_out += (uint64_t)n;
	conn_log(w, c, status);
	sendq_reset(&c->to_client);
	sendq_add(&c->to_client, hbuf_addr(w, hb), (size_t)n);
	c_send(w, c);
}

/* An upstream failure before any response byte reached the client. */
static void upstream_fail(struct worker *w, struct conn *c, int status)
{
	STAT_ADD(w->stats->upstream_errors, 1);
	STAT_ADD(w->bstats[c->backend].errors, 1);
	send_error(w, c, status);
}

/*
 * Answers a request corral rejects (a bad or over-limit head, a bad body): its access-log
 * line says what was read of it (head[0..n), when no exchange has begun) and why.
 */
static void req_reject(struct worker *w, struct conn *c, const char *head, uint32_t n, int status,
		       const char *reason)
{
	c->rej_line = head;
	c->rej_len = n;
	c->rej_reason = reason ? reason : http_status_text(status);
	if (c->hbuf_req == NIL)
		c->x_bytes_out = 0;
	send_error(w, c, status);
	c->rej_line = NULL;
	c->rej_len = 0;
	c->rej_reason = NULL;
}

static void req_reject_src(struct worker *w, struct conn *c, const struct inbuf *src, int status,
			   const char *reason)
{
	req_reject(w, c, src && src->len ? src->base + src->off : NULL, src ? src->len : 0, status,
		   reason);
}

/* --- request side ------------------------------------------------------------------------------ */

/* Appends src[0..n) to the accumulation buffer; false if it does not fit. */
static bool accum_append(struct worker *w, struct inbuf *acc, const char *src, uint32_t n)
{
	if (acc->hbuf == NIL) {
		acc->hbuf = hbuf_get(w);
		if (acc->hbuf == NIL)
			return false;
		acc->base = hbuf_addr(w, acc->hbuf);
		acc->off = 0;
		acc->len = 0;
		acc->bid = -1;
	}
	if (acc->off + acc->len + n > w->hbuf_size)
		return false;
	memcpy(acc->base + acc->off + acc->len, src, n);
	acc->len += n;
	return true;
}

/*
 * Where the next head is parsed from. While a head is being assembled (acc holds its start)
 * the new bytes of in are appended to acc, and acc is the source; otherwise in itself. NULL
 * when the bytes do not fit (the head is over any limit).
 */
static struct inbuf *head_src(struct worker *w, struct inbuf *acc, struct inbuf *in)
{
	if (acc->hbuf == NIL)
		return in;
	if (in->len) {
		if (!accum_append(w, acc, in->base + in->off, in->len))
			return NULL;
		inbuf_release(w, in);
	}
	return acc;
}

/* An incomplete head in src: its bytes wait in acc for the next read. false: no buffer. */
static bool head_keep(struct worker *w, struct inbuf *acc, struct inbuf *in, struct inbuf *src)
{
	if (src != in)
		return true;
	if (!accum_append(w, acc, in->base + in->off, in->len))
		return false;
	inbuf_release(w, in);
	return true;
}

/* A head of n bytes was parsed from src: the bytes after it become in. */
static void head_consume(struct worker *w, struct inbuf *acc, struct inbuf *in, struct inbuf *src,
			 uint32_t n)
{
	src->off += n;
	src->len -= n;
	if (src == acc) {
		BUG_ON(in->len != 0);
		inbuf_release(w, in);
		*in = *acc;
		acc->hbuf = NIL;
		acc->bid = -1;
		acc->base = NULL;
		acc->len = acc->off = 0;
	}
}

/* Sets up the exchange for a parsed head at base; false if it was answered with an error. */
static bool req_begin(struct worker *w, struct conn *c, struct http_req *req, const char *base)
{
	const struct config *cfg = &w->snap->cfg;
	struct http_fwd fwd = { .client_ip = c->peer_ip, .proto = "http" };
	uint32_t hb;
	int n;

	c->requests++;
	c->x_logged = false;
	c->req_start_ns = now_ns();
	c->req_in_head_len = req->head_len;
	c->x_bytes_out = 0;
	STAT_ADD(w->stats->requests, 1);
	steer_req_started(w->sc);
	c->client_minor = req->version_minor;
	c->req_is_head = req->is_head;
	c->req_idempotent = req->is_idempotent;
	c->req_upgrade = req->upgrade;
	c->keep_alive = req->keep_alive && c->requests < cfg->limits.requests_per_connection &&
			!w->stopping;
	c->close_after = false;
	c->resp_started = false;
	c->ups_byte_seen = false;
	c->req_sent_any = false;
	c->req_head_sent = false;
	c->end_pending = false;
	c->attempts = 0;
	c->no_pool = false;
	c->last_err = 0;
	tried_clear(&c->tried);
	c->resp_code = 0;
	if (cfg->balance == CFG_BALANCE_HASH_URI)
		c->hkey = XXH3_64bits(base + req->target.off, req->target.len);
	else if (cfg->balance == CFG_BALANCE_HASH_CLIENT)
		c->hkey = XXH3_64bits(c->peer_ip, strlen(c->peer_ip));

	hb = hbuf_get(w);
	if (hb == NIL) {
		req_reject(w, c, base, req->head_len, 503, "no head buffer free");
		return false;
	}
	n = http_req_serialize(req, base, &fwd, hbuf_addr(w, hb), w->hbuf_size);
	if (n < 0) {
		hbuf_put(w, hb);
		req_reject(w, c, base, req->head_len, 431, "head too large to forward");
		return false;
	}
	c->hbuf_req = hb;
	c->req_head_len = (uint32_t)n;
	http_body_init(&c->req_body, req->framing, req->content_length, cfg->limits.body_bytes_max);
	/* Content-Length: 0 is forwarded as such, but there is no body to wait for. */
	if (req->framing == HTTP_BODY_NONE ||
	    (req->framing == HTTP_BODY_LENGTH && req->content_length == 0)) {
		c->req_body.done = true;
		c->req_state = RQ_DONE;
	} else {
		c->req_state = RQ_BODY;
	}
	return true;
}

/* Parses the next request head from c->in / c->accum and starts its exchange. */
static void req_process(struct worker *w, struct conn *c)
{
	struct http_limits lim;
	struct http_req req;
	struct inbuf *src;
	int r;

	BUG_ON(c->req_state != RQ_HEAD || c->rs_state != RS_NONE);
	limits_of(w, &lim);
	req.hdr = w->hdr_scratch; /* http_req_parse clears the rest */
	req.hdr_cap = w->hdr_cap;

	src = head_src(w, &c->accum, &c->in);
	if (!src) {
		req_reject_src(w, c, &c->accum, 431, "request head over the buffer");
		return;
	}
	if (src->len == 0) {
		inbuf_release(w, &c->in);
		c_arm_recv(w, c);
		return;
	}
	/* Known before the head is complete, so that an error answer to a HEAD has no body. */
	c->req_is_head = src->len >= 5 && memcmp(src->base + src->off, "HEAD ", 5) == 0;
	r = http_req_parse(&req, src->base + src->off, src->len, &lim);
	if (r == -EAGAIN) {
		if (!head_keep(w, &c->accum, &c->in, src)) {
			send_error(w, c, 503);
			return;
		}
		c_arm_recv(w, c);
		return;
	}
	if (r < 0) {
		STAT_ADD(w->stats->parse_errors, 1);
		req_reject_src(w, c, src, req.status ? req.status : 400, req.reason);
		return;
	}
	/* The head is parsed; what follows it is body or the next request. */
	if (!req_begin(w, c, &req, src->base + src->off))
		return;
	head_consume(w, &c->accum, &c->in, src, (uint32_t)r);
	c_arm_poll(w, c);
	exchange_connect(w, c);
}

/* Sends what the request direction has ready (head, then body) to the upstream. */
static void req_pump(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);
	struct sendq *q = &c->to_ups;
	size_t payload = 0;
	ssize_t k;
	char *p;

	if (c->closing || !u || !u->connected || q->busy || u->closing)
		return;
	sendq_reset(q);
	if (!c->req_head_sent) {
		sendq_add(q, hbuf_addr(w, c->hbuf_req), c->req_head_len);
		c->req_head_sent = true;
	}
	if (c->rs_state == RS_TUNNEL) {
		if (c->in.len) {
			sendq_add(q, c->in.base + c->in.off, c->in.len);
			c->in.off += c->in.len;
			c->in.len = 0;
		}
	} else if (c->req_state == RQ_BODY && c->in.len) {
		p = c->in.base + c->in.off;
		k = http_body_decode(&c->req_body, p, c->in.len, &payload);
		if (k < 0) {
			STAT_ADD(w->stats->parse_errors, 1);
			req_reject(w, c, NULL, 0, k == -EFBIG ? 413 : 400,
				   k == -EFBIG ? "body over the limit" : "invalid body framing");
			return;
		}
		c->in.off += (uint32_t)k;
		c->in.len -= (uint32_t)k;
		if (c->req_body.framing == HTTP_BODY_CHUNKED) {
			if (payload) {
				sendq_add(q, c->chunk_hdr_u,
					  (size_t)http_chunk_header(c->chunk_hdr_u, payload));
				sendq_add(q, p, payload);
				if (c->req_body.done)
					sendq_add(q, S_CRLF_LAST, sizeof(S_CRLF_LAST) - 1);
				else
					sendq_add(q, S_CRLF, 2);
			} else if (c->req_body.done) {
				sendq_add(q, S_LAST, sizeof(S_LAST) - 1);
			}
		} else {
			sendq_add(q, p, payload);
		}
		if (c->req_body.done)
			c->req_state = RQ_DONE;
	}
	if (q->iov_n) {
		c->req_sent_any = true;
		u_send(w, c, u);
		return;
	}
	/* Nothing to send: the request direction wants more client bytes. */
	if (c->req_state == RQ_BODY || c->rs_state == RS_TUNNEL) {
		if (c->in.len == 0) {
			inbuf_release(w, &c->in);
			if (!c->eof)
				c_arm_recv(w, c);
			else if (c->req_state == RQ_BODY && c->rs_state != RS_TUNNEL)
				client_gone(w, c); /* EOF inside the body */
		}
	}
}

/* --- upstream connect and pools ------------------------------------------------------------ */

static struct ups *ups_alloc(struct worker *w)
{
	struct ups *u;
	uint32_t idx = w->ups_free;

	if (idx == NIL)
		return NULL;
	u = &w->ups[idx];
	w->ups_free = u->pool_next;
	u->fd = -1;
	u->inflight = 0;
	u->connected = u->recv_armed = u->closing = u->reused = false;
	u->in.bid = -1;
	u->in.hbuf = NIL;
	u->in.len = u->in.off = 0;
	u->pool_prev = u->pool_next = NIL;
	w->ups_open++;
	return u;
}

static void pool_unlink(struct worker *w, struct ups *u)
{
	uint16_t b = u->backend;

	if (u->pool_prev != NIL)
		w->ups[u->pool_prev].pool_next = u->pool_next;
	else
		w->pool_head[b] = u->pool_next;
	if (u->pool_next != NIL)
		w->ups[u->pool_next].pool_prev = u->pool_prev;
	else
		w->pool_tail[b] = u->pool_prev;
	u->pool_prev = u->pool_next = NIL;
	w->pool_n[b]--;
	STAT_SET(w->stats->pool_idle, w->stats->pool_idle - 1);
}

static void pool_put(struct worker *w, struct ups *u)
{
	uint16_t b = u->backend;
	uint32_t idx = uidx(w, u);

	u->owner = NIL;
	u->reused = false;
	/* Pooled only while the snapshot still maps the id to the address it was opened to. */
	if (u->closing || w->pool_n[b] >= w->snap->cfg.limits.upstream_idle_per_backend ||
	    w->stopping || w->snap->id_gen[b] != u->be_gen) {
		ups_close(w, u);
		return;
	}
	inbuf_release(w, &u->in);
	u->idle_since_ms = w->now_ms;
	u->pool_prev = NIL;
	u->pool_next = w->pool_head[b];
	if (u->pool_next != NIL)
		w->ups[u->pool_next].pool_prev = idx;
	else
		w->pool_tail[b] = idx;
	w->pool_head[b] = idx;
	w->pool_n[b]++;
	STAT_SET(w->stats->pool_idle, w->stats->pool_idle + 1);
	/* An idle connection keeps a receive armed: it notices the backend closing it. */
	u_arm_recv(w, u);
}

void ups_pool_expire(struct worker *w)
{
	uint64_t idle_ms = w->snap->cfg.timeouts.upstream_idle_ms;

	/* Expired, or opened to a backend a reload removed: closed. */
	for (uint32_t b = 0; b < BACKEND_IDS_MAX; b++) {
		while (w->pool_tail[b] != NIL) {
			struct ups *u = &w->ups[w->pool_tail[b]];

			if (u->idle_since_ms + idle_ms > w->now_ms &&
			    w->snap->id_gen[b] == u->be_gen)
				break;
			pool_unlink(w, u);
			ups_close(w, u);
		}
	}
}

void ups_pool_close_all(struct worker *w)
{
	for (uint32_t b = 0; b < BACKEND_IDS_MAX; b++) {
		while (w->pool_head[b] != NIL) {
			struct ups *u = &w->ups[w->pool_head[b]];

			pool_unlink(w, u);
			ups_close(w, u);
		}
	}
}

static void exchange_detach_ups(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	if (!u)
		return;
	c->ups = NIL;
	ups_close(w, u);
}

static void be_active_inc(struct worker *w, uint16_t b)
{
	balance_inflight_inc(&w->bal, b);
	STAT_SET(w->bstats[b].active, w->bal.inflight[b]);
	STAT_ADD(w->bstats[b].requests, 1);
}

static void be_active_dec(struct worker *w, uint16_t b)
{
	balance_inflight_dec(&w->bal, b);
	STAT_SET(w->bstats[b].active, w->bal.inflight[b]);
}

/* Picks a backend and gets a connection to it: pooled, or a new connect. */
static void exchange_connect(struct worker *w, struct conn *c)
{
	const struct snapshot *s = w->snap;
	uint32_t n_be = s->cfg.backends_n;
	uint32_t tries = s->cfg.limits.upstream_attempts_max;
	uint32_t max_attempts = n_be < tries ? (n_be ? n_be : 1) : tries;
	const struct cfg_backend *be;
	struct io_uring_sqe *sqe;
	struct ups *u;
	int bi, fd, one = 1;
	uint16_t id;

	if (c->attempts >= max_attempts) {
		upstream_fail(w, c, c->last_err == 4 ? 504 : 502);
		return;
	}
	c->attempts++;
	bi = balance_pick(s, w->d->backends, &w->bal, w->now_ms, c->hkey, &c->tried);
	if (bi < 0 && c->attempts > 1) {
		/* A retry found no other backend: the last one's failure (already counted) stands. */
		c->attempts--;
		send_error(w, c, c->last_err == 4 ? 504 : 502);
		return;
	}
	if (bi < 0) {
		/* No backend is eligible: no backend's error, and none in the log (upstream: null). */
		c->attempts = 0;
		STAT_ADD(w->stats->no_backend, 1);
		send_error(w, c, 503);
		return;
	}
	be = &s->cfg.backends[bi];
	id = (uint16_t)s->backend_id[bi];
	c->backend = id;
	tried_add(&c->tried, id);
	be_active_inc(w, id);

	/* A pooled connection, unless this is a retry after a pooled one failed. */
	while (w->pool_head[id] != NIL && !c->no_pool) {
		u = &w->ups[w->pool_head[id]];
		pool_unlink(w, u);
		if (u->be_gen != s->id_gen[id]) {
			/* Opened to an earlier address of this id: never reused for another. */
			ups_close(w, u);
			continue;
		}
		BUG_ON(u->addr_len != be->addr.len || memcmp(&u->addr, &be->addr.ss, u->addr_len));
		u->owner = cidx(w, c);
		u->owner_gen = c->gen;
		u->reused = true;
		c->ups = uidx(w, u);
		STAT_ADD(w->stats->pool_hits, 1);
		c->rs_state = RS_HEAD;
		u_arm_recv(w, u);
		req_pump(w, c);
		return;
	}
	STAT_ADD(w->stats->pool_misses, 1);
	u = ups_alloc(w);
	if (!u) {
		be_active_dec(w, id);
		send_error(w, c, 503);
		return;
	}
	fd = socket(be->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int err = errno;

		u->pool_next = w->ups_free;
		w->ups_free = uidx(w, u);
		w->ups_open--;
		be_active_dec(w, id);
		if (err == EMFILE || err == ENFILE)
			w->shed_want += 8; /* fds for the next ones, at the end of the batch */
		worker_fd_warn(w, "upstream socket", err);
		send_error(w, c, 503);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	u->fd = fd;
	u->backend = id;
	u->be_gen = s->id_gen[id];
	u->owner = cidx(w, c);
	u->owner_gen = c->gen;
	memcpy(&u->addr, &be->addr.ss, be->addr.len);
	u->addr_len = be->addr.len;
	c->ups = uidx(w, u);
	c->rs_state = RS_CONNECT;
	sqe = worker_sqe(w);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&u->addr, u->addr_len);
	sqe->user_data = ud_pack(OP_U_CONNECT, uidx(w, u), u->gen);
	u->inflight++;
}

/* The current upstream failed before any response byte: retry elsewhere or answer. */
static void exchange_retry(struct worker *w, struct conn *c, int err_class)
{
	struct ups *u = conn_ups(w, c);
	uint16_t b = c->backend;

	c->last_err = (uint8_t)err_class;
	STAT_ADD(w->stats->upstream_errors, 1);
	STAT_ADD(w->bstats[b].errors, 1);
	be_active_dec(w, b);
	if (u && !u->reused) {
		/*
		 * Passive health: this core skips the backend at once; the main thread
		 * (health_scan) publishes the park to every core at its next scan.
		 */
		STAT_SET(w->bstats[b].connect_fail_ms, w->now_ms);
		if (w->snap->cfg.timeouts.backend_park_ms)
			balance_park(&w->bal, b, w->now_ms + w->snap->cfg.timeouts.backend_park_ms);
	}
	exchange_detach_ups(w, c);
	c->req_head_sent = false;
	c->rs_state = RS_NONE;
	STAT_ADD(w->stats->upstream_retries, 1);
	exchange_connect(w, c);
}

/* --- response side ------------------------------------------------------------------------- */

static void tunnel_start(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	c->rs_state = RS_TUNNEL;
	c->req_state = RQ_DONE;
	c->keep_alive = false;
	c->ups_reusable = false;
	/* Client bytes already read after the request head go first. */
	if (c->in.len) {
		req_pump(w, c);
	} else if (!c->to_ups.busy) {
		inbuf_release(w, &c->in);
		c_arm_recv(w, c);
	}
	(void)u;
}

/* Forwards what the response direction has ready to the client. */
static void resp_process(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);
	struct sendq *q = &c->to_client;
	struct http_limits lim;
	struct http_resp resp;
	struct inbuf *src;
	enum http_framing of;
	size_t payload = 0;
	ssize_t k;
	bool ka;
	char *p;
	int r, n;

	if (c->closing || !u || q->busy)
		return;
	sendq_reset(q);
	if (c->rs_state == RS_TUNNEL) {
		if (u->in.len) {
			sendq_add(q, u->in.base + u->in.off, u->in.len);
			u->in.off += u->in.len;
			u->in.len = 0;
			c_send(w, c);
		} else {
			inbuf_release(w, &u->in);
			u_arm_recv(w, u);
		}
		return;
	}
	if (c->rs_state == RS_HEAD) {
		limits_of(w, &lim);
		resp.hdr = w->hdr_scratch; /* http_resp_parse clears the rest */
		resp.hdr_cap = w->hdr_cap;
		src = head_src(w, &c->accum, &u->in);
		if (!src) {
			upstream_fail(w, c, 502);
			return;
		}
		if (src->len == 0) {
			inbuf_release(w, &u->in);
			u_arm_recv(w, u);
			return;
		}
		r = http_resp_parse(&resp, src->base + src->off, src->len, &lim, c->req_is_head);
		if (r == -EAGAIN) {
			if (!head_keep(w, &c->accum, &u->in, src)) {
				upstream_fail(w, c, 502);
				return;
			}
			u_arm_recv(w, u);
			return;
		}
		if (r < 0) {
			log_warn("worker %u: bad response from %s: %s", w->id,
				 w->d->backends[c->backend].addr, resp.reason ? resp.reason : "?");
			upstream_fail(w, c, 502);
			return;
		}
		p = src->base + src->off;
		if (c->hbuf_resp == NIL)
			c->hbuf_resp = hbuf_get(w);
		if (c->hbuf_resp == NIL) {
			upstream_fail(w, c, 503);
			return;
		}
		if (resp.code == 101 && !c->req_upgrade) {
			upstream_fail(w, c, 502);
			return;
		}
		if (resp.code >= 100 && resp.code < 200 && resp.code != 101 &&
		    c->client_minor == 0) {
			/* RFC 9110 15.2: no 1xx to an HTTP/1.0 client; drop it, wait for the final. */
			src->off += (uint32_t)r;
			src->len -= (uint32_t)r;
			if (src == &c->accum && src->len == 0)
				inbuf_release(w, &c->accum);
			resp_process(w, c);
			return;
		}
		if (resp.code >= 100 && resp.code < 200 && resp.code != 101) {
			/* Interim response: relay it, then keep waiting for the final one. */
			n = http_resp_serialize(&resp, p, c->client_minor, true, c->req_is_head,
						hbuf_addr(w, c->hbuf_resp), w->hbuf_size, &of);
			if (n < 0) {
				upstream_fail(w, c, 502);
				return;
			}
			src->off += (uint32_t)r;
			src->len -= (uint32_t)r;
			if (src == &c->accum && src->len == 0)
				inbuf_release(w, &c->accum);
			sendq_add(q, hbuf_addr(w, c->hbuf_resp), (size_t)n);
			c_send(w, c);
			return;
		}
		ka = c->keep_alive && resp.code != 101;
		if (c->client_minor == 0 &&
		    (resp.framing == HTTP_BODY_CHUNKED || resp.framing == HTTP_BODY_CLOSE))
			ka = false;
		c->keep_alive = ka;
		n = http_resp_serialize(&resp, p, c->client_minor, ka, c->req_is_head,
					hbuf_addr(w, c->hbuf_resp), w->hbuf_size, &of);
		if (n < 0) {
			upstream_fail(w, c, 502);
			return;
		}
		c->resp_started = true;
		c->resp_code = resp.code;
		c->out_framing = (uint8_t)of;
		c->ups_reusable = resp.keep_alive && resp.framing != HTTP_BODY_CLOSE;
		count_status(w, resp.code);
		head_consume(w, &c->accum, &u->in, src, (uint32_t)r);
		sendq_add(q, hbuf_addr(w, c->hbuf_resp), (size_t)n);
		if (resp.code == 101) {
			c_send(w, c);
			tunnel_start(w, c);
			return;
		}
		http_body_init(&c->resp_body, resp.framing, resp.content_length, 0);
		if (resp.framing == HTTP_BODY_NONE ||
		    (resp.framing == HTTP_BODY_LENGTH && resp.content_length == 0)) {
			c->resp_body.done = true;
			c->rs_state = RS_DONE;
			if (u->in.len)
				c->ups_reusable = false; /* bytes after a body-less response */
			c_send(w, c);
			return;
		}
		c->rs_state = RS_BODY;
	}
	if (c->rs_state != RS_BODY)
		return;
	if (u->in.len) {
		p = u->in.base + u->in.off;
		k = http_body_decode(&c->resp_body, p, u->in.len, &payload);
		if (k < 0) {
			log_warn("worker %u: bad response body framing from %s", w->id,
				 w->d->backends[c->backend].addr);
			c->ups_reusable = false;
			if (c->resp_started && q->iov_n &&
			    q->iov[0].iov_base == hbuf_addr(w, c->hbuf_resp)) {
				/* The head is only queued, not sent: the client can still get a 502. */
				STAT_ADD(w->stats->responses[c->resp_code / 100 - 1], -1);
				c->resp_started = false;
				sendq_reset(q);
			}
			if (!c->resp_started) {
				upstream_fail(w, c, 502);
			} else {
				/* Valid data already went out: end with an abort the client can see. */
				STAT_ADD(w->stats->upstream_errors, 1);
				conn_abort_reset(w, c);
			}
			return;
		}
		u->in.off += (uint32_t)k;
		u->in.len -= (uint32_t)k;
		if (c->out_framing == HTTP_BODY_CHUNKED) {
			if (payload) {
				sendq_add(q, c->chunk_hdr_c,
					  (size_t)http_chunk_header(c->chunk_hdr_c, payload));
				sendq_add(q, p, payload);
				sendq_add(q, c->resp_body.done ? S_CRLF_LAST : S_CRLF,
					  c->resp_body.done ? sizeof(S_CRLF_LAST) - 1 : 2);
			} else if (c->resp_body.done) {
				sendq_add(q, S_LAST, sizeof(S_LAST) - 1);
			}
		} else {
			sendq_add(q, p, payload);
		}
		if (c->resp_body.done) {
			c->rs_state = RS_DONE;
			if (u->in.len)
				c->ups_reusable = false; /* bytes after the end of the response */
		}
	}
	if (q->iov_n) {
		c_send(w, c);
		return;
	}
	inbuf_release(w, &u->in);
	u_arm_recv(w, u);
}

/* The upstream closed (res == 0) or failed (res < 0) while this exchange used it. */
static void resp_upstream_eof(struct worker *w, struct conn *c, int res)
{
	struct ups *u = conn_ups(w, c);
	struct sendq *q = &c->to_client;

	if (c->rs_state == RS_HEAD && !c->ups_byte_seen && c->accum.hbuf == NIL) {
		/* A pooled connection the backend had closed: safe to retry when idempotent. */
		if (u->reused && c->req_idempotent && c->req_state == RQ_DONE &&
		    c->req_body.framing == HTTP_BODY_NONE && !c->to_ups.busy && !c->no_pool) {
			be_active_dec(w, c->backend);
			exchange_detach_ups(w, c);
			c->req_head_sent = false;
			c->rs_state = RS_NONE;
			/* Not a failed attempt: the same backend, on a fresh connection. */
			c->attempts--;
			tried_del(&c->tried, c->backend);
			c->no_pool = true;
			STAT_ADD(w->stats->upstream_retries, 1);
			exchange_connect(w, c);
			return;
		}
		upstream_fail(w, c, 502);
		return;
	}
	if (c->rs_state == RS_HEAD) {
		upstream_fail(w, c, 502);
		return;
	}
	if (c->rs_state == RS_BODY && res == 0 && c->resp_body.framing == HTTP_BODY_CLOSE) {
		/* Close-delimited body: EOF is its end. */
		c->resp_body.done = true;
		c->rs_state = RS_DONE;
		c->ups_reusable = false;
		if (c->out_framing == HTTP_BODY_CHUNKED) {
			sendq_reset(q);
			sendq_add(q, S_LAST, sizeof(S_LAST) - 1);
			c_send(w, c);
		} else {
			c->keep_alive = false;
			exchange_end(w, c);
		}
		return;
	}
	if (c->rs_state == RS_TUNNEL) {
		conn_close_graceful(w, c);
		return;
	}
	/* Mid-body: the client must be able to tell the response is incomplete. */
	STAT_ADD(w->stats->upstream_errors, 1);
	conn_abort_reset(w, c);
}

static void record_latency(struct worker *w, struct conn *c)
{
	uint64_t us = (now_ns() - c->req_start_ns) / 1000;

	stats_record_latency(w->stats, us);
	STAT_ADD(w->bstats[c->backend].lat_sum_us, us);
}

/* The response was fully sent: pool or close the upstream, then the next request. */
static void exchange_end(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	if (c->to_ups.busy) {
		c->end_pending = true;
		return;
	}
	c->end_pending = false;
	record_latency(w, c);
	conn_log(w, c, c->resp_code);
	steer_req_ended(w->sc);
	if (u) {
		be_active_dec(w, c->backend);
		c->ups = NIL;
		/* Idle ones are bounded by the connection table (and expire by upstream_idle_ms). */
		if (c->ups_reusable && c->req_state == RQ_DONE && u->in.len == 0 && !u->closing &&
		    w->stats->pool_idle < w->conn_limit)
			pool_put(w, u);
		else
			ups_close(w, u);
	}
	if (c->hbuf_req != NIL) {
		hbuf_put(w, c->hbuf_req);
		c->hbuf_req = NIL;
	}
	if (c->hbuf_resp != NIL) {
		hbuf_put(w, c->hbuf_resp);
		c->hbuf_resp = NIL;
	}
	inbuf_release(w, &c->accum);
	c->rs_state = RS_NONE;
	c->resp_started = false; /* the next exchange may still answer with an error */
	/*
	 * Stopping for an upgrade, a response that announced keep-alive leaves the connection
	 * open: the client may send its next request at once, which is then answered with
	 * Connection: close (closing now could cut that request off).
	 */
	if (!c->keep_alive || c->close_after || (w->stopping && !w->d->handover)) {
		c->req_state = RQ_HEAD;
		conn_close_graceful(w, c);
		return;
	}
	if (c->req_state == RQ_BODY) {
		/* The response ended before the request body: read and drop the rest of it. */
		req_discard(w, c);
		return;
	}
	req_next(w, c);
}

/* Goes on with the next request on a keep-alive connection. */
static void req_next(struct worker *w, struct conn *c)
{
	c->req_state = RQ_HEAD;
	if (c->in.len) {
		req_process(w, c);
	} else {
		inbuf_release(w, &c->in);
		if (c->eof)
			conn_abort(w, c);
		else
			c_arm_recv(w, c);
	}
}

/*
 * Reads and drops what is left of a request body whose response is already complete
 * (NGINX's "discard body"), so that the connection can serve its next request.
 */
static void req_discard(struct worker *w, struct conn *c)
{
	size_t payload;
	ssize_t k;

	while (c->in.len && !c->req_body.done) {
		k = http_body_decode(&c->req_body, c->in.base + c->in.off, c->in.len, &payload);
		if (k < 0) {
			conn_abort(w, c); /* the response is out: nothing left to answer */
			return;
		}
		c->in.off += (uint32_t)k;
		c->in.len -= (uint32_t)k;
	}
	if (c->req_body.done) {
		req_next(w, c);
		return;
	}
	inbuf_release(w, &c->in);
	if (c->eof) {
		conn_abort(w, c);
		return;
	}
	c_arm_recv(w, c);
}

/* --- completions ------------------------------------------------------------------------------ */

static int32_t cqe_bid(int res, uint32_t flags)
{
	if (!(flags & IORING_CQE_F_BUFFER))
		return -1;
	(void)res;
	return (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);
}

static void c_on_recv(struct worker *w, struct conn *c, int res, uint32_t flags)
{
	int32_t bid = cqe_bid(res, flags);

	c->recv_armed = false;
	if (bid >= 0)
		w->bufs_out++;
	if (c->closing) {
		if (c->lingering) {
			linger_recv(w, c, res, bid);
			return;
		}
		buf_put(w, bid);
		conn_try_finish(w, c);
		return;
	}
	if (res == -ENOBUFS) {
		c->recv_wanted = true;
		wait_push(w, cidx(w, c));
		return;
	}
	if (res <= 0) {
		buf_put(w, bid);
		c->eof = true;
		if (c->rs_state == RS_TUNNEL) {
			conn_close_graceful(w, c);
			return;
		}
		if (c->req_state == RQ_HEAD && c->rs_state == RS_NONE &&
		    (c->accum.hbuf != NIL || c->in.len) && res == 0) {
			/* A partial head then EOF: nothing to answer to. */
			conn_abort(w, c);
			return;
		}
		client_gone(w, c); /* logs 499 when an exchange was in flight */
		return;
	}
	BUG_ON(bid < 0);
	BUG_ON(c->in.len != 0);
	inbuf_release(w, &c->in);
	c->in.base = buf_addr(w, (uint32_t)bid);
	c->in.off = 0;
	c->in.len = (uint32_t)res;
	c->in.bid = bid;
	STAT_ADD(w->stats->bytes_in, (uint64_t)res);
	if (c->req_state == RQ_BODY && c->rs_state == RS_NONE)
		req_discard(w, c);
	else if (c->rs_state == RS_TUNNEL || c->req_state == RQ_BODY)
		req_pump(w, c);
	else if (c->req_state == RQ_HEAD && c->rs_state == RS_NONE)
		req_process(w, c);
}

static void c_on_send(struct worker *w, struct conn *c, int res)
{
	struct sendq *q = &c->to_client;
	struct ups *u = conn_ups(w, c);

	q->busy = false;
	if (c->closing) {
		conn_try_finish(w, c);
		return;
	}
	if (res <= 0) {
		client_gone(w, c);
		return;
	}
	STAT_ADD(w->stats->bytes_out, (uint64_t)res);
	if (!c->pending_status && c->resp_code)
		c->x_bytes_out += (uint64_t)res;
	if (!sendq_advance(q, (size_t)res)) {
		c_send(w, c);
		return;
	}
	if (c->pending_status) {
		int s = c->pending_status;

		c->pending_status = 0;
		send_error(w, c, s);
		return;
	}
	if (c->close_after && (c->rs_state == RS_DONE || c->rs_state == RS_NONE) &&
	    (!u || u->closing)) {
		conn_close_graceful(w, c);
		return;
	}
	if (u && u->in.len == 0 && u->in.bid >= 0)
		inbuf_release(w, &u->in);
	switch (c->rs_state) {
	case RS_DONE:
		exchange_end(w, c);
		return;
	case RS_HEAD:
	case RS_BODY:
	case RS_TUNNEL:
		resp_process(w, c);
		break;
	default:
		break;
	}
}

void conn_on_cqe(struct worker *w, enum wop op, uint32_t idx, uint32_t gen, int res, uint32_t flags)
{
	struct conn *c;

	BUG_ON(idx >= w->conn_cap);
	c = &w->conns[idx];
	/* Cannot happen: a slot is freed only when nothing is in flight. */
	if (CHECK_IF(!c->active || c->gen != gen)) {
		int32_t bid = cqe_bid(res, flags);

		if (bid >= 0) {
			w->bufs_out++;
			buf_put(w, bid);
		}
		return;
	}
	BUG_ON(c->inflight == 0);
	c->inflight--;
	switch (op) {
	case OP_C_RECV:
		c_on_recv(w, c, res, flags);
		break;
	case OP_C_SEND:
		c_on_send(w, c, res);
		break;
	case OP_C_CANCEL:
		conn_try_finish(w, c);
		break;
	case OP_C_POLL:
		c_on_poll(w, c, res);
		break;
	default:
		BUG_ON(1);
	}
	conn_timer_update(w, c);
}

static void u_on_connect(struct worker *w, struct conn *c, struct ups *u, int res)
{
	if (res < 0) {
		exchange_retry(w, c, res == -ECANCELED ? 4 : 2);
		return;
	}
	u->connected = true;
	c->rs_state = RS_HEAD;
	u_arm_recv(w, u);
	req_pump(w, c);
}

static void u_on_send(struct worker *w, struct conn *c, struct ups *u, int res)
{
	struct sendq *q = &c->to_ups;

	q->busy = false;
	if (res <= 0) {
		if (!c->resp_started && !c->ups_byte_seen)
			upstream_fail(w, c, 502);
		else
			conn_abort(w, c);
		return;
	}
	if (!sendq_advance(q, (size_t)res)) {
		u_send(w, c, u);
		return;
	}
	if (c->in.len == 0 && (c->in.bid >= 0 || c->in.hbuf != NIL))
		inbuf_release(w, &c->in);
	if (c->end_pending) {
		exchange_end(w, c);
		return;
	}
	if (c->rs_state == RS_TUNNEL || c->req_state == RQ_BODY)
		req_pump(w, c);
}

static void u_on_recv(struct worker *w, struct conn *c, struct ups *u, int res, uint32_t flags)
{
	int32_t bid = cqe_bid(res, flags);

	if (res == -ENOBUFS) {
		c->ups_recv_wanted = true;
		wait_push(w, cidx(w, c));
		return;
	}
	if (res <= 0) {
		buf_put(w, bid);
		resp_upstream_eof(w, c, res);
		return;
	}
	BUG_ON(bid < 0);
	BUG_ON(u->in.len != 0);
	inbuf_release(w, &u->in);
	u->in.base = buf_addr(w, (uint32_t)bid);
	u->in.off = 0;
	u->in.len = (uint32_t)res;
	u->in.bid = bid;
	if (!c->ups_byte_seen) {
		c->ups_byte_seen = true;
	}
	resp_process(w, c);
}

void ups_on_cqe(struct worker *w, enum wop op, uint32_t idx, uint32_t gen, int res, uint32_t flags)
{
	struct ups *u;
	struct conn *c = NULL;
	int32_t bid = cqe_bid(res, flags);

	BUG_ON(idx >= w->ups_cap);
	u = &w->ups[idx];
	if (bid >= 0)
		w->bufs_out++;
	/* Cannot happen: an upstream slot is freed only when nothing is in flight. */
	if (CHECK_IF(u->gen != gen || u->fd < 0)) {
		buf_put(w, bid);
		return;
	}
	BUG_ON(u->inflight == 0);
	u->inflight--;
	if (op == OP_U_RECV)
		u->recv_armed = false;
	if (u->owner != NIL) {
		c = &w->conns[u->owner];
		BUG_ON(!c->active || c->gen != u->owner_gen || c->ups != idx);
	}
	if (!c) {
		/* Pooled or detached. Any completion on an idle pooled connection ends it. */
		buf_put(w, bid);
		if (u->closing) {
			if (u->inflight == 0)
				ups_release(w, u);
			return;
		}
		if (op == OP_U_RECV) {
			pool_unlink(w, u);
			ups_close(w, u);
		}
		return;
	}
	if (c->closing || u->closing) {
		/* Aborted: the connection finishes (and frees u) once every op has completed. */
		buf_put(w, bid);
		if (op == OP_U_SEND)
			c->to_ups.busy = false;
		if (c->closing)
			conn_try_finish(w, c);
		return;
	}
	switch (op) {
	case OP_U_CONNECT:
		u_on_connect(w, c, u, res);
		break;
	case OP_U_SEND:
		u_on_send(w, c, u, res);
		break;
	case OP_U_RECV:
		u_on_recv(w, c, u, res, flags);
		break;
	case OP_U_CANCEL:
		break;
	default:
		BUG_ON(1);
	}
	conn_timer_update(w, c);
}

void conn_retry_recv(struct worker *w, uint32_t idx)
{
	struct conn *c = &w->conns[idx];
	struct ups *u;

	if (!c->active)
		return;
	if (c->recv_wanted) {
		c->recv_wanted = false;
		if (c->closing && !c->lingering)
			conn_try_finish(w, c);
		else
			c_arm_recv(w, c);
	}
	if (c->ups_recv_wanted) {
		c->ups_recv_wanted = false;
		u = conn_ups(w, c);
		if (u && !c->closing && !u->closing)
			u_arm_recv(w, u);
	}
	conn_timer_update(w, c);
}

void conn_on_timeout(struct worker *w, uint32_t idx, enum tclass cls)
{
	struct conn *c = &w->conns[idx];
	bool partial;

	if (!c->active)
		return;
	switch (cls) {
	case T_HEADER:
		partial = c->accum.hbuf != NIL || c->in.len > 0;
		STAT_ADD(w->stats->timeouts, 1);
		if (partial)
			req_reject_src(w, c, c->accum.hbuf != NIL ? &c->accum : &c->in, 408,
				       "request head timeout");
		else
			conn_abort(w, c);
		break;
	case T_IDLE:
	case T_TUNNEL:
	case T_LINGER:
		c->lingering = false;
		conn_abort(w, c);
		break;
	case T_BODY:
		STAT_ADD(w->stats->timeouts, 1);
		/* Discarding a body whose response is out: an unasked-for 408 would be misread. */
		if (!c->resp_started && c->rs_state != RS_NONE)
			send_error(w, c, 408);
		else
			conn_abort(w, c);
		break;
	case T_CONNECT:
		STAT_ADD(w->stats->timeouts, 1);
		exchange_retry(w, c, 4);
		break;
	case T_UPSTREAM:
		STAT_ADD(w->stats->timeouts, 1);
		if (!c->resp_started)
			upstream_fail(w, c, 504);
		else
			conn_abort(w, c);
		break;
	default:
		break;
	}
	conn_timer_update(w, c);
}

void conn_stop_all(struct worker *w, bool force)
{
	for (uint32_t i = 0; i < w->conn_cap; i++) {
		struct conn *c = &w->conns[i];

		if (!c->active || (c->closing && !force))
			continue;
		if (force) {
			c->lingering = false;
			conn_abort(w, c);
			continue;
		}
		/*
		 * An upgrade's drain (docs/operations.md): a response head that announced
		 * keep-alive stays true to it, and an idle connection waits for its next request
		 * (answered with Connection: close) or for the grace period's end; closing it now
		 * could cut off a request already on its way.
		 */
		if (!w->d->handover || !c->resp_started)
			c->keep_alive = false;
		if (w->d->handover)
			continue;
		if (c->rs_state == RS_NONE && c->req_state == RQ_HEAD && c->in.len == 0 &&
		    c->accum.hbuf == NIL)
			conn_abort(w, c);
	}
}
