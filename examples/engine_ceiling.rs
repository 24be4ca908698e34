//! The fan-out engine's own ceiling: the hub on one pinned core, fed by a publisher thread of
//! this process through [`Broadcaster::publish_raw`] (or `publish_raw_batch` with `--batch`),
//! so no publish request, HTTP parse or publisher round trip stands between the schedule and
//! the rings: what limits the deliveries is the engine and its subscribers.
//!
//! The messages are loadgen's own ([`loadgen::payload::Message`], the bytes loadgen's publisher
//! sends): `{"type":"loadgen","data":MESSAGE}` on `events`, exactly what our publish API
//! broadcasts for loadgen's requests, each stamped with its sequence number and its due time on
//! `CLOCK_MONOTONIC`. So `loadgen fanout --listen-only` subscribers time and count them as if
//! loadgen had published them. The schedule is loadgen's too: message `i` is due at
//! `start + i / rate` and carries that time (a late publisher shows in the latency); with
//! `--batch N`, N messages go in one `publish_raw_batch`, due when the last of them is and all
//! stamped with that time. The publisher never waits on the network: it publishes what is due
//! (catching up at once if it was late), then sleeps until the next is due. Every message is
//! due within `--duration`; one still unsent a second after its end is not sent (a publisher
//! that far behind has found its own limit, which the achieved rate shows).
//!
//! No metrics ticker runs: the only broadcasts are the publisher's.
//!
//! `benches/engine_ceiling.sh` builds, pins and runs it with loadgen and prints the figures.
//! By hand (the machine's two CPUs: the shard on 0, the publisher thread and loadgen on 1):
//!
//! ```sh
//! ulimit -Sl $(ulimit -Hl)
//! cargo run --release --example engine_ceiling -- --subscribers 1000 --rate 1000 --duration 10s &
//! taskset -c 1 target/release/loadgen fanout --listen-only --server 127.0.0.1:18990 \
//!     --subscribers 1000 --duration 12s
//! ```
//!
//! It ends by itself: after publishing, once every subscriber has been gone for 2 s, or after
//! `--linger`, whichever comes first (and after `--wait` if the subscribers never come).

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use loadgen::opts::parse_duration;
use loadgen::payload::{Message, Wrap};
use loadgen::{clock_ns, mono_ns};
use takhin_monitor::{Broadcaster, Channel, Cores, Hub, HubConfig, HubProbe, HubStats};

/// What loadgen's publisher asks our publish API to broadcast its messages as.
const KIND: &str = "loadgen";

/// How long every subscriber must have been gone before the hub shuts down.
const GRACE: Duration = Duration::from_secs(2);

/// How long after `--duration` a late publisher may still catch up.
const CATCH_UP: Duration = Duration::from_secs(1);

/// How often the subscriber count is read while waiting.
const POLL: Duration = Duration::from_millis(1);

