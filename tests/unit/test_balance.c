/* Unit tests of the balancing policies (balance.c): a pure function of snapshot and state. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balance.h"

/*
 * A model of what balance_pick reads: a snapshot listing n backends, the shared runtime table
 * and one core's state. Backend i gets stable id 5 + 7*i, so that a mix-up of snapshot index
 * and backend id shows.
 */
struct model {
	struct snapshot s;
	struct backend_rt rt[BACKEND_IDS_MAX];
	struct balance_state bs;
	struct tried_set tried;
	uint64_t now_ms;
};

static uint32_t id_of(uint32_t i)
{
	return 5 + 7 * i;
}

static void add_backend(struct model *m, uint32_t id, uint32_t weight)
{
	uint32_t i = m->s.cfg.backends_n++;

	snprintf(m->s.cfg.backends[i].addr.text, sizeof(m->s.cfg.backends[i].addr.text),
		 "127.0.0.%u:%u", 1 + id % 200, 8000 + id);
	m->s.cfg.backends[i].weight = weight;
	m->s.backend_id[i] = id;
	m->rt[id].weight = weight;
	m->rt[id].enabled = 1;
}

/* The model is large (a whole config): heap, zeroed. */
static struct model *model_new(enum cfg_balance policy, uint32_t n, const uint32_t *weights)
{
	struct model *m = calloc(1, sizeof(*m));

	cr_assert(m);
	m->s.cfg.balance = policy;
	m->now_ms = 100000;
	for (uint32_t i = 0; i < n; i++)
		add_backend(m, id_of(i), weights ? weights[i] : 1);
	return m;
}

static int pick(struct model *m, uint64_t key)
{
	return balance_pick(&m->s, m->rt, &m->bs, m->now_ms, key, &m->tried);
}

/* Picks `rounds` times with keys 0.. and counts the picks per snapshot index. */
static void count_picks(struct model *m, uint32_t rounds, uint32_t *counts)
{
	memset(counts, 0, sizeof(uint32_t) * m->s.cfg.backends_n);
	for (uint32_t r = 0; r < rounds; r++) {
		int i = pick(m, r * 0x9e3779b97f4a7c15ULL);

		cr_assert(i >= 0 && (uint32_t)i < m->s.cfg.backends_n, "pick %d", i);
		counts[i]++;
	}
}

static const enum cfg_balance all_policies[] = {
	CFG_BALANCE_ROUND_ROBIN,
	CFG_BALANCE_LEAST_CONN,
	CFG_BALANCE_HASH_URI,
	CFG_BALANCE_HASH_CLIENT,
};
#define POLICIES_N (sizeof(all_policies) / sizeof(all_policies[0]))

Test(balance, round_robin_splits_three_to_one_exactly_over_each_cycle)
{
	uint32_t w[] = { 3, 1 };
	struct model *m = model_new(CFG_BALANCE_ROUND_ROBIN, 2, w);
	uint32_t counts[2];

	for (int cycle = 0; cycle < 50; cycle++) {
		count_picks(m, 4, counts);
		cr_assert_eq(counts[0], 3, "cycle %d: %u", cycle, counts[0]);
		cr_assert_eq(counts[1], 1, "cycle %d: %u", cycle, counts[1]);
	}
	free(m);
}

Test(balance, round_robin_interleaves_smoothly)
{
	/* Weights 5:1:1 give a a b a c a a (nginx's smooth WRR), never five a in a row first. */
	uint32_t w[] = { 5, 1, 1 };
	struct model *m = model_new(CFG_BALANCE_ROUND_ROBIN, 3, w);
	const int want[] = { 0, 0, 1, 0, 2, 0, 0 };

	for (int cycle = 0; cycle < 3; cycle++)
		for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++)
			cr_assert_eq(pick(m, 0), want[k], "cycle %d step %zu", cycle, k);
	free(m);
}

Test(balance, equal_weights_share_evenly_under_every_policy)
{
	for (size_t p = 0; p < POLICIES_N; p++) {
		struct model *m = model_new(all_policies[p], 4, NULL);
		uint32_t counts[4];

		count_picks(m, 4000, counts);
		for (int i = 0; i < 4; i++)
			cr_assert(counts[i] > 800 && counts[i] < 1200, "policy %d backend %d: %u",
				  all_policies[p], i, counts[i]);
		free(m);
	}
}

Test(balance, hashing_follows_weights)
{
	uint32_t w[] = { 3, 1 };
	struct model *m = model_new(CFG_BALANCE_HASH_URI, 2, w);
	uint32_t counts[2];

	count_picks(m, 20000, counts);
	/* 3:1 of 20000 is 15000:5000; rendezvous weights are exact in expectation. */
	cr_assert(counts[0] > 14400 && counts[0] < 15600, "%u", counts[0]);
	free(m);
}

