//! Bad input and dead peers over real sockets: each gets its close code or is dropped, and the
//! hub's counters say so.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, masked, raw_close_code, raw_upgrade, start};
use serde_json::json;
use takhin_monitor::{close_code, Channel, Cores};
use tungstenite::Message;

#[test]
fn an_oversize_message_closes_with_1009() {
    let hub = start(common::config().max_message_size(1024));
    let mut c = connect(hub.local_addr());
    c.send_text(&"x".repeat(2000));
    let close = c.recv_close().expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::TOO_BIG);
    assert_eq!(hub.stats().protocol_errors_total, 1);
}

#[test]
fn an_oversize_message_across_continuation_frames_closes_with_1009() {
    let hub = start(common::config().max_message_size(1024));
    let mut s = raw_upgrade(hub.local_addr());
    let mut first = masked(0x1, &[b'a'; 600]);
    first[0] &= 0x7f; // not final
    s.write_all(&first).unwrap();
    s.write_all(&masked(0x0, &[b'a'; 600])).unwrap();
    assert_eq!(raw_close_code(&mut s), Some(close_code::TOO_BIG));
}

#[test]
fn an_unmasked_frame_closes_with_1002() {
    let hub = start(common::config());
    let mut s = raw_upgrade(hub.local_addr());
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(raw_close_code(&mut s), Some(close_code::PROTOCOL_ERROR));
    assert_eq!(hub.stats().protocol_errors_total, 1);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let hub = start(common::config());
    let mut s = raw_upgrade(hub.local_addr());
    s.write_all(&masked(0x1, &[0xff, 0xfe, 0xfd])).unwrap();
    assert_eq!(raw_close_code(&mut s), Some(close_code::INVALID_PAYLOAD));
}

#[test]
fn invalid_json_and_binary_messages_keep_the_connection() {
    let hub = start(common::config());
    let mut c = connect(hub.local_addr());
    for _ in 0..100 {
        c.send_text("this is not json");
    }
    c.send_text("[1,2,3]");
    c.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    let err = c.recv_type("error");
    assert_eq!(err["data"]["code"], "unsupported_message");
    c.send_json(&json!({"type": "ping", "timestamp": 7}));
    assert_eq!(c.recv_type("pong")["timestamp"], 7);
    assert_eq!(hub.stats().invalid_messages_total, 101);
    assert_eq!(hub.stats().protocol_errors_total, 0);
}

#[test]
fn a_client_that_never_answers_pings_is_closed_and_one_that_answers_stays() {
    let config = common::config()
        .ping_interval(Duration::from_millis(100))
        .pong_wait(Duration::from_millis(400));
    let hub = start(config);
    let addr = hub.local_addr();
    let mut alive = connect(addr);
    alive
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    // A raw client that completes the handshake and then stays silent. The clock starts before
    // the upgrade is sent: the server's pong wait runs from the last thing it read (the head),
    // which it reads after this instant, so the close can come no earlier than 400 ms after it.
    let started = Instant::now();
    let mut silent = raw_upgrade(addr);
    let mut pings = 0;
    let mut buf = [0u8; 64];
    loop {
        match silent.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => pings += buf[..n].iter().filter(|&&b| b == 0x89).count(),
        }
        // Meanwhile the well-behaved client reads, so tungstenite answers its pings.
        let _ = alive.ws.read();
    }
    let waited = started.elapsed();
    assert!(pings >= 1, "the server pinged the silent client");
    // Within the connections' whole-millisecond clock (`Millis`).
    assert!(
        waited >= Duration::from_millis(399),
        "closed after the pong wait: {waited:?}"
    );
    assert_eq!(hub.stats().pong_timeouts_total, 1);

    // The client that answered pings is still served after several pong waits.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        let _ = alive.ws.read();
    }
    alive
        .ws
        .get_ref()
        .set_read_timeout(Some(common::READ_TIMEOUT))
        .unwrap();
    alive.send_json(&json!({"type": "ping", "timestamp": 1}));
    assert_eq!(alive.recv_type("pong")["timestamp"], 1);
    assert_eq!(hub.stats().pong_timeouts_total, 1);
    assert_eq!(hub.active_connections(), 1);
}

