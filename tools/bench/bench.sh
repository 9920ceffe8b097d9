#!/usr/bin/env bash
# Benchmark corral against NGINX and HAProxy (one pinned worker each, same backend): req/s, latency,
# proxy CPU per request, and RSS per idle keep-alive connection. Usage: bench.sh BUILD_DIR
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]  length of one measured wrk run     BENCH_ROUNDS [3]  interleaved rounds
#   BENCH_CONNS [64]    wrk connections                    BENCH_WARMUP [2]  unmeasured seconds before each run
#   BENCH_PATH [/]      request path                       BENCH_IDLE_CONNS [10000]  idle-RSS connections
#   BENCH_PROXIES ["corral nginx haproxy"]                 BENCH_SKIP_RSS [0]  1 = no idle-RSS phase
#   BENCH_PROXY_CPU [0] core of the proxy under test       BENCH_LOAD_CPU [1]  core of wrk and backend
#   BENCH_RSS_WARMUP [2] seconds of wrk load before the idle-RSS baseline (0 = none)
#   BENCH_QUIET_WAIT [150] seconds (whole run) that may be spent waiting, before each measured run,
#                     until both cores are below BENCH_QUIET_PCT [20] % busy (a shared machine)
#   BENCH_BACKEND [auto] "corral-backend", "nginx" (stand-in) or auto (corral-backend if built)
set -euo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 BUILD_DIR" >&2
	exit 2
fi
BUILD=$(realpath -m "$1")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3
OUT=$BUILD/bench
RUN=$OUT/run

SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-64}
WARMUP=${BENCH_WARMUP:-2}
REQ_PATH=${BENCH_PATH:-/}
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
PROXIES=${BENCH_PROXIES:-corral nginx haproxy}
SKIP_RSS=${BENCH_SKIP_RSS:-0}
RSS_WARMUP=${BENCH_RSS_WARMUP:-2}
QUIET_BUDGET=${BENCH_QUIET_WAIT:-150}
QUIET_PCT=${BENCH_QUIET_PCT:-20}
PCPU=${BENCH_PROXY_CPU:-0}
LCPU=${BENCH_LOAD_CPU:-1}
BACKEND_KIND=${BENCH_BACKEND:-auto}
CLK_TCK=$(getconf CLK_TCK)
# Room for the idle-RSS clients plus the load, in every proxy's connection limit.
MAXCONN=$((IDLE_CONNS + 2048))

# 10k idle clients need 10k descriptors in the client and in the proxy. Ask for 65536; a container
# may cap the hard limit lower, so fall back to the hard limit and check that it is enough.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [ "$NOFILE" -lt $((IDLE_CONNS + 256)) ]; then
	echo "bench: RLIMIT_NOFILE is $NOFILE, need $((IDLE_CONNS + 256)) for $IDLE_CONNS idle connections" >&2
	exit 1
fi

for tool in wrk taskset setsid timeout flock curl nginx haproxy; do
	command -v "$tool" >/dev/null || { echo "bench: $tool not found (make deps)" >&2; exit 1; }
done

mkdir -p "$OUT"
# Two benches at once would share the cores and clobber each other's run folder.
exec {LOCK_FD}>"$OUT/lock"
if ! flock -n "$LOCK_FD"; then
	echo "bench: another bench is running on $OUT" >&2
	exit 1
fi
rm -rf "$RUN"
mkdir -p "$RUN"
SAMPLES=$RUN/samples.jsonl
RSSFILE=$RUN/rss.jsonl
NOTES=$RUN/notes.jsonl
: >"$SAMPLES"
: >"$RSSFILE"
: >"$NOTES"

# --- process bookkeeping: everything we start is a session leader, killed as a group on exit ---------
PGIDS=()
FG_PID=

cleanup() {
	local pg i
	trap - EXIT INT TERM
	# timeout(1) leads its own process group; killing the group stops it and wrk/the client.
	if [ -n "$FG_PID" ]; then
		kill -TERM -- "-$FG_PID" 2>/dev/null || kill -TERM "$FG_PID" 2>/dev/null || true
	fi
	for pg in "${PGIDS[@]}"; do
		kill -TERM -- "-$pg" 2>/dev/null || true
	done
	for i in $(seq 1 30); do
		local alive=0
		for pg in "${PGIDS[@]}"; do
			kill -0 -- "-$pg" 2>/dev/null && alive=1
		done
		[ $alive -eq 0 ] && break
		sleep 0.1
	done
	for pg in "${PGIDS[@]}"; do
		kill -KILL -- "-$pg" 2>/dev/null || true
	done
	PGIDS=()
}
trap cleanup EXIT
# A trap may fire inside a call whose output goes to /dev/null: report on the stderr we started with.
exec {STDERR_FD}>&2
trap 'echo "bench: interrupted, stopping everything it started" >&$STDERR_FD; exit 130' INT TERM

