//! Identifiers. Task ids are made by the client (UUIDv7: 128-bit, time-ordered) so that a
//! resubmission after a network blip is idempotent; node ids are issued by the head at join.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's identity, chosen by the client that submits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new time-ordered id (UUIDv7).
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id just before this one in id order (listings page by id: the page after this
    /// one's predecessor starts with it).
    pub fn predecessor(self) -> Self {
        Self(Uuid::from_u128(self.0.as_u128().wrapping_sub(1)))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

/// A node's identity, issued by the head when the node joins; it is the subject of the node's
/// client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub Uuid);

impl NodeId {
    /// A new random node id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for NodeId {
    fn default() -> Self {
        Self::new()
    }
}

/// One execution of a task: `(task, attempt number)`. Attempt numbers start at 1 and grow each
/// time the task is placed again; every message about an execution carries it so the head can
/// fence stale attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId {
    pub task: TaskId,
    pub attempt: u32,
}

macro_rules! uuid_display {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $t {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| ParseIdError {
                    what: $what,
                    input: s.to_owned(),
                })
            }
        }
    };
}

uuid_display!(TaskId, "task id");
uuid_display!(NodeId, "node id");

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.task, self.attempt)
    }
}

/// A string that is not a valid id.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not a valid {what} (expected a UUID such as 01936f0e-8c5e-7cc0-9d6a-4c4a3b8e2f10)")]
pub struct ParseIdError {
    what: &'static str,
    input: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_time_ordered_and_round_trip() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert!(a < b, "UUIDv7 ids made later sort later");
        assert_eq!(a.to_string().parse::<TaskId>().ok(), Some(a));
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }
}
