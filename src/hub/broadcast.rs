//! The broadcast path: encode a message once into an `Arc`'d frame and hand it to every core.
//!
//! A [`Broadcaster`] may be called from any thread. It serializes the envelope once, outside
//! any lock, then takes a short ordering lock only to stamp the `seq` (the last field, appended
//! in place), write the frame header in front of the payload and push the same `Arc` into each
//! core's bounded ring (drop-oldest). Shards never take that lock; it only orders concurrent
//! broadcasters so that every ring receives frames in `seq` order. Then each core is woken.
//! (A retained snapshot replayed to a new subscriber keeps its original `seq`.)

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::error::BroadcastError;
use crate::hub::deflate::Deflater;
use crate::hub::history::Origin;
use crate::hub::shared::HubShared;
use crate::protocol::{write_envelope_with, Channel, FrameBuf, Number, DEAD_STATE, OP_TEXT};

/// A complete server WebSocket frame (header and JSON payload), shared by every client that
/// receives it.
#[derive(Clone)]
pub struct Frame(Arc<FrameInner>);

struct FrameInner {
    buf: Vec<u8>,
    start: usize,
    route: Route,
    seq: u64,
    /// The `epoch` of the stream `seq` counts in (the origin's, for a relayed frame).
    epoch: u64,
    /// The frame compressed for clients that negotiated permessage-deflate, made by the first
    /// shard that has one to deliver it to (`None` inside: deflate did not make it smaller).
    deflated: OnceLock<Option<Box<[u8]>>>,
}

impl Frame {
    /// Writes the text frame's header in front of `fb`'s payload and shares it.
    fn finish(fb: FrameBuf, route: Route, epoch: u64, seq: u64) -> Self {
        let (buf, start) = fb.finish(OP_TEXT);
        Self(Arc::new(FrameInner {
            buf,
            start,
            route,
            seq,
            epoch,
            deflated: OnceLock::new(),
        }))
    }

    /// Makes the compressed frame if it is worth it and not made yet: once for the whole hub.
    /// A shard that finds another one compressing the same frame waits for its result (at
    /// most one compression's time, which it would otherwise spend compressing it again).
    /// Returns whether a compressed frame exists.
    pub(crate) fn deflate_with(&self, deflater: &Deflater) -> bool {
        if let Some(made) = self.0.deflated.get() {
            return made.is_some();
        }
        if !deflater.wants(self.payload().len()) {
            return false;
        }
        self.0
            .deflated
            .get_or_init(|| deflater.frame(OP_TEXT, self.payload()))
            .is_some()
    }

    /// Fixes the frame's form for the clients that take compressed frames, once it is queued
    /// for one of them: a frame nobody compressed by then goes plain to every one of them for
    /// good, so what a queue holds never changes under a partly written frame.
    pub(crate) fn settle_deflated(&self) {
        self.0.deflated.get_or_init(|| None);
    }

    /// The compressed frame (RSV1 set), once [`Self::deflate_with`] made it.
    pub(crate) fn deflated(&self) -> Option<&[u8]> {
        self.0.deflated.get()?.as_deref()
    }

    /// The frame as written to the socket.
    pub fn bytes(&self) -> &[u8] {
        &self.0.buf[self.0.start..]
    }

    /// The JSON payload.
    pub fn payload(&self) -> &[u8] {
        &self.0.buf[crate::protocol::HEADER_ROOM..]
    }

    /// The frame's `seq`.
    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    /// The `epoch` of the stream its `seq` counts in.
    pub(crate) fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// The channel it is published on.
    pub fn channel(&self) -> &Channel {
        &self.0.route.channel
    }

    pub(crate) fn also(&self) -> Option<&Channel> {
        self.0.route.also.as_ref()
    }

    pub(crate) fn retain(&self) -> bool {
        self.0.route.retain
    }

    pub(crate) fn clears(&self) -> bool {
        self.0.route.clears
    }

    pub(crate) fn forget(&self) -> bool {
        self.0.route.forget
    }

    /// Whether the frame is the current state of its second channel (a `group_updated`: the
    /// group's state and members), replayed to clients that connect or subscribe later.
    pub(crate) fn sets_state(&self) -> bool {
        self.0.route.sets_state
    }

