//! The HTTP side, on the WebSocket's port and the same shard executors: the dashboard, health,
//! readiness, Prometheus metrics and the REST API, served by hyper's HTTP/1 server.
//!
//! The connection reads the request head itself; a WebSocket upgrade stays on that fast path,
//! and anything else is handed to hyper here, with the bytes already read replayed first.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tracing::{debug, warn};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::broadcast::{Broadcaster, HubShared};
use crate::connection::Conn;
use crate::groups::GroupCoordinator;
use crate::hub::HubProbe;
use crate::protocol::Channel;
use crate::relay::{RelayLink, RelayRole, RelayedState};
use crate::security::{self, Access, Denied};
use crate::shard::Shard;
use crate::stats::DURATION_BUCKETS;
use crate::topics::{TopicError, TopicManager};

/// The page served at `/`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The services behind the REST API, attached with `HubHandle::serve_api`.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    pub(crate) topics: TopicManager,
    pub(crate) groups: GroupCoordinator,
}

type Body = Full<Bytes>;

/// Serves HTTP/1 requests on this connection until it closes (keep-alive included).
pub(crate) async fn serve(shard: &Rc<Shard>, conn: &Rc<Conn>, prefix: Vec<u8>) {
    conn.begin_http();
    let io = HttpIo {
        conn: conn.clone(),
        prefix,
        pos: 0,
    };
    let (shard2, conn2) = (shard.clone(), conn.clone());
    let service = service_fn(move |req| {
        conn2.touch();
        let shard = shard2.clone();
        async move { Ok::<_, Infallible>(respond(&shard, req).await) }
    });
    let cfg = &shard.config;
    let result = http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(cfg.max_request_head.max(8192))
        .max_headers(cfg.max_headers)
        .serve_connection(io, service)
        .await;
    if let Err(e) = result {
        debug!(shard = shard.id, error = %e, "http connection ended");
    }
}

