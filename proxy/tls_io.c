/*
 * The steps both TLS transports (ctls.c, upstream_tls.c) take the same way, written once:
 * declared in tls_io.h. Owns nothing: what it takes (a buffer) goes to the caller.
 */
#include <errno.h>
#include "tls_io.h"

enum tls_io_rd tls_io_read(struct worker *w, struct tls_conn *t, struct inbuf *in)
{
	enum tls_io_rd o = TLS_IO_AGAIN;
	uint32_t cap = w->buf_size, len = 0, hb = NIL;
	int32_t pbid;
	ssize_t n;
	char *p;

	*in = (struct inbuf){ .bid = -1, .hbuf = NIL };
	pbid = buf_take(w);
	if (pbid >= 0) {
		p = buf_addr(w, (uint32_t)pbid);
	} else {
		hb = hbuf_get(w);
		if (hb == NIL)
			return TLS_IO_NOBUF;
		p = hbuf_addr(w, hb);
	}
	for (;;) {
		n = tls_read(t, (uint8_t *)p + len, cap - len);
		if (n > 0) {
			len += (uint32_t)n;
			if (len < cap)
				continue;
			o = TLS_IO_MORE; /* the buffer is full: the session may hold more */
		} else if (n == 0) {
			o = TLS_IO_EOF; /* close_notify */
		} else if (n == -ENOBUFS) {
			o = len ? TLS_IO_MORE : TLS_IO_OUT_FULL;
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
	*in = (struct inbuf){ .base = p, .len = len, .bid = pbid, .hbuf = hb };
	return o;
}
