//! `rgrid-head`: parses arguments, sets up logging, runs the head until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rgrid_head::HeadConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "rgrid-head", version, about = "The rgrid head daemon")]
struct Args {
    /// Where the CA, join token, client.toml, database and outputs live.
    #[arg(long, env = "RGRID_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// UDP address to listen on (QUIC).
    #[arg(long, env = "RGRID_LISTEN")]
    listen: Option<SocketAddr>,
    /// Database URL (default: SQLite in the state dir).
    #[arg(long, env = "RGRID_DATABASE_URL")]
    database_url: Option<String>,
    /// TOML config file.
    #[arg(long, env = "RGRID_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the cloud-init user data a provisioned node boots with (from `[autoscaler]`).
    CloudInit {
        /// Node type (default: the first configured one).
        #[arg(long)]
        node_type: Option<String>,
    },
}

/// Stands in for the single-use join token the head mints for each server it creates.
const PREVIEW_TOKEN: &str = "PREVIEW-single-use-join-token-minted-per-server";

/// Prints what `rgrid-head cloud-init` shows.
fn print_cloud_init(config: &HeadConfig, node_type: Option<String>) -> anyhow::Result<()> {
    let autoscaler = &config.autoscaler;
    let node_type = match node_type {
        Some(name) => name,
        None => autoscaler
            .node_types
            .first()
            .map(|t| t.name.clone())
            .context("[autoscaler] has no node_types")?,
    };
    let head = config.node_facing_address(config.listen)?;
    let user_data =
        rgrid_cloud::cloud_init::render(autoscaler, &node_type, &head, PREVIEW_TOKEN)
            .with_context(|| format!("cannot render the user data for node type {node_type}"))?;
    print!("{user_data}");
    eprintln!("(the join token above is a placeholder: each server gets its own single-use, expiring token)");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Test builds only: crash points from FAILPOINTS (see the `failpoints` feature).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => HeadConfig::from_file(path)?,
        None => HeadConfig::default(),
    };
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = args.database_url {
        config.database_url = Some(url);
    }
    if let Some(Command::CloudInit { node_type }) = args.command {
        return print_cloud_init(&config, node_type);
    }
    let shutdown = CancellationToken::new();
    let head = rgrid_head::start(config, shutdown.clone())
        .await
        .context("cannot start the head")?;
    eprintln!(
        "rgrid-head listening on {}; credentials in {}",
        head.local_addr,
        head.state_dir.display()
    );
    tokio::select! {
        signal = wait_for_signal() => signal?,
        // The head stops itself when its database keeps failing.
        _ = shutdown.cancelled() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    head.wait().await.context("the head stopped")?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    Ok(())
}
