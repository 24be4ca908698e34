//! Criterion benches of the broadcast path: encode once, then enqueue to every core's ring.
//!
//! Groups (all over `bench_support::rings`, bare rings with no executors behind them):
//!
//! - `publish_pop/<rings>/<bytes>`: one `Broadcaster::publish` call, then one `pop` from every
//!   ring on the same thread, so the rings stay empty (steady state, never the drop-oldest
//!   path) and the frame's last reference is dropped inside the measured loop.
//! - `publish_only/<rings>/<bytes>`: `publish` calls timed in bursts of [`BURST`] (below the
//!   ring size, so nothing is dropped); the rings are drained between bursts, outside timing.
//! - `two_threads/<rings>/<bytes>`: two threads each make N `publish` + `pop` calls at once;
//!   reported time is wall time / (2N), i.e. the aggregate cost per call.
//! - `encode_only/<bytes>`: reference, `simd_json::to_writer` of the same `data` into a fresh
//!   256-byte `Vec` (the part of a call that is the payload encode).
//! - `metrics_snapshot/*`: `Broadcaster::metrics` of a 100-topic, 50-group snapshot, plus two
//!   encode-only references (`simd_json::to_writer` into a `Vec`).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use serde::Serialize;
use takhin_monitor::bench_support::{pop, rings, HubShared};
use takhin_monitor::defaults::DEFAULT_RING_SIZE;
use takhin_monitor::{
    Broadcaster, Channel, ClusterHealth, ConsumerLag, Latency, MonitoringMetrics, PartitionLag,
    TopicLag, TopicStats,
};

/// Ring counts measured (the machine has 2 cores; 8 shows the per-ring cost).
const SHARDS: [usize; 3] = [1, 2, 8];
/// Serialized sizes of the `data` field, in bytes.
const SIZES: [usize; 3] = [64, 512, 4096];
/// Calls timed back to back in `publish_only` before the rings are drained untimed. Kept
/// small: with 1024, freeing a burst of 4 KiB frames let glibc trim the heap, and the next
/// burst's page faults (not the broadcast path) dominated the time.
const BURST: u64 = 16;

/// An event-like payload whose JSON encoding is exactly the requested size.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    topic: &'static str,
    partition: u32,
    offset: u64,
    note: String,
}

fn payload(size: usize) -> Payload {
    let mut p = Payload {
        topic: "orders",
        partition: 7,
        offset: 1_234_567,
        note: String::new(),
    };
    let base = serde_json::to_vec(&p).expect("encodes").len();
    assert!(
        size >= base,
        "payload size {size} below the {base}-byte base"
    );
    p.note = "x".repeat(size - base);
    assert_eq!(serde_json::to_vec(&p).expect("encodes").len(), size);
    p
}

/// Pops one frame from every ring; panics if a ring was empty (a frame was lost).
fn pop_all(shared: &HubShared, shards: usize) {
    for shard in 0..shards {
        black_box(pop(shared, shard).expect("one frame per ring"));
    }
}

/// Size of the frame a call produces, for the log.
fn frame_len(b: &Broadcaster, shared: &HubShared, shards: usize, data: &Payload) -> usize {
    b.publish(&Channel::Events, "bench", data).expect("encodes");
    let len = pop(shared, 0).expect("frame").bytes().len();
    for shard in 1..shards {
        pop(shared, shard).expect("frame");
    }
    len
}

fn publish_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_pop");
    for shards in SHARDS {
        for size in SIZES {
            let (shared, b) = rings(shards, DEFAULT_RING_SIZE);
            let data = payload(size);
            let len = frame_len(&b, &shared, shards, &data);
            eprintln!("publish_pop/{shards}/{size}: frame {len} bytes");
            group.bench_with_input(
                BenchmarkId::new(shards.to_string(), size),
                &data,
                |bench, data| {
                    bench.iter(|| {
                        let seq = b.publish(&Channel::Events, "bench", data).expect("encodes");
                        pop_all(&shared, shards);
                        seq
                    });
                },
            );
        }
    }
    group.finish();
}

fn publish_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_only");
    for shards in SHARDS {
        for size in SIZES {
            let (shared, b) = rings(shards, DEFAULT_RING_SIZE);
            let data = payload(size);
            group.bench_with_input(
                BenchmarkId::new(shards.to_string(), size),
                &data,
                |bench, data| {
                    bench.iter_custom(|iters| {
                        let mut timed = Duration::ZERO;
                        let mut left = iters;
                        while left > 0 {
                            let burst = left.min(BURST);
                            let start = Instant::now();
                            for _ in 0..burst {
                                black_box(
                                    b.publish(&Channel::Events, "bench", data).expect("encodes"),
                                );
                            }
                            timed += start.elapsed();
                            for _ in 0..burst {
                                pop_all(&shared, shards);
                            }
                            left -= burst;
                        }
                        timed
                    });
                },
            );
        }
    }
    group.finish();
}

