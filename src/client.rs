//! The client API: a connection to the head authenticated by a client certificate, one stream
//! per request. Requests about many tasks take many at once: `submit_batch`, and the waits
//! (`get_many`, `as_completed`, `wait`), which are one request answered as the tasks end.
//! Objects (`put_bytes`, `put_file`, `get_object`, `objects`) are in [`objects`]; certificate
//! renewal (at connect, when due) in `renewal`; logs, read or followed, with [`Logs`].

mod logs;
mod objects;
mod renewal;

pub use logs::Logs;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use quinn::{Connection, Endpoint, RecvStream};
use rgrid_core::frame::FrameReader;
use rgrid_core::protocol::{
    ClusterStatus, CostBy, CostGroup, CostQuery, CostReport, ErrorReply, NodeInfo, Request,
    Response, SubmitAnswer, TaskInfo, TaskOutcome, TaskPage, TaskQuery, MAX_PAGE_TASKS,
    MAX_WAIT_TASKS,
};
use rgrid_core::task::InputSource;
use rgrid_core::tls::{client_config, CertInfo, ClientFile};
use rgrid_core::transport::{call, connect, open_request, TransportError};
use rgrid_core::{TaskId, TaskSpec, TaskState};

/// A submitted task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskRef {
    pub id: TaskId,
}

impl TaskRef {
    /// Its output `name`, as an input of another task (`TaskSpec::input(path, ..)`): that task
    /// waits until this one has succeeded.
    pub fn output(&self, name: impl Into<String>) -> InputSource {
        InputSource::TaskOutput {
            task: self.id,
            name: name.into(),
        }
    }

    /// Its stdout (as the head kept it, at most `max_output_bytes`), as an input of another
    /// task: that task waits until this one has succeeded and the head has stored its stdout
    /// as an object.
    pub fn stdout(&self) -> InputSource {
        InputSource::TaskStdout { task: self.id }
    }
}

