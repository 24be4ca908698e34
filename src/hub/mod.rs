//! The hub core: one pinned glommio executor per core, each with its own SO_REUSEPORT
//! listener, its ring and its shard; the broadcaster that feeds the rings; each shard's
//! fan-out index and its clients' queues; the counters.
//!
//! It knows nothing of REST, Redis or sources, and of HTTP only that a connection may idle
//! between requests (the sweep times it out): the connection code plugs in as the shards'
//! [`shard::Client`], and whatever else wants every broadcast as a [`FrameTap`].

pub(crate) mod broadcast;
pub(crate) mod counters;
pub(crate) mod deflate;
pub(crate) mod fanout;
pub(crate) mod history;
pub(crate) mod queue;
pub(crate) mod shard;
pub(crate) mod shared;

pub use self::broadcast::{Broadcaster, Frame};
pub use self::counters::HubStats;
pub(crate) use self::shared::FrameTap;
pub use self::shared::HubShared;

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

use crate::config::HubConfig;
use crate::error::{Error, ShardFailure};
use crate::hub::shard::{Client, Shard};
use crate::protocol::Channel;
use crate::tls_config::{TlsLoadError, TlsReloadable};

/// The running shards: one pinned executor per core. Dropping it shuts them down.
#[derive(Debug)]
pub(crate) struct Engine {
    shared: Arc<HubShared>,
    local_addr: SocketAddr,
    cores: Vec<usize>,
    threads: Vec<ExecutorJoinHandle<()>>,
    /// Held while the hub runs: no other hub serves its port (see `instance_lock`).
    _instance: Option<std::os::unix::net::UnixListener>,
}

impl Engine {
    /// Binds the listeners, starts one pinned executor per configured core, each serving its
    /// connections as `C`, and returns once every shard serves. Errors (bad configuration,
    /// address in use, an executor that cannot start) are returned here, before anything runs.
    ///
    /// `context` builds what the connections of every core share, from the hub's shared state.
    pub(crate) fn start<C: Client>(
        config: HubConfig,
        context: impl FnOnce(&Arc<HubShared>) -> Arc<C::Context>,
    ) -> Result<Self, Error> {
        config.assert_valid()?;
        let cores = config.core_ids()?;
        // Read before anything listens: an unusable certificate or key refuses the start.
        let tls = config.tls.clone().map(TlsReloadable::new).transpose()?;
        let (listeners, local_addr, instance) = bind_all(&config, cores.len())?;
        let history = history::HistoryLimits {
            frames: config.history_frames,
            age: config.history_age,
        };
        let shared = Arc::new(HubShared::with_history(
            cores.len(),
            config.ring_size,
            history,
        ));
        if let Some(tls) = tls {
            shared.tls.set(tls).expect("a new hub's TLS is unset");
        }
        let context = context(&shared);
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut engine = Self {
            shared: shared.clone(),
            local_addr,
            cores: cores.clone(),
            threads: Vec::new(),
            _instance: instance,
        };
        for (id, (&core, fd)) in cores.iter().zip(listeners).enumerate() {
            let (config, shared, ready) = (config.clone(), shared.clone(), ready_tx.clone());
            let context = context.clone();
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(core))
                .name(&format!("takhin-shard-{id}"))
                .io_memory(config.executor_io_memory)
                .spawn(move || async move {
                    // SAFETY: `fd` is a bound, listening socket whose ownership moved here.
                    let listener = unsafe { TcpListener::from_raw_fd(fd) };
                    let _ = ready.send(id);
                    let shard = Shard::<C>::new(id, config, shared, context);
                    shard::run(Rc::new(shard), listener, fd).await;
                });
            match spawned {
                Ok(t) => engine.threads.push(t),
                Err(e) => {
                    // SAFETY: the executor never started, so the descriptor is still ours.
                    drop(unsafe { Socket::from_raw_fd(fd) });
                    let _ = engine.stop();
                    return Err(Error::Shard {
                        shard: id,
                        cause: ShardFailure::Start(e.into()),
                    });
                }
            }
        }
        drop(ready_tx);
        for _ in 0..cores.len() {
            if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
                return Err(engine.stop().err().unwrap_or(Error::Shard {
                    shard: 0,
                    cause: ShardFailure::NotReady,
                }));
            }
        }
        info!(%local_addr, ?cores, "hub listening");
        warn_if_exposed(&config, local_addr);
        Ok(engine)
    }

    pub(crate) fn shared(&self) -> &Arc<HubShared> {
        &self.shared
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(crate) fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// Begins the graceful shutdown and waits for every shard.
    pub(crate) fn stop(&mut self) -> Result<(), Error> {
        self.shared.begin_shutdown();
        self.join()
    }

    /// Waits until every shard stops.
    pub(crate) fn join(&mut self) -> Result<(), Error> {
        let mut result = Ok(());
        for (shard, t) in self.threads.drain(..).enumerate() {
            if let Err(e) = t.join() {
                result = Err(Error::Shard {
                    shard,
                    cause: ShardFailure::Ended(e.into()),
                });
            }
        }
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop();
        }
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

/// Binds one SO_REUSEPORT listener per shard on the same address, holding the port's instance
/// lock (see [`instance_lock`]). Port 0 resolves once: the first socket is bound, the port the
/// kernel chose is locked, and only then does anything listen. The kernel may give a port 0
/// bind a port that another process's SO_REUSEPORT listeners already use (seen when two test
/// runs started hubs at once: one hub answered the other's requests); a port whose lock is
/// taken is let go (never having listened, it took no connection) and another one asked for.
fn bind_all(
    config: &HubConfig,
    n: usize,
) -> Result<
    (
        Vec<RawFd>,
        SocketAddr,
        Option<std::os::unix::net::UnixListener>,
    ),
    Error,
> {
    let mut addr = config.listen;
    let (first, lock) = if addr.port() == 0 {
        let mut tries = 0;
        loop {
            let socket = bind_one(addr)?;
            let bound = socket.local_addr()?.as_socket();
            let bound = bound.ok_or_else(|| std::io::Error::other("listener has no IP address"))?;
            match instance_lock(bound) {
                Ok(lock) => {
                    addr = bound;
                    break (socket, lock);
                }
                Err(Error::AddressInUse(_)) if tries < 32 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    } else {
        let lock = instance_lock(addr)?;
        (bind_one(addr)?, lock)
    };
    let mut fds = Vec::with_capacity(n);
    let mut first = Some(first);
    for _ in 0..n {
        let socket = match first.take() {
            Some(socket) => socket,
            None => bind_one(addr)?,
        };
        // Accepted sockets inherit TCP_NODELAY from their listener: no call per connection.
        socket.set_nodelay(true)?;
        socket.listen(config.listen_backlog)?;
        fds.push(socket.into_raw_fd());
    }
    Ok((fds, addr, lock))
}

/// A TCP socket bound to `addr` with SO_REUSEPORT (so every shard's can share the port), not
/// listening yet.
fn bind_one(addr: SocketAddr) -> Result<Socket, Error> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into()).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            Error::AddressInUse(format!("{addr}: address in use ({e})").into())
        }
        _ => Error::Io(e),
    })?;
    Ok(socket)
}

