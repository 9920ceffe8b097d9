/* Unit tests of the steering policies (the pure function the BPF program runs) and worker helpers. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "steer.h"

/* A fresh model of the two maps: n live workers of weight 1, worker i on CPU i. */
struct model {
	struct steer_ctl ctl;
	struct steer_core cores[STEER_CORES_MAX];
};

static void model_init(struct model *m, enum steer_policy policy, uint32_t n)
{
	uint32_t i;

	memset(m, 0, sizeof(*m));
	m->ctl.abi = STEER_ABI;
	m->ctl.policy = policy;
	m->ctl.cores_n = n;
	m->ctl.groups_n = 1;
	for (i = 0; i < STEER_CORES_MAX; i++) {
		m->cores[i].weight = 1;
		m->cores[i].cpu = i;
	}
}

static int pick(const struct model *m, uint32_t hash, uint32_t cpu, uint32_t rnd, uint64_t seq)
{
	struct steer_in in = { .hash = hash, .cpu = cpu, .rnd = rnd, .seq = seq };

	return steer_pick(&m->ctl, m->cores, &in);
}

/* A cheap deterministic generator for hashes and random inputs. */
static uint32_t xs(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Picks `count` times with seq = 0.. and varied hash/rnd; fills per-worker hit counts. */
static void run(const struct model *m, uint32_t cpu, int count, uint64_t hits[STEER_CORES_MAX])
{
	uint32_t st = 2463534242u;
	int i, w;

	memset(hits, 0, sizeof(uint64_t) * STEER_CORES_MAX);
	for (i = 0; i < count; i++) {
		uint32_t h = xs(&st), r = xs(&st);

		w = pick(m, h, cpu, r, (uint64_t)i);
		cr_assert(w >= 0 && w < (int)m->ctl.cores_n, "pick %d out of range at %d", w, i);
		hits[w]++;
	}
}

static const enum steer_policy all_policies[] = {
	STEER_HASH,	    STEER_ROUND_ROBIN, STEER_LEAST_CONN, STEER_LEAST_LOAD,
	STEER_POWER_OF_TWO, STEER_WEIGHTED,    STEER_CPU_LOCAL,
};
#define NPOL (sizeof(all_policies) / sizeof(all_policies[0]))

Test(steer_policy, names_round_trip)
{
	uint32_t p;

	for (p = 0; p < STEER_POLICY_N; p++)
		cr_assert_eq(steer_policy_parse(steer_policy_str(p)), (int)p);
	cr_assert_str_eq(steer_policy_str(STEER_POWER_OF_TWO), "power-of-two");
	cr_assert_eq(steer_policy_parse("round-robin"), STEER_ROUND_ROBIN);
	cr_assert_eq(steer_policy_parse("least-load"), STEER_LEAST_LOAD);
	cr_assert_eq(steer_policy_parse("cpu-local"), STEER_CPU_LOCAL);
	cr_assert_eq(steer_policy_parse("round"), -1);
	cr_assert_eq(steer_policy_parse("round-robin2"), -1);
	cr_assert_eq(steer_policy_parse(""), -1);
	cr_assert_null(steer_policy_str(STEER_POLICY_N));
	cr_assert_str_eq(steer_policy_name(NULL), "kernel-hash");
}

Test(steer_policy, core_line_is_one_cache_line)
{
	cr_assert_eq(sizeof(struct steer_core), 64);
	cr_assert_eq(sizeof(struct steer_cores), 64 * STEER_CORES_MAX);
	cr_assert_eq(STEER_CORES_MAX, CFG_CORES_MAX);
	cr_assert_eq(STEER_LISTEN_MAX, CFG_LISTEN_MAX);
}

Test(steer_policy, every_policy_with_a_single_core_picks_it)
{
	struct model m;
	size_t p;
	int i;

	for (p = 0; p < NPOL; p++) {
		model_init(&m, all_policies[p], 1);
		for (i = 0; i < 50; i++)
			cr_assert_eq(pick(&m, (uint32_t)i * 2654435761u, (uint32_t)i % 4,
					  (uint32_t)i * 40503u, (uint64_t)i),
				     0, "policy %s", steer_policy_str(all_policies[p]));
	}
}

Test(steer_policy, all_drained_falls_back_for_every_policy)
{
	struct model m;
	size_t p;
	int i;

	for (p = 0; p < NPOL; p++) {
		model_init(&m, all_policies[p], 4);
		for (i = 0; i < 4; i++)
			m.cores[i].drained = 1;
		for (i = 0; i < 20; i++)
			cr_assert_eq(pick(&m, (uint32_t)i * 77777u, (uint32_t)i % 4, (uint32_t)i,
					  (uint64_t)i),
				     STEER_NONE, "policy %s", steer_policy_str(all_policies[p]));
	}
}

Test(steer_policy, no_workers_or_unknown_policy_falls_back)
{
	struct model m;
	size_t p;

	for (p = 0; p < NPOL; p++) {
		model_init(&m, all_policies[p], 0);
		cr_assert_eq(pick(&m, 1, 0, 1, 1), STEER_NONE);
	}
	model_init(&m, STEER_POLICY_N, 4);
	cr_assert_eq(pick(&m, 1, 0, 1, 1), STEER_NONE);
	model_init(&m, 0xdeadbeef, 4);
	cr_assert_eq(pick(&m, 1, 0, 1, 1), STEER_NONE);
}

Test(steer_policy, cores_n_above_the_array_is_clamped)
{
	struct model m;
	uint64_t hits[STEER_CORES_MAX];
	int i;

	model_init(&m, STEER_ROUND_ROBIN, 100000);
	for (i = 0; i < 600; i++) {
		int w = pick(&m, 0, 0, 0, (uint64_t)i);

		cr_assert(w >= 0 && w < STEER_CORES_MAX);
		cr_assert_eq(w, i % STEER_CORES_MAX);
	}
	m.ctl.cores_n = STEER_CORES_MAX;
	run(&m, 0, STEER_CORES_MAX * 3, hits);
	for (i = 0; i < STEER_CORES_MAX; i++)
		cr_assert_eq(hits[i], 3);
}

Test(steer_policy, every_policy_skips_drained_cores)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;
	size_t p;
	uint32_t cpu;

	for (p = 0; p < NPOL; p++) {
		for (cpu = 0; cpu < 4; cpu++) {
			model_init(&m, all_policies[p], 4);
			m.cores[1].drained = 1;
			m.cores[2].drained = 1;
			/* Make the drained ones the most attractive for the load policies. */
			m.cores[0].conns = 5;
			m.cores[3].conns = 5;
			m.cores[0].reqs = 3;
			m.cores[3].reqs = 3;
			run(&m, cpu, 400, hits);
			cr_assert_eq(hits[1] + hits[2], 0, "policy %s cpu %u",
				     steer_policy_str(all_policies[p]), cpu);
			cr_assert_eq(hits[0] + hits[3], 400);
		}
	}
}

