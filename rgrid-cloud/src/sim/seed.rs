//! The earlier Python RGrid design's autoscaler ([`SeedConfig`]), as the seed project built it.

use std::collections::BTreeMap;
use std::time::Duration;

use rgrid_core::Resources;

use crate::config::NodeTypeConfig;

use super::engine::{count, Autoscaler, Cadence, Cluster, State};
use super::trace::Trace;

/// The earlier Python RGrid design: poll every minute; when at least `queue_threshold` tasks
/// queue, add workers for them at `tasks_per_worker` each (counting workers still booting),
/// up to `max_workers`; terminate idle workers in minute `terminate_minute` of their billing
/// hour. Workers are all one type.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedConfig {
    /// Provision only when at least this many tasks queue. Default: 5.
    pub queue_threshold: usize,
    /// Task slots per worker. Default: 2.
    pub tasks_per_worker: u32,
    /// Most workers at once. Default: 10.
    pub max_workers: u32,
    /// Polling interval. Default: 60 s.
    pub check_interval: Duration,
    /// Idle workers are terminated from this minute of their billing hour on. Default: 55.
    pub terminate_minute: u64,
    /// Worker type; `None`: the cheapest type that holds `tasks_per_worker` of the trace's
    /// largest task (fewer slots when no type holds that many). Default: `None`.
    pub worker_type: Option<String>,
    /// Workers that have not joined after this long are terminated (a courtesy the sim extends
    /// to the baseline so that it does not leak machines). Default: 10 min.
    pub join_timeout: Duration,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self {
            queue_threshold: 5,
            tasks_per_worker: 2,
            max_workers: 10,
            check_interval: Duration::from_secs(60),
            terminate_minute: 55,
            worker_type: None,
            join_timeout: Duration::from_secs(600),
        }
    }
}

/// The seed's policy on one trace.
pub(super) struct Seed<'a> {
    config: &'a SeedConfig,
    /// The worker type (index into the types).
    pub(super) ty: usize,
    /// Task slots per worker.
    slots: u32,
}

impl<'a> Seed<'a> {
    /// The configured worker type, else the cheapest type holding `tasks_per_worker` of the
    /// trace's largest task — or as many as some type holds.
    pub(super) fn new(config: &'a SeedConfig, trace: &Trace, types: &[NodeTypeConfig]) -> Self {
        if let Some(ty) = (config.worker_type.as_ref())
            .and_then(|name| types.iter().position(|t| &t.name == name))
        {
            return Self {
                config,
                ty,
                slots: config.tasks_per_worker,
            };
        }
        let mut need = Resources::default();
        for t in &trace.tasks {
            need.cpu_millis = need.cpu_millis.max(t.resources.cpu_millis);
            need.memory_bytes = need.memory_bytes.max(t.resources.memory_bytes);
            need.gpus = need.gpus.max(t.resources.gpus);
        }
        let mut order: Vec<usize> = (0..types.len()).collect();
        order.sort_by(|&a, &b| types[a].hourly_price.total_cmp(&types[b].hourly_price));
        for k in (1..=config.tasks_per_worker.max(1)).rev() {
            let slots = Resources {
                cpu_millis: need.cpu_millis * u64::from(k),
                memory_bytes: need.memory_bytes * u64::from(k),
                gpus: need.gpus * k,
                custom: BTreeMap::new(),
            };
            if let Some(&ty) = order.iter().find(|&&i| types[i].capacity().fits(&slots)) {
                return Self {
                    config,
                    ty,
                    slots: k,
                };
            }
        }
        Self {
            config,
            ty: order.first().copied().unwrap_or(0),
            slots: config.tasks_per_worker,
        }
    }
}

impl Autoscaler for Seed<'_> {
    fn cadence(&self) -> Cadence {
        Cadence::Every(self.config.check_interval)
    }

    fn step(&mut self, cluster: &mut Cluster<'_>) {
        let b = self.config;
        for n in 0..cluster.nodes.len() {
            let node = &cluster.nodes[n];
            if node.state == State::Booting && cluster.now - node.created >= b.join_timeout {
                cluster.delete(n);
            }
        }
        let live = count(cluster.live());
        let booting = count(cluster.live().filter(|(_, n)| n.state == State::Booting));
        let queued = cluster.queue.len();
        if queued >= b.queue_threshold {
            let wanted = (queued as u32).div_ceil(self.slots.max(1));
            let add = wanted
                .saturating_sub(booting)
                .min(b.max_workers.saturating_sub(live));
            for _ in 0..add {
                cluster.create(self.ty, Some(self.slots));
            }
        }
        for n in 0..cluster.nodes.len() {
            let node = &cluster.nodes[n];
            if node.state == State::Ready && node.tasks.is_empty() {
                let minute = ((cluster.now - node.created).as_secs() % 3600) / 60;
                if minute >= b.terminate_minute {
                    cluster.delete(n);
                }
            }
        }
    }
}
