//! Compares rgrid's autoscaling policy with the earlier Python RGrid design on synthetic
//! workload traces, in a simulated Hetzner Cloud. Run with
//! `cargo run --release -p rgrid-cloud --example autoscale_sim [SEED]`.

use anyhow::Context;
use rgrid_cloud::sim::{compare, comparison_table, BaselineConfig, SimOptions, Trace};
use rgrid_cloud::AutoscalerConfig;

fn main() -> anyhow::Result<()> {
    let seed: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("SEED must be a number")?,
        None => 42,
    };
    let config = AutoscalerConfig {
        enabled: true,
        ..AutoscalerConfig::default()
    };
    config.validate().context("autoscaler config")?;
    let opts = SimOptions {
        seed,
        ..SimOptions::default()
    };
    let traces = Trace::standard(seed);
    let pairs = compare(&traces, &config, &BaselineConfig::default(), &opts);
    println!("seed {seed}; same traces, same Hetzner model (boot ~100 s, 1% never join, 3% sold out, hourly billing) for both\n");
    print!("{}", comparison_table(&pairs));
    Ok(())
}