Test(steer_policy, hash_matches_the_kernel_reciprocal_scale)
{
	struct model m;
	uint32_t st = 7, h;
	int i;

	model_init(&m, STEER_HASH, 3);
	for (i = 0; i < 1000; i++) {
		h = xs(&st);
		/* The kernel: reciprocal_scale(hash, num_socks) indexes socks[] in join order. */
		cr_assert_eq(pick(&m, h, 0, xs(&st), (uint64_t)i), (int)(((uint64_t)h * 3) >> 32));
		/* Deterministic per hash, whatever the other inputs. */
		cr_assert_eq(pick(&m, h, 1, 12345, 999), pick(&m, h, 0, 0, 0));
	}
}

Test(steer_policy, hash_spreads_evenly)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;
	int i;

	model_init(&m, STEER_HASH, 4);
	run(&m, 0, 8000, hits);
	for (i = 0; i < 4; i++)
		cr_assert(hits[i] > 1700 && hits[i] < 2300, "worker %d got %lu", i,
			  (unsigned long)hits[i]);
}

Test(steer_policy, hash_with_a_drained_core_moves_only_over_the_live_ones)
{
	struct model m;
	uint32_t st = 99, h;
	int i;

	model_init(&m, STEER_HASH, 3);
	m.cores[1].drained = 1;
	for (i = 0; i < 500; i++) {
		h = xs(&st);
		/* Two live workers: the hash maps onto {0, 2} by reciprocal_scale(h, 2). */
		cr_assert_eq(pick(&m, h, 0, 0, 0), (((uint64_t)h * 2) >> 32) ? 2 : 0);
	}
}

