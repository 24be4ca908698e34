//! The relay's wire format: one relayed frame per Redis message, its route in a text head.

use crate::hub::broadcast::Route;
use crate::hub::Frame;
use crate::protocol::Channel;

/// One relayed frame: `TKR1 <epoch> <seq> <flags> <channel> <also|->\n<payload>`, the payload
/// being the frame's JSON exactly as the origin encoded it.
pub(crate) fn encode(frame: &Frame, epoch: u64) -> Vec<u8> {
    let payload = frame.payload();
    let mut out = Vec::with_capacity(payload.len() + 64);
    let flags = flags(frame);
    let also = frame.also().map_or("-".to_owned(), Channel::to_string);
    let head = format!(
        "TKR1 {epoch} {} {} {} {also}\n",
        frame.seq(),
        if flags.is_empty() { "-" } else { &flags },
        frame.channel()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The route's flags: `r`etain, `c`lears, `f`orget, `s`ets state, e`x`its state.
fn flags(frame: &Frame) -> String {
    [
        (frame.retain(), 'r'),
        (frame.clears(), 'c'),
        (frame.forget(), 'f'),
        (frame.sets_state(), 's'),
        (frame.ends_state(), 'x'),
    ]
    .into_iter()
    .filter_map(|(on, c)| on.then_some(c))
    .collect()
}

/// A relayed frame, read back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Relayed<'a> {
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) flags: &'a str,
    pub(crate) channel: Channel,
    pub(crate) also: Option<Channel>,
    pub(crate) payload: &'a [u8],
}

impl Relayed<'_> {
    /// Where the frame goes here, as its origin routed it. `seed`: only set the channel's
    /// last value (frames loaded from `<prefix>:last`).
    pub(crate) fn route(&self, seed: bool) -> Route {
        let flag = |c| self.flags.contains(c);
        Route {
            channel: self.channel.clone(),
            also: self.also.clone(),
            retain: flag('r'),
            clears: flag('c'),
            forget: flag('f'),
            seed,
            sets_state: flag('s'),
            ends_state: flag('x'),
        }
    }
}

/// Reads a relayed frame; `None` if it is not one.
pub(crate) fn decode(msg: &[u8]) -> Option<Relayed<'_>> {
    let nl = memchr::memchr(b'\n', msg)?;
    let head = std::str::from_utf8(&msg[..nl]).ok()?;
    let mut parts = head.split(' ');
    if parts.next()? != "TKR1" {
        return None;
    }
    let epoch = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let flags = parts.next()?;
    let channel = Channel::parse(parts.next()?).ok()?;
    let also = match parts.next()? {
        "-" => None,
        c => Some(Channel::parse(c).ok()?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Relayed {
        epoch,
        seq,
        flags: if flags == "-" { "" } else { flags },
        channel,
        also,
        payload: &msg[nl + 1..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::broadcast::Broadcaster;
    use crate::hub::HubShared;
    use std::sync::Arc;

    #[test]
    fn a_frame_reads_back_with_its_route_seq_and_payload() {
        let shared = Arc::new(HubShared::new(1, 8));
        let b = Broadcaster::new(shared.clone());
        let seq = b.topic_deleted("orders").unwrap();
        let frame = shared.links[0].ring.pop().unwrap();
        let msg = encode(&frame, 42);
        let r = decode(&msg).unwrap();
        assert_eq!((r.epoch, r.seq, r.flags), (42, seq, "c"));
        assert_eq!(r.channel, Channel::Events);
        assert_eq!(r.also, Some(Channel::topic("orders")));
        assert_eq!(r.payload, frame.payload());
        let route = r.route(false);
        assert!(route.clears && !route.retain && !route.forget && !route.seed);
        assert!(decode(b"TKR2 1 2 - events -\n{}").is_none());
        assert!(decode(b"TKR1 1 2 - events - extra\n{}").is_none());
    }
}
