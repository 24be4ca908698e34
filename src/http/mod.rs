//! The HTTP side, on the WebSocket's port and the same shard executors: the dashboard, health,
//! readiness, Prometheus metrics and the REST API, served by hyper's HTTP/1 server.
//!
//! The connection reads the request head itself; a WebSocket upgrade stays on that fast path,
//! and anything else is handed to [`Web`] here (the connection's [`Requests`] handler), with
//! the bytes already read replayed first. Requests are named by the one table in [`routes`]
//! and REST requests answered by the [`rest::Api`] attached: this instance's services, or a
//! relay's.

pub(crate) mod prometheus;
pub(crate) mod rest;
pub(crate) mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tracing::debug;

use self::prometheus::Exporter;
use self::rest::{Api, LocalApi, Reply};
use self::routes::{Endpoint, Route, Unrouted};
use crate::connection::{Conn, ConnShard, Requests};
use crate::hub::{Broadcaster, HubProbe};
use crate::security::{self, Access, Denied};

/// The page served at `/`.
const DASHBOARD: &str = include_str!("dashboard.html");

type Body = Full<Bytes>;

/// What every core's HTTP side shares: who answers REST requests, and what else `/metrics`
/// reports.
#[derive(Debug)]
pub(crate) struct Web {
    probe: HubProbe,
    api: RwLock<Arc<dyn Api>>,
    /// Whether [`Self::attach_api`] replaced the publish-only default.
    attached: AtomicBool,
    exporters: Mutex<Vec<Arc<dyn Exporter>>>,
}

impl Web {
    /// Serves publishing only until [`Self::attach_api`].
    pub(crate) fn new(broadcaster: Broadcaster, probe: HubProbe) -> Self {
        Self {
            probe,
            api: RwLock::new(Arc::new(LocalApi::publish_only(broadcaster))),
            attached: AtomicBool::new(false),
            exporters: Mutex::default(),
        }
    }

    /// Who answers REST requests from now on; false (and nothing changes) if an API was
    /// attached already.
    pub(crate) fn attach_api(&self, api: Arc<dyn Api>) -> bool {
        let mut slot = self.api.write().unwrap_or_else(|e| e.into_inner());
        if self.attached.swap(true, Relaxed) {
            return false;
        }
        *slot = api;
        true
    }

    /// Who answers REST requests.
    pub(crate) fn api(&self) -> Arc<dyn Api> {
        self.api.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds metrics to `/metrics`.
    pub(crate) fn add_exporter(&self, exporter: Arc<dyn Exporter>) {
        self.exporters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(exporter);
    }

    /// The Prometheus text of `/metrics`.
    pub(crate) fn prometheus_text(&self) -> String {
        let exporters = self
            .exporters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        prometheus::text(&self.probe, &exporters)
    }
}

impl Requests for Web {
    fn serve<'a>(
        &'a self,
        shard: &'a Rc<ConnShard>,
        conn: &'a Rc<Conn>,
        head: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
        Box::pin(serve(self, shard, conn, head))
    }
}

/// Serves HTTP/1 requests on this connection until it closes (keep-alive included).
async fn serve(web: &Web, shard: &Rc<ConnShard>, conn: &Rc<Conn>, prefix: Vec<u8>) {
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
        async move { Ok::<_, Infallible>(respond(web, &shard, req).await) }
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
async fn respond(web: &Web, shard: &ConnShard, req: Request<Incoming>) -> Response<Body> {
    let cfg = &shard.config;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let mut resp = if !security::origin_allowed(cfg, origin.as_deref()) {
        reply(Reply::error(StatusCode::FORBIDDEN, "origin not allowed"))
    } else if req.method() == Method::OPTIONS {
        reply(Reply::empty(StatusCode::NO_CONTENT))
    } else {
        route(web, shard, req).await
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

async fn route(web: &Web, shard: &ConnShard, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let route = Route::parse(&method, req.uri().path());
    if !route.as_ref().is_ok_and(Route::is_public) {
        let reads = method == Method::GET || method == Method::HEAD;
        let need = if reads { Access::Viewer } else { Access::Admin };
        if let Err(denied) = security::check(&shard.config, need, req.headers(), req.uri()) {
            return refused(denied);
        }
        if !reads && draining(shard) {
            let msg = "the server is draining";
            return reply(Reply::error(StatusCode::SERVICE_UNAVAILABLE, msg).retry_later());
        }
    }
    match route {
        Ok(Route::Dashboard) => dashboard(),
        Ok(Route::Healthz) => reply(Reply::status(StatusCode::OK, "ok")),
        Ok(Route::Readyz) if draining(shard) => {
            reply(Reply::status(StatusCode::SERVICE_UNAVAILABLE, "draining").retry_later())
        }
        Ok(Route::Readyz) => reply(Reply::status(StatusCode::OK, "ready")),
        Ok(Route::Metrics) => prometheus::response(web.prometheus_text()),
        Ok(Route::Api(endpoint)) => reply(rest(web, shard, req, endpoint).await),
        Err(Unrouted::NotFound) => reply(Reply::error(StatusCode::NOT_FOUND, "no such path")),
        Err(Unrouted::MethodNotAllowed(allow)) => {
            let msg = "method not allowed";
            let mut resp = reply(Reply::error(StatusCode::METHOD_NOT_ALLOWED, msg));
            if let Ok(allow) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(header::ALLOW, allow);
            }
            resp
        }
    }
}

/// A REST request: refused at once if its service is not there, else its body read within
/// the cap, parsed through the one table, and answered by the attached API.
async fn rest(web: &Web, shard: &ConnShard, req: Request<Incoming>, endpoint: Endpoint) -> Reply {
    let api = web.api();
    if let Some(refused) = api.refuses(&endpoint) {
        return refused;
    }
    let body = if endpoint.has_body() {
        match read_body(shard, req).await {
            Ok(b) => b,
            Err(r) => return r,
        }
    } else {
        Bytes::new()
    };
    match endpoint.request(&body) {
        Ok(request) => api.call(request),
        Err(bad) => Reply::error(StatusCode::BAD_REQUEST, &bad.to_string()),
    }
}

async fn read_body(shard: &ConnShard, req: Request<Incoming>) -> Result<Bytes, Reply> {
    let cap = shard.config.max_request_body;
    let too_large = || Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
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
        Err(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "unreadable request body",
        )),
    }
}

fn draining(shard: &ConnShard) -> bool {
    shard.draining.get() || shard.shared.shutting_down()
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

/// A REST answer as an HTTP response.
fn reply(r: Reply) -> Response<Body> {
    let json = !r.body.is_empty();
    let mut resp = Response::new(Full::new(r.body));
    *resp.status_mut() = r.status;
    if json {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if r.retry_later {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

fn refused(denied: Denied) -> Response<Body> {
    match denied {
        Denied::Origin => reply(Reply::error(StatusCode::FORBIDDEN, "origin not allowed")),
        Denied::Token => {
            let mut resp = reply(Reply::error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token",
            ));
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.poll_close(cx)
    }
}
