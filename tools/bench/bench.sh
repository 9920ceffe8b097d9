#!/usr/bin/env bash
# corral's benchmark: usage: bench.sh BUILD_DIR full|quick (make bench / make bench-quick).
# Runs tools/bench/bench.py (every scenario, every contender, interleaved rounds) and then
# report.py (the Markdown table on stdout, BUILD/bench/results.{csv,json}, PNG plots).
# Settings: BENCH_ROUNDS, BENCH_SECS, BENCH_SCENARIOS ("hello work uneven churn large tls tlshs tlsidle memory").
set -euo pipefail

if [ $# -ne 2 ] || { [ "$2" != full ] && [ "$2" != quick ]; }; then
	echo "usage: $0 BUILD_DIR full|quick" >&2
	exit 2
fi
BUILD=$(realpath -m "$1")
MODE=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3
OUT=$BUILD/bench

# 19,000 idle clients need that many descriptors in the proxy: take the hard limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

for tool in wrk taskset timeout flock nginx haproxy gnuplot openssl; do
	command -v "$tool" >/dev/null || { echo "bench: $tool not found (make deps-bench)" >&2; exit 1; }
done
for bin in corral corral-backend corral-relay corral-tls-load bench/tokio-proxy/release/tokio-proxy; do
	[ -x "$BUILD/$bin" ] || { echo "bench: $BUILD/$bin not built (make bench-bins)" >&2; exit 1; }
done

mkdir -p "$OUT"
# Two benches at once would share the cores and clobber each other's run folder.
exec {LOCK_FD}>"$OUT/lock"
if ! flock -n "$LOCK_FD"; then
	echo "bench: another bench is running on $OUT" >&2
	exit 1
fi
rm -rf "$OUT/run"

# The stamp of every output: machine, commit, date.
META=$("$PY" - "$HERE" <<'PYEOF'
import json, os, subprocess, sys
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, cwd=sys.argv[1]).stdout.strip()
    except OSError:
        return ""
model = ""
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
commit = sh("git", "rev-parse", "--short", "HEAD")
if sh("git", "status", "--porcelain", "--untracked-files=no"):
    commit += "+dirty"
print(json.dumps({
    "cores": os.cpu_count(), "cpu": model, "kernel": os.uname().release, "commit": commit,
    "date": subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip(),
    "nginx": sh("nginx", "-v") or subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1],
    "haproxy": sh("haproxy", "-v").splitlines()[0].split()[2],
    "wrk": sh("sh", "-c", "wrk -v 2>&1 | head -n 1").split()[1] if sh("sh", "-c", "wrk -v 2>&1 | head -n 1") else "",
    "nofile": int(sh("sh", "-c", "ulimit -n") or 0),
}))
PYEOF
)
echo "bench: $MODE run, $META" >&2
rc=0
"$PY" "$HERE/bench.py" "$BUILD" "$MODE" || rc=$?
"$PY" "$HERE/report.py" --dir "$OUT" --meta "$META"
exit $rc
