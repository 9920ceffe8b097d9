/*
 * The client side of a connection task: accept, the client socket's completions, the request
 * head, the client-abort watch, lingering close, and teardown.
 *
 * Owns: struct conn's slot, its client fd and ops, c->in / c->x->req.accum while a head is
 * read, taking and returning the exchange slot c->x (conn_x_attach / conn_x_detach), the
 * timers of the connection (conn_timer_update), and teardown (conn_try_finish, the one place
 * a slot is freed). May touch: the worker's connection table and generic services (SQEs,
 * buffers, head buffers, timers, the buffer wait queue), steer counters. It hands a parsed
 * request to exchange.c (exchange_connect) and is called back through the conn_* entry points
 * of conn.h; it does not touch upstream connections except through exchange.c / upstream.c.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <xxhash.h>
#include "conn.h"
#include "proxyproto.h"
#include "steer.h"

static void req_process(struct worker *w, struct conn *c);
static void req_next(struct worker *w, struct conn *c);
static void req_discard(struct worker *w, struct conn *c);
static bool conn_reclaim(struct worker *w);
static uint32_t reclaim_find(struct worker *w, uint32_t skip);
static void conn_accept_now(struct worker *w, int fd, uint32_t li);
static bool exchange_in_flight(const struct conn *c);
static bool conn_x_attach(struct worker *w, struct conn *c);
static void conn_x_detach(struct worker *w, struct conn *c);

/*
 * An idle keep-alive connection is its struct conn alone (the exchange state is in a slot of
 * the pool, c->x, only while a request is in progress), and the worker's table holds one per
 * connection, all of whose pages an idle crowd touches: issue 12 wants at most 512 bytes of
 * resident memory per idle connection, and the table's share must leave room below that for
 * the rest (the free list, the kernel's share of the io_uring state in the process's pages).
 */
#define CONN_BYTES_MAX 256
_Static_assert(sizeof(struct conn) <= CONN_BYTES_MAX,
	       "struct conn is what every idle connection costs: keep exchange state in c->x");

/*
 * Puts the connection on the timer list its state calls for. Called once per event, where
 * events enter a connection (accept, its completions, its timer, a buffer-wait retry), never
 * from inside the state machine: every completion is progress and re-arms a progress timer.
 */
void conn_timer_update(struct worker *w, struct conn *c)
{
	const struct cfg_timeouts *t = &w->snap->cfg.timeouts;
	enum tclass cls;
	uint32_t ms;

	if (!c->active)
		return;
	conn_check(w, c);
	switch (conn_phase(c)) {
	case CP_CLOSING:
		return;
	case CP_LINGER:
		cls = T_LINGER;
		ms = t->linger_ms;
		break;
	case CP_TUNNEL:
		cls = T_TUNNEL;
		ms = t->tunnel_idle_ms;
		break;
	case CP_DISCARD:
		cls = T_BODY;
		ms = t->client_body_ms;
		break;
	case CP_HEAD:
		if (conn_head_partial(c) || c->requests == 0) {
			cls = T_HEADER;
			ms = t->client_header_ms;
		} else {
			cls = T_IDLE;
			ms = t->client_idle_ms;
		}
		break;
	case CP_EXCHANGE:
	default:
		if (c->rs_state == RS_CONNECT) {
			cls = T_CONNECT;
			ms = t->upstream_connect_ms;
		} else if (c->x->resp.out.busy || c->req_state == RQ_BODY) {
			cls = T_BODY;
			ms = t->client_body_ms;
		} else {
			cls = T_UPSTREAM;
			ms = t->upstream_response_ms;
		}
		break;
	}
	/* The header deadline is absolute: a slow drip of bytes must not extend it. */
	if ((cls == T_HEADER || cls == T_LINGER || cls == T_CONNECT) && c->t.tclass == cls)
		return;
	timer_set(w, cidx(w, c), &c->t, cls, ms);
}

void conn_check(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	const struct exchange *x = c->x;

	/* At most one each of receive, send, EOF poll and cancel. */
	CONN_BUG_ON_HOT(w, c, c->inflight > 4);
	CONN_BUG_ON_HOT(w, c, conn_has(c, CF_RECV_ARMED) && conn_has(c, CF_RECV_WANTED));
	CONN_BUG_ON_HOT(w, c, u && (u->owner != cidx(w, c) || u->owner_gen != c->gen));
	/* The exchange slot is this connection's alone, and an upstream is one exchange's. */
	CONN_BUG_ON_HOT(w, c, x && (x->owner != cidx(w, c) || x->owner_gen != c->gen));
	CONN_BUG_ON_HOT(w, c, u && !x);
	switch (conn_phase(c)) {
	case CP_HEAD:
		/*
		 * A slot iff a byte of the next head (or PROXY header) is held, or the last
		 * exchange's close waits for its close_notify to be sent (conn_close_graceful).
		 */
		CONN_BUG_ON_HOT(w, c,
				!x != !conn_head_partial(c) &&
					!(c->tls && (conn_tls(w, c)->flags & CT_CLOSE_WAIT)));
		CONN_BUG_ON_HOT(w, c,
				x && (u || x->req.head != NIL || x->resp.head != NIL ||
				      x->resp.accum.hbuf != NIL));
		break;
	case CP_DISCARD:
		CONN_BUG_ON_HOT(w, c,
				!x || u || x->req.head != NIL || x->resp.head != NIL ||
					x->resp.accum.hbuf != NIL);
		break;
	case CP_EXCHANGE:
		CONN_BUG_ON_HOT(w, c, !x);
		CONN_BUG_ON_HOT(w, c, c->rs_state != RS_DONE && !u);
		CONN_BUG_ON_HOT(w, c, c->rs_state == RS_CONNECT && u->connected);
		break;
	case CP_TUNNEL:
		CONN_BUG_ON_HOT(w, c,
				!x || !u || conn_has(c, CF_KEEPALIVE) ||
					conn_has(c, CF_UPS_REUSABLE));
		break;
	case CP_LINGER:
		/* The slot, if any, stays until teardown: a send of it may still be in flight. */
		CONN_BUG_ON_HOT(w, c,
				(u && !u->closing) || (x && (x->req.accum.hbuf != NIL ||
							     x->resp.accum.hbuf != NIL)));
		break;
	case CP_CLOSING:
		CONN_BUG_ON_HOT(w, c, c->t.tclass != T_NONE);
		break;
	}
}

