//! Scale-down. Hetzner bills every started hour until deletion, so an idle node costs nothing
//! more until its next hour starts: idle nodes are drained when that start is within
//! `scale_down_window` (and deleted once drained), keeping `min_nodes`. A busy node whose next
//! hour starts within `drain_ahead` is drained when the rest of the cluster carries the load
//! plus `headroom` and its attempts are expected to end before that hour — only when nothing
//! waits for new capacity. The load is the busy and queued cpu, but at least what the arrivals
//! keep busy when that is known: scale-up plans for that much, so draining below it buys the
//! capacity back, paying a new hour.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::time::Duration;

use super::capacity::Queue;
use super::scale_up;
use super::{Action, Ctx, Reason, ServerState, ServerView, BILLING_PERIOD, DELETE_MARGIN};
use crate::config::NodeTypeConfig;

/// Adds the idle and surplus drains to the plan.
pub(super) fn drain(cx: &mut Ctx<'_>, queue: &Queue) {
    let mut alive = cx.serving_after();
    let draining = idle(cx, queue, &mut alive);
    let creates_made = (cx.actions.iter()).any(|a| matches!(a, Action::Create { .. }));
    if !cx.config.drain_ahead.is_zero() && queue.nothing_waits() && !creates_made {
        surplus(cx, queue, &draining, alive);
    }
}

/// Whether scale-down may touch the server of bin `b`: managed, ready, in touch, and no
/// queued work is about to land on it.
fn drainable(queue: &Queue, b: usize, node: &ServerView) -> bool {
    node.server.is_some()
        && node.state == ServerState::Ready
        && node.suspect_since.is_none()
        && !queue.used_bin[b]
}

/// Idle nodes just before their next billed hour; returns the servers drained.
fn idle(cx: &mut Ctx<'_>, queue: &Queue, alive: &mut u32) -> BTreeSet<usize> {
    let (config, now) = (cx.config, cx.now);
    // (time to its next hour, server) of the idle ones in their window.
    let mut idle: Vec<(Duration, usize)> = Vec::new();
    for (b, &i) in queue.bin_server.iter().enumerate() {
        let node = &cx.snapshot.servers[i];
        if !drainable(queue, b, node) || node.running > 0 {
            continue;
        }
        let Some(idle_since) = node.idle_since else {
            continue;
        };
        let to_boundary = cx.to_next_hour(node);
        let in_window = to_boundary <= config.scale_down_window;
        let boundary = now + to_boundary;
        let idle_enough = idle_since + config.min_idle;
        if in_window && idle_enough <= now {
            idle.push((to_boundary, i));
        } else if !in_window {
            cx.wake
                .at((boundary - config.scale_down_window).max(idle_enough));
        } else if idle_enough < boundary {
            cx.wake.at(idle_enough);
        } else {
            // Idle too briefly for this hour's window: look again in the next one.
            cx.wake
                .at(boundary + BILLING_PERIOD - config.scale_down_window);
        }
    }
    idle.sort();
    let mut drained = BTreeSet::new();
    let reserve = cx.reserve();
    let mut capacity = cx.capacity_after();
    for (to_boundary, i) in idle {
        if *alive <= config.min_nodes {
            break;
        }
        let node = &cx.snapshot.servers[i];
        // An idle node is the reserve's until the rest covers it: look again in its next
        // hour's window.
        if capacity.saturating_sub(node.capacity.cpu_millis) < reserve {
            cx.wake
                .at(now + to_boundary + BILLING_PERIOD - config.scale_down_window);
            continue;
        }
        capacity = capacity.saturating_sub(node.capacity.cpu_millis);
        if let Some(server) = node.server {
            cx.actions.push(Action::Drain {
                server,
                name: node.name.clone(),
                reason: Reason::Idle,
            });
            drained.insert(i);
            *alive -= 1;
        }
    }
    drained
}

