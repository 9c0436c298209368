//! What a simulation run measured — cost, billed node-hours, queue-wait percentiles, makespan —
//! and the comparison table the `autoscale_sim` example prints.

use std::fmt::Write as _;
use std::time::Duration;

/// The outcome of one policy on one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Policy name.
    pub policy: String,
    /// Trace name.
    pub trace: String,
    /// Tasks in the trace.
    pub tasks: usize,
    /// Tasks that never ran before the run ended (their wait counts until then).
    pub unfinished: usize,
    /// Total price of every started hour of every server.
    pub cost: f64,
    /// Billed server-hours.
    pub node_hours: u64,
    /// Median queue wait (arrival to start).
    pub wait_p50: Duration,
    /// 95th percentile queue wait.
    pub wait_p95: Duration,
    /// First arrival to last completion.
    pub makespan: Duration,
    /// Servers created.
    pub servers_created: u32,
    /// Creates refused as sold out.
    pub unavailable: u32,
    /// Servers still alive when the run ended (0 unless it hit the time limit).
    pub servers_left: u32,
}

impl Report {
    /// Builds a report from per-task `(arrival, start, end)` times.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        policy: String,
        trace: &str,
        times: Vec<(Duration, Option<Duration>, Option<Duration>)>,
        end: Duration,
        cost: f64,
        node_hours: u64,
        servers_created: u32,
        unavailable: u32,
    ) -> Self {
        let mut waits: Vec<Duration> = times
            .iter()
            .map(|(arrival, start, _)| start.unwrap_or(end).saturating_sub(*arrival))
            .collect();
        waits.sort();
        let first = times.iter().map(|t| t.0).min().unwrap_or_default();
        let last = times
            .iter()
            .map(|t| t.2.unwrap_or(end))
            .max()
            .unwrap_or_default();
        Self {
            policy,
            trace: trace.to_owned(),
            tasks: times.len(),
            unfinished: times.iter().filter(|t| t.2.is_none()).count(),
            cost,
            node_hours,
            wait_p50: percentile(&waits, 0.50),
            wait_p95: percentile(&waits, 0.95),
            makespan: last.saturating_sub(first),
            servers_created,
            unavailable,
            servers_left: 0,
        }
    }

    pub(crate) fn with_servers_left(mut self, left: u32) -> Self {
        self.servers_left = left;
        self
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A table of `(baseline, rgrid)` pairs with the cost ratio, and totals.
pub fn comparison_table(pairs: &[(Report, Report)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<17} {:>5} {:>9} {:>7} {:>8} {:>8} {:>9} {:>7} {:>5} {:>6}",
        "trace",
        "policy",
        "tasks",
        "cost EUR",
        "node-h",
        "wait p50",
        "wait p95",
        "makespan",
        "servers",
        "sold",
        "unfin."
    );
    let mut totals = (0.0, 0.0);
    for (base, ours) in pairs {
        for r in [base, ours] {
            let _ = writeln!(
                out,
                "{:<8} {:<17} {:>5} {:>9.3} {:>7} {:>8} {:>8} {:>9} {:>7} {:>5} {:>6}",
                r.trace,
                r.policy,
                r.tasks,
                r.cost,
                r.node_hours,
                secs(r.wait_p50),
                secs(r.wait_p95),
                secs(r.makespan),
                r.servers_created,
                r.unavailable,
                r.unfinished
            );
        }
        totals.0 += base.cost;
        totals.1 += ours.cost;
        let verdict = if ours.wait_p95 <= base.wait_p95 {
            "p95 equal or better"
        } else {
            "p95 WORSE"
        };
        let _ = writeln!(
            out,
            "{:<8} rgrid/baseline cost = {:.2}x, {verdict}\n",
            "",
            ours.cost / base.cost.max(f64::MIN_POSITIVE)
        );
    }
    let _ = writeln!(
        out,
        "all traces: baseline {:.3} EUR, rgrid {:.3} EUR, ratio {:.2}x",
        totals.0,
        totals.1,
        totals.1 / totals.0.max(f64::MIN_POSITIVE)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_secs(50));
        assert_eq!(percentile(&v, 0.95), Duration::from_secs(95));
        assert_eq!(percentile(&[], 0.95), Duration::ZERO);
    }
}
