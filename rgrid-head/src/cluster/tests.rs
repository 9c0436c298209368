//! The loop driven by hand: events in; what it sent, wrote and answered read back from a
//! recorder. Each crash window of the task path is a test here: commits happen only when the
//! test says so, so "before the commit" and "after the commit, before the next step" are exact.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rgrid_core::protocol::{
    ExitStatus, HeadMessage, NodeHealth, NodeHello, NodeMessage, SubmitAnswer,
};
use rgrid_core::scheduler::SchedulerConfig;
use rgrid_core::time::monotonic_ms;
use rgrid_core::{AttemptId, NodeId, Resources, TaskId, TaskSpec, TaskState};
use tokio::sync::{mpsc, oneshot};

use super::events::{Admitted, NodeResults, Report, Session, Submission, SubmitReply};
use super::tasks::Task;
use super::{Cluster, Comm, Event, Liveness, MAX_PENDING_ROWS};
use crate::store::{
    Committed, LatestAttempt, Output, RecoveredTask, StoreError, StoredNode, WriteBatch,
};

/// Records what the loop sends and writes; sessions in `full` refuse messages.
#[derive(Default)]
struct Recorder {
    sent: Vec<(u64, HeadMessage)>,
    batches: Vec<WriteBatch>,
    full: HashSet<u64>,
    /// Tasks whose stdout the loop asked to store.
    stdouts: Vec<TaskId>,
}

impl Comm for Recorder {
    fn send(&mut self, session: &Session, message: HeadMessage) -> bool {
        if self.full.contains(&session.id) {
            return false;
        }
        self.sent.push((session.id, message));
        true
    }

    fn commit(&mut self, batch: WriteBatch) {
        self.batches.push(batch);
    }

    fn wake_autoscaler(&mut self) {}

    fn store_stdout(&mut self, task: TaskId) {
        self.stdouts.push(task);
    }
}

type Loop = Cluster<Recorder>;

fn cluster() -> Loop {
    let liveness = Liveness {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(5),
        recovery_grace: Duration::from_secs(10),
    };
    Cluster::new(Recorder::default(), liveness, SchedulerConfig::default())
}

fn hello(cpu_millis: u64) -> NodeHello {
    NodeHello {
        name: "n".into(),
        resources: Resources::new(cpu_millis, 1 << 30),
        labels: BTreeMap::new(),
        capabilities: Vec::new(),
        running: Vec::new(),
        finished: Vec::new(),
        disconnect_grace_ms: None,
    }
}

/// Opens a session for `node`; returns the session's clock of last frames.
fn connect(c: &mut Loop, node: NodeId, session: u64, hello: NodeHello) -> Arc<AtomicU64> {
    let last_seen = Arc::new(AtomicU64::new(monotonic_ms()));
    let (outbox, _) = mpsc::channel(1);
    c.handle(Event::NodeConnected {
        node,
        hello,
        session: Session {
            id: session,
            outbox,
            last_seen: last_seen.clone(),
        },
    });
    c.end_turn();
    last_seen
}

fn task() -> TaskSpec {
    TaskSpec::new("img").cpu_millis(1000).memory_bytes(64 << 20)
}

fn admitted(spec: &TaskSpec) -> Admitted {
    Admitted::from(spec.clone())
}

fn submit(c: &mut Loop, specs: &[TaskSpec]) -> oneshot::Receiver<SubmitReply> {
    let (reply, rx) = oneshot::channel();
    c.submit(Submission {
        client: None,
        tasks: specs.iter().map(admitted).collect(),
        reply,
    });
    c.end_turn();
    rx
}

/// Completes the commit in flight; returns its batch.
fn commit(c: &mut Loop) -> WriteBatch {
    commit_knowing(c, HashSet::new())
}

fn commit_knowing(c: &mut Loop, known: HashSet<TaskId>) -> WriteBatch {
    let batch = c.comm.batches.pop().expect("a commit is in flight");
    assert!(c.comm.batches.is_empty(), "one commit in flight at a time");
    c.committed(Ok(Committed { known }))
        .expect("the commit is taken");
    c.end_turn();
    batch
}

/// The assignments sent so far (and forgets them).
fn assigned(c: &mut Loop) -> Vec<AttemptId> {
    let mut out = Vec::new();
    c.comm.sent.retain(|(_, message)| match message {
        HeadMessage::Assign(batch) => {
            out.extend(batch.iter().map(|a| a.attempt));
            false
        }
        _ => true,
    });
    out
}