/// One hub per port on this host: the shards' listeners share their port through
/// SO_REUSEPORT, which a second process of the same user could join, silently taking part of
/// the new connections. Before binding, the hub takes an abstract Unix socket named after the
/// port (no file; the kernel frees it when the process ends, however it ends); a second hub
/// asking for the same port finds it taken and stops with [`Error::AddressInUse`]. A hub asked
/// for port 0 locks the port the kernel gave it (see [`bind_all`]).
fn instance_lock(addr: SocketAddr) -> Result<Option<std::os::unix::net::UnixListener>, Error> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    if addr.port() == 0 {
        return Ok(None);
    }
    let name = format!("takhin-monitor/port/{}", addr.port());
    let lock = UnixAddr::from_abstract_name(name.as_bytes())?;
    match UnixListener::bind_addr(&lock) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::AddressInUse(
            format!(
                "{addr}: address in use (another takhin-monitor serves port {} on this host)",
                addr.port()
            )
            .into(),
        )),
        Err(e) => Err(Error::Io(e)),
    }
}

/// A `Clone + Send` way to begin a graceful shutdown from another thread (a signal handler
/// thread, for example).
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(Arc<HubShared>);

impl ShutdownTrigger {
    pub(crate) fn new(shared: Arc<HubShared>) -> Self {
        Self(shared)
    }

    /// Begins the graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.0.begin_shutdown();
    }
}

/// A `Clone + Send` way to reload the port's TLS certificate and key from another thread (the
/// server's SIGHUP handler): new connections take the new ones, open ones keep theirs.
#[derive(Debug, Clone)]
pub struct TlsReloader(Arc<HubShared>);

impl TlsReloader {
    /// `None` when the hub does not speak TLS.
    pub(crate) fn new(shared: Arc<HubShared>) -> Option<Self> {
        shared.tls.get().is_some().then_some(Self(shared))
    }

    /// Reads the certificate and key files again. On an error (it names the file and the
    /// fault) the hub keeps serving the ones it had.
    pub fn reload(&self) -> Result<(), TlsLoadError> {
        match self.0.tls.get() {
            Some(tls) => tls.reload(),
            None => Ok(()),
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

    /// Whether this hub's broadcasts also reach subscribers it cannot see (a relay origin's
    /// reach the other instances' clients): then any detail channel may be wanted, and the
    /// ticker sends every one its source knows.
    pub fn remote_subscribers(&self) -> bool {
        self.shared.tap().is_some_and(|t| t.remote_subscribers())
    }

    /// The `topic:` and `group:` channels that have at least one subscriber on some core of
    /// this hub.
    pub fn detail_channels(&self) -> Vec<Channel> {
        let mut all: Vec<Channel> = Vec::new();
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

    /// Messages broadcast so far (the last `seq`).
    pub fn broadcasts(&self) -> u64 {
        self.shared.last_seq()
    }

    /// The broadcast history: frames held and their encoded bytes.
    pub fn history(&self) -> (usize, usize) {
        (self.shared.history.len(), self.shared.history.bytes())
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
