//! Nodes: sessions opening and closing, liveness, drains, deaths and departures.
//!
//! A node's last frame is recorded by its stream's reader ([`Session::last_seen`]), not by the
//! loop, so a busy loop never makes a healthy node look silent. A node silent for three
//! heartbeats is `suspect` (no new work; back to work when it is heard again); silent past its
//! disconnect grace (the `disconnect_grace` its hello names, else the head's heartbeat timeout)
//! it is `dead`, and its attempts are requeued. Until then its attempts stay its own, and the
//! results it spooled while cut off are accepted when it returns.
//!
//! A connected node that says it is unhealthy ([`NodeMessage::Health`]: its engine does not
//! answer, its disk is full) gets no new work until it says it is healthy again; listings show
//! it as `unhealthy`, with why.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rgrid_core::protocol::{Assignment, HeadMessage, NodeHello, NodeMessage};
use rgrid_core::scheduler::NodeView;
use rgrid_core::time::{monotonic_ms, unix_ms};
use rgrid_core::{AttemptId, NodeId};

use super::events::Session;
use super::tasks::ShapeId;
use super::{millis, Cluster, Comm};
use crate::store::{StoredNode, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeState {
    Ready,
    /// Disconnected or silent: no new work, not yet declared dead.
    Suspect,
    Draining,
    Dead,
    /// Drained and gone.
    Left,
    /// Removed by an operator or the autoscaler and revoked: never back, not listed.
    Removed,
}

impl NodeState {
    pub(crate) const ALL: [NodeState; 6] = [
        Self::Ready,
        Self::Suspect,
        Self::Draining,
        Self::Dead,
        Self::Left,
        Self::Removed,
    ];

    /// Serving work, or out of touch but expected back.
    pub(crate) fn is_alive(self) -> bool {
        matches!(self, Self::Ready | Self::Suspect | Self::Draining)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Suspect => "suspect",
            Self::Draining => "draining",
            Self::Dead => "dead",
            Self::Left => "left",
            Self::Removed => "removed",
        }
    }
}

pub(super) struct Node {
    pub id: NodeId,
    pub name: String,
    pub hello: Option<NodeHello>,
    pub state: NodeState,
    /// A drain was asked: it outlasts a suspect spell.
    pub draining: bool,
    pub session: Option<Session>,
    /// Why the node says it cannot take work (its last health report); `None`: healthy.
    pub problem: Option<String>,
    /// Since when it has been without a session ([`monotonic_ms`]).
    pub silent_since_ms: u64,
    /// Attempts placed here that have not ended, with the shape of what they hold.
    pub running: HashMap<AttemptId, ShapeId>,
    /// Since when it has run nothing (wall clock); `None` while busy.
    pub idle_since_ms: Option<u64>,
    /// What to send it at the end of this turn.
    pub assignments: Vec<Assignment>,
    pub acks: Vec<AttemptId>,
    /// Its billed hours, while it has a price and a session (see `billing`).
    pub ledger: Option<rgrid_cloud::task_cost::Ledger>,
}

impl Node {
    pub(super) fn new(
        id: NodeId,
        name: String,
        hello: Option<NodeHello>,
        state: NodeState,
    ) -> Self {
        Self {
            id,
            name,
            hello,
            state,
            draining: false,
            session: None,
            problem: None,
            silent_since_ms: monotonic_ms(),
            running: HashMap::new(),
            idle_since_ms: Some(unix_ms()),
            assignments: Vec::new(),
            acks: Vec::new(),
            ledger: None,
        }
    }

    /// Its state as listings show it: a ready node that reported a problem is `unhealthy`.
    pub(super) fn listed_state(&self) -> &'static str {
        match (self.state, &self.problem) {
            (NodeState::Ready, Some(_)) => "unhealthy",
            (state, _) => state.as_str(),
        }
    }

    /// How long it may be silent before it is dead: its own grace, else `timeout_ms`.
    fn grace_ms(&self, timeout_ms: u64) -> u64 {
        self.hello
            .as_ref()
            .and_then(|h| h.disconnect_grace_ms)
            .unwrap_or(timeout_ms)
    }

    /// How long it has been silent.
    fn silent_ms(&self, now_ms: u64) -> u64 {
        let since = match &self.session {
            Some(session) => session.last_seen.load(Ordering::Relaxed),
            None => self.silent_since_ms,
        };
        now_ms.saturating_sub(since)
    }
}

pub(super) fn node_view(id: NodeId, hello: &NodeHello) -> NodeView {
    NodeView {
        id,
        total: hello.resources.clone(),
        labels: hello.labels.clone(),
        capabilities: hello.capabilities.iter().cloned().collect(),
    }
}

impl<C: Comm> Cluster<C> {
    /// The index of node `id`, adding it if it is new.
    pub(super) fn node_slot(&mut self, id: NodeId, name: &str) -> u32 {
        if let Some(&index) = self.node_index.get(&id) {
            return index;
        }
        let index = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        self.nodes
            .push(Node::new(id, name.to_owned(), None, NodeState::Suspect));
        self.node_index.insert(id, index);
        index
    }

