/*
 * Every fixed limit and derived size of the daemon in one place: each with why it is that
 * number, and compile-time checks of the relationships the code relies on (TigerBeetle's
 * constants.zig is the model). Configurable defaults live in config-t.h; the bounds a config
 * value must keep are here when code depends on them, and in config.c's tables otherwise.
 * (Not "limits.h": with -Iproxy on the include path that name would shadow the C library's.)
 */
#ifndef CORRAL_CONSTANTS_H
#define CORRAL_CONSTANTS_H

#include <stdint.h>
#include "balance-t.h"
#include "config-t.h"

/* --- config bounds the data path depends on ----------------------------------------------- */

/* Connection slots per core: 2^20 keeps a slot index (and the upstream table beyond it) inside
 * user_data's index field with room to spare; more per core wants more cores. */
#define CFG_CONNECTIONS_PER_CORE_MAX 1048576
/* An io_uring provided-buffer ring holds a power of two entries, at most 32768 (kernel
 * limit), and buffer ids are 16 bits. */
#define CFG_BUFFERS_PER_CORE_MAX 32768
/* 1 MiB receive buffers and heads: beyond that a single client pins too much memory. */
#define CFG_BUFFER_BYTES_MAX  1048576
#define CFG_HEADER_BYTES_CEIL 1048576
/* Backend and steering weights: 0 = no traffic; 1000 gives 0.1% resolution, plenty. */
#define CFG_WEIGHT_MAX 1000u

/* --- the worker loop ------------------------------------------------------------------------ */

/* Timer tick: the resolution of every timeout (and of the header deadline). 10 ms is below
 * the smallest timeout a config may set (upstream_connect_ms >= 10) and costs ~100 wakeups/s. */
#define TICK_MS 10
/* Slower housekeeping (CPU-time sample for steering, re-arming accepts that hit EMFILE or
 * ENOMEM): ten ticks, often enough for steering to react within a second. */
#define HOUSEKEEP_MS 100
/* The main thread's loop period, and so the passive-health scan's: a backend one core failed
 * to connect to is parked for every core within this long (other cores may meanwhile pay one
 * connect failure each). */
#define HEALTH_SCAN_MS 100
/* After a client's FIN the EOF poll cannot wait for a reset alone: io_uring adds POLLRDHUP to
 * every poll's mask and a FIN leaves it set, so a re-armed poll would complete at once, for
 * ever. The re-armed poll waits this long first (a linked timeout): a client that closed is
 * noticed within a round trip plus 20 ms, at 50 wakeups/s per half-closed client in flight. */
#define POLL_RECHECK_MS 20
/*
 * How long `corralctl drain|undrain` waits for the worker to shut (or re-open) its listener
 * before it answers: a worker takes microseconds, a few ms on a loaded CPU; well below
 * corralctl's 10 s reply timeout, and short enough for the main thread (ctl, health) to wait.
 */
#define DRAIN_APPLY_WAIT_MS 2000u
/* A failing access log (full disk) is reported once per this long per core, not per line. */
#define LOG_WARN_INTERVAL_MS 10000

/* Submission queue entries: one loop iteration arms at most a few SQEs per completion it
 * handles, and worker_sqe() submits early when the SQ fills, so 4096 only bounds batching. */
#define RING_SQ_ENTRIES 4096
/* Completion queue: multishot accepts and receives post many CQEs per SQE, and everything in
 * flight (a recv, a send, a connect per connection) can complete in one iteration. Eight CQEs
 * per SQE slot keeps a full batch from overflowing (which the loop logs). */
#define RING_CQ_PER_SQ	8
#define RING_CQ_ENTRIES (RING_SQ_ENTRIES * RING_CQ_PER_SQ)

/* Listen backlog when limits.listen_backlog is unset and net.core.somaxconn cannot be read
 * (somaxconn's default since Linux 5.4). The first listen() and the re-listen after an undrain
 * use the same value (daemon.listen_backlog); the kernel clamps it to somaxconn. */
#define LISTEN_BACKLOG_FALLBACK 4096

/* --- buffers ------------------------------------------------------------------------------ */

/* Free receive buffers kept back from the no-buffer wait queue, so accepts and upstream
 * reads of running exchanges are not starved by a wave of new reads. */
#define BUF_RESERVE 8
/*
 * The provided-buffer ring holds a bounded fill fed from a LIFO of free buffers (bufpool.h):
 * at least BUF_RING_MIN, one more for each receive that found it empty, shrunk after each
 * BUF_WINDOW_MS without such a miss to twice the most the kernel took in one loop pass.
 * 32 x 16 KiB = 512 KiB per core stays warm at rest. Free buffers no loop pass touched for
 * BUF_RELEASE_MS go back to the kernel (MADV_DONTNEED): a burst's memory is returned 5-10 s
 * after it, and one that comes back costs page faults again only after that long a pause.
 */
#define BUF_RING_MIN   32
#define BUF_WINDOW_MS  1000
#define BUF_RELEASE_MS 5000

