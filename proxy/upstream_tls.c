/*
 * The TLS transport of an upstream connection: the seam between a TLS backend's socket
 * completions and the exchange (utls_* in conn.h).
 *
 * Connect: once the TCP connect completes the client handshake runs on the same completions
 * (ClientHello sent, the server's flight received and verified, our Finished sent) while the
 * exchange stays in RS_CONNECT, so upstream_connect_ms bounds connect and handshake together.
 * Then exchange_on_connect() goes on as for a plaintext backend. A handshake that fails (a
 * certificate that does not verify, a plaintext answer, a reset) is the attempt's UF_CONNECT:
 * the next backend is tried, the failure is counted and logged with OpenSSL's reason.
 *
 * Receive: a completion's provided buffer of ciphertext is lent to the session (tls_feed) and
 * decrypted into a second buffer of the same pool (a head buffer when none is free), which
 * becomes u->in; the ciphertext buffer goes back as soon
 * as the session has read all of it. When the plaintext fills its buffer the session may hold
 * more: the next receive the exchange arms is then an IORING_OP_NOP (OP_U_TLS) whose
 * completion reads it, so the exchange is never re-entered from inside itself.
 *
 * Send: what c->x->req.out queues is encrypted into the session's output (a send_proxy
 * backend's PROXY header goes in clear before the handshake instead) and that ciphertext
 * goes out in one send; the exchange is told the plaintext bytes once their ciphertext is all
 * sent, so its accounting stays as it is.
 *
 * Pooling: a pooled connection keeps its session (and a receive armed: a session ticket that
 * comes while it idles keeps it pooled; anything else closes it). The worker keeps one
 * resumable session per backend id (w->utls_sess), tied to the context it came from, so a new
 * connection resumes unless a reload changed the backend's tls settings. A clean close
 * (ups_close) sends close_notify first.
 *
 * Owns: w->utls slots, their sessions, the lent ciphertext buffer, w->utls_sess. Goes back to
 * the exchange only through exchange_on_* and resp_process, from a completion.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include "conn.h"
#include "tls_io.h"

static struct utls *ups_tls(struct worker *w, const struct ups *u)
{
	return u->tls ? &w->utls[u->tls - 1] : NULL;
}

/* The flags' first bits are tls_io.c's (its shared steps set and test them). */
_Static_assert((unsigned)UT_SEND_BUSY == TLS_IO_SEND_BUSY && (unsigned)UT_MORE == TLS_IO_MORE &&
		       (unsigned)UT_HS_MORE == TLS_IO_HS_MORE,
	       "the flags start with tls_io's");

/* The request direction's send queue of the exchange that owns u (exchange.c's). */
static struct sendq *req_out(struct conn *c)
{
	return &c->x->req.out; /* an upstream is owned only by a connection in an exchange */
}

int utls_start(struct worker *w, struct ups *u, const struct tls_client *cl)
{
	uint32_t i = w->utls_free;
	struct utls *x;
	int r;

	if (i != NIL) {
		x = &w->utls[i];
		w->utls_free = x->next_free;
	} else if (w->utls_high < w->ups_cap) {
		/* A slot never used: the table stays untouched (not resident) beyond the high mark. */
		i = w->utls_high++;
		x = &w->utls[i];
	} else {
		return -ENOBUFS; /* cannot happen: one slot per upstream slot */
	}
	r = tls_conn_init_client(&x->t, cl, &w->utls_sess[u->backend]);
	if (r < 0) {
		x->next_free = w->utls_free;
		w->utls_free = i;
		return r;
	}
	x->t.oc = &w->tls_oc; /* output buffers from the worker's spares, as client sessions */
	x->cbid = -1;
	x->plain_enc = 0;
	x->flags = 0;
	u->tls = i + 1;
	return 0;
}

void utls_free(struct worker *w, struct ups *u)
{
	struct utls *x = ups_tls(w, u);

	if (!x)
		return;
	tls_conn_free(&x->t);
	buf_put(w, x->cbid);
	x->cbid = -1;
	x->next_free = w->utls_free;
	w->utls_free = u->tls - 1;
	u->tls = 0;
}

