//! Starting and stopping the hub: one pinned glommio executor per core, each with its own
//! SO_REUSEPORT listener, its ring and its shard.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::broadcast::{Broadcaster, HubShared};
use crate::config::HubConfig;
use crate::error::Error;
use crate::groups::GroupCoordinator;
use crate::http::Services;
use crate::protocol::Channel;
use crate::shard::{self, Shard};
use crate::stats::HubStats;
use crate::topics::TopicManager;

/// The thread-per-core WebSocket hub.
#[derive(Debug)]
pub struct Hub;

impl Hub {
    /// Binds the listeners, starts one pinned executor per configured core and returns once
    /// every shard serves. Errors (bad configuration, address in use, an executor that cannot
    /// start) are returned here, before anything runs.
    pub fn start(config: HubConfig) -> Result<HubHandle, Error> {
        config.assert_valid()?;
        let cores = config.core_ids()?;
        let (listeners, local_addr) = bind_all(&config, cores.len())?;
        let shared = Arc::new(HubShared::new(cores.len(), config.ring_size));
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut handle = HubHandle {
            shared: shared.clone(),
            local_addr,
            cores: cores.clone(),
            threads: Vec::new(),
        };
        for (id, (&core, fd)) in cores.iter().zip(listeners).enumerate() {
            let (config, shared, ready) = (config.clone(), shared.clone(), ready_tx.clone());
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(core))
                .name(&format!("takhin-shard-{id}"))
                .io_memory(config.executor_io_memory)
                .spawn(move || async move {
                    // SAFETY: `fd` is a bound, listening socket whose ownership moved here.
                    let listener = unsafe { TcpListener::from_raw_fd(fd) };
                    let _ = ready.send(id);
                    shard::run(Rc::new(Shard::new(id, config, shared)), listener, fd).await;
                });
            match spawned {
                Ok(t) => handle.threads.push(t),
                Err(e) => {
                    // SAFETY: the executor never started, so the descriptor is still ours.
                    drop(unsafe { Socket::from_raw_fd(fd) });
                    let _ = handle.stop();
                    return Err(Error::Shard {
                        shard: id,
                        reason: e.to_string(),
                    });
                }
            }
        }
        drop(ready_tx);
        for _ in 0..cores.len() {
            if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
                let reason = handle
                    .stop()
                    .err()
                    .map_or_else(|| "executor did not start".to_owned(), |e| e.to_string());
                return Err(Error::Shard { shard: 0, reason });
            }
        }
        info!(%local_addr, ?cores, "hub listening");
        warn_if_exposed(&config, local_addr);
        Ok(handle)
    }
}

/// Beyond loopback, an open configuration is worth a warning at start.
fn warn_if_exposed(config: &HubConfig, addr: SocketAddr) {
    if addr.ip().is_loopback() {
        return;
    }
    if config.allowed_origins.is_empty() {
        warn!(%addr, "listening beyond loopback with no allowed origin: every origin is accepted");
    }
    if config.admin_token.is_none() {
        warn!(%addr, "listening beyond loopback with no admin token: anyone can change topics and publish");
    }
    if config.viewer_token.is_none() {
        warn!(%addr, "listening beyond loopback with no viewer token: anyone can watch");
    }
}

/// Binds one SO_REUSEPORT listener per shard on the same address (port 0 resolves once).
fn bind_all(config: &HubConfig, n: usize) -> Result<(Vec<RawFd>, SocketAddr), Error> {
    let mut addr = config.listen;
    let mut fds = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(config.listen_backlog)?;
        if addr.port() == 0 {
            let bound = socket.local_addr()?.as_socket();
            addr = bound.ok_or_else(|| std::io::Error::other("listener has no IP address"))?;
        }
        fds.push(socket.into_raw_fd());
    }
    Ok((fds, addr))
}

/// The running hub: its address, its broadcaster, its counters, and its shutdown.
///
/// Dropping the handle shuts the hub down too.
#[derive(Debug)]
pub struct HubHandle {
    shared: Arc<HubShared>,
    local_addr: SocketAddr,
    cores: Vec<usize>,
    threads: Vec<ExecutorJoinHandle<()>>,
}

/// A `Clone + Send` way to begin a graceful shutdown from another thread (a signal handler
/// thread, for example).
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(Arc<HubShared>);

impl ShutdownTrigger {
    /// Begins the graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.0.begin_shutdown();
    }
}

impl HubHandle {
    /// The address every shard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The cores running a shard, in shard order.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// A broadcaster for this hub, for any thread.
    pub fn broadcaster(&self) -> Broadcaster {
        Broadcaster::new(self.shared.clone())
    }

