//! The Kafka source against a real Kafka-compatible broker: tansu (`common/tansu.rs`), started
//! by each test on a free loopback port. Without tansu (`TANSU`, looked for by build.rs) these
//! tests are ignored, saying so; with `CI` set they run and fail instead. `.ci/run` installs it.
//!
//! The hub runs in-process (`HubHandle::watch_kafka`, polling every [`TICK`]) except in the
//! outage test, which runs the binary as an operator would (`--source kafka`) and reads its
//! log. The tests change the cluster with the crate's own Kafka client
//! (`kafka_support::Client`: create and delete topics, produce one record per request, commit
//! a group's offsets without joining it) and watch it through real WebSocket clients and HTTP.
//! Nothing sleeps in place of an event: every wait reads frames (one `metrics` frame per poll)
//! until the frame or the state it waits for, with a deadline.
//!
//! What tansu 0.6.0 does that the tests work around or pin (see also
//! `src/sources/kafka/client/tests.rs`): its log-end offset is wrong after a produce request
//! carrying several records, so every record is produced on its own; it does not answer
//! DescribeLogDirs, so `totalBytes` is 0; a group that only has committed offsets is "Empty"
//! with 0 members; memory storage starts empty after a restart. With `--authentication` it
//! refuses every SCRAM user (its storage keeps no credentials) and closes the connection on a
//! PLAIN handshake, so only refusals are shown against it; and it cannot serve TLS at all: the
//! TLS tests reach it through `common::tansu::TlsFront`, a TLS terminator in the test (see
//! `common/tansu.rs`).

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::tansu::{Setup, Tansu, TlsFront};
use common::{http, READ_TIMEOUT};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use takhin_monitor::kafka_support::Client;
use takhin_monitor::{HubHandle, KafkaConfig, Ticker};

/// How often the in-process hub polls the cluster (one `metrics` frame each).
const TICK: Duration = Duration::from_millis(200);

/// The event types the Kafka source broadcasts on `events`.
const EVENT_TYPES: [&str; 3] = ["topic_created", "topic_deleted", "group_updated"];

/// A hub on 127.0.0.1:0 watching `tansu` every [`TICK`], with a 2 s request timeout. Keep the
/// ticker: dropping it stops the polls.
fn watch(tansu: &Tansu) -> (HubHandle, Ticker) {
    watch_with(KafkaConfig::new(vec![tansu.bootstrap()]))
}

/// [`watch`] with more of the source's configuration (the request timeout is the tests' own).
fn watch_with(kafka: KafkaConfig) -> (HubHandle, Ticker) {
    let hub = common::start(common::config());
    let kafka = kafka.request_timeout(Duration::from_secs(2));
    let ticker = hub
        .watch_kafka(&kafka, TICK)
        .expect("the Kafka source starts");
    (hub, ticker)
}

/// The tests' own Kafka client, to change the cluster.
fn admin(tansu: &Tansu) -> Client {
    Client::new(
        vec![tansu.bootstrap()],
        "takhin-test",
        Duration::from_secs(5),
    )
    .expect("a valid bootstrap address")
}

/// Produces `n` records to `topic`/`partition`, one request per record (tansu's log-end offset
/// is wrong after a request carrying several), checking that they take the offsets from
/// `first` on.
fn produce(admin: &mut Client, topic: &str, partition: i32, first: i64, n: i64) {
    for i in 0..n {
        let offset = admin
            .produce(
                topic,
                partition,
                Some(b"k"),
                format!("record {i}").as_bytes(),
            )
            .unwrap_or_else(|e| panic!("producing to {topic}/{partition}: {e}"));
        assert_eq!(
            offset,
            first + i,
            "offset of record {i} in {topic}/{partition}"
        );
    }
}

/// Creates `topic` with one partition per entry of `counts` and produces that many records to
/// each.
fn topic_with(admin: &mut Client, topic: &str, counts: &[i64]) {
    let partitions = i32::try_from(counts.len()).unwrap();
    admin
        .create_topic(topic, partitions, 1)
        .unwrap_or_else(|e| panic!("creating {topic}: {e}"));
    for (p, &n) in (0..).zip(counts) {
        produce(admin, topic, p, 0, n);
    }
}

/// A dashboard: a real WebSocket client on the hub's defaults (`metrics` and `events`). Every
/// event it reads is queued for [`Dashboard::next_event`], whatever was waited for.
struct Dashboard {
    ws: common::Client,
    events: VecDeque<Value>,
}

impl Dashboard {
    fn connect(addr: SocketAddr) -> Self {
        Self {
            ws: common::connect(addr),
            events: VecDeque::new(),
        }
    }

    /// The next frame, whatever its type.
    fn frame(&mut self) -> Value {
        let v = self.ws.recv();
        if EVENT_TYPES.iter().any(|&t| v["type"] == t) {
            self.events
                .push_back(json!({"type": v["type"], "data": v["data"]}));
        }
        v
    }

    /// The next frame of type `kind`.
    fn frame_of(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no {kind} frame in time");
            let v = self.frame();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next `metrics` frame's data.
    fn metrics(&mut self) -> Value {
        self.frame_of("metrics")["data"].clone()
    }

    /// The data of the first `metrics` frame (from now on) for which `done` holds.
    fn metrics_where(&mut self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let m = self.metrics();
            if done(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics frame with {what} in time; last: {m}"
            );
        }
    }

