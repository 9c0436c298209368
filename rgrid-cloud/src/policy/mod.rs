//! The autoscaling policy: a pure, deterministic function from a [`Snapshot`] of the cluster
//! (queued demand by shape, nodes with their type, age, idle time and state, recent
//! provisioning failures) and the time `now` to a [`Decision`]: servers to create, nodes to
//! drain or delete, why each queued task is still waiting (with an ETA), and when to ask again.
//! It reads no clock and does no I/O; the head's driver carries the actions out through a
//! [`crate::Provider`], and the simulator runs it on a virtual clock.
//!
//! Rules:
//! - **Scale up** only for queued demand that existing free capacity and servers already being
//!   provisioned cannot absorb, that has waited `scale_up_delay`, and that some node type can
//!   hold (never for unschedulable tasks). With known runtimes, only what running nodes will
//!   not start within `max_queue_wait` — or, with known arrival rates too, what the busy cpu
//!   left over by the arrivals will not finish within `drain_target` — needs new capacity,
//!   and only enough to finish within `drain_target`. Before any task of a shape has
//!   finished, how long the running ones have run so far is a lower bound on the runtime:
//!   running nodes then count for nothing, and the queue gets enough to finish within
//!   `drain_target` at that bound, more as it grows. The leftover tasks are bin-packed (first fit
//!   decreasing) into the node-type mix with the lowest hourly price, each bin downsized to the
//!   cheapest type that holds it; creation is bounded by `max_nodes`, per-type `max_nodes` and
//!   `max_concurrent_provisioning`. A (type, location) that reported `resource_unavailable` is
//!   skipped for `unavailable_cooldown` — the next location, then another type, is used — and a
//!   quota error pauses creation for as long.
//! - **Scale down**: Hetzner bills every started hour until deletion, so an idle node costs
//!   nothing more until its next hour starts. Idle nodes are drained when that start is within
//!   `scale_down_window` (and deleted once drained), keeping `min_nodes`. A busy node whose
//!   next hour starts within `drain_ahead` is drained when the rest of the cluster carries the
//!   load plus `headroom` and its attempts are expected to end before that hour. The load is
//!   the busy and queued cpu, but at least what the arrivals keep busy when that is known —
//!   the capacity scale-up would buy back for them.
//! - **Replace**: failed nodes are deleted (demand then creates replacements), nodes older than
//!   `max_lifetime` are drained, servers that never joined within `join_timeout` are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use rgrid_core::task::LabelRequirement;
use rgrid_core::Resources;

use crate::config::{AutoscalerConfig, NodeTypeConfig, NODE_TYPE_LABEL};
use crate::provider::{FailureKind, ServerId};

/// Hetzner's billing period: every started hour is paid.
pub const BILLING_PERIOD: Duration = Duration::from_secs(3600);

/// At most this many queued tasks are planned for individually; beyond it, demand is capped by
/// `max_nodes` long before it matters.
const MAX_PLANNED_TASKS: u64 = 20_000;

/// The arrival rate is measured over this many blocks of [`RATE_BLOCK`] (the last hour).
pub const RATE_BLOCKS: usize = 6;

/// One block of the arrival-rate window.
pub const RATE_BLOCK: Duration = Duration::from_secs(600);

/// The sustained arrival rate, per second, from the number of tasks submitted in each block of
/// the last hour: the median block. A one-off burst lands in one or two blocks and leaves the
/// median alone — it is queued demand, sized by `drain_target`, not a rate to keep up with —
/// while a steady or slowly changing stream moves it as the mean would.
pub fn sustained_rate(mut blocks: [u32; RATE_BLOCKS]) -> f64 {
    blocks.sort_unstable();
    let median = f64::from(blocks[RATE_BLOCKS / 2 - 1] + blocks[RATE_BLOCKS / 2]) / 2.0;
    median / RATE_BLOCK.as_secs_f64()
}

/// A node must be empty this long before its next billed hour starts, for its delete to land
/// in time.
pub const DELETE_MARGIN: Duration = Duration::from_secs(60);

/// How long a drained node's attempts may run on before the node hands them back: one drained
/// to save its next billed hour (idle, surplus) until [`DELETE_MARGIN`] before that hour starts
/// (at least 10 s); one past its maximum lifetime for an hour. `age` is the server's.
pub fn drain_deadline(reason: Reason, age: Duration) -> Duration {
    if reason == Reason::Lifetime {
        return BILLING_PERIOD;
    }
    let period = BILLING_PERIOD.as_secs();
    let to_next_hour = Duration::from_secs(period - age.as_secs() % period);
    to_next_hour
        .saturating_sub(DELETE_MARGIN)
        .max(Duration::from_secs(10))
}

/// After a rate-limit failure or an unclassified one (bad token, invalid request, failed
/// action…), creation pauses this long: a persistent error costs one request a minute.
pub const ERROR_PAUSE: Duration = Duration::from_secs(60);

/// While a runtime is only known as a lower bound, the policy looks again when the bound has
/// doubled, but no sooner than this.
const MIN_RECHECK: Duration = Duration::from_secs(10);

/// Queued tasks of one shape that no node can run right now.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    /// What one task needs.
    pub resources: Resources,
    /// What the tasks require of a node's labels (their selector); empty for any node.
    pub selector: Vec<LabelRequirement>,
    /// How many tasks of this shape are queued.
    pub count: u32,
    /// When the oldest of them was queued.
    pub oldest: SystemTime,
    /// How long one of them is expected to run, if the head knows (e.g. the mean runtime of
    /// finished tasks of this shape). With it, capacity is sized to finish the queue within
    /// `drain_target` instead of starting every task at once.
    pub expected_runtime: Option<Duration>,
    /// The sustained rate at which tasks of this shape are submitted, per second, if the head
    /// knows: [`sustained_rate`] of the tasks submitted (queued or not, started or not) in each
    /// ten-minute block of the last hour. With it and `expected_runtime`, the busy cpu of running nodes counts as capacity for the
    /// whole `drain_target`, minus what the arrivals keep busy, instead of for
    /// `max_queue_wait` only: a burst no longer buys a node per decision while its own nodes
    /// work through it. `None` keeps the rule without it.
    pub arrival_rate: Option<f64>,
    /// How long the attempts of this shape running now have been running, on average
    /// (`None` when none runs). Until one of them finishes, every started task runs at least as
    /// long as it has so far, so this is a lower bound on their mean runtime: the policy uses
    /// it in place of `expected_runtime` while that is `None`, and looks again when it has
    /// doubled. Without either, every queued task gets a slot at once.
    pub running_for: Option<Duration>,
}

