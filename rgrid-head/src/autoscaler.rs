//! The autoscaler driver: one task that owns the cloud side of the cluster (the last server
//! listing, creates and deletes in flight, recent provisioning failures). When demand or nodes
//! change (the event loop wakes it) or when the policy asked to look again, it takes the event
//! loop's view, lists the cluster's servers, runs [`rgrid_cloud::decide`] and carries the actions
//! out: a create mints a single-use, expiring join token and puts it in the server's user data;
//! a drain goes to the event loop; a delete goes to the provider. Creates and deletes run as
//! their own tasks and report back, so a slow cloud never stalls a decision. Why tasks wait
//! goes back to the event loop for listings.
//!
//! Servers and nodes are matched by name: a provisioned node joins under its server's name,
//! which its join token binds it to (the head records it; the node cannot choose another).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rgrid_cloud::policy::{self, ProvisionFailure};
use rgrid_cloud::provider::ServerStatus;
use rgrid_cloud::{
    cloud_init, Action, AutoscalerConfig, CloudServer, CreateServer, Provider, ProviderError,
    ServerId, ServerState, ServerView, Snapshot, Wait,
};
use rgrid_core::scheduler;
use rgrid_core::tls::ClusterCa;
use rgrid_core::{NodeId, Resources};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, AutoscaleView, Event, NodeSummary, Shape, WaitRuns};
use crate::credentials;
use crate::revoked::Revoked;
use crate::store::Store;

/// The id standing for a server whose create request has not returned yet (Hetzner's ids
/// start at 1).
const PENDING: ServerId = ServerId(0);

/// At most one decision this often, however many events arrive.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// The capability every provisioned node has (it runs tasks in Docker).
const DOCKER: &str = "docker";

/// How a create or delete running on its own ended.
enum Done {
    Created {
        name: String,
        node_type: String,
        location: String,
        result: Result<CloudServer, ProviderError>,
    },
    Deleted {
        server: ServerId,
        result: Result<(), ProviderError>,
    },
}

/// A create in flight.
struct Creating {
    node_type: String,
    since: SystemTime,
}

/// The driver's state; see the module docs.
pub(crate) struct Autoscaler {
    config: AutoscalerConfig,
    provider: Arc<dyn Provider>,
    events: mpsc::Sender<Event>,
    wake: Arc<Notify>,
    store: Store,
    /// A deleted server's node is removed and revoked: its certificate must not outlive it.
    revoked: Arc<Revoked>,
    ca: Arc<ClusterCa>,
    /// `HOST:PORT` provisioned nodes join.
    head_addr: String,
    tracker: TaskTracker,
    servers: Vec<CloudServer>,
    creating: BTreeMap<String, Creating>,
    deleting: BTreeSet<ServerId>,
    failures: Vec<ProvisionFailure>,
    /// After a failed listing, the next one waits until then (decisions go on with the last).
    list_again: Instant,
    /// Whether a listing has succeeded since the start: until one has, nothing is created.
    listed: bool,
    /// Outcomes of creates and deletes; a finished call waits for room (the driver reads the
    /// channel in every turn of its loop).
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// The servers by state after the last decision, for `rgrid status`.
    server_counts: watch::Sender<Vec<(String, u64)>>,
}

/// Finished cloud calls waiting for the driver, at most.
const DONE_QUEUE: usize = 64;

