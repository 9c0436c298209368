//! One test per policy rule, on hand-built snapshots with a fixed clock.

use super::*;
use crate::config::AutoscalerConfig;
use crate::provider::{FailureKind, ServerId};
use std::time::UNIX_EPOCH;

const GIB: u64 = 1 << 30;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn cfg() -> AutoscalerConfig {
    AutoscalerConfig {
        enabled: true,
        scale_up_delay: Duration::ZERO,
        growth: 0.0,
        reserve: 0.0,
        ..AutoscalerConfig::default()
    }
}

fn demand(cpus: u64, mem_gib: u64, count: u32, oldest: SystemTime) -> Demand {
    Demand {
        resources: Resources::new(cpus * 1000, mem_gib * GIB),
        selector: Vec::new(),
        count,
        oldest,
        expected_runtime: None,
        arrival_rate: None,
        running_for: None,
    }
}

fn node(id: u64, ty: &str, state: ServerState, created: SystemTime) -> ServerView {
    let config = cfg();
    let capacity = config
        .node_type(ty)
        .map(|t| t.capacity())
        .unwrap_or_default();
    let labels = config
        .node_type(ty)
        .map(|t| type_labels(&config, t))
        .unwrap_or_default();
    ServerView {
        server: Some(ServerId(id)),
        name: format!("n{id}"),
        node_type: ty.into(),
        state,
        created,
        labels,
        free: capacity.clone(),
        capacity,
        running: 0,
        idle_since: Some(created),
        busy_until: None,
        suspect_since: None,
    }
}

/// A stream of 1-cpu tasks of ten minutes that keeps `tasks` of them running.
fn stream(tasks: f64) -> Stream {
    Stream {
        resources: Resources::new(1000, 2 * GIB),
        rate: tasks / 600.0,
        runtime: Duration::from_secs(600),
    }
}

fn busy(mut n: ServerView, running: u32, free_cpus: u64) -> ServerView {
    n.running = running;
    n.idle_since = None;
    n.free = Resources::new(free_cpus * 1000, free_cpus * 2 * GIB);
    n
}

fn creates(d: &Plan) -> Vec<(&str, &str)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Create {
                node_type,
                location,
            } => Some((node_type.as_str(), location.as_str())),
            _ => None,
        })
        .collect()
}

fn prov(ty: &str, eta: u64) -> Wait {
    Wait::Provisioning {
        node_type: ty.into(),
        eta: Duration::from_secs(eta),
    }
}

#[test]
fn packs_queued_tasks_into_the_cheapest_type_mix() {
    // 10 × (1 cpu, 2G): cx43 (8) + cx23 (2) costs 0.0208/h, cheaper than 5 × cx23 (0.028),
    // 2 × cx33 + cx23 (0.0232) or one cx53 (0.028).
    let snap = Snapshot {
        demand: vec![demand(1, 2, 10, t(0))],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(30));
    assert_eq!(creates(&d), [("cx43", "fsn1"), ("cx23", "fsn1")]);
    assert_eq!(d.waits[0], [(prov("cx43", 90), 8), (prov("cx23", 90), 2)]);
    assert_eq!(d.wait_for(0, 9), Some(&prov("cx23", 90)));
}

#[test]
fn large_and_small_tasks_share_nodes() {
    // One 6-cpu task and four 1-cpu tasks: 10 cpus → cx53 would waste; cx43 + cx23 fits exactly.
    let snap = Snapshot {
        demand: vec![demand(1, 1, 4, t(0)), demand(6, 8, 1, t(0))],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(30));
    assert_eq!(creates(&d), [("cx43", "fsn1"), ("cx23", "fsn1")]);
}

#[test]
fn free_capacity_and_provisioning_nodes_absorb_demand_first() {
    let snap = Snapshot {
        demand: vec![demand(1, 1, 6, t(0))],
        servers: vec![
            busy(node(1, "cx33", ServerState::Ready, t(0)), 2, 2),
            node(2, "cx33", ServerState::Provisioning, t(0)),
        ],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(30));
    assert!(creates(&d).is_empty(), "{:?}", d.actions);
    assert_eq!(d.waits[0], [(Wait::Placing, 2), (prov("cx33", 60), 4)]);
    assert_eq!(
        d.wait_for(0, 3).map(ToString::to_string).as_deref(),
        Some("waiting for a node of type cx33 (provisioning, ~60 s left)")
    );
}

