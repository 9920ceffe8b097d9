/* Steering: loads the sk_reuseport program, owns its pinned maps, exposes per-core counters. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "steer.h"
#include "steer.skel.h"

_Static_assert(STEER_CORES_MAX == CFG_CORES_MAX, "the per-core map is sized by CFG_CORES_MAX");
_Static_assert(STEER_LISTEN_MAX == CFG_LISTEN_MAX, "one socket-array row per listen address");

#define STEER_BPFFS    "/sys/fs/bpf"
#define STEER_PIN_ROOT STEER_BPFFS "/corral"

/* Owned by the main thread; workers only touch their own line in *cores. */
struct steer {
	struct steer_bpf *skel;
	struct steer_ctl *ctl;	   /* mmapped control map element */
	struct steer_core *cores;  /* mmapped per-core array (STEER_CORES_MAX lines) */
	size_t ctl_len, cores_len; /* mmap lengths */
	int prog_fd, socks_fd, stats_fd;
	uint32_t cores_n;
	int ncpus; /* possible CPUs: the per-CPU stats value is an array of these */
	char dir[128];
	/*
	 * O_PATH fd of dir, opened by steer_chown (-1 before): after a privilege drop the pins
	 * are reached through /proc/self/fd/N, which does not traverse the root-only parent.
	 */
	int dir_fd;
	/*
	 * Binary upgrade: the control state read from the live predecessor's pins before they
	 * were replaced (policy, and per core weight and drain state), applied at load.
	 */
	bool takeover, carried, carried_cores;
	struct steer_ctl carry_ctl;
	struct steer_cores *carry_cores;
};

/* The folder holding the pins as a path this process can resolve now. */
static void steer_base(const struct steer *s, char *out, size_t len)
{
	if (s->dir_fd >= 0)
		snprintf(out, len, "/proc/self/fd/%d", s->dir_fd);
	else
		snprintf(out, len, "%s", s->dir);
}

