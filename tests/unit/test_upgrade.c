/* Unit tests of the binary-upgrade helpers: the environment hand-over and the protocol lines. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "upgrade.h"

static void set_env(int fd, int mfd, const char *ports, const char *count)
{
	char v[32];

	snprintf(v, sizeof(v), "%d", fd);
	setenv(UPGRADE_ENV_FD, v, 1);
	snprintf(v, sizeof(v), "%d", mfd);
	setenv(UPGRADE_ENV_METRICS, v, 1);
	setenv(UPGRADE_ENV_PORTS, ports, 1);
	setenv(UPGRADE_ENV_COUNT, count, 1);
}

Test(upgrade, env_is_taken_once_and_removed)
{
	struct upgrade_env e;
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	set_env(sv[0], sv[1], "8080,0,443", "2");
	cr_assert(upgrade_env_take(&e));
	cr_assert_eq(e.fd, sv[0]);
	cr_assert_eq(e.metrics_fd, sv[1]);
	cr_assert_eq(e.ports_n, 3);
	cr_assert_eq(e.ports[0], 8080);
	cr_assert_eq(e.ports[1], 0);
	cr_assert_eq(e.ports[2], 443);
	cr_assert_eq(e.count, 2);
	cr_assert_eq(e.from_pid, getppid());
	/* Inherited descriptors do not leak into processes this one starts. */
	cr_assert(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);
	cr_assert_null(getenv(UPGRADE_ENV_FD));
	cr_assert_null(getenv(UPGRADE_ENV_PORTS));
	/* A second look (or a child) finds nothing: a plain start. */
	cr_assert_not(upgrade_env_take(&e));
	cr_assert_eq(e.fd, -1);
	close(sv[0]);
	close(sv[1]);
}

Test(upgrade, env_with_a_closed_or_bad_fd_is_a_plain_start)
{
	struct upgrade_env e;

	set_env(1000, 1001, "80", "1"); /* not open */
	cr_assert_not(upgrade_env_take(&e));
	cr_assert_eq(e.fd, -1);
	setenv(UPGRADE_ENV_FD, "3x", 1);
	cr_assert_not(upgrade_env_take(&e));
	setenv(UPGRADE_ENV_FD, "2", 1); /* stdio is never the hand-over socket */
	cr_assert_not(upgrade_env_take(&e));
}

Test(upgrade, lines_are_read_whole_and_end_of_file_is_seen)
{
	char line[UPGRADE_LINE_MAX];
	size_t len = 0;
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	cr_assert_eq(upgrade_read_line(sv[0], line, sizeof(line), &len), 0);
	cr_assert_eq(write(sv[1], "rea", 3), 3);
	cr_assert_eq(upgrade_read_line(sv[0], line, sizeof(line), &len), 0);
	upgrade_say(sv[1], "dy %d", 42);
	cr_assert_eq(upgrade_read_line(sv[0], line, sizeof(line), &len), 1);
	cr_assert_str_eq(line, "ready 42");
	close(sv[1]);
	len = 0;
	cr_assert_eq(upgrade_read_line(sv[0], line, sizeof(line), &len), -1);
	close(sv[0]);
}

Test(upgrade, a_reason_with_newlines_stays_one_line)
{
	char line[UPGRADE_LINE_MAX];
	size_t len = 0;
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	upgrade_say(sv[1], "failed %s", "a.yaml:3: bad\nsecond line");
	cr_assert_eq(upgrade_read_line(sv[0], line, sizeof(line), &len), 1);
	cr_assert_str_eq(line, "failed a.yaml:3: bad second line");
	close(sv[0]);
	close(sv[1]);
}

Test(upgrade, a_wait_status_is_described)
{
	char s[64];

	upgrade_describe_status(3 << 8, s, sizeof(s));
	cr_assert_str_eq(s, "exited with status 3");
	upgrade_describe_status(9, s, sizeof(s));
	cr_assert_str_eq(s, "was killed by signal 9");
}

Test(upgrade, spawn_passes_the_socket_as_fd_3_and_closes_the_rest)
{
	char cmd[400], *argv[] = { "/bin/sh", "-c", cmd, NULL };
	uint16_t ports[] = { 8080 };
	char err[128], line[UPGRADE_LINE_MAX];
	size_t len = 0;
	int fd, status, r, extra = open("/dev/null", O_RDONLY); /* must not reach the child */
	pid_t pid;

	cr_assert_geq(extra, 0);
	snprintf(cmd, sizeof(cmd),
		 "test \"$CORRAL_UPGRADE_FD\" = 3 && test \"$CORRAL_UPGRADE_PORTS\" = 8080 &&"
		 " test \"$CORRAL_UPGRADE_COUNT\" = 5 && test -z \"$CORRAL_UPGRADE_METRICS_FD\" &&"
		 " test ! -e /proc/self/fd/%d && echo \"ready $$\" >&3",
		 extra);
	cr_assert_eq(upgrade_spawn("/bin/sh", argv, ports, 1, -1, 5, &pid, &fd, err, sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x", status);
	r = upgrade_read_line(fd, line, sizeof(line), &len);
	cr_assert_eq(r, 1);
	cr_assert_eq(strncmp(line, "ready ", 6), 0, "%s", line);
	cr_assert_eq(atoi(line + 6), pid);
	close(fd);
	close(extra);
}
