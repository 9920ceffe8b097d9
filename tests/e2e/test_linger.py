"""Lingering close bounds (docs/config.md `linger_ms`, `linger_bytes_max`): after a response that
ends the connection while the client is still sending (here a 413 for a declared body over
body_bytes_max), corral reads and drops what the client sends, for at most linger_ms and at most
linger_bytes_max bytes, then closes."""
import socket
import time

import pytest

from conftest import SLOW
from upstreams import ms, wproxy  # noqa: F401
from util import Client

pytestmark = pytest.mark.corral_only

HEAD = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n"


def refused_upload(p):
    """Starts an oversized upload and reads the 413; returns the client, still open."""
    c = Client(p.port, timeout=10 * SLOW)
    c.send(HEAD + b"x" * 1000)
    r = c.read_response("POST")
    assert r.status == 413, r
    assert r.will_close
    return c


def keep_sending(c, chunk, gap, limit_s, limit_bytes):
    """Sends chunk every gap seconds until the peer resets the connection; returns (seconds,
    bytes sent) at that moment, or None when the limits ran out first."""
    t0 = time.monotonic()
    sent = 0
    c.sock.settimeout(1 * SLOW)
    while time.monotonic() - t0 < limit_s and sent < limit_bytes:
        try:
            c.sock.send(chunk)
            sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0, sent
        except socket.timeout:
            pass  # our send buffer is full: corral stopped reading
        if gap:
            time.sleep(gap)
    return None


def test_linger_ms_bounds_a_lingering_close_of_a_client_that_keeps_sending(wproxy, backend):
    linger = ms(600) / 1000.0
    p = wproxy([backend], timeouts={"linger_ms": int(linger * 1000)}, limits={"body_bytes_max": 1024})
    c = refused_upload(p)
    try:
        got = keep_sending(c, b"y" * 1024, 0.02, linger + 5 * SLOW, 1 << 30)
    finally:
        c.close()
    assert got is not None, "still lingering %.1f s after the 413 (linger_ms %d)" % (linger + 5 * SLOW, linger * 1000)
    secs, sent = got
    # It lingered (reading what we sent) for about linger_ms: not at once, and not much longer.
    # (The clock started when we had read the 413, a little after corral began to linger.)
    assert secs >= linger / 2, "closed after %.2f s, linger_ms is %.2f s" % (secs, linger)
    assert secs <= linger + 2.0 * SLOW, "closed after %.2f s, linger_ms is %.2f s" % (secs, linger)
    assert sent < 262144  # the byte bound (default 256 KiB) was not what ended it


def test_linger_bytes_max_bounds_what_a_lingering_close_reads(wproxy, backend):
    p = wproxy([backend], timeouts={"linger_ms": 30000}, limits={"body_bytes_max": 1024, "linger_bytes_max": 65536})
    c = refused_upload(p)
    try:
        got = keep_sending(c, b"z" * 65536, 0, 10 * SLOW, 64 << 20)
    finally:
        c.close()
    assert got is not None, "a client sending fast was read for 10 s (linger_bytes_max 64 KiB)"
    secs, sent = got
    assert secs < 5 * SLOW
    assert sent >= 65536


def test_linger_bytes_max_zero_closes_at_the_first_extra_byte(wproxy, backend):
    p = wproxy([backend], timeouts={"linger_ms": 30000}, limits={"body_bytes_max": 1024, "linger_bytes_max": 0})
    c = refused_upload(p)
    try:
        got = keep_sending(c, b"w" * 1024, 0.02, 5 * SLOW, 1 << 30)
    finally:
        c.close()
    assert got is not None and got[0] < 2 * SLOW, got
