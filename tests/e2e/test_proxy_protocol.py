"""PROXY protocol end to end (issue 10): a proxy_protocol listener takes v1 and v2 headers and uses
the address they carry as the client's (X-Forwarded-For, hash-client, the access log); anything
else is closed with nothing forwarded (the recorder keeps every upstream byte) and counted; a
send_proxy backend gets the header first on every new connection; HAProxy in mode tcp with
send-proxy-v2 in front of corral."""
import json
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest
import yaml

from conftest import SLOW, ms, need
from recorder import Recorder, default_handler
from upstreams import ctl_reload_reply
from util import free_port

pytestmark = pytest.mark.corral_only

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
REQ = b"GET /pp HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(cmd, fam, addrs=b"", tlvs=b""):
    body = addrs + tlvs
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_inet(src, dst, sport, dport, tlvs=b""):
    a = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
    return v2(1, 0x11, a + struct.pack("!HH", sport, dport), tlvs)


def v2_inet6(src, dst, sport, dport, tlvs=b""):
    a = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return v2(1, 0x21, a + struct.pack("!HH", sport, dport), tlvs)


def tlv(t, v):
    return bytes([t]) + struct.pack("!H", len(v)) + v


def pp_corral(corral, backends, log, **over):
    return corral(backends, listen=[{"address": "127.0.0.1:0", "proxy_protocol": True}],
                  workers={"cores": [0]}, access_log={"path": str(log), "format": "json"}, **over)


def exchange(port, *chunks, pause=0.0, timeout=5.0):
    """Sends chunks (pausing between them) and reads until the server closes or a response ends
    (Content-Length: 2 from the recorder). Returns the bytes read, and whether the peer closed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    try:
        for i, c in enumerate(chunks):
            if i and pause:
                time.sleep(pause)
            s.sendall(c)
        buf = b""
        while True:
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                return buf, True
            if not d:
                return buf, True
            buf += d
            if buf.endswith(b"\r\n\r\nok"):
                return buf, False
    finally:
        s.close()


def log_lines(p, log, n):
    """The access log's lines once it has n (the workers flush at least once a second)."""
    deadline = time.monotonic() + 5 * SLOW
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return [json.loads(x) for x in lines]
        time.sleep(0.1)


# (name, header bytes, the client address corral must use)
GOOD = [
    ("v1 tcp4", b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\n", "192.0.2.7"),
    ("v1 tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 80\r\n", "2001:db8::7"),
    ("v1 unknown", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "127.0.0.1"),
    ("v2 ipv4 tlvs", v2_inet("203.0.113.9", "198.51.100.1", 5555, 80,
                             tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, b"\0" * 7)),
     "203.0.113.9"),
    ("v2 ipv6 tlvs", v2_inet6("2001:db8::42", "2001:db8::1", 5555, 80, tlv(0x05, b"id-1")),
     "2001:db8::42"),
    ("v2 local", v2(0, 0x00), "127.0.0.1"),
]


def test_good_headers_set_the_client_address(corral, tmp_path):
    rec = Recorder()
    log = tmp_path / "access.log"
    try:
        p = pp_corral(corral, [rec.address], log)
        for name, hdr, ip in GOOD:
            got, _ = exchange(p.port, hdr + REQ)  # the request in the same segment
            assert got.startswith(b"HTTP/1.1 200"), (name, got)
        assert rec.wait_requests(len(GOOD), 5 * SLOW)
        xff = [r.header("X-Forwarded-For") for r in rec.requests]
        assert xff == [ip for _, _, ip in GOOD], xff
        # Nothing of any header reached the backend: each connection starts with the request.
        assert all(bytes(c.data).startswith(b"GET /pp HTTP/1.1\r\n") for c in rec.conns)
        lines = log_lines(p, log, len(GOOD))
        assert [e["client"] for e in lines] == [ip for _, _, ip in GOOD], lines
        assert p.stats()["total"]["proxy_protocol_errors"] == 0
    finally:
        rec.close()


def test_header_split_over_several_sends(corral, tmp_path):
    rec = Recorder()
    try:
        p = pp_corral(corral, [rec.address], tmp_path / "a.log")
        h1 = b"PROXY TCP4 192.0.2.8 198.51.100.1 40000 80\r\n"
        got, _ = exchange(p.port, h1[:3], h1[3:20], h1[20:], REQ, pause=0.05 * SLOW)
        assert got.startswith(b"HTTP/1.1 200"), got
        h2 = v2_inet6("2001:db8::99", "::1", 1, 2, tlv(0x04, b"x" * 300))
        # v2 cut inside the signature, inside the length and inside a TLV; the last piece
        # carries the start of the request too.
        got, _ = exchange(p.port, h2[:5], h2[5:15], h2[15:200], h2[200:] + REQ[:10], REQ[10:],
                          pause=0.05 * SLOW)
        assert got.startswith(b"HTTP/1.1 200"), got
        assert rec.wait_requests(2, 5 * SLOW)
        assert [r.header("X-Forwarded-For") for r in rec.requests] == ["192.0.2.8", "2001:db8::99"]
    finally:
        rec.close()


