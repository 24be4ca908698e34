//! The ticker: every interval (2 s by default) one snapshot, encoded once and broadcast on
//! `metrics`, then one detail frame for each `topic:<name>` and `group:<id>` channel that has
//! subscribers somewhere. Its work depends on the cluster's size, never on the number of
//! clients.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::broker::periodic::Periodic;
use crate::broker::source::MetricsSource;
use crate::hub::{Broadcaster, HubProbe};
use crate::protocol::Channel;

/// Default interval between snapshots (PROTOCOL.md: 2 s).
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(2);

/// The running ticker thread. Dropping it stops the thread.
#[derive(Debug)]
#[must_use = "the ticker stops when dropped"]
pub struct Ticker {
    periodic: Periodic,
}

impl Ticker {
    /// Starts ticking from `source` through `broadcaster` (the hub's:
    /// `HubHandle::broadcaster`), sending detail frames for the channels `probe`
    /// reports: a first snapshot at once, then one every `interval`.
    pub fn start(
        broadcaster: Broadcaster,
        probe: HubProbe,
        source: impl MetricsSource + 'static,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let mut source: Box<dyn MetricsSource> = Box::new(source);
        let interval = interval.max(Duration::from_millis(10));
        let mut first = true;
        let job = move |elapsed: Duration| {
            // The first snapshot's rates are over one interval; later ones over the time since
            // the previous tick (at least half an interval).
            let elapsed = if std::mem::take(&mut first) {
                interval
            } else {
                elapsed.max(interval / 2)
            };
            tick(&mut *source, &broadcaster, &probe, elapsed);
        };
        let periodic = Periodic::spawn("takhin-ticker", interval, Duration::ZERO, job)?;
        Ok(Self { periodic })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.periodic.stop();
    }
}

/// One tick: the snapshot, then the detail frames of channels with subscribers.
pub(crate) fn tick(
    source: &mut dyn MetricsSource,
    broadcaster: &Broadcaster,
    probe: &HubProbe,
    elapsed: Duration,
) {
    let started = Instant::now();
    let snapshot = source.snapshot(elapsed);
    if let Err(e) = broadcaster.metrics(&snapshot) {
        warn!(error = %e, "metrics snapshot not sent");
    }
    // Subscribers on other instances may want any detail: send every one the source knows.
    let every = probe
        .remote_subscribers()
        .then(|| source.detail_channels())
        .flatten();
    let channels = every.unwrap_or_else(|| probe.detail_channels());
    for channel in channels {
        let sent = match &channel {
            Channel::Topic(name) => source
                .topic_detail(name)
                .map(|d| broadcaster.publish_retained(&channel, "topic_detail", &d)),
            Channel::Group(id) => source
                .group_detail(id)
                .map(|d| broadcaster.publish_retained(&channel, "group_detail", &d)),
            Channel::Metrics | Channel::Events => None,
        };
        if let Some(Err(e)) = &sent {
            warn!(%channel, error = %e, "detail frame not sent");
        }
        // Deleted while its detail was being built: make sure no core keeps that detail.
        let gone = match &channel {
            Channel::Topic(name) => sent.is_some() && source.topic_detail(name).is_none(),
            Channel::Group(id) => sent.is_some() && source.group_detail(id).is_none(),
            Channel::Metrics | Channel::Events => false,
        };
        if gone {
            broadcaster.forget(&channel);
        }
    }
    probe.record_tick(started.elapsed());
}