Test(steer_policy, round_robin_cycles_in_order_and_evenly)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;
	int i;

	model_init(&m, STEER_ROUND_ROBIN, 3);
	for (i = 0; i < 30; i++)
		cr_assert_eq(pick(&m, 0xffffffff, 0, 0, (uint64_t)i), i % 3);
	/* A number of picks that is not a multiple of the worker count: within one. */
	run(&m, 0, 1001, hits);
	cr_assert_eq(hits[0], 334);
	cr_assert_eq(hits[1], 334);
	cr_assert_eq(hits[2], 333);
	/* Drained: the cycle runs over the others only. */
	m.cores[1].drained = 1;
	for (i = 0; i < 10; i++)
		cr_assert_eq(pick(&m, 0, 0, 0, (uint64_t)i), (i % 2) ? 2 : 0);
}

Test(steer_policy, least_conn_picks_the_fewest_and_rotates_ties)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;
	int i;

	model_init(&m, STEER_LEAST_CONN, 4);
	m.cores[0].conns = 10;
	m.cores[1].conns = 3;
	m.cores[2].conns = 7;
	m.cores[3].conns = 4;
	for (i = 0; i < 20; i++)
		cr_assert_eq(pick(&m, (uint32_t)i, 0, (uint32_t)i, (uint64_t)i), 1);
	/* In-flight requests do not matter to least-conn. */
	m.cores[1].reqs = 1000;
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 1);
	/* The least loaded one drained: the next least. */
	m.cores[1].drained = 1;
	cr_assert_eq(pick(&m, 0, 0, 0, 5), 3);
	/* All equal: ties go round, not always to worker 0. */
	model_init(&m, STEER_LEAST_CONN, 4);
	run(&m, 0, 400, hits);
	for (i = 0; i < 4; i++)
		cr_assert_eq(hits[i], 100);
	/* Two tied at the minimum: only those two, evenly. */
	m.cores[0].conns = 2;
	m.cores[2].conns = 2;
	run(&m, 0, 400, hits);
	cr_assert_eq(hits[0] + hits[2], 0);
	cr_assert_eq(hits[1], 200);
	cr_assert_eq(hits[3], 200);
}

Test(steer_policy, least_load_sees_a_core_busy_with_few_heavy_requests)
{
	struct model m;

	model_init(&m, STEER_LEAST_LOAD, 2);
	/* Worker 0: two heavy requests keep it 100% busy. Worker 1: five light ones, 20%. */
	m.cores[0].reqs = 2;
	m.cores[0].load = STEER_LOAD_ONE;
	m.cores[0].conns = 2;
	m.cores[1].reqs = 5;
	m.cores[1].load = STEER_LOAD_ONE / 5;
	m.cores[1].conns = 50;
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 1);
	cr_assert_eq(pick(&m, 0, 0, 0, 1), 1);
	/* Equally busy: fewer in-flight requests wins. */
	m.cores[1].load = STEER_LOAD_ONE;
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 0);
	cr_assert_eq(pick(&m, 0, 0, 0, 1), 0);
	/* Idle by both measures: ties rotate. */
	memset(&m.cores[0], 0, 2 * sizeof(m.cores[0]));
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 0);
	cr_assert_eq(pick(&m, 0, 0, 0, 1), 1);
	/* Drained beats nothing. */
	m.cores[0].drained = 1;
	m.cores[1].reqs = 1000;
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 1);
}

/*
 * What the program does for each connection it places: one more queued on that worker until
 * the worker takes it (steer_conn_opened). A burst of SYNs is placed before any accept.
 */
static int pick_syn(struct model *m, uint32_t rnd, uint64_t seq)
{
	int w = pick(m, 0, 0, rnd, seq);

	cr_assert(w >= 0 && w < (int)m->ctl.cores_n);
	m->cores[w].steered++;
	return w;
}

