"""Reload under load: SIGHUP and `corralctl reload` change backends, balance and limits while
keep-alive clients are mid-stream, and no request fails."""
import json
import signal
import threading
import time

import pytest
import yaml

from conftest import SLOW
from upstreams import ctl
from util import Client


def write_config(p, **changes):
    cfg = dict(p.cfg)
    cfg.update(changes)
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    p.cfg = cfg


def version(p):
    out = ctl(p, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["config_version"]


class Load:
    """n keep-alive clients looping GET / (and a POST with a body), counting every failure."""

    def __init__(self, port, n=8):
        self.port, self.stop, self.errors, self.ok = port, threading.Event(), [], 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(n)]

    def run(self, i):
        while not self.stop.is_set():
            try:
                with Client(self.port, timeout=5 * SLOW) as c:
                    for k in range(50):
                        if k % 5 == 4:
                            r = c.request("POST", "/echo", body=b"x" * 3000)
                            good = r.status == 200 and r.body == b"x" * 3000
                        else:
                            r = c.get("/")
                            good = r.status == 200 and r.body == b"Hello, world!"
                        with self.lock:
                            if good:
                                self.ok += 1
                            else:
                                self.errors.append((r.status, r.body[:60]))
                        if self.stop.is_set():
                            break
            except Exception as e:  # every connection-level failure counts
                with self.lock:
                    self.errors.append(repr(e))

    def wait_more(self, k, timeout=10.0):
        """Waits until k more requests have succeeded (traffic really flows), with a deadline."""
        with self.lock:
            want = self.ok + k
        deadline = time.monotonic() + timeout * SLOW
        while True:
            with self.lock:
                ok, errors = self.ok, len(self.errors)
            if ok >= want:
                return
            assert time.monotonic() < deadline, "load stalled: %d of %d requests, %d errors" % (ok, want, errors)
            time.sleep(0.02)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10 * SLOW)


@pytest.mark.corral_only
def test_reload_under_load_drops_nothing_and_applies(corral, backend_factory):
    b1, b2 = backend_factory(ident="one"), backend_factory(ident="two")
    p = corral([b1])
    v0 = version(p)
    with Load(p.port) as load:
        load.wait_more(100)
        # SIGHUP: a second backend and least-conn balancing.
        write_config(p, backends=[{"address": b1.address, "weight": 1}, {"address": b2.address, "weight": 1}],
                     balance="least-conn")
        p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5 * SLOW
        while version(p) == v0 and time.monotonic() < deadline:
            time.sleep(0.05)
        v1 = version(p)
        assert v1 != v0, "SIGHUP did not publish a new configuration"
        load.wait_more(100)  # traffic under the new configuration
        # corralctl reload: the first backend removed, a tighter header limit.
        write_config(p, backends=[{"address": b2.address, "weight": 1}],
                     limits=dict(p.cfg["limits"], header_bytes_max=8192))
        out = ctl(p, "reload")
        assert out.returncode == 0, out.stderr
        assert version(p) != v1
        time.sleep(0.3 * SLOW)  # a request already on its way to b1 may still land
        b1_after = b1.stats()["requests"]
        load.wait_more(100)  # traffic after the second reload
        b1_end = b1.stats()["requests"]
    assert load.errors == [], load.errors[:5]
    # The second backend took traffic after the first reload; the first took none after the second.
    assert b2.stats()["requests"] > 0
    assert b1_end == b1_after, "a removed backend still got requests"
    # The new header limit applies: a 10 KiB header is now refused.
    with Client(p.port) as c:
        r = c.get("/", [("X-Big", "a" * 10000)])
        assert r.status == 431, r
    out = ctl(p, "backends")
    assert out.returncode == 0 and b2.address in out.stdout and b1.address not in out.stdout, out.stdout
