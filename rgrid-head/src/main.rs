//! `rgrid-head`: parses arguments, sets up logging, runs the head until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rgrid_core::config::parse_label;
use rgrid_core::tls::ClientRole;
use rgrid_head::{Admin, HeadConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "rgrid-head", version, about = "The rgrid head daemon")]
struct Args {
    /// Where the CA, join token, client.toml, database and outputs live.
    #[arg(long, env = "RGRID_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// UDP address to listen on (QUIC).
    #[arg(long, env = "RGRID_LISTEN")]
    listen: Option<SocketAddr>,
    /// Database URL (default: SQLite in the state dir).
    #[arg(long, env = "RGRID_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Address clients and provisioned nodes reach the head at, HOST:PORT (written into
    /// client.toml).
    #[arg(long, env = "RGRID_ADVERTISE")]
    advertise: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: off).
    #[arg(long, env = "RGRID_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
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
    #[command(flatten)]
    Admin(AdminCommand),
}

/// Credentials, administered in the head's state dir and database.
#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Join tokens in the head's state dir and database (the head may be running or stopped).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Client credentials signed by the head's CA.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Create a join token and print it (its secret is shown only this once).
    Create {
        /// How long it is valid, like 1h or 7d (default: the head's join_token_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Only one node may join with it.
        #[arg(long)]
        single_use: bool,
        /// Label K=V recorded with the token (what it is for), repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List join tokens (ids and states; secrets are never stored).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke a join token: no node joins with it any more.
    Revoke { id: String },
}

#[derive(clap::Subcommand)]
enum ClientCommand {
    /// List the client certificates the head signed (name, role, serial, state, expiry).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke every certificate of a client: a running head refuses it within a second.
    Revoke { name: String },
    /// Write a client.toml for another person or program.
    Create {
        /// Client name (its certificate says client:NAME).
        name: String,
        /// Role recorded in the certificate.
        #[arg(long, default_value = "submit", value_parser = parse_role)]
        role: ClientRole,
        /// Where to write it (never overwritten).
        #[arg(long, default_value = "client.toml")]
        out: PathBuf,
        /// Head address HOST:PORT written into it (default: `advertise`, else the address in
        /// STATE_DIR/client.toml).
        #[arg(long)]
        head: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn parse_role(s: &str) -> Result<ClientRole, String> {
    s.parse()
}

/// Runs `rgrid-head token …` or `rgrid-head client …` against the state the config names.
async fn administer(config: &HeadConfig, command: AdminCommand) -> anyhow::Result<()> {
    let admin = Admin::open(config).await?;
    let result = match command {
        AdminCommand::Token { command } => token(&admin, config, command).await,
        AdminCommand::Client { command } => client(&admin, command).await,
    };
    admin.close().await;
    result
}

async fn token(admin: &Admin, config: &HeadConfig, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            ttl,
            single_use,
            labels,
        } => {
            let ttl = ttl.unwrap_or(config.join_token_ttl);
            let (token, info) = admin
                .create_token(ttl, single_use, labels.into_iter().collect())
                .await?;
            println!("{token}");
            eprintln!(
                "token {} valid until {}{}",
                info.id,
                info.expires_at_ms.map_or("forever".into(), rfc3339),
                if single_use { ", single use" } else { "" }
            );
        }
        TokenCommand::List { output } => {
            let tokens = admin.tokens().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&tokens)?),
                Output::Table => {
                    println!(
                        "{:<10} {:<8} {:<20} {:<20} {:<6} LABELS",
                        "ID", "STATE", "CREATED", "EXPIRES", "USES"
                    );
                    for t in tokens {
                        let labels: Vec<String> =
                            t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        println!(
                            "{:<10} {:<8} {:<20} {:<20} {:<6} {}",
                            t.id,
                            t.state,
                            rfc3339(t.created_at_ms),
                            t.expires_at_ms.map_or("never".into(), rfc3339),
                            if t.single_use { "once" } else { "many" },
                            labels.join(",")
                        );
                    }
                }
            }
        }
        TokenCommand::Revoke { id } => {
            admin.revoke_token(&id).await?;
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}

async fn client(admin: &Admin, command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Create {
            name,
            role,
            out,
            head,
        } => {
            admin
                .create_client(&name, role, head.as_deref(), &out)
                .await?;
            eprintln!("wrote {} for client:{name} ({role})", out.display());
        }
        ClientCommand::List { output } => {
            let clients = admin.clients().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&clients)?),
                Output::Table => {
                    println!(
                        "{:<20} {:<7} {:<8} {:<20} {:<20} SERIAL",
                        "NAME", "ROLE", "STATE", "ISSUED", "EXPIRES"
                    );
                    for c in clients {
                        println!(
                            "{:<20} {:<7} {:<8} {:<20} {:<20} {}",
                            c.name,
                            c.role,
                            c.state,
                            rfc3339(c.issued_at_ms),
                            rfc3339(c.expires_at_ms),
                            c.serial
                        );
                    }
                }
            }
        }
        ClientCommand::Revoke { name } => {
            let serials = admin.revoke_client(&name).await?;
            eprintln!(
                "revoked client {name} ({} certificate{})",
                serials.len(),
                if serials.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
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
    if args.advertise.is_some() {
        config.advertise = args.advertise;
    }
    if args.metrics_listen.is_some() {
        config.metrics_listen = args.metrics_listen;
    }
    match args.command {
        Some(Command::CloudInit { node_type }) => return print_cloud_init(&config, node_type),
        Some(Command::Admin(command)) => return administer(&config, command).await,
        None => {}
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