Test(steer_policy, load_policies_count_connections_queued_since_their_syn)
{
	static const enum steer_policy pols[] = { STEER_LEAST_CONN, STEER_LEAST_LOAD };
	uint64_t hits[2];
	struct model m;
	size_t p;
	int i;

	for (p = 0; p < 2; p++) {
		/* Worker 0: 5 placed, 2 taken = 3 queued. Worker 1: 2 held, 2 requests. */
		model_init(&m, pols[p], 2);
		m.cores[0].steered = 5;
		m.cores[0].taken = 2;
		m.cores[1].conns = 2;
		m.cores[1].reqs = 2;
		m.cores[1].steered = m.cores[1].taken = 7;
		cr_assert_eq(pick(&m, 0, 0, 0, 0), 1, "%s", steer_policy_str(pols[p]));
		cr_assert_eq(pick(&m, 0, 0, 0, 1), 1, "%s", steer_policy_str(pols[p]));
		/* Taken: no longer queued. */
		m.cores[0].taken = 5;
		cr_assert_eq(pick(&m, 0, 0, 0, 1), 0, "%s", steer_policy_str(pols[p]));
		/* More taken than placed (the kernel's hash placed some): 0 queued, not 2^32 - 3. */
		m.cores[0].taken = 8;
		cr_assert_eq(pick(&m, 0, 0, 0, 1), 0, "%s", steer_policy_str(pols[p]));
		/* The counters wrap: 2 queued across the wrap still count 2. */
		m.cores[0].steered = 1;
		m.cores[0].taken = 0xffffffffu;
		m.cores[1].conns = m.cores[1].reqs = 1;
		cr_assert_eq(pick(&m, 0, 0, 0, 0), 1, "%s", steer_policy_str(pols[p]));

		/*
		 * A burst of 32 SYNs while worker 1 holds two heavy requests and nothing is accepted
		 * yet: the burst spreads instead of all landing on worker 0 (which it did when only
		 * accepted connections and parsed requests counted).
		 */
		model_init(&m, pols[p], 2);
		m.cores[1].conns = 2;
		m.cores[1].reqs = 2;
		memset(hits, 0, sizeof(hits));
		for (i = 0; i < 32; i++)
			hits[pick_syn(&m, 0, (uint64_t)i)]++;
		cr_assert(hits[0] == 17 && hits[1] == 15, "%s: burst went %lu / %lu",
			  steer_policy_str(pols[p]), (unsigned long)hits[0],
			  (unsigned long)hits[1]);
	}
}

Test(steer_policy, least_load_splits_connections_arriving_together_at_idle_workers)
{
	uint64_t hits[2];
	struct model m;
	int i;

	/*
	 * The uneven benchmark's start: three heavy connections arrive together at two idle
	 * workers whose load figures differ by a few units (5 and 3 sampled). They split 2:1;
	 * before, all three went to the worker idle by 2 units, and no later placement can move
	 * them (per-core CPU max/mean 1.2-1.3 in those rounds).
	 */
	model_init(&m, STEER_LEAST_LOAD, 2);
	m.cores[0].load = 5;
	m.cores[1].load = 3;
	memset(hits, 0, sizeof(hits));
	for (i = 0; i < 3; i++)
		hits[pick_syn(&m, 0, (uint64_t)i)]++;
	cr_assert(hits[0] == 1 && hits[1] == 2, "three went %lu / %lu", (unsigned long)hits[0],
		  (unsigned long)hits[1]);
}