    /// Whether the frame ends its second channel's state (a group announced `Dead`).
    pub(crate) fn ends_state(&self) -> bool {
        self.0.route.ends_state
    }

    /// Only sets the channel's last value, delivering nothing (relayed last values loaded
    /// when an instance joins the relay).
    pub(crate) fn seed(&self) -> bool {
        self.0.route.seed
    }

    /// A text frame carrying `payload` on `events`, for unit tests of the queues.
    #[cfg(test)]
    pub(crate) fn for_test(payload: &[u8]) -> Self {
        let mut fb = FrameBuf::with_capacity(payload.len());
        fb.payload().extend_from_slice(payload);
        Self::finish(fb, Route::to(Channel::Events), 0, 0)
    }

    /// Like [`Self::for_test`], with a given `seq`.
    #[cfg(test)]
    pub(crate) fn for_test_seq(payload: &[u8], seq: u64) -> Self {
        let mut fb = FrameBuf::with_capacity(payload.len());
        fb.payload().extend_from_slice(payload);
        Self::finish(fb, Route::to(Channel::Events), 0, seq)
    }

    #[cfg(test)]
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("seq", &self.0.seq)
            .field("channel", &self.0.route.channel)
            .field("len", &self.bytes().len())
            .finish()
    }
}

/// Publishes messages to every client of every core. `Clone + Send + Sync`; never blocks on a
/// network thread and never waits for a client.
#[derive(Clone)]
pub struct Broadcaster {
    shared: Arc<HubShared>,
}

impl fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcaster")
            .field("shards", &self.shared.links.len())
            .finish()
    }
}

#[derive(Serialize)]
struct TopicCreated<'a> {
    name: &'a str,
    partitions: u32,
}

#[derive(Serialize)]
struct TopicDeleted<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupUpdated<'a> {
    group_id: &'a str,
    state: &'a str,
    members: u32,
}

impl Broadcaster {
    pub(crate) fn new(shared: Arc<HubShared>) -> Self {
        Self { shared }
    }

