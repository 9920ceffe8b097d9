/* Unit tests for proxy/tls.c: the server transport against an in-process OpenSSL client over memory pipes. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls.h"
#include "tls-certs.h"

/* --- fixtures --------------------------------------------------------------------------------- */

static char *dir;

/* certs[0] default, [1] a.test, [2] *.wild.test, [3] exact.wild.test (after the wildcard). */
static void make_certs(void)
{
	dir = cert_dir();
	cr_assert(dir);
	cr_assert_eq(cert_make(dir, "def", "default.test", "DNS:default.test", 0, 86400), 0);
	cr_assert_eq(cert_make(dir, "a", "a.test", "DNS:a.test", 0, 86400), 0);
	cr_assert_eq(cert_make(dir, "wild", "wild", "DNS:*.wild.test", 0, 86400), 0);
	cr_assert_eq(cert_make(dir, "exact", "exact", "DNS:exact.wild.test", 0, 86400), 0);
}

static void cfg_certs(struct cfg_tls *t, const char *const *names, uint32_t n)
{
	memset(t, 0, sizeof(*t));
	t->on = true;
	t->session_tickets = true;
	t->protocols = CFG_TLS_V12 | CFG_TLS_V13;
	for (uint32_t i = 0; i < n; i++) {
		snprintf(t->certs[i].cert, sizeof(t->certs[i].cert), "%s/%s.pem", dir, names[i]);
		snprintf(t->certs[i].key, sizeof(t->certs[i].key), "%s/%s.key", dir, names[i]);
	}
	t->certs_n = n;
}

static struct tls_server *server_new(uint8_t protocols, struct tls_keys *keys)
{
	static const char *const names[] = { "def", "a", "wild", "exact" };
	struct tls_server *s;
	struct tls_ctx_err e;
	struct cfg_tls t;

	cfg_certs(&t, names, 4);
	t.protocols = protocols;
	cr_assert_eq(tls_server_new(&s, &t, keys, &e), 0, "tls_server_new: %s", e.msg);
	return s;
}

/* An OpenSSL client on two memory BIOs: rb holds what the server sent, wb what it sends. */
struct client {
	SSL_CTX *ctx;
	SSL *ssl;
	BIO *rb, *wb;
};

static void client_new(struct client *c, int min_v, int max_v, const char *sni,
		       const char *alpn_wire, SSL_SESSION *sess)
{
	c->ctx = SSL_CTX_new(TLS_client_method());
	cr_assert(c->ctx);
	if (min_v < TLS1_2_VERSION) {
		/* Old versions need security level 0 to be sent at all. */
		SSL_CTX_set_security_level(c->ctx, 0);
		SSL_CTX_set_cipher_list(c->ctx, "DEFAULT@SECLEVEL=0");
	}
	SSL_CTX_set_min_proto_version(c->ctx, min_v);
	SSL_CTX_set_max_proto_version(c->ctx, max_v);
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
	c->ssl = SSL_new(c->ctx);
	c->rb = BIO_new(BIO_s_mem());
	c->wb = BIO_new(BIO_s_mem());
	BIO_set_mem_eof_return(c->rb, -1);
	SSL_set_bio(c->ssl, c->rb, c->wb);
	SSL_set_connect_state(c->ssl);
	if (sni)
		SSL_set_tlsext_host_name(c->ssl, sni);
	if (alpn_wire)
		SSL_set_alpn_protos(c->ssl, (const unsigned char *)alpn_wire,
				    (unsigned)strlen(alpn_wire));
	if (sess)
		cr_assert_eq(SSL_set_session(c->ssl, sess), 1);
}

static void client_free(struct client *c)
{
	SSL_free(c->ssl);
	SSL_CTX_free(c->ctx);
}

/* Server output -> client input, sent in pieces of at most step bytes (short sends). */
static size_t srv_to_client(struct tls_conn *t, struct client *c, size_t step)
{
	struct iovec iov;
	size_t total = 0, n;

	while (tls_out(t, &iov) > 0) {
		n = iov.iov_len < step ? iov.iov_len : step;
		cr_assert_eq(BIO_write(c->rb, iov.iov_base, (int)n), (int)n);
		tls_out_done(t, n);
		total += n;
	}
	return total;
}

/* One short send: at most step bytes of the server's output reach the client. */
static void srv_send_once(struct tls_conn *t, struct client *c, size_t step)
{
	struct iovec iov;
	size_t n;

	if (tls_out(t, &iov) == 0)
		return;
	n = iov.iov_len < step ? iov.iov_len : step;
	cr_assert_eq(BIO_write(c->rb, iov.iov_base, (int)n), (int)n);
	tls_out_done(t, n);
}

/* How often the server's output was full when it had more to write. */
static int out_full_seen;

/* Plaintext the server decrypted, appended here by srv_take. */
struct sink {
	uint8_t *p;
	size_t len, cap;
};

