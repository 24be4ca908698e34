//! The one watchdog of every integration test binary, of this crate (`tests/common/mod.rs`) and
//! of loadgen (`loadgen/tests/common/mod.rs` includes this file): a hung test aborts its binary
//! instead of hanging CI.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The limit of a test binary that asks for none in particular.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(120);

/// The largest limit asked for so far.
static LIMIT: Mutex<Duration> = Mutex::new(Duration::ZERO);

/// Aborts the whole test binary once it has run longer than `limit`, counted from the first
/// call in the binary. Every test (or the helper that starts what it tests) calls it; calling
/// it again costs a lock. Tests share the process, so the binary gets the largest limit any of
/// them asked for.
pub fn arm(limit: Duration) {
    {
        let mut l = LIMIT.lock().unwrap_or_else(|e| e.into_inner());
        *l = (*l).max(limit);
    }
    static STARTED: OnceLock<Instant> = OnceLock::new();
    STARTED.get_or_init(|| {
        let started = Instant::now();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                let limit = *LIMIT.lock().unwrap_or_else(|e| e.into_inner());
                let ran = started.elapsed();
                if ran >= limit {
                    eprintln!("watchdog: test binary ran over {limit:?}, aborting");
                    std::process::abort();
                }
                // The limit may have grown meanwhile: look again when this one is up.
                std::thread::sleep(limit - ran);
            })
            .expect("the watchdog thread starts");
        started
    });
}
