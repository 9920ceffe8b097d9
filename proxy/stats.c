/* Stats helpers: reading and merging per-worker stats blocks, percentiles. */
#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "stats.h"

/* Every field of struct stats_worker is a uint64_t, up to and including the last one. */
#define STATS_WORDS                                                                                \
	((offsetof(struct stats_worker, draining) + sizeof(uint64_t)) / sizeof(uint64_t))

_Static_assert(offsetof(struct stats_worker, draining) % sizeof(uint64_t) == 0,
	       "struct stats_worker must hold only uint64_t fields");

void stats_read(struct stats_worker *dst, const struct stats_worker *src)
{
	const uint64_t *s = (const uint64_t *)src;
	uint64_t *d = (uint64_t *)dst;
	size_t i;

	for (i = 0; i < STATS_WORDS; i++)
		d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
}

void stats_sum(struct stats_worker *acc, const struct stats_worker *x)
{
	const uint64_t *s = (const uint64_t *)x;
	uint64_t *d = (uint64_t *)acc;
	size_t i;

	for (i = 0; i < STATS_WORDS; i++)
		d[i] += s[i];
}

uint64_t stats_lat_count(const struct stats_worker *s)
{
	uint64_t n = 0;
	uint32_t i;

	for (i = 0; i < STATS_LAT_BUCKETS; i++)
		n += s->lat_us[i];
	return n;
}

uint64_t stats_percentile(const uint64_t *lat_us, double q)
{
	uint64_t n = 0, rank, seen = 0, lo, hi;
	uint32_t i;

	for (i = 0; i < STATS_LAT_BUCKETS; i++)
		n += lat_us[i];
	if (n == 0)
		return 0;
	if (q > 1)
		q = 1;
	rank = (uint64_t)(q * (double)n);
	if ((double)rank < q * (double)n)
		rank++;
	if (rank == 0)
		rank = 1;
	for (i = 0; i < STATS_LAT_BUCKETS; i++) {
		seen += lat_us[i];
		if (seen >= rank)
			break;
	}
	lo = stats_bucket_lo(i);
	if (i + 1 >= STATS_LAT_BUCKETS)
		return lo; /* open-ended bucket: its lower bound is all we know */
	hi = stats_bucket_lo(i + 1);
	return lo + (hi - lo) / 2;
}

int64_t stats_listen_queue(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	/* For a listening socket the kernel reports the accept queue length in tcpi_unacked. */
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == -1)
		return -errno;
	return ti.tcpi_unacked;
}
