use std::collections::HashMap;

use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
use proptest::prelude::{ProptestConfig, Strategy as _, TestCaseError};

use super::*;

fn node(cpu: u64, mem: u64) -> NodeView {
    NodeView {
        id: NodeId::new(),
        total: Resources::new(cpu, mem),
        labels: BTreeMap::new(),
        capabilities: BTreeSet::from(["docker".to_owned()]),
    }
}

fn labelled(cpu: u64, site: &str) -> NodeView {
    let mut view = node(cpu, 1 << 30);
    view.labels.insert("site".into(), site.into());
    view
}

fn task(cpu: u64, mem: u64) -> QueuedTask {
    QueuedTask {
        id: TaskId::new(),
        resources: Resources::new(cpu, mem),
        constraints: Constraints::default(),
        strategy: Strategy::Pack,
        priority: 0,
    }
}

fn with(constraints: Constraints, cpu: u64) -> QueuedTask {
    QueuedTask {
        constraints,
        ..task(cpu, 1 << 20)
    }
}

fn scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig::default())
}

fn place(task: &QueuedTask, node: &NodeView) -> Decision {
    Decision::Place {
        task: task.id,
        node: node.id,
    }
}

fn reason(decisions: &[Decision]) -> String {
    match decisions {
        [Decision::Unschedulable { reason, .. }] => reason.clone(),
        other => panic!("expected one unschedulable task, got {other:?}"),
    }
}

/// How many of `decisions` went to each node.
fn per_node(decisions: &[Decision]) -> HashMap<NodeId, usize> {
    let mut counts = HashMap::new();
    for d in decisions {
        if let Decision::Place { node, .. } = d {
            *counts.entry(*node).or_default() += 1;
        }
    }
    counts
}

#[test]
fn big_task_does_not_block_small_ones() {
    let mut s = scheduler();
    let n = node(2000, 1 << 30);
    s.upsert_node(n.clone());
    s.allocate(n.id, &Resources::new(1000, 0))
        .expect("the node has room");
    let big = task(2000, 1 << 20);
    let small = task(500, 1 << 20);
    s.enqueue(big.clone());
    s.enqueue(small.clone());
    assert_eq!(s.schedule(), vec![place(&small, &n)]);
    assert_eq!(s.queued(), 1);
    s.release(n.id, &Resources::new(1000, 0));
    s.release(n.id, &small.resources);
    assert_eq!(s.schedule(), vec![place(&big, &n)]);
}

#[test]
fn priority_then_submission_order() {
    let mut s = scheduler();
    let a = task(1000, 1 << 20);
    let b = QueuedTask {
        id: TaskId::new(),
        priority: 5,
        ..a.clone()
    };
    let c = QueuedTask {
        id: TaskId::new(),
        ..a.clone()
    };
    for t in [&a, &b, &c] {
        s.enqueue(t.clone());
    }
    let n = node(1000, 1 << 30);
    s.upsert_node(n.clone());
    assert_eq!(s.schedule(), vec![place(&b, &n)]);
    for next in [&a, &c] {
        s.release(n.id, &a.resources);
        assert_eq!(s.schedule(), vec![place(next, &n)]);
    }
}

#[test]
fn impossible_task_is_unschedulable_with_the_resource_named() {
    let mut s = scheduler();
    s.upsert_node(node(2000, 1 << 30));
    s.enqueue(task(1000, 1 << 40));
    assert!(reason(&s.schedule()).contains("memory"));
    assert_eq!(s.queued(), 0);
}

#[test]
fn constraint_failures_name_the_constraint() {
    let mut s = scheduler();
    s.upsert_node(labelled(1000, "eu-1"));
    let selector = Constraints {
        selector: vec!["site=us-1".parse().expect("a valid label selector")],
        ..Constraints::default()
    };
    s.enqueue(with(selector, 100));
    assert!(reason(&s.schedule()).contains("site=us-1"));
    let capability = Constraints {
        capabilities: vec!["gpu".into()],
        ..Constraints::default()
    };
    s.enqueue(with(capability, 100));
    assert!(reason(&s.schedule()).contains("gpu"));
}

#[test]
fn tasks_wait_for_a_first_node_and_are_judged_when_it_joins() {
    let mut s = scheduler();
    let t = task(1000, 1 << 40);
    s.enqueue(t.clone());
    assert!(s.schedule().is_empty());
    assert_eq!(s.queued(), 1);
    assert!(s
        .explain(t.id)
        .expect("the task is queued")
        .contains("no node"));
    s.upsert_node(node(2000, 1 << 30));
    assert!(reason(&s.schedule()).contains("memory"));
}

