#!/usr/bin/python3
"""corral's benchmark driver (make bench / make bench-quick): every scenario runs every contender,
interleaved, in one run, against one backend, with the same pinning and load; results go to
BUILD/bench/samples.jsonl and report.py turns them into the table, CSV/JSON and plots.

usage: bench.py BUILD_DIR full|quick   (settings: BENCH_* environment variables, docs/benchmarks.md)
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"

MODES = {
    # rounds, seconds per measured run, warm-up seconds, hello connection counts (1 worker, 2 workers)
    # warm: unmeasured seconds before every measured run; warm_once: before a contender's first run only
    "quick": dict(rounds=2, secs=2, warm=0, warm_once=1, hello1=[256], hello2=[], work=False, large_up=False,
                  idle=[5000], slow=False, slow_secs=0),
    "full": dict(rounds=3, secs=3, warm=0, warm_once=1, hello1=[64, 256, 1024], hello2=[256], work=True,
                 large_up=True, idle=[10000, 19000], slow=True, slow_secs=15),
}
POOL = 1024            # upstream keep-alive connections each proxy may keep: >= the largest -c
REQS_PER_CONN = 1000000  # keep-alive requests per client connection: never reached in a run
KEEPALIVE_S = 60       # client keep-alive idle timeout, every contender
UNEVEN_HEAVY = 3       # heavy keep-alive connections streaming 1 MiB responses back to back
UNEVEN_LIGHT = 32      # light clients: a new connection per small GET
POLICIES = ["hash", "round-robin", "least-conn", "least-load", "power-of-two"]


class Bench:
    def __init__(self, build, mode):
        self.build = os.path.abspath(build)
        self.m = dict(MODES[mode])
        for k in ("rounds", "secs"):
            if os.environ.get("BENCH_" + k.upper()):
                self.m[k] = int(os.environ["BENCH_" + k.upper()])
        for k in ("hello1", "hello2"):
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
    def get(port, path="/"):
        try:
            s = socket.create_connection(("127.0.0.1", port), 5)
            s.settimeout(5)
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

    def start(self, name, workers, cpus, bport, maxconn=4096):
        """Starts contender `name` ("corral-POLICY", "nginx", "nginx-reuseport", "haproxy", "tokio",
        "relay") with `workers` workers pinned to `cpus` (a taskset list). Returns a dict with the
        port, the pids to account and the pid whose RSS is the connection memory, or None."""
        d = os.path.join(self.run, f"{name}-{workers}w-{self.seq}")
        self.seq += 1
        os.makedirs(d, exist_ok=True)
        log = os.path.join(d, "log")
        cpu_list = cpus.split(",")
        nofile = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout)
        c = {"name": name, "workers": workers}
        if name.startswith("corral"):
            policy = name.split("-", 1)[1] if "-" in name else "hash"
            self.render("corral.yaml.in", os.path.join(d, "corral.yaml"), INSTANCE=f"bench-{os.getpid()}-{self.seq}",
                        CORES=", ".join(cpu_list[:workers]), BACKEND_PORT=bport, MAXCONN=maxconn,
                        POOL=POOL, REQS=REQS_PER_CONN, IDLE_MS=KEEPALIVE_S * 1000, POLICY=policy)
            p = self.spawn([os.path.join(self.build, "corral"), "-c", os.path.join(d, "corral.yaml")], cpus, log)
            m = self.wait_log(log, r"listening on 127\.0\.0\.1:(\d+)", 30, p)
            if not m or not self.wait_log(log, r"\bready\b", 30, p):
                self.note(f"{name}: did not become ready: {open(log).read()[-300:]}")
                self.stop(p)
                return None
            c.update(port=int(m.group(1)), pids=[p.pid], rss=[p.pid])
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
                        REUSEPORT=" reuseport" if name == "nginx-reuseport" else "")
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
                        THREADS=workers, CPU_MAP=cmap, NOFILE=nofile, MAXCONN=maxconn, KEEPALIVE=KEEPALIVE_S)
            p = self.spawn(["haproxy", "-db", "-f", os.path.join(d, "haproxy.cfg")], cpus, log)
            if not self.wait_port(port, 5):
                self.note(f"haproxy: did not start: {open(log).read()[-300:]}")
                self.stop(p)
                return None
            c.update(port=port, pids=[p.pid], rss=[p.pid])
        c["proc"] = p
        if not self.get(c["port"]):
            self.note(f"{name}: GET / through it did not answer 200")
            self.stop(p)
            return None
        return c

    # --- load ------------------------------------------------------------------------------------
    def wrk(self, port, conns, secs, path="/", threads=1, cpus="1", close=False, script="wrk-report.lua",
            log=None, env=None):
        """Starts a bounded wrk run; returns the Popen (stdout to log)."""
        cmd = ["timeout", str(int(secs) + 30), "taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{conns}",
               f"-d{secs}s", "--latency", "-s", os.path.join(HERE, script)]
        if close:
            cmd += ["-H", "Connection: close"]
        cmd.append(f"http://127.0.0.1:{port}{path}")
        f = open(log or os.devnull, "w")
        e = dict(os.environ, BENCH_LUA_DIR=HERE, **(env or {}))
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=e)
        self.loads = [x for x in self.loads if x.poll() is None] + [p]
        return p

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
        t0 = self.tasks(c["pids"])
        b0 = self.tasks([self.backend[0].pid])
        k0 = self.cores()
        logs = [os.path.join(self.run, f"wrk-{scen}-{case}-{c['name']}-{rnd}-{lbl}.log") for lbl, _ in loads]
        ws = [self.wrk(c["port"], log=lg, secs=self.m["secs"], **kw) for (_, kw), lg in zip(loads, logs)]
        for w in ws:
            w.wait()
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
        print(f"bench: {scen:7s} {case:10s} r{rnd} {c['name']:18s} {reqs / secs:8.0f} req/s "
              f"p50 {w['p50_us']:6d} p99 {w['p99_us']:7d} us  cpu {s['proxy_cpu_ns'] / 1000 / reqs:6.2f} us/req"
              f"{mm}  errors {errs}  cores busy {s['core_busy_pct']}", file=sys.stderr, flush=True)

    def scenario(self, scen, cases, contenders, workers, pcpus, lcpus, be_threads):
        """Starts one backend and every contender, then for each case and round measures every
        contender once, the order rotated by round."""
        if self.only is not None and scen not in self.only:
            return
        want = os.environ.get("BENCH_CONTENDERS", "").split()
        contenders = [n for n in contenders if not want or n in want]
        if not contenders:
            return
        bport = self.start_backend(lcpus if workers == 1 else pcpus, be_threads)
        up = []
        for name in contenders:
            c = self.start(name, workers, pcpus, bport)
            if c:
                up.append(c)
        try:
            if self.m["warm_once"]:
                for c in up:
                    ws = [self.wrk(c["port"], **dict(kw, secs=self.m["warm_once"])) for _, kw in cases[0][1]]
                    for w in ws:
                        w.wait()
            for case, loads in cases:
                for rnd in range(1, self.m["rounds"] + 1):
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

    # --- memory ----------------------------------------------------------------------------------
    def memory(self):
        if self.only is not None and "memory" not in self.only:
            return
        bport = self.start_backend("1", 1)
        try:
            for n in self.m["idle"]:
                for name in ["corral", "nginx", "haproxy", "tokio"]:
                    c = self.start(name, 1, "0", bport, maxconn=n + 512)
                    if not c:
                        continue
                    # The loaded steady state first: pools, rings and caches touched once.
                    self.wrk(c["port"], 64, 1 if self.mode == "quick" else 2, cpus="1").wait()
                    log = os.path.join(self.run, f"idle-{name}-{n}.log")
                    r = subprocess.run(["timeout", "200", "taskset", "-c", "1", PY, os.path.join(HERE, "idle_conns.py"),
                                        "--port", str(c["port"]), "--pid", str(c["rss"][0]), "--count", str(n),
                                        "--timeout", "150"], capture_output=True, text=True)
                    open(log, "w").write(r.stdout + r.stderr)
                    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
                    if lines:
                        res = json.loads(lines[-1])
                        self.samples.write(json.dumps({"scenario": "idle", "case": f"{n}", "contender": name,
                                                       "workers": 1, "round": 1, "idle": res}) + "\n")
                        self.samples.flush()
                        print(f"bench: idle    {n:6d} {name:8s} {res}", file=sys.stderr, flush=True)
                    else:
                        self.note(f"idle {name} {n}: no result: {(r.stdout + r.stderr)[-300:]}")
                    self.stop(c["proc"])
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
                      ["corral-" + p for p in POLICIES] + two[1:], 2, "0,1", "0,1", 2)
        self.scenario("churn", [("1w-c64", [("main", dict(conns=64, cpus="1", close=True))])], one, 1, "0", "1", 1)
        large = [("down-1MiB", [("main", dict(conns=16, cpus="1", path="/bytes/1048576"))])]
        if m["large_up"]:
            large.append(("up-1MiB", [("main", dict(conns=16, cpus="1", script="wrk-upload.lua"))]))
        self.scenario("large", large, one, 1, "0", "1", 1)
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