Test(steer_policy, power_of_two_takes_the_lighter_of_two_distinct)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;
	uint32_t st = 5;
	int i;

	/* Two workers: both are always the candidates, so the lighter always wins. */
	model_init(&m, STEER_POWER_OF_TWO, 2);
	m.cores[0].reqs = 4;
	m.cores[1].reqs = 1;
	for (i = 0; i < 200; i++)
		cr_assert_eq(pick(&m, 0, 0, xs(&st), 0), 1);
	/*
	 * Same score: a coin flip, whatever the connection counts. conns lags (it counts
	 * accepted connections), so a tie-break on it herded new connections onto the worker
	 * that was slowest to accept them.
	 */
	m.cores[0].reqs = 1;
	m.cores[0].conns = 1;
	m.cores[1].conns = 9;
	memset(hits, 0, sizeof(hits));
	for (i = 0; i < 2000; i++)
		hits[pick(&m, 0, 0, xs(&st), 0)]++;
	cr_assert(hits[0] > 850 && hits[1] > 850, "ties went %lu / %lu", (unsigned long)hits[0],
		  (unsigned long)hits[1]);

	/* Four workers, the heaviest is never picked (it always loses its duel). */
	model_init(&m, STEER_POWER_OF_TWO, 4);
	m.cores[2].reqs = 100;
	run(&m, 0, 4000, hits);
	cr_assert_eq(hits[2], 0);
	/* And the lightest wins every duel it is in: about half of all picks (3 of 6 pairs). */
	m.cores[2].reqs = 0;
	m.cores[0].reqs = 1;
	m.cores[1].reqs = 2;
	m.cores[3].reqs = 3;
	run(&m, 0, 6000, hits);
	cr_assert(hits[2] > 2700 && hits[2] < 3300, "lightest got %lu", (unsigned long)hits[2]);
	cr_assert_eq(hits[3], 0);
	/* All equal: spread over everyone. */
	model_init(&m, STEER_POWER_OF_TWO, 4);
	run(&m, 0, 4000, hits);
	for (i = 0; i < 4; i++)
		cr_assert(hits[i] > 800 && hits[i] < 1200, "worker %d got %lu", i,
			  (unsigned long)hits[i]);
}

Test(steer_policy, weighted_three_to_one_is_exact)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;
	int i, run_len = 0, longest = 0;

	model_init(&m, STEER_WEIGHTED, 2);
	m.cores[0].weight = 3;
	m.cores[1].weight = 1;
	run(&m, 0, 4000, hits);
	cr_assert_eq(hits[0], 3000);
	cr_assert_eq(hits[1], 1000);
	/* Every full cycle of 4 consecutive picks is exact, wherever it starts. */
	for (i = 0; i < 100; i++) {
		int j, n0 = 0;

		for (j = 0; j < 4; j++)
			n0 += pick(&m, 0, 0, 0, (uint64_t)(i + j)) == 0;
		cr_assert_eq(n0, 3, "window at %d", i);
	}
	/*
	 * Spread within a cycle: with weights 100:100 a prefix-sum walk alone would send 100
	 * connections in a row to each worker; the permuted walk keeps runs short.
	 */
	m.cores[0].weight = 100;
	m.cores[1].weight = 100;
	for (i = 0; i < 200; i++) {
		run_len = pick(&m, 0, 0, 0, (uint64_t)i) == 0 ? run_len + 1 : 0;
		longest = run_len > longest ? run_len : longest;
	}
	cr_assert(longest <= 10, "longest run %d", longest);
	run(&m, 0, 200, hits);
	cr_assert_eq(hits[0], 100);
	cr_assert_eq(hits[1], 100);
}

Test(steer_policy, weighted_uneven_weights_are_exact_per_cycle)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;

	model_init(&m, STEER_WEIGHTED, 4);
	m.cores[0].weight = 5;
	m.cores[1].weight = 2;
	m.cores[2].weight = 0; /* never */
	m.cores[3].weight = 13;
	run(&m, 0, 20 * 50, hits);
	cr_assert_eq(hits[0], 250);
	cr_assert_eq(hits[1], 100);
	cr_assert_eq(hits[2], 0);
	cr_assert_eq(hits[3], 650);
	/* Drained weight leaves the cycle. */
	m.cores[3].drained = 1;
	run(&m, 0, 7 * 50, hits);
	cr_assert_eq(hits[0], 250);
	cr_assert_eq(hits[1], 100);
	cr_assert_eq(hits[2] + hits[3], 0);
	/* The largest weights do not overflow the arithmetic. */
	model_init(&m, STEER_WEIGHTED, STEER_CORES_MAX);
	for (int i = 0; i < STEER_CORES_MAX; i++)
		m.cores[i].weight = STEER_WEIGHT_MAX;
	m.cores[0].weight = 0;
	for (int i = 0; i < 1000; i++) {
		int w = pick(&m, 0, 0, 0, (uint64_t)i * 1000003u);

		cr_assert(w > 0 && w < STEER_CORES_MAX);
	}
}

