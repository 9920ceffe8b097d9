/* Access log: per-worker line formatting into a FIFO of chunks, flushed by io_uring writes. */
#ifndef CORRAL_ACCESSLOG_H
#define CORRAL_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config-t.h"
#include "http-t.h"

/*
 * One formatted line is at most this long. Long fields are cut to fixed budgets (URI 2048
 * bytes, Referer and User-Agent 512, Host 256 ...) so that a line always fits and a
 * hostile request cannot make the log line unbounded.
 */
#define ALOG_LINE_MAX 4096
/* Bytes per chunk: ~300 typical lines per write. */
#define ALOG_BUF_BYTES_DEF (64 * 1024)
/*
 * Chunks per worker: one being filled, one being written, and the rest to ride out a slow
 * write (io_uring hands regular-file writes to its worker threads, which a busy machine can
 * hold back for a while): 16 x 64 KiB is about 5,000 lines a core can log while one write is
 * late. Only chunks that ever filled are resident. Past that, lines are dropped and counted
 * (stats log_lines_dropped), never waited for on the data path.
 */
#define ALOG_CHUNKS 16

/* A byte string that need not be NUL-terminated (e.g. a span of the request buffer). */
struct alog_str {
	const char *p; /* NULL or len 0: absent */
	uint32_t len;
};

/* Everything one line says about one finished exchange. Nothing is kept after alog_append. */
struct alog_entry {
	int64_t time_us;    /* CLOCK_REALTIME, microseconds since the epoch */
	uint32_t core;	    /* worker index */
	const char *client; /* client IP as text, NUL-terminated */
	struct alog_str method;
	struct alog_str target;
	struct alog_str host;
	struct alog_str referer;
	struct alog_str user_agent;
	uint8_t version_minor;	  /* HTTP/1.x */
	uint16_t status;	  /* status sent to the client */
	uint64_t bytes_in;	  /* bytes received from the client for this exchange */
	uint64_t bytes_out;	  /* bytes sent to the client for this exchange */
	uint64_t duration_us;	  /* request head parsed -> response end */
	const char *upstream;	  /* backend address text; NULL when corral answered itself */
	const char *reason;	  /* why corral rejected the request, or NULL */
	struct alog_str protocol; /* the version as received, when it is not HTTP/1.x */
	bool protocol_unknown;	  /* no version could be read (JSON null, combined "-") */
	const char *tls_version;  /* "TLSv1.3" over TLS; NULL in plaintext (logged "-") */
	const char *tls_cipher;	  /* "TLS_AES_128_GCM_SHA256" over TLS; NULL in plaintext */
};

/* A span of a parsed buffer as an alog_str (for method, target, host). */
static inline struct alog_str alog_span(const char *buf, struct http_span s)
{
	return (struct alog_str){ s.len ? buf + s.off : NULL, s.len };
}

/*
 * The value of the first header called name (case-insensitive) in a parsed request, e.g.
 * "Referer" or "User-Agent"; an empty alog_str when absent. buf is the parsed buffer.
 */
struct alog_str alog_req_header(const char *buf, const struct http_req *req, const char *name);

/*
 * The same for a serialised head h[0..n) (the canonical head corral forwards, which outlives
 * the parse): name in lower case; the value span inside h, or an empty alog_str.
 */
struct alog_str alog_head_field(const char *h, size_t n, const char *name);
/* Method, target, Host, Referer and User-Agent of a serialised request head h[0..n). */
void alog_entry_set_head(struct alog_entry *e, const char *h, size_t n);
/*
 * What can be read of a rejected request line in p[0..n): method, target and version, split
 * at single spaces; a missing piece stays absent (NULL), and protocol_unknown is set unless a
 * whole line with a version was read.
 */
void alog_rejected_line(const char *p, uint32_t n, struct alog_entry *e);

