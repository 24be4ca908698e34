//! How the client reaches the brokers: TLS and SASL, as Kafka's `security.protocol` and
//! `sasl.mechanism` name them.
//!
//! What the configuration gives ([`Security`]) is turned once, when the [`Client`](super::Client)
//! is made, into what every connection uses ([`Dial`]): the TLS configuration with its CA
//! certificates already read, so a missing or empty CA file stops the start with the reason
//! instead of failing every poll.
//!
//! TLS is rustls (TLS 1.2 and 1.3, the `ring` provider) over the same blocking socket, its
//! certificates checked against the CA file given or else the system's store (what OpenSSL,
//! and so librdkafka and kcat, trust: `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured), for the
//! broker's host as given or advertised. SASL is `SaslHandshake` v1 then `SaslAuthenticate`
//! (`sasl.rs`).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::scram::Hash;
use super::ClientError;

/// A SASL mechanism this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    /// PLAIN (RFC 4616): the password itself, so only over TLS outside a test bench.
    Plain,
    /// SCRAM (RFC 5802, 7677) with SHA-256 or SHA-512: the password never crosses the wire,
    /// and the broker proves that it knows it too.
    Scram(Hash),
}

impl Mechanism {
    /// The mechanism's name in Kafka (`sasl.mechanism`) and on the wire.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(Hash::Sha256) => "SCRAM-SHA-256",
            Self::Scram(Hash::Sha512) => "SCRAM-SHA-512",
        }
    }
}

/// A password. `Debug` never shows it, so it stays out of logs and of `Debug` dumps of the
/// options and configurations that hold it; nothing here displays it. It serializes as itself:
/// the options' file and command line are merged as TOML.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Password(String);

impl Password {
    /// The password itself, for the SASL exchange only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl FromStr for Password {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// SASL: who to authenticate as, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sasl {
    pub(crate) mechanism: Mechanism,
    pub(crate) username: String,
    pub(crate) password: Password,
}

/// TLS to the brokers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tls {
    /// PEM file of the CA certificates to trust, in place of the system's store (as Kafka's
    /// `ssl.truststore.location` and librdkafka's `ssl.ca.location` replace the default).
    pub(crate) ca_file: Option<PathBuf>,
    /// The name every broker's certificate must carry, in place of the broker's host (brokers
    /// reached by IP address, or through a tunnel, with certificates for their names).
    pub(crate) server_name: Option<String>,
}

/// How to reach the brokers; the default is plain text without authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Security {
    pub(crate) tls: Option<Tls>,
    pub(crate) sasl: Option<Sasl>,
}

impl Security {
    /// Kafka's name for it (`security.protocol`), for the log.
    pub(crate) fn protocol(&self) -> &'static str {
        match (&self.tls, &self.sasl) {
            (None, None) => "PLAINTEXT",
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        }
    }
}

/// What every connection needs: the client id, the request timeout, and the security, ready.
#[derive(Debug, Clone)]
pub(crate) struct Dial {
    pub(crate) client_id: String,
    pub(crate) timeout: Duration,
    tls: Option<TlsDial>,
    pub(crate) sasl: Option<Sasl>,
}

impl Dial {
    /// Plain text, no authentication.
    pub(crate) fn plain(client_id: impl Into<String>, timeout: Duration) -> Self {
        Self {
            client_id: client_id.into(),
            timeout,
            tls: None,
            sasl: None,
        }
    }

    /// With `security`: its CA certificates read (a file that cannot be read or holds none is
    /// refused now), its server name checked.
    pub(crate) fn secured(mut self, security: &Security) -> Result<Self, ClientError> {
        self.tls = security.tls.as_ref().map(TlsDial::new).transpose()?;
        self.sasl.clone_from(&security.sasl);
        Ok(self)
    }

    /// The TLS handshake over `socket` when TLS is on (within the socket's deadline).
    pub(crate) fn wrap(&self, addr: &str, socket: Socket) -> Result<Stream, ClientError> {
        match &self.tls {
            None => Ok(Stream::Plain(socket)),
            Some(tls) => tls
                .handshake(addr, socket)
                .map(|s| Stream::Tls(Box::new(s))),
        }
    }
}

/// TLS, ready: the rustls configuration (shared by every connection) and the name override.
#[derive(Debug, Clone)]
struct TlsDial {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl TlsDial {
    fn new(tls: &Tls) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::TlsConfig { reason };
        let roots = match &tls.ca_file {
            Some(path) => ca_file(path).map_err(bad)?,
            None => system_roots().map_err(bad)?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("no TLS version to offer: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = tls
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| {
                    bad(format!(
                        "{name:?} is not a name a certificate can carry (a DNS name or an IP \
                         address)"
                    ))
                })
            })
            .transpose()?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The handshake with the broker at `addr` (HOST:PORT), checking its certificate for the
    /// override name or else HOST.
    fn handshake(
        &self,
        addr: &str,
        mut socket: Socket,
    ) -> Result<StreamOwned<ClientConnection, Socket>, ClientError> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_name(addr)?,
        };
        let shown = name.to_str().into_owned();
        let failed = |source: io::Error| ClientError::Tls {
            addr: addr.to_owned(),
            name: shown.clone(),
            source,
        };
        let mut tls = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| failed(io::Error::other(e)))?;
        // Each call reads and writes until the handshake is done or an error; the socket's
        // deadline bounds the whole.
        while tls.is_handshaking() {
            tls.complete_io(&mut socket).map_err(|e| {
                failed(match e.kind() {
                    io::ErrorKind::TimedOut => io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the handshake did not finish within the request timeout",
                    ),
                    io::ErrorKind::UnexpectedEof => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the broker closed the connection during the handshake",
                    ),
                    _ => e,
                })
            })?;
        }
        Ok(StreamOwned::new(tls, socket))
    }
}

