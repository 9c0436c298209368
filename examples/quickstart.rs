//! Starts a local cluster (a head and a Docker node in this process, SQLite in a temporary dir),
//! runs a handful of containerized tasks with different resource requests in parallel, and prints
//! their outputs.
//!
//! `cargo run --example quickstart` uses the local `rgrid-busybox:latest` image, built from
//! Debian's static busybox when it is missing (no registry needed). With a registry, any image
//! works: `cargo run --example quickstart -- --image python:3.12-slim` (commands use `sh -c`).

use std::time::Instant;

use anyhow::Context;
use rgrid::{format_size, LocalCluster, TaskSpec};

mod common;

/// A local cluster running a handful of containerized tasks.
#[derive(clap::Parser)]
struct Args {
    /// The image the tasks run (default: the local demo image, built when missing).
    #[arg(long)]
    image: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = <Args as clap::Parser>::parse();
    let image = match args.image {
        Some(image) => image,
        None => {
            if rgrid::image::ensure_demo_image()? {
                println!(
                    "built {} locally from the static busybox (no registry needed)",
                    rgrid::image::DEMO_IMAGE
                );
            }
            rgrid::image::DEMO_IMAGE.to_owned()
        }
    };

    let started = Instant::now();
    let cluster = LocalCluster::start()
        .await
        .context("cannot start the local cluster")?;
    let client = cluster.client().await?;
    println!("local cluster up in {:?}", started.elapsed());

    let shapes: [(u64, u64); 5] = [
        (250, 32 << 20),
        (500, 64 << 20),
        (1000, 128 << 20),
        (250, 16 << 20),
        (500, 256 << 20),
    ];
    let specs: Vec<TaskSpec> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(cpu, mem))| {
            TaskSpec::new(&image)
                .command([
                    "sh",
                    "-c",
                    &format!(
                        "echo task {i}: $(uname -s) with {} and {}m cpu; echo done >&2",
                        format_size(mem),
                        cpu
                    ),
                ])
                .cpu_millis(cpu)
                .memory_bytes(mem)
        })
        .collect();
    let t0 = Instant::now();
    let tasks = client.submit_batch(specs).await?;
    let outcomes = wait_all(&client, &tasks).await?;
    for outcome in outcomes {
        print!(
            "{} {:<9} exit={:?} stdout: {}",
            outcome.task,
            outcome.state,
            outcome.exit_code,
            String::from_utf8_lossy(&outcome.stdout)
        );
    }
    println!("{} tasks in {:?}", tasks.len(), t0.elapsed());
    cluster.stop().await;
    Ok(())
}

async fn wait_all(
    client: &rgrid::Client,
    tasks: &[rgrid::TaskRef],
) -> anyhow::Result<Vec<rgrid::TaskOutcome>> {
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(client.get(task).await?);
    }
    Ok(outcomes)
}
