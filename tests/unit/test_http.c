/* Unit tests for proxy/http.c: strict head parsing, limits, smuggling cases, serialisation, chunked decoding. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "http.h"

#define NH 64

/*
 * For checks inside the big split/prefix loops: Criterion records every assertion, passing
 * ones included, and these loops make hundreds of thousands of checks; only failures are
 * worth an event.
 */
#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			cr_assert_fail("!(" #cond "): " __VA_ARGS__);                              \
	} while (0)

/* A string literal with its length, so that cases can hold NUL bytes. */
#define S(lit) lit, sizeof(lit) - 1

static const struct http_limits lim_std = {
	.header_bytes_max = 8192,
	.headers_max = 32,
	.uri_bytes_max = 1024,
	.body_bytes_max = 1 << 20,
};

struct preq {
	struct http_req r;
	struct http_header h[NH];
};

static int req_parse(struct preq *p, const char *s, size_t n, const struct http_limits *lim)
{
	memset(p, 0, sizeof(*p));
	p->r.hdr = p->h;
	p->r.hdr_cap = NH;
	return http_req_parse(&p->r, s, n, lim);
}

struct presp {
	struct http_resp r;
	struct http_header h[NH];
};

static int resp_parse(struct presp *p, const char *s, size_t n, bool is_head)
{
	memset(p, 0, sizeof(*p));
	p->r.hdr = p->h;
	p->r.hdr_cap = NH;
	return http_resp_parse(&p->r, s, n, &lim_std, is_head);
}

static bool span_is(const char *buf, struct http_span s, const char *lit)
{
	return s.len == strlen(lit) && memcmp(buf + s.off, lit, s.len) == 0;
}

/* Rejections: every class the proxy must refuse, several spellings each. ----------------- */

struct reject_case {
	const char *name;
	const char *s;
	size_t n;
	uint16_t status;
};

#define R(status, name, lit)                                                                       \
	{                                                                                          \
		name, S(lit), status                                                               \
	}

