/* Unit tests for proxy/config.c: every key, the defaults, every error class with its line. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "config.h"

/* The two keys every valid config needs, on lines 1 and 2, so a case's own lines start at 3. */
#define BASE "listen: [\"127.0.0.1:8080\"]\nbackends: [\"127.0.0.1:9000\"]\n"

static int parse(struct config *c, const char *yaml, char *err)
{
	return config_parse(c, "corral.yaml", yaml, strlen(yaml), err, CFG_ERR_MAX);
}

static uint16_t port_of(const struct cfg_addr *a)
{
	if (a->ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

static const char *ip_of(const struct cfg_addr *a, char *buf, size_t len)
{
	if (a->ss.ss_family == AF_INET6)
		return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&a->ss)->sin6_addr, buf,
				 (socklen_t)len);
	return inet_ntop(AF_INET, &((const struct sockaddr_in *)&a->ss)->sin_addr, buf,
			 (socklen_t)len);
}

/* The CPUs this process may use, as config.c sees them. */
static void usable(cpu_set_t *set)
{
	CPU_ZERO(set);
	cr_assert_eq(sched_getaffinity(0, sizeof(*set), set), 0);
}

static int first_cpu(const cpu_set_t *set, bool in)
{
	int c;

	for (c = 0; c < CFG_CORES_MAX; c++)
		if (!!CPU_ISSET(c, set) == in)
			return c;
	return -1;
}

Test(config, defaults_are_the_documented_numbers)
{
	struct config c;
	cpu_set_t set;
	uint32_t i;

	usable(&set);
	config_defaults(&c);
	cr_expect_str_eq(c.instance, "default");
	cr_expect_eq(c.listen_n, 0);
	cr_expect_eq(c.backends_n, 0);
	cr_expect_eq(c.cores_n, (uint32_t)CPU_COUNT(&set));
	for (i = 0; i < c.cores_n; i++)
		cr_expect(CPU_ISSET((int)c.cores[i], &set), "core %u not usable", c.cores[i]);
	cr_expect_eq(c.balance, CFG_BALANCE_ROUND_ROBIN);
	cr_expect_eq(c.timeouts.client_header_ms, 10000);
	cr_expect_eq(c.timeouts.client_idle_ms, 60000);
	cr_expect_eq(c.timeouts.client_body_ms, 30000);
	cr_expect_eq(c.timeouts.upstream_connect_ms, 2000);
	cr_expect_eq(c.timeouts.upstream_response_ms, 30000);
	cr_expect_eq(c.timeouts.upstream_idle_ms, 30000);
	cr_expect_eq(c.timeouts.tunnel_idle_ms, 300000);
	cr_expect_eq(c.timeouts.shutdown_grace_ms, 10000);
	cr_expect_eq(c.timeouts.linger_ms, 2000);
	cr_expect_eq(c.timeouts.backend_park_ms, 1000);
	cr_expect_eq(c.timeouts.upgrade_ready_ms, 20000);
	cr_expect_eq(c.limits.header_bytes_max, 16384);
	cr_expect_eq(c.limits.headers_max, 100);
	cr_expect_eq(c.limits.uri_bytes_max, 8192);
	cr_expect_eq(c.limits.body_bytes_max, 100ULL * 1024 * 1024);
	cr_expect_eq(c.limits.connections_per_core, 16384);
	cr_expect_eq(c.limits.requests_per_connection, 10000);
	cr_expect_eq(c.limits.upstream_idle_per_backend, 65536);
	cr_expect_eq(c.limits.upstream_attempts_max, 3);
	cr_expect_eq(c.limits.linger_bytes_max, 262144);
	cr_expect_eq(c.limits.buffers_per_core, 1024);
	cr_expect_eq(c.limits.buffer_bytes, 16384);
	cr_expect_str_eq(c.steering.policy, "hash");
	cr_expect_eq(c.steering.weights_n, 0);
	for (i = 0; i < CFG_CORES_MAX; i++)
		cr_expect_eq(c.steering.weights[i], 1);
	cr_expect_str_eq(c.admin.socket, "/run/corral/corral.sock");
	cr_expect_not(c.admin.metrics_on);
	cr_expect_not(c.access_log.on);
	cr_expect_eq(c.access_log.format, CFG_LOG_JSON);
}

Test(config, minimal_file_gets_the_defaults)
{
	struct config c, d;
	char err[CFG_ERR_MAX];

	cr_assert_eq(parse(&c, BASE, err), 0, "%s", err);
	cr_expect_str_eq(err, "");
	cr_expect_str_eq(c.path, "corral.yaml");
	cr_expect_eq(c.listen_n, 1);
	cr_expect_str_eq(c.listen[0].text, "127.0.0.1:8080");
	cr_expect_eq(c.backends_n, 1);
	cr_expect_str_eq(c.backends[0].addr.text, "127.0.0.1:9000");
	cr_expect_eq(c.backends[0].weight, 1);
	/* Everything else is exactly config_defaults(). */
	config_defaults(&d);
	cr_expect_str_eq(c.instance, d.instance);
	cr_expect_eq(c.cores_n, d.cores_n);
	cr_expect_eq(memcmp(c.cores, d.cores, sizeof(c.cores)), 0);
	cr_expect_eq(c.balance, d.balance);
	cr_expect_eq(memcmp(&c.timeouts, &d.timeouts, sizeof(c.timeouts)), 0);
	cr_expect_eq(memcmp(&c.limits, &d.limits, sizeof(c.limits)), 0);
	cr_expect_eq(memcmp(&c.steering, &d.steering, sizeof(c.steering)), 0);
	cr_expect_eq(memcmp(&c.admin, &d.admin, sizeof(c.admin)), 0);
	cr_expect_eq(memcmp(&c.access_log, &d.access_log, sizeof(c.access_log)), 0);
}

