//! loadgen, as a real process, against a real hub on 127.0.0.1:0 (started in this test process
//! so its own counters can be read): the figures both sides count must agree.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use takhin_monitor::{Cores, Hub, HubConfig, HubHandle};

/// Aborts the test binary if it runs longer than this (its loadgen runs add up to more than the
/// hub's tests take).
const WATCHDOG: Duration = Duration::from_secs(180);

/// Tests that read this process's descriptors and memory (the hub runs in it) run alone; the
/// others share the process freely.
fn serial(alone: bool) -> Box<dyn std::any::Any> {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    if alone {
        Box::new(LOCK.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Box::new(LOCK.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn hub(config: HubConfig) -> HubHandle {
    common::watchdog(WATCHDOG);
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len()).min(2);
    Hub::start(
        config
            .listen("127.0.0.1:0".parse().unwrap())
            .cores(Cores::Count(cores)),
    )
    .expect("hub starts")
}

/// Runs loadgen with `args` against `addr`; returns its exit code and the JSON report.
fn loadgen(addr: SocketAddr, args: &[&str]) -> (i32, Value, Output) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--server", &addr.to_string(), "--json", "--quiet"])
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let report: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report, out)
}

/// Waits (bounded) until `cond` holds; the hub updates some counters just after the client saw
/// the effect.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn fanout_deliveries_agree_with_the_hubs_counters() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--subscribers",
            "20",
            "--rate",
            "200",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(n(&r, "connected"), 20);
    let published = n(&r, "published");
    assert!(published >= 150, "published {published} of 200");
    assert_eq!(
        n(&r, "deliveries"),
        published * 20,
        "every subscriber got every message"
    );
    assert_eq!((n(&r, "lost"), n(&r, "gaps"), n(&r, "lagged")), (0, 0, 0));
    assert!(
        n(&r["latency_us"], "p50") > 0 && n(&r["latency_us"], "max") >= n(&r["latency_us"], "p99")
    );
    assert!(r["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    // The hub queued exactly what loadgen received: one frame per subscriber per message (the
    // probe message loadgen sends first reached no subscriber).
    assert_eq!(hub.stats().deliveries_total, n(&r, "deliveries"));
    assert_eq!(hub.stats().queue_dropped_total, 0);
    eventually("the hub to see every subscriber leave", || {
        hub.active_connections() == 0
    });
}

#[test]
fn batched_pipelined_publishes_reach_every_subscriber() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--subscribers",
            "10",
            "--rate",
            "1000",
            "--duration",
            "1s",
            "--batch",
            "10",
            "--pipeline",
            "4",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code, 0, "{text}");
    assert_eq!((n(&r, "batch"), n(&r, "pipeline")), (10, 4));
    assert!(text.contains("; batch 10, pipeline 4"), "{text}");
    let published = n(&r, "published");
    assert!(published >= 500, "published {published} of 1000");
    // 1000 messages are 100 full arrays, every one answered 202 with its count.
    assert_eq!(n(&r, "requests") * 10, published, "{r}");
    assert_eq!(n(&r, "publish_errors"), 0);
    // Every message of every array reached every subscriber, in order, each with its own
    // stamp (one latency sample per delivery).
    assert_eq!(n(&r, "connected"), 10);
    assert_eq!(n(&r, "deliveries"), published * 10, "{r}");
    assert_eq!(n(&r["latency_us"], "count"), published * 10);
    assert_eq!(
        (
            n(&r, "lost"),
            n(&r, "gaps"),
            n(&r, "reordered"),
            n(&r, "lagged")
        ),
        (0, 0, 0, 0),
        "{r}"
    );
    assert_eq!(hub.stats().deliveries_total, n(&r, "deliveries"));
    // One broadcast per message: the probe (an array of one), then the published ones.
    assert_eq!(hub.probe().broadcasts(), published + 1);
}

