//! Objects end to end: uploads and downloads over real QUIC to a real head, in chunks, verified;
//! refusals (a lying upload, the quota, an unknown object) that store nothing; retention; the
//! head's memory while a large object passes; the S3 backend against a local S3 server
//! (`moto_server`, installed by scripts/setup.sh).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{
    free_udp_port, memory_of, print_logs_if_panicking, start_head_env, wait_for, Daemon,
};
use rgrid::{Client, ClientError, ObjectQuery, ObjectRef, TaskSpec, TaskState};
use rgrid_core::object::Hasher;
use rgrid_core::protocol::{ErrorKind, ErrorReply, Request, Response};
use rgrid_core::tls::ClientFile;
use rgrid_core::transport::open_request;
use rgrid_head::config::ObjectsConfig;
use rgrid_head::HeadConfig;
use tokio_util::sync::CancellationToken;

/// A head in this process with `objects`; its state in `dir/head`.
async fn head(dir: &Path, objects: ObjectsConfig) -> (rgrid_head::RunningHead, CancellationToken) {
    common::init_tracing();
    let shutdown = CancellationToken::new();
    let config = HeadConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.join("head"),
        objects,
        ..HeadConfig::default()
    };
    let head = rgrid_head::start(config, shutdown.clone())
        .await
        .expect("the head starts");
    (head, shutdown)
}

/// A client of a head process, once it answers.
async fn client_of(client_file: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_file(client_file).await {
            Ok(client) => return client,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = %err, "head not up yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("cannot connect to the head: {err}"),
        }
    }
}

/// A connection that speaks the protocol directly, to send what the client never would.
async fn raw_connection(client_file: &Path) -> (quinn::Endpoint, quinn::Connection) {
    let text = std::fs::read_to_string(client_file).unwrap();
    let file: ClientFile = toml::from_str(&text).unwrap();
    let tls = rgrid_core::tls::client_config(&file.ca_pem, &file.identity()).unwrap();
    rgrid_core::transport::connect(file.head.parse().unwrap(), tls, "test")
        .await
        .unwrap()
}

/// Announces `announced`, sends `bytes` instead, and returns the head's refusal.
async fn lying_upload(
    connection: &quinn::Connection,
    announced: ObjectRef,
    bytes: &[u8],
) -> ErrorReply {
    let mut stream = open_request(connection, &Request::PutObject(announced))
        .await
        .unwrap();
    assert_eq!(stream.recv.expect().await.unwrap(), Response::ObjectWanted);
    let mut send = stream.send.into_inner();
    // The head may stop reading once it has seen enough to refuse.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match stream.recv.expect().await.unwrap() {
        Response::Error(e) => e,
        other => panic!("a lying upload was accepted: {other:?}"),
    }
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorReply {
    match result {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Deterministic bytes that do not compress.
fn write_noise(path: &Path, size: usize) -> ObjectRef {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Hasher::default();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n]).unwrap();
        hasher.update(&chunk[..n]);
        left -= n;
    }
    file.flush().unwrap();
    hasher.finish()
}

