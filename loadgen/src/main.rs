//! `loadgen`: parse the command line, run, exit with the run's verdict.

use clap::Parser;

fn main() {
    let cli = loadgen::Cli::parse();
    match loadgen::run(cli.command) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::exit(1);
        }
    }
}
