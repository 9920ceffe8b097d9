/* The per-core worker: its io_uring loop, listeners, buffer ring, slot tables, timers and control. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <urcu-qsbr.h>
#include "conn.h"
#include "tls.h"
#include "constants.h"
#include "steer.h"
#include "worker.h"

/* The steps of a refusal at EMFILE, in user_data's generation field (refuse_direct). */
enum refuse_step {
	REFUSE_ACCEPT = 1,
	REFUSE_SEND,
	REFUSE_CLOSE
};

/* IORING_ACCEPT_DONTWAIT (kernel 6.10); the headers liburing 2.3 builds with lack it. */
#define ACCEPT_DONTWAIT (1U << 1)

static void *map_zero(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static uint32_t pow2_floor(uint32_t v)
{
	uint32_t p = 1;

	while (p * 2 <= v)
		p *= 2;
	return p;
}

int worker_init(struct worker *w, struct daemon *d, uint32_t id, const struct config *cfg)
{
	const struct cfg_limits *l = &cfg->limits;
	uint32_t i;
	int n;

	memset(w, 0, sizeof(*w));
	w->d = d;
	w->id = id;
	w->cpu = cfg->cores[id];
	w->evfd = -1;
	w->listen_n = cfg->listen_n;
	for (i = 0; i < cfg->listen_n; i++) {
		w->listen_fd[i] = d->listen_fds[id][i];
		w->listen_pp[i] = cfg->listen_pp[i];
	}

	/*
	 * Headroom over connections_per_core: at the limit a new connection takes a slot while
	 * the idle one closed for it finishes its teardown.
	 */
	w->conn_cap = l->connections_per_core + CONN_SLOT_HEADROOM;
	w->conn_limit = l->connections_per_core;
	w->fd_budget = d->fd_budget ? d->fd_budget : UINT32_MAX;
	w->nbufs = pow2_floor(l->buffers_per_core);
	w->buf_size = l->buffer_bytes;
	w->hbuf_size = HBUF_SIZE(l->header_bytes_max, w->buf_size);
	w->hbuf_n = HBUF_COUNT(w->conn_cap);
	w->ups_cap = UPS_CAP(w->conn_cap);
	w->x_cap = XSLOT_COUNT(l->connections_per_core);
	w->hdr_cap = HDR_SCRATCH(l->headers_max);

	w->conns = map_zero((size_t)w->conn_cap * sizeof(struct conn));
	w->conn_next_free = calloc(w->conn_cap, sizeof(uint32_t));
	w->xs = map_zero((size_t)w->x_cap * sizeof(struct exchange));
	w->ups = map_zero((size_t)w->ups_cap * sizeof(struct ups));
	w->utls = map_zero((size_t)w->ups_cap * sizeof(struct utls));
	w->utls_sess = calloc(BACKEND_IDS_MAX, sizeof(struct tls_sess_slot));
	w->tls = map_zero((size_t)w->conn_cap * sizeof(struct ctls));
	w->tls_gather = malloc(CTLS_GATHER_MAX);
	w->bufs = map_zero((size_t)w->nbufs * w->buf_size);
	w->hbufs = map_zero((size_t)w->hbuf_n * w->hbuf_size);
	w->hbuf_next = calloc(w->hbuf_n, sizeof(uint32_t));
	w->hdr_scratch = calloc(w->hdr_cap, sizeof(struct http_header));
	w->bp_ids = calloc(w->nbufs, sizeof(uint32_t));
	w->wait_next = calloc(w->conn_cap, sizeof(uint32_t));
	w->wait_in = calloc(w->conn_cap, sizeof(uint8_t));
	w->stats = aligned_alloc(64, sizeof(struct stats_worker));
	w->bstats = aligned_alloc(64, sizeof(struct stats_backend) * BACKEND_IDS_MAX);
	if (!w->conns || !w->conn_next_free || !w->xs || !w->ups || !w->utls || !w->utls_sess ||
	    !w->tls || !w->tls_gather || !w->bufs || !w->hbufs || !w->hbuf_next ||
	    !w->hdr_scratch || !w->bp_ids || !w->wait_next || !w->wait_in || !w->stats ||
	    !w->bstats || bufpool_init(&w->bp, w->nbufs, BUF_RING_MIN) < 0)
		return -ENOMEM;
	memset(w->stats, 0, sizeof(*w->stats));
	memset(w->bstats, 0, sizeof(struct stats_backend) * BACKEND_IDS_MAX);

	for (i = 0; i < w->conn_cap; i++)
		w->conn_next_free[i] = i + 1 < w->conn_cap ? i + 1 : NIL;
	w->conn_free = 0;
	w->x_free = NIL; /* x_high = 0: no slot touched yet */
	/*
	 * Upstream, TLS and upstream-TLS slots are taken from ups_high / tls_high / utls_high up
	 * as they are first needed (upstream.c, ctls.c, utls.c): a free list through all of them
	 * would make the whole table resident at start-up (the upstream one: 2 x connections,
	 * 216 bytes each, 8.5 MiB at 19,512 connections).
	 */
	w->ups_free = NIL;
	w->tls_free = NIL;
	/* TLS upstream slots come from utls_high up as first needed: none is touched before. */
	w->utls_free = NIL;
	w->utls_high = 0;
	for (i = 0; i < w->hbuf_n; i++)
		w->hbuf_next[i] = i + 1 < w->hbuf_n ? i + 1 : NIL;
	w->hbuf_free = 0;
	for (i = 0; i < BACKEND_IDS_MAX; i++)
		w->pool_head[i] = w->pool_tail[i] = NIL;
	for (i = 0; i < T_CLASSES; i++)
		w->thead[i] = w->ttail[i] = NIL;
	w->wait_head = w->wait_tail = NIL;
	w->evfd = eventfd(0, EFD_CLOEXEC);
	if (w->evfd < 0)
		return -errno;
	n = http_error_response(w->refuse_msg, sizeof(w->refuse_msg), 503, true);
	BUG_ON(n <= 0);
	w->refuse_len = (uint32_t)n;
	w->sc = steer_core(d->steer, id);
	w->alog_fd = d->alog_fd;
	if (w->alog_fd >= 0 && alog_init(&w->alog, cfg->access_log.format, 0) < 0)
		return -ENOMEM;
	return 0;
}

void worker_free(struct worker *w)
{
	if (w->conns)
		munmap(w->conns, (size_t)w->conn_cap * sizeof(struct conn));
	if (w->xs)
		munmap(w->xs, (size_t)w->x_cap * sizeof(struct exchange));
	if (w->ups)
		munmap(w->ups, (size_t)w->ups_cap * sizeof(struct ups));
	if (w->utls)
		munmap(w->utls, (size_t)w->ups_cap * sizeof(struct utls));
	for (uint32_t b = 0; w->utls_sess && b < BACKEND_IDS_MAX; b++)
		tls_sess_slot_clear(&w->utls_sess[b]);
	free(w->utls_sess);
	if (w->tls)
		munmap(w->tls, (size_t)w->conn_cap * sizeof(struct ctls));
	if (w->bufs)
		munmap(w->bufs, (size_t)w->nbufs * w->buf_size);
	if (w->hbufs)
		munmap(w->hbufs, (size_t)w->hbuf_n * w->hbuf_size);
	if (w->br)
		munmap(w->br, (size_t)w->nbufs * sizeof(struct io_uring_buf));
	free(w->conn_next_free);
	free(w->tls_gather);
	tls_outcache_drain(&w->tls_oc);
	free(w->hbuf_next);
	free(w->hdr_scratch);
	free(w->bp_ids);
	free(w->wait_next);
	free(w->wait_in);
	bufpool_free(&w->bp);
	free(w->stats);
	free(w->bstats);
	if (w->alog_fd >= 0)
		alog_free(&w->alog);
	if (w->evfd >= 0)
		close(w->evfd);
	for (uint32_t i = 0; i < w->listen_n; i++)
		if (w->listen_fd[i] >= 0)
			close(w->listen_fd[i]);
}

/* --- resources ------------------------------------------------------------------------------- */

struct io_uring_sqe *worker_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	if (!sqe) {
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
		BUG_ON(!sqe);
	}
	return sqe;
}

