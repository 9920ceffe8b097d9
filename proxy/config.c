/* Configuration: loads corral.yaml with libyaml's document API and validates every key. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <grp.h>
#include <pwd.h>
#include <arpa/inet.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <yaml.h>

#include "config.h"
#include "constants.h"
#include "tls.h"

/* A config file larger than this is not a config file; refuse it rather than parse it. */
#define CFG_FILE_BYTES_MAX (1024 * 1024)
/* Longest key path in a message, e.g. "limits.upstream_idle_per_backend". */
#define CFG_KEY_PATH_MAX 96
/* The words of the checks the file and the control commands share (config_check_*). */
#define CFG_MSG_CORE_WEIGHTS_ZERO    "at least one weight must be above 0"
#define CFG_MSG_BACKEND_WEIGHTS_ZERO "every backend has weight 0, so no request could be served"
/*
 * Receive buffer memory per core (buffers_per_core x buffer_bytes) above this is almost
 * certainly a unit mistake; the default is 64 MiB per core.
 */
#define CFG_BUFFER_MEM_PER_CORE_MAX (1ULL << 30)

/* One bounded integer key inside the timeouts or limits mapping. */
struct cfg_num_key {
	const char *name;
	size_t off;  /* offset in struct cfg_timeouts or struct cfg_limits */
	size_t size; /* 4 or 8 bytes */
	uint64_t min;
	uint64_t max;
	bool pow2; /* must also be a power of two */
};

#define NUM32(type, field, lo, hi, p2)                                                             \
	{                                                                                          \
#field, offsetof(struct type, field), sizeof(uint32_t), (lo), (hi), (p2)           \
	}
#define NUM64(type, field, lo, hi, p2)                                                             \
	{                                                                                          \
#field, offsetof(struct type, field), sizeof(uint64_t), (lo), (hi), (p2)           \
	}

/*
 * Bounds. A minimum stops a value so small that corral cannot work (or that is a unit slip,
 * e.g. seconds written as milliseconds); a maximum stops one so large that a single client or
 * a typo can hold resources for hours. docs/config.md lists the same numbers.
 */
static const struct cfg_num_key cfg_timeout_keys[] = {
	NUM32(cfg_timeouts, client_header_ms, 100, 600000, false),
	NUM32(cfg_timeouts, client_idle_ms, 100, 3600000, false),
	NUM32(cfg_timeouts, client_body_ms, 100, 3600000, false),
	NUM32(cfg_timeouts, upstream_connect_ms, 10, 60000, false),
	NUM32(cfg_timeouts, upstream_response_ms, 100, 3600000, false),
	NUM32(cfg_timeouts, upstream_idle_ms, 100, 3600000, false),
	NUM32(cfg_timeouts, tunnel_idle_ms, 1000, 86400000, false),
	NUM32(cfg_timeouts, shutdown_grace_ms, 0, 600000, false),
	NUM32(cfg_timeouts, linger_ms, 0, 60000, false),
	NUM32(cfg_timeouts, backend_park_ms, 0, 600000, false),
	NUM32(cfg_timeouts, upgrade_ready_ms, 100, 25000, false),
};

static const struct cfg_num_key cfg_limit_keys[] = {
	NUM32(cfg_limits, header_bytes_max, 1024, CFG_HEADER_BYTES_CEIL, false),
	NUM32(cfg_limits, headers_max, 8, 1000, false),
	NUM32(cfg_limits, uri_bytes_max, 256, 1048576, false),
	/* At least 1: the HTTP layer reads 0 as "no limit", and every limit here is bounded. */
	NUM64(cfg_limits, body_bytes_max, 1, 1ULL << 40, false),
	NUM32(cfg_limits, connections_per_core, 1, CFG_CONNECTIONS_PER_CORE_MAX, false),
	NUM32(cfg_limits, requests_per_connection, 1, 1000000, false),
	NUM32(cfg_limits, upstream_idle_per_backend, 0, 65536, false),
	NUM32(cfg_limits, upstream_attempts_max, 1, 16, false),
	NUM32(cfg_limits, linger_bytes_max, 0, 16777216, false),
	/* An io_uring provided-buffer ring holds a power of two entries (constants.h). */
	NUM32(cfg_limits, buffers_per_core, 16, CFG_BUFFERS_PER_CORE_MAX, true),
	NUM32(cfg_limits, buffer_bytes, 4096, CFG_BUFFER_BYTES_MAX, true),
	/* Up to the somaxconn deploy/sysctl-corral.conf sets: a deeper queue only hides overload. */
	NUM32(cfg_limits, listen_backlog, 1, 65535, false),
};

static const char *const cfg_balance_names[] = {
	[CFG_BALANCE_ROUND_ROBIN] = "round-robin",
	[CFG_BALANCE_LEAST_CONN] = "least-conn",
	[CFG_BALANCE_HASH_URI] = "hash-uri",
	[CFG_BALANCE_HASH_CLIENT] = "hash-client",
};

/* The steering policies of DESIGN.md; checked here too so that a typo gets a line number. */
static const char *const cfg_steer_policies[] = {
	"hash", "round-robin", "least-conn", "least-load", "power-of-two", "weighted", "cpu-local",
};

static const char *const cfg_log_formats[] = {
	[CFG_LOG_JSON] = "json",
	[CFG_LOG_COMBINED] = "combined",
};

/* Where a listen entry's tls: keys were written, for messages about files read after the walk. */
struct cfg_tls_lines {
	size_t tls;
	size_t protocols, ciphers, ciphersuites;
	size_t cert[CFG_TLS_CERTS_MAX], key[CFG_TLS_CERTS_MAX], entry[CFG_TLS_CERTS_MAX];
};

/* Where a backend entry's tls: keys were written (0 = absent). */
struct cfg_btls_lines {
	size_t tls, verify, ca, sni;
};

/* State of one parse: where messages go, and the lines that checks after the walk cite. */
struct cfg_parse {
	const char *name;
	yaml_document_t *doc;
	struct config *cfg;
	char *err;
	size_t errlen;
	size_t line_root;
	size_t line_listen[CFG_LISTEN_MAX];
	size_t line_backend[CFG_BACKENDS_MAX];
	size_t line_metrics;
	size_t line_weights;	      /* 0: steering.weights not given */
	size_t line_buffers;	      /* line of the later of the two buffer keys, 0 if neither */
	size_t line_health;	      /* line of the top-level health mapping, 0 if absent */
	size_t line_user, line_group; /* 0 if absent */
	size_t line_backend_health[CFG_BACKENDS_MAX]; /* a backend's own health, 0 if absent */
	const char *key_buffers;		      /* and its name */
	struct cfg_tls_lines tls_lines[CFG_LISTEN_MAX];
	struct cfg_btls_lines btls_lines[CFG_BACKENDS_MAX];
};

/* Key handlers return this for a key they do not know; the walker turns it into the error. */
#define CFG_UNKNOWN 1

typedef int (*cfg_pair_fn)(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
			   void *arg);

