#!/usr/bin/python3
"""make mutate: apply each planted bug of tools/mutate/mutations.py, one at a time, to a scratch
copy of the tree, build it, run the tests that should catch it, and report KILLED or SURVIVED.

  /usr/bin/python3 tools/mutate/mutate.py [--only NAME ...] [--list] [--keep] [--no-record]

The scratch copy is the working tree (tracked and untracked files, without .git and build/) in
a temporary folder, built once with `make -j2 all`; then for each mutation the one file is
changed, the binaries are rebuilt (make rebuilds only what changed), the mutation's tests run
(pytest -x), and the file is put back. Before any mutation the union of all selected tests runs
once on the unmutated copy: a red baseline would make every mutation look killed.

Results:
  KILLED        the tests failed (or ran out of time) with the bug in place: good
  SURVIVED      the tests passed with the bug in place: a test is missing
  STALE         the search text is not in the file (or not exactly once): update the list
  BUILD-FAILED  the mutated tree does not compile: fix the mutation
  ERROR         pytest could not run (collection error, no tests selected)
The exit code is 0 only when every mutation was KILLED. Unless --no-record is given (or --only
is used), the table is written to tools/mutate/last-result.txt with the date and the commit.
"""
import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PYTHON = "/usr/bin/python3"
TEST_TIMEOUT_S = 300
BINS = ["build/corral", "build/corral-backend", "build/corralctl"]

sys.path.insert(0, HERE)
from mutations import MUTATIONS  # noqa: E402


