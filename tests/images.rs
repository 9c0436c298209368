//! Task images against a real registry (Debian's `docker-registry`, started per test on a free
//! port): untagged references are `:latest`, the pull policies, credentials from the Docker
//! client's `config.json`, and registry faults (5xx, 429, a pull that hangs) that hand the attempt
//! back instead of failing it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::free_tcp_port;
use common::{eventually, NodeCluster};
use rgrid::{TaskRef, TaskSpec, TaskState};
use rgrid_node::PullPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `rgrid:rgrid-pw`, bcrypt (the registry's htpasswd accepts only bcrypt).
const HTPASSWD: &str = "rgrid:$2b$04$xHOX6dG5kxgXK.A8ma99BO1PcpGXxZ/sFyaQGPhic/qAQFhtQp3PC\n";

/// A registry process; killed when dropped.
struct Registry {
    addr: String,
    process: Child,
}

impl Registry {
    /// `None` (the test is skipped) when `docker-registry` is not installed, except under
    /// `CI=true`, where it must be (scripts/setup.sh installs it).
    fn start(dir: &Path, auth: bool) -> Option<Self> {
        let installed = Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "docker-registry is required under CI=true; run scripts/setup.sh"
            );
            eprintln!("skipping: docker-registry is not installed; run scripts/setup.sh");
            return None;
        }
        let addr = format!("127.0.0.1:{}", free_tcp_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        if auth {
            std::fs::write(dir.join("htpasswd"), HTPASSWD).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rgrid-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        let file = dir.join("registry.yml");
        std::fs::write(&file, config).expect("write the registry config");
        let process = Command::new("docker-registry")
            .arg("serve")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Self { addr, process };
        common::process::wait_for("the registry to listen", || {
            std::net::TcpStream::connect(&registry.addr).is_ok()
        });
        Some(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn docker(args: &[&str]) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds `tag` from the demo image with `/version` holding `version`.
fn build_versioned(tag: &str, version: &str) {
    common::demo_image();
    let context = tempfile::tempdir().expect("a build context");
    std::fs::write(context.path().join("version"), version).expect("write");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {}\nCOPY version /version\n", common::demo_image()),
    )
    .expect("write");
    let path = context.path().display().to_string();
    docker(&["build", "-q", "-t", tag, &path]);
}

/// Pushes local image `local` to `remote` (with `config` as the client's config dir), then
/// removes the local `remote` tag so that a node must pull it.
fn push(local: &str, remote: &str, config: Option<&Path>) {
    docker(&["tag", local, remote]);
    let config = config.map(|c| c.display().to_string());
    let mut args = Vec::new();
    if let Some(config) = &config {
        args.extend(["--config", config.as_str()]);
    }
    args.extend(["push", remote]);
    docker(&args);
    docker(&["rmi", remote]);
}

fn cat_version(image: &str) -> TaskSpec {
    TaskSpec::new(image)
        .command(["cat", "/version"])
        .cpu_millis(100)
        .memory_bytes(32 << 20)
}

/// The tags the engine has of `repository`.
fn local_tags(repository: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["images", repository, "--format", "{{.Tag}}"])
        .output()
        .expect("docker images");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_images_are_latest_and_pull_policies_hold() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let Some(registry) = Registry::start(dir.path(), false) else {
        return;
    };
    let repo = format!("{}/rgrid-test/app", registry.addr);
    let local_v1 = format!("rgrid-test-app-v1-{}", uuid::Uuid::new_v4().simple());
    let local_v2 = format!("rgrid-test-app-v2-{}", uuid::Uuid::new_v4().simple());
    build_versioned(&local_v1, "1");
    build_versioned(&local_v2, "2");
    push(&local_v1, &format!("{repo}:latest"), None);
    push(&local_v2, &format!("{repo}:other"), None);

    let mut cluster = NodeCluster::start().await;
    for (name, policy) in [
        ("if-not-present", PullPolicy::IfNotPresent),
        ("always", PullPolicy::Always),
        ("never", PullPolicy::Never),
    ] {
        let mut config = cluster.node_config(name);
        config.pull_policy = policy;
        config.labels.insert("policy".into(), name.into());
        cluster.add_node(config).await;
    }
    let client = cluster.client().await;
    let on = |policy: &str, spec: TaskSpec| spec.selector("policy", policy);

    // No tag: `:latest`, and only it (an empty tag would pull every tag).
    let out = common::run(&client, on("if-not-present", cat_version(&repo))).await;
    assert_eq!(out.stdout, b"1", "{out:?}");
    assert_eq!(local_tags(&repo), ["latest"]);

    // The registry's :latest moves to v2; the engine keeps v1 under that name.
    push(&local_v2, &format!("{repo}:latest"), None);
    docker(&["tag", &local_v1, &format!("{repo}:latest")]);
    let out = common::run(&client, on("if-not-present", cat_version(&repo))).await;
    assert_eq!(out.stdout, b"1", "present: not pulled again");
    let out = common::run(&client, on("always", cat_version(&repo))).await;
    assert_eq!(out.stdout, b"2", "always: pulled before the run");

    let absent = format!("{}/rgrid-test/absent:1", registry.addr);
    let out = common::run(&client, on("never", cat_version(&absent))).await;
    assert_eq!(out.state, TaskState::Failed);
    let reason = out.reason.unwrap_or_default();
    assert!(reason.contains("pull_policy is never"), "{reason}");
    let out = common::run(&client, on("never", cat_version(&local_v1))).await;
    assert_eq!(out.stdout, b"1", "never: a present image runs");

    // A registry that does not have it: the task's error, with the registry's message.
    let missing = format!("{}/rgrid-test/missing", registry.addr);
    let out = common::run(&client, on("if-not-present", cat_version(&missing))).await;
    assert_eq!(out.state, TaskState::Failed);
    let reason = out.reason.unwrap_or_default();
    assert!(
        reason.contains("could not be pulled") && reason.contains("unknown"),
        "{reason}"
    );
    cluster.stop().await;
    for image in [&local_v1, &local_v2, &format!("{repo}:latest")] {
        let _ = Command::new("docker").args(["rmi", image]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_come_from_the_docker_config() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let Some(registry) = Registry::start(dir.path(), true) else {
        return;
    };
    let creds = dir.path().join("docker-config");
    std::fs::create_dir(&creds).expect("mkdir");
    // base64("rgrid:rgrid-pw")
    std::fs::write(
        creds.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"cmdyaWQ6cmdyaWQtcHc=\"}}}}}}",
            registry.addr
        ),
    )
    .expect("write config.json");
    let image = format!("{}/rgrid-test/private:1", registry.addr);
    let local = format!("rgrid-test-private-{}", uuid::Uuid::new_v4().simple());
    build_versioned(&local, "private");
    push(&local, &image, Some(&creds));

    let mut cluster = NodeCluster::start().await;
    let mut without = cluster.node_config("without");
    without.docker_config = Some(dir.path().join("empty"));
    without.labels.insert("creds".into(), "no".into());
    cluster.add_node(without).await;
    let client = cluster.client().await;
    let out = common::run(&client, cat_version(&image).selector("creds", "no")).await;
    assert_eq!(out.state, TaskState::Failed);
    let reason = out.reason.unwrap_or_default();
    assert!(
        reason.contains("no basic auth credentials") || reason.contains("unauthorized"),
        "{reason}"
    );

    // The engine is shared: the node with credentials comes after the one without.
    let mut with = cluster.node_config("with");
    with.docker_config = Some(creds.clone());
    with.labels.insert("creds".into(), "yes".into());
    with.pre_pull = vec![image.clone()];
    cluster.add_node(with).await;
    // The pre-pull, with the credentials, once the node has joined.
    eventually("the pre-pulled image", 60, || async {
        Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .is_ok_and(|o| o.status.success())
            .then_some(())
    })
    .await;
    let out = common::run(&client, cat_version(&image).selector("creds", "yes")).await;
    assert_eq!(out.stdout, b"private", "{out:?}");
    cluster.stop().await;
    for image in [&local, &image] {
        let _ = Command::new("docker").args(["rmi", image]).output();
    }
}

/// What the faulty registry does with each new connection.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Passes it to the real registry.
    Forward,
    /// Answers every request with this status.
    Status(u16),
    /// Never answers.
    Hang,
}

/// A registry front that fails on demand: HTTP only, so the engine's HTTPS attempt is closed
/// and it falls back to HTTP, as it does for a registry on loopback.
struct FaultyRegistry {
    addr: String,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyRegistry {
    async fn start(backend: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address").to_string();
        let mode = Arc::new(Mutex::new(Mode::Status(503)));
        let current = mode.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mode = *current.lock().expect("the mode");
                let backend = backend.clone();
                connections.spawn(async move {
                    match mode {
                        Mode::Forward => {
                            if let Ok(mut out) = tokio::net::TcpStream::connect(&backend).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        }
                        Mode::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
                        Mode::Status(code) => {
                            let mut head = Vec::new();
                            let mut buf = [0u8; 1024];
                            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                                match inbound.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    // A TLS client hello: not HTTP.
                                    Ok(_) if buf[0] == 0x16 && head.is_empty() => return,
                                    Ok(n) => head.extend_from_slice(&buf[..n]),
                                }
                            }
                            let body = if code == 429 {
                                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#
                            } else {
                                ""
                            };
                            let response = format!(
                                "HTTP/1.1 {code} Fault\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = inbound.write_all(response.as_bytes()).await;
                        }
                    }
                });
            }
        });
        Self { addr, mode, task }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("the mode") = mode;
    }
}

