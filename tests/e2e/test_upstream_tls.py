"""TLS to backends (backends[i].tls): requests re-encrypted to a Python ssl backend, pooled TLS
connections, verification failures as upstream failures (failover, 502, counted, logged),
verify: false, health checks over TLS, reload semantics, and `--check`'s file:line: key:
errors."""
import hashlib
import os
import socket
import subprocess
import threading
import time

import pytest
import yaml

from conftest import SLOW, binary
from upstreams import TLSBackend, backends, ctl_json, make_tls_cert, reload_with, scrape, wait_until
from util import Client, exchange, pattern, simple_get


def total(p, name):
    """A per-core counter of /metrics summed over the cores."""
    n = 0
    for line in scrape(p)[2].splitlines():
        if line.startswith(name + "{"):
            n += float(line.rpartition(" ")[2])
    return n


@pytest.fixture
def certs(tmp_path):
    d = str(tmp_path)
    return {
        "a": make_tls_cert(d, "a", "a.test", "DNS:a.test"),      # names a.test
        "ip": make_tls_cert(d, "ip", "ip", "IP:127.0.0.1"),      # names the address
        "other": make_tls_cert(d, "other", "other.test", "DNS:other.test"),
    }


@pytest.fixture
def tls_backends():
    started = []

    def start(cert, key, **kw):
        b = TLSBackend(cert, key, **kw)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def row(b, **tls):
    return {"address": b.address, "weight": 1, "tls": tls}


def get(port, path="/", c=None):
    own = c is None
    c = c or Client(port, timeout=10 * SLOW)
    try:
        return c.get(path)
    finally:
        if own:
            c.close()


@pytest.mark.corral_only
def test_get_and_post_go_through_re_encrypted(corral, certs, tls_backends):
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="a.test")])
    r = get(p.port, "/hello")
    assert r.status == 200, r
    assert r.body == b"tls backend: /hello"
    assert b.snis == ["a.test"], "the configured sni is sent"

    body = os.urandom(300 * 1024)  # several TLS records and receive buffers each way
    c = Client(p.port, timeout=10 * SLOW)
    try:
        r = c.request("POST", "/up", body=body)
    finally:
        c.close()
    assert r.status == 200, r
    assert r.body == ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode()
    assert total(p, "corral_upstream_tls_handshakes_total") >= 1


@pytest.mark.corral_only
def test_one_pooled_tls_connection_serves_many_requests(corral, certs, tls_backends):
    cert, key = certs["ip"]
    b = tls_backends(cert, key)
    # No sni: the certificate is verified against the backend's IP address.
    p = corral([row(b, ca=cert)], workers={"cores": [0]})
    c = Client(p.port, timeout=10 * SLOW)
    try:
        for i in range(20):
            r = c.get("/n%d" % i)
            assert r.status == 200, r
            assert r.body == ("tls backend: /n%d" % i).encode()
    finally:
        c.close()
    assert b.requests == 20
    assert b.handshakes == 1, "one pooled TLS connection for every request (got %d)" % b.handshakes
    assert b.snis == [None], "no SNI for a numeric address"
    assert total(p, "corral_upstream_pool_hits_total") >= 19


@pytest.mark.corral_only
def test_a_new_connection_resumes_the_session(corral, certs, tls_backends):
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    # upstream_idle_ms short: the pooled connection expires, the next request opens a new one.
    p = corral([row(b, ca=cert, sni="a.test")], workers={"cores": [0]},
               timeouts={"upstream_idle_ms": 200})
    assert get(p.port, "/1").status == 200
    assert wait_until(lambda: ctl_json(p, "stats")["total"]["pool"]["idle"] == 0, 10)
    assert get(p.port, "/2").status == 200
    assert b.handshakes == 2
    assert b.resumed == 1, "the second connection resumed the first one's session"
    assert total(p, "corral_upstream_tls_resumed_total") == 1
    st = ctl_json(p, "stats")["total"]["upstream_tls"]
    assert st == {"handshakes": 2, "resumed": 1, "failures": 0}, st
    # The expired connection was closed cleanly: close_notify first.
    assert wait_until(lambda: b.close_notify >= 1, 5), "no close_notify on a clean close"


