//! The writing side of [`TlsSession`]: application data and close_notify encrypted into the
//! caller's buffer, and the ciphertext the socket did not take kept in order.

use rustls::server::ServerConnectionData;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
    WriteTraffic,
};

use super::{TlsError, TlsSession, MAX_RECORD, RECORD_EXPANSION};

impl TlsSession {
    /// Encrypts the plaintext of `frames`, in order, up to `max_plain` bytes (a frame may be
    /// cut), appending the records to `out` (the shard's scratch); returns the plaintext bytes
    /// taken. Records carry up to 16 KiB each: small frames share records (copied together
    /// first), large ones fill whole records straight from their buffer.
    ///
    /// The records follow [`Self::pending`] on the wire. Before the handshake completes this
    /// is [`TlsError::Handshaking`], after close_notify [`TlsError::Closed`]; an error in the
    /// middle leaves `out` with whole records only, but the session is over.
    pub(crate) fn encrypt<'f, I>(
        &mut self,
        frames: I,
        max_plain: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, TlsError>
    where
        I: IntoIterator<Item = &'f [u8]>,
    {
        let mut frames = frames.into_iter().filter(|f| !f.is_empty()).peekable();
        if max_plain == 0 || frames.peek().is_none() {
            return Ok(0);
        }
        let result = self.with_write_traffic(out, |mut traffic, out| {
            let mut taken = 0;
            let mut current: &[u8] = &[];
            while taken < max_plain {
                if current.is_empty() {
                    match frames.next() {
                        Some(frame) => current = frame,
                        None => break,
                    }
                }
                let left = max_plain - taken;
                // Whole records from one frame, without a copy of ours.
                let whole = current.len().min(left) / MAX_RECORD * MAX_RECORD;
                let room = left.min(MAX_RECORD);
                let direct = if whole > 0 {
                    whole
                } else if current.len() >= room || frames.peek().is_none() {
                    // One record's worth, or the last frame: nothing to put with it.
                    current.len().min(room)
                } else {
                    0
                };
                if direct > 0 {
                    let (now, later) = current.split_at(direct);
                    let records = direct.div_ceil(MAX_RECORD);
                    let guess = direct + records * RECORD_EXPANSION;
                    write_after(out, guess, |_, buf| traffic.encrypt(now, buf))?;
                    current = later;
                    taken += direct;
                    continue;
                }
                // Several frames in one record: copied together behind the ciphertext so far,
                // encrypted behind themselves, and the record moved down over them.
                let stage = out.len();
                let mut staged = 0;
                while staged < room {
                    if current.is_empty() {
                        match frames.next() {
                            Some(frame) => current = frame,
                            None => break,
                        }
                    }
                    let (now, later) = current.split_at(current.len().min(room - staged));
                    out.extend_from_slice(now);
                    current = later;
                    staged += now.len();
                }
                let record_at = out.len();
                let n = write_after(out, staged + RECORD_EXPANSION, |head, buf| {
                    traffic.encrypt(&head[stage..], buf)
                })?;
                out.copy_within(record_at..record_at + n, stage);
                out.truncate(stage + n);
                taken += staged;
            }
            Ok(taken)
        });
        if matches!(
            result,
            Err(TlsError::KeysExhausted | TlsError::Unexpected(_) | TlsError::Refused(_))
        ) {
            self.fail();
        }
        result
    }

