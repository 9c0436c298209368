//! The loop driven by hand: events in, and what it sent and wrote read back from a recorder.
