/* Steering: load the sk_reuseport BPF program, own its pinned maps, expose per-core counters. */
#ifndef CORRAL_STEER_H
#define CORRAL_STEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "config-t.h"
#include "steer_shared.h" /* bpf/steer_shared.h: map layouts, policy ids, pure policy function */

/* steer_core.drained: the program skips a worker whose bit 0 is set. */
#define STEER_DRAINED	 1u
#define STEER_UNDRAINING 3u /* undrain asked, the worker's listener not back yet */

struct steer; /* owned by the main thread */

/*
 * Loads the steering program and creates (or safely reuses, after a crash) its maps pinned
 * under /sys/fs/bpf/corral/<cfg->instance>/, mounting bpffs if needed. Sets the policy and
 * weights from cfg->steering for cfg->cores_n workers. On success *out is set and 0 returned.
 * On failure returns a negative errno and a one-line reason in err; the caller then runs on
 * the kernel's reuseport hash (steer == NULL everywhere below is allowed and means that).
 */
int steer_open(struct steer **out, const struct config *cfg, char *err, size_t errlen);

/*
 * The same for a binary upgrade taking over the instance from a live predecessor: its pins
 * are replaced by this process's own maps (so each process steers only to its own
 * listeners), and the predecessor's policy and, with as many workers, each core's weight and
 * drain state are copied into them instead of the config's values.
 */
int steer_open_takeover(struct steer **out, const struct config *cfg, char *err, size_t errlen);
/* Whether steer_open_takeover() carried a predecessor's state over (policy at least). */
bool steer_carried(const struct steer *s);
/* Whether the predecessor had this worker drained (its state carried over). */
bool steer_carried_drained(const struct steer *s, uint32_t worker);
/*
 * Attaches this process's program to the reuseport group of listener fd again (the group's
 * program is the last one attached: after a failed upgrade the successor's may be left).
 */
int steer_attach(struct steer *s, int fd);
/*
 * Pins this process's maps again where another process of the instance (a failed upgrade's
 * successor) replaced or removed them. 0 when every map is pinned as ours. NULL is fine.
 */
int steer_repin(struct steer *s);

/*
 * Registers worker's listener fd (already listening) for listen address listen_idx: puts it
 * in the socket array and attaches the program to its reuseport group (once per group).
 * Also used to put a listener back after undrain (listen() again). Thread-safe for
 * different workers. Returns 0 or -errno.
 */
int steer_register(struct steer *s, uint32_t listen_idx, uint32_t worker, int fd);

/*
 * Hands the pin folder and every pin in it to uid:gid, before a privilege drop, so that the
 * unprivileged daemon can still open and unpin them at shutdown. NULL s: 0. 0 or -errno.
 */
int steer_chown(struct steer *s, uid_t uid, gid_t gid);

/* The worker's per-core line in the mmapped per-core array (NULL when s is NULL). */
struct steer_core *steer_core(struct steer *s, uint32_t worker);

/* Runtime changes (main thread). Return 0, -EINVAL (unknown policy/core), or -errno. */
int steer_set_policy(struct steer *s, const char *name);
int steer_set_weight(struct steer *s, uint32_t worker, uint32_t weight);
/*
 * drained true: no policy picks the worker from now on. false: the undrain is only marked
 * pending (the worker is still skipped) until the worker calls steer_undrain_done() with
 * its listener back in the map: a policy that picked it earlier would find an empty slot.
 */
int steer_set_drained(struct steer *s, uint32_t worker, bool drained);
const char *steer_policy_name(const struct steer *s); /* "kernel-hash" when s is NULL */

/*
 * Worker thread, with its listener listening and registered: ends a pending undrain (the
 * policies pick the worker again). Does nothing if the worker was drained again meanwhile
 * or no undrain is pending. NULL s is fine.
 */
void steer_undrain_done(struct steer *s, uint32_t worker);

/* Per-worker counters kept by the program: connections steered to it, and fallbacks. */
uint64_t steer_steered(const struct steer *s, uint32_t worker);
uint64_t steer_fallbacks(const struct steer *s);

/* Unpins and frees everything (clean exit). NULL is fine. */
void steer_close(struct steer *s);

/*
 * Worker-side counter updates: plain relaxed atomic stores on the worker's own cache line,
 * no syscall. c may be NULL (kernel-hash mode): then they do nothing.
 */
void steer_conn_opened(struct steer_core *c);
/* had_request: the connection started a request (else it leaves the fresh count here). */
void steer_conn_closed(struct steer_core *c, bool had_request);
/* first: the connection's first request (it leaves the fresh count). */
void steer_req_started(struct steer_core *c, bool first);
void steer_req_ended(struct steer_core *c);
/* Called by the worker on each timer tick with its busy time since the last tick. */
void steer_tick(struct steer_core *c, uint64_t busy_ns, uint64_t interval_ns);
/*
 * Called by the worker on each timer tick with its listeners (fd -1 skipped): makes the
 * queued count (steered - taken) equal to their accept queues. One getsockopt per listener.
 */
void steer_resync(struct steer_core *c, const int *fds, uint32_t n);

#endif
