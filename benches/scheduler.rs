//! Benchmarks of `rgrid_core::scheduler`, the head's hot path:
//!
//! - `placement/{pack,spread}/N`: `schedule()` placing one queued task in a half-full cluster of
//!   N = 100, 1,000 and 10,000 nodes of mixed sizes, tasks of mixed shapes and constraints;
//!   `placement_cycle/*`: the same with the enqueue before and the release after.
//! - `burst/*`: 100,000 queued tasks placed on 1,000 nodes in one `schedule()` (and the
//!   power-of-two baseline placing the same tasks).
//! - `idle/*`: `schedule()` when nothing changed, with 1,000 shapes waiting.
//! - Placement quality, printed before the timings: after a burst, the free capacity stranded on
//!   nodes too small for the next task, against a power-of-two-choices baseline.
//!
//! Run: `cargo bench --bench scheduler`.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion};
use rgrid_core::resources::Resources;
use rgrid_core::scheduler::{Decision, NodeView, QueuedTask, Scheduler, SchedulerConfig};
use rgrid_core::task::{Constraints, Strategy};
use rgrid_core::{NodeId, TaskId};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Node sizes of the mixed cluster: cpu millicores, memory.
const NODE_SIZES: [(u64, u64); 3] = [
    (48_000, 192 * GIB),
    (80_000, 320 * GIB),
    (112_000, 448 * GIB),
];

/// Task shapes: cpu millicores, memory. 100,000 of them (in equal parts) use about 90% of the
/// cpu of 1,000 nodes.
const TASK_SHAPES: [(u64, u64); 6] = [
    (100, 128 * MIB),
    (250, 512 * MIB),
    (500, GIB),
    (1000, 2 * GIB),
    (2000, 4 * GIB),
    (500, 4 * GIB),
];

/// Deterministic pseudo-random numbers (splitmix64), so that every run measures the same work.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `count` nodes of mixed sizes; every other one is labelled `site=eu-1`, the rest `site=us-1`.
fn cluster(count: usize) -> Vec<NodeView> {
    (0..count)
        .map(|i| {
            let (cpu, mem) = NODE_SIZES[i % NODE_SIZES.len()];
            let site = if i % 2 == 0 { "eu-1" } else { "us-1" };
            NodeView {
                id: NodeId::new(),
                total: Resources::new(cpu, mem),
                labels: BTreeMap::from([("site".to_owned(), site.to_owned())]),
                capabilities: BTreeSet::from(["docker".to_owned()]),
            }
        })
        .collect()
}

/// Task `i` of a mixed stream: shapes in turn, every third one asking for `site=eu-1`.
fn task(i: usize, strategy: Strategy) -> QueuedTask {
    let (cpu, mem) = TASK_SHAPES[i % TASK_SHAPES.len()];
    let mut constraints = Constraints::default();
    if i % 3 == 0 {
        constraints
            .selector
            .push("site=eu-1".parse().expect("a valid selector"));
    }
    QueuedTask {
        id: TaskId::new(),
        resources: Resources::new(cpu, mem),
        constraints,
        strategy,
        priority: 0,
    }
}

fn scheduler(nodes: &[NodeView], pack_threshold: f64) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig { pack_threshold });
    for node in nodes {
        s.upsert_node(node.clone());
    }
    s
}

/// A cluster where each node has a random share (0–100%, 50% on average) of its cpu and of its
/// memory allocated.
fn half_full(count: usize) -> Scheduler {
    let nodes = cluster(count);
    let mut s = scheduler(&nodes, 0.5);
    let mut rng = Rng(7);
    for node in &nodes {
        let share = |total: u64, rng: &mut Rng| total / 1000 * rng.below(1000);
        let used = Resources::new(
            share(node.total.cpu_millis, &mut rng),
            share(node.total.memory_bytes, &mut rng),
        );
        s.allocate(node.id, &used)
            .expect("less than the node's totals");
    }
    s
}

/// Places one task and releases it again, so the cluster stays half full; returns the time
/// `schedule()` took if `timed`.
fn place_one(s: &mut Scheduler, task: &QueuedTask, timed: bool) -> Duration {
    s.enqueue(task.clone());
    let start = timed.then(Instant::now);
    let decisions = s.schedule();
    let spent = start.map_or(Duration::ZERO, |start| start.elapsed());
    match decisions.as_slice() {
        [Decision::Place { node, .. }] => s.release(*node, &task.resources),
        other => panic!("expected one placement, got {other:?}"),
    }
    spent
}

