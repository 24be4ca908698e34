//! The broker's hot-path API: record produces and fetches at almost no cost.
//!
//! Two rules keep the recording path free of shared contention and allocation:
//! - counters are striped: each recording thread adds to its own cache-padded stripe of the
//!   topic's counters, summed only when a snapshot is taken;
//! - latency goes into a per-thread HDR histogram (microseconds, 3 significant figures) behind a
//!   mutex that only its own thread and the once-per-tick merge ever take, so it is uncontended.
//!
//! The first record on a thread registers that thread's histograms (one allocation per thread,
//! per recorder); every later record is a thread-local lookup, relaxed atomic adds and one
//! uncontended lock.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;

/// Counter stripes per topic; recording threads map onto them by a per-thread index.
const STRIPES: usize = 16;
/// Latencies above this (60 s, in microseconds) are recorded as this value.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram: microseconds, 1 µs to 60 s, 3 significant figures.
pub(crate) fn latency_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Cumulative counts of one topic, on one stripe.
#[derive(Debug, Default)]
struct Counts {
    produced_messages: AtomicU64,
    produced_bytes: AtomicU64,
    fetched_messages: AtomicU64,
    fetched_bytes: AtomicU64,
}

/// A topic's live state: partitions' log-end offsets and striped counters.
pub(crate) struct TopicState {
    pub(crate) name: Arc<str>,
    pub(crate) log_end: Box<[AtomicI64]>,
    stripes: Box<[CachePadded<Counts>]>,
}

/// Cumulative totals of one topic, summed over stripes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) produced_messages: u64,
    pub(crate) produced_bytes: u64,
    pub(crate) fetched_messages: u64,
    pub(crate) fetched_bytes: u64,
}

impl TopicState {
    pub(crate) fn new(name: Arc<str>, partitions: u32) -> Self {
        Self {
            name,
            log_end: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            stripes: (0..STRIPES).map(|_| CachePadded::default()).collect(),
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.stripes.iter() {
            t.produced_messages += s.produced_messages.load(Relaxed);
            t.produced_bytes += s.produced_bytes.load(Relaxed);
            t.fetched_messages += s.fetched_messages.load(Relaxed);
            t.fetched_bytes += s.fetched_bytes.load(Relaxed);
        }
        t
    }

    fn stripe(&self) -> &Counts {
        &self.stripes[thread_index() % STRIPES]
    }
}

impl fmt::Debug for TopicState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicState")
            .field("name", &self.name)
            .field("partitions", &self.log_end.len())
            .finish()
    }
}

/// A small index per recording thread, to pick its counter stripe.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: Cell<usize> = const { Cell::new(usize::MAX) });
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Relaxed));
        }
        i.get()
    })
}

/// One thread's latency histograms, merged and reset at every tick.
#[derive(Debug)]
struct ThreadSlot {
    produce: Mutex<Histogram<u32>>,
    fetch: Mutex<Histogram<u32>>,
}

impl ThreadSlot {
    fn new() -> Self {
        Self {
            produce: Mutex::new(latency_histogram()),
            fetch: Mutex::new(latency_histogram()),
        }
    }
}

struct RecorderInner {
    id: usize,
    slots: Mutex<Vec<Arc<ThreadSlot>>>,
}

/// Records produce and fetch traffic; `Clone + Send + Sync`, cheap to clone.
///
/// Obtain a [`TopicMeter`] per topic once (from [`TopicManager`](crate::TopicManager) or
/// [`Recorder::meter`]) and record through it on the hot path.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("threads", &lock(&self.inner.slots).len())
            .finish()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    /// This thread's histogram slot in each recorder it recorded to: (recorder id, slot).
    static SLOTS: RefCell<Vec<(usize, Arc<ThreadSlot>)>> = const { RefCell::new(Vec::new()) };
}

/// The latency distributions of one interval, merged over threads.
#[derive(Debug, Clone)]
pub(crate) struct IntervalLatency {
    pub(crate) produce: Histogram<u32>,
    pub(crate) fetch: Histogram<u32>,
}