Test(steer_policy, weighted_zero_weights_fall_back)
{
	struct model m;
	int i;

	model_init(&m, STEER_WEIGHTED, 3);
	for (i = 0; i < 3; i++)
		m.cores[i].weight = 0;
	cr_assert_eq(pick(&m, 1, 0, 1, 1), STEER_NONE);
	m.cores[2].weight = 1;
	for (i = 0; i < 10; i++)
		cr_assert_eq(pick(&m, 1, 0, 1, (uint64_t)i), 2);
}

Test(steer_policy, cpu_local_picks_the_worker_pinned_to_the_cpu)
{
	uint64_t hits[STEER_CORES_MAX];
	struct model m;
	uint32_t cpu;
	int i;

	model_init(&m, STEER_CPU_LOCAL, 4);
	m.cores[0].cpu = 3;
	m.cores[1].cpu = 2;
	m.cores[2].cpu = 1;
	m.cores[3].cpu = 0;
	for (cpu = 0; cpu < 4; cpu++) {
		run(&m, cpu, 100, hits);
		cr_assert_eq(hits[3 - cpu], 100, "cpu %u", cpu);
	}
	/* Two workers on one CPU (more workers than cores): both, nobody else. */
	model_init(&m, STEER_CPU_LOCAL, 4);
	m.cores[0].cpu = 0;
	m.cores[1].cpu = 1;
	m.cores[2].cpu = 0;
	m.cores[3].cpu = 1;
	run(&m, 1, 1000, hits);
	cr_assert_eq(hits[0] + hits[2], 0);
	cr_assert(hits[1] > 400 && hits[3] > 400);
	/* The local worker drained: the other one on the same CPU takes all. */
	m.cores[3].drained = 1;
	run(&m, 1, 100, hits);
	cr_assert_eq(hits[1], 100);
	/* No live worker on this CPU: spread over the others by hash. */
	m.cores[1].drained = 1;
	run(&m, 1, 1000, hits);
	cr_assert_eq(hits[1] + hits[3], 0);
	cr_assert(hits[0] > 400 && hits[2] > 400);
	/* A CPU with no worker at all. */
	model_init(&m, STEER_CPU_LOCAL, 2);
	run(&m, 7, 1000, hits);
	cr_assert(hits[0] > 400 && hits[1] > 400);
	for (i = 0; i < 10; i++)
		cr_assert_eq(pick(&m, (uint32_t)i << 28, 7, 0, 0),
			     pick(&m, (uint32_t)i << 28, 9, 5, 5));
}

/* Worker-side helpers: counters on the worker's own line. */
Test(steer_worker, counters_move_and_never_wrap)
{
	struct steer_core c;

	memset(&c, 0, sizeof(c));
	steer_conn_opened(&c);
	steer_conn_opened(&c);
	cr_assert_eq(c.fresh, 2); /* accepted, no request yet */
	steer_req_started(&c, true);
	cr_assert_eq(c.conns, 2);
	cr_assert_eq(c.reqs, 1);
	cr_assert_eq(c.taken, 2); /* each accepted connection leaves the queued count */
	cr_assert_eq(c.fresh, 1); /* its first request started: no longer fresh */
	steer_req_ended(&c);
	steer_req_started(&c, false); /* a keep-alive connection's next request */
	cr_assert_eq(c.fresh, 1);
	steer_req_ended(&c);
	steer_req_ended(&c); /* unbalanced: stays 0 */
	steer_conn_closed(&c, true);
	cr_assert_eq(c.reqs, 0);
	cr_assert_eq(c.conns, 1);
	cr_assert_eq(c.fresh, 1);
	steer_conn_closed(&c, false); /* closed before any request */
	cr_assert_eq(c.fresh, 0);
	steer_conn_closed(&c, false);
	cr_assert_eq(c.conns, 0);
	cr_assert_eq(c.fresh, 0);
}

