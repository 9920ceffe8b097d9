/* systemd's notify protocol, spoken directly (no libsystemd): see README's dependency table. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "sdnotify.h"

static int sd_fd = -1;

int sdnotify_open(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t len;
	socklen_t sl;
	int fd;

	if (!path || !path[0])
		return 0;
	len = strlen(path);
	/* A path, or an abstract name written with a leading '@' (the '@' becomes a NUL). */
	if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sun.sun_path))
		return -EINVAL;
	memcpy(sun.sun_path, path, len);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sun, sl) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	sd_fd = fd;
	return 0;
}

bool sdnotify_on(void)
{
	return sd_fd >= 0;
}

int sdnotify_send(const char *msg)
{
	ssize_t n;

	if (sd_fd < 0)
		return 0;
	do
		n = send(sd_fd, msg, strlen(msg), MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : 0;
}

uint64_t sdnotify_watchdog_ms(void)
{
	const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	unsigned long long v;
	char *end;

	if (sd_fd < 0 || !us)
		return 0;
	if (pid && strtol(pid, NULL, 10) != (long)getpid())
		return 0;
	errno = 0;
	v = strtoull(us, &end, 10);
	if (errno || *end || v < 2000)
		return 0;
	return v / 2000; /* half of it, in ms */
}

void sdnotify_close(void)
{
	if (sd_fd >= 0)
		close(sd_fd);
	sd_fd = -1;
}
