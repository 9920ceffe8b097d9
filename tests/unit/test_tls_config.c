/* Unit tests for the listen entries' tls: settings in proxy/config.c, with real certificate files. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "config-cases.h"
#include "tls-certs.h"

static char *dir;

/* A passphrase-protected copy of dir/a.key, as dir/enc.key. */
static void encrypt_key(void)
{
	char path[512];
	EVP_PKEY *k;
	FILE *f;

	snprintf(path, sizeof(path), "%s/a.key", dir);
	f = fopen(path, "r");
	cr_assert(f);
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	cr_assert(k);
	snprintf(path, sizeof(path), "%s/enc.key", dir);
	f = fopen(path, "w");
	cr_assert(f);
	cr_assert(PEM_write_PrivateKey(f, k, EVP_aes_256_cbc(), (unsigned char *)"secret", 6, NULL,
				       NULL));
	fclose(f);
	EVP_PKEY_free(k);
}

static void make_certs(void)
{
	dir = cert_dir();
	cr_assert(dir);
	cr_assert_eq(cert_make(dir, "a", "a.test", "DNS:a.test", 0, 86400), 0);
	cr_assert_eq(cert_make(dir, "b", "b.test", "DNS:b.test,DNS:*.b.test", 0, 86400), 0);
	cr_assert_eq(cert_make(dir, "old", "old.test", "DNS:old.test", -7200, -3600), 0);
	encrypt_key();
}

static int parse(struct config *c, const char *yaml, char *err)
{
	return config_parse(c, "corral.yaml", yaml, strlen(yaml), err, CFG_ERR_MAX);
}

/*
 * A config with a plaintext listener on line 2 and a TLS listener from line 3 on, whose
 * tls: body (one key per line, 6 spaces in) comes from extra; lines below say where.
 *   1 listen:
 *   2   - "127.0.0.1:8080"
 *   3   - address: "127.0.0.1:8443"
 *   4     tls:
 *   5       certificates:
 *   6         - { cert: DIR/a.pem, key: DIR/a.key }
 *   7       <extra line 1> ...
 */
static void yaml_tls(char *out, size_t len, const char *cert, const char *key, const char *extra)
{
	snprintf(out, len,
		 "listen:\n"
		 "  - \"127.0.0.1:8080\"\n"
		 "  - address: \"127.0.0.1:8443\"\n"
		 "    tls:\n"
		 "      certificates:\n"
		 "        - { cert: %s/%s, key: %s/%s }\n"
		 "%s"
		 "backends: [\"127.0.0.1:9000\"]\n",
		 dir, cert, dir, key, extra);
}

Test(tls_config, string_and_object_listeners, .init = make_certs, .fini = cert_dir_remove)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[2048];

	yaml_tls(yaml, sizeof(yaml), "a.pem", "a.key", "");
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_assert_eq(c.listen_n, 2);
	cr_assert(!c.listen_tls[0].on, "a plain string stays a plaintext listener");
	cr_assert(c.listen_tls[1].on);
	cr_assert_str_eq(c.listen[1].text, "127.0.0.1:8443");
	cr_assert_eq(c.listen_tls[1].certs_n, 1);
	cr_assert_eq(c.listen_tls[1].protocols, CFG_TLS_V12 | CFG_TLS_V13, "the default");
	cr_assert(c.listen_tls[1].session_tickets, "on by default");
	cr_assert_str_eq(c.listen_tls[1].ciphers, "");
	cr_assert_eq(config_tls_listener(&c), 1);
	cr_assert_str_eq(c.warnings, "");

	/* An object with only an address is a plaintext listener too. */
	cr_assert_eq(parse(&c,
			   "listen:\n  - { address: \"127.0.0.1:8081\" }\n"
			   "backends: [\"127.0.0.1:9000\"]\n",
			   err),
		     0, "%s", err);
	cr_assert(!c.listen_tls[0].on);
	cr_assert_eq(config_tls_listener(&c), -1);
}

Test(tls_config, every_tls_key, .init = make_certs, .fini = cert_dir_remove)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[4096], extra[1024];
	const struct cfg_tls *t;

	snprintf(extra, sizeof(extra),
		 "        - { cert: %s/b.pem, key: %s/b.key }\n"
		 "      protocols: [TLSv1.3]\n"
		 "      ciphers: \"ECDHE-ECDSA-AES128-GCM-SHA256\"\n"
		 "      ciphersuites: \"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256\"\n"
		 "      session_tickets: false\n",
		 dir, dir);
	yaml_tls(yaml, sizeof(yaml), "a.pem", "a.key", extra);
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	t = &c.listen_tls[1];
	cr_assert_eq(t->certs_n, 2);
	cr_assert(strstr(t->certs[0].cert, "/a.pem") && strstr(t->certs[1].key, "/b.key"));
	cr_assert_eq(t->protocols, CFG_TLS_V13);
	cr_assert_str_eq(t->ciphers, "ECDHE-ECDSA-AES128-GCM-SHA256");
	cr_assert_str_eq(t->ciphersuites, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256");
	cr_assert(!t->session_tickets);
}