    /// The next event (`{"type", "data"}`), read now or earlier.
    fn next_event(&mut self) -> Value {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            assert!(Instant::now() < deadline, "no event in time");
            self.frame();
        }
    }

    /// Reads `polls` more `metrics` frames (as many polls of the cluster) and checks that no
    /// event came before or among them.
    fn no_event_for(&mut self, polls: usize) {
        for _ in 0..polls {
            self.metrics();
        }
        assert!(
            self.events.is_empty(),
            "unexpected events: {:?}",
            self.events
        );
    }

    /// Subscribes to `channel` and returns the first frame of type `kind` after the reply.
    fn subscribe(&mut self, channel: &str, kind: &str) -> Value {
        self.ws
            .send_json(&json!({"type": "subscribe", "data": channel}));
        let reply = self.frame_of("subscribed");
        assert_eq!(reply["data"], json!([channel]));
        self.frame_of(kind)
    }
}

/// The takhin_source_* figures of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SourceMetrics {
    up: f64,
    errors: f64,
    polls: f64,
    poll_seconds: f64,
}

fn source_metrics(addr: SocketAddr) -> SourceMetrics {
    let value = common::prometheus(addr);
    SourceMetrics {
        up: value("takhin_source_up"),
        errors: value("takhin_source_errors_total"),
        polls: value("takhin_source_polls_total"),
        poll_seconds: value("takhin_source_poll_duration_seconds"),
    }
}

/// Reads `metrics` frames (one per poll) until `/metrics` shows `done`; returns what it showed.
fn wait_source(
    d: &mut Dashboard,
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&SourceMetrics) -> bool,
) -> SourceMetrics {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let s = source_metrics(addr);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not in time; /metrics says {s:?}"
        );
        d.metrics();
    }
}

/// Waits until a poll has succeeded (`takhin_source_up 1`): the hub's view holds the cluster,
/// so what changes from now on is announced.
fn wait_up(d: &mut Dashboard, addr: SocketAddr) -> SourceMetrics {
    wait_source(d, addr, "source up", |s| s.up == 1.0)
}

/// `GET path` as JSON, checking the status.
fn get_json(addr: SocketAddr, path: &str, status: u16) -> Value {
    let a = http(addr, "GET", path, &[], None);
    assert_eq!(a.status, status, "GET {path}: {a:?}");
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "GET {path}: {a:?}"
    );
    a.json()
}

/// One entry of `topicStats`, if listed.
fn topic_stats<'a>(m: &'a Value, name: &str) -> Option<&'a Value> {
    m["topicStats"]
        .as_array()
        .expect("topicStats is an array")
        .iter()
        .find(|t| t["name"] == name)
}