static void steer_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void steer_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* Instance names become a folder name: keep them to a safe, short alphabet. */
static bool steer_instance_ok(const char *name)
{
	size_t i, n = strlen(name);

	if (n == 0 || n > 48 || name[0] == '.')
		return false;
	for (i = 0; i < n; i++) {
		char ch = name[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.'))
			return false;
	}
	return true;
}

/* bpffs is not always mounted (containers, minimal VMs): mount it, as bpftool does. */
static int steer_mount_bpffs(void)
{
	struct statfs st;

	if (statfs(STEER_BPFFS, &st) == 0 && st.f_type == BPF_FS_MAGIC)
		return 0;
	if (mount("bpf", STEER_BPFFS, "bpf", 0, "mode=0700") == -1)
		return -errno;
	return 0;
}

static int steer_mkdir(const char *path)
{
	if (mkdir(path, 0700) == -1 && errno != EEXIST)
		return -errno;
	return 0;
}

static struct bpf_map *steer_map_at(struct steer_bpf *skel, int i)
{
	struct bpf_map *maps[] = { skel->maps.ctl, skel->maps.cores, skel->maps.stats,
				   skel->maps.socks };

	return i < (int)(sizeof(maps) / sizeof(maps[0])) ? maps[i] : NULL;
}

/* Whether a process exists (a pid from another pid namespace may mislead; then we share). */
static bool steer_pid_alive(uint32_t pid)
{
	return pid && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* Whether the map pinned at path has m's type, sizes and flags. */
static bool steer_pin_reusable_layout(const char *path, struct bpf_map *m)
{
	struct bpf_map_info info;
	__u32 len = sizeof(info);
	bool ok;
	int fd;

	fd = bpf_obj_get(path);
	if (fd < 0)
		return false;
	memset(&info, 0, sizeof(info));
	ok = bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && info.type == bpf_map__type(m) &&
	     info.key_size == bpf_map__key_size(m) && info.value_size == bpf_map__value_size(m) &&
	     info.max_entries == bpf_map__max_entries(m) && info.map_flags == bpf_map__map_flags(m);
	close(fd);
	return ok;
}

/*
 * Whether a pinned map left by an earlier run can be reused: same type, sizes and flags;
 * for the control map also the same layout version, and an owner that is gone. 1 = yes.
 */
static int steer_pin_reusable(const char *path, struct bpf_map *m, bool is_ctl)
{
	struct bpf_map_info info;
	__u32 len = sizeof(info), zero = 0;
	struct steer_ctl old;
	int fd, ok;

	fd = bpf_obj_get(path);
	if (fd < 0)
		return 0;
	memset(&info, 0, sizeof(info));
	ok = bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && info.type == bpf_map__type(m) &&
	     info.key_size == bpf_map__key_size(m) && info.value_size == bpf_map__value_size(m) &&
	     info.max_entries == bpf_map__max_entries(m) && info.map_flags == bpf_map__map_flags(m);
	if (ok && is_ctl)
		ok = bpf_map_lookup_elem(fd, &zero, &old) == 0 && old.abi == STEER_ABI &&
		     !steer_pid_alive(old.owner_pid);
	close(fd);
	return ok;
}

/*
 * Upgrade: reads the predecessor's control and per-core maps (same layout only) so that its
 * policy, weights and drain state carry over into this process's own maps.
 */
static void steer_carry_read(struct steer *s)
{
	char path[192];
	__u32 zero = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/ctl", s->dir);
	if (!steer_pin_reusable_layout(path, s->skel->maps.ctl))
		return;
	fd = bpf_obj_get(path);
	if (fd < 0)
		return;
	s->carried = bpf_map_lookup_elem(fd, &zero, &s->carry_ctl) == 0 &&
		     s->carry_ctl.abi == STEER_ABI && s->carry_ctl.policy < STEER_POLICY_N;
	close(fd);
	if (!s->carried)
		return;
	snprintf(path, sizeof(path), "%s/cores", s->dir);
	s->carry_cores = calloc(1, sizeof(*s->carry_cores));
	if (!s->carry_cores || !steer_pin_reusable_layout(path, s->skel->maps.cores))
		return;
	fd = bpf_obj_get(path);
	if (fd < 0)
		return;
	s->carried_cores = bpf_map_lookup_elem(fd, &zero, s->carry_cores) == 0 &&
			   s->carry_ctl.cores_n == s->cores_n;
	close(fd);
}

/*
 * Pins of a crashed run (owner gone) are reused when compatible: libbpf opens them by
 * name at load. Otherwise the whole set is replaced, so that maps of two layouts never
 * mix and two live processes of one instance never share a socket array (each would
 * overwrite the other's slots and fall back to the kernel hash). A live previous owner
 * keeps its own, now unpinned, maps; a process that takes over an instance (a binary
 * upgrade joining the same reuseport groups) thus steers with its own listeners only.
 */
static void steer_check_pins(struct steer *s)
{
	char path[192];
	bool replace = false;
	struct bpf_map *m;
	int i;

	if (s->takeover)
		steer_carry_read(s);

	for (i = 0; (m = steer_map_at(s->skel, i)); i++) {
		snprintf(path, sizeof(path), "%s/%s", s->dir, bpf_map__name(m));
		if (access(path, F_OK) == 0 && !steer_pin_reusable(path, m, m == s->skel->maps.ctl))
			replace = true;
	}
	/* Half a set (a crash between two pins) is not reusable either. */
	snprintf(path, sizeof(path), "%s/ctl", s->dir);
	if (access(path, F_OK) != 0)
		replace = true;
	if (!replace)
		return;
	for (i = 0; (m = steer_map_at(s->skel, i)); i++) {
		snprintf(path, sizeof(path), "%s/%s", s->dir, bpf_map__name(m));
		unlink(path);
	}
}

static void *steer_mmap(struct bpf_map *m, size_t *len)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	void *p;

	*len = ((size_t)bpf_map__value_size(m) * bpf_map__max_entries(m) + page - 1) & ~(page - 1);
	p = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(m), 0);
	return p == MAP_FAILED ? NULL : p;
}

