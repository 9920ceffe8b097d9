"""Helpers for corral's end-to-end tests: a strict raw HTTP/1.1 client (over TCP or TLS), log and
process helpers, RSS."""
import hashlib
import os
import re
import socket
import ssl
import threading
import time

# The body of the backend's /bytes/N is byte i = i % 251 (see tools/backend/backend.c).
PATTERN_PERIOD = 251
_PATTERN = bytes(range(PATTERN_PERIOD)) * ((1 << 20) // PATTERN_PERIOD + 2)

# Default socket timeout: every blocking call in a test is bounded.
IO_TIMEOUT = 10.0


def pattern(offset, n):
    """The n bytes of the backend pattern starting at byte offset."""
    out = bytearray()
    while n:
        start = offset % PATTERN_PERIOD
        take = min(n, len(_PATTERN) - start - PATTERN_PERIOD)
        out += _PATTERN[start:start + take]
        offset += take
        n -= take
    return bytes(out)


def pattern_sha256(n):
    h = hashlib.sha256()
    off = 0
    step = (1 << 20) // PATTERN_PERIOD * PATTERN_PERIOD  # whole periods: every slice starts at 0
    block = _PATTERN[:step]
    while off + step <= n:
        h.update(block)
        off += step
    h.update(pattern(off, n - off))
    return h.hexdigest()


# --- TLS for the raw client -------------------------------------------------------------------


class TlsRaggedEof(ConnectionResetError):
    """The peer ended the TCP stream without close_notify. Over TLS that is how a client detects a
    truncation (RFC 8446 6.1: a close without close_notify may be an attack), the role an RST plays
    over TCP: so it is a ConnectionResetError, and every test that treats a reset as "aborted, not
    complete" treats it the same way. A clean TLS end (close_notify) reads as b"", like a FIN."""


class TlsSocket:
    """A TLS client session over a connected TCP socket, with the socket calls the tests use
    (recv, send, sendall, settimeout, gettimeout, setsockopt, getsockopt, fileno, shutdown, close),
    so a test written against a TCP socket runs over TLS unchanged. Driven through memory BIOs
    rather than ssl.SSLSocket, for two things SSLSocket cannot do:
      - shutdown(SHUT_WR) sends close_notify and keeps reading: TLS 1.3's half-close (RFC 8446
        6.1); SSLSocket.shutdown() drops the session and sends a bare FIN;
      - an EOF without close_notify raises TlsRaggedEof instead of reading as a clean end.
    Ciphertext is read from the kernel only inside recv(), so select() on fileno() means what it
    means for TCP as long as recv() is called with a size the caller drains (the Client does)."""

    def __init__(self, raw, ctx, server_name, session=None):
        # Python sets OP_IGNORE_UNEXPECTED_EOF, which reads a TCP close without close_notify as a
        # clean end: exactly what must stay detectable here.
        ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._outbio = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._outbio, server_side=False, server_hostname=server_name,
                                session=session)
        self._out = bytearray()  # ciphertext not yet sent
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._pull()
            except ssl.SSLEOFError as e:
                raise TlsRaggedEof("TCP closed during the handshake") from e
            except ssl.SSLError as e:
                if "UNEXPECTED_EOF" in str(e).upper():
                    raise TlsRaggedEof("TCP closed during the handshake") from e
                raise
        self._flush()

    # what TLS agreed
    def version(self):
        return self.obj.version()

    def cipher(self):
        return self.obj.cipher()

    def session(self):
        return self.obj.session

    def session_reused(self):
        return self.obj.session_reused

    def getpeercert(self, binary_form=False):
        return self.obj.getpeercert(binary_form)

    def selected_alpn_protocol(self):
        return self.obj.selected_alpn_protocol()

    def _pull(self):
        data = self.raw.recv(65536)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def _flush(self):
        """Sends the queued ciphertext; socket.timeout leaves what did not go queued."""
        self._out += self._outbio.read()
        while self._out:
            n = self.raw.send(self._out)
            del self._out[:n]

    def recv(self, n):
        while True:
            try:
                data = self.obj.read(n)
            except ssl.SSLWantReadError:
                self._flush()
                self._pull()
                continue
            except ssl.SSLZeroReturnError:
                return b""  # close_notify: the clean end
            except ssl.SSLEOFError as e:
                raise TlsRaggedEof("TCP closed without close_notify") from e
            except ssl.SSLError as e:
                if "UNEXPECTED_EOF" in str(e).upper():
                    raise TlsRaggedEof("TCP closed without close_notify") from e
                raise
            self._flush()  # a post-handshake message (KeyUpdate) may want an answer
            return data

    def send(self, data):
        """Queues data (one write: all of it) and sends what the kernel takes within the timeout;
        the rest goes out first on the next call, which raises socket.timeout when it cannot."""
        self._flush()
        n = self.obj.write(data)
        try:
            self._flush()
        except socket.timeout:
            pass
        return n

    def sendall(self, data):
        self._flush()
        self.obj.write(data)
        self._flush()

    def shutdown(self, how):
        """SHUT_WR: close_notify, then reading goes on (TLS 1.3 half-close). SHUT_RD(WR): TCP's."""
        if how == socket.SHUT_WR:
            try:
                self.obj.unwrap()
            except ssl.SSLWantReadError:
                pass  # the peer's close_notify has not come: the read side stays open
            self._flush()
            return
        self.raw.shutdown(how)

    def settimeout(self, t):
        self.raw.settimeout(t)

    def gettimeout(self):
        return self.raw.gettimeout()

    def setsockopt(self, *a):
        self.raw.setsockopt(*a)

    def getsockopt(self, *a):
        return self.raw.getsockopt(*a)

    def fileno(self):
        return self.raw.fileno()

    def close(self):
        """Closes the TCP socket without close_notify (what ssl.SSLSocket.close does too)."""
        self.raw.close()


