/* Small process-wide helpers: clocks, logging, the assertion tiers of bug.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "daemon.h"

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t now_ms(void)
{
	return now_ns() / 1000000ULL;
}

void log_msg(const char *level, const char *fmt, ...)
{
	char line[1024];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n, m;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line),
		     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ corral[%d] %s: ", tm.tm_year + 1900,
		     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     ts.tv_nsec / 1000000, (int)getpid(), level);
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n += m < 0 ? 0 : (m > (int)sizeof(line) - n - 2 ? (int)sizeof(line) - n - 2 : m);
	line[n++] = '\n';
	/* One write per line: lines from several threads never interleave. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}

void bug_fail(const char *what, const char *file, int line)
{
	log_msg("BUG", "%s:%d: assertion failed: %s", file, line, what);
	abort();
}

/* CROSS-THREAD: any thread adds (relaxed RMW: hits are rare), the metrics thread reads. */
static uint64_t bug_checks;

void bug_check_hit(int *logged, const char *what, const char *file, int line)
{
	__atomic_add_fetch(&bug_checks, 1, __ATOMIC_RELAXED);
	if (__atomic_exchange_n(logged, 1, __ATOMIC_RELAXED) == 0)
		log_msg("error",
			"%s:%d: check failed: %s (logged once; counted in "
			"corral_internal_checks_total; please report)",
			file, line, what);
}

uint64_t bug_checks_total(void)
{
	return __atomic_load_n(&bug_checks, __ATOMIC_RELAXED);
}
