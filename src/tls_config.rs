//! TLS configuration: the certificate chain and key of `--tls-cert` / `--tls-key` made into a
//! rustls [`ServerConfig`], and the one every new connection takes, replaced whole on a reload.
//!
//! A bottom part, beside `config` and `security`: it reads two files and knows nothing of
//! connections. The connections' side (records, handshakes, no I/O) is `connection::tls`.
//!
//! What the configuration is, and why:
//! - TLS 1.3 and 1.2, rustls's *ring* provider (its default suites and key exchanges), no
//!   client certificates.
//! - ALPN `http/1.1` only: the port serves HTTP/1.1 (hyper's `http1`) and WebSocket upgrades,
//!   which are HTTP/1.1 too. A client that offers ALPN without `http/1.1` (`h2` alone) is
//!   refused in the handshake (`no_application_protocol`), which is better than a browser
//!   speaking HTTP/2 to an HTTP/1 server; a client that offers no ALPN is served.
//! - Resumption by stateless tickets (rustls's ring `Ticketer`: ChaCha20-Poly1305, keys
//!   rotated every 6 hours), and no server-side session cache. Dashboards reconnect a lot (a
//!   page reload, a laptop waking, a proxy timing out); a resumed handshake skips the
//!   certificate and the signature (the server's costliest step, several times a full one with
//!   an RSA key), and the certificate's bytes. Tickets keep nothing per client on the server,
//!   need no lock shared by the shards (the stateful cache is one `Mutex` for every core), and
//!   any shard resumes a ticket another issued (SO_REUSEPORT spreads reconnections at
//!   random). The ticket keys outlive a reload ([`TlsReloadable`] keeps its `Ticketer`), so a
//!   new certificate does not turn every reconnection into a full handshake. Two TLS 1.3
//!   tickets per connection (rustls's default): a page opens its document, REST and
//!   WebSocket connections in parallel, and TLS 1.3 tickets are single use.
//! - No 0-RTT (early data): it can be replayed, and a WebSocket upgrade or a REST call gains
//!   nothing worth that.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::ring::{default_provider, Ticketer};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ProducesTickets};
use rustls::ServerConfig;

/// The one application protocol the port speaks (ALPN).
pub(crate) const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// TLS 1.3 tickets sent after a full handshake (see the module's documentation).
const TLS13_TICKETS: usize = 2;

/// The largest certificate or key file read: a chain of a few certificates is a few KB, so a
/// path given by mistake to something large is refused rather than read whole.
const MAX_PEM_FILE: u64 = 1 << 20;

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`CERTIFICATE` blocks; anything else in the file is
    /// ignored, so a file holding the key too is fine).
    pub cert: PathBuf,
    /// The private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
    /// (`EC PRIVATE KEY`), unencrypted; RSA, ECDSA (P-256, P-384) or Ed25519.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The certificate chain file and the key file.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// Why the certificate or key could not be used. Every message names the file and what is
/// wrong with it, and none quotes the key file's content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsLoadError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The file is larger than any certificate chain or key.
    #[error("{} is over {} bytes: not a PEM certificate or key", path.display(), MAX_PEM_FILE)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is malformed (never the file's bytes).
        what: &'static str,
    },
    /// The certificate file holds no certificate.
    #[error("{} holds no certificate (no -----BEGIN CERTIFICATE----- block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key of a supported kind.
    #[error(
        "{} holds no private key (a PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \
         \"EC PRIVATE KEY\" PEM block)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is encrypted with a passphrase, which a server started unattended cannot give.
    #[error(
        "the private key in {} is encrypted; give it unencrypted (`openssl pkey -in KEY -out \
         PLAIN`), readable by this user only",
        path.display()
    )]
    EncryptedKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is not the certificate's.
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate or key (an unsupported key type or curve, a certificate
    /// that does not parse).
    #[error("{} and {}: {reason}", cert.display(), key.display())]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason (it never includes key material).
        reason: rustls::Error,
    },
    /// The session ticket keys could not be made (the system's random source failed).
    #[error("cannot make TLS session ticket keys: {0}")]
    Tickets(rustls::Error),
}

