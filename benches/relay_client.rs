//! The relay's own RESP client (`src/sources/relay/resp.rs`, dialing in `dial.rs`) against the
//! `redis` crate's blocking client, on the relay's two paths, against a real `redis-server`
//! (issue 18: switch to the crate "unless a measurement says otherwise").
//!
//! - **publish**: N relayed frames (the publisher thread's message, `wire::encode` of a real
//!   retained metrics frame, padded to 300 B, 20 KB or 186 KB), `PUBLISH`ed in pipelines of 512
//!   commands as the publisher thread batches them (its `Pipeline::run`, waiting for every
//!   reply), against the crate's `Connection` with one reused `redis::pipe()` of 512 `PUBLISH`es
//!   (`exec`). Nobody subscribes to the channel: the client is what is measured.
//! - **subscribe**: a publisher thread (our client on the plain port, pipelines of 512, pinned
//!   next to redis-server) pushes N messages; the subscriber reads them as the subscriber thread
//!   does (`Conn::reply` with its 200 ms read timeout, matching `message`/channel/payload),
//!   against the crate's `PubSub::get_message` with `set_read_timeout(200 ms)` (a timeout is
//!   retried, as the relay would to look at its stop flag).
//! - both over `redis://` with `--requirepass` (`AUTH` on connect) and over `rediss://` (TLS:
//!   rustls in both clients, a CA and server certificate made here with rcgen).
//!
//! Measured per run: messages/s over the run's wall time and the client thread's CPU
//! (`CLOCK_THREAD_CPUTIME_ID`; both clients are blocking and do all their work, TLS included,
//! on the calling thread) per message. redis-server runs on CPU 0 (`taskset -c 0`), with the
//! subscribe path's publisher thread; the measured client on CPU 1. Each cell is run `RUNS`
//! times, the two clients interleaved (alternating which goes first), and the median printed.
//!
//! Then two checks of the crate's blocking `PubSub` with a read timeout (redis-rs #1375, fixed by
//! #1379): against the real server, timeouts then messages, three times over; and against a
//! scripted server on loopback that sends half a message, pauses past the timeout, then the
//! rest (a message read in part when the timeout strikes), for both clients.
//!
//! ```sh
//! cargo bench --bench relay_client -- --out benches/results/relay_client
//! RUNS=1 SCALE=0.1 cargo bench --bench relay_client      # a quick look
//! ```
//!
//! Environment: `RUNS` [3], `SCALE` (multiplies every N) [1], `SERVER_CPU` [0], `CLIENT_CPU`
//! [1], `TIME_LIMIT_S` [600] (after which the bench kills redis-server and fails).
#![allow(missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use takhin_monitor::bench_support::relay::{self as ours, Conn, Pipeline, Reply};
use takhin_monitor::bench_support::{pop, rings};
use takhin_monitor::RelayConfig;

/// The relay's read timeout (`POLL` in `src/sources/relay/mod.rs`).
const POLL: Duration = Duration::from_millis(200);
/// Commands per pipeline, as the publisher thread batches them.
const BATCH: usize = 512;
const PASSWORD: &str = "bench-pass";
const CHANNEL: &str = "bench:frames";

