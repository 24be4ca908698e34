//! The `takhin-monitor` server: parses its options (flags over environment over file), starts
//! logging and runs the library's server.

use clap::Parser;
use takhin_monitor::server::{run, Options};
use tracing_subscriber::EnvFilter;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = Options::parse().merge_file().and_then(run) {
        eprintln!("takhin-monitor: {e:#}");
        std::process::exit(1);
    }
}
