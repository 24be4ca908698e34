//! The simulated cluster, [`Simulation`]: its topics and groups, the clock that advances them
//! and the events (temporary topics, rebalances) that change them.

use std::time::Duration;

use super::cluster::{CORE_TOPICS, GROUPS, TOPICS};
use super::group::SimGroup;
use super::random::Rng;
use super::topic::SimTopic;
use super::DemoConfig;
use crate::broker::{GroupCoordinator, TopicManager};

/// A longer real step (a suspended laptop, a starved thread) is simulated as this long.
const MAX_STEP: Duration = Duration::from_secs(1);

/// The simulated cluster, advanced by [`Self::step`]; no threads, no clocks.
#[derive(Debug)]
pub(super) struct Simulation {
    services: TopicManager,
    coordinator: GroupCoordinator,
    pub(super) config: DemoConfig,
    rng: Rng,
    /// Simulated seconds since the start.
    now: f64,
    /// The permanent topics first (`permanent` of them), then the temporary ones.
    pub(super) topics: Vec<SimTopic>,
    permanent: usize,
    pub(super) groups: Vec<SimGroup>,
    next_topic_event: f64,
    next_rebalance: f64,
    /// Number of the next `tmp-<n>` topic.
    next_temp: u64,
}

impl Simulation {
    /// Creates the demo's topics and groups in the services.
    pub(super) fn new(
        services: TopicManager,
        coordinator: GroupCoordinator,
        config: DemoConfig,
    ) -> Self {
        let config = config.normalized();
        let mut rng = Rng::new(config.seed);

        let mut extra: [usize; TOPICS.len() - CORE_TOPICS] =
            std::array::from_fn(|i| CORE_TOPICS + i);
        rng.shuffle(&mut extra);
        let mut chosen: Vec<usize> = (0..CORE_TOPICS).collect();
        chosen.extend_from_slice(&extra[..rng.between(0, 3) as usize]);
        chosen.sort_unstable();
        let mut topics = Vec::with_capacity(chosen.len() + config.max_temp_topics);
        for t in chosen.iter().map(|&i| &TOPICS[i]) {
            let partitions = rng.between(t.partitions.0, t.partitions.1);
            let spec = (t.name.to_owned(), partitions, true);
            if let Some(topic) = SimTopic::open(&services, &mut rng, spec, t.rate, t.size) {
                topics.push(topic);
            }
        }

        let mut templates = GROUPS;
        rng.shuffle(&mut templates);
        let count = rng.between(3, 4) as usize;
        let mut groups = Vec::with_capacity(count);
        for (id, preferred) in &templates[..count] {
            let mut candidates: Vec<usize> = preferred
                .iter()
                .filter_map(|name| topics.iter().position(|t| t.name == *name))
                .collect();
            if candidates.is_empty() && !topics.is_empty() {
                candidates.push(rng.below(topics.len()));
            }
            rng.shuffle(&mut candidates);
            let take = (rng.between(1, 3) as usize).min(candidates.len());
            candidates.truncate(take);
            candidates.sort_unstable();
            let commit_due = config.commit_every.as_secs_f64();
            let group = SimGroup::join(id, &topics, candidates, &coordinator, &mut rng, commit_due);
            groups.push(group);
        }

        let mut sim = Self {
            services,
            coordinator,
            permanent: topics.len(),
            topics,
            groups,
            rng,
            now: 0.0,
            next_topic_event: 0.0,
            next_rebalance: 0.0,
            next_temp: 1,
            config,
        };
        sim.next_topic_event = sim.next_event();
        sim.next_rebalance = sim.next_event();
        sim
    }

    /// Simulated time of the next event of a kind, from now.
    fn next_event(&mut self) -> f64 {
        let (a, b) = self.config.event_every;
        self.now + self.rng.range((a.as_secs_f64(), b.as_secs_f64()))
    }

    /// Advances the simulation by `dt` (at most [`MAX_STEP`]): produce, consume, commit, and
    /// any event that is due.
    pub(super) fn step(&mut self, dt: Duration) {
        let dt = dt.min(MAX_STEP).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        self.now += dt;
        let (now, scale) = (self.now, self.config.rate_scale);
        for topic in &mut self.topics {
            topic.produce(&mut self.rng, now, dt, scale);
        }
        let commit_every = self.config.commit_every.as_secs_f64();
        for group in &mut self.groups {
            group.consume(
                &self.topics,
                &self.coordinator,
                &mut self.rng,
                (now, dt, scale),
                commit_every,
            );
            group.advance(&self.coordinator, &mut self.rng, now);
        }
        if now >= self.next_topic_event {
            self.topic_event();
            self.next_topic_event = self.next_event();
        }
        if now >= self.next_rebalance {
            self.start_rebalance();
            self.next_rebalance = self.next_event();
        }
    }

