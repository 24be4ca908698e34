//! How a relay thread reaches Redis: TCP, then TLS for `rediss://` (rustls over the blocking
//! socket, the same read timeout underneath), then `AUTH` ([`super::resp::Conn::open`]).
//!
//! The TLS configuration is built once, when the relay starts: the trusted roots are read from
//! the system (or the `?ca=` file) then, so a missing or empty file stops the start with the
//! reason instead of failing every reconnection, and the session cache it holds lets
//! reconnections resume their TLS session.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{RelayConfig, POLL};

/// How long connecting, the TLS handshake and `AUTH` may each take.
pub(super) const CONNECT: Duration = Duration::from_secs(2);

/// Everything a relay thread needs to open a connection, made once from the configuration.
pub(super) struct Dialer {
    addr: String,
    /// With `rediss://`: the client configuration and the name the certificate must carry.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl Dialer {
    /// Builds the TLS client configuration of a `rediss://` relay: fails if the roots to trust
    /// cannot be read or there are none.
    pub(super) fn new(config: &RelayConfig) -> io::Result<Self> {
        let tls = if config.tls() {
            let name = ServerName::try_from(config.host().to_owned()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the relay's host is not a name TLS can check: {e}"),
                )
            })?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let client = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(io::Error::other)?
                .with_root_certificates(roots(config)?)
                .with_no_client_auth();
            Some((Arc::new(client), name))
        } else {
            None
        };
        Ok(Self {
            addr: config.addr.clone(),
            tls,
        })
    }

    /// A connection to Redis, TLS done: reads time out after [`POLL`], so that the threads see
    /// their stop flag.
    pub(super) fn connect(&self) -> io::Result<Stream> {
        let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&self.addr)?.collect();
        let mut last = io::Error::other("no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT) {
                Ok(tcp) => {
                    tcp.set_nodelay(true)?;
                    tcp.set_read_timeout(Some(POLL))?;
                    return match &self.tls {
                        None => Ok(Stream::Plain(tcp)),
                        Some((config, name)) => handshake(config, name, tcp),
                    };
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The roots a `rediss://` relay trusts: those of the `?ca=` file, or the system's (which
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` can point elsewhere).
fn roots(config: &RelayConfig) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<_> = match config.ca() {
        Some(path) => {
            let unreadable = |e: &dyn std::fmt::Display| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("reading the relay's CA file {}: {e}", path.display()),
                )
            };
            CertificateDer::pem_file_iter(path)
                .map_err(|e| unreadable(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable(&e))?
        }
        None => rustls_native_certs::load_native_certs().certs,
    };
    roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        let whence = config.ca().map_or_else(
            || {
                "the system has none (install ca-certificates, or give rediss://...?ca=PATH)"
                    .to_owned()
            },
            |p| format!("{} holds no usable certificate", p.display()),
        );
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no roots to trust for the relay's TLS: {whence}"),
        ));
    }
    Ok(roots)
}

/// Runs the TLS handshake on `tcp`, through its short read timeouts, within [`CONNECT`].
fn handshake(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    mut tcp: TcpStream,
) -> io::Result<Stream> {
    let mut tls = ClientConnection::new(config.clone(), name.clone()).map_err(io::Error::other)?;
    let end = Instant::now() + CONNECT;
    while tls.is_handshaking() {
        match tls.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if timed_out(&e) && Instant::now() < end => {}
            Err(e) if timed_out(&e) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake with Redis timed out",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Stream::Tls(Box::new(StreamOwned::new(tls, tcp))))
}

/// A read that only timed out: try again.
pub(super) fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A connection to Redis, plain or TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    /// Times out like the socket underneath (a TLS record read in part waits in rustls for the
    /// rest).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    /// With TLS, sends the records still buffered and reports a failure to send them (a
    /// write alone may leave them for later).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}