/*
 * Receive buffers (bufpool.h): the kernel ring holds a bounded fill, the other free buffers
 * wait in a LIFO and the ring is topped up from its most-recently-freed end, so resident
 * receive memory follows the buffers in use, not buffers_per_core. Every buffer is counted:
 * the kernel may only hand out one that is in the ring (dispatch), a connection may only give
 * back one it holds (buf_put), and a clean stop finds them all back (worker_main).
 */
static void buf_ring_fill(struct worker *w)
{
	uint32_t k;

	if (w->bp.in_ring >= w->bp.want || !w->br)
		return;
	k = bufpool_refill(&w->bp, w->bp_ids, w->nbufs);
	for (uint32_t i = 0; i < k; i++)
		io_uring_buf_ring_add(w->br, buf_addr(w, w->bp_ids[i]), w->buf_size,
				      (unsigned short)w->bp_ids[i],
				      io_uring_buf_ring_mask(w->nbufs), (int)i);
	io_uring_buf_ring_advance(w->br, (int)k);
}

static void buf_taken(struct worker *w, struct io_uring_cqe *cqe)
{
	BUG_ON(bufpool_taken(&w->bp, cqe->flags >> IORING_CQE_BUFFER_SHIFT) < 0);
}

/* Every BUF_WINDOW_MS: resize the ring fill; every BUF_RELEASE_MS: drop cold buffers' pages. */
static void buf_housekeep(struct worker *w)
{
	uint32_t k;

	if (w->now_ms - w->bp_window_ms < BUF_WINDOW_MS)
		return;
	w->bp_window_ms = w->now_ms;
	bufpool_window(&w->bp);
	if (w->now_ms - w->bp_release_ms < BUF_RELEASE_MS)
		return;
	w->bp_release_ms = w->now_ms;
	k = bufpool_release(&w->bp, w->bp_ids, w->nbufs);
	for (uint32_t i = 0; i < k; i++)
		if (madvise(buf_addr(w, w->bp_ids[i]), w->buf_size, MADV_DONTNEED) < 0)
			break; /* cannot fail on our own anonymous mapping; the pages just stay */
}

