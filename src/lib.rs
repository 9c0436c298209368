//! rgrid: submit containerized tasks with resource requirements to a cluster and get their
//! outputs back.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use rgrid::{Client, TaskSpec};
//! let client = Client::connect_file("rgrid-state/client.toml").await?;
//! let task = client
//!     .submit(TaskSpec::new("rgrid-busybox:latest").command(["echo", "hello"]))
//!     .await?;
//! let output = client.get(&task).await?;
//! assert_eq!(output.stdout, b"hello\n");
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: connect with a `client.toml`, submit, get, list, cancel.
//! - [`LocalCluster`]: a head and a node in this process (temporary state dir, SQLite).
//! - [`image`]: the local demo image (busybox, no registry needed).

pub mod client;
pub mod image;
pub mod local;

pub use client::{Client, ClientError, Logs, TaskRef};
pub use local::LocalCluster;
pub use rgrid_core::log::{Channel, LogEvent};
pub use rgrid_core::object::{NamedObject, ObjectInfo, ObjectPage, ObjectQuery, ObjectRef};
pub use rgrid_core::protocol::{
    AttemptInfo, ClusterStatus, CostBy, CostGroup, CostQuery, CostReport, ExitStatus, NodeInfo,
    SubmitAnswer, TaskInfo, TaskOutcome, TaskPage, TaskQuery, WaitingShape,
};
pub use rgrid_core::resources::{format_size, parse_size};
pub use rgrid_core::task::{
    InputSource, LabelRequirement, NetworkMode, OutputSpec, RetryPolicy, Strategy,
};
pub use rgrid_core::{NodeId, Resources, TaskId, TaskSpec, TaskState};