impl Recorder {
    /// A recorder with no threads registered yet.
    pub fn new() -> Self {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        Self {
            inner: Arc::new(RecorderInner {
                id: NEXT_ID.fetch_add(1, Relaxed),
                slots: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Records one latency sample (on this thread's own histogram).
    fn latency(&self, produce: bool, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.with_slot(|slot| {
            let h = if produce { &slot.produce } else { &slot.fetch };
            lock(h).saturating_record(us.max(1));
        });
    }

    fn with_slot(&self, f: impl FnOnce(&ThreadSlot)) {
        let id = self.inner.id;
        SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            if let Some((_, slot)) = slots.iter().find(|(i, _)| *i == id) {
                return f(slot);
            }
            let slot = Arc::new(ThreadSlot::new());
            lock(&self.inner.slots).push(slot.clone());
            slots.push((id, slot));
            f(&slots.last().expect("just pushed").1);
        });
    }

    /// Takes the interval's latency samples of every thread, leaving them empty. Slots of
    /// threads that exited are released.
    pub(crate) fn take_latency(&self) -> IntervalLatency {
        let mut out = IntervalLatency {
            produce: latency_histogram(),
            fetch: latency_histogram(),
        };
        let mut slots = lock(&self.inner.slots);
        for slot in slots.iter() {
            for (from, into) in [
                (&slot.produce, &mut out.produce),
                (&slot.fetch, &mut out.fetch),
            ] {
                let mut h = lock(from);
                let _ = into.add(&*h);
                h.reset();
            }
        }
        // Only the registry holds the slot of a thread that has exited.
        slots.retain(|s| Arc::strong_count(s) > 1);
        out
    }

    /// A meter for a topic that is not managed by a [`TopicManager`](crate::TopicManager):
    /// its counts are recorded but appear in no snapshot.
    pub fn meter(&self, name: &str, partitions: u32) -> TopicMeter {
        TopicMeter {
            topic: Arc::new(TopicState::new(name.into(), partitions)),
            recorder: self.clone(),
        }
    }

    pub(crate) fn meter_for(&self, topic: Arc<TopicState>) -> TopicMeter {
        TopicMeter {
            topic,
            recorder: self.clone(),
        }
    }
}

/// Records one topic's traffic. `Clone + Send + Sync`; keep one per topic on the hot path.
///
/// Every call is allocation-free and lock-free apart from this thread's own, uncontended
/// histogram lock. A meter of a deleted topic keeps working; its counts go nowhere.
#[derive(Clone)]
pub struct TopicMeter {
    topic: Arc<TopicState>,
    recorder: Recorder,
}

impl fmt::Debug for TopicMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicMeter")
            .field("topic", &self.topic.name)
            .finish()
    }
}

impl TopicMeter {
    /// Records a produce of `messages` (appended to `partition`, whose log-end offset advances),
    /// `bytes`, and its latency.
    pub fn produce(&self, partition: u32, messages: u64, bytes: u64, latency: Duration) {
        let s = self.topic.stripe();
        s.produced_messages.fetch_add(messages, Relaxed);
        s.produced_bytes.fetch_add(bytes, Relaxed);
        if let Some(leo) = self.topic.log_end.get(partition as usize) {
            leo.fetch_add(messages as i64, Relaxed);
        }
        self.recorder.latency(true, latency);
    }

    /// Records a fetch of `messages` and `bytes`, and its latency.
    pub fn fetch(&self, messages: u64, bytes: u64, latency: Duration) {
        let s = self.topic.stripe();
        s.fetched_messages.fetch_add(messages, Relaxed);
        s.fetched_bytes.fetch_add(bytes, Relaxed);
        self.recorder.latency(false, latency);
    }

    /// Sets a partition's log-end offset, for brokers that track it themselves.
    pub fn set_log_end_offset(&self, partition: u32, offset: i64) {
        if let Some(leo) = self.topic.log_end.get(partition as usize) {
            leo.store(offset, Relaxed);
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_and_latency_merges() {
        let r = Recorder::new();
        let m = r.meter("t", 2);
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.produce(i % 2, 2, 100, Duration::from_micros(500));
                        m.fetch(1, 50, Duration::from_millis(3));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let t = m.topic.totals();
        assert_eq!(t.produced_messages, 8000);
        assert_eq!(t.produced_bytes, 400_000);
        assert_eq!(t.fetched_messages, 4000);
        assert_eq!(t.fetched_bytes, 200_000);
        assert_eq!(m.topic.log_end[0].load(Relaxed), 4000);
        assert_eq!(m.topic.log_end[1].load(Relaxed), 4000);

        let l = r.take_latency();
        assert_eq!(l.produce.len(), 4000);
        assert_eq!(l.fetch.len(), 4000);
        let p50 = l.produce.value_at_quantile(0.5);
        assert!((499..=501).contains(&p50), "{p50}");
        // The threads exited: their slots are released, and the next interval starts empty.
        assert_eq!(lock(&r.inner.slots).len(), 0);
        assert!(r.take_latency().produce.is_empty());
    }

    #[test]
    fn out_of_range_partitions_and_latencies_are_clamped_not_fatal() {
        let r = Recorder::new();
        let m = r.meter("t", 1);
        m.produce(7, 1, 1, Duration::from_secs(3600));
        m.fetch(1, 1, Duration::ZERO);
        let l = r.take_latency();
        assert!(l.produce.max() >= MAX_LATENCY_US - MAX_LATENCY_US / 1000);
        assert_eq!(l.fetch.min(), 1);
        assert_eq!(m.topic.totals().produced_messages, 1);
    }
}
