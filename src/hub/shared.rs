//! What every core and every broadcaster share: the rings, the `seq`, shutdown and admission.
//!
//! Nothing here knows about HTTP, Redis or a source. What lies above plugs in through
//! [`FrameTap`] (it sees every local broadcast, in `seq` order).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use atomic_waker::AtomicWaker;
use crossbeam::queue::ArrayQueue;
use crossbeam::utils::CachePadded;

use crate::hub::broadcast::Frame;
use crate::hub::counters::{DurationHistogram, ShardStats};
use crate::hub::history::{History, HistoryLimits};
use crate::protocol::{Channel, Stamp};
use crate::tls_config::TlsReloadable;

/// Sees every frame this hub broadcasts, in `seq` order, as it is handed to the cores (the
/// Redis relay publishes them to other instances). Called under the broadcast order lock:
/// it must not block.
pub(crate) trait FrameTap: Send + Sync + fmt::Debug {
    /// One broadcast frame, already encoded.
    fn tap(&self, frame: &Frame);

    /// Whether the tapped frames reach subscribers this hub cannot see (other instances):
    /// then every `topic:` and `group:` detail channel counts as subscribed.
    fn remote_subscribers(&self) -> bool {
        false
    }
}

/// One core's inbox: the ring and the waker of its distributor.
#[derive(Debug)]
pub(crate) struct ShardLink {
    pub(crate) ring: ArrayQueue<Frame>,
    pub(crate) waker: AtomicWaker,
}

/// What every core and every broadcaster share.
pub struct HubShared {
    pub(crate) links: Box<[CachePadded<ShardLink>]>,
    pub(crate) stats: Box<[CachePadded<ShardStats>]>,
    /// The last `seq` handed out; the lock orders concurrent broadcasters.
    order: Mutex<u64>,
    /// This hub's start time in microseconds: a client that sees it change knows `seq`
    /// started again.
    pub(crate) epoch: u64,
    pub(crate) shutdown: AtomicBool,
    /// Per shard: its `topic:`/`group:` channels that have subscribers, published by the shard
    /// when they change and read by the ticker, which sends their detail frames.
    pub(crate) interest: Box<[Mutex<Vec<Channel>>]>,
    /// WebSocket clients across all shards, for the global connection limit.
    clients: AtomicUsize,
    /// Time per broadcast call (encode and enqueue).
    pub(crate) broadcast_seconds: DurationHistogram,
    /// Time per metrics tick.
    pub(crate) tick_seconds: DurationHistogram,
    /// Sees every local broadcast once attached (the relay).
    tap: OnceLock<Arc<dyn FrameTap>>,
    /// Recent broadcasts, for clients that resume.
    pub(crate) history: History,
    /// The TLS configuration new connections take, when the port speaks TLS (set once, when
    /// the hub starts; replaced inside on a reload).
    pub(crate) tls: OnceLock<TlsReloadable>,
}

impl fmt::Debug for HubShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubShared")
            .field("shards", &self.links.len())
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl HubShared {
    pub(crate) fn new(shards: usize, ring_size: usize) -> Self {
        Self::with_history(shards, ring_size, HistoryLimits::default())
    }

    pub(crate) fn with_history(shards: usize, ring_size: usize, history: HistoryLimits) -> Self {
        let stamp = now_stamp(0);
        Self {
            links: (0..shards)
                .map(|_| {
                    CachePadded::new(ShardLink {
                        ring: ArrayQueue::new(ring_size),
                        waker: AtomicWaker::new(),
                    })
                })
                .collect(),
            stats: (0..shards).map(|_| CachePadded::default()).collect(),
            order: Mutex::new(0),
            epoch: stamp.unix_us,
            shutdown: AtomicBool::new(false),
            interest: (0..shards).map(|_| Mutex::default()).collect(),
            clients: AtomicUsize::new(0),
            broadcast_seconds: DurationHistogram::default(),
            tick_seconds: DurationHistogram::default(),
            tap: OnceLock::new(),
            history: History::new(history, stamp.unix_us),
            tls: OnceLock::new(),
        }
    }

    pub(crate) fn stamp(&self) -> Stamp {
        now_stamp(self.epoch)
    }

    /// Wakes every shard (new frames or shutdown).
    pub(crate) fn wake_all(&self) {
        for link in self.links.iter() {
            link.waker.wake();
        }
    }

    /// Pushes `frame` into every core's ring (drop-oldest, counted).
    pub(crate) fn push_to_cores(&self, frame: &Frame) {
        for (link, stats) in self.links.iter().zip(self.stats.iter()) {
            if link.ring.force_push(frame.clone()).is_some() {
                stats.ring_dropped_total.fetch_add(1, Relaxed);
            }
        }
    }

    /// Takes the broadcast order lock: holds the last `seq` handed out.
    pub(crate) fn order(&self) -> MutexGuard<'_, u64> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tap, if one is attached.
    pub(crate) fn tap(&self) -> Option<&Arc<dyn FrameTap>> {
        self.tap.get()
    }

    /// Attaches the tap; false if one is attached already.
    pub(crate) fn attach_tap(&self, tap: Arc<dyn FrameTap>) -> bool {
        self.tap.set(tap).is_ok()
    }

    /// Takes a place under the global connection limit; false when the hub is full.
    pub(crate) fn try_admit(&self, max: usize) -> bool {
        self.clients
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Gives back a place taken by [`Self::try_admit`].
    pub(crate) fn release(&self) {
        self.clients.fetch_sub(1, Relaxed);
    }

    /// WebSocket clients admitted across all shards.
    pub(crate) fn admitted(&self) -> usize {
        self.clients.load(Relaxed)
    }

    /// The last `seq` handed out: the number of broadcasts so far.
    pub(crate) fn last_seq(&self) -> u64 {
        *self.order()
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown.load(Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Relaxed);
        self.wake_all();
    }
}

/// Reads the wall clock into a [`Stamp`].
pub(crate) fn now_stamp(epoch: u64) -> Stamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Stamp {
        unix_s: now.as_secs(),
        unix_us: now.as_micros() as u64,
        epoch,
    }
}