/*
 * At a clean stop: the kernel's ring holds exactly the buffers the pool says it does (its head
 * read back with IORING_REGISTER_PBUF_STATUS, kernel 6.8+; liburing 2.3 has no wrapper).
 */
static void buf_check_ring(struct worker *w)
{
	/* The kernel's struct io_uring_buf_status (liburing 2.3 lacks it). */
	struct {
		/* cppcheck-suppress unusedStructMember ; read by the kernel */
		uint32_t buf_group, head, resv[8];
	} st = { .buf_group = w->bgid };
	long r = syscall(__NR_io_uring_register, w->ring.ring_fd, 26 /* PBUF_STATUS */, &st, 1);

	if (r == 0)
		CHECK_IF((uint16_t)(w->br->tail - st.head) != (uint16_t)w->bp.in_ring);
}

void buf_put(struct worker *w, int32_t bid)
{
	if (bid < 0)
		return;
	BUG_ON((uint32_t)bid >= w->nbufs || w->bufs_out == 0);
	BUG_ON(bufpool_put(&w->bp, (uint32_t)bid) < 0);
	w->bufs_out--;
	buf_ring_fill(w);
}

int32_t buf_take(struct worker *w)
{
	int r = bufpool_take(&w->bp);

	if (r < 0)
		return r;
	w->bufs_out++;
	return r;
}

uint32_t hbuf_get(struct worker *w)
{
	uint32_t i = w->hbuf_free;

	if (i == NIL)
		return NIL;
	w->hbuf_free = w->hbuf_next[i];
	w->hbuf_used++;
	return i;
}

void hbuf_put(struct worker *w, uint32_t idx)
{
	if (idx == NIL)
		return;
	BUG_ON(idx >= w->hbuf_n || w->hbuf_used == 0);
	w->hbuf_next[idx] = w->hbuf_free;
	w->hbuf_free = idx;
	w->hbuf_used--;
}

/*
 * The most recently returned slot first (its pages are the hottest), else the next one never
 * used: the slots beyond x_high were never written, so they cost no memory.
 */
struct exchange *xslot_get(struct worker *w)
{
	struct exchange *x;

	if (w->x_free != NIL) {
		x = &w->xs[w->x_free];
		w->x_free = x->next_free;
	} else if (w->x_high < w->x_cap) {
		x = &w->xs[w->x_high++];
	} else {
		return NULL;
	}
	memset(x, 0, sizeof(*x));
	x->owner = NIL;
	x->next_free = NIL;
	x->req.head = x->resp.head = NIL;
	x->req.accum.bid = x->resp.accum.bid = -1;
	x->req.accum.hbuf = x->resp.accum.hbuf = NIL;
	w->x_used++;
	return x;
}

void xslot_put(struct worker *w, struct exchange *x)
{
	BUG_ON(xidx(w, x) >= w->x_high || w->x_used == 0);
	BUG_ON(x->req.head != NIL || x->resp.head != NIL || x->req.accum.hbuf != NIL ||
	       x->resp.accum.hbuf != NIL || x->req.accum.bid >= 0 || x->resp.accum.bid >= 0);
	BUG_ON_HOT(x->req.out.busy || x->resp.out.busy); /* nothing of it in flight */
	x->owner = NIL;
	x->next_free = w->x_free;
	w->x_free = xidx(w, x);
	w->x_used--;
}