/// The acknowledgements sent so far (and forgets them).
fn acked(c: &mut Loop) -> Vec<AttemptId> {
    let mut out = Vec::new();
    c.comm.sent.retain(|(_, message)| match message {
        HeadMessage::ResultsAccepted(batch) => {
            out.extend(batch.iter().copied());
            false
        }
        _ => true,
    });
    out
}

fn result(c: &mut Loop, node: NodeId, attempt: AttemptId, exit: ExitStatus) {
    c.results(NodeResults {
        node,
        reports: vec![Report {
            attempt,
            exit,
            stdout: Output::Inline(b"out".to_vec()),
            stderr: Output::Empty,
            finished_at_ms: 1,
            outputs: Vec::new(),
        }],
        reply: None,
    });
    c.end_turn();
}

fn state(c: &Loop, id: TaskId) -> Option<TaskState> {
    c.tasks.get(&id).map(|t| t.state)
}

/// A node and one task running on it as attempt 1 (every commit done).
fn running_task(c: &mut Loop) -> (NodeId, TaskSpec, AttemptId) {
    let node = NodeId::new();
    connect(c, node, 1, hello(4000));
    commit(c);
    let spec = task();
    let mut reply = submit(c, std::slice::from_ref(&spec));
    let batch = commit(c);
    assert_eq!(batch.inserts.len(), 1);
    assert_eq!(
        batch.attempts.len(),
        1,
        "placed in the same commit as its insert"
    );
    assert!(reply.try_recv().is_ok());
    let attempt = AttemptId {
        task: spec.id,
        attempt: 1,
    };
    assert_eq!(assigned(c), [attempt]);
    (node, spec, attempt)
}

#[test]
fn a_task_record_stays_compact() {
    // The loop's cost of a queued task, beyond its encoded spec and the scheduler's queue entry.
    assert!(
        std::mem::size_of::<Task>() <= 104,
        "{}",
        std::mem::size_of::<Task>()
    );
}

#[test]
fn nothing_is_acknowledged_or_assigned_before_its_commit() {
    let mut c = cluster();
    let node = NodeId::new();
    connect(&mut c, node, 1, hello(4000));
    commit(&mut c);
    let spec = task();
    let mut reply = submit(&mut c, std::slice::from_ref(&spec));
    // The insert and the attempt are written together, but nothing went out yet.
    assert!(reply.try_recv().is_err(), "acknowledged before durable");
    assert!(
        assigned(&mut c).is_empty(),
        "assigned before the attempt is durable"
    );
    let batch = commit(&mut c);
    assert_eq!(batch.attempts[0].attempt, 1);
    let answer = reply.try_recv().expect("answered after the commit");
    assert_eq!(answer.answers, [SubmitAnswer::Accepted]);
    assert_eq!(
        assigned(&mut c),
        [AttemptId {
            task: spec.id,
            attempt: 1
        }]
    );
}

#[test]
fn a_result_is_acknowledged_after_its_end_is_durable_and_repeats_wait_for_the_same_commit() {
    let mut c = cluster();
    let (node, spec, attempt) = running_task(&mut c);
    let (sink, mut outcomes) = mpsc::channel(1);
    let (reply, _missing) = oneshot::channel();
    c.handle(Event::Wait {
        tasks: vec![spec.id],
        sink,
        reply,
    });
    result(&mut c, node, attempt, ExitStatus::Exited(0));
    assert!(acked(&mut c).is_empty());
    // The node sends it again (a new session) while the first copy is committing.
    result(&mut c, node, attempt, ExitStatus::Exited(0));
    assert!(
        acked(&mut c).is_empty(),
        "a repeat is acknowledged before the commit"
    );
    assert!(
        outcomes.try_recv().is_err(),
        "an outcome is shown before it is durable"
    );
    let batch = commit(&mut c);
    assert_eq!(batch.finishes.len(), 1, "the repeat writes nothing");
    assert_eq!(batch.finishes[0].state, TaskState::Succeeded);
    assert_eq!(acked(&mut c), [attempt, attempt]);
    let outcome = outcomes.try_recv().expect("the waiter hears once durable");
    assert_eq!(outcome.stdout, Output::Inline(b"out".to_vec()));
    assert_eq!(
        state(&c, spec.id),
        None,
        "a durable finished task leaves memory"
    );
    // Long after: a third copy is stale, acknowledged at once, and changes nothing.
    result(&mut c, node, attempt, ExitStatus::Exited(1));
    assert_eq!(acked(&mut c), [attempt]);
    assert!(c.comm.batches.is_empty());
}