/* The lent ciphertext buffer goes back once the session has read all of it. */
static void utls_release_in(struct worker *w, struct utls *x)
{
	if (x->cbid >= 0 && tls_in_pending(&x->t) == 0) {
		buf_put(w, x->cbid);
		x->cbid = -1;
	}
}

/* The transport as tls_io.c's shared steps see it. */
static struct tls_io_port utls_port(struct worker *w, struct ups *u, struct utls *x)
{
	return (struct tls_io_port){ .t = &x->t,
				     .iov = &x->iov,
				     .flags = &x->flags,
				     .inflight = &u->inflight,
				     .send_ud = ud_pack(OP_U_SEND, uidx(w, u), u->gen),
				     .fd = u->fd };
}

/*
 * The handshake failed (or the backend closed or reset during it): counted, logged with the
 * reason, and the attempt fails as a connect failure (the next backend, or 502).
 */
static void utls_hs_failed(struct worker *w, struct conn *c, struct ups *u, struct utls *x,
			   const char *why)
{
	STAT_ADD(w->stats->ups_tls_failures, 1);
	log_warn("worker %u: TLS handshake with backend %s failed: %s%s", w->id,
		 w->d->backends[u->backend].addr,
		 x->t.fail == TLS_FAIL_VERIFY ? "certificate verify failed: " : "", why);
	utls_release_in(w, x);
	exchange_fail(w, c, UF_CONNECT);
}

/* The handshake finished: counted once (and whether it resumed), then the exchange goes on. */
static void utls_opened(struct worker *w, struct conn *c, struct ups *u, struct utls *x)
{
	x->flags |= UT_OPEN;
	STAT_ADD(w->stats->ups_tls_handshakes, 1);
	if (tls_resumed(&x->t))
		STAT_ADD(w->stats->ups_tls_resumed, 1);
	utls_release_in(w, x);
	exchange_on_connect(w, c, u, 0);
}

/*
 * Reads what the session has for the exchange: drives the handshake, decrypts into a fresh
 * buffer and hands a non-empty result to the exchange as u->in. With nothing decrypted it
 * arms the next receive (or waits for the output to drain, or for a buffer).
 */
static void utls_deliver(struct worker *w, struct conn *c, struct ups *u, struct utls *x)
{
	struct tls_io_port p = utls_port(w, u, x);
	struct tls_conn *t = &x->t;
	enum tls_io_rd o;
	struct inbuf in;
	int r;

	x->flags &= ~UT_MORE;
	if (!(x->flags & UT_OPEN)) {
		r = tls_io_handshake(w, &p);
		if (r == -EPROTO) {
			utls_hs_failed(w, c, u, x, t->why ? t->why : "TLS handshake failed");
			return;
		}
		if (r == -ENOBUFS)
			return; /* the output is full: on once it is sent */
		if (r == -EAGAIN) {
			utls_release_in(w, x);
			ups_arm_recv(w, u);
			return;
		}
		/* Application data may have come with the server's last flight: read on later. */
		if (x->cbid >= 0)
			x->flags |= UT_MORE;
		utls_opened(w, c, u, x);
		return;
	}
	o = tls_io_read(w, &p, &in);
	if (o == TLS_IO_NOBUF) {
		/* No buffer: wait for one, as a receive that found none does. */
		c->flags |= CF_UPS_RECV_WANTED;
		wait_push(w, cidx(w, c));
		return;
	}
	tls_io_flush(w, &p);
	utls_release_in(w, x);
	if (o == TLS_IO_FAIL) {
		log_warn("worker %u: TLS from backend %s: %s", w->id,
			 w->d->backends[u->backend].addr, t->why ? t->why : "TLS error");
		exchange_on_recv(w, c, u, -EPROTO, 0);
		return;
	}
	if (in.len == 0) {
		if (o == TLS_IO_EOF)
			exchange_on_recv(w, c, u, 0, 0); /* a clean end: as a FIN */
		else if (!(x->flags & UT_HS_MORE))
			ups_arm_recv(w, u);
		return;
	}
	if (o == TLS_IO_EOF)
		x->flags |= UT_MORE; /* the next read says it */
	BUG_ON(u->in.len != 0);
	inbuf_release(w, &u->in);
	u->in = in;
	c->flags |= CF_UPS_BYTE_SEEN;
	resp_process(w, c);
}