# (name, bytes sent, close after sending, reason the access log gives)
BAD = [
    ("plain http", REQ, False, "no PROXY header"),
    ("v1 bad address", b"PROXY TCP4 999.0.2.7 198.51.100.1 40000 80\r\n" + REQ, False,
     "malformed PROXY header"),
    ("v1 family mismatch", b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n" + REQ, False,
     "malformed PROXY header"),
    ("v1 no crlf, too long", b"PROXY TCP4 " + b"1" * 200, False, "malformed PROXY header"),
    ("v2 bad version", SIG + b"\x31\x11\x00\x0c" + b"\0" * 12 + REQ, False, "malformed PROXY header"),
    ("v2 short address block", SIG + b"\x21\x11\x00\x04" + b"\0" * 4 + REQ, False,
     "malformed PROXY header"),
    ("v2 tlv overrun", v2_inet("192.0.2.1", "192.0.2.2", 1, 2, b"\x04\x00\x09ab") + REQ, False,
     "malformed PROXY header"),
    ("v2 too long", SIG + b"\x21\x11\xff\xff" + b"\0" * 64, False, "PROXY header too long"),
    ("v1 truncated", b"PROXY TCP4 192.0.2.7 198.5", True, "PROXY header cut short"),
    ("v2 truncated", v2_inet("192.0.2.1", "192.0.2.2", 1, 2)[:20], True, "PROXY header cut short"),
]


def test_bad_or_missing_headers_are_closed_and_nothing_is_forwarded(corral, tmp_path):
    rec = Recorder()
    log = tmp_path / "access.log"
    try:
        p = pp_corral(corral, [rec.address], log, timeouts={"client_header_ms": ms(600)})
        for name, data, half_close, _ in BAD:
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5 * SLOW)
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            got = b""
            try:
                while True:
                    d = s.recv(4096)
                    if not d:
                        break
                    got += d
            except ConnectionResetError:
                pass
            s.close()
            assert got == b"", (name, got)  # closed without an answer
        # No header at all within client_header_ms, and a valid prefix that stalls: timed out.
        t0 = time.monotonic()
        for data in (b"", b"PROXY TCP4 192.0.2.7 "):
            got, closed = exchange(p.port, data, timeout=10) if data else exchange(p.port, timeout=10)
            assert got == b"" and closed
        assert time.monotonic() - t0 >= 2 * 0.6 * SLOW * 0.9
        rec.settle()
        assert rec.received() == 0 and len(rec.conns) == 0  # nothing reached the backend
        want = len(BAD) + 2
        assert p.stats()["total"]["proxy_protocol_errors"] == want
        lines = log_lines(p, log, want)
        reasons = [e.get("reason") for e in lines]
        assert reasons == [r for *_, r in BAD] + ["PROXY header timeout"] * 2, reasons
        assert all(e["status"] == 400 and e["client"] == "127.0.0.1" for e in lines)
        # A connection that closes without sending a byte (a TCP check) is no error.
        socket.create_connection(("127.0.0.1", p.port)).close()
        p.wait_idle()
        assert p.stats()["total"]["proxy_protocol_errors"] == want
        # And a good one still works on the same listener.
        got, _ = exchange(p.port, GOOD[0][1] + REQ)
        assert got.startswith(b"HTTP/1.1 200")
    finally:
        rec.close()


def test_metrics_export_the_counter(corral, tmp_path):
    rec = Recorder()
    try:
        p = pp_corral(corral, [rec.address], tmp_path / "a.log")
        exchange(p.port, REQ)
        deadline = time.monotonic() + 5 * SLOW
        while True:
            out = subprocess.run(["curl", "-sS", "http://127.0.0.1:%d/metrics" % p.metrics_port],
                                 capture_output=True, text=True, timeout=10)
            if "corral_proxy_protocol_errors_total{core=\"0\"} 1" in out.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "corral_proxy_protocol_errors_total{core=\"0\"} 1" in out.stdout, out.stdout[-3000:]
    finally:
        rec.close()


