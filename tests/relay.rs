//! Scale-out through Redis: real `redis-server` processes on a free loopback port, real
//! `takhin-monitor` processes (an origin and a relay-only instance), real WebSocket clients on
//! each. Without `redis-server` (looked for by build.rs) these tests are ignored, saying so; with
//! `CI` set they run and fail instead. `.ci/run` installs Debian's package.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A `redis-server` on 127.0.0.1, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
    /// What it is started with besides its port.
    args: Vec<String>,
    /// With TLS (its only port): the directory of its certificates, removed when dropped.
    tls: Option<PathBuf>,
}

impl Redis {
    /// Starts one on a free port; fails when the binary is missing (the tests are ignored then
    /// unless `CI` is set, or they were asked for with `--ignored`).
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Self::start`] with more arguments (`--requirepass`, `--user`...).
    fn start_with(args: &[&str]) -> Self {
        common::watchdog();
        if let Err(e) = Command::new("redis-server").arg("--version").output() {
            panic!("redis-server is missing ({e}): apt-get install redis-server");
        }
        let mut redis = Self {
            port: free_port(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            tls: None,
        };
        redis.restart();
        redis
    }

    /// [`Self::start_with`], speaking TLS only, with a certificate for 127.0.0.1 and
    /// `localhost` signed by a CA made here (`ca.pem` in [`Self::tls`]), and another CA that
    /// signed nothing of it (`other-ca.pem`). Clients need no certificate of their own.
    fn start_tls(args: &[&str]) -> Self {
        common::watchdog();
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("takhin-relay-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, issuer) = test_ca("takhin test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("other-ca.pem"), test_ca("another CA").0.pem()).unwrap();
        std::fs::write(dir.join("redis.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("redis.key"), key.serialize_pem()).unwrap();
        let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let mut tls_args = vec![
            "--tls-cert-file".to_owned(),
            file("redis.pem"),
            "--tls-key-file".to_owned(),
            file("redis.key"),
            "--tls-ca-cert-file".to_owned(),
            file("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        tls_args.extend(args.iter().map(|a| a.to_string()));
        let mut redis = Self {
            port,
            child: None,
            args: tls_args,
            tls: Some(dir),
        };
        redis.restart();
        redis
    }

    fn url(&self, prefix: &str) -> String {
        self.url_as("", prefix)
    }

    /// The relay URL with `credentials` (`USER:PASSWORD@`, `:PASSWORD@` or nothing) and, with
    /// TLS, the test CA to trust.
    fn url_as(&self, credentials: &str, prefix: &str) -> String {
        match &self.tls {
            None => format!("redis://{credentials}127.0.0.1:{}/{prefix}", self.port),
            Some(dir) => format!(
                "rediss://{credentials}127.0.0.1:{}/{prefix}?ca={}",
                self.port,
                dir.join("ca.pem").display()
            ),
        }
    }

    /// Starts it (again) on its port and waits until it answers.
    fn restart(&mut self) {
        let port = self.port.to_string();
        let ports: &[&str] = match self.tls {
            None => &["--port", &port],
            Some(_) => &["--port", "0", "--tls-port", &port],
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.args)
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
        self.commands(&[args]).pop().unwrap()
    }

    /// Sends commands on one connection (plain text) and returns the first line of each reply.
    fn commands(&self, commands: &[&[&str]]) -> Vec<String> {
        use std::io::{BufRead, BufReader, Write};
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut replies = BufReader::new(s.try_clone().unwrap());
        commands
            .iter()
            .map(|args| {
                let mut cmd = format!("*{}\r\n", args.len());
                for a in *args {
                    cmd += &format!("${}\r\n{a}\r\n", a.len());
                }
                (&s).write_all(cmd.as_bytes()).unwrap();
                let mut line = String::new();
                replies.read_line(&mut line).unwrap();
                line
            })
            .collect()
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
        if let Some(dir) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA certificate and what signs with its key.
fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// A `takhin-monitor` process on one core joined to the relay at `url`, given in
/// `TAKHIN_RELAY` (as a deployment with a password would: not on the command line).
fn instance_at(url: &str, source: &[&str]) -> common::ServerProcess {
    let args = [&["--listen", "127.0.0.1:0", "--cores", "1"][..], source].concat();
    common::spawn_server(&args, &[("TAKHIN_RELAY", url)])
}

/// The origin: no source of its own but REST and publish; one snapshot at start, the next
/// `interval` seconds later.
fn origin(redis: &Redis, prefix: &str, interval: &str) -> common::ServerProcess {
    origin_at(&redis.url(prefix), interval)
}

fn origin_at(url: &str, interval: &str) -> common::ServerProcess {
    instance_at(url, &["--source", "none", "--metrics-interval", interval])
}

fn relay_only(redis: &Redis, prefix: &str) -> common::ServerProcess {
    relay_only_at(&redis.url(prefix))
}

fn relay_only_at(url: &str) -> common::ServerProcess {
    instance_at(url, &["--source", "relay"])
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

/// Every line `hub` has logged holds none of `secrets` (raw or percent-encoded).
fn assert_never_logged(hub: &common::ServerProcess, secrets: &[&str]) {
    let log = hub.log.lock().unwrap();
    for line in log.iter() {
        for secret in secrets {
            let encoded = secret.replace(' ', "%20");
            assert!(
                !line.contains(secret) && !line.contains(&encoded),
                "a password in the log: {line}"
            );
        }
    }
}

/// An origin and a relay-only instance on the relay at `url` share a stream: a publish on the
/// origin reaches a client of the other, and the relay-only instance lists the origin's topic.
fn assert_relayed(url: &str, payload: &Value) -> (common::ServerProcess, common::ServerProcess) {
    let a = origin_at(url, "60");
    let b = relay_only_at(url);
    wait_subscribed(a.addr);
    wait_subscribed(b.addr);
    let mut on_b = common::connect(b.addr);
    let r = post(a.addr, "/api/monitoring/publish", payload);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(on_b.recv_type("deploy")["data"], payload["data"]);
    let created = post(
        a.addr,
        "/api/topics",
        &json!({"name": "orders", "partitions": 2}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(on_b.recv_type("topic_created")["data"]["name"], "orders");
    common::eventually("B to list A's topic", || {
        let r = common::http(b.addr, "GET", "/api/topics", &[], None);
        r.status == 200 && r.body.contains("orders")
    });
    // A client that joins later gets the last value, read back from Redis.
    let late = relay_only_at(url);
    wait_subscribed(late.addr);
    let mut fresh = quiet(late.addr);
    assert_eq!(fresh.recv()["type"], "metrics", "the last value, relayed");
    for hub in [&a, &b, &late] {
        assert_eq!(
            relay_metric(hub.addr, "takhin_relay_auth_failures_total"),
            0
        );
    }
    (a, b)
}

/// `requirepass`: the password alone (`redis://:PASSWORD@...`), percent-encoded in the URL
/// since it holds `@`, `:`, `/`, `%` and a space.
#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn a_redis_with_a_password_relays_with_the_right_one() {
    let password = "p@ss:w/rd% 1";
    let redis = Redis::start_with(&["--requirepass", password]);
    let url = redis.url_as(":p%40ss%3Aw%2Frd%25%201@", "auth");
    let (a, b) = assert_relayed(&url, &json!({"type": "deploy", "data": {"v": 1}}));
    for hub in [&a, &b] {
        assert_never_logged(hub, &[password, "p%40ss"]);
        assert!(
            !hub.log_lines(":***@127.0.0.1").is_empty(),
            "the relay, logged without its password"
        );
    }
}

