//! Lag in time, as kafka-lag-exporter measures it: each partition keeps a short history of its
//! log-end offset, `(poll time, offset)` points, and the time at which the log end was at a
//! group's committed offset is read off that history by linear interpolation. How far the group
//! is behind, in seconds, is the poll time minus that time.
//!
//! The history is bounded in points and in age ([`HistoryLimits`]) and spends its points where
//! they matter:
//!
//! - a run of polls that saw the same offset (an idle partition) keeps only its first and its
//!   last point: the first says when the log end reached the offset, the last until when it
//!   stayed there, which is what the interpolation needs on both sides;
//! - when the history is full, the interior point whose removal changes the interpolated times
//!   least is dropped (a partition produced to at a steady rate needs few points, so its history
//!   reaches further back);
//! - points older than the age limit are dropped, except the newest of them, which still bounds
//!   the window (an offset older than every point is at least that old).
//!
//! An offset that goes back (the log was truncated or the topic recreated under the same name),
//! or a poll time that goes back, clears the history: its points describe another log.

use std::collections::VecDeque;

/// One poll's view of a partition's log end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    /// When the poll began, milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// The log-end offset it saw.
    pub(crate) offset: i64,
}

/// How much history each partition keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    /// Points per partition (at least 2 are always kept).
    pub(crate) max_points: usize,
    /// Points older than this are dropped, but for the newest of them.
    pub(crate) max_age_ms: u64,
}

impl Default for HistoryLimits {
    /// 64 points over at most 15 minutes: at a 2 s poll interval a partition written to at a
    /// varying rate keeps about its last 2 minutes in full detail, one written to at a steady
    /// rate (or idle) keeps up to 15 minutes.
    fn default() -> Self {
        Self {
            max_points: 64,
            max_age_ms: 15 * 60 * 1000,
        }
    }
}

/// How far behind a consumer is, in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LagEstimate {
    /// Seconds between the poll and the time the log end was at the committed offset; 0 when
    /// the consumer is at the log end.
    pub(crate) seconds: f64,
    /// The committed offset is older than the whole history: `seconds` is the age of the oldest
    /// point, a lower bound (the consumer is at least that far behind).
    pub(crate) lower_bound: bool,
}

impl LagEstimate {
    /// Caught up: zero, exactly.
    pub(crate) const ZERO: Self = Self {
        seconds: 0.0,
        lower_bound: false,
    };

    /// The larger of two estimates; the result is a lower bound when either is (the true
    /// maximum may be above a lower bound).
    pub(crate) fn max(self, other: Self) -> Self {
        Self {
            seconds: self.seconds.max(other.seconds),
            lower_bound: self.lower_bound || other.lower_bound,
        }
    }
}

/// The recent log-end offsets of one partition, oldest first: times strictly increasing,
/// offsets never decreasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OffsetHistory {
    points: VecDeque<Point>,
}

impl OffsetHistory {
    /// Records one poll's log-end offset.
    pub(crate) fn push(&mut self, p: Point, limits: &HistoryLimits) {
        if let Some(last) = self.points.back() {
            if p.offset < last.offset || p.at_ms < last.at_ms {
                self.points.clear();
            }
        }
        let n = self.points.len();
        let flat_run = n >= 2
            && self.points[n - 1].offset == p.offset
            && self.points[n - 2].offset == p.offset;
        let same_time = n >= 1 && self.points[n - 1].at_ms == p.at_ms;
        if flat_run || same_time {
            // The run's last point moves on (or the same poll time is seen again: the newer
            // offset wins).
            self.points[n - 1] = p;
        } else {
            self.points.push_back(p);
        }
        self.expire(p.at_ms, limits.max_age_ms);
        while self.points.len() > limits.max_points.max(2) {
            self.thin();
        }
    }