def test_hash_client_uses_the_proxied_address(corral, tmp_path):
    recs = [Recorder(), Recorder()]
    try:
        p = pp_corral(corral, [r.address for r in recs], tmp_path / "a.log", balance="hash-client")
        # The same proxied address always lands on one backend though each connection comes
        # from a different local port; different addresses spread.
        for _ in range(8):
            got, _ = exchange(p.port, b"PROXY TCP4 10.9.8.7 10.0.0.1 1234 80\r\n" + REQ)
            assert got.startswith(b"HTTP/1.1 200")
        counts = [len(r.requests) for r in recs]
        assert sorted(counts) == [0, 8], counts
        for i in range(40):
            exchange(p.port, b"PROXY TCP4 10.1.%d.%d 10.0.0.1 1234 80\r\n" % (i, i * 3) + REQ)
        # 40 addresses all on one of two backends: 2 * 2^-40 by chance.
        assert min(len(r.requests) for r in recs) > 0, [len(r.requests) for r in recs]
        for r in recs:
            for q in r.requests:
                assert q.header("X-Forwarded-For").startswith("10.")
    finally:
        for r in recs:
            r.close()


def reads_header(version):
    """A recorder on_accept that takes the PROXY header off before the requests are parsed."""
    def on_accept(up):
        if version == 1:
            up.header = up._line()
        else:
            fixed = up._take(16)
            up.header = fixed + up._take(struct.unpack("!H", fixed[14:16])[0])
        return None
    return on_accept


