/*
 * tls-bio-bench: server-side CPU of corral's TLS transport (a BIO over the caller's buffers,
 * zero-copy in, one copy out) against the common memory-BIO pattern (a copy into the BIO on
 * the way in, a copy out of it on the way out), with the same SSL_CTX, in one process.
 *
 * Each round: the client sends a small request, the server decrypts it and answers with a
 * response of the given size, which the client decrypts. Only the server's calls are timed
 * (thread CPU time), so the client's work does not count. Usage:
 *   build/tls-bio-bench CERT KEY [rounds]
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls.h"

#define WIRE_MAX (1 << 20)

static uint8_t wire[WIRE_MAX], sendbuf[WIRE_MAX], staging[WIRE_MAX], plain[1 << 16];
static uint64_t srv_ns;

static uint64_t cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct client {
	SSL_CTX *ctx;
	SSL *ssl;
	BIO *rb, *wb;
};

static void client_new(struct client *c, int version)
{
	c->ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_min_proto_version(c->ctx, version);
	SSL_CTX_set_max_proto_version(c->ctx, version);
	c->ssl = SSL_new(c->ctx);
	c->rb = BIO_new(BIO_s_mem());
	c->wb = BIO_new(BIO_s_mem());
	BIO_set_mem_eof_return(c->rb, -1);
	SSL_set_bio(c->ssl, c->rb, c->wb);
	SSL_set_connect_state(c->ssl);
}

static void client_free(struct client *c)
{
	SSL_free(c->ssl);
	SSL_CTX_free(c->ctx);
}

/* The server under test: in = ciphertext received, out = ciphertext to send (into sendbuf). */
struct server {
	/* cppcheck-suppress unusedStructMember ; names the variant for a reader of the table */
	const char *name;
	int (*init)(struct server *s, SSL_CTX *ctx);
	/* Decrypts in[0..n) into plain; returns plaintext bytes. */
	size_t (*in)(struct server *s, const uint8_t *p, size_t n);
	/* Encrypts p[0..n) and puts the ciphertext into sendbuf; returns its length. */
	size_t (*out)(struct server *s, const uint8_t *p, size_t n);
	void (*fini)(struct server *s);
	struct tls_conn t;
	SSL *ssl;
	BIO *rb, *wb;
};

/* --- corral's transport ------------------------------------------------------------------- */

static int t_init(struct server *s, SSL_CTX *ctx)
{
	return tls_conn_init(&s->t, ctx);
}