/// Busy nodes the rest of the cluster can do without, ahead of their next billed hour.
fn surplus(cx: &mut Ctx<'_>, queue: &Queue, draining: &BTreeSet<usize>, mut alive: u32) {
    let (config, now) = (cx.config, cx.now);
    let stays = |cx: &Ctx<'_>, i: usize, n: &ServerView| cx.ready(i, n) && !draining.contains(&i);
    let mut capacity: u64 = 0;
    let mut load: u64 = queue.queued;
    for (i, n) in cx.snapshot.servers.iter().enumerate() {
        if stays(cx, i, n) {
            capacity += n.capacity.cpu_millis;
            load += n.capacity.cpu_millis.saturating_sub(n.free.cpu_millis);
        }
    }
    let load = load.max(cx.snapshot.arrival_load().0);
    let needed = ((load as f64 * (1.0 + config.headroom.max(0.0))) as u64).max(cx.reserve());
    // Dearest per core first, then the one running least.
    let mut surplus: Vec<(Reverse<u64>, u32, usize)> = Vec::new();
    for (b, &i) in queue.bin_server.iter().enumerate() {
        let node = &cx.snapshot.servers[i];
        if !drainable(queue, b, node) || !stays(cx, i, node) || node.running == 0 {
            continue;
        }
        let to_boundary = cx.to_next_hour(node);
        // One whose attempts run past the hour pays it anyway: drained now, it would either
        // pay a second one or have its work cut off and rerun.
        let empties_in_time =
            (node.busy_until).is_none_or(|t| t + DELETE_MARGIN <= now + to_boundary);
        if to_boundary <= config.drain_ahead && !empties_in_time {
            cx.wake
                .at(now + to_boundary + BILLING_PERIOD - config.drain_ahead);
        } else if to_boundary <= config.drain_ahead {
            let price_per_core = (config.node_type(&node.node_type))
                .map(|t| (t.hourly_price / f64::from(t.cpus.max(1)) * 1e9) as u64)
                .unwrap_or(0);
            surplus.push((Reverse(price_per_core), node.running, i));
        } else {
            cx.wake.at(now + to_boundary - config.drain_ahead);
        }
    }
    surplus.sort();
    let mut kept = Vec::new();
    for (_, _, i) in surplus {
        let node = &cx.snapshot.servers[i];
        let rest = capacity.saturating_sub(node.capacity.cpu_millis);
        if alive <= config.min_nodes || rest < needed {
            kept.push(i);
            continue;
        }
        if let Some(server) = node.server {
            cx.actions.push(Action::Drain {
                server,
                name: node.name.clone(),
                reason: Reason::Surplus,
            });
            capacity = rest;
            alive -= 1;
        }
    }
    downsize(cx, &kept, capacity, needed);
}

/// Replaces one of the `kept` servers (busy, in their drain window, expected to empty before
/// their next hour, but needed) by a cheaper type that, with the rest of the cluster, carries
/// the `needed` cpu: the old one is drained now (so it takes no work that would run past its
/// hour while the new one boots) and the new one created. `ready` is the cpu of the ready
/// servers that stay. The new type has the old one's labels, no GPUs, and room for what runs
/// on the old one now (a lone cx53 running two tasks at night becomes a cx33).
fn downsize(cx: &mut Ctx<'_>, kept: &[usize], ready: u64, needed: u64) {
    let config = cx.config;
    let servers = &cx.snapshot.servers;
    let provisioning: u64 = (servers.iter().enumerate())
        .filter(|(i, s)| cx.serving(*i, s) && s.state == ServerState::Provisioning)
        .map(|(_, s)| s.capacity.cpu_millis)
        .sum();
    let allowance = scale_up::allowance(cx);
    if allowance.paused.is_some() {
        return;
    }
    // The biggest saving.
    let mut best: Option<(f64, usize, &NodeTypeConfig, String)> = None;
    for &i in kept {
        let old = &servers[i];
        let Some(old_type) = config.node_type(&old.node_type) else {
            continue;
        };
        let rest = (ready + provisioning).saturating_sub(old.capacity.cpu_millis);
        if old_type.gpus > 0 || rest >= needed {
            // With what is provisioning, it is drained as surplus once that has joined.
            continue;
        }
        let in_use = old.capacity.checked_sub(&old.free).unwrap_or_default();
        let candidates = (config.node_types.iter()).filter(|t| {
            t.gpus == 0
                && t.hourly_price < old_type.hourly_price
                && t.labels == old_type.labels
                && rest + t.capacity().cpu_millis >= needed
                && t.capacity().fits(&in_use)
                && allowance.caps.allows(t)
        });
        for t in candidates {
            let location = (config.locations_for(t).iter()).find(|l| {
                !allowance
                    .sold_out
                    .contains_key(&(t.name.as_str(), l.as_str()))
            });
            let saving = old_type.hourly_price - t.hourly_price;
            if let Some(location) = location {
                if best.as_ref().is_none_or(|(b, ..)| saving > *b) {
                    best = Some((saving, i, t, location.clone()));
                }
            }
        }
    }
    let Some((_, i, t, location)) = best else {
        return;
    };
    if let Some(server) = servers[i].server {
        cx.actions.push(Action::Drain {
            server,
            name: servers[i].name.clone(),
            reason: Reason::Surplus,
        });
        cx.actions.push(Action::Create {
            node_type: t.name.clone(),
            location,
        });
    }
}
