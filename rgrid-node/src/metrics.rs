//! The node's own Prometheus metrics (with `metrics_listen`): what it runs and whether it is
//! healthy, sampled from the session's state once a second. The Docker executor records its
//! own (Docker calls, image pulls); they are described here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::session::Node;

const ATTEMPTS: &str = "rgrid_node_attempts";
const CONNECTED: &str = "rgrid_node_connected";
const DRAINING: &str = "rgrid_node_draining";
const HEALTHY: &str = "rgrid_node_healthy";
const SPOOL_RESULTS: &str = "rgrid_node_spool_results";
const SPOOL_BYTES: &str = "rgrid_node_spool_bytes";

/// How often the gauges are refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

fn describe() {
    metrics::describe_gauge!(
        ATTEMPTS,
        "Attempts this node runs or holds a result of that the head has not acknowledged yet"
    );
    metrics::describe_gauge!(
        CONNECTED,
        "1 while the node has a session with the head, 0 while it reconnects"
    );
    metrics::describe_gauge!(
        DRAINING,
        "1 once the node drains (SIGTERM or a drain request): no new work"
    );
    metrics::describe_gauge!(
        HEALTHY,
        "1 while the node's last health check passed (engine reachable, min_free_disk free); 0: no work"
    );
    metrics::describe_gauge!(
        SPOOL_RESULTS,
        "Results in the offline spool that the head has not acknowledged"
    );
    metrics::describe_gauge!(
        SPOOL_BYTES,
        metrics::Unit::Bytes,
        "Bytes of the results in the offline spool"
    );
    // Recorded by the Docker executor, which does not describe them itself (Prometheus wants
    // a HELP line for each).
    metrics::describe_histogram!(
        "rgrid_node_docker_call_seconds",
        metrics::Unit::Seconds,
        "Latency of Docker engine API calls, by call"
    );
    metrics::describe_counter!("rgrid_node_image_pulls_total", "Image pulls by outcome");
    metrics::describe_histogram!(
        "rgrid_node_image_pull_seconds",
        metrics::Unit::Seconds,
        "Duration of image pulls, by outcome"
    );
}

/// Refreshes the gauges from `node` until `stop` is cancelled.
pub(crate) async fn sample(node: Arc<Node>, stop: CancellationToken) {
    describe();
    loop {
        let attempts = match node.attempts.lock() {
            Ok(attempts) => attempts.len(),
            // Plain inserts and removes: the map stays usable after a panicked holder.
            Err(poisoned) => poisoned.into_inner().len(),
        };
        let draining = match node.drain_until.lock() {
            Ok(until) => until.is_some(),
            Err(poisoned) => poisoned.into_inner().is_some(),
        };
        metrics::gauge!(ATTEMPTS).set(attempts as f64);
        metrics::gauge!(CONNECTED).set(f64::from(u8::from(node.connection.borrow().is_some())));
        metrics::gauge!(DRAINING).set(f64::from(u8::from(draining)));
        let healthy = node.health.borrow().problem.is_none();
        metrics::gauge!(HEALTHY).set(f64::from(u8::from(healthy)));
        let (spooled, spooled_bytes) = node.spool.depth();
        metrics::gauge!(SPOOL_RESULTS).set(spooled as f64);
        metrics::gauge!(SPOOL_BYTES).set(spooled_bytes as f64);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}
