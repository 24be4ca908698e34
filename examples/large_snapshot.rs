//! Prints the `metrics` snapshot of a large cluster as JSON, for the compression benchmark
//! (`benches/deflate_fanout.sh`): 100 topics of 12 partitions and 50 consumer groups each
//! committed on 4 topics, built by [`StandardSource`] from the broker's own meters, as the demo
//! and an embedding broker build theirs. Unlike the criterion bench's cluster (benches/metrics.rs,
//! every partition alike), every partition's rate, size and latency and every group's offset
//! differ (a fixed pseudo-random sequence), so the JSON compresses as a real cluster's does
//! rather than better.
//!
//! Run: `cargo run --release --example large_snapshot > snapshot.json`, or with `--levels` to
//! print instead what raw deflate (flate2 with zlib-rs, as the hub compresses) makes of it at
//! each level: bytes and the time of one compression (median of 21).

use std::io::Write;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, FlushCompress};

use takhin_monitor::{GroupCoordinator, MetricsSource, Recorder, StandardSource, TopicManager};

/// xorshift64: the same cluster on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn main() -> std::io::Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let topics = TopicManager::new(Recorder::new(), None);
    let groups = GroupCoordinator::new(None);
    for t in 0..100 {
        let m = topics
            .create(&format!("topic-{t:03}"), 12)
            .expect("a valid topic");
        for p in 0..12 {
            let records = 100 + rng.below(5000);
            let bytes = 10_000 + rng.below(5_000_000);
            m.produce(
                p,
                records,
                bytes,
                Duration::from_micros(200 + rng.below(3000)),
            );
        }
        let ms = 1 + rng.below(5);
        m.fetch(
            rng.below(5000),
            rng.below(500_000),
            Duration::from_millis(ms),
        );
    }
    for g in 0..50 {
        let id = format!("group-{g:02}");
        groups.update(&id, "Stable", 3);
        for t in 0..4 {
            let topic = format!("topic-{:03}", (g * 2 + t) % 100);
            for p in 0..12 {
                groups.commit(&id, &topic, p, rng.below(4000) as i64);
            }
        }
    }
    let mut source = StandardSource::new(topics, groups, None);
    let json = serde_json::to_vec(&source.snapshot(Duration::from_secs(2)))?;
    if std::env::args().any(|a| a == "--levels") {
        levels(&json);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&json)?;
    out.write_all(b"\n")
}

/// Bytes and time of one compression of `json` at each level, as the hub makes it (raw deflate
/// from a fresh state, sync-flushed).
fn levels(json: &[u8]) {
    println!("{} B of JSON", json.len());
    for level in 1..=9 {
        let mut z = Compress::new(Compression::new(level), false);
        let mut out = Vec::with_capacity(json.len());
        let mut times: Vec<Duration> = (0..21)
            .map(|_| {
                z.reset();
                out.clear();
                let t = Instant::now();
                z.compress_vec(json, &mut out, FlushCompress::Sync)
                    .expect("compresses");
                t.elapsed()
            })
            .collect();
        times.sort();
        let bytes = out.len() - 4; // the sync tail is not sent
        println!(
            "level {level}: {bytes} B ({:.2}x smaller), {:.2} ms",
            json.len() as f64 / bytes as f64,
            times[10].as_secs_f64() * 1e3
        );
    }
}
