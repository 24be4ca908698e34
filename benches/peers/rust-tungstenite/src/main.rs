//! Rust fan-out hub, same interface as takhin-monitor: tokio-tungstenite + tokio::sync::broadcast.
//!
//! Why a fair peer: this is the naive, idiomatic way to write the hub in Rust (what the tokio and
//! tungstenite docs lead to): `broadcast::channel::<Message>(CAP=1024)`, one task per connection,
//! `select!` over `rx.recv()` and `sink.send(msg).await` (one flush per message). Same language
//! and the same tungstenite crate as our hub, so the difference is the architecture.
//!
//!   WS subscribe:  ws://127.0.0.1:$PORT/api/monitoring/ws        (PORT default 18086)
//!   Publish:       POST http://127.0.0.1:$PORT/publish  (body = message, one text frame to all)
//!                  or any text/binary message sent by any WS client (broadcast to all, sender included)
//!   GET /healthz   {"ok","subscribers","published","lagged_skipped"}
//!
//! `Message` is `Bytes`-backed so the payload is shared, but every connection frames it again.
//! Slow clients: a receiver lagging more than CAP messages behind gets RecvError::Lagged; the
//! skipped messages are lost (counted in lagged_skipped) and it carries on.
//! Env: PORT, HOST (127.0.0.1), CAP (1024), WORKERS (tokio worker threads, default = cores).
//! HTTP and WS share the port: the first bytes are peeked; `POST ` or `GET /healthz` goes to a tiny
//! HTTP handler, everything else to the WebSocket handshake.
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const WS_PATH: &str = "/api/monitoring/ws";
const MAX_MESSAGE: usize = 512 * 1024;

#[derive(Default)]
struct Stats {
    subscribers: AtomicU64,
    published: AtomicU64,
    lagged: AtomicU64,
}

struct Hub {
    tx: broadcast::Sender<Message>,
    stats: Stats,
}

fn main() {
    let workers: usize = std::env::var("WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        rt.worker_threads(workers);
    }
    rt.enable_all().build().unwrap().block_on(run());
}

async fn run() {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = std::env::var("PORT").ok().and_then(|v| v.parse().ok()).unwrap_or(18086);
    let cap: usize = std::env::var("CAP").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let (tx, _) = broadcast::channel::<Message>(cap);
    let hub = Arc::new(Hub { tx, stats: Stats::default() });
    let listener = TcpListener::bind((host.as_str(), port)).await.expect("bind");
    eprintln!("rust-tungstenite hub (broadcast cap={cap}) on ws://{host}:{port}{WS_PATH}, POST /publish");
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let _ = stream.set_nodelay(true);
                let hub = hub.clone();
                tokio::spawn(async move { let _ = handle(stream, hub).await; });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
}

fn publish(hub: &Hub, msg: Message) -> usize {
    hub.stats.published.fetch_add(1, Relaxed);
    hub.tx.send(msg).unwrap_or(0) // Err = no receivers
}

async fn handle(stream: TcpStream, hub: Arc<Hub>) -> std::io::Result<()> {
    // Route on the first bytes: "POST " => tiny HTTP handler, "GET /healthz" too, else WebSocket.
    let mut head = [0u8; 12];
    let mut n = 0;
    for _ in 0..100 {
        n = stream.peek(&mut head).await?;
        if n >= 12 || n == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    if head[..n].starts_with(b"POST ") || head[..n].starts_with(b"GET /healthz") {
        return http(stream, hub).await;
    }
    ws(stream, hub).await;
    Ok(())
}

async fn http(stream: TcpStream, hub: Arc<Hub>) -> std::io::Result<()> {
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let (mut len, mut close) = (0usize, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    len = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut body = vec![0u8; len.min(MAX_MESSAGE)];
        r.read_exact(&mut body).await?;
        let (status, out) = if method == "POST" && target.split('?').next() == Some("/publish") {
            match String::from_utf8(body) {
                Ok(s) => {
                    let n = publish(&hub, Message::text(s));
                    ("200 OK", format!("{{\"subscribers\":{n}}}\n"))
                }
                Err(_) => ("400 Bad Request", "{\"error\":\"body is not UTF-8\"}\n".to_string()),
            }
        } else if target == "/healthz" {
            let s = &hub.stats;
            ("200 OK", format!("{{\"ok\":true,\"subscribers\":{},\"published\":{},\"lagged_skipped\":{}}}\n",
                s.subscribers.load(Relaxed), s.published.load(Relaxed), s.lagged.load(Relaxed)))
        } else {
            ("404 Not Found", "{}\n".to_string())
        };
        let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{out}", out.len());
        r.get_mut().write_all(resp.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

async fn ws(stream: TcpStream, hub: Arc<Hub>) {
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == WS_PATH {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            Err(e)
        }
    };
    let cfg = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(cfg)).await else {
        return;
    };
    let mut rx = hub.tx.subscribe();
    hub.stats.subscribers.fetch_add(1, Relaxed);
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(msg) => if sink.send(msg).await.is_err() { break },
                Err(RecvError::Lagged(k)) => { hub.stats.lagged.fetch_add(k, Relaxed); }
                Err(RecvError::Closed) => break,
            },
            m = source.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => { publish(&hub, m); }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // ping/pong: tungstenite queues the pong itself
            },
        }
    }
    hub.stats.subscribers.fetch_sub(1, Relaxed);
}
