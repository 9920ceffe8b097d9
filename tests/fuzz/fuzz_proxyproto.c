/* libFuzzer target for proxy/proxyproto.c: verdicts consistent with the bytes and across splits. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "proxyproto.h"

/*
 * Invariants, for any input:
 *   - the verdict is one of: a length <= size and within the version's maximum, 0, -EPROTO,
 *     -EINVAL, -E2BIG;
 *   - a complete header's TLVs lie inside it;
 *   - the verdict depends only on the header's own bytes: the same header with other bytes
 *     after it gives the same length, and every shorter prefix of a complete header says
 *     "need more" (0), as a reader growing its buffer will see it;
 *   - what pp_build writes for the addresses of a header (send_proxy passes them on) parses
 *     back to the same addresses, in either version.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pp_info pi, pj;
	int r = pp_parse(data, size, &pi);

	CHECK(r == 0 || r == -EPROTO || r == -EINVAL || r == -E2BIG || r > 0);
	if (r <= 0)
		return 0;
	CHECK((size_t)r <= size);
	CHECK((uint32_t)r == pi.hdr_len);
	CHECK(pi.version == 1 || pi.version == 2);
	CHECK(r <= (pi.version == 1 ? PP_V1_MAX : PP_V2_MAX));
	CHECK(pi.tlv_n <= PP_TLV_MAX);
	for (uint32_t i = 0; i < pi.tlv_n; i++)
		CHECK(pi.tlv[i].off >= 16 && pi.tlv[i].off + pi.tlv[i].len <= (uint32_t)r);
	if (pi.has_addr)
		CHECK(pi.src.ss_family == pi.dst.ss_family &&
		      (pi.src.ss_family == AF_INET || pi.src.ss_family == AF_INET6));
	CHECK(pp_parse(data, (size_t)r, &pj) == r);
	CHECK(pj.has_addr == pi.has_addr && pj.tlv_n == pi.tlv_n);
	for (size_t i = 0; i < (size_t)r; i++)
		CHECK(pp_parse(data, i, &pj) == 0);
	if (pi.has_addr) {
		uint8_t out[PP_BUILD_MAX];

		for (int v = 1; v <= 2; v++) {
			int n = pp_build(out, sizeof(out), v, (const struct sockaddr *)&pi.src,
					 (const struct sockaddr *)&pi.dst);

			CHECK(n > 0 && pp_parse(out, (size_t)n, &pj) == n && pj.has_addr);
			CHECK(pj.addr_len == pi.addr_len &&
			      !memcmp(&pj.src, &pi.src, pi.addr_len) &&
			      !memcmp(&pj.dst, &pi.dst, pi.addr_len));
		}
	}
	return 0;
}
