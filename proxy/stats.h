/* Stats helpers: latency bucket math, reading and merging per-worker stats blocks. */
#ifndef CORRAL_STATS_H
#define CORRAL_STATS_H

#include <stdint.h>
#include "stats-t.h"

/*
 * Log-linear buckets: 0..3 us get one bucket each; from 4 us on, every power of two
 * [2^e, 2^(e+1)) is cut into 4 equal sub-buckets. Bucket i covers
 * [stats_bucket_lo(i), stats_bucket_lo(i + 1)); the last one is open-ended (>= ~1.9 hours).
 * A value is at most 25% above its bucket's lower bound, so a percentile reported as the
 * bucket's midpoint is within 12.5% of the truth.
 */
static inline uint32_t stats_bucket(uint64_t us)
{
	uint32_t e, i;

	if (us < 4)
		return (uint32_t)us;
	e = 63 - (uint32_t)__builtin_clzll(us); /* floor(log2(us)), >= 2 */
	i = (e - 1) * 4 + (uint32_t)((us >> (e - 2)) & 3);
	return i < STATS_LAT_BUCKETS ? i : STATS_LAT_BUCKETS - 1;
}

/* Lower bound in microseconds of bucket i (i <= STATS_LAT_BUCKETS; the end is UINT64_MAX). */
static inline uint64_t stats_bucket_lo(uint32_t i)
{
	if (i >= STATS_LAT_BUCKETS)
		return UINT64_MAX;
	if (i < 4)
		return i;
	return (uint64_t)(4 + (i & 3)) << (i / 4 - 1);
}

/*
 * Worker side: records one request latency in the worker's own block. Single writer, so a
 * relaxed load and a relaxed store (no read-modify-write) are enough; see stats-t.h.
 */
static inline void stats_record_latency(struct stats_worker *s, uint64_t us)
{
	uint64_t *b = &s->lat_us[stats_bucket(us)];

	__atomic_store_n(b, __atomic_load_n(b, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
	__atomic_store_n(&s->lat_sum_us, __atomic_load_n(&s->lat_sum_us, __ATOMIC_RELAXED) + us,
			 __ATOMIC_RELAXED);
}

/*
 * Main thread side: copies a live block with relaxed loads. The copy is not a consistent
 * snapshot across fields (the worker keeps writing), but each field is a value it had.
 */
void stats_read(struct stats_worker *dst, const struct stats_worker *src);

/* acc += x, field by field (gauges too: the sum of conns_active is the total). */
void stats_sum(struct stats_worker *acc, const struct stats_worker *x);

/* Number of latency samples in a block (sum of its buckets). */
uint64_t stats_lat_count(const struct stats_worker *s);

/*
 * The q-quantile (0 < q <= 1) of a bucket array, in microseconds: the midpoint of the bucket
 * holding the ceil(q * n)-th smallest sample. 0 when there is no sample.
 */
uint64_t stats_percentile(const uint64_t *lat_us, double q);

/* Connections waiting in a listening TCP socket's accept queue (TCP_INFO), or -errno. */
int64_t stats_listen_queue(int fd);

#endif
