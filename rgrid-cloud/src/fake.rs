//! [`FakeProvider`]: an in-memory [`Provider`] for the head's tests and for examples. It keeps
//! servers in a map, can be told that a type is sold out somewhere, that the quota is some
//! number of servers, or to fail the next creates, and counts the calls it received.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::provider::{
    BoxFuture, CloudServer, CreateServer, FailureKind, Provider, ProviderError, ServerId,
    ServerStatus,
};

/// A failure the fake was told to produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    #[error(
        "server type {node_type} is sold out in {location} (fake); try another location or type"
    )]
    Unavailable { node_type: String, location: String },
    #[error("server quota of {limit} reached (fake)")]
    Quota { limit: usize },
    #[error("server name {0:?} is already used (fake)")]
    NameTaken(String),
    #[error("{0}")]
    Injected(String),
}

impl FakeError {
    /// How the policy should react.
    pub fn kind(&self) -> FailureKind {
        match self {
            FakeError::Unavailable { .. } => FailureKind::Unavailable,
            FakeError::Quota { .. } => FailureKind::Quota,
            FakeError::NameTaken(_) | FakeError::Injected(_) => FailureKind::Other,
        }
    }
}

impl From<FakeError> for ProviderError {
    fn from(err: FakeError) -> Self {
        ProviderError::Other {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

/// Calls a [`FakeProvider`] received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeCalls {
    pub creates: u64,
    pub deletes: u64,
    pub lists: u64,
}

#[derive(Default)]
struct State {
    servers: BTreeMap<ServerId, CloudServer>,
    sold_out: BTreeSet<(String, String)>,
    quota: Option<usize>,
    fail_next: VecDeque<FakeError>,
    now: Option<SystemTime>,
    calls: FakeCalls,
}

/// An in-memory provider. Servers are `Running` as soon as they are created.
#[derive(Default)]
pub struct FakeProvider {
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl FakeProvider {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes creates of `node_type` in `location` fail as sold out (`resource_unavailable`).
    pub fn set_sold_out(&self, node_type: &str, location: &str, sold_out: bool) {
        let key = (node_type.to_owned(), location.to_owned());
        let mut s = self.lock();
        if sold_out {
            s.sold_out.insert(key);
        } else {
            s.sold_out.remove(&key);
        }
    }

    /// Limits the number of servers; creates beyond it fail with a quota error.
    pub fn set_quota(&self, limit: Option<usize>) {
        self.lock().quota = limit;
    }

    /// Makes the next create fail with `error` (queued: call several times for several).
    pub fn fail_next_create(&self, error: FakeError) {
        self.lock().fail_next.push_back(error);
    }

    /// Fixes the creation time stamped on new servers (default: the real clock).
    pub fn set_now(&self, now: Option<SystemTime>) {
        self.lock().now = now;
    }

    /// Every server, in id order.
    pub fn servers(&self) -> Vec<CloudServer> {
        self.lock().servers.values().cloned().collect()
    }

    /// Calls received so far.
    pub fn calls(&self) -> FakeCalls {
        self.lock().calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in this file; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create_now(&self, req: &CreateServer) -> Result<CloudServer, FakeError> {
        let mut s = self.lock();
        s.calls.creates += 1;
        if let Some(err) = s.fail_next.pop_front() {
            return Err(err);
        }
        if s.sold_out
            .contains(&(req.node_type.clone(), req.location.clone()))
        {
            return Err(FakeError::Unavailable {
                node_type: req.node_type.clone(),
                location: req.location.clone(),
            });
        }
        if let Some(limit) = s.quota {
            if s.servers.len() >= limit {
                return Err(FakeError::Quota { limit });
            }
        }
        if s.servers.values().any(|x| x.name == req.name) {
            return Err(FakeError::NameTaken(req.name.clone()));
        }
        let id = ServerId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let server = CloudServer {
            id,
            name: req.name.clone(),
            node_type: req.node_type.clone(),
            location: Some(req.location.clone()),
            labels: req.labels.clone(),
            created: s.now.unwrap_or_else(SystemTime::now),
            status: ServerStatus::Running,
            public_ipv4: None,
        };
        s.servers.insert(id, server.clone());
        Ok(server)
    }
}

impl Provider for FakeProvider {
    fn create<'a>(
        &'a self,
        request: &'a CreateServer,
    ) -> BoxFuture<'a, Result<CloudServer, ProviderError>> {
        Box::pin(async move { self.create_now(request).map_err(ProviderError::from) })
    }

    fn delete(&self, id: ServerId) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.calls.deletes += 1;
            s.servers.remove(&id);
            Ok(())
        })
    }

    fn list<'a>(
        &'a self,
        label_selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudServer>, ProviderError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.calls.lists += 1;
            Ok(s.servers
                .values()
                .filter(|x| matches_selector(&x.labels, label_selector))
                .cloned()
                .collect())
        })
    }
}

/// Whether `labels` satisfy a Hetzner-style label selector: comma-separated `k=v`, `k==v`,
/// `k!=v`, `k` (present) and `!k` (absent) terms, all of which must hold.
pub fn matches_selector(labels: &BTreeMap<String, String>, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).map(String::as_str) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                let v = v.trim_start_matches('=');
                labels.get(k.trim()).map(String::as_str) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                !labels.contains_key(k.trim())
            } else {
                labels.contains_key(term)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, t: &str, loc: &str) -> CreateServer {
        CreateServer {
            name: name.into(),
            node_type: t.into(),
            location: loc.into(),
            labels: crate::provider::cluster_labels("c1", t),
            user_data: String::new(),
        }
    }

    #[tokio::test]
    async fn creates_lists_deletes_and_fails_on_request() {
        let fake = FakeProvider::new();
        let a = fake
            .create(&req("a", "cx23", "fsn1"))
            .await
            .expect("the fake creates");
        fake.create(&req("b", "cx33", "fsn1"))
            .await
            .expect("the fake creates");
        assert_eq!(
            fake.list("rgrid-cluster=c1")
                .await
                .expect("the fake lists")
                .len(),
            2
        );
        assert_eq!(
            fake.list("rgrid-cluster=c1,rgrid-node-type=cx33")
                .await
                .expect("the fake lists")
                .len(),
            1
        );
        assert!(fake
            .list("rgrid-cluster=other")
            .await
            .expect("the fake lists")
            .is_empty());

        fake.set_sold_out("cx23", "fsn1", true);
        let err = fake.create(&req("c", "cx23", "fsn1")).await.unwrap_err();
        assert_eq!(err.kind(), FailureKind::Unavailable);
        fake.create(&req("c", "cx23", "nbg1"))
            .await
            .expect("the fake creates");

        fake.set_quota(Some(3));
        let err = fake.create(&req("d", "cx23", "nbg1")).await.unwrap_err();
        assert_eq!(err.kind(), FailureKind::Quota);

        fake.delete(a.id).await.expect("the fake deletes");
        fake.delete(a.id).await.expect("the fake deletes");
        assert_eq!(fake.servers().len(), 2);
        assert_eq!(
            fake.calls(),
            FakeCalls {
                creates: 5,
                deletes: 2,
                lists: 3
            }
        );
    }

    #[test]
    fn selectors() {
        let labels = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        assert!(matches_selector(&labels, "a=1"));
        assert!(matches_selector(&labels, "a==1"));
        assert!(matches_selector(&labels, "a"));
        assert!(matches_selector(&labels, "!b"));
        assert!(matches_selector(&labels, "a!=2"));
        assert!(!matches_selector(&labels, "a=2"));
        assert!(!matches_selector(&labels, "a,b"));
    }
}
