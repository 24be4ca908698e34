#!/usr/bin/env python3
"""The publish path side by side (issue 16): takhin-monitor against the peer hubs of benches/peers.

    benches/publish_compare.py                                  # every part, every server (~15-20 min)
    benches/publish_compare.py --quick --servers takhin-monitor # a short look at ours (~1.5 min)
    benches/publish_compare.py --only one-publisher,churn --servers takhin-monitor,go-gorilla
    benches/publish_compare.py --summarize-only                 # summary.md again from results.json

Every server runs alone, pinned to CPU 0 (`taskset -c 0`; ours also `--cpu-list 0`, so one shard,
and `--metrics-interval 3600`, so no metrics ticker broadcasts meanwhile), loadgen on CPU 1, 256 B
messages; servers are started, pinned and stopped by PID with benches/compare.py's Server (its
Server, loadgen, servers and raise_limits are imported from it). Each part runs for every
selected server before the next part starts (side by side in one run); a server is started fresh
for each part. The peers must be installed (benches/peers/install.sh); this script only builds
ours (`cargo build --release -p takhin-monitor -p loadgen --example engine_ceiling`, skipped with
--no-build).

Parts (--only; default all):

1. one-publisher: ONE publisher connection, 2,000 subscribers, 1,000 msg/s offered, 10 s. Peers:
   one message per POST to their own publish URL (a peer that cannot reach 1,000 msg/s on one
   connection: what it reached). Ours: plain (one message per request), --batch 10, --batch 10
   --pipeline 4, and through the embedding API (examples/engine_ceiling.rs --rate 1000: the hub on
   CPU 0, its publisher thread on CPU 1; loadgen --listen-only).
2. ramp: the highest rate held with p99 under 50 ms at 1,000 subscribers and under 150 ms at
   10,000, x1.5 per 2 s step. A step holds when p99 is under the target, nothing is lost and the
   publisher reached 90 % of the rate (loadgen's --ramp rule); the first step that does not ends
   the ramp. Ours over HTTP: loadgen --ramp, one connection, --batch 50 (1k) / 20 (10k)
   --pipeline 4 (--http-batch), from 100 / 10 msg/s. Ours through the embedding API: stepped
   here, a fresh example and loadgen --listen-only per step, same rule, from 250 / 10 msg/s
   (--engine-batch messages per publish call, default 1 as benches/engine_ceiling.sh). Peers:
   loadgen --ramp on one connection from 10 / 2 msg/s (compare.py's starts); if what broke the
   ramp was the publisher alone (under 90 % of the rate with p99 and loss fine), again on 4
   connections as compare.py (both kept; the table says which). Rates are capped at 20,000 /
   4,000 msg/s.
3. publish-p99: the publish request's own round trip. loadgen does not report it (its JSON has
   no publish latency), so a small Python client here (one keep-alive connection, a POST every
   50 ms, pinned to CPU 1) times send -> whole answer, first against the idle server (the
   client's own floor), then while loadgen's one publisher sends --busy-rate (100) msg/s to
   10,000 subscribers (ours: --busy-batch/--busy-pipeline, default 1/1). A request that outlasts
   50 ms delays the next ("late" counts them). Ours, and nchan when selected.
4. idle: memory per idle connection at 10,000 connections (a fresh server; loadgen idle, as
   compare.py); churn: `loadgen churn --rate 0 --duration 5s`, handshakes/s (same server after).

--quick: 3 s one-publisher runs, 1 s ramp steps and at most 4 steps a ramp, 5 s publish-p99, 3 s
churn; the same subscriber counts.

Figures. CPU per delivery: the server process tree's CPU time (loadgen --server-pid) over the
measured span, per delivery (ramp steps: read from /proc at each step's end); for the embedding
API the example process's CPU minus its publisher thread's between the first and the last
publish, per frame written. delivered/s: deliveries over the publishing time. Frames per write
(ours only): the deltas of takhin_frames_sent_total and takhin_writes_total of /metrics over the
publishing window, and over each ramp step (loadgen runs with its progress line on a pseudo-
terminal, so this script sees where publishing starts and each step ends). lg%: loadgen's CPU
over the publishing window (per step in ramps) as a share of its one core, from /proc; at 90 %
or more (marked ⚠) loadgen, not the server, may have set the pace, and loadgen's own warnings
are listed at the end. loadgen pays per read, not per frame: a server writing one frame per
write costs it far more than one batching 50. Every loadgen process is pinned to CPU 1, so
--processes would not give it more CPU here.

Results: OUT/results.json (every loadgen report and step), OUT/summary.md (a table per part,
with ratios), logs in OUT. Stdlib only. Every run is bounded in time; every process is stopped
by its own PID.
"""

import argparse
import http.client
import json
import math
import os
import pty
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no benches/__pycache__ from importing compare.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as C  # noqa: E402  (benches/compare.py: servers, Server, loadgen, raise_limits)

ROOT = C.ROOT
LOADGEN = C.LOADGEN
EXAMPLE = ROOT / "target" / "release" / "examples" / "engine_ceiling"
OURS = C.OURS
OUR_EXTRA = ["--metrics-interval", "3600"]
ENGINE_PORT = 18990
SIZE = 256
PARTS = ["one-publisher", "ramp", "publish-p99", "idle", "churn"]
PROBE_RATE = 20.0
# Ramps: subscribers, p99 target (ms), start rate for peers / ours over HTTP / the engine,
# our HTTP batch, a cap on the rate (bounds the time).
RAMPS = [
    dict(subs=1000, p99_ms=50, start_peer=10, start_http=100, start_engine=250, batch=50, cap=20000),
    dict(subs=10000, p99_ms=150, start_peer=2, start_http=10, start_engine=10, batch=20, cap=4000),
]
FACTOR = 1.5


