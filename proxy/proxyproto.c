/* PROXY protocol v1/v2 header parser (haproxy.org's proxy-protocol.txt): pure, bounded. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxyproto.h"

static const uint8_t PP_V2_SIG[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
				       0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
static const char PP_V1_SIG[6] = { 'P', 'R', 'O', 'X', 'Y', ' ' };

uint32_t pp_crc32c(uint32_t crc, const uint8_t *p, size_t len)
{
	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
	}
	return ~crc;
}

const struct pp_tlv *pp_tlv_find(const struct pp_info *pi, uint8_t type)
{
	for (uint32_t i = 0; i < pi->tlv_n; i++)
		if (pi->tlv[i].type == type)
			return &pi->tlv[i];
	return NULL;
}

/* "0".."65535", digits only, no sign and no leading zero. */
static int pp_port(const char *s, uint16_t *out)
{
	uint32_t v = 0;
	size_t n = strlen(s);

	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint32_t)(s[i] - '0');
	}
	if (v > 65535)
		return -EINVAL;
	*out = (uint16_t)v;
	return 0;
}

static int pp_v1_addr(int fam, const char *ip, const char *port, struct sockaddr_storage *ss)
{
	uint16_t p;

	memset(ss, 0, sizeof(*ss));
	if (pp_port(port, &p) < 0)
		return -EINVAL;
	if (fam == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons(p);
		return inet_pton(AF_INET, ip, &s4->sin_addr) == 1 ? 0 : -EINVAL;
	}
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

	s6->sin6_family = AF_INET6;
	s6->sin6_port = htons(p);
	return inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1 ? 0 : -EINVAL;
}

/* "PROXY TCP4 1.2.3.4 5.6.7.8 1234 80\r\n", "PROXY TCP6 ...", "PROXY UNKNOWN[ ...]\r\n". */
static int pp_v1(const uint8_t *buf, size_t len, struct pp_info *out)
{
	char line[PP_V1_MAX + 1], *f[7], *p;
	size_t end = 0, n = len < PP_V1_MAX ? len : PP_V1_MAX;
	bool found = false;
	int nf = 0, fam;

	/* cppcheck-suppress knownConditionTrueFalse ; it takes len from a caller's short path */
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n' || buf[i] == '\0')
			return -EINVAL; /* a LF without CR, or a NUL: not a v1 line */
		if (buf[i] != '\r')
			continue;
		if (i + 1 == len)
			return 0; /* the LF has not arrived yet */
		if (buf[i + 1] != '\n' || i + 2 > PP_V1_MAX)
			return -EINVAL;
		end = i;
		found = true;
		break;
	}
	if (!found)
		return len >= PP_V1_MAX ? -EINVAL : 0;
	memcpy(line, buf, end);
	line[end] = '\0';
	/* Fields are separated by exactly one space. */
	for (p = line; nf < 7;) {
		f[nf++] = p;
		p = strchr(p, ' ');
		if (!p)
			break;
		*p++ = '\0';
	}
	memset(out, 0, sizeof(*out));
	out->version = 1;
	out->hdr_len = (uint32_t)end + 2;
	if (nf >= 2 && !strcmp(f[1], "UNKNOWN"))
		return (int)out->hdr_len; /* the rest of the line is to be ignored */
	if (nf != 6 || p)
		return -EINVAL;
	if (!strcmp(f[1], "TCP4"))
		fam = AF_INET;
	else if (!strcmp(f[1], "TCP6"))
		fam = AF_INET6;
	else
		return -EINVAL;
	if (pp_v1_addr(fam, f[2], f[4], &out->src) < 0 ||
	    pp_v1_addr(fam, f[3], f[5], &out->dst) < 0)
		return -EINVAL;
	out->has_addr = true;
	out->addr_len = fam == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
	return (int)out->hdr_len;
}

