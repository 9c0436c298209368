//! A discrete-event simulator for autoscaling: a virtual clock runs a policy against a workload
//! [`trace`] and a [`model`] of Hetzner Cloud (boot times, hourly billing, occasional
//! `resource_unavailable`), and [`report`]s cost, node-hours, p50/p95 queue wait and makespan.
//! The [`engine`] runs rgrid's policy and, as a baseline on the same traces and model, the
//! policy of the earlier Python RGrid design.

pub mod engine;
pub mod model;
pub mod report;
pub mod trace;

pub use engine::{simulate, BaselineConfig, SimOptions, SimPolicy};
pub use model::HetznerModel;
pub use report::{comparison_table, Report};
pub use trace::{Trace, TraceTask};

use crate::config::AutoscalerConfig;

/// Runs every trace under the baseline and under rgrid's policy with `config`, same seed and
/// model for both; returns `(baseline, rgrid)` per trace.
pub fn compare(
    traces: &[Trace],
    config: &AutoscalerConfig,
    baseline: &BaselineConfig,
    opts: &SimOptions,
) -> Vec<(Report, Report)> {
    let types = &config.node_types;
    traces
        .iter()
        .map(|trace| {
            let base = simulate(trace, &SimPolicy::Baseline(baseline.clone()), types, opts);
            let ours = simulate(
                trace,
                &SimPolicy::Rgrid(Box::new(config.clone())),
                types,
                opts,
            );
            (base, ours)
        })
        .collect()
}