def log(msg):
    print(msg, flush=True)


# ---- our /metrics ----------------------------------------------------------------------------

def scrape(port):
    """takhin_* counters of /metrics on `port` (summed over labels), or None."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        name = parts[0].split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(parts[1])
        except ValueError:
            pass
    out["_t"] = time.monotonic()
    return out


def fpw(a, b):
    """Frames per write between two scrapes or marks (None if either has no scrape)."""
    a, b = (x.get("m", x) if x and "srv" in x else x for x in (a, b))
    if not a or not b:
        return None
    frames = b.get("takhin_frames_sent_total", 0) - a.get("takhin_frames_sent_total", 0)
    writes = b.get("takhin_writes_total", 0) - a.get("takhin_writes_total", 0)
    return frames / writes if writes > 0 else None


# ---- loadgen with its progress line on a pseudo-terminal -------------------------------------

TICK_RE = re.compile(r"^([a-z]+) conns \d+/\d+ .*errors \d+$")
STEP_RE = re.compile(r"^step ([\d.]+)/s: achieved ([\d.]+)/s")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tree_ticks(pid):
    """utime + stime of a process and its descendants, in clock ticks (0 if gone)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += proc_ticks(f"/proc/{p}/stat")
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total


def proc_ticks(path):
    try:
        with open(path) as f:
            stat = f.read()
    except OSError:
        return 0
    f = stat[stat.rfind(")") + 2:].split()
    return int(f[11]) + int(f[12])


HZ = os.sysconf("SC_CLK_TCK")


def mark(lg_pid, srv_pid, metrics_port):
    """The time, loadgen's and the server's CPU ticks and (ours) a /metrics scrape."""
    return {"t": time.monotonic(), "lg": tree_ticks(lg_pid) if lg_pid else 0,
            "srv": tree_ticks(srv_pid) if srv_pid else 0,
            "m": scrape(metrics_port) if metrics_port else None}


def busy_between(a, b):
    """loadgen's CPU between two marks, as a fraction of its one core."""
    if not a or not b or b["t"] <= a["t"]:
        return None
    return (b["lg"] - a["lg"]) / HZ / (b["t"] - a["t"])


def run_loadgen(args, srv=None, timeout=300, on_publishing=None):
    """Runs loadgen on CPU 1 against `srv` with --json; returns (report, marks). Its stderr is a
    pty, so its progress line shows when publishing starts and when each ramp step ends; `marks`
    holds a mark() taken then: [start of publishing, end of step 1, ..., end of step n, the last
    progress tick while publishing or draining, after loadgen's exit (no CPU figures)].
    on_publishing() is called once, when publishing starts."""
    cmd = ["taskset", "-c", "1", str(LOADGEN), *args, "--subscribe-url", srv.ws,
           "--publish-url", srv.publish, "--server-pid", str(srv.proc.pid), "--json"]
    log("+ " + " ".join(cmd[3:]))
    port = srv.metrics_port
    master, slave = pty.openpty()
    marks, state, errs = [], {"connecting": None, "publishing": False, "last": None}, []
    proc = None

    def event(kind, text):
        take = lambda scrape_too: mark(proc.pid, srv.proc.pid, port if scrape_too else None)
        if kind == "connecting":
            state["connecting"] = take(True)
        elif kind in ("publishing", "draining") and state["publishing"]:
            state["last"] = take(False)
        elif kind == "publishing":
            state["publishing"] = True
            marks.append(state["connecting"] or take(True))
            if on_publishing:
                on_publishing()
        elif kind == "step":
            marks.append(take(True))
            log("   " + text)

    def reader():
        buf = ""
        while True:
            try:
                r, _, _ = select.select([master], [], [], 0.5)
                if not r:
                    if proc.poll() is not None:
                        return
                    continue
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk.decode(errors="replace")
            pieces = re.split(r"[\r\n]", buf)
            buf = pieces.pop()
            if TICK_RE.match(ANSI_RE.sub("", buf).strip()):
                pieces.append(buf)  # a whole progress line, not yet followed by the next
                buf = ""
            for p in pieces:
                p = ANSI_RE.sub("", p).strip()
                if not p:
                    continue
                m = TICK_RE.match(p)
                if m:
                    event(m[1], p)
                elif STEP_RE.match(p):
                    event("step", p)
                else:
                    errs.append(p)

    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave,
                                stdin=subprocess.DEVNULL, text=True)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"!! loadgen still running after {timeout} s: stopping it (pid {proc.pid})")
            proc.terminate()  # loadgen stops on SIGTERM and still reports
            try:
                stdout, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        t.join(2)
        os.close(master)
    if state["publishing"]:
        marks.append(state["last"])
        marks.append(mark(None, None, port))
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen gave no report: {stdout[-500:]} {' | '.join(errs[-5:])}")
    report = json.loads(lines[-1])
    report.pop("window", None)
    report["_loadgen_busy_publishing"] = busy_between(marks[0], marks[-2]) if len(marks) >= 2 else None
    log("  -> " + C.summary_line(report) + lg_note(report))
    return report, marks


def lg_busy(r):
    """loadgen's CPU as a fraction of its one core (it runs on CPU 1 only): over the publishing
    window when the progress line gave it, else over its measured time (which then also holds
    the connecting phase's CPU)."""
    b = r.get("_loadgen_busy_publishing")
    if b is not None:
        return b
    d = r.get("duration_s") or 0
    return r.get("loadgen_cpu_s", 0) / d if d > 0 else None


