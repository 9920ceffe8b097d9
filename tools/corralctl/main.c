/* corralctl: command-line client for corral's control socket. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "corralctl.h"
#include "daemon.h" /* CORRAL_VERSION: one version for the daemon and its tool */

/* One entry per subcommand: its usage line and what it does (`corralctl CMD --help`). */
static const struct cmd_help {
	const char *name, *args, *what;
} CMDS[] = {
	{ "status", "[--json]", "version, uptime, config, steering, cores" },
	{ "stats", "[--json] [--watch SECS]", "per-core counters, rates, latency, imbalance" },
	{ "top", "[--interval SECS]", "live full-screen view (q or Ctrl-C quits)" },
	{ "policy", "[set NAME]", "show or change the steering policy (hash, round-robin, ...)" },
	{ "weight", "CORE N", "steering weight of a core" },
	{ "drain", "CORE", "stop sending new connections to a core" },
	{ "undrain", "CORE", "resume sending new connections to a core" },
	{ "backends", "[--json]", "backend table" },
	{ "certs", "[--json]",
	  "loaded TLS certificates: listener, names, issuer, expiry (as served now)" },
	{ "backend", "enable|disable [--force] ADDR",
	  "take a backend in or out of rotation (--force: even the last enabled one)" },
	{ "backend", "weight ADDR N", "balancing weight of a backend" },
	{ "reload", "",
	  "re-read the config file (like SIGHUP); names changed keys that need a restart" },
	{ "upgrade", "[--json]",
	  "start the binary on disk in place of the running one, without dropping connections" },
	{ "help", "[COMMAND]", "this text, or one command's" },
};

static const char usage_tail[] =
	"\n"
	"  -s, --socket SOCKET  control socket (default $CORRAL_SOCKET or " CORRALCTL_SOCKET_DEF
	")\n"
	"  -h, --help           this text (COMMAND --help: that command's)\n"
	"  -V, --version        print the version and exit\n";

static void usage_print(FILE *f)
{
	fputs("usage: corralctl [-s SOCKET] COMMAND [ARGS]\n\n", f);
	for (size_t i = 0; i < sizeof(CMDS) / sizeof(CMDS[0]); i++) {
		char line[96];

		snprintf(line, sizeof(line), "%s %s", CMDS[i].name, CMDS[i].args);
		fprintf(f, "  %-33s %s\n", line, CMDS[i].what);
	}
	fputs(usage_tail, f);
}

static int usage(const char *why);

/* `corralctl CMD --help`: that command's usage on stdout, exit 0 (2 for an unknown command). */
static int cmd_usage(const char *name)
{
	char msg[300];
	bool found = false;

	for (size_t i = 0; i < sizeof(CMDS) / sizeof(CMDS[0]); i++)
		if (!strcmp(CMDS[i].name, name)) {
			printf("%s corralctl [-s SOCKET] %s %s\n    %s\n",
			       found ? "      " : "usage:", name, CMDS[i].args, CMDS[i].what);
			found = true;
		}
	if (found)
		return 0;
	snprintf(msg, sizeof(msg), "unknown command '%s'", name);
	return usage(msg);
}

/* A usage mistake is one line (like every other error); no command at all shows the help. */
static int usage(const char *why)
{
	if (why)
		fprintf(stderr, "corralctl: %s (corralctl -h for help)\n", why);
	else
		usage_print(stderr);
	return CC_EXIT_USAGE;
}