Test(config, every_key_is_parsed)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[2048], ip[64];
	cpu_set_t set;
	int cpu;

	usable(&set);
	cpu = first_cpu(&set, true);
	cr_assert_geq(cpu, 0);
	snprintf(yaml, sizeof(yaml),
		 "instance: edge-1\n"
		 "listen:\n"
		 "  - \"127.0.0.1:8080\"\n"
		 "  - \"[::1]:8080\"\n"
		 "  - 0.0.0.0:0\n"
		 "workers: { cores: [%d] }\n"
		 "backends:\n"
		 "  - { address: \"127.0.0.1:9000\", weight: 3 }\n"
		 "  - address: \"[::1]:9001\"\n"
		 "    weight: 0\n"
		 "  - localhost:9002\n"
		 "balance: least-conn\n"
		 "timeouts:\n"
		 "  client_header_ms: 1001\n"
		 "  client_idle_ms: 1002\n"
		 "  client_body_ms: 1003\n"
		 "  upstream_connect_ms: 1004\n"
		 "  upstream_response_ms: 1005\n"
		 "  upstream_idle_ms: 1006\n"
		 "  tunnel_idle_ms: 1007\n"
		 "  shutdown_grace_ms: 1008\n"
		 "limits:\n"
		 "  header_bytes_max: 2001\n"
		 "  headers_max: 21\n"
		 "  uri_bytes_max: 2002\n"
		 "  body_bytes_max: 5000000000\n"
		 "  connections_per_core: 2003\n"
		 "  requests_per_connection: 2004\n"
		 "  upstream_idle_per_backend: 2005\n"
		 "  buffers_per_core: 256\n"
		 "  buffer_bytes: 65536\n"
		 "steering: { policy: power-of-two, weights: [7] }\n"
		 "admin: { socket: /tmp/corral-test.sock, metrics: \"[::1]:9901\" }\n"
		 "access_log: { path: /tmp/corral-access.log, format: combined }\n",
		 cpu);
	cr_assert_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_expect_str_eq(c.instance, "edge-1");
	cr_assert_eq(c.listen_n, 3);
	cr_expect_eq(c.listen[0].ss.ss_family, AF_INET);
	cr_expect_eq(c.listen[0].len, sizeof(struct sockaddr_in));
	cr_expect_eq(port_of(&c.listen[0]), 8080);
	cr_expect_eq(c.listen[1].ss.ss_family, AF_INET6);
	cr_expect_eq(c.listen[1].len, sizeof(struct sockaddr_in6));
	cr_expect_str_eq(ip_of(&c.listen[1], ip, sizeof(ip)), "::1");
	cr_expect_str_eq(c.listen[1].text, "[::1]:8080");
	cr_expect_eq(port_of(&c.listen[2]), 0);
	cr_expect_eq(c.cores_n, 1);
	cr_expect_eq(c.cores[0], (uint32_t)cpu);
	cr_assert_eq(c.backends_n, 3);
	cr_expect_eq(c.backends[0].weight, 3);
	cr_expect_str_eq(c.backends[1].addr.text, "[::1]:9001");
	cr_expect_eq(c.backends[1].weight, 0);
	cr_expect_str_eq(c.backends[2].addr.text, "localhost:9002");
	cr_expect_str_eq(ip_of(&c.backends[2].addr, ip, sizeof(ip)), "127.0.0.1");
	cr_expect_eq(c.backends[2].weight, 1);
	cr_expect_eq(c.balance, CFG_BALANCE_LEAST_CONN);
	cr_expect_eq(c.timeouts.client_header_ms, 1001);
	cr_expect_eq(c.timeouts.client_idle_ms, 1002);
	cr_expect_eq(c.timeouts.client_body_ms, 1003);
	cr_expect_eq(c.timeouts.upstream_connect_ms, 1004);
	cr_expect_eq(c.timeouts.upstream_response_ms, 1005);
	cr_expect_eq(c.timeouts.upstream_idle_ms, 1006);
	cr_expect_eq(c.timeouts.tunnel_idle_ms, 1007);
	cr_expect_eq(c.timeouts.shutdown_grace_ms, 1008);
	cr_expect_eq(c.limits.header_bytes_max, 2001);
	cr_expect_eq(c.limits.headers_max, 21);
	cr_expect_eq(c.limits.uri_bytes_max, 2002);
	cr_expect_eq(c.limits.body_bytes_max, 5000000000ULL);
	cr_expect_eq(c.limits.connections_per_core, 2003);
	cr_expect_eq(c.limits.requests_per_connection, 2004);
	cr_expect_eq(c.limits.upstream_idle_per_backend, 2005);
	cr_expect_eq(c.limits.buffers_per_core, 256);
	cr_expect_eq(c.limits.buffer_bytes, 65536);
	cr_expect_str_eq(c.steering.policy, "power-of-two");
	cr_expect_eq(c.steering.weights_n, 1);
	cr_expect_eq(c.steering.weights[0], 7);
	cr_expect_eq(c.steering.weights[1], 1);
	cr_expect_str_eq(c.admin.socket, "/tmp/corral-test.sock");
	cr_expect(c.admin.metrics_on);
	cr_expect_eq(port_of(&c.admin.metrics), 9901);
	cr_expect_eq(c.admin.metrics.ss.ss_family, AF_INET6);
	cr_expect(c.access_log.on);
	cr_expect_str_eq(c.access_log.path, "/tmp/corral-access.log");
	cr_expect_eq(c.access_log.format, CFG_LOG_COMBINED);
}

