//! Scale-out through Redis: real `redis-server` processes on a free loopback port, real
//! `takhin-monitor` processes (an origin and a relay-only instance), real WebSocket clients on
//! each. Without `redis-server` (looked for by build.rs) these tests are ignored, saying so; with
//! `CI` set they run and fail instead. `.ci/run` installs Debian's package.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A `redis-server` on 127.0.0.1, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port; fails when the binary is missing (the tests are ignored then
    /// unless `CI` is set, or they were asked for with `--ignored`).
    fn start() -> Self {
        common::watchdog();
        if let Err(e) = Command::new("redis-server").arg("--version").output() {
            panic!("redis-server is missing ({e}): apt-get install redis-server");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self, prefix: &str) -> String {
        format!("redis://127.0.0.1:{}/{prefix}", self.port)
    }

    /// Starts it (again) on its port and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        common::eventually("redis to accept connections", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Sends one command and returns the first line of its reply.
    fn command(&self, args: &[&str]) -> String {
        use std::io::{BufRead, BufReader, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(cmd.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `takhin-monitor` process on one core joined to the relay under `prefix`.
fn instance(redis: &Redis, prefix: &str, source: &[&str]) -> common::ServerProcess {
    let relay = redis.url(prefix);
    let args = [
        &["--listen", "127.0.0.1:0", "--cores", "1", "--relay", &relay][..],
        source,
    ]
    .concat();
    common::spawn_server(&args, &[])
}

/// The origin: no source of its own but REST and publish; one snapshot at start, the next
/// `interval` seconds later.
fn origin(redis: &Redis, prefix: &str, interval: &str) -> common::ServerProcess {
    instance(
        redis,
        prefix,
        &["--source", "none", "--metrics-interval", interval],
    )
}

fn relay_only(redis: &Redis, prefix: &str) -> common::ServerProcess {
    instance(redis, prefix, &["--source", "relay"])
}

/// A client whose first message read is the server's first (the registration ping of
/// `common::connect` would skip it).
fn quiet(addr: SocketAddr) -> common::Client {
    common::connect_quiet(addr, TcpStream::connect(addr).unwrap())
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> common::HttpAnswer {
    common::http(addr, "POST", path, &[], Some(&body.to_string()))
}

/// The relay's counter in `/metrics` (`None` until the relay has started).
fn relay_metric_now(addr: SocketAddr, name: &str) -> Option<u64> {
    let text = common::http(addr, "GET", "/metrics", &[], None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.parse().unwrap())
}

fn relay_metric(addr: SocketAddr, name: &str) -> u64 {
    relay_metric_now(addr, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Waits until the instance's relay is connected (its gauge says so).
fn wait_subscribed(addr: SocketAddr) {
    common::eventually("the relay to connect", || {
        relay_metric_now(addr, "takhin_relay_connected") == Some(1)
    });
}

#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn two_instances_serve_one_stream_with_the_origins_identity() {
    let redis = Redis::start();
    // One snapshot at start, the next a minute later: what a late client gets is the last value.
    let a = origin(&redis, "one", "60");
    let mut on_a = quiet(a.addr);
    let snapshot_a = on_a.recv_type("metrics");
    let b = relay_only(&redis, "one");
    wait_subscribed(b.addr);
    wait_subscribed(a.addr);

    // Last value first: a client of B gets A's snapshot at once, the same frame (seq, epoch).
    let mut on_b = quiet(b.addr);
    let first = on_b.recv();
    assert_eq!(first["type"], "metrics", "the first frame on B: {first}");
    assert_eq!(first["seq"], snapshot_a["seq"]);
    assert_eq!(first["epoch"], snapshot_a["epoch"]);

    // A topic created through A reaches the clients of both, with one identity.
    let created = post(
        a.addr,
        "/api/topics",
        &json!({"name": "orders", "partitions": 3}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let ev_a = on_a.recv_type("topic_created");
    let ev_b = on_b.recv_type("topic_created");
    assert_eq!(ev_b["data"]["name"], "orders");
    assert_eq!(
        (&ev_a["seq"], &ev_a["epoch"]),
        (&ev_b["seq"], &ev_b["epoch"])
    );

    // B answers reads from A's state.
    common::eventually("B to list the topic", || {
        let r = common::http(b.addr, "GET", "/api/topics", &[], None);
        r.status == 200
            && r.json()
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "orders")
    });
    let one = common::http(b.addr, "GET", "/api/topics/orders", &[], None);
    assert_eq!(
        (one.status, one.json()["partitions"].clone()),
        (200, json!(3))
    );

    let group = json!({"state": "Stable", "members": 2}).to_string();
    let put = common::http(a.addr, "PUT", "/api/groups/billing", &[], Some(&group));
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        on_b.recv_type("group_updated")["data"]["groupId"],
        "billing"
    );
    common::eventually("B's groups to agree with A's", || {
        let on_a = common::http(a.addr, "GET", "/api/groups", &[], None).json();
        let r = common::http(b.addr, "GET", "/api/groups", &[], None);
        r.status == 200 && r.json() == on_a
    });
    let g = common::http(b.addr, "GET", "/api/groups/billing", &[], None);
    assert_eq!((g.status, g.json()["members"].clone()), (200, json!(2)));

    // A mutation and a publish through B are forwarded to A and reach everyone.
    let fwd = post(
        b.addr,
        "/api/topics",
        &json!({"name": "payments", "partitions": 1}),
    );
    assert_eq!(fwd.status, 202, "{}", fwd.body);
    assert_eq!(on_a.recv_type("topic_created")["data"]["name"], "payments");
    assert_eq!(on_b.recv_type("topic_created")["data"]["name"], "payments");
    let published = post(
        b.addr,
        "/api/monitoring/publish",
        &json!({"type": "deploy", "data": {"v": 7}}),
    );
    assert_eq!(published.status, 202);
    let on_both = [on_a.recv_type("deploy"), on_b.recv_type("deploy")];
    assert_eq!(on_both[0]["data"]["v"], 7);
    assert_eq!(on_both[0]["seq"], on_both[1]["seq"]);
    assert_eq!(on_both[1]["epoch"], snapshot_a["epoch"], "A's epoch on B");

    assert!(relay_metric(a.addr, "takhin_relay_published_total") >= 4);
    assert!(relay_metric(b.addr, "takhin_relay_received_total") >= 3);
}

#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn a_redis_restart_loses_no_instance_and_the_stream_resumes() {
    let mut redis = Redis::start();
    let a = origin(&redis, "two", "60");
    let b = relay_only(&redis, "two");
    wait_subscribed(a.addr);
    wait_subscribed(b.addr);
    let mut on_a = common::connect(a.addr);
    let mut on_b = common::connect(b.addr);

    redis.kill();
    common::eventually("both instances to notice", || {
        relay_metric(a.addr, "takhin_relay_connected") == 0
            && relay_metric(b.addr, "takhin_relay_connected") == 0
    });
    // Meanwhile each instance serves its own clients as before.
    on_b.send_json(&json!({"type": "ping", "timestamp": 1}));
    assert_eq!(on_b.recv_type("pong")["timestamp"], 1);
    let during = post(
        a.addr,
        "/api/monitoring/publish",
        &json!({"type": "during"}),
    );
    assert_eq!(during.status, 202);
    assert_eq!(on_a.recv_type("during")["type"], "during");

    redis.restart();
    wait_subscribed(a.addr);
    wait_subscribed(b.addr);
    assert!(relay_metric(a.addr, "takhin_relay_errors_total") >= 1);
    assert!(relay_metric(b.addr, "takhin_relay_errors_total") >= 1);
    // The publisher may still be backing off: publish until one arrives at B.
    let mut n = 0;
    let deadline = std::time::Instant::now() + common::READ_TIMEOUT;
    loop {
        n += 1;
        let r = post(
            a.addr,
            "/api/monitoring/publish",
            &json!({"type": "after", "data": n}),
        );
        assert_eq!(r.status, 202);
        let got = on_b.recv_within(Duration::from_millis(500));
        if got.is_some_and(|m| m["type"] == "after") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never resumed"
        );
    }
}

#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn killing_the_source_instance_leaves_the_others_serving() {
    let redis = Redis::start();
    let mut a = origin(&redis, "three", "60");
    let b = relay_only(&redis, "three");
    wait_subscribed(b.addr);
    let mut on_b = quiet(b.addr);
    assert_eq!(on_b.recv()["type"], "metrics", "the last value, relayed");

    // SAFETY: signalling our own child process by its PID.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGKILL) };
    a.child.wait().unwrap();

    on_b.send_json(&json!({"type": "ping", "timestamp": 2}));
    assert_eq!(on_b.recv_type("pong")["timestamp"], 2);
    let health = common::http(b.addr, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200);
    // A new client still gets the last value.
    let mut late = quiet(b.addr);
    assert_eq!(late.recv()["type"], "metrics");
    assert_eq!(relay_metric(b.addr, "takhin_relay_connected"), 1);
}

#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn a_redis_that_stops_answering_is_noticed_and_left() {
    let redis = Redis::start();
    let a = origin(&redis, "four", "60");
    let b = relay_only(&redis, "four");
    wait_subscribed(b.addr);
    // The connections stay open, but Redis answers nothing for 20 s: only a ping shows it.
    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "20000", "ALL"]).trim(),
        "+OK"
    );
    // Silent for 3 s, pinged, silent 3 s more: about 6 s, within the wait.
    common::eventually(
        "the relay-only instance to give up on the silent Redis",
        || relay_metric(b.addr, "takhin_relay_errors_total") >= 1,
    );
    assert_eq!(relay_metric(b.addr, "takhin_relay_connected"), 0);
    // Once the pause is over, it reconnects (CLIENT UNPAUSE would itself wait for the pause).
    // Attempts made while Redis is paused wait out their own 5 s reply deadline first.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while relay_metric(b.addr, "takhin_relay_connected") != 1 {
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut on_b = quiet(b.addr);
    let r = post(a.addr, "/api/monitoring/publish", &json!({"type": "back"}));
    assert_eq!(r.status, 202);
    assert_eq!(on_b.recv_type("back")["type"], "back");
}

