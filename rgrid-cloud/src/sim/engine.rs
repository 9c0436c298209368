//! The discrete-event engine: a virtual clock, an event heap (arrivals, attempt ends, node
//! joins, drain deadlines, autoscaler wake-ups), the cluster it changes (tasks, the FIFO
//! queue, servers and their billing, every attempt) and a FIFO scheduler that places queued
//! tasks on ready nodes (skipping shapes that fit nowhere right now, like the head). An
//! [`Autoscaler`] looks at the cluster when its [`Cadence`] says and changes it through
//! [`Cluster::create`], [`Cluster::drain`], [`Cluster::evict`] and [`Cluster::delete`]; every
//! policy runs against the same [`HetznerModel`] and seed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rgrid_core::Resources;

use crate::config::NodeTypeConfig;

use super::cost::{self, Attempt};
use super::model::{CreateOutcome, HetznerModel};
use super::report::Report;
use super::trace::Trace;

/// Simulation settings shared by every policy.
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

/// When an autoscaler looks at the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cadence {
    /// At most this long after anything changed, and when it asked to (rgrid's driver).
    Events(Duration),
    /// Every period, from time zero (a polling loop).
    Every(Duration),
}

/// A policy under test, driven by the engine.
pub(super) trait Autoscaler {
    /// How it is triggered.
    fn cadence(&self) -> Cadence;
    /// Task `t` was submitted.
    fn arrived(&mut self, _cluster: &Cluster<'_>, _t: usize) {}
    /// Task `t` finished (successfully) on its node.
    fn finished(&mut self, _cluster: &Cluster<'_>, _t: usize) {}
    /// Looks at the cluster and changes it (and may ask to look again, [`Cluster::wake_at`]).
    fn step(&mut self, cluster: &mut Cluster<'_>);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    /// Attempt `.0` (index into the attempts) ends.
    Finish(usize),
    Join(usize),
    DrainDeadline(usize),
    Wake,
}

/// Where a simulated server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Booting,
    Ready,
    Draining,
    Deleted,
}

/// A simulated server.
pub(super) struct Node {
    /// Index into the type list.
    pub(super) ty: usize,
    pub(super) created: Duration,
    pub(super) state: State,
    pub(super) free: Resources,
    /// A fixed number of task slots (the seed's design), instead of resources alone.
    pub(super) slots: Option<u32>,
    /// The tasks running on it.
    pub(super) tasks: Vec<usize>,
    pub(super) idle_since: Option<Duration>,
    /// Tasks queued when it was created, or if none, those running then: who pays for it if
    /// it never runs anything.
    pub(super) created_for: Vec<usize>,
    /// When it was deleted (billing ends).
    pub(super) deleted: Option<Duration>,
}

impl Node {
    /// How many attempts run on it.
    pub(super) fn running(&self) -> u32 {
        u32::try_from(self.tasks.len()).unwrap_or(u32::MAX)
    }
}

/// A task of the trace, as it fares.
pub(super) struct Task {
    pub(super) arrival: Duration,
    pub(super) duration: Duration,
    pub(super) resources: Resources,
    /// Start of its current (last) attempt.
    pub(super) start: Option<Duration>,
    pub(super) end: Option<Duration>,
    /// The node its current attempt runs on.
    pub(super) node: Option<usize>,
    /// Its current attempt (index into the attempts).
    pub(super) attempt: Option<usize>,
}

/// Virtual time zero as a wall-clock time, for the policies that take one.
pub(super) fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// The simulated cluster and cloud: what autoscalers look at and change.
pub(super) struct Cluster<'a> {
    pub(super) types: &'a [NodeTypeConfig],
    opts: &'a SimOptions,
    rng: ChaCha8Rng,
    pub(super) now: Duration,
    seq: u64,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    /// Pending wake-ups of the autoscaler, so that a burst of events schedules one.
    wakes: BTreeSet<Duration>,
    pub(super) tasks: Vec<Task>,
    /// Queued tasks, in submission order.
    pub(super) queue: Vec<usize>,
    pub(super) nodes: Vec<Node>,
    pub(super) attempts: Vec<Attempt>,
    finished: usize,
    /// Creates refused as sold out.
    unavailable: u32,
    /// Attempts cut off and requeued.
    cut_off: u32,
}

/// What one create request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Created {
    /// A server (index into the nodes); it may never join.
    Server(usize),
    /// Refused: sold out.
    SoldOut,
}