TLS_SERVER_NAME = "e2e.test"


def tls_client_context(trust, alpn=("http/1.1",)):
    """A client context that trusts the certificate files in trust (self-signed ones are their own
    anchors) and checks the server's name; TLS 1.2 and 1.3, OpenSSL's default offer otherwise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in trust:
        ctx.load_verify_locations(cafile=path)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TlsPort(int):
    """A TLS listener's port: an int (connect to it like any port) that carries the client context
    and server name (and optionally a session to resume, from the same context), so that
    Client(port) and exchange(port, ...) speak TLS to it and a test body written for a plaintext
    port runs unchanged over TLS."""

    def __new__(cls, port, ctx, server_name=TLS_SERVER_NAME, session=None):
        self = int.__new__(cls, port)
        self.tls = ctx
        self.server_name = server_name
        self.session = session
        return self


def connect(port, host="127.0.0.1", timeout=IO_TIMEOUT):
    """A connected socket to port: a TCP socket, or a TlsSocket after its handshake when port is a
    TlsPort."""
    sock = socket.create_connection((host, int(port)), timeout=timeout)  # getaddrinfo wants an exact int
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctx = getattr(port, "tls", None)
    if ctx is None:
        return sock
    try:
        return TlsSocket(sock, ctx, port.server_name, port.session)
    except BaseException:
        sock.close()
        raise


class ProtocolError(Exception):
    """The peer sent something that is not valid HTTP/1.1."""


class Closed(Exception):
    """The peer closed (or reset) the connection before a complete message."""


class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []  # [(name, value)] as received, names as sent
        self.head_raw = b""
        self.body = b""  # None when a sink consumed it
        self.body_len = 0
        self.framing = None  # "none", "length", "chunked" or "close"
        self.interim = []  # 1xx responses that preceded this one

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name):
        vals = self.header_all(name)
        if not vals:
            return None
        if len(vals) > 1:
            raise ProtocolError("header %s repeated: %r" % (name, vals))
        return vals[0]

    def conn_tokens(self):
        toks = set()
        for v in self.header_all("connection"):
            toks.update(t.strip().lower() for t in v.split(",") if t.strip())
        return toks

    @property
    def will_close(self):
        """True when the server said this response ends the connection."""
        if self.framing == "close" or "close" in self.conn_tokens():
            return True
        return self.version == "HTTP/1.0" and "keep-alive" not in self.conn_tokens()

    def __repr__(self):
        return "<Response %s %s %d bytes>" % (self.status, self.reason, self.body_len)


_STATUS_RE = re.compile(rb"^(HTTP/1\.[01]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?$")
_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE_RE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_CHUNK_RE = re.compile(rb"^([0-9A-Fa-f]{1,16})(;[\t\x20-\x7e\x80-\xff]*)?$")


class Client:
    """One client connection with its own receive buffer, so pipelined responses can be read in order."""

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT):
        self.sock = connect(port, host, timeout)  # a TlsSocket for a TlsPort
        self.buf = bytearray()
        self.port = port

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        self.sock.sendall(data)

    def abort(self):
        """Closes with an RST (SO_LINGER 0), like a crashed client."""
        import struct
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def _fill(self, want=262144):
        try:
            data = self.sock.recv(want)
        except ConnectionResetError as e:
            raise Closed("connection reset") from e
        if not data:
            raise Closed("connection closed")
        self.buf += data

    def _line(self, limit=65536):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                if i == 0 or self.buf[i - 1] != 0x0D:
                    raise ProtocolError("bare LF in %r" % bytes(self.buf[:i + 1][-80:]))
                line = bytes(self.buf[:i - 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise ProtocolError("line longer than %d bytes" % limit)
            self._fill()

    def _take(self, n, sink, resp):
        """Moves n body bytes to sink or resp.body."""
        while n:
            if not self.buf:
                self._fill(min(max(n, 4096), 1 << 20))
            piece = bytes(self.buf[:n])
            del self.buf[:len(piece)]
            n -= len(piece)
            resp.body_len += len(piece)
            if sink:
                sink(piece)
            else:
                resp.body += piece

    def _head(self, resp):
        line = self._line()
        raw = [line]
        m = _STATUS_RE.match(line)
        if not m:
            raise ProtocolError("bad status line %r" % line[:200])
        resp.version = m.group(1).decode()
        resp.status = int(m.group(2))
        resp.reason = (m.group(3) or b"").decode("latin-1")
        resp.headers = []
        while True:
            line = self._line()
            raw.append(line)
            if line == b"":
                break
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError("obsolete line folding: %r" % line)
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN_RE.match(name):
                raise ProtocolError("bad header line %r" % line[:200])
            value = value.strip(b" \t")
            if not _FIELD_VALUE_RE.match(value):
                raise ProtocolError("bad header value %r" % line[:200])
            resp.headers.append((name.decode(), value.decode("latin-1")))
            if len(resp.headers) > 500:
                raise ProtocolError("too many response headers")
        resp.head_raw = b"\r\n".join(raw) + b"\r\n"

    def read_at_least(self, n):
        """Everything received until at least n bytes are in (a tunnel's echo, say): more than
        n when more arrived, so a caller comparing with what it expects sees extra bytes too."""
        got = b""
        while len(got) < n:
            if not self.buf:
                self._fill()
            got += bytes(self.buf)
            self.buf.clear()
        return got

    def read_response(self, method="GET", sink=None, max_body=256 << 20, interim=False):
        """Reads one complete response strictly (RFC 9112). 1xx responses are collected in .interim
        (or, with interim=True, the first one is returned). With sink, body bytes go to sink(piece)
        and .body is None. Raises Closed or ProtocolError."""
        resp = Response()
        while True:
            self._head(resp)
            if 100 <= resp.status < 200:
                if resp.status == 101 or interim:
                    resp.framing = "none"
                    return resp
                one = Response()
                one.__dict__.update(resp.__dict__)
                resp = Response()
                resp.interim = one.interim + [one]
                continue
            break
        te = resp.header_all("transfer-encoding")
        cls = resp.header_all("content-length")
        if te and cls:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if sink:
            resp.body = None
        if method == "HEAD" or resp.status in (204, 304):
            if resp.status in (204, 304) and (te or cls):
                if resp.status == 204:
                    raise ProtocolError("204 with framing headers")
            resp.framing = "none"
            return resp
        if te:
            codings = [t.strip().lower() for v in te for t in v.split(",")]
            if codings != ["chunked"]:
                raise ProtocolError("unexpected transfer-coding %r" % te)
            resp.framing = "chunked"
            while True:
                line = self._line()
                m = _CHUNK_RE.match(line)
                if not m:
                    raise ProtocolError("bad chunk size line %r" % line[:100])
                size = int(m.group(1), 16)
                if resp.body_len + size > max_body:
                    raise ProtocolError("body over %d bytes" % max_body)
                if size == 0:
                    break
                self._take(size, sink, resp)
                if self._line() != b"":
                    raise ProtocolError("chunk data not followed by CRLF")
            while True:  # trailers
                line = self._line()
                if line == b"":
                    break
                if b":" not in line:
                    raise ProtocolError("bad trailer %r" % line[:100])
            return resp
        if cls:
            vals = set()
            for v in cls:
                for part in v.split(","):
                    if not re.fullmatch(r"[0-9]{1,18}", part.strip()):
                        raise ProtocolError("bad Content-Length %r" % v)
                    vals.add(int(part.strip()))
            if len(vals) != 1:
                raise ProtocolError("conflicting Content-Length %r" % cls)
            n = vals.pop()
            if n > max_body:
                raise ProtocolError("body over %d bytes" % max_body)
            resp.framing = "length"
            self._take(n, sink, resp)
            return resp
        resp.framing = "close"
        while True:
            if self.buf:
                piece = bytes(self.buf)
                self.buf.clear()
                resp.body_len += len(piece)
                if resp.body_len > max_body:
                    raise ProtocolError("body over %d bytes" % max_body)
                if sink:
                    sink(piece)
                else:
                    resp.body += piece
            try:
                self._fill()
            except Closed:
                return resp

    def request(self, method, target, headers=None, body=None, host="e2e.test"):
        """Sends one request (Content-Length framing when body is given) and reads its response."""
        self.send(build_request(method, target, headers, body, host))
        return self.read_response(method)

    def get(self, target, headers=None):
        return self.request("GET", target, headers)

    def wait_closed(self, timeout=2.0):
        """True if the peer closes (EOF or reset) within timeout with no further bytes; raises on data."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
            if data:
                raise ProtocolError("unexpected bytes while waiting for close: %r" % data[:200])
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(old)


def build_request(method, target, headers=None, body=None, host="e2e.test", version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, target, version)]
    names = set()
    for k, v in (headers or []):
        lines.append("%s: %s" % (k, v))
        names.add(k.lower())
    if host is not None and "host" not in names:
        lines.insert(1, "Host: %s" % host)
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def chunked(pieces, ext=False):
    """Encodes pieces as a chunked body (empty pieces are skipped), ending with the last chunk."""
    out = bytearray()
    for i, p in enumerate(pieces):
        if not p:
            continue
        out += b"%x" % len(p)
        if ext and i % 2:
            out += b";name=value"
        out += b"\r\n" + p + b"\r\n"
    out += b"0\r\n\r\n"
    return bytes(out)


