/* corralctl top: a full-screen live view of every core, plain ANSI escapes, no curses. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>

#include "corralctl.h"

static struct termios top_saved;
static bool top_raw;
static volatile sig_atomic_t top_stop;
static volatile sig_atomic_t top_resized;

/* Leaves the alternate screen and gives the terminal back as it was. Safe to call twice. */
static void top_restore(void)
{
	static const char seq[] = "\033[0m\033[?7h\033[?25h\033[?1049l";

	if (!top_raw)
		return;
	top_raw = false;
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &top_saved);
	if (write(STDOUT_FILENO, seq, sizeof(seq) - 1) < 0) {
		/* The terminal is gone: nothing left to restore. */
	}
}

static void top_on_signal(int sig)
{
	if (sig == SIGWINCH)
		top_resized = 1;
	else
		top_stop = 1;
}

static int top_enter(char *err, size_t errlen)
{
	/* Alternate screen, no cursor, no auto-wrap: a long line is cut, never wrapped. */
	static const char seq[] = "\033[?1049h\033[?25l\033[?7l\033[2J";
	struct sigaction sa = { .sa_handler = top_on_signal };
	struct termios raw;

	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
		snprintf(err, errlen, "top needs a terminal (use `stats --watch` in scripts)");
		return -1;
	}
	if (tcgetattr(STDIN_FILENO, &top_saved) == -1) {
		snprintf(err, errlen, "tcgetattr: %s", strerror(errno));
		return -1;
	}
	/* No SA_RESTART: a signal must wake the poll() at once. */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGWINCH, &sa, NULL);
	raw = top_saved;
	/* Keys arrive one at a time, unechoed; ISIG stays so Ctrl-C raises SIGINT. */
	raw.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
	raw.c_cc[VMIN] = 0;
	raw.c_cc[VTIME] = 0;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == -1) {
		snprintf(err, errlen, "tcsetattr: %s", strerror(errno));
		return -1;
	}
	top_raw = true;
	atexit(top_restore);
	if (write(STDOUT_FILENO, seq, sizeof(seq) - 1) < 0) {
		/* Reported by the first frame's write. */
	}
	return 0;
}

/* A text frame assembled in memory and written at once, so the screen never flickers. */
struct top_frame {
	char buf[1 << 18];
	size_t len;
	int rows; /* lines written so far */
	int height;
};

static void tf_put(struct top_frame *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tf_put(struct top_frame *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->len >= sizeof(t->buf))
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->buf + t->len, sizeof(t->buf) - t->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->len += (size_t)n < sizeof(t->buf) - t->len ? (size_t)n
							      : sizeof(t->buf) - t->len - 1;
}

/* Ends a screen line: clear what an older, longer frame left to its right. */
static void tf_eol(struct top_frame *t)
{
	tf_put(t, "\033[K\r\n");
	t->rows++;
}

/* A bar of width w cells for fraction 0..1, colored by level when colored is set. */
static void tf_bar(struct top_frame *t, double frac, int w, bool colored)
{
	int full, i;
	const char *color = frac >= 0.85 ? "\033[31m" : frac >= 0.6 ? "\033[33m" : "\033[32m";

	if (!(frac >= 0))
		frac = 0;
	if (frac > 1)
		frac = 1;
	full = (int)lround(frac * w);
	tf_put(t, "[%s", colored ? color : "");
	for (i = 0; i < w; i++)
		tf_put(t, i < full ? "#" : (colored ? "\033[2m.\033[22m" : "."));
	tf_put(t, "%s]", colored ? "\033[0m" : "");
}

