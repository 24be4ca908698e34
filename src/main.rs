//! The `takhin-monitor` server: options (flags over environment over file) -> config -> run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use takhin_monitor::{
    Cores, DemoBroker, GroupCoordinator, Hub, HubConfig, Recorder, RelayConfig, RelayRole,
    StandardSource, Ticker, TopicManager,
};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// What feeds the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Source {
    /// A built-in simulated broker: topics, traffic, consumer groups, lag, events.
    Demo,
    /// Nothing built in: only what REST, the publish endpoint or an embedding broker send.
    None,
    /// No source of its own: fans out what the origin instance publishes through --relay.
    Relay,
}

/// Streams a broker's live metrics and events to WebSocket dashboards.
///
/// Every option can also come from a TAKHIN_* environment variable or the --config file;
/// a flag wins over the environment, which wins over the file.
#[derive(Debug, Default, Parser)]
#[command(version, about)]
struct Opt {
    /// TOML file with any of the options below (names with underscores).
    #[arg(long, env = "TAKHIN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TAKHIN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Number of cores to run a shard on [default: all].
    #[arg(long, env = "TAKHIN_CORES")]
    cores: Option<usize>,
    /// Exact core ids to run a shard on, comma separated.
    #[arg(long, env = "TAKHIN_CPU_LIST", value_delimiter = ',')]
    cpu_list: Option<Vec<usize>>,
    /// What feeds the hub [default: none].
    #[arg(long, env = "TAKHIN_SOURCE", value_enum)]
    source: Option<Source>,
    /// Viewer token for WebSocket clients and REST reads.
    #[arg(long, env = "TAKHIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Admin token for REST mutations and publish.
    #[arg(long, env = "TAKHIN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// An origin allowed to connect (repeatable); none: every origin is accepted.
    #[arg(
        long = "allowed-origin",
        env = "TAKHIN_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Option<Vec<String>>,
    /// Interval between metrics snapshots, in seconds [default: 2].
    #[arg(long, env = "TAKHIN_METRICS_INTERVAL")]
    metrics_interval: Option<f64>,
    /// WebSocket clients across all cores before 503 [default: 100000].
    #[arg(long, env = "TAKHIN_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Per-client outbound queue, in frames [default: 256].
    #[arg(long, env = "TAKHIN_CLIENT_QUEUE")]
    client_queue: Option<usize>,
    /// Kernel send buffer per WebSocket client, in bytes (SO_SNDBUF) [default: the kernel's
    /// autotuning, up to 4 MiB for a client that reads slowly].
    #[arg(long, env = "TAKHIN_SEND_BUFFER")]
    send_buffer: Option<usize>,
    /// Server ping interval, in seconds [default: 54].
    #[arg(long, env = "TAKHIN_PING_INTERVAL")]
    ping_interval: Option<f64>,
    /// Silence allowed before a client is closed, in seconds [default: 60].
    #[arg(long, env = "TAKHIN_PONG_WAIT")]
    pong_wait: Option<f64>,
    /// Drain deadline on SIGTERM, in seconds [default: 5].
    #[arg(long, env = "TAKHIN_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<f64>,
    /// Directory whose disk usage is reported as `diskUsageBytes`.
    #[arg(long, env = "TAKHIN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Redis relay shared by several instances: redis://HOST:PORT[/prefix]. An instance with a
    /// source publishes every broadcast there; with --source relay it only fans out.
    #[arg(long, env = "TAKHIN_RELAY")]
    relay: Option<RelayConfig>,
}

/// The same options, read from the --config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOpt {
    listen: Option<SocketAddr>,
    cores: Option<usize>,
    cpu_list: Option<Vec<usize>>,
    source: Option<Source>,
    token: Option<String>,
    admin_token: Option<String>,
    allowed_origins: Option<Vec<String>>,
    metrics_interval: Option<f64>,
    max_connections: Option<usize>,
    client_queue: Option<usize>,
    send_buffer: Option<usize>,
    ping_interval: Option<f64>,
    pong_wait: Option<f64>,
    shutdown_timeout: Option<f64>,
    data_dir: Option<PathBuf>,
    relay: Option<String>,
}

