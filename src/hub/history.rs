//! The broadcast history, for clients that resume after a reconnect (`?since=&epoch=`).
//!
//! One per hub, shared by every core: the same `Arc`'d frames the clients were sent, so it
//! costs memory per broadcast (a pointer and a time in the ring, and the frame kept alive a
//! while longer), never per client. Bounded by a count and an age. It holds what a client
//! cannot get back otherwise: events and published messages. Retained frames (the `metrics`
//! snapshot, detail frames) are state, replaced by their next value: a resume gets the latest.
//!
//! Every frame gets an ordinal as it is recorded; a resuming client's cursor is an ordinal,
//! so a cursor the history has overtaken knows exactly how many frames it lost. Frames are
//! recorded under the broadcast order lock, before they reach any ring: a frame in a ring is
//! in the history already (what lets a client switch from replay to live frames without a gap
//! or a repeat; see [`History::read`]).
//!
//! Several origins behind a relay: the history follows one stream, whose `epoch` it records.
//! An origin's history is its own broadcasts; a relay-only instance's is the origin's frames,
//! started again when the origin's `epoch` changes (it restarted).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_FRAMES};
use crate::hub::broadcast::Frame;

/// How much history a hub keeps (`HubConfig::history_frames`, `history_age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    /// At most this many frames (0 keeps none).
    pub(crate) frames: usize,
    /// None older than this.
    pub(crate) age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            frames: DEFAULT_HISTORY_FRAMES,
            age: DEFAULT_HISTORY_AGE,
        }
    }
}

/// Whose stream a frame is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// This hub's own broadcast.
    Local,
    /// Relayed from another instance, with its `epoch`.
    Relayed(u64),
}

/// The shared history.
#[derive(Debug)]
pub(crate) struct History {
    limits: HistoryLimits,
    /// This hub's own `epoch`.
    local_epoch: u64,
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    /// The stream followed.
    epoch: u64,
    /// Whether it is this hub's own (then relayed frames of other origins are not recorded).
    local: bool,
    /// (recorded at, in Unix µs, frame), oldest first.
    frames: VecDeque<(u64, Frame)>,
    /// The ordinal of `frames[0]` (of the next frame when empty).
    base: u64,
    /// The highest `seq` of a frame dropped from the front (or never seen: a relay-only
    /// instance joining a stream): a resume from below it cannot be complete.
    dropped_to: u64,
    /// The highest `seq` of the stream seen, held or not.
    last_seq: u64,
}

/// Where a resuming client is: the ordinal of the next frame to read, in the stream of
/// `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) next: u64,
    pub(crate) epoch: u64,
}

/// What [`History::read`] gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Read {
    /// Frames the history dropped before the cursor got to them (1 when the stream itself
    /// changed: how many is not known).
    pub(crate) lost: u64,
    /// Whether the cursor reached the end: then `last` is the stream's last frame.
    pub(crate) caught_up: bool,
    /// The stream's (epoch, last `seq`).
    pub(crate) last: (u64, u64),
}

