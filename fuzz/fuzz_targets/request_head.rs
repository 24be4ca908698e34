//! The request-head path of a connection: `handshake::head_end` fed in arbitrary chunk
//! splits (as reads arrive) against the one-shot result, under the hub's head-size cap, then
//! `handshake::answer` on the head with the default config and with a viewer token and an
//! origin allowlist.
//!
//! Input: byte 0 picks the chunk sizes; the rest is what the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use takhin_monitor::fuzz_support::{answer, head_end, too_large, Answer};
use takhin_monitor::HubConfig;

/// How the connection's read loop ends.
#[derive(Debug, PartialEq)]
enum Read {
    Head(usize),
    TooLarge,
    Eof,
}

/// The connection's loop (src/connection.rs `handshake`), reading `chunk()` bytes at a time.
fn read_head(input: &[u8], cap: usize, mut chunk: impl FnMut() -> usize) -> (Read, usize) {
    let mut buf = Vec::new();
    let mut scanned = 0;
    let mut pos = 0;
    loop {
        if let Some(end) = head_end(&buf, scanned) {
            assert!(
                end <= buf.len(),
                "head {end} past the {} bytes read",
                buf.len()
            );
            return (Read::Head(end), buf.len());
        }
        scanned = buf.len();
        if buf.len() >= cap {
            return (Read::TooLarge, buf.len());
        }
        if pos == input.len() {
            return (Read::Eof, buf.len());
        }
        let want = (buf.len() + 1024).min(cap);
        let n = chunk().clamp(1, want - buf.len()).min(input.len() - pos);
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
    }
}

/// Checks an answer's shape and returns its status (0 for `Http`).
fn status(a: &Answer) -> u16 {
    let r = match a {
        Answer::Http => return 0,
        Answer::Upgrade(r) | Answer::Refuse(r) => r,
    };
    assert!(r.starts_with("HTTP/1.1 "), "not an HTTP/1.1 answer: {r:?}");
    let code: u16 = r[9..12].parse().expect("a 3-digit status");
    assert_eq!(&r[12..13], " ");
    let (head, body) = r.split_once("\r\n\r\n").expect("a complete head");
    for line in head.split("\r\n") {
        assert!(
            !line.is_empty() && !line.contains(['\r', '\n']),
            "bad line in {r:?}"
        );
    }
    match a {
        Answer::Upgrade(_) => {
            assert_eq!(code, 101);
            assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(
                head.contains("\r\nsec-websocket-accept: ")
                    || head.contains("\r\nSec-WebSocket-Accept: "),
                "{r:?}"
            );
            assert!(body.is_empty(), "a 101 with a body");
        }
        _ => {
            assert!((400..600).contains(&code), "refused with {code}");
            let len = format!("\r\nContent-Length: {}\r\n", body.len());
            assert!(
                head.contains(&len),
                "Content-Length does not match in {r:?}"
            );
            assert!(
                body.starts_with("{\"error\":\"") && body.ends_with("\"}"),
                "{r:?}"
            );
        }
    }
    code
}

/// Answers `head` with `admit` granting or refusing a place, and checks the two agree.
fn answer_both(head: &[u8], cfg: &HubConfig) -> Answer {
    let mut asked = false;
    let admitted = answer(head, cfg, || {
        asked = true;
        true
    });
    let refused = answer(head, cfg, || false);
    let code = status(&admitted);
    assert_eq!(asked, code == 101, "admit asked for a {code}");
    if code == 101 {
        assert_eq!(status(&refused), 503, "a full hub must answer 503");
    } else {
        assert_eq!(admitted, refused, "admit changed a non-upgrade answer");
    }
    admitted
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctrl, input)) = data.split_first() else {
        return;
    };
    let open = HubConfig::default();
    let secured = HubConfig::default()
        .viewer_token(Some("s3cret".into()))
        .allowed_origins(vec!["http://ok.example".into()]);

    // Incremental against one-shot, in chunk sizes picked by `ctrl`, under the cap.
    let cap = open.max_request_head;
    let seen = &input[..input.len().min(cap)];
    let one_shot = head_end(seen, 0);
    if let Some(end) = one_shot {
        // The blank line: CRLF CRLF, or a bare LF line ending (LF LF, LF CRLF).
        assert!((2..=seen.len()).contains(&end));
        assert!(
            seen[..end].ends_with(b"\n\n") || seen[..end].ends_with(b"\n\r\n"),
            "ends at a blank line"
        );
        assert!(
            head_end(&seen[..end - 1], 0).is_none(),
            "not the first blank line"
        );
    }
    let max_chunk = [1usize, 2, 3, 7, 64, 1024][usize::from(ctrl) % 6];
    let mut state = u32::from(ctrl) | 1;
    let (read, len) = read_head(input, cap, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + state as usize % max_chunk
    });
    assert!(len <= input.len() && len <= cap);
    let expected = match one_shot {
        Some(end) => Read::Head(end),
        None if input.len() >= cap => Read::TooLarge,
        None => Read::Eof,
    };
    assert_eq!(read, expected, "incremental head_end differs from one-shot");
    // An arbitrary resume point never reports a head beyond the buffer.
    if let Some(end) = head_end(seen, usize::from(ctrl)) {
        assert!(end <= seen.len() && end >= 2);
    }

    // The answer, on the head when complete, else (never done by the hub) on all of it.
    let head = match read {
        Read::Head(end) => &input[..end],
        Read::TooLarge => {
            assert_eq!(status(&Answer::Refuse(too_large())), 431);
            return;
        }
        Read::Eof => input,
    };
    let a = answer_both(head, &open);
    let b = answer_both(head, &secured);
    // Same parse and path check: the configs differ only in who is let in.
    assert_eq!(a == Answer::Http, b == Answer::Http);
    if status(&b) == 101 {
        assert_eq!(
            status(&a),
            101,
            "the secured config let in what the open one refused"
        );
    }
});