static const struct reject_case rejects[] = {
	/* bare LF / bare CR anywhere in the head */
	R(400, "bare LF after request line", "GET / HTTP/1.1\nHost: a\r\n\r\n"),
	R(400, "bare LF after a field", "GET / HTTP/1.1\r\nHost: a\n\r\n"),
	R(400, "bare LF as the final line", "GET / HTTP/1.1\r\nHost: a\r\n\n"),
	R(400, "bare LF only", "GET / HTTP/1.1\n\n"),
	R(400, "bare LF inside a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n"),
	R(400, "bare CR after request line", "GET / HTTP/1.1\rHost: a\r\n\r\n"),
	R(400, "bare CR inside a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
	R(400, "bare CR in request target", "GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "CR CR LF", "GET / HTTP/1.1\r\r\nHost: a\r\n\r\n"),
	/* whitespace between field name and colon */
	R(400, "SP before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
	R(400, "HTAB before colon", "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),
	R(400, "SP before colon in Content-Length",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello"),
	R(400, "SP before colon in Transfer-Encoding",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
	/* obs-fold */
	R(400, "obs-fold with SP", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
	R(400, "obs-fold with HTAB", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"),
	R(400, "first field line folded", "GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
	R(400, "folded Transfer-Encoding",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"),
	/* control characters and NUL */
	R(400, "NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
	R(400, "SOH in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n"),
	R(400, "DEL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n"),
	R(400, "ESC in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[0m\r\n\r\n"),
	R(400, "NUL in a name", "GET / HTTP/1.1\r\nHost: a\r\nX\0Y: a\r\n\r\n"),
	R(400, "NUL in the target", "GET /a\0 HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "DEL in the target", "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "obs-text in the target", "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "fragment in the target", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"),
	/* invalid token characters in names */
	R(400, "parenthesis in a name", "GET / HTTP/1.1\r\nHost: a\r\nX(: a\r\n\r\n"),
	R(400, "slash in a name", "GET / HTTP/1.1\r\nHost: a\r\nX/Y: a\r\n\r\n"),
	R(400, "quote in a name", "GET / HTTP/1.1\r\nHost: a\r\n\"X\": a\r\n\r\n"),
	R(400, "at-sign in a name", "GET / HTTP/1.1\r\nHost: a\r\n@X: a\r\n\r\n"),
	R(400, "brackets in a name", "GET / HTTP/1.1\r\nHost: a\r\n[X]: a\r\n\r\n"),
	R(400, "empty name", "GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n"),
	R(400, "no colon", "GET / HTTP/1.1\r\nHost: a\r\nXYZ\r\n\r\n"),
	R(400, "obs-text in a name", "GET / HTTP/1.1\r\nHost: a\r\nX\xff: a\r\n\r\n"),
	/* underscore spellings of framing fields */
	R(400, "Content_Length", "POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\nhello"),
	R(400, "transfer_encoding",
	  "POST / HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n"),
	/* Host */
	R(400, "missing Host in 1.1", "GET / HTTP/1.1\r\nX: a\r\n\r\n"),
	R(400, "duplicate Host, same value", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
	R(400, "duplicate Host, other value", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
	R(400, "duplicate Host in 1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
	R(400, "Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
	R(400, "Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"),
	R(400, "Host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
	R(400, "Host with two colons", "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n"),
	R(400, "Host port over 65535", "GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"),
	R(400, "Host port too long", "GET / HTTP/1.1\r\nHost: a:000080\r\n\r\n"),
	R(400, "Host empty port", "GET / HTTP/1.1\r\nHost: a:\r\n\r\n"),
	R(400, "Host port only", "GET / HTTP/1.1\r\nHost: :80\r\n\r\n"),
	R(400, "Host unclosed IP literal", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"),
	R(400, "Host bad percent-encoding", "GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n"),
	R(400, "Host with a comma list", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"),
	/* request-target forms */
	R(400, "authority-form without CONNECT", "GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "relative target", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "asterisk with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "asterisk plus path with OPTIONS", "OPTIONS */x HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "ftp scheme", "GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "javascript-like scheme", "GET foo:bar HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "absolute-form with userinfo", "GET http://u@a/x HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "absolute-form with empty authority", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "absolute-form with bad port", "GET http://a:x/ HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "absolute-form with a single slash", "GET http:/a/x HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "absolute-form, query without path", "GET http://a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "absolute-form without Host in 1.1", "GET http://a/x HTTP/1.1\r\n\r\n"),
	R(501, "CONNECT authority-form",
	  "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"),
	R(501, "CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n"),
	/* request line shape and versions */
	R(400, "HTTP/0.9 simple request", "GET /\r\n\r\n"),
	R(400, "method only", "GET\r\n\r\n"),
	R(400, "two spaces before target", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "two spaces before version", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "trailing space after version", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n"),
	R(400, "leading space", " GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "HTAB as separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "leading empty line", "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "lower-case protocol", "GET / http/1.1\r\nHost: a\r\n\r\n"),
	R(400, "version without minor", "GET / HTTP/1\r\nHost: a\r\n\r\n"),
	R(400, "two-digit minor", "GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
	R(400, "version garbage", "GET / HTTP/x.y\r\nHost: a\r\n\r\n"),
	R(505, "HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
	R(505, "HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
	R(505, "HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n"),
	R(505, "HTTP/0.9 spelled out", "GET / HTTP/0.9\r\nHost: a\r\n\r\n"),
	R(505, "HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
	/* methods: any token is forwarded (see below), except PRI (501); 400 for non-tokens */
	R(501, "PRI with HTTP/1.1", "PRI * HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(501, "PRI with a path", "PRI / HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "extension method with asterisk", "FOO * HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "extension method, CL with TE",
	  "QUERY / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
	R(400, "method with a slash", "GE/T / HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "method with obs-text", "G\xc9T / HTTP/1.1\r\nHost: a\r\n\r\n"),
	R(400, "method with NUL", "GE\0T / HTTP/1.1\r\nHost: a\r\n\r\n"),
	/* framing: CL and TE together */
	R(400, "CL then TE",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
	R(400, "TE then CL",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
	R(400, "CL 0 with TE",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"),
	R(400, "CL with TE in HTTP/1.0",
	  "POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
	/* framing: Content-Length */
	R(400, "CL repeated with the same value",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
	R(400, "CL repeated with other values",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
	R(400, "CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
	R(400, "CL negative", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
	R(400, "CL plus sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
	R(400, "CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"),
	R(400, "CL with inner space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n"),
	R(400, "CL empty", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n"),
	R(400, "CL trailing junk", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello"),
	R(400, "CL overflow",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
	R(400, "CL just past uint64",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n"),
	/* framing: Transfer-Encoding */
	R(400, "TE chunked twice in one field",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
	R(400, "TE in two fields",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
	  "chunked\r\n\r\n"),
	R(400, "TE gzip field then chunked field",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: "
	  "chunked\r\n\r\n"),
	R(400, "TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
	R(400, "TE chunked not final",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
	R(400, "TE gzip only", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
	R(400, "TE with parameters",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n"),
	R(400, "TE empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"),
	R(400, "TE with empty element",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n"),
	R(400, "TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
	R(400, "TE chunked with junk",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked x\r\n\r\n"),
	R(400, "TE with vertical tab",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0b"
	  "chunked\r\n\r\n"),
	R(400, "TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
	/* llhttp, the second gate, refuses a trailing HTAB in these two; RFC-valid but harmless */
	R(400, "TE with trailing HTAB",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n"),
	R(400, "CL with trailing HTAB",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\t\r\n\r\nx"),
	R(501, "TE gzip then chunked",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
	R(501, "TE deflate then chunked",
	  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: deflate,chunked\r\n\r\n"),
	/* Connection must be a token list */
	R(400, "Connection with a parameter",
	  "GET / HTTP/1.1\r\nHost: a\r\nConnection: close;x\r\n\r\n"),
	R(400, "Connection with a slash", "GET / HTTP/1.1\r\nHost: a\r\nConnection: a/b\r\n\r\n"),
	/* body limit (lim_std.body_bytes_max = 1 MiB) */
	R(413, "CL one past the body limit",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n"),
	R(413, "CL far past the body limit",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n"),
};

Test(http, rejects_every_malformed_or_ambiguous_request_with_its_status)
{
	for (size_t i = 0; i < sizeof(rejects) / sizeof(rejects[0]); i++) {
		const struct reject_case *c = &rejects[i];
		struct preq p;
		int ret = req_parse(&p, c->s, c->n, &lim_std);

		cr_expect_eq(ret, -EPROTO, "%s: returned %d", c->name, ret);
		cr_expect_eq(p.r.status, c->status, "%s: status %u, want %u (%s)", c->name,
			     p.r.status, c->status, p.r.reason ? p.r.reason : "");
		cr_expect_not_null(p.r.reason, "%s: no reason", c->name);
	}
}

/* The rejections above are decided on the bytes seen, not on how they arrived: every prefix
 * of a rejected request is either "need more" or the same rejection. */
Test(http, rejection_does_not_depend_on_how_the_head_arrives)
{
	for (size_t i = 0; i < sizeof(rejects) / sizeof(rejects[0]); i++) {
		const struct reject_case *c = &rejects[i];

		for (size_t n = 0; n < c->n; n++) {
			struct preq p;
			int ret = req_parse(&p, c->s, n, &lim_std);

			CHECK(ret == -EAGAIN || (ret == -EPROTO && p.r.status == c->status),
			      "%s: prefix %zu gave %d/%u", c->name, n, ret, p.r.status);
		}
	}
}

/* Acceptance: what a valid request parses to. --------------------------------------------- */

struct accept_case {
	const char *name;
	const char *s;
	size_t n;
	const char *method, *target, *host;
	uint8_t minor;
	enum http_framing framing;
	uint64_t cl;
	bool keep_alive, expect, upgrade, is_head, idem;
};

#define A(name, lit, m, t, h, minor, fr, cl, ka, ex, up, hd, id)                                   \
	{                                                                                          \
		name, S(lit), m, t, h, minor, fr, cl, ka, ex, up, hd, id                           \
	}

static const struct accept_case accepts[] = {
	A("plain GET", "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET", "/a?b=c",
	  "example.com", 1, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("HEAD", "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", "HEAD", "/", "a", 1, HTTP_BODY_NONE, 0,
	  true, false, false, true, true),
	A("POST with CL", "POST /p HTTP/1.1\r\nHost: a:8080\r\nContent-Length: 5\r\n\r\nhello",
	  "POST", "/p", "a:8080", 1, HTTP_BODY_LENGTH, 5, true, false, false, false, false),
	A("POST with CL 0", "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "POST",
	  "/p", "a", 1, HTTP_BODY_LENGTH, 0, true, false, false, false, false),
	A("CL with leading zeros and OWS",
	  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: \t007 \r\n\r\n", "POST", "/p", "a", 1,
	  HTTP_BODY_LENGTH, 7, true, false, false, false, false),
	A("CL exactly at the body limit",
	  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n", "POST", "/", "a", 1,
	  HTTP_BODY_LENGTH, 1048576, true, false, false, false, false),
	A("PUT chunked, case-insensitive",
	  "PUT /x HTTP/1.1\r\nHost: a\r\ntransfer-encoding: ChUnKeD\r\n\r\n", "PUT", "/x", "a", 1,
	  HTTP_BODY_CHUNKED, 0, true, false, false, false, true),
	A("TE with OWS", "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\t chunked  \r\n\r\n",
	  "PUT", "/x", "a", 1, HTTP_BODY_CHUNKED, 0, true, false, false, false, true),
	A("Connection: close", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET", "/",
	  "a", 1, HTTP_BODY_NONE, 0, false, false, false, false, true),
	A("close among other tokens",
	  "GET / HTTP/1.1\r\nHost: a\r\nConnection: x, CLOSE , y\r\n\r\n", "GET", "/", "a", 1,
	  HTTP_BODY_NONE, 0, false, false, false, false, true),
	A("close and keep-alive: close wins",
	  "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", "GET",
	  "/", "a", 1, HTTP_BODY_NONE, 0, false, false, false, false, true),
	A("HTTP/1.0 defaults to close", "GET / HTTP/1.0\r\nHost: a\r\n\r\n", "GET", "/", "a", 0,
	  HTTP_BODY_NONE, 0, false, false, false, false, true),
	A("HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n",
	  "GET", "/", "a", 0, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", "GET", "/", "", 0, HTTP_BODY_NONE, 0,
	  false, false, false, false, true),
	A("HTTP/1.0 with CL", "POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", "POST", "/", "", 0,
	  HTTP_BODY_LENGTH, 2, false, false, false, false, false),
	A("Expect 100-continue",
	  "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", "PUT",
	  "/", "a", 1, HTTP_BODY_LENGTH, 1, true, true, false, false, true),
	A("Expect ignored in 1.0",
	  "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", "PUT", "/", "", 0,
	  HTTP_BODY_LENGTH, 1, false, false, false, false, true),
	A("other Expect", "GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n", "GET", "/", "a", 1,
	  HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("websocket upgrade",
	  "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: "
	  "websocket\r\n\r\n",
	  "GET", "/ws", "a", 1, HTTP_BODY_NONE, 0, true, false, true, false, true),
	A("Upgrade without the Connection token",
	  "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", "GET", "/", "a", 1,
	  HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("Connection upgrade without Upgrade",
	  "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", "GET", "/", "a", 1,
	  HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("upgrade ignored in 1.0",
	  "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", "GET", "/", "", 0,
	  HTTP_BODY_NONE, 0, false, false, false, false, true),
	A("absolute-form wins over Host", "GET http://b.example:81/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
	  "GET", "/x?y", "b.example:81", 1, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("absolute-form https, upper-case scheme", "GET HTTPS://b/ HTTP/1.1\r\nHost: b\r\n\r\n",
	  "GET", "/", "b", 1, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("absolute-form without a path", "GET http://b HTTP/1.1\r\nHost: b\r\n\r\n", "GET", "/",
	  "b", 1, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("absolute-form in 1.0 without Host", "GET http://b/z HTTP/1.0\r\n\r\n", "GET", "/z", "b",
	  0, HTTP_BODY_NONE, 0, false, false, false, false, true),
	A("OPTIONS asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS", "/", "a", 1,
	  HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "GET", "/", "[::1]:8080", 1,
	  HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", "GET", "/", "", 1, HTTP_BODY_NONE, 0,
	  true, false, false, false, true),
	A("Host with OWS and percent-encoding", "GET / HTTP/1.1\r\nHost:  a%2Db \r\n\r\n", "GET",
	  "/", "a%2Db", 1, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("DELETE", "DELETE /r HTTP/1.1\r\nHost: a\r\n\r\n", "DELETE", "/r", "a", 1, HTTP_BODY_NONE,
	  0, true, false, false, false, true),
	A("TRACE", "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", "TRACE", "/", "a", 1, HTTP_BODY_NONE, 0,
	  true, false, false, false, true),
	A("PATCH", "PATCH / HTTP/1.1\r\nHost: a\r\n\r\n", "PATCH", "/", "a", 1, HTTP_BODY_NONE, 0,
	  true, false, false, false, false),
	A("WebDAV PROPFIND", "PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n", "PROPFIND", "/", "a", 1,
	  HTTP_BODY_NONE, 0, true, false, false, false, false),
	A("obs-text and HTAB in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\tb\r\n\r\n",
	  "GET", "/", "a", 1, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("URI characters llhttp tolerates", "GET /a|b{c}^`\"<> HTTP/1.1\r\nHost: a\r\n\r\n", "GET",
	  "/a|b{c}^`\"<>", "a", 1, HTTP_BODY_NONE, 0, true, false, false, false, true),
	A("Transfer_Encoding lookalike of another length is just a field",
	  "GET / HTTP/1.1\r\nHost: a\r\nX_Transfer_Encoding: chunked\r\n\r\n", "GET", "/", "a", 1,
	  HTTP_BODY_NONE, 0, true, false, false, false, true),
};

Test(http, parses_valid_requests_into_the_documented_fields)
{
	for (size_t i = 0; i < sizeof(accepts) / sizeof(accepts[0]); i++) {
		const struct accept_case *c = &accepts[i];
		struct preq p;
		const char *end = strstr(c->s, "\r\n\r\n");
		int ret = req_parse(&p, c->s, c->n, &lim_std);

		cr_assert_eq(ret, end + 4 - c->s, "%s: returned %d (%u %s)", c->name, ret,
			     p.r.status, p.r.reason ? p.r.reason : "");
		cr_expect_eq(p.r.head_len, (uint32_t)ret, "%s", c->name);
		cr_expect(span_is(c->s, p.r.method, c->method), "%s: method", c->name);
		cr_expect(span_is(c->s, p.r.target, c->target), "%s: target %.*s", c->name,
			  (int)p.r.target.len, c->s + p.r.target.off);
		cr_expect(span_is(c->s, p.r.host, c->host), "%s: host %.*s", c->name,
			  (int)p.r.host.len, c->s + p.r.host.off);
		cr_expect_eq(p.r.version_minor, c->minor, "%s: minor", c->name);
		cr_expect_eq(p.r.framing, c->framing, "%s: framing %d", c->name, p.r.framing);
		if (c->framing == HTTP_BODY_LENGTH)
			cr_expect_eq(p.r.content_length, c->cl, "%s: content_length", c->name);
		cr_expect_eq(p.r.keep_alive, c->keep_alive, "%s: keep_alive", c->name);
		cr_expect_eq(p.r.expect_continue, c->expect, "%s: expect", c->name);
		cr_expect_eq(p.r.upgrade, c->upgrade, "%s: upgrade", c->name);
		cr_expect_eq(p.r.is_head, c->is_head, "%s: is_head", c->name);
		cr_expect_eq(p.r.is_idempotent, c->idem, "%s: idempotent", c->name);
		/* every proper prefix is "need more" */
		for (size_t n = 0; n < (size_t)ret; n++)
			CHECK(req_parse(&p, c->s, n, &lim_std) == -EAGAIN, "%s: prefix %zu",
			      c->name, n);
	}
}

Test(http, field_spans_are_trimmed_of_ows_and_keep_order)
{
	static const char s[] =
		"GET / HTTP/1.1\r\nHost: a\r\nX-A:  one two \t\r\nx-b:\r\nX-C:3\r\n\r\n";
	struct preq p;

	cr_assert_gt(req_parse(&p, s, sizeof(s) - 1, &lim_std), 0);
	cr_assert_eq(p.r.nhdr, 4);
	cr_expect(span_is(s, p.h[1].name, "X-A") && span_is(s, p.h[1].value, "one two"));
	cr_expect(span_is(s, p.h[2].name, "x-b") && span_is(s, p.h[2].value, ""));
	cr_expect(span_is(s, p.h[3].name, "X-C") && span_is(s, p.h[3].value, "3"));
}

Test(http, accepts_every_method_llhttp_knows_except_connect)
{
	static const char *const ok[] = {
		"DELETE",    "GET",	  "HEAD",	 "POST",     "PUT",    "OPTIONS",
		"TRACE",     "COPY",	  "LOCK",	 "MKCOL",    "MOVE",   "PROPFIND",
		"PROPPATCH", "SEARCH",	  "UNLOCK",	 "BIND",     "REBIND", "UNBIND",
		"ACL",	     "REPORT",	  "MKACTIVITY",	 "CHECKOUT", "MERGE",  "M-SEARCH",
		"NOTIFY",    "SUBSCRIBE", "UNSUBSCRIBE", "PATCH",    "PURGE",  "MKCALENDAR",
		"LINK",	     "UNLINK",	  "SOURCE"
	};
	char buf[128];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct preq p;
		int n = snprintf(buf, sizeof(buf), "%s / HTTP/1.1\r\nHost: a\r\n\r\n", ok[i]);

		cr_expect_eq(req_parse(&p, buf, (size_t)n, &lim_std), n, "%s: %u %s", ok[i],
			     p.r.status, p.r.reason ? p.r.reason : "");
	}
}

/*
 * Issue 8 defect 15: any RFC 9110 token is a method (registered ones outside llhttp's table,
 * extension ones, lower-case spellings); an unknown method is not idempotent; the body is
 * framed by Content-Length or chunked as for any method.
 */
Test(http, forwards_any_token_method_with_and_without_a_body)
{
	static const char *const ext[] = {
		"QUERY",
		"BAN",
		"X-CUSTOM",
		"VERSION-CONTROL",
		"MKWORKSPACE",
		"UPDATEREDIRECTREF",
		"BASELINE-CONTROL",
		"ORDERPATCH",
		"get",
		"DESCRIBE",
		"!#$%&'*+-.^_`|~09az",
	};
	char buf[256];

	for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++) {
		struct preq p;
		int n = snprintf(buf, sizeof(buf), "%s /x HTTP/1.1\r\nHost: a\r\n\r\n", ext[i]);

		cr_expect_eq(req_parse(&p, buf, (size_t)n, &lim_std), n, "%s: %u %s", ext[i],
			     p.r.status, p.r.reason ? p.r.reason : "");
		cr_expect(span_is(buf, p.r.method, ext[i]), "%s", ext[i]);
		cr_expect(!p.r.is_idempotent && !p.r.is_head, "%s", ext[i]);
		cr_expect_eq(p.r.framing, HTTP_BODY_NONE, "%s", ext[i]);

		n = snprintf(buf, sizeof(buf),
			     "%s /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", ext[i]);
		cr_expect_eq(req_parse(&p, buf, (size_t)n, &lim_std), n - 5, "%s + CL", ext[i]);
		cr_expect_eq(p.r.framing, HTTP_BODY_LENGTH, "%s", ext[i]);
		cr_expect_eq(p.r.content_length, 5, "%s", ext[i]);

		n = snprintf(buf, sizeof(buf),
			     "%s /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
			     ext[i]);
		cr_expect_eq(req_parse(&p, buf, (size_t)n, &lim_std), n, "%s + TE", ext[i]);
		cr_expect_eq(p.r.framing, HTTP_BODY_CHUNKED, "%s", ext[i]);
	}
}

Test(http, trailing_bytes_after_the_head_are_not_part_of_it)
{
	static const char s[] =
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n";
	struct preq p;

	cr_expect_eq(req_parse(&p, s, sizeof(s) - 1, &lim_std), (int)(strstr(s, "hello") - s));
}

/* Limits: exactly at the limit is accepted, one past is refused. ---------------------------- */

/* Builds "GET <target> HTTP/1.1\r\nHost: a\r\n" + nfields "X: v" lines + padding to total. */
static size_t build(char *out, size_t target_len, unsigned nfields, size_t total)
{
	size_t n = 0;

	n += (size_t)sprintf(out + n, "GET /");
	memset(out + n, 'a', target_len - 1);
	n += target_len - 1;
	n += (size_t)sprintf(out + n, " HTTP/1.1\r\nHost: a\r\n");
	for (unsigned i = 0; i < nfields; i++)
		n += (size_t)sprintf(out + n, "X: v\r\n");
	if (total) {
		/* one more field whose value pads the head to exactly total bytes */
		size_t pad = total - n - strlen("P: \r\n\r\n");

		n += (size_t)sprintf(out + n, "P: ");
		memset(out + n, 'p', pad);
		n += pad;
		n += (size_t)sprintf(out + n, "\r\n");
	}
	n += (size_t)sprintf(out + n, "\r\n");
	return n;
}

Test(http, header_bytes_limit_is_inclusive)
{
	static char buf[4096];
	struct http_limits lim = { .header_bytes_max = 1000,
				   .headers_max = 32,
				   .uri_bytes_max = 1000 };
	struct preq p;
	size_t n;

	n = build(buf, 1, 0, 1000);
	cr_assert_eq(n, 1000);
	cr_expect_eq(req_parse(&p, buf, n, &lim), 1000);
	n = build(buf, 1, 0, 1001);
	cr_expect_eq(req_parse(&p, buf, n, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 431);
	/* incomplete: 999 bytes still "need more", 1000 without the end is already too large */
	memset(buf, 0, sizeof(buf));
	n = build(buf, 1, 0, 1010);
	cr_expect_eq(req_parse(&p, buf, 999, &lim), -EAGAIN);
	cr_expect_eq(req_parse(&p, buf, 1000, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 431);
	cr_expect_eq(req_parse(&p, buf, n, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 431);
}

Test(http, header_count_limit_is_inclusive)
{
	static char buf[4096];
	struct http_limits lim = { .header_bytes_max = 4096,
				   .headers_max = 10,
				   .uri_bytes_max = 100 };
	struct preq p;
	size_t n;

	n = build(buf, 1, 9, 0); /* Host + 9 = 10 fields */
	cr_expect_eq(req_parse(&p, buf, n, &lim), (int)n);
	cr_expect_eq(p.r.nhdr, 10);
	n = build(buf, 1, 10, 0);
	cr_expect_eq(req_parse(&p, buf, n, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 431);
	/* refused as soon as the 11th field line is complete, before the head ends */
	cr_expect_eq(req_parse(&p, buf, n - 2, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 431);
	cr_expect_eq(req_parse(&p, buf, n - 3, &lim), -EAGAIN);
}

Test(http, header_count_is_also_bounded_by_the_callers_array)
{
	static char buf[4096];
	struct http_limits lim = { .header_bytes_max = 4096,
				   .headers_max = 100,
				   .uri_bytes_max = 100 };
	struct http_header h[4];
	struct http_req r = { .hdr = h, .hdr_cap = 4 };
	size_t n;

	n = build(buf, 1, 3, 0);
	cr_expect_eq(http_req_parse(&r, buf, n, &lim), (int)n);
	n = build(buf, 1, 4, 0);
	cr_expect_eq(http_req_parse(&r, buf, n, &lim), -EPROTO);
	cr_expect_eq(r.status, 431);
	cr_expect_eq(r.hdr, h);
	cr_expect_eq(r.hdr_cap, 4);
}

Test(http, uri_limit_is_inclusive_and_answers_414)
{
	static char buf[4096];
	struct http_limits lim = { .header_bytes_max = 4096,
				   .headers_max = 10,
				   .uri_bytes_max = 100 };
	struct preq p;
	size_t n;

	n = build(buf, 100, 0, 0);
	cr_expect_eq(req_parse(&p, buf, n, &lim), (int)n);
	cr_expect_eq(p.r.target.len, 100);
	n = build(buf, 101, 0, 0);
	cr_expect_eq(req_parse(&p, buf, n, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 414);
	/* decided as soon as the 101st target byte arrives */
	cr_expect_eq(req_parse(&p, buf, 4 + 100, &lim), -EAGAIN);
	cr_expect_eq(req_parse(&p, buf, 4 + 101, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 414);
}

Test(http, uri_over_its_limit_answers_414_even_when_the_head_is_also_too_large)
{
	static char buf[4096];
	struct http_limits lim = { .header_bytes_max = 200,
				   .headers_max = 10,
				   .uri_bytes_max = 100 };
	struct preq p;
	size_t n = build(buf, 150, 0, 300);

	cr_expect_eq(req_parse(&p, buf, n, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 414);
	/* a target within its limit in an over-large head is a 431 */
	n = build(buf, 90, 0, 300);
	cr_expect_eq(req_parse(&p, buf, n, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 431);
}

Test(http, body_limit_is_inclusive_for_declared_lengths)
{
	struct http_limits lim = { .header_bytes_max = 4096,
				   .headers_max = 10,
				   .uri_bytes_max = 100,
				   .body_bytes_max = 10 };
	static const char at[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
	static const char past[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
	struct preq p;

	cr_expect_eq(req_parse(&p, at, sizeof(at) - 1, &lim), (int)sizeof(at) - 1);
	cr_expect_eq(req_parse(&p, past, sizeof(past) - 1, &lim), -EPROTO);
	cr_expect_eq(p.r.status, 413);
	lim.body_bytes_max = 0; /* no limit */
	cr_expect_eq(req_parse(&p, past, sizeof(past) - 1, &lim), (int)sizeof(past) - 1);
}

/* Request serialisation: golden outputs. ------------------------------------------------------- */

static const struct http_fwd fwd_std = { .client_ip = "192.0.2.7", .proto = "http" };

static void expect_req_serialization(const char *in, const char *want)
{
	struct preq p;
	char out[4096];
	int n;

	cr_assert_gt(req_parse(&p, in, strlen(in), &lim_std), 0, "parse failed: %s", p.r.reason);
	n = http_req_serialize(&p.r, in, &fwd_std, out, sizeof(out));
	cr_assert_gt(n, 0);
	cr_expect(n == (int)strlen(want) && memcmp(out, want, (size_t)n) == 0,
		  "got:\n%.*s\nwant:\n%s", n, out, want);
	/* exactly enough room works, one byte less is -ENOSPC */
	cr_expect_eq(http_req_serialize(&p.r, in, &fwd_std, out, (size_t)n), n);
	cr_expect_eq(http_req_serialize(&p.r, in, &fwd_std, out, (size_t)n - 1), -ENOSPC);
	cr_expect_eq(http_req_serialize(&p.r, in, &fwd_std, out, 0), -ENOSPC);
}

Test(http, serializes_a_simple_get_canonically)
{
	expect_req_serialization(
		"GET /a?b HTTP/1.1\r\nUser-Agent: t\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
		"GET /a?b HTTP/1.1\r\n"
		"Host: example.com\r\n"
		"User-Agent: t\r\n"
		"Accept: */*\r\n"
		"X-Forwarded-For: 192.0.2.7\r\n"
		"X-Forwarded-Proto: http\r\n"
		"Via: 1.1 corral\r\n"
		"Connection: keep-alive\r\n"
		"\r\n");
}

Test(http, serialization_drops_hop_by_hop_and_connection_named_fields)
{
	expect_req_serialization("POST /p HTTP/1.1\r\n"
				 "Host: a\r\n"
				 "Connection: keep-alive, X-Secret, close\r\n"
				 "Keep-Alive: timeout=5\r\n"
				 "Proxy-Connection: keep-alive\r\n"
				 "TE: trailers\r\n"
				 "Trailer: X-T\r\n"
				 "Upgrade: h2c\r\n"
				 "X-Secret: 1\r\n"
				 "x-secret: 2\r\n"
				 "Close: x\r\n"
				 "Proxy-Authorization: Basic Zm9v\r\n"
				 "Content-Length:  3 \r\n"
				 "X-Forwarded-Proto: https\r\n"
				 "Cookie:  a=b \t\r\n"
				 "\r\n"
				 "abc",
				 "POST /p HTTP/1.1\r\n"
				 "Host: a\r\n"
				 "Proxy-Authorization: Basic Zm9v\r\n"
				 "Cookie: a=b\r\n"
				 "Content-Length: 3\r\n"
				 "X-Forwarded-For: 192.0.2.7\r\n"
				 "X-Forwarded-Proto: http\r\n"
				 "Via: 1.1 corral\r\n"
				 "Connection: keep-alive\r\n"
				 "\r\n");
}

Test(http, serialization_appends_to_forwarded_for_and_via)
{
	expect_req_serialization("GET / HTTP/1.1\r\n"
				 "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n"
				 "Via: 1.0 fred\r\n"
				 "Host: a\r\n"
				 "x-forwarded-for: 10.0.0.3\r\n"
				 "VIA: 1.1 p.example (Proxy)\r\n"
				 "\r\n",
				 "GET / HTTP/1.1\r\n"
				 "Host: a\r\n"
				 "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n"
				 "X-Forwarded-Proto: http\r\n"
				 "Via: 1.0 fred, 1.1 p.example (Proxy), 1.1 corral\r\n"
				 "Connection: keep-alive\r\n"
				 "\r\n");
}

Test(http, serialization_never_drops_framing_or_corrals_own_fields_named_in_connection)
{
	expect_req_serialization(
		"PUT /u HTTP/1.1\r\n"
		"Host: a\r\n"
		"Connection: Host, Transfer-Encoding, X-Forwarded-For, Via, X-Forwarded-Proto\r\n"
		"Transfer-Encoding: chunked\r\n"
		"X-Forwarded-For: 10.0.0.1\r\n"
		"\r\n",
		"PUT /u HTTP/1.1\r\n"
		"Host: a\r\n"
		"Transfer-Encoding: chunked\r\n"
		"X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"
		"X-Forwarded-Proto: http\r\n"
		"Via: 1.1 corral\r\n"
		"Connection: keep-alive\r\n"
		"\r\n");
}

Test(http, serialization_of_absolute_form_uses_origin_form_and_the_targets_host)
{
	expect_req_serialization("GET http://b.example:8080/x?y=1 HTTP/1.1\r\nHost: wrong\r\n\r\n",
				 "GET /x?y=1 HTTP/1.1\r\n"
				 "Host: b.example:8080\r\n"
				 "X-Forwarded-For: 192.0.2.7\r\n"
				 "X-Forwarded-Proto: http\r\n"
				 "Via: 1.1 corral\r\n"
				 "Connection: keep-alive\r\n"
				 "\r\n");
	expect_req_serialization("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
				 "OPTIONS * HTTP/1.1\r\n"
				 "Host: a\r\n"
				 "X-Forwarded-For: 192.0.2.7\r\n"
				 "X-Forwarded-Proto: http\r\n"
				 "Via: 1.1 corral\r\n"
				 "Connection: keep-alive\r\n"
				 "\r\n");
}

Test(http, serialization_of_http10_speaks_http11_upstream)
{
	expect_req_serialization("POST /f HTTP/1.0\r\n"
				 "Connection: keep-alive\r\n"
				 "Expect: 100-continue\r\n"
				 "Content-Length: 2\r\n"
				 "\r\n",
				 "POST /f HTTP/1.1\r\n"
				 "Host: \r\n"
				 "Content-Length: 2\r\n"
				 "X-Forwarded-For: 192.0.2.7\r\n"
				 "X-Forwarded-Proto: http\r\n"
				 "Via: 1.0 corral\r\n"
				 "Connection: keep-alive\r\n"
				 "\r\n");
}

Test(http, serialization_of_an_upgrade_keeps_upgrade)
{
	expect_req_serialization("GET /ws HTTP/1.1\r\n"
				 "Host: a\r\n"
				 "Upgrade: websocket\r\n"
				 "Connection: Upgrade\r\n"
				 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
				 "Sec-WebSocket-Version: 13\r\n"
				 "\r\n",
				 "GET /ws HTTP/1.1\r\n"
				 "Host: a\r\n"
				 "Upgrade: websocket\r\n"
				 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
				 "Sec-WebSocket-Version: 13\r\n"
				 "X-Forwarded-For: 192.0.2.7\r\n"
				 "X-Forwarded-Proto: http\r\n"
				 "Via: 1.1 corral\r\n"
				 "Connection: upgrade\r\n"
				 "\r\n");
}

Test(http, serialized_requests_parse_back_to_the_same_request)
{
	for (size_t i = 0; i < sizeof(accepts) / sizeof(accepts[0]); i++) {
		const struct accept_case *c = &accepts[i];
		struct preq p, q;
		char out[4096];
		int n;

		cr_assert_gt(req_parse(&p, c->s, c->n, &lim_std), 0, "%s", c->name);
		n = http_req_serialize(&p.r, c->s, &fwd_std, out, sizeof(out));
		cr_assert_gt(n, 0, "%s", c->name);
		cr_assert_eq(req_parse(&q, out, (size_t)n, &lim_std), n, "%s: %s\n%.*s", c->name,
			     q.r.reason, n, out);
		cr_expect(span_is(out, q.r.method, c->method), "%s", c->name);
		cr_expect(span_is(out, q.r.target, c->target), "%s", c->name);
		cr_expect(span_is(out, q.r.host, c->host), "%s", c->name);
		cr_expect_eq(q.r.framing, c->framing, "%s", c->name);
		cr_expect_eq(q.r.content_length, p.r.content_length, "%s", c->name);
		cr_expect_eq(q.r.upgrade, c->upgrade, "%s", c->name);
		cr_expect_eq(q.r.version_minor, 1, "%s", c->name);
	}
}

/* Responses. --------------------------------------------------------------------------------- */

struct resp_case {
	const char *name;
	const char *s;
	size_t n;
	bool is_head;
	int code; /* 0: -EPROTO expected */
	enum http_framing framing;
	uint64_t cl;
	bool keep_alive;
};

#define P(name, lit, head, code, fr, cl, ka)                                                       \
	{                                                                                          \
		name, S(lit), head, code, fr, cl, ka                                               \
	}

static const struct resp_case resps[] = {
	P("200 with CL", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false, 200,
	  HTTP_BODY_LENGTH, 3, true),
	P("200 chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 200,
	  HTTP_BODY_CHUNKED, 0, true),
	P("200 close-delimited", "HTTP/1.1 200 OK\r\nServer: x\r\n\r\nabc", false, 200,
	  HTTP_BODY_CLOSE, 0, false),
	P("200 with Connection: close",
	  "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false, 200,
	  HTTP_BODY_LENGTH, 0, false),
	P("1.0 response defaults to close", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false,
	  200, HTTP_BODY_LENGTH, 1, false),
	P("1.0 response with keep-alive",
	  "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx", false, 200,
	  HTTP_BODY_LENGTH, 1, true),
	P("response to HEAD has no body", "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true,
	  200, HTTP_BODY_NONE, 1234, true),
	P("chunked response to HEAD has no body",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, 200, HTTP_BODY_NONE, 0,
	  true),
	P("204", "HTTP/1.1 204 No Content\r\n\r\n", false, 204, HTTP_BODY_NONE, 0, true),
	P("304 with CL", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, 304,
	  HTTP_BODY_NONE, 10, true),
	P("100 Continue", "HTTP/1.1 100 Continue\r\n\r\n", false, 100, HTTP_BODY_NONE, 0, true),
	P("103 Early Hints", "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
	  false, 103, HTTP_BODY_NONE, 0, true),
	P("101",
	  "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	  false, 101, HTTP_BODY_NONE, 0, false),
	P("no reason phrase", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, 200,
	  HTTP_BODY_LENGTH, 0, true),
	P("empty reason phrase", "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", false, 404,
	  HTTP_BODY_LENGTH, 0, true),
	P("599", "HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n", false, 599, HTTP_BODY_LENGTH,
	  0, true),
	/* refused: the client gets a 502 and the upstream connection is not reused */
	P("CL with TE",
	  "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0, 0,
	  0, false),
	P("CL with TE on HEAD",
	  "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", true, 0, 0,
	  0, false),
	P("two CLs", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", false, 0,
	  0, 0, false),
	P("bad CL", "HTTP/1.1 200 OK\r\nContent-Length: 3a\r\n\r\n", false, 0, 0, 0, false),
	P("TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, 0, 0, 0, false),
	P("TE gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false,
	  0, 0, 0, false),
	P("TE in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0, 0, 0,
	  false),
	P("HTTP/2.0 status line", "HTTP/2.0 200 OK\r\n\r\n", false, 0, 0, 0, false),
	P("HTTP/1.2 status line", "HTTP/1.2 200 OK\r\n\r\n", false, 0, 0, 0, false),
	P("status 600", "HTTP/1.1 600 X\r\n\r\n", false, 0, 0, 0, false),
	P("status 099", "HTTP/1.1 099 X\r\n\r\n", false, 0, 0, 0, false),
	P("two-digit status", "HTTP/1.1 20 X\r\n\r\n", false, 0, 0, 0, false),
	P("status glued to reason", "HTTP/1.1 200OK\r\n\r\n", false, 0, 0, 0, false),
	P("control char in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", false, 0, 0, 0, false),
	P("bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", false, 0, 0, 0, false),
	P("bare CR", "HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n", false, 0, 0, 0,
	  false),
	P("obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", false, 0, 0, 0,
	  false),
	P("space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", false, 0, 0, 0,
	  false),
	P("NUL in a value", "HTTP/1.1 200 OK\r\nX: \0\r\nContent-Length: 0\r\n\r\n", false, 0, 0, 0,
	  false),
	P("garbage", "FOO\r\n\r\n", false, 0, 0, 0, false),
};

Test(http, parses_responses_with_framing_per_rfc9112_section_6_3)
{
	for (size_t i = 0; i < sizeof(resps) / sizeof(resps[0]); i++) {
		const struct resp_case *c = &resps[i];
		struct presp p;
		int ret = resp_parse(&p, c->s, c->n, c->is_head);

		if (!c->code) {
			cr_expect_eq(ret, -EPROTO, "%s: returned %d", c->name, ret);
			cr_expect_not_null(p.r.reason, "%s", c->name);
			continue;
		}
		cr_expect_eq(ret, strstr(c->s, "\r\n\r\n") + 4 - c->s, "%s: returned %d (%s)",
			     c->name, ret, p.r.reason ? p.r.reason : "");
		cr_expect_eq(p.r.code, c->code, "%s: code", c->name);
		cr_expect_eq(p.r.framing, c->framing, "%s: framing %d", c->name, p.r.framing);
		cr_expect_eq(p.r.content_length, c->cl, "%s: content_length", c->name);
		cr_expect_eq(p.r.keep_alive, c->keep_alive, "%s: keep_alive", c->name);
		for (size_t n = 0; n < (size_t)ret; n++)
			CHECK(resp_parse(&p, c->s, n, c->is_head) == -EAGAIN, "%s: prefix %zu",
			      c->name, n);
	}
}

Test(http, response_head_limits_apply)
{
	struct http_limits lim = { .header_bytes_max = 40, .headers_max = 2 };
	struct http_header h[8];
	struct http_resp r = { .hdr = h, .hdr_cap = 8 };
	static const char at[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2222222222\r\n\r\n"; /* 40 bytes */
	static const char big[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 22222222222\r\n\r\n";
	static const char many[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";

	cr_assert_eq(sizeof(at) - 1, 40);
	cr_expect_eq(http_resp_parse(&r, at, sizeof(at) - 1, &lim, false), 40);
	cr_expect_eq(http_resp_parse(&r, big, sizeof(big) - 1, &lim, false), -EPROTO);
	cr_expect_eq(http_resp_parse(&r, many, sizeof(many) - 1, &lim, false), -EPROTO);
}

static void expect_resp_serialization(const char *in, bool is_head, uint8_t client_minor,
				      bool keep_alive, const char *want, enum http_framing want_f)
{
	struct presp p;
	char out[4096];
	enum http_framing f = 99;
	int n;

	cr_assert_gt(resp_parse(&p, in, strlen(in), is_head), 0, "parse failed: %s", p.r.reason);
	n = http_resp_serialize(&p.r, in, client_minor, keep_alive, is_head, out, sizeof(out), &f);
	cr_assert_gt(n, 0);
	cr_expect(n == (int)strlen(want) && memcmp(out, want, (size_t)n) == 0,
		  "got:\n%.*s\nwant:\n%s", n, out, want);
	cr_expect_eq(f, want_f, "framing %d, want %d", f, want_f);
	cr_expect_eq(http_resp_serialize(&p.r, in, client_minor, keep_alive, is_head, out,
					 (size_t)n - 1, &f),
		     -ENOSPC);
}

Test(http, response_serialization_keeps_length_framing)
{
	expect_resp_serialization("HTTP/1.1 200 OK\r\n"
				  "Content-Length:  3\r\n"
				  "Content-Type: text/plain\r\n"
				  "Connection: keep-alive, X-Hop\r\n"
				  "Keep-Alive: timeout=5\r\n"
				  "X-Hop: 1\r\n"
				  "Via: 1.1 up\r\n"
				  "\r\nabc",
				  false, 1, true,
				  "HTTP/1.1 200 OK\r\n"
				  "Content-Type: text/plain\r\n"
				  "Content-Length: 3\r\n"
				  "Via: 1.1 up, 1.1 corral\r\n"
				  "\r\n",
				  HTTP_BODY_LENGTH);
}

Test(http, response_serialization_closes_when_asked)
{
	expect_resp_serialization("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false, 1,
				  false,
				  "HTTP/1.1 404 Not Found\r\n"
				  "Content-Length: 0\r\n"
				  "Via: 1.1 corral\r\n"
				  "Connection: close\r\n"
				  "\r\n",
				  HTTP_BODY_LENGTH);
}

Test(http, response_serialization_tells_http10_clients_about_keep_alive)
{
	expect_resp_serialization("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, 0, true,
				  "HTTP/1.1 200 OK\r\n"
				  "Content-Length: 0\r\n"
				  "Via: 1.1 corral\r\n"
				  "Connection: keep-alive\r\n"
				  "\r\n",
				  HTTP_BODY_LENGTH);
}

Test(http, response_serialization_rechunks_for_http11_clients)
{
	expect_resp_serialization(
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n", false, 1,
		true,
		"HTTP/1.1 200 OK\r\n"
		"Transfer-Encoding: chunked\r\n"
		"Via: 1.1 corral\r\n"
		"\r\n",
		HTTP_BODY_CHUNKED);
	expect_resp_serialization("HTTP/1.0 200 OK\r\nX: y\r\n\r\n", false, 1, true,
				  "HTTP/1.1 200 OK\r\n"
				  "X: y\r\n"
				  "Transfer-Encoding: chunked\r\n"
				  "Via: 1.0 corral\r\n"
				  "\r\n",
				  HTTP_BODY_CHUNKED);
}

Test(http, response_serialization_is_close_delimited_for_http10_clients)
{
	expect_resp_serialization("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0,
				  true,
				  "HTTP/1.1 200 OK\r\n"
				  "Via: 1.1 corral\r\n"
				  "Connection: close\r\n"
				  "\r\n",
				  HTTP_BODY_CLOSE);
}

Test(http, response_serialization_of_head_304_204_keeps_only_meaningful_lengths)
{
	expect_resp_serialization("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true, 1, true,
				  "HTTP/1.1 200 OK\r\n"
				  "Content-Length: 1234\r\n"
				  "Via: 1.1 corral\r\n"
				  "\r\n",
				  HTTP_BODY_NONE);
	expect_resp_serialization(
		"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n", false, 1,
		true,
		"HTTP/1.1 304 Not Modified\r\n"
		"ETag: \"x\"\r\n"
		"Content-Length: 10\r\n"
		"Via: 1.1 corral\r\n"
		"\r\n",
		HTTP_BODY_NONE);
	expect_resp_serialization("HTTP/1.1 204 No Content\r\n\r\n", false, 1, true,
				  "HTTP/1.1 204 No Content\r\n"
				  "Via: 1.1 corral\r\n"
				  "\r\n",
				  HTTP_BODY_NONE);
	expect_resp_serialization("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, 1,
				  true,
				  "HTTP/1.1 200 OK\r\n"
				  "Via: 1.1 corral\r\n"
				  "\r\n",
				  HTTP_BODY_NONE);
}

Test(http, response_serialization_of_interim_and_switching_heads_has_no_framing)
{
	expect_resp_serialization("HTTP/1.1 100 Continue\r\n\r\n", false, 1, false,
				  "HTTP/1.1 100 Continue\r\n"
				  "Via: 1.1 corral\r\n"
				  "\r\n",
				  HTTP_BODY_NONE);
	expect_resp_serialization("HTTP/1.1 103 Early Hints\r\nLink: </s>; rel=preload\r\n\r\n",
				  false, 1, true,
				  "HTTP/1.1 103 Early Hints\r\n"
				  "Link: </s>; rel=preload\r\n"
				  "Via: 1.1 corral\r\n"
				  "\r\n",
				  HTTP_BODY_NONE);
	expect_resp_serialization("HTTP/1.1 101 Switching Protocols\r\n"
				  "Upgrade: websocket\r\n"
				  "Connection: Upgrade\r\n"
				  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
				  "\r\n",
				  false, 1, false,
				  "HTTP/1.1 101 Switching Protocols\r\n"
				  "Upgrade: websocket\r\n"
				  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
				  "Via: 1.1 corral\r\n"
				  "Connection: upgrade\r\n"
				  "\r\n",
				  HTTP_BODY_NONE);
}

Test(http, response_serialization_fills_in_a_missing_reason_phrase)
{
	expect_resp_serialization("HTTP/1.1 502\r\nContent-Length: 0\r\n\r\n", false, 1, true,
				  "HTTP/1.1 502 Bad Gateway\r\n"
				  "Content-Length: 0\r\n"
				  "Via: 1.1 corral\r\n"
				  "\r\n",
				  HTTP_BODY_LENGTH);
}

/* Bodies. ------------------------------------------------------------------------------------ */

struct dec {
	ssize_t ret; /* bytes consumed in total, or the error */
	bool done;
	size_t npay;
	char pay[16384];
};

/* Feeds in[0..n) in pieces: cuts[] are split offsets (ncuts of them, ascending). */
static void decode_pieces(struct dec *d, enum http_framing f, uint64_t cl, uint64_t max,
			  const char *in, size_t n, const size_t *cuts, size_t ncuts)
{
	struct http_body b;
	static char tmp[16384];
	size_t off = 0;

	memset(d, 0, sizeof(*d));
	http_body_init(&b, f, cl, max);
	for (size_t k = 0; k <= ncuts && !b.done; k++) {
		size_t end = k < ncuts ? cuts[k] : n, piece = end - off, got = 0;
		ssize_t ret;

		memcpy(tmp, in + off, piece);
		ret = http_body_decode(&b, tmp, piece, &got);
		if (ret < 0) {
			d->ret = ret;
			d->done = b.done;
			return;
		}
		CHECK((size_t)ret <= piece && got <= (size_t)ret, "piece %zu", k);
		memcpy(d->pay + d->npay, tmp, got);
		d->npay += got;
		off += (size_t)ret;
		if ((size_t)ret < piece)
			break; /* the body ended inside this piece */
	}
	d->ret = (ssize_t)off;
	d->done = b.done;
}

static void decode_whole(struct dec *d, enum http_framing f, uint64_t cl, uint64_t max,
			 const char *in, size_t n)
{
	decode_pieces(d, f, cl, max, in, n, NULL, 0);
}

struct chunk_case {
	const char *name;
	const char *s;
	size_t n;
	ssize_t ret; /* consumed, -EPROTO, -EFBIG, or 0 for "valid but incomplete" */
	const char *payload;
	uint64_t max;
};

#define C(name, lit, ret, pay, max)                                                                \
	{                                                                                          \
		name, S(lit), ret, pay, max                                                        \
	}
#define OK_ALL -1000 /* sentinel: consumes the whole input and ends */

static const struct chunk_case chunks[] = {
	C("one chunk", "5\r\nhello\r\n0\r\n\r\n", OK_ALL, "hello", 0),
	C("several chunks", "3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n", OK_ALL, "abcd", 0),
	C("upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n", OK_ALL, "0123456789", 0),
	C("leading zeros", "0005\r\nhello\r\n0000\r\n\r\n", OK_ALL, "hello", 0),
	C("16 hex digits", "0000000000000005\r\nhello\r\n0\r\n\r\n", OK_ALL, "hello", 0),
	C("empty body", "0\r\n\r\n", OK_ALL, "", 0),
	C("extensions", "5;a=b;c;d=\"x y\";e=\"q\\\"p\"\r\nhello\r\n0;last\r\n\r\n", OK_ALL,
	  "hello", 0),
	C("trailers", "2\r\nhi\r\n0\r\nX-A: 1\r\nX-B:\r\nX-C: a b\r\n\r\n", OK_ALL, "hi", 0),
	C("CRLF inside data", "4\r\n\r\n\r\n\r\n0\r\n\r\n", OK_ALL, "\r\n\r\n", 0),
	C("NUL inside data", "3\r\na\0b\r\n0\r\n\r\n", OK_ALL, "a\0b", 0),
	C("bytes after the end are left", "1\r\nx\r\n0\r\n\r\nGET /", 11, "x", 0),
	C("payload exactly at the limit", "5\r\nhello\r\n0\r\n\r\n", OK_ALL, "hello", 5),
	C("payload over the limit", "5\r\nhello\r\n0\r\n\r\n", -EFBIG, "", 4),
	C("second chunk over the limit", "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", -EFBIG, "abc", 5),
	C("incomplete", "5\r\nhel", 0, "hel", 0),
	C("incomplete trailer", "0\r\nX: 1\r\n", 0, "", 0),
	C("no size", "\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("17 hex digits", "00000000000000005\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("size overflow", "10000000000000000\r\n", -EPROTO, "", 0),
	C("plus sign", "+5\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("minus sign", "-5\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("space after size", "5 \r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("space before size", " 5\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("tab before extension", "5\t;a\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("space in extension", "5; a\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("empty extension name", "5;\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("empty extension value", "5;a=\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("unterminated quoted extension", "5;a=\"x\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("control char in extension", "5;a=\x01\r\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("bare LF after size", "5\nhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("bare CR after size", "5\rhello\r\n0\r\n\r\n", -EPROTO, "", 0),
	C("bare LF after data", "5\r\nhello\n0\r\n\r\n", -EPROTO, "hello", 0),
	C("data longer than its size", "5\r\nhelloX\r\n0\r\n\r\n", -EPROTO, "hello", 0),
	C("data shorter than its size", "5\r\nhell\r\n0\r\n\r\n", -EPROTO, "hell\r", 0),
	C("bare LF at the end", "0\r\n\n", -EPROTO, "", 0),
	C("bare LF in a trailer", "0\r\nX: 1\n\r\n", -EPROTO, "", 0),
	C("folded trailer", "0\r\nX: 1\r\n 2\r\n\r\n", -EPROTO, "", 0),
	C("space before colon in a trailer", "0\r\nX : 1\r\n\r\n", -EPROTO, "", 0),
	C("trailer without colon", "0\r\nX\r\n\r\n", -EPROTO, "", 0),
	C("NUL in a trailer", "0\r\nX: \0\r\n\r\n", -EPROTO, "", 0),
	C("last-chunk missing its CRLF", "0\r\n", 0, "", 0),
};

Test(http, decodes_chunked_bodies_strictly)
{
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		const struct chunk_case *c = &chunks[i];
		ssize_t want = c->ret == OK_ALL ? (ssize_t)c->n : c->ret;
		size_t plen = strlen(c->payload);
		static struct dec d;

		if (strcmp(c->name, "NUL inside data") == 0)
			plen = 3;
		decode_whole(&d, HTTP_BODY_CHUNKED, 0, c->max, c->s, c->n);
		if (want == 0) {
			cr_expect_eq(d.ret, (ssize_t)c->n, "%s: %zd", c->name, d.ret);
			cr_expect(!d.done, "%s: done", c->name);
		} else {
			cr_expect_eq(d.ret, want, "%s: returned %zd, want %zd", c->name, d.ret,
				     want);
			cr_expect_eq(d.done, want > 0, "%s: done", c->name);
		}
		if (want >= 0)
			cr_expect(d.npay == plen && memcmp(d.pay, c->payload, plen) == 0,
				  "%s: payload %.*s", c->name, (int)d.npay, d.pay);
	}
}

/* Streaming: every split position, two-way and three-way, and one byte at a time, gives the
 * same result as the whole buffer. */
Test(http, chunked_decoding_is_the_same_at_every_split)
{
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		const struct chunk_case *c = &chunks[i];
		static struct dec whole, part;
		size_t cuts[4096];

		decode_whole(&whole, HTTP_BODY_CHUNKED, 0, c->max, c->s, c->n);
		for (size_t a = 1; a < c->n; a++) {
			cuts[0] = a;
			decode_pieces(&part, HTTP_BODY_CHUNKED, 0, c->max, c->s, c->n, cuts, 1);
			CHECK(part.ret == whole.ret, "%s: split at %zu: %zd vs %zd", c->name, a,
			      part.ret, whole.ret);
			CHECK(part.done == whole.done, "%s: split at %zu", c->name, a);
			if (whole.ret >= 0)
				CHECK(part.npay == whole.npay &&
					      memcmp(part.pay, whole.pay, whole.npay) == 0,
				      "%s: split at %zu", c->name, a);
			for (size_t b = a + 1; b < c->n; b++) {
				cuts[1] = b;
				decode_pieces(&part, HTTP_BODY_CHUNKED, 0, c->max, c->s, c->n, cuts,
					      2);
				CHECK(part.ret == whole.ret, "%s: split at %zu,%zu", c->name, a, b);
				if (whole.ret >= 0)
					CHECK(part.npay == whole.npay &&
						      memcmp(part.pay, whole.pay, whole.npay) == 0,
					      "%s: split at %zu,%zu", c->name, a, b);
			}
		}
		for (size_t k = 0; k + 1 < c->n; k++)
			cuts[k] = k + 1;
		decode_pieces(&part, HTTP_BODY_CHUNKED, 0, c->max, c->s, c->n, cuts,
			      c->n ? c->n - 1 : 0);
		CHECK(part.ret == whole.ret, "%s: byte by byte", c->name);
		CHECK(part.done == whole.done, "%s: byte by byte", c->name);
		if (whole.ret >= 0)
			CHECK(part.npay == whole.npay &&
				      memcmp(part.pay, whole.pay, whole.npay) == 0,
			      "%s: byte by byte", c->name);
	}
}

Test(http, chunk_extensions_are_bounded_at_4_kib)
{
	static char in[8192];
	static struct dec d;
	size_t n;

	/* ";" + name of 4095 bytes = 4096 extension bytes: accepted */
	n = (size_t)sprintf(in, "1;");
	memset(in + n, 'e', 4095);
	n += 4095;
	n += (size_t)sprintf(in + n, "\r\nx\r\n0\r\n\r\n");
	decode_whole(&d, HTTP_BODY_CHUNKED, 0, 0, in, n);
	cr_expect_eq(d.ret, (ssize_t)n);
	cr_expect(d.done && d.npay == 1 && d.pay[0] == 'x');
	/* one more byte: refused */
	n = (size_t)sprintf(in, "1;");
	memset(in + n, 'e', 4096);
	n += 4096;
	n += (size_t)sprintf(in + n, "\r\nx\r\n0\r\n\r\n");
	decode_whole(&d, HTTP_BODY_CHUNKED, 0, 0, in, n);
	cr_expect_eq(d.ret, -EPROTO);
	/* the bound is per size line, not per body */
	n = 0;
	for (int k = 0; k < 3; k++) {
		n += (size_t)sprintf(in + n, "1;");
		memset(in + n, 'e', 2000);
		n += 2000;
		n += (size_t)sprintf(in + n, "\r\nx\r\n");
	}
	n += (size_t)sprintf(in + n, "0\r\n\r\n");
	decode_whole(&d, HTTP_BODY_CHUNKED, 0, 0, in, n);
	cr_expect_eq(d.ret, (ssize_t)n);
	cr_expect_eq(d.npay, 3);
}

Test(http, chunk_trailer_section_is_bounded_at_8_kib)
{
	static char in[16384];
	static struct dec d;
	size_t n;

	/* the trailer section is everything after "0\r\n": "T: " value "\r\n" "\r\n" */
	n = (size_t)sprintf(in, "0\r\nT: ");
	memset(in + n, 'v', 8192 - 3 - 4);
	n += 8192 - 3 - 4;
	n += (size_t)sprintf(in + n, "\r\n\r\n");
	cr_assert_eq(n, 3 + 8192);
	decode_whole(&d, HTTP_BODY_CHUNKED, 0, 0, in, n);
	cr_expect_eq(d.ret, (ssize_t)n);
	cr_expect(d.done);
	n = (size_t)sprintf(in, "0\r\nT: ");
	memset(in + n, 'v', 8192 - 3 - 4 + 1);
	n += 8192 - 3 - 4 + 1;
	n += (size_t)sprintf(in + n, "\r\n\r\n");
	decode_whole(&d, HTTP_BODY_CHUNKED, 0, 0, in, n);
	cr_expect_eq(d.ret, -EPROTO);
}

Test(http, chunked_payload_is_compacted_in_place)
{
	char in[] = "3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
	struct http_body b;
	size_t got = 0;

	http_body_init(&b, HTTP_BODY_CHUNKED, 0, 0);
	cr_expect_eq(http_body_decode(&b, in, sizeof(in) - 1, &got), (ssize_t)sizeof(in) - 1);
	cr_expect(b.done);
	cr_expect_eq(got, 5);
	cr_expect(memcmp(in, "abcde", 5) == 0);
	cr_expect_eq(b.total, 5);
	/* a finished body consumes nothing more */
	cr_expect_eq(http_body_decode(&b, in, 3, &got), 0);
	cr_expect_eq(got, 0);
}

Test(http, length_bodies_end_at_the_length_and_respect_the_limit)
{
	char in[] = "helloGET";
	struct http_body b;
	size_t got;

	http_body_init(&b, HTTP_BODY_LENGTH, 5, 0);
	cr_expect(!b.done);
	cr_expect_eq(http_body_decode(&b, in, 3, &got), 3);
	cr_expect(got == 3 && !b.done);
	cr_expect_eq(http_body_decode(&b, in + 3, 5, &got), 2);
	cr_expect(got == 2 && b.done);
	cr_expect_eq(http_body_decode(&b, in + 5, 3, &got), 0);

	http_body_init(&b, HTTP_BODY_LENGTH, 0, 0);
	cr_expect(b.done);

	http_body_init(&b, HTTP_BODY_LENGTH, 5, 5);
	cr_expect_eq(http_body_decode(&b, in, 8, &got), 5);
	http_body_init(&b, HTTP_BODY_LENGTH, 6, 5);
	cr_expect_eq(http_body_decode(&b, in, 8, &got), -EFBIG);

	http_body_init(&b, HTTP_BODY_NONE, 0, 0);
	cr_expect(b.done);
	cr_expect_eq(http_body_decode(&b, in, 8, &got), 0);
	cr_expect_eq(got, 0);
}

Test(http, close_delimited_bodies_never_end_by_themselves)
{
	char in[] = "abcdef";
	struct http_body b;
	size_t got;

	http_body_init(&b, HTTP_BODY_CLOSE, 0, 0);
	cr_expect_eq(http_body_decode(&b, in, 6, &got), 6);
	cr_expect(got == 6 && !b.done);
	http_body_init(&b, HTTP_BODY_CLOSE, 0, 4);
	cr_expect_eq(http_body_decode(&b, in, 4, &got), 4);
	cr_expect_eq(http_body_decode(&b, in, 1, &got), -EFBIG);
}

Test(http, chunk_header_writes_lower_case_hex)
{
	char out[32];
	static const struct {
		size_t n;
		const char *want;
	} cases[] = { { 0, "0\r\n" },
		      { 1, "1\r\n" },
		      { 255, "ff\r\n" },
		      { 4096, "1000\r\n" },
		      { SIZE_MAX, "ffffffffffffffff\r\n" } };

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int n = http_chunk_header(out, cases[i].n);

		cr_expect(n == (int)strlen(cases[i].want) &&
				  memcmp(out, cases[i].want, (size_t)n) == 0,
			  "%zu: %.*s", cases[i].n, n, out);
	}
}

Test(http, rechunked_payload_decodes_to_the_same_bytes)
{
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		static struct dec d, e;
		static char enc[20000];
		size_t n = 0;

		decode_whole(&d, HTTP_BODY_CHUNKED, 0, 0, chunks[i].s, chunks[i].n);
		if (d.ret < 0 || !d.done)
			continue;
		if (d.npay) {
			n += (size_t)http_chunk_header(enc, d.npay);
			memcpy(enc + n, d.pay, d.npay);
			n += d.npay;
			memcpy(enc + n, "\r\n", 2);
			n += 2;
		}
		memcpy(enc + n, "0\r\n\r\n", 5);
		n += 5;
		decode_whole(&e, HTTP_BODY_CHUNKED, 0, 0, enc, n);
		cr_expect(e.ret == (ssize_t)n && e.done && e.npay == d.npay &&
				  memcmp(e.pay, d.pay, d.npay) == 0,
			  "%s", chunks[i].name);
	}
}

/* Canned responses. ----------------------------------------------------------------------------- */

Test(http, error_responses_are_complete_and_small)
{
	static const int codes[] = { 400, 408, 413, 414, 431, 500, 501, 502, 503, 504, 505 };
	char out[512];

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		struct presp p;
		int n = http_error_response(out, sizeof(out), codes[i], true);

		cr_assert_gt(n, 0);
		cr_expect_neq(strcmp(http_status_text(codes[i]), "Unknown"), 0, "%d", codes[i]);
		/* it parses as a response whose Content-Length covers exactly the body */
		cr_assert_gt(resp_parse(&p, out, (size_t)n, false), 0, "%d: %.*s", codes[i], n,
			     out);
		cr_expect_eq(p.r.code, codes[i]);
		cr_expect_eq(p.r.framing, HTTP_BODY_LENGTH);
		cr_expect_eq(p.r.head_len + p.r.content_length, (uint64_t)n);
		cr_expect(!p.r.keep_alive);
		cr_expect_eq(http_error_response(out, (size_t)n - 1, codes[i], true), -ENOSPC);
	}
	cr_expect_eq(http_error_response(out, sizeof(out), 503, false),
		     (int)strlen("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
				 "Content-Length: 24\r\n\r\n503 Service Unavailable\n"));
	cr_expect(memcmp(out,
			 "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
			 "Content-Length: 24\r\n\r\n503 Service Unavailable\n",
			 strlen("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
				"Content-Length: 24\r\n\r\n503 Service Unavailable\n")) == 0);
}

Test(http, status_text_knows_the_common_codes)
{
	cr_expect_str_eq(http_status_text(502), "Bad Gateway");
	cr_expect_str_eq(http_status_text(431), "Request Header Fields Too Large");
	cr_expect_str_eq(http_status_text(200), "OK");
	cr_expect_str_eq(http_status_text(299), "Unknown");
	cr_expect_str_eq(http_status_text(-1), "Unknown");
}