/// Where a node is in its life, as the head sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// The server exists (it carries the cluster label) but no node has joined from it yet.
    Provisioning,
    /// Joined and taking work.
    Ready,
    /// Takes no new work; finishing what it runs.
    Draining,
    /// Dead (missed heartbeats past the timeout) or its server is broken.
    Failed,
}

/// One node or server, as the head sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// The cloud server behind it; `None` for nodes the autoscaler does not manage (they are
    /// used as capacity but never drained or deleted).
    pub server: Option<ServerId>,
    /// Node / server name.
    pub name: String,
    /// Node type (server type) name.
    pub node_type: String,
    /// State.
    pub state: NodeState,
    /// When the server was created (billing counts started hours from here).
    pub created: SystemTime,
    /// Labels the node advertises.
    pub labels: BTreeMap<String, String>,
    /// Total resources (for `Provisioning`, the type's capacity).
    pub capacity: Resources,
    /// Unallocated resources (ignored for `Provisioning`).
    pub free: Resources,
    /// Attempts running on it.
    pub running: u32,
    /// Since when it has run nothing; `None` while busy.
    pub idle_since: Option<SystemTime>,
    /// When the attempts running on it are expected to have ended — the latest of each
    /// attempt's start plus the expected runtime of its shape — if the head knows a runtime for
    /// every one of them; `None` otherwise. A busy node is drained ahead of its next billed
    /// hour only when it is expected to empty before that hour starts.
    pub busy_until: Option<SystemTime>,
}

/// A create that failed recently; the head keeps those younger than `unavailable_cooldown`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionFailure {
    /// The type asked for.
    pub node_type: String,
    /// The location asked for.
    pub location: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// When.
    pub at: SystemTime,
}

/// The policy's input: what is queued and what exists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Queued demand by shape.
    pub demand: Vec<Demand>,
    /// Nodes, including servers that have not joined yet.
    pub nodes: Vec<NodeView>,
    /// Recent create failures.
    pub failures: Vec<ProvisionFailure>,
    /// The cpu, in millis, that arrivals keep busy (Little's law), if the head knows: over the
    /// shapes submitted in the last hour whose mean runtime is known (some finished), the sum
    /// of [`sustained_rate`] × mean runtime × cpu per task — what
    /// [`Demand::arrival_rate`] and [`Demand::expected_runtime`] give a queued shape, for every
    /// shape, queued or not. Surplus nodes are drained only when the rest of the cluster
    /// also carries this much, so a lull between arrivals does not drain capacity that
    /// scale-up buys back for them. `None` counts only the busy and queued cpu.
    pub arrival_load: Option<u64>,
}

/// Why a node is drained or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Idle with its next billed hour about to start.
    Idle,
    /// Older than `max_lifetime`.
    Lifetime,
    /// Failed.
    Failed,
    /// Its server never joined within `join_timeout`.
    NeverJoined,
    /// Drained and now empty.
    Drained,
    /// Busy, but the rest of the cluster can carry the load: drained before its next billed
    /// hour.
    Surplus,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Idle => "idle before its next billed hour",
            Reason::Lifetime => "past its maximum lifetime",
            Reason::Failed => "failed",
            Reason::NeverJoined => "never joined",
            Reason::Drained => "drained",
            Reason::Surplus => "not needed for another billed hour",
        })
    }
}

/// Something for the head to do. Apply them in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a server of `node_type` in `location` (render its user data, then
    /// [`crate::Provider::create`]; record a [`ProvisionFailure`] if it fails).
    Create {
        /// Server type.
        node_type: String,
        /// Location.
        location: String,
    },
    /// Stop giving the node work and let it finish what it runs.
    Drain {
        /// Its server.
        server: ServerId,
        /// Node name.
        name: String,
        /// Why.
        reason: Reason,
    },
    /// Delete the server (the node has drained, failed or never joined).
    Delete {
        /// Its server.
        server: ServerId,
        /// Node name.
        name: String,
        /// Why.
        reason: Reason,
    },
}

/// Why queued tasks are still waiting, for the client to show.
#[derive(Clone, Debug, PartialEq)]
pub enum Wait {
    /// A running node has room; the scheduler will start them shortly.
    Placing,
    /// Running nodes are expected to free room for them soon (runtimes known).
    FreeingUp {
        /// Expected time until they start.
        eta: Duration,
    },
    /// A node of this type is being provisioned for them.
    Provisioning {
        /// Its type.
        node_type: String,
        /// Expected time until it joins (zero when overdue).
        eta: Duration,
    },
    /// Servers are created only for demand older than `scale_up_delay`.
    Delayed {
        /// When they will be.
        until: SystemTime,
    },
    /// A limit on nodes stops more from being created.
    AtCapacity {
        /// Which limit.
        limit: Limit,
    },
    /// Every type that fits is sold out in every location (cooling down).
    SoldOut {
        /// When the next retry is allowed.
        until: SystemTime,
    },
    /// A create failed (quota, rate limit or another error); creation is paused.
    Paused {
        /// Until when.
        until: SystemTime,
        /// What failed.
        cause: FailureKind,
    },
    /// No node type can ever run them.
    Unschedulable,
}