void utls_on_connect(struct worker *w, struct conn *c, struct ups *u)
{
	struct utls *x = ups_tls(w, u);

	/*
	 * A send_proxy backend gets its PROXY header in clear before the handshake (HAProxy's
	 * send-proxy with ssl). At most 108 bytes on a fresh connection: one non-blocking send
	 * always takes them all; anything else fails the attempt.
	 */
	if (u->pp_len && !u->pp_queued) {
		u->pp_queued = true; /* never queued in the encrypted request */
		if (send(u->fd, u->pp_hdr, u->pp_len, MSG_DONTWAIT | MSG_NOSIGNAL) != u->pp_len) {
			utls_hs_failed(w, c, u, x, "sending the PROXY header failed");
			return;
		}
	}
	utls_deliver(w, c, u, x); /* the first call queues the ClientHello */
}

void utls_on_recv(struct worker *w, struct conn *c, struct ups *u, int res, uint32_t flags)
{
	struct utls *x = ups_tls(w, u);
	int32_t bid = cqe_bid(res, flags);

	if (res == -ENOBUFS) {
		exchange_on_recv(w, c, u, res, flags); /* waits for a buffer */
		return;
	}
	if (res <= 0) {
		buf_put(w, bid);
		if (!(x->flags & UT_OPEN)) {
			utls_hs_failed(w, c, u, x,
				       res == 0 ? "the backend closed the connection during the "
						  "handshake"
						: "the connection failed during the handshake");
			return;
		}
		/*
		 * A TCP end without close_notify: for a close-delimited body that is a truncation,
		 * never its end (exchange.c ends such a body only on res == 0).
		 */
		exchange_on_recv(w, c, u, res == 0 ? -EPIPE : res, 0);
		return;
	}
	BUG_ON(bid < 0);
	BUG_ON(x->cbid >= 0);
	if (tls_feed(&x->t, (const uint8_t *)buf_addr(w, (uint32_t)bid), (size_t)res) < 0) {
		buf_put(w, bid);
		if (!(x->flags & UT_OPEN)) {
			utls_hs_failed(w, c, u, x, x->t.why ? x->t.why : "not TLS");
			return;
		}
		exchange_on_recv(w, c, u, -EPROTO, 0);
		return;
	}
	x->cbid = bid;
	utls_deliver(w, c, u, x);
}

bool utls_arm_pump(struct worker *w, struct ups *u)
{
	struct utls *x = ups_tls(w, u);
	struct io_uring_sqe *sqe;

	if (u->closing || (x->cbid < 0 && !(x->flags & UT_MORE)))
		return false;
	sqe = worker_sqe(w);
	io_uring_prep_nop(sqe);
	sqe->user_data = ud_pack(OP_U_TLS, uidx(w, u), u->gen);
	u->recv_armed = true;
	u->inflight++;
	return true;
}

void utls_on_pump(struct worker *w, struct conn *c, struct ups *u)
{
	utls_deliver(w, c, u, ups_tls(w, u));
}

/*
 * Encrypts q from its first byte not yet encrypted into the session's output, until all of it
 * is in or the output is full (then the rest goes after the send). 0, or tls_write's -errno.
 */
static int utls_encrypt(struct utls *x, const struct sendq *q)
{
	for (;;) {
		const uint8_t *p = NULL;
		size_t n = tls_io_at(q, x->plain_enc, &p);
		ssize_t r;

		if (n == 0)
			return 0; /* all of the queue is encrypted */
		r = tls_write(&x->t, p, n);
		if (r < 0)
			return r == -ENOBUFS ? 0 : (int)r;
		x->plain_enc += (uint32_t)r;
	}
}