@pytest.mark.corral_only
def test_a_wrong_ca_fails_over_and_is_a_502_alone(corral, certs, tls_backends, backend):
    cert, key = certs["a"]
    other, _ = certs["other"]
    bad = tls_backends(cert, key)
    p = corral([row(bad, ca=other, sni="a.test"), backend], balance="round-robin",
               workers={"cores": [0]})
    # Every request lands: the TLS backend fails verification and the next backend answers.
    for i in range(4):
        assert get(p.port, "/").status == 200
    assert bad.requests == 0, "nothing was sent to a backend that failed verification"
    assert total(p, "corral_upstream_tls_failures_total") >= 1
    assert p.err.wait_for(r"TLS handshake with backend 127\.0\.0\.1:%d failed: certificate verify "
                          r"failed: self-signed certificate" % bad.port, 5 * SLOW), p.log()[-3000:]

    # Alone, it is a 502.
    q = corral([row(bad, ca=other, sni="a.test")])
    r = get(q.port, "/alone")
    assert r.status == 502, r
    assert bad.requests == 0


@pytest.mark.corral_only
def test_a_wrong_name_fails_and_verify_false_accepts_it(corral, certs, tls_backends):
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="b.test")])
    assert get(p.port, "/").status == 502
    assert p.err.wait_for(r"certificate verify failed: hostname mismatch", 5 * SLOW), p.log()[-3000:]
    assert b.requests == 0

    # verify: false: the same certificate with the wrong name is accepted.
    q = corral([row(b, verify=False, sni="b.test")])
    r = get(q.port, "/ok")
    assert r.status == 200, r
    assert r.body == b"tls backend: /ok"