#[test]
fn a_ramp_keeps_its_rates_in_messages_with_batches() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--subscribers",
            "3",
            "--ramp",
            "--rate",
            "100",
            "--ramp-factor",
            "2",
            "--step",
            "500ms",
            "--ramp-max",
            "400",
            "--max-p99",
            "5s",
            "--drain",
            "1s",
            "--batch",
            "5",
            "--pipeline",
            "2",
        ],
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    let steps = r["steps"].as_array().unwrap();
    let rates: Vec<f64> = steps.iter().map(|s| s["rate"].as_f64().unwrap()).collect();
    assert_eq!(rates, [100.0, 200.0, 400.0], "{r}");
    for s in steps {
        assert_eq!(s["held"], true, "{r}");
        // Each step publishes rate × step messages in arrays of 5.
        let rate = s["rate"].as_f64().unwrap() as u64;
        assert_eq!((n(s, "published"), n(s, "requests")), (rate / 2, rate / 10));
        assert_eq!(n(s, "deliveries"), n(s, "published") * 3);
    }
    assert_eq!(n(&r, "deliveries"), n(&r, "published") * 3);
    assert_eq!(hub.stats().deliveries_total, n(&r, "deliveries"));
}

#[test]
fn batches_are_refused_where_a_body_is_one_message() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["fanout", "--server", "127.0.0.1:9", "--quiet"])
            .args(args)
            .output()
            .expect("loadgen runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--batch", "10", "--publish-format", "raw"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--batch 10 needs our publish API's format"),
        "{err}"
    );
    let (code, err) = run(&["--batch", "10", "--publish-url", "ws://127.0.0.1:9/ws"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--batch 10 needs an http:// publish URL"),
        "{err}"
    );
    let (code, err) = run(&["--batch", "5000", "--size", "4096"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("1 MiB body limit"), "{err}");
    let (code, err) = run(&["--pipeline", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--pipeline must be"), "{err}");
}

#[test]
fn an_array_body_stamps_each_message_on_its_own() {
    use loadgen::payload::{Batch, Message, Scanner, Wrap};
    let scanner = Scanner::default();
    let mut batch = Batch::new(100, Wrap::Hub, 3, true);
    assert_eq!(batch.len(), 3);
    let body = batch.stamp(41, 777).to_vec();
    // `[m,m,m]`: three of our publish API's messages, each around a 100-byte loadgen message.
    let one = Message::new(100, Wrap::Hub).bytes().len();
    assert_eq!(one, 100 + r#"{"type":"loadgen","data":}"#.len());
    assert_eq!(body.len(), 3 * one + 4);
    let v: Value = serde_json::from_slice(&body).expect("the body is JSON");
    let items = v.as_array().expect("an array");
    assert_eq!(items.len(), 3);
    for (i, item) in items.iter().enumerate() {
        let seq = 41 + i as u64;
        // Our publish API's message, its data the loadgen message of the asked size.
        assert_eq!(item["type"], "loadgen");
        assert_eq!((n(&item["data"], "lg"), n(&item["data"], "t")), (seq, 777));
        let data = serde_json::to_vec(&item["data"]).unwrap();
        // As the hub broadcasts it, each message carries its own stamp.
        let frame = format!(
            r#"{{"type":"loadgen","data":{},"timestamp":1,"epoch":2,"tsUs":3,"seq":{}}}"#,
            String::from_utf8_lossy(&data),
            100 + i
        );
        assert_eq!(scanner.stamp(frame.as_bytes()), Some((seq, 777)));
    }
    // Stamped again in place: the same length, new numbers.
    let again = batch.stamp(1_000_000, 5).to_vec();
    assert_eq!(again.len(), body.len());
    let v: Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(
        (n(&v[0]["data"], "lg"), n(&v[2]["data"], "lg")),
        (1_000_000, 1_000_002)
    );
    assert_eq!(n(&v[1]["data"], "t"), 5);
    // An array of one (the probe with --batch), and the bare message without.
    let single: Value =
        serde_json::from_slice(Batch::new(100, Wrap::Hub, 1, true).stamp(9, 1)).unwrap();
    assert_eq!(single.as_array().map(Vec::len), Some(1));
    assert_eq!(n(&single[0]["data"], "lg"), 9);
    let mut bare = Batch::new(100, Wrap::Hub, 1, false);
    assert_eq!(bare.stamp(9, 1), Message::new(100, Wrap::Hub).stamp(9, 1));
}

#[test]
fn a_slow_subscriber_shows_as_lagged_on_both_sides() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default().client_queue(8));
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--subscribers",
            "4",
            "--slow-subscribers",
            "1",
            "--slow-read-rate",
            "100000",
            "--size",
            "4096",
            "--rate",
            "1000",
            "--duration",
            "2s",
            "--drain",
            "1s",
        ],
    );
    let stats = hub.stats();
    assert!(
        stats.queue_dropped_total > 0,
        "the hub dropped for the slow client"
    );
    assert!(n(&r, "lagged") > 0, "loadgen saw lagged notices: {r}");
    // The slow subscriber catches up while the run drains: it reads every notice the hub
    // sent, and what it lost is exactly what the notices announced.
    assert_eq!(n(&r, "lagged"), stats.lagged_total);
    assert_eq!(
        n(&r, "lagged_dropped"),
        stats.queue_dropped_total + stats.ring_dropped_total
    );
    assert_eq!(n(&r, "lost"), n(&r, "lagged_dropped"));
    assert_eq!(n(&r, "deliveries") + n(&r, "lost"), n(&r, "published") * 4);
    // Loss above the default --max-loss 0 fails the run.
    assert_eq!(code, 2, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(r["failures"][0].as_str().unwrap().starts_with("lost"));
}

#[test]
fn churn_counts_handshakes_like_the_hub() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &["churn", "--rate", "200", "--duration", "1s"],
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(n(&r, "handshakes"), 200);
    assert_eq!(r["errors"], serde_json::json!({}));
    assert!(n(&r["handshake_us"], "count") == 200 && n(&r["handshake_us"], "p50") > 0);
    assert!(hub.stats().handshakes_total >= 200);
    eventually("every churned connection to be gone", || {
        hub.active_connections() == 0
    });
}

