/* libFuzzer target for proxy/http.c: parse -> serialise -> re-parse round trips and streaming body decoding. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "check.h"
#include "http.h"

/*
 * The first input byte picks what to exercise (low two bits) and a few flags; the rest is
 * the message. Seeds are text files whose first character is '0'..'3':
 *   0  request head (+ body): parse, check prefixes, serialise, re-parse, decode the body
 *   1  response head (+ body): the same on the response side
 *   2  a chunked body alone: whole vs. split at random points vs. one byte at a time,
 *      re-encoding, and llhttp's chunked parser as a cross-check
 *   3  a request with tight limits: the limit logic, not the round trip
 * Every invariant violation aborts, so libFuzzer records the input.
 */

#define NHDR	64
#define OUT_CAP 65536

static uint64_t rng_state;

static uint32_t rng(void)
{
	rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (uint32_t)(rng_state >> 33);
}

static bool span_ok(struct http_span s, size_t len)
{
	return (size_t)s.off + s.len <= len;
}

static bool span_eq(const char *a, struct http_span sa, const char *b, struct http_span sb)
{
	return sa.len == sb.len && memcmp(a + sa.off, b + sb.off, sa.len) == 0;
}

static bool name_is(const char *buf, struct http_span s, const char *lit)
{
	return s.len == strlen(lit) && strncasecmp(buf + s.off, lit, s.len) == 0;
}

/* An independent statement of which fields are end-to-end (kept by the serialisers). */
static bool named_in_conn(const char *buf, const struct http_header *h, uint32_t n,
			  struct http_span name)
{
	for (uint32_t i = 0; i < n; i++) {
		const char *v = buf + h[i].value.off;
		size_t vl = h[i].value.len, p = 0;

		if (!name_is(buf, h[i].name, "connection"))
			continue;
		while (p <= vl) {
			size_t s = p, e;

			while (p < vl && v[p] != ',')
				p++;
			e = p;
			while (s < e && (v[s] == ' ' || v[s] == '\t'))
				s++;
			while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
				e--;
			if (e - s == name.len && strncasecmp(v + s, buf + name.off, name.len) == 0)
				return true;
			p++;
		}
	}
	return false;
}

static bool end_to_end(const char *buf, const struct http_header *h, uint32_t n, uint32_t i,
		       bool keep_upgrade, bool drop_expect)
{
	static const char *const hop[] = { "host",
					   "content-length",
					   "transfer-encoding",
					   "connection",
					   "keep-alive",
					   "proxy-connection",
					   "te",
					   "trailer",
					   "x-forwarded-for",
					   "x-forwarded-proto",
					   "via",
					   "close" };

	if (name_is(buf, h[i].name, "upgrade"))
		return keep_upgrade;
	if (drop_expect && name_is(buf, h[i].name, "expect"))
		return false;
	for (size_t k = 0; k < sizeof(hop) / sizeof(hop[0]); k++)
		if (name_is(buf, h[i].name, hop[k]))
			return false;
	return !named_in_conn(buf, h, n, h[i].name);
}

/* The end-to-end fields of a and b are the same, in the same order, byte for byte. */
static void same_fields(const char *ba, const struct http_header *ha, uint32_t na,
			bool drop_expect_a, const char *bb, const struct http_header *hb,
			uint32_t nb, bool keep_upgrade)
{
	uint32_t i = 0, j = 0;

	for (;;) {
		while (i < na && !end_to_end(ba, ha, na, i, keep_upgrade, drop_expect_a))
			i++;
		while (j < nb && !end_to_end(bb, hb, nb, j, keep_upgrade, false))
			j++;
		if (i == na || j == nb)
			break;
		CHECK(span_eq(ba, ha[i].name, bb, hb[j].name));
		CHECK(span_eq(ba, ha[i].value, bb, hb[j].value));
		i++;
		j++;
	}
	CHECK(i == na && j == nb);
}

/*
 * Decodes body[0..len) split at random points (or byte by byte) and checks the result
 * equals the whole-buffer decode: same payload, same verdict, same consumed count.
 */
struct dec_result {
	ssize_t ret; /* consumed, or the error */
	size_t npay;
	bool done;
};

