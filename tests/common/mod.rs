//! Shared test fixtures: the local demo image, a started cluster, credentials helpers.

#![allow(dead_code, unreachable_pub)]

use std::sync::Once;

use rgrid::local::LocalClusterOptions;
use rgrid::LocalCluster;

/// Builds the busybox image once per test binary (no registry here).
pub fn demo_image() -> &'static str {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        rgrid::image::ensure_demo_image()
            .expect("the demo image must build; install busybox-static");
    });
    rgrid::image::DEMO_IMAGE
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A head and one Docker node with 2 cpus and 2 GiB.
pub async fn docker_cluster() -> LocalCluster {
    init_tracing();
    demo_image();
    LocalCluster::start_with(LocalClusterOptions {
        nodes: 1,
        cpu_millis: Some(2000),
        memory: Some("2G".into()),
        ..LocalClusterOptions::default()
    })
    .await
    .expect("local cluster starts")
}

/// Real daemons as separate processes, and the CLI.
pub mod process {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// A daemon process, killed when dropped.
    pub struct Daemon(pub Child);

    impl Daemon {
        /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`).
        pub fn signal(&self, signal: &str) {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.0.id().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -{signal} failed");
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `rgrid-head` and `rgrid-node` are built next to `rgrid` by `cargo test --workspace`.
    pub fn binary(name: &str) -> PathBuf {
        let path = Path::new(env!("CARGO_BIN_EXE_rgrid")).with_file_name(name);
        assert!(
            path.exists(),
            "{} is missing: run the suite with `cargo test --workspace`",
            path.display()
        );
        path
    }

    pub fn free_tcp_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    pub fn free_udp_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn rgrid(config: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_rgrid"))
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap()
    }

    /// A head process on a fixed port with its state in `dir/head`; logs to `dir/head.log`.
    pub fn start_head(dir: &Path, listen: &str) -> Daemon {
        start_head_with(dir, listen, &[])
    }

    /// [`start_head`] with extra arguments (`--database-url URL`).
    pub fn start_head_with(dir: &Path, listen: &str, extra: &[&str]) -> Daemon {
        start_head_env(dir, listen, extra, &[])
    }

    /// [`start_head_with`] with extra environment variables.
    pub fn start_head_env(
        dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("head.log"))
            .unwrap();
        Daemon(
            Command::new(binary("rgrid-head"))
                .arg("--state-dir")
                .arg(dir.join("head"))
                .args(["--listen", listen])
                .args(extra)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// [`start_head`], once it has written its `client.toml` (returned).
    pub fn start_head_ready(dir: &Path, listen: &str) -> (Daemon, PathBuf) {
        let head = start_head(dir, listen);
        let config = dir.join("head/client.toml");
        wait_for("the head's client.toml", || config.exists());
        (head, config)
    }

    /// [`start_head_ready`] and a node `n1` (2 cpus), once it is ready: the head, the node and
    /// the admin's `client.toml`.
    pub fn start_head_and_node(dir: &Path, listen: &str) -> (Daemon, Daemon, PathBuf) {
        let (head, config) = start_head_ready(dir, listen);
        let node = start_node(dir, listen, "n1", 2000);
        wait_ready(&config, "n1");
        (head, node, config)
    }

    /// A node process named `name` offering `cpu_millis`; state in `dir/name`.
    pub fn start_node(dir: &Path, listen: &str, name: &str, cpu_millis: u32) -> Daemon {
        start_node_with(dir, listen, name, cpu_millis, &[])
    }

    /// [`start_node`] with extra arguments (`--executor process`); logs appended to
    /// `dir/NAME.log`, so a node restarted on its state dir keeps one log.
    pub fn start_node_with(
        dir: &Path,
        listen: &str,
        name: &str,
        cpu_millis: u32,
        extra: &[&str],
    ) -> Daemon {
        start_node_under(&[], dir, listen, name, cpu_millis, extra)
    }

    /// [`start_node_with`], the node's command run by `wrapper` (a program and its arguments,
    /// e.g. `unshare …`), when there is one.
    pub fn start_node_under(
        wrapper: &[&std::ffi::OsStr],
        dir: &Path,
        listen: &str,
        name: &str,
        cpu_millis: u32,
        extra: &[&str],
    ) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("rgrid-node"));
                command
            }
            None => Command::new(binary("rgrid-node")),
        };
        Daemon(
            command
                .args(["--head", listen, "--token-file"])
                .arg(dir.join("head").join("join-token"))
                .arg("--state-dir")
                .arg(dir.join(name))
                .args([
                    "--name",
                    name,
                    "--cpu-millis",
                    &cpu_millis.to_string(),
                    "--memory",
                    "1G",
                ])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
    pub fn memory_of(pid: u32) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb << 10)
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// When the test is failing: prints the last `lines` lines of every `*.log` in `dir` (what the
    /// daemons logged).
    pub fn print_logs_if_panicking(dir: &Path, lines: usize) {
        if !std::thread::panicking() {
            return;
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(lines).collect();
                println!("==== {} (last {lines} lines) ====", path.display());
                for line in tail.into_iter().rev() {
                    println!("{line}");
                }
            }
        }
    }

    /// A test's directory of daemon state and logs: the logs are printed when the test fails.
    pub struct Logs(pub tempfile::TempDir);

    impl Drop for Logs {
        fn drop(&mut self) {
            print_logs_if_panicking(self.0.path(), 40);
        }
    }

    /// The nodes as `rgrid nodes -o json` shows them.
    pub fn nodes(config: &Path) -> Vec<serde_json::Value> {
        let out = rgrid(config, &["nodes", "-o", "json"]);
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
    }

    /// Waits until the node called `name` is `ready`.
    pub fn wait_ready(config: &Path, name: &str) {
        wait_for(&format!("node {name} to be ready"), || {
            nodes(config)
                .iter()
                .any(|n| n["name"] == name && n["state"] == "ready")
        });
    }
}

/// A UDP forwarder between one node and the head that a test can cut: while cut, every
/// datagram either way is dropped, as a severed network would. The node is pointed at
/// [`Cut::addr`]; a node restarted behind it is forwarded too (the latest sender gets the
/// head's datagrams).
pub struct Cut {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cut {
    /// A forwarder to the head at `head`.
    pub fn new(head: &str) -> Self {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let head: std::net::SocketAddr = head.parse().expect("a head address");
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind the forwarder");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind the forwarder");
        let tick = Some(std::time::Duration::from_millis(100));
        front.set_read_timeout(tick).expect("a read timeout");
        back.set_read_timeout(tick).expect("a read timeout");
        let addr = front.local_addr().expect("an address");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let node: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let (front2, back2) = (
            front.try_clone().expect("a socket"),
            back.try_clone().expect("a socket"),
        );
        let (cut2, stop2, node2) = (cut.clone(), stop.clone(), node.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = front2.recv_from(&mut buf) {
                    *node2.lock().unwrap() = Some(from);
                    if !cut2.load(Ordering::Relaxed) {
                        let _ = back2.send_to(&buf[..n], head);
                    }
                }
            }
        });
        let (cut3, stop3) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop3.load(Ordering::Relaxed) {
                if let Ok((n, _)) = back.recv_from(&mut buf) {
                    let to = *node.lock().unwrap();
                    if let (Some(to), false) = (to, cut3.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
            }
        });
        Self { addr, cut, stop }
    }

    /// Severs (`true`) or restores (`false`) the network between node and head.
    pub fn set(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a provisioned server boots with.
/// A head config with `[autoscaler]` against the fake Hetzner API (`API_URL` stands for its URL):
/// `head_keys` at the top, `autoscaler_keys` in the section, one node type `cx23` (2 cpus, 2G,
/// 0.0056 an hour) and quick API polling.
pub fn autoscaler_toml(head_keys: &str, autoscaler_keys: &str) -> String {
    format!(
        r#"{head_keys}
[autoscaler]
enabled = true
api_url = "API_URL"
scale_up_delay = "0s"
boot_estimate = "90s"
{autoscaler_keys}

[[autoscaler.node_types]]
name = "cx23"
cpus = 2
memory = "2G"
hourly_price = 0.0056

[autoscaler.api]
action_poll = "50ms"
action_poll_max = "100ms"
list_cache_ttl = "200ms"
backoff_base = "50ms"
"#
    )
}

pub mod cloud_init {
    /// What a machine boots with, read from its user data.
    pub struct Boot {
        pub head: String,
        pub token: String,
        pub labels: Vec<String>,
        /// `RGRID_NODE_*` variables the node container gets (`-e K=V`).
        pub env: Vec<(String, String)>,
    }

    /// The content of the file at `path` in a cloud-config's `write_files`.
    pub fn written_file(user_data: &str, path: &str) -> String {
        let doc: serde_norway::Value =
            serde_norway::from_str(user_data).expect("user data is YAML");
        doc["write_files"]
            .as_sequence()
            .expect("write_files")
            .iter()
            .find(|f| f["path"].as_str() == Some(path))
            .and_then(|f| f["content"].as_str())
            .unwrap_or_else(|| panic!("{path} in write_files"))
            .to_owned()
    }

    /// Reads the head address, the token and the node labels out of a server's cloud-config.
    pub fn boot_of(user_data: &str) -> Boot {
        let script = written_file(user_data, rgrid_cloud::cloud_init::BOOTSTRAP_PATH);
        let words: Vec<String> = script
            .split_whitespace()
            .map(|w| w.trim_matches('\'').to_owned())
            .collect();
        let after = |flag: &str| {
            words
                .iter()
                .enumerate()
                .filter(|(_, w)| *w == flag)
                .map(|(i, _)| words[i + 1].clone())
                .collect::<Vec<_>>()
        };
        Boot {
            head: after("--head").remove(0),
            token: written_file(user_data, rgrid_cloud::cloud_init::TOKEN_PATH),
            labels: after("--label"),
            env: after("-e")
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// A fresh, empty PostgreSQL database for one test: its URL. The server comes from
/// `RGRID_TEST_POSTGRES_URL` (default `postgres://rgrid:rgrid@127.0.0.1:5432/postgres`, as
/// `scripts/setup.sh` makes it). Without a server the test is skipped (`None`) — except under
/// `CI=true`, where a missing PostgreSQL fails the test.
pub async fn postgres_database() -> Option<String> {
    use sqlx::Connection;
    let server = std::env::var("RGRID_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://rgrid:rgrid@127.0.0.1:5432/postgres".to_owned());
    let mut conn = match sqlx::PgConnection::connect(&server).await {
        Ok(conn) => conn,
        Err(err) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("PostgreSQL at {server} is required under CI=true: {err}; run scripts/setup.sh")
        }
        Err(err) => {
            eprintln!("skipping: no PostgreSQL at {server} ({err}); run scripts/setup.sh");
            return None;
        }
    };
    let name = format!("rgrid_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
}

/// A head in this process and nodes each started from its own [`rgrid_node::NodeConfig`] (for
/// node settings `LocalCluster` does not expose), through the same `run` functions.
pub struct NodeCluster {
    pub dir: tempfile::TempDir,
    head: Option<rgrid_head::RunningHead>,
    shutdown: tokio_util::sync::CancellationToken,
    nodes: Vec<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), rgrid_node::NodeError>>,
    )>,
}

