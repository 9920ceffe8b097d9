/* Unit tests for the access log (proxy/accesslog.c): line formats and the double buffer. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "accesslog.h"

#define S(lit) ((struct alog_str){ lit, sizeof(lit) - 1 })

static int64_t t_us(int y, int mo, int d, int h, int mi, int s, int us)
{
	struct tm tm = { .tm_year = y - 1900,
			 .tm_mon = mo - 1,
			 .tm_mday = d,
			 .tm_hour = h,
			 .tm_min = mi,
			 .tm_sec = s };

	return (int64_t)timegm(&tm) * 1000000 + us;
}

static struct alog_entry entry(void)
{
	return (struct alog_entry){
		.time_us = t_us(2026, 11, 27, 14, 5, 9, 1234),
		.core = 1,
		.client = "127.0.0.1",
		.method = S("GET"),
		.target = S("/a?b=c"),
		.host = S("example.test"),
		.referer = S("http://r.test/"),
		.user_agent = S("curl/8.0"),
		.version_minor = 1,
		.status = 200,
		.bytes_in = 78,
		.bytes_out = 1234,
		.duration_us = 567,
		.upstream = "127.0.0.1:8081",
	};
}

Test(accesslog, json_line_has_every_field)
{
	char line[ALOG_LINE_MAX];
	struct alog_entry e = entry();
	size_t n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	json_error_t jerr;
	json_t *j;

	cr_assert_gt(n, 0);
	cr_assert_eq(line[n - 1], '\n');
	cr_assert_eq(memchr(line, '\n', n), line + n - 1, "one line only");
	j = json_loadb(line, n, 0, &jerr);
	cr_assert_not_null(j, "%.*s: %s", (int)n, line, jerr.text);
	cr_assert_str_eq(json_string_value(json_object_get(j, "time")),
			 "2026-11-27T14:05:09.001234Z");
	cr_assert_eq(json_integer_value(json_object_get(j, "core")), 1);
	cr_assert_str_eq(json_string_value(json_object_get(j, "client")), "127.0.0.1");
	cr_assert_str_eq(json_string_value(json_object_get(j, "method")), "GET");
	cr_assert_str_eq(json_string_value(json_object_get(j, "uri")), "/a?b=c");
	cr_assert_str_eq(json_string_value(json_object_get(j, "protocol")), "HTTP/1.1");
	cr_assert_str_eq(json_string_value(json_object_get(j, "host")), "example.test");
	cr_assert_eq(json_integer_value(json_object_get(j, "status")), 200);
	cr_assert_eq(json_integer_value(json_object_get(j, "bytes_in")), 78);
	cr_assert_eq(json_integer_value(json_object_get(j, "bytes_out")), 1234);
	cr_assert_eq(json_integer_value(json_object_get(j, "duration_us")), 567);
	cr_assert_str_eq(json_string_value(json_object_get(j, "upstream")), "127.0.0.1:8081");
	cr_assert_str_eq(json_string_value(json_object_get(j, "referer")), "http://r.test/");
	cr_assert_str_eq(json_string_value(json_object_get(j, "user_agent")), "curl/8.0");
	json_decref(j);
}

Test(accesslog, json_escapes_quotes_controls_and_high_bytes)
{
	char line[ALOG_LINE_MAX];
	struct alog_entry e = entry();
	size_t n;
	json_t *j;

	e.user_agent = S("a\"b\\c\nd\x01\xff");
	e.upstream = NULL;
	e.version_minor = 0;
	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	cr_assert_eq(memchr(line, '\n', n), line + n - 1,
		     "an embedded newline must not split the line");
	j = json_loadb(line, n, 0, NULL);
	cr_assert_not_null(j, "%.*s", (int)n, line);
	cr_assert_str_eq(json_string_value(json_object_get(j, "user_agent")),
			 "a\"b\\c\nd\x01\xc3\xbf");
	cr_assert(json_is_null(json_object_get(j, "upstream")));
	cr_assert_str_eq(json_string_value(json_object_get(j, "protocol")), "HTTP/1.0");
	json_decref(j);
}

/* Issue 8 defect 10: valid UTF-8 is kept; only bytes outside a well-formed sequence are \u00XX. */
Test(accesslog, json_keeps_valid_utf8_and_escapes_only_invalid_bytes)
{
	static const struct {
		const char *in, *out; /* out: the decoded JSON string */
	} cases[] = {
		{ "caf\xc3\xa9", "caf\xc3\xa9" }, /* é kept, not \u00c3\u00a9 */
		{ "\xe2\x82\xac \xf0\x9f\x90\x84",
		  "\xe2\x82\xac \xf0\x9f\x90\x84" }, /* € and U+1F404 */
		{ "\xed\x9f\xbf\xf4\x8f\xbf\xbf",
		  "\xed\x9f\xbf\xf4\x8f\xbf\xbf" }, /* U+D7FF, U+10FFFF */
		{ "a\xc3", "a\xc3\x83" },	    /* a cut sequence: the lead byte as U+00C3 */
		{ "\xc3(", "\xc3\x83(" },	    /* a lead byte without continuation */
		{ "\xc0\xaf", "\xc3\x80\xc2\xaf" }, /* overlong '/' */
		{ "\xe0\x80\xaf", "\xc3\xa0\xc2\x80\xc2\xaf" },		    /* overlong, 3 bytes */
		{ "\xed\xa0\x80", "\xc3\xad\xc2\xa0\xc2\x80" },		    /* a UTF-16 surrogate */
		{ "\xf4\x90\x80\x80", "\xc3\xb4\xc2\x90\xc2\x80\xc2\x80" }, /* above U+10FFFF */
		{ "\x80z", "\xc2\x80z" }, /* a lone continuation byte */
		{ "\xff\xfe", "\xc3\xbf\xc3\xbe" },
		{ "x\x7f\x01", "x\x7f\x01" }, /* DEL and controls escaped, decode back */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char line[ALOG_LINE_MAX];
		struct alog_entry e = entry();
		size_t n;
		json_t *j;

		e.user_agent = (struct alog_str){ cases[i].in, (uint32_t)strlen(cases[i].in) };
		n = alog_format(line, CFG_LOG_JSON, &e, NULL);
		j = json_loadb(line, n, 0, NULL); /* jansson refuses invalid UTF-8 */
		cr_assert_not_null(j, "case %zu: %.*s", i, (int)n, line);
		cr_expect_str_eq(json_string_value(json_object_get(j, "user_agent")), cases[i].out,
				 "case %zu", i);
		json_decref(j);
	}
}