#[test]
fn idle_reports_memory_per_connection() {
    let _serial = serial(true);
    let hub = hub(HubConfig::default());
    let pid = std::process::id().to_string();
    let (code, r, _) = loadgen(
        hub.local_addr(),
        &[
            "idle",
            "--subscribers",
            "300",
            "--duration",
            "200ms",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(n(&r, "connected"), 300);
    assert!(r["server_rss_before"].as_u64().unwrap() > 0);
    assert!(r["server_rss_per_conn"].as_f64().is_some());
    let (before, after) = (
        r["server_fds"][0].as_u64().unwrap(),
        r["server_fds"][1].as_u64().unwrap(),
    );
    assert!(
        after <= before + 2,
        "fds back to baseline: {before} -> {after}"
    );
}

#[test]
fn refused_connections_fail_the_run_with_their_cause() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default().viewer_token(Some("secret".into())));
    let (code, r, _) = loadgen(
        hub.local_addr(),
        &["idle", "--subscribers", "5", "--duration", "100ms"],
    );
    assert_eq!(code, 2);
    assert_eq!(n(&r, "connected"), 0);
    assert_eq!(r["errors"]["http 401"], 5);
    // With the token, the same run passes.
    let (code, r, _) = loadgen(
        hub.local_addr(),
        &[
            "idle",
            "--subscribers",
            "5",
            "--duration",
            "100ms",
            "--token",
            "secret",
        ],
    );
    assert_eq!((code, n(&r, "connected")), (0, 5));
}

#[test]
fn child_processes_merge_into_one_report() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--processes",
            "2",
            "--subscribers",
            "10",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--source-addrs",
            "127.0.0.1-127.0.0.3",
        ],
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!((n(&r, "connected"), n(&r, "processes")), (10, 2));
    assert_eq!(n(&r, "deliveries"), n(&r, "published") * 10);
    assert_eq!(hub.stats().deliveries_total, n(&r, "deliveries"));
}

