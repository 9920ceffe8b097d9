/* Steering: map layouts, policy ids and the pure policy decision, shared by the BPF program and user space. */
#ifndef CORRAL_STEER_SHARED_H
#define CORRAL_STEER_SHARED_H

/*
 * This header is compiled twice: into bpf/steer.bpf.c (clang -target bpf) and into plain C
 * (proxy/steer.c, the unit tests). So it uses only the kernel's fixed-size types, no libc,
 * and every function is a static inline whose loops run at most STEER_CORES_MAX times.
 */
#include <linux/types.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/*
 * steer_for(i, n): i = 0 .. n-1. The BPF program defines it (before including this header)
 * as an open-coded iterator, which the verifier checks once however large n is; an
 * ordinary loop over up to 256 workers would be walked iteration by iteration and exceed
 * its budget. Plain C uses a plain loop.
 */
#ifndef steer_for
#define steer_for(i, n) for ((i) = 0; (i) < (int)(n); (i)++)
#endif

/*
 * STEER_OPAQUE(v): the compiler forgets what it knows about v (no instruction is emitted),
 * so it cannot turn the branch-free arithmetic below back into a branch.
 */
#ifdef __bpf__
#define STEER_OPAQUE(v) asm volatile("" : "+r"(v))
#else
#define STEER_OPAQUE(v) ((void)0)
#endif

/* Bounds. STEER_CORES_MAX must equal CFG_CORES_MAX (checked in proxy/steer.c). */
#define STEER_CORES_MAX	 256
#define STEER_LISTEN_MAX 16 /* = CFG_LISTEN_MAX: one reuseport group per listen address */
/* Socket array key: group * STEER_CORES_MAX + worker, so each group has a full row. */
#define STEER_SOCKS_MAX (STEER_LISTEN_MAX * STEER_CORES_MAX)
/* A weight is 16 bits: the sum (at most 256 * 65535 < 2^24 < STEER_WPRIME) cannot overflow. */
#define STEER_WEIGHT_MAX 65535
/* Bumped whenever a map layout below changes: a pinned map of another ABI is replaced. */
#define STEER_ABI 2

enum steer_policy {
	STEER_HASH = 0,	    /* the kernel's 4-tuple hash over the non-drained workers */
	STEER_ROUND_ROBIN,  /* a shared counter over the non-drained workers */
	STEER_LEAST_CONN,   /* fewest connections held or queued */
	STEER_LEAST_LOAD,   /* lowest in-flight requests and new connections plus busy time */
	STEER_POWER_OF_TWO, /* two random draws (with replacement), the lighter (least-load) wins */
	STEER_WEIGHTED,	    /* deterministic, proportional to per-worker weights */
	STEER_CPU_LOCAL,    /* the worker pinned to the CPU that processed the SYN */
	STEER_POLICY_N,
};

/* Load figure: the busy fraction of a worker, decayed, in units of 1/STEER_LOAD_ONE. */
#define STEER_LOAD_ONE 1024
/*
 * In the least-load score one in-flight request, or one connection queued for the worker,
 * costs 1/8 of a fully busy core: a worker that is 100% busy on two heavy requests
 * (2*128 + 1024) looks busier than one with five cheap ones at 20% (5*128 + 205).
 */
#define STEER_REQ_COST 128
/* Time constant of the load decay in steer_tick(): recent half second dominates. */
#define STEER_LOAD_TAU_NS 500000000ULL

/*
 * One worker's line in the per-core array. CROSS-THREAD and CROSS-PROCESS: the array is
 * an mmapped BPF map. Each field has exactly one writer, which stores with relaxed
 * atomics (no read-modify-write across writers): weight, drained and cpu are written by
 * the main thread; conns, reqs, load, ticks, taken and fresh by the worker itself. The exceptions:
 * drained: the main thread stores 1 (drain) or 3 (undrain asked), and the worker turns 3
 * into 0 with a compare-exchange once its listener is back, so that no policy picks it
 * before; steered: the BPF program adds 1 (atomic add, from whichever CPU runs it) for each
 * connection it places on the worker, and nobody else writes it. 64 bytes so that two
 * workers never share a cache line.
 */
