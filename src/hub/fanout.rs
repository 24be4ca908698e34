//! One shard's subscription index: who subscribes to what, each channel's last value, and
//! each client's link (its queue, in `queue.rs`, and its writer's waker).
//!
//! Pure single-threaded code (no sockets, no executor): the distributor calls
//! [`Fanout::deliver`] for each frame from the ring, which appends a pointer to the shared
//! frame to each subscribed client's bounded queue and wakes that client's writer, or, with
//! [`Fanout::defer_wakes`] (the shards), lists the client for the shard to write once the
//! batch is done ([`Fanout::take_dirty`]). A resuming client's replay is in `replay.rs`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::Waker;

use slab::Slab;

use self::push::Push;
pub(crate) use self::replay::Pumped;
use self::replay::Resumed;
use crate::hub::broadcast::Frame;
use crate::hub::deflate::Deflater;
use crate::hub::queue::OutQueue;
use crate::protocol::Channel;

mod push;
mod replay;

/// What the fan-out needs of a client: its queue, its writer's waker, its channels.
#[derive(Default)]
pub struct ClientLink {
    pub(crate) out: RefCell<OutQueue>,
    writer: Cell<Option<Waker>>,
    subs: RefCell<Vec<Channel>>,
    /// On the fan-out's list of clients to flush after the current batch.
    dirty: Cell<bool>,
    /// Whether the client resumed (then `resume` says what it holds back): one byte read per
    /// delivery for every other client.
    resumed: Cell<bool>,
    /// A client that resumed: its replay, then what it holds back (taken out and put back
    /// around each use: a `Cell` of one pointer, nothing for the others).
    resume: Cell<Option<Box<Resumed>>>,
}

impl std::fmt::Debug for ClientLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLink")
            .field("queued", &self.out.borrow().len())
            .field("channels", &self.subs.borrow())
            .finish()
    }
}

impl ClientLink {
    /// Wakes the writer if it waits for work.
    pub(crate) fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Registers the writer's waker.
    pub(crate) fn set_writer(&self, waker: &Waker) {
        self.writer.set(Some(waker.clone()));
    }

    /// Whether the writer is parked waiting for work (not writing, not waiting for a full
    /// socket to drain): then the queue may be written by someone else, in order.
    pub(crate) fn writer_idle(&self) -> bool {
        let w = self.writer.take();
        let idle = w.is_some();
        self.writer.set(w);
        idle
    }

    /// Whether the client subscribes to `channel`.
    pub fn subscribed(&self, channel: &Channel) -> bool {
        self.subs.borrow().contains(channel)
    }
}

/// How a subscribe went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// Newly added.
    Added,
    /// Already there.
    Already,
    /// The client holds the maximum number of channels.
    Limit,
}

/// What one delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Client queues the frame was appended to.
    pub queued: u64,
    /// Older frames dropped to make room.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct ChannelSlot {
    subscribers: Vec<usize>,
    last: Option<Rc<Frame>>,
    /// A group channel's current state: its last `group_updated` (see
    /// [`Frame::sets_state`]).
    state: Option<Rc<Frame>>,
}

impl ChannelSlot {
    fn unused(&self) -> bool {
        self.subscribers.is_empty() && self.last.is_none() && self.state.is_none()
    }
}

/// A shard's clients and who subscribes to what.
#[derive(Debug)]
pub struct Fanout<C> {
    clients: Slab<Rc<C>>,
    channels: HashMap<Channel, ChannelSlot>,
    queue_cap: usize,
    max_subscriptions: usize,
    /// Bumped when a `topic:`/`group:` channel gains its first subscriber or loses its last.
    interest_version: u64,
    /// With deferred wakes, the clients that received frames since the last [`Self::take_dirty`].
    dirty: Option<Vec<usize>>,
    /// Compresses frames for the clients that take them compressed (none without it).
    deflater: Option<Rc<Deflater>>,
}

fn is_detail(channel: &Channel) -> bool {
    matches!(channel, Channel::Topic(_) | Channel::Group(_))
}

