"""`make install` with PREFIX and DESTDIR into a temporary folder: the files, their modes, the unit
pointing at the installed binaries, and a config edited after the first install kept."""
import os
import shutil
import stat
import subprocess

import pytest

from conftest import BUILD, IN_CI, REPO, SLOW, binary

pytestmark = pytest.mark.corral_only


def make(*args):
    binary("corral")
    binary("corralctl")
    return subprocess.run(["make", "-s", "-C", REPO, "B=" + BUILD] + list(args), capture_output=True, text=True,
                          timeout=300 * SLOW)


def test_make_install_into_destdir(tmp_path):
    dest = str(tmp_path / "stage")
    r = make("install", "DESTDIR=" + dest, "PREFIX=/opt/corral")
    assert r.returncode == 0, r.stdout + r.stderr
    want = {
        "opt/corral/bin/corral": 0o755,
        "opt/corral/bin/corralctl": 0o755,
        "opt/corral/lib/systemd/system/corral.service": 0o644,
        "opt/corral/lib/sysctl.d/60-corral.conf": 0o644,
        "etc/corral/corral.yaml": 0o644,
        "opt/corral/share/doc/corral/config.md": 0o644,
    }
    for rel, mode in want.items():
        p = os.path.join(dest, rel)
        assert os.path.isfile(p), rel
        assert stat.S_IMODE(os.stat(p).st_mode) == mode, (rel, oct(os.stat(p).st_mode))
    # Nothing outside DESTDIR's PREFIX and SYSCONFDIR.
    tops = sorted(os.listdir(dest))
    assert tops == ["etc", "opt"], tops

    corral = os.path.join(dest, "opt/corral/bin/corral")
    out = subprocess.run([corral, "--version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout.startswith("corral "), out
    # The shipped sample config is valid.
    chk = subprocess.run([corral, "--check", "-c", os.path.join(dest, "etc/corral/corral.yaml")],
                         capture_output=True, text=True, timeout=10)
    assert chk.returncode == 0, chk.stderr

    with open(os.path.join(dest, "opt/corral/lib/systemd/system/corral.service")) as f:
        unit = f.read()
    assert "ExecStart=/opt/corral/bin/corral -c /etc/corral/corral.yaml" in unit
    assert "ExecReload=/opt/corral/bin/corralctl reload" in unit
    assert "/usr/local/bin" not in unit

    # A second install keeps an edited config; uninstall removes the rest but not the config.
    cfg = os.path.join(dest, "etc/corral/corral.yaml")
    with open(cfg, "a") as f:
        f.write("# local edit\n")
    r = make("install", "DESTDIR=" + dest, "PREFIX=/opt/corral")
    assert r.returncode == 0, r.stderr
    with open(cfg) as f:
        assert f.read().endswith("# local edit\n")
    r = make("uninstall", "DESTDIR=" + dest, "PREFIX=/opt/corral")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(corral)
    assert not os.path.exists(os.path.join(dest, "opt/corral/lib/systemd/system/corral.service"))
    assert os.path.isfile(cfg)


def test_installed_unit_verifies(tmp_path):
    """The unit as installed with PREFIX (binaries where it says) passes systemd-analyze verify."""
    tool = shutil.which("systemd-analyze")
    if not tool:
        if IN_CI:
            pytest.fail("systemd-analyze is missing (deploy/install-deps.sh installs systemd)")
        pytest.skip("systemd-analyze is missing")
    # A real PREFIX (no DESTDIR) inside tmp_path, so that the unit's paths exist as written.
    prefix = str(tmp_path / "prefix")
    r = make("install", "PREFIX=" + prefix, "SYSCONFDIR=" + str(tmp_path / "etc"))
    assert r.returncode == 0, r.stderr
    unit = os.path.join(prefix, "lib/systemd/system/corral.service")
    r = subprocess.run([tool, "verify", "--man=no", unit], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
