"""Soak: 100,000 client connections through corral; every slot comes back and nothing leaks.

Under `make asan` the same test runs against the ASan/LSan build, and the corral fixture fails
the test if the daemon's exit prints any sanitizer report (LeakSanitizer runs at exit)."""
import json
import shutil
import subprocess
import time

import pytest

from conftest import SLOW, binary
from util import wrk

TARGET = 100_000
CONNS = 32


def stats(p):
    out = subprocess.run([binary("corralctl"), "-s", p.cfg["admin"]["socket"], "stats", "--json"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wrk_round(p, seconds, close):
    """One wrk run. It must see no socket error and no error response, and corral must count
    every request wrk completed. wrk stops with at most one request in flight per connection
    (it does not pipeline): corral counted those too, wrk did not, so the two totals differ by
    at most the number of connections. Both counts are read once corral holds no connection: on
    a loaded machine it may still be reading the last round's requests after wrk has exited,
    and those must not count in this round."""
    before = p.wait_idle(10)["total"]["requests"]
    # wrk's per-request timeout is 10 s (times SLOW), not its 2 s default (under-load run 6 on
    # 03a86c4: 32 timeouts, one per connection, at 460 requests/s). After 100k
    # connections loopback's ephemeral ports come round again while the server side of their
    # last use is in TIME_WAIT, and such a SYN can wait for a retransmission (1 s, then 3 s):
    # the likely cause, not proven.
    # That is a latency, which this test does not measure; a lost request still fails it.
    r = wrk("http://127.0.0.1:%d/" % p.port, seconds, connections=CONNS,
            headers=["Connection: close"] if close else [], timeout_s=int(10 * SLOW))
    r.assert_clean()
    counted = p.wait_idle(10)["total"]["requests"] - before
    assert r.requests <= counted <= r.requests + CONNS, \
        "wrk completed %d requests, corral counted %d\n%s" % (r.requests, counted, r.stdout)


@pytest.mark.corral_only
@pytest.mark.deadline(400)
def test_100k_connections_return_every_slot(corral, backend):
    assert shutil.which("wrk"), "wrk is needed (deploy/install-deps.sh installs it)"
    p = corral([backend])
    t0 = time.monotonic()
    rounds = 1  # the keep-alive one
    # Rounds of wrk with "Connection: close": one connection per request. Bounded in time.
    while stats(p)["total"]["conns_accepted"] < TARGET:
        assert time.monotonic() - t0 < 300 * SLOW, "too slow: %s" % stats(p)["total"]
        wrk_round(p, 5, close=True)
        rounds += 1
    # Keep-alive traffic too, so upstream pools and pipelined paths are exercised.
    wrk_round(p, 2, close=False)
    deadline = time.monotonic() + 5 * SLOW
    while True:
        s = stats(p)
        if s["total"]["conns_active"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert s["total"]["conns_active"] == 0, s["total"]
    assert s["total"]["conns_accepted"] >= TARGET
    assert s["total"]["responses"]["5xx"] == 0, s["total"]
    # Every request is answered 2xx or is a client abort. wrk closes its connections at a round's
    # end with at most one request in flight each; corral logs those 499 (client_aborts), and
    # counts a 499 as 4xx unless the response had started (its 2xx was counted then). The backend
    # answers only 200, so a 4xx is an abort, and no round aborts more than CONNS requests.
    t, resp = s["total"], s["total"]["responses"]
    assert resp["1xx"] == resp["3xx"] == 0, t
    assert resp["2xx"] + resp["4xx"] == t["requests"], t
    assert resp["4xx"] <= t["client_aborts"] <= rounds * CONNS, (rounds, t)
    # The daemon still serves, and exits 0 (checked by the fixture: under ASan, no leak report).
    out = subprocess.run(["curl", "-sS", "-m", "5", "http://127.0.0.1:%d/" % p.port],
                         capture_output=True, text=True)
    assert out.stdout == "Hello, world!"
