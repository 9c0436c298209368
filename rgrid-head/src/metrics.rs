//! The task path's Prometheus metrics (conventions: [`rgrid_core::metrics`]): what the event
//! loop counts as tasks move, what it samples once a second (tasks, nodes, heartbeat lag), and
//! what the store's writer commits. The loop holds its handles ([`LoopMetrics`]), so a task
//! costs a few atomic adds; without an endpoint the handles do nothing.

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use rgrid_core::TaskState;

use crate::cluster::{NodeState, Shape};

const TASKS: &str = "rgrid_tasks";
const SUBMITTED: &str = "rgrid_tasks_submitted_total";
const ENDED: &str = "rgrid_tasks_ended_total";
const QUEUE_WAIT: &str = "rgrid_task_queue_wait_seconds";
const RUN_TIME: &str = "rgrid_task_run_seconds";
const PLACEMENT: &str = "rgrid_placement_round_seconds";
const NODES: &str = "rgrid_nodes";
const HEARTBEAT_LAG: &str = "rgrid_heartbeat_lag_seconds";
const COMMIT_ROWS: &str = "rgrid_store_commit_rows";
const COMMIT_SECONDS: &str = "rgrid_store_commit_seconds";
const OBJECTS: &str = "rgrid_objects";
const OBJECT_BYTES: &str = "rgrid_object_store_bytes";

/// Shapes with a label of their own, at most; later ones share `other`, so the label sets (which
/// the recorder keeps for the life of the process) stay bounded.
const MAX_SHAPE_LABELS: usize = 64;

/// Describes the metrics (their `HELP` lines). Call once the recorder is installed.
pub(crate) fn describe() {
    metrics::describe_gauge!(
        TASKS,
        "Open tasks by state (pending, queued, assigned, running), sampled once a second"
    );
    metrics::describe_counter!(SUBMITTED, "Tasks accepted (new ids only)");
    metrics::describe_counter!(ENDED, "Tasks that ended, by their final state");
    metrics::describe_histogram!(
        QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Time from entering the queue to placement, by shape (resources and constraints)"
    );
    metrics::describe_histogram!(
        RUN_TIME,
        metrics::Unit::Seconds,
        "Time from placement to the end of the last attempt, by shape"
    );
    metrics::describe_histogram!(
        PLACEMENT,
        metrics::Unit::Seconds,
        "Time the event loop spends in one scheduling round"
    );
    metrics::describe_gauge!(
        NODES,
        "Nodes by state (ready, suspect, draining, dead, left, removed), sampled once a second"
    );
    metrics::describe_gauge!(
        HEARTBEAT_LAG,
        metrics::Unit::Seconds,
        "Longest silence of a node with a session, sampled once a second"
    );
    metrics::describe_histogram!(
        COMMIT_ROWS,
        "Rows written by one store commit (group commit batch size)"
    );
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one store commit, retries included"
    );
    metrics::describe_gauge!(OBJECTS, "Objects in the object store");
    metrics::describe_gauge!(
        OBJECT_BYTES,
        metrics::Unit::Bytes,
        "Bytes of the objects in the object store (what max_object_bytes limits)"
    );
}

/// The object store holds `count` objects of `bytes` bytes in all.
pub(crate) fn objects_stored(count: usize, bytes: u64) {
    metrics::gauge!(OBJECTS).set(count as f64);
    metrics::gauge!(OBJECT_BYTES).set(bytes as f64);
}

/// A commit of `rows` rows took `took`.
pub(crate) fn committed(rows: usize, took: Duration) {
    metrics::histogram!(COMMIT_ROWS).record(rows as f64);
    metrics::histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
}

/// The histograms of one task shape.
#[derive(Clone)]
pub(crate) struct ShapeTimes {
    pub queue_wait: Histogram,
    pub run: Histogram,
}

impl ShapeTimes {
    fn labelled(label: String) -> Self {
        Self {
            queue_wait: metrics::histogram!(QUEUE_WAIT, "shape" => label.clone()),
            run: metrics::histogram!(RUN_TIME, "shape" => label),
        }
    }
}

/// The event loop's handles.
pub(crate) struct LoopMetrics {
    tasks: Vec<(TaskState, Gauge)>,
    ended: Vec<Counter>,
    submitted: Counter,
    placement: Histogram,
    nodes: Vec<Gauge>,
    heartbeat_lag: Gauge,
    /// The histograms of each shape seen (kept after the shape's last task, so a shape that
    /// comes and goes with each task formats its label once), at most [`MAX_SHAPE_LABELS`].
    shapes: HashMap<Shape, ShapeTimes>,
    /// Those of every later shape.
    other: Option<ShapeTimes>,
    /// When the gauges were last set ([`rgrid_core::time::monotonic_ms`]).
    sampled_ms: Option<u64>,
}

impl LoopMetrics {
    pub(crate) fn new() -> Self {
        Self {
            tasks: (TaskState::ALL.into_iter())
                .filter(|s| !s.is_terminal())
                .map(|s| (s, metrics::gauge!(TASKS, "state" => s.as_str())))
                .collect(),
            ended: (TaskState::ALL.into_iter())
                .map(|s| metrics::counter!(ENDED, "state" => s.as_str()))
                .collect(),
            submitted: metrics::counter!(SUBMITTED),
            placement: metrics::histogram!(PLACEMENT),
            nodes: (NodeState::ALL.into_iter())
                .map(|s| metrics::gauge!(NODES, "state" => s.as_str()))
                .collect(),
            heartbeat_lag: metrics::gauge!(HEARTBEAT_LAG),
            shapes: HashMap::new(),
            other: None,
            sampled_ms: None,
        }
    }

    pub(crate) fn submitted(&self, tasks: usize) {
        self.submitted.increment(tasks as u64);
    }

    pub(crate) fn ended(&self, state: TaskState) {
        self.ended[state as usize].increment(1);
    }

    pub(crate) fn placement_round(&self, took: Duration) {
        self.placement.record(took.as_secs_f64());
    }

    /// The histograms of `shape`, labelled `label()` the first time it is seen.
    pub(crate) fn shape(&mut self, shape: &Shape, label: impl FnOnce() -> String) -> ShapeTimes {
        if let Some(times) = self.shapes.get(shape) {
            return times.clone();
        }
        if self.shapes.len() >= MAX_SHAPE_LABELS {
            return (self.other)
                .get_or_insert_with(|| ShapeTimes::labelled("other".to_owned()))
                .clone();
        }
        let times = ShapeTimes::labelled(label());
        self.shapes.insert(shape.clone(), times.clone());
        times
    }

    /// Whether a second has passed since the gauges were last set (and if so, from now on it
    /// has not).
    pub(crate) fn sample_due(&mut self, now_ms: u64) -> bool {
        if self.sampled_ms.is_some_and(|at| now_ms < at + 1000) {
            return false;
        }
        self.sampled_ms = Some(now_ms);
        true
    }

    /// Sets the gauges: open tasks by state, nodes by state (indexed as [`NodeState::ALL`]),
    /// and the longest silence of a connected node.
    pub(crate) fn sample(
        &self,
        open: impl Fn(TaskState) -> u64,
        nodes: [u64; NodeState::ALL.len()],
        lag: Duration,
    ) {
        for (state, gauge) in &self.tasks {
            gauge.set(open(*state) as f64);
        }
        for (gauge, n) in self.nodes.iter().zip(nodes) {
            gauge.set(n as f64);
        }
        self.heartbeat_lag.set(lag.as_secs_f64());
    }
}
