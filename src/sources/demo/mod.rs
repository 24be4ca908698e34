//! The built-in demo broker: a simulated Kafka-compatible broker that drives the real
//! Recorder, TopicManager and GroupCoordinator, so a fresh server's dashboard moves at once.
//!
//! The simulation is a plain struct advanced by `step(dt)`; [`DemoBroker`] only runs it on its
//! own thread, one step every [`DemoConfig::step`]. Each step costs a bounded number of
//! recorder calls (at most four produces per topic and one fetch per consumed topic and
//! group), whatever the simulated message rates: messages are counted, never materialised.
//!
//! Here: [`DemoConfig`] and [`DemoBroker`]. The simulation itself is in [`simulation`], over
//! the simulated topics ([`topic`]) and groups ([`group`]) it creates from the templates of
//! [`cluster`]; [`random`] holds the seedable generator and the waves every choice comes from.

mod cluster;
mod group;
mod random;
mod simulation;
mod topic;

use std::time::Duration;

use tracing::info;

use self::simulation::Simulation;
use crate::broker::periodic::Periodic;
use crate::broker::{GroupCoordinator, TopicManager};

/// How the demo broker simulates its cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Seed of every random choice: the same seed gives the same topics, groups, traffic and
    /// events for the same sequence of steps.
    pub seed: u64,
    /// Time between two steps of the simulation (default 100 ms; at least 1 ms).
    pub step: Duration,
    /// Range of the simulated time between two topic events (a temporary topic created or
    /// deleted), and, independently, between two group rebalances (default 20 s to 60 s).
    pub event_every: (Duration, Duration),
    /// Most temporary `tmp-<n>` topics alive at once (default 3; 0: no topic events).
    pub max_temp_topics: usize,
    /// How often each group commits its consumed offsets, like a consumer's auto-commit
    /// (default 1 s; at least one step).
    pub commit_every: Duration,
    /// Multiplies every produce rate and consumer capacity (default 1.0).
    pub rate_scale: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            seed: 0x7a6b_6869_6e2d_6465,
            step: Duration::from_millis(100),
            event_every: (Duration::from_secs(20), Duration::from_secs(60)),
            max_temp_topics: 3,
            commit_every: Duration::from_secs(1),
            rate_scale: 1.0,
        }
    }
}

impl DemoConfig {
    /// The same configuration with usable values: a step of at least 1 ms, an ordered event
    /// range of at least one step, a finite non-negative scale.
    fn normalized(mut self) -> Self {
        self.step = self.step.max(Duration::from_millis(1));
        let (a, b) = self.event_every;
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        self.event_every = (a.max(self.step), b.max(self.step));
        self.commit_every = self.commit_every.max(self.step);
        if !(self.rate_scale.is_finite() && self.rate_scale >= 0.0) {
            self.rate_scale = 1.0;
        }
        self
    }
}

/// The simulated broker, running on its own `takhin-demo` thread; dropping it (or
/// [`Self::stop`]) stops the thread promptly.
///
/// The topics and groups it created stay in the services when it stops.
#[derive(Debug)]
#[must_use = "the demo broker stops when dropped"]
pub struct DemoBroker {
    periodic: Periodic,
}

impl DemoBroker {
    /// Creates the demo cluster's topics and groups in `topics` and `groups`, then simulates
    /// their traffic with [`DemoConfig::default`].
    pub fn start(topics: TopicManager, groups: GroupCoordinator) -> std::io::Result<Self> {
        Self::start_with(topics, groups, DemoConfig::default())
    }

    /// Like [`Self::start`], with `config`. The initial topics and groups exist when this
    /// returns.
    pub fn start_with(
        topics: TopicManager,
        groups: GroupCoordinator,
        config: DemoConfig,
    ) -> std::io::Result<Self> {
        let mut sim = Simulation::new(topics, groups, config);
        info!(
            topics = sim.topics.len(),
            groups = sim.groups.len(),
            seed = sim.config.seed,
            "demo broker started"
        );
        let step = sim.config.step;
        let periodic = Periodic::spawn("takhin-demo", step, step, move |dt| sim.step(dt))?;
        Ok(Self { periodic })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.periodic.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_support::rings;
    use crate::broker::{MetricsSource, Recorder, StandardSource};
    use std::time::Instant;

    #[test]
    fn config_is_normalized() {
        let c = DemoConfig {
            step: Duration::ZERO,
            event_every: (Duration::from_secs(9), Duration::ZERO),
            commit_every: Duration::ZERO,
            rate_scale: f64::NAN,
            ..DemoConfig::default()
        }
        .normalized();
        assert_eq!(c.step, Duration::from_millis(1));
        assert_eq!(
            c.event_every,
            (Duration::from_millis(1), Duration::from_secs(9))
        );
        assert_eq!(c.commit_every, Duration::from_millis(1));
        assert_eq!(c.rate_scale, 1.0);
        assert_eq!(DemoConfig::default().normalized(), DemoConfig::default());
    }

    #[test]
    fn the_thread_runs_and_stops_at_once() {
        let (_, broadcaster) = rings(1, 65536);
        let topics = TopicManager::new(Recorder::new(), Some(broadcaster.clone()));
        let groups = GroupCoordinator::new(Some(broadcaster));
        let mut source = StandardSource::new(topics.clone(), groups.clone(), None);
        let demo = DemoBroker::start(topics.clone(), groups.clone()).unwrap();
        assert!(topics.len() >= 5 && groups.list().len() >= 3);

        // Wait (spinning, not sleeping) for the thread's first steps.
        let deadline = Instant::now() + Duration::from_secs(10);
        let produced = || topics.list().iter().map(|t| t.total_messages).sum::<u64>();
        while produced() == 0 {
            assert!(Instant::now() < deadline, "no traffic from the demo thread");
            std::thread::yield_now();
        }
        let t = Instant::now();
        demo.stop();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // Its latencies reached the recorder from its own thread.
        assert!(source.snapshot(Duration::from_secs(2)).latency.produce_p50 > 0.0);

        // A long step does not delay the stop: dropping wakes the thread's wait.
        let config = DemoConfig {
            step: Duration::from_secs(3600),
            ..DemoConfig::default()
        };
        let demo = DemoBroker::start_with(topics, groups, config).unwrap();
        let t = Instant::now();
        drop(demo);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