/// A limit that stops creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_nodes`.
    MaxNodes(u32),
    /// A node type's `max_nodes`.
    TypeMax(String, u32),
    /// `max_concurrent_provisioning`.
    Provisioning(u32),
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Placing => f.write_str("waiting for a slot on a running node"),
            Wait::FreeingUp { eta } => write!(
                f,
                "waiting for a running node to free up (~{} s)",
                eta.as_secs().max(1)
            ),
            Wait::Provisioning { node_type, eta } if eta.is_zero() => {
                write!(
                    f,
                    "waiting for a node of type {node_type} (provisioning, due now)"
                )
            }
            Wait::Provisioning { node_type, eta } => write!(
                f,
                "waiting for a node of type {node_type} (provisioning, ~{} s left)",
                eta.as_secs().max(1)
            ),
            Wait::Delayed { .. } => {
                f.write_str("waiting for running nodes to free up before a new node is created")
            }
            Wait::AtCapacity { limit } => match limit {
                Limit::MaxNodes(n) => write!(f, "waiting: the cluster is at max_nodes ({n})"),
                Limit::TypeMax(t, n) => {
                    write!(f, "waiting: node type {t} is at its max_nodes ({n})")
                }
                Limit::Provisioning(n) => write!(
                    f,
                    "waiting: {n} nodes are already being provisioned (max_concurrent_provisioning)"
                ),
            },
            Wait::SoldOut { .. } => f.write_str(
                "waiting: every node type that fits is sold out in every location; retrying later",
            ),
            Wait::Paused { cause, .. } => f.write_str(match cause {
                FailureKind::Quota => {
                    "waiting: the cloud project's quota is reached; node creation is paused"
                }
                FailureKind::RateLimited => {
                    "waiting: the cloud API's rate limit was hit; node creation is paused"
                }
                FailureKind::Unavailable | FailureKind::Other => {
                    "waiting: creating a node failed (see the head's log); retrying shortly"
                }
            }),
            Wait::Unschedulable => f.write_str("no node type can run this task"),
        }
    }
}

/// What the policy decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Things to do, in order.
    pub actions: Vec<Action>,
    /// For each entry of `Snapshot::demand` (same index): why its tasks wait, as runs of
    /// `(wait, task count)` in queue order — the first tasks get the first entry.
    pub waits: Vec<Vec<(Wait, u32)>>,
    /// Ask again at this time even if nothing happens (a delay, a billing window or a timeout
    /// expires then). The head should also ask after every event that changes the snapshot.
    pub next_wakeup: Option<SystemTime>,
}

impl Decision {
    /// Why the `position`-th queued task (from 0) of demand `demand` waits.
    pub fn wait_for(&self, demand: usize, position: u32) -> Option<&Wait> {
        let mut seen = 0u32;
        for (wait, count) in self.waits.get(demand)? {
            seen = seen.saturating_add(*count);
            if position < seen {
                return Some(wait);
            }
        }
        self.waits.get(demand)?.last().map(|(w, _)| w)
    }
}

/// Whether some configured node type can ever run `resources` with `selector`.
pub fn fits_some_node_type(
    config: &AutoscalerConfig,
    resources: &Resources,
    selector: &[LabelRequirement],
) -> bool {
    config
        .node_types
        .iter()
        .any(|t| t.capacity().fits(resources) && satisfies(&type_labels(config, t), selector))
}

/// Labels a provisioned node of type `t` advertises.
pub fn type_labels(config: &AutoscalerConfig, t: &NodeTypeConfig) -> BTreeMap<String, String> {
    let mut labels = config.node_labels.clone();
    labels.extend(t.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert(NODE_TYPE_LABEL.to_owned(), t.name.clone());
    labels
}

fn satisfies(labels: &BTreeMap<String, String>, selector: &[LabelRequirement]) -> bool {
    selector
        .iter()
        .all(|r| r.matches(|key| labels.get(key).map(String::as_str)))
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// Collects the earliest future time the policy should look again.
struct Wakeup {
    now: SystemTime,
    at: Option<SystemTime>,
}

impl Wakeup {
    fn at(&mut self, t: SystemTime) {
        if t > self.now && self.at.is_none_or(|a| t < a) {
            self.at = Some(t);
        }
    }
}

/// Where one queued task ends up in the plan.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Pending,
    /// Will run after other queued tasks of its shape, on the capacity they get.
    Behind,
    Done(Wait),
}

/// One queued task being planned.
struct Item {
    demand: usize,
    weight: f64,
}

/// Capacity a task can be packed into.
struct Bin {
    labels: BTreeMap<String, String>,
    free: Resources,
    wait: Wait,
}

/// A type that may be created now.
#[derive(Clone)]
struct Candidate<'a> {
    ty: &'a NodeTypeConfig,
    capacity: Resources,
    location: String,
}