@pytest.mark.parametrize("version", [1, 2])
def test_send_proxy_carries_the_original_client(corral, tmp_path, version):
    rec = Recorder(default_handler, reads_header(version))
    try:
        p = pp_corral(corral, [{"address": rec.address, "send_proxy": "v%d" % version}],
                      tmp_path / "a.log")
        got, _ = exchange(p.port, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n" + REQ)
        assert got.startswith(b"HTTP/1.1 200"), got
        got, _ = exchange(p.port, v2_inet6("2001:db8::7", "2001:db8::1", 40001, 8443) + REQ)
        assert got.startswith(b"HTTP/1.1 200"), got
        assert rec.wait_requests(2, 5 * SLOW)
        if version == 1:
            want = [b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n",
                    b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 8443\r\n"]
        else:
            want = [v2_inet("192.0.2.7", "198.51.100.1", 40000, 443),
                    v2_inet6("2001:db8::7", "2001:db8::1", 40001, 8443)]
        # Exactly the header, then exactly the request: the recorder keeps every byte.
        assert [bytes(c.data[:len(w)]) for c, w in zip(rec.conns, want)] == want
        assert [bytes(c.data[len(w):len(w) + 16]) for c, w in zip(rec.conns, want)] == \
            [b"GET /pp HTTP/1.1"] * 2
    finally:
        rec.close()


def test_send_proxy_from_a_plain_listener_and_no_pooling(corral, tmp_path):
    pp = Recorder(default_handler, reads_header(1))
    plain = Recorder()
    try:
        p = corral([{"address": pp.address, "send_proxy": "v1"}], workers={"cores": [0]})
        # Three requests on one keep-alive client connection: three upstream connections,
        # each opened with the header of this client (corral's peer and its own address).
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5 * SLOW)
        for _ in range(3):
            s.sendall(REQ)
            buf = b""
            while not buf.endswith(b"\r\n\r\nok"):
                d = s.recv(4096)
                assert d, buf
                buf += d
        me = s.getsockname()
        s.close()
        assert pp.wait_requests(3, 5 * SLOW)
        assert len(pp.conns) == 3, [bytes(c.data) for c in pp.conns]
        want = b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (me[1], p.port)
        assert all(bytes(c.data).startswith(want) for c in pp.conns), [bytes(c.data[:60]) for c in pp.conns]
        assert all(len([r for r in c.requests if r.complete]) == 1 for c in pp.conns)
        # The same without send_proxy is one pooled connection (the control).
        q = corral([plain.address], workers={"cores": [0]})
        s = socket.create_connection(("127.0.0.1", q.port), timeout=5 * SLOW)
        for _ in range(3):
            s.sendall(REQ)
            buf = b""
            while not buf.endswith(b"\r\n\r\nok"):
                d = s.recv(4096)
                assert d, buf
                buf += d
        s.close()
        assert plain.wait_requests(3, 5 * SLOW) and len(plain.conns) == 1
    finally:
        pp.close()
        plain.close()


@pytest.mark.parametrize("version", [1, 2])
def test_health_checks_of_a_send_proxy_backend_begin_with_a_local_header(corral, tmp_path, version):
    rec = Recorder(default_handler, reads_header(version))
    try:
        p = corral([{"address": rec.address, "send_proxy": "v%d" % version,
                     "health": {"path": "/hc", "interval_ms": ms(200), "timeout_ms": ms(150),
                                "rise": 1, "fall": 1}}], workers={"cores": [0]})
        assert rec.wait_requests(2, 5 * SLOW)  # two checks
        want = b"PROXY UNKNOWN\r\n" if version == 1 else SIG + b"\x20\x00\x00\x00"
        checks = [c for c in rec.conns if any(r.target == "/hc" for r in c.requests)]
        assert len(checks) >= 2
        assert all(bytes(c.data).startswith(want + b"GET /hc HTTP/1.1\r\n") for c in checks), \
            [bytes(c.data[:40]) for c in checks]
        # The backend passes them: up, and it serves.
        b = p.ctl_json("backends")
        assert all(x["state"] == "up" for x in (b["backends"] if isinstance(b, dict) else b)), b
        got, _ = exchange(p.port, REQ)
        assert got.startswith(b"HTTP/1.1 200"), got
    finally:
        rec.close()


def reload(p, cfg):
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    return ctl_reload_reply(p)


def test_reload_turning_send_proxy_on_does_not_reuse_a_pooled_connection(corral, tmp_path):
    def maybe_header(up):
        while len(up.buf) < 5:
            up._fill()
        up.header = up._line() if bytes(up.buf[:5]) == b"PROXY" else None
        return None

    rec = Recorder(default_handler, maybe_header)
    try:
        p = corral([rec.address], workers={"cores": [0]})
        got, _ = exchange(p.port, REQ)
        assert got.startswith(b"HTTP/1.1 200")
        assert rec.wait_requests(1, 5 * SLOW) and len(rec.conns) == 1
        assert p.stats()["total"]["pool"]["idle"] == 1  # pooled, without a header
        cfg = json.loads(json.dumps(p.cfg))
        cfg["backends"] = [{"address": rec.address, "send_proxy": "v1"}]
        reply = reload(p, cfg)
        assert reply["ok"] is True and reply["restart_needed"] == [], reply
        got, _ = exchange(p.port, REQ)
        assert got.startswith(b"HTTP/1.1 200")
        assert rec.wait_requests(2, 5 * SLOW)
        # The second request went on a new connection, which began with the header.
        assert len(rec.conns) == 2 and len([r for r in rec.conns[0].requests if r.complete]) == 1
        assert rec.conns[1].header is not None and rec.conns[1].header.startswith(b"PROXY TCP4 127.0.0.1 ")
    finally:
        rec.close()


def test_reload_that_toggles_proxy_protocol_needs_a_restart(corral, tmp_path):
    rec = Recorder()
    try:
        p = pp_corral(corral, [rec.address], tmp_path / "a.log")
        cfg = json.loads(json.dumps(p.cfg))
        cfg["listen"] = [{"address": "127.0.0.1:0", "proxy_protocol": False}]
        reply = reload(p, cfg)
        assert reply["ok"] is True and reply["restart_needed"] == ["listen.proxy_protocol"], reply
        # Not applied: the listener still wants the header.
        got, closed = exchange(p.port, REQ)
        assert got == b"" and closed
        got, _ = exchange(p.port, GOOD[0][1] + REQ)
        assert got.startswith(b"HTTP/1.1 200")
    finally:
        rec.close()


HAPROXY_CFG = """global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend l4
    bind 127.0.0.1:{front}
    default_backend corral
backend corral
    server c1 127.0.0.1:{corral} send-proxy-v2
"""


def test_haproxy_send_proxy_v2_in_front(corral, tmp_path):
    hap = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    need(hap, "haproxy is not installed (deploy/install-deps.sh test)")
    rec = Recorder()
    log = tmp_path / "access.log"
    proc = None
    try:
        p = pp_corral(corral, [rec.address], log)
        front = free_port()
        path = tmp_path / "haproxy.cfg"
        path.write_text(HAPROXY_CFG.format(front=front, corral=p.port))
        proc = subprocess.Popen([hap, "-db", "-f", str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10 * SLOW
        while True:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)
        # A bound source address of its own (127.0.0.2), so that the client address corral
        # reports is the one HAProxy saw, not HAProxy's own connection's (127.0.0.1).
        for i in range(5):
            s = socket.socket()
            s.settimeout(5 * SLOW)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", front))
            s.sendall(REQ)
            buf = b""
            while not buf.endswith(b"\r\n\r\nok"):
                d = s.recv(4096)
                assert d, buf
                buf += d
            s.close()
        assert rec.wait_requests(5, 5 * SLOW)
        assert [r.header("X-Forwarded-For") for r in rec.requests] == ["127.0.0.2"] * 5
        lines = log_lines(p, log, 5)
        assert [e["client"] for e in lines] == ["127.0.0.2"] * 5
        # The empty connect of HAProxy's start (ours above) is no error.
        assert p.stats()["total"]["proxy_protocol_errors"] == 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        rec.close()