#[test]
fn a_provisionable_node_type_makes_a_task_wait_not_fail() {
    let mut s = scheduler();
    s.upsert_node(node(1000, 1 << 30));
    s.set_node_types(vec![node(8000, 1 << 34)]);
    let t = task(4000, 1 << 30);
    s.enqueue(t.clone());
    assert!(s.schedule().is_empty());
    let waiting: Vec<Waiting<'_>> = s.waiting().collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].tasks, 1);
    assert!(s
        .explain(t.id)
        .expect("the task is queued")
        .contains("node type"));
    s.set_node_types(Vec::new());
    assert!(reason(&s.schedule()).contains("cpu"));
}

#[test]
fn hard_affinity_uses_only_that_node() {
    let mut s = scheduler();
    let (a, b) = (node(4000, 1 << 30), node(4000, 1 << 30));
    s.upsert_node(a.clone());
    s.upsert_node(b.clone());
    let pinned = |id| {
        with(
            Constraints {
                affinity: Some(Affinity::Hard(id)),
                ..Constraints::default()
            },
            1000,
        )
    };
    let t = pinned(b.id);
    s.enqueue(t.clone());
    assert_eq!(s.schedule(), vec![place(&t, &b)]);
    s.set_schedulable(b.id, false);
    let u = pinned(b.id);
    s.enqueue(u.clone());
    assert!(s.schedule().is_empty());
    assert!(s
        .explain(u.id)
        .expect("the task is queued")
        .contains("suspect"));
    s.set_schedulable(b.id, true);
    assert_eq!(s.schedule(), vec![place(&u, &b)]);
    s.enqueue(pinned(NodeId::new()));
    assert!(reason(&s.schedule()).contains("pinned"));
}

#[test]
fn soft_affinity_prefers_its_node_while_it_fits() {
    let mut s = scheduler();
    let (a, b) = (node(2000, 1 << 30), node(2000, 1 << 30));
    s.upsert_node(a.clone());
    s.upsert_node(b.clone());
    let soft = Constraints {
        affinity: Some(Affinity::Soft(b.id)),
        ..Constraints::default()
    };
    let tasks: Vec<QueuedTask> = (0..3).map(|_| with(soft.clone(), 1000)).collect();
    for t in &tasks {
        s.enqueue(t.clone());
    }
    let counts = per_node(&s.schedule());
    assert_eq!((counts[&b.id], counts[&a.id]), (2, 1));
}

#[test]
fn pack_fills_nodes_to_the_threshold_then_spreads() {
    let mut s = scheduler();
    let nodes: Vec<NodeView> = (0..3).map(|_| node(4000, 1 << 30)).collect();
    for n in &nodes {
        s.upsert_node(n.clone());
    }
    let burst = |s: &mut Scheduler, count: usize| {
        (0..count).for_each(|_| s.enqueue(task(1000, 1 << 20)));
        s.schedule()
    };
    let first = burst(&mut s, 2);
    assert_eq!(
        per_node(&first)[&nodes[0].id],
        2,
        "packs the first node to 50%"
    );
    let counts = per_node(&burst(&mut s, 4));
    assert!(nodes
        .iter()
        .all(|n| s.free(n.id).map(|f| f.cpu_millis) == Some(2000)));
    assert_eq!(counts.len(), 2, "then the next ones");
    let counts = per_node(&burst(&mut s, 3));
    assert_eq!(counts.len(), 3, "then spreads: {counts:?}");
}

#[test]
fn spread_prefers_the_least_loaded_node() {
    let mut s = scheduler();
    let nodes: Vec<NodeView> = (0..3).map(|_| node(4000, 1 << 30)).collect();
    for n in &nodes {
        s.upsert_node(n.clone());
    }
    s.allocate(nodes[1].id, &Resources::new(3000, 0))
        .expect("the node has room");
    for _ in 0..4 {
        s.enqueue(QueuedTask {
            strategy: Strategy::Spread,
            ..task(1000, 1 << 20)
        });
    }
    let counts = per_node(&s.schedule());
    assert_eq!((counts[&nodes[0].id], counts[&nodes[2].id]), (2, 2));
}

