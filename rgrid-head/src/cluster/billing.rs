//! What each node's billed hours cost, and who pays them: one [`Ledger`] per priced node,
//! driven as attempts start and end and as time passes; each hour that closes becomes a
//! `node_hours` row, which the cost query splits among the attempts of that hour (the rule is
//! [`rgrid_cloud::task_cost`]'s).
//!
//! A node's price is the [`HOURLY_PRICE_LABEL`] it advertises: provisioned nodes get it from
//! their node type (`rgrid_cloud::policy::type_labels`), nodes joined by hand from their
//! `hourly_price` config key. Its hours count from when its session opened with this head (a
//! provisioned server's boot before it joined is not in its tasks' costs) until it leaves or
//! is declared dead.

use rgrid_cloud::policy::BILLING_PERIOD;
use rgrid_cloud::task_cost::{share, Billed, Ledger};
use rgrid_core::protocol::HOURLY_PRICE_LABEL;
use rgrid_core::time::unix_ms;

use super::membership::Node;
use super::tasks::ShapeId;
use super::{Cluster, Comm};
use crate::store::Write;

/// The hourly price a node advertises, if it is a positive number.
pub(super) fn hourly_price(node: &Node) -> Option<f64> {
    let label = node.hello.as_ref()?.labels.get(HOURLY_PRICE_LABEL)?;
    match label.parse::<f64>() {
        Ok(price) if price.is_finite() && price > 0.0 => Some(price),
        _ => {
            tracing::warn!(node = %node.id, %label, "ignoring the node's {HOURLY_PRICE_LABEL}: not a positive number");
            None
        }
    }
}

impl<C: Comm> Cluster<C> {
    /// The share of node `index` an attempt of `shape` holds.
    pub(super) fn share_of(&self, index: u32, shape: ShapeId) -> f64 {
        match &self.node(index).hello {
            Some(hello) => share(self.shapes.resources(shape), &hello.resources),
            None => 0.0,
        }
    }

    /// Node `index` opened a session: its hours start now, if it has a price and they have not
    /// started already, with the attempts it runs (re-adopted after a restart) busy.
    pub(super) fn bill_from_now(&mut self, index: u32) {
        let node = self.node(index);
        if node.ledger.is_some() {
            return;
        }
        let Some(price) = hourly_price(node) else {
            return;
        };
        let busy: f64 = (node.running.values())
            .map(|&shape| self.share_of(index, shape))
            .sum();
        let now = unix_ms();
        let mut ledger = Ledger::new(now, price, BILLING_PERIOD);
        // Nothing closes at the first instant.
        ledger.add_busy(now, busy, &mut Vec::new());
        self.nodes[index as usize].ledger = Some(ledger);
    }

    /// An attempt of `share` started (`delta` > 0) or ended (< 0) on node `index`.
    pub(super) fn bill_busy(&mut self, index: u32, delta: f64) {
        let mut billed = Vec::new();
        let node = &mut self.nodes[index as usize];
        if let Some(ledger) = &mut node.ledger {
            ledger.add_busy(unix_ms(), delta, &mut billed);
        }
        self.write_billed(index, billed);
    }

    /// Time passed: the hours that ended close.
    pub(super) fn bill_hours(&mut self) {
        let now = unix_ms();
        for index in 0..self.nodes.len() {
            let mut billed = Vec::new();
            if let Some(ledger) = &mut self.nodes[index].ledger {
                ledger.advance(now, &mut billed);
            }
            if !billed.is_empty() {
                self.write_billed(u32::try_from(index).unwrap_or(u32::MAX), billed);
            }
        }
    }

    /// Node `index` left or is dead: its started hour is billed in full, and its hours stop.
    pub(super) fn bill_close(&mut self, index: u32) {
        let Some(ledger) = self.nodes[index as usize].ledger.take() else {
            return;
        };
        let mut billed = Vec::new();
        let unpaid = ledger.close(unix_ms(), &mut billed);
        if unpaid > 0.0 {
            tracing::info!(node = %self.node(index).id, unpaid, "node ran nothing while billed: no task pays for it");
        }
        self.write_billed(index, billed);
    }

    fn write_billed(&mut self, index: u32, billed: Vec<Billed>) {
        let node = self.node(index).id;
        let writes = billed.into_iter().map(|b| match b {
            Billed::Hour(hour) => Write::NodeHour { node, hour },
            Billed::Amend { start_ms, extra } => Write::AmendHour {
                node,
                start_ms,
                extra,
            },
        });
        self.commits.pending.other.extend(writes);
    }
}
