//! What the event loop tells the autoscaler (queued demand by shape, nodes with their load and
//! idleness) and what it hears back (why each shape's tasks wait, shown in task listings).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rgrid_cloud::policy::{self, RuntimeStats, Stream};
use rgrid_cloud::Demand;
use rgrid_core::protocol::TaskInfo;
use rgrid_core::task::{Affinity, Constraints};
use rgrid_core::time::{monotonic_ms, unix_ms};
use rgrid_core::{AttemptId, Resources, TaskId, TaskState};

use super::tasks::{ShapeId, Shapes};
use super::{Cluster, Comm, NodeState};

/// A task's shape: tasks of one shape are interchangeable for scheduling and scaling.
pub(crate) type Shape = (Resources, Constraints);

/// Why the queued tasks of one shape wait, as runs of `(reason, task count)` in queue order;
/// `None` where the scheduler's own reason applies (a running node has room).
pub(crate) type WaitRuns = Vec<(Option<String>, u32)>;

/// Queued demand and nodes, as the autoscaler needs them.
pub(crate) struct AutoscaleView {
    /// Shapes that fit no node now but could fit a node or a node type, oldest task first in
    /// each; hard node affinity is left out (no new node can serve it).
    pub demand: Vec<(Shape, Demand)>,
    /// Every node the head knows, including ones that left or died.
    pub nodes: Vec<NodeSummary>,
    /// Every shape submitted in the last hour with a known mean runtime, with its sustained
    /// arrival rate ([`rgrid_cloud::Snapshot::streams`]).
    pub streams: Vec<Stream>,
}

/// One node, as the autoscaler sees it.
pub(crate) struct NodeSummary {
    pub name: String,
    pub state: NodeState,
    pub labels: BTreeMap<String, String>,
    pub total: Resources,
    pub free: Resources,
    pub running: u32,
    pub idle_since: Option<SystemTime>,
    /// When its attempts are expected to end: the latest over them of the start plus a high
    /// quantile of its shape's runtimes ([`RuntimeStats::ends_within`]); `None` when one of
    /// them has a shape with no known runtime (or nothing runs).
    pub busy_until: Option<SystemTime>,
    /// Since when it has been out of touch, while suspect (when it was last heard from).
    pub suspect_since: Option<SystemTime>,
}

/// What the autoscaler learns per shape: submissions over the last hour, in one-minute
/// buckets, for the sustained arrival rate the policy sizes capacity with
/// ([`rgrid_cloud::policy::sustained_rate`]), and the runtimes of its last finished attempts.
pub(super) struct Arrivals {
    /// Counts per minute, indexed by minute number modulo the window.
    buckets: [u32; Self::MINUTES],
    /// The minute (since the loop started) the buckets were last brought up to date.
    minute: u64,
    /// Runtimes of its finished attempts: their mean (kept in the loop's `runtimes` too) and
    /// quantiles.
    runtimes: RuntimeStats,
}

impl Default for Arrivals {
    fn default() -> Self {
        Self {
            buckets: [0; Self::MINUTES],
            minute: 0,
            runtimes: RuntimeStats::default(),
        }
    }
}

impl Arrivals {
    const MINUTES: usize = 60;

    /// Counts `n` submissions in `minute`.
    pub(super) fn add(&mut self, minute: u64, n: u32) {
        self.advance(minute);
        let slot = (minute % Self::MINUTES as u64) as usize;
        self.buckets[slot] = self.buckets[slot].saturating_add(n);
    }

    /// The sustained rate, per second, over the hour up to `minute` (the median of its
    /// ten-minute blocks, the newest block ending with `minute`).
    fn rate(&mut self, minute: u64) -> f64 {
        self.advance(minute);
        let per_block = Self::MINUTES / policy::RATE_BLOCKS;
        let mut blocks = [0u32; policy::RATE_BLOCKS];
        for age in 0..Self::MINUTES {
            let slot = (minute + (Self::MINUTES - age) as u64) % Self::MINUTES as u64;
            blocks[age / per_block] += self.buckets[slot as usize];
        }
        policy::sustained_rate(blocks)
    }

    /// Empties the buckets of the minutes that passed since the last update.
    fn advance(&mut self, minute: u64) {
        let passed = minute.saturating_sub(self.minute).min(Self::MINUTES as u64);
        for m in 1..=passed {
            self.buckets[((self.minute + m) % Self::MINUTES as u64) as usize] = 0;
        }
        self.minute = self.minute.max(minute);
    }
}

