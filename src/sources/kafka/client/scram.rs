//! SCRAM (RFC 5802) with SHA-256 and SHA-512 (RFC 7677, and Kafka's KIP-84), the client's side:
//! the three messages and the check of the server's signature. Pure apart from the nonce; the
//! exchange itself is in `sasl.rs`.
//!
//! The crypto is ring's (HMAC, PBKDF2, SHA-2, the system's CSPRNG), which rustls already
//! brings: no second crypto library. No channel binding (`n,,`, as Kafka's clients), and the
//! user name is escaped (`=` and `,`) but not SASLprep-normalized, as Kafka's Java client does.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom as _};

/// The hash of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }
}

/// The fewest iterations accepted from a server: RFC 7677's minimum, which Kafka's own client
/// also enforces.
pub(crate) const MIN_ITERATIONS: u32 = 4096;

/// The most iterations accepted from a server. Kafka stores credentials with 4096 to 16384;
/// more is a server making each connect cost us CPU (PBKDF2 runs on the poll's thread), so a
/// generous bound, about 0.1 s of SHA-512 here.
pub(crate) const MAX_ITERATIONS: u32 = 65_536;

/// Why the exchange cannot go on: the server's message is not SCRAM, or its proof is wrong.
pub(crate) type ScramError = String;

/// A fresh client nonce: 24 bytes of the system's CSPRNG, base64 (printable, no comma).
pub(crate) fn nonce() -> Result<String, ScramError> {
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system gave no random bytes for the SCRAM nonce".to_owned())?;
    Ok(BASE64.encode(bytes))
}

/// `SaltedPassword := Hi(Normalize(password), salt, i)`, PBKDF2 with the mechanism's HMAC.
pub(crate) fn salted_password(
    hash: Hash,
    password: &str,
    salt: &[u8],
    iterations: NonZeroU32,
) -> Vec<u8> {
    let mut out = vec![0u8; hash.digest().output_len()];
    pbkdf2::derive(
        hash.pbkdf2(),
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

fn hmac(hash: Hash, key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hash.hmac(), key), data)
}

/// The client's state after its first message.
#[derive(Debug)]
pub(crate) struct ScramClient {
    hash: Hash,
    nonce: String,
    /// `n=user,r=nonce`, part of the AuthMessage.
    first_bare: String,
}

/// What checks the server's final message: its key and the AuthMessage it signs.
#[derive(Debug)]
pub(crate) struct ServerProof {
    hash: Hash,
    server_key: hmac::Tag,
    auth_message: String,
}

impl ScramClient {
    /// A client for `username` with `nonce` (from [`nonce`]).
    pub(crate) fn new(hash: Hash, username: &str, nonce: String) -> Self {
        let name = username.replace('=', "=3D").replace(',', "=2C");
        let first_bare = format!("n={name},r={nonce}");
        Self {
            hash,
            nonce,
            first_bare,
        }
    }

    /// client-first-message: no channel binding, no authorization identity.
    pub(crate) fn first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// client-final-message for `server_first`, and what checks the server's answer to it.
    pub(crate) fn last(
        &self,
        password: &str,
        server_first: &[u8],
    ) -> Result<(String, ServerProof), ScramError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the server's first SCRAM message is not UTF-8".to_owned())?;
        let attrs = attributes(server_first);
        if let Some(e) = attrs.get('e') {
            return Err(format!("the server refused: {e}"));
        }
        if server_first.starts_with("m=") {
            return Err("the server requires a SCRAM extension this client lacks".to_owned());
        }
        let nonce = attrs.get('r').ok_or("the server sent no nonce")?;
        // The server's nonce extends ours: otherwise the answer is not to this exchange.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err("the server's nonce does not extend the client's".to_owned());
        }
        let salt = attrs
            .get('s')
            .and_then(|s| BASE64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or("the server sent no salt, or not in base64")?;
        let iterations = attrs
            .get('i')
            .and_then(|i| i.parse::<u32>().ok())
            .ok_or("the server sent no iteration count")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "the server asks for {iterations} PBKDF2 iterations, outside \
                 {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            ));
        }
        let iterations = NonZeroU32::new(iterations).ok_or("0 iterations")?;

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let salted = salted_password(self.hash, password, &salt, iterations);
        let client_key = hmac(self.hash, &salted, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), client_key.as_ref());
        let signature = hmac(self.hash, stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(self.hash, &salted, b"Server Key");
        let message = format!("{without_proof},p={}", BASE64.encode(proof));
        Ok((
            message,
            ServerProof {
                hash: self.hash,
                server_key,
                auth_message,
            },
        ))
    }
}

