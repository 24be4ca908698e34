//! TLS on one connection, without I/O: rustls's unbuffered API
//! ([`UnbufferedServerConnection`]), driven from the connection's poll functions, with the
//! buffers ours.
//!
//! An idle connection holds its cipher state and nothing else: ciphertext is read into the
//! shard's scratch buffer and decrypted there ([`TlsSession::on_read`]), and application data
//! is encrypted into a shard scratch buffer the caller writes at once ([`TlsSession::encrypt`]).
//! The session keeps two buffers of its own, both empty and unallocated when idle: the
//! `incoming` bytes of a record (or handshake message) not complete yet at the end of a read,
//! and the `outgoing` ciphertext the socket did not take yet (the handshake's flights, alerts,
//! post-handshake messages, and what a partial write left).
//!
//! # Reading
//!
//! ```text
//! let k = tls.load_kept(&mut scratch)?;          // the kept partial record, at the front
//! let n = read(&mut scratch[k..]);               // the socket's new bytes behind it
//! let input = tls.on_read(&mut scratch, k + n)?; // plaintext now at scratch[..input.plain]
//! // send tls.pending() (handshake flights, session tickets) before anything else
//! ```
//!
//! On an error the connection is over: send `pending()` (it holds rustls's alert, when there
//! is one) and close.
//!
//! # Writing
//!
//! ```text
//! out.clear();
//! let taken = tls.encrypt(queue.slices(..), max_plain, &mut out)?; // plaintext consumed
//! queue.advance(taken);
//! // one writev of [tls.pending(), out]; then, of the `n` bytes written:
//! tls.consumed(n.min(p));                        // p = pending().len() before the write
//! tls.keep_unwritten(&out[n.saturating_sub(p)..]);
//! ```
//!
//! `pending()` always goes out before what `encrypt` or `close_notify` appends to `out`.
//!
//! # rustls's state machine, as 0.23 has it
//!
//! Each `process_tls_records` call returns one state and a count of input bytes to drop from
//! the front before the next call. What this code relies on:
//! - `ReadTraffic` comes once per application record, holding a *copy* of the plaintext;
//!   the record's bytes are only dropped with that status. So the status is let go, the bytes
//!   dropped, and the next call (which returns the same record first thing, dropping nothing)
//!   copies the plaintext to the front of the buffer, where it now has room.
//! - `EncodeTlsData` (one per queued record) comes before rustls reads more input, and
//!   `TransmitTlsData` only when it has nothing more to do; the records are in `outgoing` in
//!   order, so `done()` is called at once and the caller writes them.
//! - `WriteTraffic` (the right to encrypt) is also "idle, everything read": it is only had
//!   from a call, which is made with the kept bytes. Never with an empty slice while rustls
//!   is joining a handshake message: it indexes the buffer at its progress, and would panic.
//! - After an error, the alert is queued in rustls, and the state machine still offers
//!   `WriteTraffic`: the alert is taken while `wants_write()` (a call with the bad input again
//!   would queue a second fatal alert, which rustls asserts against), and the session refuses
//!   everything after.
//! - The answer to a client's KeyUpdate is not handshake output: rustls switches our keys at
//!   once and holds the message until we next encrypt, where it goes first (RFC 8446 allows
//!   it until our next application data).
//! - `PeerClosed` comes once; after it rustls reads nothing more.
//!
//! # Costs (see the tests)
//!
//! rustls copies on its side: a received application record is decrypted in place in our
//! buffer, then copied into a `Vec` of its own (one allocation per record), which we copy to
//! the front of our buffer; an encrypted record is built in a `Vec` of its own (one allocation
//! per record) and copied into ours. Several frames make one record only if they are
//! contiguous, so they are first copied together into `out` (frames of 16 KiB or more go
//! straight). These are rustls 0.23's unbuffered API as it is; rustls's kernel-TLS interface
//! (`dangerous_into_kernel_connection`) would let us encrypt in place after the handshake.
//!
//! An idle session is `size_of::<TlsSession>()` (1,152 B, nearly all rustls's connection) and
//! about 2.2 KB of heap held by rustls (both directions' AEAD keys, the key schedule, its
//! state and queues: `tls_session_heap` measures it).

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::ServerConfig;

use self::write::encode_into;

/// The most bytes kept between reads: a record is at most 18,437 bytes on the wire (16 KiB of
/// plaintext, 2 KiB of expansion, a 5-byte header); more is kept only while rustls joins a
/// handshake message sent over several records, and a client hello is a few KB. Above this
/// the peer is failed, so a peer cannot make a connection hold more.
pub(crate) const MAX_KEPT: usize = 32 * 1024;