void inbuf_release(struct worker *w, struct inbuf *b)
{
	if (b->bid >= 0)
		buf_put(w, b->bid);
	if (b->hbuf != NIL)
		hbuf_put(w, b->hbuf);
	b->bid = -1;
	b->hbuf = NIL;
	b->base = NULL;
	b->off = b->len = 0;
}

/* --- timers ------------------------------------------------------------------------------------ */

void timer_clear(struct worker *w, struct tlink *t)
{
	uint8_t cls = t->tclass;

	if (cls == T_NONE)
		return;
	if (t->prev != NIL)
		w->conns[t->prev].t.next = t->next;
	else
		w->thead[cls] = t->next;
	if (t->next != NIL)
		w->conns[t->next].t.prev = t->prev;
	else
		w->ttail[cls] = t->prev;
	t->prev = t->next = NIL;
	t->tclass = T_NONE;
}

void timer_set(struct worker *w, uint32_t cidx, struct tlink *t, enum tclass cls, uint32_t ms)
{
	timer_clear(w, t);
	t->tclass = (uint8_t)cls;
	t->deadline_ms = w->now_ms + ms;
	t->next = NIL;
	t->prev = w->ttail[cls];
	if (t->prev != NIL)
		w->conns[t->prev].t.next = cidx;
	else
		w->thead[cls] = cidx;
	w->ttail[cls] = cidx;
}

static void timers_run(struct worker *w)
{
	for (int cls = T_NONE + 1; cls < T_CLASSES; cls++) {
		uint32_t i;

		while ((i = w->thead[cls]) != NIL) {
			struct conn *c = &w->conns[i];

			if (c->t.deadline_ms > w->now_ms)
				break;
			timer_clear(w, &c->t);
			conn_on_timeout(w, i, (enum tclass)cls);
		}
	}
}

/* --- no-buffer wait queue ----------------------------------------------------------------------- */

/*
 * The links live in the worker (wait_next, wait_in), not in the connection slot: with a
 * bounded ring, -ENOBUFS is routine, and a queued connection that is freed and whose slot is
 * reused by an accept in the same pass would otherwise have its link reset and cut off every
 * waiter behind it. Such an entry is served harmlessly (conn_retry_recv finds no flag set).
 */
void wait_push(struct worker *w, uint32_t cidx)
{
	BUG_ON(cidx >= w->conn_cap);
	if (w->wait_in[cidx])
		return; /* already queued */
	w->wait_in[cidx] = 1;
	w->wait_next[cidx] = NIL;
	if (w->wait_tail != NIL)
		w->wait_next[w->wait_tail] = cidx;
	else
		w->wait_head = cidx;
	w->wait_tail = cidx;
}

static void wait_service(struct worker *w)
{
	while (w->wait_head != NIL && w->nbufs - w->bufs_out > BUF_RESERVE) {
		uint32_t i = w->wait_head;

		w->wait_head = w->wait_next[i];
		if (w->wait_head == NIL)
			w->wait_tail = NIL;
		w->wait_in[i] = 0;
		conn_retry_recv(w, i);
	}
}

/* --- listeners, control ---------------------------------------------------------------------- */

static void arm_accept(struct worker *w, uint32_t li)
{
	struct io_uring_sqe *sqe;

	if (w->accept_armed[li] || w->listen_fd[li] < 0)
		return;
	sqe = worker_sqe(w);
	io_uring_prep_multishot_accept(sqe, w->listen_fd[li], NULL, NULL, SOCK_CLOEXEC);
	sqe->user_data = ud_pack(OP_ACCEPT, li, 0);
	w->accept_armed[li] = true;
	w->accept_inflight++;
}

static void arm_event(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_read(sqe, w->evfd, &w->evval, sizeof(w->evval), 0);
	sqe->user_data = ud_pack(OP_EVENT, 0, 0);
}

static void arm_tick(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	w->tick_ts.tv_sec = 0;
	w->tick_ts.tv_nsec = TICK_MS * 1000000L;
	io_uring_prep_timeout(sqe, &w->tick_ts, 0, 0);
	sqe->user_data = ud_pack(OP_TICK, 0, 0);
}

