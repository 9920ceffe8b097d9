/* Backend health: active HTTP checks and the passive (traffic) view, run on the main thread. */
#ifndef CORRAL_HEALTH_H
#define CORRAL_HEALTH_H

#include <stdbool.h>
#include <stdint.h>
#include "daemon.h"

/*
 * The health module is the only writer of backend_rt.down (relaxed stores); the workers'
 * eligibility check (ups.c) reads it. Everything else here is main-thread-only: checks are
 * non-blocking sockets on the module's own epoll fd, never on a worker's ring.
 *
 * A backend with health checks on is marked down after `fall` failed checks in a row, or at
 * once when a worker fails to connect to it (passive), and comes back after `rise` passed
 * checks in a row, its weight then ramping over slow_start_ms. Without checks the passive
 * park of main.c (down_until_ms) is all there is; this module only logs and counts it.
 */
struct health;

/* What the control plane shows for one backend id. */
struct health_view {
	bool checks_on;
	bool down;    /* held down by this module (checks, or traffic until a check) */
	bool checked; /* a check has finished at least once */
	bool last_ok;
	uint64_t last_ms;     /* now_ms() when the last check ended */
	char last_result[64]; /* "200", "timeout after 1000 ms", "connect: ..." */
	char reason[160];     /* why it is in its current state */
	uint64_t checks;      /* checks finished */
	uint64_t checks_failed;
	uint64_t transitions; /* up <-> down changes, passive parks included */
};

int health_open(struct health **out, struct daemon *d);
/* The fd for the main loop to poll for POLLIN (an epoll fd: check sockets and a timer). */
int health_fd(const struct health *h);
/* After every snapshot publish: which ids are in the config, with which check settings. */
void health_sync(struct health *h, const struct snapshot *s);
/* Runs due checks, reads answers, watches the workers' connect failures. Call every loop. */
void health_service(struct health *h);
/* Fills *out for backend id. */
void health_view(const struct health *h, uint32_t id, struct health_view *out);
void health_close(struct health *h);

/* Parses an HTTP/1.x status line at the start of buf: the status, or -1. Pure, for tests. */
int health_parse_status(const char *buf, size_t len);

#endif
