//! The head's task path, measured: throughput, latency, a million tasks, restart, heartbeats of
//! many nodes, what durability costs, and the process executor against raw spawns — each next to
//! its baseline in the same run (this machine is noisy), and Ray's figures when Ray is installed.
//!
//! `cargo run --release --example bench [-- --json] [--tasks N] [--million N] [--only LIST]`
//! (the nodes take `RGRID_NODE_*` overrides: `RGRID_NODE_HOURLY_PRICE=1` measures the task path
//! with the head billing every attempt)
//!
//! The head runs as a child process (this program started again with `head`), so its memory and
//! cpu are its own; noop and process nodes run as children too. Figures:
//!
//! - `async_tasks_per_s`: one client submits `--tasks` tasks in batches of 1,000, then waits for
//!   all; `async4_tasks_per_s`: four clients at once. Two noop nodes.
//! - `sync_p50_us`, `sync_p99_us`: submit one task, wait for it, 2,000 times.
//! - `million_submit_drain_s`, `million_peak_rss_mib`: `--million` tasks submitted (four clients)
//!   to a head with no nodes, then drained by two noop nodes; the head's peak RSS.
//! - `restart_1m_s`: the head SIGKILLed with `--million` open tasks, restarted, until it answers.
//! - `heartbeat_10k_cpu`: the head's cpu (cores) while 10,000 simulated nodes heartbeat every
//!   second.
//! - `durability_cost`: 1 − durable ÷ no-persistence throughput (async), the latter with a head
//!   built with `--features bench-no-persist` (this program builds it on first use).
//! - `process_vs_spawn`: 5,000 `true` tasks on a process-executor node over 5,000 raw spawns of
//!   `true`, two at a time.
//! - `dag_edge_overhead_us`: a fan-out/fan-in DAG of `--dag` middle tasks (one root whose
//!   output each takes, and sinks of 1,000 inputs each taking theirs: two edges per middle task)
//!   on two noop nodes (each declared output an empty object), against as many independent
//!   tasks with the same outputs in the same run, alternated three times: (median DAG time −
//!   median independent time) ÷ edges. `dag_s`, `dag_flat_s`: both medians.
//!   `dag_edge_head_cpu_us`: the same difference in the head process's cpu seconds (user +
//!   system) ÷ edges, what the dependencies cost the head.
//! - `follow_p50_ms`, `follow_p99_ms`: a container on a Docker node writes its clock (µs, from
//!   `adjtimex`) every 50 ms, 200 times; the client following the task's log takes each line's
//!   arrival time minus the time in it. `docker_follow_p50_ms`, `docker_follow_p99_ms`: the same
//!   script under `docker run`, its stdout read by this program (the floor).
//! - `transfer_up_mib_s`, `transfer_down_mib_s`: a `--transfer` MiB file uploaded to the head
//!   (`put_file`), then staged into a task on a Docker node (its run time less that of the same
//!   task without the input); `cp_mib_s`: `cp` of the same file on this disk, `sync`ed.
//! - `ray_async_tasks_per_s`, `ray_sync_p50_us`: `../shared/bench/ray_baseline.py`, when
//!   `python3 -c "import ray"` works.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use rgrid::{Client, TaskQuery, TaskRef, TaskSpec};
use tokio_util::sync::CancellationToken;

mod common;

#[derive(Parser)]
#[command(about = "Benchmarks of the head's task path")]
struct Args {
    /// Print one JSON object with every figure.
    #[arg(long)]
    json: bool,
    /// Tasks in the throughput runs.
    #[arg(long, default_value_t = 200_000)]
    tasks: usize,
    /// Tasks in the million runs.
    #[arg(long, default_value_t = 1_000_000)]
    million: usize,
    /// Middle tasks of the DAG run.
    #[arg(long, default_value_t = 10_000)]
    dag: usize,
    /// MiB of the transfer run's object.
    #[arg(long, default_value_t = 1024)]
    transfer: u64,
    /// Only these runs (comma-separated: async, sync, million, restart, heartbeat, durability,
    /// process, dag, follow, transfer, ray).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep the state dirs and logs of the runs (their paths are printed).
    #[arg(long)]
    keep: bool,
    #[command(subcommand)]
    role: Option<Role>,
}

