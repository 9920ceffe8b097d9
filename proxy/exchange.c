/*
 * One request's exchange with a backend: pick, connect or reuse a pooled connection, retry,
 * the request body towards the upstream, the response head and body towards the client, the
 * tunnel after a 101, and the end of the exchange.
 *
 * Owns: c->ups while attached, rs_state and the exchange slot's fields (c->x: attempts,
 * tried, the response body and framing, req.out / resp.out while streaming; client.c takes
 * and returns the slot), the backend's in-flight count (be_active_*). May touch:
 * balance_pick and the per-core balance state, the backend statistics, upstream.c's object
 * API (pool take/put, connect, close). Goes back to the client side only through conn.h's
 * conn_* entry points.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include "conn.h"
#include "steer.h"

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

static void exchange_detach_ups(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	if (!u)
		return;
	c->ups = NIL;
	ups_close(w, u);
}

/* Cancels an attached upstream's ops; it stays attached until the connection finishes. */
void exchange_abort_ups(struct worker *w, struct conn *c)
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
	if (c->rs_state != RS_NONE)
		be_active_dec(w, c->x->backend);
}

/* The answer for a request whose every attempt failed: the last failure's. */
static int fail_status(const struct conn *c)
{
	return c->x->fail == UF_CONNECT_TIMEOUT ? 504 : 502;
}

/*
 * The PROXY header a send_proxy backend gets first on a new connection: from the client as
 * corral knows it (what a PROXY header of its own carried, if it came with one) to the address
 * it connected to (likewise).
 */
static void exchange_pp_header(struct conn *c, struct ups *u, uint8_t version)
{
	socklen_t sl = sizeof(c->local);
	int n;

	if (c->local.v4.sin_family == AF_UNSPEC &&
	    getsockname(c->fd, (struct sockaddr *)&c->local, &sl) != 0)
		c->local.v4.sin_family = AF_UNSPEC; /* then UNKNOWN / LOCAL */
	n = pp_build(u->pp_hdr, sizeof(u->pp_hdr), version, (const struct sockaddr *)&c->peer,
		     (const struct sockaddr *)&c->local);
	BUG_ON(n <= 0); /* the buffer holds the longest one */
	u->pp_len = (uint8_t)n;
}

/*
 * Picks a backend and gets a connection to it: pooled, or a new connect. retry: an earlier
 * attempt of this request failed (counted in upstream_retries when another one is made).
 */
static void exchange_attempt(struct worker *w, struct conn *c, bool retry)
{
	const struct snapshot *s = w->snap;
	uint32_t n_be = s->cfg.backends_n;
	uint32_t tries = s->cfg.limits.upstream_attempts_max;
	uint32_t max_attempts = n_be < tries ? (n_be ? n_be : 1) : tries;
	const struct cfg_backend *be;
	struct ups *u;
	int bi, err;
	uint16_t id;

	if (c->x->attempts >= max_attempts) {
		/* The last attempt's failure (already counted) stands. */
		conn_send_error(w, c, fail_status(c));
		return;
	}
	c->x->attempts++;
	bi = balance_pick(s, w->d->backends, &w->bal, w->now_ms, c->x->hkey, &c->x->tried);
	if (bi < 0 && c->x->attempts > 1) {
		/* A retry found no other backend: the last one's failure (already counted) stands. */
		c->x->attempts--;
		conn_send_error(w, c, fail_status(c));
		return;
	}
	if (bi < 0) {
		/* No backend is eligible: no backend's error, and none in the log (upstream: null). */
		c->x->attempts = 0;
		STAT_ADD(w->stats->no_backend, 1);
		conn_send_error(w, c, 503);
		return;
	}
	if (retry)
		STAT_ADD(w->stats->upstream_retries, 1);
	be = &s->cfg.backends[bi];
	id = (uint16_t)s->backend_id[bi];
	c->x->backend = id;
	tried_add(&c->x->tried, id);
	be_active_inc(w, id);

	/* A pooled connection, unless this is a retry after a pooled one failed. */
	u = conn_has(c, CF_NO_POOL) ? NULL : ups_pool_take(w, id, be);
	if (u) {
		u->owner = cidx(w, c);
		u->owner_gen = c->gen;
		u->reused = true;
		c->ups = uidx(w, u);
		STAT_ADD(w->stats->pool_hits, 1);
		c->rs_state = RS_HEAD;
		ups_arm_recv(w, u);
		exchange_req_pump(w, c);
		return;
	}
	STAT_ADD(w->stats->pool_misses, 1);
	u = ups_connect(w, be, id, &err);
	if (!u) {
		be_active_dec(w, id);
		conn_send_error(w, c, 503);
		return;
	}
	u->owner = cidx(w, c);
	u->owner_gen = c->gen;
	c->ups = uidx(w, u);
	c->rs_state = RS_CONNECT;
	if (be->send_proxy)
		exchange_pp_header(c, u, be->send_proxy);
}