fn hash_file(path: &Path) -> ObjectRef {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hasher.finish();
        }
        hasher.update(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_and_what_is_wrong_is_refused_and_not_stored() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (head, shutdown) = head(dir.path(), ObjectsConfig::default()).await;
        let client = Client::connect_file(head.client_file()).await.unwrap();

        let hello = client.put_bytes(b"hello").await.unwrap();
        assert_eq!(hello, ObjectRef::of(b"hello"));
        // Stored once, however often it is uploaded.
        assert_eq!(client.put_bytes(b"hello").await.unwrap(), hello);
        let empty = client.put_bytes(b"").await.unwrap();
        assert_eq!(empty.size, 0);
        let mut back = Vec::new();
        client.get_object(&hello, &mut back).await.unwrap();
        assert_eq!(back, b"hello");
        let mut back = Vec::new();
        client.get_object(&empty, &mut back).await.unwrap();
        assert!(back.is_empty());

        // A file of a few MiB, through a file on both ends.
        let source = dir.path().join("source");
        let object = write_noise(&source, (3 << 20) + 17);
        assert_eq!(client.put_file(&source).await.unwrap(), object);
        let target = dir.path().join("target");
        client.get_object_to_file(&object, &target).await.unwrap();
        assert_eq!(hash_file(&target), object);

        // The listing pages through them in hash order.
        let all = client.objects().await.unwrap();
        assert_eq!(all.len(), 3);
        let first = client
            .objects_page(ObjectQuery {
                after: None,
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(first.objects.len(), 2);
        assert_eq!(first.stored_bytes, object.size + 5);
        let rest = client
            .objects_page(ObjectQuery {
                after: first.next,
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(rest.objects.len(), 1);
        assert_eq!(rest.next, None);

        // Lies are refused and leave nothing behind: another content, too many bytes, too few.
        let (_endpoint, raw) = raw_connection(&head.client_file()).await;
        let claimed = ObjectRef::of(b"world");
        let wrong = lying_upload(&raw, claimed, b"wrold").await;
        assert_eq!(wrong.kind, ErrorKind::BadRequest);
        assert!(wrong.message.contains("hash"), "{}", wrong.message);
        let long = lying_upload(&raw, claimed, b"world, and more").await;
        assert!(
            long.message.contains("more than its 5 bytes"),
            "{}",
            long.message
        );
        let short = lying_upload(&raw, claimed, b"wor").await;
        assert!(
            short.message.contains("after 3 of its 5 bytes"),
            "{}",
            short.message
        );
        let big_lie = ObjectRef {
            sha256: [7; 32],
            size: 20 << 20,
        };
        let wrong = lying_upload(&raw, big_lie, &vec![1u8; 20 << 20]).await;
        assert!(wrong.message.contains("hash"), "{}", wrong.message);
        assert_eq!(client.objects().await.unwrap().len(), 3);
        let stored: Vec<PathBuf> = std::fs::read_dir(dir.path().join("head/objects"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(stored.len(), 3, "nothing half-stored: {stored:?}");
        let missing = refusal(client.get_object(&claimed, &mut Vec::new()).await);
        assert_eq!(missing.kind, ErrorKind::NotFound);
        assert!(missing.message.contains("no object"), "{}", missing.message);

        drop(client);
        shutdown.cancel();
        head.wait().await.unwrap();
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_refuses_an_upload_beyond_it_and_retention_deletes_unused_objects() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let objects = ObjectsConfig {
            max_object_bytes: "1M".into(),
            object_retention: Duration::from_secs(2),
            ..ObjectsConfig::default()
        };
        let (head, shutdown) = head(dir.path(), objects).await;
        let client = Client::connect_file(head.client_file()).await.unwrap();

        let kept = client.put_bytes(vec![1u8; 600 << 10]).await.unwrap();
        let over = refusal(client.put_bytes(vec![2u8; 600 << 10]).await);
        assert_eq!(over.kind, ErrorKind::QuotaExceeded);
        assert!(
            over.message.contains("max_object_bytes"),
            "{}",
            over.message
        );
        let listed = client.objects().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].object, kept);
        // The same object again takes no more room.
        assert_eq!(client.put_bytes(vec![1u8; 600 << 10]).await.unwrap(), kept);

        // Unused for the retention period, it is deleted; and then it is missing.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !client.objects().await.unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "retention did not delete the object"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let gone = refusal(client.get_object(&kept, &mut Vec::new()).await);
        assert_eq!(gone.kind, ErrorKind::NotFound);
        // The room is free again.
        client.put_bytes(vec![2u8; 600 << 10]).await.unwrap();

        drop(client);
        shutdown.cancel();
        head.wait().await.unwrap();
    })
    .await
    .expect("the test finishes in time");
}

/// The objects the head lists, with how many open tasks need each and whether it is pinned.
async fn kept(client: &Client) -> Vec<(ObjectRef, u32, bool)> {
    let mut listed: Vec<_> = client
        .objects()
        .await
        .expect("listing")
        .into_iter()
        .map(|o| (o.object, o.tasks, o.pinned))
        .collect();
    listed.sort();
    listed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_open_tasks_need_and_what_is_pinned_across_a_restart() {
    common::within(120, async {
        let dir = tempfile::tempdir().unwrap();
        let objects = ObjectsConfig {
            object_retention: Duration::from_secs(1),
            ..ObjectsConfig::default()
        };
        let (running, shutdown) = head(dir.path(), objects.clone()).await;
        let client = Client::connect_file(running.client_file()).await.unwrap();
        let input = client
            .put_bytes(b"needed by a task".to_vec())
            .await
            .unwrap();
        let pinned = client.put_bytes(b"pinned".to_vec()).await.unwrap();
        let loose = client.put_bytes(b"loose".to_vec()).await.unwrap();
        client.pin(&pinned).await.expect("pinned");
        client
            .pin(&pinned)
            .await
            .expect("pinning again changes nothing");
        // No node: the first task stays queued, the second pending on its output.
        let first = TaskSpec::new("img").input("/in", input).output("o", "/o");
        let first_ref = rgrid::TaskRef { id: first.id };
        let second = TaskSpec::new("img")
            .input("/in", input)
            .input("/o", first_ref.output("o"));
        client.submit_batch(vec![first, second]).await.unwrap();
        let mut expected = vec![(input, 2, false), (pinned, 0, true)];
        expected.sort();
        common::eventually("retention deletes only the loose object", 20, || async {
            (kept(&client).await == expected).then_some(())
        })
        .await;
        let gone = refusal(client.get_object(&loose, &mut Vec::new()).await);
        assert_eq!(gone.kind, ErrorKind::NotFound);
        let unknown = refusal(client.pin(&loose).await);
        assert_eq!(unknown.kind, ErrorKind::NotFound, "{}", unknown.message);

        // Across a restart: the pin is durable, and the open tasks count again.
        drop(client);
        shutdown.cancel();
        running.wait().await.unwrap();
        let (running, shutdown) = head(dir.path(), objects).await;
        let client = Client::connect_file(running.client_file()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(kept(&client).await, expected, "kept past retention");

        // Once nothing keeps them, they go.
        client.cancel_recursive(&first_ref).await.unwrap();
        client.unpin(&pinned).await.unwrap();
        common::eventually("retention deletes what nothing keeps", 20, || async {
            kept(&client).await.is_empty().then_some(())
        })
        .await;
        drop(client);
        shutdown.cancel();
        running.wait().await.unwrap();
    })
    .await;
}

/// Starts a head process configured by `config` (TOML), with `env`.
fn head_process(dir: &Path, config: &str, env: &[(&str, &str)]) -> (Daemon, PathBuf) {
    let config_path = dir.join("head.toml");
    std::fs::write(&config_path, config).unwrap();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let head = start_head_env(
        dir,
        &listen,
        &["--config", config_path.to_str().unwrap()],
        env,
    );
    let client_file = dir.join("head/client.toml");
    wait_for("the head's client.toml", || client_file.exists());
    (head, client_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_passes_through_the_head_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let run = async {
        let (head, client_file) = head_process(dir.path(), "", &[]);
        let client = client_of(&client_file).await;
        // Warm up: the first transfer sets up what every later one reuses.
        client.put_bytes(vec![3u8; 1 << 20]).await.unwrap();
        let (baseline, _) = memory_of(head.0.id());

        let size = 160 << 20;
        let source = dir.path().join("large");
        let object = write_noise(&source, size);
        let started = Instant::now();
        assert_eq!(client.put_file(&source).await.unwrap(), object);
        let uploaded = started.elapsed();
        let target = dir.path().join("large.back");
        client.get_object_to_file(&object, &target).await.unwrap();
        assert_eq!(hash_file(&target), object, "the object came back intact");
        let (_, peak) = memory_of(head.0.id());
        eprintln!(
            "160 MiB up in {uploaded:?}, down in {:?}; head RSS {} MiB at the start, peak {} MiB",
            started.elapsed() - uploaded,
            baseline >> 20,
            peak >> 20
        );
        assert!(
            peak < baseline + (64 << 20),
            "the head held {} MiB more than at the start while a 160 MiB object passed",
            (peak - baseline) >> 20
        );
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the test finishes in time");
    print_logs_if_panicking(dir.path(), 40);
}

/// A local S3 server: `moto_server` on a free port, with a bucket.
struct S3Server {
    _process: Daemon,
    endpoint: String,
}

fn s3_server(dir: &Path, bucket: &str) -> S3Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.join("moto.log")).unwrap();
    let process = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("moto_server runs (scripts/setup.sh installs it: pip install 'moto[server]')");
    let process = Daemon(process);
    let addr = format!("127.0.0.1:{port}");
    // Create the bucket with a plain HTTP PUT (moto accepts unsigned requests).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = std::net::TcpStream::connect(&addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        });
        match created {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => break,
            Ok(answer) => panic!("moto did not create the bucket: {answer}"),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(err) => panic!("moto_server does not answer on {addr}: {err}"),
        }
    }
    S3Server {
        _process: process,
        endpoint: format!("http://{addr}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_live_in_an_s3_bucket_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let run = async {
        let s3 = s3_server(dir.path(), "rgrid-test");
        let env = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT", s3.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ];
        let config = "[objects]\nurl = \"s3://rgrid-test/cluster-a\"\n";
        let first = dir.path().join("first");
        std::fs::create_dir_all(&first).unwrap();
        let (head, client_file) = head_process(&first, config, &env);
        let client = client_of(&client_file).await;
        let small = client.put_bytes(b"in the bucket").await.unwrap();
        // Larger than a part: a multipart upload.
        let source = dir.path().join("parts");
        let large = write_noise(&source, (20 << 20) + 5);
        assert_eq!(client.put_file(&source).await.unwrap(), large);
        let mut back = Vec::new();
        client.get_object(&small, &mut back).await.unwrap();
        assert_eq!(back, b"in the bucket");
        let target = dir.path().join("parts.back");
        client.get_object_to_file(&large, &target).await.unwrap();
        assert_eq!(hash_file(&target), large);
        // A lying multipart upload is aborted: nothing appears in the bucket.
        let (_endpoint, raw) = raw_connection(&client_file).await;
        let lie = ObjectRef {
            sha256: [9; 32],
            size: 20 << 20,
        };
        let refused = lying_upload(&raw, lie, &vec![0u8; 20 << 20]).await;
        assert!(refused.message.contains("hash"), "{}", refused.message);
        drop((client, raw));
        drop(head);

        // Another head, with a state dir of its own, finds them in the bucket.
        let second = dir.path().join("second");
        std::fs::create_dir_all(&second).unwrap();
        let (_head, client_file) = head_process(&second, config, &env);
        let client = client_of(&client_file).await;
        let mut listed: Vec<ObjectRef> = client
            .objects()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.object)
            .collect();
        listed.sort();
        let mut expected = vec![small, large];
        expected.sort();
        assert_eq!(listed, expected);
        let mut back = Vec::new();
        client.get_object(&small, &mut back).await.unwrap();
        assert_eq!(back, b"in the bucket");
        assert!(
            !second.join("head/objects").exists(),
            "nothing stored in the state dir"
        );
    };
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the test finishes in time");
    print_logs_if_panicking(dir.path(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_staged_read_only_into_the_container() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let cluster = common::docker_cluster().await;
        let client = cluster.client().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("words");
        std::fs::write(&source, "one two three\nfour five\n").unwrap();
        let words = client.put_file(&source).await.unwrap();
        let large = dir.path().join("large");
        let noise = write_noise(&large, 24 << 20);
        assert_eq!(client.put_file(&large).await.unwrap(), noise);

        let image = common::demo_image();
        // Two tasks reading the same inputs: the second from the node's cache.
        let count = |words| {
            TaskSpec::new(image)
                .command(["sh", "-c", "wc -w < /data/words; wc -c < /in/noise"])
                .input("/data/words", words)
                .input("/in/noise", noise)
        };
        for _ in 0..2 {
            let task = client.submit(count(words)).await.unwrap();
            let out = client.get(&task).await.unwrap();
            assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let numbers: Vec<&str> = stdout.split_whitespace().collect();
            assert_eq!(numbers, ["5", &(24u64 << 20).to_string()], "{stdout}");
        }
        // Read-only: the task cannot change its input.
        let write = TaskSpec::new(image)
            .command(["sh", "-c", "echo changed > /data/words"])
            .input("/data/words", words);
        let out = client
            .get(&client.submit(write).await.unwrap())
            .await
            .unwrap();
        assert_eq!(out.state, TaskState::Failed, "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only"),
            "{out:?}"
        );
        // A missing object and a path escaping the container are refused at submit.
        let missing = client
            .submit(
                TaskSpec::new(image)
                    .command(["true"])
                    .input("/data/x", ObjectRef::of(b"never uploaded")),
            )
            .await;
        match missing {
            Err(ClientError::Rejected { message, .. }) => {
                assert!(message.contains("no object"), "{message}")
            }
            other => panic!("a missing input was accepted: {other:?}"),
        }
        let escaping = client
            .submit(
                TaskSpec::new(image)
                    .command(["true"])
                    .input("/data/../../etc/passwd", words),
            )
            .await;
        assert!(
            matches!(escaping, Err(ClientError::Rejected { .. })),
            "{escaping:?}"
        );
        drop(client);
        cluster.stop().await;
    })
    .await
    .expect("the test finishes in time");
}
