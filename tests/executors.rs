//! The node's executors end to end, with real Docker and real processes: what the node decides
//! for every container (network modes, user, read-only root, SIGTERM then SIGKILL, GPUs by device
//! id), an engine that stops answering (the attempt is handed back, not failed; the node shows
//! unhealthy), and the process executor's process groups, environment and signal deaths.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, NodeCluster};
use rgrid::local::ExecutorKind;
use rgrid::{NetworkMode, TaskRef, TaskSpec, TaskState};
use tokio::task::JoinHandle;

fn sh(script: &str) -> TaskSpec {
    TaskSpec::new(common::demo_image())
        .command(["sh", "-c", script])
        .cpu_millis(100)
        .memory_bytes(64 << 20)
}

/// An executable script that lists two GPUs as `nvidia-smi -L` does.
fn fake_gpu_probe(dir: &Path) -> Vec<String> {
    let probe = dir.join("fake-nvidia-smi");
    std::fs::write(
        &probe,
        "#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-aaaa)'\necho 'GPU 1: Fake GPU (UUID: GPU-bbbb)'\n",
    )
    .expect("write the probe");
    let status = Command::new("chmod").arg("+x").arg(&probe).status();
    assert!(status.is_ok_and(|s| s.success()), "chmod the probe");
    vec![probe.display().to_string()]
}