/* Small forms that mean the same as the long ones, and the ways to turn things off. */
Test(config, shorthands_and_off_switches)
{
	struct config c;
	char err[CFG_ERR_MAX];
	static const char *const policies[] = { "hash",	      "round-robin",  "least-conn",
						"least-load", "power-of-two", "weighted",
						"cpu-local" };
	static const char *const balances[] = { "round-robin", "least-conn", "hash-uri",
						"hash-client" };
	char yaml[512];
	size_t i;

	cr_assert_eq(parse(&c,
			   "listen: \"127.0.0.1:8080\"\n"
			   "backends: [\"127.0.0.1:9000\"]\n"
			   "admin: { socket: \"\", metrics: \"\" }\n"
			   "access_log:\n"
			   "timeouts:\n"
			   "workers: { cores: \"all\" }\n",
			   err),
		     0, "%s", err);
	cr_expect_eq(c.listen_n, 1);
	cr_expect_str_eq(c.admin.socket, "");
	cr_expect_not(c.admin.metrics_on);
	cr_expect_not(c.access_log.on);
	cr_expect_eq(c.timeouts.client_idle_ms, CFG_DEF_CLIENT_IDLE_MS);

	for (i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		snprintf(yaml, sizeof(yaml), BASE "steering: { policy: %s }\n", policies[i]);
		cr_expect_eq(parse(&c, yaml, err), 0, "%s", err);
		cr_expect_str_eq(c.steering.policy, policies[i]);
	}
	for (i = 0; i < sizeof(balances) / sizeof(balances[0]); i++) {
		snprintf(yaml, sizeof(yaml), BASE "balance: %s\n", balances[i]);
		cr_expect_eq(parse(&c, yaml, err), 0, "%s", err);
		cr_expect_eq(c.balance, (enum cfg_balance)i);
		cr_expect_str_eq(config_balance_name(c.balance), balances[i]);
	}
	cr_expect_str_eq(config_balance_name((enum cfg_balance)99), "unknown");

	/* Port 0 twice is two kernel-chosen ports, not a duplicate. */
	cr_expect_eq(parse(&c,
			   "listen: [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n"
			   "backends: [\"127.0.0.1:9000\"]\n",
			   err),
		     0, "%s", err);
	cr_expect_eq(c.listen_n, 2);
}

Test(config, proxy_protocol)
{
	struct config c;
	char err[512];

	cr_assert_eq(parse(&c,
			   "listen:\n"
			   "  - 127.0.0.1:8080\n"
			   "  - { address: 127.0.0.1:8081, proxy_protocol: true }\n"
			   "  - { address: 127.0.0.1:8082, proxy_protocol: false }\n"
			   "backends:\n"
			   "  - 127.0.0.1:9000\n"
			   "  - { address: 127.0.0.1:9001, send_proxy: v1 }\n"
			   "  - { address: 127.0.0.1:9002, send_proxy: v2 }\n",
			   err),
		     0, "%s", err);
	cr_assert_eq(c.listen_n, 3);
	cr_expect_not(c.listen_pp[0]);
	cr_expect(c.listen_pp[1]);
	cr_expect_not(c.listen_pp[2]);
	cr_expect_str_eq(c.listen[1].text, "127.0.0.1:8081");
	cr_assert_eq(c.backends_n, 3);
	cr_expect_eq(c.backends[0].send_proxy, 0);
	cr_expect_eq(c.backends[1].send_proxy, 1);
	cr_expect_eq(c.backends[2].send_proxy, 2);
}

struct err_case {
	const char *yaml;
	const char *want;
};