/// The certificates of a PEM file: every one must parse, and there must be one.
fn ca_file(path: &std::path::Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the CA certificates of {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, refused) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "{shown} holds no usable CA certificate (PEM \"BEGIN CERTIFICATE\" blocks; \
             {refused} refused)"
        ));
    }
    if refused > 0 {
        warn!(file = %shown, refused, "kafka: CA certificates that do not parse were left out");
    }
    Ok(roots)
}

/// The system's CA certificates. Some may fail to load (one bad file in the directory): those
/// are logged and left out; none at all is an error saying what to give instead.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "kafka: a system CA certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no CA certificate found in the system's store (install ca-certificates, or set \
             SSL_CERT_FILE): give the brokers' CA with --kafka-tls-ca"
                .to_owned(),
        );
    }
    debug!(
        roots = added,
        "kafka: TLS with the system's CA certificates"
    );
    Ok(roots)
}

/// The HOST of HOST:PORT (an IPv6 address without its brackets) as the name to verify.
fn host_name(addr: &str) -> Result<ServerName<'static>, ClientError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| ClientError::Tls {
        addr: addr.to_owned(),
        name: host.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "the host is not a name a certificate can carry: give --kafka-tls-server-name",
        ),
    })
}

/// A connection's socket, with the deadline of the request under way: every read and write
/// waits at most until then, however many system calls TLS makes of one request (a broker that
/// sends a byte at a time cannot stretch a request past its timeout).
#[derive(Debug)]
pub(crate) struct Socket {
    tcp: TcpStream,
    deadline: Instant,
}

impl Socket {
    /// `tcp`, whose first deadline is `timeout` from now.
    pub(crate) fn new(tcp: TcpStream, timeout: Duration) -> Self {
        Self {
            tcp,
            deadline: Instant::now() + timeout,
        }
    }

    /// The time left, or `TimedOut` past the deadline.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

/// A socket timeout is `WouldBlock` on Linux; rustls takes that for a non-blocking socket and
/// returns early, so it is reported as what it is.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut.into()
    } else {
        e
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf).map_err(timed_out)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection's byte stream: the socket itself, or TLS over it.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(Socket),
    Tls(Box<StreamOwned<ClientConnection, Socket>>),
}

impl Stream {
    /// Every read and write from now on ends by `deadline`.
    pub(crate) fn set_deadline(&mut self, deadline: Instant) {
        match self {
            Self::Plain(s) => s.deadline = deadline,
            Self::Tls(t) => t.sock.deadline = deadline,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(t) => t.write(buf),
        }
    }

    /// With TLS, sends what is encrypted and not yet written (a write only queues it).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(t) => t.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_debug() {
        let sasl = Sasl {
            mechanism: Mechanism::Scram(Hash::Sha512),
            username: "alice".to_owned(),
            password: Password::from("hunter2".to_owned()),
        };
        let security = Security {
            tls: None,
            sasl: Some(sasl),
        };
        let shown = format!("{security:?} {:?}", Dial::plain("c", Duration::ZERO));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("alice") && shown.contains("<hidden>"),
            "{shown}"
        );
        assert_eq!(security.protocol(), "SASL_PLAINTEXT");
    }

    #[test]
    fn the_name_to_verify_is_the_host() {
        let name = |addr: &str| host_name(addr).map(|n| n.to_str().into_owned());
        assert_eq!(name("kafka-1.example:9093").unwrap(), "kafka-1.example");
        assert_eq!(name("127.0.0.1:9093").unwrap(), "127.0.0.1");
        assert_eq!(name("[::1]:9093").unwrap(), "::1");
        let e = name("bad_name!:9093").unwrap_err();
        assert!(e.to_string().contains("--kafka-tls-server-name"), "{e}");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir();
        let missing = dir.join(format!("takhin-no-such-ca-{}.pem", std::process::id()));
        let tls = |path: &PathBuf| {
            TlsDial::new(&Tls {
                ca_file: Some(path.clone()),
                server_name: None,
            })
        };
        let e = tls(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read the CA certificates"), "{e}");
        let empty = dir.join(format!("takhin-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = tls(&empty).unwrap_err().to_string();
        std::fs::remove_file(&empty).unwrap();
        assert!(e.contains("holds no usable CA certificate"), "{e}");

        let e = TlsDial::new(&Tls {
            ca_file: None,
            server_name: Some("not a name".to_owned()),
        });
        // Without system roots the store is the first complaint; with them, the name.
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("not a name a certificate can carry") || e.contains("system's store"),
            "{e}"
        );
    }
}
