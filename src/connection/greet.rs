//! A new WebSocket client's first frames: the snapshot and the groups' state, or the replay of
//! what it missed when it resumes.

use std::sync::atomic::Ordering::Relaxed;

use super::handshake::Resume;
use super::{Conn, ConnShard};
use crate::hub::fanout::Pumped;
use crate::protocol::{recovered_frame, Channel};

/// A new WebSocket client's start: subscribed to `metrics` and `events`, it gets the last
/// `metrics` snapshot, then either every group's current state or, when it resumes and the
/// history reaches back to its `since`, the broadcasts it missed (see
/// [`ClientLink::pump_replay`](crate::hub::fanout::ClientLink::pump_replay); the writer goes on
/// with it). A resume the history cannot serve gets the state, then `recovered: false`.
pub(super) fn greet(shard: &ConnShard, conn: &Conn, key: usize, resume: Option<Box<Resume>>) {
    let mut fanout = shard.fanout.borrow_mut();
    let mut greeted = 0;
    for channel in [Channel::Metrics, Channel::Events] {
        fanout.subscribe(key, channel.clone());
        greeted = greeted.max(fanout.greet(key, &channel).unwrap_or(0));
    }
    let history = &shard.shared.history;
    let cursor = resume.map(|r| history.resume(r.since, r.epoch));
    if cursor.is_some() {
        shard.stats().resumes_total.fetch_add(1, Relaxed);
    }
    match cursor {
        Some(Some(cursor)) => {
            conn.link.start_replay(cursor, greeted);
            drop(fanout);
            pump_replay(shard, conn);
        }
        Some(None) => {
            fanout.greet_state(key, &Channel::Events);
            let stamp = shard.shared.stamp();
            conn.link
                .out
                .borrow_mut()
                .push_reply(recovered_frame(false, 0, &stamp));
        }
        None => fanout.greet_state(key, &Channel::Events),
    }
    conn.link.wake_writer();
}

/// Moves a resuming client's replay on (see
/// [`ClientLink::pump_replay`](crate::hub::fanout::ClientLink::pump_replay)) and counts how it
/// ended.
pub(super) fn pump_replay(shard: &ConnShard, conn: &Conn) {
    let stamp = shard.shared.stamp();
    let deflater = shard.fanout.borrow().deflater();
    let pumped = conn.link.pump_replay(
        &shard.shared.history,
        shard.config.client_queue,
        &stamp,
        deflater.as_deref(),
    );
    if let Pumped::Ended {
        recovered,
        replayed,
        greeted,
    } = pumped
    {
        shard.fanout.borrow().greet_newer(&conn.link, greeted);
        let stats = shard.stats();
        stats.replayed_total.fetch_add(replayed, Relaxed);
        if recovered {
            stats.resumes_recovered_total.fetch_add(1, Relaxed);
        }
    }
}
