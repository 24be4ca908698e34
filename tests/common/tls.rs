//! TLS for the tests: a certificate made in the test (rcgen), written as PEM files the hub
//! reads, and rustls clients that trust it.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use takhin_monitor::TlsFiles;
use tungstenite::WebSocket;

use super::READ_TIMEOUT;

/// A TLS stream to the hub, as a client sees it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` and its key, as files in a directory of their
/// own (removed on drop).
pub struct TestCert {
    pub dir: PathBuf,
    pub files: TlsFiles,
    pub der: CertificateDer<'static>,
    /// The base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it.
    pub spki_sha256: String,
}

impl TestCert {
    /// A new certificate and key in a new directory; `tag` names the directory.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "takhin-tls-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem"));
        let (der, spki_sha256) = write_certificate(&files);
        Self {
            dir,
            files,
            der,
            spki_sha256,
        }
    }

    /// Replaces the files with a new certificate and key (a renewal), returning the new
    /// certificate.
    pub fn renew(&mut self) -> CertificateDer<'static> {
        (self.der, self.spki_sha256) = write_certificate(&self.files);
        self.der.clone()
    }

    /// A client configuration that trusts this certificate only.
    pub fn client(&self) -> Arc<ClientConfig> {
        client_trusting(&self.der)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a new self-signed `localhost` certificate and its key (PKCS#8) to `files`.
pub fn write_new_certificate(files: &TlsFiles) -> CertificateDer<'static> {
    write_certificate(files).0
}

/// [`write_new_certificate`], also returning the base64 SHA-256 of its public key's
/// SubjectPublicKeyInfo.
fn write_certificate(files: &TlsFiles) -> (CertificateDer<'static>, String) {
    use base64::Engine;
    use rcgen::PublicKeyData;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
    let spki = made.signing_key.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    let spki_sha256 = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    (made.cert.der().clone(), spki_sha256)
}

/// A client configuration (TLS 1.2 and 1.3, ALPN `http/1.1`) that trusts `cert` only.
pub fn client_trusting(cert: &CertificateDer<'static>) -> Arc<ClientConfig> {
    client_with(cert, rustls::DEFAULT_VERSIONS)
}

/// [`client_trusting`] with these TLS versions only.
pub fn client_with(
    cert: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` as `localhost`, its handshake done (an error when the server's
/// certificate is not trusted, or the server refuses).
pub fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    tls_handshake(TcpStream::connect(addr)?, config)
}

/// The TLS handshake as `localhost` on a connected socket.
pub fn tls_handshake(tcp: TcpStream, config: &Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    tcp.set_read_timeout(Some(READ_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// One HTTP/1.1 request over a new TLS connection (`Connection: close`), as
/// [`super::http`] does in plain text.
pub fn https(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> super::HttpAnswer {
    let mut s = tls_connect(addr, config).expect("TLS handshake");
    super::http_on(&mut s, method, path, headers, body, true)
}

/// A `wss://` WebSocket client, registered with the server (a ping answered).
pub fn wss_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> WebSocket<TlsStream> {
    wss_on(TcpStream::connect(addr).unwrap(), addr, config)
}

/// [`wss_connect`] on a socket already connected to `addr`.
pub fn wss_on(
    tcp: TcpStream,
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> WebSocket<TlsStream> {
    let stream = tls_handshake(tcp, config).expect("TLS handshake");
    let url = format!("wss://localhost:{}/api/monitoring/ws", addr.port());
    let (mut ws, _) = tungstenite::client(url, stream).expect("WebSocket handshake");
    ws.send(tungstenite::Message::text(r#"{"type":"ping"}"#))
        .unwrap();
    recv_type(&mut ws, "pong");
    ws
}

/// The next text message of type `kind`, as JSON.
pub fn recv_type(ws: &mut WebSocket<TlsStream>, kind: &str) -> serde_json::Value {
    loop {
        match ws.read().expect("read") {
            tungstenite::Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == kind {
                    return v;
                }
            }
            tungstenite::Message::Close(c) => panic!("closed by server: {c:?}"),
            _ => {}
        }
    }
}
