//! rgrid's autoscaler in the simulator: what the head does around
//! [`policy::decide`](crate::policy::decide) — it fills the [`Snapshot`] (queued demand by
//! shape with the runtime and arrival-rate estimates, servers with when their attempts are
//! expected to end, recent failed creates), decides at most `debounce` after an event or when
//! the plan asked, and carries the plan out (a drained node hands its work back at
//! [`policy::drain_deadline`]).

use std::collections::VecDeque;
use std::time::Duration;

use rgrid_core::Resources;

use crate::config::AutoscalerConfig;
use crate::policy::{
    self, Action, Demand, ProvisionFailure, RuntimeStats, ServerState, ServerView, Snapshot, Stream,
};
use crate::provider::{FailureKind, ServerId};

use super::engine::{epoch, Autoscaler, Cadence, Cluster, Created, State};

/// The head's arrival rate counts the tasks submitted within this window.
const ARRIVAL_WINDOW: Duration =
    Duration::from_secs(policy::RATE_BLOCK.as_secs() * policy::RATE_BLOCKS as u64);

/// rgrid's policy with the head's estimates.
pub(super) struct Rgrid<'a> {
    config: &'a AutoscalerConfig,
    debounce: Duration,
    failures: Vec<ProvisionFailure>,
    /// Runtimes of finished tasks per shape: the head's estimates for the policy.
    runtimes: Vec<(Resources, RuntimeStats)>,
    /// Arrival times per shape within the last [`ARRIVAL_WINDOW`], oldest first: the head's
    /// arrival rate for the policy.
    arrivals: Vec<(Resources, VecDeque<Duration>)>,
}

impl<'a> Rgrid<'a> {
    pub(super) fn new(config: &'a AutoscalerConfig, debounce: Duration) -> Self {
        Self {
            config,
            debounce,
            failures: Vec::new(),
            runtimes: Vec::new(),
            arrivals: Vec::new(),
        }
    }

    /// The head's sustained arrival rate of shape `need`: the median ten-minute block of the
    /// last [`ARRIVAL_WINDOW`], per second.
    fn arrival_rate(&self, now: Duration, need: &Resources) -> f64 {
        let mut blocks = [0u32; policy::RATE_BLOCKS];
        if let Some((_, times)) = self.arrivals.iter().find(|a| &a.0 == need) {
            for &at in times {
                let block = ((now - at).as_secs() / policy::RATE_BLOCK.as_secs()) as usize;
                if let Some(count) = blocks.get_mut(block) {
                    *count += 1;
                }
            }
        }
        policy::sustained_rate(blocks)
    }

    fn runtime_stats(&self, need: &Resources) -> Option<&RuntimeStats> {
        self.runtimes.iter().find(|r| &r.0 == need).map(|r| &r.1)
    }

    fn mean_runtime(&self, need: &Resources) -> Option<Duration> {
        self.runtime_stats(need)?.mean()
    }

    /// How long the running tasks of shape `need` have been running, on average: the head's
    /// lower bound on their runtime.
    fn running_for(cluster: &Cluster<'_>, need: &Resources) -> Option<Duration> {
        let (sum, n) = (cluster.tasks.iter())
            .filter(|t| &t.resources == need && t.end.is_none())
            .filter_map(|t| t.start)
            .fold((Duration::ZERO, 0u32), |(sum, n), start| {
                (sum + (cluster.now - start), n + 1)
            });
        (n > 0).then(|| sum / n)
    }

    /// The head's estimate, per node, of when its running tasks end: the latest over them of
    /// the start plus the high quantile of its shape's runtimes longer than it has run
    /// ([`RuntimeStats::ends_within`]); `None` for a node running nothing or a task of a
    /// shape none of which has finished yet.
    fn busy_until(&self, cluster: &Cluster<'_>) -> Vec<Option<Duration>> {
        // Per node: the latest expected end so far, and whether one is unknown.
        let mut until = vec![(None, false); cluster.nodes.len()];
        for task in cluster.tasks.iter().filter(|t| t.end.is_none()) {
            let (Some(n), Some(start)) = (task.node, task.start) else {
                continue;
            };
            let stats = self.runtime_stats(&task.resources);
            match stats.and_then(|s| s.ends_within(cluster.now - start)) {
                Some(runtime) => until[n].0 = until[n].0.max(Some(start + runtime)),
                None => until[n].1 = true,
            }
        }
        (until.into_iter())
            .map(|(at, unknown)| at.filter(|_| !unknown))
            .collect()
    }

