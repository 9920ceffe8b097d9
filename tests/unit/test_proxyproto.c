/* Unit tests for proxy/proxyproto.c: v1 TCP4/TCP6/UNKNOWN, v2 with TLVs and IPv6, LOCAL,
 * CRC32C, and malformed and truncated input (every prefix of a valid header needs more). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>

#include "proxyproto.h"

static const uint8_t SIG[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
				 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static int parse_str(const char *s, struct pp_info *pi)
{
	return pp_parse((const uint8_t *)s, strlen(s), pi);
}

static void ip_of(const struct sockaddr_storage *ss, char *out, size_t n, unsigned *port)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &s->sin_addr, out, (socklen_t)n);
		*port = ntohs(s->sin_port);
	} else {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &s->sin6_addr, out, (socklen_t)n);
		*port = ntohs(s->sin6_port);
	}
}

/* pi says the connection came from src_ip:src_port to dst_ip:dst_port. */
static void assert_addrs(const struct pp_info *pi, const char *src_ip, unsigned src_port,
			 const char *dst_ip, unsigned dst_port)
{
	char ip[64];
	unsigned port;

	ip_of(&pi->src, ip, sizeof(ip), &port);
	cr_assert_str_eq(ip, src_ip);
	cr_assert_eq(port, src_port);
	ip_of(&pi->dst, ip, sizeof(ip), &port);
	cr_assert_str_eq(ip, dst_ip);
	cr_assert_eq(port, dst_port);
}

/* Every proper prefix of a valid header asks for more, never for a verdict. */
static void all_prefixes_need_more(const uint8_t *h, size_t len)
{
	struct pp_info pi;

	for (size_t i = 0; i < len; i++)
		cr_assert_eq(pp_parse(h, i, &pi), 0, "prefix of %zu of %zu bytes", i, len);
}

Test(proxyproto, v1_tcp4)
{
	const char *h = "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
	struct pp_info pi;
	int r = parse_str(h, &pi);

	cr_assert_eq(r, (int)strlen("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n"));
	cr_assert_eq(pi.version, 1);
	cr_assert(pi.has_addr);
	assert_addrs(&pi, "192.0.2.10", 56324, "198.51.100.1", 443);
	all_prefixes_need_more((const uint8_t *)h, (size_t)r);
}

