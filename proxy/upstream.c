/*
 * The upstream connection object (struct ups): slot allocation and release, connect, the
 * per-core idle pools per backend id (take, put, expire, shed), and its completions.
 *
 * Owns: w->ups, w->ups_free, w->ups_high, w->pool_head / pool_tail / pool_n, w->ups_open, and
 * each upstream fd. May touch: the owning connection only to hand it events (exchange_on_*,
 * and conn_try_finish / conn_timer_update when it is being torn down). Knows nothing of HTTP.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include "conn.h"

static struct ups *ups_alloc(struct worker *w)
{
	struct ups *u;
	uint32_t idx = w->ups_free;

	/* Released slots first (LIFO), else the next never-used one: untouched ones cost nothing. */
	if (idx != NIL) {
		u = &w->ups[idx];
		w->ups_free = u->pool_next;
	} else if (w->ups_high < w->ups_cap) {
		u = &w->ups[w->ups_high++];
	} else {
		return NULL;
	}
	u->fd = -1;
	u->inflight = 0;
	u->connected = u->recv_armed = u->closing = u->reused = u->pp_queued = false;
	u->pp_len = 0;
	u->in.bid = -1;
	u->in.hbuf = NIL;
	u->in.len = u->in.off = 0;
	u->pool_prev = u->pool_next = NIL;
	u->tls = 0;
	w->ups_open++;
	return u;
}

