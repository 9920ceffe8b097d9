#!/usr/bin/python3
"""corral's benchmark driver (make bench / make bench-quick): every scenario runs every contender,
interleaved, in one run, against one backend, with the same pinning and load; results go to
BUILD/bench/samples.jsonl and report.py turns them into the table, CSV/JSON and plots.

usage: bench.py BUILD_DIR full|quick   (settings: BENCH_* environment variables, docs/benchmarks.md)
"""
import ctypes
import json
import mmap
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import struct
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"

MODES = {
    # rounds, seconds per measured run, warm-up seconds, hello connection counts (1 worker, 2 workers)
    # warm: unmeasured seconds before every measured run; warm_once: before a contender's first run only
    # tls: TLS 1.3 keep-alive connection counts; tls_hs: handshake clients; tls_idle: idle TLS counts
    # (none in quick: a per-connection figure needs two counts well above the warm-up's 256, and the
    # handshakes of thousands of connections do not fit 3 minutes on this machine);
    # tls_secs: seconds per measured TLS run (shorter than secs to keep the totals: docs/benchmarks.md);
    # tls_check_wrk: also show, in NGINX's log, what wrk negotiates and that it resumes with Connection: close
    # scen_secs: seconds per measured run where not `secs` (full: hello keeps 3 s, the rest 2 s, to
    # stay under 15 minutes with the TLS scenarios; BENCH_SECS sets all);
    # no_warm: scenarios without the warm-up (churn and large set up what they need in their first
    # milliseconds; the time goes to the TLS scenarios); uneven_relay: the relay in uneven (not in quick)
    # scen_rounds: rounds where not `rounds` (BENCH_ROUNDS sets all). full: uneven has 7 because its
    # per-round figures are bimodal - a round where the 3 heavy streams land on one worker (about 1
    # in 4 under any policy) has ~15 % lower light p99 and max/mean ~1.33, the others ~1.05 - and a
    # median of 3 rounds says mostly how many rounds of each kind a contender drew (docs/benchmarks.md)
    "quick": dict(rounds=2, secs=2, warm=0, warm_once=1, hello1=[256], hello2=[], work=False, large_up=False,
                  idle=[5000], slow=False, slow_secs=0, tls=[256], tls_hs=[32], tls_idle=[], tls_secs=1,
                  tls_check_wrk=False, no_warm=["churn", "large"], uneven_relay=False),
    "full": dict(rounds=3, secs=3, warm=0, warm_once=1, hello1=[64, 256, 1024], hello2=[256], work=True,
                 large_up=True, idle=[10000, 19000], slow=True, slow_secs=15, tls=[64, 256], tls_hs=[32],
                 tls_idle=[2000, 4000], tls_secs=1.5, tls_check_wrk=True, no_warm=["churn", "large"],
                 uneven_relay=True, scen_secs={"work": 2, "uneven": 2, "churn": 2, "large": 2},
                 scen_rounds={"uneven": 7}),
}
POOL = 1024            # upstream keep-alive connections each proxy may keep: >= the largest -c
REQS_PER_CONN = 1000000  # keep-alive requests per client connection: never reached in a run
KEEPALIVE_S = 60       # client keep-alive idle timeout, every contender
UNEVEN_HEAVY = 3       # heavy keep-alive connections streaming 1 MiB responses back to back
UNEVEN_LIGHT = 32      # light clients: a new connection per small GET
POLICIES = ["hash", "round-robin", "least-conn", "least-load", "power-of-two"]
# TLS scenarios: every contender serves the same ECDSA P-256 certificate (made by the openssl CLI
# for each run), TLS 1.3 only, this one cipher suite, stateless session tickets on, one ticket per
# full handshake (corral's fixed TLS_TICKETS_PER_HANDSHAKE; NGINX and HAProxy are set to match).
TLS_SUITE = "TLS_AES_128_GCM_SHA256"
TLS_TICKETS = 1
TLS_CONTENDERS = ["corral", "nginx", "haproxy"]


class CoreSampler:
    """Reads corral's pinned per-core steering map (/sys/fs/bpf/corral/<instance>/cores, struct
    steer_core in bpf/steer_shared.h: 64 bytes per worker, conns at byte 8) every 20 ms during a
    window and keeps, per worker, the fewest client connections it held. In uneven the heavy
    connections never close while every light one closes after its response, so that minimum is
    the number of heavy streams on the worker: an estimate (a light connection held at every
    sample would add one; in 69 of the 70 windows of docs/benchmarks.md's runs the minima summed
    to the 3 heavy, once to 2). Read-only: the map is mmapped PROT_READ."""
    SYS_BPF = {"x86_64": 321, "aarch64": 280}
    BPF_OBJ_GET = 7
    LINE, CONNS = 64, 8

    def __init__(self, instance, workers):
        self.workers, self.mins, self.map = workers, None, None
        nr = self.SYS_BPF.get(os.uname().machine)
        if nr is None:
            return
        path = ctypes.create_string_buffer(f"/sys/fs/bpf/corral/{instance}/cores".encode())
        attr = ctypes.create_string_buffer(128)  # union bpf_attr: pathname (u64), bpf_fd, file_flags
        struct.pack_into("=Q", attr, 0, ctypes.addressof(path))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(self.BPF_OBJ_GET), attr, ctypes.c_uint(len(attr)))
        if fd < 0:
            return
        try:
            self.map = mmap.mmap(fd, self.LINE * workers, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):
            self.map = None
        os.close(fd)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_ev.wait(0.02):
            now = [struct.unpack_from("=I", self.map, i * self.LINE + self.CONNS)[0] for i in range(self.workers)]
            self.mins = now if self.mins is None else [min(a, b) for a, b in zip(self.mins, now)]

    def finish(self):
        """The per-worker minima (a list), or None when the map could not be read."""
        if not self.map:
            return None
        self.stop_ev.set()
        self.thread.join()
        self.map.close()
        return self.mins