#[test]
fn a_client_whose_writes_make_no_progress_is_dropped_after_the_write_wait() {
    let config = common::config()
        .cores(Cores::Count(1))
        .write_wait(Duration::from_millis(300));
    let hub = start(config);
    let addr = hub.local_addr();
    let stuck = raw_upgrade(addr); // never reads
    let mut fine = connect(addr);
    let b = hub.broadcaster();
    let payload = "y".repeat(64 * 1024);
    // Fill the stuck client's socket until the hub gives up on it.
    let deadline = Instant::now() + common::READ_TIMEOUT;
    while hub.stats().write_timeouts_total == 0 {
        assert!(
            Instant::now() < deadline,
            "the stuck client was never dropped"
        );
        b.publish(&Channel::Events, "big", &payload).unwrap();
        assert_eq!(fine.recv()["type"], "big");
    }
    common::eventually("the stuck client to be released", || {
        hub.active_connections() == 1
    });
    // Given up on, it is reset: the kernel drops what it held for it at once instead of
    // keeping it behind a FIN for minutes, and the client learns it on its next read.
    let mut stuck = stuck;
    let mut buf = vec![0u8; 1 << 20];
    let reset = loop {
        match stuck.read(&mut buf) {
            Ok(0) => break false,
            Ok(_) => {}
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(
        reset,
        "a connection the hub gave up on is reset, not closed with a FIN"
    );
    b.publish(&Channel::Events, "after", &0).unwrap();
    assert_eq!(fine.recv_type("after")["data"], 0);
}

#[test]
fn a_client_that_reads_slowly_is_lagged_not_dropped() {
    // The kernel wakes a writer only when a third of the send buffer is free; with a large
    // (autotuned) buffer and a client draining 40 KB/s, that is longer than the write wait.
    // The client is still reading: it must be lagged (queue drops oldest), not dropped.
    let config = common::config()
        .cores(Cores::Count(1))
        .client_queue(16)
        .write_wait(Duration::from_millis(1000));
    let hub = start(config);
    let addr = hub.local_addr();
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.set_recv_buffer_size(16 * 1024).unwrap();
    slow.connect(&addr.into()).unwrap();
    let mut slow = common::upgrade_on(slow.into());
    let b = hub.broadcaster();
    let payload = "z".repeat(16 * 1024);
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut read = 0usize;
    while started.elapsed() < Duration::from_secs(4) {
        for _ in 0..10 {
            b.publish(&Channel::Events, "big", &payload).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100)); // the pace of the reader, not a sync
        read += slow.read(&mut buf).unwrap();
    }
    let stats = hub.stats();
    assert_eq!(stats.write_timeouts_total, 0, "read {read} bytes");
    assert_eq!(hub.active_connections(), 1);
    assert!(stats.queue_dropped_total > 0, "the slow client lagged");
}

#[test]
fn shutdown_sends_1001_to_every_client_and_the_hub_stops() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut clients: Vec<_> = (0..12).map(|_| connect(addr)).collect();
    let stopper = std::thread::spawn(move || hub.shutdown());
    for c in &mut clients {
        let close = c.recv_close().expect("a close frame");
        assert_eq!(u16::from(close.code), close_code::GOING_AWAY);
    }
    stopper.join().unwrap().expect("clean shutdown");
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

#[test]
fn other_paths_get_404_before_any_upgrade() {
    let hub = start(common::config());
    let mut s = TcpStream::connect(hub.local_addr()).unwrap();
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(answer.ends_with("{\"error\":\"no such path\"}"));
    assert_eq!(hub.stats().handshakes_total, 0);
}

#[test]
fn a_panic_in_one_connection_closes_only_that_connection() {
    let hub = start(
        common::config()
            .cores(Cores::Count(1))
            .fault_injection(true),
    );
    let addr = hub.local_addr();
    let mut doomed = connect(addr);
    let mut other = connect(addr);
    doomed.send_text("__panic__");
    let close = doomed.recv_close().expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::INTERNAL);
    common::eventually("the panicked connection to be released", || {
        hub.active_connections() == 1
    });
    assert_eq!(hub.stats().panics_total, 1);
    let seq = hub.broadcaster().topic_created("still-here", 1).unwrap();
    assert_eq!(other.recv_type("topic_created")["seq"], seq);
    let mut late = connect(addr);
    late.send_json(&json!({"type": "ping", "timestamp": 3}));
    assert_eq!(late.recv_type("pong")["timestamp"], 3);
}