__attribute__((format(printf, 4, 5))) static int cfg_err(struct cfg_parse *p, size_t line,
							 const char *path, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!p->err || p->errlen == 0)
		return -EINVAL;
	n = snprintf(p->err, p->errlen, "%s:%zu: %s: ", p->name, line, path);
	if (n >= 0 && (size_t)n < p->errlen) {
		va_start(ap, fmt);
		vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static size_t node_line(const yaml_node_t *n)
{
	return n->start_mark.line + 1;
}

static const char *scalar(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

/* A plain empty value, ~ or null: YAML's way of writing "nothing here". */
static bool node_is_null(const yaml_node_t *n)
{
	const char *s;

	if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	s = scalar(n);
	return !strcmp(s, "") || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
	       !strcmp(s, "NULL");
}

/* Key paths for messages; an absurdly long (unknown) key is cut short, which is fine there. */
static void path_join(char *out, const char *parent, const char *key)
{
	int n;

	if (parent[0])
		n = snprintf(out, CFG_KEY_PATH_MAX, "%s.%s", parent, key);
	else
		n = snprintf(out, CFG_KEY_PATH_MAX, "%s", key);
	if (n >= CFG_KEY_PATH_MAX)
		memcpy(out + CFG_KEY_PATH_MAX - 4, "...", 4);
}

static void path_index(char *out, const char *parent, size_t i)
{
	int n = snprintf(out, CFG_KEY_PATH_MAX, "%s[%zu]", parent, i);

	if (n >= CFG_KEY_PATH_MAX)
		memcpy(out + CFG_KEY_PATH_MAX - 4, "...", 4);
}

static yaml_node_t *seq_item(struct cfg_parse *p, const yaml_node_t *seq, size_t i)
{
	return yaml_document_get_node(p->doc, seq->data.sequence.items.start[i]);
}

static size_t seq_len(const yaml_node_t *seq)
{
	return (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
}

/* Copies a string scalar into out (outlen bytes with the NUL); empty allowed if allow_empty. */
static int get_str(struct cfg_parse *p, yaml_node_t *n, const char *path, char *out, size_t outlen,
		   bool allow_empty)
{
	size_t len;

	if (n->type != YAML_SCALAR_NODE || node_is_null(n))
		return cfg_err(p, node_line(n), path, "must be a string");
	len = n->data.scalar.length;
	if (strlen(scalar(n)) != len)
		return cfg_err(p, node_line(n), path, "must not contain a NUL byte");
	if (len == 0 && !allow_empty)
		return cfg_err(p, node_line(n), path, "must not be empty");
	if (len >= outlen)
		return cfg_err(p, node_line(n), path, "must be at most %zu bytes long", outlen - 1);
	memcpy(out, scalar(n), len + 1);
	return 0;
}

/* Picks one of names[] (n of them) and reports the choices when the value is none of them. */
static int get_enum(struct cfg_parse *p, yaml_node_t *n, const char *path, const char *const *names,
		    size_t count, size_t *out)
{
	char list[160] = "";
	size_t i, used = 0;

	if (n->type == YAML_SCALAR_NODE && !node_is_null(n)) {
		for (i = 0; i < count; i++) {
			if (!strcmp(scalar(n), names[i])) {
				*out = i;
				return 0;
			}
		}
	}
	for (i = 0; i < count && used < sizeof(list); i++)
		used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
					 names[i]);
	return cfg_err(p, node_line(n), path, "must be one of %s", list);
}

/*
 * A non-negative decimal integer in [min, max]. Only plain scalars count: a quoted "100" is a
 * string in YAML, and a leading zero, sign, exponent or hex prefix reads differently in
 * different YAML versions, so none of them is accepted.
 */
static int get_uint(struct cfg_parse *p, yaml_node_t *n, const char *path, uint64_t min,
		    uint64_t max, bool pow2, uint64_t *out)
{
	const char *s;
	uint64_t v = 0;
	size_t i;

	if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		goto bad;
	s = scalar(n);
	if (s[0] == '\0' || (s[0] == '0' && s[1] != '\0'))
		goto bad;
	for (i = 0; s[i]; i++) {
		if (s[i] < '0' || s[i] > '9')
			goto bad;
		if (v > (UINT64_MAX - 9) / 10)
			goto bad;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v < min || v > max || (pow2 && (v & (v - 1))))
		goto bad;
	*out = v;
	return 0;
bad:
	return cfg_err(p, node_line(n), path, "must be %s between %" PRIu64 " and %" PRIu64,
		       pow2 ? "a power of two" : "an integer", min, max);
}

/* --- checks shared with the control commands (the same bounds and the same words) -------- */

int config_check_weight(const char *key, uint64_t w, char *err, size_t errlen)
{
	if (w <= CFG_WEIGHT_MAX)
		return 0;
	snprintf(err, errlen, "%s: must be an integer between 0 and %u", key, CFG_WEIGHT_MAX);
	return -EINVAL;
}

static bool cfg_all_zero(const uint32_t *w, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (w[i])
			return false;
	return true;
}

int config_check_core_weights(const uint32_t *w, uint32_t n, char *err, size_t errlen)
{
	if (!cfg_all_zero(w, n))
		return 0;
	snprintf(err, errlen, "steering.weights: " CFG_MSG_CORE_WEIGHTS_ZERO);
	return -EINVAL;
}

int config_check_backend_weights(const uint32_t *w, uint32_t n, char *err, size_t errlen)
{
	if (!cfg_all_zero(w, n))
		return 0;
	snprintf(err, errlen, "backends: " CFG_MSG_BACKEND_WEIGHTS_ZERO);
	return -EINVAL;
}

/*
 * Calls fn for every key of mapping n. Rejects non-string and duplicate keys (libyaml keeps
 * both, and the later silently winning hides mistakes) and keys fn does not know.
 * A null value stands for an empty mapping, so "timeouts:" alone means all defaults.
 */
static int walk_map(struct cfg_parse *p, yaml_node_t *n, const char *path, cfg_pair_fn fn,
		    void *arg)
{
	yaml_node_pair_t *pair, *prev;
	char child[CFG_KEY_PATH_MAX];
	int r;

	if (node_is_null(n))
		return 0;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(p, node_line(n), path[0] ? path : "(top level)",
			       "must be a mapping of keys to values");
	for (pair = n->data.mapping.pairs.start; pair < n->data.mapping.pairs.top; pair++) {
		yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
		yaml_node_t *v = yaml_document_get_node(p->doc, pair->value);

		if (k->type != YAML_SCALAR_NODE || strlen(scalar(k)) != k->data.scalar.length)
			return cfg_err(p, node_line(k), path[0] ? path : "(top level)",
				       "keys must be plain strings");
		path_join(child, path, scalar(k));
		for (prev = n->data.mapping.pairs.start; prev < pair; prev++) {
			yaml_node_t *pk = yaml_document_get_node(p->doc, prev->key);

			if (!strcmp(scalar(pk), scalar(k)))
				return cfg_err(p, node_line(k), child,
					       "duplicate key (first set at line %zu)",
					       node_line(pk));
		}
		r = fn(p, scalar(k), v, child, arg);
		if (r == CFG_UNKNOWN)
			return cfg_err(p, node_line(k), child, "unknown key");
		if (r < 0)
			return r;
	}
	return 0;
}

/* --- addresses --------------------------------------------------------------------------- */

static bool addr_has_letter(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))
			return true;
	return false;
}

/* Parses text into *a; on failure returns -EINVAL and a reason for the operator in *why. */
static int addr_parse(struct cfg_addr *a, const char *text, const char **why)
{
	char host[64];
	const char *port_s, *colon;
	size_t len = strlen(text), hlen, i;
	unsigned long port = 0;
	bool v6;

	memset(a, 0, sizeof(*a));
	*why = NULL;
	if (len == 0) {
		*why = "empty address (expected e.g. 127.0.0.1:8080 or [::1]:8080)";
		return -EINVAL;
	}
	if (len >= sizeof(a->text)) {
		*why = "address too long";
		return -EINVAL;
	}
	if (text[0] == '[') {
		const char *close = strchr(text, ']');

		if (!close) {
			*why = "missing ']' after the IPv6 address (expected e.g. [::1]:8080)";
			return -EINVAL;
		}
		v6 = true;
		hlen = (size_t)(close - text - 1);
		memcpy(host, text + 1, hlen);
		if (close[1] != ':') {
			*why = "missing port (expected e.g. [::1]:8080)";
			return -EINVAL;
		}
		port_s = close + 2;
	} else {
		colon = strrchr(text, ':');
		if (!colon) {
			*why = "missing port (expected e.g. 127.0.0.1:8080)";
			return -EINVAL;
		}
		if (memchr(text, ':', (size_t)(colon - text))) {
			*why = "an IPv6 address needs brackets (expected e.g. [::1]:8080)";
			return -EINVAL;
		}
		v6 = false;
		hlen = (size_t)(colon - text);
		memcpy(host, text, hlen);
		port_s = colon + 1;
	}
	host[hlen] = '\0';
	if (port_s[0] == '\0' || strlen(port_s) > 5) {
		*why = "port must be a number between 0 and 65535";
		return -EINVAL;
	}
	for (i = 0; port_s[i]; i++) {
		if (port_s[i] < '0' || port_s[i] > '9') {
			*why = "port must be a number between 0 and 65535";
			return -EINVAL;
		}
		port = port * 10 + (unsigned long)(port_s[i] - '0');
	}
	if (port > 65535) {
		*why = "port must be a number between 0 and 65535";
		return -EINVAL;
	}
	if (hlen == 0) {
		*why = "missing host (use 0.0.0.0 or [::] for every address)";
		return -EINVAL;
	}
	if (v6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->ss;

		if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) {
			*why = "bad IPv6 address (use a numeric address, e.g. [::1]:8080)";
			return -EINVAL;
		}
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		a->len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&a->ss;

		/* The one name everyone writes; anything else would need DNS at start-up. */
		if (!strcmp(host, "localhost"))
			strcpy(host, "127.0.0.1");
		if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
			*why = addr_has_letter(host, strlen(host))
				       ? "host names are not resolved: use a numeric address "
					 "(e.g. 127.0.0.1:8080)"
				       : "bad IPv4 address (expected e.g. 127.0.0.1:8080)";
			return -EINVAL;
		}
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		a->len = sizeof(*s4);
	}
	memcpy(a->text, text, len + 1);
	return 0;
}

