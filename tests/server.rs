//! The `takhin-monitor` binary as an operator runs it: starts, logs where it listens, serves
//! WebSocket clients, and on SIGTERM closes them with 1001 and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use takhin_monitor::close_code;

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Server {
    common::watchdog();
    let mut child = Command::new(env!("CARGO_BIN_EXE_takhin-monitor"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server logs where it listens")
            .unwrap();
        if let Some(rest) = line.split("listening on ws://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, addr }
}

#[test]
fn the_binary_serves_clients_and_sigterm_closes_them_with_1001_then_exits_0() {
    let mut server = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--source",
        "none",
        "--metrics-interval",
        "0.2",
    ]);
    let mut clients: Vec<_> = (0..3).map(|_| common::connect(server.addr)).collect();
    for c in &mut clients {
        let m = c.recv_type("metrics");
        assert!(
            m["data"]["clusterHealth"]["activeConnections"]
                .as_u64()
                .unwrap()
                >= 1
        );
    }
    // SAFETY: signalling our own child process by its PID.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    for c in &mut clients {
        let close = c.recv_close().expect("a close frame");
        assert_eq!(u16::from(close.code), close_code::GOING_AWAY);
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn bad_configuration_exits_non_zero_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_takhin-monitor"))
        .args(["--listen", "127.0.0.1:0", "--cores", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cores must be at least 1"), "{stderr}");
}