void ups_release(struct worker *w, struct ups *u)
{
	BUG_ON(u->inflight != 0);
	if (u->tls)
		utls_free(w, u);
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
void ups_close(struct worker *w, struct ups *u)
{
	if (u->tls && !u->closing)
		utls_close_notify(w, u);
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

static void ups_pool_unlink(struct worker *w, struct ups *u)
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

void ups_pool_put(struct worker *w, struct ups *u)
{
	uint16_t b = u->backend;
	uint32_t idx = uidx(w, u);

	u->owner = NIL;
	u->reused = false;
	/*
	 * Pooled only while the snapshot still maps the id to the address it was opened to. One
	 * that began with a PROXY header speaks for its client only: never pooled.
	 */
	if (u->closing || w->pool_n[b] >= w->snap->cfg.limits.upstream_idle_per_backend ||
	    w->stopping || w->snap->id_gen[b] != u->be_gen || u->pp_len ||
	    (u->tls && !utls_poolable(w, u))) {
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
	/*
	 * An idle connection keeps a receive armed: it notices the backend closing it, and it is
	 * the receive of the next response. The response before was read whole: nothing waits.
	 */
	ups_arm_recv_hint(w, u, true);
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
			ups_pool_unlink(w, u);
			ups_close(w, u);
		}
	}
}

void ups_pool_close_all(struct worker *w)
{
	for (uint32_t b = 0; b < BACKEND_IDS_MAX; b++) {
		while (w->pool_head[b] != NIL) {
			struct ups *u = &w->ups[w->pool_head[b]];

			ups_pool_unlink(w, u);
			ups_close(w, u);
		}
	}
}

struct ups *ups_pool_take(struct worker *w, uint16_t id, const struct cfg_backend *be)
{
	while (w->pool_head[id] != NIL) {
		struct ups *u = &w->ups[w->pool_head[id]];

		ups_pool_unlink(w, u);
		if (u->be_gen != w->snap->id_gen[id] || be->send_proxy) {
			/*
			 * Opened to an earlier address of this id: never reused for another. Nor,
			 * once a reload turned send_proxy on, one opened without a header.
			 */
			ups_close(w, u);
			continue;
		}
		BUG_ON(u->addr_len != be->addr.len || memcmp(&u->addr, &be->addr.ss, u->addr_len));
		return u;
	}
	return NULL;
}

uint32_t ups_pool_shed(struct worker *w, uint32_t n)
{
	uint32_t done = 0;

	for (uint32_t b = 0; b < CFG_BACKENDS_MAX && done < n; b++) {
		while (w->pool_tail[b] != NIL && done < n) {
			struct ups *u = &w->ups[w->pool_tail[b]];

			ups_pool_unlink(w, u);
			ups_close(w, u);
			done++;
		}
	}
	return done;
}

struct ups *ups_connect(struct worker *w, const struct cfg_backend *be, uint16_t id, int *err)
{
	struct io_uring_sqe *sqe;
	struct ups *u;
	int fd, one = 1;

	/* Within the fd budget, else as when socket() fails with EMFILE: a 503 for the request. */
	if (!conn_fd_room(w)) {
		*err = -EMFILE;
		worker_fd_warn(w, "upstream connect at the fd budget, nothing idle to close",
			       EMFILE);
		return NULL;
	}
	u = ups_alloc(w);
	if (!u) {
		*err = -ENOBUFS;
		return NULL;
	}
	fd = socket(be->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = -errno;
		ups_release(w, u);
		if (*err == -EMFILE || *err == -ENFILE)
			w->shed_want += 8; /* fds for the next ones, at the end of the batch */
		worker_fd_warn(w, "upstream socket", -*err);
		return NULL;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	u->fd = fd;
	u->backend = id;
	u->be_gen = w->snap->id_gen[id];
	memcpy(&u->addr, &be->addr.ss, be->addr.len);
	u->addr_len = be->addr.len;
	if (be->tls.on) {
		/* The snapshot's context for this backend entry (main.c builds one per entry). */
		*err = utls_start(w, u, w->snap->btls[be - w->snap->cfg.backends]);
		if (*err < 0) {
			ups_release(w, u);
			return NULL;
		}
	}
	sqe = worker_sqe(w);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&u->addr, u->addr_len);
	sqe->user_data = ud_pack(OP_U_CONNECT, uidx(w, u), u->gen);
	u->inflight++;
	return u;
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
	if (op == OP_U_RECV || op == OP_U_TLS)
		u->recv_armed = false;
	if (u->owner != NIL) {
		c = &w->conns[u->owner];
		CONN_BUG_ON(w, c, !c->active || c->gen != u->owner_gen || c->ups != idx);
	}
	if (!c) {
		/* A pooled TLS upstream may get a session ticket: it stays (the buffer is taken). */
		if (op == OP_U_RECV && u->tls && !u->closing && res > 0) {
			bool keep = utls_idle_recv(w, u, bid, res);

			bid = -1;
			if (keep)
				return;
		}
		/* Pooled or detached. Any completion on an idle pooled connection ends it. */
		buf_put(w, bid);
		if (u->closing) {
			if (u->inflight == 0)
				ups_release(w, u);
			return;
		}
		if (op == OP_U_RECV || op == OP_U_TLS) {
			ups_pool_unlink(w, u);
			ups_close(w, u);
		}
		return;
	}
	if (conn_has(c, CF_CLOSING) || u->closing) {
		/* Aborted: the connection finishes (and frees u) once every op has completed. */
		buf_put(w, bid);
		if (op == OP_U_SEND)
			c->x->req.out.busy = false;
		if (conn_has(c, CF_CLOSING))
			conn_try_finish(w, c);
		return;
	}
	switch (op) {
	case OP_U_CONNECT:
		if (u->tls && res >= 0)
			utls_on_connect(w, c, u);
		else
			exchange_on_connect(w, c, u, res);
		break;
	case OP_U_SEND:
		if (!u->tls || utls_on_send(w, c, u, &res))
			exchange_on_send(w, c, u, res);
		break;
	case OP_U_RECV:
		if (u->tls)
			utls_on_recv(w, c, u, res, flags);
		else
			exchange_on_recv(w, c, u, res, flags);
		break;
	case OP_U_TLS:
		utls_on_pump(w, c, u);
		break;
	case OP_U_CANCEL:
		break;
	default:
		BUG_ON(1);
	}
	conn_timer_update(w, c);
}
