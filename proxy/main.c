/* corral's main thread: options, config, listeners, steering, workers, signals, reload, admin. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
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
#include <urcu-qsbr.h>
#include "accesslog.h"
#include "admin.h"
#include "config.h"
#include "daemon.h"
#include "stats.h"
#include "steer.h"
#include "worker.h"

#define DEFAULT_CONFIG "/etc/corral/corral.yaml"
/* Listen backlog: bursts of new connections queue here while a worker is busy. */
#define LISTEN_BACKLOG 4096

static struct daemon D;
static char config_path[CFG_PATH_MAX] = DEFAULT_CONFIG;
static uint64_t snap_version;

static void usage(FILE *f)
{
	fprintf(f, "usage: corral [-c FILE] [--check] [--version] [--help]\n"
		   "  -c, --config FILE  configuration file (default " DEFAULT_CONFIG ")\n"
		   "  -t, --check        validate the configuration and exit (0 = valid)\n"
		   "  -V, --version      print the version and exit\n"
		   "  -h, --help         this text\n");
}

/* --- listeners ------------------------------------------------------------------------------- */

static int listener_open(const struct cfg_addr *a, uint16_t port, uint16_t *bound)
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
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, LISTEN_BACKLOG) < 0)
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

static int listeners_create(const struct config *cfg)
{
	char text[80];

	for (uint32_t i = 0; i < cfg->listen_n; i++) {
		const struct cfg_addr *a = &cfg->listen[i];
		uint16_t port, bound = 0;
		int holder = -1;

		port = ntohs(a->ss.ss_family == AF_INET
				     ? ((const struct sockaddr_in *)&a->ss)->sin_port
				     : ((const struct sockaddr_in6 *)&a->ss)->sin6_port);
		if (port == 0) {
			int r = port_reserve(a, &port, &holder);

			if (r < 0) {
				log_err("listen %s: %s", a->text, strerror(-r));
				return r;
			}
		}
		for (uint32_t w = 0; w < cfg->cores_n; w++) {
			int fd = listener_open(a, port, &bound);

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

/* Stable id for a backend address: the same address keeps its id across reloads. */
static int backend_id_for(const char *addr)
{
	int free_id = -1;

	for (int i = 0; i < CFG_BACKENDS_MAX; i++) {
		if (D.backends[i].addr[0] && strcmp(D.backends[i].addr, addr) == 0)
			return i;
		if (free_id < 0 && (!D.backends[i].addr[0] ||
				    !__atomic_load_n(&D.backends[i].in_config, __ATOMIC_RELAXED)))
			free_id = i;
	}
	return free_id;
}

static struct snapshot *snapshot_build(const struct config *cfg)
{
	struct snapshot *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->cfg = *cfg;
	s->version = ++snap_version;
	for (uint32_t i = 0; i < CFG_BACKENDS_MAX; i++)
		if (D.backends[i].addr[0])
			__atomic_store_n(&D.backends[i].in_config, 0, __ATOMIC_RELAXED);
	for (uint32_t i = 0; i < cfg->backends_n; i++) {
		int id = backend_id_for(cfg->backends[i].addr.text);
		struct backend_rt *b = &D.backends[id];

		BUG_ON(id < 0);
		s->backend_id[i] = (uint32_t)id;
		if (strcmp(b->addr, cfg->backends[i].addr.text) != 0) {
			snprintf(b->addr, sizeof(b->addr), "%s", cfg->backends[i].addr.text);
			__atomic_store_n(&b->enabled, 1, __ATOMIC_RELAXED);
			__atomic_store_n(&b->down_until_ms, 0, __ATOMIC_RELAXED);
		}
		__atomic_store_n(&b->weight, cfg->backends[i].weight, __ATOMIC_RELAXED);
		__atomic_store_n(&b->healthy, 1, __ATOMIC_RELAXED);
		__atomic_store_n(&b->in_config, 1, __ATOMIC_RELAXED);
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
		free(old);
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

static bool same_listen(const struct config *a, const struct config *b)
{
	if (a->listen_n != b->listen_n || a->cores_n != b->cores_n)
		return false;
	for (uint32_t i = 0; i < a->listen_n; i++)
		if (strcmp(a->listen[i].text, b->listen[i].text) != 0)
			return false;
	for (uint32_t i = 0; i < a->cores_n; i++)
		if (a->cores[i] != b->cores[i])
			return false;
	return true;
}

static int do_reload(char *err, size_t errlen)
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
	if (!same_listen(&D.snap->cfg, cfg)) {
		snprintf(err, errlen,
			 "listen addresses and worker cores cannot change on reload (restart "
			 "corral)");
		log_err("reload rejected, old configuration kept: %s", err);
		free(cfg);
		return -EINVAL;
	}
	/* Sizes fixed at start-up keep their start-up values. */
	cfg->limits.connections_per_core = D.snap->cfg.limits.connections_per_core;
	cfg->limits.buffers_per_core = D.snap->cfg.limits.buffers_per_core;
	cfg->limits.buffer_bytes = D.snap->cfg.limits.buffer_bytes;
	s = snapshot_build(cfg);
	free(cfg);
	if (!s)
		return -ENOMEM;
	steering_apply(&s->cfg);
	snapshot_publish(s);
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
	for (uint32_t b = 0; b < CFG_BACKENDS_MAX; b++) {
		uint64_t last = 0, park;

		if (!D.backends[b].addr[0])
			continue;
		for (uint32_t i = 0; i < D.workers_n; i++) {
			uint64_t t = STAT_GET(D.workers[i]->bstats[b].connect_fail_ms);

			if (t > last)
				last = t;
		}
		park = D.snap->cfg.timeouts.backend_park_ms;
		if (last &&
		    last + park > __atomic_load_n(&D.backends[b].down_until_ms, __ATOMIC_RELAXED))
			__atomic_store_n(&D.backends[b].down_until_ms, last + park,
					 __ATOMIC_RELAXED);
	}
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

	if (i >= D.workers_n)
		return -EINVAL;
	w = D.workers[i];
	memset(out, 0, sizeof(*out));
	out->cpu = w->cpu;
	out->state = __atomic_load_n(&w->drain_req, __ATOMIC_RELAXED) ? ADMIN_CORE_DRAINING
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
	struct backend_rt *b;
	uint32_t id;

	if (i >= s->cfg.backends_n)
		return -EINVAL;
	id = s->backend_id[i];
	b = &D.backends[id];
	memset(out, 0, sizeof(*out));
	snprintf(out->addr, sizeof(out->addr), "%s", b->addr);
	out->weight = __atomic_load_n(&b->weight, __ATOMIC_RELAXED);
	out->enabled = __atomic_load_n(&b->enabled, __ATOMIC_RELAXED);
	out->healthy = __atomic_load_n(&b->down_until_ms, __ATOMIC_RELAXED) <= now_ms();
	for (uint32_t w = 0; w < D.workers_n; w++) {
		const struct stats_backend *sb = &D.workers[w]->bstats[id];

		out->active += STAT_GET(sb->active);
		out->requests += STAT_GET(sb->requests);
		out->errors += STAT_GET(sb->errors);
		out->lat_sum_us += STAT_GET(sb->lat_sum_us);
	}
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

static int op_set_weight(void *ctx, uint32_t core, uint32_t weight, char *err, size_t errlen)
{
	int r = need_steer(err, errlen);

	if (r)
		return r;
	if (core >= D.workers_n) {
		snprintf(err, errlen, "unknown core %u (workers: 0..%u)", core, D.workers_n - 1);
		return -EINVAL;
	}
	return steer_set_weight(D.steer, core, weight);
}

static int op_set_drained(void *ctx, uint32_t core, bool drained, char *err, size_t errlen)
{
	uint32_t active = 0;

	if (core >= D.workers_n) {
		snprintf(err, errlen, "unknown core %u (workers: 0..%u)", core, D.workers_n - 1);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < D.workers_n; i++)
		if (i != core && !__atomic_load_n(&D.workers[i]->drain_req, __ATOMIC_RELAXED))
			active++;
	if (drained && active == 0) {
		snprintf(err, errlen, "refusing to drain the last active core");
		return -EBUSY;
	}
	/* Steering first, so that no new SYN picks the core, then the listener. */
	if (D.steer)
		steer_set_drained(D.steer, core, drained);
	worker_request_drain(D.workers[core], drained);
	log_info("core %u %s", core, drained ? "draining" : "undrained");
	return 0;
}

static int backend_find(const char *addr)
{
	const struct snapshot *s = D.snap;

	for (uint32_t i = 0; i < s->cfg.backends_n; i++)
		if (strcmp(D.backends[s->backend_id[i]].addr, addr) == 0)
			return (int)s->backend_id[i];
	return -1;
}

static int op_backend_enable(void *ctx, const char *addr, bool enabled, char *err, size_t errlen)
{
	int id = backend_find(addr);

	if (id < 0) {
		snprintf(err, errlen, "unknown backend %s", addr);
		return -ENOENT;
	}
	__atomic_store_n(&D.backends[id].enabled, enabled ? 1 : 0, __ATOMIC_RELAXED);
	log_info("backend %s %s", addr, enabled ? "enabled" : "disabled");
	return 0;
}

static int op_backend_weight(void *ctx, const char *addr, uint32_t weight, char *err, size_t errlen)
{
	int id = backend_find(addr);

	if (id < 0) {
		snprintf(err, errlen, "unknown backend %s", addr);
		return -ENOENT;
	}
	if (weight > 1000) {
		snprintf(err, errlen, "weight must be 0..1000");
		return -EINVAL;
	}
	__atomic_store_n(&D.backends[id].weight, weight, __ATOMIC_RELAXED);
	return 0;
}

static int op_reload(void *ctx, char *err, size_t errlen)
{
	return do_reload(err, errlen);
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
	.set_policy = op_set_policy,
	.set_weight = op_set_weight,
	.set_drained = op_set_drained,
	.backend_enable = op_backend_enable,
	.backend_weight = op_backend_weight,
	.reload = op_reload,
};

/* --- main ----------------------------------------------------------------------------------------- */

/*
 * File descriptors each worker opens after fd_budget() counts: its ring, its eventfd and the
 * reserve fd it gives up to refuse a connection at EMFILE (worker.c). The slack covers the
 * admin plane (16 metrics scrapes, control clients) and the odd short-lived fd.
 */
#define FD_PER_WORKER 3
#define FD_SLACK      32

/* Each client connection may hold its own fd and its upstream connection's. */
static uint64_t fd_want(const struct config *cfg, uint64_t open_now)
{
	return (uint64_t)cfg->limits.connections_per_core * cfg->cores_n * 2 + open_now +
	       (uint64_t)cfg->cores_n * FD_PER_WORKER + FD_SLACK;
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
 * How many client connections per worker the fd limit holds, counting what is open now and
 * one upstream connection per client; says so when that is below connections_per_core.
 * Workers then close idle connections to make room at that count instead of running into
 * EMFILE (conn.c).
 */
static uint32_t fd_budget(const struct config *cfg)
{
	uint64_t open_now = fds_open(), reserved, per_worker;
	uint32_t n = cfg->cores_n, want = cfg->limits.connections_per_core;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return want;
	reserved = open_now + (uint64_t)n * FD_PER_WORKER + FD_SLACK;
	per_worker = rl.rlim_cur > reserved ? (rl.rlim_cur - reserved) / n / 2 : 0;
	if (per_worker < 1)
		per_worker = 1;
	if (per_worker >= want) {
		log_info("file descriptors: limit %llu, enough for %u x %u client connections",
			 (unsigned long long)rl.rlim_cur, n, want);
		return want;
	}
	log_warn("file descriptors: limit %llu (hard %llu) holds about %llu client connections per "
		 "core with their upstream connections, below limits.connections_per_core %u x %u "
		 "workers (%llu fds wanted); at that count idle connections are closed to make "
		 "room. Raise LimitNOFILE / ulimit -n, or lower connections_per_core",
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
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return 1;
	err[0] = 0;
	if (config_load(cfg, config_path, err, sizeof(err)) < 0) {
		fprintf(stderr, "corral: %s\n", err);
		free(cfg);
		return 1;
	}
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
	pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* workers inherit the mask */
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		log_err("signalfd: %s", strerror(errno));
		return 1;
	}
	raise_nofile(cfg);
	D.start_ms = now_ms();
	D.alog_fd = -1;
	if (cfg->access_log.on) {
		D.alog_fd = alog_open(cfg->access_log.path);
		if (D.alog_fd < 0) {
			log_err("access log %s: %s", cfg->access_log.path, strerror(-D.alog_fd));
			return 1;
		}
	}

	/* CORRAL_NO_BPF=1: an operator's (and a test's) switch to run on the kernel hash. */
	if (getenv("CORRAL_NO_BPF") && strcmp(getenv("CORRAL_NO_BPF"), "1") == 0) {
		snprintf(D.steer_err, sizeof(D.steer_err), "disabled by CORRAL_NO_BPF=1");
		r = -ECANCELED;
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
		rc = 1;
		goto out_steer;
	}
	snapshot_publish(snapshot_build(cfg));
	steering_apply(cfg);

	D.workers_n = cfg->cores_n;
	D.conn_fd_cap = fd_budget(cfg);
	D.workers = calloc(D.workers_n, sizeof(*D.workers));
	for (uint32_t i = 0; i < D.workers_n; i++) {
		D.workers[i] = aligned_alloc(64, (sizeof(struct worker) + 63) & ~(size_t)63);
		r = D.workers[i] ? worker_init(D.workers[i], &D, i, cfg) : -ENOMEM;
		if (r < 0) {
			log_err("worker %u: init: %s", i, strerror(-r));
			rc = 1;
			goto out_workers;
		}
	}
	for (uint32_t i = 0; i < D.workers_n; i++) {
		r = worker_start(D.workers[i]);
		if (r < 0) {
			log_err("worker %u: start: %s", i, strerror(-r));
			rc = 1;
			for (uint32_t j = 0; j < i; j++)
				worker_request_stop(D.workers[j]);
			for (uint32_t j = 0; j < i; j++)
				worker_join(D.workers[j]);
			goto out_workers;
		}
	}
	if (cfg->admin.socket[0]) {
		r = ctl_open(&ctl, cfg->admin.socket, &ADMIN_OPS, err, sizeof(err));
		if (r < 0) {
			log_err("control socket: %s", err);
			ctl = NULL;
		}
	}
	if (cfg->admin.metrics_on) {
		r = metrics_open(&met, &cfg->admin.metrics, &ADMIN_OPS, err, sizeof(err));
		if (r < 0) {
			log_err("metrics: %s", err);
			met = NULL;
		}
	}
	log_info("ready: %u workers, %u backends, balance %s", D.workers_n, cfg->backends_n,
		 config_balance_name(cfg->balance));

	for (;;) {
		struct pollfd pf[3] = { { .fd = sfd, .events = POLLIN },
					{ .fd = ctl ? ctl_fd(ctl) : -1, .events = POLLIN },
					{ .fd = met ? metrics_fd(met) : -1, .events = POLLIN } };
		struct signalfd_siginfo si;

		/* 100 ms: the passive-health scan's period. */
		if (poll(pf, 3, 100) < 0 && errno != EINTR)
			break;
		health_scan();
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
		log_info("signal %u: graceful shutdown (grace %u ms)", si.ssi_signo,
			 D.snap->cfg.timeouts.shutdown_grace_ms);
		break;
	}
	D.stopping = 1;
	for (uint32_t i = 0; i < D.workers_n; i++)
		worker_request_stop(D.workers[i]);
	for (uint32_t i = 0; i < D.workers_n; i++)
		worker_join(D.workers[i]);
	log_info("stopped");
out_workers:
	ctl_close(ctl);
	metrics_close(met);
	for (uint32_t i = 0; i < D.workers_n; i++)
		if (D.workers[i]) {
			worker_free(D.workers[i]);
			free(D.workers[i]);
		}
	free(D.workers);
out_steer:
	steer_close(D.steer);
	free(D.snap);
	free(cfg);
	close(sfd);
	if (D.alog_fd >= 0)
		close(D.alog_fd);
	return rc;
}
