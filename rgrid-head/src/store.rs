//! Persistence: every acknowledged task, node and join token, in SQLite (WAL,
//! `synchronous=FULL`) through sqlx with migrations.
//!
//! Writes go through one writer task that batches whatever is waiting into one transaction
//! (group commit), so one fsync covers many writes. Callers that must not acknowledge before the
//! data is durable wait on the receiver [`Store::submit`] returns; the rest fire and forget, and
//! the writer's single queue keeps them in order.

use std::str::FromStr;
use std::time::Duration;

use rgrid_core::protocol::AttemptInfo;
use rgrid_core::{NodeId, TaskId, TaskSpec, TaskState};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored {what} does not decode: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("the database writer has stopped (head shutting down)")]
    WriterGone,
}

/// One write. Applied in order, in batches, each batch in one transaction.
#[derive(Debug)]
pub(crate) enum Write {
    InsertTask {
        spec: Box<TaskSpec>,
        submitted_at_ms: u64,
    },
    /// State, attempt, node and node-loss count of a task that is not finished.
    UpdateTask {
        task: TaskId,
        state: TaskState,
        attempt: u32,
        node: Option<NodeId>,
        node_losses: u32,
        failures: u32,
        reason: Option<String>,
    },
    FinishTask {
        task: TaskId,
        state: TaskState,
        finished_at_ms: u64,
        exit_code: Option<i64>,
        reason: Option<String>,
        stdout_hash: Option<String>,
        stderr_hash: Option<String>,
    },
    StartAttempt {
        task: TaskId,
        info: AttemptInfo,
    },
    EndAttempt {
        task: TaskId,
        attempt: u32,
        ended_at_ms: u64,
        outcome: String,
    },
    UpsertNode(Box<StoredNode>),
    NodeState {
        node: NodeId,
        state: &'static str,
    },
    InsertToken(StoredToken),
    UseToken {
        id: String,
    },
}

/// A node as stored.
#[derive(Clone, Debug)]
pub(crate) struct StoredNode {
    pub id: NodeId,
    pub name: String,
    /// Absent until the node first opens a session.
    pub hello: Option<rgrid_core::protocol::NodeHello>,
    pub state: &'static str,
    pub joined_at_ms: u64,
}

/// A join token as stored (only a hash of its secret).
#[derive(Clone, Debug)]
pub(crate) struct StoredToken {
    pub id: String,
    pub secret_hash: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub single_use: bool,
    pub used: bool,
    pub revoked: bool,
}

/// A task as stored.
#[derive(Clone, Debug)]
pub(crate) struct StoredTask {
    pub spec: TaskSpec,
    pub state: TaskState,
    pub attempt: u32,
    pub node: Option<NodeId>,
    pub node_losses: u32,
    pub failures: u32,
    pub submitted_at_ms: u64,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub stdout_hash: Option<String>,
    pub stderr_hash: Option<String>,
    pub attempts: Vec<AttemptInfo>,
}

type Done = oneshot::Sender<Result<(), String>>;

struct Batch {
    writes: Vec<Write>,
    done: Option<Done>,
}

/// The database: reads through the pool, writes through the group-commit writer.
#[derive(Clone)]
pub(crate) struct Store {
    pool: SqlitePool,
    writer: mpsc::UnboundedSender<Batch>,
}

/// Most batches the writer folds into one transaction.
const MAX_BATCHES_PER_COMMIT: usize = 1024;

