//! Scale-up: servers for the queued tasks existing capacity did not absorb, once they have
//! waited `scale_up_delay` and while creation is not paused by a recent failure. Per selector,
//! the fullest node of the cheapest type mix is funded, then the rest is planned again (a type
//! that reached its cap drops out); creation is bounded by `max_nodes`, per-type `max_nodes`
//! and `max_concurrent_provisioning`. A (type, location) that reported `resource_unavailable`
//! is skipped for `unavailable_cooldown`. Then `min_nodes` is kept, from the cheapest type.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use rgrid_core::task::LabelRequirement;

use super::capacity::{Outcome, Queue};
use super::packing::{candidates, plan_bins, Candidate};
use super::{count, satisfies, type_labels, Action, Ctx, Limit, ServerState, Wait, ERROR_PAUSE};
use crate::config::{AutoscalerConfig, NodeTypeConfig};
use crate::provider::FailureKind;

/// Remaining creation allowance.
pub(super) struct Caps<'a> {
    total: u32,
    provisioning: u32,
    per_type: BTreeMap<&'a str, u32>,
}

impl<'a> Caps<'a> {
    pub(super) fn allows(&self, t: &NodeTypeConfig) -> bool {
        self.total > 0
            && self.provisioning > 0
            && t.max_nodes
                .is_none_or(|m| self.per_type.get(t.name.as_str()).copied().unwrap_or(0) < m)
    }

    pub(super) fn consume(&mut self, t: &'a NodeTypeConfig) {
        self.total -= 1;
        self.provisioning -= 1;
        *self.per_type.entry(t.name.as_str()).or_default() += 1;
    }
}

/// What creation may do now.
pub(super) struct Allowance<'a> {
    /// What it may still add.
    pub(super) caps: Caps<'a>,
    /// (type, location) pairs sold out recently, until when.
    pub(super) sold_out: BTreeMap<(&'a str, &'a str), SystemTime>,
    /// Creation pauses after a quota, rate-limit or other (non sold-out) error: until when,
    /// and why.
    pub(super) paused: Option<(SystemTime, FailureKind)>,
}

/// What creation may do in this decision (and when a sold-out pair or a pause ends).
pub(super) fn allowance<'a>(cx: &mut Ctx<'a>) -> Allowance<'a> {
    let (config, snapshot, now) = (cx.config, cx.snapshot, cx.now);
    let paused = (snapshot.failures.iter())
        .filter_map(|f| match f.kind {
            FailureKind::Quota => Some((f.at + config.unavailable_cooldown, f.kind)),
            FailureKind::RateLimited | FailureKind::Other => Some((f.at + ERROR_PAUSE, f.kind)),
            FailureKind::Unavailable => None,
        })
        .filter(|(until, _)| *until > now)
        .max_by_key(|(until, _)| *until);
    let mut sold_out: BTreeMap<(&str, &str), SystemTime> = BTreeMap::new();
    for f in &snapshot.failures {
        if f.kind == FailureKind::Unavailable {
            let until = f.at + config.unavailable_cooldown;
            if until > now {
                let e =
                    (sold_out.entry((f.node_type.as_str(), f.location.as_str()))).or_insert(until);
                *e = (*e).max(until);
                cx.wake.at(until);
            }
        }
    }
    Allowance {
        caps: caps(cx),
        sold_out,
        paused,
    }
}

