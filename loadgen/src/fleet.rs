//! The subscriber connections of a run: event-loop threads in this process, plus child loadgen
//! processes when one process cannot hold them all. Children stream their windows to the
//! coordinator as JSON lines, so the two look the same to the scenarios.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::opts::Opts;
use crate::stats::Window;
use crate::sys;
use crate::worker::{self, Mode, Phase, Plan, Shared};

/// One line a child prints: its state and the window since the last line.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildLine {
    /// Connections open.
    pub(crate) open: usize,
    /// Connections that failed.
    pub(crate) failed: usize,
    /// Counts since the previous line.
    pub(crate) window: Window,
    /// Last line: the child's CPU seconds.
    pub(crate) done: Option<f64>,
    /// Resume: the [`Phase`] every thread of the child has reached (`window` holds what it
    /// counted getting there).
    #[serde(default)]
    pub(crate) phase: u8,
}

#[derive(Debug, Default)]
struct Remote {
    open: AtomicUsize,
    failed: AtomicUsize,
    phase: AtomicU8,
    done: AtomicBool,
    cpu_s: Mutex<f64>,
}

/// A child loadgen: the process, its stdin (to stop it), what it reported, its reader.
type ChildProc = (Child, Option<ChildStdin>, Arc<Remote>, JoinHandle<()>);

/// The running subscribers.
#[derive(Debug)]
pub(crate) struct Fleet {
    workers: Vec<(Arc<Shared>, JoinHandle<std::io::Result<()>>)>,
    children: Vec<ChildProc>,
    remote_window: Arc<Mutex<Window>>,
    stop: Arc<AtomicBool>,
    /// Connections this fleet was asked for.
    pub(crate) asked: usize,
}

impl Fleet {
    /// Starts `connections` connections: `opts.processes - 1` children take their share, the
    /// rest are spread over this process's threads. `metrics_us` (the tick interval) turns on
    /// the reading of our server's metrics frames.
    pub(crate) fn start(
        opts: &Opts,
        mode: Mode,
        connections: usize,
        connect_rate: f64,
        metrics_us: Option<u64>,
    ) -> Result<Self> {
        let procs = if opts.child.is_some() {
            1
        } else {
            opts.processes.max(1)
        };
        let share = |i: usize, n: usize, of: usize| of / n + usize::from(i < of % n);
        let mut fleet = Self {
            workers: Vec::new(),
            children: Vec::new(),
            remote_window: Arc::new(Mutex::new(Window::default())),
            stop: Arc::new(AtomicBool::new(false)),
            asked: connections,
        };
        for i in 1..procs {
            fleet.spawn_child(
                i,
                share(i, procs, connections),
                share(i, procs, opts.slow_subscribers),
            )?;
        }
        let mine = share(0, procs, connections);
        let my_slow = share(0, procs, opts.slow_subscribers);
        let my_rate = connect_rate / procs as f64;
        let target = Arc::new(opts.ws_target()?);
        let source_addrs = opts.source_addrs(&target)?;
        let threads = opts.thread_count().min(mine.max(1));
        let subscribe_message: Option<Arc<[u8]>> = opts
            .subscribe_message
            .as_deref()
            .map(|m| Arc::from(m.as_bytes()));
        for t in 0..threads {
            let plan = Plan {
                target: target.clone(),
                connections: if mine == usize::MAX {
                    usize::MAX
                } else {
                    share(t, threads, mine)
                },
                slow: share(t, threads, my_slow),
                slow_read_rate: opts.slow_read_rate,
                mode,
                connect_rate: my_rate / threads as f64,
                reconnect_rate: opts.reconnect_rate / procs as f64 / threads as f64,
                source_addrs: source_addrs.clone(),
                source_offset: t + opts.child.unwrap_or(0) * threads,
                subscribe_message: subscribe_message.clone(),
                handshake_timeout: opts.handshake_timeout,
                max_message: opts.max_message,
                deflate_sample: opts.deflate_sample,
                metrics_interval_us: metrics_us,
            };
            fleet.spawn_worker(t, plan)?;
        }
        Ok(fleet)
    }