#[test]
fn never_provisions_for_unschedulable_tasks() {
    let mut gpu = demand(1, 1, 3, t(0));
    gpu.resources.gpus = 1;
    let snap = Snapshot {
        demand: vec![demand(64, 1, 2, t(0)), gpu],
        ..Snapshot::default()
    };
    let config = cfg();
    let d = decide(&config, &snap, t(30));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.waits[0], [(Wait::Unschedulable, 2)]);
    assert_eq!(d.waits[1], [(Wait::Unschedulable, 3)]);
    assert!(!fits_some_node_type(
        &config,
        &Resources::new(64_000, GIB),
        &[]
    ));

    // A static node big enough makes it a matter of waiting, not unschedulable.
    let mut big = busy(node(9, "cx53", ServerState::Ready, t(0)), 1, 0);
    big.server = None;
    big.capacity = Resources::new(128_000, 512 * GIB);
    let snap = Snapshot {
        demand: vec![demand(64, 1, 1, t(0))],
        servers: vec![big],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(30));
    assert!(d.actions.is_empty());
    assert_eq!(d.waits[0], [(Wait::Placing, 1)]);
}

#[test]
fn creation_is_bounded_by_max_nodes_per_type_and_concurrent_provisioning() {
    let mut config = cfg();
    config.max_concurrent_provisioning = 2;
    let snap = Snapshot {
        demand: vec![demand(1, 2, 100, t(0))],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(30));
    assert_eq!(creates(&d), [("cx53", "fsn1"), ("cx53", "fsn1")]);
    assert_eq!(
        d.waits[0].last(),
        Some(&(
            Wait::AtCapacity {
                limit: Limit::Provisioning(2)
            },
            68
        ))
    );

    // max_nodes counts existing servers, draining ones included.
    let mut config = cfg();
    config.max_nodes = 3;
    let snap = Snapshot {
        demand: vec![demand(1, 2, 100, t(0))],
        servers: vec![
            busy(node(1, "cx23", ServerState::Ready, t(0)), 2, 0),
            busy(node(2, "cx23", ServerState::Draining, t(0)), 2, 0),
        ],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(30));
    assert_eq!(creates(&d).len(), 1);
    assert!(d.waits[0].iter().any(|(w, _)| *w
        == Wait::AtCapacity {
            limit: Limit::MaxNodes(3)
        }));

    // A per-type cap moves the rest to the next best type.
    let mut config = cfg();
    config.node_types.retain(|t| t.name != "cx43");
    if let Some(t) = config.node_types.iter_mut().find(|t| t.name == "cx53") {
        t.max_nodes = Some(1);
    }
    let snap = Snapshot {
        demand: vec![demand(1, 2, 32, t(0))],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(30));
    let made = creates(&d);
    assert_eq!(made.iter().filter(|(t, _)| *t == "cx53").count(), 1);
    assert_eq!(
        made.iter().filter(|(t, _)| *t == "cx33").count(),
        4,
        "{made:?}"
    );
}

#[test]
fn selectors_restrict_creation_to_labelled_types() {
    let mut config = cfg();
    let mut gpu_type = config.node_types[0].clone();
    gpu_type.name = "gex44".into();
    gpu_type.gpus = 1;
    gpu_type.hourly_price = 0.3;
    gpu_type.labels.insert("gpu".into(), "rtx4000".into());
    config.node_types.push(gpu_type);
    let mut gpu = demand(1, 1, 1, t(0));
    gpu.resources.gpus = 1;
    gpu.selector
        .push("gpu=rtx4000".parse().expect("a valid label selector"));
    let mut on_cx33 = demand(1, 1, 1, t(0));
    on_cx33.selector.push(
        format!("{NODE_TYPE_LABEL} in (cx33)")
            .parse()
            .expect("a valid label selector"),
    );
    let snap = Snapshot {
        demand: vec![gpu, on_cx33, demand(1, 1, 1, t(0))],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(30));
    let mut made = creates(&d);
    made.sort();
    assert_eq!(
        made,
        [("cx23", "fsn1"), ("cx33", "fsn1"), ("gex44", "fsn1")]
    );
}

