"""TLS termination on the client side of the data path (issue 11): a listen entry with tls: is
served over TLS 1.2 and 1.3 with the same HTTP as plaintext, SNI picks the certificate, old
versions and plaintext are refused and counted, the handshake is bounded by client_header_ms,
tickets resume across workers, a reload swaps certificates under open connections, and a
response cut by the backend ends without close_notify."""
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest
import yaml

from conftest import SLOW, binary, ms
from recorder import Recorder
from util import Client, Closed, build_request, pattern, pattern_sha256, simple_get

IO = 10 * SLOW


def make_cert(tmp, name, *names):
    """A self-signed P-256 certificate for names (the first is the CN); returns (cert, key)."""
    cert, key = tmp / (name + ".pem"), tmp / (name + ".key")
    san = ",".join("DNS:" + n for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
                    "/CN=" + names[0], "-addext", "subjectAltName=" + san],
                   check=True, capture_output=True, timeout=30 * SLOW)
    return str(cert), str(key)


def tls_entry(certs, **extra):
    return {"address": "127.0.0.1:0",
            "tls": dict({"certificates": [{"cert": c, "key": k} for c, k in certs]}, **extra)}


def tls_port(p):
    """The TLS listener's port: the second listen entry's 'listening on' line."""
    lines = [ln for ln in p.log().splitlines() if "listening on 127.0.0.1:" in ln]
    assert len(lines) >= 2, p.log()[-2000:]
    return int(lines[1].rsplit(":", 1)[1])


def start_tls(corral, backends, certs, tls_extra=None, **over):
    """corral with a plaintext listener (p.port) and a TLS one (p.tls_port)."""
    p = corral(backends, listen=["127.0.0.1:0", tls_entry(certs, **(tls_extra or {}))], **over)
    p.tls_port = tls_port(p)
    return p


def client_ctx(cafile=None, minv=None, maxv=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Python sets OP_IGNORE_UNEXPECTED_EOF by default, so an EOF without close_notify would read
    # as a clean end: the tests must tell the two apart.
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class TLSClient(Client):
    """util.Client over TLS. An end of the stream without close_notify raises Truncated."""

    def __init__(self, port, ctx=None, sni="a.test", session=None, timeout=IO):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = (ctx or client_ctx()).wrap_socket(raw, server_hostname=sni, session=session,
                                                      suppress_ragged_eofs=False)
        self.buf = bytearray()
        self.port = port

    def _fill(self, want=262144):
        try:
            data = self.sock.recv(want)
        except (ssl.SSLEOFError, ConnectionResetError) as e:
            raise Truncated(repr(e)) from e
        except ssl.SSLError as e:
            if "UNEXPECTED_EOF" not in str(e):
                raise
            raise Truncated(repr(e)) from e
        if not data:
            raise Closed("close_notify")
        self.buf += data

    def cert_cn(self):
        der = self.sock.getpeercert(binary_form=True)
        out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                             capture_output=True, timeout=10 * SLOW, check=True)
        return out.stdout.decode().strip().rsplit("=", 1)[1].strip()


class Truncated(Closed):
    """The TLS stream ended without close_notify (or with a reset)."""


def tls_stats(p):
    t = p.stats()["total"]
    return t["tls"]


def wait_stat(p, pred, what, timeout=5.0):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        s = tls_stats(p)
        if pred(s):
            return s
        assert time.monotonic() < deadline, "%s: %s" % (what, s)
        time.sleep(0.05)


@pytest.fixture
def certs(tmp_path):
    return {"a": make_cert(tmp_path, "a", "a.test"), "b": make_cert(tmp_path, "b", "b.test", "*.b.test")}


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.corral_only
def test_check_validates_tls(tmp_path, backend, certs):
    cert, key = certs["a"]
    cfg = {"listen": [tls_entry([(cert, key)])], "backends": [backend.address], "admin": {"socket": ""}}
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run([binary("corral"), "--check", "-c", str(good)], capture_output=True, text=True,
                       timeout=10 * SLOW)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert "not yet served" not in r.stderr, r.stderr

    # A certificate error is a file:line: key: error from --check.
    other_key = certs["b"][1]
    cfg["listen"][0]["tls"]["certificates"][0]["key"] = other_key
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run([binary("corral"), "--check", "-c", str(bad)], capture_output=True, text=True,
                       timeout=10 * SLOW)
    assert r.returncode != 0
    assert "listen[0].tls.certificates[0].key: %s does not belong to the certificate in %s" % (other_key, cert) \
        in r.stderr, r.stderr


