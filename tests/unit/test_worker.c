/* Unit tests of the worker's pure helpers: the user_data codec. */
#include <criterion/criterion.h>

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