# Runs a bounded command ("timeout ...") in the background and waits for it: bash runs an INT/TERM
# trap at once while in "wait", whereas after a foreground wrk that caught the SIGINT and exited 0 it
# would carry on as if nothing happened.
run_fg() {
	local rc=0
	"$@" &
	FG_PID=$!
	wait "$FG_PID" || rc=$?
	FG_PID=
	return $rc
}

# Starts "$@" in a new session on core $cpu with output to $log; sets SPAWNED_PID (== its pgid).
spawn() {
	local cpu=$1 log=$2
	shift 2
	setsid taskset -c "$cpu" "$@" </dev/null >"$log" 2>&1 &
	SPAWNED_PID=$!
	PGIDS+=("$SPAWNED_PID")
}

# Stops one process group that spawn() started and forgets it.
stop_group() {
	local pg=$1 i keep=()
	kill -TERM -- "-$pg" 2>/dev/null || true
	for i in $(seq 1 50); do
		kill -0 -- "-$pg" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL -- "-$pg" 2>/dev/null || true
	wait "$pg" 2>/dev/null || true
	for i in "${PGIDS[@]}"; do
		[ "$i" != "$pg" ] && keep+=("$i")
	done
	PGIDS=("${keep[@]}")
}

# Prints N distinct free loopback ports: bound to port 0 by the kernel, all held until all are known.
free_ports() {
	"$PY" -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
' "$1"
}

# Waits up to $2 seconds until 127.0.0.1:$1 accepts; 0 or 1.
wait_port() {
	local port=$1 i
	for i in $(seq 1 $(($2 * 20))); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.05
	done
	return 1
}

# Fills a template: render TEMPLATE OUT KEY=VALUE...
render() {
	local tpl=$1 out=$2 kv args=()
	shift 2
	for kv in "$@"; do
		args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
	done
	sed "${args[@]}" "$tpl" >"$out"
}

# Sum of utime+stime (clock ticks) over the given pids; fields after the ")" of comm.
cpu_ticks() {
	local pid total=0 t
	for pid in "$@"; do
		t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{printf "%.0f\n", $12 + $13}')
		total=$((total + t))
	done
	echo "$total"
}

