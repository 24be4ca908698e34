#!/usr/bin/env python3
"""Side by side: takhin-monitor against the peer hubs of benches/peers, as in BENCHMARKS.md.

One command reproduces the whole comparison:

    benches/compare.py                      # all servers, 3 runs each (about 45 min)
    benches/compare.py --runs 1 --servers takhin-monitor,go-gorilla --quick   # a short look

Every server is pinned to CPU 0 (`taskset -c 0`; ours also with `--cpu-list 0`, one shard) and
loadgen to CPU 1, and every server is measured by the same loadgen commands:

1. fan-out ramps at 1,000 and 10,000 subscribers with 256 B and 4 KiB messages: the rate grows
   by 1.5x every 2 s from a common starting rate until p99 > 50 ms, any loss, or the publisher
   (4 keep-alive connections) cannot reach the rate; the first step is the common fixed rate;
   at 10,000 subscribers also with a 1 s p99 target (no server writes 10,000 frames in 50 ms);
2. memory per idle connection at 1,000 and 19,000 connections (fresh server each);
3. a metrics-snapshot-sized message (the size our server's snapshot has with 100 topics and
   50 groups) every 2 s to 10,000 subscribers: time from publish to the last delivery; for our
   server also its real metrics path (`loadgen metrics`, tick to last delivery);
4. connection churn as fast as the server takes it: handshakes per second.

Results: OUT/results.json (every loadgen report), OUT/summary.md (medians with min-max and the
ratio of ours to each peer) and OUT/latency.svg (p99 against publish rate, 1,000 subscribers,
256 B). Stdlib only; servers are stopped by PID.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benches" / "peers"
LOADGEN = ROOT / "target" / "release" / "loadgen"
SERVER = ROOT / "target" / "release" / "takhin-monitor"
OURS = "takhin-monitor"
OUR_PORT = 18087

FANOUTS = [  # name, subscribers, size, starting rate, p99 target
    ("fan-1k-256", 1000, 256, 10, "50ms"),
    ("fan-1k-4k", 1000, 4096, 10, "50ms"),
    ("fan-10k-256", 10000, 256, 2, "50ms"),
    ("fan-10k-4k", 10000, 4096, 2, "50ms"),
    # One message to 10,000 clients takes one server core longer than 50 ms to write out, at any
    # rate, so the same ramps again with a 1 s target compare how much each server carries.
    ("fan-10k-256-1s", 10000, 256, 2, "1s"),
    ("fan-10k-4k-1s", 10000, 4096, 2, "1s"),
]


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def servers():
    rows = [(OURS, None, f"ws://127.0.0.1:{OUR_PORT}/api/monitoring/ws",
             f"http://127.0.0.1:{OUR_PORT}/api/monitoring/publish")]
    for line in (PEERS / "peers.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, start, ws, publish, _ = line.split("\t")
        rows.append((name, start, ws, publish))
    return rows


def port_of(url):
    return int(url.split("://")[1].split("/")[0].rsplit(":", 1)[1])


def wait_port(port, proc, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Server:
    """One server process pinned to CPU 0, started fresh and stopped by PID."""

    def __init__(self, name, start, ws, publish, out, extra=()):
        self.name, self.ws, self.publish = name, ws, publish
        log = open(out / f"{name}.log", "a")
        env = dict(os.environ, PEERS_STATE=os.environ.get("PEERS_STATE", "/tmp/takhin-peers"))
        if start is None:
            cmd = ["taskset", "-c", "0", str(SERVER), "--listen", f"127.0.0.1:{OUR_PORT}",
                   "--cpu-list", "0", *extra]
        else:
            cmd = ["taskset", "-c", "0", str(PEERS / start)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=raise_limits)
        wait_port(port_of(ws), self.proc)
        wait_port(port_of(publish), self.proc)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def raise_limits():
    import resource
    for res in (resource.RLIMIT_NOFILE, resource.RLIMIT_MEMLOCK):
        soft, hard = resource.getrlimit(res)
        resource.setrlimit(res, (hard, hard))


def loadgen(server, args, timeout=300):
    cmd = ["taskset", "-c", "1", str(LOADGEN), *args, "--subscribe-url", server.ws,
           "--publish-url", server.publish, "--server-pid", str(server.proc.pid),
           "--json", "--quiet"]
    print("+", " ".join(cmd[3:]), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen gave no report: {out.stdout[-500:]} {out.stderr[-500:]}")
    report = json.loads(lines[-1])
    report.pop("window", None)
    print("  ->", summary_line(report), flush=True)
    return report


def summary_line(r):
    lat = r.get("latency_us") or {}
    return (f"conn {r['connected']}/{r['subscribers']} held {r.get('max_rate_held')} "
            f"deliv/s {r['deliveries_per_sec']:.0f} p50 {lat.get('p50')} p99 {lat.get('p99')} "
            f"lost {r['lost']} hs/s {r['handshakes_per_sec']:.0f} "
            f"rss/conn {r.get('server_rss_per_conn')} cpu/M {r.get('server_cpu_s_per_million')}")


def big_cluster(port):
    """100 topics and 50 groups on our server (through its REST API)."""
    def call(method, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
    for i in range(100):
        call("POST", "/api/topics", {"name": f"bench-topic-{i:03}", "partitions": 12})
    for i in range(50):
        call("PUT", f"/api/groups/bench-group-{i:02}", {"state": "Stable", "members": 4})


def run_server(row, out, opts, snapshot_size):
    name, start, ws, publish = row
    results = {}
    quick = opts.quick
    step = "1s" if quick else "2s"
    srv = Server(name, start, ws, publish, out)
    try:
        for fname, subs, size, rate, p99 in FANOUTS[: 1 if quick else len(FANOUTS)]:
            results[fname] = loadgen(srv, [
                "fanout", "--subscribers", str(subs), "--size", str(size), "--ramp",
                "--rate", str(rate), "--ramp-factor", "1.5", "--step", step,
                "--max-p99", p99, "--publishers", "4", "--drain", "1s"])
        results["snapshot"] = loadgen(srv, [
            "fanout", "--subscribers", "1000" if quick else "10000", "--size", str(snapshot_size),
            "--rate", "0.5", "--duration", "6s" if quick else "10s", "--drain", "3s"])
        results["churn"] = loadgen(srv, ["churn", "--rate", "0", "--duration", "3s" if quick else "5s"])
    finally:
        srv.stop()
    for n in ([1000] if quick else [1000, 19000]):
        srv = Server(name, start, ws, publish, out)
        try:
            results[f"idle-{n // 1000}k"] = loadgen(srv, ["idle", "--subscribers", str(n), "--duration", "3s"])
        finally:
            srv.stop()
    if name == OURS:
        srv = Server(name, start, ws, publish, out, ["--source", "demo"])
        try:
            big_cluster(OUR_PORT)
            time.sleep(2.5)  # one tick with the whole cluster in the snapshot
            results["metrics-path"] = loadgen(srv, [
                "metrics", "--subscribers", "1000" if quick else "10000", "--duration", "10s"])
        finally:
            srv.stop()
    return results


def measure_snapshot_size(out):
    """The size of our metrics snapshot with 100 topics and 50 groups (one subscriber)."""
    srv = Server(OURS, None, f"ws://127.0.0.1:{OUR_PORT}/api/monitoring/ws",
                 f"http://127.0.0.1:{OUR_PORT}/api/monitoring/publish", out, ["--source", "demo"])
    try:
        big_cluster(OUR_PORT)
        time.sleep(2.5)
        r = loadgen(srv, ["metrics", "--subscribers", "1", "--duration", "4.5s"])
        return r["frame_bytes"]["p50"]
    finally:
        srv.stop()


# ---- summary ------------------------------------------------------------------------------

def figures(res):
    """The table's figures of one server's run."""
    f = {}
    for fname, *_ in FANOUTS:
        r = res.get(fname)
        if r:
            f[f"{fname} max rate"] = r.get("max_rate_held") or 0.0
            first = r["steps"][0] if r["steps"] else None
            if first:
                f[f"{fname} p50 ms @start"] = first["latency_us"]["p50"] / 1000
                f[f"{fname} p99 ms @start"] = first["latency_us"]["p99"] / 1000
            if r.get("server_cpu_s_per_million"):
                f[f"{fname} cpu s/M"] = r["server_cpu_s_per_million"]
    for k in ("idle-1k", "idle-19k"):
        r = res.get(k)
        if r:
            f[f"{k} B/conn"] = r.get("server_rss_per_conn") or 0.0
            f[f"{k} connected"] = r["connected"]
    r = res.get("snapshot")
    if r:
        f["snapshot last ms"] = r["latency_us"]["max"] / 1000
        f["snapshot p50 ms"] = r["latency_us"]["p50"] / 1000
        f["snapshot lost"] = r["lost"]
    r = res.get("churn")
    if r:
        f["churn hs/s"] = r["handshakes_per_sec"]
    r = res.get("metrics-path")
    if r:
        f["metrics path tick->last ms"] = r["tick_to_last_us"]["max"] / 1000
    return f


def summarize(all_results, out):
    names = list(all_results)
    keys = []
    for name in names:
        for run in all_results[name]:
            for k in figures(run):
                if k not in keys:
                    keys.append(k)
    med = {}
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for k in keys:
        cells = []
        for name in names:
            vals = [figures(run)[k] for run in all_results[name] if k in figures(run)]
            if not vals:
                cells.append("–")
                continue
            m = statistics.median(vals)
            med[(name, k)] = m
            spread = f" ({fmt(min(vals))}–{fmt(max(vals))})" if len(vals) > 1 else ""
            cells.append(fmt(m) + spread)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Ratio of ours to each peer (medians; for rates and handshakes higher is better, "
              "for latency, memory and CPU lower is better):", "",
              "| figure | " + " | ".join(n for n in names if n != OURS) + " |",
              "|---|" + "---:|" * (len(names) - 1)]
    for k in keys:
        ours = med.get((OURS, k))
        cells = []
        for name in names:
            if name == OURS:
                continue
            theirs = med.get((name, k))
            cells.append(f"{ours / theirs:.2f}x" if ours is not None and theirs else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "## By server", ""] + by_server(all_results, med)
    lines += ["", "## Latency at the common starting rate", ""] + common_rate(all_results)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    chart(all_results, out / "latency.svg")


# The table of BENCHMARKS.md: (column title, figure, higher is better).
COLUMNS = [
    ("1k×256 B: max msg/s (p99<50ms)", "fan-1k-256 max rate", True),
    ("1k×4 KiB: max msg/s (p99<50ms)", "fan-1k-4k max rate", True),
    ("10k×256 B: max msg/s (p99<1s)", "fan-10k-256-1s max rate", True),
    ("10k×4 KiB: max msg/s (p99<1s)", "fan-10k-4k-1s max rate", True),
    ("1k×256 B @10/s: p99 ms", "fan-1k-256 p99 ms @start", False),
    ("10k×256 B @2/s: p99 ms", "fan-10k-256 p99 ms @start", False),
    ("idle B/conn @1k", "idle-1k B/conn", False),
    ("idle B/conn @19k", "idle-19k B/conn", False),
    ("18 KB snapshot to 10k: last ms", "snapshot last ms", False),
    ("churn: handshakes/s", "churn hs/s", True),
    ("CPU s per 1M deliveries (1k×256 B ramp)", "fan-1k-256 cpu s/M", False),
]


def common_rate(all_results):
    """p50 / p99 / p99.9 in ms of each fan-out's first step (the same rate for every server)."""
    combos = [(f, f"{f[4:].replace('-', ' × ')} @{r:g}/s") for f, _, _, r, p in FANOUTS if p == "50ms"]
    rows = ["| server (p50 / p99 / p99.9 ms) | " + " | ".join(t for _, t in combos) + " |",
            "|---|" + "---:|" * len(combos)]
    for name, runs in all_results.items():
        cells = []
        for key, _ in combos:
            firsts = [r[key]["steps"][0]["latency_us"] for r in runs if r.get(key) and r[key]["steps"]]
            if not firsts:
                cells.append("–")
                continue
            cells.append(" / ".join(f"{statistics.median(f[q] for f in firsts) / 1000:.0f}"
                                    for q in ("p50", "p99", "p999")))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def by_server(all_results, med):
    """Rows: servers; columns: the scenarios' figures (median, min-max); then ours / each peer."""
    head = "| server | " + " | ".join(c for c, _, _ in COLUMNS) + " |"
    rows = [head, "|---|" + "---:|" * len(COLUMNS)]
    for name in all_results:
        cells = []
        for _, key, _ in COLUMNS:
            vals = [figures(run)[key] for run in all_results[name] if key in figures(run)]
            if not vals:
                cells.append("–")
                continue
            spread = f" ({fmt(min(vals))}–{fmt(max(vals))})" if len(vals) > 1 else ""
            cells.append(f"{fmt(statistics.median(vals))}{spread}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows += ["", "Ours against each peer: how many times better (higher rates, lower latency, memory, CPU):", "",
             head.replace("| server |", "| peer |"), "|---|" + "---:|" * len(COLUMNS)]
    for name in all_results:
        if name == OURS:
            continue
        cells = []
        for _, key, higher in COLUMNS:
            ours, theirs = med.get((OURS, key)), med.get((name, key))
            if not ours or not theirs:
                cells.append("–")
            else:
                cells.append(f"{(ours / theirs if higher else theirs / ours):.1f}×")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def fmt(v):
    if isinstance(v, float) and v < 10:
        return f"{v:.2f}"
    return f"{v:,.0f}"


