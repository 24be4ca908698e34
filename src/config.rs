//! `HubConfig`: every limit and interval of the hub, with the protocol's defaults.

use std::net::SocketAddr;
use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;

use crate::error::ConfigError;
use crate::tls_config::TlsFiles;

/// Default listen address: loopback only, the protocol's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default WebSocket path (PROTOCOL.md).
pub const DEFAULT_WS_PATH: &str = "/api/monitoring/ws";
/// Default interval between server pings (PROTOCOL.md: 54 s).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(54);
/// Default time a client may stay silent before it is closed (PROTOCOL.md: 60 s).
pub const DEFAULT_PONG_WAIT: Duration = Duration::from_secs(60);
/// Default time a write may make no progress before the client is dropped (10 s).
pub const DEFAULT_WRITE_WAIT: Duration = Duration::from_secs(10);
/// Default largest client message and frame (512 KiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 512 << 10;
/// Default per-client outbound queue, in broadcast frames (256).
pub const DEFAULT_CLIENT_QUEUE: usize = 256;
/// Default bound on the broadcast history, in frames (32,768: minutes of a busy stream of
/// events).
pub const DEFAULT_HISTORY_FRAMES: usize = 32 * 1024;
/// Default bound on a frame's age in the broadcast history (5 minutes).
pub const DEFAULT_HISTORY_AGE: Duration = Duration::from_secs(300);
/// Default ring size per core, in frames.
pub const DEFAULT_RING_SIZE: usize = 4096;
/// Default initial read buffer per connection: client messages are small.
pub const DEFAULT_READ_BUFFER: usize = 256;
/// Default deadline for a complete request head.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on the request head, in bytes.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 16 << 10;
/// Default cap on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default wait for the peer's close frame after ours.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default drain deadline for a graceful shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on channels one connection may hold.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;
/// Default cap on per-client reply bytes (pong, subscribed, error) waiting to be written.
pub const DEFAULT_MAX_REPLY_BACKLOG: usize = 256 << 10;
/// Default permessage-deflate level (zlib's 1-9): each broadcast is compressed once, so the
/// level costs once per broadcast, not per client.
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 6;
/// Default smallest payload compressed, in bytes: smaller frames go plain.
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 1024;
/// Default listen backlog of each shard's listener.
pub const DEFAULT_LISTEN_BACKLOG: i32 = 4096;
/// Default cap on WebSocket clients across all cores.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default cap on a REST request body.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
/// Default idle time before a keep-alive HTTP connection is closed.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default io_uring buffer memory per executor: we do no DMA file I/O, and locked memory is scarce.
pub const DEFAULT_EXECUTOR_IO_MEMORY: usize = 256 << 10;

/// Which cores run a shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cores {
    /// One shard on every core `core_affinity` reports (the default).
    #[default]
    All,
    /// The first `n` available cores.
    Count(usize),
    /// Exactly these core ids.
    List(Vec<usize>),
}