# --- serving -----------------------------------------------------------------------------------


@pytest.mark.corral_only
@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_get_keep_alive_over_tls(corral, backend, certs, version):
    v = getattr(ssl.TLSVersion, version)
    p = start_tls(corral, [backend], [certs["a"]])
    with TLSClient(p.tls_port, client_ctx(certs["a"][0], minv=v, maxv=v)) as c:
        assert c.sock.version() == version.replace("_", ".")
        for i in range(5):
            r = c.get("/bytes/%d" % (100 + i))
            assert r.status == 200 and r.body == pattern(0, 100 + i), r
            assert not r.will_close
        assert backend.stats()["requests"] == 5
    s = wait_stat(p, lambda s: s["handshakes"] >= 1, "handshake not counted")
    assert s["handshakes"] == 1 and s["resumed"] == 0, s
    assert all(v == 0 for v in s["failures"].values()), s
    # The plaintext listener beside it is untouched.
    assert simple_get(p.port).status == 200


@pytest.mark.corral_only
def test_sni_selects_the_certificate_and_defaults_to_the_first(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"], certs["b"]])
    for sni, cn in (("a.test", "a.test"), ("b.test", "b.test"), ("www.b.test", "b.test"),
                    ("other.test", "a.test"), (None, "a.test")):
        with TLSClient(p.tls_port, sni=sni) as c:
            assert c.cert_cn() == cn, sni
            assert c.get("/").status == 200
    # Verified by a client that trusts only b's certificate, by name.
    with TLSClient(p.tls_port, client_ctx(certs["b"][0]), sni="x.b.test") as c:
        assert c.get("/").status == 200


@pytest.mark.corral_only
def test_alpn_is_http11_only(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    with TLSClient(p.tls_port, client_ctx(alpn=["h2", "http/1.1"])) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        assert c.get("/").status == 200
    with TLSClient(p.tls_port, client_ctx(alpn=["h2"])) as c:
        assert c.sock.selected_alpn_protocol() is None, "h2 must never be agreed"
        assert c.get("/").status == 200


def client_hello(version):
    """A minimal ClientHello record offering only legacy_version (no supported_versions)."""
    suites = struct.pack(">HHH", 0xC02B, 0xC02F, 0x009C)
    body = struct.pack(">H", version) + os.urandom(32) + b"\x00" + struct.pack(">H", len(suites)) + suites + \
        b"\x01\x00" + struct.pack(">H", 0)
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def read_until_closed(sock, timeout):
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return got, "eof"
            got += d
    except ConnectionResetError:
        return got, "reset"
    except socket.timeout:
        return got, "open"


@pytest.mark.corral_only
def test_tls11_is_refused_with_a_protocol_version_alert(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    with socket.create_connection(("127.0.0.1", p.tls_port), timeout=IO) as s:
        s.sendall(client_hello(0x0302))
        got, how = read_until_closed(s, IO)
    assert how != "open", "a TLS 1.1 hello must be closed"
    # alert record: content type 21, fatal (2), protocol_version (70)
    assert got[:1] == b"\x15" and got[5:7] == b"\x02\x46", got
    wait_stat(p, lambda s: s["failures"]["protocol_version"] == 1, "protocol_version failure not counted")
    # A client that can only do TLS 1.1 gets no session either.
    ctx = client_ctx(maxv=ssl.TLSVersion.TLSv1_1)
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, OSError)):
        TLSClient(p.tls_port, ctx).close()
    assert backend.stats()["requests"] == 0


@pytest.mark.corral_only
def test_silent_and_stalled_handshakes_are_closed_and_counted(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]], timeouts={"client_header_ms": ms(600)})
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", p.tls_port), timeout=IO) as silent, \
            socket.create_connection(("127.0.0.1", p.tls_port), timeout=IO) as stalled:
        stalled.sendall(client_hello(0x0303)[:20])  # half a ClientHello, then nothing
        # An established connection is not held up by them.
        with TLSClient(p.tls_port) as c:
            assert c.get("/").status == 200
        for s in (silent, stalled):
            got, how = read_until_closed(s, 5 * SLOW)
            assert how != "open", "a silent handshake must be closed after client_header_ms"
    took = time.monotonic() - t0
    assert took >= 0.5 * SLOW, "closed before client_header_ms: %.2f s" % took
    s = wait_stat(p, lambda s: s["failures"]["timeout"] == 2, "timeouts not counted")
    assert s["handshakes"] == 1, s


