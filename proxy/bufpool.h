/*
 * The receive-buffer pool behind a worker's io_uring provided-buffer ring (worker.c).
 *
 * The kernel takes ring entries in FIFO order, so a ring stocked with every buffer cycles
 * through all of them under any sustained load and the whole pool becomes resident. Here the
 * ring holds only a bounded number of buffers (`want`); the rest wait in a user-space LIFO,
 * and the ring is refilled from its most-recently-freed end. The buffers that get used are the
 * ones used last (resident and cache-warm); the cold ones are never touched, and those that
 * stay unused for a whole release window are named for madvise(MADV_DONTNEED).
 *
 * `want` follows demand, within [min, n]: each receive that found the ring empty (-ENOBUFS)
 * adds one at the end of its loop pass, and a window without such a miss shrinks it to twice
 * the most buffers the kernel took in one pass.
 *
 * Each buffer is in exactly one state: FREE (in the LIFO), RING (posted to the kernel, maybe
 * already taken by a receive whose CQE is not read yet) or OUT (its CQE was read: a
 * connection holds it). Every transition is checked: a buffer the kernel hands out must be
 * in the ring, one given back must be out, so a double return or a stray id fails loudly.
 * Pure: no io_uring, no syscalls; worker.c posts and releases what these functions name.
 */
#ifndef CORRAL_BUFPOOL_H
#define CORRAL_BUFPOOL_H

#include <stdint.h>

enum bufpool_state {
	BP_FREE,
	BP_RING,
	BP_OUT
};

struct bufpool {
	uint32_t n;	  /* buffers, ids 0..n-1 */
	uint32_t *stack;  /* free ids; stack[depth - 1] is the most recently freed */
	uint8_t *state;	  /* enum bufpool_state per id */
	uint32_t depth;	  /* free (in the LIFO) */
	uint32_t in_ring; /* posted and not yet seen taken (>= what the kernel still holds) */
	uint32_t out;	  /* taken and not yet returned */
	uint32_t want;	  /* ring fill target */
	uint32_t min;	  /* lower bound of want */
	uint32_t pass_taken, peak; /* taken in this loop pass; most in one pass this window */
	uint32_t nobufs;	   /* -ENOBUFS seen this window */
	uint32_t pass_nobufs;	   /* -ENOBUFS seen in this loop pass */
	uint32_t depth_low;	   /* lowest depth since the last release */
	uint32_t clean;		   /* stack[0..clean) were released (not resident) */
	uint64_t taken_total, returned_total, released_total, nobufs_total;
};

/* n buffers, all free and all clean (never touched); want starts at min (bounded by n). */
int bufpool_init(struct bufpool *p, uint32_t n, uint32_t min);
void bufpool_free(struct bufpool *p);

/*
 * Ids to post to the ring now, most recently freed first, so that the ring holds `want`:
 * writes at most max of them to ids and marks them RING. Returns how many.
 */
uint32_t bufpool_refill(struct bufpool *p, uint32_t *ids, uint32_t max);

/* A CQE named id (IORING_CQE_F_BUFFER): RING -> OUT. -EINVAL when id is not in the ring. */
int bufpool_taken(struct bufpool *p, uint32_t id);

/*
 * A buffer for user space to fill (TLS plaintext): the top of the LIFO, FREE -> OUT, given
 * back with bufpool_put like any other. Returns its id, or -ENOBUFS when none is free (every
 * free buffer is posted to the ring).
 */
int bufpool_take(struct bufpool *p);

/* A connection gave id back: OUT -> FREE, on top of the LIFO. -EINVAL when id is not out. */
int bufpool_put(struct bufpool *p, uint32_t id);

/* A receive found the ring empty: the pass end grows want by one for each. */
void bufpool_nobufs(struct bufpool *p);

/* The end of one loop pass (all its CQEs read). */
void bufpool_pass_end(struct bufpool *p);

/* The end of a sizing window: want shrinks to what the window used. */
void bufpool_window(struct bufpool *p);

/*
 * The free buffers no pass touched since the last call (the bottom of the LIFO) that are
 * not released yet: writes at most max ids to ids, to be given back to the kernel
 * (madvise MADV_DONTNEED). Returns how many.
 */
uint32_t bufpool_release(struct bufpool *p, uint32_t *ids, uint32_t max);

#endif
