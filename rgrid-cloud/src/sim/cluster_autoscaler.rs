//! A Kubernetes cluster-autoscaler-style policy ([`ClusterAutoscalerConfig`]), from its
//! documented defaults: every `scan-interval`, pending tasks that fit neither the free room of
//! ready nodes nor upcoming (booting) ones trigger a scale-up of one node group (type) — the
//! binpacking estimator says how many nodes, the default `random` expander picks the group
//! among those that can take some of them (GPU groups only for tasks that need a GPU, as
//! their taint does). A node whose requested share (the larger of cpu and memory) is under
//! `scale-down-utilization-threshold` and whose tasks fit elsewhere is unneeded; unneeded for
//! `scale-down-unneeded-time`, it is removed — empty ones up to `max-empty-bulk-delete` at
//! once, busy ones one at a time, their tasks evicted and run again elsewhere — but not within
//! `scale-down-delay-after-add` of a scale-up. A node group whose create failed backs off. It
//! knows nothing of billing.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rgrid_core::Resources;

use super::engine::{count, Autoscaler, Cadence, Cluster, Created, State};

/// The cluster-autoscaler's settings, with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterAutoscalerConfig {
    /// `--scan-interval`. Default: 10 s.
    pub scan_interval: Duration,
    /// `--scale-down-unneeded-time`. Default: 10 min.
    pub unneeded_time: Duration,
    /// `--scale-down-delay-after-add`. Default: 10 min.
    pub delay_after_add: Duration,
    /// `--scale-down-utilization-threshold`. Default: 0.5.
    pub utilization_threshold: f64,
    /// `--max-empty-bulk-delete`. Default: 10.
    pub max_empty_bulk_delete: u32,
    /// `--max-nodes-total`. Default: unlimited; here 10, rgrid's `max_nodes`, to compare like
    /// with like.
    pub max_nodes_total: u32,
    /// `--max-node-provision-time`: a node not ready by then is removed. Default: 15 min.
    pub max_node_provision_time: Duration,
    /// The initial backoff of a node group whose scale-up failed. Default: 5 min.
    pub backoff: Duration,
}

impl Default for ClusterAutoscalerConfig {
    fn default() -> Self {
        Self {
            scan_interval: Duration::from_secs(10),
            unneeded_time: Duration::from_secs(600),
            delay_after_add: Duration::from_secs(600),
            utilization_threshold: 0.5,
            max_empty_bulk_delete: 10,
            max_nodes_total: 10,
            max_node_provision_time: Duration::from_secs(900),
            backoff: Duration::from_secs(300),
        }
    }
}

/// The cluster-autoscaler's state on one run.
pub(super) struct ClusterAutoscaler<'a> {
    config: &'a ClusterAutoscalerConfig,
    /// The `random` expander's choices (its own stream, so the cloud's draws stay the same).
    rng: ChaCha8Rng,
    /// Per node: since when it has been unneeded.
    unneeded_since: Vec<Option<Duration>>,
    last_scale_up: Option<Duration>,
    /// Per type: backed off until then.
    backoff_until: Vec<Duration>,
}