static void steer_bump(struct steer *s)
{
	__atomic_fetch_add(&s->ctl->generation, 1, __ATOMIC_RELEASE);
}

/* Zeroes the program's counters: those of a crashed run mean nothing to this one. */
static int steer_reset_stats(struct steer *s)
{
	size_t len = (size_t)s->ncpus * sizeof(struct steer_stats);
	__u32 zero = 0;
	void *buf;
	int ret = 0;

	buf = calloc(1, len);
	if (!buf)
		return -ENOMEM;
	if (bpf_map_update_elem(s->stats_fd, &zero, buf, BPF_ANY))
		ret = -errno;
	free(buf);
	return ret;
}

#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif

/* Whether this thread has cap in its effective set (true when it cannot tell). */
static bool steer_cap_have(int cap)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d) != 0)
		return true;
	return d[cap / 32].effective & (1u << (cap % 32));
}

/*
 * The capabilities loading the program needs: CAP_BPF, CAP_PERFMON (the verifier allows the
 * program's pointer arithmetic only then) and CAP_NET_ADMIN (a networking program type).
 * CAP_SYS_ADMIN stands in for the first two.
 */
static const char *steer_hint(int err)
{
	static char hint[160];
	bool admin = steer_cap_have(CAP_SYS_ADMIN);

	switch (-err) {
	case EPERM:
	case EACCES:
		hint[0] = 0;
		if (!admin && !steer_cap_have(CAP_BPF))
			strcat(hint, ", CAP_BPF");
		if (!admin && !steer_cap_have(CAP_PERFMON))
			strcat(hint, ", CAP_PERFMON");
		if (!steer_cap_have(CAP_NET_ADMIN))
			strcat(hint, ", CAP_NET_ADMIN");
		if (!hint[0])
			return " (with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN: check "
			       "kernel.unprivileged_bpf_disabled and the LSM policy; "
			       "CORRAL_DEBUG=1 shows the verifier log)";
		memmove(hint + 10, hint + 2, strlen(hint + 2) + 1);
		memcpy(hint, " (missing ", 10);
		strcat(hint, "; CORRAL_DEBUG=1 shows the verifier log)");
		return hint;
	case ENOSYS:
	case EOPNOTSUPP:
		return " (kernel without BPF support)";
	default:
		return "";
	}
}

/*
 * Serialises steer_open() and steer_close() of one instance across processes, so that
 * two daemons starting together do not both adopt (or both replace) the same pins.
 * Returns a descriptor to pass to steer_unlock(), or -1 (then we go on unlocked).
 */
static int steer_lock(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0 && flock(fd, LOCK_EX) == -1) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static void steer_unlock(int fd)
{
	if (fd >= 0)
		close(fd); /* drops the flock */
}