/// A Redis 6 ACL user (`redis://USER:PASSWORD@...`) with only what the README's recipe
/// grants: its prefix's keys and channels and the relay's commands; the default user is off.
/// The origin stays quiet long enough to ping Redis on its subscription (also allowed).
#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn an_acl_user_with_only_the_relays_permissions_relays() {
    let redis = Redis::start_with(&[
        "--user",
        "default",
        "off",
        "--user",
        "takhin",
        "on",
        ">hub secret",
        "~acl:*",
        "&acl:*",
        "+publish",
        "+subscribe",
        "+ping",
        "+get",
        "+set",
        "+del",
        "+hset",
        "+hdel",
        "+hgetall",
    ]);
    let url = redis.url_as("takhin:hub%20secret@", "acl");
    let (a, b) = assert_relayed(&url, &json!({"type": "deploy", "data": {"v": 2}}));
    // A's subscription hears nothing (no commands are forwarded): after 3 s it pings.
    std::thread::sleep(Duration::from_millis(4_000));
    for hub in [&a, &b] {
        assert_eq!(relay_metric(hub.addr, "takhin_relay_connected"), 1);
        assert_eq!(relay_metric(hub.addr, "takhin_relay_errors_total"), 0);
        assert_never_logged(hub, &["hub secret"]);
    }
}

