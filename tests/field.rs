//! Nodes in the field: real `rgrid-head` and `rgrid-node` processes (Docker executor), a node
//! cut off from its head by a forwarder the test controls ([`common::Cut`]), SIGKILLed and
//! restarted on its state dir.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{
    free_udp_port, nodes, start_head_env, start_node_with, wait_for, wait_ready, Daemon,
};
use common::Cut;
use rgrid::{Client, TaskRef, TaskSpec, TaskState};

fn sh(script: &str) -> TaskSpec {
    TaskSpec::new(common::demo_image())
        .command(["sh", "-c", script])
        .cpu_millis(500)
        .memory_bytes(32 << 20)
}

/// A head process (with `head_toml` as its config) and one node, `node-a`, behind a [`Cut`].
struct Field {
    dir: tempfile::TempDir,
    /// The head's own address (not behind the cut).
    listen: String,
    cut: Cut,
    _head: Daemon,
}

impl Field {
    fn start(head_toml: &str) -> Self {
        Self::start_env(head_toml, &[])
    }

    /// [`Field::start`] with the head's environment extended by `env`.
    fn start_env(head_toml: &str, env: &[(&str, &str)]) -> Self {
        common::demo_image();
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let config = dir.path().join("head.toml");
        std::fs::write(&config, head_toml).unwrap();
        let head = start_head_env(
            dir.path(),
            &listen,
            &["--config", config.to_str().unwrap()],
            env,
        );
        let field = Self {
            dir,
            cut: Cut::new(&listen),
            listen,
            _head: head,
        };
        wait_for("client.toml", || field.client_toml().exists());
        field
    }

    fn client_toml(&self) -> PathBuf {
        self.dir.path().join("head").join("client.toml")
    }

    /// Starts `node-a` (again, on the same state dir) behind the cut; waits until it is ready.
    fn node(&self, extra: &[&str]) -> Daemon {
        let node = start_node_with(
            self.dir.path(),
            &self.cut.addr.to_string(),
            "node-a",
            2000,
            extra,
        );
        wait_ready(&self.client_toml(), "node-a");
        node
    }

    /// A node config file holding `toml`; its path.
    fn node_toml(&self, toml: &str) -> String {
        let path = self.dir.path().join("node.toml");
        std::fs::write(&path, toml).unwrap();
        path.display().to_string()
    }

    /// `node-a`'s state as `rgrid nodes` shows it.
    fn node_state(&self) -> Option<String> {
        nodes(&self.client_toml())
            .iter()
            .find(|n| n["name"] == "node-a")
            .and_then(|n| n["state"].as_str().map(str::to_owned))
    }

    fn spool(&self) -> Vec<PathBuf> {
        spooled(&self.dir.path().join("node-a"))
    }

    async fn client(&self) -> Client {
        Client::connect_file(self.client_toml()).await.unwrap()
    }

    async fn wait_running(&self, task: &TaskRef) {
        let client = self.client().await;
        common::wait_for_state(&client, task, TaskState::Running).await;
    }
}

impl Drop for Field {
    fn drop(&mut self) {
        common::process::print_logs_if_panicking(self.dir.path(), 200);
    }
}

/// The result files in a node's spool.
fn spooled(state_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state_dir.join("spool"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "result"))
        .collect()
}

