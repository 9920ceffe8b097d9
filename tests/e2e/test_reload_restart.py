"""A reload that changes restart-only keys (issue 8, defect 9) applies the rest and names the keys
it did not apply: in the control reply, in the daemon log and in `corralctl reload`'s output."""
import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from conftest import SLOW, binary
from upstreams import ctl_reload_reply
from util import Client, free_port

RESTART_KEYS = ["listen", "workers.cores", "admin.metrics", "access_log.path",
                "limits.connections_per_core", "limits.buffer_bytes"]


def write(p, cfg):
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)


def backend_id(port):
    with Client(port, timeout=5 * SLOW) as c:
        r = c.get("/")
        assert r.status == 200, r
        return r.header("X-Backend-Id")


@pytest.mark.corral_only
def test_restart_only_changes_are_named_and_the_rest_applies(corral, backend_factory, tmp_path):
    a, b = backend_factory(ident="a"), backend_factory(ident="b")
    log1 = str(tmp_path / "a.log")
    p = corral([a], access_log={"path": log1})
    assert backend_id(p.port) == "a"

    cfg = json.loads(json.dumps(p.cfg))
    cfg["backends"] = [{"address": b.address, "weight": 1}]           # applied
    cfg["limits"]["header_bytes_max"] = 8192                          # applied (lowered)
    cfg["listen"] = ["127.0.0.1:%d" % free_port()]                    # restart-only from here on
    cfg["workers"] = {"cores": [0]}
    cfg["admin"]["metrics"] = "127.0.0.1:%d" % free_port()
    cfg["access_log"] = {"path": str(tmp_path / "b.log")}
    cfg["limits"]["connections_per_core"] = 1000
    cfg["limits"]["buffer_bytes"] = 32768
    write(p, cfg)

    out = subprocess.run([binary("corralctl"), "-s", p.cfg["admin"]["socket"], "reload"],
                         capture_output=True, text=True, timeout=10 * SLOW)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("reloaded; changed but not applied until a restart: "), line
    assert sorted(line.split(": ", 1)[1].split(", ")) == sorted(RESTART_KEYS), line

    reply = ctl_reload_reply(p)
    assert reply["ok"] is True and sorted(reply["restart_needed"]) == sorted(RESTART_KEYS), reply
    assert p.err.wait_for(r"warn: configuration reloaded .*not applied until a restart: .*"
                          r"limits\.buffer_bytes", 5 * SLOW), p.log()[-2000:]

    # The rest applied: the new backend answers, and a head over the new limit gets 431.
    assert backend_id(p.port) == "b"
    with Client(p.port, timeout=5 * SLOW) as c:
        assert c.get("/", [("X-Big", "a" * 10000)]).status == 431
    # The restart-only values stay: old listener, both workers, old access log.
    time.sleep(1.2 * SLOW)  # the access log is flushed at least once per second
    assert os.path.getsize(log1) > 0 and not os.path.exists(str(tmp_path / "b.log"))

    # SIGHUP says it in the log too; a reload that changes nothing restart-only says nothing.
    n = p.log().count("not applied until a restart")
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5 * SLOW
    while p.log().count("not applied until a restart") == n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.log().count("not applied until a restart") == n + 1

    write(p, p.cfg)
    reply = ctl_reload_reply(p)
    assert reply["ok"] is True and reply["restart_needed"] == [], reply
    out = subprocess.run([binary("corralctl"), "-s", p.cfg["admin"]["socket"], "reload"],
                         capture_output=True, text=True, timeout=10 * SLOW)
    assert out.returncode == 0 and out.stdout.strip() == "reloaded", out