/* A send that completes as a failure (the session cannot take the bytes): a NOP. */
static void utls_send_fail(struct worker *w, struct ups *u, struct utls *x)
{
	struct tls_io_port p = utls_port(w, u, x);

	tls_io_send_fail(w, &p, UT_ERR);
}

void utls_send(struct worker *w, struct conn *c, struct ups *u)
{
	struct utls *x = ups_tls(w, u);
	struct tls_io_port p = utls_port(w, u, x);

	req_out(c)->busy = true;
	if (utls_encrypt(x, req_out(c)) < 0) {
		utls_send_fail(w, u, x);
		return;
	}
	tls_io_flush(w, &p);
	if (!(x->flags & UT_SEND_BUSY))
		utls_send_fail(w, u, x); /* nothing to send: cannot happen with bytes queued */
}

bool utls_on_send(struct worker *w, struct conn *c, struct ups *u, int *res)
{
	struct utls *x = ups_tls(w, u);
	struct tls_io_port p = utls_port(w, u, x);
	struct sendq *q = req_out(c);

	x->flags &= ~UT_SEND_BUSY;
	if (x->flags & UT_ERR) {
		x->flags &= ~UT_ERR;
		*res = -EPIPE;
		return true;
	}
	if (*res <= 0) {
		if (!(x->flags & UT_OPEN)) {
			utls_hs_failed(w, c, u, x, "sending the handshake failed");
			return false;
		}
		return true;
	}
	if (tls_io_sent(w, &p, (size_t)*res))
		return false;
	/* A handshake or read stopped for the full output: on in a completion of its own. */
	if (tls_io_resume(&x->flags) && !conn_has(c, CF_UPS_RECV_WANTED))
		ups_arm_recv(w, u);
	if (!q->busy)
		return false; /* handshake bytes: nothing the exchange waits for */
	if (x->plain_enc == 0) {
		/* The output was full of other bytes: the queue's turn now. */
		utls_send(w, c, u);
		return false;
	}
	*res = (int)x->plain_enc;
	x->plain_enc = 0;
	return true;
}

bool utls_idle_recv(struct worker *w, struct ups *u, int32_t bid, int n)
{
	struct utls *x = ups_tls(w, u);
	uint8_t sink[64];
	ssize_t r;

	BUG_ON(bid < 0 || x->cbid >= 0);
	if (tls_feed(&x->t, (const uint8_t *)buf_addr(w, (uint32_t)bid), (size_t)n) < 0) {
		buf_put(w, bid);
		return false;
	}
	r = tls_read(&x->t, sink, sizeof(sink));
	if (r != -EAGAIN || tls_in_pending(&x->t) || tls_out(&x->t, &x->iov)) {
		/*
		 * Data, close_notify, an error, or something to answer: the connection goes. Only
		 * the backend's close_notify is answered with ours (ups_close); anything else ends
		 * without one.
		 */
		if (r != 0)
			tls_abort(&x->t);
		buf_put(w, bid);
		return false;
	}
	buf_put(w, bid);
	ups_arm_recv(w, u);
	return true;
}

bool utls_poolable(struct worker *w, struct ups *u)
{
	struct utls *x = ups_tls(w, u);

	if (x->t.state != TLS_OPEN || x->cbid >= 0 || tls_has_pending(&x->t) ||
	    (x->flags & UT_SEND_BUSY) || x->t.out)
		return false;
	/* A read that filled its buffer exactly left "more" set: there is none. */
	x->flags &= ~UT_MORE;
	return true;
}

void utls_close_notify(struct worker *w, struct ups *u)
{
	struct utls *x = ups_tls(w, u);
	struct iovec iov;

	/* Not over a send in flight (its bytes would interleave), nor on a failed session. */
	if ((x->flags & UT_SEND_BUSY) || !(x->flags & UT_OPEN) || x->t.out ||
	    tls_close(&x->t) < 0 || !tls_out(&x->t, &iov))
		return;
	/* One non-blocking send of one short record: it fits, or the backend is not reading. */
	if (send(u->fd, iov.iov_base, iov.iov_len, MSG_DONTWAIT | MSG_NOSIGNAL) > 0)
		tls_out_done(&x->t, iov.iov_len);
}
