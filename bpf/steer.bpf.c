/* sk_reuseport program: picks the worker listener for each new (or migrating) connection. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * Open-coded numeric iterator (kernel 6.4+; libbpf 1.1 lacks the declarations). The
 * verifier checks the body until its states converge instead of unrolling every
 * iteration, so loops over all 256 workers stay far below the instruction budget.
 */
struct bpf_iter_num {
	__u64 __opaque[1];
} __attribute__((aligned(8)));

extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __weak __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __weak __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __weak __ksym;

#define steer_for(i, n)                                                                            \
	for (struct bpf_iter_num ___it __attribute__((aligned(8), cleanup(bpf_iter_num_destroy))), \
	     *___p __attribute__((unused)) = (bpf_iter_num_new(&___it, 0, (int)(n)),               \
					      (void)bpf_iter_num_destroy, (void *)0);              \
	     ({                                                                                    \
		     const int *___t = bpf_iter_num_next(&___it);                                  \
		     (___t && ((i) = *___t, (i) >= 0 && (i) < (int)(n)));                          \
	     });)

#include "steer_shared.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * Every map is pinned by name under the pin root the loader gives
 * (/sys/fs/bpf/corral/<instance>/) so bpftool and corralctl can inspect them.
 * ctl and cores are mmapped by the daemon: it changes them without syscalls. The program
 * writes only ctl->seq, each chosen worker's steered count and its stats.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct steer_ctl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct steer_cores);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cores SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

/* Key: group * STEER_CORES_MAX + worker. Value: the listener (fd in, cookie out). */
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, STEER_SOCKS_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socks SEC(".maps");

static __always_inline int fallback(struct steer_stats *st, enum steer_fallback why)
{
	__sync_fetch_and_add(&st->fallback[why], 1);
	/* SK_PASS with nothing selected: the kernel's own hash picks. Never SK_DROP (reset). */
	return SK_PASS;
}

/*
 * Each listen address is its own reuseport group and this program is attached to all of
 * them. A socket of another group is refused by bpf_sk_select_reuseport (-EBADFD), so try
 * the groups whose port matches the listener the lookup found, in a bounded loop: with one
 * listen address (the usual case) that is one call.
 */
static __always_inline int select_worker(struct sk_reuseport_md *ctx, const struct steer_ctl *c,
					 __u32 w)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 groups = STEER_READ(c->groups_n), port = 0, g, key;
	__u16 gport;

	if (sk)
		port = sk->src_port;
	for (g = 0; g < STEER_LISTEN_MAX; g++) {
		if (g >= groups)
			break;
		gport = STEER_READ(c->group_port[g]);
		if (gport && port && gport != port)
			continue;
		key = g * STEER_CORES_MAX + w;
		if (bpf_sk_select_reuseport(ctx, &socks, &key, 0) == 0)
			return 0;
	}
	return -1;
}

SEC("sk_reuseport/migrate")
int steer_select(struct sk_reuseport_md *ctx)
{
	struct steer_in in = {};
	struct steer_stats *st;
	struct steer_cores *cs;
	struct steer_ctl *c;
	__u32 zero = 0, w;
	int pick;

	st = bpf_map_lookup_elem(&stats, &zero);
	if (!st)
		return SK_PASS;
	c = bpf_map_lookup_elem(&ctl, &zero);
	cs = bpf_map_lookup_elem(&cores, &zero);
	if (!c || !cs)
		return fallback(st, STEER_FB_MAP);

	in.hash = ctx->hash;
	in.cpu = bpf_get_smp_processor_id();
	in.rnd = bpf_get_prandom_u32();
	if (steer_policy_uses_seq(STEER_READ(c->policy)))
		in.seq = __sync_fetch_and_add(&c->seq, 1);

	/*
	 * A migrating connection comes from a listener being shut down: its worker is drained
	 * (skipped by every policy) or gone (its slot is empty, select fails, the kernel's hash
	 * picks among the remaining listeners).
	 */
	pick = steer_pick(c, cs->core, &in);
	if (pick < 0)
		return fallback(st, STEER_FB_POLICY);
	w = (__u32)pick & (STEER_CORES_MAX - 1);
	if (select_worker(ctx, c, w))
		return fallback(st, STEER_FB_SELECT);
	__sync_fetch_and_add(&st->steered[w], 1);
	/* The worker's queued count (steer_queued): this connection weighs on it from now on. */
	__sync_fetch_and_add(&cs->core[w].steered, 1);
	if (ctx->migrating_sk)
		__sync_fetch_and_add(&st->migrated, 1);
	return SK_PASS;
}
