//! Bin packing for scale-up: which node types may be created now ([`candidates`]), and the
//! first-fit-decreasing packing of queued tasks into the type mix with the lowest price per
//! unit of packed demand ([`plan_bins`]), every bin downsized to the cheapest type that holds
//! it. Tasks are weighed by their dominant share of the largest capacity ([`weight`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use rgrid_core::task::LabelRequirement;
use rgrid_core::Resources;

use super::capacity::{Bin, Item};
use super::{satisfies, type_labels, Demand, Snapshot};
use crate::config::{AutoscalerConfig, NodeTypeConfig};

/// A type that may be created now.
#[derive(Clone)]
pub(super) struct Candidate<'a> {
    pub(super) ty: &'a NodeTypeConfig,
    pub(super) capacity: Resources,
    pub(super) location: String,
}

/// Packs one task into the first bin that takes it.
pub(super) fn pack(bins: &mut [Bin], demand: &Demand) -> Option<usize> {
    for (b, bin) in bins.iter_mut().enumerate() {
        if satisfies(&bin.labels, &demand.selector) {
            if let Ok(rest) = bin.free.checked_sub(&demand.resources) {
                bin.free = rest;
                return Some(b);
            }
        }
    }
    None
}

/// A new node planned for some items.
pub(super) struct PlannedBin {
    /// Index into the candidates.
    pub(super) candidate: usize,
    /// Indices into the items.
    pub(super) items: Vec<usize>,
}

/// First-fit-decreasing packing of `group` into new nodes, choosing the type mix with the
/// lowest price per unit of packed demand; every bin is then downsized to the cheapest type
/// that still holds it. Returns the bins, fullest first. Items no candidate can hold are left
/// out.
pub(super) fn plan_bins(
    group: &[usize],
    items: &[Item],
    snapshot: &Snapshot,
    candidates: &[Candidate<'_>],
) -> Vec<PlannedBin> {
    let mut remaining: Vec<usize> = group.to_vec();
    let mut out = Vec::new();
    while !remaining.is_empty() {
        let mut best: Option<(f64, Vec<PlannedBin>)> = None;
        for (c, cand) in candidates.iter().enumerate() {
            let bins = ffd(&remaining, items, snapshot, &cand.capacity);
            if bins.is_empty() {
                continue;
            }
            let mut price = 0.0;
            let mut weight = 0.0;
            let mut planned = Vec::with_capacity(bins.len());
            for members in bins {
                let (cheapest, p) = cheapest_holding(candidates, &members, items, snapshot)
                    .unwrap_or((c, cand.ty.hourly_price));
                price += p;
                weight += members.iter().map(|&k| items[k].weight).sum::<f64>();
                planned.push(PlannedBin {
                    candidate: cheapest,
                    items: members,
                });
            }
            let per_weight = price / weight.max(f64::MIN_POSITIVE);
            if best.as_ref().is_none_or(|(b, _)| per_weight < *b - 1e-12) {
                best = Some((per_weight, planned));
            }
        }
        let Some((_, planned)) = best else { break };
        let packed: BTreeSet<usize> = planned
            .iter()
            .flat_map(|b| b.items.iter().copied())
            .collect();
        remaining.retain(|k| !packed.contains(k));
        out.extend(planned);
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.items.len()));
    out
}

/// Packs items (already in decreasing order) into as many bins of `capacity` as needed.
fn ffd(
    members: &[usize],
    items: &[Item],
    snapshot: &Snapshot,
    capacity: &Resources,
) -> Vec<Vec<usize>> {
    let mut bins: Vec<(Resources, Vec<usize>)> = Vec::new();
    for &k in members {
        let need = &snapshot.demand[items[k].demand].resources;
        if !capacity.fits(need) {
            continue;
        }
        let slot = bins.iter_mut().find(|(free, _)| free.fits(need));
        match slot {
            Some((free, list)) => {
                if let Ok(rest) = free.checked_sub(need) {
                    *free = rest;
                    list.push(k);
                }
            }
            None => {
                if let Ok(rest) = capacity.checked_sub(need) {
                    bins.push((rest, vec![k]));
                }
            }
        }
    }
    bins.into_iter().map(|(_, list)| list).collect()
}