    /// Encrypts a close_notify alert into `out` (after which nothing more is encrypted). During
    /// the handshake there is nothing to send: rustls's unbuffered API has no way to, and the
    /// caller just closes.
    pub(crate) fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.closing || self.failed {
            return Ok(());
        }
        let result = self.with_write_traffic(out, |mut traffic, out| {
            write_after(out, 2 * RECORD_EXPANSION, |_, buf| {
                traffic.queue_close_notify(buf)
            })
            .map(drop)
        });
        match result {
            Ok(()) | Err(TlsError::Handshaking | TlsError::Closed) => {
                self.closing = true;
                Ok(())
            }
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// Runs `f` with the right to encrypt, once rustls has handed out what it had queued (into
    /// `out`, ahead of what `f` appends).
    fn with_write_traffic<T>(
        &mut self,
        out: &mut Vec<u8>,
        f: impl FnOnce(WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> Result<T, TlsError>,
    ) -> Result<T, TlsError> {
        if self.failed || self.closing {
            return Err(TlsError::Closed);
        }
        let mut f = Some(f);
        // The kept bytes are the input: rustls finds there what it left, and an incomplete
        // record asks for nothing.
        for _ in 0..16 {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let done = match state? {
                ConnectionState::WriteTraffic(traffic) => f.take().map(|f| f(traffic, out)),
                ConnectionState::EncodeTlsData(mut data) => {
                    encode_into(out, |b| data.encode(b))?;
                    None
                }
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::BlockedHandshake => Some(Err(TlsError::Handshaking)),
                ConnectionState::Closed => Some(Err(TlsError::Closed)),
                // `on_read` takes every record it is given.
                _ => Some(Err(TlsError::Unexpected("records left unread"))),
            };
            if discard > 0 {
                self.incoming.drain(..discard.min(self.incoming.len()));
            }
            if let Some(done) = done {
                return done;
            }
        }
        Err(TlsError::Unexpected("no way to write"))
    }

    /// Ciphertext waiting for the socket, ahead of anything new: the handshake's flights,
    /// alerts, post-handshake messages, and what a partial write left.
    pub(crate) fn pending(&self) -> &[u8] {
        self.outgoing.get(self.sent..).unwrap_or_default()
    }

    /// `n` bytes of [`Self::pending`] were written; the buffer is freed once all are.
    pub(crate) fn consumed(&mut self, n: usize) {
        self.sent = self.sent.saturating_add(n).min(self.outgoing.len());
        if self.sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
    }

    /// Keeps ciphertext the socket did not take (the rest of the shard's `out` after a partial
    /// write): it goes out next, behind what is pending already.
    pub(crate) fn keep_unwritten(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        if self.sent > 0 {
            self.outgoing.drain(..self.sent);
            self.sent = 0;
        }
        self.outgoing.extend_from_slice(rest);
    }
}

/// Appends a record rustls made (handshake, alert, post-handshake message) to `out`, sized
/// exactly: rustls says how much it needs when given no room.
pub(super) fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    let need = match encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(EncodeError::AlreadyEncoded) => return Err(TlsError::Unexpected("encoded twice")),
    };
    let at = out.len();
    out.resize(at + need, 0);
    match encode(&mut out[at..]) {
        Ok(n) => {
            out.truncate(at + n.min(need));
            Ok(())
        }
        Err(_) => {
            out.truncate(at);
            Err(TlsError::Unexpected("a record larger than rustls said"))
        }
    }
}

/// Lets `write` put records behind `out`'s bytes, with `guess` bytes of room first and as
/// many as rustls asks for then; `write` sees `out`'s bytes before the room too (staged
/// plaintext). Returns the bytes written, which now end `out`.
fn write_after(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> Result<usize, TlsError> {
    let at = out.len();
    out.resize(at + guess, 0);
    let (head, room) = out.split_at_mut(at);
    let mut result = write(head, room);
    if let Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) = result {
        out.resize(at + required_size, 0);
        let (head, room) = out.split_at_mut(at);
        result = write(head, room);
    }
    match result {
        Ok(n) => {
            let n = n.min(out.len() - at);
            out.truncate(at + n);
            Ok(n)
        }
        Err(e) => {
            out.truncate(at);
            Err(match e {
                EncryptError::EncryptExhausted => TlsError::KeysExhausted,
                EncryptError::InsufficientSize(_) => {
                    TlsError::Unexpected("records larger than rustls said")
                }
            })
        }
    }
}
