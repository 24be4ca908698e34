#!/usr/bin/env python3
"""Fan-out smoke client: N subscribers, one message published by HTTP POST, each must receive
exactly that message as one text frame (and nothing else within a short grace period).

  $PEERS_STATE/venv/bin/python smoke_client.py WS_URL PUBLISH_URL [--subs 2] [--timeout 5]

Needs the `websockets` package from the peers venv (install.sh python). Exit 0 on success.
"""
import argparse, asyncio, json, sys, time, urllib.request, uuid
from websockets.asyncio.client import connect


def http_post(url, body):
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, r.read().decode(errors="replace").strip()


async def check(i, ws, msg, timeout):
    try:
        got = await asyncio.wait_for(ws.recv(), timeout)
    except Exception as e:
        return f"sub{i}: FAILED {type(e).__name__}: {e}"
    if not isinstance(got, str):
        return f"sub{i}: FAILED got a binary frame ({len(got)} bytes)"
    if got != msg:
        return f"sub{i}: FAILED got {got[:80]!r}"
    try:  # exactly one frame: nothing more may arrive
        extra = await asyncio.wait_for(ws.recv(), 0.3)
        return f"sub{i}: FAILED extra frame {extra[:80]!r}"
    except asyncio.TimeoutError:
        return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ws_url"); ap.add_argument("publish_url")
    ap.add_argument("--subs", type=int, default=2); ap.add_argument("--timeout", type=float, default=5)
    a = ap.parse_args()
    msg = json.dumps({"type": "smoke", "id": str(uuid.uuid4()), "ts": time.time(), "utf8": "héllo ✓"})
    subs = [await connect(a.ws_url, max_size=None, open_timeout=5) for _ in range(a.subs)]
    await asyncio.sleep(0.3)  # let the hub finish registering the subscribers
    status, body = await asyncio.to_thread(http_post, a.publish_url, msg)
    errors = [e for e in await asyncio.gather(*(check(i, s, msg, a.timeout) for i, s in enumerate(subs))) if e]
    for s in subs:
        await s.close()
    print(f"POST -> {status} {body[:60]!r}; {a.subs - len(errors)}/{a.subs} subscribers got exactly the message")
    for e in errors:
        print(e)
    return 1 if errors or status >= 300 else 0

sys.exit(asyncio.run(main()))