#[test]
fn a_failed_commit_acknowledges_nothing_and_stops_the_loop() {
    let mut c = cluster();
    let spec = task();
    let mut reply = submit(&mut c, &[spec]);
    assert!(c.comm.batches.pop().is_some());
    let failed = c.committed(Err(StoreError::WriterGone));
    assert!(failed.is_err(), "the loop must stop");
    assert!(reply.try_recv().is_err(), "nothing acknowledged");
}

#[test]
fn one_owner_decides_what_is_new() {
    let mut c = cluster();
    let spec = task();
    let mut first = submit(&mut c, std::slice::from_ref(&spec));
    commit(&mut c);
    assert!(first.try_recv().is_ok());
    // In memory: the same spec is known, another spec under the same id is refused.
    let mut other = spec.clone();
    other.image = "other".into();
    let mut again = submit(&mut c, &[spec.clone(), other]);
    let answer = again
        .try_recv()
        .expect("nothing new to write: answered at once");
    assert_eq!(
        answer.answers[0],
        SubmitAnswer::Known {
            state: TaskState::Queued
        }
    );
    assert!(
        matches!(&answer.answers[1], SubmitAnswer::Rejected(m) if m.contains("different spec"))
    );
    assert!(c.comm.batches.is_empty(), "a resubmission writes nothing");

    // Known only to the store (finished long ago): the insert says so, the loop forgets its
    // speculative copy, sends nothing, and the server answers from the store.
    let node = NodeId::new();
    connect(&mut c, node, 1, hello(4000));
    commit(&mut c);
    let old = task();
    let mut reply = submit(&mut c, std::slice::from_ref(&old));
    let batch = commit_knowing(&mut c, HashSet::from([old.id]));
    assert_eq!(batch.inserts.len(), 1);
    let answer = reply.try_recv().expect("answered");
    assert_eq!(answer.stored, [(0, old.id)]);
    assert_eq!(state(&c, old.id), None);
    assert!(
        !assigned(&mut c).iter().any(|a| a.task == old.id),
        "a known task must not run again"
    );
}

/// What a restarted head reads back: `node` (ready), and `spec` as attempt 1 on it, not ended.
/// True when the task has dependencies.
fn recover_placed(c: &mut Loop, node: NodeId, spec: &TaskSpec) -> bool {
    c.recover_node(
        StoredNode {
            id: node,
            name: "n".into(),
            hello: Some(hello(4000)),
            state: "ready",
            joined_at_ms: 0,
        },
        monotonic_ms(),
    );
    c.recover_task(RecoveredTask {
        id: spec.id,
        spec: crate::store::encode(spec),
        submitted_at_ms: 0,
        node_losses: 0,
        failures: 0,
        latest: Some(LatestAttempt {
            attempt: 1,
            node,
            started_at_ms: 0,
            ended: false,
        }),
    })
    .expect("the spec decodes")
}

#[test]
fn an_attempt_number_is_never_reused_after_a_crash_before_the_assignment() {
    // The head stored attempt 1 on the node, then died before sending it. A new head reads the
    // task back as assigned there; the node reconnects without it.
    let mut c = cluster();
    let node = NodeId::new();
    let spec = task();
    recover_placed(&mut c, node, &spec);
    assert_eq!(state(&c, spec.id), Some(TaskState::Assigned));
    connect(&mut c, node, 7, hello(4000));
    let batch = commit(&mut c);
    assert_eq!(
        batch.attempt_ends.len(),
        1,
        "attempt 1 is ended, not reused"
    );
    assert_eq!(batch.attempts[0].attempt, 2);
    assert_eq!(
        assigned(&mut c),
        [AttemptId {
            task: spec.id,
            attempt: 2
        }]
    );
    let task = c.tasks.get(&spec.id).expect("open");
    assert_eq!(
        task.node_losses, 0,
        "the node never had it: not a node loss"
    );
}

