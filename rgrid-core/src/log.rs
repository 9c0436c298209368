//! A running task's stdout and stderr, followed while they are produced.
//!
//! A node streams each attempt's output to the head on a stream of its own
//! ([`crate::protocol::Request::AttemptLog`], then [`LogFrame`]s), as it is written; the head
//! keeps what it receives (up to its `max_output_bytes` per channel) and serves it to clients
//! ([`crate::protocol::Request::Logs`], answered with [`LogEvent`]s), following it until the task
//! ends if asked.

use serde::{Deserialize, Serialize};

use crate::task::TaskState;

/// Most output bytes one frame carries.
pub const LOG_CHUNK_BYTES: usize = 64 << 10;

/// Which of a workload's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    Stdout,
    Stderr,
}

impl Channel {
    pub const BOTH: [Channel; 2] = [Channel::Stdout, Channel::Stderr];

    /// Its index in `[stdout, stderr]` arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Stdout => 0,
            Self::Stderr => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node sends on an attempt's log stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFrame {
    /// `bytes` of `channel` from byte `offset` on.
    Chunk {
        channel: Channel,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The workload has written `total` bytes to `channel` so far; the node kept (and sends)
    /// only its first `max_output_bytes`.
    Written { channel: Channel, total: u64 },
}

/// What a client reading a task's logs receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEvent {
    /// Output of attempt `attempt`, from byte `offset` of its `channel`.
    Chunk {
        attempt: u32,
        channel: Channel,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Attempt `attempt` wrote `bytes` more to `channel` than were kept (over
    /// `max_output_bytes`, or the head's output quota).
    Dropped {
        attempt: u32,
        channel: Channel,
        bytes: u64,
    },
    /// The last event: the task ended in `state`, or (`None`, when not following) it has not
    /// ended and this is what it has written so far.
    End { state: Option<TaskState> },
}
