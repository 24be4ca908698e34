//! The built-in demo broker: a simulated Kafka-compatible broker that drives the real
//! Recorder, TopicManager and GroupCoordinator, so a fresh server's dashboard moves at once.
//!
//! The simulation is a plain struct advanced by `step(dt)`; [`DemoBroker`] only runs it on its
//! own thread, one step every [`DemoConfig::step`]. Each step costs a bounded number of
//! recorder calls (at most four produces per topic and one fetch per consumed topic and
//! group), whatever the simulated message rates: messages are counted, never materialised.

use std::f64::consts::TAU;
use std::time::Duration;

use tracing::{debug, info};

use crate::broker::periodic::Periodic;
use crate::broker::{GroupCoordinator, TopicManager, TopicMeter};

/// Most produce calls recorded per topic per step.
const PRODUCE_CALLS: usize = 4;
/// A step's messages of one topic are split into another produce call per this many.
const BATCH: f64 = 64.0;
/// Longest simulated latency, in milliseconds.
const MAX_LATENCY_MS: f64 = 50.0;
/// Shortest simulated latency, in milliseconds.
const MIN_LATENCY_MS: f64 = 0.05;
/// Spread of the log-normal latency (sigma of its logarithm).
const LATENCY_SIGMA: f64 = 0.55;
/// Chance that a call lands in the slow tail (a GC pause, a slow disk, a retried request).
const LATENCY_TAIL: f64 = 0.01;
/// A longer real step (a suspended laptop, a starved thread) is simulated as this long.
const MAX_STEP: Duration = Duration::from_secs(1);
/// Correlation time of the rate noise, in seconds.
const NOISE_TAU: f64 = 8.0;
/// Strength of the rate noise (its logarithm's stationary deviation is about 0.12).
const NOISE_SIGMA: f64 = 0.06;
/// Most members a simulated group has.
const MAX_MEMBERS: u32 = 6;

const STABLE: &str = "Stable";
const PREPARING: &str = "PreparingRebalance";
const COMPLETING: &str = "CompletingRebalance";

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

/// A small, fast, seedable generator (SplitMix64); plenty for a simulation.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Log-uniform in [lo, hi): as many values between 100 and 200 as between 1000 and 2000.
    fn log_range(&mut self, (lo, hi): (f64, f64)) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }

    /// Uniform in [lo, hi], both included.
    fn between(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    /// Uniform in [0, n); `n` must not be 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // (0, 1]: ln is finite
        (-2.0 * u.ln()).sqrt() * (TAU * self.unit()).cos()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// A latency around `median_ms`: log-normal, with a rare tail up to [`MAX_LATENCY_MS`].
    fn latency(&mut self, median_ms: f64) -> Duration {
        let mut ms = median_ms * (LATENCY_SIGMA * self.normal()).exp();
        if self.chance(LATENCY_TAIL) {
            ms *= self.range((3.0, 12.0));
        }
        Duration::from_secs_f64(ms.clamp(MIN_LATENCY_MS, MAX_LATENCY_MS) / 1000.0)
    }
}

/// A sine wave: `amplitude * sin(2π t / period + phase)`.
#[derive(Debug, Clone, Copy)]
struct Wave {
    amplitude: f64,
    period: f64,
    phase: f64,
}

impl Wave {
    fn random(rng: &mut Rng, amplitude: (f64, f64), period: (f64, f64)) -> Self {
        Self {
            amplitude: rng.range(amplitude),
            period: rng.range(period),
            phase: rng.range((0.0, TAU)),
        }
    }

    fn at(&self, t: f64) -> f64 {
        self.amplitude * (TAU * t / self.period + self.phase).sin()
    }
}

/// What a demo topic looks like: name, partitions, messages/s and bytes per message.
struct TopicTemplate {
    name: &'static str,
    partitions: (u32, u32),
    rate: (f64, f64),
    size: (f64, f64),
}

const fn template(
    name: &'static str,
    partitions: (u32, u32),
    rate: (f64, f64),
    size: (f64, f64),
) -> TopicTemplate {
    TopicTemplate {
        name,
        partitions,
        rate,
        size,
    }
}

