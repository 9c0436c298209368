//! The node's health, checked every [`PERIOD`]: the Docker engine answers, and the Docker root
//! dir and the state dir (the spool) have at least `min_free_disk` free. The session sends it to
//! the head whenever it changes; an unhealthy node gets no new work until it is healthy again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rgrid_core::protocol::NodeHealth;

use crate::session::Node;

/// How often the node checks itself.
pub(crate) const PERIOD: Duration = Duration::from_secs(2);

/// Checks the node every [`PERIOD`] until it stops, publishing what it finds in `node.health`.
pub(crate) async fn watch(node: Arc<Node>, state_dir: std::path::PathBuf, min_free: u64) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = node.stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        let health = check(&node, &state_dir, min_free).await;
        node.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }
}

async fn check(node: &Node, state_dir: &Path, min_free: u64) -> NodeHealth {
    let mut health = NodeHealth {
        state_dir_free_bytes: free_bytes(state_dir),
        ..NodeHealth::default()
    };
    let mut problems = Vec::new();
    if let Some(docker) = node.executor.as_docker() {
        match docker.root_dir().await {
            Ok(root) => {
                health.engine_reachable = Some(true);
                health.docker_root_free_bytes = root.as_deref().and_then(free_bytes);
            }
            Err(message) => {
                health.engine_reachable = Some(false);
                problems.push(format!("the Docker engine does not answer ({message})"));
            }
        }
    }
    for (what, free) in [
        ("the Docker root dir", health.docker_root_free_bytes),
        ("the state dir", health.state_dir_free_bytes),
    ] {
        if let Some(free) = free.filter(|&f| f < min_free) {
            problems.push(format!(
                "{what} has {free} bytes free, under min_free_disk ({min_free})"
            ));
        }
    }
    health.problem = (!problems.is_empty()).then(|| problems.join("; "));
    health
}

/// Free bytes (for unprivileged users) of the file system holding `path`; `None` when it cannot
/// be read (a Docker root that lives on another machine or outside the node's container).
fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let (blocks, size) = (
        u64::from(stat.blocks_available()),
        u64::from(stat.fragment_size()),
    );
    Some(blocks.saturating_mul(size))
}