int config_parse_addr(struct cfg_addr *a, const char *text)
{
	const char *why;

	return addr_parse(a, text, &why);
}

static uint16_t addr_port(const struct cfg_addr *a)
{
	if (a->ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

static bool addr_equal(const struct cfg_addr *x, const struct cfg_addr *y)
{
	if (x->ss.ss_family != y->ss.ss_family || addr_port(x) != addr_port(y))
		return false;
	if (x->ss.ss_family == AF_INET6)
		return !memcmp(&((const struct sockaddr_in6 *)&x->ss)->sin6_addr,
			       &((const struct sockaddr_in6 *)&y->ss)->sin6_addr,
			       sizeof(struct in6_addr));
	return ((const struct sockaddr_in *)&x->ss)->sin_addr.s_addr ==
	       ((const struct sockaddr_in *)&y->ss)->sin_addr.s_addr;
}

static int get_addr(struct cfg_parse *p, yaml_node_t *n, const char *path, struct cfg_addr *a)
{
	char text[sizeof(a->text)];
	const char *why;
	int r;

	if (n->type != YAML_SCALAR_NODE || node_is_null(n))
		return cfg_err(p, node_line(n), path,
			       "must be an address string such as \"127.0.0.1:8080\" or "
			       "\"[::1]:8080\"");
	r = get_str(p, n, path, text, sizeof(text), true);
	if (r < 0)
		return r;
	if (addr_parse(a, text, &why) < 0)
		return cfg_err(p, node_line(n), path, "%s: %s", text, why);
	return 0;
}

/* --- sections ---------------------------------------------------------------------------- */

static int parse_instance(struct cfg_parse *p, yaml_node_t *v, const char *path)
{
	char *s = p->cfg->instance;
	size_t i;
	int r;

	r = get_str(p, v, path, s, sizeof(p->cfg->instance), false);
	if (r < 0)
		return r;
	/* It names a folder under /sys/fs/bpf/corral/: no '/', no "..", no hidden names. */
	for (i = 0; s[i]; i++) {
		bool ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
			  (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' ||
			  (s[i] == '.' && i > 0);
		if (!ok)
			return cfg_err(p, node_line(v), path,
				       "may hold only letters, digits, '_', '-' and '.' "
				       "(not first)");
	}
	return 0;
}

static int get_bool(struct cfg_parse *p, yaml_node_t *n, const char *path, bool *out)
{
	if (n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
		if (!strcmp(scalar(n), "true")) {
			*out = true;
			return 0;
		}
		if (!strcmp(scalar(n), "false")) {
			*out = false;
			return 0;
		}
	}
	return cfg_err(p, node_line(n), path, "must be true or false");
}

/* TLS protocol names as operators write them (OpenSSL's spelling). */
static int parse_tls_protocols(struct cfg_parse *p, yaml_node_t *v, const char *path,
			       struct cfg_tls *t)
{
	char item[CFG_KEY_PATH_MAX];
	size_t i;

	if (v->type != YAML_SEQUENCE_NODE || seq_len(v) == 0)
		return cfg_err(p, node_line(v), path,
			       "must be a list of one or more of TLSv1.2, TLSv1.3, e.g. "
			       "[TLSv1.2, TLSv1.3]");
	t->protocols = 0;
	for (i = 0; i < seq_len(v); i++) {
		yaml_node_t *n = seq_item(p, v, i);
		const char *s = n->type == YAML_SCALAR_NODE ? scalar(n) : "";

		path_index(item, path, i);
		if (!strcmp(s, "TLSv1.2"))
			t->protocols |= CFG_TLS_V12;
		else if (!strcmp(s, "TLSv1.3"))
			t->protocols |= CFG_TLS_V13;
		else if (!strcmp(s, "TLSv1") || !strcmp(s, "TLSv1.0") || !strcmp(s, "TLSv1.1") ||
			 !strcmp(s, "SSLv3") || !strcmp(s, "SSLv2"))
			return cfg_err(p, node_line(n), item,
				       "%s is refused (broken or deprecated by RFC 8996); use "
				       "TLSv1.2 and/or TLSv1.3",
				       s);
		else
			return cfg_err(p, node_line(n), item,
				       "unknown protocol \"%s\" (must be TLSv1.2 or TLSv1.3)", s);
	}
	return 0;
}

struct tls_cert_arg {
	struct cfg_tls_cert *c;
	struct cfg_tls_lines *lines;
	uint32_t idx;
};

static int tls_cert_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
			 void *arg)
{
	struct tls_cert_arg *a = arg;

	if (!strcmp(key, "cert")) {
		a->lines->cert[a->idx] = node_line(v);
		return get_str(p, v, path, a->c->cert, sizeof(a->c->cert), false);
	}
	if (!strcmp(key, "key")) {
		a->lines->key[a->idx] = node_line(v);
		return get_str(p, v, path, a->c->key, sizeof(a->c->key), false);
	}
	return CFG_UNKNOWN;
}

static int parse_tls_certs(struct cfg_parse *p, yaml_node_t *v, const char *path, struct cfg_tls *t,
			   struct cfg_tls_lines *lines)
{
	char item[CFG_KEY_PATH_MAX], sub[CFG_KEY_PATH_MAX];
	size_t i;
	int r;

	if (v->type != YAML_SEQUENCE_NODE || seq_len(v) == 0)
		return cfg_err(p, node_line(v), path,
			       "must be a list of one or more { cert: FILE, key: FILE } (the first "
			       "is the default)");
	if (seq_len(v) > CFG_TLS_CERTS_MAX)
		return cfg_err(p, node_line(v), path, "at most %d certificates are allowed",
			       CFG_TLS_CERTS_MAX);
	for (i = 0; i < seq_len(v); i++) {
		yaml_node_t *n = seq_item(p, v, i);
		struct tls_cert_arg a = { &t->certs[i], lines, (uint32_t)i };

		path_index(item, path, i);
		if (n->type != YAML_MAPPING_NODE)
			return cfg_err(p, node_line(n), item,
				       "must be a mapping such as { cert: /etc/corral/a.pem, key: "
				       "/etc/corral/a.key }");
		lines->entry[i] = node_line(n);
		r = walk_map(p, n, item, tls_cert_pair, &a);
		if (r < 0)
			return r;
		if (!t->certs[i].cert[0] || !t->certs[i].key[0]) {
			path_join(sub, item, t->certs[i].cert[0] ? "key" : "cert");
			return cfg_err(p, node_line(n), sub, "is required");
		}
	}
	t->certs_n = (uint32_t)seq_len(v);
	return 0;
}

struct tls_arg {
	struct cfg_tls *t;
	struct cfg_tls_lines *lines;
};

static int tls_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
		    void *arg)
{
	struct tls_arg *a = arg;

	if (!strcmp(key, "certificates"))
		return parse_tls_certs(p, v, path, a->t, a->lines);
	if (!strcmp(key, "protocols")) {
		a->lines->protocols = node_line(v);
		return parse_tls_protocols(p, v, path, a->t);
	}
	if (!strcmp(key, "ciphers")) {
		a->lines->ciphers = node_line(v);
		return get_str(p, v, path, a->t->ciphers, sizeof(a->t->ciphers), false);
	}
	if (!strcmp(key, "ciphersuites")) {
		a->lines->ciphersuites = node_line(v);
		return get_str(p, v, path, a->t->ciphersuites, sizeof(a->t->ciphersuites), false);
	}
	if (!strcmp(key, "session_tickets"))
		return get_bool(p, v, path, &a->t->session_tickets);
	return CFG_UNKNOWN;
}

static int parse_tls(struct cfg_parse *p, yaml_node_t *v, const char *path, struct cfg_tls *t,
		     struct cfg_tls_lines *lines)
{
	struct tls_arg a = { t, lines };
	char sub[CFG_KEY_PATH_MAX];
	int r;

	if (v->type != YAML_MAPPING_NODE)
		return cfg_err(p, node_line(v), path,
			       "must be a mapping such as { certificates: [{ cert: FILE, key: "
			       "FILE }] }");
	t->on = true;
	t->session_tickets = true;
	t->protocols = CFG_TLS_V12 | CFG_TLS_V13;
	lines->tls = node_line(v);
	r = walk_map(p, v, path, tls_pair, &a);
	if (r < 0)
		return r;
	if (t->certs_n == 0) {
		path_join(sub, path, "certificates");
		return cfg_err(p, node_line(v), sub, "is required when tls is given");
	}
	return 0;
}

/* One listen entry written as a mapping: the address and its per-listener options. */
struct listen_arg {
	struct cfg_addr *a;
	struct cfg_tls *tls;
	struct cfg_tls_lines *lines;
	bool *pp;
	bool has_addr;
};

static int listen_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
		       void *arg)
{
	struct listen_arg *la = arg;

	if (!strcmp(key, "address")) {
		la->has_addr = true;
		return get_addr(p, v, path, la->a);
	}
	if (!strcmp(key, "tls"))
		return parse_tls(p, v, path, la->tls, la->lines);
	if (!strcmp(key, "proxy_protocol"))
		return get_bool(p, v, path, la->pp);
	return CFG_UNKNOWN;
}

