/*
 * Connection types: the client connection task (struct conn), the upstream connection it
 * borrows for an exchange (struct ups), and their states. Owned by one worker thread; nothing
 * here is reached from another thread. client.c, exchange.c and upstream.c work on them.
 */
#ifndef CORRAL_CONN_T_H
#define CORRAL_CONN_T_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include "balance-t.h"
#include "http-t.h"
#include "proxyproto.h"
#include "tls-t.h"
#include "worker-t.h"

enum req_state {
	RQ_HEAD = 0, /* reading/parsing a request head */
	RQ_BODY,     /* streaming the request body upstream */
	RQ_DONE,     /* request fully read; waiting for the response to end */
};

enum rs_state {
	RS_NONE = 0, /* no exchange */
	RS_CONNECT,  /* picking/connecting an upstream */
	RS_HEAD,     /* waiting for the response head */
	RS_BODY,     /* streaming the response body */
	RS_DONE,
	RS_TUNNEL, /* after 101: raw bytes both ways */
};

/*
 * The phase of a connection, derived from its request and response states by conn_phase()
 * (conn.h), the one place they are read together. Each phase's invariant is what conn_check()
 * asserts at the event boundaries (where the timer is re-armed):
 */
enum conn_phase {
	/*
	 * Reading a request head: no upstream attached, no serialised head held (x->req.head
	 * and x->resp.head NIL), not counted in the balancer's in-flight counts; in / x->req.accum
	 * may hold a partial head. An exchange slot (c->x) is attached exactly when a byte of the
	 * head (or of a PROXY header) is held (conn_head_partial), or when the last exchange's
	 * close waits for its TLS close_notify: an idle keep-alive connection has none. Timer T_HEADER (a partial head, or the first request), else T_IDLE.
	 */
	CP_HEAD,
	/*
	 * One exchange (rs_state CONNECT, HEAD, BODY or DONE), in an exchange slot (c->x, owned
	 * by this connection: owner and generation match), as in every phase but CP_HEAD's idle
	 * wait and, optionally, LINGER and CLOSING. An attached upstream is owned by
	 * this connection (owner and generation match); CONNECT, HEAD and BODY have one attached.
	 * Counted in bal.inflight[backend] while the upstream is attached and not closing. Timer
	 * T_CONNECT, T_UPSTREAM, or T_BODY (the client reads slowly, or a request body comes).
	 */
	CP_EXCHANGE,
	/*
	 * The response is complete and the rest of the request body is read and dropped (with
	 * the slot's x->req.body): no upstream, no head buffers. Timer T_BODY; a 408 here is
	 * never sent.
	 */
	CP_DISCARD,
	/* After a 101: raw bytes both ways; the upstream is never pooled, keep_alive is off. T_TUNNEL. */
	CP_TUNNEL,
	/*
	 * Write side shut, reading and dropping what the client still sends: an attached
	 * upstream is closing, no head is assembled, linger_bytes < linger_bytes_max. An
	 * exchange slot stays attached until teardown (a send of it may be in flight). T_LINGER.
	 */
	CP_LINGER,
	/*
	 * Teardown: only cancels are in flight, no timer; the slot, and the exchange slot with
	 * it, frees when nothing is.
	 */
	CP_CLOSING,
};

/*
 * What a connection is doing, by cause, as bits of conn.flags (conn_has / conn_put in conn.h;
 * conn_show prints them). Cleared with the slot at accept; the request and response groups
 * are reset at each request head (req_begin).
 */
