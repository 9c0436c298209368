//! Tasks that take other tasks' outputs (or stdout) as inputs. Such a task is `Pending` until
//! each of its dependencies has succeeded (and, for a stdout it takes, until that stdout is
//! stored as an object); then its spec is resolved (every `TaskOutput` and `TaskStdout` input
//! becomes the object it is) and it is queued. If a dependency ends any other way, or its stdout
//! cannot be stored, the task ends `DependencyFailed` without running, and so, transitively, do
//! its own dependants.
//!
//! The loop keeps, per open task with dependencies, the count of unmet ones and the outputs of
//! the met ones ([`Waiting`]), per open dependency the tasks that wait for it (reverse edges),
//! and per stdout being stored the tasks that wait for it: a finished task releases or fails its
//! dependants at a cost of their number, with no scan. All of it leaves with the tasks (only
//! open tasks are held). The edges are stored with the tasks' inserts; a restart reads them back
//! with their dependencies' states ([`Cluster::recover_dependencies`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use rgrid_core::object::{NamedObject, ObjectRef};
use rgrid_core::task::InputSource;
use rgrid_core::{TaskId, TaskSpec, TaskState};

use super::effects::Effect;
use super::events::{Admitted, FinishedDependency};
use super::tasks::Ending;
use super::{Cluster, Comm};
use crate::store::{Store, StoreError, StoredEdge};

/// What one open task with dependencies waits for.
#[derive(Debug, Default)]
struct Waiting {
    /// Dependencies that have not succeeded yet, and stdouts it takes not stored yet.
    unmet: u32,
    /// The outputs of those that have.
    met: Vec<(TaskId, Vec<NamedObject>)>,
    /// The tasks whose stdout it takes, with the object once stored.
    stdouts: Vec<(TaskId, Option<ObjectRef>)>,
    /// Its spec with every task output resolved to its object, once released: what nodes run.
    resolved: Option<Box<[u8]>>,
}

/// The dependency state of the loop's open tasks.
#[derive(Default)]
pub(super) struct Dependencies {
    waiting: HashMap<TaskId, Waiting>,
    /// The open tasks that wait for each open task.
    dependants: HashMap<TaskId, Vec<TaskId>>,
    /// The open tasks that wait for each stdout being stored as an object.
    stdout_waiters: HashMap<TaskId, Vec<TaskId>>,
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
        self.waiting.is_empty()
            && self.dependants.is_empty()
            && self.stdout_waiters.is_empty()
            && self.ended.is_empty()
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
    /// The tasks whose stdout it takes.
    stdouts: Vec<TaskId>,
}

impl Admission {
    fn new(stdouts: Vec<TaskId>) -> Self {
        Self {
            open: Vec::new(),
            met: Vec::new(),
            failed: None,
            stdouts,
        }
    }
}