static int add_listen(struct cfg_parse *p, yaml_node_t *n, const char *path)
{
	struct config *cfg = p->cfg;
	char sub[CFG_KEY_PATH_MAX];
	struct cfg_addr *a;
	uint32_t i;
	int r;

	if (cfg->listen_n == CFG_LISTEN_MAX)
		return cfg_err(p, node_line(n), path, "at most %d listen addresses are allowed",
			       CFG_LISTEN_MAX);
	a = &cfg->listen[cfg->listen_n];
	memset(&cfg->listen_tls[cfg->listen_n], 0, sizeof(cfg->listen_tls[0]));
	cfg->listen_pp[cfg->listen_n] = false;
	if (n->type == YAML_MAPPING_NODE) {
		/* { address: ..., tls: {...}, proxy_protocol: bool }: a plain string is neither. */
		struct listen_arg la = { a, &cfg->listen_tls[cfg->listen_n],
					 &p->tls_lines[cfg->listen_n],
					 &cfg->listen_pp[cfg->listen_n], false };

		r = walk_map(p, n, path, listen_pair, &la);
		if (r == 0 && !la.has_addr) {
			path_join(sub, path, "address");
			r = cfg_err(p, node_line(n), sub, "is required");
		}
	} else {
		r = get_addr(p, n, path, a);
	}
	if (r < 0)
		return r;
	/* Port 0 twice is two different kernel-chosen ports, not a duplicate. */
	for (i = 0; i < cfg->listen_n && addr_port(a) != 0; i++)
		if (addr_equal(a, &cfg->listen[i]))
			return cfg_err(p, node_line(n), path,
				       "duplicate listen address %s (first at line %zu)", a->text,
				       p->line_listen[i]);
	p->line_listen[cfg->listen_n++] = node_line(n);
	return 0;
}

static int parse_listen(struct cfg_parse *p, yaml_node_t *v, const char *path)
{
	char item[CFG_KEY_PATH_MAX];
	size_t i;
	int r;

	if (v->type == YAML_SCALAR_NODE && !node_is_null(v))
		return add_listen(p, v, path);
	if (v->type != YAML_SEQUENCE_NODE || seq_len(v) == 0)
		return cfg_err(p, node_line(v), path,
			       "must be a list of one or more addresses, e.g. "
			       "[\"127.0.0.1:8080\"]");
	for (i = 0; i < seq_len(v); i++) {
		path_index(item, path, i);
		r = add_listen(p, seq_item(p, v, i), item);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The CPUs this process may run on: "all" means these, and a listed core must be one. */
static int usable_cpus(cpu_set_t *set)
{
	long n, i;

	CPU_ZERO(set);
	if (sched_getaffinity(0, sizeof(*set), set) == 0)
		return 0;
	/* More CPUs than a cpu_set_t holds, or no affinity support: every online CPU then. */
	n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	for (i = 0; i < n && i < CPU_SETSIZE; i++)
		CPU_SET((int)i, set);
	return 0;
}

static void cpus_text(const cpu_set_t *set, char *out, size_t outlen)
{
	size_t used = 0;
	int c = 0, start;

	out[0] = '\0';
	while (c < CPU_SETSIZE && used < outlen) {
		if (!CPU_ISSET(c, set)) {
			c++;
			continue;
		}
		start = c;
		while (c + 1 < CPU_SETSIZE && CPU_ISSET(c + 1, set))
			c++;
		if (start == c)
			used += (size_t)snprintf(out + used, outlen - used, "%s%d", used ? "," : "",
						 start);
		else
			used += (size_t)snprintf(out + used, outlen - used, "%s%d-%d",
						 used ? "," : "", start, c);
		c++;
	}
}

static void cores_all(struct config *cfg)
{
	cpu_set_t set;
	int c;

	usable_cpus(&set);
	cfg->cores_n = 0;
	for (c = 0; c < CPU_SETSIZE && cfg->cores_n < CFG_CORES_MAX; c++)
		if (CPU_ISSET(c, &set))
			cfg->cores[cfg->cores_n++] = (uint32_t)c;
	if (cfg->cores_n == 0)
		cfg->cores[cfg->cores_n++] = 0;
}

static int parse_cores(struct cfg_parse *p, yaml_node_t *v, const char *path)
{
	struct config *cfg = p->cfg;
	char item[CFG_KEY_PATH_MAX], usable[128];
	cpu_set_t set;
	uint64_t c;
	size_t i;
	int r;

	if (v->type == YAML_SCALAR_NODE && !strcmp(scalar(v), "all")) {
		cores_all(cfg);
		return 0;
	}
	if (v->type != YAML_SEQUENCE_NODE || seq_len(v) == 0)
		return cfg_err(p, node_line(v), path,
			       "must be \"all\" or a list of one or more CPU numbers, e.g. [0, 1]");
	if (seq_len(v) > CFG_CORES_MAX)
		return cfg_err(p, node_line(v), path, "at most %d cores are allowed",
			       CFG_CORES_MAX);
	usable_cpus(&set);
	cfg->cores_n = 0;
	for (i = 0; i < seq_len(v); i++) {
		yaml_node_t *n = seq_item(p, v, i);

		path_index(item, path, i);
		r = get_uint(p, n, item, 0, CFG_CORES_MAX - 1, false, &c);
		if (r < 0)
			return r;
		if (!CPU_ISSET((int)c, &set)) {
			cpus_text(&set, usable, sizeof(usable));
			return cfg_err(p, node_line(n), item,
				       "CPU %" PRIu64 " is not online or not allowed for this "
				       "process (usable CPUs: %s)",
				       c, usable);
		}
		/*
		 * A CPU listed twice gets two workers that share it: not what production wants,
		 * but it lets a 2-core machine run (and test) a 4-worker layout.
		 */
		cfg->cores[cfg->cores_n++] = (uint32_t)c;
	}
	return 0;
}

static int workers_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
			void *arg)
{
	if (!strcmp(key, "cores"))
		return parse_cores(p, v, path);
	return CFG_UNKNOWN;
}

/* "200-399", "200" or 200: the statuses that pass a health check. */
static int get_expect(struct cfg_parse *p, yaml_node_t *n, const char *path, struct cfg_health *h)
{
	unsigned lo, hi;
	char tail;
	const char *s;

	if (n->type != YAML_SCALAR_NODE || node_is_null(n))
		goto bad;
	s = scalar(n);
	if (sscanf(s, "%3u-%3u%c", &lo, &hi, &tail) == 2 && strlen(s) == 7) {
		/* a range */
	} else if (sscanf(s, "%3u%c", &lo, &tail) == 1 && strlen(s) == 3) {
		hi = lo;
	} else {
		goto bad;
	}
	if (lo < 100 || hi > 599 || lo > hi)
		goto bad;
	h->expect_lo = (uint16_t)lo;
	h->expect_hi = (uint16_t)hi;
	return 0;
bad:
	return cfg_err(p, node_line(n), path,
		       "must be a status or a range of statuses between 100 and 599, e.g. "
		       "\"200-399\" or 204");
}

static int health_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
		       void *arg)
{
	static const struct {
		const char *name;
		size_t off;
		uint64_t min, max;
		uint32_t bit;
	} nums[] = {
		/* 100 ms: faster than that is load on the backend, not health checking. */
		{ "interval_ms", offsetof(struct cfg_health, interval_ms), 100, 3600000,
		  CFG_HK_INTERVAL },
		{ "timeout_ms", offsetof(struct cfg_health, timeout_ms), 10, 600000,
		  CFG_HK_TIMEOUT },
		{ "rise", offsetof(struct cfg_health, rise), 1, 100, CFG_HK_RISE },
		{ "fall", offsetof(struct cfg_health, fall), 1, 100, CFG_HK_FALL },
		{ "slow_start_ms", offsetof(struct cfg_health, slow_start_ms), 0, 3600000,
		  CFG_HK_SLOW_START },
	};
	struct cfg_health *h = arg;
	uint64_t val;
	size_t i;
	int r;

	if (!strcmp(key, "path")) {
		r = get_str(p, v, path, h->path, sizeof(h->path), false);
		if (r == 0 && h->path[0] != '/')
			return cfg_err(p, node_line(v), path, "must start with '/'");
		for (i = 0; r == 0 && h->path[i]; i++)
			if ((unsigned char)h->path[i] <= ' ' || h->path[i] == 0x7f)
				return cfg_err(p, node_line(v), path,
					       "must not contain spaces or control characters");
		h->set |= CFG_HK_PATH;
		return r;
	}
	if (!strcmp(key, "host")) {
		r = get_str(p, v, path, h->host, sizeof(h->host), false);
		for (i = 0; r == 0 && h->host[i]; i++)
			if ((unsigned char)h->host[i] <= ' ' || h->host[i] == 0x7f)
				return cfg_err(p, node_line(v), path,
					       "must not contain spaces or control characters");
		h->set |= CFG_HK_HOST;
		return r;
	}
	if (!strcmp(key, "expect")) {
		r = get_expect(p, v, path, h);
		h->set |= CFG_HK_EXPECT;
		return r;
	}
	for (i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		if (strcmp(key, nums[i].name))
			continue;
		r = get_uint(p, v, path, nums[i].min, nums[i].max, false, &val);
		if (r == 0) {
			*(uint32_t *)((char *)h + nums[i].off) = (uint32_t)val;
			h->set |= nums[i].bit;
		}
		return r;
	}
	return CFG_UNKNOWN;
}

