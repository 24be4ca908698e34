//! One simulated consumer group, [`SimGroup`]: its members, its rebalance phases and its
//! position on each topic it consumes.

use super::random::{Rng, Wave};
use super::topic::SimTopic;
use crate::broker::GroupCoordinator;

/// Most members a simulated group has.
pub(super) const MAX_MEMBERS: u32 = 6;

/// The states a simulated group reports: stable, or in one of a rebalance's two phases.
pub(super) const STABLE: &str = "Stable";
pub(super) const PREPARING: &str = "PreparingRebalance";
pub(super) const COMPLETING: &str = "CompletingRebalance";

/// A group's position on one topic.
#[derive(Debug)]
struct Subscription {
    /// Index into the simulation's topics (always a permanent one, so it never moves).
    topic: usize,
    /// Consumed offset per partition.
    committed: Vec<i64>,
    /// Offset per partition last committed to the coordinator.
    reported: Vec<i64>,
    /// Fractional capacity carried to the next step.
    carry: f64,
    /// Partition that gets leftover capacity first.
    cursor: usize,
}

impl Subscription {
    /// Consumes up to `capacity` messages: first a fair share per partition, then what is
    /// left to the partitions with backlog. Returns how many were consumed.
    fn consume(&mut self, log_end: &[i64], capacity: i64) -> i64 {
        let n = self.committed.len().min(log_end.len());
        if n == 0 || capacity <= 0 {
            return 0;
        }
        let fair = capacity / n as i64;
        let mut left = capacity;
        for (c, &end) in self.committed.iter_mut().zip(log_end) {
            let take = (end - *c).clamp(0, fair.min(left));
            *c += take;
            left -= take;
        }
        for i in 0..n {
            if left == 0 {
                break;
            }
            let p = (self.cursor + i) % n;
            let take = (log_end[p] - self.committed[p]).clamp(0, left);
            self.committed[p] += take;
            left -= take;
        }
        self.cursor = (self.cursor + 1) % n;
        capacity - left
    }
}

/// Where a group is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Stable,
    /// Members are rejoining; the group stops consuming. `members` is the count it will have.
    Preparing {
        until: f64,
        members: u32,
    },
    /// Assignments are being handed out; still no consumption.
    Completing {
        until: f64,
    },
}

/// One simulated consumer group.
#[derive(Debug)]
pub(super) struct SimGroup {
    id: String,
    members: u32,
    /// The member count it drifts back to.
    home_members: u32,
    phase: Phase,
    /// Capacity over the topics' base rates, on average.
    headroom: f64,
    /// Slow variation of its speed (a busy downstream database, say).
    speed: Wave,
    subs: Vec<Subscription>,
    /// Simulated time of its next commit.
    commit_due: f64,
}

impl SimGroup {
    /// Creates group `id` in `groups`, Stable, consuming the topics at `subscribed` (indices
    /// into `topics`) from their log ends; its first commit is due at `commit_due`.
    pub(super) fn join(
        id: &str,
        topics: &[SimTopic],
        subscribed: Vec<usize>,
        groups: &GroupCoordinator,
        rng: &mut Rng,
        commit_due: f64,
    ) -> Self {
        let members = rng.between(1, MAX_MEMBERS);
        let mut group = Self {
            id: id.to_owned(),
            members,
            home_members: members,
            phase: Phase::Stable,
            headroom: rng.range((1.1, 1.5)),
            speed: Wave::random(rng, (0.15, 0.3), (45.0, 150.0)),
            subs: Vec::with_capacity(subscribed.len()),
            commit_due,
        };
        // Stable first: a first commit would create the group as Empty.
        groups.update(&group.id, STABLE, members);
        for topic in subscribed {
            // A new group starts at the log end (auto.offset.reset=latest).
            let committed = topics[topic].log_end.clone();
            for (p, &offset) in committed.iter().enumerate() {
                groups.commit(&group.id, &topics[topic].name, p as u32, offset);
            }
            group.subs.push(Subscription {
                topic,
                reported: committed.clone(),
                committed,
                carry: 0.0,
                cursor: 0,
            });
        }
        group
    }

    /// Whether it is consuming: not in a rebalance.
    pub(super) fn is_stable(&self) -> bool {
        self.phase == Phase::Stable
    }

    /// Fetches this step's messages of every topic, and commits when due.
    pub(super) fn consume(
        &mut self,
        topics: &[SimTopic],
        groups: &GroupCoordinator,
        rng: &mut Rng,
        (now, dt, scale): (f64, f64, f64),
        commit_every: f64,
    ) {
        if self.phase != Phase::Stable {
            return; // a rebalance stops the world
        }
        let members = f64::from(self.members) / f64::from(self.home_members);
        let factor = self.headroom * (1.0 + self.speed.at(now)) * members.sqrt() * scale;
        for sub in &mut self.subs {
            let topic = &topics[sub.topic];
            let want = topic.base_rate * factor * dt + sub.carry;
            let capacity = want.floor();
            let consumed = sub.consume(&topic.log_end, capacity as i64);
            // Idle capacity is lost, not saved up.
            sub.carry = if consumed as f64 >= capacity {
                want - capacity
            } else {
                0.0
            };
            if consumed > 0 {
                let bytes = (consumed as f64 * topic.msg_size).round() as u64;
                let median = topic.fetch_ms * topic.load.sqrt();
                topic
                    .meter
                    .fetch(consumed as u64, bytes, rng.latency(median));
            }
        }
        if now >= self.commit_due {
            self.commit(topics, groups);
            self.commit_due = now + commit_every;
        }
    }

    /// Commits the partitions whose offset moved since the last commit.
    fn commit(&mut self, topics: &[SimTopic], groups: &GroupCoordinator) {
        for sub in &mut self.subs {
            let name = &topics[sub.topic].name;
            for (p, (c, r)) in sub.committed.iter().zip(&mut sub.reported).enumerate() {
                if c != r {
                    groups.commit(&self.id, name, p as u32, *c);
                    *r = *c;
                }
            }
        }
    }

    /// Starts a rebalance: a member joins or leaves (drifting back to the usual count).
    pub(super) fn rebalance(
        &mut self,
        topics: &[SimTopic],
        groups: &GroupCoordinator,
        until: f64,
        up: bool,
    ) {
        let members = if self.members <= 1 {
            2
        } else if self.members >= MAX_MEMBERS {
            MAX_MEMBERS - 1
        } else if self.members != self.home_members {
            if self.members < self.home_members {
                self.members + 1
            } else {
                self.members - 1
            }
        } else if up {
            self.members + 1
        } else {
            self.members - 1
        };
        // Revoked partitions commit what they consumed, as a consumer does.
        self.commit(topics, groups);
        self.phase = Phase::Preparing { until, members };
        groups.update(&self.id, PREPARING, self.members);
    }

    /// Moves a rebalance on when its phase is over.
    pub(super) fn advance(&mut self, groups: &GroupCoordinator, rng: &mut Rng, now: f64) {
        match self.phase {
            Phase::Stable => {}
            Phase::Preparing { until, members } if now >= until => {
                self.members = members;
                self.phase = Phase::Completing {
                    until: now + rng.range((0.3, 1.0)),
                };
                groups.update(&self.id, COMPLETING, self.members);
            }
            Phase::Completing { until } if now >= until => {
                self.phase = Phase::Stable;
                groups.update(&self.id, STABLE, self.members);
            }
            Phase::Preparing { .. } | Phase::Completing { .. } => {}
        }
    }
}