Test(balance, weight_zero_disabled_and_tried_backends_are_skipped_by_every_policy)
{
	for (size_t p = 0; p < POLICIES_N; p++) {
		struct model *m = model_new(all_policies[p], 4, NULL);
		uint32_t counts[4];

		m->rt[id_of(0)].weight = 0;
		m->rt[id_of(1)].enabled = 0;
		tried_add(&m->tried, (uint16_t)id_of(2));
		count_picks(m, 200, counts);
		cr_assert_eq(counts[3], 200, "policy %d: %u %u %u %u", all_policies[p], counts[0],
			     counts[1], counts[2], counts[3]);
		free(m);
	}
}

Test(balance, effective_weight_comes_from_the_runtime_table)
{
	/* corralctl's weight override lives in backend_rt, not in the config. */
	struct model *m = model_new(CFG_BALANCE_ROUND_ROBIN, 2, NULL);
	uint32_t counts[2];

	m->rt[id_of(1)].weight = 3;
	count_picks(m, 400, counts);
	cr_assert_eq(counts[0], 100);
	cr_assert_eq(counts[1], 300);
	free(m);
}

Test(balance, parked_backends_are_skipped_while_another_is_usable)
{
	for (size_t p = 0; p < POLICIES_N; p++) {
		struct model *m = model_new(all_policies[p], 3, NULL);
		uint32_t counts[3];

		m->rt[id_of(0)].down_until_ms = m->now_ms + 1;
		m->rt[id_of(1)].down_until_ms = m->now_ms + 1000;
		m->rt[id_of(2)].down_until_ms = m->now_ms; /* park ended: usable again */
		count_picks(m, 100, counts);
		cr_assert_eq(counts[2], 100, "policy %d", all_policies[p]);
		free(m);
	}
}

Test(balance, a_backend_this_core_parked_is_skipped_before_the_main_thread_publishes_it)
{
	for (size_t p = 0; p < POLICIES_N; p++) {
		struct model *m = model_new(all_policies[p], 2, NULL);
		uint32_t counts[2];

		balance_park(&m->bs, id_of(0), m->now_ms + 300);
		count_picks(m, 50, counts);
		cr_assert_eq(counts[1], 50, "policy %d", all_policies[p]);
		/* The park ends on time; and parked everywhere, it is still tried. */
		m->now_ms += 300;
		count_picks(m, 50, counts);
		cr_assert_gt(counts[0], 0, "policy %d: park did not end", all_policies[p]);
		balance_park(&m->bs, id_of(0), m->now_ms + 300);
		balance_park(&m->bs, id_of(1), m->now_ms + 300);
		count_picks(m, 10, counts);
		cr_assert_eq(counts[0] + counts[1], 10);
		free(m);
	}
}

Test(balance, when_every_backend_is_parked_they_are_tried_anyway)
{
	for (size_t p = 0; p < POLICIES_N; p++) {
		struct model *m = model_new(all_policies[p], 3, NULL);

		for (uint32_t i = 0; i < 3; i++)
			m->rt[id_of(i)].down_until_ms = m->now_ms + 500;
		/* ...but never one that is disabled. */
		m->rt[id_of(1)].enabled = 0;
		for (int r = 0; r < 50; r++) {
			int i = pick(m, (uint64_t)r);

			cr_assert(i == 0 || i == 2, "policy %d pick %d", all_policies[p], i);
		}
		free(m);
	}
}

Test(balance, all_ineligible_gives_none)
{
	for (size_t p = 0; p < POLICIES_N; p++) {
		struct model *m = model_new(all_policies[p], 3, NULL);

		m->rt[id_of(0)].weight = 0;
		m->rt[id_of(1)].enabled = 0;
		tried_add(&m->tried, (uint16_t)id_of(2));
		cr_assert_eq(pick(m, 1), BALANCE_NONE, "policy %d", all_policies[p]);
		free(m);

		m = model_new(all_policies[p], 0, NULL);
		cr_assert_eq(pick(m, 1), BALANCE_NONE, "policy %d, no backends", all_policies[p]);
		free(m);
	}
}

Test(balance, least_conn_follows_in_flight_counts)
{
	struct model *m = model_new(CFG_BALANCE_LEAST_CONN, 3, NULL);

	m->bs.inflight[id_of(0)] = 5;
	m->bs.inflight[id_of(1)] = 2;
	m->bs.inflight[id_of(2)] = 3;
	for (int r = 0; r < 10; r++)
		cr_assert_eq(pick(m, 0), 1);
	/* The caller counts the exchange; the next pick sees it. */
	balance_inflight_inc(&m->bs, (uint16_t)id_of(1));
	balance_inflight_inc(&m->bs, (uint16_t)id_of(1));
	cr_assert_eq(pick(m, 0), 2);
	balance_inflight_dec(&m->bs, (uint16_t)id_of(0));
	balance_inflight_dec(&m->bs, (uint16_t)id_of(0));
	balance_inflight_dec(&m->bs, (uint16_t)id_of(0));
	cr_assert_eq(pick(m, 0), 0);
	free(m);
}

