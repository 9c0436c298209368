//! Tasks that take other tasks' outputs as inputs. Such a task is `Pending` until each of its
//! dependencies has succeeded; then its spec is resolved (every `TaskOutput` input becomes the
//! object that output is) and it is queued. If a dependency ends any other way, the task ends
//! `DependencyFailed` without running, and so, transitively, do its own dependants.
//!
//! The loop keeps, per open task with dependencies, the count of unmet ones and the outputs of
//! the met ones ([`Waiting`]), and per open dependency the tasks that wait for it (reverse
//! edges): a finished task releases or fails its dependants at a cost of their number, with no
//! scan. Both leave with the tasks (only open tasks are held). The edges are stored with the
//! tasks' inserts; a restart reads them back with their dependencies' states
//! ([`Cluster::recover_dependencies`]).

use std::collections::HashMap;

use rgrid_core::object::NamedObject;
use rgrid_core::task::InputSource;
use rgrid_core::{TaskId, TaskSpec, TaskState};

use super::events::Admitted;
use super::tasks::Ending;
use super::{Cluster, Comm};
use crate::store::{Store, StoreError};

/// What one open task with dependencies waits for.
#[derive(Debug, Default)]
struct Waiting {
    /// Dependencies that have not succeeded yet.
    unmet: u32,
    /// The outputs of those that have.
    met: Vec<(TaskId, Vec<NamedObject>)>,
    /// Its spec with every task output resolved to its object, once released: what nodes run.
    resolved: Option<Box<[u8]>>,
}

/// The dependency state of the loop's open tasks.
#[derive(Default)]
pub(super) struct Dependencies {
    waiting: HashMap<TaskId, Waiting>,
    /// The open tasks that wait for each open task.
    dependants: HashMap<TaskId, Vec<TaskId>>,
    /// Tasks that ended with dependants still to settle (a worklist, so that a long chain
    /// does not recurse).
    ended: Vec<TaskId>,
    settling: bool,
    /// Set during a recursive cancel: dependants end `Cancelled`, not `DependencyFailed`.
    cancelling: Option<TaskId>,
}

impl Dependencies {
    /// Holds nothing: no open task waits, none is waited for.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.dependants.is_empty() && self.ended.is_empty()
    }

    /// The resolved spec of a released task with dependencies.
    pub(super) fn resolved_spec(&self, id: TaskId) -> Option<&[u8]> {
        self.waiting.get(&id)?.resolved.as_deref()
    }
}

/// How a new task's dependencies stand at its submission.
pub(super) struct Admission {
    open: Vec<TaskId>,
    met: Vec<(TaskId, Vec<NamedObject>)>,
    failed: Option<String>,
}

fn declares(spec: &TaskSpec, name: &str) -> bool {
    spec.outputs.iter().any(|o| o.name == name)
}

/// Joins the direct dependency to the first failure of a chain.
const AFTER: &str = ", after ";

/// Why a dependant of `dependency` fails: that task and how it ended. Down a chain, each reason
/// names its direct dependency and the chain's first failure (not every task between: a reason
/// stays short however long the chain).
fn ended_reason(dependency: TaskId, state: TaskState, reason: Option<&str>) -> String {
    match (state, reason) {
        (TaskState::DependencyFailed, Some(reason)) => {
            let first = reason.split_once(AFTER).map_or(reason, |(_, first)| first);
            format!("dependency {dependency} ended {state}{AFTER}{first}")
        }
        (_, Some(reason)) => format!("dependency {dependency} ended {state}: {reason}"),
        (_, None) => format!("dependency {dependency} ended {state}"),
    }
}

/// Why a task's dependencies keep it out.
pub(super) enum Refused {
    /// A dependency neither the loop holds nor the server found finished. It may have finished
    /// and left the loop since the server looked (its end is durable by then): the server
    /// looks again before it says so.
    Unknown(TaskId),
    /// The task is wrong; the message says why.
    Invalid(String),
}

