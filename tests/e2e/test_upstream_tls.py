"""TLS to backends (backends[i].tls): `--check` validates the tls mapping with file:line: key:
errors, and until the upstream side speaks TLS neither start-up nor a reload accepts one (the
backend would be sent plaintext)."""
import signal
import subprocess

import pytest
import yaml

from conftest import SLOW, binary
from upstreams import make_tls_cert
from util import simple_get

REFUSED = "TLS to backends is validated but not yet spoken by this build"


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
def test_check_accepts_good_backend_tls_and_start_refuses_it(tmp_path):
    ca, _ = make_tls_cert(str(tmp_path), "ca", "a.test", "DNS:a.test")
    good = write_cfg(tmp_path, ["127.0.0.1:9000",
                                {"address": "127.0.0.1:9443", "tls": {"ca": ca, "sni": "a.test"}}])
    r = check(good)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert REFUSED in r.stderr, "--check does not say the daemon will refuse the TLS backend"

    r = subprocess.run([binary("corral"), "-c", str(good)], capture_output=True, text=True,
                       timeout=20 * SLOW, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "backends[1] 127.0.0.1:9443: " + REFUSED in r.stderr, r.stderr
    assert "listening on" not in r.stderr and "ready" not in r.stderr, r.stderr


@pytest.mark.corral_only
def test_reload_cannot_add_tls_to_a_backend(corral, backend, tmp_path):
    """The same backend address with tls: added: a reload must not go on sending it plaintext."""
    p = corral([backend])
    ca, _ = make_tls_cert(str(tmp_path), "ca", "a.test", "DNS:a.test")
    cfg = dict(p.cfg)
    cfg["backends"] = [{"address": backend.address, "tls": {"verify": False}}]
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    mark = len(p.err.lines)
    p.proc.send_signal(signal.SIGHUP)
    m = p.err.wait_for(r"reload rejected, old configuration kept: (.*)", 10 * SLOW, start=mark)
    assert m, "no reload verdict; log:\n%s" % p.log()[-3000:]
    assert REFUSED in m.group(1)
    assert p.err.wait_for(r"configuration reloaded", 0.5, start=mark) is None
    assert simple_get(p.port).status == 200, "the old configuration still serves"
