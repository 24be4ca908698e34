//! Criterion benches of the metrics pipeline: the broker's hot-path `Recorder` (one thread and
//! two threads at once), and the once-per-tick snapshot build plus encode of a large cluster.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use takhin_monitor::bench_support::{pop, rings};
use takhin_monitor::{GroupCoordinator, MetricsSource, Recorder, StandardSource, TopicManager};

fn recorder(c: &mut Criterion) {
    let mut g = c.benchmark_group("recorder");
    g.throughput(Throughput::Elements(1));
    let topics = TopicManager::new(Recorder::new(), None);
    let meter = topics.create("orders", 12).expect("topic");
    let latency = Duration::from_micros(850);
    g.bench_function("produce/1_thread", |b| {
        b.iter(|| meter.produce(black_box(3), 1, 512, black_box(latency)))
    });
    g.bench_function("fetch/1_thread", |b| {
        b.iter(|| meter.fetch(black_box(10), 5120, black_box(latency)))
    });
    // Both cores record at once: the aggregate cost per call (wall time / calls). Two cases:
    // each thread appends to its own partition (as a broker's partition leaders do), and both
    // append to the same partition (its log-end offset is the one shared cache line).
    for (name, same_partition) in [("own_partitions", false), ("same_partition", true)] {
        g.bench_function(format!("produce/2_threads/{name}"), |b| {
            b.iter_custom(|iters| {
                let calls = iters.div_ceil(2).max(1);
                let start = Arc::new(Barrier::new(3));
                let threads: Vec<_> = (0..2u32)
                    .map(|t| {
                        let (m, start) = (meter.clone(), start.clone());
                        let p = if same_partition { 0 } else { t };
                        std::thread::spawn(move || {
                            start.wait();
                            for _ in 0..calls {
                                m.produce(black_box(p), 1, 512, latency);
                            }
                        })
                    })
                    .collect();
                start.wait();
                let t0 = Instant::now();
                threads.into_iter().for_each(|t| t.join().expect("thread"));
                // `iters` calls in all: criterion divides by it, giving the aggregate cost.
                t0.elapsed()
            })
        });
    }
    g.finish();
}

/// 100 topics x 12 partitions with traffic, 50 groups each committed on 4 topics.
fn large_cluster() -> (TopicManager, GroupCoordinator) {
    let topics = TopicManager::new(Recorder::new(), None);
    let groups = GroupCoordinator::new(None);
    for t in 0..100 {
        let m = topics.create(&format!("topic-{t:03}"), 12).expect("topic");
        for p in 0..12 {
            m.produce(p, 1000 + u64::from(p), 100_000, Duration::from_micros(700));
        }
        m.fetch(500, 50_000, Duration::from_millis(2));
    }
    for g in 0..50 {
        let id = format!("group-{g:02}");
        groups.update(&id, "Stable", 3);
        for t in 0..4 {
            let topic = format!("topic-{:03}", (g * 2 + t) % 100);
            for p in 0..12 {
                if p != 11 {
                    groups.commit(&id, &topic, p, 900);
                }
            }
        }
    }
    (topics, groups)
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    let (topics, groups) = large_cluster();
    let mut source = StandardSource::new(topics, groups, None);
    let (shared, broadcaster) = rings(2, 1024);
    let interval = Duration::from_secs(2);
    let bytes = serde_json::to_vec(&source.snapshot(interval))
        .expect("encodes")
        .len();
    println!("snapshot of 100 topics x 12 partitions, 50 groups: {bytes} bytes of JSON");
    g.bench_function("build/100t_x12p_50g", |b| {
        b.iter(|| black_box(source.snapshot(interval)))
    });
    let snap = source.snapshot(interval);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("encode_and_enqueue_2_cores/100t_x12p_50g", |b| {
        b.iter(|| {
            broadcaster.metrics(black_box(&snap)).expect("encodes");
            black_box(pop(&shared, 0));
            black_box(pop(&shared, 1));
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    recorder(&mut c);
    snapshot(&mut c);
    c.final_summary();
}
