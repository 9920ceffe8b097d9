#!/usr/bin/env bash
# `make run`: starts the demo backend, then corral in the foreground with deploy/corral.yaml.
#
# Usage: deploy/run-demo.sh [BUILD_DIR]   (default: build)
# The backend is stopped when corral exits, however it exits (Ctrl-C included).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
B="${1:-build}"
case "$B" in /*) ;; *) B="$ROOT/$B" ;; esac
CONFIG="$ROOT/deploy/corral.yaml"
# The addresses the default config uses; keep in step with deploy/corral.yaml.
PROXY_ADDR=127.0.0.1:8080
BACKEND_ADDR=127.0.0.1:9000
METRICS_ADDR=127.0.0.1:9901
ADMIN_DIR=/run/corral

die() {
	echo "run-demo: $*" >&2
	exit 1
}

for bin in corral corral-backend; do
	[ -x "$B/$bin" ] || die "$B/$bin not found: build first with 'make all'"
done
[ -r "$CONFIG" ] || die "$CONFIG not found"

# True when something on this machine already listens on TCP port $1.
port_busy() {
	if command -v ss >/dev/null 2>&1; then
		[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

busy=()
for addr in "$PROXY_ADDR" "$BACKEND_ADDR" "$METRICS_ADDR"; do
	port_busy "${addr##*:}" && busy+=("$addr")
done
if [ ${#busy[@]} -gt 0 ]; then
	echo "run-demo: port(s) already in use: ${busy[*]}" >&2
	if command -v ss >/dev/null 2>&1; then
		for addr in "${busy[@]}"; do ss -Hltnp "sport = :${addr##*:}" >&2 || true; done
	fi
	die "stop whatever listens there (another 'make run'?), or edit $CONFIG"
fi

# The control socket's folder; corral needs root anyway (BPF, pinning under /sys/fs/bpf).
if ! mkdir -p "$ADMIN_DIR" 2>/dev/null; then
	echo "run-demo: cannot create $ADMIN_DIR (not root?): corralctl will not reach corral" >&2
fi
[ "$(id -u)" -eq 0 ] ||
	echo "run-demo: not root: corral will run without BPF steering (kernel reuseport hash)" >&2

backend_pid=""
cleanup() {
	if [ -n "$backend_pid" ] && kill -0 "$backend_pid" 2>/dev/null; then
		kill "$backend_pid" 2>/dev/null || true
		wait "$backend_pid" 2>/dev/null || true
	fi
}
trap cleanup EXIT

"$B/corral-backend" --listen "$BACKEND_ADDR" &
backend_pid=$!

# Wait (at most 5 s) until the backend listens, so that the first request does not get a 502.
for _ in $(seq 50); do
	port_busy "${BACKEND_ADDR##*:}" && break
	kill -0 "$backend_pid" 2>/dev/null || die "corral-backend exited at start-up"
	sleep 0.1
done
port_busy "${BACKEND_ADDR##*:}" || die "corral-backend did not start listening on $BACKEND_ADDR"

tip() { printf '    %-52s # %s\n' "$1" "$2"; }
echo
echo "  corral demo: proxy http://$PROXY_ADDR/ -> backend http://$BACKEND_ADDR/"
echo "  config: $CONFIG"
echo
echo "  Try, in another terminal:"
tip "curl http://$PROXY_ADDR/" "Hello, world!"
tip "curl -s http://$PROXY_ADDR/bytes/1000 | wc -c" "1000 bytes from the backend"
tip "$B/corralctl stats" "per-core connections, requests, steering"
tip "curl http://$METRICS_ADDR/metrics" "Prometheus metrics"
echo
echo "  Ctrl-C stops corral and the backend."
echo

# Not exec: the EXIT trap must still run to stop the backend when corral ends.
status=0
"$B/corral" -c "$CONFIG" || status=$?
exit "$status"
