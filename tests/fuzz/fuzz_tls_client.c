/* libFuzzer target for proxy/tls.c's client side (TLS to backends): arbitrary bytes as a backend's answer, during and after the handshake. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "check.h"
#include "tls.h"

/*
 * The first input byte picks the mode (low two bits) and the feed pattern (the rest):
 *   0  the whole input is what a backend answered the ClientHello with (verify: false)
 *   1  a real handshake with corral's own server session, then the input as raw records
 *   2  a real handshake, then the input as plaintext the server encrypts: the client must
 *      decrypt exactly it, and what the client encrypts back must reach the server intact
 *   3  as 0, with verification on (the CA and the name of the real server's certificate)
 * Every invariant violation aborts, so libFuzzer records the input.
 */

static struct tls_server *srv;
static struct tls_client *cl_any, *cl_verify;
static uint8_t plain[1 << 16];

/* What one side sent and the other has not been given yet. */
struct pipe {
	uint8_t buf[1 << 18];
	size_t len;
};
static struct pipe c2s, s2c;

/* Into pipe q, unless it is full. */
static void to_pipe(void *q, const void *p, size_t n)
{
	struct pipe *pq = q;

	if (pq->len + n <= sizeof(pq->buf)) {
		memcpy(pq->buf + pq->len, p, n);
		pq->len += n;
	}
}

/* Takes all of t's output away: into q, or dropped when q is NULL (or full). */
static void drain(struct tls_conn *t, struct pipe *q)
{
	fuzz_drain(t, to_pipe, q);
}

/*
 * Lends p[0..n) to t piece by piece and runs it (handshake, then reads); returns the
 * plaintext it produced in out (up to cap), or -1 once the session failed or closed. What t
 * sends goes into q (NULL: dropped).
 */
static ssize_t feed(struct tls_conn *t, struct pipe *q, const uint8_t *p, size_t n, uint32_t seed,
		    uint8_t *out, size_t cap)
{
	return fuzz_feed(t, to_pipe, q, p, n, seed, out, cap, plain, sizeof(plain));
}

/* Gives to what in holds (its answers go into back); plaintext read is added at out + *got. */
static int pass(struct pipe *in, struct tls_conn *to, struct pipe *back, uint8_t *out, size_t cap,
		size_t *got)
{
	static uint8_t lend[sizeof(((struct pipe *)0)->buf)];
	size_t n = in->len;
	ssize_t r;

	if (n == 0)
		return 0;
	memcpy(lend, in->buf, n); /* stays put while to reads it */
	in->len = 0;
	r = feed(to, back, lend, n, 1, out ? out + *got : NULL, out ? cap - *got : 0);
	if (r < 0)
		return -1;
	*got += (size_t)r;
	return 0;
}

/* Client and server sessions in memory until both are open and nothing is in flight. */
static int handshake(struct tls_conn *c, struct tls_conn *s)
{
	size_t got = 0;

	c2s.len = s2c.len = 0;
	for (int i = 0; i < 10; i++) {
		if (c->state == TLS_HANDSHAKE && tls_handshake(c) == -EPROTO)
			return -1;
		drain(c, &c2s);
		if (pass(&c2s, s, &s2c, NULL, 0, &got) < 0 ||
		    pass(&s2c, c, &c2s, NULL, 0, &got) < 0)
			return -1;
		if (c->state == TLS_OPEN && s->state == TLS_OPEN && c2s.len == 0 && s2c.len == 0)
			return 0;
	}
	return -1;
}