#[test]
fn sold_out_falls_back_to_another_location_then_another_type() {
    let config = cfg();
    let sold = |loc: &str| ProvisionFailure {
        node_type: "cx43".into(),
        location: loc.into(),
        kind: FailureKind::Unavailable,
        at: t(0),
    };
    let mut snap = Snapshot {
        demand: vec![demand(1, 2, 10, t(0))],
        failures: vec![sold("fsn1")],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(60));
    assert_eq!(creates(&d), [("cx43", "nbg1"), ("cx23", "fsn1")]);
    assert_eq!(d.next_wakeup, Some(t(600)));

    snap.failures = vec![sold("fsn1"), sold("nbg1"), sold("hel1")];
    let d = decide(&config, &snap, t(60));
    assert_eq!(
        creates(&d),
        [("cx33", "fsn1"), ("cx33", "fsn1"), ("cx23", "fsn1")]
    );

    // After the cooldown, the sold-out pair is tried again.
    let d = decide(&config, &snap, t(601));
    assert_eq!(creates(&d), [("cx43", "fsn1"), ("cx23", "fsn1")]);
}

#[test]
fn sold_out_everywhere_says_so() {
    let mut config = cfg();
    config.node_types.retain(|t| t.name == "cx23");
    config.locations = vec!["fsn1".into()];
    let snap = Snapshot {
        demand: vec![demand(1, 2, 2, t(0))],
        failures: vec![ProvisionFailure {
            node_type: "cx23".into(),
            location: "fsn1".into(),
            kind: FailureKind::Unavailable,
            at: t(0),
        }],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(60));
    assert!(d.actions.is_empty());
    assert_eq!(d.waits[0], [(Wait::SoldOut { until: t(600) }, 2)]);
}

#[test]
fn quota_errors_pause_creation() {
    let snap = Snapshot {
        demand: vec![demand(1, 2, 4, t(0))],
        failures: vec![ProvisionFailure {
            node_type: "cx33".into(),
            location: "fsn1".into(),
            kind: FailureKind::Quota,
            at: t(10),
        }],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(60));
    assert!(d.actions.is_empty());
    assert_eq!(
        d.waits[0],
        [(
            Wait::Paused {
                until: t(610),
                cause: FailureKind::Quota
            },
            4
        )]
    );
    assert_eq!(d.next_wakeup, Some(t(610)));
    assert_eq!(creates(&decide(&cfg(), &snap, t(611))).len(), 1);
}

#[test]
fn other_create_errors_pause_creation_for_a_minute() {
    let snap = Snapshot {
        demand: vec![demand(1, 2, 4, t(0))],
        failures: vec![ProvisionFailure {
            node_type: "cx33".into(),
            location: "fsn1".into(),
            kind: FailureKind::Other,
            at: t(30),
        }],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(40));
    assert!(d.actions.is_empty());
    let wait = d.wait_for(0, 0).expect("the demand has a wait");
    assert!(wait.to_string().contains("cloud API failed"), "{wait}");
    assert_eq!(d.next_wakeup, Some(t(90)));
    assert_eq!(creates(&decide(&cfg(), &snap, t(90))).len(), 1);
}

#[test]
fn scale_up_waits_for_scale_up_delay() {
    let mut config = cfg();
    config.scale_up_delay = Duration::from_secs(20);
    let snap = Snapshot {
        demand: vec![demand(1, 2, 4, t(100))],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(105));
    assert!(d.actions.is_empty());
    assert_eq!(d.waits[0], [(Wait::Delayed { until: t(120) }, 4)]);
    assert_eq!(d.next_wakeup, Some(t(120)));
    assert_eq!(creates(&decide(&config, &snap, t(120))), [("cx33", "fsn1")]);
}

