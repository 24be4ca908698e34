//! permessage-deflate (RFC 7692) over real sockets: what the upgrade answers to each offer, a
//! compressed broadcast that inflates to the plain frame's JSON, one compression per broadcast
//! however many clients take it, and compressed client messages held to the same rules and
//! limits as plain ones (a compressed bomb is closed with 1009).
//!
//! The client here is written by hand (tungstenite has no permessage-deflate): the handshake
//! with an offer, frames read and inflated with flate2 as a browser does.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use takhin_monitor::Channel;

use common::{masked, read_head, start, READ_TIMEOUT};

/// A client that offered `offer` (if any) and reads frames as they come.
struct Client {
    s: TcpStream,
    /// The upgrade's answer.
    head: String,
}

/// One server frame, inflated if it came compressed.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    rsv1: bool,
    /// Its length on the wire, header included.
    wire: usize,
    payload: Vec<u8>,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("a JSON frame")
    }
}

fn connect(addr: SocketAddr, offer: Option<&str>) -> Client {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let ext = offer.map_or(String::new(), |o| {
        format!("Sec-WebSocket-Extensions: {o}\r\n")
    });
    let req = format!(
        "GET /api/monitoring/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{ext}\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    Client { s, head }
}

impl Client {
    /// The answer's `Sec-WebSocket-Extensions` value, if any.
    fn extensions(&self) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim())
        })
    }

    /// The next frame (the server never fragments).
    fn frame(&mut self) -> Frame {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).expect("a frame");
        let (mut len, mut wire) = (u64::from(h[1] & 0x7f), 2);
        if len == 126 {
            let mut b = [0u8; 2];
            self.s.read_exact(&mut b).unwrap();
            (len, wire) = (u64::from(u16::from_be_bytes(b)), 4);
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.s.read_exact(&mut b).unwrap();
            (len, wire) = (u64::from_be_bytes(b), 10);
        }
        assert_eq!(h[0] & 0x80, 0x80, "the server does not fragment");
        assert_eq!(h[0] & 0x30, 0, "RSV2 and RSV3 are clear");
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload).unwrap();
        let rsv1 = h[0] & 0x40 != 0;
        if rsv1 {
            payload = inflate(&payload);
        }
        Frame {
            opcode: h[0] & 0x0f,
            rsv1,
            wire: wire + len as usize,
            payload,
        }
    }

    /// The next frame whose `type` is `kind`.
    fn frame_of(&mut self, kind: &str) -> Frame {
        loop {
            let f = self.frame();
            assert_ne!(f.opcode, 0x8, "closed while waiting for {kind}");
            if f.opcode == 0x1 && f.json()["type"] == kind {
                return f;
            }
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.s.write_all(frame).unwrap();
    }

    /// The close code the server ends with, skipping frames before it.
    fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame();
            if f.opcode == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }
}

fn inflate(deflated: &[u8]) -> Vec<u8> {
    let mut input = deflated.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(input.len() * 8 + 1024);
    loop {
        let before = d.total_in();
        d.decompress_vec(
            &input[d.total_in() as usize..],
            &mut out,
            FlushDecompress::Sync,
        )
        .expect("valid deflate");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        if d.total_in() == before && out.len() < out.capacity() {
            panic!("inflate made no progress");
        }
        out.reserve(out.capacity());
    }
}

