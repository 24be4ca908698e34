//! The answer to a client's `Sec-WebSocket-Extensions` offers: permessage-deflate (RFC 7692)
//! or nothing.
//!
//! Pure code over the header values; the handshake passes them in and writes the answer.
//!
//! The values are parsed with RFC 6455 §9.1's grammar: a comma-separated list of offers, each
//! a token followed by `;`-separated parameters, a parameter's value a token or a quoted
//! string (`"15"` means `15`). Whitespace is allowed around every separator and names compare
//! case-insensitively. An offer that is not `permessage-deflate`, or is malformed or not
//! ASCII, is skipped and the next one is tried; only a quoted string left open, which hides
//! where the offers end, stops the search. A header we cannot use never fails the upgrade: the
//! connection then simply goes without compression.
//!
//! A `permessage-deflate` offer is declined, as RFC 7692 §7 requires, when it has an unknown
//! or repeated parameter, a value on a `*_no_context_takeover` parameter, or a window size
//! outside 8..=15 (`server_max_window_bits` must have one, `client_max_window_bits` may not).
//!
//! The answer always has `server_no_context_takeover`, because each broadcast is compressed
//! once, from a fresh window, for every client; and `client_no_context_takeover`, which RFC
//! 7692 §7.1.1.2 lets a server add to any answer, so no connection keeps an inflate window
//! between messages. It never has `client_max_window_bits` (§7.1.2.2 lets the server omit
//! it): the inflater's 15-bit window reads whatever window the client compresses with. A
//! client's `server_max_window_bits=N` is echoed. Below 15 the client cannot read the shared,
//! full-window broadcasts, so it gets every server message uncompressed, which RFC 7692 allows
//! per message; [`Deflate::full_window`] says which case it is.
//!
//! The work is linear in the input: each byte is looked at twice (once to find where its
//! offer ends, once to parse the offer) and the search stops at the first accepted offer.

use std::borrow::Cow;

/// The extension this module negotiates.
const PERMESSAGE_DEFLATE: &[u8] = b"permessage-deflate";

/// The answer's fixed part (the window size of a client that asked for one follows).
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The largest LZ77 window, as a power of two (32 KiB).
const FULL_WINDOW_BITS: u8 = 15;

/// How a client's permessage-deflate offer was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The client takes server messages compressed with the full 32 KiB window (its accepted
    /// offer did not ask for `server_max_window_bits` below 15): the broadcasts compressed once
    /// for everyone can go to it. A client that asked for a smaller window still negotiates
    /// (its compressed messages are inflated), but every server message goes to it uncompressed,
    /// which RFC 7692 allows per message.
    pub(crate) full_window: bool,
}

/// The first acceptable `permessage-deflate` offer among the values of the request's
/// `Sec-WebSocket-Extensions` headers (in the order they came; each value is a comma-separated
/// list of offers). Returns how it was accepted and the value of the answer's
/// `Sec-WebSocket-Extensions` header, or `None` when nothing is acceptable (the upgrade then
/// goes on without compression; it never fails because of this header).
pub(crate) fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Option<(Deflate, String)> {
    for value in values {
        let mut rest = value;
        loop {
            let (offer, next) = split_offer(rest)?;
            if let Some(server_bits) = accept(offer) {
                return Some(answer(server_bits));
            }
            match next {
                Some(next) => rest = next,
                None => break,
            }
        }
    }
    None
}

/// The answer to an accepted offer that asked for `server_bits` (`None`: no limit).
fn answer(server_bits: Option<u8>) -> (Deflate, String) {
    let mut header = String::from(ANSWER);
    if let Some(bits) = server_bits {
        header.push_str("; server_max_window_bits=");
        header.push_str(itoa::Buffer::new().format(bits));
    }
    let full_window = !matches!(server_bits, Some(bits) if bits < FULL_WINDOW_BITS);
    (Deflate { full_window }, header)
}

/// The first offer of a list and the rest after its comma (`None`: it was the last), or `None`
/// when a quoted string is left open (where the offer ends cannot be known).
fn split_offer(list: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let mut i = 0;
    let mut quoted = false;
    while let Some(&b) = list.get(i) {
        match (quoted, b) {
            (false, b',') => return Some((&list[..i], Some(&list[i + 1..]))),
            (_, b'"') => quoted = !quoted,
            // The escaped byte, whatever it is, neither closes the string nor ends the offer.
            (true, b'\\') => i += 1,
            _ => {}
        }
        i += 1;
    }
    (!quoted).then_some((list, None))
}

/// The parameters of a `permessage-deflate` offer.
#[derive(Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: bool,
}

