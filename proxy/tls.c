/* TLS transport over OpenSSL 3: listener contexts, the shared ticket-key pool, per-connection sessions. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <urcu-qsbr.h>

#include "daemon.h"
#include "tls.h"

/*
 * TLS 1.2 suites when the config names none: ECDHE with AEAD only (forward secrecy, no CBC),
 * the set that common "intermediate" server profiles settle on. TLS 1.3 keeps OpenSSL's
 * default suites, which are all AEAD already.
 */
#define TLS_DEF_CIPHERS                                                                            \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* One ticket per TLS 1.3 handshake (OpenSSL sends two): a browser reuses one connection. */
#define TLS_TICKETS_PER_HANDSHAKE 1

/* ALPN: corral speaks HTTP/1.1 only, so h2 is never agreed (length-prefixed wire form). */
static const unsigned char tls_alpn_mine[] = "\x08http/1.1";

/* --- process-wide, created once ----------------------------------------------------------- */

static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *tls_bio_method;
static int tls_ctx_idx = -1; /* SSL_CTX ex_data: the struct tls_server it belongs to */
static int tls_cli_idx = -1; /* SSL_CTX ex_data: the struct tls_client it belongs to */

/* --- ticket keys ---------------------------------------------------------------------------- */

struct tls_ticket_key {
	uint8_t name[16]; /* sent in the clear inside the ticket; picks the key to decrypt */
	uint8_t aes[32];  /* AES-256-CBC */
	uint8_t hmac[32]; /* HMAC-SHA256 */
};

/* One generation of keys: k[0] encrypts and decrypts, k[1] (when n == 2) only decrypts. */
struct tls_keyset {
	struct tls_ticket_key k[2];
	uint32_t n;
};

/*
 * CROSS-THREAD (a shared-only pool, like the config snapshot): the ticket keys every worker's
 * sessions encrypt and decrypt tickets with, so that a ticket issued on one core resumes on
 * another and across reloads (the pool outlives snapshots). cur is replaced as a whole by the
 * main thread with rcu_assign_pointer (release); workers read it with rcu_dereference inside
 * their QSBR read side (the ticket callback runs inside a worker's loop iteration) and never
 * keep the pointer past it; the replaced set is freed after synchronize_rcu, when every
 * worker has passed a quiescent point. rotated_ms is main-thread only.
 */
struct tls_keys {
	struct tls_keyset *cur;
	uint64_t rotated_ms;
};

/* Listener contexts: ctx[0] holds the default certificate and owns this struct. */
struct tls_server {
	SSL_CTX *ctx[CFG_TLS_CERTS_MAX];
	X509 *leaf[CFG_TLS_CERTS_MAX]; /* borrowed from ctx[i] */
	uint32_t n;
	struct tls_keys *keys;
};

/* --- the BIO over corral's buffers ------------------------------------------------------------ */

/* OpenSSL reads ciphertext straight out of the lent receive buffer: no copy into a BIO. */
static int bio_read(BIO *b, char *out, int len)
{
	struct tls_conn *t = BIO_get_data(b);
	size_t n;

	BIO_clear_retry_flags(b);
	if (t->in_len == 0 || len <= 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
	memcpy(out, t->in, n);
	t->in += n;
	t->in_len -= n;
	return (int)n;
}

/* The output buffer goes back to the worker's cache when it has room, else to the allocator. */
static void out_put(struct tls_conn *t)
{
	if (!t->out)
		return;
	if (t->oc && t->oc->n < TLS_OUTCACHE_MAX)
		t->oc->buf[t->oc->n++] = t->out;
	else
		OPENSSL_free(t->out);
	t->out = NULL;
	t->out_head = t->out_tail = 0;
}

void tls_outcache_drain(struct tls_outcache *oc)
{
	while (oc->n)
		OPENSSL_free(oc->buf[--oc->n]);
}

/* OpenSSL's record goes into the connection's output buffer (allocated while non-empty). */
static int bio_write(BIO *b, const char *in, int len)
{
	struct tls_conn *t = BIO_get_data(b);
	size_t space, n;

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	if (!t->out) {
		t->out = t->oc && t->oc->n ? t->oc->buf[--t->oc->n] : OPENSSL_malloc(TLS_OUT_BYTES);
		if (!t->out)
			return -1; /* no retry flag: OpenSSL reports SSL_ERROR_SYSCALL */
		t->out_head = t->out_tail = 0;
	}
	space = TLS_OUT_BYTES - t->out_tail;
	if (space == 0) {
		BIO_set_retry_write(b);
		return -1;
	}
	n = space < (size_t)len ? space : (size_t)len;
	memcpy(t->out + t->out_tail, in, n);
	t->out_tail += (uint32_t)n;
	return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct tls_conn *t = BIO_get_data(b);

	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1; /* the send path flushes; nothing is held back here */
	case BIO_CTRL_PENDING:
		return t ? (long)t->in_len : 0;
	case BIO_CTRL_WPENDING:
		return t ? (long)(t->out_tail - t->out_head) : 0;
	default:
		return 0; /* includes the kTLS queries: this BIO offers no kernel offload */
	}
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static int bio_destroy(BIO *b)
{
	BIO_set_data(b, NULL);
	return 1;
}

/* A struct tls_server goes when its default context does (the last session using it ended). */
/* cppcheck-suppress constParameter ; the signature is OpenSSL's CRYPTO_EX_free */
static void tls_server_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			       void *argp)
{
	struct tls_server *s = ptr;
	uint32_t i;

	if (!s || parent != s->ctx[0])
		return;
	for (i = 1; i < s->n; i++) {
		SSL_CTX_set_ex_data(s->ctx[i], tls_ctx_idx, NULL);
		SSL_CTX_free(s->ctx[i]);
	}
	free(s);
}