/// Loads the certificate chain and key of `files` into a new server configuration (with new
/// session ticket keys). The hub uses [`TlsReloadable`], which keeps its ticket keys.
#[cfg(test)]
pub(crate) fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsLoadError> {
    load_with(files, new_ticketer()?)
}

fn new_ticketer() -> Result<Arc<dyn ProducesTickets>, TlsLoadError> {
    Ticketer::new().map_err(TlsLoadError::Tickets)
}

/// Like [`load`], with the session ticket keys given (kept across reloads).
fn load_with(
    files: &TlsFiles,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, TlsLoadError> {
    let cert_pem = read_file(&files.cert)?;
    let key_pem = read_file(&files.key)?;
    from_pem(files, &cert_pem, &key_pem, ticketer)
}

/// The configuration from the files' contents; `files` names them in errors.
pub(crate) fn from_pem(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, TlsLoadError> {
    let chain = certificates(&files.cert, cert_pem)?;
    let key = private_key(&files.key, key_pem)?;
    let refused = |reason| TlsLoadError::Refused {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsLoadError::Mismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                }
            }
            e => refused(e),
        })?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.ticketer = ticketer;
    config.send_tls13_tickets = TLS13_TICKETS;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Reads a whole PEM file, refusing one over [`MAX_PEM_FILE`].
fn read_file(path: &Path) -> Result<Vec<u8>, TlsLoadError> {
    let read = |source| TlsLoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsLoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// What is malformed in a PEM file, in words that quote nothing from it.
fn pem_fault(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a -----BEGIN block has no matching -----END line",
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a block's body is not valid base64",
        pem::Error::SectionTooLarge => "a block is too large",
        _ => "it cannot be parsed",
    }
}