impl Store {
    /// Opens (creating if needed) and migrates the database at `url` (`sqlite://PATH`), starts
    /// the writer.
    pub(crate) async fn open(url: &str, tracker: &TaskTracker) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let (writer, batches) = mpsc::unbounded_channel();
        tracker.spawn(write_loop(pool.clone(), batches));
        Ok(Self { pool, writer })
    }

    /// Queues `writes`; the receiver resolves once they are committed.
    pub(crate) fn submit(&self, writes: Vec<Write>) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        // If the writer is gone, `done` is dropped and the receiver reports that.
        let _ = self.writer.send(Batch {
            writes,
            done: Some(done),
        });
        rx
    }

    /// Queues `writes` without waiting for them.
    pub(crate) fn push(&self, writes: Vec<Write>) {
        let _ = self.writer.send(Batch { writes, done: None });
    }

    /// Writes and waits until they are durable.
    pub(crate) async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        match self.submit(writes).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Sql(sqlx::Error::Protocol(message))),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    pub(crate) async fn token(&self, id: &str) -> Result<Option<StoredToken>, StoreError> {
        let row = sqlx::query(
            "SELECT id, secret_hash, created_at_ms, expires_at_ms, single_use, used, revoked
             FROM join_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| StoredToken {
            id: row.get("id"),
            secret_hash: row.get("secret_hash"),
            created_at_ms: to_u64(row.get("created_at_ms")),
            expires_at_ms: row.get::<Option<i64>, _>("expires_at_ms").map(to_u64),
            single_use: row.get("single_use"),
            used: row.get("used"),
            revoked: row.get("revoked"),
        }))
    }

    /// Every node that ever joined, with its last known description.
    pub(crate) async fn nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, resources, labels, capabilities, state, joined_at_ms FROM nodes",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|row| node_from_row(&row)).collect()
    }

    /// Is this node known (it joined and was not removed)?
    pub(crate) async fn node_exists(&self, id: NodeId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM nodes WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Every task that has not reached a terminal state, in submission order.
    pub(crate) async fn open_tasks(&self) -> Result<Vec<StoredTask>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM tasks
             WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost')
             ORDER BY submitted_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut tasks = Vec::with_capacity(rows.len());
        for row in rows {
            let mut task = task_from_row(&row)?;
            task.attempts = self.attempts(task.spec.id).await?;
            tasks.push(task);
        }
        Ok(tasks)
    }

    /// One task, whatever its state.
    pub(crate) async fn task(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut task = task_from_row(&row)?;
        task.attempts = self.attempts(id).await?;
        Ok(Some(task))
    }

    async fn attempts(&self, task: TaskId) -> Result<Vec<AttemptInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, node, node_name, started_at_ms, ended_at_ms, outcome
             FROM attempts WHERE task = $1 ORDER BY attempt",
        )
        .bind(task.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(AttemptInfo {
                    attempt: to_u32(row.get("attempt")),
                    node: parse_id(row.get("node"), "attempt node")?,
                    node_name: row.get("node_name"),
                    started_at_ms: to_u64(row.get("started_at_ms")),
                    ended_at_ms: row.get::<Option<i64>, _>("ended_at_ms").map(to_u64),
                    outcome: row.get("outcome"),
                })
            })
            .collect()
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_id<T: FromStr>(s: String, what: &'static str) -> Result<T, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{s:?} is not an id"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our own wire types always encode.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn task_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredTask, StoreError> {
    let state: String = row.get("state");
    Ok(StoredTask {
        spec: decode(row.get::<&[u8], _>("spec"), "task spec")?,
        state: TaskState::parse(&state).ok_or(StoreError::Corrupt {
            what: "task state",
            detail: state.clone(),
        })?,
        attempt: to_u32(row.get("attempt")),
        node: row
            .get::<Option<String>, _>("node")
            .map(|n| parse_id(n, "task node"))
            .transpose()?,
        node_losses: to_u32(row.get("node_losses")),
        failures: to_u32(row.get("failures")),
        submitted_at_ms: to_u64(row.get("submitted_at_ms")),
        exit_code: row.get("exit_code"),
        reason: row.get("reason"),
        stdout_hash: row.get("stdout_hash"),
        stderr_hash: row.get("stderr_hash"),
        attempts: Vec::new(),
    })
}

fn node_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredNode, StoreError> {
    let resources: Option<Vec<u8>> = row.get("resources");
    let labels: Option<Vec<u8>> = row.get("labels");
    let capabilities: Option<Vec<u8>> = row.get("capabilities");
    let hello = match (resources, labels, capabilities) {
        (Some(r), Some(l), Some(c)) => Some(rgrid_core::protocol::NodeHello {
            name: row.get("name"),
            resources: decode(&r, "node resources")?,
            labels: decode(&l, "node labels")?,
            capabilities: decode(&c, "node capabilities")?,
            running: Vec::new(),
        }),
        _ => None,
    };
    Ok(StoredNode {
        id: parse_id(row.get("id"), "node id")?,
        name: row.get("name"),
        hello,
        state: "dead",
        joined_at_ms: to_u64(row.get("joined_at_ms")),
    })
}

/// The writer: takes every batch that is waiting, applies them in one transaction, commits,
/// then tells each waiter.
async fn write_loop(pool: SqlitePool, mut batches: mpsc::UnboundedReceiver<Batch>) {
    let mut pending = Vec::new();
    while batches
        .recv_many(&mut pending, MAX_BATCHES_PER_COMMIT)
        .await
        > 0
    {
        let result = commit(&pool, &pending).await;
        if let Err(err) = &result {
            tracing::error!(error = %err, batches = pending.len(), "database write failed");
        }
        for batch in pending.drain(..) {
            if let Some(done) = batch.done {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(ToString::to_string));
            }
        }
    }
}

