//! The fit index of one feasibility group: its member nodes in a segment tree whose inner entries
//! hold the component-wise maximum of their subtree's free capacity. A query descends only into
//! subtrees whose maximum covers the request, so finding a node costs about `log n` steps instead
//! of a scan, and "nothing fits" is usually answered by the root alone.

use crate::resources::Resources;

/// Where a node stands in the scheduler's node table.
pub(super) type Slot = usize;

/// What one tree entry knows of a node (a leaf) or of every node under it (the maximum of each
/// field). The maxima of different fields may come from different nodes: a covering bound means
/// "maybe", an uncovering one means "certainly not"; the scheduler checks the node itself.
///
/// Fields are 32-bit and memory is counted in whole MiB (rounded down, for requests too: rounding
/// both sides the same way never turns away a node that fits) so that an entry takes 24 bytes
/// and the tree of 10,000 nodes stays in cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Bound {
    cpu: i32,
    memory: i32,
    gpus: i32,
    /// Cpu and memory left before the node crosses the pack threshold (negative above it).
    room_cpu: i32,
    room_memory: i32,
    /// How idle the node is, in millionths: one million minus its highest utilisation.
    idle: i32,
}

impl Bound {
    /// A node that takes no work (suspect, draining, dead) or an unused leaf: covers nothing.
    pub(super) const ABSENT: Bound = Bound {
        cpu: i32::MIN,
        memory: i32::MIN,
        gpus: i32::MIN,
        room_cpu: i32::MIN,
        room_memory: i32::MIN,
        idle: i32::MIN,
    };

    /// The bound of a node with these totals and free amounts; `threshold` is the pack
    /// threshold (fraction of cpu and memory).
    pub(super) fn of(total: &Resources, free: &Resources, threshold: f64) -> Bound {
        let room = |total: u64, free: u64| {
            let cap = (total as f64 * threshold) as i64;
            cap.saturating_sub(signed(total.saturating_sub(free)))
        };
        let busy = |total: u64, free: u64| match total {
            0 => 0,
            _ => (total.saturating_sub(free) as f64 / total as f64 * 1e6) as i32,
        };
        let (gpu_total, gpu_free) = (u64::from(total.gpus), u64::from(free.gpus));
        let busiest = busy(total.cpu_millis, free.cpu_millis)
            .max(busy(total.memory_bytes, free.memory_bytes))
            .max(busy(gpu_total, gpu_free));
        Bound {
            cpu: narrow(signed(free.cpu_millis)),
            memory: mib(signed(free.memory_bytes)),
            gpus: narrow(signed(gpu_free)),
            room_cpu: narrow(room(total.cpu_millis, free.cpu_millis)),
            room_memory: mib(room(total.memory_bytes, free.memory_bytes)),
            idle: 1_000_000 - busiest,
        }
    }

    fn max(self, other: Bound) -> Bound {
        Bound {
            cpu: self.cpu.max(other.cpu),
            memory: self.memory.max(other.memory),
            gpus: self.gpus.max(other.gpus),
            room_cpu: self.room_cpu.max(other.room_cpu),
            room_memory: self.room_memory.max(other.room_memory),
            idle: self.idle.max(other.idle),
        }
    }

    /// Could a node under this bound have `need` free?
    pub(super) fn covers(&self, need: &Need) -> bool {
        self.cpu >= need.cpu && self.memory >= need.memory && self.gpus >= need.gpus
    }

    /// Could a node under this bound take `need` and stay under the pack threshold (to the
    /// MiB)?
    pub(super) fn has_room(&self, need: &Need) -> bool {
        self.covers(need) && self.room_cpu >= need.cpu && self.room_memory >= need.memory
    }
}

/// A request in the units of [`Bound`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Need {
    cpu: i32,
    memory: i32,
    gpus: i32,
}

impl Need {
    pub(super) fn of(request: &Resources) -> Need {
        Need {
            cpu: narrow(signed(request.cpu_millis)),
            memory: mib(signed(request.memory_bytes)),
            gpus: narrow(signed(u64::from(request.gpus))),
        }
    }
}

