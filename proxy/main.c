/* corral's main thread: options, config, listeners, steering, workers, signals, reload, admin. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <urcu-qsbr.h>
#include "accesslog.h"
#include "admin.h"
#include "config.h"
#include "daemon.h"
#include "constants.h"
#include "health.h"
#include "privdrop.h"
#include "sdnotify.h"
#include "stats.h"
#include "steer.h"
#include "tls.h"
#include "upgrade.h"
#include "worker.h"

#define DEFAULT_CONFIG "/etc/corral/corral.yaml"

static struct daemon D;
/*
 * Internal: join a reuseport group that another process already listens in. Only the
 * binary-upgrade path sets it (a successor started by its predecessor); a plain start refuses
 * a live address, since joining would silently take over the other process's traffic.
 */
static bool join_live_group;

/* --- binary upgrade state (main thread only; see proxy/upgrade.h for the protocol) --- */
/* A scrape is answered in well under a millisecond; 1 s bounds a client that sends nothing. */
#define METRICS_HANDOFF_MS 1000
static char self_exe[PATH_MAX]; /* our binary's path as it was at start */
static char **self_argv;
static struct upgrade_env UE = { .fd = -1, .metrics_fd = -1 }; /* as a successor */
static bool privs_dropped; /* started as root, now runs as user: (no upgrade in place) */
/* false while the predecessor still serves the (shared) metrics listener */
static bool metrics_live = true;
/* As a predecessor: the successor being started. */
static struct {
	pid_t pid; /* 0 = none */
	int fd;	   /* our end of the socketpair, -1 = none */
	uint64_t deadline_ms;
	uint32_t ready_ms;
	char line[UPGRADE_LINE_MAX];
	size_t len;
} UP = { .fd = -1 };
static bool handing_over;	  /* the successor serves: drain and exit */
static time_t took_over_at;	  /* as a successor: when we said ready */
static struct ctl *admin_ctl;	  /* for the upgrade's deferred reply */
static struct metrics *admin_met; /* its listener goes to the successor */
static char config_path[CFG_PATH_MAX] = DEFAULT_CONFIG;
static uint64_t snap_version;
static struct health *HC; /* active health checks; NULL if it could not be set up */

static void usage(FILE *f)
{
	fprintf(f, "usage: corral [-c FILE] [--check] [--version] [--help]\n"
		   "  -c, --config FILE  configuration file (default " DEFAULT_CONFIG ")\n"
		   "  -t, --check        validate the configuration and exit (0 = valid)\n"
		   "  -V, --version      print the version and exit\n"
		   "  -h, --help         this text\n");
}

/* --- listeners ------------------------------------------------------------------------------- */

/*
 * Bursts of new connections queue in the backlog while a worker is busy: limits.listen_backlog,
 * else net.core.somaxconn (the kernel's cap on any backlog, so the host's sysctl decides).
 */
static int listen_backlog(const struct config *cfg)
{
	FILE *f;
	int v = 0;

	if (cfg->limits.listen_backlog)
		return (int)cfg->limits.listen_backlog;
	f = fopen("/proc/sys/net/core/somaxconn", "re");
	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v > 0 ? v : LISTEN_BACKLOG_FALLBACK;
}

static int listener_open(const struct cfg_addr *a, uint16_t port, int backlog, uint16_t *bound)
{
	struct sockaddr_storage ss;
	socklen_t sl = a->len;
	int fd, one = 1;

	memcpy(&ss, &a->ss, a->len);
	if (ss.ss_family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto fail;
	if (ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, backlog) < 0)
		goto fail;
	sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		goto fail;
	*bound = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					       : ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
fail : {
	int e = -errno;

	close(fd);
	return e;
}
}

static void addr_with_port(const struct cfg_addr *a, uint16_t port, char *out, size_t n)
{
	char ip[INET6_ADDRSTRLEN];

	if (a->ss.ss_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)&a->ss)->sin_addr, ip, sizeof(ip));
		snprintf(out, n, "%s:%u", ip, port);
	} else {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&a->ss)->sin6_addr, ip,
			  sizeof(ip));
		snprintf(out, n, "[%s]:%u", ip, port);
	}
}

/*
 * Port 0: a throwaway socket (SO_REUSEPORT, bound, never listening) learns a kernel-chosen
 * port, and every worker's listener binds that port explicitly. A listener that had bound
 * port 0 itself would give the port back when drained and pick a new one on undrain.
 */
static int port_reserve(const struct cfg_addr *a, uint16_t *port, int *holder)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd, one = 1;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    (a->ss.ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	*port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					      : ((struct sockaddr_in6 *)&ss)->sin6_port);
	*holder = fd;
	return 0;
}

/* True when /proc/net/FILE lists a socket in LISTEN state (st 0A) on local port `port`. */
static bool proc_net_listens(const char *file, uint16_t port)
{
	char path[64], line[512];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/net/%s", file);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned int lport, st;
		char laddr[64];

		/* "  sl  local_address rem_address   st ..."; the header line does not scan. */
		if (sscanf(line, " %*u: %63[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", laddr, &lport,
			   &st) == 3)
			found = lport == port && st == 0x0A;
	}
	fclose(f);
	return found;
}

/*
 * True when another socket listens on a's address and port: a bind without SO_REUSEPORT fails
 * with EADDRINUSE (SO_REUSEADDR keeps TIME_WAIT leftovers from counting), and the kernel lists a
 * listening socket on that port. The second look keeps a socket that is only bound (a port
 * reservation, an outgoing connection's local port) from counting as a live listener.
 */
