//! The simulator end to end on short traces: deterministic, every task runs, no server is left
//! behind, and rgrid's policy copes with a cloud that is often sold out or fails to boot.

use std::time::Duration;

use rgrid_cloud::sim::{simulate, trace, HetznerModel, SeedConfig, SimOptions, SimPolicy, Trace};
use rgrid_cloud::AutoscalerConfig;

fn short(trace: Trace, hours: u64) -> Trace {
    let cut = Duration::from_secs(hours * 3600);
    let name = trace.name.clone();
    Trace::new(
        name,
        trace
            .tasks
            .into_iter()
            .filter(|t| t.arrival < cut)
            .collect(),
    )
}

fn rgrid(config: &AutoscalerConfig) -> SimPolicy {
    SimPolicy::Rgrid(Box::new(config.clone()))
}

#[test]
fn runs_are_deterministic_complete_and_leak_nothing() {
    let config = AutoscalerConfig::default();
    let opts = SimOptions::default();
    for trace in [short(trace::steady(3), 3), short(trace::bursty(3), 4)] {
        let a = simulate(&trace, &rgrid(&config), &config.node_types, &opts);
        let b = simulate(&trace, &rgrid(&config), &config.node_types, &opts);
        assert_eq!(a, b, "same seed, same result");
        assert_eq!(a.unfinished, 0, "{a:?}");
        assert_eq!(a.servers_left, 0, "{a:?}");
        assert!(a.cost > 0.0 && a.node_hours > 0);
        assert!(a.wait_p50 <= a.wait_p95);

        let base = simulate(
            &trace,
            &SimPolicy::Seed(SeedConfig::default()),
            &config.node_types,
            &opts,
        );
        assert_eq!(base.tasks, a.tasks);
        assert_eq!(base.servers_left, 0, "{base:?}");
        assert!(base.policy.starts_with("seed (cx23)"), "{}", base.policy);
    }
}

#[test]
fn a_hostile_cloud_slows_rgrid_down_but_leaks_nothing() {
    let config = AutoscalerConfig::default();
    let opts = SimOptions {
        model: HetznerModel {
            unavailable: 0.4,
            boot_failure: 0.2,
            ..HetznerModel::default()
        },
        ..SimOptions::default()
    };
    let trace = short(trace::steady(5), 3);
    let r = simulate(&trace, &rgrid(&config), &config.node_types, &opts);
    assert_eq!(r.unfinished, 0, "{r:?}");
    assert_eq!(r.servers_left, 0, "{r:?}");
    assert!(r.unavailable > 0, "{r:?}");
}

#[test]
fn the_node_cap_holds_in_a_burst() {
    let config = AutoscalerConfig {
        max_nodes: 2,
        ..AutoscalerConfig::default()
    };
    let trace = short(trace::bursty(9), 3);
    let r = simulate(
        &trace,
        &rgrid(&config),
        &config.node_types,
        &SimOptions::default(),
    );
    assert_eq!(r.unfinished, 0, "{r:?}");
    // Never more than 2 at a time: at most 2 servers per started hour of the run, plus retries.
    let hours = r.makespan.as_secs().div_ceil(3600) + 1;
    assert!(u64::from(r.servers_created) <= 2 * hours + 4, "{r:?}");
}

#[test]
fn every_policy_finishes_leaks_nothing_and_its_tasks_pay_the_bill() {
    let config = AutoscalerConfig::default();
    let opts = SimOptions::default();
    for trace in [short(trace::bursty(4), 3), short(trace::mixed_shapes(4), 2)] {
        for policy in SimPolicy::all(&config) {
            let r = simulate(&trace, &policy, &config.node_types, &opts);
            assert_eq!(r.unfinished, 0, "{} on {}: {r:?}", r.policy, r.trace);
            assert_eq!(r.servers_left, 0, "{} on {}", r.policy, r.trace);
            assert!(r.cost > 0.0);
            // Every euro of the bill is some task's, to rounding (a server created with
            // nothing queued would be the exception; none of these policies makes one).
            assert!(
                (r.attributed() - 1.0).abs() < 0.01,
                "{} on {}: tasks pay {:.4} of the bill",
                r.policy,
                r.trace,
                r.attributed()
            );
            assert!(r.task_costs.per_task.iter().all(|&c| c > 0.0));
        }
    }
}