impl<C: AsRef<ClientLink>> Fanout<C> {
    /// An empty index; `queue_cap` bounds each client's broadcast frames.
    pub fn new(queue_cap: usize, max_subscriptions: usize) -> Self {
        Self {
            clients: Slab::new(),
            channels: HashMap::new(),
            queue_cap,
            max_subscriptions,
            interest_version: 0,
            dirty: None,
            deflater: None,
        }
    }

    /// Adds a client with no channels; returns its key.
    pub fn insert(&mut self, client: Rc<C>) -> usize {
        self.clients.insert(client)
    }

    /// Removes a client and all its subscriptions.
    pub fn remove(&mut self, key: usize) -> Option<Rc<C>> {
        let client = self.clients.try_remove(key)?;
        let subs = std::mem::take(&mut *(*client).as_ref().subs.borrow_mut());
        for channel in subs {
            self.drop_subscriber(&channel, key);
        }
        Some(client)
    }

    /// The client at `key`.
    pub fn get(&self, key: usize) -> Option<&Rc<C>> {
        self.clients.get(key)
    }

    /// Every client, with its key.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Rc<C>)> {
        self.clients.iter()
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Subscribes a client. Call [`Self::greet`] next so it receives the channel's last value.
    pub fn subscribe(&mut self, key: usize, channel: Channel) -> Subscribed {
        let Some(client) = self.clients.get(key) else {
            return Subscribed::Already;
        };
        let link = (**client).as_ref();
        {
            let mut subs = link.subs.borrow_mut();
            if subs.contains(&channel) {
                return Subscribed::Already;
            }
            if subs.len() >= self.max_subscriptions {
                return Subscribed::Limit;
            }
            if subs.capacity() == 0 {
                // Room for an idle client's two (`metrics`, `events`), and no more.
                subs.reserve_exact(2);
            }
            subs.push(channel.clone());
        }
        let detail = is_detail(&channel);
        let slot = self.channels.entry(channel).or_default();
        slot.subscribers.push(key);
        if detail && slot.subscribers.len() == 1 {
            self.interest_version += 1;
        }
        Subscribed::Added
    }

    /// Queues the channel's last value, if it has one, to a client that just subscribed;
    /// returns its `seq`.
    pub fn greet(&self, key: usize, channel: &Channel) -> Option<u64> {
        let last = self.channels.get(channel).and_then(|s| s.last.as_ref());
        if let (Some(client), Some(last)) = (self.clients.get(key), last) {
            let link = (**client).as_ref();
            let mut out = link.out.borrow_mut();
            self.ready(last, &out);
            out.push_shared(last.clone(), self.queue_cap);
            drop(out);
            link.wake_writer();
            return Some(last.seq());
        }
        None
    }

    /// Queues the current state that `channel` covers to a client that just subscribed (or
    /// connected): every group's last `group_updated` for `events`, the group's own for
    /// `group:<id>`, in `seq` order, each with its original `seq`. They fit in the queue
    /// whatever its bound (there is one per group).
    pub fn greet_state(&self, key: usize, channel: &Channel) {
        let Some(client) = self.clients.get(key) else {
            return;
        };
        let mut states: Vec<&Rc<Frame>> = match channel {
            Channel::Events => self
                .channels
                .values()
                .filter_map(|s| s.state.as_ref())
                .collect(),
            Channel::Group(_) => self
                .channels
                .get(channel)
                .and_then(|s| s.state.as_ref())
                .into_iter()
                .collect(),
            _ => return,
        };
        if states.is_empty() {
            return;
        }
        states.sort_unstable_by_key(|f| f.seq());
        let link = (**client).as_ref();
        let mut out = link.out.borrow_mut();
        let cap = self.queue_cap + states.len();
        for frame in states {
            self.ready(frame, &out);
            out.push_shared(frame.clone(), cap);
        }
        drop(out);
        link.wake_writer();
    }

    /// Unsubscribes a client; returns whether it was subscribed.
    pub fn unsubscribe(&mut self, key: usize, channel: &Channel) -> bool {
        let Some(client) = self.clients.get(key) else {
            return false;
        };
        let removed = {
            let mut subs = (**client).as_ref().subs.borrow_mut();
            match subs.iter().position(|c| c == channel) {
                Some(i) => {
                    subs.swap_remove(i);
                    true
                }
                None => false,
            }
        };
        if removed {
            self.drop_subscriber(channel, key);
        }
        removed
    }