@pytest.mark.corral_only
def test_a_plaintext_backend_configured_for_tls_is_a_failure(corral):
    """A backend that answers the ClientHello in plaintext HTTP (as a plaintext server's 400)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(10 * SLOW)

    def answer():
        try:
            s, _ = srv.accept()
            s.recv(4096)
            s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            s.close()
        except OSError:
            pass
    t = threading.Thread(target=answer, daemon=True)
    t.start()
    addr = "127.0.0.1:%d" % srv.getsockname()[1]
    try:
        p = corral([{"address": addr, "weight": 1, "tls": {"verify": False}}])
        assert get(p.port, "/").status == 502
        assert p.err.wait_for(r"TLS handshake with backend %s failed: the backend answered in "
                              r"plaintext" % addr.replace(".", r"\."), 5 * SLOW), p.log()[-3000:]
    finally:
        srv.close()
        t.join(5)


@pytest.mark.corral_only
def test_health_checks_speak_tls(corral, certs, tls_backends):
    cert, key = certs["a"]
    good = tls_backends(cert, key)
    bad = tls_backends(cert, key)
    health = {"path": "/health", "interval_ms": 200, "timeout_ms": 200, "rise": 1, "fall": 1}
    other, _ = certs["other"]
    p = corral([dict(row(good, ca=cert, sni="a.test"), health=health),
                dict(row(bad, ca=other, sni="a.test"), health=health)])

    def ok():
        st = backends(p)
        return (st[good.address].get("last_check") or {}).get("ok") and st[bad.address]["state"] == "down"
    assert wait_until(ok, 10), "health over TLS: %s" % backends(p)
    assert "200" == backends(p)[good.address]["last_check"]["result"]
    assert "verify" in backends(p)[bad.address]["last_check"]["result"], backends(p)[bad.address]
    assert good.requests >= 1, "the check reached the TLS backend's HTTP layer"
    assert "a.test" in good.snis


@pytest.mark.corral_only
def test_reload_that_changes_tls_never_reuses_a_pooled_connection(corral, certs, tls_backends):
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, verify=False)], workers={"cores": [0]})
    c = Client(p.port, timeout=10 * SLOW)
    try:
        assert c.get("/1").status == 200
        assert b.handshakes == 1
        reload_with(p, backends=[row(b, ca=cert, sni="a.test")])
        assert c.get("/2").status == 200
        assert b.handshakes == 2, "the connection pooled under verify: false was reused"
        # The same settings again: the pooled connection is reused.
        reload_with(p, backends=[row(b, ca=cert, sni="a.test")])
        assert c.get("/3").status == 200
        assert b.handshakes == 2
    finally:
        c.close()


def write_cfg(tmp, backends):
    cfg = {"listen": ["127.0.0.1:0"], "backends": backends, "admin": {"socket": ""}}
    path = tmp / "up-tls.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def check(path):
    return subprocess.run([binary("corral"), "--check", "-c", str(path)], capture_output=True,
                          text=True, timeout=10 * SLOW)


@pytest.mark.corral_only
def test_check_reports_each_backend_tls_error_with_file_line_and_key(tmp_path):
    ca, _ = make_tls_cert(str(tmp_path), "ca", "a.test", "DNS:a.test")
    good = write_cfg(tmp_path, [{"address": "127.0.0.1:9443", "tls": {"ca": ca, "sni": "a.test"}}])
    r = check(good)
    assert r.returncode == 0 and "configuration OK" in r.stdout, r.stderr
    # Lines: 4 "- address:", 5 "tls:", then one per key from 6.
    cases = [
        ({"verify": True}, "up-tls.yaml:6: backends[0].tls.ca: is required when verify is true"),
        ({"ca": str(tmp_path / "nope.pem")},
         "up-tls.yaml:6: backends[0].tls.ca: %s: cannot read: No such file or directory"
         % (tmp_path / "nope.pem")),
        ({"ca": str(tmp_path / "ca.key")}, "up-tls.yaml:6: backends[0].tls.ca: %s: " % (tmp_path / "ca.key")),
        ({"ca": ca, "sni": "10.1.2.3"},
         "up-tls.yaml:7: backends[0].tls.sni: \"10.1.2.3\" is an IP address; SNI carries host names only"),
        ({"ca": ca, "sni": "bad_name"}, "up-tls.yaml:7: backends[0].tls.sni: \"bad_name\" is not a host name"),
        ({"verify": False, "ca": ca}, "up-tls.yaml:7: backends[0].tls.ca: is not used when verify is false"),
        ({"verify": "yes"}, "up-tls.yaml:6: backends[0].tls.verify: must be true or false"),
        ({"ca": ca, "alpn": "h2"}, "up-tls.yaml:7: backends[0].tls.alpn: unknown key"),
    ]
    for tls, want in cases:
        path = write_cfg(tmp_path, [{"address": "127.0.0.1:9443", "tls": tls}])
        r = check(path)
        assert r.returncode != 0, (tls, r.stdout)
        assert want in r.stderr, "%s:\n  got:  %s\n  want: %s" % (tls, r.stderr, want)


@pytest.mark.corral_only
def test_a_reload_with_a_bad_ca_is_refused_and_the_old_one_serves(corral, certs, tls_backends, tmp_path):
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="a.test")])
    cfg = dict(p.cfg)
    cfg["backends"] = [row(b, ca=str(tmp_path / "missing.pem"), sni="a.test")]
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    mark = len(p.err.lines)
    r = subprocess.run([binary("corralctl"), "-s", p.cfg["admin"]["socket"], "reload"],
                       capture_output=True, text=True, timeout=10 * SLOW)
    assert r.returncode != 0
    assert "backends[0].tls.ca: %s: cannot read" % (tmp_path / "missing.pem") in r.stderr + r.stdout
    assert p.err.wait_for(r"reload rejected", 5 * SLOW, start=mark)
    assert simple_get(p.port).status == 200, "the old configuration still serves"


@pytest.mark.corral_only
def test_large_downloads_keep_every_byte(corral, certs, tls_backends):
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="a.test")], workers={"cores": [0]})
    c = Client(p.port, timeout=20 * SLOW)
    try:
        for n in (1, 16383, 16384, 70000, 3 * 1024 * 1024 + 7):
            r = c.get("/big/%d" % n)
            assert r.status == 200, r
            assert len(r.body) == n
            assert hashlib.sha256(r.body).digest() == hashlib.sha256(pattern(0, n)).digest(), n
    finally:
        c.close()
    assert b.handshakes == 1


@pytest.mark.corral_only
def test_a_close_delimited_body_ends_only_with_close_notify(corral, certs, tls_backends):
    """A TCP close without close_notify may be an attacker's truncation: the client's response
    is aborted (no last chunk), while the same body ended by close_notify is complete."""
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="a.test")])
    r = get(p.port, "/close/notify")
    assert r.status == 200 and r.body == b"close-delimited body", r

    raw = exchange(p.port, b"GET /close/raw HTTP/1.1\r\nHost: x\r\n\r\n", 10 * SLOW,
                   ends=(ConnectionResetError,))
    assert raw.startswith(b"HTTP/1.1 200"), raw
    assert not raw.endswith(b"0\r\n\r\n"), "a truncated body was completed: %r" % raw


@pytest.mark.corral_only
def test_a_silent_handshake_is_bounded_by_upstream_connect_ms(corral):
    """A backend that accepts the connection but never answers the ClientHello."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    addr = "127.0.0.1:%d" % srv.getsockname()[1]
    try:
        p = corral([{"address": addr, "weight": 1, "tls": {"verify": False}}],
                   timeouts={"upstream_connect_ms": int(300 * SLOW)})
        t0 = time.monotonic()
        r = get(p.port, "/")
        took = time.monotonic() - t0
        assert r.status == 504, r
        assert took < 3 * SLOW, took
    finally:
        srv.close()


