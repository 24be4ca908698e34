//! permessage-deflate's inflating side (RFC 7692 section 7.2.2), one per shard.
//!
//! The hub always negotiates `client_no_context_takeover`, so every compressed client message
//! starts from an empty window: nothing is kept per connection between messages, and one
//! inflater serves every connection of the shard, each message inflated whole once its last
//! fragment is in. The inflated size is limited as it is produced: a message that would
//! inflate past the limit stops costing work and memory as soon as it passes it, however far
//! it would have gone.

use flate2::{Decompress, FlushDecompress, Status};

use super::decoder::Fault;

/// What a sender strips from the end of each compressed message and the receiver appends back
/// (an empty stored block, RFC 7692 section 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The output buffer's first size: a small message needs no more.
const FIRST: usize = 16 * 1024;

/// Inflated bytes the messages of one read may come to before the reader lets the shard's other
/// tasks run (and counts them against its read budget): a compressed message can inflate a
/// thousand times, so the bytes read alone would let one client hold the core.
pub(crate) const INFLATE_SLICE: u64 = 1 << 20;

/// The output buffer's largest size kept between messages: one big message does not leave the
/// shard holding memory its size for good.
const KEEP: usize = 64 * 1024;

/// The shard's inflater: its state and output buffer, both made at the first compressed
/// message (a shard that never sees one allocates nothing).
#[derive(Debug, Default)]
pub(crate) struct Inflater {
    /// Raw deflate (no zlib header), 15-bit window; reset before each message.
    state: Option<Decompress>,
    /// Room for the inflated message: all of it initialized (zeroed once, as it grows), so
    /// each message is given exactly the room its limit allows, whatever a bigger one left.
    out: Vec<u8>,
    /// Messages inflated since [`Self::take_count`].
    count: u64,
    /// Bytes they inflated to (as far as they went).
    bytes: u64,
}

impl Inflater {
    /// Inflates one message: `compressed` is its payload as the client sent it (without the
    /// tail, which is appended here). Fails with [`Fault::TooBig`] once the output would pass
    /// `max` bytes, without inflating the rest, and with [`Fault::Deflate`] on data that is
    /// not deflate or goes on past the final block. Call [`Self::trim`] when done with the
    /// result.
    pub(crate) fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<&[u8], Fault> {
        let state = self.state.get_or_insert_with(|| Decompress::new(false));
        state.reset(false);
        self.count += 1;
        // One byte past the limit is room enough to learn that the message is over it.
        let limit = max.saturating_add(1);
        let result = run(state, &mut self.out, compressed, limit);
        self.bytes += state.total_out();
        match result {
            Ok(len) => Ok(self.out.get(..len).unwrap_or_default()),
            Err(fault) => {
                self.trim();
                Err(fault)
            }
        }
    }

    /// Messages inflated (or tried) and the bytes they came to since the last call, for the
    /// shard's counter and the reader's budget.
    pub(crate) fn take_count(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.count),
            std::mem::take(&mut self.bytes),
        )
    }

    /// Whether the messages inflated since [`Self::take_count`] used up a slice.
    pub(crate) fn slice_spent(&self) -> bool {
        self.bytes >= INFLATE_SLICE
    }

    /// The bytes the last message inflated to, as far as it went.
    #[cfg(test)]
    pub(crate) fn produced(&self) -> u64 {
        self.state.as_ref().map_or(0, Decompress::total_out)
    }

    /// Gives back the memory of a big message's output (called once the message was acted on).
    pub(crate) fn trim(&mut self) {
        if self.out.len() > KEEP {
            self.out.truncate(KEEP);
            self.out.shrink_to_fit();
        }
    }
}

