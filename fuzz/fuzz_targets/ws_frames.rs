//! Client frames decoded as a connection decodes them (the hub's limits, the bytes after the
//! head as the partially read tail), fed in arbitrary chunks: no panic, every chunk consumed
//! in bounded work, and no message over the configured maximum.
//!
//! Input: byte 0 picks the limit (even: the default 512 KiB; odd: a small
//! `max_message_size`) and, with its top bit, whether permessage-deflate was negotiated (RSV1
//! marks compressed messages, inflated under the same limit), byte 1 the tail length and the
//! chunk sizes; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use takhin_monitor::fuzz_support::{ClientFrames, Decoded};
use takhin_monitor::HubConfig;

fuzz_target!(|data: &[u8]| {
    let [limit, split, stream @ ..] = data else {
        return;
    };
    let cfg = if limit & 1 == 0 {
        HubConfig::default()
    } else {
        HubConfig::default().max_message_size(1 + usize::from((limit & 0x7f) >> 1) * 8)
    };
    let deflate = limit & 0x80 != 0;
    let max = cfg.max_message();
    let tail_len = usize::from(split & 0x3f).min(stream.len());
    let (tail, rest) = stream.split_at(tail_len);
    let mut frames = ClientFrames::new(&cfg, tail.to_vec(), deflate);
    let chunk = [1, 2, 7, 4096][usize::from(split >> 6)];
    let check = |d: Decoded| match d {
        Decoded::Text(n) | Decoded::Binary(n) => assert!(n <= max, "message of {n} > {max}"),
        Decoded::Ping(n) => assert!(n <= 125),
        Decoded::Close(n) => assert!(n <= 125 && n != 1),
        Decoded::Pong => {}
    };
    // The tail first, as a connection decodes it before its first read.
    match frames.feed(&mut [], check) {
        Ok(false) => {}
        Ok(true) | Err(()) => return,
    }
    for piece in rest.chunks(chunk) {
        let mut piece = piece.to_vec();
        match frames.feed(&mut piece, check) {
            Ok(false) => {}
            Ok(true) | Err(()) => return,
        }
    }
});