/*
 * A worker's access-log buffer: two halves. Lines are appended to the "fill" half while the
 * other half is being written by the kernel; a line is always whole inside one half, and
 * each write hands the kernel whole lines only.
 *
 * Worker protocol (single thread: the owning worker; nothing here is shared):
 *
 *	rc = alog_append(b, &entry);          // after each exchange
 *	if (rc == 1) start_flush();           // a write is due now
 *	// on each timer tick: if (alog_pending(b)) start_flush();
 *
 *	start_flush():
 *		len = alog_flush_begin(b, &data);  // 0: nothing to write / a write is in flight
 *		if (len) submit IORING_OP_WRITE(fd, data, len, offset = -1)  // fd opened O_APPEND
 *
 *	on the write's CQE:
 *		if (alog_flush_done(b, cqe->res) == 1) start_flush();  // <0: error, already counted
 *
 *	at shutdown: alog_flush_sync(b, fd) after the last CQE, then alog_free(b).
 *
 * The bytes handed out by alog_flush_begin() stay valid and untouched until the matching
 * alog_flush_done(). A short write is completed by handing out the remainder next; with
 * several workers appending to one O_APPEND file another worker's write could land between
 * the two parts (Linux only writes short to a regular file when the disk is full).
 */
struct alog_buf {
	enum cfg_log_format format;
	char *chunk[ALOG_CHUNKS];
	size_t cap;		 /* bytes per chunk */
	size_t len[ALOG_CHUNKS]; /* bytes held by each chunk */
	uint32_t head;		 /* oldest chunk holding unwritten bytes (written next) */
	uint32_t fill;		 /* the chunk being appended to; head == fill: only one in use */
	bool in_flight;		 /* chunk[head] from woff on is owned by the kernel */
	size_t woff;		 /* bytes of chunk[head] already written */
	size_t wlen;		 /* bytes handed to the kernel in the write in flight */
	uint64_t lines;		 /* lines appended */
	uint64_t lines_dropped;	 /* lines lost: every chunk full (the disk is too slow) */
	uint64_t bytes_dropped;	 /* bytes lost to write errors */
	uint64_t write_errors;
	int64_t ts_sec;	 /* the second the cached time stamps are for */
	char ts_iso[24]; /* "2026-11-27T14:45:00" */
	char ts_clf[32]; /* "27/Nov/2026:14:45:00 +0000" */
};

/*
 * Opens (creating it 0640 if needed) the log file for appending: O_WRONLY | O_APPEND |
 * O_CREAT | O_CLOEXEC. Returns the fd or -errno. One fd can be shared by every worker: each
 * write of whole lines to an O_APPEND regular file lands as one piece.
 */
int alog_open(const char *path);

/* Allocates ALOG_CHUNKS chunks of cap bytes (0: ALOG_BUF_BYTES_DEF; at least 2 * ALOG_LINE_MAX). */
int alog_init(struct alog_buf *b, enum cfg_log_format format, size_t cap);
void alog_free(struct alog_buf *b);

/*
 * Formats one line (with its '\n') into out, which has room for ALOG_LINE_MAX bytes.
 * Returns its length. ts_cache may be a struct alog_buf for its time stamp cache, or NULL.
 */
size_t alog_format(char *out, enum cfg_log_format format, const struct alog_entry *e,
		   struct alog_buf *ts_cache);

/*
 * Appends one line. Returns 1 when the worker should start a flush now, 0 when not, or
 * -ENOBUFS when the line was dropped because every chunk is full (counted in lines_dropped).
 */
int alog_append(struct alog_buf *b, const struct alog_entry *e);

/* True when there are bytes to write and no write in flight (for the timer tick). */
bool alog_pending(const struct alog_buf *b);

/*
 * Hands out the next bytes to write: returns their length and sets *data, or returns 0 when
 * there is nothing to write or a write is already in flight.
 */
size_t alog_flush_begin(struct alog_buf *b, const void **data);

/*
 * The write from alog_flush_begin() completed with res (bytes written, or -errno). Returns 1
 * when another flush should start at once (remainder of a short write, or a chunk that filled
 * up meanwhile), 0 when not, or res < 0 after an error (those bytes are dropped and counted).
 */
int alog_flush_done(struct alog_buf *b, int res);

/* Writes everything buffered with write(2), blocking; for shutdown. 0 or -errno. */
int alog_flush_sync(struct alog_buf *b, int fd);

#endif
