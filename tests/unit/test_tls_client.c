/* Unit tests for upstream TLS: a backend's tls: settings (proxy/config.c), and the client session of proxy/tls.c against its server session in memory. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "config.h"
#include "config-cases.h"
#include "config.h"
#include "tls.h"
#include "tls-certs.h"

static char *dir;

/* a: a.test; b: b.test; ip: 127.0.0.1 as an IP SAN; each self-signed, so each is its own CA. */
static void make_certs(void)
{
	dir = cert_dir();
	cr_assert(dir);
	cr_assert_eq(cert_make(dir, "a", "a.test", "DNS:a.test", 0, 86400), 0);
	cr_assert_eq(cert_make(dir, "b", "b.test", "DNS:b.test", 0, 86400), 0);
	cr_assert_eq(cert_make(dir, "ip", "ip", "IP:127.0.0.1", 0, 86400), 0);
}

static int parse(struct config *c, const char *yaml, char *err)
{
	return config_parse(c, "corral.yaml", yaml, strlen(yaml), err, CFG_ERR_MAX);
}

/* --- config ------------------------------------------------------------------------------------ */

/* in with every "DIR" replaced by the certificate folder. */
static void subst_dir(char *out, size_t len, const char *in)
{
	size_t o = 0;

	for (const char *s = in; *s && o + 256 < len; s++) {
		if (!strncmp(s, "DIR", 3)) {
			o += (size_t)snprintf(out + o, len - o, "%s", dir);
			s += 2;
		} else {
			out[o++] = *s;
		}
	}
	out[o] = 0;
}

/*
 * Backend 0 is plaintext (line 3); backend 1 starts on line 4, its tls: body on lines 6.. (one
 * key per line, 6 spaces in) from body, with DIR standing for the certificate folder.
 *   1 listen: ["127.0.0.1:8080"]
 *   2 backends:
 *   3   - "127.0.0.1:9000"
 *   4   - address: ADDR
 *   5     tls:
 *   6       <body line 1> ...
 */
static void yaml_btls(char *out, size_t len, const char *addr, const char *body)
{
	char b[1024];

	subst_dir(b, sizeof(b), body);
	snprintf(out, len,
		 "listen: [\"127.0.0.1:8080\"]\n"
		 "backends:\n"
		 "  - \"127.0.0.1:9000\"\n"
		 "  - address: \"%s\"\n"
		 "    tls:\n"
		 "%s",
		 addr, b);
}

Test(tls_client_config, defaults_and_every_key, .init = make_certs, .fini = cert_dir_remove)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[2048];
	const struct cfg_backend_tls *t;

	yaml_btls(yaml, sizeof(yaml), "127.0.0.1:9443", "      ca: DIR/a.pem\n");
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_assert(!c.backends[0].tls.on, "a plain string stays a plaintext backend");
	t = &c.backends[1].tls;
	cr_assert(t->on);
	cr_assert(t->verify, "verify is on by default");
	cr_assert(strstr(t->ca, "/a.pem"));
	cr_assert_str_eq(t->sni, "", "no SNI for a numeric address");
	cr_assert_eq(config_tls_backend(&c), 1);

	/* A name in the address is the default SNI. */
	yaml_btls(yaml, sizeof(yaml), "localhost:9443", "      ca: DIR/a.pem\n");
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_assert_str_eq(c.backends[1].tls.sni, "localhost");

	yaml_btls(yaml, sizeof(yaml), "[::1]:9443",
		  "      verify: true\n      ca: DIR/a.pem\n      sni: api.Internal-1.test\n");
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_assert_str_eq(c.backends[1].tls.sni, "api.Internal-1.test");

	/* verify: false needs no CA. */
	yaml_btls(yaml, sizeof(yaml), "127.0.0.1:9443", "      verify: false\n");
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_assert(c.backends[1].tls.on && !c.backends[1].tls.verify);

	cr_assert_eq(
		parse(&c, "listen: [\"127.0.0.1:8080\"]\nbackends: [\"127.0.0.1:9000\"]\n", err), 0,
		"%s", err);
	cr_assert_eq(config_tls_backend(&c), -1);
}

