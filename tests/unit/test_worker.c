/*
 * Unit tests of the worker's pure helpers: the user_data codec, and the exchange-slot pool
 * (xslot_get / xslot_put): bounded, LIFO, handed out cleared, and pages of slots never used
 * are never touched.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "worker.h"

Test(worker, ud_unpack_returns_what_ud_pack_packed)
{
	const uint32_t idxs[] = { 0, 1, 12345, UD_IDX_MASK - 1, UD_IDX_MASK };
	const uint32_t gens[] = { 0, 1, 0xdeadbeef, UINT32_MAX };

	for (int op = OP_NONE; op <= OP_LOG_WRITE; op++)
		for (size_t i = 0; i < sizeof(idxs) / sizeof(idxs[0]); i++)
			for (size_t g = 0; g < sizeof(gens) / sizeof(gens[0]); g++) {
				struct ud u = ud_unpack(ud_pack((enum wop)op, idxs[i], gens[g]));

				cr_assert_eq(u.op, op);
				cr_assert_eq(u.idx, idxs[i], "op %d idx %u gen %u", op, idxs[i],
					     gens[g]);
				cr_assert_eq(u.gen, gens[g]);
			}
}

Test(worker, the_largest_slot_tables_fit_user_data)
{
	/* The upstream table is the larger one: connections_per_core plus spare slots. */
	uint32_t last = UPS_CAP(CFG_CONNECTIONS_PER_CORE_MAX) - 1;

	cr_assert_eq(ud_unpack(ud_pack(OP_U_RECV, last, 7)).idx, last);
}

static void pool_map(struct worker *w, uint32_t cap)
{
	memset(w, 0, sizeof(*w));
	w->xs = mmap(NULL, (size_t)cap * sizeof(struct exchange), PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	cr_assert_neq(w->xs, MAP_FAILED);
	w->x_cap = cap;
	w->x_free = NIL;
}

static void pool_unmap(struct worker *w)
{
	munmap(w->xs, (size_t)w->x_cap * sizeof(struct exchange));
}

Test(xslot, an_empty_pool_says_so_and_a_returned_slot_comes_back_first)
{
	struct worker w;
	struct exchange *a, *b, *c;

	pool_map(&w, 3);
	a = xslot_get(&w);
	b = xslot_get(&w);
	c = xslot_get(&w);
	cr_assert(a && b && c && a != b && b != c && a != c);
	cr_assert_eq(w.x_used, 3);
	cr_assert_null(xslot_get(&w), "a fourth slot out of three");
	xslot_put(&w, b);
	cr_assert_eq(w.x_used, 2);
	cr_assert_eq(xslot_get(&w), b, "the most recently returned slot first (LIFO)");
	cr_assert_null(xslot_get(&w));
	xslot_put(&w, a);
	xslot_put(&w, c);
	cr_assert_eq(xslot_get(&w), c);
	cr_assert_eq(xslot_get(&w), a);
	pool_unmap(&w);
}

Test(xslot, a_slot_comes_cleared_whatever_its_last_exchange_left)
{
	struct worker w;
	struct exchange *x;

	pool_map(&w, 1);
	x = xslot_get(&w);
	x->attempts = 3;
	x->pending_status = 503;
	x->resp_code = 200;
	x->x_bytes_out = 12345;
	x->req.body.done = true;
	x->resp.out.iov_n = 2;
	x->hkey = 42;
	xslot_put(&w, x);
	x = xslot_get(&w);
	cr_assert_eq(x->attempts, 0);
	cr_assert_eq(x->pending_status, 0);
	cr_assert_eq(x->resp_code, 0);
	cr_assert_eq(x->x_bytes_out, 0);
	cr_assert(!x->req.body.done);
	cr_assert_eq(x->resp.out.iov_n, 0);
	cr_assert_eq(x->hkey, 0);
	cr_assert_eq(x->req.head, NIL);
	cr_assert_eq(x->resp.head, NIL);
	cr_assert_eq(x->req.accum.hbuf, NIL);
	cr_assert_eq(x->resp.accum.hbuf, NIL);
	cr_assert_eq(x->req.accum.bid, -1);
	cr_assert_eq(x->resp.accum.bid, -1);
	cr_assert_eq(x->owner, NIL);
	pool_unmap(&w);
}

/* What an idle crowd costs: exchanges one after another reuse one slot's pages, nothing more. */
Test(xslot, slots_never_used_at_once_stay_untouched_pages)
{
	const uint32_t cap = 20000;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t bytes = (size_t)cap * sizeof(struct exchange);
	size_t pages = (bytes + page - 1) / page, resident = 0;
	unsigned char *vec = malloc(pages);
	struct exchange *x[4];
	struct worker w;

	pool_map(&w, cap);
	/* 10,000 exchanges, at most four at a time. */
	for (int round = 0; round < 2500; round++) {
		for (int i = 0; i < 4; i++)
			cr_assert_not_null(x[i] = xslot_get(&w));
		for (int i = 0; i < 4; i++)
			xslot_put(&w, x[i]);
	}
	cr_assert_eq(w.x_high, 4, "only as many slots written as were in use at once");
	cr_assert_eq(mincore(w.xs, bytes, vec), 0);
	for (size_t i = 0; i < pages; i++)
		resident += vec[i] & 1;
	cr_assert_leq(resident, 4 * sizeof(struct exchange) / page + 2, "%zu of %zu pages resident",
		      resident, pages);
	free(vec);
	pool_unmap(&w);
}