/// Whether `offer` (one list element, without its comma) is an acceptable `permessage-deflate`
/// offer, and if so the `server_max_window_bits` it asked for: `None` when declined (another
/// extension, an empty element, bad syntax or a parameter RFC 7692 does not let us accept),
/// `Some(None)` when accepted without a server window limit.
fn accept(offer: &[u8]) -> Option<Option<u8>> {
    let mut cur = Cursor { rest: offer };
    cur.skip_ows();
    if !cur.token()?.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
        return None;
    }
    let mut params = Params::default();
    loop {
        cur.skip_ows();
        if cur.rest.is_empty() {
            return Some(params.server_max_window_bits);
        }
        cur.expect(b';')?;
        cur.skip_ows();
        let name = cur.token()?;
        cur.skip_ows();
        let value = if cur.rest.first() == Some(&b'=') {
            cur.expect(b'=')?;
            cur.skip_ows();
            Some(cur.value()?)
        } else {
            None
        };
        params.set(name, value.as_deref())?;
    }
}

impl Params {
    /// Records one parameter, or `None` when it makes the offer unacceptable.
    fn set(&mut self, name: &[u8], value: Option<&[u8]>) -> Option<()> {
        /// Sets a flag that must not be set yet.
        fn once(flag: &mut bool) -> Option<()> {
            (!std::mem::replace(flag, true)).then_some(())
        }
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("server_no_context_takeover") {
            value.is_none().then_some(())?;
            once(&mut self.server_no_context_takeover)
        } else if is("client_no_context_takeover") {
            value.is_none().then_some(())?;
            once(&mut self.client_no_context_takeover)
        } else if is("server_max_window_bits") {
            let bits = window_bits(value?)?;
            self.server_max_window_bits
                .replace(bits)
                .is_none()
                .then_some(())
        } else if is("client_max_window_bits") {
            if let Some(value) = value {
                window_bits(value)?;
            }
            once(&mut self.client_max_window_bits)
        } else {
            None
        }
    }
}

/// A window size parameter's value: exactly a decimal 8..=15, no sign or leading zero.
fn window_bits(value: &[u8]) -> Option<u8> {
    match *value {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// Reads one offer from the front.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// Skips optional whitespace (SP and HTAB).
    fn skip_ows(&mut self) {
        let n = self
            .rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        self.rest = &self.rest[n..];
    }

    /// Takes `byte`, or `None` when something else comes first.
    fn expect(&mut self, byte: u8) -> Option<()> {
        let rest = self.rest.strip_prefix(&[byte])?;
        self.rest = rest;
        Some(())
    }

    /// Takes a non-empty token.
    fn token(&mut self) -> Option<&'a [u8]> {
        let n = self.rest.iter().take_while(|&&b| is_tchar(b)).count();
        let (token, rest) = self.rest.split_at(n);
        self.rest = rest;
        (n > 0).then_some(token)
    }

    /// Takes a parameter's value, a token or a quoted string (returned without its quotes and
    /// escapes).
    fn value(&mut self) -> Option<Cow<'a, [u8]>> {
        if self.rest.first() != Some(&b'"') {
            return self.token().map(Cow::Borrowed);
        }
        let body = &self.rest[1..];
        let mut unescaped: Option<Vec<u8>> = None;
        let mut i = 0;
        loop {
            match *body.get(i)? {
                b'"' => {
                    self.rest = &body[i + 1..];
                    return Some(match unescaped {
                        Some(v) => Cow::Owned(v),
                        None => Cow::Borrowed(&body[..i]),
                    });
                }
                b'\\' => {
                    let escaped = *body.get(i + 1)?;
                    if !(escaped == b'\t' || (b' '..=b'~').contains(&escaped)) {
                        return None;
                    }
                    unescaped
                        .get_or_insert_with(|| body[..i].to_vec())
                        .push(escaped);
                    i += 2;
                }
                b if b == b'\t' || (b' '..=b'~').contains(&b) => {
                    if let Some(v) = &mut unescaped {
                        v.push(b);
                    }
                    i += 1;
                }
                // Control bytes and non-ASCII (RFC 9110's obs-text, refused here).
                _ => return None,
            }
        }
    }
}

