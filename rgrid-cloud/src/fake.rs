//! [`FakeProvider`]: an in-memory [`Provider`] for the head's tests and for examples. It keeps
//! servers in a map, can be told that a type is sold out somewhere, that the quota is some
//! number of servers, or to fail the next creates, and counts the calls it received; and the
//! label-selector language it and the fake Hetzner API of the tests evaluate
//! ([`parse_selector`]).

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

/// One expression of a Hetzner label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    /// `k=v` or `k==v`.
    Equals(String, String),
    /// `k!=v`: the value differs, or the key is absent.
    NotEquals(String, String),
    /// `k`.
    Present(String),
    /// `!k`.
    Absent(String),
    /// `k in (v1,v2)`.
    In(String, Vec<String>),
    /// `k notin (v1,v2)`: the value is none of them, or the key is absent.
    NotIn(String, Vec<String>),
}

impl Term {
    /// Whether `labels` satisfy it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str);
        match self {
            Term::Equals(k, v) => get(k) == Some(v),
            Term::NotEquals(k, v) => get(k) != Some(v),
            Term::Present(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
            Term::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Term::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        }
    }
}

/// Parses a label selector as Hetzner documents it: comma-separated expressions that must
/// all hold — `k=v` / `k==v`, `k!=v`, `k`, `!k`, `k in (v1,v2,v3)`, `k notin (v1,v2,v3)` (the
/// commas inside parentheses belong to the set). The error names the bad expression.
pub fn parse_selector(selector: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut pieces = Vec::new();
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced ')'")?,
            ',' if depth == 0 => {
                pieces.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    pieces.push(&selector[start..]);
    for piece in pieces.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        terms.push(parse_term(piece).ok_or_else(|| format!("invalid expression {piece:?}"))?);
    }
    Ok(terms)
}

fn parse_term(term: &str) -> Option<Term> {
    let key = |k: &str| {
        let k = k.trim();
        (!k.is_empty() && !k.contains([' ', '(', ')', '=', '!'])).then(|| k.to_owned())
    };
    let set = |rest: &str| -> Option<Vec<String>> {
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Some(Term::NotIn(key(k)?, set(rest)?));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Some(Term::In(key(k)?, set(rest)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Some(Term::NotEquals(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Some(Term::Equals(key(k)?, v.trim().to_owned()));
    }
    if let Some(k) = term.strip_prefix('!') {
        return Some(Term::Absent(key(k)?));
    }
    Some(Term::Present(key(term)?))
}

/// Whether `labels` satisfy `selector` ([`parse_selector`]); an invalid one matches nothing.
pub fn matches_selector(labels: &BTreeMap<String, String>, selector: &str) -> bool {
    parse_selector(selector).is_ok_and(|terms| terms.iter().all(|t| t.matches(labels)))
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
        // Sets, with the commas inside parentheses.
        assert!(matches_selector(&labels, "a in (0,1,2)"));
        assert!(matches_selector(&labels, "a in (1),!b"));
        assert!(!matches_selector(&labels, "a in (0,2)"));
        assert!(matches_selector(&labels, "a notin (0,2)"));
        assert!(!matches_selector(&labels, "a notin (1, 2)"));
        assert!(matches_selector(&labels, "b notin (1)"));
        assert!(matches_selector(&labels, "b!=1"));
        assert!(!matches_selector(&labels, "!a"));
        // Nonsense is an error, and matches nothing.
        for bad in ["a in 1", "a in (1", "a)", "=1", "a b"] {
            assert!(parse_selector(bad).is_err(), "{bad}");
            assert!(!matches_selector(&labels, bad), "{bad}");
        }
        assert_eq!(
            parse_selector("env in (testing,staging),type!=database"),
            Ok(vec![
                Term::In("env".into(), vec!["testing".into(), "staging".into()]),
                Term::NotEquals("type".into(), "database".into())
            ])
        );
    }
}
