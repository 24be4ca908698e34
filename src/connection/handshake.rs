//! The upgrade request: find the end of the head, parse it with httparse, let tungstenite
//! check it and build the `101` answer, or refuse with the right HTTP status.
//!
//! Pure code over bytes; the connection reads the head (bounded in size and time) and writes
//! what this returns.

use std::fmt::Write as _;

use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::server::create_response;
use tungstenite::http::{self, Request};

use super::extensions::{self, Deflate};
use crate::config::HubConfig;
use crate::security::{self, Access, Denied};

/// `Retry-After` of a 503, in seconds.
const RETRY_AFTER: &str = "5";

/// A client resuming a stream: `?since=<seq>&epoch=<epoch>` on the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// The last `seq` it saw.
    pub(crate) since: u64,
    /// The `epoch` of that `seq` (0 when not given: no stream has it, so the resume is told
    /// `recovered: false`).
    pub(crate) epoch: u64,
}

/// What to answer to a request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// A valid WebSocket upgrade: the `101` answer, the resume it asks for, and how
    /// permessage-deflate was negotiated (when it was).
    Upgrade(String, Option<Resume>, Option<Deflate>),
    /// A refusal: a complete HTTP answer, after which the connection closes.
    Refuse(String),
    /// Not for the WebSocket endpoint: the HTTP server takes the connection.
    Http,
}

/// The length of the head (through the blank line), once it is complete. The blank line is
/// `\r\n\r\n`, or a bare `\n` line ending as RFC 9112 §2.2 lets a server accept (httparse,
/// which parses the head next, does). Only bytes from `from` on are new: the search starts 2
/// bytes before them, so a head that arrives a byte at a time costs linear work, not quadratic.
pub(crate) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let tail = buf.get(start..)?;
    memchr::memchr_iter(b'\n', tail).find_map(|i| match tail.get(i + 1..) {
        Some([b'\n', ..]) => Some(start + i + 2),
        Some([b'\r', b'\n', ..]) => Some(start + i + 3),
        _ => None,
    })
}

/// The answer to a head over the size cap.
pub(crate) fn too_large() -> String {
    error_response(
        431,
        "Request Header Fields Too Large",
        "request head too large",
        &[],
    )
}

/// Decides what to answer to a complete request head: a foreign origin gets 403, a missing or
/// wrong token 401 (before anything else is looked at), a bad upgrade 400/405/426, and a full
/// hub 503. `admit` takes a place under the connection limit and is called last.
pub(crate) fn answer(head: &[u8], cfg: &HubConfig, admit: impl FnOnce() -> bool) -> Head {
    let request = match parse(head, cfg.max_headers) {
        Ok(r) => r,
        Err(refusal) => return Head::Refuse(refusal),
    };
    if request.uri().path() != cfg.ws_path {
        return Head::Http;
    }
    match security::check(cfg, Access::Viewer, request.headers(), request.uri()) {
        Ok(()) => {}
        Err(Denied::Origin) => {
            return Head::Refuse(error_response(403, "Forbidden", "origin not allowed", &[]))
        }
        Err(Denied::Token) => {
            return Head::Refuse(error_response(
                401,
                "Unauthorized",
                "missing or wrong token",
                &[("WWW-Authenticate", "Bearer")],
            ))
        }
    }
    let resume = match resume_of(request.uri()) {
        Ok(resume) => resume,
        Err(what) => return Head::Refuse(error_response(400, "Bad Request", what, &[])),
    };
    match create_response(&request) {
        Ok(_) if !admit() => Head::Refuse(error_response(
            503,
            "Service Unavailable",
            "the server is at its connection limit or shutting down",
            &[("Retry-After", RETRY_AFTER)],
        )),
        Ok(response) => {
            let mut out = String::from("HTTP/1.1 101 Switching Protocols\r\n");
            for (name, value) in response.headers() {
                let value = value.to_str().unwrap_or_default();
                let _ = write!(out, "{name}: {value}\r\n");
            }
            let offers = request
                .headers()
                .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS);
            let deflate = cfg
                .compression
                .then(|| extensions::negotiate(offers.iter().map(|v| v.as_bytes())))
                .flatten()
                .map(|(deflate, answer)| {
                    let _ = write!(out, "sec-websocket-extensions: {answer}\r\n");
                    deflate
                });
            out.push_str("\r\n");
            Head::Upgrade(out, resume, deflate)
        }
        Err(WsError::Protocol(ProtocolError::WrongHttpMethod)) => Head::Refuse(error_response(
            405,
            "Method Not Allowed",
            "the WebSocket endpoint takes GET",
            &[("Allow", "GET")],
        )),
        Err(WsError::Protocol(ProtocolError::MissingSecWebSocketVersionHeader)) => {
            Head::Refuse(error_response(
                426,
                "Upgrade Required",
                "WebSocket version 13 is required",
                &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
            ))
        }
        Err(e) => Head::Refuse(error_response(400, "Bad Request", &e.to_string(), &[])),
    }
}

