//! Task outputs and dependencies end to end, on a real head, a real Docker node and the demo
//! image: a DAG passing files, failures and cancels propagating to dependants, Pending tasks
//! across a head restart, the refusals (each a clear error, nothing half-stored) and a 100 MiB
//! output passed into another task through a head whose memory stays flat.

mod common;

use common::process::{
    free_udp_port, memory_of, start_head, start_head_and_node, start_head_ready, start_node_with,
    wait_for, wait_ready, Logs,
};
use common::{demo_image, eventually, within, NodeCluster};
use rgrid::{Client, SubmitAnswer, TaskRef, TaskSpec, TaskState};

/// A task of the demo image running `script` with `sh -c`.
fn sh(script: &str) -> TaskSpec {
    TaskSpec::new(demo_image())
        .command(["sh", "-c", script])
        .memory_bytes(64 << 20)
        .cpu_millis(250)
}

/// A head and one Docker node whose outputs may be up to `max_output_bytes`.
async fn cluster(max_output_bytes: usize) -> NodeCluster {
    demo_image();
    let mut cluster = NodeCluster::start().await;
    let config = rgrid_node::NodeConfig {
        max_output_bytes,
        ..cluster.node_config("n1")
    };
    cluster.add_node(config).await;
    cluster
}

/// A head with `failpoints` (as in `FAILPOINTS`) and one node, ready: `(head, node, client.toml)`.
fn start_with_failpoints(
    dir: &std::path::Path,
    listen: &str,
    failpoints: &str,
) -> (
    common::process::Daemon,
    common::process::Daemon,
    std::path::PathBuf,
) {
    let head = common::process::start_head_env(dir, listen, &[], &[("FAILPOINTS", failpoints)]);
    let client_toml = dir.join("head/client.toml");
    wait_for("the head's client.toml", || client_toml.exists());
    let node = start_node_with(dir, listen, "n1", 2000, &[]);
    wait_ready(&client_toml, "n1");
    (head, node, client_toml)
}