    #[cfg(test)]
    /// The points, oldest first.
    pub(crate) fn points(&self) -> impl Iterator<Item = Point> + '_ {
        self.points.iter().copied()
    }

    /// Drops the points older than `max_age_ms` before `now_ms`, but the newest of them.
    fn expire(&mut self, now_ms: u64, max_age_ms: u64) {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        while self.points.len() > 2 && self.points[1].at_ms <= cutoff {
            self.points.pop_front();
        }
    }

    /// Drops the interior point whose removal moves the interpolated times least (the oldest
    /// of equals).
    fn thin(&mut self) {
        let p = &self.points;
        let victim = (1..p.len() - 1)
            .map(|i| (i, removal_error_ms(p[i - 1], p[i], p[i + 1])))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i);
        if let Some(i) = victim {
            self.points.remove(i);
        }
    }

    /// When the log end was at `committed`, as the time `now_ms` minus that moment; `None` with
    /// no history.
    ///
    /// - `committed` at or past the newest point's offset: zero (caught up).
    /// - Between two points: linear interpolation between the newest point at or below it and
    ///   the next one (so in a run of polls that saw the same offset, the run's last poll
    ///   counts: the record at that offset was written after it).
    /// - Below every point: the age of the oldest point, flagged as a lower bound. Extrapolating
    ///   from the oldest points' rate would invent a number that the history cannot support
    ///   (the rate before the window is unknown); the lower bound is true, and grows with the
    ///   window.
    pub(crate) fn lag(&self, committed: i64, now_ms: u64) -> Option<LagEstimate> {
        let last = self.points.back()?;
        if committed >= last.offset {
            return Some(LagEstimate::ZERO);
        }
        // Offsets never decrease, so the points at or below `committed` are a prefix.
        let k = self.points.partition_point(|p| p.offset <= committed);
        let (at_ms, lower_bound) = if k == 0 {
            (self.points[0].at_ms as f64, true)
        } else {
            let (a, b) = (self.points[k - 1], self.points[k]);
            // b.offset > committed >= a.offset, so the span is never zero.
            let f = (committed - a.offset) as f64 / (b.offset - a.offset) as f64;
            (a.at_ms as f64 + f * (b.at_ms - a.at_ms) as f64, false)
        };
        Some(LagEstimate {
            seconds: ((now_ms as f64 - at_ms) / 1000.0).max(0.0),
            lower_bound,
        })
    }
}