void exchange_connect(struct worker *w, struct conn *c)
{
	exchange_attempt(w, c, false);
}

/* Gives up the upstream of a failed attempt, which stays counted until here. */
static void exchange_drop_attempt(struct worker *w, struct conn *c)
{
	be_active_dec(w, c->x->backend);
	exchange_detach_ups(w, c);
	c->flags &= ~CF_REQ_HEAD_SENT;
	c->rs_state = RS_NONE;
}

/* A pooled connection failed before any byte of its response: may it be retried fresh? */
static bool stale_retry_ok(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	return u && u->reused && conn_has(c, CF_REQ_IDEMPOTENT) && c->req_state == RQ_DONE &&
	       c->x->req.body.framing == HTTP_BODY_NONE && !c->x->req.out.busy &&
	       !conn_has(c, CF_NO_POOL);
}

/*
 * The one decision for a failed upstream (nginx's ngx_http_upstream_next): retry, answer, or
 * abort. Every failure but a retried stale pooled connection counts once in upstream_errors
 * and in the backend's errors.
 *
 *   UF_CONNECT, UF_CONNECT_TIMEOUT  next backend while attempts remain (a fresh connect that
 *                                   failed also parks the backend for this core), else 502 /
 *                                   504
 *   UF_STALE_POOLED                 idempotent, bodiless and fully sent: the same backend on a
 *                                   fresh connection, not counted as an attempt; else as below
 *   UF_RESET_BEFORE_HEAD, UF_BAD_HEAD  502
 *   UF_NO_HEAD_BUF                  503
 *   UF_SEND                         502 while no response byte was seen, else abort
 *   UF_BAD_BODY                     502 while the head is only queued, else abort
 *   UF_RESPONSE_TIMEOUT             504 before the response started, else abort
 *   UF_CUT_BODY                     abort
 *
 * An abort in the middle of a response body is an RST: for a close-delimited body (an
 * HTTP/1.0 client) a FIN would make the truncated body look complete. Once the response is
 * complete (or in a tunnel) the abort keeps its FIN.
 */
void exchange_fail(struct worker *w, struct conn *c, enum ups_fail why)
{
	struct ups *u = conn_ups(w, c);
	uint16_t b = c->x->backend;
	int status = 502;

	if (why == UF_STALE_POOLED && stale_retry_ok(w, c)) {
		/* Not a failed attempt: the same backend, on a fresh connection. */
		exchange_drop_attempt(w, c);
		c->x->attempts--;
		tried_del(&c->x->tried, b);
		c->flags |= CF_NO_POOL;
		exchange_attempt(w, c, true);
		return;
	}
	c->x->fail = (uint8_t)why;
	STAT_ADD(w->stats->upstream_errors, 1);
	STAT_ADD(w->bstats[b].errors, 1);
	switch (why) {
	case UF_CONNECT:
	case UF_CONNECT_TIMEOUT:
		if (u && !u->reused) {
			/*
			 * Passive health: this core skips the backend at once; the main thread
			 * (health_scan) publishes the park to every core at its next scan.
			 */
			STAT_SET(w->bstats[b].connect_fail_ms, w->now_ms);
			if (w->snap->cfg.timeouts.backend_park_ms)
				balance_park(&w->bal, b,
					     w->now_ms + w->snap->cfg.timeouts.backend_park_ms);
		}
		exchange_drop_attempt(w, c);
		exchange_attempt(w, c, true);
		return;
	case UF_NO_HEAD_BUF:
		status = 503;
		break;
	case UF_SEND:
		if (conn_has(c, CF_UPS_BYTE_SEEN) && !conn_has(c, CF_RESP_STARTED)) {
			conn_abort(w, c); /* a partial head came: nothing to answer with */
			return;
		}
		break;
	case UF_BAD_BODY:
		c->flags &= ~CF_UPS_REUSABLE;
		if (conn_has(c, CF_RESP_STARTED) && c->x->resp.out.iov_n &&
		    c->x->resp.head != NIL &&
		    c->x->resp.out.iov[0].iov_base == hbuf_addr(w, c->x->resp.head)) {
			/* The head is only queued, not sent: the client can still get a 502. */
			count_status_n(w, c->x->resp_code, -1);
			c->flags &= ~CF_RESP_STARTED;
			sendq_reset(&c->x->resp.out);
		}
		break;
	case UF_RESPONSE_TIMEOUT:
		status = 504;
		break;
	case UF_CUT_BODY:
		conn_abort_reset(w, c);
		return;
	default:
		break;
	}
	if (!conn_has(c, CF_RESP_STARTED))
		conn_send_error(w, c, status);
	else if (c->rs_state == RS_BODY)
		conn_abort_reset(w, c);
	else
		conn_abort(w, c);
}

