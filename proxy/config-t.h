/* Configuration types: the parsed form of corral.yaml, and every default with its reason. */
#ifndef CORRAL_CONFIG_T_H
#define CORRAL_CONFIG_T_H

#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Hard upper bounds on list sizes, so that config structs are fixed-size. */
#define CFG_LISTEN_MAX	 16  /* more listen addresses than this is a config mistake */
#define CFG_CORES_MAX	 256 /* also the size of the BPF per-core map */
#define CFG_BACKENDS_MAX 256 /* a front proxy with more backends wants service discovery */
#define CFG_PATH_MAX	 256
#define CFG_ERR_MAX	 256
/* Certificates per TLS listener: SNI picks one; more than this wants a certificate store. */
#define CFG_TLS_CERTS_MAX 8

/* Defaults. Each number says why. */
/* Apache/NGINX-like: a client that cannot send a head in 10 s is broken or hostile. */
#define CFG_DEF_CLIENT_HEADER_MS 10000
/* Idle keep-alive: long enough for browsers' reuse, short enough to shed idle sockets. */
#define CFG_DEF_CLIENT_IDLE_MS 60000
/* A client that sends no body byte (or reads no response byte) for this long is stalled. */
#define CFG_DEF_CLIENT_BODY_MS 30000
/* Loopback/LAN connects take microseconds; 2 s is a dead or overloaded backend. */
#define CFG_DEF_UPSTREAM_CONNECT_MS 2000
/* Time from request sent to response head, and between response body reads. */
#define CFG_DEF_UPSTREAM_RESPONSE_MS 30000
/* Graceful shutdown: enough for normal requests to finish, short for a deploy. */
#define CFG_DEF_SHUTDOWN_GRACE_MS 10000
/* Idle upstream keep-alive connections are closed after this (below typical backend 60-75 s). */
#define CFG_DEF_UPSTREAM_IDLE_MS 30000
/* Lingering close: how long corral reads and drops a client's late bytes after its final
 * response, so that they do not make the kernel reset the response away (NGINX: 5 s). */
#define CFG_DEF_LINGER_MS 2000
/* A backend any core failed to connect to is skipped by every core for this long. */
#define CFG_DEF_BACKEND_PARK_MS 1000
/* A WebSocket/Upgrade tunnel with no traffic either way for this long is closed. */
#define CFG_DEF_TUNNEL_IDLE_MS 300000
/*
 * Binary upgrade: the new process must be ready within this, or it is killed and the old one
 * serves on. Loading the BPF program and starting the workers take well under a second; 20 s
 * leave room on a loaded machine. At most 25 s: corralctl waits 30 s for the answer.
 */
#define CFG_DEF_UPGRADE_READY_MS 20000

/*
 * Active health checks (HAProxy's defaults): a check every 2 s, 1 s to answer, 3 failures
 * in a row mark a backend down, 2 successes bring it back. Statuses 200-399 pass.
 */
#define CFG_DEF_HEALTH_INTERVAL_MS 2000
#define CFG_DEF_HEALTH_TIMEOUT_MS  1000
#define CFG_DEF_HEALTH_RISE	   2
#define CFG_DEF_HEALTH_FALL	   3
#define CFG_DEF_HEALTH_EXPECT_LO   200
#define CFG_DEF_HEALTH_EXPECT_HI   399
#define CFG_HEALTH_PATH_MAX	   128 /* a health path is short; bounded so configs stay small */
#define CFG_HEALTH_HOST_MAX	   64

/* 16 KiB head: HAProxy's default bufsize; NGINX allows 4x8 KiB large headers. */
#define CFG_DEF_HEADER_BYTES_MAX 16384
/* 100 headers: HAProxy's and Go's default order of magnitude; real clients send < 40. */
#define CFG_DEF_HEADERS_MAX 100
/* 8 KiB URI: the RFC 9112 recommended minimum to support, and NGINX's default. */
#define CFG_DEF_URI_BYTES_MAX 8192
/* 100 MiB body: generous for uploads, bounded so one client cannot stream forever. */
#define CFG_DEF_BODY_BYTES_MAX (100ULL * 1024 * 1024)
/* Connection slots per core: fits 10k+ idle clients per core in a few tens of MiB. */
#define CFG_DEF_CONNECTIONS_PER_CORE 16384
/* Requests on one client connection before corral closes it (NGINX keepalive_requests). */
#define CFG_DEF_REQUESTS_PER_CONNECTION 10000
/*
 * Idle upstream connections kept per backend per core: by default no per-backend cap (the
 * maximum). A core's idle pool is bounded by its connection table (connections_per_core,
 * exchange.c), so a steady keep-alive load reuses one upstream connection per client and never
 * churns, and idle ones expire after upstream_idle_ms. A cap of 64 made every request past
 * the 64th concurrent one per core close and reopen an upstream connection.
 */
