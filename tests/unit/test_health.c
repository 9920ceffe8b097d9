/* Unit tests for health checks: the health: config keys (defaults, overrides, errors) and the
 * status-line parser of proxy/health.c. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "health.h"

#define BASE "listen: [\"127.0.0.1:8080\"]\n"

static struct config *C;
static char ERR[CFG_ERR_MAX];

static void setup(void)
{
	C = calloc(1, sizeof(*C));
	cr_assert(C);
	ERR[0] = 0;
}

static void teardown(void)
{
	free(C);
}

static int parse(const char *yaml)
{
	return config_parse(C, "corral.yaml", yaml, strlen(yaml), ERR, sizeof(ERR));
}

TestSuite(health, .init = setup, .fini = teardown);

Test(health, off_unless_configured)
{
	cr_assert_eq(parse(BASE "backends: [\"127.0.0.1:9000\"]\n"), 0, "%s", ERR);
	cr_assert_not(C->backends[0].health.on);
}

Test(health, top_level_defaults_apply_to_every_backend)
{
	cr_assert_eq(parse(BASE "backends: [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]\n"
				"health: { path: /healthz }\n"),
		     0, "%s", ERR);
	for (int i = 0; i < 2; i++) {
		const struct cfg_health *h = &C->backends[i].health;

		cr_assert(h->on);
		cr_assert_str_eq(h->path, "/healthz");
		cr_assert_eq(h->interval_ms, CFG_DEF_HEALTH_INTERVAL_MS);
		cr_assert_eq(h->timeout_ms, CFG_DEF_HEALTH_TIMEOUT_MS);
		cr_assert_eq(h->rise, CFG_DEF_HEALTH_RISE);
		cr_assert_eq(h->fall, CFG_DEF_HEALTH_FALL);
		cr_assert_eq(h->expect_lo, 200);
		cr_assert_eq(h->expect_hi, 399);
		cr_assert_str_eq(h->host, "");
		cr_assert_eq(h->slow_start_ms, 0);
	}
}

Test(health, backend_keys_override_the_top_level_ones)
{
	/* The top-level mapping comes after the backends: the merge does not depend on order. */
	cr_assert_eq(
		parse(BASE
		      "backends:\n"
		      "  - { address: 127.0.0.1:9000, health: { path: /a, fall: 5, expect: 204 } "
		      "}\n"
		      "  - 127.0.0.1:9001\n"
		      "health: { path: /b, interval_ms: 500, timeout_ms: 200, host: svc.local,\n"
		      "          expect: \"200-299\", slow_start_ms: 3000, rise: 4 }\n"),
		0, "%s", ERR);
	cr_assert_str_eq(C->backends[0].health.path, "/a");
	cr_assert_eq(C->backends[0].health.fall, 5);
	cr_assert_eq(C->backends[0].health.expect_lo, 204);
	cr_assert_eq(C->backends[0].health.expect_hi, 204);
	cr_assert_eq(C->backends[0].health.interval_ms, 500);
	cr_assert_eq(C->backends[0].health.rise, 4);
	cr_assert_str_eq(C->backends[0].health.host, "svc.local");
	cr_assert_eq(C->backends[0].health.slow_start_ms, 3000);
	cr_assert_str_eq(C->backends[1].health.path, "/b");
	cr_assert_eq(C->backends[1].health.fall, CFG_DEF_HEALTH_FALL);
	cr_assert_eq(C->backends[1].health.expect_lo, 200);
	cr_assert_eq(C->backends[1].health.expect_hi, 299);
}

Test(health, a_backend_alone_can_turn_checks_on)
{
	cr_assert_eq(parse(BASE "backends:\n"
				"  - { address: 127.0.0.1:9000, health: { path: /ping } }\n"
				"  - 127.0.0.1:9001\n"),
		     0, "%s", ERR);
	cr_assert(C->backends[0].health.on);
	cr_assert_not(C->backends[1].health.on);
}

struct bad_case {
	const char *yaml;
	const char *err;
};

Test(health, errors_name_file_line_and_key)
{
	static const struct bad_case cases[] = {
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { path: healthz }\n",
		  "corral.yaml:3: health.path: must start with '/'" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { path: \"/a b\" }\n",
		  "corral.yaml:3: health.path: must not contain spaces or control characters" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { interval_ms: 99 }\n",
		  "corral.yaml:3: health.interval_ms: must be an integer between 100 and 3600000" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { rise: 0 }\n",
		  "corral.yaml:3: health.rise: must be an integer between 1 and 100" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { fall: 101 }\n",
		  "corral.yaml:3: health.fall: must be an integer between 1 and 100" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { expect: \"399-200\" }\n",
		  "corral.yaml:3: health.expect: must be a status or a range" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { expect: 600 }\n",
		  "corral.yaml:3: health.expect: must be a status or a range" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { expect: \"2xx\" }\n",
		  "corral.yaml:3: health.expect: must be a status or a range" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: { intervall_ms: 100 }\n",
		  "corral.yaml:3: health.intervall_ms: unknown key" },
		{ BASE "backends: [\"127.0.0.1:9000\"]\nhealth: /healthz\n",
		  "corral.yaml:3: health: must be a mapping" },
		{ BASE
		  "backends: [\"127.0.0.1:9000\"]\nhealth: { interval_ms: 100, timeout_ms: 200 }\n",
		  "corral.yaml:3: health.timeout_ms: 200 ms is longer than interval_ms (100 ms)" },
		{ BASE "backends:\n  - 127.0.0.1:9000\n"
		       "  - { address: 127.0.0.1:9001, health: { timeout_ms: 5000 } }\n",
		  "corral.yaml:4: backends[1].health.timeout_ms: 5000 ms is longer than "
		  "interval_ms "
		  "(2000 ms)" },
		{ BASE "backends:\n  - { address: 127.0.0.1:9001, health: { host: \"\" } }\n",
		  "corral.yaml:3: backends[0].health.host: must not be empty" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ERR[0] = 0;
		cr_assert_lt(parse(cases[i].yaml), 0, "case %zu accepted", i);
		cr_assert(strncmp(ERR, cases[i].err, strlen(cases[i].err)) == 0,
			  "case %zu: got '%s', want '%s...'", i, ERR, cases[i].err);
	}
}

Test(health, status_line_parser)
{
	static const struct {
		const char *line;
		int want;
	} cases[] = {
		{ "HTTP/1.1 200 OK\r", 200 },
		{ "HTTP/1.0 503 Service Unavailable", 503 },
		{ "HTTP/1.1 204", 204 },
		{ "HTTP/1.1 204\r", 204 },
		{ "HTTP/1.1 099 x", -1 },
		{ "HTTP/1.1 20 OK", -1 },
		{ "HTTP/1.1 2000 OK", -1 },
		{ "HTTP/2.0 200 OK", -1 },
		{ "HTTP/1.1  200 OK", -1 },
		{ "SSH-2.0-OpenSSH", -1 },
		{ "", -1 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		cr_assert_eq(health_parse_status(cases[i].line, strlen(cases[i].line)),
			     cases[i].want, "case %zu: %s", i, cases[i].line);
}
