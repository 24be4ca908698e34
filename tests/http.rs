//! The HTTP side on the WebSocket's port, over real sockets: every route and status, tokens,
//! origins, the connection limit, Prometheus text, readiness during a drain.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{connect, http, http_on, start, HttpAnswer};
use serde_json::json;
use takhin_monitor::{GroupCoordinator, HubConfig, HubHandle, Recorder, TopicManager};

/// A hub with its REST services attached.
fn served(config: HubConfig) -> HubHandle {
    let hub = start(config);
    let b = hub.broadcaster();
    let topics = TopicManager::new(Recorder::new(), Some(b.clone()));
    let groups = GroupCoordinator::new(Some(b));
    assert!(hub.serve_api(topics, groups));
    hub
}

fn get(hub: &HubHandle, path: &str) -> HttpAnswer {
    http(hub.local_addr(), "GET", path, &[], None)
}

#[test]
fn health_readiness_and_the_dashboard() {
    let hub = served(common::config());
    let h = get(&hub, "/healthz");
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    assert_eq!(get(&hub, "/readyz").status, 200);
    let page = get(&hub, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("<html") || page.body.contains("<!doctype"));
    let missing = get(&hub, "/nope");
    assert_eq!(
        (missing.status, missing.json()),
        (404, json!({"error": "no such path"}))
    );
    let wrong = http(hub.local_addr(), "POST", "/healthz", &[], Some("{}"));
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET"));
}

#[test]
fn topics_and_groups_through_rest_reach_websocket_clients() {
    let hub = served(common::config());
    let addr = hub.local_addr();
    let mut clients = [connect(addr), connect(addr)];

    let body = r#"{"name":"orders","partitions":3}"#;
    let created = http(addr, "POST", "/api/topics", &[], Some(body));
    assert_eq!(created.status, 201);
    assert_eq!(created.json()["name"], "orders");
    assert_eq!(created.json()["logEndOffsets"], json!([0, 0, 0]));
    for c in &mut clients {
        let ev = c.recv_type("topic_created");
        assert_eq!(ev["data"], json!({"name": "orders", "partitions": 3}));
    }
    assert_eq!(
        http(addr, "POST", "/api/topics", &[], Some(body)).status,
        409
    );
    let bad = [
        r#"{"name":"bad name","partitions":1}"#,
        r#"{"name":"x","partitions":0}"#,
        r#"{"name":"x"}"#,
        "not json",
    ];
    for b in bad {
        let a = http(addr, "POST", "/api/topics", &[], Some(b));
        assert_eq!(a.status, 400, "{b}");
        assert!(a.json()["error"].is_string());
    }
    let list = get(&hub, "/api/topics").json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(get(&hub, "/api/topics/orders").json()["partitions"], 3);
    assert_eq!(get(&hub, "/api/topics/none").status, 404);

    let put = http(
        addr,
        "PUT",
        "/api/groups/billing",
        &[],
        Some(r#"{"state":"Stable","members":3}"#),
    );
    assert_eq!(put.status, 200);
    assert_eq!(
        put.json(),
        json!({"groupId": "billing", "state": "Stable", "members": 3})
    );
    for c in &mut clients {
        let ev = c.recv_type("group_updated");
        assert_eq!(
            ev["data"],
            json!({"groupId": "billing", "state": "Stable", "members": 3})
        );
    }
    assert_eq!(
        get(&hub, "/api/groups").json(),
        json!([{"groupId": "billing", "state": "Stable", "members": 3}])
    );

    assert_eq!(
        http(addr, "DELETE", "/api/topics/orders", &[], None).status,
        204
    );
    for c in &mut clients {
        assert_eq!(
            c.recv_type("topic_deleted")["data"],
            json!({"name": "orders"})
        );
    }
    assert_eq!(
        http(addr, "DELETE", "/api/topics/orders", &[], None).status,
        404
    );
}

#[test]
fn publish_broadcasts_the_message_as_given() {
    let hub = served(common::config());
    let addr = hub.local_addr();
    let mut c = connect(addr);
    c.send_json(&json!({"type": "subscribe", "data": "topic:t"}));
    c.recv_type("subscribed");
    let msg = r#"{"type":"custom","data":{"b":[1,2.5,"x"],"a":null}}"#;
    let a = http(addr, "POST", "/api/monitoring/publish", &[], Some(msg));
    assert_eq!(a.status, 202);
    let seq = a.json()["seq"].as_u64().unwrap();
    let v = c.recv_type("custom");
    assert_eq!(v["seq"], seq);
    assert_eq!(v["data"], json!({"b": [1, 2.5, "x"], "a": null}));
    let on_topic = r#"{"type":"note","channel":"topic:t"}"#;
    assert_eq!(
        http(addr, "POST", "/api/monitoring/publish", &[], Some(on_topic)).status,
        202
    );
    let v = c.recv_type("note");
    assert!(v.get("data").is_none());
    let bad_channel = r#"{"type":"x","channel":"nope"}"#;
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/monitoring/publish",
            &[],
            Some(bad_channel)
        )
        .status,
        400
    );
    assert_eq!(
        http(addr, "POST", "/api/monitoring/publish", &[], Some("{")).status,
        400
    );
}

