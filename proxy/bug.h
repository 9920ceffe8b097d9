/*
 * Assertions in three tiers (after HAProxy's include/haproxy/bug.h):
 *
 *   BUG_ON(cond)      always compiled in: a broken invariant aborts with file:line.
 *   CHECK_IF(cond)    always compiled in, never aborts: for "cannot happen" paths that have a
 *                     safe way out. The first hit at each site is logged, every hit is counted
 *                     (corral_internal_checks_total). Evaluates to !!cond, so it is used as
 *                     `if (CHECK_IF(stale)) { recover; }`.
 *   BUG_ON_HOT(cond)  per-byte and per-iteration hot paths: a BUG_ON when built with
 *                     -DDEBUG_STRICT=2 (make OPT="-O2 -g -DDEBUG_STRICT=2"), otherwise not
 *                     evaluated at all (cond must have no side effects).
 *
 * Never assert.h + NDEBUG: a release build keeps every BUG_ON.
 */
#ifndef CORRAL_BUG_H
#define CORRAL_BUG_H

#include <stdint.h>

void bug_fail(const char *what, const char *file, int line) __attribute__((noreturn, cold));
/* Counts a CHECK_IF hit; logs it when *logged was 0 (per-site flag, set atomically). */
void bug_check_hit(int *logged, const char *what, const char *file, int line) __attribute__((cold));
/* CHECK_IF hits since start, all threads (relaxed). */
uint64_t bug_checks_total(void);

#define BUG_ON(cond)                                                                               \
	do {                                                                                       \
		if (__builtin_expect(!!(cond), 0))                                                 \
			bug_fail(#cond, __FILE__, __LINE__);                                       \
	} while (0)

#define CHECK_IF(cond)                                                                             \
	({                                                                                         \
		static int bug_logged_;                                                            \
		int bug_hit_ = __builtin_expect(!!(cond), 0);                                      \
		if (bug_hit_)                                                                      \
			bug_check_hit(&bug_logged_, #cond, __FILE__, __LINE__);                    \
		bug_hit_;                                                                          \
	})

#if defined(DEBUG_STRICT) && DEBUG_STRICT >= 2
#define BUG_ON_HOT(cond) BUG_ON(cond)
#else
/* sizeof keeps cond type-checked (and its variables used) without evaluating it. */
#define BUG_ON_HOT(cond) ((void)sizeof(!(cond)))
#endif

#endif