Test(accesslog, utf8_is_never_cut_inside_a_sequence)
{
	static char big[3000];
	char line[ALOG_LINE_MAX];
	struct alog_entry e = entry();
	size_t n;
	json_t *j;

	for (size_t i = 0; i + 3 <= sizeof(big); i += 3)
		memcpy(big + i, "\xe2\x82\xac", 3);
	for (size_t k = 0; k < 3; k++) {
		e.target = (struct alog_str){ big + k, (uint32_t)(sizeof(big) - k) };
		n = alog_format(line, CFG_LOG_JSON, &e, NULL);
		j = json_loadb(line, n, 0, NULL);
		cr_assert_not_null(j, "offset %zu", k);
		json_decref(j);
	}
}

/* A rejected request: what was read of it and why; a missing version is null / "-". */
Test(accesslog, rejected_request_logs_its_line_and_the_reason)
{
	char line[ALOG_LINE_MAX];
	struct alog_entry e = entry();
	size_t n;
	json_t *j;

	e.status = 400;
	e.upstream = NULL;
	e.version_minor = 0;
	e.protocol = S("HTTP/1.1");
	e.reason = "invalid character in field value";
	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	j = json_loadb(line, n, 0, NULL);
	cr_assert_not_null(j, "%.*s", (int)n, line);
	cr_assert_str_eq(json_string_value(json_object_get(j, "protocol")), "HTTP/1.1");
	cr_assert_str_eq(json_string_value(json_object_get(j, "reason")),
			 "invalid character in field value");
	json_decref(j);
	e.protocol = (struct alog_str){ 0 };
	e.protocol_unknown = true;
	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	j = json_loadb(line, n, 0, NULL);
	cr_assert_not_null(j);
	cr_assert(json_is_null(json_object_get(j, "protocol")));
	json_decref(j);
	n = alog_format(line, CFG_LOG_COMBINED, &e, NULL);
	line[n] = '\0';
	cr_assert_str_eq(line, "127.0.0.1 - - [27/Nov/2026:14:05:09 +0000] \"GET /a?b=c -\" 400 "
			       "1234 \"http://r.test/\" \"curl/8.0\"\n");
	/* A line without a reason has no reason key. */
	e = entry();
	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	j = json_loadb(line, n, 0, NULL);
	cr_assert_null(json_object_get(j, "reason"));
	json_decref(j);
}