/// Message sizes and how many of each a run sends.
const SIZES: [(usize, &str, usize); 3] = [
    (300, "300 B", 100_000),
    (20 * 1024, "20 KB", 10_000),
    (186 * 1024, "186 KB", 1_500),
];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pins the calling thread (and the threads it spawns later) to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity({cpu})");
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// redis-server on CPU `cpu`: a plain port and a TLS port, both asking for the password;
/// killed (by its PID, as our child) when dropped.
struct Redis {
    child: Child,
    port: u16,
    tls_port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(cpu: usize) -> Self {
        let dir = std::env::temp_dir().join(format!("takhin-relay-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, issuer) = make_ca();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("redis.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("redis.key"), key.serialize_pem()).unwrap();
        let (port, tls_port) = (free_port(), free_port());
        let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string(), "redis-server"])
            .args([
                "--port",
                &port.to_string(),
                "--tls-port",
                &tls_port.to_string(),
            ])
            .args(["--bind", "127.0.0.1", "--requirepass", PASSWORD])
            .args(["--tls-cert-file", &file("redis.pem")])
            .args(["--tls-key-file", &file("redis.key")])
            .args(["--tls-ca-cert-file", &file("ca.pem")])
            .args(["--tls-auth-clients", "no", "--loglevel", "verbose"])
            .args(["--save", "", "--appendonly", "no"])
            // A subscriber slower than the publisher is not cut off: every message arrives.
            .args(["--client-output-buffer-limit", "pubsub 0 0 0"])
            .stdout(Stdio::from(std::fs::File::create(log_file()).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .expect("taskset and redis-server (apt-get install redis-server)");
        let redis = Self {
            child,
            port,
            tls_port,
            dir,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || TcpStream::connect(("127.0.0.1", tls_port)).is_err()
        {
            assert!(Instant::now() < end, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-server's log, kept after the run (in the temporary directory).
fn log_file() -> PathBuf {
    std::env::temp_dir().join("takhin-relay-client-redis.log")
}

fn make_ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "relay bench CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// How a client reaches the server: ours through the relay's URL, the crate's through its own.
struct Link {
    name: &'static str,
    ours: ours::Dial,
    theirs: redis::Client,
}

impl Link {
    fn new(name: &'static str, redis: &Redis, tls: bool) -> Self {
        let (ours_url, theirs) = if tls {
            let ca = redis.ca();
            (
                format!(
                    "rediss://:{PASSWORD}@127.0.0.1:{}/bench?ca={}",
                    redis.tls_port,
                    ca.display()
                ),
                redis::Client::build_with_tls(
                    format!("rediss://:{PASSWORD}@127.0.0.1:{}/", redis.tls_port),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(std::fs::read(&ca).unwrap()),
                    },
                )
                .unwrap(),
            )
        } else {
            (
                format!("redis://:{PASSWORD}@127.0.0.1:{}/bench", redis.port),
                redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{}/", redis.port))
                    .unwrap(),
            )
        };
        let config: RelayConfig = ours_url.parse().unwrap();
        Self {
            name,
            ours: ours::Dial::new(config).unwrap(),
            theirs,
        }
    }

    /// The crate's connection with the relay's socket settings: TCP_NODELAY (the crate sets
    /// it, as the relay does) and the publisher's 5 s wait for replies.
    fn theirs(&self) -> redis::Connection {
        let con = self.theirs.get_connection().unwrap();
        con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        con
    }
}

/// A relayed frame as the publisher thread sends it, about `size` bytes long.
fn message(size: usize) -> Vec<u8> {
    let build = |fill: usize| {
        let (shared, b) = rings(1, 8);
        b.metrics(&serde_json::json!({ "fill": "x".repeat(fill) }))
            .unwrap();
        ours::encode(&pop(&shared, 0).unwrap(), 7)
    };
    let first = build(size);
    let msg = build((2 * size).saturating_sub(first.len()));
    assert!(msg.len().abs_diff(size) <= 8, "{} for {size}", msg.len());
    msg
}

#[derive(Clone, Copy)]
struct Sample {
    msgs_per_s: f64,
    cpu_us_per_msg: f64,
}

fn sample(n: usize, wall: Duration, cpu: Duration) -> Sample {
    Sample {
        msgs_per_s: n as f64 / wall.as_secs_f64(),
        cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / n as f64,
    }
}

/// Times `f` on this thread: wall and CPU.
fn timed(n: usize, f: impl FnOnce()) -> Sample {
    let (t0, c0) = (Instant::now(), thread_cpu());
    f();
    sample(n, t0.elapsed(), thread_cpu() - c0)
}

fn publish_ours(link: &Link, msg: &[u8], n: usize) -> Sample {
    let mut conn = link.ours.open().unwrap();
    let mut pipe = Pipeline::default();
    timed(n, || {
        let mut left = n;
        while left > 0 {
            pipe.clear();
            while pipe.commands < BATCH.min(left) {
                pipe.command(&[b"PUBLISH", CHANNEL.as_bytes(), msg]);
            }
            left -= pipe.commands;
            pipe.run(&mut conn).unwrap();
        }
    })
}

fn publish_theirs(link: &Link, msg: &[u8], n: usize) -> Sample {
    let mut con = link.theirs();
    let mut pipe = redis::pipe();
    timed(n, || {
        let mut left = n;
        while left > 0 {
            pipe.clear();
            let k = BATCH.min(left);
            for _ in 0..k {
                pipe.cmd("PUBLISH").arg(CHANNEL).arg(msg);
            }
            left -= k;
            pipe.exec(&mut con).unwrap();
        }
    })
}

/// Publishes `n` copies of `msg` on CPU `cpu` through the plain port, after `go`, in
/// pipelines of 512 as fast as redis-server takes them.
///
/// With TLS, redis-server 7.0.15 now and then drops a subscriber whose socket filled ("Error
/// writing to client: SSL routines::bad length" in its verbose log: an `SSL_write` retried with
/// fewer bytes, a server bug Valkey fixed in its PR #1737), whichever the client; such a run is
/// counted and run again. Throttling the publisher made it more frequent, not less.
fn pusher(
    redis: &Redis,
    cpu: usize,
    msg: Vec<u8>,
    n: usize,
    go: Arc<Barrier>,
) -> std::thread::JoinHandle<()> {
    let config: RelayConfig = format!("redis://:{PASSWORD}@127.0.0.1:{}/bench", redis.port)
        .parse()
        .unwrap();
    std::thread::spawn(move || {
        pin(cpu);
        let mut conn = ours::Dial::new(config).unwrap().open().unwrap();
        let mut pipe = Pipeline::default();
        go.wait();
        let mut sent = 0;
        while sent < n {
            pipe.clear();
            while pipe.commands < BATCH.min(n - sent) {
                pipe.command(&[b"PUBLISH", CHANNEL.as_bytes(), &msg]);
            }
            sent += pipe.commands;
            pipe.run(&mut conn).unwrap();
        }
    })
}

/// One subscribe run: `read` takes the next message's payload length (`Ok(None)`: a read
/// timeout) until `n` are in; the publisher starts once subscribed. `Err`: the connection was
/// lost (the publisher is let finish first).
fn subscribe_run(
    redis: &Redis,
    cpu0: usize,
    msg: &[u8],
    n: usize,
    mut read: impl FnMut() -> Result<Option<usize>, String>,
) -> Result<Sample, String> {
    let go = Arc::new(Barrier::new(2));
    let push = pusher(redis, cpu0, msg.to_vec(), n, go.clone());
    go.wait();
    let mut got = 0usize;
    let mut bytes = 0usize;
    let mut lost = None;
    let s = timed(n, || {
        while got < n {
            match read() {
                Ok(None) => {}
                Ok(Some(len)) => {
                    got += 1;
                    bytes += len;
                }
                Err(e) => {
                    lost = Some(e);
                    break;
                }
            }
        }
    });
    push.join().unwrap();
    if let Some(e) = lost {
        return Err(e);
    }
    assert_eq!(bytes, n * msg.len());
    Ok(s)
}

/// Subscribes with our client as the subscriber thread does, then times reading `n` messages:
/// `Conn::reply` (timing out every 200 ms), a `message` on the channel counted.
fn subscribe_ours(
    link: &Link,
    redis: &Redis,
    cpu0: usize,
    msg: &[u8],
    n: usize,
) -> Result<Sample, String> {
    let mut sub = link.ours.open().unwrap();
    let mut out = Vec::new();
    Conn::command(&mut out, &[b"SUBSCRIBE", CHANNEL.as_bytes()]);
    sub.send(&out).unwrap();
    sub.wait_reply(Duration::from_secs(5))
        .unwrap()
        .ok()
        .unwrap();
    subscribe_run(redis, cpu0, msg, n, || {
        let Some(reply) = sub.reply().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let Reply::Array(Some(parts)) = reply.ok().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        match &parts[..] {
            [Reply::Bulk(Some(kind)), Reply::Bulk(Some(chan)), Reply::Bulk(Some(m))]
                if kind == b"message" && chan == CHANNEL.as_bytes() =>
            {
                Ok(Some(m.len()))
            }
            _ => Ok(None),
        }
    })
}

/// The same with the crate's `PubSub`, `set_read_timeout(200 ms)` and `get_message`.
fn subscribe_theirs(
    link: &Link,
    redis: &Redis,
    cpu0: usize,
    msg: &[u8],
    n: usize,
) -> Result<Sample, String> {
    let mut con = link.theirs.get_connection().unwrap();
    let mut sub = con.as_pubsub();
    sub.subscribe(CHANNEL).unwrap();
    sub.set_read_timeout(Some(POLL)).unwrap();
    subscribe_run(redis, cpu0, msg, n, || match sub.get_message() {
        Ok(m) if m.get_channel_name() == CHANNEL => Ok(Some(m.get_payload_bytes().len())),
        Ok(_) => Ok(None),
        Err(e) if e.is_timeout() => Ok(None),
        Err(e) => Err(e.to_string()),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A scripted server: answers every command `+OK` until `SUBSCRIBE`, confirms it, then sends
/// half of a message, pauses 3 read timeouts, the rest, and a second whole message.
fn scripted_server(payload: Vec<u8>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Commands come whole and few: answer each `*` that starts a command.
        loop {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "the client left before subscribing");
            seen.extend_from_slice(&buf[..k]);
            let text = String::from_utf8_lossy(&seen).to_ascii_uppercase();
            let commands = commands_in(&seen);
            if text.contains("SUBSCRIBE") {
                for _ in 1..commands {
                    s.write_all(b"+OK\r\n").unwrap();
                }
                s.write_all(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n")
                    .unwrap();
                break;
            }
            for _ in 0..commands {
                s.write_all(b"+OK\r\n").unwrap();
            }
            seen.clear();
        }
        let mut m =
            format!("*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n${}\r\n", payload.len()).into_bytes();
        m.extend_from_slice(&payload);
        m.extend_from_slice(b"\r\n");
        let half = m.len() / 2;
        std::thread::sleep(2 * POLL);
        s.write_all(&m[..half]).unwrap();
        std::thread::sleep(3 * POLL);
        s.write_all(&m[half..]).unwrap();
        s.write_all(&m).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    (port, t)
}

/// How many commands (arrays of bulk strings) `b` holds whole.
fn commands_in(b: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    let line = |at: usize| -> Option<(i64, usize)> {
        let nl = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
        Some((
            std::str::from_utf8(&b[at + 1..nl]).ok()?.parse().ok()?,
            nl + 2,
        ))
    };
    while at < b.len() && b[at] == b'*' {
        let Some((args, mut p)) = line(at) else { break };
        let mut whole = true;
        for _ in 0..args {
            match line(p) {
                Some((len, q)) if q + len as usize + 2 <= b.len() => p = q + len as usize + 2,
                _ => {
                    whole = false;
                    break;
                }
            }
        }
        if !whole {
            break;
        }
        n += 1;
        at = p;
    }
    n
}

/// What a client saw of the scripted server: timeouts, then the messages' payloads.
fn split_message_check(theirs: bool) -> String {
    let payload: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let (port, server) = scripted_server(payload.clone());
    let mut timeouts = 0;
    let mut got: Vec<Vec<u8>> = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    if theirs {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        let mut sub = con.as_pubsub();
        sub.subscribe("c").unwrap();
        sub.set_read_timeout(Some(POLL)).unwrap();
        while got.len() < 2 && Instant::now() < end {
            match sub.get_message() {
                Ok(m) => got.push(m.get_payload_bytes().to_vec()),
                Err(e) if e.is_timeout() => timeouts += 1,
                Err(e) => {
                    got.push(format!("error: {e}").into_bytes());
                    break;
                }
            }
        }
    } else {
        let config: RelayConfig = format!("redis://127.0.0.1:{port}/c").parse().unwrap();
        let mut sub = ours::Dial::new(config).unwrap().open().unwrap();
        let mut out = Vec::new();
        Conn::command(&mut out, &[b"SUBSCRIBE", b"c"]);
        sub.send(&out).unwrap();
        sub.wait_reply(Duration::from_secs(5)).unwrap();
        while got.len() < 2 && Instant::now() < end {
            match sub.reply() {
                Ok(None) => timeouts += 1,
                Ok(Some(Reply::Array(Some(parts)))) => match parts.into_iter().nth(2) {
                    Some(Reply::Bulk(Some(m))) => got.push(m),
                    other => got.push(format!("unexpected {other:?}").into_bytes()),
                },
                Ok(Some(other)) => got.push(format!("unexpected {other:?}").into_bytes()),
                Err(e) => {
                    got.push(format!("error: {e}").into_bytes());
                    break;
                }
            }
        }
    }
    server.join().unwrap();
    let intact = got.len() == 2 && got.iter().all(|m| *m == payload);
    format!(
        "{timeouts} timeouts (>= 3 expected, one mid-message), {} messages, {}",
        got.len(),
        if intact {
            "both intact".to_owned()
        } else {
            format!(
                "NOT intact: {:?}",
                got.iter()
                    .map(|m| String::from_utf8_lossy(&m[..m.len().min(80)]).into_owned())
                    .collect::<Vec<_>>()
            )
        }
    )
}

/// The crate's `PubSub` against the real server: a timeout, then a message, three times.
fn timeout_then_message_check(link: &Link) -> String {
    let mut con = link.theirs.get_connection().unwrap();
    let mut publisher = link.theirs();
    let mut sub = con.as_pubsub();
    sub.subscribe("bench:probe").unwrap();
    sub.set_read_timeout(Some(POLL)).unwrap();
    let mut report = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let first = sub.get_message();
        let timed_out = matches!(&first, Err(e) if e.is_timeout());
        let waited = t.elapsed();
        redis::cmd("PUBLISH")
            .arg("bench:probe")
            .arg(format!("m{round}"))
            .exec(&mut publisher)
            .unwrap();
        let second = sub.get_message();
        let payload = second
            .as_ref()
            .ok()
            .and_then(|m| m.get_payload::<String>().ok());
        report.push(format!(
            "round {round}: {} after {} ms, then {}",
            if timed_out { "timeout" } else { "NO timeout" },
            waited.as_millis(),
            match payload {
                Some(p) if p == format!("m{round}") => format!("message {p:?}"),
                Some(p) => format!("WRONG message {p:?}"),
                None => format!("ERROR {:?}", second.err()),
            }
        ));
    }
    report.join("; ")
}

fn main() {
    let out_dir = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map(PathBuf::from);
    let runs: usize = env("RUNS", 3);
    let scale: f64 = env("SCALE", 1.0);
    let cpu0: usize = env("SERVER_CPU", 0);
    let cpu1: usize = env("CLIENT_CPU", 1);
    let limit = Duration::from_secs(env("TIME_LIMIT_S", 600));
    pin(cpu1);
    let redis = Redis::start(cpu0);
    let pid = redis.child.id();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("relay_client: over TIME_LIMIT_S, stopping redis-server {pid}");
        // SAFETY: our child's PID, still ours: `Redis` is alive until main returns.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        std::process::exit(2);
    });
    let links = [
        Link::new("redis:// + AUTH", &redis, false),
        Link::new("rediss:// (TLS) + AUTH", &redis, true),
    ];
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for link in &links {
        for (size, size_name, base_n) in SIZES {
            let n = ((base_n as f64 * scale) as usize).max(BATCH);
            let msg = message(size);
            for path in ["publish", "subscribe"] {
                // A run the server cut short (see `pusher`) is counted and run again.
                let mut dropped = [0usize; 2];
                let mut run = |theirs: bool, n: usize| loop {
                    let r = match (path, theirs) {
                        ("publish", false) => Ok(publish_ours(link, &msg, n)),
                        ("publish", true) => Ok(publish_theirs(link, &msg, n)),
                        (_, false) => subscribe_ours(link, &redis, cpu0, &msg, n),
                        (_, true) => subscribe_theirs(link, &redis, cpu0, &msg, n),
                    };
                    match r {
                        Ok(s) => break s,
                        Err(e) => {
                            dropped[usize::from(theirs)] += 1;
                            eprintln!(
                                "{} {path} {size_name}: connection lost ({e}); again",
                                link.name
                            );
                            assert!(dropped[usize::from(theirs)] <= 5, "lost too often");
                        }
                    }
                };
                // A short warm-up of each, then the runs, alternating which goes first.
                let _ = (run(false, n / 10 + 1), run(true, n / 10 + 1));
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for r in 0..runs {
                    if r % 2 == 0 {
                        a.push(run(false, n));
                        b.push(run(true, n));
                    } else {
                        b.push(run(true, n));
                        a.push(run(false, n));
                    }
                }
                let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
                let (ar, ac) = (m(&a, |s| s.msgs_per_s), m(&a, |s| s.cpu_us_per_msg));
                let (br, bc) = (m(&b, |s| s.msgs_per_s), m(&b, |s| s.cpu_us_per_msg));
                let row = format!(
                    "| {} | {path} | {size_name} ({} B) | {n} | {ar:.0} | {br:.0} | {ac:.2} | {bc:.2} | {:+.0}% | {}/{} |",
                    link.name,
                    msg.len(),
                    (bc / ac - 1.0) * 100.0,
                    dropped[0],
                    dropped[1]
                );
                println!("{row}");
                rows.push(row);
                json.push(format!(
                    "{{\"link\":{:?},\"path\":\"{path}\",\"bytes\":{},\"n\":{n},\"runs\":{runs},\"runs_cut_by_server\":{dropped:?},\
                     \"ours\":{{\"msgs_per_s\":{ar:.1},\"cpu_us_per_msg\":{ac:.3},\"all\":{}}},\
                     \"redis_crate\":{{\"msgs_per_s\":{br:.1},\"cpu_us_per_msg\":{bc:.3},\"all\":{}}}}}",
                    link.name,
                    msg.len(),
                    all(&a),
                    all(&b)
                ));
            }
        }
    }
    let took = started.elapsed();
    let probe = timeout_then_message_check(&links[0]);
    let split_theirs = split_message_check(true);
    let split_ours = split_message_check(false);
    let header = "| link | path | message | N | ours msg/s | redis crate msg/s | ours CPU µs/msg | redis crate CPU µs/msg | crate CPU vs ours | runs redis-server cut (ours/crate) |\n|---|---|---|---|---|---|---|---|---|---|";
    let text = format!(
        "relay_client: medians of {runs} runs, redis-server (and the subscribe path's publisher) \
         on CPU {cpu0}, the client on CPU {cpu1}; measured in {:.0} s\n\n{header}\n{}\n\n\
         redis crate PubSub, timeout then message (real server): {probe}\n\
         half a message, a pause past the read timeout, the rest (scripted server):\n\
         - redis crate PubSub::get_message: {split_theirs}\n\
         - ours (Conn::reply): {split_ours}\n",
        took.as_secs_f64(),
        rows.join("\n")
    );
    println!("\n{text}");
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir.join("results.md"), &text);
        write(
            &dir.join("results.json"),
            &format!(
                "{{\"runs\":{runs},\"server_cpu\":{cpu0},\"client_cpu\":{cpu1},\"cells\":[\n{}\n],\
                 \"pubsub_timeout_then_message\":{probe:?},\"split_message_redis_crate\":{split_theirs:?},\
                 \"split_message_ours\":{split_ours:?}}}\n",
                json.join(",\n")
            ),
        );
    }
    drop(redis);
}

fn all(v: &[Sample]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| format!("[{:.1},{:.3}]", s.msgs_per_s, s.cpu_us_per_msg))
        .collect();
    format!("[{}]", items.join(","))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    println!("wrote {}", path.display());
}