struct steer_core {
	__u32 weight;  /* weighted policy; 0 = never chosen by it */
	__u32 drained; /* bit 0 set (1, or 3: undrain pending) = no policy chooses it */
	__u32 conns;   /* active client connections */
	__u32 reqs;    /* requests in flight */
	__u32 load;    /* decayed busy fraction, 0..STEER_LOAD_ONE */
	__u32 cpu;     /* CPU the worker is pinned to (cpu-local) */
	__u64 ticks;   /* steer_tick() calls: shows that the worker is alive */
	/*
	 * Connections placed on the worker by the program (wrapping) and the number of them the
	 * worker has taken (accepted, wrapping, resynchronised with its accept queue at each
	 * tick). steered - taken is what the policies count as queued: a connection weighs on its
	 * worker from its SYN on, not only once the worker has reached its accept queue.
	 */
	__u32 steered;
	__u32 taken;
	/*
	 * Connections the worker has accepted whose first request has not started (nor have
	 * they closed): read, TLS handshake or PROXY header still to come. Between the accept
	 * (taken) and the first request (reqs) a new connection was in no figure at all.
	 */
	__u32 fresh;
	__u32 pad32;
	__u64 pad[2];
} __attribute__((aligned(64)));

_Static_assert(sizeof(struct steer_core) == 64, "one cache line per core");

/*
 * The per-core map holds ONE element, this array, so that the program can index it with a
 * bounded variable and the policy function below takes a plain pointer in both worlds.
 * Worker i's line is at byte offset i * 64 of the mmapped map, as in a per-core array.
 */
struct steer_cores {
	struct steer_core core[STEER_CORES_MAX];
};

/*
 * The control map's single element. Written by the daemon's main thread (mmapped, relaxed
 * stores, then generation+1) or as a whole by tools; read by the program on every SYN.
 */
struct steer_ctl {
	__u32 abi;	  /* STEER_ABI */
	__u32 policy;	  /* enum steer_policy; unknown = fallback to the kernel hash */
	__u32 cores_n;	  /* workers 0..cores_n-1 exist */
	__u32 groups_n;	  /* listen groups 0..groups_n-1 exist */
	__u32 generation; /* +1 on every change, for tools */
	__u32 owner_pid;  /* the daemon that made or adopted the pins; while it lives, no other
			   * process adopts them (a newer one replaces them with its own) */
	__u16 group_port[STEER_LISTEN_MAX]; /* listening port per group (host order), 0 = any */
	/* Written by the program on every SYN: its own cache line. */
	__u64 seq __attribute__((aligned(64)));
};

/* Why a decision fell back to the kernel's hash. */
enum steer_fallback {
	STEER_FB_MAP = 0, /* a map lookup failed */
	STEER_FB_POLICY,  /* unknown policy, no worker, or every worker drained / weight 0 */
	STEER_FB_SELECT,  /* the chosen worker's socket slot is empty or in no matching group */
	STEER_FB_N,
};

/* Counters kept by the program: a per-CPU map of one element, summed by user space. */
struct steer_stats {
	/*
	 * Connections (or migrations) sent to each worker. Under SYN cookies the program runs
	 * for the SYN and again for the ACK, so a connection can count twice there.
	 */
	__u64 steered[STEER_CORES_MAX];
	__u64 migrated; /* of which: queued connections moved off a listener */
	__u64 fallback[STEER_FB_N];
};

/* What one decision knows besides the maps. */
struct steer_in {
	__u32 hash; /* the kernel's 4-tuple hash (ctx->hash) */
	__u32 cpu;  /* the CPU running the program, which processed the SYN */
	__u32 rnd;  /* random bits (power-of-two) */
	__u32 pad;
	__u64 seq; /* the shared sequence before this decision (round-robin, weighted, ties) */
};

#define STEER_NONE (-1)

/* Loads that another thread or the kernel may be writing concurrently. */
#define STEER_READ(x) (*(const volatile __typeof__(x) *)&(x))

/*
 * (Weighted) The position in the cycle is seq % sum multiplied by this prime, which is
 * larger than any possible sum, so it walks a permutation of the cycle: every full cycle
 * of `sum` consecutive picks is exactly proportional, and a worker's share is scattered
 * over the cycle instead of sent in one burst (weights 100:100 give runs of a few picks,
 * where a plain prefix-sum walk would give runs of 100).
 */
#define STEER_WPRIME 16777619ULL

/* How much of the cycle a worker takes in each counting mode. */
enum steer_mass {
	STEER_MASS_ONE,	   /* every non-drained worker counts 1 */
	STEER_MASS_WEIGHT, /* non-drained workers count their weight */
	STEER_MASS_CPU,	   /* non-drained workers pinned to in->cpu count 1 */
};

static __always_inline __u32 steer_clamp_n(const struct steer_ctl *ctl)
{
	__u32 n = STEER_READ(ctl->cores_n);

	return n > STEER_CORES_MAX ? STEER_CORES_MAX : n;
}

