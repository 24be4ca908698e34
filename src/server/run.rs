//! The server binary's work: the hub from its options, its source, the relay, the ticker,
//! and the signals that stop them (SIGINT, SIGTERM) or reload its TLS certificate (SIGHUP).

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use super::options::{secs, Options, SourceKind};
use super::{Hub, HubHandle};
use crate::broker::{GroupCoordinator, Recorder, StandardSource, TopicManager};
use crate::hub::TlsReloader;
use crate::sources::{DemoBroker, Relay, RelayRole};
use crate::tls_config::TlsFiles;

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

/// Descriptors kept out of the connection limit: each core's listener, io_uring and event
/// descriptors, health checks, `/metrics` scrapes and REST calls, the relay's and the Kafka
/// source's sockets, logs.
const FD_RESERVE: u64 = 256;

/// The WebSocket clients the open-files limit leaves room for: `max_files` less
/// [`FD_RESERVE`]. A `--max-connections` above it is refused (the hub would run out of
/// descriptors with clients connected and stop answering even its health checks); without
/// one, the limit is the smaller of the default and this.
fn fit_connections(
    configured: Option<usize>,
    default: usize,
    max_files: u64,
) -> anyhow::Result<usize> {
    if max_files == 0 {
        return Ok(configured.unwrap_or(default)); // the limit could not be read
    }
    let room = usize::try_from(max_files.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    match configured {
        Some(n) if n > room => anyhow::bail!(
            "--max-connections {n} is above what the open-files limit allows: {max_files} files, \
             {FD_RESERVE} kept for listeners, health checks, REST and the relay, so at most \
             {room} clients; raise the limit (ulimit -n, systemd LimitNOFILE) or lower \
             --max-connections"
        ),
        Some(n) => Ok(n),
        None => Ok(default.min(room).max(1)),
    }
}

/// Runs the server until SIGINT or SIGTERM: the hub, its source, the relay and the ticker.
/// SIGHUP reloads the TLS certificate and key (with `--tls-cert`), or is logged and ignored.
pub fn run(opt: Options) -> anyhow::Result<()> {
    let mut config = opt.build_config()?;
    let interval = secs(opt.metrics_interval.unwrap_or(2.0), "metrics interval")?;
    let source = opt.source.unwrap_or(SourceKind::None);
    let max_files = raise_fd_limit();
    config.max_connections =
        fit_connections(opt.max_connections, config.max_connections, max_files)?;
    // Before the hub starts: from here on SIGHUP no longer ends the process (its default).
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let max_clients = config.max_connections;
    let tls_files = config.tls.clone();
    let hub = Hub::start(config).context("starting the hub")?;
    let (ws, http) = match tls_files {
        Some(_) => ("wss", "https"),
        None => ("ws", "http"),
    };
    info!(
        "listening on {ws}://{addr}/api/monitoring/ws, dashboard at {http}://{addr}/ \
         (cores {:?}, source {:?}, open files {}, at most {} clients)",
        hub.cores(),
        source,
        max_files,
        max_clients,
        addr = hub.local_addr(),
    );

    let trigger = hub.shutdown_trigger();
    let tls = hub.tls_reloader().zip(tls_files);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                reload_tls(tls.as_ref());
                continue;
            }
            warn!(signal = sig, "shutting down");
            trigger.shutdown();
            break;
        }
    });

    if source == SourceKind::Relay {
        // Only fans out: no ticker, no topics of its own; REST reads come from the origin.
        let relay = opt.relay()?.context("--source relay needs --relay")?;
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

/// SIGHUP: reads the certificate and key files again. A failure (the error names the file and
/// the fault, never the key's content) leaves the hub serving the certificate it had.
fn reload_tls(tls: Option<&(TlsReloader, TlsFiles)>) {
    let Some((reloader, files)) = tls else {
        warn!("SIGHUP ignored: no TLS certificate to reload (the server runs without --tls-cert)");
        return;
    };
    match reloader.reload() {
        Ok(()) => info!(cert = %files.cert.display(), "TLS certificate reloaded"),
        Err(e) => error!(
            error = %e,
            "TLS certificate reload failed on SIGHUP; the old certificate stays in use"
        ),
    }
}

/// With --relay, this instance publishes its broadcasts to the other instances.
fn origin_relay(hub: &HubHandle, opt: &Options) -> anyhow::Result<Option<Relay>> {
    let Some(config) = opt.relay()? else {
        return Ok(None);
    };
    let relay = hub
        .start_relay(config, RelayRole::Origin)
        .context("starting the relay")?;
    Ok(Some(relay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_fits_the_open_files_limit() {
        // Without --max-connections: the default, or what the files leave room for.
        assert_eq!(fit_connections(None, 100_000, 1 << 20).unwrap(), 100_000);
        assert_eq!(
            fit_connections(None, 100_000, 20_000).unwrap(),
            20_000 - 256
        );
        assert_eq!(fit_connections(None, 100_000, 100).unwrap(), 1);
        assert_eq!(
            fit_connections(None, 100_000, 0).unwrap(),
            100_000,
            "unknown"
        );
        // With it: kept when it fits, refused with the reason when it does not.
        assert_eq!(
            fit_connections(Some(5_000), 100_000, 20_000).unwrap(),
            5_000
        );
        let e = fit_connections(Some(50_000), 100_000, 20_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 19744 clients"), "{e}");
        assert!(e.contains("ulimit -n"), "{e}");
    }
}
