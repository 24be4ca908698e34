//! Shared helpers of loadgen's integration tests: the hub crate's test watchdog, the same file.

#![allow(dead_code, unreachable_pub)]

#[path = "../../../tests/common/watchdog.rs"]
mod watchdog;

pub use watchdog::arm as watchdog;
