//! A Ray-style autoscaler ([`RayConfig`]), from the Ray cluster launcher's documented defaults
//! and its resource demand scheduler: every update, the queued tasks' resources are
//! bin-packed onto the free room of running nodes and the whole of launching ones; what does
//! not fit is packed into new nodes, one node type at a time, the type chosen by Ray's
//! utilization score; launches are limited per type to `max(5, upscaling_speed × running
//! nodes of the type)` pending at once; a node idle for `idle_timeout` is terminated. It knows
//! nothing of billing.

use std::time::Duration;

use rgrid_core::Resources;

use super::engine::{count, Autoscaler, Cadence, Cluster, State};

/// Ray's autoscaler settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RayConfig {
    /// `upscaling_speed`: pending launches allowed, as a multiple of the running nodes (of a
    /// type); at least [`RAY_MIN_PENDING`]. Ray's default: 1.0.
    pub upscaling_speed: f64,
    /// `idle_timeout_minutes`: a node idle this long is terminated. Ray's default: 5 min.
    pub idle_timeout: Duration,
    /// `max_workers`. Ray's default is 2; here 10, rgrid's `max_nodes`, to compare like with
    /// like.
    pub max_workers: u32,
    /// How often the autoscaler updates (Ray's `AUTOSCALER_UPDATE_INTERVAL_S`). Default: 5 s.
    pub update_interval: Duration,
    /// Nodes that have not joined after this long are terminated (the sim's courtesy, as for
    /// every policy, so that none leaks machines). Default: 10 min.
    pub join_timeout: Duration,
}

/// Ray launches at least this many nodes concurrently (`UPSCALING_INITIAL_NUM_NODES`).
pub const RAY_MIN_PENDING: u32 = 5;

impl Default for RayConfig {
    fn default() -> Self {
        Self {
            upscaling_speed: 1.0,
            idle_timeout: Duration::from_secs(5 * 60),
            max_workers: 10,
            update_interval: Duration::from_secs(5),
            join_timeout: Duration::from_secs(600),
        }
    }
}

/// Ray's policy.
pub(super) struct Ray<'a> {
    pub(super) config: &'a RayConfig,
}

impl Autoscaler for Ray<'_> {
    fn cadence(&self) -> Cadence {
        Cadence::Every(self.config.update_interval)
    }

    fn step(&mut self, cluster: &mut Cluster<'_>) {
        let config = self.config;
        let now = cluster.now;
        for n in 0..cluster.nodes.len() {
            let node = &cluster.nodes[n];
            let stale = node.state == State::Booting && now - node.created >= config.join_timeout;
            let idle = node.state == State::Ready
                && node
                    .idle_since
                    .is_some_and(|at| now - at >= config.idle_timeout);
            if stale || idle {
                cluster.delete(n);
            }
        }

        // Queued demand that running and launching nodes do not hold.
        let mut unmet = cluster.unplaced();
        let types = cluster.types;
        let mut live = count(cluster.live());
        let mut pending: Vec<u32> = vec![0; types.len()];
        let mut running: Vec<u32> = vec![0; types.len()];
        for (_, n) in cluster.live() {
            match n.state {
                State::Booting => pending[n.ty] += 1,
                _ => running[n.ty] += 1,
            }
        }
        // `get_nodes_for`: the best-scoring type (the first of equals) takes what it holds of
        // the rest, again and again, up to `max_workers`.
        let mut to_launch: Vec<u32> = vec![0; types.len()];
        while !unmet.is_empty() && live < config.max_workers {
            let mut best: Option<((bool, u32, f64, f64), usize)> = None;
            for (ty, t) in types.iter().enumerate() {
                let Some(s) = score(&t.capacity(), &unmet) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(b, _)| s > *b) {
                    best = Some((s, ty));
                }
            }
            let Some((_, ty)) = best else { break };
            let mut free = types[ty].capacity();
            unmet.retain(|need| match free.checked_sub(need) {
                Ok(rest) => {
                    free = rest;
                    false
                }
                Err(_) => true,
            });
            to_launch[ty] += 1;
            live += 1;
        }
        // `_get_concurrent_resource_demand_to_launch`: at most max(5, speed × running) of a
        // type pending at once.
        for (ty, wanted) in to_launch.into_iter().enumerate() {
            let allowed =
                RAY_MIN_PENDING.max((config.upscaling_speed * f64::from(running[ty])) as u32);
            for _ in 0..wanted.min(allowed.saturating_sub(pending[ty])) {
                cluster.create(ty, None);
            }
        }
    }
}

/// Ray's `_resource_based_utilization_scorer`: of the demands packed first-fit into one node
/// of `capacity`, (does not waste a GPU node, resource types matched, the least of
/// `total × utilization³` over its resources, their mean); `None` when nothing fits.
fn score(capacity: &Resources, demands: &[Resources]) -> Option<(bool, u32, f64, f64)> {
    let mut free = capacity.clone();
    let mut fitted = false;
    let (mut wants_cpu, mut wants_memory, mut wants_gpu) = (false, false, false);
    for need in demands {
        wants_cpu |= need.cpu_millis > 0;
        wants_memory |= need.memory_bytes > 0;
        wants_gpu |= need.gpus > 0;
        if let Ok(rest) = free.checked_sub(need) {
            free = rest;
            fitted = true;
        }
    }
    if !fitted {
        return None;
    }
    // Ray counts cpus and gpus as units and memory in bytes.
    let dims = [
        (
            capacity.cpu_millis as f64 / 1000.0,
            free.cpu_millis as f64 / 1000.0,
            wants_cpu,
        ),
        (
            capacity.memory_bytes as f64,
            free.memory_bytes as f64,
            wants_memory,
        ),
        (f64::from(capacity.gpus), f64::from(free.gpus), wants_gpu),
    ];
    let mut matching = 0;
    let mut utils = Vec::new();
    for (total, left, wanted) in dims {
        if total < 1.0 {
            continue;
        }
        matching += u32::from(wanted);
        let util = (total - left) / total;
        utils.push(total * util.powi(3));
    }
    let least = utils.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = utils.iter().sum::<f64>() / utils.len().max(1) as f64;
    // AUTOSCALER_CONSERVE_GPU_NODES: no GPU node for work that needs none.
    let gpu_ok = capacity.gpus == 0 || wants_gpu;
    Some((gpu_ok, matching, least, mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_score_prefers_the_type_the_demand_fills() {
        let tasks = vec![Resources::new(1000, 2 * GIB); 10];
        let score_of = |cpus: u64| {
            score(&Resources::new(cpus * 1000, cpus * 2 * GIB), &tasks).expect("some fit")
        };
        // 8 of 10 fill an 8-cpu node: 8 × 1³ beats 16 × (10/16)³ and 4 × 1³.
        assert!(score_of(8) > score_of(16));
        assert!(score_of(8) > score_of(4));
        let mut gpu = Resources::new(16_000, 64 * GIB);
        gpu.gpus = 1;
        assert!(!score(&gpu, &tasks).expect("they fit").0);
        assert_eq!(score(&Resources::new(500, GIB), &tasks), None);
    }
}
