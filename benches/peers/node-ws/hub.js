'use strict';
// Node.js `ws` fan-out hub, same interface as takhin-monitor.
//
// Why a fair peer: `ws` is the WebSocket library most Node servers use, with its optional native
// `bufferutil` masking helper installed. The default mode even frames each message only ONCE and
// writes the same Buffer to every socket, the trick our hub relies on, so the comparison is not
// against a strawman; HUB_MODE=send is the plain loop from the ws README for reference.
//
//   WS subscribe:  ws://127.0.0.1:$PORT/api/monitoring/ws            (PORT default 18082)
//   Publish:       POST http://127.0.0.1:$PORT/publish (body = message, sent as one text frame)
//                  or any text/binary frame from any client (broadcast to all, sender included)
//   GET /healthz   {"ok","subscribers","published","mode"}
//   HUB_MODE=preframe (default): frame built once with ws's WebSocket.Sender.frame(), the same
//                  Buffer socket.write()n to every client; falls back to ws.send() when that
//                  client's Sender has something queued, to keep frame order.
//   HUB_MODE=send: client.send(data) per client (ws frames it again per client).
//   MAX_BUFFERED (bytes, default 64 MiB): a client whose unsent backlog exceeds it is terminated.
//   perMessageDeflate off, maxPayload 512 KiB.
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const PORT = +(process.env.PORT || 18082);
const HOST = process.env.HOST || '127.0.0.1';
const WS_PATH = process.env.WS_PATH || '/api/monitoring/ws';
const MODE = process.env.HUB_MODE || 'preframe';
const MAX_BUFFERED = +(process.env.MAX_BUFFERED || 64 * 1024 * 1024);
if (!['preframe', 'send'].includes(MODE)) throw new Error('HUB_MODE must be preframe|send');

let published = 0;

function broadcast(data, isBinary) {
  published++;
  const clients = wss.clients;
  if (MODE === 'send') {
    for (const c of clients) {
      if (c.readyState !== WebSocket.OPEN) continue;
      if (c.bufferedAmount > MAX_BUFFERED) { c.terminate(); continue; }
      c.send(data, { binary: isBinary });
    }
    return clients.size;
  }
  const payload = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const frame = Buffer.concat(WebSocket.Sender.frame(payload, {
    fin: true, rsv1: false, mask: false, readOnly: false, opcode: isBinary ? 2 : 1,
  }));
  for (const c of clients) {
    if (c.readyState !== WebSocket.OPEN) continue;
    if (c.bufferedAmount > MAX_BUFFERED) { c.terminate(); continue; }
    const s = c._sender;
    if (s._state === 0 && s._queue.length === 0) c._socket.write(frame);   // pre-framed fast path
    else c.send(payload, { binary: isBinary });                            // keep order behind queued frames
  }
  return clients.size;
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.split('?')[0] === '/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const n = broadcast(Buffer.concat(chunks), false);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ subscribers: n }) + '\n');
    });
    return;
  }
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ ok: true, subscribers: wss.clients.size, published, mode: MODE }) + '\n');
    return;
  }
  res.writeHead(404); res.end();
});

const wss = new WebSocketServer({
  server, path: WS_PATH, perMessageDeflate: false, maxPayload: 512 * 1024, clientTracking: true,
});
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => broadcast(data, isBinary));
});

server.listen(PORT, HOST, 65535, () => {
  console.log(`node-ws hub (ws ${require('ws/package.json').version}, mode=${MODE}) on ws://${HOST}:${PORT}${WS_PATH}, POST /publish`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