#[test]
fn idle_nodes_drain_just_before_their_next_billed_hour() {
    let mut n = node(1, "cx33", ServerState::Ready, t(0));
    n.idle_since = Some(t(600));
    let snap = Snapshot {
        servers: vec![n],
        ..Snapshot::default()
    };
    // Minute 50: the hour is paid anyway; keep it, look again when the window opens.
    let d = decide(&cfg(), &snap, t(3000));
    assert!(d.actions.is_empty());
    assert_eq!(d.next_wakeup, Some(t(3600 - 240)));
    // Minute 57: drain.
    let d = decide(&cfg(), &snap, t(3420));
    assert_eq!(
        d.actions,
        [Action::Drain {
            server: ServerId(1),
            name: "n1".into(),
            reason: Reason::Idle
        }]
    );
    // Same in a later hour.
    let d = decide(&cfg(), &snap, t(3 * 3600 + 3500));
    assert_eq!(d.actions.len(), 1);
}

#[test]
fn drained_nodes_are_deleted_once_empty() {
    let snap = Snapshot {
        servers: vec![
            node(1, "cx33", ServerState::Draining, t(0)),
            busy(node(2, "cx33", ServerState::Draining, t(0)), 1, 3),
        ],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(3500));
    assert_eq!(
        d.actions,
        [Action::Delete {
            server: ServerId(1),
            name: "n1".into(),
            reason: Reason::Drained
        }]
    );
}

#[test]
fn min_idle_protects_nodes_that_just_finished() {
    let mut n = node(1, "cx33", ServerState::Ready, t(0));
    n.idle_since = Some(t(3400));
    let snap = Snapshot {
        servers: vec![n],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(3420));
    assert!(d.actions.is_empty());
    assert_eq!(d.next_wakeup, Some(t(3460)));
    assert_eq!(decide(&cfg(), &snap, t(3460)).actions.len(), 1);
}

#[test]
fn min_nodes_are_kept() {
    let mut config = cfg();
    config.min_nodes = 1;
    let snap = Snapshot {
        servers: vec![
            node(1, "cx33", ServerState::Ready, t(0)),
            node(2, "cx33", ServerState::Ready, t(60)),
        ],
        ..Snapshot::default()
    };
    let d = decide(&config, &snap, t(3500));
    assert_eq!(d.actions.len(), 1, "{:?}", d.actions);

    // Below min_nodes, the cheapest type is created.
    config.min_nodes = 2;
    let d = decide(&config, &Snapshot::default(), t(0));
    assert_eq!(creates(&d), [("cx23", "fsn1"), ("cx23", "fsn1")]);
}

#[test]
fn idle_node_is_kept_when_queued_work_fits_it() {
    let mut n = node(1, "cx33", ServerState::Ready, t(0));
    n.idle_since = Some(t(600));
    let snap = Snapshot {
        demand: vec![demand(1, 1, 1, t(3400))],
        servers: vec![n],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(3420));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.waits[0], [(Wait::Placing, 1)]);
}

#[test]
fn old_nodes_are_drained_and_replaced() {
    let old = busy(node(1, "cx23", ServerState::Ready, t(0)), 2, 0);
    let snap = Snapshot {
        demand: vec![demand(1, 2, 2, t(0))],
        servers: vec![old],
        ..Snapshot::default()
    };
    let now = t(25 * 3600);
    let d = decide(&cfg(), &snap, now);
    assert_eq!(
        d.actions,
        [
            Action::Drain {
                server: ServerId(1),
                name: "n1".into(),
                reason: Reason::Lifetime
            },
            Action::Create {
                node_type: "cx23".into(),
                location: "fsn1".into()
            }
        ]
    );
    // Disabled with a zero lifetime.
    let mut config = cfg();
    config.max_lifetime = Duration::ZERO;
    let d = decide(&config, &snap, now);
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Drain { .. })));
}

#[test]
fn failed_nodes_are_deleted_and_replaced() {
    let snap = Snapshot {
        demand: vec![demand(2, 4, 1, t(0))],
        servers: vec![busy(node(1, "cx23", ServerState::Failed, t(0)), 1, 0)],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(100));
    assert_eq!(
        d.actions,
        [
            Action::Delete {
                server: ServerId(1),
                name: "n1".into(),
                reason: Reason::Failed
            },
            Action::Create {
                node_type: "cx23".into(),
                location: "fsn1".into()
            }
        ]
    );
}

