//! What each task cost: one definition for the head (which stores it) and the simulator (which
//! checks it against the bill).
//!
//! **The rule.** An attempt holds a *share* of its node — the largest of its shares of the
//! node's cpu, memory and GPUs — for the time it runs. Each billed hour of a server is split
//! among the attempts that ran in it in proportion to share × time in that hour: an attempt pays
//! `share × ms × rate`, where the hour's rate is its price over the share-milliseconds used in
//! it. So every attempt pays its node-seconds at the hourly price, and the hour's idle time is
//! apportioned to the attempts of that same hour by their use of it. A billed hour in which
//! nothing ran (a server booting, or kept warm) is carried forward to the next hour of the same
//! server that ran something; idle hours after the last use (the server is deleted, or leaves)
//! go to that last hour with use. A server that never ran anything is not paid by any attempt
//! ([`Ledger::close`] returns its price); the simulator charges it to the tasks it was created
//! for.
//!
//! [`Ledger`] follows one server online, in O(1) per event (the head's event loop drives it as
//! attempts start and end); [`attempt_cost`] applies the closed hours to one attempt (the head
//! does the same sum in SQL over its `node_hours` rows).

use std::time::Duration;

use rgrid_core::Resources;

/// An attempt's share of a node of `capacity`: the largest of its shares of cpu, memory and
/// GPUs (0 for a dimension the node does not have).
pub fn share(need: &Resources, capacity: &Resources) -> f64 {
    let part = |n: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    part(need.cpu_millis, capacity.cpu_millis)
        .max(part(need.memory_bytes, capacity.memory_bytes))
        .max(part(u64::from(need.gpus), u64::from(capacity.gpus)))
}

/// A billed hour that closed with use: its price (with the idle hours carried into it) goes to
/// the attempts that ran in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClosedHour {
    /// `[start_ms, end_ms)`, in the clock the ledger was driven with.
    pub start_ms: u64,
    pub end_ms: u64,
    pub price: f64,
    /// Share-milliseconds used in it (> 0).
    pub used: f64,
}

impl ClosedHour {
    /// What one share-millisecond in this hour costs.
    pub fn rate(&self) -> f64 {
        self.price / self.used
    }
}

/// What the ledger reports as time passes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Billed {
    /// An hour with use closed.
    Hour(ClosedHour),
    /// The server ended with idle hours after its last use: their price is added to the hour
    /// with use that started at `start_ms`.
    Amend { start_ms: u64, extra: f64 },
}

/// One server's billed hours, followed online.
#[derive(Clone, Debug)]
pub struct Ledger {
    hourly_price: f64,
    /// Price of one billed period.
    price: f64,
    period_ms: u64,
    hour_start_ms: u64,
    /// Sum of the shares of the attempts running now.
    busy: f64,
    /// Until when `used` is integrated.
    last_ms: u64,
    /// Share-milliseconds used in the current hour.
    used: f64,
    /// Price of idle hours not paid yet.
    carried: f64,
    /// Start of the last hour that closed with use.
    last_with_use: Option<u64>,
}

impl Ledger {
    /// A server billed from `start_ms` at `hourly_price` per hour, in periods of `period`
    /// (Hetzner: one hour).
    pub fn new(start_ms: u64, hourly_price: f64, period: Duration) -> Self {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            hourly_price,
            price: hourly_price * period_ms as f64 / 3_600_000.0,
            period_ms,
            hour_start_ms: start_ms,
            busy: 0.0,
            last_ms: start_ms,
            used: 0.0,
            carried: 0.0,
            last_with_use: None,
        }
    }

    /// An attempt of `share` started (`delta` > 0) or ended (`delta` < 0) at `now_ms`.
    pub fn add_busy(&mut self, now_ms: u64, delta: f64, out: &mut Vec<Billed>) {
        self.advance(now_ms, out);
        self.busy = (self.busy + delta).max(0.0);
    }

    /// Time passed: closes every hour that ended by `now_ms`.
    pub fn advance(&mut self, now_ms: u64, out: &mut Vec<Billed>) {
        while now_ms >= self.hour_start_ms.saturating_add(self.period_ms) {
            let end = self.hour_start_ms.saturating_add(self.period_ms);
            self.integrate(end);
            self.close_hour(out);
        }
        self.integrate(now_ms);
    }

    /// The server ended at `end_ms` (deleted, or left the cluster): its started hour is billed
    /// in full. Returns what no attempt pays (the price of a server that never ran anything).
    pub fn close(mut self, end_ms: u64, out: &mut Vec<Billed>) -> f64 {
        self.advance(end_ms, out);
        let started = end_ms > self.hour_start_ms || self.last_with_use.is_none();
        if started {
            self.close_hour(out);
        }
        match self.last_with_use {
            Some(start_ms) if self.carried > 0.0 => {
                out.push(Billed::Amend {
                    start_ms,
                    extra: self.carried,
                });
                0.0
            }
            Some(_) => 0.0,
            None => self.carried,
        }
    }

    /// The server's hourly price.
    pub fn hourly_price(&self) -> f64 {
        self.hourly_price
    }

    fn integrate(&mut self, to_ms: u64) {
        if to_ms > self.last_ms {
            self.used += self.busy * (to_ms - self.last_ms) as f64;
            self.last_ms = to_ms;
        }
    }

    fn close_hour(&mut self, out: &mut Vec<Billed>) {
        let start_ms = self.hour_start_ms;
        let end_ms = start_ms.saturating_add(self.period_ms);
        if self.used > 0.0 {
            out.push(Billed::Hour(ClosedHour {
                start_ms,
                end_ms,
                price: self.price + self.carried,
                used: self.used,
            }));
            self.carried = 0.0;
            self.last_with_use = Some(start_ms);
        } else {
            self.carried += self.price;
        }
        self.used = 0.0;
        self.hour_start_ms = end_ms;
        self.last_ms = self.last_ms.max(end_ms);
    }
}

