//! `rgrid-node`: parses arguments, sets up logging, runs the node until SIGINT/SIGTERM.
//! Precedence: flags over `RGRID_NODE_*` variables over the config file over detection.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rgrid_core::config::parse_label;
use rgrid_node::{ExecutorKind, NodeConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "rgrid-node", version, about = "The rgrid node daemon")]
struct Args {
    /// The head's address, HOST:PORT.
    #[arg(long)]
    head: Option<String>,
    /// File holding the join token (needed on first start only).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where the node keeps its key and certificate.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Name shown in listings (default: host name).
    #[arg(long)]
    name: Option<String>,
    /// Label K=V, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// How tasks run.
    #[arg(long, value_enum)]
    executor: Option<ExecutorKind>,
    /// Millicores offered (default: all cpus).
    #[arg(long)]
    cpu_millis: Option<u64>,
    /// Memory offered, like 8G (default: all memory).
    #[arg(long)]
    memory: Option<String>,
    /// On SIGTERM, how long running tasks may go on before they are handed back (like 60s).
    #[arg(long, value_parser = humantime::parse_duration)]
    drain_deadline: Option<std::time::Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: off).
    #[arg(long, env = "RGRID_NODE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// TOML config file.
    #[arg(long, env = "RGRID_NODE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::default(),
    };
    config.apply_env(|name| std::env::var(name).ok())?;
    if let Some(head) = args.head {
        config.head = head;
    }
    anyhow::ensure!(!config.head.is_empty(), "--head ADDR:PORT is required");
    if args.token_file.is_some() {
        config.token_file = args.token_file;
    }
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if args.name.is_some() {
        config.name = args.name;
    }
    config.labels.extend(args.labels);
    if let Some(executor) = args.executor {
        config.executor = executor;
    }
    if args.cpu_millis.is_some() {
        config.cpu_millis = args.cpu_millis;
    }
    if args.memory.is_some() {
        config.memory = args.memory;
    }
    if let Some(deadline) = args.drain_deadline {
        config.drain_deadline = deadline;
    }
    if args.metrics_listen.is_some() {
        config.metrics_listen = args.metrics_listen;
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        stop.cancel();
    });
    rgrid_node::run(config, shutdown)
        .await
        .context("rgrid-node stopped")
}