static size_t t_in(struct server *s, const uint8_t *p, size_t n)
{
	size_t got = 0;
	ssize_t r;

	if (tls_feed(&s->t, p, n) < 0)
		abort();
	for (;;) {
		if (s->t.state == TLS_HANDSHAKE && tls_handshake(&s->t) < 0)
			break;
		r = tls_read(&s->t, plain, sizeof(plain));
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return got;
}

/* The send path would send from the iovec in place; the bench only takes the bytes away. */
static size_t t_out(struct server *s, const uint8_t *p, size_t n)
{
	struct iovec iov;
	size_t sent = 0, off = 0;
	ssize_t r;

	while (off < n) {
		r = tls_write(&s->t, p + off, n - off);
		if (r > 0)
			off += (size_t)r;
		else if (r != -ENOBUFS && r != -EAGAIN)
			abort();
		while (tls_out(&s->t, &iov) > 0) {
			/* stands in for the kernel reading the iovec: the client copies it below */
			memcpy(sendbuf + sent, iov.iov_base, iov.iov_len);
			sent += iov.iov_len;
			tls_out_done(&s->t, iov.iov_len);
		}
	}
	while (tls_out(&s->t, &iov) > 0) {
		memcpy(sendbuf + sent, iov.iov_base, iov.iov_len);
		sent += iov.iov_len;
		tls_out_done(&s->t, iov.iov_len);
	}
	return sent;
}

static void t_fini(struct server *s)
{
	tls_conn_free(&s->t);
}

/* --- the memory-BIO pattern ------------------------------------------------------------------ */

static int m_init(struct server *s, SSL_CTX *ctx)
{
	s->ssl = SSL_new(ctx);
	s->rb = BIO_new(BIO_s_mem());
	s->wb = BIO_new(BIO_s_mem());
	BIO_set_mem_eof_return(s->rb, -1);
	BIO_set_mem_eof_return(s->wb, -1);
	SSL_set_bio(s->ssl, s->rb, s->wb);
	SSL_set_accept_state(s->ssl);
	return 0;
}

static size_t m_in(struct server *s, const uint8_t *p, size_t n)
{
	size_t got = 0, k;

	BIO_write(s->rb, p, (int)n); /* copy 1: into the BIO */
	if (!SSL_is_init_finished(s->ssl))
		SSL_do_handshake(s->ssl);
	while (SSL_read_ex(s->ssl, plain, sizeof(plain), &k) == 1)
		got += k;
	return got;
}

static size_t m_out(struct server *s, const uint8_t *p, size_t n)
{
	size_t done, off = 0;
	int k, sent = 0;

	/* PARTIAL_WRITE (set on the shared context) makes each call write one record. */
	while (off < n) {
		if (SSL_write_ex(s->ssl, p + off, n - off, &done) != 1)
			abort();
		off += done;
	}
	/* copy 2: out of the BIO into what the send path owns */
	while ((k = BIO_read(s->wb, staging + sent, WIRE_MAX - sent)) > 0)
		sent += k;
	/* stands in for the kernel reading the send buffer, as in t_out */
	memcpy(sendbuf, staging, (size_t)sent);
	return (size_t)sent;
}

static void m_fini(struct server *s)
{
	SSL_free(s->ssl);
}

/* --- the loop --------------------------------------------------------------------------------- */

/* Client -> server: what the client wrote, through the server (timed). */
static size_t c2s(struct client *c, struct server *s)
{
	int n = BIO_read(c->wb, wire, sizeof(wire));
	size_t got = 0, off = 0, k;
	uint64_t t0;

	if (n <= 0)
		return 0;
	/* Lent in 16 KiB pieces, as the provided-buffer ring would deliver them. */
	while (off < (size_t)n) {
		k = (size_t)n - off < 16384 ? (size_t)n - off : 16384;
		t0 = cpu_ns();
		got += s->in(s, wire + off, k);
		srv_ns += cpu_ns() - t0;
		off += k;
	}
	return got;
}

static void s2c(struct client *c, struct server *s, const uint8_t *p, size_t n)
{
	uint64_t t0 = cpu_ns();
	size_t len = s->out(s, p, n);

	srv_ns += cpu_ns() - t0;
	if (len)
		BIO_write(c->rb, sendbuf, (int)len);
}

static double run(struct server *s, SSL_CTX *ctx, int version, size_t up, size_t resp, int rounds)
{
	static const char req[] = "GET /x HTTP/1.1\r\nHost: bench\r\nUser-Agent: b\r\n\r\n";
	static uint8_t body[1 << 20];
	struct client c;
	size_t k, got;

	memset(body, 'x', sizeof(body));
	client_new(&c, version);
	if (s->init(s, ctx) < 0)
		abort();
	for (int i = 0; i < 10 && !SSL_is_init_finished(c.ssl); i++) {
		SSL_do_handshake(c.ssl);
		c2s(&c, s);
		s2c(&c, s, NULL, 0);
	}
	srv_ns = 0;
	for (int i = 0; i < rounds; i++) {
		SSL_write_ex(c.ssl, req, sizeof(req) - 1, &k);
		for (size_t off = 0; off < up; off += k)
			if (SSL_write_ex(c.ssl, body, up - off, &k) != 1)
				abort();
		if (c2s(&c, s) != sizeof(req) - 1 + up)
			abort();
		s2c(&c, s, body, resp);
		got = 0;
		while (got < resp && SSL_read_ex(c.ssl, plain, sizeof(plain), &k) == 1)
			got += k;
		if (got != resp)
			abort();
	}
	s->fini(s);
	client_free(&c);
	return (double)srv_ns / rounds / 1000.0;
}

int main(int argc, char **argv)
{
	/* { request body, response } bytes: GETs of growing responses, then uploads. */
	static const size_t sizes[][2] = {
		{ 0, 0 },      { 0, 1024 },  { 0, 16384 },  { 0, 65536 },
		{ 0, 262144 }, { 65536, 0 }, { 262144, 0 },
	};
	struct server corral = {
		.name = "corral-bio", .init = t_init, .in = t_in, .out = t_out, .fini = t_fini
	};
	struct server mem = {
		.name = "mem-bio", .init = m_init, .in = m_in, .out = m_out, .fini = m_fini
	};
	struct cfg_tls cfg = { .on = true,
			       .session_tickets = true,
			       .protocols = CFG_TLS_V12 | CFG_TLS_V13,
			       .certs_n = 1 };
	struct tls_server *srv;
	struct tls_ctx_err e;
	int rounds = argc > 3 ? atoi(argv[3]) : 20000;

	if (argc < 3) {
		fprintf(stderr, "usage: %s CERT KEY [rounds]\n", argv[0]);
		return 2;
	}
	snprintf(cfg.certs[0].cert, sizeof(cfg.certs[0].cert), "%s", argv[1]);
	snprintf(cfg.certs[0].key, sizeof(cfg.certs[0].key), "%s", argv[2]);
	if (tls_server_new(&srv, &cfg, NULL, &e) < 0) {
		fprintf(stderr, "tls: %s\n", e.msg);
		return 1;
	}
	printf("%-8s %-8s %-8s %8s %12s %12s %8s\n", "version", "upload", "response", "rounds",
	       "corral-bio", "mem-bio", "saving");
	for (int v = 0; v < 2; v++) {
		int version = v ? TLS1_2_VERSION : TLS1_3_VERSION;

		for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			size_t up = sizes[i][0], down = sizes[i][1];
			int n = up + down > 65536 ? rounds / 10 : rounds;
			double a, b, a2, b2;

			/* Interleaved twice, best of each, so that a noisy neighbour hits both. */
			a = run(&corral, tls_server_ctx(srv), version, up, down, n);
			b = run(&mem, tls_server_ctx(srv), version, up, down, n);
			a2 = run(&corral, tls_server_ctx(srv), version, up, down, n);
			b2 = run(&mem, tls_server_ctx(srv), version, up, down, n);
			a = a2 < a ? a2 : a;
			b = b2 < b ? b2 : b;
			printf("%-8s %-8zu %-8zu %8d %9.2f us %9.2f us %7.1f%%\n",
			       v ? "TLSv1.2" : "TLSv1.3", up, down, n, a, b, (b - a) / b * 100.0);
		}
	}
	tls_server_free(srv);
	return 0;
}