#[test]
fn a_request_head_that_never_ends_is_cut_off_and_costs_the_others_nothing() {
    let hub = start(common::config().handshake_timeout(Duration::from_millis(300)));
    let addr = hub.local_addr();
    let mut good = connect(addr);
    // The deadline runs from the accept, which comes after this instant.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    slow.write_all(b"GET /api/monitoring/ws HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let seq = hub.broadcaster().topic_created("meanwhile", 1).unwrap();
    assert_eq!(
        good.recv_type("topic_created")["seq"],
        seq,
        "the good client is served"
    );
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // The connections' clock counts whole milliseconds (`Millis`): the deadline may end up to
    // one before the exact 300.
    assert!(
        started.elapsed() >= Duration::from_millis(299),
        "cut off before the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(hub.stats().handshake_failures_total, 1);
}

#[test]
fn garbage_before_the_upgrade_gets_400_and_is_closed() {
    let hub = start(common::config());
    let mut s = TcpStream::connect(hub.local_addr()).unwrap();
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Raw frames that break RFC 6455 in ways tungstenite's client would never send.
#[test]
fn frames_that_break_rfc_6455_close_with_1002() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut reserved = masked(0x1, b"{}");
    reserved[0] |= 0x40; // RSV1 without an extension
    let mut fragmented_ping = masked(0x9, b"x");
    fragmented_ping[0] &= 0x7f; // a control frame must not be fragmented
    let cases: [(&str, Vec<u8>); 5] = [
        ("reserved bit", reserved),
        ("unknown opcode", masked(0x3, b"x")),
        ("ping over 125 bytes", masked(0x9, &[b'p'; 126])),
        ("fragmented ping", fragmented_ping),
        ("close with code 1005", masked(0x8, &1005u16.to_be_bytes())),
    ];
    for (what, frame) in cases {
        let mut s = raw_upgrade(addr);
        s.write_all(&frame).unwrap();
        assert_eq!(
            raw_close_code(&mut s),
            Some(close_code::PROTOCOL_ERROR),
            "{what}"
        );
    }
    let mut good = connect(addr);
    good.send_json(&json!({"type": "ping", "timestamp": 5}));
    assert_eq!(
        good.recv_type("pong")["timestamp"],
        5,
        "the others are unaffected"
    );
}

#[test]
fn subscribe_floods_are_bounded_per_connection() {
    let hub = start(common::config().max_subscriptions(16));
    let mut c = connect(hub.local_addr());
    let many: Vec<String> = (0..5000).map(|i| format!("topic:t{i}")).collect();
    c.send_json(&json!({"type": "subscribe", "data": many}));
    assert_eq!(
        c.recv_type("error")["data"]["code"],
        "too_many_subscriptions"
    );
    let fourteen: Vec<String> = (0..14).map(|i| format!("group:g{i}")).collect();
    c.send_json(&json!({"type": "subscribe", "data": fourteen}));
    assert_eq!(
        c.recv_type("subscribed")["data"].as_array().unwrap().len(),
        14
    );
    c.send_json(&json!({"type": "subscribe", "data": ["topic:over", "topic:the-limit"]}));
    let reply = c.recv_type("subscribed");
    assert_eq!(
        reply["data"],
        json!([]),
        "16 held: metrics, events and 14 groups"
    );
    for _ in 0..2 {
        // One error per refused name.
        assert_eq!(c.recv()["data"]["code"], "too_many_subscriptions");
    }
    let huge = format!("topic:{}", "x".repeat(100_000));
    c.send_json(&json!({"type": "subscribe", "data": huge}));
    assert_eq!(c.recv_type("error")["data"]["code"], "invalid_channel");
    c.send_json(&json!({"type": "ping", "timestamp": 6}));
    assert_eq!(
        c.recv_type("pong")["timestamp"],
        6,
        "the connection is kept"
    );
}

#[test]
fn a_head_with_bare_lf_line_endings_is_answered_at_once() {
    let hub = start(common::config());
    let mut s = TcpStream::connect(hub.local_addr()).unwrap();
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    let sent = Instant::now();
    s.write_all(
        b"GET /api/monitoring/ws HTTP/1.1\nHost: localhost\nConnection: Upgrade\n\
          Upgrade: websocket\nSec-WebSocket-Version: 13\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n",
    )
    .unwrap();
    let head = common::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Well before the head deadline (5 s) that used to be the only answer.
    assert!(sent.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_reset_in_the_middle_of_a_write_releases_only_that_connection() {
    let hub = start(common::config().cores(Cores::Count(1)));
    let addr = hub.local_addr();
    // A small receive buffer, so the hub's writes to it stop half-way through a frame.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let victim = common::connect_quiet(addr, socket.into()).ws.into_inner();
    let mut fine = connect(addr);
    let b = hub.broadcaster();
    // 16 MB of frames the victim never reads: far more than any socket buffer holds.
    let payload = "z".repeat(256 * 1024);
    for _ in 0..64 {
        b.publish(&Channel::Events, "big", &payload).unwrap();
        assert_eq!(fine.recv()["type"], "big");
    }
    // Then the victim resets the connection (SO_LINGER 0: RST, not FIN).
    socket2::SockRef::from(&victim)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(victim);
    common::eventually("the reset connection to be released", || {
        hub.active_connections() == 1
    });
    b.publish(&Channel::Events, "after", &1).unwrap();
    assert_eq!(fine.recv_type("after")["data"], 1);
    assert_eq!(hub.stats().panics_total, 0);
}

#[test]
fn many_clients_dropping_at_once_cost_the_others_nothing() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut fine = connect(addr);
    let crowd: Vec<TcpStream> = (0..300).map(|_| raw_upgrade(addr)).collect();
    common::eventually("every client to be registered", || {
        hub.active_connections() == 301
    });
    let b = hub.broadcaster();
    b.publish(&Channel::Events, "before", &0).unwrap();
    assert_eq!(fine.recv_type("before")["data"], 0);
    // Half vanish with a reset, half with a plain close, all in the same instant.
    for (i, s) in crowd.into_iter().enumerate() {
        if i % 2 == 0 {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(s);
    }
    for i in 1..=20 {
        b.publish(&Channel::Events, "during", &i).unwrap();
    }
    for i in 1..=20 {
        assert_eq!(fine.recv_type("during")["data"], i, "in order, none lost");
    }
    common::eventually("every dropped client to be released", || {
        hub.active_connections() == 1
    });
    assert_eq!(hub.stats().panics_total, 0);
}

#[test]
fn answers_to_messages_before_a_bad_frame_arrive_before_the_close() {
    let hub = start(common::config());
    let mut s = raw_upgrade(hub.local_addr());
    // A ping and a broken frame in one write: the pong is owed and still goes out, then 1002.
    let mut bytes = masked(0x1, br#"{"type":"ping","timestamp":9}"#);
    bytes.extend(masked(0x3, b"x")); // reserved opcode
    s.write_all(&bytes).unwrap();
    let (frames, code) = common::raw_frames_until_close(&mut s);
    assert_eq!(code, Some(close_code::PROTOCOL_ERROR));
    let texts: Vec<serde_json::Value> = frames
        .iter()
        .filter(|(op, _)| *op == 0x1)
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|m| m["type"] == "pong" && m["timestamp"] == 9),
        "the pong precedes the close: {texts:?}"
    );
}

#[test]
fn endless_continuation_frames_end_at_the_message_limit() {
    let hub = start(common::config().max_message_size(4096));
    let addr = hub.local_addr();
    let mut fine = connect(addr);
    let mut s = raw_upgrade(addr);
    let mut first = masked(0x1, b"[");
    first[0] &= 0x7f; // not final
    s.write_all(&first).unwrap();
    let mut more = masked(0x0, &[b'1'; 100]);
    more[0] &= 0x7f; // a continuation that is never final
    let reader = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || raw_close_code(&mut s))
    };
    // Written until the server gives up on the message (or 1000 frames, 100 KB, which it
    // never gets to read): the close comes at 4 KiB.
    for _ in 0..1000 {
        if s.write_all(&more).is_err() {
            break;
        }
    }
    assert_eq!(reader.join().unwrap(), Some(close_code::TOO_BIG));
    fine.send_json(&json!({"type": "ping", "timestamp": 4}));
    assert_eq!(fine.recv_type("pong")["timestamp"], 4, "the others go on");
    common::eventually("the endless sender to be released", || {
        hub.active_connections() == 1
    });
}

#[test]
fn a_ping_flood_from_a_client_that_reads_nothing_is_bounded() {
    let hub = start(common::config().max_reply_backlog(64 * 1024));
    let addr = hub.local_addr();
    let mut fine = connect(addr);
    let mut s = raw_upgrade(addr);
    // A small receive buffer, never read: pongs pile up on the server's side.
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .unwrap();
    let ping = masked(0x9, &[b'p'; 125]);
    let mut sent = 0usize;
    // 8 MB of pings would be 8 MB of pongs held for this client; it is closed long before.
    while sent < 8 << 20 {
        if s.write_all(&ping).is_err() {
            break;
        }
        sent += ping.len();
    }
    common::eventually("the flooding client to be closed", || {
        hub.active_connections() == 1
    });
    assert!(
        hub.stats().protocol_errors_total >= 1,
        "counted as a policy close"
    );
    fine.send_json(&json!({"type": "ping", "timestamp": 3}));
    assert_eq!(fine.recv_type("pong")["timestamp"], 3, "the others go on");
}