/// Runs the policy. Pure: the same arguments always give the same decision.
pub fn decide(config: &AutoscalerConfig, snapshot: &Snapshot, now: SystemTime) -> Decision {
    let mut wake = Wakeup { now, at: None };
    let mut actions = Vec::new();
    // Nodes leaving this decision (index into snapshot.nodes).
    let mut leaving: BTreeSet<usize> = BTreeSet::new();

    // --- Replacement: failed, never joined, drained, past lifetime. ---
    for (i, node) in snapshot.nodes.iter().enumerate() {
        let Some(server) = node.server else { continue };
        let age = since(now, node.created);
        let delete = |reason| Action::Delete {
            server,
            name: node.name.clone(),
            reason,
        };
        match node.state {
            NodeState::Failed => {
                actions.push(delete(Reason::Failed));
                leaving.insert(i);
            }
            NodeState::Provisioning if age >= config.join_timeout => {
                actions.push(delete(Reason::NeverJoined));
                leaving.insert(i);
            }
            NodeState::Provisioning => wake.at(node.created + config.join_timeout),
            NodeState::Draining if node.running == 0 => {
                actions.push(delete(Reason::Drained));
                leaving.insert(i);
            }
            NodeState::Draining => {}
            NodeState::Ready => {
                if !config.max_lifetime.is_zero() {
                    if age >= config.max_lifetime {
                        actions.push(Action::Drain {
                            server,
                            name: node.name.clone(),
                            reason: Reason::Lifetime,
                        });
                        leaving.insert(i);
                    } else {
                        wake.at(node.created + config.max_lifetime);
                    }
                }
            }
        }
    }

    // --- Existing capacity: free room on ready nodes, then servers still provisioning. ---
    let mut bins: Vec<Bin> = Vec::new();
    let mut bin_node: Vec<usize> = Vec::new();
    for (i, node) in snapshot.nodes.iter().enumerate() {
        if leaving.contains(&i) || node.state != NodeState::Ready {
            continue;
        }
        bins.push(Bin {
            labels: node.labels.clone(),
            free: node.free.clone(),
            wait: Wait::Placing,
        });
        bin_node.push(i);
    }
    let mut provisioning: Vec<(Duration, usize)> = snapshot
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| !leaving.contains(i) && n.state == NodeState::Provisioning)
        .map(|(i, n)| {
            let eta = (n.created + config.boot_estimate)
                .duration_since(now)
                .unwrap_or_default();
            (eta, i)
        })
        .collect();
    provisioning.sort();
    let provisioning_bins = provisioning.len();
    for (eta, i) in provisioning {
        let node = &snapshot.nodes[i];
        let (labels, capacity) = match config.node_type(&node.node_type) {
            Some(t) => (type_labels(config, t), t.capacity()),
            None => (node.labels.clone(), node.capacity.clone()),
        };
        bins.push(Bin {
            labels,
            free: capacity,
            wait: Wait::Provisioning {
                node_type: node.node_type.clone(),
                eta,
            },
        });
        bin_node.push(i);
    }

    // --- Items: every queued task, largest first (first fit decreasing), oldest first. ---
    let reference = reference_capacity(config, snapshot);
    let mut order: Vec<usize> = (0..snapshot.demand.len()).collect();
    let weights: Vec<f64> = snapshot
        .demand
        .iter()
        .map(|d| weight(&d.resources, &reference))
        .collect();
    order.sort_by(|&a, &b| {
        weights[b]
            .total_cmp(&weights[a])
            .then(snapshot.demand[a].oldest.cmp(&snapshot.demand[b].oldest))
            .then(a.cmp(&b))
    });
    let mut items: Vec<Item> = Vec::new();
    let mut budget = MAX_PLANNED_TASKS;
    for &d in &order {
        let n = u64::from(snapshot.demand[d].count).min(budget);
        budget -= n;
        items.extend((0..n).map(|_| Item {
            demand: d,
            weight: weights[d],
        }));
    }
    let mut outcomes: Vec<Outcome> = vec![Outcome::Pending; items.len()];
    let mut used_bin = vec![false; bins.len()];
    // Whether a running node could ever hold the item (then it is never unschedulable).
    let mut node_could: Vec<bool> = vec![false; items.len()];

    let ready_bins = bins.len() - provisioning_bins;
    for (k, item) in items.iter().enumerate() {
        let demand = &snapshot.demand[item.demand];
        let node_fits = snapshot.nodes.iter().enumerate().any(|(i, n)| {
            !leaving.contains(&i)
                && n.state == NodeState::Ready
                && n.capacity.fits(&demand.resources)
                && satisfies(&n.labels, &demand.selector)
        });
        node_could[k] = node_fits;
        if !node_fits && !fits_some_node_type(config, &demand.resources, &demand.selector) {
            outcomes[k] = Outcome::Done(Wait::Unschedulable);
            continue;
        }
        if let Some(b) = pack(&mut bins[..ready_bins], demand) {
            used_bin[b] = true;
            outcomes[k] = Outcome::Done(Wait::Placing);
        }
    }

    // With known runtimes: tasks that running nodes will start within `max_queue_wait` need no
    // new capacity (a new node would hardly come sooner), and the rest need only enough
    // capacity to finish within `drain_target`; the others queue behind them.
    // Without an arrival rate, running nodes count only for `max_queue_wait`: arrivals might
    // keep them busy after that. With it, a shape needs the slots its arrivals keep busy
    // (rate × runtime, Little's law) plus those that finish its queue within `drain_target`;
    // the busy cpu of running nodes covers them first, shared out among the shapes in turn (a
    // slot is the shape's cpu), and only the shortfall gets new capacity.
    // Cpu busy on ready nodes that stay.
    let busy: u64 = snapshot
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| !leaving.contains(i) && n.state == NodeState::Ready)
        .map(|(_, n)| n.capacity.cpu_millis.saturating_sub(n.free.cpu_millis))
        .sum();
    let mut busy_left = busy;
    let mut pending_of: Vec<Vec<usize>> = vec![Vec::new(); snapshot.demand.len()];
    for (k, item) in items.iter().enumerate() {
        if outcomes[k] == Outcome::Pending {
            pending_of[item.demand].push(k);
        }
    }
    for (d, pending) in pending_of.iter().enumerate() {
        let demand = &snapshot.demand[d];
        let (runtime, lower_bound) = match (demand.expected_runtime, demand.running_for) {
            (Some(known), _) => (known, false),
            (None, Some(so_far)) => {
                // It grows as they run: look again when it has doubled.
                wake.at(now + so_far.max(MIN_RECHECK));
                (so_far, true)
            }
            (None, None) => continue,
        };
        if runtime.is_zero() {
            continue;
        }
        let fitting = snapshot.nodes.iter().enumerate().filter(|(i, n)| {
            !leaving.contains(i)
                && n.state == NodeState::Ready
                && n.capacity.fits(&demand.resources)
                && satisfies(&n.labels, &demand.selector)
        });
        // Running slots that start queued tasks as they free up, and how many tasks get a new
        // slot (packed into provisioning servers, else new ones).
        let (slots, keep) = match demand.arrival_rate {
            // A lower bound says nothing about when running nodes free up: they count for
            // nothing, and the queue gets the slots that finish it within `drain_target` at
            // the bound (more as the bound grows).
            _ if lower_bound => (
                0.0,
                slots_needed(pending.len(), runtime, config.drain_target),
            ),
            None => {
                let running: u32 = fitting.map(|(_, n)| n.running).sum();
                let soon = tolerated(f64::from(running), runtime, config.max_queue_wait);
                let rest = pending.len() - soon.min(pending.len());
                let keep = slots_needed(rest, runtime, config.drain_target);
                (f64::from(running), keep)
            }
            Some(rate) => {
                let cpu = demand.resources.cpu_millis.max(1);
                let busy_fitting: u64 = fitting
                    .map(|(_, n)| n.capacity.cpu_millis.saturating_sub(n.free.cpu_millis))
                    .sum();
                let slots = busy_fitting.min(busy_left) as f64 / cpu as f64;
                let need = rate.max(0.0) * runtime.as_secs_f64()
                    + pending.len() as f64 * drain_share(runtime, config.drain_target);
                busy_left = busy_left.saturating_sub((need.min(slots) * cpu as f64) as u64);
                let short = (need - slots).ceil().max(0.0) as usize;
                (slots, short.min(pending.len()))
            }
        };
        let soon = tolerated(slots, runtime, config.max_queue_wait).min(pending.len() - keep);
        let (soon, rest) = pending.split_at(soon);
        // Completions come about every runtime / slots.
        for (j, &k) in soon.iter().enumerate() {
            outcomes[k] = Outcome::Done(Wait::FreeingUp {
                eta: runtime.div_f64(slots) * (j as u32 + 1),
            });
        }
        for &k in &rest[keep..] {
            outcomes[k] = Outcome::Behind;
        }
    }

    // Servers being provisioned take what they can of the rest.
    for (k, item) in items.iter().enumerate() {
        if outcomes[k] != Outcome::Pending {
            continue;
        }
        let demand = &snapshot.demand[item.demand];
        if let Some(b) = pack(&mut bins[ready_bins..], demand) {
            used_bin[ready_bins + b] = true;
            outcomes[k] = Outcome::Done(bins[ready_bins + b].wait.clone());
        }
    }

    // --- Scale up for what is left. ---
    // Servers that still exist after this decision's deletions (lifetime drains still count).
    let stays = |i: usize, n: &NodeView| {
        n.server.is_some() && !(leaving.contains(&i) && n.state != NodeState::Ready)
    };
    // Servers that serve, or will serve, work.
    let serving = |i: usize, n: &NodeView| {
        n.server.is_some()
            && !leaving.contains(&i)
            && matches!(n.state, NodeState::Ready | NodeState::Provisioning)
    };
    let existing: u32 = count(
        snapshot
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| stays(*i, n)),
    );
    let provisioning_now: u32 = count(
        snapshot
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| serving(*i, n) && n.state == NodeState::Provisioning),
    );
    let mut per_type: BTreeMap<&str, u32> = BTreeMap::new();
    for (i, n) in snapshot.nodes.iter().enumerate() {
        if stays(i, n) {
            *per_type.entry(n.node_type.as_str()).or_default() += 1;
        }
    }
    let mut caps = Caps {
        total: config.max_nodes.saturating_sub(existing),
        provisioning: config
            .max_concurrent_provisioning
            .saturating_sub(provisioning_now),
        per_type,
    };

    // Creation pauses after a quota, rate-limit or other (non sold-out) error.
    let paused = snapshot
        .failures
        .iter()
        .filter_map(|f| match f.kind {
            FailureKind::Quota => Some((f.at + config.unavailable_cooldown, f.kind)),
            FailureKind::RateLimited | FailureKind::Other => Some((f.at + ERROR_PAUSE, f.kind)),
            FailureKind::Unavailable => None,
        })
        .filter(|(until, _)| *until > now)
        .max_by_key(|(until, _)| *until);
    let paused_until = paused.map(|(until, _)| until);
    // (type, location) pairs sold out recently.
    let mut sold_out: BTreeMap<(&str, &str), SystemTime> = BTreeMap::new();
    for f in &snapshot.failures {
        if f.kind == FailureKind::Unavailable {
            let until = f.at + config.unavailable_cooldown;
            if until > now {
                let e = sold_out
                    .entry((f.node_type.as_str(), f.location.as_str()))
                    .or_insert(until);
                *e = (*e).max(until);
                wake.at(until);
            }
        }
    }
    let sold_out_until = sold_out.values().min().copied();

    // Group pending, old-enough items by selector.
    let mut groups: BTreeMap<&[LabelRequirement], Vec<usize>> = BTreeMap::new();
    for (k, item) in items.iter().enumerate() {
        if outcomes[k] != Outcome::Pending {
            continue;
        }
        let demand = &snapshot.demand[item.demand];
        let ready_at = demand.oldest + config.scale_up_delay;
        if ready_at > now {
            outcomes[k] = Outcome::Done(Wait::Delayed { until: ready_at });
            wake.at(ready_at);
        } else if let Some((until, cause)) = paused {
            outcomes[k] = Outcome::Done(Wait::Paused { until, cause });
            wake.at(until);
        } else {
            groups.entry(&demand.selector[..]).or_default().push(k);
        }
    }

    // New nodes grow with the cluster: at least `growth` × the cpu busy or queued now.
    let queued: u64 = items
        .iter()
        .enumerate()
        .filter(|(k, _)| outcomes[*k] == Outcome::Pending)
        .map(|(_, it)| snapshot.demand[it.demand].resources.cpu_millis)
        .sum();
    let min_cpu = (config.growth.max(0.0) * busy.saturating_add(queued) as f64) as u64;

    let mut creates: Vec<(String, String)> = Vec::new();
    for (selector, group) in groups {
        let all = candidates(config, selector, &sold_out, min_cpu);
        let mut remaining = group.clone();
        let mut stopped: Option<Limit> = None;
        // Fund the fullest planned node, then plan again: a type that reached its cap drops
        // out and the rest is packed into the next best mix.
        while !remaining.is_empty() {
            if caps.total == 0 {
                stopped = Some(Limit::MaxNodes(config.max_nodes));
                break;
            }
            if caps.provisioning == 0 {
                stopped = Some(Limit::Provisioning(config.max_concurrent_provisioning));
                break;
            }
            let allowed: Vec<Candidate<'_>> =
                all.iter().filter(|c| caps.allows(c.ty)).cloned().collect();
            let planned = plan_bins(&remaining, &items, snapshot, &allowed);
            let Some(bin) = planned.into_iter().next() else {
                break;
            };
            let chosen = &allowed[bin.candidate];
            caps.consume(chosen.ty);
            creates.push((chosen.ty.name.clone(), chosen.location.clone()));
            for &k in &bin.items {
                outcomes[k] = Outcome::Done(Wait::Provisioning {
                    node_type: chosen.ty.name.clone(),
                    eta: config.boot_estimate,
                });
            }
            let funded: BTreeSet<usize> = bin.items.into_iter().collect();
            remaining.retain(|k| !funded.contains(k));
        }
        if let Some(limit) = stopped {
            for &k in &remaining {
                outcomes[k] = Outcome::Done(Wait::AtCapacity {
                    limit: limit.clone(),
                });
            }
            continue;
        }
        // Items no candidate could take: every fitting type is sold out or at its limit.
        for &k in &remaining {
            let demand = &snapshot.demand[items[k].demand];
            let at_type_max = config.node_types.iter().find(|t| {
                t.capacity().fits(&demand.resources)
                    && satisfies(&type_labels(config, t), &demand.selector)
                    && t.max_nodes.is_some_and(|m| {
                        caps.per_type.get(t.name.as_str()).copied().unwrap_or(0) >= m
                    })
            });
            outcomes[k] = Outcome::Done(match (at_type_max, sold_out_until) {
                _ if node_could[k] && at_type_max.is_none() && sold_out_until.is_none() => {
                    Wait::Placing
                }
                (Some(t), _) => Wait::AtCapacity {
                    limit: Limit::TypeMax(t.name.clone(), t.max_nodes.unwrap_or(0)),
                },
                (None, Some(until)) => Wait::SoldOut { until },
                (None, None) => Wait::Unschedulable,
            });
        }
    }

    // --- Keep min_nodes. ---
    let alive_after = count(
        snapshot
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| serving(*i, n)),
    ) + count(creates.iter());
    if alive_after < config.min_nodes && paused_until.is_none() {
        let mut by_price: Vec<&NodeTypeConfig> = config.node_types.iter().collect();
        by_price.sort_by(|a, b| a.hourly_price.total_cmp(&b.hourly_price));
        for _ in alive_after..config.min_nodes {
            let pick = by_price.iter().find_map(|t| {
                let loc = config
                    .locations_for(t)
                    .iter()
                    .find(|l| !sold_out.contains_key(&(t.name.as_str(), l.as_str())))?;
                caps.allows(t).then(|| (*t, loc.clone()))
            });
            let Some((t, loc)) = pick else { break };
            caps.consume(t);
            creates.push((t.name.clone(), loc));
        }
    }
    let creates_made = !creates.is_empty();
    for (node_type, location) in creates {
        actions.push(Action::Create {
            node_type,
            location,
        });
    }

    // --- Scale down idle nodes just before their next billed hour. ---
    let mut alive: u32 = count(
        snapshot
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| serving(*i, n)),
    ) + count(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. })),
    );
    let mut idle: Vec<(Duration, usize)> = Vec::new();
    for (b, &i) in bin_node.iter().enumerate() {
        let node = &snapshot.nodes[i];
        if node.server.is_none() || node.state != NodeState::Ready || node.running > 0 {
            continue;
        }
        let Some(idle_since) = node.idle_since else {
            continue;
        };
        if used_bin[b] {
            continue; // queued work is about to land on it
        }
        let age = since(now, node.created);
        let into_hour = Duration::from_secs(age.as_secs() % BILLING_PERIOD.as_secs());
        let to_boundary = BILLING_PERIOD - into_hour;
        let in_window = to_boundary <= config.scale_down_window;
        let boundary = now + to_boundary;
        let idle_enough = idle_since + config.min_idle;
        if in_window && idle_enough <= now {
            idle.push((to_boundary, i));
        } else if !in_window {
            wake.at((boundary - config.scale_down_window).max(idle_enough));
        } else if idle_enough < boundary {
            wake.at(idle_enough);
        } else {
            // Idle too briefly for this hour's window: look again in the next one.
            wake.at(boundary + BILLING_PERIOD - config.scale_down_window);
        }
    }
    idle.sort();
    let mut draining_now: BTreeSet<usize> = BTreeSet::new();
    for (_, i) in idle {
        if alive <= config.min_nodes {
            break;
        }
        let node = &snapshot.nodes[i];
        if let Some(server) = node.server {
            actions.push(Action::Drain {
                server,
                name: node.name.clone(),
                reason: Reason::Idle,
            });
            draining_now.insert(i);
            alive -= 1;
        }
    }

    // --- Drain surplus busy nodes ahead of their next billed hour. ---
    // When the rest of the cluster holds the current load plus `headroom`, a busy node whose
    // next hour starts within `drain_ahead` takes no new work, so it can empty and be deleted
    // instead of paying another hour. Only when nothing waits for new capacity. The load is at
    // least what the arrivals keep busy: scale-up plans for that much, so draining below it
    // buys the capacity back, paying a new hour.
    let nothing_waits = outcomes
        .iter()
        .all(|o| matches!(o, Outcome::Done(Wait::Placing)));
    if !config.drain_ahead.is_zero() && nothing_waits && !creates_made {
        let serving_ready = |i: usize, n: &NodeView| {
            !leaving.contains(&i) && !draining_now.contains(&i) && n.state == NodeState::Ready
        };
        let mut capacity: u64 = 0;
        let mut load: u64 = queued;
        for (i, n) in snapshot.nodes.iter().enumerate() {
            if serving_ready(i, n) {
                capacity += n.capacity.cpu_millis;
                load += n.capacity.cpu_millis.saturating_sub(n.free.cpu_millis);
            }
        }
        let load = load.max(snapshot.arrival_load.unwrap_or(0));
        let needed = (load as f64 * (1.0 + config.headroom.max(0.0))) as u64;
        let mut surplus: Vec<(std::cmp::Reverse<u64>, u32, usize)> = Vec::new();
        for (b, &i) in bin_node.iter().enumerate() {
            let node = &snapshot.nodes[i];
            if node.server.is_none() || !serving_ready(i, node) || node.running == 0 || used_bin[b]
            {
                continue;
            }
            let age = since(now, node.created);
            let into_hour = Duration::from_secs(age.as_secs() % BILLING_PERIOD.as_secs());
            let to_boundary = BILLING_PERIOD - into_hour;
            // One whose attempts run past the hour pays it anyway: drained now, it would
            // either pay a second one or have its work cut off and rerun.
            let empties_in_time = node
                .busy_until
                .is_none_or(|t| t + DELETE_MARGIN <= now + to_boundary);
            if to_boundary <= config.drain_ahead && !empties_in_time {
                wake.at(now + to_boundary + BILLING_PERIOD - config.drain_ahead);
            } else if to_boundary <= config.drain_ahead {
                let price_per_core = config
                    .node_type(&node.node_type)
                    .map(|t| (t.hourly_price / f64::from(t.cpus.max(1)) * 1e9) as u64)
                    .unwrap_or(0);
                surplus.push((std::cmp::Reverse(price_per_core), node.running, i));
            } else {
                wake.at(now + to_boundary - config.drain_ahead);
            }
        }
        surplus.sort();
        for (_, _, i) in surplus {
            let node = &snapshot.nodes[i];
            let rest = capacity.saturating_sub(node.capacity.cpu_millis);
            if alive <= config.min_nodes || rest < needed {
                continue;
            }
            if let Some(server) = node.server {
                actions.push(Action::Drain {
                    server,
                    name: node.name.clone(),
                    reason: Reason::Surplus,
                });
                capacity = rest;
                alive -= 1;
            }
        }
    }

    // --- Waits per demand, in queue order. ---
    let mut waits: Vec<Vec<(Wait, u32)>> = vec![Vec::new(); snapshot.demand.len()];
    for (k, item) in items.iter().enumerate() {
        let runs = &mut waits[item.demand];
        let wait = match &outcomes[k] {
            Outcome::Done(w) => w.clone(),
            Outcome::Behind => runs.last().map(|(w, _)| w.clone()).unwrap_or(Wait::Placing),
            Outcome::Pending => Wait::Unschedulable,
        };
        match runs.last_mut() {
            Some((w, n)) if *w == wait => *n += 1,
            _ => runs.push((wait, 1)),
        }
    }
    for (d, demand) in snapshot.demand.iter().enumerate() {
        let planned: u32 = waits[d].iter().map(|(_, n)| *n).sum();
        if planned < demand.count {
            let rest = demand.count - planned;
            let limit = Wait::AtCapacity {
                limit: Limit::MaxNodes(config.max_nodes),
            };
            waits[d].push((limit, rest));
        }
    }

    Decision {
        actions,
        waits,
        next_wakeup: wake.at,
    }
}

