/* What the unit tests' tables of config errors share (test_tls_client.c, test_tls_config.c). */
#ifndef CORRAL_TEST_CONFIG_CASES_H
#define CORRAL_TEST_CONFIG_CASES_H

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include "config.h"

/*
 * Table case i: yaml (as corral.yaml) must be refused with the error want, or, when want ends
 * in '*', with an error that starts with the rest of want and goes on past it.
 */
static void config_case_refused(size_t i, const char *yaml, const char *want)
{
	struct config c;
	char err[CFG_ERR_MAX];

	memset(err, 0, sizeof(err));
	cr_expect_eq(config_parse(&c, "corral.yaml", yaml, strlen(yaml), err, CFG_ERR_MAX), -EINVAL,
		     "case %zu", i);
	if (want[strlen(want) - 1] == '*')
		cr_expect(!strncmp(err, want, strlen(want) - 1) && strlen(err) > strlen(want),
			  "case %zu:\n  got:  %s\n  want: %s", i, err, want);
	else
		cr_expect_str_eq(err, want, "case %zu:\n  got:  %s\n  want: %s", i, err, want);
}

#endif