#[test]
fn a_node_reporting_an_unknown_attempt_is_told_to_kill_it_and_the_counter_stays_above_it() {
    let mut c = cluster();
    let spec = task();
    submit(&mut c, std::slice::from_ref(&spec));
    commit(&mut c);
    // A node says it runs attempt 5 of a task the head holds queued.
    let node = NodeId::new();
    let mut hello = hello(0);
    let stray = AttemptId {
        task: spec.id,
        attempt: 5,
    };
    hello.running.push(stray);
    connect(&mut c, node, 1, hello);
    let welcome = c.comm.sent.iter().find_map(|(_, m)| match m {
        HeadMessage::Welcome { superseded, .. } => Some(superseded.clone()),
        _ => None,
    });
    assert_eq!(welcome, Some(vec![stray]));
    assert_eq!(c.tasks.get(&spec.id).map(|t| t.attempt), Some(5));
}

#[test]
fn messages_count_only_for_the_senders_own_attempts() {
    let mut c = cluster();
    let (node, spec, attempt) = running_task(&mut c);
    let intruder = NodeId::new();
    connect(&mut c, intruder, 2, hello(4000));
    commit(&mut c);
    // Another node claims the attempt ended, started, and is left unfinished.
    result(&mut c, intruder, attempt, ExitStatus::Exited(3));
    assert_eq!(acked(&mut c), [attempt], "stale: acknowledged, ignored");
    c.handle(Event::NodeMessage {
        node: intruder,
        session: 2,
        message: NodeMessage::Started { attempt },
    });
    c.handle(Event::NodeMessage {
        node: intruder,
        session: 2,
        message: NodeMessage::Leaving {
            unfinished: vec![attempt],
        },
    });
    c.end_turn();
    assert_eq!(state(&c, spec.id), Some(TaskState::Assigned));
    assert!(c.comm.batches.is_empty() || c.comm.batches.iter().all(|b| b.attempt_ends.is_empty()));
    // Its own node's Started counts.
    c.handle(Event::NodeMessage {
        node,
        session: 1,
        message: NodeMessage::Started { attempt },
    });
    assert_eq!(state(&c, spec.id), Some(TaskState::Running));
    // A replaced session's messages do not.
    c.handle(Event::NodeMessage {
        node,
        session: 99,
        message: NodeMessage::Draining,
    });
    assert_eq!(
        c.list_nodes()
            .iter()
            .filter(|n| n.state == "draining")
            .count(),
        0
    );
}

#[test]
fn a_cancel_is_answered_after_its_commit() {
    let mut c = cluster();
    let (_, spec, attempt) = running_task(&mut c);
    let (reply, mut answer) = oneshot::channel();
    c.handle(Event::Cancel {
        task: spec.id,
        recursive: false,
        reply,
    });
    c.end_turn();
    assert!(
        c.comm
            .sent
            .iter()
            .any(|(_, m)| *m == HeadMessage::Kill { attempt }),
        "the kill goes at once"
    );
    assert!(answer.try_recv().is_err(), "answered before durable");
    let batch = commit(&mut c);
    assert_eq!(batch.finishes[0].state, TaskState::Cancelled);
    assert_eq!(answer.try_recv().ok().flatten(), Some(TaskState::Cancelled));
}

#[test]
fn liveness_follows_the_last_frame_not_the_loop() {
    let mut c = cluster();
    let (node, spec, attempt) = running_task(&mut c);
    let last_seen = c.nodes[0]
        .session
        .as_ref()
        .map(|s| s.last_seen.clone())
        .expect("a session");
    let start = last_seen.load(Ordering::Relaxed);
    // Frames keep arriving (recorded by the reader): ready however late the loop looks.
    last_seen.store(start + 60_000, Ordering::Relaxed);
    c.tick(start + 60_500);
    assert_eq!(c.list_nodes()[0].state, "ready");
    // Silent for three heartbeats: suspect; heard again: ready.
    c.tick(start + 63_500);
    assert_eq!(c.list_nodes()[0].state, "suspect");
    last_seen.store(start + 64_000, Ordering::Relaxed);
    c.tick(start + 64_100);
    assert_eq!(c.list_nodes()[0].state, "ready");
    // Silent past the timeout: suspect, then dead, and its attempt is requeued as a node loss.
    c.tick(start + 67_100);
    c.tick(start + 69_100);
    c.end_turn();
    assert_eq!(c.list_nodes()[0].state, "dead");
    let batch = commit(&mut c);
    assert_eq!(batch.attempt_ends[0].attempt, attempt.attempt);
    assert_eq!(batch.counters[0].node_losses, 1);
    assert_eq!(state(&c, spec.id), Some(TaskState::Queued));
    let _ = node;
}