    fn spawn_worker(&mut self, index: usize, plan: Plan) -> Result<()> {
        let shared = Arc::new(Shared::default());
        let stop = self.stop.clone();
        let s = shared.clone();
        let handle = thread::Builder::new()
            .name(format!("loadgen-{index}"))
            .spawn(move || worker::run(plan, s, stop))
            .context("cannot start a thread")?;
        self.workers.push((shared, handle));
        Ok(())
    }

    fn spawn_child(&mut self, index: usize, connections: usize, slow: usize) -> Result<()> {
        let exe = std::env::current_exe().context("cannot find the loadgen binary")?;
        let args = child_args(index, connections, slow);
        let mut child = Command::new(exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a child loadgen")?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let remote = Arc::new(Remote::default());
        let (r, window) = (remote.clone(), self.remote_window.clone());
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(msg) = serde_json::from_str::<ChildLine>(&line) else {
                    continue;
                };
                r.open.store(msg.open, Ordering::Relaxed);
                r.failed.store(msg.failed, Ordering::Relaxed);
                window.lock().unwrap().add(&msg.window);
                r.phase.store(msg.phase, Ordering::Release);
                if let Some(cpu) = msg.done {
                    *r.cpu_s.lock().unwrap() = cpu;
                }
            }
            r.done.store(true, Ordering::Release);
        });
        self.children.push((child, stdin, remote, reader));
        Ok(())
    }

    /// Slow subscribers read at full speed from now on, so what they were sent (and the
    /// `lagged` notices for what they were not) is counted before the run ends.
    pub(crate) fn catch_up(&mut self) {
        for (shared, _) in &self.workers {
            shared.catch_up.store(true, Ordering::Relaxed);
        }
        for (_, stdin, _, _) in &mut self.children {
            if let Some(s) = stdin {
                let _ = s.write_all(b"catchup\n");
            }
        }
    }

    /// Resume: orders every thread and child to `phase` (see [`Phase`]).
    pub(crate) fn order(&mut self, phase: Phase) {
        for (shared, _) in &self.workers {
            shared.order.store(phase as u8, Ordering::Release);
        }
        let line: &[u8] = match phase {
            Phase::Holding | Phase::Resumed => return,
            Phase::Away => b"away\n",
            Phase::Back => b"back\n",
        };
        for (_, stdin, _, _) in &mut self.children {
            if let Some(s) = stdin {
                let _ = s.write_all(line);
            }
        }
    }

    /// Resume: the phase every thread and child has reached; what they counted on the way is
    /// in the windows harvested from now on.
    pub(crate) fn phase(&self) -> Phase {
        let local = self
            .workers
            .iter()
            .map(|(s, _)| s.phase.load(Ordering::Acquire));
        let remote = self
            .children
            .iter()
            .map(|c| c.2.phase.load(Ordering::Acquire));
        Phase::from_u8(local.chain(remote).min().unwrap_or(0))
    }

    /// Upgraded connections open now.
    pub(crate) fn open(&self) -> usize {
        self.workers
            .iter()
            .map(|(s, _)| s.open.load(Ordering::Relaxed))
            .sum::<usize>()
            + self
                .children
                .iter()
                .map(|c| c.2.open.load(Ordering::Relaxed))
                .sum::<usize>()
    }

    /// Connections that failed before their upgrade.
    pub(crate) fn failed(&self) -> usize {
        self.workers
            .iter()
            .map(|(s, _)| s.failed.load(Ordering::Relaxed))
            .sum::<usize>()
            + self
                .children
                .iter()
                .map(|c| c.2.failed.load(Ordering::Relaxed))
                .sum::<usize>()
    }

    /// Whether every local thread and child has finished (churn runs end by themselves).
    pub(crate) fn finished(&self) -> bool {
        self.workers
            .iter()
            .all(|(s, _)| s.done.load(Ordering::Acquire))
            && self
                .children
                .iter()
                .all(|c| c.2.done.load(Ordering::Acquire))
    }

    /// Takes the counts gathered since the last call.
    pub(crate) fn harvest(&self) -> Window {
        let mut w = self.remote_window.lock().unwrap().take();
        for (shared, _) in &self.workers {
            w.add(&shared.window.lock().unwrap().take());
        }
        w
    }

    /// Waits until `want` connections are open or the rest have failed, `stop` is set, or
    /// `timeout` passes; calls `tick` every 250 ms.
    pub(crate) fn wait_connected(
        &self,
        want: usize,
        timeout: Duration,
        stop: &AtomicBool,
        mut tick: impl FnMut(&Self),
    ) -> usize {
        let end = sys::mono_ns() + timeout.as_nanos() as u64;
        while self.open() < want
            && self.open() + self.failed() < want
            && sys::mono_ns() < end
            && !stop.load(Ordering::Relaxed)
        {
            thread::sleep(Duration::from_millis(25));
            tick(self);
        }
        self.open()
    }

    /// Closes every connection, waits for the threads and children, and returns the last
    /// counts and the children's CPU seconds.
    pub(crate) fn stop(mut self) -> Result<(Window, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        for (_, stdin, _, _) in &mut self.children {
            if let Some(mut s) = stdin.take() {
                let _ = s.write_all(b"stop\n");
            }
        }
        let mut errors = Vec::new();
        for (_, handle) in self.workers.drain(..) {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{e}")),
                Err(_) => errors.push("a loadgen thread panicked".into()),
            }
        }
        let mut cpu = 0.0;
        for (i, (mut child, _, remote, reader)) in self.children.drain(..).enumerate() {
            let _ = reader.join();
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => errors.push(format!("child loadgen {} failed ({status})", i + 1)),
                Err(e) => errors.push(format!("child loadgen {}: {e}", i + 1)),
            }
            cpu += *remote.cpu_s.lock().unwrap();
        }
        let w = self.harvest();
        if !errors.is_empty() {
            bail!("event loop failed: {}", errors.join("; "));
        }
        Ok((w, cpu))
    }
}