/// The names in `topicStats`, in order.
fn topic_names(m: &Value) -> Vec<String> {
    m["topicStats"]
        .as_array()
        .expect("topicStats is an array")
        .iter()
        .map(|t| t["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// `v` with only `keys`, each of which it must have (`null` included): added fields, such as
/// lag in time, are left out of the comparisons.
fn pick(v: &Value, keys: &[&str]) -> Value {
    let fields = keys.iter().map(|&k| {
        let field = v.get(k).unwrap_or_else(|| panic!("no {k:?} in {v}"));
        (k.to_owned(), field.clone())
    });
    Value::Object(fields.collect())
}

/// A group's lag (a `consumerLags` entry or a `group_detail`'s topic lags) with the fields of
/// docs/protocol.md only.
fn topic_lags(lags: &Value) -> Value {
    let topics = lags.as_array().expect("topicLags is an array").iter();
    let topics = topics.map(|t| {
        let partitions = t["partitionLags"].as_array().expect("partitionLags");
        let partitions = partitions
            .iter()
            .map(|p| pick(p, &["partition", "currentOffset", "logEndOffset", "lag"]));
        json!({
            "topic": t["topic"],
            "totalLag": t["totalLag"],
            "partitionLags": partitions.collect::<Vec<_>>(),
        })
    });
    Value::Array(topics.collect())
}

/// `consumerLags` with the fields of docs/protocol.md only.
fn consumer_lags(m: &Value) -> Value {
    let groups = m["consumerLags"]
        .as_array()
        .expect("consumerLags is an array");
    let groups = groups.iter().map(|g| {
        json!({
            "groupId": g["groupId"],
            "totalLag": g["totalLag"],
            "topicLags": topic_lags(&g["topicLags"]),
        })
    });
    Value::Array(groups.collect())
}

/// One partition's lag entry, as expected.
fn lag(partition: u32, current: Option<i64>, log_end: i64) -> Value {
    json!({
        "partition": partition,
        "currentOffset": current,
        "logEndOffset": log_end,
        "lag": current.map(|c| (log_end - c).max(0)),
    })
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// ApiVersions v0 (API key 18) on a new connection: whether the broker answers it, with the
/// request's correlation id, no error, and ApiVersions among its APIs. Hand-encoded: a check
/// that a Kafka broker listens, not a client.
fn answers_api_versions(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    // Header v1: api key, api version, correlation id, client id (int16 length + bytes); the
    // v0 body is empty.
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes());
    request.extend_from_slice(&0i16.to_be_bytes());
    request.extend_from_slice(&7i32.to_be_bytes());
    request.extend_from_slice(&4i16.to_be_bytes());
    request.extend_from_slice(b"test");
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    s.write_all(&framed).unwrap();

    let mut size = [0u8; 4];
    s.read_exact(&mut size).expect("an ApiVersions answer");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).expect("the whole answer");
    // Header v0: correlation id; body v0: error code, then [api key, min, max] with an int32
    // count.
    let correlation = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let error = i16::from_be_bytes(body[4..6].try_into().unwrap());
    let count = i32::from_be_bytes(body[6..10].try_into().unwrap()) as usize;
    let keys: Vec<i16> = (0..count)
        .map(|i| i16::from_be_bytes(body[10 + 6 * i..12 + 6 * i].try_into().unwrap()))
        .collect();
    assert_eq!((correlation, error), (7, 0), "ApiVersions answer");
    keys.contains(&18)
}

#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn tansu_starts_stops_and_restarts_on_the_same_port() {
    let mut tansu = Tansu::start();
    let (addr, port) = (tansu.addr(), tansu.port());
    assert!(addr.ip().is_loopback() && addr.port() == port);
    assert_eq!(tansu.bootstrap(), format!("127.0.0.1:{port}"));
    assert!(tansu.is_running());
    assert!(answers_api_versions(addr), "{:?}", tansu.log());

    tansu.stop();
    assert!(!tansu.is_running());
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert!(refused.is_err(), "still accepting after stop");
    tansu.stop(); // twice: nothing happens

    tansu.restart();
    assert_eq!(tansu.addr(), addr);
    assert!(tansu.is_running());
    assert!(answers_api_versions(addr), "{:?}", tansu.log());
    // Restarting a running broker works too (stop, then start).
    tansu.restart();
    assert!(answers_api_versions(addr), "{:?}", tansu.log());
}

/// A topic of 3 partitions holding 4 + 7 + 1 records shows exactly that: in `topicStats` and
/// the cluster totals of the first `metrics` frame that lists it, in `GET /api/topics` (with
/// each partition's log-end offset) and in its `topic_detail`; records produced later raise
/// `totalMessages` by exactly their number, with a `produceRate` above 0 in the frame of the
/// poll that first sees them. The frame's `source` names the cluster, up.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn topic_stats_show_the_partitions_and_records_of_a_topic() {
    let tansu = Tansu::start();
    let mut admin = admin(&tansu);
    topic_with(&mut admin, "orders", &[4, 7, 1]);
    let (hub, _ticker) = watch(&tansu);
    let addr = hub.local_addr();
    let mut d = Dashboard::connect(addr);

    let m = d.metrics_where("topic orders", |m| topic_stats(m, "orders").is_some());
    // Only this topic (internal ones such as __consumer_offsets are not listed).
    assert_eq!(topic_names(&m), ["orders"], "{m}");
    let s = topic_stats(&m, "orders").unwrap();
    // tansu does not answer DescribeLogDirs: no size is known.
    assert_eq!(
        pick(s, &["name", "partitions", "totalMessages", "totalBytes"]),
        json!({"name": "orders", "partitions": 3, "totalMessages": 12, "totalBytes": 0}),
    );
    let health = &m["clusterHealth"];
    assert_eq!(
        (
            &health["totalTopics"],
            &health["totalPartitions"],
            &health["totalConsumers"]
        ),
        (&json!(1), &json!(3), &json!(0)),
        "{m}"
    );
    assert_eq!(m["consumerLags"], json!([]));
    // The added `source` field: which cluster (bootstrap and tansu's cluster id), and up.
    let source = &m["source"];
    assert_eq!(
        pick(source, &["kind", "cluster", "state"]),
        json!({"kind": "kafka", "cluster": format!("{} (tansu_cluster)", tansu.bootstrap()),
               "state": "up"}),
    );
    assert!(source.get("error").is_none(), "{source}");
    // No canary: no latency is measured, and the percentiles are 0.
    assert!(source.get("canary").is_none(), "{source}");
    assert_eq!(
        m["latency"],
        json!({"produceP50": 0.0, "produceP95": 0.0, "produceP99": 0.0,
               "fetchP50": 0.0, "fetchP95": 0.0, "fetchP99": 0.0})
    );

    let orders = json!({
        "name": "orders", "partitions": 3, "totalMessages": 12, "totalBytes": 0,
        "logEndOffsets": [4, 7, 1],
    });
    assert_eq!(get_json(addr, "/api/topics", 200), json!([orders]));
    assert_eq!(get_json(addr, "/api/topics/orders", 200), orders);
    assert!(get_json(addr, "/api/topics/missing", 404)["error"].is_string());

    let detail = d.subscribe("topic:orders", "topic_detail")["data"].clone();
    assert_eq!(
        pick(
            &detail,
            &["name", "partitions", "totalMessages", "partitionOffsets"]
        ),
        json!({
            "name": "orders", "partitions": 3, "totalMessages": 12,
            "partitionOffsets": [
                {"partition": 0, "logEndOffset": 4},
                {"partition": 1, "logEndOffset": 7},
                {"partition": 2, "logEndOffset": 1},
            ],
        })
    );

    // Three more records on partition 2: the first frame that differs counts some of them, and
    // its poll saw the log end grow.
    produce(&mut admin, "orders", 2, 1, 3);
    let total = |m: &Value| topic_stats(m, "orders").map(|s| s["totalMessages"].clone());
    let m = d.metrics_where("more records", |m| total(m) != Some(json!(12)));
    let s = topic_stats(&m, "orders").expect("orders still listed");
    let n = s["totalMessages"].as_u64().unwrap();
    assert!((13..=15).contains(&n), "{s}");
    assert!(s["produceRate"].as_f64().unwrap() > 0.0, "{s}");
    assert!(
        m["throughput"]["produceRate"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    d.metrics_where("all 15 records", |m| total(m) == Some(json!(15)));
    assert_eq!(
        get_json(addr, "/api/topics/orders", 200)["logEndOffsets"],
        json!([4, 7, 4])
    );
}

/// Two groups with committed offsets (and partitions without) show exactly their lag per
/// partition (log end − committed, `null` without a commit) and in total, per topic and per
/// group, in `consumerLags`, `GET /api/groups` and `group_detail`; a new commit changes the lag
/// by exactly that much, and the topic's `fetchRate` shows the consumption. Lag in time
/// (`lagSeconds`) is 0 at the log end, absent without a commit, above 0 behind.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn consumer_lags_show_each_partitions_lag_and_the_totals() {
    let tansu = Tansu::start();
    let mut admin = admin(&tansu);
    topic_with(&mut admin, "orders", &[5, 3, 2]);
    topic_with(&mut admin, "audit", &[4]);
    for (group, topic, partition, offset) in [
        ("billing", "orders", 0, 2),
        ("billing", "orders", 1, 3),
        ("billing", "audit", 0, 1),
        ("shipping", "orders", 2, 1),
    ] {
        admin
            .commit_offset(group, topic, partition, offset)
            .unwrap_or_else(|e| panic!("committing {group} {topic}/{partition}: {e}"));
    }
    let (hub, _ticker) = watch(&tansu);
    let addr = hub.local_addr();
    let mut d = Dashboard::connect(addr);

    let groups = |m: &Value| m["consumerLags"].as_array().map_or(0, Vec::len);
    let m = d.metrics_where("both groups", |m| groups(m) == 2);
    let billing_lags = json!([
        {"topic": "audit", "totalLag": 3, "partitionLags": [lag(0, Some(1), 4)]},
        {"topic": "orders", "totalLag": 3, "partitionLags": [
            lag(0, Some(2), 5), lag(1, Some(3), 3), lag(2, None, 2),
        ]},
    ]);
    assert_eq!(
        consumer_lags(&m),
        json!([
            {"groupId": "billing", "totalLag": 6, "topicLags": billing_lags},
            {"groupId": "shipping", "totalLag": 1, "topicLags": [
                {"topic": "orders", "totalLag": 1, "partitionLags": [
                    lag(0, None, 5), lag(1, None, 3), lag(2, Some(1), 2),
                ]},
            ]},
        ])
    );
    // The lag of a partition without a commit is null, not 0 or a negative number.
    assert_eq!(
        m["consumerLags"][0]["topicLags"][1]["partitionLags"][2]["lag"],
        Value::Null
    );
    // tansu: a group with only committed offsets is Empty, without members.
    assert_eq!(m["clusterHealth"]["totalConsumers"], 0);
    let billing = json!({"groupId": "billing", "state": "Empty", "members": 0});
    assert_eq!(
        get_json(addr, "/api/groups", 200),
        json!([billing, {"groupId": "shipping", "state": "Empty", "members": 0}])
    );
    assert_eq!(get_json(addr, "/api/groups/billing", 200), billing);
    assert!(get_json(addr, "/api/groups/missing", 404)["error"].is_string());
    let detail = d.subscribe("group:billing", "group_detail")["data"].clone();
    assert_eq!(
        pick(&detail, &["groupId", "state", "members", "totalLag"]),
        json!({"groupId": "billing", "state": "Empty", "members": 0, "totalLag": 6})
    );
    assert_eq!(topic_lags(&detail["topicLags"]), billing_lags);

    // billing catches up on orders/0 (2 -> 5): its lag there drops to 0, the totals by 3, and
    // the poll that sees it measures consumption on orders.
    admin.commit_offset("billing", "orders", 0, 5).unwrap();
    let committed = |m: &Value| {
        m["consumerLags"][0]["topicLags"][1]["partitionLags"][0]["currentOffset"].clone()
    };
    let m = d.metrics_where("the new commit", |m| committed(m) != json!(2));
    let lags = consumer_lags(&m);
    assert_eq!(
        lags[0],
        json!({"groupId": "billing", "totalLag": 3, "topicLags": [
            {"topic": "audit", "totalLag": 3, "partitionLags": [lag(0, Some(1), 4)]},
            {"topic": "orders", "totalLag": 0, "partitionLags": [
                lag(0, Some(5), 5), lag(1, Some(3), 3), lag(2, None, 2),
            ]},
        ]})
    );
    assert_eq!(lags[1]["totalLag"], 1, "{lags}");
    let orders = topic_stats(&m, "orders").unwrap();
    assert!(orders["fetchRate"].as_f64().unwrap() > 0.0, "{orders}");
    assert_eq!(topic_stats(&m, "audit").unwrap()["fetchRate"], 0.0);

    // The added lag in time, this being at least the second poll of every partition: 0 at the
    // log end, absent without a commit, above 0 behind (the commit is older than every
    // point of the history: the oldest point's age); a group's is its largest.
    let billing = &m["consumerLags"][0];
    let seconds = |topic: usize, p: usize| {
        billing["topicLags"][topic]["partitionLags"][p]
            .get("lagSeconds")
            .cloned()
    };
    assert_eq!(seconds(1, 0), Some(json!(0.0)), "{billing}");
    assert_eq!(seconds(1, 1), Some(json!(0.0)), "{billing}");
    assert_eq!(seconds(1, 2), None, "{billing}");
    let behind = seconds(0, 0).and_then(|s| s.as_f64());
    assert!(behind.is_some_and(|s| s > 0.0), "{billing}");
    assert_eq!(billing["lagSeconds"].as_f64(), behind, "{billing}");
}

/// Changes on the broker reach the `events` channel, once each and in order, from the second
/// poll on: `topic_created` (name, partitions) with the topic in the next `metrics` frame,
/// `topic_deleted` with the topic gone from it, and `group_updated` when a group first commits
/// (tansu: "Empty", 0 members). A commit that changes neither state nor members is no event.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn topic_and_group_changes_are_broadcast_as_events() {
    let tansu = Tansu::start();
    let mut admin = admin(&tansu);
    let (hub, _ticker) = watch(&tansu);
    let addr = hub.local_addr();
    let mut d = Dashboard::connect(addr);
    wait_up(&mut d, addr);

    admin.create_topic("orders", 3, 1).unwrap();
    assert_eq!(
        d.next_event(),
        json!({"type": "topic_created", "data": {"name": "orders", "partitions": 3}})
    );
    // The frame of the poll that saw it.
    let m = d.metrics();
    assert_eq!(topic_stats(&m, "orders").unwrap()["partitions"], 3, "{m}");

    admin.delete_topic("orders").unwrap();
    assert_eq!(
        d.next_event(),
        json!({"type": "topic_deleted", "data": {"name": "orders"}})
    );
    let m = d.metrics();
    assert_eq!(topic_names(&m), Vec::<String>::new(), "{m}");

    admin.create_topic("payments", 1, 1).unwrap();
    assert_eq!(
        d.next_event(),
        json!({"type": "topic_created", "data": {"name": "payments", "partitions": 1}})
    );
    admin.commit_offset("billing", "payments", 0, 0).unwrap();
    assert_eq!(
        d.next_event(),
        json!({"type": "group_updated",
               "data": {"groupId": "billing", "state": "Empty", "members": 0}})
    );
    let m = d.metrics();
    assert_eq!(
        consumer_lags(&m),
        json!([{"groupId": "billing", "totalLag": 0, "topicLags": [
            {"topic": "payments", "totalLag": 0, "partitionLags": [lag(0, Some(0), 0)]},
        ]}])
    );

    // Another commit by the same group: its lag moves, its state and members do not.
    produce(&mut admin, "payments", 0, 0, 2);
    admin.commit_offset("billing", "payments", 0, 1).unwrap();
    d.metrics_where("the second commit", |m| {
        consumer_lags(m)[0]["topicLags"][0]["partitionLags"][0] == lag(0, Some(1), 2)
    });
    d.no_event_for(5);
    assert_eq!(
        get_json(addr, "/api/groups", 200),
        json!([{"groupId": "billing", "state": "Empty", "members": 0}])
    );
}