/// An array publish: every message broadcast in order with consecutive `seq`s, the reply
/// giving the range; one bad message refuses the whole array (nothing is sent), and an empty
/// array is refused. Requests pipelined on one keep-alive connection are each answered, in
/// order.
#[test]
fn an_array_publish_broadcasts_every_message_in_order_and_pipelining_works() {
    let hub = served(common::config());
    let addr = hub.local_addr();
    let mut c = connect(addr);
    c.send_json(&json!({"type": "subscribe", "data": "topic:t"}));
    c.recv_type("subscribed");
    let batch =
        r#"[{"type":"a","data":1},{"type":"b","channel":"topic:t"},{"type":"c","data":{"x":[2]}}]"#;
    let a = http(addr, "POST", "/api/monitoring/publish", &[], Some(batch));
    assert_eq!(a.status, 202, "{a:?}");
    let reply = a.json();
    let first = reply["seq"].as_u64().unwrap();
    assert_eq!(
        reply,
        json!({"seq": first, "lastSeq": first + 2, "count": 3})
    );
    let got: Vec<(serde_json::Value, serde_json::Value)> = (0..3)
        .map(|_| {
            let v = c.recv();
            (v["type"].clone(), v["seq"].clone())
        })
        .collect();
    assert_eq!(
        got,
        [
            (json!("a"), json!(first)),
            (json!("b"), json!(first + 1)),
            (json!("c"), json!(first + 2))
        ]
    );

    for bad in [
        r#"[{"type":"ok"},{"type":"x","channel":"nope"}]"#,
        r#"[{"type":"ok"},{"type":""}]"#,
        r#"[{"type":"ok"},{"data":1}]"#,
        "[]",
        "[1]",
    ] {
        let a = http(addr, "POST", "/api/monitoring/publish", &[], Some(bad));
        assert_eq!(a.status, 400, "{bad}: {a:?}");
        assert!(a.json()["error"].is_string(), "{bad}");
    }

    // Three publishes written at once on one connection, then read: three answers, in order.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    let mut requests = Vec::new();
    for kind in ["p1", "p2", "p3"] {
        let body = format!(r#"{{"type":"{kind}"}}"#);
        requests.extend_from_slice(
            format!(
                "POST /api/monitoring/publish HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    std::io::Write::write_all(&mut s, &requests).unwrap();
    let seqs: Vec<u64> = (0..3)
        .map(|_| {
            let a = common::read_answer(&mut s);
            assert_eq!(a.status, 202, "{a:?}");
            a.json()["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
    // Nothing of the refused arrays went out: the next frame is p1.
    assert_eq!(c.recv()["type"], "p1");
}

#[test]
fn request_bodies_are_capped_with_413() {
    let hub = served(common::config().max_request_body(1024));
    let big = format!(r#"{{"type":"x","data":"{}"}}"#, "y".repeat(2000));
    let a = http(
        hub.local_addr(),
        "POST",
        "/api/monitoring/publish",
        &[],
        Some(&big),
    );
    assert_eq!(a.status, 413);
}

#[test]
fn tokens_guard_the_upgrade_reads_and_mutations() {
    let config = common::config()
        .viewer_token(Some("view-t".into()))
        .admin_token(Some("admin-t".into()));
    let hub = served(config);
    let addr = hub.local_addr();
    // The upgrade: 401 without a token, 101 with `?token=` or a bearer header.
    let refused = http(
        addr,
        "GET",
        "/api/monitoring/ws",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    );
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let url = format!("ws://{addr}/api/monitoring/ws?token=view-t");
    let (mut ws, _) = tungstenite::connect(url).expect("token in the query");
    ws.send(tungstenite::Message::text(r#"{"type":"ping"}"#))
        .unwrap();
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(common::ws_url(addr)).unwrap();
    req.headers_mut()
        .insert("Authorization", "Bearer admin-t".parse().unwrap());
    assert!(
        tungstenite::connect(req).is_ok(),
        "the admin token is a viewer token too"
    );

    assert_eq!(get(&hub, "/api/topics").status, 401);
    assert_eq!(
        http(
            addr,
            "GET",
            "/api/topics",
            &[("Authorization", "Bearer view-t")],
            None
        )
        .status,
        200
    );
    assert_eq!(get(&hub, "/api/topics?token=view-t").status, 200);
    assert_eq!(get(&hub, "/metrics").status, 401);
    assert_eq!(get(&hub, "/healthz").status, 200, "probes need no token");
    let body = Some(r#"{"name":"t","partitions":1}"#);
    let viewer = [("Authorization", "Bearer view-t")];
    assert_eq!(http(addr, "POST", "/api/topics", &viewer, body).status, 401);
    let admin = [("Authorization", "Bearer admin-t")];
    assert_eq!(http(addr, "POST", "/api/topics", &admin, body).status, 201);
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/monitoring/publish?token=admin-t",
            &[],
            Some(r#"{"type":"x"}"#)
        )
        .status,
        202
    );
}

#[test]
fn foreign_origins_get_403_and_allowed_ones_get_cors() {
    let config = common::config().allowed_origins(vec!["http://dash.example".into()]);
    let hub = served(config);
    let addr = hub.local_addr();
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut foreign = upgrade.to_vec();
    foreign.push(("Origin", "http://evil.example"));
    assert_eq!(
        http(addr, "GET", "/api/monitoring/ws", &foreign, None).status,
        403
    );
    let a = http(
        addr,
        "GET",
        "/api/topics",
        &[("Origin", "http://evil.example")],
        None,
    );
    assert_eq!(a.status, 403);
    let ok = http(
        addr,
        "GET",
        "/api/topics",
        &[("Origin", "http://dash.example")],
        None,
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://dash.example")
    );
    let pre = http(
        addr,
        "OPTIONS",
        "/api/topics",
        &[
            ("Origin", "http://dash.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    );
    assert_eq!(pre.status, 204);
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(pre
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Authorization"));
}

#[test]
fn past_the_connection_limit_upgrades_get_503_with_retry_after() {
    let hub = served(common::config().max_connections(2));
    let addr = hub.local_addr();
    let _a = connect(addr);
    let b = connect(addr);
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let full = http(addr, "GET", "/api/monitoring/ws", &upgrade, None);
    assert_eq!(full.status, 503);
    assert_eq!(full.header("retry-after"), Some("5"));
    drop(b);
    common::eventually("a place to free up", || hub.active_connections() == 1);
    let _c = connect(addr);
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let hub = served(common::config());
    let mut c = connect(hub.local_addr());
    hub.broadcaster().topic_created("t", 1).unwrap();
    c.recv_type("topic_created");
    let m = get(&hub, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    check_prometheus(&m.body);
    let value = |name: &str| -> f64 {
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("takhin_connections"), 1.0);
    assert!(value("takhin_broadcasts_total") >= 1.0);
    assert!(value("takhin_deliveries_total") >= 1.0);
    assert!(value("takhin_broadcast_duration_seconds_count") >= 1.0);
}

/// The text format's rules: HELP and TYPE before samples, counters end in `_total`, histogram
/// buckets cumulative and ending with `+Inf` equal to `_count`, every value a number.
fn check_prometheus(text: &str) {
    let mut types = std::collections::HashMap::new();
    let mut last_bucket = -1.0f64;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            types.insert(name.to_owned(), kind.to_owned());
            last_bucket = -1.0;
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| types.get(*b).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(base), "sample before its TYPE: {line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if name.ends_with("_bucket") {
            assert!(value >= last_bucket, "buckets are cumulative: {line}");
            last_bucket = value;
        }
        if name.ends_with("_count") && types.get(base).is_some_and(|k| k == "histogram") {
            assert_eq!(value, last_bucket, "+Inf equals _count: {line}");
        }
    }
    assert!(types.len() >= 10);
}

#[test]
fn readyz_turns_503_while_draining_and_the_port_still_answers() {
    let config = common::config()
        .close_timeout(Duration::from_secs(3))
        .shutdown_timeout(Duration::from_secs(5));
    let hub = served(config);
    let addr = hub.local_addr();
    // A client that never answers our close frame keeps the drain going.
    let _stubborn = common::raw_upgrade(addr);
    let mut keepalive = TcpStream::connect(addr).unwrap();
    keepalive
        .set_read_timeout(Some(common::READ_TIMEOUT))
        .unwrap();
    assert_eq!(
        http_on(&mut keepalive, "GET", "/readyz", &[], None, false).status,
        200
    );
    let trigger = hub.shutdown_trigger();
    let stopper = std::thread::spawn(move || hub.wait());
    trigger.shutdown();
    common::eventually("readyz to turn 503", || get_status(addr, "/readyz") == 503);
    let r = http(addr, "GET", "/readyz", &[], None);
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    assert_eq!(r.json(), json!({"status": "draining"}));
    assert_eq!(get_status(addr, "/healthz"), 200);
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    assert_eq!(
        http(addr, "GET", "/api/monitoring/ws", &upgrade, None).status,
        503
    );
    stopper.join().unwrap().expect("clean stop");
}

fn get_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path, &[], None).status
}