static void sink_add(struct sink *s, const uint8_t *p, size_t n)
{
	if (s->len + n > s->cap) {
		s->cap = (s->len + n) * 2;
		s->p = realloc(s->p, s->cap);
		cr_assert(s->p);
	}
	memcpy(s->p + s->len, p, n);
	s->len += n;
}

/*
 * Client output -> server, lent in pieces of at most chunk bytes as recv completions would;
 * after each piece the server runs until it wants more. Returns the last status: -EAGAIN,
 * 0 (close_notify) or a failure.
 */
static int client_to_srv(struct client *c, struct tls_conn *t, size_t chunk, struct sink *got)
{
	static uint8_t wire[1 << 20];
	uint8_t plain[16384];
	int n = BIO_read(c->wb, wire, sizeof(wire));
	size_t off = 0;
	ssize_t r = -EAGAIN;

	if (n <= 0)
		n = 0;
	while (off < (size_t)n) {
		size_t k = (size_t)n - off < chunk ? (size_t)n - off : chunk;

		r = tls_feed(t, wire + off, k);
		if (r < 0)
			return (int)r;
		off += k;
		for (;;) {
			if (t->state == TLS_HANDSHAKE)
				r = tls_handshake(t);
			if (t->state != TLS_HANDSHAKE)
				r = tls_read(t, plain, sizeof(plain));
			if (r == -ENOBUFS) {
				/* The output is full: the send completes, then the same call again. */
				out_full_seen++;
				srv_to_client(t, c, 1 << 20);
				continue;
			}
			if (r <= 0)
				break;
			if (got)
				sink_add(got, plain, (size_t)r);
		}
		if (r == -EAGAIN)
			cr_assert_eq(tls_in_pending(t), 0, "-EAGAIN with lent bytes left");
		if (r != -EAGAIN)
			return (int)r;
	}
	return (int)r;
}

/* Runs both handshakes to the end. Returns 0, or the server's failure. */
static int handshake(struct client *c, struct tls_conn *t)
{
	int cr = 0, sr = -EAGAIN;

	for (int i = 0; i < 20; i++) {
		cr = SSL_do_handshake(c->ssl);
		sr = client_to_srv(c, t, 16384, NULL);
		srv_to_client(t, c, 1 << 20);
		if (sr != -EAGAIN && sr != 0)
			return sr;
		if (cr == 1 && t->state == TLS_OPEN)
			return 0;
	}
	return cr == 1 ? sr : -ETIMEDOUT;
}

/* The client reads what the server sent (tickets, data) without blocking. */
static size_t client_read(struct client *c, uint8_t *buf, size_t cap)
{
	size_t got = 0, n;

	while (got < cap && SSL_read_ex(c->ssl, buf + got, cap - got, &n) == 1)
		got += n;
	return got;
}

static void client_write(struct client *c, const void *p, size_t n)
{
	size_t done;

	cr_assert_eq(SSL_write_ex(c->ssl, p, n, &done), 1);
	cr_assert_eq(done, n);
}

/* A request up, a response down, over an open session. */
static void exchange(struct client *c, struct tls_conn *t)
{
	static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
	static const char resp[] = "HTTP/1.1 204 No Content\r\n\r\n";
	struct sink got = { 0 };
	uint8_t buf[256];

	client_write(c, req, sizeof(req) - 1);
	cr_assert_eq(client_to_srv(c, t, 16384, &got), -EAGAIN);
	cr_assert_eq(got.len, sizeof(req) - 1);
	cr_assert_eq(memcmp(got.p, req, got.len), 0);
	cr_assert_eq(tls_write(t, (const uint8_t *)resp, sizeof(resp) - 1),
		     (ssize_t)(sizeof(resp) - 1));
	srv_to_client(t, c, 1 << 20);
	cr_assert_eq(client_read(c, buf, sizeof(buf)), sizeof(resp) - 1);
	cr_assert_eq(memcmp(buf, resp, sizeof(resp) - 1), 0);
	free(got.p);
}

/* --- behaviour ---------------------------------------------------------------------------------- */

Test(tls, handshake_and_exchange_over_tls13_and_tls12, .init = make_certs, .fini = cert_dir_remove)
{
	static const int versions[] = { TLS1_3_VERSION, TLS1_2_VERSION };
	static const char *const names[] = { "TLSv1.3", "TLSv1.2" };
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);

	for (int i = 0; i < 2; i++) {
		struct client c;
		struct tls_conn t;

		cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
		client_new(&c, versions[i], versions[i], NULL, NULL, NULL);
		cr_assert_eq(tls_write(&t, (const uint8_t *)"x", 1), -EAGAIN,
			     "no application data before the handshake");
		cr_assert_eq(handshake(&c, &t), 0);
		cr_assert_str_eq(tls_version(&t), names[i]);
		cr_assert_str_eq(SSL_get_version(c.ssl), names[i]);
		cr_assert(!tls_resumed(&t));
		exchange(&c, &t);
		exchange(&c, &t);
		tls_conn_free(&t);
		client_free(&c);
	}
	tls_server_free(s);
}

