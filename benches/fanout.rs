//! Criterion benches of a shard's fan-out: one frame appended to every subscriber's queue.
//!
//! Groups (pure `bench_support::Fanout`, no sockets or executor; queues of the default 256
//! frames, every client with a writer that has nothing to wake):
//!
//! - `deliver_drain/<clients>`: one `deliver` of an `events` frame to N clients all subscribed
//!   to `events`, then `drain` of every client's queue, both timed (the drain is what a writer
//!   does to its queue after one `sendmsg`, minus the syscall). Throughput is N deliveries.
//! - `deliver_only/<clients>`: `deliver` alone, timed in bursts of [`BURST`] frames (each queue
//!   grows to `BURST` frames, below the cap: nothing is dropped); the queues are drained between
//!   bursts, outside timing.
//! - `dedup/<clients>`: a `topic_created` event (primary `events`, second channel
//!   `topic:<name>`) to N clients, a third on `events` only, a third on `topic:<name>` only and
//!   a third on both; each client receives it once, so N deliveries. Timed with the drain.

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use takhin_monitor::bench_support::{drain, pop, rings, ClientLink, Fanout, Subscribed};
use takhin_monitor::defaults::{DEFAULT_CLIENT_QUEUE, DEFAULT_MAX_SUBSCRIPTIONS};
use takhin_monitor::{Channel, Frame};

/// Client counts on one shard.
const CLIENTS: [usize; 3] = [100, 1_000, 10_000];
/// Frames delivered back to back in `deliver_only` before the queues are drained untimed.
/// At most 64 so that a queue's buffer is kept by `drain` (larger ones are freed after a burst).
const BURST: u64 = 32;

/// One real frame from the broadcast path (an `events` publish, or a topic event).
fn frame(topic_event: bool) -> Frame {
    let (shared, b) = rings(1, 4);
    if topic_event {
        b.topic_created("orders", 12).expect("encodes");
    } else {
        b.group_updated("analytics", "Stable", 4).expect("encodes");
    }
    pop(&shared, 0).expect("frame")
}

/// A fan-out with `n` clients; `channels(i)` lists client `i`'s subscriptions.
fn fanout(
    n: usize,
    channels: impl Fn(usize) -> Vec<Channel>,
) -> (Fanout<ClientLink>, Vec<Rc<ClientLink>>) {
    let mut fanout = Fanout::new(DEFAULT_CLIENT_QUEUE, DEFAULT_MAX_SUBSCRIPTIONS);
    let clients: Vec<Rc<ClientLink>> = (0..n)
        .map(|i| {
            let link = Rc::new(ClientLink::default());
            let key = fanout.insert(link.clone());
            for channel in channels(i) {
                assert_eq!(fanout.subscribe(key, channel), Subscribed::Added);
            }
            link
        })
        .collect();
    (fanout, clients)
}

fn drain_all(clients: &[Rc<ClientLink>]) -> u64 {
    clients.iter().map(|c| drain(c)).sum()
}

fn deliver_drain(c: &mut Criterion) {
    let frame = frame(false);
    let mut group = c.benchmark_group("deliver_drain");
    for n in CLIENTS {
        let (mut fanout, clients) = fanout(n, |_| vec![Channel::Events]);
        let d = fanout.deliver(&frame);
        assert_eq!((d.queued, d.dropped), (n as u64, 0));
        assert_eq!(drain_all(&clients), n as u64);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |bench| {
            bench.iter(|| {
                black_box(fanout.deliver(&frame));
                drain_all(&clients)
            });
        });
    }
    group.finish();
}

fn deliver_only(c: &mut Criterion) {
    let frame = frame(false);
    let mut group = c.benchmark_group("deliver_only");
    for n in CLIENTS {
        let (mut fanout, clients) = fanout(n, |_| vec![Channel::Events]);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |bench| {
            bench.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let burst = left.min(BURST);
                    let start = Instant::now();
                    for _ in 0..burst {
                        black_box(fanout.deliver(&frame));
                    }
                    timed += start.elapsed();
                    assert_eq!(drain_all(&clients), burst * n as u64);
                    left -= burst;
                }
                timed
            });
        });
    }
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let frame = frame(true);
    let topic = Channel::topic("orders");
    let mut group = c.benchmark_group("dedup");
    for n in CLIENTS {
        let (mut fanout, clients) = fanout(n, |i| match i % 3 {
            0 => vec![Channel::Events],
            1 => vec![topic.clone()],
            _ => vec![Channel::Events, topic.clone()],
        });
        let d = fanout.deliver(&frame);
        assert_eq!((d.queued, d.dropped), (n as u64, 0));
        assert_eq!(drain_all(&clients), n as u64);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |bench| {
            bench.iter(|| {
                black_box(fanout.deliver(&frame));
                drain_all(&clients)
            });
        });
    }
    group.finish();
}

// Written out rather than with `criterion_group!`, whose generated `pub fn` has no docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    deliver_drain(&mut c);
    deliver_only(&mut c);
    dedup(&mut c);
    c.final_summary();
}