/// `docker inspect -f FORMAT` of the container running `task`, once it exists.
async fn inspect_running(task: &TaskRef, format: &str) -> String {
    let label = format!("label=rgrid.task={}", task.id);
    let id = eventually("the task's container", 30, || async {
        let out = Command::new("docker")
            .args(["ps", "-q", "--filter", &label])
            .output()
            .expect("docker ps");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!id.is_empty()).then_some(id)
    })
    .await;
    let out = Command::new("docker")
        .args(["inspect", "-f", format, &id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_decides_network_user_and_root_file_system() {
    common::demo_image();
    let mut cluster = NodeCluster::start().await;
    let mut strict = cluster.node_config("strict");
    strict.labels.insert("role".into(), "strict".into());
    strict.run_as = Some("65534:65534".into());
    strict.read_only_rootfs = true;
    cluster.add_node(strict).await;
    let mut open = cluster.node_config("open");
    open.labels.insert("role".into(), "open".into());
    open.allowed_networks = vec!["none".into(), "bridge".into()];
    open.gpu_probe = fake_gpu_probe(cluster.dir.path());
    cluster.add_node(open).await;
    let client = cluster.client().await;

    let strict = |spec: TaskSpec| spec.selector("role", "strict");
    let open = |spec: TaskSpec| spec.selector("role", "open");
    let host = client
        .submit(strict(sh("echo ran")).network(NetworkMode::Host))
        .await
        .expect("submit");
    let user = client
        .submit(strict(sh(
            "id -u; id -g; touch /tmp/ok && echo tmp-writable",
        )))
        .await
        .expect("submit");
    let sleeper = client.submit(strict(sh("sleep 60"))).await.expect("submit");
    let opted_in = client
        .submit(open(sh("touch /x || echo read-only")).read_only_rootfs())
        .await
        .expect("submit");
    let writable = client
        .submit(open(sh("touch /x && echo writable")))
        .await
        .expect("submit");
    let bridge = client
        .submit(open(sh("echo bridged")).network(NetworkMode::Bridge))
        .await
        .expect("submit");
    let gpu = client
        .submit(open(sh("echo $NVIDIA_VISIBLE_DEVICES")).gpus(1))
        .await
        .expect("submit");

    let out = client.get(&host).await.expect("get");
    assert_eq!(out.state, TaskState::Failed);
    let reason = out.reason.unwrap_or_default();
    assert!(
        reason.contains("\"host\"") && reason.contains("does not allow"),
        "{reason}"
    );
    assert!(out.stdout.is_empty(), "it never ran");

    let out = client.get(&user).await.expect("get");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "65534\n65534\ntmp-writable\n",
        "{out:?}"
    );

    common::wait_for_state(&client, &sleeper, TaskState::Running).await;
    assert_eq!(
        inspect_running(&sleeper, "{{.Config.User}}").await,
        "65534:65534"
    );
    assert_eq!(
        inspect_running(
            &sleeper,
            "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Init}} {{.HostConfig.NetworkMode}}"
        )
        .await,
        "true true none"
    );
    let log = inspect_running(&sleeper, "{{json .HostConfig.LogConfig}}").await;
    assert!(log.contains("\"max-size\":\"16777216\""), "{log}");
    // Cancel: SIGTERM reaches `sleep` through the init process, well within the 10 s grace.
    let t = std::time::Instant::now();
    assert_eq!(
        client.cancel(&sleeper).await.expect("cancel"),
        TaskState::Cancelled
    );
    let label = format!("label=rgrid.task={}", sleeper.id);
    eventually("the cancelled container to be removed", 30, || async {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
            .expect("docker ps");
        out.stdout.is_empty().then_some(())
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );

    let out = client.get(&opted_in).await.expect("get");
    assert_eq!(out.stdout, b"read-only\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let out = client.get(&writable).await.expect("get");
    assert_eq!(
        out.stdout, b"writable\n",
        "the open node's default is writable"
    );
    let out = client.get(&bridge).await.expect("get");
    assert_eq!(out.stdout, b"bridged\n", "allowed on the open node");

    // The engine got the GPU by device id: with the NVIDIA runtime the task sees it; without
    // (as here) the engine refuses the nvidia device request by name.
    let nodes = client.nodes().await.expect("nodes");
    let open_node = nodes
        .iter()
        .find(|n| n.name == "open")
        .expect("the open node");
    assert_eq!(open_node.total.gpus, 2);
    assert!(open_node.capabilities.contains(&"gpu".to_owned()));
    let out = client.get(&gpu).await.expect("get");
    match out.state {
        TaskState::Succeeded => assert_eq!(out.stdout, b"0\n"),
        _ => {
            let reason = out.reason.unwrap_or_default();
            assert!(reason.contains("nvidia"), "{reason}");
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_sends_sigterm_then_sigkill_after_the_grace() {
    common::demo_image();
    let mut cluster = NodeCluster::start().await;
    let mut config = cluster.node_config("n");
    config.kill_grace = Duration::from_secs(5);
    cluster.add_node(config).await;
    let client = cluster.client().await;
    let second = Duration::from_secs(1);
    let polite = client
        .submit(sh("trap 'echo got-term; exit 3' TERM; sleep 30 & wait").timeout(second))
        .await
        .expect("submit");
    let stubborn = client
        .submit(sh("trap '' TERM; echo ignoring; sleep 30").timeout(second))
        .await
        .expect("submit");
    let run_time = |out: &rgrid::TaskOutcome| {
        let attempt = &out.attempts[0];
        Duration::from_millis(attempt.ended_at_ms.unwrap_or(0) - attempt.started_at_ms)
    };

    let out = client.get(&polite).await.expect("get");
    assert_eq!(out.state, TaskState::Failed);
    assert!(out.reason.as_deref().unwrap_or("").contains("timed out"));
    assert_eq!(out.stdout, b"got-term\n", "SIGTERM came first");
    // Timeout 1 s + grace 5 s: it ended without waiting out the grace.
    assert!(
        run_time(&out) < Duration::from_secs(6),
        "{:?}",
        run_time(&out)
    );

    let out = client.get(&stubborn).await.expect("get");
    assert_eq!(out.state, TaskState::Failed);
    assert_eq!(out.stdout, b"ignoring\n");
    let took = run_time(&out);
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(15),
        "timeout 1 s + grace 5 s, then SIGKILL: {took:?}"
    );
    cluster.stop().await;
}

/// A Unix-socket proxy in front of the Docker engine that the test stops (every connection
/// cut, the socket gone) and starts again, so the engine "dies" for one node only.
struct EngineProxy {
    path: PathBuf,
    task: Option<JoinHandle<()>>,
}

impl EngineProxy {
    fn start(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("bind the proxy socket");
        let task = tokio::spawn(async move {
            // Dropped with this task: aborting it cuts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut engine).await;
                    }
                });
            }
        });
        Self {
            path: path.to_owned(),
            task: Some(task),
        }
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_engine_is_gone_hands_attempts_back_and_shows_unhealthy() {
    common::demo_image();
    let mut cluster = NodeCluster::start().await;
    let socket = cluster.dir.path().join("engine.sock");
    let mut proxy = EngineProxy::start(&socket);
    let mut config = cluster.node_config("n");
    config.docker_host = Some(socket.display().to_string());
    cluster.add_node(config).await;
    let client = cluster.client().await;

    proxy.stop();
    // No node-loss retries: a hand-back must not use one.
    let task = client
        .submit(sh("echo ran").node_loss_retries(0))
        .await
        .expect("submit");
    // The node hands the task back if it got it before its health check saw the engine go
    // (every 2 s); then it says why it takes no work, and gets none.
    let why = eventually("the node to be unhealthy", 30, || async {
        let nodes = client.nodes().await.expect("nodes");
        let node = nodes.iter().find(|n| n.name == "n")?;
        (node.state == "unhealthy").then(|| node.unhealthy.clone())?
    })
    .await;
    assert!(why.contains("Docker engine does not answer"), "{why}");
    let listed = common::process::rgrid(&cluster.head_client_file(), &["nodes"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.contains("unhealthy: the Docker engine"), "{table}");
    let queued = client.submit(sh("echo queued")).await.expect("submit");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let listed = client.tasks().await.expect("tasks");
    let waiting = listed.iter().find(|t| t.task == queued.id).expect("listed");
    assert_eq!(
        waiting.state,
        TaskState::Queued,
        "not sent to an unhealthy node"
    );
    let _proxy = EngineProxy::start(&socket);
    eventually("the node to be healthy again", 30, || async {
        let nodes = client.nodes().await.expect("nodes");
        nodes
            .iter()
            .any(|n| n.name == "n" && n.state == "ready" && n.unhealthy.is_none())
            .then_some(())
    })
    .await;

    let out = client.get(&task).await.expect("get");
    assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
    assert_eq!(out.stdout, b"ran\n");
    let (last, handed_back) = out.attempts.split_last().expect("attempts");
    for attempt in handed_back {
        let outcome = attempt.outcome.as_deref().unwrap_or("");
        assert!(outcome.contains("handed back by its node"), "{outcome}");
    }
    assert_eq!(last.outcome.as_deref(), Some("exited with code 0"));
    let out = client.get(&queued).await.expect("get");
    assert_eq!(
        out.attempts.len(),
        1,
        "it waited for the node to be healthy"
    );
    cluster.stop().await;
}

/// Processes of process group `group` that have not ended (zombies have).
fn group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name in parentheses: state, ppid, pgrp.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&group.to_string().as_str())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_executor_kills_the_whole_group_and_names_signals() {
    let mut cluster = NodeCluster::start().await;
    let mut config = cluster.node_config("proc");
    config.executor = ExecutorKind::Process;
    config.kill_grace = Duration::from_secs(1);
    config.gpu_probe = fake_gpu_probe(cluster.dir.path());
    cluster.add_node(config).await;
    let client = cluster.client().await;
    let node = &client.nodes().await.expect("nodes")[0];
    assert_eq!(node.total.gpus, 2);
    assert!(node.capabilities.contains(&"process".to_owned()));
    assert!(node.capabilities.contains(&"gpu".to_owned()));
    let process = |script: &str| {
        TaskSpec::new("ignored")
            .command(["sh", "-c", script])
            .cpu_millis(100)
            .memory_bytes(16 << 20)
    };

    // A grandchild that ignores SIGTERM, in the task's group.
    let pid_file = cluster.dir.path().join("group");
    let forker = client
        .submit(process(&format!(
            "echo $$ > {0}.tmp && mv {0}.tmp {0}; (trap '' TERM; sleep 300) & sleep 300",
            pid_file.display()
        )))
        .await
        .expect("submit");
    let group: u32 = eventually("the task's pid", 30, || async {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    eventually("the grandchild", 30, || async {
        (group_members(group).len() >= 2).then_some(())
    })
    .await;
    client.cancel(&forker).await.expect("cancel");
    eventually("the whole group gone", 30, || async {
        group_members(group).is_empty().then_some(())
    })
    .await;

    let env = client
        .submit(process("env").env("TASK_VAR", "given"))
        .await
        .expect("submit");
    let segv = client
        .submit(process("kill -SEGV $$"))
        .await
        .expect("submit");
    let lingering = client
        .submit(process("sleep 60 & echo done"))
        .await
        .expect("submit");
    let gpu_tasks = client
        .submit_batch(
            (0..3)
                .map(|_| {
                    process("echo $NVIDIA_VISIBLE_DEVICES $CUDA_VISIBLE_DEVICES; sleep 1").gpus(1)
                })
                .collect(),
        )
        .await
        .expect("submit");

    let out = client.get(&env).await.expect("get");
    let vars = String::from_utf8_lossy(&out.stdout);
    assert!(vars.contains("TASK_VAR=given\n"), "{vars}");
    assert!(
        vars.contains(&format!("RGRID_TASK_ID={}\n", env.id)),
        "{vars}"
    );
    assert!(vars.contains("RGRID_ATTEMPT=1\n"), "{vars}");
    for node_var in ["HOME=", "CARGO", "RUST_", "RGRID_NODE"] {
        assert!(
            !vars.contains(node_var),
            "the node's {node_var} leaked: {vars}"
        );
    }

    let out = client.get(&segv).await.expect("get");
    assert_eq!(out.state, TaskState::Failed);
    assert_eq!(out.exit_code, Some(128 + 11));
    let reason = out.reason.unwrap_or_default();
    assert!(reason.contains("SIGSEGV"), "{reason}");

    // Its leftover holds the output pipes; the result does not wait for it.
    let out = client.get(&lingering).await.expect("get");
    assert_eq!(out.state, TaskState::Succeeded);
    assert_eq!(out.stdout, b"done\n");
    let attempt = &out.attempts[0];
    let took = attempt.ended_at_ms.unwrap_or(u64::MAX) - attempt.started_at_ms;
    assert!(took < 10_000, "took {took} ms");

    let mut runs = Vec::new();
    for task in &gpu_tasks {
        let out = client.get(task).await.expect("get");
        assert_eq!(out.state, TaskState::Succeeded);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (visible, cuda) = text.split_once(' ').expect("two variables");
        assert_eq!(visible, cuda);
        let attempt = &out.attempts[0];
        runs.push((
            visible.to_owned(),
            attempt.started_at_ms,
            attempt.ended_at_ms.expect("ended"),
        ));
    }
    for (i, a) in runs.iter().enumerate() {
        assert!(a.0 == "0" || a.0 == "1", "{runs:?}");
        for b in &runs[i + 1..] {
            // Each task holds its GPU for a second. The times are taken around the workload
            // (an attempt's start before its process spawns, its end once the head has its
            // result), so back-to-back attempts on one GPU may seem to overlap by a few ms.
            let overlap_ms = a.2.min(b.2).saturating_sub(a.1.max(b.1));
            assert!(
                overlap_ms < 100 || a.0 != b.0,
                "two attempts shared a GPU: {runs:?}"
            );
        }
    }
    let node = &client.nodes().await.expect("nodes")[0];
    assert_eq!(node.free.gpus, 2, "the GPUs came back");
    cluster.stop().await;
}
