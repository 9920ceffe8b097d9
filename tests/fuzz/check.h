/*
 * The fuzz targets' invariant check: a violation aborts, so libFuzzer records the input. And
 * the TLS targets' driver (fuzz_tls.c, fuzz_tls_client.c): input lent to a session in pieces,
 * the session run, its output taken away.
 */
#ifndef CORRAL_FUZZ_CHECK_H
#define CORRAL_FUZZ_CHECK_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tls.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__,       \
				#cond);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Piece sizes for lending input, from the pattern bits: 1 byte up to a 16 KiB buffer. */
static inline size_t fuzz_piece(uint32_t *seed, size_t left)
{
	size_t n;

	*seed = *seed * 1103515245u + 12345u;
	n = (*seed >> 16) % 4 == 0 ? 1 + (*seed >> 8) % 7 : 1 + (*seed >> 4) % 16384;
	return n < left ? n : left;
}

/* Takes all of t's output away: put(to, bytes, n) gives it to the peer; dropped if to is NULL. */
static inline void fuzz_drain(struct tls_conn *t, void (*put)(void *to, const void *p, size_t n),
			      void *to)
{
	struct iovec iov;

	while (tls_out(t, &iov) > 0) {
		CHECK(iov.iov_len <= TLS_OUT_BYTES);
		if (to)
			put(to, iov.iov_base, iov.iov_len);
		tls_out_done(t, iov.iov_len);
	}
}

/*
 * Lends p[0..n) to t piece by piece and runs it (handshake, then reads); returns the
 * plaintext it produced in out (up to cap), or -1 once the session failed or closed. What t
 * sends goes to fuzz_drain(t, put, to). plain: where each read decrypts to (plain_cap bytes).
 */
static inline ssize_t fuzz_feed(struct tls_conn *t, void (*put)(void *to, const void *p, size_t n),
				void *to, const uint8_t *p, size_t n, uint32_t seed, uint8_t *out,
				size_t cap, uint8_t *plain, size_t plain_cap)
{
	size_t off = 0, got = 0, k;
	ssize_t r;

	while (off < n) {
		k = fuzz_piece(&seed, n - off);
		r = tls_feed(t, p + off, k);
		if (r < 0) {
			CHECK(r == -EPROTO && t->state == TLS_FAILED);
			CHECK(tls_in_pending(t) == 0 && t->why);
			return -1;
		}
		off += k;
		for (int spins = 0;; spins++) {
			CHECK(spins < (1 << 20));
			if (t->state == TLS_HANDSHAKE) {
				r = tls_handshake(t);
				if (r == -ENOBUFS) {
					fuzz_drain(t, put,
						   to); /* the output was full: sent now, go on */
					continue;
				}
				if (r < 0)
					break;
				CHECK(t->state == TLS_OPEN);
			}
			r = tls_read(t, plain, plain_cap);
			if (r == -ENOBUFS) {
				fuzz_drain(t, put, to);
				continue;
			}
			if (r <= 0)
				break;
			CHECK((size_t)r <= plain_cap);
			if (out && got + (size_t)r <= cap)
				memcpy(out + got, plain, (size_t)r);
			got += (size_t)r;
		}
		fuzz_drain(t, put, to);
		if (r == -EAGAIN) {
			CHECK(tls_in_pending(t) == 0);
			continue;
		}
		if (r == 0) {
			CHECK(t->state == TLS_PEER_CLOSED);
			return -1;
		}
		CHECK(r == -EPROTO && t->state == TLS_FAILED && t->fail != TLS_FAIL_NONE);
		CHECK(t->why && tls_in_pending(t) == 0);
		CHECK(tls_fail_name((enum tls_fail)t->fail)[0]);
		return -1;
	}
	return (ssize_t)got;
}

#endif