impl NodeCluster {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A cluster whose head config `adjust` changes first.
    pub async fn start_with(adjust: impl FnOnce(&mut rgrid_head::HeadConfig)) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("a temp dir");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut config = rgrid_head::HeadConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            state_dir: dir.path().join("head"),
            ..rgrid_head::HeadConfig::default()
        };
        adjust(&mut config);
        let head = rgrid_head::start(config, shutdown.clone())
            .await
            .expect("the head starts");
        Self {
            dir,
            head: Some(head),
            shutdown,
            nodes: Vec::new(),
        }
    }

    /// A config for a node called `name` (2 cpus, 2 GiB, Docker) joining this head.
    pub fn node_config(&self, name: &str) -> rgrid_node::NodeConfig {
        let head = self.head.as_ref().expect("the head runs");
        rgrid_node::NodeConfig {
            head: head.local_addr.to_string(),
            token_file: Some(head.join_token_file()),
            state_dir: self.dir.path().join(name),
            name: Some(name.to_owned()),
            cpu_millis: Some(2000),
            memory: Some("2G".into()),
            ..rgrid_node::NodeConfig::default()
        }
    }

    /// Starts a node and waits until it is ready.
    pub async fn add_node(&mut self, config: rgrid_node::NodeConfig) {
        let name = config.name.clone().expect("a named node");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(rgrid_node::run(config, shutdown.clone()));
        self.nodes.push((shutdown, task));
        let client = self.client().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !client
            .nodes()
            .await
            .expect("nodes")
            .iter()
            .any(|n| n.name == name && n.state == "ready")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "node {name} did not become ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The head's admin credentials file (for the CLI).
    pub fn head_client_file(&self) -> std::path::PathBuf {
        self.head.as_ref().expect("the head runs").client_file()
    }

    pub async fn client(&self) -> rgrid::Client {
        let head = self.head.as_ref().expect("the head runs");
        rgrid::Client::connect_file(head.client_file())
            .await
            .expect("the client connects")
    }

    /// Drains the nodes, then stops the head.
    pub async fn stop(mut self) {
        for (shutdown, _) in &self.nodes {
            shutdown.cancel();
        }
        for (_, task) in self.nodes.drain(..) {
            let _ = task.await;
        }
        self.shutdown.cancel();
        if let Some(head) = self.head.take() {
            head.wait().await.expect("the head stops cleanly");
        }
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        for (shutdown, _) in &self.nodes {
            shutdown.cancel();
        }
        self.shutdown.cancel();
    }
}

/// Runs `test` with a time limit, so that a hung test fails instead of blocking CI.
pub async fn within<F: std::future::Future<Output = ()>>(secs: u64, test: F) {
    tokio::time::timeout(std::time::Duration::from_secs(secs), test)
        .await
        .expect("the test finishes in time");
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Submits `spec` and waits for its outcome.
pub async fn run(client: &rgrid::Client, spec: rgrid::TaskSpec) -> rgrid::TaskOutcome {
    let task = client.submit(spec).await.expect("submit");
    client.get(&task).await.expect("get")
}

/// Waits until `task` is listed in `state`.
pub async fn wait_for_state(
    client: &rgrid::Client,
    task: &rgrid::TaskRef,
    state: rgrid::TaskState,
) {
    eventually(&format!("the task to be {state}"), 30, || async {
        let tasks = client.tasks().await.expect("tasks");
        tasks
            .iter()
            .any(|t| t.task == task.id && t.state == state)
            .then_some(())
    })
    .await
}