Test(balance, least_conn_weighs_in_flight_counts)
{
	/* 2 in flight at weight 3 (0.67 each) beats 1 at weight 1. */
	uint32_t w[] = { 3, 1 };
	struct model *m = model_new(CFG_BALANCE_LEAST_CONN, 2, w);

	m->bs.inflight[id_of(0)] = 2;
	m->bs.inflight[id_of(1)] = 1;
	cr_assert_eq(pick(m, 0), 0);
	m->bs.inflight[id_of(0)] = 4;
	cr_assert_eq(pick(m, 0), 1);
	free(m);
}

Test(balance, least_conn_rotates_among_ties)
{
	struct model *m = model_new(CFG_BALANCE_LEAST_CONN, 3, NULL);
	uint32_t counts[3];

	count_picks(m, 300, counts);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(counts[i], 100, "backend %d: %u", i, counts[i]);
	free(m);
}

Test(balance, hashing_is_stable_for_a_key)
{
	struct model *m = model_new(CFG_BALANCE_HASH_CLIENT, 5, NULL);

	for (uint64_t k = 0; k < 1000; k++) {
		int first = pick(m, k);

		for (int r = 0; r < 3; r++)
			cr_assert_eq(pick(m, k), first, "key %llu", (unsigned long long)k);
	}
	free(m);
}

#define KEYS 20000

static void picks_by_id(struct model *m, uint32_t *out)
{
	for (uint32_t k = 0; k < KEYS; k++) {
		int i = pick(m, (uint64_t)k * 0x9e3779b97f4a7c15ULL + 1);

		cr_assert(i >= 0);
		out[k] = m->s.backend_id[i];
	}
}

Test(balance, removing_a_backend_moves_only_its_own_keys)
{
	static uint32_t before[KEYS], after[KEYS];
	struct model *m = model_new(CFG_BALANCE_HASH_URI, 5, NULL);
	struct model *r = model_new(CFG_BALANCE_HASH_URI, 0, NULL);
	uint32_t gone = id_of(2), moved = 0;

	picks_by_id(m, before);
	/* The reload's new snapshot lists the other four, in the same order. */
	for (uint32_t i = 0; i < 5; i++)
		if (id_of(i) != gone)
			add_backend(r, id_of(i), 1);
	picks_by_id(r, after);
	for (uint32_t k = 0; k < KEYS; k++) {
		if (before[k] != gone)
			cr_assert_eq(after[k], before[k], "key %u moved off a surviving backend",
				     k);
		else
			moved++;
	}
	cr_assert(moved > KEYS / 5 - KEYS / 50 && moved < KEYS / 5 + KEYS / 50, "%u", moved);
	free(m);
	free(r);
}

Test(balance, adding_a_backend_moves_about_one_in_n_keys_all_to_it)
{
	static uint32_t before[KEYS], after[KEYS];
	struct model *m = model_new(CFG_BALANCE_HASH_URI, 4, NULL);
	uint32_t added = id_of(4), moved = 0;

	picks_by_id(m, before);
	add_backend(m, added, 1);
	picks_by_id(m, after);
	for (uint32_t k = 0; k < KEYS; k++) {
		if (after[k] == before[k])
			continue;
		cr_assert_eq(after[k], added, "key %u moved between old backends", k);
		moved++;
	}
	/* Expected 1/5 of the keys: 4000 +- 10%. */
	cr_assert(moved > 3600 && moved < 4400, "%u", moved);
	free(m);
}

Test(balance, disabling_a_backend_moves_only_its_hash_keys)
{
	static uint32_t before[KEYS], after[KEYS];
	struct model *m = model_new(CFG_BALANCE_HASH_CLIENT, 4, NULL);

	picks_by_id(m, before);
	m->rt[id_of(1)].enabled = 0;
	picks_by_id(m, after);
	for (uint32_t k = 0; k < KEYS; k++)
		if (before[k] != id_of(1))
			cr_assert_eq(after[k], before[k], "key %u", k);
		else
			cr_assert_neq(after[k], id_of(1));
	free(m);
}

Test(balance, tried_backend_ids_never_alias)
{
	struct tried_set t;

	tried_clear(&t);
	tried_add(&t, 3);
	tried_add(&t, BACKEND_IDS_MAX - 1);
	for (uint32_t id = 0; id < BACKEND_IDS_MAX; id++)
		cr_assert_eq(tried_has(&t, (uint16_t)id), id == 3 || id == BACKEND_IDS_MAX - 1,
			     "id %u", id);
	tried_del(&t, 3);
	cr_assert(!tried_has(&t, 3));
	cr_assert(tried_has(&t, BACKEND_IDS_MAX - 1));
}

Test(balance, a_retry_after_backend_3_may_go_to_backend_67)
{
	/* Ids 3 and 67 are 64 apart: a 64-bit mask took 67 as tried once 3 was. */
	for (size_t p = 0; p < POLICIES_N; p++) {
		struct model *m = model_new(all_policies[p], 0, NULL);

		add_backend(m, 3, 1);
		add_backend(m, 67, 1);
		tried_add(&m->tried, 3);
		cr_assert_eq(pick(m, 42), 1, "policy %d", all_policies[p]);
		free(m);
	}
}