Test(tls, sni_selects_exact_then_wildcard_else_the_first, .init = make_certs,
     .fini = cert_dir_remove)
{
	static const struct {
		const char *sni;
		int cert;
		const char *cn;
	} cases[] = {
		{ NULL, 0, "default.test" },
		{ "a.test", 1, "a.test" },
		{ "A.TEST", 1, "a.test" }, /* DNS names compare without case */
		{ "x.wild.test", 2, "wild" },
		{ "exact.wild.test", 3, "exact" },	   /* exact beats the earlier wildcard */
		{ "deep.x.wild.test", 0, "default.test" }, /* a wildcard covers one label */
		{ "wild.test", 0, "default.test" },
		{ "nomatch.test", 0, "default.test" },
	};
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int v = 0; v < 2; v++) {
			struct client c;
			struct tls_conn t;
			char cn[64] = "";
			X509 *peer;

			cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
			client_new(&c, v ? TLS1_2_VERSION : TLS1_3_VERSION,
				   v ? TLS1_2_VERSION : TLS1_3_VERSION, cases[i].sni, NULL, NULL);
			cr_assert_eq(handshake(&c, &t), 0, "sni %s", cases[i].sni);
			cr_assert_eq(tls_cert_index(&t), cases[i].cert, "sni %s: cert %d",
				     cases[i].sni, tls_cert_index(&t));
			peer = SSL_get1_peer_certificate(c.ssl);
			cr_assert(peer);
			X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn,
						  sizeof(cn));
			cr_assert_str_eq(cn, cases[i].cn, "sni %s", cases[i].sni);
			X509_free(peer);
			exchange(&c, &t);
			tls_conn_free(&t);
			client_free(&c);
		}
	}
	tls_server_free(s);
}

Test(tls, old_versions_are_refused, .init = make_certs, .fini = cert_dir_remove)
{
	static const int old[] = { TLS1_VERSION, TLS1_1_VERSION };
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	struct tls_server *only13 = server_new(CFG_TLS_V13, NULL);
	struct client c;
	struct tls_conn t;

	for (int i = 0; i < 2; i++) {
		cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
		client_new(&c, old[i], old[i], NULL, NULL, NULL);
		cr_assert_eq(handshake(&c, &t), -EPROTO);
		cr_assert_eq(t.fail, TLS_FAIL_PROTOCOL_VERSION, "fail %s (%s)",
			     tls_fail_name(t.fail), t.why);
		tls_conn_free(&t);
		client_free(&c);
	}
	/* protocols: [TLSv1.3] refuses a TLS 1.2 client too. */
	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(only13)), 0);
	client_new(&c, TLS1_2_VERSION, TLS1_2_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), -EPROTO);
	cr_assert_eq(t.fail, TLS_FAIL_PROTOCOL_VERSION, "fail %s (%s)", tls_fail_name(t.fail),
		     t.why);
	tls_conn_free(&t);
	client_free(&c);
	tls_server_free(s);
	tls_server_free(only13);
}

Test(tls, alpn_agrees_http11_only, .init = make_certs, .fini = cert_dir_remove)
{
	static const struct {
		const char *offer;
		const char *agreed;
	} cases[] = {
		{ "\x02h2\x08http/1.1", "http/1.1" },
		{ "\x08http/1.1", "http/1.1" },
		{ "\x02h2", NULL }, /* never h2 */
		{ NULL, NULL },
	};
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct client c;
		struct tls_conn t;
		const unsigned char *p;
		unsigned int n;
		char buf[32];
		const char *got;

		cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
		client_new(&c, TLS1_2_VERSION, TLS1_3_VERSION, NULL, cases[i].offer, NULL);
		cr_assert_eq(handshake(&c, &t), 0);
		got = tls_alpn(&t, buf, sizeof(buf));
		SSL_get0_alpn_selected(c.ssl, &p, &n);
		if (cases[i].agreed) {
			cr_assert(got && !strcmp(got, cases[i].agreed), "case %zu", i);
			cr_assert_eq(n, strlen(cases[i].agreed));
		} else {
			cr_assert_null(got, "case %zu: agreed %s", i, got);
			cr_assert_eq(n, 0);
		}
		tls_conn_free(&t);
		client_free(&c);
	}
	tls_server_free(s);
}

