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

static double num(json_t *o, const char *path)
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

void render_status(FILE *f, json_t *r)
{
	json_t *steer = json_object_get(r, "steering"), *cores = json_object_get(r, "cores"), *c;
	double up = num(r, "uptime_s");
	size_t i;

	fprintf(f, "corral %s (pid %.0f), up %dd %02d:%02d:%02d\n", str(r, "version", "?"),
		num(r, "pid"), (int)(up / 86400), (int)fmod(up / 3600, 24), (int)fmod(up / 60, 60),
		(int)fmod(up, 60));
	fprintf(f, "config:   %s", str(r, "config", "?"));
	if (json_object_get(r, "config_version"))
		fprintf(f, " (version %.0f)", num(r, "config_version"));
	fprintf(f, "\nsteering: %s, policy %s\n", str(steer, "mode", "?"),
		str(steer, "policy", "?"));
	fprintf(f, "cores:    %zu\n", json_array_size(cores));
	fprintf(f, "%6s %6s %-9s %6s\n", "CORE", "CPU", "STATE", "WEIGHT");
	json_array_foreach(cores, i, c)
		fprintf(f, "%6.0f %6.0f %-9s %6.0f\n", num(c, "core"), num(c, "cpu"),
			str(c, "state", "?"), num(c, "weight"));
}

static void render_stats_row(FILE *f, const char *name, const char *state, json_t *c)
{
	char acc[16], st[16], req[16], rps[16], in[16], out[16], r1[16], r2[16], r3[16], r4[16],
		r5[16], ue[16], p50[16], p99[16], p999[16], pool[40], ph[16], pm[16];

	render_count(acc, sizeof(acc), num(c, "conns_accepted"));
	render_count(st, sizeof(st), num(c, "steered"));
	render_count(req, sizeof(req), num(c, "requests"));
	render_count(rps, sizeof(rps), num(c, "rps"));
	render_bytes(in, sizeof(in), num(c, "bytes_in"));
	render_bytes(out, sizeof(out), num(c, "bytes_out"));
	render_count(r1, sizeof(r1), num(c, "responses.1xx"));
	render_count(r2, sizeof(r2), num(c, "responses.2xx"));
	render_count(r3, sizeof(r3), num(c, "responses.3xx"));
	render_count(r4, sizeof(r4), num(c, "responses.4xx"));
	render_count(r5, sizeof(r5), num(c, "responses.5xx"));
	render_count(ue, sizeof(ue), num(c, "upstream_errors"));
	render_us(p50, sizeof(p50), num(c, "latency_us.p50"));
	render_us(p99, sizeof(p99), num(c, "latency_us.p99"));
	render_us(p999, sizeof(p999), num(c, "latency_us.p999"));
	render_count(ph, sizeof(ph), num(c, "pool.hits"));
	render_count(pm, sizeof(pm), num(c, "pool.misses"));
	snprintf(pool, sizeof(pool), "%.0f/%s/%s", num(c, "pool.idle"), ph, pm);
	fprintf(f,
		"%-5s %-8s %6.0f %7s %7s %7s %7s %6s %6s %5s %5s %5s %5s %5s %6s %7s %7s %7s %14s "
		"%5.0f %5.1f\n",
		name, state, num(c, "conns_active"), acc, st, req, rps, in, out, r1, r2, r3, r4, r5,
		ue, p50, p99, p999, pool, num(c, "accept_queue"), num(c, "cpu_pct"));
}

void render_stats(FILE *f, json_t *r)
{
	json_t *steer = json_object_get(r, "steering"), *cores = json_object_get(r, "cores"), *c;
	size_t i;

	fprintf(f, "steering: %s, policy %s\n", str(steer, "mode", "?"), str(steer, "policy", "?"));
	fprintf(f,
		"%-5s %-8s %6s %7s %7s %7s %7s %6s %6s %5s %5s %5s %5s %5s %6s %7s %7s %7s %14s "
		"%5s %5s\n",
		"CORE", "STATE", "CONNS", "ACCEPT", "STEERED", "REQS", "REQ/S", "IN", "OUT", "1xx",
		"2xx", "3xx", "4xx", "5xx", "UPERR", "P50", "P99", "P999", "POOL i/hit/miss",
		"QUEUE", "CPU%");
	json_array_foreach(cores, i, c)
	{
		char name[16];

		snprintf(name, sizeof(name), "%.0f", num(c, "core"));
		render_stats_row(f, name, str(c, "state", "?"), c);
	}
	render_stats_row(f, "total", "", json_object_get(r, "total"));
	fprintf(f, "imbalance (max/mean over active cores): conns %.2f, cpu %.2f\n",
		num(r, "imbalance.conns"), num(r, "imbalance.cpu"));
}

void render_backends(FILE *f, json_t *r)
{
	json_t *arr = json_object_get(r, "backends"), *b;
	size_t i;

	fprintf(f, "%-40s %6s %-8s %7s %9s %7s %8s\n", "ADDRESS", "WEIGHT", "STATE", "ACTIVE",
		"REQUESTS", "ERRORS", "LATENCY");
	json_array_foreach(arr, i, b)
	{
		char req[16], err[16], lat[16];

		render_count(req, sizeof(req), num(b, "requests"));
		render_count(err, sizeof(err), num(b, "errors"));
		render_us(lat, sizeof(lat), num(b, "latency_us"));
		fprintf(f, "%-40s %6.0f %-8s %7.0f %9s %7s %8s\n", str(b, "addr", "?"),
			num(b, "weight"), str(b, "state", "?"), num(b, "active"), req, err, lat);
	}
	if (json_array_size(arr) == 0)
		fprintf(f, "(no backends)\n");
}
