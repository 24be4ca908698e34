//! Everything one core owns: its listener, its connections, their queues, its subscription
//! index and its one heartbeat sweep. Only immutable `Arc`'d frames arrive, through this
//! core's ring; what the shard shares with other threads is its counters (atomics) and the
//! list of detail channels its clients subscribe to, published for the ticker under a mutex
//! only when it changes.
//!
//! The shard is generic over its [`Client`]: the connection part implements it, so the hub
//! drives connections (accept, write a batch, heartbeat, close) without knowing how they read
//! or what else the port serves.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use tracing::{debug, info, warn};

use crate::config::HubConfig;
use crate::hub::counters::ShardStats;
use crate::hub::deflate::Deflater;
use crate::hub::fanout::{ClientLink, Fanout};
use crate::hub::shared::HubShared;
use crate::protocol::close_code;

/// Frames the distributor moves before it lets the writers run.
const DISTRIBUTE_BATCH: usize = 256;

/// Clients written between two chances to yield during a pass (see `flush_broadcasts`).
const FLUSH_SLICE: usize = 64;

/// How soon the connections' tasks (accepts, reads, HTTP requests such as publishes) must run
/// when they have work, even while the distributor writes a pass over thousands of sockets.
const CONNECTION_LATENCY: Duration = Duration::from_millis(1);

/// Connections accepted in a row before the shard's other tasks run.
const ACCEPT_BURST: usize = 64;

/// What a shard needs of its connections. `connection::Conn` is the implementation; the
/// shard is generic over it so that the hub does not depend on the connection code.
pub(crate) trait Client: AsRef<ClientLink> + Sized + 'static {
    /// What every connection of the hub shares, whatever its core (the handler of requests
    /// that are not WebSocket upgrades, for example).
    type Context: ?Sized + Send + Sync + 'static;

    /// What the connections of one shard share (scratch buffers, for example).
    type Local: Default;

    /// Serves one accepted socket to its end; registers itself in the shard's fan-out.
    fn serve(shard: Rc<Shard<Self>>, stream: TcpStream) -> impl Future<Output = ()> + 'static;

    /// Writes what the distributor just queued, now if the client's writer is idle, else
    /// hands it to the writer.
    fn write_now(&self, shard: &Shard<Self>);

    /// The times the heartbeat sweep looks at.
    fn timing(&self, now: Instant) -> Timing;

    /// For the sweep: records whether the client's TCP stack acknowledged data since the last
    /// look (asked only of a stalled writer, or of a `quiet` client about to reach the pong
    /// wait).
    fn note_acknowledged(&self, now: Instant, quiet: bool);

    /// Queues a server ping.
    fn ping(&self, now: Instant);

    /// Whether this is an upgraded WebSocket client.
    fn is_websocket(&self) -> bool;

    /// Starts a close handshake with `code`.
    fn close(&self, code: u16, reason: &str);

    /// Ends the connection now.
    fn kill(&self);

    /// Ends the connection now and resets it (RST) when the socket closes, dropping what the
    /// kernel still holds for the peer: for a peer the hub gave up on (no pong, no progress,
    /// no close answer, a head that never ended). A plain close would leave the kernel
    /// holding the unsent bytes behind a FIN for minutes (FIN_WAIT1 against a zero window),
    /// and a peer still sending into a zero window of ours would wait as long (nginx's
    /// `reset_timedout_connection`).
    fn abort(&self) {
        self.kill();
    }
}

/// One core's state. `Rc`-shared by the tasks of this core only.
pub(crate) struct Shard<C: Client> {
    pub(crate) id: usize,
    pub(crate) config: Arc<HubConfig>,
    pub(crate) shared: Arc<HubShared>,
    /// What the connections of every core share.
    pub(crate) context: Arc<C::Context>,
    pub(crate) fanout: RefCell<Fanout<C>>,
    /// What this shard's connections share.
    pub(crate) local: C::Local,
    pub(crate) draining: Cell<bool>,
    log_limit: RateLimit,
    /// The fan-out's interest version last published to the ticker.
    published_interest: Cell<u64>,
}