#[test]
fn a_node_keeps_its_attempts_for_its_disconnect_grace() {
    let mut c = cluster();
    let node = NodeId::new();
    let graceful = NodeHello {
        disconnect_grace_ms: Some(60_000),
        ..hello(4000)
    };
    let last_seen = connect(&mut c, node, 1, graceful.clone());
    commit(&mut c);
    let spec = task();
    submit(&mut c, std::slice::from_ref(&spec));
    commit(&mut c);
    let attempt = AttemptId {
        task: spec.id,
        attempt: 1,
    };
    assert_eq!(assigned(&mut c), [attempt]);
    let start = last_seen.load(Ordering::Relaxed);
    // Cut off for 20 s, well past the head's 5 s timeout: suspect, no new work, not dead.
    c.node_disconnected(node, 1);
    for second in 1..=20 {
        c.tick(start + second * 1000);
    }
    c.end_turn();
    assert_eq!(c.list_nodes()[0].state, "suspect");
    assert_eq!(state(&c, spec.id), Some(TaskState::Assigned));
    let later = task();
    submit(&mut c, std::slice::from_ref(&later));
    commit(&mut c);
    assert_eq!(state(&c, later.id), Some(TaskState::Queued), "no new work");
    // Back with the attempt's result spooled: accepted, nothing requeued.
    let back = NodeHello {
        finished: vec![attempt],
        ..graceful
    };
    connect(&mut c, node, 2, back);
    c.end_turn();
    assert_eq!(c.list_nodes()[0].state, "ready");
    assert_eq!(state(&c, spec.id), Some(TaskState::Assigned), "kept");
    // Past its grace, a silent node is dead.
    c.node_disconnected(node, 2);
    let now = rgrid_core::time::monotonic_ms();
    c.tick(now + 60_100);
    c.end_turn();
    assert_eq!(c.list_nodes()[0].state, "dead");
}

#[test]
fn an_unhealthy_node_gets_no_work_until_it_is_healthy() {
    let mut c = cluster();
    let node = NodeId::new();
    connect(&mut c, node, 1, hello(4000));
    commit(&mut c);
    let sick = NodeHealth {
        problem: Some("the Docker engine does not answer".into()),
        ..NodeHealth::default()
    };
    c.handle(Event::NodeMessage {
        node,
        session: 1,
        message: NodeMessage::Health(sick),
    });
    let listed = &c.list_nodes()[0];
    assert_eq!(listed.state, "unhealthy");
    assert_eq!(
        listed.unhealthy.as_deref(),
        Some("the Docker engine does not answer")
    );
    let spec = task();
    submit(&mut c, std::slice::from_ref(&spec));
    commit(&mut c);
    assert_eq!(state(&c, spec.id), Some(TaskState::Queued), "no work");
    c.handle(Event::NodeMessage {
        node,
        session: 1,
        message: NodeMessage::Health(NodeHealth::default()),
    });
    c.end_turn();
    commit(&mut c);
    assert_eq!(c.list_nodes()[0].state, "ready");
    assert_eq!(state(&c, spec.id), Some(TaskState::Assigned));
}

#[test]
fn a_node_that_cannot_keep_up_loses_its_session_not_its_work() {
    let mut c = cluster();
    let node = NodeId::new();
    connect(&mut c, node, 1, hello(4000));
    commit(&mut c);
    c.comm.full.insert(1);
    let spec = task();
    submit(&mut c, std::slice::from_ref(&spec));
    commit(&mut c);
    assert_eq!(c.list_nodes()[0].state, "suspect");
    // It reconnects without the attempt it never received: requeued, not a node loss.
    connect(&mut c, node, 2, hello(4000));
    let batch = commit(&mut c);
    assert_eq!(batch.counters[0].node_losses, 0);
    assert_eq!(assigned(&mut c).last().map(|a| a.attempt), Some(2));
}

#[test]
fn submissions_wait_when_the_database_is_behind() {
    let mut c = cluster();
    let specs: Vec<TaskSpec> = (0..=MAX_PENDING_ROWS).map(|_| task()).collect();
    submit(&mut c, &specs[..1]);
    assert!(c.accepting(), "the first batch is in flight");
    let (reply, _rx) = oneshot::channel();
    c.submit(Submission {
        client: None,
        tasks: specs[1..].iter().map(admitted).collect(),
        reply,
    });
    assert!(
        !c.accepting(),
        "over the cap: the loop stops reading submissions"
    );
    commit(&mut c);
    assert!(c.accepting(), "the next commit took them");
}

