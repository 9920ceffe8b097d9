"""Docs that must agree with the repository (issue 8, defect 14): every relative link in the
README and docs/ resolves to a file inside the repository (a clone has no ../shared), and the
DaemonSet's memory comment states the real default receive-buffer memory per core."""
import glob
import os
import re

from conftest import REPO


def test_relative_links_resolve_inside_the_repository():
    docs = [os.path.join(REPO, "README.md")] + glob.glob(os.path.join(REPO, "docs", "*.md"))
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    bad = []
    for doc in docs:
        with open(doc) as f:
            for target in link.findall(f.read()):
                if re.match(r"[a-z]+:", target):
                    continue  # http:, https:, mailto:
                path = os.path.normpath(os.path.join(os.path.dirname(doc), target))
                if not path.startswith(REPO + os.sep) or not os.path.exists(path):
                    bad.append("%s -> %s" % (os.path.relpath(doc, REPO), target))
    assert not bad, bad
    assert os.path.exists(os.path.join(REPO, "docs", "design.md"))


def define(name):
    with open(os.path.join(REPO, "proxy", "config-t.h")) as f:
        m = re.search(r"#define\s+%s\s+(\d+)" % name, f.read())
    assert m, name
    return int(m.group(1))


def test_daemonset_memory_comment_matches_the_defaults():
    mib = define("CFG_DEF_BUFFERS_PER_CORE") * define("CFG_DEF_BUFFER_BYTES") // (1 << 20)
    with open(os.path.join(REPO, "deploy", "k8s-daemonset.yaml")) as f:
        text = f.read()
    m = re.search(r"(\d+) MiB of receive buffers per core by default", text)
    assert m and int(m.group(1)) == mib, (m and m.group(0), mib)
