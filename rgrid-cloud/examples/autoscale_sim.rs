//! Compares rgrid's autoscaling policy with its peers — a Ray-style autoscaler, a Kubernetes
//! cluster-autoscaler-style one and the earlier Python RGrid design — on synthetic workload
//! traces, in a simulated Hetzner Cloud, and shows what each task cost. Run with
//! `cargo run --release -p rgrid-cloud --example autoscale_sim [SEED]`.

use anyhow::Context;
use rgrid_cloud::sim::{compare, comparison_table, trace, SimOptions, SimPolicy, Trace};
use rgrid_cloud::AutoscalerConfig;

fn main() -> anyhow::Result<()> {
    let seed: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("SEED must be a number")?,
        None => 42,
    };
    let config = AutoscalerConfig {
        enabled: true,
        node_types: trace::node_types(),
        ..AutoscalerConfig::default()
    };
    config.validate().context("autoscaler config")?;
    let opts = SimOptions {
        seed,
        ..SimOptions::default()
    };
    let traces = Trace::standard(seed);
    let runs = compare(&traces, &SimPolicy::all(&config), &config.node_types, &opts);
    println!("seed {seed}; same traces, same Hetzner model (boot ~100 s, 1% never join, 3% sold out, hourly billing) for every policy");
    println!("mEUR/task: mean cost of a task (its node-seconds at the hourly price plus its share of idle time); p95 task: 95th percentile; Σtasks: the tasks' costs added up, against the bill\n");
    print!("{}", comparison_table(&runs));
    Ok(())
}