/* Sends what the request direction has ready (head, then body) to the upstream. */
void exchange_req_pump(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);
	struct sendq *q = &c->x->req.out;
	size_t payload = 0;
	ssize_t k;
	char *p;

	if (conn_has(c, CF_CLOSING) || !u || !u->connected || q->busy || u->closing)
		return;
	sendq_reset(q);
	if (u->pp_len && !u->pp_queued) {
		sendq_add(q, u->pp_hdr, u->pp_len);
		u->pp_queued = true;
	}
	if (!conn_has(c, CF_REQ_HEAD_SENT)) {
		sendq_add(q, hbuf_addr(w, c->x->req.head), c->x->req.head_len);
		c->flags |= CF_REQ_HEAD_SENT;
	}
	if (c->rs_state == RS_TUNNEL) {
		if (c->in.len) {
			sendq_add(q, c->in.base + c->in.off, c->in.len);
			c->in.off += c->in.len;
			c->in.len = 0;
		}
	} else if (c->req_state == RQ_BODY && c->in.len) {
		p = c->in.base + c->in.off;
		k = http_body_decode(&c->x->req.body, p, c->in.len, &payload);
		if (k < 0) {
			STAT_ADD(w->stats->parse_errors, 1);
			conn_req_reject(w, c, NULL, 0, k == -EFBIG ? 413 : 400,
					k == -EFBIG ? "body over the limit"
						    : "invalid body framing");
			return;
		}
		c->in.off += (uint32_t)k;
		c->in.len -= (uint32_t)k;
		if (c->x->req.body.framing == HTTP_BODY_CHUNKED)
			sendq_add_chunk(q, c->x->req.chunk_hdr, p, payload, c->x->req.body.done);
		else
			sendq_add(q, p, payload);
		if (c->x->req.body.done)
			c->req_state = RQ_DONE;
	}
	if (q->iov_n) {
		ups_send(w, c, u);
		return;
	}
	/* Nothing to send: the request direction wants more client bytes. */
	if (c->req_state == RQ_BODY || c->rs_state == RS_TUNNEL) {
		if (c->in.len == 0) {
			inbuf_release(w, &c->in);
			/*
			 * A FIN the EOF poll saw (CF_EOF) comes after the bytes sent before it: the
			 * rest of the body may still wait in the socket (or, over TLS, in records
			 * already read). The receive reads it, or returns the EOF (conn_on_eof: 499).
			 */
			if (!conn_has(c, CF_EOF) || c->rs_state != RS_TUNNEL)
				conn_arm_recv(w, c);
		}
	}
}

static void tunnel_start(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	c->rs_state = RS_TUNNEL;
	c->req_state = RQ_DONE;
	c->flags &= ~CF_KEEPALIVE;
	c->flags &= ~CF_UPS_REUSABLE;
	/* Client bytes already read after the request head go first. */
	if (c->in.len) {
		exchange_req_pump(w, c);
	} else if (!c->x->req.out.busy) {
		inbuf_release(w, &c->in);
		conn_arm_recv(w, c);
	}
	(void)u;
}

