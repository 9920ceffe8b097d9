/* Per-worker statistics block: single writer (its worker), read by the main thread. */
#ifndef CORRAL_STATS_T_H
#define CORRAL_STATS_T_H

#include <stdint.h>
#include "tls-t.h"

/*
 * Latency histogram: log-linear buckets over microseconds. Bucket i covers
 * [stats_bucket_lo(i), stats_bucket_lo(i+1)). 4 sub-buckets per power of two from 1 us to
 * ~68 s keeps p99 error under 19% with 128 counters per core.
 */
#define STATS_LAT_BUCKETS 128

enum stats_class {
	STATS_1XX,
	STATS_2XX,
	STATS_3XX,
	STATS_4XX,
	STATS_5XX,
	STATS_CLASSES
};

/*
 * CROSS-THREAD: written only by the owning worker with relaxed atomic stores
 * (__atomic_store_n(..., __ATOMIC_RELAXED) of value+1, never read-modify-write), read by
 * the main thread with relaxed loads. Counters are monotonic; the reader computes rates.
 * Aligned so that two workers' blocks never share a cache line.
 */
struct stats_worker {
	uint64_t conns_accepted;
	uint64_t conns_active;		   /* gauge */
	uint64_t conns_rejected;	   /* table full (answered 503) */
	uint64_t requests;		   /* requests whose head was parsed */
	uint64_t responses[STATS_CLASSES]; /* by class of status sent to the client */
	uint64_t bytes_in;		   /* from clients */
	uint64_t bytes_out;		   /* to clients */
	uint64_t upstream_errors;	   /* connect failures, resets, timeouts, bad responses */
	uint64_t upstream_retries;
	uint64_t pool_idle; /* gauge: idle upstream connections in this worker's pools */
	uint64_t pool_hits;
	uint64_t pool_misses;
	uint64_t parse_errors; /* client requests rejected with 4xx by corral's parser */
	uint64_t timeouts;     /* 408 / idle / upstream timeouts */
	uint64_t cpu_ns;       /* worker thread CPU time, sampled by the worker each tick */
	uint64_t lat_us[STATS_LAT_BUCKETS]; /* request latency: head parsed to response end */
	uint64_t lat_sum_us;
	uint64_t no_backend;	/* 503s because no backend was eligible (not any backend's error) */
	uint64_t client_aborts; /* exchanges the client closed or reset in flight (logged 499) */
	uint64_t conns_reclaimed;   /* idle client connections closed to make room at the limit */
	uint64_t fd_exhausted;	    /* accepts, upstream sockets: EMFILE/ENFILE, fd budget */
	uint64_t log_lines_dropped; /* access-log lines lost: every chunk full (accesslog.h) */
	uint64_t
		proxy_protocol_errors; /* proxy_protocol connections closed without a valid header */
	uint64_t ups_tls_handshakes;   /* TLS handshakes to backends that completed */
	uint64_t ups_tls_resumed;      /* ... of which resumed a session */
	uint64_t ups_tls_failures; /* TLS handshakes to backends that failed (verification...) */
	uint64_t tls_handshakes;   /* TLS handshakes completed on client connections */
	uint64_t tls_resumed;	   /* of those, resumed from a session ticket */
	uint64_t tls_failures[TLS_FAIL_REASONS]; /* TLS sessions that failed, by enum tls_fail */
	uint64_t draining; /* 0/1, set by the worker when its listener is shut down (keep last) */
	uint64_t heartbeat_ms; /* now_ms() of the worker's last timer tick: liveness (/healthz) */
} __attribute__((aligned(64)));

#endif
