/*
 * The bench's floor: a minimal unparsed io_uring TCP relay. Each client connection gets its own
 * backend connection and bytes are copied both ways, nothing is parsed, nothing is pooled. It
 * is the least work any proxy can do for this traffic, so other contenders are compared to it.
 *
 * usage: corral-relay --listen PORT --backend PORT [--cpus 0,1]
 * One thread per CPU listed (default: one, unpinned), each with its own ring and SO_REUSEPORT
 * listener on 127.0.0.1:PORT (PORT 0: the first thread's kernel-chosen port is shared and
 * printed as "listening on 127.0.0.1:PORT"). Stops on SIGTERM/SIGINT (the process dies).
 */
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* 64 KiB per direction: a 1 MiB body moves in 16 round trips of the ring, as a proxy's would. */
#define RELAY_BUF 65536
/* Submission queue depth; completions are reaped in batches well below it. */
#define RELAY_RING	  4096
#define RELAY_THREADS_MAX 64

enum op {
	OP_ACCEPT = 1,
	OP_CONNECT,
	OP_RECV,
	OP_SEND
};

struct pair;

/* One direction: read from `from`, write what was read to `to`. */
struct dir {
	struct pair *p;
	int from, to;
	uint32_t len, off;
	uint8_t op;
	char buf[RELAY_BUF];
};

struct pair {
	int cfd, bfd;
	int refs; /* operations in flight */
	int dead;
	struct dir up, down; /* up: client -> backend; down: backend -> client */
	struct sockaddr_in baddr;
};

struct relay {
	int lfd, cpu;
	struct io_uring ring;
	struct sockaddr_in baddr;
};

static int g_port, g_bport;

/* user_data: the pointer with the op in its low bits (dir and pair are 8-byte aligned). */
static void *ud_ptr(uint64_t ud)
{
	return (void *)(uintptr_t)(ud & ~7ULL);
}

static struct io_uring_sqe *get_sqe(struct io_uring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(r);

	if (!sqe) {
		io_uring_submit(r);
		sqe = io_uring_get_sqe(r);
	}
	if (!sqe) {
		fprintf(stderr, "relay: no sqe\n");
		abort();
	}
	return sqe;
}

static void arm_accept(struct relay *rl)
{
	struct io_uring_sqe *sqe = get_sqe(&rl->ring);

	io_uring_prep_multishot_accept(sqe, rl->lfd, NULL, NULL, 0);
	io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void arm_recv(struct relay *rl, struct dir *d)
{
	struct io_uring_sqe *sqe = get_sqe(&rl->ring);

	io_uring_prep_recv(sqe, d->from, d->buf, RELAY_BUF, 0);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)d | OP_RECV);
	d->p->refs++;
}

static void arm_send(struct relay *rl, struct dir *d)
{
	struct io_uring_sqe *sqe = get_sqe(&rl->ring);

	io_uring_prep_send(sqe, d->to, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)d | OP_SEND);
	d->p->refs++;
}

/* First error or EOF on either side: close both (cancels the other direction's operation). */
static void pair_kill(struct pair *p)
{
	if (p->dead)
		return;
	p->dead = 1;
	shutdown(p->cfd, SHUT_RDWR);
	if (p->bfd >= 0)
		shutdown(p->bfd, SHUT_RDWR);
}

static void pair_put(struct pair *p)
{
	if (--p->refs > 0)
		return;
	close(p->cfd);
	if (p->bfd >= 0)
		close(p->bfd);
	free(p);
}

static void on_accept(struct relay *rl, int res, uint32_t flags)
{
	struct io_uring_sqe *sqe;
	struct pair *p;
	int one = 1;

	if (!(flags & IORING_CQE_F_MORE))
		arm_accept(rl);
	if (res < 0)
		return;
	p = calloc(1, sizeof(*p));
	if (!p) {
		close(res);
		return;
	}
	p->cfd = res;
	p->bfd = socket(AF_INET, SOCK_STREAM, 0);
	if (p->bfd < 0) {
		close(res);
		free(p);
		return;
	}
	setsockopt(p->cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(p->bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	p->up = (struct dir){ .p = p, .from = p->cfd, .to = p->bfd };
	p->down = (struct dir){ .p = p, .from = p->bfd, .to = p->cfd };
	p->baddr = rl->baddr;
	sqe = get_sqe(&rl->ring);
	io_uring_prep_connect(sqe, p->bfd, (struct sockaddr *)&p->baddr, sizeof(p->baddr));
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)p | OP_CONNECT);
	p->refs = 1;
}