/// The demo's permanent topics: the first [`CORE_TOPICS`] always, then 0 to 3 of the rest.
const TOPICS: [TopicTemplate; 10] = [
    template("orders", (6, 12), (400.0, 1500.0), (600.0, 1200.0)),
    template("payments", (3, 6), (200.0, 800.0), (400.0, 900.0)),
    template("clickstream", (8, 12), (1500.0, 4000.0), (200.0, 500.0)),
    template("inventory", (3, 8), (200.0, 900.0), (300.0, 800.0)),
    template("audit-log", (3, 6), (300.0, 1200.0), (800.0, 2048.0)),
    template("user-events", (6, 12), (600.0, 2000.0), (300.0, 700.0)),
    template("shipments", (3, 6), (150.0, 500.0), (500.0, 1500.0)),
    template("page-views", (6, 12), (1000.0, 3000.0), (200.0, 400.0)),
    template("notifications", (3, 8), (200.0, 900.0), (250.0, 600.0)),
    template("sessions", (4, 10), (300.0, 1200.0), (400.0, 1000.0)),
];
const CORE_TOPICS: usize = 5;

/// The demo's groups, each with the topics it would rather consume.
const GROUPS: [(&str, &[&str]); 6] = [
    ("billing", &["orders", "payments"]),
    ("analytics", &["clickstream", "page-views", "user-events"]),
    ("search-indexer", &["inventory", "orders"]),
    ("fraud-detector", &["payments", "audit-log", "sessions"]),
    (
        "shipping-service",
        &["orders", "shipments", "notifications"],
    ),
    ("audit-archiver", &["audit-log"]),
];

/// One simulated topic and its producers.
#[derive(Debug)]
struct SimTopic {
    name: String,
    meter: TopicMeter,
    /// Log-end offset per partition, as this simulation produced it (it is the only producer).
    log_end: Vec<i64>,
    /// Messages/s at load 1.
    base_rate: f64,
    /// Mean bytes per message.
    msg_size: f64,
    slow: Wave,
    fast: Wave,
    /// Log of a slowly varying multiplicative noise (Ornstein-Uhlenbeck).
    noise: f64,
    /// Fractional messages carried to the next step.
    carry: f64,
    /// Next partition to produce to.
    cursor: usize,
    /// Median produce latency at load 1, in ms.
    produce_ms: f64,
    /// Median fetch latency at load 1, in ms.
    fetch_ms: f64,
    /// Current rate / base rate.
    load: f64,
}

impl SimTopic {
    /// Creates a topic in `topics`; with `adopt`, takes over one that exists already.
    fn open(
        topics: &TopicManager,
        rng: &mut Rng,
        (name, partitions, adopt): (String, u32, bool),
        rate: (f64, f64),
        size: (f64, f64),
    ) -> Option<Self> {
        let (meter, log_end) = match topics.create(&name, partitions) {
            Ok(meter) => (meter, vec![0; partitions as usize]),
            Err(e) if !adopt => {
                debug!(topic = %name, error = %e, "demo topic not created");
                return None;
            }
            Err(e) => {
                // Already there (a restarted demo over the same services): carry on from it.
                let (Some(meter), Some(info)) = (topics.meter(&name), topics.get(&name)) else {
                    debug!(topic = %name, error = %e, "demo topic not created");
                    return None;
                };
                (meter, info.log_end_offsets)
            }
        };
        Some(Self {
            name,
            meter,
            log_end,
            base_rate: rng.log_range(rate),
            msg_size: rng.range(size),
            slow: Wave::random(rng, (0.25, 0.5), (60.0, 120.0)),
            fast: Wave::random(rng, (0.05, 0.15), (12.0, 30.0)),
            noise: 0.0,
            carry: 0.0,
            cursor: rng.below(partitions as usize),
            produce_ms: rng.range((0.8, 2.0)),
            fetch_ms: rng.range((0.4, 1.0)),
            load: 1.0,
        })
    }