fn count<I: Iterator>(it: I) -> u32 {
    u32::try_from(it.count()).unwrap_or(u32::MAX)
}

/// Remaining creation allowance.
struct Caps<'a> {
    total: u32,
    provisioning: u32,
    per_type: BTreeMap<&'a str, u32>,
}

impl<'a> Caps<'a> {
    fn allows(&self, t: &NodeTypeConfig) -> bool {
        self.total > 0
            && self.provisioning > 0
            && t.max_nodes
                .is_none_or(|m| self.per_type.get(t.name.as_str()).copied().unwrap_or(0) < m)
    }

    fn consume(&mut self, t: &'a NodeTypeConfig) {
        self.total -= 1;
        self.provisioning -= 1;
        *self.per_type.entry(t.name.as_str()).or_default() += 1;
    }
}

fn holds(capacity: &Resources, members: &[usize], items: &[Item], snapshot: &Snapshot) -> bool {
    let mut free = capacity.clone();
    for &k in members {
        match free.checked_sub(&snapshot.demand[items[k].demand].resources) {
            Ok(rest) => free = rest,
            Err(_) => return false,
        }
    }
    true
}

/// Node types that could be created now for `selector`, each with its first location that is
/// not sold out.
fn candidates<'a>(
    config: &'a AutoscalerConfig,
    selector: &[LabelRequirement],
    sold_out: &BTreeMap<(&str, &str), SystemTime>,
    min_cpu: u64,
) -> Vec<Candidate<'a>> {
    let all: Vec<Candidate<'a>> = config
        .node_types
        .iter()
        .filter_map(|ty| {
            if !satisfies(&type_labels(config, ty), selector) {
                return None;
            }
            let location = config
                .locations_for(ty)
                .iter()
                .find(|l| !sold_out.contains_key(&(ty.name.as_str(), l.as_str())))?;
            Some(Candidate {
                ty,
                capacity: ty.capacity(),
                location: location.clone(),
            })
        })
        .collect();
    // Types below the growth step are skipped, unless that leaves none: then the largest.
    let largest = all.iter().map(|c| c.capacity.cpu_millis).max().unwrap_or(0);
    let floor = min_cpu.min(largest);
    all.into_iter()
        .filter(|c| c.capacity.cpu_millis >= floor)
        .collect()
}

