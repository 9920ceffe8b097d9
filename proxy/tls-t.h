/* TLS transport types: one server-side TLS session per client connection, driven by completions. */
#ifndef CORRAL_TLS_T_H
#define CORRAL_TLS_T_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ssl_st;	       /* OpenSSL's SSL */
struct ssl_ctx_st;     /* OpenSSL's SSL_CTX */
struct ssl_session_st; /* OpenSSL's SSL_SESSION */

/*
 * Client side: a worker's saved session for one backend, to resume the next connection with
 * (a per-core client session cache, one entry per backend). Single-threaded: the worker's.
 * ctx_id names the backend context it came from; under any other it is never used.
 */
struct tls_sess_slot {
	struct ssl_session_st *sess; /* NULL = none */
	uint64_t ctx_id;
};

/*
 * The largest TLS record on the wire: 5 header bytes and at most 2^14 + 2048 bytes of
 * ciphertext (RFC 5246 6.2.3; TLS 1.3 allows only 2^14 + 256). A record never needs more.
 */
#define TLS_RECORD_WIRE_MAX (5 + 16384 + 2048)
/*
 * Ciphertext waiting to be sent, per connection: two full records, so that one record can
 * be encrypted while the previous one is in flight. Allocated when there is something to
 * send and freed when all of it was sent, so an idle connection holds none of it.
 */
#define TLS_OUT_BYTES (2 * TLS_RECORD_WIRE_MAX)

/*
 * Ticket-key rotation: a new encryption key this often; the previous key still decrypts,
 * so a ticket stays usable for between one and two periods. Tickets are issued with a
 * lifetime of one period, which a client then honours. 12 h bounds how long a stolen key
 * decrypts recorded TLS 1.3 resumption secrets, and is what operators commonly run.
 */
#define TLS_TICKET_ROTATE_MS (12ULL * 3600 * 1000)

/*
 * Spare output buffers (TLS_OUT_BYTES each) of one worker: a session takes one when it has
 * something to send and gives it back when all of it was sent, so a keep-alive response
 * costs no allocation while an idle session still holds none. A few cover the sessions that
 * send at the same moment; beyond that they are allocated and freed as without a cache.
 */
#define TLS_OUTCACHE_MAX 4
struct tls_outcache {
	uint8_t *buf[TLS_OUTCACHE_MAX];
	uint32_t n;
};

enum tls_state {
	TLS_HANDSHAKE = 0, /* ClientHello not yet answered or handshake not finished */
	TLS_OPEN,	   /* application data both ways */
	TLS_PEER_CLOSED,   /* close_notify received: no more input */
	TLS_CLOSING,	   /* our close_notify is queued (tls_close) */
	TLS_FAILED,	   /* fatal error: see fail; an alert may be left in tls_out */
	TLS_ABORTED,	   /* tls_abort: nothing more is ever sent, not even close_notify */
};

/* Why a session failed: what the per-core "failures by reason" counters will count. */
enum tls_fail {
	TLS_FAIL_NONE = 0,
	TLS_FAIL_PLAINTEXT,	   /* plaintext (HTTP) on a TLS port */
	TLS_FAIL_PROTOCOL_VERSION, /* a refused protocol version (TLS 1.0/1.1, SSLv3) */
	TLS_FAIL_NO_SHARED_CIPHER, /* no cipher suite or group in common */
	TLS_FAIL_BAD_RECORD,	   /* malformed record, bad MAC, garbage */
	TLS_FAIL_RENEGOTIATION,	   /* the client insisted on renegotiating */
	TLS_FAIL_PEER_ALERT,	   /* the client sent a fatal alert */
	TLS_FAIL_HANDSHAKE,	   /* any other handshake or protocol failure */
	TLS_FAIL_NOMEM,		   /* OpenSSL or corral could not allocate */
	TLS_FAIL_TIMEOUT,	   /* set by the caller: the handshake deadline passed */
	TLS_FAIL_REASONS,
	/*
	 * Client side only (a backend's certificate or name did not verify): past the listener
	 * counters' reasons, which it can never be (corral asks clients for no certificate).
	 */
	TLS_FAIL_VERIFY = TLS_FAIL_REASONS,
};

/*
 * One TLS session, server side (a client connection) or client side (an upstream connection
 * to a TLS backend: tls_conn_init_client); both use the same feed/read/write/out calls. It
 * lives inside its connection slot and must not move after tls_conn_init (the BIO points back
 * at it). Single-threaded: only the connection's worker touches it.
 *
 * Input is zero-copy: tls_feed() lends the transport a window of received ciphertext (a
 * provided buffer), which OpenSSL reads straight into its record buffer. Output is one copy:
 * OpenSSL's BIO write lands in out, and tls_out() hands that to the send path.
 */
struct tls_conn {
	struct ssl_st *ssl;
	const uint8_t *in; /* lent ciphertext not yet read by OpenSSL */
	size_t in_len;
	uint8_t *out;	   /* TLS_OUT_BYTES, or NULL when nothing is waiting */
	uint32_t out_head; /* first byte not yet sent */
	uint32_t out_tail; /* end of the queued bytes */
	uint64_t fed;	   /* ciphertext bytes fed in total */
	uint8_t state;	   /* enum tls_state */
	uint8_t fail;	   /* enum tls_fail */
	bool client;	   /* the client end (to a backend) */
	bool saved;	   /* client side: this session saved a session in slot */
	const char *why;   /* OpenSSL's reason text when state == TLS_FAILED (static string) */
	struct tls_outcache *oc;    /* where out comes from and goes back to, or NULL (malloc) */
	struct tls_sess_slot *slot; /* client side: where a new session is saved, or NULL */
};

/* Where a listener's TLS settings are wrong, for a "file:line: key: message" report. */
struct tls_ctx_err {
	int cert;	 /* certificates[] index the message is about, or -1 */
	const char *key; /* "cert", "key", "ciphers", "ciphersuites", "protocols" or "" */
	char msg[200];
	/* A warning that does not refuse the config (an expired certificate); "" if none. */
	int warn_cert;
	char warn[200];
};

/* What the control plane shows of one loaded certificate (`corralctl certs`). */
#define TLS_CERT_NAMES_MAX 16 /* names shown per certificate; names_total counts them all */
struct tls_cert_info {
	char subject[256]; /* the subject, one line (RFC 2253: "CN=a.example,O=..."), "" if empty */
	char issuer[256];  /* the issuer, the same way */
	/* subjectAltName DNS and IP entries, in the certificate's order ("DNS:" dropped). */
	char names[TLS_CERT_NAMES_MAX][128];
	uint32_t names_n, names_total;
	int64_t not_before, not_after; /* seconds since the epoch (UTC) */
};

#endif