impl<C: Client> Shard<C> {
    pub(crate) fn new(
        id: usize,
        config: Arc<HubConfig>,
        shared: Arc<HubShared>,
        context: Arc<C::Context>,
    ) -> Self {
        let mut fanout = Fanout::new(config.client_queue, config.max_subscriptions);
        // The distributor writes each batch of broadcasts itself (see `flush_broadcasts`).
        fanout.defer_wakes();
        if config.compression {
            fanout.set_deflater(Deflater::new(&config, shared.clone(), id));
        }
        Self {
            id,
            config,
            shared,
            context,
            fanout: RefCell::new(fanout),
            local: C::Local::default(),
            draining: Cell::new(false),
            log_limit: RateLimit::default(),
            published_interest: Cell::new(0),
        }
    }

    /// Publishes this shard's subscribed `topic:`/`group:` channels for the ticker, when they
    /// changed.
    pub(crate) fn publish_interest(&self) {
        let Ok(fanout) = self.fanout.try_borrow() else {
            return;
        };
        let version = fanout.interest_version();
        if version != self.published_interest.get() {
            let mut shared = self.shared.interest[self.id]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *shared = fanout.interest();
            self.published_interest.set(version);
        }
    }

    pub(crate) fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    /// Logs at most once a second per shard, with the count of what was held back.
    pub(crate) fn warn_limited(&self, what: &str) {
        if let Some(suppressed) = self.log_limit.allow(Instant::now()) {
            warn!(shard = self.id, suppressed, "{what}");
        }
    }
}

/// One log line per second, counting what it held back.
#[derive(Debug, Default)]
struct RateLimit {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimit {
    fn allow(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

/// Runs the shard until shutdown, then drains it.
/// `listen_fd` is `listener`'s descriptor, used to stop listening at the end.
pub(crate) async fn run<C: Client>(shard: Rc<Shard<C>>, listener: TcpListener, listen_fd: RawFd) {
    // Connections in a task queue of their own, whose latency the scheduler keeps by making the
    // distributor (in the executor's default queue) yield between slices of a pass: a publish
    // is answered mid-pass, and what it sends joins the next pass's batch. Every task a
    // connection spawns (its writer) goes into the same queue.
    let connections = glommio::executor().create_task_queue(
        glommio::Shares::default(),
        glommio::Latency::Matters(CONNECTION_LATENCY),
        "connections",
    );
    let accept =
        glommio::spawn_local_into(accept_loop(shard.clone(), listener, listen_fd), connections)
            .expect("the queue was created on this executor");
    let sweep = glommio::spawn_local_into(sweep_loop(shard.clone()), connections)
        .expect("the queue was created on this executor");
    distribute(&shard).await;
    // Still listening while draining: health checks see /readyz answer 503, and new upgrades
    // are refused with 503 and Retry-After rather than with a closed port.
    drain(&shard).await;
    // An accept in flight in io_uring holds its own reference to the socket, so closing the
    // descriptor would not stop it listening at once; shutdown() does, synchronously.
    // SAFETY: `listen_fd` is this shard's listening socket, owned by the accept task.
    unsafe { libc::shutdown(listen_fd, libc::SHUT_RDWR) };
    accept.cancel().await;
    stop_remaining(&shard).await;
    sweep.cancel().await;
    debug!(shard = shard.id, "shard stopped");
}

/// Accepts connections until cancelled: one through glommio (which waits on the ring when the
/// backlog is empty, the listener blocking as kernels before 5.18 need), then the rest of the
/// backlog with `accept4` straight on the listener, non-blocking for the while, at most
/// [`ACCEPT_BURST`] before the shard's other tasks run. A burst of connections so costs no
/// `fcntl` per socket (glommio makes three on the listener for every accept).
async fn accept_loop<C: Client>(shard: Rc<Shard<C>>, listener: TcpListener, fd: RawFd) {
    // SAFETY: `fd` is the open listening socket `listener` owns; F_GETFL reads its flags.
    let blocking = unsafe { libc::fcntl(fd, libc::F_GETFL) } & !libc::O_NONBLOCK;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                shard.stats().accepted_total.fetch_add(1, Relaxed);
                glommio::spawn_local(C::serve(shard.clone(), stream)).detach();
            }
            Err(err) => {
                // Out of descriptors or memory: back off a little instead of spinning.
                shard.warn_limited(&format!("accept failed: {err}"));
                Timer::new(Duration::from_millis(5)).await;
                continue;
            }
        }
        while accept_burst(&shard, fd, blocking) == ACCEPT_BURST {
            // More may wait: let the new connections (and everything else) run first.
            futures_lite::future::yield_now().await;
        }
    }
}

