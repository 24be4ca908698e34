//! Events from comparing two polls: topics that appeared or vanished, groups that appeared,
//! changed state or member count, or vanished.

use crate::broker::DEAD_STATE;
use crate::error::BroadcastError;
use crate::hub::Broadcaster;
use crate::sources::kafka::model::{ClusterState, GroupState};

/// One event, in the shape of its protocol message (`topic_created`, `topic_deleted`,
/// `group_updated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A topic that the previous poll did not see.
    TopicCreated {
        /// Its name.
        name: String,
        /// Its partitions.
        partitions: u32,
    },
    /// A topic that the previous poll saw and this one does not.
    TopicDeleted {
        /// Its name.
        name: String,
    },
    /// A group that appeared, changed state or member count, or vanished (then as `Dead`
    /// with 0 members).
    GroupUpdated {
        /// The group id.
        group_id: String,
        /// Its state.
        state: String,
        /// Its members.
        members: u32,
    },
}

impl Event {
    /// Broadcasts it (on `events` and its topic's or group's channel); returns its `seq`.
    pub(crate) fn publish(&self, to: &Broadcaster) -> Result<u64, BroadcastError> {
        match self {
            Self::TopicCreated { name, partitions } => to.topic_created(name, *partitions),
            Self::TopicDeleted { name } => to.topic_deleted(name),
            Self::GroupUpdated {
                group_id,
                state,
                members,
            } => to.group_updated(group_id, state, *members),
        }
    }

    pub(crate) fn group_updated(group_id: &str, g: &GroupState) -> Self {
        Self::GroupUpdated {
            group_id: group_id.to_owned(),
            state: g.state.clone(),
            members: g.members,
        }
    }
}

/// What changed from `prev` to `next`: deleted topics, created topics (each by name), groups
/// that appeared or changed, then groups that vanished (each by id). Internal topics are never
/// announced (they are not listed either).
///
/// Two polls compare names only: a topic deleted and created again between them, or whose
/// partition count grew, is no event (the snapshot shows its new partitions).
pub(crate) fn diff(prev: &ClusterState, next: &ClusterState) -> Vec<Event> {
    let listed = |s: &ClusterState, name: &str| s.topics.get(name).is_some_and(|t| !t.internal);
    let mut events = Vec::new();
    for (name, _) in prev.topics.iter().filter(|(_, t)| !t.internal) {
        if !listed(next, name) {
            events.push(Event::TopicDeleted { name: name.clone() });
        }
    }
    for (name, t) in next.topics.iter().filter(|(_, t)| !t.internal) {
        if !listed(prev, name) {
            events.push(Event::TopicCreated {
                name: name.clone(),
                partitions: t.partitions.len() as u32,
            });
        }
    }
    for (id, g) in &next.groups {
        match prev.groups.get(id) {
            Some(old) if old.state == g.state && old.members == g.members => {}
            _ => events.push(Event::group_updated(id, g)),
        }
    }
    for (id, old) in &prev.groups {
        // A group already seen dead is not announced again.
        let dead = old.state == DEAD_STATE && old.members == 0;
        if !dead && !next.groups.contains_key(id) {
            events.push(Event::GroupUpdated {
                group_id: id.clone(),
                state: DEAD_STATE.to_owned(),
                members: 0,
            });
        }
    }
    events
}
