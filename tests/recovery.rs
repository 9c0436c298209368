//! Nothing lost: real `rgrid-head` and `rgrid-node` processes killed, frozen and restarted while
//! they run container tasks (SQLite, default liveness settings: 1 s heartbeats, 5 s timeout).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{free_udp_port, start_head_with, start_node, wait_for, wait_ready, Daemon};
use rgrid::{Client, TaskOutcome, TaskRef, TaskSpec, TaskState};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sh(script: &str) -> TaskSpec {
    TaskSpec::new(common::demo_image())
        .command(["sh", "-c", script])
        .cpu_millis(500)
        .memory_bytes(32 << 20)
}

struct Cluster {
    dir: tempfile::TempDir,
    listen: String,
    /// Extra head arguments (`--database-url …`).
    head_args: Vec<String>,
    head: Option<Daemon>,
}

impl Cluster {
    /// A head process on SQLite (`None`) or on the PostgreSQL database `database_url`.
    fn start(database_url: Option<String>) -> Self {
        common::demo_image();
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let head_args = database_url
            .map(|url| vec!["--database-url".to_owned(), url])
            .unwrap_or_default();
        let mut cluster = Self {
            dir,
            listen,
            head_args,
            head: None,
        };
        cluster.restart_head();
        wait_for("client.toml", || cluster.client_toml().exists());
        cluster
    }

    /// Starts the head (again: SIGKILLs the one running).
    fn restart_head(&mut self) {
        drop(self.head.take());
        let args: Vec<&str> = self.head_args.iter().map(String::as_str).collect();
        self.head = Some(start_head_with(self.dir.path(), &self.listen, &args));
    }

    fn client_toml(&self) -> std::path::PathBuf {
        self.dir.path().join("head").join("client.toml")
    }

    fn node(&self, name: &str, cpu_millis: u32) -> Daemon {
        let node = start_node(self.dir.path(), &self.listen, name, cpu_millis);
        wait_ready(&self.client_toml(), name);
        node
    }

    async fn client(&self) -> Client {
        Client::connect_file(self.client_toml()).await.unwrap()
    }

