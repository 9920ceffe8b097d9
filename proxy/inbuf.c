/*
 * Head assembly over struct inbuf: a request or response head that arrives in pieces is
 * copied into a head buffer until it parses. Touches only inbufs and the worker's head
 * buffers; used by the request side (client.c) and the response side (exchange.c).
 */
#include <string.h>
#include "conn.h"

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
struct inbuf *inbuf_head_src(struct worker *w, struct inbuf *acc, struct inbuf *in)
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
bool inbuf_head_keep(struct worker *w, struct inbuf *acc, struct inbuf *in, struct inbuf *src)
{
	if (src != in)
		return true;
	if (!accum_append(w, acc, in->base + in->off, in->len))
		return false;
	inbuf_release(w, in);
	return true;
}

/* A head of n bytes was parsed from src: the bytes after it become in. */
void inbuf_head_consume(struct worker *w, struct inbuf *acc, struct inbuf *in, struct inbuf *src,
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