fn encode_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_only");
    for size in SIZES {
        let data = payload(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |bench, data| {
            bench.iter(|| {
                let mut out = Vec::with_capacity(256);
                simd_json::to_writer(&mut out, data).expect("encodes");
                out
            });
        });
    }
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("two_threads");
    for shards in [2, 8] {
        for size in SIZES {
            let (shared, b) = rings(shards, DEFAULT_RING_SIZE);
            let data = Arc::new(payload(size));
            group.bench_function(BenchmarkId::new(shards.to_string(), size), |bench| {
                bench.iter_custom(|iters| {
                    let start_line = Arc::new(Barrier::new(3));
                    let workers: Vec<_> = (0..2)
                        .map(|_| {
                            let (shared, b, data) = (shared.clone(), b.clone(), data.clone());
                            let start_line = start_line.clone();
                            std::thread::spawn(move || {
                                start_line.wait();
                                for _ in 0..iters {
                                    black_box(
                                        b.publish(&Channel::Events, "bench", &*data)
                                            .expect("encodes"),
                                    );
                                    // Either thread may pop the other's frame; each pops as
                                    // many as it pushed, so a ring holds at most two.
                                    pop_all(&shared, shards);
                                }
                            })
                        })
                        .collect();
                    start_line.wait();
                    let start = Instant::now();
                    for w in workers {
                        w.join().expect("worker");
                    }
                    // 2 * iters calls were made: report the wall time per call.
                    start.elapsed() / 2
                });
            });
        }
    }
    group.finish();
}

/// A realistic snapshot: 100 topics of 12 partitions, 50 groups each lagging on 2 topics.
fn snapshot() -> MonitoringMetrics {
    let topic_stats = (0..100u64)
        .map(|t| TopicStats {
            name: format!("orders.region-{t:03}.v1"),
            partitions: 12,
            total_messages: 1_000_000_000 + t * 7_919,
            total_bytes: 512_000_000_000 + t * 104_729,
            produce_rate: 12_345.678 + t as f64,
            fetch_rate: 23_456.789 + t as f64,
        })
        .collect();
    let consumer_lags = (0..50u64)
        .map(|g| {
            let topic_lags: Vec<TopicLag> = (0..2u64)
                .map(|i| {
                    let t = (g * 2 + i) % 100;
                    let partition_lags: Vec<PartitionLag> = (0..12u32)
                        .map(|p| {
                            let end = 5_000_000_000 + (t * 12 + u64::from(p)) as i64 * 997;
                            let lag = (g as i64 * 31 + i64::from(p) * 17) % 10_000;
                            PartitionLag {
                                partition: p,
                                current_offset: Some(end - lag),
                                log_end_offset: end,
                                lag: Some(lag),
                                lag_seconds: None,
                            }
                        })
                        .collect();
                    TopicLag {
                        topic: format!("orders.region-{t:03}.v1"),
                        total_lag: partition_lags.iter().filter_map(|p| p.lag).sum::<i64>() as u64,
                        partition_lags,
                    }
                })
                .collect();
            ConsumerLag {
                group_id: format!("analytics-consumer-group-{g:02}"),
                total_lag: topic_lags.iter().map(|t| t.total_lag).sum(),
                topic_lags,
                lag_seconds: None,
            }
        })
        .collect();
    MonitoringMetrics {
        throughput: takhin_monitor::Throughput {
            produce_rate: 1_234_567.5,
            fetch_rate: 2_345_678.25,
            produce_bytes: 632_098_816.0,
            fetch_bytes: 1_201_000_000.0,
        },
        latency: Latency {
            produce_p50: 0.42,
            produce_p95: 1.7,
            produce_p99: 4.25,
            fetch_p50: 0.31,
            fetch_p95: 1.2,
            fetch_p99: 3.9,
        },
        topic_stats,
        consumer_lags,
        cluster_health: ClusterHealth {
            active_connections: 10_000,
            total_topics: 100,
            total_partitions: 1_200,
            total_consumers: 400,
            disk_usage_bytes: 51_200_000_000_000,
            memory_usage_bytes: 17_179_869_184,
            goroutine_count: 64,
        },
        timestamp: 1_767_225_600,
        source: None,
    }
}

fn metrics_snapshot(c: &mut Criterion) {
    let snap = snapshot();
    let shards = 2;
    let (shared, b) = rings(shards, DEFAULT_RING_SIZE);
    b.metrics(&snap).expect("encodes");
    let len = pop(&shared, 0).expect("frame").bytes().len();
    pop(&shared, 1).expect("frame");
    let data_len = simd_json::to_vec(&snap).expect("encodes").len();
    eprintln!("metrics_snapshot: frame {len} bytes, data {data_len} bytes");

    let mut group = c.benchmark_group("metrics_snapshot");
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("broadcast_pop/2", |bench| {
        bench.iter(|| {
            let seq = b.metrics(&snap).expect("encodes");
            pop_all(&shared, shards);
            seq
        });
    });
    // References: the encode alone, into a buffer that starts at 256 bytes (as the frame
    // buffer does) and into one already large enough.
    group.bench_function("encode_grow_from_256", |bench| {
        bench.iter(|| {
            let mut out = Vec::with_capacity(256);
            simd_json::to_writer(&mut out, &snap).expect("encodes");
            out
        });
    });
    group.bench_function("encode_presized", |bench| {
        bench.iter(|| {
            let mut out = Vec::with_capacity(len);
            simd_json::to_writer(&mut out, &snap).expect("encodes");
            out
        });
    });
    group.finish();
}

// Written out rather than with `criterion_group!`, whose generated `pub fn` has no docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    publish_pop(&mut c);
    publish_only(&mut c);
    encode_only(&mut c);
    two_threads(&mut c);
    metrics_snapshot(&mut c);
    c.final_summary();
}