    /// A handle that begins shutdown from anywhere.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger(self.shared.clone())
    }

    /// A `Clone + Send + Sync` view of the hub's counters and subscriptions, for metrics
    /// sources and exporters.
    pub fn probe(&self) -> HubProbe {
        HubProbe {
            shared: self.shared.clone(),
        }
    }

    /// Joins a Redis relay (see the `relay` module docs in the README's deployment section):
    /// an [`crate::RelayRole::Origin`] publishes every broadcast and fans out what other origins
    /// publish; a [`crate::RelayRole::RelayOnly`] instance only fans out. The relay runs on its own two
    /// threads until the returned handle is dropped.
    pub fn start_relay(
        &self,
        config: crate::relay::RelayConfig,
        role: crate::relay::RelayRole,
    ) -> std::io::Result<crate::relay::Relay> {
        crate::relay::Relay::start(self.shared.clone(), config, role)
    }

    /// Serves the REST API (`/api/topics`, `/api/groups`) from these services. Until this is
    /// called those routes answer 503. Returns false if services were already attached.
    pub fn serve_api(&self, topics: TopicManager, groups: GroupCoordinator) -> bool {
        self.shared.api.set(Services { topics, groups }).is_ok()
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
        self.stop()
    }

    /// Waits until the hub stops (after a [`ShutdownTrigger::shutdown`]).
    pub fn wait(mut self) -> Result<(), Error> {
        self.join()
    }

    fn stop(&mut self) -> Result<(), Error> {
        self.shared.begin_shutdown();
        self.join()
    }

    fn join(&mut self) -> Result<(), Error> {
        let mut result = Ok(());
        for (shard, t) in self.threads.drain(..).enumerate() {
            if let Err(e) = t.join() {
                result = Err(Error::Shard {
                    shard,
                    reason: e.to_string(),
                });
            }
        }
        result
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop();
        }
    }
}

/// A read-only view of a running hub: counters and the detail channels clients subscribe to.
#[derive(Debug, Clone)]
pub struct HubProbe {
    shared: Arc<HubShared>,
}

impl HubProbe {
    /// The counters summed over every shard.
    pub fn stats(&self) -> HubStats {
        let mut total = HubStats::default();
        for s in self.shard_stats() {
            total.add(&s);
        }
        total
    }

    /// Each shard's counters, in shard order.
    pub fn shard_stats(&self) -> Vec<HubStats> {
        self.shared.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// Open WebSocket clients across all cores.
    pub fn active_connections(&self) -> u64 {
        self.stats().connections
    }

    /// Number of shards (cores).
    pub fn shards(&self) -> usize {
        self.shared.links.len()
    }

    /// The `topic:` and `group:` channels that have at least one subscriber on some core. An
    /// origin in a relay does not know the subscribers of the other instances: every topic and
    /// group then counts.
    pub fn detail_channels(&self) -> Vec<Channel> {
        let mut all: Vec<Channel> = Vec::new();
        let relaying = self
            .shared
            .relay
            .get()
            .is_some_and(|r| r.role == crate::relay::RelayRole::Origin);
        if let (true, Some(api)) = (relaying, self.shared.api.get()) {
            all.extend(api.topics.list().iter().map(|t| Channel::topic(&t.name)));
            all.extend(
                api.groups
                    .list()
                    .iter()
                    .map(|g| Channel::group(&g.group_id)),
            );
            return all;
        }
        for interest in self.shared.interest.iter() {
            let interest = interest.lock().unwrap_or_else(|e| e.into_inner());
            for c in interest.iter() {
                if !all.contains(c) {
                    all.push(c.clone());
                }
            }
        }
        all
    }

    pub(crate) fn new(shared: Arc<HubShared>) -> Self {
        Self { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<HubShared> {
        &self.shared
    }

    /// Messages broadcast so far (the last `seq`).
    pub fn broadcasts(&self) -> u64 {
        self.shared.last_seq()
    }

    pub(crate) fn broadcast_histogram(&self) -> ([u64; 12], u64, f64) {
        self.shared.broadcast_seconds.read()
    }

    pub(crate) fn tick_histogram(&self) -> ([u64; 12], u64, f64) {
        self.shared.tick_seconds.read()
    }

    pub(crate) fn record_tick(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        // Counted once, on shard 0's counters; the time goes to the tick histogram.
        self.shared.stats[0].ticks_total.fetch_add(1, Relaxed);
        self.shared.tick_seconds.observe(took);
    }
}