class Bench:
    def __init__(self, build, mode):
        self.build = os.path.abspath(build)
        self.m = dict(MODES[mode])
        if os.environ.get("BENCH_SECS"):
            self.m["scen_secs"] = {}
        if os.environ.get("BENCH_ROUNDS"):
            self.m["scen_rounds"] = {}
        for k in ("rounds", "secs", "tls_secs"):
            if os.environ.get("BENCH_" + k.upper()):
                self.m[k] = (float if k == "tls_secs" else int)(os.environ["BENCH_" + k.upper()])
        for k in ("hello1", "hello2", "tls", "tls_hs", "tls_idle"):
            if os.environ.get("BENCH_" + k.upper()) is not None:
                self.m[k] = [int(x) for x in os.environ["BENCH_" + k.upper()].split()]
        self.mode = mode
        self.out = os.path.join(self.build, "bench")
        self.run = os.path.join(self.out, "run")
        os.makedirs(self.run, exist_ok=True)
        self.samples = open(os.path.join(self.out, "samples.jsonl"), "w")
        self.notes = []
        self.procs = []  # Popen objects we started (session leaders)
        self.loads = []  # load generators (wrk, clients) that may still run
        self.seq = 0
        only = os.environ.get("BENCH_SCENARIOS", "")
        self.only = set(only.split()) if only else None
        # BENCH_PERF="hello uneven": a system-wide `perf record -e cpu-clock` of round 1 of each
        # contender in those scenarios; summaries (CPU by core and command, and the top symbols)
        # go to bench/perf/. The profile costs a little CPU on both cores: it is off by default.
        self.perf = set(os.environ.get("BENCH_PERF", "").split())
        self.tls = None  # {"cert", "key", "bundle"}: made once per run by make_cert()

    # --- processes -------------------------------------------------------------------------------
    def spawn(self, cmd, cpus, log, env=None):
        f = open(log, "w")
        p = subprocess.Popen(["taskset", "-c", cpus] + cmd, stdin=subprocess.DEVNULL, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in self.loads + list(self.procs):
            self.stop(p)

    def note(self, s):
        print(f"bench: {s}", file=sys.stderr, flush=True)
        self.notes.append(s)

    @staticmethod
    def free_ports(n):
        ss = [socket.socket() for _ in range(n)]
        for s in ss:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in ss]
        for s in ss:
            s.close()
        return ports

    @staticmethod
    def wait_port(port, secs):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    @staticmethod
    def wait_log(path, pattern, secs, proc):
        end = time.monotonic() + secs
        rx = re.compile(pattern)
        while time.monotonic() < end:
            try:
                m = rx.search(open(path).read())
                if m:
                    return m
            except FileNotFoundError:
                pass
            if proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    @staticmethod
    def client_ctx():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx

    @staticmethod
    def get(port, path="/", tls=False):
        try:
            s = socket.create_connection(("127.0.0.1", port), 5)
            s.settimeout(5)
            if tls:
                s = Bench.client_ctx().wrap_socket(s, server_hostname="bench.test")
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
            s.close()
            return data.startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    # --- /proc -----------------------------------------------------------------------------------
    @staticmethod
    def tasks(pids):
        """{(pid, tid): runtime ns} for every thread of the given processes."""
        out = {}
        for pid in pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except FileNotFoundError:
                continue
            for t in tids:
                try:
                    out[(pid, t)] = int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
                except (FileNotFoundError, ProcessLookupError, ValueError):
                    pass
        return out

    @staticmethod
    def cores():
        """[(busy, total)] jiffies per CPU from /proc/stat."""
        out = []
        for line in open("/proc/stat"):
            if re.match(r"cpu\d", line):
                v = [int(x) for x in line.split()[1:]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
                out.append((busy, busy + v[3] + v[4]))
        return out

    @staticmethod
    def rss_kb(pids):
        tot = 0
        for pid in pids:
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        tot += int(line.split()[1])
            except FileNotFoundError:
                pass
        return tot

    @staticmethod
    def children(pid):
        out = []
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                out += [int(x) for x in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except FileNotFoundError:
            pass
        return out

    # --- the backend -----------------------------------------------------------------------------
    def start_backend(self, cpus, threads):
        port = self.free_ports(1)[0]
        d = os.path.join(self.run, f"backend-{self.seq}")
        self.seq += 1
        os.makedirs(d, exist_ok=True)
        p = self.spawn([os.path.join(self.build, "corral-backend"), "--listen", f"127.0.0.1:{port}",
                        "--threads", str(threads)], cpus, os.path.join(d, "log"))
        if not self.wait_port(port, 5):
            raise RuntimeError("backend did not start: " + open(os.path.join(d, "log")).read())
        self.backend = (p, port)
        return port

    # --- contenders ------------------------------------------------------------------------------
    def render(self, tpl, out, **kv):
        s = open(os.path.join(HERE, tpl)).read()
        for k, v in kv.items():
            s = s.replace(f"@{k}@", str(v))
        open(out, "w").write(s)

    def make_cert(self):
        """The TLS scenarios' one certificate: ECDSA P-256, self-signed, made by the openssl CLI."""
        if self.tls:
            return self.tls
        d = os.path.join(self.run, "tls")
        os.makedirs(d, exist_ok=True)
        cert, key, bundle = (os.path.join(d, x) for x in ("cert.pem", "key.pem", "bundle.pem"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test",
                        "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
        open(bundle, "w").write(open(cert).read() + open(key).read())
        self.tls = {"cert": cert, "key": key, "bundle": bundle}
        return self.tls

    def tls_conf(self, name, d, check_log=None):
        """Each contender's TLS settings, the same in substance (docs/benchmarks.md, "TLS")."""
        t = self.make_cert()
        if name.startswith("corral"):
            return {"LISTEN": '{ address: "127.0.0.1:0", tls: { certificates: [ { cert: "%s", key: "%s" } ], '
                              'protocols: [TLSv1.3], ciphersuites: "%s", session_tickets: true } }'
                              % (t["cert"], t["key"], TLS_SUITE)}
        if name.startswith("nginx"):
            conf = (f"\t\tssl_certificate {t['cert']};\n\t\tssl_certificate_key {t['key']};\n"
                    f"\t\tssl_protocols TLSv1.3;\n"
                    f"\t\tssl_conf_command Ciphersuites {TLS_SUITE};\n"
                    f"\t\tssl_conf_command NumTickets {TLS_TICKETS};\n"
                    f"\t\tssl_session_tickets on;\n\t\tssl_session_cache off;\n"
                    f"\t\tssl_early_data off;")
            extra = ""
            if check_log:
                extra = ("\tlog_format tlscheck '$ssl_protocol $ssl_cipher $ssl_session_reused $http_connection';")
                conf += f"\n\t\taccess_log {check_log} tlscheck;"
            return {"SSL": " ssl", "TLS_CONF": conf, "HTTP_EXTRA": extra}
        if name == "haproxy":
            return {"BIND_TLS": f" ssl crt {t['bundle']}", "PROTO": "https",
                    "TLS_GLOBAL": f"\tssl-default-bind-ciphersuites {TLS_SUITE}\n"
                                  "\tssl-default-bind-options ssl-min-ver TLSv1.3\n"
                                  # stateless tickets only, no server-side session cache, as corral and NGINX
                                  "\ttune.ssl.cachesize 0\n"
                                  # no haproxy.cfg keyword sets the number of TLS 1.3 tickets: the
                                  # OpenSSL config below (OPENSSL_CONF, system_default) does
                                  "\t# tickets: NumTickets via OPENSSL_CONF (bench.py)"}
        return None

    def start(self, name, workers, cpus, bport, maxconn=4096, tls=False, check_log=None):
        """Starts contender `name` ("corral-POLICY", "nginx", "nginx-reuseport", "haproxy", "tokio",
        "relay") with `workers` workers pinned to `cpus` (a taskset list); `tls`: the TLS listener
        of tls_conf() instead of plaintext. Returns a dict with the port, the pids to account and
        the pid whose RSS is the connection memory, or None."""
        d = os.path.join(self.run, f"{name}-{workers}w-{self.seq}")
        self.seq += 1
        os.makedirs(d, exist_ok=True)
        log = os.path.join(d, "log")
        cpu_list = cpus.split(",")
        nofile = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout)
        c = {"name": name, "workers": workers, "tls": tls}
        plain = {"LISTEN": '"127.0.0.1:0"', "SSL": "", "TLS_CONF": "", "HTTP_EXTRA": "", "BIND_TLS": "",
                 "PROTO": "http", "TLS_GLOBAL": ""}
        if tls:
            plain.update(self.tls_conf(name, d, check_log))
        env = None
        if name.startswith("corral"):
            policy = name.split("-", 1)[1] if "-" in name else "hash"
            inst = f"bench-{os.getpid()}-{self.seq}"
            self.render("corral.yaml.in", os.path.join(d, "corral.yaml"), INSTANCE=inst,
                        CORES=", ".join(cpu_list[:workers]), BACKEND_PORT=bport, MAXCONN=maxconn,
                        POOL=POOL, REQS=REQS_PER_CONN, IDLE_MS=KEEPALIVE_S * 1000, POLICY=policy,
                        LISTEN=plain["LISTEN"])
            p = self.spawn([os.path.join(self.build, "corral"), "-c", os.path.join(d, "corral.yaml")], cpus, log)
            m = self.wait_log(log, r"listening on 127\.0\.0\.1:(\d+)", 30, p)
            if not m or not self.wait_log(log, r"\bready\b", 30, p):
                self.note(f"{name}: did not become ready: {open(log).read()[-300:]}")
                self.stop(p)
                return None
            c.update(port=int(m.group(1)), pids=[p.pid], rss=[p.pid], instance=inst)
        elif name in ("relay", "tokio") and tls:
            return None
        elif name in ("relay", "tokio"):
            if name == "relay":
                cmd = [os.path.join(self.build, "corral-relay"), "--listen", "0", "--backend", str(bport),
                       "--cpus", ",".join(cpu_list[:workers])]
            else:
                cmd = [os.path.join(self.build, "bench/tokio-proxy/release/tokio-proxy"), "--listen", "0",
                       "--backend", str(bport), "--threads", str(workers), "--pool", str(POOL)]
            p = self.spawn(cmd, ",".join(cpu_list[:workers]), log)
            m = self.wait_log(log, r"listening on 127\.0\.0\.1:(\d+)", 10, p)
            if not m:
                self.note(f"{name}: did not start: {open(log).read()[-300:]}")
                self.stop(p)
                return None
            c.update(port=int(m.group(1)), pids=[p.pid], rss=[p.pid])
        elif name.startswith("nginx"):
            port = self.free_ports(1)[0]
            mask = " ".join("1" + "0" * int(x) for x in cpu_list[:workers])
            self.render("nginx-proxy.conf.in", os.path.join(d, "nginx.conf"), DIR=d, PORT=port, BACKEND_PORT=bport,
                        WORKERS=workers, CPU_MASK=mask, NOFILE=nofile, MAXCONN=maxconn + POOL, POOL=POOL,
                        REQS=REQS_PER_CONN, KEEPALIVE=KEEPALIVE_S,
                        REUSEPORT=" reuseport" if name == "nginx-reuseport" else "", SSL=plain["SSL"],
                        TLS_CONF=plain["TLS_CONF"], HTTP_EXTRA=plain["HTTP_EXTRA"])
            p = self.spawn(["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", os.path.join(d, "nginx.conf")],
                           cpus, log)
            ok = self.wait_port(port, 5)
            kids = []
            end = time.monotonic() + 5
            while ok and len(kids) < workers and time.monotonic() < end:
                kids = self.children(p.pid)
                time.sleep(0.05)
            if not ok or len(kids) < workers:
                self.note(f"{name}: did not start: {open(os.path.join(d, 'error.log')).read()[-300:]}")
                self.stop(p)
                return None
            c.update(port=port, pids=[p.pid] + kids, rss=kids)
        elif name == "haproxy":
            port = self.free_ports(1)[0]
            cmap = "\n".join(f"\tcpu-map 1/{i + 1} {cpu_list[i]}" for i in range(workers))
            self.render("haproxy.cfg.in", os.path.join(d, "haproxy.cfg"), DIR=d, PORT=port, BACKEND_PORT=bport,
                        THREADS=workers, CPU_MAP=cmap, NOFILE=nofile, MAXCONN=maxconn, KEEPALIVE=KEEPALIVE_S,
                        BIND_TLS=plain["BIND_TLS"], PROTO=plain["PROTO"], TLS_GLOBAL=plain["TLS_GLOBAL"])
            if tls:
                # OpenSSL applies [system_default] to every SSL_CTX HAProxy creates; HAProxy 2.6 has
                # no keyword for the number of TLS 1.3 tickets, and OpenSSL's default is 2.
                oc = os.path.join(d, "openssl.cnf")
                open(oc, "w").write("openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\n"
                                    "system_default = sysdef\n[sysdef]\n"
                                    f"NumTickets = {TLS_TICKETS}\n")
                env = dict(os.environ, OPENSSL_CONF=oc)
            p = self.spawn(["haproxy", "-db", "-f", os.path.join(d, "haproxy.cfg")], cpus, log, env=env)
            if not self.wait_port(port, 5):
                self.note(f"haproxy: did not start: {open(log).read()[-300:]}")
                self.stop(p)
                return None
            c.update(port=port, pids=[p.pid], rss=[p.pid])
        c["proc"] = p
        if not self.get(c["port"], tls=tls):
            self.note(f"{name}: GET / through it did not answer 200")
            self.stop(p)
            return None
        return c

    # --- load ------------------------------------------------------------------------------------
    def wrk(self, port, conns, secs, path="/", threads=1, cpus="1", close=False, script="wrk-report.lua",
            log=None, env=None, tls=False, tlsload=False, churn=False, mark=None):
        """Starts a bounded wrk run (https:// if `tls`); `tlsload`: corral-tls-load instead, TLS
        keep-alive with the handshakes before the measured window, or with `churn` a full TLS
        handshake per request; `mark`: the file it creates when its window opens. Returns the
        Popen (stdout to log)."""
        if tlsload:
            cmd = ["timeout", str(int(secs) + 60), "taskset", "-c", cpus, os.path.join(self.build, "corral-tls-load"),
                   "--port", str(port), "--conns", str(conns), "--secs", str(secs), "--path", path,
                   "--ciphersuites", TLS_SUITE] + (["--churn"] if churn else []) + (["--mark", mark] if mark else [])
        else:
            cmd = ["timeout", str(int(secs) + 30), "taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{conns}",
                   f"-d{secs}s", "--latency", "-s", os.path.join(HERE, script)]
            if close:
                cmd += ["-H", "Connection: close"]
            cmd.append(f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}")
        f = open(log or os.devnull, "w")
        e = dict(os.environ, BENCH_LUA_DIR=HERE, **(env or {}))
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=e)
        self.loads = [x for x in self.loads if x.poll() is None] + [p]
        return p

    def perf_start(self, tag, secs):
        """`perf record -e cpu-clock -a -g` for the window (bounded by `timeout`)."""
        if not shutil.which("perf"):
            self.note("BENCH_PERF: no perf on PATH (Debian: apt-get install linux-perf); no profile")
            return None
        d = os.path.join(self.out, "perf")
        os.makedirs(d, exist_ok=True)
        data = os.path.join(self.run, f"perf-{tag}.data")
        p = subprocess.Popen(["timeout", str(int(secs) + 30), "perf", "record", "-q", "-e", "cpu-clock", "-a", "-g",
                              "-F", "997", "-o", data, "--", "sleep", str(max(1, secs - 0.5))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return p, data, os.path.join(d, f"{tag}.txt")

    def perf_report(self, p, data, txt, c):
        """Writes the window's CPU by core and command, then the contender's top symbols."""
        p.wait()
        if not os.path.exists(data):
            self.note(f"perf record gave no data for {txt}")
            return
        rep = ["perf", "report", "-i", data, "--stdio", "--no-children", "--percent-limit", "0.5"]
        with open(txt, "w") as f:
            f.write(f"# {os.path.basename(txt)}: perf record -e cpu-clock -a -g, one window; "
                    f"contender pids {c['pids']}\n# CPU by core and command (% of all samples, both cores)\n")
            f.flush()
            subprocess.run(["timeout", "120"] + rep + ["-g", "none", "--sort", "cpu,comm"], stdout=f,
                           stderr=subprocess.DEVNULL)
            f.write("\n# the contender's processes: symbols (% of their samples)\n")
            f.flush()
            subprocess.run(["timeout", "120"] + rep + ["-g", "none", "--sort", "dso,sym", "--percentage", "relative",
                                                        "--pid", ",".join(str(x) for x in c["pids"])],
                           stdout=f, stderr=subprocess.DEVNULL)
        if os.environ.get("BENCH_PERF_KEEP"):
            os.replace(data, txt[:-4] + ".data")  # for perf report -i ... -g (call graphs)
        else:
            os.unlink(data)

    @staticmethod
    def wrk_result(log):
        for line in open(log):
            if line.startswith("WRKJSON "):
                return json.loads(line[8:])
        return None

    def measure(self, scen, case, c, loads, workers, rnd):
        """One measured window: `loads` is a list of (label, kwargs for wrk). All run at once.
        Writes one sample with every load's wrk figures and the proxy's CPU figures."""
        path0 = loads[0][1].get("path", "/")
        warm = self.m["warm"]
        if warm:
            ws = [self.wrk(c["port"], **dict(kw, secs=max(1, int(warm)))) for _, kw in loads]
            for w in ws:
                w.wait()
        logs = [os.path.join(self.run, f"wrk-{scen}-{case}-{c['name']}-{rnd}-{lbl}.log") for lbl, _ in loads]
        mark = None
        if loads[0][1].get("tlsload"):
            # corral-tls-load opens its window after its set-up (handshakes): the CPU is read from there.
            mark = os.path.join(self.run, f"mark-{scen}-{case}-{c['name']}-{rnd}")
            ws = [self.wrk(c["port"], log=logs[0], secs=self.m["tls_secs"], mark=mark, **loads[0][1])]
            end = time.monotonic() + 30
            while not os.path.exists(mark) and ws[0].poll() is None and time.monotonic() < end:
                time.sleep(0.002)
        t0 = self.tasks(c["pids"])
        b0 = self.tasks([self.backend[0].pid])
        k0 = self.cores()
        perf = sampler = None
        if not mark:
            secs = self.m.get("scen_secs", {}).get(scen, self.m["secs"])
            ws = [self.wrk(c["port"], log=lg, secs=secs, **kw) for (_, kw), lg in zip(loads, logs)]
            # uneven: where the heavy streams are (the steering's placement), from corral's own map.
            if scen == "uneven" and c.get("instance"):
                time.sleep(0.2)  # the heavy connections and the first light ones are accepted
                sampler = CoreSampler(c["instance"], workers)
            if scen in self.perf and rnd == 1:
                perf = self.perf_start(f"{scen}-{case}-{c['name']}", secs)
        for w in ws:
            w.wait()
        split = sampler.finish() if sampler else None
        if perf:
            self.perf_report(*perf, c)
        t1 = self.tasks(c["pids"])
        b1 = self.tasks([self.backend[0].pid])
        k1 = self.cores()
        s = {"scenario": scen, "case": case, "contender": c["name"], "workers": workers, "round": rnd,
             "path": path0}
        per = sorted((t1[k] - t0.get(k, 0) for k in t1), reverse=True)
        s["proxy_cpu_ns"] = sum(per)
        top = per[:workers]
        s["worker_cpu_ns"] = top
        s["backend_cpu_ns"] = sum(b1[k] - b0.get(k, 0) for k in b1)
        s["core_busy_pct"] = [round(100.0 * (b[0] - a[0]) / max(1, b[1] - a[1]), 1) for a, b in zip(k0, k1)]
        if split is not None:
            s["heavy_split"] = split
            s["heavy_n"] = dict(loads).get("heavy", {}).get("conns")
        for (lbl, _), lg in zip(loads, logs):
            r = self.wrk_result(lg)
            if r is None:
                self.note(f"{scen}/{case} {c['name']} round {rnd}: wrk ({lbl}) gave no result: "
                          f"{open(lg).read()[-200:]}")
                return
            s[lbl] = r
        self.samples.write(json.dumps(s) + "\n")
        self.samples.flush()
        w = s[loads[0][0]]
        secs = w["duration_us"] / 1e6
        reqs = max(1, w["requests"])
        errs = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"]
        mm = f" max/mean {max(top) * len(top) / max(1, sum(top)):.2f}" if workers > 1 and top else ""
        if split is not None:
            mm += " heavy " + "+".join(str(x) for x in split)
        print(f"bench: {scen:7s} {case:10s} r{rnd} {c['name']:18s} {reqs / secs:8.0f} req/s "
              f"p50 {w['p50_us']:6d} p99 {w['p99_us']:7d} us  cpu {s['proxy_cpu_ns'] / 1000 / reqs:6.2f} us/req"
              f"{mm}  errors {errs}  cores busy {s['core_busy_pct']}", file=sys.stderr, flush=True)

    def scenario(self, scen, cases, contenders, workers, pcpus, lcpus, be_threads, tls=False):
        """Starts one backend and every contender (with its TLS listener if `tls`), then for each
        case and round measures every contender once, the order rotated by round."""
        if self.only is not None and scen not in self.only:
            return
        want = os.environ.get("BENCH_CONTENDERS", "").split()
        contenders = [n for n in contenders if not want or n in want]
        if not contenders:
            return
        bport = self.start_backend(lcpus if workers == 1 else pcpus, be_threads)
        up = []
        for name in contenders:
            c = self.start(name, workers, pcpus, bport, tls=tls)
            if c:
                up.append(c)
        try:
            # corral-tls-load's own set-up (every connection handshaken and answered once before its
            # window opens) is the TLS scenarios' warm-up.
            if self.m["warm_once"] and not cases[0][1][0][1].get("tlsload") and scen not in self.m["no_warm"]:
                for c in up:
                    ws = [self.wrk(c["port"], **dict(kw, secs=self.m["warm_once"])) for _, kw in cases[0][1]]
                    for w in ws:
                        w.wait()
            for case, loads in cases:
                for rnd in range(1, self.m.get("scen_rounds", {}).get(scen, self.m["rounds"]) + 1):
                    k = (rnd - 1) % len(up)
                    for c in up[k:] + up[:k]:
                        if c["proc"].poll() is not None:
                            self.note(f"{c['name']} died before {scen}/{case} round {rnd}")
                            continue
                        self.measure(scen, case, c, loads, workers, rnd)
        finally:
            for c in up:
                self.stop(c["proc"])
            self.stop(self.backend[0])

    # --- TLS -------------------------------------------------------------------------------------
    def tls_check(self):
        """What the load generators really negotiate, seen from the server: NGINX with an access log
        of $ssl_protocol $ssl_cipher $ssl_session_reused, 1 s of each client. Every request must be
        TLSv1.3 with TLS_SUITE; `reused` says whether the client resumed sessions (the handshake
        scenario needs 0: corral-tls-churn; wrk with Connection: close resumes, see tls_churn.c)."""
        if self.only is not None and not (self.only & {"tls", "tlshs", "tlsidle"}):
            return
        bport = self.start_backend("1", 1)
        log = os.path.join(self.run, "tlscheck-access.log")
        c = self.start("nginx", 1, "0", bport, tls=True, check_log=log)
        try:
            if not c:
                self.note("TLS check: NGINX with TLS did not start")
                return
            res = {}
            probes = [("tls-load", dict(conns=4, tlsload=True)), ("tls-load-churn", dict(conns=4, tlsload=True, churn=True))]
            if self.m["tls_check_wrk"]:
                probes = [("wrk", dict(conns=4, secs=1)), ("wrk-close", dict(conns=4, close=True, secs=1))] + probes
            for label, kw in probes:
                off = os.path.getsize(log) if os.path.exists(log) else 0
                clog = os.path.join(self.run, f"tlscheck-{label}.log")
                self.wrk(c["port"], log=clog, **dict(dict(secs=0.5, tls=True, cpus="1"), **kw)).wait()
                time.sleep(0.2)
                with open(log) as f:
                    f.seek(off)
                    lines = f.read().split("\n")
                lines = [x.split() for x in lines if x.strip()]
                res[label] = {"requests": len(lines),
                              "expected": sum(1 for x in lines if x[:2] == ["TLSv1.3", TLS_SUITE]),
                              "resumed": sum(1 for x in lines if len(x) > 2 and x[2] == "r")}
                w = self.wrk_result(clog) or {}
                # The client's own count: a probe that got nothing through says why here.
                res[label]["client_requests"] = w.get("requests")
                res[label]["client_errors"] = sum(w.get(k, 0) for k in ("err_connect", "err_read", "err_write",
                                                                        "err_status", "err_timeout")) if w else None
            self.samples.write(json.dumps({"scenario": "tlscheck", "case": "nginx-log", "contender": "nginx",
                                           "workers": 1, "round": 1, "check": res}) + "\n")
            self.samples.flush()
            for label, r in res.items():
                ok = r["requests"] > 0 and r["expected"] == r["requests"]
                self.note(f"TLS check ({label}, NGINX's log): {r['expected']}/{r['requests']} requests TLSv1.3 "
                          f"{TLS_SUITE}{'' if ok else ' - NOT ALL'}; {r['resumed']} on resumed sessions"
                          + ("" if ok else f" (the client: {r['client_requests']} requests, {r['client_errors']} errors)"))
        finally:
            if c:
                self.stop(c["proc"])
            self.stop(self.backend[0])

    def tls_idle(self):
        """RSS per idle TLS keep-alive connection (one request each), corral vs NGINX vs HAProxy:
        one instance per contender opens the largest count, pausing at the smaller ones to read
        the RSS; each count gets (RSS there - RSS before) / count, and the last also the marginal
        figure between the last two counts (free of any one-off growth at the start)."""
        if self.only is not None and "tlsidle" not in self.only:
            return
        counts = sorted(self.m["tls_idle"])
        if not counts:
            return
        bport = self.start_backend("1", 1)
        try:
            for name in TLS_CONTENDERS:
                self.idle_one("tlsidle", name, counts[-1], bport, tls=True, steps=counts[:-1])
        finally:
            self.stop(self.backend[0])

    def idle_one(self, scen, name, n, bport, tls=False, steps=()):
        c = self.start(name, 1, "0", bport, maxconn=n + 512, tls=tls)
        if not c:
            return
        # The loaded steady state first: pools, rings and caches touched once. TLS: as many
        # connections at once as idle_conns.py opens at once (its --window, 256), each with its
        # handshake, so the buffers a handshake needs are touched before the first RSS figure.
        if tls:
            self.wrk(c["port"], 256, 1, cpus="1", tlsload=True).wait()
        else:
            self.wrk(c["port"], 64, 1 if self.mode == "quick" else 2, cpus="1").wait()
        log = os.path.join(self.run, f"{scen}-{name}-{n}.log")
        r = subprocess.run(["timeout", "200", "taskset", "-c", "1", PY, os.path.join(HERE, "idle_conns.py"),
                            "--port", str(c["port"]), "--pid", str(c["rss"][0]), "--count", str(n),
                            "--timeout", "150"] + (["--tls"] if tls else [])
                           + (["--settle", "0.5"] if tls else [])
                           + (["--steps", ",".join(str(x) for x in steps)] if steps else []),
                           capture_output=True, text=True)
        open(log, "w").write(r.stdout + r.stderr)
        lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
        if lines:
            res = json.loads(lines[-1])
            out = [res]
            if steps and "steps" in res and len(res["steps"]) == len(steps) + 1:
                out = []
                prev = None
                for want, st in zip(list(steps) + [n], res["steps"]):
                    x = dict(res, count=want, idle=st["idle"], rss_after_kb=st["rss_kb"],
                             bytes_per_conn=round((st["rss_kb"] - res["rss_before_kb"]) * 1024 / max(1, st["idle"]), 1))
                    if prev:
                        x["marginal_bytes_per_conn"] = round((st["rss_kb"] - prev["rss_kb"]) * 1024
                                                             / max(1, st["idle"] - prev["idle"]), 1)
                        x["marginal_from"] = prev["idle"]
                    if st is not res["steps"][-1]:
                        x["failed"] = x["lost"] = 0  # counted at the end, over all connections
                    out.append(x)
                    prev = st
            for x in out:
                self.samples.write(json.dumps({"scenario": scen, "case": f"{x['count']}", "contender": name,
                                               "workers": 1, "round": 1, "idle": x}) + "\n")
                print(f"bench: {scen:7s} {x['count']:6d} {name:8s} {x}", file=sys.stderr, flush=True)
            self.samples.flush()
        else:
            self.note(f"{scen} {name} {n}: no result: {(r.stdout + r.stderr)[-300:]}")
        self.stop(c["proc"])

    # --- memory ----------------------------------------------------------------------------------
    def memory(self):
        if self.only is not None and "memory" not in self.only:
            return
        bport = self.start_backend("1", 1)
        try:
            for n in self.m["idle"]:
                for name in ["corral", "nginx", "haproxy", "tokio"]:
                    self.idle_one("idle", name, n, bport)
            if self.m["slow"]:
                for name in ["corral", "nginx", "haproxy", "tokio"]:
                    self.slow_readers(name, bport)
        finally:
            self.stop(self.backend[0])

    def slow_readers(self, name, bport):
        c = self.start(name, 1, "0", bport, maxconn=4096)
        if not c:
            return
        secs = self.m["slow_secs"]
        self.wrk(c["port"], 64, 2, cpus="1").wait()
        time.sleep(0.5)
        before = self.rss_kb(c["rss"])
        log = os.path.join(self.run, f"slow-{name}.log")
        sr = subprocess.Popen(["timeout", str(secs + 30), "taskset", "-c", "1", PY, os.path.join(HERE, "slow_readers.py"),
                               "--port", str(c["port"]), "--count", "200", "--bytes", str(10 * 1024 * 1024),
                               "--rate", "102400", "--seconds", str(secs)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.loads.append(sr)
        time.sleep(2)  # the slow readers are connected and their buffers filled
        wlog = os.path.join(self.run, f"wrk-slow-{name}.log")
        w = self.wrk(c["port"], 64, max(1, secs - 4), cpus="1", log=wlog)
        peak = before
        while w.poll() is None or sr.poll() is None:
            peak = max(peak, self.rss_kb(c["rss"]))
            time.sleep(0.2)
        res = {"rss_before_kb": before, "rss_peak_kb": peak, "growth_kb": peak - before}
        try:
            res["readers"] = json.loads(open(log).read().strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.note(f"slow readers {name}: {open(log).read()[-300:]}")
        res["wrk"] = self.wrk_result(wlog)
        self.samples.write(json.dumps({"scenario": "slow", "case": "200x10MB", "contender": name, "workers": 1,
                                       "round": 1, "slow": res}) + "\n")
        self.samples.flush()
        print(f"bench: slow    {name:8s} RSS +{(peak - before) / 1024:.1f} MiB, normal p99 "
              f"{(res['wrk'] or {}).get('p99_us')} us, readers {res.get('readers')}", file=sys.stderr, flush=True)
        self.stop(c["proc"])

    # --- the run ---------------------------------------------------------------------------------
    def main(self):
        one = ["corral", "nginx", "haproxy", "tokio", "relay"]
        two = ["corral", "nginx", "nginx-reuseport", "haproxy", "tokio", "relay"]
        m = self.m
        t0 = time.monotonic()
        # 1 worker: the proxy on core 0, wrk and the backend on core 1.
        hello1 = [(f"c{n}", [("main", dict(conns=n, cpus="1"))]) for n in m["hello1"]]
        self.scenario("hello", [("1w-" + k, v) for k, v in hello1], one, 1, "0", "1", 1)
        # 2 workers: the proxy on both cores, wrk and the backend on both too (unpinned).
        if m["hello2"]:
            hello2 = [(f"2w-c{n}", [("main", dict(conns=n, threads=2, cpus="0,1"))]) for n in m["hello2"]]
            self.scenario("hello", hello2, one, 2, "0,1", "0,1", 2)
        if m["work"]:
            self.scenario("work", [("2w-c256", [("main", dict(conns=256, threads=2, cpus="0,1", path="/work"))])],
                          one, 2, "0,1", "0,1", 2)
        uneven = [("main", dict(conns=UNEVEN_LIGHT, cpus="0,1", close=True)),
                  ("heavy", dict(conns=UNEVEN_HEAVY, cpus="0,1", path="/bytes/1048576"))]
        self.scenario("uneven", [(f"{UNEVEN_HEAVY}h+{UNEVEN_LIGHT}l", uneven)],
                      ["corral-" + p for p in POLICIES] + [x for x in two[1:] if x != "relay" or m["uneven_relay"]],
                      2, "0,1", "0,1", 2)
        self.scenario("churn", [("1w-c64", [("main", dict(conns=64, cpus="1", close=True))])], one, 1, "0", "1", 1)
        large = [("down-1MiB", [("main", dict(conns=16, cpus="1", path="/bytes/1048576"))])]
        if m["large_up"]:
            large.append(("up-1MiB", [("main", dict(conns=16, cpus="1", script="wrk-upload.lua"))]))
        self.scenario("large", large, one, 1, "0", "1", 1)
        # TLS (issue 11): 1 worker, pinned as hello's 1w; corral, NGINX, HAProxy (tls_conf()).
        self.tls_check()
        self.scenario("tls", [(f"1w-c{n}", [("main", dict(conns=n, cpus="1", tlsload=True))]) for n in m["tls"]],
                      TLS_CONTENDERS, 1, "0", "1", 1, tls=True)
        self.scenario("tlshs", [(f"1w-c{n}", [("main", dict(conns=n, cpus="1", tlsload=True, churn=True))])
                                for n in m["tls_hs"]],
                      TLS_CONTENDERS, 1, "0", "1", 1, tls=True)
        self.tls_idle()
        self.memory()
        self.note(f"run took {time.monotonic() - t0:.0f} s")
        json.dump({"notes": self.notes, "mode": self.mode, "settings": self.m}, open(os.path.join(self.out, "notes.json"), "w"))


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in MODES:
        print(__doc__, file=sys.stderr)
        return 2
    b = Bench(sys.argv[1], sys.argv[2])

    def on_signal(sig, frame):
        raise KeyboardInterrupt

    # Explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        b.main()
    except KeyboardInterrupt:
        print("bench: interrupted, stopping everything it started", file=sys.stderr)
        return 130
    finally:
        b.stop_all()
        b.samples.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