/* Every error class, each with the exact message and line an operator would see. */
static const struct err_case err_cases[] = {
	/* unknown keys, at every level */
	{ BASE "bogus: 1\n", "corral.yaml:3: bogus: unknown key" },
	{ BASE "limits:\n  header_bytes_mx: 5\n",
	  "corral.yaml:4: limits.header_bytes_mx: unknown key" },
	{ BASE "timeouts: { idle_ms: 5 }\n", "corral.yaml:3: timeouts.idle_ms: unknown key" },
	{ BASE "workers: { count: 2 }\n", "corral.yaml:3: workers.count: unknown key" },
	{ BASE "steering: { polcy: hash }\n", "corral.yaml:3: steering.polcy: unknown key" },
	{ BASE "admin: { sock: /x }\n", "corral.yaml:3: admin.sock: unknown key" },
	{ BASE "access_log: { path: /x, fmt: json }\n",
	  "corral.yaml:3: access_log.fmt: unknown key" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - address: 127.0.0.1:9000\n    wieght: 2\n",
	  "corral.yaml:4: backends[0].wieght: unknown key" },
	/* PROXY protocol: proxy_protocol on a listen entry, send_proxy on a backend */
	{ "listen:\n  - { address: 127.0.0.1:8080, proxy_protocol: yes }\nbackends: "
	  "[127.0.0.1:9000]\n",
	  "corral.yaml:2: listen[0].proxy_protocol: must be true or false" },
	{ "listen:\n  - { address: 127.0.0.1:8080, proxy_protocl: true }\nbackends: "
	  "[127.0.0.1:9000]\n",
	  "corral.yaml:2: listen[0].proxy_protocl: unknown key" },
	{ "listen:\n  - { proxy_protocol: true }\nbackends: [127.0.0.1:9000]\n",
	  "corral.yaml:2: listen[0].address: is required" },
	{ "listen: [127.0.0.1:8080]\nbackends:\n  - address: 127.0.0.1:9000\n    send_proxy: v3\n",
	  "corral.yaml:4: backends[0].send_proxy: must be v1 or v2 (the PROXY protocol version)" },
	{ "listen: [127.0.0.1:8080]\nbackends:\n  - { address: 127.0.0.1:9000, send_proxy: true "
	  "}\n",
	  "corral.yaml:3: backends[0].send_proxy: must be v1 or v2 (the PROXY protocol version)" },
	/* duplicate keys */
	{ BASE "balance: least-conn\nbalance: hash-uri\n",
	  "corral.yaml:4: balance: duplicate key (first set at line 3)" },
	{ BASE "limits:\n  headers_max: 10\n  headers_max: 20\n",
	  "corral.yaml:5: limits.headers_max: duplicate key (first set at line 4)" },
	/* wrong types */
	{ "- a\n- b\n", "corral.yaml:1: (top level): must be a mapping of keys to values" },
	{ "? [a, b]\n: 1\n", "corral.yaml:1: (top level): keys must be plain strings" },
	{ BASE "timeouts: [1, 2]\n",
	  "corral.yaml:3: timeouts: must be a mapping of keys to values" },
	{ BASE "timeouts:\n  client_idle_ms: 5s\n",
	  "corral.yaml:4: timeouts.client_idle_ms: must be an integer between 100 and 3600000" },
	{ BASE "timeouts:\n  client_idle_ms: \"5000\"\n",
	  "corral.yaml:4: timeouts.client_idle_ms: must be an integer between 100 and 3600000" },
	{ BASE "timeouts:\n  client_idle_ms: -1\n",
	  "corral.yaml:4: timeouts.client_idle_ms: must be an integer between 100 and 3600000" },
	{ BASE "timeouts:\n  client_idle_ms: 0x100\n",
	  "corral.yaml:4: timeouts.client_idle_ms: must be an integer between 100 and 3600000" },
	{ BASE "timeouts:\n  client_idle_ms: 01000\n",
	  "corral.yaml:4: timeouts.client_idle_ms: must be an integer between 100 and 3600000" },
	{ BASE "timeouts:\n  client_idle_ms: 1e4\n",
	  "corral.yaml:4: timeouts.client_idle_ms: must be an integer between 100 and 3600000" },
	{ BASE "timeouts:\n  client_idle_ms:\n",
	  "corral.yaml:4: timeouts.client_idle_ms: must be an integer between 100 and 3600000" },
	{ BASE "limits: { body_bytes_max: 99999999999999999999999 }\n",
	  "corral.yaml:3: limits.body_bytes_max: must be an integer between 1 and 1099511627776" },
	{ BASE "limits: { buffer_bytes: 5000 }\n",
	  "corral.yaml:3: limits.buffer_bytes: must be a power of two between 4096 and 1048576" },
	{ BASE "limits: { buffers_per_core: 48 }\n",
	  "corral.yaml:3: limits.buffers_per_core: must be a power of two between 16 and 32768" },
	{ BASE "instance: [a]\n", "corral.yaml:3: instance: must be a string" },
	{ BASE "instance: \"\"\n", "corral.yaml:3: instance: must not be empty" },
	{ BASE "instance: \"a\\0b\"\n", "corral.yaml:3: instance: must not contain a NUL byte" },
	{ BASE "instance: ../etc\n",
	  "corral.yaml:3: instance: may hold only letters, digits, '_', '-' and '.' (not first)" },
	{ BASE "instance: a/b\n",
	  "corral.yaml:3: instance: may hold only letters, digits, '_', '-' and '.' (not first)" },
	{ BASE "instance: 0123456789012345678901234567890123456789012345678901234567890123\n",
	  "corral.yaml:3: instance: must be at most 63 bytes long" },
	{ BASE "balance: random\n",
	  "corral.yaml:3: balance: must be one of round-robin, least-conn, hash-uri, hash-client" },
	{ BASE "steering: { policy: fastest }\n",
	  "corral.yaml:3: steering.policy: must be one of hash, round-robin, least-conn, "
	  "least-load, power-of-two, weighted, cpu-local" },
	{ BASE "steering: { weights: [0, 0] }\n",
	  "corral.yaml:3: steering.weights: at least one weight must be above 0" },
	{ BASE "steering: { weights: [1, 1001] }\n",
	  "corral.yaml:3: steering.weights[1]: must be an integer between 0 and 1000" },
	{ BASE "steering: { weights: [] }\n",
	  "corral.yaml:3: steering.weights: must be a list of one weight per worker core, e.g. "
	  "[3, 1]" },
	{ BASE "workers: { cores: some }\n",
	  "corral.yaml:3: workers.cores: must be \"all\" or a list of one or more CPU numbers, "
	  "e.g. [0, 1]" },
	{ BASE "workers: { cores: [] }\n",
	  "corral.yaml:3: workers.cores: must be \"all\" or a list of one or more CPU numbers, "
	  "e.g. [0, 1]" },
	{ BASE "workers:\n  cores:\n    - 256\n",
	  "corral.yaml:5: workers.cores[0]: must be an integer between 0 and 255" },
	/* 12 + 96 = 108 bytes: one more than sun_path holds with its NUL. */
	{ BASE "admin: { socket: /run/corral/"
	       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa }\n",
	  "corral.yaml:3: admin.socket: must be at most 107 bytes long" },
	{ BASE "admin:\n  metrics: 9901\n",
	  "corral.yaml:4: admin.metrics: 9901: missing port (expected e.g. 127.0.0.1:8080)" },
	{ BASE "admin: { metrics: \"127.0.0.1:8080\" }\n",
	  "corral.yaml:3: admin.metrics: 127.0.0.1:8080 is also a listen address (line 1)" },
	{ BASE "access_log: { format: json }\n",
	  "corral.yaml:3: access_log.path: is required when access_log is given" },
	{ BASE "access_log: { path: /x, format: xml }\n",
	  "corral.yaml:3: access_log.format: must be one of json, combined" },
	{ BASE "access_log: { path: \"\" }\n",
	  "corral.yaml:3: access_log.path: must not be empty" },
	{ BASE "access_log: yes\n", "corral.yaml:3: access_log: must be a mapping such as { path: "
				    "/var/log/corral/access.log, format: json }" },
	/* required keys */
	{ "", "corral.yaml:1: listen: at least one listen address is required" },
	{ "# nothing but a comment\n",
	  "corral.yaml:1: listen: at least one listen address is required" },
	{ "backends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen: at least one listen address is required" },
	{ "listen: [\"127.0.0.1:8080\"]\n",
	  "corral.yaml:1: backends: at least one backend is required" },
	{ "listen: []\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen: must be a list of one or more addresses, e.g. "
	  "[\"127.0.0.1:8080\"]" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends: []\n",
	  "corral.yaml:2: backends: must be a list of one or more backends, e.g. "
	  "[{ address: \"127.0.0.1:9000\" }]" },
	/* addresses */
	{ "listen:\n  - \"127.0.0.1:8080\"\n  - \"[::1]:8080\"\n  - 127.0.0.1:8080\n"
	  "backends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:4: listen[2]: duplicate listen address 127.0.0.1:8080 (first at line 2)" },
	{ "listen: [\"127.0.0.1\"]\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen[0]: 127.0.0.1: missing port (expected e.g. 127.0.0.1:8080)" },
	{ "listen: [\"1.2.3.256:80\"]\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen[0]: 1.2.3.256:80: bad IPv4 address (expected e.g. "
	  "127.0.0.1:8080)" },
	{ "listen: [\"127.0.0.1:65536\"]\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen[0]: 127.0.0.1:65536: port must be a number between 0 and 65535" },
	{ "listen: [\"example.com:80\"]\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen[0]: example.com:80: host names are not resolved: use a numeric "
	  "address (e.g. 127.0.0.1:8080)" },
	{ "listen: [\"::1:80\"]\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen[0]: ::1:80: an IPv6 address needs brackets (expected e.g. "
	  "[::1]:8080)" },
	{ "listen: [\"[::g]:80\"]\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen[0]: [::g]:80: bad IPv6 address (use a numeric address, e.g. "
	  "[::1]:8080)" },
	{ "listen: [[1]]\nbackends: [\"127.0.0.1:9000\"]\n",
	  "corral.yaml:1: listen[0]: must be an address string such as \"127.0.0.1:8080\" or "
	  "\"[::1]:8080\"" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - 127.0.0.1:0\n",
	  "corral.yaml:3: backends[0]: 127.0.0.1:0: port 0 cannot be connected to (use 1..65535)" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - address: \"db.internal:5432\"\n",
	  "corral.yaml:3: backends[0].address: db.internal:5432: host names are not resolved: use "
	  "a numeric address (e.g. 127.0.0.1:8080)" },
	/* backends */
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - weight: 2\n",
	  "corral.yaml:3: backends[0].address: is required" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n"
	  "  - address: 127.0.0.1:9000\n    weight: 1001\n",
	  "corral.yaml:4: backends[0].weight: must be an integer between 0 and 1000" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - 127.0.0.1:9000\n  - 127.0.0.1:9000\n",
	  "corral.yaml:4: backends[1]: duplicate backend 127.0.0.1:9000 (first at line 3)" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - { address: 127.0.0.1:9000, weight: 0 }\n",
	  "corral.yaml:3: backends: every backend has weight 0, so no request could be served" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - 127.0.0.1:8080\n",
	  "corral.yaml:3: backends: 127.0.0.1:8080 is corral's own listen address (a loop)" },
	{ "listen: [\"127.0.0.1:8080\"]\nbackends:\n  - [1]\n",
	  "corral.yaml:3: backends[0]: must be a mapping such as { address: \"127.0.0.1:9000\", "
	  "weight: 1 }" },
	/* limits that span keys */
	{ BASE "limits: { buffers_per_core: 4096, buffer_bytes: 1048576 }\n",
	  "corral.yaml:3: limits.buffer_bytes: buffers_per_core x buffer_bytes is 4294967296 bytes "
	  "per core; at most 1073741824 (1 GiB) is allowed" },
	{ BASE "limits:\n  buffer_bytes: 1048576\n  buffers_per_core: 2048\n",
	  "corral.yaml:5: limits.buffers_per_core: buffers_per_core x buffer_bytes is 2147483648 "
	  "bytes per core; at most 1073741824 (1 GiB) is allowed" },
	/* YAML syntax, always with the line libyaml stopped at */
	{ "listen: [\"127.0.0.1:8080\"\nbackends: x\n",
	  "corral.yaml:2: yaml: did not find expected ',' or ']' (while parsing a flow sequence)" },
	{ "listen: a: b\n", "corral.yaml:1: yaml: mapping values are not allowed in this context" },
	{ "listen:\n  - \"127.0.0.1:8080\n",
	  "corral.yaml:3: yaml: found unexpected end of stream (while scanning a quoted scalar)" },
	{ BASE "limits:\n\theaders_max: 10\n",
	  "corral.yaml:4: yaml: found character that cannot start any token "
	  "(while scanning for the next token)" },
	{ "listen: *nowhere\n", "corral.yaml:1: yaml: found undefined alias" },
	{ BASE "---\nbalance: least-conn\n",
	  "corral.yaml:4: yaml: only one YAML document is allowed in a config file" },
};