Test(accesslog, combined_line_is_the_apache_format)
{
	char line[ALOG_LINE_MAX];
	struct alog_entry e = entry();
	size_t n = alog_format(line, CFG_LOG_COMBINED, &e, NULL);

	line[n] = '\0';
	cr_assert_str_eq(line,
			 "127.0.0.1 - - [27/Nov/2026:14:05:09 +0000] \"GET /a?b=c HTTP/1.1\" 200 "
			 "1234 \"http://r.test/\" \"curl/8.0\"\n");
	e.referer = (struct alog_str){ 0 };
	e.user_agent = S("evil\" \"x\n");
	e.bytes_out = 0;
	n = alog_format(line, CFG_LOG_COMBINED, &e, NULL);
	line[n] = '\0';
	cr_assert_str_eq(line,
			 "127.0.0.1 - - [27/Nov/2026:14:05:09 +0000] \"GET /a?b=c HTTP/1.1\" 200 "
			 "- \"-\" \"evil\\x22 \\x22x\\x0a\"\n");
}

Test(accesslog, huge_fields_are_cut_and_the_line_stays_bounded_and_valid)
{
	static char big[100001];
	char line[ALOG_LINE_MAX];
	struct alog_entry e = entry();
	size_t n;
	json_t *j;

	memset(big, '"', sizeof(big) - 1); /* worst case: every byte escaped */
	e.target = (struct alog_str){ big, sizeof(big) };
	e.host = (struct alog_str){ big, sizeof(big) };
	e.referer = (struct alog_str){ big, sizeof(big) };
	e.user_agent = (struct alog_str){ big, sizeof(big) };
	e.method = (struct alog_str){ big, sizeof(big) };
	e.protocol = (struct alog_str){ big, sizeof(big) };
	e.reason = big + sizeof(big) - 1000; /* NUL-terminated: big is static, one byte longer */
	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	cr_assert_leq(n, ALOG_LINE_MAX);
	j = json_loadb(line, n, 0, NULL);
	cr_assert_not_null(j, "a cut line must still be valid JSON");
	cr_assert_eq(strlen(json_string_value(json_object_get(j, "uri"))), 1024);
	json_decref(j);
	memset(big, 0x01, sizeof(big) - 1); /* 6-byte escapes: must not be cut in half */
	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	cr_assert_leq(n, ALOG_LINE_MAX);
	j = json_loadb(line, n, 0, NULL);
	cr_assert_not_null(j);
	json_decref(j);
	n = alog_format(line, CFG_LOG_COMBINED, &e, NULL);
	cr_assert_leq(n, ALOG_LINE_MAX);
	cr_assert_eq(memchr(line, '\n', n), line + n - 1);
}

/* A fake kernel: takes the bytes handed out and "writes" them to out later. */
static char written[1 << 22];
static size_t written_len;

static void complete(struct alog_buf *b, const void *data, size_t len, size_t res)
{
	int rc;

	memcpy(written + written_len, data, res);
	written_len += res;
	rc = alog_flush_done(b, (int)res);
	(void)len;
	(void)rc;
}

