//! TLS on the hub's own port (`--tls-cert`/`--tls-key`), over real sockets with rustls clients
//! and a certificate made in the test: `wss://` clients get the stream (small frames and a
//! snapshot larger than the socket takes at once), `https://` serves the dashboard, health and
//! metrics, plain text or garbage on the TLS port is answered with an alert and closed at once
//! while the others go on, and a reload serves the new certificate to new connections while
//! open ones continue.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use takhin_monitor::{Channel, HubHandle};

use common::tls::{client_trusting, client_with, recv_type, tls_connect, wss_connect, TestCert};
use common::{config, http_on, start, READ_TIMEOUT};

fn tls_hub(cert: &TestCert) -> HubHandle {
    start(config().tls(Some(cert.files.clone())))
}

#[test]
fn wss_clients_receive_the_stream() {
    let cert = TestCert::new("stream");
    let hub = tls_hub(&cert);
    let addr = hub.local_addr();
    let mut clients: Vec<_> = (0..6).map(|_| wss_connect(addr, &cert.client())).collect();
    assert_eq!(hub.active_connections(), 6);

    let b = hub.broadcaster();
    // Small frames (several share a record) and one far larger than a socket buffer takes at
    // once (many records, partial writes).
    let big: String = (0..400_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for i in 0..20u32 {
        b.publish(&Channel::Events, "custom", &json!({"n": i}))
            .unwrap();
    }
    b.publish(&Channel::Events, "big", &json!({"text": big}))
        .unwrap();
    b.publish(&Channel::Events, "end", &0).unwrap();
    for ws in &mut clients {
        for i in 0..20u32 {
            assert_eq!(recv_type(ws, "custom")["data"]["n"], i);
        }
        assert_eq!(recv_type(ws, "big")["data"]["text"], big.as_str());
        recv_type(ws, "end");
    }
    // The client's messages are read through TLS too.
    let ws = &mut clients[0];
    ws.send(tungstenite::Message::text(
        json!({"type": "ping", "timestamp": 42}).to_string(),
    ))
    .unwrap();
    assert_eq!(recv_type(ws, "pong")["timestamp"], 42);
    // And the close handshake: our close, the server's answer, then close_notify.
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
}

#[test]
fn https_serves_the_dashboard_health_and_metrics() {
    let cert = TestCert::new("https");
    let hub = tls_hub(&cert);
    let addr = hub.local_addr();
    let client = cert.client();

    let mut s = tls_connect(addr, &client).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Several requests on one connection (keep-alive), then one that closes it.
    let health = http_on(&mut s, "GET", "/healthz", &[], None, false);
    assert_eq!(health.status, 200);
    let page = http_on(&mut s, "GET", "/", &[], None, false);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html") || page.body.contains("<!doctype"));
    let metrics = http_on(&mut s, "GET", "/metrics", &[], None, true);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("\ntakhin_tls_handshakes_total 1\n"),
        "{}",
        metrics.body
    );
    // The server closes after `Connection: close`, with close_notify: a clean end.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // TLS 1.2 clients are served too.
    let v12 = client_with(&cert.der, &[&rustls::version::TLS12]);
    let mut s = tls_connect(addr, &v12).unwrap();
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        http_on(&mut s, "GET", "/healthz", &[], None, true).status,
        200
    );
    assert_eq!(hub.stats().tls12_handshakes_total, 1);
}