static struct dec_result decode_split(enum http_framing f, uint64_t cl, uint64_t max,
				      const uint8_t *body, size_t len, char *pay, int mode)
{
	struct http_body b;
	struct dec_result r = { 0 };
	char *tmp = malloc(len ? len : 1);
	size_t off = 0;

	http_body_init(&b, f, cl, max);
	while (off < len && !b.done) {
		size_t n = len - off, got;
		ssize_t ret;

		if (mode == 1)
			n = 1;
		else if (mode == 2)
			n = 1 + rng() % n;
		memcpy(tmp, body + off, n);
		ret = http_body_decode(&b, tmp, n, &got);
		if (ret < 0) {
			r.ret = ret;
			goto out;
		}
		CHECK((size_t)ret <= n && got <= (size_t)ret);
		CHECK(b.done || (size_t)ret == n);
		memcpy(pay + r.npay, tmp, got);
		r.npay += got;
		off += (size_t)ret;
	}
	r.ret = (ssize_t)off;
out:
	r.done = b.done;
	free(tmp);
	return r;
}

/* llhttp's chunk parser, for the cross-check: collects the payload of a chunked body. */
struct ll_body {
	char *pay;
	size_t n;
	bool complete;
};

static int ll_on_body(llhttp_t *p, const char *at, size_t n)
{
	struct ll_body *lb = p->data;

	memcpy(lb->pay + lb->n, at, n);
	lb->n += n;
	return 0;
}

static int ll_on_complete(llhttp_t *p)
{
	((struct ll_body *)p->data)->complete = true;
	return HPE_PAUSED;
}

static void body_checks(enum http_framing f, uint64_t cl, const uint8_t *body, size_t len)
{
	char *p0 = malloc(len + 1), *p1 = malloc(len + 1), *p2 = malloc(len + 1);
	struct dec_result r0, r1, r2;
	uint64_t max = (len && (rng() & 1)) ? rng() % (len + 1) : 0;

	r0 = decode_split(f, cl, max, body, len, p0, 0);
	r1 = decode_split(f, cl, max, body, len, p1, 1);
	r2 = decode_split(f, cl, max, body, len, p2, 2);
	CHECK(r0.ret == r1.ret && r0.ret == r2.ret);
	CHECK(r0.done == r1.done && r0.done == r2.done);
	if (r0.ret >= 0) {
		CHECK(r0.npay == r1.npay && r0.npay == r2.npay);
		CHECK(memcmp(p0, p1, r0.npay) == 0 && memcmp(p0, p2, r0.npay) == 0);
	} else {
		/* before the error the same payload prefix was delivered */
		size_t m = r1.npay < r2.npay ? r1.npay : r2.npay;
		CHECK(memcmp(p1, p2, m) == 0);
	}
	if (max && r0.ret >= 0)
		CHECK(r0.npay <= max);

	if (f == HTTP_BODY_CHUNKED && r0.ret >= 0 && r0.done) {
		/* re-encode as one chunk + last-chunk; it must decode to the same payload */
		size_t cap = r0.npay + 64, n = 0;
		char *enc = malloc(cap), *p3 = malloc(cap);
		struct dec_result r3;

		if (r0.npay) {
			n += (size_t)http_chunk_header(enc, r0.npay);
			memcpy(enc + n, p0, r0.npay);
			n += r0.npay;
			memcpy(enc + n, "\r\n", 2);
			n += 2;
		}
		memcpy(enc + n, "0\r\n\r\n", 5);
		n += 5;
		r3 = decode_split(f, 0, 0, (const uint8_t *)enc, n, p3, 2);
		CHECK(r3.ret == (ssize_t)n && r3.done && r3.npay == r0.npay);
		CHECK(memcmp(p3, p0, r0.npay) == 0);
		free(enc);
		free(p3);

		/*
		 * llhttp's chunk parser as a differential: when both accept the body, both must
		 * read the same payload. Acceptance itself differs by design: llhttp 8.1 refuses
		 * valid input (";a=b;c=d", quoted-pair) and accepts invalid input (";a=b;"), which
		 * is why corral has its own decoder.
		 */
		if (!max) {
			static const char head[] =
				"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
			llhttp_settings_t st;
			llhttp_t lp;
			struct ll_body lb = { .pay = p3 = malloc(len + 1) };
			llhttp_errno_t err;

			llhttp_settings_init(&st);
			st.on_body = ll_on_body;
			st.on_message_complete = ll_on_complete;
			llhttp_init(&lp, HTTP_REQUEST, &st);
			lp.data = &lb;
			err = llhttp_execute(&lp, head, sizeof(head) - 1);
			CHECK(err == HPE_OK);
			err = llhttp_execute(&lp, (const char *)body, (size_t)r0.ret);
			if (lb.complete && err == HPE_PAUSED)
				CHECK(lb.n == r0.npay && memcmp(lb.pay, p0, lb.n) == 0);
			free(p3);
		}
	}
	free(p0);
	free(p1);
	free(p2);
}

