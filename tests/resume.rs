//! State and recovery (docs/protocol.md, "Current state and recovery"), through real
//! WebSocket clients of an in-process hub on one core: a new client gets every group's state at
//! once; a client that reconnects with `?since=&epoch=` gets exactly what it missed, in order,
//! then `recovered`; a resume the history cannot serve says `recovered: false`; broadcasts
//! made while a replay runs come once, after the older ones. (Resuming on a relay-only
//! instance is in tests/relay.rs.)
//!
//! Waits read frames: a `pong` marks the end of what the server queued before it, and a
//! "witness" client on the same (only) core shows that the shard has taken in a broadcast
//! before a later client connects.

mod common;

use std::net::{SocketAddr, TcpStream};

use serde_json::{json, Value};
use takhin_monitor::{Channel, Cores, HubConfig, HubHandle};

/// One core, so that one witness client sees what every client's shard saw.
fn one_core() -> HubConfig {
    common::config().cores(Cores::Count(1))
}

fn start(config: HubConfig) -> (HubHandle, SocketAddr) {
    let hub = common::start(config);
    let addr = hub.local_addr();
    (hub, addr)
}

/// A client connecting with `query` (`?since=..&epoch=..`), reading from the server's first
/// frame on.
fn connect(addr: SocketAddr, query: &str) -> common::Client {
    common::connect_with_query(addr, TcpStream::connect(addr).unwrap(), query)
}

/// Everything the server sends before the answer to a `ping` sent now.
fn until_pong(c: &mut common::Client) -> Vec<Value> {
    c.send_json(&json!({"type": "ping"}));
    let mut got = Vec::new();
    loop {
        let v = c.recv();
        if v["type"] == "pong" {
            return got;
        }
        got.push(v);
    }
}

/// Everything up to and including the `recovered` notice.
fn until_recovered(c: &mut common::Client) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let v = c.recv();
        let done = v["type"] == "recovered";
        got.push(v);
        if done {
            return got;
        }
    }
}