/// How far, in milliseconds, the time read for `b.offset` moves if `b` is removed and the
/// interpolation runs straight from `a` to `c`. In a flat run that is the run's length; in its
/// middle, nothing.
fn removal_error_ms(a: Point, b: Point, c: Point) -> f64 {
    if c.offset == a.offset {
        return 0.0;
    }
    let f = (b.offset - a.offset) as f64 / (c.offset - a.offset) as f64;
    let interpolated = a.at_ms as f64 + f * (c.at_ms - a.at_ms) as f64;
    (interpolated - b.at_ms as f64).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(points: &[(u64, i64)], limits: &HistoryLimits) -> OffsetHistory {
        let mut h = OffsetHistory::default();
        for &(at_ms, offset) in points {
            h.push(Point { at_ms, offset }, limits);
        }
        h
    }

    fn pairs(h: &OffsetHistory) -> Vec<(u64, i64)> {
        h.points().map(|p| (p.at_ms, p.offset)).collect()
    }

    fn exact(seconds: f64) -> Option<LagEstimate> {
        Some(LagEstimate {
            seconds,
            lower_bound: false,
        })
    }

    #[test]
    fn interpolates_between_the_surrounding_points() {
        let h = history(
            &[(0, 0), (10_000, 100), (20_000, 300)],
            &HistoryLimits::default(),
        );
        let now = 20_000;
        // 150 is a quarter of the way from 100 (10 s) to 300 (20 s): 12.5 s, 7.5 s ago.
        assert_eq!(h.lag(150, now), exact(7.5));
        assert_eq!(h.lag(50, now), exact(15.0));
        assert_eq!(h.lag(100, now), exact(10.0));
        assert_eq!(h.lag(0, now), exact(20.0));
        // At or past the log end: caught up.
        assert_eq!(h.lag(300, now), Some(LagEstimate::ZERO));
        assert_eq!(h.lag(301, now), Some(LagEstimate::ZERO));
        // Later, with no new point, the same offset is further behind.
        assert_eq!(h.lag(150, 30_000), exact(17.5));
        assert_eq!(OffsetHistory::default().lag(5, now), None);
    }

    #[test]
    fn an_offset_older_than_the_history_reports_its_age_as_a_lower_bound() {
        let h = history(&[(4_000, 1_000), (6_000, 1_200)], &HistoryLimits::default());
        assert_eq!(
            h.lag(500, 10_000),
            Some(LagEstimate {
                seconds: 6.0,
                lower_bound: true
            })
        );
        // One point (the first poll): behind, by at least nothing yet.
        let first = history(&[(4_000, 1_000)], &HistoryLimits::default());
        assert_eq!(
            first.lag(10, 4_000),
            Some(LagEstimate {
                seconds: 0.0,
                lower_bound: true
            })
        );
    }

    #[test]
    fn a_flat_run_keeps_its_first_and_last_point() {
        let h = history(
            &[
                (0, 0),
                (1_000, 100),
                (2_000, 100),
                (3_000, 100),
                (4_000, 100),
                (5_000, 200),
            ],
            &HistoryLimits::default(),
        );
        assert_eq!(
            pairs(&h),
            [(0, 0), (1_000, 100), (4_000, 100), (5_000, 200)]
        );
        // Offset 100 was written after the run's last poll (4 s) ...
        assert_eq!(h.lag(100, 5_000), exact(1.0));
        assert_eq!(h.lag(150, 5_000), exact(0.5));
        // ... and offset 50 before the run's first (1 s).
        assert_eq!(h.lag(50, 5_000), exact(4.5));
    }

    #[test]
    fn a_full_history_drops_the_point_that_matters_least() {
        let limits = HistoryLimits {
            max_points: 4,
            max_age_ms: u64::MAX,
        };
        // Steady 10/s with one burst: the burst's corners stay, the straight stretches thin.
        let h = history(
            &[
                (0, 0),
                (1_000, 10),
                (2_000, 20),
                (3_000, 1_020),
                (4_000, 1_030),
                (5_000, 1_040),
            ],
            &limits,
        );
        assert_eq!(
            pairs(&h),
            [(0, 0), (2_000, 20), (3_000, 1_020), (5_000, 1_040)]
        );
        // Still exact on the straight stretches.
        assert_eq!(h.lag(10, 5_000), exact(4.0));
        assert_eq!(h.lag(1_030, 5_000), exact(1.0));
    }

    #[test]
    fn old_points_expire_but_the_newest_of_them_bounds_the_window() {
        let limits = HistoryLimits {
            max_points: 64,
            max_age_ms: 10_000,
        };
        let h = history(
            &[
                (0, 0),
                (5_000, 50),
                (9_000, 90),
                (12_000, 120),
                (20_000, 200),
            ],
            &limits,
        );
        // The cutoff is 10 s: 9 s stays (the newest before it), 0 and 5 s go.
        assert_eq!(pairs(&h), [(9_000, 90), (12_000, 120), (20_000, 200)]);
        assert_eq!(
            h.lag(10, 20_000),
            Some(LagEstimate {
                seconds: 11.0,
                lower_bound: true
            })
        );
        // An idle partition keeps the poll that first saw its offset, however old.
        let idle = history(&[(0, 7), (30_000, 7), (60_000, 7)], &limits);
        assert_eq!(pairs(&idle), [(0, 7), (60_000, 7)]);
    }

    #[test]
    fn an_offset_or_clock_going_back_starts_over() {
        let limits = HistoryLimits::default();
        let mut h = history(&[(0, 0), (1_000, 500)], &limits);
        h.push(
            Point {
                at_ms: 2_000,
                offset: 3,
            },
            &limits,
        );
        assert_eq!(pairs(&h), [(2_000, 3)]);
        h.push(
            Point {
                at_ms: 1_500,
                offset: 4,
            },
            &limits,
        );
        assert_eq!(pairs(&h), [(1_500, 4)]);
        // The same poll time again: the newer offset replaces the point.
        h.push(
            Point {
                at_ms: 1_500,
                offset: 6,
            },
            &limits,
        );
        assert_eq!(pairs(&h), [(1_500, 6)]);
    }

    #[test]
    fn group_maximum_is_a_lower_bound_when_any_part_is() {
        let a = LagEstimate {
            seconds: 3.0,
            lower_bound: false,
        };
        let b = LagEstimate {
            seconds: 1.0,
            lower_bound: true,
        };
        assert_eq!(
            a.max(b),
            LagEstimate {
                seconds: 3.0,
                lower_bound: true
            }
        );
        assert_eq!(LagEstimate::ZERO.max(a), a);
    }
}