Test(proxyproto, v1_tcp6_and_the_longest_line)
{
	const char *h = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
			"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n";
	/* The spec's worst case, 107 bytes: UNKNOWN followed by the longest TCP6 fields. */
	const char *u = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
			"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n";
	struct pp_info pi;
	char ip[64];
	unsigned port;

	cr_assert_eq(parse_str(h, &pi), (int)strlen(h));
	ip_of(&pi.dst, ip, sizeof(ip), &port);
	cr_assert_str_eq(ip, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe");
	cr_assert_eq(port, 65535);
	cr_assert_eq(pi.src.ss_family, AF_INET6);
	cr_assert_eq(strlen(u), PP_V1_MAX);
	cr_assert_eq(parse_str(u, &pi), PP_V1_MAX);
	cr_assert_eq(parse_str("PROXY TCP6 ::1 ::1 1 0\r\n", &pi), 24);
}

Test(proxyproto, v1_unknown_uses_the_real_addresses)
{
	struct pp_info pi;

	cr_assert_eq(parse_str("PROXY UNKNOWN\r\n", &pi), 15);
	cr_assert_not(pi.has_addr);
	/* Whatever follows UNKNOWN on the line is ignored, as the spec says. */
	cr_assert_eq(parse_str("PROXY UNKNOWN ffff::1 ::1 1 2\r\n", &pi), 31);
	cr_assert_not(pi.has_addr);
}

Test(proxyproto, v1_malformed)
{
	static const char *const bad[] = {
		"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\n",     /* LF without CR */
		"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\rX",    /* CR without LF */
		"PROXY TCP4 192.0.2.10  198.51.100.1 56324 443\r\n",  /* two spaces */
		"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443 \r\n",  /* trailing space */
		"PROXY TCP4 192.0.2.10 198.51.100.1 56324\r\n",	      /* a port missing */
		"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443 x\r\n", /* a field too many */
		"PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n",	      /* bad IPv4 */
		"PROXY TCP4 ::1 ::1 1 2\r\n",			      /* v6 address in TCP4 */
		"PROXY TCP6 127.0.0.1 127.0.0.1 1 2\r\n",	      /* v4 address in TCP6 */
		"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n",	      /* port too big */
		"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n",	      /* leading zero */
		"PROXY TCP4 1.2.3.4 5.6.7.8 -1 80\r\n",		      /* sign */
		"PROXY UDP4 1.2.3.4 5.6.7.8 1 80\r\n",		      /* not TCP */
		"PROXY tcp4 1.2.3.4 5.6.7.8 1 80\r\n",		      /* case matters */
		"PROXY \r\n",
		"PROXY UNKNOWNX\r\n",
	};
	struct pp_info pi;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(parse_str(bad[i], &pi), -EINVAL, "case %zu: %s", i, bad[i]);
}

Test(proxyproto, v1_line_longer_than_the_maximum_is_malformed)
{
	char h[PP_V1_MAX + 8];
	struct pp_info pi;

	memset(h, 'a', sizeof(h));
	memcpy(h, "PROXY UNKNOWN ", 14);
	cr_assert_eq(pp_parse((const uint8_t *)h, PP_V1_MAX - 1, &pi), 0);
	cr_assert_eq(pp_parse((const uint8_t *)h, PP_V1_MAX, &pi), -EINVAL);
	/* CRLF landing right past the limit is too late, too. */
	memcpy(h + PP_V1_MAX - 1, "\r\n", 2);
	cr_assert_eq(pp_parse((const uint8_t *)h, PP_V1_MAX + 1, &pi), -EINVAL);
}

Test(proxyproto, not_a_proxy_header)
{
	struct pp_info pi;

	cr_assert_eq(parse_str("GET / HTTP/1.1\r\n", &pi), -EPROTO);
	cr_assert_eq(parse_str("PROXZ", &pi), -EPROTO);
	cr_assert_eq(parse_str("\r\n\r\nX", &pi), -EPROTO);
	cr_assert_eq(parse_str("P", &pi), 0); /* could still become one */
	cr_assert_eq(pp_parse((const uint8_t *)"", 0, &pi), 0);
}

/* Builds a v2 header: ver_cmd, fam, address block, TLVs; returns its length. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *addr, size_t alen,
		 const uint8_t *tlvs, size_t tlen)
{
	size_t n = 16 + alen + tlen;

	memcpy(out, SIG, 12);
	out[12] = ver_cmd;
	out[13] = fam;
	out[14] = (uint8_t)((alen + tlen) >> 8);
	out[15] = (uint8_t)(alen + tlen);
	if (alen)
		memcpy(out + 16, addr, alen);
	if (tlen)
		memcpy(out + 16 + alen, tlvs, tlen);
	return n;
}

static const uint8_t A4[12] = { 192, 0, 2, 10, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb };

Test(proxyproto, v2_tcp4_with_tlvs)
{
	static const uint8_t tlvs[] = {
		PP2_TYPE_ALPN,
		0,
		2,
		'h',
		'2', /* */
		PP2_TYPE_AUTHORITY,
		0,
		5,
		'a',
		'.',
		'e',
		'x',
		'y',
		PP2_TYPE_NOOP,
		0,
		0, /* empty value */
		0xEA,
		0,
		3,
		1,
		2,
		3, /* a custom type */
	};
	uint8_t h[256];
	size_t n = v2(h, 0x21, 0x11, A4, sizeof(A4), tlvs, sizeof(tlvs));
	struct pp_info pi;
	const struct pp_tlv *t;

	memcpy(h + n, "GET", 3);
	cr_assert_eq(pp_parse(h, n + 3, &pi), (int)n);
	cr_assert_eq(pi.version, 2);
	cr_assert(pi.has_addr);
	assert_addrs(&pi, "192.0.2.10", 56324, "198.51.100.1", 443);
	cr_assert_eq(pi.tlv_n, 4);
	t = pp_tlv_find(&pi, PP2_TYPE_AUTHORITY);
	cr_assert_not_null(t);
	cr_assert_eq(t->len, 5);
	cr_assert(!memcmp(h + t->off, "a.exy", 5));
	cr_assert_eq(pp_tlv_find(&pi, PP2_TYPE_NOOP)->len, 0);
	cr_assert_eq(pp_tlv_find(&pi, 0xEA)->len, 3);
	cr_assert_null(pp_tlv_find(&pi, PP2_TYPE_SSL));
	all_prefixes_need_more(h, n);
}

Test(proxyproto, v2_tcp6)
{
	uint8_t a6[36] = { 0x20, 0x01, 0x0d, 0xb8 }, h[128];
	struct pp_info pi;
	size_t n;

	a6[15] = 1;		      /* src 2001:db8::1 */
	a6[16 + 15] = 2;	      /* dst ::2 */
	a6[32] = 0x30, a6[33] = 0x39; /* 12345 */
	a6[34] = 0x00, a6[35] = 0x50; /* 80 */
	n = v2(h, 0x21, 0x21, a6, sizeof(a6), NULL, 0);
	cr_assert_eq(pp_parse(h, n, &pi), (int)n);
	assert_addrs(&pi, "2001:db8::1", 12345, "::2", 80);
	cr_assert_eq(pi.addr_len, sizeof(struct sockaddr_in6));
	all_prefixes_need_more(h, n);
}

