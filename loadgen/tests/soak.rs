//! The soak: thousands of subscribers held for minutes (some of them slow readers) while
//! connections churn, against a hub in this test process, so its memory, file descriptors and
//! connection count are this process's own. Ignored by default; `.ci/run` runs it briefly.
//!
//!     SOAK_SECS=600 cargo test --release -p loadgen --test soak -- --ignored --nocapture
//!
//! Knobs (environment): SOAK_SECS (default 30), SOAK_SUBSCRIBERS (2000), SOAK_SLOW (200 of
//! them), SOAK_RATE (messages/s, 20), SOAK_CHURN (connections/s, 100). The last line printed is
//! a JSON summary, the figures BENCHMARKS.md quotes.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use takhin_monitor::{Cores, Hub, HubConfig};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Open file descriptors of this process.
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn spawn_loadgen(addr: SocketAddr, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--server", &addr.to_string(), "--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen starts")
}

fn report(child: Child) -> (i32, Value) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let report = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

const MB: f64 = 1024.0 * 1024.0;
const SEND_BUFFER: usize = 64 * 1024;

#[test]
#[ignore = "minutes long: run with --ignored (CI runs it briefly)"]
fn stress_soak_holds_memory_flat_and_gives_every_resource_back() {
    let secs = knob("SOAK_SECS", 30);
    let subscribers = knob("SOAK_SUBSCRIBERS", 2000);
    let slow = knob("SOAK_SLOW", 200);
    let rate = knob("SOAK_RATE", 20);
    let churn = knob("SOAK_CHURN", 100);
    // Aborts the test binary if the run hangs (loadgen stops by itself after its duration):
    // the configured duration plus the drain (60 s), the wait for every resource (30 s) and
    // start-up.
    common::watchdog(Duration::from_secs(secs + 180));

    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len()).min(2);
    let hub = Hub::start(
        HubConfig::default()
            .listen("127.0.0.1:0".parse().unwrap())
            .cores(Cores::Count(cores))
            // Bounds what a slow reader holds in the kernel (autotuning lets it reach 4 MiB),
            // so it lags within seconds rather than after minutes.
            .send_buffer(Some(SEND_BUFFER))
            // Heartbeats many times per run even in CI's 30 s: a slow reader's pong comes
            // back only after the backlog ahead of the ping, far later than the pong wait.
            .ping_interval(Duration::from_secs(5))
            .pong_wait(Duration::from_secs(12)),
    )
    .expect("hub starts");
    let addr = hub.local_addr();
    let (fds_before, rss_before) = (fds(), rss());

    let duration = format!("{secs}s");
    let (subs, slow_s, rate_s, churn_s) = (
        subscribers.to_string(),
        slow.to_string(),
        rate.to_string(),
        churn.to_string(),
    );
    let fanout = spawn_loadgen(
        addr,
        &[
            "fanout",
            "--subscribers",
            &subs,
            "--slow-subscribers",
            &slow_s,
            // 80 KB/s sent, 1 KB/s read: a slow reader's queue (256 frames) and socket
            // buffers fill within seconds, and it lags from then on.
            "--slow-read-rate",
            "1000",
            "--size",
            "4096",
            "--rate",
            &rate_s,
            "--duration",
            &duration,
            "--connect-rate",
            "2000",
            // Slow readers lose what their queue drops; the run checks it was all told.
            "--max-loss",
            "1",
            // After the run, slow readers read their backlog (up to 1 MB each) at full speed;
            // the drain ends as soon as every message is accounted for.
            "--drain",
            "60s",
        ],
    );
    let churner = spawn_loadgen(
        addr,
        &["churn", "--rate", &churn_s, "--duration", &duration],
    );

    // One sample a second while the load runs: (seconds, RSS, fds, connections).
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((
            started.elapsed().as_secs_f64(),
            rss(),
            fds(),
            hub.active_connections(),
        ));
    }
    let (fanout_code, f) = report(fanout);
    let (churn_code, c) = report(churner);
    let rss_end = rss();

    // Every client gone, every descriptor back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.active_connections() > 0 || fds() > fds_before {
        assert!(
            Instant::now() < deadline,
            "after the load: {} connections, {} fds (baseline {fds_before})",
            hub.active_connections(),
            fds()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = hub.stats();

    // Memory flat after warm-up: the first quarter fills queues, buffers and the allocator's
    // pools; from then on the peak may not exceed the warm level by more than 10 % + 4 MiB.
    let warm_at = samples.len() / 4;
    let rss_warm = samples[warm_at].1;
    let rss_peak_after = samples[warm_at..].iter().map(|s| s.1).max().unwrap();
    let peak_connections = samples.iter().map(|s| s.3).max().unwrap();
    let summary = json!({
        "seconds": secs,
        "subscribers": subscribers,
        "slow_subscribers": slow,
        "rate": rate,
        "churn_per_sec": churn,
        "send_buffer": SEND_BUFFER,
        "peak_connections": peak_connections,
        "churned": n(&c, "handshakes"),
        "published": n(&f, "published"),
        "deliveries": n(&f, "deliveries"),
        "lagged_notices": n(&f, "lagged"),
        "lagged_dropped": n(&f, "lagged_dropped"),
        "rss_mb": {
            "start": rss_before as f64 / MB,
            "warm": rss_warm as f64 / MB,
            "peak_after_warm": rss_peak_after as f64 / MB,
            "end_of_load": rss_end as f64 / MB,
            "after": rss() as f64 / MB,
        },
        "fds": { "before": fds_before, "peak": samples.iter().map(|s| s.2).max(), "after": fds() },
        "hub": {
            "handshakes_total": stats.handshakes_total,
            "queue_dropped_total": stats.queue_dropped_total,
            "lagged_total": stats.lagged_total,
            "protocol_errors_total": stats.protocol_errors_total,
            "pong_timeouts_total": stats.pong_timeouts_total,
            "write_timeouts_total": stats.write_timeouts_total,
            "panics_total": stats.panics_total,
        },
        "fanout_errors": f["errors"],
        "churn_errors": c["errors"],
    });
    println!("{summary}");

    assert_eq!(fanout_code, 0, "fanout failed: {f}");
    assert_eq!(churn_code, 0, "churn failed: {c}");
    assert_eq!(n(&f, "connected"), subscribers);
    // No unexpected close: no subscriber was lost, no churned connection failed.
    assert_eq!(f["errors"], json!({}), "closes seen by subscribers");
    assert_eq!(c["errors"], json!({}), "churn failures");
    // Whatever a slow reader missed, it was told about.
    assert_eq!(n(&f, "lost"), n(&f, "lagged_dropped"));
    assert!(slow == 0 || n(&f, "lagged") > 0, "slow readers were lagged");
    assert!(n(&c, "handshakes") >= churn * secs * 9 / 10);
    assert_eq!((stats.protocol_errors_total, stats.panics_total), (0, 0));
    assert!(
        (rss_peak_after as f64) <= rss_warm as f64 * 1.10 + 4.0 * MB,
        "memory grew after warm-up: {:.1} MiB -> {:.1} MiB",
        rss_warm as f64 / MB,
        rss_peak_after as f64 / MB
    );
    hub.shutdown().unwrap();
}
