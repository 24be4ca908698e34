//! The view on hand-built polls: exact totals, lags, rates, lag in time and events.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::broker::DEAD_STATE;
use crate::hub::{Broadcaster, HubShared};
use crate::sources::kafka::model::{ClusterState, GroupState, PartitionState, TopicState};

/// 2024-01-02T20:00:00Z, in milliseconds.
const T0: u64 = 1_704_225_600_000;

fn part(id: i32, start: i64, end: i64, size: Option<u64>) -> PartitionState {
    PartitionState {
        id,
        leader: 1,
        replicas: vec![1],
        isr: vec![1],
        start_offset: Some(start),
        end_offset: Some(end),
        size_bytes: size,
    }
}

fn topic(partitions: Vec<PartitionState>) -> TopicState {
    TopicState {
        internal: false,
        partitions,
    }
}

fn internal(partitions: Vec<PartitionState>) -> TopicState {
    TopicState {
        internal: true,
        partitions,
    }
}

fn group(state: &str, members: u32, commits: &[(&str, i32, i64)]) -> GroupState {
    GroupState {
        state: state.to_owned(),
        members,
        protocol_type: "consumer".to_owned(),
        committed: commits
            .iter()
            .map(|&(t, p, o)| ((t.to_owned(), p), o))
            .collect(),
        described: true,
    }
}

fn cluster(
    at_ms: u64,
    topics: Vec<(&str, TopicState)>,
    groups: Vec<(&str, GroupState)>,
) -> ClusterState {
    ClusterState {
        at_ms,
        cluster_id: Some("tansu_cluster".to_owned()),
        controller: Some(1),
        brokers: Vec::new(),
        topics: topics.into_iter().map(|(n, t)| (n.to_owned(), t)).collect(),
        groups: groups.into_iter().map(|(n, g)| (n.to_owned(), g)).collect(),
        groups_complete: true,
    }
}

/// Two topics (sizes known for one), an internal topic, and three groups: one with lag on both
/// topics, one past the log end that also committed on a deleted and an internal topic, one
/// with no commits.
fn recorded() -> ClusterState {
    cluster(
        T0,
        vec![
            (
                "orders",
                topic(vec![
                    part(0, 0, 100, Some(10_000)),
                    part(1, 10, 60, Some(5_000)),
                    part(2, 0, 0, Some(0)),
                ]),
            ),
            (
                "payments",
                topic(vec![part(0, 0, 40, None), part(1, 5, 25, None)]),
            ),
            (
                "__consumer_offsets",
                internal(vec![part(0, 0, 7, Some(700)), part(1, 0, 3, Some(700))]),
            ),
        ],
        vec![
            (
                "billing",
                group(
                    "Stable",
                    2,
                    &[("orders", 0, 90), ("orders", 1, 60), ("payments", 0, 30)],
                ),
            ),
            (
                "audit",
                group(
                    "Empty",
                    0,
                    &[
                        ("orders", 0, 120),
                        ("gone", 0, 5),
                        ("__consumer_offsets", 0, 1),
                    ],
                ),
            ),
            (
                "connect-sink",
                GroupState {
                    protocol_type: "connect".to_owned(),
                    ..group("PreparingRebalance", 1, &[])
                },
            ),
        ],
    )
}

const HUB: HubFacts = HubFacts {
    active_connections: 7,
    memory_usage_bytes: 1 << 20,
    goroutine_count: 9,
};

fn view() -> View {
    View::new(ViewConfig::default())
}

fn metrics(v: &View) -> Value {
    serde_json::to_value(&v.snapshot(HUB).expect("a snapshot").metrics).unwrap()
}

fn exact(seconds: f64) -> LagEstimate {
    LagEstimate {
        seconds,
        lower_bound: false,
    }
}

fn at_least(seconds: f64) -> LagEstimate {
    LagEstimate {
        seconds,
        lower_bound: true,
    }
}