/// Packs one task into the first bin that takes it.
fn pack(bins: &mut [Bin], demand: &Demand) -> Option<usize> {
    for (b, bin) in bins.iter_mut().enumerate() {
        if satisfies(&bin.labels, &demand.selector) {
            if let Ok(rest) = bin.free.checked_sub(&demand.resources) {
                bin.free = rest;
                return Some(b);
            }
        }
    }
    None
}

/// New slots to plan for `count` queued tasks that run `runtime` each: enough to run them all
/// within `target`.
fn slots_needed(count: usize, runtime: Duration, target: Duration) -> usize {
    ((count as f64 * drain_share(runtime, target)).ceil() as usize).min(count)
}

/// The slots one queued task needs to finish within `target`: a slot runs `target / runtime`
/// of them in turn; a whole slot when the target is off or shorter than a task.
fn drain_share(runtime: Duration, target: Duration) -> f64 {
    if target.is_zero() || runtime >= target {
        return 1.0;
    }
    runtime.as_secs_f64() / target.as_secs_f64()
}

/// How many queued tasks `slots` running slots start within `wait`, one every
/// `runtime / slots`.
fn tolerated(slots: f64, runtime: Duration, wait: Duration) -> usize {
    if slots <= 0.0 {
        return 0;
    }
    let every = runtime.as_secs_f64() / slots;
    (wait.as_secs_f64() / every.max(1e-3)).floor() as usize
}