impl<C: Comm> Cluster<C> {
    /// Where the dependencies of `admitted` stand; an error (nothing changed) when one is
    /// unknown or does not declare the output asked for.
    pub(super) fn admit_dependencies(
        &self,
        admitted: &Admitted,
        spec: &TaskSpec,
    ) -> Result<Option<Admission>, Refused> {
        if admitted.dependencies.is_empty() {
            return Ok(None);
        }
        let mut admission = Admission {
            open: Vec::new(),
            met: Vec::new(),
            failed: None,
        };
        let mut specs: HashMap<TaskId, TaskSpec> = HashMap::new();
        for dependency in &admitted.dependencies {
            // Finished in the store: also when the loop holds a resubmission of it, whose
            // insert will find it stored.
            if let Some(finished) = admitted.finished.iter().find(|f| f.task == *dependency) {
                if finished.state == TaskState::Succeeded {
                    admission.met.push((*dependency, finished.outputs.clone()));
                } else if admission.failed.is_none() {
                    admission.failed = Some(ended_reason(
                        *dependency,
                        finished.state,
                        finished.reason.as_deref(),
                    ));
                }
                continue;
            }
            let Some(task) = self.tasks.get(dependency) else {
                return Err(Refused::Unknown(*dependency));
            };
            let dep_spec = task.decode_spec().ok_or_else(|| {
                Refused::Invalid(format!("dependency {dependency}: its spec does not decode"))
            })?;
            specs.insert(*dependency, dep_spec);
            match (&task.outcome, task.state) {
                (Some(outcome), TaskState::Succeeded) => {
                    admission.met.push((*dependency, outcome.outputs.clone()))
                }
                (Some(outcome), state) if admission.failed.is_none() => {
                    admission.failed =
                        Some(ended_reason(*dependency, state, outcome.reason.as_deref()));
                }
                (Some(_), _) => {}
                (None, _) => admission.open.push(*dependency),
            }
        }
        for input in &spec.inputs {
            let InputSource::TaskOutput { task, name } = &input.source else {
                continue;
            };
            let declared = match specs.get(task) {
                Some(dep_spec) => declares(dep_spec, name),
                None => admission
                    .met
                    .iter()
                    .any(|(t, outputs)| t == task && outputs.iter().any(|o| o.name == *name)),
            };
            let failed_finished =
                !specs.contains_key(task) && !admission.met.iter().any(|(t, _)| t == task);
            if !declared && !failed_finished {
                return Err(Refused::Invalid(format!(
                    "input {}: task {task} declares no output {name:?}",
                    input.path
                )));
            }
        }
        Ok(Some(admission))
    }

    /// A new `Pending` task in the table: waits for its open dependencies, or is released (all
    /// met) or fails (one failed) at once.
    pub(super) fn wait_for_dependencies(&mut self, id: TaskId, admission: Admission) {
        let Admission { open, met, failed } = admission;
        if let Some(reason) = failed {
            self.finish(id, Ending::without_run(TaskState::DependencyFailed, reason));
            return;
        }
        for (_, outputs) in &met {
            self.holds.take_outputs(id, outputs);
        }
        for dependency in &open {
            self.dependencies
                .dependants
                .entry(*dependency)
                .or_default()
                .push(id);
        }
        let unmet = u32::try_from(open.len()).unwrap_or(u32::MAX);
        self.dependencies.waiting.insert(
            id,
            Waiting {
                unmet,
                met,
                resolved: None,
            },
        );
        if unmet == 0 {
            self.release(id);
        }
    }

    /// Task `id` reached a terminal state: its dependants are released, failed or cancelled.
    pub(super) fn dependency_ended(&mut self, id: TaskId) {
        self.dependencies.waiting.remove(&id);
        if !self.dependencies.dependants.contains_key(&id) {
            return;
        }
        self.dependencies.ended.push(id);
        if self.dependencies.settling {
            return;
        }
        self.dependencies.settling = true;
        while let Some(ended) = self.dependencies.ended.pop() {
            self.settle_dependants(ended);
        }
        self.dependencies.settling = false;
    }

