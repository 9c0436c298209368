//! What the node offers: configured amounts, else what the host has (cpus, memory; GPUs are
//! detected in `gpu`).

use rgrid_core::resources::parse_size;
use rgrid_core::Resources;

use crate::config::NodeConfig;

/// Resources to advertise, with `gpus` GPUs. Configured values win over detected ones.
pub(crate) fn detect(config: &NodeConfig, gpus: usize) -> Result<Resources, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = match &config.memory {
        Some(size) => parse_size(size).map_err(|e| format!("memory: {e}"))?,
        None => host_memory().unwrap_or(1 << 30),
    };
    Ok(Resources {
        cpu_millis: config.cpu_millis.unwrap_or(cpus * 1000),
        memory_bytes: memory,
        gpus: u32::try_from(gpus).map_err(|_| format!("{gpus} GPUs is too many"))?,
        custom: config.custom.clone(),
    })
}

/// MemTotal from /proc/meminfo.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
