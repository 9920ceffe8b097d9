/* corralctl: the control-socket client (one JSON line out, one JSON line back). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "corralctl.h"

/* The daemon answers from its main loop in microseconds; 10 s means it is wedged. */
#define CLIENT_TIMEOUT_MS 10000

int client_timeout_ms = CLIENT_TIMEOUT_MS;
/* Replies are at most a few MiB (the daemon caps them at 4 MiB). */
#define CLIENT_REPLY_MAX (8u << 20)

int client_connect(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd, e;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "socket path too long: %s", path);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
		return fd;
	e = errno;
	close(fd);
	if (e == ENOENT)
		snprintf(err, errlen, "daemon not running (no control socket at %s)", path);
	else if (e == ECONNREFUSED)
		snprintf(err, errlen, "daemon not running (nothing listens on %s)", path);
	else if (e == EACCES || e == EPERM)
		snprintf(err, errlen,
			 "permission denied on %s (run as root or as the daemon's user)", path);
	else
		snprintf(err, errlen, "cannot connect to %s: %s", path, strerror(e));
	return -1;
}

static int client_send_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

json_t *client_request(int fd, json_t *req, char *err, size_t errlen, bool *unreachable)
{
	char *text = json_dumps(req, JSON_COMPACT), *buf = NULL, *nl = NULL;
	size_t len = 0, cap = 0;
	json_error_t jerr;
	json_t *reply = NULL;

	*unreachable = false;
	if (!text) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	/* One send with the newline: the request is one line, whatever the peer does next. */
	len = strlen(text);
	buf = realloc(text, len + 2);
	if (!buf) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	text = buf;
	buf = NULL;
	text[len] = '\n';
	text[len + 1] = '\0';
	if (client_send_all(fd, text, len + 1) < 0) {
		snprintf(err, errlen, "cannot send to the daemon: %s",
			 errno == EPIPE ? "it closed the connection" : strerror(errno));
		*unreachable = true;
		goto out;
	}
	len = 0;
	while (!nl) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;
		int rc;

		if (len + 4096 > cap) {
			char *nb;

			if (cap >= CLIENT_REPLY_MAX) {
				snprintf(err, errlen,
					 "malformed reply from the daemon (longer than %u bytes)",
					 CLIENT_REPLY_MAX);
				goto out;
			}
			cap = cap ? cap * 2 : 65536;
			nb = realloc(buf, cap);
			if (!nb) {
				snprintf(err, errlen, "out of memory");
				goto out;
			}
			buf = nb;
		}
		rc = poll(&p, 1, client_timeout_ms);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc == 0) {
			snprintf(err, errlen, "no reply from the daemon in %d s",
				 client_timeout_ms / 1000);
			*unreachable = true;
			goto out;
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (len)
				snprintf(err, errlen,
					 "malformed reply from the daemon (cut short)");
			else
				snprintf(err, errlen,
					 "the daemon closed the connection without replying");
			*unreachable = len == 0;
			goto out;
		}
		nl = memchr(buf + len, '\n', (size_t)n);
		len += (size_t)n;
	}
	reply = json_loadb(buf, (size_t)(nl - buf), 0, &jerr);
	if (!reply) {
		snprintf(err, errlen, "malformed reply from the daemon: %s", jerr.text);
		goto out;
	}
	if (!json_is_object(reply) || !json_is_boolean(json_object_get(reply, "ok"))) {
		snprintf(err, errlen, "malformed reply from the daemon (no \"ok\")");
		json_decref(reply);
		reply = NULL;
		goto out;
	}
	/* Anything after the newline would be a reply to a request we did not send. */
	if ((size_t)(nl - buf) + 1 != len) {
		snprintf(err, errlen, "malformed reply from the daemon (extra bytes)");
		json_decref(reply);
		reply = NULL;
	}
out:
	free(text);
	free(buf);
	return reply;
}