def lg_note(r):
    b = lg_busy(r)
    w = "; ".join(r.get("warnings") or [])
    return (f" lg {b * 100:.0f}%" if b is not None else "") + (f" [{w}]" if w else "")


# ---- servers -----------------------------------------------------------------------------------

def rows_for(opts):
    rows = C.servers()
    if opts.servers:
        wanted = opts.servers.split(",")
        unknown = set(wanted) - {r[0] for r in rows}
        if unknown:
            sys.exit(f"unknown servers: {', '.join(sorted(unknown))} (see benches/peers/peers.tsv)")
        rows = [r for r in rows if r[0] in wanted]
    return rows


def start(row, out):
    name = row[0]
    log(f"   start {name}")
    srv = C.Server(*row, out, OUR_EXTRA if name == OURS else ())
    srv.metrics_port = C.OUR_PORT if name == OURS else None
    return srv


def fanout_figures(r, marks, secs):
    """One fan-out run's figures."""
    lat = r.get("latency_us") or {}
    return {
        "offered": r.get("rate"),
        "achieved": r.get("published", 0) / secs,
        "delivered_per_s": r.get("deliveries", 0) / secs,
        "p50_ms": lat.get("p50", 0) / 1000, "p99_ms": lat.get("p99", 0) / 1000,
        "max_ms": lat.get("max", 0) / 1000,
        "loss": r.get("lost_fraction"),
        "cpu_us_per_delivery": r.get("server_cpu_s_per_million"),
        "server_cpu_pct": r.get("server_cpu_pct"),
        "frames_per_write": fpw(marks[0], marks[-1]) if len(marks) >= 2 else None,
        "connected": r.get("connected"), "publish_errors": r.get("publish_errors"),
        "loadgen_busy": lg_busy(r), "warnings": r.get("warnings") or [],
    }


# ---- the engine through the embedding API (examples/engine_ceiling.rs) -------------------------

def engine_snapshot(pid, lg_pid):
    shard = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tasks = []
    for t in tasks:
        try:
            comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        except OSError:
            continue
        if comm.startswith("takhin-shard-0"):
            shard += proc_ticks(f"/proc/{pid}/task/{t}/stat")
    return {"t": time.monotonic(), "cpu": proc_ticks(f"/proc/{pid}/stat"), "shard": shard,
            "lg": tree_ticks(lg_pid), "m": scrape(ENGINE_PORT)}


def wait_line(path, pattern, proc, seconds):
    end = time.time() + seconds
    rx = re.compile(pattern, re.M)
    while time.time() < end:
        text = path.read_text(errors="replace") if path.exists() else ""
        m = rx.search(text)
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    raise RuntimeError(f"no '{pattern}' in {path}: {path.read_text(errors='replace')[-400:]}")


def engine_run(subs, rate, secs, out, label, p99_ms=None, drain=2, batch=1):
    """One run of the example (hub on CPU 0, publisher thread on CPU 1) and loadgen --listen-only
    (CPU 1), as benches/engine_ceiling.sh run_step; returns the figures."""
    hz = HZ
    logf = out / f"engine-{label}.log"
    cmd = ["taskset", "-c", "0,1", str(EXAMPLE), "--listen", f"127.0.0.1:{ENGINE_PORT}",
           "--shard-cpu", "0", "--publisher-cpu", "1", "--subscribers", str(subs),
           "--rate", f"{rate:g}", "--size", str(SIZE), "--duration", f"{secs}s",
           "--batch", str(batch), "--wait", "60s", "--linger", f"{secs + drain + 30}s"]
    log(f"+ engine_ceiling --subscribers {subs} --rate {rate:g} --duration {secs}s --batch {batch}")
    ex = lg = None
    with open(logf, "w") as lf:
        try:
            ex = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT)
            C.wait_port(ENGINE_PORT, ex)
            lg_json = out / f"engine-{label}.loadgen.json"
            lg_cmd = ["taskset", "-c", "1", str(LOADGEN), "fanout", "--listen-only", "--server",
                      f"127.0.0.1:{ENGINE_PORT}", "--subscribers", str(subs), "--size", str(SIZE),
                      "--duration", f"{secs + drain}s", "--json", "--quiet"]
            with open(lg_json, "w") as jf:
                lg = subprocess.Popen(lg_cmd, stdout=jf, stderr=subprocess.STDOUT)
            wait_line(logf, r"^publishing", ex, 90)
            before = engine_snapshot(ex.pid, lg.pid)
            wait_line(logf, r"^published", ex, secs + 30)
            after = engine_snapshot(ex.pid, lg.pid)
            lg.wait(timeout=secs + drain + 90)
        finally:
            for p in (lg, ex):
                if p is not None and p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
    text = logf.read_text(errors="replace")
    pub = re.search(r"^published (\d+) messages .* in ([\d.]+) s", text, re.M)
    pcpu = re.search(r"thread CPU ([\d.]+) s", text)
    lines = [l for l in lg_json.read_text().splitlines() if l.startswith("{")]
    if not pub or not lines:
        raise RuntimeError(f"engine run {label}: no 'published' line or no loadgen report")
    r = json.loads(lines[-1])
    r.pop("window", None)
    published, elapsed = int(pub[1]), float(pub[2])
    connected, deliveries = r["connected"], r["deliveries"]
    expected = published * connected
    loss = max(0, expected - deliveries) / expected if expected else 1.0
    cpu = (after["cpu"] - before["cpu"]) / hz
    shard = (after["shard"] - before["shard"]) / hz
    pub_cpu = float(pcpu[1]) if pcpu else 0.0
    m0, m1 = before["m"], after["m"]
    frames = (m1["takhin_frames_sent_total"] - m0["takhin_frames_sent_total"]) if m0 and m1 else 0
    lat = r["latency_us"]
    achieved = published / elapsed
    f = {
        "offered": rate, "achieved": achieved, "published": published,
        "delivered_per_s": deliveries / elapsed, "deliveries": deliveries,
        "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
        "loss": loss,
        # The hub's CPU: the process's minus the publisher thread's, per frame written.
        "cpu_us_per_delivery": (cpu - pub_cpu) / frames * 1e6 if frames else None,
        "shard_us_per_frame": shard / frames * 1e6 if frames else None,
        "server_cpu_pct": (cpu - pub_cpu) / max(1e-9, (after["t"] - before["t"])) * 100,
        "frames_per_write": fpw(m0, m1),
        "connected": connected, "loadgen_busy": busy_between(before, after),
        "publisher_thread_cpu_s": pub_cpu, "warnings": r.get("warnings") or [], "report": r,
    }
    r["_loadgen_busy_publishing"] = f["loadgen_busy"]
    if p99_ms is not None:
        f["held"] = (lat["p99"] <= p99_ms * 1000 and loss <= 0 and achieved >= 0.9 * rate
                     and connected > 0)
    log(f"  -> published {published} in {elapsed:.2f} s ({achieved:.0f}/s) to {connected}: "
        f"{deliveries / elapsed / 1e6:.3f} M deliveries/s, p50 {lat['p50'] / 1000:.1f} ms "
        f"p99 {lat['p99'] / 1000:.1f} ms, loss {loss:.4%}, hub {fmt_opt(f['cpu_us_per_delivery'])} "
        f"µs/frame, {fmt_opt(f['frames_per_write'])} frames/write" + lg_note(r)
        + ("" if p99_ms is None else f" -> {'held' if f['held'] else 'broke'}"))
    return f


