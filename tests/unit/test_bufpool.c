/* Unit tests of the receive-buffer pool (bufpool.c): bounded ring fill, LIFO reuse, counting. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>

#include "bufpool.h"

#define N 64

static uint32_t ids[N];

/* Simulates the kernel: takes the ring's entries in the order they were posted. */
struct kring {
	uint32_t q[N], head, tail;
};

static void post(struct kring *k, const uint32_t *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		k->q[k->tail++ % N] = v[i];
}

static uint32_t take(struct kring *k, struct bufpool *p)
{
	uint32_t id;

	cr_assert(k->head != k->tail, "kernel ring empty");
	id = k->q[k->head++ % N];
	cr_assert_eq(bufpool_taken(p, id), 0);
	return id;
}

static void fill(struct kring *k, struct bufpool *p)
{
	post(k, ids, bufpool_refill(p, ids, N));
}

static void check_counts(struct bufpool *p, struct kring *k)
{
	cr_assert_eq(p->depth + p->in_ring + p->out, p->n);
	cr_assert_eq(p->in_ring, k->tail - k->head);
}

Test(bufpool, ring_fill_is_bounded_not_the_pool)
{
	struct bufpool p;
	struct kring k = { 0 };

	cr_assert_eq(bufpool_init(&p, N, 8), 0);
	fill(&k, &p);
	cr_assert_eq(p.in_ring, 8);
	cr_assert_eq(p.depth, N - 8);
	/* Lowest ids first. */
	for (uint32_t i = 0; i < 8; i++)
		cr_assert_eq(k.q[i], i);
	/* A full ring posts nothing more. */
	cr_assert_eq(bufpool_refill(&p, ids, N), 0);
	check_counts(&p, &k);
	bufpool_free(&p);
}

Test(bufpool, min_above_pool_is_the_pool)
{
	struct bufpool p;

	cr_assert_eq(bufpool_init(&p, 16, 32), 0);
	cr_assert_eq(bufpool_refill(&p, ids, N), 16);
	cr_assert_eq(bufpool_refill(&p, ids, N), 0);
	bufpool_free(&p);
	cr_assert_eq(bufpool_init(&p, 0, 8), -EINVAL);
	cr_assert_eq(bufpool_init(&p, 8, 0), -EINVAL);
}

Test(bufpool, refill_takes_the_most_recently_freed_first)
{
	struct bufpool p;
	struct kring k = { 0 };
	uint32_t a, b, c;

	cr_assert_eq(bufpool_init(&p, N, 4), 0);
	fill(&k, &p);
	a = take(&k, &p);
	b = take(&k, &p);
	c = take(&k, &p);
	cr_assert_eq(bufpool_put(&p, a), 0);
	cr_assert_eq(bufpool_put(&p, c), 0);
	cr_assert_eq(bufpool_put(&p, b), 0);
	/* The ring wants 3 more: b (freed last), then c, then a; no cold buffer. */
	cr_assert_eq(bufpool_refill(&p, ids, N), 3);
	cr_assert_eq(ids[0], b);
	cr_assert_eq(ids[1], c);
	cr_assert_eq(ids[2], a);
	bufpool_free(&p);
}

Test(bufpool, sustained_load_touches_only_the_hot_set)
{
	struct bufpool p;
	struct kring k = { 0 };
	bool touched[N] = { false };
	uint32_t n_touched = 0;

	cr_assert_eq(bufpool_init(&p, N, 4), 0);
	fill(&k, &p);
	/* 10,000 receives, two held at a time: a FIFO ring of the whole pool would touch all 64. */
	for (int i = 0; i < 10000; i++) {
		uint32_t x = take(&k, &p), y = take(&k, &p);

		touched[x] = touched[y] = true;
		cr_assert_eq(bufpool_put(&p, y), 0);
		cr_assert_eq(bufpool_put(&p, x), 0);
		fill(&k, &p);
		bufpool_pass_end(&p);
		check_counts(&p, &k);
	}
	for (uint32_t i = 0; i < N; i++)
		n_touched += touched[i];
	cr_assert_leq(n_touched, 4 + 2, "touched %u buffers", n_touched);
	cr_assert_eq(p.taken_total, 20000);
	cr_assert_eq(p.returned_total, 20000);
	bufpool_free(&p);
}

