//! SASL on a new connection, after ApiVersions: `SaslHandshake` v1 names the mechanism, then
//! its tokens travel in `SaslAuthenticate` requests (KIP-152): one for PLAIN, two for SCRAM
//! (client-first, then client-final whose answer carries the server's signature, checked).
//!
//! A refusal is [`ClientError::Authentication`], naming the broker, the mechanism and the user
//! (never the password); the connection is dropped and the broker is tried again at the next
//! poll, after the source's backoff. The session lifetime a broker gives (KIP-368) is kept:
//! the client opens a new connection before the session ends rather than re-authenticating
//! on this one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;

use super::conn::Conn;
use super::scram::{self, ScramClient};
use super::security::{Mechanism, Sasl};
use super::ClientError;

/// The share of the session lifetime after which the connection is replaced: Kafka's clients
/// re-authenticate at 85 to 95 %, leaving the rest for the request under way.
const SESSION_SHARE: f64 = 0.85;

impl Conn {
    /// Authenticates this connection as `sasl` says.
    pub(super) fn authenticate(&mut self, sasl: &Sasl) -> Result<(), ClientError> {
        let mechanism = sasl.mechanism.name();
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let resp = match self.send(&handshake) {
            Ok(resp) => resp,
            // Some brokers hang up on a mechanism they lack instead of answering.
            Err(ClientError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                return Err(ClientError::SaslMechanism {
                    addr: self.addr.clone(),
                    mechanism,
                    others: "it closed the connection when asked for it".to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        match ResponseError::try_from_code(resp.error_code) {
            None => {}
            Some(ResponseError::UnsupportedSaslMechanism) => {
                // Some name the refused mechanism too: only the others are news.
                let others: Vec<&str> = resp
                    .mechanisms
                    .iter()
                    .map(|m| m.as_str())
                    .filter(|m| *m != mechanism)
                    .collect();
                let others = if others.is_empty() {
                    "it names no other".to_owned()
                } else {
                    format!("it enables: {}", others.join(", "))
                };
                return Err(ClientError::SaslMechanism {
                    addr: self.addr.clone(),
                    mechanism,
                    others,
                });
            }
            Some(error) => {
                return Err(ClientError::Refused {
                    addr: self.addr.clone(),
                    api: ApiKey::SaslHandshake,
                    error,
                    what: String::new(),
                })
            }
        }
        let started = Instant::now();
        let mut lifetime_ms = 0;
        match sasl.mechanism {
            Mechanism::Plain => {
                let token = plain_token(&sasl.username, sasl.password.expose());
                self.sasl_step(sasl, token, &mut lifetime_ms)?;
            }
            Mechanism::Scram(hash) => {
                let refused = |reason| self.auth_error(sasl, reason);
                let client =
                    ScramClient::new(hash, &sasl.username, scram::nonce().map_err(refused)?);
                let server_first =
                    self.sasl_step(sasl, client.first().into_bytes(), &mut lifetime_ms)?;
                let (last, proof) = client
                    .last(sasl.password.expose(), &server_first)
                    .map_err(|reason| self.auth_error(sasl, reason))?;
                let server_final = self.sasl_step(sasl, last.into_bytes(), &mut lifetime_ms)?;
                proof
                    .verify(&server_final)
                    .map_err(|reason| self.auth_error(sasl, reason))?;
            }
        }
        if lifetime_ms > 0 {
            let lifetime = Duration::from_millis(u64::try_from(lifetime_ms).unwrap_or(u64::MAX));
            self.session_ends = started.checked_add(lifetime.mul_f64(SESSION_SHARE));
        }
        Ok(())
    }

    /// Sends one SASL token and returns the broker's. A broker that hangs up instead of
    /// answering (some do when the credentials are wrong) is a refusal too.
    fn sasl_step(
        &mut self,
        sasl: &Sasl,
        token: Vec<u8>,
        lifetime_ms: &mut i64,
    ) -> Result<Bytes, ClientError> {
        let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
        let resp = match self.send(&req) {
            Ok(resp) => resp,
            Err(ClientError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                return Err(self.auth_error(
                    sasl,
                    "the broker closed the connection during authentication".to_owned(),
                ));
            }
            Err(e) => return Err(e),
        };
        if let Some(error) = ResponseError::try_from_code(resp.error_code) {
            let message = resp
                .error_message
                .as_ref()
                .map(|m| m.as_str())
                .filter(|m| !m.is_empty() && *m != "NONE")
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(self.auth_error(sasl, message));
        }
        if resp.session_lifetime_ms > 0 {
            *lifetime_ms = resp.session_lifetime_ms;
        }
        Ok(resp.auth_bytes)
    }

    fn auth_error(&self, sasl: &Sasl, reason: String) -> ClientError {
        ClientError::Authentication {
            addr: self.addr.clone(),
            mechanism: sasl.mechanism.name(),
            user: sasl.username.clone(),
            reason,
        }
    }
}

/// PLAIN's one message (RFC 4616): authzid (empty: the user itself), user, password, NUL
/// separated.
fn plain_token(user: &str, password: &str) -> Vec<u8> {
    let mut token = Vec::with_capacity(2 + user.len() + password.len());
    token.push(0);
    token.extend_from_slice(user.as_bytes());
    token.push(0);
    token.extend_from_slice(password.as_bytes());
    token
}

/// The exchange over the wire against a scripted peer: tansu 0.6.0 never lets a user
/// authenticate (see tests/common/tansu.rs), so a successful PLAIN or SCRAM login is shown
/// here, the peer answering as Kafka does (RFC 5802's server side for SCRAM).
#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::num::NonZeroU32;
    use std::thread;

    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use bytes::{Buf, BufMut};
    use ring::{digest, hmac};

    use super::super::scram::{salted_password, Hash};
    use super::super::security::{Dial, Password};
    use super::*;

    /// What the peer answers one SaslAuthenticate token with: its token and session lifetime,
    /// or an error message.
    type Step = Box<dyn FnMut(&[u8]) -> Result<(Vec<u8>, i64), String> + Send>;

    /// A broker for one connection, hand-encoded in non-flexible versions (as
    /// tests/kafka.rs's `answers_api_versions`): it refuses ApiVersions v3 in v0's format so
    /// the client asks again in v2, lists Metadata 1-13, SaslHandshake 1 and SaslAuthenticate
    /// 0-1, enables `enabled` in SaslHandshake and answers each SaslAuthenticate with `step`.
    fn peer(enabled: &'static [&'static str], mut step: Step) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            while let Some((key, version, correlation, mut body)) = request(&mut s) {
                let mut out = Vec::new();
                match (key, version) {
                    (18, 3) => {
                        out.put_i16(35); // UNSUPPORTED_VERSION, v0: the versions it speaks
                        out.put_i32(1);
                        out.extend_from_slice(&[0, 18, 0, 0, 0, 2]);
                    }
                    (18, 2) => {
                        out.put_i16(0);
                        out.put_i32(3);
                        for (k, lo, hi) in [(3i16, 1i16, 13i16), (17, 1, 1), (36, 0, 1)] {
                            out.put_i16(k);
                            out.put_i16(lo);
                            out.put_i16(hi);
                        }
                        out.put_i32(0); // throttle
                    }
                    (17, 1) => {
                        let mechanism = string(&mut body);
                        let ok = enabled.contains(&mechanism.as_str());
                        out.put_i16(if ok { 0 } else { 33 });
                        out.put_i32(i32::try_from(enabled.len()).unwrap());
                        for m in enabled {
                            put_string(&mut out, m);
                        }
                    }
                    (36, 1) => {
                        let len = usize::try_from(body.get_i32()).unwrap();
                        match step(&body[..len]) {
                            Ok((token, lifetime)) => {
                                out.put_i16(0);
                                out.put_i16(-1); // no message
                                out.put_i32(i32::try_from(token.len()).unwrap());
                                out.extend_from_slice(&token);
                                out.put_i64(lifetime);
                            }
                            Err(message) => {
                                out.put_i16(58); // SASL_AUTHENTICATION_FAILED
                                put_string(&mut out, &message);
                                out.put_i32(0);
                                out.put_i64(0);
                            }
                        }
                    }
                    other => panic!("unexpected request {other:?}"),
                }
                let mut frame = Vec::new();
                frame.put_i32(i32::try_from(out.len() + 4).unwrap());
                frame.put_i32(correlation);
                frame.extend_from_slice(&out);
                s.write_all(&frame).unwrap();
            }
        });
        addr
    }

    /// The next request: API key, version, correlation id and body (after header v1 or v2's
    /// client id; every request here has no tagged fields in its header that matter).
    fn request(s: &mut TcpStream) -> Option<(i16, i16, i32, bytes::Bytes)> {
        let mut size = [0u8; 4];
        s.read_exact(&mut size).ok()?;
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap()];
        s.read_exact(&mut body).unwrap();
        let mut body = bytes::Bytes::from(body);
        let (key, version, correlation) = (body.get_i16(), body.get_i16(), body.get_i32());
        string(&mut body); // client id
        if (key, version) == (18, 3) {
            body.get_u8(); // header v2's tagged fields
        }
        Some((key, version, correlation, body))
    }

    fn string(body: &mut bytes::Bytes) -> String {
        let len = usize::try_from(body.get_i16()).unwrap_or(0);
        String::from_utf8(body.split_to(len).to_vec()).unwrap()
    }

    fn put_string(out: &mut Vec<u8>, s: &str) {
        out.put_i16(i16::try_from(s.len()).unwrap());
        out.extend_from_slice(s.as_bytes());
    }

    fn dial(mechanism: Mechanism, user: &str, password: &str) -> Dial {
        let mut dial = Dial::plain("t", Duration::from_secs(5));
        dial.sasl = Some(Sasl {
            mechanism,
            username: user.to_owned(),
            password: Password::from(password.to_owned()),
        });
        dial
    }

    #[test]
    fn plain_sends_the_user_and_password_and_keeps_the_session_lifetime() {
        let addr = peer(
            &["PLAIN", "SCRAM-SHA-512"],
            Box::new(|token| {
                assert_eq!(token, b"\0alice\0pa\0ss");
                Ok((Vec::new(), 10_000))
            }),
        );
        let before = Instant::now();
        let conn = Conn::connect(&addr, &dial(Mechanism::Plain, "alice", "pa\0ss")).unwrap();
        let after = Instant::now();
        // Replaced at 85 % of the 10 s the broker gave.
        assert!(!conn.session_ended(after + Duration::from_millis(8_400)));
        assert!(conn.session_ended(before + Duration::from_millis(8_600)));
    }

    #[test]
    fn a_refusal_names_the_user_and_the_brokers_message_not_the_password() {
        let addr = peer(
            &["PLAIN"],
            Box::new(|_| Err("Invalid username or password".to_owned())),
        );
        let e = Conn::connect(&addr, &dial(Mechanism::Plain, "alice", "hunter2")).unwrap_err();
        assert!(matches!(e, ClientError::Authentication { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains(
                "refused SASL PLAIN authentication as \"alice\": Invalid username or password"
            ),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");

        let addr = peer(&["SCRAM-SHA-256"], Box::new(|_| unreachable!()));
        let e = Conn::connect(&addr, &dial(Mechanism::Plain, "alice", "hunter2")).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("does not enable SASL mechanism PLAIN (it enables: SCRAM-SHA-256)"),
            "{e}"
        );
    }

    /// A SCRAM-SHA-512 server holding alice's credential (salt, iterations, StoredKey,
    /// ServerKey) as a broker stores it; `forged`: one that does not hold it and signs with
    /// another key.
    fn scram_server(password: &'static str, forged: bool) -> Step {
        let hash = Hash::Sha512;
        let salt = b"alice's salt".to_vec();
        let salted = salted_password(hash, password, &salt, NonZeroU32::new(4096).unwrap());
        let key = |data: &[u8]| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, &salted), data);
        let stored_key = digest::digest(&digest::SHA512, key(b"Client Key").as_ref());
        let server_key = key(if forged { b"Other Key" } else { b"Server Key" });
        // client-first-message-bare and server-first-message, for the AuthMessage.
        let (mut bare, mut server_first) = (String::new(), String::new());
        Box::new(move |token| {
            let message = std::str::from_utf8(token).unwrap();
            if let Some(first) = message.strip_prefix("n,,") {
                let nonce = first.split_once(",r=").unwrap().1;
                bare = first.to_owned();
                server_first = format!("r={nonce}SERVER,s={},i=4096", BASE64.encode(&salt));
                return Ok((server_first.clone().into_bytes(), 0));
            }
            let (without_proof, proof) = message.rsplit_once(",p=").unwrap();
            let auth = format!("{bare},{server_first},{without_proof}");
            let signature = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA512, stored_key.as_ref()),
                auth.as_bytes(),
            );
            let client_key: Vec<u8> = BASE64
                .decode(proof)
                .unwrap()
                .iter()
                .zip(signature.as_ref())
                .map(|(p, s)| p ^ s)
                .collect();
            if digest::digest(&digest::SHA512, &client_key).as_ref() != stored_key.as_ref() {
                return Err(
                    "Authentication failed during authentication due to invalid \
                            credentials with SASL mechanism SCRAM-SHA-512"
                        .to_owned(),
                );
            }
            let verifier = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA512, server_key.as_ref()),
                auth.as_bytes(),
            );
            Ok((
                format!("v={}", BASE64.encode(verifier.as_ref())).into_bytes(),
                60_000,
            ))
        })
    }

    #[test]
    fn scram_authenticates_and_checks_the_servers_signature() {
        let scram = Mechanism::Scram(Hash::Sha512);
        let addr = peer(&["SCRAM-SHA-512"], scram_server("secret", false));
        let conn = Conn::connect(&addr, &dial(scram, "alice", "secret")).unwrap();
        assert!(conn.session_ends.is_some());

        let addr = peer(&["SCRAM-SHA-512"], scram_server("secret", false));
        let e = Conn::connect(&addr, &dial(scram, "alice", "wrong")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("invalid credentials"), "{e}");
        assert!(!e.contains("wrong"), "{e}");

        // A server without alice's credential cannot sign the exchange: refused by the client.
        let addr = peer(&["SCRAM-SHA-512"], scram_server("secret", true));
        let e = Conn::connect(&addr, &dial(scram, "alice", "secret")).unwrap_err();
        assert!(e.to_string().contains("signature is wrong"), "{e}");
    }

    #[test]
    fn the_plain_token() {
        assert_eq!(plain_token("u", "p"), b"\0u\0p");
    }
}