static int pp_v2_tlvs(const uint8_t *buf, uint32_t pos, uint32_t total, struct pp_info *out)
{
	const struct pp_tlv *crc;

	while (pos < total) {
		struct pp_tlv *t;
		uint16_t l;

		if (total - pos < 3)
			return -EINVAL;
		l = (uint16_t)(buf[pos + 1] << 8 | buf[pos + 2]);
		if (total - pos - 3 < l)
			return -EINVAL;
		if (out->tlv_n == PP_TLV_MAX)
			return -E2BIG;
		t = &out->tlv[out->tlv_n++];
		t->type = buf[pos];
		t->len = l;
		t->off = pos + 3;
		pos += 3u + l;
	}
	crc = pp_tlv_find(out, PP2_TYPE_CRC32C);
	if (crc) {
		static const uint8_t zero[4];
		uint32_t want, got;

		if (crc->len != 4)
			return -EINVAL;
		want = (uint32_t)buf[crc->off] << 24 | (uint32_t)buf[crc->off + 1] << 16 |
		       (uint32_t)buf[crc->off + 2] << 8 | buf[crc->off + 3];
		/* Over the whole header with the checksum field itself taken as zero. */
		got = pp_crc32c(0, buf, crc->off);
		got = pp_crc32c(got, zero, 4);
		got = pp_crc32c(got, buf + crc->off + 4, total - crc->off - 4);
		if (got != want)
			return -EINVAL;
		out->crc_checked = true;
	}
	return 0;
}

static int pp_v2(const uint8_t *buf, size_t len, struct pp_info *out)
{
	static const uint32_t asz[4] = { 0, 12, 36, 216 }; /* UNSPEC, INET, INET6, UNIX */
	uint8_t ver, cmd, fam, proto;
	uint32_t total;
	int r;

	if (len < 16)
		return 0;
	ver = buf[12] >> 4;
	cmd = buf[12] & 0xf;
	fam = buf[13] >> 4;
	proto = buf[13] & 0xf;
	total = 16u + (uint32_t)(buf[14] << 8 | buf[15]);
	if (ver != 2 || cmd > 1 || fam > 3 || proto > 2)
		return -EINVAL;
	if (total > PP_V2_MAX)
		return -E2BIG;
	if (len < total)
		return 0;
	memset(out, 0, sizeof(*out));
	out->version = 2;
	out->hdr_len = total;
	/* LOCAL (the balancer's own health check): use the real endpoints, ignore the rest. */
	if (cmd == 0)
		return (int)total;
	if (total - 16 < asz[fam])
		return -EINVAL;
	/* A TCP listener carries stream connections; a datagram family here is a lie. */
	if ((fam == 1 || fam == 2) && proto != 1)
		return -EINVAL;
	if (fam == 1) {
		struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
		struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;

		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, buf + 16, 4);
		memcpy(&d->sin_addr, buf + 20, 4);
		memcpy(&s->sin_port, buf + 24, 2);
		memcpy(&d->sin_port, buf + 26, 2);
		out->addr_len = sizeof(*s);
		out->has_addr = true;
	} else if (fam == 2) {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;

		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, buf + 16, 16);
		memcpy(&d->sin6_addr, buf + 32, 16);
		memcpy(&s->sin6_port, buf + 48, 2);
		memcpy(&d->sin6_port, buf + 50, 2);
		out->addr_len = sizeof(*s);
		out->has_addr = true;
	}
	r = pp_v2_tlvs(buf, 16 + asz[fam], total, out);
	return r < 0 ? r : (int)total;
}