/// The cheapest candidate that holds every item of `members`, and its price.
fn cheapest_holding(
    candidates: &[Candidate<'_>],
    members: &[usize],
    items: &[Item],
    snapshot: &Snapshot,
) -> Option<(usize, f64)> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| holds(&c.capacity, members, items, snapshot))
        .map(|(i, c)| (i, c.ty.hourly_price))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
}

/// The largest capacity per dimension over node types and nodes: the yardstick for "how big"
/// a task is when sorting and pricing.
pub(super) fn reference_capacity(config: &AutoscalerConfig, snapshot: &Snapshot) -> Resources {
    let mut r = Resources::default();
    let caps = config
        .node_types
        .iter()
        .map(|t| t.capacity())
        .chain(snapshot.servers.iter().map(|n| n.capacity.clone()));
    for c in caps {
        r.cpu_millis = r.cpu_millis.max(c.cpu_millis);
        r.memory_bytes = r.memory_bytes.max(c.memory_bytes);
        r.gpus = r.gpus.max(c.gpus);
        for (k, v) in c.custom {
            let e = r.custom.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
    }
    r
}

/// A task's dominant share of the reference capacity.
pub(super) fn weight(need: &Resources, reference: &Resources) -> f64 {
    let share = |n: u64, r: u64| if r == 0 { 0.0 } else { n as f64 / r as f64 };
    let mut w = share(need.cpu_millis, reference.cpu_millis)
        .max(share(need.memory_bytes, reference.memory_bytes))
        .max(share(u64::from(need.gpus), u64::from(reference.gpus)));
    for (k, v) in &need.custom {
        w = w.max(share(*v, reference.custom.get(k).copied().unwrap_or(0)));
    }
    w.max(1e-9)
}

/// Whether `capacity` holds every item of `members`.
fn holds(capacity: &Resources, members: &[usize], items: &[Item], snapshot: &Snapshot) -> bool {
    let mut free = capacity.clone();
    for &k in members {
        match free.checked_sub(&snapshot.demand[items[k].demand].resources) {
            Ok(rest) => free = rest,
            Err(_) => return false,
        }
    }
    true
}

/// Node types that could be created now for `selector`, each with its first location that is
/// not sold out.
pub(super) fn candidates<'a>(
    config: &'a AutoscalerConfig,
    selector: &[LabelRequirement],
    sold_out: &BTreeMap<(&str, &str), SystemTime>,
    min_cpu: u64,
) -> Vec<Candidate<'a>> {
    let all: Vec<Candidate<'a>> = config
        .node_types
        .iter()
        .filter_map(|ty| {
            if !satisfies(&type_labels(config, ty), selector) {
                return None;
            }
            let location = config
                .locations_for(ty)
                .iter()
                .find(|l| !sold_out.contains_key(&(ty.name.as_str(), l.as_str())))?;
            Some(Candidate {
                ty,
                capacity: ty.capacity(),
                location: location.clone(),
            })
        })
        .collect();
    // Types below the growth step are skipped, unless that leaves none: then the largest.
    // The step is about cpus, so it never skips (nor forces) a type with GPUs: those are
    // chosen by price for the tasks that need them.
    let has_gpus = |c: &Candidate<'_>| c.capacity.gpus > 0;
    let largest = (all.iter().filter(|c| !has_gpus(c)))
        .map(|c| c.capacity.cpu_millis)
        .max()
        .unwrap_or(0);
    let floor = min_cpu.min(largest);
    all.into_iter()
        .filter(|c| has_gpus(c) || c.capacity.cpu_millis >= floor)
        .collect()
}
