//! Existing capacity: every queued task, largest first (first fit decreasing), oldest first,
//! is packed into the free room of ready servers, then — with known runtimes — left to the
//! slots running servers free up, then packed into servers still provisioning. What remains
//! is [`Outcome::Pending`] for scale-up.
//!
//! With known runtimes, tasks that running nodes will start within `max_queue_wait` need no
//! new capacity (a new node would hardly come sooner), and the rest need only enough capacity
//! to finish within `drain_target`; the others queue behind them. Without an arrival rate,
//! running nodes count only for `max_queue_wait`: arrivals might keep them busy after that.
//! With it, a shape needs the slots its arrivals keep busy (rate × runtime, Little's law) plus
//! those that finish its queue within `drain_target`; the busy cpu of running nodes covers
//! them first, shared out among the shapes in turn (a slot is the shape's cpu), and only the
//! shortfall gets new capacity.

use std::collections::BTreeMap;
use std::time::Duration;

use rgrid_core::Resources;

use super::packing::{pack, reference_capacity, weight};
use super::{fits_some_node_type, satisfies, type_labels, Ctx, ServerState, Wait};

/// At most this many queued tasks are planned for individually; beyond it, demand is capped by
/// `max_nodes` long before it matters.
const MAX_PLANNED_TASKS: u64 = 20_000;

/// While a runtime is only known as a lower bound, the policy looks again when the bound has
/// doubled, but no sooner than this.
const MIN_RECHECK: Duration = Duration::from_secs(10);

/// Where one queued task ends up in the plan.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Outcome {
    /// Not placed yet: scale-up's to fund.
    Pending,
    /// Will run after other queued tasks of its shape, on the capacity they get.
    Behind,
    Done(Wait),
}

/// One queued task being planned.
pub(super) struct Item {
    /// Index into `snapshot.demand`.
    pub(super) demand: usize,
    /// Its dominant share of the largest capacity: the packing order and price yardstick.
    pub(super) weight: f64,
}

/// Capacity a task can be packed into.
pub(super) struct Bin {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) free: Resources,
    pub(super) wait: Wait,
}

/// The queue as planned so far, and the existing capacity it was packed into.
pub(super) struct Queue {
    /// Every planned task, in packing order.
    pub(super) items: Vec<Item>,
    /// Where each item ends up (same index).
    pub(super) outcomes: Vec<Outcome>,
    /// Whether a ready server could ever hold the item (then it is never unschedulable).
    pub(super) server_could: Vec<bool>,
    /// Ready servers' free room, then provisioning servers'.
    pub(super) bins: Vec<Bin>,
    /// The server of each bin (index into `snapshot.servers`).
    pub(super) bin_server: Vec<usize>,
    /// Whether queued work was packed into the bin (it is about to be used).
    pub(super) used_bin: Vec<bool>,
    /// Cpu busy on ready servers that stay.
    pub(super) busy: u64,
    /// Cpu of the tasks scale-up had to fund (set by scale-up).
    pub(super) queued: u64,
}

impl Queue {
    /// Whether every planned task is placed on a ready server.
    pub(super) fn nothing_waits(&self) -> bool {
        (self.outcomes.iter()).all(|o| matches!(o, Outcome::Done(Wait::Placing)))
    }
}