@pytest.mark.corral_only
def test_tls_in_and_tls_out_both_ways(corral, certs, tls_backends):
    """Terminated on the listener and re-encrypted to the backend: a keep-alive client's
    requests (GET and a large POST) over one TLS connection each side."""
    from test_tls import TLSClient, tls_entry, tls_port
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="a.test")], workers={"cores": [0]},
               listen=["127.0.0.1:0", tls_entry([certs["a"]])])
    c = TLSClient(tls_port(p))
    try:
        r = c.get("/in")
        assert r.status == 200 and r.body == b"tls backend: /in", r
        body = os.urandom(200 * 1024)
        r = c.request("POST", "/up", body=body)
        assert r.body == ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode(), r
        r = c.get("/big/%d" % (1 << 20))
        assert r.body == pattern(0, 1 << 20)
    finally:
        c.close()
    assert b.handshakes == 1


@pytest.mark.corral_only
def test_an_upgrade_tunnel_runs_over_the_tls_backend(corral, certs, tls_backends):
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="a.test")], timeouts={"tunnel_idle_ms": int(3000 * SLOW)})
    with Client(p.port, timeout=10 * SLOW) as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        r = c.read_response()
        assert r.status == 101, r
        for msg in (b"hello", b"\x00\x01binary\xff", os.urandom(100000).hex().encode()):
            c.send(msg)
            assert c.read_at_least(len(msg)) == msg.upper()


@pytest.mark.corral_only
def test_a_tls12_only_backend_is_spoken_to_and_resumed(corral, certs, tls_backends):
    import ssl
    cert, key = certs["a"]
    b = tls_backends(cert, key, protocols=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))
    p = corral([row(b, ca=cert, sni="a.test")], workers={"cores": [0]},
               timeouts={"upstream_idle_ms": 200})
    assert get(p.port, "/1").body == b"tls backend: /1"
    assert wait_until(lambda: ctl_json(p, "stats")["total"]["pool"]["idle"] == 0, 10)
    assert get(p.port, "/2").body == b"tls backend: /2"
    assert b.handshakes == 2 and b.resumed == 1, (b.handshakes, b.resumed)


@pytest.mark.corral_only
def test_a_pooled_connection_the_backend_closed_is_not_used(corral, certs, tls_backends):
    """The backend ends an idle keep-alive connection (close_notify, FIN) while it is pooled:
    corral drops it, and the next request gets a fresh connection, not an error."""
    cert, key = certs["a"]
    b = tls_backends(cert, key, idle_timeout=0.2 * SLOW)
    p = corral([row(b, ca=cert, sni="a.test")], workers={"cores": [0]})
    c = Client(p.port, timeout=10 * SLOW)
    try:
        assert c.get("/1").status == 200
        assert wait_until(lambda: b.close_notify >= 1, 5), "the backend did not close it"
        assert wait_until(lambda: ctl_json(p, "stats")["total"]["pool"]["idle"] == 0, 5)
        r = c.get("/2")
        assert r.status == 200 and r.body == b"tls backend: /2", r
    finally:
        c.close()
    assert b.handshakes == 2
    assert total(p, "corral_upstream_errors_total") == 0