Test(bufpool, every_buffer_returned_exactly_once)
{
	struct bufpool p;
	struct kring k = { 0 };
	uint32_t a;

	cr_assert_eq(bufpool_init(&p, N, 4), 0);
	fill(&k, &p);
	/* Not taken yet: in the ring, cannot be given back. */
	cr_assert_eq(bufpool_put(&p, k.q[k.head]), -EINVAL);
	a = take(&k, &p);
	/* Taken twice: the kernel cannot hand out a buffer that is not in the ring. */
	cr_assert_eq(bufpool_taken(&p, a), -EINVAL);
	cr_assert_eq(bufpool_put(&p, a), 0);
	cr_assert_eq(bufpool_put(&p, a), -EINVAL, "double return accepted");
	/* Never posted, out of range. */
	cr_assert_eq(bufpool_taken(&p, N - 1), -EINVAL);
	cr_assert_eq(bufpool_put(&p, N - 1), -EINVAL);
	cr_assert_eq(bufpool_taken(&p, N), -EINVAL);
	cr_assert_eq(bufpool_put(&p, N), -EINVAL);
	cr_assert_eq(p.out, 0);
	cr_assert_eq(p.depth + p.in_ring, N);
	bufpool_free(&p);
}

Test(bufpool, exhaustion_and_recovery)
{
	struct bufpool p;
	struct kring k = { 0 };
	uint32_t held[N], nh = 0;

	cr_assert_eq(bufpool_init(&p, N, 4), 0);
	fill(&k, &p);
	/* Every buffer out: the ring runs dry each time, each -ENOBUFS grows the fill by one. */
	while (nh < N) {
		while (k.head != k.tail)
			held[nh++] = take(&k, &p);
		if (nh < N) {
			uint32_t want = p.want, miss = 5;

			for (uint32_t i = 0; i < miss; i++)
				bufpool_nobufs(&p);
			cr_assert_eq(p.want, want, "grows at the pass end");
			bufpool_pass_end(&p);
			cr_assert_eq(p.want, want + miss > N ? N : want + miss);
		}
		fill(&k, &p);
	}
	cr_assert_eq(p.depth, 0);
	cr_assert_eq(p.out, N);
	cr_assert_eq(bufpool_refill(&p, ids, N), 0, "nothing left to post");
	/* Recovery: the buffers given back refill the ring, most recently freed first. */
	for (uint32_t i = 0; i < nh; i++)
		cr_assert_eq(bufpool_put(&p, held[i]), 0);
	fill(&k, &p);
	cr_assert_eq(p.in_ring, p.want);
	cr_assert_eq(k.q[(k.tail - p.want) % N], held[nh - 1]);
	check_counts(&p, &k);
	/* However many receives miss, want never exceeds the pool. */
	for (int i = 0; i < 3 * N; i++)
		bufpool_nobufs(&p);
	bufpool_pass_end(&p);
	cr_assert_eq(p.want, N, "want never exceeds the pool");
	fill(&k, &p);
	cr_assert_eq(p.in_ring, N);
	check_counts(&p, &k);
	bufpool_free(&p);
}

Test(bufpool, window_shrinks_an_idle_ring_and_keeps_a_dry_one)
{
	struct bufpool p;
	struct kring k = { 0 };

	cr_assert_eq(bufpool_init(&p, N, 4), 0);
	for (int i = 0; i < N; i++)
		bufpool_nobufs(&p);
	bufpool_pass_end(&p);
	cr_assert_eq(p.want, N);
	/* The window in which it ran dry keeps the fill. */
	bufpool_window(&p);
	cr_assert_eq(p.want, N);
	/* A window whose busiest pass took 5: twice that. */
	fill(&k, &p);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(bufpool_put(&p, take(&k, &p)), 0);
	bufpool_pass_end(&p);
	bufpool_window(&p);
	cr_assert_eq(p.want, 10);
	/* A quiet window: back to the minimum. */
	bufpool_window(&p);
	cr_assert_eq(p.want, 4);
	/* A pass that took the whole fill without a miss does not grow it (no margin on top). */
	fill(&k, &p);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(bufpool_put(&p, take(&k, &p)), 0);
	bufpool_pass_end(&p);
	bufpool_window(&p);
	cr_assert_eq(p.want, 4);
	/* Misses do, by one each, at the end of their pass. */
	for (int i = 0; i < 3; i++)
		bufpool_nobufs(&p);
	bufpool_pass_end(&p);
	cr_assert_eq(p.want, 7);
	bufpool_free(&p);
}