static bool listen_addr_live(const struct cfg_addr *a, uint16_t port)
{
	int fd, one = 1;
	bool busy;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (a->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	busy = bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 && errno == EADDRINUSE;
	close(fd);
	return busy && (proc_net_listens("tcp", port) || proc_net_listens("tcp6", port));
}

/*
 * A plain start on an address another process listens on fails, before anything shared with
 * that process (BPF pins, the control socket) is touched. Port 0 is always a fresh port.
 */
static int listen_addrs_check(const struct config *cfg)
{
	for (uint32_t i = 0; i < cfg->listen_n && !join_live_group; i++) {
		const struct cfg_addr *a = &cfg->listen[i];
		uint16_t port = ntohs(a->ss.ss_family == AF_INET
					      ? ((const struct sockaddr_in *)&a->ss)->sin_port
					      : ((const struct sockaddr_in6 *)&a->ss)->sin6_port);

		if (port != 0 && listen_addr_live(a, port)) {
			log_err("listen %s: another process already listens on this address (is "
				"another corral running with this config?); refusing to start",
				a->text);
			return -EADDRINUSE;
		}
	}
	return 0;
}

static int listeners_create(const struct config *cfg)
{
	int backlog = listen_backlog(cfg);

	D.listen_backlog = backlog;
	char text[80];

	log_info("listen backlog %d (%s)", backlog,
		 cfg->limits.listen_backlog ? "limits.listen_backlog" : "net.core.somaxconn");
	for (uint32_t i = 0; i < cfg->listen_n; i++) {
		const struct cfg_addr *a = &cfg->listen[i];
		uint16_t port, bound = 0;
		int holder = -1;

		port = ntohs(a->ss.ss_family == AF_INET
				     ? ((const struct sockaddr_in *)&a->ss)->sin_port
				     : ((const struct sockaddr_in6 *)&a->ss)->sin6_port);
		/* A successor joins its predecessor's groups, kernel-chosen ports included. */
		if (port == 0 && i < UE.ports_n && UE.ports[i])
			port = UE.ports[i];
		if (port == 0) {
			int r = port_reserve(a, &port, &holder);

			if (r < 0) {
				log_err("listen %s: %s", a->text, strerror(-r));
				return r;
			}
		}
		for (uint32_t w = 0; w < cfg->cores_n; w++) {
			int fd = listener_open(a, port, backlog, &bound);

			if (fd < 0) {
				log_err("listen %s: %s", a->text, strerror(-fd));
				if (holder >= 0)
					close(holder);
				return fd;
			}
			D.listen_fds[w][i] = fd;
			if (D.steer) {
				int r = steer_register(D.steer, i, w, fd);

				if (r < 0)
					log_warn("steering: register listener %u/%u: %s", i, w,
						 strerror(-r));
			}
		}
		if (holder >= 0)
			close(holder);
		D.listen_port[i] = port;
		addr_with_port(a, port, text, sizeof(text));
		log_info("listening on %s", text);
	}
	return 0;
}

/* --- snapshots and the backend table ------------------------------------------------------------ */

static uint32_t backend_gen_last;    /* generations are never reused */
static uint64_t backend_retire_last; /* free ids are reused oldest-retired first */

/*
 * The id for addr in a snapshot being built: the id the live snapshot gives it, else the free
 * id retired longest ago. Ids of the live snapshot stay taken until it is replaced, and ids
 * taken by this build are no longer free, so no id names two addresses at once.
 */
static int backend_id_for(const struct snapshot *live, const char *addr)
{
	int best = -1;

	if (live)
		for (uint32_t i = 0; i < live->cfg.backends_n; i++)
			if (strcmp(D.backends[live->backend_id[i]].addr, addr) == 0)
				return (int)live->backend_id[i];
	for (int id = 0; id < BACKEND_IDS_MAX; id++)
		if (!D.backends[id].gen &&
		    (best < 0 || D.backends[id].retired_seq < D.backends[best].retired_seq))
			best = id;
	return best;
}

/*
 * The live snapshot's tls settings for backend id, or NULL when it does not list the id. A
 * reload that changes them gives the id a new generation: no connection pooled under the old
 * settings (plaintext, another CA or name, another session) is ever reused under the new.
 */
static const struct cfg_backend_tls *live_backend_tls(const struct snapshot *live, uint32_t id)
{
	for (uint32_t i = 0; live && i < live->cfg.backends_n; i++)
		if (live->backend_id[i] == id)
			return &live->cfg.backends[i].tls;
	return NULL;
}

/* Main thread: the counters an id's earlier assignments left in the workers' blocks. */
static void backend_base_take(uint32_t id)
{
	struct backend_rt *b = &D.backends[id];

	b->base_requests = b->base_errors = b->base_lat_sum_us = 0;
	for (uint32_t w = 0; w < D.workers_n; w++) {
		const struct stats_backend *sb = &D.workers[w]->bstats[id];

		b->base_requests += STAT_GET(sb->requests);
		b->base_errors += STAT_GET(sb->errors);
		b->base_lat_sum_us += STAT_GET(sb->lat_sum_us);
	}
}

/* Frees a snapshot no worker can read any more, and its backends' TLS contexts. */
static void snapshot_free_btls(struct snapshot *s)
{
	for (uint32_t i = 0; s && i < CFG_BACKENDS_MAX; i++) {
		tls_client_free(s->btls[i]);
		s->btls[i] = NULL;
	}
}

/*
 * Builds the client context of every TLS backend of s (reading the CA files again: config_load
 * checked them, but they may have changed since). 0, or -EINVAL / -ENOMEM with a
 * "backends[N].tls.KEY: message" in err; nothing of it is left built then.
 */
static int snapshot_btls(struct snapshot *s, char *err, size_t errlen)
{
	const struct config *cfg = &s->cfg;
	struct tls_ctx_err e;
	int r;

	for (uint32_t i = 0; i < cfg->backends_n; i++) {
		if (!cfg->backends[i].tls.on)
			continue;
		r = tls_client_new(&s->btls[i], &cfg->backends[i], &e);
		if (r == 0)
			continue;
		s->btls[i] = NULL;
		snprintf(err, errlen, "backends[%u].tls%s%s: %s", i, e.key[0] ? "." : "", e.key,
			 r == -ENOMEM ? "out of memory" : e.msg);
		snapshot_free_btls(s);
		return r;
	}
	return 0;
}

/*
 * Builds the next snapshot and its id map. Touches only ids no published snapshot lists (a
 * new address's) and the weights of kept ones; removed ids are freed by snapshot_publish.
 */
/*
 * The process-wide TLS session-ticket keys (tls.h): one pool for every listener, worker and
 * snapshot, so a ticket issued on one core resumes on another and across reloads. Created
 * with the first snapshot; rotated by the main loop (tls_keys_maybe_rotate).
 */
static struct tls_keys *tls_keys;

static void snapshot_free(struct snapshot *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < CFG_LISTEN_MAX; i++)
		tls_server_free(s->tls[i]);
	snapshot_free_btls(s);
	free(s);
}

/*
 * Builds every TLS listener's contexts for s (reading the certificate and key files again:
 * config_load checked them, but they may have changed since). 0, or -EINVAL / -ENOMEM with
 * a "listen[N].tls...: message" in err; nothing of s's TLS is left built then.
 */
static int snapshot_tls(struct snapshot *s, char *err, size_t errlen)
{
	const struct config *cfg = &s->cfg;
	struct tls_ctx_err e;
	int r;

	if (!tls_keys && config_tls_listener(cfg) >= 0) {
		r = tls_keys_new(&tls_keys, now_ms());
		if (r < 0) {
			snprintf(err, errlen, "TLS ticket keys: %s", strerror(-r));
			return r;
		}
	}
	for (uint32_t i = 0; i < cfg->listen_n; i++) {
		char where[48] = "";

		if (!cfg->listen_tls[i].on)
			continue;
		r = tls_server_new(&s->tls[i], &cfg->listen_tls[i], tls_keys, &e);
		if (r == 0)
			continue;
		s->tls[i] = NULL;
		if (e.cert >= 0)
			snprintf(where, sizeof(where), ".certificates[%d]", e.cert);
		snprintf(err, errlen, "listen[%u].tls%s%s%s: %s", i, where, e.key[0] ? "." : "",
			 e.key, r == -ENOMEM ? "out of memory" : e.msg);
		for (uint32_t j = 0; j < i; j++) {
			tls_server_free(s->tls[j]);
			s->tls[j] = NULL;
		}
		return r;
	}
	return 0;
}

static struct snapshot *snapshot_build(const struct config *cfg, char *err, size_t errlen)
{
	struct snapshot *s = calloc(1, sizeof(*s));

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->cfg = *cfg;
	/* TLS first: a refused certificate or CA file must leave no backend id assigned. */
	if (snapshot_tls(s, err, errlen) < 0) {
		free(s);
		return NULL;
	}
	if (snapshot_btls(s, err, errlen) < 0) {
		snapshot_free(s);
		return NULL;
	}
	s->version = ++snap_version;
	for (uint32_t i = 0; i < cfg->backends_n; i++) {
		int id = backend_id_for(D.snap, cfg->backends[i].addr.text);
		struct backend_rt *b;

		BUG_ON(id < 0);
		b = &D.backends[id];
		if (!b->gen) {
			snprintf(b->addr, sizeof(b->addr), "%s", cfg->backends[i].addr.text);
			b->gen = ++backend_gen_last;
			b->since_ms = now_ms();
			backend_base_take((uint32_t)id);
			__atomic_store_n(&b->enabled, 1, __ATOMIC_RELAXED);
			__atomic_store_n(&b->down_until_ms, 0, __ATOMIC_RELAXED);
		} else {
			const struct cfg_backend_tls *was = live_backend_tls(D.snap, (uint32_t)id);

			/* The live snapshot keeps its own id_gen copy: only the new one changes. */
			if (was && memcmp(was, &cfg->backends[i].tls, sizeof(*was)) != 0)
				b->gen = ++backend_gen_last;
		}
		BUG_ON(s->id_gen[id] != 0);
		s->backend_id[i] = (uint32_t)id;
		s->id_gen[id] = b->gen;
		__atomic_store_n(&b->weight, cfg->backends[i].weight, __ATOMIC_RELAXED);
	}
	return s;
}

static void snapshot_publish(struct snapshot *s)
{
	struct snapshot *old = D.snap;

	rcu_assign_pointer(D.snap, s);
	if (old) {
		/* Every worker passes a quiescent point (or is offline) before old is freed. */
		synchronize_rcu();
		/* Now no worker reads old: the ids only it listed are free. */
		for (uint32_t i = 0; i < old->cfg.backends_n; i++) {
			uint32_t id = old->backend_id[i];

			if (!s->id_gen[id]) {
				D.backends[id].gen = 0;
				D.backends[id].retired_seq = ++backend_retire_last;
			}
		}
		snapshot_free(old);
	}
}

