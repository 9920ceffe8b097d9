/* The daemon's shared state: snapshot, backend runtime table, workers. Owned by the main thread. */
#ifndef CORRAL_DAEMON_H
#define CORRAL_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>
#include "bug.h"
#include "balance-t.h"
#include "config-t.h"
#include "stats-t.h"

#define CORRAL_VERSION "0.1.0"

struct worker;
struct steer;
struct tls_client;
struct tls_server;

/*
 * CROSS-THREAD (shared-only pool 2, backend health and weights): one entry per backend id.
 * Written by the main thread (corralctl, health, reload) with relaxed atomic stores, read by
 * workers with relaxed loads. The same address keeps its id across reloads. A new address gets
 * an id no published snapshot lists (addr is written only then), a removed address's id is
 * freed only after the snapshot without it is published and every worker has passed a
 * quiescent point, and free ids are reused oldest-retired first. Each assignment of an id to
 * an address has its own never-reused generation (snapshot.id_gen), which keys the workers'
 * idle upstream pools.
 */
struct backend_rt {
	uint32_t weight;	/* effective weight (config weight, or corralctl's override) */
	uint32_t enabled;	/* 0 = disabled by the operator */
	uint64_t down_until_ms; /* passive health, set by the main thread: skip until then */
	uint32_t down;		/* 1 = marked down by proxy/health.c: no new requests */
	char addr[64];
	/* main thread only */
	uint32_t gen;	      /* generation of the current assignment; 0 = id free */
	uint64_t retired_seq; /* when it was freed (reuse order) */
	uint64_t since_ms;    /* when it was assigned: older connect failures are not its own */
	uint64_t base_requests, base_errors, base_lat_sum_us; /* counters of earlier assignments */
} __attribute__((aligned(64)));

/*
 * CROSS-THREAD (shared-only pool 1): the config snapshot. Immutable once published with
 * rcu_assign_pointer; workers read it with rcu_dereference inside their QSBR read side and
 * never keep a pointer across a quiescent point (their loop iteration).
 */
struct snapshot {
	struct config cfg;
	uint64_t version;
	/* backend index in cfg.backends -> stable backend id (index into daemon.backends) */
	uint32_t backend_id[CFG_BACKENDS_MAX];
	/* backend id -> generation of its address in this snapshot; 0 = not listed */
	uint32_t id_gen[BACKEND_IDS_MAX];
	/*
	 * Per backend entry (cfg.backends index): its TLS client context, or NULL for a plaintext
	 * backend. Built from cfg.backends[i].tls when the snapshot is (the CA file read again)
	 * and owned by it; a session that still uses a context (a pooled connection) keeps it
	 * alive by its own reference, so a reload never touches established connections.
	 */
	struct tls_client *btls[CFG_BACKENDS_MAX];
	/*
	 * Per listen entry: its TLS contexts (built from cfg.listen_tls with the process-wide
	 * ticket keys), or NULL for a plaintext listener. Owned by the snapshot: freed with it,
	 * after every worker passed a quiescent point; a session that still uses a context keeps
	 * it alive by its own reference (tls.h), so a reload never touches established sessions.
	 */
	struct tls_server *tls[CFG_LISTEN_MAX];
};

/* Per-backend per-worker counters (single writer: the worker). */
struct stats_backend {
	uint64_t requests;
	uint64_t errors;
	uint64_t active; /* gauge: exchanges in flight to it from this worker */
	uint64_t lat_sum_us;
	uint64_t connect_fail_ms; /* when this worker last failed to connect to it (0 = never) */
} __attribute__((aligned(64)));

struct daemon {
	struct snapshot *snap; /* RCU-protected */
	struct backend_rt backends[BACKEND_IDS_MAX];
	struct worker **workers;
	uint32_t workers_n;
	struct steer *steer; /* NULL: kernel-hash fallback */
	char steer_err[256]; /* why steering is off, when it is */
	int listen_fds[CFG_CORES_MAX][CFG_LISTEN_MAX];
	uint16_t listen_port[CFG_LISTEN_MAX];
	int listen_backlog; /* for every listen(), the re-listen after an undrain too */
	uint64_t start_ms;
	int alog_fd;	    /* access log, shared O_APPEND fd; -1 = off */
	uint32_t fd_budget; /* fds per worker for client and upstream connections (main.c) */
	volatile int stopping;
	/*
	 * Set before the workers are asked to stop when a binary upgrade's successor took over:
	 * they then keep idle keep-alive connections open for their next request (answered with
	 * Connection: close) instead of closing them under a request that may be on its way.
	 */
	volatile int handover;
};

/* Monotonic clock in milliseconds / nanoseconds. */
uint64_t now_ms(void);
uint64_t now_ns(void);

/* Logging to stderr with a timestamp; one line each, never interleaved (one write()). */
void log_msg(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_info(...) log_msg("info", __VA_ARGS__)
#define log_warn(...) log_msg("warn", __VA_ARGS__)
#define log_err(...)  log_msg("error", __VA_ARGS__)

/* Relaxed single-writer counter helpers for stats blocks. */
#define STAT_ADD(field, n) __atomic_store_n(&(field), (field) + (n), __ATOMIC_RELAXED)
#define STAT_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define STAT_GET(field)	   __atomic_load_n(&(field), __ATOMIC_RELAXED)

#endif
