#!/usr/bin/env bash
# Robustness check: runs the unit and end-to-end tests N times in a row while a busy loop keeps
# one CPU busy, and prints how many runs passed. A test that fails here but not on an idle
# machine has a timing assumption to fix (derive it from SLOW, or poll a condition).
#
#   tests/under-load.sh N                       # make unit e2e, N times
#   TARGETS="test" tests/under-load.sh N        # the whole make test (deps, fuzz smoke too)
#   PYTEST_ARGS="-k limits" tests/under-load.sh 1   # a subset of the e2e tests
#
# Environment: TARGETS (make targets, default "unit e2e"), BUSY_CPU (the CPU the loop is pinned
# to, default 0), RUN_MAX_S (a run's time limit, default 900), and whatever make and the tests
# read (PYTEST_ARGS, CORRAL_SLOW, E2E_JOBS ...). CI defaults to true here: a test that skips
# counts as failed, as in CI. The busy loop is this script's own child, bounded in time
# (N x RUN_MAX_S), and stopped by its pid when the script ends; a run during which it was not
# running counts as failed. Each run's result is printed; the exit status is 0 only if every
# run passed.
set -u
cd "$(dirname "$0")/.." || exit 2
export CI=${CI:-true}
n=${1:-}
case "$n" in '' | *[!0-9]*) echo "usage: $0 N (number of runs)" >&2; exit 2 ;; esac
[ "$n" -ge 1 ] || { echo "usage: $0 N (number of runs, at least 1)" >&2; exit 2; }
targets=${TARGETS:-unit e2e}
cpu=${BUSY_CPU:-0}
run_max=${RUN_MAX_S:-900}
logs=build/under-load
mkdir -p "$logs"

make -j2 all >"$logs/build.log" 2>&1 || { echo "under-load: build failed, see $logs/build.log" >&2; exit 1; }

# One CPU kept busy: a shell loop pinned to $cpu, killed by timeout(1) at the latest after the
# longest the runs may take, and by pid below.
timeout "$((n * run_max + 60))" taskset -c "$cpu" bash -c 'while :; do :; done' &
busy=$!
trap 'kill "$busy" 2>/dev/null; wait "$busy" 2>/dev/null' EXIT
sleep 0.2
kill -0 "$busy" 2>/dev/null || { echo "under-load: the busy loop did not start" >&2; exit 1; }

pass=0; fail=0
for i in $(seq 1 "$n"); do
	log="$logs/run-$i.log"
	t0=$(date +%s)
	# shellcheck disable=SC2086 # targets is a list of words
	if timeout "$run_max" make --no-print-directory $targets >"$log" 2>&1; then
		verdict=passed
	else
		verdict="FAILED (log: $log)"
	fi
	if ! kill -0 "$busy" 2>/dev/null; then
		verdict="FAILED (the busy loop was not running; log: $log)"
	fi
	case "$verdict" in passed) pass=$((pass + 1)) ;; *) fail=$((fail + 1)) ;; esac
	summary=$(grep -E '^unit: |[0-9]+ (passed|failed|errors?|deselected)|no tests ran' "$log" | tr '\n' ' ')
	echo "under-load: run $i/$n $verdict in $(($(date +%s) - t0)) s: $summary"
done
echo "under-load: $pass passed, $fail failed of $n runs (make $targets, CPU $cpu busy)"
[ "$fail" -eq 0 ]