static void tls_client_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			       void *argp);

static void tls_once_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "corral");

	if (m && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) &&
	    BIO_meth_set_ctrl(m, bio_ctrl) && BIO_meth_set_create(m, bio_create) &&
	    BIO_meth_set_destroy(m, bio_destroy))
		tls_bio_method = m;
	else
		BIO_meth_free(m);
	tls_ctx_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_server_ex_free);
	tls_cli_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_client_ex_free);
}

static int tls_global(void)
{
	pthread_once(&tls_once, tls_once_init);
	return tls_bio_method && tls_ctx_idx >= 0 && tls_cli_idx >= 0 ? 0 : -ENOMEM;
}

/* --- ticket keys ---------------------------------------------------------------------------- */

static int key_fill(struct tls_ticket_key *k)
{
	if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
	    RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
		return -EIO;
	return 0;
}

int tls_keys_new(struct tls_keys **out, uint64_t now_ms)
{
	struct tls_keys *k = calloc(1, sizeof(*k));
	struct tls_keyset *ks = calloc(1, sizeof(*ks));
	int r = -ENOMEM;

	if (!k || !ks)
		goto fail;
	r = key_fill(&ks->k[0]);
	if (r < 0)
		goto fail;
	ks->n = 1;
	k->cur = ks;
	k->rotated_ms = now_ms;
	*out = k;
	return 0;
fail:
	free(ks);
	free(k);
	return r;
}

int tls_keys_rotate(struct tls_keys *k, uint64_t now_ms)
{
	struct tls_keyset *old = k->cur, *ks = calloc(1, sizeof(*ks));
	int r;

	if (!ks)
		return -ENOMEM;
	r = key_fill(&ks->k[0]);
	if (r < 0) {
		OPENSSL_cleanse(ks, sizeof(*ks));
		free(ks);
		return r;
	}
	ks->k[1] = old->k[0];
	ks->n = 2;
	rcu_assign_pointer(k->cur, ks);
	k->rotated_ms = now_ms;
	/* No worker may still hold old once every one has passed a quiescent point. */
	synchronize_rcu();
	OPENSSL_cleanse(old, sizeof(*old));
	free(old);
	return 0;
}

int tls_keys_maybe_rotate(struct tls_keys *k, uint64_t now_ms)
{
	int r;

	if (now_ms - k->rotated_ms < TLS_TICKET_ROTATE_MS)
		return 0;
	r = tls_keys_rotate(k, now_ms);
	return r < 0 ? r : 1;
}

void tls_keys_free(struct tls_keys *k)
{
	if (!k)
		return;
	OPENSSL_cleanse(k->cur, sizeof(*k->cur));
	free(k->cur);
	free(k);
}

static int tls_set_mac_key(EVP_MAC_CTX *hctx, uint8_t *key)
{
	OSSL_PARAM params[3];

	params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32);
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	params[2] = OSSL_PARAM_construct_end();
	return EVP_MAC_CTX_set_params(hctx, params);
}

/*
 * OpenSSL's ticket-key callback, on the worker that runs the handshake: enc = 1 issues a
 * ticket under the current key; enc = 0 finds the key a ticket names. Returns 1 (done), 2
 * (decrypted with the previous key: issue a fresh ticket), 0 (unknown key: full handshake)
 * or -1 (error).
 */
static int tls_ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ectx,
			 EVP_MAC_CTX *hctx, int enc)
{
	struct tls_server *s = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_ctx_idx);
	struct tls_keyset *ks;
	struct tls_ticket_key *k;
	uint32_t i;

	if (!s || !s->keys)
		return -1;
	ks = rcu_dereference(s->keys->cur);
	if (enc) {
		k = &ks->k[0];
		if (RAND_bytes(iv, 16) != 1)
			return -1;
		memcpy(name, k->name, 16);
		if (EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1 ||
		    tls_set_mac_key(hctx, k->hmac) != 1)
			return -1;
		return 1;
	}
	for (i = 0; i < ks->n; i++) {
		k = &ks->k[i];
		if (memcmp(name, k->name, 16) != 0)
			continue;
		if (tls_set_mac_key(hctx, k->hmac) != 1 ||
		    EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
			return -1;
		return i == 0 ? 1 : 2;
	}
	return 0;
}

/* --- listener contexts ---------------------------------------------------------------------- */

__attribute__((format(printf, 4, 5))) static int ctx_err(struct tls_ctx_err *e, int cert,
							 const char *key, const char *fmt, ...)
{
	va_list ap;

	e->cert = cert;
	e->key = key;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	ERR_clear_error();
	return -EINVAL;
}

/* OpenSSL's reason for a failure (the first in its queue: the cause, not the wrapper). */
static const char *ssl_reason(void)
{
	unsigned long e = ERR_peek_error();
	const char *s = e ? ERR_reason_error_string(e) : NULL;

	return s ? s : "unknown OpenSSL error";
}