def simple_get(port, target="/", headers=None, timeout=IO_TIMEOUT):
    with Client(port, timeout=timeout) as c:
        return c.get(target, headers)


def counted_get(port, target="/", timeout=IO_TIMEOUT):
    """One GET on a new connection: (response, bytes the client sent, bytes it received). The
    client sends nothing else and closes after the response, so these are the connection's
    totals, what the proxy's bytes_in / bytes_out must count for it."""
    wire = build_request("GET", target)
    with Client(port, timeout=timeout) as c:
        c.send(wire)
        r = c.read_response()
        return r, len(wire), len(r.head_raw) + len(r.body)


def exchange(port, wire, timeout=IO_TIMEOUT, ends=(), total=None):
    """Sends wire on a new connection to 127.0.0.1:port and returns every byte received until the
    peer closes. An exception of a type in ends (say ConnectionResetError, socket.timeout) also ends
    the reading, quietly, and so does the clock total seconds after the start when total is given;
    any other error raises. No parsing: for answers a strict Client must not see, and for the
    metrics listener's plain ones."""
    s = connect(port, timeout=timeout)
    try:
        s.sendall(wire)
        out = b""
        deadline = None if total is None else time.monotonic() + total
        while deadline is None or time.monotonic() < deadline:
            try:
                d = s.recv(65536)
            except ends:
                break
            if not d:
                break
            out += d
        return out
    finally:
        s.close()