/* Loads the object with its pins and takes ownership of them. Under the instance lock. */
static int steer_load(struct steer *s, const struct config *cfg, int policy, char *err,
		      size_t errlen)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts);
	uint32_t i, w;
	int ret;

	opts.pin_root_path = s->dir;
	s->skel = steer_bpf__open_opts(&opts);
	if (!s->skel) {
		ret = errno ? -errno : -EINVAL;
		steer_err(err, errlen, "opening the steering object: %s", strerror(-ret));
		return ret;
	}
	steer_check_pins(s);
	ret = steer_bpf__load(s->skel);
	if (ret) {
		ret = ret < 0 ? ret : -EINVAL;
		steer_err(err, errlen, "loading the steering program: %s%s", strerror(-ret),
			  steer_hint(ret));
		return ret;
	}
	s->prog_fd = bpf_program__fd(s->skel->progs.steer_select);
	s->socks_fd = bpf_map__fd(s->skel->maps.socks);
	s->stats_fd = bpf_map__fd(s->skel->maps.stats);
	s->ctl = steer_mmap(s->skel->maps.ctl, &s->ctl_len);
	s->cores = steer_mmap(s->skel->maps.cores, &s->cores_len);
	if (!s->ctl || !s->cores) {
		ret = -errno;
		steer_err(err, errlen, "mapping the steering maps: %s", strerror(-ret));
		return ret;
	}

	/*
	 * Take ownership. Everything here describes this run's workers, so it overwrites a
	 * crashed run's state; the socket array needs no cleanup: a dead process's listeners
	 * are closed, and closing a listener empties its slot.
	 */
	for (i = 0; i < STEER_CORES_MAX; i++) {
		struct steer_core *c = &s->cores[i];
		uint32_t drained = 0;

		w = i < cfg->steering.weights_n ? cfg->steering.weights[i] : 1;
		if (s->carried_cores && i < s->cores_n) {
			w = s->carry_cores->core[i].weight;
			drained = s->carry_cores->core[i].drained == STEER_DRAINED;
		}
		__atomic_store_n(&c->weight, i < s->cores_n ? w : 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->drained, drained, __ATOMIC_RELAXED);
		__atomic_store_n(&c->conns, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->reqs, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->load, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->ticks, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->steered, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->taken, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->fresh, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->cpu, i < s->cores_n ? cfg->cores[i] : ~0u, __ATOMIC_RELAXED);
	}
	for (i = 0; i < STEER_LISTEN_MAX; i++) {
		uint16_t port = 0;

		if (i < cfg->listen_n) {
			const struct sockaddr_storage *ss = &cfg->listen[i].ss;

			if (ss->ss_family == AF_INET)
				port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
			else if (ss->ss_family == AF_INET6)
				port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
		}
		/* Port 0 (kernel-chosen) is learnt in steer_register(). */
		__atomic_store_n(&s->ctl->group_port[i], port, __ATOMIC_RELAXED);
	}
	ret = steer_reset_stats(s);
	if (ret) {
		steer_err(err, errlen, "resetting the steering counters: %s", strerror(-ret));
		return ret;
	}
	__atomic_store_n(&s->ctl->groups_n, cfg->listen_n, __ATOMIC_RELAXED);
	__atomic_store_n(&s->ctl->cores_n, s->cores_n, __ATOMIC_RELAXED);
	if (s->carried)
		policy = (int)s->carry_ctl.policy;
	__atomic_store_n(&s->ctl->policy, (uint32_t)policy, __ATOMIC_RELAXED);
	__atomic_store_n(&s->ctl->owner_pid, (uint32_t)getpid(), __ATOMIC_RELAXED);
	__atomic_store_n(&s->ctl->abi, STEER_ABI, __ATOMIC_RELAXED);
	steer_bump(s);
	return 0;
}

