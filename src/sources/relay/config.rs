//! Where the relay is and how it gets in: `redis[s]://[[USER]:PASSWORD@]HOST:PORT[/prefix]
//! [?ca=PATH]`, parsed once at start.
//!
//! The password never leaves this module in a form that prints: [`RelayConfig`]'s `Debug` and
//! [`RelayConfig::redacted`] show `***` in its place. `Display` alone writes it (percent-encoded),
//! because the server's options are merged by writing each one out and reading it back; nothing
//! logs through it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::RelayUrlError;

/// Where the relay is: `redis://HOST:PORT[/prefix]` (the prefix defaults to `takhin`), with
/// `USER:PASSWORD@` (Redis 6 ACL user) or `:PASSWORD@` (`requirepass`) before the host, both
/// percent-decoded, and `rediss://` for TLS, optionally `?ca=PATH` for the roots to trust.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// `HOST:PORT` of the Redis server.
    pub addr: String,
    /// Prefix of every Redis key and channel the hubs use; instances that share it share a
    /// stream.
    pub prefix: String,
    /// Who the relay says it is (`AUTH`), if Redis asks.
    credentials: Option<Credentials>,
    /// `Some` with `rediss://`.
    tls: Option<Tls>,
}

/// What the relay sends in `AUTH`.
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    /// The ACL user; `None` is the legacy `AUTH password` (the `default` user).
    user: Option<String>,
    password: String,
}

/// How a `rediss://` relay checks the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tls {
    /// PEM file of the roots to trust instead of the system's (a private CA).
    ca: Option<PathBuf>,
}

impl RelayConfig {
    /// The ACL user the relay authenticates as (`None`: no user, or no credentials at all).
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref()?.user.as_deref()
    }

    /// The user and password `AUTH` sends, if any.
    pub(super) fn auth(&self) -> Option<(Option<&str>, &str)> {
        let c = self.credentials.as_ref()?;
        Some((c.user.as_deref(), c.password.as_str()))
    }

    /// Whether the link is TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The PEM file of roots a `rediss://` link trusts in place of the system's (`?ca=`).
    pub fn ca(&self) -> Option<&Path> {
        self.tls.as_ref()?.ca.as_deref()
    }

    /// The host part of the address, without an IPv6 address's brackets: what the server's
    /// certificate must name.
    pub(super) fn host(&self) -> &str {
        let host = self.addr.rsplit_once(':').map_or("", |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The URL with the password as `***`: what logs show.
    pub fn redacted(&self) -> impl fmt::Display + '_ {
        Shown {
            config: self,
            password: false,
        }
    }
}

impl FromStr for RelayConfig {
    type Err = RelayUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("rediss://") {
            (true, rest)
        } else {
            (
                false,
                s.strip_prefix("redis://").ok_or(RelayUrlError::Form)?,
            )
        };
        // The authority ends at the first `/` or `?`; the credentials end at its last `@`, so a
        // password may hold a bare `@` or `:` but must escape `/`, `?` and `%`.
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, addr) = match authority.rsplit_once('@') {
            Some((userinfo, addr)) => (Some(userinfo), addr),
            None => (None, authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        let prefix = path.strip_prefix('/').unwrap_or(path);
        let prefix = if prefix.is_empty() { "takhin" } else { prefix };
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(RelayUrlError::Form);
        }
        if prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(RelayUrlError::Prefix);
        }
        let credentials = userinfo.map(credentials).transpose()?;
        let mut ca = None;
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("ca", path)) if tls && !path.is_empty() && ca.is_none() => {
                    ca = Some(PathBuf::from(decode(path)?));
                }
                _ => return Err(RelayUrlError::Query),
            }
        }
        Ok(Self {
            addr: addr.to_owned(),
            prefix: prefix.to_owned(),
            credentials,
            tls: tls.then_some(Tls { ca }),
        })
    }
}

/// `USER:PASSWORD` or `:PASSWORD`, percent-decoded; the password must not be empty.
fn credentials(userinfo: &str) -> Result<Credentials, RelayUrlError> {
    let (user, password) = userinfo.split_once(':').ok_or(RelayUrlError::Credentials)?;
    let (user, password) = (decode(user)?, decode(password)?);
    if password.is_empty() {
        return Err(RelayUrlError::Credentials);
    }
    Ok(Credentials {
        user: (!user.is_empty()).then_some(user),
        password,
    })
}

/// Percent-decodes `s` (`%40` is `@`); the result must be UTF-8. The error names no part of `s`:
/// it may be a password.
fn decode(s: &str) -> Result<String, RelayUrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(RelayUrlError::Escape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| RelayUrlError::Escape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| RelayUrlError::Escape)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RelayUrlError::Escape)
}

/// Writes `s` percent-encoded: everything but letters, digits, `-._~` (and `/` if `slash`).
fn encode(f: &mut fmt::Formatter<'_>, s: &str, slash: bool) -> fmt::Result {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (slash && b == b'/') {
            write!(f, "{}", char::from(b))?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// The URL, with or without its password.
struct Shown<'a> {
    config: &'a RelayConfig,
    password: bool,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.config;
        f.write_str(if c.tls.is_some() {
            "rediss://"
        } else {
            "redis://"
        })?;
        if let Some(cred) = &c.credentials {
            encode(f, cred.user.as_deref().unwrap_or(""), false)?;
            f.write_str(":")?;
            if self.password {
                encode(f, &cred.password, false)?;
            } else {
                f.write_str("***")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}/{}", c.addr, c.prefix)?;
        if let Some(ca) = c.ca() {
            f.write_str("?ca=")?;
            encode(f, &ca.to_string_lossy(), true)?;
        }
        Ok(())
    }
}