@pytest.mark.corral_only
def test_plaintext_on_the_tls_port_is_answered_400_in_clear_and_closed(corral, certs):
    rec = Recorder()
    try:
        p = start_tls(corral, [rec.address], [certs["a"]])
        with socket.create_connection(("127.0.0.1", p.tls_port), timeout=IO) as s:
            s.sendall(build_request("GET", "/"))
            got, how = read_until_closed(s, IO)
        assert got.startswith(b"HTTP/1.1 400 "), got
        assert b"plain HTTP request was sent to an HTTPS port" in got
        assert how != "open"
        wait_stat(p, lambda s: s["failures"]["plaintext"] == 1, "plaintext not counted")
        rec.settle()
        assert rec.received() == 0 and not rec.conns, "nothing may be forwarded"
    finally:
        rec.close()


@pytest.mark.corral_only
def test_garbage_is_a_bad_record(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    with socket.create_connection(("127.0.0.1", p.tls_port), timeout=IO) as s:
        s.sendall(b"\x16\x03\x01\x00\x05" + b"\xff" * 5 + os.urandom(200))
        got, how = read_until_closed(s, IO)
    assert how != "open"
    s = wait_stat(p, lambda s: sum(s["failures"].values()) == 1, "garbage not counted")
    assert s["failures"]["bad_record"] + s["failures"]["handshake"] == 1, s


@pytest.mark.corral_only
def test_a_full_table_closes_a_tls_client_without_a_503_in_clear(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]], workers={"cores": [0]},
                  limits={"connections_per_core": 4})
    held = [TLSClient(p.tls_port) for _ in range(4)]
    try:
        for c in held:
            assert c.get("/").status == 200
        with socket.create_connection(("127.0.0.1", p.tls_port), timeout=IO) as s:
            s.sendall(client_hello(0x0303))
            got, how = read_until_closed(s, IO)
        assert how != "open" and got == b"", "a TLS client must not get plaintext: %r" % got[:80]
        assert p.stats()["total"]["conns_rejected"] == 1
        assert held[0].get("/").status == 200
    finally:
        for c in held:
            c.close()


@pytest.mark.corral_only
def test_x_forwarded_proto_is_https_over_tls(corral, certs):
    rec = Recorder()
    try:
        p = start_tls(corral, [rec.address], [certs["a"]])
        with TLSClient(p.tls_port) as c:
            assert c.get("/tls").status == 200
        assert simple_get(p.port, "/?plain").status == 200
        assert rec.wait_requests(2, 5 * SLOW)
        by = {r.target: r for r in rec.requests}
        assert by["/tls"].header("X-Forwarded-Proto") == "https", by["/tls"].headers
        assert by["/?plain"].header("X-Forwarded-Proto") == "http", by["/?plain"].headers
    finally:
        rec.close()


@pytest.mark.corral_only
def test_proxy_protocol_header_before_tls(corral, certs):
    """A proxy_protocol TLS listener (behind an L4 balancer): the PROXY header comes in clear,
    the TLS stream right behind it, in the same packet or not."""
    rec = Recorder()
    try:
        entry = dict(tls_entry([certs["a"]]), proxy_protocol=True)
        p = corral([rec.address], listen=["127.0.0.1:0", entry])
        port = tls_port(p)
        for i, split in enumerate((False, True)):
            raw = socket.create_connection(("127.0.0.1", port), timeout=IO)
            hdr = b"PROXY TCP4 203.0.113.%d 192.0.2.1 4000 443\r\n" % (i + 1)
            if split:
                raw.sendall(hdr[:10])
                time.sleep(0.05)
                raw.sendall(hdr[10:])
            else:
                raw.sendall(hdr)
            with client_ctx().wrap_socket(raw, server_hostname="a.test") as s:
                s.sendall(build_request("GET", "/pp%d" % i))
                assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert rec.wait_requests(2, 5 * SLOW)
        for i, r in enumerate(sorted(rec.requests, key=lambda r: r.target)):
            assert r.header("X-Forwarded-For") == "203.0.113.%d" % (i + 1), r.headers
            assert r.header("X-Forwarded-Proto") == "https"
    finally:
        rec.close()