/// Inflates `compressed` and then the tail into `out`, which never grows past `limit` bytes.
/// Returns the inflated length.
fn run(
    state: &mut Decompress,
    out: &mut Vec<u8>,
    compressed: &[u8],
    limit: usize,
) -> Result<usize, Fault> {
    let mut len = 0;
    for (input, ours) in [(compressed, false), (TAIL.as_slice(), true)] {
        let mut rest = input;
        loop {
            if len == out.len() {
                // Doubling, up to the limit.
                let more = out.len().max(FIRST).min(limit - len);
                out.reserve_exact(more);
                out.resize(len + more, 0);
            }
            let room = out.len().min(limit);
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let status = state
                .decompress(rest, &mut out[len..room], FlushDecompress::None)
                .map_err(|_| Fault::Deflate)?;
            let used = usize::try_from(state.total_in() - in_before).unwrap_or(usize::MAX);
            let made = usize::try_from(state.total_out() - out_before).unwrap_or(usize::MAX);
            rest = rest.get(used..).unwrap_or_default();
            len = len.saturating_add(made).min(room);
            if len >= limit {
                return Err(Fault::TooBig);
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL) ended the stream: only the tail we append may follow.
                return if ours || rest.is_empty() {
                    Ok(len)
                } else {
                    Err(Fault::Deflate)
                };
            }
            if len < room {
                // Inflating stops short of a full output only for want of input.
                if rest.is_empty() {
                    break;
                }
                if used == 0 && made == 0 {
                    // Never seen; a stuck stream is refused rather than spun on.
                    return Err(Fault::Deflate);
                }
            }
        }
    }
    Ok(len)
}

#[cfg(test)]
/// `data` compressed as a client compresses a message: raw deflate, a sync flush, and its
/// trailing `00 00 ff ff` stripped (or, with `finish`, one final block).
pub(crate) fn compress(data: &[u8], finish: bool) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let flush = if finish {
        flate2::FlushCompress::Finish
    } else {
        flate2::FlushCompress::Sync
    };
    loop {
        let used = c.total_in() as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let status = c.compress_vec(&data[used..], &mut out, flush).unwrap();
        if c.total_in() as usize == data.len()
            && out.len() < out.capacity()
            && (!finish || status == flate2::Status::StreamEnd)
        {
            break;
        }
    }
    if !finish {
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
    }
    out
}

