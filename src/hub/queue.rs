//! A client's outbound queue: broadcast frames bounded with drop-oldest, replies counted,
//! control frames and the close put first at a frame boundary. Pure single-threaded code.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::hub::broadcast::Frame;

/// One item waiting to be written to a client.
#[derive(Debug)]
pub(crate) enum Out {
    /// A broadcast frame, shared with every other client: the shard wraps the cross-core `Arc`
    /// once in an `Rc`, so per-client clones never touch a cache line another core writes.
    Shared(Rc<Frame>),
    /// Bytes for this client only: replies, control frames.
    Owned(Box<[u8]>),
}

impl Out {
    /// The bytes written: a broadcast frame's compressed form when the client takes it and the
    /// frame has one (settled before the frame was queued, see [`OutQueue::push_shared`], so
    /// it never changes under a partly written frame).
    pub(crate) fn bytes(&self, deflate: bool) -> &[u8] {
        match self {
            Self::Shared(f) if deflate => f.deflated().unwrap_or_else(|| f.bytes()),
            Self::Shared(f) => f.bytes(),
            Self::Owned(b) => b,
        }
    }
}

/// A client's outbound queue: broadcast frames bounded with drop-oldest, replies counted.
///
/// The queue is also the writer's batch: the writer points its iovecs at the queued items and
/// `head_written` says how much of the first one already went out.
#[derive(Debug, Default)]
pub struct OutQueue {
    items: VecDeque<Out>,
    head_written: usize,
    shared: usize,
    reply_bytes: usize,
    control: Vec<u8>,
    dropped: u64,
    close: Option<Box<[u8]>>,
    /// Whether the replies queued before the close go out ahead of it.
    close_after_replies: bool,
    closed: bool,
    /// The first item is the upgrade's `101` answer, not fully written yet: nothing goes in
    /// front of it, and a close keeps it.
    pinned: bool,
    /// The client takes broadcast frames compressed (it negotiated permessage-deflate with the
    /// full window): those that have a compressed form go compressed.
    deflate: bool,
}

/// What [`OutQueue::advance`] completed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Items fully written.
    pub(crate) frames: u64,
    /// Bytes saved by the compressed frames among them (plain length minus compressed).
    pub(crate) saved: u64,
    /// Whether the close frame was among them.
    pub(crate) close_sent: bool,
}

impl OutQueue {
    /// Appends a broadcast frame; when `cap` frames are already queued the oldest one not yet
    /// partly written is dropped. Returns whether a frame was dropped.
    pub(crate) fn push_shared(&mut self, frame: Rc<Frame>, cap: usize) -> bool {
        if self.close.is_some() || self.closed {
            return false;
        }
        let mut dropped = false;
        if self.shared >= cap {
            let skip = usize::from(self.head_written > 0);
            if let Some(i) = self
                .items
                .iter()
                .skip(skip)
                .position(|o| matches!(o, Out::Shared(_)))
            {
                self.items.remove(i + skip);
                self.shared -= 1;
                self.dropped += 1;
                dropped = true;
            }
        }
        if self.items.capacity() == 0 {
            // An idle client holds its queue's first allocation (it got the snapshot): one
            // slot, not the four a first push makes; a busy client's queue grows as it needs.
            self.items.reserve_exact(1);
        }
        if self.deflate {
            // Whatever path queued it, the frame's form is fixed from now on.
            frame.settle_deflated();
        }
        self.items.push_back(Out::Shared(frame));
        self.shared += 1;
        dropped
    }

    /// Makes the client take broadcast frames compressed when they have a compressed form.
    pub(crate) fn set_deflate(&mut self) {
        self.deflate = true;
    }

    /// Whether the client takes broadcast frames compressed: the frames queued for it should
    /// be given their compressed form first (see [`Frame::deflate_with`]).
    pub(crate) fn deflate(&self) -> bool {
        self.deflate
    }

    /// Broadcast frames queued.
    pub(crate) fn shared_len(&self) -> usize {
        self.shared
    }