Test(proxyproto, v2_local_and_unspec_use_the_real_addresses)
{
	uint8_t h[64], junk[7] = { 1, 2, 3, 4, 5, 6, 7 };
	struct pp_info pi;
	size_t n;

	/* LOCAL: the balancer's own check; the block is discarded, whatever it holds. */
	n = v2(h, 0x20, 0x00, NULL, 0, NULL, 0);
	cr_assert_eq(pp_parse(h, n, &pi), 16);
	cr_assert_not(pi.has_addr);
	n = v2(h, 0x20, 0x11, junk, sizeof(junk), NULL, 0);
	cr_assert_eq(pp_parse(h, n, &pi), (int)n);
	cr_assert_not(pi.has_addr);
	/* PROXY with an UNSPEC family: accepted, no addresses. */
	n = v2(h, 0x21, 0x00, NULL, 0, NULL, 0);
	cr_assert_eq(pp_parse(h, n, &pi), 16);
	cr_assert_not(pi.has_addr);
}

Test(proxyproto, v2_crc32c)
{
	uint8_t tlvs[] = { PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0 }, h[64];
	struct pp_info pi;
	uint32_t crc;
	size_t n;

	cr_assert_eq(pp_crc32c(0, (const uint8_t *)"123456789", 9), 0xE3069283u);
	n = v2(h, 0x21, 0x11, A4, sizeof(A4), tlvs, sizeof(tlvs));
	crc = pp_crc32c(0, h, n); /* computed with the field zero, as the sender does */
	h[n - 4] = (uint8_t)(crc >> 24), h[n - 3] = (uint8_t)(crc >> 16);
	h[n - 2] = (uint8_t)(crc >> 8), h[n - 1] = (uint8_t)crc;
	cr_assert_eq(pp_parse(h, n, &pi), (int)n);
	cr_assert(pi.crc_checked);
	h[17] ^= 1; /* one flipped bit in the source address */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
}

Test(proxyproto, v2_malformed)
{
	static const uint8_t tlv_over[] = { PP2_TYPE_ALPN, 0, 9, 'h', '2' };
	static const uint8_t tlv_short[] = { PP2_TYPE_ALPN, 0 };
	static const uint8_t crc_len[] = { PP2_TYPE_CRC32C, 0, 2, 0, 0 };
	uint8_t h[PP_V2_MAX + 64], a6[36] = { 0 };
	struct pp_info pi;
	size_t n;

	n = v2(h, 0x11, 0x11, A4, sizeof(A4), NULL, 0); /* version 1 in a v2 header */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x22, 0x11, A4, sizeof(A4), NULL, 0); /* command 2 */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x41, A4, sizeof(A4), NULL, 0); /* family 4 */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x13, A4, sizeof(A4), NULL, 0); /* transport 3 */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x12, A4, sizeof(A4), NULL, 0); /* DGRAM on a TCP listener */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x11, A4, 8, NULL, 0); /* address block shorter than INET's 12 */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x21, a6, sizeof(A4), NULL, 0); /* INET6 with 12 bytes */
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x11, A4, sizeof(A4), tlv_over, sizeof(tlv_over));
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x11, A4, sizeof(A4), tlv_short, sizeof(tlv_short));
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	n = v2(h, 0x21, 0x11, A4, sizeof(A4), crc_len, sizeof(crc_len));
	cr_assert_eq(pp_parse(h, n, &pi), -EINVAL);
	/* A corrupted signature byte is not a PROXY header. */
	n = v2(h, 0x21, 0x11, A4, sizeof(A4), NULL, 0);
	h[7] = 'X';
	cr_assert_eq(pp_parse(h, n, &pi), -EPROTO);
}

Test(proxyproto, v2_bounds)
{
	uint8_t h[PP_V2_MAX + 64] = { 0 }, tlvs[(PP_TLV_MAX + 1) * 3] = { 0 };
	struct pp_info pi;
	size_t n;

	/* Exactly at the limit: accepted (one NOOP TLV filling it). */
	memcpy(h, SIG, 12);
	h[12] = 0x21, h[13] = 0x11;
	h[14] = (uint8_t)((PP_V2_MAX - 16) >> 8), h[15] = (uint8_t)(PP_V2_MAX - 16);
	memcpy(h + 16, A4, sizeof(A4));
	h[28] = PP2_TYPE_NOOP;
	h[29] = (uint8_t)((PP_V2_MAX - 16 - 12 - 3) >> 8);
	h[30] = (uint8_t)(PP_V2_MAX - 16 - 12 - 3);
	cr_assert_eq(pp_parse(h, PP_V2_MAX, &pi), PP_V2_MAX);
	/* One past it: refused as soon as the length field is in. */
	h[15] = (uint8_t)(PP_V2_MAX - 15);
	cr_assert_eq(pp_parse(h, 16, &pi), -E2BIG);
	/* PP_TLV_MAX TLVs are fine, one more is not. */
	for (size_t i = 0; i < PP_TLV_MAX + 1; i++)
		tlvs[i * 3] = PP2_TYPE_NOOP;
	n = v2(h, 0x21, 0x11, A4, sizeof(A4), tlvs, PP_TLV_MAX * 3);
	cr_assert_eq(pp_parse(h, n, &pi), (int)n);
	cr_assert_eq(pi.tlv_n, PP_TLV_MAX);
	n = v2(h, 0x21, 0x11, A4, sizeof(A4), tlvs, sizeof(tlvs));
	cr_assert_eq(pp_parse(h, n, &pi), -E2BIG);
}