async fn state_of(client: &Client, task: &TaskRef) -> Option<TaskState> {
    client
        .task_info(task)
        .await
        .expect("task info")
        .map(|t| t.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_stage_dag_passes_files_and_directories() {
    within(180, async {
        let cluster = cluster(16 << 20).await;
        let client = cluster.client().await;
        let first = sh("mkdir -p /out/dir && echo hello world > /out/a && echo x > /out/dir/y")
            .output("a", "/out/a")
            .output("dir", "/out/dir");
        let first_ref = TaskRef { id: first.id };
        let second = sh("mkdir -p /out && tr a-z A-Z < /in/a > /out/b")
            .input("/in/a", first_ref.output("a"))
            .output("b", "/out/b");
        let second_ref = TaskRef { id: second.id };
        let third = sh("cat /in/b /in/a")
            .input("/in/b", second_ref.output("b"))
            .input("/in/a", first_ref.output("a"));
        // One batch, in order: a dependency may be earlier in the same submission.
        let refs = client
            .submit_batch(vec![first, second, third])
            .await
            .expect("submitted");
        let outcome = client.get(&refs[2]).await.expect("the last stage ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        assert_eq!(outcome.stdout, b"HELLO WORLD\nhello world\n");
        let first = client.get(&refs[0]).await.expect("the first stage");
        let a = first.output("a").expect("output a");
        assert_eq!(
            a,
            rgrid::ObjectRef::of(b"hello world\n"),
            "a file is its content"
        );
        let dir = first.output("dir").expect("output dir");
        let mut tar = Vec::new();
        client.get_object(&dir, &mut tar).await.expect("download");
        assert!(
            tar.windows(5).any(|w| w == b"ustar") && tar.windows(2).any(|w| w == b"x\n"),
            "a directory is a tar of it"
        );
        cluster.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_propagates_two_levels_and_nothing_runs() {
    within(120, async {
        let cluster = cluster(16 << 20).await;
        let client = cluster.client().await;
        let failing = sh("exit 3").output("o", "/o");
        let failing_ref = TaskRef { id: failing.id };
        let child = sh("cat /in")
            .input("/in", failing_ref.output("o"))
            .output("o", "/in");
        let child_ref = TaskRef { id: child.id };
        let grandchild = sh("cat /in").input("/in", child_ref.output("o"));
        let resubmitted = failing.clone();
        let refs = client
            .submit_batch(vec![failing, child, grandchild])
            .await
            .expect("submitted");
        let outcomes = client.get_many(&refs).await.expect("every task ends");
        assert_eq!(outcomes[0].state, TaskState::Failed);
        for (outcome, dependency) in outcomes[1..].iter().zip(&refs) {
            assert_eq!(outcome.state, TaskState::DependencyFailed, "{outcome:?}");
            let reason = outcome.reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains(&dependency.id.to_string()) && reason.contains("failed"),
                "the reason names the dependency and how it ended: {reason}"
            );
            assert!(outcome.attempts.is_empty(), "it never ran");
        }
        // A task submitted later on a finished, failed dependency fails at once.
        let late = client
            .submit(sh("true").input("/in", child_ref.output("o")))
            .await
            .expect("submitted");
        let outcome = client.get(&late).await.expect("it ends");
        assert_eq!(outcome.state, TaskState::DependencyFailed);
        // So does one submitted with a resubmission of its finished dependency.
        let again = client
            .submit_batch(vec![
                resubmitted,
                sh("true").input("/in", failing_ref.output("o")),
            ])
            .await
            .expect("submitted");
        let outcome = client.get(&again[1]).await.expect("it ends");
        assert_eq!(outcome.state, TaskState::DependencyFailed, "{outcome:?}");
        cluster.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_fails_or_recursively_cancels_dependants() {
    within(120, async {
        let cluster = cluster(16 << 20).await;
        let client = cluster.client().await;
        let chain = |root: TaskSpec| {
            let root_ref = TaskRef { id: root.id };
            let child = sh("true")
                .input("/in", root_ref.output("o"))
                .output("o", "/in");
            let child_ref = TaskRef { id: child.id };
            let grandchild = sh("true").input("/in", child_ref.output("o"));
            vec![root, child, grandchild]
        };
        let recursive = client
            .submit_batch(chain(sh("sleep 60").output("o", "/o")))
            .await
            .expect("submitted");
        let plain = client
            .submit_batch(chain(sh("sleep 60").output("o", "/o")))
            .await
            .expect("submitted");
        assert_eq!(
            state_of(&client, &recursive[2]).await,
            Some(TaskState::Pending)
        );
        client
            .cancel_recursive(&recursive[0])
            .await
            .expect("cancel");
        client.cancel(&plain[0]).await.expect("cancel");
        let outcomes = client.get_many(&recursive).await.expect("they end");
        for outcome in &outcomes {
            assert_eq!(outcome.state, TaskState::Cancelled, "{outcome:?}");
        }
        let outcomes = client.get_many(&plain).await.expect("they end");
        assert_eq!(outcomes[0].state, TaskState::Cancelled);
        assert_eq!(outcomes[1].state, TaskState::DependencyFailed);
        assert_eq!(outcomes[2].state, TaskState::DependencyFailed);
        cluster.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dependencies_and_outputs_are_refused_clearly_and_store_nothing() {
    within(120, async {
        let cluster = cluster(1 << 20).await;
        let client = cluster.client().await;
        let before = client.objects().await.expect("objects").len();
        let refused = |answer: &(rgrid::TaskId, SubmitAnswer)| match answer {
            (_, SubmitAnswer::Rejected(message)) => message.clone(),
            other => panic!("accepted: {other:?}"),
        };
        let unknown = TaskRef {
            id: rgrid::TaskId::new(),
        };
        let declared = sh("true").output("o", "/o");
        let declared_ref = TaskRef { id: declared.id };
        let answers = client
            .submit_answers(vec![
                sh("true").input("/in", unknown.output("o")),
                sh("true").output("o", "/out/../../etc/passwd"),
                declared,
                sh("true").input("/in", declared_ref.output("other")),
            ])
            .await
            .expect("answered");
        let message = refused(&answers[0]);
        assert!(message.contains("does not know"), "{message}");
        let message = refused(&answers[1]);
        assert!(
            message.contains("output o") && message.contains("escape"),
            "{message}"
        );
        assert_eq!(answers[2].1, SubmitAnswer::Accepted);
        let message = refused(&answers[3]);
        assert!(
            message.contains("declares no output \"other\""),
            "{message}"
        );
        assert!(
            client.tasks().await.expect("tasks").len() == 1,
            "only the valid task was stored"
        );

        let missing = client
            .submit(sh("true").output("result", "/no/such/file"))
            .await
            .expect("submitted");
        let outcome = client.get(&missing).await.expect("it ends");
        assert_eq!(outcome.state, TaskState::Failed);
        let reason = outcome.reason.unwrap_or_default();
        assert!(
            reason.contains("declared output result is missing")
                && reason.contains("/no/such/file"),
            "{reason}"
        );
        let large = client
            .submit(
                sh("mkdir -p /out && head -c 2097152 /dev/zero > /out/big")
                    .output("big", "/out/big"),
            )
            .await
            .expect("submitted");
        let outcome = client.get(&large).await.expect("it ends");
        assert_eq!(outcome.state, TaskState::Failed);
        let reason = outcome.reason.unwrap_or_default();
        assert!(reason.contains("larger than max_output_bytes"), "{reason}");
        assert!(outcome.outputs.is_empty());
        let _ = client.get(&declared_ref).await.expect("it ends");
        assert_eq!(
            client.objects().await.expect("objects").len(),
            before,
            "no object was stored for the refused outputs"
        );
        cluster.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_come_back_pending_after_a_head_restart() {
    demo_image();
    let dir = Logs(tempfile::tempdir().unwrap());
    let dir = dir.0.path();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    within(120, async {
        let (mut head, _node, client_toml) = start_head_and_node(dir, &listen);
        let client = Client::connect_file(&client_toml).await.expect("connect");
        let root = sh("sleep 4; echo done > /o").output("o", "/o");
        let root_ref = TaskRef { id: root.id };
        let child = sh("cat /in").input("/in", root_ref.output("o"));
        let refs = client
            .submit_batch(vec![root, child])
            .await
            .expect("submit");
        assert_eq!(state_of(&client, &refs[1]).await, Some(TaskState::Pending));
        head.signal("KILL");
        let _ = head.0.wait();
        drop(client);
        let _head = start_head(dir, &listen);
        let client = eventually("the restarted head", 30, || async {
            Client::connect_file(&client_toml).await.ok()
        })
        .await;
        assert_eq!(
            state_of(&client, &refs[1]).await,
            Some(TaskState::Pending),
            "it waits again for its dependency"
        );
        let outcome = client.get(&refs[1]).await.expect("the dependant ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        assert_eq!(outcome.stdout, b"done\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_output_passes_into_another_task_through_a_flat_head() {
    demo_image();
    let dir = Logs(tempfile::tempdir().unwrap());
    let dir = dir.0.path();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    within(240, async {
        let (head, client_toml) = start_head_ready(dir, &listen);
        let node_toml = dir.join("node.toml");
        std::fs::write(&node_toml, "max_output_bytes = 209715200\n").unwrap();
        let _node = start_node_with(
            dir,
            &listen,
            "n1",
            2000,
            &["--config", node_toml.to_str().unwrap()],
        );
        wait_ready(&client_toml, "n1");
        let client = Client::connect_file(&client_toml).await.expect("connect");
        // Warm up: the first transfer sets up what every later one reuses.
        client.put_bytes(vec![3u8; 1 << 20]).await.unwrap();
        let (baseline, _) = memory_of(head.0.id());
        let producer = sh("mkdir -p /out && head -c 104857600 /dev/urandom > /out/big")
            .memory_bytes(256 << 20)
            .output("big", "/out/big");
        let producer_ref = TaskRef { id: producer.id };
        let consumer = sh("sha256sum /in/big").input("/in/big", producer_ref.output("big"));
        let refs = client
            .submit_batch(vec![producer, consumer])
            .await
            .expect("submit");
        let outcomes = client.get_many(&refs).await.expect("both end");
        assert_eq!(outcomes[0].state, TaskState::Succeeded, "{:?}", outcomes[0]);
        assert_eq!(outcomes[1].state, TaskState::Succeeded, "{:?}", outcomes[1]);
        let big = outcomes[0].output("big").expect("the output");
        assert_eq!(big.size, 100 << 20);
        let printed = String::from_utf8_lossy(&outcomes[1].stdout).to_string();
        assert!(
            printed.starts_with(&big.hex()),
            "the consumer read the producer's bytes intact: {printed} vs {big}"
        );
        let (_, peak) = memory_of(head.0.id());
        eprintln!(
            "100 MiB output: head RSS {} MiB at the start, peak {} MiB",
            baseline >> 20,
            peak >> 20
        );
        assert!(
            peak < baseline + (100 << 20),
            "the head held {} MiB more than at the start while a 100 MiB output passed",
            (peak - baseline) >> 20
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_declares_outputs_takes_them_as_inputs_and_cancels_recursively() {
    use common::process::rgrid;
    let image = demo_image();
    let dir = Logs(tempfile::tempdir().unwrap());
    let dir = dir.0.path();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    within(120, async {
        let (_head, _node, config) = start_head_and_node(dir, &listen);
        let text = |out: &std::process::Output| {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let first = text(&rgrid(
            &config,
            &[
                "submit",
                "--image",
                image,
                "--out",
                "greeting=/g",
                "--",
                "sh",
                "-c",
                "echo hi > /g; echo said hi",
            ],
        ));
        let second = text(&rgrid(
            &config,
            &[
                "submit",
                "--image",
                image,
                "--input",
                &format!("/in/g={first}:greeting"),
                "--wait",
                "--",
                "cat",
                "/in/g",
            ],
        ));
        assert_eq!(second, "hi");
        let said = text(&rgrid(
            &config,
            &[
                "submit",
                "--image",
                image,
                "--input",
                &format!("/in/s={first}:stdout"),
                "--wait",
                "--",
                "cat",
                "/in/s",
            ],
        ));
        assert_eq!(said, "said hi", "a task's stdout as an input");
        let copy = dir.join("greeting.txt");
        text(&rgrid(
            &config,
            &[
                "get",
                &first,
                "--out",
                "greeting",
                "--to",
                copy.to_str().unwrap(),
            ],
        ));
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "hi\n");
        let missing = rgrid(&config, &["get", &first, "--out", "nope"]);
        assert_eq!(missing.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&missing.stderr).contains("has no output \"nope\""));

        let root = text(&rgrid(
            &config,
            &[
                "submit", "--image", image, "--out", "o=/o", "--", "sleep", "60",
            ],
        ));
        let child = text(&rgrid(
            &config,
            &[
                "submit",
                "--image",
                image,
                "--input",
                &format!("/in={root}:o"),
                "--",
                "true",
            ],
        ));
        text(&rgrid(&config, &["cancel", "--recursive", &root]));
        let out = rgrid(&config, &["get", &child, "-o", "json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["state"], "cancelled", "{json}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_that_finishes_while_its_dependant_is_admitted_is_found() {
    demo_image();
    let dir = Logs(tempfile::tempdir().unwrap());
    let dir = dir.0.path();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    within(120, async {
        // The server's store lookup for a dependant, then 4 s before the loop sees it: its
        // dependency finishes (and leaves the loop) in between.
        let (_head, _node, client_toml) =
            start_with_failpoints(dir, &listen, "after-dependency-lookup=return(4000)");
        let client = Client::connect_file(&client_toml).await.expect("connect");
        let root = client
            .submit(sh("echo early > /o").output("o", "/o"))
            .await
            .expect("submit");
        let child = client
            .submit(sh("cat /in").input("/in", root.output("o")))
            .await
            .expect("the dependant is admitted, not refused as unknown");
        let outcome = client.get(&child).await.expect("the dependant ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        assert_eq!(outcome.stdout, b"early\n");
        let head_log = std::fs::read_to_string(dir.join("head.log")).unwrap_or_default();
        assert!(!head_log.contains("panicked"), "{head_log}");
    })
    .await;
}

/// A task's stdout as another's input: submitted with its producer (it waits), submitted after
/// the producer ended (from the store), and a stdout too large for the result's row (the head
/// keeps it in a file); each staged as the object of exactly those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_takes_another_tasks_stdout_as_an_input() {
    within(180, async {
        let cluster = cluster(16 << 20).await;
        let client = cluster.client().await;
        let producer = sh("echo hello; echo world");
        let producer_ref = TaskRef { id: producer.id };
        let upper = sh("tr a-z A-Z < /in/p").input("/in/p", producer_ref.stdout());
        let large = sh("head -c 300000 /dev/zero | tr '\\0' a");
        let large_ref = TaskRef { id: large.id };
        let count = sh("wc -c < /in/big; ls -l /in/big").input("/in/big", large_ref.stdout());
        let refs = client
            .submit_batch(vec![producer, upper, large, count])
            .await
            .expect("submitted");
        let outcome = client.get(&refs[1]).await.expect("the dependant ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        assert_eq!(outcome.stdout, b"HELLO\nWORLD\n");
        let outcome = client
            .get(&refs[3])
            .await
            .expect("the large one's dependant");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        let text = String::from_utf8_lossy(&outcome.stdout);
        assert!(text.starts_with("300000\n"), "{text}");

        // The producer has ended: its stdout comes from the store.
        let late = sh("cat /in/p").input("/in/p", producer_ref.stdout());
        let late = client.submit(late).await.expect("submitted");
        let outcome = client.get(&late).await.expect("the late dependant ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        assert_eq!(outcome.stdout, b"hello\nworld\n");
        let stored = rgrid::ObjectRef::of(b"hello\nworld\n");
        let mut bytes = Vec::new();
        client
            .get_object(&stored, &mut bytes)
            .await
            .expect("the stdout is an object");
        assert_eq!(bytes, b"hello\nworld\n");

        // A producer that fails: its stdout's dependant never runs.
        let failing = sh("echo partial; exit 3");
        let failing_ref = TaskRef { id: failing.id };
        let never = sh("cat /in/p").input("/in/p", failing_ref.stdout());
        let refs = client
            .submit_batch(vec![failing, never])
            .await
            .expect("submitted");
        let outcome = client.get(&refs[1]).await.expect("ends");
        assert_eq!(outcome.state, TaskState::DependencyFailed, "{outcome:?}");
        let reason = outcome.reason.unwrap_or_default();
        assert!(reason.contains(&refs[0].id.to_string()), "{reason}");
    })
    .await;
}

/// The head dies after a producer's success is durable and before its stdout is stored as an
/// object (a crash point): the restarted head stores it and runs the dependant with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_not_yet_stored_at_a_head_crash_is_stored_after_the_restart() {
    demo_image();
    let dir = Logs(tempfile::tempdir().unwrap());
    let dir = dir.0.path();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    within(120, async {
        let (mut head, _node, client_toml) =
            start_with_failpoints(dir, &listen, "before-stdout-stored=return");
        let client = Client::connect_file(&client_toml).await.expect("connect");
        let producer = sh("echo from before the crash");
        let producer_ref = TaskRef { id: producer.id };
        let dependant = sh("cat /in/p").input("/in/p", producer_ref.stdout());
        let refs = client
            .submit_batch(vec![producer, dependant])
            .await
            .expect("submitted");
        let status = eventually("the head aborting at the crash point", 60, || {
            let status = head.0.try_wait().expect("the head's status");
            async move { status }
        })
        .await;
        assert!(!status.success(), "aborted at the crash point: {status}");
        drop(client);
        let _head = start_head(dir, &listen);
        let client = eventually("the restarted head", 30, || async {
            Client::connect_file(&client_toml).await.ok()
        })
        .await;
        let outcome = client.get(&refs[0]).await.expect("the producer");
        assert_eq!(
            outcome.state,
            TaskState::Succeeded,
            "durable before the crash"
        );
        let outcome = client.get(&refs[1]).await.expect("the dependant ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        assert_eq!(outcome.stdout, b"from before the crash\n");
    })
    .await;
}

/// A dependant submitted after retention deleted the output it names (its producer ended long
/// before, nothing held or pinned it) is refused at submit, saying so, and nothing is stored;
/// one taking a kept output of the same producer, and its stdout, runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_deleted_by_retention_is_refused_at_submit() {
    within(120, async {
        demo_image();
        let mut cluster = NodeCluster::start_with(|config| {
            config.objects.object_retention = std::time::Duration::from_secs(2);
        })
        .await;
        let config = cluster.node_config("n1");
        cluster.add_node(config).await;
        let client = cluster.client().await;
        let producer = client
            .submit(
                sh("echo short-lived > /a; echo kept > /b; echo printed")
                    .output("a", "/a")
                    .output("b", "/b"),
            )
            .await
            .expect("submitted");
        let outcome = client.get(&producer).await.expect("the producer ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        let (a, b) = (
            outcome.output("a").expect("a"),
            outcome.output("b").expect("b"),
        );
        client.pin(&b).await.expect("b pinned");
        // Listed, not downloaded: a download is a use, which retention counts from.
        eventually("retention deleting output a", 30, || async {
            let listed = client.objects().await.expect("objects");
            (!listed.iter().any(|o| o.object == a)).then_some(())
        })
        .await;
        let before = client.tasks().await.expect("tasks").len();
        let answers = client
            .submit_answers(vec![sh("cat /in").input("/in", producer.output("a"))])
            .await
            .expect("answered");
        let SubmitAnswer::Rejected(message) = &answers[0].1 else {
            panic!("accepted: {answers:?}");
        };
        assert!(
            message.contains("\"a\"") && message.contains("no longer stored"),
            "{message}"
        );
        assert_eq!(
            client.tasks().await.expect("tasks").len(),
            before,
            "nothing stored"
        );
        let kept = client
            .submit(
                sh("cat /in/b /in/s")
                    .input("/in/b", producer.output("b"))
                    .input("/in/s", producer.stdout()),
            )
            .await
            .expect("submitted");
        let outcome = client.get(&kept).await.expect("ends");
        assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
        assert_eq!(outcome.stdout, b"kept\nprinted\n");
    })
    .await;
}