/// `payload` compressed as a client does (raw deflate, sync flush, tail stripped).
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut z = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(payload.len() + 1024);
    loop {
        z.compress_vec(
            &payload[z.total_in() as usize..],
            &mut out,
            FlushCompress::Sync,
        )
        .unwrap();
        if z.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame with RSV1 set: a compressed message.
fn compressed(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = masked(opcode, &deflate(payload));
    f[0] |= 0x40;
    f
}

/// A snapshot of a cluster large enough to be compressed (about 60 KB of JSON).
fn large_snapshot(tick: u64) -> Value {
    let topics: Vec<Value> = (0..200u64)
        .map(|t| {
            json!({
                "name": format!("orders-{t:03}"),
                "partitions": (0..6u64).map(|p| json!({
                    "partition": p,
                    "messagesPerSec": (t * 31 + p * 7 + tick) % 997,
                    "lag": (t * 13 + p * 101 + tick * 3) % 5000,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"tick": tick, "topics": topics})
}

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn the_upgrade_answers_each_offer_as_rfc_7692_says() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let cases: [(Option<&str>, Option<&str>); 8] = [
        (None, None),
        (Some("x-webkit-deflate-frame"), None),
        (Some("permessage-deflate"), Some(ANSWER)),
        // Chromium's offer.
        (Some("permessage-deflate; client_max_window_bits"), Some(ANSWER)),
        (
            Some("permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
            Some(ANSWER),
        ),
        // A smaller window is honoured: that client gets every frame plain.
        (
            Some("permessage-deflate; server_max_window_bits=10"),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"),
        ),
        // The first offer cannot be honoured (unknown parameter): the second is taken.
        (
            Some("permessage-deflate; foo=1, permessage-deflate; client_max_window_bits=12"),
            Some(ANSWER),
        ),
        // Nothing acceptable: the upgrade goes on without compression.
        (Some("permessage-deflate; server_max_window_bits=16"), None),
    ];
    let mut open = Vec::new();
    for (offer, answer) in cases {
        let c = connect(addr, offer);
        assert_eq!(c.extensions(), answer, "offer {offer:?}");
        open.push(c);
    }
    assert_eq!(hub.stats().deflate_clients, 5);

    let off = start(common::config().compression(false));
    let c = connect(off.local_addr(), Some("permessage-deflate"));
    assert_eq!(
        c.extensions(),
        None,
        "--compression off declines every offer"
    );
}

#[test]
fn a_compressed_broadcast_inflates_to_the_plain_json_and_small_frames_go_plain() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut plain = connect(addr, None);
    let mut deflating = connect(addr, Some("permessage-deflate; client_max_window_bits"));
    let mut small_window = connect(addr, Some("permessage-deflate; server_max_window_bits=9"));
    // Every client is registered once it answered a ping (a compressed one from `deflating`).
    for (c, zipped) in [
        (&mut plain, false),
        (&mut deflating, true),
        (&mut small_window, false),
    ] {
        let ping = br#"{"type":"ping"}"#;
        c.send(&if zipped {
            compressed(1, ping)
        } else {
            masked(1, ping)
        });
        let pong = c.frame_of("pong");
        assert!(!pong.rsv1, "a small reply goes plain");
    }

    let b = hub.broadcaster();
    let seq = b.metrics(&large_snapshot(1)).unwrap();
    let p = plain.frame_of("metrics");
    let d = deflating.frame_of("metrics");
    let w = small_window.frame_of("metrics");
    assert_eq!(p.json()["seq"], seq);
    assert!(
        !p.rsv1 && d.rsv1 && !w.rsv1,
        "only the full-window client gets it compressed"
    );
    assert_eq!(d.payload, p.payload, "the same JSON, byte for byte");
    assert_eq!(w.payload, p.payload);
    assert!(
        d.wire * 4 < p.wire,
        "compressed {} B on the wire against {} B plain",
        d.wire,
        p.wire
    );

    // Under the threshold (1 KiB): plain for everyone.
    b.topic_created("orders", 3).unwrap();
    let e = deflating.frame_of("topic_created");
    assert!(!e.rsv1);
    assert_eq!(e.json()["data"]["name"], "orders");

    // A client that connects later gets the retained snapshot compressed too.
    let mut late = connect(addr, Some("permessage-deflate"));
    let greeted = late.frame_of("metrics");
    assert!(greeted.rsv1);
    assert_eq!(greeted.payload, p.payload);

    let s = hub.stats();
    assert_eq!(s.deflate_frames_total, 1, "compressed once, sent twice");
    let saved = (p.wire - d.wire) as u64;
    common::eventually("the saved bytes counted", || {
        hub.stats().deflate_saved_bytes_total == 2 * saved
    });
    let metric = common::prometheus(addr);
    assert_eq!(metric("takhin_deflate_frames_total"), 1.0);
    assert_eq!(metric("takhin_deflate_clients"), 3.0);
    assert_eq!(
        metric("takhin_deflate_saved_bytes_total"),
        (2 * saved) as f64
    );
}

#[test]
fn forty_compressing_clients_cost_one_compression_per_broadcast() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut clients: Vec<Client> = (0..40)
        .map(|_| connect(addr, Some("permessage-deflate; client_max_window_bits")))
        .collect();
    for c in &mut clients {
        c.send(&masked(1, br#"{"type":"ping"}"#));
        c.frame_of("pong");
    }
    let b = hub.broadcaster();
    let broadcasts = 5;
    let mut expected = Vec::new();
    for tick in 0..broadcasts {
        let snapshot = large_snapshot(tick);
        b.publish(&Channel::Events, "cluster", &snapshot).unwrap();
        expected.push(snapshot);
    }
    for c in &mut clients {
        for snapshot in &expected {
            let f = c.frame_of("cluster");
            assert!(f.rsv1);
            assert_eq!(&f.json()["data"], snapshot);
        }
    }
    let s = hub.stats();
    assert_eq!(
        s.deflate_frames_total,
        broadcasts,
        "one compression per broadcast for {} clients on {} cores",
        clients.len(),
        hub.cores().len()
    );
    assert_eq!(s.deflate_clients, 40);
}

#[test]
fn compressed_client_messages_follow_the_protocol_and_the_limit() {
    let hub = start(common::config());
    let addr = hub.local_addr();
    let mut c = connect(addr, Some("permessage-deflate"));
    // A compressed subscribe is understood like a plain one.
    c.send(&compressed(
        1,
        br#"{"type":"subscribe","data":["topic:orders"]}"#,
    ));
    let ack = c.frame_of("subscribed");
    assert_eq!(ack.json()["data"], json!(["topic:orders"]));

    // A compressed message fragmented in three, a ping between the fragments.
    let msg = br#"{"type":"ping","timestamp":42}"#;
    let z = deflate(msg);
    let (a, rest) = z.split_at(z.len() / 3);
    let (m, e) = rest.split_at(rest.len() / 2);
    let mut first = masked(1, a);
    first[0] = 0x40 | 0x01; // RSV1, not FIN
    let mut middle = masked(0, m);
    middle[0] = 0x00;
    c.send(&first);
    c.send(&middle);
    c.send(&masked(9, b"between"));
    c.send(&masked(0, e));
    assert_eq!(c.frame().payload, b"between", "the pong first");
    assert_eq!(c.frame_of("pong").json()["timestamp"], 42);

    // A bomb: 20 MB of spaces inflate far past the 512 KiB limit; the connection is closed
    // with 1009 and the inflating stopped at the limit.
    let mut bomb = b"{\"type\":\"ping\",\"pad\":\"".to_vec();
    bomb.resize(20 << 20, b' ');
    let bomb = compressed(1, &bomb);
    assert!(bomb.len() < 100 << 10, "{} B on the wire", bomb.len());
    let mut victim = connect(addr, Some("permessage-deflate"));
    victim.send(&bomb);
    assert_eq!(victim.close_code(), 1009);

    // Invalid UTF-8 inside a compressed text: 1007. RSV1 on a control frame: 1002.
    let mut bad = connect(addr, Some("permessage-deflate"));
    bad.send(&compressed(1, b"{\"type\":\"\xff\"}"));
    assert_eq!(bad.close_code(), 1007);
    let mut rsv = connect(addr, Some("permessage-deflate"));
    let mut ping = masked(9, b"x");
    ping[0] |= 0x40;
    rsv.send(&ping);
    assert_eq!(rsv.close_code(), 1002);
    // Without the extension negotiated, RSV1 is a protocol error.
    let mut plain = connect(addr, None);
    plain.send(&compressed(1, br#"{"type":"ping"}"#));
    assert_eq!(plain.close_code(), 1002);

    // The first client never noticed.
    c.send(&compressed(1, br#"{"type":"ping","timestamp":7}"#));
    assert_eq!(c.frame_of("pong").json()["timestamp"], 7);
    assert_eq!(hub.stats().protocol_errors_total, 4);
    assert!(hub.stats().inflated_messages_total >= 4);
}

#[test]
fn compression_settings_come_from_the_config() {
    // A threshold above the snapshot: it goes plain, compression negotiated all the same.
    let hub = start(common::config().compression_threshold(1 << 20));
    let mut c = connect(hub.local_addr(), Some("permessage-deflate"));
    assert_eq!(c.extensions(), Some(ANSWER));
    c.send(&masked(1, br#"{"type":"ping"}"#));
    c.frame_of("pong");
    hub.broadcaster().metrics(&large_snapshot(0)).unwrap();
    assert!(!c.frame_of("metrics").rsv1);
    assert_eq!(hub.stats().deflate_frames_total, 0);
}
