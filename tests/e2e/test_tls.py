"""TLS listeners before the data path serves TLS: `--check` validates them fully, and neither
start-up nor a reload may accept one (it would be served in plaintext)."""
import signal
import subprocess

import pytest
import yaml

from conftest import SLOW, binary
from util import simple_get

REFUSED = "TLS listeners are validated but not yet served by this build"


def make_cert(tmp, name, cn):
    cert, key = tmp / (name + ".pem"), tmp / (name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=DNS:" + cn],
                   check=True, capture_output=True, timeout=30 * SLOW)
    return str(cert), str(key)


def tls_config(tmp, backend, cert, key):
    cfg = {
        "listen": ["127.0.0.1:0", {"address": "127.0.0.1:0",
                                   "tls": {"certificates": [{"cert": cert, "key": key}],
                                           "protocols": ["TLSv1.2", "TLSv1.3"]}}],
        "backends": [backend.address],
        "admin": {"socket": ""},
    }
    path = tmp / "tls.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.corral_only
def test_check_validates_tls_and_start_refuses_it(tmp_path, backend):
    cert, key = make_cert(tmp_path, "a", "a.test")
    good = tls_config(tmp_path, backend, cert, key)
    r = subprocess.run([binary("corral"), "--check", "-c", str(good)], capture_output=True, text=True,
                       timeout=10 * SLOW)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert REFUSED in r.stderr, "--check does not say the daemon will refuse the TLS listener"

    # Start-up: one clear line, non-zero exit, no listener opened.
    r = subprocess.run([binary("corral"), "-c", str(good)], capture_output=True, text=True,
                       timeout=20 * SLOW, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "listen[1] 127.0.0.1:0: " + REFUSED in r.stderr, r.stderr
    assert "listening on" not in r.stderr and "ready" not in r.stderr, r.stderr

    # A certificate error is a file:line: key: error from --check.
    _, other_key = make_cert(tmp_path, "b", "b.test")
    bad = tls_config(tmp_path, backend, cert, other_key)
    r = subprocess.run([binary("corral"), "--check", "-c", str(bad)], capture_output=True, text=True,
                       timeout=10 * SLOW)
    assert r.returncode != 0
    assert "listen[1].tls.certificates[0].key: %s does not belong to the certificate in %s" % (other_key, cert) \
        in r.stderr, r.stderr


@pytest.mark.corral_only
def test_reload_cannot_turn_a_plaintext_listener_into_tls(corral, backend, tmp_path):
    """The same address with tls: added passes the 'listen addresses cannot change' rule, so a
    reload would otherwise keep serving it in plaintext."""
    p = corral([backend])
    cert, key = make_cert(tmp_path, "a", "a.test")
    cfg = dict(p.cfg)
    cfg["listen"] = [{"address": p.cfg["listen"][0], "tls": {"certificates": [{"cert": cert, "key": key}]}}]
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    mark = len(p.err.lines)
    p.proc.send_signal(signal.SIGHUP)
    m = p.err.wait_for(r"reload rejected, old configuration kept: (.*)", 10 * SLOW, start=mark)
    assert m, "no reload verdict; log:\n%s" % p.log()[-3000:]
    assert REFUSED in m.group(1)
    assert p.err.wait_for(r"configuration reloaded", 0.5, start=mark) is None
    assert simple_get(p.port).status == 200, "the plaintext listener still serves"
