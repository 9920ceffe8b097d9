/*
 * The steps both TLS transports (ctls.c, upstream_tls.c) take the same way, written once:
 * declared in tls_io.h. Owns nothing: a buffer it takes goes to the caller.
 */
#include <errno.h>
#include <sys/socket.h>
#include "tls_io.h"

void tls_io_flush(struct worker *w, const struct tls_io_port *p)
{
	struct io_uring_sqe *sqe;

	if ((*p->flags & TLS_IO_SEND_BUSY) || !tls_out(p->t, p->iov))
		return;
	sqe = worker_sqe(w);
	io_uring_prep_send(sqe, p->fd, p->iov->iov_base, p->iov->iov_len, MSG_NOSIGNAL);
	sqe->user_data = p->send_ud;
	*p->flags |= TLS_IO_SEND_BUSY;
	(*p->inflight)++;
}

int tls_io_handshake(struct worker *w, const struct tls_io_port *p)
{
	int r = tls_handshake(p->t);

	if (r == -EPROTO)
		return r;
	tls_io_flush(w, p);
	if (r == -ENOBUFS)
		*p->flags |= TLS_IO_HS_MORE;
	return r;
}

enum tls_io_rd tls_io_read(struct worker *w, const struct tls_io_port *p, struct inbuf *in)
{
	enum tls_io_rd o = TLS_IO_OK;
	uint32_t cap = w->buf_size, len = 0, hb = NIL;
	int32_t pbid;
	ssize_t n;
	char *b;

	*in = (struct inbuf){ .bid = -1, .hbuf = NIL };
	pbid = buf_take(w);
	if (pbid >= 0) {
		b = buf_addr(w, (uint32_t)pbid);
	} else {
		hb = hbuf_get(w);
		if (hb == NIL) {
			*p->flags |= TLS_IO_MORE;
			return TLS_IO_NOBUF;
		}
		b = hbuf_addr(w, hb);
	}
	for (;;) {
		n = tls_read(p->t, (uint8_t *)b + len, cap - len);
		if (n > 0) {
			len += (uint32_t)n;
			if (len < cap)
				continue;
			*p->flags |=
				TLS_IO_MORE; /* the buffer is full: the session may hold more */
		} else if (n == 0) {
			o = TLS_IO_EOF; /* close_notify */
		} else if (n == -ENOBUFS) {
			*p->flags |= len ? TLS_IO_MORE : TLS_IO_HS_MORE;
		} else if (n == -EPROTO) {
			o = TLS_IO_FAIL;
		}
		break;
	}
	if (o == TLS_IO_FAIL || len == 0) {
		buf_put(w, pbid);
		hbuf_put(w, hb);
		return o;
	}
	*in = (struct inbuf){ .base = b, .len = len, .bid = pbid, .hbuf = hb };
	return o;
}

void tls_io_send_fail(struct worker *w, const struct tls_io_port *p, uint8_t err)
{
	struct io_uring_sqe *sqe;

	*p->flags |= err;
	if (*p->flags & TLS_IO_SEND_BUSY)
		return; /* the send in flight completes as the failure */
	sqe = worker_sqe(w);
	io_uring_prep_nop(sqe);
	sqe->user_data = p->send_ud;
	*p->flags |= TLS_IO_SEND_BUSY;
	(*p->inflight)++;
}

bool tls_io_sent(struct worker *w, const struct tls_io_port *p, size_t n)
{
	tls_out_done(p->t, n);
	if (!tls_out(p->t, p->iov))
		return false;
	tls_io_flush(w, p);
	return true;
}