/* Encrypted private keys are refused: OpenSSL's default would prompt on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

static int file_readable(struct tls_ctx_err *e, int cert, const char *key, const char *path)
{
	FILE *f = fopen(path, "r");

	if (!f)
		return ctx_err(e, cert, key, "%s: cannot read: %s", path, strerror(errno));
	fclose(f);
	return 0;
}

static int sni_pick(const struct tls_server *s, const char *name)
{
	size_t len = strlen(name);
	uint32_t i;

	/* An exact name wins over a wildcard that also matches, whatever the order. */
	for (i = 0; i < s->n; i++)
		if (X509_check_host(s->leaf[i], name, len, X509_CHECK_FLAG_NO_WILDCARDS, NULL) == 1)
			return (int)i;
	for (i = 0; i < s->n; i++)
		if (X509_check_host(s->leaf[i], name, len, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
				    NULL) == 1)
			return (int)i;
	return 0;
}

/* SNI: switch to the certificate that names the server; no name or no match keeps the first. */
static int tls_sni_cb(SSL *ssl, int *alert, void *arg)
{
	struct tls_server *s = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	int i;

	if (!name || s->n < 2)
		return SSL_TLSEXT_ERR_OK;
	i = sni_pick(s, name);
	if (i > 0 && !SSL_set_SSL_CTX(ssl, s->ctx[i])) {
		*alert = SSL_AD_INTERNAL_ERROR;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	return SSL_TLSEXT_ERR_OK;
}

/* ALPN: http/1.1 when the client offers it; otherwise no ALPN at all (never h2). */
static int tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
		       const unsigned char *in, unsigned int inlen, void *arg)
{
	unsigned char *sel;

	if (SSL_select_next_proto(&sel, outlen, tls_alpn_mine, sizeof(tls_alpn_mine) - 1, in,
				  inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

/* Each name of a ':'-separated TLS 1.3 suite list must be one OpenSSL knows. */
static int check_suites(SSL_CTX *ctx, const char *list, struct tls_ctx_err *e)
{
	char buf[sizeof(((struct cfg_tls *)0)->ciphersuites)], *save = NULL, *name;

	snprintf(buf, sizeof(buf), "%s", list);
	for (name = strtok_r(buf, ":", &save); name; name = strtok_r(NULL, ":", &save)) {
		STACK_OF(SSL_CIPHER) * sk;
		bool found = false;
		int i;

		sk = SSL_CTX_set_ciphersuites(ctx, name) ? SSL_CTX_get_ciphers(ctx) : NULL;
		for (i = 0; sk && i < sk_SSL_CIPHER_num(sk); i++)
			if (!strcmp(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(sk, i)), name))
				found = true;
		if (!found)
			return ctx_err(e, -1, "ciphersuites",
				       "\"%s\" is not a TLS 1.3 cipher suite OpenSSL knows (e.g. "
				       "TLS_AES_128_GCM_SHA256)",
				       name);
	}
	return 0;
}

static void asn1_text(const ASN1_TIME *t, char *out, size_t len)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(out, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(out, len, "(unreadable date)");
}

/* The start of making a context: the error report cleared, and OpenSSL set up. */
static int ctx_begin(struct tls_ctx_err *e)
{
	memset(e, 0, sizeof(*e));
	e->cert = e->warn_cert = -1;
	e->key = "";
	return tls_global();
}

/* What every context sets, a listener's or a backend's (opts: options on top of these). */
static void ctx_common(SSL_CTX *ctx, uint64_t opts)
{
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | opts);
	/*
	 * RELEASE_BUFFERS: the record buffers go back to the allocator whenever a record is
	 * done, so an idle keep-alive session holds none. PARTIAL_WRITE and MOVING_WRITE_BUFFER
	 * let a write stop when the output is full and resume from wherever the bytes are then.
	 */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
				      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* No 0-RTT: early data is replayable, and the HTTP layer would not know it was. */
	SSL_CTX_set_max_early_data(ctx, 0);
}

/* One context: the shared settings, then certificate i. */
static int ctx_one(SSL_CTX **out, const struct cfg_tls *cfg, int i, struct tls_ctx_err *e)
{
	const struct cfg_tls_cert *c = &cfg->certs[i];
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	char when[40];
	X509 *x;
	int r;

	if (!ctx)
		return -ENOMEM;
	/* TLS 1.0 and 1.1 are never offered, whatever protocols says. */
	if (!SSL_CTX_set_min_proto_version(ctx, (cfg->protocols & CFG_TLS_V12) ? TLS1_2_VERSION
									       : TLS1_3_VERSION) ||
	    !SSL_CTX_set_max_proto_version(ctx, (cfg->protocols & CFG_TLS_V13) ? TLS1_3_VERSION
									       : TLS1_2_VERSION)) {
		r = ctx_err(e, -1, "protocols", "%s", ssl_reason());
		goto fail;
	}
	ctx_common(ctx,
		   SSL_OP_CIPHER_SERVER_PREFERENCE | (cfg->session_tickets ? 0 : SSL_OP_NO_TICKET));
	SSL_CTX_set_recv_max_early_data(ctx, 0);
	/* Stateless tickets only: a server-side cache would be per context and per process. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"corral", 6);
	SSL_CTX_set_num_tickets(ctx, cfg->session_tickets ? TLS_TICKETS_PER_HANDSHAKE : 0);
	SSL_CTX_set_timeout(ctx, (long)(TLS_TICKET_ROTATE_MS / 1000));
	SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_cb, NULL);
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);

	if (!SSL_CTX_set_cipher_list(ctx, cfg->ciphers[0] ? cfg->ciphers : TLS_DEF_CIPHERS)) {
		r = ctx_err(e, -1, "ciphers", "no TLS 1.2 cipher in \"%s\" is known to OpenSSL",
			    cfg->ciphers);
		goto fail;
	}
	if (cfg->ciphersuites[0]) {
		r = check_suites(ctx, cfg->ciphersuites, e);
		if (r == 0 && !SSL_CTX_set_ciphersuites(ctx, cfg->ciphersuites))
			r = ctx_err(e, -1, "ciphersuites", "%s", ssl_reason());
		if (r < 0)
			goto fail;
	}

	r = file_readable(e, i, "cert", c->cert);
	if (r < 0)
		goto fail;
	if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
		r = ctx_err(e, i, "cert", "%s: not a PEM certificate chain (%s)", c->cert,
			    ssl_reason());
		goto fail;
	}
	r = file_readable(e, i, "key", c->key);
	if (r < 0)
		goto fail;
	if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
		unsigned long err = ERR_peek_last_error();

		if (ERR_GET_REASON(err) == X509_R_KEY_VALUES_MISMATCH ||
		    ERR_GET_REASON(err) == X509_R_KEY_TYPE_MISMATCH)
			r = ctx_err(e, i, "key", "%s does not belong to the certificate in %s",
				    c->key, c->cert);
		else
			r = ctx_err(e, i, "key", "%s: not a PEM private key (%s)", c->key,
				    ssl_reason());
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		r = ctx_err(e, i, "key", "%s does not belong to the certificate in %s", c->key,
			    c->cert);
		goto fail;
	}
	x = SSL_CTX_get0_certificate(ctx);
	if (!e->warn[0] && X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		asn1_text(X509_get0_notAfter(x), when, sizeof(when));
		e->warn_cert = i;
		snprintf(e->warn, sizeof(e->warn), "%s: certificate expired on %s", c->cert, when);
	} else if (!e->warn[0] && X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
		asn1_text(X509_get0_notBefore(x), when, sizeof(when));
		e->warn_cert = i;
		snprintf(e->warn, sizeof(e->warn), "%s: certificate not valid before %s", c->cert,
			 when);
	}
	ERR_clear_error();
	*out = ctx;
	return 0;
fail:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return r;
}

int tls_server_new(struct tls_server **out, const struct cfg_tls *cfg, struct tls_keys *keys,
		   struct tls_ctx_err *e)
{
	struct tls_server *s;
	uint32_t i;
	int r;

	r = ctx_begin(e);
	if (r < 0)
		return r;
	if (!cfg->on || cfg->certs_n == 0 || cfg->certs_n > CFG_TLS_CERTS_MAX)
		return ctx_err(e, -1, "certificates", "at least one certificate is required");
	if (!(cfg->protocols & (CFG_TLS_V12 | CFG_TLS_V13)))
		return ctx_err(e, -1, "protocols", "at least one of TLSv1.2, TLSv1.3 is required");
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->keys = keys;
	for (i = 0; i < cfg->certs_n; i++) {
		r = ctx_one(&s->ctx[i], cfg, (int)i, e);
		if (r < 0)
			goto fail;
		s->n = i + 1;
		s->leaf[i] = SSL_CTX_get0_certificate(s->ctx[i]);
		SSL_CTX_set_ex_data(s->ctx[i], tls_ctx_idx, s);
		if (keys)
			SSL_CTX_set_tlsext_ticket_key_evp_cb(s->ctx[i], tls_ticket_cb);
	}
	SSL_CTX_set_tlsext_servername_callback(s->ctx[0], tls_sni_cb);
	SSL_CTX_set_tlsext_servername_arg(s->ctx[0], s);
	*out = s;
	return 0;
fail:
	if (s->n == 0) {
		free(s);
		return r;
	}
	tls_server_free(s);
	return r;
}

SSL_CTX *tls_server_ctx(const struct tls_server *s)
{
	return s->ctx[0];
}

void tls_server_free(struct tls_server *s)
{
	/* The ex_data free callback of ctx[0] frees the rest when the last reference goes. */
	if (s)
		SSL_CTX_free(s->ctx[0]);
}

uint32_t tls_server_certs_n(const struct tls_server *s)
{
	return s->n;
}

/* name as one RFC 2253 line into out; 0 or -EIO. */
static int name_text(const X509_NAME *name, char *out, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p;
	long n;

	out[0] = '\0';
	if (!b)
		return -ENOMEM;
	if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) < 0) {
		BIO_free(b);
		return -EIO;
	}
	n = BIO_get_mem_data(b, &p);
	snprintf(out, len, "%.*s", (int)(n < 0 ? 0 : n), p);
	BIO_free(b);
	return 0;
}

