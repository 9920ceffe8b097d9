/*
 * The TLS transport of a client connection: the seam between the client socket's completions
 * and HTTP on a TLS listener (ctls_* in conn.h).
 *
 * Receive: a completion's provided buffer of ciphertext is lent to the session (tls_feed) and
 * decrypted into a second buffer taken from the same pool, which becomes c->in; the ciphertext
 * buffer goes back as soon as the session has read all of it. When the plaintext fills its
 * buffer the session may hold more (in the lent ciphertext or in OpenSSL): the next receive the
 * HTTP layer arms is then an IORING_OP_NOP (OP_C_TLS) whose completion reads it, so the
 * state machine is never re-entered from inside itself.
 *
 * Send: what c->x->resp.out queues (head, chunk lines, payload, corral's own answers) is encrypted
 * into the session's output (small pieces gathered into one record, large ones encrypted where
 * they are) and that ciphertext goes out in one send; progress is reported to client.c in
 * plaintext bytes once the ciphertext of them is all sent, so the HTTP layer's accounting and
 * buffer releases stay as they are. Handshake bytes, tickets, alerts and close_notify use the
 * same one send in flight.
 *
 * Owns: w->tls slots, their sessions, the lent ciphertext buffer. Goes back to the connection
 * only through conn.h's conn_* entry points, and only from a completion (never from inside a
 * call the HTTP layer made).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include "conn.h"
#include "tls_io.h"

/*
 * Pieces of c->x->resp.out shorter than this are copied together into one record (a head and a
 * small body: one record, one AEAD pass, 22 bytes of overhead instead of two); longer ones are
 * encrypted in place, so a body streamed from the upstream is never copied before OpenSSL.
 */
#define CTLS_GATHER_PIECE 4096
_Static_assert(CTLS_GATHER_PIECE <= CTLS_GATHER_MAX, "a small piece fits a record");
/* The flags' first bits are tls_io.c's (its shared steps set and test them). */
_Static_assert((unsigned)CT_SEND_BUSY == TLS_IO_SEND_BUSY && (unsigned)CT_MORE == TLS_IO_MORE &&
		       (unsigned)CT_HS_MORE == TLS_IO_HS_MORE,
	       "the flags start with tls_io's");

int ctls_start(struct worker *w, struct conn *c, SSL_CTX *ctx)
{
	uint32_t i = w->tls_free;
	struct ctls *x;
	int r;

	/* Released slots first (LIFO), else the next never-used one: untouched ones cost nothing. */
	if (i != NIL)
		w->tls_free = w->tls[i].next_free;
	else if (w->tls_high < w->conn_cap)
		i = w->tls_high++;
	else
		return -ENOBUFS; /* cannot happen: one slot per connection slot */
	x = &w->tls[i];
	r = tls_conn_init(&x->t, ctx);
	if (r < 0) {
		x->next_free = w->tls_free;
		w->tls_free = i;
		return r;
	}
	x->t.oc = &w->tls_oc; /* a response's output buffer comes from the worker's spares */
	x->cin = (struct inbuf){ .bid = -1, .hbuf = NIL };
	x->plain_enc = 0;
	x->flags = 0;
	c->tls = i + 1;
	return 0;
}

void ctls_free(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);

	if (!x)
		return;
	tls_conn_free(&x->t);
	inbuf_release(w, &x->cin);
	x->next_free = w->tls_free;
	w->tls_free = c->tls - 1;
	c->tls = 0;
}

/* Whether the session holds lent ciphertext. */
static bool ctls_lent(const struct ctls *x)
{
	return x->cin.bid >= 0 || x->cin.hbuf != NIL;
}

static void ctls_count_fail(struct worker *w, enum tls_fail f)
{
	if (f <= TLS_FAIL_NONE || f >= TLS_FAIL_REASONS)
		f = TLS_FAIL_HANDSHAKE;
	STAT_ADD(w->stats->tls_failures[f], 1);
}

/* The lent ciphertext buffer goes back once the session has read all of it. */
static void ctls_release_in(struct worker *w, struct ctls *x)
{
	if (ctls_lent(x) && tls_in_pending(&x->t) == 0)
		inbuf_release(w, &x->cin);
}