/// TLS's largest record plaintext.
const MAX_RECORD: usize = 16 * 1024;

/// More than any suite adds to a record (TLS 1.3: header 5, content type 1, tag 16; TLS 1.2
/// AES-GCM: header 5, explicit nonce 8, tag 16). Only a first guess: rustls says how much it
/// needs when it needs more.
const RECORD_EXPANSION: usize = 40;

/// What one read came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Input {
    /// Application data now at the front of the buffer: `buf[..plain]`.
    pub(crate) plain: usize,
    /// The peer sent close_notify: it sends nothing more (what follows it is dropped).
    pub(crate) peer_closed: bool,
    /// [`TlsSession::pending`] has bytes for the socket.
    pub(crate) wants_write: bool,
}

/// Why a session cannot go on. After any of these the connection is over: write
/// [`TlsSession::pending`] (an alert, when rustls made one) and close.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// rustls refused the peer's bytes: not TLS (a plain HTTP request, garbage), a failed
    /// handshake, a bad record, or a fatal alert from the peer.
    #[error("TLS: {0}")]
    Refused(#[from] rustls::Error),
    /// The peer's bytes would have the session keep more than [`MAX_KEPT`].
    #[error("TLS: a record or handshake message over {MAX_KEPT} bytes")]
    Oversized,
    /// Application data cannot be sent before the handshake completes.
    #[error("TLS: handshake not complete")]
    Handshaking,
    /// Application data cannot be sent after close_notify or an error.
    #[error("TLS: connection closed")]
    Closed,
    /// The keys reached the number of records they may protect (TLS 1.2 has no key update).
    #[error("TLS: keys exhausted")]
    KeysExhausted,
    /// The caller's buffer does not hold the kept bytes and room to read (a bug).
    #[error("TLS: read buffer too small or kept bytes not loaded")]
    Buffer,
    /// rustls went where its documented state machine does not (a bug, or a new rustls).
    #[error("TLS: unexpected state: {0}")]
    Unexpected(&'static str),
}

/// One connection's TLS session. See the module's documentation for how the caller drives
/// it.
pub(crate) struct TlsSession {
    conn: UnbufferedServerConnection,
    /// The bytes of an incomplete record (or handshake message) at the end of the last read,
    /// exactly as rustls left them; empty and unallocated otherwise.
    incoming: Vec<u8>,
    /// Ciphertext for the socket, `outgoing[sent..]`; empty and unallocated once written.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer's close_notify came.
    peer_closed: bool,
    /// Our close_notify is encrypted.
    closing: bool,
    /// An error ended the session.
    failed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("pending", &self.pending().len())
            .field("peer_closed", &self.peer_closed)
            .field("closing", &self.closing)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A session for a new connection, taking its configuration for its life.
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
            closing: false,
            failed: false,
        })
    }

    /// Whether the handshake is still going on.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The application protocol agreed by ALPN (`http/1.1`), if the client offered any.
    #[cfg(test)]
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The negotiated TLS version, once known.
    pub(crate) fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Whether the handshake was full or resumed, once complete.
    pub(crate) fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// Before a read into `buf` (the shard's scratch buffer): puts the bytes kept from the last
    /// read at its front and returns their length `k`. The socket's bytes go to `buf[k..]`, and
    /// [`Self::on_read`] takes `k` plus the bytes read. A read that waits changes nothing: the
    /// bytes stay kept until `on_read`.
    pub(crate) fn load_kept(&self, buf: &mut [u8]) -> Result<usize, TlsError> {
        let k = self.incoming.len();
        // Room to read behind them too (the kept bytes are at most `MAX_KEPT`).
        if buf.len() <= k {
            return Err(TlsError::Buffer);
        }
        buf[..k].copy_from_slice(&self.incoming);
        Ok(k)
    }

    /// Processes the ciphertext in `buf[..filled]` (the kept bytes [`Self::load_kept`] put at
    /// its front, then what was read): handshake messages (their answers go to
    /// [`Self::pending`]), alerts, and application data, decrypted and moved to the front of
    /// `buf`. An incomplete record at the end is kept for the next read.
    ///
    /// The work is bounded by `filled`. On an error the session is over: `pending()` holds
    /// rustls's alert when it made one.
    pub(crate) fn on_read(&mut self, buf: &mut [u8], filled: usize) -> Result<Input, TlsError> {
        if self.failed {
            return Err(TlsError::Closed);
        }
        if filled > buf.len() || filled < self.incoming.len() {
            return Err(TlsError::Buffer);
        }
        if self.peer_closed {
            // Nothing after close_notify is read.
            self.incoming = Vec::new();
            return Ok(self.input(0));
        }
        let end = filled;
        // Ciphertext before `start` is done with; plaintext is gathered at `buf[..plain]`, and
        // `plain <= start` always (a record is longer than its plaintext).
        let mut start = 0;
        let mut plain: usize = 0;
        let mut steps = 0;
        let outcome = loop {
            // Every step takes bytes, or yields output or a state change; a guard only.
            steps += 1;
            if steps > end + 64 {
                break Err(TlsError::Unexpected("no progress"));
            }
            let (front, rest) = buf.split_at_mut(start);
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut rest[..end - start]);
            let step = match state {
                Err(e) => Step::Fail(e.into()),
                Ok(ConnectionState::ReadTraffic(_)) if discard > 0 => {
                    // rustls holds the record's plaintext: its ciphertext is dropped first, so
                    // the plaintext has room at the front; the next call yields it again.
                    Step::Go
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Step::Go;
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                step = Step::Fail(e.into());
                                break;
                            }
                        };
                        discard += record.discard;
                        let len = record.payload.len();
                        match plain
                            .checked_add(len)
                            .and_then(|to| front.get_mut(plain..to))
                        {
                            Some(to) => {
                                to.copy_from_slice(record.payload);
                                plain += len;
                            }
                            None => {
                                step =
                                    Step::Fail(TlsError::Unexpected("plaintext over its record"));
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    match encode_into(&mut self.outgoing, |b| data.encode(b)) {
                        Ok(()) => Step::Go,
                        Err(e) => Step::Fail(e),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    // It is in `outgoing`, in order, for the caller to write.
                    data.done();
                    Step::Go
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Step::Go
                }
                // Everything complete is processed: more input is needed.
                Ok(
                    ConnectionState::BlockedHandshake
                    | ConnectionState::WriteTraffic(_)
                    | ConnectionState::Closed,
                ) => Step::Stop,
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    Step::Fail(TlsError::Unexpected("early data, which is not enabled"))
                }
                Ok(_) => Step::Fail(TlsError::Unexpected("a state this rustls did not have")),
            };
            start = (start + discard).min(end);
            match step {
                Step::Go => {}
                Step::Stop => break Ok(()),
                Step::Fail(e) => break Err(e),
            }
        };
        if let Err(e) = outcome {
            self.fail();
            return Err(e);
        }
        let rest = &buf[start..end];
        if self.peer_closed || rest.is_empty() {
            self.incoming = Vec::new();
        } else if rest.len() > MAX_KEPT {
            self.fail();
            return Err(TlsError::Oversized);
        } else {
            // Exactly as rustls left them: a handshake message being joined is partly
            // processed in place, and rustls counts on finding it so at the front next time.
            self.incoming = rest.to_vec();
        }
        Ok(self.input(plain))
    }

    fn input(&self, plain: usize) -> Input {
        Input {
            plain,
            peer_closed: self.peer_closed,
            wants_write: !self.pending().is_empty(),
        }
    }

    /// Ends the session after an error: nothing more is read or encrypted, and what rustls
    /// queued (its alert) goes to `outgoing`.
    fn fail(&mut self) {
        self.failed = true;
        self.incoming = Vec::new();
        // rustls hands out queued records before it looks at the input, so the (empty) input
        // is never parsed again: parsing the bad bytes again would queue a second alert.
        for _ in 0..8 {
            if !self.conn.wants_write() {
                break;
            }
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if encode_into(&mut self.outgoing, |b| data.encode(b)).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

/// What one turn of [`TlsSession::on_read`]'s loop came to.
enum Step {
    Go,
    Stop,
    Fail(TlsError),
}

mod write;

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};

    use rustls::crypto::ring::default_provider;
    use rustls::pki_types::CertificateDer;
    use rustls::version::{TLS12, TLS13};
    use rustls::{
        ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, RootCertStore,
        SupportedProtocolVersion,
    };

    use super::*;
    use crate::tls_config::{test_certificate, test_config};

    /// The shard's read scratch is 64 KiB (`READ_CHUNK`).
    const SCRATCH: usize = 64 * 1024;

    struct Setup {
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    }

    fn setup(version: &'static SupportedProtocolVersion) -> Setup {
        let (cert, key, der) = test_certificate();
        Setup {
            server: test_config(&cert, &key),
            client: client_config(version, der),
        }
    }

    fn client_config(
        version: &'static SupportedProtocolVersion,
        root: CertificateDer<'static>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(root).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A server session and a rustls client, joined in memory.
    struct Pair {
        server: TlsSession,
        client: ClientConnection,
        scratch: Vec<u8>,
        /// Plaintext the server read.
        received: Vec<u8>,
        peer_closed: bool,
        /// Plaintext the client read.
        client_got: Vec<u8>,
        /// The client read the end of the stream (our close_notify).
        client_eof: bool,
    }

    impl Pair {
        fn new(setup: &Setup) -> Self {
            Self {
                server: TlsSession::new(setup.server.clone()).unwrap(),
                client: ClientConnection::new(
                    setup.client.clone(),
                    "localhost".try_into().unwrap(),
                )
                .unwrap(),
                scratch: vec![0; SCRATCH],
                received: Vec::new(),
                peer_closed: false,
                client_got: Vec::new(),
                client_eof: false,
            }
        }

        /// What the client has for the wire.
        fn client_wire(&mut self) -> Vec<u8> {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).unwrap();
            }
            wire
        }

        /// Feeds `wire` to the server in reads of at most `chunk` bytes, as the connection
        /// would: kept bytes first, then the read behind them.
        fn feed(&mut self, mut wire: &[u8], chunk: usize) -> Result<(), TlsError> {
            while !wire.is_empty() {
                let k = self.server.load_kept(&mut self.scratch)?;
                let n = chunk.min(wire.len()).min(SCRATCH - k);
                self.scratch[k..k + n].copy_from_slice(&wire[..n]);
                wire = &wire[n..];
                let input = self.server.on_read(&mut self.scratch, k + n)?;
                assert!(input.plain <= k + n);
                assert_eq!(input.wants_write, !self.server.pending().is_empty());
                self.received
                    .extend_from_slice(&self.scratch[..input.plain]);
                assert!(self.server.incoming.len() <= MAX_KEPT);
                self.peer_closed |= input.peer_closed;
            }
            Ok(())
        }

        /// Writes everything pending to the client, in two partial writes when there is more
        /// than one byte (as a full socket would take it).
        fn flush(&mut self) {
            let pending = self.server.pending().to_vec();
            let half = pending.len() / 2;
            self.server.consumed(half);
            assert_eq!(self.server.pending(), &pending[half..]);
            self.server.consumed(pending.len() - half);
            assert!(self.server.pending().is_empty());
            self.deliver(&pending);
        }

        fn deliver(&mut self, mut wire: &[u8]) {
            while !wire.is_empty() {
                self.client.read_tls(&mut wire).unwrap();
                self.client.process_new_packets().unwrap();
                self.client_take();
            }
        }

        fn client_take(&mut self) {
            let mut buf = [0; 4096];
            loop {
                match self.client.reader().read(&mut buf) {
                    Ok(0) => {
                        self.client_eof = true;
                        break;
                    }
                    Ok(n) => self.client_got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }

        /// Runs the handshake, the client's flights fed in reads of `chunk` bytes.
        fn handshake(&mut self, chunk: usize) {
            for _ in 0..10 {
                let wire = self.client_wire();
                self.feed(&wire, chunk).unwrap();
                self.flush();
                if !self.client.is_handshaking()
                    && !self.server.is_handshaking()
                    && !self.client.wants_write()
                {
                    break;
                }
            }
            assert!(!self.client.is_handshaking() && !self.server.is_handshaking());
            self.assert_idle();
        }

        /// Idle: no buffer of the session's own.
        fn assert_idle(&self) {
            assert_eq!(self.server.incoming.capacity(), 0, "incoming kept");
            assert_eq!(self.server.outgoing.capacity(), 0, "outgoing kept");
            assert_eq!(self.server.sent, 0);
        }

        /// Everything the client read so far.
        fn client_read(&mut self) -> Vec<u8> {
            self.client_take();
            std::mem::take(&mut self.client_got)
        }

        /// Encrypts `frames` up to `max`: the plaintext taken and the records.
        fn encrypt(&mut self, frames: &[&[u8]], max: usize) -> (usize, Vec<u8>) {
            let mut out = Vec::new();
            let n = self
                .server
                .encrypt(frames.iter().copied(), max, &mut out)
                .unwrap();
            (n, out)
        }
    }

    /// The plaintext length of each record in `wire` (record length less `expansion`).
    fn records(wire: &[u8]) -> Vec<usize> {
        let mut lens = Vec::new();
        let mut at = 0;
        while at + 5 <= wire.len() {
            assert_eq!(wire[at], 23, "application data");
            let len = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
            lens.push(len);
            at += 5 + len;
        }
        assert_eq!(at, wire.len(), "whole records");
        lens
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn handshake_and_talk(version: &'static SupportedProtocolVersion, expect: ProtocolVersion) {
        let setup = setup(version);
        let mut p = Pair::new(&setup);
        p.handshake(usize::MAX);
        assert_eq!(p.server.protocol_version(), Some(expect));
        assert_eq!(p.client.protocol_version(), Some(expect));
        assert_eq!(p.server.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(p.client.alpn_protocol(), Some(&b"http/1.1"[..]));

        // Client to server: a request, several messages in one read.
        p.client
            .writer()
            .write_all(b"GET /ws HTTP/1.1\r\n\r\n")
            .unwrap();
        for i in 0..20u8 {
            p.client.writer().write_all(&pattern(100, i)).unwrap();
        }
        let wire = p.client_wire();
        p.feed(&wire, usize::MAX).unwrap();
        let mut expected = b"GET /ws HTTP/1.1\r\n\r\n".to_vec();
        for i in 0..20u8 {
            expected.extend_from_slice(&pattern(100, i));
        }
        assert_eq!(p.received, expected);
        p.assert_idle();

        // Server to client.
        let (n, out) = p.encrypt(
            &[b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"hello"],
            1 << 20,
        );
        assert_eq!(n, 41);
        assert_eq!(records(&out).len(), 1);
        p.deliver(&out);
        assert_eq!(
            p.client_read(),
            b"HTTP/1.1 101 Switching Protocols\r\n\r\nhello"
        );
        p.assert_idle();
    }

    #[test]
    fn tls13_handshake_alpn_and_data_both_ways() {
        handshake_and_talk(&TLS13, ProtocolVersion::TLSv1_3);
    }

    #[test]
    fn tls12_handshake_alpn_and_data_both_ways() {
        handshake_and_talk(&TLS12, ProtocolVersion::TLSv1_2);
    }

    /// Data the client sends with its Finished (TLS 1.3: in the same flight) is read in the
    /// same call that completes the handshake, and the tickets go out with it.
    #[test]
    fn tls13_data_with_the_clients_finished() {
        let setup = setup(&TLS13);
        let mut p = Pair::new(&setup);
        let hello = p.client_wire();
        p.feed(&hello, usize::MAX).unwrap();
        assert!(p.server.is_handshaking());
        p.flush();
        p.client.writer().write_all(b"early bird").unwrap();
        let finished = p.client_wire();
        p.feed(&finished, usize::MAX).unwrap();
        assert!(!p.server.is_handshaking());
        assert_eq!(p.received, b"early bird");
        // The session tickets.
        assert!(!p.server.pending().is_empty());
        p.flush();
        p.assert_idle();
    }

    /// Many small frames go in one record and one write; more than a record's worth in 16 KiB
    /// records; `max_plain` is a hard limit, and the rest goes next time.
    #[test]
    fn tls_small_frames_are_batched_into_few_records() {
        let setup = setup(&TLS13);
        let mut p = Pair::new(&setup);
        p.handshake(usize::MAX);

        let frames: Vec<Vec<u8>> = (0..200).map(|i| pattern(50 + i % 7, i as u8)).collect();
        let slices: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let (n, out) = p.encrypt(&slices, 1 << 20);
        assert_eq!(n, total);
        assert_eq!(records(&out).len(), 1, "one record for {total} B");
        p.deliver(&out);
        assert_eq!(p.client_read(), slices.concat());

        let frames: Vec<Vec<u8>> = (0..1000).map(|i| pattern(100, i as u8)).collect();
        let slices: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let (n, out) = p.encrypt(&slices, 1 << 20);
        assert_eq!(n, 100_000);
        let lens = records(&out);
        assert_eq!(lens.len(), 7, "{lens:?}");
        assert!(lens.iter().all(|&l| l <= MAX_RECORD + 17), "{lens:?}");
        p.deliver(&out);
        assert_eq!(p.client_read(), slices.concat());

        // A limit in the middle of a frame: the rest of it starts the next call.
        let (n, out) = p.encrypt(&slices[..10], 250);
        assert_eq!(n, 250);
        p.deliver(&out);
        let (n, out) = p.encrypt(&[&slices[2][50..], slices[3]], 1 << 20);
        assert_eq!(n, 150);
        p.deliver(&out);
        assert_eq!(p.client_read(), slices[..4].concat());
        p.assert_idle();

        // Nothing to do.
        assert_eq!(p.encrypt(&[], 100).0, 0);
        assert_eq!(p.encrypt(&[b"x"], 0).0, 0);
        assert_eq!(p.encrypt(&[b"", b""], 10).0, 0);
    }

    /// A 100 KB frame in one call: 16 KiB records straight from it, the tail shared with the
    /// frame behind it.
    #[test]
    fn tls_a_large_frame_goes_in_16k_records() {
        let setup = setup(&TLS12);
        let mut p = Pair::new(&setup);
        p.handshake(usize::MAX);
        let big = pattern(100_000, 7);
        let (n, out) = p.encrypt(&[&big, b"tail"], 1 << 20);
        assert_eq!(n, 100_004);
        let lens = records(&out);
        // TLS 1.2 AES-GCM: 8 bytes of nonce and 16 of tag per record.
        assert_eq!(lens.len(), 7, "{lens:?}");
        assert!(lens[..6].iter().all(|&l| l == MAX_RECORD + 24), "{lens:?}");
        assert_eq!(lens[6], 100_004 - 6 * MAX_RECORD + 24);
        p.deliver(&out);
        let mut expected = big.clone();
        expected.extend_from_slice(b"tail");
        assert_eq!(p.client_read(), expected);
        p.assert_idle();
    }

    /// Ciphertext fed a byte at a time and in odd chunks: records (and the handshake's
    /// flights) cut anywhere are kept and finished by the next read; once a read ends on a
    /// record boundary nothing is kept.
    #[test]
    fn tls_partial_records_byte_by_byte_and_odd_chunks() {
        for version in [&TLS13, &TLS12] {
            let setup = setup(version);
            for chunk in [1, 2, 7, 13, 1000, 5000, 17_000, 40_000] {
                let mut p = Pair::new(&setup);
                p.handshake(chunk);
                let mut expected = Vec::new();
                for (i, len) in [1, 5, 300, 16_384, 40_000, 3].into_iter().enumerate() {
                    let msg = pattern(len, i as u8);
                    p.client.writer().write_all(&msg).unwrap();
                    expected.extend_from_slice(&msg);
                }
                let wire = p.client_wire();
                p.feed(&wire, chunk).unwrap();
                assert_eq!(p.received.len(), expected.len(), "chunk {chunk}");
                assert_eq!(p.received, expected, "chunk {chunk}");
                p.assert_idle();
            }
        }
    }

    /// The kept bytes stay kept when a read waits (load_kept then nothing read).
    #[test]
    fn tls_a_read_that_waits_loses_nothing() {
        let setup = setup(&TLS13);
        let mut p = Pair::new(&setup);
        p.handshake(usize::MAX);
        p.client.writer().write_all(b"0123456789").unwrap();
        let wire = p.client_wire();
        p.feed(&wire[..8], usize::MAX).unwrap();
        assert_eq!(p.server.incoming.len(), 8);
        let k = p.server.load_kept(&mut p.scratch).unwrap();
        assert_eq!(k, 8);
        // The read waits; the scratch is used by another connection meanwhile.
        p.scratch[..100].fill(0xee);
        p.feed(&wire[8..], usize::MAX).unwrap();
        assert_eq!(p.received, b"0123456789");
        // A caller that did not load the kept bytes is refused, not misled.
        p.client.writer().write_all(b"abc").unwrap();
        let wire = p.client_wire();
        p.feed(&wire[..3], usize::MAX).unwrap();
        assert_eq!(
            p.server.on_read(&mut p.scratch, 2).unwrap_err().to_string(),
            TlsError::Buffer.to_string()
        );
        assert!(matches!(
            p.server.load_kept(&mut [0; 3]),
            Err(TlsError::Buffer)
        ));
    }

    /// close_notify from the client, then ours; and ours first.
    #[test]
    fn tls_close_notify_both_ways() {
        for version in [&TLS13, &TLS12] {
            let setup = setup(version);
            // The client closes first.
            let mut p = Pair::new(&setup);
            p.handshake(usize::MAX);
            p.client.writer().write_all(b"bye").unwrap();
            p.client.send_close_notify();
            let mut wire = p.client_wire();
            // Bytes after close_notify are dropped, not kept.
            wire.extend_from_slice(&[23, 3, 3, 0, 40, 1, 2]);
            p.feed(&wire, usize::MAX).unwrap();
            assert!(p.peer_closed);
            assert_eq!(p.received, b"bye");
            p.assert_idle();
            // We may still send, then close.
            let (_, out) = p.encrypt(&[b"last words"], 100);
            p.deliver(&out);
            let mut out = Vec::new();
            p.server.close_notify(&mut out).unwrap();
            assert!(!out.is_empty());
            p.deliver(&out);
            assert_eq!(p.client_read(), b"last words");
            assert!(p.client_eof);
            assert!(matches!(
                p.server.encrypt([&b"more"[..]], 100, &mut out),
                Err(TlsError::Closed)
            ));
            p.assert_idle();

            // We close first.
            let mut p = Pair::new(&setup);
            p.handshake(usize::MAX);
            let mut out = Vec::new();
            p.server.close_notify(&mut out).unwrap();
            p.deliver(&out);
            assert!(p.client_eof);
            // Twice is once.
            let mut again = Vec::new();
            p.server.close_notify(&mut again).unwrap();
            assert!(again.is_empty());
            p.client.send_close_notify();
            let wire = p.client_wire();
            p.feed(&wire, usize::MAX).unwrap();
            assert!(p.peer_closed);
            p.assert_idle();
        }
    }

    /// A plain-text request or garbage as the first flight fails at once, with rustls's
    /// alert ready to send.
    #[test]
    fn tls_plaintext_or_garbage_first_flight_is_refused_with_an_alert() {
        let setup = setup(&TLS13);
        let cases: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            // rustls judges the first byte (the record's content type) alone.
            b"G",
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            // A handshake record header, cut: kept, then refused on its version.
            &[22],
            // A handshake record announcing 65,535 bytes: refused on its header, not waited
            // for.
            &[22, 3, 1, 0xff, 0xff, 1],
        ];
        for (i, wire) in cases.into_iter().enumerate() {
            let mut p = Pair::new(&setup);
            let result = p.feed(wire, usize::MAX);
            if i == 3 {
                assert!(result.is_ok());
                assert_eq!(p.server.incoming.len(), 1);
                let more = p.feed(b"ET / HTTP/1.1\r\n", usize::MAX);
                assert!(matches!(more, Err(TlsError::Refused(_))), "{more:?}");
            } else {
                assert!(
                    matches!(result, Err(TlsError::Refused(_))),
                    "{i}: {result:?}"
                );
            }
            // One fatal alert record, in plain text (nothing is encrypted yet).
            let alert = p.server.pending();
            assert_eq!(alert.len(), 7, "{i}: {alert:?}");
            assert_eq!((alert[0], alert[5]), (21, 2), "{i}: {alert:?}");
            assert!(p.server.incoming.is_empty());
            // And it stays over.
            assert!(matches!(p.feed(b"\x16\x03\x01", 10), Err(TlsError::Closed)));
            assert!(matches!(
                p.server.encrypt([&b"x"[..]], 10, &mut Vec::new()),
                Err(TlsError::Closed)
            ));
        }
    }

    /// A handshake message sent over many records is joined in the kept bytes up to
    /// `MAX_KEPT`, then refused.
    #[test]
    fn tls_a_huge_handshake_message_is_refused() {
        let setup = setup(&TLS13);
        let mut p = Pair::new(&setup);
        // A client hello announcing 60,000 bytes, in records of 4,096.
        let mut body = vec![1, 0, 0xea, 0x60];
        body.extend_from_slice(&[0; 60_000]);
        let mut wire = Vec::new();
        for piece in body.chunks(4096) {
            wire.extend_from_slice(&[22, 3, 1]);
            wire.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            wire.extend_from_slice(piece);
        }
        let result = p.feed(&wire, 4096 + 5);
        assert!(matches!(result, Err(TlsError::Oversized)), "{result:?}");
        assert!(p.server.incoming.len() <= MAX_KEPT);
    }

    /// A KeyUpdate from the client (TLS 1.3), asking for ours: rustls switches our keys at
    /// once and holds our KeyUpdate (encrypted with the old keys) until we next encrypt, where
    /// it goes first (RFC 8446 4.6.3: before our next application data). Data flows on both
    /// ways with the new keys.
    #[test]
    fn tls13_client_key_update() {
        let setup = setup(&TLS13);
        let mut p = Pair::new(&setup);
        p.handshake(usize::MAX);
        p.client.refresh_traffic_keys().unwrap();
        p.client.writer().write_all(b"after update").unwrap();
        let wire = p.client_wire();
        p.feed(&wire, 3).unwrap();
        assert_eq!(p.received, b"after update");
        p.assert_idle();
        let (_, out) = p.encrypt(&[b"with new keys"], 100);
        assert_eq!(records(&out).len(), 2, "our KeyUpdate, then the data");
        p.deliver(&out);
        assert_eq!(p.client_read(), b"with new keys");
        let (_, out) = p.encrypt(&[b"again"], 100);
        assert_eq!(records(&out).len(), 1);
        p.deliver(&out);
        assert_eq!(p.client_read(), b"again");
        p.client.writer().write_all(b" and back").unwrap();
        let wire = p.client_wire();
        p.feed(&wire, usize::MAX).unwrap();
        assert_eq!(p.received, b"after update and back");
        p.assert_idle();
    }

    /// A partial write: the rest of `out` is kept behind what was pending, and goes out in
    /// order.
    #[test]
    fn tls_unwritten_ciphertext_is_kept_in_order() {
        let setup = setup(&TLS13);
        let mut p = Pair::new(&setup);
        p.handshake(usize::MAX);
        let (_, first) = p.encrypt(&[b"first"], 100);
        p.server.keep_unwritten(&first[10..]);
        p.deliver(&first[..10]);
        let (_, second) = p.encrypt(&[b"second"], 100);
        // pending() then `second`, written in one go of 10 bytes, then the rest.
        let mut wire = p.server.pending().to_vec();
        wire.extend_from_slice(&second);
        let written = 10;
        let before = p.server.pending().len();
        p.server.consumed(written.min(before));
        p.server
            .keep_unwritten(&second[written.saturating_sub(before)..]);
        p.deliver(&wire[..written]);
        let rest = p.server.pending().to_vec();
        assert_eq!(rest, wire[written..]);
        p.server.consumed(rest.len());
        p.deliver(&rest);
        assert_eq!(p.client_read(), b"firstsecond");
        p.assert_idle();
    }

    /// Stateless tickets resume: a second connection of the same client skips the full
    /// handshake (TLS 1.3 tickets, TLS 1.2 tickets).
    #[test]
    fn tls_sessions_resume_from_tickets() {
        for version in [&TLS13, &TLS12] {
            let setup = setup(version);
            let mut p = Pair::new(&setup);
            p.handshake(usize::MAX);
            assert_eq!(p.server.conn.handshake_kind(), Some(HandshakeKind::Full));
            let mut p = Pair::new(&setup);
            p.handshake(usize::MAX);
            assert_eq!(
                p.server.conn.handshake_kind(),
                Some(HandshakeKind::Resumed),
                "{version:?}"
            );
        }
    }

    /// What a session costs: its size, and (`--ignored --nocapture`, alone: it reads the
    /// process's malloc counters) the heap it holds when idle after the handshake.
    #[test]
    fn tls_session_size() {
        let size = std::mem::size_of::<TlsSession>();
        eprintln!(
            "TlsSession {size} B (UnbufferedServerConnection {} B)",
            std::mem::size_of::<UnbufferedServerConnection>()
        );
        // Almost all of it rustls's connection (1,152 B with rustls 0.23.46).
        assert!(size <= 1280, "{size}");
    }

    /// Run alone, with glibc's per-thread and fast caches off (freed small blocks would count
    /// as in use otherwise):
    ///
    /// ```text
    /// GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0 \
    ///     cargo test --lib tls_session_heap -- --ignored --nocapture
    /// ```
    ///
    /// The numbers are malloc's (each block rounded up to 16 B with its 8-byte header).
    #[test]
    #[ignore = "reads the process-wide malloc counters: run alone, see its doc"]
    fn tls_session_heap() {
        if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("tcache_count=0")) {
            eprintln!("tls_session_heap: set GLIBC_TUNABLES as its doc says");
            return;
        }
        fn in_use() -> usize {
            // SAFETY: mallinfo2 only reads glibc's counters.
            unsafe { libc::mallinfo2() }.uordblks
        }
        for (version, name) in [(&TLS13, "TLS 1.3"), (&TLS12, "TLS 1.2")] {
            let setup = setup(version);
            // Warm up rustls's and ring's one-time allocations.
            Pair::new(&setup).handshake(usize::MAX);
            let fresh = in_use();
            let session = TlsSession::new(setup.server.clone()).unwrap();
            let new_session = in_use() - fresh;
            drop(session);

            let mut p = Pair::new(&setup);
            p.handshake(usize::MAX);
            let before = in_use();
            let Pair { server, .. } = &mut p;
            let server = std::mem::replace(server, TlsSession::new(setup.server.clone()).unwrap());
            let replacement = in_use() - before;
            let with = in_use();
            drop(server);
            let idle = with - in_use();

            // After traffic both ways (rustls keeps its queues' capacity).
            let mut p = Pair::new(&setup);
            p.handshake(usize::MAX);
            p.client.writer().write_all(b"subscribe").unwrap();
            let wire = p.client_wire();
            p.feed(&wire, usize::MAX).unwrap();
            let (_, out) = p.encrypt(&[&pattern(20_000, 1)], 1 << 20);
            p.deliver(&out);
            drop(out);
            p.assert_idle();
            let Pair { server, .. } = &mut p;
            let server = std::mem::replace(server, TlsSession::new(setup.server.clone()).unwrap());
            let with = in_use();
            drop(server);
            let after_traffic = with - in_use();
            eprintln!(
                "{name}: heap of a new session {new_session} B, idle after the handshake \
                 {idle} B, idle after traffic {after_traffic} B (a fresh one {replacement} B), \
                 plus size_of {} B",
                std::mem::size_of::<TlsSession>()
            );
        }
    }
}
