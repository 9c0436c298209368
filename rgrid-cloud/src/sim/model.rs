//! The model of Hetzner Cloud the simulator runs against: how long a server takes from create
//! request to a joined node, how often a boot never joins, how often a create is refused as
//! sold out, and per-started-hour billing until deletion.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::trace::lognormal;

/// Hetzner, as the simulator sees it. Both policies run against the same model and seed.
#[derive(Clone, Debug, PartialEq)]
pub struct HetznerModel {
    /// Median time from create request to a joined node (server boot, Docker install, image
    /// pull, join). Default: 100 s.
    pub boot_median: Duration,
    /// Log-normal shape of the boot time. Default: 0.3.
    pub boot_sigma: f64,
    /// Shortest boot. Default: 50 s.
    pub boot_min: Duration,
    /// Longest boot that still joins. Default: 6 min.
    pub boot_max: Duration,
    /// Probability that a created server never joins (broken boot). Default: 1%.
    pub boot_failure: f64,
    /// Probability that a create is refused with `resource_unavailable`. Default: 3%.
    pub unavailable: f64,
    /// Billing period: every started one is paid until deletion. Default: 1 h.
    pub billing_period: Duration,
}

impl Default for HetznerModel {
    fn default() -> Self {
        Self {
            boot_median: Duration::from_secs(100),
            boot_sigma: 0.3,
            boot_min: Duration::from_secs(50),
            boot_max: Duration::from_secs(360),
            boot_failure: 0.01,
            unavailable: 0.03,
            billing_period: Duration::from_secs(3600),
        }
    }
}

/// What happens to one create request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Refused: sold out.
    Unavailable,
    /// Created; joins after this long.
    Joins(Duration),
    /// Created (and billed) but never joins.
    NeverJoins,
}

impl HetznerModel {
    /// Draws the fate of one create request.
    pub fn create(&self, rng: &mut ChaCha8Rng) -> CreateOutcome {
        if rng.gen_range(0.0..1.0) < self.unavailable {
            return CreateOutcome::Unavailable;
        }
        if rng.gen_range(0.0..1.0) < self.boot_failure {
            return CreateOutcome::NeverJoins;
        }
        let secs = lognormal(
            rng,
            self.boot_median.as_secs_f64(),
            self.boot_sigma,
            self.boot_min.as_secs_f64(),
            self.boot_max.as_secs_f64(),
        );
        CreateOutcome::Joins(Duration::from_secs_f64(secs))
    }

    /// Billed periods for a server that lived `lifetime` (at least one).
    pub fn billed_periods(&self, lifetime: Duration) -> u64 {
        let period = self.billing_period.as_secs().max(1);
        lifetime.as_secs().div_ceil(period).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bills_started_hours() {
        let m = HetznerModel::default();
        assert_eq!(m.billed_periods(Duration::ZERO), 1);
        assert_eq!(m.billed_periods(Duration::from_secs(3599)), 1);
        assert_eq!(m.billed_periods(Duration::from_secs(3600)), 1);
        assert_eq!(m.billed_periods(Duration::from_secs(3601)), 2);
    }
}