#[test]
fn a_class_that_fits_nowhere_is_set_aside_until_capacity_grows() {
    let mut s = scheduler();
    let (a, b) = (node(2000, 1 << 30), node(2000, 1 << 30));
    s.upsert_node(a.clone());
    s.upsert_node(b.clone());
    s.allocate(a.id, &Resources::new(2000, 0))
        .expect("the node has room");
    s.allocate(b.id, &Resources::new(1500, 0))
        .expect("the node has room");
    let t = task(1000, 1 << 20);
    s.enqueue(t.clone());
    assert!(s.schedule().is_empty());
    assert!(s.ready.is_empty(), "the class waits in its group");
    s.enqueue(task(1000, 1 << 20));
    assert!(s.ready.is_empty(), "more of the same shape do not wake it");
    s.release(b.id, &Resources::new(100, 0));
    assert!(
        s.ready.is_empty(),
        "a release too small to fit it does not wake it"
    );
    s.release(a.id, &Resources::new(1000, 0));
    assert_eq!(s.schedule(), vec![place(&t, &a)]);
}

#[test]
fn custom_resources_are_counted() {
    let mut s = scheduler();
    let mut n = node(4000, 1 << 30);
    n.total.custom.insert("license".into(), 1);
    s.upsert_node(n.clone());
    s.upsert_node(node(4000, 1 << 30));
    let mut t = task(100, 1 << 20);
    t.resources.custom.insert("license".into(), 1);
    let u = QueuedTask {
        id: TaskId::new(),
        ..t.clone()
    };
    s.enqueue(t.clone());
    s.enqueue(u.clone());
    assert_eq!(s.schedule(), vec![place(&t, &n)]);
    s.release(n.id, &t.resources);
    assert_eq!(s.schedule(), vec![place(&u, &n)]);
}

#[test]
fn upsert_keeps_allocations_and_follows_new_labels() {
    let mut s = scheduler();
    let mut n = labelled(4000, "eu-1");
    s.upsert_node(n.clone());
    s.allocate(n.id, &Resources::new(1000, 0))
        .expect("the node has room");
    let us = Constraints {
        selector: vec!["site=us-1".parse().expect("a valid label selector")],
        ..Constraints::default()
    };
    s.set_node_types(vec![labelled(4000, "us-1")]);
    let t = with(us, 1000);
    s.enqueue(t.clone());
    assert!(s.schedule().is_empty());
    n.labels.insert("site".into(), "us-1".into());
    s.upsert_node(n.clone());
    assert_eq!(s.schedule(), vec![place(&t, &n)]);
    assert_eq!(s.free(n.id).map(|f| f.cpu_millis), Some(2000));
}

#[test]
fn explain_counts_the_tasks_ahead() {
    let mut s = scheduler();
    s.upsert_node(node(1000, 1 << 30));
    let (a, b, c) = (
        task(1000, 1 << 20),
        task(1000, 1 << 20),
        task(1000, 1 << 20),
    );
    for t in [&a, &b, &c] {
        s.enqueue(t.clone());
    }
    assert!(s
        .explain(a.id)
        .expect("the task is queued")
        .contains("not tried"));
    assert_eq!(s.schedule().len(), 1);
    assert!(s
        .explain(c.id)
        .expect("the task is queued")
        .starts_with("1 tasks"));
    assert!(s
        .explain(b.id)
        .expect("the task is queued")
        .contains("none of the 1 schedulable nodes"));
    assert_eq!(s.explain(a.id), None);
    assert!(s.dequeue(b.id));
    assert!(!s.dequeue(b.id));
}

// ---- Property tests: a random cluster and a random sequence of events, checked against a model.

const SITES: [&str; 3] = ["eu-1", "eu-2", "us-1"];

#[derive(Clone, Debug)]
struct NodeArgs {
    cpu: u64,
    mem: u64,
    gpus: u32,
    license: u64,
    site: usize,
    docker: bool,
}

#[derive(Clone, Debug)]
struct TaskArgs {
    cpu: u64,
    mem: u64,
    gpus: u32,
    license: u64,
    site: Option<usize>,
    not_site: Option<usize>,
    docker: bool,
    /// (hard?, which node: an index into the live nodes, or past their end for an unknown one)
    affinity: Option<(bool, usize)>,
    spread: bool,
    priority: i32,
}

#[derive(Clone, Debug)]
enum Op {
    AddNode(NodeArgs),
    RemoveNode(usize),
    SetSchedulable(usize, bool),
    Relabel(usize, usize),
    Enqueue(TaskArgs),
    Dequeue(usize),
    Release(usize),
    Schedule,
}