impl<'a> ClusterAutoscaler<'a> {
    pub(super) fn new(config: &'a ClusterAutoscalerConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xca5c_a1e5),
            unneeded_since: Vec::new(),
            last_scale_up: None,
            backoff_until: Vec::new(),
        }
    }

    fn scale_up(&mut self, cluster: &mut Cluster<'_>) {
        let config = self.config;
        // Pending pods the scheduler simulation cannot place on ready or upcoming nodes.
        let pending = cluster.unplaced();
        let room_left = config.max_nodes_total.saturating_sub(count(cluster.live()));
        if pending.is_empty() || room_left == 0 {
            return;
        }
        // Per node group that can take some of them: how many nodes the binpacking estimator
        // asks for.
        let types = cluster.types;
        let options: Vec<(usize, u32)> = (0..types.len())
            .filter(|&ty| self.backoff_until[ty] <= cluster.now)
            .filter_map(|ty| {
                let capacity = types[ty].capacity();
                let schedulable = pending
                    .iter()
                    .filter(|need| (capacity.gpus > 0) == (need.gpus > 0) && capacity.fits(need));
                let nodes = binpack(&capacity, schedulable);
                (nodes > 0).then_some((ty, nodes))
            })
            .collect();
        if options.is_empty() {
            return;
        }
        let (ty, nodes) = options[self.rng.gen_range(0..options.len())];
        for _ in 0..nodes.min(room_left) {
            if cluster.create(ty, None) == Created::SoldOut {
                self.backoff_until[ty] = cluster.now + config.backoff;
                break;
            }
            self.last_scale_up = Some(cluster.now);
        }
    }

    fn scale_down(&mut self, cluster: &mut Cluster<'_>) {
        let config = self.config;
        let now = cluster.now;
        // Which ready nodes are unneeded: under the threshold, and their tasks fit on the
        // nodes that stay.
        let mut room: Vec<Resources> = (cluster.nodes.iter())
            .map(|n| match n.state {
                State::Ready => n.free.clone(),
                _ => Resources::default(),
            })
            .collect();
        let mut unneeded = vec![false; cluster.nodes.len()];
        for (n, node) in cluster.nodes.iter().enumerate() {
            if node.state != State::Ready {
                continue;
            }
            let capacity = cluster.types[node.ty].capacity();
            if utilization(&capacity, &node.free) >= config.utilization_threshold {
                continue;
            }
            let mut trial = room.clone();
            trial[n] = Resources::default();
            let fits = node.tasks.iter().all(|&t| {
                let need = &cluster.tasks[t].resources;
                let slot = (trial.iter_mut().enumerate())
                    .find(|(m, r)| !unneeded[*m] && *m != n && r.fits(need));
                match slot {
                    Some((_, r)) => {
                        *r = r.checked_sub(need).unwrap_or_default();
                        true
                    }
                    None => false,
                }
            });
            if fits {
                unneeded[n] = true;
                room = trial;
            }
        }
        for (n, flag) in unneeded.iter().enumerate() {
            if !flag {
                self.unneeded_since[n] = None;
            } else if self.unneeded_since[n].is_none() {
                self.unneeded_since[n] = Some(now);
            }
        }
        if self
            .last_scale_up
            .is_some_and(|at| now < at + config.delay_after_add)
        {
            return;
        }
        let ripe: Vec<usize> = (0..cluster.nodes.len())
            .filter(|&n| self.unneeded_since[n].is_some_and(|at| now >= at + config.unneeded_time))
            .collect();
        let empty: Vec<usize> = (ripe.iter().copied())
            .filter(|&n| cluster.nodes[n].tasks.is_empty())
            .take(config.max_empty_bulk_delete as usize)
            .collect();
        let doomed = if empty.is_empty() {
            ripe.into_iter().take(1).collect()
        } else {
            empty
        };
        for n in doomed {
            cluster.delete(n);
            self.unneeded_since[n] = None;
        }
    }
}

impl Autoscaler for ClusterAutoscaler<'_> {
    fn cadence(&self) -> Cadence {
        Cadence::Every(self.config.scan_interval)
    }

    fn step(&mut self, cluster: &mut Cluster<'_>) {
        self.unneeded_since.resize(cluster.nodes.len(), None);
        self.backoff_until
            .resize(cluster.types.len(), Duration::ZERO);
        for n in 0..cluster.nodes.len() {
            let node = &cluster.nodes[n];
            if node.state == State::Booting
                && cluster.now - node.created >= self.config.max_node_provision_time
            {
                cluster.delete(n);
            }
        }
        self.scale_up(cluster);
        self.unneeded_since.resize(cluster.nodes.len(), None);
        self.scale_down(cluster);
    }
}

/// The requested share of a node: the larger of its cpu and memory (and GPUs) in use.
fn utilization(capacity: &Resources, free: &Resources) -> f64 {
    let share = |total: u64, left: u64| {
        if total == 0 {
            0.0
        } else {
            (total - left.min(total)) as f64 / total as f64
        }
    };
    share(capacity.cpu_millis, free.cpu_millis)
        .max(share(capacity.memory_bytes, free.memory_bytes))
        .max(share(u64::from(capacity.gpus), u64::from(free.gpus)))
}

/// The binpacking estimator: nodes of `capacity` that first-fit-decreasing packing of `pods`
/// needs.
fn binpack<'a>(capacity: &Resources, pods: impl Iterator<Item = &'a Resources>) -> u32 {
    let mut pods: Vec<&Resources> = pods.collect();
    pods.sort_by_key(|p| std::cmp::Reverse((p.cpu_millis, p.memory_bytes)));
    let mut bins: Vec<Resources> = Vec::new();
    for pod in pods {
        match bins.iter_mut().find(|b| b.fits(pod)) {
            Some(b) => *b = b.checked_sub(pod).unwrap_or_default(),
            None => bins.push(capacity.checked_sub(pod).unwrap_or_default()),
        }
    }
    count(bins.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_estimator_packs_first_fit_decreasing() {
        let pods = [
            Resources::new(1000, GIB),
            Resources::new(3000, GIB),
            Resources::new(1000, GIB),
            Resources::new(3000, GIB),
        ];
        assert_eq!(binpack(&Resources::new(4000, 8 * GIB), pods.iter()), 2);
        assert_eq!(binpack(&Resources::new(8000, 8 * GIB), pods.iter()), 1);
        assert_eq!(binpack(&Resources::new(8000, 8 * GIB), [].iter()), 0);
    }

    #[test]
    fn utilization_is_the_larger_share() {
        let cap = Resources::new(4000, 8 * GIB);
        assert_eq!(utilization(&cap, &Resources::new(3000, 2 * GIB)), 0.75);
        assert_eq!(utilization(&cap, &cap), 0.0);
    }
}