static void top_draw(struct top_frame *t, json_t *r, const char *sock, const char *problem,
		     int width)
{
	json_t *cores = r ? json_object_get(r, "cores") : NULL, *steer, *c, *tot;
	char clock[16], rps[16], p50[16], p99[16], conns[16];
	double max_conns = 1;
	time_t now = time(NULL);
	struct tm tm;
	bool two_bars;
	int bar_w;
	size_t i;

	localtime_r(&now, &tm);
	strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
	t->len = 0;
	t->rows = 0;
	tf_put(t, "\033[H\033[1mcorral top\033[0m  %s  %s", sock, clock);
	tf_eol(t);
	if (!r) {
		tf_put(t, "\033[31m%s\033[0m — retrying every second", problem);
		tf_eol(t);
		tf_put(t, "q or Ctrl-C quits");
		tf_eol(t);
		tf_put(t, "\033[J");
		return;
	}
	steer = json_object_get(r, "steering");
	tot = json_object_get(r, "total");
	render_count(rps, sizeof(rps), json_num(tot, "rps"));
	render_count(conns, sizeof(conns), json_num(tot, "conns_active"));
	render_us(p50, sizeof(p50), json_num(tot, "latency_us.p50"));
	render_us(p99, sizeof(p99), json_num(tot, "latency_us.p99"));
	tf_put(t,
	       "steering %s/%s   cores %zu   conns %s   req/s %s   p50 %s   p99 %s   5xx %.0f   "
	       "uperr %.0f",
	       json_string_value(json_object_get(steer, "mode")) ?: "?",
	       json_string_value(json_object_get(steer, "policy")) ?: "?", json_array_size(cores),
	       conns, rps, p50, p99, json_num(tot, "responses.5xx"),
	       json_num(tot, "upstream_errors"));
	tf_eol(t);
	tf_put(t, "imbalance (max/mean): conns %.2f  cpu %.2f   total cpu %.1f%%",
	       json_num(r, "imbalance.conns"), json_num(r, "imbalance.cpu"),
	       json_num(tot, "cpu_pct"));
	tf_eol(t);
	tf_eol(t);

	json_array_foreach(cores, i, c)
		if (json_num(c, "conns_active") > max_conns)
			max_conns = json_num(c, "conns_active");
	/*
	 * The fixed columns take 72 cells. Wide terminals get two bars (CPU, and connections
	 * relative to the busiest core), narrow ones the CPU bar only.
	 */
	two_bars = width >= 120;
	bar_w = two_bars ? (width - 72 - 6) / 2 : width - 72 - 3;
	bar_w = bar_w < 5 ? 5 : bar_w > 40 ? 40 : bar_w;
	tf_put(t, "\033[7m%4s %-8s %7s %7s %7s %6s %8s %8s %5s  %-*s", "CORE", "STATE", "CONNS",
	       "REQ/S", "CPU%", "QUEUE", "P50", "P99", "5xx", bar_w + 2, "CPU");
	if (two_bars)
		tf_put(t, "  %-*s", bar_w + 2, "CONNS (vs busiest core)");
	tf_put(t, "\033[0m");
	tf_eol(t);
	json_array_foreach(cores, i, c) {
		const char *state = json_string_value(json_object_get(c, "state")) ?: "?";
		bool draining = !strcmp(state, "draining");
		char r_rps[16], r_conns[16], r50[16], r99[16];

		if (t->rows >= t->height - 1)
			break;
		render_count(r_rps, sizeof(r_rps), json_num(c, "rps"));
		render_count(r_conns, sizeof(r_conns), json_num(c, "conns_active"));
		render_us(r50, sizeof(r50), json_num(c, "latency_us.p50"));
		render_us(r99, sizeof(r99), json_num(c, "latency_us.p99"));
		tf_put(t, "%4.0f %s%-8s\033[0m %7s %7s %7.1f %6.0f %8s %8s %5.0f  ",
		       json_num(c, "core"), draining ? "\033[33m" : "", state, r_conns, r_rps,
		       json_num(c, "cpu_pct"), json_num(c, "accept_queue"), r50, r99,
		       json_num(c, "responses.5xx"));
		tf_bar(t, json_num(c, "cpu_pct") / 100.0, bar_w, true);
		if (two_bars) {
			tf_put(t, "  ");
			tf_bar(t, json_num(c, "conns_active") / max_conns, bar_w, false);
		}
		tf_eol(t);
	}
	if (t->rows < t->height) {
		tf_put(t, "\033[2mq or Ctrl-C quits; refresh every second\033[0m");
		tf_put(t, "\033[K");
	}
	tf_put(t, "\033[J");
}

static void top_write(const struct top_frame *t)
{
	size_t off = 0;

	while (off < t->len) {
		ssize_t n = write(STDOUT_FILENO, t->buf + off, t->len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		off += (size_t)n;
	}
}

int top_run(const char *sock, double interval_s)
{
	static struct top_frame frame;
	json_t *req = json_pack("{s:s}", "cmd", "stats");
	char err[512] = "";
	int fd = -1, rc = 0;

	if (top_enter(err, sizeof(err)) < 0) {
		fprintf(stderr, "corralctl: %s\n", err);
		json_decref(req);
		return CC_EXIT_USAGE;
	}
	while (!top_stop) {
		struct winsize ws = { 0 };
		json_t *reply = NULL;
		struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
		bool unreachable;
		int waited;

		if (fd < 0)
			fd = client_connect(sock, err, sizeof(err));
		if (fd >= 0) {
			reply = client_request(fd, req, err, sizeof(err), &unreachable);
			if (!reply) {
				close(fd);
				fd = -1;
			} else if (!json_is_true(json_object_get(reply, "ok"))) {
				snprintf(err, sizeof(err), "%s",
					 json_string_value(json_object_get(reply, "error"))
						 ?: "error");
				json_decref(reply);
				reply = NULL;
			}
		}
		if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == -1 || ws.ws_col == 0)
			ws.ws_col = 80, ws.ws_row = 24;
		frame.height = ws.ws_row;
		top_draw(&frame, reply, sock, err, ws.ws_col);
		top_write(&frame);
		json_decref(reply);

		/* Wait for the next refresh, a key, a resize or a signal. */
		for (waited = 0; waited < (int)(interval_s * 1000) && !top_stop && !top_resized;) {
			char keys[32];
			ssize_t n;
			int step = (int)(interval_s * 1000) - waited;

			if (poll(&p, 1, step > 100 ? 100 : step) > 0) {
				n = read(STDIN_FILENO, keys, sizeof(keys));
				for (ssize_t k = 0; k < n; k++)
					if (keys[k] == 'q' || keys[k] == 'Q' || keys[k] == 3)
						top_stop = 1;
			}
			waited += 100;
		}
		top_resized = 0;
	}
	if (fd >= 0)
		close(fd);
	json_decref(req);
	top_restore();
	return rc;
}