#[test]
fn the_recorded_state_gives_exact_totals_and_lags() {
    let mut v = view();
    assert!(v.snapshot(HUB).is_none());
    assert!(v.update(recorded()).is_empty());
    assert_eq!(
        metrics(&v),
        json!({
            "throughput": {"produceRate": 0.0, "fetchRate": 0.0,
                           "produceBytes": 0.0, "fetchBytes": 0.0},
            "latency": {"produceP50": 0.0, "produceP95": 0.0, "produceP99": 0.0,
                        "fetchP50": 0.0, "fetchP95": 0.0, "fetchP99": 0.0},
            "topicStats": [
                {"name": "orders", "partitions": 3, "totalMessages": 150, "totalBytes": 15000,
                 "produceRate": 0.0, "fetchRate": 0.0},
                {"name": "payments", "partitions": 2, "totalMessages": 60, "totalBytes": 0,
                 "produceRate": 0.0, "fetchRate": 0.0},
            ],
            "consumerLags": [
                // At (or past) the log end: 0 s. Behind on the first poll: unknown, left out.
                {"groupId": "audit", "totalLag": 0, "lagSeconds": 0.0, "topicLags": [
                    {"topic": "orders", "totalLag": 0, "partitionLags": [
                        {"partition": 0, "currentOffset": 120, "logEndOffset": 100, "lag": 0,
                         "lagSeconds": 0.0},
                        {"partition": 1, "currentOffset": null, "logEndOffset": 60, "lag": null},
                        {"partition": 2, "currentOffset": null, "logEndOffset": 0, "lag": null},
                    ]},
                ]},
                {"groupId": "billing", "totalLag": 20, "topicLags": [
                    {"topic": "orders", "totalLag": 10, "partitionLags": [
                        {"partition": 0, "currentOffset": 90, "logEndOffset": 100, "lag": 10},
                        {"partition": 1, "currentOffset": 60, "logEndOffset": 60, "lag": 0,
                         "lagSeconds": 0.0},
                        {"partition": 2, "currentOffset": null, "logEndOffset": 0, "lag": null},
                    ]},
                    {"topic": "payments", "totalLag": 10, "partitionLags": [
                        {"partition": 0, "currentOffset": 30, "logEndOffset": 40, "lag": 10},
                        {"partition": 1, "currentOffset": null, "logEndOffset": 25, "lag": null},
                    ]},
                ]},
                {"groupId": "connect-sink", "totalLag": 0, "topicLags": []},
            ],
            "clusterHealth": {"activeConnections": 7, "totalTopics": 2, "totalPartitions": 5,
                              "totalConsumers": 3, "diskUsageBytes": 16400,
                              "memoryUsageBytes": 1048576, "goroutineCount": 9},
            "timestamp": 1_704_225_600,
        })
    );

    // The first poll is one point per partition: lag in time is known only where the group is
    // at the log end; elsewhere it is "at least 0 s" until the history grows.
    let lt = v.lag_time();
    assert_eq!(lt.partition("billing", "orders", 0), Some(at_least(0.0)));
    assert_eq!(lt.partition("billing", "orders", 1), Some(exact(0.0)));
    assert_eq!(lt.partition("billing", "orders", 2), None);
    assert_eq!(lt.partition("audit", "orders", 0), Some(exact(0.0)));
    assert_eq!(lt.group("billing"), Some(at_least(0.0)));
    assert_eq!(lt.group("audit"), Some(exact(0.0)));
    assert_eq!(lt.group("connect-sink"), None);
    assert_eq!(lt.partitions.len(), 4);
}

