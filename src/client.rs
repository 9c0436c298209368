//! The client API: a connection to the head authenticated by a client certificate, one stream
//! per request.

use std::net::SocketAddr;
use std::path::Path;

use quinn::{Connection, Endpoint};
use rgrid_core::protocol::{ErrorReply, NodeInfo, Request, Response, TaskInfo, TaskOutcome};
use rgrid_core::tls::{client_config, ClientFile};
use rgrid_core::transport::{call, connect, TransportError};
use rgrid_core::{TaskId, TaskSpec, TaskState};

/// A submitted task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskRef {
    pub id: TaskId,
}

/// What can go wrong talking to the head.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read credentials {path}: {detail}")]
    Credentials { path: String, detail: String },
    #[error("head address {0:?} does not resolve")]
    Address(String),
    #[error(transparent)]
    Tls(#[from] rgrid_core::tls::TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the head refused: {}", .0.message)]
    Refused(ErrorReply),
    #[error("task {task} was rejected: {message}")]
    Rejected { task: TaskId, message: String },
    #[error("unexpected answer from the head: {0}")]
    Unexpected(String),
}

/// A connection to the head.
pub struct Client {
    /// Kept so the connection's endpoint lives as long as the client.
    _endpoint: Endpoint,
    connection: Connection,
}

impl Client {
    /// Connects with the credentials in a `client.toml` written by `rgrid-head`.
    pub async fn connect_file(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let cred_err = |detail: String| ClientError::Credentials {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| cred_err(e.to_string()))?;
        let file: ClientFile = toml::from_str(&text).map_err(|e| cred_err(e.to_string()))?;
        Self::connect(&file).await
    }

    /// Connects with credentials already loaded.
    pub async fn connect(file: &ClientFile) -> Result<Self, ClientError> {
        let addr: SocketAddr = tokio::net::lookup_host(&file.head)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ClientError::Address(file.head.clone()))?;
        let tls = client_config(&file.ca_pem, &file.identity())?;
        let (endpoint, connection) = connect(addr, tls, "rgrid-client").await?;
        Ok(Self {
            _endpoint: endpoint,
            connection,
        })
    }

    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        match call(&self.connection, &request).await? {
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Ok(other),
        }
    }

    /// Submits one task; returns once the head has stored it durably.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskRef, ClientError> {
        let mut refs = self.submit_batch(vec![spec]).await?;
        refs.pop()
            .ok_or_else(|| ClientError::Unexpected("empty submit answer".into()))
    }

    /// Submits many tasks in one request. Fails if any is rejected (the others are kept: a
    /// resubmission of the same specs is idempotent).
    pub async fn submit_batch(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskRef>, ClientError> {
        let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
        match self.call(Request::Submit(specs)).await? {
            Response::Submitted(answers) => answers
                .into_iter()
                .zip(ids)
                .map(|(answer, task)| match answer {
                    Ok(id) => Ok(TaskRef { id }),
                    Err(message) => Err(ClientError::Rejected { task, message }),
                })
                .collect(),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Waits for the task to end and returns its outcome (stdout, stderr, exit code, attempts).
    pub async fn get(&self, task: &TaskRef) -> Result<TaskOutcome, ClientError> {
        match self.call(Request::Get { task: task.id }).await? {
            Response::Task(outcome) => Ok(outcome),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Cancels a task; returns its state afterwards.
    pub async fn cancel(&self, task: &TaskRef) -> Result<TaskState, ClientError> {
        match self.call(Request::Cancel { task: task.id }).await? {
            Response::Cancelled { state } => Ok(state),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Drains a node (by name or id): it takes no new work, its running tasks get `deadline` to
    /// finish (the rest are requeued), then it leaves the cluster.
    pub async fn drain_node(
        &self,
        node: &str,
        deadline: std::time::Duration,
    ) -> Result<rgrid_core::NodeId, ClientError> {
        let request = Request::DrainNode {
            node: node.to_owned(),
            deadline_secs: deadline.as_secs(),
        };
        match self.call(request).await? {
            Response::Draining { node } => Ok(node),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The cluster's nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        match self.call(Request::ListNodes).await? {
            Response::Nodes(nodes) => Ok(nodes),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The head's tasks.
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>, ClientError> {
        match self.call(Request::ListTasks).await? {
            Response::Tasks(tasks) => Ok(tasks),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