#[test]
fn servers_that_never_join_are_deleted() {
    let mut unmanaged = node(2, "cx23", ServerState::Failed, t(0));
    unmanaged.server = None;
    let snap = Snapshot {
        servers: vec![node(1, "cx23", ServerState::Provisioning, t(0)), unmanaged],
        ..Snapshot::default()
    };
    let d = decide(&cfg(), &snap, t(300));
    assert!(d.actions.is_empty());
    assert_eq!(d.next_wakeup, Some(t(600)));
    let d = decide(&cfg(), &snap, t(600));
    assert_eq!(
        d.actions,
        [Action::Delete {
            server: ServerId(1),
            name: "n1".into(),
            reason: Reason::NeverJoined
        }]
    );
}

#[test]
fn wait_messages_read_well() {
    assert_eq!(
        prov("cx33", 90).to_string(),
        "waiting for a node of type cx33 (provisioning, ~90 s left)"
    );
    assert_eq!(
        prov("cx33", 0).to_string(),
        "waiting for a node of type cx33 (provisioning, due now)"
    );
    assert!(Wait::Unschedulable.to_string().contains("no node type"));
}

#[test]
fn decisions_are_deterministic() {
    let snap = Snapshot {
        demand: vec![demand(1, 2, 37, t(0)), demand(3, 6, 5, t(5))],
        servers: vec![
            busy(node(1, "cx33", ServerState::Ready, t(0)), 2, 1),
            node(2, "cx43", ServerState::Provisioning, t(100)),
        ],
        ..Snapshot::default()
    };
    let a = decide(&cfg(), &snap, t(120));
    for _ in 0..5 {
        assert_eq!(decide(&cfg(), &snap, t(120)), a);
    }
}

#[test]
fn new_nodes_grow_with_the_cluster() {
    let mut config = cfg();
    config.growth = 1.0;
    // 12 cpus busy and one task queued: the next node is a big one, not a cx23.
    let snap = Snapshot {
        demand: vec![demand(1, 2, 1, t(0))],
        servers: vec![busy(node(1, "cx53", ServerState::Ready, t(0)), 12, 0)],
        ..Snapshot::default()
    };
    assert_eq!(creates(&decide(&config, &snap, t(60))), [("cx53", "fsn1")]);
    // An empty cluster starts small.
    let snap = Snapshot {
        demand: vec![demand(1, 2, 1, t(0))],
        ..Snapshot::default()
    };
    assert_eq!(creates(&decide(&config, &snap, t(60))), [("cx23", "fsn1")]);

    // A bigger type with a GPU is no growth step for cpu work.
    let mut gpu = config.node_types[3].clone();
    gpu.name = "gex130".into();
    gpu.cpus = 24;
    gpu.gpus = 1;
    gpu.hourly_price = 1.15;
    config.node_types.push(gpu);
    let snap = Snapshot {
        demand: vec![demand(1, 2, 1, t(0))],
        servers: vec![busy(node(1, "cx53", ServerState::Ready, t(0)), 16, 0)],
        ..Snapshot::default()
    };
    assert_eq!(creates(&decide(&config, &snap, t(60))), [("cx53", "fsn1")]);
}

#[test]
fn known_runtimes_let_running_nodes_and_the_drain_target_absorb_queues() {
    let mut queued = demand(1, 2, 10, t(0));
    queued.expected_runtime = Some(Duration::from_secs(600));
    let snap = Snapshot {
        demand: vec![queued],
        servers: vec![busy(node(1, "cx53", ServerState::Ready, t(0)), 16, 0)],
        ..Snapshot::default()
    };
    // 16 running 10-minute tasks free a slot every 37.5 s: within max_queue_wait (5 min) they
    // start 8 queued tasks; the other 2 need ceil(2 × 10 / 45) = 1 new slot, run in turn.
    let d = decide(&cfg(), &snap, t(60));
    assert_eq!(creates(&d), [("cx23", "fsn1")]);
    let waits = &d.waits[0];
    assert!(
        matches!(waits[0], (Wait::FreeingUp { eta }, 1) if eta == Duration::from_millis(37_500))
    );
    assert_eq!(waits.iter().map(|(_, n)| n).sum::<u32>(), 10);
    assert_eq!(waits.last(), Some(&(prov("cx23", 90), 2)));
    assert!(waits[7]
        .0
        .to_string()
        .starts_with("waiting for a running node to free up"));

    // Without a runtime estimate every task gets a slot now.
    let mut snap = snap;
    snap.demand[0].expected_runtime = None;
    let d = decide(&cfg(), &snap, t(60));
    assert_eq!(creates(&d), [("cx43", "fsn1"), ("cx23", "fsn1")]);
}

