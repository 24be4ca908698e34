//! The server binary's work: the hub from its options, its source, the relay, the ticker,
//! and the signals that stop them.

use anyhow::Context as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use super::options::{secs, Options, SourceKind};
use super::{Hub, HubHandle};
use crate::broker::{GroupCoordinator, Recorder, StandardSource, TopicManager};
use crate::sources::{DemoBroker, Relay, RelayRole};

/// Raises the open-files soft limit to the hard limit: every client is a descriptor.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        lim.rlim_cur
    }
}

/// Runs the server until SIGINT or SIGTERM: the hub, its source, the relay and the ticker.
pub fn run(opt: Options) -> anyhow::Result<()> {
    let config = opt.build_config()?;
    let interval = secs(opt.metrics_interval.unwrap_or(2.0), "metrics interval")?;
    let source = opt.source.unwrap_or(SourceKind::None);
    let max_files = raise_fd_limit();
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let hub = Hub::start(config).context("starting the hub")?;
    info!(
        "listening on ws://{addr}/api/monitoring/ws, dashboard at http://{addr}/ \
         (cores {:?}, source {:?}, open files {})",
        hub.cores(),
        source,
        max_files,
        addr = hub.local_addr(),
    );

    let trigger = hub.shutdown_trigger();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            warn!(signal = sig, "shutting down");
            trigger.shutdown();
        }
    });

    if source == SourceKind::Relay {
        // Only fans out: no ticker, no topics of its own; REST reads come from the origin.
        let relay = opt.relay.clone().context("--source relay needs --relay")?;
        let relay = hub
            .start_relay(relay, RelayRole::RelayOnly)
            .context("starting the relay")?;
        hub.wait().context("shard failure")?;
        relay.stop();
        info!("stopped");
        return Ok(());
    }

    if source == SourceKind::Kafka {
        // The cluster is the source: one poll per tick, on the ticker's thread.
        let kafka = opt.kafka()?;
        let every = match opt.kafka_poll_interval {
            Some(s) => secs(s, "Kafka poll interval")?,
            None => interval,
        };
        info!(brokers = %kafka.brokers.join(","), "watching a Kafka cluster");
        let ticker = hub
            .watch_kafka(&kafka, every)
            .context("starting the Kafka source")?;
        let relay = origin_relay(&hub, &opt)?;
        hub.wait().context("shard failure")?;
        ticker.stop();
        drop(relay);
        info!("stopped");
        return Ok(());
    }

    // The services every source feeds, served over REST, and the ticker that streams them.
    let broadcaster = hub.broadcaster();
    let topics = TopicManager::new(Recorder::new(), Some(broadcaster.clone()));
    let groups = GroupCoordinator::new(Some(broadcaster));
    hub.serve_api(topics.clone(), groups.clone());
    let demo = match source {
        SourceKind::Demo => Some(DemoBroker::start(topics.clone(), groups.clone())?),
        SourceKind::None | SourceKind::Relay | SourceKind::Kafka => None,
    };
    let mut metrics = StandardSource::new(topics, groups, Some(hub.probe()));
    if let Some(dir) = &opt.data_dir {
        metrics = metrics.data_dir(dir);
    }
    let relay = origin_relay(&hub, &opt)?;
    let ticker = hub
        .start_ticker(metrics, interval)
        .context("starting the ticker")?;
    hub.wait().context("shard failure")?;
    drop(demo);
    ticker.stop();
    drop(relay);
    info!("stopped");
    Ok(())
}

/// With --relay, this instance publishes its broadcasts to the other instances.
fn origin_relay(hub: &HubHandle, opt: &Options) -> anyhow::Result<Option<Relay>> {
    let Some(config) = opt.relay.clone() else {
        return Ok(None);
    };
    let relay = hub
        .start_relay(config, RelayRole::Origin)
        .context("starting the relay")?;
    Ok(Some(relay))
}
