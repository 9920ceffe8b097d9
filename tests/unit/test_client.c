/*
 * Unit tests of client.c's answer when the exchange pool is empty: a request that finds no
 * exchange slot gets a canned 503 and its connection is closed, and nothing crashes or leaks.
 * (The rest of client.c is tested end to end.) The worker is built by hand: one connection
 * slot, an exchange pool of one slot, no ring, no access log.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "conn.h"

struct rig {
	struct worker w;
	struct conn conn;
	uint32_t next_free;
	int peer; /* the client's end of the socketpair */
};

static void rig_init(struct rig *r, uint32_t xslots)
{
	int sv[2];

	memset(r, 0, sizeof(*r));
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	r->peer = sv[1];
	r->w.conns = &r->conn;
	r->w.conn_cap = 1;
	r->w.conn_next_free = &r->next_free;
	r->w.conn_free = NIL;
	r->w.conns_active = 1;
	r->w.conn_limit = 1;
	r->w.alog_fd = -1;
	r->w.stats = calloc(1, sizeof(struct stats_worker));
	r->w.x_cap = xslots;
	r->w.x_free = NIL;
	r->w.xs = xslots ? calloc(xslots, sizeof(struct exchange)) : NULL;
	r->conn.fd = sv[0];
	r->conn.active = true;
	r->conn.ups = NIL;
	r->conn.in.bid = -1;
	r->conn.in.hbuf = NIL;
	r->conn.t.prev = r->conn.t.next = NIL;
}

static void rig_free(struct rig *r)
{
	close(r->peer);
	free(r->w.stats);
	free(r->w.xs);
}

static ssize_t read_all(int fd, char *buf, size_t n)
{
	size_t got = 0;
	ssize_t k;

	while (got < n && (k = read(fd, buf + got, n - got)) > 0)
		got += (size_t)k;
	return (ssize_t)got;
}

Test(client, a_request_that_finds_no_exchange_slot_gets_a_503_and_a_close)
{
	struct rig r;
	struct exchange *held;
	char buf[512];
	ssize_t n;

	rig_init(&r, 1);
	held = xslot_get(&r.w); /* another connection's exchange holds the only slot */
	cr_assert_not_null(held);
	cr_assert_null(r.conn.x);

	/* corral answers this connection itself (e.g. a 408): it needs a slot, and there is none. */
	conn_send_error(&r.w, &r.conn, 408);

	n = read_all(r.peer, buf, sizeof(buf) - 1);
	cr_assert_gt(n, 0, "nothing was sent");
	buf[n] = 0;
	cr_assert(strncmp(buf, "HTTP/1.1 503 ", 13) == 0, "answered %s", buf);
	cr_assert(strstr(buf, "Connection: close") != NULL, "%s", buf);
	/* read_all returned: the peer saw the close. The slot is free, the pool as it was. */
	cr_assert(!r.conn.active);
	cr_assert_eq(r.w.conns_active, 0);
	cr_assert_eq(r.w.conn_free, 0);
	cr_assert_null(r.conn.x);
	cr_assert_eq(r.w.x_used, 1);
	cr_assert_eq(r.w.stats->responses[STATS_5XX], 1);
	cr_assert_eq(r.w.stats->conns_rejected, 1);
	xslot_put(&r.w, held);
	rig_free(&r);
}
