/* Client connections: the per-connection task (request in, exchange, response out, teardown). */
#ifndef CORRAL_CONN_H
#define CORRAL_CONN_H

#include "balance.h"
#include "worker.h"

/*
 * A new client socket from accept: takes a slot. Beyond connections_per_core it gets a 503
 * and is closed. At a lower limit that the fds set, the longest-idle connection with no
 * request in flight is closed to make room; only when there is none, a 503.
 */
void conn_accept(struct worker *w, int fd);
/*
 * Work put off to the end of each batch of completions (an "idle" connection may have a
 * request in a completion still queued): the accepts conn_accept() deferred at the limit,
 * and the idle connections to shed for an fd shortage (w->shed_want).
 */
void conn_accept_deferred(struct worker *w);
/* Answers fd with a canned 503 and closes it (no slot taken). */
void conn_refuse(struct worker *w, int fd);
/*
 * File descriptors ran out (EMFILE/ENFILE): closes up to n idle pooled upstream connections
 * and idle client connections (no request in flight). Returns how many were closed; their
 * fds are released once their cancelled ops complete. Only at the end of a batch.
 */
uint32_t conn_shed_idle(struct worker *w, uint32_t n);
/* Completion dispatch for client-side ops. */
void conn_on_cqe(struct worker *w, enum wop op, uint32_t idx, uint32_t gen, int res,
		 uint32_t flags);
/* Completion dispatch for upstream-side ops. */
void ups_on_cqe(struct worker *w, enum wop op, uint32_t idx, uint32_t gen, int res, uint32_t flags);
/* A timer of class cls expired for connection idx. */
void conn_on_timeout(struct worker *w, uint32_t idx, enum tclass cls);
/* Re-arm a receive that failed for lack of buffers. */
void conn_retry_recv(struct worker *w, uint32_t idx);
/* Graceful stop: close idle connections now, make busy ones close after their response. */
void conn_stop_all(struct worker *w, bool force);
/* Upstream pool maintenance on each tick: close idle connections past upstream_idle_ms. */
void ups_pool_expire(struct worker *w);
void ups_pool_close_all(struct worker *w);

#endif