Test(accesslog, appends_continue_while_a_write_is_in_flight_and_lines_stay_whole)
{
	struct alog_buf b;
	struct alog_entry e = entry();
	char expect[1 << 16], line[ALOG_LINE_MAX];
	size_t expect_len = 0, inflight_len = 0;
	const void *inflight = NULL;
	char snapshot[1 << 16];

	written_len = 0;
	cr_assert_eq(alog_init(&b, CFG_LOG_JSON, 16384), 0);
	for (int i = 0; i < 200; i++) {
		int rc;

		e.status = (uint16_t)(200 + i % 300);
		e.duration_us = (uint64_t)i;
		size_t n = alog_format(line, CFG_LOG_JSON, &e, NULL);
		memcpy(expect + expect_len, line, n);
		expect_len += n;
		rc = alog_append(&b, &e);
		cr_assert_geq(rc, 0, "no drop while the writer keeps up");
		/* Every 10 lines the in-flight write completes; then a new one starts if due. */
		if (inflight && i % 10 == 9) {
			cr_assert_eq(memcmp(inflight, snapshot, inflight_len), 0,
				     "bytes in flight must not change");
			complete(&b, inflight, inflight_len, inflight_len);
			inflight = NULL;
		}
		if (!inflight && (rc == 1 || alog_pending(&b))) {
			inflight_len = alog_flush_begin(&b, &inflight);
			if (inflight_len) {
				memcpy(snapshot, inflight, inflight_len);
				cr_assert_eq(((const char *)inflight)[inflight_len - 1], '\n',
					     "a write ends on a line end");
			} else {
				inflight = NULL;
			}
		}
		cr_assert_eq(alog_flush_begin(&b, &(const void *){ NULL }) == 0 || !inflight, true,
			     "one write in flight at most");
	}
	if (inflight)
		complete(&b, inflight, inflight_len, inflight_len);
	while ((inflight_len = alog_flush_begin(&b, &inflight)))
		complete(&b, inflight, inflight_len, inflight_len);
	cr_assert_eq(written_len, expect_len);
	cr_assert_eq(memcmp(written, expect, expect_len), 0, "every line, in order, whole");
	cr_assert_eq(b.lines, 200);
	cr_assert_eq(b.lines_dropped, 0);
	alog_free(&b);
}

/* A write the kernel holds back while several chunks' worth of lines arrive: nothing lost. */
Test(accesslog, a_late_write_loses_no_line_while_chunks_remain)
{
	static char expect[1 << 20];
	struct alog_buf b;
	struct alog_entry e = entry();
	char line[ALOG_LINE_MAX];
	size_t expect_len = 0, len;
	const void *data = NULL;
	int i, lines = 0;

	written_len = 0;
	cr_assert_eq(alog_init(&b, CFG_LOG_JSON, 2 * ALOG_LINE_MAX), 0);
	/* The first write starts and stays in flight while lines fill half the other chunks. */
	for (i = 0; written_len == 0 && lines < 100000; i++) {
		int rc;

		e.duration_us = (uint64_t)i;
		len = alog_format(line, CFG_LOG_JSON, &e, NULL);
		rc = alog_append(&b, &e);
		cr_assert_geq(rc, 0, "line %d dropped with chunks to spare", i);
		memcpy(expect + expect_len, line, len);
		expect_len += len;
		lines++;
		if (!data && rc == 1)
			cr_assert_gt(alog_flush_begin(&b, &data), 0);
		if (b.fill == (b.head + ALOG_CHUNKS / 2) % ALOG_CHUNKS)
			break; /* half the chunks hold lines behind the late write */
	}
	cr_assert(b.in_flight);
	cr_assert_eq(b.lines_dropped, 0);
	complete(&b, data, b.wlen, b.wlen);
	while ((len = alog_flush_begin(&b, &data)))
		complete(&b, data, len, len);
	cr_assert_eq(written_len, expect_len);
	cr_assert_eq(memcmp(written, expect, expect_len), 0, "every line, in order, whole");
	cr_assert_eq(b.lines, (uint64_t)lines);
	alog_free(&b);
}

Test(accesslog, every_chunk_full_drops_lines_and_counts_them)
{
	struct alog_buf b;
	struct alog_entry e = entry();
	const void *data;
	size_t len;
	int drops = 0, i;

	cr_assert_eq(alog_init(&b, CFG_LOG_JSON, 2 * ALOG_LINE_MAX), 0);
	/* Fill one chunk, start its write, never complete it, fill every other chunk. */
	for (i = 0; i < 100000 && !drops; i++) {
		int rc = alog_append(&b, &e);

		if (rc == 1 && !b.in_flight) {
			len = alog_flush_begin(&b, &data);
			cr_assert_gt(len, 0);
		}
		if (rc == -ENOBUFS)
			drops++;
	}
	cr_assert_eq(drops, 1);
	cr_assert_eq(b.lines_dropped, 1);
	/* Every line before the drop is held: each chunk took as many whole lines as fit. */
	cr_assert_eq(b.lines, (uint64_t)(i - 1));
	cr_assert_geq(b.lines, (uint64_t)ALOG_CHUNKS * (2 * ALOG_LINE_MAX / ALOG_LINE_MAX - 1));
	cr_assert(b.in_flight);
	cr_assert_eq(alog_flush_begin(&b, &data), 0, "a second write while one is in flight");
	alog_free(&b);
}

