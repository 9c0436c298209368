//! Persistence: every acknowledged task, node and join token, in SQLite (WAL,
//! `synchronous=FULL`; the default) or PostgreSQL, through sqlx with migrations per backend.
//!
//! Writes go through one writer task that batches whatever is waiting into one transaction
//! (group commit), so one fsync covers many writes. Callers that must not acknowledge before the
//! data is durable wait on the receiver [`Store::submit`] returns; the rest fire and forget, and
//! the writer's single queue keeps them in order.

use std::str::FromStr;
use std::time::Duration;

use rgrid_core::protocol::AttemptInfo;
use rgrid_core::{NodeId, TaskId, TaskSpec, TaskState};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

mod backend;

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
        /// Counters that may have changed on the way (a last node loss).
        node_losses: u32,
        failures: u32,
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

#[cfg(feature = "bench-no-persist")]
impl Write {
    fn is_task_write(&self) -> bool {
        matches!(
            self,
            Self::InsertTask { .. }
                | Self::UpdateTask { .. }
                | Self::FinishTask { .. }
                | Self::StartAttempt { .. }
                | Self::EndAttempt { .. }
        )
    }
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

pub(crate) struct Batch {
    pub(crate) writes: Vec<Write>,
    done: Option<Done>,
}

/// The database: reads through the pool, writes through the group-commit writer.
#[derive(Clone)]
pub(crate) struct Store {
    pool: Pool,
    writer: mpsc::UnboundedSender<Batch>,
}

/// The database behind the store.
#[derive(Clone)]
enum Pool {
    Sqlite(backend::sqlite::Pool),
    Postgres(backend::postgres::Pool),
}

/// Runs the same backend function on whichever pool the store has.
macro_rules! on_pool {
    ($pool:expr, $f:ident($($arg:expr),*)) => {
        match $pool {
            Pool::Sqlite(pool) => backend::sqlite::$f(pool, $($arg),*).await,
            Pool::Postgres(pool) => backend::postgres::$f(pool, $($arg),*).await,
        }
    };
}

/// Most batches the writer folds into one transaction.
const MAX_BATCHES_PER_COMMIT: usize = 1024;

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`
    /// (`sqlite://PATH` or `postgres://…`), and starts the writer.
    pub(crate) async fn open(url: &str, tracker: &TaskTracker) -> Result<Self, StoreError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Pool::Postgres(pool)
        } else {
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
            Pool::Sqlite(pool)
        };
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
        on_pool!(&self.pool, token(id))
    }

    /// Every node that ever joined, with its last known description.
    pub(crate) async fn nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        on_pool!(&self.pool, nodes())
    }

    /// Is this node known (it joined and was not removed)?
    pub(crate) async fn node_exists(&self, id: NodeId) -> Result<bool, StoreError> {
        on_pool!(&self.pool, node_exists(id))
    }

    /// Every task that has not reached a terminal state, in submission order.
    pub(crate) async fn open_tasks(&self) -> Result<Vec<StoredTask>, StoreError> {
        on_pool!(&self.pool, open_tasks())
    }

    /// One task, whatever its state.
    pub(crate) async fn task(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        on_pool!(&self.pool, task(id))
    }
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn parse_id<T: FromStr>(s: String, what: &'static str) -> Result<T, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{s:?} is not an id"),
    })
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our own wire types always encode.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// The writer: takes every batch that is waiting, applies them in one transaction, commits,
/// then tells each waiter.
async fn write_loop(pool: Pool, mut batches: mpsc::UnboundedReceiver<Batch>) {
    let mut pending = Vec::new();
    while batches
        .recv_many(&mut pending, MAX_BATCHES_PER_COMMIT)
        .await
        > 0
    {
        // Benchmark-only build: task writes are dropped (tokens and nodes are still stored, or
        // nothing could join), which measures what durability costs the task path.
        #[cfg(feature = "bench-no-persist")]
        for batch in &mut pending {
            batch.writes.retain(|write| !write.is_task_write());
        }
        let result = if pending.iter().all(|batch| batch.writes.is_empty()) {
            Ok(())
        } else {
            on_pool!(&pool, commit(&pending))
        };
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