#[test]
fn a_handed_back_attempt_runs_again_after_a_pause_without_counting_a_node_loss() {
    let mut c = cluster();
    let (node, spec, attempt) = running_task(&mut c);
    let exit = ExitStatus::HandedBack("the Docker engine does not answer".into());
    result(&mut c, node, attempt, exit.clone());
    assert!(acked(&mut c).is_empty(), "acknowledged before durable");
    let batch = commit(&mut c);
    assert!(batch.finishes.is_empty(), "the task does not end");
    assert_eq!(batch.attempt_ends[0].outcome, exit.to_string());
    assert_eq!(batch.counters[0].node_losses, 0);
    assert_eq!(acked(&mut c), [attempt]);
    assert_eq!(state(&c, spec.id), Some(TaskState::Queued));
    assert!(
        assigned(&mut c).is_empty(),
        "not placed again straight away"
    );
    c.tick(monotonic_ms() + 2_000);
    c.end_turn();
    commit(&mut c);
    let again = AttemptId {
        task: spec.id,
        attempt: 2,
    };
    assert_eq!(assigned(&mut c), [again], "placed again after the pause");
    assert_eq!(c.tasks[&spec.id].node_losses, 0);
    // A death by signal fails the task with the shell's exit code.
    result(
        &mut c,
        node,
        again,
        ExitStatus::Signalled {
            signal: 11,
            name: "SIGSEGV".into(),
        },
    );
    let batch = commit(&mut c);
    assert_eq!(batch.finishes[0].state, TaskState::Failed);
    assert_eq!(batch.finishes[0].exit_code, Some(139));
}

#[test]
fn a_priced_node_bills_its_hours_to_the_attempts_it_ran() {
    let mut c = cluster();
    let node = NodeId::new();
    let mut priced = hello(4000);
    (priced.labels).insert(
        rgrid_core::protocol::HOURLY_PRICE_LABEL.into(),
        "3.6".into(),
    );
    connect(&mut c, node, 1, priced);
    commit(&mut c);
    // A quarter of the node: 1 of its 4 cpus (64 MiB of 1 GiB is less).
    let spec = task();
    let _reply = submit(&mut c, std::slice::from_ref(&spec));
    let batch = commit(&mut c);
    let row = &batch.attempts[0];
    assert_eq!((row.share, row.hourly_price), (0.25, Some(3.6)));
    let attempt = assigned(&mut c)[0];
    std::thread::sleep(Duration::from_millis(20));
    result(&mut c, node, attempt, ExitStatus::Exited(0));
    commit(&mut c);
    // The node leaves: its started hour closes, in full, paid by what ran in it.
    c.handle(Event::NodeMessage {
        node,
        session: 1,
        message: NodeMessage::Leaving {
            unfinished: Vec::new(),
        },
    });
    c.end_turn();
    let hours: Vec<_> = (commit(&mut c).other.into_iter())
        .filter_map(|w| match w {
            crate::store::Write::NodeHour { node: n, hour } if n == node => Some(hour),
            _ => None,
        })
        .collect();
    assert_eq!(hours.len(), 1, "{hours:?}");
    assert_eq!(hours[0].price, 3.6);
    assert_eq!(hours[0].end_ms - hours[0].start_ms, 3_600_000);
    // A quarter of the node for at least the 20 ms it ran.
    assert!(hours[0].used >= 0.25 * 20.0, "{hours:?}");
    // A node without a price bills nothing, and its attempts have no price.
    let free = NodeId::new();
    connect(&mut c, free, 2, hello(4000));
    commit(&mut c);
    let _reply = submit(&mut c, &[task()]);
    let batch = commit(&mut c);
    assert_eq!(batch.attempts[0].hourly_price, None);
}

