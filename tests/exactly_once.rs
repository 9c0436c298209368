//! Exactly once under crashes: real `rgrid-head` processes aborted at exact steps of the task
//! path (crash points, `FAILPOINTS`), or SIGKILLed at random moments, and restarted on their
//! state; process-executor nodes. Every acknowledged submission ends `Succeeded` exactly once,
//! with its own output; attempt numbers are never reused; nothing is acknowledged that a
//! restart loses.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{
    free_udp_port, start_head_env, start_node_with, wait_for, wait_ready, Daemon,
};
use rgrid::{Client, ClientError, TaskOutcome, TaskRef, TaskSpec, TaskState};

/// A task that prints its own id, and appends it to `runs` (so a test can count its runs).
fn echo(runs: &Path) -> TaskSpec {
    let mut spec = TaskSpec::new("none").cpu_millis(100).memory_bytes(8 << 20);
    let id = spec.id.to_string();
    let script = format!("echo {id}; echo {id} >> {}", runs.display());
    spec.command = vec!["sh".into(), "-c".into(), script];
    spec
}

struct Cluster {
    dir: tempfile::TempDir,
    listen: String,
    head: Option<Daemon>,
    nodes: Vec<(String, Option<Daemon>)>,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let listen = format!("127.0.0.1:{}", free_udp_port());
        Self {
            dir,
            listen,
            head: None,
            nodes: Vec::new(),
        }
    }

    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// (Re)starts the head, SIGKILLing the one running; `failpoints` as in `FAILPOINTS`.
    fn head(&mut self, failpoints: &str, extra: &[&str]) {
        drop(self.head.take());
        self.head = Some(start_head_env(
            self.dir.path(),
            &self.listen,
            extra,
            &[("FAILPOINTS", failpoints)],
        ));
        wait_for("client.toml", || self.client_toml().exists());
    }

    fn client_toml(&self) -> PathBuf {
        self.dir.path().join("head").join("client.toml")
    }

    /// (Re)starts node `name` (process executor) on its state dir.
    fn node(&mut self, name: &str) {
        let daemon = start_node_with(
            self.dir.path(),
            &self.listen,
            name,
            4000,
            &["--executor", "process"],
        );
        match self.nodes.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot)) => *slot = Some(daemon),
            None => self.nodes.push((name.to_owned(), Some(daemon))),
        }
    }

    fn kill_node(&mut self, name: &str) {
        if let Some((_, slot)) = self.nodes.iter_mut().find(|(n, _)| n == name) {
            if let Some(node) = slot.take() {
                node.signal("KILL");
            }
        }
    }

    /// Waits until the head process has exited (a crash point fired); its exit status.
    fn head_exited(&mut self) -> std::process::ExitStatus {
        let head = self.head.as_mut().expect("a head");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = head.0.try_wait().expect("the head's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the head did not stop at its crash point: rgrid-head must be built with the \
                 `failpoints` feature, as `cargo test --workspace` builds it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client, retrying while the head restarts.
    async fn client(&self) -> Client {
        connect(&self.client_toml()).await
    }

    /// How often each task ran.
    fn run_counts(&self) -> std::collections::HashMap<String, usize> {
        let text = std::fs::read_to_string(self.runs()).unwrap_or_default();
        let mut counts = std::collections::HashMap::new();
        for line in text.lines() {
            *counts.entry(line.to_owned()).or_default() += 1;
        }
        counts
    }
}

impl Drop for Cluster {
    /// A failing test shows what the daemons logged.
    fn drop(&mut self) {
        common::process::print_logs_if_panicking(self.dir.path(), 60);
    }
}

fn assert_own_success(outcome: &TaskOutcome) {
    assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout).trim(),
        outcome.task.to_string(),
        "a task's output is its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_submission_is_acknowledged_loses_nothing_and_runs_it_once() {
    let mut cluster = Cluster::new();
    cluster.head("before-submit-reply=1*return", &[]);
    cluster.node("node-a");
    wait_ready(&cluster.client_toml(), "node-a");
    let client = cluster.client().await;
    let spec = echo(&cluster.runs());
    let refused = client.submit(spec.clone()).await;
    assert!(
        refused.is_err(),
        "the head died before answering: {refused:?}"
    );
    assert!(!cluster.head_exited().success());

    cluster.head("", &[]);
    let client = cluster.client().await;
    // The client resubmits what it did not hear back about: the store has it (it was durable).
    let answers = client
        .submit_answers(vec![spec.clone()])
        .await
        .expect("resubmitted");
    assert!(
        matches!(answers[0].1, rgrid::SubmitAnswer::Known { .. }),
        "{answers:?}"
    );
    let outcome = client
        .get(&TaskRef { id: spec.id })
        .await
        .expect("an outcome");
    assert_own_success(&outcome);
    assert_eq!(cluster.run_counts().get(&spec.id.to_string()), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_storing_an_attempt_and_assigning_it_never_reuses_its_number() {
    let mut cluster = Cluster::new();
    cluster.head("before-assign=1*return", &[]);
    cluster.node("node-a");
    wait_ready(&cluster.client_toml(), "node-a");
    let client = cluster.client().await;
    let spec = echo(&cluster.runs());
    // The insert and the attempt commit together; the head dies before either answer.
    let _ = client.submit(spec.clone()).await;
    assert!(!cluster.head_exited().success());

    cluster.head("", &[]);
    let client = cluster.client().await;
    let outcome = client
        .get(&TaskRef { id: spec.id })
        .await
        .expect("an outcome");
    assert_own_success(&outcome);
    let numbers: Vec<u32> = outcome.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2], "attempt 1 is never handed out again");
    assert_eq!(
        outcome.attempts[0].outcome.as_deref(),
        Some("the node never received it")
    );
    assert_eq!(cluster.run_counts().get(&spec.id.to_string()), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_a_result_is_acknowledged_takes_the_redelivered_result_once() {
    let mut cluster = Cluster::new();
    cluster.head("before-result-ack=1*return", &[]);
    cluster.node("node-a");
    wait_ready(&cluster.client_toml(), "node-a");
    let client = cluster.client().await;
    let spec = echo(&cluster.runs());
    let task = client.submit(spec.clone()).await.expect("submitted");
    // The result is durable, the head dies before acknowledging it to the node.
    assert!(!cluster.head_exited().success());
    cluster.head("", &[]);
    let client = cluster.client().await;
    let outcome = client.get(&task).await.expect("an outcome");
    assert_own_success(&outcome);
    assert_eq!(outcome.attempts.len(), 1, "{:?}", outcome.attempts);
    // The node delivers it again and is told it is durable; nothing reruns.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster.run_counts().get(&spec.id.to_string()), Some(&1));
    assert_eq!(
        client.get(&task).await.expect("again").state,
        TaskState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_a_cancel_is_answered_keeps_the_cancellation() {
    let mut cluster = Cluster::new();
    cluster.head("before-cancel-reply=1*return", &[]);
    let client = cluster.client().await;
    // No node: the task waits in the queue.
    let task = client
        .submit(echo(&cluster.runs()))
        .await
        .expect("submitted");
    assert!(
        client.cancel(&task).await.is_err(),
        "the head died before answering"
    );
    assert!(!cluster.head_exited().success());
    cluster.head("", &[]);
    cluster.node("node-a");
    let client = cluster.client().await;
    assert_eq!(
        client.cancel(&task).await.expect("cancel"),
        TaskState::Cancelled
    );
    assert_eq!(
        client.get(&task).await.expect("an outcome").state,
        TaskState::Cancelled
    );
    assert!(
        cluster.run_counts().is_empty(),
        "a cancelled task never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_keeps_failing_stops_the_head_without_acknowledging() {
    let mut cluster = Cluster::new();
    let config = cluster.dir.path().join("head.toml");
    std::fs::write(&config, "commit_retry_for = \"2s\"\n").expect("config written");
    let config = config.display().to_string();
    cluster.head("", &["--config", &config]);
    let client = cluster.client().await;
    let kept = client
        .submit(echo(&cluster.runs()))
        .await
        .expect("submitted");

    // Every commit fails from now on.
    cluster.head("store-commit=return", &["--config", &config]);
    let client = cluster.client().await;
    let lost = echo(&cluster.runs());
    let refused = client.submit(lost.clone()).await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Transport(_) | ClientError::Refused(_))
        ),
        "a submission the store never took must not be acknowledged: {refused:?}"
    );
    let status = cluster.head_exited();
    assert_eq!(
        status.code(),
        Some(1),
        "the head stops with an error: {status:?}"
    );

    cluster.head("", &["--config", &config]);
    cluster.node("node-a");
    let client = cluster.client().await;
    assert_own_success(
        &client
            .get(&kept)
            .await
            .expect("the acknowledged task survives"),
    );
    let unknown = client.get(&TaskRef { id: lost.id }).await;
    assert!(
        matches!(&unknown, Err(ClientError::Refused(e)) if e.message.contains("no task")),
        "{unknown:?}"
    );
}

/// A client of the head at `toml`, retrying while the head restarts.
async fn connect(toml: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = Client::connect_file(toml).await {
            if client.status().await.is_ok() {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "the head did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits every spec, through restarts (a resubmission is idempotent), then waits for all.
async fn submit_and_wait_through_crashes(toml: PathBuf, specs: Vec<TaskSpec>) -> Vec<TaskOutcome> {
    for chunk in specs.chunks(50) {
        while connect(&toml)
            .await
            .submit_batch(chunk.to_vec())
            .await
            .is_err()
        {}
    }
    let tasks: Vec<TaskRef> = specs.iter().map(|s| TaskRef { id: s.id }).collect();
    loop {
        if let Ok(outcomes) = connect(&toml).await.get_many(&tasks).await {
            return outcomes;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_survive_a_head_killed_twelve_times_and_a_node_killed_once() {
    let mut cluster = Cluster::new();
    cluster.head("", &[]);
    cluster.node("node-a");
    cluster.node("node-b");
    wait_ready(&cluster.client_toml(), "node-a");
    wait_ready(&cluster.client_toml(), "node-b");
    let specs: Vec<TaskSpec> = (0..1000).map(|_| echo(&cluster.runs())).collect();
    let client = tokio::spawn(submit_and_wait_through_crashes(
        cluster.client_toml(),
        specs.clone(),
    ));

    // A crash at each crash point, then at moments a seeded generator picks; one node is
    // SIGKILLed and restarted on its state dir midway.
    let crash_points = ["before-submit-reply", "before-assign", "before-result-ack"];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(200 + seed % 500)).await;
        // The first rounds arm a crash point and let it fire; the others kill at random.
        if let Some(point) = crash_points.get(round) {
            cluster.head(&format!("{point}=1*return"), &[]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while cluster
                .head
                .as_mut()
                .is_some_and(|h| h.0.try_wait().ok().flatten().is_none())
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // SIGKILL (if still running) and start again.
        cluster.head("", &[]);
        if round == 5 {
            cluster.kill_node("node-b");
            cluster.node("node-b");
        }
    }
    let outcomes = tokio::time::timeout(Duration::from_secs(300), client)
        .await
        .expect("every task ends")
        .expect("the client task");
    assert_eq!(outcomes.len(), 1000);
    for outcome in &outcomes {
        assert_own_success(outcome);
    }
    // Exactly once: the listing agrees, and nothing changes afterwards.
    let client = cluster.client().await;
    let status = client.status().await.expect("status");
    assert_eq!(status.tasks, [(TaskState::Succeeded, 1000)], "{status:?}");
    let again = client
        .get_many(
            &outcomes
                .iter()
                .map(|o| TaskRef { id: o.task })
                .collect::<Vec<_>>(),
        )
        .await
        .expect("outcomes again");
    assert_eq!(again, outcomes);
    let runs = cluster.run_counts();
    let reruns: usize = runs.values().map(|n| n - 1).sum();
    assert!(specs.iter().all(|s| runs.contains_key(&s.id.to_string())));
    println!("1000 tasks, 12 head crashes, 1 node crash: every task succeeded once; {reruns} attempts ran again after a crash");
}