fn node_args() -> impl proptest::strategy::Strategy<Value = NodeArgs> {
    (
        1u64..=8,
        1u64..=8,
        0u32..=2,
        0u64..=2,
        0..SITES.len(),
        any::<bool>(),
    )
        .prop_map(|(cpu, mem, gpus, license, site, docker)| NodeArgs {
            cpu: cpu * 1000,
            mem: mem << 30,
            gpus,
            license,
            site,
            docker,
        })
}

fn task_args() -> impl proptest::strategy::Strategy<Value = TaskArgs> {
    let size = (1u64..=6, 1u64..=6, 0u32..=1, 0u64..=1);
    let constraints = (
        proptest::option::weighted(0.3, 0..SITES.len()),
        proptest::option::weighted(0.2, 0..SITES.len()),
        proptest::bool::weighted(0.3),
        proptest::option::weighted(0.2, (any::<bool>(), 0usize..8)),
    );
    (size, constraints, any::<bool>(), -2i32..=2).prop_map(
        |((cpu, mem, gpus, license), (site, not_site, docker, affinity), spread, priority)| {
            TaskArgs {
                cpu: cpu * 700,
                mem: mem << 29,
                gpus,
                license,
                site,
                not_site,
                docker,
                affinity,
                spread,
                priority,
            }
        },
    )
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        2 => node_args().prop_map(Op::AddNode),
        1 => any::<usize>().prop_map(Op::RemoveNode),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, s)| Op::SetSchedulable(i, s)),
        1 => (any::<usize>(), 0..SITES.len()).prop_map(|(i, s)| Op::Relabel(i, s)),
        8 => task_args().prop_map(Op::Enqueue),
        1 => any::<usize>().prop_map(Op::Dequeue),
        3 => any::<usize>().prop_map(Op::Release),
        4 => Just(Op::Schedule),
    ]
}

fn found<T>(value: Option<T>, failure: &'static str) -> Result<T, TestCaseError> {
    value.ok_or_else(|| TestCaseError::fail(failure))
}

fn view_of(args: &NodeArgs) -> NodeView {
    let mut view = labelled(args.cpu, SITES[args.site]);
    view.total = Resources::new(args.cpu, args.mem);
    view.total.gpus = args.gpus;
    if args.license > 0 {
        view.total.custom.insert("license".into(), args.license);
    }
    if !args.docker {
        view.capabilities.clear();
    }
    view
}

/// The scheduler under test and what it should know.
struct Model {
    s: Scheduler,
    nodes: Vec<(NodeView, bool)>,
    types: Vec<NodeView>,
    queued: Vec<QueuedTask>,
    placed: Vec<(TaskId, NodeId, Resources)>,
}