/// Plans the queue onto existing capacity.
pub(super) fn absorb(cx: &mut Ctx<'_>) -> Queue {
    let (config, snapshot) = (cx.config, cx.snapshot);
    let mut bins: Vec<Bin> = Vec::new();
    let mut bin_server: Vec<usize> = Vec::new();
    for (i, node) in snapshot.servers.iter().enumerate() {
        if !cx.ready(i, node) {
            continue;
        }
        // A node out of touch keeps its room for `scale_up_delay`: a blip buys no node.
        let back_by = node.suspect_since.map(|t| t + config.scale_up_delay);
        let free = match back_by {
            Some(at) if at <= cx.now => Resources::default(),
            Some(at) => {
                cx.wake.at(at);
                node.free.clone()
            }
            None => node.free.clone(),
        };
        bins.push(Bin {
            labels: node.labels.clone(),
            free,
            wait: Wait::Placing,
        });
        bin_server.push(i);
    }
    let ready_bins = bins.len();
    let mut provisioning: Vec<(Duration, usize)> = (snapshot.servers.iter().enumerate())
        .filter(|(i, n)| !cx.leaving.contains(i) && n.state == ServerState::Provisioning)
        .map(|(i, n)| {
            let eta = (n.created + config.boot_estimate)
                .duration_since(cx.now)
                .unwrap_or_default();
            (eta, i)
        })
        .collect();
    provisioning.sort();
    for (eta, i) in provisioning {
        let node = &snapshot.servers[i];
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
        bin_server.push(i);
    }

    let items = items(cx);
    let busy: u64 = (snapshot.servers.iter().enumerate())
        .filter(|(i, n)| cx.ready(*i, n))
        .map(|(_, n)| n.capacity.cpu_millis.saturating_sub(n.free.cpu_millis))
        .sum();
    let mut queue = Queue {
        outcomes: vec![Outcome::Pending; items.len()],
        server_could: vec![false; items.len()],
        used_bin: vec![false; bins.len()],
        items,
        bins,
        bin_server,
        busy,
        queued: 0,
    };

    for (k, item) in queue.items.iter().enumerate() {
        let demand = &snapshot.demand[item.demand];
        let fits = (snapshot.servers.iter().enumerate()).any(|(i, n)| {
            cx.ready(i, n)
                && n.capacity.fits(&demand.resources)
                && satisfies(&n.labels, &demand.selector)
        });
        queue.server_could[k] = fits;
        if !fits && !fits_some_node_type(config, &demand.resources, &demand.selector) {
            queue.outcomes[k] = Outcome::Done(Wait::Unschedulable);
            continue;
        }
        if let Some(b) = pack(&mut queue.bins[..ready_bins], demand) {
            queue.used_bin[b] = true;
            queue.outcomes[k] = Outcome::Done(Wait::Placing);
        }
    }

    free_up(cx, &mut queue);

    // Servers being provisioned take what they can of the rest.
    for (k, item) in queue.items.iter().enumerate() {
        if queue.outcomes[k] != Outcome::Pending {
            continue;
        }
        let demand = &snapshot.demand[item.demand];
        if let Some(b) = pack(&mut queue.bins[ready_bins..], demand) {
            queue.used_bin[ready_bins + b] = true;
            queue.outcomes[k] = Outcome::Done(queue.bins[ready_bins + b].wait.clone());
        }
    }
    queue
}

/// Every queued task, largest first, then oldest first.
fn items(cx: &Ctx<'_>) -> Vec<Item> {
    let snapshot = cx.snapshot;
    let reference = reference_capacity(cx.config, snapshot);
    let weights: Vec<f64> = (snapshot.demand.iter())
        .map(|d| weight(&d.resources, &reference))
        .collect();
    let mut order: Vec<usize> = (0..snapshot.demand.len()).collect();
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
    items
}

/// With known runtimes: which pending tasks running servers start soon enough, which queue
/// behind the capacity the others get, and which are left for new capacity (see the module
/// docs).
fn free_up(cx: &mut Ctx<'_>, queue: &mut Queue) {
    let (config, snapshot) = (cx.config, cx.snapshot);
    let mut busy_left = queue.busy;
    let mut pending_of: Vec<Vec<usize>> = vec![Vec::new(); snapshot.demand.len()];
    for (k, item) in queue.items.iter().enumerate() {
        if queue.outcomes[k] == Outcome::Pending {
            pending_of[item.demand].push(k);
        }
    }
    for (d, pending) in pending_of.iter().enumerate() {
        let demand = &snapshot.demand[d];
        let (runtime, lower_bound) = match (demand.expected_runtime, demand.running_for) {
            (Some(known), _) => (known, false),
            (None, Some(so_far)) => {
                // It grows as they run: look again when it has doubled.
                cx.wake.at(cx.now + so_far.max(MIN_RECHECK));
                (so_far, true)
            }
            (None, None) => continue,
        };
        if runtime.is_zero() {
            continue;
        }
        let fitting = (snapshot.servers.iter().enumerate()).filter(|(i, n)| {
            cx.ready(*i, n)
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
            queue.outcomes[k] = Outcome::Done(Wait::FreeingUp {
                eta: runtime.div_f64(slots) * (j as u32 + 1),
            });
        }
        for &k in &rest[keep..] {
            queue.outcomes[k] = Outcome::Behind;
        }
    }
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