Test(steer_policy, least_load_counts_accepted_connections_before_their_first_request)
{
	struct model m;

	/*
	 * Worker 0 accepted 20 connections in one batch and has not read their requests yet;
	 * worker 1 has 3 requests in flight. Counting only requests and queued SYNs, worker 0
	 * looked empty and took the next connections too.
	 */
	model_init(&m, STEER_LEAST_LOAD, 2);
	m.cores[0].conns = 20;
	m.cores[0].fresh = 20;
	m.cores[1].conns = 3;
	m.cores[1].reqs = 3;
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 1);
	cr_assert_eq(pick(&m, 0, 0, 0, 1), 1);
	/* Their requests started: now worker 0 has 20 in flight, still the busier one. */
	m.cores[0].fresh = 0;
	m.cores[0].reqs = 20;
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 1);
	/* Done and closed: worker 0 is the emptier. */
	m.cores[0].reqs = 0;
	m.cores[0].conns = 0;
	cr_assert_eq(pick(&m, 0, 0, 0, 0), 0);
}

Test(steer_worker, null_line_is_a_no_op)
{
	steer_conn_opened(NULL);
	steer_conn_closed(NULL, false);
	steer_req_started(NULL, true);
	steer_req_ended(NULL);
	steer_tick(NULL, 1, 2);
	steer_resync(NULL, NULL, 0);
	cr_assert_null(steer_core(NULL, 0));
	cr_assert_eq(steer_steered(NULL, 0), 0);
	cr_assert_eq(steer_fallbacks(NULL), 0);
	cr_assert_eq(steer_set_policy(NULL, "hash"), -EINVAL);
	cr_assert_eq(steer_set_weight(NULL, 0, 1), -EINVAL);
	cr_assert_eq(steer_set_drained(NULL, 0, true), -EINVAL);
	cr_assert_eq(steer_register(NULL, 0, 0, 0), -EINVAL);
	steer_close(NULL);
}

Test(steer_worker, load_rises_with_busy_time_and_decays)
{
	struct steer_core c;
	const uint64_t tick = 100000000ULL; /* 100 ms */
	uint32_t prev;
	int i;

	memset(&c, 0, sizeof(c));
	/* Fully busy for 2 s (four time constants): close to STEER_LOAD_ONE. */
	for (i = 0; i < 20; i++) {
		prev = c.load;
		steer_tick(&c, tick, tick);
		cr_assert(c.load >= prev);
	}
	cr_assert(c.load > STEER_LOAD_ONE * 95 / 100 && c.load <= STEER_LOAD_ONE, "load %u",
		  c.load);
	cr_assert_eq(c.ticks, 20);
	/* One tick is a fraction dt/(dt+tau) = 1/6 of the way, not a jump. */
	memset(&c, 0, sizeof(c));
	steer_tick(&c, tick, tick);
	cr_assert(c.load > 150 && c.load < 190, "load %u", c.load);
	/* Idle again: halves in about tau*ln2 = 350 ms, gone within 3 s. */
	c.load = STEER_LOAD_ONE;
	for (i = 0; i < 4; i++)
		steer_tick(&c, 0, tick);
	cr_assert(c.load > 400 && c.load < 600, "load %u", c.load);
	for (i = 0; i < 26; i++)
		steer_tick(&c, 0, tick);
	cr_assert(c.load < 10, "load %u", c.load);
	/* Half busy settles at half; the tick length does not change the figure. */
	memset(&c, 0, sizeof(c));
	for (i = 0; i < 100; i++)
		steer_tick(&c, tick / 2, tick);
	cr_assert(c.load > 500 && c.load < 524, "load %u", c.load);
	for (i = 0; i < 1000; i++)
		steer_tick(&c, tick / 20, tick / 10);
	cr_assert(c.load > 500 && c.load < 524, "load %u", c.load);
	/* Busy above the interval is clamped; a huge gap forgets the past. */
	steer_tick(&c, 5 * tick, tick);
	cr_assert(c.load <= STEER_LOAD_ONE);
	steer_tick(&c, 0, 3600ULL * 1000000000ULL);
	cr_assert_eq(c.load, 0);
	steer_tick(&c, 5, 0); /* zero interval: ignored */
	cr_assert_eq(c.load, 0);
}
