//! loadgen over `wss://`, against a small TLS WebSocket server in this test process (rustls
//! `ServerConnection` over a std listener on 127.0.0.1:0, the upgrade by tungstenite): a
//! subscriber per thread, and a plain `ws://` publishing endpoint whose text frames it
//! broadcasts to every subscriber, so loadgen's fanout can count what each one received
//! against what it published. The certificates are made here with rcgen.

mod common;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use flate2::{Compress, Compression, FlushCompress};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::Value;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// Aborts the test binary if it runs longer than this.
const WATCHDOG: Duration = Duration::from_secs(120);

/// How often a subscriber's thread looks for a client frame between messages to send.
const POLL: Duration = Duration::from_millis(5);

/// A CA certificate (PEM) and what signs with its key.
fn test_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
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
    (cert.pem(), rcgen::Issuer::new(params, key))
}

type Subscribers = Arc<Mutex<Vec<Sender<Arc<str>>>>>;

/// The test server: TLS subscribers on one port, a plain publishing WebSocket on another.
struct Server {
    tls_addr: SocketAddr,
    publish_addr: SocketAddr,
    /// The CA that signed the server's certificate, and another one.
    ca: PathBuf,
    other_ca: PathBuf,
    subscribers: Subscribers,
}

impl Server {
    fn start() -> Self {
        common::watchdog(WATCHDOG);
        let dir = std::env::temp_dir().join(format!(
            "loadgen-tls-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_pem, issuer) = test_ca("loadgen test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (ca, other_ca) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other_ca, test_ca("another CA").0).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);
        let subscribers: Subscribers = Arc::default();

        let tls = TcpListener::bind("127.0.0.1:0").unwrap();
        let tls_addr = tls.local_addr().unwrap();
        let subs = subscribers.clone();
        thread::spawn(move || {
            for sock in tls.incoming() {
                let Ok(sock) = sock else { continue };
                // Registered before the 101 goes out: a client that has its answer gets every
                // message published from then on.
                let (tx, rx) = mpsc::channel();
                subs.lock().unwrap().push(tx);
                let config = config.clone();
                thread::spawn(move || subscriber(config, sock, rx));
            }
        });

        let publish = TcpListener::bind("127.0.0.1:0").unwrap();
        let publish_addr = publish.local_addr().unwrap();
        let subs = subscribers.clone();
        thread::spawn(move || {
            for sock in publish.incoming() {
                let Ok(sock) = sock else { continue };
                let subs = subs.clone();
                thread::spawn(move || publisher(sock, subs));
            }
        });
        Self {
            tls_addr,
            publish_addr,
            ca,
            other_ca,
            subscribers,
        }
    }

    fn url(&self) -> String {
        format!("wss://{}/ws", self.tls_addr)
    }