impl History {
    /// An empty history following this hub's own stream (`epoch`) until a relayed one shows
    /// up without a local broadcast before it.
    pub(crate) fn new(limits: HistoryLimits, epoch: u64) -> Self {
        Self {
            limits,
            local_epoch: epoch,
            inner: Mutex::new(Ring {
                epoch,
                local: false,
                frames: VecDeque::new(),
                base: 0,
                dropped_to: 0,
                last_seq: 0,
            }),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in a frame as it is broadcast at `now_us` (Unix µs: the broadcast's own stamp, so
    /// no clock is read here), under the broadcast order lock, before it reaches any ring: held
    /// when clients could not get it back otherwise.
    pub(crate) fn record(&self, frame: &Frame, origin: Origin, now_us: u64) {
        if frame.seed() {
            // A relay's reloaded last values: old frames, not the stream.
            return;
        }
        // State (snapshots) and frames for no client are not held, but count in the stream.
        let kept = !(frame.retain() || frame.forget());
        let mut r = self.ring();
        match origin {
            Origin::Local if !r.local => {
                // This hub is an origin: its own stream from now on, and from its start
                // (relayed frames do not take local `seq`s, so none of its own was missed).
                r.local = true;
                r.epoch = self.local_epoch;
                r.base += r.frames.len() as u64;
                r.frames.clear();
                r.dropped_to = 0;
                r.last_seq = 0;
            }
            Origin::Local => {}
            Origin::Relayed(_) if r.local => return,
            Origin::Relayed(epoch)
                if epoch != r.epoch || r.last_seq == 0 || frame.seq() > r.last_seq + 1 =>
            {
                // Joining the origin's stream, the origin restarted, or frames went missing
                // on the way (the origin relays every frame it broadcasts, so its `seq`s come
                // one by one): what came before this frame is not here.
                r.epoch = epoch;
                r.base += r.frames.len() as u64;
                r.frames.clear();
                r.dropped_to = frame.seq().saturating_sub(1);
                r.last_seq = 0;
            }
            Origin::Relayed(_) if frame.seq() <= r.last_seq => return, // seen already
            Origin::Relayed(_) => {}
        }
        r.last_seq = r.last_seq.max(frame.seq());
        if !kept {
            return;
        }
        r.frames.push_back((now_us, frame.clone()));
        r.expire(now_us, self.limits);
    }

    /// Where a client that last saw `since` of stream `epoch` resumes, or `None` when the
    /// history cannot give back everything after it (another stream, or dropped already).
    pub(crate) fn resume(&self, since: u64, epoch: u64) -> Option<Cursor> {
        let mut r = self.ring();
        r.expire(unix_us(), self.limits);
        if epoch != r.epoch || since < r.dropped_to || since > r.last_seq {
            return None;
        }
        let skip = r.frames.partition_point(|(_, f)| f.seq() <= since);
        Some(Cursor {
            next: r.base + skip as u64,
            epoch: r.epoch,
        })
    }

    /// Appends to `out` the frames from `cursor` on for which `wanted` holds, looking at most
    /// at `scan` frames and taking at most `take`, and moves the cursor past what it looked
    /// at. Called on the client's shard, so when it says `caught_up`, every frame of this
    /// stream in that shard's ring has a `seq` of `last` at most if it was looked at here, and
    /// above it if it is still to be delivered live.
    pub(crate) fn read(
        &self,
        cursor: &mut Cursor,
        scan: usize,
        take: usize,
        mut wanted: impl FnMut(&Frame) -> bool,
        out: &mut Vec<Frame>,
    ) -> Read {
        let mut r = self.ring();
        r.expire(unix_us(), self.limits);
        let mut read = Read {
            last: (r.epoch, r.last_seq),
            ..Read::default()
        };
        if cursor.epoch != r.epoch {
            // The stream the cursor followed is gone (its origin restarted): nothing more of
            // it will come.
            read.lost = 1;
            read.caught_up = true;
            return read;
        }
        if cursor.next < r.base {
            read.lost = r.base - cursor.next;
            cursor.next = r.base;
        }
        let from = usize::try_from(cursor.next - r.base).unwrap_or(usize::MAX);
        let mut taken = 0;
        for (_, frame) in r.frames.range(from.min(r.frames.len())..).take(scan) {
            if taken == take {
                break;
            }
            cursor.next += 1;
            if wanted(frame) {
                out.push(frame.clone());
                taken += 1;
            }
        }
        read.caught_up = cursor.next == r.base + r.frames.len() as u64;
        read
    }

    /// The stream's (epoch, last `seq`).
    pub(crate) fn last(&self) -> (u64, u64) {
        let r = self.ring();
        (r.epoch, r.last_seq)
    }

    /// The frames held.
    pub(crate) fn len(&self) -> usize {
        self.ring().frames.len()
    }

    /// The bytes of the frames held (their encoded size).
    pub(crate) fn bytes(&self) -> usize {
        self.ring()
            .frames
            .iter()
            .map(|(_, f)| f.bytes().len())
            .sum()
    }
}

/// The wall clock in Unix µs (as frames are stamped).
pub(crate) fn unix_us() -> u64 {
    crate::hub::shared::now_stamp(0).unix_us
}

impl Ring {
    fn expire(&mut self, now_us: u64, limits: HistoryLimits) {
        let age_us = u64::try_from(limits.age.as_micros()).unwrap_or(u64::MAX);
        while let Some((at, frame)) = self.frames.front() {
            let old = now_us.saturating_sub(*at) > age_us;
            if self.frames.len() <= limits.frames && !old {
                break;
            }
            self.dropped_to = self.dropped_to.max(frame.seq());
            self.frames.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::broadcast::Broadcaster;
    use crate::hub::shared::HubShared;
    use crate::protocol::Channel;
    use std::sync::Arc;

    fn hub(limits: HistoryLimits) -> (Arc<HubShared>, Broadcaster) {
        let shared = Arc::new(HubShared::with_history(1, 1024, limits));
        (shared.clone(), Broadcaster::new(shared))
    }

    fn seqs(shared: &HubShared, cursor: &mut Cursor, max: usize) -> (Vec<u64>, Read) {
        let mut out = Vec::new();
        let read = shared
            .history
            .read(cursor, max, usize::MAX, |_| true, &mut out);
        (out.iter().map(Frame::seq).collect(), read)
    }

    #[test]
    fn a_resume_reads_every_event_after_since_and_no_snapshot() {
        let (shared, b) = hub(HistoryLimits::default());
        let epoch = shared.epoch;
        let first = b.topic_created("a", 1).unwrap();
        b.metrics(&1).unwrap();
        let since = b.group_updated("g", "Stable", 1).unwrap();
        b.metrics(&2).unwrap();
        let e1 = b.topic_deleted("a").unwrap();
        let e2 = b.publish(&Channel::Events, "custom", &3).unwrap();
        let last = b.metrics(&3).unwrap();

        let mut c = shared.history.resume(since, epoch).unwrap();
        let (got, read) = seqs(&shared, &mut c, 100);
        assert_eq!(got, [e1, e2]);
        assert_eq!(
            read,
            Read {
                lost: 0,
                caught_up: true,
                last: (epoch, last)
            }
        );
        // From the very start, and from the end (nothing to give, but complete).
        let mut c = shared.history.resume(0, epoch).unwrap();
        assert_eq!(seqs(&shared, &mut c, 100).0, [first, since, e1, e2]);
        let mut c = shared.history.resume(last, epoch).unwrap();
        assert_eq!(seqs(&shared, &mut c, 100).0, Vec::<u64>::new());
        // Another stream, or a seq this one never reached: not recoverable.
        assert_eq!(shared.history.resume(since, epoch + 1), None);
        assert_eq!(shared.history.resume(last + 1, epoch), None);
    }

    #[test]
    fn reading_in_steps_and_the_filter() {
        let (shared, b) = hub(HistoryLimits::default());
        let seqs_sent: Vec<u64> = (0..10)
            .map(|i| b.publish(&Channel::Events, "n", &i).unwrap())
            .collect();
        let mut c = shared.history.resume(0, shared.epoch).unwrap();
        let (got, read) = seqs(&shared, &mut c, 4);
        assert_eq!((got, read.caught_up), (seqs_sent[..4].to_vec(), false));
        let mut out = Vec::new();
        let read = shared
            .history
            .read(&mut c, 100, 2, |f| f.seq() % 2 == 0, &mut out);
        let got: Vec<u64> = out.iter().map(Frame::seq).collect();
        assert_eq!(got, [6, 8], "two taken");
        assert!(!read.caught_up);
        let (got, read) = seqs(&shared, &mut c, 100);
        assert_eq!(got, [9, 10], "from right after the last taken");
        assert!(read.caught_up);
    }

    #[test]
    fn the_count_bound_drops_the_oldest_and_a_cursor_behind_it_counts_its_loss() {
        let limits = HistoryLimits {
            frames: 3,
            ..HistoryLimits::default()
        };
        let (shared, b) = hub(limits);
        for i in 0..3 {
            b.publish(&Channel::Events, "n", &i).unwrap();
        }
        let mut c = shared.history.resume(1, shared.epoch).unwrap();
        for i in 3..7 {
            b.publish(&Channel::Events, "n", &i).unwrap();
        }
        assert_eq!(shared.history.len(), 3);
        // The cursor wanted seq 2 on; 2, 3 and 4 went.
        let (got, read) = seqs(&shared, &mut c, 100);
        assert_eq!((got, read.lost), (vec![5, 6, 7], 3));
        // A resume from before what is held is refused; from the last dropped on, fine.
        assert_eq!(shared.history.resume(3, shared.epoch), None);
        assert!(shared.history.resume(4, shared.epoch).is_some());
    }

    #[test]
    fn the_age_bound_drops_old_frames() {
        let limits = HistoryLimits {
            frames: 100,
            age: Duration::ZERO,
        };
        let (shared, b) = hub(limits);
        let seq = b.publish(&Channel::Events, "n", &1).unwrap();
        // Any time later, the frame is older than zero.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(shared.history.resume(seq - 1, shared.epoch), None);
        assert_eq!(shared.history.len(), 0);
    }

    #[test]
    fn a_relayed_stream_is_followed_from_where_it_was_joined() {
        let (shared, b) = hub(HistoryLimits::default());
        let history = &shared.history;
        let relay = |seq: u64, epoch: u64| {
            let f = Frame::for_test_seq(b"{}", seq);
            history.record(&f, Origin::Relayed(epoch), unix_us());
        };
        relay(50, 7);
        relay(51, 7);
        assert_eq!(history.resume(48, 7), None, "before the join");
        let mut c = history.resume(49, 7).unwrap();
        assert_eq!(seqs(&shared, &mut c, 100).0, [50, 51]);
        // A frame seen again is not taken twice.
        relay(51, 7);
        assert_eq!(history.len(), 2);
        // Frames lost on the way (52, 53): a gap the history cannot cover.
        relay(54, 7);
        assert_eq!(history.resume(51, 7), None, "across the gap");
        let mut c = history.resume(53, 7).unwrap();
        assert_eq!(seqs(&shared, &mut c, 100).0, [54]);
        // The origin restarted: a new stream, and a cursor of the old one ends.
        let mut old = history.resume(53, 7).unwrap();
        relay(1, 8);
        assert_eq!(history.resume(50, 7), None);
        let (got, read) = seqs(&shared, &mut old, 100);
        assert_eq!((got, read.lost, read.caught_up), (vec![], 1, true));
        let mut c = history.resume(0, 8).unwrap();
        assert_eq!(seqs(&shared, &mut c, 100).0, [1]);
        // A local broadcast makes this hub an origin: relayed frames are not its stream.
        let own = b.publish(&Channel::Events, "n", &1).unwrap();
        relay(2, 8);
        let mut c = history.resume(0, shared.epoch).unwrap();
        assert_eq!(seqs(&shared, &mut c, 100).0, [own]);
    }
}