impl ServerProof {
    /// Checks server-final-message: the server's signature of the exchange, which only a server
    /// that holds the credential can make (compared in constant time).
    pub(crate) fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final = std::str::from_utf8(server_final)
            .map_err(|_| "the server's final SCRAM message is not UTF-8".to_owned())?;
        let attrs = attributes(server_final);
        if let Some(e) = attrs.get('e') {
            return Err(format!("the server refused: {e}"));
        }
        let signature = attrs
            .get('v')
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or("the server sent no signature")?;
        let key = hmac::Key::new(self.hash.hmac(), self.server_key.as_ref());
        hmac::verify(&key, self.auth_message.as_bytes(), &signature).map_err(|_| {
            "the server's signature is wrong: it does not hold this user's credential (is it \
             the cluster you meant?)"
                .to_owned()
        })
    }
}

/// A SCRAM message's attributes (`a=value`, comma separated), the first of each letter.
struct Attributes<'a>(Vec<(char, &'a str)>);

impl<'a> Attributes<'a> {
    fn get(&self, name: char) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

fn attributes(message: &str) -> Attributes<'_> {
    Attributes(
        message
            .split(',')
            .filter_map(|a| {
                let (name, value) = a.split_once('=')?;
                let mut chars = name.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some((c, value)),
                    _ => None,
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: the SCRAM-SHA-256 exchange of user "user", password "pencil".
    #[test]
    fn rfc_7677_example() {
        let client = ScramClient::new(Hash::Sha256, "user", "rOprNGfwEbeRWgbNEkqO".to_owned());
        assert_eq!(client.first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (last, proof) = client.last("pencil", server_first.as_bytes()).unwrap();
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        proof
            .verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        let e = proof
            .verify(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap_err();
        assert!(e.contains("signature is wrong"), "{e}");
        let e = proof.verify(b"e=invalid-proof").unwrap_err();
        assert!(e.contains("invalid-proof"), "{e}");
    }

    /// SHA-512 against the server's side computed here from the salted password, as a broker
    /// stores it (StoredKey, ServerKey).
    #[test]
    fn sha_512_round_trip() {
        let hash = Hash::Sha512;
        let salt = b"some salt";
        let iterations = NonZeroU32::new(4096).unwrap();
        let salted = salted_password(hash, "secret", salt, iterations);
        assert_eq!(salted.len(), 64);
        let stored_key =
            digest::digest(&digest::SHA512, hmac(hash, &salted, b"Client Key").as_ref());
        let server_key = hmac(hash, &salted, b"Server Key");

        let client = ScramClient::new(hash, "a=b,c", nonce().unwrap());
        assert!(client.first().starts_with("n,,n=a=3Db=2Cc,r="));
        let first_bare = &client.first()[3..];
        let server_nonce = format!("{}SERVER", client.nonce);
        let server_first = format!("r={server_nonce},s={},i=4096", BASE64.encode(salt));
        let (last, proof) = client.last("secret", server_first.as_bytes()).unwrap();

        // The server: ClientSignature from StoredKey, ClientKey = proof ^ signature, and
        // H(ClientKey) must be StoredKey.
        let (without_proof, p) = last.rsplit_once(",p=").unwrap();
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac(hash, stored_key.as_ref(), auth.as_bytes());
        let client_key: Vec<u8> = BASE64
            .decode(p)
            .unwrap()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            digest::digest(&digest::SHA512, &client_key).as_ref(),
            stored_key.as_ref()
        );
        let server_signature = hmac(hash, server_key.as_ref(), auth.as_bytes());
        let server_final = format!("v={}", BASE64.encode(server_signature.as_ref()));
        proof.verify(server_final.as_bytes()).unwrap();

        // A wrong password makes another proof.
        let (other, _) = client.last("wrong", server_first.as_bytes()).unwrap();
        assert_ne!(other, last);
    }

    #[test]
    fn a_bad_server_first_message_is_refused() {
        let client = ScramClient::new(Hash::Sha256, "u", "abc".to_owned());
        let salt = BASE64.encode(b"salt");
        for (server_first, why) in [
            (format!("r=abc,s={salt},i=4096"), "does not extend"),
            (format!("r=xyzdef,s={salt},i=4096"), "does not extend"),
            ("r=abcdef,i=4096".to_owned(), "no salt"),
            ("r=abcdef,s=!!,i=4096".to_owned(), "no salt"),
            (format!("r=abcdef,s={salt}"), "no iteration count"),
            (format!("r=abcdef,s={salt},i=1"), "outside"),
            (format!("r=abcdef,s={salt},i=10000000"), "outside"),
            (format!("m=ext,r=abcdef,s={salt},i=4096"), "extension"),
            ("e=unknown-user".to_owned(), "unknown-user"),
            ("garbage".to_owned(), "no nonce"),
        ] {
            let e = client.last("p", server_first.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{server_first}: {e}");
        }
        assert!(client.last("p", &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn nonces_differ() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(!a.contains(','));
    }
}
