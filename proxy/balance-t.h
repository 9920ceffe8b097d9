/* Balancing types: the per-core balancing state and the set of backends a request has tried. */
#ifndef CORRAL_BALANCE_T_H
#define CORRAL_BALANCE_T_H

#include <stdbool.h>
#include <stdint.h>
#include "config-t.h"

/*
 * Backend ids index the backend table and every worker's per-backend pools and counters. Twice
 * the config's limit: a reload that replaces every backend of a full config still finds ids
 * that the live snapshot does not use, so an id is never reused while a snapshot naming it may
 * still be read.
 */
#define BACKEND_IDS_MAX (2 * CFG_BACKENDS_MAX)

/* balance_pick's answer when no backend is usable. */
#define BALANCE_NONE (-1)

/*
 * Backend ids one request has already been sent to (so a retry goes elsewhere): one bit per
 * stable backend id (daemon.backends), not per position in the snapshot. 32 bytes per
 * connection; a 64-bit mask made ids 3 and 67 the same backend.
 */
#define TRIED_WORD_BITS 64
#define TRIED_WORDS	((BACKEND_IDS_MAX + TRIED_WORD_BITS - 1) / TRIED_WORD_BITS)
struct tried_set {
	uint64_t w[TRIED_WORDS];
};
_Static_assert(BACKEND_IDS_MAX <= TRIED_WORDS * TRIED_WORD_BITS, "one tried bit per backend id");

/*
 * Per-core balancing state. Worker-local: only its worker reads or writes it, so no atomics.
 * Indexed by stable backend id, so it survives reloads that keep a backend's address.
 */
struct balance_state {
	int64_t rr_cur[BACKEND_IDS_MAX];    /* smooth WRR current weights */
	uint32_t inflight[BACKEND_IDS_MAX]; /* exchanges in flight from this core (least-conn) */
	uint32_t lc_rot;		    /* least-conn tie breaker: rotates the scan start */
	/*
	 * Passive health seen by this core at once: a connect failure here parks the backend for
	 * this core until then, without waiting for the main thread's next scan to publish
	 * backend_rt.down_until_ms to every core (HEALTH_SCAN_MS later).
	 */
	uint64_t park_until_ms[BACKEND_IDS_MAX];
};

#endif