#[test]
fn details_and_rest_reads_answer_from_the_latest_poll() {
    let mut v = view();
    assert!(v.topics().is_empty() && v.groups().is_empty());
    assert!(v.group_detail("billing").is_none());
    v.update(recorded());

    let detail = v.topic_detail("orders").unwrap();
    assert_eq!(
        serde_json::to_value(&detail).unwrap(),
        json!({"name": "orders", "partitions": 3, "totalMessages": 150, "totalBytes": 15000,
               "produceRate": 0.0, "fetchRate": 0.0,
               "partitionOffsets": [{"partition": 0, "logEndOffset": 100},
                                    {"partition": 1, "logEndOffset": 60},
                                    {"partition": 2, "logEndOffset": 0}],
               "timestamp": 1_704_225_600})
    );
    assert!(v.topic_detail("__consumer_offsets").is_none());
    assert!(v.topic_detail("gone").is_none());

    let g = v.group_detail("billing").unwrap();
    assert_eq!(
        (g.state.as_str(), g.members, g.total_lag),
        ("Stable", 2, 20)
    );
    assert_eq!(g.timestamp, 1_704_225_600);
    let snapshot = v.snapshot(HUB).unwrap();
    assert_eq!(g.topic_lags, snapshot.metrics.consumer_lags[1].topic_lags);
    let sink = v.group_detail("connect-sink").unwrap();
    assert_eq!((sink.total_lag, sink.topic_lags.len()), (0, 0));
    assert!(v.group_detail("nobody").is_none());

    assert_eq!(
        serde_json::to_value(v.topics()).unwrap(),
        json!([
            {"name": "orders", "partitions": 3, "totalMessages": 150, "totalBytes": 15000,
             "logEndOffsets": [100, 60, 0]},
            {"name": "payments", "partitions": 2, "totalMessages": 60, "totalBytes": 0,
             "logEndOffsets": [40, 25]},
        ])
    );
    assert_eq!(v.topic("payments").unwrap().log_end_offsets, [40, 25]);
    assert!(v.topic("__consumer_offsets").is_none());
    assert_eq!(
        serde_json::to_value(v.groups()).unwrap(),
        json!([
            {"groupId": "audit", "state": "Empty", "members": 0},
            {"groupId": "billing", "state": "Stable", "members": 2},
            {"groupId": "connect-sink", "state": "PreparingRebalance", "members": 1},
        ])
    );
    assert_eq!(v.group("audit").unwrap().state, "Empty");
    assert!(v.group("nobody").is_none());
}

/// The recorded state 2 s later: 30 more records on orders, 4 on payments; billing consumed 26
/// on orders and 4 on payments; a new topic.
fn two_seconds_later() -> ClusterState {
    let three = |p: PartitionState| PartitionState {
        replicas: vec![1, 2, 3],
        ..p
    };
    let mut s = recorded();
    s.at_ms = T0 + 2_000;
    s.topics.insert(
        "orders".to_owned(),
        topic(vec![
            // 100 bytes per record in each replica's log.
            three(part(0, 0, 120, Some(36_000))),
            three(part(1, 10, 70, Some(18_000))),
            three(part(2, 0, 0, Some(0))),
        ]),
    );
    s.topics.insert(
        "payments".to_owned(),
        topic(vec![part(0, 0, 44, None), part(1, 5, 25, None)]),
    );
    s.topics
        .insert("fresh".to_owned(), topic(vec![part(0, 0, 50, Some(5_000))]));
    let billing = group(
        "Stable",
        2,
        &[
            ("orders", 0, 110),
            ("orders", 1, 66),
            ("payments", 0, 34),
            // First commit: no growth to count.
            ("payments", 1, 20),
            ("fresh", 0, 50),
        ],
    );
    s.groups.insert("billing".to_owned(), billing);
    s
}

#[test]
fn rates_come_from_two_polls_two_seconds_apart() {
    let mut v = view();
    v.update(recorded());
    let events = v.update(two_seconds_later());
    assert_eq!(
        events,
        [Event::TopicCreated {
            name: "fresh".into(),
            partitions: 1
        }]
    );
    let m = v.snapshot(HUB).unwrap().metrics;
    let rates: Vec<(&str, f64, f64)> = m
        .topic_stats
        .iter()
        .map(|t| (t.name.as_str(), t.produce_rate, t.fetch_rate))
        .collect();
    // A topic new since the previous poll has no rate yet.
    assert_eq!(
        rates,
        [
            ("fresh", 0.0, 0.0),
            ("orders", 15.0, 13.0),
            ("payments", 2.0, 2.0)
        ]
    );
    // Bytes: orders' 100 bytes per record (one replica's third of the size); payments'
    // sizes are unknown, so it adds none.
    assert_eq!(
        serde_json::to_value(&m.throughput).unwrap(),
        json!({"produceRate": 17.0, "fetchRate": 15.0,
               "produceBytes": 1500.0, "fetchBytes": 1300.0})
    );
    let orders = &m.topic_stats[1];
    assert_eq!((orders.total_messages, orders.total_bytes), (180, 54_000));
    assert_eq!(m.timestamp, 1_704_225_602);
    assert_eq!(m.cluster_health.total_topics, 3);
    assert_eq!(m.cluster_health.disk_usage_bytes, 54_000 + 5_000 + 1_400);

    // The same poll again, later: nothing grew.
    let mut same = two_seconds_later();
    same.at_ms += 4_000;
    assert!(v.update(same).is_empty());
    let m = v.snapshot(HUB).unwrap().metrics;
    assert!(m.topic_stats.iter().all(|t| t.produce_rate == 0.0));
    assert_eq!(m.throughput.fetch_rate, 0.0);

    // A poll time that did not move on gives no rates instead of dividing by zero.
    let mut v = view();
    v.update(recorded());
    let mut s = two_seconds_later();
    s.at_ms = T0;
    v.update(s);
    assert_eq!(
        v.snapshot(HUB).unwrap().metrics.throughput.produce_rate,
        0.0
    );
}