# ---- 1. one publisher ----------------------------------------------------------------------

def part_one_publisher(row, out, opts):
    name = row[0]
    secs = 3 if opts.quick else 10
    subs = 2000
    base = ["fanout", "--subscribers", str(subs), "--size", str(SIZE), "--rate", "1000",
            "--duration", f"{secs}s", "--publishers", "1", "--drain", "2s"]
    variants = [("plain", [])]
    if name == OURS:
        variants += [("batch10", ["--batch", "10"]), ("batch10-pipeline4", ["--batch", "10", "--pipeline", "4"])]
    res = {}
    srv = start(row, out)
    try:
        for vname, extra in variants:
            log(f"-- one-publisher {name} {vname}")
            r, marks = run_loadgen(base + extra, srv, timeout=secs + 90)
            res[vname] = fanout_figures(r, marks, secs) | {"report": r}
    finally:
        srv.stop()
    if name == OURS:
        log(f"-- one-publisher {name} engine (embedding API)")
        res["engine"] = engine_run(subs, 1000, secs, out, "one-publisher")
    return res


# ---- 2. ramp ---------------------------------------------------------------------------------

def ramp_steps(start, cap, quick):
    n = 4 if quick else 99
    rates, r = [], float(start)
    while r <= cap and len(rates) < n:
        rates.append(r)
        r *= FACTOR
    return rates


def why_broke(step, target_ms):
    why = []
    if step["latency_us"]["p99"] > target_ms * 1000:
        why.append("p99")
    if step["loss"] > 0:
        why.append("loss")
    if step["achieved"] < 0.9 * step["rate"]:
        why.append("publisher")
    return "+".join(why) or "publish errors"


def loadgen_ramp(srv, cfg, start_rate, publishers, opts, extra=()):
    step = "1s" if opts.quick else "2s"
    rates = ramp_steps(start_rate, cfg["cap"], opts.quick)
    args = ["fanout", "--subscribers", str(cfg["subs"]), "--size", str(SIZE), "--ramp",
            "--rate", f"{start_rate:g}", "--ramp-factor", str(FACTOR), "--step", step,
            "--ramp-max", f"{rates[-1] * 1.001:.3f}", "--max-p99", f"{cfg['p99_ms']}ms",
            "--publishers", str(publishers), "--drain", "1s", *extra]
    timeout = len(rates) * (float(step[:-1]) + 1 + 5) + cfg["subs"] / 1000 + 90
    r, marks = run_loadgen(args, srv, timeout=timeout)
    steps = []
    for i, s in enumerate(r.get("steps") or []):
        steps.append({
            "offered": s["rate"], "achieved": s["achieved"],
            "delivered_per_s": s["deliveries"] / float(step[:-1]),
            "p50_ms": s["latency_us"]["p50"] / 1000, "p99_ms": s["latency_us"]["p99"] / 1000,
            "max_ms": s["latency_us"]["max"] / 1000, "loss": s["loss"], "held": s["held"],
            "frames_per_write": fpw(marks[i], marks[i + 1]) if len(marks) > i + 1 else None,
            "why": None if s["held"] else why_broke(s, cfg["p99_ms"]),
        })
        if len(marks) > i + 1 and marks[i + 1]:
            a, b = marks[i], marks[i + 1]
            steps[-1]["loadgen_busy"] = busy_between(a, b)
            if s["deliveries"]:
                steps[-1]["cpu_us_per_delivery"] = (b["srv"] - a["srv"]) / HZ / s["deliveries"] * 1e6
    last = steps[-1] if steps else None
    return {
        "subscribers": cfg["subs"], "p99_target_ms": cfg["p99_ms"], "publishers": publishers,
        "max_rate_held": r.get("max_rate_held"),
        "ended": (last["why"] if last and not last["held"] else "cap") if last else "no steps",
        "steps": steps, "connected": r.get("connected"), "loadgen_busy": lg_busy(r),
        "warnings": r.get("warnings") or [],
        "cpu_us_per_delivery": r.get("server_cpu_s_per_million"), "report": r,
    }


