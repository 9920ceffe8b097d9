/*
 * Backend balancing: smooth weighted round-robin, least-conn and weighted rendezvous hashing.
 *
 * Owns: nothing but the policies. Reads the snapshot's backend list and the shared backend
 * runtime table (relaxed loads); writes only the caller's per-core struct balance_state.
 * Knows nothing of workers or connections, so every policy is unit-tested on its own
 * (tests/unit/test_balance.c), like nginx's round-robin module behind peer.get/peer.free.
 */
#include <math.h>
#include <string.h>
#include <xxhash.h>
#include "balance.h"

/* What one pick needs besides the backend: kept together so the policies stay short. */
struct pick {
	const struct snapshot *s;
	const struct backend_rt *rt;
	struct balance_state *bs;
	uint64_t now_ms;
	const struct tried_set *tried;
	bool skip_parked;
};

/* The backend's effective weight if it may take this attempt, else 0. */
static uint32_t usable_weight(const struct pick *p, uint16_t id)
{
	const struct backend_rt *b = &p->rt[id];
	uint32_t wt = __atomic_load_n(&b->weight, __ATOMIC_RELAXED);

	if (wt == 0 || tried_has(p->tried, id) || !__atomic_load_n(&b->enabled, __ATOMIC_RELAXED))
		return 0;
	/* Down by health checks (or by traffic until a check passes): not even as a last try. */
	if (__atomic_load_n(&b->down, __ATOMIC_RELAXED))
		return 0;
	if (p->skip_parked && (__atomic_load_n(&b->down_until_ms, __ATOMIC_RELAXED) > p->now_ms ||
			       p->bs->park_until_ms[id] > p->now_ms))
		return 0;
	return wt;
}

static uint16_t backend_id(const struct snapshot *s, uint32_t i)
{
	BUG_ON_HOT(s->backend_id[i] >= BACKEND_IDS_MAX);
	return (uint16_t)s->backend_id[i];
}

/* nginx's smooth weighted round-robin: even interleaving, exact proportions over a cycle. */
static int pick_rr(const struct pick *p)
{
	int64_t *cur = p->bs->rr_cur;
	int64_t total = 0;
	int best = BALANCE_NONE;

	for (uint32_t i = 0; i < p->s->cfg.backends_n; i++) {
		uint16_t id = backend_id(p->s, i);
		uint32_t wt = usable_weight(p, id);

		if (!wt)
			continue;
		cur[id] += wt;
		total += wt;
		if (best < 0 || cur[id] > cur[backend_id(p->s, (uint32_t)best)])
			best = (int)i;
	}
	if (best >= 0)
		cur[backend_id(p->s, (uint32_t)best)] -= total;
	return best;
}

/* Fewest exchanges in flight from this core relative to weight; ties rotate. */
static int pick_lc(const struct pick *p)
{
	uint32_t n = p->s->cfg.backends_n;
	uint64_t best_a = 0, best_w = 1;
	int best = BALANCE_NONE;

	p->bs->lc_rot++;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t i = (k + p->bs->lc_rot) % n;
		uint16_t id = backend_id(p->s, i);
		uint64_t wt = usable_weight(p, id);
		uint64_t a = p->bs->inflight[id];

		if (!wt)
			continue;
		/* a / wt < best_a / best_w, without division. */
		if (best < 0 || a * best_w < best_a * wt) {
			best = (int)i;
			best_a = a;
			best_w = wt;
		}
	}
	return best;
}

/*
 * Weighted rendezvous hashing: each backend scores weight / -ln(u) with u uniform in (0,1)
 * from hash(key, backend address); the highest wins. Removing a backend moves only its own
 * keys; adding one moves about weight/total of them, all to the new backend.
 */
static int pick_hash(const struct pick *p, uint64_t key)
{
	double best_score = -1.0;
	int best = BALANCE_NONE;

	for (uint32_t i = 0; i < p->s->cfg.backends_n; i++) {
		uint16_t id = backend_id(p->s, i);
		const char *addr = p->s->cfg.backends[i].addr.text;
		uint32_t wt = usable_weight(p, id);
		uint64_t h;
		double u, score;

		if (!wt)
			continue;
		h = XXH3_64bits_withSeed(addr, strlen(addr), key);
		/* The top 53 bits, centred in their interval: u is never 0 or 1. */
		u = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
		score = (double)wt / -log(u);
		if (score > best_score) {
			best_score = score;
			best = (int)i;
		}
	}
	return best;
}

int balance_pick(const struct snapshot *s, const struct backend_rt *rt, struct balance_state *bs,
		 uint64_t now_ms, uint64_t key, const struct tried_set *tried)
{
	struct pick p = { .s = s, .rt = rt, .bs = bs, .now_ms = now_ms, .tried = tried };
	int r = BALANCE_NONE;

	BUG_ON(s->cfg.backends_n > CFG_BACKENDS_MAX);
	/* First among backends that are not parked; if every one is parked, try them anyway. */
	for (int pass = 0; pass < 2 && r < 0; pass++) {
		p.skip_parked = pass == 0;
		switch (s->cfg.balance) {
		case CFG_BALANCE_LEAST_CONN:
			r = pick_lc(&p);
			break;
		case CFG_BALANCE_HASH_URI:
		case CFG_BALANCE_HASH_CLIENT:
			r = pick_hash(&p, key);
			break;
		default:
			r = pick_rr(&p);
			break;
		}
	}
	return r;
}