/// A new node planned for some items.
struct PlannedBin {
    candidate: usize,
    items: Vec<usize>,
}

/// First-fit-decreasing packing of `group` into new nodes, choosing the type mix with the
/// lowest price per unit of packed demand; every bin is then downsized to the cheapest type
/// that still holds it. Returns the bins, fullest first. Items no candidate can hold are left
/// out.
fn plan_bins(
    group: &[usize],
    items: &[Item],
    snapshot: &Snapshot,
    candidates: &[Candidate<'_>],
) -> Vec<PlannedBin> {
    let mut remaining: Vec<usize> = group.to_vec();
    let mut out = Vec::new();
    while !remaining.is_empty() {
        let mut best: Option<(f64, Vec<PlannedBin>)> = None;
        for (c, cand) in candidates.iter().enumerate() {
            let bins = ffd(&remaining, items, snapshot, &cand.capacity);
            if bins.is_empty() {
                continue;
            }
            let mut price = 0.0;
            let mut weight = 0.0;
            let mut planned = Vec::with_capacity(bins.len());
            for members in bins {
                let (cheapest, p) = cheapest_holding(candidates, &members, items, snapshot)
                    .unwrap_or((c, cand.ty.hourly_price));
                price += p;
                weight += members.iter().map(|&k| items[k].weight).sum::<f64>();
                planned.push(PlannedBin {
                    candidate: cheapest,
                    items: members,
                });
            }
            let per_weight = price / weight.max(f64::MIN_POSITIVE);
            if best.as_ref().is_none_or(|(b, _)| per_weight < *b - 1e-12) {
                best = Some((per_weight, planned));
            }
        }
        let Some((_, planned)) = best else { break };
        let packed: BTreeSet<usize> = planned
            .iter()
            .flat_map(|b| b.items.iter().copied())
            .collect();
        remaining.retain(|k| !packed.contains(k));
        out.extend(planned);
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.items.len()));
    out
}

