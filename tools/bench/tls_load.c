/*
 * The bench's TLS load generator (build/corral-tls-load), two modes:
 *
 * --churn: every request on a new TLS connection with a FULL handshake. wrk cannot do this:
 *   with `Connection: close` it reconnects with the SSL object it SSL_clear()ed, which keeps the
 *   last session, so from the second request on every connection resumes (bench.py's TLS check
 *   shows it in NGINX's log). Here every connection gets a new SSL object with no session set
 *   and the client's session cache is off, so no connection resumes; the tickets the server
 *   sends are counted and dropped. Each connection: connect, handshake, one `GET PATH` with
 *   `Connection: close`, the whole response read, close_notify sent, socket closed, next.
 *   Latency: from connect() to the response's last byte.
 * keep-alive (the default): N connections, each handshakes once, then GETs back to back. wrk
 *   would do the same, but it makes its N handshakes inside the measured window, and for TLS
 *   they are not negligible (256 full handshakes are 0.15 s or more of proxy CPU, a contender
 *   with dearer handshakes would pay them in its per-request figure). Here the measured window
 *   opens only once every connection has its first response. Latency: request to response.
 *
 * usage: corral-tls-load --port PORT [--churn] [--conns N] [--secs S] [--path /] [--host NAME]
 *        [--mark FILE] [--ciphersuites TLS_AES_128_GCM_SHA256] [--groups X25519]
 * One thread, epoll, TLS 1.3 only. --mark FILE: created when the measured window opens (so the
 * caller reads the proxy's CPU from there). At the end one line "WRKJSON {...}" in the shape of
 * wrk-report.lua's (requests completed in the window), plus a "tls" object: the negotiated
 * version and cipher (and how many connections differed from the first), resumed handshakes
 * (0 unless the server resumes without being asked, which would be a bug) and tickets received.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A response head larger than this is an error: the backend's answers are a few hundred bytes. */
#define LOAD_BUF       16384
#define LOAD_CONNS_MAX 4096

enum state {
	ST_CONNECT,
	ST_HANDSHAKE,
	ST_WRITE,
	ST_READ
};

struct conn {
	int fd;
	enum state st;
	int first; /* keep-alive: the first response of this connection is still to come */
	SSL *ssl;
	uint64_t t0;
	size_t sent, got;
	char buf[LOAD_BUF];
};

static SSL_CTX *ctx;
static int ep;
#define LOAD_SETUP_US                                                                              \
	20000000 /* keep-alive: the window opens after 20 s even if some never answered */
static struct sockaddr_in addr;
static char req[512];
static size_t req_len;
static uint64_t *lat;
static size_t nlat, cap_lat;
static uint64_t bytes, err_connect, err_read, err_write, err_status, resumed, tickets, mismatch,
	handshakes;
static char version[32], cipher[64];
static int churn, measuring, nconns;
static int ready; /* keep-alive: connections that have had their first response */

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

static int on_ticket(SSL *ssl, SSL_SESSION *sess)
{
	(void)ssl;
	(void)sess;
	tickets++;
	return 0; /* not kept: the SSL frees it */
}

static void conn_close(struct conn *c)
{
	if (c->ssl) {
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0) {
		close(c->fd); /* also leaves the epoll set */
		c->fd = -1;
	}
}

static int conn_start(struct conn *c)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
	int one = 1;

	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -errno;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->t0 = now_us();
	c->sent = c->got = 0;
	c->st = ST_CONNECT;
	c->first = 1;
	if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
		err_connect++;
		close(c->fd);
		c->fd = -1;
		return -errno;
	}
	c->ssl = SSL_new(ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) {
		fprintf(stderr, "tls-load: SSL_new failed\n");
		exit(1);
	}
	SSL_set_connect_state(c->ssl);
	if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		perror("tls-load: epoll_ctl");
		exit(1);
	}
	return 0;
}

/* The response is complete when its head and Content-Length bytes of body are in: 1, 0 (more), -1. */
static int response_done(struct conn *c, int *status)
{
	char *end, *cl;
	size_t head;

	c->buf[c->got] = '\0';
	end = strstr(c->buf, "\r\n\r\n");
	if (!end)
		return c->got >= LOAD_BUF - 1 ? -1 : 0;
	head = (size_t)(end - c->buf) + 4;
	*status = (c->got > 12 && !strncmp(c->buf, "HTTP/1.1 ", 9)) ? atoi(c->buf + 9) : 0;
	cl = strcasestr(c->buf, "\r\ncontent-length:");
	if (!cl || cl > end)
		return -1; /* the backend always sends Content-Length */
	return c->got >= head + strtoul(cl + 17, NULL, 10);
}

