//! The daemons' Prometheus endpoint (`metrics_listen`, off by default): [`serve`] installs the
//! process-wide recorder of the `metrics` crate and serves `GET /metrics` in the Prometheus text
//! format (`metrics-exporter-prometheus`). Code records through the `metrics` macros; without
//! an endpoint they cost next to nothing.
//!
//! Conventions: names start with `rgrid_` and the daemon or part (`rgrid_node_`,
//! `rgrid_autoscaler_`, `rgrid_hetzner_`); counters end in `_total`; durations are seconds
//! (`_seconds`); every metric is described (`HELP`) where it is recorded. Histograms whose name
//! ends in `_seconds` get [`DURATION_BUCKETS`], every other histogram [`COUNT_BUCKETS`].
//!
//! The recorder is per process: a process serves one endpoint, and daemons sharing a process
//! (an in-process `LocalCluster`) would share it, so they never serve one.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bucket bounds of histograms in seconds: 1 ms to an hour.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Bucket bounds of other histograms (sizes, counts).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {detail}; choose another metrics_listen address")]
    Listen { addr: SocketAddr, detail: String },
    #[error("this process already has a metrics recorder: only one metrics_listen per process")]
    AlreadyInstalled,
}

/// Installs the process-wide recorder and serves `GET /metrics` on `addr` (TCP) until `shutdown`
/// is cancelled. Needs a Tokio runtime.
pub fn serve(
    addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), MetricsError> {
    let listen = |detail: String| MetricsError::Listen { addr, detail };
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(COUNT_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        })
        .and_then(|b| b.build())
        .map_err(|e| listen(e.to_string()))?;
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    tracker.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = exporter => {
                if let Err(err) = result {
                    tracing::error!(error = ?err, %addr, "the metrics endpoint stopped");
                }
            }
        }
    });
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}
