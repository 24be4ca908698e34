//! The scenarios: each starts a fleet, measures, and builds the [`Report`].
//!
//! `resume` is the storm after an outage: the subscribers connect, one message marks the end
//! of what they all saw, they drop at once, `--missed` messages are published (and accepted)
//! while they are away, then they all reconnect at once with `?since=<last seq>&epoch=`. Each
//! client's time from its reconnect to its `recovered` notice, what was replayed, frames sent
//! twice, and the server's CPU over the storm are measured; one last message checks that every
//! resumed client is live again.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::fleet::{self, Fleet};
use crate::opts::{Command, Opts};
use crate::publisher::{self, Published, Publisher, Shape};
use crate::stats::{
    DeflateReport, Percentiles, Report, ResumeReport, ResumeWindow, Step, TlsReport, Window,
};
use crate::sys;
use crate::worker::{Mode, Phase};

/// How often the controller gathers counts and redraws the progress line.
const TICK: Duration = Duration::from_millis(250);

/// Runs a command; returns the process exit code (0 ok, 2 the run missed what was asked).
pub fn run(command: Command) -> Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .context("cannot install a signal handler")?;
    }
    sys::raise_nofile();
    let (opts, scenario) = match command {
        Command::Merge { files, json } => return merge(&files, json),
        Command::Fanout(o) => (o, "fanout"),
        Command::Metrics(o) => (o, "metrics"),
        Command::Idle(o) => (o, "idle"),
        Command::Churn(o) => (o, "churn"),
        Command::Resume(o) => (o, "resume"),
    };
    if scenario == "resume" && opts.deflate_sample != 1 {
        bail!("resume reads every frame's seq: --deflate-sample must be 1");
    }
    if opts.child.is_some() {
        let fleet = start_fleet(&opts, scenario)?;
        fleet::run_child(fleet)?;
        return Ok(0);
    }
    let mut ctl = Controller::new(&opts, scenario, stop)?;
    let mut report = match scenario {
        "fanout" => ctl.fanout()?,
        "metrics" => ctl.metrics()?,
        "idle" => ctl.idle()?,
        "resume" => ctl.resume()?,
        _ => ctl.churn()?,
    };
    report.failures.extend(check(&opts, &report));
    report.warnings.extend(warnings(&opts, &report));
    if ctl.stop.load(Ordering::Relaxed) {
        report
            .failures
            .push("interrupted: the figures cover the run until the signal".into());
    }
    print_report(&report, opts.json)?;
    Ok(if report.failures.is_empty() { 0 } else { 2 })
}

/// The publisher the options ask for, checked; notes its URL and shape in the report.
fn start_publisher(
    opts: &Opts,
    target: crate::opts::PublishTarget,
    report: &mut Report,
) -> Result<Publisher> {
    let shape = Shape::of(opts);
    publisher::check(&target, &shape)?;
    report.publish_url = Some(target.url.clone());
    report.batch = Some(shape.batch);
    report.pipeline = Some(shape.pipeline);
    Ok(Publisher::new(target, shape))
}

/// Adds what a publishing run did to the report.
fn tally(report: &mut Report, p: &Published) {
    report.published += p.sent;
    report.requests += p.requests;
    report.publish_errors += p.error_count();
    for (cause, n) in &p.errors {
        *report
            .publish_error_causes
            .entry(cause.clone())
            .or_default() += n;
    }
}

fn start_fleet(opts: &Opts, scenario: &str) -> Result<Fleet> {
    match scenario {
        "metrics" => Fleet::start(
            opts,
            Mode::Hold,
            opts.subscribers,
            opts.connect_rate,
            Some(opts.metrics_interval.as_micros() as u64),
        ),
        "churn" => Fleet::start(opts, Mode::Churn, churn_total(opts), opts.rate, None),
        "resume" => Fleet::start(
            opts,
            Mode::Resume,
            opts.subscribers,
            opts.connect_rate,
            None,
        ),
        _ => Fleet::start(opts, Mode::Hold, opts.subscribers, opts.connect_rate, None),
    }
}

/// Connections a churn run opens in all: rate × duration, or unbounded at rate 0.
fn churn_total(opts: &Opts) -> usize {
    if opts.rate > 0.0 {
        (opts.rate * opts.duration.as_secs_f64()).ceil() as usize
    } else {
        usize::MAX
    }
}