def chart(all_results, path, fname="fan-1k-256"):
    """p99 delivery latency against publish rate, one line per server (the median run's steps)."""
    series = {}
    for name, runs in all_results.items():
        steps = {}
        for run in runs:
            for s in (run.get(fname) or {}).get("steps", []):
                steps.setdefault(round(s["rate"], 1), []).append((s["achieved"], s["latency_us"]["p99"] / 1000))
        pts = sorted((statistics.median(a for a, _ in v), statistics.median(p for _, p in v))
                     for v in steps.values())
        if pts:
            series[name] = pts
    if not series:
        return
    import math
    w, h, l, b = 760, 440, 70, 50
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [max(y, 0.1) for pts in series.values() for _, y in pts]
    x0, x1 = math.log10(max(min(xs), 1)), math.log10(max(xs) * 1.1)
    y0, y1 = math.log10(min(ys)), math.log10(max(ys) * 1.5)
    X = lambda x: l + (math.log10(max(x, 1)) - x0) / (x1 - x0 or 1) * (w - l - 20)
    Y = lambda y: h - b - (math.log10(max(y, 0.1)) - y0) / (y1 - y0 or 1) * (h - b - 20)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="14" text-anchor="middle">p99 delivery latency vs publish rate '
           f'(1,000 subscribers, 256 B; log-log; server on CPU 0, loadgen on CPU 1)</text>',
           f'<line x1="{l}" y1="{h - b}" x2="{w - 20}" y2="{h - b}" stroke="black"/>',
           f'<line x1="{l}" y1="{h - b}" x2="{l}" y2="20" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">messages per second achieved</text>',
           f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">p99 ms</text>']
    for e in range(int(math.floor(x0)), int(math.ceil(x1)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if x0 <= math.log10(v) <= x1:
                svg.append(f'<text x="{X(v):.0f}" y="{h - b + 15}" text-anchor="middle">{v:g}</text>')
    for e in range(int(math.floor(y0)), int(math.ceil(y1)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if y0 <= math.log10(v) <= y1:
                svg.append(f'<text x="{l - 5}" y="{Y(v) + 4:.0f}" text-anchor="end">{v:g}</text>')
                svg.append(f'<line x1="{l}" y1="{Y(v):.0f}" x2="{w - 20}" y2="{Y(v):.0f}" stroke="#eee"/>')
    svg.append(f'<line x1="{l}" y1="{Y(50):.0f}" x2="{w - 20}" y2="{Y(50):.0f}" stroke="#999" stroke-dasharray="4"/>')
    for i, (name, pts) in enumerate(series.items()):
        c = colors[i % len(colors)]
        d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
        svg.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        svg += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{c}"/>' for x, y in pts]
        svg.append(f'<text x="{l + 10}" y="{34 + 15 * i}" fill="{c}">{name}</text>')
    svg.append("</svg>")
    path.write_text("\n".join(svg) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--servers", help="comma list (default: ours and every peer in peers.tsv)")
    ap.add_argument("--out", default="/tmp/takhin-compare")
    ap.add_argument("--quick", action="store_true", help="one fan-out, 1,000 clients: minutes, for a look")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--summarize-only", action="store_true", help="rebuild summary.md/latency.svg from results.json")
    opts = ap.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if opts.summarize_only:
        summarize(json.loads(results_path.read_text())["results"], out)
        return
    if not opts.no_build:
        sh(["cargo", "build", "--release", "-q", "-p", "takhin-monitor", "-p", "loadgen"], cwd=ROOT)
    if not opts.no_install:
        sh([str(PEERS / "install.sh")], cwd=ROOT)
    rows = servers()
    if opts.servers:
        wanted = opts.servers.split(",")
        rows = [r for r in rows if r[0] in wanted]
    started = time.time()
    snapshot_size = measure_snapshot_size(out)
    print(f"metrics snapshot with 100 topics and 50 groups: {snapshot_size} B", flush=True)
    all_results = {r[0]: [] for r in rows}
    meta = {"snapshot_bytes": snapshot_size, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip(),
            "argv": sys.argv}
    for run in range(opts.runs):
        for row in rows:  # interleaved: run 1 of every server, then run 2, ...
            print(f"== run {run + 1}/{opts.runs}: {row[0]}", flush=True)
            try:
                all_results[row[0]].append(run_server(row, out, opts, snapshot_size))
            except Exception as e:  # a server that fails is reported, the rest goes on
                print(f"!! {row[0]} failed: {e}", flush=True)
            results_path.write_text(json.dumps({"meta": meta, "results": all_results}, indent=1))
    meta["minutes"] = round((time.time() - started) / 60, 1)
    results_path.write_text(json.dumps({"meta": meta, "results": all_results}, indent=1))
    summarize(all_results, out)


if __name__ == "__main__":
    main()
