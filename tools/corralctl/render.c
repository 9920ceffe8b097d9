/* corralctl: tables for people from the daemon's JSON replies. */
#include <math.h>
#include <string.h>

#include "corralctl.h"

void render_count(char *out, size_t len, double v)
{
	static const char sfx[] = " kMGTP";
	int i = 0;

	while (fabs(v) >= 999.5 && i < 5) {
		v /= 1000;
		i++;
	}
	if (i == 0)
		snprintf(out, len, "%.0f", v);
	else
		snprintf(out, len, v < 9.95 ? "%.1f%c" : "%.0f%c", v, sfx[i]);
}

void render_bytes(char *out, size_t len, double v)
{
	static const char sfx[] = "BKMGTP";
	int i = 0;

	while (v >= 1023.5 && i < 5) {
		v /= 1024;
		i++;
	}
	if (i == 0)
		snprintf(out, len, "%.0fB", v);
	else
		snprintf(out, len, v < 9.95 ? "%.1f%c" : "%.0f%c", v, sfx[i]);
}

void render_us(char *out, size_t len, double us)
{
	if (us <= 0)
		snprintf(out, len, "-");
	else if (us < 1000)
		snprintf(out, len, "%.0fus", us);
	else if (us < 1e6)
		snprintf(out, len, us < 9995 ? "%.2fms" : "%.0fms", us / 1e3);
	else
		snprintf(out, len, "%.2fs", us / 1e6);
}

double json_num(json_t *o, const char *path)
{
	char key[64];
	const char *dot;
	json_t *v = o;

	while ((dot = strchr(path, '.'))) {
		snprintf(key, sizeof(key), "%.*s", (int)(dot - path), path);
		v = json_object_get(v, key);
		path = dot + 1;
	}
	v = json_object_get(v, path);
	return json_is_number(v) ? json_number_value(v) : 0;
}

static const char *str(json_t *o, const char *key, const char *def)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : def;
}

/* A certificate's names: the first ones, then how many more it has ("a.test, b.test +3"). */
static void cert_names(char *out, size_t len, json_t *c)
{
	json_t *names = json_object_get(c, "names"), *nm;
	size_t i, used = 0;
	double total = json_num(c, "names_total");

	out[0] = '\0';
	json_array_foreach(names, i, nm) {
		int k = snprintf(out + used, len - used, "%s%s", i ? ", " : "",
				 json_string_value(nm) ?: "?");

		if (k < 0 || (size_t)k >= len - used) {
			out[used] = '\0';
			break;
		}
		used += (size_t)k;
	}
	if (total > (double)i && used + 16 < len)
		snprintf(out + used, len - used, " +%.0f", total - (double)i);
	if (!out[0])
		snprintf(out, len, "(none: %s)", str(c, "subject", "?"));
}

/* Expiry as an operator reads it: "in 89d", "in 5h", "EXPIRED 3d ago". */
static void cert_expiry(char *out, size_t len, json_t *c)
{
	double s = json_num(c, "expires_in_s"), a = fabs(s);
	const char *unit = a >= 86400 ? "d" : a >= 3600 ? "h" : "m";
	double v = a >= 86400 ? a / 86400 : a >= 3600 ? a / 3600 : a / 60;

	if (s < 0)
		snprintf(out, len, "EXPIRED %.0f%s ago", floor(v), unit);
	else
		snprintf(out, len, "in %.0f%s", floor(v), unit);
}

static void render_cert_rows(FILE *f, json_t *arr, bool files)
{
	json_t *c;
	size_t i;

	fprintf(f, "%-22s %4s  %-20s  %-13s  %s\n", "LISTENER", "CERT", "NOT AFTER", "EXPIRES",
		"NAMES");
	json_array_foreach(arr, i, c) {
		char names[400], exp[32], idx[16];

		cert_names(names, sizeof(names), c);
		cert_expiry(exp, sizeof(exp), c);
		snprintf(idx, sizeof(idx), "%.0f%s", json_num(c, "index"),
			 json_is_true(json_object_get(c, "default")) ? "*" : "");
		fprintf(f, "%-22s %4s  %-20s  %-13s  %s\n", str(c, "listen", "?"), idx,
			str(c, "not_after", "?"), exp, names);
		if (files)
			fprintf(f, "%-22s %4s  issuer %s; %s\n", "", "", str(c, "issuer", "?"),
				str(c, "file", "?"));
	}
}