static void sa4(struct sockaddr_in *a, const char *ip, uint16_t port)
{
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	inet_pton(AF_INET, ip, &a->sin_addr);
}

static void sa6(struct sockaddr_in6 *a, const char *ip, uint16_t port)
{
	memset(a, 0, sizeof(*a));
	a->sin6_family = AF_INET6;
	a->sin6_port = htons(port);
	inet_pton(AF_INET6, ip, &a->sin6_addr);
}

/* What corral sends (send_proxy) is what its own parser, and the spec, read back. */
Test(proxyproto, build_round_trips)
{
	struct sockaddr_in s4, d4;
	struct sockaddr_in6 s6, d6;
	uint8_t buf[PP_BUILD_MAX];
	struct pp_info pi;
	int n;

	sa4(&s4, "192.0.2.7", 40000);
	sa4(&d4, "198.51.100.1", 443);
	n = pp_build(buf, sizeof(buf), 1, (struct sockaddr *)&s4, (struct sockaddr *)&d4);
	cr_assert_eq(n, (int)strlen("PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n"));
	cr_assert_eq(memcmp(buf, "PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n", (size_t)n), 0);
	cr_assert_eq(pp_parse(buf, (size_t)n, &pi), n);
	assert_addrs(&pi, "192.0.2.7", 40000, "198.51.100.1", 443);

	n = pp_build(buf, sizeof(buf), 2, (struct sockaddr *)&s4, (struct sockaddr *)&d4);
	cr_assert_eq(n, 28);
	cr_assert_eq(memcmp(buf, SIG, 12), 0);
	cr_assert_eq(buf[12], 0x21);
	cr_assert_eq(buf[13], 0x11);
	cr_assert_eq(pp_parse(buf, (size_t)n, &pi), n);
	cr_assert_eq(pi.version, 2);
	assert_addrs(&pi, "192.0.2.7", 40000, "198.51.100.1", 443);

	/* The longest v1 line corral writes fits PP_BUILD_MAX with its NUL. */
	sa6(&s6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535);
	sa6(&d6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65534);
	n = pp_build(buf, sizeof(buf), 1, (struct sockaddr *)&s6, (struct sockaddr *)&d6);
	cr_assert_eq(n, 104); /* the spec's 107 counts a longer form; ours is within it */
	cr_assert_eq(pp_parse(buf, (size_t)n, &pi), n);
	assert_addrs(&pi, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535,
		     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65534);

	sa6(&s6, "2001:db8::5", 1234);
	sa6(&d6, "::1", 80);
	n = pp_build(buf, sizeof(buf), 2, (struct sockaddr *)&s6, (struct sockaddr *)&d6);
	cr_assert_eq(n, 52);
	cr_assert_eq(pp_parse(buf, (size_t)n, &pi), n);
	assert_addrs(&pi, "2001:db8::5", 1234, "::1", 80);

	/* Mixed families cannot be said: UNKNOWN / LOCAL, the receiver keeps its own. */
	n = pp_build(buf, sizeof(buf), 1, (struct sockaddr *)&s4, (struct sockaddr *)&d6);
	cr_assert_eq(pp_parse(buf, (size_t)n, &pi), n);
	cr_assert_not(pi.has_addr);
	n = pp_build(buf, sizeof(buf), 2, (struct sockaddr *)&s4, (struct sockaddr *)&d6);
	cr_assert_eq(n, 16);
	cr_assert_eq(pp_parse(buf, (size_t)n, &pi), n);
	cr_assert_not(pi.has_addr);

	cr_assert_eq(pp_build(buf, sizeof(buf), 3, (struct sockaddr *)&s4, (struct sockaddr *)&d4),
		     -EINVAL);
	cr_assert_eq(pp_build(buf, 20, 1, (struct sockaddr *)&s4, (struct sockaddr *)&d4), -ENOSPC);
}
