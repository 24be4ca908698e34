//! A named thread that runs a job at a fixed interval until it is stopped: the ticker's and
//! the demo broker's loop.

use std::fmt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running thread. Dropping it stops the thread promptly (the wait between runs is the
/// stop signal) and waits for the job in progress.
pub(crate) struct Periodic {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Periodic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Periodic")
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl Periodic {
    /// Calls `job(elapsed since the previous call)` every `interval`, the first time after
    /// `first_after`. A run that falls behind skips the missed runs rather than bursting.
    pub(crate) fn spawn(
        name: &str,
        interval: Duration,
        first_after: Duration,
        mut job: impl FnMut(Duration) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut last = Instant::now();
                let mut next = last + first_after;
                loop {
                    match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let now = Instant::now();
                    job(now - last);
                    last = now;
                    next += interval;
                    if next < now {
                        next = now + interval;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn runs_at_once_when_asked_and_stops_promptly() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let mut p = Periodic::spawn(
            "test-periodic",
            Duration::from_secs(3600),
            Duration::ZERO,
            move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        while runs.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        p.stop();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "stopped without waiting an hour"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
