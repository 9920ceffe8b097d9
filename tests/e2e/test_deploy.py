"""The deployment scripts (issue 8, defect 13): separate package sets for running, testing and
benchmarking, `make run` installs only the run set, and no script stops, disables or kills a
service or process it did not start. No package is installed here: only --print is run."""
import glob
import os
import re
import subprocess

from conftest import REPO

SCRIPT = os.path.join(REPO, "deploy", "install-deps.sh")


def pkgs(*sets):
    r = subprocess.run(["bash", SCRIPT, "--print", *sets], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    return r.stdout.split()


def test_package_sets():
    run, test, bench = set(pkgs("run")), set(pkgs("test")), set(pkgs("bench"))
    assert pkgs() == pkgs("run"), "the default set is the run set"
    # Running needs the compiler, the BPF tool chain and the libraries corral links.
    assert {"clang", "bpftool", "libbpf-dev", "liburing-dev", "node-llhttp", "libyaml-dev",
            "libjansson-dev", "liburcu-dev", "libxxhash-dev"} <= run
    # ...and none of the test or benchmark tools.
    assert not run & {"nginx", "haproxy", "wrk", "libcriterion-dev", "python3-pytest", "tmux"}, run
    assert run < test and run < bench
    # wrk drives the soak and access-log tests' load; haproxy is the L4 tier of the PROXY
    # protocol test (tests/e2e/test_proxy_protocol.py); nginx is the benchmark's only.
    assert {"libcriterion-dev", "python3-pytest", "python3-yaml", "tmux", "wrk", "haproxy"} <= test
    assert not test & {"nginx"}, test
    assert {"nginx", "haproxy", "wrk"} <= bench
    both = pkgs("test", "bench")
    assert len(both) == len(set(both)) and set(both) == test | bench
    r = subprocess.run(["bash", SCRIPT, "--print", "everything"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown package set" in r.stderr


def test_make_targets_install_their_own_set():
    def dry(target):
        r = subprocess.run(["make", "-s", "-n", "-C", REPO, target], capture_output=True, text=True,
                           timeout=60)
        lines = [ln for ln in r.stdout.splitlines() if "install-deps.sh" in ln]
        assert len(lines) == 1, (target, r.stdout, r.stderr)
        return lines[0].split("install-deps.sh", 1)[1].split()

    assert dry("run") == ["run"]
    assert dry("test") == ["test"]
    assert dry("bench") == ["bench"]


def test_no_script_stops_or_kills_what_it_did_not_start():
    scripts = [SCRIPT] + glob.glob(os.path.join(REPO, "deploy", "*.sh")) + \
        glob.glob(os.path.join(REPO, "tools", "bench", "*.sh"))
    bad = re.compile(r"\b(systemctl|service|pkill|killall|invoke-rc\.d|update-rc\.d)\b")
    for path in sorted(set(scripts)):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                code = line.split("#", 1)[0]
                assert not bad.search(code), "%s:%d: %s" % (path, n, line.strip())
