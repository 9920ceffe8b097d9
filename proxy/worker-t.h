/* Worker types: op tags, timer classes and the buffer and send-queue records the worker hands out (connection types: conn-t.h). */
#ifndef CORRAL_WORKER_T_H
#define CORRAL_WORKER_T_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <liburing.h>
#include "balance-t.h"
#include "config-t.h"
#include "daemon.h"
#include "http-t.h"
#include "stats-t.h"

#define NIL UINT32_MAX

/*
 * user_data layout of every SQE: op (8 bits) | object index (24 bits) | generation (32 bits).
 * A completion whose generation differs from the object's current one is stale and dropped.
 */
enum wop {
	OP_NONE = 0,
	OP_ACCEPT,   /* idx = listen index */
	OP_TICK,     /* the worker's timer tick */
	OP_EVENT,    /* control eventfd read */
	OP_C_RECV,   /* client recv (buffer select) */
	OP_C_SEND,   /* client sendmsg */
	OP_C_CANCEL, /* cancel of client ops */
	OP_C_POLL,   /* client EOF/RST watch while no receive is armed (client.c) */
	OP_C_TLS,    /* a TLS client's "receive" of plaintext already decrypted (ctls.c) */
	OP_U_CONNECT,
	OP_U_RECV,
	OP_U_SEND,
	OP_U_CANCEL,
	OP_U_TLS, /* a TLS upstream's "receive" of plaintext already decrypted (upstream_tls.c) */
	OP_LOG_WRITE,
	OP_REFUSE, /* idx = listen index, gen = enum refuse_step (worker.c, at EMFILE) */
};

/* Timer classes: each has one fixed duration, so each list is FIFO-ordered by deadline. */
enum tclass {
	T_NONE = 0,
	T_HEADER,   /* absolute deadline for a request head */
	T_IDLE,	    /* keep-alive idle */
	T_BODY,	    /* client body progress / slow reader */
	T_CONNECT,  /* upstream connect */
	T_UPSTREAM, /* upstream response progress */
	T_TUNNEL,   /* upgraded tunnel idle */
	T_LINGER,   /* lingering close */
	T_CLASSES,
};

struct tlink {
	uint32_t prev, next;
	uint64_t deadline_ms;
	uint8_t tclass;
};

/* A byte range held in either a provided buffer or a head buffer. */
struct inbuf {
	char *base;    /* start of the holding buffer */
	uint32_t off;  /* unconsumed bytes start here */
	uint32_t len;  /* unconsumed byte count */
	int32_t bid;   /* provided-buffer id, or -1 */
	uint32_t hbuf; /* head-buffer index, or NIL */
};

/* One direction's send: up to 4 iovecs in flight, progress tracked across short sends. */
struct sendq {
	struct msghdr msg;
	struct iovec iov[5]; /* PROXY header, request head, chunk line, payload, chunk end */
	uint8_t iov_n;
	bool busy; /* a send or sendmsg is in flight */
};

#endif