/// The binary, as an operator runs it (`--source kafka`): the broker stopped, the hub keeps
/// serving (a connected client keeps its stream and answers, `/healthz` says ok, new clients
/// are accepted, REST reads answer) while `/metrics` reports the source down with errors
/// counting up, and the snapshot stays the last good poll's (its `source` says down, since
/// when and why); restarted on the same port
/// (empty: memory storage), the source is up again without a restart of the hub, the change
/// is announced (the old topic deleted, a fresh one created) and the fresh topic shows in the
/// stream of the clients that stayed. Each change of state is logged once.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn the_hub_serves_through_a_broker_outage_and_resumes() {
    let mut tansu = Tansu::start();
    topic_with(&mut admin(&tansu), "before", &[1]);
    let bootstrap = tansu.bootstrap();
    let server = common::spawn_server(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--source",
            "kafka",
            "--kafka-brokers",
            &bootstrap,
            "--kafka-request-timeout",
            "2",
            "--metrics-interval",
            "0.2",
        ],
        &[],
    );
    let addr = server.addr;
    let mut stayed = Dashboard::connect(addr);
    stayed.metrics_where("topic before", |m| topic_stats(m, "before").is_some());
    let up = source_metrics(addr);
    assert_eq!((up.up, up.errors), (1.0, 0.0), "{up:?}");
    assert!(up.polls >= 1.0, "{up:?}");
    assert!(up.poll_seconds > 0.0 && up.poll_seconds < 2.0, "{up:?}");

    tansu.stop();
    // Every poll that succeeded began before this.
    let stopped_at = unix_secs();
    let down = wait_source(&mut stayed, addr, "source down", |s| s.up == 0.0);
    assert!(down.errors >= 1.0, "{down:?}");
    let later = wait_source(&mut stayed, addr, "errors counting up", |s| {
        s.errors > down.errors
    });
    assert_eq!(later.up, 0.0, "{later:?}");
    assert!(later.polls > down.polls, "{later:?}");
    // Connection refused fails a poll at once, well within the request timeout.
    assert!(later.poll_seconds < 2.0, "{later:?}");

    // Still serving: the stream goes on (the last good poll's snapshot), pings are answered.
    let m = stayed.metrics();
    assert!(m["timestamp"].as_u64().unwrap() <= stopped_at, "{m}");
    assert!(topic_stats(&m, "before").is_some(), "{m}");
    let source = &m["source"];
    assert_eq!(source["state"], "down", "{m}");
    // Down since the first failed poll: after the last good one began, and not in the future.
    let since = source["since"].as_u64().unwrap();
    assert!(
        since >= m["timestamp"].as_u64().unwrap() && since <= unix_secs(),
        "{m}"
    );
    assert!(
        source["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{source}"
    );
    stayed.ws.send_json(&json!({"type": "ping"}));
    stayed.frame_of("pong");
    let health = http(addr, "GET", "/healthz", &[], None);
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(get_json(addr, "/api/topics", 200)[0]["name"], "before");
    // A new client is accepted (connect waits for its pong) and gets the snapshot at once.
    let mut joined = Dashboard::connect(addr);
    assert!(joined.metrics()["clusterHealth"].is_object());

    tansu.restart();
    let back = wait_source(&mut stayed, addr, "source up again", |s| s.up == 1.0);
    assert!(
        back.errors >= later.errors,
        "errors_total went back: {back:?}"
    );
    let mut admin = admin(&tansu);
    topic_with(&mut admin, "after", &[1, 1]);
    for d in [&mut stayed, &mut joined] {
        let m = d.metrics_where("topic after", |m| topic_stats(m, "after").is_some());
        // The restarted broker is empty: only the fresh topic.
        assert_eq!(topic_names(&m), ["after"], "{m}");
        assert!(m["timestamp"].as_u64().unwrap() >= stopped_at, "{m}");
        let source = &m["source"];
        assert_eq!(source["state"], "up", "{m}");
        assert!(source["since"].as_u64().unwrap() >= stopped_at, "{source}");
        assert!(source.get("error").is_none(), "{source}");
        let m = d.metrics_where("both records", |m| {
            topic_stats(m, "after").unwrap()["totalMessages"] == 2
        });
        assert_eq!(topic_stats(&m, "after").unwrap()["partitions"], 2);
        assert_eq!(
            d.events,
            [
                json!({"type": "topic_deleted", "data": {"name": "before"}}),
                json!({"type": "topic_created", "data": {"name": "after", "partitions": 2}}),
            ]
        );
    }
    let s = source_metrics(addr);
    assert_eq!(s.up, 1.0);
    assert!(s.errors >= later.errors && s.polls > back.polls, "{s:?}");

    // Logged once per change: up, down (however many polls failed), up again.
    common::eventually("the second \"kafka source up\" in the log", || {
        server.log_lines("kafka source up").len() == 2
    });
    let down_lines = server.log_lines("kafka source down");
    assert_eq!(down_lines.len(), 1, "{down_lines:?}");
    assert!(down_lines[0].contains(&bootstrap), "{down_lines:?}");
}