/// Configuration of a `Hub`.
///
/// Built from `HubConfig::default()` and chainable setters; checked once by
/// [`HubConfig::assert_valid`] when the hub starts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Address every shard listens on (SO_REUSEPORT). Port 0 picks a free port once for all
    /// shards. The default value is `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Cores that run a shard. The default is every available core.
    pub cores: Cores,
    /// Path of the WebSocket endpoint. The default value is `/api/monitoring/ws`.
    pub ws_path: String,
    /// Interval between server pings. The default value is 54 s.
    pub ping_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is closed, unless its TCP
    /// stack is still acknowledging data queued for it (a slow reader's pong waits behind its
    /// backlog). The default is 60 s.
    pub pong_wait: Duration,
    /// A client whose socket makes no progress for this long is dropped: no frame completed
    /// and no byte of what the kernel holds for it acknowledged. The default value is 10 s.
    pub write_wait: Duration,
    /// Deadline for the whole request head to arrive. The default value is 5 s.
    pub handshake_timeout: Duration,
    /// How long to wait for the peer's close frame after sending ours. The default is 2 s.
    pub close_timeout: Duration,
    /// Drain deadline of a graceful shutdown. The default value is 5 s.
    pub shutdown_timeout: Duration,
    /// Broadcast frames held per client before the oldest is dropped. The default is 256.
    pub client_queue: usize,
    /// Frames held per core between broadcasters and the shard before the oldest is dropped.
    /// The default value is 4096.
    pub ring_size: usize,
    /// Broadcasts (events and published messages, not snapshots) kept for clients that resume
    /// with `?since=&epoch=`, at most. 0 keeps none: every resume is told `recovered: false`.
    /// The default is 32,768.
    pub history_frames: usize,
    /// How long a broadcast stays in the history at most. The default is 5 minutes.
    pub history_age: Duration,
    /// Largest request head (request line and headers) in bytes. The default value is 16 KiB.
    pub max_request_head: usize,
    /// Largest number of request headers. The default value is 64.
    pub max_headers: usize,
    /// Most channels one connection may subscribe to. The default value is 1024.
    pub max_subscriptions: usize,
    /// Reply bytes (pong, subscribed, error) a client may leave unread before it is closed
    /// with 1008. The default value is 256 KiB.
    pub max_reply_backlog: usize,
    /// Listen backlog of each shard's socket. The default value is 4096.
    pub listen_backlog: i32,
    /// io_uring buffer memory of each executor. The default value is 256 KiB.
    pub executor_io_memory: usize,
    /// Limits for client frames: of this, only `max_message_size` (the largest message and
    /// frame, 512 KiB) is read; the hub decodes frames itself, in a buffer its shard shares.
    pub websocket: WebSocketConfig,
    /// Token for viewers: WebSocket clients and REST reads (`GET`). `None`: open. The default
    /// is `None`. Accepted as `Authorization: Bearer <token>` or `?token=<token>`; the admin
    /// token is accepted too.
    pub viewer_token: Option<String>,
    /// Token for mutations and the publish endpoint. `None`: open (fine on loopback; the
    /// server warns when it listens beyond loopback so). The default is `None`.
    pub admin_token: Option<String>,
    /// Origins allowed for the upgrade and for REST (CORS). Empty: every origin is accepted.
    /// The default is empty.
    pub allowed_origins: Vec<String>,
    /// WebSocket clients across all cores; past it, HTTP 503 with `Retry-After`. The default
    /// value is 100,000 (the open-files limit usually binds first).
    pub max_connections: usize,
    /// Largest REST request body; above it, 413. The default value is 1 MiB.
    pub max_request_body: usize,
    /// A keep-alive HTTP connection idle this long is closed. The default value is 30 s.
    pub http_idle_timeout: Duration,
    /// Test hook: a client text message `__panic__` panics its connection task. Off by default;
    /// exists so tests can prove a panic closes only that connection.
    #[doc(hidden)]
    pub fault_injection: bool,
    /// Kernel send buffer of each WebSocket socket (`SO_SNDBUF`), in bytes. `None` (the
    /// default) leaves Linux's autotuning, which lets a client that reads slowly hold up to
    /// `net.ipv4.tcp_wmem`'s maximum (4 MiB by default) of kernel memory; a value bounds that,
    /// so a slow reader reaches its queue limit and `lagged` sooner. Linux doubles the value.
    pub send_buffer: Option<usize>,
    /// Conformance mode: every text or binary message is sent back to its sender unchanged
    /// instead of being read as the protocol, and clients are subscribed to nothing. It exists
    /// for the Autobahn|Testsuite (`examples/echo.rs`), which needs an echo server: the reader,
    /// writer, limits and close handling stay those of the hub. Off by default.
    pub echo: bool,
    /// Whether permessage-deflate (RFC 7692) is negotiated with clients that offer it (every
    /// browser does). On by default. A broadcast is compressed at most once for every client
    /// that negotiated it (`server_no_context_takeover`), and only when its payload is at least
    /// [`Self::compression_threshold`] bytes; a compressed client message is inflated with
    /// the message size limit applied to its inflated size.
    pub compression: bool,
    /// Deflate level, 1 (fastest) to 9 (smallest). The default is 6.
    pub compression_level: u32,
    /// Smallest payload compressed, in bytes. The default is 1024.
    pub compression_threshold: usize,
    /// The certificate chain and key (PEM) of the port: with them it speaks TLS only
    /// (`wss://` and `https://`, TLS 1.2 and 1.3, ALPN `http/1.1`); without them (the
    /// default) plain text only. Read when the hub starts (an unusable file refuses the
    /// start) and again on [`HubHandle::tls_reloader`](crate::HubHandle::tls_reloader).
    pub tls: Option<TlsFiles>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid address"),
            cores: Cores::All,
            ws_path: DEFAULT_WS_PATH.to_owned(),
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_wait: DEFAULT_PONG_WAIT,
            write_wait: DEFAULT_WRITE_WAIT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            client_queue: DEFAULT_CLIENT_QUEUE,
            ring_size: DEFAULT_RING_SIZE,
            history_frames: DEFAULT_HISTORY_FRAMES,
            history_age: DEFAULT_HISTORY_AGE,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            max_headers: DEFAULT_MAX_HEADERS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_reply_backlog: DEFAULT_MAX_REPLY_BACKLOG,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            executor_io_memory: DEFAULT_EXECUTOR_IO_MEMORY,
            websocket: default_websocket_config(DEFAULT_MAX_MESSAGE_SIZE),
            viewer_token: None,
            admin_token: None,
            allowed_origins: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            http_idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            fault_injection: false,
            send_buffer: None,
            echo: false,
            compression: true,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            compression_threshold: DEFAULT_COMPRESSION_THRESHOLD,
            tls: None,
        }
    }
}

