//! What a peer without a certificate may hold before it is authenticated: a connection slot,
//! counted per source address and in total from the moment its first packet is accepted until
//! a verified certificate names it (or the connection ends), and a place in the pace of joins.
//! Everything else such a peer may not do (more than one stream, large frames, more than a few
//! seconds) is enforced by the transport limits and the server's deadline.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a peer without a certificate may take to complete its TLS handshake and its join.
pub(crate) const UNAUTHENTICATED_DEADLINE: Duration = Duration::from_secs(5);

/// The limits, from the head's configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections not (yet) authenticated, in total.
    pub total: usize,
    /// Connections not (yet) authenticated, per source address.
    pub per_address: usize,
    /// Joins per second on average, and at most this many at once.
    pub joins_per_second: u32,
}

/// The head's count of unauthenticated connections and the pace of joins.
pub(crate) struct Admission {
    limits: Limits,
    /// Unauthenticated connections, in total and by source address (entries at zero removed).
    counts: Mutex<Counts>,
    /// When the next join may start at the configured pace (a virtual schedule: a burst of
    /// `joins_per_second` joins may start at once, later ones wait their turn).
    next_join: Mutex<Instant>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One unauthenticated connection's place; given back when dropped.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
            next_join: Mutex::new(Instant::now()),
        })
    }

    /// A slot for a new connection from `address`; `None` when that address or everyone
    /// together holds as many unauthenticated connections as allowed.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let here = counts.by_address.get(&address).copied().unwrap_or(0);
        if counts.total >= self.limits.total || here >= self.limits.per_address {
            return None;
        }
        counts.total += 1;
        counts.by_address.insert(address, here + 1);
        Some(Slot {
            admission: self.clone(),
            address,
        })
    }

    /// Waits until a join may start at the configured pace.
    pub(crate) async fn join_turn(&self) {
        let rate = self.limits.joins_per_second.max(1);
        let interval = Duration::from_secs(1) / rate;
        let start = {
            let mut next = self
                .next_join
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            // The generic cell rate algorithm: this join's slot on the schedule (idle time
            // banks nothing), started up to a burst early.
            let slot = (*next).max(now);
            *next = slot + interval;
            slot.checked_sub(interval * (rate - 1))
                .unwrap_or(now)
                .max(now)
        };
        tokio::time::sleep_until(start).await;
    }

    fn release(&self, address: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_address.remove(&address);
            }
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            total: 3,
            per_address: 2,
            joins_per_second: 10,
        }
    }

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let admission = Admission::new(limits());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        let a1 = admission.admit(a).expect("first from a");
        let _a2 = admission.admit(a).expect("second from a");
        assert!(
            admission.admit(a).is_none(),
            "a third from a is over the cap"
        );
        let _b1 = admission.admit(b).expect("first from b");
        assert!(admission.admit(c).is_none(), "the total is reached");
        drop(a1);
        assert_eq!(admission.held(), 2);
        let _c1 = admission.admit(c).expect("a slot was given back");
        assert!(admission.admit(a).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn joins_start_in_a_burst_then_at_the_pace() {
        let admission = Admission::new(limits());
        let began = Instant::now();
        for _ in 0..10 {
            admission.join_turn().await;
        }
        assert!(began.elapsed() < Duration::from_millis(1), "a burst of 10");
        for _ in 0..10 {
            admission.join_turn().await;
        }
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1010),
            "{took:?}"
        );
        // Idle time banks at most one burst.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let idle = Instant::now();
        for _ in 0..20 {
            admission.join_turn().await;
        }
        let took = idle.elapsed();
        assert!(took >= Duration::from_millis(990), "{took:?}");
    }
}