/* The transport as tls_io.c's shared steps see it. */
static struct tls_io_port ctls_port(struct worker *w, struct conn *c, struct ctls *x)
{
	return (struct tls_io_port){ .t = &x->t,
				     .iov = &x->iov,
				     .flags = &x->flags,
				     .inflight = &c->inflight,
				     .send_ud = ud_pack(OP_C_SEND, cidx(w, c), c->gen),
				     .fd = c->fd };
}

/* Sends what the session's output holds, unless a send is in flight (its completion will). */
static void ctls_flush(struct worker *w, struct conn *c, struct ctls *x)
{
	struct tls_io_port p = ctls_port(w, c, x);

	tls_io_flush(w, &p);
}

/* The handshake just finished: counted once, with whether it resumed a session. */
static void ctls_opened(struct worker *w, struct ctls *x)
{
	if ((x->flags & CT_COUNTED) || x->t.state == TLS_HANDSHAKE || x->t.state == TLS_FAILED)
		return;
	x->flags |= CT_COUNTED;
	STAT_ADD(w->stats->tls_handshakes, 1);
	if (tls_resumed(&x->t))
		STAT_ADD(w->stats->tls_resumed, 1);
}

/*
 * The session failed (t->fail says why): counted, and closed. A failed handshake's fatal
 * alert is sent first, so the client learns why (protocol_version, handshake_failure...);
 * a session that failed later is closed at once (an exchange in flight is logged 499).
 */
static void ctls_failed(struct worker *w, struct conn *c, struct ctls *x)
{
	ctls_count_fail(w, (enum tls_fail)x->t.fail);
	ctls_release_in(w, x);
	if (!(x->flags & CT_COUNTED) && tls_out(&x->t, &x->iov)) {
		x->flags |= CT_FAIL_CLOSE;
		ctls_flush(w, c, x);
		return;
	}
	conn_client_gone(w, c);
}

