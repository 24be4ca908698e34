//! A thread-per-core WebSocket hub that streams a Kafka-compatible broker's live metrics and
//! events to dashboards.
//!
//! # The model
//!
//! Every configured core runs its own pinned glommio executor, which owns a *shard*: its own
//! SO_REUSEPORT listener on the shared address (the kernel spreads new connections over the
//! shards), its connections, their outbound queues, its subscription index and one heartbeat
//! sweep. Nothing inside a shard is shared with another core.
//!
//! A broadcast is serialized once, into a complete WebSocket frame behind an `Arc`. The
//! [`Broadcaster`] (callable from any thread, a broker's own included) pushes that pointer into
//! one bounded ring per core (drop-oldest) and wakes the core. Each shard's distributor appends
//! the pointer to the bounded queue of every subscribed client (drop-oldest again, then a
//! `lagged` notice); after each batch it sends every such client everything queued in one
//! `sendmsg` of the shared buffers, and leaves to the client's writer task only what cannot go
//! at once (a full socket, a close): no per-client encoding, copying, JSON work or task wake.
//!
//! # Layout
//!
//! The parts depend on each other downward only; each is a file or folder of `src/` named
//! after it. From the bottom:
//!
//! - `config` ([`HubConfig`], [`Cores`]), `error` ([`Error`] and its causes), `process`
//!   (resident memory, threads and descriptors from `/proc`), `protocol`
//!   ([`Channel`], [`close_code`], client messages, envelopes and frames: pure, no I/O),
//!   `security` (viewer and admin tokens, allowed origins), and `tls_config` (the TLS
//!   certificate and key made into a rustls configuration, reloadable).
//! - `hub`: the core. Shared state kept to the rings, the `seq` and epoch, shutdown and
//!   admission (`hub/shared.rs`); the [`Broadcaster`] and its [`Frame`]s (`broadcast.rs`);
//!   one shard per core, generic over its client (`shard.rs`: accept, distribute, heartbeat
//!   sweep, drain); a shard's subscription index (`fanout.rs`) and each client's bounded
//!   queue (`queue.rs`); counters ([`HubStats`], `counters.rs`); [`HubProbe`] and
//!   [`ShutdownTrigger`]. It knows nothing of REST, Redis or sources: the connection code
//!   is its shards' client, and whatever wants every broadcast plugs in as a `FrameTap`.
//! - `connection`: one client socket: state and lifecycle (`mod.rs`), the bounded request head
//!   (`head.rs`, rules in `handshake.rs`), the reader (`reader.rs`: frames decoded in the
//!   shard's scratch buffer by `decoder.rs`, the protocol's messages acted on) and the writer (`writer.rs`: one `sendmsg` of the
//!   shared frames). What is not a WebSocket upgrade goes to a `Requests` handler.
//! - `broker`: what a broker records ([`Recorder`], [`TopicMeter`]), its topics
//!   ([`TopicManager`]) and groups ([`GroupCoordinator`]), the snapshot model of PROTOCOL.md
//!   ([`MonitoringMetrics`], `snapshot.rs`), where snapshots come from ([`MetricsSource`],
//!   [`StandardSource`]) and the [`Ticker`] that broadcasts one per interval.
//! - `http`: the `Requests` handler on hyper: the dashboard, health, Prometheus text
//!   (`prometheus.rs`), and the REST API from one typed table of requests (`routes.rs`)
//!   answered by this instance's services or a relay's (`rest.rs`).
//! - `sources`: the simulated broker ([`DemoBroker`], `demo/`), a real Kafka-compatible
//!   cluster watched over the Kafka protocol (`kafka/`: the client, one poll's model, the view
//!   that turns polls into snapshots, events and lag; [`KafkaConfig`],
//!   [`HubHandle::watch_kafka`]) and the Redis [`Relay`] between instances (`relay/`: its
//!   threads, wire format, RESP client and REST proxy).
//! - `server`: the running application ([`Hub`], [`HubHandle`]: the hub core with its
//!   connections and HTTP side, REST services, relay and ticker plugged in), and the
//!   server binary's [`server::Options`] and [`server::run`]; `main.rs` only parses options,
//!   starts logging and calls it.
//!
//! ```no_run
//! use takhin_monitor::{Hub, HubConfig};
//!
//! let hub = Hub::start(HubConfig::default()).expect("hub starts");
//! let broadcaster = hub.broadcaster();
//! broadcaster.topic_created("orders", 12).expect("encodes");
//! hub.shutdown().expect("clean shutdown");
//! ```

