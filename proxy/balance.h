/* Backend choice: the balancing policies as a pure function of the snapshot and per-core state. */
#ifndef CORRAL_BALANCE_H
#define CORRAL_BALANCE_H

#include "balance-t.h"
#include "daemon.h"

/*
 * Picks a backend for one attempt by the snapshot's balance policy (smooth weighted
 * round-robin, least-conn over bs->inflight, or weighted rendezvous hashing of key for
 * hash-uri / hash-client). Usable means: weight > 0, enabled, not in tried, and not parked
 * (rt[id].down_until_ms or bs->park_until_ms[id] > now_ms) -- unless every otherwise usable backend is parked, then
 * parked ones are tried too. Reads rt with relaxed loads; updates bs (round-robin weights,
 * least-conn rotation) but not bs->inflight. Returns an index into s->cfg.backends, or
 * BALANCE_NONE.
 */
int balance_pick(const struct snapshot *s, const struct backend_rt *rt, struct balance_state *bs,
		 uint64_t now_ms, uint64_t key, const struct tried_set *tried);

/* In-flight exchange counts per backend id, read by least-conn. Every inc has one dec. */
static inline void balance_inflight_inc(struct balance_state *bs, uint16_t id)
{
	bs->inflight[id]++;
}

static inline void balance_inflight_dec(struct balance_state *bs, uint16_t id)
{
	BUG_ON(bs->inflight[id] == 0);
	bs->inflight[id]--;
}

/* This core failed to connect to backend id: skip it here until until_ms (passive health). */
static inline void balance_park(struct balance_state *bs, uint16_t id, uint64_t until_ms)
{
	BUG_ON(id >= BACKEND_IDS_MAX);
	if (until_ms > bs->park_until_ms[id])
		bs->park_until_ms[id] = until_ms;
}

static inline void tried_clear(struct tried_set *t)
{
	for (unsigned i = 0; i < TRIED_WORDS; i++)
		t->w[i] = 0;
}

static inline void tried_add(struct tried_set *t, uint16_t id)
{
	BUG_ON(id >= BACKEND_IDS_MAX);
	t->w[id / TRIED_WORD_BITS] |= 1ULL << (id % TRIED_WORD_BITS);
}

static inline void tried_del(struct tried_set *t, uint16_t id)
{
	BUG_ON(id >= BACKEND_IDS_MAX);
	t->w[id / TRIED_WORD_BITS] &= ~(1ULL << (id % TRIED_WORD_BITS));
}

static inline bool tried_has(const struct tried_set *t, uint16_t id)
{
	BUG_ON(id >= BACKEND_IDS_MAX);
	return (t->w[id / TRIED_WORD_BITS] >> (id % TRIED_WORD_BITS)) & 1;
}

#endif