static int parse_health(struct cfg_parse *p, yaml_node_t *v, const char *path, struct cfg_health *h)
{
	if (v->type != YAML_MAPPING_NODE && !node_is_null(v))
		return cfg_err(p, node_line(v), path,
			       "must be a mapping such as { path: /healthz, interval_ms: 2000 }");
	h->on = true;
	return walk_map(p, v, path, health_pair, h);
}

/* A backend's health: its own keys, then the top-level ones, then the defaults. */
static void health_merge(struct cfg_health *b, const struct cfg_health *top)
{
	struct cfg_health out = *top;

	out.on = b->on || top->on;
	if (b->set & CFG_HK_PATH)
		memcpy(out.path, b->path, sizeof(out.path));
	if (b->set & CFG_HK_HOST)
		memcpy(out.host, b->host, sizeof(out.host));
	if (b->set & CFG_HK_INTERVAL)
		out.interval_ms = b->interval_ms;
	if (b->set & CFG_HK_TIMEOUT)
		out.timeout_ms = b->timeout_ms;
	if (b->set & CFG_HK_RISE)
		out.rise = b->rise;
	if (b->set & CFG_HK_FALL)
		out.fall = b->fall;
	if (b->set & CFG_HK_SLOW_START)
		out.slow_start_ms = b->slow_start_ms;
	if (b->set & CFG_HK_EXPECT) {
		out.expect_lo = b->expect_lo;
		out.expect_hi = b->expect_hi;
	}
	out.set = b->set | top->set;
	*b = out;
}

/*
 * A backend's tls.sni: a host name (RFC 1123 labels of letters, digits and '-', 1..63 each),
 * never an address literal (RFC 6066 3: SNI carries host names only).
 */
static const char *sni_why(const char *s)
{
	struct in6_addr a6;
	size_t label = 0;

	if (inet_pton(AF_INET, s, &a6) == 1 || inet_pton(AF_INET6, s, &a6) == 1)
		return "is an IP address; SNI carries host names only (leave sni out to verify the "
		       "certificate against the backend's address)";
	for (; *s; s++) {
		if (*s == '.') {
			if (label == 0 || s[-1] == '-')
				return "is not a host name (an empty label, or one ending in '-')";
			label = 0;
			continue;
		}
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-'))
			return "is not a host name (letters, digits, '-' and '.' only)";
		if ((label == 0 && *s == '-') || ++label > 63)
			return "is not a host name (a label starts with '-' or is over 63 "
			       "characters)";
	}
	if (label == 0 || s[-1] == '-')
		return "is not a host name (an empty label, or one ending in '-')";
	return NULL;
}

static int btls_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
		     void *arg)
{
	struct cfg_backend *b = arg;
	struct cfg_btls_lines *ln = &p->btls_lines[b - p->cfg->backends];
	const char *why;
	int r;

	if (!strcmp(key, "verify")) {
		ln->verify = node_line(v);
		return get_bool(p, v, path, &b->tls.verify);
	}
	if (!strcmp(key, "ca")) {
		ln->ca = node_line(v);
		return get_str(p, v, path, b->tls.ca, sizeof(b->tls.ca), false);
	}
	if (!strcmp(key, "sni")) {
		ln->sni = node_line(v);
		r = get_str(p, v, path, b->tls.sni, sizeof(b->tls.sni), false);
		why = r == 0 ? sni_why(b->tls.sni) : NULL;
		if (why)
			return cfg_err(p, node_line(v), path, "\"%s\" %s", b->tls.sni, why);
		return r;
	}
	return CFG_UNKNOWN;
}

/*
 * A backend entry's tls: { verify, ca, sni }. verify defaults to true and then needs ca; sni
 * defaults to the host name the address was written with (only "localhost" can be one).
 */
static int parse_backend_tls(struct cfg_parse *p, yaml_node_t *v, const char *path,
			     struct cfg_backend *b)
{
	struct cfg_btls_lines *ln = &p->btls_lines[b - p->cfg->backends];
	char sub[CFG_KEY_PATH_MAX];
	int r;

	if (v->type != YAML_MAPPING_NODE)
		return cfg_err(p, node_line(v), path,
			       "must be a mapping such as { verify: true, ca: /etc/corral/ca.pem, "
			       "sni: backend.internal }");
	b->tls.on = true;
	b->tls.verify = true;
	ln->tls = node_line(v);
	r = walk_map(p, v, path, btls_pair, b);
	if (r < 0)
		return r;
	if (b->tls.verify && !b->tls.ca[0]) {
		path_join(sub, path, "ca");
		return cfg_err(p, node_line(v), sub,
			       "is required when verify is true (a PEM file of the CA certificates "
			       "the backend's certificate must chain to; verify: false accepts any "
			       "certificate)");
	}
	if (!b->tls.verify && b->tls.ca[0]) {
		path_join(sub, path, "ca");
		return cfg_err(p, ln->ca, sub,
			       "is not used when verify is false (remove it, or set verify: true)");
	}
	return 0;
}

/* The default tls.sni: the address's host when it was written as a name. */
static void backend_tls_default_sni(struct cfg_backend *b)
{
	const char *colon = strrchr(b->addr.text, ':');
	size_t n = colon ? (size_t)(colon - b->addr.text) : 0;

	if (!b->tls.on || b->tls.sni[0] || n == 0 || n >= sizeof(b->tls.sni) ||
	    b->addr.text[0] == '[' || !addr_has_letter(b->addr.text, n))
		return;
	memcpy(b->tls.sni, b->addr.text, n);
	b->tls.sni[n] = 0;
}

static int backend_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
			void *arg)
{
	struct cfg_backend *b = arg;
	uint64_t w;
	int r;

	if (!strcmp(key, "address"))
		return get_addr(p, v, path, &b->addr);
	if (!strcmp(key, "weight")) {
		r = get_uint(p, v, path, 0, CFG_WEIGHT_MAX, false, &w);
		if (r == 0)
			b->weight = (uint32_t)w;
		return r;
	}
	if (!strcmp(key, "send_proxy")) {
		const char *sv = v->type == YAML_SCALAR_NODE ? scalar(v) : "";

		if (!strcmp(sv, "v1") || !strcmp(sv, "v2")) {
			b->send_proxy = (uint8_t)(sv[1] - '0');
			return 0;
		}
		return cfg_err(p, node_line(v), path,
			       "must be v1 or v2 (the PROXY protocol version)");
	}
	if (!strcmp(key, "health")) {
		p->line_backend_health[b - p->cfg->backends] = node_line(v);
		return parse_health(p, v, path, &b->health);
	}
	if (!strcmp(key, "tls"))
		return parse_backend_tls(p, v, path, b);
	return CFG_UNKNOWN;
}