    fn drop_subscriber(&mut self, channel: &Channel, key: usize) {
        if let Some(slot) = self.channels.get_mut(channel) {
            if let Some(i) = slot.subscribers.iter().position(|&k| k == key) {
                slot.subscribers.swap_remove(i);
                if slot.subscribers.is_empty() && is_detail(channel) {
                    self.interest_version += 1;
                }
            }
            if slot.unused() {
                self.channels.remove(channel);
            }
        }
    }

    /// From now on [`Self::deliver`] does not wake writers: it lists the clients it queued to,
    /// and [`Self::take_dirty`] hands them over once the batch is done, so that a run of
    /// frames goes out in one write per client, from the distributor, without a task wake.
    pub fn defer_wakes(&mut self) {
        self.dirty.get_or_insert_with(Vec::new);
    }

    /// Takes the list of clients queued to since the last call (deferred wakes only), to be
    /// handed over in slices with [`Self::take_dirty_client`]; give the list back with
    /// [`Self::return_dirty`] so that its allocation is reused.
    pub(crate) fn take_dirty(&mut self) -> Vec<usize> {
        self.dirty.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The client at `key` of a taken dirty list, marked clean (`None` if it left meanwhile).
    pub(crate) fn take_dirty_client(&self, key: usize) -> Option<Rc<C>> {
        let client = self.clients.get(key)?;
        let link = (**client).as_ref();
        link.dirty.replace(false).then(|| client.clone())
    }

    /// Gives back a list taken with [`Self::take_dirty`], emptied.
    pub(crate) fn return_dirty(&mut self, mut keys: Vec<usize>) {
        keys.clear();
        if let Some(list) = self.dirty.as_mut() {
            if list.is_empty() {
                *list = keys;
            }
        }
    }

    /// Calls `f` once for every client queued to since the last call (deferred wakes only),
    /// as the shard's slices of a pass do.
    #[cfg(test)]
    pub fn flush_dirty(&mut self, mut f: impl FnMut(&C)) {
        let keys = self.take_dirty();
        for &key in &keys {
            if let Some(client) = self.take_dirty_client(key) {
                f(&client);
            }
        }
        self.return_dirty(keys);
    }

    /// Appends `frame` to the queue of every client subscribed to its channel (or to its second
    /// channel, once per client) and wakes their writers (or lists them, see
    /// [`Self::defer_wakes`]).
    pub fn deliver(&mut self, frame: &Frame) -> Delivery {
        let mut delivery = Delivery::default();
        let primary = frame.channel();
        if frame.forget() {
            self.clear_last_value(primary);
            return delivery;
        }
        if frame.seed() {
            match (frame.sets_state(), frame.also()) {
                (true, Some(also)) => {
                    let slot = self.channels.entry(also.clone()).or_default();
                    slot.state = Some(Rc::new(frame.clone()));
                }
                _ => {
                    let slot = self.channels.entry(primary.clone()).or_default();
                    slot.last = Some(Rc::new(frame.clone()));
                }
            }
            return delivery;
        }
        let local = Rc::new(frame.clone());
        if let Some(slot) = self.channels.get_mut(primary) {
            if frame.retain() {
                slot.last = Some(local.clone());
            }
            let push = Push {
                frame: &local,
                cap: self.queue_cap,
                skip_if_subscribed: None,
                deflater: self.deflater.as_deref(),
            };
            push.to(
                &self.clients,
                &slot.subscribers,
                self.dirty.as_mut(),
                &mut delivery,
            );
        } else if frame.retain() {
            let slot = self.channels.entry(primary.clone()).or_default();
            slot.last = Some(local.clone());
        }
        if let Some(also) = frame.also() {
            if let Some(slot) = self.channels.get(also) {
                let push = Push {
                    frame: &local,
                    cap: self.queue_cap,
                    skip_if_subscribed: Some(primary),
                    deflater: self.deflater.as_deref(),
                };
                push.to(
                    &self.clients,
                    &slot.subscribers,
                    self.dirty.as_mut(),
                    &mut delivery,
                );
            }
        }
        if frame.clears() {
            if let Some(also) = frame.also() {
                self.clear_last_value(also);
            }
        }
        if let Some(also) = frame.also() {
            if frame.sets_state() {
                let slot = self.channels.entry(also.clone()).or_default();
                slot.state = Some(local);
            } else if frame.ends_state() {
                if let Some(slot) = self.channels.get_mut(also) {
                    slot.state = None;
                    if slot.unused() {
                        self.channels.remove(also);
                    }
                }
            }
        }
        delivery
    }

    /// Compresses frames with `deflater` for the clients that take them compressed.
    pub(crate) fn set_deflater(&mut self, deflater: Deflater) {
        self.deflater = Some(Rc::new(deflater));
    }

    /// The shard's compressor, if compression is on.
    pub(crate) fn deflater(&self) -> Option<Rc<Deflater>> {
        self.deflater.clone()
    }

    /// Gives `frame` its compressed form if the client of `out` takes it (made once per frame).
    pub(crate) fn ready(&self, frame: &Frame, out: &OutQueue) {
        if let (true, Some(d)) = (out.deflate(), &self.deflater) {
            frame.deflate_with(d);
        }
    }

    /// Changes whenever [`Self::interest`] does.
    pub fn interest_version(&self) -> u64 {
        self.interest_version
    }

    /// The `topic:` and `group:` channels that have subscribers.
    pub fn interest(&self) -> Vec<Channel> {
        self.channels
            .iter()
            .filter(|(c, s)| is_detail(c) && !s.subscribers.is_empty())
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Tells every client that `n` broadcasts were lost before reaching this shard (its ring
    /// overflowed): each gets `lagged` before its next frame (but a client whose replay runs,
    /// which reads them from the history). Which channels the lost frames
    /// were for is unknown, so the count is an upper bound for a given client.
    pub fn mark_all_missed(&self, n: u64) {
        for (_, client) in self.clients.iter() {
            let link = (**client).as_ref();
            if link.replaying() {
                continue; // its replay reads them from the history
            }
            link.out.borrow_mut().add_missed(n);
            link.wake_writer();
        }
    }

    /// The channel's last value, if any.
    pub fn last_value(&self, channel: &Channel) -> Option<&Frame> {
        self.channels.get(channel)?.last.as_deref()
    }

    /// Forgets the channel's last value.
    pub fn clear_last_value(&mut self, channel: &Channel) {
        if let Some(slot) = self.channels.get_mut(channel) {
            slot.last = None;
            if slot.unused() {
                self.channels.remove(channel);
            }
        }
    }

    /// A group channel's current state (its last `group_updated`), if any.
    pub fn state(&self, channel: &Channel) -> Option<&Frame> {
        self.channels.get(channel)?.state.as_deref()
    }
}

impl AsRef<Self> for ClientLink {
    fn as_ref(&self) -> &Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::broadcast::Broadcaster;
    use crate::hub::shared::HubShared;
    use std::sync::Arc;

    struct Rig {
        shared: Arc<HubShared>,
        b: Broadcaster,
        fanout: Fanout<ClientLink>,
    }

    impl Rig {
        fn new(cap: usize) -> Self {
            let shared = Arc::new(HubShared::new(1, 1024));
            Self {
                b: Broadcaster::new(shared.clone()),
                shared,
                fanout: Fanout::new(cap, 8),
            }
        }
        fn pump(&mut self) {
            while let Some(f) = self.shared.links[0].ring.pop() {
                self.fanout.deliver(&f);
            }
        }
        fn client(&mut self, channels: &[Channel]) -> usize {
            let k = self.fanout.insert(Rc::new(ClientLink::default()));
            for c in channels {
                self.fanout.subscribe(k, c.clone());
                self.fanout.greet(k, c);
            }
            k
        }
        fn seqs(&self, key: usize) -> Vec<u64> {
            let link = self.fanout.get(key).unwrap();
            let seqs = link.out.borrow().shared_seqs();
            seqs
        }
    }

    #[test]
    fn frames_reach_only_subscribers_and_events_reach_topic_subscribers_once() {
        let mut rig = Rig::new(16);
        let both = rig.client(&[Channel::Events, Channel::topic("a")]);
        let topic_only = rig.client(&[Channel::topic("a")]);
        let other = rig.client(&[Channel::topic("b")]);
        let s1 = rig.b.topic_created("a", 3).unwrap();
        rig.b.publish(&Channel::Metrics, "metrics", &1).unwrap();
        rig.pump();
        assert_eq!(rig.seqs(both), [s1]);
        assert_eq!(rig.seqs(topic_only), [s1]);
        assert!(rig.seqs(other).is_empty());
    }

    #[test]
    fn deferred_wakes_list_each_queued_client_once_per_batch() {
        let mut rig = Rig::new(16);
        rig.fanout.defer_wakes();
        let a = rig.client(&[Channel::Events]);
        let b = rig.client(&[Channel::Events, Channel::topic("t")]);
        let idle = rig.client(&[Channel::topic("other")]);
        rig.b.topic_created("t", 1).unwrap();
        rig.b.publish(&Channel::Events, "x", &1).unwrap();
        rig.pump();
        let mut seen = Vec::new();
        rig.fanout.flush_dirty(|c| seen.push(c.out.borrow().len()));
        // Two frames each, but each client listed once; the idle one not at all.
        assert_eq!(seen, [2, 2]);
        let mut again = 0;
        rig.fanout.flush_dirty(|_| again += 1);
        assert_eq!(again, 0, "the list empties");
        rig.b.publish(&Channel::Events, "y", &2).unwrap();
        rig.pump();
        let mut keys = Vec::new();
        rig.fanout.flush_dirty(|c| keys.push(c.out.borrow().len()));
        assert_eq!(keys, [3, 3], "listed again after the next batch");
        assert!(rig.seqs(idle).is_empty() && rig.seqs(a).len() == 3 && rig.seqs(b).len() == 3);
    }

    #[test]
    fn a_full_queue_drops_oldest_and_counts() {
        let mut rig = Rig::new(3);
        let c = rig.client(&[Channel::Events]);
        for i in 0..5 {
            rig.b.publish(&Channel::Events, "n", &i).unwrap();
        }
        rig.pump();
        assert_eq!(rig.seqs(c), [3, 4, 5]);
        let link = rig.fanout.get(c).unwrap().clone();
        let mut out = link.out.borrow_mut();
        assert_eq!(out.dropped(), 2);
        let reported = out.prepare(|n| format!("lagged {n}").into_bytes().into_boxed_slice());
        assert_eq!(reported, Some(2));
        assert_eq!(out.slices(1).next(), Some(b"lagged 2".as_slice()));
        assert_eq!(out.dropped(), 0);
    }

    #[test]
    fn a_ring_loss_is_told_to_every_client() {
        let mut rig = Rig::new(8);
        let a = rig.client(&[Channel::Events]);
        let b = rig.client(&[Channel::Metrics]);
        rig.fanout.mark_all_missed(3);
        rig.b.publish(&Channel::Events, "n", &0).unwrap();
        rig.pump();
        for key in [a, b] {
            assert_eq!(rig.fanout.get(key).unwrap().out.borrow().dropped(), 3);
        }
    }

    #[test]
    fn a_deleted_topic_forgets_its_detail_and_forget_reaches_no_client() {
        let mut rig = Rig::new(8);
        let c = rig.client(&[Channel::topic("t")]);
        rig.b
            .publish_retained(&Channel::topic("t"), "topic_detail", &1)
            .unwrap();
        rig.b.topic_deleted("t").unwrap();
        rig.pump();
        assert!(rig.fanout.last_value(&Channel::topic("t")).is_none());
        rig.b
            .publish_retained(&Channel::topic("t"), "topic_detail", &2)
            .unwrap();
        rig.b.forget(&Channel::topic("t"));
        rig.pump();
        assert!(rig.fanout.last_value(&Channel::topic("t")).is_none());
        assert_eq!(rig.seqs(c), [1, 2, 3], "the forget frame is not delivered");
    }

    #[test]
    fn a_partly_written_frame_is_never_dropped() {
        let mut rig = Rig::new(2);
        let c = rig.client(&[Channel::Events]);
        rig.b.publish(&Channel::Events, "n", &0).unwrap();
        rig.b.publish(&Channel::Events, "n", &1).unwrap();
        rig.pump();
        let link = rig.fanout.get(c).unwrap().clone();
        link.out.borrow_mut().advance(3);
        rig.b.publish(&Channel::Events, "n", &2).unwrap();
        rig.pump();
        assert_eq!(rig.seqs(c), [1, 3]);
    }

    #[test]
    fn retained_frames_greet_new_subscribers() {
        let mut rig = Rig::new(4);
        rig.b
            .publish_retained(&Channel::Metrics, "metrics", &1)
            .unwrap();
        let s2 = rig
            .b
            .publish_retained(&Channel::Metrics, "metrics", &2)
            .unwrap();
        rig.pump();
        let late = rig.client(&[Channel::Metrics]);
        assert_eq!(rig.seqs(late), [s2]);
        assert_eq!(
            rig.fanout.subscribe(late, Channel::Metrics),
            Subscribed::Already
        );
    }

    #[test]
    fn removal_and_unsubscribe_stop_delivery_and_limits_hold() {
        let mut rig = Rig::new(4);
        let a = rig.client(&[Channel::Events]);
        let b = rig.client(&[Channel::Events]);
        assert!(rig.fanout.unsubscribe(a, &Channel::Events));
        assert!(!rig.fanout.unsubscribe(a, &Channel::Events));
        rig.fanout.remove(b);
        rig.b.publish(&Channel::Events, "n", &0).unwrap();
        rig.pump();
        assert!(rig.seqs(a).is_empty());
        for i in 0..8 {
            assert_eq!(
                rig.fanout.subscribe(a, Channel::topic(&i.to_string())),
                Subscribed::Added
            );
        }
        assert_eq!(
            rig.fanout.subscribe(a, Channel::topic("x")),
            Subscribed::Limit
        );
    }

    fn recovered(link: &ClientLink) -> Vec<String> {
        let out = link.out.borrow();
        out.slices(usize::MAX)
            .filter(|b| b.windows(9).any(|w| w == b"recovered"))
            .map(|b| String::from_utf8_lossy(&b[2..]).into_owned())
            .collect()
    }

    #[test]
    fn group_states_greet_new_clients_in_seq_order_until_the_group_is_dead() {
        let mut rig = Rig::new(4);
        rig.b.group_updated("g1", "Stable", 3).unwrap();
        let g2 = rig.b.group_updated("g2", "Empty", 0).unwrap();
        let g1 = rig.b.group_updated("g1", "PreparingRebalance", 2).unwrap();
        rig.b.group_updated("g3", "Stable", 1).unwrap();
        rig.b.group_updated("g3", "Dead", 0).unwrap();
        for i in 0..6 {
            rig.b.group_updated(&format!("x{i}"), "Stable", 1).unwrap();
        }
        rig.pump();
        for i in 0..6 {
            rig.b.group_updated(&format!("x{i}"), "Dead", 0).unwrap();
        }
        rig.pump();
        let late = rig.client(&[Channel::Events]);
        rig.fanout.greet_state(late, &Channel::Events);
        assert_eq!(rig.seqs(late), [g2, g1]);
        let one = rig.client(&[Channel::group("g1")]);
        rig.fanout.greet_state(one, &Channel::group("g1"));
        assert_eq!(rig.seqs(one), [g1]);
        assert!(rig.fanout.state(&Channel::group("g3")).is_none());

        // More groups than the queue holds: every state still fits.
        let mut rig = Rig::new(2);
        let seqs: Vec<u64> = (0..5)
            .map(|i| rig.b.group_updated(&format!("g{i}"), "Stable", 1).unwrap())
            .collect();
        rig.pump();
        let late = rig.client(&[Channel::Events]);
        rig.fanout.greet_state(late, &Channel::Events);
        assert_eq!(rig.seqs(late), seqs);
    }

    #[test]
    fn a_replay_fills_the_queue_as_it_drains_then_hands_over_to_live_frames() {
        let mut rig = Rig::new(2);
        let since = rig.b.publish(&Channel::Events, "n", &0).unwrap();
        let missed: Vec<u64> = (1..=5)
            .map(|i| rig.b.publish(&Channel::Events, "n", &i).unwrap())
            .collect();
        // Another channel's frame is not replayed to this client.
        rig.b.publish(&Channel::topic("t"), "n", &9).unwrap();
        let c = rig.client(&[Channel::Events]);
        let link = rig.fanout.get(c).unwrap().clone();
        let cursor = rig.shared.history.resume(since, rig.shared.epoch).unwrap();
        link.start_replay(cursor, 0);
        let stamp = rig.shared.stamp();
        // Two at a time, as the queue bound allows.
        assert_eq!(
            link.pump_replay(&rig.shared.history, 2, &stamp, None),
            Pumped::Running
        );
        assert_eq!(rig.seqs(c), missed[..2]);
        // Live frames are held back meanwhile: the replay reads them from the history.
        let live = rig.b.publish(&Channel::Events, "n", &6).unwrap();
        rig.pump();
        assert_eq!(rig.seqs(c), missed[..2]);
        let mut got = Vec::new();
        while link.replaying() {
            let mut out = link.out.borrow_mut();
            got.extend(out.shared_seqs());
            let n: usize = out.slices(usize::MAX).map(<[u8]>::len).sum();
            out.advance(n);
            drop(out);
            link.pump_replay(&rig.shared.history, 2, &stamp, None);
        }
        got.extend(rig.seqs(c));
        let mut expected = missed.clone();
        expected.push(live);
        assert_eq!(got, expected, "each once, in order");
        let notice = recovered(&link);
        assert_eq!(notice.len(), 1);
        assert!(
            notice[0].contains(r#""recovered":true,"replayed":6"#),
            "{notice:?}"
        );
        let mut out = link.out.borrow_mut();
        let n: usize = out.slices(usize::MAX).map(<[u8]>::len).sum();
        out.advance(n);
        drop(out);
        // A frame replayed already, still in the ring, is not delivered again; a newer one is.
        let newer = rig.b.publish(&Channel::Events, "n", &7).unwrap();
        let replayed_again = rig.shared.history.last();
        assert_eq!(replayed_again, (rig.shared.epoch, newer));
        rig.pump();
        assert_eq!(rig.seqs(c), [newer]);
    }

    #[test]
    fn a_replay_overtaken_by_the_history_is_told_lagged_and_not_recovered() {
        let shared = Arc::new(HubShared::with_history(
            1,
            1024,
            crate::hub::history::HistoryLimits {
                frames: 4,
                age: std::time::Duration::from_secs(60),
            },
        ));
        let b = Broadcaster::new(shared.clone());
        let mut fanout: Fanout<ClientLink> = Fanout::new(2, 8);
        let since = b.publish(&Channel::Events, "n", &0).unwrap();
        for i in 1..4 {
            b.publish(&Channel::Events, "n", &i).unwrap();
        }
        let key = fanout.insert(Rc::new(ClientLink::default()));
        fanout.subscribe(key, Channel::Events);
        let link = fanout.get(key).unwrap().clone();
        link.start_replay(shared.history.resume(since, shared.epoch).unwrap(), 0);
        let stamp = shared.stamp();
        assert_eq!(
            link.pump_replay(&shared.history, 2, &stamp, None),
            Pumped::Running
        );
        assert_eq!(link.out.borrow().shared_seqs(), [2, 3]);
        // While the client reads nothing, the history moves on past the replay.
        for i in 4..12 {
            b.publish(&Channel::Events, "n", &i).unwrap();
        }
        let mut out = link.out.borrow_mut();
        let n: usize = out.slices(usize::MAX).map(<[u8]>::len).sum();
        out.advance(n);
        drop(out);
        while link.pump_replay(&shared.history, 2, &stamp, None) == Pumped::Running {
            let mut out = link.out.borrow_mut();
            let n: usize = out.slices(usize::MAX).map(<[u8]>::len).sum();
            out.advance(n);
        }
        assert_eq!(link.out.borrow().dropped(), 5, "seq 4 to 8 were lost");
        let notice = recovered(&link);
        assert!(notice[0].contains(r#""recovered":false"#), "{notice:?}");
    }
}
