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
    #[arg(long, env = "RGRID_CONFIG")]
    config: Option<PathBuf>,
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
    let shutdown = CancellationToken::new();
    let head = rgrid_head::start(config, shutdown.clone())
        .await
        .context("cannot start the head")?;
    eprintln!(
        "rgrid-head listening on {}; credentials in {}",
        head.local_addr,
        head.state_dir.display()
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    head.wait().await;
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
