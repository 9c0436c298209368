//! rgrid's shared model: what the head, the nodes and the clients agree on.
//!
//! - [`config`]: reading the daemons' TOML config files.
//! - [`metrics`]: the daemons' Prometheus endpoint.
//! - [`object`]: objects named by SHA-256 and size, moved and verified in chunks.
//! - [`log`]: a running task's output, streamed to the head and followed by clients.
//! - [`id`]: task ids (client-generated, time-ordered), node ids, attempts.
//! - [`resources`]: cpu, memory, gpus and custom resources with checked arithmetic.
//! - [`task`]: the task spec a client submits and the task state machine.
//! - [`protocol`]: the messages on the wire; [`frame`]: their length-prefixed postcard framing.
//! - [`tls`]: the cluster CA, certificates, join tokens; [`transport`]: QUIC endpoints with mutual TLS.
//! - [`scheduler`]: placement of queued tasks on nodes (pure, synchronous, time passed in).
//! - [`time`]: wall-clock and monotonic milliseconds.
//! - [`text`]: strings from the other side made safe for terminals and logs.

pub mod config;
pub mod frame;
pub mod id;
pub mod log;
pub mod metrics;
pub mod object;
pub mod protocol;
pub mod resources;
pub mod scheduler;
pub mod task;
pub mod text;
pub mod time;
pub mod tls;
pub mod transport;

pub use id::{AttemptId, NodeId, TaskId};
pub use object::ObjectRef;
pub use resources::Resources;
pub use task::{TaskSpec, TaskState};
