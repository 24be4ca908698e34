//! Scale-out through Redis pub/sub: several hubs behind a load balancer see one stream.
//!
//! An instance with a source (the demo, REST mutations, the publish endpoint, an embedding
//! broker) is an *origin*: every frame it broadcasts is also handed, already encoded, to this
//! module's publisher thread, which `PUBLISH`es it once to `<prefix>:frames` (and keeps retained
//! frames in the hash `<prefix>:last`). Every instance runs a subscriber thread on
//! `<prefix>:frames` that fans what it receives out locally through the cores' rings, exactly
//! like a local broadcast; an origin skips its own frames (it delivered them already). A frame
//! keeps the `seq` and `epoch` of its origin, so a client that reconnects to another instance
//! can tell whether it missed anything.
//!
//! A *relay-only* instance (`--source relay`) has no source: it fans out, answers
//! `GET /api/topics` and `GET /api/groups` from the state the origin publishes on
//! `<prefix>:state`, and forwards REST mutations and publishes to the origin on
//! `<prefix>:commands` (answered 202).
//!
//! Redis work runs on these two threads only, never on a core: broadcasters push into a bounded
//! queue (dropping its oldest when Redis is away, counted), and an outage is logged, counted in
//! `/metrics` and retried with backoff (100 ms doubling to 5 s). On reconnecting, the subscriber
//! reloads the last values from `<prefix>:last` first, so new clients get the latest metrics at
//! once.
//!
//! Every connection either thread opens authenticates first when the URL holds credentials
//! (`AUTH [user] password`) and, with `rediss://`, is TLS (rustls, checked against the system's
//! roots or a `?ca=` file). Redis refusing them (a wrong password, an unknown user, an ACL that
//! lacks a command or channel) is logged with the address and the user, never the password,
//! counted in `takhin_relay_auth_failures_total` and retried with the same backoff.
//!
//! Here: the role ([`RelayRole`]), the counters ([`RelayStats`]), what the threads, the hub and
//! the HTTP side share ([`RelayLink`]) and the running [`Relay`]. The URL ([`RelayConfig`]) is
//! read in [`config`], the two threads are in [`threads`], the Redis client they use in [`resp`]
//! (connecting, with TLS, in [`dial`]), the relayed frames' format in [`wire`] and the REST side
//! in [`api`].

mod api;
mod config;
mod dial;
mod resp;
mod threads;
mod wire;

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;
use tracing::info;

pub use self::config::RelayConfig;
use self::dial::Dialer;
use self::threads::{publisher_loop, subscriber_loop};
use crate::http::prometheus::{Exporter, Text};
use crate::http::Web;
use crate::hub::{Broadcaster, Frame, FrameTap, HubShared};

/// The relay's Redis client as its threads drive it, for `benches/relay_client.rs` only
/// (through `bench_support::relay`); not a stable API.
#[doc(hidden)]
pub mod bench {
    pub use super::resp::{Conn, Pipeline, Reply};

    use super::dial::Dialer;
    use super::RelayConfig;
    use crate::hub::Frame;

    /// Opens connections as the relay's threads do: the URL's TLS (its roots read once, here)
    /// and `AUTH`, reads timing out every 200 ms.
    pub struct Dial {
        dialer: Dialer,
        config: RelayConfig,
    }

    impl std::fmt::Debug for Dial {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Dial")
                .field("config", &self.config)
                .finish()
        }
    }

    impl Dial {
        /// Reads the TLS roots, as [`super::Relay::start`] does.
        pub fn new(config: RelayConfig) -> std::io::Result<Self> {
            Ok(Self {
                dialer: Dialer::new(&config)?,
                config,
            })
        }

        /// A new connection, authenticated when the URL holds credentials.
        pub fn open(&self) -> std::io::Result<Conn> {
            Conn::open(&self.dialer, self.config.auth())
        }
    }

    /// The message the publisher thread `PUBLISH`es for `frame`.
    pub fn encode(frame: &Frame, epoch: u64) -> Vec<u8> {
        super::wire::encode(frame, epoch)
    }
}

/// Frames (and forwarded commands) waiting for the publisher thread.
const OUT_QUEUE: usize = 16 * 1024;
/// How long a blocked read waits before the thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

/// What this instance is in the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    /// Has a source: publishes its broadcasts and owns the topic and group state.
    Origin,
    /// No source of its own: fans out what origins publish; forwards mutations.
    RelayOnly,
}

/// Counters of the relay, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Frames published to Redis.
    pub published_total: AtomicU64,
    /// Frames received from Redis and fanned out here.
    pub received_total: AtomicU64,
    /// Frames not published: the queue overflowed or Redis refused them.
    pub dropped_total: AtomicU64,
    /// Connection failures and lost connections.
    pub errors_total: AtomicU64,
    /// Connections Redis refused for their credentials or what these allow (counted in
    /// `errors_total` too).
    pub auth_failures_total: AtomicU64,
    /// Forwarded commands sent (relay-only) or run (origin).
    pub commands_total: AtomicU64,
    /// 1 while both threads are connected.
    pub connected: AtomicU64,
}

/// What a relay-only instance knows of the origin's REST state.
#[derive(Debug, Default)]
pub(crate) struct RelayedState {
    pub(crate) topics: Option<String>,
    pub(crate) groups: Option<String>,
}

/// Items for the publisher thread.
pub(crate) enum Outgoing {
    Frame(Frame),
    /// A REST mutation forwarded to the origin (JSON).
    Command(String),
}