/*
 * The helpers below are branch-free on purpose: a value that the verifier sees as
 * "0 or 1, unknown" stays one state, where a branch would give it two constants and
 * multiply the states it must check per iteration. So drained counts by its bit 0 (the
 * daemon writes 0 or 1) and a weight by its low 16 bits (STEER_WEIGHT_MAX).
 */
static __always_inline __u32 steer_live(const struct steer_core *c)
{
	return 1 - (STEER_READ(c->drained) & 1);
}

static __always_inline __u32 steer_eq(__u32 a, __u32 b)
{
	__u64 x = a ^ b, y;

	y = x | -x; /* bit 63 set iff x != 0 */
	STEER_OPAQUE(y);
	return 1 - (__u32)(y >> 63);
}

static __always_inline __u32 steer_mass(const struct steer_core *c, enum steer_mass mode, __u32 cpu)
{
	if (mode == STEER_MASS_ONE)
		return steer_live(c);
	if (mode == STEER_MASS_CPU)
		return steer_live(c) * steer_eq(STEER_READ(c->cpu), cpu);
	return steer_live(c) * (STEER_READ(c->weight) & STEER_WEIGHT_MAX);
}

static __always_inline __u64 steer_mass_total(const struct steer_core *cores, __u32 n,
					      enum steer_mass mode, __u32 cpu)
{
	__u64 total = 0;
	int i;

	steer_for(i, n) {
		total += steer_mass(&cores[i & (STEER_CORES_MAX - 1)], mode, cpu);
	}
	return total;
}

/* The worker whose share of the cycle holds position k (< total), or STEER_NONE. */
static __always_inline int steer_nth(const struct steer_core *cores, __u32 n, enum steer_mass mode,
				     __u32 cpu, __u64 k)
{
	int i, found = STEER_NONE;
	__u32 m;

	steer_for(i, n) {
		i &= STEER_CORES_MAX - 1; /* no-op (i < n <= 256), a bound the verifier sees */
		m = steer_mass(&cores[i], mode, cpu);
		if (k < m) {
			found = i;
			break;
		}
		k -= m;
	}
	return found;
}

/* The kernel's reciprocal_scale(): maps a 32-bit hash onto [0, n) as reuseport does. */
static __always_inline __u64 steer_scale(__u32 hash, __u64 n)
{
	return ((__u64)hash * n) >> 32;
}

/*
 * Connections the program placed on the worker that the worker has not taken yet: its
 * accept queue (and handshakes under way), known from the SYN on. Without it every SYN of a
 * burst - 32 clients reconnecting at once after their responses - saw the same figures
 * (conns and reqs move only once the worker accepts and parses) and all went to the same
 * worker. Branch-free: a negative difference (connections the kernel's hash placed, which
 * the program did not count, until the worker's next resync) counts 0.
 */
static __always_inline __u64 steer_queued(const struct steer_core *c)
{
	__u32 d = STEER_READ(c->steered) - STEER_READ(c->taken);

	return (__u64)d * (1 - (d >> 31));
}

/*
 * least-load score: in-flight requests, connections queued and accepted connections not yet
 * at their first request (new work the worker has not reached), plus the busy fraction.
 */
static __always_inline __u64 steer_score(const struct steer_core *c)
{
	return ((__u64)STEER_READ(c->reqs) + steer_queued(c) + STEER_READ(c->fresh)) *
		       STEER_REQ_COST +
	       STEER_READ(c->load);
}

/* least-conn count: connections held and connections queued. */
static __always_inline __u64 steer_held(const struct steer_core *c)
{
	return (__u64)STEER_READ(c->conns) + steer_queued(c);
}

/*
 * least-conn / least-load: one pass starting at seq % n, so that ties rotate over the
 * tied workers instead of always falling on worker 0.
 */
static __always_inline int steer_least(const struct steer_core *cores, __u32 n, __u64 seq,
				       int by_load)
{
	__u64 best_v = ~0ULL, v;
	int best = STEER_NONE, j;
	__u32 start, i;

	if (n == 0)
		return STEER_NONE;
	start = (__u32)(seq % n);
	steer_for(j, n) {
		i = start + (__u32)j;
		if (i >= n)
			i -= n;
		i &= STEER_CORES_MAX - 1; /* no-op (i < n <= 256), a bound the verifier sees */
		if (steer_live(&cores[i])) {
			v = by_load ? steer_score(&cores[i]) : steer_held(&cores[i]);
			if (v < best_v) {
				best_v = v;
				best = (int)i;
			}
		}
	}
	return best;
}

/*
 * The policy decision: a worker index in [0, ctl->cores_n), or STEER_NONE when the kernel's
 * hash must decide (unknown policy, no worker, all drained). Pure: reads only its inputs
 * (the maps' current contents and *in), writes nothing.
 */