/// The outputs of met dependencies, by task.
fn met_by_task(met: &[(TaskId, Vec<NamedObject>)]) -> HashMap<TaskId, &[NamedObject]> {
    met.iter()
        .map(|(task, outputs)| (*task, outputs.as_slice()))
        .collect()
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
        let mut admission = Admission::new(spec.stdout_dependencies());
        let mut specs: HashMap<TaskId, TaskSpec> = HashMap::new();
        // By id, as every lookup below: a task may have a thousand dependencies.
        let finished: HashMap<TaskId, &FinishedDependency> =
            admitted.finished.iter().map(|f| (f.task, f)).collect();
        for dependency in &admitted.dependencies {
            // Finished in the store: also when the loop holds a resubmission of it, whose
            // insert will find it stored.
            if let Some(finished) = finished.get(dependency) {
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
        let met = met_by_task(&admission.met);
        for input in &spec.inputs {
            let InputSource::TaskOutput { task, name } = &input.source else {
                continue;
            };
            let declared = match specs.get(task) {
                Some(dep_spec) => declares(dep_spec, name),
                None => met
                    .get(task)
                    .is_some_and(|outputs| outputs.iter().any(|o| o.name == *name)),
            };
            let failed_finished = !specs.contains_key(task) && !met.contains_key(task);
            if finished
                .get(task)
                .is_some_and(|f| f.deleted.iter().any(|deleted| deleted == name))
            {
                return Err(Refused::Invalid(format!(
                    "input {}: output {name:?} of task {task} is no longer stored (retention deleted it, object_retention after its last use); run that task again under a new id, or pin outputs while later tasks need them",
                    input.path
                )));
            }
            if !declared && !failed_finished {
                return Err(Refused::Invalid(format!(
                    "input {}: task {task} declares no output {name:?}",
                    input.path
                )));
            }
        }
        Ok(Some(admission))
    }

    /// A `Pending` task in the table (new, or read back): waits for its open dependencies, or
    /// is released (all met) or fails (one failed) at once. A task still placed after a restart
    /// (all met) gets its resolved spec back, without being queued.
    pub(super) fn wait_for_dependencies(&mut self, id: TaskId, admission: Admission) {
        let Admission {
            open,
            met,
            failed,
            stdouts,
        } = admission;
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
        // The stdouts of the dependencies met already are stored now.
        let stored_now: Vec<TaskId> = stdouts
            .iter()
            .copied()
            .filter(|producer| !open.contains(producer))
            .collect();
        let unmet = u32::try_from(open.len() + stored_now.len()).unwrap_or(u32::MAX);
        self.dependencies.waiting.insert(
            id,
            Waiting {
                unmet,
                met,
                stdouts: stdouts
                    .into_iter()
                    .map(|producer| (producer, None))
                    .collect(),
                resolved: None,
            },
        );
        for producer in stored_now {
            self.wait_for_stdout(producer, id);
        }
        if unmet == 0 {
            self.release(id);
        }
    }

    /// `dependant` waits for the stdout of `producer` (succeeded) as an object: the first
    /// to wait has it stored once the success is durable.
    fn wait_for_stdout(&mut self, producer: TaskId, dependant: TaskId) {
        match self.dependencies.stdout_waiters.entry(producer) {
            Entry::Occupied(waiters) => waiters.into_mut().push(dependant),
            Entry::Vacant(waiters) => {
                waiters.insert(vec![dependant]);
                let seq = self.tasks.get(&producer).map_or(0, |t| t.write_seq);
                self.after(seq, Effect::StoreStdout(producer));
            }
        }
    }

    /// A task placed before a restart goes back to the queue before the stdouts it takes are
    /// stored again (its resolved spec waits for them): it waits `Pending` instead, asking
    /// again for those no store is in flight for. False when it has what it needs.
    pub(super) fn wait_for_stdouts_again(&mut self, id: TaskId) -> bool {
        let Some(waiting) = self.dependencies.waiting.get(&id) else {
            return false;
        };
        if waiting.resolved.is_some() || waiting.unmet == 0 {
            return false;
        }
        let missing: Vec<TaskId> = waiting
            .stdouts
            .iter()
            .filter(|(_, object)| object.is_none())
            .map(|(producer, _)| *producer)
            .collect();
        for producer in missing {
            let in_flight = self
                .dependencies
                .stdout_waiters
                .get(&producer)
                .is_some_and(|waiters| waiters.contains(&id));
            if !in_flight {
                self.wait_for_stdout(producer, id);
            }
        }
        self.set_state(id, TaskState::Pending);
        true
    }

    /// The stdout of `producer` is stored (or cannot be): the tasks that wait for it go on.
    pub(super) fn stdout_stored(&mut self, producer: TaskId, result: Result<ObjectRef, String>) {
        let Some(waiters) = self.dependencies.stdout_waiters.remove(&producer) else {
            return;
        };
        for dependant in waiters {
            let object = match &result {
                Ok(object) => *object,
                Err(reason) => {
                    if self.tasks.get(&dependant).map(|t| t.state) == Some(TaskState::Pending) {
                        self.finish(
                            dependant,
                            Ending::without_run(
                                TaskState::DependencyFailed,
                                format!("dependency {producer}: its stdout was not stored as an object: {reason}"),
                            ),
                        );
                    }
                    // A task still placed (after a restart) runs with what its node staged;
                    // should it run again, it asks again (`wait_for_stdouts_again`).
                    continue;
                }
            };
            // Gone (ended, or dropped as a resubmission) since it asked.
            let Some(waiting) = self.dependencies.waiting.get_mut(&dependant) else {
                continue;
            };
            for (_, stored) in waiting.stdouts.iter_mut().filter(|(t, _)| *t == producer) {
                *stored = Some(object);
            }
            waiting.unmet = waiting.unmet.saturating_sub(1);
            let released = waiting.unmet == 0;
            self.holds.take(dependant, vec![object]);
            if released {
                self.release(dependant);
            }
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
                if waiting.stdouts.iter().any(|(t, _)| *t == ended) {
                    // Met once its stdout is stored.
                    self.wait_for_stdout(ended, dependant);
                    continue;
                }
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
        let met = met_by_task(&waiting.met);
        for input in &mut spec.inputs {
            let object = match &input.source {
                InputSource::Object(_) => continue,
                InputSource::TaskOutput { task, name } => met
                    .get(task)
                    .and_then(|outputs| outputs.iter().find(|o| o.name == *name))
                    .map(|o| o.object),
                InputSource::TaskStdout { task } => waiting
                    .stdouts
                    .iter()
                    .find(|(t, _)| t == task)
                    .and_then(|(_, object)| *object),
            };
            match object {
                Some(object) => input.source = InputSource::Object(object),
                None => {
                    missing = Some(match &input.source {
                        InputSource::TaskOutput { task, name } => {
                            format!("dependency {task} succeeded without output {name:?}")
                        }
                        source => format!("{source} was not stored as an object"),
                    });
                    break;
                }
            }
        }
        if let Some(reason) = missing {
            self.finish(id, Ending::without_run(TaskState::DependencyFailed, reason));
            return;
        }
        waiting.met = Vec::new();
        waiting.stdouts = Vec::new();
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
        let edges = store.edges(tasks).await?;
        self.settle_recovered(edges);
        Ok(())
    }

    /// The open tasks' edges as the store has them, with their dependencies' states.
    pub(super) fn settle_recovered(&mut self, edges: Vec<StoredEdge>) {
        let mut by_task: HashMap<TaskId, Admission> = HashMap::new();
        for edge in edges {
            let admission = by_task.entry(edge.task).or_insert_with(|| {
                let stdouts = self
                    .tasks
                    .get(&edge.task)
                    .and_then(|task| task.decode_spec())
                    .map(|spec| spec.stdout_dependencies())
                    .unwrap_or_default();
                Admission::new(stdouts)
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
            // Pending: waits again. Placed before the restart: all met, so this only gives it
            // its resolved spec back (once the stdouts it takes are stored again), should it
            // run again.
            if self.tasks.contains_key(&id) {
                self.wait_for_dependencies(id, admission);
            }
        }
    }
}
