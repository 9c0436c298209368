//! The server's part of task dependencies: before a submission reaches the loop, its tasks'
//! dependencies are looked up in the store, so that the loop can settle a task that depends on
//! one that finished long ago (the loop holds only open tasks), also one resubmitted in the same
//! submission (whose insert will find it stored). The loop does the rest (see
//! `cluster::dependencies`).

use std::collections::HashSet;

use rgrid_core::TaskId;

use crate::cluster::{Admitted, FinishedDependency};
use crate::store::{Store, StoreError};

/// Fills in [`Admitted::finished`]: the dependencies the store has as finished. One query for
/// the whole submission; none when no task has dependencies.
pub(crate) async fn finished_dependencies(
    tasks: &mut [Admitted],
    store: &Store,
) -> Result<(), StoreError> {
    let wanted: Vec<TaskId> = tasks
        .iter()
        .flat_map(|t| t.dependencies.iter().copied())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let finished: Vec<FinishedDependency> = store
        .tasks(&wanted)
        .await?
        .into_iter()
        .filter(|(_, stored)| stored.state.is_terminal())
        .map(|(task, stored)| FinishedDependency {
            task,
            state: stored.state,
            reason: stored.reason,
            outputs: stored.outputs,
        })
        .collect();
    for task in tasks.iter_mut() {
        task.finished = finished
            .iter()
            .filter(|f| task.dependencies.contains(&f.task))
            .cloned()
            .collect();
    }
    Ok(())
}