/// Why the autoscaler cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AutoscalerError {
    #[error(transparent)]
    Config(#[from] rgrid_cloud::config::ConfigError),
    #[error("autoscaler: {0}")]
    Hetzner(#[from] rgrid_cloud::HcloudError),
    #[error("autoscaler: the user data for new nodes cannot be generated: {0}")]
    CloudInit(#[from] cloud_init::CloudInitError),
}

/// What the scheduler should know of the node types the autoscaler may create: a task that
/// fits one waits for it instead of being unschedulable.
pub(crate) fn node_type_views(config: &AutoscalerConfig) -> Vec<scheduler::NodeView> {
    config
        .node_types
        .iter()
        .map(|t| scheduler::NodeView {
            id: NodeId(uuid::Uuid::nil()),
            total: t.capacity(),
            labels: policy::type_labels(config, t),
            capabilities: [DOCKER.to_owned()].into(),
        })
        .collect()
}

/// Everything the driver is built from.
pub(crate) struct Parts {
    pub config: AutoscalerConfig,
    pub provider: Arc<dyn Provider>,
    pub events: mpsc::Sender<Event>,
    pub wake: Arc<Notify>,
    pub store: Store,
    pub revoked: Arc<Revoked>,
    pub ca: Arc<ClusterCa>,
    pub head_addr: String,
    pub tracker: TaskTracker,
    /// Where `rgrid status` reads the servers by state.
    pub server_counts: watch::Sender<Vec<(String, u64)>>,
}

impl Autoscaler {
    /// Checks that user data can be rendered for every node type (a bad image name or head
    /// address fails here, at start, not at the first scale-up).
    pub(crate) fn new(parts: Parts) -> Result<Self, AutoscalerError> {
        parts.config.validate()?;
        for t in &parts.config.node_types {
            cloud_init::render(&parts.config, &t.name, &parts.head_addr, "check.only.token")?;
        }
        metrics::describe();
        let (done_tx, done_rx) = mpsc::channel(DONE_QUEUE);
        Ok(Self {
            config: parts.config,
            provider: parts.provider,
            events: parts.events,
            wake: parts.wake,
            store: parts.store,
            revoked: parts.revoked,
            ca: parts.ca,
            head_addr: parts.head_addr,
            tracker: parts.tracker,
            servers: Vec::new(),
            creating: BTreeMap::new(),
            deleting: BTreeSet::new(),
            failures: Vec::new(),
            list_again: Instant::now(),
            listed: false,
            done_tx,
            done_rx,
            server_counts: parts.server_counts,
        })
    }

    /// Decides and acts until `shutdown` or until the event loop is gone.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(cluster = %self.config.cluster_name, max_nodes = self.config.max_nodes, "autoscaler started");
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
                Some(done) = self.done_rx.recv() => self.finished(done),
            }
            let Some(again) = self.step().await else {
                break;
            };
            // Look again at least once per listing lifetime, to notice servers changed from
            // outside (deleted in the console, or left over from before a restart).
            let resync = self.config.api.list_cache_ttl.max(DEBOUNCE);
            next = Instant::now() + again.clamp(DEBOUNCE, resync);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
        }
    }

    /// One decision; returns when to look again, or `None` when the event loop is gone.
    async fn step(&mut self) -> Option<Duration> {
        let (reply, view) = oneshot::channel();
        self.events.send(Event::Autoscale { reply }).await.ok()?;
        let view = view.await.ok()?;
        let now = SystemTime::now();
        if Instant::now() >= self.list_again {
            match self.provider.list(&self.config.label_selector()).await {
                Ok(servers) => {
                    self.servers = servers;
                    self.listed = true;
                }
                Err(err) => {
                    self.list_again = Instant::now() + policy::ERROR_PAUSE;
                    tracing::warn!(error = %err, retry_in = ?policy::ERROR_PAUSE, "could not list the cluster's servers; deciding on the last listing");
                    if !self.listed {
                        // Without one listing, servers created before a restart are unknown:
                        // creating now could buy them twice. Creation pauses as after a
                        // failed create.
                        self.failures.push(ProvisionFailure {
                            node_type: String::new(),
                            location: String::new(),
                            kind: err.kind(),
                            at: now,
                        });
                    }
                }
            }
        }
        let keep = self.config.unavailable_cooldown.max(policy::ERROR_PAUSE);
        self.failures
            .retain(|f| now.duration_since(f.at).unwrap_or_default() < keep);

        let (snapshot, shapes) = self.snapshot(&view);
        let plan = rgrid_cloud::decide(&self.config, &snapshot, now);
        let counts = metrics::record_decision(&self.config, &snapshot.servers, &plan.waits);
        self.server_counts.send_replace(counts);
        for action in plan.actions {
            self.act(action, now).await;
        }
        let waits: Vec<(Shape, WaitRuns)> = shapes
            .into_iter()
            .zip(plan.waits)
            .map(|(shape, runs)| (shape, runs.into_iter().map(describe).collect()))
            .collect();
        let _ = self.events.send(Event::Waits { waits }).await;
        Some(
            plan.next_wakeup
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or(Duration::MAX),
        )
    }

    /// The policy's input, and the shape of each of its demands.
    fn snapshot(&self, view: &AutoscaleView) -> (Snapshot, Vec<Shape>) {
        // A provisioned node runs Docker tasks only: other capabilities need other nodes.
        let (shapes, demand) = view
            .demand
            .iter()
            .filter(|((_, constraints), _)| constraints.capabilities.iter().all(|c| c == DOCKER))
            .map(|(shape, demand)| (shape.clone(), demand.clone()))
            .unzip();
        let servers = server_views(
            &self.config,
            &view.nodes,
            &self.servers,
            &self.creating,
            &self.deleting,
        );
        let snapshot = Snapshot {
            demand,
            servers,
            failures: self.failures.clone(),
            streams: view.streams.clone(),
        };
        (snapshot, shapes)
    }

    async fn act(&mut self, action: Action, now: SystemTime) {
        metrics::record_action(&action);
        match action {
            Action::Create {
                node_type,
                location,
            } => {
                if let Err(err) = self.create(&node_type, &location, now).await {
                    tracing::error!(%node_type, %location, error = %err, "could not prepare a server");
                    self.failures.push(ProvisionFailure {
                        node_type,
                        location,
                        kind: rgrid_cloud::FailureKind::Other,
                        at: now,
                    });
                }
            }
            Action::Drain {
                server,
                name,
                reason,
            } => {
                let created = self
                    .servers
                    .iter()
                    .find(|s| s.id == server)
                    .map(|s| s.created);
                let age = now
                    .duration_since(created.unwrap_or(now))
                    .unwrap_or_default();
                let deadline = policy::drain_deadline(reason, age);
                tracing::info!(%server, node = %name, %reason, ?deadline, "draining a node");
                let (reply, _) = oneshot::channel();
                let _ = self
                    .events
                    .send(Event::Drain {
                        node: name,
                        deadline,
                        reply,
                    })
                    .await;
            }
            Action::Delete {
                server,
                name,
                reason,
            } => {
                if server == PENDING || !self.deleting.insert(server) {
                    return;
                }
                tracing::info!(%server, node = %name, %reason, "deleting a server");
                // Revoked before the server goes: whoever holds its disk holds no credential.
                if let Err(err) = self
                    .revoked
                    .remove(
                        &name,
                        "its server was deleted by the autoscaler",
                        &self.store,
                        &self.events,
                    )
                    .await
                {
                    tracing::error!(%server, node = %name, error = %err, "cannot revoke the node of a server; not deleting it yet");
                    self.deleting.remove(&server);
                    return;
                }
                let provider = self.provider.clone();
                let done = self.done_tx.clone();
                self.tracker.spawn(async move {
                    let result = provider.delete(server).await;
                    let _ = done.send(Done::Deleted { server, result }).await;
                });
            }
        }
    }

    /// Mints the server's join token, renders its user data and sends the create request off.
    async fn create(
        &mut self,
        node_type: &str,
        location: &str,
        now: SystemTime,
    ) -> Result<(), String> {
        let token = credentials::create_join_token(
            &self.store,
            &self.ca,
            Some(self.config.join_token_ttl),
            true,
        )
        .await
        .map_err(|e| format!("minting a join token: {e}"))?;
        let user_data =
            cloud_init::render(&self.config, node_type, &self.head_addr, &token.encode())
                .map_err(|e| e.to_string())?;
        let request = CreateServer::for_node(&self.config, node_type, location, user_data);
        // The node that joins with this token is called after its server, whatever it says:
        // servers and nodes are matched by name.
        self.store
            .bind_token(&token.id, &request.name)
            .await
            .map_err(|e| format!("binding the join token to the server's name: {e}"))?;
        tracing::info!(name = %request.name, %node_type, %location, "creating a server");
        self.creating.insert(
            request.name.clone(),
            Creating {
                node_type: node_type.to_owned(),
                since: now,
            },
        );
        let provider = self.provider.clone();
        let done = self.done_tx.clone();
        let (node_type, location) = (node_type.to_owned(), location.to_owned());
        self.tracker.spawn(async move {
            let result = provider.create(&request).await;
            let _ = done
                .send(Done::Created {
                    name: request.name,
                    node_type,
                    location,
                    result,
                })
                .await;
        });
        Ok(())
    }

    fn finished(&mut self, done: Done) {
        match done {
            Done::Created {
                name,
                node_type,
                location,
                result,
            } => {
                self.creating.remove(&name);
                match result {
                    Ok(server) => {
                        tracing::info!(server = %server.id, %name, %node_type, %location, "server created; waiting for its node to join");
                        self.servers.retain(|s| s.id != server.id);
                        self.servers.push(server);
                    }
                    Err(err) => {
                        tracing::warn!(%name, %node_type, %location, error = %err, "server creation failed");
                        self.failures.push(ProvisionFailure {
                            node_type,
                            location,
                            kind: err.kind(),
                            at: SystemTime::now(),
                        });
                    }
                }
            }
            Done::Deleted { server, result } => {
                self.deleting.remove(&server);
                match result {
                    Ok(()) => {
                        tracing::info!(%server, "server deleted");
                        self.servers.retain(|s| s.id != server);
                    }
                    Err(err) => {
                        tracing::warn!(%server, error = %err, "server deletion failed; retrying")
                    }
                }
            }
        }
    }
}