struct btls_err_case {
	const char *addr, *body, *want; /* DIR: the certificate folder; a final '*': a prefix */
};

static const struct btls_err_case btls_cases[] = {
	{ "127.0.0.1:9443", "      verify: true\n",
	  "corral.yaml:6: backends[1].tls.ca: is required when verify is true (a PEM file of the "
	  "CA certificates the backend's certificate must chain to; verify: false accepts any "
	  "certificate)" },
	{ "127.0.0.1:9443", "      verify: false\n      ca: DIR/a.pem\n",
	  "corral.yaml:7: backends[1].tls.ca: is not used when verify is false (remove it, or set "
	  "verify: true)" },
	{ "127.0.0.1:9443", "      verify: maybe\n",
	  "corral.yaml:6: backends[1].tls.verify: must be true or false" },
	{ "127.0.0.1:9443", "      ca: DIR/a.pem\n      alpn: h2\n",
	  "corral.yaml:7: backends[1].tls.alpn: unknown key" },
	{ "127.0.0.1:9443", "      ca: DIR/a.pem\n      sni: 10.0.0.1\n",
	  "corral.yaml:7: backends[1].tls.sni: \"10.0.0.1\" is an IP address; SNI carries host "
	  "names only (leave sni out to verify the certificate against the backend's address)" },
	{ "127.0.0.1:9443", "      ca: DIR/a.pem\n      sni: \"a b.test\"\n",
	  "corral.yaml:7: backends[1].tls.sni: \"a b.test\" is not a host name (letters, digits, "
	  "'-' and '.' only)" },
	{ "127.0.0.1:9443", "      ca: DIR/a.pem\n      sni: a..test\n",
	  "corral.yaml:7: backends[1].tls.sni: \"a..test\" is not a host name (an empty label, or "
	  "one ending in '-')" },
	{ "127.0.0.1:9443", "      ca: DIR/a.pem\n      sni: a-.test\n",
	  "corral.yaml:7: backends[1].tls.sni: \"a-.test\" is not a host name (an empty label, or "
	  "one ending in '-')" },
	{ "127.0.0.1:9443", "      ca: DIR/a.pem\n      sni: -a.test\n",
	  "corral.yaml:7: backends[1].tls.sni: \"-a.test\" is not a host name (a label starts "
	  "with '-' or is over 63 characters)" },
	{ "127.0.0.1:9443", "      ca: DIR/a.pem\n      sni: \"\"\n",
	  "corral.yaml:7: backends[1].tls.sni: must not be empty" },
	{ "127.0.0.1:9443", "      ca: DIR/nope.pem\n",
	  "corral.yaml:6: backends[1].tls.ca: DIR/nope.pem: cannot read: No such file or "
	  "directory" },
	{ "127.0.0.1:9443", "      ca: DIR/a.key\n",
	  "corral.yaml:6: backends[1].tls.ca: DIR/a.key: *" },
	{ "127.0.0.1:9443", "      - ca\n",
	  "corral.yaml:6: backends[1].tls: must be a mapping such as { verify: true, ca: "
	  "/etc/corral/ca.pem, sni: backend.internal }" },
};

Test(tls_client_config, every_error_names_file_line_and_key, .init = make_certs,
     .fini = cert_dir_remove)
{
	char yaml[2048], want[512];

	for (size_t i = 0; i < sizeof(btls_cases) / sizeof(btls_cases[0]); i++) {
		yaml_btls(yaml, sizeof(yaml), btls_cases[i].addr, btls_cases[i].body);
		subst_dir(want, sizeof(want), btls_cases[i].want);
		config_case_refused(i, yaml, want);
	}
}

Test(tls_client_config, a_ca_file_without_a_certificate_is_refused, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[2048], path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/empty.pem", dir);
	f = fopen(path, "w");
	cr_assert(f);
	fputs("# no certificate here\n", f);
	fclose(f);
	yaml_btls(yaml, sizeof(yaml), "127.0.0.1:9443", "      ca: DIR/empty.pem\n");
	cr_assert_eq(parse(&c, yaml, err), -EINVAL);
	cr_assert(!strncmp(err, "corral.yaml:6: backends[1].tls.ca: ", 35), "%s", err);
	cr_assert(strstr(err, "empty.pem"), "%s", err);
}