fn default_websocket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(DEFAULT_READ_BUFFER)
        // Replies tungstenite writes itself (pong, close) go straight to our reply buffer.
        .write_buffer_size(0)
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, v: $ty) -> Self {
            self.$name = v;
            self
        }
    };
}

impl HubConfig {
    setter!(
        /// Sets [`Self::listen`].
        listen: SocketAddr
    );
    setter!(
        /// Sets [`Self::cores`].
        cores: Cores
    );
    setter!(
        /// Sets [`Self::ping_interval`].
        ping_interval: Duration
    );
    setter!(
        /// Sets [`Self::pong_wait`].
        pong_wait: Duration
    );
    setter!(
        /// Sets [`Self::write_wait`].
        write_wait: Duration
    );
    setter!(
        /// Sets [`Self::handshake_timeout`].
        handshake_timeout: Duration
    );
    setter!(
        /// Sets [`Self::close_timeout`].
        close_timeout: Duration
    );
    setter!(
        /// Sets [`Self::shutdown_timeout`].
        shutdown_timeout: Duration
    );
    setter!(
        /// Sets [`Self::client_queue`].
        client_queue: usize
    );
    setter!(
        /// Sets [`Self::ring_size`].
        ring_size: usize
    );
    setter!(
        /// Sets [`Self::history_frames`].
        history_frames: usize
    );
    setter!(
        /// Sets [`Self::history_age`].
        history_age: Duration
    );
    setter!(
        /// Sets [`Self::max_request_head`].
        max_request_head: usize
    );
    setter!(
        /// Sets [`Self::max_headers`].
        max_headers: usize
    );
    setter!(
        /// Sets [`Self::max_subscriptions`].
        max_subscriptions: usize
    );
    setter!(
        /// Sets [`Self::max_reply_backlog`].
        max_reply_backlog: usize
    );
    setter!(
        /// Sets [`Self::listen_backlog`].
        listen_backlog: i32
    );
    setter!(
        /// Sets [`Self::executor_io_memory`].
        executor_io_memory: usize
    );
    setter!(
        /// Sets [`Self::websocket`] (only its `max_message_size` is read).
        websocket: WebSocketConfig
    );
    setter!(
        #[doc(hidden)]
        fault_injection: bool
    );
    setter!(
        /// Sets [`Self::send_buffer`].
        send_buffer: Option<usize>
    );
    setter!(
        /// Sets [`Self::echo`].
        echo: bool
    );
    setter!(
        /// Sets [`Self::compression`].
        compression: bool
    );
    setter!(
        /// Sets [`Self::compression_level`].
        compression_level: u32
    );
    setter!(
        /// Sets [`Self::compression_threshold`].
        compression_threshold: usize
    );
    setter!(
        /// Sets [`Self::tls`].
        tls: Option<TlsFiles>
    );
    setter!(
        /// Sets [`Self::viewer_token`].
        viewer_token: Option<String>
    );
    setter!(
        /// Sets [`Self::admin_token`].
        admin_token: Option<String>
    );
    setter!(
        /// Sets [`Self::allowed_origins`].
        allowed_origins: Vec<String>
    );
    setter!(
        /// Sets [`Self::max_connections`].
        max_connections: usize
    );
    setter!(
        /// Sets [`Self::max_request_body`].
        max_request_body: usize
    );
    setter!(
        /// Sets [`Self::http_idle_timeout`].
        http_idle_timeout: Duration
    );

