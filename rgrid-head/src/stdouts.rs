//! A task's stdout as another task's input (`TASK_ID:stdout`, `TaskRef::stdout`). Once the task
//! has succeeded and an open task needs its stdout, the loop asks for it ([`Stdouts::store`]):
//! the stdout, as the head kept it, is read from the task's durable row and stored as an object,
//! off the loop, which hears the object (or why there is none) as [`Event::StdoutStored`] and
//! releases (or fails) the tasks that wait for it. Objects are content-addressed: storing a
//! stdout again (after a restart, for another dependant) adds nothing.

use std::sync::Arc;

use rgrid_core::object::ObjectRef;
use rgrid_core::{TaskId, TaskState};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::TaskTracker;

use crate::cluster::Event;
use crate::objects::Objects;
use crate::outputs::OutputStore;
use crate::store::Store;

/// Stdouts stored at once, at most (each holds up to `max_output_bytes` in memory).
const AT_ONCE: usize = 4;

/// Stores tasks' stdouts as objects for the loop.
#[derive(Clone)]
pub(crate) struct Stdouts {
    store: Store,
    outputs: OutputStore,
    objects: Arc<Objects>,
    events: mpsc::Sender<Event>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Stdouts {
    pub(crate) fn new(
        store: Store,
        outputs: OutputStore,
        objects: Arc<Objects>,
        events: mpsc::Sender<Event>,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            store,
            outputs,
            objects,
            events,
            permits: Arc::new(Semaphore::new(AT_ONCE)),
            tracker,
        }
    }

    /// Stores the stdout of `task` (durably succeeded) as an object; the loop hears how it went.
    /// The loop asks once per task while tasks wait for it, so what is in flight is bounded by
    /// its open tasks.
    pub(crate) fn store(&self, task: TaskId) {
        let this = self.clone();
        self.tracker.spawn(async move {
            crate::cluster::crash_point("before-stdout-stored");
            let result = match this.permits.acquire().await {
                Ok(_permit) => this.object_of(task).await,
                Err(_) => Err("the head is shutting down".into()),
            };
            if let Err(reason) = &result {
                tracing::warn!(%task, %reason, "cannot store a task's stdout as an object");
            }
            let _ = this
                .events
                .send(Event::StdoutStored {
                    producer: task,
                    result,
                })
                .await;
        });
    }

    async fn object_of(&self, task: TaskId) -> Result<ObjectRef, String> {
        let stored = self
            .store
            .task(task)
            .await
            .map_err(|err| format!("cannot read it from the database: {err}"))?
            .ok_or_else(|| "the database does not hold it".to_owned())?;
        if stored.state != TaskState::Succeeded {
            return Err(format!("it is {}", stored.state));
        }
        let bytes = self
            .outputs
            .load(&stored.stdout)
            .await
            .map_err(|err| format!("cannot read its stdout: {err}"))?;
        self.objects
            .put_bytes(&bytes)
            .await
            .map_err(|err| err.to_string())
    }
}