static int add_backend(struct cfg_parse *p, yaml_node_t *n, const char *path)
{
	struct config *cfg = p->cfg;
	struct cfg_backend *b;
	char sub[CFG_KEY_PATH_MAX];
	uint32_t i;
	int r;

	if (cfg->backends_n == CFG_BACKENDS_MAX)
		return cfg_err(p, node_line(n), path, "at most %d backends are allowed",
			       CFG_BACKENDS_MAX);
	b = &cfg->backends[cfg->backends_n];
	memset(b, 0, sizeof(*b));
	b->weight = 1;
	p->line_backend_health[cfg->backends_n] = 0;
	memset(&p->btls_lines[cfg->backends_n], 0, sizeof(p->btls_lines[0]));
	if (n->type == YAML_SCALAR_NODE && !node_is_null(n)) {
		/* Shorthand: "- 127.0.0.1:9000" is { address: 127.0.0.1:9000, weight: 1 }. */
		r = get_addr(p, n, path, &b->addr);
	} else if (n->type == YAML_MAPPING_NODE) {
		r = walk_map(p, n, path, backend_pair, b);
		if (r == 0 && b->addr.len == 0) {
			path_join(sub, path, "address");
			r = cfg_err(p, node_line(n), sub, "is required");
		}
	} else {
		r = cfg_err(p, node_line(n), path,
			    "must be a mapping such as { address: \"127.0.0.1:9000\", weight: 1 }");
	}
	if (r < 0)
		return r;
	backend_tls_default_sni(b);
	if (addr_port(&b->addr) == 0)
		return cfg_err(p, node_line(n), path,
			       "%s: port 0 cannot be connected to (use 1..65535)", b->addr.text);
	for (i = 0; i < cfg->backends_n; i++)
		if (addr_equal(&b->addr, &cfg->backends[i].addr))
			return cfg_err(p, node_line(n), path,
				       "duplicate backend %s (first at line %zu)", b->addr.text,
				       p->line_backend[i]);
	p->line_backend[cfg->backends_n++] = node_line(n);
	return 0;
}

static int parse_backends(struct cfg_parse *p, yaml_node_t *v, const char *path)
{
	char item[CFG_KEY_PATH_MAX];
	size_t i;
	int r;

	if (v->type != YAML_SEQUENCE_NODE || seq_len(v) == 0)
		return cfg_err(p, node_line(v), path,
			       "must be a list of one or more backends, e.g. "
			       "[{ address: \"127.0.0.1:9000\" }]");
	for (i = 0; i < seq_len(v); i++) {
		path_index(item, path, i);
		r = add_backend(p, seq_item(p, v, i), item);
		if (r < 0)
			return r;
	}
	return 0;
}

static int num_pair(struct cfg_parse *p, const struct cfg_num_key *keys, size_t count, void *base,
		    const char *key, yaml_node_t *v, const char *path)
{
	const struct cfg_num_key *k;
	uint64_t val;
	int r;

	for (k = keys; k < keys + count; k++) {
		if (strcmp(key, k->name))
			continue;
		r = get_uint(p, v, path, k->min, k->max, k->pow2, &val);
		if (r < 0)
			return r;
		if (k->size == sizeof(uint64_t))
			*(uint64_t *)((char *)base + k->off) = val;
		else
			*(uint32_t *)((char *)base + k->off) = (uint32_t)val;
		return 0;
	}
	return CFG_UNKNOWN;
}

static int timeouts_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
			 void *arg)
{
	return num_pair(p, cfg_timeout_keys, sizeof(cfg_timeout_keys) / sizeof(cfg_timeout_keys[0]),
			&p->cfg->timeouts, key, v, path);
}

static int limits_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
		       void *arg)
{
	int r = num_pair(p, cfg_limit_keys, sizeof(cfg_limit_keys) / sizeof(cfg_limit_keys[0]),
			 &p->cfg->limits, key, v, path);

	if (r == 0 && (!strcmp(key, "buffers_per_core") || !strcmp(key, "buffer_bytes"))) {
		p->line_buffers = node_line(v);
		p->key_buffers = !strcmp(key, "buffer_bytes") ? "limits.buffer_bytes"
							      : "limits.buffers_per_core";
	}
	return r;
}

static int parse_weights(struct cfg_parse *p, yaml_node_t *v, const char *path)
{
	struct cfg_steering *st = &p->cfg->steering;
	char item[CFG_KEY_PATH_MAX];
	uint64_t w, sum = 0;
	size_t i;
	int r;

	if (v->type != YAML_SEQUENCE_NODE || seq_len(v) == 0)
		return cfg_err(p, node_line(v), path,
			       "must be a list of one weight per worker core, e.g. [3, 1]");
	if (seq_len(v) > CFG_CORES_MAX)
		return cfg_err(p, node_line(v), path, "at most %d weights are allowed",
			       CFG_CORES_MAX);
	for (i = 0; i < seq_len(v); i++) {
		path_index(item, path, i);
		r = get_uint(p, seq_item(p, v, i), item, 0, CFG_WEIGHT_MAX, false, &w);
		if (r < 0)
			return r;
		st->weights[i] = (uint32_t)w;
		sum += w;
	}
	if (sum == 0)
		return cfg_err(p, node_line(v), path, CFG_MSG_CORE_WEIGHTS_ZERO);
	st->weights_n = (uint32_t)seq_len(v);
	p->line_weights = node_line(v);
	return 0;
}

static int steering_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
			 void *arg)
{
	struct cfg_steering *st = &p->cfg->steering;
	size_t i;
	int r;

	if (!strcmp(key, "policy")) {
		r = get_enum(p, v, path, cfg_steer_policies,
			     sizeof(cfg_steer_policies) / sizeof(cfg_steer_policies[0]), &i);
		if (r == 0)
			snprintf(st->policy, sizeof(st->policy), "%s", cfg_steer_policies[i]);
		return r;
	}
	if (!strcmp(key, "weights"))
		return parse_weights(p, v, path);
	return CFG_UNKNOWN;
}

static int admin_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
		      void *arg)
{
	struct cfg_admin *ad = &p->cfg->admin;
	struct sockaddr_un sun;
	int r;

	if (!strcmp(key, "socket")) {
		/* "" turns it off; otherwise it must fit sun_path, which is shorter than a path. */
		return get_str(p, v, path, ad->socket, sizeof(sun.sun_path), true);
	}
	if (!strcmp(key, "metrics")) {
		if (node_is_null(v) || (v->type == YAML_SCALAR_NODE && scalar(v)[0] == '\0')) {
			ad->metrics_on = false;
			return 0;
		}
		r = get_addr(p, v, path, &ad->metrics);
		if (r == 0) {
			ad->metrics_on = true;
			p->line_metrics = node_line(v);
		}
		return r;
	}
	return CFG_UNKNOWN;
}

static int access_log_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
			   void *arg)
{
	struct cfg_access_log *al = &p->cfg->access_log;
	size_t i;
	int r;

	if (!strcmp(key, "path"))
		return get_str(p, v, path, al->path, sizeof(al->path), false);
	if (!strcmp(key, "format")) {
		r = get_enum(p, v, path, cfg_log_formats,
			     sizeof(cfg_log_formats) / sizeof(cfg_log_formats[0]), &i);
		if (r == 0)
			al->format = (enum cfg_log_format)i;
		return r;
	}
	return CFG_UNKNOWN;
}

static int parse_access_log(struct cfg_parse *p, yaml_node_t *v, const char *path)
{
	struct cfg_access_log *al = &p->cfg->access_log;
	char sub[CFG_KEY_PATH_MAX];
	int r;

	if (node_is_null(v))
		return 0; /* written but empty: off, as when absent */
	if (v->type != YAML_MAPPING_NODE)
		return cfg_err(p, node_line(v), path,
			       "must be a mapping such as { path: /var/log/corral/access.log, "
			       "format: json }");
	r = walk_map(p, v, path, access_log_pair, NULL);
	if (r < 0)
		return r;
	if (al->path[0] == '\0') {
		path_join(sub, path, "path");
		return cfg_err(p, node_line(v), sub, "is required when access_log is given");
	}
	al->on = true;
	return 0;
}