static void steering_apply(const struct config *cfg)
{
	if (!D.steer)
		return;
	if (cfg->steering.policy[0] && steer_set_policy(D.steer, cfg->steering.policy) < 0)
		log_warn("steering: policy %s rejected", cfg->steering.policy);
	for (uint32_t i = 0; i < cfg->cores_n; i++)
		steer_set_weight(D.steer, i,
				 i < cfg->steering.weights_n ? cfg->steering.weights[i] : 1);
}

/* The start-up configuration: restart-only keys keep these values over every reload. */
static const struct config *startup_cfg;
/* Restart-only keys the last reload found changed and did not apply ("" = none). */
static char reload_restart_keys[512];

static void restart_key(const char *key)
{
	size_t n = strlen(reload_restart_keys);

	snprintf(reload_restart_keys + n, sizeof(reload_restart_keys) - n, "%s%s", n ? ", " : "",
		 key);
}

static bool same_addr_list(const struct cfg_addr *a, uint32_t an, const struct cfg_addr *b,
			   uint32_t bn)
{
	if (an != bn)
		return false;
	for (uint32_t i = 0; i < an; i++)
		if (strcmp(a[i].text, b[i].text) != 0)
			return false;
	return true;
}

/* Each line of a config's warnings, to stderr (--check) or the log. */
static void config_warn(const char *w, bool to_log)
{
	while (*w) {
		const char *nl = strchr(w, '\n');
		int n = nl ? (int)(nl - w) : (int)strlen(w);

		if (to_log)
			log_warn("%.*s", n, w);
		else
			fprintf(stderr, "corral: warning: %.*s\n", n, w);
		w += n + (nl ? 1 : 0);
	}
}

/*
 * Keys fixed at start-up (listeners, worker threads, tables and buffer rings, the access log
 * and admin listeners are set up once): a new value is not applied, the running one stays in
 * cfg, and the key is named in reload_restart_keys for the reply and the log.
 */
static void restart_only_keep(struct config *cfg)
{
	const struct config *run = startup_cfg;
	struct cfg_limits *l = &cfg->limits;
	const struct cfg_limits *rl = &run->limits;

	reload_restart_keys[0] = 0;
	if (!same_addr_list(cfg->listen, cfg->listen_n, run->listen, run->listen_n)) {
		restart_key("listen");
		memcpy(cfg->listen, run->listen, sizeof(cfg->listen));
		cfg->listen_n = run->listen_n;
		/* The running listeners keep the TLS settings (and certificates) they have now. */
		memcpy(cfg->listen_tls, D.snap->cfg.listen_tls, sizeof(cfg->listen_tls));
	}
	/* Workers read the PROXY expectation of their listeners once, at start-up. */
	if (memcmp(cfg->listen_pp, run->listen_pp, sizeof(cfg->listen_pp)) != 0) {
		restart_key("listen.proxy_protocol");
		memcpy(cfg->listen_pp, run->listen_pp, sizeof(cfg->listen_pp));
	}
	if (cfg->cores_n != run->cores_n ||
	    memcmp(cfg->cores, run->cores, run->cores_n * sizeof(run->cores[0])) != 0) {
		restart_key("workers.cores");
		memcpy(cfg->cores, run->cores, sizeof(cfg->cores));
		if (cfg->steering.weights_n && cfg->steering.weights_n != run->cores_n) {
			/* One weight per running core: weights for other cores cannot apply. */
			restart_key("steering.weights");
			cfg->steering = (struct cfg_steering){ .weights_n = 0 };
			memcpy(cfg->steering.policy, D.snap->cfg.steering.policy,
			       sizeof(cfg->steering.policy));
			memcpy(cfg->steering.weights, D.snap->cfg.steering.weights,
			       sizeof(cfg->steering.weights));
			cfg->steering.weights_n = D.snap->cfg.steering.weights_n;
		}
		cfg->cores_n = run->cores_n;
	}
	if (strcmp(cfg->instance, run->instance) != 0) {
		restart_key("instance");
		memcpy(cfg->instance, run->instance, sizeof(cfg->instance));
	}
	if (strcmp(cfg->admin.socket, run->admin.socket) != 0)
		restart_key("admin.socket");
	if (cfg->admin.metrics_on != run->admin.metrics_on ||
	    (run->admin.metrics_on && strcmp(cfg->admin.metrics.text, run->admin.metrics.text)))
		restart_key("admin.metrics");
	cfg->admin = run->admin;
	if (cfg->access_log.on != run->access_log.on ||
	    (run->access_log.on && strcmp(cfg->access_log.path, run->access_log.path)))
		restart_key("access_log.path");
	else if (run->access_log.on && cfg->access_log.format != run->access_log.format)
		restart_key("access_log.format");
	cfg->access_log = run->access_log;
#define KEEP(field)                                                                                \
	do {                                                                                       \
		if (l->field != rl->field)                                                         \
			restart_key("limits." #field);                                             \
		l->field = rl->field;                                                              \
	} while (0)
	KEEP(connections_per_core);
	KEEP(buffers_per_core);
	KEEP(buffer_bytes);
	KEEP(listen_backlog);
#undef KEEP
	/* Head buffers and the header table are sized at start-up: lowering applies. */
	if (l->header_bytes_max > rl->header_bytes_max) {
		restart_key("limits.header_bytes_max (above its start-up value)");
		l->header_bytes_max = rl->header_bytes_max;
	}
	if (l->headers_max > rl->headers_max) {
		restart_key("limits.headers_max (above its start-up value)");
		l->headers_max = rl->headers_max;
	}
}

static int do_reload_cfg(char *err, size_t errlen);

/*
 * systemd: RELOADING=1 with the monotonic time (systemd >= 253 wants it to tell this reload
 * from an older one), then READY=1 whether the new file was taken or refused, since the old
 * configuration goes on serving either way.
 */
static int do_reload(char *err, size_t errlen)
{
	char msg[96];
	int r;

	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
		 (unsigned long long)(now_ns() / 1000));
	sdnotify_send(msg);
	r = do_reload_cfg(err, errlen);
	if (r == 0 && reload_restart_keys[0]) {
		char st[sizeof(reload_restart_keys) + 96];

		snprintf(st, sizeof(st),
			 "READY=1\nSTATUS=serving (configuration reloaded; not applied until a "
			 "restart: %s)",
			 reload_restart_keys);
		sdnotify_send(st);
	} else {
		sdnotify_send(r == 0 ? "READY=1\nSTATUS=serving (configuration reloaded)"
				     : "READY=1\nSTATUS=serving (reload refused, old configuration "
				       "kept)");
	}
	return r;
}

static int do_reload_cfg(char *err, size_t errlen)
{
	struct config *cfg = malloc(sizeof(*cfg));
	struct snapshot *s;
	int r;

	if (!cfg)
		return -ENOMEM;
	r = config_load(cfg, config_path, err, errlen);
	if (r < 0) {
		log_err("reload rejected, old configuration kept: %s", err);
		free(cfg);
		return -EINVAL;
	}
	config_warn(cfg->warnings, true);
	restart_only_keep(cfg);
	s = snapshot_build(cfg, err, errlen);
	free(cfg);
	if (!s) {
		/* A certificate that went bad since the check: the old ones keep serving. */
		log_err("reload rejected, old configuration kept: %s", err);
		return -EINVAL;
	}
	steering_apply(&s->cfg);
	snapshot_publish(s);
	health_sync(HC, s);
	if (reload_restart_keys[0])
		log_warn("configuration reloaded (version %llu, %u backends); changed but not "
			 "applied until a restart: %s",
			 (unsigned long long)s->version, s->cfg.backends_n, reload_restart_keys);
	else
		log_info("configuration reloaded (version %llu, %u backends)",
			 (unsigned long long)s->version, s->cfg.backends_n);
	return 0;
}

/*
 * Passive health (main thread, the only writer of backend health): a backend that any worker
 * failed to connect to is parked for timeouts.backend_park_ms after the failure, so that every core
 * skips it instead of each paying its own connect timeouts. Connections already in flight
 * are not touched, and a parked backend is still tried when every backend is parked.
 */