    fn settle_dependants(&mut self, ended: TaskId) {
        let Some(dependants) = self.dependencies.dependants.remove(&ended) else {
            return;
        };
        let Some(task) = self.tasks.get(&ended) else {
            return;
        };
        let state = task.state;
        let outputs = task.outcome.as_ref().map(|o| o.outputs.clone());
        let reason = task.outcome.as_ref().and_then(|o| o.reason.clone());
        for dependant in dependants {
            if self.tasks.get(&dependant).map(|t| t.state) != Some(TaskState::Pending) {
                continue; // ended already (cancelled, or failed by another dependency)
            }
            if state == TaskState::Succeeded {
                let Some(waiting) = self.dependencies.waiting.get_mut(&dependant) else {
                    continue;
                };
                let outputs = outputs.clone().unwrap_or_default();
                self.holds.take_outputs(dependant, &outputs);
                waiting.met.push((ended, outputs));
                waiting.unmet = waiting.unmet.saturating_sub(1);
                if waiting.unmet == 0 {
                    self.release(dependant);
                }
                continue;
            }
            let ending = match self.dependencies.cancelling {
                Some(root) => Ending::without_run(
                    TaskState::Cancelled,
                    format!("cancelled with task {root}, which it depends on (recursive cancel)"),
                ),
                None => Ending::without_run(
                    TaskState::DependencyFailed,
                    ended_reason(ended, state, reason.as_deref()),
                ),
            };
            self.finish(dependant, ending);
        }
    }

    /// Every dependency of `id` succeeded: resolve its spec and queue it.
    fn release(&mut self, id: TaskId) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let Some(mut spec) = task.decode_spec() else {
            self.finish(
                id,
                Ending::without_run(
                    TaskState::DependencyFailed,
                    "its stored spec does not decode".into(),
                ),
            );
            return;
        };
        let Some(waiting) = self.dependencies.waiting.get_mut(&id) else {
            return;
        };
        let mut missing = None;
        for input in &mut spec.inputs {
            let InputSource::TaskOutput { task, name } = &input.source else {
                continue;
            };
            let object = waiting
                .met
                .iter()
                .find(|(t, _)| t == task)
                .and_then(|(_, outputs)| outputs.iter().find(|o| o.name == *name))
                .map(|o| o.object);
            match object {
                Some(object) => input.source = InputSource::Object(object),
                None => {
                    missing = Some(format!(
                        "dependency {task} succeeded without output {name:?}"
                    ));
                    break;
                }
            }
        }
        if let Some(reason) = missing {
            self.finish(id, Ending::without_run(TaskState::DependencyFailed, reason));
            return;
        }
        waiting.met = Vec::new();
        waiting.resolved = Some(crate::store::encode(&spec).into_boxed_slice());
        if self.tasks.get(&id).map(|t| t.state) == Some(TaskState::Pending) {
            self.set_state(id, TaskState::Queued);
            if let Some(task) = self.tasks.get(&id) {
                let queued = self.queued(id, task);
                self.scheduler.enqueue(queued);
            }
            self.dirty = true;
        }
    }

    /// Cancels `id` and, transitively, every open task that depends on it.
    pub(super) fn cancel_with_dependants(&mut self, id: TaskId, ending: Ending) {
        self.dependencies.cancelling = Some(id);
        self.finish(id, ending);
        self.dependencies.cancelling = None;
    }

    /// After a restart: the open tasks with dependencies wait again for the open ones (Pending),
    /// or are released or failed at once; released ones get their resolved spec back.
    pub(crate) async fn recover_dependencies(
        &mut self,
        store: &Store,
        tasks: &[TaskId],
    ) -> Result<(), StoreError> {
        let mut by_task: HashMap<TaskId, Admission> = HashMap::new();
        for edge in store.edges(tasks).await? {
            let admission = by_task.entry(edge.task).or_insert_with(|| Admission {
                open: Vec::new(),
                met: Vec::new(),
                failed: None,
            });
            if self.tasks.contains_key(&edge.dependency) {
                admission.open.push(edge.dependency);
            } else if edge.state == TaskState::Succeeded {
                admission.met.push((edge.dependency, edge.outputs));
            } else if admission.failed.is_none() {
                admission.failed = Some(ended_reason(
                    edge.dependency,
                    edge.state,
                    edge.reason.as_deref(),
                ));
            }
        }
        for (id, admission) in by_task {
            match self.tasks.get(&id).map(|t| t.state) {
                Some(TaskState::Pending) => self.wait_for_dependencies(id, admission),
                // Released before the restart: all met; only its resolved spec is needed.
                Some(_) => {
                    for (_, outputs) in &admission.met {
                        self.holds.take_outputs(id, outputs);
                    }
                    self.dependencies.waiting.insert(
                        id,
                        Waiting {
                            unmet: 0,
                            met: admission.met,
                            resolved: None,
                        },
                    );
                    self.release(id);
                }
                None => {}
            }
        }
        Ok(())
    }
}
