//! Why each queued task waits: the planned outcomes as runs of `(wait, count)` per demand, in
//! queue order; tasks past the planning limit wait at `max_nodes`.

use super::capacity::{Outcome, Queue};
use super::{Ctx, Limit, Wait};

/// The waits of every demand (same index as `snapshot.demand`).
pub(super) fn per_demand(cx: &Ctx<'_>, queue: &Queue) -> Vec<Vec<(Wait, u32)>> {
    let mut waits: Vec<Vec<(Wait, u32)>> = vec![Vec::new(); cx.snapshot.demand.len()];
    for (k, item) in queue.items.iter().enumerate() {
        let runs = &mut waits[item.demand];
        let wait = match &queue.outcomes[k] {
            Outcome::Done(w) => w.clone(),
            Outcome::Behind => runs.last().map(|(w, _)| w.clone()).unwrap_or(Wait::Placing),
            Outcome::Pending => Wait::Unschedulable,
        };
        match runs.last_mut() {
            Some((w, n)) if *w == wait => *n += 1,
            _ => runs.push((wait, 1)),
        }
    }
    for (d, demand) in cx.snapshot.demand.iter().enumerate() {
        let planned: u32 = waits[d].iter().map(|(_, n)| *n).sum();
        if planned < demand.count {
            let limit = Wait::AtCapacity {
                limit: Limit::MaxNodes(cx.config.max_nodes),
            };
            waits[d].push((limit, demand.count - planned));
        }
    }
    waits
}
