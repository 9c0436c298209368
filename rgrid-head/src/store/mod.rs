//! Persistence: every acknowledged task, node and join token, in SQLite (WAL,
//! `synchronous=FULL`; the default) or PostgreSQL, through sqlx with migrations per backend.
//!
//! The task path is written by the cluster loop alone, one [`WriteBatch`] at a time through
//! [`Store::commit`]: the loop gathers whatever happened while the previous commit ran (group
//! commit), so one fsync covers every row of the batch, and it acts on a batch (acknowledges,
//! assigns, answers) only once the batch is durable. A failed commit is retried; if the database
//! keeps failing, the commit reports it and the head stops rather than acknowledge anything that
//! is not stored. Writes outside the task path (joins, tokens) are their own transactions
//! ([`Store::write`]).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rgrid_core::object::NamedObject;
use rgrid_core::protocol::{AttemptInfo, CostBy, CostQuery, CostReport, MAX_COST_GROUPS};
use rgrid_core::{NodeId, TaskId, TaskState};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Runs the same function of `module` (its `sqlite` or its `postgres` variant) on whichever
/// pool the store has.
macro_rules! on_pool {
    ($pool:expr, $module:ident :: $f:ident($($arg:expr),*)) => {
        match $pool {
            Pool::Sqlite(pool) => $module::sqlite::$f(pool, $($arg),*).await,
            Pool::Postgres(pool) => $module::postgres::$f(pool, $($arg),*).await,
        }
    };
}

mod backend;
pub(crate) mod batch;
mod certificates;
#[cfg(test)]
mod edge_tests;
mod encoding;
mod identity;
mod pins;
mod revocations;
mod tokens;

pub(crate) use batch::{
    AttemptEnd, AttemptRow, CostKeys, Counters, Edge, Finish, NewTask, Output, Write, WriteBatch,
};
pub(crate) use certificates::IssuedCert;

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
    #[error("the database kept failing for {0:?}; the head stops so that a restart recovers: {1}")]
    Failing(Duration, sqlx::Error),
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

/// A task as stored, with its attempts.
#[derive(Clone, Debug)]
pub(crate) struct StoredTask {
    /// The postcard-encoded spec.
    pub spec: Vec<u8>,
    pub state: TaskState,
    pub finished_at_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub stdout: Output,
    pub stderr: Output,
    pub attempts: Vec<AttemptInfo>,
    /// Its declared outputs, once it succeeded.
    pub outputs: Vec<NamedObject>,
}

/// How a task stands, as a dependency lookup reads it.
#[derive(Clone, Debug)]
pub(crate) struct StoredEnd {
    pub state: TaskState,
    pub reason: Option<String>,
    /// Its declared outputs, once it succeeded.
    pub outputs: Vec<NamedObject>,
}

/// A dependency of an open task, as recovery reads it.
#[derive(Clone, Debug)]
pub(crate) struct StoredEdge {
    pub task: TaskId,
    pub dependency: TaskId,
    /// The dependency's state, and why it ended (when it did) and its outputs.
    pub state: TaskState,
    pub reason: Option<String>,
    pub outputs: Vec<NamedObject>,
}

/// A task's row as a listing shows it.
#[derive(Clone, Debug)]
pub(crate) struct ListedTask {
    pub id: TaskId,
    pub spec: Vec<u8>,
    pub state: TaskState,
    pub attempt: u32,
    pub node: Option<NodeId>,
    pub submitted_at_ms: u64,
    pub reason: Option<String>,
}

/// An open task as recovery reads it.
#[derive(Clone, Debug)]
pub(crate) struct RecoveredTask {
    pub id: TaskId,
    pub spec: Vec<u8>,
    pub submitted_at_ms: u64,
    pub node_losses: u32,
    pub failures: u32,
    /// Its latest attempt, if it was ever placed.
    pub latest: Option<LatestAttempt>,
}

/// The latest attempt of an open task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LatestAttempt {
    pub attempt: u32,
    pub node: NodeId,
    pub started_at_ms: u64,
    /// It ended (requeued or retried): the task waits to be placed again.
    pub ended: bool,
}

/// What a commit reports.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    /// Inserted tasks that were known already: nothing of theirs was written.
    pub known: HashSet<TaskId>,
}

/// How long the writer retries a failing commit before it gives up (and the head stops).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub give_up_after: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            give_up_after: Duration::from_secs(30),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

struct Job {
    batch: WriteBatch,
    done: oneshot::Sender<Result<Committed, StoreError>>,
}

/// The database: reads through the pool, the task path through the writer.
#[derive(Clone)]
pub(crate) struct Store {
    pool: Pool,
    /// At most one batch waits here: the loop sends the next only after the last committed.
    writer: mpsc::Sender<Job>,
}