static void fuzz_request(const uint8_t *data, size_t size, const struct http_limits *lim,
			 bool roundtrip)
{
	const char *buf = (const char *)data;
	struct http_header h1[NHDR], h2[NHDR];
	struct http_req r1 = { .hdr = h1, .hdr_cap = NHDR }, r2 = { .hdr = h2, .hdr_cap = NHDR };
	struct http_limits big = { 1 << 20, NHDR, 1 << 20, 0 };
	struct http_fwd fwd = { .client_ip = "192.0.2.1", .proto = "http" };
	char *out;
	int ret, n, ret2;

	ret = http_req_parse(&r1, buf, size, lim);
	CHECK(ret > 0 || ret == -EAGAIN || ret == -EPROTO);
	if (ret == -EPROTO) {
		CHECK(r1.status == 400 || r1.status == 413 || r1.status == 414 ||
		      r1.status == 431 || r1.status == 501 || r1.status == 505);
		CHECK(r1.reason != NULL);
		return;
	}
	if (ret == -EAGAIN) {
		CHECK(size < lim->header_bytes_max);
		return;
	}
	CHECK((size_t)ret <= size && r1.head_len == (uint32_t)ret);
	CHECK(r1.head_len <= lim->header_bytes_max && r1.nhdr <= lim->headers_max);
	CHECK(span_ok(r1.method, r1.head_len) && span_ok(r1.target, r1.head_len) &&
	      span_ok(r1.host, r1.head_len));
	CHECK(r1.target.len > 0 && buf[r1.target.off] == '/');
	CHECK(r1.version_minor <= 1);
	for (uint32_t i = 0; i < r1.nhdr; i++)
		CHECK(span_ok(h1[i].name, r1.head_len) && span_ok(h1[i].value, r1.head_len));
	if (r1.framing == HTTP_BODY_LENGTH && lim->body_bytes_max)
		CHECK(r1.content_length <= lim->body_bytes_max);

	/* Streaming: every proper prefix of an accepted head is "need more". */
	for (int k = 0; k < 3; k++) {
		size_t pl = k == 0 ? (size_t)ret - 1 : rng() % (size_t)ret;
		struct http_req rp = { .hdr = h2, .hdr_cap = NHDR };

		CHECK(http_req_parse(&rp, buf, pl, lim) == -EAGAIN);
	}
	/* Trailing bytes never change the verdict on the head. */
	if ((size_t)ret < size) {
		CHECK(http_req_parse(&r2, buf, (size_t)ret, lim) == ret);
	}
	if (!roundtrip)
		return;

	out = malloc(OUT_CAP);
	n = http_req_serialize(&r1, buf, &fwd, out, OUT_CAP);
	CHECK(n > 0);
	{
		/* an exactly sized buffer fits, one byte less is -ENOSPC (ASan checks the writes) */
		char *exact = malloc((size_t)n), *less = malloc((size_t)n - 1);

		CHECK(http_req_serialize(&r1, buf, &fwd, exact, (size_t)n) == n);
		CHECK(memcmp(exact, out, (size_t)n) == 0);
		CHECK(http_req_serialize(&r1, buf, &fwd, less, (size_t)n - 1) == -ENOSPC);
		free(exact);
		free(less);
	}
	ret2 = http_req_parse(&r2, out, (size_t)n, &big);
	if (ret2 != n)
		fprintf(stderr, "re-parse: %d (%s) of\n%.*s\n", ret2, r2.reason ? r2.reason : "", n,
			out);
	CHECK(ret2 == n);
	CHECK(span_eq(buf, r1.method, out, r2.method));
	CHECK(span_eq(buf, r1.target, out, r2.target));
	CHECK(r1.target_asterisk == r2.target_asterisk);
	CHECK(span_eq(buf, r1.host, out, r2.host));
	CHECK(r2.version_minor == 1);
	CHECK(r1.framing == r2.framing);
	CHECK(r1.framing != HTTP_BODY_LENGTH || r1.content_length == r2.content_length);
	CHECK(r1.is_head == r2.is_head && r1.is_idempotent == r2.is_idempotent);
	CHECK(r1.upgrade == r2.upgrade);
	CHECK(r1.expect_continue == r2.expect_continue);
	CHECK(r2.keep_alive);
	same_fields(buf, h1, r1.nhdr, r1.version_minor == 0, out, h2, r2.nhdr, r1.upgrade);
	free(out);

	if (r1.framing == HTTP_BODY_LENGTH || r1.framing == HTTP_BODY_CHUNKED)
		body_checks(r1.framing, r1.content_length, data + ret, size - (size_t)ret);
}