/* `corralctl certs`: every certificate served now; * marks a listener's default. */
void render_certs(FILE *f, json_t *r)
{
	json_t *arr = json_object_get(r, "certificates");

	if (json_array_size(arr) == 0) {
		fprintf(f, "(no TLS listener)\n");
		return;
	}
	render_cert_rows(f, arr, true);
	fprintf(f, "(* = the listener's default: no SNI, or no name matched)\n");
}

void render_status(FILE *f, json_t *r)
{
	json_t *steer = json_object_get(r, "steering"), *cores = json_object_get(r, "cores"), *c;
	double up = json_num(r, "uptime_s");
	size_t i;

	fprintf(f, "corral %s (pid %.0f), up %dd %02d:%02d:%02d\n", str(r, "version", "?"),
		json_num(r, "pid"), (int)(up / 86400), (int)fmod(up / 3600, 24),
		(int)fmod(up / 60, 60), (int)fmod(up, 60));
	fprintf(f, "config:   %s", str(r, "config", "?"));
	if (json_object_get(r, "config_version"))
		fprintf(f, " (version %.0f)", json_num(r, "config_version"));
	fprintf(f, "\nsteering: %s, policy %s\n", str(steer, "mode", "?"),
		str(steer, "policy", "?"));
	if (json_is_object(json_object_get(r, "upgrade"))) {
		json_t *u = json_object_get(r, "upgrade");

		fprintf(f, "upgrade:  last at %s (from pid %.0f, upgrade %.0f)\n",
			str(u, "at", "?"), json_num(u, "from_pid"), json_num(u, "count"));
	} else if (json_object_get(r, "upgrade")) {
		fprintf(f, "upgrade:  none (started directly)\n");
	}
	if (json_is_true(json_object_get(r, "upgrading")))
		fprintf(f, "upgrade:  a new process is starting\n");
	fprintf(f, "cores:    %zu\n", json_array_size(cores));
	fprintf(f, "%6s %6s %-9s %6s\n", "CORE", "CPU", "STATE", "WEIGHT");
	json_array_foreach(cores, i, c)
		fprintf(f, "%6.0f %6.0f %-9s %6.0f\n", json_num(c, "core"), json_num(c, "cpu"),
			str(c, "state", "?"), json_num(c, "weight"));
	if (json_array_size(json_object_get(r, "certificates"))) {
		fprintf(f, "certificates: %zu\n",
			json_array_size(json_object_get(r, "certificates")));
		render_cert_rows(f, json_object_get(r, "certificates"), false);
	}
}

/* Connections, traffic and CPU of one core (or of the total). */
static void render_traffic_row(FILE *f, const char *name, const char *state, json_t *c)
{
	char acc[16], st[16], req[16], rps[16], in[16], out[16];

	render_count(acc, sizeof(acc), json_num(c, "conns_accepted"));
	render_count(st, sizeof(st), json_num(c, "steered"));
	render_count(req, sizeof(req), json_num(c, "requests"));
	render_count(rps, sizeof(rps), json_num(c, "rps"));
	render_bytes(in, sizeof(in), json_num(c, "bytes_in"));
	render_bytes(out, sizeof(out), json_num(c, "bytes_out"));
	fprintf(f, "%-5s %-8s %6.0f %8s %8s %5.0f %8s %7s %7s %7s %6.1f\n", name, state,
		json_num(c, "conns_active"), acc, st, json_num(c, "accept_queue"), req, rps, in,
		out, json_num(c, "cpu_pct"));
}