    /// Runs loadgen `scenario` against this server with `args`: exit code, report, output.
    fn loadgen(&self, scenario: &str, args: &[&str]) -> (i32, Value, Output) {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .arg(scenario)
            .args(["--subscribe-url", &self.url()])
            .args(["--publish-url", &format!("ws://{}/", self.publish_addr)])
            .args(["--handshake-timeout", "10s", "--json", "--quiet"])
            .args(args)
            .output()
            .expect("loadgen runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        let report: Value = serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report, out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The subscribers' threads end with their channels.
        self.subscribers.lock().unwrap().clear();
    }
}

/// One TLS subscriber: the handshake and the upgrade (accepting permessage-deflate when
/// offered, as our hub does: no context takeover), then every message published, each
/// compressed when deflate was agreed; client frames are read between (a close is answered).
fn subscriber(config: Arc<ServerConfig>, sock: TcpStream, rx: Receiver<Arc<str>>) {
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let tls = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
    let mut deflate = false;
    // tungstenite's callback type: its error is an HTTP response.
    #[allow(clippy::result_large_err)]
    let offered = |req: &Request, mut resp: Response| {
        deflate = req
            .headers()
            .get_all("sec-websocket-extensions")
            .iter()
            .any(|v| v.to_str().unwrap_or("").contains("permessage-deflate"));
        if deflate {
            resp.headers_mut().insert(
                "Sec-WebSocket-Extensions",
                HeaderValue::from_static(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                ),
            );
        }
        Ok(resp)
    };
    // A client that refuses the certificate ends here.
    let Ok(mut ws) = tungstenite::accept_hdr(tls, offered) else {
        return;
    };
    ws.get_ref().sock.set_read_timeout(Some(POLL)).unwrap();
    loop {
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    let sent = if deflate {
                        send_compressed(&mut ws, msg.as_bytes())
                    } else {
                        ws.send(Message::text(&*msg)).map_err(|_| ())
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A text message compressed as one RSV1 frame (raw deflate, sync-flushed, tail stripped),
/// written past tungstenite, which does not compress.
fn send_compressed(
    ws: &mut WebSocket<StreamOwned<ServerConnection, TcpStream>>,
    msg: &[u8],
) -> Result<(), ()> {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(msg.len() + 64);
    c.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    let mut frame = vec![0xC1];
    match out.len() {
        n if n < 126 => frame.push(n as u8),
        n => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&out);
    let s = ws.get_mut();
    s.write_all(&frame).and_then(|()| s.flush()).map_err(|_| ())
}

/// The publishing endpoint: every text frame goes to every subscriber.
fn publisher(sock: TcpStream, subs: Subscribers) {
    let Ok(mut ws) = tungstenite::accept(sock) else {
        return;
    };
    while let Ok(msg) = ws.read() {
        if let Message::Text(text) = msg {
            let text: Arc<str> = Arc::from(text.as_str());
            subs.lock()
                .unwrap()
                .retain(|tx| tx.send(text.clone()).is_ok());
        }
    }
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fanout_over_wss_delivers_every_message_and_reports_the_tls_handshakes() {
    let server = Server::start();
    let ca = server.ca.to_str().unwrap();
    let (code, r, out) = server.loadgen(
        "fanout",
        &[
            "--tls-ca",
            ca,
            "--subscribers",
            "20",
            "--rate",
            "200",
            "--duration",
            "1s",
        ],
    );
    let text = stdout(&out);
    assert_eq!(code, 0, "{text}");
    assert_eq!(n(&r, "connected"), 20);
    let published = n(&r, "published");
    assert!(published >= 150, "published {published} of 200");
    assert_eq!(n(&r, "deliveries"), published * 20, "{text}");
    assert_eq!((n(&r, "lost"), n(&r, "gaps")), (0, 0));
    // Connect → 101, the TLS handshake included, once per subscriber.
    assert_eq!(n(&r["handshake_us"], "count"), 20);
    let tls = &r["tls"];
    assert_eq!(n(tls, "full") + n(tls, "resumed"), 20, "{tls}");
    assert_eq!(tls["resumption"], true);
    let params = tls["params"].as_object().unwrap();
    assert_eq!(
        params.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        20
    );
    assert!(
        params.keys().all(|k| k.starts_with("TLSv1_3 TLS13_")),
        "{params:?}"
    );
    assert!(text.contains("  tls          TLSv1_3 TLS13_"), "{text}");
}

#[test]
fn deflate_works_over_wss() {
    let server = Server::start();
    let ca = server.ca.to_str().unwrap();
    let (code, r, out) = server.loadgen(
        "fanout",
        &[
            "--tls-ca",
            ca,
            "--deflate",
            "--subscribers",
            "8",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--size",
            "2000",
        ],
    );
    let text = stdout(&out);
    assert_eq!(code, 0, "{text}");
    let published = n(&r, "published");
    assert!(published >= 75, "published {published} of 100");
    assert_eq!(n(&r, "deliveries"), published * 8, "{text}");
    let d = &r["deflate"];
    assert_eq!(n(d, "connections"), 8, "{d}");
    assert_eq!(n(d, "inflated"), published * 8, "{d}");
    assert!(
        n(d, "inflated_wire_bytes") * 4 < n(d, "inflated_bytes"),
        "{d}"
    );
}

#[test]
fn a_wrong_ca_fails_every_connection_with_the_tls_error() {
    let server = Server::start();
    let other = server.other_ca.to_str().unwrap();
    let (code, r, out) = server.loadgen(
        "churn",
        &["--tls-ca", other, "--rate", "50", "--duration", "200ms"],
    );
    let text = stdout(&out);
    assert_eq!(code, 2, "{text}");
    assert_eq!(n(&r, "handshakes"), 0);
    let errors = r["errors"].as_object().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (cause, count) = errors.iter().next().unwrap();
    assert!(
        cause.starts_with("tls: invalid peer certificate") && cause.contains("UnknownIssuer"),
        "{cause}"
    );
    assert_eq!(count.as_u64(), Some(10));
}

#[test]
fn churn_resumes_tls_sessions_unless_told_not_to() {
    let server = Server::start();
    let ca = server.ca.to_str().unwrap();
    let (code, r, out) = server.loadgen(
        "churn",
        &["--tls-ca", ca, "--rate", "100", "--duration", "500ms"],
    );
    assert_eq!(code, 0, "{}", stdout(&out));
    assert_eq!(n(&r, "handshakes"), 50);
    assert_eq!(n(&r["handshake_us"], "count"), 50);
    let tls = &r["tls"];
    assert_eq!(n(tls, "full") + n(tls, "resumed"), 50, "{tls}");
    // One at a time, 10 ms apart: each finds the tickets of those before.
    assert!(n(tls, "resumed") >= 40, "{tls}");

    // No resumption, and no certificate check: every handshake full.
    let (code, r, out) = server.loadgen(
        "churn",
        &[
            "--tls-insecure",
            "--tls-no-resume",
            "--rate",
            "100",
            "--duration",
            "300ms",
        ],
    );
    let text = stdout(&out);
    assert_eq!(code, 0, "{text}");
    let tls = &r["tls"];
    assert_eq!((n(tls, "full"), n(tls, "resumed")), (30, 0), "{tls}");
    assert_eq!(
        (tls["resumption"].clone(), tls["insecure"].clone()),
        (false.into(), true.into())
    );
    assert!(
        text.contains("(resumption off); certificate NOT verified"),
        "{text}"
    );
}