Test(accesslog, a_short_write_hands_out_the_rest_next)
{
	struct alog_buf b;
	struct alog_entry e = entry();
	const void *data;
	size_t len, len2;

	written_len = 0;
	cr_assert_eq(alog_init(&b, CFG_LOG_COMBINED, 0), 0);
	alog_append(&b, &e);
	alog_append(&b, &e);
	len = alog_flush_begin(&b, &data);
	cr_assert_gt(len, 10);
	memcpy(written, data, 10);
	cr_assert_eq(alog_flush_done(&b, 10), 1, "short write: flush again now");
	len2 = alog_flush_begin(&b, &data);
	cr_assert_eq(len2, len - 10);
	memcpy(written + 10, data, len2);
	cr_assert_eq(alog_flush_done(&b, (int)len2), 0);
	cr_assert_eq(alog_flush_begin(&b, &data), 0);
	cr_assert(!alog_pending(&b));
	{
		char line[ALOG_LINE_MAX];
		size_t n = alog_format(line, CFG_LOG_COMBINED, &e, NULL);

		cr_assert_eq(len, 2 * n);
		cr_assert_eq(memcmp(written, line, n), 0);
		cr_assert_eq(memcmp(written + n, line, n), 0);
	}
	alog_free(&b);
}

Test(accesslog, a_failed_write_drops_its_bytes_and_logging_goes_on)
{
	struct alog_buf b;
	struct alog_entry e = entry();
	const void *data;
	size_t len;

	cr_assert_eq(alog_init(&b, CFG_LOG_JSON, 0), 0);
	alog_append(&b, &e);
	len = alog_flush_begin(&b, &data);
	cr_assert_gt(len, 0);
	alog_append(&b, &e); /* goes to the other half meanwhile */
	cr_assert_eq(alog_flush_done(&b, -ENOSPC), -ENOSPC);
	cr_assert_eq(b.write_errors, 1);
	cr_assert_eq(b.bytes_dropped, len);
	cr_assert(alog_pending(&b));
	cr_assert_eq(alog_flush_begin(&b, &data), len,
		     "the line appended meanwhile is written next");
	cr_assert_eq(alog_flush_done(&b, 0), -EIO, "a 0-byte write is an error, not a loop");
	alog_free(&b);
}

Test(accesslog, flush_sync_writes_everything_to_an_append_file)
{
	char path[] = "/tmp/corral-alog-XXXXXX", buf[1 << 16];
	struct alog_buf b;
	struct alog_entry e = entry();
	int fd = mkstemp(path), rd;
	ssize_t n;
	int lines = 0;

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "first\n", 6), 6);
	close(fd);
	fd = alog_open(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(alog_init(&b, CFG_LOG_JSON, 0), 0);
	for (int i = 0; i < 50; i++)
		cr_assert_geq(alog_append(&b, &e), 0);
	cr_assert_eq(alog_flush_sync(&b, fd), 0);
	cr_assert(!alog_pending(&b));
	close(fd);
	rd = open(path, O_RDONLY);
	n = read(rd, buf, sizeof(buf));
	close(rd);
	unlink(path);
	for (ssize_t i = 0; i < n; i++)
		lines += buf[i] == '\n';
	cr_assert_eq(lines, 51);
	cr_assert_eq(memcmp(buf, "first\n{\"time\"", 13), 0, "appended after what was there");
	cr_assert_eq(alog_open("/nonexistent-dir/x.log"), -ENOENT);
	alog_free(&b);
}

