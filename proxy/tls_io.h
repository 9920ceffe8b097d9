/*
 * What the two TLS transports share (tls_io.c): ctls.c on the client side and upstream_tls.c
 * on the upstream side run a session over io_uring completions the same way; each keeps only
 * its own flags and what it tells its owner (HTTP, or the exchange).
 */
#ifndef CORRAL_TLS_IO_H
#define CORRAL_TLS_IO_H

#include <stdint.h>
#include <sys/uio.h>
#include "tls.h"
#include "worker.h"

/* The bits both transports' flags start with (enum ctls_flag, enum utls_flag: asserted there). */
enum tls_io_flag {
	TLS_IO_SEND_BUSY = 1u << 0, /* a send of ciphertext is in flight */
	TLS_IO_MORE = 1u << 1,	  /* the session may hold plaintext: the next "receive" reads it */
	TLS_IO_HS_MORE = 1u << 2, /* read on once the output is sent (it was full) */
};

/*
 * One transport as the shared steps see it: its session and flags, and where its ciphertext
 * goes (the socket, the send's completion tag, the owner's count of SQEs in flight on it).
 * Made by each side from its connection for one call (ctls_port, utls_port); points into them.
 */
struct tls_io_port {
	struct tls_conn *t;
	struct iovec *iov; /* the ciphertext send in flight */
	uint8_t *flags;	   /* enum tls_io_flag bits, and the side's own above them */
	uint8_t *inflight;
	uint64_t send_ud;
	int fd;
};

/* Sends what the session's output holds, unless a send is in flight (its completion will). */
void tls_io_flush(struct worker *w, const struct tls_io_port *p);

/*
 * One step of the handshake, and the send of what it wrote. 0: it finished; -EAGAIN: it waits
 * for the peer; -ENOBUFS: the output is full (TLS_IO_HS_MORE set: on once it is sent);
 * -EPROTO: it failed, nothing sent (the side's failure path decides about the alert).
 */
int tls_io_handshake(struct worker *w, const struct tls_io_port *p);

/* How a tls_io_read ended (the flags say whether to read on: TLS_IO_MORE, TLS_IO_HS_MORE). */
enum tls_io_rd {
	TLS_IO_OK,    /* read what there was (*in, possibly empty) */
	TLS_IO_EOF,   /* close_notify came (after what *in holds, if anything) */
	TLS_IO_FAIL,  /* the session failed (t->fail, t->why say why): *in is empty */
	TLS_IO_NOBUF, /* no buffer at all: nothing read, TLS_IO_MORE set; wait for one */
};

/*
 * Decrypts what the session holds into a fresh receive's worth of buffer: a free provided
 * buffer, else a head buffer (every free provided one is in the kernel's ring). On return *in
 * holds the plaintext (in->len bytes at in->base, owned by the caller through in->bid or
 * in->hbuf), or, when in->len is 0, no buffer at all (bid -1, hbuf NIL). in->len is
 * w->buf_size at most: no more than a receive, what the HTTP layer expects its input to hold.
 * Sets TLS_IO_MORE when the buffer filled (the session may hold more) or the output filled
 * after some bytes, TLS_IO_HS_MORE when it filled before any.
 */
enum tls_io_rd tls_io_read(struct worker *w, const struct tls_io_port *p, struct inbuf *in);

/*
 * A send that completes as a failure (the session cannot take the bytes): err is set in the
 * flags, and a NOP tagged as the send is queued unless a send in flight will complete instead.
 */
void tls_io_send_fail(struct worker *w, const struct tls_io_port *p, uint8_t err);

/*
 * n bytes of ciphertext were sent: true when more of the output is left (its send is queued,
 * nothing else to do until it completes).
 */
bool tls_io_sent(struct worker *w, const struct tls_io_port *p, size_t n);

/* All the output is sent: true when a read stopped for it (TLS_IO_HS_MORE) goes on now. */
static inline bool tls_io_resume(uint8_t *flags)
{
	if (!(*flags & TLS_IO_HS_MORE))
		return false;
	*flags = (uint8_t)((*flags & ~TLS_IO_HS_MORE) | TLS_IO_MORE);
	return true;
}

/*
 * The bytes of q from its byte cur on, as far as the iovec holding cur goes: their count, and
 * *p where they start; 0 when cur is past the end of q.
 */
static inline size_t tls_io_at(const struct sendq *q, size_t cur, const uint8_t **p)
{
	size_t off = 0;

	for (uint8_t i = 0; i < q->iov_n; off += q->iov[i].iov_len, i++) {
		if (cur < off + q->iov[i].iov_len) {
			*p = (const uint8_t *)q->iov[i].iov_base + (cur - off);
			return off + q->iov[i].iov_len - cur;
		}
	}
	return 0;
}

#endif
