/* Control plane interface: what the daemon gives the control socket and the metrics listener. */
#ifndef CORRAL_ADMIN_H
#define CORRAL_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config-t.h"
#include "stats-t.h"
#include "tls-t.h"

/*
 * The daemon describes itself through struct admin_ops: plain callbacks, all of them called
 * on the main thread only (from ctl_service() / metrics_service()), never from a worker, so
 * they may read main-thread state without locks. Reads of worker state go through the
 * worker's stats block (relaxed loads, done here) or the daemon's own cross-thread fields.
 *
 * Every "action" callback returns 0 or a negative errno and, on failure, writes a one-line
 * reason for the operator into err (errlen bytes, NUL-terminated), e.g. "unknown policy
 * 'foo' (known: hash, round-robin, ...)". If it leaves err empty a reason is made from the
 * errno. Callbacks that are NULL answer "not supported" (-EOPNOTSUPP).
 */

#define ADMIN_ERR_MAX 256

enum admin_core_state {
	ADMIN_CORE_ACTIVE = 0,
	ADMIN_CORE_DRAINING,
};

/* One worker as the control plane sees it. Filled by ops->core(). */
struct admin_core {
	uint32_t cpu;		     /* the CPU the worker is pinned to */
	enum admin_core_state state; /* draining once `drain` was asked, until `undrain` */
	uint32_t weight;	     /* steering weight */
	uint64_t steered;	     /* steer_steered(), 0 in kernel-hash mode */
	uint64_t accept_queue;	     /* queued not-yet-accepted conns, see stats_listen_queue() */
	const struct stats_worker
		*stats; /* the worker's live block; read with relaxed loads here */
};

/* One backend. Filled by ops->backend(); counters summed over every worker. */
struct admin_backend {
	char addr[64];	     /* as in the config, e.g. "127.0.0.1:8080" */
	uint32_t weight;     /* effective weight */
	bool enabled;	     /* false: disabled by the operator */
	bool healthy;	     /* false: passive health check says down */
	uint64_t active;     /* exchanges in flight */
	uint64_t requests;   /* requests sent to it */
	uint64_t errors;     /* connect failures, resets, timeouts, bad responses */
	uint64_t lat_sum_us; /* sum of request latencies; mean = lat_sum_us / requests */
	/* health (proxy/health.c) */
	bool checks_on;	       /* active health checks configured for it */
	bool checked;	       /* a check has finished at least once */
	bool check_ok;	       /* the last check passed */
	uint64_t check_age_ms; /* since the last check ended */
	char check_result[64]; /* e.g. "200", "timeout after 1000 ms" */
	char reason[160];      /* why it is in its state */
	uint64_t checks;       /* checks finished */
	uint64_t checks_failed;
	uint64_t transitions; /* up <-> down changes */
};

/* One certificate a TLS listener serves, as loaded now. Filled by ops->cert(). */
struct admin_cert {
	uint32_t listener;	   /* listen[] index */
	char listen[64];	   /* that listener's address as configured */
	uint32_t index;		   /* certificates[] index: 0 is the default (no SNI, no match) */
	char file[CFG_PATH_MAX];   /* the cert file it was read from */
	struct tls_cert_info info; /* what the certificate says */
};

struct snapshot;
/*
 * certs_n/cert for a daemon: the certificates of the TLS listeners of snapshot s (main
 * thread, on the published snapshot), listen[] then certificates[] order.
 */
uint32_t ctl_snapshot_certs_n(const struct snapshot *s);
int ctl_snapshot_cert(const struct snapshot *s, uint32_t i, struct admin_cert *out);

/* How this process came to be: filled by ops->upgrade_info(). */
struct admin_upgrade {
	uint32_t count;	  /* upgrades in this line of processes; 0 = started plainly */
	int from_pid;	  /* the predecessor that started this process */
	int64_t at_unix;  /* when this process took over (seconds since the epoch) */
	char at[32];	  /* the same, ISO 8601 UTC */
	bool in_progress; /* this process is starting a successor right now */
};

struct admin_ops {
	void *ctx;	     /* passed back to every callback */
	const char *version; /* the daemon's version string, e.g. CORRAL_VERSION */

	/* --- reads (required) --- */
	uint32_t (*cores_n)(void *ctx);
	/* Fills *out for worker index i < cores_n(). Returns 0 or -EINVAL. */
	int (*core)(void *ctx, uint32_t i, struct admin_core *out);
	/* "bpf" when the steering program is attached, "kernel-hash" when running without it. */
	const char *(*steering_mode)(void *ctx);
	const char *(*policy)(void *ctx); /* current steering policy name */
	const char *(*config_path)(void *ctx);

	/* --- reads (optional: NULL means none) --- */
	uint32_t (*backends_n)(void *ctx);
	int (*backend)(void *ctx, uint32_t i, struct admin_backend *out);
	uint64_t (*steer_fallbacks)(void *ctx); /* SYNs the program left to the kernel hash */
	uint64_t (*config_version)(void *ctx);	/* snapshot version, bumped by every reload */
	/*
	 * The certificates of every TLS listener in the published snapshot, listen[] order then
	 * certificates[] order (`certs`, and `status`'s certificates). Fills *out for i <
	 * certs_n(); 0 or -ENOENT.
	 */
	uint32_t (*certs_n)(void *ctx);
	int (*cert)(void *ctx, uint32_t i, struct admin_cert *out);

	/* Readiness and liveness (optional): GET /ready and /healthz on the metrics listener. */
	bool (*accepting)(void *ctx); /* false once draining for shutdown: /ready answers 503 */
	/* 0 when the process and every worker are alive; else -1 and a one-line reason in why. */
	int (*alive)(void *ctx, char *why, size_t whylen);