/// REST with the Kafka source: mutations are refused with 501 and a JSON error, and change
/// nothing on the broker; publishing still broadcasts.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn rest_mutations_are_refused_and_publishing_still_broadcasts() {
    let tansu = Tansu::start();
    let (hub, _ticker) = watch(&tansu);
    let addr = hub.local_addr();
    let mut d = Dashboard::connect(addr);
    wait_up(&mut d, addr);

    let topic = r#"{"name":"refused","partitions":1}"#;
    let group = r#"{"state":"Stable","members":1}"#;
    for (method, path, body) in [
        ("POST", "/api/topics", Some(topic)),
        ("DELETE", "/api/topics/refused", None),
        ("PUT", "/api/groups/billing", Some(group)),
        ("DELETE", "/api/groups/billing", None),
    ] {
        let a = http(addr, method, path, &[], body);
        assert_eq!(a.status, 501, "{method} {path}: {a:?}");
        assert!(
            a.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{method} {path}: {a:?}"
        );
        let error = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(!error.is_empty(), "{method} {path}: {a:?}");
    }

    let published = http(
        addr,
        "POST",
        "/api/monitoring/publish",
        &[],
        Some(r#"{"type":"custom","data":{"n":1}}"#),
    );
    assert_eq!(published.status, 202, "{published:?}");
    let seq = published.json()["seq"].as_u64().expect("a seq");
    let custom = d.frame_of("custom");
    assert_eq!(
        (&custom["seq"], &custom["data"]),
        (&json!(seq), &json!({"n": 1}))
    );

    // The refused POST created nothing: the broker creates the topic now, and the hub
    // announces it as new.
    admin(&tansu).create_topic("refused", 1, 1).unwrap();
    assert_eq!(
        d.next_event(),
        json!({"type": "topic_created", "data": {"name": "refused", "partitions": 1}})
    );
    assert_eq!(get_json(addr, "/api/topics/refused", 200)["partitions"], 1);
    assert_eq!(get_json(addr, "/api/groups", 200), json!([]));
}

