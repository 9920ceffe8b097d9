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

/* How a tls_io_read ended: what the transport does next. */
enum tls_io_rd {
	TLS_IO_AGAIN,	 /* the session has nothing more now: the next receive */
	TLS_IO_MORE,	 /* the buffer filled, or the output did after some bytes: read on soon */
	TLS_IO_OUT_FULL, /* nothing read, the output is full: read on once it is sent */
	TLS_IO_EOF,	 /* close_notify came (after what *in holds, if anything) */
	TLS_IO_FAIL,	 /* the session failed (t->fail, t->why say why): *in is empty */
	TLS_IO_NOBUF,	 /* no buffer at all: nothing read; wait for one */
};

/*
 * Decrypts what session t holds into a fresh receive's worth of buffer: a free provided buffer,
 * else a head buffer (every free provided one is in the kernel's ring). On return *in holds
 * the plaintext (in->len bytes at in->base, owned by the caller through in->bid or in->hbuf),
 * or, when in->len is 0, no buffer at all (bid -1, hbuf NIL). in->len is cap at most
 * (w->buf_size: no more than a receive, what the HTTP layer expects its input to hold).
 */
enum tls_io_rd tls_io_read(struct worker *w, struct tls_conn *t, struct inbuf *in);

#endif
