//! Appending one broadcast frame to its subscribers' queues: the distributor's inner loop.

use std::rc::Rc;

use slab::Slab;

use super::{ClientLink, Delivery};
use crate::hub::broadcast::Frame;
use crate::hub::deflate::Deflater;
use crate::protocol::Channel;

/// One frame on its way to a channel's subscribers.
pub(super) struct Push<'a> {
    pub(super) frame: &'a Rc<Frame>,
    /// Each client's bound on queued broadcast frames.
    pub(super) cap: usize,
    /// Clients subscribed to this channel already got the frame (its first channel).
    pub(super) skip_if_subscribed: Option<&'a Channel>,
    pub(super) deflater: Option<&'a Deflater>,
}

impl Push<'_> {
    /// Appends the frame to the queues of the clients `keys`, compressed for those that take
    /// it so (made once, by the first of them).
    pub(super) fn to<C: AsRef<ClientLink>>(
        &self,
        clients: &Slab<Rc<C>>,
        keys: &[usize],
        mut dirty: Option<&mut Vec<usize>>,
        delivery: &mut Delivery,
    ) {
        let frame = self.frame;
        // Whether the frame was given its compressed form: asked once, at the first client
        // that takes compressed frames.
        let mut readied = self.deflater.is_none();
        for &key in keys {
            let link = (*clients[key]).as_ref();
            if link.held_back(frame) {
                continue;
            }
            if self.skip_if_subscribed.is_some_and(|c| link.subscribed(c)) {
                continue;
            }
            let mut out = link.out.borrow_mut();
            if !readied && out.deflate() {
                if let Some(d) = self.deflater {
                    frame.deflate_with(d);
                }
                readied = true;
            }
            if out.push_shared(frame.clone(), self.cap) {
                delivery.dropped += 1;
            }
            drop(out);
            delivery.queued += 1;
            match dirty.as_deref_mut() {
                Some(list) => {
                    if !link.dirty.replace(true) {
                        list.push(key);
                    }
                }
                None => link.wake_writer(),
            }
        }
    }
}