Test(config, every_error_class_names_file_line_and_key)
{
	struct config c;
	char err[CFG_ERR_MAX];
	size_t i;
	int r;

	for (i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
		memset(err, 0, sizeof(err));
		r = parse(&c, err_cases[i].yaml, err);
		cr_expect_eq(r, -EINVAL, "case %zu: returned %d for:\n%s", i, r, err_cases[i].yaml);
		cr_expect_str_eq(err, err_cases[i].want, "case %zu:\n%s\n  got:  %s\n  want: %s", i,
				 err_cases[i].yaml, err, err_cases[i].want);
	}
}

/* One bounded key: its limits, and what it must be written at for the extra check to pass. */
struct bound_case {
	const char *section;
	const char *key;
	size_t off; /* into struct config */
	size_t size;
	uint64_t min, max;
	bool pow2;
	const char *extra; /* more lines for the same section, after the key */
};

#define T32(f, lo, hi)                                                                             \
	{                                                                                          \
		"timeouts", #f, offsetof(struct config, timeouts.f), 4, lo, hi, false, ""          \
	}
#define L32(f, lo, hi, p2, x)                                                                      \
	{                                                                                          \
		"limits", #f, offsetof(struct config, limits.f), 4, lo, hi, p2, x                  \
	}

static const struct bound_case bound_cases[] = {
	T32(client_header_ms, 100, 600000),
	T32(client_idle_ms, 100, 3600000),
	T32(client_body_ms, 100, 3600000),
	T32(upstream_connect_ms, 10, 60000),
	T32(upstream_response_ms, 100, 3600000),
	T32(upstream_idle_ms, 100, 3600000),
	T32(tunnel_idle_ms, 1000, 86400000),
	T32(shutdown_grace_ms, 0, 600000),
	T32(linger_ms, 0, 60000),
	T32(backend_park_ms, 0, 600000),
	T32(upgrade_ready_ms, 100, 25000),
	L32(header_bytes_max, 1024, 1048576, false, ""),
	L32(headers_max, 8, 1000, false, ""),
	L32(uri_bytes_max, 256, 1048576, false, ""),
	{ "limits", "body_bytes_max", offsetof(struct config, limits.body_bytes_max), 8, 1,
	  1ULL << 40, false, "" },
	L32(connections_per_core, 1, 1048576, false, ""),
	L32(requests_per_connection, 1, 1000000, false, ""),
	L32(upstream_idle_per_backend, 0, 65536, false, ""),
	L32(upstream_attempts_max, 1, 16, false, ""),
	L32(linger_bytes_max, 0, 16777216, false, ""),
	L32(buffers_per_core, 16, 32768, true, ""),
	/* 1 MiB buffers need few of them to stay under 1 GiB per core. */
	L32(buffer_bytes, 4096, 1048576, true, "  buffers_per_core: 16\n"),
};

