//! The policy's input: queued demand by shape ([`Demand`]), the cluster's servers as the head
//! sees them ([`ServerView`], [`ServerState`]) and recent failed creates
//! ([`ProvisionFailure`]), gathered in a [`Snapshot`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rgrid_core::task::LabelRequirement;
use rgrid_core::Resources;

use crate::provider::{FailureKind, ServerId};

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
    /// How long one of them is expected to run, if the head knows: the mean runtime of
    /// finished tasks of this shape ([`super::RuntimeStats::mean`]). With it, capacity is sized to finish the queue within
    /// `drain_target` instead of starting every task at once.
    pub expected_runtime: Option<Duration>,
    /// The sustained rate at which tasks of this shape are submitted, per second, if the head
    /// knows: [`super::sustained_rate`] of the tasks submitted (queued or not, started or not)
    /// in each ten-minute block of the last hour. With it and `expected_runtime`, the busy cpu
    /// of running nodes counts as capacity for the whole `drain_target`, minus what the
    /// arrivals keep busy, instead of for `max_queue_wait` only: a burst no longer buys a node per decision while its own nodes
    /// work through it. `None` keeps the rule without it.
    pub arrival_rate: Option<f64>,
    /// How long the attempts of this shape running now have been running, on average
    /// (`None` when none runs). Until one of them finishes, every started task runs at least as
    /// long as it has so far, so this is a lower bound on their mean runtime: the policy uses
    /// it in place of `expected_runtime` while that is `None`, and looks again when it has
    /// doubled. Without either, every queued task gets a slot at once.
    pub running_for: Option<Duration>,
}

/// Where a server, and the node on it, is in its life, as the head sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// The server exists (it carries the cluster label) but no node has joined from it yet.
    Provisioning,
    /// Joined and taking work.
    Ready,
    /// Takes no new work; finishing what it runs.
    Draining,
    /// Dead (missed heartbeats past the timeout) or its server is broken.
    Failed,
}

/// One server of the cluster (or a node joined by hand), as the head sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerView {
    /// The cloud server behind it; `None` for nodes the autoscaler does not manage (they are
    /// used as capacity but never drained or deleted).
    pub server: Option<ServerId>,
    /// Node / server name.
    pub name: String,
    /// Node type (server type) name.
    pub node_type: String,
    /// State.
    pub state: ServerState,
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
    /// Since when the node has been out of touch (suspect: missed heartbeats or lost its
    /// connection, not yet declared dead); `None` while in touch. Its room still counts for
    /// `scale_up_delay` — a blip buys no node — and it is never drained while out of touch.
    pub suspect_since: Option<SystemTime>,
    /// When the attempts running on it are expected to have ended — the latest over them of
    /// the start plus [`super::RuntimeStats::ends_within`] of its shape (a high quantile of the
    /// runtimes it has not outlived yet) — if the head knows runtimes for every one of them;
    /// `None` otherwise. A busy node is drained ahead of its next billed hour only when it is
    /// expected to empty before that hour starts.
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
    /// The cluster's servers, including ones no node has joined from yet, and nodes joined by
    /// hand.
    pub servers: Vec<ServerView>,
    /// Recent create failures.
    pub failures: Vec<ProvisionFailure>,
    /// What keeps capacity busy besides the queue, if the head knows: every shape submitted
    /// in the last hour whose mean runtime is known, with its sustained arrival rate. Surplus
    /// and idle nodes are drained only when the rest of the cluster carries what the streams
    /// keep busy (so a lull between arrivals does not drain capacity that scale-up buys back),
    /// and spare capacity is kept for their fluctuation (`reserve`).
    pub streams: Vec<Stream>,
}

/// The tasks of one shape arriving as a stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Stream {
    /// What one task needs.
    pub resources: Resources,
    /// The sustained arrival rate, per second ([`super::sustained_rate`]).
    pub rate: f64,
    /// The mean runtime.
    pub runtime: Duration,
}

impl Snapshot {
    /// The cpu, in millis, the streams keep busy (Little's law: rate × runtime × cpu, summed),
    /// and its standard deviation (the tasks in the system are Poisson distributed: the
    /// square root of rate × runtime × cpu², summed).
    pub fn arrival_load(&self) -> (u64, u64) {
        let (mut mean, mut var) = (0.0, 0.0);
        for s in &self.streams {
            let busy = s.rate.max(0.0) * s.runtime.as_secs_f64();
            let cpu = s.resources.cpu_millis as f64;
            mean += busy * cpu;
            var += busy * cpu * cpu;
        }
        (mean as u64, var.sqrt() as u64)
    }
}
