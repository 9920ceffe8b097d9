"""A plain second start on a live listen address (issue 8, defect 6) fails with one clear line and
a non-zero exit, and leaves the running corral alone: its listeners, steering and control socket."""
import os
import re
import socket
import subprocess

import pytest
import yaml

from conftest import SLOW, binary
from upstreams import ctl_json
from util import Client


def listeners(port):
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True, text=True, timeout=10)
    return len([ln for ln in out.stdout.splitlines() if ln.strip()])


def start_second(tmp_path, cfg, name):
    path = str(tmp_path / ("%s.yaml" % name))
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return subprocess.run([binary("corral"), "-c", path], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=20 * SLOW)


def status(p):
    return ctl_json(p, "status")


@pytest.mark.corral_only
@pytest.mark.parametrize("same_instance", [False, True])
def test_second_start_on_a_live_address_fails(corral, backend, tmp_path, same_instance):
    first = corral([backend])
    assert listeners(first.port) == 2
    mode = status(first)["steering"]["mode"]

    cfg = dict(first.cfg)
    cfg["listen"] = ["127.0.0.1:%d" % first.port]
    cfg["admin"] = {"socket": str(tmp_path / "second.sock")}
    if not same_instance:
        cfg["instance"] = first.cfg["instance"] + "-b"
    r = start_second(tmp_path, cfg, "second")
    assert r.returncode != 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    errors = [ln for ln in out.splitlines() if "error" in ln]
    assert len(errors) == 1 and "127.0.0.1:%d" % first.port in errors[0] and \
        "already listens" in errors[0], out
    assert not re.search(r"\bready\b", out), out

    # The first is untouched: same listeners, steering, control socket, and it serves.
    assert listeners(first.port) == 2
    assert status(first)["steering"]["mode"] == mode
    if mode == "bpf":
        assert os.path.isdir("/sys/fs/bpf/corral/%s" % first.cfg["instance"])
    for _ in range(4):
        with Client(first.port, timeout=5 * SLOW) as c:
            assert c.get("/").status == 200


@pytest.mark.corral_only
def test_start_on_an_address_a_plain_socket_holds(corral, backend, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        cfg = {"instance": "e2e-plain-%d" % os.getpid(), "listen": ["127.0.0.1:%d" % port],
               "workers": {"cores": [0, 1]}, "backends": [backend.address],
               "admin": {"socket": str(tmp_path / "c.sock")}}
        r = start_second(tmp_path, cfg, "plain")
        assert r.returncode != 0
        assert "already listens" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        s.close()