static uint64_t field(const struct config *c, const struct bound_case *b)
{
	if (b->size == 8)
		return *(const uint64_t *)((const char *)c + b->off);
	return *(const uint32_t *)((const char *)c + b->off);
}

static int parse_bound(struct config *c, const struct bound_case *b, uint64_t v, char *err)
{
	char yaml[512];

	snprintf(yaml, sizeof(yaml), BASE "%s:\n  %s: %" PRIu64 "\n%s", b->section, b->key, v,
		 b->extra);
	return parse(c, yaml, err);
}

Test(config, every_number_is_accepted_at_its_bounds_and_refused_one_past)
{
	struct config c;
	char err[CFG_ERR_MAX], want[CFG_ERR_MAX];
	const struct bound_case *b;
	size_t i;

	for (i = 0; i < sizeof(bound_cases) / sizeof(bound_cases[0]); i++) {
		b = &bound_cases[i];
		snprintf(want, sizeof(want),
			 "corral.yaml:4: %s.%s: must be %s between %" PRIu64 " and %" PRIu64,
			 b->section, b->key, b->pow2 ? "a power of two" : "an integer", b->min,
			 b->max);

		cr_expect_eq(parse_bound(&c, b, b->min, err), 0, "%s at min: %s", b->key, err);
		cr_expect_eq(field(&c, b), b->min, "%s at min", b->key);
		cr_expect_eq(parse_bound(&c, b, b->max, err), 0, "%s at max: %s", b->key, err);
		cr_expect_eq(field(&c, b), b->max, "%s at max", b->key);

		cr_expect_eq(parse_bound(&c, b, b->max + 1, err), -EINVAL, "%s max+1", b->key);
		cr_expect_str_eq(err, want, "%s max+1", b->key);
		if (b->min > 0) {
			cr_expect_eq(parse_bound(&c, b, b->min - 1, err), -EINVAL, "%s min-1",
				     b->key);
			cr_expect_str_eq(err, want, "%s min-1", b->key);
		}
		if (b->pow2) {
			cr_expect_eq(parse_bound(&c, b, b->min * 3, err), -EINVAL, "%s 3*min",
				     b->key);
			cr_expect_str_eq(err, want, "%s 3*min", b->key);
		}
	}
}

Test(config, buffer_memory_per_core_is_capped_at_one_gib)
{
	struct config c;
	char err[CFG_ERR_MAX];

	cr_expect_eq(
		parse(&c, BASE "limits: { buffers_per_core: 1024, buffer_bytes: 1048576 }\n", err),
		0, "%s", err);
	cr_expect_eq(
		parse(&c, BASE "limits: { buffers_per_core: 2048, buffer_bytes: 1048576 }\n", err),
		-EINVAL);
	cr_expect_str_eq(err, "corral.yaml:3: limits.buffer_bytes: buffers_per_core x "
			      "buffer_bytes is 2147483648 bytes per core; at most 1073741824 "
			      "(1 GiB) is allowed");
}