static void health_scan(void)
{
	for (uint32_t b = 0; b < BACKEND_IDS_MAX; b++) {
		uint64_t last = 0, park;

		if (!D.backends[b].gen)
			continue;
		for (uint32_t i = 0; i < D.workers_n; i++) {
			uint64_t t = STAT_GET(D.workers[i]->bstats[b].connect_fail_ms);

			if (t > last && t >= D.backends[b].since_ms)
				last = t;
		}
		park = D.snap->cfg.timeouts.backend_park_ms;
		if (last &&
		    last + park > __atomic_load_n(&D.backends[b].down_until_ms, __ATOMIC_RELAXED))
			__atomic_store_n(&D.backends[b].down_until_ms, last + park,
					 __ATOMIC_RELAXED);
	}
}

/*
 * SIGUSR1 (logrotate's postrotate, as for NGINX): reopens the access log at its configured
 * path. dup2 swaps the file behind the shared fd number in one step, so the workers keep
 * writing to the same fd and never see a closed one; writes already in flight finish on the
 * old file.
 */
static void logs_reopen(void)
{
	const char *path = D.snap->cfg.access_log.path;
	int fd;

	if (D.alog_fd < 0) {
		log_info("signal USR1: no log file to reopen");
		return;
	}
	fd = alog_open(path);
	if (fd < 0) {
		log_err("access log %s: reopen: %s (still writing to the old file)", path,
			strerror(-fd));
		return;
	}
	if (dup3(fd, D.alog_fd, O_CLOEXEC) < 0)
		log_err("access log %s: reopen: %s (still writing to the old file)", path,
			strerror(errno));
	else
		log_info("access log %s reopened", path);
	close(fd);
}

/* --- admin ops (main thread only) ------------------------------------------------------------------- */

static uint32_t op_cores_n(void *ctx)
{
	return D.workers_n;
}

static int op_core(void *ctx, uint32_t i, struct admin_core *out)
{
	struct worker *w;
	int64_t q = 0;
	uint32_t asked;

	if (i >= D.workers_n)
		return -EINVAL;
	w = D.workers[i];
	memset(out, 0, sizeof(*out));
	out->cpu = w->cpu;
	/* Active only once the worker listens again and steering picks it, not at the ask. */
	asked = __atomic_load_n(&w->drain_req, __ATOMIC_RELAXED);
	out->state = (asked & 1) || !worker_drain_applied(w, asked) ? ADMIN_CORE_DRAINING
								    : ADMIN_CORE_ACTIVE;
	out->weight = i < D.snap->cfg.steering.weights_n ? D.snap->cfg.steering.weights[i] : 1;
	if (D.steer) {
		struct steer_core *sc = steer_core(D.steer, i);

		out->weight = __atomic_load_n(&sc->weight, __ATOMIC_RELAXED);
	}
	out->steered = steer_steered(D.steer, i);
	for (uint32_t l = 0; l < w->listen_n; l++) {
		int64_t v = stats_listen_queue(w->listen_fd[l]);

		if (v > 0)
			q += v;
	}
	out->accept_queue = (uint64_t)q;
	out->stats = w->stats;
	return 0;
}

static const char *op_mode(void *ctx)
{
	return D.steer ? "bpf" : "kernel-hash";
}

static const char *op_policy(void *ctx)
{
	return steer_policy_name(D.steer);
}

static const char *op_config_path(void *ctx)
{
	return config_path;
}

static uint32_t op_backends_n(void *ctx)
{
	return D.snap->cfg.backends_n;
}

static int op_backend(void *ctx, uint32_t i, struct admin_backend *out)
{
	const struct snapshot *s = D.snap;
	struct health_view hv;
	struct backend_rt *b;
	uint64_t now = now_ms();
	uint32_t id;

	if (i >= s->cfg.backends_n)
		return -EINVAL;
	id = s->backend_id[i];
	b = &D.backends[id];
	memset(out, 0, sizeof(*out));
	snprintf(out->addr, sizeof(out->addr), "%s", b->addr);
	out->weight = __atomic_load_n(&b->weight, __ATOMIC_RELAXED);
	out->enabled = __atomic_load_n(&b->enabled, __ATOMIC_RELAXED);
	out->healthy = !__atomic_load_n(&b->down, __ATOMIC_RELAXED) &&
		       __atomic_load_n(&b->down_until_ms, __ATOMIC_RELAXED) <= now;
	health_view(HC, id, &hv);
	out->checks_on = hv.checks_on;
	out->checked = hv.checked;
	out->check_ok = hv.last_ok;
	out->check_age_ms = hv.checked ? now - hv.last_ms : 0;
	snprintf(out->check_result, sizeof(out->check_result), "%s", hv.last_result);
	snprintf(out->reason, sizeof(out->reason), "%s", hv.reason);
	out->checks = hv.checks;
	out->checks_failed = hv.checks_failed;
	out->transitions = hv.transitions;
	for (uint32_t w = 0; w < D.workers_n; w++) {
		const struct stats_backend *sb = &D.workers[w]->bstats[id];

		out->active += STAT_GET(sb->active);
		out->requests += STAT_GET(sb->requests);
		out->errors += STAT_GET(sb->errors);
		out->lat_sum_us += STAT_GET(sb->lat_sum_us);
	}
	out->requests -= b->base_requests;
	out->errors -= b->base_errors;
	out->lat_sum_us -= b->base_lat_sum_us;
	return 0;
}

static uint64_t op_fallbacks(void *ctx)
{
	return steer_fallbacks(D.steer);
}

static uint64_t op_config_version(void *ctx)
{
	return D.snap->version;
}

static uint32_t op_certs_n(void *ctx)
{
	return ctl_snapshot_certs_n(D.snap);
}

static int op_cert(void *ctx, uint32_t i, struct admin_cert *out)
{
	return ctl_snapshot_cert(D.snap, i, out);
}

static int need_steer(char *err, size_t errlen)
{
	if (D.steer)
		return 0;
	snprintf(err, errlen, "steering is off (kernel-hash mode): %s", D.steer_err);
	return -EOPNOTSUPP;
}

static int op_set_policy(void *ctx, const char *name, char *err, size_t errlen)
{
	int r = need_steer(err, errlen);

	if (r)
		return r;
	r = steer_set_policy(D.steer, name);
	if (r == -EINVAL)
		snprintf(err, errlen,
			 "unknown policy '%s' (known: hash, round-robin, least-conn, least-load, "
			 "power-of-two, weighted, cpu-local)",
			 name);
	else if (r == 0)
		log_info("steering policy set to %s", name);
	return r;
}

/* The same checks as steering.weights in the file: each 0..1000, not all 0. */
static int op_set_weight(void *ctx, uint32_t core, uint32_t weight, char *err, size_t errlen)
{
	uint32_t w[CFG_CORES_MAX];
	char key[40];
	int r = need_steer(err, errlen);

	if (r)
		return r;
	if (core >= D.workers_n) {
		snprintf(err, errlen, "unknown core %u (workers: 0..%u)", core, D.workers_n - 1);
		return -EINVAL;
	}
	snprintf(key, sizeof(key), "steering.weights[%u]", core);
	r = config_check_weight(key, weight, err, errlen);
	for (uint32_t i = 0; r == 0 && i < D.workers_n; i++)
		w[i] = i == core
			       ? weight
			       : __atomic_load_n(&steer_core(D.steer, i)->weight, __ATOMIC_RELAXED);
	if (r == 0)
		r = config_check_core_weights(w, D.workers_n, err, errlen);
	if (r == 0)
		r = steer_set_weight(D.steer, core, weight);
	if (r == 0)
		log_info("core %u: steering weight %u", core, weight);
	return r;
}

