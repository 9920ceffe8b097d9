/* HTTP/1.1 heads and bodies: llhttp plus corral's stricter checks, canonical re-serialisation, chunked decoding. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "http.h"

/*
 * Design notes.
 *
 * Parsing a head is done twice on purpose. corral first finds the end of the head itself
 * (CRLF CRLF), enforcing the byte, line and URI limits and rejecting bare CR / bare LF while
 * the head is still arriving, so that a slow or hostile client is refused as early as
 * possible. Once the head is complete, corral tokenises it with its own strict rules (they
 * decide the status code) and then runs llhttp, with every lenient flag off, over the same
 * bytes as a second, independent gate: anything llhttp refuses is a 400 (or -EPROTO for a
 * response), and llhttp must agree with corral on the method, version and field count.
 * Two parsers that must agree leave no room for the interpretation gaps that request
 * smuggling lives in.
 *
 * Nothing here allocates or keeps state between calls: the functions work on caller
 * buffers and caller structs only, so they are safe on the data path of every worker.
 * The head parsers are stateless and rescan the whole head on each call; every scan is
 * memchr-driven and bounded by header_bytes_max, and the header timeout bounds how often
 * a slow client can make us rescan.
 */

/* Character classes ------------------------------------------------------------------ */

enum {
	C_TCHAR = 1 << 0,  /* token characters (RFC 9110 5.6.2) */
	C_FVAL = 1 << 1,   /* field-vchar, SP, HTAB, obs-text: allowed inside a field value */
	C_TARGET = 1 << 2, /* request-target characters: VCHAR except '#' (no fragments) */
	C_HOST = 1 << 3,   /* reg-name characters: unreserved, sub-delims, '%' */
	C_HEX = 1 << 4,
	C_DIGIT = 1 << 5,
};