#[test]
fn merge_adds_up_reports_of_separate_processes() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let dir = std::env::temp_dir().join(format!("loadgen-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, subs) in ["3", "4"].iter().enumerate() {
        let (code, r, out) = loadgen(
            hub.local_addr(),
            &[
                "churn",
                "--rate",
                "50",
                "--duration",
                "200ms",
                "--subscribers",
                subs,
            ],
        );
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(n(&r, "handshakes"), 10);
        let file = dir.join(format!("{i}.json"));
        std::fs::write(&file, &out.stdout).unwrap();
        files.push(file);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("merge")
        .args(&files)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let merged: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(n(&merged, "handshakes"), 20);
    assert_eq!(n(&merged, "processes"), 2);
    assert_eq!(n(&merged["handshake_us"], "count"), 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ramp_reports_each_step_and_the_highest_rate_held() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--subscribers",
            "5",
            "--ramp",
            "--rate",
            "50",
            "--ramp-factor",
            "2",
            "--step",
            "400ms",
            "--ramp-max",
            "200",
            "--max-p99",
            "5s",
            "--drain",
            "1s",
        ],
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    let steps = r["steps"].as_array().unwrap();
    let rates: Vec<f64> = steps.iter().map(|s| s["rate"].as_f64().unwrap()).collect();
    assert_eq!(
        rates,
        [50.0, 100.0, 200.0],
        "the rate doubles until --ramp-max"
    );
    assert!(steps.iter().all(|s| s["held"] == true), "{r}");
    let held = r["max_rate_held"].as_f64().unwrap();
    assert!(held >= 180.0, "highest rate held {held}");
    let step_deliveries: u64 = steps.iter().map(|s| n(s, "deliveries")).sum();
    assert_eq!(step_deliveries, n(&r, "deliveries"));
    assert_eq!(n(&r, "deliveries"), n(&r, "published") * 5);
    assert_eq!(hub.stats().deliveries_total, n(&r, "deliveries"));
}

#[test]
fn metrics_reads_the_servers_ticks() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let topics = takhin_monitor::TopicManager::new(takhin_monitor::Recorder::new(), None);
    let groups = takhin_monitor::GroupCoordinator::new(None);
    let source = takhin_monitor::StandardSource::new(topics, groups, Some(hub.probe()));
    let interval = Duration::from_millis(200);
    let ticker = hub.start_ticker(source, interval).unwrap();
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "metrics",
            "--subscribers",
            "10",
            "--duration",
            "1500ms",
            "--metrics-interval",
            "200ms",
        ],
    );
    ticker.stop();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    // About 7 ticks in 1.5 s, each to 10 subscribers (the snapshot on connect not counted).
    let deliveries = n(&r, "deliveries");
    assert!(
        (40..=90).contains(&deliveries),
        "{deliveries} tick deliveries"
    );
    assert!(
        n(&r["frame_bytes"], "p50") > 500,
        "a MonitoringMetrics frame"
    );
    assert!(n(&r["jitter_us"], "count") > 0 && n(&r["tick_to_last_us"], "count") >= 4);
    assert!(n(&r["latency_us"], "p50") > 0);
    assert!(deliveries <= hub.stats().deliveries_total);
}

