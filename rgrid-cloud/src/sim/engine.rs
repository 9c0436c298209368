//! The discrete-event engine: a virtual clock, an event heap (arrivals, task ends, node joins,
//! drain deadlines, policy wake-ups), a FIFO scheduler that places queued tasks on ready nodes
//! (skipping shapes that do not fit, like the head), and the two autoscalers it can run — rgrid's
//! [`policy::decide`](crate::policy::decide) and the earlier Python design
//! ([`BaselineConfig`]) — against the same [`HetznerModel`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rgrid_core::Resources;

use crate::config::{AutoscalerConfig, NodeTypeConfig};
use crate::policy::{self, Action, Demand, ProvisionFailure, ServerState, ServerView, Snapshot};
use crate::provider::{FailureKind, ServerId};

use super::model::{CreateOutcome, HetznerModel};
use super::report::Report;
use super::trace::Trace;

/// The autoscaler the simulation runs.
#[derive(Clone, Debug)]
pub enum SimPolicy {
    /// rgrid's policy with this configuration (its node types are also the price list).
    Rgrid(Box<AutoscalerConfig>),
    /// The earlier Python RGrid design.
    Baseline(BaselineConfig),
}

/// The earlier Python RGrid design: poll every minute; when at least `queue_threshold` tasks
/// queue, add workers for them at `tasks_per_worker` each (counting workers still booting),
/// up to `max_workers`; terminate idle workers in minute `terminate_minute` of their billing
/// hour. Workers are all one type.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineConfig {
    /// Provision only when at least this many tasks queue. Default: 5.
    pub queue_threshold: usize,
    /// Task slots per worker. Default: 2.
    pub tasks_per_worker: u32,
    /// Most workers at once. Default: 10.
    pub max_workers: u32,
    /// Polling interval. Default: 60 s.
    pub check_interval: Duration,
    /// Idle workers are terminated from this minute of their billing hour on. Default: 55.
    pub terminate_minute: u64,
    /// Worker type; `None`: the cheapest type that holds `tasks_per_worker` of the trace's
    /// largest task. Default: `None`.
    pub worker_type: Option<String>,
    /// Workers that have not joined after this long are terminated (a courtesy the sim extends
    /// to the baseline so that it does not leak machines). Default: 10 min.
    pub join_timeout: Duration,
    /// Location. Default: `fsn1`.
    pub location: String,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            queue_threshold: 5,
            tasks_per_worker: 2,
            max_workers: 10,
            check_interval: Duration::from_secs(60),
            terminate_minute: 55,
            worker_type: None,
            join_timeout: Duration::from_secs(600),
            location: "fsn1".into(),
        }
    }
}

/// Simulation settings shared by both policies.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The cloud.
    pub model: HetznerModel,
    /// Seed of the cloud's randomness (boot times, failures).
    pub seed: u64,
    /// rgrid's driver coalesces events: it decides at most this long after an event.
    /// Default: 2 s.
    pub debounce: Duration,
    /// The run stops this long after the last arrival even if tasks remain (they count as
    /// unfinished, waiting until then). Default: 12 h.
    pub grace: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            model: HetznerModel::default(),
            seed: 1,
            debounce: Duration::from_secs(2),
            grace: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    Finish(usize, usize),
    Join(usize),
    DrainDeadline(usize),
    Decide,
    Tick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Booting,
    Ready,
    Draining,
    Deleted,
}

struct Node {
    ty: usize,
    created: Duration,
    state: State,
    free: Resources,
    slots: Option<u32>,
    running: u32,
    idle_since: Option<Duration>,
}

struct Task {
    arrival: Duration,
    duration: Duration,
    resources: Resources,
    start: Option<Duration>,
    end: Option<Duration>,
    /// The node it runs or ran on.
    node: Option<usize>,
}

/// The head's arrival rate counts the tasks submitted within this window.
const ARRIVAL_WINDOW: Duration =
    Duration::from_secs(policy::RATE_BLOCK.as_secs() * policy::RATE_BLOCKS as u64);

/// Virtual time zero as a wall-clock time, for the policy.
fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

