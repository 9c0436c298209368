//! End-to-end latency and throughput of trivial container tasks through rgrid, next to raw
//! `docker run --rm` of the same image, measured in the same run (this machine is noisy):
//! submit → result one at a time (ROUNDS, interleaved), then TASKS tasks kept 4 in flight, against
//! TASKS `docker run --rm` on 4 threads.
//!
//! `cargo run --release --example e2e_latency [-- ROUNDS [TASKS]]` (default 20 rounds, 40 tasks).

use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rgrid::{LocalCluster, TaskSpec};

mod common;

/// Trivial container tasks through rgrid next to `docker run --rm`.
#[derive(clap::Parser)]
struct Args {
    /// Submit → result rounds, one task at a time.
    #[arg(default_value_t = 20)]
    rounds: usize,
    /// Tasks kept 4 in flight.
    #[arg(default_value_t = 40)]
    tasks: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let Args {
        rounds,
        tasks: batch,
    } = clap::Parser::parse();
    rgrid::image::ensure_demo_image()?;
    let image = rgrid::image::DEMO_IMAGE;
    let cluster = LocalCluster::start().await?;
    let client = cluster.client().await?;

    let mut rgrid_times = Vec::new();
    let mut docker_times = Vec::new();
    // Warm-up, then interleave so both see the same machine state.
    for round in 0..=rounds {
        let t = Instant::now();
        run_task(&client, image).await?;
        let rgrid_time = t.elapsed();

        let t = Instant::now();
        docker_run(image)?;
        let docker_time = t.elapsed();
        if round > 0 {
            rgrid_times.push(rgrid_time);
            docker_times.push(docker_time);
        }
    }
    // Throughput, 4 at a time.
    let t = Instant::now();
    futures::stream::iter(0..batch)
        .map(|_| run_task(&client, image))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    let rgrid_batch = t.elapsed();
    let t = Instant::now();
    let threads: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let share = batch / IN_FLIGHT + usize::from(i < batch % IN_FLIGHT);
            std::thread::spawn(move || (0..share).try_for_each(|_| docker_run(image)))
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a docker thread panicked"))??;
    }
    let docker_batch = t.elapsed();
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
    println!("\n{batch} tasks, {IN_FLIGHT} at a time");
    for (name, took) in [
        ("rgrid submit→result", rgrid_batch),
        ("docker run --rm (CLI)", docker_batch),
    ] {
        println!(
            "{name:<28} {took:>10.1?} {:>8.1} tasks/s",
            batch as f64 / took.as_secs_f64()
        );
    }
    println!(
        "throughput ratio rgrid / docker run: {:.2}x",
        docker_batch.as_secs_f64() / rgrid_batch.as_secs_f64()
    );
    Ok(())
}

/// Tasks kept in flight in the throughput run.
const IN_FLIGHT: usize = 4;

/// Submits a trivial task and waits for its result.
async fn run_task(client: &rgrid::Client, image: &str) -> anyhow::Result<()> {
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
    Ok(())
}

/// `docker run --rm` of the same task.
fn docker_run(image: &str) -> anyhow::Result<()> {
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
    Ok(())
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}