static __always_inline int steer_pick(const struct steer_ctl *ctl, const struct steer_core *cores,
				      const struct steer_in *in)
{
	__u32 n = steer_clamp_n(ctl);
	__u64 total, k, k2;
	int a, b;

	switch (STEER_READ(ctl->policy)) {
	case STEER_HASH:
		total = steer_mass_total(cores, n, STEER_MASS_ONE, 0);
		if (!total)
			return STEER_NONE;
		return steer_nth(cores, n, STEER_MASS_ONE, 0, steer_scale(in->hash, total));
	case STEER_ROUND_ROBIN:
		total = steer_mass_total(cores, n, STEER_MASS_ONE, 0);
		if (!total)
			return STEER_NONE;
		return steer_nth(cores, n, STEER_MASS_ONE, 0, in->seq % total);
	case STEER_LEAST_CONN:
		return steer_least(cores, n, in->seq, 0);
	case STEER_LEAST_LOAD:
		return steer_least(cores, n, in->seq, 1);
	case STEER_POWER_OF_TWO:
		total = steer_mass_total(cores, n, STEER_MASS_ONE, 0);
		if (!total)
			return STEER_NONE;
		k = (in->rnd >> 16) % total;
		a = steer_nth(cores, n, STEER_MASS_ONE, 0, k);
		if (total == 1 || a < 0)
			return a;
		/* A second, different worker: k2 = k + 1 .. k + total - 1 (mod total). */
		k2 = (k + 1 + (in->rnd & 0xffff) % (total - 1)) % total;
		b = steer_nth(cores, n, STEER_MASS_ONE, 0, k2);
		if (b < 0)
			return a;
		a &= STEER_CORES_MAX - 1;
		b &= STEER_CORES_MAX - 1;
		/*
		 * A tie keeps a, which is already the random one of the pair. It is NOT broken by
		 * fewer connections: conns counts accepted connections only, so a worker that is
		 * slow to accept - the busy one - looks emptier while its queue fills, and every
		 * tie (frequent with two workers, where the pair is always both) sent the next
		 * connections to it as well: a herd and a long tail.
		 */
		if (steer_score(&cores[b]) < steer_score(&cores[a]))
			return b;
		return a;
	case STEER_WEIGHTED:
		total = steer_mass_total(cores, n, STEER_MASS_WEIGHT, 0);
		if (!total)
			return STEER_NONE;
		k = (in->seq % total) * (STEER_WPRIME % total) % total;
		return steer_nth(cores, n, STEER_MASS_WEIGHT, 0, k);
	case STEER_CPU_LOCAL:
		total = steer_mass_total(cores, n, STEER_MASS_CPU, in->cpu);
		if (total)
			return steer_nth(cores, n, STEER_MASS_CPU, in->cpu,
					 steer_scale(in->hash, total));
		/* No live worker on this CPU: spread by the hash like the kernel would. */
		total = steer_mass_total(cores, n, STEER_MASS_ONE, 0);
		if (!total)
			return STEER_NONE;
		return steer_nth(cores, n, STEER_MASS_ONE, 0, steer_scale(in->hash, total));
	default:
		return STEER_NONE;
	}
}

/* Whether a policy reads in->seq (the program then bumps the shared counter). */
static __always_inline int steer_policy_uses_seq(__u32 policy)
{
	return policy == STEER_ROUND_ROBIN || policy == STEER_WEIGHTED ||
	       policy == STEER_LEAST_CONN || policy == STEER_LEAST_LOAD;
}

#ifndef __bpf__
/* Policy names as written in the config and by corralctl. NULL for an unknown id. */
static inline const char *steer_policy_str(__u32 policy)
{
	static const char *const names[STEER_POLICY_N] = {
		[STEER_HASH] = "hash",
		[STEER_ROUND_ROBIN] = "round-robin",
		[STEER_LEAST_CONN] = "least-conn",
		[STEER_LEAST_LOAD] = "least-load",
		[STEER_POWER_OF_TWO] = "power-of-two",
		[STEER_WEIGHTED] = "weighted",
		[STEER_CPU_LOCAL] = "cpu-local",
	};

	return policy < STEER_POLICY_N ? names[policy] : 0;
}

/* The policy id for a name, or -1. */
static inline int steer_policy_parse(const char *name)
{
	__u32 p, i;
	const char *s;

	for (p = 0; p < STEER_POLICY_N; p++) {
		s = steer_policy_str(p);
		for (i = 0; s[i] && s[i] == name[i]; i++)
			;
		if (!s[i] && !name[i])
			return (int)p;
	}
	return -1;
}
#endif

#endif