/* Responses, upstream errors, latency and the upstream pool of one core (or the total). */
static void render_results_row(FILE *f, const char *name, json_t *c)
{
	char r[5][16], ue[16], p50[16], p99[16], p999[16], pool[48], ph[16], pm[16];
	static const char *const cls[5] = { "responses.1xx", "responses.2xx", "responses.3xx",
					    "responses.4xx", "responses.5xx" };

	for (int i = 0; i < 5; i++)
		render_count(r[i], sizeof(r[i]), json_num(c, cls[i]));
	render_count(ue, sizeof(ue), json_num(c, "upstream_errors"));
	render_us(p50, sizeof(p50), json_num(c, "latency_us.p50"));
	render_us(p99, sizeof(p99), json_num(c, "latency_us.p99"));
	render_us(p999, sizeof(p999), json_num(c, "latency_us.p999"));
	render_count(ph, sizeof(ph), json_num(c, "pool.hits"));
	render_count(pm, sizeof(pm), json_num(c, "pool.misses"));
	snprintf(pool, sizeof(pool), "%.0f/%s/%s", json_num(c, "pool.idle"), ph, pm);
	fprintf(f, "%-5s %6s %6s %6s %6s %6s %6s %8s %8s %8s %14s\n", name, r[0], r[1], r[2], r[3],
		r[4], ue, p50, p99, p999, pool);
}

/*
 * Two tables of about 80 columns rather than one of 170, each with a row per core and a
 * total row: connections and traffic, then responses and latency.
 */
void render_stats(FILE *f, json_t *r)
{
	json_t *steer = json_object_get(r, "steering"), *cores = json_object_get(r, "cores"), *c;
	json_t *tot = json_object_get(r, "total");
	size_t i;

	fprintf(f, "steering: %s, policy %s\n\n", str(steer, "mode", "?"),
		str(steer, "policy", "?"));
	fprintf(f, "%-5s %-8s %6s %8s %8s %5s %8s %7s %7s %7s %6s\n", "CORE", "STATE", "CONNS",
		"ACCEPTED", "STEERED", "QUEUE", "REQS", "REQ/S", "IN", "OUT", "CPU%");
	json_array_foreach(cores, i, c) {
		char name[16];

		snprintf(name, sizeof(name), "%.0f", json_num(c, "core"));
		render_traffic_row(f, name, str(c, "state", "?"), c);
	}
	render_traffic_row(f, "total", "", tot);
	fprintf(f, "\n%-5s %6s %6s %6s %6s %6s %6s %8s %8s %8s %14s\n", "CORE", "1xx", "2xx", "3xx",
		"4xx", "5xx", "UPERR", "P50", "P99", "P999", "POOL idle/h/m");
	json_array_foreach(cores, i, c) {
		char name[16];

		snprintf(name, sizeof(name), "%.0f", json_num(c, "core"));
		render_results_row(f, name, c);
	}
	render_results_row(f, "total", tot);
	fprintf(f, "\nimbalance (max/mean over active cores): conns %.2f, cpu %.2f\n",
		json_num(r, "imbalance.conns"), json_num(r, "imbalance.cpu"));
}

void render_backends(FILE *f, json_t *r)
{
	json_t *arr = json_object_get(r, "backends"), *b;
	size_t i;

	fprintf(f, "%-40s %6s %-8s %7s %9s %7s %8s  %-28s %s\n", "ADDRESS", "WEIGHT", "STATE",
		"ACTIVE", "REQUESTS", "ERRORS", "LATENCY", "LAST CHECK", "REASON");
	json_array_foreach(arr, i, b) {
		char req[16], err[16], lat[16], chk[96];
		json_t *lc = json_object_get(b, "last_check");

		render_count(req, sizeof(req), json_num(b, "requests"));
		render_count(err, sizeof(err), json_num(b, "errors"));
		render_us(lat, sizeof(lat), json_num(b, "latency_us"));
		if (json_is_object(lc))
			snprintf(chk, sizeof(chk), "%s %s %.1fs ago",
				 json_is_true(json_object_get(lc, "ok")) ? "ok" : "FAIL",
				 str(lc, "result", "?"), json_num(lc, "age_ms") / 1000.0);
		else
			snprintf(chk, sizeof(chk), "%s",
				 json_is_true(json_object_get(b, "checks_on")) ? "(pending)" : "-");
		fprintf(f, "%-40s %6.0f %-8s %7.0f %9s %7s %8s  %-28s %s\n", str(b, "addr", "?"),
			json_num(b, "weight"), str(b, "state", "?"), json_num(b, "active"), req,
			err, lat, chk, str(b, "reason", ""));
	}
	if (json_array_size(arr) == 0)
		fprintf(f, "(no backends)\n");
}
