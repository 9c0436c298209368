//! rgrid's cloud side: turning queued demand into Hetzner Cloud servers running `rgrid-node`,
//! and idle servers back into nothing, without wasting money or leaking machines.
//!
//! - [`config`]: the `[autoscaler]` config section and the API token (from `HCLOUD_TOKEN` only).
//! - [`provider`]: the [`Provider`] trait (create, delete, list by label) the head holds as
//!   `Arc<dyn Provider>`; [`hetzner`]: its Hetzner Cloud implementation and REST client;
//!   [`fake`] (feature `fake`): an in-memory one for tests.
//! - [`cloud_init`]: the user data a provisioned node boots with.
//! - [`policy`]: the pure autoscaling policy (snapshot + `now` → actions, waits, next wake-up).
//! - [`sim`] (feature `sim`): a discrete-event simulator measuring the policy's cost and queue wait against
//!   workload traces and a model of Hetzner, next to the earlier Python design's policy.
//! - [`task_cost`]: what each task cost (its share of its node's billed hours, idle time
//!   included), one rule for the head and the simulator.
//!
//! The head's driver loop, in short: build a [`policy::Snapshot`], call [`policy::decide`],
//! carry out each [`policy::Action`] through the provider (a `Create` renders
//! [`cloud_init::render`] with a fresh single-use join token first, and records a
//! [`policy::ProvisionFailure`] when it fails), show [`policy::Plan::waits`] to waiting
//! clients, and decide again on the next event or at [`policy::Plan::next_wakeup`].

pub mod cloud_init;
pub mod config;
#[cfg(feature = "fake")]
pub mod fake;
pub mod hetzner;
pub mod policy;
pub mod provider;
#[cfg(feature = "sim")]
pub mod sim;
pub mod task_cost;

pub use config::{AutoscalerConfig, HcloudToken, NodeTypeConfig};
#[cfg(feature = "fake")]
pub use fake::FakeProvider;
pub use hetzner::{HcloudClient, HcloudError, HetznerProvider};
pub use policy::{decide, Action, Demand, Plan, ServerState, ServerView, Snapshot, Wait};
pub use provider::{CloudServer, CreateServer, FailureKind, Provider, ProviderError, ServerId};