def status_of(raw):
    """The status code of a raw response."""
    return int(raw.split(b" ", 2)[1])


def parse_head_lines(raw):
    """Splits a raw request head (as /headers returns it) into (request line, [(name, value)])."""
    text = raw.decode("latin-1")
    assert text.endswith("\r\n\r\n"), "forwarded head does not end with CRLF CRLF: %r" % text[-20:]
    lines = text[:-4].split("\r\n")
    hdrs = []
    for ln in lines[1:]:
        name, sep, value = ln.partition(":")
        assert sep, "bad forwarded header line %r" % ln
        hdrs.append((name, value.strip(" \t")))
    return lines[0], hdrs


# --- processes and logs -------------------------------------------------------------------


class LogReader:
    """Drains a process's stream in a thread (so it never blocks on a full pipe) and lets tests wait for lines."""

    def __init__(self, stream, name):
        self.lines = []
        self.cond = threading.Condition()
        self.eof = False
        self.thread = threading.Thread(target=self._run, args=(stream,), name=name, daemon=True)
        self.thread.start()

    def _run(self, stream):
        for raw in iter(stream.readline, b""):
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, regex, timeout, start=0):
        """Returns the first match of regex in a line at index >= start, or None at timeout/EOF."""
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self.cond.wait(left)

    def text(self):
        with self.cond:
            return "\n".join(self.lines)

    def join(self, timeout=5.0):
        self.thread.join(timeout)