/// Routes a request, then adds the CORS headers an allowed origin needs.
async fn respond(shard: &Shard, req: Request<Incoming>) -> Response<Body> {
    let cfg = &shard.config;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let mut resp = if !security::origin_allowed(cfg, origin.as_deref()) {
        error(StatusCode::FORBIDDEN, "origin not allowed")
    } else if req.method() == Method::OPTIONS {
        empty(StatusCode::NO_CONTENT)
    } else {
        route(shard, req).await
    };
    if draining(shard) {
        // Keep-alive clients go elsewhere once this answer is out.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(origin) = origin.filter(|o| security::origin_allowed(cfg, Some(o))) {
        let h = resp.headers_mut();
        let allow = if cfg.allowed_origins.is_empty() {
            HeaderValue::from_static("*")
        } else {
            HeaderValue::from_str(&origin).unwrap_or(HeaderValue::from_static("null"))
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    resp
}

async fn route(shard: &Shard, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let need = if method == Method::GET || method == Method::HEAD {
        Access::Viewer
    } else {
        Access::Admin
    };
    match (segments.as_slice(), &method) {
        ([""], &Method::GET) => dashboard(),
        (["healthz"], &Method::GET) => json(StatusCode::OK, &Status { status: "ok" }),
        (["readyz"], &Method::GET) if draining(shard) => retry_later(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Status { status: "draining" },
        )),
        (["readyz"], &Method::GET) => json(StatusCode::OK, &Status { status: "ready" }),
        _ => {
            if let Err(denied) = security::check(&shard.config, need, req.headers(), req.uri()) {
                return refused(denied);
            }
            api(shard, req, &segments, &method).await
        }
    }
}

async fn api(
    shard: &Shard,
    req: Request<Incoming>,
    segments: &[&str],
    method: &Method,
) -> Response<Body> {
    let shared = &shard.shared;
    let probe = HubProbe::new(shared.clone());
    let mutation = !matches!(*method, Method::GET | Method::HEAD);
    if mutation && draining(shard) {
        return retry_later(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is draining",
        ));
    }
    if let Some(link) = shared.relay.get() {
        if link.role == RelayRole::RelayOnly {
            return relay_only(shard, link, req, segments, method).await;
        }
    }
    let services = shared.api.get();
    let no_services = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no topic and group services",
        )
    };
    match (segments, method) {
        (["metrics"], &Method::GET) => prometheus(&probe),
        (["api", "topics"], &Method::GET) => match services {
            Some(s) => json(StatusCode::OK, &s.topics.list()),
            None => no_services(),
        },
        (["api", "topics"], &Method::POST) => {
            let Some(s) = services else {
                return no_services();
            };
            let body = match body::<CreateTopic>(shard, req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match s.topics.create(&body.name, body.partitions) {
                Ok(_) => json(StatusCode::CREATED, &s.topics.get(&body.name)),
                Err(e @ TopicError::AlreadyExists(_)) => {
                    error(StatusCode::CONFLICT, &e.to_string())
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        (["api", "topics", name], &Method::GET) => match services.map(|s| s.topics.get(name)) {
            Some(Some(t)) => json(StatusCode::OK, &t),
            Some(None) => error(StatusCode::NOT_FOUND, "no such topic"),
            None => no_services(),
        },
        (["api", "topics", name], &Method::DELETE) => match services.map(|s| s.topics.delete(name))
        {
            Some(Ok(())) => empty(StatusCode::NO_CONTENT),
            Some(Err(e)) => error(StatusCode::NOT_FOUND, &e.to_string()),
            None => no_services(),
        },
        (["api", "groups"], &Method::GET) => match services {
            Some(s) => json(StatusCode::OK, &s.groups.list()),
            None => no_services(),
        },
        (["api", "groups", id], &Method::GET) => match services.map(|s| s.groups.get(id)) {
            Some(Some(g)) => json(StatusCode::OK, &g),
            Some(None) => error(StatusCode::NOT_FOUND, "no such group"),
            None => no_services(),
        },
        (["api", "groups", id], &Method::PUT) => {
            let Some(s) = services else {
                return no_services();
            };
            let body = match body::<UpdateGroup>(shard, req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            if !group_update_ok(id, &body) {
                return error(StatusCode::BAD_REQUEST, "group id or state out of range");
            }
            s.groups.update(id, &body.state, body.members);
            json(StatusCode::OK, &s.groups.get(id))
        }
        (["api", "groups", id], &Method::DELETE) => match services.map(|s| s.groups.remove(id)) {
            Some(true) => empty(StatusCode::NO_CONTENT),
            Some(false) => error(StatusCode::NOT_FOUND, "no such group"),
            None => no_services(),
        },
        (["api", "monitoring", "publish"], &Method::POST) => publish(shard, req).await,
        _ => not_found_or_not_allowed(segments),
    }
}

/// The API of a relay-only instance: reads answered from the state the origin relays,
/// mutations and publishes forwarded to the origin (202: the outcome arrives as events).
async fn relay_only(
    shard: &Shard,
    link: &RelayLink,
    req: Request<Incoming>,
    segments: &[&str],
    method: &Method,
) -> Response<Body> {
    let probe = HubProbe::new(shard.shared.clone());
    let relayed = |pick: fn(&RelayedState) -> Option<String>| {
        let state = link.state.lock().unwrap_or_else(|e| e.into_inner());
        pick(&state)
    };
    let no_state = || {
        retry_later(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no state relayed from the source instance yet",
        ))
    };
    let one = |list: Option<String>, key: &str, id: &str, what: &str| match list {
        None => no_state(),
        Some(list) => {
            let items: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap_or_default();
            match items.into_iter().find(|t| t[key] == id) {
                Some(item) => json(StatusCode::OK, &item),
                None => error(StatusCode::NOT_FOUND, what),
            }
        }
    };
    let forwardable = matches!(
        (segments, method),
        (["api", "topics"], &Method::POST)
            | (["api", "topics", _], &Method::DELETE)
            | (["api", "groups", _], &Method::PUT | &Method::DELETE)
            | (["api", "monitoring", "publish"], &Method::POST)
    );
    match (segments, method) {
        (["metrics"], &Method::GET) => prometheus(&probe),
        (["api", "topics"], &Method::GET) => match relayed(|s| s.topics.clone()) {
            Some(list) => raw_json(StatusCode::OK, list),
            None => no_state(),
        },
        (["api", "groups"], &Method::GET) => match relayed(|s| s.groups.clone()) {
            Some(list) => raw_json(StatusCode::OK, list),
            None => no_state(),
        },
        (["api", "topics", name], &Method::GET) => {
            one(relayed(|s| s.topics.clone()), "name", name, "no such topic")
        }
        (["api", "groups", id], &Method::GET) => one(
            relayed(|s| s.groups.clone()),
            "groupId",
            id,
            "no such group",
        ),
        _ if forwardable => {
            let path = req.uri().path().to_owned();
            let method = method.to_string();
            let body = match read_body(shard, req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let command = serde_json::json!({
                "method": method,
                "path": path,
                "body": String::from_utf8_lossy(&body),
            });
            link.forward(command.to_string());
            json(
                StatusCode::ACCEPTED,
                &Status {
                    status: "forwarded",
                },
            )
        }
        _ => not_found_or_not_allowed(segments),
    }
}

/// Runs a mutation a relay-only instance forwarded (on the origin's relay thread). Failures
/// are logged: the instance that took the request has answered 202 already.
pub(crate) fn run_forwarded(shared: &Arc<HubShared>, msg: &[u8]) {
    #[derive(Deserialize)]
    struct Command {
        method: String,
        path: String,
        body: String,
    }
    let outcome = (|| -> Result<(), String> {
        let cmd: Command = serde_json::from_slice(msg).map_err(|e| e.to_string())?;
        let segments: Vec<&str> = cmd.path.trim_matches('/').split('/').collect();
        let services = shared.api.get().ok_or("no topic and group services")?;
        let err = |e: &dyn std::fmt::Display| e.to_string();
        match (segments.as_slice(), cmd.method.as_str()) {
            (["api", "topics"], "POST") => {
                let b: CreateTopic = serde_json::from_str(&cmd.body).map_err(|e| err(&e))?;
                services
                    .topics
                    .create(&b.name, b.partitions)
                    .map(drop)
                    .map_err(|e| err(&e))
            }
            (["api", "topics", name], "DELETE") => {
                services.topics.delete(name).map_err(|e| err(&e))
            }
            (["api", "groups", id], "PUT") => {
                let b: UpdateGroup = serde_json::from_str(&cmd.body).map_err(|e| err(&e))?;
                if !group_update_ok(id, &b) {
                    return Err("group id or state out of range".into());
                }
                services.groups.update(id, &b.state, b.members);
                Ok(())
            }
            (["api", "groups", id], "DELETE") => services
                .groups
                .remove(id)
                .then_some(())
                .ok_or_else(|| "no such group".into()),
            (["api", "monitoring", "publish"], "POST") => {
                publish_message(shared, cmd.body.as_bytes()).map(drop)
            }
            _ => Err(format!("cannot run {} {}", cmd.method, cmd.path)),
        }
    })();
    if let Err(e) = outcome {
        warn!(error = %e, "a forwarded request failed");
    }
}

fn not_found_or_not_allowed(segments: &[&str]) -> Response<Body> {
    let allow = match segments {
        [""] | ["healthz"] | ["readyz"] | ["metrics"] => "GET",
        ["api", "topics"] => "GET, POST",
        ["api", "topics", _] => "GET, DELETE",
        ["api", "groups"] => "GET",
        ["api", "groups", _] => "GET, PUT, DELETE",
        ["api", "monitoring", "publish"] => "POST",
        _ => return error(StatusCode::NOT_FOUND, "no such path"),
    };
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

#[derive(Deserialize)]
struct CreateTopic {
    name: String,
    partitions: u32,
}

#[derive(Deserialize)]
struct UpdateGroup {
    state: String,
    members: u32,
}

#[derive(Deserialize)]
struct Publish<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    channel: Option<String>,
}

#[derive(serde::Serialize)]
struct Status {
    status: &'static str,
}

#[derive(serde::Serialize)]
struct Published {
    seq: u64,
}

/// `POST /api/monitoring/publish`: a message `{"type", "data", "channel"?}` broadcast as given
/// (the data is passed through, not re-encoded), on `events` when no channel is named.
async fn publish(shard: &Shard, req: Request<Incoming>) -> Response<Body> {
    let bytes = match read_body(shard, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    match publish_message(&shard.shared, &bytes) {
        Ok(seq) => json(StatusCode::ACCEPTED, &Published { seq }),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// Checks and broadcasts a publish request's body `{"type", "data"?, "channel"?}`; the data
/// is passed through, not re-encoded. Used by the endpoint and by forwarded publishes.
fn publish_message(shared: &Arc<HubShared>, body: &[u8]) -> Result<u64, String> {
    let msg: Publish<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid message: {e}"))?;
    let channel = match msg.channel.as_deref().map(Channel::parse) {
        None => Channel::Events,
        Some(Ok(c)) => c,
        Some(Err(_)) => return Err("no such channel".into()),
    };
    if msg.kind.is_empty() || msg.kind.len() > 256 {
        return Err("type must be 1 to 256 bytes".into());
    }
    Broadcaster::new(shared.clone())
        .publish_raw(&channel, &msg.kind, msg.data.map(|d| d.get()))
        .map_err(|e| e.to_string())
}

/// Whether a group update is within the limits (id 1-255 bytes, state 1-64).
fn group_update_ok(id: &str, update: &UpdateGroup) -> bool {
    (1..=255).contains(&id.len()) && (1..=64).contains(&update.state.len())
}

/// Reads a JSON body of type `T`, within the size cap.
async fn body<T: serde::de::DeserializeOwned>(
    shard: &Shard,
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let bytes = read_body(shard, req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")))
}

async fn read_body(shard: &Shard, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let cap = shard.config.max_request_body;
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "unreadable request body")),
    }
}

fn draining(shard: &Shard) -> bool {
    shard.draining.get()
        || shard
            .shared
            .shutdown
            .load(std::sync::atomic::Ordering::Relaxed)
}

fn dashboard() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let body = simd_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON body that is already text (relayed state).
fn raw_json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &ErrorBody { error: message })
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn retry_later(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

fn refused(denied: Denied) -> Response<Body> {
    match denied {
        Denied::Origin => error(StatusCode::FORBIDDEN, "origin not allowed"),
        Denied::Token => {
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong token");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

/// The hub's own counters in the Prometheus text format (version 0.0.4).
fn prometheus(probe: &HubProbe) -> Response<Body> {
    let text = prometheus_text(probe);
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub(crate) fn prometheus_text(probe: &HubProbe) -> String {
    let s = probe.stats();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "takhin_connections",
        "gauge",
        "Open WebSocket clients.",
        s.connections as f64,
    );
    let counters = [
        (
            "takhin_connections_accepted_total",
            "TCP connections accepted.",
            s.accepted_total,
        ),
        (
            "takhin_handshakes_total",
            "WebSocket handshakes completed.",
            s.handshakes_total,
        ),
        (
            "takhin_handshake_failures_total",
            "Requests refused before or during the upgrade.",
            s.handshake_failures_total,
        ),
        (
            "takhin_broadcasts_total",
            "Messages broadcast (the last seq).",
            probe.broadcasts(),
        ),
        (
            "takhin_deliveries_total",
            "Frames queued to clients.",
            s.deliveries_total,
        ),
        (
            "takhin_frames_sent_total",
            "Frames completely written to clients.",
            s.frames_sent_total,
        ),
        (
            "takhin_sent_bytes_total",
            "Bytes written to client sockets.",
            s.bytes_sent_total,
        ),
        (
            "takhin_writes_total",
            "Write calls that carried bytes.",
            s.writes_total,
        ),
        (
            "takhin_ring_dropped_total",
            "Frames dropped from full per-core rings.",
            s.ring_dropped_total,
        ),
        (
            "takhin_queue_dropped_total",
            "Frames dropped from full client queues.",
            s.queue_dropped_total,
        ),
        (
            "takhin_lagged_total",
            "lagged notices sent.",
            s.lagged_total,
        ),
        (
            "takhin_protocol_errors_total",
            "Clients closed for protocol or limit violations.",
            s.protocol_errors_total,
        ),
        (
            "takhin_invalid_messages_total",
            "Client text messages that were not JSON objects.",
            s.invalid_messages_total,
        ),
        (
            "takhin_pong_timeouts_total",
            "Clients closed after the pong wait.",
            s.pong_timeouts_total,
        ),
        (
            "takhin_write_timeouts_total",
            "Clients dropped after the write wait.",
            s.write_timeouts_total,
        ),
        (
            "takhin_panics_total",
            "Connection tasks that panicked.",
            s.panics_total,
        ),
        ("takhin_ticks_total", "Metrics ticks run.", s.ticks_total),
    ];
    for (name, help, value) in counters {
        metric(name, "counter", help, value as f64);
    }
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        crate::source::resident_memory() as f64,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64,
    );
    if let Some(relay) = probe.shared().relay.get() {
        let r = &relay.stats;
        metric(
            "takhin_relay_connected",
            "gauge",
            "1 while the Redis relay is connected.",
            r.connected.load(Relaxed) as f64,
        );
        let relay_counters = [
            (
                "takhin_relay_published_total",
                "Frames published to Redis.",
                &r.published_total,
            ),
            (
                "takhin_relay_received_total",
                "Frames received from Redis and fanned out here.",
                &r.received_total,
            ),
            (
                "takhin_relay_dropped_total",
                "Frames not published: queue overflow or Redis away.",
                &r.dropped_total,
            ),
            (
                "takhin_relay_errors_total",
                "Redis connection failures and lost connections.",
                &r.errors_total,
            ),
            (
                "takhin_relay_commands_total",
                "REST mutations forwarded (relay-only) or run for others (origin).",
                &r.commands_total,
            ),
        ];
        for (name, help, value) in relay_counters {
            metric(name, "counter", help, value.load(Relaxed) as f64);
        }
    }
    let histograms = [
        (
            "takhin_broadcast_duration_seconds",
            "Time to encode a broadcast and hand it to every core.",
            probe.broadcast_histogram(),
        ),
        (
            "takhin_tick_duration_seconds",
            "Time to build, encode and send one metrics tick.",
            probe.tick_histogram(),
        ),
    ];
    for (name, help, (buckets, count, sum)) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (le, c) in DURATION_BUCKETS.iter().zip(buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
    out
}

/// hyper's view of our socket: the bytes already read come first.
struct HttpIo {
    conn: Rc<Conn>,
    prefix: Vec<u8>,
    pos: usize,
}

impl hyper::rt::Read for HttpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        // SAFETY: the slice is initialised below before it is read from or written to as
        // bytes, and the cursor advances only by the bytes the socket wrote into it.
        let uninit = unsafe { buf.as_mut() };
        let len = uninit.len().min(16 << 10);
        let uninit = &mut uninit[..len];
        uninit.fill(MaybeUninit::new(0));
        // SAFETY: every element was just initialised.
        let dst = unsafe { &mut *(uninit as *mut [MaybeUninit<u8>] as *mut [u8]) };
        match this.conn.poll_read(cx, dst) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: `n` bytes were written by the read.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HttpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.poll_close(cx)
    }
}