/* Stops accepting on every listener: the kernel migrates queued connections elsewhere. */
static void listeners_shutdown(struct worker *w)
{
	for (uint32_t i = 0; i < w->listen_n; i++)
		if (w->listen_fd[i] >= 0)
			shutdown(w->listen_fd[i], SHUT_RDWR);
}

static void apply_drain(struct worker *w, bool drained)
{
	if (drained == w->drained)
		goto done;
	w->drained = drained;
	if (drained) {
		log_info("worker %u: draining (listener shut down, queued connections migrate)",
			 w->id);
		listeners_shutdown(w);
	} else {
		const char *delay = getenv("CORRAL_TEST_RELISTEN_DELAY_MS");

		/* Tests only: a worker slow to listen again (a busy CPU, made certain). */
		if (delay)
			usleep((useconds_t)strtoul(delay, NULL, 10) * 1000);
		for (uint32_t i = 0; i < w->listen_n; i++) {
			if (listen(w->listen_fd[i], w->d->listen_backlog) < 0) {
				log_err("worker %u: re-listen: %s", w->id, strerror(errno));
				continue;
			}
			steer_register(w->d->steer, i, w->id, w->listen_fd[i]);
			arm_accept(w, i);
		}
		log_info("worker %u: undrained", w->id);
	}
	STAT_SET(w->stats->draining, drained ? 1 : 0);
done:
	/* Listening again (or still, after a drain it never saw): policies may pick it now. */
	if (!drained)
		steer_undrain_done(w->d->steer, w->id);
}

static void begin_stop(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	w->stop_deadline_ms = w->now_ms + w->snap->cfg.timeouts.shutdown_grace_ms;
	listeners_shutdown(w);
	conn_stop_all(w, false);
	ups_pool_close_all(w);
}

static void on_control(struct worker *w)
{
	uint32_t drain = __atomic_load_n(&w->drain_req, __ATOMIC_ACQUIRE);

	if (__atomic_load_n(&w->stop_req, __ATOMIC_ACQUIRE))
		begin_stop(w);
	if (!w->stopping)
		apply_drain(w, drain & 1);
	/* Stopping, the listeners are shut whatever was asked: nothing more will change. */
	__atomic_store_n(&w->drain_done, drain, __ATOMIC_RELEASE);
}

void worker_log_flush(struct worker *w)
{
	struct io_uring_sqe *sqe;
	const void *data;
	size_t len;

	if (w->alog_fd < 0)
		return;
	len = alog_flush_begin(&w->alog, &data);
	if (!len)
		return;
	sqe = worker_sqe(w);
	/* Offset -1: the file position, i.e. the end for an O_APPEND fd. */
	io_uring_prep_write(sqe, w->alog_fd, data, (unsigned)len, (uint64_t)-1);
	sqe->user_data = ud_pack(OP_LOG_WRITE, 0, 0);
	w->log_inflight = true;
}