Test(tls, client_renegotiation_is_refused, .init = make_certs, .fini = cert_dir_remove)
{
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	struct client c;
	struct tls_conn t;
	uint8_t buf[64];
	int r;

	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	client_new(&c, TLS1_2_VERSION, TLS1_2_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	cr_assert_eq(SSL_renegotiate(c.ssl), 1);
	for (int i = 0; i < 5; i++) {
		SSL_do_handshake(c.ssl);
		r = client_to_srv(&c, &t, 16384, NULL);
		srv_to_client(&t, &c, 1 << 20);
		client_read(&c, buf, sizeof(buf));
	}
	/* The server never ran a second handshake, and the client's attempt failed. */
	cr_assert_eq(SSL_total_renegotiations(t.ssl), 0);
	cr_assert_eq(SSL_do_handshake(c.ssl), -1);
	cr_assert(r == -EAGAIN || r == -EPROTO);
	if (r == -EPROTO)
		cr_assert(t.fail == TLS_FAIL_PEER_ALERT || t.fail == TLS_FAIL_RENEGOTIATION);
	tls_conn_free(&t);
	client_free(&c);
	tls_server_free(s);
}

/* A handshake on s (resuming sess if given); returns the client's session for resumption. */
static SSL_SESSION *connect_once_v(struct tls_server *s, SSL_SESSION *sess, int version,
				   bool *resumed)
{
	struct client c;
	struct tls_conn t;
	SSL_SESSION *out;

	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	client_new(&c, version, version, NULL, NULL, sess);
	cr_assert_eq(handshake(&c, &t), 0);
	exchange(&c, &t); /* the client reads its ticket on the way */
	*resumed = tls_resumed(&t);
	cr_assert_eq(*resumed, SSL_session_reused(c.ssl) == 1);
	out = SSL_get1_session(c.ssl);
	/* A client SSL freed without a shutdown marks its session not resumable. */
	SSL_shutdown(c.ssl);
	cr_assert(out);
	tls_conn_free(&t);
	client_free(&c);
	return out;
}

static SSL_SESSION *connect_once(struct tls_server *s, SSL_SESSION *sess, bool *resumed)
{
	return connect_once_v(s, sess, TLS1_3_VERSION, resumed);
}

Test(tls, tickets_resume_across_workers_and_one_rotation, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct tls_keys *keys, *other_keys;
	struct tls_server *w0, *w1, *w2;
	SSL_SESSION *s0, *s1, *s2, *s3;
	bool resumed;

	cr_assert_eq(tls_keys_new(&keys, 1000), 0);
	cr_assert_eq(tls_keys_new(&other_keys, 1000), 0);
	/* Two contexts as two workers (or two snapshots) build them: they share only the pool. */
	w0 = server_new(CFG_TLS_V12 | CFG_TLS_V13, keys);
	w1 = server_new(CFG_TLS_V12 | CFG_TLS_V13, keys);
	w2 = server_new(CFG_TLS_V12 | CFG_TLS_V13, other_keys);

	s0 = connect_once(w0, NULL, &resumed);
	cr_assert(!resumed);
	s1 = connect_once(w0, s0, &resumed);
	cr_assert(resumed, "same worker");
	SSL_SESSION_free(s1);
	s1 = connect_once(w1, s0, &resumed);
	cr_assert(resumed, "a ticket from worker 0 resumes on worker 1");
	/* Control: a context with other keys cannot read the ticket (full handshake). */
	s2 = connect_once(w2, s0, &resumed);
	cr_assert(!resumed);
	SSL_SESSION_free(s2);

	/* After one rotation the previous key still decrypts ... */
	cr_assert_eq(tls_keys_rotate(keys, 2000), 0);
	s2 = connect_once(w1, s0, &resumed);
	cr_assert(resumed, "the previous key still decrypts");
	/* ... and after a second one the oldest key is gone. */
	cr_assert_eq(tls_keys_rotate(keys, 3000), 0);
	s3 = connect_once(w0, s0, &resumed);
	cr_assert(!resumed, "a ticket two rotations old is refused");
	SSL_SESSION_free(s3);
	/* s2 was renewed under the key current at the time, now the previous one. */
	s3 = connect_once(w0, s2, &resumed);
	cr_assert(resumed);

	SSL_SESSION_free(s0);
	SSL_SESSION_free(s1);
	SSL_SESSION_free(s2);
	SSL_SESSION_free(s3);
	tls_server_free(w0);
	tls_server_free(w1);
	tls_server_free(w2);
	tls_keys_free(keys);
	tls_keys_free(other_keys);
}

Test(tls, ticket_keys_rotate_on_schedule)
{
	struct tls_keys *k;

	cr_assert_eq(tls_keys_new(&k, 5000), 0);
	cr_assert_eq(tls_keys_maybe_rotate(k, 5000 + TLS_TICKET_ROTATE_MS - 1), 0);
	cr_assert_eq(tls_keys_maybe_rotate(k, 5000 + TLS_TICKET_ROTATE_MS), 1);
	cr_assert_eq(tls_keys_maybe_rotate(k, 5000 + TLS_TICKET_ROTATE_MS + 1), 0);
	cr_assert_eq(tls_keys_maybe_rotate(k, 5000 + 2 * TLS_TICKET_ROTATE_MS), 1);
	tls_keys_free(k);
}

Test(tls, clean_close_sends_close_notify_and_abort_never_does, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	struct client c;
	struct tls_conn t;
	uint8_t buf[64];
	struct iovec iov;
	int e;

	/* Clean: close_notify reaches the client, which sees a clean end. */
	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	client_new(&c, TLS1_2_VERSION, TLS1_3_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	exchange(&c, &t);
	cr_assert_eq(tls_close(&t), 0);
	cr_assert_eq(t.state, TLS_CLOSING);
	cr_assert_gt(tls_out(&t, &iov), 0);
	cr_assert_eq(tls_write(&t, (const uint8_t *)"x", 1), -EPIPE);
	srv_to_client(&t, &c, 1 << 20);
	cr_assert_eq(SSL_read(c.ssl, buf, sizeof(buf)), 0);
	cr_assert_eq(SSL_get_error(c.ssl, 0), SSL_ERROR_ZERO_RETURN);
	tls_conn_free(&t);
	client_free(&c);

	/* Abort mid-response: queued bytes are dropped, nothing more is sent, ever. */
	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	client_new(&c, TLS1_2_VERSION, TLS1_3_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	cr_assert_eq(tls_write(&t, (const uint8_t *)"HTTP/1.1 200 OK\r\n", 17), 17);
	srv_to_client(&t, &c, 1 << 20);
	cr_assert_eq(tls_write(&t, (const uint8_t *)"Content-Length: 9", 17), 17);
	tls_abort(&t);
	cr_assert_eq(tls_out(&t, &iov), 0);
	cr_assert_eq(tls_close(&t), -EPIPE);
	cr_assert_eq(tls_write(&t, (const uint8_t *)"x", 1), -EPIPE);
	cr_assert_eq(tls_out(&t, &iov), 0);
	tls_conn_free(&t);
	/* The client got the first part, then the socket's EOF without close_notify. */
	cr_assert_eq(client_read(&c, buf, sizeof(buf)), 17);
	BIO_set_mem_eof_return(c.rb, 0);
	cr_assert_leq(SSL_read(c.ssl, buf, sizeof(buf)), 0);
	e = SSL_get_error(c.ssl, 0);
	cr_assert_neq(e, SSL_ERROR_ZERO_RETURN, "a cut response must not look complete");
	cr_assert(e == SSL_ERROR_SSL || e == SSL_ERROR_SYSCALL);
	client_free(&c);

	/* The client's close_notify: tls_read returns 0, a clean end of input. */
	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	client_new(&c, TLS1_2_VERSION, TLS1_3_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	SSL_shutdown(c.ssl);
	cr_assert_eq(client_to_srv(&c, &t, 16384, NULL), 0);
	cr_assert_eq(t.state, TLS_PEER_CLOSED);
	cr_assert_eq(tls_close(&t), 0, "our close_notify answers theirs");
	tls_conn_free(&t);
	client_free(&c);
	tls_server_free(s);
}

Test(tls, garbage_fails_with_a_reason_and_releases_the_input, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	uint8_t junk[4096];
	struct tls_conn t;
	uint32_t x = 12345;
	int r;

	for (int round = 0; round < 64; round++) {
		for (size_t i = 0; i < sizeof(junk); i++) {
			x = x * 1103515245 + 12345;
			junk[i] = (uint8_t)(x >> 16);
		}
		/* Half the rounds look like a handshake record header, then nonsense. */
		if (round & 1) {
			junk[0] = 0x16;
			junk[1] = 0x03;
			junk[2] = 0x01;
		} else if (junk[0] >= 'A' && junk[0] <= 'Z') {
			junk[0] = 0x01;
		}
		cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
		/* A plausible record length makes it wait for more: feed until it gives up. */
		r = -EAGAIN;
		for (int feeds = 0; feeds < 20 && r == -EAGAIN; feeds++) {
			r = tls_feed(&t, junk, sizeof(junk));
			if (r == 0)
				r = tls_handshake(&t);
		}
		cr_assert_eq(r, -EPROTO, "round %d: %d", round, r);
		cr_assert_neq(t.fail, TLS_FAIL_NONE);
		cr_assert_neq(t.fail, TLS_FAIL_PLAINTEXT);
		cr_assert(t.why && t.why[0]);
		cr_assert_eq(tls_in_pending(&t), 0);
		cr_assert_eq(tls_feed(&t, junk, 10), -EPROTO, "a failed session stays failed");
		tls_conn_free(&t);
	}
	tls_server_free(s);
}

Test(tls, garbage_after_the_handshake_is_a_bad_record, .init = make_certs, .fini = cert_dir_remove)
{
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	/* An application-data record whose ciphertext is noise: the MAC cannot match. */
	uint8_t rec[5 + 64] = { 0x17, 0x03, 0x03, 0x00, 64 };
	uint8_t plain[64];
	struct client c;
	struct tls_conn t;

	memset(rec + 5, 0xa5, 64);
	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	client_new(&c, TLS1_3_VERSION, TLS1_3_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	cr_assert_eq(tls_feed(&t, rec, sizeof(rec)), 0);
	cr_assert_eq(tls_read(&t, plain, sizeof(plain)), -EPROTO);
	cr_assert_eq(t.fail, TLS_FAIL_BAD_RECORD, "fail %s (%s)", tls_fail_name(t.fail), t.why);
	tls_conn_free(&t);
	client_free(&c);
	tls_server_free(s);
}

Test(tls, plaintext_http_is_classified, .init = make_certs, .fini = cert_dir_remove)
{
	static const char *const reqs[] = {
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "CONNECT a:443 HTTP/1.1\r\n\r\n",
		"G", /* the first byte is enough */
	};
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);

	for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
		struct tls_conn t;

		cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
		cr_assert_eq(tls_feed(&t, (const uint8_t *)reqs[i], strlen(reqs[i])), -EPROTO);
		cr_assert_eq(t.fail, TLS_FAIL_PLAINTEXT);
		cr_assert_str_eq(tls_fail_name(t.fail), "plaintext");
		cr_assert_eq(tls_handshake(&t), -EPROTO);
		cr_assert_eq(tls_in_pending(&t), 0);
		tls_conn_free(&t);
	}
	tls_server_free(s);
}

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

Test(tls, large_transfers_both_ways_keep_every_byte, .init = make_certs, .fini = cert_dir_remove)
{
	const size_t up_len = 3u << 20, down_len = 8u << 20;
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	uint8_t *up = malloc(up_len), *down = malloc(down_len), buf[65536];
	uint64_t h_up = 1469598103934665603ULL, h_down = h_up, h_got;
	uint32_t x = 7;

	cr_assert(up && down);
	for (size_t i = 0; i < up_len; i++)
		up[i] = (uint8_t)((x = x * 1664525 + 1013904223) >> 24);
	for (size_t i = 0; i < down_len; i++)
		down[i] = (uint8_t)((x = x * 1664525 + 1013904223) >> 24);
	h_up = fnv(h_up, up, up_len);
	h_down = fnv(h_down, down, down_len);

	for (int v = 0; v < 2; v++) {
		struct client c;
		struct tls_conn t;
		struct sink got = { 0 };
		size_t off = 0, recv_total = 0, chunk = 1;
		ssize_t r;
		int fulls = 0;

		cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
		client_new(&c, v ? TLS1_2_VERSION : TLS1_3_VERSION,
			   v ? TLS1_2_VERSION : TLS1_3_VERSION, NULL, NULL, NULL);
		cr_assert_eq(handshake(&c, &t), 0);

		/* Upload: lent to the server in pieces from 1 byte to a 16 KiB buffer. */
		while (off < up_len) {
			size_t n = up_len - off < 40000 ? up_len - off : 40000;

			client_write(&c, up + off, n);
			off += n;
			chunk = chunk * 7 % 16384 + 1;
			cr_assert_eq(client_to_srv(&c, &t, chunk, &got), -EAGAIN);
		}
		cr_assert_eq(got.len, up_len);
		cr_assert_eq(fnv(1469598103934665603ULL, got.p, got.len), h_up);
		free(got.p);

		/* Download: the server writes until its output is full, sends short, goes on. */
		off = 0;
		h_got = 1469598103934665603ULL;
		while (off < down_len || recv_total < down_len) {
			if (off < down_len) {
				r = tls_write(&t, down + off, down_len - off);
				if (r == -ENOBUFS) {
					fulls++;
				} else {
					cr_assert_gt(r, 0);
					off += (size_t)r;
				}
			}
			chunk = chunk * 13 % 30000 + 1;
			srv_send_once(&t, &c, chunk);
			for (;;) {
				size_t n;

				if (SSL_read_ex(c.ssl, buf, sizeof(buf), &n) != 1)
					break;
				h_got = fnv(h_got, buf, n);
				recv_total += n;
			}
			cr_assert_leq(t.out_tail, TLS_OUT_BYTES);
		}
		cr_assert_eq(recv_total, down_len);
		cr_assert_eq(h_got, h_down);
		cr_assert_gt(fulls, 0, "the output filled up at least once (backpressure ran)");
		tls_conn_free(&t);
		client_free(&c);
	}
	free(up);
	free(down);
	tls_server_free(s);
}

/* --- memory: RELEASE_BUFFERS ----------------------------------------------------------------------- */

/* Bytes the allocator has handed out and not had back (ASan's allocator replaces glibc's). */
#if defined(__SANITIZE_ADDRESS__)
size_t __sanitizer_get_current_allocated_bytes(void); /* libasan's allocator statistics */

static size_t heap_used(void)
{
	return __sanitizer_get_current_allocated_bytes();
}
#else
static size_t heap_used(void)
{
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
}
#endif

Test(tls, an_idle_session_holds_no_record_buffers, .init = make_certs, .fini = cert_dir_remove)
{
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	struct client c[2];
	struct tls_conn t[2];
	size_t before, idle[2], mid;
	uint8_t wire[256], plain[64];
	int n;

	for (int i = 0; i < 2; i++) {
		client_new(&c[i], TLS1_3_VERSION, TLS1_3_VERSION, NULL, NULL, NULL);
		cr_assert_eq(tls_conn_init(&t[i], tls_server_ctx(s)), 0);
		/* Control: the same session without RELEASE_BUFFERS keeps its buffers. */
		if (i == 1)
			SSL_clear_mode(t[i].ssl, SSL_MODE_RELEASE_BUFFERS);
		cr_assert_eq(handshake(&c[i], &t[i]), 0);
		exchange(&c[i], &t[i]);
		exchange(&c[i], &t[i]);
	}
	cr_assert_null(t[0].out, "no output buffer while idle");

	/* Half a record held: the read buffer exists only then, and goes with the record. */
	before = heap_used();
	client_write(&c[0], "hello", 5);
	n = BIO_read(c[0].wb, wire, sizeof(wire));
	cr_assert_gt(n, 10);
	cr_assert_eq(tls_feed(&t[0], wire, 8), 0);
	cr_assert_eq(tls_read(&t[0], plain, sizeof(plain)), -EAGAIN);
	mid = heap_used() - before;
	cr_assert_geq(mid, 16384, "a partial record is held in a record buffer (%zu)", mid);
	cr_assert_eq(tls_feed(&t[0], wire + 8, (size_t)n - 8), 0);
	cr_assert_eq(tls_read(&t[0], plain, sizeof(plain)), 5);
	cr_assert_eq(tls_read(&t[0], plain, sizeof(plain)), -EAGAIN);
	cr_assert_lt(heap_used() - before, 4096, "back to idle: %zu bytes more than before",
		     heap_used() - before);

	for (int i = 0; i < 2; i++) {
		/* What the server side of an idle session holds: all that freeing it returns. */
		before = heap_used();
		tls_conn_free(&t[i]);
		idle[i] = before - heap_used();
		cr_log_info("idle server session %s RELEASE_BUFFERS: %zu bytes",
			    i ? "without" : "with", idle[i]);
		client_free(&c[i]);
	}
	cr_assert_lt(idle[0], 16384, "an idle session holds less than one record buffer");
	cr_assert_geq(idle[1], idle[0] + 16384,
		      "control: without RELEASE_BUFFERS the record buffers stay (%zu vs %zu)",
		      idle[1], idle[0]);
	tls_server_free(s);
}

Test(tls, a_session_outlives_the_contexts_it_started_on, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	struct client c;
	struct tls_conn t;

	/* A reload frees the old snapshot's contexts while its connections are mid-handshake. */
	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	tls_server_free(s);
	client_new(&c, TLS1_3_VERSION, TLS1_3_VERSION, "x.wild.test", NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	cr_assert_eq(tls_cert_index(&t), 2, "SNI still sees every certificate");
	exchange(&c, &t);
	tls_conn_free(&t);
	client_free(&c);
}

Test(tls, a_server_flight_larger_than_the_output_buffer_waits_for_sends, .init = make_certs,
     .fini = cert_dir_remove)
{
	static const char *const names[] = { "big" };
	static char san[80000];
	struct tls_server *s;
	struct tls_ctx_err e;
	struct cfg_tls cfg;
	struct client c;
	struct tls_conn t;
	size_t used = 0;

	/* A certificate of about 50 KB: more than TLS_OUT_BYTES in one handshake flight. */
	for (int i = 0; i < 2500; i++)
		used += (size_t)snprintf(san + used, sizeof(san) - used, "%sDNS:n%d.big.test",
					 i ? "," : "", i);
	cr_assert_eq(cert_make(dir, "big", "big.test", san, 0, 86400), 0);
	cfg_certs(&cfg, names, 1);
	cr_assert_eq(tls_server_new(&s, &cfg, NULL, &e), 0, "%s", e.msg);
	for (int v = 0; v < 2; v++) {
		out_full_seen = 0;
		cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
		client_new(&c, v ? TLS1_2_VERSION : TLS1_3_VERSION,
			   v ? TLS1_2_VERSION : TLS1_3_VERSION, NULL, NULL, NULL);
		SSL_set_max_cert_list(c.ssl, 1 << 20);
		cr_assert_eq(handshake(&c, &t), 0);
		cr_assert_gt(out_full_seen, 0, "the flight did not fill the output (%d)", v);
		exchange(&c, &t);
		tls_conn_free(&t);
		client_free(&c);
	}
	tls_server_free(s);
}

Test(tls, tls12_tickets_resume_across_workers_and_none_when_off, .init = make_certs,
     .fini = cert_dir_remove)
{
	static const char *const names[] = { "def" };
	struct tls_server *w0, *w1, *off;
	struct tls_ctx_err e;
	struct tls_keys *keys;
	struct cfg_tls cfg;
	SSL_SESSION *s0, *s1;
	bool resumed;

	cr_assert_eq(tls_keys_new(&keys, 1), 0);
	w0 = server_new(CFG_TLS_V12 | CFG_TLS_V13, keys);
	w1 = server_new(CFG_TLS_V12 | CFG_TLS_V13, keys);
	cfg_certs(&cfg, names, 1);
	cfg.session_tickets = false;
	cr_assert_eq(tls_server_new(&off, &cfg, keys, &e), 0, "%s", e.msg);

	s0 = connect_once_v(w0, NULL, TLS1_2_VERSION, &resumed);
	cr_assert(!resumed);
	s1 = connect_once_v(w1, s0, TLS1_2_VERSION, &resumed);
	cr_assert(resumed, "a TLS 1.2 ticket from worker 0 resumes on worker 1");
	SSL_SESSION_free(s1);

	/* session_tickets: false issues none, so nothing can resume. */
	SSL_SESSION_free(s0);
	s0 = connect_once_v(off, NULL, TLS1_3_VERSION, &resumed);
	cr_assert(!SSL_SESSION_has_ticket(s0));
	s1 = connect_once_v(off, s0, TLS1_3_VERSION, &resumed);
	cr_assert(!resumed);
	SSL_SESSION_free(s0);
	SSL_SESSION_free(s1);
	tls_server_free(w0);
	tls_server_free(w1);
	tls_server_free(off);
	tls_keys_free(keys);
}

Test(tls, cert_info_describes_each_loaded_certificate, .init = make_certs, .fini = cert_dir_remove)
{
	static const char *const names[] = { "def", "many" };
	struct tls_server *s;
	struct tls_cert_info ci;
	struct tls_ctx_err e;
	struct cfg_tls t;
	char san[2048] = "DNS:many.test,IP:127.0.0.1,IP:::1,email:x@many.test";
	time_t now = time(NULL);

	/* 20 DNS names after the first three entries: more than TLS_CERT_NAMES_MAX. */
	for (int i = 0; i < 20; i++)
		snprintf(san + strlen(san), sizeof(san) - strlen(san), ",DNS:n%d.many.test", i);
	cr_assert_eq(cert_make(dir, "many", "many.test", san, -3600, 2 * 86400), 0);
	cfg_certs(&t, names, 2);
	cr_assert_eq(tls_server_new(&s, &t, NULL, &e), 0, "%s", e.msg);
	cr_assert_eq(tls_server_certs_n(s), 2);

	cr_assert_eq(tls_server_cert_info(s, 0, &ci), 0);
	cr_assert_str_eq(ci.subject, "CN=default.test");
	cr_assert_str_eq(ci.issuer, "CN=default.test", "self-signed: its own issuer");
	cr_assert_eq(ci.names_n, 1);
	cr_assert_eq(ci.names_total, 1);
	cr_assert_str_eq(ci.names[0], "default.test");
	cr_assert(ci.not_after > now + 86400 - 120 && ci.not_after <= now + 86400 + 120,
		  "not_after %lld, now %lld", (long long)ci.not_after, (long long)now);

	cr_assert_eq(tls_server_cert_info(s, 1, &ci), 0);
	cr_assert_str_eq(ci.subject, "CN=many.test");
	cr_assert_eq(ci.names_total, 23, "DNS and IP entries count, the email does not");
	cr_assert_eq(ci.names_n, TLS_CERT_NAMES_MAX);
	cr_assert_str_eq(ci.names[0], "many.test");
	cr_assert_str_eq(ci.names[1], "127.0.0.1");
	cr_assert_str_eq(ci.names[2], "::1");
	cr_assert_str_eq(ci.names[3], "n0.many.test");
	cr_assert(ci.not_before > now - 3600 - 120 && ci.not_before <= now - 3600 + 120);
	cr_assert(ci.not_after > now + 2 * 86400 - 120 && ci.not_after <= now + 2 * 86400 + 120);

	cr_assert_eq(tls_server_cert_info(s, 2, &ci), -ENOENT);
	tls_server_free(s);
}

Test(tls, an_output_cache_serves_every_response_without_an_allocation, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct tls_server *s = server_new(CFG_TLS_V12 | CFG_TLS_V13, NULL);
	struct tls_outcache oc = { .n = 0 };
	struct client c;
	struct tls_conn t;
	uint8_t *first;

	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	t.oc = &oc;
	client_new(&c, TLS1_3_VERSION, TLS1_3_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	cr_assert_null(t.out, "all of the handshake was sent");
	cr_assert_eq(oc.n, 1, "the drained output buffer went to the cache");
	first = oc.buf[0];
	for (int i = 0; i < 3; i++) {
		exchange(&c, &t);
		cr_assert_null(t.out, "an idle session holds no output buffer");
		cr_assert_eq(oc.n, 1);
		cr_assert_eq(oc.buf[0], first, "each response reuses the cached buffer");
	}
	tls_conn_free(&t);
	cr_assert_eq(oc.n, 1);
	/* A full cache gives to the allocator. */
	oc.n = TLS_OUTCACHE_MAX;
	for (uint32_t i = 1; i < TLS_OUTCACHE_MAX; i++)
		oc.buf[i] = OPENSSL_malloc(TLS_OUT_BYTES);
	cr_assert_eq(tls_conn_init(&t, tls_server_ctx(s)), 0);
	t.oc = &oc;
	client_free(&c);
	client_new(&c, TLS1_3_VERSION, TLS1_3_VERSION, NULL, NULL, NULL);
	cr_assert_eq(handshake(&c, &t), 0);
	cr_assert_eq(oc.n, TLS_OUTCACHE_MAX);
	tls_conn_free(&t);
	tls_outcache_drain(&oc);
	cr_assert_eq(oc.n, 0);
	client_free(&c);
	tls_server_free(s);
}