/// (type, seq) of each frame.
fn kinds(frames: &[Value]) -> Vec<(String, u64)> {
    frames
        .iter()
        .map(|v| {
            let kind = v["type"].as_str().unwrap_or_default().to_owned();
            (kind, v["seq"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn kind_seq(kind: &str, seq: u64) -> (String, u64) {
    (kind.to_owned(), seq)
}

/// The witness reads until the frame with `seq`: the shard has taken it in.
fn witness_until(w: &mut common::Client, seq: u64) {
    while w.recv()["seq"].as_u64() != Some(seq) {}
}

#[test]
fn a_new_client_gets_every_groups_state_at_once() {
    let (hub, addr) = start(one_core());
    let b = hub.broadcaster();
    let mut witness = common::connect(addr);
    let metrics = b.metrics(&json!({"n": 1})).unwrap();
    b.group_updated("orders-app", "Stable", 3).unwrap();
    let empty = b.group_updated("billing", "Empty", 0).unwrap();
    let rebalancing = b
        .group_updated("orders-app", "PreparingRebalance", 2)
        .unwrap();
    b.group_updated("gone", "Stable", 1).unwrap();
    let dead = b.group_updated("gone", "Dead", 0).unwrap();
    witness_until(&mut witness, dead);

    let mut c = connect(addr, "");
    let greeting = until_pong(&mut c);
    assert_eq!(
        kinds(&greeting),
        [
            kind_seq("metrics", metrics),
            kind_seq("group_updated", empty),
            kind_seq("group_updated", rebalancing),
        ]
    );
    assert_eq!(
        greeting[2]["data"],
        json!({"groupId": "orders-app", "state": "PreparingRebalance", "members": 2})
    );
    assert_eq!(greeting[1]["epoch"], greeting[0]["epoch"]);

    // Subscribing to one group's channel later gives that group's state.
    c.send_json(&json!({"type": "unsubscribe", "data": "events"}));
    c.send_json(&json!({"type": "subscribe", "data": "group:orders-app"}));
    let got = until_pong(&mut c);
    assert_eq!(
        kinds(&got),
        [
            kind_seq("unsubscribed", 0),
            kind_seq("subscribed", 0),
            kind_seq("group_updated", rebalancing),
        ]
    );
}

#[test]
fn a_client_that_resumes_gets_exactly_what_it_missed_then_recovered() {
    let (hub, addr) = start(one_core());
    let b = hub.broadcaster();
    let mut witness = common::connect(addr);
    let mut c = common::connect(addr);
    b.group_updated("orders-app", "Stable", 3).unwrap();
    let seen = c.recv_type("group_updated");
    let (since, epoch) = (seen["seq"].as_u64().unwrap(), seen["epoch"].clone());
    drop(c);

    // Five broadcasts missed (and snapshots between them, which are state, not history).
    let mut missed = Vec::new();
    for i in 0..5 {
        b.metrics(&json!({"n": i})).unwrap();
        missed.push(
            b.publish_raw(&Channel::Events, "deploy", Some(&format!("{{\"v\":{i}}}")))
                .unwrap(),
        );
    }
    let last_metrics = b.metrics(&json!({"n": 5})).unwrap();
    witness_until(&mut witness, last_metrics);

    let mut r = connect(addr, &format!("?since={since}&epoch={epoch}"));
    let got = until_recovered(&mut r);
    let mut expected = vec![kind_seq("metrics", last_metrics)];
    expected.extend(missed.iter().map(|&s| kind_seq("deploy", s)));
    expected.push(kind_seq("recovered", 0));
    assert_eq!(kinds(&got), expected, "{got:?}");
    assert_eq!(got[1]["data"], json!({"v": 0}));
    assert_eq!(
        got.last().unwrap()["data"],
        json!({"recovered": true, "replayed": 5})
    );
    // Then live, from the next broadcast on.
    let next = b.group_updated("orders-app", "Empty", 0).unwrap();
    assert_eq!(kinds(&[r.recv()]), [kind_seq("group_updated", next)]);

    // Resuming from the last seq seen: nothing missed, still a recovery.
    let mut r = connect(addr, &format!("?since={next}&epoch={epoch}"));
    let got = until_recovered(&mut r);
    assert_eq!(kinds(&got).last(), Some(&kind_seq("recovered", 0)));
    assert_eq!(
        got.last().unwrap()["data"],
        json!({"recovered": true, "replayed": 0})
    );

    // Counted for operators, with what the history holds.
    let stats = hub.stats();
    assert_eq!(
        (
            stats.resumes_total,
            stats.resumes_recovered_total,
            stats.replayed_total
        ),
        (2, 2, 5)
    );
    let value = common::prometheus(addr);
    assert_eq!(value("takhin_resumes_recovered_total"), 2.0);
    // Events and published messages are held; snapshots are not.
    assert_eq!(value("takhin_history_frames"), 7.0);
    assert!(value("takhin_history_bytes") > 7.0 * 100.0);
}

#[test]
fn a_resume_the_history_cannot_serve_says_not_recovered_after_the_state() {
    let (hub, addr) = start(one_core().history_frames(3));
    let b = hub.broadcaster();
    let mut witness = common::connect(addr);
    let epoch = witness_epoch(&mut witness, &b);
    let first = b.group_updated("orders-app", "Stable", 3).unwrap();
    let mut last = first;
    for i in 0..5 {
        last = b.publish(&Channel::Events, "deploy", &i).unwrap();
    }
    witness_until(&mut witness, last);

    for (why, query) in [
        (
            "another epoch",
            format!("?since={first}&epoch={}", epoch + 1),
        ),
        ("no epoch", format!("?since={first}")),
        (
            "older than the history",
            format!("?since={first}&epoch={epoch}"),
        ),
        (
            "a seq never sent",
            format!("?since={}&epoch={epoch}", last + 100),
        ),
    ] {
        let mut r = connect(addr, &query);
        let got = until_recovered(&mut r);
        assert_eq!(
            kinds(&got),
            [kind_seq("group_updated", first), kind_seq("recovered", 0)],
            "{why}"
        );
        assert_eq!(
            got[1]["data"],
            json!({"recovered": false, "replayed": 0}),
            "{why}"
        );
    }
    // The history still serves what it holds.
    let mut r = connect(addr, &format!("?since={}&epoch={epoch}", last - 1));
    let got = until_recovered(&mut r);
    assert_eq!(
        kinds(&got),
        [kind_seq("deploy", last), kind_seq("recovered", 0)]
    );
}

/// The hub's epoch, as a frame carries it.
fn witness_epoch(w: &mut common::Client, b: &takhin_monitor::Broadcaster) -> u64 {
    let seq = b.publish(&Channel::Events, "probe", &0).unwrap();
    loop {
        let v = w.recv();
        if v["seq"].as_u64() == Some(seq) {
            return v["epoch"].as_u64().unwrap();
        }
    }
}

#[test]
fn broadcasts_during_a_replay_come_once_after_the_older_ones() {
    // A small queue and small socket buffers: the replay of 50 frames of 16 KiB cannot finish
    // before the client reads, so what is broadcast meanwhile is broadcast during it.
    let (hub, addr) = start(one_core().client_queue(4).send_buffer(Some(32 << 10)));
    let b = hub.broadcaster();
    let events = Channel::Events;
    let mut c = common::connect(addr);
    b.group_updated("orders-app", "Stable", 3).unwrap();
    let since = b.publish(&events, "start", &0).unwrap();
    let epoch = c.recv_type("start")["epoch"].as_u64().unwrap();
    drop(c);
    let big = format!("\"{}\"", "x".repeat(16 << 10));
    let mut expected: Vec<u64> = (0..50)
        .map(|_| b.publish_raw(&events, "big", Some(&big)).unwrap())
        .collect();

    let stream = TcpStream::connect(addr).unwrap();
    socket2::SockRef::from(&stream)
        .set_recv_buffer_size(32 << 10)
        .unwrap();
    let mut r = common::connect_with_query(addr, stream, &format!("?since={since}&epoch={epoch}"));
    // During the replay: a subscribe to the group (its state, older than `since`, must not
    // jump ahead of the replay), live events, and a newer snapshot.
    r.send_json(&json!({"type": "subscribe", "data": "group:orders-app"}));
    expected.extend((0..5).map(|i| b.publish(&events, "live", &i).unwrap()));
    let snapshot = b.metrics(&json!({"n": 1})).unwrap();

    let got = until_recovered(&mut r);
    let seqs: Vec<u64> = got[..got.len() - 1]
        .iter()
        .filter(|v| v["type"] != "subscribed")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, expected, "in seq order, each once");
    assert!(got.iter().any(|v| v["type"] == "subscribed"));
    assert_eq!(
        got.last().unwrap()["data"],
        json!({"recovered": true, "replayed": 55})
    );
    // The snapshot held back during the replay comes right after it; then nothing is sent
    // twice: the next frame is the next broadcast.
    assert_eq!(kinds(&[r.recv()]), [kind_seq("metrics", snapshot)]);
    let after = b.publish(&events, "after", &0).unwrap();
    assert_eq!(kinds(&[r.recv()]), [kind_seq("after", after)]);
}