static void on_tick(struct worker *w)
{
	struct timespec ts;
	uint64_t now = now_ns();

	STAT_SET(w->stats->heartbeat_ms, w->now_ms);
	STAT_SET(w->stats->log_lines_dropped, w->alog.lines_dropped);
	timers_run(w);
	ups_pool_expire(w);
	/* Accepts paused by EMFILE resume one tick later: the fds closed meanwhile are back. */
	if (w->accept_retry_ms && w->now_ms >= w->accept_retry_ms) {
		w->accept_retry_ms = 0;
		if (!w->stopping && !w->drained)
			for (uint32_t i = 0; i < w->listen_n; i++)
				arm_accept(w, i);
	}
	if (w->alog_fd >= 0 && alog_pending(&w->alog))
		worker_log_flush(w);
	if (w->now_ms - w->last_tick_ms >= HOUSEKEEP_MS) {
		uint64_t interval = (w->now_ms - w->last_tick_ms) * 1000000ULL;

		uint64_t cpu;

		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
		cpu = (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
		STAT_SET(w->stats->cpu_ns, cpu);
		/*
		 * The load figure is the CPU this thread got, not the wall time between waking and
		 * sleeping: on a core shared with other runnable tasks the wall time counts their
		 * turns too, so every worker read as 100% busy and least-load saw no difference.
		 */
		steer_tick(w->sc, cpu - w->tick_cpu_ns, interval);
		steer_resync(w->sc, w->listen_fd, w->listen_n);
		w->tick_cpu_ns = cpu;
		buf_housekeep(w);
		w->last_tick_ms = w->now_ms;
		/* Accepts that ended on EMFILE/ENFILE/ENOMEM are retried here, not in a loop. */
		if (!w->stopping && !w->drained)
			for (uint32_t i = 0; i < w->listen_n; i++)
				arm_accept(w, i);
	}
	if (w->stopping && w->now_ms >= w->stop_deadline_ms)
		conn_stop_all(w, true);
	(void)now;
}

void worker_fd_warn(struct worker *w, const char *what, int err)
{
	STAT_ADD(w->stats->fd_exhausted, 1);
	w->fd_errors++;
	if (w->fd_warned_ms && w->now_ms - w->fd_warned_ms < 10000)
		return;
	log_warn("worker %u: %s: %s (%llu times in the last %llu s; idle connections are closed "
		 "to make room)",
		 w->id, what, strerror(err), (unsigned long long)w->fd_errors,
		 (unsigned long long)(w->fd_warned_ms ? (w->now_ms - w->fd_warned_ms) / 1000 : 0));
	w->fd_warned_ms = w->now_ms;
	w->fd_errors = 0;
}

/*
 * Accept failed for want of a file descriptor. Never spin and never stop serving: close idle
 * connections (their fds come back once their cancelled ops complete) and accept again on
 * the next tick; with nothing idle to close, answer one waiting connection with a 503 that
 * needs no fd (refuse_direct), so clients are told rather than left in the queue.
 */
static void accept_fd_limit(struct worker *w, uint32_t li, int err)
{
	worker_fd_warn(w, "accept", err);
	w->accept_retry_ms = w->now_ms + TICK_MS;
	w->fd_short |= 1u << li;
}

/*
 * Refuses one waiting client of listener li with a 503 without a file descriptor: the accept
 * goes into slot li of the ring's fixed-file table, linked to the send of the 503 from that
 * slot and to the slot's close (hard-linked: it runs whether the send worked or not). Giving
 * up a reserve fd to accept into and opening it again was racy: any other thread of the
 * process (the admin plane's accepts, health checks) could take the freed number in between,
 * and the worker could not refuse again.
 */
static void refuse_direct(struct worker *w, uint32_t li)
{
	struct io_uring_sqe *sqe;

	if (io_uring_sq_space_left(&w->ring) < 3)
		io_uring_submit(&w->ring); /* the three linked ops in one submission */
	sqe = worker_sqe(w);
	io_uring_prep_accept_direct(sqe, w->listen_fd[li], NULL, NULL, 0, li);
	if (!w->refuse_may_wait)
		sqe->ioprio |= ACCEPT_DONTWAIT; /* nobody waiting after all: -EAGAIN, not a wait */
	sqe->flags |= IOSQE_IO_LINK;
	sqe->user_data = ud_pack(OP_REFUSE, li, REFUSE_ACCEPT);
	/* Not on a TLS listener: a 503 in clear would only be a bad record to a TLS client. */
	if (!w->snap->tls[li]) {
		sqe = worker_sqe(w);
		io_uring_prep_send(sqe, (int)li, w->refuse_msg, w->refuse_len, MSG_NOSIGNAL);
		sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK;
		sqe->user_data = ud_pack(OP_REFUSE, li, REFUSE_SEND);
	}
	sqe = worker_sqe(w);
	io_uring_prep_close_direct(sqe, li);
	sqe->user_data = ud_pack(OP_REFUSE, li, REFUSE_CLOSE);
	w->refusing |= 1u << li;
}

/* One step of a refusal done; every step posts its completion (-ECANCELED after a failure). */
static void on_refuse(struct worker *w, uint32_t li, uint32_t step, int res)
{
	switch (step) {
	case REFUSE_ACCEPT:
		if (res >= 0)
			STAT_ADD(w->stats->conns_rejected, 1);
		else if (res == -EINVAL && !w->refuse_may_wait)
			w->refuse_may_wait =
				true; /* a kernel before 6.10: accept without the flag */
		break;
	case REFUSE_SEND:
		if (res > 0)
			count_status(w, 503);
		break;
	default:
		w->refusing &= ~(1u << li); /* the slot is free again */
		break;
	}
}

/* After the batch: make room for the listeners that ran out of fds, or refuse one client each. */
static void accept_fd_short(struct worker *w)
{
	uint32_t shed = conn_shed_idle(w, 8);

	for (uint32_t li = 0; li < w->listen_n && !shed; li++) {
		struct pollfd pfd = { .fd = w->listen_fd[li], .events = POLLIN };

		if (!(w->fd_short & (1u << li)) || (w->refusing & (1u << li)) ||
		    poll(&pfd, 1, 0) != 1)
			continue;
		refuse_direct(w, li);
	}
	w->fd_short = 0;
}

static void on_accept(struct worker *w, uint32_t li, int res, uint32_t flags)
{
	if (res >= 0) {
		/* An upgrade's drain serves what was accepted already (the successor has the rest). */
		if (w->stopping && !w->d->handover)
			close(res);
		else
			conn_accept(w, res, li);
	}
	if (!(flags & IORING_CQE_F_MORE)) {
		w->accept_armed[li] = false;
		w->accept_inflight--;
		/* Re-arm at once unless resources ran out (then the next 100 ms tick does). */
		if (!w->stopping && !w->drained && res != -EMFILE && res != -ENFILE &&
		    res != -ENOMEM && res != -ENOBUFS && res != -EINVAL)
			arm_accept(w, li);
		if ((res == -EMFILE || res == -ENFILE) && !w->stopping && !w->drained)
			accept_fd_limit(w, li, -res);
		else if (res < 0 && res != -EINVAL && res != -ECANCELED)
			log_warn("worker %u: accept: %s", w->id, strerror(-res));
	}
}

static void dispatch(struct worker *w, struct io_uring_cqe *cqe)
{
	struct ud ud = ud_unpack(cqe->user_data);

	if (cqe->flags & IORING_CQE_F_BUFFER)
		buf_taken(w, cqe);
	else if (cqe->res == -ENOBUFS && (ud.op == OP_C_RECV || ud.op == OP_U_RECV))
		bufpool_nobufs(&w->bp);
	switch (ud.op) {
	case OP_ACCEPT:
		on_accept(w, ud.idx, cqe->res, cqe->flags);
		break;
	case OP_REFUSE:
		on_refuse(w, ud.idx, ud.gen, cqe->res);
		break;
	case OP_TICK:
		on_tick(w);
		if (!(w->stopping && w->conns_active == 0 && w->ups_open == 0 && !w->log_inflight))
			arm_tick(w);
		break;
	case OP_EVENT:
		on_control(w);
		arm_event(w);
		break;
	case OP_LOG_WRITE: {
		int r;

		w->log_inflight = false;
		r = alog_flush_done(&w->alog, cqe->res);
		if (r == 1)
			worker_log_flush(w);
		/* A failing log (full disk) is said once per 10 s per core, not per line. */
		if (r < 0 && w->now_ms - w->log_warned_ms >= LOG_WARN_INTERVAL_MS) {
			w->log_warned_ms = w->now_ms;
			log_warn("worker %u: access log write: %s (%llu lines dropped so far)",
				 w->id, strerror(-r), (unsigned long long)w->alog.lines_dropped);
		}
		break;
	}
	case OP_C_RECV:
	case OP_C_SEND:
	case OP_C_CANCEL:
	case OP_C_POLL:
	case OP_C_TLS:
		conn_on_cqe(w, ud.op, ud.idx, ud.gen, cqe->res, cqe->flags);
		break;
	case OP_U_CONNECT:
	case OP_U_RECV:
	case OP_U_SEND:
	case OP_U_CANCEL:
	case OP_U_TLS:
		ups_on_cqe(w, ud.op, ud.idx, ud.gen, cqe->res, cqe->flags);
		break;
	default:
		break;
	}
}

static int ring_setup(struct worker *w)
{
	struct io_uring_params p;
	struct io_uring_buf_reg reg;
	int r;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
	p.cq_entries = RING_CQ_ENTRIES;
	r = io_uring_queue_init_params(RING_SQ_ENTRIES, &w->ring, &p);
	if (r < 0)
		return r;
	w->br = mmap(NULL, (size_t)w->nbufs * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->br == MAP_FAILED) {
		w->br = NULL;
		return -ENOMEM;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)w->br;
	reg.ring_entries = w->nbufs;
	reg.bgid = w->bgid;
	r = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (r < 0)
		return r;
	io_uring_buf_ring_init(w->br);
	buf_ring_fill(w);
	/* One fixed-file slot per listener: refusals at EMFILE accept into it (refuse_direct). */
	return io_uring_register_files_sparse(&w->ring, w->listen_n ? w->listen_n : 1);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct io_uring_cqe *cqe;
	cpu_set_t set;
	unsigned head, n;
	uint64_t t0;
	int r;

	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		log_warn("worker %u: cannot pin to core %u", w->id, w->cpu);
	{
		char name[16]; /* "corral-wN" in top -H, ps -L and /proc/PID/task/TID/comm */

		snprintf(name, sizeof(name), "corral-w%u", w->id);
		pthread_setname_np(pthread_self(), name);
	}
	rcu_register_thread();
	r = ring_setup(w);
	if (r < 0) {
		log_err("worker %u: io_uring setup: %s", w->id, strerror(-r));
		__atomic_store_n(&w->start_err, r, __ATOMIC_RELEASE);
		rcu_unregister_thread();
		return NULL;
	}
	w->snap = rcu_dereference(w->d->snap);
	w->now_ms = now_ms();
	w->last_tick_ms = w->now_ms;
	w->bp_window_ms = w->bp_release_ms = w->now_ms;
	for (uint32_t i = 0; i < w->listen_n; i++)
		arm_accept(w, i);
	arm_event(w);
	arm_tick(w);
	io_uring_submit(&w->ring);
	STAT_SET(w->stats->heartbeat_ms, w->now_ms);
	__atomic_store_n(&w->ready, 1, __ATOMIC_RELEASE);

	for (;;) {
		rcu_thread_offline();
		r = io_uring_submit_and_wait(&w->ring, 1);
		rcu_thread_online();
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
			log_err("worker %u: io_uring_submit_and_wait: %s", w->id, strerror(-r));
			break;
		}
		t0 = now_ns();
		w->now_ms = t0 / 1000000ULL;
		w->snap = rcu_dereference(w->d->snap);
		n = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			dispatch(w, cqe);
			n++;
		}
		io_uring_cq_advance(&w->ring, n);
		bufpool_pass_end(&w->bp);
		buf_ring_fill(w);
		if (w->fd_short)
			accept_fd_short(w);
		if (w->accept_defer_n || w->shed_want)
			conn_accept_deferred(w);
		wait_service(w);
		if (io_uring_cq_has_overflow(&w->ring))
			log_warn("worker %u: completion queue overflow", w->id);
		if (w->stopping && w->conns_active == 0 && w->ups_open == 0 && !w->log_inflight)
			break;
	}
	/* A clean stop: every connection and upstream is gone, so everything they held is back. */
	if (w->stopping && w->conns_active == 0 && w->ups_open == 0) {
		CHECK_IF(w->bufs_out != 0);
		CHECK_IF(w->bp.out != 0);
		CHECK_IF(w->bp.depth + w->bp.in_ring != w->nbufs);
		CHECK_IF(w->bp.taken_total != w->bp.returned_total);
		buf_check_ring(w);
		CHECK_IF(w->hbuf_used != 0);
	}
	io_uring_queue_exit(&w->ring);
	if (w->alog_fd >= 0)
		alog_flush_sync(&w->alog, w->alog_fd);
	rcu_unregister_thread();
	return NULL;
}

