#!/usr/bin/env python3
"""Memory of the broadcast history (issue 15) with many connected clients.

Against a running server (one core, a long metrics interval so that no snapshot is measured):

1. resident memory (VmRSS) before and after opening N idle WebSocket clients (as
   benches/idle_memory.py does): the cost per client;
2. M broadcasts of S bytes published through `POST /api/monitoring/publish` on a channel no
   client subscribes to (`topic:history-fill`), so that they cost nothing to deliver and only
   fill the history: VmRSS and the server's own `takhin_history_frames` / `takhin_history_bytes`
   after, the cost per broadcast held;
3. M more: the history is full and drops its oldest, VmRSS must stay where it was;
4. the clients close: what is left is the history.

    python3 benches/history_memory.py --pid PID --port PORT [--connections 10000]
        [--broadcasts 40000] [--size 256]

Python standard library only.
"""
import argparse
import http.client
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from idle_memory import open_idle, pump, rss_kib  # noqa: E402


def metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"no {name} in /metrics")


def publish(port, n, size, sel):
    """n broadcasts of about `size` bytes of data on topic:history-fill, over one keep-alive
    connection; the idle clients' sockets are read between batches."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    note = "x" * max(0, size - 40)
    for i in range(n):
        body = json.dumps({"type": "fill", "channel": "topic:history-fill",
                           "data": {"i": i, "note": note}})
        c.request("POST", "/api/monitoring/publish", body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 202:
            raise SystemExit(f"publish answered {r.status}")
        if i % 1000 == 999:
            pump(sel, 0)
    c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, required=True, help="server process id")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", "-n", type=int, default=10000)
    ap.add_argument("--broadcasts", "-m", type=int, default=40000)
    ap.add_argument("--size", type=int, default=256, help="bytes of data per broadcast")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds to settle before a reading")
    args = ap.parse_args()

    r0 = rss_kib(args.pid)
    sel, socks = open_idle("127.0.0.1", args.port, "/api/monitoring/ws", args.connections)
    pump(sel, args.hold)
    r1 = rss_kib(args.pid)
    print(f"clients {args.connections}: rss {r0} -> {r1} KiB, "
          f"{(r1 - r0) * 1024 / args.connections:.0f} B per client")

    started = time.monotonic()
    publish(args.port, args.broadcasts, args.size, sel)
    took = time.monotonic() - started
    pump(sel, args.hold)
    r2 = rss_kib(args.pid)
    frames = metric(args.port, "takhin_history_frames")
    held = metric(args.port, "takhin_history_bytes")
    print(f"published {args.broadcasts} in {took:.1f} s: history {frames:.0f} frames, "
          f"{held / 1024:.0f} KiB of frames ({held / max(frames, 1):.0f} B each); "
          f"rss {r1} -> {r2} KiB, {(r2 - r1) * 1024 / max(frames, 1):.0f} B per broadcast held")

    publish(args.port, args.broadcasts, args.size, sel)
    pump(sel, args.hold)
    r3 = rss_kib(args.pid)
    frames3 = metric(args.port, "takhin_history_frames")
    print(f"published {args.broadcasts} more: history {frames3:.0f} frames; rss {r2} -> {r3} KiB "
          f"({(r3 - r2):+d} KiB)")

    for s in socks:
        s.close()
    time.sleep(args.hold)
    r4 = rss_kib(args.pid)
    print(f"clients closed: rss {r3} -> {r4} KiB")


if __name__ == "__main__":
    main()