#[test]
fn offsets_that_went_back_and_unknown_offsets_count_nothing() {
    let mut v = view();
    v.update(cluster(
        T0,
        vec![(
            "t",
            topic(vec![part(0, 0, 500, None), part(1, 0, 10, None)]),
        )],
        vec![("g", group("Stable", 1, &[("t", 0, 400), ("t", 1, 5)]))],
    ));
    // The topic was recreated between the polls, and partition 1's leader did not answer.
    let mut p1 = part(1, 0, 0, None);
    (p1.start_offset, p1.end_offset) = (None, None);
    v.update(cluster(
        T0 + 1_000,
        vec![("t", topic(vec![part(0, 0, 3, None), p1]))],
        vec![("g", group("Stable", 1, &[("t", 0, 2), ("t", 1, 5)]))],
    ));
    let m = v.snapshot(HUB).unwrap().metrics;
    assert_eq!(
        (m.topic_stats[0].produce_rate, m.topic_stats[0].fetch_rate),
        (0.0, 0.0)
    );
    assert_eq!(m.topic_stats[0].total_messages, 3);
    let lags = &m.consumer_lags[0].topic_lags[0].partition_lags;
    assert_eq!(
        serde_json::to_value(lags).unwrap(),
        json!([
            {"partition": 0, "currentOffset": 2, "logEndOffset": 3, "lag": 1},
            {"partition": 1, "currentOffset": 5, "logEndOffset": -1, "lag": null},
        ])
    );
    assert_eq!(m.consumer_lags[0].total_lag, 1);
    assert_eq!(v.topic("t").unwrap().log_end_offsets, [3, -1]);
    // The history started over at the recreated log: 2 is above its only point.
    assert_eq!(v.lag_time().partition("g", "t", 0), Some(at_least(0.0)));
    assert_eq!(v.lag_time().partition("g", "t", 1), None);
}

#[test]
fn lag_in_time_interpolates_the_log_end_history() {
    let poll = |at_s: u64, ends: [i64; 3], commits: &[(&str, i32, i64)]| {
        cluster(
            T0 + at_s * 1_000,
            vec![(
                "t",
                topic(vec![
                    part(0, 0, ends[0], None),
                    part(1, 0, ends[1], None),
                    part(2, 0, ends[2], None),
                ]),
            )],
            vec![("g", group("Stable", 1, commits))],
        )
    };
    let mut v = view();
    v.update(poll(0, [0, 1_000, 5], &[]));
    v.update(poll(10, [100, 1_100, 5], &[]));
    v.update(poll(
        20,
        [300, 1_200, 5],
        &[("t", 0, 150), ("t", 1, 500), ("t", 2, 5)],
    ));
    let lt = v.lag_time();
    // Partition 0: offset 150 is a quarter of the way from 100 (at 10 s) to 300 (at 20 s):
    // the log end was there at 12.5 s, 7.5 s before this poll.
    assert_eq!(lt.partition("g", "t", 0), Some(exact(7.5)));
    // Partition 1: 500 is older than the whole history (1,000 at 0 s): at least 20 s.
    assert_eq!(lt.partition("g", "t", 1), Some(at_least(20.0)));
    // Partition 2: at the log end.
    assert_eq!(lt.partition("g", "t", 2), Some(exact(0.0)));
    assert_eq!(lt.group("g"), Some(at_least(20.0)));
    assert_eq!(v.snapshot(HUB).unwrap().lag_time, lt);

    // The group catches up on partition 1 and commits 50 on partition 0 (between 0 at 0 s and
    // 100 at 10 s: 5 s), 25 s before this poll; nothing is a lower bound any more.
    v.update(poll(
        30,
        [300, 1_200, 5],
        &[("t", 0, 50), ("t", 1, 1_200), ("t", 2, 5)],
    ));
    let lt = v.lag_time();
    assert_eq!(lt.partition("g", "t", 0), Some(exact(25.0)));
    assert_eq!(lt.partition("g", "t", 1), Some(exact(0.0)));
    assert_eq!(lt.group("g"), Some(exact(25.0)));

    // A deleted topic's history goes with it.
    v.update(cluster(T0 + 40_000, vec![], vec![]));
    assert!(v.history.is_empty());
    assert!(v.lag_time().partitions.is_empty());
}