    pub(super) fn node_connected(&mut self, id: NodeId, hello: NodeHello, session: Session) {
        if self
            .node_index
            .get(&id)
            .is_some_and(|&index| self.node(index).state == NodeState::Removed)
        {
            // Its session opened as it was removed: dropping the session ends it.
            return;
        }
        tracing::info!(node = %id, name = %hello.name, resources = %hello.resources, "node session opened");
        self.scheduler.upsert_node(node_view(id, &hello));
        let index = self.node_slot(id, &hello.name);
        let superseded = self.reconcile(index, &hello);
        let node = &mut self.nodes[index as usize];
        node.name = hello.name.clone();
        node.state = NodeState::Ready;
        node.draining = false;
        node.hello = Some(hello);
        let welcome = HeadMessage::Welcome {
            node_id: id,
            heartbeat_interval_ms: millis(self.liveness.heartbeat_interval),
            superseded,
        };
        // Assignments of the old session were never sent: it reports what it runs.
        node.assignments.clear();
        node.acks.clear();
        let opened = self.comm.send(&session, welcome);
        node.session = Some(session);
        self.commits
            .pending
            .other
            .push(Write::UpsertNode(Box::new(StoredNode {
                id,
                name: node.name.clone(),
                hello: node.hello.clone(),
                state: NodeState::Ready.as_str(),
                joined_at_ms: unix_ms(),
            })));
        let healthy = node.problem.is_none();
        self.scheduler.set_schedulable(id, healthy);
        self.bill_from_now(index);
        self.dirty = true;
        if !opened {
            self.close_session(index);
        }
    }

    pub(super) fn node_message(&mut self, id: NodeId, session: u64, message: NodeMessage) {
        let Some(&index) = self.node_index.get(&id) else {
            return;
        };
        if self.node(index).session.as_ref().map(|s| s.id) != Some(session) {
            return; // from a replaced session
        }
        match message {
            // Results and renewals are handled by the connection (`server`, `renewal`).
            NodeMessage::Heartbeat | NodeMessage::Results(_) | NodeMessage::Renew { .. } => {}
            NodeMessage::Started { attempt } => {
                let started = self
                    .current(attempt, index)
                    .is_some_and(|t| t.state == rgrid_core::TaskState::Assigned);
                if started {
                    self.details.remove(&attempt.task);
                    self.set_state(attempt.task, rgrid_core::TaskState::Running);
                }
            }
            NodeMessage::Pulling { attempt } => {
                let pulling = self
                    .current(attempt, index)
                    .is_some_and(|t| t.state == rgrid_core::TaskState::Assigned);
                if pulling {
                    self.details
                        .insert(attempt.task, "pulling the image".to_owned());
                }
            }
            NodeMessage::Draining => {
                // The node's drain hand-back test: a head that has not heard yet keeps
                // assigning (`FAILPOINTS=head-misses-draining=return`, `failpoints` builds).
                fail::fail_point!("head-misses-draining", |_| {});
                self.set_draining(index)
            }
            NodeMessage::Health(health) => self.set_health(index, health.problem),
            NodeMessage::Leaving { unfinished } => self.node_left(index, unfinished),
        }
    }

    pub(super) fn node_disconnected(&mut self, id: NodeId, session: u64) {
        let Some(&index) = self.node_index.get(&id) else {
            return;
        };
        if self.node(index).session.as_ref().map(|s| s.id) != Some(session) {
            return;
        }
        tracing::info!(node = %id, "node disconnected; suspect until it returns or times out");
        self.close_session(index);
    }

    /// Forgets a node's session: it is suspect until it reconnects or times out.
    pub(super) fn close_session(&mut self, index: u32) {
        let node = &mut self.nodes[index as usize];
        node.session = None;
        node.silent_since_ms = monotonic_ms();
        node.assignments.clear();
        node.acks.clear();
        if matches!(node.state, NodeState::Ready | NodeState::Draining) {
            node.state = NodeState::Suspect;
        }
        let id = node.id;
        self.scheduler.set_schedulable(id, false);
    }

    /// Suspects nodes that went quiet, restores those heard again, and declares dead the ones
    /// silent past the timeout.
    /// Sets the sampled metrics: open tasks and nodes by state, the longest silence of a node
    /// with a session.
    pub(super) fn sample_metrics(&self, now_ms: u64) {
        let mut nodes = [0; NodeState::ALL.len()];
        let mut lag = 0;
        for node in &self.nodes {
            nodes[node.state as usize] += 1;
            if node.session.is_some() {
                lag = lag.max(node.silent_ms(now_ms));
            }
        }
        self.metrics.sample(
            |state| self.counts.get(state),
            nodes,
            Duration::from_millis(lag),
        );
    }