/// What the run failed to do.
fn check(opts: &Opts, r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if r.scenario != "churn" && r.connected < r.subscribers {
        out.push(format!(
            "only {} of {} subscribers connected",
            r.connected, r.subscribers
        ));
    }
    if r.scenario == "churn" && !r.errors.is_empty() {
        out.push(format!(
            "{} connections failed",
            r.errors.values().sum::<u64>()
        ));
    }
    if r.scenario == "fanout" && !opts.ramp && r.lost_fraction > opts.max_loss {
        out.push(format!(
            "lost {} of {} expected deliveries ({:.4} > --max-loss {})",
            r.lost,
            r.deliveries + r.lost,
            r.lost_fraction,
            opts.max_loss
        ));
    }
    if r.publish_errors > 0 {
        out.push(format!(
            "{} publish requests failed{}",
            r.publish_errors,
            if r.publish_error_causes.is_empty() {
                String::new()
            } else {
                format!(" ({:?})", r.publish_error_causes)
            }
        ));
    }
    if let Some(x) = &r.resume {
        out.extend(check_resume(x));
    }
    out
}

/// What a resume storm failed to do: every client must recover exactly what it missed, once.
fn check_resume(x: &ResumeReport) -> Vec<String> {
    let mut out = Vec::new();
    if x.not_recovered > 0 {
        out.push(format!(
            "{} of {} resumes were answered recovered:false (does the server's history hold \
             --missed {} broadcasts? --history-frames, 32,768 by default)",
            x.not_recovered, x.reconnected, x.missed
        ));
    }
    if x.unanswered > 0 {
        out.push(format!(
            "{} of {} reconnections failed or ended without a recovered notice",
            x.unanswered, x.reconnected
        ));
    }
    // Checked when every resume recovered: a `recovered: false` replays nothing, and says so.
    let got = &x.replayed_messages;
    if x.recovered > 0 && x.not_recovered == 0 && (got.min != x.missed || got.max != x.missed) {
        out.push(format!(
            "clients got {} to {} of the {} messages they missed replayed",
            got.min, got.max, x.missed
        ));
    }
    if x.duplicates > 0 {
        out.push(format!(
            "{} frames were sent twice or out of order",
            x.duplicates
        ));
    }
    let resumed = x.recovered + x.not_recovered;
    if x.live_after < resumed {
        out.push(format!(
            "only {} of {resumed} resumed clients received the message published after the storm",
            x.live_after
        ));
    }
    out
}

/// What makes the figures doubtful without failing the run.
fn warnings(opts: &Opts, r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let cpus = if opts.processes > 1 {
        1.0
    } else {
        opts.thread_count() as f64
    };
    let busy =
        r.loadgen_cpu_s / r.duration_s.max(1e-9) / cpus.min(crate::sys::usable_cpus() as f64);
    if busy > 0.9 {
        out.push(format!(
            "loadgen was {:.0}% busy: it, not the server, may have set the pace (give it more CPU)",
            busy * 100.0
        ));
    }
    if let Some(server) = r.server_cpu_s {
        if r.loadgen_cpu_s > server && busy > 0.7 {
            out.push("loadgen used more CPU than the server".into());
        }
    }
    if let Some(x) = &r.resume {
        let (min, max) = (x.replayed.min, x.replayed.max);
        if x.recovered > 0 && (min != x.missed || max != x.missed) {
            out.push(format!(
                "the server replayed {min} to {max} broadcasts per client for {} missed \
                 messages: something else was broadcast on the clients' channels meanwhile",
                x.missed
            ));
        }
    }
    out
}

struct Controller<'a> {
    opts: &'a Opts,
    scenario: &'static str,
    stop: Arc<AtomicBool>,
    total: Window,
    /// Last second of windows, for the progress line.
    recent: Vec<(u64, Window)>,
    progress: bool,
    cpu_start: f64,
}

impl<'a> Controller<'a> {
    fn new(opts: &'a Opts, scenario: &'static str, stop: Arc<AtomicBool>) -> Result<Self> {
        Ok(Self {
            opts,
            scenario,
            stop,
            total: Window::default(),
            recent: Vec::new(),
            progress: !opts.quiet && std::io::stderr().is_terminal(),
            cpu_start: sys::own_cpu_seconds(),
        })
    }

    fn report(&self) -> Report {
        let o = self.opts;
        Report {
            scenario: self.scenario.into(),
            target: o.subscribe_url(),
            subscribers: o.subscribers,
            processes: o.processes.max(1),
            size: o.size,
            rate: o.rate,
            deflate: o.deflate.then(|| DeflateReport {
                sample: o.deflate_sample,
                ..DeflateReport::default()
            }),
            tls: o.subscribes_over_tls().then(|| TlsReport {
                resumption: !o.tls_no_resume,
                insecure: o.tls_insecure,
                ..TlsReport::default()
            }),
            ..Report::default()
        }
    }