/// The hub on one core and a publisher thread at a fixed rate: the engine's own ceiling.
#[derive(Debug, Parser)]
#[command(name = "engine_ceiling")]
struct Args {
    /// Address of the hub (WebSocket, /metrics).
    #[arg(long, default_value = "127.0.0.1:18990")]
    listen: SocketAddr,
    /// CPU the hub's one shard is pinned to.
    #[arg(long, default_value_t = 0)]
    shard_cpu: usize,
    /// CPU the publisher thread is pinned to.
    #[arg(long, default_value_t = 1)]
    publisher_cpu: usize,
    /// Start publishing once this many WebSocket clients are connected.
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Message size in bytes (loadgen's JSON object; at least loadgen's minimum, 56).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// How long to publish, e.g. 10s, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Messages per `publish_raw_batch` call (1: one `publish_raw` per message).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Give up if the subscribers are not all connected within this time.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,
    /// After publishing, serve at most this long for the subscribers to finish and leave.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    linger: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.rate.is_finite() || args.rate <= 0.0 {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if args.size > 16 << 20 {
        return Err("--size over 16 MiB (loadgen's largest message)".into());
    }
    let config = HubConfig::default()
        .listen(args.listen)
        .cores(Cores::List(vec![args.shard_cpu]));
    let hub = Hub::start(config)?;
    let probe = hub.probe();
    println!(
        "hub on ws://{}/api/monitoring/ws, one shard on CPU {}, no metrics ticker; waiting for {} subscribers",
        hub.local_addr(),
        args.shard_cpu,
        args.subscribers
    );
    if !wait_for(&probe, args.wait, |n| n >= args.subscribers) {
        let n = probe.active_connections();
        hub.shutdown()?;
        return Err(format!(
            "only {n} of {} subscribers connected within {:?}",
            args.subscribers, args.wait
        )
        .into());
    }
    let before = probe.stats();
    println!(
        "publishing: {} subscribers connected; {} msg/s of {} B for {:.3} s, batch {}, publisher thread on CPU {}",
        probe.active_connections(),
        args.rate,
        args.size.max(loadgen::payload::MIN_SIZE),
        args.duration.as_secs_f64(),
        args.batch,
        args.publisher_cpu
    );
    let broadcaster = hub.broadcaster();
    let plan = Plan {
        rate: args.rate,
        duration: args.duration,
        size: args.size,
        batch: args.batch,
        cpu: args.publisher_cpu,
    };
    let out = thread::Builder::new()
        .name("publisher".into())
        .spawn(move || plan.publish(&broadcaster))?
        .join()
        .map_err(|_| "the publisher thread panicked")?;
    out.print(&plan);
    // The subscribers read what is still in flight, then leave; the hub serves until then.
    let gone = wait_for_departure(&probe, args.linger);
    let after = probe.stats();
    print_hub(&before, &after, probe.broadcasts());
    if !gone {
        println!(
            "{} subscribers still connected after --linger {:?}: shutting down",
            probe.active_connections(),
            args.linger
        );
    }
    hub.shutdown()?;
    Ok(())
}

/// Polls the subscriber count until `done` says so or `timeout` passes; whether it did.
fn wait_for(probe: &HubProbe, timeout: Duration, done: impl Fn(u64) -> bool) -> bool {
    let end = mono_ns() + timeout.as_nanos() as u64;
    while mono_ns() < end {
        if done(probe.active_connections()) {
            return true;
        }
        thread::sleep(POLL);
    }
    done(probe.active_connections())
}

