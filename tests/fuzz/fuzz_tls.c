/* libFuzzer target for proxy/tls.c: arbitrary bytes into the server transport, during and after the handshake. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "check.h"
#include "tls.h"

/*
 * The first input byte picks the mode (low two bits) and the feed pattern (the rest):
 *   0  the whole input is what a client sent before any handshake (a ClientHello or not)
 *   1  a real handshake with an in-process client first, then the input as raw records
 *   2  a real handshake, then the input as plaintext the client encrypts: the server must
 *      decrypt exactly it, and what the server encrypts back must reach the client intact
 *   3  a real handshake's ClientHello with the input written over part of it
 * Seeds (tests/fuzz/corpus/fuzz_tls) hold real ClientHellos behind a mode byte.
 * Every invariant violation aborts, so libFuzzer records the input.
 */

static struct tls_server *srv;
static SSL_CTX *cctx;
static uint8_t wire[1 << 18], plain[1 << 16];

/* The client's side of the wire: what the server sent, into its read BIO. */
static void to_client(void *c, const void *p, size_t n)
{
	BIO_write(SSL_get_rbio(c), p, (int)n);
}

/* Takes all of the server's output away (to the client's BIO when c is non-NULL). */
static void drain(struct tls_conn *t, SSL *c)
{
	fuzz_drain(t, to_client, c);
}

/*
 * Lends p[0..n) to the server piece by piece and runs it; returns the plaintext it produced
 * in out (up to cap), or -1 once the session failed or closed.
 */
static ssize_t feed(struct tls_conn *t, SSL *c, const uint8_t *p, size_t n, uint32_t seed,
		    uint8_t *out, size_t cap)
{
	return fuzz_feed(t, to_client, c, p, n, seed, out, cap, plain, sizeof(plain));
}

static SSL *client_new(void)
{
	SSL *c = SSL_new(cctx);
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());

	BIO_set_mem_eof_return(rb, -1);
	SSL_set_bio(c, rb, wb);
	SSL_set_connect_state(c);
	SSL_set_tlsext_host_name(c, "fuzz.test");
	return c;
}

/* Client output so far, into wire. */
static size_t client_out(SSL *c)
{
	int n = BIO_read(SSL_get_wbio(c), wire, sizeof(wire));

	return n > 0 ? (size_t)n : 0;
}

static int handshake(struct tls_conn *t, SSL *c)
{
	for (int i = 0; i < 10; i++) {
		int cr = SSL_do_handshake(c);
		size_t n = client_out(c);

		if (n && feed(t, c, wire, n, 1, NULL, 0) < 0)
			return -1;
		if (cr == 1 && t->state == TLS_OPEN)
			return 0;
	}
	return -1;
}

static void make_identity(void)
{
	char dir[] = "/tmp/corral-fuzz-tls-XXXXXX";
	struct cfg_tls cfg;
	struct tls_ctx_err e;

	CHECK(mkdtemp(dir));
	fuzz_identity(dir, NULL, &cfg);
	CHECK(tls_server_new(&srv, &cfg, NULL, &e) == 0);
	unlink(cfg.certs[0].cert);
	unlink(cfg.certs[0].key);
	rmdir(dir);
	cctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t echo[1 << 16];
	struct tls_conn t;
	uint32_t seed;
	SSL *c = NULL;
	ssize_t r;
	size_t n;

	if (!srv)
		make_identity();
	if (size < 1)
		return 0;
	seed = data[0] >> 2;
	CHECK(tls_conn_init(&t, tls_server_ctx(srv)) == 0);
	switch (data[0] & 3) {
	case 0:
		feed(&t, NULL, data + 1, size - 1, seed, NULL, 0);
		break;
	case 1:
		c = client_new();
		if (handshake(&t, c) < 0)
			abort(); /* a clean handshake always succeeds */
		feed(&t, c, data + 1, size - 1, seed, NULL, 0);
		break;
	case 2: {
		size_t len = size - 1 < sizeof(echo) ? size - 1 : sizeof(echo), done, got = 0;
		static uint8_t back[1 << 16];

		c = client_new();
		if (handshake(&t, c) < 0)
			abort();
		/* cppcheck-suppress knownConditionTrueFalse ; size 1 makes it 0 */
		if (len == 0)
			break;
		CHECK(SSL_write_ex(c, data + 1, len, &done) == 1 && done == len);
		n = client_out(c);
		r = feed(&t, c, wire, n, seed, echo, sizeof(echo));
		CHECK(r == (ssize_t)len && memcmp(echo, data + 1, len) == 0);
		/* And back: short writes and sends, the client must read exactly it. */
		for (size_t off = 0; off < len;) {
			r = tls_write(&t, echo + off, len - off);
			CHECK(r > 0 || r == -ENOBUFS);
			if (r > 0)
				off += (size_t)r;
			drain(&t, c);
		}
		while (got < len && SSL_read_ex(c, back + got, sizeof(back) - got, &done) == 1)
			got += done;
		CHECK(got == len && memcmp(back, echo, len) == 0);
		CHECK(tls_close(&t) == 0);
		drain(&t, c);
		CHECK(SSL_read_ex(c, back, 1, &done) == 0 &&
		      SSL_get_error(c, 0) == SSL_ERROR_ZERO_RETURN);
		break;
	}
	case 3: {
		size_t off;

		c = client_new();
		SSL_do_handshake(c);
		n = client_out(c);
		off = n ? (seed * 7) % n : 0;
		if (size - 1 > 0 && n) {
			size_t k = size - 1 < n - off ? size - 1 : n - off;

			memcpy(wire + off, data + 1, k);
		}
		feed(&t, NULL, wire, n, seed, NULL, 0);
		break;
	}
	}
	tls_abort(&t);
	tls_conn_free(&t);
	SSL_free(c);
	ERR_clear_error();
	return 0;
}
