"""Listen addresses (docs/config.md `listen`): IPv4 and IPv6, several at once, each served by
every worker, with the client address the backend sees."""
import pytest

from upstreams import get_from, listen_ports, wproxy  # noqa: F401
from util import parse_head_lines

pytestmark = pytest.mark.corral_only


def test_ipv4_and_ipv6_and_two_kernel_chosen_ports_are_all_served(wproxy, backend_factory):
    be = backend_factory(ident="be")
    p = wproxy([be], listen=["127.0.0.1:0", "[::1]:0", "127.0.0.1:0"])
    addrs = listen_ports(p)
    assert len(addrs) == 3, p.log()
    assert [h for h, _ in addrs] == ["127.0.0.1", "::1", "127.0.0.1"], addrs
    assert addrs[0][1] != addrs[2][1]  # port 0 twice: two different ports
    for host, port in addrs:
        for _ in range(6):  # new connections: both workers' listeners
            r = get_from(port, "/headers", host=host)
            assert r.status == 200 and r.header("x-backend-id") == "be", (host, r)
            _, hdrs = parse_head_lines(r.body)
            xff = [v for k, v in hdrs if k.lower() == "x-forwarded-for"]
            assert xff and xff[-1].split(",")[-1].strip() == host, (host, hdrs)
    assert be.stats()["requests"] == 18


def test_ipv6_backend(wproxy):
    import socket
    import threading
    ls = socket.socket(socket.AF_INET6)
    ls.bind(("::1", 0))
    ls.listen(8)
    ls.settimeout(10)
    port = ls.getsockname()[1]
    got = []

    def serve():
        c, _ = ls.accept()
        with c:
            c.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            got.append(data)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        p = wproxy(["[::1]:%d" % port])
        r = get_from(p.port, "/six")
        assert r.status == 200 and r.body == b"v6"
        t.join(5)
        assert got and got[0].startswith(b"GET /six HTTP/1.1\r\n"), got
    finally:
        ls.close()
