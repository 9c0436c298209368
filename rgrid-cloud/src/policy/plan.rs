//! The policy's output: a [`Plan`] of [`Action`]s (create, drain, delete, each delete or
//! drain with its [`Reason`]), why each queued task still waits ([`Wait`], [`Limit`]) and when
//! to look again.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::provider::{FailureKind, ServerId};

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
    /// [`crate::Provider::create`]; record a [`super::ProvisionFailure`] if it fails).
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
                    "waiting: a request to the cloud API failed (see the head's log); retrying shortly"
                }
            }),
            Wait::Unschedulable => f.write_str("no node type can run this task"),
        }
    }
}

/// What the policy decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Things to do, in order.
    pub actions: Vec<Action>,
    /// For each entry of `Snapshot::demand` (same index): why its tasks wait, as runs of
    /// `(wait, task count)` in queue order — the first tasks get the first entry.
    pub waits: Vec<Vec<(Wait, u32)>>,
    /// Ask again at this time even if nothing happens (a delay, a billing window or a timeout
    /// expires then). The head should also ask after every event that changes the snapshot.
    pub next_wakeup: Option<SystemTime>,
}

impl Plan {
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