/* After a 101: what the upstream sent goes to the client as it is. */
static void resp_tunnel_pump(struct worker *w, struct conn *c, struct ups *u)
{
	struct sendq *q = &c->x->resp.out;

	if (u->in.len) {
		sendq_add(q, u->in.base + u->in.off, u->in.len);
		u->in.off += u->in.len;
		u->in.len = 0;
		conn_send(w, c);
	} else {
		inbuf_release(w, &u->in);
		ups_arm_recv(w, u);
	}
}

/* Drops a parsed head of n bytes from src (an interim response that is not forwarded). */
static void resp_skip_head(struct worker *w, struct conn *c, struct inbuf *src, int n)
{
	src->off += (uint32_t)n;
	src->len -= (uint32_t)n;
	if (src == &c->x->resp.accum && src->len == 0)
		inbuf_release(w, &c->x->resp.accum);
}

/*
 * Parses the response head and queues its serialised form to the client. Interim (1xx)
 * responses are dropped for an HTTP/1.0 client (RFC 9110 15.2) and the loop reads the next
 * head; for others one is relayed and the final head waits for its send. true: the final head
 * is queued and a body follows (RS_BODY); false: everything is done or submitted for now
 * (waiting for bytes, a send, a tunnel, or the exchange failed).
 */
static bool resp_head(struct worker *w, struct conn *c, struct ups *u)
{
	struct sendq *q = &c->x->resp.out;
	struct http_limits lim;
	struct http_resp resp;
	struct inbuf *src;
	enum http_framing of;
	bool ka, interim;
	char *p;
	int r, n;

	limits_of(w, &lim);
	for (;;) {
		resp.hdr = w->hdr_scratch; /* http_resp_parse clears the rest */
		resp.hdr_cap = w->hdr_cap;
		src = inbuf_head_src(w, &c->x->resp.accum, &u->in);
		if (!src) {
			exchange_fail(w, c, UF_BAD_HEAD);
			return false;
		}
		if (src->len == 0) {
			inbuf_release(w, &u->in);
			ups_arm_recv(w, u);
			return false;
		}
		r = http_resp_parse(&resp, src->base + src->off, src->len, &lim,
				    conn_has(c, CF_REQ_HEAD));
		if (r == -EAGAIN) {
			if (!inbuf_head_keep(w, &c->x->resp.accum, &u->in, src)) {
				exchange_fail(w, c, UF_BAD_HEAD);
				return false;
			}
			ups_arm_recv(w, u);
			return false;
		}
		if (r < 0) {
			log_warn("worker %u: bad response from %s: %s", w->id,
				 w->d->backends[c->x->backend].addr,
				 resp.reason ? resp.reason : "?");
			exchange_fail(w, c, UF_BAD_HEAD);
			return false;
		}
		if (c->x->resp.head == NIL)
			c->x->resp.head = hbuf_get(w);
		if (c->x->resp.head == NIL) {
			exchange_fail(w, c, UF_NO_HEAD_BUF);
			return false;
		}
		if (resp.code == 101 && !conn_has(c, CF_REQ_UPGRADE)) {
			exchange_fail(w, c, UF_BAD_HEAD);
			return false;
		}
		interim = resp.code >= 100 && resp.code < 200 && resp.code != 101;
		if (!interim || c->client_minor != 0)
			break;
		resp_skip_head(w, c, src, r); /* no 1xx to an HTTP/1.0 client: the next head */
	}
	p = src->base + src->off;
	if (interim) {
		/* Interim response: relay it, then keep waiting for the final one. */
		n = http_resp_serialize(&resp, p, c->client_minor, true, conn_has(c, CF_REQ_HEAD),
					hbuf_addr(w, c->x->resp.head), w->hbuf_size, &of);
		if (n < 0) {
			exchange_fail(w, c, UF_BAD_HEAD);
			return false;
		}
		resp_skip_head(w, c, src, r);
		sendq_add(q, hbuf_addr(w, c->x->resp.head), (size_t)n);
		conn_send(w, c);
		return false;
	}
	ka = conn_has(c, CF_KEEPALIVE) && resp.code != 101;
	if (c->client_minor == 0 &&
	    (resp.framing == HTTP_BODY_CHUNKED || resp.framing == HTTP_BODY_CLOSE))
		ka = false;
	conn_put(c, CF_KEEPALIVE, ka);
	n = http_resp_serialize(&resp, p, c->client_minor, ka, conn_has(c, CF_REQ_HEAD),
				hbuf_addr(w, c->x->resp.head), w->hbuf_size, &of);
	if (n < 0) {
		exchange_fail(w, c, UF_BAD_HEAD);
		return false;
	}
	c->flags |= CF_RESP_STARTED;
	c->x->resp_code = resp.code;
	c->x->out_framing = (uint8_t)of;
	conn_put(c, CF_UPS_REUSABLE, resp.keep_alive && resp.framing != HTTP_BODY_CLOSE);
	count_status(w, resp.code);
	inbuf_head_consume(w, &c->x->resp.accum, &u->in, src, (uint32_t)r);
	sendq_add(q, hbuf_addr(w, c->x->resp.head), (size_t)n);
	if (resp.code == 101) {
		conn_send(w, c);
		tunnel_start(w, c);
		return false;
	}
	http_body_init(&c->x->resp.body, resp.framing, resp.content_length, 0);
	if (resp.framing == HTTP_BODY_NONE ||
	    (resp.framing == HTTP_BODY_LENGTH && resp.content_length == 0)) {
		c->x->resp.body.done = true;
		c->rs_state = RS_DONE;
		if (u->in.len)
			c->flags &= ~CF_UPS_REUSABLE; /* bytes after a body-less response */
		conn_send(w, c);
		return false;
	}
	c->rs_state = RS_BODY;
	return true;
}

