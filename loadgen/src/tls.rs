//! TLS for `wss://` subscribers: one rustls [`ClientConfig`] (ring provider) shared by every
//! connection of every thread, so the session cache is shared too and reconnections resume;
//! each connection holds a rustls [`ClientConnection`] driven by the worker's readiness loop
//! (ciphertext in with `read_tls`, plaintext out with `reader()`, plaintext in with
//! `writer()`, ciphertext out with `write_tls`). Plain connections have none and take the
//! plain path.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, RootCertStore,
    SignatureScheme,
};

/// How `wss://` connections check the server and resume sessions.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions<'a> {
    /// Trust the certificates of this PEM file (a CA, or the server's self-signed one) instead
    /// of the system's.
    pub ca: Option<&'a Path>,
    /// Accept any certificate (the handshake's signature is still checked).
    pub insecure: bool,
    /// No session resumption: every handshake is full.
    pub no_resume: bool,
    /// The name to check the certificate for and send as SNI, instead of the URL's host.
    pub server_name: Option<&'a str>,
}

/// What every `wss://` connection of a run shares.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The configuration, its session cache included.
    pub config: Arc<ClientConfig>,
    /// The name the certificate is checked for.
    pub name: ServerName<'static>,
}

impl TlsClient {
    /// The client for a `wss://` URL whose host (without the port) is `host`.
    pub fn new(host: &str, opts: &TlsOptions<'_>) -> Result<Self> {
        let provider = Arc::new(browser_order(rustls::crypto::ring::default_provider()));
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("no TLS version to offer")?;
        let mut config = if opts.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let roots = match opts.ca {
                Some(path) => ca_file(path)?,
                None => system_roots()?,
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        // As browsers offer it; a server without ALPN ignores it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if opts.no_resume {
            config.resumption = Resumption::disabled();
        }
        let name = opts.server_name.unwrap_or_else(|| strip_brackets(host));
        let name = ServerName::try_from(name.to_owned()).with_context(|| {
            format!("{name:?} is not a name a certificate can carry (a DNS name or an IP address)")
        })?;
        Ok(Self {
            config: Arc::new(config),
            name,
        })
    }

    /// A new connection's TLS state (its ClientHello is ready to be written).
    pub(crate) fn connection(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.name.clone()).map_err(io::Error::other)
    }
}

/// `[::1]` → `::1`; any other host as it is.
fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The certificates of a PEM file: every one must parse, and one at least must be usable.
fn ca_file(path: &Path) -> Result<RootCertStore> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read the certificates of --tls-ca {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, refused) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!(
            "--tls-ca {shown} holds no usable certificate (PEM \"BEGIN CERTIFICATE\" blocks; \
             {refused} refused)"
        );
    }
    Ok(roots)
}

/// The system's trusted roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` can point elsewhere).
fn system_roots() -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        bail!(
            "no CA certificate in the system's store for wss:// (install ca-certificates or set \
             SSL_CERT_FILE): give the server's CA with --tls-ca, or --tls-insecure"
        );
    }
    Ok(roots)
}

/// `--tls-insecure`: any certificate is accepted, but the handshake's signature is verified
/// as usual, so the handshake costs what a checked one costs, less the chain's check.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads plaintext into `buf` (not empty): what rustls holds already, else ciphertext from
/// `sock` until a record yields some. Handshake messages rustls has to answer are written on
/// the way. `Ok(0)` at the end, with or without the server's `close_notify`; `WouldBlock` once
/// the socket is drained with no plaintext.
pub(crate) fn read(
    tls: &mut ClientConnection,
    sock: &mut (impl Read + Write),
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The server closed without close_notify: as a plain end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        // Ok(0): the end is seen; the reader says so on the next turn.
        tls.read_tls(sock)?;
        if let Err(e) = tls.process_new_packets() {
            // The alert rustls queued, if the socket takes it.
            let _ = tls.write_tls(sock);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tls: {e}"),
            ));
        }
        write_pending(tls, sock)?;
    }
}

/// Hands `out` (plaintext) to rustls and writes what it has for the socket, until the socket
/// would block; `out` keeps what rustls could not take yet.
pub(crate) fn flush(
    tls: &mut ClientConnection,
    sock: &mut (impl Read + Write),
    out: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        let taken = if out.is_empty() {
            0
        } else {
            tls.writer().write(out)?
        };
        out.drain(..taken);
        write_pending(tls, sock)?;
        // Done, or the socket blocked, or rustls takes no more before the handshake is over.
        if out.is_empty() || tls.wants_write() || taken == 0 {
            return Ok(());
        }
    }
}

/// Writes the ciphertext rustls holds until it is out or the socket would block.
fn write_pending(tls: &mut ClientConnection, sock: &mut (impl Read + Write)) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `bytes` (a close frame), then `close_notify`, as far as the socket takes them now.
pub(crate) fn write_last(tls: &mut ClientConnection, sock: &mut (impl Read + Write), bytes: &[u8]) {
    let _ = tls.writer().write_all(bytes);
    tls.send_close_notify();
    let _ = write_pending(tls, sock);
}

/// The handshake's outcome: resumed or not, and the protocol version with the cipher suite.
pub(crate) fn describe(tls: &ClientConnection) -> (bool, String) {
    let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
    let version = tls
        .protocol_version()
        .map_or("?".to_owned(), |v| format!("{v:?}"));
    let suite = tls
        .negotiated_cipher_suite()
        .map_or("?".to_owned(), |s| format!("{:?}", s.suite()));
    (resumed, format!("{version} {suite}"))
}

/// The cipher suites in the order browsers offer them on machines with AES instructions
/// (Chrome, Firefox: AES-128-GCM first, then AES-256-GCM, then ChaCha20-Poly1305). rustls
/// offers AES-256-GCM first, and a server that follows the client's order (ours, like most)
/// would then measure a cipher browsers do not pick.
fn browser_order(mut provider: rustls::crypto::CryptoProvider) -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as C;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 => 1,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    };
    provider.cipher_suites.sort_by_key(rank);
    provider
}
