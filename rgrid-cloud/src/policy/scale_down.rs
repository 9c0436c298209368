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
use super::{Action, Ctx, Reason, ServerState, ServerView, BILLING_PERIOD, DELETE_MARGIN};

/// Adds the idle and surplus drains to the plan.
pub(super) fn drain(cx: &mut Ctx<'_>, queue: &Queue) {
    let mut alive = cx.serving_after();
    let draining = idle(cx, queue, &mut alive);
    let creates_made = (cx.actions.iter()).any(|a| matches!(a, Action::Create { .. }));
    if !cx.config.drain_ahead.is_zero() && queue.nothing_waits() && !creates_made {
        surplus(cx, queue, &draining, alive);
    }
}

/// Whether scale-down may touch the server of bin `b`: managed, ready, and no queued work is
/// about to land on it.
fn drainable(queue: &Queue, b: usize, node: &ServerView) -> bool {
    node.server.is_some() && node.state == ServerState::Ready && !queue.used_bin[b]
}

/// Idle nodes just before their next billed hour; returns the servers drained.
fn idle(cx: &mut Ctx<'_>, queue: &Queue, alive: &mut u32) -> BTreeSet<usize> {
    let (config, now) = (cx.config, cx.now);
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
    for (_, i) in idle {
        if *alive <= config.min_nodes {
            break;
        }
        let node = &cx.snapshot.servers[i];
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
    let load = load.max(cx.snapshot.arrival_load.unwrap_or(0));
    let needed = (load as f64 * (1.0 + config.headroom.max(0.0))) as u64;
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
    for (_, _, i) in surplus {
        let node = &cx.snapshot.servers[i];
        let rest = capacity.saturating_sub(node.capacity.cpu_millis);
        if alive <= config.min_nodes || rest < needed {
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
}