static bool wants_help(int argc, char **argv)
{
	for (int i = 0; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return true;
	return false;
}

/* Strict non-negative integer parse: "7" yes; "", "7x", "-1", "99999999999" no. */
static bool parse_u32(const char *s, uint32_t *out)
{
	char *end;
	unsigned long v;

	if (!s || !*s || *s == '-' || *s == '+')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool parse_secs(const char *s, double *out)
{
	char *end;
	double v;

	if (!s)
		return false;
	v = strtod(s, &end);
	if (*end || !(v >= 0.1 && v <= 86400))
		return false;
	*out = v;
	return true;
}

/* Sends req and returns the reply when ok; else prints the one-line reason and sets *code. */
static json_t *call(const char *sock, json_t *req, int *code)
{
	char err[512];
	bool unreachable;
	json_t *reply;
	int fd = client_connect(sock, err, sizeof(err));

	if (fd < 0) {
		fprintf(stderr, "corralctl: %s\n", err);
		json_decref(req);
		*code = CC_EXIT_UNREACHABLE;
		return NULL;
	}
	reply = client_request(fd, req, err, sizeof(err), &unreachable);
	close(fd);
	json_decref(req);
	if (!reply) {
		fprintf(stderr, "corralctl: %s\n", err);
		*code = unreachable ? CC_EXIT_UNREACHABLE : CC_EXIT_FAIL;
		return NULL;
	}
	if (!json_is_true(json_object_get(reply, "ok"))) {
		const char *e = json_string_value(json_object_get(reply, "error"));

		fprintf(stderr, "corralctl: %s\n", e ? e : "the daemon refused without a reason");
		json_decref(reply);
		*code = CC_EXIT_FAIL;
		return NULL;
	}
	*code = 0;
	return reply;
}

/* Prints a reply for scripts: the object without its "ok", on one line. */
static void print_json(json_t *reply)
{
	json_object_del(reply, "ok");
	json_dumpf(reply, stdout, JSON_COMPACT);
	fputc('\n', stdout);
	fflush(stdout);
}

static volatile sig_atomic_t watch_stop;

static void on_sigint(int sig)
{
	watch_stop = 1;
}

static int cmd_stats(const char *sock, int argc, char **argv)
{
	bool json = false;
	double watch = 0;
	int i, code = 0;

	for (i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--watch") && parse_secs(argv[i + 1], &watch))
			i++;
		else
			return usage("stats: expected [--json] [--watch SECS] (SECS from 0.1)");
	}
	if (watch > 0)
		signal(SIGINT, on_sigint);
	do {
		json_t *r = call(sock, json_pack("{s:s}", "cmd", "stats"), &code);
		struct timespec ts;

		if (!r)
			return code;
		if (json) {
			print_json(r);
		} else {
			if (watch > 0) {
				time_t now = time(NULL);
				char when[32];

				strftime(when, sizeof(when), "%F %T", localtime(&now));
				printf("--- %s\n", when);
			}
			render_stats(stdout, r);
			fflush(stdout);
		}
		json_decref(r);
		if (watch <= 0)
			break;
		ts.tv_sec = (time_t)watch;
		ts.tv_nsec = (long)((watch - (double)ts.tv_sec) * 1e9);
		nanosleep(&ts, NULL); /* EINTR on Ctrl-C ends the wait at once */
	} while (!watch_stop);
	return 0;
}

static int cmd_simple(const char *sock, json_t *req, void (*render)(FILE *, json_t *), bool json,
		      const char *done)
{
	int code;
	json_t *r = call(sock, req, &code);

	if (!r)
		return code;
	if (json)
		print_json(r);
	else if (render)
		render(stdout, r);
	else if (done)
		printf("%s\n", done);
	json_decref(r);
	return 0;
}

/* "reloaded", then the changed keys that only a restart applies (they were not applied). */
static void render_reload(FILE *f, json_t *reply)
{
	json_t *keys = json_object_get(reply, "restart_needed"), *k;
	size_t i;

	fputs("reloaded", f);
	if (json_array_size(keys)) {
		fputs("; changed but not applied until a restart: ", f);
		json_array_foreach(keys, i, k)
			fprintf(f, "%s%s", i ? ", " : "", json_string_value(k) ?: "?");
	}
	fputc('\n', f);
}

/* The successor's pid: the running daemon now (the old one drains and exits). */
static void render_upgrade(FILE *f, json_t *reply)
{
	fprintf(f, "upgraded: new pid %.0f (the old process drains and exits)\n",
		json_num(reply, "pid"));
}

static bool only_json_flag(int argc, char **argv, bool *json)
{
	*json = false;
	if (argc == 0)
		return true;
	if (argc == 1 && !strcmp(argv[0], "--json")) {
		*json = true;
		return true;
	}
	return false;
}

int main(int argc, char **argv)
{
	const char *sock = getenv("CORRAL_SOCKET");
	char msg[300];
	uint32_t core, n;
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd;
	bool json;
	int opt;

	if (!sock || !*sock)
		sock = CORRALCTL_SOCKET_DEF;
	/* "+": options end at the command; its own arguments are parsed below. */
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+s:hV", opts, NULL)) != -1) {
		if (opt == 's') {
			sock = optarg;
		} else if (opt == 'h') {
			usage_print(stdout);
			return 0;
		} else if (opt == 'V') {
			printf("corralctl %s\n", CORRAL_VERSION);
			return 0;
		} else {
			snprintf(msg, sizeof(msg), "%s '%s'",
				 optopt == 's' ? "missing SOCKET after" : "unknown option",
				 argv[optind - 1]);
			return usage(msg);
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		return usage(NULL);
	cmd = argv[0];
	argc--;
	argv++;
	if (!strcmp(cmd, "help")) {
		if (wants_help(argc, argv))
			return cmd_usage(cmd);
		if (argc > 1)
			return usage("help: expected [COMMAND]");
		return argc ? cmd_usage(argv[0]) : (usage_print(stdout), 0);
	}
	if (wants_help(argc, argv))
		return cmd_usage(cmd);

	if (!strcmp(cmd, "status")) {
		if (!only_json_flag(argc, argv, &json))
			return usage("status: expected [--json]");
		return cmd_simple(sock, json_pack("{s:s}", "cmd", "status"), render_status, json,
				  NULL);
	}
	if (!strcmp(cmd, "stats"))
		return cmd_stats(sock, argc, argv);
	if (!strcmp(cmd, "top")) {
		double iv = 1;

		if (argc == 2 && !strcmp(argv[0], "--interval") && parse_secs(argv[1], &iv))
			return top_run(sock, iv);
		if (argc != 0)
			return usage("top: expected [--interval SECS]");
		return top_run(sock, iv);
	}
	if (!strcmp(cmd, "policy")) {
		int code;
		json_t *r;

		if (argc == 0)
			r = call(sock, json_pack("{s:s}", "cmd", "policy"), &code);
		else if (argc == 2 && !strcmp(argv[0], "set"))
			r = call(sock, json_pack("{s:s, s:s}", "cmd", "policy", "set", argv[1]),
				 &code);
		else
			return usage("policy: expected no argument or `set NAME`");
		if (!r)
			return code;
		printf("%s (steering: %s)\n",
		       json_string_value(json_object_get(json_object_get(r, "steering"), "policy"))
			       ?: "?",
		       json_string_value(json_object_get(json_object_get(r, "steering"), "mode"))
			       ?: "?");
		json_decref(r);
		return 0;
	}
	if (!strcmp(cmd, "weight")) {
		if (argc != 2 || !parse_u32(argv[0], &core) || !parse_u32(argv[1], &n))
			return usage("weight: expected CORE N (non-negative integers)");
		snprintf(msg, sizeof(msg), "core %u: weight %u", core, n);
		return cmd_simple(sock,
				  json_pack("{s:s, s:I, s:I}", "cmd", "weight", "core",
					    (json_int_t)core, "weight", (json_int_t)n),
				  NULL, false, msg);
	}
	if (!strcmp(cmd, "drain") || !strcmp(cmd, "undrain")) {
		if (argc != 1 || !parse_u32(argv[0], &core)) {
			snprintf(msg, sizeof(msg), "%s: expected CORE (a core index)", cmd);
			return usage(msg);
		}
		snprintf(msg, sizeof(msg), "core %u: %s", core,
			 cmd[0] == 'd' ? "draining" : "active");
		return cmd_simple(sock,
				  json_pack("{s:s, s:I}", "cmd", cmd, "core", (json_int_t)core),
				  NULL, false, msg);
	}
	if (!strcmp(cmd, "backends")) {
		if (!only_json_flag(argc, argv, &json))
			return usage("backends: expected [--json]");
		return cmd_simple(sock, json_pack("{s:s}", "cmd", "backends"), render_backends,
				  json, NULL);
	}
	if (!strcmp(cmd, "certs")) {
		if (!only_json_flag(argc, argv, &json))
			return usage("certs: expected [--json]");
		return cmd_simple(sock, json_pack("{s:s}", "cmd", "certs"), render_certs, json,
				  NULL);
	}
	if (!strcmp(cmd, "backend")) {
		if (argc >= 2 && argc <= 3 &&
		    (!strcmp(argv[0], "enable") || !strcmp(argv[0], "disable"))) {
			bool force = argc == 3 && !strcmp(argv[1], "--force");
			const char *addr = argv[argc - 1];

			if (argc == 3 && (!force || argv[0][0] != 'd'))
				return usage("backend: expected enable ADDR, or disable [--force] "
					     "ADDR");
			snprintf(msg, sizeof(msg), "backend %s: %sd", addr, argv[0]);
			snprintf(msg + 200, 100, "backend-%s", argv[0]);
			return cmd_simple(sock,
					  json_pack("{s:s, s:s, s:b}", "cmd", msg + 200, "addr",
						    addr, "force", force),
					  NULL, false, msg);
		}
		if (argc == 3 && !strcmp(argv[0], "weight")) {
			if (!parse_u32(argv[2], &n))
				return usage("backend weight: expected ADDR N (N a non-negative "
					     "integer)");
			snprintf(msg, sizeof(msg), "backend %s: weight %u", argv[1], n);
			return cmd_simple(sock,
					  json_pack("{s:s, s:s, s:I}", "cmd", "backend-weight",
						    "addr", argv[1], "weight", (json_int_t)n),
					  NULL, false, msg);
		}
		return usage(
			"backend: expected enable|disable ADDR, disable --force ADDR, or weight "
			"ADDR N");
	}
	if (!strcmp(cmd, "upgrade")) {
		if (!only_json_flag(argc, argv, &json))
			return usage("upgrade: only --json");
		/* The daemon answers once the new process is ready (it gives it 20 s). */
		client_timeout_ms = CLIENT_UPGRADE_TIMEOUT_MS;
		return cmd_simple(sock, json_pack("{s:s}", "cmd", "upgrade"), render_upgrade, json,
				  NULL);
	}
	if (!strcmp(cmd, "reload")) {
		if (argc != 0)
			return usage("reload: no arguments");
		return cmd_simple(sock, json_pack("{s:s}", "cmd", "reload"), render_reload, false,
				  NULL);
	}
	snprintf(msg, sizeof(msg), "unknown command '%s'", cmd);
	return usage(msg);
}
