/* HTTP/1.1 parsing (llhttp plus corral's stricter checks), canonical re-serialisation, body framing. */
#ifndef CORRAL_HTTP_H
#define CORRAL_HTTP_H

#include <stddef.h>
#include <sys/types.h>
#include "http-t.h"

/*
 * Parses one request head at the start of buf[0..len).
 * Returns the head length (> 0) when a complete, valid head was parsed into *req;
 * -EAGAIN when the head is not complete yet and still within the limits;
 * -EPROTO when the head is invalid or over a limit: req->status holds the status to answer
 * (400, 413, 414, 431, 501, 505) and req->reason a short text. After -EPROTO the connection
 * must be closed once the error is answered.
 * req->hdr and req->hdr_cap must be set by the caller. Pure function: no allocation.
 */
int http_req_parse(struct http_req *req, const char *buf, size_t len,
		   const struct http_limits *lim);

/*
 * Writes the canonical request head to upstream into out[0..cap): request line with the
 * origin-form target and HTTP/1.1, Host first, the client's end-to-end headers, hop-by-hop
 * headers (and those named in Connection) removed, one framing header (Content-Length or
 * Transfer-Encoding: chunked), X-Forwarded-For (appended to the client's), X-Forwarded-Proto,
 * Via: 1.x corral, and Connection: keep-alive (or upgrade for an upgrade request). CRLF ends.
 * buf is the buffer req was parsed from. Returns bytes written, or -ENOSPC.
 */
int http_req_serialize(const struct http_req *req, const char *buf, const struct http_fwd *fwd,
		       char *out, size_t cap);

/*
 * Parses one response head at the start of buf[0..len). req_is_head: the request was HEAD
 * (so the response has no body). Returns the head length, -EAGAIN, or -EPROTO (bad status
 * line, CL with TE, bad CL, control characters, over limits: the upstream connection must not
 * be reused and the client gets 502).
 */
int http_resp_parse(struct http_resp *resp, const char *buf, size_t len,
		    const struct http_limits *lim, bool req_is_head);

/*
 * Writes the canonical response head for the client. client_minor is the client's HTTP
 * version minor; keep_alive says whether corral keeps the client connection after this
 * response (adds "Connection: close" when false). The body framing to the client is
 * returned in *out_framing: LENGTH stays LENGTH; CHUNKED and CLOSE become chunked for an
 * HTTP/1.1 client, close-delimited (CLOSE, and the caller must close) for HTTP/1.0;
 * NONE stays NONE (a HEAD response keeps its Content-Length header). 1xx and 101 heads are
 * written without framing headers. Returns bytes written, or -ENOSPC.
 */
int http_resp_serialize(const struct http_resp *resp, const char *buf, uint8_t client_minor,
			bool keep_alive, bool req_is_head, char *out, size_t cap,
			enum http_framing *out_framing);

/* Body decoding ------------------------------------------------------------------------ */

/* Starts decoding a body of the given framing. max: payload limit, 0 = none. */
void http_body_init(struct http_body *b, enum http_framing f, uint64_t content_length,
		    uint64_t max);

/*
 * Decodes framing in place: consumes bytes from buf[0..len), moves the payload bytes it finds
 * to the front of buf and stores their count in *payload. Returns the bytes consumed (which
 * is len unless the body ended inside buf: then b->done is set and the rest belongs to the
 * next message), or -EPROTO on bad framing (malformed chunk size, extension over 4 KiB,
 * missing CRLF, trailer section over 8 KiB), or -EFBIG when the payload passes b->max.
 * Chunk extensions and trailers are validated and dropped. CLOSE framing never ends here:
 * the caller ends it at EOF. Pure function.
 */
ssize_t http_body_decode(struct http_body *b, char *buf, size_t len, size_t *payload);

/* Writes the chunk-size line for a chunk of n bytes ("%zx\r\n") into out (>= 20 bytes). */
int http_chunk_header(char *out, size_t n);

/*
 * A complete corral-generated response (status line, Content-Type: text/plain,
 * Content-Length, a one-line body, Connection: close when close) into out. Returns its
 * length, or -ENOSPC.
 */
int http_error_response(char *out, size_t cap, int status, bool close);

/* The reason phrase for a status code ("Bad Gateway"), or "Unknown". */
const char *http_status_text(int status);

#endif