mod broker;
mod config;
mod connection;
mod error;
mod http;
mod hub;
mod process;
mod protocol;
mod security;
pub mod server;
mod sources;
mod tls_config;

pub use crate::broker::{
    valid_topic_name, CanaryInfo, ClusterHealth, ConsumerLag, GroupCoordinator, GroupDetail,
    GroupInfo, Latency, MetricsSource, MonitoringMetrics, PartitionLag, PartitionOffset, Recorder,
    SourceInfo, StandardSource, Throughput, Ticker, TopicDetail, TopicError, TopicInfo, TopicLag,
    TopicManager, TopicMeter, TopicStats, DEAD_STATE, DEFAULT_METRICS_INTERVAL, INITIAL_STATE,
    MAX_PARTITIONS, MAX_TOPIC_NAME,
};
pub use crate::config::{Cores, HubConfig};
pub use crate::error::{BroadcastError, ConfigError, Error, RelayUrlError, ShardFailure};
pub use crate::hub::{Broadcaster, Frame, HubProbe, HubStats, ShutdownTrigger, TlsReloader};
pub use crate::protocol::{close_code, Channel, ChannelError, MAX_CHANNEL_LEN};
pub use crate::server::{Hub, HubHandle};
pub use crate::sources::{
    DemoBroker, DemoConfig, KafkaConfig, KafkaError, Relay, RelayConfig, RelayRole, RelayStats,
    WatchError,
};
pub use crate::tls_config::{TlsFiles, TlsLoadError};
pub use tungstenite::protocol::WebSocketConfig;

/// Defaults of [`HubConfig`], as named constants.
pub mod defaults {
    pub use crate::config::{
        DEFAULT_CLIENT_QUEUE, DEFAULT_CLOSE_TIMEOUT, DEFAULT_COMPRESSION_LEVEL,
        DEFAULT_COMPRESSION_THRESHOLD, DEFAULT_EXECUTOR_IO_MEMORY, DEFAULT_HANDSHAKE_TIMEOUT,
        DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_FRAMES, DEFAULT_HTTP_IDLE_TIMEOUT, DEFAULT_LISTEN,
        DEFAULT_LISTEN_BACKLOG, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADERS,
        DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_REPLY_BACKLOG, DEFAULT_MAX_REQUEST_BODY,
        DEFAULT_MAX_REQUEST_HEAD, DEFAULT_MAX_SUBSCRIPTIONS, DEFAULT_PING_INTERVAL,
        DEFAULT_PONG_WAIT, DEFAULT_READ_BUFFER, DEFAULT_RING_SIZE, DEFAULT_SHUTDOWN_TIMEOUT,
        DEFAULT_WRITE_WAIT, DEFAULT_WS_PATH,
    };
}

/// Internals exposed for the cargo-fuzz targets in `fuzz/` only; not a stable API.
#[doc(hidden)]
pub mod fuzz_support;

/// The Kafka source's client, exposed for the integration tests only (they drive a real broker
/// with its admin calls); not a stable API.
#[doc(hidden)]
pub mod kafka_support {
    pub use crate::sources::kafka::client::{
        Client, ClientError, DEFAULT_CLIENT_ID, DEFAULT_REQUEST_TIMEOUT,
    };
}

/// Internals exposed for the criterion benches only; not a stable API.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::hub::fanout::{ClientLink, Delivery, Fanout, Subscribed};
    pub use crate::hub::queue::OutQueue;
    pub use crate::hub::HubShared;
    /// The relay's RESP client, dialing (TLS, `AUTH`) and wire format, as its threads use them
    /// (benches/relay_client.rs).
    pub use crate::sources::relay::bench as relay;

    /// A broadcaster over bare rings, with no executors behind them.
    pub fn rings(
        shards: usize,
        ring_size: usize,
    ) -> (std::sync::Arc<HubShared>, crate::Broadcaster) {
        let shared = std::sync::Arc::new(HubShared::new(shards, ring_size));
        (shared.clone(), crate::Broadcaster::new(shared))
    }

    /// Pops one frame from a shard's ring.
    pub fn pop(shared: &HubShared, shard: usize) -> Option<crate::Frame> {
        shared.links[shard].ring.pop()
    }

    /// Empties a client's queue as a writer would after sending it all.
    pub fn drain(link: &ClientLink) -> u64 {
        let mut out = link.out.borrow_mut();
        let n: usize = out.slices(usize::MAX).map(<[u8]>::len).sum();
        out.advance(n).frames
    }
}