Test(tls_config, an_expired_certificate_is_a_warning, .init = make_certs, .fini = cert_dir_remove)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[2048], want[512];

	yaml_tls(yaml, sizeof(yaml), "old.pem", "old.key", "");
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	snprintf(want, sizeof(want),
		 "corral.yaml:6: listen[1].tls.certificates[0].cert: %s/old.pem: certificate "
		 "expired on ",
		 dir);
	cr_assert(!strncmp(c.warnings, want, strlen(want)), "got %s", c.warnings);
}

/* want with every "%1$s" replaced by the certificate folder. */
static void expand(char *out, size_t len, const char *want)
{
	size_t used = 0;
	const char *m;

	while ((m = strstr(want, "%1$s")) && used < len) {
		used += (size_t)snprintf(out + used, len - used, "%.*s%s", (int)(m - want), want,
					 dir);
		want = m + 4;
	}
	if (used < len)
		snprintf(out + used, len - used, "%s", want);
}

struct tls_err_case {
	const char *cert, *key, *extra;
	/* %1$s = the certificate folder; a final '*': OpenSSL's own reason follows, any text */
	const char *want;
};

/* Every TLS error class with the line and key an operator would see. */
static const struct tls_err_case cases[] = {
	{ "a.pem", "a.key", "      protocols: [TLSv1.1, TLSv1.2]\n",
	  "corral.yaml:7: listen[1].tls.protocols[0]: TLSv1.1 is refused (broken or deprecated by "
	  "RFC 8996); use TLSv1.2 and/or TLSv1.3" },
	{ "a.pem", "a.key", "      protocols: [TLSv1.2, TLSv9]\n",
	  "corral.yaml:7: listen[1].tls.protocols[1]: unknown protocol \"TLSv9\" (must be TLSv1.2 "
	  "or TLSv1.3)" },
	{ "a.pem", "a.key", "      protocols: []\n",
	  "corral.yaml:7: listen[1].tls.protocols: must be a list of one or more of TLSv1.2, "
	  "TLSv1.3, e.g. [TLSv1.2, TLSv1.3]" },
	{ "a.pem", "a.key", "      session_tickets: maybe\n",
	  "corral.yaml:7: listen[1].tls.session_tickets: must be true or false" },
	{ "a.pem", "a.key", "      ocsp: true\n",
	  "corral.yaml:7: listen[1].tls.ocsp: unknown key" },
	{ "nope.pem", "a.key", "",
	  "corral.yaml:6: listen[1].tls.certificates[0].cert: %1$s/nope.pem: cannot read: No such "
	  "file or directory" },
	{ "a.pem", "nope.key", "",
	  "corral.yaml:6: listen[1].tls.certificates[0].key: %1$s/nope.key: cannot read: No such "
	  "file or directory" },
	{ "a.pem", "b.key", "",
	  "corral.yaml:6: listen[1].tls.certificates[0].key: %1$s/b.key does not belong to the "
	  "certificate in %1$s/a.pem" },
	{ "a.key", "a.key", "",
	  "corral.yaml:6: listen[1].tls.certificates[0].cert: %1$s/a.key: not a PEM certificate "
	  "chain (*" },
	{ "a.pem", "a.pem", "",
	  "corral.yaml:6: listen[1].tls.certificates[0].key: %1$s/a.pem: not a PEM private key "
	  "(*" },
	/* Never a prompt for the passphrase: start-up and reload must not wait on a terminal. */
	{ "a.pem", "enc.key", "",
	  "corral.yaml:6: listen[1].tls.certificates[0].key: %1$s/enc.key: not a PEM private key "
	  "(*" },
	{ "a.pem", "a.key", "      ciphers: \"NOT-A-CIPHER\"\n",
	  "corral.yaml:7: listen[1].tls.ciphers: no TLS 1.2 cipher in \"NOT-A-CIPHER\" is known to "
	  "OpenSSL" },
	{ "a.pem", "a.key", "      ciphersuites: \"TLS_AES_128_GCM_SHA256:TLS_NOPE\"\n",
	  "corral.yaml:7: listen[1].tls.ciphersuites: \"TLS_NOPE\" is not a TLS 1.3 cipher suite "
	  "OpenSSL knows (e.g. TLS_AES_128_GCM_SHA256)" },
};