    /// Creates a temporary topic or deletes one; the permanent topics are never deleted.
    fn topic_event(&mut self) {
        let temps = self.topics.len() - self.permanent;
        let max = self.config.max_temp_topics;
        if max == 0 {
            return;
        }
        if temps == 0 || (temps < max && self.rng.chance(0.5)) {
            let name = format!("tmp-{}", self.next_temp);
            self.next_temp += 1;
            let partitions = self.rng.between(1, 6);
            // Never adopted: only a topic this simulation created is ever deleted by it.
            let topic = SimTopic::open(
                &self.services,
                &mut self.rng,
                (name, partitions, false),
                (20.0, 300.0),
                (200.0, 1000.0),
            );
            self.topics.extend(topic);
        } else {
            let i = self.permanent + self.rng.below(temps);
            let topic = self.topics.remove(i);
            // Someone else may have deleted it already: nothing to do then.
            let _ = self.services.delete(&topic.name);
        }
    }

    /// Starts a rebalance of one stable group, if there is one.
    fn start_rebalance(&mut self) {
        let stable = self.groups.iter().filter(|g| g.is_stable()).count();
        if stable == 0 {
            return;
        }
        let nth = self.rng.below(stable);
        let until = self.now + self.rng.range((1.0, 3.0));
        let up = self.rng.chance(0.5);
        if let Some(group) = self.groups.iter_mut().filter(|g| g.is_stable()).nth(nth) {
            group.rebalance(&self.topics, &self.coordinator, until, up);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_support::{pop, rings};
    use crate::broker::{MetricsSource, Recorder, StandardSource};
    use crate::hub::HubShared;
    use crate::sources::demo::group::{COMPLETING, MAX_MEMBERS, PREPARING, STABLE};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const STEP: Duration = Duration::from_millis(100);

    fn rig_with(config: DemoConfig) -> (Arc<HubShared>, Simulation) {
        let (shared, broadcaster) = rings(1, 65536);
        let topics = TopicManager::new(Recorder::new(), Some(broadcaster.clone()));
        let groups = GroupCoordinator::new(Some(broadcaster));
        (shared, Simulation::new(topics, groups, config))
    }

    fn rig(seed: u64) -> (Arc<HubShared>, Simulation) {
        rig_with(DemoConfig {
            seed,
            ..DemoConfig::default()
        })
    }

    fn events(shared: &HubShared) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| pop(shared, 0))
            .map(|f| serde_json::from_slice(f.payload()).unwrap())
            .collect()
    }

    fn kind(e: &serde_json::Value) -> &str {
        e["type"].as_str().unwrap()
    }

    fn run(sim: &mut Simulation, steps: usize) {
        for _ in 0..steps {
            sim.step(STEP);
        }
    }

    /// Every committed offset is at most its partition's log end; returns the total lag.
    fn check_lag(sim: &Simulation) -> u64 {
        let lags = sim.coordinator.lags(&sim.services);
        assert_eq!(lags.len(), sim.groups.len());
        for lag in &lags {
            for t in &lag.topic_lags {
                for p in &t.partition_lags {
                    let c = p.current_offset.expect("every partition is committed");
                    assert!(
                        (0..=p.log_end_offset).contains(&c),
                        "{} {}/{}: committed {c} > log end {}",
                        lag.group_id,
                        t.topic,
                        p.partition,
                        p.log_end_offset
                    );
                    assert_eq!(p.lag, Some(p.log_end_offset - c));
                }
            }
        }
        lags.iter().map(|l| l.total_lag).sum()
    }

