/* The receive-buffer pool: a bounded ring fill fed from a LIFO of free buffers (bufpool.h). */
#include <errno.h>
#include <stdlib.h>
#include "bufpool.h"

int bufpool_init(struct bufpool *p, uint32_t n, uint32_t min)
{
	*p = (struct bufpool){ .n = n };
	if (n == 0 || min == 0)
		return -EINVAL;
	p->stack = calloc(n, sizeof(*p->stack));
	p->state = calloc(n, sizeof(*p->state));
	if (!p->stack || !p->state) {
		bufpool_free(p);
		return -ENOMEM;
	}
	/* Id 0 on top: the first buffers used are the lowest ids (one contiguous warm range). */
	for (uint32_t i = 0; i < n; i++)
		p->stack[i] = n - 1 - i;
	p->depth = n;
	p->depth_low = n;
	p->clean = n; /* never touched: nothing resident */
	p->min = min < n ? min : n;
	p->want = p->min;
	return 0;
}

void bufpool_free(struct bufpool *p)
{
	free(p->stack);
	free(p->state);
	p->stack = NULL;
	p->state = NULL;
}

uint32_t bufpool_refill(struct bufpool *p, uint32_t *ids, uint32_t max)
{
	uint32_t k = 0;

	while (k < max && p->in_ring < p->want && p->depth > 0) {
		uint32_t id = p->stack[--p->depth];

		p->state[id] = BP_RING;
		p->in_ring++;
		ids[k++] = id;
	}
	if (p->depth < p->depth_low)
		p->depth_low = p->depth;
	if (p->depth < p->clean)
		p->clean = p->depth;
	return k;
}

int bufpool_taken(struct bufpool *p, uint32_t id)
{
	if (id >= p->n || p->state[id] != BP_RING || p->in_ring == 0)
		return -EINVAL;
	p->state[id] = BP_OUT;
	p->in_ring--;
	p->out++;
	p->pass_taken++;
	p->taken_total++;
	return 0;
}

int bufpool_take(struct bufpool *p)
{
	uint32_t id;

	if (p->depth == 0)
		return -ENOBUFS;
	id = p->stack[--p->depth];
	p->state[id] = BP_OUT;
	p->out++;
	p->taken_total++;
	if (p->depth < p->depth_low)
		p->depth_low = p->depth;
	if (p->depth < p->clean)
		p->clean = p->depth;
	return (int)id;
}

int bufpool_put(struct bufpool *p, uint32_t id)
{
	if (id >= p->n || p->state[id] != BP_OUT || p->out == 0 || p->depth >= p->n)
		return -EINVAL;
	p->state[id] = BP_FREE;
	p->out--;
	p->stack[p->depth++] = id;
	p->returned_total++;
	return 0;
}

void bufpool_nobufs(struct bufpool *p)
{
	p->nobufs++;
	p->pass_nobufs++;
	p->nobufs_total++;
}

void bufpool_pass_end(struct bufpool *p)
{
	if (p->pass_taken > p->peak)
		p->peak = p->pass_taken;
	p->pass_taken = 0;
	/*
	 * Each receive that found the ring empty is one buffer the pass lacked: grow by that
	 * much, not by doubling per miss (a wave of 200 new connections would otherwise stock
	 * the whole pool in one pass and the FIFO would touch all of it).
	 */
	if (p->pass_nobufs) {
		p->want = p->n - p->want > p->pass_nobufs ? p->want + p->pass_nobufs : p->n;
		p->pass_nobufs = 0;
	}
}

void bufpool_window(struct bufpool *p)
{
	uint32_t w = p->peak > p->n / 2 ? p->n : p->peak * 2;

	if (w < p->min)
		w = p->min;
	/*
	 * Only shrinks: growth comes from the receives that found the ring empty, which measure
	 * the shortfall exactly (a margin on top of a burst would only widen the set of buffers
	 * the FIFO touches). A window in which the ring ran dry keeps what it grew to.
	 */
	if (w < p->want && !p->nobufs)
		p->want = w;
	p->peak = 0;
	p->nobufs = 0;
}

uint32_t bufpool_release(struct bufpool *p, uint32_t *ids, uint32_t max)
{
	uint32_t k = 0;

	/* stack[clean..depth_low) stayed in the LIFO, untouched, since the last call. */
	while (k < max && p->clean < p->depth_low)
		ids[k++] = p->stack[p->clean++];
	p->released_total += k;
	if (p->clean >= p->depth_low)
		p->depth_low = p->depth;
	return k;
}
