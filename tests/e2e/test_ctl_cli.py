"""corralctl's command line (issue 8, defect 11): getopt_long options, --help on the tool and on
every subcommand (exit 0, on stdout), --version, --socket as the long form of -s, and exit 2
with one line on stderr for every usage error."""
import json
import subprocess

import pytest

from conftest import binary

COMMANDS = ["status", "stats", "top", "policy", "weight", "drain", "undrain", "backends",
            "backend", "reload", "help"]


def run(*args, env=None):
    return subprocess.run([binary("corralctl"), *args], capture_output=True, text=True, timeout=10,
                          env=env)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_tool_help(flag):
    r = run(flag)
    assert r.returncode == 0, r
    assert r.stdout.startswith("usage: corralctl") and r.stderr == ""
    for c in COMMANDS:
        assert "\n  %s " % c in r.stdout, c
    assert "--socket" in r.stdout and "--version" in r.stdout


def test_help_command():
    r = run("help")
    assert r.returncode == 0 and r.stdout.startswith("usage: corralctl"), r
    r = run("help", "drain")
    assert r.returncode == 0 and "drain CORE" in r.stdout and "undrain" not in r.stdout, r


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_subcommand_has_help(cmd, flag):
    # No daemon is needed (and none is asked): the socket does not exist.
    r = run("-s", "/nonexistent/corral.sock", cmd, flag)
    assert r.returncode == 0, r
    assert r.stdout.startswith("usage: corralctl") and (" %s" % cmd) in r.stdout, r.stdout
    assert r.stderr == ""


def test_subcommand_help_after_other_arguments():
    r = run("-s", "/nonexistent/corral.sock", "backend", "weight", "1.2.3.4:5", "--help")
    assert r.returncode == 0 and "backend weight ADDR N" in r.stdout, r


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("corralctl ") and r.stdout.split()[1][0].isdigit(), r
    assert run("-V").stdout == r.stdout
    # The same version as the daemon's.
    d = subprocess.run([binary("corral"), "--version"], capture_output=True, text=True, timeout=10)
    assert d.stdout.split()[1] == r.stdout.split()[1]


@pytest.mark.parametrize("args", [["--bogus"], ["-x", "status"], ["-s"], ["--socket"],
                                  ["frob"], ["frob", "--help"], ["help", "a", "b"]])
def test_usage_errors_exit_2_with_one_line(args):
    r = run(*args)
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("corralctl: ") and "corralctl -h" in lines[0], r.stderr
    assert r.stdout == ""


@pytest.mark.corral_only
def test_socket_long_form(proxied):
    sock = proxied.cfg["admin"]["socket"]
    for args in (["--socket", sock], ["--socket=" + sock], ["-s", sock]):
        r = run(*args, "status", "--json")
        assert r.returncode == 0, r
        assert json.loads(r.stdout)["version"]