/*
 * Head buffers. A head is assembled from whole receives: up to header_bytes_max - 1 bytes
 * kept, plus one receive of up to buffer_bytes appended before the parser can say the head is
 * too long. A serialised request head is the client's head plus the fields corral adds
 * (X-Forwarded-For, X-Forwarded-Proto, Via; a client address is at most 46 bytes): 1 KiB. Page
 * rounded, so a head buffer never shares a page with another.
 */
#define HBUF_ADDED_BYTES 1024
#define HBUF_ALIGN	 4096
#define HBUF_SIZE(header_bytes_max, buffer_bytes)                                                  \
	(((header_bytes_max) + (buffer_bytes) + HBUF_ADDED_BYTES + HBUF_ALIGN - 1) &               \
	 ~(uint32_t)(HBUF_ALIGN - 1))
/*
 * Head buffers one client connection can hold at the same time (client.c, exchange.c), so
 * that a head buffer is never the resource a request runs out of:
 *   1. c->in: the rest of an assembled request head's buffer (body or pipelined bytes);
 *   2. c->req.head: the serialised request head, until the exchange ends;
 *   3. c->resp.accum, later u->in: the response head being assembled, then its remainder;
 *   4. c->resp.head: the serialised response head (or corral's error response), until sent.
 * (c->req.accum is empty again by the time the exchange starts: it became c->in.)
 * The table is mapped with MAP_NORESERVE and handed out LIFO: untouched ones cost no memory.
 */
#define HBUF_PER_CONN	     4
#define HBUF_COUNT(conn_cap) (HBUF_PER_CONN * (conn_cap))

/* Header array for the parser: one more than headers_max, so "too many" is seen. */
#define HDR_SCRATCH(headers_max) ((headers_max) + 1)

/* Connection slots beyond connections_per_core: at the limit a new connection takes a slot
 * while the idle one closed to make room for it still finishes its teardown. */
#define CONN_SLOT_HEADROOM 64

/*
 * Upstream connects a worker lets run ahead of the idle client connections closed to make room
 * for them in its file-descriptor budget (client.c, conn_fd_room): those close only at the end
 * of the batch of completions, as one of them may have its next request in a completion still
 * queued. main.c keeps that many descriptors per worker out of the budget for it.
 */
#define FD_BORROW_MAX 8

/* Upstream connection slots: one in use per client connection, idle pooled ones no more than
 * the core's client connections (upstream.c), and spares for ones still closing after their client
 * left. When they run out a request gets a 503. */
#define UPS_SPARE_SLOTS	  1024
#define UPS_CAP(conn_cap) (2 * (conn_cap) + UPS_SPARE_SLOTS)

/* --- user_data: op | object index | generation ------------------------------------------ */

#define UD_OP_BITS  8
#define UD_IDX_BITS 24
#define UD_GEN_BITS 32
#define UD_IDX_MASK ((1u << UD_IDX_BITS) - 1)

/* --- checks --------------------------------------------------------------------------------- */

_Static_assert(UD_OP_BITS + UD_IDX_BITS + UD_GEN_BITS == 64, "user_data is 64 bits");
_Static_assert(UPS_CAP(CFG_CONNECTIONS_PER_CORE_MAX + CONN_SLOT_HEADROOM) <= UD_IDX_MASK,
	       "every connection and upstream slot index fits user_data");
_Static_assert(CFG_LISTEN_MAX <= UD_IDX_MASK, "listener index fits user_data");
_Static_assert(HBUF_COUNT((uint64_t)CFG_CONNECTIONS_PER_CORE_MAX + CONN_SLOT_HEADROOM) < UINT32_MAX,
	       "head-buffer indices are 32 bits, UINT32_MAX is NIL");
_Static_assert((uint64_t)HBUF_SIZE(CFG_HEADER_BYTES_CEIL, CFG_BUFFER_BYTES_MAX) < UINT32_MAX,
	       "head-buffer size is 32 bits");
_Static_assert(CFG_BUFFERS_PER_CORE_MAX <= 32768, "io_uring buffer rings hold at most 32768");
_Static_assert(CFG_BUFFERS_PER_CORE_MAX > BUF_RESERVE, "the wait queue can be served");
_Static_assert(BUF_RING_MIN > BUF_RESERVE, "a ring at its minimum fill serves the wait queue");
_Static_assert(BUF_WINDOW_MS % HOUSEKEEP_MS == 0 && BUF_RELEASE_MS % BUF_WINDOW_MS == 0,
	       "buffer windows run on housekeeping ticks");
_Static_assert(BACKEND_IDS_MAX <= TRIED_WORDS * TRIED_WORD_BITS, "one tried bit per backend id");
_Static_assert(BACKEND_IDS_MAX <= UINT16_MAX, "backend ids are 16 bits");
_Static_assert(RING_CQ_ENTRIES >= 2 * RING_SQ_ENTRIES, "CQ at least the kernel's default 2 x SQ");
_Static_assert((RING_SQ_ENTRIES & (RING_SQ_ENTRIES - 1)) == 0, "SQ size is a power of two");
_Static_assert((RING_CQ_ENTRIES & (RING_CQ_ENTRIES - 1)) == 0, "CQ size is a power of two");
_Static_assert(HOUSEKEEP_MS % TICK_MS == 0 && LOG_WARN_INTERVAL_MS % TICK_MS == 0,
	       "periodic work runs on ticks");

#endif