    pub(super) fn check_liveness(&mut self, now_ms: u64) {
        let suspect_after = self.liveness.suspect_after_ms();
        let timeout = self.liveness.timeout_ms();
        let mut dead = Vec::new();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            let silent = node.silent_ms(now_ms);
            match node.state {
                NodeState::Ready | NodeState::Draining if silent > suspect_after => {
                    tracing::info!(node = %node.id, silent_ms = silent, "node missed heartbeats; suspect");
                    node.state = NodeState::Suspect;
                    self.scheduler.set_schedulable(node.id, false);
                }
                NodeState::Suspect if silent > node.grace_ms(timeout) => dead.push(index as u32),
                NodeState::Suspect if node.session.is_some() && silent <= suspect_after => {
                    tracing::info!(node = %node.id, "node heard again");
                    if node.draining {
                        node.state = NodeState::Draining;
                    } else {
                        node.state = NodeState::Ready;
                        self.scheduler
                            .set_schedulable(node.id, node.problem.is_none());
                        self.dirty = true;
                    }
                }
                _ => {}
            }
        }
        for index in dead {
            self.node_dead(index);
        }
    }

    /// A node reported its health: unhealthy, it gets no new work until it is healthy again.
    fn set_health(&mut self, index: u32, problem: Option<String>) {
        let node = &mut self.nodes[index as usize];
        if node.problem == problem {
            return;
        }
        match &problem {
            Some(why) => {
                tracing::warn!(node = %node.id, name = %node.name, %why, "node is unhealthy; no new work")
            }
            None => tracing::info!(node = %node.id, name = %node.name, "node is healthy again"),
        }
        node.problem = problem;
        if node.state == NodeState::Ready {
            let id = node.id;
            let healthy = node.problem.is_none();
            self.scheduler.set_schedulable(id, healthy);
            self.dirty = true;
        }
    }

    /// Tells a live node to drain. `node` is a name or an id.
    pub(super) fn drain(&mut self, node: &str, deadline: Duration) -> Option<NodeId> {
        let index = self
            .nodes
            .iter()
            .position(|n| (n.name == node || n.id.to_string() == node) && n.session.is_some())?;
        let index = u32::try_from(index).ok()?;
        let session = self.node(index).session.clone()?;
        let id = self.node(index).id;
        self.comm.send(
            &session,
            HeadMessage::Drain {
                deadline_ms: millis(deadline),
            },
        );
        // No new work from now on; the node's `Draining` confirms it.
        self.set_draining(index);
        Some(id)
    }

    fn set_draining(&mut self, index: u32) {
        let node = &mut self.nodes[index as usize];
        if node.draining {
            return;
        }
        tracing::info!(node = %node.id, name = %node.name, "node is draining");
        node.draining = true;
        node.state = NodeState::Draining;
        let id = node.id;
        self.scheduler.set_schedulable(id, false);
        self.commits.pending.other.push(Write::NodeState {
            node: id,
            state: NodeState::Draining.as_str(),
        });
        if self.autoscaling {
            self.comm.wake_autoscaler();
        }
    }

    /// A drained node leaves: what it could not finish (of what it holds) is requeued without
    /// counting as a node loss; it gets no more work.
    fn node_left(&mut self, index: u32, unfinished: Vec<AttemptId>) {
        let id = self.node(index).id;
        tracing::info!(node = %id, requeued = unfinished.len(), "node left the cluster");
        for attempt in unfinished {
            if self.node(index).running.contains_key(&attempt) {
                self.release_attempt(index, attempt);
                self.requeue(attempt, "node drained", false);
            }
        }
        self.bill_close(index);
        let node = &mut self.nodes[index as usize];
        node.state = NodeState::Left;
        node.session = None;
        self.scheduler.remove_node(id);
        self.commits.pending.other.push(Write::NodeState {
            node: id,
            state: NodeState::Left.as_str(),
        });
        self.dirty = true;
    }

    /// Nodes removed and revoked: what they run is requeued (not counted as a node loss), they
    /// get no more work and leave the listings. Their rows are gone from the store already.
    pub(super) fn remove_nodes(&mut self, ids: &[NodeId]) {
        for id in ids {
            let Some(&index) = self.node_index.get(id) else {
                continue;
            };
            let attempts: Vec<AttemptId> = self.node(index).running.keys().copied().collect();
            for attempt in attempts {
                self.release_attempt(index, attempt);
                self.requeue(attempt, "node removed", false);
            }
            let node = &mut self.nodes[index as usize];
            node.state = NodeState::Removed;
            node.session = None;
            node.assignments.clear();
            node.acks.clear();
            self.scheduler.remove_node(*id);
            self.dirty = true;
        }
    }

    fn node_dead(&mut self, index: u32) {
        let node = &mut self.nodes[index as usize];
        tracing::warn!(node = %node.id, name = %node.name, attempts = node.running.len(), "node is dead; requeueing its tasks");
        node.state = NodeState::Dead;
        // Dropping the session ends it: if the node is alive after all (a network cut), it
        // reconnects, re-registers and learns which of its attempts were superseded.
        node.session = None;
        let id = node.id;
        let attempts: Vec<AttemptId> = node.running.keys().copied().collect();
        self.commits.pending.other.push(Write::NodeState {
            node: id,
            state: NodeState::Dead.as_str(),
        });
        for attempt in attempts {
            self.release_attempt(index, attempt);
            self.requeue(attempt, "node lost", true);
        }
        self.bill_close(index);
        self.scheduler.remove_node(id);
        self.dirty = true;
    }
}