	/* --- actions (optional: NULL answers "not supported") --- */
	int (*set_policy)(void *ctx, const char *name, char *err, size_t errlen);
	int (*set_weight)(void *ctx, uint32_t core, uint32_t weight, char *err, size_t errlen);
	/* drained true: drain (skip it in steering, shut its listener, let conns finish). */
	int (*set_drained)(void *ctx, uint32_t core, bool drained, char *err, size_t errlen);
	/*
	 * addr is matched against admin_backend.addr; unknown address: -ENOENT. Disabling the
	 * last enabled backend (every request would get 503) needs force, else -EBUSY.
	 */
	int (*backend_enable)(void *ctx, const char *addr, bool enabled, bool force, char *err,
			      size_t errlen);
	int (*backend_weight)(void *ctx, const char *addr, uint32_t weight, char *err,
			      size_t errlen);
	/* Re-read the config file like SIGHUP; a bad file is -EINVAL with the parser's message. */
	int (*reload)(void *ctx, char *err, size_t errlen);
	/* After a successful reload: the changed restart-only keys it did not apply, "" = none. */
	const char *(*reload_restart_keys)(void *ctx);
	/*
	 * Binary upgrade: start the successor. 0 = started; the reply to the client that asked is
	 * sent later by ctl_upgrade_done(). An upgrade already under way is -EBUSY.
	 */
	int (*upgrade)(void *ctx, char *err, size_t errlen);
	void (*upgrade_info)(void *ctx, struct admin_upgrade *out);
};

/*
 * Control socket (proxy/ctl.c). One JSON request per line, one JSON reply per line; see
 * docs/operations.md for the commands. Served on the main thread without ever blocking.
 */
struct ctl;

/*
 * An admin-plane listener (control socket, metrics) in its plane's epoll set. When an accept
 * fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the pending
 * connection stays queued and keeps the listener readable, so it leaves the epoll set until
 * the plane's next one-second tick instead of spinning the main thread's poll.
 */
struct admin_listen {
	bool paused; /* out of the epoll set until the next tick */
	bool gone;   /* handed off to a successor: never put back */
};

/* After a failed accept (err: its errno): pauses the listener when err is a starvation. */
void admin_listen_failed(struct admin_listen *l, int ep, int lfd, int err, const char *what);
/* On the plane's tick: puts a paused listener back. */
void admin_listen_tick(struct admin_listen *l, int ep, int lfd, uint64_t tag);

/*
 * Creates the Unix socket at path (mode 0600, parent folder created 0700 when missing). A
 * stale socket left by a dead process is replaced; a live one (connect() succeeds) is left
 * alone and -EADDRINUSE returned. ops must outlive the ctl. Returns 0 and sets *out, or a
 * negative errno with a one-line reason in err.
 */
int ctl_open(struct ctl **out, const char *path, const struct admin_ops *ops, char *err,
	     size_t errlen);
/*
 * The same for a binary upgrade's successor: the predecessor still serves path, so bind a
 * temporary name and rename it over path (no instant without a listener there).
 */
int ctl_open_takeover(struct ctl **out, const char *path, const struct admin_ops *ops, char *err,
		      size_t errlen);
/*
 * The result of the upgrade ops->upgrade started: answers every client waiting for it
 * ({"ok":true,"pid":PID} or the reason). NULL c is fine.
 */
void ctl_upgrade_done(struct ctl *c, int rc, int pid, const char *why);
/*
 * Before exiting after an upgrade: answers the clients that reached this process (accepting
 * those still queued) for at most timeout_ms; new ones find the successor. NULL is fine.
 */
void ctl_handoff(struct ctl *c, uint32_t timeout_ms);
/*
 * After a failed upgrade: if a successor renamed its socket over the path, binds the path
 * again for this process (by the same rename). 0 when the path is ours (again).
 */
int ctl_reclaim(struct ctl *c);
/* The one fd for the main loop to poll for POLLIN (an epoll fd: listener, clients, timer). */
int ctl_fd(const struct ctl *c);
/* Runs everything that is ready: accepts, reads, answers, writes, the 1 s rate sampler. */
void ctl_service(struct ctl *c);
/* Closes every client and the listener, unlinks the socket path. NULL is fine. */
void ctl_close(struct ctl *c);

/*
 * Metrics listener (proxy/metrics.c): Prometheus text exposition on GET /metrics, readiness
 * on GET /ready (200 "ready", or 503 "draining" once ops->accepting says false) and liveness on
 * GET /healthz (200 "ok", or 503 with ops->alive's reason). Binds addr (port 0 allowed), logs "metrics on ADDR:PORT" to stderr.
 */
struct metrics;

int metrics_open(struct metrics **out, const struct cfg_addr *addr, const struct admin_ops *ops,
		 char *err, size_t errlen);
/*
 * The same on a listening socket inherited from an upgrade's predecessor (the socket stays
 * the same: connections queued on it are not lost). Takes ownership of fd.
 */
int metrics_open_fd(struct metrics **out, int fd, const struct admin_ops *ops, char *err,
		    size_t errlen);
int metrics_fd(const struct metrics *m);	/* poll for POLLIN */
int metrics_listen_fd(const struct metrics *m); /* the listening socket (-1 for NULL) */
/*
 * Before handing the listener to an upgrade's successor: stops accepting and answers the
 * connections already accepted (each asks one thing), for at most timeout_ms. NULL is fine.
 */
void metrics_handoff(struct metrics *m, uint32_t timeout_ms);
uint16_t metrics_port(const struct metrics *m); /* the bound port (useful with port 0) */
void metrics_service(struct metrics *m);
void metrics_close(struct metrics *m);

#endif