    /// The head's streams: every shape that arrived in the last hour with a known runtime, its
    /// sustained arrival rate and mean runtime.
    fn streams(&self, now: Duration) -> Vec<Stream> {
        (self.arrivals.iter())
            .filter_map(|(need, _)| {
                Some(Stream {
                    resources: need.clone(),
                    rate: self.arrival_rate(now, need),
                    runtime: self.mean_runtime(need)?,
                })
            })
            .collect()
    }

    fn snapshot(&self, cluster: &Cluster<'_>) -> Snapshot {
        let config = self.config;
        let mut demand: Vec<Demand> = Vec::new();
        for &t in &cluster.queue {
            let task = &cluster.tasks[t];
            match demand.iter_mut().find(|d| d.resources == task.resources) {
                Some(d) => d.count += 1,
                None => demand.push(Demand {
                    resources: task.resources.clone(),
                    selector: Vec::new(),
                    count: 1,
                    oldest: epoch() + task.arrival,
                    expected_runtime: self.mean_runtime(&task.resources),
                    arrival_rate: Some(self.arrival_rate(cluster.now, &task.resources)),
                    running_for: Self::running_for(cluster, &task.resources),
                }),
            }
        }
        let busy_until = self.busy_until(cluster);
        let servers = (cluster.live())
            .map(|(i, n)| {
                let ty = &cluster.types[n.ty];
                ServerView {
                    server: Some(ServerId(i as u64)),
                    name: format!("node-{i}"),
                    node_type: ty.name.clone(),
                    state: match n.state {
                        State::Booting => ServerState::Provisioning,
                        State::Ready => ServerState::Ready,
                        _ => ServerState::Draining,
                    },
                    created: epoch() + n.created,
                    labels: policy::type_labels(config, ty),
                    capacity: ty.capacity(),
                    free: n.free.clone(),
                    running: n.running(),
                    idle_since: n.idle_since.map(|t| epoch() + t),
                    busy_until: busy_until[i].map(|t| epoch() + t),
                    suspect_since: None,
                }
            })
            .collect();
        Snapshot {
            demand,
            servers,
            failures: self.failures.clone(),
            streams: self.streams(cluster.now),
        }
    }
}

impl Autoscaler for Rgrid<'_> {
    fn cadence(&self) -> Cadence {
        Cadence::Events(self.debounce)
    }

    /// Records an arrival for the shape's arrival rate, forgetting those out of the window.
    fn arrived(&mut self, cluster: &Cluster<'_>, t: usize) {
        let need = &cluster.tasks[t].resources;
        let now = cluster.now;
        match self.arrivals.iter_mut().find(|a| &a.0 == need) {
            Some((_, times)) => {
                while times.front().is_some_and(|&at| at + ARRIVAL_WINDOW <= now) {
                    times.pop_front();
                }
                times.push_back(now);
            }
            None => self.arrivals.push((need.clone(), VecDeque::from([now]))),
        }
    }

    fn finished(&mut self, cluster: &Cluster<'_>, t: usize) {
        let task = &cluster.tasks[t];
        let ran = cluster.now - task.start.unwrap_or(cluster.now);
        match self.runtimes.iter_mut().find(|r| r.0 == task.resources) {
            Some((_, stats)) => stats.record(ran),
            None => {
                let mut stats = RuntimeStats::default();
                stats.record(ran);
                self.runtimes.push((task.resources.clone(), stats));
            }
        }
    }

    fn step(&mut self, cluster: &mut Cluster<'_>) {
        let now = epoch() + cluster.now;
        let cooldown = self.config.unavailable_cooldown;
        self.failures.retain(|f| f.at + cooldown > now);
        let snapshot = self.snapshot(cluster);
        let plan = policy::decide(self.config, &snapshot, now);
        let mut again = false;
        for action in plan.actions {
            match action {
                Action::Create {
                    node_type,
                    location,
                } => {
                    let Some(ty) = cluster.types.iter().position(|t| t.name == node_type) else {
                        continue;
                    };
                    if cluster.create(ty, None) == Created::SoldOut {
                        self.failures.push(ProvisionFailure {
                            node_type,
                            location,
                            kind: FailureKind::Unavailable,
                            at: now,
                        });
                        again = true;
                    }
                }
                Action::Drain { server, reason, .. } => {
                    let n = server.0 as usize;
                    let age = cluster.now - cluster.nodes[n].created;
                    if cluster.drain(n, policy::drain_deadline(reason, age)) {
                        again = true;
                    }
                }
                Action::Delete { server, .. } => cluster.delete(server.0 as usize),
            }
        }
        if again {
            cluster.wake_at(cluster.now + self.debounce);
        }
        if let Some(offset) = plan
            .next_wakeup
            .and_then(|at| at.duration_since(epoch()).ok())
        {
            cluster.wake_at(offset);
        }
    }
}