/// Applies amends to the hours they name.
pub fn apply_amends(billed: &[Billed]) -> Vec<ClosedHour> {
    let mut hours: Vec<ClosedHour> = Vec::new();
    for b in billed {
        match *b {
            Billed::Hour(hour) => hours.push(hour),
            Billed::Amend { start_ms, extra } => {
                if let Some(hour) = hours.iter_mut().rev().find(|h| h.start_ms == start_ms) {
                    hour.price += extra;
                }
            }
        }
    }
    hours
}

/// What an attempt of `share` that ran over `[start_ms, end_ms)` pays of the closed `hours` of
/// its server; the part of it in hours not closed yet is not included (see
/// [`held_cost`] for what that part costs at least).
pub fn attempt_cost(share: f64, start_ms: u64, end_ms: u64, hours: &[ClosedHour]) -> f64 {
    hours
        .iter()
        .map(|h| {
            let overlap = end_ms
                .min(h.end_ms)
                .saturating_sub(start_ms.max(h.start_ms));
            share * overlap as f64 * h.rate()
        })
        .sum()
}

/// An attempt's node-seconds at the hourly price, without any idle time: what it costs before
/// its hour closes.
pub fn held_cost(share: f64, millis: u64, hourly_price: f64) -> f64 {
    share * millis as f64 * hourly_price / 3_600_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_share_is_the_largest_dimension() {
        let node = Resources::new(4000, 8 * GIB);
        assert_eq!(share(&Resources::new(1000, 4 * GIB), &node), 0.5);
        assert_eq!(share(&Resources::new(2000, GIB), &node), 0.5);
        let mut gpu_node = node.clone();
        gpu_node.gpus = 1;
        let mut gpu_task = Resources::new(1000, GIB);
        gpu_task.gpus = 1;
        assert_eq!(share(&gpu_task, &gpu_node), 1.0);
    }

    /// Attempts `(share, start, end)` on one server from 0 to `end`: their costs, and what no
    /// attempt pays.
    fn run(price: f64, attempts: &[(f64, u64, u64)], end: u64) -> (Vec<f64>, f64) {
        let mut events: Vec<(u64, f64)> = attempts
            .iter()
            .flat_map(|&(s, a, b)| [(a, s), (b, -s)])
            .collect();
        events.sort_by_key(|e| e.0);
        let mut ledger = Ledger::new(0, price, Duration::from_secs(3600));
        let mut out = Vec::new();
        for (t, delta) in events {
            ledger.add_busy(t, delta, &mut out);
        }
        let unpaid = ledger.close(end, &mut out);
        let hours = apply_amends(&out);
        let costs = attempts
            .iter()
            .map(|&(s, a, b)| attempt_cost(s, a, b, &hours))
            .collect();
        (costs, unpaid)
    }

    #[test]
    fn the_costs_add_up_to_the_bill() {
        // Three billed hours (the last one started): an hour of boot before any use, then two
        // attempts, the second crossing into the third hour; then idle until deleted.
        let attempts = [
            (0.5, HOUR + 600_000, HOUR + 1_800_000),
            (0.25, HOUR + 1_200_000, 2 * HOUR + 900_000),
        ];
        let (costs, unpaid) = run(1.0, &attempts, 2 * HOUR + 2_000_000);
        assert_eq!(unpaid, 0.0);
        let total: f64 = costs.iter().sum();
        assert!(
            (total - 3.0).abs() < 1e-9,
            "{costs:?} add up to {total}, not the bill of 3"
        );
        // Hour 2 (with the boot hour carried in: price 2) has 0.5 × 20 min + 0.25 × 40 min
        // = 20 share-minutes, 10 of them the first attempt's; hour 3 (price 1, with the idle
        // rest) is the second attempt's alone.
        assert!((costs[0] - 1.0).abs() < 1e-9, "{costs:?}");
        assert!((costs[1] - 2.0).abs() < 1e-9, "{costs:?}");
    }

    #[test]
    fn every_attempt_pays_at_least_its_node_seconds() {
        let attempts = [(1.0, 0, HOUR / 2), (0.5, HOUR / 4, HOUR / 2)];
        let (costs, _) = run(2.0, &attempts, HOUR);
        for (&(s, a, b), cost) in attempts.iter().zip(&costs) {
            assert!(*cost >= held_cost(s, b - a, 2.0) - 1e-9);
        }
        assert!((costs.iter().sum::<f64>() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_server_that_never_ran_anything_is_unpaid() {
        let (costs, unpaid) = run(1.5, &[], 2 * HOUR + 1);
        assert!(costs.is_empty());
        assert!((unpaid - 4.5).abs() < 1e-9);
        // Deleted at once: one started hour.
        assert!((run(1.5, &[], 0).1 - 1.5).abs() < 1e-9);
    }
}
