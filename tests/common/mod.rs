//! Shared test fixtures: the local demo image, a started cluster, credentials helpers.

#![allow(dead_code, unreachable_pub)]

use std::sync::Once;

use rgrid::local::LocalClusterOptions;
use rgrid::LocalCluster;

/// Builds the busybox image once per test binary (no registry here).
pub fn demo_image() -> &'static str {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        rgrid::image::ensure_demo_image()
            .expect("the demo image must build; install busybox-static");
    });
    rgrid::image::DEMO_IMAGE
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A head and one Docker node with 2 cpus and 2 GiB.
pub async fn docker_cluster() -> LocalCluster {
    init_tracing();
    demo_image();
    LocalCluster::start_with(LocalClusterOptions {
        nodes: 1,
        cpu_millis: Some(2000),
        memory: Some("2G".into()),
        ..LocalClusterOptions::default()
    })
    .await
    .expect("local cluster starts")
}