/* Drives one connection as far as it goes without blocking; restarts it when its request ends. */
static void conn_step(struct conn *c)
{
	int r, status = 0;

	for (;;) {
		switch (c->st) {
		case ST_CONNECT:
		case ST_HANDSHAKE:
			c->st = ST_HANDSHAKE;
			r = SSL_do_handshake(c->ssl);
			if (r != 1) {
				int e = SSL_get_error(c->ssl, r);

				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					return;
				err_connect++;
				goto restart;
			}
			handshakes++;
			if (SSL_session_reused(c->ssl))
				resumed++;
			if (!version[0]) {
				snprintf(version, sizeof(version), "%s", SSL_get_version(c->ssl));
				snprintf(cipher, sizeof(cipher), "%s",
					 SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)));
			} else if (strcmp(version, SSL_get_version(c->ssl)) ||
				   strcmp(cipher,
					  SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)))) {
				mismatch++;
			}
			c->st = ST_WRITE;
			c->t0 = churn ? c->t0 : now_us();
			break;
		case ST_WRITE:
			r = SSL_write(c->ssl, req + c->sent, (int)(req_len - c->sent));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);

				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					return;
				err_write++;
				goto restart;
			}
			c->sent += (size_t)r;
			if (c->sent == req_len) {
				c->st = ST_READ;
				c->got = 0;
			}
			break;
		case ST_READ:
			r = SSL_read(c->ssl, c->buf + c->got, (int)(LOAD_BUF - 1 - c->got));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);

				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					return;
				err_read++;
				goto restart;
			}
			c->got += (size_t)r;
			bytes += (uint64_t)r;
			r = response_done(c, &status);
			if (r == 0)
				break;
			if (r < 0 || status != 200) {
				err_status++;
				goto restart;
			}
			if (c->first) {
				c->first = 0;
				ready++;
			}
			if (!measuring) {
				if (churn)
					goto restart;
				c->t0 = now_us();
				c->sent = 0;
				c->st = ST_WRITE;
				break;
			}
			if (nlat == cap_lat) {
				cap_lat = cap_lat ? cap_lat * 2 : 65536;
				lat = realloc(lat, cap_lat * sizeof(*lat));
				if (!lat) {
					perror("tls-churn");
					exit(1);
				}
			}
			lat[nlat++] = now_us() - c->t0;
			if (!churn) {
				c->t0 = now_us();
				c->sent = 0;
				c->st = ST_WRITE;
				break;
			}
			SSL_shutdown(c->ssl); /* close_notify, as a browser closing the tab would */
			goto restart;
		}
	}