static int op_set_drained(void *ctx, uint32_t core, bool drained, char *err, size_t errlen)
{
	uint32_t active = 0, token;
	uint64_t t0;

	if (core >= D.workers_n) {
		snprintf(err, errlen, "unknown core %u (workers: 0..%u)", core, D.workers_n - 1);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < D.workers_n; i++)
		if (i != core && !worker_drain_asked(D.workers[i]))
			active++;
	if (drained && active == 0) {
		snprintf(err, errlen, "refusing to drain the last active core");
		return -EBUSY;
	}
	/*
	 * Drain: steering first, so that no new SYN picks the core, then the listener. Undrain:
	 * the worker listens again, then ends the pending undrain in the steering map itself.
	 * The answer waits for the worker either way, so that when `corralctl drain` returns no
	 * new connection reaches the core, and when `undrain` returns they do.
	 */
	if (D.steer)
		steer_set_drained(D.steer, core, drained);
	token = worker_request_drain(D.workers[core], drained);
	for (t0 = now_ms(); !worker_drain_applied(D.workers[core], token);) {
		if (now_ms() - t0 >= DRAIN_APPLY_WAIT_MS) {
			snprintf(err, errlen,
				 "core %u has not %s within %u ms (`stats` shows when it has)",
				 core, drained ? "shut its listener" : "listened again",
				 DRAIN_APPLY_WAIT_MS);
			log_warn("core %u: %s", core, err);
			return -ETIMEDOUT;
		}
		usleep(1000);
	}
	log_info("core %u %s", core, drained ? "draining" : "undrained");
	return 0;
}

/* The config index of the backend at addr in the live snapshot, or -1. */
static int backend_find(const char *addr)
{
	const struct snapshot *s = D.snap;

	for (uint32_t i = 0; i < s->cfg.backends_n; i++)
		if (strcmp(D.backends[s->backend_id[i]].addr, addr) == 0)
			return (int)i;
	return -1;
}

static int op_backend_enable(void *ctx, const char *addr, bool enabled, bool force, char *err,
			     size_t errlen)
{
	const struct snapshot *s = D.snap;
	int bi = backend_find(addr);
	uint32_t others = 0;

	if (bi < 0) {
		snprintf(err, errlen, "unknown backend %s", addr);
		return -ENOENT;
	}
	for (uint32_t i = 0; i < s->cfg.backends_n; i++)
		if ((int)i != bi &&
		    __atomic_load_n(&D.backends[s->backend_id[i]].enabled, __ATOMIC_RELAXED))
			others++;
	/* Like draining the last core: every request would get 503. */
	if (!enabled && others == 0 && !force) {
		snprintf(err, errlen,
			 "refusing to disable the last enabled backend (every request would get "
			 "503; --force does it anyway)");
		return -EBUSY;
	}
	__atomic_store_n(&D.backends[s->backend_id[bi]].enabled, enabled ? 1 : 0, __ATOMIC_RELAXED);
	log_info("backend %s %s%s", addr, enabled ? "enabled" : "disabled",
		 !enabled && others == 0 ? " (forced: no backend is enabled now)" : "");
	return 0;
}

/* The same checks as backends[i].weight in the file: 0..1000, not every backend 0. */
static int op_backend_weight(void *ctx, const char *addr, uint32_t weight, char *err, size_t errlen)
{
	const struct snapshot *s = D.snap;
	uint32_t w[CFG_BACKENDS_MAX];
	int bi = backend_find(addr);
	char key[40];
	int r;

	if (bi < 0) {
		snprintf(err, errlen, "unknown backend %s", addr);
		return -ENOENT;
	}
	snprintf(key, sizeof(key), "backends[%d].weight", bi);
	r = config_check_weight(key, weight, err, errlen);
	if (r)
		return r;
	for (uint32_t i = 0; i < s->cfg.backends_n; i++)
		w[i] = (int)i == bi ? weight
				    : __atomic_load_n(&D.backends[s->backend_id[i]].weight,
						      __ATOMIC_RELAXED);
	r = config_check_backend_weights(w, s->cfg.backends_n, err, errlen);
	if (r)
		return r;
	__atomic_store_n(&D.backends[s->backend_id[bi]].weight, weight, __ATOMIC_RELAXED);
	log_info("backend %s: weight %u", addr, weight);
	return 0;
}

static int op_reload(void *ctx, char *err, size_t errlen)
{
	return do_reload(err, errlen);
}

static const char *op_reload_restart_keys(void *ctx)
{
	return reload_restart_keys;
}

static bool op_accepting(void *ctx)
{
	return !D.stopping;
}

/*
 * A worker ticks every 10 ms and stamps each tick; one whose stamp is this old is stuck (or
 * gone). Generous, because a liveness failure gets the process killed.
 */
#define HEARTBEAT_STALE_MS 5000
/* Workers that finished their graceful stop (joined): no heartbeat expected from them. */
static bool worker_done[CFG_CORES_MAX];

static int op_alive(void *ctx, char *why, size_t whylen)
{
	uint64_t now = now_ms();

	for (uint32_t i = 0; i < D.workers_n; i++) {
		uint64_t hb = STAT_GET(D.workers[i]->stats->heartbeat_ms);

		if (worker_done[i])
			continue;
		if (hb + HEARTBEAT_STALE_MS < now) {
			snprintf(why, whylen, "worker %u: no heartbeat for %llu ms", i,
				 (unsigned long long)(now - hb));
			return -1;
		}
	}
	return 0;
}

/* --- binary upgrade ------------------------------------------------------------------------- */

/* The predecessor: starts the successor (corralctl upgrade, SIGUSR2). */
static int upgrade_begin(char *err, size_t errlen)
{
	int r;

	if (D.stopping) {
		snprintf(err, errlen, "shutting down");
		return -ESHUTDOWN;
	}
	if (UP.pid) {
		snprintf(err, errlen, "an upgrade is already under way (new pid %d)", (int)UP.pid);
		return -EBUSY;
	}
	if (!self_exe[0]) {
		snprintf(err, errlen, "the path of the running binary is unknown");
		return -ENOENT;
	}
	if (privs_dropped) {
		/*
		 * The successor is our child: it would start as the user too, with no capability,
		 * and could neither load the steering program nor bind into the listeners'
		 * reuseport groups (created by root). Handing it the listeners and the program by
		 * descriptor is not built; say so instead of starting a process bound to fail.
		 */
		snprintf(err, errlen,
			 "not possible after the privilege drop to user %s: the new process would "
			 "run as %s and cannot load the steering program or join the listeners; "
			 "restart instead (systemctl restart), or run without user: to upgrade in "
			 "place",
			 startup_cfg->user, startup_cfg->user);
		return -EPERM;
	}
	r = upgrade_spawn(self_exe, self_argv, D.listen_port, startup_cfg->listen_n,
			  metrics_listen_fd(admin_met), UE.count + 1, &UP.pid, &UP.fd, err, errlen);
	if (r < 0)
		return r;
	UP.len = 0;
	/* timeouts.upgrade_ready_ms: the successor must be ready within it (config-t.h). */
	UP.ready_ms = D.snap->cfg.timeouts.upgrade_ready_ms;
	UP.deadline_ms = now_ms() + UP.ready_ms;
	log_info("upgrade: started %s as pid %d; waiting for it to be ready", self_exe,
		 (int)UP.pid);
	return 0;
}

/* Every listen group's program is ours again (the failed successor's may be attached). */
static void upgrade_reattach(void)
{
	for (uint32_t i = 0; D.steer && i < startup_cfg->listen_n; i++)
		for (uint32_t w = 0; w < D.workers_n; w++)
			if (D.listen_fds[w][i] >= 0 &&
			    steer_attach(D.steer, D.listen_fds[w][i]) == 0)
				break;
}

static void upgrade_failed(const char *why)
{
	int status;

	/* It exits after saying why; a successor that hangs is killed (we started it). */
	for (int i = 0; i < 200 && waitpid(UP.pid, &status, WNOHANG) == 0; i++) {
		if (i == 199) {
			kill(UP.pid, SIGKILL);
			waitpid(UP.pid, &status, 0);
		}
		usleep(10000);
	}
	upgrade_reattach();
	/* Its pins replaced ours (and went with it): inspection and the next upgrade need ours. */
	status = steer_repin(D.steer);
	if (status < 0)
		log_err("upgrade: cannot pin the steering maps again: %s", strerror(-status));
	/* A successor that took the control socket path and then died: the path is ours again. */
	status = ctl_reclaim(admin_ctl);
	if (admin_ctl && status < 0)
		log_err("upgrade: cannot take the control socket path back: %s", strerror(-status));
	log_err("upgrade failed, still serving (pid %d): %s", (int)getpid(), why);
	ctl_upgrade_done(admin_ctl, -1, 0, why);
	close(UP.fd);
	UP.fd = -1;
	UP.pid = 0;
}

