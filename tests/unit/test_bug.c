/* Unit tests of the assertion tiers (bug.h) in a normal build: CHECK_IF counts and logs once. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "bug.h"

static int hit_at_one_site(int v)
{
	return CHECK_IF(v > 2);
}

static int hit_at_another_site(int v)
{
	return CHECK_IF(v < 0);
}

/* Everything written to the redirected stderr so far. */
static const char *stderr_text(void)
{
	static char text[8192];
	size_t n;

	fflush(stderr);
	n = fread(text, 1, sizeof(text) - 1, cr_get_redirected_stderr());
	text[n] = '\0';
	return text;
}

static int count(const char *text, const char *needle)
{
	int n = 0;

	for (const char *p = text; (p = strstr(p, needle)) != NULL; p++)
		n++;
	return n;
}

Test(bug, check_if_is_the_value_of_its_condition)
{
	cr_assert_eq(hit_at_one_site(1), 0);
	cr_assert_eq(hit_at_one_site(3), 1);
	cr_assert_eq(hit_at_another_site(-5), 1);
	cr_assert_eq(hit_at_another_site(5), 0);
}

Test(bug, check_if_counts_every_hit_and_only_hits)
{
	uint64_t before = bug_checks_total();

	for (int i = 0; i < 10; i++)
		hit_at_one_site(i); /* 3..9 hit */
	cr_assert_eq(bug_checks_total() - before, 7);
	hit_at_another_site(-1);
	cr_assert_eq(bug_checks_total() - before, 8);
}

Test(bug, check_if_logs_once_per_site, .init = cr_redirect_stderr)
{
	for (int i = 0; i < 5; i++) {
		hit_at_one_site(10);
		hit_at_another_site(-10);
	}
	const char *t = stderr_text();

	cr_assert_eq(count(t, "check failed: v > 2"), 1, "%s", t);
	cr_assert_eq(count(t, "check failed: v < 0"), 1, "%s", t);
	cr_assert_eq(count(t, "test_bug.c:"), 2, "%s", t);
}

Test(bug, each_site_logs_its_own_first_hit, .init = cr_redirect_stderr)
{
	hit_at_another_site(-1);
	hit_at_another_site(-2);
	hit_at_one_site(9);
	cr_assert_eq(count(stderr_text(), "check failed:"), 2);
}

Test(bug, bug_on_aborts, .signal = SIGABRT)
{
	volatile int x = 1;

	BUG_ON(x == 1);
}

Test(bug, bug_on_hot_is_not_evaluated_without_debug_strict)
{
	int evaluated = 0;

	BUG_ON_HOT(++evaluated > 100);
	BUG_ON_HOT(1);
	cr_assert_eq(evaluated, 0);
}
