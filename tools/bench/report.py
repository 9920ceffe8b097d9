#!/usr/bin/python3
"""bench.sh's report: medians over the interleaved rounds, the table, ratios, results.json."""
import argparse
import json
import statistics
import sys

ORDER = ["corral", "nginx", "haproxy"]


def load_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def fmt(v, nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", required=True)
    ap.add_argument("--rss", required=True)
    ap.add_argument("--notes", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", default="{}")
    ap.add_argument("--proxies", default="", help="the proxies asked for, in order")
    a = ap.parse_args()

    samples = load_jsonl(a.samples)
    rss = {}
    for r in load_jsonl(a.rss):
        rss[r["proxy"]] = dict(r["rss"], rss_fresh_kb=r.get("rss_fresh_kb"))
    notes = [n["note"] for n in load_jsonl(a.notes)]
    meta = {k: int(v) if isinstance(v, str) and v.isdigit() else v
        for k, v in json.loads(a.meta).items()}

    per = {}
    for s in samples:
        w = s["wrk"]
        secs = w["duration_us"] / 1e6
        reqs = max(1, w["requests"])
        tick_us = 1e6 / s["clk_tck"]
        r = per.setdefault(s["proxy"], {"rps": [], "p50": [], "p99": [], "cpu": [], "bcpu": [],
                         "busy": [], "other": [], "sched": [],
                         "errors": 0, "requests": 0})
        r["rps"].append(w["requests"] / secs)
        r["p50"].append(w["p50_us"])
        r["p99"].append(w["p99_us"])
        r["cpu"].append(s["cpu_ticks"] * tick_us / reqs)
        r["bcpu"].append(s["backend_cpu_ticks"] * tick_us / reqs)
        if "sched_ns" in s:
            r["sched"].append(s["sched_ns"] / 1000.0 / reqs)
        tot = max(1, s.get("core_total_ticks", 0))
        r["busy"].append(100.0 * s["cpu_ticks"] / tot)
        r["other"].append(100.0 * max(0, s.get("core_busy_ticks", 0) - s["cpu_ticks"]) / tot)
        r["errors"] += (w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] +
                w["err_timeout"])
        r["requests"] += w["requests"]

    names = a.proxies.split() or [p for p in ORDER if p in per or p in rss]
    names += sorted(p for p in set(per) | set(rss) if p not in names)
    res = {}
    for p in names:
        r = per.get(p)
        e = {}
        if r:
            e.update({
                "rounds": len(r["rps"]),
                "requests_per_s": round(statistics.median(r["rps"]), 1),
                "p50_us": statistics.median(r["p50"]),
                "p99_us": statistics.median(r["p99"]),
                "cpu_us_per_req": round(statistics.median(r["cpu"]), 3),
                "backend_cpu_us_per_req": round(statistics.median(r["bcpu"]), 3),
                "sched_us_per_req": (round(statistics.median(r["sched"]), 3)
                             if r["sched"] else None),
                "proxy_core_busy_pct": round(statistics.median(r["busy"]), 1),
                "proxy_core_other_pct": round(statistics.median(r["other"]), 1),
                "errors": r["errors"],
                "requests": r["requests"],
                "all": {"requests_per_s": [round(x, 1) for x in r["rps"]],
                    "p50_us": r["p50"], "p99_us": r["p99"],
                    "cpu_us_per_req": [round(x, 3) for x in r["cpu"]],
                    "sched_us_per_req": [round(x, 3) for x in r["sched"]]},
            })
        if p in rss:
            x = rss[p]
            e["idle_rss_bytes_per_conn"] = x.get("bytes_per_conn")
            if "rss_after_kb" in x:
                e["idle_rss_total_mib"] = round(x["rss_after_kb"] / 1024, 1)
            if x.get("rss_fresh_kb") and x.get("rss_after_kb") and x.get("idle"):
                # From a freshly started process: includes first touches of pools and rings.
                e["idle_rss_bytes_per_conn_from_fresh"] = round(
                    (x["rss_after_kb"] - x["rss_fresh_kb"]) * 1024 / x["idle"], 1)
            e["idle"] = x
        res[p] = e

    def ratio(metric, a_, b_):
        va = res.get(a_, {}).get(metric)
        vb = res.get(b_, {}).get(metric)
        if va is None or vb is None or vb == 0:
            return None
        return round(va / vb, 3)

    ratios = {}
    for metric in ("cpu_us_per_req", "sched_us_per_req", "requests_per_s", "p99_us", "idle_rss_bytes_per_conn"):
        ratios[metric] = {"corral/haproxy": ratio(metric, "corral", "haproxy"),
                  "corral/nginx": ratio(metric, "corral", "nginx")}

    doc = {"meta": meta, "proxies": res, "ratios": ratios, "notes": notes, "samples": samples}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    # The table.
    print()
    print(f"corral bench: backend {meta.get('backend', '?')}, path {meta.get('path', '/')}, "
          f"wrk -t1 -c{meta.get('conns', '?')}, {meta.get('rounds', '?')} rounds x "
          f"{meta.get('seconds', '?')} s per proxy (medians), proxy on core "
          f"{meta.get('proxy_cpu', '?')}, wrk+backend on core {meta.get('load_cpu', '?')}")
    hdr = (f"{'proxy':8s} {'req/s':>7s} {'p50 us':>7s} {'p99 us':>7s} {'cpu us/req':>10s} "
           f"{'sched us/req':>12s} {'busy%':>5s} {'noise%':>6s} {'backend us/req':>14s} {'errors':>6s} "
           f"{'idle B/conn':>11s} {'RSS MiB':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for p in names:
        e = res[p]
        print(f"{p:8s} {fmt(e.get('requests_per_s'), 0):>7s} {fmt(e.get('p50_us')):>7s} "
              f"{fmt(e.get('p99_us')):>7s} {fmt(e.get('cpu_us_per_req'), 2):>10s} "
              f"{fmt(e.get('sched_us_per_req'), 2):>12s} {fmt(e.get('proxy_core_busy_pct'), 0):>5s} {fmt(e.get('proxy_core_other_pct'), 0):>6s} "
              f"{fmt(e.get('backend_cpu_us_per_req'), 2):>14s} {fmt(e.get('errors')):>6s} "
              f"{fmt(e.get('idle_rss_bytes_per_conn'), 0):>11s} {fmt(e.get('idle_rss_total_mib'), 1):>7s}")
    print()
    print("cpu us/req: utime+stime / requests; sched us/req: the same from the scheduler's "
          "per-thread runtime in ns (cross-check)")
    print("busy%: proxy CPU / proxy core's time; noise%: the rest of that core's busy time "
          "(other processes, softirq) - high means a disturbed run")
    print(f"idle B/conn: (VmRSS with {meta.get('idle_conns', '?')} idle keep-alive clients - VmRSS "
          f"before them, after a load warm-up) / clients (target <= 2048);")
    print("RSS MiB: VmRSS with them open; from fresh: the same delta from a just-started process:")
    for p in names:
        if res[p].get("idle_rss_bytes_per_conn_from_fresh") is not None:
            print(f"  {p}: {fmt(res[p]['idle_rss_bytes_per_conn_from_fresh'], 0)} B/conn from fresh")
    c = ratios["cpu_us_per_req"]
    print(f"CPU per request ratio: corral/haproxy {fmt(c['corral/haproxy'], 3)}, "
          f"corral/nginx {fmt(c['corral/nginx'], 3)} (target <= 1.0, goal 0.6)")
    for n in notes:
        print(f"note: {n}")
    for p in names:
        if (res[p].get("proxy_core_other_pct") or 0) > 25:
            print(f"warning: {p}: median noise {res[p]['proxy_core_other_pct']}% on the proxy core; "
                  "the machine was busy, treat its numbers with care")
    print(f"results: {a.out}")
    print()

    # One final line per metric, for scripts.
    def line(metric, nd, with_ratio):
        vals = " ".join(f"{p}={fmt(res[p].get(metric), nd)}" for p in names)
        if with_ratio:
            rr = ratios[metric]
            vals += (f" corral/haproxy={fmt(rr['corral/haproxy'], 3)}"
                 f" corral/nginx={fmt(rr['corral/nginx'], 3)}")
        print(f"RESULT {metric} {vals}")

    line("requests_per_s", 0, True)
    line("p50_us", 0, False)
    line("p99_us", 0, True)
    line("cpu_us_per_req", 2, True)
    line("sched_us_per_req", 2, True)
    line("idle_rss_bytes_per_conn", 0, True)
    line("idle_rss_bytes_per_conn_from_fresh", 0, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