/* nginx's answer to plain HTTP on an HTTPS port, in clear, before the close. */
static void ctls_plain_answer(struct conn *c)
{
	static const char body[] = "The plain HTTP request was sent to an HTTPS port.\n";
	char out[256];
	int n = snprintf(out, sizeof(out),
			 "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
			 sizeof(body) - 1, body);

	/* One non-blocking send on a fresh socket: it fits, or the client is not reading. */
	if (n > 0 && send(c->fd, out, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		return;
}

/*
 * Reads what the session has for HTTP: drives the handshake, decrypts into a fresh buffer,
 * and hands a non-empty result to the HTTP layer as c->in. With nothing decrypted it arms the
 * next receive (or waits for the output to drain, or for a buffer).
 */
static void ctls_deliver(struct worker *w, struct conn *c, struct ctls *x)
{
	struct tls_io_port p = ctls_port(w, c, x);
	enum tls_io_rd o;
	struct inbuf in;
	int r;

	x->flags &= ~CT_MORE;
	if (x->t.state == TLS_HANDSHAKE) {
		r = tls_io_handshake(w, &p);
		if (r == -EPROTO) {
			ctls_failed(w, c, x);
			return;
		}
		if (r == -ENOBUFS)
			return; /* the output is full: on once it is sent */
		if (r == -EAGAIN) {
			ctls_release_in(w, x);
			conn_arm_recv(w, c);
			return;
		}
		ctls_opened(w, x);
		ctls_release_in(w, x);
		if (!ctls_lent(x)) {
			conn_arm_recv(w, c); /* the client's Finished came alone */
			return;
		}
	}
	o = tls_io_read(w, &p, &in);
	if (o == TLS_IO_NOBUF) {
		c->flags |= CF_RECV_WANTED;
		wait_push(w, cidx(w, c));
		return;
	}
	ctls_opened(w, x);
	if (o == TLS_IO_FAIL) {
		ctls_failed(w, c, x);
		return;
	}
	tls_io_flush(w, &p);
	ctls_release_in(w, x);
	if (in.len == 0) {
		if (o == TLS_IO_EOF && c->req_state == RQ_HEAD && c->rs_state == RS_NONE &&
		    !conn_head_partial(c)) {
			/* close_notify between requests: ours in answer, then the close. */
			c->flags |= CF_EOF;
			conn_close_graceful(w, c);
		} else if (o == TLS_IO_EOF) {
			conn_on_eof(w, c, 0);
		} else if (!(x->flags & CT_HS_MORE))
			conn_arm_recv(w, c);
		return;
	}
	if (o == TLS_IO_EOF)
		x->flags |= CT_MORE; /* the next read says it */
	CONN_BUG_ON(w, c, c->in.len != 0);
	inbuf_release(w, &c->in);
	c->in = in;
	conn_on_input(w, c);
}

/* Lends x->cin to the session and reads it. */
static void ctls_take_in(struct worker *w, struct conn *c, struct ctls *x)
{
	if (tls_feed(&x->t, (const uint8_t *)x->cin.base + x->cin.off, x->cin.len) < 0) {
		inbuf_release(w, &x->cin);
		if (x->t.fail == TLS_FAIL_PLAINTEXT)
			ctls_plain_answer(c);
		ctls_count_fail(w, (enum tls_fail)x->t.fail);
		conn_abort(w, c);
		return;
	}
	ctls_deliver(w, c, x);
}

void ctls_on_recv(struct worker *w, struct conn *c, int32_t bid, int n)
{
	struct ctls *x = conn_tls(w, c);

	STAT_ADD(w->stats->bytes_in, (uint64_t)n);
	if (x->flags & (CT_CLOSE_WAIT | CT_FAIL_CLOSE)) {
		buf_put(w, bid); /* closing: nothing more is read */
		return;
	}
	CONN_BUG_ON(w, c, ctls_lent(x));
	x->cin = (struct inbuf){
		.base = buf_addr(w, (uint32_t)bid), .len = (uint32_t)n, .bid = bid, .hbuf = NIL
	};
	ctls_take_in(w, c, x);
}

void ctls_after_proxy_header(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);

	if (c->in.len == 0) {
		inbuf_release(w, &c->in);
		conn_arm_recv(w, c);
		return;
	}
	/* What followed the header (in a receive buffer, or the head buffer it was put together in). */
	x->cin = c->in;
	c->in = (struct inbuf){ .bid = -1, .hbuf = NIL };
	ctls_take_in(w, c, x);
}

bool ctls_arm_pump(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);
	struct io_uring_sqe *sqe;

	if (conn_has(c, CF_CLOSING) || (!ctls_lent(x) && !(x->flags & CT_MORE)))
		return false;
	sqe = worker_sqe(w);
	io_uring_prep_nop(sqe);
	sqe->user_data = ud_pack(OP_C_TLS, cidx(w, c), c->gen);
	c->flags |= CF_RECV_ARMED;
	c->inflight++;
	return true;
}

void ctls_on_pump(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);

	c->flags &= ~CF_RECV_ARMED;
	if (conn_has(c, CF_CLOSING)) {
		inbuf_release(w, &x->cin); /* never read now */
		x->flags &= ~CT_MORE;
		if (conn_has(c, CF_LINGERING))
			conn_arm_recv(w, c); /* lingering reads raw bytes */
		else
			conn_try_finish(w, c);
		return;
	}
	ctls_deliver(w, c, x);
}

/*
 * Encrypts c->x->resp.out from its first byte not yet encrypted into the session's output, until
 * all of it is in or the output is full. Pieces shorter than CTLS_GATHER_PIECE are gathered
 * into one record; the same bytes are gathered again when a record must be retried (its
 * ciphertext did not fit), as tls_write asks. 0, or the -errno of tls_write.
 */
static int ctls_encrypt(struct worker *w, struct ctls *x, const struct sendq *q)
{
	size_t g = 0; /* bytes gathered for the next record */
	ssize_t r;

	for (;;) {
		const uint8_t *p = NULL;
		size_t n = tls_io_at(q, x->plain_enc + g, &p);

		if (n == 0)
			break; /* all of the queue is encrypted or gathered */
		if (n < CTLS_GATHER_PIECE && g + n <= CTLS_GATHER_MAX) {
			memcpy(w->tls_gather + g, p, n);
			g += n;
			continue;
		}
		/* A gathered record goes before this piece; a large piece is encrypted in place. */
		r = g ? tls_write(&x->t, w->tls_gather, g) : tls_write(&x->t, p, n);
		if (r < 0)
			return r == -ENOBUFS ? 0 : (int)r;
		x->plain_enc += (uint32_t)r;
		g = 0;
	}
	if (g) {
		r = tls_write(&x->t, w->tls_gather, g);
		if (r < 0)
			return r == -ENOBUFS ? 0 : (int)r;
		x->plain_enc += (uint32_t)r;
	}
	return 0;
}