int conn_show(struct worker *w, const struct conn *c, char *buf, size_t n)
{
	static const char *const phase[] = { "head",   "exchange", "discard",
					     "tunnel", "linger",   "closing" };
	static const char *const rq[] = { "head", "body", "done" };
	static const char *const rs[] = { "none", "connect", "head", "body", "done", "tunnel" };
	const struct ups *u = c->ups == NIL ? NULL : &w->ups[c->ups];
	static const struct exchange none = {
		.req = { .head = NIL, .accum = { .hbuf = NIL } },
		.resp = { .head = NIL, .accum = { .hbuf = NIL } },
	};
	const struct exchange *x = c->x ? c->x : &none;
	int k;

	k = snprintf(
		buf, n,
		"conn %u gen %u fd %d phase %s req %s resp %s inflight %u timer %u "
		"requests %u exchange %d backend %u attempts %u fail %u hbuf req %d resp %d "
		"accum req %d resp %d in %u flags%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s",
		(unsigned)(c - w->conns), c->gen, c->fd, phase[conn_phase(c)],
		c->req_state < 3 ? rq[c->req_state] : "?", c->rs_state < 6 ? rs[c->rs_state] : "?",
		c->inflight, c->t.tclass, c->requests, c->x ? (int)xidx(w, c->x) : -1, x->backend,
		x->attempts, x->fail, (int)x->req.head, (int)x->resp.head, (int)x->req.accum.hbuf,
		(int)x->resp.accum.hbuf, c->in.len, conn_has(c, CF_RECV_ARMED) ? " recv" : "",
		conn_has(c, CF_RECV_WANTED) ? " recv-wanted" : "",
		conn_has(c, CF_POLL_ARMED) ? " poll" : "", x->resp.out.busy ? " send-client" : "",
		x->req.out.busy ? " send-ups" : "", conn_has(c, CF_CANCEL_SENT) ? " cancel" : "",
		conn_has(c, CF_EOF) ? " eof" : "", conn_has(c, CF_RESET_CLOSE) ? " rst" : "",
		conn_has(c, CF_KEEPALIVE) ? " keepalive" : "",
		conn_has(c, CF_CLOSE_AFTER) ? " close-after" : "",
		conn_has(c, CF_RESP_STARTED) ? " resp-started" : "",
		conn_has(c, CF_UPS_BYTE_SEEN) ? " ups-byte" : "",
		conn_has(c, CF_UPS_REUSABLE) ? " ups-reusable" : "",
		conn_has(c, CF_REQ_HEAD_SENT) ? " head-sent" : "",
		conn_has(c, CF_NO_POOL) ? " no-pool" : "",
		conn_has(c, CF_END_PENDING) ? " end-pending" : "",
		conn_has(c, CF_LOGGED) ? " logged" : "", conn_has(c, CF_PP_WAIT) ? " pp-wait" : "");
	if (u && k >= 0 && (size_t)k < n)
		k += snprintf(buf + k, n - (size_t)k,
			      "; ups %u gen %u fd %d inflight %u%s%s%s%s in %u",
			      (unsigned)(u - w->ups), u->gen, u->fd, u->inflight,
			      u->connected ? " connected" : "", u->recv_armed ? " recv" : "",
			      u->closing ? " closing" : "", u->reused ? " reused" : "", u->in.len);
	return k;
}

void conn_bug(struct worker *w, const struct conn *c, const char *what, const char *file, int line)
{
	char b[768];

	conn_show(w, c, b, sizeof(b));
	log_err("worker %u: %s", w->id, b);
	bug_fail(what, file, line);
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

	if (conn_has(c, CF_POLL_ARMED) || conn_has(c, CF_CLOSING))
		return;
	if (conn_has(c, CF_EOF)) {
		if (io_uring_sq_space_left(&w->ring) < 2)
			io_uring_submit(&w->ring); /* the timeout and its poll in one submission */
		sqe = worker_sqe(w);
		io_uring_prep_timeout(sqe, &recheck, 0, 0);
		sqe->flags |= IOSQE_IO_HARDLINK;
		sqe->user_data = ud_pack(OP_NONE, 0, 0);
	}
	sqe = worker_sqe(w);
	io_uring_prep_poll_add(sqe, c->fd,
			       conn_has(c, CF_EOF) ? POLLERR | POLLHUP
						   : POLLRDHUP | POLLERR | POLLHUP);
	sqe->user_data = ud_pack(OP_C_POLL, cidx(w, c), c->gen);
	c->flags |= CF_POLL_ARMED;
	c->inflight++;
}

static void reject_full(struct worker *w, int fd, uint32_t li)
{
	char out[256];
	int n = http_error_response(out, sizeof(out), 503, true);

	/*
	 * Rare overload path: one non-blocking send of a canned 503, then close. Not on a TLS
	 * listener: a 503 in clear would only be a bad record to a TLS client.
	 */
	if ((li >= CFG_LISTEN_MAX || !w->snap->tls[li]) && n > 0 &&
	    send(fd, out, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) > 0)
		count_status(w, 503);
	STAT_ADD(w->stats->conns_rejected, 1);
	close(fd);
}

/*
 * The file descriptors this worker holds for connections, counted against w->fd_budget: its
 * client connections, its upstream ones (in use, pooled, closing) and the accepted sockets
 * waiting for the end of the batch. One closed to make room counts until its fd is closed.
 */
static uint32_t fd_used(const struct worker *w)
{
	return w->conns_active + w->ups_open + w->accept_defer_n;
}

/*
 * One more descriptor for an upstream connect (upstream.c): true when the budget has room or
 * room was made. At the budget an idle pooled upstream connection (to any backend) is closed
 * first: nothing waits on it. Else an idle client connection is, the longest idle first; the
 * connect goes ahead and the client connection is closed at the end of the batch (its next
 * request may be in a completion still queued), up to FD_BORROW_MAX per batch (main.c keeps
 * them out of the budget), beyond that at once. false: nothing idle to close.
 */
