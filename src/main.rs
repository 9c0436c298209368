//! `rgrid`: the command-line client.
//!
//! Exit codes: a task's own exit code; [`EXIT_NO_CODE`] when the task ended without one;
//! [`EXIT_CLI_ERROR`] when the CLI itself failed.

use rgrid_core::text::printable;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use indicatif::ProgressBar;
use rgrid::{
    format_size, parse_size, Channel, Client, CostBy, CostGroup, CostQuery, InputSource,
    LabelRequirement, LogEvent, TaskId, TaskInfo, TaskOutcome, TaskQuery, TaskRef, TaskSpec,
    TaskState,
};

/// Exit code of the CLI's own failures (bad usage, credentials, connection, a request the head
/// refused), as `docker run` uses 125 for its own. A task's exit code is passed through as is.
const EXIT_CLI_ERROR: i32 = 125;
/// Exit code when the task ended without an exit code of its own (out of memory, timeout,
/// image missing, unschedulable, lost, cancelled); the reason goes to stderr.
const EXIT_NO_CODE: i32 = 124;

#[derive(Parser)]
#[command(
    name = "rgrid",
    version,
    about = "Submit containerized tasks to an rgrid cluster"
)]
struct Args {
    /// Credentials file written by rgrid-head (STATE_DIR/client.toml).
    #[arg(long, env = "RGRID_CONFIG", default_value = "rgrid-state/client.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a task; prints its id (or, with --wait, its output).
    Submit {
        #[arg(long, default_value = rgrid::image::DEMO_IMAGE)]
        image: String,
        /// CPUs, fractions allowed (0.5 = 500 millicores).
        #[arg(long, default_value_t = 1.0)]
        cpus: f64,
        /// Memory, like 512M or 2G; also the container's limit.
        #[arg(long, default_value = "256M")]
        memory: String,
        #[arg(long, default_value_t = 0)]
        gpus: u32,
        /// Node label the task requires: K=V, K!=V, 'K in (A,B)' or K. Repeatable.
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// A file staged read-only into the container before it starts: PATH=OBJECT_ID (an id
        /// `rgrid put` printed), PATH=TASK_ID:NAME (output NAME of another task: this one
        /// waits until that one has succeeded) or PATH=TASK_ID:stdout (its stdout). Repeatable.
        #[arg(long = "input", value_parser = parse_input)]
        inputs: Vec<(String, InputSource)>,
        /// A file or directory (stored as a tar) collected from the container after it exits 0,
        /// stored as an object: NAME=PATH. Repeatable.
        #[arg(long = "out", value_parser = parse_output)]
        outputs: Vec<(String, String)>,
        /// Node-loss retries (default 3).
        #[arg(long)]
        retries: Option<u32>,
        /// Reruns after a non-zero exit, OOM or timeout (default 0).
        #[arg(long, default_value_t = 0)]
        retry_on_failure: u32,
        /// Timeout of one attempt, in seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Wait for the task and behave like `rgrid get`.
        #[arg(long)]
        wait: bool,
        /// `json`: print `{"task": ID}` (with --wait: the outcome, as `get -o json`).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Command and arguments.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Wait for a task; print its stdout (stderr to stderr); exit with its exit code.
    Get {
        task: TaskId,
        /// `json`: print the outcome (state, exit code, reason, stdout, stderr, attempts).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Download the task's output NAME (once it succeeded) instead of printing its stdout.
        #[arg(long = "out")]
        out: Option<String>,
        /// With --out: write it to FILE (whole or not at all) instead of stdout.
        #[arg(long, requires = "out")]
        to: Option<PathBuf>,
    },
    /// Print a task's stdout and stderr: what its latest attempt wrote so far, or with -f as it
    /// is written, until the task ends.
    Logs {
        task: TaskId,
        /// Follow the output as it is written (and later attempts as they start) until the task
        /// ends.
        #[arg(short, long)]
        follow: bool,
        /// Attempt N instead of the latest (the first is 1), e.g. one whose node died.
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Cancel a task. Open tasks that depend on it end dependency_failed, or, with
    /// --recursive, are cancelled too.
    Cancel {
        task: TaskId,
        #[arg(long)]
        recursive: bool,
    },
    /// Tasks and nodes by state, and what queued tasks wait for.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Wait for tasks; print each id and its state as it ends. Exit 0 when every task
    /// succeeded, 1 otherwise (3 when the timeout passed first).
    Wait {
        #[arg(required = true)]
        tasks: Vec<TaskId>,
        /// Return once any one has ended.
        #[arg(long)]
        any: bool,
        /// Give up after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List nodes.
    Nodes {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List tasks, one page in submission order (the head pages and filters).
    Tasks {
        /// Only tasks in this state (queued, running, succeeded, …).
        #[arg(long, value_parser = parse_state)]
        state: Option<TaskState>,
        /// At most this many (the head allows up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this task id (the last one of the previous page).
        #[arg(long)]
        after: Option<TaskId>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Upload a file as an object; prints its id (HEX-SIZE), for `TaskSpec::input`.
    Put { file: PathBuf },
    /// Keep an object from retention (also across head restarts) until it is unpinned.
    Pin { object: rgrid::ObjectRef },
    /// Let retention delete an object again, once unused for object_retention from now.
    Unpin { object: rgrid::ObjectRef },
    /// List the head's objects (one page, in hash order) with their sizes and what keeps them
    /// (open tasks that take them as inputs, a pin).
    Objects {
        /// At most this many (the head allows up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this object id (the last one of the previous page).
        #[arg(long)]
        after: Option<rgrid::ObjectRef>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What tasks cost: their share of their nodes' billed hours, idle time apportioned.
    Cost {
        /// Only attempts that ended this long ago or later (`90m`, `24h`, `7d`). Default: all.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Group by the task's label selector, its resources or the client that submitted it.
        #[arg(long, value_enum)]
        by: Option<By>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Node operations.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Print a shell completion script: `rgrid completions bash > /etc/bash_completion.d/rgrid`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    Label,
    Shape,
    Client,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// No new work for NODE (name or id); its running tasks get the deadline to finish, the rest
    /// are requeued; then it leaves.
    Drain {
        node: String,
        /// Seconds running tasks may go on.
        #[arg(long, default_value_t = 60)]
        deadline: u64,
    },
    /// Remove NODE (id, or name: every node of that name) from the cluster: its certificate is
    /// revoked so it cannot reconnect, what it runs is requeued, it leaves the listing. Admin
    /// only. A removed machine rejoins only with a new token (as a new node).
    Remove { node: String },
}

fn parse_input(s: &str) -> Result<(String, InputSource), String> {
    let (path, source) = s.split_once('=').ok_or_else(|| {
        format!(
            "{s:?} is not an input: use PATH=OBJECT_ID, PATH=TASK_ID:NAME or PATH=TASK_ID:stdout"
        )
    })?;
    Ok((path.to_owned(), source.parse()?))
}

fn parse_output(s: &str) -> Result<(String, String), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not an output: use NAME=PATH"))?;
    Ok((name.to_owned(), path.to_owned()))
}

fn parse_state(s: &str) -> Result<TaskState, String> {
    TaskState::parse(s).ok_or_else(|| {
        let states: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
        format!("{s:?} is not a task state: one of {}", states.join(", "))
    })
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // --help and --version print to stdout and succeed; usage errors are CLI errors.
            let code = if err.use_stderr() { EXIT_CLI_ERROR } else { 0 };
            let _ = err.print();
            std::process::exit(code);
        }
    };
    let code = match run(args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            EXIT_CLI_ERROR
        }
    };
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<i32> {
    if let Command::Completions { shell } = args.command {
        clap_complete::generate(shell, &mut Args::command(), "rgrid", &mut std::io::stdout());
        return Ok(0);
    }
    let client = Client::connect_file(&args.config)
        .await
        .with_context(|| format!("cannot connect with {}", args.config.display()))?;
    match args.command {
        Command::Submit {
            image,
            cpus,
            memory,
            gpus,
            selectors,
            inputs,
            outputs,
            retries,
            retry_on_failure,
            timeout,
            wait,
            output,
            command,
        } => {
            if !(cpus > 0.0 && cpus.is_finite()) {
                bail!("--cpus must be a positive number");
            }
            let mut spec = TaskSpec::new(image)
                .command(command)
                .cpu_millis((cpus * 1000.0).round() as u64)
                .memory_bytes(parse_size(&memory)?)
                .gpus(gpus);
            for selector in selectors {
                let requirement: LabelRequirement =
                    selector.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                spec.constraints.selector.push(requirement);
            }
            for (path, source) in inputs {
                spec = spec.input(path, source);
            }
            for (name, path) in outputs {
                spec = spec.output(name, path);
            }
            if let Some(retries) = retries {
                spec = spec.node_loss_retries(retries);
            }
            spec.retry.on_failure = retry_on_failure;
            if let Some(secs) = timeout {
                if !(secs > 0.0 && secs.is_finite()) {
                    bail!("--timeout must be a positive number of seconds");
                }
                spec = spec.timeout(Duration::from_secs_f64(secs));
            }
            let task = client.submit(spec).await?;
            if wait {
                return print_outcome(&client, &task, output).await;
            }
            match output {
                Output::Json => println!("{}", serde_json::json!({ "task": task.id })),
                Output::Table => println!("{}", task.id),
            }
            Ok(0)
        }
        Command::Get {
            task,
            output,
            out: None,
            to: _,
        } => print_outcome(&client, &TaskRef { id: task }, output).await,
        Command::Get {
            task,
            out: Some(name),
            to,
            ..
        } => download_output(&client, &TaskRef { id: task }, &name, to.as_deref()).await,
        Command::Logs {
            task,
            follow,
            attempt,
        } => print_logs(&client, &TaskRef { id: task }, follow, attempt).await,
        Command::Cancel { task, recursive } => {
            let task_ref = TaskRef { id: task };
            let state = if recursive {
                client.cancel_recursive(&task_ref).await?
            } else {
                client.cancel(&task_ref).await?
            };
            println!("{task} {state}");
            Ok(0)
        }
        Command::Status { output } => {
            let status = client.status().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => {
                    let counts = |items: Vec<(String, u64)>| {
                        let total: u64 = items.iter().map(|(_, n)| n).sum();
                        let parts: Vec<String> =
                            items.iter().map(|(s, n)| format!("{n} {s}")).collect();
                        format!("{total} ({})", parts.join(", "))
                    };
                    println!("nodes: {}", counts(status.nodes));
                    let tasks = status
                        .tasks
                        .iter()
                        .map(|(s, n)| (s.to_string(), *n))
                        .collect();
                    println!("tasks: {}", counts(tasks));
                    if !status.servers.is_empty() {
                        println!("servers: {}", counts(status.servers));
                    }
                    for w in status.waiting {
                        let on = if w.constraints.is_empty() {
                            String::new()
                        } else {
                            format!(" on {}", w.constraints)
                        };
                        println!(
                            "waiting: {} tasks of {}m cpu, {}{on}: {}",
                            w.tasks,
                            w.resources.cpu_millis,
                            format_size(w.resources.memory_bytes),
                            w.reason.unwrap_or_default()
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Wait {
            tasks,
            any,
            timeout,
            output,
        } => {
            let refs: Vec<TaskRef> = tasks.into_iter().map(|id| TaskRef { id }).collect();
            let timeout = timeout.map(Duration::from_secs_f64);
            let wanted = if any { 1 } else { refs.len() };
            let (ready, not_ready) = client.wait(&refs, wanted, timeout).await?;
            let outcomes = client.get_many(&ready).await?;
            match output {
                Output::Json => {
                    let ended: Vec<serde_json::Value> = (outcomes.iter())
                        .map(|o| {
                            serde_json::json!({
                                "task": o.task,
                                "state": o.state,
                                "exit_code": o.exit_code,
                                "reason": o.reason,
                            })
                        })
                        .collect();
                    let not_ended: Vec<_> = not_ready.iter().map(|t| t.id).collect();
                    let answer = serde_json::json!({ "ended": ended, "not_ended": not_ended });
                    println!("{}", serde_json::to_string_pretty(&answer)?);
                }
                Output::Table => {
                    for outcome in &outcomes {
                        println!("{} {}", outcome.task, outcome.state);
                    }
                    if ready.len() < wanted {
                        for task in &not_ready {
                            println!("{} not ended", task.id);
                        }
                    }
                }
            }
            if ready.len() < wanted {
                return Ok(3);
            }
            let all_ok = outcomes.iter().all(|o| o.state == TaskState::Succeeded);
            Ok(if all_ok { 0 } else { 1 })
        }
        Command::Nodes { output } => {
            let nodes = client.nodes().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&nodes)?),
                Output::Table => {
                    println!(
                        "{:<16} {:<36} {:<9} {:>13} {:>15} {:>7}  LABELS (*: declared by the node, not its token)",
                        "NAME", "ID", "STATE", "CPU FREE/ALL", "MEM FREE/ALL", "RUNNING"
                    );
                    for n in nodes {
                        let labels: Vec<String> = n
                            .labels
                            .iter()
                            .map(|(k, v)| {
                                let mark = if n.declared_labels.contains(k) {
                                    "*"
                                } else {
                                    ""
                                };
                                format!("{}={}{mark}", printable(k), printable(v))
                            })
                            .collect();
                        let why = n
                            .unhealthy
                            .as_deref()
                            .map(|why| format!("  unhealthy: {}", printable(why)))
                            .unwrap_or_default();
                        println!(
                            "{:<16} {:<36} {:<9} {:>13} {:>15} {:>7}  {}{why}",
                            printable(&n.name),
                            n.id,
                            n.state,
                            format!("{}/{}m", n.free.cpu_millis, n.total.cpu_millis),
                            format!(
                                "{}/{}",
                                format_size(n.free.memory_bytes),
                                format_size(n.total.memory_bytes)
                            ),
                            n.running,
                            labels.join(",")
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Node {
            command: NodeCommand::Drain { node, deadline },
        } => {
            let id = client
                .drain_node(&node, Duration::from_secs(deadline))
                .await?;
            println!("draining {node} ({id}), deadline {deadline}s");
            Ok(0)
        }
        Command::Node {
            command: NodeCommand::Remove { node },
        } => {
            for id in client.remove_node(&node).await? {
                println!("removed {node} ({id}); its certificate is revoked");
            }
            Ok(0)
        }
        Command::Tasks {
            state,
            limit,
            after,
            output,
        } => {
            let page = client
                .tasks_page(TaskQuery {
                    state,
                    after,
                    limit,
                })
                .await?;
            let tasks = page.tasks;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&tasks)?),
                Output::Table => {
                    println!(
                        "{:<36} {:<13} {:>7} {:<24} DETAIL",
                        "ID", "STATE", "ATTEMPT", "IMAGE"
                    );
                    for t in tasks {
                        println!(
                            "{:<36} {:<13} {:>7} {:<24} {}",
                            t.task,
                            t.state,
                            t.attempt,
                            t.image,
                            t.detail.unwrap_or_default()
                        );
                    }
                    if let Some(next) = page.next {
                        eprintln!("(more: --after {next})");
                    }
                }
            }
            Ok(0)
        }
        Command::Put { file } => {
            let object = client.put_file(&file).await?;
            println!("{object}");
            Ok(0)
        }
        Command::Pin { object } => {
            client.pin(&object).await?;
            eprintln!("pinned {object}");
            Ok(0)
        }
        Command::Unpin { object } => {
            client.unpin(&object).await?;
            eprintln!("unpinned {object}");
            Ok(0)
        }
        Command::Objects {
            limit,
            after,
            output,
        } => {
            let page = client
                .objects_page(rgrid::ObjectQuery { after, limit })
                .await?;
            match output {
                Output::Json => {
                    let objects: Vec<serde_json::Value> = page
                        .objects
                        .iter()
                        .map(|o| {
                            serde_json::json!({
                                "object": o.object.to_string(),
                                "size": o.object.size,
                                "used_at_ms": o.used_at_ms,
                                "tasks": o.tasks,
                                "pinned": o.pinned,
                            })
                        })
                        .collect();
                    let json = serde_json::json!({
                        "objects": objects,
                        "next": page.next.map(|n| n.to_string()),
                        "stored_bytes": page.stored_bytes,
                        "quota_bytes": page.quota_bytes,
                    });
                    println!("{}", serde_json::to_string_pretty(&json)?);
                }
                Output::Table => {
                    println!("{:<80} {:>9}  KEPT BY", "OBJECT", "SIZE");
                    for o in &page.objects {
                        println!(
                            "{:<80} {:>9}  {}",
                            o.object,
                            format_size(o.object.size),
                            kept_by(o)
                        );
                    }
                    eprintln!(
                        "{} stored of a {} quota",
                        format_size(page.stored_bytes),
                        format_size(page.quota_bytes)
                    );
                    if let Some(next) = page.next {
                        eprintln!("(more: --after {next})");
                    }
                }
            }
            Ok(0)
        }
        Command::Cost { since, by, output } => {
            let by = match by {
                None => CostBy::Total,
                Some(By::Label) => CostBy::Label,
                Some(By::Shape) => CostBy::Shape,
                Some(By::Client) => CostBy::Client,
            };
            let since_ms = since.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let report = client
                .cost(CostQuery {
                    since_ms,
                    by,
                    task: None,
                })
                .await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => {
                    println!(
                        "{:<40} {:>8} {:>14} {:>12} {:>12}",
                        "GROUP", "TASKS", "NODE-SECONDS", "COST", "PROVISIONAL"
                    );
                    let row = |name: &str, g: &CostGroup| {
                        println!(
                            "{:<40} {:>8} {:>14.1} {:>12.6} {:>12.6}",
                            name, g.tasks, g.node_seconds, g.cost, g.provisional
                        );
                    };
                    if by != CostBy::Total {
                        for g in &report.groups {
                            row(if g.key.is_empty() { "-" } else { &g.key }, g);
                        }
                    }
                    row("total", &report.total);
                    if report.truncated {
                        eprintln!("(only the costliest groups are shown; the total counts all)");
                    }
                }
            }
            Ok(0)
        }
        // Printed above, before connecting.
        Command::Completions { .. } => Ok(0),
    }
}

/// Prints a task's outcome (stdout, and stderr to stderr; or all of it as JSON) and returns the
/// exit code to exit with.
async fn print_outcome(client: &Client, task: &TaskRef, output: Output) -> anyhow::Result<i32> {
    let outcome = match output {
        Output::Table if std::io::stdout().is_terminal() => with_progress(client, task).await?,
        _ => client.get(task).await?,
    };
    let cost = client.task_cost(task).await?;
    if let Output::Json = output {
        let mut json = outcome_json(&outcome);
        json["cost"] = serde_json::to_value(cost.map(|c| {
            serde_json::json!({
                "cost": c.cost,
                "provisional": c.provisional,
                "node_seconds": c.node_seconds,
            })
        }))?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(exit_code(&outcome));
    }
    std::io::stdout().write_all(&outcome.stdout)?;
    std::io::stderr().write_all(&outcome.stderr)?;
    if outcome.attempts.len() > 1 || outcome.state != TaskState::Succeeded {
        for a in &outcome.attempts {
            let ran = a.ended_at_ms.map_or("-".to_owned(), |end| {
                format!(
                    "{:.1}s",
                    end.saturating_sub(a.started_at_ms) as f64 / 1000.0
                )
            });
            eprintln!(
                "attempt {} on {} ({ran}): {}",
                a.attempt,
                printable(&a.node_name),
                printable(a.outcome.as_deref().unwrap_or("running"))
            );
        }
    }
    if let Some(c) = cost {
        let provisional = if c.provisional > 0.0 {
            format!(
                ", {:.6} of it provisional until its billed hour closes",
                c.provisional
            )
        } else {
            String::new()
        };
        eprintln!(
            "cost: {:.6} ({:.1} node-seconds{provisional})",
            c.cost, c.node_seconds
        );
    }
    if outcome.state != TaskState::Succeeded {
        eprintln!(
            "task {} {}: {}",
            outcome.task,
            outcome.state,
            printable(outcome.reason.as_deref().unwrap_or("no reason recorded"))
        );
    }
    Ok(exit_code(&outcome))
}

/// Waits for the task and writes its output `name` to `to` (whole or not at all) or stdout.
/// Prints a task's logs as they arrive: stdout to stdout, stderr to stderr, notes to stderr.
async fn print_logs(
    client: &Client,
    task: &TaskRef,
    follow: bool,
    attempt: Option<u32>,
) -> anyhow::Result<i32> {
    let mut logs = client.logs(task);
    if let Some(n) = attempt {
        logs = logs.attempt(n);
    }
    let mut events = if follow { logs.follow() } else { logs.so_far() };
    let mut shown: Option<u32> = None;
    while let Some(event) = events.next().await {
        match event? {
            LogEvent::Chunk {
                attempt,
                channel,
                bytes,
                ..
            } => {
                if shown.is_some_and(|n| n != attempt) {
                    eprintln!("--- attempt {attempt} ---");
                }
                shown = Some(attempt);
                match channel {
                    Channel::Stdout => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&bytes)?;
                        out.flush()?;
                    }
                    Channel::Stderr => std::io::stderr().write_all(&bytes)?,
                }
            }
            LogEvent::Dropped {
                attempt,
                channel,
                bytes,
            } => eprintln!(
                "[rgrid] attempt {attempt} wrote {} more to {channel} than the head keeps (max_output_bytes); they were dropped",
                format_size(bytes)
            ),
            LogEvent::End { .. } => break,
        }
    }
    Ok(0)
}

async fn download_output(
    client: &Client,
    task: &TaskRef,
    name: &str,
    to: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    let outcome = client.get(task).await?;
    if outcome.state != TaskState::Succeeded {
        bail!(
            "task {} {}: {}; it has no outputs",
            outcome.task,
            outcome.state,
            outcome.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    let Some(object) = outcome.output(name) else {
        let names: Vec<&str> = outcome.outputs.iter().map(|o| o.name.as_str()).collect();
        bail!(
            "task {} has no output {name:?} (its outputs: {})",
            outcome.task,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    match to {
        Some(path) => client.get_object_to_file(&object, path).await?,
        None => client.get_object(&object, tokio::io::stdout()).await?,
    }
    Ok(0)
}

/// Waits for the task's outcome showing one live line (on stderr) of where it is: queued and
/// why, pulling the image, starting on its node, running for how long.
async fn with_progress(client: &Client, task: &TaskRef) -> anyhow::Result<TaskOutcome> {
    let line = ProgressBar::new_spinner();
    line.enable_steady_tick(Duration::from_millis(120));
    let outcome = client.get(task);
    tokio::pin!(outcome);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut running_since = None;
    let outcome = loop {
        tokio::select! {
            outcome = &mut outcome => break outcome,
            _ = poll.tick() => {
                // A failed poll leaves the line as it was; the wait itself reports errors.
                if let Ok(Some(info)) = client.task_info(task).await {
                    line.set_message(progress(&info, &mut running_since));
                }
            }
        }
    };
    line.finish_and_clear();
    Ok(outcome?)
}

/// The live line for a task's listing entry.
fn progress(info: &TaskInfo, running_since: &mut Option<(u32, Instant)>) -> String {
    let why = |s: &str| match &info.detail {
        Some(detail) => format!("{s}: {}", printable(detail)),
        None => s.to_owned(),
    };
    match info.state {
        TaskState::Queued => why("queued"),
        TaskState::Assigned => match &info.detail {
            Some(detail) => format!("{detail} (attempt {})", info.attempt),
            None => format!("starting on its node (attempt {})", info.attempt),
        },
        TaskState::Running => {
            // Timed from when this line first saw the attempt run.
            let since = match running_since {
                Some((attempt, since)) if *attempt == info.attempt => *since,
                _ => running_since.insert((info.attempt, Instant::now())).1,
            };
            format!(
                "running {} s (attempt {})",
                since.elapsed().as_secs(),
                info.attempt
            )
        }
        state => why(state.as_str()),
    }
}

/// The task's exit code, or [`EXIT_NO_CODE`].
fn exit_code(outcome: &TaskOutcome) -> i32 {
    match (outcome.state, outcome.exit_code) {
        (_, Some(code)) => i32::try_from(code).unwrap_or(EXIT_NO_CODE),
        (TaskState::Succeeded, None) => 0,
        _ => EXIT_NO_CODE,
    }
}

/// An outcome as `-o json` prints it: output as (lossy) UTF-8 text.
fn outcome_json(outcome: &TaskOutcome) -> serde_json::Value {
    serde_json::json!({
        "task": outcome.task,
        "state": outcome.state,
        "exit_code": outcome.exit_code,
        "reason": outcome.reason,
        "stdout": String::from_utf8_lossy(&outcome.stdout),
        "stderr": String::from_utf8_lossy(&outcome.stderr),
        "attempts": outcome.attempts,
    })
}

/// What keeps an object from retention, as `rgrid objects` shows it.
fn kept_by(object: &rgrid::ObjectInfo) -> String {
    let tasks = match object.tasks {
        0 => None,
        1 => Some("1 open task".to_string()),
        n => Some(format!("{n} open tasks")),
    };
    match (object.pinned, tasks) {
        (true, Some(tasks)) => format!("pin, {tasks}"),
        (true, None) => "pin".into(),
        (false, Some(tasks)) => tasks,
        (false, None) => "-".into(),
    }
}