def part_ramp(row, out, opts):
    name = row[0]
    res = {}
    srv = start(row, out)
    try:
        for cfg in RAMPS:
            k = f"{cfg['subs'] // 1000}k"
            if name == OURS:
                batch = opts.http_batch or cfg["batch"]
                log(f"-- ramp {name} http {k} (batch {batch}, pipeline 4, one connection)")
                x = loadgen_ramp(srv, cfg, cfg["start_http"], 1, opts,
                                 ["--batch", str(batch), "--pipeline", "4"])
                x |= {"batch": batch, "pipeline": 4}
                res[f"http-{k}"] = x
            else:
                log(f"-- ramp {name} {k} (one connection)")
                x = loadgen_ramp(srv, cfg, cfg["start_peer"], 1, opts)
                if x["ended"] == "publisher":
                    log(f"   one connection could not keep up: again with 4 (as compare.py)")
                    x4 = loadgen_ramp(srv, cfg, cfg["start_peer"], 4, opts)
                    x4["one_connection"] = {kk: x[kk] for kk in ("max_rate_held", "ended", "steps")}
                    x = x4
                res[k] = x
    finally:
        srv.stop()
    if name == OURS:
        secs = 1 if opts.quick else 2
        for cfg in RAMPS:
            k = f"{cfg['subs'] // 1000}k"
            log(f"-- ramp {name} engine {k} (embedding API, a fresh hub per step)")
            steps, held = [], None
            for rate in ramp_steps(cfg["start_engine"], cfg["cap"], opts.quick):
                s = engine_run(cfg["subs"], rate, secs, out, f"ramp-{k}-{rate:.0f}",
                               p99_ms=cfg["p99_ms"], drain=1, batch=opts.engine_batch)
                s.pop("report", None)
                s["why"] = None if s["held"] else why_broke(
                    {"latency_us": {"p99": s["p99_ms"] * 1000}, "loss": s["loss"],
                     "achieved": s["achieved"], "rate": rate}, cfg["p99_ms"])
                steps.append(s)
                if not s["held"]:
                    break
                held = s["achieved"]
            last = steps[-1] if steps else None
            res[f"engine-{k}"] = {
                "subscribers": cfg["subs"], "p99_target_ms": cfg["p99_ms"], "publishers": 0,
                "batch": opts.engine_batch, "max_rate_held": held,
                "ended": (last["why"] if last and not last["held"] else "cap") if last else "no steps",
                "steps": steps}
    return res


# ---- 3. the publish request's own latency ------------------------------------------------------

def probe_main(url, rate, secs, fmt):
    """POSTs at a fixed `rate` on one keep-alive connection for `secs`; prints the round trips."""
    u = urllib.parse.urlsplit(url)
    lat, errors, late = [], {}, 0
    conn = None
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i / rate
        if due > t0 + secs:
            break
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        elif now - due > 1 / rate:
            late += 1
        body = (json.dumps({"type": "probe", "data": {"n": i}}) if fmt == "hub"
                else json.dumps({"probe": i}))
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = time.perf_counter_ns()
            conn.request("POST", u.path or "/", body=body,
                         headers={"Content-Type": "application/json"})
            resp = resp_body = None
            resp = conn.getresponse()
            resp_body = resp.read()
            e = time.perf_counter_ns()
            if 200 <= resp.status < 300:
                lat.append((e - s) / 1000)
            else:
                k = f"HTTP {resp.status}"
                errors[k] = errors.get(k, 0) + 1
        except (OSError, http.client.HTTPException) as ex:
            k = type(ex).__name__
            errors[k] = errors.get(k, 0) + 1
            if conn is not None:
                conn.close()
            conn = None
        i += 1
    if conn is not None:
        conn.close()
    print(json.dumps({"samples": len(lat), "sent": i, "late": late, "errors": errors,
                      "latency_us": pct(lat)}), flush=True)


def pct(xs):
    if not xs:
        return {}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]
    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1],
            "mean": statistics.fmean(s), "count": len(s)}


def start_probe(url, secs, fmt, out_path):
    cmd = ["taskset", "-c", "1", sys.executable, str(Path(__file__).resolve()), "--probe", url,
           str(PROBE_RATE), f"{secs:g}", fmt]
    f = open(out_path, "w")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), f