/* An ASN1_TIME as seconds since the epoch (0 when unreadable). */
static int64_t asn1_unix(const ASN1_TIME *t)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm);
}

int tls_server_cert_info(const struct tls_server *s, uint32_t i, struct tls_cert_info *out)
{
	GENERAL_NAMES *sans;
	const X509 *x;
	int r, k;

	memset(out, 0, sizeof(*out));
	if (i >= s->n)
		return -ENOENT;
	x = s->leaf[i];
	r = name_text(X509_get_subject_name(x), out->subject, sizeof(out->subject));
	if (r == 0)
		r = name_text(X509_get_issuer_name(x), out->issuer, sizeof(out->issuer));
	if (r < 0)
		return r;
	out->not_before = asn1_unix(X509_get0_notBefore(x));
	out->not_after = asn1_unix(X509_get0_notAfter(x));
	sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (k = 0; sans && k < sk_GENERAL_NAME_num(sans); k++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, k);
		char *dst = out->names[out->names_n < TLS_CERT_NAMES_MAX ? out->names_n : 0];
		bool shown = out->names_n < TLS_CERT_NAMES_MAX;

		if (g->type == GEN_DNS) {
			const unsigned char *a = ASN1_STRING_get0_data(g->d.dNSName);

			if (shown)
				snprintf(dst, sizeof(out->names[0]), "%.*s",
					 ASN1_STRING_length(g->d.dNSName), (const char *)a);
		} else if (g->type == GEN_IPADD) {
			const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);
			int len = ASN1_STRING_length(g->d.iPAddress);

			if (len != 4 && len != 16)
				continue;
			if (shown && !inet_ntop(len == 4 ? AF_INET : AF_INET6, a, dst,
						sizeof(out->names[0])))
				continue;
		} else {
			continue; /* email, URI, ...: not a name SNI can match */
		}
		if (shown)
			out->names_n++;
		out->names_total++;
	}
	GENERAL_NAMES_free(sans);
	return 0;
}

