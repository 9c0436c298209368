//! Logs you can follow, end to end on a real head, real Docker nodes and the demo image: output
//! arrives while the task runs, the log of an attempt whose node was SIGKILLed stays readable
//! (and a re-adopted container's log goes on without repeats), a log cut at the head's
//! `max_output_bytes` says how much it dropped, and the CLI follows a log.

mod common;

use common::process::{free_udp_port, rgrid, start_head_and_node, start_node, wait_ready, Logs};
use common::{demo_image, within, NodeCluster};
use futures::StreamExt;
use rgrid::{Channel, Client, ClientError, LogEvent, TaskRef, TaskSpec, TaskState};

/// A task of the demo image running `script` with `sh -c`.
fn sh(script: &str) -> TaskSpec {
    TaskSpec::new(demo_image())
        .command(["sh", "-c", script])
        .memory_bytes(64 << 20)
        .cpu_millis(250)
}

/// A head (its config changed by `adjust`) and one Docker node.
async fn cluster(adjust: impl FnOnce(&mut rgrid_head::HeadConfig)) -> NodeCluster {
    demo_image();
    let mut cluster = NodeCluster::start_with(adjust).await;
    let config = cluster.node_config("n1");
    cluster.add_node(config).await;
    cluster
}

/// What a log's events add up to: stdout, stderr, the dropped counts and the final state.
#[derive(Debug, Default)]
struct Read {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    dropped: Vec<(u32, Channel, u64)>,
    end: Option<Option<TaskState>>,
}

