//! Broadcasts over real sockets: every client on every core, in order, exact envelope;
//! ping/pong; subscriptions; drop-oldest with `lagged` for a slow client.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::time::Duration;

use common::{connect, connect_stream, start};
use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use takhin_monitor::{Channel, Cores};

#[test]
fn every_client_on_every_core_gets_every_broadcast_in_order_with_the_exact_envelope() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut clients: Vec<_> = (0..40).map(|_| connect(addr)).collect();
    if hub.cores().len() > 1 {
        let per_shard: Vec<u64> = hub.shard_stats().iter().map(|s| s.connections).collect();
        assert!(
            per_shard.iter().all(|&n| n > 0),
            "clients on every core: {per_shard:?}"
        );
    }
    assert_eq!(hub.active_connections(), 40);

    let b = hub.broadcaster();
    let mut seqs = Vec::new();
    for i in 0..50u32 {
        seqs.push(match i % 3 {
            0 => b.topic_created(&format!("t{i}"), i).unwrap(),
            1 => b.group_updated(&format!("g{i}"), "Stable", i).unwrap(),
            _ => b
                .publish(&Channel::Events, "custom", &json!({"n": i}))
                .unwrap(),
        });
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));

    let mut epochs = HashSet::new();
    for c in &mut clients {
        for (i, &seq) in seqs.iter().enumerate() {
            let i = i as u32;
            let v = c.recv();
            let (kind, data) = match i % 3 {
                0 => (
                    "topic_created",
                    json!({"name": format!("t{i}"), "partitions": i}),
                ),
                1 => (
                    "group_updated",
                    json!({"groupId": format!("g{i}"), "state": "Stable", "members": i}),
                ),
                _ => ("custom", json!({"n": i})),
            };
            let keys: HashSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                HashSet::from(["type", "data", "timestamp", "seq", "epoch", "tsUs"])
            );
            assert_eq!(v["type"], kind);
            assert_eq!(v["data"], data);
            assert_eq!(v["seq"], seq);
            let ts = v["timestamp"].as_u64().expect("integer Unix seconds");
            let us = v["tsUs"].as_u64().expect("integer microseconds");
            assert_eq!(us / 1_000_000, ts);
            epochs.insert(v["epoch"].as_u64().unwrap());
        }
    }
    assert_eq!(epochs.len(), 1, "one epoch per server process");
    let stats = hub.stats();
    assert_eq!(stats.deliveries_total, 40 * 50);
    assert_eq!(stats.queue_dropped_total + stats.ring_dropped_total, 0);
}

#[test]
fn ping_gets_pong_echoing_the_client_timestamp() {
    let hub = start(common::config());
    let mut c = connect(hub.local_addr());
    c.send_json(&json!({"type": "ping", "timestamp": 1704225600.25}));
    let v = c.recv_type("pong");
    assert_eq!(v["timestamp"], 1704225600.25);
    c.send_json(&json!({"type": "ping"}));
    let v = c.recv_type("pong");
    assert!(v["timestamp"].as_u64().unwrap() > 1_700_000_000);
    assert!(v.get("data").is_none());
}

#[test]
fn subscriptions_change_what_a_client_receives() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut c = connect(addr);
    let b = hub.broadcaster();

    c.send_json(&json!({"type": "unsubscribe", "data": "events"}));
    assert_eq!(c.recv_type("unsubscribed")["data"], json!(["events"]));
    c.send_json(&json!({"type": "subscribe", "data": ["topic:a", "bogus", "group:g"]}));
    let sub = c.recv();
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["data"], json!(["topic:a", "group:g"]));
    let err = c.recv();
    assert_eq!(err["type"], "error");
    assert_eq!(err["data"]["code"], "unknown_channel");

    b.topic_created("b", 1).unwrap();
    let a = b.topic_created("a", 2).unwrap();
    let other = b.group_updated("other", "Empty", 0).unwrap();
    let g = b.group_updated("g", "Stable", 3).unwrap();
    b.publish(&Channel::topic("a"), "topic_detail", &json!({"p": 1}))
        .unwrap();
    let d = b
        .publish(&Channel::topic("a"), "topic_detail", &json!({"p": 2}))
        .unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&d) {
        got.push(c.recv()["seq"].as_u64().unwrap());
    }
    assert_eq!(got, [a, g, d - 1, d]);

    // Not delivered: the client left `events`. Then it subscribes again: it gets every group's
    // current state (their last `group_updated`, with their `seq`), then the next broadcast.
    b.publish(&Channel::Events, "not_for_me", &0).unwrap();
    let shards = hub.cores().len() as u64;
    common::eventually("the broadcasts to be distributed", || {
        hub.stats().broadcasts_total == 7 * shards
    });
    c.send_json(&json!({"type": "subscribe", "data": "events"}));
    assert_eq!(c.recv()["type"], "subscribed");
    let states: Vec<Value> = (0..2).map(|_| c.recv()).collect();
    assert_eq!(
        states
            .iter()
            .map(|v| (&v["type"], &v["seq"]))
            .collect::<Vec<_>>(),
        [
            (&json!("group_updated"), &json!(other)),
            (&json!("group_updated"), &json!(g))
        ]
    );
    let end = b.publish(&Channel::Events, "end", &0).unwrap();
    assert_eq!(c.recv()["seq"], end);
}