    /// Gathers the fleet's counts into the total and redraws the progress line.
    fn tick(&mut self, fleet: &Fleet, label: &str) -> Window {
        let w = fleet.harvest();
        self.total.add(&w);
        if self.progress {
            let now = sys::mono_ns();
            self.recent.push((now, w.clone()));
            self.recent.retain(|(t, _)| now - t < 1_000_000_000);
            let mut last = Window::default();
            for (_, w) in &self.recent {
                last.add(w);
            }
            let p99 = Percentiles::of(&last.latency).p99;
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{label} conns {}/{}  deliveries/s {}  p99 {}  lost {}  lagged {}  errors {}",
                fleet.open(),
                fleet.asked.min(1 << 40),
                last.deliveries,
                fmt_us(p99),
                self.total.gaps.max(0),
                self.total.lagged,
                self.total.errors.values().sum::<u64>()
            );
            let _ = err.flush();
        }
        w
    }

    fn end_progress(&self) {
        if self.progress {
            eprintln!();
        }
    }

    fn connect(&mut self, fleet: &Fleet) -> usize {
        let o = self.opts;
        let timeout = Duration::from_secs_f64(o.subscribers as f64 / o.connect_rate.max(1.0))
            + o.handshake_timeout
            + Duration::from_secs(5);
        let mut last = sys::mono_ns();
        let stop = self.stop.clone();
        let open = fleet.wait_connected(o.subscribers, timeout, &stop, |f| {
            if sys::mono_ns() - last >= TICK.as_nanos() as u64 {
                last = sys::mono_ns();
                self.tick(f, "connecting");
            }
        });
        self.tick(fleet, "connecting");
        open
    }

    /// Keeps ticking for `d` (or until stopped / `done` says so).
    fn hold(
        &mut self,
        fleet: &Fleet,
        d: Duration,
        label: &str,
        mut done: impl FnMut(&Self) -> bool,
    ) {
        let end = sys::mono_ns() + d.as_nanos() as u64;
        while sys::mono_ns() < end && !self.stop.load(Ordering::Relaxed) && !done(self) {
            thread::sleep(TICK.min(Duration::from_nanos(end.saturating_sub(sys::mono_ns()))));
            self.tick(fleet, label);
        }
    }

    fn fanout(&mut self) -> Result<Report> {
        let o = self.opts;
        let mut report = self.report();
        // --listen-only: no publisher; the subscribers count another loadgen's messages.
        let mut publisher = if o.listen_only {
            None
        } else {
            let target = o.publish_target()?;
            let mut publisher = start_publisher(o, target, &mut report)?;
            publisher.probe()?;
            Some(publisher)
        };
        let mut fleet = start_fleet(o, "fanout")?;
        let connected = self.connect(&fleet);
        report.connected = connected;
        if connected == 0 {
            self.end_progress();
            let (w, _) = fleet.stop()?;
            bail!("no subscriber connected ({:?})", w.errors);
        }
        let server = ServerCpu::start(o.server_pid);
        let t0 = sys::mono_ns();
        let before = self.total.deliveries;
        match publisher.as_mut() {
            None => self.hold(&fleet, o.duration, "listening", |_| false),
            Some(publisher) if o.ramp => {
                self.ramp(&mut fleet, publisher, connected, &mut report);
            }
            Some(publisher) => {
                let published = self.publish(&fleet, publisher, o.rate, o.duration);
                tally(&mut report, &published);
                self.drain(&mut fleet, before + published.sent * connected as u64);
            }
        }
        let elapsed = (sys::mono_ns() - t0) as f64 / 1e9;
        let after = self.total.deliveries;
        server.finish(&mut report, elapsed, after - before);
        self.end_progress();
        let (w, child_cpu) = fleet.stop()?;
        self.total.add(&w);
        self.fill(&mut report, elapsed, child_cpu);
        if !o.ramp && publisher.is_some() {
            report.set_loss();
        }
        Ok(report)
    }

    /// Publishes at `rate` for `d` in a thread while this one ticks.
    fn publish(
        &mut self,
        fleet: &Fleet,
        publisher: &mut Publisher,
        rate: f64,
        d: Duration,
    ) -> Published {
        self.in_background(fleet, publisher, "publishing", |p, stop| {
            p.run(rate, d, stop)
        })
    }

    /// Runs `job` with the publisher in a thread while this one ticks under `label`.
    fn in_background(
        &mut self,
        fleet: &Fleet,
        publisher: &mut Publisher,
        label: &str,
        job: impl FnOnce(&mut Publisher, &AtomicBool) -> Published + Send,
    ) -> Published {
        let stop = self.stop.clone();
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            let (stop, done) = (&stop, &done);
            let handle = s.spawn(move || {
                let p = job(publisher, stop);
                done.store(true, Ordering::Release);
                p
            });
            while !done.load(Ordering::Acquire) {
                thread::sleep(TICK);
                self.tick(fleet, label);
            }
            handle.join().expect("publisher thread")
        })
    }

    /// Waits for messages still in flight: until every expected delivery arrived or was
    /// announced as dropped, or --drain passes. Slow subscribers catch up meanwhile.
    fn drain(&mut self, fleet: &mut Fleet, expected: u64) {
        fleet.catch_up();
        let d = self.opts.drain;
        self.hold(fleet, d, "draining", |c| {
            c.total.deliveries + c.total.lagged_dropped >= expected
        });
    }

    fn ramp(
        &mut self,
        fleet: &mut Fleet,
        publisher: &mut Publisher,
        connected: usize,
        report: &mut Report,
    ) {
        let o = self.opts;
        let mut rate = if o.rate > 0.0 { o.rate } else { 100.0 };
        loop {
            let start = self.total.clone();
            let p = self.publish(fleet, publisher, rate, o.step);
            tally(report, &p);
            let expected_total = start.deliveries + p.sent * connected as u64;
            self.drain(fleet, expected_total);
            let deliveries = self.total.deliveries - start.deliveries;
            let mut latency = self.total.latency.clone();
            latency.subtract(&start.latency).expect("same bounds");
            let expected = p.sent * connected as u64;
            let loss = if expected > 0 {
                expected.saturating_sub(deliveries) as f64 / expected as f64
            } else {
                1.0
            };
            let achieved = p.sent as f64 / p.elapsed_s.max(1e-9);
            let latency_us = Percentiles::of(&latency);
            let held = latency_us.p99 <= o.max_p99.as_micros() as u64
                && loss <= o.max_loss
                && achieved >= 0.9 * rate
                && p.error_count() == 0;
            report.lost += expected.saturating_sub(deliveries);
            if self.progress {
                eprintln!("\r\x1b[2Kstep {rate:.0}/s: achieved {achieved:.0}/s, p99 {}, loss {loss:.4} -> {}",
                    fmt_us(latency_us.p99), if held { "held" } else { "broke" });
            }
            report.steps.push(Step {
                rate,
                achieved,
                published: p.sent,
                requests: p.requests,
                deliveries,
                loss,
                latency_us,
                held,
            });
            if held {
                report.max_rate_held = Some(achieved);
            }
            rate *= o.ramp_factor.max(1.01);
            if !held || self.stop.load(Ordering::Relaxed) || (o.ramp_max > 0.0 && rate > o.ramp_max)
            {
                break;
            }
        }
        let expected = report.published * connected as u64;
        report.lost_fraction = if expected > 0 {
            report.lost as f64 / expected as f64
        } else {
            0.0
        };
    }

    fn metrics(&mut self) -> Result<Report> {
        let o = self.opts;
        let mut report = self.report();
        let fleet = start_fleet(o, "metrics")?;
        report.connected = self.connect(&fleet);
        let server = ServerCpu::start(o.server_pid);
        let t0 = sys::mono_ns();
        let before = self.total.deliveries;
        self.hold(&fleet, o.duration, "metrics", |_| false);
        let elapsed = (sys::mono_ns() - t0) as f64 / 1e9;
        server.finish(&mut report, elapsed, self.total.deliveries - before);
        self.end_progress();
        let (w, child_cpu) = fleet.stop()?;
        self.total.add(&w);
        self.fill(&mut report, elapsed, child_cpu);
        report.frame_bytes = Some(Percentiles::of(&self.total.frame_size));
        report.jitter_us = Some(Percentiles::of(&self.total.jitter));
        let mut spread = crate::stats::histogram();
        for (ts, last) in self.total.ticks.values() {
            let _ = spread.record(last.saturating_sub(*ts).max(1));
        }
        report.tick_to_last_us = Some(Percentiles::of(&spread));
        Ok(report)
    }

    fn idle(&mut self) -> Result<Report> {
        let o = self.opts;
        let mut report = self.report();
        let memory = Memory::new(o);
        report.server_rss_before = memory.rss();
        let fds_before = o.server_pid.and_then(sys::process_fds);
        let fleet = start_fleet(o, "idle")?;
        report.connected = self.connect(&fleet);
        let t0 = sys::mono_ns();
        // Let the server settle (lazy allocations after the upgrade) before reading it.
        self.hold(&fleet, Duration::from_secs(1), "settling", |_| false);
        report.server_rss_loaded = memory.rss();
        self.hold(&fleet, o.duration, "holding", |_| false);
        let held_rss = memory.rss();
        report.server_rss_loaded = report.server_rss_loaded.max(held_rss);
        let elapsed = (sys::mono_ns() - t0) as f64 / 1e9;
        self.end_progress();
        let (w, child_cpu) = fleet.stop()?;
        self.total.add(&w);
        // The server sees the closes a moment later.
        thread::sleep(Duration::from_secs(1));
        report.server_rss_after = memory.rss();
        if let (Some(before), Some(pid)) = (fds_before, o.server_pid) {
            report.server_fds = sys::process_fds(pid).map(|after| (before, after));
        }
        if let (Some(b), Some(l)) = (report.server_rss_before, report.server_rss_loaded) {
            if report.connected > 0 {
                report.server_rss_per_conn = Some((l as f64 - b as f64) / report.connected as f64);
            }
        }
        self.fill(&mut report, elapsed, child_cpu);
        Ok(report)
    }

    fn churn(&mut self) -> Result<Report> {
        let o = self.opts;
        let mut report = self.report();
        let server = ServerCpu::start(o.server_pid);
        let fleet = start_fleet(o, "churn")?;
        let t0 = sys::mono_ns();
        // At a set rate the fleet stops by itself once it has opened rate × duration
        // connections (the last ones may still be closing); at rate 0 it runs for the duration.
        let limit = if o.rate > 0.0 {
            o.duration + o.handshake_timeout
        } else {
            o.duration
        };
        self.hold(&fleet, limit, "churning", |_| fleet.finished());
        let elapsed = ((sys::mono_ns() - t0) as f64 / 1e9).max(1e-9);
        self.end_progress();
        let (w, child_cpu) = fleet.stop()?;
        self.total.add(&w);
        server.finish(&mut report, elapsed, 0);
        self.fill(&mut report, elapsed, child_cpu);
        report.subscribers = churn_total(o)
            .min(report.handshakes as usize + report.errors.values().sum::<u64>() as usize);
        report.connected = report.handshakes as usize;
        report.handshakes_per_sec = report.handshakes as f64 / elapsed.max(1e-9);
        report.latency_us = report.handshake_us.clone();
        Ok(report)
    }

    /// The resume storm: connect, mark the stream, drop every subscriber at once, publish
    /// --missed messages, reconnect them all at once with `?since=&epoch=`, then check that each
    /// gets the next live message.
    fn resume(&mut self) -> Result<Report> {
        let o = self.opts;
        let mut report = self.report();
        report.rate = o.reconnect_rate;
        let target = o.publish_target()?;
        let mut publisher = start_publisher(o, target, &mut report)?;
        let baseline = o
            .our_metrics_addr()
            .and_then(|a| scrape(a, "takhin_connections"));
        let mut fleet = start_fleet(o, "resume")?;
        report.connected = self.connect(&fleet);
        let t0 = sys::mono_ns();
        let outcome = if report.connected == 0 {
            Err(anyhow::anyhow!("no subscriber connected"))
        } else {
            self.storm(&mut fleet, &mut publisher, baseline, &mut report)
        };
        let elapsed = (sys::mono_ns() - t0) as f64 / 1e9;
        self.end_progress();
        let (w, child_cpu) = fleet.stop()?;
        self.total.add(&w);
        let mut storm = match outcome {
            Ok(storm) => storm,
            Err(e) => bail!("{e:#} (errors: {:?})", self.total.errors),
        };
        self.fill(&mut report, elapsed, child_cpu);
        storm.set_counts(self.resumes());
        report.resume = Some(storm);
        Ok(report)
    }

    /// The steps of [`Self::resume`] once the subscribers are connected; `baseline` is the
    /// server's count of WebSocket clients before they were.
    fn storm(
        &mut self,
        fleet: &mut Fleet,
        publisher: &mut Publisher,
        baseline: Option<f64>,
        report: &mut Report,
    ) -> Result<ResumeReport> {
        let o = self.opts;
        let mut storm = ResumeReport::default();
        // One message every subscriber must see: their last frames, hence their `since`, agree.
        let connected = report.connected as u64;
        let marked = self.mark(fleet, publisher, connected, "marking")?;
        report.published += 1;
        report.requests += 1;
        if marked < connected {
            report.failures.push(format!(
                "only {marked} of {connected} subscribers received the message published before \
                 the drop"
            ));
        }
        fleet.order(Phase::Away);
        if !self.reach(fleet, Phase::Away, Duration::from_secs(10), "dropping") {
            report
                .failures
                .push("the subscribers had not all dropped after 10 s".into());
        }
        self.settle(fleet, baseline);
        let away = self.resumes().away;
        let missed = self.in_background(fleet, publisher, "publishing", |p, stop| {
            p.send(o.missed, stop)
        });
        storm.missed = missed.sent;
        tally(report, &missed);
        // Every missed message has been accepted (202) before anyone comes back.
        let server = ServerCpu::start(o.server_pid);
        let start = sys::mono_ns();
        fleet.order(Phase::Back);
        let limit = o.handshake_timeout + o.duration;
        let done = self.reach(fleet, Phase::Resumed, limit, "resuming");
        // The CPU time from the first reconnect until every thread said its reconnections had
        // ended (a few ms after the last `recovered`; up to 250 ms with --processes).
        let seen = sys::mono_ns();
        server.finish(
            report,
            (seen - start) as f64 / 1e9,
            self.resumes().replayed_total,
        );
        let last = self.resumes().last_ns;
        let end = if done && last > start { last } else { seen };
        storm.storm_s = ((end - start) as f64 / 1e6).round() / 1e3;
        if !done {
            report.failures.push(format!(
                "{} of {away} reconnections still waited for their recovered notice after {:?}",
                away.saturating_sub(self.resumes().ended()),
                limit
            ));
        }
        // Live again: the next message reaches every client that resumed, after its replay.
        let resumed = self.resumes().recovered + self.resumes().not_recovered;
        storm.live_after = self.mark(fleet, publisher, resumed, "live")?;
        report.published += 1;
        report.requests += 1;
        Ok(storm)
    }

    /// Publishes one message and waits (at most --drain) until `want` subscribers received
    /// it; returns how many did.
    fn mark(
        &mut self,
        fleet: &Fleet,
        publisher: &mut Publisher,
        want: u64,
        label: &str,
    ) -> Result<u64> {
        let before = self.total.deliveries;
        publisher.probe()?;
        self.hold(fleet, self.opts.drain, label, |c| {
            c.total.deliveries - before >= want
        });
        Ok(self.total.deliveries - before)
    }

    /// Waits (at most `limit`) until every thread and child has reached `phase`, then takes
    /// in what they counted getting there; returns whether they all did. Polls every 2 ms (an
    /// atomic per thread), so the storm's end is seen when it happens, not at the next tick.
    fn reach(&mut self, fleet: &Fleet, phase: Phase, limit: Duration, label: &str) -> bool {
        let end = sys::mono_ns() + limit.as_nanos() as u64;
        let mut last_tick = sys::mono_ns();
        while fleet.phase() < phase && sys::mono_ns() < end && !self.stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(2));
            if sys::mono_ns() - last_tick >= TICK.as_nanos() as u64 {
                last_tick = sys::mono_ns();
                self.tick(fleet, label);
            }
        }
        self.tick(fleet, label);
        fleet.phase() >= phase
    }

    /// Waits (at most 5 s) until our server's /metrics counts no more WebSocket clients than
    /// `baseline`, as before the run: the drop's teardown is then not in the storm's CPU time.
    fn settle(&mut self, fleet: &Fleet, baseline: Option<f64>) {
        let (Some(addr), Some(baseline)) = (self.opts.our_metrics_addr(), baseline) else {
            return;
        };
        self.hold(fleet, Duration::from_secs(5), "settling", |_| {
            scrape(addr, "takhin_connections").map_or(true, |n| n <= baseline)
        });
    }

    /// The resume counts gathered so far.
    fn resumes(&self) -> &ResumeWindow {
        static NONE: LazyLock<ResumeWindow> = LazyLock::new(ResumeWindow::default);
        self.total.resume.as_ref().unwrap_or(&NONE)
    }

    /// Copies the totals into the report.
    fn fill(&self, r: &mut Report, elapsed: f64, child_cpu: f64) {
        r.set_totals(&self.total, elapsed);
        r.loadgen_cpu_s = sys::own_cpu_seconds() - self.cpu_start + child_cpu;
    }
}