    #[test]
    fn initial_cluster_is_created_and_announced() {
        for seed in 0..32 {
            let (shared, sim) = rig(seed);
            let topics = sim.services.list();
            assert!((5..=8).contains(&topics.len()), "seed {seed}: {topics:?}");
            assert!(topics.iter().all(|t| (3..=12).contains(&t.partitions)));
            for core in [
                "orders",
                "payments",
                "clickstream",
                "inventory",
                "audit-log",
            ] {
                assert!(topics.iter().any(|t| t.name == core), "{core}");
            }
            let groups = sim.coordinator.list();
            assert!((3..=4).contains(&groups.len()), "seed {seed}: {groups:?}");
            for g in &groups {
                assert_eq!(g.state, STABLE);
                assert!((1..=6).contains(&g.members), "{g:?}");
                let lag = sim.coordinator.lag(&g.group_id, &sim.services).unwrap();
                assert!((1..=3).contains(&lag.topic_lags.len()), "{lag:?}");
                assert_eq!(lag.total_lag, 0);
            }
            check_lag(&sim);

            // Announced: every topic, then every group as Stable (never Empty first).
            let ev = events(&shared);
            let created: Vec<(&str, u64)> = ev
                .iter()
                .filter(|e| kind(e) == "topic_created")
                .map(|e| {
                    let d = &e["data"];
                    (
                        d["name"].as_str().unwrap(),
                        d["partitions"].as_u64().unwrap(),
                    )
                })
                .collect();
            let mut listed: Vec<(&str, u64)> = topics
                .iter()
                .map(|t| (t.name.as_str(), u64::from(t.partitions)))
                .collect();
            let mut sorted = created.clone();
            sorted.sort_unstable();
            listed.sort_unstable();
            assert_eq!(sorted, listed);
            let updated: Vec<(&str, &str, u64)> = ev
                .iter()
                .filter(|e| kind(e) == "group_updated")
                .map(|e| {
                    let d = &e["data"];
                    (
                        d["groupId"].as_str().unwrap(),
                        d["state"].as_str().unwrap(),
                        d["members"].as_u64().unwrap(),
                    )
                })
                .collect();
            let mut expected: Vec<(&str, &str, u64)> = groups
                .iter()
                .map(|g| (g.group_id.as_str(), STABLE, u64::from(g.members)))
                .collect();
            let mut updated_sorted = updated.clone();
            updated_sorted.sort_unstable();
            expected.sort_unstable();
            assert_eq!(updated_sorted, expected);
            assert_eq!(ev.len(), created.len() + updated.len());
        }
    }

    #[test]
    fn traffic_advances_offsets_and_commits_stay_behind_the_log_end() {
        let (_, mut sim) = rig(7);
        let mut source = StandardSource::new(sim.services.clone(), sim.coordinator.clone(), None);
        let _ = source.snapshot(Duration::from_secs(2));
        let before = sim.services.list();
        run(&mut sim, 600); // one simulated minute

        let after = sim.services.list();
        for t in after.iter().filter(|t| !t.name.starts_with("tmp-")) {
            let b = before.iter().find(|b| b.name == t.name).unwrap();
            assert!(t.total_messages > b.total_messages, "{}", t.name);
            assert!(t.total_bytes >= 200 * t.total_messages, "{}", t.name);
            assert!(t.total_bytes <= 2048 * 2 * t.total_messages, "{}", t.name);
            // Every produce advanced a partition's log end, and every partition moved.
            assert_eq!(
                t.log_end_offsets.iter().sum::<i64>() as u64,
                t.total_messages
            );
            assert!(t.log_end_offsets.iter().all(|&o| o > 0), "{t:?}");
            let own = sim.topics.iter().find(|s| s.name == t.name).unwrap();
            assert_eq!(own.log_end, t.log_end_offsets);
        }
        check_lag(&sim);
        for g in sim.coordinator.lags(&sim.services) {
            // The groups consumed and committed: their offsets moved off zero.
            let committed: i64 = g
                .topic_lags
                .iter()
                .flat_map(|t| &t.partition_lags)
                .filter_map(|p| p.current_offset)
                .sum();
            assert!(committed > 0, "{g:?}");
        }

        let m = source.snapshot(Duration::from_secs(60));
        let t = &m.throughput;
        assert!((1000.0..30_000.0).contains(&t.produce_rate), "{t:?}");
        assert!(t.fetch_rate > 100.0, "{t:?}");
        assert!(t.produce_bytes > 200.0 * t.produce_rate, "{t:?}");
        let l = &m.latency;
        assert!((0.5..5.0).contains(&l.produce_p50), "{l:?}");
        assert!(
            l.produce_p50 < l.produce_p95 && l.produce_p95 <= l.produce_p99,
            "{l:?}"
        );
        assert!(l.produce_p99 <= 50.1, "{l:?}");
        assert!(l.fetch_p50 > 0.0 && l.fetch_p50 < l.produce_p50, "{l:?}");
    }