Test(config, list_sizes_are_bounded)
{
	struct config c;
	char err[CFG_ERR_MAX], want[CFG_ERR_MAX];
	static char yaml[65536];
	size_t used = 0;
	int i;

	used += (size_t)snprintf(yaml + used, sizeof(yaml) - used, "listen:\n");
	for (i = 0; i < CFG_LISTEN_MAX + 1; i++)
		used += (size_t)snprintf(yaml + used, sizeof(yaml) - used, "  - 127.0.0.1:%d\n",
					 10000 + i);
	used += (size_t)snprintf(yaml + used, sizeof(yaml) - used, "backends:\n");
	for (i = 0; i < CFG_BACKENDS_MAX + 1; i++)
		used += (size_t)snprintf(yaml + used, sizeof(yaml) - used, "  - 127.0.1.1:%d\n",
					 20000 + i);
	cr_assert_lt(used, sizeof(yaml) - 1);
	snprintf(want, sizeof(want),
		 "corral.yaml:%d: listen[%d]: at most %d listen addresses are allowed",
		 CFG_LISTEN_MAX + 2, CFG_LISTEN_MAX, CFG_LISTEN_MAX);
	cr_expect_eq(parse(&c, yaml, err), -EINVAL);
	cr_expect_str_eq(err, want);

	/* Exactly at the limit: fine. Cut the 17th listen line out and see the backends' limit. */
	{
		char *l17 = strstr(yaml, "  - 127.0.0.1:10016\n");

		cr_assert_not_null(l17);
		memmove(l17, l17 + strlen("  - 127.0.0.1:10016\n"),
			strlen(l17 + strlen("  - 127.0.0.1:10016\n")) + 1);
	}
	snprintf(want, sizeof(want),
		 "corral.yaml:%d: backends[%d]: at most %d backends are allowed",
		 CFG_LISTEN_MAX + 2 + CFG_BACKENDS_MAX + 1, CFG_BACKENDS_MAX, CFG_BACKENDS_MAX);
	cr_expect_eq(parse(&c, yaml, err), -EINVAL);
	cr_expect_str_eq(err, want);

	/* And with 256 backends exactly, it loads. */
	*strstr(yaml, "  - 127.0.1.1:20256\n") = '\0';
	cr_expect_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_expect_eq(c.listen_n, CFG_LISTEN_MAX);
	cr_expect_eq(c.backends_n, CFG_BACKENDS_MAX);
}

Test(config, cores_must_be_usable_and_distinct)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[512], want[CFG_ERR_MAX];
	cpu_set_t set;
	int in, out;

	usable(&set);
	in = first_cpu(&set, true);
	out = first_cpu(&set, false);
	cr_assert_geq(in, 0);

	snprintf(yaml, sizeof(yaml), BASE "workers: { cores: [%d] }\n", in);
	cr_expect_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_expect_eq(c.cores_n, 1);
	cr_expect_eq(c.cores[0], (uint32_t)in);

	snprintf(yaml, sizeof(yaml), BASE "workers:\n  cores:\n    - %d\n    - %d\n", in, in);
	/* A CPU listed twice: two workers share it. */
	cr_expect_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_expect_eq(c.cores_n, 2);
	cr_expect_eq(c.cores[1], (uint32_t)in);

	if (out < 0) {
		/* Every CPU below CFG_CORES_MAX is usable: nothing out of range to try. */
		cr_expect_geq(CPU_COUNT(&set), CFG_CORES_MAX);
		return;
	}
	snprintf(yaml, sizeof(yaml), BASE "workers: { cores: [%d] }\n", out);
	snprintf(want, sizeof(want),
		 "corral.yaml:3: workers.cores[0]: CPU %d is not online or not allowed for this "
		 "process (usable CPUs: ",
		 out);
	cr_expect_eq(parse(&c, yaml, err), -EINVAL);
	cr_expect_eq(strncmp(err, want, strlen(want)), 0, "got: %s", err);
}

Test(config, steering_weights_need_one_per_core_in_any_key_order)
{
	struct config c;
	char err[CFG_ERR_MAX], yaml[512];
	cpu_set_t set;
	int in;

	usable(&set);
	in = first_cpu(&set, true);
	cr_assert_geq(in, 0);

	/* weights come before workers in the file: checked once the whole file is read. */
	snprintf(yaml, sizeof(yaml),
		 BASE "steering: { policy: weighted, weights: [3] }\n"
		      "workers: { cores: [%d] }\n",
		 in);
	cr_expect_eq(parse(&c, yaml, err), 0, "%s", err);
	cr_expect_eq(c.steering.weights_n, 1);
	cr_expect_eq(c.steering.weights[0], 3);

	snprintf(yaml, sizeof(yaml),
		 BASE "steering:\n  weights: [3, 1]\nworkers: { cores: [%d] }\n", in);
	cr_expect_eq(parse(&c, yaml, err), -EINVAL);
	cr_expect_str_eq(err, "corral.yaml:4: steering.weights: has 2 entries but workers.cores "
			      "gives 1 cores (one weight per core, in workers.cores order)");
}

Test(config, failed_parse_leaves_the_config_untouched)
{
	struct config c, saved;
	char err[CFG_ERR_MAX];

	cr_assert_eq(parse(&c, BASE "balance: hash-uri\n", err), 0, "%s", err);
	memcpy(&saved, &c, sizeof(c));
	cr_assert_eq(parse(&c,
			   "listen: [\"127.0.0.1:7000\"]\nbackends: [\"127.0.0.1:9000\"]\n"
			   "balance: nope\n",
			   err),
		     -EINVAL);
	cr_expect_eq(memcmp(&c, &saved, sizeof(c)), 0);
	/* No error buffer at all is allowed too. */
	cr_expect_eq(config_parse(&c, "x", "nope: 1\n", 8, NULL, 0), -EINVAL);
	cr_expect_eq(memcmp(&c, &saved, sizeof(c)), 0);
}