/// Adds the creates to the plan and settles every pending task's outcome.
pub(super) fn create(cx: &mut Ctx<'_>, queue: &mut Queue) {
    let (config, snapshot, now) = (cx.config, cx.snapshot, cx.now);
    let Allowance {
        mut caps,
        sold_out,
        paused,
    } = allowance(cx);
    let sold_out_until = sold_out.values().min().copied();

    // Group pending, old-enough items by selector.
    let mut groups: BTreeMap<&[LabelRequirement], Vec<usize>> = BTreeMap::new();
    for (k, item) in queue.items.iter().enumerate() {
        if queue.outcomes[k] != Outcome::Pending {
            continue;
        }
        let demand = &snapshot.demand[item.demand];
        let ready_at = demand.oldest + config.scale_up_delay;
        if ready_at > now {
            queue.outcomes[k] = Outcome::Done(Wait::Delayed { until: ready_at });
            cx.wake.at(ready_at);
        } else if let Some((until, cause)) = paused {
            queue.outcomes[k] = Outcome::Done(Wait::Paused { until, cause });
            cx.wake.at(until);
        } else {
            groups.entry(&demand.selector[..]).or_default().push(k);
        }
    }

    // New nodes grow with the cluster: at least `growth` × the cpu busy or queued now.
    queue.queued = (queue.items.iter().enumerate())
        .filter(|(k, _)| queue.outcomes[*k] == Outcome::Pending)
        .map(|(_, it)| snapshot.demand[it.demand].resources.cpu_millis)
        .sum();
    let min_cpu = (config.growth.max(0.0) * queue.busy.saturating_add(queue.queued) as f64) as u64;

    let mut creates: Vec<(String, String)> = Vec::new();
    for (selector, group) in groups {
        let all = candidates(config, selector, &sold_out, min_cpu);
        let mut remaining = group.clone();
        let mut stopped: Option<Limit> = None;
        // Fund the fullest planned node, then plan again: a type that reached its cap drops
        // out and the rest is packed into the next best mix.
        while !remaining.is_empty() {
            if caps.total == 0 {
                stopped = Some(Limit::MaxNodes(config.max_nodes));
                break;
            }
            if caps.provisioning == 0 {
                stopped = Some(Limit::Provisioning(config.max_concurrent_provisioning));
                break;
            }
            let allowed: Vec<Candidate<'_>> =
                all.iter().filter(|c| caps.allows(c.ty)).cloned().collect();
            let planned = plan_bins(&remaining, &queue.items, snapshot, &allowed);
            let Some(bin) = planned.into_iter().next() else {
                break;
            };
            let chosen = &allowed[bin.candidate];
            caps.consume(chosen.ty);
            creates.push((chosen.ty.name.clone(), chosen.location.clone()));
            for &k in &bin.items {
                queue.outcomes[k] = Outcome::Done(Wait::Provisioning {
                    node_type: chosen.ty.name.clone(),
                    eta: config.boot_estimate,
                });
            }
            let funded: BTreeSet<usize> = bin.items.into_iter().collect();
            remaining.retain(|k| !funded.contains(k));
        }
        if let Some(limit) = stopped {
            for &k in &remaining {
                queue.outcomes[k] = Outcome::Done(Wait::AtCapacity {
                    limit: limit.clone(),
                });
            }
            continue;
        }
        // Items no candidate could take: every fitting type is sold out or at its limit.
        for &k in &remaining {
            let demand = &snapshot.demand[queue.items[k].demand];
            let at_type_max = config.node_types.iter().find(|t| {
                t.capacity().fits(&demand.resources)
                    && satisfies(&type_labels(config, t), &demand.selector)
                    && t.max_nodes.is_some_and(|m| {
                        caps.per_type.get(t.name.as_str()).copied().unwrap_or(0) >= m
                    })
            });
            queue.outcomes[k] = Outcome::Done(match (at_type_max, sold_out_until) {
                _ if queue.server_could[k] && at_type_max.is_none() && sold_out_until.is_none() => {
                    Wait::Placing
                }
                (Some(t), _) => Wait::AtCapacity {
                    limit: Limit::TypeMax(t.name.clone(), t.max_nodes.unwrap_or(0)),
                },
                (None, Some(until)) => Wait::SoldOut { until },
                (None, None) => Wait::Unschedulable,
            });
        }
    }

    // Keep min_nodes.
    let alive_after = cx.serving_after() + count(creates.iter());
    if alive_after < config.min_nodes && paused.is_none() {
        let mut by_price: Vec<&NodeTypeConfig> = config.node_types.iter().collect();
        by_price.sort_by(|a, b| a.hourly_price.total_cmp(&b.hourly_price));
        for _ in alive_after..config.min_nodes {
            let pick = by_price.iter().find_map(|t| {
                let loc = (config.locations_for(t).iter())
                    .find(|l| !sold_out.contains_key(&(t.name.as_str(), l.as_str())))?;
                caps.allows(t).then(|| (*t, loc.clone()))
            });
            let Some((t, loc)) = pick else { break };
            caps.consume(t);
            creates.push((t.name.clone(), loc));
        }
    }
    for (node_type, location) in creates {
        cx.actions.push(Action::Create {
            node_type,
            location,
        });
    }
}

/// What creation may still add: servers that exist after this decision's deletions count
/// (lifetime drains still do), and so do those provisioning.
fn caps<'a>(cx: &Ctx<'a>) -> Caps<'a> {
    let config: &AutoscalerConfig = cx.config;
    let servers = cx.snapshot.servers.iter().enumerate();
    let stays = |i: usize, n: &super::ServerView| {
        n.server.is_some() && !(cx.leaving.contains(&i) && n.state != ServerState::Ready)
    };
    let existing = count(servers.clone().filter(|(i, n)| stays(*i, n)));
    let provisioning = count(
        servers
            .clone()
            .filter(|(i, n)| cx.serving(*i, n) && n.state == ServerState::Provisioning),
    );
    let mut per_type: BTreeMap<&'a str, u32> = BTreeMap::new();
    for (i, n) in servers {
        if stays(i, n) {
            *per_type.entry(n.node_type.as_str()).or_default() += 1;
        }
    }
    Caps {
        total: config.max_nodes.saturating_sub(existing),
        provisioning: config
            .max_concurrent_provisioning
            .saturating_sub(provisioning),
        per_type,
    }
}