def finish_probe(p, f, out_path, secs):
    try:
        p.wait(timeout=secs + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        f.close()
    lines = [l for l in out_path.read_text().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": out_path.read_text()[-300:]}


def probe_line(x):
    l = x.get("latency_us") or {}
    if not l:
        return f"no samples ({x})"
    return (f"{l['count']} requests: p50 {l['p50'] / 1000:.2f} ms, p99 {l['p99'] / 1000:.2f} ms, "
            f"max {l['max'] / 1000:.2f} ms; errors {x.get('errors')}, late {x.get('late')}")


def part_publish_p99(row, out, opts):
    name = row[0]
    fmt = "hub" if name == OURS else "raw"
    idle_s = 2 if opts.quick else 3
    secs = 5 if opts.quick else 15
    subs, rate = 10000, opts.busy_rate
    res = {}
    srv = start(row, out)
    try:
        log(f"-- publish-p99 {name}: the probe alone ({PROBE_RATE:g}/s for {idle_s} s, no subscribers)")
        path = out / f"probe-{name}-idle.json"
        p, f = start_probe(srv.publish, idle_s, fmt, path)
        res["idle"] = finish_probe(p, f, path, idle_s)
        log("  -> " + probe_line(res["idle"]))
        log(f"-- publish-p99 {name}: the probe while {rate:g} msg/s fan out to {subs} subscribers")
        path = out / f"probe-{name}-busy.json"
        probe = {}

        def go():
            probe["p"] = start_probe(srv.publish, max(1, secs - 0.5), fmt, path)

        try:
            r, marks = run_loadgen(
                ["fanout", "--subscribers", str(subs), "--size", str(SIZE), "--rate", f"{rate:g}",
                 "--duration", f"{secs}s", "--publishers", "1", "--drain", "2s",
                 *(["--batch", str(opts.busy_batch), "--pipeline", str(opts.busy_pipeline)]
                   if name == OURS else [])],
                srv, timeout=secs + 120, on_publishing=go)
        finally:
            if "p" in probe:
                res["busy"] = finish_probe(*probe["p"], path, secs)
        res["fanout"] = fanout_figures(r, marks, secs) | {"report": r}
        log("  -> probe: " + probe_line(res.get("busy") or {}))
    finally:
        srv.stop()
    return res


# ---- 4. idle memory, churn ---------------------------------------------------------------------

def part_idle_churn(row, out, opts, parts):
    res = {}
    srv = start(row, out)
    try:
        if "idle" in parts:
            log(f"-- idle {row[0]}: 10,000 connections")
            res["idle"] = C.loadgen(srv, ["idle", "--subscribers", "10000", "--duration", "3s"],
                                    timeout=180)
        if "churn" in parts:
            log(f"-- churn {row[0]}")
            res["churn"] = C.loadgen(srv, ["churn", "--rate", "0", "--duration",
                                           "3s" if opts.quick else "5s"], timeout=120)
    finally:
        srv.stop()
    return res


# ---- summary -----------------------------------------------------------------------------------

def fmt_opt(v, nd=2):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (int, float)) and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def ms(v):
    return fmt_opt(v, 1) if v is not None and v < 100 else fmt_opt(v)


def busy(f):
    b = f.get("loadgen_busy")
    return "–" if b is None else f"{b * 100:.0f}%" + (" ⚠" if b >= 0.9 else "")


ONE_PATHS = [("plain", "HTTP, one message per request"), ("batch10", "HTTP, --batch 10"),
             ("batch10-pipeline4", "HTTP, --batch 10 --pipeline 4"), ("engine", "embedding API")]


def summary_one(res):
    rows = ["## 1. One publisher: 2,000 subscribers, 1,000 msg/s offered, 256 B", "",
            "One publisher connection (ours through the embedding API: a publisher thread). "
            "delivered/s is deliveries over the publishing time; CPU per delivery is the server's "
            "(the embedding API: the hub process minus its publisher thread, per frame written); "
            "lg% is loadgen's CPU (⚠: at 90 % or more loadgen may have set the pace).", "",
            "| server | path | msg/s reached | delivered/s | p50 ms | p99 ms | loss | CPU µs/delivery | frames/write | lg% |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    peers_cpu = []
    for name, x in res.items():
        for key, title in ONE_PATHS:
            f = x.get(key)
            if not f:
                continue
            if name != OURS and f.get("cpu_us_per_delivery"):
                peers_cpu.append((f["cpu_us_per_delivery"], name))
            rows.append(f"| {name} | {title if name == OURS else 'HTTP, one message per request'} | "
                        f"{fmt_opt(f['achieved'])} | {fmt_opt(f['delivered_per_s'])} | "
                        f"{ms(f['p50_ms'])} | {ms(f['p99_ms'])} | {fmt_opt((f.get('loss') or 0) * 100, 3)} % | "
                        f"{fmt_opt(f['cpu_us_per_delivery'])} | {fmt_opt(f.get('frames_per_write'), 1)} | {busy(f)} |")
    ours = res.get(OURS, {})
    if peers_cpu and ours:
        best, bname = min(peers_cpu)
        rows += ["", f"CPU per delivery, cheapest peer ({bname}, {best:.2f} µs) / ours:", "",
                 "| our path | ours µs | ratio |", "|---|---:|---:|"]
        for key, title in ONE_PATHS:
            f = ours.get(key)
            if f and f.get("cpu_us_per_delivery"):
                rows.append(f"| {title} | {f['cpu_us_per_delivery']:.2f} | "
                            f"{best / f['cpu_us_per_delivery']:.1f}× |")
    return rows


def ramp_label(name, key, x):
    if name != OURS:
        return f"HTTP, one message per request, {x['publishers']} connection{'s' if x['publishers'] > 1 else ''}"
    if key.startswith("engine"):
        return f"embedding API (batch {x.get('batch', 1)})"
    return f"HTTP, --batch {x.get('batch')} --pipeline {x.get('pipeline')}, one connection"


def summary_ramp(res):
    rows = ["## 2. Ramp: the highest rate held (p99 < 50 ms at 1,000 subscribers, < 150 ms at 10,000)", "",
            f"×{FACTOR} per step; a step holds with p99 under the target, no loss and the publisher "
            "within 90 % of the rate (loadgen's --ramp rule; the embedding API stepped by the script "
            "with the same rule). `ended`: why the last step broke (cap: the script's ceiling held).", ""]
    for cfg in RAMPS:
        k = f"{cfg['subs'] // 1000}k"
        rows += [f"### {cfg['subs']:,} subscribers, p99 < {cfg['p99_ms']} ms", "",
                 "| server | path | highest rate held (msg/s) | deliveries/s at it | ended | lg% max |",
                 "|---|---|---:|---:|---|---:|"]
        best_peer, ours_rates = None, []
        for name, x in res.items():
            for key in (f"http-{k}", f"engine-{k}", k):
                r = x.get(key)
                if not r:
                    continue
                held = r.get("max_rate_held")
                ended = r["ended"]
                one = r.get("one_connection")
                if one:
                    top = one["steps"][-1]["offered"] if one.get("steps") else None
                    ended += (f" (on 1 connection: held {fmt_opt(one.get('max_rate_held'))}, then the "
                              f"publisher fell short at {fmt_opt(top)} msg/s)")
                per_step = [s["loadgen_busy"] for s in r["steps"] if s.get("loadgen_busy") is not None]
                lgmax = max(per_step) if per_step else r.get("loadgen_busy")
                ge = "≥ " if held and r["ended"] == "cap" else ""
                rows.append(f"| {name} | {ramp_label(name, key, r)} | {ge}{fmt_opt(held) if held else 'none'} | "
                            f"{fmt_opt(held * cfg['subs']) if held else '–'} | {ended} | "
                            f"{busy({'loadgen_busy': lgmax})} |")
                if name == OURS:
                    ours_rates.append((ramp_label(name, key, r), held, ge))
                elif held and (best_peer is None or held > best_peer[0]):
                    best_peer = (held, name)
        if best_peer and ours_rates:
            rows += ["", f"Ours / the best peer ({best_peer[1]}, {best_peer[0]:.0f} msg/s): " + "; ".join(
                f"{t}: {g}{h / best_peer[0]:.1f}×" for t, h, g in ours_rates if h)]
        rows += ["", "Steps:", "",
                 "| server | path | offered | achieved | delivered/s | p50 ms | p99 ms | loss | frames/write | CPU µs/delivery | lg% | |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, x in res.items():
            for key in (f"http-{k}", f"engine-{k}", k):
                r = x.get(key)
                if not r:
                    continue
                for s in r["steps"]:
                    rows.append(f"| {name} | {ramp_label(name, key, r)} | {fmt_opt(s['offered'])} | "
                                f"{fmt_opt(s['achieved'])} | {fmt_opt(s['delivered_per_s'])} | "
                                f"{ms(s['p50_ms'])} | {ms(s['p99_ms'])} | {fmt_opt(s['loss'] * 100, 3)} % | "
                                f"{fmt_opt(s.get('frames_per_write'), 1)} | {fmt_opt(s.get('cpu_us_per_delivery'))} | "
                                f"{busy(s)} | {'held' if s['held'] else 'broke: ' + s['why']} |")
        rows.append("")
    return rows


def summary_p99(res):
    rows = ["## 3. The publish request's own round trip while the shard fans out", "",
            f"A Python client (CPU 1, one keep-alive connection, {PROBE_RATE:g} POSTs/s) times each "
            "request from send to the whole answer; first against the idle server, then while "
            "loadgen's one publisher sends 100 msg/s to 10,000 subscribers. loadgen itself does not "
            "report its publish round trips.", "",
            "| server | idle: p50 / p99 / max ms | busy: p50 / p99 / max ms | busy: requests (errors, late) | "
            "fan-out msg/s reached | delivered/s | fan-out p99 ms | server CPU % | lg% |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, x in res.items():
        cell = lambda p: " / ".join(ms(p["latency_us"][q] / 1000) for q in ("p50", "p99", "max")) \
            if p and p.get("latency_us") else "–"
        b, f = x.get("busy") or {}, x.get("fanout") or {}
        rows.append(f"| {name} | {cell(x.get('idle'))} | {cell(b)} | "
                    f"{(b.get('latency_us') or {}).get('count', 0)} ({sum((b.get('errors') or {}).values())}, "
                    f"{b.get('late', '–')}) | {fmt_opt(f.get('achieved'))} | {fmt_opt(f.get('delivered_per_s'))} | {ms(f.get('p99_ms'))} | "
                    f"{fmt_opt(f.get('server_cpu_pct'), 0)} | {busy(f)} |")
    return rows


def summary_idle_churn(res):
    rows = ["## 4. Idle memory (10,000 connections) and churn", "",
            "| server | idle B/conn | connected | churn handshakes/s | churn failures |",
            "|---|---:|---:|---:|---:|"]
    for name, x in res.items():
        i, c = x.get("idle") or {}, x.get("churn") or {}
        rows.append(f"| {name} | {fmt_opt(i.get('server_rss_per_conn'))} | {i.get('connected', '–')} | "
                    f"{fmt_opt(c.get('handshakes_per_sec'))} | "
                    f"{sum((c.get('errors') or {}).values()) if c else '–'} |")
    ours = res.get(OURS) or {}
    om = (ours.get("idle") or {}).get("server_rss_per_conn")
    oc = (ours.get("churn") or {}).get("handshakes_per_sec")
    if ours:
        rows += ["", "Ours against each peer (memory: theirs / ours; churn: ours / theirs; higher is better for us):", "",
                 "| peer | idle memory | churn |", "|---|---:|---:|"]
        for name, x in res.items():
            if name == OURS:
                continue
            pm = (x.get("idle") or {}).get("server_rss_per_conn")
            pc = (x.get("churn") or {}).get("handshakes_per_sec")
            rows.append(f"| {name} | {f'{pm / om:.1f}×' if pm and om else '–'} | "
                        f"{f'{oc / pc:.1f}×' if pc and oc else '–'} |")
    return rows


def warnings_of(results):
    out = []
    for part, per in results.items():
        for name, x in per.items():
            stack = [(f"{part}/{name}", x)]
            while stack:
                where, v = stack.pop()
                if isinstance(v, dict):
                    for w in v.get("warnings") or []:
                        out.append(f"- {where}: {w}")
                    for k, vv in v.items():
                        if k not in ("report", "warnings"):
                            stack.append((f"{where}/{k}", vv))
                elif isinstance(v, list):
                    stack += [(f"{where}[{i}]", vv) for i, vv in enumerate(v)]
    return sorted(set(out))


def summarize(data, out):
    results, meta = data["results"], data["meta"]
    lines = ["# The publish path side by side (benches/publish_compare.py)", "",
             f"{meta.get('started')}, commit {meta.get('commit')}, {meta.get('minutes', '?')} min; "
             f"`{' '.join(meta.get('argv', []))}`. Every server alone on CPU 0 (ours: --cpu-list 0, "
             "--metrics-interval 3600), loadgen on CPU 1, 256 B messages, one run.", ""]
    if results.get("one-publisher"):
        lines += summary_one(results["one-publisher"]) + [""]
    if results.get("ramp"):
        lines += summary_ramp(results["ramp"]) + [""]
    if results.get("publish-p99"):
        lines += summary_p99(results["publish-p99"]) + [""]
    if results.get("idle-churn"):
        lines += summary_idle_churn(results["idle-churn"]) + [""]
    if data.get("failures"):
        lines += ["## Failures", ""] + [f"- {f}" for f in data["failures"]] + [""]
    w = warnings_of(results)
    if w:
        lines += ["## loadgen's warnings", ""] + w + [""]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


# ---- main --------------------------------------------------------------------------------------

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        url, rate, secs, fmt = sys.argv[2:6]
        probe_main(url, float(rate), float(secs), fmt)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", help="comma list (default: ours and every peer in peers.tsv)")
    ap.add_argument("--only", help=f"comma list of parts: {','.join(PARTS)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="short runs (3 s one-publisher, 1 s ramp steps, at most 4 steps, 5 s publish-p99)")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "publish_compare"))
    ap.add_argument("--no-build", action="store_true", help="use the binaries in target/release as they are")
    ap.add_argument("--http-batch", type=int, help="our HTTP ramp's --batch (default: 50 at 1k, 20 at 10k)")
    ap.add_argument("--engine-batch", type=int, default=1, help="the embedding API's messages per call")
    ap.add_argument("--busy-rate", type=float, default=100.0, help="publish-p99: loadgen's msg/s to 10k")
    ap.add_argument("--busy-batch", type=int, default=1, help="publish-p99: loadgen's --batch (ours)")
    ap.add_argument("--busy-pipeline", type=int, default=1, help="publish-p99: loadgen's --pipeline (ours)")
    ap.add_argument("--summarize-only", action="store_true", help="summary.md again from results.json")
    opts = ap.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if opts.summarize_only:
        summarize(json.loads(results_path.read_text()), out)
        return
    parts = opts.only.split(",") if opts.only else PARTS
    bad = set(parts) - set(PARTS)
    if bad:
        sys.exit(f"unknown parts: {', '.join(sorted(bad))} (known: {', '.join(PARTS)})")
    rows = rows_for(opts)
    if not opts.no_build:
        C.sh(["cargo", "build", "--release", "-q", "-p", "takhin-monitor", "-p", "loadgen",
              "--example", "engine_ceiling"], cwd=ROOT)
    for b in (LOADGEN, C.SERVER, EXAMPLE):
        if not b.exists():
            sys.exit(f"missing {b}: cargo build --release -p takhin-monitor -p loadgen --example engine_ceiling")
    C.raise_limits()  # -Sn and -Sl to the hard limits, inherited by every child (glommio locks memory)
    if len(os.sched_getaffinity(0)) > 1 and 1 in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {1})  # this script (and its /metrics scrapes) stays off CPU 0
    started = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip(),
            "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                         cwd=ROOT, capture_output=True, text=True).stdout.strip()),
            "quick": opts.quick, "servers": [r[0] for r in rows], "parts": parts}
    data = {"meta": meta, "results": {}, "failures": []}

    def save():
        meta["minutes"] = round((time.time() - started) / 60, 1)
        results_path.write_text(json.dumps(data, indent=1))

    plan = [(p, fn) for p, fn in [
        ("one-publisher", lambda row: part_one_publisher(row, out, opts)),
        ("ramp", lambda row: part_ramp(row, out, opts)),
        ("publish-p99", lambda row: part_publish_p99(row, out, opts)),
        ("idle-churn", lambda row: part_idle_churn(row, out, opts, parts)),
    ] if (p in parts if p != "idle-churn" else ("idle" in parts or "churn" in parts))]
    for part, fn in plan:
        targets = rows if part != "publish-p99" else [r for r in rows if r[0] in (OURS, "nchan")]
        if not targets:
            log(f"== {part}: none of the selected servers (ours and nchan only)")
        for row in targets:
            log(f"== {part}: {row[0]} ({(time.time() - started) / 60:.1f} min in)")
            try:
                data["results"].setdefault(part, {})[row[0]] = fn(row)
            except Exception as e:  # a server that fails is reported, the rest goes on
                log(f"!! {part} {row[0]} failed: {e!r}")
                data["failures"].append(f"{part} {row[0]}: {e!r}")
            save()
    save()
    log(f"== done in {meta['minutes']} min; results in {out}")
    summarize(data, out)


if __name__ == "__main__":
    main()