    /// Produces this step's messages: a few batched calls spread over the partitions.
    fn produce(&mut self, rng: &mut Rng, now: f64, dt: f64, scale: f64) {
        self.noise += -self.noise * dt / NOISE_TAU + NOISE_SIGMA * dt.sqrt() * rng.normal();
        self.load = (1.0 + self.slow.at(now) + self.fast.at(now)).max(0.05) * self.noise.exp();
        let want = self.base_rate * scale * self.load * dt + self.carry;
        let total = want.floor();
        self.carry = want - total;
        let mut left = total as u64;
        if left == 0 {
            return;
        }
        let calls = ((left as f64 / BATCH).ceil() as usize).clamp(1, PRODUCE_CALLS);
        let median = self.produce_ms * self.load.sqrt();
        let partitions = self.log_end.len();
        for i in 0..calls {
            let remaining = calls - i;
            let n = if remaining == 1 {
                left
            } else {
                let even = left as f64 / remaining as f64;
                ((even * rng.range((0.75, 1.25))).round() as u64).min(left)
            };
            left -= n;
            if n == 0 {
                continue;
            }
            let p = self.cursor % partitions;
            // Mostly round-robin, sometimes skipping one: partitions drift apart a little.
            self.cursor = self.cursor.wrapping_add(1 + usize::from(rng.chance(0.3)));
            let bytes = (n as f64 * self.msg_size * rng.range((0.85, 1.15))).round() as u64;
            self.meter.produce(p as u32, n, bytes, rng.latency(median));
            self.log_end[p] += n as i64;
        }
    }
}

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
struct SimGroup {
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
    /// Fetches this step's messages of every topic, and commits when due.
    fn consume(
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
    fn rebalance(&mut self, topics: &[SimTopic], groups: &GroupCoordinator, until: f64, up: bool) {
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
    fn advance(&mut self, groups: &GroupCoordinator, rng: &mut Rng, now: f64) {
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

/// The simulated cluster, advanced by [`Self::step`]; no threads, no clocks.
#[derive(Debug)]
struct Simulation {
    services: TopicManager,
    coordinator: GroupCoordinator,
    config: DemoConfig,
    rng: Rng,
    /// Simulated seconds since the start.
    now: f64,
    /// The permanent topics first (`permanent` of them), then the temporary ones.
    topics: Vec<SimTopic>,
    permanent: usize,
    groups: Vec<SimGroup>,
    next_topic_event: f64,
    next_rebalance: f64,
    /// Number of the next `tmp-<n>` topic.
    next_temp: u64,
}

impl Simulation {
    /// Creates the demo's topics and groups in the services.
    fn new(services: TopicManager, coordinator: GroupCoordinator, config: DemoConfig) -> Self {
        let config = config.normalized();
        let mut rng = Rng(config.seed);

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
            let members = rng.between(1, MAX_MEMBERS);
            let mut group = SimGroup {
                id: (*id).to_owned(),
                members,
                home_members: members,
                phase: Phase::Stable,
                headroom: rng.range((1.1, 1.5)),
                speed: Wave::random(&mut rng, (0.15, 0.3), (45.0, 150.0)),
                subs: Vec::with_capacity(candidates.len()),
                commit_due: config.commit_every.as_secs_f64(),
            };
            // Stable first: a first commit would create the group as Empty.
            coordinator.update(&group.id, STABLE, members);
            for topic in candidates {
                // A new group starts at the log end (auto.offset.reset=latest).
                let committed = topics[topic].log_end.clone();
                for (p, &offset) in committed.iter().enumerate() {
                    coordinator.commit(&group.id, &topics[topic].name, p as u32, offset);
                }
                group.subs.push(Subscription {
                    topic,
                    reported: committed.clone(),
                    committed,
                    carry: 0.0,
                    cursor: 0,
                });
            }
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
    fn step(&mut self, dt: Duration) {
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
        let stable = self
            .groups
            .iter()
            .filter(|g| g.phase == Phase::Stable)
            .count();
        if stable == 0 {
            return;
        }
        let nth = self.rng.below(stable);
        let until = self.now + self.rng.range((1.0, 3.0));
        let up = self.rng.chance(0.5);
        if let Some(group) = self
            .groups
            .iter_mut()
            .filter(|g| g.phase == Phase::Stable)
            .nth(nth)
        {
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
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Instant;

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
    fn latencies_are_skewed_and_bounded() {
        let mut rng = Rng(1);
        let mut ms: Vec<f64> = (0..20_000)
            .map(|_| rng.latency(1.5).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let q = |f: f64| ms[(f * (ms.len() - 1) as f64) as usize];
        assert!((1.3..1.7).contains(&q(0.5)), "{}", q(0.5));
        assert!((3.0..12.0).contains(&q(0.99)), "{}", q(0.99));
        assert!(ms[0] >= MIN_LATENCY_MS && ms[ms.len() - 1] <= MAX_LATENCY_MS);
        assert!(q(0.999) > 10.0, "a tail: {}", q(0.999));
        for _ in 0..1000 {
            assert!((3..=5).contains(&rng.between(3, 5)));
            assert!((0.0..1.0).contains(&rng.unit()));
        }
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