/* Decodes what the upstream sent of the body and queues it (re-framed) to the client. */
static void resp_body_pump(struct worker *w, struct conn *c, struct ups *u)
{
	struct sendq *q = &c->x->resp.out;
	size_t payload = 0;
	ssize_t k;
	char *p;

	if (u->in.len) {
		p = u->in.base + u->in.off;
		k = http_body_decode(&c->x->resp.body, p, u->in.len, &payload);
		if (k < 0) {
			log_warn("worker %u: bad response body framing from %s", w->id,
				 w->d->backends[c->x->backend].addr);
			exchange_fail(w, c, UF_BAD_BODY);
			return;
		}
		u->in.off += (uint32_t)k;
		u->in.len -= (uint32_t)k;
		if (c->x->out_framing == HTTP_BODY_CHUNKED)
			sendq_add_chunk(q, c->x->resp.chunk_hdr, p, payload, c->x->resp.body.done);
		else
			sendq_add(q, p, payload);
		if (c->x->resp.body.done) {
			c->rs_state = RS_DONE;
			if (u->in.len)
				/* Bytes after the end of the response. */
				c->flags &= ~CF_UPS_REUSABLE;
		}
	}
	if (q->iov_n) {
		conn_send(w, c);
		return;
	}
	inbuf_release(w, &u->in);
	ups_arm_recv(w, u);
}

/* Forwards what the response direction has ready to the client. */
void resp_process(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	if (conn_has(c, CF_CLOSING) || !u || c->x->resp.out.busy)
		return;
	sendq_reset(&c->x->resp.out);
	switch (c->rs_state) {
	case RS_TUNNEL:
		resp_tunnel_pump(w, c, u);
		break;
	case RS_HEAD:
		/* Body bytes may follow the head in the same read. */
		if (resp_head(w, c, u))
			resp_body_pump(w, c, u);
		break;
	case RS_BODY:
		resp_body_pump(w, c, u);
		break;
	default:
		break;
	}
}

