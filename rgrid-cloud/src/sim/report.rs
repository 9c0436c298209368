//! What a simulation run measured — cost, billed node-hours, queue-wait percentiles, makespan,
//! the cost of each task — and the table the `autoscale_sim` example prints: every policy on
//! every trace, rgrid's cost next to the cheapest peer's and the seed's.

use std::fmt::Write as _;
use std::time::Duration;

use super::cost::TaskCosts;

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
    /// Total price of every started hour of every server: the bill.
    pub cost: f64,
    /// Billed server-hours.
    pub node_hours: u64,
    /// Median queue wait (arrival to last start).
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
    /// Attempts cut off (a drain's deadline, an eviction) and run again from the start.
    pub cut_off: u32,
    /// What each task cost (the bill split among them).
    pub task_costs: TaskCosts,
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
            cut_off: 0,
            task_costs: TaskCosts::default(),
        }
    }

    /// The tasks' costs added up, as a fraction of the bill (1.0 when every euro is
    /// attributed).
    pub fn attributed(&self) -> f64 {
        self.task_costs.total() / self.cost.max(f64::MIN_POSITIVE)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
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

/// Whether a policy is rgrid's own or the seed's (the others are the peers).
fn is_rgrid(r: &Report) -> bool {
    r.policy == "rgrid"
}

fn is_seed(r: &Report) -> bool {
    r.policy.starts_with("seed")
}

/// The table of every policy on every trace (`runs[trace][policy]`, same policies in the same
/// order for each), with rgrid's cost against the cheapest peer (Ray, cluster-autoscaler)
/// and the seed, and totals.
pub fn comparison_table(runs: &[Vec<Report>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<18} {:>5} {:>8} {:>6} {:>8} {:>8} {:>8} {:>7} {:>4} {:>4} {:>5} {:>9} {:>9} {:>6}",
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
        "cut",
        "unfin",
        "mEUR/task",
        "p95 task",
        "Σtasks"
    );
    let policies = runs.first().map_or(0, Vec::len);
    let mut totals = vec![0.0; policies];
    for reports in runs {
        for (i, r) in reports.iter().enumerate() {
            let mut per_task = r.task_costs.per_task.clone();
            per_task.sort_by(f64::total_cmp);
            let mean = r.task_costs.total() / per_task.len().max(1) as f64;
            let _ = writeln!(
                out,
                "{:<8} {:<18} {:>5} {:>8.3} {:>6} {:>8} {:>8} {:>8} {:>7} {:>4} {:>4} {:>5} {:>9.3} {:>9.3} {:>5.1}%",
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
                r.cut_off,
                r.unfinished,
                mean * 1000.0,
                percentile(&per_task, 0.95) * 1000.0,
                r.attributed() * 100.0,
            );
            if let Some(total) = totals.get_mut(i) {
                *total += r.cost;
            }
        }
        if let Some(verdict) = verdict(reports) {
            let _ = writeln!(out, "{:<8} {verdict}", "");
        }
        let _ = writeln!(out);
    }
    let first = runs.first().map(Vec::as_slice).unwrap_or_default();
    let names: Vec<String> = first
        .iter()
        .zip(&totals)
        .map(|(r, t)| format!("{} {t:.3}", r.policy))
        .collect();
    let _ = writeln!(out, "all traces, EUR: {}", names.join(", "));
    let worst = runs
        .iter()
        .flatten()
        .map(|r| (r.attributed() - 1.0).abs())
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "per-task costs add up to the bill within 1 % on every run: {} (worst {:.2} %)",
        if worst <= 0.01 { "yes" } else { "NO" },
        worst * 100.0
    );
    let total_of = |pick: fn(&Report) -> bool| {
        first
            .iter()
            .zip(&totals)
            .find(|(r, _)| pick(r))
            .map(|(_, t)| *t)
    };
    if let (Some(ours), Some(seed)) = (total_of(is_rgrid), total_of(is_seed)) {
        let _ = writeln!(
            out,
            "rgrid/seed in total = {:.2}x",
            ours / seed.max(f64::MIN_POSITIVE)
        );
    }
    out
}

/// rgrid against the cheapest peer and the seed on one trace.
fn verdict(reports: &[Report]) -> Option<String> {
    let ours = reports.iter().find(|r| is_rgrid(r))?;
    let peer = reports
        .iter()
        .filter(|r| !is_rgrid(r) && !is_seed(r))
        .min_by(|a, b| a.cost.total_cmp(&b.cost))?;
    let p95 = if ours.wait_p95 <= peer.wait_p95 {
        "p95 equal or better"
    } else {
        "p95 WORSE"
    };
    let mut line = format!(
        "rgrid = {:.2}x the cheapest peer ({}), {p95}",
        ours.cost / peer.cost.max(f64::MIN_POSITIVE),
        peer.policy
    );
    if let Some(seed) = reports.iter().find(|r| is_seed(r)) {
        let _ = write!(
            line,
            "; {:.2}x the seed",
            ours.cost / seed.cost.max(f64::MIN_POSITIVE)
        );
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_secs(50));
        assert_eq!(percentile(&v, 0.95), Duration::from_secs(95));
        assert_eq!(percentile::<Duration>(&[], 0.95), Duration::ZERO);
    }
}