/// `since` and `epoch` from the query, when `since` is there.
fn resume_of(uri: &http::Uri) -> Result<Option<Resume>, &'static str> {
    let mut since = None;
    let mut epoch = None;
    for (key, value) in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        let slot = match key {
            "since" => &mut since,
            "epoch" => &mut epoch,
            _ => continue,
        };
        *slot = Some(value.parse::<u64>().map_err(|_| {
            "since and epoch must be unsigned integers (the last seq and epoch seen)"
        })?);
    }
    Ok(since.map(|since| Resume {
        since,
        epoch: epoch.unwrap_or(0),
    }))
}

fn parse(head: &[u8], max_headers: usize) -> Result<Request<()>, String> {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(error_response(
                400,
                "Bad Request",
                "incomplete request head",
                &[],
            ))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(error_response(
                431,
                "Request Header Fields Too Large",
                "too many headers",
                &[],
            ))
        }
        Err(e) => return Err(error_response(400, "Bad Request", &e.to_string(), &[])),
    }
    let bad = |what: &str| error_response(400, "Bad Request", what, &[]);
    let mut builder = Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(match req.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder
        .body(())
        .map_err(|_| bad("malformed request line or header"))
}

/// A complete HTTP error answer with a small JSON body; the connection closes after it.
pub(crate) fn error_response(
    status: u16,
    reason: &str,
    message: &str,
    extra: &[(&str, &str)],
) -> String {
    let body = simd_json::to_string(&serde_error(message)).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out
}

fn serde_error(message: &str) -> std::collections::BTreeMap<&'static str, &str> {
    std::collections::BTreeMap::from([("error", message)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /api/monitoring/ws?token=x HTTP/1.1\r\nHost: localhost\r\n\
        Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    fn status_with(head: &str, cfg: &HubConfig, admit: bool) -> u16 {
        match answer(head.as_bytes(), cfg, || admit) {
            Head::Upgrade(r, ..) | Head::Refuse(r) => r[9..12].parse().unwrap(),
            Head::Http => 0,
        }
    }

    fn status(head: &str) -> u16 {
        status_with(head, &HubConfig::default(), true)
    }

    #[test]
    fn tokens_origins_and_the_limit_are_checked_before_the_upgrade() {
        let cfg = HubConfig::default()
            .viewer_token(Some("x".into()))
            .allowed_origins(vec!["http://ok.example".into()]);
        let no_token = UPGRADE.replace("?token=x", "");
        assert_eq!(status_with(&no_token, &cfg, true), 401);
        assert_eq!(status_with(UPGRADE, &cfg, true), 101);
        let foreign = UPGRADE.replace(
            "Host: localhost",
            "Host: localhost\r\nOrigin: http://evil.example",
        );
        assert_eq!(status_with(&foreign, &cfg, true), 403);
        assert_eq!(status_with(UPGRADE, &cfg, false), 503);
    }

    #[test]
    fn a_valid_upgrade_gets_101_with_the_rfc_accept_key() {
        let Head::Upgrade(r, None, None) =
            answer(UPGRADE.as_bytes(), &HubConfig::default(), || true)
        else {
            panic!("refused")
        };
        assert!(r.starts_with("HTTP/1.1 101 "));
        assert!(r.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_resume_is_read_from_the_query() {
        let with = |query: &str| {
            let head = UPGRADE.replace("?token=x", query);
            answer(head.as_bytes(), &HubConfig::default(), || true)
        };
        let resume = |since, epoch| Some(Resume { since, epoch });
        for (query, expected) in [
            ("?since=5&epoch=77", resume(5, 77)),
            ("?epoch=77&token=t&since=0", resume(0, 77)),
            ("?since=5", resume(5, 0)),
            ("?epoch=77", None),
            ("", None),
        ] {
            match with(query) {
                Head::Upgrade(_, r, _) => assert_eq!(r, expected, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
        for query in ["?since=-1&epoch=1", "?since=5&epoch=x", "?since=&epoch=1"] {
            let Head::Refuse(r) = with(query) else {
                panic!("{query} accepted")
            };
            assert!(r.starts_with("HTTP/1.1 400 "), "{query}: {r}");
            assert!(r.contains("since and epoch"), "{query}: {r}");
        }
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let other = UPGRADE.replace("/api/monitoring/ws", "/other");
        assert_eq!(status(&other), 0, "another path goes to the HTTP server");
        assert_eq!(status(&UPGRADE.replace("GET", "POST")), 405);
        assert_eq!(status(&UPGRADE.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            status(&UPGRADE.replace("Sec-WebSocket-Key", "X-Nothing")),
            400
        );
        assert_eq!(status(&UPGRADE.replace("Upgrade: websocket\r\n", "")), 400);
        assert_eq!(status("\x16\x03\x01garbage\r\n\r\n"), 400);
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status(&UPGRADE.replace("Host", &format!("{many}Host"))),
            431
        );
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", 0), None);
        // The blank line split across reads is still found from the new bytes' offset.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 17), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 15), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        // Bare LF line endings end the head too (the client gets an answer, not a timeout).
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 0), Some(26));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n", 0), None);
        // Fed a byte at a time, the end is found where the one-shot search finds it.
        let head = b"GET / HTTP/1.1\r\nHost: a\n\r\nbody";
        let one_shot = head_end(head, 0);
        let mut found = None;
        for len in 1..=head.len() {
            if let Some(end) = head_end(&head[..len], len - 1) {
                found = Some(end);
                break;
            }
        }
        assert_eq!((found, one_shot), (Some(26), Some(26)));
    }
}
