//! GPUs: which the host has ([`detect`]: `nvidia-smi -L`, else `/dev/nvidia<N>` files; both
//! configurable so tests can feed them) and which attempt holds which ([`GpuPool`]): an attempt
//! gets specific device ids, two attempts never share one, and the ids come back when it ends.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock;

/// How long the probe command may take (a wedged driver makes `nvidia-smi` hang).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The GPU indices the host has: from the probe's `GPU <index>: …` lines when it runs, else
/// from the `nvidia<index>` files in `device_dir`; sorted.
pub(crate) async fn detect(probe: &[String], device_dir: &Path) -> Vec<String> {
    if let Some(ids) = probe_command(probe).await {
        return ids;
    }
    let Ok(entries) = std::fs::read_dir(device_dir) else {
        return Vec::new();
    };
    let mut indices: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("nvidia")?
                .parse::<u32>()
                .ok()
        })
        .collect();
    indices.sort_unstable();
    indices.into_iter().map(|i| i.to_string()).collect()
}

/// `None` when the probe does not run or fails (no driver): then the device files decide.
async fn probe_command(probe: &[String]) -> Option<Vec<String>> {
    let (program, args) = probe.split_first()?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROBE_TIMEOUT, output)
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(parse_probe(&text))
}

/// `GPU 0: NVIDIA A100 (UUID: GPU-…)` → `"0"`.
fn parse_probe(text: &str) -> Vec<String> {
    let mut indices: Vec<u32> = text
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("GPU ")?;
            rest.split_once(':')?.0.trim().parse().ok()
        })
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices.into_iter().map(|i| i.to_string()).collect()
}

/// The ids to offer: `count` of them (the configured number) out of the `detected` ones; when
/// fewer are detected than configured (a node type's GPUs that the node's container cannot see),
/// indices `0..count`.
pub(crate) fn offered(detected: Vec<String>, count: Option<u32>) -> Vec<String> {
    match count {
        None => detected,
        Some(n) if detected.len() >= n as usize => detected.into_iter().take(n as usize).collect(),
        Some(n) => {
            if !detected.is_empty() {
                tracing::warn!(
                    configured = n,
                    ?detected,
                    "fewer GPUs detected than configured; offering indices 0..{n}"
                );
            }
            (0..n).map(|i| i.to_string()).collect()
        }
    }
}

/// Which GPU ids are free. Shared by the attempts of a node.
#[derive(Clone, Debug, Default)]
pub(crate) struct GpuPool {
    /// Every id with whether an attempt holds it.
    slots: Arc<Mutex<Vec<(String, bool)>>>,
}

impl GpuPool {
    pub(crate) fn new(ids: Vec<String>) -> Self {
        Self {
            slots: Arc::new(Mutex::new(ids.into_iter().map(|id| (id, false)).collect())),
        }
    }

    /// `count` free ids, held until the lease is dropped; `None` when fewer are free.
    pub(crate) fn take(&self, count: u32) -> Option<GpuLease> {
        let mut slots = lock(&self.slots);
        let free: Vec<usize> = (0..slots.len())
            .filter(|&i| !slots[i].1)
            .take(count as usize)
            .collect();
        if free.len() < count as usize {
            return None;
        }
        let ids = free
            .iter()
            .map(|&i| {
                slots[i].1 = true;
                slots[i].0.clone()
            })
            .collect();
        Some(GpuLease {
            pool: self.clone(),
            ids,
        })
    }

    /// The ids in `ids` (a re-adopted container's), held until the lease is dropped.
    pub(crate) fn take_ids(&self, ids: &[String]) -> GpuLease {
        let mut slots = lock(&self.slots);
        for slot in slots.iter_mut().filter(|(id, _)| ids.contains(id)) {
            slot.1 = true;
        }
        GpuLease {
            pool: self.clone(),
            ids: ids.to_vec(),
        }
    }

    /// How many ids are not held.
    pub(crate) fn free(&self) -> usize {
        lock(&self.slots).iter().filter(|(_, held)| !held).count()
    }
}

/// GPU ids an attempt holds; given back when dropped.
#[derive(Debug)]
pub(crate) struct GpuLease {
    pool: GpuPool,
    pub ids: Vec<String>,
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        let mut slots = lock(&self.pool.slots);
        for slot in slots.iter_mut().filter(|(id, _)| self.ids.contains(id)) {
            slot.1 = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detects_from_the_probe_else_the_device_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("smi");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'GPU 1: NVIDIA A100 (UUID: GPU-b)'\necho 'GPU 0: NVIDIA A100 (UUID: GPU-a)'\n",
        )
        .expect("write the probe");
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .expect("chmod");
        let probe = vec![script.display().to_string()];
        assert_eq!(detect(&probe, dir.path()).await, ["0", "1"]);

        for name in ["nvidia0", "nvidia2", "nvidiactl", "nvidia-uvm", "null"] {
            std::fs::write(dir.path().join(name), "").expect("a device file");
        }
        let missing = vec!["/nonexistent/nvidia-smi".to_owned()];
        assert_eq!(detect(&missing, dir.path()).await, ["0", "2"]);
        let failing = vec!["false".to_owned()];
        assert_eq!(detect(&failing, dir.path()).await, ["0", "2"]);
        assert!(detect(&missing, &dir.path().join("none")).await.is_empty());
    }

    #[test]
    fn configured_counts_pick_or_invent_ids() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(offered(ids(&["0", "1", "2"]), None), ids(&["0", "1", "2"]));
        assert_eq!(offered(ids(&["0", "1", "2"]), Some(2)), ids(&["0", "1"]));
        assert_eq!(offered(Vec::new(), Some(2)), ids(&["0", "1"]));
        assert_eq!(offered(ids(&["3"]), Some(0)), ids(&[]));
    }

    #[test]
    fn attempts_never_share_a_gpu_and_ids_come_back() {
        let pool = GpuPool::new(["0", "1", "2"].map(String::from).to_vec());
        let a = pool.take(2).expect("two free");
        let b = pool.take(1).expect("one free");
        assert!(pool.take(1).is_none(), "all held");
        assert!(a.ids.iter().all(|id| !b.ids.contains(id)));
        assert_eq!(a.ids, ["0", "1"]);
        drop(a);
        assert_eq!(pool.free(), 2);
        let c = pool.take(2).expect("the freed ones");
        assert_eq!(c.ids, ["0", "1"]);
        assert!(pool.take(0).is_some_and(|l| l.ids.is_empty()));
        drop((b, c));
        assert_eq!(pool.free(), 3);
    }
}