impl<'a> Cluster<'a> {
    fn new(trace: &Trace, types: &'a [NodeTypeConfig], opts: &'a SimOptions) -> Self {
        let mut cluster = Cluster {
            types,
            opts,
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            now: Duration::ZERO,
            seq: 0,
            events: BinaryHeap::new(),
            wakes: BTreeSet::new(),
            tasks: (trace.tasks.iter())
                .map(|t| Task {
                    arrival: t.arrival,
                    duration: t.duration,
                    resources: t.resources.clone(),
                    start: None,
                    end: None,
                    node: None,
                    attempt: None,
                })
                .collect(),
            queue: Vec::new(),
            nodes: Vec::new(),
            attempts: Vec::new(),
            finished: 0,
            unavailable: 0,
            cut_off: 0,
        };
        for i in 0..cluster.tasks.len() {
            let at = cluster.tasks[i].arrival;
            cluster.push(at, Event::Arrive(i));
        }
        cluster
    }

    fn push(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    /// Has the autoscaler look again at `at` (unless it already will then).
    pub(super) fn wake_at(&mut self, at: Duration) {
        if self.wakes.insert(at) {
            self.push(at, Event::Wake);
        }
    }

    fn done(&self) -> bool {
        self.finished == self.tasks.len()
            && self.queue.is_empty()
            && self.nodes.iter().all(|n| n.state == State::Deleted)
    }

    /// Nodes that are not deleted.
    pub(super) fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
        (self.nodes.iter().enumerate()).filter(|(_, n)| n.state != State::Deleted)
    }

    /// What queued tasks need beyond the free room of ready nodes and the whole of booting ones
    /// (first fit, in queue order): the demand a peer autoscaler buys nodes for.
    pub(super) fn unplaced(&self) -> Vec<Resources> {
        let mut room: Vec<Resources> = (self.live())
            .map(|(_, n)| match n.state {
                State::Booting => self.types[n.ty].capacity(),
                State::Ready => n.free.clone(),
                _ => Resources::default(),
            })
            .collect();
        let mut unplaced = Vec::new();
        for &t in &self.queue {
            let need = &self.tasks[t].resources;
            match room.iter_mut().find(|r| r.fits(need)) {
                Some(r) => *r = r.checked_sub(need).unwrap_or_default(),
                None => unplaced.push(need.clone()),
            }
        }
        unplaced
    }

    /// Asks the cloud for a server of type `ty`; `slots` fixes its task slots.
    pub(super) fn create(&mut self, ty: usize, slots: Option<u32>) -> Created {
        match self.opts.model.create(&mut self.rng) {
            CreateOutcome::Unavailable => {
                self.unavailable += 1;
                Created::SoldOut
            }
            outcome => {
                tracing::trace!(at = self.now.as_secs(), node_type = %self.types[ty].name, queued = self.queue.len(), "sim: create");
                let n = self.nodes.len();
                self.nodes.push(Node {
                    ty,
                    created: self.now,
                    state: State::Booting,
                    free: self.types[ty].capacity(),
                    slots,
                    tasks: Vec::new(),
                    idle_since: None,
                    created_for: if self.queue.is_empty() {
                        self.nodes
                            .iter()
                            .flat_map(|n| n.tasks.iter().copied())
                            .collect()
                    } else {
                        self.queue.clone()
                    },
                    deleted: None,
                });
                if let CreateOutcome::Joins(after) = outcome {
                    self.push(self.now + after, Event::Join(n));
                }
                Created::Server(n)
            }
        }
    }

    /// Stops giving node `n` work; what still runs there at `deadline` from now is handed back.
    pub(super) fn drain(&mut self, n: usize, deadline: Duration) -> bool {
        if self.nodes[n].state != State::Ready {
            return false;
        }
        self.nodes[n].state = State::Draining;
        self.push(self.now + deadline, Event::DrainDeadline(n));
        true
    }

    /// Kills what runs on node `n` and requeues it (in submission order) to run again from the
    /// start; its wait then counts from its arrival to its last start.
    pub(super) fn evict(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let evicted = std::mem::take(&mut node.tasks);
        self.cut_off += u32::try_from(evicted.len()).unwrap_or(u32::MAX);
        if let Some(s) = node.slots.as_mut() {
            *s += u32::try_from(evicted.len()).unwrap_or(u32::MAX);
        }
        for t in evicted {
            let task = &mut self.tasks[t];
            if let Some(a) = task.attempt.take() {
                self.attempts[a].end = Some(self.now);
            }
            task.start = None;
            task.node = None;
            self.queue.push(t);
        }
        node.free = self.types[node.ty].capacity();
        node.idle_since = Some(self.now);
        let tasks = &self.tasks;
        self.queue.sort_by_key(|&t| (tasks[t].arrival, t));
    }

    /// Deletes node `n` (billing stops); whatever still runs there is requeued.
    pub(super) fn delete(&mut self, n: usize) {
        if self.nodes[n].state == State::Deleted {
            return;
        }
        if !self.nodes[n].tasks.is_empty() {
            self.evict(n);
        }
        let node = &mut self.nodes[n];
        node.state = State::Deleted;
        node.deleted = Some(self.now);
        tracing::trace!(at = self.now.as_secs(), node_type = %self.types[node.ty].name, age = (self.now - node.created).as_secs(), "sim: delete");
    }

