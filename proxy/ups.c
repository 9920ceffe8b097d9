/* Upstream balancing: smooth weighted round-robin, least-conn, and weighted rendezvous hashing. */
#include <math.h>
#include <string.h>
#include <xxhash.h>
#include "conn.h"

static bool usable(struct worker *w, uint16_t id, uint64_t tried, bool check_health)
{
	const struct backend_rt *b = &w->d->backends[id];

	if (tried & (1ULL << (id & 63)))
		return false;
	if (__atomic_load_n(&b->weight, __ATOMIC_RELAXED) == 0 ||
	    !__atomic_load_n(&b->enabled, __ATOMIC_RELAXED))
		return false;
	/* Down by health checks (or by traffic until a check passes): not even as a last try. */
	if (__atomic_load_n(&b->down, __ATOMIC_RELAXED))
		return false;
	if (check_health && __atomic_load_n(&b->down_until_ms, __ATOMIC_RELAXED) > w->now_ms)
		return false;
	return true;
}

/* nginx's smooth weighted round-robin: even interleaving, exact proportions. */
static int pick_rr(struct worker *w, const struct snapshot *s, uint64_t tried, bool health)
{
	int64_t total = 0;
	int best = -1;

	for (uint32_t i = 0; i < s->cfg.backends_n; i++) {
		uint16_t id = (uint16_t)s->backend_id[i];
		int64_t wt;

		if (!usable(w, id, tried, health))
			continue;
		wt = __atomic_load_n(&w->d->backends[id].weight, __ATOMIC_RELAXED);
		w->rr_cur[id] += wt;
		total += wt;
		if (best < 0 || w->rr_cur[id] > w->rr_cur[s->backend_id[best]])
			best = (int)i;
	}
	if (best >= 0)
		w->rr_cur[s->backend_id[best]] -= total;
	return best;
}

/* Fewest exchanges in flight from this core relative to weight; ties rotate. */
static int pick_lc(struct worker *w, const struct snapshot *s, uint64_t tried, bool health)
{
	uint32_t n = s->cfg.backends_n;
	uint64_t best_a = 0, best_w = 1;
	int best = -1;

	w->lc_rot++;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t i = (k + w->lc_rot) % n;
		uint16_t id = (uint16_t)s->backend_id[i];
		uint64_t a, wt;

		if (!usable(w, id, tried, health))
			continue;
		a = w->be_active[id];
		wt = __atomic_load_n(&w->d->backends[id].weight, __ATOMIC_RELAXED);
		if (best < 0 || a * best_w < best_a * wt) {
			best = (int)i;
			best_a = a;
			best_w = wt;
		}
	}
	return best;
}

/*
 * Weighted rendezvous hashing: each backend scores weight / -ln(u) with u uniform from
 * hash(key, backend); the highest wins. Removing a backend moves only its own keys.
 */
static int pick_hash(struct worker *w, const struct snapshot *s, uint64_t key, uint64_t tried,
		     bool health)
{
	double best_score = -1.0;
	int best = -1;

	for (uint32_t i = 0; i < s->cfg.backends_n; i++) {
		uint16_t id = (uint16_t)s->backend_id[i];
		const char *addr = s->cfg.backends[i].addr.text;
		uint64_t h;
		double u, score;

		if (!usable(w, id, tried, health))
			continue;
		h = XXH3_64bits_withSeed(addr, strlen(addr), key);
		u = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
		score = (double)__atomic_load_n(&w->d->backends[id].weight, __ATOMIC_RELAXED) /
			-log(u);
		if (score > best_score) {
			best_score = score;
			best = (int)i;
		}
	}
	return best;
}

int ups_pick(struct worker *w, struct conn *c, uint64_t hkey, uint64_t tried)
{
	const struct snapshot *s = w->snap;
	int r = -1;

	(void)c;
	/* First among healthy backends; if every one is parked, try them anyway. */
	for (int pass = 0; pass < 2 && r < 0; pass++) {
		bool health = pass == 0;

		switch (s->cfg.balance) {
		case CFG_BALANCE_LEAST_CONN:
			r = pick_lc(w, s, tried, health);
			break;
		case CFG_BALANCE_HASH_URI:
		case CFG_BALANCE_HASH_CLIENT:
			r = pick_hash(w, s, hkey, tried, health);
			break;
		default:
			r = pick_rr(w, s, tried, health);
			break;
		}
	}
	return r;
}