static void on_connect(struct relay *rl, struct pair *p, int res)
{
	if (res < 0) {
		pair_kill(p);
	} else {
		arm_recv(rl, &p->up);
		arm_recv(rl, &p->down);
	}
	pair_put(p);
}

static void on_recv(struct relay *rl, struct dir *d, int res)
{
	if (res <= 0 || d->p->dead) {
		pair_kill(d->p);
	} else {
		d->len = (uint32_t)res;
		d->off = 0;
		arm_send(rl, d);
	}
	pair_put(d->p);
}

static void on_send(struct relay *rl, struct dir *d, int res)
{
	if (res <= 0 || d->p->dead) {
		pair_kill(d->p);
	} else {
		d->off += (uint32_t)res;
		if (d->off < d->len)
			arm_send(rl, d);
		else
			arm_recv(rl, d);
	}
	pair_put(d->p);
}

static int listen_on(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	socklen_t alen = sizeof(a);
	int fd, one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4096) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	g_port = ntohs(a.sin_port);
	return fd;
}

static void *relay_run(void *arg)
{
	struct relay *rl = arg;
	struct io_uring_params prm;
	struct io_uring_cqe *cqe;
	unsigned head, n;
	int ret;

	if (rl->cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(rl->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	/* Created here: a SINGLE_ISSUER ring belongs to the thread that creates it. */
	memset(&prm, 0, sizeof(prm));
	prm.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
	ret = io_uring_queue_init_params(RELAY_RING, &rl->ring, &prm);
	if (ret < 0) {
		fprintf(stderr, "relay: io_uring_queue_init: %s\n", strerror(-ret));
		exit(1);
	}
	arm_accept(rl);
	for (;;) {
		ret = io_uring_submit_and_wait(&rl->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			fprintf(stderr, "relay: io_uring_submit_and_wait: %s\n", strerror(-ret));
			exit(1);
		}
		n = 0;
		io_uring_for_each_cqe(&rl->ring, head, cqe)
		{
			uint64_t ud = cqe->user_data;

			switch (ud & 7) {
			case OP_ACCEPT:
				on_accept(rl, cqe->res, cqe->flags);
				break;
			case OP_CONNECT:
				on_connect(rl, ud_ptr(ud), cqe->res);
				break;
			case OP_RECV:
				on_recv(rl, ud_ptr(ud), cqe->res);
				break;
			case OP_SEND:
				on_send(rl, ud_ptr(ud), cqe->res);
				break;
			}
			n++;
		}
		io_uring_cq_advance(&rl->ring, n);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	static struct relay rls[RELAY_THREADS_MAX];
	int cpus[RELAY_THREADS_MAX], ncpu = 0, i, ret;
	pthread_t th[RELAY_THREADS_MAX];

	for (i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--listen")) {
			g_port = atoi(argv[i + 1]);
		} else if (!strcmp(argv[i], "--backend")) {
			g_bport = atoi(argv[i + 1]);
		} else if (!strcmp(argv[i], "--cpus")) {
			char *s = argv[i + 1], *e;

			while (*s && ncpu < RELAY_THREADS_MAX) {
				cpus[ncpu++] = (int)strtol(s, &e, 10);
				s = *e ? e + 1 : e;
			}
		} else {
			break;
		}
	}
	if (i != argc || !g_bport) {
		fprintf(stderr, "usage: corral-relay --listen PORT --backend PORT [--cpus 0,1]\n");
		return 2;
	}
	if (!ncpu)
		cpus[ncpu++] = -1;
	for (i = 0; i < ncpu; i++) {
		rls[i].cpu = cpus[i];
		rls[i].baddr = (struct sockaddr_in){ .sin_family = AF_INET,
						     .sin_port = htons((uint16_t)g_bport),
						     .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		rls[i].lfd = listen_on(g_port);
		if (rls[i].lfd < 0) {
			fprintf(stderr, "relay: listen: %s\n", strerror(-rls[i].lfd));
			return 1;
		}
	}
	printf("listening on 127.0.0.1:%d\n", g_port);
	fflush(stdout);
	for (i = 0; i < ncpu; i++) {
		ret = pthread_create(&th[i], NULL, relay_run, &rls[i]);
		if (ret) {
			fprintf(stderr, "relay: pthread_create: %s\n", strerror(ret));
			return 1;
		}
	}
	for (i = 0; i < ncpu; i++)
		pthread_join(th[i], NULL);
	return 0;
}