/// Packs items (already in decreasing order) into as many bins of `capacity` as needed.
fn ffd(
    members: &[usize],
    items: &[Item],
    snapshot: &Snapshot,
    capacity: &Resources,
) -> Vec<Vec<usize>> {
    let mut bins: Vec<(Resources, Vec<usize>)> = Vec::new();
    for &k in members {
        let need = &snapshot.demand[items[k].demand].resources;
        if !capacity.fits(need) {
            continue;
        }
        let slot = bins.iter_mut().find(|(free, _)| free.fits(need));
        match slot {
            Some((free, list)) => {
                if let Ok(rest) = free.checked_sub(need) {
                    *free = rest;
                    list.push(k);
                }
            }
            None => {
                if let Ok(rest) = capacity.checked_sub(need) {
                    bins.push((rest, vec![k]));
                }
            }
        }
    }
    bins.into_iter().map(|(_, list)| list).collect()
}

fn cheapest_holding(
    candidates: &[Candidate<'_>],
    members: &[usize],
    items: &[Item],
    snapshot: &Snapshot,
) -> Option<(usize, f64)> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| holds(&c.capacity, members, items, snapshot))
        .map(|(i, c)| (i, c.ty.hourly_price))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
}

/// The largest capacity per dimension over node types and nodes: the yardstick for "how big"
/// a task is when sorting and pricing.
fn reference_capacity(config: &AutoscalerConfig, snapshot: &Snapshot) -> Resources {
    let mut r = Resources::default();
    let caps = config
        .node_types
        .iter()
        .map(|t| t.capacity())
        .chain(snapshot.nodes.iter().map(|n| n.capacity.clone()));
    for c in caps {
        r.cpu_millis = r.cpu_millis.max(c.cpu_millis);
        r.memory_bytes = r.memory_bytes.max(c.memory_bytes);
        r.gpus = r.gpus.max(c.gpus);
        for (k, v) in c.custom {
            let e = r.custom.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
    }
    r
}

/// A task's dominant share of the reference capacity.
fn weight(need: &Resources, reference: &Resources) -> f64 {
    let share = |n: u64, r: u64| if r == 0 { 0.0 } else { n as f64 / r as f64 };
    let mut w = share(need.cpu_millis, reference.cpu_millis)
        .max(share(need.memory_bytes, reference.memory_bytes))
        .max(share(u64::from(need.gpus), u64::from(reference.gpus)));
    for (k, v) in &need.custom {
        w = w.max(share(*v, reference.custom.get(k).copied().unwrap_or(0)));
    }
    w.max(1e-9)
}

#[cfg(test)]
mod tests;