/// The whole URL, password included (percent-encoded), so that it parses back to the same
/// configuration: the server's options are merged that way. Logs use
/// [`RelayConfig::redacted`].
impl fmt::Display for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Shown {
            config: self,
            password: true,
        }
        .fmt(f)
    }
}

/// Without the password (`***`): the options, and so this, may be printed with `{:?}`.
impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("addr", &self.addr)
            .field("prefix", &self.prefix)
            .field("user", &self.user())
            .field("password", &self.credentials.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_server_and_the_prefix() {
        let c: RelayConfig = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(
            (c.addr.as_str(), c.prefix.as_str()),
            ("127.0.0.1:6379", "takhin")
        );
        assert_eq!((c.auth(), c.tls()), (None, false));
        let c: RelayConfig = "redis://redis.internal:7000/prod-a".parse().unwrap();
        assert_eq!(
            (c.addr.as_str(), c.prefix.as_str()),
            ("redis.internal:7000", "prod-a")
        );
        for bad in [
            "127.0.0.1:6379",
            "redis://host",
            "redis://:1",
            "redis://h:1/a b",
            "http://h:1",
            "redis://@h:1",
        ] {
            assert!(bad.parse::<RelayConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_a_user_and_a_password_or_a_password_alone_percent_decoded() {
        let c: RelayConfig = "redis://alice:s3cret@h:1/p".parse().unwrap();
        assert_eq!(c.auth(), Some((Some("alice"), "s3cret")));
        assert_eq!((c.addr.as_str(), c.prefix.as_str()), ("h:1", "p"));
        let c: RelayConfig = "redis://:s3cret@h:1".parse().unwrap();
        assert_eq!(c.auth(), Some((None, "s3cret")));
        assert_eq!(c.user(), None);
        // A bare `@` or `:` in the password is its own (the last `@` ends the credentials);
        // `/`, `?` and `%` come escaped, as does anything else.
        let c: RelayConfig = "redis://bob:p@ss:w@rd@h:1/p".parse().unwrap();
        assert_eq!(c.auth(), Some((Some("bob"), "p@ss:w@rd")));
        let c: RelayConfig = "redis://b%C3%B6b:a%2Fb%3Fc%25d%40e%3Af%20g@h:1/p"
            .parse()
            .unwrap();
        assert_eq!(c.auth(), Some((Some("böb"), "a/b?c%d@e:f g")));
        assert_eq!(c.prefix, "p");
        for (bad, why) in [
            ("redis://alice@h:1", RelayUrlError::Credentials),
            ("redis://alice:@h:1", RelayUrlError::Credentials),
            ("redis://:@h:1", RelayUrlError::Credentials),
            ("redis://:a%2@h:1", RelayUrlError::Escape),
            ("redis://:a%zz@h:1", RelayUrlError::Escape),
            ("redis://:a%FF@h:1", RelayUrlError::Escape),
            // An unescaped `/` ends the authority: what is left has no port.
            ("redis://:a/b@h:1", RelayUrlError::Form),
        ] {
            assert_eq!(bad.parse::<RelayConfig>(), Err(why), "{bad}");
        }
    }

    #[test]
    fn rediss_is_tls_with_the_system_roots_or_a_ca_file() {
        let c: RelayConfig = "rediss://:pw@redis.example.com:6380/prod".parse().unwrap();
        assert!(c.tls());
        assert_eq!((c.ca(), c.host()), (None, "redis.example.com"));
        let c: RelayConfig = "rediss://[::1]:6380?ca=/etc/takhin/redis%20ca.pem"
            .parse()
            .unwrap();
        assert_eq!(c.ca(), Some(Path::new("/etc/takhin/redis ca.pem")));
        assert_eq!((c.host(), c.prefix.as_str()), ("::1", "takhin"));
        for bad in [
            "redis://h:1/p?ca=/x.pem",
            "rediss://h:1/p?ca=",
            "rediss://h:1/p?ca=/a&ca=/b",
            "rediss://h:1/p?verify=no",
        ] {
            assert_eq!(
                bad.parse::<RelayConfig>(),
                Err(RelayUrlError::Query),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_url_reads_back_from_its_display_and_only_there_shows_the_password() {
        for url in [
            "redis://h:1/takhin",
            "redis://:pw@h:1/p",
            "redis://b%C3%B6b:a%2Fb%3Fc%25d%40e%3Af%20g@h:1/p",
            "rediss://alice:pw@[::1]:6380/p?ca=/etc/ca%20dir/ca.pem",
        ] {
            let c: RelayConfig = url.parse().unwrap();
            assert_eq!(c.to_string(), url);
            assert_eq!(c.to_string().parse::<RelayConfig>().unwrap(), c);
        }
        let c: RelayConfig = "rediss://alice:hunter2@h:1/p".parse().unwrap();
        assert_eq!(c.redacted().to_string(), "rediss://alice:***@h:1/p");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("alice") && debug.contains("***"), "{debug}");
        let c: RelayConfig = "redis://:hunter2@h:1/p".parse().unwrap();
        assert_eq!(c.redacted().to_string(), "redis://:***@h:1/p");
        assert!(!format!("{c:#?}").contains("hunter2"));
    }
}
