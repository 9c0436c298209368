//! A discrete-event simulator for autoscaling: a virtual clock runs a policy against a workload
//! [`trace`] and a [`model`] of Hetzner Cloud (boot times, hourly billing, occasional
//! `resource_unavailable`), and [`report`]s cost, node-hours, p50/p95 queue wait, makespan and
//! what each task cost ([`cost`]). The [`engine`] runs rgrid's policy ([`rgrid`]) and, on the
//! same traces, model and seed, its peers: a Ray-style autoscaler ([`ray`]), a Kubernetes
//! cluster-autoscaler-style one ([`cluster_autoscaler`]) and the earlier Python RGrid design
//! ([`seed`]).

pub mod cluster_autoscaler;
pub mod cost;
pub mod engine;
pub mod model;
pub mod ray;
pub mod report;
mod rgrid;
pub mod seed;
pub mod trace;

pub use cluster_autoscaler::ClusterAutoscalerConfig;
pub use cost::TaskCosts;
pub use engine::SimOptions;
pub use model::HetznerModel;
pub use ray::RayConfig;
pub use report::{comparison_table, Report};
pub use seed::SeedConfig;
pub use trace::{Trace, TraceTask};

use crate::config::{AutoscalerConfig, NodeTypeConfig};

/// An autoscaler the simulation can run.
#[derive(Clone, Debug)]
pub enum SimPolicy {
    /// rgrid's policy with this configuration.
    Rgrid(Box<AutoscalerConfig>),
    /// The earlier Python RGrid design.
    Seed(SeedConfig),
    /// Ray's autoscaler.
    Ray(RayConfig),
    /// The Kubernetes cluster-autoscaler.
    ClusterAutoscaler(ClusterAutoscalerConfig),
}

impl SimPolicy {
    /// rgrid with `config`, and every peer with its defaults.
    pub fn all(config: &AutoscalerConfig) -> Vec<SimPolicy> {
        vec![
            SimPolicy::Seed(SeedConfig::default()),
            SimPolicy::Ray(RayConfig::default()),
            SimPolicy::ClusterAutoscaler(ClusterAutoscalerConfig::default()),
            SimPolicy::Rgrid(Box::new(config.clone())),
        ]
    }
}

/// Runs `trace` under `policy` with `types` as the price list and reports cost and queue
/// wait.
pub fn simulate(
    trace: &Trace,
    policy: &SimPolicy,
    types: &[NodeTypeConfig],
    opts: &SimOptions,
) -> Report {
    match policy {
        SimPolicy::Rgrid(config) => {
            let mut rgrid = rgrid::Rgrid::new(config, opts.debounce);
            engine::run("rgrid".into(), trace, &mut rgrid, types, opts)
        }
        SimPolicy::Seed(config) => {
            let mut seed = seed::Seed::new(config, trace, types);
            let name = format!("seed ({})", types[seed.ty].name);
            engine::run(name, trace, &mut seed, types, opts)
        }
        SimPolicy::Ray(config) => {
            let mut ray = ray::Ray { config };
            engine::run("ray".into(), trace, &mut ray, types, opts)
        }
        SimPolicy::ClusterAutoscaler(config) => {
            let mut ca = cluster_autoscaler::ClusterAutoscaler::new(config, opts.seed);
            engine::run("cluster-autoscaler".into(), trace, &mut ca, types, opts)
        }
    }
}

/// Runs every trace under every policy (same seed and model for all) with `types` as the
/// price list; returns the reports per trace, in the order of `policies`.
pub fn compare(
    traces: &[Trace],
    policies: &[SimPolicy],
    types: &[NodeTypeConfig],
    opts: &SimOptions,
) -> Vec<Vec<Report>> {
    traces
        .iter()
        .map(|trace| {
            (policies.iter())
                .map(|policy| simulate(trace, policy, types, opts))
                .collect()
        })
        .collect()
}
