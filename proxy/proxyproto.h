/* PROXY protocol v1 and v2 header parser (HAProxy's spec): pure, no I/O, no allocation. */
#ifndef CORRAL_PROXYPROTO_H
#define CORRAL_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* v1: "PROXY TCP6 " + two 39-byte addresses + two ports + spaces + CRLF = 107 (the spec's). */
#define PP_V1_MAX 107
/* v2: 16-byte fixed part + 12/36/216-byte addresses + TLVs. Cloud balancers send a few dozen
 * TLV bytes; 4 KiB leaves room for TLS TLVs and bounds what one client can make us buffer. */
#define PP_V2_MAX 4096
/* TLVs kept per header; more is not a real balancer. */
#define PP_TLV_MAX 32

/* v2 TLV types of the spec. */
enum pp_tlv_type {
	PP2_TYPE_ALPN = 0x01,
	PP2_TYPE_AUTHORITY = 0x02,
	PP2_TYPE_CRC32C = 0x03,
	PP2_TYPE_NOOP = 0x04,
	PP2_TYPE_UNIQUE_ID = 0x05,
	PP2_TYPE_SSL = 0x20,
	PP2_TYPE_NETNS = 0x30,
};

struct pp_tlv {
	uint8_t type;
	uint16_t len;
	uint32_t off; /* of the value, from the start of the header */
};

struct pp_info {
	uint8_t version; /* 1 or 2 */
	/*
	 * false: v1 UNKNOWN, v2 LOCAL, or v2 UNSPEC/UNIX addresses. The connection's own
	 * addresses are then the ones to use (the spec says so: health checks of the balancer).
	 */
	bool has_addr;
	struct sockaddr_storage src, dst; /* AF_INET or AF_INET6, ports set */
	socklen_t addr_len;
	uint32_t hdr_len; /* bytes of the header: the HTTP bytes start after them */
	struct pp_tlv tlv[PP_TLV_MAX];
	uint32_t tlv_n;
	bool crc_checked; /* a CRC32C TLV was present and matched */
};

/*
 * Parses a PROXY header at the start of buf (len bytes received so far).
 *   > 0        the header is complete: its length, and *out filled
 *   0          every byte so far is valid, more are needed (len < the header's length)
 *   -EPROTO    not a PROXY header at all (the first bytes match neither signature)
 *   -EINVAL    malformed: a bad field, an address that does not parse, a TLV overrunning
 *              the header, a CRC32C mismatch, a v1 line longer than PP_V1_MAX, ...
 *   -E2BIG     a v2 header longer than PP_V2_MAX, or more than PP_TLV_MAX TLVs
 */
int pp_parse(const uint8_t *buf, size_t len, struct pp_info *out);

/* The first TLV of that type, or NULL. */
const struct pp_tlv *pp_tlv_find(const struct pp_info *pi, uint8_t type);

/* What pp_build writes at most: a v1 TCP6 line (107 bytes and a NUL), a v2 IPv6 header (52). */
#define PP_BUILD_MAX 108

/*
 * Writes a PROXY header of version 1 or 2 for a TCP connection from src to dst into buf (cap
 * bytes, at least PP_BUILD_MAX): its length, -EINVAL for another version, -ENOSPC. src and dst
 * of different families, or not AF_INET/AF_INET6, give v1 "UNKNOWN" / v2 LOCAL: the receiver
 * then uses the connection's own addresses.
 */
int pp_build(uint8_t *buf, size_t cap, int version, const struct sockaddr *src,
	     const struct sockaddr *dst);

/* CRC32C (Castagnoli) of len bytes, as the v2 CRC32C TLV carries it. */
uint32_t pp_crc32c(uint32_t crc, const uint8_t *p, size_t len);

#endif