enum conn_flag {
	/* client socket I/O */
	CF_RECV_ARMED = 1u << 0,      /* a receive is in flight */
	CF_RECV_WANTED = 1u << 1,     /* waiting in the no-buffer queue for a client receive */
	CF_UPS_RECV_WANTED = 1u << 2, /* waiting in the no-buffer queue for an upstream recv */
	CF_POLL_ARMED = 1u << 3,      /* the client EOF/RST poll is in flight */
	CF_EOF = 1u << 4,	      /* the client shut its write side */
	/* teardown */
	CF_CLOSING = 1u << 5,	  /* teardown started: no new work */
	CF_LINGERING = 1u << 6,	  /* lingering close: reading and dropping */
	CF_CANCEL_SENT = 1u << 7, /* a cancel of every op on fd was submitted */
	CF_RESET_CLOSE = 1u << 8, /* close with RST: the response is cut short */
	/* the request */
	CF_REQ_HEAD = 1u << 9,	      /* the method is HEAD */
	CF_REQ_IDEMPOTENT = 1u << 10, /* the method is idempotent (a stale pooled retry is safe) */
	CF_REQ_UPGRADE = 1u << 11,    /* the request asks for an upgrade (a 101 is acceptable) */
	CF_REQ_HEAD_SENT = 1u << 12,  /* the serialised head is queued to the upstream */
	/* the response */
	CF_RESP_STARTED = 1u << 13,  /* a response byte went (or is queued) to the client */
	CF_UPS_BYTE_SEEN = 1u << 14, /* a response byte came from the upstream */
	CF_UPS_REUSABLE = 1u << 15,  /* the upstream may be pooled when the exchange ends */
	CF_KEEPALIVE = 1u << 16,     /* this exchange ends with the connection reusable */
	CF_CLOSE_AFTER = 1u << 17,   /* close once the response is sent */
	CF_END_PENDING = 1u << 18,   /* response ended while the last request send was in flight */
	CF_LOGGED = 1u << 19,	     /* this exchange's access-log line is written */
	/* retry */
	CF_NO_POOL = 1u << 20, /* the next connect must be fresh (a stale pooled one failed) */
	/* the client-abort watch */
	CF_PROBED = 1u << 21, /* the 100 Continue after a FIN was sent (once per connection) */
	/* PROXY protocol */
	CF_PP_WAIT = 1u << 22, /* a proxy_protocol listener's: no valid PROXY header read yet */
};

/* Why an upstream attempt failed; exchange_fail() decides what follows from each. */
enum ups_fail {
	UF_NONE = 0,
	UF_CONNECT,	      /* the connect was refused or failed */
	UF_CONNECT_TIMEOUT,   /* upstream_connect_ms passed */
	UF_STALE_POOLED,      /* a pooled connection closed before any byte of the response */
	UF_RESET_BEFORE_HEAD, /* closed or reset before the response head was complete */
	UF_SEND,	      /* sending the request failed */
	UF_BAD_HEAD,	      /* an unparsable, oversized or unacceptable response head */
	UF_NO_HEAD_BUF,	      /* no head buffer for the response head */
	UF_BAD_BODY,	      /* invalid response body framing */
	UF_RESPONSE_TIMEOUT,  /* upstream_response_ms without progress */
	UF_CUT_BODY,	      /* closed or reset in the middle of the response body */
};

/*
 * One direction of an exchange (the conn_dir of liburing's proxy example), in the exchange
 * slot: x->req is client -> upstream, x->resp is upstream -> client. The bytes coming in
 * stay where their socket's owner keeps them (c->in, u->in: a pooled upstream owns its input).
 */
struct conn_dir {
	struct inbuf accum; /* this direction's head while it arrives in pieces */
	uint32_t head;	    /* head buffer: the serialised head (or corral's own answer), or NIL */
	uint32_t head_len;  /* its length (request direction) */
	struct http_body body; /* framing of the body coming in on this direction */
	struct sendq out;      /* what is sent on: to the upstream (req) / to the client (resp) */
	char chunk_hdr[24];    /* the chunk-size line when the body goes out chunked */
};

