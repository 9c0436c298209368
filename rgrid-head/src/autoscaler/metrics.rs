//! The autoscaler's Prometheus metrics, set after every decision: the cluster's servers by
//! state, how long tasks waiting for a server being provisioned still wait, and the actions
//! carried out.

use rgrid_cloud::{Action, AutoscalerConfig, ServerState, ServerView, Wait};

const SERVERS: &str = "rgrid_autoscaler_servers";
const PROVISIONING_ETA: &str = "rgrid_autoscaler_provisioning_eta_seconds";
const ACTIONS: &str = "rgrid_autoscaler_actions_total";

/// Describes the metrics (their `HELP` lines).
pub(super) fn describe() {
    metrics::describe_gauge!(
        SERVERS,
        "Servers of this cluster by state (provisioning, ready, draining, failed); nodes joined by hand are not counted"
    );
    metrics::describe_gauge!(
        PROVISIONING_ETA,
        metrics::Unit::Seconds,
        "Longest expected time until a server being provisioned joins, over the tasks waiting for one, by node type (0: none waits)"
    );
    metrics::describe_counter!(
        ACTIONS,
        "Autoscaler actions carried out (create, drain, delete)"
    );
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Provisioning => "provisioning",
        ServerState::Ready => "ready",
        ServerState::Draining => "draining",
        ServerState::Failed => "failed",
    }
}

/// Sets the gauges from the policy's input and its waits; returns the servers by state, for
/// `rgrid status` (states with at least one server).
pub(super) fn record_decision(
    config: &AutoscalerConfig,
    servers: &[ServerView],
    waits: &[Vec<(Wait, u32)>],
) -> Vec<(String, u64)> {
    let mut by_state = Vec::new();
    for state in [
        ServerState::Provisioning,
        ServerState::Ready,
        ServerState::Draining,
        ServerState::Failed,
    ] {
        let count = servers
            .iter()
            .filter(|n| n.server.is_some() && n.state == state)
            .count();
        metrics::gauge!(SERVERS, "state" => state_name(state)).set(count as f64);
        if count > 0 {
            by_state.push((state_name(state).to_owned(), count as u64));
        }
    }
    for node_type in &config.node_types {
        let eta = waits
            .iter()
            .flatten()
            .filter_map(|(wait, _)| match wait {
                Wait::Provisioning { node_type: t, eta } if *t == node_type.name => Some(*eta),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        metrics::gauge!(PROVISIONING_ETA, "node_type" => node_type.name.clone())
            .set(eta.as_secs_f64());
    }
    by_state
}

/// Counts an action about to be carried out.
pub(super) fn record_action(action: &Action) {
    let kind = match action {
        Action::Create { .. } => "create",
        Action::Drain { .. } => "drain",
        Action::Delete { .. } => "delete",
    };
    metrics::counter!(ACTIONS, "action" => kind).increment(1);
}