    /// Appends a reply for this client; returns the reply bytes now waiting.
    /// Puts the upgrade's `101` answer first: it goes out ahead of everything, a `lagged`
    /// notice, control bytes and a close included, and is not counted as a frame or a reply.
    /// Nothing can have been missed before it.
    pub(crate) fn push_upgrade(&mut self, bytes: Box<[u8]>) {
        if self.items.capacity() == 0 {
            // The answer and the snapshot: an idle client keeps two slots.
            self.items.reserve_exact(2);
        }
        self.items.push_front(Out::Owned(bytes));
        self.pinned = true;
        self.dropped = 0;
    }

    pub(crate) fn push_reply(&mut self, bytes: Box<[u8]>) -> usize {
        if self.close.is_none() && !self.closed {
            self.reply_bytes += bytes.len();
            self.items.push_back(Out::Owned(bytes));
        }
        self.reply_bytes
    }

    /// Appends control-frame bytes (pong, ping), sent ahead of queued frames at the next frame
    /// boundary.
    pub(crate) fn push_control(&mut self, bytes: &[u8]) {
        if self.close.is_none() && !self.closed {
            self.control.extend_from_slice(bytes);
        }
    }

    /// Asks for a close frame at the next frame boundary; queued frames are discarded.
    pub(crate) fn close_with(&mut self, frame: Box<[u8]>) {
        if self.close.is_none() && !self.closed {
            self.close = Some(frame);
        }
    }

    /// Like [`Self::close_with`], but the replies and control frames already queued (answers
    /// to what the client sent before the frame that ends it) go out first; broadcasts are
    /// still discarded. Bounded by the reply backlog.
    pub(crate) fn close_after_replies(&mut self, frame: Box<[u8]>) {
        if self.close.is_none() && !self.closed {
            self.close = Some(frame);
            self.close_after_replies = true;
        }
    }

    /// Makes the control bytes (tungstenite's reply to the peer's close) our close frame,
    /// after the replies already queued.
    pub(crate) fn close_with_control(&mut self) {
        let mut control = std::mem::take(&mut self.control);
        if control.is_empty() {
            return;
        }
        // tungstenite appends its close reply to any pong still waiting here: the last frame
        // is the close (a close frame from a server is at most 2 + 125 bytes), the rest replies.
        let close_at = control.len() - close_frame_len(&control);
        let close = control.split_off(close_at);
        if !control.is_empty() {
            self.reply_bytes += control.len();
            self.items.push_back(Out::Owned(control.into_boxed_slice()));
        }
        self.close_after_replies(close.into_boxed_slice());
    }

    /// Control bytes (pongs) waiting for the next frame boundary, plus the replies queued.
    pub(crate) fn reply_backlog(&self) -> usize {
        self.control.len() + self.reply_bytes
    }

    /// Whether a close frame is queued or written: only the writer handles the queue then.
    pub(crate) fn closing(&self) -> bool {
        self.close.is_some() || self.closed
    }

    /// Whether the first `max` slices hold everything left, the close frame last.
    pub(crate) fn ends_with_close(&self, max: usize) -> bool {
        self.closed && self.items.len() <= max
    }

    /// Whether the writer has something to send.
    pub(crate) fn has_work(&self) -> bool {
        // Once closed, the queue holds only the close frame until it is written.
        !self.items.is_empty()
            || (!self.closed && (!self.control.is_empty() || self.close.is_some()))
    }

    /// Counts frames this client may have missed elsewhere (its core's ring overflowed).
    pub(crate) fn add_missed(&mut self, n: u64) {
        if !self.closed && self.close.is_none() {
            self.dropped += n;
        }
    }

