#!/usr/bin/python3
"""bench.py's report: medians over the interleaved rounds, ratios to named baselines, a Markdown
table per scenario on stdout, results.csv / results.json and PNG plots (gnuplot), all stamped with
the machine, the commit and the date."""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys

FLOOR = "relay"       # the unparsed io_uring relay: the least work any proxy can do
REF = "haproxy"       # the established proxy the targets name
NGINX = "nginx"       # the TLS scenarios' second reference (issue 11 names both)
UNEVEN_BASE = "corral-hash"


def load_jsonl(path):
    out = []
    try:
        for line in open(path):
            if line.strip():
                out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def errors(w):
    return w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"]


def figures(s):
    """The per-sample figures of one measured window."""
    w = s["main"]
    secs = w["duration_us"] / 1e6
    reqs = max(1, w["requests"])
    f = {"req_s": reqs / secs, "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
         "max_ms": w["lat_max_us"] / 1000, "cpu_us_req": s["proxy_cpu_ns"] / 1000 / reqs,
         "backend_us_req": s["backend_cpu_ns"] / 1000 / reqs, "errors": errors(w)}
    top = s.get("worker_cpu_ns") or []
    if s["workers"] > 1 and top and sum(top):
        f["core_max_mean"] = max(top) * len(top) / sum(top)
    split, heavy_n = s.get("heavy_split"), s.get("heavy_n")
    if split and heavy_n:
        # uneven: 1 when every heavy stream was on one worker (bench.py CoreSampler), else 0
        f["heavy_one"] = 1 if max(split) >= heavy_n else 0
    if "heavy" in s:
        h = s["heavy"]
        f["heavy_mb_s"] = h["bytes"] / (h["duration_us"] / 1e6) / 1e6
        f["errors"] += errors(h)
    t = w.get("tls")
    if t:
        if s["scenario"] == "tlshs":
            f["hs_core_s"] = 1e6 / f["cpu_us_req"] if f["cpu_us_req"] else None
        f["resumed"] = t.get("resumed", 0)
        f["tickets_hs"] = t.get("tickets_per_handshake")
        f["handshakes"] = t.get("handshakes", 0)
        f["tls_ok"] = 1 if (t.get("version"), t.get("cipher"), t.get("differed")) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256", 0) else 0
    if s["scenario"] == "large":
        mb = (w["bytes"] if s["case"].startswith("down") else w["requests"] * 1048576) / 1e6
        f["mb_s"] = mb / secs
        f["cpu_us_mb"] = s["proxy_cpu_ns"] / 1000 / max(1e-9, mb)
    return f


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


COLUMNS = {
    "hello": [("req_s", "req/s", 0), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2), ("max_ms", "max ms", 1),
              ("cpu_us_req", "CPU µs/req", 2), ("cpu_vs_floor", "CPU ÷ floor", 2), ("cpu_vs_ref", "CPU ÷ HAProxy", 2),
              ("p99_vs_ref", "p99 ÷ HAProxy", 2), ("core_max_mean", "core max/mean", 2), ("errors", "errors", 0)],
    "uneven": [("req_s", "light req/s", 0), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2), ("max_ms", "max ms", 1),
               ("p99_vs_base", "p99 ÷ hash", 2), ("heavy_mb_s", "heavy MB/s", 0), ("core_max_mean", "core max/mean", 2),
               ("cpu_us_req", "CPU µs/light req", 1), ("heavy_one", "rounds: all heavy on one worker", 0),
               ("errors", "errors", 0)],
    "churn": [("req_s", "conn/s", 0), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2),
              ("cpu_us_req", "CPU µs/conn", 2), ("cpu_vs_floor", "CPU ÷ floor", 2), ("cpu_vs_ref", "CPU ÷ HAProxy", 2),
              ("errors", "errors", 0)],
    "large": [("mb_s", "MB/s", 0), ("p99_ms", "p99 ms", 1), ("cpu_us_mb", "CPU µs/MB", 0),
              ("mbcpu_vs_floor", "CPU ÷ floor", 2), ("mbcpu_vs_ref", "CPU ÷ HAProxy", 2), ("errors", "errors", 0)],
}
COLUMNS["tls"] = [("req_s", "req/s", 0), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2), ("max_ms", "max ms", 1),
                  ("cpu_us_req", "CPU µs/req", 2), ("cpu_vs_nginx", "CPU ÷ NGINX", 2), ("cpu_vs_ref", "CPU ÷ HAProxy", 2),
                  ("p99_vs_ref", "p99 ÷ HAProxy", 2), ("handshakes", "handshakes in window", 0),
                  ("tls_ok", "TLSv1.3 AES128GCM", 0), ("errors", "errors", 0)]