/// The server's CPU time over the measured span.
struct ServerCpu {
    pid: Option<u32>,
    start: Option<f64>,
}

impl ServerCpu {
    fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            start: pid.and_then(sys::process_cpu_seconds),
        }
    }

    fn finish(&self, r: &mut Report, elapsed: f64, deliveries: u64) {
        let (Some(pid), Some(start)) = (self.pid, self.start) else {
            return;
        };
        let Some(end) = sys::process_cpu_seconds(pid) else {
            return;
        };
        let cpu = end - start;
        r.server_cpu_s = Some(cpu);
        r.server_cpu_pct = Some((cpu / elapsed.max(1e-9) * 1000.0).round() / 10.0);
        if deliveries > 0 {
            r.server_cpu_s_per_million = Some(cpu / deliveries as f64 * 1e6);
        }
    }
}

/// Where the server's resident memory is read: /proc with --server-pid, else our /metrics.
struct Memory {
    pid: Option<u32>,
    metrics: Option<SocketAddr>,
}

impl Memory {
    fn new(o: &Opts) -> Self {
        Self {
            pid: o.server_pid,
            metrics: if o.server_pid.is_none() {
                o.our_metrics_addr()
            } else {
                None
            },
        }
    }

    fn rss(&self) -> Option<u64> {
        if let Some(pid) = self.pid {
            return sys::process_rss_bytes(pid);
        }
        scrape(self.metrics?, "process_resident_memory_bytes").map(|v| v as u64)
    }
}