#define ALNUM (C_TCHAR | C_FVAL | C_TARGET | C_HOST)
static const uint8_t cclass[256] = {
	['0' ... '9'] = ALNUM | C_HEX | C_DIGIT,
	['A' ... 'F'] = ALNUM | C_HEX,
	['G' ... 'Z'] = ALNUM,
	['a' ... 'f'] = ALNUM | C_HEX,
	['g' ... 'z'] = ALNUM,
	/* tchar punctuation */
	['!'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['#'] = C_TCHAR | C_FVAL,
	['$'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['%'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['&'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['\''] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['*'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['+'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['-'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['.'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['^'] = C_TCHAR | C_FVAL | C_TARGET,
	['_'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	['`'] = C_TCHAR | C_FVAL | C_TARGET,
	['|'] = C_TCHAR | C_FVAL | C_TARGET,
	['~'] = C_TCHAR | C_FVAL | C_TARGET | C_HOST,
	/* other VCHAR */
	['"'] = C_FVAL | C_TARGET,
	['('] = C_FVAL | C_TARGET | C_HOST,
	[')'] = C_FVAL | C_TARGET | C_HOST,
	[','] = C_FVAL | C_TARGET | C_HOST,
	['/'] = C_FVAL | C_TARGET,
	[':'] = C_FVAL | C_TARGET,
	[';'] = C_FVAL | C_TARGET | C_HOST,
	['<'] = C_FVAL | C_TARGET,
	['='] = C_FVAL | C_TARGET | C_HOST,
	['>'] = C_FVAL | C_TARGET,
	['?'] = C_FVAL | C_TARGET,
	['@'] = C_FVAL | C_TARGET,
	['['] = C_FVAL | C_TARGET,
	['\\'] = C_FVAL | C_TARGET,
	[']'] = C_FVAL | C_TARGET,
	['{'] = C_FVAL | C_TARGET,
	['}'] = C_FVAL | C_TARGET,
	/* whitespace inside values, and obs-text (RFC 9110 5.5 still allows it in values) */
	[' '] = C_FVAL,
	['\t'] = C_FVAL,
	[0x80 ... 0xff] = C_FVAL,
};
#undef ALNUM

static inline bool cc_is(char c, uint8_t cls)
{
	return cclass[(unsigned char)c] & cls;
}

static inline bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static bool all_of(const char *s, size_t n, uint8_t cls)
{
	for (size_t i = 0; i < n; i++)
		if (!cc_is(s[i], cls))
			return false;
	return true;
}

static inline const char *span_ptr(const char *buf, struct http_span s)
{
	return buf + s.off;
}

static inline struct http_span mkspan(size_t off, size_t len)
{
	return (struct http_span){ .off = (uint32_t)off, .len = (uint32_t)len };
}

/* Case-insensitive compare of s[0..n) with a lower-case literal. */
static bool ieq(const char *s, size_t n, const char *lit)
{
	size_t l = strlen(lit);

	return n == l && strncasecmp(s, lit, n) == 0;
}

/* Header names that mean something to corral --------------------------------------- */

enum hdr_kind {
	HK_OTHER = 0,
	HK_HOST,
	HK_CONTENT_LENGTH,
	HK_TRANSFER_ENCODING,
	HK_CONNECTION,
	HK_KEEP_ALIVE,
	HK_PROXY_CONNECTION,
	HK_TE,
	HK_TRAILER,
	HK_UPGRADE,
	HK_EXPECT,
	HK_XFF,
	HK_XFP,
	HK_VIA,
	HK_CLOSE, /* a reserved field name (RFC 9110 18.4): it would clash with Connection: close */
};

/* Length first: the data path classifies every field, often several times. */
static const struct {
	const char *name;
	uint8_t len;
	enum hdr_kind kind;
} hdr_names[] = {
#define HN(s, k)                                                                                   \
	{                                                                                          \
		s, sizeof(s) - 1, k                                                                \
	}
	HN("host", HK_HOST),
	HN("content-length", HK_CONTENT_LENGTH),
	HN("transfer-encoding", HK_TRANSFER_ENCODING),
	HN("connection", HK_CONNECTION),
	HN("keep-alive", HK_KEEP_ALIVE),
	HN("proxy-connection", HK_PROXY_CONNECTION),
	HN("te", HK_TE),
	HN("trailer", HK_TRAILER),
	HN("upgrade", HK_UPGRADE),
	HN("expect", HK_EXPECT),
	HN("x-forwarded-for", HK_XFF),
	HN("x-forwarded-proto", HK_XFP),
	HN("via", HK_VIA),
	HN("close", HK_CLOSE),
#undef HN
};

static enum hdr_kind hdr_kind(const char *name, size_t len)
{
	if (len < 2 || len > 17)
		return HK_OTHER;
	for (size_t i = 0; i < sizeof(hdr_names) / sizeof(hdr_names[0]); i++)
		if (hdr_names[i].len == len && strncasecmp(name, hdr_names[i].name, len) == 0)
			return hdr_names[i].kind;
	return HK_OTHER;
}

/*
 * Iterates over the elements of a comma-separated list value (RFC 9110 5.6.1). Yields each
 * element trimmed of OWS; empty elements are yielded too (len 0) so that callers can
 * decide whether they are acceptable. Returns false at the end.
 */
static bool list_next(const char *v, size_t n, size_t *pos, size_t *eoff, size_t *elen)
{
	size_t p = *pos, s, e;

	if (p > n)
		return false;
	s = p;
	while (p < n && v[p] != ',')
		p++;
	e = p;
	while (s < e && is_ows(v[s]))
		s++;
	while (e > s && is_ows(v[e - 1]))
		e--;
	*eoff = s;
	*elen = e - s;
	*pos = p + 1; /* past the comma; > n after the last element */
	return true;
}

/* Connection header tokens: returns false if an element is not a token. */
struct conn_tokens {
	bool close, keep_alive, upgrade;
};

static bool conn_parse(const char *v, size_t n, struct conn_tokens *ct)
{
	size_t pos = 0, eo, el;

	while (list_next(v, n, &pos, &eo, &el)) {
		if (el == 0)
			continue;
		if (!all_of(v + eo, el, C_TCHAR))
			return false;
		if (ieq(v + eo, el, "close"))
			ct->close = true;
		else if (ieq(v + eo, el, "keep-alive"))
			ct->keep_alive = true;
		else if (ieq(v + eo, el, "upgrade"))
			ct->upgrade = true;
	}
	return true;
}

/* Is the field name listed in any Connection header of the message? */
static bool named_in_connection(const char *buf, const struct http_header *hdr, uint32_t nhdr,
				const char *name, size_t nlen)
{
	for (uint32_t i = 0; i < nhdr; i++) {
		const char *v = span_ptr(buf, hdr[i].value);
		size_t pos = 0, eo, el;

		if (hdr_kind(span_ptr(buf, hdr[i].name), hdr[i].name.len) != HK_CONNECTION)
			continue;
		while (list_next(v, hdr[i].value.len, &pos, &eo, &el))
			if (el == nlen && strncasecmp(v + eo, name, nlen) == 0)
				return true;
	}
	return false;
}

/*
 * Content-Length value: 1*DIGIT, no sign, no list (a repeated or comma-joined value is
 * refused outright rather than merged: strict, and llhttp refuses duplicates anyway).
 */
static bool parse_cl(const char *v, size_t n, uint64_t *out)
{
	uint64_t x = 0;

	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned d;

		if (!cc_is(v[i], C_DIGIT))
			return false;
		d = (unsigned)(v[i] - '0');
		if (x > (UINT64_MAX - d) / 10)
			return false;
		x = x * 10 + d;
	}
	*out = x;
	return true;
}

/*
 * Transfer-Encoding of a request. Returns 0 for exactly "chunked"; 400 when chunked is
 * missing, not final, repeated, or the list is malformed (RFC 9112 6.3: the length cannot
 * be determined); 501 when chunked is final but other codings precede it (RFC 9112 6.1:
 * a coding corral does not implement; corral never decodes gzip etc. for the upstream).
 */
static int te_check(const char *v, size_t n)
{
	size_t pos = 0, eo, el;
	unsigned nel = 0, nchunked = 0;
	bool last_chunked = false;

	while (list_next(v, n, &pos, &eo, &el)) {
		if (el == 0 || !all_of(v + eo, el, C_TCHAR))
			return 400; /* empty element, or parameters (";q=") or junk */
		nel++;
		last_chunked = ieq(v + eo, el, "chunked");
		if (last_chunked)
			nchunked++;
	}
	if (!last_chunked || nchunked != 1)
		return 400;
	return nel == 1 ? 0 : 501;
}

/*
 * Host per RFC 9110 7.2 / RFC 3986 3.2.2: reg-name or IP-literal, optional ":port".
 * userinfo ("@") is refused: it only ever serves to confuse. A port, when present, is
 * 1-5 digits up to 65535. An empty host is valid syntax (an origin without authority).
 */
static bool host_valid(const char *s, size_t n)
{
	size_t i = 0;

	if (n == 0)
		return true;
	if (s[0] == '[') {
		size_t start = ++i;

		while (i < n && s[i] != ']') {
			if (!cc_is(s[i], C_HEX) && s[i] != ':' && s[i] != '.')
				return false;
			i++;
		}
		if (i == n || i - start < 2)
			return false;
		i++; /* ']' */
	} else {
		while (i < n && s[i] != ':') {
			if (!cc_is(s[i], C_HOST))
				return false;
			if (s[i] == '%') {
				if (i + 2 >= n || !cc_is(s[i + 1], C_HEX) ||
				    !cc_is(s[i + 2], C_HEX))
					return false;
				i += 2;
			}
			i++;
		}
		if (i == 0)
			return false; /* ":80" */
	}
	if (i == n)
		return true;
	if (s[i] != ':')
		return false;
	i++;
	if (i == n || n - i > 5)
		return false;
	unsigned port = 0;
	for (; i < n; i++) {
		if (!cc_is(s[i], C_DIGIT))
			return false;
		port = port * 10 + (unsigned)(s[i] - '0');
	}
	return port <= 65535;
}

/* Methods ---------------------------------------------------------------------------- */

/*
 * Any token is a method (RFC 9110 9.1: methods are extensible) and is forwarded, except
 * CONNECT (corral is not a forward proxy) and PRI (the HTTP/2 preface): 501. A method that
 * is not a token is a 400. llhttp 8.1 only knows the methods of its own table, so this table
 * is used only to give a known method its llhttp id (HEAD, idempotence, and the gate's
 * agreement check); a method outside it is METHOD_EXT and is shown to the llhttp gate as
 * POST, which frames a request exactly like any other method (Content-Length or chunked, or
 * no body). Methods are case-sensitive: "get" is an extension method, not GET.
 */
static const struct {
	const char *name;
	uint8_t id;
} methods[] = {
#define XX(num, name, string) { #string, num },
	HTTP_METHOD_MAP(XX)
#undef XX
};

/* An extension method: one outside llhttp's table. Non-idempotent, never HEAD. */
#define METHOD_EXT (-1)

static int method_lookup(const char *s, size_t n)
{
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (strlen(methods[i].name) == n && memcmp(methods[i].name, s, n) == 0)
			return methods[i].id;
	return METHOD_EXT;
}

/* Head framing ------------------------------------------------------------------------ */

struct perr {
	uint16_t status;
	const char *reason;
};

static int fail(struct perr *e, uint16_t status, const char *reason)
{
	e->status = status;
	e->reason = reason;
	return -EPROTO;
}

/* Length of the request-target seen so far in the (maybe incomplete) request line. */
static size_t target_len_so_far(const char *line, size_t n)
{
	const char *sp1 = memchr(line, ' ', n), *sp2;
	size_t rest;

	if (!sp1)
		return 0;
	rest = n - (size_t)(sp1 + 1 - line);
	sp2 = memchr(sp1 + 1, ' ', rest);
	return sp2 ? (size_t)(sp2 - (sp1 + 1)) : rest;
}

/*
 * Finds the end of the head in buf[0..len). Returns the head length (> 0), 0 when more
 * bytes are needed, or -EPROTO. Checks made here, before the head is complete: every LF
 * must be preceded by CR and every CR followed by LF; the head must end within limit bytes
 * (431); the request-target must fit uri_max (414, requests only); the number of field
 * lines must fit lines_max (431); a request must not start with an empty line.
 */
static long head_find(const char *buf, size_t len, size_t limit, uint64_t lines_max, size_t uri_max,
		      bool is_req, struct perr *e)
{
	size_t avail = len < limit ? len : limit;
	size_t pos = 0;
	uint64_t nline = 0; /* lines seen, the start line included */

	for (;;) {
		const char *lf = memchr(buf + pos, '\n', avail - pos);
		size_t end = lf ? (size_t)(lf - buf) : avail; /* end of this line's bytes */
		size_t content_end = end;

		if (lf) {
			if (end == pos || buf[end - 1] != '\r')
				return fail(e, 400, "bare LF in head");
			content_end = end - 1;
		} else if (end > pos && buf[end - 1] == '\r') {
			content_end = end - 1; /* the LF may still come */
		}
		if (memchr(buf + pos, '\r', content_end - pos))
			return fail(e, 400, "bare CR in head");
		if (nline == 0 && is_req && uri_max &&
		    target_len_so_far(buf, content_end) > uri_max)
			return fail(e, 414, "request target too long");
		if (!lf)
			break;
		if (content_end == pos) {
			if (nline == 0)
				return fail(e, 400, "empty line before start line");
			return (long)(end + 1);
		}
		nline++;
		if (nline - 1 > lines_max)
			return fail(e, 431, "too many header fields");
		pos = end + 1;
	}
	if (avail == limit)
		return fail(e, 431, "head too large");
	return 0;
}

/*
 * "Content_Length" or "Transfer_Encoding" (any case, any '-' spelled '_'): a server that maps
 * '_' to '-' (CGI and its descendants do) would see framing corral did not. Refused.
 */
static bool framing_lookalike(const char *name, size_t n)
{
	static const char *const names[] = { "content-length", "transfer-encoding" };

	if (!memchr(name, '_', n))
		return false;
	for (size_t k = 0; k < 2; k++) {
		size_t i;

		if (strlen(names[k]) != n)
			continue;
		for (i = 0; i < n; i++) {
			char c = name[i] == '_' ? '-' : (char)(name[i] | 0x20);

			if (c != names[k][i])
				break;
		}
		if (i == n)
			return true;
	}
	return false;
}

/*
 * Tokenises the field lines of a complete head: buf[start..end) where end is the offset of
 * the final empty line. Every line is known to end in CRLF with no other CR or LF.
 */
static int fields_parse(const char *buf, size_t start, size_t end, struct http_header *hdr,
			uint32_t max, uint32_t *nhdr, struct perr *e)
{
	size_t p = start;
	uint32_t n = 0;

	while (p < end) {
		const char *lf = memchr(buf + p, '\n', end - p);
		size_t le = (size_t)(lf - buf) - 1; /* offset of the CR */
		size_t q = p, vs, ve;

		if (is_ows(buf[p]))
			return fail(e, 400, "obs-fold or leading whitespace in field line");
		while (q < le && cc_is(buf[q], C_TCHAR))
			q++;
		if (q == le || buf[q] != ':') {
			if (q < le && is_ows(buf[q]))
				return fail(e, 400, "whitespace between field name and colon");
			return fail(e, 400, "invalid field name");
		}
		if (q == p)
			return fail(e, 400, "empty field name");
		if (framing_lookalike(buf + p, q - p))
			return fail(e, 400, "underscore spelling of a framing field");
		vs = q + 1;
		while (vs < le && is_ows(buf[vs]))
			vs++;
		ve = le;
		while (ve > vs && is_ows(buf[ve - 1]))
			ve--;
		if (!all_of(buf + vs, ve - vs, C_FVAL))
			return fail(e, 400, "control character in field value");
		if (n >= max)
			return fail(e, 431, "too many header fields");
		hdr[n].name = mkspan(p, q - p);
		hdr[n].value = mkspan(vs, ve - vs);
		n++;
		p = le + 2;
	}
	*nhdr = n;
	return 0;
}

/* llhttp as the second gate ------------------------------------------------------------ */

struct gate {
	uint32_t nfields;
	bool headers_done;
	/* llhttp resets flags/content_length once a message completes (at once for a body-less
	 * or Content-Length: 0 message), so the framing it decided is captured here. */
	uint16_t flags;
	uint64_t content_length;
};

static int gate_field_complete(llhttp_t *p)
{
	((struct gate *)p->data)->nfields++;
	return 0;
}

static int gate_headers_complete(llhttp_t *p)
{
	struct gate *g = p->data;

	g->headers_done = true;
	g->flags = p->flags;
	g->content_length = p->content_length;
	return 0;
}

static const llhttp_settings_t gate_settings = {
	.on_header_field_complete = gate_field_complete,
	.on_headers_complete = gate_headers_complete,
};

/*
 * Runs llhttp (no lenient flag set: llhttp_init leaves them all off) over exactly the head.
 * llhttp goes on past on_headers_complete so that its own framing checks, which run after
 * the callback, also apply; with no body bytes fed it can only end OK or paused for an
 * upgrade. Returns 0 when llhttp accepted the head and agrees on the fields counted.
 */
static int gate_run(llhttp_t *p, enum llhttp_type type, const char *buf, size_t head_len,
		    uint32_t nfields, size_t ext_method_len)
{
	struct gate g = { 0 };
	llhttp_errno_t err;

	llhttp_init(p, type, &gate_settings);
	p->data = &g;
	/* An extension method (ext_method_len > 0) is fed to llhttp as POST, the rest as is. */
	err = ext_method_len ? llhttp_execute(p, "POST", 4) : HPE_OK;
	if (err == HPE_OK)
		err = llhttp_execute(p, buf + ext_method_len, head_len - ext_method_len);
	if (err != HPE_OK && err != HPE_PAUSED_UPGRADE)
		return -1;
	if (!g.headers_done || g.nfields != nfields)
		return -1;
	p->flags = g.flags;
	p->content_length = g.content_length;
	return 0;
}

/*
 * Both parsers must see the same framing: chunked or not, Content-Length or not, and the
 * same length. A disagreement here is exactly the request-smuggling case.
 */
static bool gate_framing_agrees(const llhttp_t *p, bool chunked, bool has_cl, uint64_t cl)
{
	if (!!(p->flags & F_CHUNKED) != chunked || !!(p->flags & F_CONTENT_LENGTH) != has_cl)
		return false;
	return !has_cl || p->content_length == cl;
}

/* Requests ------------------------------------------------------------------------------- */

static size_t eff_limit(uint32_t lim)
{
	return lim ? lim : UINT32_MAX;
}

static uint32_t eff_fields_max(uint32_t lim, uint32_t cap)
{
	return lim && lim < cap ? lim : cap;
}

/* The request line: method SP request-target SP HTTP-version, exactly one SP each. */
static int req_line(struct http_req *req, const char *buf, size_t le, int *method_id,
		    size_t *ver_off, struct perr *e)
{
	const char *sp1 = memchr(buf, ' ', le), *sp2;
	size_t moff = 0, mlen, toff, tlen, voff, vlen;
	const char *v;

	if (!sp1)
		return fail(e, 400, "malformed request line");
	mlen = (size_t)(sp1 - buf);
	if (mlen == 0 || !all_of(buf, mlen, C_TCHAR))
		return fail(e, 400, "invalid method");
	toff = mlen + 1;
	sp2 = memchr(buf + toff, ' ', le - toff);
	if (!sp2)
		return fail(e, 400, "no HTTP version (HTTP/0.9 is not supported)");
	tlen = (size_t)(sp2 - buf) - toff;
	if (tlen == 0)
		return fail(e, 400, "empty request target");
	voff = toff + tlen + 1;
	vlen = le - voff;
	v = buf + voff;
	/* Version first: an HTTP/2 preface ("PRI * HTTP/2.0") is answered 505, not 501. */
	if (vlen == 8 && memcmp(v, "HTTP/", 5) == 0 && cc_is(v[5], C_DIGIT) && v[6] == '.' &&
	    cc_is(v[7], C_DIGIT)) {
		if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
			return fail(e, 505, "HTTP version not supported");
	} else {
		return fail(e, 400, "malformed HTTP version");
	}
	*method_id = method_lookup(buf + moff, mlen);
	if (mlen == 3 && memcmp(buf + moff, "PRI", 3) == 0)
		return fail(e, 501, "PRI is the HTTP/2 connection preface");
	if (*method_id == HTTP_CONNECT)
		return fail(e, 501, "CONNECT is not supported (not a forward proxy)");
	if (!all_of(buf + toff, tlen, C_TARGET))
		return fail(e, 400, "invalid character in request target");
	req->method = mkspan(moff, mlen);
	req->target = mkspan(toff, tlen);
	req->version_minor = (uint8_t)(v[7] - '0');
	*ver_off = voff;
	return 0;
}

/*
 * Reconciles the request-target form (RFC 9112 3.2) and sets req->target to the
 * origin-form path+query to forward. Returns 0, or -EPROTO. *abs_host gets the authority of
 * an absolute-form target (which then wins over Host, RFC 9112 3.2.2).
 */
static int req_target(struct http_req *req, const char *buf, int method_id, size_t ver_off,
		      struct http_span *abs_host, bool *is_abs, struct perr *e)
{
	const char *t = span_ptr(buf, req->target);
	size_t n = req->target.len, i, a;
	/* "/" spelled by the '/' of "HTTP/1.x": a span into buf that reads "/" */
	struct http_span slash = mkspan(ver_off + 4, 1);

	*is_abs = false;
	if (t[0] == '/')
		return 0; /* origin-form */
	if (n == 1 && t[0] == '*') {
		if (method_id != HTTP_OPTIONS)
			return fail(e, 400, "asterisk-form is only for OPTIONS");
		req->target = slash;
		req->target_asterisk = true;
		return 0;
	}
	/* absolute-form: scheme ":" "//" authority path-abempty [ "?" query ] */
	for (i = 0;
	     i < n && (cc_is(t[i], C_DIGIT) || ((t[i] | 0x20) >= 'a' && (t[i] | 0x20) <= 'z') ||
		       t[i] == '+' || t[i] == '-' || t[i] == '.');
	     i++)
		;
	if (i == n || t[i] != ':' || i == 0 || cc_is(t[0], C_DIGIT) || n - i < 3 ||
	    t[i + 1] != '/' || t[i + 2] != '/')
		return fail(e, 400, "authority-form target without CONNECT, or invalid target");
	if (!ieq(t, i, "http") && !ieq(t, i, "https"))
		return fail(e, 400, "absolute-form target with a scheme other than http(s)");
	a = i + 3;
	for (i = a; i < n && t[i] != '/' && t[i] != '?'; i++)
		if (t[i] == '@')
			return fail(e, 400, "userinfo in request target");
	if (i == a || !host_valid(t + a, i - a))
		return fail(e, 400, "invalid authority in request target");
	*abs_host = mkspan(req->target.off + a, i - a);
	*is_abs = true;
	if (i == n) {
		req->target = slash;
		/* RFC 9112 3.2.4: the last proxy sends "*" for OPTIONS with an empty path. */
		req->target_asterisk = method_id == HTTP_OPTIONS;
	} else if (t[i] == '?') {
		/* "/?q" cannot be spelled as one span of the buffer; such targets are very rare. */
		return fail(e, 400, "absolute-form target with a query but no path");
	} else {
		req->target = mkspan(req->target.off + i, n - i);
	}
	return 0;
}

int http_req_parse(struct http_req *req, const char *buf, size_t len, const struct http_limits *lim)
{
	struct perr e = { 0 };
	struct http_header *hdr = req->hdr;
	uint32_t hdr_cap = req->hdr_cap, fmax, nhost = 0, ncl = 0, nte = 0;
	struct conn_tokens ct = { 0 };
	bool has_upgrade = false, expect_100 = false, is_abs = false;
	struct http_span abs_host = { 0 }, te_val = { 0 };
	size_t ver_off = 0, le;
	int method_id = -1, ret, te_status;
	long hl;
	llhttp_t lp;

	memset(req, 0, sizeof(*req));
	req->hdr = hdr;
	req->hdr_cap = hdr_cap;
	fmax = eff_fields_max(lim->headers_max, hdr_cap);

	hl = head_find(buf, len, eff_limit(lim->header_bytes_max), fmax, lim->uri_bytes_max, true,
		       &e);
	if (hl == 0)
		return -EAGAIN;
	if (hl < 0)
		goto err;
	req->head_len = (uint32_t)hl;

	le = (size_t)((const char *)memchr(buf, '\n', (size_t)hl) - buf) - 1;
	ret = req_line(req, buf, le, &method_id, &ver_off, &e);
	if (ret)
		goto err;
	ret = req_target(req, buf, method_id, ver_off, &abs_host, &is_abs, &e);
	if (ret)
		goto err;
	ret = fields_parse(buf, le + 2, (size_t)hl - 2, hdr, fmax, &req->nhdr, &e);
	if (ret)
		goto err;

	for (uint32_t i = 0; i < req->nhdr; i++) {
		const char *v = span_ptr(buf, hdr[i].value);
		size_t vn = hdr[i].value.len;

		switch (hdr_kind(span_ptr(buf, hdr[i].name), hdr[i].name.len)) {
		case HK_HOST:
			if (++nhost > 1) {
				ret = fail(&e, 400, "duplicate Host");
				goto err;
			}
			if (!host_valid(v, vn)) {
				ret = fail(&e, 400, "invalid Host");
				goto err;
			}
			req->host = hdr[i].value;
			break;
		case HK_CONTENT_LENGTH:
			if (++ncl > 1) {
				ret = fail(&e, 400, "repeated Content-Length");
				goto err;
			}
			if (!parse_cl(v, vn, &req->content_length)) {
				ret = fail(&e, 400, "invalid Content-Length");
				goto err;
			}
			break;
		case HK_TRANSFER_ENCODING:
			nte++;
			te_val = hdr[i].value;
			break;
		case HK_CONNECTION:
			if (!conn_parse(v, vn, &ct)) {
				ret = fail(&e, 400, "invalid Connection");
				goto err;
			}
			break;
		case HK_UPGRADE:
			if (vn > 0)
				has_upgrade = true;
			break;
		case HK_EXPECT:
			if (ieq(v, vn, "100-continue"))
				expect_100 = true;
			break;
		default:
			break;
		}
	}
	if (nhost == 0 && req->version_minor == 1) {
		ret = fail(&e, 400, "missing Host");
		goto err;
	}
	if (is_abs)
		req->host = abs_host;

	/* Framing (RFC 9112 6.1-6.3): every ambiguity is a 400 and a close. */
	if (ncl && nte) {
		ret = fail(&e, 400, "Content-Length with Transfer-Encoding");
		goto err;
	}
	if (nte && req->version_minor == 0) {
		ret = fail(&e, 400, "Transfer-Encoding in an HTTP/1.0 request");
		goto err;
	}
	if (nte > 1) {
		ret = fail(&e, 400, "repeated Transfer-Encoding");
		goto err;
	}
	if (nte) {
		te_status = te_check(span_ptr(buf, te_val), te_val.len);
		if (te_status) {
			ret = fail(&e, (uint16_t)te_status,
				   te_status == 501 ? "unsupported transfer coding"
						    : "invalid Transfer-Encoding");
			goto err;
		}
		req->framing = HTTP_BODY_CHUNKED;
	} else if (ncl) {
		if (lim->body_bytes_max && req->content_length > lim->body_bytes_max) {
			ret = fail(&e, 413, "Content-Length over the body limit");
			goto err;
		}
		req->framing = HTTP_BODY_LENGTH;
	}

	if (gate_run(&lp, HTTP_REQUEST, buf, (size_t)hl, req->nhdr,
		     method_id == METHOD_EXT ? req->method.len : 0) ||
	    lp.method != (method_id == METHOD_EXT ? HTTP_POST : method_id) || lp.http_major != 1 ||
	    lp.http_minor != req->version_minor ||
	    !gate_framing_agrees(&lp, nte > 0, ncl > 0, req->content_length)) {
		ret = fail(&e, 400, "rejected by llhttp");
		goto err;
	}

	req->is_head = method_id == HTTP_HEAD;
	req->is_idempotent = method_id == HTTP_GET || method_id == HTTP_HEAD ||
			     method_id == HTTP_PUT || method_id == HTTP_DELETE ||
			     method_id == HTTP_OPTIONS || method_id == HTTP_TRACE;
	if (req->version_minor == 1)
		req->keep_alive = !ct.close;
	else
		req->keep_alive = ct.keep_alive && !ct.close;
	/* RFC 9110 10.1.1 and 7.8: Expect and Upgrade are ignored in HTTP/1.0 requests. */
	req->expect_continue = expect_100 && req->version_minor == 1;
	req->upgrade = ct.upgrade && has_upgrade && req->version_minor == 1;
	return (int)hl;
err:
	req->status = e.status;
	req->reason = e.reason;
	return -EPROTO;
}

/* Responses --------------------------------------------------------------------------------- */

int http_resp_parse(struct http_resp *resp, const char *buf, size_t len,
		    const struct http_limits *lim, bool req_is_head)
{
	struct perr e = { 0 };
	struct http_header *hdr = resp->hdr;
	uint32_t hdr_cap = resp->hdr_cap, fmax, ncl = 0, nte = 0;
	struct conn_tokens ct = { 0 };
	struct http_span te_val = { 0 };
	size_t le;
	const char *v;
	long hl;
	int ret;
	llhttp_t lp;

	memset(resp, 0, sizeof(*resp));
	resp->hdr = hdr;
	resp->hdr_cap = hdr_cap;
	fmax = eff_fields_max(lim->headers_max, hdr_cap);

	hl = head_find(buf, len, eff_limit(lim->header_bytes_max), fmax, 0, false, &e);
	if (hl == 0)
		return -EAGAIN;
	if (hl < 0)
		goto err;
	resp->head_len = (uint32_t)hl;

	/* HTTP-version SP 3DIGIT [ SP reason-phrase ]; a missing SP+reason is tolerated. */
	le = (size_t)((const char *)memchr(buf, '\n', (size_t)hl) - buf) - 1;
	v = buf;
	if (le < 12 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1') ||
	    v[8] != ' ' || v[9] < '1' || v[9] > '5' || !cc_is(v[10], C_DIGIT) ||
	    !cc_is(v[11], C_DIGIT) || (le > 12 && v[12] != ' ')) {
		ret = fail(&e, 502, "malformed status line");
		goto err;
	}
	resp->version_minor = (uint8_t)(v[7] - '0');
	resp->code = (uint16_t)((v[9] - '0') * 100 + (v[10] - '0') * 10 + (v[11] - '0'));
	if (le > 12) {
		if (!all_of(v + 13, le - 13, C_FVAL)) {
			ret = fail(&e, 502, "control character in reason phrase");
			goto err;
		}
		resp->reason_phrase = mkspan(13, le - 13);
	}

	ret = fields_parse(buf, le + 2, (size_t)hl - 2, hdr, fmax, &resp->nhdr, &e);
	if (ret)
		goto err;
	for (uint32_t i = 0; i < resp->nhdr; i++) {
		const char *hv = span_ptr(buf, hdr[i].value);
		size_t vn = hdr[i].value.len;

		switch (hdr_kind(span_ptr(buf, hdr[i].name), hdr[i].name.len)) {
		case HK_CONTENT_LENGTH:
			if (++ncl > 1 || !parse_cl(hv, vn, &resp->content_length)) {
				ret = fail(&e, 502, "invalid or repeated Content-Length");
				goto err;
			}
			break;
		case HK_TRANSFER_ENCODING:
			nte++;
			te_val = hdr[i].value;
			break;
		case HK_CONNECTION:
			if (!conn_parse(hv, vn, &ct)) {
				ret = fail(&e, 502, "invalid Connection");
				goto err;
			}
			break;
		default:
			break;
		}
	}
	if (ncl && nte) {
		ret = fail(&e, 502, "Content-Length with Transfer-Encoding");
		goto err;
	}
	/*
	 * Only exactly "chunked" is accepted: corral re-frames the body, so a coding it would
	 * silently strip (gzip, chunked) would corrupt it, and an HTTP/1.0 message with
	 * Transfer-Encoding has faulty framing (RFC 9112 6.1).
	 */
	if (nte && (nte > 1 || resp->version_minor == 0 ||
		    !ieq(span_ptr(buf, te_val), te_val.len, "chunked"))) {
		ret = fail(&e, 502, "unsupported Transfer-Encoding");
		goto err;
	}

	if (gate_run(&lp, HTTP_RESPONSE, buf, (size_t)hl, resp->nhdr, 0) ||
	    lp.status_code != resp->code || lp.http_major != 1 ||
	    lp.http_minor != resp->version_minor ||
	    !gate_framing_agrees(&lp, nte > 0, ncl > 0, resp->content_length)) {
		ret = fail(&e, 502, "rejected by llhttp");
		goto err;
	}

	/* RFC 9112 6.3: the framing, in the order the RFC gives. */
	if (req_is_head || resp->code < 200 || resp->code == 204 || resp->code == 304)
		resp->framing = HTTP_BODY_NONE;
	else if (nte)
		resp->framing = HTTP_BODY_CHUNKED;
	else if (ncl)
		resp->framing = HTTP_BODY_LENGTH;
	else
		resp->framing = HTTP_BODY_CLOSE;

	if (resp->version_minor == 1)
		resp->keep_alive = !ct.close;
	else
		resp->keep_alive = ct.keep_alive && !ct.close;
	if (resp->framing == HTTP_BODY_CLOSE || resp->code == 101)
		resp->keep_alive = false;
	return (int)hl;
err:
	resp->reason = e.reason;
	return -EPROTO;
}

/* Serialisation ------------------------------------------------------------------------------- */

struct wbuf {
	char *p;
	size_t len, cap;
	bool over;
};

static void w_mem(struct wbuf *w, const void *s, size_t n)
{
	if (w->over || n > w->cap - w->len) {
		w->over = true;
		return;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
}

static void w_str(struct wbuf *w, const char *s)
{
	w_mem(w, s, strlen(s));
}

static void w_span(struct wbuf *w, const char *buf, struct http_span s)
{
	w_mem(w, buf + s.off, s.len);
}

static void w_u64(struct wbuf *w, uint64_t x)
{
	char tmp[24];
	size_t i = sizeof(tmp);

	do {
		tmp[--i] = (char)('0' + x % 10);
		x /= 10;
	} while (x);
	w_mem(w, tmp + i, sizeof(tmp) - i);
}

static int w_end(struct wbuf *w)
{
	return w->over ? -ENOSPC : (int)w->len;
}

static struct wbuf w_init(char *out, size_t cap)
{
	return (struct wbuf){ .p = out, .cap = cap < INT_MAX ? cap : INT_MAX };
}

/* Writes "Name: v1, v2, ..., extra\r\n" from every header of the given kind plus extra. */
static void w_joined(struct wbuf *w, const char *name, const char *buf,
		     const struct http_header *hdr, uint32_t nhdr, enum hdr_kind kind,
		     const char *extra)
{
	w_str(w, name);
	w_str(w, ": ");
	for (uint32_t i = 0; i < nhdr; i++) {
		if (hdr[i].value.len == 0 ||
		    hdr_kind(span_ptr(buf, hdr[i].name), hdr[i].name.len) != kind)
			continue;
		w_span(w, buf, hdr[i].value);
		w_str(w, ", ");
	}
	w_str(w, extra);
	w_str(w, "\r\n");
}

/*
 * The header kinds corral writes itself or that are hop-by-hop: never copied as received.
 * Upgrade is the exception the callers handle (kept for upgrade requests and 101).
 */
static bool hop_or_own(enum hdr_kind k)
{
	switch (k) {
	case HK_HOST:
	case HK_CONTENT_LENGTH:
	case HK_TRANSFER_ENCODING:
	case HK_CONNECTION:
	case HK_KEEP_ALIVE:
	case HK_PROXY_CONNECTION:
	case HK_TE:
	case HK_TRAILER:
	case HK_UPGRADE:
	case HK_XFF:
	case HK_XFP:
	case HK_VIA:
	case HK_CLOSE:
		return true;
	default:
		return false;
	}
}

/*
 * Copies the end-to-end fields: everything but hop-by-hop, corral's own, and the fields
 * the message's Connection header names (RFC 9110 7.6.1). keep_upgrade keeps Upgrade.
 */
static void w_end_to_end(struct wbuf *w, const char *buf, const struct http_header *hdr,
			 uint32_t nhdr, bool keep_upgrade, bool drop_expect)
{
	bool has_conn = false;

	for (uint32_t i = 0; i < nhdr && !has_conn; i++)
		has_conn = hdr_kind(span_ptr(buf, hdr[i].name), hdr[i].name.len) == HK_CONNECTION;
	for (uint32_t i = 0; i < nhdr; i++) {
		const char *name = span_ptr(buf, hdr[i].name);
		enum hdr_kind k = hdr_kind(name, hdr[i].name.len);

		if (k == HK_UPGRADE && keep_upgrade)
			goto copy;
		if (hop_or_own(k) || (k == HK_EXPECT && drop_expect))
			continue;
		if (has_conn && named_in_connection(buf, hdr, nhdr, name, hdr[i].name.len))
			continue;
	copy:
		w_span(w, buf, hdr[i].name);
		w_str(w, ": ");
		w_span(w, buf, hdr[i].value);
		w_str(w, "\r\n");
	}
}

int http_req_serialize(const struct http_req *req, const char *buf, const struct http_fwd *fwd,
		       char *out, size_t cap)
{
	struct wbuf w = w_init(out, cap);

	w_span(&w, buf, req->method);
	w_str(&w, " ");
	if (req->target_asterisk)
		w_str(&w, "*");
	else
		w_span(&w, buf, req->target);
	w_str(&w, " HTTP/1.1\r\nHost: ");
	w_span(&w, buf, req->host);
	w_str(&w, "\r\n");
	/* A 1.0 client's Expect is ignored (RFC 9110 10.1.1): do not let the upstream act on it. */
	w_end_to_end(&w, buf, req->hdr, req->nhdr, req->upgrade, req->version_minor == 0);
	if (req->framing == HTTP_BODY_LENGTH) {
		w_str(&w, "Content-Length: ");
		w_u64(&w, req->content_length);
		w_str(&w, "\r\n");
	} else if (req->framing == HTTP_BODY_CHUNKED) {
		w_str(&w, "Transfer-Encoding: chunked\r\n");
	}
	if (fwd && fwd->client_ip)
		w_joined(&w, "X-Forwarded-For", buf, req->hdr, req->nhdr, HK_XFF, fwd->client_ip);
	if (fwd && fwd->proto) {
		w_str(&w, "X-Forwarded-Proto: ");
		w_str(&w, fwd->proto);
		w_str(&w, "\r\n");
	}
	w_joined(&w, "Via", buf, req->hdr, req->nhdr, HK_VIA,
		 req->version_minor ? "1.1 corral" : "1.0 corral");
	w_str(&w, req->upgrade ? "Connection: upgrade\r\n\r\n" : "Connection: keep-alive\r\n\r\n");
	return w_end(&w);
}

static bool has_kind(const char *buf, const struct http_header *hdr, uint32_t nhdr,
		     enum hdr_kind kind)
{
	for (uint32_t i = 0; i < nhdr; i++)
		if (hdr_kind(span_ptr(buf, hdr[i].name), hdr[i].name.len) == kind)
			return true;
	return false;
}

int http_resp_serialize(const struct http_resp *resp, const char *buf, uint8_t client_minor,
			bool keep_alive, bool req_is_head, char *out, size_t cap,
			enum http_framing *out_framing)
{
	struct wbuf w = w_init(out, cap);
	enum http_framing f = resp->framing;
	bool interim = resp->code < 200, switching = resp->code == 101;

	w_str(&w, "HTTP/1.1 ");
	w_u64(&w, resp->code);
	w_str(&w, " ");
	if (resp->reason_phrase.len)
		w_span(&w, buf, resp->reason_phrase);
	else
		w_str(&w, http_status_text(resp->code));
	w_str(&w, "\r\n");
	w_end_to_end(&w, buf, resp->hdr, resp->nhdr, switching, false);

	if (interim) {
		f = HTTP_BODY_NONE;
	} else if (f == HTTP_BODY_LENGTH) {
		w_str(&w, "Content-Length: ");
		w_u64(&w, resp->content_length);
		w_str(&w, "\r\n");
	} else if (f == HTTP_BODY_CHUNKED || f == HTTP_BODY_CLOSE) {
		if (client_minor >= 1) {
			f = HTTP_BODY_CHUNKED;
			w_str(&w, "Transfer-Encoding: chunked\r\n");
		} else {
			f = HTTP_BODY_CLOSE;
		}
	} else if ((req_is_head || resp->code == 304) &&
		   has_kind(buf, resp->hdr, resp->nhdr, HK_CONTENT_LENGTH)) {
		/* The length the body would have had (RFC 9110 8.6); 204 never has one. */
		w_str(&w, "Content-Length: ");
		w_u64(&w, resp->content_length);
		w_str(&w, "\r\n");
	}
	w_joined(&w, "Via", buf, resp->hdr, resp->nhdr, HK_VIA,
		 resp->version_minor ? "1.1 corral" : "1.0 corral");
	if (switching)
		w_str(&w, "Connection: upgrade\r\n");
	else if (interim)
		; /* the final response says what happens to the connection */
	else if (!keep_alive || f == HTTP_BODY_CLOSE)
		w_str(&w, "Connection: close\r\n");
	else if (client_minor == 0)
		w_str(&w, "Connection: keep-alive\r\n"); /* 1.0 clients persist only if told */
	w_str(&w, "\r\n");
	*out_framing = f;
	return w_end(&w);
}

/* Bodies ------------------------------------------------------------------------------------- */

/*
 * Limits of the chunked framing that corral accepts (see http.h). 16 hex digits hold any
 * uint64_t, leading zeros included; extensions (all of them, from the first ';' to the CR)
 * and the trailer section (every trailer line and the final CRLF) are validated and dropped,
 * so their only use to a client is to make corral work: 4 KiB and 8 KiB are generous.
 */
#define CHUNK_SIZE_DIGITS_MAX	16
#define CHUNK_EXT_BYTES_MAX	4096
#define CHUNK_TRAILER_BYTES_MAX 8192

enum chunk_state {
	CS_SIZE_FIRST = 0,
	CS_SIZE,
	CS_EXT_NAME_START,
	CS_EXT_NAME,
	CS_EXT_VAL_START,
	CS_EXT_TOKEN,
	CS_EXT_QS,
	CS_EXT_QS_ESC,
	CS_EXT_QS_END,
	CS_SIZE_LF,
	CS_DATA,
	CS_DATA_CR,
	CS_DATA_LF,
	CS_TR_LINE,
	CS_TR_NAME,
	CS_TR_VALUE,
	CS_TR_LF,
	CS_TR_END_LF,
};

void http_body_init(struct http_body *b, enum http_framing f, uint64_t content_length, uint64_t max)
{
	memset(b, 0, sizeof(*b));
	b->framing = f;
	b->max = max;
	b->state = CS_SIZE_FIRST;
	if (f == HTTP_BODY_LENGTH)
		b->remaining = content_length;
	b->done = f == HTTP_BODY_NONE || (f == HTTP_BODY_LENGTH && content_length == 0);
}

static inline int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	return (c | 0x20) - 'a' + 10;
}

/* The end of a size line: checks the chunk against the payload limit. */
static int chunk_size_done(struct http_body *b)
{
	if (b->remaining == 0) {
		b->state = CS_TR_LINE;
		b->line_len = 0;
		return 0;
	}
	if (b->max && b->remaining > b->max - b->total)
		return -EFBIG;
	b->state = CS_DATA;
	return 0;
}

static ssize_t chunked_decode(struct http_body *b, char *buf, size_t len, size_t *payload)
{
	size_t in = 0, out = 0;
	int ret;

	while (in < len && !b->done) {
		char c;

		if (b->state == CS_DATA) {
			size_t n = len - in;

			if (n > b->remaining)
				n = (size_t)b->remaining;
			if (out != in)
				memmove(buf + out, buf + in, n);
			out += n;
			in += n;
			b->remaining -= n;
			b->total += n;
			if (b->remaining == 0)
				b->state = CS_DATA_CR;
			continue;
		}
		c = buf[in++];
		/* line_len counts the size digits, then the extension bytes from ';' to CR */
		if (b->state >= CS_EXT_NAME_START && b->state <= CS_EXT_QS_END && c != '\r' &&
		    ++b->line_len > CHUNK_EXT_BYTES_MAX)
			goto bad;
		switch ((enum chunk_state)b->state) {
		case CS_SIZE_FIRST:
			if (!cc_is(c, C_HEX))
				goto bad;
			b->remaining = (uint64_t)hexval(c);
			b->line_len = 1;
			b->state = CS_SIZE;
			break;
		case CS_SIZE:
			if (cc_is(c, C_HEX)) {
				if (++b->line_len > CHUNK_SIZE_DIGITS_MAX)
					goto bad;
				b->remaining = b->remaining << 4 | (uint64_t)hexval(c);
			} else if (c == ';') {
				b->line_len = 1;
				b->state = CS_EXT_NAME_START;
			} else if (c == '\r') {
				b->state = CS_SIZE_LF;
			} else {
				goto bad;
			}
			break;
		case CS_EXT_NAME_START:
			if (!cc_is(c, C_TCHAR))
				goto bad;
			b->state = CS_EXT_NAME;
			break;
		case CS_EXT_NAME:
		case CS_EXT_TOKEN:
			if (cc_is(c, C_TCHAR))
				break;
			if (c == '=' && b->state == CS_EXT_NAME)
				b->state = CS_EXT_VAL_START;
			else if (c == ';')
				b->state = CS_EXT_NAME_START;
			else if (c == '\r')
				b->state = CS_SIZE_LF;
			else
				goto bad;
			break;
		case CS_EXT_VAL_START:
			if (c == '"')
				b->state = CS_EXT_QS;
			else if (cc_is(c, C_TCHAR))
				b->state = CS_EXT_TOKEN;
			else
				goto bad;
			break;
		case CS_EXT_QS:
			/* qdtext = HTAB / SP / VCHAR except '"' and '\' / obs-text */
			if (c == '"')
				b->state = CS_EXT_QS_END;
			else if (c == '\\')
				b->state = CS_EXT_QS_ESC;
			else if (!cc_is(c, C_FVAL))
				goto bad;
			break;
		case CS_EXT_QS_ESC:
			if (!cc_is(c, C_FVAL))
				goto bad;
			b->state = CS_EXT_QS;
			break;
		case CS_EXT_QS_END:
			if (c == ';')
				b->state = CS_EXT_NAME_START;
			else if (c == '\r')
				b->state = CS_SIZE_LF;
			else
				goto bad;
			break;
		case CS_SIZE_LF:
			if (c != '\n')
				goto bad;
			ret = chunk_size_done(b);
			if (ret)
				goto out_err;
			break;
		case CS_DATA_CR:
			if (c != '\r')
				goto bad;
			b->state = CS_DATA_LF;
			break;
		case CS_DATA_LF:
			if (c != '\n')
				goto bad;
			b->state = CS_SIZE_FIRST;
			break;
		case CS_TR_LINE:
		case CS_TR_NAME:
		case CS_TR_VALUE:
		case CS_TR_LF:
		case CS_TR_END_LF:
			if (++b->line_len > CHUNK_TRAILER_BYTES_MAX)
				goto bad;
			if (b->state == CS_TR_LINE) {
				/* a field line, or the CRLF that ends the message; never obs-fold */
				if (c == '\r')
					b->state = CS_TR_END_LF;
				else if (cc_is(c, C_TCHAR))
					b->state = CS_TR_NAME;
				else
					goto bad;
			} else if (b->state == CS_TR_NAME) {
				if (c == ':')
					b->state = CS_TR_VALUE;
				else if (!cc_is(c, C_TCHAR))
					goto bad;
			} else if (b->state == CS_TR_VALUE) {
				if (c == '\r')
					b->state = CS_TR_LF;
				else if (!cc_is(c, C_FVAL))
					goto bad;
			} else if (b->state == CS_TR_LF) {
				if (c != '\n')
					goto bad;
				b->state = CS_TR_LINE;
			} else {
				if (c != '\n')
					goto bad;
				b->done = true;
			}
			break;
		case CS_DATA:
			break; /* handled above */
		}
	}
	*payload = out;
	return (ssize_t)in;
bad:
	ret = -EPROTO;
out_err:
	*payload = out;
	return ret;
}

ssize_t http_body_decode(struct http_body *b, char *buf, size_t len, size_t *payload)
{
	size_t n;

	*payload = 0;
	if (b->done)
		return 0;
	switch (b->framing) {
	case HTTP_BODY_NONE:
		b->done = true;
		return 0;
	case HTTP_BODY_LENGTH:
		n = len < b->remaining ? len : (size_t)b->remaining;
		if (b->max && n > b->max - b->total)
			return -EFBIG;
		b->remaining -= n;
		b->total += n;
		b->done = b->remaining == 0;
		*payload = n;
		return (ssize_t)n;
	case HTTP_BODY_CLOSE:
		if (b->max && len > b->max - b->total)
			return -EFBIG;
		b->total += len;
		*payload = len;
		return (ssize_t)len;
	case HTTP_BODY_CHUNKED:
		return chunked_decode(b, buf, len, payload);
	}
	return -EPROTO;
}

int http_chunk_header(char *out, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	char tmp[16];
	int i = 0, len = 0;

	do {
		tmp[i++] = hex[n & 0xf];
		n >>= 4;
	} while (n);
	while (i > 0)
		out[len++] = tmp[--i];
	out[len++] = '\r';
	out[len++] = '\n';
	return len;
}

/* Canned responses ----------------------------------------------------------------------- */

const char *http_status_text(int status)
{
	switch (status) {
	case 100:
		return "Continue";
	case 101:
		return "Switching Protocols";
	case 103:
		return "Early Hints";
	case 200:
		return "OK";
	case 201:
		return "Created";
	case 202:
		return "Accepted";
	case 204:
		return "No Content";
	case 206:
		return "Partial Content";
	case 301:
		return "Moved Permanently";
	case 302:
		return "Found";
	case 303:
		return "See Other";
	case 304:
		return "Not Modified";
	case 307:
		return "Temporary Redirect";
	case 308:
		return "Permanent Redirect";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 411:
		return "Length Required";
	case 413:
		return "Content Too Large";
	case 414:
		return "URI Too Long";
	case 417:
		return "Expectation Failed";
	case 429:
		return "Too Many Requests";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 502:
		return "Bad Gateway";
	case 503:
		return "Service Unavailable";
	case 504:
		return "Gateway Timeout";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Unknown";
	}
}

int http_error_response(char *out, size_t cap, int status, bool close)
{
	struct wbuf w = w_init(out, cap);
	const char *text;

	if (status < 100 || status > 599)
		status = 500;
	text = http_status_text(status);
	w_str(&w, "HTTP/1.1 ");
	w_u64(&w, (uint64_t)status);
	w_str(&w, " ");
	w_str(&w, text);
	w_str(&w, "\r\nContent-Type: text/plain\r\nContent-Length: ");
	w_u64(&w, 4 + strlen(text) + 1); /* "NNN " text "\n" */
	w_str(&w, close ? "\r\nConnection: close\r\n\r\n" : "\r\n\r\n");
	w_u64(&w, (uint64_t)status);
	w_str(&w, " ");
	w_str(&w, text);
	w_str(&w, "\n");
	return w_end(&w);
}
