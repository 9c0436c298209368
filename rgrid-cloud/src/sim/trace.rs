//! Workload traces: when tasks arrive, how long they run and what they need — and a few
//! synthetic ones (steady, bursty, diurnal, mixed shapes, CI pipelines over a week,
//! long-tailed runtimes, a mix with GPU tasks) generated from a seeded RNG, so every run of the
//! simulator sees exactly the same tasks — and the node types they run on ([`node_types`]).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rgrid_core::Resources;

use crate::config::NodeTypeConfig;

const GIB: u64 = 1 << 30;

/// One task of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceTask {
    /// When it is submitted, from the start of the trace.
    pub arrival: Duration,
    /// How long it runs once started.
    pub duration: Duration,
    /// What it needs.
    pub resources: Resources,
}

/// A named workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Name shown in reports.
    pub name: String,
    /// Tasks, by arrival time.
    pub tasks: Vec<TraceTask>,
}

impl Trace {
    /// A trace from tasks (sorted here by arrival).
    pub fn new(name: impl Into<String>, mut tasks: Vec<TraceTask>) -> Self {
        tasks.sort_by_key(|t| t.arrival);
        Self {
            name: name.into(),
            tasks,
        }
    }

    /// When the last task arrives.
    pub fn span(&self) -> Duration {
        self.tasks.last().map(|t| t.arrival).unwrap_or_default()
    }

    /// The standard traces, from one seed.
    pub fn standard(seed: u64) -> Vec<Trace> {
        vec![
            steady(seed),
            bursty(seed),
            diurnal(seed),
            mixed_shapes(seed),
            ci(seed),
            long_tail(seed),
            gpu_mix(seed),
        ]
    }
}

/// The types the standard traces run on: rgrid's default shared-vCPU types, and two GPU
/// types modelled on Hetzner's GEX44 (RTX 4000 SFF Ada, 14 cores, 64 GiB) and GEX130 (RTX 6000
/// Ada, 24 threads, 128 GiB) at their monthly list price over 730 hours — Hetzner rents GPUs
/// as dedicated servers by the month, so these hourly prices are stand-ins.
pub fn node_types() -> Vec<NodeTypeConfig> {
    let mut types = NodeTypeConfig::defaults();
    for (name, cpus, mem_gib, monthly) in [("gex44", 14, 64, 184.0), ("gex130", 24, 128, 838.0)] {
        types.push(NodeTypeConfig {
            name: name.into(),
            cpus,
            memory: mem_gib * GIB,
            gpus: 1,
            custom: Default::default(),
            labels: Default::default(),
            hourly_price: monthly / 730.0,
            max_nodes: None,
            locations: Vec::new(),
        });
    }
    types
}

/// `cpus` cpus with `mem_gib` GiB.
fn shape(cpus: u64, mem_gib: u64) -> Resources {
    Resources::new(cpus * 1000, mem_gib * GIB)
}

/// 1 cpu / 2 GiB: the shape of most tasks.
pub fn small() -> Resources {
    Resources::new(1000, 2 * GIB)
}

fn minutes(m: f64) -> Duration {
    Duration::from_secs_f64(m * 60.0)
}

/// Exponentially distributed with the given mean.
pub(crate) fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    -u.ln() * mean
}

/// Log-normally distributed with the given median and shape `sigma`, clamped to `[lo, hi]`.
pub(crate) fn lognormal(rng: &mut ChaCha8Rng, median: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (median * (sigma * z).exp()).clamp(lo, hi)
}

/// Calls `arrive(rng, minute)` for each arrival of a Poisson process with `mean_gap` minutes
/// between arrivals, until minute `end`. (Gaps and what `arrive` draws interleave on one rng.)
fn poisson(
    rng: &mut ChaCha8Rng,
    mean_gap: f64,
    end: f64,
    mut arrive: impl FnMut(&mut ChaCha8Rng, f64),
) {
    let mut at = 0.0;
    loop {
        at += exponential(rng, mean_gap);
        if at > end {
            break;
        }
        arrive(rng, at);
    }
}

/// 24 hours of Poisson arrivals, one a minute on average; runtimes log-normal around
/// 10 minutes (1–60); all 1 cpu / 2 GiB.
pub fn steady(seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0001);
    let mut tasks = Vec::new();
    poisson(&mut rng, 1.0, 24.0 * 60.0, |rng, at| {
        tasks.push(TraceTask {
            arrival: minutes(at),
            duration: minutes(lognormal(rng, 10.0, 0.6, 1.0, 60.0)),
            resources: small(),
        });
    });
    Trace::new("steady", tasks)
}

/// 24 hours of bursts: every ~2 hours (exponential gaps) 40–200 tasks arrive within two
/// minutes, runtimes around 6 minutes (1–40); a trickle of one task per 20 minutes between.
pub fn bursty(seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0002);
    let mut tasks = Vec::new();
    let mut at = 10.0;
    while at < 24.0 * 60.0 {
        let n = rng.gen_range(40..=200);
        for _ in 0..n {
            tasks.push(TraceTask {
                arrival: minutes(at + rng.gen_range(0.0..2.0)),
                duration: minutes(lognormal(&mut rng, 6.0, 0.5, 1.0, 40.0)),
                resources: small(),
            });
        }
        at += exponential(&mut rng, 120.0).max(20.0);
    }
    poisson(&mut rng, 20.0, 24.0 * 60.0, |rng, at| {
        tasks.push(TraceTask {
            arrival: minutes(at),
            duration: minutes(lognormal(rng, 6.0, 0.5, 1.0, 40.0)),
            resources: small(),
        });
    });
    Trace::new("bursty", tasks)
}