impl Model {
    fn task(&self, args: &TaskArgs) -> QueuedTask {
        let mut resources = Resources::new(args.cpu, args.mem);
        resources.gpus = args.gpus;
        if args.license > 0 {
            resources.custom.insert("license".into(), args.license);
        }
        let mut constraints = Constraints::default();
        if let Some(site) = args.site {
            constraints.selector.push(
                format!("site={}", SITES[site])
                    .parse()
                    .expect("a valid label selector"),
            );
        }
        if let Some(site) = args.not_site {
            constraints.selector.push(
                format!("site!={}", SITES[site])
                    .parse()
                    .expect("a valid label selector"),
            );
        }
        if args.docker {
            constraints.capabilities.push("docker".into());
        }
        constraints.affinity = args.affinity.map(|(hard, i)| {
            let id = self.nodes.get(i).map_or_else(NodeId::new, |(n, _)| n.id);
            if hard {
                Affinity::Hard(id)
            } else {
                Affinity::Soft(id)
            }
        });
        QueuedTask {
            id: TaskId::new(),
            resources,
            constraints,
            strategy: if args.spread {
                Strategy::Spread
            } else {
                Strategy::Pack
            },
            priority: args.priority,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let pick = |i: usize, len: usize| (len > 0).then(|| i % len);
        match op {
            Op::AddNode(args) => {
                let view = view_of(args);
                self.s.upsert_node(view.clone());
                self.nodes.push((view, true));
            }
            Op::RemoveNode(i) => {
                if let Some(i) = pick(*i, self.nodes.len()) {
                    let (view, _) = self.nodes.remove(i);
                    self.s.remove_node(view.id);
                    self.placed.retain(|(_, node, _)| *node != view.id);
                }
            }
            Op::SetSchedulable(i, on) => {
                if let Some(i) = pick(*i, self.nodes.len()) {
                    self.nodes[i].1 = *on;
                    self.s.set_schedulable(self.nodes[i].0.id, *on);
                }
            }
            Op::Relabel(i, site) => {
                if let Some(i) = pick(*i, self.nodes.len()) {
                    let view = &mut self.nodes[i].0;
                    view.labels.insert("site".into(), SITES[*site].into());
                    self.s.upsert_node(view.clone());
                }
            }
            Op::Enqueue(args) => {
                let task = self.task(args);
                self.s.enqueue(task.clone());
                self.queued.push(task);
            }
            Op::Dequeue(i) => {
                if let Some(i) = pick(*i, self.queued.len()) {
                    let task = self.queued.remove(i);
                    prop_assert!(self.s.dequeue(task.id));
                }
            }
            Op::Release(i) => {
                if let Some(i) = pick(*i, self.placed.len()) {
                    let (_, node, resources) = self.placed.remove(i);
                    self.s.release(node, &resources);
                }
            }
            Op::Schedule => self.schedule()?,
        }
        self.check_allocations()
    }

    fn schedule(&mut self) -> Result<(), TestCaseError> {
        for decision in self.s.schedule() {
            let id = match &decision {
                Decision::Place { task, .. } | Decision::Unschedulable { task, .. } => *task,
            };
            let at = self.queued.iter().position(|t| t.id == id);
            let task = self
                .queued
                .remove(found(at, "decision for a task not queued")?);
            match decision {
                Decision::Place { node, .. } => {
                    let placed_on = self.nodes.iter().find(|(v, _)| v.id == node);
                    let (view, schedulable) = found(placed_on, "placed on an unknown node")?;
                    prop_assert!(schedulable, "placed on a node that takes no work");
                    prop_assert!(
                        satisfies(view, &task.constraints),
                        "hard constraint violated"
                    );
                    self.placed.push((task.id, node, task.resources));
                }
                Decision::Unschedulable { reason, .. } => {
                    prop_assert!(!(self.nodes.is_empty() && self.types.is_empty()));
                    prop_assert!(
                        !self.could_ever_fit(&task),
                        "unschedulable but fits: {reason}"
                    );
                }
            }
        }
        for task in &self.queued {
            let unknown = self.nodes.is_empty() && self.types.is_empty();
            prop_assert!(
                unknown || self.could_ever_fit(task),
                "an infeasible task waits"
            );
            for (view, schedulable) in &self.nodes {
                let free = found(self.s.free(view.id), "node forgotten")?;
                prop_assert!(
                    !(*schedulable
                        && satisfies(view, &task.constraints)
                        && free.fits(&task.resources)),
                    "a node fits a task that was left queued"
                );
            }
        }
        prop_assert_eq!(self.s.queued(), self.queued.len());
        Ok(())
    }

    fn could_ever_fit(&self, task: &QueuedTask) -> bool {
        let mut views = self.nodes.iter().map(|(v, _)| v).chain(&self.types);
        views.any(|v| satisfies(v, &task.constraints) && v.total.fits(&task.resources))
    }

    /// Every node's free amount is its total minus what was placed on it: never over-allocated.
    fn check_allocations(&self) -> Result<(), TestCaseError> {
        for (view, _) in &self.nodes {
            let mut used = Resources::default();
            for (_, node, resources) in &self.placed {
                if *node == view.id {
                    used = used.checked_add(resources)?;
                }
            }
            let expected = view.total.checked_sub(&used)?;
            prop_assert_eq!(self.s.free(view.id), Some(&expected));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Never over-allocates a node, never violates a hard constraint, places a task whenever a
    /// node fits it, reports unschedulable only when no node or node type could fit, and
    /// releasing everything returns every node to its totals.
    #[test]
    fn scheduler_keeps_its_invariants(
        types in proptest::collection::vec(node_args(), 0..2),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut model = Model {
            s: scheduler(),
            nodes: Vec::new(),
            types: types.iter().map(view_of).collect(),
            queued: Vec::new(),
            placed: Vec::new(),
        };
        model.s.set_node_types(model.types.clone());
        for op in &ops {
            model.apply(op)?;
        }
        model.apply(&Op::Schedule)?;
        for (_, node, resources) in std::mem::take(&mut model.placed) {
            model.s.release(node, &resources);
        }
        for (view, _) in &model.nodes {
            prop_assert_eq!(model.s.free(view.id), Some(&view.total));
        }
    }
}
