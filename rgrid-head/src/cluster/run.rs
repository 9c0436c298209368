//! The async loop around the cluster's state: reads its three channels (submissions and results
//! only while the unwritten rows stay under [`super::MAX_PENDING_ROWS`]), ticks for liveness,
//! and keeps one commit in flight; [`Io`] is its [`Comm`].

use std::sync::Arc;
use std::time::Duration;

use rgrid_core::protocol::HeadMessage;
use rgrid_core::time::monotonic_ms;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::events::{Event, NodeResults, Session, Submission};
use super::{Cluster, Comm};
use crate::stdouts::Stdouts;
use crate::store::{Committed, Store, StoreError, WriteBatch};

/// Events waiting for the loop, at most.
const EVENTS: usize = 4096;
/// Submission requests waiting for the loop, at most (each up to a client's batch).
const SUBMISSIONS: usize = 64;
/// Result batches waiting for the loop, at most.
const RESULTS: usize = 1024;

/// The senders into the loop, shared by connection handlers and the autoscaler.
#[derive(Clone)]
pub(crate) struct Channels {
    pub events: mpsc::Sender<Event>,
    pub submissions: mpsc::Sender<Submission>,
    pub results: mpsc::Sender<NodeResults>,
}

/// The loop's ends of [`Channels`].
pub(crate) struct Inputs {
    events: mpsc::Receiver<Event>,
    submissions: mpsc::Receiver<Submission>,
    results: mpsc::Receiver<NodeResults>,
}

impl Channels {
    pub(crate) fn new() -> (Self, Inputs) {
        let (events, events_rx) = mpsc::channel(EVENTS);
        let (submissions, submissions_rx) = mpsc::channel(SUBMISSIONS);
        let (results, results_rx) = mpsc::channel(RESULTS);
        (
            Self {
                events,
                submissions,
                results,
            },
            Inputs {
                events: events_rx,
                submissions: submissions_rx,
                results: results_rx,
            },
        )
    }
}

/// The daemon's [`Comm`]: node outboxes, the store's writer, the autoscaler's wake-up, stdouts
/// stored as objects.
pub(crate) struct Io {
    store: Store,
    in_flight: Option<oneshot::Receiver<Result<Committed, StoreError>>>,
    autoscaler: Option<Arc<Notify>>,
    stdouts: Stdouts,
}

impl Io {
    pub(crate) fn new(store: Store, autoscaler: Option<Arc<Notify>>, stdouts: Stdouts) -> Self {
        Self {
            store,
            in_flight: None,
            autoscaler,
            stdouts,
        }
    }
}

impl Comm for Io {
    fn send(&mut self, session: &Session, message: HeadMessage) -> bool {
        session.outbox.try_send(message).is_ok()
    }

    fn commit(&mut self, batch: WriteBatch) {
        self.in_flight = Some(self.store.commit(batch));
    }

    fn wake_autoscaler(&mut self) {
        if let Some(autoscaler) = &self.autoscaler {
            autoscaler.notify_one();
        }
    }

    fn store_stdout(&mut self, task: rgrid_core::TaskId) {
        self.stdouts.store(task);
    }
}

/// The commit in flight, or never.
async fn commit_done(
    in_flight: &mut Option<oneshot::Receiver<Result<Committed, StoreError>>>,
) -> Result<Committed, StoreError> {
    match in_flight {
        Some(rx) => rx.await.unwrap_or(Err(StoreError::WriterGone)),
        None => std::future::pending().await,
    }
}

impl Cluster<Io> {
    /// Runs until `shutdown`, or until the store gives up on a commit (the head must stop:
    /// nothing of the failed batch was acknowledged).
    pub(crate) async fn run(
        mut self,
        mut inputs: Inputs,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        // Fine-grained enough that a dead node is noticed within 100 ms of its timeout.
        let period = (self.liveness.heartbeat_interval / 2).min(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut events, mut submissions, mut results) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let accepting = self.accepting();
            let mut in_flight = self.comm.in_flight.take();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                committed = commit_done(&mut in_flight) => {
                    in_flight = None;
                    self.committed(committed)?;
                }
                _ = tick.tick() => self.tick(monotonic_ms()),
                n = inputs.events.recv_many(&mut events, 256) => {
                    if n == 0 {
                        break;
                    }
                    for event in events.drain(..) {
                        self.handle(event);
                    }
                }
                n = inputs.results.recv_many(&mut results, 64), if accepting => {
                    if n == 0 {
                        break;
                    }
                    for batch in results.drain(..) {
                        self.results(batch);
                    }
                }
                n = inputs.submissions.recv_many(&mut submissions, 16), if accepting => {
                    if n == 0 {
                        break;
                    }
                    for submission in submissions.drain(..) {
                        self.submit(submission);
                    }
                }
            }
            if self.comm.in_flight.is_none() {
                self.comm.in_flight = in_flight;
            }
            self.end_turn();
        }
        Ok(())
    }
}
