//! The two clocks the daemons read: wall-clock milliseconds for what is stored and shown, and a
//! monotonic millisecond count for timeouts (heartbeats, backoffs), which a clock step cannot
//! move.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since this process first asked, on the monotonic clock.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