/// Accepts what waits in the backlog, [`ACCEPT_BURST`] at most; returns how many.
fn accept_burst<C: Client>(shard: &Rc<Shard<C>>, fd: RawFd, blocking: libc::c_int) -> usize {
    // SAFETY: `fd` is the open listening socket; F_SETFL sets its status flags only, and the
    // listener is blocking again before this returns.
    unsafe { libc::fcntl(fd, libc::F_SETFL, blocking | libc::O_NONBLOCK) };
    let mut accepted = 0;
    while accepted < ACCEPT_BURST {
        // SAFETY: a listening socket; the peer's address is not asked for.
        let r = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if r < 0 {
            // Empty, or out of descriptors: glommio's accept waits or reports it.
            break;
        }
        accepted += 1;
        shard.stats().accepted_total.fetch_add(1, Relaxed);
        // SAFETY: `r` is a socket just accepted, owned by nothing else.
        let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(r) };
        glommio::spawn_local(C::serve(shard.clone(), stream)).detach();
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFL, blocking) };
    accepted
}

/// Moves frames from this core's ring to the subscribed clients' queues, until shutdown.
async fn distribute<C: Client>(shard: &Shard<C>) {
    let link = &shard.shared.links[shard.id];
    // Ring drops already reported to this shard's clients.
    let mut ring_lost_seen = shard.stats().ring_dropped_total.load(Relaxed);
    loop {
        let go = poll_fn(|cx| {
            if shard.shared.shutdown.load(Relaxed) {
                return Poll::Ready(false);
            }
            if !link.ring.is_empty() {
                return Poll::Ready(true);
            }
            link.waker.register(cx.waker());
            if shard.shared.shutdown.load(Relaxed) || !link.ring.is_empty() {
                Poll::Ready(!shard.shared.shutdown.load(Relaxed))
            } else {
                Poll::Pending
            }
        })
        .await;
        if !go {
            return;
        }
        let lost = shard.stats().ring_dropped_total.load(Relaxed);
        if lost > ring_lost_seen {
            shard.fanout.borrow().mark_all_missed(lost - ring_lost_seen);
            ring_lost_seen = lost;
        }
        let (mut frames, mut queued, mut dropped) = (0u64, 0u64, 0u64);
        while let Some(frame) = link.ring.pop() {
            let d = shard.fanout.borrow_mut().deliver(&frame);
            frames += 1;
            queued += d.queued;
            dropped += d.dropped;
            if frames as usize % DISTRIBUTE_BATCH == 0 {
                flush_broadcasts(shard).await;
                futures_lite::future::yield_now().await;
            }
        }
        flush_broadcasts(shard).await;
        let stats = shard.stats();
        stats.broadcasts_total.fetch_add(frames, Relaxed);
        stats.deliveries_total.fetch_add(queued, Relaxed);
        if dropped > 0 {
            stats.queue_dropped_total.fetch_add(dropped, Relaxed);
        }
    }
}

