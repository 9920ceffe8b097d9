/* Binary upgrade: starting the successor, and the successor's side of the hand-over. */
#ifndef CORRAL_UPGRADE_H
#define CORRAL_UPGRADE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "config-t.h"

/*
 * The protocol between the two processes (docs/operations.md, "Upgrade and restart"): the
 * running daemon starts its own binary with the same arguments and a socketpair end as fd 3
 * (and its metrics listener as fd 4); the environment says so (UPGRADE_ENV_*). The successor
 * writes one line on fd 3: "ready PID\n" once it serves, or "failed REASON\n" before it exits.
 * The predecessor then drains and exits; the successor sees end-of-file on fd 3 and takes the
 * metrics listener over from then on.
 */
#define UPGRADE_ENV_FD	    "CORRAL_UPGRADE_FD"
#define UPGRADE_ENV_METRICS "CORRAL_UPGRADE_METRICS_FD"
#define UPGRADE_ENV_PORTS   "CORRAL_UPGRADE_PORTS" /* listen ports by index, "8080,8443" */
#define UPGRADE_ENV_COUNT   "CORRAL_UPGRADE_COUNT" /* upgrades in this line of processes */
/* A line of the protocol is short; a reason is one log line. */
#define UPGRADE_LINE_MAX 400

/* The successor's view of its predecessor, from the environment (taken, then unset). */
struct upgrade_env {
	int fd;		/* the socketpair end; -1 = not started by an upgrade */
	int metrics_fd; /* the inherited metrics listener, or -1 */
	uint16_t ports[CFG_LISTEN_MAX];
	uint32_t ports_n;
	uint32_t count;
	pid_t from_pid;
};

/* Reads and removes the UPGRADE_ENV_* variables. Returns true when this is a successor. */
bool upgrade_env_take(struct upgrade_env *e);

/* The successor: one protocol line ("ready 123" / "failed why"). Best effort. */
void upgrade_say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The predecessor: starts exe with argv and the hand-over environment. Returns 0 with the
 * child's pid and our (non-blocking) end of the socketpair, or a negative errno and a reason.
 */
int upgrade_spawn(const char *exe, char *const argv[], const uint16_t *ports, uint32_t ports_n,
		  int metrics_lfd, uint32_t count, pid_t *pid, int *fd, char *err, size_t errlen);

/*
 * Reads what is there on fd into line (len bytes so far). Returns 1 when a whole line is in
 * line (NUL-terminated, without the newline), 0 when more is to come, -1 at end-of-file or
 * an error with no line.
 */
int upgrade_read_line(int fd, char *line, size_t cap, size_t *len);

/* A one-line description of a wait() status: "exited with status 1", "killed by signal 9". */
void upgrade_describe_status(int status, char *out, size_t n);

#endif
