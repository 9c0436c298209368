//! End-to-end latency: submit → result of a trivial container task through rgrid, next to a raw
//! `docker run --rm` of the same image, measured in the same run (this machine is noisy).
//!
//! `cargo run --release --example e2e_latency [-- ROUNDS]` (default 20 rounds each).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use rgrid::{LocalCluster, TaskSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("ROUNDS must be a number")?
        .unwrap_or(20);
    rgrid::image::ensure_demo_image()?;
    let image = rgrid::image::DEMO_IMAGE;
    let cluster = LocalCluster::start().await?;
    let client = cluster.client().await?;

    let mut rgrid_times = Vec::new();
    let mut docker_times = Vec::new();
    // Warm-up, then interleave so both see the same machine state.
    for round in 0..=rounds {
        let t = Instant::now();
        let task = client
            .submit(
                TaskSpec::new(image)
                    .command(["true"])
                    .cpu_millis(100)
                    .memory_bytes(16 << 20),
            )
            .await?;
        let outcome = client.get(&task).await?;
        anyhow::ensure!(outcome.exit_code == Some(0), "task failed: {outcome:?}");
        let rgrid_time = t.elapsed();

        let t = Instant::now();
        let status = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--memory",
                "16m",
                image,
                "true",
            ])
            .status()?;
        anyhow::ensure!(status.success(), "docker run failed");
        let docker_time = t.elapsed();
        if round > 0 {
            rgrid_times.push(rgrid_time);
            docker_times.push(docker_time);
        }
    }
    cluster.stop().await;
    println!("{rounds} rounds, trivial task (`true`) in {image}");
    println!("{:<28} {:>10} {:>10} {:>10}", "", "p50", "p90", "min");
    for (name, times) in [
        ("rgrid submit→result", &mut rgrid_times),
        ("docker run --rm (CLI)", &mut docker_times),
    ] {
        times.sort();
        println!(
            "{name:<28} {:>10.1?} {:>10.1?} {:>10.1?}",
            pct(times, 50),
            pct(times, 90),
            times[0]
        );
    }
    Ok(())
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}