@pytest.mark.corral_only
@pytest.mark.deadline(120)
def test_large_upload_download_and_pipelining(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    big = 8 << 20
    with TLSClient(p.tls_port) as c:
        # Download: many records, each split over receives and buffers.
        h = hashlib.sha256()
        c.send(build_request("GET", "/bytes/%d" % big))
        r = c.read_response("GET", sink=h.update)
        assert r.status == 200 and r.body_len == big
        assert h.hexdigest() == pattern_sha256(big), "downloaded body differs"
        # Upload with Content-Length, echoed back.
        body = os.urandom(3 << 20)
        r = c.request("POST", "/echo", body=body)
        assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(body).digest()
        # Chunked upload in odd pieces.
        pieces = [os.urandom(n) for n in (1, 16383, 16385, 70000, 5)]
        head = ("POST /echo HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        c.send(head + b"".join(b"%x\r\n%s\r\n" % (len(x), x) for x in pieces) + b"0\r\n\r\n")
        r = c.read_response("POST")
        assert r.status == 200 and r.body == b"".join(pieces)
        # Pipelining: three requests in one write, three responses in order.
        c.send(b"".join(build_request("GET", "/bytes/%d" % n) for n in (10, 20000, 30)))
        for n in (10, 20000, 30):
            r = c.read_response("GET")
            assert r.status == 200 and r.body == pattern(0, n)


@pytest.mark.corral_only
@pytest.mark.deadline(120)
def test_full_duplex_echo_over_tls(corral, backend, certs):
    """/echo streams the body back while it is still being uploaded: both directions at once,
    from one client thread (an SSL object is not for two threads) with non-blocking I/O."""
    import select
    total = 40 << 20
    p = start_tls(corral, [backend], [certs["a"]], limits={"body_bytes_max": 64 << 20})
    c = TLSClient(p.tls_port)
    c.send(build_request("POST", "/echo", [("Content-Length", str(total))]))
    c.sock.setblocking(False)
    block = os.urandom(65536)
    sent_h, got = hashlib.sha256(), bytearray()
    got_h, sent, body_seen, head = hashlib.sha256(), 0, 0, None
    pending = b""
    deadline = time.monotonic() + 90 * SLOW
    while head is None or body_seen < total:
        assert time.monotonic() < deadline, "stalled at %d sent, %d received" % (sent, body_seen)
        want_w = sent < total or pending
        r, w, _ = select.select([c.sock], [c.sock] if want_w else [], [], 1.0)
        if w:
            if not pending:
                n = min(len(block), total - sent)
                pending = block[:n]
                sent_h.update(pending)
                sent += n
            try:
                pending = pending[c.sock.send(pending):]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        while True:
            try:
                d = c.sock.recv(262144)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            assert d, "closed after %d body bytes" % body_seen
            if head is None:
                got += d
                i = got.find(b"\r\n\r\n")
                if i < 0:
                    continue
                head = bytes(got[:i])
                d = bytes(got[i + 4:])
                assert head.startswith(b"HTTP/1.1 200"), head
            got_h.update(d)
            body_seen += len(d)
    assert body_seen == total and got_h.hexdigest() == sent_h.hexdigest()
    c.close()


@pytest.mark.corral_only
def test_tls_with_every_free_buffer_in_the_ring(corral, backend, certs):
    """16 receive buffers, all posted to the kernel's ring: the plaintext goes into head buffers
    (and 4 KiB buffers split every TLS record over several receives)."""
    p = start_tls(corral, [backend], [certs["a"]], workers={"cores": [0]},
                  limits={"buffers_per_core": 16, "buffer_bytes": 4096})
    with TLSClient(p.tls_port) as c:
        for n in (10, 70000):
            r = c.get("/bytes/%d" % n)
            assert r.status == 200 and r.body == pattern(0, n)
        body = os.urandom(300000)
        r = c.request("POST", "/echo", body=body)
        assert r.status == 200 and r.body == body
        c.send(b"".join(build_request("GET", "/bytes/%d" % n) for n in (1, 2, 3)))
        for n in (1, 2, 3):
            assert c.read_response("GET").body == pattern(0, n)
    p.wait_idle()


@pytest.mark.corral_only
def test_expect_100_continue_over_tls(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    with TLSClient(p.tls_port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        r = c.read_response("POST", interim=True)
        assert r.status == 100, r
        c.send(b"hello")
        r = c.read_response("POST")
        assert r.status == 200 and r.body == b"hello"


@pytest.mark.corral_only
def test_connection_close_ends_with_close_notify(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    with TLSClient(p.tls_port) as c:
        r = c.get("/", headers=[("Connection", "close")])
        assert r.status == 200 and r.will_close
        with pytest.raises(Closed) as e:
            c._fill()
        assert not isinstance(e.value, Truncated), "a clean close must send close_notify: %r" % e.value


class BioClient:
    """A TLS client over a memory BIO, so the test decides when close_notify goes out (TLS's
    half-close) and sees exactly what comes back."""

    def __init__(self, port):
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=IO)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.o = client_ctx().wrap_bio(self.inc, self.out, server_hostname="a.test")
        self.step(self.o.do_handshake)

    def step(self, fn, *a):
        while True:
            try:
                r = fn(*a)
                self.raw.sendall(self.out.read())
                return r
            except ssl.SSLWantReadError:
                self.raw.sendall(self.out.read())
                d = self.raw.recv(65536)
                assert d, "closed early"
                self.inc.write(d)

    def send_close_notify(self):
        try:
            self.o.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.raw.sendall(self.out.read())

    def read_to_close(self):
        """Everything until the TCP close; raises unless corral's close_notify ended it."""
        got, how = read_until_closed(self.raw, IO)
        assert how != "open"
        self.inc.write(got)
        plain = b""
        while True:
            try:
                d = self.o.read(65536)
            except ssl.SSLZeroReturnError:
                return plain
            assert d, plain
            plain += d


@pytest.mark.corral_only
def test_a_client_close_notify_is_answered_with_close_notify(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    c = BioClient(p.tls_port)
    c.step(c.o.write, build_request("GET", "/"))
    assert c.step(c.o.read, 65536).startswith(b"HTTP/1.1 200 ")
    c.send_close_notify()
    assert c.read_to_close() == b""
    c.raw.close()
    p.wait_idle()


@pytest.mark.corral_only
def test_a_half_closed_tls_client_gets_its_whole_response(corral, backend, certs):
    """close_notify right behind the request (TLS's half-close): the response still comes, all
    of it, then corral's close_notify."""
    p = start_tls(corral, [backend], [certs["a"]])
    c = BioClient(p.tls_port)
    c.step(c.o.write, build_request("GET", "/bytes/300000"))
    c.send_close_notify()
    got = c.read_to_close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == pattern(0, 300000), head
    c.raw.close()


@pytest.mark.corral_only
def test_a_graceful_stop_ends_idle_tls_connections_with_close_notify(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]])
    with TLSClient(p.tls_port) as c:
        assert c.get("/").status == 200
        p.signal_graceful()
        with pytest.raises(Closed) as e:
            c._fill()
        assert not isinstance(e.value, Truncated), "an idle connection was cut: %r" % e.value
    assert p.stop() == 0


@pytest.mark.corral_only
def test_a_response_cut_by_the_backend_ends_without_close_notify(corral, certs):
    def cut(up, req):
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.1)
        return "close"

    rec = Recorder(cut)
    try:
        p = start_tls(corral, [rec.address], [certs["a"]])
        with TLSClient(p.tls_port) as c:
            c.send(build_request("GET", "/cut"))
            with pytest.raises(Truncated):
                c.read_response("GET")
        # Close-delimited for an HTTP/1.0 client: only the missing close_notify tells.
        with TLSClient(p.tls_port) as c:
            c.send(b"GET /cut HTTP/1.0\r\nHost: e2e.test\r\n\r\n")
            with pytest.raises(Truncated):
                c.read_response("GET")
    finally:
        rec.close()


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: e2e.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


@pytest.mark.corral_only
def test_upgrade_tunnels_both_ways_over_tls(corral, certs):
    from test_hardening import ws_handler  # every tunnel byte echoed back upper-cased
    rec = Recorder(ws_handler())
    try:
        p = start_tls(corral, [rec.address], [certs["a"]], timeouts={"tunnel_idle_ms": ms(3000)})
        with TLSClient(p.tls_port) as c:
            c.send(UPGRADE + b"early")
            r = c.read_response()
            assert r.status == 101, r
            assert c.read_at_least(5) == b"EARLY"
            big = os.urandom(200000).replace(b"\x00", b"a")
            for msg in (b"hello", b"GET / HTTP/1.1\r\n\r\n", big):
                c.send(msg)
                assert c.read_at_least(len(msg)) == msg.upper()
        assert len(rec.requests) == 1
    finally:
        rec.close()


@pytest.mark.corral_only
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_tls_client_that_gives_up_aborts_the_upstream_exchange(corral, certs, how):
    def hold(up, req):
        return "hold"

    rec = Recorder(hold)
    try:
        p = start_tls(corral, [rec.address], [certs["a"]], workers={"cores": [0]})
        c = TLSClient(p.tls_port)
        c.send(build_request("GET", "/slow"))
        assert rec.wait_conns(1, 5 * SLOW)
        deadline = time.monotonic() + 5 * SLOW
        while not rec.conns[0].data and time.monotonic() < deadline:
            time.sleep(0.01)
        if how == "reset":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()  # no close_notify: the socket just goes
        t0 = time.monotonic()
        while not rec.conns[0].eof and time.monotonic() < t0 + 5 * SLOW:
            time.sleep(0.01)
        assert rec.conns[0].eof, "the upstream exchange outlived the client"
        assert time.monotonic() - t0 < 1.0 * SLOW
        assert p.stats()["total"]["client_aborts"] == 1
    finally:
        rec.close()


@pytest.mark.corral_only
def test_lingering_close_over_tls_delivers_the_response(corral, backend, certs):
    """An error answer with request bytes still coming: the response and close_notify arrive."""
    p = start_tls(corral, [backend], [certs["a"]], limits={"body_bytes_max": 1000})
    with TLSClient(p.tls_port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 5000\r\n\r\n" + b"x" * 2000)
        r = c.read_response("POST")
        assert r.status == 413, r
        try:
            c.send(b"y" * 3000)  # late bytes the linger reads and drops
        except OSError:
            pass
        with pytest.raises(Closed) as e:
            c._fill()
        assert not isinstance(e.value, Truncated), e.value


# --- sessions and reloads ------------------------------------------------------------------------


@pytest.mark.corral_only
def test_tickets_resume_across_workers(corral, backend, certs):
    p = start_tls(corral, [backend], [certs["a"]], steering={"policy": "round-robin"})
    ctx = client_ctx()
    with TLSClient(p.tls_port, ctx) as c:
        assert c.get("/").status == 200  # the ticket comes after the handshake
        sess = c.sock.session
    assert sess is not None and sess.has_ticket
    for _ in range(8):
        with TLSClient(p.tls_port, ctx, session=sess) as c:
            assert c.get("/").status == 200
            assert c.sock.session_reused, "the ticket did not resume"
    st = p.stats()
    per_core = [core["tls"]["resumed"] for core in st["cores"]]
    assert sum(per_core) == 8, st["cores"]
    assert all(n > 0 for n in per_core), "every worker must resume the others' tickets: %s" % per_core
    # And after a reload (new contexts, the same ticket keys).
    reload(p, "configuration reloaded")
    with TLSClient(p.tls_port, ctx, session=sess) as c:
        assert c.get("/").status == 200
        assert c.sock.session_reused, "a ticket from before the reload did not resume"


def write_cfg(p, cfg):
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def reload(p, want):
    mark = len(p.err.lines)
    p.proc.send_signal(signal.SIGHUP)
    m = p.err.wait_for(r"(configuration reloaded|reload rejected, old configuration kept: .*)", 10 * SLOW,
                       start=mark)
    assert m, "no reload verdict; log:\n%s" % p.log()[-3000:]
    assert want in m.group(1), m.group(1)
    return m.group(1)


@pytest.mark.corral_only
def test_reload_swaps_certificates_under_an_open_connection(corral, backend, certs, tmp_path):
    p = start_tls(corral, [backend], [certs["a"]])
    new = make_cert(tmp_path, "a2", "new.a.test")
    with TLSClient(p.tls_port) as old:
        assert old.get("/").status == 200
        assert old.cert_cn() == "a.test"
        cfg = dict(p.cfg)
        cfg["listen"] = [p.cfg["listen"][0], tls_entry([new])]
        write_cfg(p, cfg)
        reload(p, "configuration reloaded")
        with TLSClient(p.tls_port) as c:
            assert c.cert_cn() == "new.a.test"
            assert c.get("/").status == 200
        # The connection from before the reload goes on with its session.
        for _ in range(3):
            assert old.get("/").status == 200
        # A bad certificate is refused; the last good one stays.
        cfg["listen"] = [p.cfg["listen"][0], tls_entry([(new[0], certs["b"][1])])]
        write_cfg(p, cfg)
        msg = reload(p, "reload rejected")
        assert "listen[1].tls.certificates[0].key" in msg, msg
        with TLSClient(p.tls_port) as c:
            assert c.cert_cn() == "new.a.test"
            assert c.get("/").status == 200
        assert old.get("/").status == 200


@pytest.mark.corral_only
def test_reload_can_turn_a_plaintext_listener_into_tls(corral, backend, certs):
    p = corral([backend])
    cfg = dict(p.cfg)
    cfg["listen"] = [{"address": p.cfg["listen"][0], "tls": {"certificates": [
        {"cert": certs["a"][0], "key": certs["a"][1]}]}}]
    write_cfg(p, cfg)
    reload(p, "configuration reloaded")
    with TLSClient(p.port) as c:
        assert c.get("/").status == 200


# --- observability -------------------------------------------------------------------------------


@pytest.mark.corral_only
def test_counters_metrics_and_access_log(corral, backend, certs, tmp_path):
    log = str(tmp_path / "access.log")
    p = start_tls(corral, [backend], [certs["a"]], access_log={"path": log, "format": "json"},
                  workers={"cores": [0]})
    with TLSClient(p.tls_port, client_ctx(maxv=ssl.TLSVersion.TLSv1_2)) as c:
        assert c.get("/?tls12").status == 200
        cipher12 = c.sock.cipher()[0]
    with TLSClient(p.tls_port) as c:
        assert c.get("/?tls13").status == 200
        cipher13 = c.sock.cipher()[0]
    assert simple_get(p.port, "/?plain").status == 200
    with socket.create_connection(("127.0.0.1", p.tls_port), timeout=IO) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        read_until_closed(s, IO)
    s = wait_stat(p, lambda s: s["failures"]["plaintext"] == 1, "plaintext not counted")
    assert s["handshakes"] == 2, s
    out = subprocess.run(["curl", "-s", "http://127.0.0.1:%d/metrics" % p.metrics_port], capture_output=True,
                         text=True, timeout=10 * SLOW)
    assert 'corral_tls_handshakes_total{core="0"} 2' in out.stdout, out.stdout[-3000:]
    assert 'corral_tls_failures_total{core="0",reason="plaintext"} 1' in out.stdout, out.stdout[-3000:]
    assert 'corral_tls_resumed_total{core="0"} 0' in out.stdout
    deadline = time.monotonic() + 5 * SLOW
    while True:
        lines = [json.loads(x) for x in open(log).read().splitlines() if x.strip()]
        if len(lines) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by = {ln["uri"]: ln for ln in lines}
    assert by["/?tls12"]["tls"] == "TLSv1.2" and by["/?tls12"]["tls_cipher"] == cipher12, by["/?tls12"]
    assert by["/?tls13"]["tls"] == "TLSv1.3" and by["/?tls13"]["tls_cipher"] == cipher13, by["/?tls13"]
    assert by["/?plain"]["tls"] == "-" and by["/?plain"]["tls_cipher"] == "-", by["/?plain"]