#[test]
fn deflate_connections_receive_compressed_snapshots() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    // Enough topics for a metrics frame well above the hub's compression threshold (~1 KiB).
    let topics = takhin_monitor::TopicManager::new(takhin_monitor::Recorder::new(), None);
    for i in 0..50 {
        topics.create(&format!("orders-{i}"), 4).unwrap();
    }
    let groups = takhin_monitor::GroupCoordinator::new(None);
    let source = takhin_monitor::StandardSource::new(topics, groups, Some(hub.probe()));
    let ticker = hub
        .start_ticker(source, Duration::from_millis(200))
        .unwrap();
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "metrics",
            "--subscribers",
            "10",
            "--duration",
            "1500ms",
            "--metrics-interval",
            "200ms",
            "--threads",
            "1",
            "--deflate",
            "--deflate-sample",
            "2",
        ],
    );
    ticker.stop();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code, 0, "{text}");
    let d = &r["deflate"];
    // Every 2nd connection (of the one thread) inflates.
    assert_eq!(
        (n(d, "sample"), n(d, "connections"), n(d, "sampled")),
        (2, 10, 5),
        "{d}"
    );
    // About 7 ticks in 1.5 s to each of 10 subscribers, read or not (the snapshot on
    // connect is not a tick on either kind of connection).
    let deliveries = n(&r, "deliveries");
    assert!(
        (40..=90).contains(&deliveries),
        "{deliveries} tick deliveries"
    );
    let (inflated, opaque) = (n(d, "inflated"), n(d, "opaque"));
    assert!(inflated > 0 && opaque > 0, "{d}");
    // Every frame was compressed: the snapshots and the ticks; the read ones all counted.
    assert_eq!(n(d, "compressed"), deliveries + 10, "{d}");
    // On the 5 that read: a snapshot and a first tick each (no interval yet), then one
    // jitter sample per tick.
    assert_eq!(inflated, n(&r["jitter_us"], "count") + 5 * 2, "{d}");
    assert!(d["ratio"].as_f64().unwrap() > 2.0, "{d}");
    // Frame sizes as read (inflated), and on the wire (compressed).
    let (read, wire) = (n(&r["frame_bytes"], "p50"), n(&r["wire_bytes"], "p50"));
    assert!(
        read > 1024 && wire * 2 < read,
        "{read} B read from {wire} B on the wire"
    );
    assert!(n(&r["tick_to_last_us"], "count") >= 4);
    assert!(
        text.contains("deflate      10 of 10 upgrades accepted"),
        "{text}"
    );
}

#[test]
fn deflate_fanout_reads_a_sample_and_counts_the_rest() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--subscribers",
            "8",
            "--threads",
            "1",
            "--size",
            "4096",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--deflate",
            "--deflate-sample",
            "4",
        ],
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    let published = n(&r, "published");
    let d = &r["deflate"];
    assert_eq!((n(d, "connections"), n(d, "sampled")), (8, 2), "{d}");
    // Every 4 KiB message is compressed; 2 of 8 subscribers read theirs, the rest count them.
    assert_eq!(n(&r, "deliveries"), published * 8, "{r}");
    assert_eq!((n(&r, "lost"), n(&r, "gaps")), (0, 0));
    assert_eq!(
        (n(d, "inflated"), n(d, "opaque")),
        (published * 2, published * 6),
        "{d}"
    );
    assert_eq!(n(d, "compressed"), published * 8);
    assert_eq!(n(&r["latency_us"], "count"), published * 2);
    // The padding compresses well: "xxxx…".
    assert!(d["ratio"].as_f64().unwrap() > 5.0, "{d}");
    assert!(n(&r["wire_bytes"], "count") >= published * 8);
    assert_eq!(hub.stats().deliveries_total, n(&r, "deliveries"));
}

