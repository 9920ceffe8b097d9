/* Kernel tests of a binary upgrade's steering: a successor takes the instance over, the old
 * listeners' queues migrate to the new ones, the control state carries over, pins come back. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "need.h"
#include "steer.h"

static char inst[64];

static void remove_pins(void)
{
	static const char *const maps[] = { "ctl", "cores", "stats", "socks" };
	char path[256];

	for (size_t m = 0; inst[0] && m < sizeof(maps) / sizeof(maps[0]); m++) {
		snprintf(path, sizeof(path), "/sys/fs/bpf/corral/%s/%s", inst, maps[m]);
		unlink(path);
	}
	snprintf(path, sizeof(path), "/sys/fs/bpf/corral/%s", inst);
	rmdir(path);
}

TestSuite(upgrade_kernel, .fini = remove_pins);

static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return 0;
}

static void config_for(struct config *cfg, uint32_t n, const char *policy)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(inst, sizeof(inst), "test-upg-%d", (int)getpid());
	snprintf(cfg->instance, sizeof(cfg->instance), "%s", inst);
	cfg->cores_n = n;
	for (uint32_t i = 0; i < n; i++) {
		cfg->cores[i] = 0;
		cfg->steering.weights[i] = 1;
	}
	cfg->steering.weights_n = n;
	snprintf(cfg->steering.policy, sizeof(cfg->steering.policy), "%s", policy);
}

static struct steer *open_as(const struct config *cfg, bool takeover)
{
	char err[256] = "";
	struct steer *s = NULL;
	int ret;

	NEED(geteuid() == 0, "steering tests need root (CAP_BPF, CAP_NET_ADMIN)");
	libbpf_set_print(quiet);
	ret = takeover ? steer_open_takeover(&s, cfg, err, sizeof(err))
		       : steer_open(&s, cfg, err, sizeof(err));
	if (ret == -EPERM || ret == -ENOSYS)
		NEED(false, "BPF unavailable: %s", err);
	cr_assert_eq(ret, 0, "steer_open: %d %s", ret, err);
	return s;
}

static int listener(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(fd >= 0);
	cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "%s", strerror(errno));
	cr_assert_eq(listen(fd, 128), 0);
	return fd;
}

static uint16_t port_of(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	return ntohs(a.sin_port);
}

static int client(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(fd >= 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "%s", strerror(errno));
	return fd;
}

static uint32_t pinned_policy(void)
{
	struct steer_ctl c;
	char path[256];
	__u32 zero = 0;
	int fd;

	snprintf(path, sizeof(path), "/sys/fs/bpf/corral/%s/ctl", inst);
	fd = bpf_obj_get(path);
	cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(bpf_map_lookup_elem(fd, &zero, &c), 0);
	close(fd);
	return c.policy;
}

Test(upgrade_kernel, the_old_queues_migrate_to_the_new_listeners_and_the_state_carries_over)
{
	enum {
		Q = 16
	};
	struct config cfg;
	struct steer *old, *new;
	int a[2], b[2], cli[Q], acc[Q], n = 0, i, c;
	struct pollfd p[2];
	uint16_t port;
	char ch;

	config_for(&cfg, 2, "hash");
	old = open_as(&cfg, false);
	a[0] = listener(0);
	port = port_of(a[0]);
	a[1] = listener(port);
	for (i = 0; i < 2; i++)
		cr_assert_eq(steer_register(old, 0, (uint32_t)i, a[i]), 0);
	/* What corralctl changed at run time. */
	cr_assert_eq(steer_set_policy(old, "round-robin"), 0);
	cr_assert_eq(steer_set_weight(old, 1, 7), 0);
	/* Connections queued on the old listeners, never accepted by the old process. */
	for (i = 0; i < Q; i++)
		cli[i] = client(port);
	usleep(50000);

	/* The successor: its own maps and listeners in the same group, its program attached. */
	new = open_as(&cfg, true);
	cr_assert(steer_carried(new));
	cr_assert_str_eq(steer_policy_name(new), "round-robin");
	cr_assert_eq(steer_core(new, 1)->weight, 7);
	cr_assert_eq(pinned_policy(), STEER_ROUND_ROBIN);
	b[0] = listener(port);
	b[1] = listener(port);
	for (i = 0; i < 2; i++)
		cr_assert_eq(steer_register(new, 0, (uint32_t)i, b[i]), 0);

	/* The old process drains: its listeners shut down, the queues move to the new ones. */
	cr_assert_eq(shutdown(a[0], SHUT_RDWR), 0);
	cr_assert_eq(shutdown(a[1], SHUT_RDWR), 0);
	p[0] = (struct pollfd){ .fd = b[0], .events = POLLIN };
	p[1] = (struct pollfd){ .fd = b[1], .events = POLLIN };
	while (n < Q && poll(p, 2, 1000) > 0)
		for (i = 0; i < 2; i++)
			if ((p[i].revents & POLLIN) &&
			    (c = accept4(b[i], NULL, NULL, SOCK_CLOEXEC)) >= 0)
				acc[n++] = c;
	cr_assert_eq(n, Q, "only %d of %d queued connections reached the new listeners", n, Q);
	cr_assert_eq(steer_fallbacks(new), 0);
	for (i = 0; i < Q; i++)
		cr_assert_eq(write(acc[i], "x", 1), 1);
	for (i = 0; i < Q; i++) {
		cr_assert_eq(read(cli[i], &ch, 1), 1, "client %d: %s", i, strerror(errno));
		close(cli[i]);
		close(acc[i]);
	}
	/* The old one exits: the pins stay, the new process's. */
	steer_close(old);
	close(a[0]);
	close(a[1]);
	cr_assert_eq(pinned_policy(), STEER_ROUND_ROBIN);
	steer_close(new);
	close(b[0]);
	close(b[1]);
}

Test(upgrade_kernel, a_failed_successor_s_pins_are_replaced_by_the_old_ones_again)
{
	struct config cfg;
	struct steer *old, *failed;

	config_for(&cfg, 2, "hash");
	old = open_as(&cfg, false);
	failed = open_as(&cfg, true); /* replaces the pins, then fails and unpins its own */
	steer_close(failed);
	cr_assert_eq(steer_repin(old), 0);
	cr_assert_eq(steer_set_policy(old, "weighted"), 0);
	cr_assert_eq(pinned_policy(), STEER_WEIGHTED, "the pinned map is not the old process's");
	cr_assert_eq(steer_repin(old), 0); /* already ours: nothing to do */
	steer_close(old);
}