/// A chain of 100,000 tasks, each taking the previous one's output: all `Pending` at once, and
/// the root's cancel fails every one in the same turn (a worklist, not a recursion as deep as the
/// chain), each naming its own dependency, at a cost of one step per edge.
#[test]
fn a_long_chain_of_dependants_fails_in_one_turn() {
    let mut c = cluster();
    let n = 100_000;
    let mut specs = vec![task().output("o", "/o")];
    for i in 1..n {
        let previous = specs[i - 1].id;
        specs.push(
            task()
                .input(
                    "/in",
                    rgrid_core::task::InputSource::TaskOutput {
                        task: previous,
                        name: "o".into(),
                    },
                )
                .output("o", "/o"),
        );
    }
    let started = std::time::Instant::now();
    let _reply = submit(&mut c, &specs);
    let batch = commit(&mut c);
    assert_eq!(batch.inserts.len(), n);
    assert_eq!(batch.edges.len(), n - 1, "one edge per dependency");
    assert_eq!(c.counts.get(TaskState::Pending), (n - 1) as u64);
    let (reply, _answer) = oneshot::channel();
    c.handle(Event::Cancel {
        task: specs[0].id,
        recursive: false,
        reply,
    });
    c.end_turn();
    let batch = commit(&mut c);
    assert_eq!(
        batch.finishes.len(),
        n,
        "the root and every dependant ended"
    );
    let last = batch
        .finishes
        .iter()
        .find(|f| f.task == specs[n - 1].id)
        .expect("the last one ended");
    assert_eq!(last.state, TaskState::DependencyFailed);
    let reason = last.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&specs[n - 2].id.to_string())
            && reason.contains(&specs[0].id.to_string())
            && reason.len() < 300,
        "names its dependency and the first failure, briefly: {reason}"
    );
    assert!(c.dependencies.is_empty(), "nothing is kept for ended tasks");
    eprintln!(
        "100,000-task chain submitted and failed in {:?}",
        started.elapsed()
    );
}

/// Open tasks keep their object inputs, and the outputs of the dependencies they have met, from
/// retention; a task gives them back when it ends.
#[test]
fn open_tasks_hold_their_objects_until_they_end() {
    use rgrid_core::object::{NamedObject, ObjectRef};
    use rgrid_core::task::InputSource;
    let counts = Arc::new(crate::objects::TaskHolds::default());
    let mut c = cluster().with_object_holds(counts.clone());
    let node = NodeId::new();
    connect(&mut c, node, 1, hello(4000));
    commit(&mut c);
    let input = ObjectRef::of(b"in");
    let output = ObjectRef::of(b"a");
    let first = task().input("/in", input).output("a", "/a");
    let second = task().input("/in", input).input(
        "/a",
        InputSource::TaskOutput {
            task: first.id,
            name: "a".into(),
        },
    );
    let _reply = submit(&mut c, &[first.clone(), second.clone()]);
    commit(&mut c);
    assert_eq!(counts.count(&input.sha256), 2, "both take it");
    let attempt = assigned(&mut c)[0];
    assert_eq!(attempt.task, first.id);
    c.results(NodeResults {
        node,
        reports: vec![Report {
            attempt,
            exit: ExitStatus::Exited(0),
            stdout: Output::Empty,
            stderr: Output::Empty,
            finished_at_ms: 1,
            outputs: vec![NamedObject {
                name: "a".into(),
                object: output,
            }],
        }],
        reply: None,
    });
    c.end_turn();
    commit(&mut c);
    assert_ne!(state(&c, second.id), Some(TaskState::Pending), "released");
    assert_eq!(counts.count(&input.sha256), 1, "the first gave it back");
    assert_eq!(
        counts.count(&output.sha256),
        1,
        "the dependant holds its dependency's output"
    );
    let (reply, _answer) = oneshot::channel();
    c.handle(Event::Cancel {
        task: second.id,
        recursive: false,
        reply,
    });
    c.end_turn();
    commit(&mut c);
    assert_eq!(counts.count(&input.sha256), 0);
    assert_eq!(counts.count(&output.sha256), 0);
    assert!(c.holds.is_empty(), "nothing is kept for ended tasks");
}