/// A zip bomb: `mib` MiB of zeros, compressed (about 1 KB a MiB). Made of one compressed MiB
/// repeated, its tail kept between the copies so each starts on a byte: the window holds
/// zeros all along, so every copy inflates to zeros again.
#[cfg(test)]
pub(crate) fn bomb(mib: usize) -> Vec<u8> {
    let mut one = compress(&vec![0; 1 << 20], false);
    one.extend_from_slice(&TAIL);
    let mut bomb = one.repeat(mib);
    bomb.truncate(bomb.len() - TAIL.len());
    bomb
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn messages_round_trip() {
        let mut inf = Inflater::default();
        assert!(
            inf.state.is_none() && inf.out.capacity() == 0,
            "nothing until used"
        );
        let text = "hello, deflate ".repeat(1000);
        for finish in [false, true] {
            let c = compress(text.as_bytes(), finish);
            assert!(c.len() < 200);
            assert_eq!(inf.inflate(&c, 1 << 20), Ok(text.as_bytes()));
            // The same state, reset, serves the next message.
            assert_eq!(inf.inflate(&compress(b"x", finish), 10), Ok(&b"x"[..]));
        }
        // An empty message: an empty block, or nothing at all before the tail.
        assert_eq!(inf.inflate(&compress(b"", false), 0), Ok(&[][..]));
        assert_eq!(inf.inflate(&[0x00], 0), Ok(&[][..]));
        assert_eq!(inf.inflate(&[0x02, 0x00], 0), Ok(&[][..]));
        assert_eq!(inf.inflate(&[], 0), Ok(&[][..]));
        // RFC 7692 section 7.2.3.1's "Hello", and 7.2.3.4's with BFINAL set.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inf.inflate(&hello, 5), Ok(&b"Hello"[..]));
        let final_hello = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inf.inflate(&final_hello, 5), Ok(&b"Hello"[..]));
        assert_eq!(inf.inflate(&hello, 4), Err(Fault::TooBig));
    }

    #[test]
    fn bad_data_fails() {
        let mut inf = Inflater::default();
        // Block type 3 is reserved.
        assert_eq!(inf.inflate(&[0x07, 0x00], 100), Err(Fault::Deflate));
        // A stored block whose length and its complement disagree.
        assert_eq!(
            inf.inflate(&[0x00, 0x05, 0x00, 0x00, 0x00], 100),
            Err(Fault::Deflate)
        );
        // Bytes after the final block.
        let mut trailing = compress(b"abc", true);
        trailing.push(0x00);
        assert_eq!(inf.inflate(&trailing, 100), Err(Fault::Deflate));
        // And the inflater is fine afterwards.
        assert_eq!(inf.inflate(&compress(b"abc", false), 3), Ok(&b"abc"[..]));
    }

    #[test]
    fn the_limit_stops_inflating() {
        let mut inf = Inflater::default();
        let data = vec![b'a'; 300_000];
        let c = compress(&data, false);
        assert_eq!(inf.inflate(&c, 300_000).map(<[u8]>::len), Ok(300_000));
        assert_eq!(inf.inflate(&c, 299_999), Err(Fault::TooBig));
        let state = inf.state.as_ref().unwrap();
        assert_eq!(
            state.total_out(),
            300_000,
            "stopped one byte past the limit"
        );
        assert!(inf.out.capacity() <= KEEP, "trimmed after the failure");
        // A smaller limit after a bigger message: the room left is not used past it.
        assert_eq!(inf.inflate(&c, 1000), Err(Fault::TooBig));
        assert_eq!(inf.state.as_ref().unwrap().total_out(), 1001);
        // A big success is trimmed by the caller once used.
        assert!(inf.inflate(&c, 1 << 20).is_ok());
        assert!(inf.out.len() >= 300_000);
        inf.trim();
        assert!(inf.out.capacity() <= KEEP);
    }

    #[test]
    fn a_zip_bomb_costs_only_the_limit() {
        let mut inf = Inflater::default();
        // 50 MiB of zeros, a compressed message of about 50 KB.
        let bomb = bomb(50);
        assert!(bomb.len() < 512 * 1024);
        // The copies do add up (shown on a smaller one).
        let small = inf
            .inflate(&self::bomb(3), 3 << 20)
            .map(|out| out.iter().all(|&b| b == 0));
        assert_eq!((small, inf.produced()), (Ok(true), 3 << 20));
        let start = Instant::now();
        assert_eq!(inf.inflate(&bomb, 512 * 1024), Err(Fault::TooBig));
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        let state = inf.state.as_ref().unwrap();
        assert_eq!(state.total_out(), 512 * 1024 + 1);
        assert!(
            state.total_in() < bomb.len() as u64 / 50,
            "the rest was not read"
        );
    }

    #[test]
    fn damaged_data_fails_cleanly() {
        // Compressed messages with bytes changed, cut or added: never a panic or a hang, and
        // never more output than the limit.
        let samples = [
            compress("damaged text, damaged text ".repeat(40).as_bytes(), false),
            compress(&(0..=255).collect::<Vec<u8>>().repeat(8), true),
            bomb(1),
        ];
        let mut inf = Inflater::default();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        for round in 0..3000 {
            let mut c = samples[round % samples.len()].clone();
            for _ in 0..1 + next() % 3 {
                match next() % 3 {
                    0 => c.truncate(next() % (c.len() + 1)),
                    1 => c.push(next() as u8),
                    _ if !c.is_empty() => {
                        let at = next() % c.len();
                        c[at] ^= 1 << (next() % 8);
                    }
                    _ => {}
                }
            }
            let max = next() % 5000;
            match inf.inflate(&c, max) {
                Ok(out) => assert!(out.len() <= max),
                Err(Fault::TooBig) => assert_eq!(inf.produced(), max as u64 + 1),
                Err(fault) => assert_eq!(fault, Fault::Deflate),
            }
            inf.trim();
        }
    }
}
