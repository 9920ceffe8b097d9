/*
 * TLS transport (OpenSSL 3): listener contexts built from the config, the shared ticket-key
 * pool, and the per-connection session that sits between the socket completions and HTTP.
 *
 * Nothing here blocks or does I/O on a socket: bytes that a recv completion produced go in
 * with tls_feed(), plaintext comes out of tls_read(), plaintext goes in with tls_write(), and
 * tls_out()/tls_out_done() give the ciphertext to send and take back how much was sent.
 */
#ifndef CORRAL_TLS_H
#define CORRAL_TLS_H

#include <sys/uio.h>
#include <openssl/ssl.h>
#include "config-t.h"
#include "tls-t.h"

/* --- ticket keys: the shared pool ----------------------------------------------------------- */

struct tls_keys;

/* A pool with a fresh random current key and no previous key. 0 or -ENOMEM/-EIO. */
int tls_keys_new(struct tls_keys **out, uint64_t now_ms);
/*
 * Main thread only: a fresh current key; the old current becomes the previous key (still
 * decrypts), the old previous is dropped once no worker can be reading it. 0 or -errno.
 */
int tls_keys_rotate(struct tls_keys *k, uint64_t now_ms);
/* Rotates when TLS_TICKET_ROTATE_MS has passed since the last rotation. 1 rotated, 0, -errno. */
int tls_keys_maybe_rotate(struct tls_keys *k, uint64_t now_ms);
/* After every context that uses the pool is freed. NULL is fine. */
void tls_keys_free(struct tls_keys *k);

/* --- listener contexts ---------------------------------------------------------------------- */

struct tls_server;

/*
 * Builds one listener's contexts from its tls: settings (one SSL_CTX per certificate; SNI
 * switches between them). Reads the certificate and key files. keys may be NULL (tickets then
 * use OpenSSL's own per-context key, which does not cross contexts). On failure returns
 * -EINVAL (or -ENOMEM) and fills *e with what is wrong and where; an expired certificate is
 * only a warning in e->warn.
 */
int tls_server_new(struct tls_server **out, const struct cfg_tls *cfg, struct tls_keys *keys,
		   struct tls_ctx_err *e);
/* The context a new connection starts with (the default certificate's). */
SSL_CTX *tls_server_ctx(const struct tls_server *s);
/* Drops the caller's reference; sessions that still use the contexts keep them alive. */
void tls_server_free(struct tls_server *s);

/* How many certificates s holds (the listener's certificates[], in order). */
uint32_t tls_server_certs_n(const struct tls_server *s);
/*
 * Describes certificates[i] of s (its leaf: the first of the chain file). Reads only the
 * parsed certificate, so any thread may call it while s is alive. 0, or -ENOENT past the
 * end, -EIO if OpenSSL cannot print a field.
 */
int tls_server_cert_info(const struct tls_server *s, uint32_t i, struct tls_cert_info *out);

/* Validates cfg as tls_server_new does, and frees the result. 0 or -EINVAL with *e. */
int tls_check(const struct cfg_tls *cfg, struct tls_ctx_err *e);

/* --- one session ------------------------------------------------------------------------------ */

/*
 * Starts a server session on ctx (from tls_server_ctx). *t must stay where it is until
 * tls_conn_free. 0 or -ENOMEM.
 */
int tls_conn_init(struct tls_conn *t, SSL_CTX *ctx);
/* Frees the session and any unsent ciphertext. Sends nothing. */
void tls_conn_free(struct tls_conn *t);

/*
 * Lends the transport n received ciphertext bytes at p. The caller keeps them valid until
 * tls_in_pending() is 0, which is always the case once tls_handshake/tls_read returned
 * -EAGAIN. Only when nothing lent is left (BUG_ON otherwise). Returns 0, or -EPROTO when
 * the first byte shows plaintext on the TLS port (fail TLS_FAIL_PLAINTEXT).
 */
int tls_feed(struct tls_conn *t, const uint8_t *p, size_t n);
static inline size_t tls_in_pending(const struct tls_conn *t)
{
	return t->in_len;
}

/*
 * Drives the handshake. 0 = done (TLS_OPEN); -EAGAIN = needs more input (send tls_out first
 * if any); -ENOBUFS = the output is full (send it, then call again); -EPROTO = failed (fail
 * and why say why; a fatal alert may be waiting in tls_out; send it or not, then close).
 */