impl Drop for FaultyRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `task`'s listing says it was handed back with `needle` in the reason.
async fn handed_back(client: &rgrid::Client, task: &TaskRef, needle: &str) {
    eventually(&format!("a hand-back saying {needle:?}"), 60, || async {
        let out = client.tasks().await.expect("tasks");
        out.iter()
            .find(|t| t.task == task.id)
            .and_then(|t| t.detail.clone())
            .filter(|d| d.contains("handed back") && d.contains(needle))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_faults_hand_the_attempt_back() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let Some(registry) = Registry::start(dir.path(), false) else {
        return;
    };
    let faulty = FaultyRegistry::start(registry.addr.clone()).await;
    let local = format!("rgrid-test-flaky-{}", uuid::Uuid::new_v4().simple());
    build_versioned(&local, "flaky");
    push(
        &local,
        &format!("{}/rgrid-test/flaky:1", registry.addr),
        None,
    );
    let image = format!("{}/rgrid-test/flaky:1", faulty.addr);

    let mut cluster = NodeCluster::start().await;
    let mut quick = cluster.node_config("quick");
    quick.pull_timeout = Duration::from_secs(1);
    quick.labels.insert("pull".into(), "quick".into());
    cluster.add_node(quick).await;
    let mut patient = cluster.node_config("patient");
    patient.labels.insert("pull".into(), "patient".into());
    cluster.add_node(patient).await;
    let client = cluster.client().await;

    // No node-loss retries: hand-backs must not use any.
    let task = client
        .submit(
            cat_version(&image)
                .node_loss_retries(0)
                .selector("pull", "quick"),
        )
        .await
        .expect("submit");
    handed_back(&client, &task, "503").await;
    faulty.set(Mode::Status(429));
    handed_back(&client, &task, "toomanyrequests").await;
    faulty.set(Mode::Hang);
    handed_back(&client, &task, "pull_timeout").await;
    faulty.set(Mode::Forward);
    let out = client.get(&task).await.expect("get");
    assert_eq!(out.state, TaskState::Succeeded, "{out:?}");
    assert_eq!(out.stdout, b"flaky");
    assert!(out.attempts.len() >= 4, "{:?}", out.attempts);

    // Cancel stops a pull that would wait out the default 10 min: the node reports at once and
    // gets its resources back.
    faulty.set(Mode::Hang);
    let other = format!("{}/rgrid-test/flaky:never-pulled", faulty.addr);
    let stuck = client
        .submit(cat_version(&other).selector("pull", "patient"))
        .await
        .expect("submit");
    // Assigned and not yet running: the listing says it is pulling.
    eventually("the listing to say the image is pulled", 30, || async {
        let tasks = client.tasks().await.expect("tasks");
        let listed = tasks.iter().find(|t| t.task == stuck.id)?;
        (listed.state == TaskState::Assigned
            && listed.detail.as_deref() == Some("pulling the image"))
        .then_some(())
    })
    .await;
    client.cancel(&stuck).await.expect("cancel");
    eventually("the patient node's resources back", 10, || async {
        let nodes = client.nodes().await.expect("nodes");
        let node = nodes.iter().find(|n| n.name == "patient")?;
        (node.free == node.total).then_some(())
    })
    .await;
    cluster.stop().await;
    let _ = Command::new("docker")
        .args(["rmi", &local, &image])
        .output();
}
