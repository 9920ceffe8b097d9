"""Access log end to end: one well-formed line per request, under concurrent load on 2 cores,
checked against wrk's and the backend's own counts."""
import json
import re
import subprocess
import time

import pytest

from conftest import SLOW
from upstreams import backends, ctl_ok
from util import Client, build_request, wrk

CLF = re.compile(r'^(\S+) - - \[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
                 r'"(\S+) (\S+) (HTTP/1\.[01])" (\d{3}) (\d+|-) "([^"\\]|\\.)*" "([^"\\]|\\.)*"')


CONNS = 40


def wrk_clean(port, path, seconds=3):
    """wrk against corral: no socket error, no error response; returns wrk's request count."""
    r = wrk("http://127.0.0.1:%d%s" % (port, path), seconds, connections=CONNS)
    r.assert_clean()
    return r.requests


def settled_counts(p, backend, served_before):
    """corral's stats, the requests corral sent the backend and the ones the backend served, read
    once every exchange is over. wrk exits with requests in flight; on a loaded machine a worker
    may still be reading those, forwarding them and logging them after wrk, curl and the 413 are
    done, so counts read then miss exchanges whose lines are written later. Once corral holds no
    client connection every exchange has its line; the backend has then been sent every request
    corral forwarded and its own count reaches corral's once it has parsed the last ones."""
    s = p.wait_idle(10)["total"]
    forwarded = backends(p)[backend.address]["requests"]
    deadline = time.monotonic() + 5 * SLOW
    while True:
        served = backend.stats()["requests"] - served_before
        if served >= forwarded or time.monotonic() > deadline:
            return s, forwarded, served
        time.sleep(0.05)


def status_counts(lines):
    """{status: lines} by a pattern that holds for both formats (for failure messages)."""
    out = {}
    for line in lines:
        m = re.search(r'"status":(\d{3})\b', line) or re.search(r'" (\d{3}) ', line)
        key = m.group(1) if m else "?"
        out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.corral_only
@pytest.mark.parametrize("fmt", ["json", "combined"])
def test_one_well_formed_line_per_request_under_load(corral, backend, tmp_path, fmt):
    log = tmp_path / "access.log"
    p = corral([backend], access_log={"path": str(log), "format": fmt}, limits={"body_bytes_max": 1024})
    served_before = backend.stats()["requests"]
    completed = wrk_clean(p.port, "/")
    completed += wrk_clean(p.port, "/bytes/3000", seconds=1)
    # An unusual target is logged too (the backend has no /a... route: its 404).
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-A", 'agent "quoted"',
                    "http://127.0.0.1:%d/a%%22b?x=1" % p.port], check=True, timeout=10)
    # A request corral answers itself: a body over body_bytes_max is refused with a 413 before
    # anything is forwarded, so its line has no upstream.
    big = build_request("POST", "/too-big", [("Content-Length", "2048")])
    with Client(p.port, timeout=5 * SLOW) as c:
        c.send(big)
        r = c.read_response("POST")
        assert r.status == 413, r
        refusal_len = len(r.head_raw) + len(r.body)
    # What the backend served, by its own count: every 2xx line, plus the 404 (and the requests
    # of the 499 lines, which corral had forwarded), counted once every exchange is over.
    s, forwarded, served = settled_counts(p, backend, served_before)
    p.stop(timeout=15)  # the workers flush their buffers at exit
    raw = log.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode().split("\n")[:-1]
    # wrk stops with at most one request in flight per connection, which it does not count but
    # which the backend served (and corral logged).
    assert completed <= served - 1 <= completed + 2 * CONNS, (completed, served)
    # One line per exchange: each one the backend served, and corral's own 413.
    counts = "lines %d, backend served %d, corral forwarded %d, requests %d, lines by status %s" % (
        len(lines), served, forwarded, s["requests"], status_counts(lines))
    assert len(lines) == served + 1, counts
    assert sum(s["responses"].values()) == len(lines), (counts, s)
    cores = set()
    statuses = {}
    for line in lines:
        if fmt == "json":
            e = json.loads(line)  # whole lines only: a torn or interleaved line fails here
            cores.add(e["core"])
            statuses[e["status"]] = statuses.get(e["status"], 0) + 1
            assert (e["bytes_out"] > 0 or e["status"] == 499) and e["duration_us"] >= 0, line
            # corral answered only the 413 itself; every other exchange went to the backend.
            assert e["upstream"] == (None if e["status"] == 413 else backend.address), line
            if e["status"] != 413:  # refused by the head parser: no request line is logged
                assert e["method"] == "GET" and e["protocol"] == "HTTP/1.1", line
        else:
            m = CLF.match(line)
            assert m, "not a combined-format line: %r" % line
            statuses[int(m.group(6))] = statuses.get(int(m.group(6)), 0) + 1
    # The backend has no /a... route: that one request is its 404, every other one a 200, but
    # for the requests wrk still had in flight when it stopped and closed its connections: the
    # client gave up on those, logged 499 (issue 8 defect 2), at most one per connection.
    aborted = statuses.pop(499, 0)
    assert aborted <= 2 * CONNS, aborted
    assert statuses == {200: served - 1 - aborted, 404: 1, 413: 1}, statuses
    if fmt == "json":
        assert cores == {0, 1}, "both cores should have logged: %s" % cores
        odd = [json.loads(x) for x in lines if '"/a%22b' in x]
        assert len(odd) == 1 and odd[0]["user_agent"] == 'agent "quoted"', odd
        assert odd[0]["uri"] == "/a%22b?x=1" and odd[0]["status"] == 404, odd
        own = [json.loads(x) for x in lines if '"status":413' in x]
        assert len(own) == 1 and own[0]["upstream"] is None, own
        assert own[0]["bytes_out"] == refusal_len, (own, refusal_len)
    else:
        own = [CLF.match(x) for x in lines if CLF.match(x).group(6) == "413"]
        assert len(own) == 1 and own[0].group(7) == str(refusal_len), own[0].group(0)