/// What a child process of the benchmark runs.
#[derive(Subcommand)]
enum Role {
    /// A head on `listen` with its state in `state_dir`.
    #[command(hide = true)]
    Head { state_dir: PathBuf, listen: String },
    /// A node of `executor` with `cpu_millis` joining the head at `head`.
    #[command(hide = true)]
    Node {
        head: String,
        token_file: PathBuf,
        state_dir: PathBuf,
        executor: String,
        cpu_millis: u64,
    },
}

const BATCH: usize = 1000;

/// `--keep`: every run's state dir and logs stay.
static KEEP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::init_tracing();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.role {
        Some(Role::Head { state_dir, listen }) => runtime.block_on(serve_head(state_dir, listen)),
        Some(Role::Node {
            head,
            token_file,
            state_dir,
            executor,
            cpu_millis,
        }) => runtime.block_on(serve_node(
            head, token_file, state_dir, &executor, cpu_millis,
        )),
        None => runtime.block_on(bench(&args)),
    }
}

async fn serve_head(state_dir: PathBuf, listen: String) -> anyhow::Result<()> {
    let config = rgrid_head::HeadConfig {
        listen: listen.parse()?,
        state_dir,
        // Every simulated node joins and connects from this one host, many at once.
        max_unauthenticated: 4096,
        max_unauthenticated_per_address: 1024,
        joins_per_second: 1000,
        ..rgrid_head::HeadConfig::default()
    };
    let shutdown = CancellationToken::new();
    let head = rgrid_head::start(config, shutdown.clone()).await?;
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    head.wait().await?;
    Ok(())
}