# Nanoseconds on CPU (the scheduler's count) of every live thread of the given pids: a cross-check of
# utime+stime, which the kernel scales to the same runtime but reports in 10 ms units. (mawk's %d
# stops at 2^31, hence %.0f everywhere.)
sched_ns() {
	local pid
	for pid in "$@"; do
		cat /proc/"$pid"/task/*/schedstat 2>/dev/null
	done | awk '{s += $1} END {printf "%.0f\n", s}'
}

# "busy total steal" clock ticks of CPU $1 from /proc/stat.
core_ticks() {
	awk -v c="cpu$1" '$1 == c {
		busy = $2 + $3 + $4 + $7 + $8 + $9; printf "%.0f %.0f %.0f\n", busy, busy + $5 + $6, $9 }' /proc/stat
}

# Before a measurement, waits (0.5 s steps, at most QUIET_BUDGET s over the whole run) until both
# cores are nearly idle, so that another job on the machine does not land inside a measured window.
QUIET_LEFT=$QUIET_BUDGET
wait_quiet() {
	local pb0 pt0 lb0 lt0 pb1 pt1 lb1 lt1 start=$SECONDS
	while [ "$QUIET_LEFT" -gt 0 ]; do
		read -r pb0 pt0 _ <<<"$(core_ticks "$PCPU")"
		read -r lb0 lt0 _ <<<"$(core_ticks "$LCPU")"
		sleep 0.5
		read -r pb1 pt1 _ <<<"$(core_ticks "$PCPU")"
		read -r lb1 lt1 _ <<<"$(core_ticks "$LCPU")"
		if [ $(((pb1 - pb0) * 100)) -le $((QUIET_PCT * (pt1 - pt0))) ] &&
			[ $(((lb1 - lb0) * 100)) -le $((QUIET_PCT * (lt1 - lt0))) ]; then
			break
		fi
		if [ $((SECONDS - start)) -ge "$QUIET_LEFT" ]; then
			note "the machine stayed busy: waited ${QUIET_BUDGET} s in all for quiet cores; measuring anyway"
			QUIET_LEFT=0
			return 0
		fi
	done
	QUIET_LEFT=$((QUIET_LEFT - (SECONDS - start)))
	return 0
}

# Pids of the direct children of $1.
children() {
	cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true
}

vmrss_kb() {
	awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# The first child of $1 (NGINX's worker), waiting up to 2.5 s for the master to fork it; "" if none.
wait_child() {
	local i w
	for i in $(seq 1 50); do
		w=$(children "$1" | head -n 1)
		[ -n "$w" ] && break
		sleep 0.05
	done
	echo "$w"
}

note() {
	echo "bench: $*" >&2
	"$PY" -c 'import json,sys; print(json.dumps({"note": sys.argv[1]}))' "$*" >>"$NOTES"
}

# One GET through the proxy; succeeds if the answer is a 200.
check_get() {
	curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$REQ_PATH" 2>/dev/null | grep -q '^200$'
}

# --- the backend -------------------------------------------------------------------------------------
if [ "$BACKEND_KIND" = auto ]; then
	if [ -x "$BUILD/corral-backend" ]; then BACKEND_KIND=corral-backend; else BACKEND_KIND=nginx; fi
fi

start_backend() {
	local port=$1 dir=$RUN/backend
	mkdir -p "$dir"
	case $BACKEND_KIND in
	corral-backend)
		spawn "$LCPU" "$dir/log" "$BUILD/corral-backend" --listen "127.0.0.1:$port" --threads 1
		;;
	nginx)
		render "$HERE/nginx-backend.conf.in" "$dir/nginx.conf" DIR="$dir" PORT="$port" \
			CPU_MASK="$(cpu_mask "$LCPU")" NOFILE="$NOFILE"
		spawn "$LCPU" "$dir/log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
		;;
	*)
		echo "bench: BENCH_BACKEND must be corral-backend, nginx or auto" >&2
		exit 2
		;;
	esac
	BACKEND_PID=$SPAWNED_PID
	wait_port "$port" 5 || { echo "bench: backend did not start:"; cat "$dir/log" "$dir/error.log" 2>/dev/null; exit 1; } >&2
	# The stand-in's work is done by its worker process: account both.
	BACKEND_PIDS=$BACKEND_PID
	if [ "$BACKEND_KIND" = nginx ]; then
		BACKEND_PIDS="$BACKEND_PID $(wait_child "$BACKEND_PID")"
	fi
}

# nginx's worker_cpu_affinity wants a bit mask, lowest CPU rightmost.
cpu_mask() {
	local m="1" i
	for i in $(seq 1 "$1"); do m="${m}0"; done
	echo "$m"
}

# --- the proxies ---------------------------------------------------------------------------------------
# start_proxy NAME PORT TAG: starts it and sets PROXY_PID (to signal), PROXY_PIDS (to account CPU),
# PROXY_RSS_PID (the process serving connections). Returns 1 if it did not come up.
start_proxy() {
	local name=$1 port=$2 dir=$RUN/$1-$3 i
	mkdir -p "$dir"
	case $name in
	corral)
		if [ ! -x "$BUILD/corral" ]; then
			note "corral: $BUILD/corral not built"
			return 1
		fi
		render "$HERE/corral.yaml.in" "$dir/corral.yaml" PORT="$port" BACKEND_PORT="$BACKEND_PORT" \
			CPU="$PCPU" MAXCONN="$MAXCONN"
		spawn "$PCPU" "$dir/log" "$BUILD/corral" -c "$dir/corral.yaml"
		PROXY_PID=$SPAWNED_PID
		# Loading and verifying the steering program can take seconds on a busy machine.
		for i in $(seq 1 600); do
			grep -qw ready "$dir/log" 2>/dev/null && break
			kill -0 "$PROXY_PID" 2>/dev/null || break
			sleep 0.05
		done
		if ! grep -qw ready "$dir/log" 2>/dev/null; then
			note "corral: no \"ready\" within 30 s: $(tail -n 3 "$dir/log" | tr '\n' ' ')"
			stop_group "$PROXY_PID"
			return 1
		fi
		PROXY_PIDS="$PROXY_PID"
		PROXY_RSS_PID=$PROXY_PID
		;;
	nginx)
		render "$HERE/nginx-proxy.conf.in" "$dir/nginx.conf" DIR="$dir" PORT="$port" \
			BACKEND_PORT="$BACKEND_PORT" CPU_MASK="$(cpu_mask "$PCPU")" NOFILE="$NOFILE" \
			MAXCONN="$MAXCONN"
		spawn "$PCPU" "$dir/log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
		PROXY_PID=$SPAWNED_PID
		;;
	haproxy)
		render "$HERE/haproxy.cfg.in" "$dir/haproxy.cfg" DIR="$dir" PORT="$port" \
			BACKEND_PORT="$BACKEND_PORT" CPU="$PCPU" NOFILE="$NOFILE" MAXCONN="$MAXCONN"
		# -db: foreground, no master process: one process does everything.
		spawn "$PCPU" "$dir/log" haproxy -db -f "$dir/haproxy.cfg"
		PROXY_PID=$SPAWNED_PID
		PROXY_PIDS="$PROXY_PID"
		PROXY_RSS_PID=$PROXY_PID
		;;
	esac
	if ! wait_port "$port" 5; then
		note "$name: not listening on $port within 5 s: $(tail -n 3 "$dir/log" | tr '\n' ' ')"
		stop_group "$PROXY_PID"
		return 1
	fi
	if [ "$name" = nginx ]; then
		local w
		w=$(wait_child "$PROXY_PID")
		if [ -z "$w" ]; then
			note "nginx: no worker process"
			stop_group "$PROXY_PID"
			return 1
		fi
		PROXY_PIDS="$PROXY_PID $w"
		PROXY_RSS_PID=$w
	fi
	if ! check_get "$port"; then
		note "$name: GET $REQ_PATH through the proxy did not answer 200: $(tail -n 3 "$dir/log" | tr '\n' ' ')"
		stop_group "$PROXY_PID"
		return 1
	fi
	return 0
}

# --- phase 1: throughput, latency, CPU per request ---------------------------------------------------------
read -r BACKEND_PORT <<<"$(free_ports 1)"
start_backend "$BACKEND_PORT"
echo "bench: backend $BACKEND_KIND on 127.0.0.1:$BACKEND_PORT (core $LCPU); proxies on core $PCPU;" \
	"wrk -t1 -c$CONNS on core $LCPU; ${ROUNDS}x${SECS}s per proxy; nofile $NOFILE" >&2

declare -A PORT PID PIDS
UP=()
read -r -a ports <<<"$(free_ports 3)"
i=0
for p in $PROXIES; do
	if start_proxy "$p" "${ports[$i]}" load; then
		PORT[$p]=${ports[$i]}
		PID[$p]=$PROXY_PID
		PIDS[$p]=$PROXY_PIDS
		UP+=("$p")
	fi
	i=$((i + 1))
done
if [ ${#UP[@]} -eq 0 ]; then
	echo "bench: no proxy came up" >&2
	exit 1
fi

URLFOR() { echo "http://127.0.0.1:${PORT[$1]}$REQ_PATH"; }

# Runs one wrk measurement against proxy $1 in round $2 and appends a sample.
measure() {
	local p=$1 round=$2 log=$RUN/wrk-$1-$2.log before after bbefore bafter cbefore cafter wjson sample
	local sbefore safter ppids bpids
	local cb0 ct0 cs0 cb1 ct1 cs1
	wait_quiet
	# Unmeasured warm-up: fills the proxy's upstream pool and the caches.
	if [ "$WARMUP" -gt 0 ]; then
		run_fg timeout $((WARMUP + 20)) taskset -c "$LCPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$(URLFOR "$p")" \
			>/dev/null 2>&1 || true
	fi
	cbefore=$(core_ticks "$PCPU")
	read -r -a ppids <<<"${PIDS[$p]}"
	read -r -a bpids <<<"$BACKEND_PIDS"
	before=$(cpu_ticks "${ppids[@]}")
	sbefore=$(sched_ns "${ppids[@]}")
	bbefore=$(cpu_ticks "${bpids[@]}")
	run_fg timeout $((SECS + 30)) taskset -c "$LCPU" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency \
		-s "$HERE/wrk-report.lua" "$(URLFOR "$p")" >"$log" 2>&1 || true
	after=$(cpu_ticks "${ppids[@]}")
	safter=$(sched_ns "${ppids[@]}")
	bafter=$(cpu_ticks "${bpids[@]}")
	cafter=$(core_ticks "$PCPU")
	wjson=$(sed -n 's/^WRKJSON //p' "$log")
	if [ -z "$wjson" ]; then
		note "$p round $round: wrk gave no result: $(tail -n 3 "$log" | tr '\n' ' ')"
		return
	fi
	read -r cb0 ct0 cs0 <<<"$cbefore"
	read -r cb1 ct1 cs1 <<<"$cafter"
	sample="{\"proxy\":\"$p\",\"round\":$round,\"cpu_ticks\":$((after - before)),"
	sample+="\"sched_ns\":$((safter - sbefore)),\"backend_cpu_ticks\":$((bafter - bbefore)),\"clk_tck\":$CLK_TCK,"
	sample+="\"core_busy_ticks\":$((cb1 - cb0)),\"core_total_ticks\":$((ct1 - ct0)),"
	sample+="\"core_steal_ticks\":$((cs1 - cs0)),\"wrk\":$wjson}"
	echo "$sample" >>"$SAMPLES"
	"$PY" - "$sample" <<'EOF' >&2
import json, sys
s = json.loads(sys.argv[1]); w = s["wrk"]
rps = w["requests"] / (w["duration_us"] / 1e6)
cpu = s["cpu_ticks"] * 1e6 / s["clk_tck"] / max(1, w["requests"])
errs = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"]
tot = max(1, s["core_total_ticks"])
other = 100.0 * max(0, s["core_busy_ticks"] - s["cpu_ticks"]) / tot
print(f"bench: round {s['round']} {s['proxy']:8s} {rps:8.0f} req/s  p50 {w['p50_us']:6d} us"
      f"  p99 {w['p99_us']:7d} us  cpu {cpu:6.2f} us/req  proxy busy {100.0 * s['cpu_ticks'] / tot:3.0f}%"
      f"  other on its core {other:3.0f}%  errors {errs}")
EOF
}

for round in $(seq 1 "$ROUNDS"); do
	# Rotate the order each round so that no proxy always runs first or last on a noisy machine.
	n=${#UP[@]}
	for k in $(seq 0 $((n - 1))); do
		p=${UP[$(((k + round - 1) % n))]}
		if ! kill -0 "${PID[$p]}" 2>/dev/null; then
			note "$p died before round $round"
			continue
		fi
		measure "$p" "$round"
	done
done

for p in "${UP[@]}"; do
	stop_group "${PID[$p]}"
done

# --- phase 2: RSS per idle keep-alive connection -------------------------------------------------------------
if [ "$SKIP_RSS" != 1 ]; then
	for p in $PROXIES; do
		read -r port <<<"$(free_ports 1)"
		start_proxy "$p" "$port" rss || continue
		log=$RUN/rss-$p.log
		fresh=$(vmrss_kb "$PROXY_RSS_PID")
		# Bring the proxy to its loaded steady state first (pools, buffer rings, caches touched),
		# so that the delta below is what idle connections cost and not one-time first touches.
		run_fg timeout $((RSS_WARMUP + 20)) taskset -c "$LCPU" wrk -t1 -c"$CONNS" -d"${RSS_WARMUP}s" \
			"http://127.0.0.1:$port$REQ_PATH" >"$RUN/rss-warmup-$p.log" 2>&1 || true
		# The client is pinned with the backend; the proxy keeps its own core.
		if run_fg timeout 150 taskset -c "$LCPU" "$PY" "$HERE/idle_conns.py" --port "$port" \
			--pid "$PROXY_RSS_PID" --count "$IDLE_CONNS" --path "$REQ_PATH" --timeout 120 \
			>"$log" 2>&1; then
			:
		else
			note "$p: idle-connection client failed: $(tail -n 3 "$log" | tr '\n' ' ')"
		fi
		rjson=$(tail -n 1 "$log")
		if [ "${rjson:0:1}" = "{" ]; then
			echo "{\"proxy\":\"$p\",\"rss_fresh_kb\":$fresh,\"rss\":$rjson}" >>"$RSSFILE"
			echo "bench: idle $p: $rjson" >&2
		fi
		stop_group "$PROXY_PID"
	done
fi

stop_group "$BACKEND_PID"

# --- report -------------------------------------------------------------------------------------------------------
"$PY" "$HERE/report.py" --samples "$SAMPLES" --rss "$RSSFILE" --notes "$NOTES" --out "$OUT/results.json" \
	--proxies "$PROXIES" --meta "$("$PY" -c 'import json,sys; print(json.dumps(dict(a.split("=",1) for a in sys.argv[1:])))' \
		backend="$BACKEND_KIND" seconds="$SECS" rounds="$ROUNDS" conns="$CONNS" path="$REQ_PATH" \
		proxy_cpu="$PCPU" load_cpu="$LCPU" idle_conns="$IDLE_CONNS" nofile="$NOFILE" \
		kernel="$(uname -r)" nginx="$(nginx -v 2>&1 | sed 's|.*/||')" \
		haproxy="$(haproxy -v | head -n 1 | awk '{print $3}')" \
		date="$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