bool conn_fd_room(struct worker *w)
{
	if (fd_used(w) < w->fd_budget || ups_pool_shed(w, 1))
		return true;
	if (w->fd_owed < FD_BORROW_MAX && reclaim_find(w, w->shed_want) != NIL) {
		w->fd_owed++;
		w->shed_want++;
		return true;
	}
	return conn_reclaim(w);
}

void conn_accept(struct worker *w, int fd, uint32_t li)
{
	if (w->stopping) {
		conn_accept_now(w, fd, li);
		return;
	}
	/* connections_per_core is the operator's cap: beyond it, 503. */
	if (w->conns_active + w->accept_defer_n >= w->conn_limit) {
		reject_full(w, fd, li);
		return;
	}
	/*
	 * At the fd budget an idle pooled upstream connection makes room at once; an idle client
	 * connection only once every completion of this batch is handled: an "idle" connection
	 * may have a request in a receive completion still queued behind this accept.
	 */
	if (fd_used(w) >= w->fd_budget && !ups_pool_shed(w, 1)) {
		if (w->accept_defer_n < ACCEPT_DEFER_MAX) {
			w->accept_defer_li[w->accept_defer_n] = (uint8_t)li;
			w->accept_defer[w->accept_defer_n++] = fd;
			return;
		}
		reject_full(w, fd, li);
		return;
	}
	conn_accept_now(w, fd, li);
}

void conn_accept_deferred(struct worker *w)
{
	uint32_t n = w->accept_defer_n;

	if (w->shed_want) {
		conn_shed_idle(w, w->shed_want);
		w->shed_want = 0;
	}
	w->fd_owed = 0;
	for (uint32_t i = 0; i < n; i++) {
		int fd = w->accept_defer[i];

		w->accept_defer_n = n - i - 1; /* the ones still waiting hold their fds */
		/* The slot of the connection closed for it frees once its ops complete. */
		if (fd_used(w) >= w->fd_budget &&
		    (w->stopping || (!ups_pool_shed(w, 1) && !conn_reclaim(w))))
			reject_full(w, fd, w->accept_defer_li[i]);
		else
			conn_accept_now(w, fd, w->accept_defer_li[i]);
	}
	w->accept_defer_n = 0;
}

/*
 * The text form of c->peer (X-Forwarded-For, hash-client, the access log) into ip[46]: made
 * when an exchange begins (in its slot), not kept by an idle connection.
 */
static void conn_peer_text(const struct conn *c, char *ip)
{
	if (c->peer.v4.sin_family == AF_INET) {
		/*
		 * By hand: glibc's inet_ntop formats an IPv4 address through sprintf, about 1 % of
		 * a small request's CPU when done once per exchange.
		 */
		const uint8_t *a = (const uint8_t *)&c->peer.v4.sin_addr;
		char *p = ip;

		for (int i = 0; i < 4; i++) {
			if (a[i] >= 100)
				*p++ = (char)('0' + a[i] / 100);
			if (a[i] >= 10)
				*p++ = (char)('0' + a[i] / 10 % 10);
			*p++ = (char)('0' + a[i] % 10);
			*p++ = i < 3 ? '.' : '\0';
		}
		return;
	}
	if (c->peer.v6.sin6_family == AF_INET6)
		inet_ntop(AF_INET6, &c->peer.v6.sin6_addr, ip, 46);
	else
		strcpy(ip, "unknown");
}

static void conn_accept_now(struct worker *w, int fd, uint32_t li)
{
	struct conn *c;
	uint32_t idx, gen;
	socklen_t sl;

	/* In an upgrade's drain a connection accepted late is still served (with close). */
	if (w->conn_free == NIL || (w->stopping && !w->d->handover)) {
		reject_full(w, fd, li);
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
	c->in.bid = -1;
	c->in.hbuf = NIL;
	c->t.prev = c->t.next = NIL;
	sl = sizeof(c->peer);
	if (getpeername(fd, (struct sockaddr *)&c->peer, &sl) != 0)
		c->peer.v4.sin_family = AF_UNSPEC;
	if (li < w->listen_n && w->listen_pp[li])
		c->flags |= CF_PP_WAIT;
	w->conns_active++;
	STAT_ADD(w->stats->conns_accepted, 1);
	STAT_SET(w->stats->conns_active, w->conns_active);
	steer_conn_opened(w->sc);
	/* A TLS listener's (in the snapshot, so a reload's certificates apply to new ones). */
	if (li < CFG_LISTEN_MAX && w->snap->tls[li] &&
	    ctls_start(w, c, tls_server_ctx(w->snap->tls[li])) < 0) {
		STAT_ADD(w->stats->tls_failures[TLS_FAIL_NOMEM], 1);
		conn_abort(w, c);
		return;
	}
	conn_arm_recv(w, c);
	conn_timer_update(w, c);
}

/*
 * Closes the longest-idle client connection that carries no request in flight: the head of
 * the keep-alive idle timer list (FIFO: the longest idle first), else the oldest connection
 * that has not sent a byte (on the head-deadline list; a few are looked at, not all).
 */
static bool reclaimable(struct worker *w, const struct conn *c)
{
	int unread = 0;

	/*
	 * Bytes in the socket not read yet are a request on its way: not idle after all. Nor is
	 * one whose request is being handled (its timer moves only after the event).
	 */
	return !conn_has(c, CF_CLOSING) && c->req_state == RQ_HEAD && c->rs_state == RS_NONE &&
	       !conn_head_partial(c) && !ctls_busy(w, c) && ioctl(c->fd, FIONREAD, &unread) == 0 &&
	       unread == 0;
}

/* The reclaimable connection after the first skip ones, in the order conn_reclaim takes them. */
static uint32_t reclaim_find(struct worker *w, uint32_t skip)
{
	uint32_t i, n = 0;

	for (i = w->thead[T_IDLE]; i != NIL && n < 64; i = w->conns[i].t.next, n++)
		if (reclaimable(w, &w->conns[i]) && skip-- == 0)
			return i;
	n = 0;
	for (i = w->thead[T_HEADER]; i != NIL && n < 64; i = w->conns[i].t.next, n++)
		if (w->conns[i].requests == 0 && reclaimable(w, &w->conns[i]) && skip-- == 0)
			return i;
	return NIL;
}

static bool conn_reclaim(struct worker *w)
{
	uint32_t i = reclaim_find(w, 0);

	if (i == NIL)
		return false;
	STAT_ADD(w->stats->conns_reclaimed, 1);
	w->conns[i].flags &= ~CF_LINGERING;
	conn_abort(w, &w->conns[i]);
	return true;
}

uint32_t conn_shed_idle(struct worker *w, uint32_t n)
{
	uint32_t done = 0;

	/* Idle upstream connections first: closing them costs no client anything. */
	done = ups_pool_shed(w, n);
	while (done < n && conn_reclaim(w))
		done++;
	return done;
}

void conn_try_finish(struct worker *w, struct conn *c)
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
	ctls_free(w, c);
	inbuf_release(w, &c->in);
	conn_x_detach(w, c);
	if (conn_has(c, CF_RESET_CLOSE)) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(c->fd);
	if (c->req_state != RQ_HEAD || c->rs_state != RS_NONE)
		steer_req_ended(w->sc);
	steer_conn_closed(w->sc, c->requests > 0);
	c->active = false;
	c->gen++;
	w->conns_active--;
	STAT_SET(w->stats->conns_active, w->conns_active);
	w->conn_next_free[idx] = w->conn_free;
	w->conn_free = idx;
}