/// What the relay's threads, the hub's tap and the HTTP side share.
pub(crate) struct RelayLink {
    pub(crate) config: RelayConfig,
    pub(crate) role: RelayRole,
    /// Opens the threads' connections (TLS, if asked for, set up once).
    dialer: Dialer,
    out: ArrayQueue<Outgoing>,
    /// The publisher thread, to unpark: set once at start, read without a lock.
    publisher: OnceLock<std::thread::Thread>,
    pub(crate) stats: RelayStats,
    pub(crate) state: Mutex<RelayedState>,
    stop: AtomicBool,
    /// Whether the publisher (0) and the subscriber (1) are connected.
    up: [AtomicBool; 2],
}

impl fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayLink")
            .field("config", &self.config)
            .field("role", &self.role)
            .finish()
    }
}

impl FrameTap for RelayLink {
    /// Called under the broadcast order lock: the frame goes to Redis in `seq` order. Never
    /// blocks: a full queue drops its oldest.
    fn tap(&self, frame: &Frame) {
        if self.role == RelayRole::Origin {
            self.push(Outgoing::Frame(frame.clone()));
        }
    }

    /// An origin's broadcasts reach the subscribers of every instance.
    fn remote_subscribers(&self) -> bool {
        self.role == RelayRole::Origin
    }
}

impl RelayLink {
    /// Queues a mutation for the origin (relay-only instances).
    pub(crate) fn forward(&self, command: String) {
        self.push(Outgoing::Command(command));
    }

    /// Records whether a thread (0 publisher, 1 subscriber) is connected; the gauge is 1
    /// while both are.
    fn set_up(&self, thread: usize, up: bool) {
        self.up[thread].store(up, Relaxed);
        let both = self.up.iter().all(|u| u.load(Relaxed));
        self.stats.connected.store(u64::from(both), Relaxed);
    }

    fn push(&self, item: Outgoing) {
        if self.out.force_push(item).is_some() {
            self.stats.dropped_total.fetch_add(1, Relaxed);
        }
        if let Some(t) = self.publisher.get() {
            t.unpark();
        }
    }
}

impl Exporter for RelayLink {
    /// `takhin_relay_*` in `/metrics`.
    fn export(&self, out: &mut Text) {
        let r = &self.stats;
        out.metric(
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
                "takhin_relay_auth_failures_total",
                "Redis connections refused for the relay's credentials or their ACL permissions \
                 (WRONGPASS, NOAUTH, NOPERM).",
                &r.auth_failures_total,
            ),
            (
                "takhin_relay_commands_total",
                "REST mutations forwarded (relay-only) or run for others (origin).",
                &r.commands_total,
            ),
        ];
        for (name, help, value) in relay_counters {
            out.metric(name, "counter", help, value.load(Relaxed) as f64);
        }
    }
}

/// This instance's side, for the relay's threads: where relayed frames are fanned out, and
/// who runs forwarded requests (an origin) or whose REST state is relayed.
#[derive(Debug, Clone)]
pub(crate) struct Here {
    pub(crate) broadcaster: Broadcaster,
    pub(crate) web: Arc<Web>,
}

/// The running relay: two threads, stopped when this is dropped.
#[derive(Debug)]
#[must_use = "the relay stops when dropped"]
pub struct Relay {
    link: Arc<RelayLink>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts the relay's threads for the hub behind `shared`: taps its broadcasts (an
    /// origin) and serves its REST reads from the relayed state (relay-only).
    pub(crate) fn start(
        shared: &Arc<HubShared>,
        web: Arc<Web>,
        config: RelayConfig,
        role: RelayRole,
    ) -> std::io::Result<Self> {
        let dialer = Dialer::new(&config)?;
        let link = Arc::new(RelayLink {
            config,
            role,
            dialer,
            out: ArrayQueue::new(OUT_QUEUE),
            publisher: OnceLock::new(),
            stats: RelayStats::default(),
            state: Mutex::new(RelayedState::default()),
            stop: AtomicBool::new(false),
            up: [AtomicBool::new(false), AtomicBool::new(false)],
        });
        // First what can fail, then what cannot be undone: a tap (harmless on a relay-only
        // instance, which publishes nothing), REST, the exporter, the threads.
        if !shared.attach_tap(link.clone()) {
            return Err(std::io::Error::other("a relay is already running"));
        }
        if role == RelayRole::RelayOnly {
            let api = Arc::new(api::RelayApi::new(link.clone()));
            if !web.attach_api(api) {
                return Err(std::io::Error::other(
                    "a relay-only instance serves no REST services of its own",
                ));
            }
        }
        web.add_exporter(link.clone());
        // The threads, not the link, hold this instance's side: the hub holds the link (its
        // tap), so a link that held the hub would keep both alive forever.
        let here = Here {
            broadcaster: Broadcaster::new(shared.clone()),
            web,
        };
        let publisher = {
            let (link, here) = (link.clone(), here.clone());
            std::thread::Builder::new()
                .name("relay-pub".into())
                .spawn(move || publisher_loop(&link, &here))?
        };
        let _ = link.publisher.set(publisher.thread().clone());
        let subscriber = {
            let link = link.clone();
            std::thread::Builder::new()
                .name("relay-sub".into())
                .spawn(move || subscriber_loop(&link, &here))?
        };
        info!(relay = %link.config.redacted(), ?role, "relay started");
        Ok(Self {
            link,
            threads: vec![publisher, subscriber],
        })
    }

    /// The relay's counters.
    pub fn stats(&self) -> &RelayStats {
        &self.link.stats
    }

    /// Stops both threads (within about 200 ms).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.link.stop.store(true, Relaxed);
        if let Some(t) = self.link.publisher.get() {
            t.unpark();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt();
    }
}