Test(accesslog, fields_come_straight_from_a_parsed_request)
{
	static const char buf[] = "GET /x HTTP/1.1\r\nHost: h\r\nuser-agent: UA/1\r\n\r\n";
	struct http_header hdr[2] = {
		{ .name = { 17, 4 }, .value = { 23, 1 } },
		{ .name = { 26, 10 }, .value = { 38, 4 } },
	};
	struct http_req req = { .method = { 0, 3 }, .target = { 4, 2 }, .nhdr = 2, .hdr = hdr };
	struct alog_str s;

	s = alog_span(buf, req.target);
	cr_assert_eq(s.len, 2);
	cr_assert_eq(memcmp(s.p, "/x", 2), 0);
	s = alog_req_header(buf, &req, "User-Agent");
	cr_assert_eq(s.len, 4);
	cr_assert_eq(memcmp(s.p, "UA/1", 4), 0);
	s = alog_req_header(buf, &req, "Referer");
	cr_assert_null(s.p);
	cr_assert_eq(s.len, 0);
	s = alog_span(buf, (struct http_span){ 0, 0 });
	cr_assert_null(s.p);
}

static bool str_is(struct alog_str s, const char *want)
{
	if (!want)
		return s.p == NULL && s.len == 0;
	return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

Test(accesslog, fields_come_from_a_serialised_head)
{
	static const char h[] = "GET /a?b=1 HTTP/1.1\r\n"
				"Host: example.org\r\n"
				"USER-AGENT:  curl/8\r\n"
				"X-Host: no\r\n"
				"\r\n";
	struct alog_entry e = { 0 };

	alog_entry_set_head(&e, h, sizeof(h) - 1);
	cr_assert(str_is(e.method, "GET"));
	cr_assert(str_is(e.target, "/a?b=1"));
	cr_assert(str_is(e.host, "example.org"));
	cr_assert(str_is(e.user_agent, "curl/8"), "case-insensitive name, leading spaces dropped");
	cr_assert(str_is(e.referer, NULL), "an absent header is an empty span");
	/* A name matches only at a line start, and only the n bytes given are searched. */
	cr_assert(str_is(alog_head_field(h, sizeof(h) - 1, "x-host"), "no"));
	cr_assert(str_is(alog_head_field(h, 21, "host"), NULL));
}

Test(accesslog, a_rejected_line_keeps_what_can_be_read)
{
	struct alog_entry e = { 0 };

	alog_rejected_line("GET /x HTTP/1.1\r\nHost: a\r\n", 26, &e);
	cr_assert(str_is(e.method, "GET") && str_is(e.target, "/x"));
	cr_assert(str_is(e.protocol, "HTTP/1.1") && !e.protocol_unknown);

	memset(&e, 0, sizeof(e));
	alog_rejected_line("POST /very-long", 15, &e); /* no line end: no version */
	cr_assert(str_is(e.method, "POST") && str_is(e.target, "/very-long"));
	cr_assert(e.protocol_unknown && str_is(e.protocol, NULL));

	memset(&e, 0, sizeof(e));
	alog_rejected_line(NULL, 0, &e);
	cr_assert(e.protocol_unknown && str_is(e.method, NULL));
}

Test(accesslog, json_line_says_the_tls_version_and_cipher_or_dash)
{
	char line[ALOG_LINE_MAX];
	struct alog_entry e = entry();
	json_error_t jerr;
	size_t n;
	json_t *j;

	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	j = json_loadb(line, n, 0, &jerr);
	cr_assert_not_null(j, "%.*s: %s", (int)n, line, jerr.text);
	cr_assert_str_eq(json_string_value(json_object_get(j, "tls")), "-");
	cr_assert_str_eq(json_string_value(json_object_get(j, "tls_cipher")), "-");
	json_decref(j);

	e.tls_version = "TLSv1.3";
	e.tls_cipher = "TLS_AES_128_GCM_SHA256";
	n = alog_format(line, CFG_LOG_JSON, &e, NULL);
	j = json_loadb(line, n, 0, &jerr);
	cr_assert_not_null(j, "%.*s: %s", (int)n, line, jerr.text);
	cr_assert_str_eq(json_string_value(json_object_get(j, "tls")), "TLSv1.3");
	cr_assert_str_eq(json_string_value(json_object_get(j, "tls_cipher")),
			 "TLS_AES_128_GCM_SHA256");
	json_decref(j);
	/* The combined format stays the Apache one: the TLS fields are not in it. */
	n = alog_format(line, CFG_LOG_COMBINED, &e, NULL);
	cr_assert_null(memmem(line, n, "TLSv1.3", 7), "%.*s", (int)n, line);
}
