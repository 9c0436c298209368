//! Nodes removed from the cluster (`rgrid node remove`, or the autoscaler deleting their
//! server): revoked in the store, and mirrored here so that every connection and every request
//! is checked without a query. A removal is durable before the head refuses the node or drops
//! it from its state, so a restart never lets it back.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use rgrid_core::time::unix_ms;
use rgrid_core::NodeId;
use tokio::sync::{mpsc, oneshot};

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

/// The revoked nodes.
pub(crate) struct Revoked {
    /// Loaded at start from the store; grows only after the store has the revocation.
    nodes: RwLock<HashSet<NodeId>>,
}

impl Revoked {
    /// The revoked nodes the store holds.
    pub(crate) async fn load(store: &Store) -> Result<Arc<Self>, StoreError> {
        let nodes = store.revoked_nodes().await?.into_iter().collect();
        Ok(Arc::new(Self {
            nodes: RwLock::new(nodes),
        }))
    }

    pub(crate) fn contains(&self, node: NodeId) -> bool {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&node)
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
