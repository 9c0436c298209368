//! The autoscaling policy: a pure, deterministic function from a [`Snapshot`] of the cluster
//! (queued demand by shape, nodes with their type, age, idle time and state, recent
//! provisioning failures) and the time `now` to a [`Plan`]: servers to create, nodes to
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
//! - **Reserve**: with known streams of arrivals ([`Snapshot::streams`]), the cluster keeps
//!   their load plus `reserve` standard deviations of it, buying the shortfall before a queue
//!   forms, so that most tasks start without waiting for a boot.
//! - **Scale down**: Hetzner bills every started hour until deletion, so an idle node costs
//!   nothing more until its next hour starts. Idle nodes are drained when that start is within
//!   `scale_down_window` (and deleted once drained), keeping `min_nodes` and the reserve. A
//!   busy node whose next hour starts within `drain_ahead` is drained when the rest of the
//!   cluster carries the load plus `headroom` (and the reserve) and its attempts are expected
//!   to end before that hour — from a high quantile of its shapes' runtimes, so long tasks are
//!   not cut off. The load is the busy and queued cpu, but at least what the arrivals keep
//!   busy when that is known — the capacity scale-up would buy back for them. When the rest
//!   cannot carry the load but would with a cheaper type in its place, the node is drained
//!   and that type created (a lone large node at night becomes a small one).
//! - **Replace**: failed nodes are deleted (demand then creates replacements), nodes older than
//!   `max_lifetime` are drained, servers that never joined within `join_timeout` are deleted.
//!
//! [`decide`] runs the phases in that order, one module each: [`replace`] (servers leaving
//! now), [`capacity`] (what existing and provisioning servers absorb), [`scale_up`] (new
//! servers for the rest), [`reserve`] (spare capacity for arrivals), [`scale_down`] (idle and
//! surplus drains, replacing a node by a cheaper one) and [`waits`] (why each queued task
//! waits); [`packing`] holds the bin packing scale-up prices node types with, [`estimate`]
//! the estimates the head fills the snapshot with.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use rgrid_core::task::LabelRequirement;
use rgrid_core::Resources;

use crate::config::{AutoscalerConfig, NodeTypeConfig, NODE_TYPE_LABEL};

mod capacity;
mod estimate;
mod packing;
mod plan;
mod replace;
mod reserve;
mod scale_down;
mod scale_up;
mod snapshot;
mod waits;

pub use estimate::{
    sustained_rate, RuntimeStats, BUSY_QUANTILE, RATE_BLOCK, RATE_BLOCKS, RUNTIME_SAMPLES,
};
pub use plan::{Action, Limit, Plan, Reason, Wait};
pub use snapshot::{Demand, ProvisionFailure, ServerState, ServerView, Snapshot, Stream};

/// Hetzner's billing period: every started hour is paid.
pub const BILLING_PERIOD: Duration = Duration::from_secs(3600);

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
    to_next_hour(age)
        .saturating_sub(DELETE_MARGIN)
        .max(Duration::from_secs(10))
}

/// After a rate-limit failure or an unclassified one (bad token, invalid request, failed
/// action…), creation pauses this long: a persistent error costs one request a minute.
pub const ERROR_PAUSE: Duration = Duration::from_secs(60);

/// Runs the policy. Pure: the same arguments always give the same plan.
pub fn decide(config: &AutoscalerConfig, snapshot: &Snapshot, now: SystemTime) -> Plan {
    let mut cx = Ctx {
        config,
        snapshot,
        now,
        wake: Wakeup { now, at: None },
        actions: Vec::new(),
        leaving: BTreeSet::new(),
    };
    replace::retire(&mut cx);
    let mut queue = capacity::absorb(&mut cx);
    scale_up::create(&mut cx, &mut queue);
    reserve::keep(&mut cx, &queue);
    scale_down::drain(&mut cx, &queue);
    let waits = waits::per_demand(&cx, &queue);
    Plan {
        actions: cx.actions,
        waits,
        next_wakeup: cx.wake.at,
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

/// How long until the next billed hour of a server of `age` starts.
fn to_next_hour(age: Duration) -> Duration {
    let period = BILLING_PERIOD.as_secs();
    Duration::from_secs(period - age.as_secs() % period)
}

fn count<I: Iterator>(it: I) -> u32 {
    u32::try_from(it.count()).unwrap_or(u32::MAX)
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

/// What the phases of one decision share.
struct Ctx<'a> {
    config: &'a AutoscalerConfig,
    snapshot: &'a Snapshot,
    now: SystemTime,
    wake: Wakeup,
    /// The plan's actions so far, in order.
    actions: Vec<Action>,
    /// Servers leaving in this decision (index into `snapshot.servers`).
    leaving: BTreeSet<usize>,
}

impl Ctx<'_> {
    /// Ready servers that stay: the capacity work can land on now.
    fn ready(&self, i: usize, s: &ServerView) -> bool {
        !self.leaving.contains(&i) && s.state == ServerState::Ready
    }

    /// Managed servers that serve, or will serve, work.
    fn serving(&self, i: usize, s: &ServerView) -> bool {
        s.server.is_some()
            && !self.leaving.contains(&i)
            && matches!(s.state, ServerState::Ready | ServerState::Provisioning)
    }

    /// How many servers serve after this decision: those that stay plus those it creates.
    fn serving_after(&self) -> u32 {
        let staying =
            count((self.snapshot.servers.iter().enumerate()).filter(|(i, s)| self.serving(*i, s)));
        let created = count(
            self.actions
                .iter()
                .filter(|a| matches!(a, Action::Create { .. })),
        );
        staying + created
    }

    /// How long until the next billed hour of server `s` starts.
    fn to_next_hour(&self, s: &ServerView) -> Duration {
        to_next_hour(since(self.now, s.created))
    }

    /// The cpu that serves after this decision: ready and provisioning servers that stay
    /// (nodes joined by hand too), and the servers it creates.
    fn capacity_after(&self) -> u64 {
        let staying: u64 = (self.snapshot.servers.iter().enumerate())
            .filter(|(i, s)| {
                !self.leaving.contains(i)
                    && matches!(s.state, ServerState::Ready | ServerState::Provisioning)
            })
            .map(|(_, s)| s.capacity.cpu_millis)
            .sum();
        let created: u64 = (self.actions.iter())
            .filter_map(|a| match a {
                Action::Create { node_type, .. } => self.config.node_type(node_type),
                _ => None,
            })
            .map(|t| t.capacity().cpu_millis)
            .sum();
        staying + created
    }

    /// The cpu the cluster keeps for the streams of arrivals: their load plus `reserve` times
    /// its spread; 0 without streams.
    fn reserve(&self) -> u64 {
        let (load, spread) = self.snapshot.arrival_load();
        load + (spread as f64 * self.config.reserve.max(0.0)) as u64
    }
}

#[cfg(test)]
mod tests;
