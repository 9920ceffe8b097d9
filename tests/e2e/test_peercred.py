"""The control socket's credential check (operations.md: connections from any user other than
root and the daemon's own user are closed, checked with SO_PEERCRED), tested as it is attacked:
the socket and its folder are made reachable by everyone, so file permissions stop nothing and
only the daemon's check stands between uid 65534 and the control commands."""
import json
import os
import subprocess
import sys

import pytest

from conftest import SLOW
from upstreams import ctl_json, need_root, open_folder, wproxy  # noqa: F401

pytestmark = pytest.mark.corral_only

NOBODY = 65534

# Runs as the other user: connect, send one command, report what happened as one JSON line.
CLIENT = r"""
import json, socket, sys
out = {}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[2]))
try:
    s.connect(sys.argv[1])
    out["connected"] = True
except OSError as e:
    out["connected"] = False
    out["connect_errno"] = e.errno
if out["connected"]:
    try:
        s.sendall(sys.argv[3].encode() + b"\n")
    except OSError as e:
        out["send_errno"] = e.errno
    data = b""
    try:
        while b"\n" not in data:
            piece = s.recv(65536)
            if not piece:
                out["eof"] = True
                break
            data += piece
    except socket.timeout:
        out["timeout"] = True
    except OSError as e:
        out["recv_errno"] = e.errno
    out["reply"] = data.decode("latin-1")
print(json.dumps(out))
"""


def as_user(uid, path, cmd):
    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    r = subprocess.run([sys.executable, "-c", CLIENT, path, str(3 * SLOW), cmd], capture_output=True,
                       text=True, timeout=20 * SLOW, preexec_fn=drop if uid != os.geteuid() else None)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_another_uid_is_refused_by_the_credential_check_not_by_file_permissions(wproxy, backend, open_folder):
    need_root("switching to uid 65534")
    sock = os.path.join(open_folder, "ctl.sock")
    p = wproxy([backend], admin={"socket": sock, "metrics": ""})
    assert ctl_json(p, "status")["pid"] == p.proc.pid
    # What an attacker would find after an operator's mistake: everything open to everyone.
    os.chmod(sock, 0o666)
    os.chmod(open_folder, 0o755)
    cmd = json.dumps({"cmd": "backend-disable", "addr": backend.address, "force": True})
    # Root (the daemon's own uid) is served on the same path.
    mine = as_user(os.geteuid(), sock, json.dumps({"cmd": "status"}))
    assert mine.get("connected") and json.loads(mine["reply"])["ok"] is True, mine
    other = as_user(NOBODY, sock, cmd)
    # The connect itself succeeds (no EACCES): file permissions did not stop it...
    assert other["connected"], "uid %d could not even connect (%r): the test did not reach the " \
        "credential check" % (NOBODY, other)
    # ...and the daemon closed it without a reply.
    assert other["reply"] == "", "uid %d got a reply from the control socket: %r" % (NOBODY, other["reply"])
    assert other.get("eof") or other.get("recv_errno"), other
    # The command had no effect, and the daemon still serves its own user.
    rows = ctl_json(p, "backends")
    rows = rows["backends"] if isinstance(rows, dict) else rows
    assert [b["state"] for b in rows] == ["up"], rows
    assert ctl_json(p, "status")["pid"] == p.proc.pid
