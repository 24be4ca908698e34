//! The `takhin-monitor` server: CLI -> config -> run.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use takhin_monitor::{
    Cores, GroupCoordinator, Hub, HubConfig, Recorder, StandardSource, Ticker, TopicManager,
};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// What feeds the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// Nothing built in: only what an embedding broker or the publish endpoint sends.
    None,
}

/// Streams a broker's live metrics and events to WebSocket dashboards.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Opt {
    /// Address to listen on (all shards share it through SO_REUSEPORT).
    #[arg(long, env = "TAKHIN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Number of cores to run a shard on (default: all).
    #[arg(long, env = "TAKHIN_CORES", conflicts_with = "cpu_list")]
    cores: Option<usize>,
    /// Exact core ids to run a shard on, comma separated.
    #[arg(long, env = "TAKHIN_CPU_LIST", value_delimiter = ',')]
    cpu_list: Option<Vec<usize>>,
    /// What feeds the hub.
    #[arg(long, env = "TAKHIN_SOURCE", value_enum, default_value = "none")]
    source: Source,
    /// Per-client outbound queue, in frames.
    #[arg(long, env = "TAKHIN_CLIENT_QUEUE")]
    client_queue: Option<usize>,
    /// Server ping interval, in seconds.
    #[arg(long, env = "TAKHIN_PING_INTERVAL")]
    ping_interval: Option<f64>,
    /// Silence allowed before a client is closed, in seconds.
    #[arg(long, env = "TAKHIN_PONG_WAIT")]
    pong_wait: Option<f64>,
    /// Drain deadline on SIGTERM, in seconds.
    #[arg(long, env = "TAKHIN_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<f64>,
    /// Interval between `metrics` snapshots, in seconds.
    #[arg(long, env = "TAKHIN_METRICS_INTERVAL", default_value_t = 2.0)]
    metrics_interval: f64,
    /// Directory whose disk usage is reported as `diskUsageBytes`.
    #[arg(long, env = "TAKHIN_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
}

impl Opt {
    fn build_config(&self) -> anyhow::Result<HubConfig> {
        let mut config = HubConfig::default().listen(self.listen);
        config = match (&self.cores, &self.cpu_list) {
            (Some(n), _) => config.cores(Cores::Count(*n)),
            (None, Some(list)) => config.cores(Cores::List(list.clone())),
            (None, None) => config,
        };
        if let Some(q) = self.client_queue {
            config = config.client_queue(q);
        }
        if let Some(s) = self.ping_interval {
            config = config.ping_interval(secs(s, "--ping-interval")?);
        }
        if let Some(s) = self.pong_wait {
            config = config.pong_wait(secs(s, "--pong-wait")?);
        }
        if let Some(s) = self.shutdown_timeout {
            config = config.shutdown_timeout(secs(s, "--shutdown-timeout")?);
        }
        config.assert_valid()?;
        Ok(config)
    }
}

fn secs(s: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        bail!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Opt::parse()) {
        eprintln!("takhin-monitor: {e:#}");
        std::process::exit(1);
    }
}

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

fn run(opt: Opt) -> anyhow::Result<()> {
    let config = opt.build_config()?;
    let max_files = raise_fd_limit();
    let interval = secs(opt.metrics_interval, "--metrics-interval")?;
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let hub = Hub::start(config).context("starting the hub")?;
    info!(
        "listening on ws://{}/api/monitoring/ws (cores {:?}, source {:?}, open files {})",
        hub.local_addr(),
        hub.cores(),
        opt.source,
        max_files
    );
    // The services every source feeds, and the ticker that streams their snapshot.
    let broadcaster = hub.broadcaster();
    let topics = TopicManager::new(Recorder::new(), Some(broadcaster.clone()));
    let groups = GroupCoordinator::new(Some(broadcaster));
    let mut source = StandardSource::new(topics, groups, Some(hub.probe()));
    if let Some(dir) = &opt.data_dir {
        source = source.data_dir(dir);
    }
    let ticker = Ticker::start(&hub, source, interval).context("starting the ticker")?;
    let trigger = hub.shutdown_trigger();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            warn!(signal = sig, "shutting down");
            trigger.shutdown();
        }
    });
    hub.wait().context("shard failure")?;
    ticker.stop();
    info!("stopped");
    Ok(())
}