/// This process's arguments with the fleet's split applied, for a child.
fn child_args(index: usize, connections: usize, slow: usize) -> Vec<String> {
    // Options the coordinator sets per child (with a value), and switches it drops.
    const SET: [&str; 3] = ["--processes", "--subscribers", "--slow-subscribers"];
    const DROP: [&str; 2] = ["--json", "--quiet"];
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let name = a.split('=').next().unwrap_or("");
        if DROP.contains(&name) {
            continue;
        }
        if SET.contains(&name) {
            if !a.contains('=') {
                args.next();
            }
            continue;
        }
        out.push(a);
    }
    out.extend([
        "--subscribers".into(),
        connections.to_string(),
        "--slow-subscribers".into(),
        slow.to_string(),
        "--child".into(),
        index.to_string(),
        "--quiet".into(),
    ]);
    out
}

/// A child's main loop: run the fleet, print a line every 250 ms, stop on "stop" or EOF on
/// stdin (or when a churn run is over); "catchup", "away" and "back" are passed on to the
/// threads.
pub(crate) fn run_child(fleet: Fleet) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let shared: Vec<Arc<Shared>> = fleet.workers.iter().map(|(w, _)| w.clone()).collect();
    thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let phase = match line.as_deref() {
                Ok("catchup") => {
                    shared
                        .iter()
                        .for_each(|w| w.catch_up.store(true, Ordering::Relaxed));
                    continue;
                }
                Ok("away") => Phase::Away,
                Ok("back") => Phase::Back,
                _ => break,
            };
            shared
                .iter()
                .for_each(|w| w.order.store(phase as u8, Ordering::Release));
        }
        s.store(true, Ordering::Relaxed);
    });
    let out = std::io::stdout();
    while !stop.load(Ordering::Relaxed) && !fleet.finished() {
        thread::sleep(Duration::from_millis(250));
        // The phase before the window: a thread flushes its window before it says it got there.
        let phase = fleet.phase() as u8;
        let line = ChildLine {
            open: fleet.open(),
            failed: fleet.failed(),
            window: fleet.harvest(),
            done: None,
            phase,
        };
        writeln!(out.lock(), "{}", serde_json::to_string(&line)?)?;
    }
    let (failed, phase) = (fleet.failed(), fleet.phase() as u8);
    let (window, _) = fleet.stop()?;
    let line = ChildLine {
        open: 0,
        failed,
        window,
        done: Some(sys::own_cpu_seconds()),
        phase,
    };
    writeln!(out.lock(), "{}", serde_json::to_string(&line)?)?;
    Ok(())
}
