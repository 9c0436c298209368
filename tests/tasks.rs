//! Containerized tasks end to end: a real head and node in process, real QUIC on loopback, real
//! SQLite, real Docker.

mod common;

use std::time::Duration;

use rgrid::{ClientError, TaskSpec, TaskState};

fn sh(script: &str) -> TaskSpec {
    TaskSpec::new(common::demo_image())
        .command(["sh", "-c", script])
        .cpu_millis(250)
        .memory_bytes(64 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_exit_codes_and_oom() {
    let cluster = common::docker_cluster().await;
    let client = cluster.client().await.unwrap();

    let ok = client
        .submit(sh("echo hello; echo warn >&2"))
        .await
        .unwrap();
    let failing = client.submit(sh("echo partial; exit 3")).await.unwrap();
    // dd's 200M buffer cannot fit in a 32M limit without swap: the kernel kills it.
    let oom = client
        .submit(sh("dd if=/dev/zero of=/dev/null bs=200M count=1").memory_bytes(32 << 20))
        .await
        .unwrap();

    let out = client.get(&ok).await.unwrap();
    assert_eq!(out.state, TaskState::Succeeded);
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr, b"warn\n");
    assert_eq!(out.attempts.len(), 1);
    assert!(out.attempts[0].ended_at_ms.is_some());

    let out = client.get(&failing).await.unwrap();
    assert_eq!(out.state, TaskState::Failed);
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.stdout, b"partial\n");
    assert!(out.reason.unwrap().contains("code 3"));

    let out = client.get(&oom).await.unwrap();
    assert_eq!(out.state, TaskState::Failed);
    assert!(
        out.reason
            .as_deref()
            .unwrap_or("")
            .contains("out of memory"),
        "{:?}",
        out.reason
    );

    let tasks = client.tasks().await.unwrap();
    assert_eq!(tasks.len(), 3);
    let nodes = client.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].capabilities.contains(&"docker".to_owned()));
    assert_eq!(
        nodes[0].free, nodes[0].total,
        "every attempt released its resources"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tasks_end_with_clear_errors() {
    let cluster = common::docker_cluster().await;
    let client = cluster.client().await.unwrap();

    let missing = client
        .submit(TaskSpec::new("rgrid-test-no-such-image:never").command(["true"]))
        .await
        .unwrap();
    let huge = client
        .submit(sh("true").memory_bytes(100 << 40))
        .await
        .unwrap();
    let slow = client
        .submit(sh("sleep 30").timeout(Duration::from_millis(500)))
        .await
        .unwrap();

    let out = client.get(&missing).await.unwrap();
    assert_eq!(out.state, TaskState::Failed);
    let reason = out.reason.unwrap();
    assert!(reason.contains("could not be pulled"), "{reason}");
    assert!(reason.contains("rgrid-test-no-such-image"), "{reason}");

    let out = client.get(&huge).await.unwrap();
    assert_eq!(out.state, TaskState::Unschedulable);
    assert!(out.reason.unwrap().contains("memory"));

    let out = client.get(&slow).await.unwrap();
    assert_eq!(out.state, TaskState::Failed);
    assert!(out.reason.unwrap().contains("timed out"));

    // Rejected before anything is stored.
    match client.submit(sh("true").cpu_millis(0)).await {
        Err(ClientError::Rejected { message, .. }) => assert!(message.contains("cpu"), "{message}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(client.tasks().await.unwrap().len(), 3);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmission_is_idempotent_and_tasks_run_in_parallel() {
    let cluster = common::docker_cluster().await;
    let client = cluster.client().await.unwrap();
    // Four tasks of 500m on a 2000m node are placed at once: their attempts overlap in time.
    let specs: Vec<TaskSpec> = (0..4)
        .map(|i| sh(&format!("sleep 1; echo {i}")).cpu_millis(500))
        .collect();
    let refs = client.submit_batch(specs.clone()).await.unwrap();
    let again = client.submit_batch(specs).await.unwrap();
    assert_eq!(refs, again);
    let mut spans = Vec::new();
    for (i, task) in refs.iter().enumerate() {
        let out = client.get(task).await.unwrap();
        assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        assert_eq!(out.attempts.len(), 1, "ran once");
        let attempt = &out.attempts[0];
        spans.push((attempt.started_at_ms, attempt.ended_at_ms.unwrap()));
    }
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(last_start < first_end, "all four ran at once: {spans:?}");
    assert_eq!(client.tasks().await.unwrap().len(), 4);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_retries_are_opt_in_and_bounded() {
    let cluster = common::docker_cluster().await;
    let client = cluster.client().await.unwrap();
    let plain = client.submit(sh("exit 7")).await.unwrap();
    let retried = client
        .submit(sh("exit 7").retry_on_failure(2, Duration::from_millis(100)))
        .await
        .unwrap();

    let out = client.get(&plain).await.unwrap();
    assert_eq!(out.attempts.len(), 1, "no retries by default");

    let out = client.get(&retried).await.unwrap();
    assert_eq!(out.state, TaskState::Failed);
    assert_eq!(out.exit_code, Some(7));
    let numbers: Vec<u32> = out.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3], "the first run and two retries");
    assert!(out
        .attempts
        .iter()
        .all(|a| a.outcome.as_deref() == Some("exited with code 7")));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_and_queued_tasks() {
    let cluster = common::docker_cluster().await;
    let client = cluster.client().await.unwrap();
    // 2000m node: the first takes it all, the second waits in the queue.
    let running = client
        .submit(sh("sleep 60").cpu_millis(2000))
        .await
        .unwrap();
    let queued = client
        .submit(sh("echo never").cpu_millis(2000))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client
        .tasks()
        .await
        .unwrap()
        .iter()
        .any(|t| t.task == running.id && t.state == TaskState::Running)
    {
        assert!(std::time::Instant::now() < deadline, "task never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The listing says why the queued one waits.
    let listed = client.tasks().await.unwrap();
    let waiting = listed.iter().find(|t| t.task == queued.id).unwrap();
    assert_eq!(waiting.state, TaskState::Queued);
    let detail = waiting.detail.as_deref().unwrap_or("");
    assert!(detail.contains("cpu=2000m"), "{detail}");
    assert_eq!(client.cancel(&queued).await.unwrap(), TaskState::Cancelled);
    assert_eq!(client.cancel(&running).await.unwrap(), TaskState::Cancelled);
    assert_eq!(
        client.get(&running).await.unwrap().state,
        TaskState::Cancelled
    );
    let out = client.get(&queued).await.unwrap();
    assert_eq!(out.state, TaskState::Cancelled);
    assert!(out.attempts.is_empty(), "a cancelled queued task never ran");
    // The killed container gives its resources back.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node = &client.nodes().await.unwrap()[0];
        if node.free == node.total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "resources not released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cancelling a finished task changes nothing; an unknown one is an error.
    assert_eq!(client.cancel(&running).await.unwrap(), TaskState::Cancelled);
    assert!(client
        .cancel(&rgrid::TaskRef {
            id: rgrid::TaskId::new()
        })
        .await
        .is_err());
    cluster.stop().await;
}
