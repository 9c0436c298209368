//! Task throughput of one head and one node: N trivial tasks (`true`, process executor, so the
//! head and the protocol are measured, not container start-up) submitted in batches by several
//! clients at once, from the first submit to the last outcome.
//!
//! `cargo run --release --example throughput [-- TASKS]` (default 5000) measures it with durable
//! writes (SQLite, WAL, synchronous=FULL, group commit); the same with
//! `--features bench-no-persist` measures it with persistence stubbed out (benchmark-only build),
//! which gives the cost of durability.

use std::time::Instant;

use anyhow::Context;
use rgrid::local::LocalClusterOptions;
use rgrid::{LocalCluster, TaskSpec};

const CLIENTS: usize = 4;
const BATCH: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tasks: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("TASKS must be a number")?
        .unwrap_or(5000);
    let cluster = LocalCluster::start_with(LocalClusterOptions {
        nodes: 1,
        executor: rgrid::local::ExecutorKind::Process,
        cpu_millis: Some(64_000),
        memory: Some("64G".into()),
    })
    .await?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let client = cluster.client().await?;
        workers.push(tokio::spawn(async move {
            let mut refs = Vec::new();
            for _ in 0..tasks / CLIENTS / BATCH {
                let batch = (0..BATCH)
                    .map(|_| {
                        TaskSpec::new("none")
                            .command(["true"])
                            .cpu_millis(100)
                            .memory_bytes(8 << 20)
                    })
                    .collect();
                refs.extend(client.submit_batch(batch).await?);
            }
            for task in &refs {
                let out = client.get(task).await?;
                anyhow::ensure!(out.exit_code == Some(0), "task failed: {out:?}");
            }
            Ok::<_, anyhow::Error>(refs.len())
        }));
    }
    let mut done = 0;
    for worker in workers {
        done += worker.await??;
    }
    let elapsed = started.elapsed();
    let mode = if cfg!(feature = "bench-no-persist") {
        "persistence stubbed out"
    } else {
        "durable (SQLite, synchronous=FULL, group commit)"
    };
    println!(
        "{done} tasks in {elapsed:.2?}: {:.0} tasks/s — {mode}",
        done as f64 / elapsed.as_secs_f64()
    );
    cluster.stop().await;
    Ok(())
}