/* Abortive close: cancel everything in flight, release once all completions are in. */
void conn_abort(struct worker *w, struct conn *c)
{
	/* A response cut short (upstream failure, timeout): its one log line, status as sent. */
	if (!conn_has(c, CF_CLOSING) && conn_has(c, CF_RESP_STARTED) && exchange_in_flight(c))
		conn_log(w, c, c->x->resp_code);
	c->flags |= CF_CLOSING;
	c->flags &= ~CF_LINGERING;
	timer_clear(w, &c->t);
	exchange_abort_ups(w, c);
	if (c->inflight && !conn_has(c, CF_CANCEL_SENT)) {
		c->flags |= CF_CANCEL_SENT;
		if (c->inflight == 1 && conn_has(c, CF_POLL_ARMED) &&
		    !conn_has(c, CF_RESET_CLOSE)) {
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
void conn_abort_reset(struct worker *w, struct conn *c)
{
	c->flags |= CF_RESET_CLOSE;
	ctls_abort(w, c); /* and over TLS no close_notify: the truncation stays visible */
	conn_abort(w, c);
}

/*
 * Takes an exchange slot for c (the first bytes of a request head or PROXY header arrived, or
 * corral answers it). false: every slot of the pool is in use (only possible beyond the
 * connection limit, in an upgrade's drain: conn-t.h, XSLOT_COUNT); the request gets a canned
 * 503, sent at once without a slot like the 503 beyond the connection limit at accept, and
 * the connection is closed.
 */
static bool conn_x_attach(struct worker *w, struct conn *c)
{
	struct exchange *x = xslot_get(w);
	char out[256];
	int n;

	if (x) {
		x->owner = cidx(w, c);
		x->owner_gen = c->gen;
		conn_peer_text(c, x->peer_ip);
		c->x = x;
		return true;
	}
	n = http_error_response(out, sizeof(out), 503, true);
	/* Not over TLS: a 503 in clear inside the session would only be a bad record. */
	if (!c->tls && n > 0 && send(c->fd, out, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) > 0)
		count_status(w, 503);
	STAT_ADD(w->stats->conns_rejected, 1);
	c->rej_reason = "no exchange slot free";
	c->rej_line = NULL;
	c->rej_len = c->in.len;
	conn_log(w, c, 503);
	c->rej_reason = NULL;
	c->rej_len = 0;
	c->flags &= ~CF_LINGERING;
	conn_abort(w, c);
	return false;
}

/* The exchange ended (or the connection did): its slot, and what it still holds, go back. */
static void conn_x_detach(struct worker *w, struct conn *c)
{
	struct exchange *x = c->x;

	if (!x)
		return;
	inbuf_release(w, &x->req.accum);
	inbuf_release(w, &x->resp.accum);
	hbuf_put(w, x->req.head);
	hbuf_put(w, x->resp.head);
	x->req.head = x->resp.head = NIL;
	c->x = NULL;
	xslot_put(w, x);
}

/* The exchange's request head was parsed and its log line is not written yet. */
static bool exchange_in_flight(const struct conn *c)
{
	return c->x && c->x->req.head != NIL && !conn_has(c, CF_LOGGED) && c->rs_state != RS_TUNNEL;
}

/*
 * The client closed or reset the connection while its exchange was in flight: close the
 * upstream (never pooled: the response is unread) and log status 499 (NGINX's "client closed
 * request") with the bytes actually sent. It counts as a 4xx response unless the response's
 * own status was counted already.
 */
void conn_client_gone(struct worker *w, struct conn *c)
{
	if (exchange_in_flight(c)) {
		if (!conn_has(c, CF_RESP_STARTED))
			count_status(w, 499);
		STAT_ADD(w->stats->client_aborts, 1);
		conn_log(w, c, 499);
	}
	conn_abort(w, c);
}

/* The client's EOF/RST poll completed with res (revents, or -errno). */
static void c_on_poll(struct worker *w, struct conn *c, int res)
{
	c->flags &= ~CF_POLL_ARMED;
	if (conn_has(c, CF_CLOSING)) {
		conn_try_finish(w, c);
		return;
	}
	/* Between requests, or in a tunnel, the reads see the EOF or the reset themselves. */
	if (res < 0 || !exchange_in_flight(c))
		return;
	c->flags |= CF_EOF; /* the client sends nothing more */
	if (res & (POLLERR | POLLHUP)) {
		conn_client_gone(w, c); /* a reset: no byte will reach the client any more */
		return;
	}
	/*
	 * The FIN follows whatever the client sent before it, which may still wait in the socket
	 * (or, over TLS, in records already read): a receive reads the rest of the body, or
	 * returns the EOF (conn_on_eof: 499 when the body is incomplete).
	 */
	if (c->req_state == RQ_BODY && !c->in.len && !c->x->req.out.busy)
		conn_arm_recv(w, c);
	/*
	 * A FIN alone is a client that gave up, or one that half-closed and still reads
	 * (shutdown(SHUT_WR) after its request). Ask: an interim 100 is harmless to an HTTP/1.1
	 * client that still reads (RFC 9110 15.2: clients parse unexpected 1xx), and a client
	 * that closed answers it with a reset, which the re-armed poll sees within a round trip.
	 * Once the response has started its own bytes do the asking; an HTTP/1.0 client cannot
	 * be sent a 1xx and is assumed to still read.
	 */
	if (!conn_has(c, CF_PROBED) && !conn_has(c, CF_RESP_STARTED) && !c->x->resp.out.busy &&
	    c->client_minor == 1 && c->req_state == RQ_DONE) {
		static const char probe[] = "HTTP/1.1 100 Continue\r\n\r\n";

		c->flags |= CF_PROBED; /* once: the re-armed poll fires again while the FIN stays */
		sendq_reset(&c->x->resp.out);
		sendq_add(&c->x->resp.out, probe, sizeof(probe) - 1);
		c->x->x_bytes_out += sizeof(probe) - 1;
		conn_send(w, c);
	}
	c_arm_poll(w, c);
}

/*
 * Graceful close after the last response byte was sent: shut our write side and read and
 * discard what the client still sends for a moment, so that unread request bytes do not make
 * the kernel reset the connection before the client has read our response.
 */
void conn_close_graceful(struct worker *w, struct conn *c)
{
	int unread = 0;

	exchange_abort_ups(w, c);
	/* Over TLS, close_notify goes first: this goes on once it is sent. */
	if (c->tls && ctls_close_notify(w, c))
		return;
	/*
	 * Linger only when the client may still be sending: bytes already received but not
	 * processed, or bytes waiting in the socket. A client that is done sending gets our FIN
	 * and the slot is freed at once.
	 */
	if (c->in.len == 0 && (!c->x || c->x->req.accum.len == 0) && c->req_state != RQ_BODY &&
	    ioctl(c->fd, FIONREAD, &unread) == 0 && unread == 0)
		c->flags |= CF_EOF;
	if (conn_has(c, CF_EOF)) {
		shutdown(c->fd, SHUT_WR);
		conn_abort(w, c);
		return;
	}
	shutdown(c->fd, SHUT_WR);
	c->flags |= CF_CLOSING;
	c->flags |= CF_LINGERING;
	inbuf_release(w, &c->in);
	if (c->x) {
		inbuf_release(w, &c->x->req.accum);
		inbuf_release(w, &c->x->resp.accum);
	}
	conn_arm_recv(w, c);
}

static void linger_recv(struct worker *w, struct conn *c, int res, int32_t bid)
{
	buf_put(w, bid);
	if (res > 0 && conn_has(c, CF_LINGERING) &&
	    c->linger_bytes + (uint32_t)res < w->snap->cfg.limits.linger_bytes_max) {
		c->linger_bytes += (uint32_t)res;
		conn_arm_recv(w, c);
		return;
	}
	c->flags &= ~CF_LINGERING;
	conn_abort(w, c);
}

/* One access-log line for the exchange that just ended with status. */
void conn_log(struct worker *w, struct conn *c, int status)
{
	const struct exchange *x = c->x;
	struct alog_entry e;
	struct timespec ts;
	char ip[46];

	c->flags |= CF_LOGGED;
	if (w->alog_fd < 0)
		return;
	memset(&e, 0, sizeof(e));
	clock_gettime(CLOCK_REALTIME, &ts);
	e.time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
	e.core = w->id;
	if (x) {
		e.client = x->peer_ip;
	} else {
		conn_peer_text(c, ip);
		e.client = ip;
	}
	if (x && x->req.head != NIL) {
		/* The serialised head outlives the client's buffers; the parse does not. */
		alog_entry_set_head(&e, hbuf_addr(w, x->req.head), x->req.head_len);
		if (x->attempts)
			e.upstream = w->d->backends[x->backend].addr;
	} else if (c->rej_reason) {
		alog_rejected_line(c->rej_line, c->rej_len, &e);
	}
	e.reason = c->rej_reason;
	if (c->tls && conn_tls(w, c)->t.state != TLS_HANDSHAKE) {
		e.tls_version = tls_version(&conn_tls(w, c)->t);
		e.tls_cipher = tls_cipher(&conn_tls(w, c)->t);
	}
	e.version_minor = c->client_minor;
	e.status = (uint16_t)status;
	if (x) {
		e.bytes_in = x->req_in_head_len + x->req.body.total;
		e.bytes_out = x->x_bytes_out;
		e.duration_us = x->req_start_ns ? (now_ns() - x->req_start_ns) / 1000 : 0;
	}
	if ((!x || x->req.head == NIL) && c->rej_reason) {
		/* Rejected before an exchange began: nothing of a previous one applies. */
		e.bytes_in = c->rej_len;
		e.duration_us = 0;
	}
	if (alog_append(&w->alog, &e) == 1)
		worker_log_flush(w);
}

void conn_send_error(struct worker *w, struct conn *c, int status)
{
	uint32_t hb;
	int n;

	if (!c->x && !conn_x_attach(w, c))
		return; /* answered (a canned 503) and closing */
	c->flags |= CF_CLOSE_AFTER;
	c->flags &= ~CF_KEEPALIVE;
	c->req_state = RQ_DONE;
	exchange_abort_ups(w, c);
	c->rs_state = RS_DONE;
	if (conn_has(c, CF_RESP_STARTED) || conn_has(c, CF_CLOSING)) {
		conn_abort(w, c);
		return;
	}
	if (c->x->resp.out.busy) {
		c->x->pending_status = (uint16_t)status;
		return;
	}
	hb = c->x->resp.head != NIL ? c->x->resp.head : hbuf_get(w);
	if (hb == NIL) {
		conn_abort(w, c);
		return;
	}
	c->x->resp.head = hb;
	n = http_error_response(hbuf_addr(w, hb), w->hbuf_size, status, true);
	BUG_ON(n <= 0);
	if (conn_has(c, CF_REQ_HEAD)) {
		/* RFC 9110 9.3.2: a response to HEAD ends at its head (Content-Length stays). */
		const char *h = hbuf_addr(w, hb), *e = memmem(h, (size_t)n, "\r\n\r\n", 4);

		BUG_ON(!e);
		n = (int)(e + 4 - h);
	}
	c->flags |= CF_RESP_STARTED;
	c->x->resp_code = (uint16_t)status;
	count_status(w, status);
	c->x->x_bytes_out += (uint64_t)n;
	conn_log(w, c, status);
	sendq_reset(&c->x->resp.out);
	sendq_add(&c->x->resp.out, hbuf_addr(w, hb), (size_t)n);
	conn_send(w, c);
}

/*
 * Answers a request corral rejects (a bad or over-limit head, a bad body): its access-log
 * line says what was read of it (head[0..n), when no exchange has begun) and why.
 */
void conn_req_reject(struct worker *w, struct conn *c, const char *head, uint32_t n, int status,
		     const char *reason)
{
	c->rej_line = head;
	c->rej_len = n;
	c->rej_reason = reason ? reason : http_status_text(status);
	if (c->x->req.head == NIL)
		c->x->x_bytes_out = 0;
	conn_send_error(w, c, status);
	c->rej_line = NULL;
	c->rej_len = 0;
	c->rej_reason = NULL;
}

static void req_reject_src(struct worker *w, struct conn *c, const struct inbuf *src, int status,
			   const char *reason)
{
	conn_req_reject(w, c, src && src->len ? src->base + src->off : NULL, src ? src->len : 0,
			status, reason);
}

/* Sets up the exchange for a parsed head at base; false if it was answered with an error. */
static bool req_begin(struct worker *w, struct conn *c, struct http_req *req, const char *base)
{
	const struct config *cfg = &w->snap->cfg;
	struct http_fwd fwd = { .client_ip = c->x->peer_ip, .proto = c->tls ? "https" : "http" };
	uint32_t hb;
	int n;

	c->requests++;
	c->flags &= ~CF_LOGGED;
	c->x->req_start_ns = now_ns();
	c->x->req_in_head_len = req->head_len;
	c->x->x_bytes_out = 0;
	STAT_ADD(w->stats->requests, 1);
	steer_req_started(w->sc, c->requests == 1);
	c->client_minor = req->version_minor;
	conn_put(c, CF_REQ_HEAD, req->is_head);
	conn_put(c, CF_REQ_IDEMPOTENT, req->is_idempotent);
	conn_put(c, CF_REQ_UPGRADE, req->upgrade);
	conn_put(c, CF_KEEPALIVE,
		 req->keep_alive && c->requests < cfg->limits.requests_per_connection &&
			 !w->stopping);
	c->flags &= ~(CF_CLOSE_AFTER | CF_RESP_STARTED | CF_UPS_BYTE_SEEN | CF_REQ_HEAD_SENT |
		      CF_END_PENDING | CF_NO_POOL);
	c->x->attempts = 0;
	c->x->fail = UF_NONE;
	tried_clear(&c->x->tried);
	c->x->resp_code = 0;
	if (cfg->balance == CFG_BALANCE_HASH_URI)
		c->x->hkey = XXH3_64bits(base + req->target.off, req->target.len);
	else if (cfg->balance == CFG_BALANCE_HASH_CLIENT)
		c->x->hkey = XXH3_64bits(c->x->peer_ip, strlen(c->x->peer_ip));

	hb = hbuf_get(w);
	if (hb == NIL) {
		conn_req_reject(w, c, base, req->head_len, 503, "no head buffer free");
		return false;
	}
	n = http_req_serialize(req, base, &fwd, hbuf_addr(w, hb), w->hbuf_size);
	if (n < 0) {
		hbuf_put(w, hb);
		conn_req_reject(w, c, base, req->head_len, 431, "head too large to forward");
		return false;
	}
	c->x->req.head = hb;
	c->x->req.head_len = (uint32_t)n;
	http_body_init(&c->x->req.body, req->framing, req->content_length,
		       cfg->limits.body_bytes_max);
	/* Content-Length: 0 is forwarded as such, but there is no body to wait for. */
	if (req->framing == HTTP_BODY_NONE ||
	    (req->framing == HTTP_BODY_LENGTH && req->content_length == 0)) {
		c->x->req.body.done = true;
		c->req_state = RQ_DONE;
	} else {
		c->req_state = RQ_BODY;
	}
	return true;
}

/*
 * A connection on a proxy_protocol listener that did not begin with a valid PROXY header
 * (none, malformed, cut short, too slow): closed, nothing forwarded, nothing answered (a
 * balancer would not read an HTTP answer), counted, and logged with the reason.
 */
static void pp_fail(struct worker *w, struct conn *c, const char *reason)
{
	STAT_ADD(w->stats->proxy_protocol_errors, 1);
	c->rej_reason = reason;
	c->rej_line = NULL;
	c->rej_len = (c->x && c->x->req.accum.hbuf != NIL ? c->x->req.accum.len : 0) + c->in.len;
	conn_log(w, c, 400);
	c->rej_reason = NULL;
	conn_abort(w, c);
}

/*
 * The PROXY header a proxy_protocol listener's connection starts with, parsed from src (the
 * bytes so far, assembled in c->x->req.accum when they come in pieces; pp_parse bounds them by
 * the header's maximum, the client_header_ms deadline bounds the time). true: the header is
 * consumed and its source address is the client's from now on; false: more bytes are wanted
 * (a receive is armed) or the connection is closed.
 */
static bool pp_read(struct worker *w, struct conn *c, struct inbuf *src)
{
	struct pp_info pi;
	int r;

	r = pp_parse((const uint8_t *)src->base + src->off, src->len, &pi);
	if (r == 0) {
		if (!inbuf_head_keep(w, &c->x->req.accum, &c->in, src)) {
			pp_fail(w, c, "no head buffer for the PROXY header");
			return false;
		}
		conn_arm_recv(w, c);
		return false;
	}
	if (r < 0) {
		pp_fail(w, c,
			r == -EPROTO ? "no PROXY header"
				     : (r == -E2BIG ? "PROXY header too long"
						    : "malformed PROXY header"));
		return false;
	}
	c->flags &= ~CF_PP_WAIT;
	if (pi.has_addr) {
		/* TCP4/TCP6, or v2 PROXY over AF_INET/AF_INET6; LOCAL and UNKNOWN keep the socket's. */
		memcpy(&c->peer, &pi.src, pi.addr_len);
		memcpy(&c->local, &pi.dst, pi.addr_len);
		conn_peer_text(c, c->x->peer_ip);
	}
	inbuf_head_consume(w, &c->x->req.accum, &c->in, src, (uint32_t)r);
	return true;
}

/* Parses the next request head from c->in / c->x->req.accum and starts its exchange. */
static void req_process(struct worker *w, struct conn *c)
{
	struct http_limits lim;
	struct http_req req;
	struct inbuf *src;
	int r;

	BUG_ON(c->req_state != RQ_HEAD || c->rs_state != RS_NONE);
	/* The first bytes of a head (or of a PROXY header): the exchange begins here. */
	if (!c->x && !conn_x_attach(w, c))
		return;
	limits_of(w, &lim);
	req.hdr = w->hdr_scratch; /* http_req_parse clears the rest */
	req.hdr_cap = w->hdr_cap;

again:
	src = inbuf_head_src(w, &c->x->req.accum, &c->in);
	if (!src && conn_has(c, CF_PP_WAIT)) {
		pp_fail(w, c, "PROXY header over the buffer");
		return;
	}
	if (!src) {
		req_reject_src(w, c, &c->x->req.accum, 431, "request head over the buffer");
		return;
	}
	if (src->len == 0) {
		/* Nothing of a head after all (a PROXY header alone): idle again, no slot. */
		inbuf_release(w, &c->in);
		conn_x_detach(w, c);
		conn_arm_recv(w, c);
		return;
	}
	if (conn_has(c, CF_PP_WAIT)) {
		if (!pp_read(w, c, src))
			return;
		if (c->tls) {
			/* The TLS stream follows: no byte of a head yet, so no exchange slot. */
			conn_x_detach(w, c);
			ctls_after_proxy_header(w, c); /* what followed is the TLS stream */
			return;
		}
		goto again; /* what followed the header is the start of the request */
	}
	/* Known before the head is complete, so that an error answer to a HEAD has no body. */
	conn_put(c, CF_REQ_HEAD, src->len >= 5 && memcmp(src->base + src->off, "HEAD ", 5) == 0);
	r = http_req_parse(&req, src->base + src->off, src->len, &lim);
	if (r == -EAGAIN) {
		if (!inbuf_head_keep(w, &c->x->req.accum, &c->in, src)) {
			conn_send_error(w, c, 503);
			return;
		}
		conn_arm_recv(w, c);
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
	inbuf_head_consume(w, &c->x->req.accum, &c->in, src, (uint32_t)r);
	c_arm_poll(w, c);
	exchange_connect(w, c);
}

void conn_exchange_done(struct worker *w, struct conn *c)
{
	/*
	 * Stopping for an upgrade, a response that announced keep-alive leaves the connection
	 * open: the client may send its next request at once, which is then answered with
	 * Connection: close (closing now could cut that request off).
	 */
	if (!conn_has(c, CF_KEEPALIVE) || conn_has(c, CF_CLOSE_AFTER) ||
	    (w->stopping && !w->d->handover)) {
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
		req_process(w, c); /* pipelined: the slot goes on to the next exchange */
	} else {
		/* Idle keep-alive: the exchange's slot goes back to the pool. */
		inbuf_release(w, &c->in);
		conn_x_detach(w, c);
		/*
		 * Even after a FIN the EOF poll saw (CF_EOF): a request pipelined before it may
		 * still wait in the socket (or, over TLS, in its records). The receive reads it,
		 * or returns the EOF and the connection closes (conn_on_eof).
		 */
		conn_arm_recv(w, c);
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

	while (c->in.len && !c->x->req.body.done) {
		k = http_body_decode(&c->x->req.body, c->in.base + c->in.off, c->in.len, &payload);
		if (k < 0) {
			conn_abort(w, c); /* the response is out: nothing left to answer */
			return;
		}
		c->in.off += (uint32_t)k;
		c->in.len -= (uint32_t)k;
	}
	if (c->x->req.body.done) {
		req_next(w, c);
		return;
	}
	inbuf_release(w, &c->in);
	conn_arm_recv(w, c); /* after a FIN too: the rest may wait in the socket (req_next) */
}

void conn_on_eof(struct worker *w, struct conn *c, int res)
{
	c->flags |= CF_EOF;
	if (conn_has(c, CF_PP_WAIT)) {
		/* A connect and close without a byte (a TCP check) is no error. */
		if (conn_head_partial(c))
			pp_fail(w, c, "PROXY header cut short");
		else
			conn_abort(w, c);
		return;
	}
	if (c->rs_state == RS_TUNNEL) {
		conn_close_graceful(w, c);
		return;
	}
	if (c->req_state == RQ_HEAD && c->rs_state == RS_NONE && conn_head_partial(c) && res == 0) {
		/* A partial head then EOF: nothing to answer to. */
		conn_abort(w, c);
		return;
	}
	conn_client_gone(w, c); /* logs 499 when an exchange was in flight */
}

void conn_on_input(struct worker *w, struct conn *c)
{
	if (c->req_state == RQ_BODY && c->rs_state == RS_NONE)
		req_discard(w, c);
	else if (c->rs_state == RS_TUNNEL || c->req_state == RQ_BODY)
		exchange_req_pump(w, c);
	else if (c->req_state == RQ_HEAD && c->rs_state == RS_NONE)
		req_process(w, c);
}

static void c_on_recv(struct worker *w, struct conn *c, int res, uint32_t flags)
{
	int32_t bid = cqe_bid(res, flags);

	c->flags &= ~CF_RECV_ARMED;
	if (bid >= 0)
		w->bufs_out++;
	if (conn_has(c, CF_CLOSING)) {
		if (conn_has(c, CF_LINGERING)) {
			linger_recv(w, c, res, bid);
			return;
		}
		buf_put(w, bid);
		conn_try_finish(w, c);
		return;
	}
	if (res == -ENOBUFS) {
		c->flags |= CF_RECV_WANTED;
		wait_push(w, cidx(w, c));
		return;
	}
	if (res <= 0) {
		buf_put(w, bid);
		conn_on_eof(w, c, res);
		return;
	}
	BUG_ON(bid < 0);
	BUG_ON(c->in.len != 0);
	if (c->tls && !conn_has(c, CF_PP_WAIT)) {
		ctls_on_recv(w, c, bid, res); /* ciphertext: decrypted into c->in */
		return;
	}
	inbuf_release(w, &c->in);
	c->in.base = buf_addr(w, (uint32_t)bid);
	c->in.off = 0;
	c->in.len = (uint32_t)res;
	c->in.bid = bid;
	STAT_ADD(w->stats->bytes_in, (uint64_t)res);
	conn_on_input(w, c);
}

static void c_on_send(struct worker *w, struct conn *c, int res)
{
	struct ups *u = conn_ups(w, c);
	struct sendq *q;

	/* Over TLS: ciphertext sent, reported here in plaintext bytes of q once all of it is. */
	if (c->tls && !ctls_on_send(w, c, &res))
		return;
	if (!c->x) {
		/* TLS bytes of no exchange (a handshake, an alert) that ended or failed. */
		if (conn_has(c, CF_CLOSING))
			conn_try_finish(w, c);
		else
			conn_client_gone(w, c);
		return;
	}
	q = &c->x->resp.out;
	q->busy = false;
	if (conn_has(c, CF_CLOSING)) {
		conn_try_finish(w, c);
		return;
	}
	if (res <= 0) {
		conn_client_gone(w, c);
		return;
	}
	if (!c->tls)
		STAT_ADD(w->stats->bytes_out, (uint64_t)res); /* TLS counts the ciphertext */
	if (!c->x->pending_status && c->x->resp_code)
		c->x->x_bytes_out += (uint64_t)res;
	if (!sendq_advance(q, (size_t)res)) {
		conn_send(w, c);
		return;
	}
	/*
	 * Drained: no iovec points into the response head buffer any more. A response that
	 * streams for long (a slow reader) need not keep a page of it; the next head (the final
	 * one after an interim, or an error) takes one again.
	 */
	if (c->x->resp.head != NIL) {
		hbuf_put(w, c->x->resp.head);
		c->x->resp.head = NIL;
	}
	if (c->x->pending_status) {
		int s = c->x->pending_status;

		c->x->pending_status = 0;
		conn_send_error(w, c, s);
		return;
	}
	if (conn_has(c, CF_CLOSE_AFTER) && (c->rs_state == RS_DONE || c->rs_state == RS_NONE) &&
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
	case OP_C_TLS:
		ctls_on_pump(w, c);
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
	if (conn_has(c, CF_RECV_WANTED)) {
		c->flags &= ~CF_RECV_WANTED;
		if (conn_has(c, CF_CLOSING) && !conn_has(c, CF_LINGERING))
			conn_try_finish(w, c);
		else
			conn_arm_recv(w, c);
	}
	if (conn_has(c, CF_UPS_RECV_WANTED)) {
		c->flags &= ~CF_UPS_RECV_WANTED;
		u = conn_ups(w, c);
		if (u && !conn_has(c, CF_CLOSING) && !u->closing)
			ups_arm_recv(w, u);
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
		partial = conn_head_partial(c);
		STAT_ADD(w->stats->timeouts, 1);
		ctls_on_header_timeout(w, c);
		if (conn_has(c, CF_PP_WAIT))
			pp_fail(w, c, "PROXY header timeout");
		else if (partial)
			req_reject_src(w, c,
				       c->x->req.accum.hbuf != NIL ? &c->x->req.accum : &c->in, 408,
				       "request head timeout");
		else
			conn_abort(w, c);
		break;
	case T_IDLE:
	case T_TUNNEL:
	case T_LINGER:
		c->flags &= ~CF_LINGERING;
		conn_abort(w, c);
		break;
	case T_BODY:
		STAT_ADD(w->stats->timeouts, 1);
		/* Discarding a body whose response is out: an unasked-for 408 would be misread. */
		if (!conn_has(c, CF_RESP_STARTED) && c->rs_state != RS_NONE)
			conn_send_error(w, c, 408);
		else
			conn_abort(w, c);
		break;
	case T_CONNECT:
	case T_UPSTREAM:
		STAT_ADD(w->stats->timeouts, 1);
		exchange_on_timeout(w, c, cls);
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

		if (!c->active || (conn_has(c, CF_CLOSING) && !force))
			continue;
		if (force) {
			c->flags &= ~CF_LINGERING;
			conn_abort(w, c);
			continue;
		}
		/*
		 * An upgrade's drain (docs/operations.md): a response head that announced
		 * keep-alive stays true to it, and an idle connection waits for its next request
		 * (answered with Connection: close) or for the grace period's end; closing it now
		 * could cut off a request already on its way.
		 */
		if (!w->d->handover || !conn_has(c, CF_RESP_STARTED))
			c->flags &= ~CF_KEEPALIVE;
		if (w->d->handover)
			continue;
		if (c->rs_state == RS_NONE && c->req_state == RQ_HEAD && !conn_head_partial(c) &&
		    !ctls_busy(w, c)) {
			/* Over TLS an idle connection ends cleanly: close_notify, then the close. */
			if (c->tls && c->requests)
				conn_close_graceful(w, c);
			else
				conn_abort(w, c);
		}
	}
}