COLUMNS["tlshs"] = [("req_s", "handshakes/s", 0), ("hs_core_s", "handshakes/s per core", 0), ("p50_ms", "p50 ms", 2),
                    ("p99_ms", "p99 ms", 2), ("cpu_us_req", "CPU µs/handshake", 1), ("cpu_vs_nginx", "CPU ÷ NGINX", 2),
                    ("cpu_vs_ref", "CPU ÷ HAProxy", 2), ("resumed", "resumed", 0), ("tickets_hs", "tickets/handshake", 2),
                    ("tls_ok", "TLSv1.3 AES128GCM", 0), ("errors", "errors", 0)]
COLUMNS["work"] = COLUMNS["hello"]
TITLES = {
    "hello": "hello: GET / (13 B), keep-alive; 1w = 1 worker on core 0 (wrk + backend on core 1), "
             "2w = 2 workers on both cores (wrk + backend unpinned)",
    "work": "variable work: GET /work (0-10 x 10 µs of backend CPU), 2 workers, 256 connections",
    "uneven": "uneven: 3 heavy keep-alive connections streaming 1 MiB responses + 32 light clients, "
              "a new connection per GET; 2 workers",
    "churn": "churn: a new connection per request (Connection: close), 64 clients, 1 worker",
    "large": "large bodies: 1 MiB responses (down) and 1 MiB uploads (up), 16 connections, 1 worker",
    "tls": "TLS 1.3 keep-alive: GET / (13 B) over TLS_AES_128_GCM_SHA256, ECDSA P-256 certificate, 1 worker on core 0 "
           "(corral-tls-load + backend on core 1); handshakes before the measured window",
    "tlshs": "TLS handshakes: a new TLS 1.3 connection per GET / (full handshake, no resumption: corral-tls-load "
             "--churn), X25519 + ECDSA P-256, 1 worker on core 0; per core = 1e6 / CPU µs per handshake",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--meta", default="{}")
    a = ap.parse_args()
    meta = json.loads(a.meta)
    samples = load_jsonl(os.path.join(a.dir, "samples.jsonl"))
    try:
        nj = json.load(open(os.path.join(a.dir, "notes.json")))
    except (FileNotFoundError, ValueError):
        nj = {}
    meta.update(mode=nj.get("mode"), settings=nj.get("settings"))
    notes = nj.get("notes", [])
    stamp = (f"{meta.get('cores')} cores ({meta.get('cpu')}), kernel {meta.get('kernel')}, "
             f"commit {meta.get('commit')}, {meta.get('date')}")

    # Medians per (scenario, case, contender), contenders in the order they first ran.
    groups, order = {}, []
    for s in samples:
        if s["scenario"] in ("idle", "slow", "tlsidle", "tlscheck"):
            continue
        key = (s["scenario"], s["case"], s["contender"])
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(figures(s))
    rows = {}
    for key in order:
        fs = groups[key]
        r = {k: med([f.get(k) for f in fs]) for k in set().union(*fs)}
        r["errors"] = sum(f["errors"] for f in fs)
        if "tls_ok" in r:
            r["tls_ok"] = "yes" if all(f.get("tls_ok") for f in fs) else "NO"
            r["resumed"] = sum(f.get("resumed", 0) for f in fs)
            r["handshakes"] = sum(f.get("handshakes", 0) for f in fs)
        r["rounds"] = len(fs)
        one = [f["heavy_one"] for f in fs if "heavy_one" in f]
        if one:
            r["heavy_one"] = f"{sum(one)}/{len(one)}"
        rows[key] = r

    def ratio(key, metric, base, name):
        b = rows.get((key[0], key[1], base), {}).get(metric)
        v = rows[key].get(metric)
        if b and v is not None:
            rows[key][name] = v / b

    for key in rows:
        ratio(key, "cpu_us_req", FLOOR, "cpu_vs_floor")
        ratio(key, "cpu_us_req", REF, "cpu_vs_ref")
        ratio(key, "cpu_us_req", NGINX, "cpu_vs_nginx")
        ratio(key, "p99_ms", REF, "p99_vs_ref")
        ratio(key, "cpu_us_mb", FLOOR, "mbcpu_vs_floor")
        ratio(key, "cpu_us_mb", REF, "mbcpu_vs_ref")
        ratio(key, "p99_ms", UNEVEN_BASE, "p99_vs_base")

    idle = [s for s in samples if s["scenario"] == "idle"]
    tidle = [s for s in samples if s["scenario"] == "tlsidle"]
    slow = [s for s in samples if s["scenario"] == "slow"]

    out = []
    P = out.append
    P(f"## corral bench ({meta.get('mode')}): {stamp}")
    st = meta.get("settings") or {}
    P("")
    other = ", ".join(f"{k} {v} s" for k, v in (st.get("scen_secs") or {}).items())
    rounds_other = ", ".join(f"{k} {v}" for k, v in (st.get("scen_rounds") or {}).items())
    P(f"Medians of {st.get('rounds')} interleaved rounds"
      + (f" ({rounds_other})" if rounds_other else "") + f" of {st.get('secs')} s per contender "
      + (f"({other}) " if other else "")
      + (f"(warm-up {st.get('warm')} s before each)" if st.get("warm") else
         f"(warm-up {st.get('warm_once')} s before a contender's first run"
         + (f", none in {', '.join(st['no_warm'])} and TLS)" if st.get("no_warm") else ")"))
      + (f"; TLS runs {st.get('tls_secs')} s each" if st.get("tls_secs") else "")
      + f"; floor = `{FLOOR}` (unparsed io_uring relay), reference = HAProxy. "
      f"NGINX {meta.get('nginx')}, HAProxy {meta.get('haproxy')}, wrk {meta.get('wrk')}.")
    for scen in ("hello", "work", "uneven", "churn", "large", "tls", "tlshs"):
        keys = [k for k in order if k[0] == scen]
        if not keys:
            continue
        cols = COLUMNS[scen]
        P("")
        P(f"### {TITLES[scen]}")
        P("")
        P("| case | contender | " + " | ".join(c[1] for c in cols) + " |")
        P("|---|---|" + "---:|" * len(cols))
        for k in keys:
            r = rows[k]
            P(f"| {k[1]} | {k[2]} | " + " | ".join(fmt(r.get(c[0]), c[2]) for c in cols) + " |")
    if idle:
        P("")
        P("### memory: RSS per idle keep-alive client connection (1 worker; after a short load warm-up)")
        P("")
        P("| connections | contender | bytes/conn | RSS MiB | failed | lost |")
        P("|---:|---|---:|---:|---:|---:|")
        for s in idle:
            x = s["idle"]
            P(f"| {s['case']} | {s['contender']} | {fmt(x.get('bytes_per_conn'), 0)} | "
              f"{fmt(x.get('rss_after_kb', 0) / 1024, 1)} | {x.get('failed')} | {x.get('lost')} |")
    if tidle:
        P("")
        P("### memory: RSS per idle TLS 1.3 keep-alive connection (1 worker; one GET each; after a short TLS load warm-up)")
        P("")
        P("One instance per contender opens the largest count, pausing at the smaller ones to read the RSS. "
          "bytes/conn: (RSS there - RSS before the first) / count; marginal: (RSS at this count - RSS at the "
          "previous one) / the connections between, free of one-off growth (pool pages, heap arenas).")
        P("")
        P("| connections | contender | bytes/conn | ÷ NGINX | ÷ HAProxy | marginal bytes/conn | ÷ NGINX | ÷ HAProxy | RSS MiB | failed | lost |")
        P("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in sorted(tidle, key=lambda o: int(o["case"])):
            x = s["idle"]
            row = []
            for key in ("bytes_per_conn", "marginal_bytes_per_conn"):
                b = x.get(key)
                refs = {o["contender"]: o["idle"].get(key) for o in tidle if o["case"] == s["case"]}
                rn, rh = refs.get(NGINX), refs.get(REF)
                row += [fmt(b, 0), fmt(b / rn if b and rn else None, 2), fmt(b / rh if b and rh else None, 2)]
            P(f"| {s['case']} | {s['contender']} | " + " | ".join(row) + f" | {fmt(x.get('rss_after_kb', 0) / 1024, 1)} | "
              f"{x.get('failed')} | {x.get('lost')} |")
    if slow:
        P("")
        P("### memory: 200 slow readers (10 MB each at ~100 KB/s) while 64 normal keep-alive clients run")
        P("")
        P("| contender | RSS growth MiB | ÷ HAProxy | normal req/s | normal p99 ms | reader KB/s |")
        P("|---|---:|---:|---:|---:|---:|")
        ref = next((s["slow"]["growth_kb"] for s in slow if s["contender"] == REF), None)
        for s in slow:
            x = s["slow"]
            w = x.get("wrk") or {}
            rps = w["requests"] / (w["duration_us"] / 1e6) if w else None
            P(f"| {s['contender']} | {fmt(x['growth_kb'] / 1024, 1)} | "
              f"{fmt(x['growth_kb'] / ref if ref else None, 2)} | {fmt(rps, 0)} | "
              f"{fmt(w.get('p99_us', 0) / 1000 if w else None, 2)} | "
              f"{fmt((x.get('readers') or {}).get('per_reader_kb_s'), 1)} |")
    checks = [s for s in samples if s["scenario"] == "tlscheck"]
    if checks:
        P("")
        P("### TLS check: what each client negotiated, from NGINX's access log ($ssl_protocol $ssl_cipher $ssl_session_reused)")
        P("")
        P("| client | requests | TLSv1.3 + TLS_AES_128_GCM_SHA256 | on a resumed session |")
        P("|---|---:|---:|---:|")
        label = {"wrk": "wrk (keep-alive)", "wrk-close": "wrk -H 'Connection: close'",
                 "tls-load": "corral-tls-load (keep-alive)", "tls-load-churn": "corral-tls-load --churn"}
        for lbl, r in checks[-1]["check"].items():
            P(f"| {label.get(lbl, lbl)} | {r['requests']} | {r['expected']} | {r['resumed']} |")
    targets(P, rows, order, idle, slow)
    tls_targets(P, rows, order, tidle)
    for n in notes:
        P("")
        P(f"note: {n}")
    text = "\n".join(out) + "\n"
    print(text)
    open(os.path.join(a.dir, "results.md"), "w").write(text)

    # CSV: one row per (scenario, case, contender), medians; JSON: the same plus every sample.
    fields = ["scenario", "case", "contender", "rounds", "req_s", "p50_ms", "p99_ms", "max_ms", "cpu_us_req",
              "cpu_vs_floor", "cpu_vs_ref", "p99_vs_ref", "p99_vs_base", "core_max_mean", "heavy_mb_s",
              "heavy_one", "mb_s", "cpu_us_mb", "mbcpu_vs_floor", "mbcpu_vs_ref", "backend_us_req", "cpu_vs_nginx",
              "hs_core_s", "resumed", "tickets_hs", "handshakes", "tls_ok", "bytes_per_conn", "errors"]
    with open(os.path.join(a.dir, "results.csv"), "w", newline="") as f:
        f.write(f"# {stamp}\n")
        w = csv.writer(f)
        w.writerow(fields)
        for k in order:
            r = rows[k]
            w.writerow(list(k) + [("" if r.get(x) is None else round(r[x], 4) if isinstance(r[x], float) else r[x])
                                  for x in fields[3:]])
        for s in idle + tidle:
            w.writerow([s["scenario"], s["case"], s["contender"], 1] + [""] * (len(fields) - 6)
                       + [s["idle"].get("bytes_per_conn", ""), s["idle"].get("failed", 0) + s["idle"].get("lost", 0)])
    doc = {"meta": meta, "stamp": stamp, "notes": notes,
           "results": [dict(scenario=k[0], case=k[1], contender=k[2], **rows[k]) for k in order],
           "idle": idle, "tls_idle": tidle, "slow": slow, "samples": samples}
    json.dump(doc, open(os.path.join(a.dir, "results.json"), "w"), indent=1)

    plots(a.dir, rows, order, idle + tidle, stamp)
    print(f"results: {a.dir}/results.md, results.csv, results.json, *.png")
    return 0


def targets(P, rows, order, idle, slow):
    """Issue 12's targets, each checked against this run: met, MISSED, or n/a (not measured)."""
    out = []

    def mark(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    for k in order:
        if k[0] != "hello" or not k[1].startswith("1w-") or k[2] != "corral":
            continue
        r = rows[k]
        others = [rows[x]["cpu_us_req"] for x in order
                  if x[:2] == k[:2] and x[2] not in ("corral", FLOOR) and rows[x].get("cpu_us_req")]
        cf = r.get("cpu_vs_floor")
        out.append((f"hello {k[1]}: corral CPU/req <= 1.05x floor", f"{fmt(cf, 2)}x", mark(None if cf is None else cf <= 1.05)))
        out.append((f"hello {k[1]}: corral CPU/req below every other contender",
                    f"{fmt(r.get('cpu_us_req'), 2)} vs min {fmt(min(others) if others else None, 2)} µs",
                    mark(None if not others else r["cpu_us_req"] < min(others))))
        pr = r.get("p99_vs_ref")
        out.append((f"hello {k[1]}: corral p99 <= 0.7x HAProxy", f"{fmt(pr, 2)}x", mark(None if pr is None else pr <= 0.7)))
    un = {k[2]: rows[k] for k in order if k[0] == "uneven"}
    if un:
        base, tok = un.get(UNEVEN_BASE, {}), un.get("tokio", {})
        best = None
        for name, r in un.items():
            if not name.startswith("corral-") or name == UNEVEN_BASE:
                continue
            ok = (r.get("core_max_mean") is not None and r["core_max_mean"] <= 1.10 and
                  base.get("p99_ms") is not None and r["p99_ms"] < base["p99_ms"] and
                  (tok.get("p99_ms") is None or r["p99_ms"] <= tok["p99_ms"]))
            if best is None or ok > best[1] or (ok == best[1] and r["p99_ms"] < un[best[0]]["p99_ms"]):
                best = (name, ok)
        if best:
            r = un[best[0]]
            out.append(("uneven: best policy max/mean <= 1.10, p99 < hash's, p99 <= Tokio's",
                        f"{best[0]}: {fmt(r.get('core_max_mean'), 2)}, {fmt(r.get('p99_ms'), 1)} ms vs hash "
                        f"{fmt(base.get('p99_ms'), 1)}, Tokio {fmt(tok.get('p99_ms'), 1)} ms", mark(best[1])))
    for s in idle:
        if s["contender"] == "corral":
            x = s["idle"]
            b = x.get("bytes_per_conn")
            held = x.get("idle", 0) - x.get("lost", 0)
            # A proxy that did not hold all N connections was not measured at N: its bytes per
            # connection divide the RSS of fewer slots by the ones left.
            whole = x.get("failed", 0) == 0 and x.get("lost", 0) == 0
            out.append((f"idle {s['case']}: corral <= 512 B per connection",
                        f"{fmt(b, 0)} B" + ("" if whole else f" (held {held} of {x.get('count')})"),
                        mark(None if b is None else b <= 512 and whole)))
    g = {s["contender"]: s["slow"]["growth_kb"] for s in slow}
    if "corral" in g and REF in g:
        out.append(("slow readers: corral RSS growth <= HAProxy's",
                    f"{g['corral'] / 1024:.1f} vs {g[REF] / 1024:.1f} MiB", mark(g["corral"] <= g[REF])))
    if not out:
        return
    P("")
    P("### targets (issue 12), this run")
    P("")
    P("| target | measured | |")
    P("|---|---|---|")
    for t, v, m in out:
        P(f"| {t} | {v} | {m} |")


def tls_targets(P, rows, order, tidle):
    """Issue 11's benchmark targets (Done-when 2), each checked against this run."""
    out = []

    def mark(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    def vs(scen, case, metric, higher):
        me = rows.get((scen, case, "corral"), {}).get(metric)
        for ref in (NGINX, REF):
            v = rows.get((scen, case, ref), {}).get(metric)
            ok = None if me is None or v is None else (me >= v if higher else me <= v)
            yield ref, me, v, ok

    for k in order:
        if k[0] == "tls" and k[2] == "corral":
            for ref, me, v, ok in vs("tls", k[1], "cpu_us_req", False):
                out.append((f"TLS keep-alive {k[1]}: corral CPU/req <= {ref}'s", f"{fmt(me, 2)} vs {fmt(v, 2)} µs", mark(ok)))
        if k[0] == "tlshs" and k[2] == "corral":
            for ref, me, v, ok in vs("tlshs", k[1], "hs_core_s", True):
                out.append((f"TLS handshakes {k[1]}: corral handshakes/s per core >= {ref}'s",
                            f"{fmt(me, 0)} vs {fmt(v, 0)}", mark(ok)))
    for s in tidle:
        if s["contender"] != "corral":
            continue
        for key, what in (("bytes_per_conn", ""), ("marginal_bytes_per_conn", " (marginal)")):
            b = s["idle"].get(key)
            n = next((o["idle"].get(key) for o in tidle if o["case"] == s["case"] and o["contender"] == NGINX), None)
            if b is None and n is None:
                continue
            out.append((f"idle TLS {s['case']}{what}: corral RSS/conn <= NGINX's", f"{fmt(b, 0)} vs {fmt(n, 0)} B",
                        mark(None if b is None or n is None else b <= n)))
    if not out:
        return
    P("")
    P("### targets (issue 11, TLS), this run")
    P("")
    P("| target | measured | |")
    P("|---|---|---|")
    for t, v, m in out:
        P(f"| {t} | {v} | {m} |")


def plots(d, rows, order, idle, stamp):
    """PNG bar charts with gnuplot: one per figure that the targets are about."""
    charts = []

    def bars(name, title, ylabel, items):
        if not items:
            return
        data = os.path.join(d, name + ".dat")
        with open(data, "w") as f:
            for label, v in items:
                f.write(f"\"{label}\" {v if v is not None else 0}\n")
        charts.append(f"""
set output '{os.path.join(d, name + '.png')}'
set title "{title}\\n{{/*0.7 {stamp}}}"
set ylabel '{ylabel}'
plot '{data}' using 2:xtic(1) with boxes notitle lc rgb '#4070a0'
""")

    hello = [k for k in order if k[0] == "hello"]
    bars("hello_cpu", "hello: proxy CPU per request", "µs per request",
         [(f"{k[1]} {k[2]}", rows[k].get("cpu_us_req")) for k in hello])
    bars("hello_p99", "hello: p99 latency", "ms", [(f"{k[1]} {k[2]}", rows[k].get("p99_ms")) for k in hello])
    un = [k for k in order if k[0] == "uneven"]
    bars("uneven_p99", "uneven: light clients' p99", "ms", [(k[2], rows[k].get("p99_ms")) for k in un])
    bars("uneven_balance", "uneven: per-core CPU max/mean of the proxy", "max/mean",
         [(k[2], rows[k].get("core_max_mean")) for k in un])
    bars("idle_rss", "RSS per idle keep-alive connection", "bytes",
         [(f"{s['case']} {s['contender']}", s["idle"].get("bytes_per_conn")) for s in idle if s["scenario"] == "idle"])
    bars("tls_cpu", "TLS 1.3 keep-alive: proxy CPU per request", "µs per request",
         [(f"{k[1]} {k[2]}", rows[k].get("cpu_us_req")) for k in order if k[0] == "tls"])
    bars("tlshs_cpu", "TLS 1.3 full handshakes: proxy CPU per handshake", "µs per handshake",
         [(f"{k[1]} {k[2]}", rows[k].get("cpu_us_req")) for k in order if k[0] == "tlshs"])
    bars("tls_idle_rss", "RSS per idle TLS keep-alive connection", "bytes",
         [(f"{s['case']} {s['contender']}", s["idle"].get("bytes_per_conn")) for s in idle if s["scenario"] == "tlsidle"])
    if not charts:
        return
    script = """set terminal pngcairo size 1100,520 font ',9'
set style fill solid 0.8
set boxwidth 0.7
set xtics rotate by -40
set grid ytics
set yrange [0:*]
""" + "".join(charts)
    try:
        r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True, timeout=60)
        if r.returncode:
            print(f"report: gnuplot: {r.stderr.strip()[-300:]}", file=sys.stderr)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"report: gnuplot: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
