//! A minimal autoscaler driver, as the head would run it, on the in-memory provider: decide,
//! render user data, create through the provider, record sold-out failures, see the new
//! servers as provisioning nodes, and delete the ones that never join.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rgrid_cloud::policy::{self, Action, ProvisionFailure, Reason, ServerView};
use rgrid_cloud::{
    cloud_init, AutoscalerConfig, CloudServer, CreateServer, Demand, FakeProvider, Provider,
    ServerState, Snapshot,
};
use rgrid_core::Resources;

/// Carries out a decision; returns the failures to remember.
async fn apply(
    config: &AutoscalerConfig,
    provider: &dyn Provider,
    actions: &[Action],
    now: SystemTime,
) -> anyhow::Result<Vec<ProvisionFailure>> {
    let mut failures = Vec::new();
    for action in actions {
        match action {
            Action::Create {
                node_type,
                location,
            } => {
                let user_data =
                    cloud_init::render(config, node_type, "203.0.113.7:7000", "id.secret.cahash")?;
                let request = CreateServer::for_node(config, node_type, location, user_data);
                if let Err(err) = provider.create(&request).await {
                    failures.push(ProvisionFailure {
                        node_type: node_type.clone(),
                        location: location.clone(),
                        kind: err.kind(),
                        at: now,
                    });
                }
            }
            Action::Delete { server, .. } => provider.delete(*server).await?,
            Action::Drain { .. } => anyhow::bail!("nothing to drain here"),
        }
    }
    Ok(failures)
}

/// Servers that have not joined, as the head would list them.
fn provisioning(config: &AutoscalerConfig, servers: &[CloudServer]) -> Vec<ServerView> {
    servers
        .iter()
        .map(|s| {
            let capacity = config
                .node_type(&s.node_type)
                .map(|t| t.capacity())
                .unwrap_or_default();
            ServerView {
                server: Some(s.id),
                name: s.name.clone(),
                node_type: s.node_type.clone(),
                state: ServerState::Provisioning,
                created: s.created,
                labels: BTreeMap::new(),
                free: capacity.clone(),
                capacity,
                running: 0,
                idle_since: None,
                busy_until: None,
                suspect_since: None,
            }
        })
        .collect()
}

#[tokio::test]
async fn demand_becomes_servers_and_servers_that_never_join_go_away() -> anyhow::Result<()> {
    let config = AutoscalerConfig {
        enabled: true,
        scale_up_delay: Duration::ZERO,
        ..AutoscalerConfig::default()
    };
    let fake = FakeProvider::new();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    fake.set_now(Some(t0));
    fake.set_sold_out("cx33", "fsn1", true);
    let demand = vec![Demand {
        resources: Resources::new(3000, 6 << 30),
        selector: Vec::new(),
        count: 1,
        oldest: t0,
        expected_runtime: None,
        arrival_rate: None,
        running_for: None,
    }];

    // cx33 fits best, but is sold out in fsn1: the failure is recorded, the next decision
    // places it in nbg1.
    let snapshot = Snapshot {
        demand: demand.clone(),
        ..Snapshot::default()
    };
    let d = policy::decide(&config, &snapshot, t0);
    let failures = apply(&config, &fake, &d.actions, t0).await?;
    assert_eq!(failures.len(), 1);
    let snapshot = Snapshot {
        demand: demand.clone(),
        failures,
        ..Snapshot::default()
    };
    let d = policy::decide(&config, &snapshot, t0);
    assert!(apply(&config, &fake, &d.actions, t0).await?.is_empty());
    let servers = fake.list(&config.label_selector()).await?;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].location.as_deref(), Some("nbg1"));
    assert!(servers[0].name.starts_with("rgrid-cx33-"));

    // The server is provisioning: no second one, and the task is told how long.
    let snapshot = Snapshot {
        demand,
        servers: provisioning(&config, &servers),
        failures: snapshot.failures,
        streams: Vec::new(),
    };
    let d = policy::decide(&config, &snapshot, t0 + Duration::from_secs(30));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(
        d.wait_for(0, 0).map(ToString::to_string).as_deref(),
        Some("waiting for a node of type cx33 (provisioning, ~60 s left)")
    );

    // It never joins: after join_timeout it is deleted, leaving nothing.
    let later = t0 + config.join_timeout;
    let snapshot = Snapshot {
        servers: provisioning(&config, &servers),
        ..Snapshot::default()
    };
    let d = policy::decide(&config, &snapshot, later);
    assert!(matches!(
        d.actions.as_slice(),
        [Action::Delete {
            reason: Reason::NeverJoined,
            ..
        }]
    ));
    apply(&config, &fake, &d.actions, later).await?;
    assert!(fake.list(&config.label_selector()).await?.is_empty());
    Ok(())
}