/// `placement/*`: the time of `schedule()` placing one queued task. `placement_cycle/*`: the
/// whole cycle the head goes through (enqueue, schedule, release).
fn placement(c: &mut Criterion) {
    for (name, strategy) in [("pack", Strategy::Pack), ("spread", Strategy::Spread)] {
        let tasks: Vec<QueuedTask> = (0..6).map(|i| task(i, strategy)).collect();
        for count in [100, 1_000, 10_000] {
            let mut s = half_full(count);
            let mut stream = tasks.iter().cycle();
            let id = BenchmarkId::new(name, count);
            c.benchmark_group("placement")
                .bench_function(id.clone(), |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| place_one(&mut s, stream.next().expect("endless"), true))
                            .sum()
                    })
                });
            c.benchmark_group("placement_cycle")
                .bench_function(id, |b| {
                    b.iter(|| place_one(&mut s, stream.next().expect("endless"), false))
                });
        }
    }
}

fn burst(c: &mut Criterion) {
    const TASKS: usize = 100_000;
    let nodes = cluster(1_000);
    let tasks: Vec<QueuedTask> = (0..TASKS).map(|i| task(i, Strategy::Pack)).collect();
    let queued = || {
        let mut s = scheduler(&nodes, 0.5);
        tasks.iter().for_each(|t| s.enqueue(t.clone()));
        s
    };
    let mut group = c.benchmark_group("burst");
    group.sample_size(10);
    group.bench_function("schedule_100k_on_1k_nodes", |b| {
        // Returning the scheduler keeps its drop out of the measurement.
        b.iter_batched(queued, |mut s| (s.schedule(), s), BatchSize::PerIteration)
    });
    group.bench_function("enqueue_and_schedule_100k_on_1k_nodes", |b| {
        b.iter_batched(
            || (scheduler(&nodes, 0.5), tasks.clone()),
            |(mut s, tasks)| {
                tasks.into_iter().for_each(|t| s.enqueue(t));
                (s.schedule(), s)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("power_of_two_baseline_100k_on_1k_nodes", |b| {
        b.iter(|| PowerOfTwo::new(&nodes, 0.5, 1).place_all(&tasks))
    });
    group.finish();
}

/// `schedule()` when nothing changed: 1,000 shapes wait for capacity (a node type could fit
/// them), none of them is looked at.
fn idle(c: &mut Criterion) {
    let nodes = cluster(1_000);
    let mut s = scheduler(&nodes, 0.5);
    let huge = NodeView {
        total: Resources::new(1_000_000, 1 << 50),
        ..nodes[0].clone()
    };
    s.set_node_types(vec![huge]);
    for cpu in 0..1_000 {
        s.enqueue(QueuedTask {
            resources: Resources::new(200_000 + cpu, GIB),
            ..task(0, Strategy::Pack)
        });
    }
    assert!(s.schedule().is_empty());
    c.bench_function("idle/schedule_with_1k_waiting_shapes", |b| {
        b.iter(|| black_box(s.schedule()))
    });
}

/// The baseline: for each task, look at nodes in a random order until two fit it, and take the
/// better of the two by the same score as rgrid's pack (fullest under the threshold after
/// placing, else least utilised; threshold 0 is spread), as Nomad scores two nodes after a
/// shuffle.
struct PowerOfTwo<'a> {
    nodes: &'a [NodeView],
    free: Vec<Resources>,
    threshold: f64,
    rng: Rng,
}

impl<'a> PowerOfTwo<'a> {
    fn new(nodes: &'a [NodeView], threshold: f64, seed: u64) -> Self {
        let free = nodes.iter().map(|n| n.total.clone()).collect();
        Self {
            nodes,
            free,
            threshold,
            rng: Rng(seed),
        }
    }

    /// Places what fits; returns how many.
    fn place_all(&mut self, tasks: &[QueuedTask]) -> usize {
        tasks.iter().filter(|t| self.place(t)).count()
    }

    fn place(&mut self, task: &QueuedTask) -> bool {
        let n = self.nodes.len() as u64;
        // A stride coprime with n walks every node once, from a random start.
        let stride = [7_919, 7_907, 7_901]
            .into_iter()
            .find(|p| n % p != 0)
            .unwrap_or(1);
        let start = self.rng.below(n);
        let fitting = (0..n)
            .map(|k| ((start + k * stride) % n) as usize)
            .filter(|&i| self.fits(i, task))
            .take(2);
        let Some(best) =
            fitting.max_by(|&a, &b| self.score(a, task).total_cmp(&self.score(b, task)))
        else {
            return false;
        };
        self.free[best] = self.free[best]
            .checked_sub(&task.resources)
            .expect("it fits");
        true
    }

    fn fits(&self, i: usize, task: &QueuedTask) -> bool {
        let node = &self.nodes[i];
        self.free[i].fits(&task.resources)
            && (task.constraints.selector.iter())
                .all(|req| req.matches(|k| node.labels.get(k).map(String::as_str)))
    }

    /// Higher is better: under the threshold, the fuller the better; above it, the emptier.
    fn score(&self, i: usize, task: &QueuedTask) -> f64 {
        let (total, free) = (&self.nodes[i].total, &self.free[i]);
        let used = |t: u64, f: u64, want: u64| (t - f + want) as f64 / t as f64;
        let after = used(total.cpu_millis, free.cpu_millis, task.resources.cpu_millis).max(used(
            total.memory_bytes,
            free.memory_bytes,
            task.resources.memory_bytes,
        ));
        let now = used(total.cpu_millis, free.cpu_millis, 0).max(used(
            total.memory_bytes,
            free.memory_bytes,
            0,
        ));
        if after <= self.threshold {
            1.0 + after
        } else {
            1.0 - now
        }
    }
}

/// One line of the quality table: tasks placed; for the largest task of the mix and for two
/// larger ones, the share of free cpu stranded on nodes too small for it; the spread of cpu
/// utilisation over the nodes (standard deviation, in points).
fn quality_line(policy: &str, placed: usize, nodes: &[NodeView], free: &[Resources]) {
    let total_free: u64 = free.iter().map(|f| f.cpu_millis).sum();
    let mut line = format!("{policy:<22} placed {placed:>6}");
    for (cpu, mem) in [(2_000, 4 * GIB), (8_000, 32 * GIB), (16_000, 64 * GIB)] {
        let probe = Resources::new(cpu, mem);
        let stranded: u64 = (free.iter().filter(|f| !f.fits(&probe)))
            .map(|f| f.cpu_millis)
            .sum();
        let share = 100.0 * stranded as f64 / total_free.max(1) as f64;
        line += &format!(" | {:>2}c {share:>5.1}%", cpu / 1000);
    }
    let utilisation: Vec<f64> = (nodes.iter().zip(free))
        .map(|(n, f)| 100.0 * (1.0 - f.cpu_millis as f64 / n.total.cpu_millis as f64))
        .collect();
    let mean = utilisation.iter().sum::<f64>() / utilisation.len() as f64;
    let variance = utilisation.iter().map(|u| (u - mean).powi(2)).sum::<f64>();
    let deviation = (variance / utilisation.len() as f64).sqrt();
    println!("{line} | cpu use ±{deviation:.1}");
}

/// Prints placement quality after a burst of 100,000 mixed tasks on 1,000 empty nodes, for
/// spread, the default hybrid and pure packing, against power-of-two choices with the same score.
fn report_quality() {
    let nodes = cluster(1_000);
    println!(
        "placement quality after 100,000 mixed tasks on 1,000 empty nodes (~90% of the cpu):\n\
         free cpu stranded on nodes too small for a 2c/4G (largest of the mix), 8c/32G, 16c/64G task"
    );
    for (name, strategy, threshold) in [
        ("spread", Strategy::Spread, 0.0),
        ("pack t=0.5 (default)", Strategy::Pack, 0.5),
        ("pack t=1", Strategy::Pack, 1.0),
    ] {
        let tasks: Vec<QueuedTask> = (0..100_000).map(|i| task(i, strategy)).collect();
        let mut s = scheduler(&nodes, threshold);
        tasks.iter().for_each(|t| s.enqueue(t.clone()));
        let placed = s.schedule().len();
        let free: Vec<Resources> = (nodes.iter())
            .map(|n| s.free(n.id).cloned().unwrap_or_default())
            .collect();
        quality_line(&format!("rgrid {name}"), placed, &nodes, &free);
        let mut p2c = PowerOfTwo::new(&nodes, threshold, 1);
        let placed = p2c.place_all(&tasks);
        quality_line(&format!("p2c   {name}"), placed, &nodes, &p2c.free);
    }
}

criterion_group!(benches, placement, burst, idle);

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` only checks that the benches run.
    if std::env::args().any(|arg| arg == "--bench") {
        report_quality();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
