//! Spare capacity for arrivals. Scale-up answers a queue, so every task that finds the
//! cluster full waits for a boot; with known streams of arrivals the cluster instead keeps
//! their load plus `reserve` standard deviations of it (square-root staffing: the number of
//! tasks a Poisson stream keeps running is Poisson distributed), and buys the shortfall before
//! a queue forms: one node per decision, the cheapest type without GPUs or labels of its own
//! that covers it and is at least `growth` × the busy cpu, like scale-up's nodes (the largest
//! if none is), so that a growing cluster is made of a few large nodes, not many small ones.
//! Scale-down drains nothing below it.

use super::capacity::Queue;
use super::scale_up;
use super::{Action, Ctx};

/// Adds a create when the capacity after this decision is short of the reserve.
pub(super) fn keep(cx: &mut Ctx<'_>, queue: &Queue) {
    let target = cx.reserve();
    let capacity = cx.capacity_after();
    if capacity >= target {
        return;
    }
    let growth = (cx.config.growth.max(0.0) * queue.busy as f64) as u64;
    let short = (target - capacity).max(growth);
    let allowance = scale_up::allowance(cx);
    if allowance.paused.is_some() {
        return;
    }
    let config = cx.config;
    let fitting = (config.node_types.iter()).filter_map(|t| {
        let location = (config.locations_for(t).iter()).find(|l| {
            !allowance
                .sold_out
                .contains_key(&(t.name.as_str(), l.as_str()))
        })?;
        (t.gpus == 0 && t.labels.is_empty() && allowance.caps.allows(t)).then_some((t, location))
    });
    let (covering, short_of): (Vec<_>, Vec<_>) =
        fitting.partition(|(t, _)| t.capacity().cpu_millis >= short);
    let pick = match covering
        .into_iter()
        .min_by(|a, b| a.0.hourly_price.total_cmp(&b.0.hourly_price))
    {
        Some(pick) => Some(pick),
        None => short_of.into_iter().max_by_key(|(t, _)| t.cpus),
    };
    if let Some((t, location)) = pick {
        cx.actions.push(Action::Create {
            node_type: t.name.clone(),
            location: location.clone(),
        });
    }
}