/// The latency canary (`--kafka-canary-topic`): the hub creates its topic (one partition per
/// broker), and each poll produces a record and fetches it back; the snapshot's latency
/// percentiles come from those trips (end to end no shorter than the produce acknowledgement)
/// and `source.canary` counts them, as `/metrics` does. Every record the canary sent is in the
/// topic (the frame's offsets are the poll's, taken before that poll's trip).
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn the_latency_canary_times_produce_and_the_round_trip() {
    let tansu = Tansu::start();
    let (hub, _ticker) =
        watch_with(KafkaConfig::new(vec![tansu.bootstrap()]).canary_topic("takhin-canary"));
    let addr = hub.local_addr();
    let mut d = Dashboard::connect(addr);

    let m = d.metrics_where("three canary round trips", |m| {
        m["source"]["canary"]["roundTrips"].as_u64() >= Some(3)
    });
    let canary = &m["source"]["canary"];
    assert_eq!(
        pick(canary, &["topic", "errors"]),
        json!({"topic": "takhin-canary", "errors": 0}),
        "{m}"
    );
    assert!(canary.get("error").is_none(), "{m}");
    let trips = canary["roundTrips"].as_u64().unwrap();
    let topic = topic_stats(&m, "takhin-canary").expect("the canary topic is listed");
    assert_eq!(topic["partitions"], 1, "{m}");
    assert_eq!(topic["totalMessages"], trips - 1, "{m}");

    let l = &m["latency"];
    let ms = |k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("latency.{k} in {m}"))
    };
    assert!(ms("produceP50") > 0.0, "{m}");
    assert!(ms("produceP50") <= ms("produceP95") && ms("produceP95") <= ms("produceP99"));
    assert!(ms("fetchP50") <= ms("fetchP95") && ms("fetchP95") <= ms("fetchP99"));
    assert!(
        ms("fetchP50") >= ms("produceP50"),
        "end to end includes the produce: {m}"
    );
    assert!(ms("fetchP99") < 2000.0, "within the request timeout: {m}");

    let value = common::prometheus(addr);
    assert!(value("takhin_source_canary_round_trips_total") >= trips as f64);
    assert_eq!(value("takhin_source_canary_errors_total"), 0.0);
    assert!(value("takhin_source_canary_end_to_end_seconds") > 0.0);
}