#[test]
fn a_client_that_never_reads_loses_oldest_frames_then_gets_lagged_while_a_fast_one_gets_all() {
    let config = common::config()
        .cores(Cores::Count(1))
        .client_queue(8)
        .write_wait(Duration::from_secs(60));
    let hub = start(config);
    let addr = hub.local_addr();

    // The slow client's receive window is small, so the server's queue fills quickly.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut slow = connect_stream(addr, TcpStream::from(socket));
    let mut fast = connect(addr);

    let b = hub.broadcaster();
    let payload = "x".repeat(32 * 1024);
    let total = 300u64;
    // The publisher keeps pace with the fast client (at most 4 frames ahead of it), as a
    // monitoring stream does; the slow client's socket is full all along.
    let (tx, rx) = std::sync::mpsc::channel();
    let fast_reader = std::thread::spawn(move || {
        for _ in 0..total {
            let v = fast.recv();
            assert_eq!(v["type"], "big", "the fast client is never lagged");
            tx.send(v["seq"].as_u64().unwrap()).unwrap();
        }
    });
    let mut fast_seqs = Vec::new();
    let mut first = 0;
    for round in 0..total / 4 {
        for i in 0..4 {
            let seq = b.publish(&Channel::Events, "big", &payload).unwrap();
            if round == 0 && i == 0 {
                first = seq;
            }
        }
        for _ in 0..4 {
            fast_seqs.push(
                rx.recv_timeout(common::READ_TIMEOUT)
                    .expect("fast client on time"),
            );
        }
    }
    fast_reader.join().unwrap();
    let last = first + total - 1;
    assert_eq!(
        fast_seqs,
        (first..=last).collect::<Vec<_>>(),
        "the fast client got all, in order"
    );

    // Only now does the slow client read.
    let (mut received, mut told) = (Vec::new(), 0u64);
    let mut lagged_seen = false;
    while received.last() != Some(&last) {
        let v = slow.recv();
        match v["type"].as_str().unwrap() {
            "lagged" => {
                lagged_seen = true;
                told += v["data"]["dropped"].as_u64().unwrap();
            }
            "big" => received.push(v["seq"].as_u64().unwrap()),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(lagged_seen, "the slow client was told");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "still in order");
    let missing = total - received.len() as u64;
    assert!(missing > 0, "frames were dropped");
    assert_eq!(told, missing, "every dropped frame was counted in lagged");
    let stats = hub.stats();
    assert_eq!(stats.queue_dropped_total, missing);
    assert!(stats.lagged_total >= 1);
}

#[test]
fn a_new_client_gets_the_last_metrics_at_once() {
    let hub = start(common::config());
    let b = hub.broadcaster();
    let snapshot = takhin_monitor::MonitoringMetrics {
        timestamp: 1,
        ..Default::default()
    };
    b.metrics(&snapshot).unwrap();
    let seq = b.metrics(&snapshot).unwrap();
    // The last value reaches every shard before the client connects: wait for the counter.
    let shards = hub.cores().len() as u64;
    common::eventually("the metrics frame to reach every shard", || {
        hub.stats().broadcasts_total == 2 * shards
    });
    let addr = hub.local_addr();
    let mut c = common::connect_quiet(addr, TcpStream::connect(addr).unwrap());
    let v: Value = c.recv();
    assert_eq!(
        v["type"], "metrics",
        "the first message is the last snapshot"
    );
    assert_eq!(v["seq"], seq);
    assert_eq!(v["data"]["clusterHealth"]["goroutineCount"], 0);
}

#[test]
fn a_ring_overflow_is_told_to_clients_as_lagged() {
    let hub = start(common::config().cores(Cores::Count(1)).ring_size(2));
    let mut c = connect(hub.local_addr());
    let b = hub.broadcaster();
    let mut sent = 0u64;
    while hub.stats().ring_dropped_total == 0 {
        assert!(sent < 1_000_000, "the ring never overflowed");
        b.publish(&Channel::Events, "n", &sent).unwrap();
        sent += 1;
    }
    let end = b.publish(&Channel::Events, "end", &0).unwrap();
    let (mut received, mut told) = (0u64, 0u64);
    loop {
        let v = c.recv();
        match v["type"].as_str().unwrap() {
            "lagged" => told += v["data"]["dropped"].as_u64().unwrap(),
            "n" => received += 1,
            "end" if v["seq"] == end => break,
            other => panic!("unexpected {other}"),
        }
    }
    let missing = sent - received;
    assert!(missing > 0);
    assert!(told >= missing, "told {told}, missing {missing}");
    let stats = hub.stats();
    assert_eq!(
        stats.ring_dropped_total + stats.queue_dropped_total,
        missing
    );
}
