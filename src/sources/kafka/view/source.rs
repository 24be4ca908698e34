//! The source's own state: whether the cluster answers, since when, and how the polls go. The
//! poll loop reports every poll's outcome; `/metrics` and the metrics frames read it.

use std::time::Duration;

/// Whether the cluster answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceStatus {
    /// No poll has finished yet.
    Starting,
    /// The last poll succeeded.
    Up,
    /// The last poll failed.
    Down,
}

impl SourceStatus {
    /// `starting`, `up` or `down`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// The poll loop's record of the cluster: its status and since when, the last poll's duration,
/// errors in a row and in total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceState {
    status: SourceStatus,
    since_ms: u64,
    last_poll_at_ms: Option<u64>,
    last_poll_duration: Option<Duration>,
    consecutive_errors: u32,
    errors_total: u64,
    polls_total: u64,
    last_error: Option<String>,
}

impl SourceState {
    /// Starting, since `now_ms` (milliseconds since the Unix epoch).
    pub(crate) fn new(now_ms: u64) -> Self {
        Self {
            status: SourceStatus::Starting,
            since_ms: now_ms,
            last_poll_at_ms: None,
            last_poll_duration: None,
            consecutive_errors: 0,
            errors_total: 0,
            polls_total: 0,
            last_error: None,
        }
    }

    /// A poll that began at `at_ms` and took `took` succeeded. Returns the new status when it
    /// changed (the caller logs once per change).
    pub(crate) fn poll_succeeded(&mut self, at_ms: u64, took: Duration) -> Option<SourceStatus> {
        self.polled(at_ms, took);
        self.consecutive_errors = 0;
        self.set(SourceStatus::Up, at_ms)
    }

    /// A poll that began at `at_ms` and took `took` failed with `error`. Returns the new status
    /// when it changed. Down "since" is the start of the first failed poll.
    pub(crate) fn poll_failed(
        &mut self,
        at_ms: u64,
        took: Duration,
        error: impl Into<String>,
    ) -> Option<SourceStatus> {
        self.polled(at_ms, took);
        self.consecutive_errors = self.consecutive_errors.saturating_add(1);
        self.errors_total += 1;
        self.last_error = Some(error.into());
        self.set(SourceStatus::Down, at_ms)
    }

    fn polled(&mut self, at_ms: u64, took: Duration) {
        self.polls_total += 1;
        self.last_poll_at_ms = Some(at_ms);
        self.last_poll_duration = Some(took);
    }

    fn set(&mut self, status: SourceStatus, at_ms: u64) -> Option<SourceStatus> {
        if self.status == status {
            return None;
        }
        self.status = status;
        self.since_ms = at_ms;
        Some(status)
    }

    /// The current status.
    pub(crate) fn status(&self) -> SourceStatus {
        self.status
    }

    /// Whether the last poll succeeded.
    pub(crate) fn is_up(&self) -> bool {
        self.status == SourceStatus::Up
    }

    /// Since when the status holds, milliseconds since the Unix epoch (for `starting`, when the
    /// source was created).
    pub(crate) fn since_ms(&self) -> u64 {
        self.since_ms
    }

    #[cfg(test)]
    /// When the last poll began.
    pub(crate) fn last_poll_at_ms(&self) -> Option<u64> {
        self.last_poll_at_ms
    }

    /// How long the last poll took, successful or not.
    pub(crate) fn last_poll_duration(&self) -> Option<Duration> {
        self.last_poll_duration
    }

    #[cfg(test)]
    /// Failed polls since the last success.
    pub(crate) fn consecutive_errors(&self) -> u32 {
        self.consecutive_errors
    }

    /// Failed polls since the start.
    pub(crate) fn errors_total(&self) -> u64 {
        self.errors_total
    }

    /// Polls since the start, successful or not.
    pub(crate) fn polls_total(&self) -> u64 {
        self.polls_total
    }

    /// The last failure's message (kept after a success, for the logs and the status page).
    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_change_once_with_its_time() {
        let ms = Duration::from_millis;
        let mut s = SourceState::new(1_000);
        assert_eq!(s.status(), SourceStatus::Starting);
        assert_eq!(s.since_ms(), 1_000);
        assert_eq!(s.last_poll_duration(), None);

        assert_eq!(
            s.poll_failed(2_000, ms(30), "connection refused"),
            Some(SourceStatus::Down)
        );
        assert_eq!(s.poll_failed(4_000, ms(20), "timed out"), None);
        assert_eq!((s.since_ms(), s.consecutive_errors()), (2_000, 2));
        assert_eq!(s.last_error(), Some("timed out"));
        assert!(!s.is_up());

        assert_eq!(s.poll_succeeded(6_000, ms(5)), Some(SourceStatus::Up));
        assert_eq!(s.poll_succeeded(8_000, ms(7)), None);
        assert!(s.is_up());
        assert_eq!(s.status().as_str(), "up");
        assert_eq!((s.since_ms(), s.consecutive_errors()), (6_000, 0));
        assert_eq!((s.errors_total(), s.polls_total()), (2, 4));
        assert_eq!(s.last_poll_at_ms(), Some(8_000));
        assert_eq!(s.last_poll_duration(), Some(ms(7)));

        assert_eq!(
            s.poll_failed(10_000, ms(1), "eof"),
            Some(SourceStatus::Down)
        );
        assert_eq!((s.since_ms(), s.consecutive_errors()), (10_000, 1));
        assert_eq!(s.status().as_str(), "down");
    }
}
