#!/usr/bin/env python3
"""Resident memory per idle WebSocket connection of a running server.

Opens N WebSocket connections (handshake only, then idle: the clients never send, and read
whatever the server pushes so socket buffers do not grow), and reports the server's resident
memory (VmRSS from /proc/PID/status) before and after. Python standard library only.

    python3 benches/idle_memory.py --pid PID --port PORT [--connections 5000] [--hold 3]
"""
import argparse
import base64
import os
import selectors
import socket
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def open_idle(host, port, path, n):
    """N WebSocket connections, handshake done, non-blocking and registered for reading."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode()
        )
        socks.append(s)
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("server closed a connection during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"handshake refused: {head[:40]!r}")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    return sel, socks


def pump(sel, seconds):
    """Reads whatever the server pushes to the idle connections for `seconds` (at least one
    pass), so that socket buffers do not grow."""
    deadline = time.monotonic() + seconds
    while True:
        for key, _ in sel.select(timeout=0.1 if seconds else 0):
            try:
                key.fileobj.recv(65536)
            except BlockingIOError:
                pass
        if time.monotonic() >= deadline:
            return


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, required=True, help="server process id")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/api/monitoring/ws")
    ap.add_argument("--connections", "-n", type=int, default=5000)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds to hold before measuring")
    args = ap.parse_args()

    before = rss_kib(args.pid)
    sel, socks = open_idle(args.host, args.port, args.path, args.connections)
    pump(sel, args.hold)
    after = rss_kib(args.pid)
    per = (after - before) * 1024 / args.connections
    print(f"connections {args.connections}  rss before {before} KiB  after {after} KiB  "
          f"per connection {per:.0f} B")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
