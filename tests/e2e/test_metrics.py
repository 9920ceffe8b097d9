"""End-to-end tests of the Prometheus listener: parseable exposition that agrees with `stats --json`."""
import os
import re
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SLOW
from upstreams import ctl_json, ctl_ok, scrape
from util import Client, build_request, counted_get, simple_get

pytestmark = pytest.mark.corral_only


def families(body):
    return {f.name: f for f in text_string_to_metric_families(body)}


def by_core(fam, sample_name, **labels):
    out = {}
    for s in fam.samples:
        if s.name != sample_name:
            continue
        if any(s.labels.get(k) != v for k, v in labels.items()):
            continue
        out[int(s.labels["core"])] = s.value
    return out


def process_cpu_s(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_metrics_port_is_logged_and_serves_text_exposition(proxied):
    assert proxied.metrics_port, "corral did not log 'metrics on ADDR:PORT'; log:\n%s" % proxied.log()[-2000:]
    status, head, body = scrape(proxied)
    assert status == 200
    assert "text/plain; version=0.0.4" in head
    fams = families(body)
    for name in ["corral_requests", "corral_connections_accepted", "corral_connections_active",
                 "corral_responses", "corral_request_duration_seconds", "corral_bytes_received",
                 "corral_bytes_sent", "corral_upstream_errors", "corral_worker_cpu_seconds",
                 "corral_upstream_pool_idle", "corral_accept_queue_length", "corral_core_draining"]:
        assert name in fams, name
        assert fams[name].documentation, "no HELP for %s" % name
    assert fams["corral_requests"].type == "counter"
    assert fams["corral_connections_active"].type == "gauge"
    assert fams["corral_request_duration_seconds"].type == "histogram"
    # Every per-core series carries a core label, one per worker.
    for name, f in fams.items():
        cores = {s.labels.get("core") for s in f.samples}
        if None in cores:
            assert cores == {None}, "%s mixes series with and without core" % name
        else:
            assert cores == {"0", "1"}, (name, cores)


def test_metrics_totals_match_stats_json(corral, backend):
    p = corral([backend])
    n = 40
    sent = received = 0
    with Client(p.port) as c:  # keep-alive: one connection, n requests
        for i in range(n):
            wire = build_request("GET", "/" if i % 5 else "/status/404")
            c.send(wire)
            r = c.read_response()
            assert r.status in (200, 404)
            sent, received = sent + len(wire), received + len(r.head_raw) + len(r.body)
    for _ in range(10):  # and ten one-shot connections
        r, out, back = counted_get(p.port, "/bytes/1000")
        assert r.status == 200 and r.body_len == 1000
        sent, received = sent + out, received + back
    # A worker counts a send when it completes: poll (with a deadline) until the last ones land.
    deadline = time.monotonic() + 5 * SLOW
    while True:
        s = ctl_json(p, "stats")
        if (s["total"]["bytes_in"], s["total"]["bytes_out"]) == (sent, received):
            break
        assert time.monotonic() < deadline, \
            "bytes_in/out %s, the clients sent %d and received %d" % (
                (s["total"]["bytes_in"], s["total"]["bytes_out"]), sent, received)
        time.sleep(0.05)
    _, _, body = scrape(p)
    fams = families(body)
    req = by_core(fams["corral_requests"], "corral_requests_total")
    assert sum(req.values()) == s["total"]["requests"] == n + 10 + 0
    acc = by_core(fams["corral_connections_accepted"], "corral_connections_accepted_total")
    assert sum(acc.values()) == s["total"]["conns_accepted"] == 11
    for core in (0, 1):
        row = {c["core"]: c for c in s["cores"]}[core]
        assert req[core] == row["requests"]
        assert acc[core] == row["conns_accepted"]
    for cls in ("2xx", "4xx", "5xx"):
        got = sum(by_core(fams["corral_responses"], "corral_responses_total", **{"class": cls}).values())
        assert got == s["total"]["responses"][cls], cls
    assert s["total"]["responses"]["4xx"] == n // 5
    b_in = sum(by_core(fams["corral_bytes_received"], "corral_bytes_received_total").values())
    b_out = sum(by_core(fams["corral_bytes_sent"], "corral_bytes_sent_total").values())
    assert (b_in, b_out) == (sent, received)

    # The histogram: cumulative buckets, +Inf == count == requests, sum > 0.
    h = fams["corral_request_duration_seconds"]
    for core in (0, 1):
        buckets = sorted(((float(x.labels["le"]), x.value) for x in h.samples
                          if x.name.endswith("_bucket") and x.labels["core"] == str(core)))
        values = [v for _, v in buckets]
        assert values == sorted(values), "buckets must be cumulative"
        assert buckets[-1][0] == float("inf")
        count = by_core(h, "corral_request_duration_seconds_count")[core]
        assert buckets[-1][1] == count == req[core]
        if count:
            assert by_core(h, "corral_request_duration_seconds_sum")[core] > 0


def test_backend_series_and_info(corral, backend):
    p = corral([backend])
    for _ in range(5):
        simple_get(p.port, "/")
    fams = families(scrape(p)[2])
    up = {s.labels["backend"]: s.value for s in fams["corral_backend_up"].samples}
    assert up == {backend.address: 1.0}
    reqs = {s.labels["backend"]: s.value for s in fams["corral_backend_requests"].samples}
    assert reqs[backend.address] == 5
    info = fams["corral_info"].samples[0].labels
    assert info["steering_mode"] in ("bpf", "kernel-hash") and info["version"]


def test_draining_shows_in_metrics(proxied):
    ctl_ok(proxied, "drain", "1")
    fams = families(scrape(proxied)[2])
    assert by_core(fams["corral_core_draining"], "corral_core_draining") == {0: 0.0, 1: 1.0}


def test_other_paths_get_404_and_scrapes_are_cheap(proxied):
    assert scrape(proxied, "/")[0] == 404
    assert scrape(proxied, "/metricsx")[0] == 404
    # Cheap: a scrape costs well under a millisecond. A bound on wall time would measure the
    # machine's load, so the bound is on the daemon's CPU time (its whole process, main thread
    # included), which a busy machine does not inflate.
    cpu0 = process_cpu_s(proxied.proc.pid)
    for _ in range(50):
        assert scrape(proxied)[0] == 200
    per = (process_cpu_s(proxied.proc.pid) - cpu0) / 50
    assert per < 0.005 * SLOW, "a scrape cost %.2f ms of CPU" % (per * 1000)
    # The data path is unaffected.
    assert simple_get(proxied.port, "/").status == 200


def test_a_stalled_scraper_does_not_block_the_daemon(proxied):
    # A client that connects and never sends: other scrapes and corralctl still answer.
    idle = [socket.create_connection(("127.0.0.1", proxied.metrics_port)) for _ in range(4)]
    try:
        half = socket.create_connection(("127.0.0.1", proxied.metrics_port))
        half.sendall(b"GET /metr")
        assert scrape(proxied)[0] == 200
        assert ctl_json(proxied, "stats")["total"] is not None
        half.close()
    finally:
        for s in idle:
            s.close()


def test_metrics_listener_port_zero_logs_the_real_port(proxied):
    m = re.search(r"metrics on 127\.0\.0\.1:(\d+)", proxied.log())
    assert m and int(m.group(1)) == proxied.metrics_port != 0
