/* Worker: one pinned thread per core with its own io_uring, listeners, slots, buffers and pools. */
#ifndef CORRAL_WORKER_H
#define CORRAL_WORKER_H

#include <pthread.h>
#include "accesslog.h"
#include "bufpool.h"
#include "constants.h"
#include "worker-t.h"
#include "conn-t.h"

struct steer_core;

/* Accepts at the connection limit that wait for the end of a completion batch (client.c). */
#define ACCEPT_DEFER_MAX 64

struct worker {
	struct daemon *d;
	uint32_t id;  /* worker index */
	uint32_t cpu; /* core it is pinned to */
	pthread_t thread;
	struct io_uring ring;
	int start_err; /* set before ready: negative errno if start-up failed */
	int ready;     /* 1 once accepting (release store) */

	/* control: main -> worker (shared-only pool 5) */
	int evfd;
	uint64_t evval;
	int stop_req;	     /* 1 = graceful stop requested (atomic) */
	uint32_t drain_req;  /* request token (atomic): sequence << 1 | drained */
	uint32_t drain_done; /* the last token the worker applied (atomic, release) */
	bool drained;	     /* applied drained state (worker-local) */
	bool stopping;
	uint64_t stop_deadline_ms;

	int listen_fd[CFG_LISTEN_MAX];
	uint32_t listen_n;
	bool accept_armed[CFG_LISTEN_MAX];
	bool listen_pp[CFG_LISTEN_MAX]; /* the listener's connections start with a PROXY header */
	uint32_t accept_inflight;

	/* provided-buffer ring */
	struct io_uring_buf_ring *br;
	char *bufs;
	uint32_t nbufs, buf_size;
	uint32_t bufs_out; /* buffers currently held by connections */
	uint16_t bgid;
	struct bufpool bp; /* which buffers are in the ring, free (LIFO) or out */
	uint32_t *bp_ids;  /* scratch: ids to post or release, nbufs of them */
	uint64_t bp_window_ms, bp_release_ms; /* when the current sizing/release window started */

	/* head buffers: head accumulation and serialised heads (LIFO so hot ones stay hot) */
	char *hbufs;
	uint32_t *hbuf_next;
	uint32_t hbuf_size, hbuf_n, hbuf_free, hbuf_used;

	/*
	 * Exchange slots (struct exchange, conn-t.h): mapped with MAP_NORESERVE, handed out LIFO
	 * from the returned ones, else the next never-used one (x_high), so a slot's pages become
	 * resident only when as many exchanges ran at once, and an idle connection costs none.
	 */
	struct exchange *xs;
	uint32_t x_cap, x_high, x_free, x_used;

	/* connection slots */
	struct conn *conns;
	uint32_t *conn_next_free;
	uint32_t conn_cap, conn_free, conns_active;
	uint32_t conn_limit; /* client connections held: connections_per_core, the operator's cap */
	/*
	 * File descriptors this worker may hold for connections, client and upstream ones (in
	 * use, pooled or closing) together: conns_active + ups_open + accept_defer_n (main.c,
	 * fd_budget). At it a new client or upstream connection makes room (client.c,
	 * conn_fd_room); fd_owed: idle connections to close for connects that went ahead in
	 * this batch (at most FD_BORROW_MAX).
	 */
	uint32_t fd_budget, fd_owed;
	int accept_defer[ACCEPT_DEFER_MAX]; /* accepted at the limit, placed after the batch */
	uint8_t accept_defer_li[ACCEPT_DEFER_MAX]; /* and the listener each came from */
	uint32_t accept_defer_n;
	uint32_t shed_want; /* idle connections to close after the batch (fd shortage) */
	uint32_t fd_short;  /* listeners whose accept ran out of fds in this batch (bit mask) */

	/* file-descriptor exhaustion (EMFILE/ENFILE) */
	uint32_t refusing;    /* listeners whose refusal (accept, 503, close) is in flight */
	bool refuse_may_wait; /* the kernel lacks IORING_ACCEPT_DONTWAIT (before 6.10) */
	char refuse_msg[128]; /* the 503 a refusal sends (read by the kernel) */
	uint32_t refuse_len;
	uint64_t accept_retry_ms; /* accepts paused by EMFILE resume at this tick (0: none) */
	uint64_t fd_warned_ms;	  /* last warning (one per 10 s) */
	uint64_t fd_errors;	  /* failures since that warning */

	/* TLS client sessions (conn.tls): conn_cap slots, touched only when used */
	struct ctls *tls;
	uint32_t tls_free, tls_high; /* released slots (LIFO); slots ever used (ctls.c) */
	uint8_t *tls_gather; /* one record's plaintext: small pieces of a send go out together */
	struct tls_outcache tls_oc; /* spare TLS output buffers (tls-t.h) */

	/* upstream connections */
	struct ups *ups;
	/* ups_free: released slots (LIFO); ups_high: slots ever used, the rest never touched */
	uint32_t ups_cap, ups_free, ups_high;
	uint32_t pool_head[BACKEND_IDS_MAX], pool_tail[BACKEND_IDS_MAX];
	uint32_t pool_n[BACKEND_IDS_MAX];
	uint32_t ups_open;
	/* TLS upstream sessions (ups.tls): ups_cap slots, touched only when used */
	struct utls *utls;
	uint32_t utls_free,
		utls_high; /* free list of given-back slots; never-used ones from high */
	/* per backend id: the session the next TLS connection to it resumes (upstream_tls.c) */
	struct tls_sess_slot *utls_sess;

