//! The `takhin-monitor` binary as an operator runs it: starts, logs where it listens, serves
//! WebSocket clients, and on SIGTERM closes them with 1001 and exits 0.

mod common;

use std::process::Command;

use takhin_monitor::close_code;

type Server = common::ServerProcess;

fn spawn(args: &[&str]) -> Server {
    common::spawn_server(args, &[])
}

fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Server {
    common::spawn_server(args, env)
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
        // A snapshot taken just before this client registered may still arrive after its
        // pong; the next ones count it.
        while c.recv_type("metrics")["data"]["clusterHealth"]["activeConnections"] == 0 {}
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
    common::watchdog();
    let out = Command::new(env!("CARGO_BIN_EXE_takhin-monitor"))
        .args(["--listen", "127.0.0.1:0", "--cores", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cores must be at least 1"), "{stderr}");
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("takhin-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn topics_status(server: &Server, token: &str) -> u16 {
    common::http(
        server.addr,
        "GET",
        &format!("/api/topics?token={token}"),
        &[],
        None,
    )
    .status
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let file = config_file(
        "precedence",
        "listen = \"127.0.0.1:0\"\ncores = 1\ntoken = \"file-t\"\nadmin_token = \"file-a\"\n",
    );
    let file_arg = file.to_str().unwrap();
    let from_file = spawn(&["--config", file_arg]);
    assert_eq!(topics_status(&from_file, "file-t"), 200);
    assert_eq!(topics_status(&from_file, "nope"), 401);

    let env = [("TAKHIN_TOKEN", "env-t")];
    let from_env = spawn_env(&["--config", file_arg], &env);
    assert_eq!(topics_status(&from_env, "env-t"), 200);
    assert_eq!(topics_status(&from_env, "file-t"), 401);
    assert_eq!(
        topics_status(&from_env, "file-a"),
        200,
        "the file's admin token still applies"
    );

    let from_flag = spawn_env(&["--config", file_arg, "--token", "flag-t"], &env);
    assert_eq!(topics_status(&from_flag, "flag-t"), 200);
    assert_eq!(topics_status(&from_flag, "env-t"), 401);
    std::fs::remove_file(file).unwrap();
}

#[test]
fn a_bad_config_file_exits_non_zero_with_a_one_line_reason() {
    common::watchdog();
    let file = config_file("typo", "listen = \"127.0.0.1:0\"\nlisten_port = 9\n");
    let out = Command::new(env!("CARGO_BIN_EXE_takhin-monitor"))
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `listen_port`"), "{stderr}");
    std::fs::remove_file(file).unwrap();
}

#[test]
fn the_demo_source_makes_the_stream_move_at_once() {
    let server = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--source",
        "demo",
        "--metrics-interval",
        "0.2",
    ]);
    let mut c = common::connect(server.addr);
    // Two snapshots with traffic between them: topics, rates and consumer lag are live.
    let mut produced = Vec::new();
    while produced.len() < 2 {
        let m = c.recv_type("metrics");
        let data = &m["data"];
        assert!(data["clusterHealth"]["totalTopics"].as_u64().unwrap() >= 5);
        assert!(!data["consumerLags"].as_array().unwrap().is_empty());
        produced.push(data["topicStats"][0]["totalMessages"].as_u64().unwrap());
    }
    assert!(produced[1] > produced[0], "traffic flows: {produced:?}");
    let topics = common::http(server.addr, "GET", "/api/topics", &[], None).json();
    assert!(topics.as_array().unwrap().len() >= 5);
}

#[test]
fn a_flood_of_invalid_json_is_counted_and_logged_at_most_once_a_second() {
    let server = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--source",
        "none",
    ]);
    let mut c = common::connect(server.addr);
    let started = std::time::Instant::now();
    const FLOOD: usize = 20_000;
    for _ in 0..FLOOD {
        c.send_text("{not json");
    }
    c.send_json(&serde_json::json!({"type": "ping", "timestamp": 1}));
    assert_eq!(c.recv_type("pong")["timestamp"], 1, "the connection stays");
    let seconds = started.elapsed().as_secs() as usize;
    let metrics = common::http(server.addr, "GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains(&format!("takhin_invalid_messages_total {FLOOD}")),
        "every one counted"
    );
    let lines = server.log_lines("invalid JSON");
    assert!(!lines.is_empty(), "the flood is logged");
    assert!(
        lines.len() <= seconds + 2,
        "{} log lines in {seconds} s: {lines:?}",
        lines.len()
    );
}