/// The policy's view of every server of the cluster and every node: a server is provisioning
/// until a node joins under its name, then takes that node's state; nodes that are not on a
/// server of the cluster are capacity the autoscaler never drains or deletes.
fn server_views(
    config: &AutoscalerConfig,
    nodes: &[NodeSummary],
    servers: &[CloudServer],
    creating: &BTreeMap<String, Creating>,
    deleting: &BTreeSet<ServerId>,
) -> Vec<ServerView> {
    // Where names repeat (a node that rejoined), the live one counts.
    let mut by_name: HashMap<&str, &NodeSummary> = HashMap::new();
    for node in nodes {
        let entry = by_name.entry(node.name.as_str()).or_insert(node);
        if !entry.state.is_alive() && node.state.is_alive() {
            *entry = node;
        }
    }
    let mut views = Vec::new();
    for server in servers {
        if deleting.contains(&server.id) {
            continue;
        }
        let view = match by_name.remove(server.name.as_str()) {
            Some(node) => managed(server, node),
            None => {
                let mut view = unjoined(
                    config,
                    server.id,
                    &server.name,
                    &server.node_type,
                    server.created,
                );
                if server.status == ServerStatus::Stopped {
                    view.state = ServerState::Failed;
                }
                view
            }
        };
        views.push(view);
    }
    for (name, c) in creating {
        if servers.iter().any(|s| &s.name == name) {
            continue;
        }
        views.push(unjoined(config, PENDING, name, &c.node_type, c.since));
    }
    // Nodes the autoscaler did not create (joined by hand) that are alive: capacity only.
    let mut unmanaged: Vec<&NodeSummary> = by_name
        .into_values()
        .filter(|n| n.state.is_alive() && !creating.contains_key(&n.name))
        .collect();
    unmanaged.sort_by(|a, b| a.name.cmp(&b.name));
    for node in unmanaged {
        let mut view = from_node(node, SystemTime::UNIX_EPOCH);
        view.server = None;
        views.push(view);
    }
    views
}