static int top_pair(struct cfg_parse *p, const char *key, yaml_node_t *v, const char *path,
		    void *arg)
{
	size_t i;
	int r;

	if (!strcmp(key, "instance"))
		return parse_instance(p, v, path);
	if (!strcmp(key, "listen"))
		return parse_listen(p, v, path);
	if (!strcmp(key, "workers"))
		return walk_map(p, v, path, workers_pair, NULL);
	if (!strcmp(key, "backends"))
		return parse_backends(p, v, path);
	if (!strcmp(key, "balance")) {
		r = get_enum(p, v, path, cfg_balance_names,
			     sizeof(cfg_balance_names) / sizeof(cfg_balance_names[0]), &i);
		if (r == 0)
			p->cfg->balance = (enum cfg_balance)i;
		return r;
	}
	if (!strcmp(key, "timeouts"))
		return walk_map(p, v, path, timeouts_pair, NULL);
	if (!strcmp(key, "limits"))
		return walk_map(p, v, path, limits_pair, NULL);
	if (!strcmp(key, "steering"))
		return walk_map(p, v, path, steering_pair, NULL);
	if (!strcmp(key, "admin"))
		return walk_map(p, v, path, admin_pair, NULL);
	if (!strcmp(key, "access_log"))
		return parse_access_log(p, v, path);
	if (!strcmp(key, "health")) {
		p->line_health = node_line(v);
		return parse_health(p, v, path, &p->cfg->health);
	}
	if (!strcmp(key, "user")) {
		p->line_user = node_line(v);
		return get_str(p, v, path, p->cfg->user, sizeof(p->cfg->user), false);
	}
	if (!strcmp(key, "group")) {
		p->line_group = node_line(v);
		return get_str(p, v, path, p->cfg->group, sizeof(p->cfg->group), false);
	}
	return CFG_UNKNOWN;
}

/* user: and group: name accounts of this machine (checked here so --check catches a typo). */
static int check_user(struct cfg_parse *p)
{
	struct config *cfg = p->cfg;
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp = NULL;
	char buf[4096];

	if (!cfg->user[0]) {
		if (cfg->group[0])
			return cfg_err(p, p->line_group, "group",
				       "needs user: (the group alone is not dropped to)");
		return 0;
	}
	if (getpwnam_r(cfg->user, &pw, buf, sizeof(buf), &pwp) != 0 || !pwp)
		return cfg_err(p, p->line_user, "user", "no such user '%s' on this machine",
			       cfg->user);
	cfg->uid = pw.pw_uid;
	cfg->gid = pw.pw_gid;
	if (!cfg->group[0])
		return 0;
	if (getgrnam_r(cfg->group, &gr, buf, sizeof(buf), &grp) != 0 || !grp)
		return cfg_err(p, p->line_group, "group", "no such group '%s' on this machine",
			       cfg->group);
	cfg->gid = gr.gr_gid;
	return 0;
}

/* Where a message from tls_check() belongs: the line and key path of what it is about. */
static int tls_report(struct cfg_parse *p, uint32_t l, const struct tls_ctx_err *e)
{
	const struct cfg_tls_lines *ln = &p->tls_lines[l];
	char base[32], path[CFG_KEY_PATH_MAX];
	size_t line = ln->tls;

	snprintf(base, sizeof(base), "listen[%u].tls", l);
	if (e->cert >= 0) {
		snprintf(path, sizeof(path), "%s.certificates[%d].%.8s", base, e->cert, e->key);
		line = !strcmp(e->key, "key") ? ln->key[e->cert] : ln->cert[e->cert];
	} else {
		path_join(path, base, e->key[0] ? e->key : "certificates");
		if (!strcmp(e->key, "ciphers"))
			line = ln->ciphers;
		else if (!strcmp(e->key, "ciphersuites"))
			line = ln->ciphersuites;
		else if (!strcmp(e->key, "protocols"))
			line = ln->protocols;
	}
	return cfg_err(p, line ? line : ln->tls, path, "%s", e->msg);
}

/*
 * Every TLS listener is built once here, exactly as a worker would use it (files read,
 * key matched, cipher lists parsed) and thrown away, so that --check and a reload refuse
 * what start-up would refuse. Warnings (an expired certificate) go into cfg->warnings.
 */
static int check_tls(struct cfg_parse *p)
{
	struct config *cfg = p->cfg;
	struct tls_ctx_err e;
	uint32_t i;
	size_t used;
	int r;

	for (i = 0; i < cfg->listen_n; i++) {
		const struct cfg_tls_lines *ln = &p->tls_lines[i];

		if (!cfg->listen_tls[i].on)
			continue;
		r = tls_check(&cfg->listen_tls[i], &e);
		if (r < 0)
			return tls_report(p, i, &e);
		if (e.warn[0]) {
			used = strlen(cfg->warnings);
			snprintf(cfg->warnings + used, sizeof(cfg->warnings) - used,
				 "%s%s:%zu: listen[%u].tls.certificates[%d].cert: %s",
				 used ? "\n" : "", p->name, ln->cert[e.warn_cert], i, e.warn_cert,
				 e.warn);
		}
	}
	return 0;
}

/*
 * Every TLS backend's client context is built once here as the daemon would build it (the CA
 * file read and parsed, the name set) and thrown away, so that --check and a reload refuse what
 * start-up would.
 */
static int check_backend_tls(struct cfg_parse *p)
{
	struct config *cfg = p->cfg;
	char path[CFG_KEY_PATH_MAX];
	struct tls_ctx_err e;
	uint32_t i;
	size_t line;

	for (i = 0; i < cfg->backends_n; i++) {
		const struct cfg_btls_lines *ln = &p->btls_lines[i];

		if (!cfg->backends[i].tls.on || tls_client_check(&cfg->backends[i], &e) == 0)
			continue;
		line = !strcmp(e.key, "ca") ? ln->ca : !strcmp(e.key, "sni") ? ln->sni : 0;
		snprintf(path, sizeof(path), "backends[%u].tls%s%s", i, e.key[0] ? "." : "", e.key);
		return cfg_err(p, line ? line : ln->tls, path, "%s", e.msg);
	}
	return 0;
}

int config_tls_backend(const struct config *cfg)
{
	for (uint32_t i = 0; i < cfg->backends_n; i++)
		if (cfg->backends[i].tls.on)
			return (int)i;
	return -1;
}

int config_tls_listener(const struct config *cfg)
{
	for (uint32_t i = 0; i < cfg->listen_n; i++)
		if (cfg->listen_tls[i].on)
			return (int)i;
	return -1;
}

/* Rules that span keys, checked once the whole file has been read. */
static int check_whole(struct cfg_parse *p)
{
	struct config *cfg = p->cfg;
	uint64_t sum = 0;
	uint32_t i;

	if (check_user(p) < 0)
		return -EINVAL;
	if (cfg->listen_n == 0)
		return cfg_err(p, p->line_root, "listen",
			       "at least one listen address is required");
	if (cfg->backends_n == 0)
		return cfg_err(p, p->line_root, "backends", "at least one backend is required");
	for (i = 0; i < cfg->backends_n; i++)
		sum += cfg->backends[i].weight;
	if (sum == 0)
		return cfg_err(p, p->line_backend[0], "backends", CFG_MSG_BACKEND_WEIGHTS_ZERO);
	for (i = 0; i < cfg->backends_n; i++) {
		uint32_t j;

		for (j = 0; j < cfg->listen_n; j++)
			if (addr_equal(&cfg->backends[i].addr, &cfg->listen[j]))
				return cfg_err(p, p->line_backend[i], "backends",
					       "%s is corral's own listen address (a loop)",
					       cfg->backends[i].addr.text);
	}
	if (cfg->admin.metrics_on && addr_port(&cfg->admin.metrics) != 0) {
		for (i = 0; i < cfg->listen_n; i++)
			if (addr_equal(&cfg->admin.metrics, &cfg->listen[i]))
				return cfg_err(p, p->line_metrics, "admin.metrics",
					       "%s is also a listen address (line %zu)",
					       cfg->admin.metrics.text, p->line_listen[i]);
	}
	for (i = 0; i < cfg->backends_n; i++) {
		struct cfg_health *h = &cfg->backends[i].health;
		size_t line =
			p->line_backend_health[i] ? p->line_backend_health[i] : p->line_health;
		char key[CFG_KEY_PATH_MAX];

		health_merge(h, &cfg->health);
		if (p->line_backend_health[i])
			snprintf(key, sizeof(key), "backends[%u].health.timeout_ms", i);
		else
			snprintf(key, sizeof(key), "health.timeout_ms");
		if (h->on && h->timeout_ms > h->interval_ms)
			return cfg_err(
				p, line, key,
				"%u ms is longer than interval_ms (%u ms); one check runs at "
				"a time per backend",
				h->timeout_ms, h->interval_ms);
	}
	if (cfg->steering.weights_n && cfg->steering.weights_n != cfg->cores_n)
		return cfg_err(p, p->line_weights, "steering.weights",
			       "has %u entries but workers.cores gives %u cores (one weight per "
			       "core, in workers.cores order)",
			       cfg->steering.weights_n, cfg->cores_n);
	if ((uint64_t)cfg->limits.buffers_per_core * cfg->limits.buffer_bytes >
	    CFG_BUFFER_MEM_PER_CORE_MAX)
		return cfg_err(p, p->line_buffers, p->key_buffers,
			       "buffers_per_core x buffer_bytes is %" PRIu64
			       " bytes per core; at most %llu (1 GiB) is allowed",
			       (uint64_t)cfg->limits.buffers_per_core * cfg->limits.buffer_bytes,
			       CFG_BUFFER_MEM_PER_CORE_MAX);
	if (check_backend_tls(p) < 0)
		return -EINVAL;
	return check_tls(p);
}