@pytest.mark.corral_only
def test_503_corral_makes_itself_logs_no_upstream(corral, backend, tmp_path):
    log = tmp_path / "access.log"
    p = corral([backend], access_log={"path": str(log), "format": "json"}, workers={"cores": [0]})
    ctl_ok(p, "backend", "disable", "--force", backend.address)
    with Client(p.port, timeout=5 * SLOW) as c:
        assert c.get("/none-up").status == 503
    p.stop(timeout=15)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(e["uri"], e["status"]) for e in lines] == [("/none-up", 503)], lines
    assert lines[0]["upstream"] is None, lines[0]


@pytest.mark.corral_only
@pytest.mark.parametrize("how", ["close", "bad-chunk"])
def test_response_cut_by_upstream_failure_is_logged_once_as_sent(corral, tmp_path, how):
    """The backend fails mid-body, after the head and part of the body reached the client:
    corral resets the client, and the exchange still gets exactly one line, with the status
    the client was sent and the bytes it was actually sent."""
    import os
    import sys
    import time
    sys.path.insert(0, os.path.dirname(__file__))
    from recorder import Recorder
    from util import Closed

    def handler(up, r):
        if how == "close":
            up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 1000)
        else:
            up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"y" * 1000 + b"\r\n")
        time.sleep(0.2 * SLOW)  # the client has the head and the first 1000 bytes
        if how == "bad-chunk":
            up.send(b"zz\r\n")
        return "close"

    rec = Recorder(handler)
    try:
        log = tmp_path / "access.log"
        p = corral([rec.address], workers={"cores": [0]}, access_log={"path": str(log), "format": "json"})
        got = b""
        with Client(p.port, timeout=5 * SLOW) as c:
            c.send(b"GET /cut HTTP/1.1\r\nHost: e2e.test\r\n\r\n")
            try:
                while True:
                    c._fill()
            except Closed:
                pass
            got = bytes(c.buf)
        assert got.startswith(b"HTTP/1.1 200 ") and len(got) > 1000, got[:200]
        deadline = time.monotonic() + 5 * SLOW
        while time.monotonic() < deadline and not (log.exists() and log.read_bytes()):
            time.sleep(0.02)
        time.sleep(0.1)  # a second line, if any, would be in the same flush
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert len(lines) == 1, lines
        e = lines[0]
        assert e["status"] == 200 and e["uri"] == "/cut" and e["bytes_out"] == len(got), (e, len(got))
        assert p.stats()["total"]["upstream_errors"] == 1
    finally:
        rec.close()
