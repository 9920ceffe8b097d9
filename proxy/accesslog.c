/* Access log: formats lines (JSON or combined) into a worker's double buffer; no syscalls. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "accesslog.h"
#include "bug.h"

_Static_assert(ALOG_CHUNKS >= 2, "one chunk is written while another fills");

/*
 * Output budgets per field, escapes included. Their sum plus the fixed text stays well
 * under ALOG_LINE_MAX, which is what guarantees a line always fits.
 */
#define ALOG_MAX_METHOD	 32
#define ALOG_MAX_TARGET	 2048
#define ALOG_MAX_HOST	 256
#define ALOG_MAX_REFERER 512
#define ALOG_MAX_UA	 512
#define ALOG_MAX_ADDR	 64 /* client and upstream addresses */
#define ALOG_MAX_TLS	 32 /* TLS version and cipher names (OpenSSL's are under 30) */
#define ALOG_MAX_PROTO	 16 /* a rejected request's version as received */
#define ALOG_MAX_REASON	 96
/* The fixed text of a JSON line (keys, quotes, time, five numbers) is under 384 bytes. */
#define ALOG_FIXED_MAX 384
/* The keys and quotes of the TLS fields. */
#define ALOG_TLS_FIXED 32

_Static_assert(ALOG_MAX_METHOD + ALOG_MAX_TARGET + ALOG_MAX_HOST + ALOG_MAX_REFERER + ALOG_MAX_UA +
			       2 * ALOG_MAX_ADDR + ALOG_MAX_PROTO + ALOG_MAX_REASON +
			       2 * ALOG_MAX_TLS + ALOG_TLS_FIXED + ALOG_FIXED_MAX <
		       ALOG_LINE_MAX,
	       "access log field budgets must fit in one line");

/* A bounded writer over a line buffer. */
struct alog_w {
	char *p;
	size_t len;
};

static void w_mem(struct alog_w *w, const char *s, size_t n)
{
	memcpy(w->p + w->len, s, n);
	w->len += n;
}

static void w_lit(struct alog_w *w, const char *s)
{
	w_mem(w, s, strlen(s));
}

static void w_u64(struct alog_w *w, uint64_t v)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		w->p[w->len++] = tmp[--n];
}

static const char alog_hex[] = "0123456789abcdef";

/*
 * Length of the well-formed UTF-8 sequence (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF) starting at s[0] >= 0x80, or 0 when it is not one.
 */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/*
 * JSON string body: '"' and '\\' escaped, control bytes and DEL as \u00XX; well-formed
 * UTF-8 is kept as it is; every byte that is not part of a well-formed UTF-8 sequence is
 * written as \u00XX (the code point of that byte value, as if Latin-1), so the line is
 * always valid UTF-8 and valid JSON whatever the client sent.
 * Writes at most max bytes and never cuts an escape or a UTF-8 sequence in half.
 */
static void w_json(struct alog_w *w, const char *s, size_t n, size_t max)
{
	size_t start = w->len, i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		size_t need = (c == '"' || c == '\\') ? 2 : (c < 0x20 || c == 0x7f) ? 6 : 1;
		size_t u = c >= 0x80 ? utf8_seq((const unsigned char *)s + i, n - i) : 0;

		if (c >= 0x80)
			need = u ? u : 6;
		if (w->len - start + need > max)
			break;
		if (u) {
			w_mem(w, s + i, u);
			i += u - 1;
		} else if (need == 1) {
			w->p[w->len++] = (char)c;
		} else if (need == 2) {
			w->p[w->len++] = '\\';
			w->p[w->len++] = (char)c;
		} else {
			w_lit(w, "\\u00");
			w->p[w->len++] = alog_hex[c >> 4];
			w->p[w->len++] = alog_hex[c & 15];
		}
	}
}

/*
 * Combined-format field (NGINX style): '"', '\\', control bytes and bytes >= 0x7f become
 * \xHH, so a field can never break out of its quotes or forge a new line.
 */
static void w_clf(struct alog_w *w, const char *s, size_t n, size_t max)
{
	size_t start = w->len, i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		size_t need = (c == '"' || c == '\\' || c < 0x20 || c >= 0x7f) ? 4 : 1;

		if (w->len - start + need > max)
			break;
		if (need == 1) {
			w->p[w->len++] = (char)c;
		} else {
			w_lit(w, "\\x");
			w->p[w->len++] = alog_hex[c >> 4];
			w->p[w->len++] = alog_hex[c & 15];
		}
	}
}

