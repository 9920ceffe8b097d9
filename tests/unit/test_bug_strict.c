/* Unit tests of bug.h as built with -DDEBUG_STRICT=2: BUG_ON_HOT becomes a BUG_ON. */
#define DEBUG_STRICT 2
#include <criterion/criterion.h>
#include <signal.h>

#include "bug.h"

Test(bug_strict, bug_on_hot_aborts, .signal = SIGABRT)
{
	volatile int x = 1;

	BUG_ON_HOT(x == 1);
}

Test(bug_strict, bug_on_hot_evaluates_its_condition_once)
{
	int evaluated = 0;

	BUG_ON_HOT(++evaluated > 100);
	cr_assert_eq(evaluated, 1);
}