async fn commit(pool: &SqlitePool, batches: &[Batch]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for write in batches.iter().flat_map(|b| &b.writes) {
        apply(&mut tx, write).await?;
    }
    tx.commit().await
}

async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    write: &Write,
) -> Result<(), sqlx::Error> {
    let conn = &mut **tx;
    match write {
        Write::InsertTask {
            spec,
            submitted_at_ms,
        } => {
            sqlx::query(
                "INSERT INTO tasks (id, spec, state, submitted_at_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(spec.id.to_string())
            .bind(encode(spec.as_ref()))
            .bind(TaskState::Queued.as_str())
            .bind(to_i64(*submitted_at_ms))
            .execute(conn)
            .await?;
        }
        Write::UpdateTask {
            task,
            state,
            attempt,
            node,
            node_losses,
            failures,
            reason,
        } => {
            sqlx::query(
                "UPDATE tasks SET state = $2, attempt = $3, node = $4, node_losses = $5,
                 failures = $6, reason = $7 WHERE id = $1",
            )
            .bind(task.to_string())
            .bind(state.as_str())
            .bind(i64::from(*attempt))
            .bind(node.map(|n| n.to_string()))
            .bind(i64::from(*node_losses))
            .bind(i64::from(*failures))
            .bind(reason)
            .execute(conn)
            .await?;
        }
        Write::FinishTask {
            task,
            state,
            finished_at_ms,
            exit_code,
            reason,
            stdout_hash,
            stderr_hash,
        } => {
            sqlx::query(
                "UPDATE tasks SET state = $2, finished_at_ms = $3, exit_code = $4, reason = $5,
                 stdout_hash = $6, stderr_hash = $7 WHERE id = $1",
            )
            .bind(task.to_string())
            .bind(state.as_str())
            .bind(to_i64(*finished_at_ms))
            .bind(exit_code)
            .bind(reason)
            .bind(stdout_hash)
            .bind(stderr_hash)
            .execute(conn)
            .await?;
        }
        Write::StartAttempt { task, info } => {
            sqlx::query(
                "INSERT INTO attempts (task, attempt, node, node_name, started_at_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (task, attempt) DO NOTHING",
            )
            .bind(task.to_string())
            .bind(i64::from(info.attempt))
            .bind(info.node.to_string())
            .bind(&info.node_name)
            .bind(to_i64(info.started_at_ms))
            .execute(conn)
            .await?;
        }
        Write::EndAttempt {
            task,
            attempt,
            ended_at_ms,
            outcome,
        } => {
            sqlx::query(
                "UPDATE attempts SET ended_at_ms = $3, outcome = $4 WHERE task = $1 AND attempt = $2",
            )
            .bind(task.to_string())
            .bind(i64::from(*attempt))
            .bind(to_i64(*ended_at_ms))
            .bind(outcome)
            .execute(conn)
            .await?;
        }
        Write::UpsertNode(node) => {
            let hello = node.hello.as_ref();
            sqlx::query(
                "INSERT INTO nodes (id, name, resources, labels, capabilities, state, joined_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                   resources = COALESCE(excluded.resources, nodes.resources),
                   labels = COALESCE(excluded.labels, nodes.labels),
                   capabilities = COALESCE(excluded.capabilities, nodes.capabilities),
                   state = excluded.state",
            )
            .bind(node.id.to_string())
            .bind(&node.name)
            .bind(hello.map(|h| encode(&h.resources)))
            .bind(hello.map(|h| encode(&h.labels)))
            .bind(hello.map(|h| encode(&h.capabilities)))
            .bind(node.state)
            .bind(to_i64(node.joined_at_ms))
            .execute(conn)
            .await?;
        }
        Write::NodeState { node, state } => {
            sqlx::query("UPDATE nodes SET state = $2 WHERE id = $1")
                .bind(node.to_string())
                .bind(*state)
                .execute(conn)
                .await?;
        }
        Write::InsertToken(token) => {
            sqlx::query(
                "INSERT INTO join_tokens (id, secret_hash, created_at_ms, expires_at_ms, single_use, used, revoked)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&token.id)
            .bind(&token.secret_hash)
            .bind(to_i64(token.created_at_ms))
            .bind(token.expires_at_ms.map(to_i64))
            .bind(token.single_use)
            .bind(token.used)
            .bind(token.revoked)
            .execute(conn)
            .await?;
        }
        Write::UseToken { id } => {
            sqlx::query("UPDATE join_tokens SET used = 1 WHERE id = $1")
                .bind(id)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}