struct Sim<'a> {
    types: &'a [NodeTypeConfig],
    opts: &'a SimOptions,
    rng: ChaCha8Rng,
    now: Duration,
    seq: u64,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    decides: BTreeSet<Duration>,
    tasks: Vec<Task>,
    queue: Vec<usize>,
    nodes: Vec<Node>,
    failures: Vec<ProvisionFailure>,
    finished: usize,
    /// Runtime of finished tasks per shape (sum, count): the head's estimate for the policy.
    runtimes: Vec<(Resources, Duration, u32)>,
    /// Arrival times per shape within the last [`ARRIVAL_WINDOW`], oldest first: the head's
    /// arrival rate for the policy.
    arrivals: Vec<(Resources, VecDeque<Duration>)>,
    cost: f64,
    node_hours: u64,
    created: u32,
    unavailable: u32,
}

/// Runs `trace` under `policy` and reports cost and queue wait.
pub fn simulate(
    trace: &Trace,
    policy: &SimPolicy,
    types: &[NodeTypeConfig],
    opts: &SimOptions,
) -> Report {
    let mut sim = Sim {
        types,
        opts,
        rng: ChaCha8Rng::seed_from_u64(opts.seed),
        now: Duration::ZERO,
        seq: 0,
        events: BinaryHeap::new(),
        decides: BTreeSet::new(),
        tasks: trace
            .tasks
            .iter()
            .map(|t| Task {
                arrival: t.arrival,
                duration: t.duration,
                resources: t.resources.clone(),
                start: None,
                end: None,
                node: None,
            })
            .collect(),
        queue: Vec::new(),
        nodes: Vec::new(),
        failures: Vec::new(),
        finished: 0,
        runtimes: Vec::new(),
        arrivals: Vec::new(),
        cost: 0.0,
        node_hours: 0,
        created: 0,
        unavailable: 0,
    };
    for i in 0..sim.tasks.len() {
        let at = sim.tasks[i].arrival;
        sim.push(at, Event::Arrive(i));
    }
    let worker_type = match policy {
        SimPolicy::Rgrid(_) => {
            sim.schedule_decide(Duration::ZERO);
            0
        }
        SimPolicy::Baseline(b) => {
            sim.push(Duration::ZERO, Event::Tick);
            baseline_type(b, trace, types)
        }
    };
    let horizon = trace.span() + opts.grace;

    while let Some(Reverse((at, _, event))) = sim.events.pop() {
        if at > horizon {
            break;
        }
        sim.now = at;
        match event {
            Event::Arrive(t) => {
                sim.queue.push(t);
                sim.arrived(t);
                sim.touched(policy);
            }
            Event::Finish(t, n) => {
                sim.finish(t, n);
                sim.touched(policy);
            }
            Event::DrainDeadline(n) => {
                sim.hand_back(n);
                sim.touched(policy);
            }
            Event::Join(n) => {
                if sim.nodes[n].state == State::Booting {
                    sim.nodes[n].state = State::Ready;
                    sim.nodes[n].idle_since = Some(at);
                    sim.touched(policy);
                }
            }
            Event::Decide => {
                sim.decides.remove(&at);
                if let SimPolicy::Rgrid(config) = policy {
                    sim.rgrid_step(config);
                }
            }
            Event::Tick => {
                if let SimPolicy::Baseline(b) = policy {
                    sim.baseline_step(b, worker_type);
                    if !sim.done() {
                        sim.push(at + b.check_interval, Event::Tick);
                    }
                }
            }
        }
        sim.place();
        if sim.done() {
            break;
        }
    }
    let end = sim.now.min(horizon);
    let left = sim
        .nodes
        .iter()
        .filter(|n| n.state != State::Deleted)
        .count() as u32;
    for n in 0..sim.nodes.len() {
        if sim.nodes[n].state != State::Deleted {
            sim.now = end;
            sim.delete(n);
        }
    }
    let name = match policy {
        SimPolicy::Rgrid(_) => "rgrid".to_owned(),
        SimPolicy::Baseline(_) => format!("baseline ({})", types[worker_type].name),
    };
    Report::new(
        name,
        &trace.name,
        sim.tasks
            .iter()
            .map(|t| (t.arrival, t.start, t.end))
            .collect(),
        end,
        sim.cost,
        sim.node_hours,
        sim.created,
        sim.unavailable,
    )
    .with_servers_left(left)
}