	/* timers: FIFO lists per class */
	uint32_t thead[T_CLASSES], ttail[T_CLASSES];
	struct __kernel_timespec tick_ts;
	uint64_t last_tick_ms, tick_cpu_ns, loop_ns; /* tick_cpu_ns: thread CPU at the last tick */

	/* connections waiting for a free receive buffer */
	uint32_t wait_head, wait_tail;
	uint32_t *wait_next; /* its links, per slot (worker.c says why not in the slot) */
	uint8_t *wait_in;    /* 1 while the slot is queued */

	struct balance_state bal; /* worker-local */

	struct http_header *hdr_scratch;
	uint32_t hdr_cap;

	struct snapshot *snap; /* valid during one loop iteration (RCU read side) */
	struct stats_worker *stats;
	struct stats_backend *bstats; /* [BACKEND_IDS_MAX] */
	struct steer_core *sc;
	uint64_t now_ms;

	/* access log: this worker's buffer, the shared O_APPEND fd (-1 = off) */
	struct alog_buf alog;
	int alog_fd;
	bool log_inflight;
	uint64_t log_warned_ms; /* last access-log failure warning (rate limit) */
};

/* Access log (worker.c): start a write of buffered lines if one is due. */
void worker_log_flush(struct worker *w);
/* An fd-limit error (what: "accept", "upstream socket"): one warning per 10 s, with a count. */
void worker_fd_warn(struct worker *w, const char *what, int err);

/* Creates worker id's state (not its ring: that is made in its own thread). 0 or -errno. */
int worker_init(struct worker *w, struct daemon *d, uint32_t id, const struct config *cfg);
/* Starts the thread and waits until it is accepting or failed. 0 or -errno. */
int worker_start(struct worker *w);
/* Main thread: ask for a graceful stop / drain change. */
void worker_request_stop(struct worker *w);
uint32_t worker_request_drain(struct worker *w, bool drained); /* returns the request's token */
/*
 * Main thread: whether the worker has applied the drain request `token`: drained, its
 * listeners are shut; undrained, they listen again and steering picks the worker again.
 */
bool worker_drain_applied(const struct worker *w, uint32_t token);
/* Main thread: the drained state asked last (true from `drain` until `undrain`). */
bool worker_drain_asked(const struct worker *w);
void worker_join(struct worker *w);
void worker_free(struct worker *w);

/* Used by client.c, exchange.c and upstream.c (same thread). */
struct io_uring_sqe *worker_sqe(struct worker *w);

/*
 * The user_data tag of an SQE and its completion, in one place: op | index | generation (see
 * enum wop; field widths in constants.h). ud_unpack(ud_pack(op, idx, gen)) gives them back.
 */
struct ud {
	enum wop op;
	uint32_t idx;
	uint32_t gen;
};
_Static_assert(OP_REFUSE < (1 << UD_OP_BITS), "every op fits user_data");

static inline uint64_t ud_pack(enum wop op, uint32_t idx, uint32_t gen)
{
	BUG_ON_HOT(idx > UD_IDX_MASK || (uint32_t)op >= (1u << UD_OP_BITS));
	return (uint64_t)op | ((uint64_t)(idx & UD_IDX_MASK) << UD_OP_BITS) |
	       ((uint64_t)gen << (UD_OP_BITS + UD_IDX_BITS));
}

static inline struct ud ud_unpack(uint64_t ud)
{
	struct ud u = {
		.op = (enum wop)(ud & ((1u << UD_OP_BITS) - 1)),
		.idx = (uint32_t)(ud >> UD_OP_BITS) & UD_IDX_MASK,
		.gen = (uint32_t)(ud >> (UD_OP_BITS + UD_IDX_BITS)),
	};

	return u;
}

/* provided buffers */
static inline char *buf_addr(struct worker *w, uint32_t bid)
{
	BUG_ON_HOT(bid >= w->nbufs);
	return w->bufs + (size_t)bid * w->buf_size;
}
void buf_put(struct worker *w, int32_t bid);
/* A free buffer for user space to fill (counted out like a received one), or -ENOBUFS. */
int32_t buf_take(struct worker *w);

/* head buffers */
uint32_t hbuf_get(struct worker *w);
void hbuf_put(struct worker *w, uint32_t idx);
static inline char *hbuf_addr(struct worker *w, uint32_t idx)
{
	BUG_ON_HOT(idx >= w->hbuf_n);
	return w->hbufs + (size_t)idx * w->hbuf_size;
}
void inbuf_release(struct worker *w, struct inbuf *b);

/*
 * Exchange slots: a cleared slot (heads and head buffers NIL, no provided buffer) owned by
 * nobody yet, or NULL when all x_cap are in use. xslot_put takes back one that holds nothing
 * (its buffers released by the caller).
 */
struct exchange *xslot_get(struct worker *w);
void xslot_put(struct worker *w, struct exchange *x);
static inline uint32_t xidx(const struct worker *w, const struct exchange *x)
{
	return (uint32_t)(x - w->xs);
}

/* timers */
void timer_set(struct worker *w, uint32_t cidx, struct tlink *t, enum tclass cls, uint32_t ms);
void timer_clear(struct worker *w, struct tlink *t);

/* no-buffer wait queue */
void wait_push(struct worker *w, uint32_t cidx);
/* Takes a connection out of the no-buffer wait queue (a no-op when it is not in it). */

#endif