    /// Sends any serializable payload as `{"type": kind, "data": data, ..}` to the subscribers
    /// of `channel`. Returns the message's `seq`.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &Channel,
        kind: &str,
        data: &T,
    ) -> Result<u64, BroadcastError> {
        self.send(Route::to(channel.clone()), kind, data)
    }

    /// Like [`Self::publish`], and the frame becomes the channel's last value: a client that
    /// connects or subscribes later receives it at once.
    pub fn publish_retained<T: Serialize + ?Sized>(
        &self,
        channel: &Channel,
        kind: &str,
        data: &T,
    ) -> Result<u64, BroadcastError> {
        let route = Route {
            retain: true,
            ..Route::to(channel.clone())
        };
        self.send(route, kind, data)
    }

    /// Sends the `metrics` snapshot (a `MonitoringMetrics` or any snapshot of that
    /// shape) on the `metrics` channel, retained as its last value.
    pub fn metrics<T: Serialize + ?Sized>(&self, snapshot: &T) -> Result<u64, BroadcastError> {
        let route = Route {
            retain: true,
            ..Route::to(Channel::Metrics)
        };
        self.send(route, "metrics", snapshot)
    }

    /// Announces `topic_created` on `events` and `topic:<name>`.
    pub fn topic_created(&self, name: &str, partitions: u32) -> Result<u64, BroadcastError> {
        let data = TopicCreated { name, partitions };
        self.send(Route::event(Channel::topic(name)), "topic_created", &data)
    }

    /// Announces `topic_deleted` on `events` and `topic:<name>`; the topic channel's last
    /// value (its detail frame) is forgotten.
    pub fn topic_deleted(&self, name: &str) -> Result<u64, BroadcastError> {
        let route = Route {
            clears: true,
            ..Route::event(Channel::topic(name))
        };
        self.send(route, "topic_deleted", &TopicDeleted { name })
    }

    /// Announces `group_updated` on `events` and `group:<id>`. The frame becomes the group's
    /// current state, replayed with its `seq` to clients that connect (or subscribe to
    /// `events` or the group) later, until a `Dead` one with 0 members ends it.
    pub fn group_updated(
        &self,
        group_id: &str,
        state: &str,
        members: u32,
    ) -> Result<u64, BroadcastError> {
        let data = GroupUpdated {
            group_id,
            state,
            members,
        };
        // The group's current state for clients that come later; a removed group has none.
        let dead = state == DEAD_STATE && members == 0;
        let route = Route {
            sets_state: !dead,
            ends_state: dead,
            ..Route::event(Channel::group(group_id))
        };
        self.send(route, "group_updated", &data)
    }

    /// Makes every core forget `channel`'s last value, delivering nothing to clients (the
    /// ticker uses it when a topic or group vanished while its detail frame was in flight).
    pub(crate) fn forget(&self, channel: &Channel) {
        let route = Route {
            forget: true,
            ..Route::to(channel.clone())
        };
        let _ = self.send(route, "forget", &());
    }

    /// Sends `data`, already JSON text, as given (checked to be one JSON value, not
    /// re-encoded): for external producers and relays.
    /// `None` sends a message without `data`.
    pub fn publish_raw(
        &self,
        channel: &Channel,
        kind: &str,
        data: Option<&str>,
    ) -> Result<u64, BroadcastError> {
        check_json(data)?;
        let started = std::time::Instant::now();
        let (fb, now_us) = self.envelope(kind, raw_writer(data), data.map_or(0, str::len))?;
        let seq = self.enqueue(fb, Route::to(channel.clone()), now_us);
        self.shared.broadcast_seconds.observe(started.elapsed());
        Ok(seq)
    }

    /// Sends several messages as [`Self::publish_raw`] does, in order, with consecutive
    /// `seq`s (no other broadcast comes between them), and wakes the cores once: they take the
    /// batch in one pass. Nothing is sent when one of them is refused. Returns the first and
    /// the last `seq`.
    pub fn publish_raw_batch(
        &self,
        messages: &[(&Channel, &str, Option<&str>)],
    ) -> Result<(u64, u64), BroadcastError> {
        if messages.is_empty() {
            return Err(BroadcastError::EmptyBatch);
        }
        let started = std::time::Instant::now();
        let mut frames = Vec::with_capacity(messages.len());
        for &(channel, kind, data) in messages {
            check_json(data)?;
            let (fb, now_us) = self.envelope(kind, raw_writer(data), data.map_or(0, str::len))?;
            frames.push((fb, Route::to(channel.clone()), now_us));
        }
        let shared = &*self.shared;
        let mut last = shared.order();
        let first = *last + 1;
        for (fb, route, now_us) in frames {
            self.push_one(&mut last, fb, route, now_us);
        }
        let end = *last;
        drop(last);
        shared.wake_all();
        shared.broadcast_seconds.observe(started.elapsed());
        Ok((first, end))
    }

    fn send<T: Serialize + ?Sized>(
        &self,
        route: Route,
        kind: &str,
        data: &T,
    ) -> Result<u64, BroadcastError> {
        let started = std::time::Instant::now();
        let write = |out: &mut Vec<u8>| {
            simd_json::to_writer(out, data).map_err(|e| BroadcastError::Encode(Box::new(e)))
        };
        let (fb, now_us) = self.envelope(kind, Some(write), 256)?;
        let seq = self.enqueue(fb, route, now_us);
        self.shared.broadcast_seconds.observe(started.elapsed());
        Ok(seq)
    }

    /// The message's envelope, encoded outside any lock, up to its `seq` (appended in the
    /// ordered section); with the time it was stamped (Unix µs).
    fn envelope(
        &self,
        kind: &str,
        data: Option<impl FnOnce(&mut Vec<u8>) -> Result<(), BroadcastError>>,
        size_hint: usize,
    ) -> Result<(FrameBuf, u64), BroadcastError> {
        let stamp = self.shared.stamp();
        let mut fb = FrameBuf::with_capacity(size_hint + 128);
        write_envelope_with(
            fb.payload(),
            kind,
            data,
            Number::Int(stamp.unix_s as i64),
            None,
            &stamp,
        )?;
        // The envelope ends with `}`; `seq` is appended in the ordered section.
        let payload = fb.payload();
        payload.pop();
        payload.extend_from_slice(b",\"seq\":");
        payload.reserve(21);
        Ok((fb, stamp.unix_us))
    }

    /// Stamps `seq`, finishes the frame and pushes it to every ring, in one ordered section.
    fn enqueue(&self, fb: FrameBuf, route: Route, now_us: u64) -> u64 {
        let mut last = self.shared.order();
        let seq = self.push_one(&mut last, fb, route, now_us);
        drop(last);
        self.shared.wake_all();
        seq
    }

    /// The ordered section's work for one frame (`last`: the order lock's last `seq`, held).
    fn push_one(&self, last: &mut u64, mut fb: FrameBuf, route: Route, now_us: u64) -> u64 {
        let shared = &*self.shared;
        *last += 1;
        let seq = *last;
        let payload = fb.payload();
        payload.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        payload.push(b'}');
        let frame = Frame::finish(fb, route, shared.epoch, seq);
        shared.history.record(&frame, Origin::Local, now_us);
        shared.push_to_cores(&frame);
        if let Some(tap) = shared.tap() {
            tap.tap(&frame);
        }
        seq
    }
}