Test(tls_config, every_error_names_file_line_and_key, .init = make_certs, .fini = cert_dir_remove)
{
	char yaml[2048], want[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		yaml_tls(yaml, sizeof(yaml), cases[i].cert, cases[i].key, cases[i].extra);
		expand(want, sizeof(want), cases[i].want);
		config_case_refused(i, yaml, want);
	}
}

Test(tls_config, shape_errors, .init = make_certs, .fini = cert_dir_remove)
{
	static const struct {
		const char *yaml, *want;
	} shape[] = {
		{ "listen:\n  - { tls: { certificates: [] } }\nbackends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:2: listen[0].tls.certificates: must be a list of one or more { "
		  "cert: "
		  "FILE, key: FILE } (the first is the default)" },
		{ "listen:\n  - { proxy: 1, address: \"127.0.0.1:1\" }\n"
		  "backends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:2: listen[0].proxy: unknown key" },
		{ "listen:\n  - { tls: {} }\nbackends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:2: listen[0].tls.certificates: is required when tls is given" },
		{ "listen:\n  - address: \"127.0.0.1:1\"\n    tls: {}\n"
		  "backends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:3: listen[0].tls.certificates: is required when tls is given" },
		{ "listen:\n  - address: \"127.0.0.1:1\"\n    tls: yes\n"
		  "backends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:3: listen[0].tls: must be a mapping such as { certificates: [{ "
		  "cert: "
		  "FILE, key: FILE }] }" },
		{ "listen:\n  - address: \"127.0.0.1:1\"\n    tls:\n      certificates:\n"
		  "        - { cert: /x.pem }\nbackends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:5: listen[0].tls.certificates[0].key: is required" },
		{ "listen:\n  - address: \"127.0.0.1:1\"\n    tls:\n      certificates:\n"
		  "        - /x.pem\nbackends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:5: listen[0].tls.certificates[0]: must be a mapping such as { cert: "
		  "/etc/corral/a.pem, key: /etc/corral/a.key }" },
		{ "listen:\n  - { tls: { certificates: [{ cert: /x, key: /y }] } }\n"
		  "backends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:2: listen[0].address: is required" },
		/* The object form takes part in the duplicate check like a string. */
		{ "listen:\n  - \"127.0.0.1:8443\"\n  - { address: \"127.0.0.1:8443\" }\n"
		  "backends: [\"127.0.0.1:9000\"]\n",
		  "corral.yaml:3: listen[1]: duplicate listen address 127.0.0.1:8443 (first at "
		  "line "
		  "2)" },
	};
	struct config c;
	char err[CFG_ERR_MAX];

	for (size_t i = 0; i < sizeof(shape) / sizeof(shape[0]); i++) {
		memset(err, 0, sizeof(err));
		cr_expect_eq(parse(&c, shape[i].yaml, err), -EINVAL, "case %zu", i);
		cr_expect_str_eq(err, shape[i].want, "case %zu:\n  got:  %s\n  want: %s", i, err,
				 shape[i].want);
	}
}

Test(tls_config, too_many_certificates, .init = make_certs, .fini = cert_dir_remove)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[8192], extra[4096] = "";
	size_t used = 0;

	for (int i = 1; i < CFG_TLS_CERTS_MAX + 1; i++)
		used += (size_t)snprintf(extra + used, sizeof(extra) - used,
					 "        - { cert: %s/a.pem, key: %s/a.key }\n", dir, dir);
	yaml_tls(yaml, sizeof(yaml), "a.pem", "a.key", extra);
	cr_assert_eq(parse(&c, yaml, err), -EINVAL);
	cr_assert_str_eq(err, "corral.yaml:6: listen[1].tls.certificates: at most 8 certificates "
			      "are allowed");
	/* Exactly at the limit is fine. */
	yaml_tls(yaml, sizeof(yaml), "a.pem", "a.key", strchr(extra, '\n') + 1);
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_assert_eq(c.listen_tls[1].certs_n, CFG_TLS_CERTS_MAX);
}

Test(tls_config, an_unreadable_file_is_named_even_for_root, .init = make_certs,
     .fini = cert_dir_remove)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[2048], sub[600];

	/* A folder where the file should be: readable by no one, root included. */
	snprintf(sub, sizeof(sub), "%s/folder.pem", dir);
	cr_assert_eq(mkdir(sub, 0700), 0);
	yaml_tls(yaml, sizeof(yaml), "folder.pem", "a.key", "");
	cr_assert_eq(parse(&c, yaml, err), -EINVAL);
	cr_assert(strstr(err, "listen[1].tls.certificates[0].cert: "), "%s", err);
	cr_assert(strstr(err, "folder.pem"), "%s", err);
}
