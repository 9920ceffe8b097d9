/* Binary upgrade: starting the successor, and the successor's side of the hand-over. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/close_range.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "upgrade.h"

extern char **environ;

/* The fds the successor finds its hand-over on: right after stdin, stdout and stderr. */
#define UPGRADE_CHILD_FD	 3
#define UPGRADE_CHILD_METRICS_FD 4
/* Environment entries we add: fd, metrics fd, ports, count. */
#define UPGRADE_ENV_ADD 4

static bool env_int(const char *name, long lo, long hi, long *out)
{
	const char *v = getenv(name);
	char *end;
	long n;

	if (!v || !*v)
		return false;
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || *end || n < lo || n > hi)
		return false;
	*out = n;
	return true;
}

bool upgrade_env_take(struct upgrade_env *e)
{
	const char *p = getenv(UPGRADE_ENV_PORTS);
	long v;

	memset(e, 0, sizeof(*e));
	e->fd = e->metrics_fd = -1;
	if (env_int(UPGRADE_ENV_FD, 3, 1 << 20, &v) && fcntl((int)v, F_GETFD) != -1)
		e->fd = (int)v;
	if (e->fd >= 0 && env_int(UPGRADE_ENV_METRICS, 3, 1 << 20, &v) &&
	    fcntl((int)v, F_GETFD) != -1)
		e->metrics_fd = (int)v;
	if (env_int(UPGRADE_ENV_COUNT, 0, 1L << 30, &v))
		e->count = (uint32_t)v;
	while (e->fd >= 0 && p && *p && e->ports_n < CFG_LISTEN_MAX) {
		char *end;
		long port = strtol(p, &end, 10);

		if (end == p || port < 0 || port > 65535)
			break;
		e->ports[e->ports_n++] = (uint16_t)port;
		p = *end == ',' ? end + 1 : end;
	}
	e->from_pid = getppid();
	/* Our own successor gets its own values; a plain child process gets none. */
	unsetenv(UPGRADE_ENV_FD);
	unsetenv(UPGRADE_ENV_METRICS);
	unsetenv(UPGRADE_ENV_PORTS);
	unsetenv(UPGRADE_ENV_COUNT);
	if (e->fd >= 0)
		fcntl(e->fd, F_SETFD, FD_CLOEXEC);
	if (e->metrics_fd >= 0)
		fcntl(e->metrics_fd, F_SETFD, FD_CLOEXEC);
	return e->fd >= 0;
}

void upgrade_say(int fd, const char *fmt, ...)
{
	char line[UPGRADE_LINE_MAX];
	va_list ap;
	int n;

	if (fd < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	/* A reason is one line: newlines inside it would end the message early. */
	for (int i = 0; i < n; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[n++] = '\n';
	if (send(fd, line, (size_t)n, MSG_NOSIGNAL) < 0) {
		/* The predecessor is gone; nothing to tell. */
	}
}

int upgrade_spawn(const char *exe, char *const argv[], const uint16_t *ports, uint32_t ports_n,
		  int metrics_lfd, uint32_t count, pid_t *pid, int *fd, char *err, size_t errlen)
{
	char e_fd[40], e_met[48], e_ports[40 + CFG_LISTEN_MAX * 6], e_count[48];
	size_t n_env = 0, k = 0, off;
	char **envp;
	sigset_t none;
	int sv[2], rc;
	pid_t child;

	for (char **e = environ; *e; e++)
		n_env++;
	envp = calloc(n_env + UPGRADE_ENV_ADD + 1, sizeof(*envp));
	if (!envp) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "CORRAL_UPGRADE_", 15) != 0)
			envp[k++] = *e;
	snprintf(e_fd, sizeof(e_fd), "%s=%d", UPGRADE_ENV_FD, UPGRADE_CHILD_FD);
	envp[k++] = e_fd;
	if (metrics_lfd >= 0) {
		snprintf(e_met, sizeof(e_met), "%s=%d", UPGRADE_ENV_METRICS,
			 UPGRADE_CHILD_METRICS_FD);
		envp[k++] = e_met;
	}
	off = (size_t)snprintf(e_ports, sizeof(e_ports), "%s=", UPGRADE_ENV_PORTS);
	for (uint32_t i = 0; i < ports_n && off < sizeof(e_ports); i++)
		off += (size_t)snprintf(e_ports + off, sizeof(e_ports) - off, "%s%u", i ? "," : "",
					ports[i]);
	envp[k++] = e_ports;
	snprintf(e_count, sizeof(e_count), "%s=%u", UPGRADE_ENV_COUNT, count);
	envp[k++] = e_count;
	envp[k] = NULL;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
		rc = -errno;
		snprintf(err, errlen, "socketpair: %s", strerror(-rc));
		free(envp);
		return rc;
	}
	sigemptyset(&none);
	child = fork();
	if (child == 0) {
		/*
		 * The child of a multi-threaded process: only async-signal-safe calls until exec.
		 * Move the two hand-over fds to 3 and 4 (above anything we may land on first),
		 * close everything else, so that no listener or connection of ours stays open
		 * in the successor, and start it with no signal blocked.
		 */
		int a = fcntl(sv[1], F_DUPFD, 64), b = -1;

		if (metrics_lfd >= 0)
			b = fcntl(metrics_lfd, F_DUPFD, 64);
		if (a < 0 || (metrics_lfd >= 0 && b < 0) || dup2(a, UPGRADE_CHILD_FD) < 0 ||
		    (b >= 0 && dup2(b, UPGRADE_CHILD_METRICS_FD) < 0))
			_exit(126);
		syscall(SYS_close_range,
			b >= 0 ? UPGRADE_CHILD_METRICS_FD + 1 : UPGRADE_CHILD_FD + 1, ~0U, 0);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execve(exe, argv, envp);
		_exit(127);
	}
	rc = child < 0 ? -errno : 0;
	close(sv[1]);
	free(envp);
	if (rc) {
		close(sv[0]);
		snprintf(err, errlen, "fork: %s", strerror(-rc));
		return rc;
	}
	fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
	*pid = child;
	*fd = sv[0];
	return 0;
}

int upgrade_read_line(int fd, char *line, size_t cap, size_t *len)
{
	for (;;) {
		char *nl;
		ssize_t n;

		nl = memchr(line, '\n', *len);
		if (nl) {
			*nl = '\0';
			return 1;
		}
		if (*len + 1 >= cap) {
			line[*len] = '\0';
			return 1; /* an over-long line counts as what it has */
		}
		n = recv(fd, line + *len, cap - 1 - *len, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n <= 0)
			return -1;
		*len += (size_t)n;
	}
}

void upgrade_describe_status(int status, char *out, size_t n)
{
	if (WIFEXITED(status))
		snprintf(out, n, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(out, n, "was killed by signal %d", WTERMSIG(status));
	else
		snprintf(out, n, "ended (wait status %#x)", (unsigned)status);
}