/// Refuses `data` that is not one JSON value.
fn check_json(data: Option<&str>) -> Result<(), BroadcastError> {
    match data.map(serde_json::from_str::<&serde_json::value::RawValue>) {
        Some(Err(e)) => Err(BroadcastError::NotJson(e)),
        _ => Ok(()),
    }
}

/// Writes already-encoded JSON `data` as the envelope's `data`.
fn raw_writer(
    data: Option<&str>,
) -> Option<impl FnOnce(&mut Vec<u8>) -> Result<(), BroadcastError> + '_> {
    data.map(|data| {
        move |out: &mut Vec<u8>| {
            out.extend_from_slice(data.trim().as_bytes());
            Ok(())
        }
    })
}

impl Broadcaster {
    /// Fans out a frame another instance published, with its origin's `seq` and `epoch`
    /// (they are in `payload` as it came), through the same rings as a local broadcast. The
    /// tap does not see it.
    pub(crate) fn inject(&self, payload: &[u8], epoch: u64, seq: u64, route: Route) {
        let mut fb = FrameBuf::with_capacity(payload.len());
        fb.payload().extend_from_slice(payload);
        let frame = Frame::finish(fb, route, epoch, seq);
        let now_us = crate::hub::history::unix_us();
        // In step with the local broadcasters: the history sees every frame before a ring.
        let order = self.shared.order();
        self.shared
            .history
            .record(&frame, Origin::Relayed(epoch), now_us);
        self.shared.push_to_cores(&frame);
        drop(order);
        self.shared.wake_all();
    }

    /// This hub's epoch (its start time in microseconds).
    pub(crate) fn epoch(&self) -> u64 {
        self.shared.epoch
    }
}

/// Where a frame goes and what it does to the channel's last value.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) channel: Channel,
    /// A second channel that also receives the frame (`topic:<name>` for a topic event).
    pub(crate) also: Option<Channel>,
    /// Kept as the channel's last value for new subscribers.
    pub(crate) retain: bool,
    /// Forgets the last value of `also` (a deleted topic's detail frame).
    pub(crate) clears: bool,
    /// Not for clients: only forgets the last value of `channel`.
    pub(crate) forget: bool,
    /// Not for clients: only sets the last value of `channel` (or the state of `also`).
    pub(crate) seed: bool,
    /// The frame is the current state of `also` (a group's last `group_updated`).
    pub(crate) sets_state: bool,
    /// The frame ends the state of `also` (a removed group).
    pub(crate) ends_state: bool,
}

impl Route {
    pub(crate) fn to(channel: Channel) -> Self {
        Self {
            channel,
            also: None,
            retain: false,
            clears: false,
            forget: false,
            seed: false,
            sets_state: false,
            ends_state: false,
        }
    }