/// A byte of a token (RFC 9110 §5.6.2 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `negotiate` over header values given as strings.
    fn neg(values: &[&str]) -> Option<(Deflate, String)> {
        negotiate(values.iter().map(|v| v.as_bytes()))
    }

    /// The expected acceptance: full window or not, and the answer.
    fn yes(full_window: bool, answer: &str) -> Option<(Deflate, String)> {
        Some((Deflate { full_window }, answer.to_string()))
    }

    const PLAIN: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    fn plain() -> Option<(Deflate, String)> {
        yes(true, PLAIN)
    }

    fn with_bits(bits: u8) -> Option<(Deflate, String)> {
        yes(
            bits == 15,
            &format!("{PLAIN}; server_max_window_bits={bits}"),
        )
    }

    #[test]
    fn no_header_or_no_permessage_deflate_negotiates_nothing() {
        assert_eq!(neg(&[]), None);
        assert_eq!(neg(&[""]), None);
        assert_eq!(neg(&["x-webkit-deflate-frame"]), None);
        assert_eq!(neg(&["foo; bar=1, baz"]), None);
        assert_eq!(neg(&["permessage-deflatex"]), None);
    }

    #[test]
    fn browsers_offers_are_accepted_with_the_full_window() {
        // Firefox.
        assert_eq!(neg(&["permessage-deflate"]), plain());
        // Chrome.
        assert_eq!(
            neg(&["permessage-deflate; client_max_window_bits"]),
            plain()
        );
        assert_eq!(
            neg(&["permessage-deflate; client_max_window_bits=10"]),
            plain()
        );
    }

    #[test]
    fn autobahn_offers() {
        let base = "permessage-deflate; client_no_context_takeover; client_max_window_bits";
        assert_eq!(neg(&[base]), plain());
        let both = format!("{base}; server_no_context_takeover");
        assert_eq!(neg(&[&both]), plain());
        assert_eq!(
            neg(&[&format!("{both}; server_max_window_bits=9")]),
            with_bits(9)
        );
        assert_eq!(
            neg(&[&format!("{both}; server_max_window_bits=15")]),
            with_bits(15)
        );
        assert_eq!(
            neg(&["permessage-deflate; server_max_window_bits=8"]),
            with_bits(8)
        );
        assert_eq!(
            neg(&["permessage-deflate; server_max_window_bits=14"]),
            with_bits(14)
        );
    }

    #[test]
    fn a_declined_offer_falls_through_to_the_next() {
        assert_eq!(
            neg(&["permessage-deflate; server_max_window_bits=7, permessage-deflate"]),
            plain()
        );
        assert_eq!(
            neg(&[
                "permessage-deflate; server_max_window_bits=16",
                "permessage-deflate; server_max_window_bits=12",
                "permessage-deflate",
            ]),
            with_bits(12)
        );
        assert_eq!(
            neg(&["x-webkit-deflate-frame", "permessage-deflate"]),
            plain()
        );
        assert_eq!(
            neg(&["x-webkit-deflate-frame, permessage-deflate"]),
            plain()
        );
        // The first acceptable one wins, even when a later one would be "better".
        assert_eq!(
            neg(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"]),
            with_bits(10)
        );
    }

    #[test]
    fn quoted_values_mean_their_contents() {
        assert_eq!(
            neg(&[r#"permessage-deflate; server_max_window_bits="10""#]),
            with_bits(10)
        );
        assert_eq!(
            neg(&[r#"permessage-deflate; server_max_window_bits="1\5""#]),
            with_bits(15)
        );
        assert_eq!(
            neg(&[r#"permessage-deflate; client_max_window_bits="9""#]),
            plain()
        );
        assert_eq!(
            neg(&[r#"permessage-deflate; server_max_window_bits="""#]),
            None
        );
        assert_eq!(
            neg(&[r#"permessage-deflate; server_max_window_bits="10 ""#]),
            None
        );
        // Commas and semicolons inside quotes split nothing: the first offer is one unknown
        // parameter's, declined, and the second is accepted.
        assert_eq!(
            neg(&[r#"permessage-deflate; foo="a, b; \"c,", permessage-deflate"#]),
            plain()
        );
        assert_eq!(
            neg(&[r#"x-foo; a="permessage-deflate, permessage-deflate""#]),
            None
        );
    }

    #[test]
    fn an_open_quote_stops_the_search() {
        assert_eq!(neg(&[r#"x-foo; a="b, permessage-deflate"#]), None);
        assert_eq!(neg(&[r#"x-foo; a="b\", permessage-deflate"#]), None);
        // An accepted offer before it still stands.
        assert_eq!(neg(&[r#"permessage-deflate, x-foo; a="b"#]), plain());
    }

    #[test]
    fn bad_parameters_decline_the_offer() {
        for offer in [
            // Unknown.
            "permessage-deflate; foo",
            "permessage-deflate; foo=1",
            // Twice.
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=9; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=9; server_max_window_bits=9",
            "permessage-deflate; server_max_window_bits=9; SERVER_MAX_WINDOW_BITS=10",
            // Values where none is allowed.
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=true",
            r#"permessage-deflate; client_no_context_takeover="""#,
            // Window sizes.
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; server_max_window_bits=1e1",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=",
        ] {
            assert_eq!(neg(&[offer]), None, "{offer}");
            assert_eq!(
                neg(&[&format!("{offer}, permessage-deflate")]),
                plain(),
                "{offer}"
            );
        }
    }

    #[test]
    fn malformed_or_non_ascii_offers_are_skipped() {
        for offer in [
            "permessage-deflate;",
            "permessage-deflate; ",
            "permessage-deflate;;server_no_context_takeover",
            "permessage-deflate server_no_context_takeover",
            "permessage-deflate; =9",
            "permessage-deflate; server_max_window_bits==9",
            "permessage-deflate; server_max_window_bits=9 9",
            "permessage-deflate; server_max_window_bits=\"9\"x",
            "permessage-deflate; client_max_window_bits=\"9\u{e9}\"",
            "permessage-deflate; client_max_window_bits=\u{e9}",
            "permessage-deflate\u{e9}",
            "\u{e9}permessage-deflate",
            "; permessage-deflate",
            "\"permessage-deflate\"",
            "permessage-deflate; client_max_window_bits=\"\\\u{1}9\"",
        ] {
            assert_eq!(neg(&[offer]), None, "{offer:?}");
            assert_eq!(
                neg(&[&format!("{offer}, permessage-deflate")]),
                plain(),
                "{offer:?}"
            );
        }
        // A raw non-ASCII byte that is not UTF-8.
        assert_eq!(negotiate([&b"permessage-deflate\xff"[..]]), None);
        assert_eq!(
            negotiate([&b"permessage-deflate; a=\xff, permessage-deflate"[..]]),
            plain()
        );
    }

    #[test]
    fn names_are_case_insensitive_and_whitespace_is_allowed() {
        assert_eq!(
            neg(&["PerMessage-Deflate; Client_Max_Window_Bits; SERVER_MAX_WINDOW_BITS=11"]),
            with_bits(11)
        );
        assert_eq!(
            neg(&[concat!(
                " \t permessage-deflate \t;\tserver_max_window_bits \t= \t\"12\" ",
                "; client_max_window_bits = 9 \t",
            )]),
            with_bits(12)
        );
        assert_eq!(
            neg(&["permessage-deflate;server_no_context_takeover"]),
            plain()
        );
    }

    #[test]
    fn empty_list_elements_are_skipped() {
        assert_eq!(neg(&[",,permessage-deflate"]), plain());
        assert_eq!(neg(&["x-foo, , ,\t,permessage-deflate,"]), plain());
        assert_eq!(neg(&[",", " ", "permessage-deflate"]), plain());
    }

    /// A small deterministic PRNG (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Pieces that make random inputs often close to real offers.
    const PIECES: &[&[u8]] = &[
        b"permessage-deflate",
        b"PERMESSAGE-DEFLATE",
        b"server_no_context_takeover",
        b"client_no_context_takeover",
        b"server_max_window_bits",
        b"client_max_window_bits",
        b"x-webkit-deflate-frame",
        b"=",
        b";",
        b",",
        b" ",
        b"\t",
        b"\"",
        b"\\",
        b"8",
        b"9",
        b"10",
        b"15",
        b"16",
        b"015",
        b"\xff",
        b"\x00",
        b"\xc3\xa9",
    ];

    #[test]
    fn garbage_never_panics_and_every_answer_is_well_formed() {
        let mut rng = Rng(17);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let headers: Vec<Vec<u8>> = (0..1 + rng.below(3))
                .map(|_| {
                    let mut v = Vec::new();
                    for _ in 0..rng.below(12) {
                        if rng.below(4) == 0 {
                            v.push(rng.next() as u8);
                        } else {
                            v.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                        }
                    }
                    v
                })
                .collect();
            let Some((deflate, answer)) = negotiate(headers.iter().map(Vec::as_slice)) else {
                continue;
            };
            accepted += 1;
            let bits = answer.strip_prefix(PLAIN).unwrap();
            match bits.strip_prefix("; server_max_window_bits=") {
                Some(n) => {
                    let n: u8 = n.parse().unwrap();
                    assert!((8..=15).contains(&n), "{answer}");
                    assert_eq!(deflate.full_window, n == 15, "{answer}");
                }
                None => {
                    assert_eq!(bits, "", "{answer}");
                    assert!(deflate.full_window);
                }
            }
            // The answer, read as an offer, is accepted as it is.
            assert_eq!(
                negotiate([answer.as_bytes()]),
                Some((deflate, answer.clone()))
            );
        }
        // The pieces are chosen so that some inputs are accepted; make sure they are.
        assert!(accepted > 100, "{accepted}");
    }

    #[test]
    fn long_inputs_are_read_once() {
        // Many declined offers, one long quoted value, many headers: all quick.
        let many = "permessage-deflate; foo, ".repeat(100_000);
        assert_eq!(neg(&[&many]), None);
        let long = format!(
            "permessage-deflate; foo=\"{}\", permessage-deflate",
            "\\a".repeat(500_000)
        );
        assert_eq!(neg(&[&long]), plain());
        let headers = vec!["x-foo"; 100_000];
        assert_eq!(neg(&headers), None);
    }
}
