//! permessage-deflate's sending side (RFC 7692): one raw-deflate compressor per shard.
//!
//! Every client that negotiated the extension agreed to `server_no_context_takeover`, so a
//! message compressed from a fresh window is valid for all of them: a broadcast frame is
//! compressed at most once, by the first shard that has such a client to deliver it to, and the
//! compressed frame is shared like the plain one ([`crate::hub::broadcast::Frame`] keeps both).
//! Frames whose payload is under the threshold, and frames that deflate does not make smaller,
//! go uncompressed (RSV1 clear), which the extension allows message by message.

use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::config::HubConfig;
use crate::hub::shared::HubShared;
use crate::protocol::frame_header;

/// What every deflate block flushed with `Z_SYNC_FLUSH` ends with; RFC 7692 7.2.1 has the
/// sender strip it and the receiver put it back.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// One shard's compressor for frames sent to clients that negotiated permessage-deflate.
pub(crate) struct Deflater {
    level: u32,
    threshold: usize,
    /// Created on the first compression: a shard whose clients never negotiate compression
    /// holds no deflate state (about 260 KiB at level 6).
    z: RefCell<Option<Compress>>,
    /// The compressed bytes of the frame being made; its allocation is reused.
    scratch: RefCell<Vec<u8>>,
    shared: Arc<HubShared>,
    shard: usize,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("level", &self.level)
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl Deflater {
    /// The compressor of shard `shard`, with the hub's level and threshold; it counts in that
    /// shard's statistics.
    pub(crate) fn new(config: &HubConfig, shared: Arc<HubShared>, shard: usize) -> Self {
        Self {
            level: config.compression_level,
            threshold: config.compression_threshold,
            z: RefCell::new(None),
            scratch: RefCell::new(Vec::new()),
            shared,
            shard,
        }
    }

    /// Whether a payload of `len` bytes is worth compressing.
    pub(crate) fn wants(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// The complete frame (FIN and RSV1 set, `opcode`) carrying `payload` compressed, or `None`
    /// when deflate does not make it smaller (the plain frame goes instead).
    pub(crate) fn frame(&self, opcode: u8, payload: &[u8]) -> Option<Box<[u8]>> {
        let mut z = self.z.borrow_mut();
        let z = z.get_or_insert_with(|| Compress::new(Compression::new(self.level), false));
        let mut out = self.scratch.borrow_mut();
        let deflated = compress(z, payload, &mut out);
        let frame = deflated.filter(|d| d.len() < payload.len()).map(|d| {
            let (head, n) = frame_header(0xc0 | opcode, d.len());
            let mut frame = Vec::with_capacity(n + d.len());
            frame.extend_from_slice(&head[..n]);
            frame.extend_from_slice(d);
            frame.into_boxed_slice()
        });
        if out.capacity() > 256 << 10 {
            // One huge message does not leave its buffer to the shard.
            *out = Vec::new();
        }
        let stats = &self.shared.stats[self.shard];
        stats.deflate_frames_total.fetch_add(1, Relaxed);
        stats
            .deflate_in_bytes_total
            .fetch_add(payload.len() as u64, Relaxed);
        let written = frame.as_ref().map_or(payload.len(), |f| f.len());
        stats
            .deflate_out_bytes_total
            .fetch_add(written as u64, Relaxed);
        frame
    }
}

/// Deflates `input` from a fresh state into `out` (cleared first), flushed to a byte boundary
/// with the sync tail removed. `None` if the compressor fails.
fn compress<'a>(z: &mut Compress, input: &[u8], out: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    z.reset();
    out.clear();
    out.reserve(input.len() / 2 + 64);
    loop {
        let consumed = z.total_in() as usize;
        let status = z
            .compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .ok()?;
        let done = z.total_in() as usize == input.len() && out.len() < out.capacity();
        if done || status == Status::StreamEnd {
            break;
        }
        // Out of room (the flush may need a few more bytes): grow and go on.
        out.reserve(out.capacity().max(4096));
    }
    let body = out.strip_suffix(&SYNC_TAIL)?;
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn inflate(deflated: &[u8]) -> Vec<u8> {
        let mut input = deflated.to_vec();
        input.extend_from_slice(&SYNC_TAIL);
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .expect("inflates");
        out
    }

    fn deflater(threshold: usize) -> Deflater {
        let config = HubConfig::default().compression_threshold(threshold);
        Deflater::new(&config, Arc::new(HubShared::new(1, 8)), 0)
    }

    #[test]
    fn a_frame_inflates_to_its_payload_and_carries_rsv1() {
        let d = deflater(16);
        let payload: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("{{\"p\":{},\"lag\":{}}},", i % 12, i * 7 % 1000).into_bytes())
            .collect();
        let frame = d.frame(0x1, &payload).expect("compresses");
        assert_eq!(frame[0], 0xc1, "FIN, RSV1, text");
        assert_eq!(frame[1], 126 + u8::from(frame.len() > 65_539));
        let header = if frame[1] == 126 { 4 } else { 10 };
        assert!(frame.len() < payload.len() / 3);
        assert_eq!(inflate(&frame[header..]), payload);
        // The same compressor, again from a fresh window: the same bytes.
        assert_eq!(d.frame(0x1, &payload).expect("compresses"), frame);
        let stats = d.shared.stats[0].snapshot();
        assert_eq!(stats.deflate_frames_total, 2);
        assert_eq!(stats.deflate_in_bytes_total, 2 * payload.len() as u64);
    }

    #[test]
    fn what_deflate_cannot_shrink_goes_plain() {
        let d = deflater(16);
        // Incompressible bytes: the compressed form would be longer.
        let mut x = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(d.frame(0x2, &noise), None);
        assert!(!d.wants(15) && d.wants(16));
    }

    #[test]
    fn small_and_empty_payloads_compress_correctly() {
        let d = deflater(0);
        for payload in [&b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..], b""] {
            if let Some(frame) = d.frame(0x1, payload) {
                assert_eq!(inflate(&frame[2..]), payload);
            }
        }
    }
}