struct addr_case {
	const char *text;
	int family; /* 0: must be refused */
	const char *ip;
	uint16_t port;
};

static const struct addr_case addr_cases[] = {
	{ "1.2.3.4:80", AF_INET, "1.2.3.4", 80 },
	{ "0.0.0.0:80", AF_INET, "0.0.0.0", 80 },
	{ "127.0.0.1:65535", AF_INET, "127.0.0.1", 65535 },
	{ "127.0.0.1:0", AF_INET, "127.0.0.1", 0 },
	{ "localhost:80", AF_INET, "127.0.0.1", 80 },
	{ "[::1]:80", AF_INET6, "::1", 80 },
	{ "[::]:0", AF_INET6, "::", 0 },
	{ "[2001:db8::1]:443", AF_INET6, "2001:db8::1", 443 },
	{ "[::ffff:10.0.0.1]:8080", AF_INET6, "::ffff:10.0.0.1", 8080 },
	{ "", 0, NULL, 0 },
	{ "1.2.3.4", 0, NULL, 0 },
	{ "1.2.3.4:", 0, NULL, 0 },
	{ "1.2.3.4:65536", 0, NULL, 0 },
	{ "1.2.3.4:100000", 0, NULL, 0 },
	{ "1.2.3.4:-1", 0, NULL, 0 },
	{ "1.2.3.4:8a", 0, NULL, 0 },
	{ "1.2.3.4: 80", 0, NULL, 0 },
	{ ":80", 0, NULL, 0 },
	{ "1.2.3:80", 0, NULL, 0 },
	{ "1.2.3.4.5:80", 0, NULL, 0 },
	{ "example.com:80", 0, NULL, 0 },
	{ "[::1]", 0, NULL, 0 },
	{ "[::1]80", 0, NULL, 0 },
	{ "[::1:80", 0, NULL, 0 },
	{ "::1:80", 0, NULL, 0 },
	{ "[]:80", 0, NULL, 0 },
	{ "[1.2.3.4]:80", 0, NULL, 0 },
	{ "[fe80::1%lo]:80", 0, NULL, 0 },
	{ "[localhost]:80", 0, NULL, 0 },
	{ "1.2.3.4:80000000000000000000000000000000000000000000000000000000000000000", 0, NULL, 0 },
};

Test(config, parse_addr_accepts_numeric_ipv4_and_bracketed_ipv6_only)
{
	struct cfg_addr a;
	char ip[64];
	size_t i;
	int r;

	for (i = 0; i < sizeof(addr_cases) / sizeof(addr_cases[0]); i++) {
		const struct addr_case *t = &addr_cases[i];

		r = config_parse_addr(&a, t->text);
		if (!t->family) {
			cr_expect_eq(r, -EINVAL, "\"%s\" should be refused", t->text);
			continue;
		}
		cr_expect_eq(r, 0, "\"%s\" should parse", t->text);
		cr_expect_eq(a.ss.ss_family, t->family, "%s", t->text);
		cr_expect_eq(a.len,
			     t->family == AF_INET ? sizeof(struct sockaddr_in)
						  : sizeof(struct sockaddr_in6),
			     "%s", t->text);
		cr_expect_str_eq(ip_of(&a, ip, sizeof(ip)), t->ip, "%s", t->text);
		cr_expect_eq(port_of(&a), t->port, "%s", t->text);
		cr_expect_str_eq(a.text, t->text);
	}
}

Test(config, load_reads_a_file_and_reports_its_name)
{
	struct config c;
	char err[CFG_ERR_MAX], path[] = "/tmp/corral-test-config-XXXXXX", want[CFG_ERR_MAX];
	const char *bad = BASE "limits:\n  headers_max: 5\n";
	int fd;

	fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
	close(fd);
	cr_expect_eq(config_load(&c, path, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want),
		 "%s:4: limits.headers_max: must be an integer between 8 and 1000", path);
	cr_expect_str_eq(err, want);

	fd = open(path, O_WRONLY | O_TRUNC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, BASE, strlen(BASE)), (ssize_t)strlen(BASE));
	close(fd);
	cr_expect_eq(config_load(&c, path, err, sizeof(err)), 0, "%s", err);
	cr_expect_str_eq(c.path, path);
	unlink(path);

	cr_expect_eq(config_load(&c, "/nonexistent/corral.yaml", err, sizeof(err)), -ENOENT);
	cr_expect_str_eq(err, "/nonexistent/corral.yaml: cannot read: No such file or directory");
	cr_expect_eq(config_load(&c, "/tmp", err, sizeof(err)), -EINVAL);
	cr_expect_str_eq(err, "/tmp: not a regular file");
}

/* The file `make run` uses must always load (tests run from the repository root). */
Test(config, shipped_default_config_loads)
{
	struct config c;
	char err[CFG_ERR_MAX];

	cr_assert_eq(access("deploy/corral.yaml", R_OK), 0,
		     "deploy/corral.yaml not found: run the test from the repository root");
	cr_assert_eq(config_load(&c, "deploy/corral.yaml", err, sizeof(err)), 0, "%s", err);
	cr_expect_str_eq(c.instance, "default");
	cr_expect_eq(c.listen_n, 1);
	cr_expect_str_eq(c.listen[0].text, "127.0.0.1:8080");
	cr_expect_eq(c.backends_n, 1);
	cr_expect_str_eq(c.backends[0].addr.text, "127.0.0.1:9000");
	cr_expect(c.admin.metrics_on);
	cr_expect_str_eq(c.admin.metrics.text, "127.0.0.1:9901");
	cr_expect_str_eq(c.admin.socket, "/run/corral/corral.sock");
	cr_expect_str_eq(c.steering.policy, "hash");
	cr_expect_not(c.access_log.on);
}
