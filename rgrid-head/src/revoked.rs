//! Revoked credentials: nodes removed from the cluster (`rgrid node remove`, or the autoscaler
//! deleting their server) and certificates revoked by serial (`rgrid-head client revoke`, a
//! node's renewed certificates). Revoked in the store, and mirrored here so that every
//! connection and every request is checked without a query. A removal is durable before the
//! head refuses the node or drops it from its state, so a restart never lets it back. The
//! mirror is read again from the store every [`REFRESH`], so that a revocation written by the
//! `rgrid-head` command line (another process) takes effect on a running head.
//!
//! The same task prunes the store every [`PRUNE_EVERY`]: certificates, and revocations by
//! serial, expired for longer than [`PRUNE_AFTER`] (the TLS handshake refuses an expired
//! certificate, revoked or not); revoked nodes are kept, since a node id never expires.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rgrid_core::time::unix_ms;
use rgrid_core::NodeId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cluster::Event;
use crate::store::{Store, StoreError};

/// Why a removal failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the head is shutting down")]
    Gone,
}

/// How often the mirror is read again from the store.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// How often expired certificates are pruned (the first time at start).
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long an expired certificate is kept (`rgrid-head client list` shows it as expired).
pub(crate) const PRUNE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The revoked nodes and certificate serials.
pub(crate) struct Revoked {
    /// Loaded at start from the store; grows only after the store has the revocation.
    nodes: RwLock<HashSet<NodeId>>,
    /// Serials (hex) of revoked certificates that have not expired (an expired one is refused
    /// by the TLS handshake anyway, so the set stays as small as the unexpired revocations).
    serials: RwLock<HashSet<String>>,
    /// Bumped by every addition, so that a reload that raced one keeps it.
    generation: AtomicU64,
}

impl Revoked {
    /// The revoked nodes and serials the store holds.
    pub(crate) async fn load(store: &Store) -> Result<Arc<Self>, StoreError> {
        let revoked = Arc::new(Self {
            nodes: RwLock::default(),
            serials: RwLock::default(),
            generation: AtomicU64::new(0),
        });
        revoked.reload(store).await?;
        Ok(revoked)
    }

    async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let before = self.generation.load(Ordering::SeqCst);
        let nodes: HashSet<NodeId> = store.revoked_nodes().await?.into_iter().collect();
        let serials: HashSet<String> = store
            .revoked_serials(unix_ms())
            .await?
            .into_iter()
            .collect();
        let mut held_nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        let mut held_serials = self.serials.write().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::SeqCst) == before {
            *held_nodes = nodes;
            *held_serials = serials;
        } else {
            // Something was added while the store was read: keep it (the next reload has it).
            held_nodes.extend(nodes);
            held_serials.extend(serials);
        }
        Ok(())
    }

    /// Reads the revocations again every [`REFRESH`], and prunes expired certificates every
    /// [`PRUNE_EVERY`], until `shutdown`.
    pub(crate) async fn refresh(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.reload(&store).await {
                tracing::warn!(error = %err, "cannot read the revocations again; keeping the last ones");
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                prune(&store).await;
            }
        }
    }

    pub(crate) fn contains(&self, node: NodeId) -> bool {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&node)
    }

    /// Whether the certificate with this serial (hex) is revoked.
    pub(crate) fn contains_serial(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(serial)
    }

    /// Mirrors serials the store has just revoked.
    pub(crate) fn add_serials(&self, serials: impl IntoIterator<Item = String>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.serials
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(serials);
    }

    /// Removes every node named `node` (a name or an id): revoked durably, then refused at
    /// every connection and request, then dropped from the cluster's state (what they ran is
    /// requeued; they leave the listings). Returns the removed ids; none when no node has that
    /// name or id.
    pub(crate) async fn remove(
        &self,
        node: &str,
        reason: &str,
        store: &Store,
        events: &mpsc::Sender<Event>,
    ) -> Result<Vec<NodeId>, RemoveError> {
        let ids: Vec<NodeId> = store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.name == node || n.id.to_string() == node)
            .map(|n| n.id)
            .collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        store.revoke_nodes(&ids, unix_ms(), reason).await?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(ids.iter().copied());
        let (reply, done) = oneshot::channel();
        events
            .send(Event::RemoveNodes {
                nodes: ids.clone(),
                reply,
            })
            .await
            .map_err(|_| RemoveError::Gone)?;
        done.await.map_err(|_| RemoveError::Gone)?;
        for id in &ids {
            tracing::info!(node = %id, %reason, "node removed and revoked");
        }
        Ok(ids)
    }
}

/// Deletes what expired more than [`PRUNE_AFTER`] ago; a failure is logged (the next prune
/// tries again).
async fn prune(store: &Store) {
    let before_ms = unix_ms().saturating_sub(PRUNE_AFTER.as_millis() as u64);
    match store.prune_certificates(before_ms).await {
        Ok(pruned) if pruned.certificates == 0 && pruned.revocations == 0 => {}
        Ok(pruned) => tracing::info!(
            certificates = pruned.certificates,
            revocations = pruned.revocations,
            "pruned expired certificates"
        ),
        Err(err) => tracing::warn!(error = %err, "cannot prune expired certificates"),
    }
}