/// Every certificate of a PEM file, in order.
fn certificates(
    path: &Path,
    pem_bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let chain = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsLoadError::Pem {
            path: path.to_owned(),
            what: pem_fault(&e),
        })?;
    if chain.is_empty() {
        return Err(TlsLoadError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key of a PEM file.
fn private_key(path: &Path, pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsLoadError> {
    if let Some(key) = PrivateKeyDer::pem_slice_iter(pem_bytes).next() {
        return key.map_err(|e| TlsLoadError::Pem {
            path: path.to_owned(),
            what: pem_fault(&e),
        });
    }
    let path = path.to_owned();
    // pki-types skips blocks of kinds it does not take, `ENCRYPTED PRIVATE KEY` among them:
    // say so rather than "no key".
    Err(
        if memchr::memmem::find(pem_bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").is_some() {
            TlsLoadError::EncryptedKey { path }
        } else {
            TlsLoadError::NoKey { path }
        },
    )
}

/// The configuration new connections take, replaced whole by [`Self::reload`] (on SIGHUP):
/// connections keep the configuration they started with, so a reload drops none.
///
/// Read on every accept, from any shard's thread: a read lock and an `Arc` clone (the
/// connection holds its configuration for its life anyway, so the clone is needed; the lock's
/// cost is beside a handshake's). Written only by a reload, which reads and checks the files
/// before it takes the lock.
pub(crate) struct TlsReloadable {
    files: TlsFiles,
    /// Session ticket keys, the same across reloads.
    ticketer: Arc<dyn ProducesTickets>,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsReloadable {
    /// The files only: the configuration holds the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloadable")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsReloadable {
    /// Loads `files`; an error here is a refusal to start.
    pub(crate) fn new(files: TlsFiles) -> Result<Self, TlsLoadError> {
        let ticketer = new_ticketer()?;
        let config = load_with(&files, ticketer.clone())?;
        Ok(Self {
            files,
            ticketer,
            current: RwLock::new(config),
        })
    }

    /// The files it loads.
    #[allow(dead_code)] // Until the server's SIGHUP handler names them (issue 18).
    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for a new connection.
    #[allow(dead_code)] // Until connections take it (issue 18).
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a whole `Arc` (the writer only assigns one).
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again and, when they make a valid configuration, gives it to the
    /// connections accepted from now on. On an error the current configuration stays (the
    /// caller logs the error, which names the file and the fault).
    pub(crate) fn reload(&self) -> Result<(), TlsLoadError> {
        let config = load_with(&self.files, self.ticketer.clone())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }
}

/// A self-signed certificate for `localhost` and its key (ECDSA P-256, PKCS#8), as PEM, for
/// the TLS tests.
#[cfg(test)]
pub(crate) fn test_certificate() -> (String, String, CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("rcgen makes a certificate");
    (
        made.cert.pem(),
        made.signing_key.serialize_pem(),
        made.cert.der().clone(),
    )
}

/// A configuration from [`test_certificate`]'s PEM.
#[cfg(test)]
pub(crate) fn test_config(cert_pem: &str, key_pem: &str) -> Arc<ServerConfig> {
    let files = TlsFiles {
        cert: "cert.pem".into(),
        key: "key.pem".into(),
    };
    from_pem(
        &files,
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
        new_ticketer().expect("ticket keys"),
    )
    .expect("the test certificate loads")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    use super::*;

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "takhin-tls-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::File::create(&path)
                .unwrap()
                .write_all(bytes)
                .unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A full handshake in memory with rustls's buffered server: the certificate the client was
    /// served, and the ALPN both agreed.
    fn served_certificate(
        config: Arc<ServerConfig>,
        root: &CertificateDer<'static>,
    ) -> (CertificateDer<'static>, Option<Vec<u8>>) {
        let mut roots = RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let mut client_config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut client =
            ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = ServerConnection::new(config).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking());
        let served = client.peer_certificates().unwrap()[0].clone();
        (served, client.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[test]
    fn tls_config_loads_and_serves_the_certificate() {
        let (cert, key, der) = test_certificate();
        let dir = TempDir::new("load");
        let files = TlsFiles {
            cert: dir.write("cert.pem", cert.as_bytes()),
            // A key file with other blocks in front is fine.
            key: dir.write("key.pem", format!("{cert}{key}").as_bytes()),
        };
        let config = load(&files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(config.ticketer.enabled());
        let (served, alpn) = served_certificate(config, &der);
        assert_eq!(served, der);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    /// A SEC1 (`EC PRIVATE KEY`) key is read too (PKCS#1 takes the same path in pki-types:
    /// ring cannot make an RSA key for the test).
    #[test]
    fn tls_config_reads_a_sec1_key() {
        let (cert, key, der) = test_certificate();
        let pkcs8 = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let sec1 = sec1_of_pkcs8(pkcs8.secret_der());
        let sec1_pem = pem_block("EC PRIVATE KEY", &sec1);
        let files = TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        assert!(matches!(
            PrivateKeyDer::from_pem_slice(sec1_pem.as_bytes()).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
        let config = from_pem(
            &files,
            cert.as_bytes(),
            sec1_pem.as_bytes(),
            new_ticketer().unwrap(),
        )
        .unwrap();
        assert_eq!(served_certificate(config, &der).0, der);
    }

    /// The ECPrivateKey inside a PKCS#8 PrivateKeyInfo (SEQUENCE { INTEGER, SEQUENCE, OCTET
    /// STRING { ECPrivateKey } }), short DER lengths only, as ring writes them for P-256.
    fn sec1_of_pkcs8(der: &[u8]) -> Vec<u8> {
        fn header(b: &[u8]) -> (usize, usize) {
            // (header length, content length)
            if b[1] < 0x80 {
                (2, b[1] as usize)
            } else {
                let n = (b[1] & 0x7f) as usize;
                let len = b[2..2 + n]
                    .iter()
                    .fold(0usize, |acc, &x| acc << 8 | x as usize);
                (2 + n, len)
            }
        }
        let (h, _) = header(der);
        let mut rest = &der[h..];
        for _ in 0..2 {
            let (h, len) = header(rest);
            rest = &rest[h + len..];
        }
        assert_eq!(rest[0], 0x04, "an OCTET STRING");
        let (h, len) = header(rest);
        rest[h..h + len].to_vec()
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        const TABLE: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    #[test]
    fn tls_config_errors_name_the_file_and_the_fault() {
        let (cert, key, _) = test_certificate();
        let (other_cert, _, _) = test_certificate();
        let dir = TempDir::new("errors");
        let cert_path = dir.write("cert.pem", cert.as_bytes());
        let key_path = dir.write("key.pem", key.as_bytes());
        let missing = dir.0.join("missing.pem");
        let text = |files: TlsFiles| load(&files).unwrap_err().to_string();

        let e = text(TlsFiles {
            cert: missing.clone(),
            key: key_path.clone(),
        });
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );

        let e = text(TlsFiles {
            cert: key_path.clone(),
            key: key_path.clone(),
        });
        assert!(e.contains("key.pem") && e.contains("no certificate"), "{e}");

        let e = text(TlsFiles {
            cert: cert_path.clone(),
            key: cert_path.clone(),
        });
        assert!(
            e.contains("cert.pem") && e.contains("no private key"),
            "{e}"
        );

        let other = dir.write("other.pem", other_cert.as_bytes());
        let e = text(TlsFiles {
            cert: other,
            key: key_path.clone(),
        });
        assert!(
            e.contains("does not match") && e.contains("other.pem"),
            "{e}"
        );

        let encrypted = dir.write(
            "enc.pem",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = text(TlsFiles {
            cert: cert_path.clone(),
            key: encrypted,
        });
        assert!(e.contains("enc.pem") && e.contains("encrypted"), "{e}");

        // A damaged key: the message says what is wrong and quotes nothing of the file.
        let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let damaged = key.replacen(body[0], &format!("{}!!", body[0]), 1);
        let damaged_path = dir.write("damaged.pem", damaged.as_bytes());
        let e = text(TlsFiles {
            cert: cert_path.clone(),
            key: damaged_path,
        });
        assert!(
            e.contains("damaged.pem") && e.contains("not valid PEM"),
            "{e}"
        );
        for line in &body {
            assert!(!e.contains(&line[..16]), "{e}");
        }
        let unterminated = dir.write("cut.pem", key.lines().next().unwrap().as_bytes());
        let e = text(TlsFiles {
            cert: cert_path,
            key: unterminated,
        });
        assert!(e.contains("cut.pem") && e.contains("-----END"), "{e}");
    }

    #[test]
    fn tls_config_reload_keeps_the_old_configuration_on_error() {
        let (cert, key, der) = test_certificate();
        let dir = TempDir::new("reload");
        let files = TlsFiles {
            cert: dir.write("cert.pem", cert.as_bytes()),
            key: dir.write("key.pem", key.as_bytes()),
        };
        let tls = TlsReloadable::new(files.clone()).unwrap();
        let first = tls.current();
        assert!(Arc::ptr_eq(&first, &tls.current()));
        assert!(!format!("{tls:?}").contains("PRIVATE"));

        // A half-written certificate (as an editor or a copy leaves it): refused, old kept.
        dir.write("cert.pem", &cert.as_bytes()[..cert.len() / 2]);
        let e = tls.reload().unwrap_err();
        assert!(e.to_string().contains("cert.pem"), "{e}");
        assert!(Arc::ptr_eq(&first, &tls.current()));
        assert_eq!(served_certificate(tls.current(), &der).0, der);

        // A new pair: served to new connections.
        let (cert2, key2, der2) = test_certificate();
        dir.write("cert.pem", cert2.as_bytes());
        dir.write("key.pem", key2.as_bytes());
        tls.reload().unwrap();
        let second = tls.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(served_certificate(second, &der2).0, der2);
        // The ticket keys stay, so tickets issued before the reload still resume.
        assert!(Arc::ptr_eq(&first.ticketer, &tls.current().ticketer));
        assert_eq!(tls.files(), &files);
    }

    #[test]
    fn tls_config_refuses_a_huge_file() {
        let dir = TempDir::new("huge");
        let big = dir.write("big.pem", &vec![b'A'; (MAX_PEM_FILE + 1) as usize]);
        let e = load(&TlsFiles {
            cert: big.clone(),
            key: big,
        })
        .unwrap_err();
        assert!(matches!(e, TlsLoadError::TooLarge { .. }), "{e}");
    }
}