#[test]
fn the_first_poll_announces_nothing() {
    let mut v = view();
    assert!(v.group_states().is_empty());
    assert!(v.update(recorded()).is_empty());
    // The groups' current state is there for whoever gives it to new connections.
    assert_eq!(
        v.group_states(),
        [
            Event::GroupUpdated {
                group_id: "audit".into(),
                state: "Empty".into(),
                members: 0
            },
            Event::GroupUpdated {
                group_id: "billing".into(),
                state: "Stable".into(),
                members: 2
            },
            Event::GroupUpdated {
                group_id: "connect-sink".into(),
                state: "PreparingRebalance".into(),
                members: 1
            },
        ]
    );
    // The same cluster again: still nothing.
    let mut again = recorded();
    again.at_ms += 2_000;
    assert!(v.update(again).is_empty());
}

#[test]
fn events_for_created_deleted_and_changed() {
    let one = || topic(vec![part(0, 0, 0, None)]);
    let prev = cluster(
        T0,
        vec![
            ("a", topic(vec![part(0, 0, 0, None), part(1, 0, 0, None)])),
            ("b", one()),
            ("__x", internal(vec![part(0, 0, 0, None)])),
        ],
        vec![
            ("g1", group("Stable", 2, &[])),
            ("g2", group("Empty", 0, &[])),
            ("g3", group("Stable", 1, &[])),
            ("g4", group("Dead", 0, &[])),
            ("g6", group("Stable", 3, &[])),
        ],
    );
    let next = cluster(
        T0 + 2_000,
        vec![
            ("b", one()),
            (
                "c",
                topic(vec![
                    part(0, 0, 0, None),
                    part(1, 0, 0, None),
                    part(2, 0, 0, None),
                ]),
            ),
            ("__y", internal(vec![part(0, 0, 0, None)])),
        ],
        vec![
            // Unchanged: g1. State: g2. Members: g6. Gone: g3, and g4 (already dead). New: g5.
            ("g1", group("Stable", 2, &[("b", 0, 0)])),
            ("g2", group("Stable", 1, &[])),
            ("g5", group("Empty", 0, &[])),
            ("g6", group("Stable", 2, &[])),
        ],
    );
    let updated = |id: &str, state: &str, members| Event::GroupUpdated {
        group_id: id.into(),
        state: state.into(),
        members,
    };
    let mut v = view();
    assert!(v.update(prev).is_empty());
    assert_eq!(
        v.update(next),
        [
            Event::TopicDeleted { name: "a".into() },
            Event::TopicCreated {
                name: "c".into(),
                partitions: 3
            },
            updated("g2", "Stable", 1),
            updated("g5", "Empty", 0),
            updated("g6", "Stable", 2),
            updated("g3", DEAD_STATE, 0),
        ]
    );
}