int tls_check(const struct cfg_tls *cfg, struct tls_ctx_err *e)
{
	struct tls_server *s;
	int r = tls_server_new(&s, cfg, NULL, e);

	if (r == 0)
		tls_server_free(s);
	return r;
}

/* --- one session ------------------------------------------------------------------------------ */

int tls_conn_init(struct tls_conn *t, SSL_CTX *ctx)
{
	BIO *b;

	memset(t, 0, sizeof(*t));
	if (tls_global() < 0)
		return -ENOMEM;
	t->ssl = SSL_new(ctx);
	if (!t->ssl)
		goto fail;
	b = BIO_new(tls_bio_method);
	if (!b)
		goto fail;
	BIO_set_data(b, t);
	SSL_set_bio(t->ssl, b, b);
	SSL_set_accept_state(t->ssl);
	t->state = TLS_HANDSHAKE;
	return 0;
fail:
	SSL_free(t->ssl);
	t->ssl = NULL;
	ERR_clear_error();
	return -ENOMEM;
}

void tls_conn_free(struct tls_conn *t)
{
	SSL_free(t->ssl);
	out_put(t);
	memset(t, 0, sizeof(*t));
}

static int tls_failed(struct tls_conn *t, enum tls_fail f, const char *why)
{
	/* A session of a connection that failed is not resumed (RFC 5246 7.2.2). */
	if (t->saved && t->slot)
		tls_sess_slot_clear(t->slot);
	t->saved = false;
	t->state = TLS_FAILED;
	t->fail = (uint8_t)f;
	t->why = why;
	t->in = NULL;
	t->in_len = 0; /* nothing lent is read any more: the caller may release it */
	ERR_clear_error();
	return -EPROTO;
}

/* What OpenSSL's error reason means for the failure counters. */
static enum tls_fail fail_of(int reason)
{
	if (reason >= SSL_AD_REASON_OFFSET)
		return TLS_FAIL_PEER_ALERT;
	switch (reason) {
	case SSL_R_HTTP_REQUEST:
	case SSL_R_HTTPS_PROXY_REQUEST:
		return TLS_FAIL_PLAINTEXT;
	case SSL_R_UNSUPPORTED_PROTOCOL:
	case SSL_R_VERSION_TOO_LOW:
	case SSL_R_UNKNOWN_PROTOCOL:
	case SSL_R_UNSUPPORTED_SSL_VERSION:
	case SSL_R_NO_PROTOCOLS_AVAILABLE:
	case SSL_R_BAD_PROTOCOL_VERSION_NUMBER:
		return TLS_FAIL_PROTOCOL_VERSION;
	case SSL_R_NO_SHARED_CIPHER:
	case SSL_R_NO_SHARED_GROUPS:
	case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
	case SSL_R_NO_CIPHERS_AVAILABLE:
		return TLS_FAIL_NO_SHARED_CIPHER;
	case SSL_R_WRONG_VERSION_NUMBER:
	case SSL_R_PACKET_LENGTH_TOO_LONG:
	case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
	case SSL_R_RECORD_LENGTH_MISMATCH:
	case SSL_R_ENCRYPTED_LENGTH_TOO_LONG:
	case SSL_R_UNEXPECTED_RECORD:
	case SSL_R_RECORD_TOO_SMALL:
	case SSL_R_BAD_RECORD_TYPE:
	case SSL_R_LENGTH_MISMATCH:
	case SSL_R_BAD_PACKET_LENGTH:
	case SSL_R_BAD_LENGTH:
	case SSL_R_LENGTH_TOO_SHORT:
	case SSL_R_EXCESSIVE_MESSAGE_SIZE:
	case SSL_R_BAD_HANDSHAKE_LENGTH:
		return TLS_FAIL_BAD_RECORD;
	case SSL_R_NO_RENEGOTIATION:
		return TLS_FAIL_RENEGOTIATION;
	default:
		return TLS_FAIL_HANDSHAKE;
	}
}

