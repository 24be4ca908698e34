//! The metrics pipeline end to end: the ticker's snapshots and detail frames over real
//! sockets, and topic and group events from the services.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{connect, connect_quiet, start};
use serde_json::{json, Value};
use takhin_monitor::{GroupCoordinator, HubHandle, Recorder, StandardSource, Ticker, TopicManager};

const INTERVAL: Duration = Duration::from_millis(200);

struct Rig {
    hub: HubHandle,
    topics: TopicManager,
    groups: GroupCoordinator,
    _ticker: Ticker,
}

fn rig() -> Rig {
    let hub = start(common::config());
    let b = hub.broadcaster();
    let topics = TopicManager::new(Recorder::new(), Some(b.clone()));
    let groups = GroupCoordinator::new(Some(b));
    let source = StandardSource::new(topics.clone(), groups.clone(), Some(hub.probe()));
    let ticker = hub.start_ticker(source, INTERVAL).unwrap();
    Rig {
        hub,
        topics,
        groups,
        _ticker: ticker,
    }
}

impl Rig {
    /// Waits until `n` ticks have run and their frames reached every shard.
    fn ticks(&self, n: u64) {
        let shards = self.hub.cores().len() as u64;
        common::eventually("ticks", || {
            let s = self.hub.stats();
            s.ticks_total >= n && s.broadcasts_total >= n * shards
        });
    }
}

#[test]
fn two_clients_get_metrics_at_once_on_connect_and_then_every_interval() {
    let rig = rig();
    let meter = rig.topics.create("orders", 4).unwrap();
    meter.produce(0, 10, 1000, Duration::from_millis(3));
    rig.ticks(1);
    let addr = rig.hub.local_addr();
    let mut clients: Vec<_> = (0..2)
        .map(|_| connect_quiet(addr, TcpStream::connect(addr).unwrap()))
        .collect();
    for c in &mut clients {
        let first = c.recv();
        assert_eq!(
            first["type"], "metrics",
            "the last snapshot comes first, at once"
        );
        let mut sent_at = vec![first["tsUs"].as_u64().unwrap()];
        let mut last_count = 0;
        while sent_at.len() < 4 {
            let v = c.recv_type("metrics");
            let data = &v["data"];
            assert_eq!(data["clusterHealth"]["totalTopics"], 1);
            assert_eq!(data["topicStats"][0]["name"], "orders");
            assert_eq!(data["topicStats"][0]["partitions"], 4);
            // (activeConnections may still be 0 in the first one: a snapshot taken just before
            // this client registered can arrive after it did.)
            last_count = data["clusterHealth"]["activeConnections"].as_u64().unwrap();
            sent_at.push(v["tsUs"].as_u64().unwrap());
        }
        assert!(last_count >= 1, "a later snapshot counts the clients");
        for gap in sent_at.windows(2).skip(1).map(|w| w[1] - w[0]) {
            // Loose bounds: the point is "about every interval", not a timing benchmark.
            assert!((100_000..2_000_000).contains(&gap), "tick gap {gap} µs");
        }
    }
}

#[test]
fn a_topic_subscriber_gets_that_topics_detail_frames_and_no_other() {
    let rig = rig();
    rig.topics.create("x", 2).unwrap();
    rig.topics.create("y", 3).unwrap();
    rig.topics
        .meter("x")
        .unwrap()
        .produce(1, 7, 70, Duration::from_millis(1));
    let mut c = connect(rig.hub.local_addr());
    c.send_json(&json!({"type": "subscribe", "data": "topic:x"}));
    c.recv_type("subscribed");
    let mut details = 0;
    while details < 3 {
        let v = c.recv();
        if v["type"] == "topic_detail" {
            assert_eq!(v["data"]["name"], "x", "only x's detail frames");
            assert_eq!(
                v["data"]["partitionOffsets"],
                json!([{"partition": 0, "logEndOffset": 0}, {"partition": 1, "logEndOffset": 7}])
            );
            details += 1;
        }
    }

    // A later subscriber gets the last detail at once; after the topic is deleted, it is gone.
    let mut late = connect(rig.hub.local_addr());
    late.send_json(&json!({"type": "subscribe", "data": "topic:x"}));
    assert_eq!(late.recv()["type"], "subscribed");
    assert_eq!(late.recv()["type"], "topic_detail");
    rig.topics.delete("x").unwrap();
    assert_eq!(
        late.recv_type("topic_deleted")["data"],
        json!({"name": "x"})
    );
    let mut after = connect(rig.hub.local_addr());
    after.send_json(&json!({"type": "unsubscribe", "data": ["metrics", "events"]}));
    after.recv_type("unsubscribed");
    after.send_json(&json!({"type": "subscribe", "data": "topic:x"}));
    assert_eq!(after.recv()["type"], "subscribed");
    after.send_json(&json!({"type": "ping", "timestamp": 9}));
    let next: Value = after.recv();
    assert_eq!(
        next["type"], "pong",
        "no stale detail of a deleted topic: {next}"
    );
}

#[test]
fn group_events_and_lag_detail_reach_group_subscribers() {
    let rig = rig();
    let meter = rig.topics.create("orders", 2).unwrap();
    meter.produce(0, 100, 1000, Duration::from_millis(1));
    let mut c = connect(rig.hub.local_addr());
    c.send_json(&json!({"type": "subscribe", "data": "group:billing"}));
    c.recv_type("subscribed");
    rig.groups.update("billing", "Stable", 2);
    rig.groups.commit("billing", "orders", 0, 60);
    let ev = c.recv_type("group_updated");
    assert_eq!(
        ev["data"],
        json!({"groupId": "billing", "state": "Stable", "members": 2})
    );
    loop {
        let d = c.recv_type("group_detail");
        if d["data"]["totalLag"] == 40 {
            let p = &d["data"]["topicLags"][0]["partitionLags"];
            assert_eq!(
                p[0],
                json!({"partition": 0, "currentOffset": 60, "logEndOffset": 100, "lag": 40})
            );
            assert_eq!(
                p[1]["lag"],
                Value::Null,
                "an uncommitted partition is reported as such"
            );
            break;
        }
    }
    let m = c.recv_type("metrics");
    assert_eq!(m["data"]["consumerLags"][0]["totalLag"], 40);
    assert_eq!(m["data"]["clusterHealth"]["totalConsumers"], 2);
}
