//! A client that resumes (`?since=&epoch=`): its replay from the history, pumped into its own
//! queue as the queue drains, and the frames it holds back from live delivery meanwhile and
//! right after. See docs/protocol.md, "Resuming after a reconnect".

use std::rc::Rc;

use super::{ClientLink, Fanout};
use crate::hub::broadcast::Frame;
use crate::hub::deflate::Deflater;
use crate::hub::history::{Cursor, History};
use crate::protocol::{recovered_frame, Stamp};

/// A client that resumed.
#[derive(Debug)]
pub(super) struct Resumed {
    /// While it runs, every frame of the stream it follows is held back (the replay reads it
    /// from the history).
    replay: Option<Replay>,
    /// After: (epoch, seq) of the last frame of the history when the replay caught up. Frames
    /// of that stream up to it are held back: they were replayed (or were not for this
    /// client), and only those already in the shard's ring can still come.
    floor: (u64, u64),
}

/// A resuming client's replay from the history (see [`ClientLink::pump_replay`]).
#[derive(Debug)]
struct Replay {
    /// The next frame to read; `None` when the history could not give back everything after
    /// the client's `since` (nothing is replayed then).
    cursor: Option<Cursor>,
    /// Frames queued so far.
    replayed: u64,
    /// Frames the history dropped before the replay read them.
    lost: u64,
    /// The stream's `epoch`, and the `seq` of the newest snapshot sent when the client
    /// connected (newer ones held back meanwhile are sent when the replay ends).
    epoch: u64,
    greeted: u64,
}

/// What [`ClientLink::pump_replay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// No replay runs.
    Idle,
    /// The replay goes on once the queue drains.
    Running,
    /// Ended now, with its `recovered` notice queued.
    Ended {
        /// Whether every missed broadcast was given back.
        recovered: bool,
        /// Broadcasts replayed.
        replayed: u64,
        /// Snapshots newer than this `seq` were held back during the replay: send the
        /// channels' last values that are (see
        /// [`Fanout::greet_newer`](super::Fanout::greet_newer)).
        greeted: u64,
    },
}

/// Frames one history read looks at, at most (the history's lock is held meanwhile).
const REPLAY_READ: usize = 1024;

impl ClientLink {
    /// Whether a frame goes to this client: on one of its channels.
    fn wants(&self, frame: &Frame) -> bool {
        let subs = self.subs.borrow();
        subs.contains(frame.channel()) || frame.also().is_some_and(|a| subs.contains(a))
    }

    /// Starts a resume from `cursor`: live frames of its stream wait (they are read from the
    /// history instead) until [`Self::pump_replay`] has caught up. `greeted`: the `seq` of
    /// the newest snapshot the client was sent on connecting.
    pub(crate) fn start_replay(&self, cursor: Cursor, greeted: u64) {
        self.resumed.set(true);
        self.resume.set(Some(Box::new(Resumed {
            replay: Some(Replay {
                epoch: cursor.epoch,
                cursor: Some(cursor),
                replayed: 0,
                lost: 0,
                greeted,
            }),
            floor: (0, 0),
        })));
    }

    /// Whether a frame is held back from this client: replayed already, or a replay runs
    /// (which reads it from the history).
    pub(super) fn held_back(&self, frame: &Frame) -> bool {
        if !self.resumed.get() {
            return false;
        }
        let Some(r) = self.resume.take() else {
            return false;
        };
        let held = match &r.replay {
            Some(replay) => frame.epoch() == replay.epoch,
            None => frame.epoch() == r.floor.0 && frame.seq() <= r.floor.1,
        };
        self.resume.set(Some(r));
        held
    }

    /// Whether a replay runs.
    pub(crate) fn replaying(&self) -> bool {
        if !self.resumed.get() {
            return false;
        }
        let r = self.resume.take();
        let running = r.as_ref().is_some_and(|r| r.replay.is_some());
        self.resume.set(r);
        running
    }

    /// Moves the next frames of the replay on the client's channels from the history to its
    /// queue, as far as the queue has room (`cap` broadcast frames: a replay never holds more
    /// than a live client would). Once it reaches the history's end it ends the replay with
    /// `recovered` and lets live frames through from the next `seq` on. Frames the history
    /// dropped before the replay read them are told as `lagged` (and the replay is then not a
    /// recovery). Frames are compressed with `deflater` when the client takes them so.
    pub(crate) fn pump_replay(
        &self,
        history: &History,
        cap: usize,
        stamp: &Stamp,
        deflater: Option<&Deflater>,
    ) -> Pumped {
        let Some(mut resumed) = self.resume.take() else {
            return Pumped::Idle;
        };
        let pumped = self.pump(&mut resumed, history, cap, stamp, deflater);
        self.resume.set(Some(resumed));
        pumped
    }

    fn pump(
        &self,
        resumed: &mut Resumed,
        history: &History,
        cap: usize,
        stamp: &Stamp,
        deflater: Option<&Deflater>,
    ) -> Pumped {
        let Some(replay) = resumed.replay.as_mut() else {
            return Pumped::Idle;
        };
        let mut out = self.out.borrow_mut();
        if out.closing() {
            return Pumped::Running;
        }
        let mut frames = Vec::new();
        let last = match replay.cursor.as_mut() {
            None => history.last(),
            Some(cursor) => loop {
                let room = cap.saturating_sub(out.shared_len());
                if room == 0 {
                    return Pumped::Running;
                }
                let read = history.read(cursor, REPLAY_READ, room, |f| self.wants(f), &mut frames);
                replay.replayed += frames.len() as u64;
                replay.lost += read.lost;
                out.add_missed(read.lost);
                for f in frames.drain(..) {
                    if let (true, Some(d)) = (out.deflate(), deflater) {
                        f.deflate_with(d);
                    }
                    out.push_shared(Rc::new(f), cap);
                }
                if read.caught_up {
                    break read.last;
                }
            },
        };
        let recovered = replay.cursor.is_some() && replay.lost == 0;
        let (replayed, greeted) = (replay.replayed, replay.greeted);
        out.push_reply(recovered_frame(recovered, replayed, stamp));
        // Of the stream followed: one that changed under the replay (its origin restarted)
        // has nothing more to hold back.
        resumed.floor = if last.0 == replay.epoch {
            last
        } else {
            (replay.epoch, u64::MAX)
        };
        resumed.replay = None;
        Pumped::Ended {
            recovered,
            replayed,
            greeted,
        }
    }
}

impl<C: AsRef<ClientLink>> Fanout<C> {
    /// Queues to a client whose replay just ended the last values of its channels newer than
    /// `greeted` (held back while it ran), in `seq` order.
    pub(crate) fn greet_newer(&self, link: &ClientLink, greeted: u64) {
        let subs = link.subs.borrow();
        let mut newer: Vec<&Rc<Frame>> = subs
            .iter()
            .filter_map(|c| self.channels.get(c)?.last.as_ref())
            .filter(|f| f.seq() > greeted)
            .collect();
        drop(subs);
        newer.sort_unstable_by_key(|f| f.seq());
        let mut out = link.out.borrow_mut();
        // Above the queue's bound if it must (one frame per channel at most): the replay's
        // last frames may still fill the queue, and none of them may be dropped for these.
        let cap = self.queue_cap.max(out.shared_len() + newer.len());
        for frame in newer {
            self.ready(frame, &out);
            out.push_shared(frame.clone(), cap);
        }
    }
}