/// The database behind the store.
#[derive(Clone)]
enum Pool {
    Sqlite(backend::sqlite::Pool),
    Postgres(backend::postgres::Pool),
}

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`
    /// (`sqlite://PATH` or `postgres://…`), and starts the writer.
    pub(crate) async fn open(
        url: &str,
        retry: RetryPolicy,
        tracker: &TaskTracker,
    ) -> Result<Self, StoreError> {
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
                .busy_timeout(Duration::from_secs(10))
                // 32 MiB of pages per connection (SQLite's default is 2 MiB): the task table's
                // indexes of a busy head stay in memory instead of being read back per commit.
                .pragma("cache_size", "-32768");
            private_database_file(options.get_filename())?;
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Pool::Sqlite(pool)
        };
        encoding::upgrade(&pool).await?;
        let (writer, jobs) = mpsc::channel(1);
        tracker.spawn(write_loop(pool.clone(), jobs, retry));
        Ok(Self { pool, writer })
    }

    /// Hands a batch to the writer; the receiver resolves once it is durable, or with the
    /// error that made the writer give up. Only one batch may be in flight at a time.
    pub(crate) fn commit(
        &self,
        batch: WriteBatch,
    ) -> oneshot::Receiver<Result<Committed, StoreError>> {
        let (done, rx) = oneshot::channel();
        if let Err(err) = self.writer.try_send(Job { batch, done }) {
            let job = match err {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            let _ = job.done.send(Err(StoreError::WriterGone));
        }
        rx
    }

    /// Writes outside the task path (nodes, tokens) in one transaction, and waits until they
    /// are durable.
    pub(crate) async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        on_pool!(&self.pool, backend::write(&writes)).map_err(StoreError::from)
    }

    /// Consumes join token `id` (whose secret hashes to `secret_hash`) and stores `node`, in
    /// one transaction, under the name the token binds it to if any, with the token's labels:
    /// the name it joined under. `None`: the token is unknown, has another secret, is revoked,
    /// expired or a used single-use token, and nothing was written.
    pub(crate) async fn join(
        &self,
        id: &str,
        secret_hash: &str,
        now_ms: u64,
        node: &StoredNode,
    ) -> Result<Option<String>, StoreError> {
        on_pool!(&self.pool, backend::join(id, secret_hash, now_ms, node)).map_err(StoreError::from)
    }

    pub(crate) async fn token(&self, id: &str) -> Result<Option<StoredToken>, StoreError> {
        on_pool!(&self.pool, backend::token(id))
    }

    /// The client that submitted task `id`: `None` when there is no such task, `Some(None)`
    /// when it was stored without one.
    pub(crate) async fn task_submitter(
        &self,
        id: TaskId,
    ) -> Result<Option<Option<String>>, StoreError> {
        on_pool!(&self.pool, backend::task_submitter(id))
    }

    /// Every node that ever joined, with its last known description.
    pub(crate) async fn nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        on_pool!(&self.pool, backend::nodes())
    }

    /// Up to `limit` open tasks after `after`, in id order, with their latest attempts.
    pub(crate) async fn recover_page(
        &self,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<RecoveredTask>, StoreError> {
        on_pool!(&self.pool, backend::recover_page(after, limit))
    }

    /// The dependencies of `tasks` (open tasks), with their states and outputs.
    pub(crate) async fn edges(&self, tasks: &[TaskId]) -> Result<Vec<StoredEdge>, StoreError> {
        on_pool!(&self.pool, backend::edges(tasks))
    }

    /// One task, whatever its state.
    pub(crate) async fn task(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        Ok(self.tasks(&[id]).await?.pop().map(|(_, task)| task))
    }

    /// Tasks by id (those the store has), in few queries.
    pub(crate) async fn tasks(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<(TaskId, StoredTask)>, StoreError> {
        on_pool!(&self.pool, backend::tasks(ids))
    }

    /// How each of these tasks stands, of those the store has (what a dependency lookup needs,
    /// without their specs and attempts).
    pub(crate) async fn ends(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<(TaskId, StoredEnd)>, StoreError> {
        on_pool!(&self.pool, backend::ends(ids))
    }

    /// Every attempt of a task, in order.
    pub(crate) async fn attempts(&self, id: TaskId) -> Result<Vec<AttemptInfo>, StoreError> {
        on_pool!(&self.pool, backend::attempts(id))
    }

    /// A page of stored tasks in id order, of one state or all.
    pub(crate) async fn tasks_page(
        &self,
        state: Option<TaskState>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<ListedTask>, StoreError> {
        on_pool!(&self.pool, backend::tasks_page(state, after, limit))
    }

    /// What tasks cost, grouped as `query` asks (the costliest [`MAX_COST_GROUPS`] groups),
    /// with the total; attempts that end at or after `now_ms - since_ms`.
    pub(crate) async fn cost(
        &self,
        query: &CostQuery,
        now_ms: u64,
    ) -> Result<CostReport, StoreError> {
        let since = query.since_ms.map_or(0, |s| now_ms.saturating_sub(s));
        let mut groups = on_pool!(
            &self.pool,
            backend::cost(query.by, since, query.task, MAX_COST_GROUPS + 1)
        )?;
        let truncated = groups.len() > MAX_COST_GROUPS as usize;
        groups.truncate(MAX_COST_GROUPS as usize);
        let total = if query.by == CostBy::Total {
            groups.first().cloned().unwrap_or_default()
        } else {
            on_pool!(
                &self.pool,
                backend::cost(CostBy::Total, since, query.task, 1)
            )?
            .pop()
            .unwrap_or_default()
        };
        Ok(CostReport {
            groups,
            total,
            truncated,
        })
    }

    /// Stored tasks by state (open tasks count as `queued`).
    pub(crate) async fn counts(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        on_pool!(&self.pool, backend::counts())
    }
}

/// The SQLite file holds task environments (secrets): readable by the head's user only, from
/// its creation on. SQLite gives its `-wal` and `-shm` files the database file's mode.
fn private_database_file(path: &std::path::Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| {
        StoreError::Sql(sqlx::Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )))
    };
    if path.as_os_str() == ":memory:" {
        return Ok(());
    }
    match rgrid_core::tls::create_private_file(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            Ok(())
        }
        Err(e) => Err(io(e)),
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

/// A stored blob: exactly one value, no bytes after it.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    rgrid_core::frame::decode(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// A stored task spec (of the current encoding: see `encoding.rs`).
pub(crate) fn decode_spec(bytes: &[u8]) -> Result<rgrid_core::TaskSpec, StoreError> {
    decode(bytes, "task spec")
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our own wire types always encode.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// A new, empty database on the PostgreSQL server of `RGRID_TEST_POSTGRES_URL` (default: the
/// one `scripts/setup.sh` makes), or `None` (the test is skipped) when none answers, except
/// under `CI=true`.
#[cfg(test)]
pub(crate) async fn test_postgres_database() -> Option<String> {
    use sqlx::Connection as _;
    let server = std::env::var("RGRID_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://rgrid:rgrid@127.0.0.1:5432/postgres".to_owned());
    let mut conn = match sqlx::PgConnection::connect(&server).await {
        Ok(conn) => conn,
        Err(err) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "no PostgreSQL: {err}"
            );
            eprintln!("skipping: no PostgreSQL at {server} ({err})");
            return None;
        }
    };
    let name = format!("rgrid_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("a test database");
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

/// The writer's connection, kept across commits so that its prepared statements are reused.
enum Conn {
    Sqlite(backend::sqlite::Conn),
    Postgres(backend::postgres::Conn),
}

/// The writer: commits one batch at a time on a connection of its own, retrying a failing
/// commit with backoff until `retry.give_up_after`.
async fn write_loop(pool: Pool, mut jobs: mpsc::Receiver<Job>, retry: RetryPolicy) {
    let sqlite_sql = backend::sqlite::task_sql();
    let postgres_sql = backend::postgres::task_sql();
    let mut conn: Option<Conn> = None;
    while let Some(Job { mut batch, done }) = jobs.recv().await {
        // Benchmark-only build: task rows are dropped (nodes and tokens are still stored, or
        // nothing could join), which measures what durability costs the task path.
        #[cfg(feature = "bench-no-persist")]
        let mut batch = WriteBatch {
            other: std::mem::take(&mut batch.other),
            ..WriteBatch::default()
        };
        let started = Instant::now();
        let rows = batch.rows();
        let mut backoff = retry.first_backoff;
        let result = loop {
            let attempt = async {
                fail::fail_point!("store-commit", |_| Err(sqlx::Error::Protocol(
                    "failpoint store-commit".into()
                )));
                if batch.is_empty() {
                    return Ok(HashSet::new());
                }
                let current = match conn.take() {
                    Some(c) => c,
                    None => match &pool {
                        Pool::Sqlite(p) => Conn::Sqlite(p.acquire().await?),
                        Pool::Postgres(p) => Conn::Postgres(p.acquire().await?),
                    },
                };
                let mut current = current;
                let known = match &mut current {
                    Conn::Sqlite(c) => backend::sqlite::commit(c, &sqlite_sql, &mut batch).await,
                    Conn::Postgres(c) => {
                        backend::postgres::commit(c, &postgres_sql, &mut batch).await
                    }
                }?;
                // Kept only after a success: a connection that failed may be broken.
                conn = Some(current);
                Ok(known)
            };
            match attempt.await {
                Ok(known) => {
                    tracing::trace!(rows, took = ?started.elapsed(), "committed");
                    crate::metrics::committed(rows, started.elapsed());
                    break Ok(Committed { known });
                }
                Err(err) if started.elapsed() < retry.give_up_after => {
                    tracing::warn!(error = %err, rows, retry_in = ?backoff, "database commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.max_backoff);
                }
                Err(err) => {
                    tracing::error!(error = %err, rows, "database commit keeps failing; giving up");
                    break Err(StoreError::Failing(started.elapsed(), err));
                }
            }
        };
        let _ = done.send(result);
    }
}