/* Upstream connection. Owned by one conn while in use, else by its backend's idle pool. */
struct ups {
	int fd;
	uint32_t gen;
	uint32_t owner; /* conn index, or NIL when pooled/closing */
	uint32_t owner_gen;
	uint16_t backend; /* backend id */
	uint32_t be_gen;  /* the id's generation when connected: pooled only for that address */
	uint8_t inflight;
	bool connected;
	bool recv_armed;
	bool closing;
	bool reused;	/* taken from the pool for the current exchange */
	bool pp_queued; /* pp_hdr is queued (it goes first, once) */
	uint8_t pp_len; /* a send_proxy backend's PROXY header for this connection, 0 = none */
	uint8_t pp_hdr[PP_BUILD_MAX];
	union {
		struct sockaddr_in6 v6;
		struct sockaddr_in v4;
	} addr;
	socklen_t addr_len;
	uint32_t pool_prev, pool_next; /* idle pool list (per backend) or free list */
	uint64_t idle_since_ms;
	struct inbuf in; /* response bytes not yet processed */
	uint32_t tls;	 /* 1 + its struct utls index in w->utls; 0 = plaintext */
};

/* What an upstream connection's TLS transport is doing (bits of struct utls.flags). */
enum utls_flag {
	UT_SEND_BUSY = 1u << 0, /* a send of ciphertext is in flight */
	UT_MORE = 1u << 1,	/* the session may hold plaintext: the next "receive" reads it */
	UT_HS_MORE = 1u << 2,	/* read on once the output is sent (it was full) */
	UT_OPEN = 1u << 3,	/* the handshake finished (and was counted) */
	UT_ERR = 1u << 4,	/* encrypting failed: the send completes as an error */
};

/*
 * The TLS side of an upstream connection to a TLS backend (upstream_tls.c): the client
 * session and what the send and receive paths keep between completions. One per TLS
 * upstream, in a per-worker pool (w->utls), so a plaintext upstream pays only ups.tls. Must
 * not move while in use (the session's BIO points into it). A pooled connection keeps it.
 */
struct utls {
	struct tls_conn t;
	struct iovec iov;   /* the ciphertext send in flight */
	int32_t cbid;	    /* the received ciphertext buffer the session still reads, or -1 */
	uint32_t plain_enc; /* bytes of c->x->req.out encrypted and not yet reported sent */
	uint32_t next_free; /* free list */
	uint8_t flags;	    /* enum utls_flag */
};

/*
 * Exchange slots per core: one for each connection connections_per_core admits. Outside an
 * upgrade's drain (which serves the connections it accepts late, beyond the limit, in the
 * connection table's headroom) no more connections than that hold one, since an idle one
 * holds none and the one closed to make room for a new one was idle. When every slot is in
 * use anyway, a request that starts gets a canned 503 and its connection is closed
 * (conn_x_attach in client.c), as at accept beyond the limit. Untouched slots cost no memory.
 */
#define XSLOT_COUNT(connections_per_core) (connections_per_core)

/*
 * The state of one exchange: everything that means something only while a request is in
 * progress (both directions' head buffers, body framing and send queues, the retry state,
 * the hash key, the per-exchange counters). A slot of the worker's exchange pool (w->xs,
 * xslot_get / xslot_put in worker.c), attached to its connection as c->x from the first byte
 * of a request head (or of a PROXY header) until the exchange ends: back to an idle
 * keep-alive wait with no byte of the next head (req_next), or the connection's teardown
 * (conn_try_finish). The connection is the outer scope, the exchange the inner one: an idle
 * keep-alive connection holds no slot, so it costs only its struct conn.
 */
struct exchange {
	uint32_t owner;		 /* connection index while attached, NIL when free */
	uint32_t owner_gen;	 /* its generation */
	uint32_t next_free;	 /* the pool's LIFO of returned slots */
	uint8_t out_framing;	 /* framing to the client (enum http_framing) */
	uint8_t attempts;	 /* upstream connect attempts for this request */
	uint8_t fail;		 /* enum ups_fail: this request's last upstream failure */
	uint16_t pending_status; /* error response to send, 0 = none */
	uint16_t backend;	 /* backend id of the current (last) attempt */
	uint16_t resp_code;
	uint32_t req_in_head_len; /* bytes of the client's request head */
	struct tried_set tried;	  /* backend ids tried for this request */
	uint64_t hkey;		  /* hash key for hash-uri / hash-client */
	uint64_t req_start_ns;
	uint64_t x_bytes_out; /* this exchange's bytes to the client (access log) */
	struct conn_dir req;  /* client -> upstream */
	struct conn_dir resp; /* upstream -> client */
	char peer_ip[46];     /* c->peer as text (X-Forwarded-For, hash-client, the access log) */
};