    /// Frames dropped since the last `lagged` notice.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Broadcast frames queued.
    pub fn len(&self) -> usize {
        self.shared
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// At a frame boundary, puts what must go first at the front: the close frame (dropping
    /// everything else), else control bytes, then the `lagged` notice (built by `lagged`).
    /// Returns the dropped count reported, if any.
    pub(crate) fn prepare(&mut self, lagged: impl FnOnce(u64) -> Box<[u8]>) -> Option<u64> {
        if self.head_written > 0 || self.closed {
            return None;
        }
        // Where what goes first is put: behind the upgrade's answer while it waits.
        let front = usize::from(self.pinned);
        if let Some(close) = self.close.take() {
            if self.close_after_replies {
                self.items.retain(|o| matches!(o, Out::Owned(_)));
                if !self.control.is_empty() {
                    let control = std::mem::take(&mut self.control).into_boxed_slice();
                    self.items.insert(front, Out::Owned(control));
                }
            } else {
                self.items.truncate(front);
            }
            self.control = Vec::new();
            self.shared = 0;
            self.reply_bytes = 0;
            self.items.push_back(Out::Owned(close));
            self.closed = true;
            return None;
        }
        let mut reported = None;
        if self.dropped > 0 && !self.items.is_empty() {
            reported = Some(self.dropped);
            self.items.insert(front, Out::Owned(lagged(self.dropped)));
            self.reply_bytes += self.items[front].bytes(false).len();
            self.dropped = 0;
        }
        if !self.control.is_empty() {
            let control = std::mem::take(&mut self.control).into_boxed_slice();
            self.reply_bytes += control.len();
            self.items.insert(front, Out::Owned(control));
        }
        reported
    }

    /// Whether no frame is half-written.
    pub(crate) fn at_frame_boundary(&self) -> bool {
        self.head_written == 0
    }

    /// The unwritten bytes of the queued items, in order, at most `max` slices.
    pub(crate) fn slices(&self, max: usize) -> impl Iterator<Item = &[u8]> {
        self.items.iter().take(max).enumerate().map(|(i, o)| {
            let b = o.bytes(self.deflate);
            if i == 0 {
                &b[self.head_written..]
            } else {
                b
            }
        })
    }

    /// The `seq` of every broadcast frame queued, in order.
    #[cfg(test)]
    pub(crate) fn shared_seqs(&self) -> Vec<u64> {
        self.items
            .iter()
            .filter_map(|o| match o {
                Out::Shared(f) => Some(f.seq()),
                Out::Owned(_) => None,
            })
            .collect()
    }

    /// Records that `n` bytes were written.
    pub(crate) fn advance(&mut self, mut n: usize) -> Progress {
        let mut progress = Progress::default();
        while n > 0 {
            let Some(front) = self.items.front() else {
                break;
            };
            let left = front.bytes(self.deflate).len() - self.head_written;
            if n < left {
                self.head_written += n;
                break;
            }
            n -= left;
            self.head_written = 0;
            if std::mem::take(&mut self.pinned) {
                // The upgrade's answer: not a frame, not a reply.
                self.items.pop_front();
                continue;
            }
            match self.items.pop_front() {
                Some(Out::Shared(f)) => {
                    self.shared -= 1;
                    if let (true, Some(d)) = (self.deflate, f.deflated()) {
                        progress.saved += f.bytes().len().saturating_sub(d.len()) as u64;
                    }
                }
                Some(Out::Owned(b)) => {
                    self.reply_bytes = self.reply_bytes.saturating_sub(b.len());
                    if self.closed && self.items.is_empty() {
                        progress.close_sent = true;
                    }
                }
                None => {}
            }
            progress.frames += 1;
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            // A burst is over: an idle client keeps no large queue.
            self.items = VecDeque::new();
        }
        progress
    }
}

/// Length of the last frame in `bytes`, a run of whole unmasked server frames whose last one is
/// a control frame (so its length fits the 7-bit field).
fn close_frame_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let len = frame_len(&bytes[at..]);
        if at + len >= bytes.len() {
            return bytes.len() - at;
        }
        at += len;
    }
}

