/*
 * NEED(cond, fmt, ...): a precondition of a unit test. When cond is false the test is skipped
 * on a developer's machine and fails under CI (CI=true or CI=1, the same rule as
 * tests/e2e/conftest.py's need()), where a skip would hide a broken setup. fmt is a string
 * literal. tests/run-unit.sh prints the skipped tests and their count.
 */
#ifndef CORRAL_TESTS_NEED_H
#define CORRAL_TESTS_NEED_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdlib.h>
#include <strings.h>

static inline bool need_under_ci(void)
{
	const char *ci = getenv("CI");

	return ci && (!strcasecmp(ci, "true") || !strcmp(ci, "1"));
}

#define NEED(cond, ...)                                                                     \
	do {                                                                                \
		if (!(cond)) {                                                              \
			if (need_under_ci())                                                \
				cr_assert_fail("CI forbids skipping: " __VA_ARGS__);        \
			else                                                                \
				cr_skip_test(__VA_ARGS__);                                  \
		}                                                                           \
	} while (0)

#endif