static void fuzz_response(const uint8_t *data, size_t size, uint8_t flags)
{
	const char *buf = (const char *)data;
	struct http_header h1[NHDR], h2[NHDR];
	struct http_resp r1 = { .hdr = h1, .hdr_cap = NHDR }, r2 = { .hdr = h2, .hdr_cap = NHDR };
	struct http_limits lim = { 4096, 32, 0, 0 }, big = { 1 << 20, NHDR, 0, 0 };
	bool is_head = flags & 0x40, keep_alive = flags & 0x04;
	uint8_t client_minor = (flags >> 3) & 1;
	enum http_framing of;
	char *out;
	int ret, n;

	ret = http_resp_parse(&r1, buf, size, &lim, is_head);
	CHECK(ret > 0 || ret == -EAGAIN || ret == -EPROTO);
	if (ret == -EPROTO) {
		CHECK(r1.reason != NULL);
		return;
	}
	if (ret == -EAGAIN)
		return;
	CHECK((size_t)ret <= size && r1.head_len == (uint32_t)ret);
	CHECK(r1.code >= 100 && r1.code <= 599 && r1.version_minor <= 1);
	CHECK(span_ok(r1.reason_phrase, r1.head_len));
	for (uint32_t i = 0; i < r1.nhdr; i++)
		CHECK(span_ok(h1[i].name, r1.head_len) && span_ok(h1[i].value, r1.head_len));
	if (is_head || r1.code < 200 || r1.code == 204 || r1.code == 304)
		CHECK(r1.framing == HTTP_BODY_NONE);
	if (r1.framing == HTTP_BODY_CLOSE)
		CHECK(!r1.keep_alive);
	CHECK(http_resp_parse(&r2, buf, (size_t)ret - 1, &lim, is_head) == -EAGAIN);

	out = malloc(OUT_CAP);
	n = http_resp_serialize(&r1, buf, client_minor, keep_alive, is_head, out, OUT_CAP, &of);
	CHECK(n > 0);
	{
		char *less = malloc((size_t)n - 1);
		enum http_framing of2;

		CHECK(http_resp_serialize(&r1, buf, client_minor, keep_alive, is_head, less,
					  (size_t)n - 1, &of2) == -ENOSPC);
		free(less);
	}
	ret = http_resp_parse(&r2, out, (size_t)n, &big, is_head);
	if (ret != n)
		fprintf(stderr, "re-parse: %d (%s) of\n%.*s\n", ret, r2.reason ? r2.reason : "", n,
			out);
	CHECK(ret == n);
	CHECK(r2.code == r1.code && r2.version_minor == 1);
	switch (r1.framing) {
	case HTTP_BODY_NONE:
		CHECK(of == HTTP_BODY_NONE && r2.framing == HTTP_BODY_NONE);
		break;
	case HTTP_BODY_LENGTH:
		CHECK(of == HTTP_BODY_LENGTH && r2.framing == HTTP_BODY_LENGTH);
		CHECK(r2.content_length == r1.content_length);
		break;
	case HTTP_BODY_CHUNKED:
	case HTTP_BODY_CLOSE:
		CHECK(of == (client_minor ? HTTP_BODY_CHUNKED : HTTP_BODY_CLOSE));
		CHECK(r2.framing == of);
		break;
	}
	if (r1.code >= 200) {
		if (!keep_alive || of == HTTP_BODY_CLOSE)
			CHECK(!r2.keep_alive);
		else
			CHECK(r2.keep_alive);
	}
	same_fields(buf, h1, r1.nhdr, false, out, h2, r2.nhdr, r1.code == 101);
	free(out);

	if (r1.framing != HTTP_BODY_NONE)
		body_checks(r1.framing, r1.content_length, data + r1.head_len, size - r1.head_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t sel;

	if (size < 1)
		return 0;
	sel = data[0];
	rng_state = size;
	for (size_t i = 0; i < size && i < 16; i++)
		rng_state = rng_state * 31 + data[i];
	data++;
	size--;

	switch (sel & 3) {
	case 0: {
		struct http_limits lim = { 4096, 32, 1024, 1 << 20 };

		fuzz_request(data, size, &lim, true);
		break;
	}
	case 1:
		fuzz_response(data, size, sel);
		break;
	case 2:
		body_checks(HTTP_BODY_CHUNKED, 0, data, size);
		break;
	case 3: {
		/* tight limits, chosen by the flag bits: exercises 414/431/413 boundaries */
		struct http_limits lim = { 64u + (sel >> 2) * 4u, 1u + ((sel >> 2) & 7),
					   8u + (sel >> 4), (sel >> 2) & 15 };

		fuzz_request(data, size, &lim, false);
		break;
	}
	}
	return 0;
}