impl Opt {
    /// Fills what neither a flag nor the environment gave from the file.
    fn merge_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: FileOpt =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        macro_rules! fill {
            ($($field:ident),*) => { $( self.$field = self.$field.take().or(f.$field); )* };
        }
        fill!(
            listen,
            cores,
            cpu_list,
            source,
            token,
            admin_token,
            allowed_origins,
            metrics_interval,
            max_connections,
            client_queue,
            send_buffer,
            ping_interval,
            pong_wait,
            shutdown_timeout,
            data_dir
        );
        if self.relay.is_none() {
            if let Some(url) = f.relay {
                self.relay = Some(url.parse().map_err(anyhow::Error::msg)?);
            }
        }
        Ok(self)
    }

    fn build_config(&self) -> anyhow::Result<HubConfig> {
        let mut c = HubConfig::default();
        if let Some(listen) = self.listen {
            c = c.listen(listen);
        }
        c = match (&self.cores, &self.cpu_list) {
            (Some(_), Some(_)) => bail!("give --cores or --cpu-list, not both"),
            (Some(n), None) => c.cores(Cores::Count(*n)),
            (None, Some(list)) => c.cores(Cores::List(list.clone())),
            (None, None) => c,
        };
        c = c
            .viewer_token(self.token.clone())
            .admin_token(self.admin_token.clone())
            .allowed_origins(self.allowed_origins.clone().unwrap_or_default());
        if let Some(n) = self.max_connections {
            c = c.max_connections(n);
        }
        if let Some(q) = self.client_queue {
            c = c.client_queue(q);
        }
        if self.send_buffer.is_some() {
            c = c.send_buffer(self.send_buffer);
        }
        if let Some(s) = self.ping_interval {
            c = c.ping_interval(secs(s, "ping interval")?);
        }
        if let Some(s) = self.pong_wait {
            c = c.pong_wait(secs(s, "pong wait")?);
        }
        if let Some(s) = self.shutdown_timeout {
            c = c.shutdown_timeout(secs(s, "shutdown timeout")?);
        }
        c.assert_valid()?;
        Ok(c)
    }
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s < 1e9) {
        bail!("the {what} must be a positive number of seconds");
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
    if let Err(e) = Opt::parse().merge_file().and_then(run) {
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
    let interval = secs(opt.metrics_interval.unwrap_or(2.0), "metrics interval")?;
    let source = opt.source.unwrap_or(Source::None);
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

    if source == Source::Relay {
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

    // The services every source feeds, served over REST, and the ticker that streams them.
    // The services every source feeds, served over REST, and the ticker that streams them.
    let broadcaster = hub.broadcaster();
    let topics = TopicManager::new(Recorder::new(), Some(broadcaster.clone()));
    let groups = GroupCoordinator::new(Some(broadcaster));
    hub.serve_api(topics.clone(), groups.clone());
    let demo = match source {
        Source::Demo => Some(DemoBroker::start(topics.clone(), groups.clone())?),
        Source::None | Source::Relay => None,
    };
    let mut metrics = StandardSource::new(topics, groups, Some(hub.probe()));
    if let Some(dir) = &opt.data_dir {
        metrics = metrics.data_dir(dir);
    }
    let relay = match opt.relay.clone() {
        Some(relay) => Some(
            hub.start_relay(relay, RelayRole::Origin)
                .context("starting the relay")?,
        ),
        None => None,
    };
    let ticker = Ticker::start(&hub, metrics, interval).context("starting the ticker")?;
    hub.wait().context("shard failure")?;
    drop(demo);
    ticker.stop();
    drop(relay);
    info!("stopped");
    Ok(())
}
