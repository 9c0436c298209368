//! Dependency edges through the store's own write path, on SQLite and PostgreSQL: written with
//! the inserts (not for a resubmission of a known task), read back with each dependency's state
//! and outputs (and each task's end, as a dependency lookup reads it); `pending` is open and
//! `dependency_failed` is not.

use rgrid_core::object::{NamedObject, ObjectRef};
use rgrid_core::{TaskId, TaskState};

use super::{CostKeys, Edge, Finish, NewTask, Output, RetryPolicy, Store, WriteBatch};

fn insert(id: TaskId, state: TaskState) -> NewTask {
    NewTask {
        id,
        spec: vec![0],
        state,
        submitted_at_ms: 0,
        submitted_by: None,
        cost_keys: CostKeys::default(),
    }
}

fn finish(task: TaskId, state: TaskState, outputs: Vec<NamedObject>) -> Finish {
    Finish {
        task,
        state,
        finished_at_ms: 1,
        exit_code: None,
        reason: Some("why".into()),
        stdout: Output::Empty,
        stderr: Output::Empty,
        attempt: 0,
        node: None,
        node_losses: 0,
        failures: 0,
        outputs,
    }
}

#[tokio::test]
async fn edges_round_trip_on_sqlite() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    edges_round_trip(&format!(
        "sqlite://{}",
        dir.path().join("head.db").display()
    ))
    .await;
}

#[tokio::test]
async fn edges_round_trip_on_postgres() {
    if let Some(url) = super::test_postgres_database().await {
        edges_round_trip(&url).await;
    }
}

async fn edges_round_trip(url: &str) {
    let tracker = tokio_util::task::TaskTracker::new();
    let store = Store::open(url, RetryPolicy::default(), &tracker)
        .await
        .expect("a store");
    let (done, open, waiting, failed) =
        (TaskId::new(), TaskId::new(), TaskId::new(), TaskId::new());
    let output = NamedObject {
        name: "o".into(),
        object: ObjectRef::of(b"x"),
    };
    let mut batch = WriteBatch::default();
    batch.inserts.push(insert(done, TaskState::Queued));
    batch.inserts.push(insert(open, TaskState::Queued));
    batch.inserts.push(insert(waiting, TaskState::Pending));
    batch.inserts.push(insert(failed, TaskState::Pending));
    for (task, dependency) in [(waiting, done), (waiting, open), (failed, open)] {
        batch.edges.push(Edge { task, dependency });
    }
    batch
        .finishes
        .push(finish(done, TaskState::Succeeded, vec![output.clone()]));
    batch
        .finishes
        .push(finish(failed, TaskState::DependencyFailed, Vec::new()));
    store.commit(batch).await.expect("sent").expect("committed");

    let mut edges = store.edges(&[waiting]).await.expect("edges");
    edges.sort_by_key(|e| e.dependency != done);
    assert_eq!(edges.len(), 2);
    assert_eq!(edges[0].dependency, done);
    assert_eq!(edges[0].state, TaskState::Succeeded);
    assert_eq!(edges[0].outputs, vec![output.clone()]);
    assert_eq!(edges[1].dependency, open);
    assert_eq!(edges[1].state, TaskState::Queued);
    let stored = store.task(done).await.expect("read").expect("stored");
    assert_eq!(stored.outputs, vec![output.clone()]);
    // What a dependency lookup reads: how each stands, nothing for a task the store lacks.
    let mut ends = store
        .ends(&[done, failed, TaskId::new()])
        .await
        .expect("ends");
    ends.sort_by_key(|(task, _)| *task != done);
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert_eq!(ends[0].0, done);
    assert_eq!(ends[0].1.state, TaskState::Succeeded);
    assert_eq!(ends[0].1.outputs, vec![output]);
    assert_eq!(ends[1].0, failed);
    assert_eq!(ends[1].1.state, TaskState::DependencyFailed);
    assert_eq!(ends[1].1.reason.as_deref(), Some("why"));

    let open_ids: Vec<TaskId> = store
        .recover_page(None, 100)
        .await
        .expect("recovery")
        .iter()
        .map(|t| t.id)
        .collect();
    assert!(open_ids.contains(&waiting), "pending is open");
    assert!(!open_ids.contains(&failed), "dependency_failed is finished");

    // A resubmission of a known task writes none of its edges.
    let mut again = WriteBatch::default();
    again.inserts.push(insert(done, TaskState::Pending));
    again.edges.push(Edge {
        task: done,
        dependency: open,
    });
    let committed = store.commit(again).await.expect("sent").expect("committed");
    assert!(committed.known.contains(&done));
    assert!(store.edges(&[done]).await.expect("edges").is_empty());
}