/// One gauge from a Prometheus endpoint.
fn scrape(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        fmt_us(p.p50),
        fmt_us(p.p90),
        fmt_us(p.p99),
        fmt_us(p.p999),
        fmt_us(p.max),
        p.count
    )
}

/// Prints the human summary, then the JSON line when asked.
pub(crate) fn print_report(r: &Report, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "loadgen {} -> {}", r.scenario, r.target)?;
    writeln!(
        out,
        "  connections  {} of {} ({} process(es)), {:.1} s measured",
        r.connected, r.subscribers, r.processes, r.duration_s
    )?;
    if let Some(t) = &r.tls {
        print_tls(&mut out, t)?;
    }
    if let Some(d) = &r.deflate {
        print_deflate(&mut out, r, d)?;
    }
    match r.scenario.as_str() {
        "fanout" | "metrics" => {
            if let Some(url) = &r.publish_url {
                writeln!(
                    out,
                    "  published    {} messages of {} B to {url} in {} requests ({} failed){}",
                    r.published,
                    r.size,
                    r.requests,
                    r.publish_errors,
                    shape(r)
                )?;
            }
            writeln!(
                out,
                "  deliveries   {} ({:.0}/s, {:.1} MB/s)",
                r.deliveries,
                r.deliveries_per_sec,
                r.bytes_per_sec / 1e6
            )?;
            writeln!(out, "  latency      {}", pct(&r.latency_us))?;
            if r.scenario == "fanout" {
                writeln!(out, "  lost         {} ({:.4}%), gaps {}, reordered {}, lagged notices {} ({} dropped)",
                    r.lost, r.lost_fraction * 100.0, r.gaps, r.reordered, r.lagged, r.lagged_dropped)?;
            }
            if let Some(p) = &r.frame_bytes {
                writeln!(out, "  frame bytes  p50 {}  max {}", p.p50, p.max)?;
            }
            if let Some(p) = &r.wire_bytes {
                writeln!(
                    out,
                    "  wire bytes   per message p50 {}  max {}  ({} messages)",
                    p.p50, p.max, p.count
                )?;
            }
            if let Some(p) = &r.jitter_us {
                writeln!(out, "  tick jitter  {}", pct(p))?;
            }
            if let Some(p) = &r.tick_to_last_us {
                writeln!(out, "  tick->last   {}", pct(p))?;
            }
        }
        "churn" => {
            writeln!(
                out,
                "  handshakes   {} ({:.0}/s)",
                r.handshakes, r.handshakes_per_sec
            )?;
            writeln!(out, "  handshake    {}", pct(&r.handshake_us))?;
        }
        "resume" => print_resume(&mut out, r)?,
        _ => {}
    }
    for s in &r.steps {
        writeln!(
            out,
            "  step {:>9.0}/s  achieved {:>9.0}/s  p99 {:>8}  loss {:.4}  {}",
            s.rate,
            s.achieved,
            fmt_us(s.latency_us.p99),
            s.loss,
            if s.held { "held" } else { "broke" }
        )?;
    }
    if let Some(m) = r.max_rate_held {
        writeln!(
            out,
            "  highest rate held: {m:.0} messages/s (p99 and loss within target)"
        )?;
    }
    if let (Some(b), Some(l)) = (r.server_rss_before, r.server_rss_loaded) {
        writeln!(
            out,
            "  server RSS   {:.1} MiB before, {:.1} MiB loaded, {} after; {} per connection",
            b as f64 / 1048576.0,
            l as f64 / 1048576.0,
            r.server_rss_after
                .map_or("?".into(), |a| format!("{:.1} MiB", a as f64 / 1048576.0)),
            r.server_rss_per_conn
                .map_or("?".into(), |p| format!("{:.0} B", p))
        )?;
    }
    if let Some((b, a)) = r.server_fds {
        writeln!(out, "  server fds   {b} before, {a} after")?;
    }
    if let Some(cpu) = r.server_cpu_s {
        let (during, per) = match r.scenario.as_str() {
            "resume" => (" during the storm", "replayed frames"),
            _ => ("", "deliveries"),
        };
        writeln!(
            out,
            "  server CPU   {cpu:.2} s{during} ({:.0}% of a core){}",
            r.server_cpu_pct.unwrap_or(0.0),
            r.server_cpu_s_per_million
                .map_or(String::new(), |m| format!(", {m:.2} s per million {per}"))
        )?;
    }
    writeln!(out, "  loadgen CPU  {:.2} s", r.loadgen_cpu_s)?;
    if !r.errors.is_empty() {
        writeln!(out, "  errors       {:?}", r.errors)?;
    }
    for w in &r.warnings {
        writeln!(out, "  WARNING: {w}")?;
    }
    for f in &r.failures {
        writeln!(out, "  FAILED: {f}")?;
    }
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
    }
    Ok(())
}