// The conversions saturate and never decrease: a ≤ b stays true of the converted values.

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn narrow(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

fn mib(bytes: i64) -> i32 {
    narrow(bytes >> 20)
}

/// The members of a feasibility group and their segment tree. Leaf `i` is `members[i]`; the
/// root is entry 1, the children of entry `e` are `2e` and `2e + 1`, leaves start at `width`.
pub(super) struct FitIndex {
    members: Vec<Slot>,
    width: usize,
    tree: Vec<Bound>,
}

impl FitIndex {
    pub(super) fn new() -> Self {
        Self {
            members: Vec::new(),
            width: 1,
            tree: vec![Bound::ABSENT; 2],
        }
    }

    /// The member nodes, in first-fit order.
    pub(super) fn members(&self) -> &[Slot] {
        &self.members
    }

    /// Adds a node; returns its position.
    pub(super) fn push(&mut self, slot: Slot, bound: Bound) -> usize {
        if self.members.len() == self.width {
            self.grow();
        }
        self.members.push(slot);
        let pos = self.members.len() - 1;
        self.set(pos, bound);
        pos
    }

    /// Removes the node at `pos` by moving the last member there; returns the moved node, whose
    /// position is now `pos`.
    pub(super) fn swap_remove(&mut self, pos: usize) -> Option<Slot> {
        let last = self.members.len().checked_sub(1)?;
        let moved_bound = self.tree[self.width + last];
        self.members.swap_remove(pos);
        self.set(last, Bound::ABSENT);
        if pos == last {
            return None;
        }
        self.set(pos, moved_bound);
        Some(self.members[pos])
    }

    /// Updates the bound of the node at `pos` and of the subtrees above it, up to the first one
    /// whose bound does not change.
    pub(super) fn set(&mut self, pos: usize, bound: Bound) {
        let mut e = self.width + pos;
        self.tree[e] = bound;
        while e > 1 {
            e /= 2;
            let merged = self.tree[2 * e].max(self.tree[2 * e + 1]);
            if self.tree[e] == merged {
                return;
            }
            self.tree[e] = merged;
        }
    }

    /// The first member (in join order) whose bound passes `bound_ok` and that `node_ok`
    /// accepts (the exact check, custom resources included).
    pub(super) fn first(
        &self,
        bound_ok: impl Fn(&Bound) -> bool,
        mut node_ok: impl FnMut(Slot) -> bool,
    ) -> Option<Slot> {
        self.first_under(1, &bound_ok, &mut node_ok)
    }

    fn first_under(
        &self,
        e: usize,
        bound_ok: &impl Fn(&Bound) -> bool,
        node_ok: &mut impl FnMut(Slot) -> bool,
    ) -> Option<Slot> {
        if !bound_ok(&self.tree[e]) {
            return None;
        }
        if e >= self.width {
            let slot = self.members[e - self.width];
            return node_ok(slot).then_some(slot);
        }
        self.first_under(2 * e, bound_ok, node_ok)
            .or_else(|| self.first_under(2 * e + 1, bound_ok, node_ok))
    }

    /// The most idle member whose bound passes `bound_ok` and that `node_ok` accepts (branch and
    /// bound: subtrees that cannot beat the best found so far are skipped).
    pub(super) fn most_idle(
        &self,
        bound_ok: impl Fn(&Bound) -> bool,
        mut node_ok: impl FnMut(Slot) -> bool,
    ) -> Option<Slot> {
        let mut best = None;
        self.most_idle_under(1, &bound_ok, &mut node_ok, &mut best);
        best.map(|(_, slot)| slot)
    }

    fn most_idle_under(
        &self,
        e: usize,
        bound_ok: &impl Fn(&Bound) -> bool,
        node_ok: &mut impl FnMut(Slot) -> bool,
        best: &mut Option<(i32, Slot)>,
    ) {
        let bound = &self.tree[e];
        if !bound_ok(bound) || best.is_some_and(|(idle, _)| bound.idle <= idle) {
            return;
        }
        if e >= self.width {
            let slot = self.members[e - self.width];
            if node_ok(slot) {
                *best = Some((bound.idle, slot));
            }
            return;
        }
        let (left, right) = (2 * e, 2 * e + 1);
        let (a, b) = if self.tree[right].idle > self.tree[left].idle {
            (right, left)
        } else {
            (left, right)
        };
        self.most_idle_under(a, bound_ok, node_ok, best);
        self.most_idle_under(b, bound_ok, node_ok, best);
    }

    /// Doubles the number of leaves and rebuilds the inner entries.
    fn grow(&mut self) {
        let width = self.width * 2;
        let mut tree = vec![Bound::ABSENT; 2 * width];
        tree[width..width + self.width].copy_from_slice(&self.tree[self.width..]);
        for e in (1..width).rev() {
            tree[e] = tree[2 * e].max(tree[2 * e + 1]);
        }
        self.width = width;
        self.tree = tree;
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::{any, prop_assert_eq, proptest};

    use super::*;

    proptest! {
        /// The index answers like a scan of its members: `first` finds the first node with room
        /// under the threshold, `most_idle` a most idle node that fits — after removals too.
        #[test]
        fn index_answers_like_a_scan(
            nodes in vec((1u64..8, 1u64..8, 0u64..=100), 0..40),
            removals in vec(any::<usize>(), 0..5),
            (cpu, mem) in (0u64..8000, 0u64..8 << 10),
        ) {
            let free: Vec<Resources> = (nodes.iter())
                .map(|&(cpu, gib, used)| Resources::new(cpu * 10 * (100 - used), (gib << 30) / 100 * (100 - used)))
                .collect();
            let bounds: Vec<Bound> = (nodes.iter().zip(&free))
                .map(|(&(cpu, gib, _), free)| Bound::of(&Resources::new(cpu * 1000, gib << 30), free, 0.5))
                .collect();
            let mut index = FitIndex::new();
            let mut live: Vec<Slot> = (0..nodes.len()).collect();
            for &slot in &live {
                index.push(slot, bounds[slot]);
            }
            for removal in removals {
                if live.is_empty() {
                    break;
                }
                let pos = removal % live.len();
                live.swap_remove(pos);
                prop_assert_eq!(index.swap_remove(pos), live.get(pos).copied());
            }
            let request = Resources::new(cpu, mem << 20);
            let need = Need::of(&request);
            let fits = |slot: Slot| free[slot].fits(&request);
            let first = live.iter().copied().find(|&s| bounds[s].has_room(&need) && fits(s));
            prop_assert_eq!(index.first(|b| b.has_room(&need), fits), first);
            let most_idle = (live.iter().copied())
                .filter(|&s| bounds[s].covers(&need) && fits(s))
                .map(|s| bounds[s].idle)
                .max();
            let found = index.most_idle(|b| b.covers(&need), fits);
            prop_assert_eq!(found.map(|s| bounds[s].idle), most_idle);
        }
    }
}