#[test]
fn a_subscriber_the_hub_drops_is_reported_as_lost() {
    let _serial = serial(false);
    // A subscriber that reads next to nothing makes no progress; the hub drops it after the
    // write wait, and loadgen must say so rather than count it as a clean end.
    let hub = hub(HubConfig::default()
        .write_wait(Duration::from_millis(500))
        .send_buffer(Some(4096)));
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "fanout",
            "--subscribers",
            "3",
            "--slow-subscribers",
            "1",
            "--slow-read-rate",
            "1",
            "--size",
            "8192",
            "--rate",
            "200",
            "--duration",
            "3s",
            "--max-loss",
            "1",
        ],
    );
    assert_eq!(hub.stats().write_timeouts_total, 1, "{:?}", hub.stats());
    let errors: u64 = r["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(errors, 1, "{r}");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn listen_only_counts_another_loadgens_stream() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let addr = hub.local_addr().to_string();
    let listener = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "fanout",
            "--listen-only",
            "--subscribers",
            "4",
            "--duration",
            "4s",
        ])
        .args(["--server", &addr, "--json", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("loadgen starts");
    let publisher = std::thread::spawn({
        let addr = hub.local_addr();
        move || {
            // Once the listener's 4 subscribers are in (plus none of its own yet).
            eventually_connections(&addr, 4);
            loadgen(
                addr,
                &[
                    "fanout",
                    "--subscribers",
                    "2",
                    "--rate",
                    "100",
                    "--duration",
                    "1s",
                ],
            )
        }
    });
    let out = listener.wait_with_output().expect("loadgen runs");
    let (code, published, _) = publisher.join().unwrap();
    assert_eq!(code, 0);
    let r: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(n(&r, "connected"), 4);
    // Every message the other loadgen published (its probe included) reached the 4 listeners.
    assert_eq!(
        n(&r, "deliveries"),
        (n(&published, "published") + 1) * 4,
        "{r}"
    );
}

#[test]
fn a_resume_storm_gives_every_client_exactly_what_it_missed() {
    let _serial = serial(false);
    let hub = hub(HubConfig::default());
    let pid = std::process::id().to_string();
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "resume",
            "--subscribers",
            "50",
            "--missed",
            "20",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    let x = &r["resume"];
    assert_eq!(n(&r, "connected"), 50);
    assert_eq!((n(x, "missed"), n(x, "reconnected")), (20, 50), "{x}");
    assert_eq!(
        (n(x, "recovered"), n(x, "not_recovered"), n(x, "unanswered")),
        (50, 0, 0),
        "{x}"
    );
    let exactly_missed = serde_json::json!({"min": 20, "median": 20, "max": 20});
    assert_eq!(x["replayed"], exactly_missed, "the server's count");
    assert_eq!(
        x["replayed_messages"], exactly_missed,
        "what loadgen received"
    );
    assert_eq!(n(x, "duplicates"), 0);
    assert_eq!(n(x, "live_after"), 50, "every client is live again");
    assert_eq!(n(&x["recover_us"], "count"), 50);
    assert!(n(&x["recover_us"], "p50") > 0 && x["storm_s"].as_f64().unwrap() > 0.0);
    assert!(r["server_cpu_s"].as_f64().is_some());
    // The marker, the missed messages and the live one.
    assert_eq!(n(&r, "published"), 22);
    // The hub counted the same resumes and replays.
    let stats = hub.stats();
    assert_eq!(
        (stats.resumes_total, stats.resumes_recovered_total),
        (50, 50)
    );
    assert_eq!(stats.replayed_total, 50 * 20);
}

#[test]
fn a_resume_the_history_cannot_serve_fails_the_run() {
    let _serial = serial(false);
    // The history holds 5 broadcasts: 20 missed ones cannot all be given back. Over two
    // processes: the child drops and comes back on the coordinator's word.
    let hub = hub(HubConfig::default().history_frames(5));
    let (code, r, out) = loadgen(
        hub.local_addr(),
        &[
            "resume",
            "--subscribers",
            "10",
            "--missed",
            "20",
            "--processes",
            "2",
        ],
    );
    assert_eq!(code, 2, "{}", String::from_utf8_lossy(&out.stdout));
    let x = &r["resume"];
    assert_eq!((n(&r, "processes"), n(x, "reconnected")), (2, 10));
    assert_eq!((n(x, "recovered"), n(x, "not_recovered")), (0, 10), "{x}");
    assert_eq!(n(x, "live_after"), 10, "live again all the same");
    assert!(
        r["failures"][0]
            .as_str()
            .unwrap()
            .contains("recovered:false"),
        "{r}"
    );
}

/// Waits until the hub at `addr` reports `n` WebSocket clients in /metrics.
fn eventually_connections(addr: &SocketAddr, n: u64) {
    eventually("the listeners to connect", || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.lines()
            .any(|l| l.strip_prefix("takhin_connections ") == Some(&n.to_string()))
    });
}