#[test]
fn surplus_busy_nodes_drain_before_their_next_billed_hour() {
    let snap = Snapshot {
        servers: vec![
            busy(node(1, "cx53", ServerState::Ready, t(1200)), 4, 12),
            busy(node(2, "cx53", ServerState::Ready, t(0)), 4, 12),
        ],
        ..Snapshot::default()
    };
    // Node 2's next hour starts in 10 min; node 1 alone holds the load (8) plus headroom.
    let d = decide(&cfg(), &snap, t(3000));
    assert_eq!(
        d.actions,
        [Action::Drain {
            server: ServerId(2),
            name: "n2".into(),
            reason: Reason::Surplus
        }]
    );
    // Not outright when the rest could not carry the load (18 cpus and a quarter): then it is
    // replaced by the cheapest type that, with the rest, does.
    let mut heavy = snap.clone();
    heavy.servers[0] = busy(node(1, "cx53", ServerState::Ready, t(1200)), 14, 2);
    let d = decide(&cfg(), &heavy, t(3000));
    assert_eq!(creates(&d), [("cx43", "fsn1")]);
    // Not at all when nothing cheaper would do.
    heavy.servers[1] = busy(node(2, "cx53", ServerState::Ready, t(0)), 10, 6);
    assert!(decide(&cfg(), &heavy, t(3000)).actions.is_empty());
    // Not when tasks wait for capacity.
    let mut waiting = heavy.clone();
    waiting.demand = vec![demand(4, 8, 1, t(2990))];
    assert!(!decide(&cfg(), &waiting, t(3000))
        .actions
        .iter()
        .any(|a| matches!(a, Action::Drain { .. })));
    // Earlier in the hour: wake up when the drain window opens.
    let d = decide(&cfg(), &snap, t(600));
    assert!(d.actions.is_empty());
    assert_eq!(d.next_wakeup, Some(t(2700)));
}

#[test]
fn surplus_drains_leave_room_for_what_arrivals_keep_busy() {
    let mut snap = Snapshot {
        servers: vec![
            busy(node(1, "cx53", ServerState::Ready, t(1200)), 4, 12),
            busy(node(2, "cx53", ServerState::Ready, t(0)), 4, 12),
        ],
        ..Snapshot::default()
    };
    let drains = |snap: &Snapshot| {
        decide(&cfg(), snap, t(3000))
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Drain { .. }))
            .count()
    };
    // 8 cpus busy now, but arrivals keep 14 busy: with headroom, node 1 alone (16) is short:
    // node 2 is replaced by a cx33, not drained outright.
    snap.streams = vec![stream(14.0)];
    assert_eq!(drains(&snap), 1);
    assert_eq!(creates(&decide(&cfg(), &snap, t(3000))), [("cx33", "fsn1")]);
    // Arrivals that keep fewer cpus busy than run now change nothing.
    snap.streams = vec![stream(6.0)];
    assert_eq!(drains(&snap), 1);
}

#[test]
fn a_reserve_for_arrivals_is_bought_before_a_queue_forms_and_kept() {
    let mut config = cfg();
    config.reserve = 1.0;
    // Arrivals keep 16 cpus busy, give or take 4 (one standard deviation): a full cx53 is
    // short of the reserve by 4 cpus though nothing is queued.
    let mut snap = Snapshot {
        servers: vec![busy(node(1, "cx53", ServerState::Ready, t(0)), 16, 0)],
        streams: vec![stream(16.0)],
        ..Snapshot::default()
    };
    assert_eq!(snap.arrival_load(), (16_000, 4_000));
    assert_eq!(creates(&decide(&config, &snap, t(600))), [("cx33", "fsn1")]);
    // Once it is provisioning, nothing more.
    snap.servers
        .push(node(2, "cx33", ServerState::Provisioning, t(600)));
    assert!(decide(&config, &snap, t(620)).actions.is_empty());
    // Joined and idle at the end of its hour, it is not drained: it is the reserve.
    snap.servers[1].state = ServerState::Ready;
    let d = decide(&config, &snap, t(600 + 3500));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // Without the streams it would be.
    snap.streams.clear();
    let d = decide(&config, &snap, t(600 + 3500));
    assert!(matches!(
        d.actions[..],
        [Action::Drain {
            reason: Reason::Idle,
            ..
        }]
    ));
}