def sh(cmd, cwd, timeout=None, env=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def commit_id():
    r = sh(["git", "rev-parse", "--short", "HEAD"], REPO)
    head = r.stdout.strip() if r.returncode == 0 else "unknown"
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"], REPO).stdout.strip()
    return head + ("+uncommitted changes" if dirty else "")


def copy_tree(dst):
    def ignore(folder, names):
        if os.path.abspath(folder) == REPO:
            return [n for n in names if n in (".git", "build")]
        return [n for n in names if n in ("__pycache__", ".pytest_cache")]

    shutil.copytree(REPO, dst, symlinks=True, ignore=ignore)


def check(m, root):
    """None when the mutation applies (its search text occurs exactly once), else why not."""
    path = os.path.join(root, m["file"])
    if not os.path.exists(path):
        return "%s does not exist" % m["file"]
    with open(path) as f:
        n = f.read().count(m["search"])
    if n != 1:
        return "search text found %d times in %s (need exactly 1)" % (n, m["file"])
    return None


def build(root):
    return sh(["make", "-j2", "--no-print-directory"] + BINS, root, timeout=900)


def first_failure(out):
    for ln in out.splitlines():
        if ln.startswith(("FAILED ", "ERROR ")):
            return ln.split(" - ")[0]
    return "tests failed"


def pytest(root, args, log):
    env = dict(os.environ, CORRAL_BUILD=os.path.join(root, "build"))
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [PYTHON, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"] + args
    try:
        r = sh(cmd, root, timeout=TEST_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")
        log.write("$ %s\nTIMEOUT after %d s\n%s\n" % (" ".join(cmd), TEST_TIMEOUT_S,
                                                     out.decode() if isinstance(out, bytes) else out))
        return "timeout"
    log.write("$ %s\nrc %d\n%s\n%s\n" % (" ".join(cmd), r.returncode, r.stdout[-20000:], r.stderr[-5000:]))
    pytest.last_failure = first_failure(r.stdout)
    return r.returncode


def summary_line(out_tail):
    lines = [ln for ln in out_tail.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--no-record", action="store_true", help="do not write last-result.txt")
    a = ap.parse_args()

    chosen = MUTATIONS
    if a.only:
        names = {m["name"] for m in MUTATIONS}
        unknown = [n for n in a.only if n not in names]
        if unknown:
            sys.exit("mutate: unknown mutation(s): %s" % ", ".join(unknown))
        chosen = [m for m in MUTATIONS if m["name"] in a.only]
    if a.list:
        for m in chosen:
            print("%-34s %-18s %s" % (m["name"], m["file"], " ".join(m["tests"])))
        return 0
    names = [m["name"] for m in MUTATIONS]
    assert len(set(names)) == len(names), "duplicate mutation names"

    started = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="corral-mutate-")
    root = os.path.join(scratch, "tree")
    log_path = os.path.join(scratch, "mutate.log")
    print("mutate: scratch copy %s (log %s)" % (root, log_path), flush=True)
    results = []  # (name, file, result, seconds, detail)
    rc = 1
    with open(log_path, "w") as log:
        try:
            copy_tree(root)
            runnable = []
            for m in chosen:
                why = check(m, root)
                if why:
                    results.append((m["name"], m["file"], "STALE", 0.0, why))
                    print("mutate: %-34s STALE: %s" % (m["name"], why), flush=True)
                else:
                    runnable.append(m)
            r = build(root)
            if r.returncode != 0:
                print("mutate: the unmutated tree does not build:\n%s" % r.stderr[-3000:])
                return 2
            tests = []
            for m in runnable:
                for t in m["tests"]:
                    if t not in tests:
                        tests.append(t)
            t0 = time.monotonic()
            base = pytest(root, tests, log) if tests else 0
            if base != 0:
                print("mutate: BASELINE FAILED (rc %s): the selected tests fail without any mutation; "
                      "see %s" % (base, log_path))
                a.keep = True
                return 2
            print("mutate: baseline green (%d test selections, %.0f s)" % (len(tests), time.monotonic() - t0),
                  flush=True)
            for m in runnable:
                t0 = time.monotonic()
                path = os.path.join(root, m["file"])
                with open(path) as f:
                    orig = f.read()
                log.write("\n===== %s (%s) =====\n" % (m["name"], m["file"]))
                try:
                    with open(path, "w") as f:
                        f.write(orig.replace(m["search"], m["replace"], 1))
                    b = build(root)
                    if b.returncode != 0:
                        log.write(b.stdout[-5000:] + b.stderr[-5000:])
                        errs = [ln for ln in b.stderr.splitlines() if "error:" in ln]
                        res, detail = "BUILD-FAILED", (errs[0] if errs else summary_line(b.stderr))[:200]
                    else:
                        prc = pytest(root, m["tests"], log)
                        if prc == "timeout":
                            res, detail = "KILLED", "tests ran out of time (%d s)" % TEST_TIMEOUT_S
                        elif prc == 1:
                            res, detail = "KILLED", pytest.last_failure
                        elif prc == 0:
                            res, detail = "SURVIVED", "tests passed with the bug in place"
                        else:
                            res, detail = "ERROR", "pytest exit code %s" % prc
                finally:
                    with open(path, "w") as f:
                        f.write(orig)
                secs = time.monotonic() - t0
                results.append((m["name"], m["file"], res, secs, detail))
                print("mutate: %-34s %-12s %5.1f s  %s" % (m["name"], res, secs, detail), flush=True)
            rc = 0 if all(r[2] == "KILLED" for r in results) else 1
        finally:
            if not a.keep:
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                print("mutate: kept %s" % scratch)

    order = {m["name"]: i for i, m in enumerate(MUTATIONS)}
    results.sort(key=lambda r: order[r[0]])
    counts = {}
    for r in results:
        counts[r[2]] = counts.get(r[2], 0) + 1
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# make mutate: %s, commit %s, %d mutations, %.0f s" % (stamp, commit_id(), len(results),
                                                                   time.monotonic() - started),
             "# " + ", ".join("%s %d" % kv for kv in sorted(counts.items())),
             "%-34s %-18s %-12s %7s  %s" % ("mutation", "file", "result", "seconds", "detail")]
    for name, f, res, secs, detail in results:
        lines.append("%-34s %-18s %-12s %7.1f  %s" % (name, f, res, secs, detail))
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="")
    if not a.no_record and not a.only:
        with open(os.path.join(HERE, "last-result.txt"), "w") as f:
            f.write(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