int pp_parse(const uint8_t *buf, size_t len, struct pp_info *out)
{
	size_t n;

	if (len == 0)
		return 0;
	if (buf[0] == PP_V2_SIG[0]) {
		n = len < sizeof(PP_V2_SIG) ? len : sizeof(PP_V2_SIG);
		if (memcmp(buf, PP_V2_SIG, n) != 0)
			return -EPROTO;
		return n < sizeof(PP_V2_SIG) ? 0 : pp_v2(buf, len, out);
	}
	n = len < sizeof(PP_V1_SIG) ? len : sizeof(PP_V1_SIG);
	if (memcmp(buf, PP_V1_SIG, n) != 0)
		return -EPROTO;
	return n < sizeof(PP_V1_SIG) ? 0 : pp_v1(buf, len, out);
}

static bool pp_tcp_pair(const struct sockaddr *src, const struct sockaddr *dst)
{
	return src && dst && src->sa_family == dst->sa_family &&
	       (src->sa_family == AF_INET || src->sa_family == AF_INET6);
}

static int pp_build_v1(uint8_t *buf, size_t cap, const struct sockaddr *src,
		       const struct sockaddr *dst)
{
	char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	uint16_t sp, dp;
	int n;

	if (!pp_tcp_pair(src, dst)) {
		n = snprintf((char *)buf, cap, "PROXY UNKNOWN\r\n");
	} else if (src->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;

		inet_ntop(AF_INET, &a->sin_addr, s, sizeof(s));
		inet_ntop(AF_INET, &b->sin_addr, d, sizeof(d));
		sp = ntohs(a->sin_port);
		dp = ntohs(b->sin_port);
		n = snprintf((char *)buf, cap, "PROXY TCP4 %s %s %u %u\r\n", s, d, sp, dp);
	} else {
		const struct sockaddr_in6 *a = (const void *)src, *b = (const void *)dst;

		inet_ntop(AF_INET6, &a->sin6_addr, s, sizeof(s));
		inet_ntop(AF_INET6, &b->sin6_addr, d, sizeof(d));
		sp = ntohs(a->sin6_port);
		dp = ntohs(b->sin6_port);
		n = snprintf((char *)buf, cap, "PROXY TCP6 %s %s %u %u\r\n", s, d, sp, dp);
	}
	if (n < 0 || (size_t)n >= cap)
		return -ENOSPC;
	return n;
}

static int pp_build_v2(uint8_t *buf, size_t cap, const struct sockaddr *src,
		       const struct sockaddr *dst)
{
	uint16_t alen = 0;
	uint8_t *p = buf + 16;

	if (cap < PP_BUILD_MAX)
		return -ENOSPC;
	memcpy(buf, PP_V2_SIG, sizeof(PP_V2_SIG));
	if (!pp_tcp_pair(src, dst)) {
		buf[12] = 0x20; /* v2, LOCAL: the receiver keeps the connection's addresses */
		buf[13] = 0x00;
	} else if (src->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;

		buf[12] = 0x21; /* v2, PROXY */
		buf[13] = 0x11; /* AF_INET, STREAM */
		memcpy(p, &a->sin_addr, 4);
		memcpy(p + 4, &b->sin_addr, 4);
		memcpy(p + 8, &a->sin_port, 2);
		memcpy(p + 10, &b->sin_port, 2);
		alen = 12;
	} else {
		const struct sockaddr_in6 *a = (const void *)src, *b = (const void *)dst;

		buf[12] = 0x21;
		buf[13] = 0x21; /* AF_INET6, STREAM */
		memcpy(p, &a->sin6_addr, 16);
		memcpy(p + 16, &b->sin6_addr, 16);
		memcpy(p + 32, &a->sin6_port, 2);
		memcpy(p + 34, &b->sin6_port, 2);
		alen = 36;
	}
	buf[14] = (uint8_t)(alen >> 8);
	buf[15] = (uint8_t)alen;
	return 16 + alen;
}

int pp_build(uint8_t *buf, size_t cap, int version, const struct sockaddr *src,
	     const struct sockaddr *dst)
{
	if (version == 1)
		return pp_build_v1(buf, cap, src, dst);
	if (version == 2)
		return pp_build_v2(buf, cap, src, dst);
	return -EINVAL;
}