void config_defaults(struct config *cfg)
{
	uint32_t i;

	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->instance, sizeof(cfg->instance), "default");
	cores_all(cfg);
	cfg->balance = CFG_BALANCE_ROUND_ROBIN;

	cfg->timeouts.client_header_ms = CFG_DEF_CLIENT_HEADER_MS;
	cfg->timeouts.client_idle_ms = CFG_DEF_CLIENT_IDLE_MS;
	cfg->timeouts.client_body_ms = CFG_DEF_CLIENT_BODY_MS;
	cfg->timeouts.upstream_connect_ms = CFG_DEF_UPSTREAM_CONNECT_MS;
	cfg->timeouts.upstream_response_ms = CFG_DEF_UPSTREAM_RESPONSE_MS;
	cfg->timeouts.upstream_idle_ms = CFG_DEF_UPSTREAM_IDLE_MS;
	cfg->timeouts.tunnel_idle_ms = CFG_DEF_TUNNEL_IDLE_MS;
	cfg->timeouts.shutdown_grace_ms = CFG_DEF_SHUTDOWN_GRACE_MS;
	cfg->timeouts.linger_ms = CFG_DEF_LINGER_MS;
	cfg->timeouts.backend_park_ms = CFG_DEF_BACKEND_PARK_MS;
	cfg->timeouts.upgrade_ready_ms = CFG_DEF_UPGRADE_READY_MS;

	cfg->limits.header_bytes_max = CFG_DEF_HEADER_BYTES_MAX;
	cfg->limits.headers_max = CFG_DEF_HEADERS_MAX;
	cfg->limits.uri_bytes_max = CFG_DEF_URI_BYTES_MAX;
	cfg->limits.body_bytes_max = CFG_DEF_BODY_BYTES_MAX;
	cfg->limits.connections_per_core = CFG_DEF_CONNECTIONS_PER_CORE;
	cfg->limits.requests_per_connection = CFG_DEF_REQUESTS_PER_CONNECTION;
	cfg->limits.upstream_idle_per_backend = CFG_DEF_UPSTREAM_IDLE_PER_BACKEND;
	cfg->limits.upstream_attempts_max = CFG_DEF_UPSTREAM_ATTEMPTS_MAX;
	cfg->limits.linger_bytes_max = CFG_DEF_LINGER_BYTES_MAX;
	cfg->limits.buffers_per_core = CFG_DEF_BUFFERS_PER_CORE;
	cfg->limits.buffer_bytes = CFG_DEF_BUFFER_BYTES;
	cfg->limits.listen_backlog = CFG_DEF_LISTEN_BACKLOG;

	/*
	 * "hash" is what the kernel does without a program: stateless, so it cannot herd a
	 * burst of new connections onto the one core that looked least loaded a moment ago.
	 */
	snprintf(cfg->steering.policy, sizeof(cfg->steering.policy), "hash");
	for (i = 0; i < CFG_CORES_MAX; i++)
		cfg->steering.weights[i] = 1;

	snprintf(cfg->admin.socket, sizeof(cfg->admin.socket), "/run/corral/corral.sock");
	cfg->access_log.format = CFG_LOG_JSON;

	snprintf(cfg->health.path, sizeof(cfg->health.path), "/");
	cfg->health.interval_ms = CFG_DEF_HEALTH_INTERVAL_MS;
	cfg->health.timeout_ms = CFG_DEF_HEALTH_TIMEOUT_MS;
	cfg->health.rise = CFG_DEF_HEALTH_RISE;
	cfg->health.fall = CFG_DEF_HEALTH_FALL;
	cfg->health.expect_lo = CFG_DEF_HEALTH_EXPECT_LO;
	cfg->health.expect_hi = CFG_DEF_HEALTH_EXPECT_HI;
}

static void yaml_error(struct cfg_parse *p, const yaml_parser_t *parser)
{
	size_t line = parser->problem_mark.line + 1;

	if (parser->error == YAML_MEMORY_ERROR) {
		if (p->err && p->errlen)
			snprintf(p->err, p->errlen, "%s: out of memory while reading YAML",
				 p->name);
		return;
	}
	/* Some errors (bad encoding) come without a problem mark but with the context mark. */
	if (parser->problem_mark.line == 0 && parser->context_mark.line > 0)
		line = parser->context_mark.line + 1;
	if (parser->context)
		cfg_err(p, line, "yaml", "%s (%s)", parser->problem ? parser->problem : "error",
			parser->context);
	else
		cfg_err(p, line, "yaml", "%s", parser->problem ? parser->problem : "syntax error");
}

int config_parse(struct config *cfg, const char *name, const char *text, size_t len, char *err,
		 size_t errlen)
{
	struct cfg_parse p = { .name = name, .err = err, .errlen = errlen };
	yaml_parser_t parser;
	yaml_document_t doc, extra;
	yaml_node_t *root, *extra_root;
	struct config *tmp;
	int r;

	if (err && errlen)
		err[0] = '\0';
	/* Parse into a copy so that a failed reload leaves the running config untouched. */
	tmp = malloc(sizeof(*tmp));
	if (!tmp) {
		if (err && errlen)
			snprintf(err, errlen, "%s: out of memory", name);
		return -ENOMEM;
	}
	config_defaults(tmp);
	snprintf(tmp->path, sizeof(tmp->path), "%s", name);
	p.cfg = tmp;

	if (!yaml_parser_initialize(&parser)) {
		if (err && errlen)
			snprintf(err, errlen, "%s: out of memory", name);
		r = -ENOMEM;
		goto out_free;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		yaml_error(&p, &parser);
		r = -EINVAL;
		goto out_parser;
	}
	p.doc = &doc;
	root = yaml_document_get_root_node(&doc);
	p.line_root = root ? node_line(root) : 1;

	/* A second document would be ignored silently; say so instead. */
	if (!yaml_parser_load(&parser, &extra)) {
		yaml_error(&p, &parser);
		r = -EINVAL;
		goto out_doc;
	}
	extra_root = yaml_document_get_root_node(&extra);
	if (extra_root) {
		r = cfg_err(&p, node_line(extra_root), "yaml",
			    "only one YAML document is allowed in a config file");
		yaml_document_delete(&extra);
		goto out_doc;
	}
	yaml_document_delete(&extra);

	if (root) {
		r = walk_map(&p, root, "", top_pair, NULL);
		if (r < 0)
			goto out_doc;
	}
	r = check_whole(&p);
	if (r < 0)
		goto out_doc;
	memcpy(cfg, tmp, sizeof(*cfg));
	r = 0;
out_doc:
	yaml_document_delete(&doc);
out_parser:
	yaml_parser_delete(&parser);
out_free:
	free(tmp);
	return r;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	ssize_t n;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		goto fail_msg;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto fail_close;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		if (err && errlen)
			snprintf(err, errlen, "%s: not a regular file", path);
		goto out_close;
	}
	if (st.st_size > CFG_FILE_BYTES_MAX) {
		r = -EFBIG;
		if (err && errlen)
			snprintf(err, errlen, "%s: larger than %d bytes; not a config file", path,
				 CFG_FILE_BYTES_MAX);
		goto out_close;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		r = -ENOMEM;
		goto fail_close;
	}
	while (got < (size_t)st.st_size) {
		n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			goto fail_close;
		}
		if (n == 0)
			break; /* truncated while we read: parse what is there */
		got += (size_t)n;
	}
	close(fd);
	r = config_parse(cfg, path, buf, got, err, errlen);
	free(buf);
	return r;

fail_close:
	close(fd);
fail_msg:
	if (err && errlen)
		snprintf(err, errlen, "%s: cannot read: %s", path, strerror(-r));
	free(buf);
	return r;
out_close:
	close(fd);
	return r;
}

const char *config_balance_name(enum cfg_balance b)
{
	if ((size_t)b < sizeof(cfg_balance_names) / sizeof(cfg_balance_names[0]))
		return cfg_balance_names[b];
	return "unknown";
}