#[test]
fn plain_text_or_garbage_on_the_tls_port_is_refused_at_once_and_harmlessly() {
    let cert = TestCert::new("plain");
    let hub = start(
        config()
            .tls(Some(cert.files.clone()))
            .handshake_timeout(Duration::from_secs(30)),
    );
    let addr = hub.local_addr();
    let mut watcher = wss_connect(addr, &cert.client());

    for first in [
        &b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &b"GET /api/monitoring/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        &[0xff; 64][..],
    ] {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.write_all(first).unwrap();
        let mut answer = Vec::new();
        // An alert record (content type 21), then the end: not the 30 s handshake deadline.
        let _ = s.read_to_end(&mut answer);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "closed at once, not at the deadline ({:?})",
            started.elapsed()
        );
        assert!(
            answer.is_empty() || answer[0] == 21,
            "a TLS alert or nothing: {answer:?}"
        );
        assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"));
    }
    // The TLS client was not disturbed.
    hub.broadcaster()
        .publish(&Channel::Events, "still", &1)
        .unwrap();
    recv_type(&mut watcher, "still");
    assert_eq!(hub.active_connections(), 1);
    assert_eq!(hub.stats().tls_handshake_failures_total, 4);
    assert_eq!(hub.stats().tls_handshakes_total, 1);
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_connections_while_old_ones_continue() {
    let mut cert = TestCert::new("reload");
    let hub = tls_hub(&cert);
    let addr = hub.local_addr();
    let old = cert.client();
    let old_der = cert.der.clone();
    let mut before = wss_connect(addr, &old);

    let new_der = cert.renew();
    let reloader = hub.tls_reloader().expect("the hub speaks TLS");
    reloader.reload().unwrap();
    let new = client_trusting(&new_der);
    let mut after = wss_connect(addr, &new);
    // A client that trusts only the old certificate no longer gets through (a new client: one
    // that connected before resumes with its ticket, which outlives the reload on purpose).
    let old_der = old_der.clone();
    let refused =
        tls_connect(addr, &client_trusting(&old_der)).expect_err("old certificate refused");
    // The old connection's client resumes without a new certificate check.
    let resumed = tls_connect(addr, &old).expect("resumption outlives a reload");
    assert_eq!(
        resumed.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // A handshake is counted when its connection's first request head ends, or it does.
    drop(resumed);
    assert!(refused.to_string().contains("certificate"), "{refused}");

    // A bad file on reload keeps the certificate served.
    std::fs::write(&cert.files.key, "not a key").unwrap();
    let err = reloader.reload().unwrap_err().to_string();
    assert!(err.contains("key.pem"), "{err}");
    assert!(
        !err.contains("not a key"),
        "the key's content is never quoted: {err}"
    );
    let mut again = wss_connect(addr, &new);

    hub.broadcaster()
        .publish(&Channel::Events, "after_reload", &1)
        .unwrap();
    for ws in [&mut before, &mut after, &mut again] {
        recv_type(ws, "after_reload");
    }
    assert_eq!(hub.active_connections(), 3);
    // Full: before, after. Resumed: the old client's, and `again` (with `after`'s ticket).
    // Failed: the client that trusted only the old certificate.
    common::eventually("the resumed connection's end", || {
        hub.stats().tls_handshakes_total == 4
    });
    let stats = hub.stats();
    assert_eq!(stats.tls_resumed_total, 2, "{stats:?}");
    assert_eq!(stats.tls_handshake_failures_total, 1, "{stats:?}");
}

#[test]
fn a_hub_without_usable_tls_files_does_not_start() {
    let cert = TestCert::new("bad");
    std::fs::write(&cert.files.cert, "-----BEGIN CERTIFICATE-----\nxx\n").unwrap();
    let err =
        takhin_monitor::Hub::start(config().tls(Some(cert.files.clone()))).expect_err("refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
}

#[test]
fn a_tls_client_whose_writes_make_no_progress_is_dropped_and_a_slow_one_is_lagged() {
    let cert = TestCert::new("slow");
    let hub = start(
        config()
            .cores(takhin_monitor::Cores::Count(1))
            .tls(Some(cert.files.clone()))
            .client_queue(16)
            .write_wait(Duration::from_millis(1000)),
    );
    let addr = hub.local_addr();
    let stuck = wss_connect(addr, &cert.client()); // never reads again
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.set_recv_buffer_size(16 * 1024).unwrap();
    slow.connect(&addr.into()).unwrap();
    let mut slow = common::tls::wss_on(slow.into(), addr, &cert.client());
    let mut fine = wss_connect(addr, &cert.client());
    let b = hub.broadcaster();
    let payload = "y".repeat(16 * 1024);
    // The slow client reads about 40 KB/s, far less than is published: it must be lagged
    // (its queue drops the oldest), not dropped. The stuck one reads nothing: dropped after
    // the write wait. The fine one gets everything.
    let started = Instant::now();
    let mut slow_frames = 0;
    while hub.stats().write_timeouts_total == 0 || started.elapsed() < Duration::from_secs(3) {
        assert!(
            started.elapsed() < READ_TIMEOUT,
            "the stuck client was never dropped"
        );
        for _ in 0..10 {
            b.publish(&Channel::Events, "big", &payload).unwrap();
            recv_type(&mut fine, "big");
        }
        std::thread::sleep(Duration::from_millis(100)); // the slow reader's pace, not a sync
        if let tungstenite::Message::Text(_) = slow.read().expect("the slow client is served") {
            slow_frames += 1;
        }
    }
    common::eventually("the stuck client to be released", || {
        hub.active_connections() == 2
    });
    drop(stuck);
    let stats = hub.stats();
    assert_eq!(stats.write_timeouts_total, 1, "{stats:?}");
    assert!(stats.queue_dropped_total > 0, "the slow client lagged");
    assert!(slow_frames > 0);
    // The slow client catches up: a `lagged` notice, then the stream goes on.
    b.publish(&Channel::Events, "end", &0).unwrap();
    recv_type(&mut slow, "lagged");
    recv_type(&mut slow, "end");
    recv_type(&mut fine, "end");
}