/// What can go wrong talking to the head.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read credentials {path}: {detail}")]
    Credentials { path: String, detail: String },
    #[error("the client certificate expired at {expires}; ask an admin for new credentials (rgrid-head client create NAME)")]
    Expired { expires: String },
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
    #[error(transparent)]
    Object(#[from] rgrid_core::object::TransferError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
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
        let client = Self::connect(&file).await?;
        renewal::renew_if_due(&client, path, &file).await;
        Ok(client)
    }

    /// Connects with credentials already loaded (renewing them is [`Client::renew`]'s job:
    /// [`Client::connect_file`] does it when they are due).
    pub async fn connect(file: &ClientFile) -> Result<Self, ClientError> {
        if let Ok(info) = CertInfo::from_pem(&file.cert_pem, "client certificate") {
            if info.expired(rgrid_core::time::unix_ms()) {
                return Err(ClientError::Expired {
                    expires: info.expires(),
                });
            }
        }
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

    /// Submits many tasks in one request; returns once they are stored durably. Fails if any
    /// is rejected (the others are kept: a resubmission of the same specs is idempotent).
    pub async fn submit_batch(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskRef>, ClientError> {
        let answers = self.submit_answers(specs).await?;
        answers
            .into_iter()
            .map(|(task, answer)| match answer {
                SubmitAnswer::Accepted | SubmitAnswer::Known { .. } => Ok(TaskRef { id: task }),
                SubmitAnswer::Rejected(message) => Err(ClientError::Rejected { task, message }),
            })
            .collect()
    }

    /// Submits many tasks in one request and returns what the head said of each: accepted,
    /// known already (a resubmission, with its current state), or rejected and why.
    pub async fn submit_answers(
        &self,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<(TaskId, SubmitAnswer)>, ClientError> {
        let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
        match self.call(Request::Submit(specs)).await? {
            Response::Submitted(answers) if answers.len() == ids.len() => {
                Ok(ids.into_iter().zip(answers).collect())
            }
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

    /// Waits for every task and returns their outcomes in the order of `tasks`: one request per
    /// [`MAX_WAIT_TASKS`] tasks, answered as they end.
    pub async fn get_many(&self, tasks: &[TaskRef]) -> Result<Vec<TaskOutcome>, ClientError> {
        let mut outcomes = std::collections::HashMap::with_capacity(tasks.len());
        let mut stream = std::pin::pin!(self.as_completed(tasks));
        while let Some(outcome) = stream.next().await {
            let outcome = outcome?;
            outcomes.insert(outcome.task, outcome);
        }
        tasks
            .iter()
            .map(|t| {
                outcomes
                    .get(&t.id)
                    .cloned()
                    .ok_or_else(|| ClientError::Unexpected(format!("no outcome for task {}", t.id)))
            })
            .collect()
    }

    /// The outcomes of `tasks` (stdout and stderr included) in the order they end.
    pub fn as_completed<'a>(
        &'a self,
        tasks: &[TaskRef],
    ) -> impl Stream<Item = Result<TaskOutcome, ClientError>> + 'a {
        self.outcomes(tasks, true)
    }

    /// Waits until `num_returns` of `tasks` have ended or `timeout` passes, like `ray.wait`:
    /// returns the ended ones (in the order they ended) and the others. Outputs are not fetched.
    pub async fn wait(
        &self,
        tasks: &[TaskRef],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<(Vec<TaskRef>, Vec<TaskRef>), ClientError> {
        let mut ready = Vec::new();
        let mut ended = HashSet::new();
        let wanted = num_returns.min(tasks.len());
        let collect = async {
            let mut stream = std::pin::pin!(self.outcomes(tasks, false));
            while ready.len() < wanted {
                let Some(outcome) = stream.next().await else {
                    break;
                };
                let outcome = outcome?;
                if ended.insert(outcome.task) {
                    ready.push(TaskRef { id: outcome.task });
                }
            }
            Ok::<_, ClientError>(())
        };
        match timeout {
            Some(timeout) => {
                if let Ok(result) = tokio::time::timeout(timeout, collect).await {
                    result?;
                }
            }
            None => collect.await?,
        }
        let not_ready = tasks
            .iter()
            .filter(|t| !ended.contains(&t.id))
            .copied()
            .collect();
        Ok((ready, not_ready))
    }

    /// Outcomes as they end, over one wait request per [`MAX_WAIT_TASKS`] tasks.
    fn outcomes<'a>(
        &'a self,
        tasks: &[TaskRef],
        outputs: bool,
    ) -> impl Stream<Item = Result<TaskOutcome, ClientError>> + 'a {
        let chunks: Vec<Vec<TaskId>> = tasks
            .chunks(MAX_WAIT_TASKS)
            .map(|c| c.iter().map(|t| t.id).collect())
            .collect();
        futures::stream::iter(chunks)
            .map(move |chunk| self.wait_chunk(chunk, outputs))
            .flatten_unordered(None)
    }

    fn wait_chunk(
        &self,
        tasks: Vec<TaskId>,
        outputs: bool,
    ) -> BoxStream<'_, Result<TaskOutcome, ClientError>> {
        /// Where one wait request is.
        enum State<'a> {
            Start(&'a Connection, Request),
            Reading(
                FrameReader<RecvStream, Response>,
                std::vec::IntoIter<TaskOutcome>,
            ),
            Done,
        }
        let start = State::Start(&self.connection, Request::Wait { tasks, outputs });
        futures::stream::unfold(start, |mut state| async move {
            loop {
                state = match state {
                    State::Start(connection, request) => {
                        match open_request(connection, &request).await {
                            Ok(mut stream) => {
                                let _ = stream.send.get_mut().finish();
                                State::Reading(stream.recv, Vec::new().into_iter())
                            }
                            Err(err) => return Some((Err(err.into()), State::Done)),
                        }
                    }
                    State::Reading(mut recv, mut outcomes) => {
                        if let Some(outcome) = outcomes.next() {
                            return Some((Ok(outcome), State::Reading(recv, outcomes)));
                        }
                        let failed = match recv.next().await {
                            Ok(None) => return None,
                            Ok(Some(Response::Outcomes(batch))) => {
                                state = State::Reading(recv, batch.into_iter());
                                continue;
                            }
                            Ok(Some(Response::Error(e))) => ClientError::Refused(e),
                            Ok(Some(other)) => ClientError::Unexpected(format!("{other:?}")),
                            Err(err) => TransportError::from(err).into(),
                        };
                        return Some((Err(failed), State::Done));
                    }
                    State::Done => return None,
                }
            }
        })
        .boxed()
    }

    /// Cancels a task; returns its state afterwards. Open tasks that depend on it end
    /// `DependencyFailed`.
    pub async fn cancel(&self, task: &TaskRef) -> Result<TaskState, ClientError> {
        self.cancel_with(task, false).await
    }

    /// Cancels a task and every open task that depends on it (transitively).
    pub async fn cancel_recursive(&self, task: &TaskRef) -> Result<TaskState, ClientError> {
        self.cancel_with(task, true).await
    }

    async fn cancel_with(&self, task: &TaskRef, recursive: bool) -> Result<TaskState, ClientError> {
        match self
            .call(Request::Cancel {
                task: task.id,
                recursive,
            })
            .await?
        {
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

    /// Removes a node (by id, or by name: every node of that name) from the cluster: its
    /// certificate is revoked (it cannot reconnect), what it runs is requeued, it leaves the
    /// listings. Admin only. Returns the removed ids.
    pub async fn remove_node(&self, node: &str) -> Result<Vec<rgrid_core::NodeId>, ClientError> {
        let request = Request::RemoveNode {
            node: node.to_owned(),
        };
        match self.call(request).await? {
            Response::Removed { nodes } => Ok(nodes),
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

    /// One page of the head's tasks, in id (submission) order.
    pub async fn tasks_page(&self, query: TaskQuery) -> Result<TaskPage, ClientError> {
        match self.call(Request::ListTasks(query)).await? {
            Response::Tasks(page) => Ok(page),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// One task's listing entry (its state, attempt, node and why it waits), or `None` when
    /// the head does not know it: the page of one that starts after the id just before it.
    pub async fn task_info(&self, task: &TaskRef) -> Result<Option<TaskInfo>, ClientError> {
        let page = self
            .tasks_page(TaskQuery {
                state: None,
                after: Some(task.id.predecessor()),
                limit: 1,
            })
            .await?;
        Ok(page.tasks.into_iter().find(|t| t.task == task.id))
    }

    /// Every task the head knows, page by page (for small clusters; page with
    /// [`Client::tasks_page`] through large ones).
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>, ClientError> {
        let mut tasks = Vec::new();
        let mut query = TaskQuery {
            limit: MAX_PAGE_TASKS,
            ..TaskQuery::default()
        };
        loop {
            let page = self.tasks_page(query.clone()).await?;
            tasks.extend(page.tasks);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(tasks),
            }
        }
    }

    /// Tasks and nodes by state, and what queued tasks wait for.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// What tasks cost (see [`CostQuery`]): the costliest groups and the total.
    pub async fn cost(&self, query: CostQuery) -> Result<CostReport, ClientError> {
        match self.call(Request::Cost(query)).await? {
            Response::Cost(report) => Ok(report),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// What one task cost (`None` when none of its attempts ran on a node with a price).
    pub async fn task_cost(&self, task: &TaskRef) -> Result<Option<CostGroup>, ClientError> {
        let report = self
            .cost(CostQuery {
                since_ms: None,
                by: CostBy::Total,
                task: Some(task.id),
            })
            .await?;
        Ok(Some(report.total).filter(|t| t.tasks > 0))
    }
}
