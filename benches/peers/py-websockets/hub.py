#!/usr/bin/env python3
"""Python `websockets` fan-out hub, same interface as takhin-monitor.

Why a fair peer: `websockets` is the reference asyncio WebSocket library, and its
`broadcast()` is the library's own documented fan-out path (writes to every open connection
without awaiting, one task per connection for reading). It is what a Python shop would write.

  WS subscribe: ws://127.0.0.1:$PORT/api/monitoring/ws          (PORT default 18083)
  Publish:      POST http://127.0.0.1:$PUB_PORT/publish          (PUB_PORT default PORT+100: the
                websockets server only speaks GET/Upgrade, so HTTP publishing uses a side port)
                or any frame sent by any WS client (broadcast to all, sender included)
  GET /healthz  on PUB_PORT: {"ok","subscribers","published"}
  Slow clients: broadcast() SKIPS a connection whose write buffer is above its high-water mark
  for that message (websockets' documented policy); it is not disconnected.
  Compression off (COMPRESSION=deflate turns it on), max_size 512 KiB, default 20 s pings.
"""
import asyncio, json, os, signal
import websockets
from websockets.asyncio.server import serve, broadcast

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "18083"))
PUB_PORT = int(os.environ.get("PUB_PORT", str(PORT + 100)))
WS_PATH = os.environ.get("WS_PATH", "/api/monitoring/ws")
COMPRESSION = "deflate" if os.environ.get("COMPRESSION") == "deflate" else None

CLIENTS = set()
published = 0


def publish(msg):
    global published
    published += 1
    broadcast(CLIENTS, msg)
    return len(CLIENTS)


async def ws_handler(ws):
    if ws.request.path.split("?")[0] != WS_PATH:
        await ws.close(1008, "wrong path")
        return
    CLIENTS.add(ws)
    try:
        async for msg in ws:
            publish(msg)
    except websockets.ConnectionClosed:
        pass
    finally:
        CLIENTS.discard(ws)


async def http_handler(reader, writer):
    """Tiny HTTP/1.1 endpoint (keep-alive): POST /publish (body = message), GET /healthz."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
            body = await reader.readexactly(int(hdrs.get("content-length", "0")))
            if method == "POST" and target.split("?")[0] == "/publish":
                n = publish(body.decode("utf-8"))
                status, out = "200 OK", json.dumps({"subscribers": n})
            elif target == "/healthz":
                status, out = "200 OK", json.dumps({"ok": True, "subscribers": len(CLIENTS), "published": published})
            else:
                status, out = "404 Not Found", "{}"
            out = (out + "\n").encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(out)}\r\n\r\n".encode() + out)
            await writer.drain()
            if hdrs.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, stop.set_result, None)
    async with serve(ws_handler, HOST, PORT, compression=COMPRESSION, max_size=512 * 1024, backlog=65535):
        pub = await asyncio.start_server(http_handler, HOST, PUB_PORT, backlog=1024)
        print(f"py-websockets hub (websockets {websockets.__version__}) on ws://{HOST}:{PORT}{WS_PATH}, "
              f"POST http://{HOST}:{PUB_PORT}/publish", flush=True)
        await stop
        pub.close()

if __name__ == "__main__":
    asyncio.run(main())
