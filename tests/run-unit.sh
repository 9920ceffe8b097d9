#!/usr/bin/env bash
# Runs every Criterion unit-test binary given and prints one closing summary line, with the
# number of skipped tests and why (a skip is a failure under CI=true or CI=1: tests/unit/need.h).
set -u
pass=0; fail=0; skipped=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in "$@"; do
	report="$tmp/$(basename "$t").json"
	if "$t" --jobs=2 --json="$report"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAILED: $t"; fi
	# Criterion's text summary does not count skips; its JSON report does.
	n=$(/usr/bin/python3 - "$report" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(0)
    sys.exit()
for s in r.get("test_suites", []):
    for t in s.get("tests", []):
        if t.get("status") == "SKIPPED":
            print("SKIPPED: %s::%s: %s" % (s["name"], t["name"], "; ".join(t.get("messages", []))),
                  file=sys.stderr)
print(r.get("skipped", 0))
PY
)
	skipped=$((skipped + n))
done
echo "unit: $pass passed, $fail failed, $skipped tests skipped"
[ "$fail" -eq 0 ]