/// The cheapest type holding `tasks_per_worker` of the trace's largest task.
fn baseline_type(b: &BaselineConfig, trace: &Trace, types: &[NodeTypeConfig]) -> usize {
    if let Some(name) = &b.worker_type {
        if let Some(i) = types.iter().position(|t| &t.name == name) {
            return i;
        }
    }
    let mut need = Resources::default();
    for t in &trace.tasks {
        need.cpu_millis = need.cpu_millis.max(t.resources.cpu_millis);
        need.memory_bytes = need.memory_bytes.max(t.resources.memory_bytes);
        need.gpus = need.gpus.max(t.resources.gpus);
    }
    let k = u64::from(b.tasks_per_worker);
    let slots = Resources {
        cpu_millis: need.cpu_millis * k,
        memory_bytes: need.memory_bytes * k,
        gpus: need.gpus * b.tasks_per_worker,
        custom: BTreeMap::new(),
    };
    let mut order: Vec<usize> = (0..types.len()).collect();
    order.sort_by(|&a, &b| types[a].hourly_price.total_cmp(&types[b].hourly_price));
    order
        .into_iter()
        .find(|&i| types[i].capacity().fits(&slots))
        .unwrap_or(0)
}

impl Sim<'_> {
    fn push(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    fn schedule_decide(&mut self, at: Duration) {
        if self.decides.insert(at) {
            self.push(at, Event::Decide);
        }
    }

    /// Something changed: rgrid's driver decides soon (coalescing a burst of events).
    fn touched(&mut self, policy: &SimPolicy) {
        if let SimPolicy::Rgrid(_) = policy {
            let latest = self.now + self.opts.debounce;
            if self.decides.range(self.now..=latest).next().is_none() {
                self.schedule_decide(latest);
            }
        }
    }

    fn done(&self) -> bool {
        self.finished == self.tasks.len()
            && self.queue.is_empty()
            && self.nodes.iter().all(|n| n.state == State::Deleted)
    }

    fn finish(&mut self, t: usize, n: usize) {
        let node = &mut self.nodes[n];
        // Lost with its node, or handed back at the node's drain deadline.
        if node.state == State::Deleted || self.tasks[t].node != Some(n) {
            return;
        }
        if let Ok(free) = node.free.checked_add(&self.tasks[t].resources) {
            node.free = free;
        }
        node.running -= 1;
        if let Some(s) = node.slots.as_mut() {
            *s += 1;
        }
        if node.running == 0 {
            node.idle_since = Some(self.now);
        }
        self.tasks[t].end = Some(self.now);
        self.finished += 1;
        let task = &self.tasks[t];
        let ran = self.now - task.start.unwrap_or(self.now);
        match self.runtimes.iter_mut().find(|r| r.0 == task.resources) {
            Some(r) => {
                r.1 += ran;
                r.2 += 1;
            }
            None => self.runtimes.push((task.resources.clone(), ran, 1)),
        }
    }

    /// Records an arrival for the shape's arrival rate, forgetting those out of the window.
    fn arrived(&mut self, t: usize) {
        let need = &self.tasks[t].resources;
        let now = self.now;
        match self.arrivals.iter_mut().find(|a| &a.0 == need) {
            Some((_, times)) => {
                while times.front().is_some_and(|&at| at + ARRIVAL_WINDOW <= now) {
                    times.pop_front();
                }
                times.push_back(now);
            }
            None => self.arrivals.push((need.clone(), VecDeque::from([now]))),
        }
    }

    /// The head's sustained arrival rate of shape `need`: the median ten-minute block of the
    /// last [`ARRIVAL_WINDOW`], per second.
    fn arrival_rate(&self, need: &Resources) -> f64 {
        let mut blocks = [0u32; policy::RATE_BLOCKS];
        if let Some((_, times)) = self.arrivals.iter().find(|a| &a.0 == need) {
            for &at in times {
                let block = ((self.now - at).as_secs() / policy::RATE_BLOCK.as_secs()) as usize;
                if let Some(count) = blocks.get_mut(block) {
                    *count += 1;
                }
            }
        }
        policy::sustained_rate(blocks)
    }

    /// How long the running tasks of shape `need` have been running, on average: the head's
    /// lower bound on their runtime.
    fn running_for(&self, need: &Resources) -> Option<Duration> {
        let (sum, n) = self
            .tasks
            .iter()
            .filter(|t| &t.resources == need && t.end.is_none())
            .filter_map(|t| t.start)
            .fold((Duration::ZERO, 0u32), |(sum, n), start| {
                (sum + (self.now - start), n + 1)
            });
        (n > 0).then(|| sum / n)
    }

    /// The head's estimate, per node, of when its running tasks end: the latest start plus the
    /// mean runtime of finished tasks of the same shape; `None` for a node running nothing or
    /// a task of a shape none of which has finished yet.
    fn busy_until(&self) -> Vec<Option<Duration>> {
        // Per node: the latest expected end so far, and whether one is unknown.
        let mut until = vec![(None, false); self.nodes.len()];
        for task in self.tasks.iter().filter(|t| t.end.is_none()) {
            let (Some(n), Some(start)) = (task.node, task.start) else {
                continue;
            };
            let runtime = self.runtimes.iter().find(|r| r.0 == task.resources);
            match runtime {
                Some((_, sum, count)) => until[n].0 = until[n].0.max(Some(start + *sum / *count)),
                None => until[n].1 = true,
            }
        }
        until
            .into_iter()
            .map(|(at, unknown)| at.filter(|_| !unknown))
            .collect()
    }

    /// FIFO placement, skipping shapes that fit nowhere right now.
    fn place(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut rest = Vec::with_capacity(self.queue.len());
        let mut stuck: Vec<Resources> = Vec::new();
        let queue = std::mem::take(&mut self.queue);
        for t in queue {
            let need = &self.tasks[t].resources;
            if stuck.contains(need) {
                rest.push(t);
                continue;
            }
            let slot = self
                .nodes
                .iter()
                .position(|n| n.state == State::Ready && n.slots != Some(0) && n.free.fits(need));
            let Some(n) = slot else {
                stuck.push(need.clone());
                rest.push(t);
                continue;
            };
            let node = &mut self.nodes[n];
            if let Ok(free) = node.free.checked_sub(need) {
                node.free = free;
            }
            node.running += 1;
            if let Some(s) = node.slots.as_mut() {
                *s -= 1;
            }
            node.idle_since = None;
            self.tasks[t].start = Some(self.now);
            self.tasks[t].node = Some(n);
            let end = self.now + self.tasks[t].duration;
            self.push(end, Event::Finish(t, n));
        }
        self.queue = rest;
    }

    /// A drained node's deadline has passed: like rgrid's node, it kills what still runs there
    /// and hands it back; the head requeues it (in submission order) to run again from the
    /// start. Its wait then counts from its arrival to its last start.
    fn hand_back(&mut self, n: usize) {
        if self.nodes[n].state != State::Draining || self.nodes[n].running == 0 {
            return;
        }
        for (t, task) in self.tasks.iter_mut().enumerate() {
            if task.node == Some(n) && task.end.is_none() {
                task.start = None;
                task.node = None;
                self.queue.push(t);
            }
        }
        let tasks = &self.tasks;
        self.queue.sort_by_key(|&t| (tasks[t].arrival, t));
        let node = &mut self.nodes[n];
        node.free = self.types[node.ty].capacity();
        node.running = 0;
        node.idle_since = Some(self.now);
    }

    /// The head's arrival load: the cpu (millis) the arrivals of every shape with a known
    /// runtime keep busy, its sustained arrival rate × its mean runtime × its cpu.
    fn arrival_load(&self) -> u64 {
        let load: f64 = self
            .arrivals
            .iter()
            .filter_map(|(need, _)| {
                let (_, sum, n) = self.runtimes.iter().find(|r| &r.0 == need)?;
                let runtime = (*sum / *n).as_secs_f64();
                Some(self.arrival_rate(need) * runtime * need.cpu_millis as f64)
            })
            .sum();
        load as u64
    }

    fn create(&mut self, ty: usize, location: &str, slots: Option<u32>) -> bool {
        match self.opts.model.create(&mut self.rng) {
            CreateOutcome::Unavailable => {
                self.unavailable += 1;
                self.failures.push(ProvisionFailure {
                    node_type: self.types[ty].name.clone(),
                    location: location.to_owned(),
                    kind: FailureKind::Unavailable,
                    at: epoch() + self.now,
                });
                false
            }
            outcome => {
                self.created += 1;
                tracing::trace!(at = self.now.as_secs(), node_type = %self.types[ty].name, queued = self.queue.len(), "sim: create");
                let n = self.nodes.len();
                self.nodes.push(Node {
                    ty,
                    created: self.now,
                    state: State::Booting,
                    free: self.types[ty].capacity(),
                    slots,
                    running: 0,
                    idle_since: None,
                });
                if let CreateOutcome::Joins(after) = outcome {
                    self.push(self.now + after, Event::Join(n));
                }
                true
            }
        }
    }

    fn delete(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.state == State::Deleted {
            return;
        }
        node.state = State::Deleted;
        tracing::trace!(at = self.now.as_secs(), node_type = %self.types[node.ty].name, age = (self.now - node.created).as_secs(), "sim: delete");
        let hours = self.opts.model.billed_periods(self.now - node.created);
        self.node_hours += hours;
        self.cost += hours as f64 * self.types[node.ty].hourly_price;
        // Tasks still running there (none in these models) are lost with it.
    }

    fn rgrid_step(&mut self, config: &AutoscalerConfig) {
        let now = epoch() + self.now;
        let cooldown = config.unavailable_cooldown;
        self.failures.retain(|f| f.at + cooldown > now);
        let mut demand: Vec<Demand> = Vec::new();
        for &t in &self.queue {
            let task = &self.tasks[t];
            match demand.iter_mut().find(|d| d.resources == task.resources) {
                Some(d) => d.count += 1,
                None => demand.push(Demand {
                    resources: task.resources.clone(),
                    selector: Vec::new(),
                    count: 1,
                    oldest: epoch() + task.arrival,
                    expected_runtime: self
                        .runtimes
                        .iter()
                        .find(|r| r.0 == task.resources)
                        .map(|r| r.1 / r.2),
                    arrival_rate: Some(self.arrival_rate(&task.resources)),
                    running_for: self.running_for(&task.resources),
                }),
            }
        }
        let busy_until = self.busy_until();
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.state != State::Deleted)
            .map(|(i, n)| {
                let ty = &self.types[n.ty];
                ServerView {
                    server: Some(ServerId(i as u64)),
                    name: format!("node-{i}"),
                    node_type: ty.name.clone(),
                    state: match n.state {
                        State::Booting => ServerState::Provisioning,
                        State::Ready => ServerState::Ready,
                        _ => ServerState::Draining,
                    },
                    created: epoch() + n.created,
                    labels: policy::type_labels(config, ty),
                    capacity: ty.capacity(),
                    free: n.free.clone(),
                    running: n.running,
                    idle_since: n.idle_since.map(|t| epoch() + t),
                    busy_until: busy_until[i].map(|t| epoch() + t),
                }
            })
            .collect();
        let snapshot = Snapshot {
            demand,
            servers: nodes,
            failures: self.failures.clone(),
            arrival_load: Some(self.arrival_load()),
        };
        let decision = policy::decide(config, &snapshot, now);
        let mut again = false;
        for action in decision.actions {
            match action {
                Action::Create {
                    node_type,
                    location,
                } => {
                    if let Some(ty) = self.types.iter().position(|t| t.name == node_type) {
                        if !self.create(ty, &location, None) {
                            again = true;
                        }
                    }
                }
                Action::Drain { server, reason, .. } => {
                    let n = server.0 as usize;
                    let node = &mut self.nodes[n];
                    if node.state == State::Ready {
                        node.state = State::Draining;
                        let deadline = policy::drain_deadline(reason, self.now - node.created);
                        self.push(self.now + deadline, Event::DrainDeadline(n));
                        again = true;
                    }
                }
                Action::Delete { server, .. } => self.delete(server.0 as usize),
            }
        }
        if again {
            self.schedule_decide(self.now + self.opts.debounce);
        }
        if let Some(at) = decision.next_wakeup {
            if let Ok(offset) = at.duration_since(epoch()) {
                self.schedule_decide(offset);
            }
        }
    }

    fn baseline_step(&mut self, b: &BaselineConfig, ty: usize) {
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            if node.state == State::Booting && self.now - node.created >= b.join_timeout {
                self.delete(n);
            }
        }
        let live = self
            .nodes
            .iter()
            .filter(|n| n.state != State::Deleted)
            .count() as u32;
        let booting = self
            .nodes
            .iter()
            .filter(|n| n.state == State::Booting)
            .count() as u32;
        let queued = self.queue.len();
        if queued >= b.queue_threshold {
            let wanted = (queued as u32).div_ceil(b.tasks_per_worker.max(1));
            let add = wanted
                .saturating_sub(booting)
                .min(b.max_workers.saturating_sub(live));
            for _ in 0..add {
                self.create(ty, &b.location.clone(), Some(b.tasks_per_worker));
            }
        }
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            if node.state == State::Ready && node.running == 0 {
                let minute = ((self.now - node.created).as_secs() % 3600) / 60;
                if minute >= b.terminate_minute {
                    self.delete(n);
                }
            }
        }
    }
}