/// Writes the batch just distributed: every client that got frames gets one `sendmsg` of
/// all it has queued, straight from here when its writer is idle. No task is woken per
/// client; a client whose socket is full, or whose queue needs the writer (a close, an
/// error), is handed to its connection's task. Every [`FLUSH_SLICE`] clients the pass gives the
/// scheduler a chance to run the connections' tasks (when their latency is due): frames
/// published meanwhile wait in the ring for the next pass, which takes them all at once.
async fn flush_broadcasts<C: Client>(shard: &Shard<C>) {
    let keys = shard.fanout.borrow_mut().take_dirty();
    for (i, &key) in keys.iter().enumerate() {
        let client = shard.fanout.borrow().take_dirty_client(key);
        if let Some(client) = client {
            client.write_now(shard);
        }
        if i % FLUSH_SLICE == FLUSH_SLICE - 1 {
            glommio::yield_if_needed().await;
        }
    }
    shard.fanout.borrow_mut().return_dirty(keys);
}

/// Where a connection is in its life, as the sweep sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the request head.
    Handshake,
    /// A WebSocket client.
    Open,
    /// Our close frame is out (or the peer's came in): waiting for the socket to finish.
    Closing,
    /// Served by the HTTP server (keep-alive between requests).
    Http,
}

/// What the sweep does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    Nothing,
    Ping,
    /// Close the socket; the reason is logged and counted.
    Kill(Expired),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    Handshake,
    Pong,
    Write,
    Close,
    HttpIdle,
}

/// The times the sweep looks at, read from a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) phase: Phase,
    /// When the current phase began.
    pub(crate) since: Instant,
    pub(crate) last_seen: Instant,
    pub(crate) last_ping: Instant,
    pub(crate) stalled_since: Option<Instant>,
}

/// The heartbeat rules, as a pure function of the connection's times and `now`.
pub(crate) fn sweep_action(t: &Timing, now: Instant, cfg: &HubConfig) -> Sweep {
    let over = |since: Instant, limit: Duration| now.saturating_duration_since(since) >= limit;
    match t.phase {
        Phase::Handshake if over(t.since, cfg.handshake_timeout) => Sweep::Kill(Expired::Handshake),
        Phase::Closing if over(t.since, cfg.close_timeout) => Sweep::Kill(Expired::Close),
        Phase::Http if over(t.since, cfg.http_idle_timeout) => Sweep::Kill(Expired::HttpIdle),
        Phase::Open | Phase::Closing => {
            if t.stalled_since.is_some_and(|s| over(s, cfg.write_wait)) {
                Sweep::Kill(Expired::Write)
            } else if t.phase == Phase::Open && over(t.last_seen, cfg.pong_wait) {
                Sweep::Kill(Expired::Pong)
            } else if t.phase == Phase::Open && over(t.last_ping, cfg.ping_interval) {
                Sweep::Ping
            } else {
                Sweep::Nothing
            }
        }
        Phase::Handshake | Phase::Http => Sweep::Nothing,
    }
}

/// The one heartbeat timer of this shard: pings, pong deadlines, write stalls, slow handshakes
/// and lingering closes of every connection.
async fn sweep_loop<C: Client>(shard: Rc<Shard<C>>) {
    let period = shard.config.sweep_interval();
    loop {
        Timer::new(period).await;
        let now = Instant::now();
        let fanout = shard.fanout.borrow();
        for (_, conn) in fanout.iter() {
            // Three sweeps before the pong wait ends, look for acknowledged data: two looks
            // before the deadline, the first only a baseline.
            let quiet = conn.is_websocket()
                && now.saturating_duration_since(conn.timing(now).last_seen) + 3 * period
                    >= shard.config.pong_wait;
            conn.note_acknowledged(now, quiet);
            match sweep_action(&conn.timing(now), now, &shard.config) {
                Sweep::Nothing => {}
                Sweep::Ping => conn.ping(now),
                Sweep::Kill(reason) => {
                    let stats = shard.stats();
                    let counter = match reason {
                        Expired::Pong => Some(&stats.pong_timeouts_total),
                        Expired::Write => Some(&stats.write_timeouts_total),
                        Expired::Handshake => Some(&stats.handshake_failures_total),
                        Expired::Close | Expired::HttpIdle => None,
                    };
                    if let Some(counter) = counter {
                        counter.fetch_add(1, Relaxed);
                    }
                    debug!(shard = shard.id, ?reason, "closing connection");
                    if reason == Expired::HttpIdle {
                        // Nothing is owed either way: a plain FIN.
                        conn.kill();
                    } else {
                        // A peer we gave up on: see `Client::abort`.
                        conn.abort();
                    }
                }
            }
        }
    }
}