/// A certificate authority made for one test, its certificate in a PEM file (removed when
/// dropped), as `--kafka-tls-ca` takes it.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
    file: PathBuf,
}

impl TestCa {
    fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let file = std::env::temp_dir().join(format!(
            "takhin-kafka-{name}-{}-{}.pem",
            std::process::id(),
            unix_secs()
        ));
        std::fs::write(&file, cert.pem()).unwrap();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            der: cert.der().clone(),
            file,
        }
    }

    fn file(&self) -> &Path {
        &self.file
    }

    /// A TLS server configuration whose certificate, for `names` (DNS names or IP addresses),
    /// this CA signed; the chain sent includes the CA's.
    fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.der.clone()], key.into())
            .unwrap();
        Arc::new(config)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Reads `metrics` frames until `orders` shows with all 3 records, and checks `/metrics`: the
/// source up, no error.
fn sees_orders(d: &mut Dashboard, addr: SocketAddr) {
    let m = d.metrics_where("orders and its 3 records", |m| {
        topic_stats(m, "orders").is_some_and(|t| t["totalMessages"] == 3)
    });
    assert_eq!(topic_names(&m), ["orders"], "{m}");
    assert_eq!(m["source"]["state"], "up", "{m}");
    let s = wait_up(d, addr);
    assert_eq!(s.errors, 0.0, "{s:?}");
    assert_eq!(get_json(addr, "/api/topics/orders", 200)["partitions"], 2);
}

/// The error of an operation by a client of `kafka` (creating a topic: Metadata first).
fn refusal(kafka: KafkaConfig) -> String {
    let mut client = kafka
        .request_timeout(Duration::from_secs(5))
        .client()
        .expect("a valid configuration");
    let e = client.create_topic("refused", 1, 1).unwrap_err();
    e.to_string()
}

/// TLS to a broker whose certificate a private CA signed (`--kafka-tls-ca`): the source polls
/// it, the stream and REST show it, and every connection went through TLS. The broker is tansu
/// behind a TLS terminator (tansu 0.6.0 cannot serve TLS), which it advertises as its address.
/// A certificate of another CA, one not made out to the address, and plain text to the TLS
/// port are refused, each saying why; `--kafka-tls-server-name` checks the certificate for
/// its name instead.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn tls_with_a_private_ca_reaches_the_cluster() {
    let ca = TestCa::new("ca");
    let mut front = TlsFront::bind();
    let tansu = Tansu::start_with(Setup {
        authentication: false,
        advertised: Some(front.addr()),
    });
    front.serve(ca.server(&["127.0.0.1"]), tansu.addr());
    let tls = || KafkaConfig::new(vec![front.bootstrap()]).tls_ca_file(ca.file());
    let mut admin = tls().client().unwrap();
    topic_with(&mut admin, "orders", &[2, 1]);
    let before = front.handshakes();
    assert!(before >= 1, "the admin client spoke TLS");

    let (hub, ticker) = watch_with(tls());
    let addr = hub.local_addr();
    sees_orders(&mut Dashboard::connect(addr), addr);
    assert!(front.handshakes() > before, "the source spoke TLS");
    drop(ticker);

    let other = TestCa::new("other-ca");
    let e = refusal(KafkaConfig::new(vec![front.bootstrap()]).tls_ca_file(other.file()));
    assert!(e.contains("TLS with Kafka broker"), "{e}");
    assert!(e.contains("UnknownIssuer"), "{e}");
    // The system's store does not hold the test CA either (or there is none here).
    let system = KafkaConfig::new(vec![front.bootstrap()]).tls().client();
    match system {
        Ok(mut c) => {
            let e = c.create_topic("refused", 1, 1).unwrap_err().to_string();
            assert!(e.contains("UnknownIssuer"), "{e}");
        }
        Err(e) => assert!(e.to_string().contains("system's store"), "{e}"),
    }
    let e = refusal(KafkaConfig::new(vec![front.bootstrap()]));
    assert!(
        e.contains("answered in TLS: this port is a TLS listener"),
        "{e}"
    );

    // A certificate for a name, not for the address: refused, unless that name is expected.
    front.use_config(ca.server(&["kafka.test"]));
    let e = refusal(tls());
    assert!(e.contains("\"127.0.0.1\""), "{e}");
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for name"),
        "{e}"
    );
    let mut named = tls().tls_server_name("kafka.test").client().unwrap();
    named.create_topic("named", 1, 1).unwrap();
    assert_eq!(admin.produce("named", 0, None, b"r").unwrap(), 0);
}