restart:
	ERR_clear_error();
	conn_close(c);
	for (int tries = 0; conn_start(c) < 0; tries++) {
		if (tries == 1000) {
			perror("tls-load: connect keeps failing");
			exit(1);
		}
		usleep(1000);
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t pct(double p)
{
	size_t i;

	if (!nlat)
		return 0;
	i = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
	return lat[i];
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "conns", required_argument, NULL, 'c' },
		{ "secs", required_argument, NULL, 'd' },
		{ "path", required_argument, NULL, 'P' },
		{ "host", required_argument, NULL, 'H' },
		{ "ciphersuites", required_argument, NULL, 's' },
		{ "groups", required_argument, NULL, 'g' },
		{ "churn", no_argument, NULL, 'C' },
		{ "mark", required_argument, NULL, 'm' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = "/", *host = "bench.test", *suites = "TLS_AES_128_GCM_SHA256",
		   *groups = "X25519";
	const char *mark = NULL;
	int port = 0, o;
	double secs = 3;
	struct conn *conns;
	struct epoll_event evs[256];
	uint64_t t0, t1, sum = 0, setup_end;

	nconns = 64;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'p':
			port = atoi(optarg);
			break;
		case 'c':
			nconns = atoi(optarg);
			break;
		case 'd':
			secs = atof(optarg);
			break;
		case 'P':
			path = optarg;
			break;
		case 'H':
			host = optarg;
			break;
		case 's':
			suites = optarg;
			break;
		case 'g':
			groups = optarg;
			break;
		case 'C':
			churn = 1;
			break;
		case 'm':
			mark = optarg;
			break;
		default:
			return 2;
		}
	}
	if (port <= 0 || port > 65535 || nconns < 1 || nconns > LOAD_CONNS_MAX || secs <= 0) {
		fprintf(stderr,
			"usage: %s --port PORT [--churn] [--conns 1-%d] [--secs S] [--path P] "
			"[--host H] [--mark F]\n",
			argv[0], LOAD_CONNS_MAX);
		return 2;
	}
	req_len = (size_t)snprintf(
		req, sizeof(req),
		"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: corral-tls-load\r\n%s\r\n", path, host,
		churn ? "Connection: close\r\n" : "");
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t)port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_ciphersuites(ctx, suites) || !SSL_CTX_set1_groups_list(ctx, groups)) {
		ERR_print_errors_fp(stderr);
		return 1;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* as wrk: the chain is not checked */
	/* No session is ever offered: the callback only counts the tickets the server sends. */
	SSL_CTX_set_session_cache_mode(ctx,
				       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, on_ticket);

	ep = epoll_create1(EPOLL_CLOEXEC);
	conns = calloc((size_t)nconns, sizeof(*conns));
	if (ep < 0 || !conns) {
		perror("tls-churn");
		return 1;
	}
	setup_end = now_us() + LOAD_SETUP_US;
	for (int i = 0; i < nconns; i++) {
		conns[i].fd = -1;
		if (conn_start(&conns[i]) < 0) {
			perror("tls-load: connect");
			return 1;
		}
	}
	/* Keep-alive: every connection handshaken and answered once before the window opens. */
	while (!churn && ready < nconns && now_us() < setup_end) {
		int n = epoll_wait(ep, evs, 256, 100);

		for (int i = 0; i < n; i++)
			conn_step(evs[i].data.ptr);
	}
	measuring = 1;
	handshakes = resumed = tickets = 0;
	bytes = err_connect = err_read = err_write = err_status = 0;
	t0 = now_us();
	t1 = t0 + (uint64_t)(secs * 1e6);
	if (mark) {
		int fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

		if (fd < 0) {
			perror("tls-load: --mark");
			return 1;
		}
		close(fd);
	}
	while (now_us() < t1) {
		int n = epoll_wait(ep, evs, 256, 100);

		for (int i = 0; i < n; i++)
			conn_step(evs[i].data.ptr);
	}
	t1 = now_us();
	for (int i = 0; i < nconns; i++)
		conn_close(&conns[i]);

	for (size_t i = 0; i < nlat; i++)
		sum += lat[i];
	qsort(lat, nlat, sizeof(*lat), cmp_u64);
	printf("WRKJSON {\"requests\":%zu,\"duration_us\":%llu,\"bytes\":%llu,"
	       "\"err_connect\":%llu,\"err_read\":%llu,\"err_write\":%llu,\"err_status\":%llu,"
	       "\"err_timeout\":0,"
	       "\"lat_mean_us\":%.1f,\"lat_max_us\":%llu,\"p50_us\":%llu,\"p90_us\":%llu,\"p99_"
	       "us\":%llu,"
	       "\"p999_us\":%llu,\"tls\":{\"version\":\"%s\",\"cipher\":\"%s\",\"differed\":%llu,"
	       "\"handshakes\":%llu,\"resumed\":%llu,\"tickets\":%llu,\"tickets_per_handshake\":%."
	       "2f,\"groups\":\"%s\","
	       "\"ready\":%d}}\n",
	       nlat, (unsigned long long)(t1 - t0), (unsigned long long)bytes,
	       (unsigned long long)err_connect, (unsigned long long)err_read,
	       (unsigned long long)err_write, (unsigned long long)err_status,
	       nlat ? (double)sum / (double)nlat : 0.0,
	       (unsigned long long)(nlat ? lat[nlat - 1] : 0), (unsigned long long)pct(50),
	       (unsigned long long)pct(90), (unsigned long long)pct(99),
	       (unsigned long long)pct(99.9), version, cipher, (unsigned long long)mismatch,
	       (unsigned long long)handshakes, (unsigned long long)resumed,
	       (unsigned long long)tickets, handshakes ? (double)tickets / (double)handshakes : 0.0,
	       groups, ready);
	return 0;
}