int tls_handshake(struct tls_conn *t);

/*
 * Decrypts into plain (cap bytes). Drives the handshake too. Returns bytes (> 0), 0 when the
 * client sent close_notify (a clean end), or -EAGAIN / -ENOBUFS / -EPROTO as above. Call
 * again after a positive return: more may be buffered without new input.
 */
ssize_t tls_read(struct tls_conn *t, uint8_t *plain, size_t cap);

/*
 * Encrypts up to n plaintext bytes into the output. Returns bytes taken (> 0, possibly fewer
 * than n), -ENOBUFS when the output is full (send it, then call again with the same bytes
 * first), -EAGAIN during the handshake, -EPIPE after tls_close/tls_abort, -EPROTO.
 */
ssize_t tls_write(struct tls_conn *t, const uint8_t *plain, size_t n);

/*
 * The ciphertext waiting to be sent: fills *iov and returns its length (0 = nothing). The
 * bytes stay put until tls_out_done, even while more is written behind them.
 */
size_t tls_out(const struct tls_conn *t, struct iovec *iov);
/* n bytes of what tls_out gave were sent. Frees the output buffer when it is empty. */
void tls_out_done(struct tls_conn *t, size_t n);
/*
 * A session whose t->oc is set (after tls_conn_init) takes its output buffer from that cache
 * and gives it back there instead of to the allocator. Frees what a cache holds (its worker
 * is done with every session).
 */
void tls_outcache_drain(struct tls_outcache *oc);

/*
 * A clean close: queues close_notify (send tls_out, then close the socket). 0, -ENOBUFS
 * (output full: send, then call again), or -EPIPE when the session cannot close cleanly
 * (failed or aborted). Never call it for a response the backend cut short: use tls_abort.
 */
int tls_close(struct tls_conn *t);
/*
 * The response cannot be completed: drop any unsent ciphertext and never send close_notify,
 * so the client sees a truncation (the caller then resets the socket).
 */
void tls_abort(struct tls_conn *t);

/* Is there input the session has not given out yet (lent ciphertext, or buffered records)? */
bool tls_has_pending(const struct tls_conn *t);

/* Facts about an open session (after the handshake). */
bool tls_resumed(const struct tls_conn *t);
const char *tls_version(const struct tls_conn *t); /* "TLSv1.3" */
const char *tls_cipher(const struct tls_conn *t);  /* "TLS_AES_128_GCM_SHA256" */
const char *tls_sni(const struct tls_conn *t);	   /* the client's server name, or NULL */
/* The certificates[] index that SNI selected (0 = the default). */
int tls_cert_index(const struct tls_conn *t);
/* The ALPN protocol agreed ("http/1.1"), or NULL when none was. */
const char *tls_alpn(const struct tls_conn *t, char *buf, size_t len);

const char *tls_fail_name(enum tls_fail f);

/* --- client side: backend contexts ------------------------------------------------------------- */

struct tls_client;

/*
 * Builds the client context of a backend with tls.on (TLS 1.2+, ALPN http/1.1, no
 * renegotiation; with verify: the CA file's certificates and the host name check on tls.sni,
 * or on the backend's IP address when there is no sni). Reads the CA file. Safe to share
 * between workers. On failure -EINVAL (or -ENOMEM) with *e saying what ("ca", "sni").
 */
int tls_client_new(struct tls_client **out, const struct cfg_backend *be, struct tls_ctx_err *e);
/* Drops the caller's reference; sessions still using the context keep it alive. NULL is fine. */
void tls_client_free(struct tls_client *cl);
/* Validates be->tls as tls_client_new does, and frees the result. 0 or -EINVAL with *e. */
int tls_client_check(const struct cfg_backend *be, struct tls_ctx_err *e);
/* The server name the context sends, or NULL. */
const char *tls_client_sni(const struct tls_client *cl);

/*
 * Starts a client session to a backend: the first tls_handshake() queues the ClientHello in
 * tls_out. slot (the worker's for that backend, or NULL) resumes a session saved under the
 * same context and receives the new one. *t must stay where it is until tls_conn_free; slot
 * must outlive the session. 0 or -ENOMEM.
 */
int tls_conn_init_client(struct tls_conn *t, const struct tls_client *cl,
			 struct tls_sess_slot *slot);
/* Frees a saved session (before the worker's slots go, or to forget one). */
void tls_sess_slot_clear(struct tls_sess_slot *slot);

#endif
