"""A recording fake backend for the hardening tests: keeps the exact bytes of every upstream connection
and answers with scripted raw bytes, so tests can check what a proxy forwards and feed it faulty responses."""
import socket
import struct
import threading
import time

IO_TIMEOUT = 10.0

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Request:
    """One request as received: raw bytes (head + body framing exactly as sent), parsed head, decoded body."""

    def __init__(self):
        self.raw = b""
        self.head = b""
        self.line = ""
        self.method = ""
        self.target = ""
        self.version = ""
        self.headers = []  # [(name, value)] as received
        self.body = b""  # decoded payload
        self.body_raw = b""  # the body bytes with their framing
        self.framing = "none"
        self.complete = False

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name):
        v = self.header_all(name)
        return v[0] if len(v) == 1 else (None if not v else v)

    def names(self):
        return [k.lower() for k, _ in self.headers]

    def __repr__(self):
        return "<Request %r complete=%s %d raw bytes>" % (self.line, self.complete, len(self.raw))


class Eof(Exception):
    pass


class UpConn:
    """One upstream connection accepted by the recorder (proxy -> recorder)."""

    def __init__(self, rec, sock, index):
        self.rec = rec
        self.sock = sock
        self.index = index  # 0 for the first connection the recorder accepted
        self.data = bytearray()  # every byte received, in order
        self.buf = bytearray()  # not yet parsed
        self.requests = []
        self.eof = False
        self.closed_at = None
        self.accepted_at = time.monotonic()
        self.sent = 0

    # --- receive side ---
    def _fill(self):
        try:
            d = self.sock.recv(65536)
        except (ConnectionResetError, OSError):
            d = b""
        if not d:
            self.eof = True
            self.closed_at = time.monotonic()
            raise Eof()
        with self.rec.lock:
            self.data += d
        self.buf += d

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return out
            self._fill()

    def read_request(self):
        """Reads one request; returns it (complete=False and raw partial if EOF came first) or None at clean EOF."""
        req = Request()
        with self.rec.lock:
            self.requests.append(req)
        try:
            while b"\r\n\r\n" not in self.buf:
                if not self.buf and self.eof:
                    raise Eof()
                self._fill()
        except Eof:
            req.raw = bytes(self.buf)
            if not req.raw:
                with self.rec.lock:
                    self.requests.remove(req)
                return None
            return req
        i = self.buf.find(b"\r\n\r\n") + 4
        req.head = bytes(self.buf[:i])
        del self.buf[:i]
        req.raw = req.head
        lines = req.head[:-4].decode("latin-1").split("\r\n")
        req.line = lines[0]
        parts = req.line.split(" ")
        if len(parts) == 3:
            req.method, req.target, req.version = parts
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            req.headers.append((k, v.strip(" \t")))
        te = ",".join(req.header_all("transfer-encoding")).lower()
        cl = req.header_all("content-length")
        try:
            if "chunked" in te:
                req.framing = "chunked"
                raw = bytearray()
                while True:
                    line = self._line()
                    raw += line
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        break
                    req.body_raw = bytes(raw)
                    chunk = self._take(size + 2)
                    raw += chunk
                    req.body += chunk[:-2]
                    req.body_raw = bytes(raw)
                while True:
                    req.body_raw = bytes(raw)
                    line = self._line()
                    raw += line
                    if line in (b"\r\n", b"\n"):
                        break
                req.body_raw = bytes(raw)
            elif cl:
                req.framing = "length"
                n = int(cl[0])
                got = bytearray()
                while len(got) < n:
                    if not self.buf:
                        try:
                            self._fill()
                        except Eof:
                            req.body = bytes(got)
                            req.raw = req.head + req.body
                            raise
                    piece = bytes(self.buf[:n - len(got)])
                    del self.buf[:len(piece)]
                    got += piece
                req.body = req.body_raw = bytes(got)
        except Eof:
            req.raw = req.head + (req.body_raw or req.body)
            return req
        except ValueError:
            req.raw = req.head + bytes(self.buf)
            return req
        req.raw = req.head + req.body_raw
        req.complete = True
        return req

    def drain(self):
        """Reads and records until EOF (or the recorder stops)."""
        try:
            while True:
                self._fill()
        except Eof:
            pass

    # --- send side ---
    def send(self, data):
        try:
            self.sock.sendall(data)
            self.sent += len(data)
            return True
        except OSError:
            return False

    def shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Closes with an RST."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()


def default_handler(up, req):
    up.send(OK)
    return "keep"


class Recorder:
    """A threaded fake backend on 127.0.0.1:0.

    handler(up, req) is called for every request read (req.complete may be False when the proxy
    closed mid-request; then the handler is not called). It sends what it wants with up.send() and
    returns "keep" (read the next request), "close", "reset", "hold" (record until EOF, never answer)
    or "done" (the handler took the socket over; the recorder just closes it when the handler returns).
    on_accept(up) may return "hold", "close" or "reset" to act before any request is read."""

    def __init__(self, handler=default_handler, on_accept=None):
        self.handler = handler
        self.on_accept = on_accept
        self.lock = threading.Lock()
        self.conns = []
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(256)
        self.lsock.settimeout(0.05)
        self.port = self.lsock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self._stop = threading.Event()
        self.threads = []
        self.errors = []
        self.thread = threading.Thread(target=self._accept_loop, name="recorder", daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(IO_TIMEOUT)
            with self.lock:
                up = UpConn(self, s, len(self.conns))
                self.conns.append(up)
            t = threading.Thread(target=self._serve, args=(up,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, up):
        try:
            act = self.on_accept(up) if self.on_accept else None
            while act is None or act == "keep":
                req = up.read_request()
                if req is None or not req.complete:
                    act = "close"
                    break
                act = self.handler(up, req)
            if act == "hold":
                up.drain()
            if act == "reset":
                up.reset()
            else:
                up.close()
        except Exception as e:  # a handler bug must be visible to the test, not a silent hang
            self.errors.append(repr(e))
            up.close()

    # --- what the tests look at ---
    @property
    def requests(self):
        """Every complete request, in arrival order over all connections."""
        with self.lock:
            return [r for c in self.conns for r in c.requests if r.complete]

    @property
    def partial(self):
        """Requests that were cut short (head or body incomplete)."""
        with self.lock:
            return [r for c in self.conns for r in c.requests if not r.complete]

    def received(self):
        """Total bytes received over all connections."""
        with self.lock:
            return sum(len(c.data) for c in self.conns)

    def wait_requests(self, n, timeout=2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= n:
                return True
            time.sleep(0.01)
        return len(self.requests) >= n

    def wait_conns(self, n, timeout=2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.conns) >= n:
                return True
            time.sleep(0.01)
        return False

    def settle(self, quiet=0.15, timeout=2.0):
        """Waits until no new byte has arrived for quiet seconds (so 'nothing forwarded' can be asserted)."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            n = self.received() + len(self.conns)
            if n == last:
                return
            last = n
            time.sleep(quiet)

    def close(self):
        self._stop.set()
        self.thread.join(2)
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()