#[test]
fn a_lone_oversized_node_is_replaced_by_a_cheaper_type_before_its_next_hour() {
    // Night: a cx53 runs 2 tasks that end before its next hour starts (in 10 minutes).
    let mut lone = busy(node(1, "cx53", ServerState::Ready, t(0)), 2, 14);
    lone.busy_until = Some(t(3300));
    let mut snap = Snapshot {
        servers: vec![lone],
        ..Snapshot::default()
    };
    // 2.5 cpus with headroom: a cx33 carries them for a third of the price.
    let d = decide(&cfg(), &snap, t(3000));
    assert_eq!(
        d.actions,
        [
            Action::Drain {
                server: ServerId(1),
                name: "n1".into(),
                reason: Reason::Surplus
            },
            Action::Create {
                node_type: "cx33".into(),
                location: "fsn1".into()
            }
        ]
    );
    // Not when its tasks run past the hour: it pays that hour anyway.
    snap.servers[0].busy_until = Some(t(3700));
    assert!(decide(&cfg(), &snap, t(3000)).actions.is_empty());
    // Not when nothing cheaper carries the load.
    snap.servers[0] = busy(node(1, "cx23", ServerState::Ready, t(0)), 2, 0);
    assert!(decide(&cfg(), &snap, t(3000)).actions.is_empty());
}

#[test]
fn surplus_nodes_are_drained_only_if_they_empty_before_their_next_hour() {
    let mut snap = Snapshot {
        servers: vec![
            busy(node(1, "cx53", ServerState::Ready, t(1200)), 4, 12),
            busy(node(2, "cx53", ServerState::Ready, t(0)), 4, 12),
        ],
        ..Snapshot::default()
    };
    let drains = |snap: &Snapshot| {
        let d = decide(&cfg(), snap, t(3000));
        let n = d
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Drain { .. }))
            .count();
        (n, d.next_wakeup)
    };
    // Node 2's next hour starts at t(3600): its attempts end in time, with a minute to delete.
    snap.servers[1].busy_until = Some(t(3540));
    assert_eq!(drains(&snap).0, 1);
    // They run past it: it pays that hour anyway, so it keeps working.
    snap.servers[1].busy_until = Some(t(3541));
    assert_eq!(drains(&snap).0, 0);
    // Alone, the next look is in its next hour's window.
    snap.servers.remove(0);
    snap.servers[0].free = Resources::new(16_000, 32 * GIB);
    snap.servers[0].running = 1;
    assert_eq!(drains(&snap), (0, Some(t(3600 + 2700))));
}

#[test]
fn known_arrival_rates_count_busy_nodes_for_the_whole_drain_target() {
    // A full cx53 runs 16 ten-minute tasks; 30 more are queued.
    let mut queued = demand(1, 2, 30, t(0));
    queued.expected_runtime = Some(Duration::from_secs(600));
    queued.arrival_rate = Some(0.0);
    let mut snap = Snapshot {
        demand: vec![queued],
        servers: vec![busy(node(1, "cx53", ServerState::Ready, t(0)), 16, 0)],
        ..Snapshot::default()
    };
    // Nothing else arrives (a burst): the 16 slots finish the 30 within 45 min; no new node.
    // The first 8 start within max_queue_wait, the others queue behind them.
    let d = decide(&cfg(), &snap, t(60));
    assert!(creates(&d).is_empty(), "{d:?}");
    assert!(matches!(d.waits[0][0], (Wait::FreeingUp { .. }, 1)));
    assert_eq!(d.waits[0].last(), Some(&(d.waits[0][7].0.clone(), 23)));

    // 1.5 arrivals a minute keep 15 slots busy: the queue needs 30 × 10 / 45 ≈ 6.7 slots
    // more, the cx53 has 1 to spare: 6 new slots.
    snap.demand[0].arrival_rate = Some(0.025);
    let d = decide(&cfg(), &snap, t(60));
    assert_eq!(creates(&d), [("cx33", "fsn1"), ("cx23", "fsn1")]);

    // The busy cpu is shared out among shapes: alone, a trickle of 2-cpu tasks would fit in
    // what the 1-cpu arrivals leave, but not after them.
    let mut small = demand(1, 2, 1, t(0));
    small.expected_runtime = Some(Duration::from_secs(600));
    small.arrival_rate = Some(0.02); // 12 slots
    let mut large = demand(2, 4, 1, t(0));
    large.expected_runtime = Some(Duration::from_secs(600));
    large.arrival_rate = Some(0.005); // 3 slots of 2 cpus
    snap.demand = vec![large.clone()];
    assert!(creates(&decide(&cfg(), &snap, t(60))).is_empty());
    snap.demand = vec![small, large];
    assert_eq!(creates(&decide(&cfg(), &snap, t(60))), [("cx23", "fsn1")]);
}