/*
 * libbpf's own messages, the verifier's log among them (hundreds of lines), are debug output:
 * printed only with CORRAL_DEBUG=1. The reason a load failed reaches the log as one line.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static int steer_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	const char *dbg = getenv("CORRAL_DEBUG");

	if (!dbg || strcmp(dbg, "1") != 0)
		return 0;
	return vfprintf(stderr, fmt, ap);
}
#pragma GCC diagnostic pop

static int steer_open_as(struct steer **out, const struct config *cfg, bool takeover, char *err,
			 size_t errlen)
{
	const char *pname = cfg->steering.policy[0] ? cfg->steering.policy : "hash";
	struct steer *s;
	int policy, ret, lock;
	uint32_t i;

	*out = NULL;
	policy = steer_policy_parse(pname);
	if (policy < 0) {
		steer_err(err, errlen, "steering.policy: unknown policy \"%s\"", pname);
		return -EINVAL;
	}
	if (cfg->cores_n == 0 || cfg->cores_n > STEER_CORES_MAX) {
		steer_err(err, errlen, "steering: %u workers, must be 1..%d", cfg->cores_n,
			  STEER_CORES_MAX);
		return -EINVAL;
	}
	if (!steer_instance_ok(cfg->instance)) {
		steer_err(err, errlen,
			  "instance \"%s\": use 1-48 of [A-Za-z0-9._-], not starting with '.'",
			  cfg->instance);
		return -EINVAL;
	}
	for (i = 0; i < cfg->steering.weights_n && i < STEER_CORES_MAX; i++) {
		if (cfg->steering.weights[i] > STEER_WEIGHT_MAX) {
			steer_err(err, errlen, "steering.weights[%u]: %u is above %d", i,
				  cfg->steering.weights[i], STEER_WEIGHT_MAX);
			return -EINVAL;
		}
	}

	libbpf_set_print(steer_libbpf_print);
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dir_fd = -1;
	s->cores_n = cfg->cores_n;
	s->takeover = takeover;
	s->ncpus = libbpf_num_possible_cpus();
	if (s->ncpus <= 0) {
		ret = s->ncpus ? s->ncpus : -EINVAL;
		steer_err(err, errlen, "counting possible CPUs: %s", strerror(-ret));
		goto fail;
	}
	snprintf(s->dir, sizeof(s->dir), "%s/%s", STEER_PIN_ROOT, cfg->instance);

	ret = steer_mount_bpffs();
	if (ret) {
		steer_err(err, errlen, "mounting bpffs on %s: %s%s", STEER_BPFFS, strerror(-ret),
			  steer_hint(ret));
		goto fail;
	}
	ret = steer_mkdir(STEER_PIN_ROOT);
	if (!ret)
		ret = steer_mkdir(s->dir);
	if (ret) {
		steer_err(err, errlen, "creating %s: %s%s", s->dir, strerror(-ret),
			  steer_hint(ret));
		goto fail;
	}
	lock = steer_lock(s->dir);
	ret = steer_load(s, cfg, policy, err, errlen);
	steer_unlock(lock);
	if (ret)
		goto fail;
	*out = s;
	return 0;

fail:
	steer_close(s);
	return ret;
}

int steer_open(struct steer **out, const struct config *cfg, char *err, size_t errlen)
{
	return steer_open_as(out, cfg, false, err, errlen);
}

int steer_open_takeover(struct steer **out, const struct config *cfg, char *err, size_t errlen)
{
	return steer_open_as(out, cfg, true, err, errlen);
}

bool steer_carried(const struct steer *s)
{
	return s && s->carried;
}

bool steer_carried_drained(const struct steer *s, uint32_t worker)
{
	return s && s->carried_cores && worker < s->cores_n &&
	       s->carry_cores->core[worker].drained == STEER_DRAINED;
}

int steer_attach(struct steer *s, int fd)
{
	if (!s || fd < 0)
		return -EINVAL;
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &s->prog_fd, sizeof(s->prog_fd)))
		return -errno;
	return 0;
}

/* The socket cookie of fd, to recognise it in the socket array (whose lookups return it). */
static int steer_cookie(int fd, __u64 *cookie)
{
	socklen_t len = sizeof(*cookie);

	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len) == -1)
		return -errno;
	return 0;
}

int steer_register(struct steer *s, uint32_t listen_idx, uint32_t worker, int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	__u64 val = (__u64)fd, have, mine;
	__u32 key, groups;
	uint16_t port = 0, old_port;

	if (!s || listen_idx >= STEER_LISTEN_MAX || worker >= s->cores_n || fd < 0)
		return -EINVAL;
	key = listen_idx * STEER_CORES_MAX + worker;
	if (bpf_map_update_elem(s->socks_fd, &key, &val, BPF_ANY)) {
		int ret = -errno;

		/* A socket sits in one slot at most: registering it twice is not an error. */
		if (ret != -EBUSY || bpf_map_lookup_elem(s->socks_fd, &key, &have) ||
		    steer_cookie(fd, &mine) || have != mine)
			return ret;
	}

	if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
		return -errno;
	if (ss.ss_family == AF_INET)
		port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	else if (ss.ss_family == AF_INET6)
		port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	/*
	 * Learn the group's port (the config may say 0) from its first listener only: a
	 * listener that re-listened on another port must not turn the whole group's
	 * steering off; its own selections just fail and count as fallbacks.
	 */
	old_port = 0;
	__atomic_compare_exchange_n(&s->ctl->group_port[listen_idx], &old_port, port, false,
				    __ATOMIC_RELAXED, __ATOMIC_RELAXED);
	groups = __atomic_load_n(&s->ctl->groups_n, __ATOMIC_RELAXED);
	while (groups < listen_idx + 1 &&
	       !__atomic_compare_exchange_n(&s->ctl->groups_n, &groups, listen_idx + 1, false,
					    __ATOMIC_RELEASE, __ATOMIC_RELAXED))
		;

	/*
	 * Attaching applies to the whole group and the last attach wins; it is the same
	 * program every time, so attaching at each registration is idempotent and also
	 * covers a listener that re-listened into a fresh group after a drain.
	 */
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &s->prog_fd, sizeof(s->prog_fd)))
		return -errno;
	return 0;
}