/* The predecessor, every loop: the successor's report, its end, or its deadline. */
static void upgrade_service(void)
{
	char why[UPGRADE_LINE_MAX + 96], st[64];
	int r, status, pid;

	if (UP.fd < 0 || handing_over)
		return;
	r = upgrade_read_line(UP.fd, UP.line, sizeof(UP.line), &UP.len);
	if (r == 1 && sscanf(UP.line, "ready %d", &pid) == 1 && pid == UP.pid) {
		handing_over = true;
		log_info("upgrade: pid %d is ready and serves; handing over and draining", pid);
		ctl_upgrade_done(admin_ctl, 0, pid, NULL);
		return;
	}
	if (r == 1) {
		snprintf(why, sizeof(why), "new process %d: %s", (int)UP.pid,
			 strncmp(UP.line, "failed ", 7) == 0 ? UP.line + 7 : UP.line);
		upgrade_failed(why);
		return;
	}
	if (r < 0) {
		if (waitpid(UP.pid, &status, 0) == UP.pid) {
			upgrade_describe_status(status, st, sizeof(st));
			snprintf(why, sizeof(why), "new process %d %s before it was ready",
				 (int)UP.pid, st);
		} else {
			snprintf(why, sizeof(why), "new process %d closed the hand-over socket",
				 (int)UP.pid);
		}
		upgrade_failed(why);
		return;
	}
	if (now_ms() >= UP.deadline_ms) {
		kill(UP.pid, SIGKILL);
		snprintf(why, sizeof(why), "new process %d was not ready within %u ms (killed)",
			 (int)UP.pid, UP.ready_ms);
		upgrade_failed(why);
	}
}

/* The successor: the predecessor is gone (end-of-file): the metrics listener is ours. */
static void upgrade_pred_service(void)
{
	char line[64];
	size_t len = 0;

	if (UE.fd < 0 || upgrade_read_line(UE.fd, line, sizeof(line), &len) >= 0)
		return;
	close(UE.fd);
	UE.fd = -1;
	if (!metrics_live)
		log_info("upgrade: pid %d has finished; serving the metrics listener",
			 (int)UE.from_pid);
	metrics_live = true;
}

/* The successor, before it is ready: says why it gives up (the predecessor logs it). */
static void upgrade_fail_say(const char *why)
{
	upgrade_say(UE.fd, "failed %s", why);
}

/* Whether the inherited metrics listener is the one the config asks for (port 0: any port). */
static bool metrics_inherit_ok(const struct cfg_addr *a, int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) == -1 ||
	    ss.ss_family != a->ss.ss_family)
		return false;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&ss, *y = (const void *)&a->ss;

		return x->sin_addr.s_addr == y->sin_addr.s_addr &&
		       (!y->sin_port || x->sin_port == y->sin_port);
	}
	const struct sockaddr_in6 *x = (const void *)&ss, *y = (const void *)&a->ss;

	return !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) &&
	       (!y->sin6_port || x->sin6_port == y->sin6_port);
}

static int op_upgrade(void *ctx, char *err, size_t errlen)
{
	return upgrade_begin(err, errlen);
}