impl<C: Comm> Cluster<C> {
    /// Counts a submission for its shape's arrival rate.
    pub(super) fn count_arrival(&mut self, shape: &Shape) {
        let minute = self.minute();
        match self.arrivals.get_mut(shape) {
            Some(arrivals) => arrivals.add(minute, 1),
            None => {
                let mut arrivals = Arrivals::default();
                arrivals.add(minute, 1);
                self.arrivals.insert(shape.clone(), arrivals);
            }
        }
    }

    /// Minutes since the loop started.
    fn minute(&self) -> u64 {
        monotonic_ms().saturating_sub(self.started_ms) / 60_000
    }

    pub(super) fn autoscale_view(&mut self) -> AutoscaleView {
        // Per shape: the oldest queued task, and how long its running attempts have run,
        // summed, with how many run.
        let mut oldest: HashMap<ShapeId, u64> = HashMap::new();
        let mut running: HashMap<ShapeId, (u64, u64)> = HashMap::new();
        let now_ms = unix_ms();
        for task in self.tasks.values() {
            match task.state {
                TaskState::Queued => {
                    let at = oldest.entry(task.shape).or_insert(task.queued_at_ms);
                    *at = (*at).min(task.queued_at_ms);
                }
                TaskState::Assigned | TaskState::Running => {
                    let (sum, n) = running.entry(task.shape).or_default();
                    *sum += now_ms.saturating_sub(task.started_at_ms);
                    *n += 1;
                }
                _ => {}
            }
        }
        let minute = self.minute();
        let shapes = &self.shapes;
        let by_shape =
            |w: &rgrid_core::scheduler::Waiting<'_>| self.tasks.get(&w.first).map(|t| t.shape);
        let arrivals = &mut self.arrivals;
        let demand = self
            .scheduler
            .waiting()
            .filter(|w| !matches!(w.constraints.affinity, Some(Affinity::Hard(_))))
            .map(|w| {
                let id = by_shape(&w);
                let queued_at = id.and_then(|id| oldest.get(&id)).copied().unwrap_or(now_ms);
                let shape = (w.resources.clone(), w.constraints.clone());
                let demand = Demand {
                    resources: w.resources.clone(),
                    selector: w.constraints.selector.clone(),
                    count: u32::try_from(w.tasks).unwrap_or(u32::MAX),
                    oldest: wall_clock(queued_at),
                    expected_runtime: self.runtimes.get(&shape).copied(),
                    arrival_rate: arrivals.get_mut(&shape).map(|a| a.rate(minute)),
                    running_for: id
                        .and_then(|id| running.get(&id))
                        .map(|(sum, n)| Duration::from_millis(sum / n)),
                };
                (shape, demand)
            })
            .collect();
        let nodes = self
            .nodes
            .iter()
            .filter(|node| node.state != NodeState::Removed)
            .map(|node| NodeSummary {
                name: node.name.clone(),
                state: node.state,
                labels: node
                    .hello
                    .as_ref()
                    .map(|h| h.labels.clone())
                    .unwrap_or_default(),
                total: node
                    .hello
                    .as_ref()
                    .map(|h| h.resources.clone())
                    .unwrap_or_default(),
                free: self.scheduler.free(node.id).cloned().unwrap_or_default(),
                running: u32::try_from(node.running.len()).unwrap_or(u32::MAX),
                idle_since: node.idle_since_ms.map(wall_clock),
                busy_until: self.busy_until(node.running.keys(), shapes, now_ms),
                suspect_since: (node.state == NodeState::Suspect).then(|| {
                    let heard = (node.session.as_ref()).map_or(node.silent_since_ms, |s| {
                        s.last_seen.load(Ordering::Relaxed)
                    });
                    wall_clock(now_ms.saturating_sub(monotonic_ms().saturating_sub(heard)))
                }),
            })
            .collect();
        let streams = (self.arrivals.iter_mut())
            .filter_map(|(shape, arrivals)| {
                Some(Stream {
                    resources: shape.0.clone(),
                    rate: arrivals.rate(minute),
                    runtime: arrivals.runtimes.mean()?,
                })
            })
            .collect();
        AutoscaleView {
            demand,
            nodes,
            streams,
        }
    }