async fn read_all(
    mut events: futures::stream::BoxStream<'_, Result<LogEvent, ClientError>>,
) -> Read {
    let mut read = Read::default();
    while let Some(event) = events.next().await {
        match event.expect("a log event") {
            LogEvent::Chunk { channel, bytes, .. } => match channel {
                Channel::Stdout => read.stdout.extend(bytes),
                Channel::Stderr => read.stderr.extend(bytes),
            },
            LogEvent::Dropped {
                attempt,
                channel,
                bytes,
            } => read.dropped.push((attempt, channel, bytes)),
            LogEvent::End { state } => read.end = Some(state),
        }
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_arrives_while_the_task_runs() {
    within(120, async {
        let cluster = cluster(|_| {}).await;
        let client = cluster.client().await;
        let task = client
            .submit(sh("echo first; sleep 3; echo second >&2; echo third"))
            .await
            .expect("submit");
        let mut events = client.logs(&task).follow();
        let first = events.next().await.expect("an event").expect("a log event");
        let LogEvent::Chunk {
            attempt,
            channel,
            offset,
            bytes,
        } = first
        else {
            panic!("the first event is output: {first:?}");
        };
        assert_eq!((attempt, channel, offset), (1, Channel::Stdout, 0));
        assert_eq!(bytes, b"first\n");
        let state = client
            .task_info(&task)
            .await
            .expect("info")
            .map(|t| t.state);
        assert_eq!(
            state,
            Some(TaskState::Running),
            "the first line arrived while the task ran"
        );
        let rest = read_all(events).await;
        assert_eq!(rest.stdout, b"third\n");
        assert_eq!(rest.stderr, b"second\n");
        assert_eq!(rest.end, Some(Some(TaskState::Succeeded)));
        // Read again once it ended: the same, whole.
        let again = read_all(client.logs(&task).so_far()).await;
        assert_eq!(again.stdout, b"first\nthird\n");
        assert_eq!(again.stderr, b"second\n");
        assert!(again.dropped.is_empty(), "{:?}", again.dropped);
        // An unknown task is refused.
        let unknown = TaskRef {
            id: rgrid::TaskId::new(),
        };
        let refused = client
            .logs(&unknown)
            .so_far()
            .next()
            .await
            .expect("an answer");
        assert!(
            matches!(&refused, Err(ClientError::Refused(e)) if e.message.contains("no task")),
            "{refused:?}"
        );
        cluster.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_at_max_output_bytes_says_how_much_was_dropped() {
    within(120, async {
        let cluster = cluster(|config| config.max_output_bytes = "1000".into()).await;
        let client = cluster.client().await;
        let task = client
            .submit(sh("head -c 5000 /dev/zero | tr '\\0' a; echo oops >&2"))
            .await
            .expect("submit");
        let read = read_all(client.logs(&task).follow()).await;
        assert_eq!(read.end, Some(Some(TaskState::Succeeded)));
        assert_eq!(read.stdout, vec![b'a'; 1000]);
        assert_eq!(read.stderr, b"oops\n");
        assert_eq!(read.dropped, vec![(1, Channel::Stdout, 4000)]);
        // The result is cut at the same size before the head writes it.
        let outcome = client.get(&task).await.expect("get");
        assert_eq!(outcome.stdout.len(), 1000);
        cluster.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_of_an_attempt_whose_node_was_killed_stays_readable() {
    demo_image();
    let dir = Logs(tempfile::tempdir().unwrap());
    let dir = dir.0.path();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    within(120, async {
        let (_head, node, config) = start_head_and_node(dir, &listen);
        let client = Client::connect_file(&config).await.expect("connect");
        let task = client
            .submit(sh("echo before; sleep 120"))
            .await
            .expect("submit");
        let mut events = client.logs(&task).follow();
        let first = events.next().await.expect("an event").expect("a log event");
        assert!(
            matches!(&first, LogEvent::Chunk { bytes, .. } if bytes == b"before\n"),
            "{first:?}"
        );
        node.signal("KILL");
        drop(node);
        let read = read_all(client.logs(&task).attempt(1).so_far()).await;
        assert_eq!(read.stdout, b"before\n");
        assert_eq!(read.end, Some(None), "the task has not ended");
        // The same through the CLI.
        let out = rgrid(&config, &["logs", &task.id.to_string(), "--attempt", "1"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"before\n");
        // The node comes back and re-adopts its container, whose engine log starts from the
        // beginning again: the head's log goes on from where it was, without repeats.
        let _node = start_node(dir, &listen, "n1", 2000);
        wait_ready(&config, "n1");
        let cancelled = client.cancel(&task).await.expect("cancel");
        assert_eq!(cancelled, TaskState::Cancelled);
        let read = read_all(client.logs(&task).attempt(1).follow()).await;
        assert_eq!(read.stdout, b"before\n");
        assert_eq!(read.end, Some(Some(TaskState::Cancelled)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_a_log_until_the_task_ends() {
    demo_image();
    let dir = Logs(tempfile::tempdir().unwrap());
    let dir = dir.0.path();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    within(120, async {
        let (_head, _node, config) = start_head_and_node(dir, &listen);
        let client = Client::connect_file(&config).await.expect("connect");
        let task = client
            .submit(sh("echo one; sleep 1; echo two; echo err >&2"))
            .await
            .expect("submit");
        let out = rgrid(&config, &["logs", "-f", &task.id.to_string()]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"one\ntwo\n");
        assert_eq!(out.stderr, b"err\n");
        let outcome = client.get(&task).await.expect("get");
        assert_eq!(outcome.state, TaskState::Succeeded);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_write_only_the_logs_of_its_own_attempts() {
    use rgrid_core::protocol::{ErrorKind, Request, Response};
    use rgrid_core::AttemptId;
    within(120, async {
        let mut cluster = cluster(|_| {}).await;
        let client = cluster.client().await;
        let task = client
            .submit(sh("echo mine; sleep 30"))
            .await
            .expect("submit");
        let mut events = client.logs(&task).follow();
        events.next().await.expect("an event").expect("n1's output");
        // Another node, connecting with its own (real) certificate.
        let n2 = cluster.node_config("n2");
        cluster.add_node(n2.clone()).await;
        let head = n2.head.parse().expect("an address");
        let creds = rgrid_node::identity::load_or_join(&n2.state_dir, head, None, "n2")
            .await
            .expect("n2's credentials");
        let tls = rgrid_core::tls::client_config(&creds.ca_pem, &creds.identity).expect("tls");
        let (_endpoint, connection) = rgrid_core::transport::connect(head, tls, "test")
            .await
            .expect("n2 connects");
        for attempt in [
            AttemptId {
                task: task.id,
                attempt: 1,
            },
            AttemptId {
                task: rgrid::TaskId::new(),
                attempt: 1,
            },
        ] {
            let answer = rgrid_core::transport::call(&connection, &Request::AttemptLog { attempt })
                .await
                .expect("an answer");
            assert!(
                matches!(&answer, Response::Error(e) if e.kind == ErrorKind::Forbidden),
                "{answer:?}"
            );
        }
        // n1's log is as n1 wrote it.
        let read = read_all(client.logs(&task).so_far()).await;
        assert_eq!(read.stdout, b"mine\n");
        client.cancel(&task).await.expect("cancel");
        cluster.stop().await;
    })
    .await;
}
