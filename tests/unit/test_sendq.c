/*
 * Unit tests of the send queue helpers (conn.h): a queue of one iovec goes out as a plain send,
 * more as a sendmsg; small pieces queued behind a head are copied into the head's buffer so
 * that the queue is one iovec, large ones and queues that do not start with the head are left
 * as they are; an upstream receive known to wait asks for IORING_RECVSEND_POLL_FIRST. The SQEs
 * are read back from a real ring (nothing is submitted).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "conn.h"

static struct worker w;

static void ring_init(void)
{
	memset(&w, 0, sizeof(w));
	cr_assert_eq(io_uring_queue_init(8, &w.ring, 0), 0);
}

static void ring_fini(void)
{
	io_uring_queue_exit(&w.ring);
}

/* The SQE sendq_submit() prepared: the last one taken from the ring. */
static struct io_uring_sqe *last_sqe(void)
{
	return &w.ring.sq.sqes[(w.ring.sq.sqe_tail - 1) & *w.ring.sq.kring_mask];
}

Test(sendq, one_iovec_is_a_send_more_are_a_sendmsg, .init = ring_init, .fini = ring_fini)
{
	struct sendq q = { 0 };
	char a[] = "head", b[] = "body";
	struct io_uring_sqe *sqe;

	sendq_add(&q, a, 4);
	sendq_submit(&w, &q, 7, OP_C_SEND, 3, 9);
	sqe = last_sqe();
	cr_assert_eq(sqe->opcode, IORING_OP_SEND);
	cr_assert_eq(sqe->fd, 7);
	cr_assert_eq(sqe->addr, (uint64_t)(uintptr_t)a);
	cr_assert_eq(sqe->len, 4);
	cr_assert_eq(sqe->msg_flags, MSG_NOSIGNAL);
	cr_assert_eq(sqe->user_data, ud_pack(OP_C_SEND, 3, 9));
	cr_assert(q.busy);

	q.busy = false;
	sendq_add(&q, b, 4);
	sendq_submit(&w, &q, 7, OP_C_SEND, 3, 9);
	sqe = last_sqe();
	cr_assert_eq(sqe->opcode, IORING_OP_SENDMSG);
	cr_assert_eq(sqe->addr, (uint64_t)(uintptr_t)&q.msg);
	cr_assert_eq(q.msg.msg_iovlen, 2);
	cr_assert_eq(q.msg.msg_iov, q.iov);
}

Test(sendq, small_pieces_behind_the_head_are_copied_into_its_buffer)
{
	char head[64] = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n";
	size_t hl = strlen(head);
	char body[] = "Hello, world!";
	char ext[] = "\r\n0\r\n\r\n";
	struct sendq q = { 0 };

	sendq_add(&q, head, hl);
	sendq_add(&q, body, 13);
	sendq_add(&q, ext, 7);
	sendq_coalesce(&q, head, sizeof(head));
	cr_assert_eq(q.iov_n, 1);
	cr_assert_eq(q.iov[0].iov_base, head);
	cr_assert_eq(q.iov[0].iov_len, hl + 20);
	cr_assert_eq(memcmp(head + hl, "Hello, world!\r\n0\r\n\r\n", 20), 0);
	/* What was sent is still accounted for as before: all of it in one advance. */
	cr_assert(sendq_advance(&q, hl + 20));
	cr_assert_eq(q.iov_n, 0);
}

Test(sendq, what_does_not_fit_or_is_large_or_not_behind_the_head_stays)
{
	static char big[SENDQ_COALESCE_MAX + 1];
	char head[32] = "0123456789";
	char body[32] = "abcdefghijklmnopqrstuvwxyz";
	struct sendq q = { 0 };

	/* Past the head buffer's end. */
	sendq_add(&q, head, 10);
	sendq_add(&q, body, 23);
	sendq_coalesce(&q, head, sizeof(head));
	cr_assert_eq(q.iov_n, 2);
	cr_assert_eq(q.iov[1].iov_base, body);

	/* Over SENDQ_COALESCE_MAX, however large the head buffer. */
	sendq_reset(&q);
	sendq_add(&q, head, 10);
	sendq_add(&q, big, sizeof(big));
	sendq_coalesce(&q, head, 1 << 20);
	cr_assert_eq(q.iov_n, 2);

	/* The queue does not start with the head (a partial send moved past its start). */
	sendq_reset(&q);
	sendq_add(&q, head + 1, 9);
	sendq_add(&q, body, 3);
	sendq_coalesce(&q, head, sizeof(head));
	cr_assert_eq(q.iov_n, 2);
	cr_assert_eq(memcmp(head, "0123456789", 11), 0);
}

Test(sendq, an_upstream_receive_known_to_wait_polls_first, .init = ring_init, .fini = ring_fini)
{
	struct ups u[1];
	struct io_uring_sqe *sqe;

	memset(u, 0, sizeof(u));
	w.ups = u;
	u->fd = 5;
	ups_arm_recv_hint(&w, u, true);
	sqe = last_sqe();
	cr_assert_eq(sqe->opcode, IORING_OP_RECV);
	cr_assert(sqe->ioprio & IORING_RECVSEND_POLL_FIRST);
	cr_assert(sqe->flags & IOSQE_BUFFER_SELECT);
	cr_assert(u->recv_armed);
	cr_assert_eq(u->inflight, 1);

	/* One at a time: armed already, nothing more is submitted. */
	ups_arm_recv_hint(&w, u, true);
	cr_assert_eq(sqe, last_sqe());

	/* Elsewhere bytes may be waiting already: the receive tries them first. */
	u->recv_armed = false;
	ups_arm_recv(&w, u);
	sqe = last_sqe();
	cr_assert_eq(sqe->opcode, IORING_OP_RECV);
	cr_assert_eq(sqe->ioprio & IORING_RECVSEND_POLL_FIRST, 0);
}