/// How the publisher sent: `; batch N, pipeline K` (nothing when this process did not publish).
fn shape(r: &Report) -> String {
    match (r.batch, r.pipeline) {
        (Some(b), Some(p)) => format!("; batch {b}, pipeline {p}"),
        _ => String::new(),
    }
}

/// The TLS line of the summary: what was negotiated, and how many handshakes resumed.
fn print_tls(out: &mut impl Write, t: &TlsReport) -> Result<()> {
    let params: Vec<String> = t.params.iter().map(|(p, n)| format!("{p} ({n})")).collect();
    writeln!(
        out,
        "  tls          {}; {} full, {} resumed handshakes{}{}",
        if params.is_empty() {
            "no handshake".to_owned()
        } else {
            params.join(", ")
        },
        t.full,
        t.resumed,
        if t.resumption {
            ""
        } else {
            " (resumption off)"
        },
        if t.insecure {
            "; certificate NOT verified (--tls-insecure)"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// The permessage-deflate lines of the summary.
fn print_deflate(out: &mut impl Write, r: &Report, d: &DeflateReport) -> Result<()> {
    let every = match d.sample {
        1 => "every one".to_owned(),
        n => format!("1 in {n} of each thread's connections"),
    };
    writeln!(
        out,
        "  deflate      {} of {} upgrades accepted permessage-deflate; {} inflate ({every})",
        d.connections, r.handshakes, d.sampled
    )?;
    writeln!(
        out,
        "  compressed   {} messages: {} inflated and read, {} unread (counted as deliveries)",
        d.compressed, d.inflated, d.opaque
    )?;
    if d.inflated > 0 {
        writeln!(
            out,
            "  inflated     {:.0} B on the wire -> {:.0} B per message (ratio {:.2})",
            d.wire_bytes_per_message, d.inflated_bytes_per_message, d.ratio
        )?;
    }
    Ok(())
}

/// The resume storm's lines of the summary.
fn print_resume(out: &mut impl Write, r: &Report) -> Result<()> {
    let Some(x) = &r.resume else { return Ok(()) };
    writeln!(
        out,
        "  missed       {} messages of {} B published while away, to {} ({} requests failed){}",
        x.missed,
        r.size,
        r.publish_url.as_deref().unwrap_or("?"),
        r.publish_errors,
        shape(r)
    )?;
    writeln!(
        out,
        "  reconnected  {}: recovered {}, recovered:false {}, unanswered {}; storm {:.3} s",
        x.reconnected, x.recovered, x.not_recovered, x.unanswered, x.storm_s
    )?;
    writeln!(out, "  recovered in {}", pct(&x.recover_us))?;
    let (s, m) = (&x.replayed, &x.replayed_messages);
    writeln!(
        out,
        "  replayed     per client min {}  median {}  max {} (server's count); loadgen \
         messages min {}  median {}  max {}",
        s.min, s.median, s.max, m.min, m.median, m.max
    )?;
    writeln!(out, "  duplicates   {}", x.duplicates)?;
    writeln!(
        out,
        "  live after   {} of {} resumed clients received the next message",
        x.live_after,
        x.recovered + x.not_recovered
    )?;
    Ok(())
}

/// `loadgen merge`: adds up reports of processes that ran side by side (one of them published).
fn merge(files: &[std::path::PathBuf], json: bool) -> Result<i32> {
    let mut merged: Option<Report> = None;
    let mut total = Window::default();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .with_context(|| format!("no JSON report in {}", f.display()))?;
        let r: Report =
            serde_json::from_str(line).with_context(|| format!("bad report in {}", f.display()))?;
        if let Some(w) = &r.window {
            total.add(w);
        }
        merged = Some(match merged {
            None => r,
            Some(mut m) => {
                m.subscribers += r.subscribers;
                m.connected += r.connected;
                m.processes += r.processes;
                m.published = m.published.max(r.published);
                m.requests = m.requests.max(r.requests);
                m.publish_errors += r.publish_errors;
                for (cause, n) in r.publish_error_causes {
                    *m.publish_error_causes.entry(cause).or_default() += n;
                }
                m.batch = m.batch.or(r.batch);
                m.pipeline = m.pipeline.or(r.pipeline);
                m.duration_s = m.duration_s.max(r.duration_s);
                m.loadgen_cpu_s += r.loadgen_cpu_s;
                m.publish_url = m.publish_url.or(r.publish_url);
                m.deflate = m.deflate.or(r.deflate);
                m.tls = m.tls.or(r.tls);
                m.failures.extend(r.failures);
                if let (Some(a), Some(b)) = (&mut m.resume, &r.resume) {
                    a.missed = a.missed.max(b.missed);
                    a.live_after += b.live_after;
                    a.storm_s = a.storm_s.max(b.storm_s);
                }
                m
            }
        });
    }
    let mut m = merged.context("no reports to merge")?;
    let elapsed = m.duration_s;
    m.set_totals(&total, elapsed);
    if m.scenario == "fanout" {
        m.set_loss();
    }
    if let (Some(storm), Some(w)) = (&mut m.resume, &total.resume) {
        storm.set_counts(w);
    }
    print_report(&m, json)?;
    Ok(if m.failures.is_empty() { 0 } else { 2 })
}