/// Length of the unmasked frame at the start of `b` (header included).
fn frame_len(b: &[u8]) -> usize {
    match b.get(1).map(|l| l & 0x7f) {
        None => b.len(),
        Some(126) if b.len() >= 4 => 4 + usize::from(u16::from_be_bytes([b[2], b[3]])),
        Some(127) if b.len() >= 10 => {
            let n = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
            10usize.saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
        }
        Some(126 | 127) => b.len(),
        Some(n) => 2 + usize::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_item_stays_two_words() {
        // Every client's queue holds these: compressed frames cost no byte here.
        assert_eq!(std::mem::size_of::<Out>(), 16);
    }

    #[test]
    fn a_failure_close_goes_after_the_replies_but_drops_broadcasts() {
        let mut q = OutQueue::default();
        q.push_reply(b"reply".to_vec().into_boxed_slice());
        let frame = Frame::for_test(b"broadcast");
        q.push_shared(Rc::new(frame), 8);
        q.push_control(b"pong");
        q.close_after_replies(b"close".to_vec().into_boxed_slice());
        q.prepare(|_| unreachable!());
        let sent: Vec<&[u8]> = q.slices(8).collect();
        assert_eq!(sent, [b"pong".as_slice(), b"reply", b"close"]);
        assert_eq!(q.len(), 0, "no broadcast is counted as queued");
    }

    #[test]
    fn the_peers_close_reply_is_split_from_pongs_queued_with_it() {
        let mut q = OutQueue::default();
        let pong = [0x8a, 2, b'h', b'i'];
        let close = [0x88, 2, 0x03, 0xe8];
        q.push_control(&pong);
        q.push_control(&close);
        q.close_with_control();
        q.prepare(|_| unreachable!());
        let sent: Vec<&[u8]> = q.slices(8).collect();
        assert_eq!(sent, [pong.as_slice(), close.as_slice()]);
    }

    #[test]
    fn the_upgrade_answer_goes_first_whatever_comes_after_it() {
        let lagged = |n: u64| format!("lagged {n}").into_bytes().into_boxed_slice();
        let mut q = OutQueue::default();
        q.add_missed(3); // before the upgrade: nothing was missed
        q.push_upgrade(b"101".to_vec().into_boxed_slice());
        q.push_shared(Rc::new(Frame::for_test(b"snapshot")), 1);
        q.push_shared(Rc::new(Frame::for_test(b"newer")), 1); // drops "snapshot"
        q.push_control(b"pong");
        assert_eq!(q.prepare(lagged), Some(1));
        let sent: Vec<&[u8]> = q.slices(8).collect();
        assert_eq!(sent[0], b"101", "nothing in front of the answer");
        assert_eq!(sent[1..3], [b"pong".as_slice(), b"lagged 1"]);
        // The answer is neither a frame nor a reply.
        let all: usize = sent.iter().map(|s| s.len()).sum();
        assert_eq!(q.advance(all).frames, 3);
        assert_eq!(q.reply_backlog(), 0);
        // A close while the answer is unwritten keeps it, first.
        let mut q = OutQueue::default();
        q.push_upgrade(b"101".to_vec().into_boxed_slice());
        q.push_shared(Rc::new(Frame::for_test(b"snapshot")), 4);
        q.close_with(b"close".to_vec().into_boxed_slice());
        q.prepare(|_| unreachable!());
        let sent: Vec<&[u8]> = q.slices(8).collect();
        assert_eq!(sent, [b"101".as_slice(), b"close"]);
        assert!(q.ends_with_close(8));
        assert!(q.advance(8).close_sent);
    }

    #[test]
    fn close_discards_the_queue_and_goes_alone() {
        let mut q = OutQueue::default();
        q.push_reply(b"reply".to_vec().into_boxed_slice());
        q.push_control(b"pong");
        q.close_with(b"close".to_vec().into_boxed_slice());
        q.prepare(|_| unreachable!());
        assert!(q.has_work(), "the close frame itself is work");
        let sent: Vec<&[u8]> = q.slices(8).collect();
        assert_eq!(sent, [b"close".as_slice()]);
        assert_eq!(
            q.advance(5),
            Progress {
                frames: 1,
                close_sent: true,
                saved: 0
            }
        );
        assert!(!q.has_work());
    }
}