/// Resuming on a relay-only instance: its history is the origin's stream, so a client that
/// saw the origin's `seq` and `epoch` (here, on the relay-only instance itself) reconnects
/// with them and gets exactly what it missed, then `recovered: true`. A group's current state
/// reaches new clients of every instance, one that joins later included (through the last
/// values in Redis). The instance's own epoch means nothing there: `recovered: false`.
#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn a_client_resumes_on_a_relay_only_instance_with_the_origins_seq_and_epoch() {
    let redis = Redis::start();
    let a = origin(&redis, "five", "60");
    let b = relay_only(&redis, "five");
    wait_subscribed(a.addr);
    wait_subscribed(b.addr);
    let mut witness = common::connect(b.addr);
    let mut on_b = common::connect(b.addr);
    let publish = |kind: &str, n: u64| {
        let r = post(
            a.addr,
            "/api/monitoring/publish",
            &json!({"type": kind, "data": n}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()["seq"].as_u64().unwrap()
    };
    let seen = publish("deploy", 0);
    let got = on_b.recv_type("deploy");
    assert_eq!(got["seq"], seen);
    let epoch = got["epoch"].as_u64().unwrap();
    drop(on_b);

    let missed: Vec<u64> = (1..=3).map(|n| publish("deploy", n)).collect();
    // B has them once its witness does.
    while witness.recv_type("deploy")["seq"] != missed[2] {}

    let mut r = common::connect_with_query(
        b.addr,
        TcpStream::connect(b.addr).unwrap(),
        &format!("?since={seen}&epoch={epoch}"),
    );
    let mut got = Vec::new();
    loop {
        let v = r.recv();
        if v["type"] == "recovered" {
            assert_eq!(v["data"], json!({"recovered": true, "replayed": 3}));
            break;
        }
        if v["type"] == "deploy" {
            assert_eq!(v["epoch"], epoch, "the origin's epoch");
            got.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(got, missed);

    // A group's state reaches every instance's new clients, and an instance that joins later
    // loads it with the last values.
    let group = json!({"state": "Stable", "members": 2}).to_string();
    let put = common::http(a.addr, "PUT", "/api/groups/billing", &[], Some(&group));
    assert_eq!(put.status, 200, "{}", put.body);
    let state = witness.recv_type("group_updated");
    let c = relay_only(&redis, "five");
    wait_subscribed(c.addr);
    for addr in [b.addr, c.addr] {
        let mut fresh = common::connect(addr);
        fresh.send_json(&json!({"type": "subscribe", "data": "group:billing"}));
        fresh.recv_type("subscribed");
        let got = fresh.recv();
        assert_eq!(got["type"], "group_updated", "{got}");
        assert_eq!((&got["seq"], &got["data"]), (&state["seq"], &state["data"]));
    }

    // The instance's own epoch is not the stream's.
    let mut own = common::connect_with_query(
        b.addr,
        TcpStream::connect(b.addr).unwrap(),
        &format!("?since={seen}&epoch={}", epoch + 1),
    );
    assert_eq!(
        own.recv_type("recovered")["data"],
        json!({"recovered": false, "replayed": 0})
    );
}