    /// Sets [`Self::ws_path`].
    #[must_use]
    pub fn ws_path(mut self, path: impl Into<String>) -> Self {
        self.ws_path = path.into();
        self
    }

    /// Sets the largest client message and frame; above it the client is closed with 1009.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.websocket = self
            .websocket
            .max_message_size(Some(bytes))
            .max_frame_size(Some(bytes));
        self
    }

    /// Checks the configuration once, before any thread starts.
    pub fn assert_valid(&self) -> Result<(), ConfigError> {
        let positive = [
            ("ping_interval", self.ping_interval),
            ("pong_wait", self.pong_wait),
            ("write_wait", self.write_wait),
            ("handshake_timeout", self.handshake_timeout),
            ("close_timeout", self.close_timeout),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        let at_least = [
            ("client_queue", self.client_queue, 1),
            ("ring_size", self.ring_size, 1),
            ("max_request_head", self.max_request_head, 256),
            ("max_headers", self.max_headers, 1),
            ("max_connections", self.max_connections, 1),
        ];
        for (field, value, min) in at_least {
            if value < min {
                return Err(ConfigError::TooSmall { field, min });
            }
        }
        for (name, token) in [("viewer", &self.viewer_token), ("admin", &self.admin_token)] {
            if token
                .as_deref()
                .is_some_and(|t| t.is_empty() || t.len() > 4096)
            {
                return Err(ConfigError::TokenLength(name));
            }
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::WsPath);
        }
        if !(1..=9).contains(&self.compression_level) {
            return Err(ConfigError::CompressionLevel(self.compression_level));
        }
        match &self.cores {
            Cores::Count(0) => {
                return Err(ConfigError::TooSmall {
                    field: "cores",
                    min: 1,
                })
            }
            Cores::List(l) if l.is_empty() => return Err(ConfigError::NoCores),
            _ => {}
        }
        Ok(())
    }

    /// The period of each shard's single heartbeat sweep: a quarter of the shortest deadline,
    /// between 10 ms and 1 s.
    pub(crate) fn sweep_interval(&self) -> Duration {
        let shortest = [
            self.ping_interval,
            self.pong_wait,
            self.write_wait,
            self.handshake_timeout,
            self.close_timeout,
            self.http_idle_timeout,
        ]
        .into_iter()
        .min()
        .unwrap_or(DEFAULT_PING_INTERVAL);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// The largest client message (and frame).
    pub fn max_message(&self) -> usize {
        self.websocket
            .max_message_size
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// Resolves [`Self::cores`] to the core ids that will run a shard.
    pub(crate) fn core_ids(&self) -> Result<Vec<usize>, ConfigError> {
        let available: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let available = if available.is_empty() {
            vec![0]
        } else {
            available
        };
        match &self.cores {
            Cores::All => Ok(available),
            Cores::Count(n) if *n <= available.len() => Ok(available[..*n].to_vec()),
            Cores::Count(n) => Err(ConfigError::TooManyCores {
                asked: *n,
                available: available.len(),
            }),
            Cores::List(list) => {
                if let Some(bad) = list.iter().find(|c| !available.contains(c)) {
                    return Err(ConfigError::UnknownCore(*bad));
                }
                Ok(list.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_protocol_table() {
        let c = HubConfig::default();
        assert_eq!(c.ping_interval, Duration::from_secs(54));
        assert_eq!(c.pong_wait, Duration::from_secs(60));
        assert_eq!(c.write_wait, Duration::from_secs(10));
        assert_eq!(c.max_message(), 512 * 1024);
        assert_eq!(c.websocket.max_frame_size, Some(512 * 1024));
        assert_eq!(c.client_queue, 256);
        assert!(c.websocket.read_buffer_size <= 1024);
        c.assert_valid().unwrap();
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(HubConfig::default().client_queue(0).assert_valid().is_err());
        assert!(HubConfig::default()
            .pong_wait(Duration::ZERO)
            .assert_valid()
            .is_err());
        assert!(HubConfig::default()
            .cores(Cores::Count(0))
            .assert_valid()
            .is_err());
    }

    #[test]
    fn sweep_is_a_quarter_of_the_shortest_deadline() {
        let c = HubConfig::default().ping_interval(Duration::from_millis(200));
        assert_eq!(c.sweep_interval(), Duration::from_millis(50));
        assert_eq!(
            HubConfig::default().sweep_interval(),
            Duration::from_millis(500)
        );
    }
}