#define CFG_DEF_UPSTREAM_IDLE_PER_BACKEND 65536
/* Bytes a lingering close reads and drops before it gives up (bounds the work per client). */
#define CFG_DEF_LINGER_BYTES_MAX (256 * 1024)
/* Connect attempts per request, each to another backend when there are several: enough to
 * step over a dead backend or two, few enough that a request does not wander for long. */
#define CFG_DEF_UPSTREAM_ATTEMPTS_MAX 3
/*
 * Receive buffers per core and their size: 16 KiB holds a full default head. The provided-
 * buffer ring hands buffers out in FIFO order, so under load every buffer gets touched: the
 * pool (1024 x 16 KiB = 16 MiB per core) is the ceiling of receive memory. An active exchange
 * holds at most one buffer per direction, so 1024 serves ~500 concurrently streaming
 * connections per core; the rest wait for a buffer instead of growing memory.
 */
#define CFG_DEF_BUFFERS_PER_CORE 1024
#define CFG_DEF_BUFFER_BYTES	 16384
/*
 * Listen backlog: 0 = net.core.somaxconn, read at start-up. The kernel caps listen()'s
 * backlog at somaxconn anyway, so the host's setting is the one an operator tunes
 * (deploy/sysctl-corral.conf); the key is for a smaller queue than that.
 */
#define CFG_DEF_LISTEN_BACKLOG 0

enum cfg_balance {
	CFG_BALANCE_ROUND_ROBIN = 0, /* smooth weighted round-robin */
	CFG_BALANCE_LEAST_CONN,
	CFG_BALANCE_HASH_URI,
	CFG_BALANCE_HASH_CLIENT,
};

enum cfg_log_format {
	CFG_LOG_JSON = 0,
	CFG_LOG_COMBINED,
};

struct cfg_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[64]; /* as written in the config, e.g. "127.0.0.1:8080" or "[::1]:80" */
};

/* Which health keys were written (a backend's keys override the top-level defaults). */
enum cfg_health_key {
	CFG_HK_PATH = 1 << 0,
	CFG_HK_INTERVAL = 1 << 1,
	CFG_HK_TIMEOUT = 1 << 2,
	CFG_HK_RISE = 1 << 3,
	CFG_HK_FALL = 1 << 4,
	CFG_HK_EXPECT = 1 << 5,
	CFG_HK_HOST = 1 << 6,
	CFG_HK_SLOW_START = 1 << 7,
};

/* Active health check of a backend: GET path every interval_ms (see proxy/health.c). */
struct cfg_health {
	bool on;      /* checks run (a health: mapping at top level or in the entry) */
	uint32_t set; /* enum cfg_health_key bits given in the file */
	char path[CFG_HEALTH_PATH_MAX]; /* request target, default "/" */
	char host[CFG_HEALTH_HOST_MAX]; /* Host header; "" = the backend's address */
	uint32_t interval_ms;
	uint32_t timeout_ms;	/* connect + answer; at most interval_ms */
	uint32_t rise;		/* successes in a row that bring a down backend back */
	uint32_t fall;		/* failures in a row that mark an up backend down */
	uint32_t slow_start_ms; /* weight ramps from 1 to its full value over this; 0 = at once */
	uint16_t expect_lo, expect_hi; /* passing statuses, inclusive */
};

/* TLS protocol versions a listener accepts (bit set); TLS 1.0 and 1.1 are never accepted. */
#define CFG_TLS_V12 0x1
#define CFG_TLS_V13 0x2

struct cfg_tls_cert {
	char cert[CFG_PATH_MAX]; /* PEM: the leaf certificate, then its chain */
	char key[CFG_PATH_MAX];	 /* PEM private key of the leaf */
};

/* A listen entry's tls: mapping. on == false: a plaintext listener. */
struct cfg_tls {
	bool on;
	bool session_tickets; /* default true: TLS 1.3 resumption by stateless tickets */
	uint8_t protocols;    /* CFG_TLS_V12 | CFG_TLS_V13 by default */
	uint32_t certs_n;     /* at least 1 when on; certs[0] is the default certificate */
	struct cfg_tls_cert certs[CFG_TLS_CERTS_MAX];
	char ciphers[512];	/* TLS 1.2 cipher list (OpenSSL syntax); "" = corral's default */
	char ciphersuites[256]; /* TLS 1.3 suites (OpenSSL syntax); "" = OpenSSL's default */
};