struct steer_core *steer_core(struct steer *s, uint32_t worker)
{
	if (!s || worker >= s->cores_n)
		return NULL;
	return &s->cores[worker];
}

int steer_set_policy(struct steer *s, const char *name)
{
	int p;

	if (!s || !name)
		return -EINVAL;
	p = steer_policy_parse(name);
	if (p < 0)
		return -EINVAL;
	__atomic_store_n(&s->ctl->policy, (uint32_t)p, __ATOMIC_RELEASE);
	steer_bump(s);
	return 0;
}

int steer_set_weight(struct steer *s, uint32_t worker, uint32_t weight)
{
	if (!s || worker >= s->cores_n || weight > STEER_WEIGHT_MAX)
		return -EINVAL;
	__atomic_store_n(&s->cores[worker].weight, weight, __ATOMIC_RELEASE);
	steer_bump(s);
	return 0;
}

int steer_set_drained(struct steer *s, uint32_t worker, bool drained)
{
	if (!s || worker >= s->cores_n)
		return -EINVAL;
	__atomic_store_n(&s->cores[worker].drained, drained ? STEER_DRAINED : STEER_UNDRAINING,
			 __ATOMIC_RELEASE);
	steer_bump(s);
	return 0;
}

void steer_undrain_done(struct steer *s, uint32_t worker)
{
	uint32_t pending = STEER_UNDRAINING;

	if (!s || worker >= s->cores_n)
		return;
	if (__atomic_compare_exchange_n(&s->cores[worker].drained, &pending, 0, false,
					__ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
		steer_bump(s);
}

const char *steer_policy_name(const struct steer *s)
{
	const char *n;

	if (!s)
		return "kernel-hash";
	n = steer_policy_str(__atomic_load_n(&s->ctl->policy, __ATOMIC_RELAXED));
	return n ? n : "unknown";
}

/* Sums the per-CPU counters; a reader can see a SYN counted or not, never torn. */
static int steer_read_stats(const struct steer *s, struct steer_stats *sum)
{
	struct steer_stats *v;
	__u32 zero = 0;
	int c, i, ret = 0;

	memset(sum, 0, sizeof(*sum));
	v = calloc((size_t)s->ncpus, sizeof(*v));
	if (!v)
		return -ENOMEM;
	if (bpf_map_lookup_elem(s->stats_fd, &zero, v)) {
		ret = -errno;
		goto out;
	}
	for (c = 0; c < s->ncpus; c++) {
		for (i = 0; i < STEER_CORES_MAX; i++)
			sum->steered[i] += v[c].steered[i];
		sum->migrated += v[c].migrated;
		for (i = 0; i < STEER_FB_N; i++)
			sum->fallback[i] += v[c].fallback[i];
	}
out:
	free(v);
	return ret;
}

uint64_t steer_steered(const struct steer *s, uint32_t worker)
{
	struct steer_stats sum;

	if (!s || worker >= s->cores_n || steer_read_stats(s, &sum))
		return 0;
	return sum.steered[worker];
}

uint64_t steer_fallbacks(const struct steer *s)
{
	struct steer_stats sum;
	uint64_t n = 0;
	int i;

	if (!s || steer_read_stats(s, &sum))
		return 0;
	for (i = 0; i < STEER_FB_N; i++)
		n += sum.fallback[i];
	return n;
}

/* Whether the map pinned under m's name is m itself (same kernel map id). */
static bool steer_pinned_is_ours(const struct steer *s, struct bpf_map *m);

int steer_repin(struct steer *s)
{
	char path[192];
	struct bpf_map *m;
	int i, lock, ret = 0;

	if (!s)
		return 0;
	ret = steer_mkdir(STEER_PIN_ROOT);
	if (!ret)
		ret = steer_mkdir(s->dir);
	if (ret)
		return ret;
	lock = steer_lock(s->dir);
	for (i = 0; (m = steer_map_at(s->skel, i)); i++) {
		if (steer_pinned_is_ours(s, m))
			continue;
		snprintf(path, sizeof(path), "%s/%s", s->dir, bpf_map__name(m));
		unlink(path);
		if (bpf_obj_pin(bpf_map__fd(m), path) && !ret)
			ret = -errno;
	}
	steer_unlock(lock);
	return ret;
}

/* Whether the map pinned under m's name is m itself (same kernel map id). */
static bool steer_pinned_is_ours(const struct steer *s, struct bpf_map *m)
{
	struct bpf_map_info a, b;
	__u32 la = sizeof(a), lb = sizeof(b);
	char path[192], base[128];
	bool same;
	int fd;

	if (bpf_map__fd(m) < 0)
		return false;
	steer_base(s, base, sizeof(base));
	snprintf(path, sizeof(path), "%s/%s", base, bpf_map__name(m));
	fd = bpf_obj_get(path);
	if (fd < 0)
		return false;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	same = bpf_obj_get_info_by_fd(fd, &a, &la) == 0 &&
	       bpf_obj_get_info_by_fd(bpf_map__fd(m), &b, &lb) == 0 && a.id == b.id;
	close(fd);
	return same;
}

/* Whether anything is pinned under m's name (ours, or a newer process's). */
static bool steer_pin_exists(const struct steer *s, struct bpf_map *m)
{
	char path[192], base[128];

	steer_base(s, base, sizeof(base));
	snprintf(path, sizeof(path), "%s/%s", base, bpf_map__name(m));
	return access(path, F_OK) == 0;
}

int steer_chown(struct steer *s, uid_t uid, gid_t gid)
{
	struct dirent *e;
	DIR *d;
	int r = 0;

	if (!s)
		return 0;
	d = opendir(s->dir);
	if (!d)
		return -errno;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    fchownat(dirfd(d), e->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) == -1)
			r = -errno;
	if (fchown(dirfd(d), uid, gid) == -1)
		r = -errno;
	closedir(d);
	if (s->dir_fd < 0)
		s->dir_fd = open(s->dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	return r;
}

void steer_close(struct steer *s)
{
	struct bpf_map *m;
	bool replaced = false;
	char base[128];
	int i, lock;

	if (!s)
		return;
	/*
	 * Only the maps still pinned are unpinned: a newer process of the same instance (a
	 * binary upgrade taking over) may have replaced the pins, and keeps using its own.
	 */
	steer_base(s, base, sizeof(base));
	lock = steer_lock(base);
	for (i = 0; s->skel && (m = steer_map_at(s->skel, i)); i++) {
		if (!steer_pinned_is_ours(s, m))
			replaced = replaced ||
				   steer_pin_exists(s, m); /* absent (never pinned): fine */
		else if (s->dir_fd >= 0)
			unlinkat(s->dir_fd, bpf_map__name(m), 0);
		else
			bpf_map__unpin(m, NULL);
	}
	if (s->dir[0] && !replaced) {
		/*
		 * An empty folder (a load that failed before pinning) does not stay behind. After a
		 * privilege drop these fail (root owns the parent): the folder stays.
		 */
		rmdir(s->dir);
		rmdir(STEER_PIN_ROOT); /* fails while other instances exist, as it should */
	}
	steer_unlock(lock);
	if (s->dir_fd >= 0)
		close(s->dir_fd);
	if (s->ctl)
		munmap(s->ctl, s->ctl_len);
	if (s->cores)
		munmap(s->cores, s->cores_len);
	steer_bpf__destroy(s->skel);
	free(s->carry_cores);
	free(s);
}

/*
 * Worker side. Each field has a single writer (this worker), so a relaxed load and store
 * is enough: no lock prefix on the data path, and the program reads whole 32-bit values.
 */
static inline void steer_add(__u32 *p, int d)
{
	__u32 v = __atomic_load_n(p, __ATOMIC_RELAXED);

	if (d < 0 && v == 0)
		return; /* unbalanced close: never wrap to 4 billion connections */
	__atomic_store_n(p, v + (__u32)d, __ATOMIC_RELAXED);
}

void steer_conn_opened(struct steer_core *c)
{
	if (!c)
		return;
	steer_add(&c->conns, 1);
	steer_add(&c->fresh, 1);
	/* One of the connections the program placed here is off the queue (wraps: no clamp). */
	__atomic_store_n(&c->taken, __atomic_load_n(&c->taken, __ATOMIC_RELAXED) + 1,
			 __ATOMIC_RELAXED);
}

void steer_conn_closed(struct steer_core *c, bool had_request)
{
	if (!c)
		return;
	steer_add(&c->conns, -1);
	if (!had_request)
		steer_add(&c->fresh, -1);
}

void steer_req_started(struct steer_core *c, bool first)
{
	if (!c)
		return;
	steer_add(&c->reqs, 1);
	if (first)
		steer_add(&c->fresh, -1);
}

void steer_req_ended(struct steer_core *c)
{
	if (c)
		steer_add(&c->reqs, -1);
}

/*
 * The load figure is an exponentially decayed busy fraction with time constant
 * STEER_LOAD_TAU_NS, whatever the tick length: load += (sample - load) * dt / (dt + tau).
 * A worker that stops being busy fades to 0 within a couple of seconds; one that is pegged
 * by a few heavy connections reaches STEER_LOAD_ONE and looks busy to least-load.
 */
void steer_tick(struct steer_core *c, uint64_t busy_ns, uint64_t interval_ns)
{
	uint64_t sample, load;

	if (!c || interval_ns == 0)
		return;
	if (busy_ns > interval_ns)
		busy_ns = interval_ns;
	sample = busy_ns * STEER_LOAD_ONE / interval_ns;
	if (interval_ns >= 64 * STEER_LOAD_TAU_NS) {
		load = sample; /* the past has fully decayed; also keeps the products small */
	} else {
		uint64_t den = STEER_LOAD_TAU_NS + interval_ns, num;

		load = __atomic_load_n(&c->load, __ATOMIC_RELAXED);
		num = load * STEER_LOAD_TAU_NS + sample * interval_ns;
		/* Round towards the sample, so the figure reaches it instead of sticking near. */
		load = sample >= load ? (num + den - 1) / den : num / den;
	}
	__atomic_store_n(&c->load, (__u32)load, __ATOMIC_RELAXED);
	__atomic_store_n(&c->ticks, __atomic_load_n(&c->ticks, __ATOMIC_RELAXED) + 1,
			 __ATOMIC_RELAXED);
}

/*
 * steered - taken drifts: the kernel's hash places connections the program did not count
 * (fallbacks: taken runs ahead), SYN cookies run the program twice for one connection, a
 * handshake that never completes or a queue migrated to another listener leaves a count
 * behind (steered runs ahead). Once a tick the worker sets it to what its listeners really
 * hold: the kernel's accept queue length (TCP_INFO of a listener: tcpi_unacked). Handshakes
 * under way and accepts whose completion the worker has not reaped yet are the error, for one
 * tick at most.
 */
void steer_resync(struct steer_core *c, const int *fds, uint32_t n)
{
	struct tcp_info ti;
	socklen_t len;
	uint32_t q = 0, i;

	if (!c)
		return;
	for (i = 0; i < n; i++) {
		len = sizeof(ti);
		if (fds[i] >= 0 && getsockopt(fds[i], IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
		    ti.tcpi_state == TCP_LISTEN)
			q += ti.tcpi_unacked;
	}
	__atomic_store_n(&c->taken, __atomic_load_n(&c->steered, __ATOMIC_RELAXED) - q,
			 __ATOMIC_RELAXED);
}