Test(bufpool, release_names_only_buffers_untouched_for_a_window)
{
	struct bufpool p;
	struct kring k = { 0 };
	uint32_t held[N], nh = 0;
	bool released[N] = { false };
	uint32_t r;

	cr_assert_eq(bufpool_init(&p, N, 4), 0);
	/* Nothing was ever touched: nothing to release. */
	cr_assert_eq(bufpool_release(&p, ids, N), 0);
	/* A burst takes 40 buffers, then gives them back. */
	p.want = 40;
	fill(&k, &p);
	while (k.head != k.tail)
		held[nh++] = take(&k, &p);
	p.want = 4;
	for (uint32_t i = 0; i < nh; i++)
		cr_assert_eq(bufpool_put(&p, held[i]), 0);
	/* The window of the burst itself: it touched them all. */
	cr_assert_eq(bufpool_release(&p, ids, N), 0);
	/* A quiet window using 4 (the ring): the other 36 of the burst are cold. */
	fill(&k, &p);
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(bufpool_put(&p, take(&k, &p)), 0);
		fill(&k, &p);
	}
	r = bufpool_release(&p, ids, N);
	cr_assert_eq(r, 36);
	for (uint32_t i = 0; i < r; i++) {
		cr_assert_eq(p.state[ids[i]], BP_FREE);
		cr_assert(!released[ids[i]]);
		released[ids[i]] = true;
	}
	/* Released once: not again. */
	cr_assert_eq(bufpool_release(&p, ids, N), 0);
	/* A burst that reaches into the released part makes it dirty again. */
	p.want = 20;
	fill(&k, &p);
	while (k.head != k.tail)
		cr_assert_eq(bufpool_put(&p, take(&k, &p)), 0);
	p.want = 4;
	fill(&k, &p);
	cr_assert_eq(bufpool_release(&p, ids, N), 0, "touched this window");
	r = bufpool_release(&p, ids, N);
	cr_assert_eq(r, 16, "the 16 of the second burst beyond the ring, released %u", r);
	bufpool_free(&p);
}

Test(bufpool, release_respects_max)
{
	struct bufpool p;
	struct kring k = { 0 };
	uint32_t held[N], nh = 0;

	cr_assert_eq(bufpool_init(&p, N, 4), 0);
	p.want = 32;
	fill(&k, &p);
	while (k.head != k.tail)
		held[nh++] = take(&k, &p);
	for (uint32_t i = 0; i < nh; i++)
		cr_assert_eq(bufpool_put(&p, held[i]), 0);
	cr_assert_eq(bufpool_release(&p, ids, N), 0);
	/* Quiet window, nothing popped: all 32 are cold; take them 10 at a time. */
	cr_assert_eq(bufpool_release(&p, ids, 10), 10);
	cr_assert_eq(bufpool_release(&p, ids, 10), 10);
	cr_assert_eq(bufpool_release(&p, ids, N), 12);
	cr_assert_eq(bufpool_release(&p, ids, N), 0);
	cr_assert_eq(p.released_total, 32);
	bufpool_free(&p);
}

Test(bufpool, take_gives_a_free_buffer_out_of_the_ring_and_put_takes_it_back)
{
	struct bufpool p;
	struct kring k = { 0 };
	int a, b;

	cr_assert_eq(bufpool_init(&p, 4, 2), 0);
	fill(&k, &p); /* two in the ring, two free */
	a = bufpool_take(&p);
	b = bufpool_take(&p);
	cr_assert(a >= 0 && b >= 0 && a != b);
	cr_assert_eq(p.state[a], BP_OUT);
	cr_assert_eq(bufpool_take(&p), -ENOBUFS, "the ring's buffers are not free");
	check_counts(&p, &k);
	cr_assert_eq(bufpool_taken(&p, (uint32_t)a), -EINVAL, "a taken buffer is not in the ring");
	cr_assert_eq(bufpool_put(&p, (uint32_t)a), 0);
	cr_assert_eq(bufpool_put(&p, (uint32_t)a), -EINVAL, "returned twice");
	cr_assert_eq(bufpool_take(&p), a, "the most recently freed comes first");
	cr_assert_eq(bufpool_put(&p, (uint32_t)a), 0);
	cr_assert_eq(bufpool_put(&p, (uint32_t)b), 0);
	cr_assert_eq(p.taken_total, p.returned_total);
	bufpool_free(&p);
}