SANITIZER_RE = re.compile(r"(ERROR: \w*Sanitizer|runtime error:|WARNING: \w*Sanitizer|SUMMARY: \w*Sanitizer)")


def sanitizer_report(text):
    """The first sanitizer report line in text, or None."""
    m = SANITIZER_RE.search(text)
    if not m:
        return None
    start = text.rfind("\n", 0, m.start()) + 1
    return text[start:start + 2000]


def _ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    return int(s[s.rfind(")") + 2:].split()[1])


def tree_pids(pid):
    """pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            pp = _ppid(int(d))
            if pp is not None:
                children.setdefault(pp, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_bytes(pid):
    """Resident set size of one process in bytes (0 if it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid):
    """RSS of a process and its descendants (NGINX's master + workers; corral is one process)."""
    return sum(rss_bytes(p) for p in tree_pids(pid))


class RssSampler:
    """Samples tree_rss(pid) every interval seconds in a thread; .peak and .samples after stop()."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._pids = tree_pids(pid)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(sum(rss_bytes(p) for p in self._pids))
            self._stop.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(5)

    @property
    def peak(self):
        return max(self.samples) if self.samples else 0


# --- misbehaving upstreams ----------------------------------------------------------------


_held_dead = []


def dead_address():
    """A loopback address that refuses connections: a bound socket that never listens. It stays
    bound for the life of the test process, so no other process can take the port meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _held_dead.append(s)
    return "127.0.0.1:%d" % s.getsockname()[1]


def accept_until(lsock, stop, on_conn):
    """Calls on_conn(sock) for each connection lsock accepts, until the event stop is set (lsock
    has a timeout, so it is seen) or lsock is closed."""
    while not stop.is_set():
        try:
            c, _ = lsock.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        on_conn(c)


class SilentServer:
    """Accepts connections, reads what is sent, and never answers."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.conns = []
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        accept_until(self.lsock, self._stop, self._keep)

    def _keep(self, c):
        c.setblocking(False)
        self.conns.append(c)
        self.accepted += 1

    def close(self):
        self._stop.set()
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.lsock.close()


def free_port():
    """A loopback port nobody listens on just now (the kernel's pick, released at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connect_refused(port, timeout=1.0):
    """True if a TCP connect to port is refused (nobody listening)."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


class BlackholeServer:
    """A listener whose accept queue is full and never drained: new SYNs are dropped, so a
    connect to it hangs until the connector's own timeout (an unreachable backend)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.fill = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fill.append(s)
        time.sleep(0.05)
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise RuntimeError("blackhole listener still completes handshakes")
        except (socket.timeout, TimeoutError):
            pass
        finally:
            probe.close()

    def close(self):
        for s in self.fill:
            s.close()
        self.lsock.close()


# --- load generation ------------------------------------------------------------------------


class WrkResult:
    """What wrk reported: .requests (completed requests), .socket_errors (the "Socket errors:"
    line or None), .non_2xx_3xx (count), .stdout."""

    def __init__(self, stdout):
        self.stdout = stdout
        m = re.search(r"^\s*(\d+) requests in ", stdout, re.M)
        if not m:
            raise AssertionError("no request count in wrk's output:\n%s" % stdout)
        self.requests = int(m.group(1))
        m = re.search(r"^\s*Socket errors:.*$", stdout, re.M)
        self.socket_errors = m.group(0).strip() if m else None
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", stdout)
        self.non_2xx_3xx = int(m.group(1)) if m else 0

    def assert_clean(self):
        """No transport error and no error response: wrk prints those lines only when non-zero."""
        assert self.socket_errors is None, "wrk: %s\n%s" % (self.socket_errors, self.stdout)
        assert self.non_2xx_3xx == 0, "wrk: %d non-2xx/3xx responses\n%s" % (self.non_2xx_3xx, self.stdout)


def wrk(url, seconds, connections=32, threads=2, headers=(), timeout_s=None):
    """Runs wrk for seconds (bounded by a timeout) and returns its WrkResult. timeout_s: wrk's
    own per-request timeout (its default is 2 s; a request slower than that is a socket error)."""
    import subprocess
    args = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds]
    if timeout_s:
        args += ["--timeout", "%ds" % timeout_s]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + 30)
    assert out.returncode == 0, out.stderr
    return WrkResult(out.stdout)