/// A free loopback port, for tests that must name one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with `args`, which must exit by itself within the read timeout: its status and
/// stderr.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_takhin-monitor"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + common::READ_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the binary did not exit by itself");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// A second hub asked to listen on a port a hub serves exits at start with status 1 and
/// "address in use", instead of joining the port (SO_REUSEPORT) and taking part of the new
/// clients: every client connecting afterwards reaches the first. A port another program
/// holds is refused the same way.
#[test]
fn a_second_instance_on_the_same_port_exits_and_the_first_keeps_every_client() {
    common::watchdog();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let first = spawn(&["--listen", &listen, "--cores", "1", "--source", "none"]);
    let (status, stderr) = run_to_exit(&["--listen", &listen, "--cores", "1"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("address in use"), "{stderr}");
    assert!(
        stderr.contains("another takhin-monitor serves port"),
        "{stderr}"
    );
    // On another address of the same port too: one hub per port on a host.
    let (status, stderr) = run_to_exit(&["--listen", &format!("0.0.0.0:{port}"), "--cores", "2"]);
    assert_eq!(status.code(), Some(1), "{stderr}");

    let _clients: Vec<_> = (0..20).map(|_| common::connect(first.addr)).collect();
    let metrics = common::http(first.addr, "GET", "/metrics", &[], None).body;
    assert!(
        metrics.lines().any(|l| l == "takhin_connections 20"),
        "every client on the first: {metrics}"
    );

    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap().to_string();
    let (status, stderr) = run_to_exit(&["--listen", &taken, "--cores", "1"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("address in use"), "{stderr}");
}

/// The connection limit follows the open-files limit: with 400 files and no
/// `--max-connections`, 144 clients (256 descriptors kept back); the next upgrade gets 503 with
/// `Retry-After` while `/healthz`, `/readyz` and `/metrics` keep answering. A larger
/// `--max-connections` is refused at start with the reason.
#[test]
fn the_connection_limit_follows_the_open_files_limit() {
    let server = common::spawn_server_with_files(&["--listen", "127.0.0.1:0", "--cores", "1"], 400);
    assert_eq!(
        server.log_lines("at most 144 clients").len(),
        1,
        "the start line names the limit"
    );
    let _clients: Vec<_> = (0..144).map(|_| common::connect(server.addr)).collect();
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /api/monitoring/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let head = common::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let a = common::http(server.addr, "GET", path, &[], None);
        assert_eq!(a.status, 200, "{path} at the limit: {a:?}");
    }
    drop(server);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_takhin-monitor"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--max-connections",
        "1000",
    ]);
    common::with_file_limit(&mut cmd, 400);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at most 144 clients"), "{stderr}");
}

/// SIGHUP without TLS is logged and ignored: the server keeps its clients and still stops on
/// SIGTERM afterwards (the signal thread goes on waiting), where SIGHUP's default action would
/// have ended the process.
#[test]
fn sighup_without_tls_is_logged_and_the_server_keeps_running() {
    let mut server = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--source",
        "none",
    ]);
    let mut client = common::connect(server.addr);
    let pid = server.child.id() as i32;

    for _ in 0..2 {
        let mark = server.log_mark();
        // SAFETY: signalling our own child process by its PID.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        let line = server.await_log(mark, "SIGHUP ignored");
        assert!(line.contains("no TLS certificate to reload"), "{line}");
        assert!(line.contains("WARN"), "{line}");
    }
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
    client.send_json(&serde_json::json!({"type": "ping", "timestamp": 7}));
    assert_eq!(client.recv_type("pong")["timestamp"], 7, "the client stays");
    let a = common::http(server.addr, "GET", "/readyz", &[], None);
    assert_eq!(a.status, 200, "still ready: {a:?}");

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let close = client.recv_close().expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::GOING_AWAY);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// With `--tls-cert`/`--tls-key` the binary serves `wss://`, and SIGHUP reloads the files: new
/// clients get the new certificate (one trusting only the old one is refused) while open
/// connections go on; a broken key on a later SIGHUP is logged as an error, without the key's
/// content, and the certificate served stays.
#[test]
fn sighup_reloads_the_tls_certificate_and_a_broken_key_keeps_the_old_one() {
    use common::tls::{client_trusting, recv_type, tls_connect, wss_connect, TestCert};

    let mut cert = TestCert::new("sighup");
    let (cert_path, key_path) = (
        cert.files.cert.to_str().unwrap().to_owned(),
        cert.files.key.to_str().unwrap().to_owned(),
    );
    let server = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--source",
        "demo",
        "--metrics-interval",
        "0.2",
        "--tls-cert",
        &cert_path,
        "--tls-key",
        &key_path,
    ]);
    assert!(server.tls, "the start line says wss://");
    assert_eq!(server.log_lines("dashboard at https://").len(), 1);
    let pid = server.child.id() as i32;
    let cert_a = cert.der.clone();
    let mut before = wss_connect(server.addr, &cert.client());
    recv_type(&mut before, "metrics");

    // Renewed files, then SIGHUP: the reload is logged with the certificate's path.
    let cert_b = cert.renew();
    let mark = server.log_mark();
    // SAFETY: signalling our own child process by its PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let line = server.await_log(mark, "TLS certificate reloaded");
    assert!(line.contains(&cert_path), "{line}");

    // A new client trusting only B gets the stream; a new one trusting only A is refused (a
    // fresh configuration each: one that connected before would resume with its ticket and
    // skip the certificate check).
    let mut after = wss_connect(server.addr, &client_trusting(&cert_b));
    recv_type(&mut after, "metrics");
    let refused = tls_connect(server.addr, &client_trusting(&cert_a))
        .expect_err("a client trusting only the old certificate is refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");
    // The connection from before the reload goes on.
    recv_type(&mut before, "metrics");

    // A broken key: the reload fails, is logged as an error naming the file, never its
    // content, and B stays in use.
    const SECRET: &str = "c2VjcmV0LWtleS1ieXRlcy1uZXZlci1sb2dnZWQ";
    std::fs::write(
        &cert.files.key,
        format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let mark = server.log_mark();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let line = server.await_log(mark, "the old certificate stays in use");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("key.pem"), "names the file: {line}");
    let mut again = wss_connect(server.addr, &client_trusting(&cert_b));
    for ws in [&mut again, &mut after, &mut before] {
        recv_type(ws, "metrics");
    }
    assert_eq!(
        server.log_lines("TLS certificate reloaded").len(),
        1,
        "no second reload"
    );
    let log = server.log.lock().unwrap();
    assert!(
        log.iter().all(|l| !l.contains(SECRET)),
        "the key's content is never logged:\n{}",
        log.join("\n")
    );
}