static void make_identity(void)
{
	char dir[] = "/tmp/corral-fuzz-tlsc-XXXXXX";
	struct cfg_tls cfg;
	struct cfg_backend be = { .tls = { .on = true } };
	struct sockaddr_in *s4 = (struct sockaddr_in *)&be.addr.ss;
	struct tls_ctx_err e;
	struct tls_conn c, s;

	CHECK(mkdtemp(dir));
	fuzz_identity(dir, "DNS:fuzz.test", &cfg);
	CHECK(tls_server_new(&srv, &cfg, NULL, &e) == 0);

	s4->sin_family = AF_INET;
	s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	be.addr.len = sizeof(*s4);
	CHECK(tls_client_new(&cl_any, &be, &e) == 0); /* verify: false */
	be.tls.verify = true;
	snprintf(be.tls.ca, sizeof(be.tls.ca), "%s", cfg.certs[0].cert);
	snprintf(be.tls.sni, sizeof(be.tls.sni), "fuzz.test");
	CHECK(tls_client_new(&cl_verify, &be, &e) == 0);
	unlink(cfg.certs[0].cert);
	unlink(cfg.certs[0].key);
	rmdir(dir);

	/* The verifying client accepts the real server: a target that rejects all is useless. */
	CHECK(tls_conn_init_client(&c, cl_verify, NULL) == 0);
	CHECK(tls_conn_init(&s, tls_server_ctx(srv)) == 0);
	CHECK(handshake(&c, &s) == 0);
	tls_conn_free(&c);
	tls_conn_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t got_c[1 << 16], got_s[1 << 16];
	struct tls_sess_slot slot = { 0 };
	struct tls_conn c, s;
	bool server = false;
	size_t got = 0;
	uint32_t seed;
	ssize_t r;

	if (!srv)
		make_identity();
	if (size < 1)
		return 0;
	seed = data[0] >> 2;
	CHECK(tls_conn_init_client(&c, (data[0] & 3) == 3 ? cl_verify : cl_any, &slot) == 0);
	switch (data[0] & 3) {
	case 0:
	case 3:
		CHECK(tls_handshake(&c) == -EAGAIN); /* the ClientHello */
		drain(&c, NULL);
		feed(&c, NULL, data + 1, size - 1, seed, NULL, 0);
		break;
	case 1:
		CHECK(tls_conn_init(&s, tls_server_ctx(srv)) == 0);
		server = true;
		if (handshake(&c, &s) < 0)
			abort(); /* a clean handshake always succeeds */
		feed(&c, NULL, data + 1, size - 1, seed, NULL, 0);
		break;
	case 2: {
		size_t len = size - 1 < sizeof(got_c) ? size - 1 : sizeof(got_c);

		CHECK(tls_conn_init(&s, tls_server_ctx(srv)) == 0);
		server = true;
		if (handshake(&c, &s) < 0)
			abort();
		/* The backend's bytes (short writes and sends): the client reads exactly them. */
		for (size_t off = 0; off < len;) {
			r = tls_write(&s, data + 1 + off, len - off);
			CHECK(r > 0 || r == -ENOBUFS);
			if (r > 0)
				off += (size_t)r;
			drain(&s, &s2c);
			CHECK(pass(&s2c, &c, &c2s, got_c, sizeof(got_c), &got) == 0);
		}
		CHECK(got == len && memcmp(got_c, data + 1, len) == 0);
		/* And back: the server reads exactly what the client wrote. */
		got = 0;
		for (size_t off = 0; off < len;) {
			r = tls_write(&c, got_c + off, len - off);
			CHECK(r > 0 || r == -ENOBUFS);
			if (r > 0)
				off += (size_t)r;
			drain(&c, &c2s);
			CHECK(pass(&c2s, &s, &s2c, got_s, sizeof(got_s), &got) == 0);
		}
		CHECK(got == len && memcmp(got_s, got_c, len) == 0);
		/* A clean close: the server reads the end. */
		CHECK(tls_close(&c) == 0);
		drain(&c, &c2s);
		got = 0;
		pass(&c2s, &s, &s2c, got_s, sizeof(got_s), &got);
		CHECK(s.state == TLS_PEER_CLOSED);
		break;
	}
	}
	tls_conn_free(&c);
	if (server)
		tls_conn_free(&s);
	tls_sess_slot_clear(&slot);
	return 0;
}
