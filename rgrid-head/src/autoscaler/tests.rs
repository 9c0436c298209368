use super::*;

const GIB: u64 = 1 << 30;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn server(id: u64, name: &str) -> CloudServer {
    CloudServer {
        id: ServerId(id),
        name: name.into(),
        node_type: "cx23".into(),
        location: Some("fsn1".into()),
        labels: BTreeMap::new(),
        created: t(0),
        status: ServerStatus::Running,
        public_ipv4: None,
    }
}

fn node(name: &str, state: cluster::NodeState, running: u32) -> NodeSummary {
    NodeSummary {
        name: name.into(),
        state,
        labels: BTreeMap::from([("rgrid-node-type".into(), "cx23".into())]),
        total: Resources::new(2000, 4 * GIB),
        free: Resources::new(1000, 3 * GIB),
        running,
        idle_since: (running == 0).then(|| t(100)),
        busy_until: (running > 0).then(|| t(900)),
        suspect_since: (state == cluster::NodeState::Suspect).then(|| t(50)),
    }
}

fn views(nodes: &[NodeSummary], servers: &[CloudServer]) -> Vec<ServerView> {
    server_views(
        &AutoscalerConfig::default(),
        nodes,
        servers,
        &BTreeMap::new(),
        &BTreeSet::new(),
    )
}

#[test]
fn a_server_without_a_node_is_provisioning_with_its_types_capacity() {
    let v = views(&[], &[server(7, "rgrid-cx23-a")]);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].server, Some(ServerId(7)));
    assert_eq!(v[0].state, ServerState::Provisioning);
    assert_eq!(v[0].capacity, Resources::new(2000, 4 * GIB));
    assert_eq!(v[0].created, t(0));
}

#[test]
fn a_joined_node_takes_its_servers_id_type_and_creation_time() {
    let v = views(
        &[node("rgrid-cx23-a", cluster::NodeState::Ready, 0)],
        &[server(7, "rgrid-cx23-a")],
    );
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].server, Some(ServerId(7)));
    assert_eq!(v[0].node_type, "cx23");
    assert_eq!(v[0].state, ServerState::Ready);
    assert_eq!(v[0].free, Resources::new(1000, 3 * GIB));
    assert_eq!(v[0].idle_since, Some(t(100)));
    assert_eq!(v[0].created, t(0));
}

#[test]
fn node_states_map_to_what_the_policy_acts_on() {
    let servers = [
        server(1, "left"),
        server(2, "dead"),
        server(3, "suspect"),
        server(4, "draining"),
    ];
    let nodes = [
        node("left", cluster::NodeState::Left, 0),
        node("dead", cluster::NodeState::Dead, 0),
        node("suspect", cluster::NodeState::Suspect, 0),
        node("draining", cluster::NodeState::Draining, 2),
    ];
    let v = views(&nodes, &servers);
    let by = |name: &str| {
        v.iter()
            .find(|n| n.name == name)
            .expect("a node of that name")
    };
    // Drained and gone: empty draining, so the policy deletes the server.
    assert_eq!(
        (by("left").state, by("left").running),
        (ServerState::Draining, 0)
    );
    assert_eq!(by("dead").state, ServerState::Failed);
    // Out of touch: counted as a node with its room, never idle, and the policy is told since
    // when (its room stops counting after scale_up_delay).
    assert_eq!(by("suspect").state, ServerState::Ready);
    assert_eq!(by("suspect").free, Resources::new(1000, 3 * GIB));
    assert_eq!(by("suspect").idle_since, None);
    assert_eq!(by("suspect").suspect_since, Some(t(50)));
    assert_eq!(
        (by("draining").state, by("draining").running),
        (ServerState::Draining, 2)
    );
}

#[test]
fn nodes_joined_by_hand_are_capacity_the_autoscaler_never_touches() {
    let nodes = [
        node("by-hand", cluster::NodeState::Ready, 1),
        node("old", cluster::NodeState::Dead, 0),
    ];
    let v = views(&nodes, &[]);
    assert_eq!(v.len(), 1, "dead nodes without a server are history");
    assert_eq!(v[0].name, "by-hand");
    assert_eq!(v[0].server, None);
    let config = AutoscalerConfig::default();
    let plan = rgrid_cloud::decide(
        &config,
        &Snapshot {
            servers: v,
            ..Snapshot::default()
        },
        t(3500),
    );
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
}

#[test]
fn a_rejoined_name_counts_its_live_node() {
    let nodes = [
        node("rgrid-cx23-a", cluster::NodeState::Dead, 0),
        node("rgrid-cx23-a", cluster::NodeState::Ready, 1),
    ];
    let v = views(&nodes, &[server(7, "rgrid-cx23-a")]);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].state, ServerState::Ready);
    assert_eq!(v[0].running, 1);
}

#[test]
fn creates_in_flight_count_once_and_deletes_in_flight_not_at_all() {
    let creating = BTreeMap::from([
        (
            "new".to_owned(),
            Creating {
                node_type: "cx33".into(),
                since: t(50),
            },
        ),
        (
            "listed".to_owned(),
            Creating {
                node_type: "cx23".into(),
                since: t(50),
            },
        ),
    ]);
    let v = server_views(
        &AutoscalerConfig::default(),
        &[],
        &[server(1, "listed"), server(2, "going")],
        &creating,
        &BTreeSet::from([ServerId(2)]),
    );
    let names: Vec<&str> = v.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["listed", "new"]);
    assert_eq!(v[1].server, Some(PENDING));
    assert_eq!(v[1].state, ServerState::Provisioning);
    assert_eq!(v[1].capacity, Resources::new(4000, 8 * GIB));
}

#[test]
fn node_types_tell_the_scheduler_what_could_be_provisioned() {
    let config = AutoscalerConfig::default();
    let types = node_type_views(&config);
    assert_eq!(types.len(), config.node_types.len());
    assert!(types.iter().all(|t| t.capabilities.contains(DOCKER)));
    assert_eq!(
        types[0].labels.get("rgrid-node-type").map(String::as_str),
        Some("cx23")
    );
}
