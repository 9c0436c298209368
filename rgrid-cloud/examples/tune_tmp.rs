use rgrid_cloud::sim::*;
use rgrid_cloud::AutoscalerConfig;
use std::time::Duration;
fn main() {
    let seed: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(42);
    let opts = SimOptions { seed, ..SimOptions::default() };
    let traces = Trace::standard(seed);
    let base_cfg = AutoscalerConfig::default();
    let bases: Vec<Report> = traces.iter().map(|t| simulate(t, &SimPolicy::Baseline(BaselineConfig::default()), &base_cfg.node_types, &opts)).collect();
    for growth in [0.0, 0.1, 0.25] {
    for target in [30u64, 45] {
    for headroom in [0.1, 0.25] {
    for ahead in [10u64, 20] {
    for delay in [20u64, 60] {
        let cfg = AutoscalerConfig { growth, drain_target: Duration::from_secs(target*60), headroom, drain_ahead: Duration::from_secs(ahead*60), scale_up_delay: Duration::from_secs(delay), ..AutoscalerConfig::default() };
        let mut line = format!("g={growth:<4} T={target} h={headroom:<4} ahead={ahead} d={delay}:");
        let (mut tb, mut to) = (0.0, 0.0);
        for (t, b) in traces.iter().zip(&bases) {
            let r = simulate(t, &SimPolicy::Rgrid(Box::new(cfg.clone())), &cfg.node_types, &opts);
            tb += b.cost; to += r.cost;
            line += &format!(" {}={:.2}x/{}{}", &t.name[..3], r.cost / b.cost, r.wait_p95.as_secs(), if r.wait_p95 <= b.wait_p95 {""} else {"!"});
        }
        println!("{line} tot={:.2}", to/tb);
    }}}}}
}