static void w_clf_or_dash(struct alog_w *w, struct alog_str s, size_t max)
{
	if (!s.p || !s.len)
		w_lit(w, "-");
	else
		w_clf(w, s.p, s.len, max);
}

static void alog_stamp(struct alog_buf *c, int64_t sec)
{
	static const char mon[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t t = (time_t)sec;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(c->ts_iso, sizeof(c->ts_iso), "%Y-%m-%dT%H:%M:%S", &tm);
	/* By hand: strftime's %b follows the locale, the combined format wants English. */
	snprintf(c->ts_clf, sizeof(c->ts_clf), "%02d/%s/%04d:%02d:%02d:%02d +0000", tm.tm_mday,
		 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	c->ts_sec = sec;
}

size_t alog_format(char *out, enum cfg_log_format format, const struct alog_entry *e,
		   struct alog_buf *ts_cache)
{
	struct alog_buf local;
	struct alog_buf *tc = ts_cache ? ts_cache : &local;
	int64_t sec = e->time_us >= 0 ? e->time_us / 1000000 : 0;
	uint32_t usec = e->time_us >= 0 ? (uint32_t)(e->time_us % 1000000) : 0;
	const char *client = e->client ? e->client : "-";
	struct alog_w w = { .p = out, .len = 0 };

	if (!ts_cache || tc->ts_sec != sec || !tc->ts_iso[0])
		alog_stamp(tc, sec);

	if (format == CFG_LOG_COMBINED) {
		/* %h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-Agent}i" */
		w_clf(&w, client, strlen(client), ALOG_MAX_ADDR);
		w_lit(&w, " - - [");
		w_lit(&w, tc->ts_clf);
		w_lit(&w, "] \"");
		w_clf_or_dash(&w, e->method, ALOG_MAX_METHOD);
		w_lit(&w, " ");
		w_clf_or_dash(&w, e->target, ALOG_MAX_TARGET);
		if (e->protocol.p || e->protocol_unknown) {
			w_lit(&w, " ");
			w_clf_or_dash(&w, e->protocol, ALOG_MAX_PROTO);
			w_lit(&w, "\" ");
		} else {
			w_lit(&w, e->version_minor ? " HTTP/1.1\" " : " HTTP/1.0\" ");
		}
		w_u64(&w, e->status);
		w_lit(&w, " ");
		if (e->bytes_out)
			w_u64(&w, e->bytes_out);
		else
			w_lit(&w, "-");
		w_lit(&w, " \"");
		w_clf_or_dash(&w, e->referer, ALOG_MAX_REFERER);
		w_lit(&w, "\" \"");
		w_clf_or_dash(&w, e->user_agent, ALOG_MAX_UA);
		w_lit(&w, "\"\n");
		return w.len;
	}

	w_lit(&w, "{\"time\":\"");
	w_lit(&w, tc->ts_iso);
	{
		char frac[8] = { '.' };

		for (int i = 6; i >= 1; i--, usec /= 10)
			frac[i] = (char)('0' + usec % 10);
		w_mem(&w, frac, 7);
	}
	w_lit(&w, "Z\",\"core\":");
	w_u64(&w, e->core);
	w_lit(&w, ",\"client\":\"");
	w_json(&w, client, strlen(client), ALOG_MAX_ADDR);
	w_lit(&w, "\",\"method\":\"");
	w_json(&w, e->method.p, e->method.p ? e->method.len : 0, ALOG_MAX_METHOD);
	w_lit(&w, "\",\"uri\":\"");
	w_json(&w, e->target.p, e->target.p ? e->target.len : 0, ALOG_MAX_TARGET);
	if (e->protocol.p) {
		w_lit(&w, "\",\"protocol\":\"");
		w_json(&w, e->protocol.p, e->protocol.len, ALOG_MAX_PROTO);
		w_lit(&w, "\",\"host\":\"");
	} else if (e->protocol_unknown) {
		w_lit(&w, "\",\"protocol\":null,\"host\":\"");
	} else {
		w_lit(&w, e->version_minor ? "\",\"protocol\":\"HTTP/1.1\",\"host\":\""
					   : "\",\"protocol\":\"HTTP/1.0\",\"host\":\"");
	}
	w_json(&w, e->host.p, e->host.p ? e->host.len : 0, ALOG_MAX_HOST);
	w_lit(&w, "\",\"status\":");
	w_u64(&w, e->status);
	w_lit(&w, ",\"bytes_in\":");
	w_u64(&w, e->bytes_in);
	w_lit(&w, ",\"bytes_out\":");
	w_u64(&w, e->bytes_out);
	w_lit(&w, ",\"duration_us\":");
	w_u64(&w, e->duration_us);
	if (e->upstream) {
		w_lit(&w, ",\"upstream\":\"");
		w_json(&w, e->upstream, strlen(e->upstream), ALOG_MAX_ADDR);
		w_lit(&w, "\"");
	} else {
		w_lit(&w, ",\"upstream\":null");
	}
	w_lit(&w, ",\"referer\":\"");
	w_json(&w, e->referer.p, e->referer.p ? e->referer.len : 0, ALOG_MAX_REFERER);
	w_lit(&w, "\",\"user_agent\":\"");
	w_json(&w, e->user_agent.p, e->user_agent.p ? e->user_agent.len : 0, ALOG_MAX_UA);
	if (e->reason) {
		w_lit(&w, "\",\"reason\":\"");
		w_json(&w, e->reason, strlen(e->reason), ALOG_MAX_REASON);
	}
	/* TLS version and cipher of the connection the request came on; "-" in plaintext. */
	w_lit(&w, "\",\"tls\":\"");
	if (e->tls_version)
		w_json(&w, e->tls_version, strlen(e->tls_version), ALOG_MAX_TLS);
	else
		w_lit(&w, "-");
	w_lit(&w, "\",\"tls_cipher\":\"");
	if (e->tls_cipher)
		w_json(&w, e->tls_cipher, strlen(e->tls_cipher), ALOG_MAX_TLS);
	else
		w_lit(&w, "-");
	w_lit(&w, "\"}\n");
	return w.len;
}

struct alog_str alog_req_header(const char *buf, const struct http_req *req, const char *name)
{
	size_t n = strlen(name);
	uint32_t i;

	for (i = 0; i < req->nhdr; i++) {
		const struct http_header *h = &req->hdr[i];

		if (h->name.len == n && !strncasecmp(buf + h->name.off, name, n))
			return alog_span(buf, h->value);
	}
	return (struct alog_str){ NULL, 0 };
}

/* Finds header name (lower case) in a canonical head; the value span or an empty one. */
struct alog_str alog_head_field(const char *h, size_t n, const char *name)
{
	size_t nl = strlen(name);
	const char *p = memchr(h, '\n', n), *end = h + n;
	struct alog_str r = { NULL, 0 };

	while (p && p + 1 < end) {
		const char *line = p + 1, *eol = memchr(line, '\n', (size_t)(end - line));

		if (!eol || eol - line <= 1)
			break;
		if ((size_t)(eol - line) > nl + 1 && line[nl] == ':' &&
		    strncasecmp(line, name, nl) == 0) {
			const char *v = line + nl + 1;

			while (v < eol && *v == ' ')
				v++;
			r.p = v;
			r.len = (uint32_t)(eol - v - (eol[-1] == '\r'));
			return r;
		}
		p = eol;
	}
	return r;
}

/*
 * What can be read of a rejected request line in p[0..n): method, target and version, split
 * at single spaces; a missing piece stays absent (NULL).
 */
void alog_rejected_line(const char *p, uint32_t n, struct alog_entry *e)
{
	const char *eol = p ? memchr(p, '\n', n) : NULL, *sp1, *sp2, *end;

	e->protocol_unknown = true;
	if (!p || n == 0)
		return;
	end = eol ? eol - (eol > p && eol[-1] == '\r') : p + n;
	sp1 = memchr(p, ' ', (size_t)(end - p));
	e->method = (struct alog_str){ p, (uint32_t)((sp1 ? sp1 : end) - p) };
	if (!sp1)
		return;
	sp2 = memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1));
	e->target = (struct alog_str){ sp1 + 1, (uint32_t)((sp2 ? sp2 : end) - sp1 - 1) };
	if (eol && sp2 && sp2 + 1 < end) { /* a version only on a complete line */
		e->protocol = (struct alog_str){ sp2 + 1, (uint32_t)(end - sp2 - 1) };
		e->protocol_unknown = false;
	}
}