async fn serve_node(
    head: String,
    token_file: PathBuf,
    state_dir: PathBuf,
    executor: &str,
    cpu_millis: u64,
) -> anyhow::Result<()> {
    let mut config = rgrid_node::NodeConfig {
        head,
        token_file: Some(token_file),
        state_dir,
        executor: match executor {
            "process" => rgrid_node::ExecutorKind::Process,
            "docker" => rgrid_node::ExecutorKind::Docker,
            _ => rgrid_node::ExecutorKind::Noop,
        },
        cpu_millis: Some(cpu_millis),
        memory: Some("1024G".into()),
        ..rgrid_node::NodeConfig::default()
    };
    // `RGRID_NODE_*` overrides, e.g. `RGRID_NODE_HOURLY_PRICE` to measure the head's billing.
    config.apply_env(|name| std::env::var(name).ok())?;
    rgrid_node::run(config, CancellationToken::new()).await?;
    Ok(())
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Proc {
    fn spawn(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = Command::new(exe)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a child process")?;
        Ok(Self(child))
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Cpu seconds used so far (user + system).
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).ok()?;
        // The fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A head child with its state dir, and the nodes started against it.
struct Setup {
    exe: PathBuf,
    dir: tempfile::TempDir,
    listen: String,
    head: Option<Proc>,
    nodes: Vec<Proc>,
}

impl Setup {
    async fn start(exe: &Path) -> anyhow::Result<Self> {
        let mut dir = tempfile::tempdir()?;
        if KEEP.load(std::sync::atomic::Ordering::Relaxed) {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut setup = Self {
            exe: exe.to_owned(),
            dir,
            listen: format!("127.0.0.1:{port}"),
            head: None,
            nodes: Vec::new(),
        };
        setup.start_head().await?;
        Ok(setup)
    }

    fn head_dir(&self) -> PathBuf {
        self.dir.path().join("head")
    }

    /// Starts the head and returns once it answers.
    async fn start_head(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let dir = self.head_dir();
        let log = self.dir.path().join("head.log");
        let dir_arg = dir.display().to_string();
        self.head = Some(Proc::spawn(
            &self.exe,
            &["head", &dir_arg, &self.listen],
            &log,
        )?);
        loop {
            if started.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the head did not answer within 120 s; see {}",
                    log.display()
                );
            }
            if dir.join("client.toml").exists() {
                if let Ok(client) = Client::connect_file(dir.join("client.toml")).await {
                    if client.status().await.is_ok() {
                        return Ok(started.elapsed());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn head(&self) -> anyhow::Result<&Proc> {
        self.head.as_ref().context("the head is not running")
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_file(self.head_dir().join("client.toml")).await?)
    }

    /// Starts `n` nodes and waits until they are ready.
    async fn nodes(&mut self, n: usize, executor: &str, cpu_millis: u64) -> anyhow::Result<()> {
        let before = self.nodes.len();
        for i in before..before + n {
            let state = self.dir.path().join(format!("node-{i}"));
            let token = self.head_dir().join("join-token");
            let log = self.dir.path().join(format!("node-{i}.log"));
            let args = [
                "node".to_owned(),
                self.listen.clone(),
                token.display().to_string(),
                state.display().to_string(),
                executor.to_owned(),
                cpu_millis.to_string(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.nodes.push(Proc::spawn(&self.exe, &args, &log)?);
        }
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .nodes()
            .await?
            .iter()
            .filter(|n| n.state == "ready")
            .count()
            < before + n
        {
            if Instant::now() > deadline {
                bail!("nodes did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

fn noop_task() -> TaskSpec {
    TaskSpec::new("none")
        .command(["true"])
        .cpu_millis(100)
        .memory_bytes(8 << 20)
}

/// A fan-out/fan-in DAG in submission order: a root, `middle` tasks each taking its output,
/// and sinks each taking the outputs of up to 1,000 middle tasks. Returns it with its edges.
fn dag(middle: usize) -> (Vec<TaskSpec>, usize) {
    let root = noop_task().output("o", "/o");
    let root_ref = TaskRef { id: root.id };
    let mids: Vec<TaskSpec> = (0..middle)
        .map(|_| {
            noop_task()
                .input("/in", root_ref.output("o"))
                .output("o", "/o")
        })
        .collect();
    let sinks: Vec<TaskSpec> = mids
        .chunks(rgrid_core::task::MAX_INPUTS)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(noop_task(), |sink, (i, mid)| {
                    sink.input(format!("/in/{i}"), TaskRef { id: mid.id }.output("o"))
                })
        })
        .collect();
    let edges = middle * 2;
    let mut specs = vec![root];
    specs.extend(mids);
    specs.extend(sinks);
    (specs, edges)
}

/// Submits `n` tasks in batches; returns their refs.
async fn submit_all(client: &Client, n: usize) -> anyhow::Result<Vec<TaskRef>> {
    let mut refs = Vec::with_capacity(n);
    while refs.len() < n {
        let batch = (0..BATCH.min(n - refs.len()))
            .map(|_| noop_task())
            .collect();
        refs.extend(client.submit_batch(batch).await?);
    }
    Ok(refs)
}

/// Waits for every task and checks that each succeeded.
async fn wait_all(client: &Client, refs: &[TaskRef]) -> anyhow::Result<()> {
    let (ready, not_ready) = client.wait(refs, refs.len(), None).await?;
    if !not_ready.is_empty() || ready.len() != refs.len() {
        bail!("{} tasks did not end", not_ready.len());
    }
    Ok(())
}

/// `clients` clients submit `n` tasks between them and wait for all; tasks per second.
async fn throughput(setup: &Setup, clients: usize, n: usize) -> anyhow::Result<f64> {
    let mut connected = Vec::new();
    for _ in 0..clients {
        connected.push(setup.client().await?);
    }
    let started = Instant::now();
    let runs = connected.iter().map(|client| async move {
        let refs = submit_all(client, n / clients).await?;
        wait_all(client, &refs).await?;
        Ok::<_, anyhow::Error>(refs.len())
    });
    let done: usize = futures::future::try_join_all(runs).await?.into_iter().sum();
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

type Figures = BTreeMap<&'static str, serde_json::Value>;

fn say(json: bool, what: &str) {
    if !json {
        println!("{what}");
    }
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    KEEP.store(args.keep, std::sync::atomic::Ordering::Relaxed);
    let runs = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut figures = Figures::new();

    if runs("async") || runs("durability") {
        let mut setup = Setup::start(&exe).await?;
        setup.nodes(2, "noop", 1_000_000).await?;
        // Warm up the connections and the database.
        throughput(&setup, 1, 10 * BATCH).await?;
        let one = throughput(&setup, 1, args.tasks).await?;
        let four = throughput(&setup, 4, args.tasks).await?;
        say(args.json, &format!("async: {one:.0} tasks/s with one client, {four:.0} with four ({} noop tasks, 2 noop nodes, SQLite synchronous=FULL)", args.tasks));
        figures.insert("async_tasks_per_s", (one.round() as u64).into());
        figures.insert("async4_tasks_per_s", (four.round() as u64).into());
        if runs("durability") {
            match no_persist_build(&exe) {
                Ok(no_persist) => {
                    let mut setup = Setup::start(&no_persist).await?;
                    setup.nodes(2, "noop", 1_000_000).await?;
                    throughput(&setup, 1, 10 * BATCH).await?;
                    let fast = throughput(&setup, 1, args.tasks).await?;
                    let cost = 1.0 - one / fast;
                    say(args.json, &format!("durability: {fast:.0} tasks/s without persistence against {one:.0} durable: durability costs {:.0} %", cost * 100.0));
                    figures.insert("no_persist_tasks_per_s", (fast.round() as u64).into());
                    figures.insert("durability_cost", ((cost * 1000.0).round() / 1000.0).into());
                }
                Err(err) => {
                    say(args.json, &format!("durability: not measured ({err:#})"));
                    figures.insert("durability_cost", serde_json::Value::Null);
                }
            }
        }
    }

    if runs("sync") {
        let mut setup = Setup::start(&exe).await?;
        setup.nodes(1, "noop", 1_000_000).await?;
        let client = setup.client().await?;
        let mut times = Vec::new();
        let mut submits = Vec::new();
        for round in 0..2100 {
            let started = Instant::now();
            let task = client.submit(noop_task()).await?;
            let submitted = started.elapsed();
            client.get(&task).await?;
            if round >= 100 {
                times.push(started.elapsed());
                submits.push(submitted);
            }
        }
        times.sort();
        submits.sort();
        let submit_p50 = percentile(&submits, 0.5);
        figures.insert("sync_submit_p50_us", (submit_p50.round() as u64).into());
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        say(
            args.json,
            &format!(
                "sync: submit → outcome p50 {p50:.0} µs, p99 {p99:.0} µs (2,000 one after another; the submit alone: p50 {submit_p50:.0} µs)"
            ),
        );
        figures.insert("sync_p50_us", (p50.round() as u64).into());
        figures.insert("sync_p99_us", (p99.round() as u64).into());
    }

    if runs("million") {
        let mut setup = Setup::start(&exe).await?;
        let clients = futures::future::try_join_all((0..4).map(|_| setup.client())).await?;
        let started = Instant::now();
        let n = args.million;
        let refs =
            futures::future::try_join_all(clients.iter().map(|c| submit_all(c, n / 4))).await?;
        let submitted = started.elapsed();
        let queued_rss = setup.head()?.status_kib("VmRSS").unwrap_or(0) / 1024;
        // What `rgrid tasks` asks with all of them queued: one page.
        let listed = Instant::now();
        let page = clients[0].tasks_page(TaskQuery::default()).await?;
        let list_ms = listed.elapsed().as_secs_f64() * 1000.0;
        say(
            args.json,
            &format!(
                "million: the first page of the listing ({} tasks) in {list_ms:.1} ms",
                page.tasks.len()
            ),
        );
        figures.insert(
            "million_list_page_ms",
            ((list_ms * 10.0).round() / 10.0).into(),
        );
        setup.nodes(2, "noop", 1_000_000).await?;
        futures::future::try_join_all(clients.iter().zip(&refs).map(|(c, r)| wait_all(c, r)))
            .await?;
        let total = started.elapsed();
        let peak = setup.head()?.status_kib("VmHWM").unwrap_or(0) / 1024;
        say(args.json, &format!("million: {n} submitted in {:.1} s (head RSS {queued_rss} MiB with all of them queued), drained by 2 noop nodes {:.1} s after the first submit; head peak RSS {peak} MiB", submitted.as_secs_f64(), total.as_secs_f64()));
        figures.insert(
            "million_submit_s",
            ((submitted.as_secs_f64() * 10.0).round() / 10.0).into(),
        );
        figures.insert("million_queued_rss_mib", queued_rss.into());
        figures.insert(
            "million_submit_drain_s",
            ((total.as_secs_f64() * 10.0).round() / 10.0).into(),
        );
        figures.insert("million_peak_rss_mib", peak.into());
    }

    if runs("restart") {
        let mut setup = Setup::start(&exe).await?;
        let clients = futures::future::try_join_all((0..4).map(|_| setup.client())).await?;
        let n = args.million;
        futures::future::try_join_all(clients.iter().map(|c| submit_all(c, n / 4))).await?;
        drop(clients);
        if let Some(mut head) = setup.head.take() {
            head.kill();
        }
        let took = setup.start_head().await?;
        let status = setup.client().await?.status().await?;
        let open: u64 = status
            .tasks
            .iter()
            .filter(|(s, _)| !s.is_terminal())
            .map(|(_, n)| n)
            .sum();
        if open != (n / 4 * 4) as u64 {
            bail!("after the restart the head holds {open} open tasks, not {n}");
        }
        say(
            args.json,
            &format!(
                "restart: SIGKILL with {open} open tasks, serving again after {:.1} s",
                took.as_secs_f64()
            ),
        );
        figures.insert(
            "restart_1m_s",
            ((took.as_secs_f64() * 10.0).round() / 10.0).into(),
        );
    }

    if runs("heartbeat") {
        let setup = Setup::start(&exe).await?;
        let cpu = heartbeats(&setup, 10_000).await?;
        say(args.json, &format!("heartbeat: the head uses {cpu:.2} cores with 10,000 nodes heartbeating every second"));
        figures.insert("heartbeat_10k_cpu", ((cpu * 100.0).round() / 100.0).into());
    }

    if runs("dag") {
        let mut setup = Setup::start(&exe).await?;
        setup.nodes(2, "noop", 1_000_000).await?;
        let client = setup.client().await?;
        throughput(&setup, 1, BATCH).await?;
        // The same tasks with the same outputs, without inputs: what is left is the dependencies'.
        // Alternated three times (a fresh DAG each time); the medians are compared, as one run
        // of either varies by more than the effect.
        let (mut flat_runs, mut dag_runs) = (Vec::new(), Vec::new());
        // The head's cpu seconds in each run: less noisy than the wall clock, which the nodes,
        // the network and the machine's other work share.
        let (mut flat_cpu, mut dag_cpu) = (Vec::new(), Vec::new());
        let head_cpu = |setup: &Setup| {
            setup
                .head
                .as_ref()
                .and_then(Proc::cpu_seconds)
                .unwrap_or(0.0)
        };
        let mut edges = 0;
        let mut tasks = 0;
        for _ in 0..3 {
            let (specs, dag_edges) = dag(args.dag);
            (edges, tasks) = (dag_edges, specs.len());
            let flat: Vec<TaskSpec> = (0..specs.len())
                .map(|_| noop_task().output("o", "/o"))
                .collect();
            for (specs, runs, cpu) in [
                (flat, &mut flat_runs, &mut flat_cpu),
                (specs, &mut dag_runs, &mut dag_cpu),
            ] {
                let (started, cpu_before) = (Instant::now(), head_cpu(&setup));
                let mut refs = Vec::new();
                for chunk in specs.chunks(BATCH) {
                    refs.extend(client.submit_batch(chunk.to_vec()).await?);
                }
                wait_all(&client, &refs).await?;
                runs.push(started.elapsed().as_secs_f64());
                cpu.push(head_cpu(&setup) - cpu_before);
            }
        }
        let median = |runs: &mut Vec<f64>| {
            runs.sort_by(f64::total_cmp);
            runs[runs.len() / 2]
        };
        let (flat_s, dag_s) = (median(&mut flat_runs), median(&mut dag_runs));
        let per_edge = (dag_s - flat_s).max(0.0) / edges as f64 * 1e6;
        let (flat_cpu_s, dag_cpu_s) = (median(&mut flat_cpu), median(&mut dag_cpu));
        let cpu_per_edge = (dag_cpu_s - flat_cpu_s).max(0.0) / edges as f64 * 1e6;
        say(args.json, &format!("dag: {tasks} tasks with {edges} edges, median of 3 {dag_s:.2} s ({dag_runs:.2?}), as many independent tasks {flat_s:.2} s ({flat_runs:.2?}): {per_edge:.1} µs per edge; the head's cpu {dag_cpu_s:.2} s ({dag_cpu:.2?}) against {flat_cpu_s:.2} s ({flat_cpu:.2?}): {cpu_per_edge:.1} µs of head cpu per edge"));
        figures.insert("dag_s", ((dag_s * 100.0).round() / 100.0).into());
        figures.insert("dag_flat_s", ((flat_s * 100.0).round() / 100.0).into());
        figures.insert(
            "dag_edge_overhead_us",
            ((per_edge * 10.0).round() / 10.0).into(),
        );
        figures.insert(
            "dag_edge_head_cpu_us",
            ((cpu_per_edge * 10.0).round() / 10.0).into(),
        );
    }

    if runs("follow") {
        rgrid::image::ensure_demo_image()?;
        let mut setup = Setup::start(&exe).await?;
        setup.nodes(1, "docker", 2000).await?;
        let client = setup.client().await?;
        let ours = follow_latencies(&client).await?;
        let floor = docker_follow_latencies().await?;
        let (p50, p99) = (percentile(&ours, 0.5) / 1e3, percentile(&ours, 0.99) / 1e3);
        let (d50, d99) = (
            percentile(&floor, 0.5) / 1e3,
            percentile(&floor, 0.99) / 1e3,
        );
        say(args.json, &format!("follow: a line written in the container until the client has it: p50 {p50:.1} ms, p99 {p99:.1} ms ({} lines); docker run's own stdout: p50 {d50:.1} ms, p99 {d99:.1} ms", ours.len()));
        for (key, value) in [
            ("follow_p50_ms", p50),
            ("follow_p99_ms", p99),
            ("docker_follow_p50_ms", d50),
            ("docker_follow_p99_ms", d99),
        ] {
            figures.insert(key, ((value * 10.0).round() / 10.0).into());
        }
    }

    if runs("transfer") {
        rgrid::image::ensure_demo_image()?;
        let mut setup = Setup::start(&exe).await?;
        setup.nodes(1, "docker", 2000).await?;
        let client = setup.client().await?;
        let (up, down, cp) = transfer(&client, setup.dir.path(), args.transfer << 20).await?;
        say(args.json, &format!("transfer: {} MiB client → head {up:.0} MiB/s, head → node (staged into a task) {down:.0} MiB/s; cp of the file {cp:.0} MiB/s", args.transfer));
        figures.insert("transfer_up_mib_s", (up.round() as u64).into());
        figures.insert("transfer_down_mib_s", (down.round() as u64).into());
        figures.insert("cp_mib_s", (cp.round() as u64).into());
    }

    if runs("process") {
        let n = 5000;
        let spawned = raw_spawns(n, 2).await?;
        let mut setup = Setup::start(&exe).await?;
        setup.nodes(1, "process", 2000).await?;
        let client = setup.client().await?;
        let started = Instant::now();
        let specs: Vec<TaskSpec> = (0..n).map(|_| noop_task().cpu_millis(500)).collect();
        let mut refs = Vec::new();
        for chunk in specs.chunks(BATCH) {
            refs.extend(client.submit_batch(chunk.to_vec()).await?);
        }
        wait_all(&client, &refs).await?;
        let ours = n as f64 / started.elapsed().as_secs_f64();
        say(args.json, &format!("process: {ours:.0} `true` tasks/s on a process node (4 at a time), raw spawns {spawned:.0}/s (2 at a time): {:.2}×", ours / spawned));
        figures.insert("process_tasks_per_s", (ours.round() as u64).into());
        figures.insert("spawn_per_s", (spawned.round() as u64).into());
        figures.insert(
            "process_vs_spawn",
            (((ours / spawned) * 100.0).round() / 100.0).into(),
        );
    }

    if runs("ray") {
        match ray_baseline() {
            Ok(ray) => {
                for key in [
                    "ray_async_tasks_per_s",
                    "ray_sync_p50_us",
                    "ray_sync_p99_us",
                    "ray_process_tasks_per_s",
                    "ray_version",
                ] {
                    if let Some(value) = ray.get(key) {
                        figures.insert(key, value.clone());
                    }
                }
                say(args.json, &format!("ray: {ray}"));
            }
            Err(err) => say(args.json, &format!("ray: not measured ({err:#})")),
        }
    }

    if args.json {
        println!("{}", serde_json::to_string(&figures)?);
    }
    Ok(())
}

/// Writes the container's clock (seconds and microseconds, from `adjtimex`) every 50 ms.
const CLOCK_LINES: &str = "for i in $(seq 200); do adjtimex | sed -n 's/.*tv_sec: *//p;s/.*tv_usec: *//p' | tr '\\n' ' '; echo; usleep 50000; done";

/// Takes complete `SECONDS MICROS` lines out of `pending`: for each, now minus its time.
fn line_latencies(pending: &mut Vec<u8>, into: &mut Vec<Duration>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let mut fields = std::str::from_utf8(&line)
            .unwrap_or("")
            .split_whitespace()
            .map(|f| f.parse::<u64>().ok());
        if let (Some(Some(secs)), Some(Some(micros))) = (fields.next(), fields.next()) {
            let written = Duration::from_secs(secs) + Duration::from_micros(micros);
            into.push(now.saturating_sub(written));
        }
    }
}

fn demo_task(script: &str) -> TaskSpec {
    TaskSpec::new(rgrid::image::DEMO_IMAGE)
        .command(["sh", "-c", script])
        .cpu_millis(250)
        .memory_bytes(64 << 20)
}

/// Follows the log of a task printing its clock: each line's latency, sorted.
async fn follow_latencies(client: &Client) -> anyhow::Result<Vec<Duration>> {
    use rgrid::{Channel, LogEvent};
    let task = client.submit(demo_task(CLOCK_LINES)).await?;
    let mut log = client.logs(&task).follow();
    let (mut pending, mut latencies) = (Vec::new(), Vec::new());
    while let Some(event) = log.next().await {
        match event? {
            LogEvent::Chunk {
                channel: Channel::Stdout,
                bytes,
                ..
            } => {
                pending.extend(bytes);
                line_latencies(&mut pending, &mut latencies);
            }
            LogEvent::End { .. } => break,
            _ => {}
        }
    }
    latencies.sort();
    Ok(latencies)
}

/// The same script under `docker run`, its stdout read here: each line's latency, sorted.
async fn docker_follow_latencies() -> anyhow::Result<Vec<Duration>> {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", rgrid::image::DEMO_IMAGE])
        .args(["sh", "-c", CLOCK_LINES])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("docker run's stdout")?;
    let (mut pending, mut latencies) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        line_latencies(&mut pending, &mut latencies);
    }
    child.wait().await?;
    latencies.sort();
    Ok(latencies)
}

/// A `bytes` file uploaded to the head, then staged into a task on a Docker node, next to `cp`
/// of it: MiB/s up, down and of `cp`.
async fn transfer(client: &Client, dir: &Path, bytes: u64) -> anyhow::Result<(f64, f64, f64)> {
    use std::io::Write as _;
    let path = dir.join("transfer.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut block = vec![0u8; 1 << 20];
        for i in 0..bytes >> 20 {
            // Different blocks, so that nothing on the way can compress them away.
            block[..8].copy_from_slice(&i.to_le_bytes());
            file.write_all(&block)?;
        }
    }
    let mib = bytes as f64 / f64::from(1 << 20);
    let copy = dir.join("transfer.copy");
    let started = Instant::now();
    let status = Command::new("cp").arg(&path).arg(&copy).status()?;
    let synced = Command::new("sync").arg(&copy).status()?;
    if !status.success() || !synced.success() {
        bail!("cp failed");
    }
    let cp = mib / started.elapsed().as_secs_f64();
    std::fs::remove_file(&copy)?;
    let started = Instant::now();
    let object = client.put_file(&path).await?;
    let up = mib / started.elapsed().as_secs_f64();
    // The same task without the input first: what is left is staging it.
    let run = |spec: TaskSpec| async move {
        let started = Instant::now();
        let task = client.submit(spec).await?;
        let outcome = client.get(&task).await?;
        if outcome.state != rgrid::TaskState::Succeeded {
            bail!(
                "the transfer task ended {:?}: {:?}",
                outcome.state,
                outcome.reason
            );
        }
        Ok::<_, anyhow::Error>(started.elapsed())
    };
    let without = run(demo_task("true")).await?;
    let with = run(demo_task("true").input("/in/big", object)).await?;
    let down = mib / with.saturating_sub(without).as_secs_f64().max(1e-3);
    Ok((up, down, cp))
}

/// `n` spawns of `true`, `parallel` at a time; spawns per second.
async fn raw_spawns(n: usize, parallel: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..parallel).map(|_| async {
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
            tokio::process::Command::new("true").status().await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    futures::future::try_join_all(workers).await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The head's cpu, in cores, while `n` simulated nodes heartbeat every second.
async fn heartbeats(setup: &Setup, n: usize) -> anyhow::Result<f64> {
    use rgrid_core::protocol::{NodeHello, NodeMessage, Request};
    let head: std::net::SocketAddr = setup.listen.parse()?;
    let token_text = std::fs::read_to_string(setup.head_dir().join("join-token"))?;
    let token = rgrid_core::tls::JoinToken::parse(&token_text)?;
    // Join them, 16 at a time, retrying what a busy head times out.
    let joined: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let token = &token;
            async move {
                let name = format!("sim-{i}");
                let mut tries = 0;
                loop {
                    match rgrid_node::identity::join(head, token, &name).await {
                        Ok(creds) => return Ok(creds),
                        Err(_) if tries < 10 => tries += 1,
                        Err(err) => return Err(err),
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let stop = CancellationToken::new();
    // Sessions open 64 at a time; then each heartbeats every second.
    let opening = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut sessions = Vec::new();
    for creds in joined {
        let stop = stop.clone();
        let opening = opening.clone();
        sessions.push(tokio::spawn(async move {
            let hello = NodeHello {
                name: "sim".into(),
                resources: rgrid::Resources::new(1000, 1 << 30),
                labels: BTreeMap::new(),
                capabilities: Vec::new(),
                running: Vec::new(),
                finished: Vec::new(),
                disconnect_grace_ms: None,
            };
            let permit = opening.acquire_owned().await?;
            let mut tries = 0;
            let (_endpoint, mut send, mut recv) = loop {
                let open = async {
                    let tls = rgrid_core::tls::client_config(&creds.ca_pem, &creds.identity)?;
                    let (endpoint, connection) =
                        rgrid_core::transport::connect(head, tls, "sim").await?;
                    let request = Request::NodeSession(hello.clone());
                    let stream = rgrid_core::transport::open_request(&connection, &request).await?;
                    let send = stream.send.retype::<NodeMessage>();
                    let mut recv = stream.recv.retype::<rgrid_core::protocol::HeadMessage>();
                    recv.expect().await?;
                    Ok::<_, anyhow::Error>((endpoint, send, recv))
                };
                match open.await {
                    Ok(session) => break session,
                    Err(_) if tries < 10 => tries += 1,
                    Err(err) => return Err(err),
                }
            };
            drop(permit);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok::<_, anyhow::Error>(()),
                    _ = tick.tick() => send.send(&NodeMessage::Heartbeat).await?,
                    message = recv.next() => if message?.is_none() { return Ok(()) },
                }
            }
        }));
    }
    let client = setup.client().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = client
            .nodes()
            .await?
            .iter()
            .filter(|n| n.state == "ready")
            .count();
        if ready >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {n} simulated nodes became ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let head = setup.head()?;
    let (before, started) = (head.cpu_seconds().unwrap_or(0.0), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = (head.cpu_seconds().unwrap_or(0.0) - before) / started.elapsed().as_secs_f64();
    let alive = client
        .nodes()
        .await?
        .iter()
        .filter(|n| n.state == "ready")
        .count();
    stop.cancel();
    for session in sessions {
        let _ = session.await;
    }
    if alive < n {
        bail!(
            "{} of {n} simulated nodes were not ready at the end",
            n - alive
        );
    }
    Ok(cpu)
}

/// This program built with `--features bench-no-persist` (built on first use).
fn no_persist_build(exe: &Path) -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = manifest.join("target").join("bench-no-persist");
    let built = target.join("release").join("examples").join("bench");
    let status = Command::new(env!("CARGO"))
        .current_dir(manifest)
        .args([
            "build",
            "--release",
            "--quiet",
            "--example",
            "bench",
            "--features",
            "bench-no-persist",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .context("cannot run cargo to build the no-persistence head")?;
    if !status.success() || !built.exists() || built == exe {
        bail!("the no-persistence build failed");
    }
    Ok(built)
}

/// Ray's figures from `../shared/bench/ray_baseline.py`, run here.
fn ray_baseline() -> anyhow::Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/ray_baseline.py");
    let probe = Command::new("python3")
        .args(["-c", "import ray"])
        .stderr(Stdio::null())
        .status()?;
    if !probe.success() {
        bail!("Ray is not installed (pip install ray)");
    }
    let out = Command::new("python3")
        .arg(&script)
        .args(["--json", "--tasks", "20000"])
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .last()
        .context("the Ray baseline printed nothing")?;
    Ok(serde_json::from_str(last)?)
}