/// A server no node has joined from yet: provisioning, with its type's capacity.
fn unjoined(
    config: &AutoscalerConfig,
    server: ServerId,
    name: &str,
    node_type: &str,
    created: SystemTime,
) -> ServerView {
    let capacity = config
        .node_type(node_type)
        .map(|t| t.capacity())
        .unwrap_or_default();
    ServerView {
        server: Some(server),
        name: name.to_owned(),
        node_type: node_type.to_owned(),
        state: ServerState::Provisioning,
        created,
        labels: BTreeMap::new(),
        free: capacity.clone(),
        capacity,
        running: 0,
        idle_since: None,
        busy_until: None,
        suspect_since: None,
    }
}

/// A server whose node has joined.
fn managed(server: &CloudServer, node: &NodeSummary) -> ServerView {
    let mut view = from_node(node, server.created);
    view.server = Some(server.id);
    view.node_type = server.node_type.clone();
    view
}

fn from_node(node: &NodeSummary, created: SystemTime) -> ServerView {
    let (state, free, running, idle_since) = match node.state {
        cluster::NodeState::Ready => (
            ServerState::Ready,
            node.free.clone(),
            node.running,
            node.idle_since,
        ),
        // Out of touch: its room counts while the blip is short (`suspect_since` tells the
        // policy), and it is not idle enough to drain.
        cluster::NodeState::Suspect => (ServerState::Ready, node.free.clone(), node.running, None),
        cluster::NodeState::Draining => (
            ServerState::Draining,
            Resources::default(),
            node.running,
            None,
        ),
        // Drained and gone, or removed (not listed to the autoscaler): its server can go.
        cluster::NodeState::Left | cluster::NodeState::Removed => {
            (ServerState::Draining, Resources::default(), 0, None)
        }
        cluster::NodeState::Dead => (ServerState::Failed, Resources::default(), 0, None),
    };
    ServerView {
        server: None,
        name: node.name.clone(),
        node_type: String::new(),
        state,
        created,
        labels: node.labels.clone(),
        capacity: node.total.clone(),
        free,
        running,
        idle_since,
        busy_until: node.busy_until,
        suspect_since: node.suspect_since,
    }
}

/// A wait as listings show it; `None` where the scheduler's own reason is the better one.
fn describe((wait, count): (Wait, u32)) -> (Option<String>, u32) {
    match wait {
        Wait::Placing => (None, count),
        other => (Some(other.to_string()), count),
    }
}

mod metrics;
#[cfg(test)]
mod tests;
