//! The Kafka source against a real Kafka-compatible broker: tansu (`common/tansu.rs`), started
//! by each test on a free loopback port. Without tansu (`TANSU`, looked for by build.rs) these
//! tests are ignored, saying so; with `CI` set they run and fail instead. `.ci/run` installs it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::tansu::Tansu;

/// ApiVersions v0 (API key 18) on a new connection: whether the broker answers it, with the
/// request's correlation id, no error, and ApiVersions among its APIs. Hand-encoded: a check
/// that a Kafka broker listens, not a client.
fn answers_api_versions(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    // Header v1: api key, api version, correlation id, client id (int16 length + bytes); the
    // v0 body is empty.
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes());
    request.extend_from_slice(&0i16.to_be_bytes());
    request.extend_from_slice(&7i32.to_be_bytes());
    request.extend_from_slice(&4i16.to_be_bytes());
    request.extend_from_slice(b"test");
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    s.write_all(&framed).unwrap();

    let mut size = [0u8; 4];
    s.read_exact(&mut size).expect("an ApiVersions answer");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).expect("the whole answer");
    // Header v0: correlation id; body v0: error code, then [api key, min, max] with an int32
    // count.
    let correlation = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let error = i16::from_be_bytes(body[4..6].try_into().unwrap());
    let count = i32::from_be_bytes(body[6..10].try_into().unwrap()) as usize;
    let keys: Vec<i16> = (0..count)
        .map(|i| i16::from_be_bytes(body[10 + 6 * i..12 + 6 * i].try_into().unwrap()))
        .collect();
    assert_eq!((correlation, error), (7, 0), "ApiVersions answer");
    keys.contains(&18)
}

#[test]
#[cfg_attr(
    not(any(has_tansu, ci)),
    ignore = "needs tansu (TANSU=path; .ci/run installs it)"
)]
fn tansu_starts_stops_and_restarts_on_the_same_port() {
    let mut tansu = Tansu::start();
    let (addr, port) = (tansu.addr(), tansu.port());
    assert!(addr.ip().is_loopback() && addr.port() == port);
    assert_eq!(tansu.bootstrap(), format!("127.0.0.1:{port}"));
    assert!(tansu.is_running());
    assert!(answers_api_versions(addr), "{:?}", tansu.log());

    tansu.stop();
    assert!(!tansu.is_running());
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert!(refused.is_err(), "still accepting after stop");
    tansu.stop(); // twice: nothing happens

    tansu.restart();
    assert_eq!(tansu.addr(), addr);
    assert!(tansu.is_running());
    assert!(answers_api_versions(addr), "{:?}", tansu.log());
    // Restarting a running broker works too (stop, then start).
    tansu.restart();
    assert!(answers_api_versions(addr), "{:?}", tansu.log());
}