/// 48 hours whose arrival rate follows the working day: ~0.1 a minute at night, ~2.5 at the
/// afternoon peak; runtimes around 15 minutes (2–90).
pub fn diurnal(seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0003);
    let mut tasks = Vec::new();
    // Thinning of a Poisson process with the peak rate.
    let peak = 2.5;
    poisson(&mut rng, 1.0 / peak, 48.0 * 60.0, |rng, at| {
        let hour = (at / 60.0) % 24.0;
        let day = ((hour - 8.0) / 12.0 * std::f64::consts::PI).sin().max(0.0);
        let rate = 0.1 + (peak - 0.1) * day * day;
        if rng.gen_range(0.0..1.0) < rate / peak {
            tasks.push(TraceTask {
                arrival: minutes(at),
                duration: minutes(lognormal(rng, 15.0, 0.7, 2.0, 90.0)),
                resources: small(),
            });
        }
    });
    Trace::new("diurnal", tasks)
}

/// Like `steady`, but shapes vary: 70% 1 cpu / 2 GiB, 20% 2 cpu / 4 GiB, 10% 4 cpu / 8 GiB.
/// A fixed-slot design must size every worker for the largest.
pub fn mixed_shapes(seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0004);
    let mut tasks = Vec::new();
    poisson(&mut rng, 1.0, 24.0 * 60.0, |rng, at| {
        let pick: f64 = rng.gen_range(0.0..1.0);
        let cpus = if pick < 0.7 {
            1
        } else if pick < 0.9 {
            2
        } else {
            4
        };
        tasks.push(TraceTask {
            arrival: minutes(at),
            duration: minutes(lognormal(rng, 10.0, 0.6, 1.0, 60.0)),
            resources: Resources::new(cpus * 1000, cpus * 2 * GIB),
        });
    });
    Trace::new("mixed", tasks)
}

/// A week of CI pipelines, from Monday 00:00: each push starts 4–20 jobs within half a
/// minute (60% builds of 2 cpu / 4 GiB, the rest tests of 1 cpu / 2 GiB), runtimes log-normal
/// around 5 minutes (1–45); pushes come 6 an hour in office hours (weekdays 8–18), one an hour
/// in the evening (18–22), one every five hours at night and at weekends.
pub fn ci(seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0005);
    let mut tasks = Vec::new();
    // Thinning of a Poisson process at the office-hours rate, in minutes.
    let peak = 6.0 / 60.0;
    poisson(&mut rng, 1.0 / peak, 7.0 * 24.0 * 60.0, |rng, at| {
        let day = (at / (24.0 * 60.0)) as u32;
        let hour = (at / 60.0) % 24.0;
        let rate = match (day, hour) {
            (5.., _) => 0.2 / 60.0,
            (_, h) if (8.0..18.0).contains(&h) => peak,
            (_, h) if (18.0..22.0).contains(&h) => 1.0 / 60.0,
            _ => 0.2 / 60.0,
        };
        if rng.gen_range(0.0..1.0) >= rate / peak {
            return;
        }
        for _ in 0..rng.gen_range(4..=20) {
            let resources = if rng.gen_range(0.0..1.0) < 0.6 {
                shape(2, 4)
            } else {
                small()
            };
            tasks.push(TraceTask {
                arrival: minutes(at + rng.gen_range(0.0..0.5)),
                duration: minutes(lognormal(rng, 5.0, 0.8, 1.0, 45.0)),
                resources,
            });
        }
    });
    Trace::new("ci", tasks)
}

/// 24 hours of Poisson arrivals, one every two minutes, whose runtimes have a long tail:
/// log-normal around 8 minutes with shape 1.4 (1 minute to 6 hours; about 7% run over an
/// hour); 80% 1 cpu / 2 GiB, 20% 2 cpu / 4 GiB.
pub fn long_tail(seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0006);
    let mut tasks = Vec::new();
    poisson(&mut rng, 2.0, 24.0 * 60.0, |rng, at| {
        let resources = if rng.gen_range(0.0..1.0) < 0.8 {
            small()
        } else {
            shape(2, 4)
        };
        tasks.push(TraceTask {
            arrival: minutes(at),
            duration: minutes(lognormal(rng, 8.0, 1.4, 1.0, 360.0)),
            resources,
        });
    });
    Trace::new("longtail", tasks)
}

/// Like `steady`, with GPU work besides: one task a minute of 1 cpu / 2 GiB around 10 minutes,
/// and one every six minutes of 4 cpu / 16 GiB / 1 GPU around 30 minutes (5–180).
pub fn gpu_mix(seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0007);
    let mut tasks = Vec::new();
    poisson(&mut rng, 1.0, 24.0 * 60.0, |rng, at| {
        tasks.push(TraceTask {
            arrival: minutes(at),
            duration: minutes(lognormal(rng, 10.0, 0.6, 1.0, 60.0)),
            resources: small(),
        });
    });
    poisson(&mut rng, 6.0, 24.0 * 60.0, |rng, at| {
        let mut resources = shape(4, 16);
        resources.gpus = 1;
        tasks.push(TraceTask {
            arrival: minutes(at),
            duration: minutes(lognormal(rng, 30.0, 0.6, 5.0, 180.0)),
            resources,
        });
    });
    Trace::new("gpu", tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_deterministic_and_plausible() {
        for (a, b) in Trace::standard(7).iter().zip(Trace::standard(7)) {
            assert_eq!(*a, b);
            assert!(a.tasks.len() > 500, "{} has {}", a.name, a.tasks.len());
            assert!(a.tasks.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        }
        assert_ne!(steady(1), steady(2));
    }
}