/* Turns a failed SSL_* call into -EAGAIN, -ENOBUFS, 0 (close_notify) or -EPROTO. */
static int tls_result(struct tls_conn *t, int ret)
{
	unsigned long e;

	switch (SSL_get_error(t->ssl, ret)) {
	case SSL_ERROR_WANT_READ:
		return -EAGAIN;
	case SSL_ERROR_WANT_WRITE:
		return -ENOBUFS;
	case SSL_ERROR_ZERO_RETURN:
		t->state = TLS_PEER_CLOSED;
		return 0;
	case SSL_ERROR_SSL:
		e = ERR_peek_last_error();
		if (t->client && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
			/* The chain or the name: X509's reason says which (a static string). */
			return tls_failed(
				t, TLS_FAIL_VERIFY,
				X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
		return tls_failed(t, fail_of(ERR_GET_REASON(e)),
				  e && ERR_reason_error_string(e) ? ERR_reason_error_string(e)
								  : "TLS protocol error");
	default:
		/* SSL_ERROR_SYSCALL: only an allocation in bio_write can fail without retry. */
		return tls_failed(t, TLS_FAIL_NOMEM, "out of memory");
	}
}

int tls_feed(struct tls_conn *t, const uint8_t *p, size_t n)
{
	BUG_ON(t->in_len != 0);
	if (t->state == TLS_FAILED || t->state == TLS_ABORTED)
		return -EPROTO;
	/*
	 * A TLS connection opens with a handshake record (0x16) or an SSLv2-style hello (high
	 * bit set); an upper-case letter is an HTTP method: plaintext on the TLS port.
	 */
	if (t->fed == 0 && n > 0 && p[0] >= 'A' && p[0] <= 'Z') {
		t->fed = n;
		return tls_failed(t, TLS_FAIL_PLAINTEXT,
				  t->client ? "the backend answered in plaintext (HTTP?), not TLS"
					    : "plaintext HTTP on the TLS port");
	}
	t->fed += n;
	t->in = p;
	t->in_len = n;
	return 0;
}

int tls_handshake(struct tls_conn *t)
{
	int r;

	if (t->state == TLS_FAILED || t->state == TLS_ABORTED)
		return -EPROTO;
	if (t->state != TLS_HANDSHAKE)
		return 0;
	r = SSL_do_handshake(t->ssl);
	if (r == 1) {
		t->state = TLS_OPEN;
		return 0;
	}
	r = tls_result(t, r);
	if (r == 0) /* close_notify before the handshake ended: the peer gave up on it */
		return tls_failed(t, TLS_FAIL_PEER_ALERT,
				  "close_notify before the handshake ended");
	return r;
}

ssize_t tls_read(struct tls_conn *t, uint8_t *plain, size_t cap)
{
	size_t got = 0;
	int r;

	switch (t->state) {
	case TLS_FAILED:
	case TLS_ABORTED:
		return -EPROTO;
	case TLS_PEER_CLOSED:
	case TLS_CLOSING:
		return 0;
	default:
		break;
	}
	if (cap > INT_MAX)
		cap = INT_MAX;
	r = SSL_read_ex(t->ssl, plain, cap, &got);
	if (t->state == TLS_HANDSHAKE && SSL_is_init_finished(t->ssl))
		t->state = TLS_OPEN;
	if (r == 1)
		return (ssize_t)got;
	return tls_result(t, r);
}

ssize_t tls_write(struct tls_conn *t, const uint8_t *plain, size_t n)
{
	size_t done = 0;
	int r;

	switch (t->state) {
	case TLS_HANDSHAKE:
		return -EAGAIN;
	case TLS_FAILED:
		return -EPROTO;
	case TLS_CLOSING:
	case TLS_ABORTED:
		return -EPIPE;
	default:
		break;
	}
	if (n == 0)
		return 0;
	if (n > INT_MAX)
		n = INT_MAX;
	r = SSL_write_ex(t->ssl, plain, n, &done);
	if (r == 1)
		return (ssize_t)done;
	r = tls_result(t, r);
	return r == 0 ? -EPIPE : r;
}

size_t tls_out(const struct tls_conn *t, struct iovec *iov)
{
	size_t n = t->out ? t->out_tail - t->out_head : 0;

	iov->iov_base = n ? t->out + t->out_head : NULL;
	iov->iov_len = n;
	return n;
}

void tls_out_done(struct tls_conn *t, size_t n)
{
	BUG_ON(n > (size_t)(t->out_tail - t->out_head));
	t->out_head += (uint32_t)n;
	if (t->out_head == t->out_tail)
		out_put(t);
}

int tls_close(struct tls_conn *t)
{
	int r;

	if (t->state == TLS_CLOSING)
		return 0;
	if (t->state != TLS_OPEN && t->state != TLS_PEER_CLOSED)
		return -EPIPE;
	r = SSL_shutdown(t->ssl);
	if (r >= 0) {
		t->state = TLS_CLOSING;
		return 0;
	}
	r = tls_result(t, r);
	if (r == -EAGAIN) { /* waiting for the peer's close_notify: ours is queued */
		t->state = TLS_CLOSING;
		return 0;
	}
	return r == -ENOBUFS ? r : -EPIPE;
}

void tls_abort(struct tls_conn *t)
{
	t->state = TLS_ABORTED;
	t->in = NULL;
	t->in_len = 0;
	out_put(t);
	if (t->ssl)
		SSL_set_quiet_shutdown(t->ssl, 1);
}

bool tls_has_pending(const struct tls_conn *t)
{
	return t->in_len != 0 || (t->ssl && SSL_has_pending(t->ssl) == 1);
}

bool tls_resumed(const struct tls_conn *t)
{
	return SSL_session_reused(t->ssl) == 1;
}

const char *tls_version(const struct tls_conn *t)
{
	return SSL_get_version(t->ssl);
}

const char *tls_cipher(const struct tls_conn *t)
{
	return SSL_get_cipher_name(t->ssl);
}

const char *tls_sni(const struct tls_conn *t)
{
	return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

int tls_cert_index(const struct tls_conn *t)
{
	SSL_CTX *ctx = SSL_get_SSL_CTX(t->ssl);
	struct tls_server *s = SSL_CTX_get_ex_data(ctx, tls_ctx_idx);
	uint32_t i;

	for (i = 0; s && i < s->n; i++)
		if (s->ctx[i] == ctx)
			return (int)i;
	return -1;
}

const char *tls_alpn(const struct tls_conn *t, char *buf, size_t len)
{
	const unsigned char *p;
	unsigned int n;

	SSL_get0_alpn_selected(t->ssl, &p, &n);
	if (!p || n == 0 || len == 0)
		return NULL;
	snprintf(buf, len, "%.*s", (int)n, (const char *)p);
	return buf;
}

const char *tls_fail_name(enum tls_fail f)
{
	static const char *const names[TLS_FAIL_REASONS] = {
		[TLS_FAIL_NONE] = "none",
		[TLS_FAIL_PLAINTEXT] = "plaintext",
		[TLS_FAIL_PROTOCOL_VERSION] = "protocol_version",
		[TLS_FAIL_NO_SHARED_CIPHER] = "no_shared_cipher",
		[TLS_FAIL_BAD_RECORD] = "bad_record",
		[TLS_FAIL_RENEGOTIATION] = "renegotiation",
		[TLS_FAIL_PEER_ALERT] = "peer_alert",
		[TLS_FAIL_HANDSHAKE] = "handshake",
		[TLS_FAIL_NOMEM] = "nomem",
		[TLS_FAIL_TIMEOUT] = "timeout",
	};

	if (f == TLS_FAIL_VERIFY)
		return "verify";
	return (unsigned)f < TLS_FAIL_REASONS && names[f] ? names[f] : "unknown";
}

/* --- client side: re-encryption to a backend ----------------------------------------------- */

/*
 * One TLS backend's client context, built by the main thread from the backend's tls: settings
 * and shared by every worker (SSL_CTX is safe for concurrent SSL_new; the CA store is only
 * read, under OpenSSL's own lock). Owned by its SSL_CTX (ex_data): it goes when the last
 * session that uses it does. id tells a worker's saved session which context it came from.
 */
struct tls_client {
	SSL_CTX *ctx;
	uint64_t id;
	char sni[CFG_TLS_SNI_MAX];
};

/* Ids are never reused, so a saved session never resumes under a context it did not come from. */
static uint64_t tls_client_ids;

/* cppcheck-suppress constParameter ; the signature is OpenSSL's CRYPTO_EX_free */
static void tls_client_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			       void *argp)
{
	free(ptr);
}

/*
 * A new session to resume with (after the handshake in TLS 1.2, with each NewSessionTicket in
 * TLS 1.3): a copy replaces the worker's saved one for this backend. A copy, because OpenSSL
 * marks the connection's own session not resumable when the connection ends without our
 * close_notify (SSL_free of one the backend closed), which is how pooled ones usually end.
 * Returns 0: OpenSSL keeps its reference.
 */
static int tls_client_sess_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct tls_conn *t = SSL_get_app_data(ssl);
	const struct tls_client *cl = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_cli_idx);
	SSL_SESSION *copy;

	if (!t || !t->slot || !cl || !SSL_SESSION_is_resumable(sess))
		return 0;
	copy = SSL_SESSION_dup(sess);
	if (!copy)
		return 0;
	tls_sess_slot_clear(t->slot);
	t->slot->sess = copy;
	t->slot->ctx_id = cl->id;
	t->saved = true;
	return 0;
}

