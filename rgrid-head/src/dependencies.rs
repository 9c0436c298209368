//! The server's part of task dependencies: before a submission reaches the loop, its tasks'
//! dependencies are looked up in the store, so that the loop can settle a task that depends on
//! one that finished long ago (the loop holds only open tasks), also one resubmitted in the same
//! submission (whose insert will find it stored), and one whose outputs retention has deleted
//! since (refused at submit, not failed at staging). The loop does the rest (see
//! `cluster::dependencies`).

use std::collections::{HashMap, HashSet};

use rgrid_core::TaskId;

use crate::cluster::{Admitted, FinishedDependency};
use crate::objects::Objects;
use crate::store::{Store, StoreError};

/// The dependencies of one submission the store has as finished, kept across its rounds of
/// admission (a finished task stays finished, so a round looks up only what no earlier round
/// found finished).
#[derive(Default)]
pub(crate) struct FinishedLookup {
    found: HashMap<TaskId, FinishedDependency>,
}

impl FinishedLookup {
    /// Fills in [`Admitted::finished`]. One query for the whole submission; none when no task
    /// has dependencies, or when earlier rounds found them all.
    pub(crate) async fn fill(
        &mut self,
        tasks: &mut [Admitted],
        store: &Store,
        objects: &Objects,
    ) -> Result<(), StoreError> {
        let wanted: Vec<TaskId> = tasks
            .iter()
            .flat_map(|t| t.dependencies.iter().copied())
            .filter(|dependency| !self.found.contains_key(dependency))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !wanted.is_empty() {
            let found = store.ends(&wanted).await?;
            // The window this lookup leaves before the loop sees the submission, held open by
            // tests (`FAILPOINTS=after-dependency-lookup=return(MS)`, failpoints builds only).
            if let Some(ms) = hold_after_lookup() {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let finished = found
                .into_iter()
                .filter(|(_, stored)| stored.state.is_terminal())
                .map(|(task, stored)| {
                    let (outputs, deleted): (Vec<_>, Vec<_>) = stored
                        .outputs
                        .into_iter()
                        .partition(|output| objects.is_stored(&output.object));
                    let finished = FinishedDependency {
                        task,
                        state: stored.state,
                        reason: stored.reason,
                        outputs,
                        deleted: deleted.into_iter().map(|output| output.name).collect(),
                    };
                    (task, finished)
                });
            self.found.extend(finished);
        }
        // By id: a task may have a thousand dependencies, and a submission many such tasks.
        for task in tasks.iter_mut() {
            task.finished = task
                .dependencies
                .iter()
                .filter_map(|dependency| self.found.get(dependency))
                .cloned()
                .collect();
        }
        Ok(())
    }
}

fn hold_after_lookup() -> Option<u64> {
    fail::fail_point!("after-dependency-lookup", |ms| ms
        .and_then(|ms| ms.parse().ok()));
    None
}