/// Containers of `task` (any attempt, running or not), by id.
fn containers_of(task: &TaskRef) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label=rgrid.task={}", task.id))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_re_adopts_its_running_container() {
    let field = Field::start("");
    let node = field.node(&[]);
    let client = field.client().await;
    let task = client
        .submit(sh(
            "echo before; sleep 5; echo after attempt $RGRID_ATTEMPT",
        ))
        .await
        .unwrap();
    field.wait_running(&task).await;
    let before = containers_of(&task);
    assert_eq!(before.len(), 1);

    node.signal("KILL");
    drop(node);
    // Within the head's 5 s heartbeat timeout.
    let _node = field.node(&[]);
    assert_eq!(containers_of(&task), before, "the container was kept");

    let out = client.get(&task).await.unwrap();
    assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
    assert_eq!(out.stdout, b"before\nafter attempt 1\n", "all its output");
    assert_eq!(out.attempts.len(), 1, "nothing reran: {:?}", out.attempts);
    wait_for("the container to be removed", || {
        containers_of(&task).is_empty()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_adopted_container_keeps_its_timeout() {
    let field = Field::start("");
    let node = field.node(&[]);
    let client = field.client().await;
    let task = client
        .submit(sh("sleep 60").timeout(Duration::from_secs(8)))
        .await
        .unwrap();
    field.wait_running(&task).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    node.signal("KILL");
    drop(node);
    let restarted = Instant::now();
    let _node = field.node(&[]);

    let out = client.get(&task).await.unwrap();
    assert_eq!(out.state, TaskState::Failed, "{out:?}");
    assert!(
        out.reason
            .as_deref()
            .is_some_and(|r| r.contains("timed out")),
        "{out:?}"
    );
    assert_eq!(out.attempts.len(), 1, "{:?}", out.attempts);
    // About 4 s of its 8 were left; counted again from the restart, it would be 8.
    assert!(
        restarted.elapsed() < Duration::from_secs(7),
        "the timeout counts from the first start, not the restart: {:?}",
        restarted.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_finished_while_cut_off_survives_a_node_kill() {
    // The head keeps the silent node's attempt for the whole test.
    let field = Field::start("heartbeat_timeout = \"60s\"\n");
    let node = field.node(&[]);
    let client = field.client().await;
    let task = client.submit(sh("sleep 1; echo spooled")).await.unwrap();
    field.wait_running(&task).await;

    field.cut.set(true);
    wait_for("the result in the spool", || field.spool().len() == 1);
    node.signal("KILL");
    drop(node);
    field.cut.set(false);
    let _node = field.node(&[]);

    let out = client.get(&task).await.unwrap();
    assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
    assert_eq!(out.stdout, b"spooled\n");
    assert_eq!(out.attempts.len(), 1, "nothing reran: {:?}", out.attempts);
    wait_for("the acknowledged result to leave the spool", || {
        field.spool().is_empty()
    });
    let listed = client.tasks().await.unwrap();
    assert!(listed.iter().all(|t| t.attempt == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_disconnect_grace_keeps_its_attempt_through_a_cut() {
    // The head's own heartbeat timeout stays at 5 s; the node asks for 60 s.
    let field = Field::start("");
    let _node = field.node(&["--config", &field.node_toml("disconnect_grace = \"60s\"\n")]);
    let client = field.client().await;
    let task = client.submit(sh("sleep 24; echo kept")).await.unwrap();
    field.wait_running(&task).await;

    field.cut.set(true);
    let cut_at = Instant::now();
    // Three missed heartbeats (about 3 s) make it suspect; from then on it stays suspect, not
    // dead, for as long as the cut lasts.
    while field.node_state().as_deref() != Some("suspect") {
        assert!(
            cut_at.elapsed() < Duration::from_secs(10),
            "the cut-off node never turned suspect: {:?}",
            field.node_state()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while cut_at.elapsed() < Duration::from_secs(20) {
        let state = field.node_state();
        assert_eq!(state.as_deref(), Some("suspect"), "cut off, not dead");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    field.cut.set(false);

    let out = client.get(&task).await.unwrap();
    assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
    assert_eq!(out.stdout, b"kept\n");
    assert_eq!(
        out.attempts.len(),
        1,
        "kept, not requeued: {:?}",
        out.attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_reaching_a_draining_node_are_handed_back() {
    // The head does not hear that the node drains, so it keeps assigning to it: the window in
    // which an assignment crosses the node's `Draining`, held open.
    let field = Field::start_env("", &[("FAILPOINTS", "head-misses-draining=return")]);
    let node = field.node(&[]);
    let client = field.client().await;
    let long = client.submit(sh("sleep 60")).await.unwrap();
    field.wait_running(&long).await;
    node.signal("TERM");
    wait_for("node-a to drain", || {
        std::fs::read_to_string(field.dir.path().join("node-a.log"))
            .is_ok_and(|log| log.contains("draining: no new work"))
    });

    // No node-loss retries: a hand-back must not use one.
    let task = client
        .submit(sh("echo elsewhere").node_loss_retries(0))
        .await
        .unwrap();
    common::eventually("a hand-back by the draining node", 30, || async {
        let tasks = client.tasks().await.unwrap();
        let listed = tasks.iter().find(|t| t.task == task.id)?;
        listed
            .detail
            .as_deref()
            .filter(|d| d.contains("handed back") && d.contains("the node is draining"))
            .map(drop)
    })
    .await;

    // Once the drain is over, node-b runs it.
    let _other = start_node_with(field.dir.path(), &field.listen, "node-b", 2000, &[]);
    wait_ready(&field.client_toml(), "node-b");
    client.cancel(&long).await.unwrap();
    let out = client.get(&task).await.unwrap();
    assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
    assert_eq!(out.stdout, b"elsewhere\n");
    let (last, earlier) = out.attempts.split_last().unwrap();
    assert_eq!(last.node_name, "node-b", "{:?}", out.attempts);
    assert!(!earlier.is_empty(), "{:?}", out.attempts);
    for attempt in earlier {
        assert_eq!(attempt.node_name, "node-a", "{:?}", out.attempts);
        assert!(
            attempt
                .outcome
                .as_deref()
                .is_some_and(|o| o.contains("the node is draining")),
            "{:?}",
            out.attempts
        );
    }
}

/// Whether this process may make mount namespaces (root): required under `CI=true`.
fn may_unshare() -> bool {
    let ok = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "the DNS test needs `unshare --mount` (root) under CI=true"
    );
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_its_head_to_a_new_address() {
    if !may_unshare() {
        eprintln!("skipping: `unshare --mount` is not permitted here");
        return;
    }
    common::demo_image();
    let logs = common::process::Logs(tempfile::tempdir().unwrap());
    let dir = &logs.0;
    let port = free_udp_port();
    // The node sees its own /etc/hosts (bind-mounted in a mount namespace of its own), where the
    // test moves the head's name; rewritten in place, so the mount keeps showing it.
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.2 head.rgrid.test\n").unwrap();
    let head_at = |ip: &str| start_head_env(dir.path(), &format!("{ip}:{port}"), &[], &[]);
    let mut head = head_at("127.0.0.2");
    let client_toml = dir.path().join("head").join("client.toml");
    wait_for("client.toml", || client_toml.exists());
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
    ]
    .map(std::ffi::OsStr::new);
    let mut wrapper = wrapper.to_vec();
    wrapper.push(hosts.as_os_str());
    let _node = common::process::start_node_under(
        &wrapper,
        dir.path(),
        &format!("head.rgrid.test:{port}"),
        "node-a",
        2000,
        &[],
    );
    wait_ready(&client_toml, "node-a");

    // The head moves: the old address has nothing behind it, the name points at the new one.
    head.signal("KILL");
    let _ = head.0.wait();
    std::fs::remove_file(&client_toml).unwrap();
    head = head_at("127.0.0.3");
    std::fs::write(&hosts, "127.0.0.3 head.rgrid.test\n").unwrap();
    wait_for("client.toml", || client_toml.exists());
    wait_ready(&client_toml, "node-a");
    let client = Client::connect_file(&client_toml).await.unwrap();
    let task = client.submit(sh("echo found")).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), client.get(&task))
        .await
        .expect("the node reaches the head at its new address")
        .unwrap();
    assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
    assert_eq!(out.stdout, b"found\n");
    drop(head);
}
