"""The capabilities the deployment files grant are the ones the steering program needs (issue 8,
defect 12): corral started under setpriv with exactly the systemd unit's capability set (those
this machine has) loads the program (`steering: bpf`); without CAP_PERFMON it says so in one line
and keeps the verifier's log for CORRAL_DEBUG=1."""
import os
import re
import signal
import subprocess

import pytest
import yaml

from conftest import REPO, SLOW, binary
import util

CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12,
            "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}


def unit_caps():
    with open(os.path.join(REPO, "deploy", "corral.service")) as f:
        text = f.read()
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    ambient = re.search(r"^AmbientCapabilities=(.*)$", text, re.M).group(1).split()
    assert bounding == ambient, (bounding, ambient)
    return [c[len("CAP_"):] for c in bounding]


def daemonset_caps():
    with open(os.path.join(REPO, "deploy", "k8s-daemonset.yaml")) as f:
        docs = list(yaml.safe_load_all(f))
    ds = [d for d in docs if d and d.get("kind") == "DaemonSet"][0]
    c = ds["spec"]["template"]["spec"]["containers"][0]
    return c["securityContext"]["capabilities"]["add"]


def machine_has(cap):
    with open("/proc/self/status") as f:
        bnd = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", f.read(), re.M).group(1), 16)
    return bool(bnd >> CAP_BITS[cap] & 1)


def run_under(tmp_path, caps, env=None):
    """corral under setpriv with exactly caps; returns (proc, log reader, instance) once ready."""
    n = len(os.listdir(tmp_path))
    d = tmp_path / ("p%d" % n)
    d.mkdir()
    instance = "e2e-caps-%d-%s-%d" % (os.getpid(), tmp_path.name[-12:], n)
    cfg = {"instance": instance, "listen": ["127.0.0.1:0"],
           "workers": {"cores": [0, 1]}, "backends": ["127.0.0.1:9"],
           "admin": {"socket": str(d / "c.sock")}}
    with open(d / "c.yaml", "w") as f:
        yaml.safe_dump(cfg, f)
    spec = ",".join(["-all"] + ["+" + c.lower() for c in caps])
    proc = subprocess.Popen(["setpriv", "--bounding-set", spec, "--inh-caps", "-all",
                             binary("corral"), "-c", str(d / "c.yaml")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    log = util.LogReader(proc.stdout, "corral-caps")
    if not log.wait_for(r"\bready\b", 15 * SLOW):
        proc.kill()
        proc.wait(5)
        pytest.fail("corral did not start under setpriv %s:\n%s" % (spec, log.text()[-3000:]))
    return proc, log, instance


def stop(proc, log, instance):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20 * SLOW) == 0, log.text()[-3000:]
    log.join()
    # Loaded or not, corral leaves no pin folder behind.
    assert not os.path.exists("/sys/fs/bpf/corral/" + instance)
    return log.text()


def test_unit_and_daemonset_grant_what_the_program_needs():
    caps = unit_caps()
    assert {"BPF", "PERFMON", "NET_ADMIN"} <= set(caps), caps
    assert {"BPF", "PERFMON", "NET_ADMIN"} <= set(daemonset_caps()), daemonset_caps()


@pytest.mark.corral_only
def test_steering_loads_with_exactly_the_units_capabilities(tmp_path):
    caps = [c for c in unit_caps() if machine_has(c)]
    assert "PERFMON" in caps and "BPF" in caps, caps
    proc, log, inst = run_under(tmp_path, caps)
    text = stop(proc, log, inst)
    assert re.search(r"info: steering: bpf\b", text), text[-3000:]
    assert "not loaded" not in text


@pytest.mark.corral_only
def test_missing_perfmon_is_one_line_naming_it(tmp_path):
    caps = [c for c in unit_caps() if machine_has(c) and c != "PERFMON"]
    proc, log, inst = run_under(tmp_path, caps)
    text = stop(proc, log, inst)
    steering = [ln for ln in text.splitlines() if "steering" in ln]
    assert len(steering) == 1, text[-3000:]
    assert "missing CAP_PERFMON" in steering[0] and "kernel's reuseport hash" in steering[0], steering
    assert "CAP_SYS_ADMIN" not in steering[0]
    # No verifier log, nor any other libbpf output, at the default level.
    assert "libbpf" not in text and "PROG LOAD LOG" not in text and "pointer arithmetic" not in text
    assert len(text.splitlines()) < 12, text

    # CORRAL_DEBUG=1 shows it.
    proc, log, inst = run_under(tmp_path, caps, env={"CORRAL_DEBUG": "1"})
    text = stop(proc, log, inst)
    assert "pointer arithmetic" in text or "PROG LOAD LOG" in text, text[-3000:]
