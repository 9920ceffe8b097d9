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
	bool reused; /* taken from the pool for the current exchange */
	union {
		struct sockaddr_in6 v6;
		struct sockaddr_in v4;
	} addr;
	socklen_t addr_len;
	uint32_t pool_prev, pool_next; /* idle pool list (per backend) or free list */
	uint64_t idle_since_ms;
	struct inbuf in; /* response bytes not yet processed */
};

/* A client connection: a scoped task. Everything it owns is released in conn_finish(). */
struct conn {
	int fd;
	uint32_t gen;
	uint8_t inflight; /* SQEs in flight on fd */
	bool active;	  /* slot in use */
	bool closing;	  /* teardown started: no new work */
	bool recv_armed;
	bool recv_wanted; /* waiting in the no-buffer queue */
	bool keep_alive;  /* this exchange ends with the connection reusable */
	bool lingering;
	bool cancel_sent;  /* a cancel of every op on fd was submitted */
	bool reset_close;  /* close with RST: the response is cut short */
	bool eof;	   /* client shut its write side */
	uint8_t req_state; /* enum req_state */
	uint8_t rs_state;  /* enum rs_state */
	uint8_t client_minor;
	bool req_is_head;
	bool req_idempotent;
	bool req_upgrade;
	bool resp_started;   /* a response byte went to the client */
	bool ups_byte_seen;  /* a response byte came from upstream */
	bool req_sent_any;   /* any request byte was sent upstream */
	bool close_after;    /* close once the response is sent */
	uint8_t out_framing; /* framing to the client (enum http_framing) */
	uint8_t attempts;    /* upstream connect attempts for this request */
	uint8_t fail;	     /* enum ups_fail: this request's last upstream failure */
	bool ups_reusable;   /* the upstream may be pooled when the exchange ends */
	bool req_head_sent;
	bool no_pool;	      /* the next connect must be fresh (stale pooled one failed) */
	bool end_pending;     /* response ended while the last request send was in flight */
	bool ups_recv_wanted; /* waiting in the no-buffer queue for an upstream recv */
	bool poll_armed;      /* the client EOF/RST poll is in flight */
	bool x_logged;	      /* this exchange's access-log line is written */
	uint32_t req_head_len;
	struct tried_set tried;	 /* backend ids tried for this request */
	uint64_t hkey;		 /* hash key for hash-uri / hash-client */
	uint16_t pending_status; /* error response to send, 0 = none */
	uint32_t requests;	 /* served on this connection */
	uint32_t ups;		 /* upstream index or NIL */
	uint32_t hbuf_req;	 /* head buffer: serialised request head / accumulated head */
	uint32_t hbuf_resp;	 /* head buffer: serialised response head */
	uint32_t next_wait;	 /* no-buffer wait queue */
	struct tlink t;
	struct inbuf in;    /* client bytes not yet processed */
	struct inbuf accum; /* partial request head being accumulated */
	struct http_body req_body;
	struct http_body resp_body;
	struct sendq to_ups;
	struct sendq to_client;
	int32_t ups_send_bid;	 /* provided buffer held by the send upstream, or -1 */
	int32_t client_send_bid; /* provided buffer held by the send to the client, or -1 */
	uint32_t ups_send_hbuf;	 /* head buffer held by the send upstream */
	uint64_t req_start_ns;
	uint16_t backend;
	uint16_t resp_code;
	char chunk_hdr_c[24]; /* chunk-size line for the client direction */
	char chunk_hdr_u[24]; /* chunk-size line for the upstream direction */
	uint32_t linger_bytes;
	uint64_t x_bytes_in;	  /* this exchange's bytes from the client (access log) */
	uint64_t x_bytes_out;	  /* this exchange's bytes to the client (access log) */
	uint32_t req_in_head_len; /* bytes of the client's request head */
	const char *rej_line;	  /* a rejected head's bytes, while its error is logged */
	uint32_t rej_len;
	const char *rej_reason; /* why the request is rejected (a static string), or NULL */
	union {
		struct sockaddr_in6 v6;
		struct sockaddr_in v4;
	} peer;
	char peer_ip[46];
};

#endif