/* --- the client session against the server session ------------------------------------------- */

static struct tls_keys *keys;

static struct tls_server *server_new(const char *name, uint8_t protocols)
{
	struct tls_server *s;
	struct tls_ctx_err e;
	struct cfg_tls t;

	memset(&t, 0, sizeof(t));
	t.on = true;
	t.session_tickets = true;
	t.protocols = protocols;
	snprintf(t.certs[0].cert, sizeof(t.certs[0].cert), "%s/%s.pem", dir, name);
	snprintf(t.certs[0].key, sizeof(t.certs[0].key), "%s/%s.key", dir, name);
	t.certs_n = 1;
	if (!keys)
		cr_assert_eq(tls_keys_new(&keys, 1000), 0);
	cr_assert_eq(tls_server_new(&s, &t, keys, &e), 0, "tls_server_new: %s", e.msg);
	return s;
}

/* A backend entry as the config would hold it: ca "" = verify: false. */
static void backend(struct cfg_backend *be, const char *addr, const char *ca, const char *sni)
{
	memset(be, 0, sizeof(*be));
	cr_assert_eq(config_parse_addr(&be->addr, addr), 0);
	be->tls.on = true;
	be->tls.verify = ca[0] != 0;
	if (ca[0])
		snprintf(be->tls.ca, sizeof(be->tls.ca), "%s/%s", dir, ca);
	snprintf(be->tls.sni, sizeof(be->tls.sni), "%s", sni);
}

static struct tls_client *client_new(const char *addr, const char *ca, const char *sni)
{
	struct cfg_backend be;
	struct tls_client *cl;
	struct tls_ctx_err e;

	backend(&be, addr, ca, sni);
	cr_assert_eq(tls_client_new(&cl, &be, &e), 0, "tls_client_new: %s", e.msg);
	return cl;
}

/*
 * Moves everything from has queued into to, and lets to consume it: the handshake, then
 * reads into sink (*got bytes so far, cap in all). Returns 0, or -EPROTO once to failed.
 */
static int xfer(struct tls_conn *from, struct tls_conn *to, uint8_t *sink, size_t cap, size_t *got)
{
	static uint8_t buf[TLS_OUT_BYTES];
	struct iovec iov;
	size_t n;
	ssize_t k;

	while ((n = tls_out(from, &iov)) > 0) {
		memcpy(buf, iov.iov_base, n);
		tls_out_done(from, n);
		if (tls_feed(to, buf, n) < 0)
			return -EPROTO;
		while (tls_in_pending(to)) {
			if (to->state == TLS_HANDSHAKE) {
				k = tls_handshake(to);
			} else {
				k = tls_read(to, sink + *got, cap - *got);
				if (k > 0)
					*got += (size_t)k;
			}
			if (k == -EPROTO)
				return -EPROTO;
			if (k == 0 && to->state == TLS_PEER_CLOSED)
				break;
			if (k == -EAGAIN || k == -ENOBUFS)
				break;
		}
	}
	return 0;
}

struct pair {
	struct tls_conn cli, srv;
	uint8_t at_cli[65536], at_srv[65536];
	size_t cli_got, srv_got;
};

/* Drives both ends until neither has anything to send. 0 = both open, -EPROTO = one failed. */
static int pair_run(struct pair *p)
{
	struct iovec iov;

	for (int round = 0; round < 16; round++) {
		if (p->cli.state == TLS_HANDSHAKE) {
			int r = tls_handshake(&p->cli);

			if (r == -EPROTO)
				return r;
		}
		if (xfer(&p->cli, &p->srv, p->at_srv, sizeof(p->at_srv), &p->srv_got) < 0 ||
		    xfer(&p->srv, &p->cli, p->at_cli, sizeof(p->at_cli), &p->cli_got) < 0)
			return -EPROTO;
		if (p->cli.state == TLS_FAILED || p->srv.state == TLS_FAILED)
			return -EPROTO;
		if (p->cli.state != TLS_HANDSHAKE && p->srv.state != TLS_HANDSHAKE &&
		    tls_out(&p->cli, &iov) == 0 && tls_out(&p->srv, &iov) == 0)
			return 0;
	}
	return -ETIMEDOUT;
}