#[test]
fn events_are_published_in_the_protocols_shapes() {
    let shared = Arc::new(HubShared::new(1, 64));
    let b = Broadcaster::new(shared.clone());
    for e in [
        Event::TopicCreated {
            name: "orders".into(),
            partitions: 5,
        },
        Event::TopicDeleted {
            name: "orders".into(),
        },
        Event::GroupUpdated {
            group_id: "billing".into(),
            state: "Stable".into(),
            members: 3,
        },
    ] {
        e.publish(&b).unwrap();
    }
    let frames: Vec<(String, Value)> = std::iter::from_fn(|| shared.links[0].ring.pop())
        .map(|f| {
            let v: Value = serde_json::from_slice(f.payload()).unwrap();
            (v["type"].as_str().unwrap().to_owned(), v["data"].clone())
        })
        .collect();
    assert_eq!(
        frames,
        [
            (
                "topic_created".to_owned(),
                json!({"name": "orders", "partitions": 5})
            ),
            ("topic_deleted".to_owned(), json!({"name": "orders"})),
            (
                "group_updated".to_owned(),
                json!({"groupId": "billing", "state": "Stable", "members": 3})
            ),
        ]
    );
}

#[test]
fn matched_pairs_the_common_keys_of_two_sorted_maps() {
    let a: BTreeMap<i32, char> = [(1, 'a'), (3, 'b'), (5, 'c'), (9, 'd')].into();
    let b: BTreeMap<i32, char> = [(0, 'w'), (3, 'x'), (5, 'y'), (7, 'z')].into();
    let both: Vec<(i32, char, char)> = matched(&a, &b).map(|(k, x, y)| (*k, *x, *y)).collect();
    assert_eq!(both, [(3, 'b', 'x'), (5, 'c', 'y')]);
}

/// A broker that did not answer ListGroups hides its groups from that poll: they are not
/// announced dead, and keep their last lag; once listed again, nothing is announced either.
#[test]
fn groups_a_broker_did_not_list_are_kept_as_last_seen() {
    let mut view = View::new(ViewConfig::default());
    let first = recorded();
    let ids: Vec<String> = first.groups.keys().cloned().collect();
    view.update(first.clone());
    let mut partial = first.clone();
    partial.at_ms += 2_000;
    partial.groups.clear();
    partial.groups_complete = false;
    assert!(view.update(partial).is_empty(), "no group announced dead");
    let shown: Vec<String> = view.groups().into_iter().map(|g| g.group_id).collect();
    assert_eq!(shown, ids);
    let mut back = first;
    back.at_ms += 4_000;
    assert!(view.update(back).is_empty());
}

/// A group whose coordinator did not answer DescribeGroups this time (only ListGroups' state,
/// `Unknown` on some brokers, and no member count) keeps the state and members last described:
/// nothing is announced, and the next description that differs is.
#[test]
fn a_group_not_described_keeps_its_last_state() {
    let mut view = View::new(ViewConfig::default());
    let at = |ms: u64, g: GroupState| cluster(T0 + ms, vec![], vec![("g", g)]);
    view.update(at(0, group("Stable", 3, &[])));
    let listed_only = GroupState {
        described: false,
        ..group("Unknown", 0, &[])
    };
    assert!(view.update(at(1_000, listed_only)).is_empty());
    let g = view.group("g").unwrap();
    assert_eq!((g.state.as_str(), g.members), ("Stable", 3));
    assert_eq!(
        view.update(at(2_000, group("PreparingRebalance", 2, &[]))),
        [Event::GroupUpdated {
            group_id: "g".into(),
            state: "PreparingRebalance".into(),
            members: 2
        }]
    );
}

/// Lag in time reaches the `metrics` frame: the log end went 100 -> 200 in 10 s and the group
/// committed 150, where the log end was 5 s ago.
#[test]
fn lag_in_time_is_in_the_frame() {
    let mut v = view();
    let at = |ms: u64, end: i64, committed: i64| {
        cluster(
            T0 + ms,
            vec![("t", topic(vec![part(0, 0, end, None)]))],
            vec![("g", group("Stable", 1, &[("t", 0, committed)]))],
        )
    };
    v.update(at(0, 100, 100));
    v.update(at(10_000, 200, 150));
    let m = v.snapshot(HUB).unwrap().metrics;
    let g = &m.consumer_lags[0];
    assert_eq!(g.topic_lags[0].partition_lags[0].lag, Some(50));
    assert_eq!(g.topic_lags[0].partition_lags[0].lag_seconds, Some(5.0));
    assert_eq!(g.lag_seconds, Some(5.0));
}