/// A wrong password, none, an unknown user: each instance keeps serving its clients, says
/// which server and user Redis refused (never the password), counts it in /metrics, retries
/// with backoff, and gets in once Redis takes the password.
#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn wrong_credentials_are_reported_without_the_password_and_retried() {
    let redis = Redis::start_with(&["--requirepass", "right one"]);
    let wrong = origin_at(&redis.url_as(":wrong%20one@", "bad"), "60");
    let none = relay_only_at(&redis.url("bad"));
    let stranger = relay_only_at(&redis.url_as("nobody:right%20one@", "bad"));
    let at = format!("127.0.0.1:{}", redis.port);
    for (hub, answer, user) in [
        (&wrong, "WRONGPASS", "default"),
        (&none, "NOAUTH", "default"),
        (&stranger, "WRONGPASS", "nobody"),
    ] {
        common::eventually("the refusal to be counted", || {
            relay_metric(hub.addr, "takhin_relay_auth_failures_total") >= 1
        });
        assert_eq!(relay_metric(hub.addr, "takhin_relay_connected"), 0);
        assert!(relay_metric(hub.addr, "takhin_relay_errors_total") >= 1);
        let refused = hub.log_lines("refused the relay's credentials");
        let line = refused.first().expect("the refusal, logged");
        assert!(
            line.contains(&at) && line.contains(answer) && line.contains(user),
            "{line}"
        );
        assert_eq!(
            common::http(hub.addr, "GET", "/healthz", &[], None).status,
            200
        );
        assert_never_logged(hub, &["wrong one", "right one"]);
    }
    // Its clients are served meanwhile.
    let mut on_wrong = common::connect(wrong.addr);
    on_wrong.send_json(&json!({"type": "ping", "timestamp": 3}));
    assert_eq!(on_wrong.recv_type("pong")["timestamp"], 3);
    let r = post(
        wrong.addr,
        "/api/monitoring/publish",
        &json!({"type": "local"}),
    );
    assert_eq!(r.status, 202);
    assert_eq!(on_wrong.recv_type("local")["type"], "local");

    // Redis takes the password now: the next try (at most 5 s of backoff later) gets in.
    let replies = redis.commands(&[
        &["AUTH", "right one"],
        &["CONFIG", "SET", "requirepass", "wrong one"],
    ]);
    assert_eq!(replies, ["+OK\r\n", "+OK\r\n"]);
    wait_subscribed(wrong.addr);
    assert_never_logged(&wrong, &["wrong one", "right one"]);
}

/// `rediss://`: Redis on its TLS port only, its certificate from a CA made in the test and
/// trusted through `?ca=`, with a password. Frames larger than a TLS record cross it whole. An
/// instance trusting another CA is refused by its own check, and says so.
#[test]
#[cfg_attr(
    not(any(has_redis, ci)),
    ignore = "needs redis-server (.ci/run installs it)"
)]
fn a_tls_redis_relays_to_instances_that_trust_its_ca() {
    let redis = Redis::start_tls(&["--requirepass", "tls pw"]);
    let url = redis.url_as(":tls%20pw@", "tls");
    assert!(url.starts_with("rediss://"), "{url}");
    let big = "x".repeat(40_000);
    let (a, b) = assert_relayed(&url, &json!({"type": "deploy", "data": {"big": big}}));
    for hub in [&a, &b] {
        assert_never_logged(hub, &["tls pw"]);
    }

    let dir = redis.tls.as_ref().unwrap();
    let other = format!(
        "rediss://:tls%20pw@127.0.0.1:{}/tls?ca={}",
        redis.port,
        dir.join("other-ca.pem").display()
    );
    let distrustful = relay_only_at(&other);
    common::eventually("the untrusted certificate to be refused", || {
        relay_metric(distrustful.addr, "takhin_relay_errors_total") >= 1
    });
    assert_eq!(relay_metric(distrustful.addr, "takhin_relay_connected"), 0);
    assert_eq!(
        relay_metric(distrustful.addr, "takhin_relay_auth_failures_total"),
        0
    );
    common::eventually("the reason to be logged", || {
        !distrustful.log_lines("certificate").is_empty()
    });
}
