/* Client connections: the per-connection task (request in, exchange, response out, teardown). */
#ifndef CORRAL_CONN_H
#define CORRAL_CONN_H

#include "balance.h"
#include "worker.h"

/* A new client socket from accept: takes a slot or answers 503 and closes. */
void conn_accept(struct worker *w, int fd);
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