    async fn wait_running(&self, tasks: &[TaskRef], node: &str) {
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = client.tasks().await.unwrap();
            let running = listed
                .iter()
                .filter(|t| tasks.iter().any(|r| r.id == t.task) && t.state == TaskState::Running)
                .count();
            if running == tasks.len() {
                break;
            }
            assert!(Instant::now() < deadline, "tasks did not start on {node}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    /// A failing test shows what the daemons logged.
    fn drop(&mut self) {
        common::process::print_logs_if_panicking(self.dir.path(), 10_000);
    }
}

fn docker_containers_of(task: &TaskRef, attempt: u32) -> usize {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=rgrid.task={}", task.id))
        .args(["--filter"])
        .arg(format!("label=rgrid.attempt={attempt}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

async fn outcomes(client: &Client, tasks: &[TaskRef]) -> Vec<TaskOutcome> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(client.get(task).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_tasks_complete_on_another_node() {
    let cluster = Cluster::start(None);
    let node_a = cluster.node("node-a", 2000);
    let client = cluster.client().await;
    let tasks = client
        .submit_batch(
            (0..3)
                .map(|i| sh(&format!("sleep 3; echo task-{i}")))
                .collect(),
        )
        .await
        .unwrap();
    cluster.wait_running(&tasks, "node-a").await;
    let _node_b = cluster.node("node-b", 2000);

    node_a.signal("KILL");
    let killed_at = now_ms();
    let done = outcomes(&client, &tasks).await;
    for (i, out) in done.iter().enumerate() {
        assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
        assert_eq!(out.stdout, format!("task-{i}\n").into_bytes());
        assert_eq!(out.attempts.len(), 2, "{:?}", out.attempts);
        assert_eq!(out.attempts[0].node_name, "node-a");
        assert_eq!(out.attempts[0].outcome.as_deref(), Some("node lost"));
        assert_eq!(out.attempts[1].node_name, "node-b");
    }
    let requeued_after = done
        .iter()
        .map(|o| o.attempts[1].started_at_ms.saturating_sub(killed_at))
        .max()
        .unwrap();
    println!("SIGKILL of a node → its tasks running elsewhere: {requeued_after} ms");
    // Exactly one outcome each: the listing agrees with what get returned.
    let listed = client.tasks().await.unwrap();
    assert!(listed
        .iter()
        .all(|t| t.state == TaskState::Succeeded && t.attempt == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_head_restarts_and_every_task_completes() {
    head_restart(Cluster::start(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_head_restarts_and_every_task_completes_on_postgres() {
    let Some(url) = common::postgres_database().await else {
        return;
    };
    head_restart(Cluster::start(Some(url))).await;
}

/// Six tasks, two running and four queued, when the head is SIGKILLed and restarted.
async fn head_restart(mut cluster: Cluster) {
    // 1000m fits two 500m tasks at once: two run, four wait in the queue.
    let _node = cluster.node("node-a", 1000);
    let client = cluster.client().await;
    let tasks = client
        .submit_batch(
            (0..6)
                .map(|i| sh(&format!("sleep 2; echo task-{i}")))
                .collect(),
        )
        .await
        .unwrap();
    cluster.wait_running(&tasks[..2], "node-a").await;

    cluster.restart_head();
    let client = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect_file(cluster.client_toml()).await {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(err) => panic!("head did not come back: {err}"),
            }
        }
    };
    let done = outcomes(&client, &tasks).await;
    for (i, out) in done.iter().enumerate() {
        assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
        assert_eq!(out.stdout, format!("task-{i}\n").into_bytes());
    }
    // The two that were running were re-adopted when the node reconnected, not rerun.
    assert_eq!(done[0].attempts.len(), 1, "{:?}", done[0].attempts);
    assert_eq!(done[1].attempts.len(), 1, "{:?}", done[1].attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_cut_reruns_nothing() {
    let cluster = Cluster::start(None);
    let node = cluster.node("node-a", 2000);
    let client = cluster.client().await;
    let task = client.submit(sh("sleep 4; echo once")).await.unwrap();
    cluster.wait_running(&[task], "node-a").await;
    // Frozen for less than the 5 s timeout: no heartbeats, no traffic at all.
    node.signal("STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.signal("CONT");
    let out = client.get(&task).await.unwrap();
    assert_eq!(out.state, TaskState::Succeeded);
    assert_eq!(out.stdout, b"once\n");
    assert_eq!(out.attempts.len(), 1, "{:?}", out.attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_cut_reruns_elsewhere_and_fences_the_old_attempt() {
    let cluster = Cluster::start(None);
    let node_a = cluster.node("node-a", 2000);
    let client = cluster.client().await;
    // The first attempt would run for a minute; any later one ends at once.
    let task = client
        .submit(sh(
            "if [ \"$RGRID_ATTEMPT\" = 1 ]; then sleep 60; fi; echo attempt-$RGRID_ATTEMPT",
        ))
        .await
        .unwrap();
    cluster.wait_running(&[task], "node-a").await;
    let _node_b = cluster.node("node-b", 2000);
    node_a.signal("STOP");
    let out = client.get(&task).await.unwrap();
    assert_eq!(out.state, TaskState::Succeeded);
    assert_eq!(out.stdout, b"attempt-2\n");
    assert_eq!(out.attempts[0].outcome.as_deref(), Some("node lost"));
    assert_eq!(out.attempts[1].node_name, "node-b");
    assert_eq!(
        docker_containers_of(&task, 1),
        1,
        "the old container still runs while its node is cut off"
    );

    node_a.signal("CONT");
    wait_ready(&cluster.client_toml(), "node-a");
    wait_for("the superseded container to be killed", || {
        docker_containers_of(&task, 1) == 0
    });
    // Its late result changed nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = client.get(&task).await.unwrap();
    assert_eq!(again, out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node_and_it_leaves_cleanly() {
    let cluster = Cluster::start(None);
    let mut node_a = cluster.node("node-a", 2000);
    let client = cluster.client().await;
    let task = client.submit(sh("sleep 2; echo finished")).await.unwrap();
    cluster.wait_running(&[task], "node-a").await;

    node_a.signal("TERM");
    wait_for("node-a to drain", || {
        common::process::nodes(&cluster.client_toml())
            .iter()
            .any(|n| n["name"] == "node-a" && n["state"] == "draining")
    });
    // No new work for a draining node: this one waits for another node.
    let later = client.submit(sh("echo later")).await.unwrap();
    let out = client.get(&task).await.unwrap();
    assert_eq!(
        out.stdout, b"finished\n",
        "the running task finished on the draining node"
    );
    assert_eq!(out.attempts.len(), 1);
    let status = node_a.0.wait().unwrap();
    assert!(
        status.success(),
        "the node exits cleanly after its drain: {status}"
    );
    let _node_b = cluster.node("node-b", 2000);
    let out = client.get(&later).await.unwrap();
    assert_eq!(out.attempts[0].node_name, "node-b");
    assert!(common::process::nodes(&cluster.client_toml())
        .iter()
        .any(|n| n["name"] == "node-a" && n["state"] == "left"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_hands_unfinished_tasks_back() {
    let cluster = Cluster::start(None);
    let mut node_a = cluster.node("node-a", 2000);
    let client = cluster.client().await;
    let task = client
        .submit(sh(
            "if [ \"$RGRID_ATTEMPT\" = 1 ]; then sleep 60; fi; echo attempt-$RGRID_ATTEMPT",
        ))
        .await
        .unwrap();
    cluster.wait_running(&[task], "node-a").await;
    let _node_b = cluster.node("node-b", 2000);

    let out = common::process::rgrid(
        &cluster.client_toml(),
        &["node", "drain", "node-a", "--deadline", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client.get(&task).await.unwrap();
    assert_eq!(out.stdout, b"attempt-2\n");
    assert_eq!(out.attempts[0].outcome.as_deref(), Some("node drained"));
    assert_eq!(out.attempts[1].node_name, "node-b");
    let status = node_a.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        docker_containers_of(&task, 1),
        0,
        "the drained attempt's container is gone"
    );

    let out = common::process::rgrid(&cluster.client_toml(), &["node", "drain", "no-such-node"]);
    assert_eq!(out.status.code(), Some(125));
}