/* A host name in a backend's tls.sni: at most 253 characters (RFC 1035's limit of a name). */
#define CFG_TLS_SNI_MAX 254

/*
 * A backend entry's tls: mapping: corral re-encrypts to that backend. on == false: plaintext.
 * verify: the backend's certificate must chain to a certificate in ca and name sni (or, with
 * no sni, the backend's IP address). ca is required when verify is true: the hop behind a
 * proxy is signed by a private CA as a rule, and the system store would trust every public CA
 * for it. Two backends with different tls settings never share a pooled connection, and a
 * reload that changes one is a new backend identity for pooling (main.c).
 */
struct cfg_backend_tls {
	bool on;
	bool verify;		   /* default true */
	char ca[CFG_PATH_MAX];	   /* PEM CA certificates; "" only when verify is false */
	char sni[CFG_TLS_SNI_MAX]; /* server name sent (and verified); "" = none */
};

struct cfg_backend {
	struct cfg_addr addr;
	uint32_t weight;	  /* 0 = configured but takes no traffic */
	uint8_t send_proxy;	  /* 0, or the PROXY version (1, 2) sent on each new connection */
	struct cfg_health health; /* top-level health merged with this entry's own keys */
	struct cfg_backend_tls tls;
};

struct cfg_timeouts {
	uint32_t client_header_ms;
	uint32_t client_idle_ms;
	uint32_t client_body_ms;
	uint32_t upstream_connect_ms;
	uint32_t upstream_response_ms;
	uint32_t upstream_idle_ms;
	uint32_t tunnel_idle_ms;
	uint32_t shutdown_grace_ms;
	uint32_t linger_ms;
	uint32_t backend_park_ms;
	uint32_t upgrade_ready_ms;
};

struct cfg_limits {
	uint32_t header_bytes_max;
	uint32_t headers_max;
	uint32_t uri_bytes_max;
	uint64_t body_bytes_max;
	uint32_t connections_per_core;
	uint32_t requests_per_connection;
	uint32_t upstream_idle_per_backend;
	uint32_t upstream_attempts_max;
	uint32_t linger_bytes_max;
	uint32_t buffers_per_core;
	uint32_t buffer_bytes;
	uint32_t listen_backlog; /* 0 = net.core.somaxconn */
};

struct cfg_steering {
	char policy[32];		 /* "hash", "round-robin", ...; validated by steer */
	uint32_t weights[CFG_CORES_MAX]; /* per worker index; default 1 */
	uint32_t weights_n;		 /* how many were given */
};

struct cfg_admin {
	char socket[CFG_PATH_MAX]; /* default /run/corral/corral.sock; "" = off */
	struct cfg_addr metrics;   /* admin HTTP listener; metrics_on false = off */
	bool metrics_on;
};

struct cfg_access_log {
	bool on;
	char path[CFG_PATH_MAX];
	enum cfg_log_format format;
};

/* The whole parsed configuration. Immutable once published in a snapshot. */
struct config {
	char path[CFG_PATH_MAX]; /* file it came from */
	char instance[64];	 /* BPF pin folder name; default "default" */

	struct cfg_addr listen[CFG_LISTEN_MAX];
	struct cfg_tls listen_tls[CFG_LISTEN_MAX]; /* per listen entry; .on false = plaintext */
	bool listen_pp[CFG_LISTEN_MAX]; /* per listen entry: a PROXY header (v1/v2) comes first */
	uint32_t listen_n;

	/* Worker cores: cores[i] is the CPU worker i is pinned to. */
	uint32_t cores[CFG_CORES_MAX];
	uint32_t cores_n;

	struct cfg_backend backends[CFG_BACKENDS_MAX];
	uint32_t backends_n;

	enum cfg_balance balance;
	struct cfg_timeouts timeouts;
	struct cfg_limits limits;
	struct cfg_steering steering;
	struct cfg_admin admin;
	struct cfg_access_log access_log;
	struct cfg_health health; /* top-level default for every backend */

	/* Privilege drop after start-up (proxy/privdrop.c); user[0] == 0: stay as started. */
	char user[64];
	char group[64]; /* "" = the user's primary group */
	uid_t uid;	/* resolved from user at load time */
	gid_t gid;	/* resolved from group, or the user's primary group */

	/* Findings that do not refuse the file (an expired certificate): lines, "\n"-separated. */
	char warnings[2 * CFG_ERR_MAX];
};

#endif
