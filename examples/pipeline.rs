//! A small map-reduce in containers, passing data through objects and task dependencies: the
//! program uploads a text file, splits it into chunks (one object each), runs one map task per
//! chunk that counts its words with busybox tools (its counts are an output), and one reduce
//! task that takes every map output as an input, adds them up and prints the most frequent
//! words. The reduce task is submitted with the maps: it waits (`Pending`) until they all
//! succeeded; the program follows its log (what it writes, as it writes it) while it runs.
//! Checked against the same count made here.
//!
//! `cargo run --example pipeline` uses a local cluster (a head and a Docker node in this process)
//! and the local `rgrid-busybox:latest` image, built from Debian's static busybox when it is
//! missing (no registry needed). `-- --chunks N` picks the number of map tasks (default 4).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use rgrid::{LocalCluster, LogEvent, TaskRef, TaskSpec, TaskState};

const WORDS: [&str; 12] = [
    "grid", "task", "object", "node", "head", "output", "input", "reduce", "map", "data", "flow",
    "rust",
];

/// Some text: `lines` lines of words from [`WORDS`], picked by a fixed pseudo-random sequence.
fn text(lines: usize) -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = String::new();
    for _ in 0..lines {
        let words = 3 + (state % 7) as usize;
        for w in 0..words {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if w > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        }
        out.push('\n');
    }
    out
}

mod common;

/// A map-reduce in containers over objects and task dependencies.
#[derive(clap::Parser)]
struct Args {
    /// Map tasks (chunks of the text).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    chunks: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let chunks = usize::from(<Args as clap::Parser>::parse().chunks);
    if rgrid::image::ensure_demo_image()? {
        println!(
            "built {} locally (no registry needed)",
            rgrid::image::DEMO_IMAGE
        );
    }
    let image = rgrid::image::DEMO_IMAGE;
    let started = Instant::now();
    let cluster = LocalCluster::start()
        .await
        .context("cannot start the local cluster")?;
    let client = cluster.client().await?;

    // The input: a text file, uploaded whole, then split into chunk objects by lines.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("words.txt");
    let text = text(2000);
    std::fs::write(&path, &text)?;
    let whole = client.put_file(&path).await?;
    println!(
        "uploaded {} ({} bytes) as {whole}",
        path.display(),
        text.len()
    );
    let lines: Vec<&str> = text.lines().collect();
    let per_chunk = lines.len().div_ceil(chunks);
    let mut pieces = Vec::new();
    for part in lines.chunks(per_chunk) {
        pieces.push(client.put_bytes(format!("{}\n", part.join("\n"))).await?);
    }

    // One map per chunk: its word counts ("COUNT WORD" lines) are its output "counts".
    let maps: Vec<TaskSpec> = pieces
        .iter()
        .map(|piece| {
            TaskSpec::new(image)
                .command([
                    "sh",
                    "-c",
                    "mkdir -p /out && tr -s ' ' '\\n' < /in/chunk | grep -v '^$' | sort | uniq -c > /out/counts",
                ])
                .cpu_millis(250)
                .memory_bytes(32 << 20)
                .input("/in/chunk", *piece)
                .output("counts", "/out/counts")
        })
        .collect();
    // The reduce takes every map's output: it waits until they have all succeeded.
    let mut reduce = TaskSpec::new(image)
        .command([
            "sh",
            "-c",
            "echo adding up $(ls /in | wc -l) counts >&2; cat /in/* | awk '{n[$2] += $1} END {for (w in n) print n[w], w}' | sort -rn",
        ])
        .cpu_millis(250)
        .memory_bytes(32 << 20);
    for (i, map) in maps.iter().enumerate() {
        reduce = reduce.input(format!("/in/{i}"), TaskRef { id: map.id }.output("counts"));
    }
    let reduce_ref = TaskRef { id: reduce.id };
    let mut specs = maps;
    specs.push(reduce);
    client.submit_batch(specs).await?;
    println!("submitted {chunks} map tasks and a reduce task that waits for them");

    // Its log, followed from before it starts until it ends.
    let mut log = client.logs(&reduce_ref).follow();
    while let Some(event) = log.next().await {
        match event? {
            LogEvent::Chunk { channel, bytes, .. } => {
                for line in String::from_utf8_lossy(&bytes).lines() {
                    println!("reduce {channel} | {line}");
                }
            }
            LogEvent::Dropped { channel, bytes, .. } => {
                println!("reduce {channel} | ({bytes} bytes dropped)")
            }
            LogEvent::End { .. } => break,
        }
    }
    let outcome = client.get(&reduce_ref).await?;
    if outcome.state != TaskState::Succeeded {
        bail!(
            "the reduce task {}: {}",
            outcome.state,
            outcome.reason.unwrap_or_default()
        );
    }
    let printed = String::from_utf8(outcome.stdout)?;

    let mut expected: HashMap<&str, u64> = HashMap::new();
    for word in text.split_whitespace() {
        *expected.entry(word).or_default() += 1;
    }
    for line in printed.lines() {
        let (count, word) = line.trim().split_once(' ').context("a COUNT WORD line")?;
        if expected.get(word).copied() != Some(count.parse()?) {
            bail!(
                "the reduce counted {count} of {word:?}, the text has {:?}",
                expected.get(word)
            );
        }
    }
    if printed.lines().count() != expected.len() {
        bail!(
            "the reduce found {} words, the text has {}",
            printed.lines().count(),
            expected.len()
        );
    }
    println!(
        "checked against a count made here; done in {:?}",
        started.elapsed()
    );
    cluster.stop().await;
    Ok(())
}
