//! The estimates the head keeps to fill a [`super::Snapshot`], defined once for the head and
//! the simulator: a shape's sustained arrival rate ([`sustained_rate`]) and its runtimes
//! ([`RuntimeStats`]: the mean that sizes capacity, and a high quantile that says when a busy
//! node empties).

use std::collections::VecDeque;
use std::time::Duration;

/// The arrival rate is measured over this many blocks of [`RATE_BLOCK`] (the last hour).
pub const RATE_BLOCKS: usize = 6;

/// One block of the arrival-rate window.
pub const RATE_BLOCK: Duration = Duration::from_secs(600);

/// The sustained arrival rate, per second, from the number of tasks submitted in each block of
/// the last hour: the median block. A one-off burst lands in one or two blocks and leaves the
/// median alone — it is queued demand, sized by `drain_target`, not a rate to keep up with —
/// while a steady or slowly changing stream moves it as the mean would.
pub fn sustained_rate(mut blocks: [u32; RATE_BLOCKS]) -> f64 {
    blocks.sort_unstable();
    let median = f64::from(blocks[RATE_BLOCKS / 2 - 1] + blocks[RATE_BLOCKS / 2]) / 2.0;
    median / RATE_BLOCK.as_secs_f64()
}

/// Runtimes of a shape's last this many finished attempts are kept for its mean and
/// quantiles.
pub const RUNTIME_SAMPLES: usize = 100;

/// The quantile [`RuntimeStats::ends_within`] estimates.
pub const BUSY_QUANTILE: f64 = 0.9;

/// What the runs of one shape's finished attempts say about the next ones, from the last
/// [`RUNTIME_SAMPLES`] of them. Bounded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeStats {
    recent: VecDeque<Duration>,
    /// Their sum.
    sum: Duration,
}

impl RuntimeStats {
    /// Folds in one finished attempt's runtime.
    pub fn record(&mut self, ran: Duration) {
        if self.recent.len() == RUNTIME_SAMPLES {
            if let Some(old) = self.recent.pop_front() {
                self.sum = self.sum.saturating_sub(old);
            }
        }
        self.recent.push_back(ran);
        self.sum = self.sum.saturating_add(ran);
    }

    /// Their mean ([`super::Demand::expected_runtime`]); `None` before any finished.
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.recent.len()).ok().filter(|&n| n > 0)?;
        Some(self.sum / n)
    }

    /// How long an attempt that has run `elapsed` so far runs in all, at the
    /// [`BUSY_QUANTILE`]: that quantile of the recent runtimes longer than `elapsed` (a long
    /// tail keeps the ones that outlived the short runs going), or twice `elapsed` when it has
    /// outlived them all. `None` before any finished.
    pub fn ends_within(&self, elapsed: Duration) -> Option<Duration> {
        if self.recent.is_empty() {
            return None;
        }
        let mut longer: Vec<Duration> = (self.recent.iter().copied())
            .filter(|&ran| ran > elapsed)
            .collect();
        if longer.is_empty() {
            return Some(elapsed * 2);
        }
        longer.sort_unstable();
        let rank = (BUSY_QUANTILE * longer.len() as f64).ceil() as usize;
        Some(longer[rank.clamp(1, longer.len()) - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_sustained_rate_is_the_median_block() {
        // 60 tasks in each ten-minute block: one a ten seconds.
        assert_eq!(sustained_rate([60; RATE_BLOCKS]), 0.1);
        // A burst in one block, or two, changes nothing.
        assert_eq!(sustained_rate([60, 5000, 60, 60, 60, 60]), 0.1);
        assert_eq!(sustained_rate([60, 5000, 900, 60, 60, 60]), 0.1);
        // Bursts every other block are a stream of their own.
        assert_eq!(sustained_rate([0, 600, 0, 600, 0, 600]), 0.5);
        assert_eq!(sustained_rate([0; RATE_BLOCKS]), 0.0);
    }

    #[test]
    fn the_mean_is_of_the_recent_runs() {
        let mut stats = RuntimeStats::default();
        assert_eq!(stats.mean(), None);
        stats.record(secs(100));
        assert_eq!(stats.mean(), Some(secs(100)));
        stats.record(secs(200));
        assert_eq!(stats.mean(), Some(secs(150)));
        for _ in 0..RUNTIME_SAMPLES {
            stats.record(secs(60));
        }
        assert_eq!(stats.mean(), Some(secs(60)));
    }

    #[test]
    fn a_busy_attempt_ends_by_the_high_quantile_of_the_runs_it_has_not_outlived() {
        let mut stats = RuntimeStats::default();
        assert_eq!(stats.ends_within(secs(0)), None);
        // 90 short runs of a minute, 10 long ones of an hour: the mean says 6.9 minutes, but
        // one in ten runs an hour.
        for _ in 0..90 {
            stats.record(secs(60));
        }
        for _ in 0..10 {
            stats.record(secs(3600));
        }
        assert_eq!(stats.ends_within(secs(0)), Some(secs(60)));
        // Past the short ones, it is one of the long ones.
        assert_eq!(stats.ends_within(secs(120)), Some(secs(3600)));
        // Past every run seen: as long again.
        assert_eq!(stats.ends_within(secs(4000)), Some(secs(8000)));
        // The window keeps the last RUNTIME_SAMPLES.
        for _ in 0..RUNTIME_SAMPLES {
            stats.record(secs(30));
        }
        assert_eq!(stats.ends_within(secs(120)), Some(secs(240)));
    }
}