/* One TLS record's plaintext at most (RFC 8446 5.1): the worker's gathering buffer (ctls.c). */
#define CTLS_GATHER_MAX 16384

/* What a TLS client connection's transport is doing (bits of struct ctls.flags). */
enum ctls_flag {
	CT_SEND_BUSY = 1u << 0,	 /* a sendmsg of ciphertext is in flight */
	CT_MORE = 1u << 1,	 /* the transport may hold plaintext: the next "receive" reads it */
	CT_HS_MORE = 1u << 2,	 /* read on once the output is sent (it was full) */
	CT_CLOSE_WAIT = 1u << 3, /* close_notify is queued: the graceful close goes on when sent */
	CT_NOTIFIED = 1u << 4,	 /* close_notify was sent (or cannot be) */
	CT_FAIL_CLOSE = 1u << 5, /* the session failed: close once its alert is sent */
	CT_COUNTED = 1u << 6,	 /* the handshake is counted */
	CT_ERR = 1u << 7,	 /* encrypting failed: the send completes as an error */
};

/*
 * The TLS side of a client connection on a TLS listener (ctls.c): the session and what the
 * send and receive paths keep between completions. One per TLS connection, in a per-worker
 * pool (w->tls), so a plaintext connection pays only conn.tls. Must not move while in use
 * (the session's BIO points into it).
 */
struct ctls {
	struct tls_conn t;
	struct iovec iov;   /* the ciphertext send in flight */
	struct inbuf cin;   /* the received ciphertext the session still reads (lent to it) */
	uint32_t plain_enc; /* bytes of c->x->resp.out encrypted and not yet reported sent */
	uint32_t next_free; /* free list */
	uint8_t flags;	    /* enum ctls_flag */
};

/*
 * A client connection: a scoped task. Everything it owns is released in conn_finish(). An
 * idle keep-alive connection is this struct alone (its socket, its timer links, its
 * generation, its peer), so the worker's table of them costs little per connection; the
 * bound is a static assert in client.c. The state of a request in progress is in c->x.
 */
struct conn {
	int fd;
	uint32_t gen;
	uint8_t inflight;     /* SQEs in flight on fd */
	bool active;	      /* slot in use */
	uint32_t flags;	      /* enum conn_flag */
	uint8_t req_state;    /* enum req_state */
	uint8_t rs_state;     /* enum rs_state */
	uint8_t client_minor; /* the last request's HTTP minor version (a rejected head's log) */
	uint32_t requests;    /* served on this connection */
	uint32_t tls;	      /* 1 + its struct ctls index in w->tls; 0 = plaintext */
	uint32_t ups;	      /* upstream index or NIL */
	struct exchange *x;   /* the exchange in progress, or NULL (idle between requests) */
	struct tlink t;
	struct inbuf in; /* client bytes not yet processed */
	uint32_t linger_bytes;
	/* A rejection being logged: set only around one conn_log() call (also without c->x). */
	const char *rej_line; /* a rejected head's bytes */
	uint32_t rej_len;
	const char *rej_reason; /* why the request is rejected (a static string), or NULL */
	union {
		struct sockaddr_in6 v6;
		struct sockaddr_in v4;
	} peer; /* the client: the socket's peer, or what its PROXY header said */
	union {
		struct sockaddr_in6 v6;
		struct sockaddr_in v4;
	} local; /* what the client connected to (likewise); family 0 until asked for */
};

#endif
