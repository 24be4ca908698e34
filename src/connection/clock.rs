//! The connections' clock: four bytes a moment.

use std::time::Instant;

/// A moment on a process-wide millisecond clock, in four bytes where an `Instant` takes
/// sixteen (every connection keeps four of them). The clock wraps every 49.7 days, so only ages
/// under half that are meaningful: every time a connection keeps is renewed (a ping, a pong, a
/// request, a phase) or ends the connection within its timeout, far sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Millis(std::num::NonZeroU32);

impl Millis {
    pub(crate) fn now() -> Self {
        Self::at(Instant::now())
    }

    pub(crate) fn at(t: Instant) -> Self {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        // Truncated to 32 bits: the clock wraps. Zero is read as one (a millisecond off).
        let ms = t.saturating_duration_since(base).as_millis() as u32;
        Self(std::num::NonZeroU32::new(ms).unwrap_or(std::num::NonZeroU32::MIN))
    }

    /// This moment as an `Instant`, given the clock's reading `at` at the instant `now`.
    pub(super) fn instant(self, at: Self, now: Instant) -> Instant {
        // A moment a little after `at` (none should be) reads as now, not as 49 days ago.
        let age = at.0.get().wrapping_sub(self.0.get());
        let age = if age > u32::MAX / 2 { 0 } else { age };
        now.checked_sub(std::time::Duration::from_millis(age.into()))
            .unwrap_or(now)
    }
}