    /// An event: on `events` and on the topic's or group's own channel.
    fn event(own: Channel) -> Self {
        Self {
            also: Some(own),
            ..Self::to(Channel::Events)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn drain(shared: &HubShared, shard: usize) -> Vec<Frame> {
        std::iter::from_fn(|| shared.links[shard].ring.pop()).collect()
    }

    #[test]
    fn one_frame_is_shared_by_every_core() {
        let shared = Arc::new(HubShared::new(3, 8));
        let b = Broadcaster::new(shared.clone());
        let seq = b.topic_created("orders", 5).unwrap();
        let frames: Vec<Frame> = (0..3).flat_map(|s| drain(&shared, s)).collect();
        assert_eq!(frames.len(), 3);
        assert!(frames[0].ptr_eq(&frames[1]) && frames[1].ptr_eq(&frames[2]));
        let v: serde_json::Value = serde_json::from_slice(frames[0].payload()).unwrap();
        assert_eq!(v["type"], "topic_created");
        assert_eq!(
            v["data"],
            serde_json::json!({"name": "orders", "partitions": 5})
        );
        assert_eq!(v["seq"], seq);
        assert_eq!(v["epoch"], shared.epoch);
        assert!(v["tsUs"].as_u64().unwrap() / 1_000_000 >= v["timestamp"].as_u64().unwrap());
        assert_eq!(frames[0].also(), Some(&Channel::topic("orders")));
    }

    #[test]
    fn a_full_ring_drops_its_oldest_and_counts_it() {
        let shared = Arc::new(HubShared::new(1, 2));
        let b = Broadcaster::new(shared.clone());
        for i in 0..5 {
            b.publish(&Channel::Events, "n", &i).unwrap();
        }
        let seqs: Vec<u64> = drain(&shared, 0).iter().map(Frame::seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(shared.stats[0].ring_dropped_total.load(Relaxed), 3);
    }

    #[test]
    fn concurrent_broadcasters_keep_seq_in_ring_order() {
        let shared = Arc::new(HubShared::new(2, 100_000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Broadcaster::new(shared.clone());
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        b.publish(&Channel::Events, "n", &i).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        for shard in 0..2 {
            let seqs: Vec<u64> = drain(&shared, shard).iter().map(Frame::seq).collect();
            assert_eq!(seqs, (1..=8_000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_batch_takes_consecutive_seqs_and_is_all_or_nothing() {
        let shared = Arc::new(HubShared::new(2, 64));
        let b = Broadcaster::new(shared.clone());
        let before = b.publish(&Channel::Events, "n", &0).unwrap();
        let t = Channel::topic("t");
        let batch = [
            (&Channel::Events, "a", Some("1")),
            (&t, "b", None),
            (&Channel::Events, "c", Some(r#"{"x": [1, 2]}"#)),
        ];
        let (first, last) = b.publish_raw_batch(&batch).unwrap();
        assert_eq!((first, last), (before + 1, before + 3));
        for shard in 0..2 {
            let frames = drain(&shared, shard);
            let seqs: Vec<u64> = frames.iter().map(Frame::seq).collect();
            assert_eq!(seqs, [before, first, first + 1, last]);
            assert_eq!(frames[2].channel(), &t);
            let v: serde_json::Value = serde_json::from_slice(frames[3].payload()).unwrap();
            assert_eq!(
                (&v["type"], &v["data"], &v["seq"]),
                (&"c".into(), &serde_json::json!({"x": [1, 2]}), &last.into())
            );
        }
        // One bad message: none is sent.
        let bad = [
            (&Channel::Events, "a", Some("1")),
            (&Channel::Events, "b", Some("{")),
        ];
        assert!(matches!(
            b.publish_raw_batch(&bad),
            Err(BroadcastError::NotJson(_))
        ));
        assert!(matches!(
            b.publish_raw_batch(&[]),
            Err(BroadcastError::EmptyBatch)
        ));
        assert!(drain(&shared, 0).is_empty());
        assert_eq!(shared.last_seq(), last);
    }

    #[test]
    fn an_empty_type_is_refused() {
        let b = Broadcaster::new(Arc::new(HubShared::new(1, 2)));
        assert!(matches!(
            b.publish(&Channel::Events, "", &1),
            Err(BroadcastError::EmptyType)
        ));
    }
}