    /// When `attempts` are expected to have ended, if every one's shape has a known runtime.
    fn busy_until<'a>(
        &self,
        attempts: impl Iterator<Item = &'a AttemptId>,
        shapes: &Shapes,
        now_ms: u64,
    ) -> Option<SystemTime> {
        let mut until: Option<u64> = None;
        for attempt in attempts {
            let task = self.tasks.get(&attempt.task)?;
            let stats = &self.arrivals.get(shapes.get(task.shape))?.runtimes;
            let ran = Duration::from_millis(now_ms.saturating_sub(task.started_at_ms));
            let runtime = stats.ends_within(ran)?;
            let end = task
                .started_at_ms
                .saturating_add(u64::try_from(runtime.as_millis()).unwrap_or(u64::MAX));
            until = until.max(Some(end));
        }
        until.map(wall_clock)
    }

    /// Folds a successful attempt's run time into its shape's runtimes.
    pub(super) fn learn_runtime(&mut self, task: TaskId, finished_at_ms: u64) {
        if !self.autoscaling {
            return;
        }
        let Some(task) = self.tasks.get(&task) else {
            return;
        };
        let ran = Duration::from_millis(finished_at_ms.saturating_sub(task.started_at_ms));
        let shape = self.shapes.get(task.shape);
        if !self.arrivals.contains_key(shape) {
            self.arrivals.insert(shape.clone(), Arrivals::default());
        }
        let Some(arrivals) = self.arrivals.get_mut(shape) else {
            return;
        };
        arrivals.runtimes.record(ran);
        if let Some(mean) = arrivals.runtimes.mean() {
            self.runtimes.insert(shape.clone(), mean);
        }
    }

    /// Puts the autoscaler's reasons on queued tasks of a listing sorted in queue order.
    pub(super) fn explain_waits(&self, listing: &mut [TaskInfo]) {
        if self.waits.is_empty() {
            return;
        }
        let runs: HashMap<&Shape, &WaitRuns> = self.waits.iter().map(|(s, w)| (s, w)).collect();
        let mut seen: HashMap<ShapeId, u32> = HashMap::new();
        for info in listing.iter_mut().filter(|t| t.state == TaskState::Queued) {
            let Some(task) = self.tasks.get(&info.task) else {
                continue;
            };
            let Some(runs) = runs.get(self.shapes.get(task.shape)) else {
                continue;
            };
            let position = seen.entry(task.shape).or_default();
            if let Some(reason) = run_at(runs, *position) {
                info.detail = Some(reason.clone());
            }
            *position += 1;
        }
    }
}

/// The reason of the `position`-th task (from 0) in `runs`; past the end, the last run's.
fn run_at(runs: &WaitRuns, position: u32) -> Option<&String> {
    let mut end = 0u32;
    for (reason, count) in runs {
        end = end.saturating_add(*count);
        if position < end {
            return reason.as_ref();
        }
    }
    runs.last().and_then(|(reason, _)| reason.as_ref())
}

/// A wall-clock time in milliseconds since the Unix epoch.
fn wall_clock(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_give_each_position_its_reason() {
        let runs: WaitRuns = vec![(None, 2), (Some("provisioning".into()), 3)];
        assert_eq!(run_at(&runs, 0), None);
        assert_eq!(run_at(&runs, 1), None);
        assert_eq!(run_at(&runs, 2).map(String::as_str), Some("provisioning"));
        assert_eq!(run_at(&runs, 4).map(String::as_str), Some("provisioning"));
        assert_eq!(run_at(&runs, 9).map(String::as_str), Some("provisioning"));
    }

    #[test]
    fn the_arrival_rate_follows_a_stream_and_shrugs_off_a_burst() {
        let mut a = Arrivals::default();
        // Six a minute for an hour: one a ten seconds.
        for minute in 0..60 {
            a.add(minute, 6);
        }
        assert_eq!(a.rate(59), 0.1);
        // A burst of 5,000 in one minute lands in one block: the median stays.
        a.add(59, 5000);
        assert_eq!(a.rate(59), 0.1);
        // The stream stops: the rate falls once half the blocks are empty.
        assert_eq!(a.rate(80), 0.1);
        assert_eq!(a.rate(90), 0.1 / 2.0);
        assert_eq!(a.rate(100), 0.0);
        assert_eq!(a.rate(500), 0.0);
    }
}