class ProxyTLSBackend:
    """A backend that wants a PROXY v1 header in clear, then TLS: it answers each request with
    the header line it got first (one request per connection, as corral never pools these)."""

    def __init__(self, cert, key):
        import ssl
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.srv.settimeout(0.1)
        self.address = "127.0.0.1:%d" % self.srv.getsockname()[1]
        self.headers, self.errors = [], []
        self.stopping = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopping:
            try:
                s, _ = self.srv.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(s,), daemon=True).start()

    def _one(self, s):
        try:
            s.settimeout(10 * SLOW)
            line = b""
            while not line.endswith(b"\r\n") and len(line) < 108:
                line += s.recv(1)  # byte by byte: nothing of the TLS stream is taken
            self.headers.append(line)
            t = self.ctx.wrap_socket(s, server_side=True)
            req = b""
            while b"\r\n\r\n" not in req:
                d = t.recv(4096)
                if not d:
                    return
                req += d
            t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))
            t.close()
        except (OSError, ValueError) as e:
            self.errors.append(repr(e))

    def stop(self):
        self.stopping = True
        self.t.join(5)
        self.srv.close()


@pytest.mark.corral_only
def test_send_proxy_goes_in_clear_before_the_handshake(corral, certs):
    cert, key = certs["a"]
    b = ProxyTLSBackend(cert, key)
    try:
        p = corral([{"address": b.address, "weight": 1, "send_proxy": "v1",
                     "tls": {"ca": cert, "sni": "a.test"}}])
        for i in range(2):
            c = Client(p.port, timeout=10 * SLOW)
            try:
                r = c.get("/pp%d" % i)
            finally:
                c.close()
            assert r.status == 200, r
            assert r.body.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), r.body
        assert len(b.headers) == 2, "one connection (and header) per request: %r" % b.headers
        assert not b.errors, b.errors

        # Its health checks too: a LOCAL-style UNKNOWN header in clear, then the check in TLS.
        q = corral([{"address": b.address, "weight": 1, "send_proxy": "v1",
                     "tls": {"ca": cert, "sni": "a.test"},
                     "health": {"path": "/h", "interval_ms": 200, "timeout_ms": 200}}])
        assert wait_until(lambda: (backends(q)[b.address].get("last_check") or {}).get("ok"), 10), \
            backends(q)[b.address]
        assert b"PROXY UNKNOWN\r\n" in b.headers, b.headers
        assert not b.errors, b.errors
    finally:
        b.stop()


@pytest.mark.corral_only
def test_concurrent_clients_share_the_pooled_tls_connections(corral, certs, tls_backends):
    """8 keep-alive clients at once, GETs and POSTs mixed: every answer is the right one, and
    corral opens no more TLS connections than there are clients at a time."""
    cert, key = certs["a"]
    b = tls_backends(cert, key)
    p = corral([row(b, ca=cert, sni="a.test")])
    errors = []

    def client(k):
        c = Client(p.port, timeout=20 * SLOW)
        try:
            for i in range(25):
                if i % 3 == 0:
                    body = os.urandom(1000 + 997 * i)
                    r = c.request("POST", "/c%d" % k, body=body)
                    want = ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode()
                else:
                    r = c.get("/c%d/%d" % (k, i))
                    want = ("tls backend: /c%d/%d" % (k, i)).encode()
                if r.status != 200 or r.body != want:
                    errors.append((k, i, r.status, r.body[:80]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))
        finally:
            c.close()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120 * SLOW)
    assert not errors, errors[:5]
    assert b.requests == 200
    assert b.handshakes <= 8, b.handshakes
    assert total(p, "corral_upstream_errors_total") == 0