/* A send that completes as a failure (the session cannot take the bytes): a NOP, res 0. */
static void ctls_send_fail(struct worker *w, struct conn *c, struct ctls *x)
{
	struct tls_io_port p = ctls_port(w, c, x);

	tls_io_send_fail(w, &p, CT_ERR);
}

void ctls_send(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);

	c->x->resp.out.busy = true;
	if (ctls_encrypt(w, x, &c->x->resp.out) < 0) {
		ctls_send_fail(w, c, x);
		return;
	}
	ctls_flush(w, c, x);
	if (!(x->flags & CT_SEND_BUSY))
		ctls_send_fail(w, c, x); /* an empty queue: fails as a plain send of it would */
}

bool ctls_on_send(struct worker *w, struct conn *c, int *res)
{
	struct ctls *x = conn_tls(w, c);
	struct tls_io_port p = ctls_port(w, c, x);
	/* Handshake bytes, tickets and alerts go out with no exchange attached (c->x NULL). */
	struct sendq *q = c->x ? &c->x->resp.out : NULL;

	x->flags &= ~CT_SEND_BUSY;
	if (conn_has(c, CF_CLOSING))
		return true;
	if (x->flags & CT_ERR) {
		x->flags &= ~CT_ERR;
		*res = -EPIPE;
		return true;
	}
	if (*res <= 0)
		return true;
	STAT_ADD(w->stats->bytes_out, (uint64_t)*res);
	if (tls_io_sent(w, &p, (size_t)*res))
		return false;
	/* Everything encrypted so far is on the wire. */
	if (x->flags & CT_FAIL_CLOSE) {
		conn_client_gone(w, c);
		return false;
	}
	if (x->flags & CT_CLOSE_WAIT) {
		x->flags &= ~CT_CLOSE_WAIT;
		conn_close_graceful(w, c);
		return false;
	}
	/* A read stopped for the full output: on in a completion of its own. */
	if (tls_io_resume(&x->flags) && !conn_has(c, CF_RECV_WANTED))
		conn_arm_recv(w, c);
	if (!q || !q->busy)
		return false; /* handshake bytes, tickets: nothing the HTTP layer waits for */
	if (x->plain_enc == 0) {
		/* The output was full of other bytes: the queue's turn now. */
		ctls_send(w, c);
		return false;
	}
	*res = (int)x->plain_enc;
	x->plain_enc = 0;
	return true;
}

bool ctls_close_notify(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);
	int r;

	if (!x || (x->flags & CT_NOTIFIED))
		return false;
	if (x->flags & CT_CLOSE_WAIT)
		return true;
	r = tls_close(&x->t);
	if (r == -EPIPE) {
		x->flags |= CT_NOTIFIED; /* failed or aborted: no clean end to give */
		return false;
	}
	ctls_flush(w, c, x);
	if (!(x->flags & CT_SEND_BUSY)) {
		x->flags |= CT_NOTIFIED;
		return false;
	}
	/* Sent (or, -ENOBUFS, queued once the output drains): the close goes on then. */
	x->flags |= CT_CLOSE_WAIT;
	return true;
}

void ctls_abort(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);

	if (!x)
		return;
	x->flags |= CT_NOTIFIED;
	/* A send in flight still reads the output: it is freed with the session instead. */
	if (!(x->flags & CT_SEND_BUSY))
		tls_abort(&x->t);
}

void ctls_on_header_timeout(struct worker *w, struct conn *c)
{
	struct ctls *x = conn_tls(w, c);

	if (x && x->t.state == TLS_HANDSHAKE)
		ctls_count_fail(w, TLS_FAIL_TIMEOUT);
}

bool ctls_busy(struct worker *w, const struct conn *c)
{
	const struct ctls *x = conn_tls(w, c);

	return x && (ctls_lent(x) || (x->flags & CT_MORE) ||
		     (x->t.state == TLS_HANDSHAKE && x->t.fed > 0));
}
