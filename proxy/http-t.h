/* HTTP/1.1 message types: parsed heads (spans into the caller's buffer) and body framing state. */
#ifndef CORRAL_HTTP_T_H
#define CORRAL_HTTP_T_H

#include <stdbool.h>
#include <stdint.h>

/* A byte range inside the buffer that was parsed. Never a pointer: the buffer may move. */
struct http_span {
	uint32_t off;
	uint32_t len;
};

struct http_header {
	struct http_span name;
	struct http_span value;
};

enum http_framing {
	HTTP_BODY_NONE = 0, /* no body (requests without CL/TE; HEAD/1xx/204/304 responses) */
	HTTP_BODY_LENGTH,   /* Content-Length: content_length bytes */
	HTTP_BODY_CHUNKED,  /* Transfer-Encoding: chunked */
	HTTP_BODY_CLOSE,    /* responses only: body runs until the upstream closes */
};

/* The limits the parser enforces (from struct cfg_limits). */
struct http_limits {
	uint32_t header_bytes_max; /* whole head, request line included -> 431 (414 if the URI) */
	uint32_t headers_max;	   /* header field count -> 431 */
	uint32_t uri_bytes_max;	   /* request target -> 414 */
	uint64_t body_bytes_max;   /* declared Content-Length above it -> 413 */
};

/*
 * A parsed request head. hdr[] is a caller-provided array of hdr_cap entries (the worker
 * keeps one scratch array sized headers_max); every span points into the parsed buffer.
 */
struct http_req {
	struct http_span method;
	struct http_span
		target; /* origin-form path+query sent upstream ("/" for "*" only with OPTIONS) */
	struct http_span
		host; /* authority to forward as Host (from Host or an absolute-form target) */
	uint8_t version_minor; /* 0 or 1; major is always 1 */
	/* OPTIONS about the server itself ("*", or absolute-form with an empty path): forwarded
	 * as "OPTIONS *" (RFC 9112 3.2.4); target then reads "/" for hashing and logs. */
	bool target_asterisk;
	bool is_head;	      /* HEAD: the response has no body */
	bool is_idempotent;   /* GET HEAD PUT DELETE OPTIONS TRACE */
	bool keep_alive;      /* the client allows reuse after this exchange */
	bool expect_continue; /* Expect: 100-continue */
	bool upgrade;	      /* Connection: upgrade with an Upgrade header: may become a tunnel */
	enum http_framing framing; /* NONE, LENGTH or CHUNKED */
	uint64_t content_length;   /* when framing == LENGTH */
	uint32_t head_len;	   /* bytes of the head including the final CRLF CRLF */
	uint16_t status;	   /* on a parse error: 400, 413, 414, 431, 501, 505 */
	const char *reason;	   /* on a parse error: short static text for logs */
	uint32_t hdr_cap;
	uint32_t nhdr;
	struct http_header *hdr;
};

/* A parsed response head; same conventions as struct http_req. */
struct http_resp {
	uint16_t code; /* 100..599 */
	uint8_t version_minor;
	bool keep_alive;	   /* the upstream allows reuse after this response */
	enum http_framing framing; /* given the request method: HEAD/1xx/204/304 -> NONE */
	uint64_t content_length;
	struct http_span reason_phrase;
	uint32_t head_len;
	const char *reason; /* on a parse error: short static text for logs */
	uint32_t hdr_cap;
	uint32_t nhdr;
	struct http_header *hdr;
};

/* Facts about the client connection that the forwarded request carries. */
struct http_fwd {
	const char *client_ip; /* text form, for X-Forwarded-For */
	const char *proto;     /* "http" */
};

/* Streaming body decoder state (one per direction per exchange). */
struct http_body {
	enum http_framing framing;
	uint64_t remaining; /* LENGTH: bytes left; CHUNKED: bytes left in the current chunk */
	uint64_t total;	    /* payload bytes seen so far */
	uint64_t max;	    /* payload limit (requests: body_bytes_max; 0 = none) */
	uint32_t line_len;  /* bytes of the current chunk-size/trailer line consumed so far */
	uint8_t state;	    /* chunked parser state, private to http.c */
	bool done;
};

#endif
