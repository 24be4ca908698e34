//! A running application: the hub core with its connections and its HTTP side ([`Hub`],
//! [`HubHandle`]), and what the binary builds from its options ([`Options`], [`run()`]).
//!
//! This is the one place that knows every part: it starts the `hub` engine with
//! `connection::Conn` as its clients and `http::Web` as the handler of what is not a
//! WebSocket upgrade, and plugs the REST services, the relay and the ticker in.

mod options;
mod run;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use self::options::{Options, SourceKind};
pub use self::run::run;
use crate::broker::{GroupCoordinator, MetricsSource, Ticker, TopicManager};
use crate::config::HubConfig;
use crate::connection::{Conn, Requests};
use crate::error::Error;
use crate::http::rest::LocalApi;
use crate::http::Web;
use crate::hub::{Broadcaster, Engine, HubProbe, HubStats, ShutdownTrigger, TlsReloader};
use crate::sources::kafka::KafkaSource;
use crate::sources::{KafkaConfig, Relay, RelayConfig, RelayRole, WatchError};

/// The thread-per-core WebSocket hub.
#[derive(Debug)]
pub struct Hub;

impl Hub {
    /// Binds the listeners, starts one pinned executor per configured core and returns once
    /// every shard serves. Errors (bad configuration, address in use, an executor that cannot
    /// start) are returned here, before anything runs.
    pub fn start(config: HubConfig) -> Result<HubHandle, Error> {
        let mut web = None;
        let engine = Engine::start::<Conn>(config, |shared| {
            let broadcaster = Broadcaster::new(shared.clone());
            let w = Arc::new(Web::new(broadcaster, HubProbe::new(shared.clone())));
            web = Some(w.clone());
            w as Arc<dyn Requests>
        })?;
        // Invariant: a started engine called the closure (before its shards started).
        let web = web.expect("Engine::start built the context");
        Ok(HubHandle { engine, web })
    }
}

/// The running hub: its address, its broadcaster, its counters, what it serves over REST,
/// and its shutdown.
///
/// Dropping the handle shuts the hub down too.
#[derive(Debug)]
#[must_use = "the hub shuts down when its handle is dropped"]
pub struct HubHandle {
    engine: Engine,
    web: Arc<Web>,
}

impl HubHandle {
    /// The address every shard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    /// The cores running a shard, in shard order.
    pub fn cores(&self) -> &[usize] {
        self.engine.cores()
    }

    /// A broadcaster for this hub, for any thread.
    pub fn broadcaster(&self) -> Broadcaster {
        Broadcaster::new(self.engine.shared().clone())
    }

    /// A handle that begins shutdown from anywhere.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger::new(self.engine.shared().clone())
    }

    /// Reloads the port's TLS certificate and key (what SIGHUP does to the server); `None`
    /// when the hub does not speak TLS.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        TlsReloader::new(self.engine.shared().clone())
    }

    /// A `Clone + Send + Sync` view of the hub's counters and subscriptions, for metrics
    /// sources and exporters.
    pub fn probe(&self) -> HubProbe {
        HubProbe::new(self.engine.shared().clone())
    }

    /// Serves the REST API (`/api/topics`, `/api/groups`) from these services. Until this is
    /// called those routes answer 503 (publishing works without them). Returns false if
    /// services (or a relay-only instance's API) were already attached.
    pub fn serve_api(&self, topics: TopicManager, groups: GroupCoordinator) -> bool {
        let api = LocalApi::new(self.broadcaster(), topics, groups);
        self.web.attach_api(Arc::new(api))
    }

    /// Joins a Redis relay (see the README's deployment section): a [`RelayRole::Origin`]
    /// publishes every broadcast and fans out what other origins publish; a
    /// [`RelayRole::RelayOnly`] instance only fans out, and answers REST from the origin's
    /// relayed state. The relay runs on its own two threads until the returned handle is
    /// dropped.
    pub fn start_relay(&self, config: RelayConfig, role: RelayRole) -> std::io::Result<Relay> {
        Relay::start(self.engine.shared(), self.web.clone(), config, role)
    }

    /// Starts the [`Ticker`] for this hub: a snapshot from `source` every `interval`, and
    /// detail frames for the channels that have subscribers.
    pub fn start_ticker(
        &self,
        source: impl MetricsSource + 'static,
        interval: Duration,
    ) -> std::io::Result<Ticker> {
        Ticker::start(self.broadcaster(), self.probe(), source, interval)
    }

    /// Watches the Kafka-compatible cluster of `config`: every `interval` the cluster is
    /// polled once (on the ticker's thread) for the `metrics` snapshot, and `topic_created`,
    /// `topic_deleted` and `group_updated` are sent when its topics and groups change. REST
    /// reads answer from the latest poll, mutations are refused (501), and `/metrics` reports
    /// the source (`takhin_source_*`). The hub serves even when no broker answers.
    pub fn watch_kafka(
        &self,
        config: &KafkaConfig,
        interval: Duration,
    ) -> Result<Ticker, WatchError> {
        let source = KafkaSource::new(config, self.broadcaster(), self.probe())?;
        let watch = source.watch();
        if !self.web.attach_api(watch.clone()) {
            return Err(WatchError::ApiAttached);
        }
        self.web.add_exporter(watch);
        Ok(self.start_ticker(source, interval)?)
    }

    /// The counters summed over every shard.
    pub fn stats(&self) -> HubStats {
        self.probe().stats()
    }

    /// Each shard's counters, in shard order.
    pub fn shard_stats(&self) -> Vec<HubStats> {
        self.probe().shard_stats()
    }

    /// Open WebSocket clients across all cores.
    pub fn active_connections(&self) -> u64 {
        self.stats().connections
    }

    /// Graceful shutdown: stop accepting, send close 1001 to every client, wait for them up to
    /// the shutdown timeout, and stop every executor.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.engine.stop()
    }

    /// Waits until the hub stops (after a [`ShutdownTrigger::shutdown`]).
    pub fn wait(mut self) -> Result<(), Error> {
        self.engine.join()
    }
}