void tls_sess_slot_clear(struct tls_sess_slot *slot)
{
	SSL_SESSION_free(slot->sess);
	slot->sess = NULL;
	slot->ctx_id = 0;
}

/* The CA file: readable, and at least one PEM certificate in it. */
static int client_ca(SSL_CTX *ctx, const char *ca, struct tls_ctx_err *e)
{
	STACK_OF(X509_OBJECT) * objs;
	int r = file_readable(e, -1, "ca", ca);

	if (r < 0)
		return r;
	if (SSL_CTX_load_verify_file(ctx, ca) != 1)
		return ctx_err(e, -1, "ca", "%s: not a PEM file of CA certificates (%s)", ca,
			       ssl_reason());
	objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
	if (!objs || sk_X509_OBJECT_num(objs) == 0)
		return ctx_err(e, -1, "ca", "%s: holds no certificate", ca);
	return 0;
}

/* What the backend's certificate must name: sni, else the address the backend was given as. */
static int client_name(SSL_CTX *ctx, const struct cfg_backend *be, struct tls_ctx_err *e)
{
	X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
	const struct sockaddr_storage *ss = &be->addr.ss;
	int ok;

	if (be->tls.sni[0]) {
		X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		ok = X509_VERIFY_PARAM_set1_host(vp, be->tls.sni, 0);
	} else if (ss->ss_family == AF_INET6) {
		ok = X509_VERIFY_PARAM_set1_ip(
			vp, (const unsigned char *)&((const struct sockaddr_in6 *)ss)->sin6_addr,
			16);
	} else {
		ok = X509_VERIFY_PARAM_set1_ip(
			vp, (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr, 4);
	}
	return ok == 1 ? 0 : ctx_err(e, -1, "sni", "%s", ssl_reason());
}

int tls_client_new(struct tls_client **out, const struct cfg_backend *be, struct tls_ctx_err *e)
{
	const struct cfg_backend_tls *cfg = &be->tls;
	struct tls_client *cl;
	SSL_CTX *ctx;
	int r;

	r = ctx_begin(e);
	if (r < 0)
		return r;
	if (!cfg->on)
		return ctx_err(e, -1, "", "the backend has no tls settings");
	cl = calloc(1, sizeof(*cl));
	ctx = SSL_CTX_new(TLS_client_method());
	if (!cl || !ctx || !SSL_CTX_set_ex_data(ctx, tls_cli_idx, cl)) {
		SSL_CTX_free(ctx);
		free(cl);
		ERR_clear_error();
		return -ENOMEM;
	}
	/* From here the context owns cl: SSL_CTX_free frees both. */
	cl->ctx = ctx;
	cl->id = __atomic_add_fetch(&tls_client_ids, 1, __ATOMIC_RELAXED);
	snprintf(cl->sni, sizeof(cl->sni), "%s", cfg->sni);
	/* TLS 1.0 and 1.1 are never offered to a backend either (RFC 8996). */
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* As on the server side: no record buffers while idle, writes that stop when full. */
	ctx_common(ctx, 0);
	/* corral speaks HTTP/1.1 to backends: offer nothing else. 0 is success here. */
	if (SSL_CTX_set_alpn_protos(ctx, tls_alpn_mine, sizeof(tls_alpn_mine) - 1) != 0) {
		r = -ENOMEM;
		goto fail;
	}
	/* Sessions are kept by the worker (tls_sess_slot), never in this shared context. */
	SSL_CTX_set_session_cache_mode(ctx,
				       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, tls_client_sess_cb);
	if (cfg->verify) {
		r = client_ca(ctx, cfg->ca, e);
		if (r == 0)
			r = client_name(ctx, be, e);
		if (r < 0)
			goto fail;
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	ERR_clear_error();
	*out = cl;
	return 0;
fail:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return r;
}

void tls_client_free(struct tls_client *cl)
{
	/* The ex_data free callback frees cl when the last reference to the context goes. */
	if (cl)
		SSL_CTX_free(cl->ctx);
}

int tls_client_check(const struct cfg_backend *be, struct tls_ctx_err *e)
{
	struct tls_client *cl;
	int r = tls_client_new(&cl, be, e);

	if (r == 0)
		tls_client_free(cl);
	return r;
}

const char *tls_client_sni(const struct tls_client *cl)
{
	return cl->sni[0] ? cl->sni : NULL;
}

int tls_conn_init_client(struct tls_conn *t, const struct tls_client *cl,
			 struct tls_sess_slot *slot)
{
	BIO *b;

	memset(t, 0, sizeof(*t));
	if (tls_global() < 0)
		return -ENOMEM;
	t->client = true;
	t->ssl = SSL_new(cl->ctx);
	if (!t->ssl)
		goto fail;
	b = BIO_new(tls_bio_method);
	if (!b)
		goto fail;
	BIO_set_data(b, t);
	SSL_set_bio(t->ssl, b, b);
	SSL_set_app_data(t->ssl, t);
	SSL_set_connect_state(t->ssl);
	if (cl->sni[0] && !SSL_set_tlsext_host_name(t->ssl, cl->sni))
		goto fail;
	t->slot = slot;
	if (slot && slot->sess && slot->ctx_id == cl->id) {
		/*
		 * Resume: the session was verified under this very context. It stays in the slot
		 * for the next connections until a newer one replaces it: RFC 8446 C.4 advises
		 * against reusing a ticket so that a client's connections cannot be linked, which
		 * between corral and its own backend tells no one anything, and a server that does
		 * not renew tickets on resumption (OpenSSL's default) would otherwise get a full
		 * handshake every other connection.
		 */
		SSL_SESSION *use = SSL_SESSION_dup(slot->sess);

		/* A copy: OpenSSL marks a TLS 1.3 session it resumed with as used up. */
		if (!use || SSL_set_session(t->ssl, use) != 1) {
			SSL_SESSION_free(use);
			goto fail;
		}
		SSL_SESSION_free(use); /* the session holds its own reference */
	}
	t->state = TLS_HANDSHAKE;
	return 0;
fail:
	SSL_free(t->ssl);
	t->ssl = NULL;
	ERR_clear_error();
	return -ENOMEM;
}