/* Method, target, Host, Referer and User-Agent of a serialised (canonical) request head. */
void alog_entry_set_head(struct alog_entry *e, const char *h, size_t n)
{
	const char *sp1, *sp2;

	sp1 = memchr(h, ' ', n);
	sp2 = sp1 ? memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - h)) : NULL;
	if (sp1 && sp2) {
		e->method = (struct alog_str){ h, (uint32_t)(sp1 - h) };
		e->target = (struct alog_str){ sp1 + 1, (uint32_t)(sp2 - sp1 - 1) };
	}
	e->host = alog_head_field(h, n, "host");
	e->referer = alog_head_field(h, n, "referer");
	e->user_agent = alog_head_field(h, n, "user-agent");
}

int alog_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);

	return fd < 0 ? -errno : fd;
}

int alog_init(struct alog_buf *b, enum cfg_log_format format, size_t cap)
{
	memset(b, 0, sizeof(*b));
	if (cap == 0)
		cap = ALOG_BUF_BYTES_DEF;
	if (cap < 2 * ALOG_LINE_MAX)
		cap = 2 * ALOG_LINE_MAX;
	/* Address space only: a chunk's pages become resident when a backlog first reaches it. */
	for (uint32_t i = 0; i < ALOG_CHUNKS; i++) {
		b->chunk[i] = malloc(cap);
		if (!b->chunk[i]) {
			alog_free(b);
			return -ENOMEM;
		}
	}
	b->cap = cap;
	b->format = format;
	b->ts_sec = -1;
	return 0;
}