/// Against a broker that requires SASL (tansu `--authentication`, whose storage keeps no
/// users, so that every login is refused): SCRAM-SHA-256 and SCRAM-SHA-512 exchanges reach the
/// server and its refusal is reported naming the user and not the password; PLAIN, which it
/// lacks, is reported as not enabled; without SASL, the broker hangs up and the error says
/// SASL may be required. A broker without SASL is reported as not enabling the mechanism.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn sasl_refusals_say_why() {
    let tansu = Tansu::start_with(Setup {
        authentication: true,
        advertised: None,
    });
    let kafka = || KafkaConfig::new(vec![tansu.bootstrap()]);
    for (config, mechanism) in [
        (
            kafka().sasl_scram_sha_256("bob", "bob's secret"),
            "SCRAM-SHA-256",
        ),
        (
            kafka().sasl_scram_sha_512("bob", "bob's secret"),
            "SCRAM-SHA-512",
        ),
    ] {
        let e = refusal(config);
        assert!(
            e.contains(&format!(
                "refused SASL {mechanism} authentication as \"bob\": the server refused: \
                 unknown-user"
            )),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
    }
    let e = refusal(kafka().sasl_plain("bob", "bob's secret"));
    assert!(
        e.contains("does not enable SASL mechanism PLAIN (it closed the connection when asked"),
        "{e}"
    );
    let e = refusal(kafka());
    assert!(e.contains("does it require SASL or TLS?"), "{e}");

    let open = Tansu::start();
    let e = refusal(KafkaConfig::new(vec![open.bootstrap()]).sasl_scram_sha_512("bob", "x"));
    assert!(
        e.contains("does not enable SASL mechanism SCRAM-SHA-512 (it names no other)"),
        "{e}"
    );
}

/// The binary as an operator runs it against a cluster that requires SASL over TLS
/// (`--kafka-security-protocol SASL_SSL`, Kafka's spelling, the password in
/// `TAKHIN_KAFKA_PASSWORD`), whose broker refuses the login: the hub starts and keeps serving
/// (health, pings, new clients) while `/metrics` reports the source down with errors counting
/// up (each poll tries again after the backoff), the snapshot's `source.error` says who was
/// refused and why, the failure is logged once, and the password is in no log line, no frame
/// and no `/metrics`. The TLS handshake (with the CA file) happened before the refusal.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn a_refused_login_is_reported_and_retried_while_the_hub_serves() {
    const SECRET: &str = "not-in-any-log-7f3a";
    let ca = TestCa::new("ca");
    let mut front = TlsFront::bind();
    let tansu = Tansu::start_with(Setup {
        authentication: true,
        advertised: Some(front.addr()),
    });
    front.serve(ca.server(&["127.0.0.1"]), tansu.addr());
    let bootstrap = front.bootstrap();
    let ca_file = ca.file().to_str().unwrap();
    let mut server = common::spawn_server(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--source",
            "kafka",
            "--kafka-brokers",
            &bootstrap,
            "--kafka-request-timeout",
            "2",
            "--metrics-interval",
            "0.2",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-username",
            "alice",
            "--kafka-tls-ca",
            ca_file,
        ],
        &[("TAKHIN_KAFKA_PASSWORD", SECRET)],
    );
    let addr = server.addr;
    let mut d = Dashboard::connect(addr);
    let down = wait_source(&mut d, addr, "source down", |s| {
        s.up == 0.0 && s.errors >= 1.0
    });
    let later = wait_source(&mut d, addr, "errors counting up", |s| {
        s.errors > down.errors
    });
    assert!(later.polls > down.polls && later.up == 0.0, "{later:?}");
    assert!(front.handshakes() >= 2, "every attempt spoke TLS first");

    let m = d.metrics_where("the source's error", |m| m["source"]["error"].is_string());
    let source = &m["source"];
    assert_eq!(source["state"], "down", "{m}");
    let error = source["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "Kafka broker {bootstrap} refused SASL SCRAM-SHA-512 authentication as \"alice\""
        )),
        "{error}"
    );
    assert!(!m.to_string().contains(SECRET), "{m}");

    // Still serving.
    let health = http(addr, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200, "{health:?}");
    d.ws.send_json(&json!({"type": "ping"}));
    d.frame_of("pong");
    assert!(Dashboard::connect(addr).metrics()["clusterHealth"].is_object());
    let metrics = http(addr, "GET", "/metrics", &[], None);
    assert!(!metrics.body.contains(SECRET));

    let down_lines = server.log_lines("kafka source down");
    assert_eq!(down_lines.len(), 1, "{down_lines:?}");
    assert!(
        down_lines[0].contains("refused SASL SCRAM-SHA-512"),
        "{down_lines:?}"
    );
    let how = server.log_lines("how the brokers are reached");
    assert!(
        how.len() == 1 && how[0].contains("SASL_SSL") && how[0].contains("alice"),
        "{how:?}"
    );
    assert_eq!(server.log_lines(SECRET), Vec::<String>::new());
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the hub is running"
    );

    // TLS without SASL to this broker: it hangs up, and the error says what may be missing.
    let e = refusal(KafkaConfig::new(vec![bootstrap]).tls_ca_file(ca.file()));
    assert!(
        e.contains("closed the connection (does it require SASL?"),
        "{e}"
    );
}
