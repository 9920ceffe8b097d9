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
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include "tls.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__,       \
				#cond);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/*
 * The TLS targets' server identity: a P-256 key and a certificate for CN fuzz.test signed by
 * itself (with subjectAltName san unless NULL), written to dir/c.pem and dir/c.key, and *cfg
 * a listener's tls settings with that one certificate. The caller removes the files.
 */
static inline void fuzz_identity(const char *dir, const char *san, struct cfg_tls *cfg)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	char path[128];
	FILE *f;

	CHECK(key && x);
	*cfg = (struct cfg_tls){ .on = true,
				 .session_tickets = true,
				 .protocols = CFG_TLS_V12 | CFG_TLS_V13,
				 .certs_n = 1 };
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400 * 365);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"fuzz.test", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_set_pubkey(x, key);
	if (san) {
		X509V3_CTX v3;
		X509_EXTENSION *ext;

		X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
		ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
		CHECK(ext && X509_add_ext(x, ext, -1));
		X509_EXTENSION_free(ext);
	}
	CHECK(X509_sign(x, key, EVP_sha256()));
	snprintf(path, sizeof(path), "%s/c.pem", dir);
	CHECK((f = fopen(path, "w")) && PEM_write_X509(f, x));
	fclose(f);
	snprintf(cfg->certs[0].cert, sizeof(cfg->certs[0].cert), "%s", path);
	snprintf(path, sizeof(path), "%s/c.key", dir);
	CHECK((f = fopen(path, "w")) && PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL));
	fclose(f);
	snprintf(cfg->certs[0].key, sizeof(cfg->certs[0].key), "%s", path);
	X509_free(x);
	EVP_PKEY_free(key);
}

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
