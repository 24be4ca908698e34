//! Tokens and origins: who may connect, read and change things.
//!
//! Tokens come as `Authorization: Bearer <token>` or, for browsers that cannot set headers on
//! a WebSocket, `?token=<token>`. They are compared in constant time and never logged.

use std::borrow::Cow;

use tungstenite::http::{HeaderMap, Uri};

use crate::config::HubConfig;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// WebSocket clients and REST reads: the viewer token (or the admin token).
    Viewer,
    /// Mutations and publish: the admin token.
    Admin,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// 401: missing or wrong token.
    Token,
    /// 403: a foreign origin.
    Origin,
}

/// Checks the origin, then the token.
pub(crate) fn check(
    cfg: &HubConfig,
    need: Access,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(), Denied> {
    let origin = headers.get("origin").and_then(|o| o.to_str().ok());
    if !origin_allowed(cfg, origin) {
        return Err(Denied::Origin);
    }
    let token = token_of(headers, uri);
    if authorized(cfg, need, token.as_deref()) {
        Ok(())
    } else {
        Err(Denied::Token)
    }
}

/// With no allowlist every origin is accepted; a request without `Origin` (not a browser) is
/// never refused for its origin.
pub(crate) fn origin_allowed(cfg: &HubConfig, origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(_) if cfg.allowed_origins.is_empty() => true,
        Some(o) => cfg
            .allowed_origins
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o)),
    }
}

/// Viewer access: open when no token is configured; else the viewer or the admin token.
/// Admin access: the admin token when one is configured; else whatever viewer access needs
/// (mutations are never more open than reads).
fn authorized(cfg: &HubConfig, need: Access, token: Option<&str>) -> bool {
    let is = |expected: &Option<String>| match (expected, token) {
        (Some(e), Some(t)) => constant_time_eq(e.as_bytes(), t.as_bytes()),
        _ => false,
    };
    match need {
        Access::Viewer => {
            cfg.viewer_token.is_none() || is(&cfg.viewer_token) || is(&cfg.admin_token)
        }
        Access::Admin if cfg.admin_token.is_some() => is(&cfg.admin_token),
        Access::Admin => authorized(cfg, Access::Viewer, token),
    }
}

/// The request's token: the `Authorization: Bearer` header first, then `?token=`.
pub(crate) fn token_of<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<Cow<'a, str>> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(Cow::Borrowed(rest.trim()));
        }
    }
    let query = uri.query()?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(percent_decode)
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Compares without an early exit, so the time taken says nothing about where a guess went
/// wrong. (The length of the expected token is not secret enough to hide.)
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>, uri: &str, origin: Option<&str>) -> (HeaderMap, Uri) {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert("authorization", a.parse().unwrap());
        }
        if let Some(o) = origin {
            h.insert("origin", o.parse().unwrap());
        }
        (h, uri.parse().unwrap())
    }

    fn cfg() -> HubConfig {
        HubConfig::default()
            .viewer_token(Some("view".into()))
            .admin_token(Some("admin s3cret".into()))
            .allowed_origins(vec!["https://dash.example.com".into()])
    }

    #[test]
    fn tokens_from_header_or_query() {
        let c = cfg();
        let ok = |a, u, need| {
            let (h, u) = req(a, u, None);
            check(&c, need, &h, &u)
        };
        assert_eq!(ok(None, "/x", Access::Viewer), Err(Denied::Token));
        assert_eq!(ok(Some("Bearer view"), "/x", Access::Viewer), Ok(()));
        assert_eq!(ok(None, "/x?a=1&token=view", Access::Viewer), Ok(()));
        assert_eq!(
            ok(Some("Bearer viewx"), "/x", Access::Viewer),
            Err(Denied::Token)
        );
        assert_eq!(
            ok(Some("Bearer view"), "/x", Access::Admin),
            Err(Denied::Token)
        );
        assert_eq!(ok(Some("bearer admin s3cret"), "/x", Access::Admin), Ok(()));
        assert_eq!(ok(None, "/x?token=admin%20s3cret", Access::Admin), Ok(()));
        assert_eq!(ok(None, "/x?token=admin+s3cret", Access::Viewer), Ok(()));
        assert_eq!(
            ok(Some("Basic dmlldw=="), "/x", Access::Viewer),
            Err(Denied::Token)
        );
    }

    #[test]
    fn open_by_default_and_mutations_never_more_open_than_reads() {
        let open = HubConfig::default();
        let (h, u) = req(None, "/", Some("https://anywhere.example"));
        assert_eq!(check(&open, Access::Admin, &h, &u), Ok(()));
        let view_only = HubConfig::default().viewer_token(Some("v".into()));
        assert_eq!(check(&view_only, Access::Admin, &h, &u), Err(Denied::Token));
        let (h, u) = req(Some("Bearer v"), "/", None);
        assert_eq!(check(&view_only, Access::Admin, &h, &u), Ok(()));
    }

    #[test]
    fn foreign_origins_are_refused_once_an_allowlist_exists() {
        let c = cfg();
        let (h, u) = req(Some("Bearer view"), "/", Some("https://evil.example"));
        assert_eq!(check(&c, Access::Viewer, &h, &u), Err(Denied::Origin));
        let (h, u) = req(Some("Bearer view"), "/", Some("https://DASH.example.com"));
        assert_eq!(check(&c, Access::Viewer, &h, &u), Ok(()));
        let (h, u) = req(Some("Bearer view"), "/", None);
        assert_eq!(check(&c, Access::Viewer, &h, &u), Ok(()));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