static void pair_start(struct pair *p, struct tls_client *cl, struct tls_sess_slot *slot,
		       struct tls_server *s)
{
	memset(p, 0, sizeof(*p));
	cr_assert_eq(tls_conn_init_client(&p->cli, cl, slot), 0);
	cr_assert_eq(tls_conn_init(&p->srv, tls_server_ctx(s)), 0);
}

static void pair_free(struct pair *p)
{
	tls_conn_free(&p->cli);
	tls_conn_free(&p->srv);
}

static void write_all(struct tls_conn *t, const char *s)
{
	size_t n = strlen(s), off = 0;

	while (off < n) {
		ssize_t k = tls_write(t, (const uint8_t *)s + off, n - off);

		cr_assert_gt(k, 0, "tls_write: %zd", k);
		off += (size_t)k;
	}
}

Test(tls_client, a_request_and_response_over_tls13_and_tls12, .init = make_certs,
     .fini = cert_dir_remove)
{
	static const uint8_t protos[] = { CFG_TLS_V13, CFG_TLS_V12 };
	static const char *const names[] = { "TLSv1.3", "TLSv1.2" };
	struct tls_client *cl = client_new("127.0.0.1:9443", "a.pem", "a.test");
	static struct pair p;
	char alpn[16];

	cr_assert_str_eq(tls_client_sni(cl), "a.test");
	for (int i = 0; i < 2; i++) {
		struct tls_server *s = server_new("a", protos[i]);

		pair_start(&p, cl, NULL, s);
		cr_assert_eq(p.cli.client, true);
		cr_assert_eq(pair_run(&p), 0, "%s: cli %s / srv %s", names[i],
			     p.cli.why ? p.cli.why : "-", p.srv.why ? p.srv.why : "-");
		cr_assert_eq(p.cli.state, TLS_OPEN);
		cr_assert_str_eq(tls_version(&p.cli), names[i]);
		cr_assert_str_eq(tls_sni(&p.srv), "a.test", "the client sent its sni");
		cr_assert_str_eq(tls_alpn(&p.cli, alpn, sizeof(alpn)), "http/1.1");
		cr_assert_str_eq(tls_alpn(&p.srv, alpn, sizeof(alpn)), "http/1.1");

		write_all(&p.cli, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
		cr_assert_eq(pair_run(&p), 0);
		cr_assert_eq(p.srv_got, 32);
		cr_assert(!memcmp(p.at_srv, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", 32));
		write_all(&p.srv, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
		cr_assert_eq(pair_run(&p), 0);
		cr_assert_eq(p.cli_got, 40);
		cr_assert(!memcmp(p.at_cli + 38, "hi", 2));

		/* A clean close from the client: the server reads the end. */
		cr_assert_eq(tls_close(&p.cli), 0);
		cr_assert_eq(xfer(&p.cli, &p.srv, p.at_srv, sizeof(p.at_srv), &p.srv_got), 0);
		cr_assert_eq(p.srv.state, TLS_PEER_CLOSED);
		pair_free(&p);
		tls_server_free(s);
	}
	tls_client_free(cl);
}

/* Each refused certificate: the client fails with TLS_FAIL_VERIFY and X509's reason. */
Test(tls_client, a_wrong_ca_or_name_fails_verification_with_the_reason, .init = make_certs,
     .fini = cert_dir_remove)
{
	static const struct {
		const char *addr, *ca, *sni, *server, *why;
	} cases[] = {
		{ "127.0.0.1:9443", "b.pem", "a.test", "a", "self-signed certificate" },
		{ "127.0.0.1:9443", "a.pem", "b.test", "a", "hostname mismatch" },
		{ "127.0.0.1:9443", "a.pem", "", "a", "IP address mismatch" },
		{ "127.0.0.2:9443", "ip.pem", "", "ip", "IP address mismatch" },
	};
	static struct pair p;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tls_client *cl = client_new(cases[i].addr, cases[i].ca, cases[i].sni);
		struct tls_server *s = server_new(cases[i].server, CFG_TLS_V12 | CFG_TLS_V13);

		pair_start(&p, cl, NULL, s);
		cr_expect_eq(pair_run(&p), -EPROTO, "case %zu", i);
		cr_expect_eq(p.cli.state, TLS_FAILED, "case %zu", i);
		cr_expect_eq(p.cli.fail, TLS_FAIL_VERIFY, "case %zu: %s", i,
			     tls_fail_name(p.cli.fail));
		cr_expect_str_eq(p.cli.why ? p.cli.why : "(none)", cases[i].why, "case %zu", i);
		cr_expect_str_eq(tls_fail_name(p.cli.fail), "verify");
		/* Nothing can be sent on a failed session; the server got the alert. */
		cr_expect_eq(tls_write(&p.cli, (const uint8_t *)"x", 1), -EPROTO);
		cr_expect_eq(xfer(&p.cli, &p.srv, p.at_srv, sizeof(p.at_srv), &p.srv_got), -EPROTO,
			     "case %zu", i);
		cr_expect_eq(p.srv.fail, TLS_FAIL_PEER_ALERT, "case %zu: %s", i,
			     tls_fail_name(p.srv.fail));
		pair_free(&p);
		tls_server_free(s);
		tls_client_free(cl);
	}
}

Test(tls_client, the_right_ip_san_verifies_and_verify_false_accepts_anything, .init = make_certs,
     .fini = cert_dir_remove)
{
	static const struct {
		const char *addr, *ca, *sni, *server;
	} cases[] = {
		{ "127.0.0.1:9443", "ip.pem", "", "ip" }, /* no sni: the address is checked */
		{ "127.0.0.1:9443", "", "", "a" },	  /* verify: false */
		{ "127.0.0.1:9443", "", "nope.test", "b" },
	};
	static struct pair p;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tls_client *cl = client_new(cases[i].addr, cases[i].ca, cases[i].sni);
		struct tls_server *s = server_new(cases[i].server, CFG_TLS_V12 | CFG_TLS_V13);

		pair_start(&p, cl, NULL, s);
		cr_expect_eq(pair_run(&p), 0, "case %zu: %s", i, p.cli.why ? p.cli.why : "-");
		cr_expect_eq(p.cli.state, TLS_OPEN, "case %zu", i);
		cr_expect_eq(tls_sni(&p.srv) != NULL, cases[i].sni[0] != 0, "case %zu", i);
		pair_free(&p);
		tls_server_free(s);
		tls_client_free(cl);
	}
}

/* The worker's slot: a ticket from one connection resumes the next, once, and only under its context. */
static void resume_round(uint8_t protos)
{
	struct tls_client *cl = client_new("127.0.0.1:9443", "a.pem", "a.test");
	struct tls_server *s = server_new("a", protos);
	struct tls_sess_slot slot = { 0 };
	struct tls_client *other;
	static struct pair p;

	pair_start(&p, cl, &slot, s);
	cr_assert_eq(pair_run(&p), 0);
	cr_assert(!tls_resumed(&p.cli));
	/* A TLS 1.3 ticket comes after the handshake: the next read takes it. */
	write_all(&p.srv, "x");
	cr_assert_eq(pair_run(&p), 0);
	cr_assert_not_null(slot.sess, "the session was saved");
	pair_free(&p);

	for (int i = 0; i < 2; i++) {
		pair_start(&p, cl, &slot, s);
		cr_assert_not_null(slot.sess, "a saved session stays for the next ones");
		cr_assert_eq(pair_run(&p), 0);
		cr_assert(tls_resumed(&p.cli), "resumed from the slot (%x, %d)", protos, i);
		cr_assert(tls_resumed(&p.srv));
		write_all(&p.srv, "x");
		cr_assert_eq(pair_run(&p), 0);
		cr_assert_not_null(slot.sess, "a session for the next connection (%x, %d)", protos,
				   i);
		/* Ended without close_notify, as a pooled connection the backend closed. */
		pair_free(&p);
	}

	/* Another context (a reload changed the backend's tls): the session is not offered. */
	other = client_new("127.0.0.1:9443", "a.pem", "a.test");
	pair_start(&p, other, &slot, s);
	cr_assert_not_null(slot.sess, "left alone");
	cr_assert_eq(pair_run(&p), 0);
	cr_assert(!tls_resumed(&p.cli), "a session is never resumed under another context");
	pair_free(&p);

	tls_sess_slot_clear(&slot);
	cr_assert_null(slot.sess);
	tls_client_free(other);
	tls_client_free(cl);
	tls_server_free(s);
}

Test(tls_client, a_saved_session_resumes_the_next_connection, .init = make_certs,
     .fini = cert_dir_remove)
{
	resume_round(CFG_TLS_V13);
	resume_round(CFG_TLS_V12);
}

Test(tls_client, a_plaintext_backend_is_named, .init = make_certs, .fini = cert_dir_remove)
{
	struct tls_client *cl = client_new("127.0.0.1:9443", "", "");
	static const char ans[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
	struct tls_conn t;
	struct iovec iov;

	cr_assert_eq(tls_conn_init_client(&t, cl, NULL), 0);
	cr_assert_eq(tls_handshake(&t), -EAGAIN, "the ClientHello is queued");
	cr_assert_gt(tls_out(&t, &iov), 0);
	cr_assert_eq(((const uint8_t *)iov.iov_base)[0], 0x16, "a handshake record");
	tls_out_done(&t, iov.iov_len);
	cr_assert_eq(tls_feed(&t, (const uint8_t *)ans, sizeof(ans) - 1), -EPROTO);
	cr_assert_eq(t.fail, TLS_FAIL_PLAINTEXT);
	cr_assert_str_eq(t.why, "the backend answered in plaintext (HTTP?), not TLS");
	cr_assert_eq(tls_in_pending(&t), 0);
	tls_conn_free(&t);
	tls_client_free(cl);
}

/*
 * A backend that answers the ClientHello with close_notify failed the handshake: the session
 * says TLS_FAILED with a reason, never TLS_PEER_CLOSED with none (fuzz_tls_client found it;
 * the failure counters and utls's callers expect a reason with every -EPROTO).
 */
Test(tls_client, close_notify_before_the_handshake_ended_fails_it_with_a_reason, .init = make_certs,
     .fini = cert_dir_remove)
{
	/* An alert record (TLS 1.2 framing): warning (1), close_notify (0). */
	static const uint8_t alert[] = { 0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00 };
	struct tls_client *cl = client_new("127.0.0.1:9443", "", "");
	struct tls_conn t;
	struct iovec iov;

	cr_assert_eq(tls_conn_init_client(&t, cl, NULL), 0);
	cr_assert_eq(tls_handshake(&t), -EAGAIN, "the ClientHello is queued");
	cr_assert_gt(tls_out(&t, &iov), 0);
	tls_out_done(&t, iov.iov_len);
	cr_assert_eq(tls_feed(&t, alert, sizeof(alert)), 0);
	cr_assert_eq(tls_handshake(&t), -EPROTO);
	cr_assert_eq(t.state, TLS_FAILED);
	cr_assert_eq(t.fail, TLS_FAIL_PEER_ALERT, "fail %s", tls_fail_name(t.fail));
	cr_assert(t.why != NULL);
	cr_assert_eq(tls_in_pending(&t), 0);
	tls_conn_free(&t);
	tls_client_free(cl);
}

Test(tls_client, a_session_outlives_its_context_reference, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct tls_client *cl = client_new("127.0.0.1:9443", "a.pem", "a.test");
	struct tls_server *s = server_new("a", CFG_TLS_V12 | CFG_TLS_V13);
	static struct pair p;

	pair_start(&p, cl, NULL, s);
	/* A reload drops the context while a pooled connection still uses it. */
	tls_client_free(cl);
	cr_assert_eq(pair_run(&p), 0);
	write_all(&p.cli, "ping");
	cr_assert_eq(pair_run(&p), 0);
	cr_assert_eq(p.srv_got, 4);
	pair_free(&p);
	tls_server_free(s);
}