/// Graceful shutdown of this shard: close 1001 to every WebSocket client, then wait for them to
/// go, up to the shutdown deadline.
async fn drain<C: Client>(shard: &Shard<C>) {
    shard.draining.set(true);
    let deadline = Instant::now() + shard.config.shutdown_timeout;
    let n = {
        let fanout = shard.fanout.borrow();
        // WebSocket clients only: a request still in its head is answered as usual (503 for
        // an upgrade, /readyz draining), not reset.
        for (_, conn) in fanout.iter().filter(|(_, c)| c.is_websocket()) {
            conn.close(close_code::GOING_AWAY, "server shutting down");
        }
        fanout.len()
    };
    info!(shard = shard.id, clients = n, "draining");
    // Every shard keeps listening (and answering /readyz with 503) until the clients of all
    // shards are gone: the kernel spreads new connections over every shard's listener, and a
    // shard that stopped early would leave the ones queued on it unanswered.
    let hard_stop = deadline + Duration::from_secs(1);
    loop {
        let everywhere = shard.shared.admitted();
        let here = shard.fanout.borrow().iter().any(|(_, c)| c.is_websocket());
        if (everywhere == 0 && !here) || Instant::now() >= hard_stop {
            return;
        }
        if Instant::now() >= deadline {
            for (_, conn) in shard.fanout.borrow().iter() {
                conn.kill();
            }
        }
        Timer::new(Duration::from_millis(10)).await;
    }
}

/// After the drain: ends what is left (HTTP connections, handshakes) and waits for their tasks.
async fn stop_remaining<C: Client>(shard: &Shard<C>) {
    for (_, conn) in shard.fanout.borrow().iter() {
        conn.kill();
    }
    while !shard.fanout.borrow().is_empty() {
        Timer::new(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HubConfig {
        HubConfig::default()
            .ping_interval(Duration::from_secs(54))
            .pong_wait(Duration::from_secs(60))
            .write_wait(Duration::from_secs(10))
    }

    fn timing(phase: Phase, t0: Instant) -> Timing {
        Timing {
            phase,
            since: t0,
            last_seen: t0,
            last_ping: t0,
            stalled_since: None,
        }
    }

    #[test]
    fn the_heartbeat_rules_follow_the_protocol_table() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let cfg = cfg();
        let open = timing(Phase::Open, t0);
        assert_eq!(sweep_action(&open, s(10), &cfg), Sweep::Nothing);
        assert_eq!(sweep_action(&open, s(54), &cfg), Sweep::Ping);
        assert_eq!(sweep_action(&open, s(60), &cfg), Sweep::Kill(Expired::Pong));
        let stalled = Timing {
            stalled_since: Some(s(1)),
            ..open
        };
        assert_eq!(sweep_action(&stalled, s(5), &cfg), Sweep::Nothing);
        assert_eq!(
            sweep_action(&stalled, s(11), &cfg),
            Sweep::Kill(Expired::Write)
        );
        let hs = timing(Phase::Handshake, t0);
        assert_eq!(sweep_action(&hs, s(4), &cfg), Sweep::Nothing);
        assert_eq!(
            sweep_action(&hs, s(5), &cfg),
            Sweep::Kill(Expired::Handshake)
        );
        let closing = timing(Phase::Closing, t0);
        assert_eq!(sweep_action(&closing, s(1), &cfg), Sweep::Nothing);
        assert_eq!(
            sweep_action(&closing, s(2), &cfg),
            Sweep::Kill(Expired::Close)
        );
    }

    #[test]
    fn the_log_limit_holds_back_and_counts() {
        let rl = RateLimit::default();
        let t0 = Instant::now();
        assert_eq!(rl.allow(t0), Some(0));
        assert_eq!(rl.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(rl.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(rl.allow(t0 + Duration::from_secs(1)), Some(2));
    }
}