static void op_upgrade_info(void *ctx, struct admin_upgrade *out)
{
	struct tm tm;

	memset(out, 0, sizeof(*out));
	out->in_progress = UP.pid != 0 && !handing_over;
	if (!took_over_at)
		return;
	out->count = UE.count;
	out->from_pid = (int)UE.from_pid;
	out->at_unix = (int64_t)took_over_at;
	gmtime_r(&took_over_at, &tm);
	strftime(out->at, sizeof(out->at), "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const struct admin_ops ADMIN_OPS = {
	.version = CORRAL_VERSION,
	.cores_n = op_cores_n,
	.core = op_core,
	.steering_mode = op_mode,
	.policy = op_policy,
	.config_path = op_config_path,
	.backends_n = op_backends_n,
	.backend = op_backend,
	.steer_fallbacks = op_fallbacks,
	.config_version = op_config_version,
	.certs_n = op_certs_n,
	.cert = op_cert,
	.set_policy = op_set_policy,
	.set_weight = op_set_weight,
	.set_drained = op_set_drained,
	.backend_enable = op_backend_enable,
	.backend_weight = op_backend_weight,
	.reload = op_reload,
	.reload_restart_keys = op_reload_restart_keys,
	.accepting = op_accepting,
	.alive = op_alive,
	.upgrade = op_upgrade,
	.upgrade_info = op_upgrade_info,
};

/* --- main ----------------------------------------------------------------------------------------- */

/*
 * user: in the config. Everything that needs root is open by now: listeners, the steering
 * program and its maps (their fds and mmaps), the control socket, the metrics listener, the
 * access log. What runs afterwards needs no capability: reload reads the config file (it must
 * be readable by the user), drain/undrain calls listen() again on bound sockets and updates
 * the socket map through its fd, policy and weights are writes into mmapped maps. The pins
 * and the control socket are handed to the user so that shutdown can still remove them.
 */
static int drop_privileges(const struct config *cfg, char *err, size_t errlen)
{
	int r;

	if (geteuid() != 0) {
		if (geteuid() == cfg->uid && getegid() == cfg->gid)
			return 0;
		snprintf(err, errlen, "corral runs as uid %u, not as root: it cannot switch users",
			 (unsigned)geteuid());
		return -EPERM;
	}
	r = steer_chown(D.steer, cfg->uid, cfg->gid);
	if (r < 0)
		log_warn("user %s: handing the BPF pins over: %s (they stay after shutdown)",
			 cfg->user, strerror(-r));
	if (cfg->admin.socket[0] && chown(cfg->admin.socket, cfg->uid, cfg->gid) == -1)
		log_warn("user %s: control socket %s: %s", cfg->user, cfg->admin.socket,
			 strerror(errno));
	if (D.alog_fd >= 0) {
		if (fchown(D.alog_fd, cfg->uid, cfg->gid) == -1)
			log_warn("user %s: access log %s: %s", cfg->user, cfg->access_log.path,
				 strerror(errno));
		if (privdrop_dir_writable(cfg->access_log.path, cfg->uid, cfg->gid) == 0)
			log_warn("user %s cannot create files in the folder of %s: reopening the "
				 "log after it was rotated away will fail (give the folder to %s, "
				 "e.g. systemd's LogsDirectory=)",
				 cfg->user, cfg->access_log.path, cfg->user);
	}
	r = privdrop_apply(cfg->uid, cfg->gid, err, errlen);
	privs_dropped = r == 0;
	if (r == 0)
		log_info("running as user %s (uid %u, gid %u) with no capabilities", cfg->user,
			 (unsigned)cfg->uid, (unsigned)cfg->gid);
	return r;
}

/*
 * File descriptors each worker opens after fd_budget() counts: its ring, its eventfd and one
 * spare (refusing a connection at EMFILE takes none: worker.c accepts it into the ring's
 * fixed-file table), and FD_BORROW_MAX for upstream connects that run ahead of the idle
 * connections closed for them. The slack covers the admin plane (16 metrics scrapes, control
 * clients) and the odd short-lived fd; health checks (the main thread's, one socket per
 * backend at a time) are counted on top of it.
 */
#define FD_PER_WORKER (3 + FD_BORROW_MAX)
#define FD_SLACK      32

static uint64_t fd_reserved(const struct config *cfg, uint64_t open_now)
{
	return open_now + (uint64_t)cfg->cores_n * FD_PER_WORKER + FD_SLACK + cfg->backends_n;
}

/* What connections_per_core needs: each client connection with its upstream connection. */
static uint64_t fd_want(const struct config *cfg, uint64_t open_now)
{
	return (uint64_t)cfg->limits.connections_per_core * cfg->cores_n * 2 +
	       fd_reserved(cfg, open_now);
}

static uint64_t fds_open(void)
{
	uint64_t n = 0;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;

	if (!d)
		return 64; /* a guess on the safe side */
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n > 0 ? n - 1 : 0; /* the directory's own fd */
}

/*
 * Raises RLIMIT_NOFILE: the hard limit to what the configured connections need when that is
 * permitted (CAP_SYS_RESOURCE, up to fs.nr_open), and the soft limit to the hard one.
 */
static void raise_nofile(const struct config *cfg)
{
	struct rlimit rl;
	uint64_t want = fd_want(cfg, fds_open() + 16);

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
		struct rlimit up = { .rlim_cur = want, .rlim_max = want };

		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			return;
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/*
 * The file descriptors each worker may hold for its connections: client and upstream ones
 * together (an idle keep-alive client holds one, a request in flight two, a pooled upstream
 * connection one), what the limit leaves after what is open now and the reserve. Says so when
 * that is below what connections_per_core may need. Workers then close idle pooled upstream
 * connections and idle client connections to make room at that count instead of running into
 * EMFILE (client.c, conn_fd_room). 0: no limit.
 */
static uint32_t fd_budget(const struct config *cfg)
{
	uint64_t open_now = fds_open(), reserved = fd_reserved(cfg, open_now), per_worker;
	uint32_t n = cfg->cores_n, want = cfg->limits.connections_per_core;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return 0;
	per_worker = rl.rlim_cur > reserved ? (rl.rlim_cur - reserved) / n : 0;
	if (per_worker < 2)
		per_worker = 2; /* a client and its upstream */
	if (per_worker > UINT32_MAX)
		per_worker = UINT32_MAX;
	if (per_worker >= 2 * (uint64_t)want) {
		log_info("file descriptors: limit %llu, enough for %u x %u client connections with "
			 "an upstream connection each",
			 (unsigned long long)rl.rlim_cur, n, want);
		return (uint32_t)per_worker;
	}
	log_warn("file descriptors: limit %llu (hard %llu) holds about %llu connections per core, "
		 "client and upstream ones together (an idle keep-alive client holds one fd, one "
		 "with a request in flight two), below limits.connections_per_core %u x %u workers "
		 "with their upstream connections (%llu fds wanted); at that count idle upstream "
		 "connections, then idle client connections, are closed to make room. Raise "
		 "LimitNOFILE / ulimit -n, or lower connections_per_core",
		 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
		 (unsigned long long)per_worker, want, n,
		 (unsigned long long)fd_want(cfg, open_now));
	return (uint32_t)per_worker;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 't' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl *ctl = NULL;
	struct metrics *met = NULL;
	struct config *cfg;
	char err[512];
	bool check = false;
	sigset_t sigs;
	uint64_t wd_ms = 0, wd_last = 0;
	int sfd, opt, r, rc = 0;

	while ((opt = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			snprintf(config_path, sizeof(config_path), "%s", optarg);
			break;
		case 't':
			check = true;
			break;
		case 'V':
			printf("corral %s\n", CORRAL_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	/* A successor started by `corralctl upgrade` / SIGUSR2 joins its predecessor's groups. */
	if (!check && upgrade_env_take(&UE)) {
		const char *wp = getenv("WATCHDOG_PID");

		join_live_group = true;
		/* systemd's watchdog was the predecessor's; it is ours once we are the main pid. */
		if (wp && strtol(wp, NULL, 10) == (long)UE.from_pid) {
			char v[24];

			snprintf(v, sizeof(v), "%d", (int)getpid());
			setenv("WATCHDOG_PID", v, 1);
		}
	}
	/* The binary to start on an upgrade: this one's path now (it may be replaced on disk). */
	{
		ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);

		self_exe[n > 0 ? n : 0] = 0;
		if (n > 10 && !strcmp(self_exe + n - 10, " (deleted)"))
			self_exe[n - 10] = 0;
		self_argv = argv;
	}
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return 1;
	err[0] = 0;
	if (config_load(cfg, config_path, err, sizeof(err)) < 0) {
		fprintf(stderr, "corral: %s\n", err);
		upgrade_fail_say(err);
		free(cfg);
		return 1;
	}
	config_warn(cfg->warnings, !check);
	if (check) {
		printf("corral: %s: configuration OK\n", config_path);
		free(cfg);
		return 0;
	}

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	sigaddset(&sigs, SIGUSR2); /* no meaning yet: logged and ignored, never fatal */
	pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* workers inherit the mask */
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		log_err("signalfd: %s", strerror(errno));
		return 1;
	}
	raise_nofile(cfg);
	r = sdnotify_open();
	if (r < 0)
		log_warn("systemd notify socket $NOTIFY_SOCKET: %s (running without notify)",
			 strerror(-r));
	D.start_ms = now_ms();
	D.alog_fd = -1;
	if (cfg->access_log.on) {
		D.alog_fd = alog_open(cfg->access_log.path);
		if (D.alog_fd < 0) {
			log_err("access log %s: %s", cfg->access_log.path, strerror(-D.alog_fd));
			snprintf(err, sizeof(err), "access log %s: %s", cfg->access_log.path,
				 strerror(-D.alog_fd));
			upgrade_fail_say(err);
			return 1;
		}
	}

	if (listen_addrs_check(cfg) < 0) {
		if (D.alog_fd >= 0)
			close(D.alog_fd);
		close(sfd);
		free(cfg);
		return 1;
	}
	/* CORRAL_NO_BPF=1: an operator's (and a test's) switch to run on the kernel hash. */
	if (getenv("CORRAL_NO_BPF") && strcmp(getenv("CORRAL_NO_BPF"), "1") == 0) {
		snprintf(D.steer_err, sizeof(D.steer_err), "disabled by CORRAL_NO_BPF=1");
		r = -ECANCELED;
	} else if (join_live_group) {
		r = steer_open_takeover(&D.steer, cfg, D.steer_err, sizeof(D.steer_err));
	} else {
		r = steer_open(&D.steer, cfg, D.steer_err, sizeof(D.steer_err));
	}
	if (r < 0) {
		D.steer = NULL;
		log_warn("steering: BPF program not loaded (%s); running on the kernel's reuseport "
			 "hash",
			 D.steer_err[0] ? D.steer_err : strerror(-r));
	} else {
		log_info("steering: bpf, policy %s", steer_policy_name(D.steer));
	}
	if (listeners_create(cfg) < 0) {
		upgrade_fail_say("cannot listen (see its log)");
		rc = 1;
		goto out_steer;
	}
	startup_cfg = cfg;
	{
		struct snapshot *s0 = snapshot_build(cfg, err, sizeof(err));

		if (!s0) {
			log_err("%s", err);
			upgrade_fail_say(err);
			rc = 1;
			goto out_steer;
		}
		snapshot_publish(s0);
	}
	/* A successor keeps the predecessor's policy, weights and drains (corralctl's changes). */
	if (steer_carried(D.steer))
		log_info("steering: carried over from pid %d: policy %s", (int)UE.from_pid,
			 steer_policy_name(D.steer));
	else
		steering_apply(cfg);

	D.workers_n = cfg->cores_n;
	D.fd_budget = fd_budget(cfg);
	D.workers = calloc(D.workers_n, sizeof(*D.workers));
	for (uint32_t i = 0; i < D.workers_n; i++) {
		D.workers[i] = aligned_alloc(64, (sizeof(struct worker) + 63) & ~(size_t)63);
		r = D.workers[i] ? worker_init(D.workers[i], &D, i, cfg) : -ENOMEM;
		if (r < 0) {
			log_err("worker %u: init: %s", i, strerror(-r));
			upgrade_fail_say("a worker failed to initialise (see its log)");
			rc = 1;
			goto out_workers;
		}
	}
	for (uint32_t i = 0; i < D.workers_n; i++) {
		r = worker_start(D.workers[i]);
		if (r < 0) {
			log_err("worker %u: start: %s", i, strerror(-r));
			upgrade_fail_say("a worker failed to start (see its log)");
			rc = 1;
			for (uint32_t j = 0; j < i; j++)
				worker_request_stop(D.workers[j]);
			for (uint32_t j = 0; j < i; j++)
				worker_join(D.workers[j]);
			goto out_workers;
		}
	}
	for (uint32_t i = 0; i < D.workers_n; i++)
		if (steer_carried_drained(D.steer, i))
			worker_request_drain(D.workers[i], true);
	if (cfg->admin.socket[0]) {
		r = join_live_group
			    ? ctl_open_takeover(&ctl, cfg->admin.socket, &ADMIN_OPS, err,
						sizeof(err))
			    : ctl_open(&ctl, cfg->admin.socket, &ADMIN_OPS, err, sizeof(err));
		if (r < 0) {
			log_err("control socket: %s", err);
			ctl = NULL;
		}
	}
	if (cfg->admin.metrics_on && metrics_inherit_ok(&cfg->admin.metrics, UE.metrics_fd)) {
		/* The same socket as the predecessor's: served once the predecessor is done. */
		r = metrics_open_fd(&met, UE.metrics_fd, &ADMIN_OPS, err, sizeof(err));
		UE.metrics_fd = -1;
		metrics_live = false;
		if (r < 0) {
			log_err("metrics: %s", err);
			met = NULL;
		}
	} else if (cfg->admin.metrics_on) {
		r = metrics_open(&met, &cfg->admin.metrics, &ADMIN_OPS, err, sizeof(err));
		if (r < 0) {
			log_err("metrics: %s", err);
			met = NULL;
		}
	}
	if (UE.metrics_fd >= 0) {
		close(UE.metrics_fd);
		UE.metrics_fd = -1;
	}
	admin_ctl = ctl;
	admin_met = met;
	r = health_open(&HC, &D);
	if (r < 0) {
		log_err("health checks: %s", strerror(-r));
		HC = NULL;
	}
	health_sync(HC, D.snap);
	if (cfg->user[0]) {
		r = drop_privileges(cfg, err, sizeof(err));
		if (r < 0) {
			log_err("user %s: %s", cfg->user, err);
			rc = 1;
			goto stop;
		}
	}
	log_info("ready: %u workers, %u backends, balance %s", D.workers_n, cfg->backends_n,
		 config_balance_name(cfg->balance));
	/* Every worker has armed its accepts (worker_start waited for each): ready for real. */
	snprintf(err, sizeof(err), "READY=1\nSTATUS=serving, %u workers\nMAINPID=%d", D.workers_n,
		 (int)getpid());
	sdnotify_send(err);
	wd_ms = sdnotify_watchdog_ms();
	wd_last = now_ms();
	if (UE.fd >= 0 && getenv("CORRAL_TEST_UPGRADE_STALL_MS")) {
		/* Tests only: a successor that takes the control socket and then hangs. */
		usleep((useconds_t)strtoul(getenv("CORRAL_TEST_UPGRADE_STALL_MS"), NULL, 10) *
		       1000);
	}
	if (UE.fd >= 0) {
		took_over_at = time(NULL);
		log_info("upgrade: taking over from pid %d (upgrade %u)", (int)UE.from_pid,
			 UE.count);
		upgrade_say(UE.fd, "ready %d", (int)getpid());
	}

	for (;;) {
		struct pollfd pf[6] = { { .fd = sfd, .events = POLLIN },
					{ .fd = ctl ? ctl_fd(ctl) : -1, .events = POLLIN },
					{ .fd = met && metrics_live ? metrics_fd(met) : -1,
					  .events = POLLIN },
					{ .fd = health_fd(HC), .events = POLLIN },
					{ .fd = UP.fd, .events = POLLIN },
					{ .fd = UE.fd, .events = POLLIN } };
		struct signalfd_siginfo si;

		/* HEALTH_SCAN_MS: the passive-health scan's period; shorter while an upgrade runs. */
		if (poll(pf, 6, UP.fd >= 0 ? 20 : HEALTH_SCAN_MS) < 0 && errno != EINTR)
			break;
		health_scan();
		health_service(HC);
		/* Ticket keys: a new one every TLS_TICKET_ROTATE_MS, the previous still decrypts. */
		if (tls_keys && tls_keys_maybe_rotate(tls_keys, now_ms()) < 0)
			log_warn("TLS ticket keys: rotation failed (the current key stays)");
		upgrade_pred_service();
		upgrade_service();
		if (handing_over)
			break;
		if (wd_ms && now_ms() - wd_last >= wd_ms && op_alive(NULL, err, sizeof(err)) == 0) {
			wd_last = now_ms();
			sdnotify_send("WATCHDOG=1");
		}
		if (pf[1].revents)
			ctl_service(ctl);
		if (pf[2].revents)
			metrics_service(met);
		if (!(pf[0].revents & POLLIN))
			continue;
		if (read(sfd, &si, sizeof(si)) != sizeof(si))
			continue;
		if (si.ssi_signo == SIGHUP) {
			err[0] = 0;
			do_reload(err, sizeof(err));
			continue;
		}
		if (si.ssi_signo == SIGUSR1) {
			logs_reopen();
			continue;
		}
		if (si.ssi_signo == SIGUSR2) {
			err[0] = 0;
			r = upgrade_begin(err, sizeof(err));
			if (r < 0)
				log_err("signal USR2: upgrade not started: %s", err);
			continue;
		}
		log_info("signal %u: graceful shutdown (grace %u ms)", si.ssi_signo,
			 D.snap->cfg.timeouts.shutdown_grace_ms);
		break;
	}
stop:
	D.stopping = 1;
	if (UP.pid && !handing_over) {
		/* Stopped while a successor was starting: it is not wanted any more. */
		kill(UP.pid, SIGKILL);
		upgrade_failed("shutting down");
	}
	if (handing_over) {
		/*
		 * The successor is systemd's main process now (it sent MAINPID=): say nothing that
		 * would make systemd think the service stops. Workers drain without closing idle
		 * keep-alive connections under a request (docs/operations.md).
		 */
		D.handover = 1;
		log_info("upgrade: draining for pid %d (grace %u ms)", (int)UP.pid,
			 D.snap->cfg.timeouts.shutdown_grace_ms);
	} else {
		sdnotify_send("STOPPING=1\nSTATUS=draining connections");
	}
	for (uint32_t i = 0; i < D.workers_n; i++)
		worker_request_stop(D.workers[i]);
	/* While requests finish, /ready answers 503, /healthz and the control socket still work. */
	for (uint32_t left = D.workers_n; left;) {
		struct pollfd pf[3] = { { .fd = ctl ? ctl_fd(ctl) : -1, .events = POLLIN },
					{ .fd = met && metrics_live ? metrics_fd(met) : -1,
					  .events = POLLIN },
					{ .fd = UE.fd, .events = POLLIN } };
		if (poll(pf, 3, 20) > 0) {
			if (pf[0].revents)
				ctl_service(ctl);
			if (pf[1].revents)
				metrics_service(met);
			if (pf[2].revents)
				upgrade_pred_service();
		}
		left = 0;
		for (uint32_t i = 0; i < D.workers_n; i++) {
			if (!worker_done[i] && pthread_tryjoin_np(D.workers[i]->thread, NULL) == 0)
				worker_done[i] = true;
			left += !worker_done[i];
		}
	}
	log_info("stopped");
out_workers:
	health_close(HC);
	HC = NULL;
	if (handing_over)
		ctl_handoff(ctl, METRICS_HANDOFF_MS);
	ctl_close(ctl);
	/* Answers the scrapes it accepted: closing under one would fail it. */
	if (handing_over && metrics_live)
		metrics_handoff(met, METRICS_HANDOFF_MS);
	metrics_close(met);
	/* Only now does the successor serve the metrics listener (end-of-file on its fd 3). */
	if (UP.fd >= 0)
		close(UP.fd);
	if (UE.fd >= 0)
		close(UE.fd);
	for (uint32_t i = 0; i < D.workers_n; i++)
		if (D.workers[i]) {
			worker_free(D.workers[i]);
			free(D.workers[i]);
		}
	free(D.workers);
out_steer:
	steer_close(D.steer);
	snapshot_free(D.snap);
	D.snap = NULL;
	tls_keys_free(tls_keys);
	tls_keys = NULL;
	free(cfg);
	close(sfd);
	sdnotify_close();
	if (D.alog_fd >= 0)
		close(D.alog_fd);
	return rc;
}
