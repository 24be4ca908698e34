//! What one poll learns of the cluster, as plain data: the client fills it from the wire
//! (`client/`), the view derives snapshots, events and lag from it (`view.rs`). Nothing here
//! does I/O, so the view is tested on recorded states.

use std::collections::BTreeMap;

/// A broker of the cluster, as Metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub(crate) id: i32,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) rack: Option<String>,
}

/// One partition: its leader and replicas (Metadata), its offsets (ListOffsets) and size
/// (DescribeLogDirs, where the broker answers it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PartitionState {
    pub(crate) id: i32,
    /// -1: no leader (offline).
    pub(crate) leader: i32,
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
    /// The earliest offset still in the log; `None` when its leader did not answer.
    pub(crate) start_offset: Option<i64>,
    /// The log-end offset (the next offset to be written); `None` when its leader did not
    /// answer.
    pub(crate) end_offset: Option<i64>,
    /// Bytes on disk, summed over the replicas' log directories; `None` when unknown.
    pub(crate) size_bytes: Option<u64>,
}

/// One topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TopicState {
    /// An internal topic (`__consumer_offsets`, ...).
    pub(crate) internal: bool,
    /// By partition id, in order.
    pub(crate) partitions: Vec<PartitionState>,
}

/// One consumer group: ListGroups, DescribeGroups and OffsetFetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupState {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty`, `Dead`, or what the
    /// broker says.
    pub(crate) state: String,
    pub(crate) members: u32,
    /// `consumer` for consumer groups; others (`connect`, ...) are listed too.
    pub(crate) protocol_type: String,
    /// Committed offsets by (topic, partition); a partition without a commit is absent.
    pub(crate) committed: BTreeMap<(String, i32), i64>,
    /// Whether DescribeGroups answered for it in this poll: when not, `state` is ListGroups'
    /// (empty before v4, `Unknown` on some brokers) and `members` 0, not the group's own.
    pub(crate) described: bool,
}

/// The cluster as one poll saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterState {
    /// Milliseconds since the Unix epoch when the poll began.
    pub(crate) at_ms: u64,
    pub(crate) cluster_id: Option<String>,
    pub(crate) controller: Option<i32>,
    pub(crate) brokers: Vec<Broker>,
    /// By name.
    pub(crate) topics: BTreeMap<String, TopicState>,
    /// By group id.
    pub(crate) groups: BTreeMap<String, GroupState>,
    /// Whether every broker answered ListGroups: when one did not, the groups it knows are
    /// missing from `groups` though they still exist.
    pub(crate) groups_complete: bool,
}