/// A task that takes another's stdout waits until that one's success is durable and its stdout
/// is stored as an object (asked once for all who wait), then runs with that object; a stdout
/// that cannot be stored fails its dependant, naming why.
#[test]
fn a_stdout_input_waits_for_the_stdout_to_be_stored() {
    use rgrid_core::object::ObjectRef;
    use rgrid_core::task::InputSource;
    let counts = Arc::new(crate::objects::TaskHolds::default());
    let mut c = cluster().with_object_holds(counts.clone());
    let node = NodeId::new();
    connect(&mut c, node, 1, hello(4000));
    commit(&mut c);
    let producer = task();
    let stdout = InputSource::TaskStdout { task: producer.id };
    let first = task().input("/in", stdout.clone());
    let second = task().input("/in", stdout.clone());
    let _reply = submit(&mut c, &[producer.clone(), first.clone(), second.clone()]);
    commit(&mut c);
    let attempt = assigned(&mut c)[0];
    assert_eq!(attempt.task, producer.id);
    c.results(NodeResults {
        node,
        reports: vec![Report {
            attempt,
            exit: ExitStatus::Exited(0),
            stdout: Output::Inline(b"hello\n".to_vec()),
            stderr: Output::Empty,
            finished_at_ms: 1,
            outputs: Vec::new(),
        }],
        reply: None,
    });
    c.end_turn();
    assert!(
        c.comm.stdouts.is_empty(),
        "not before the success is durable"
    );
    commit(&mut c);
    assert_eq!(c.comm.stdouts, vec![producer.id], "asked once for both");
    assert_eq!(state(&c, first.id), Some(TaskState::Pending));
    let object = ObjectRef::of(b"hello\n");
    c.handle(Event::StdoutStored {
        producer: producer.id,
        result: Ok(object),
    });
    c.end_turn();
    for dependant in [&first, &second] {
        assert_ne!(
            state(&c, dependant.id),
            Some(TaskState::Pending),
            "released"
        );
        let resolved: TaskSpec = crate::store::decode_spec(
            c.dependencies
                .resolved_spec(dependant.id)
                .expect("resolved"),
        )
        .expect("decodes");
        assert_eq!(resolved.inputs[0].source, InputSource::Object(object));
    }
    assert_eq!(counts.count(&object.sha256), 2, "each dependant holds it");
    commit(&mut c);

    // Submitted once the producer has left the loop: the server found it finished.
    assert!(!c.tasks.contains_key(&producer.id));
    let late = task().input("/in", stdout);
    let mut admitted = admitted(&late);
    admitted.finished = vec![super::FinishedDependency {
        task: producer.id,
        state: TaskState::Succeeded,
        reason: None,
        outputs: Vec::new(),
        deleted: Vec::new(),
    }];
    let (reply, _rx) = oneshot::channel();
    c.submit(Submission {
        client: None,
        tasks: vec![admitted],
        reply,
    });
    c.end_turn();
    commit(&mut c);
    assert_eq!(c.comm.stdouts, vec![producer.id, producer.id]);
    c.handle(Event::StdoutStored {
        producer: producer.id,
        result: Err("the object store failed: disk full".into()),
    });
    c.end_turn();
    assert_eq!(state(&c, late.id), Some(TaskState::DependencyFailed));
    let reason = c.tasks[&late.id]
        .outcome
        .as_ref()
        .and_then(|o| o.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains(&producer.id.to_string()) && reason.contains("disk full"),
        "{reason}"
    );
}

/// After a restart, a task that was running and takes a stdout gets its resolved spec back once
/// that stdout is stored again. Requeued before that (its node came back without it), it waits
/// `Pending` for the store in flight, and then runs with the object, never with the unresolved
/// input.
#[test]
fn a_task_placed_before_a_restart_runs_again_only_once_its_stdout_is_stored_again() {
    use rgrid_core::object::ObjectRef;
    use rgrid_core::task::InputSource;
    let mut c = cluster();
    let node = NodeId::new();
    let producer = TaskId::new();
    let spec = task().input("/in", InputSource::TaskStdout { task: producer });
    assert!(recover_placed(&mut c, node, &spec), "it has dependencies");
    c.settle_recovered(vec![crate::store::StoredEdge {
        task: spec.id,
        dependency: producer,
        state: TaskState::Succeeded,
        reason: None,
        outputs: Vec::new(),
    }]);
    assert_eq!(state(&c, spec.id), Some(TaskState::Assigned));
    assert_eq!(c.comm.stdouts, vec![producer], "stored again");

    // Its node comes back without it.
    connect(&mut c, node, 7, hello(4000));
    commit(&mut c);
    assert_eq!(state(&c, spec.id), Some(TaskState::Pending), "waits");
    assert!(assigned(&mut c).is_empty(), "not run unresolved");
    assert_eq!(
        c.comm.stdouts,
        vec![producer],
        "the store in flight is not asked again"
    );

    let object = ObjectRef::of(b"stdout");
    c.handle(Event::StdoutStored {
        producer,
        result: Ok(object),
    });
    c.end_turn();
    commit(&mut c);
    let specs: Vec<TaskSpec> = c
        .comm
        .sent
        .iter()
        .filter_map(|(_, message)| match message {
            HeadMessage::Assign(batch) => Some(batch.clone()),
            _ => None,
        })
        .flatten()
        .map(|a| crate::store::decode_spec(&a.spec).expect("decodes"))
        .collect();
    assert_eq!(specs.len(), 1, "run again once");
    assert_eq!(specs[0].inputs[0].source, InputSource::Object(object));
}