#[test]
fn running_times_bound_an_unknown_runtime_from_below() {
    // A burst of 90 before any task of the shape has finished; the 16 started ones have run
    // 5 minutes on average, so each queued one needs at least that.
    let mut queued = demand(1, 2, 90, t(0));
    queued.arrival_rate = Some(0.0);
    queued.running_for = Some(Duration::from_secs(300));
    let mut snap = Snapshot {
        demand: vec![queued],
        servers: vec![busy(node(1, "cx53", ServerState::Ready, t(0)), 16, 0)],
        ..Snapshot::default()
    };
    // When the running ones free up is unknown, so they count for nothing; the queue needs
    // ceil(90 × 5 / 45) = 10 new slots. Look again when the bound has doubled.
    let d = decide(&cfg(), &snap, t(60));
    assert_eq!(creates(&d), [("cx43", "fsn1"), ("cx23", "fsn1")]);
    assert_eq!(d.next_wakeup, Some(t(360)));

    // A known runtime of 5 minutes lets the busy cx53 finish the burst within drain_target.
    snap.demand[0].expected_runtime = Some(Duration::from_secs(300));
    assert!(creates(&decide(&cfg(), &snap, t(60))).is_empty());

    // Knowing neither, every task gets a slot now (up to max_concurrent_provisioning).
    snap.demand[0].expected_runtime = None;
    snap.demand[0].running_for = None;
    assert_eq!(creates(&decide(&cfg(), &snap, t(60))).len(), 5);
}

#[test]
fn drained_nodes_hand_back_work_a_minute_before_their_next_hour() {
    let min = |m: u64| Duration::from_secs(m * 60);
    assert_eq!(drain_deadline(Reason::Surplus, min(50)), min(9));
    assert_eq!(drain_deadline(Reason::Idle, min(110)), min(9));
    assert_eq!(
        drain_deadline(Reason::Idle, min(59) + Duration::from_secs(30)),
        Duration::from_secs(10)
    );
    assert_eq!(drain_deadline(Reason::Lifetime, min(1440)), min(60));
}

#[test]
fn a_node_briefly_out_of_touch_buys_no_capacity() {
    // A cx33 with room for the queued task misses its heartbeats.
    let mut quiet = busy(node(1, "cx33", ServerState::Ready, t(0)), 1, 3);
    quiet.suspect_since = Some(t(100));
    let snap = Snapshot {
        demand: vec![demand(1, 2, 1, t(0))],
        servers: vec![quiet],
        ..Snapshot::default()
    };
    let mut config = cfg();
    config.scale_up_delay = Duration::from_secs(20);
    // Within scale_up_delay its room still counts: the task waits for it, and the policy
    // looks again when the grace ends.
    let d = decide(&config, &snap, t(110));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.waits[0], [(Wait::Placing, 1)]);
    assert_eq!(d.next_wakeup, Some(t(120)));
    // Out of touch for longer, it counts for nothing: a node is bought.
    let d = decide(&config, &snap, t(130));
    assert_eq!(creates(&d), [("cx23", "fsn1")]);
    // Never drained while out of touch, even idle at the end of its hour.
    let mut idle = node(1, "cx33", ServerState::Ready, t(0));
    idle.suspect_since = Some(t(3400));
    let snap = Snapshot {
        servers: vec![idle],
        ..Snapshot::default()
    };
    assert!(decide(&config, &snap, t(3500)).actions.is_empty());
}
