/* corralctl internals: the control-socket client, table rendering and the live `top` view. */
#ifndef CORRALCTL_H
#define CORRALCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

#define CORRALCTL_SOCKET_DEF "/run/corral/corral.sock"

/* Exit codes: 1 = the daemon refused or failed the command, 2 = usage, 3 = cannot talk to it. */
enum {
	CC_EXIT_FAIL = 1,
	CC_EXIT_USAGE = 2,
	CC_EXIT_UNREACHABLE = 3
};

/*
 * Connects to the control socket. Returns the fd, or -1 with a one-line operator message in
 * err ("daemon not running ...", "permission denied ...").
 */
int client_connect(const char *path, char *err, size_t errlen);

/*
 * Sends one request line and reads one reply line on fd. Returns the parsed reply (an object
 * whose "ok" is a boolean), or NULL with a message in err ("malformed reply ...", "daemon
 * closed the connection", ...). *unreachable tells an I/O failure from a bad reply.
 */
json_t *client_request(int fd, json_t *req, char *err, size_t errlen, bool *unreachable);
/* How long client_request() waits for the reply; `upgrade` waits longer. */
extern int client_timeout_ms;
#define CLIENT_UPGRADE_TIMEOUT_MS 30000

/* Human-readable helpers: 1234567 -> "1.2M", 1536 bytes -> "1.5K"; microseconds -> "1.2ms". */
void render_count(char *out, size_t len, double v);
void render_bytes(char *out, size_t len, double v);
void render_us(char *out, size_t len, double us);

/* The number at a dotted path of o ("total.responses.2xx"); 0 when absent or not a number. */
double json_num(json_t *o, const char *path);

/* Tables for people, from the daemon's replies. */
void render_status(FILE *f, json_t *reply);
void render_stats(FILE *f, json_t *reply);
void render_backends(FILE *f, json_t *reply);
void render_certs(FILE *f, json_t *reply);

/* Full-screen live view; returns an exit code. */
int top_run(const char *sock, double interval_s);

#endif