    /// The price of every billed hour of every server so far.
    fn bill(&self) -> (f64, u64) {
        let mut cost = 0.0;
        let mut hours = 0;
        for node in &self.nodes {
            let end = node.deleted.unwrap_or(self.now);
            let billed = self.opts.model.billed_periods(end - node.created);
            hours += billed;
            cost += billed as f64 * self.types[node.ty].hourly_price;
        }
        (cost, hours)
    }

    fn finish(&mut self, a: usize) -> Option<usize> {
        let Attempt {
            task: t, node: n, ..
        } = self.attempts[a];
        // Killed with its node, or handed back at the node's drain deadline.
        if self.tasks[t].attempt != Some(a) {
            return None;
        }
        let node = &mut self.nodes[n];
        if let Ok(free) = node.free.checked_add(&self.tasks[t].resources) {
            node.free = free;
        }
        node.tasks.retain(|&x| x != t);
        if let Some(s) = node.slots.as_mut() {
            *s += 1;
        }
        if node.tasks.is_empty() {
            node.idle_since = Some(self.now);
        }
        self.attempts[a].end = Some(self.now);
        let task = &mut self.tasks[t];
        task.end = Some(self.now);
        task.attempt = None;
        self.finished += 1;
        Some(t)
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
            node.tasks.push(t);
            if let Some(s) = node.slots.as_mut() {
                *s -= 1;
            }
            node.idle_since = None;
            let a = self.attempts.len();
            self.attempts.push(Attempt {
                task: t,
                node: n,
                start: self.now,
                end: None,
            });
            let task = &mut self.tasks[t];
            task.start = Some(self.now);
            task.node = Some(n);
            task.attempt = Some(a);
            let end = self.now + task.duration;
            self.push(end, Event::Finish(a));
        }
        self.queue = rest;
    }
}

/// Runs `trace` under `autoscaler` and reports cost, queue wait and the cost of each task.
pub(super) fn run(
    name: String,
    trace: &Trace,
    autoscaler: &mut dyn Autoscaler,
    types: &[NodeTypeConfig],
    opts: &SimOptions,
) -> Report {
    let mut cluster = Cluster::new(trace, types, opts);
    let cadence = autoscaler.cadence();
    cluster.wake_at(Duration::ZERO);
    let horizon = trace.span() + opts.grace;

    while let Some(Reverse((at, _, event))) = cluster.events.pop() {
        if at > horizon {
            break;
        }
        cluster.now = at;
        let changed = match event {
            Event::Arrive(t) => {
                cluster.queue.push(t);
                autoscaler.arrived(&cluster, t);
                true
            }
            Event::Finish(a) => {
                if let Some(t) = cluster.finish(a) {
                    autoscaler.finished(&cluster, t);
                }
                true
            }
            Event::DrainDeadline(n) => {
                // Like rgrid's node, it kills what still runs and hands it back.
                if cluster.nodes[n].state == State::Draining && !cluster.nodes[n].tasks.is_empty() {
                    cluster.evict(n);
                }
                true
            }
            Event::Join(n) => {
                let joined = cluster.nodes[n].state == State::Booting;
                if joined {
                    cluster.nodes[n].state = State::Ready;
                    cluster.nodes[n].idle_since = Some(at);
                }
                joined
            }
            Event::Wake => {
                cluster.wakes.remove(&at);
                autoscaler.step(&mut cluster);
                if let Cadence::Every(period) = cadence {
                    if !cluster.done() {
                        cluster.wake_at(at + period);
                    }
                }
                false
            }
        };
        if let (true, Cadence::Events(debounce)) = (changed, cadence) {
            // The driver coalesces events: it decides at most `debounce` after one.
            let latest = at + debounce;
            if cluster.wakes.range(at..=latest).next().is_none() {
                cluster.wake_at(latest);
            }
        }
        cluster.place();
        if cluster.done() {
            break;
        }
    }
    let end = cluster.now.min(horizon);
    cluster.now = end;
    let left = count(cluster.live());
    let cut_off = cluster.cut_off;
    for n in 0..cluster.nodes.len() {
        cluster.delete(n);
    }
    let (bill, node_hours) = cluster.bill();
    let costs = cost::per_task(&cluster, &opts.model);
    let servers_created = u32::try_from(cluster.nodes.len()).unwrap_or(u32::MAX);
    let mut report = Report::new(
        name,
        &trace.name,
        (cluster.tasks.iter())
            .map(|t| (t.arrival, t.start, t.end))
            .collect(),
        end,
        bill,
        node_hours,
        servers_created,
        cluster.unavailable,
    );
    report.servers_left = left;
    report.cut_off = cut_off;
    report.task_costs = costs;
    report
}

pub(super) fn count<I: Iterator>(it: I) -> u32 {
    u32::try_from(it.count()).unwrap_or(u32::MAX)
}