    #[test]
    fn lag_grows_and_is_caught_up_again() {
        let (_, mut sim) = rig(11);
        let mut samples = Vec::new();
        // Thirty simulated minutes, sampled every 2 s like the ticker.
        for _ in 0..900 {
            run(&mut sim, 20);
            samples.push(check_lag(&sim));
        }
        let min = *samples.iter().min().unwrap();
        let (peak_at, &max) = samples.iter().enumerate().max_by_key(|(_, &l)| l).unwrap();
        let rises = samples.windows(2).filter(|w| w[1] > w[0]).count();
        let falls = samples.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(rises > 50 && falls > 50, "rises {rises} falls {falls}");
        assert!(max > 4 * min.max(1), "min {min} max {max}");
        // Caught up after the worst moment, and never runs away.
        let after = samples[peak_at..].iter().min().unwrap();
        assert!(*after < max / 4, "max {max}, lowest after it {after}");
        assert!(max < 500_000, "{max}");
    }

    #[test]
    fn topics_come_and_go_and_groups_rebalance() {
        let (shared, mut sim) = rig(3);
        let permanent: Vec<String> = sim.services.list().into_iter().map(|t| t.name).collect();
        let _ = events(&shared);
        for _ in 0..18_000 {
            // Thirty simulated minutes.
            sim.step(STEP);
            let temps = sim.topics.len() - sim.permanent;
            assert!(temps <= sim.config.max_temp_topics);
        }
        let ev = events(&shared);

        let names = |k: &str| -> Vec<String> {
            ev.iter()
                .filter(|e| kind(e) == k)
                .map(|e| e["data"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let created = names("topic_created");
        let deleted = names("topic_deleted");
        assert!(!created.is_empty() && !deleted.is_empty());
        assert!(created.iter().all(|n| n.starts_with("tmp-")), "{created:?}");
        // Only temporary topics are deleted, each after it was created.
        for d in &deleted {
            assert!(created.contains(d), "{d}");
            assert!(!permanent.contains(d), "{d}");
        }
        let mut alive: Vec<String> = permanent.clone();
        alive.extend(created.iter().filter(|c| !deleted.contains(c)).cloned());
        alive.sort();
        let listed: Vec<String> = sim.services.list().into_iter().map(|t| t.name).collect();
        assert_eq!(listed, alive);

        // Each group's updates come in rebalances: Preparing (old count), Completing and
        // Stable (new count, one more or one fewer).
        let mut per_group: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
        for e in ev.iter().filter(|e| kind(e) == "group_updated") {
            let d = &e["data"];
            per_group
                .entry(d["groupId"].as_str().unwrap().to_owned())
                .or_default()
                .push((
                    d["state"].as_str().unwrap().to_owned(),
                    d["members"].as_u64().unwrap() as u32,
                ));
        }
        let mut rebalances = 0;
        for (id, updates) in &per_group {
            for cycle in updates.chunks(3) {
                let states: Vec<&str> = cycle.iter().map(|(s, _)| s.as_str()).collect();
                assert_eq!(
                    states,
                    &[PREPARING, COMPLETING, STABLE][..cycle.len()],
                    "{id}"
                );
                if let [(_, old), (_, new), (_, stable)] = cycle {
                    assert_eq!(old.abs_diff(*new), 1, "{id}: {cycle:?}");
                    assert_eq!(new, stable);
                    assert!((1..=MAX_MEMBERS).contains(new));
                    rebalances += 1;
                }
            }
        }
        assert!(rebalances >= 10, "{rebalances}");
        // The coordinator holds the last announced state of every group.
        for g in sim.coordinator.list() {
            let (state, members) = per_group[&g.group_id].last().unwrap();
            assert_eq!((g.state.as_str(), g.members), (state.as_str(), *members));
        }
    }

    #[test]
    fn event_settings_are_honoured() {
        let (shared, mut sim) = rig_with(DemoConfig {
            seed: 5,
            event_every: (Duration::from_secs(5), Duration::from_secs(5)),
            max_temp_topics: 0,
            ..DemoConfig::default()
        });
        let _ = events(&shared);
        run(&mut sim, 600);
        let ev = events(&shared);
        assert!(ev.iter().all(|e| kind(e) == "group_updated"));
        let rebalances = ev
            .iter()
            .filter(|e| e["data"]["state"] == PREPARING)
            .count();
        assert!((10..=12).contains(&rebalances), "{rebalances}");
    }

    #[test]
    fn the_same_seed_simulates_the_same_cluster() {
        let (_, mut a) = rig(99);
        let (_, mut b) = rig(99);
        let (_, mut c) = rig(100);
        for sim in [&mut a, &mut b, &mut c] {
            run(sim, 3000);
        }
        assert_eq!(a.services.list(), b.services.list());
        assert_eq!(a.coordinator.list(), b.coordinator.list());
        assert_eq!(
            a.coordinator.lags(&a.services),
            b.coordinator.lags(&b.services)
        );
        assert_ne!(a.services.list(), c.services.list());
    }
}