/// Waits until no subscriber has been connected for [`GRACE`], at most `linger`.
fn wait_for_departure(probe: &HubProbe, linger: Duration) -> bool {
    let end = mono_ns() + linger.as_nanos() as u64;
    let mut empty_since = None;
    while mono_ns() < end {
        if probe.active_connections() == 0 {
            let since = *empty_since.get_or_insert_with(mono_ns);
            if mono_ns() - since >= GRACE.as_nanos() as u64 {
                return true;
            }
        } else {
            empty_since = None;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The hub's counters over the run (from the start of publishing until the subscribers left).
fn print_hub(before: &HubStats, after: &HubStats, broadcasts: u64) {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let frames = d(after.frames_sent_total, before.frames_sent_total);
    let writes = d(after.writes_total, before.writes_total);
    println!(
        "hub: broadcasts {broadcasts}, deliveries {}, frames sent {frames}, writes {writes} ({:.1} frames per write), \
         ring dropped {}, queue dropped {}, lagged notices {}",
        d(after.deliveries_total, before.deliveries_total),
        frames as f64 / writes.max(1) as f64,
        d(after.ring_dropped_total, before.ring_dropped_total),
        d(after.queue_dropped_total, before.queue_dropped_total),
        d(after.lagged_total, before.lagged_total),
    );
}

/// The publisher's schedule.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rate: f64,
    duration: Duration,
    size: usize,
    batch: usize,
    cpu: usize,
}

/// What the publisher did.
#[derive(Debug)]
struct Published {
    /// Messages the broadcaster took.
    sent: u64,
    /// Messages the schedule held (rate × duration).
    planned: u64,
    /// Calls refused (none expected: the messages are valid JSON), and the first cause.
    refused: u64,
    first_refusal: Option<String>,
    /// From message 0's due time to the end of the last call, or the duration if longer.
    elapsed_s: f64,
    /// How late each call started after its due time, µs.
    behind_us: Histogram<u64>,
    /// Time inside `publish_raw` / `publish_raw_batch`, summed, and the calls.
    call_ns: u64,
    calls: u64,
    /// The publisher thread's CPU time.
    cpu_s: f64,
    /// Whether the thread was pinned to its CPU.
    pinned: bool,
}

impl Plan {
    /// Publishes on the schedule in this thread (pinned to `cpu`) and returns what it did.
    fn publish(&self, broadcaster: &Broadcaster) -> Published {
        let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: self.cpu });
        // The thread sleeps until each due time: a 1 ns timer slack (the default is 50 µs)
        // wakes it on time instead of up to 50 µs late.
        // SAFETY: PR_SET_TIMERSLACK takes an integer and only changes this thread's slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let batch = self.batch.max(1);
        let mut messages: Vec<Message> = (0..batch)
            .map(|_| Message::new(self.size, Wrap::Raw))
            .collect();
        let channel = Channel::Events;
        let interval = 1e9 / self.rate;
        let planned = (self.duration.as_secs_f64() * self.rate).round() as u64;
        let mut out = Published {
            sent: 0,
            planned,
            refused: 0,
            first_refusal: None,
            elapsed_s: 0.0,
            behind_us: Histogram::new(3).expect("3 significant figures are valid"),
            call_ns: 0,
            calls: 0,
            cpu_s: 0.0,
            pinned,
        };
        let cpu_start = thread_cpu_ns();
        let start = mono_ns();
        let give_up = start + (self.duration + CATCH_UP).as_nanos() as u64;
        let due = |i: u64| start + (i as f64 * interval) as u64;
        let mut next = 0u64;
        let mut last_end = start;
        while next < planned {
            // The next call carries messages next..=last and is due when `last` is.
            let last = (next + batch as u64).min(planned) - 1;
            let due_at = due(last);
            let now = mono_ns();
            if now < due_at {
                thread::sleep(Duration::from_nanos(due_at - now));
                continue;
            }
            if now >= give_up {
                break; // still behind a second after the end: what is left is not sent
            }
            let _ = out.behind_us.record((now - due_at) / 1_000);
            let count = (last + 1 - next) as usize;
            let result = if batch == 1 {
                let text = as_str(messages[0].stamp(next, due_at));
                broadcaster
                    .publish_raw(&channel, KIND, Some(text))
                    .map(|_| ())
            } else {
                // As loadgen's batches: each message its own seq, all the call's due time.
                for (i, m) in messages[..count].iter_mut().enumerate() {
                    m.stamp(next + i as u64, due_at);
                }
                let calls: Vec<(&Channel, &str, Option<&str>)> = messages[..count]
                    .iter()
                    .map(|m| (&channel, KIND, Some(as_str(m.bytes()))))
                    .collect();
                broadcaster.publish_raw_batch(&calls).map(|_| ())
            };
            last_end = mono_ns();
            out.call_ns += last_end - now;
            out.calls += 1;
            match result {
                Ok(()) => out.sent += count as u64,
                Err(e) => {
                    out.refused += 1;
                    out.first_refusal.get_or_insert_with(|| e.to_string());
                }
            }
            next = last + 1;
        }
        out.elapsed_s = ((last_end - start) as f64 / 1e9).max(self.duration.as_secs_f64());
        out.cpu_s = (thread_cpu_ns() - cpu_start) as f64 / 1e9;
        out
    }
}

impl Published {
    fn print(&self, plan: &Plan) {
        println!(
            "published {} messages of {} B in {:.3} s: {:.0} msg/s (offered {} msg/s, {} planned, batch {}); {} calls refused{}",
            self.sent,
            plan.size.max(loadgen::payload::MIN_SIZE),
            self.elapsed_s,
            self.sent as f64 / self.elapsed_s.max(1e-9),
            plan.rate,
            self.planned,
            plan.batch,
            self.refused,
            self.first_refusal
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );
        let h = &self.behind_us;
        println!(
            "publisher: behind schedule p50 {} µs, p99 {} µs, max {} µs; {:.2} µs per call ({} calls); \
             thread CPU {:.3} s ({}pinned to CPU {})",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            self.call_ns as f64 / 1e3 / self.calls.max(1) as f64,
            self.calls,
            self.cpu_s,
            if self.pinned { "" } else { "NOT " },
            plan.cpu
        );
    }
}

/// A loadgen message as text (it is ASCII JSON).
fn as_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("loadgen messages are ASCII")
}

/// This thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}