int worker_start(struct worker *w)
{
	int r = pthread_create(&w->thread, NULL, worker_main, w);

	if (r)
		return -r;
	for (;;) {
		if (__atomic_load_n(&w->ready, __ATOMIC_ACQUIRE))
			return 0;
		r = __atomic_load_n(&w->start_err, __ATOMIC_ACQUIRE);
		if (r) {
			pthread_join(w->thread, NULL);
			return r;
		}
		usleep(1000);
	}
}

static void worker_kick(struct worker *w)
{
	uint64_t one = 1;

	if (write(w->evfd, &one, sizeof(one)) < 0)
		log_warn("worker %u: eventfd write: %s", w->id, strerror(errno));
}

void worker_request_stop(struct worker *w)
{
	__atomic_store_n(&w->stop_req, 1, __ATOMIC_RELEASE);
	worker_kick(w);
}

uint32_t worker_request_drain(struct worker *w, bool drained)
{
	uint32_t token = ((__atomic_load_n(&w->drain_req, __ATOMIC_RELAXED) >> 1) + 1) << 1 |
			 (drained ? 1u : 0u);

	__atomic_store_n(&w->drain_req, token, __ATOMIC_RELEASE);
	worker_kick(w);
	return token;
}

bool worker_drain_applied(const struct worker *w, uint32_t token)
{
	return __atomic_load_n(&w->drain_done, __ATOMIC_ACQUIRE) == token;
}

bool worker_drain_asked(const struct worker *w)
{
	return __atomic_load_n(&w->drain_req, __ATOMIC_RELAXED) & 1;
}

void worker_join(struct worker *w)
{
	pthread_join(w->thread, NULL);
}