void alog_free(struct alog_buf *b)
{
	for (uint32_t i = 0; i < ALOG_CHUNKS; i++) {
		free(b->chunk[i]);
		b->chunk[i] = NULL;
	}
}

static uint32_t alog_next(uint32_t i)
{
	return (i + 1) % ALOG_CHUNKS;
}

/* Worth a write now: a sealed chunk waits, or the fill chunk is half full. */
static bool alog_write_due(const struct alog_buf *b)
{
	return !b->in_flight && (b->head != b->fill || b->len[b->fill] >= b->cap / 2);
}

bool alog_pending(const struct alog_buf *b)
{
	return !b->in_flight && (b->head != b->fill || b->len[b->fill]);
}

int alog_append(struct alog_buf *b, const struct alog_entry *e)
{
	if (b->cap - b->len[b->fill] < ALOG_LINE_MAX) {
		/* The fill chunk is full: seal it and fill the next, unless that one still waits. */
		if (alog_next(b->fill) == b->head) {
			b->lines_dropped++;
			return -ENOBUFS;
		}
		b->fill = alog_next(b->fill);
		BUG_ON(b->len[b->fill] != 0);
	}
	b->len[b->fill] += alog_format(b->chunk[b->fill] + b->len[b->fill], b->format, e, b);
	b->lines++;
	return alog_write_due(b);
}

size_t alog_flush_begin(struct alog_buf *b, const void **data)
{
	if (b->in_flight)
		return 0;
	if (b->head == b->fill) {
		if (!b->len[b->fill])
			return 0;
		/* Only the fill chunk holds lines: it goes to the kernel, the next one fills. */
		b->fill = alog_next(b->fill);
	}
	b->in_flight = true;
	b->wlen = b->len[b->head] - b->woff;
	*data = b->chunk[b->head] + b->woff;
	return b->wlen;
}

/* chunk[head] is done with (written, or dropped after an error): the next one is oldest. */
static void alog_retire_head(struct alog_buf *b)
{
	b->len[b->head] = 0;
	b->woff = 0;
	b->head = alog_next(b->head);
}

int alog_flush_done(struct alog_buf *b, int res)
{
	if (!b->in_flight)
		return 0;
	b->in_flight = false;
	if (res == 0 && b->wlen)
		res = -EIO; /* a write of 0 bytes would loop forever */
	if (res < 0) {
		b->write_errors++;
		b->bytes_dropped += b->len[b->head] - b->woff;
		alog_retire_head(b);
		return res;
	}
	b->woff += (size_t)res < b->wlen ? (size_t)res : b->wlen;
	if (b->woff < b->len[b->head])
		return 1; /* short write: the rest goes next */
	alog_retire_head(b);
	return alog_write_due(b);
}

int alog_flush_sync(struct alog_buf *b, int fd)
{
	const void *data;
	size_t len;

	while ((len = alog_flush_begin(b, &data)) > 0) {
		ssize_t n = write(fd, data, len);
		int rc;

		if (n < 0 && errno == EINTR) {
			b->in_flight =
				false; /* nothing was written: hand the same bytes out again */
			continue;
		}
		rc = alog_flush_done(b, n < 0 ? -errno : (int)n);
		if (rc < 0)
			return rc;
	}
	return 0;
}
