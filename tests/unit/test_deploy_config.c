/* deploy/corral.yaml says its timeouts and limits are the defaults: they must be (issue 8, 14). */
#include <criterion/criterion.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#define MINIMAL "listen: [\"127.0.0.1:8080\"]\nbackends: [\"127.0.0.1:9000\"]\n"

#define SAME(field)                                                                                \
	cr_expect_eq(shipped.field, defaults.field,                                                \
		     #field ": %llu in deploy/corral.yaml, default %llu",                          \
		     (unsigned long long)shipped.field, (unsigned long long)defaults.field)

Test(deploy_config, timeouts_and_limits_are_the_defaults)
{
	static struct config shipped, defaults;
	char err[CFG_ERR_MAX];

	cr_assert_eq(access("deploy/corral.yaml", R_OK), 0,
		     "deploy/corral.yaml not found: run the test from the repository root");
	cr_assert_eq(config_load(&shipped, "deploy/corral.yaml", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(
		config_parse(&defaults, "minimal.yaml", MINIMAL, strlen(MINIMAL), err, sizeof(err)),
		0, "%s", err);
	SAME(timeouts.client_header_ms);
	SAME(timeouts.client_idle_ms);
	SAME(timeouts.client_body_ms);
	SAME(timeouts.upstream_connect_ms);
	SAME(timeouts.upstream_response_ms);
	SAME(timeouts.upstream_idle_ms);
	SAME(timeouts.tunnel_idle_ms);
	SAME(timeouts.shutdown_grace_ms);
	SAME(timeouts.linger_ms);
	SAME(timeouts.backend_park_ms);
	SAME(limits.header_bytes_max);
	SAME(limits.headers_max);
	SAME(limits.uri_bytes_max);
	SAME(limits.body_bytes_max);
	SAME(limits.connections_per_core);
	SAME(limits.requests_per_connection);
	SAME(limits.upstream_idle_per_backend);
	SAME(limits.upstream_attempts_max);
	SAME(limits.linger_bytes_max);
	SAME(limits.buffers_per_core);
	SAME(limits.buffer_bytes);
	SAME(limits.listen_backlog);
}