/* The upstream closed (res == 0) or failed (res < 0) while this exchange used it. */
static void resp_upstream_eof(struct worker *w, struct conn *c, int res)
{
	struct ups *u = conn_ups(w, c);
	struct sendq *q = &c->x->resp.out;

	if (c->rs_state == RS_HEAD) {
		/* Nothing of a response from a pooled connection: the backend had closed it. */
		bool stale =
			u->reused && !conn_has(c, CF_UPS_BYTE_SEEN) && c->x->resp.accum.hbuf == NIL;

		exchange_fail(w, c, stale ? UF_STALE_POOLED : UF_RESET_BEFORE_HEAD);
		return;
	}
	if (c->rs_state == RS_BODY && res == 0 && c->x->resp.body.framing == HTTP_BODY_CLOSE) {
		/* Close-delimited body: EOF is its end. */
		c->x->resp.body.done = true;
		c->rs_state = RS_DONE;
		c->flags &= ~CF_UPS_REUSABLE;
		if (c->x->out_framing == HTTP_BODY_CHUNKED) {
			sendq_reset(q);
			sendq_add_chunk(q, NULL, NULL, 0, true);
			conn_send(w, c);
		} else {
			c->flags &= ~CF_KEEPALIVE;
			exchange_end(w, c);
		}
		return;
	}
	if (c->rs_state == RS_TUNNEL) {
		conn_close_graceful(w, c);
		return;
	}
	/* Mid-body: the client must be able to tell the response is incomplete. */
	exchange_fail(w, c, UF_CUT_BODY);
}

static void record_latency(struct worker *w, struct conn *c)
{
	uint64_t us = (now_ns() - c->x->req_start_ns) / 1000;

	stats_record_latency(w->stats, us);
	STAT_ADD(w->bstats[c->x->backend].lat_sum_us, us);
}

/* The response was fully sent: pool or close the upstream, then the next request. */
void exchange_end(struct worker *w, struct conn *c)
{
	struct ups *u = conn_ups(w, c);

	if (c->x->req.out.busy) {
		c->flags |= CF_END_PENDING;
		return;
	}
	c->flags &= ~CF_END_PENDING;
	record_latency(w, c);
	conn_log(w, c, c->x->resp_code);
	steer_req_ended(w->sc);
	if (u) {
		be_active_dec(w, c->x->backend);
		c->ups = NIL;
		/* Idle ones are bounded by the connection table (and expire by upstream_idle_ms). */
		if (conn_has(c, CF_UPS_REUSABLE) && c->req_state == RQ_DONE && u->in.len == 0 &&
		    !u->closing && w->stats->pool_idle < w->conn_limit)
			ups_pool_put(w, u);
		else
			ups_close(w, u);
	}
	if (c->x->req.head != NIL) {
		hbuf_put(w, c->x->req.head);
		c->x->req.head = NIL;
	}
	if (c->x->resp.head != NIL) {
		hbuf_put(w, c->x->resp.head);
		c->x->resp.head = NIL;
	}
	inbuf_release(w, &c->x->resp.accum);
	c->rs_state = RS_NONE;
	c->flags &= ~CF_RESP_STARTED; /* the next exchange may still answer with an error */
	conn_exchange_done(w, c);
}

void exchange_on_connect(struct worker *w, struct conn *c, struct ups *u, int res)
{
	if (res < 0) {
		exchange_fail(w, c, res == -ECANCELED ? UF_CONNECT_TIMEOUT : UF_CONNECT);
		return;
	}
	u->connected = true;
	c->rs_state = RS_HEAD;
	ups_arm_recv_hint(w, u, true); /* nothing can have come before the request */
	exchange_req_pump(w, c);
}

void exchange_on_send(struct worker *w, struct conn *c, struct ups *u, int res)
{
	struct sendq *q = &c->x->req.out;

	q->busy = false;
	if (res <= 0) {
		exchange_fail(w, c, UF_SEND);
		return;
	}
	if (!sendq_advance(q, (size_t)res)) {
		ups_send(w, c, u);
		return;
	}
	if (c->in.len == 0 && (c->in.bid >= 0 || c->in.hbuf != NIL))
		inbuf_release(w, &c->in);
	if (conn_has(c, CF_END_PENDING)) {
		exchange_end(w, c);
		return;
	}
	if (c->rs_state == RS_TUNNEL || c->req_state == RQ_BODY)
		exchange_req_pump(w, c);
}

void exchange_on_recv(struct worker *w, struct conn *c, struct ups *u, int res, uint32_t flags)
{
	int32_t bid = cqe_bid(res, flags);

	if (res == -ENOBUFS) {
		c->flags |= CF_UPS_RECV_WANTED;
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
	c->flags |= CF_UPS_BYTE_SEEN;
	resp_process(w, c);
}

void exchange_on_timeout(struct worker *w, struct conn *c, enum tclass cls)
{
	exchange_fail(w, c, cls == T_CONNECT ? UF_CONNECT_TIMEOUT : UF_RESPONSE_TIMEOUT);
}
