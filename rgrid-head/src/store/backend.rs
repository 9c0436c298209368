//! The SQL of the store, written once and compiled for each backend (SQLite, PostgreSQL): the
//! queries use `$N` placeholders and types both backends share (TEXT, 64-bit integers, bytes,
//! booleans); each backend has its own migrations.
//!
//! The task path writes multi-row statements: a batch's rows of one kind go out in chunks of
//! [`CHUNKS`] rows, so each statement text is one of a few, prepared once per connection. Rows
//! that join a `VALUES` list cast their placeholders, as PostgreSQL cannot infer their types.
//! On SQLite these statements use anonymous `?` placeholders: sqlx looks up the name of every
//! numbered one, which SQLite finds by a linear scan, so a statement of thousands of `$N`
//! placeholders costs quadratic time to bind.

/// Rows per multi-row statement: a batch of `n` rows of a kind takes `n / 1024` statements of
/// 1,024 rows and at most three of each smaller size. (The widest row, a finish, has 14
/// placeholders: 14,336 a statement, under SQLite's 32,766 and PostgreSQL's 65,535.)
pub(super) const CHUNKS: [usize; 6] = [1024, 256, 64, 16, 4, 1];

/// The states of a finished task, as the partial index `tasks_open_id` spells them, so that the
/// recovery query can use it.
const OPEN: &str = "state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost', 'dependency_failed')";

/// `n` copies of `row`, comma-separated; with `numbered`, each `?` becomes `$1`, `$2`, …
/// across all rows.
pub(super) fn rows(row: &str, n: usize, numbered: bool) -> String {
    let mut out = String::new();
    let mut next = 1;
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        for part in row.split_inclusive('?') {
            match part.strip_suffix('?').filter(|_| numbered) {
                Some(text) => {
                    out.push_str(text);
                    out.push('$');
                    out.push_str(&next.to_string());
                    next += 1;
                }
                None => out.push_str(part),
            }
        }
    }
    out
}

/// The statement texts of the task path for one backend (`blob` and `real` are its bytes and
/// floating-point types; `sqlite`:
/// its placeholders are `?`, else `$N`): one per kind and chunk size for the rows every task
/// writes, one single-row statement for the rare ones (requeues, retries).
///
/// Each is written so that the planner cannot drive it by a scan (as long as the queue)
/// instead of a lookup by id per row: inserts and upserts look up by their conflict target;
/// the attempt insert is a `CROSS JOIN` (SQLite keeps that order), and on SQLite its guard's
/// column is behind a unary `+`, so the partial index of open tasks is not a candidate.
pub(super) struct TaskSql {
    pub insert: Vec<String>,
    pub edges: Vec<String>,
    pub attempts: Vec<String>,
    pub finishes: Vec<String>,
    pub attempt_end: String,
    pub counters: String,
}

impl TaskSql {
    pub(super) fn new(blob: &str, real: &str, sqlite: bool) -> Self {
        let rows = |row: &str, n: usize| rows(row, n, !sqlite);
        let param = |i: usize| {
            if sqlite {
                "?".to_owned()
            } else {
                format!("${i}")
            }
        };
        let per_chunk = |make: &dyn Fn(usize) -> String| CHUNKS.iter().map(|&n| make(n)).collect();
        let guard = |table: &str| {
            let plus = if sqlite { "+" } else { "" };
            format!("{plus}{table}.{OPEN}")
        };
        Self {
            insert: per_chunk(&|n| {
                format!(
                    "INSERT INTO tasks (id, spec, state, submitted_at_ms, submitted_by, shape, selector)
                     VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
                    rows("(?, ?, ?, ?, ?, ?, ?)", n)
                )
            }),
            edges: per_chunk(&|n| {
                format!(
                    "INSERT INTO task_dependencies (task, dependency) VALUES {}
                     ON CONFLICT (task, dependency) DO NOTHING",
                    rows("(?, ?)", n)
                )
            }),
            attempts: per_chunk(&|n| {
                format!(
                    "INSERT INTO attempts (task, attempt, node, node_name, started_at_ms, share,
                       hourly_price)
                     SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6,
                       v.column7
                     FROM (VALUES {}) AS v CROSS JOIN tasks t
                     WHERE t.id = v.column1 AND {}
                     ON CONFLICT (task, attempt) DO NOTHING",
                    rows(
                        &format!(
                            "(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT), \
                             CAST(? AS BIGINT), CAST(? AS {real}), CAST(? AS {real}))"
                        ),
                        n
                    ),
                    guard("t")
                )
            }),
            // An upsert that only ever updates: every finished task's row exists (its insert is
            // in this batch or an earlier one), and the placeholders stand in for the columns an
            // insert would need.
            finishes: per_chunk(&|n| {
                format!(
                    "INSERT INTO tasks (id, spec, submitted_at_ms, state, finished_at_ms, exit_code,
                       reason, stdout, stderr, stdout_hash, stderr_hash, attempt, node, node_losses,
                       failures, outputs)
                     VALUES {}
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                       finished_at_ms = excluded.finished_at_ms, exit_code = excluded.exit_code,
                       reason = excluded.reason, stdout = excluded.stdout, stderr = excluded.stderr,
                       stdout_hash = excluded.stdout_hash, stderr_hash = excluded.stderr_hash,
                       attempt = excluded.attempt, node = excluded.node,
                       node_losses = excluded.node_losses, failures = excluded.failures,
                       outputs = excluded.outputs
                     WHERE tasks.{OPEN}",
                    rows(
                        &format!(
                            "(CAST(? AS TEXT), CAST('' AS {blob}), 0, CAST(? AS TEXT), CAST(? AS BIGINT), \
                             CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS {blob}), CAST(? AS {blob}), \
                             CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), \
                             CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS {blob}))"
                        ),
                        n
                    )
                )
            }),
            attempt_end: format!(
                "UPDATE attempts SET ended_at_ms = {}, outcome = {}
                 WHERE task = {} AND attempt = {} AND ended_at_ms IS NULL",
                param(1),
                param(2),
                param(3),
                param(4)
            ),
            counters: format!(
                "UPDATE tasks SET node_losses = {}, failures = {} WHERE id = {} AND {OPEN}",
                param(1),
                param(2),
                param(3)
            ),
        }
    }
}

/// Splits `items` into chunks of the sizes in [`CHUNKS`], largest first; yields each chunk with
/// the index of its size.
pub(super) fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().position(|&n| n <= items.len())?;
        let (chunk, rest) = items.split_at(CHUNKS[size]);
        items = rest;
        Some((size, chunk))
    })
}

/// One module per backend with the same functions over that backend's pool.
macro_rules! backend {
    ($name:ident, $db:ty, $blob:literal, $real:literal, $least:literal, $greatest:literal, $sqlite:literal) => {
        pub(crate) mod $name {
            use std::collections::HashSet;

            use rgrid_core::protocol::{AttemptInfo, CostBy, CostGroup};
            use rgrid_core::{TaskId, TaskState};
            use sqlx::Row as _;

            use super::{chunks, TaskSql, OPEN};
            use crate::store::batch::{Output, Write, WriteBatch};
            use crate::store::{
                decode, encode, parse_id, to_i64, to_u32, to_u64, LatestAttempt, ListedTask,
                RecoveredTask, StoreError, StoredEdge, StoredEnd, StoredNode, StoredTask, StoredToken,
            };

            type Db = $db;
            pub(crate) type Pool = sqlx::Pool<Db>;
            pub(crate) type Conn = sqlx::pool::PoolConnection<Db>;
            type Row = <Db as sqlx::Database>::Row;

            pub(crate) fn task_sql() -> TaskSql {
                TaskSql::new($blob, $real, $sqlite)
            }

            pub(crate) async fn token(pool: &Pool, id: &str) -> Result<Option<StoredToken>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, secret_hash, created_at_ms, expires_at_ms, single_use, used, revoked
                     FROM join_tokens WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
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

            /// The client that submitted task `id`: `None` when there is no such task,
            /// `Some(None)` when it was stored without one.
            pub(crate) async fn task_submitter(
                pool: &Pool,
                id: TaskId,
            ) -> Result<Option<Option<String>>, StoreError> {
                let row = sqlx::query("SELECT submitted_by FROM tasks WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await?;
                Ok(row.map(|row| row.get("submitted_by")))
            }

            /// Every node that ever joined, with its last known description.
            pub(crate) async fn nodes(pool: &Pool) -> Result<Vec<StoredNode>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, name, resources, labels, capabilities, state, joined_at_ms FROM nodes",
                )
                .fetch_all(pool)
                .await?;
                rows.into_iter().map(|row| node_from_row(&row)).collect()
            }

            /// Is this node known (it joined and was not removed)?
            /// Up to `limit` open tasks with an id after `after`, in id order, each with its
            /// latest attempt.
            pub(crate) async fn recover_page(
                pool: &Pool,
                after: Option<TaskId>,
                limit: u32,
            ) -> Result<Vec<RecoveredTask>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT t.id, t.spec, t.submitted_at_ms, t.node_losses, t.failures,
                       a.attempt AS a_attempt, a.node AS a_node, a.started_at_ms AS a_started,
                       a.ended_at_ms AS a_ended
                     FROM tasks t LEFT JOIN attempts a ON a.task = t.id
                       AND a.attempt = (SELECT MAX(b.attempt) FROM attempts b WHERE b.task = t.id)
                     WHERE t.{OPEN} AND t.id > $1 ORDER BY t.id LIMIT $2"
                ))
                .bind(after.map(|id| id.to_string()).unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let latest = match row.get::<Option<i64>, _>("a_attempt") {
                            None => None,
                            Some(attempt) => Some(LatestAttempt {
                                attempt: to_u32(attempt),
                                node: parse_id(row.get("a_node"), "attempt node")?,
                                started_at_ms: to_u64(row.get("a_started")),
                                ended: row.get::<Option<i64>, _>("a_ended").is_some(),
                            }),
                        };
                        Ok(RecoveredTask {
                            id: parse_id(row.get("id"), "task id")?,
                            spec: row.get("spec"),
                            submitted_at_ms: to_u64(row.get("submitted_at_ms")),
                            node_losses: to_u32(row.get("node_losses")),
                            failures: to_u32(row.get("failures")),
                            latest,
                        })
                    })
                    .collect()
            }

            /// Finished tasks (open ones too, without their attempts) by id, with their
            /// attempts; ids the store does not have are left out. One query per chunk of ids.
            pub(crate) async fn tasks(
                pool: &Pool,
                ids: &[TaskId],
            ) -> Result<Vec<(TaskId, StoredTask)>, StoreError> {
                let mut found = Vec::with_capacity(ids.len());
                for (size, chunk) in chunks(ids) {
                    let sql = format!(
                        "SELECT t.id, t.spec, t.state, t.attempt, t.finished_at_ms, t.exit_code,
                           t.reason, t.stdout, t.stderr, t.stdout_hash, t.stderr_hash, t.outputs,
                           a.node AS a_node, a.node_name AS a_node_name,
                           a.started_at_ms AS a_started, a.ended_at_ms AS a_ended,
                           a.outcome AS a_outcome
                         FROM tasks t LEFT JOIN attempts a ON a.task = t.id AND a.attempt = t.attempt
                         WHERE t.id IN ({})",
                        super::rows("?", super::CHUNKS[size], !$sqlite)
                    );
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for row in query.fetch_all(pool).await? {
                        let id: TaskId = parse_id(row.get("id"), "task id")?;
                        let attempt = to_u32(row.get("attempt"));
                        let last = match row.get::<Option<String>, _>("a_node") {
                            Some(node) => Some(AttemptInfo {
                                attempt,
                                node: parse_id(node, "attempt node")?,
                                node_name: row.get("a_node_name"),
                                started_at_ms: to_u64(row.get("a_started")),
                                ended_at_ms: row.get::<Option<i64>, _>("a_ended").map(to_u64),
                                outcome: row.get("a_outcome"),
                            }),
                            None => None,
                        };
                        let stored = StoredTask {
                            spec: row.get("spec"),
                            state: parse_state(row.get("state"))?,
                            finished_at_ms: row.get::<Option<i64>, _>("finished_at_ms").map(to_u64),
                            exit_code: row.get("exit_code"),
                            reason: row.get("reason"),
                            stdout: Output::from_columns(row.get("stdout"), row.get("stdout_hash")),
                            stderr: Output::from_columns(row.get("stderr"), row.get("stderr_hash")),
                            outputs: decode_outputs(row.get("outputs"))?,
                            // Earlier attempts only when there were any (rare).
                            attempts: if attempt > 1 {
                                attempts(pool, id).await?
                            } else {
                                last.into_iter().collect()
                            },
                        };
                        found.push((id, stored));
                    }
                }
                Ok(found)
            }

            /// How each of these tasks stands (state, reason, outputs), of those the store has.
            pub(crate) async fn ends(
                pool: &Pool,
                ids: &[TaskId],
            ) -> Result<Vec<(TaskId, StoredEnd)>, StoreError> {
                let mut found = Vec::with_capacity(ids.len());
                for (size, chunk) in chunks(ids) {
                    let sql = format!(
                        "SELECT id, state, reason, outputs FROM tasks WHERE id IN ({})",
                        super::rows("?", super::CHUNKS[size], !$sqlite)
                    );
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for row in query.fetch_all(pool).await? {
                        let end = StoredEnd {
                            state: parse_state(row.get("state"))?,
                            reason: row.get("reason"),
                            outputs: decode_outputs(row.get("outputs"))?,
                        };
                        found.push((parse_id(row.get("id"), "task id")?, end));
                    }
                }
                Ok(found)
            }

            /// Every attempt of a task, in order.
            pub(crate) async fn attempts(pool: &Pool, task: TaskId) -> Result<Vec<AttemptInfo>, StoreError> {
                let rows = sqlx::query(
                    "SELECT attempt, node, node_name, started_at_ms, ended_at_ms, outcome
                     FROM attempts WHERE task = $1 ORDER BY attempt",
                )
                .bind(task.to_string())
                .fetch_all(pool)
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

            /// A page of tasks in id order, optionally of one state.
            pub(crate) async fn tasks_page(
                pool: &Pool,
                state: Option<TaskState>,
                after: Option<TaskId>,
                limit: u32,
            ) -> Result<Vec<ListedTask>, StoreError> {
                let columns = "id, spec, state, attempt, node, submitted_at_ms, reason";
                let after = after.map(|id| id.to_string()).unwrap_or_default();
                let rows = match state {
                    Some(state) => {
                        sqlx::query(&format!(
                            "SELECT {columns} FROM tasks WHERE id > $1 AND state = $2
                             ORDER BY id LIMIT $3"
                        ))
                        .bind(after)
                        .bind(state.as_str())
                        .bind(i64::from(limit))
                        .fetch_all(pool)
                        .await?
                    }
                    None => {
                        sqlx::query(&format!(
                            "SELECT {columns} FROM tasks WHERE id > $1 ORDER BY id LIMIT $2"
                        ))
                        .bind(after)
                        .bind(i64::from(limit))
                        .fetch_all(pool)
                        .await?
                    }
                };
                rows.iter()
                    .map(|row| {
                        Ok(ListedTask {
                            id: parse_id(row.get("id"), "task id")?,
                            spec: row.get("spec"),
                            state: parse_state(row.get("state"))?,
                            attempt: to_u32(row.get("attempt")),
                            node: row
                                .get::<Option<String>, _>("node")
                                .map(|n| parse_id(n, "task node"))
                                .transpose()?,
                            submitted_at_ms: to_u64(row.get("submitted_at_ms")),
                            reason: row.get("reason"),
                        })
                    })
                    .collect()
            }

            /// Stored tasks by state.
            pub(crate) async fn counts(pool: &Pool) -> Result<Vec<(TaskState, u64)>, StoreError> {
                let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| Ok((parse_state(row.get("state"))?, to_u64(row.get("n")))))
                    .collect()
            }

            /// What tasks cost, by `by`, costliest first, at most `limit` groups: attempts on
            /// priced nodes that ended at or after `since_ms` (of `task` alone, if given). An
            /// attempt pays, of each closed billed hour of its node it overlaps, share × ms in
            /// it × price / used (the rule of `rgrid_cloud::task_cost::attempt_cost`), and of
            /// the rest of its run its node-seconds at the hourly price (provisional).
            pub(crate) async fn cost(
                pool: &Pool,
                by: CostBy,
                since_ms: u64,
                task: Option<TaskId>,
                limit: u32,
            ) -> Result<Vec<CostGroup>, StoreError> {
                let key = match by {
                    CostBy::Total => "''",
                    CostBy::Label => "COALESCE(t.selector, '')",
                    CostBy::Shape => "COALESCE(t.shape, '')",
                    CostBy::Client => "COALESCE(t.submitted_by, '')",
                };
                let only = if task.is_some() { "AND a.task = $3" } else { "" };
                // Zero without an hour (PostgreSQL's LEAST and GREATEST skip NULLs).
                let overlap = concat!(
                    "CASE WHEN h.node IS NULL THEN 0 ELSE CAST(", $least, "(r.end_ms, h.end_ms) - ",
                    $greatest, "(r.start_ms, h.start_ms) AS ", $real, ") END"
                );
                let sql = format!(
                    "WITH ends AS (
                       SELECT a.task, a.attempt, a.node, a.share, a.hourly_price,
                         a.started_at_ms AS start_ms,
                         COALESCE(a.ended_at_ms,
                           CASE WHEN t.attempt = a.attempt THEN t.finished_at_ms END) AS end_raw,
                         {key} AS k
                       FROM attempts a JOIN tasks t ON t.id = a.task
                       WHERE a.hourly_price IS NOT NULL {only}
                     ), runs AS (
                       -- A finish carries the node's clock, the start the head's: a node
                       -- whose clock is behind must not make a run negative.
                       SELECT task, attempt, node, share, hourly_price, start_ms, k,
                         CASE WHEN end_raw < start_ms THEN start_ms ELSE end_raw END AS end_ms
                       FROM ends
                     ), per_attempt AS (
                       SELECT r.k, r.task, r.share, r.hourly_price,
                         CAST(r.end_ms - r.start_ms AS {real}) AS ms,
                         COALESCE(SUM({overlap}), 0) AS covered,
                         COALESCE(SUM({overlap} * h.price / h.used), 0) AS closed
                       FROM runs r LEFT JOIN node_hours h ON h.node = r.node
                         AND h.start_ms < r.end_ms AND h.end_ms > r.start_ms
                       WHERE r.end_ms IS NOT NULL AND r.end_ms >= $1
                       GROUP BY r.task, r.attempt, r.k, r.share, r.hourly_price, r.start_ms, r.end_ms
                     ), groups AS (
                       SELECT k, COUNT(DISTINCT task) AS tasks,
                         SUM(share * ms) / 1000.0 AS node_seconds,
                         SUM(share * closed) AS closed_cost,
                         SUM(share * (ms - covered) * hourly_price / 3600000.0) AS open_cost
                       FROM per_attempt GROUP BY k
                     )
                     SELECT k, tasks, node_seconds, closed_cost, open_cost FROM groups
                     ORDER BY closed_cost + open_cost DESC, k LIMIT $2",
                    real = $real,
                );
                let mut query = sqlx::query(&sql)
                    .bind(to_i64(since_ms))
                    .bind(i64::from(limit));
                if let Some(task) = task {
                    query = query.bind(task.to_string());
                }
                let rows = query.fetch_all(pool).await?;
                rows.iter()
                    .map(|row| {
                        let real = |name: &str| {
                            row.try_get::<Option<f64>, _>(name).map(|v| v.unwrap_or(0.0))
                        };
                        let provisional = real("open_cost")?.max(0.0);
                        Ok(CostGroup {
                            key: row.try_get("k")?,
                            tasks: to_u64(row.try_get("tasks")?),
                            node_seconds: real("node_seconds")?,
                            cost: real("closed_cost")? + provisional,
                            provisional,
                        })
                    })
                    .collect()
            }

            /// The dependencies of `tasks`, with their states and outputs; one query per chunk.
            pub(crate) async fn edges(
                pool: &Pool,
                tasks: &[TaskId],
            ) -> Result<Vec<StoredEdge>, StoreError> {
                let mut found = Vec::new();
                for (size, chunk) in chunks(tasks) {
                    let sql = format!(
                        "SELECT e.task, e.dependency, d.state, d.reason, d.outputs
                         FROM task_dependencies e JOIN tasks d ON d.id = e.dependency
                         WHERE e.task IN ({})",
                        super::rows("?", super::CHUNKS[size], !$sqlite)
                    );
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for row in query.fetch_all(pool).await? {
                        found.push(StoredEdge {
                            task: parse_id(row.get("task"), "task id")?,
                            dependency: parse_id(row.get("dependency"), "dependency id")?,
                            state: parse_state(row.get("state"))?,
                            reason: row.get("reason"),
                            outputs: decode_outputs(row.get("outputs"))?,
                        });
                    }
                }
                Ok(found)
            }

            fn decode_outputs(
                blob: Option<Vec<u8>>,
            ) -> Result<Vec<rgrid_core::object::NamedObject>, StoreError> {
                blob.map_or(Ok(Vec::new()), |b| decode(&b, "task outputs"))
            }

            fn parse_state(state: String) -> Result<TaskState, StoreError> {
                TaskState::parse(&state).ok_or(StoreError::Corrupt {
                    what: "task state",
                    detail: state,
                })
            }

            fn node_from_row(row: &Row) -> Result<StoredNode, StoreError> {
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
                        finished: Vec::new(),
                        // Not stored: a recovered node has the head's timeout until it is heard.
                        disconnect_grace_ms: None,
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

            /// Applies a batch in one transaction on the writer's connection. Returns the
            /// inserted tasks that were known already (their insert did nothing).
            pub(crate) async fn commit(
                conn: &mut Conn,
                sql: &TaskSql,
                batch: &mut WriteBatch,
            ) -> Result<HashSet<TaskId>, sqlx::Error> {
                use sqlx::Connection as _;
                let mut tx = conn.begin().await?;
                let mut known: HashSet<TaskId> = HashSet::new();
                for (size, chunk) in chunks(&batch.inserts) {
                    let mut query = sqlx::query(&sql.insert[size]);
                    for row in chunk {
                        query = query
                            .bind(row.id.to_string())
                            .bind(&row.spec)
                            .bind(row.state.as_str())
                            .bind(to_i64(row.submitted_at_ms))
                            .bind(&row.submitted_by)
                            .bind(&row.cost_keys.shape)
                            .bind(&row.cost_keys.selector);
                    }
                    let new: HashSet<String> = query
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|r| r.get::<String, _>(0))
                        .collect();
                    known.extend(
                        chunk
                            .iter()
                            .filter(|row| !new.contains(&row.id.to_string()))
                            .map(|row| row.id),
                    );
                }
                batch.drop_tasks(&known);
                for (size, chunk) in chunks(&batch.edges) {
                    let mut query = sqlx::query(&sql.edges[size]);
                    for edge in chunk {
                        query = query
                            .bind(edge.task.to_string())
                            .bind(edge.dependency.to_string());
                    }
                    query.execute(&mut *tx).await?;
                }
                for (size, chunk) in chunks(&batch.attempts) {
                    let mut query = sqlx::query(&sql.attempts[size]);
                    for row in chunk {
                        query = query
                            .bind(row.task.to_string())
                            .bind(i64::from(row.attempt))
                            .bind(row.node.to_string())
                            .bind(&row.node_name)
                            .bind(to_i64(row.started_at_ms))
                            .bind(row.share)
                            .bind(row.hourly_price);
                    }
                    query.execute(&mut *tx).await?;
                }
                for row in &batch.attempt_ends {
                    sqlx::query(&sql.attempt_end)
                        .bind(to_i64(row.ended_at_ms))
                        .bind(&row.outcome)
                        .bind(row.task.to_string())
                        .bind(i64::from(row.attempt))
                        .execute(&mut *tx)
                        .await?;
                }
                for row in &batch.counters {
                    sqlx::query(&sql.counters)
                        .bind(i64::from(row.node_losses))
                        .bind(i64::from(row.failures))
                        .bind(row.task.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                for (size, chunk) in chunks(&batch.finishes) {
                    let mut query = sqlx::query(&sql.finishes[size]);
                    for row in chunk {
                        query = query
                            .bind(row.task.to_string())
                            .bind(row.state.as_str())
                            .bind(to_i64(row.finished_at_ms))
                            .bind(row.exit_code)
                            .bind(&row.reason)
                            .bind(row.stdout.inline())
                            .bind(row.stderr.inline())
                            .bind(row.stdout.hash())
                            .bind(row.stderr.hash())
                            .bind(i64::from(row.attempt))
                            .bind(row.node.map(|n| n.to_string()))
                            .bind(i64::from(row.node_losses))
                            .bind(i64::from(row.failures))
                            .bind((!row.outputs.is_empty()).then(|| encode(&row.outputs)));
                    }
                    query.execute(&mut *tx).await?;
                }
                for write in &batch.other {
                    apply(&mut tx, write).await?;
                }
                tx.commit().await?;
                Ok(known)
            }

            /// Consumes join token `id` and stores the node that joins with it, in one
            /// transaction: the token is used only if its secret matches and it is neither
            /// revoked nor expired, nor a single-use token used already. Of two concurrent joins
            /// with one single-use token, one updates the row and the other finds nothing to
            /// update. `false`: the token was refused and nothing was written.
            pub(crate) async fn join(
                pool: &Pool,
                id: &str,
                secret_hash: &str,
                now_ms: u64,
                node: &StoredNode,
            ) -> Result<Option<String>, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let used = sqlx::query(
                    "UPDATE join_tokens SET used = TRUE
                     WHERE id = $1 AND secret_hash = $2 AND revoked = FALSE
                       AND (expires_at_ms IS NULL OR expires_at_ms > $3)
                       AND (single_use = FALSE OR used = FALSE)",
                )
                .bind(id)
                .bind(secret_hash)
                .bind(to_i64(now_ms))
                .execute(&mut *tx)
                .await?;
                if used.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                // What the token decides of the node's identity: its name (when the token is
                // bound to one) and labels that override the node's own.
                let token = sqlx::query("SELECT labels, node_name FROM join_tokens WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let mut node = node.clone();
                if let Some(name) = token.get::<Option<String>, _>("node_name") {
                    node.name = name;
                }
                apply(&mut tx, &Write::UpsertNode(Box::new(node.clone()))).await?;
                sqlx::query("UPDATE nodes SET token_labels = $1 WHERE id = $2")
                    .bind(token.get::<Option<Vec<u8>>, _>("labels"))
                    .bind(node.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(node.name))
            }

            /// Applies writes outside the task path in one transaction of their own.
            pub(crate) async fn write(pool: &Pool, writes: &[Write]) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                for write in writes {
                    apply(&mut tx, write).await?;
                }
                tx.commit().await
            }

            async fn apply(
                tx: &mut sqlx::Transaction<'_, Db>,
                write: &Write,
            ) -> Result<(), sqlx::Error> {
                let conn = &mut **tx;
                match write {
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
                    Write::NodeHour { node, hour } => {
                        sqlx::query(
                            "INSERT INTO node_hours (node, start_ms, end_ms, price, used)
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node, start_ms) DO NOTHING",
                        )
                        .bind(node.to_string())
                        .bind(to_i64(hour.start_ms))
                        .bind(to_i64(hour.end_ms))
                        .bind(hour.price)
                        .bind(hour.used)
                        .execute(conn)
                        .await?;
                    }
                    Write::AmendHour { node, start_ms, extra } => {
                        sqlx::query(
                            "UPDATE node_hours SET price = price + $3 WHERE node = $1 AND start_ms = $2",
                        )
                        .bind(node.to_string())
                        .bind(to_i64(*start_ms))
                        .bind(*extra)
                        .execute(conn)
                        .await?;
                    }
                }
                Ok(())
            }
        }
    };
}

backend!(sqlite, sqlx::Sqlite, "BLOB", "REAL", "MIN", "MAX", true);
backend!(
    postgres,
    sqlx::Postgres,
    "BYTEA",
    "DOUBLE PRECISION",
    "LEAST",
    "GREATEST",
    false
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_number_placeholders_across_rows() {
        assert_eq!(rows("(?, 'q', ?)", 2, true), "($1, 'q', $2), ($3, 'q', $4)");
        assert_eq!(rows("(?, 'q', ?)", 2, false), "(?, 'q', ?), (?, 'q', ?)");
    }

    #[test]
    fn chunks_cover_every_item_with_few_statements() {
        let items: Vec<u32> = (0..2000).collect();
        let sizes: Vec<usize> = chunks(&items)
            .map(|(size, c)| {
                assert_eq!(c.len(), CHUNKS[size]);
                c.len()
            })
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 2000);
        assert_eq!(sizes, [1024, 256, 256, 256, 64, 64, 64, 16]);
        assert_eq!(chunks::<u32>(&[]).count(), 0);
    }
}

#[cfg(test)]
mod cost {
    use std::time::Duration;

    use rgrid_cloud::task_cost::{apply_amends, attempt_cost, held_cost, Ledger};
    use rgrid_core::protocol::{CostBy, CostQuery};
    use rgrid_core::{NodeId, TaskId, TaskState};

    use crate::store::{
        AttemptRow, CostKeys, Finish, NewTask, Output, RetryPolicy, Store, Write, WriteBatch,
    };

    const HOUR: u64 = 3_600_000;

    /// The cost query charges what `rgrid_cloud::task_cost` says — closed hours by share × time
    /// × price / used, the rest provisional at the hourly price — on SQLite.
    #[tokio::test]
    async fn the_query_applies_the_rule() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("head.db").display());
        applies_the_rule(&url).await;
    }

    /// The same on PostgreSQL, when `RGRID_TEST_POSTGRES_URL` (default: the server
    /// `scripts/setup.sh` makes) answers; skipped otherwise, except under `CI=true`.
    #[tokio::test]
    async fn the_query_applies_the_rule_on_postgres() {
        if let Some(url) = crate::store::test_postgres_database().await {
            applies_the_rule(&url).await;
        }
    }

    /// Writes three attempts and a node's closed hours through the store's own write path,
    /// and compares what the query says with the rule.
    async fn applies_the_rule(url: &str) {
        let tracker = tokio_util::task::TaskTracker::new();
        let store = Store::open(url, RetryPolicy::default(), &tracker)
            .await
            .expect("a store");
        let node = NodeId::new();
        let price = 2.0;
        // (share, start, end, shape): the last one ends in the third hour, still open.
        let runs = [
            (0.5, 600_000, 1_800_000, "a"),
            (0.25, 1_200_000, HOUR + 900_000, "b"),
            (1.0, 2 * HOUR + 60_000, 2 * HOUR + 120_000, "b"),
        ];
        let mut ledger = Ledger::new(0, price, Duration::from_secs(3600));
        let mut billed = Vec::new();
        let mut events: Vec<(u64, f64)> = runs
            .iter()
            .flat_map(|&(s, a, b, _)| [(a, s), (b, -s)])
            .collect();
        events.sort_by_key(|e| e.0);
        for (t, delta) in events {
            ledger.add_busy(t, delta, &mut billed);
        }
        ledger.advance(2 * HOUR + 200_000, &mut billed);
        let hours = apply_amends(&billed);
        assert_eq!(hours.len(), 2, "two hours closed");
        let mut batch = WriteBatch::default();
        let mut expected = Vec::new();
        for (i, &(share, start, end, shape)) in runs.iter().enumerate() {
            let task = TaskId::new();
            batch.inserts.push(NewTask {
                id: task,
                spec: vec![0],
                state: TaskState::Queued,
                submitted_at_ms: 0,
                submitted_by: None,
                cost_keys: CostKeys {
                    shape: shape.to_owned(),
                    ..CostKeys::default()
                },
            });
            batch.attempts.push(AttemptRow {
                task,
                attempt: 1,
                node,
                node_name: "n".into(),
                started_at_ms: start,
                share,
                hourly_price: Some(price),
            });
            batch.finishes.push(Finish {
                task,
                state: TaskState::Succeeded,
                finished_at_ms: end,
                exit_code: Some(0),
                reason: None,
                stdout: Output::Empty,
                stderr: Output::Empty,
                attempt: 1,
                node: Some(node),
                node_losses: 0,
                failures: 0,
                outputs: Vec::new(),
            });
            let open = if i == 2 {
                held_cost(share, end - start, price)
            } else {
                0.0
            };
            expected.push((task, attempt_cost(share, start, end, &hours) + open, open));
        }
        batch.other.extend(billed.iter().map(|b| match *b {
            rgrid_cloud::task_cost::Billed::Hour(hour) => Write::NodeHour { node, hour },
            rgrid_cloud::task_cost::Billed::Amend { start_ms, extra } => Write::AmendHour {
                node,
                start_ms,
                extra,
            },
        }));
        store
            .commit(batch)
            .await
            .expect("the writer")
            .expect("a commit");
        let query = |by, since_ms, task| CostQuery { since_ms, by, task };
        // "Now" is the end of the third hour, for `since`.
        let now = 3 * HOUR;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        for &(task, cost, open) in &expected {
            let got = store
                .cost(&query(CostBy::Total, None, Some(task)), now)
                .await
                .expect("a cost")
                .total;
            assert_eq!(got.tasks, 1);
            assert!(close(got.cost, cost), "{got:?} against {cost}");
            assert!(close(got.provisional, open), "{got:?} against {open}");
        }
        // The closed hours are paid in full: 2 hours at 2.0, plus the open part.
        let total = store
            .cost(&query(CostBy::Total, None, None), now)
            .await
            .expect("the total")
            .total;
        assert!(close(total.cost, 4.0 + expected[2].2), "{total:?}");
        assert_eq!(total.tasks, 3);
        let by_shape = store
            .cost(&query(CostBy::Shape, None, None), now)
            .await
            .expect("by shape");
        let keys: Vec<&str> = by_shape.groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys.len(), 2, "{by_shape:?}");
        let sum: f64 = by_shape.groups.iter().map(|g| g.cost).sum();
        assert!(close(sum, total.cost) && close(by_shape.total.cost, total.cost));
        // Since the middle of the second hour: only the attempts that ended after it.
        let recent = store
            .cost(&query(CostBy::Total, Some(2 * HOUR - 1), None), now)
            .await
            .expect("recent");
        assert_eq!(recent.total.tasks, 2, "{recent:?}");
        // A node whose clock is behind the head's reports an end before the start: no time,
        // no cost, never a negative one.
        let skewed = TaskId::new();
        let mut batch = WriteBatch::default();
        batch.inserts.push(NewTask {
            id: skewed,
            spec: vec![0],
            state: TaskState::Queued,
            submitted_at_ms: 0,
            submitted_by: None,
            cost_keys: CostKeys::default(),
        });
        batch.attempts.push(AttemptRow {
            task: skewed,
            attempt: 1,
            node,
            node_name: "n".into(),
            started_at_ms: 1_000_000,
            share: 1.0,
            hourly_price: Some(price),
        });
        batch.finishes.push(Finish {
            task: skewed,
            state: TaskState::Succeeded,
            finished_at_ms: 900_000,
            exit_code: Some(0),
            reason: None,
            stdout: Output::Empty,
            stderr: Output::Empty,
            attempt: 1,
            node: Some(node),
            node_losses: 0,
            failures: 0,
            outputs: Vec::new(),
        });
        store
            .commit(batch)
            .await
            .expect("the writer")
            .expect("a commit");
        let got = store
            .cost(&query(CostBy::Total, None, Some(skewed)), now)
            .await
            .expect("a cost")
            .total;
        assert_eq!(
            (got.tasks, got.cost, got.node_seconds),
            (1, 0.0, 0.0),
            "{got:?}"
        );
    }
}

#[cfg(test)]
mod plans {
    use sqlx::Row as _;

    use super::TaskSql;

    /// The task path's statements look tasks up by id (SQLite's plans, with many open tasks):
    /// none scans the task table or its index of open tasks, which would make every commit
    /// cost as much as the queue is long.
    #[tokio::test]
    async fn task_statements_look_up_by_id() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .expect("migrations");
        let mut tx = pool.begin().await.expect("a transaction");
        for i in 0..20_000 {
            sqlx::query("INSERT INTO tasks (id, spec, state, submitted_at_ms) VALUES ($1, X'00', 'queued', 0)")
                .bind(format!("{i:036}"))
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        tx.commit().await.expect("commit");
        let sql = TaskSql::new("BLOB", "REAL", true);
        let single = |s: &String| vec![s.clone()];
        for (what, statements, width) in [
            ("insert", sql.insert.clone(), 7),
            ("edges", sql.edges.clone(), 2),
            ("attempts", sql.attempts.clone(), 7),
            ("finishes", sql.finishes.clone(), 14),
            ("attempt end", single(&sql.attempt_end), 4),
            ("counters", single(&sql.counters), 3),
        ] {
            for (statement, rows) in statements.iter().zip(super::CHUNKS) {
                let rows = if statements.len() == 1 { 1 } else { rows };
                let explain = format!("EXPLAIN QUERY PLAN {statement}");
                let mut plan = sqlx::query::<sqlx::Sqlite>(&explain).persistent(false);
                for _ in 0..rows * width {
                    plan = plan.bind(1i64);
                }
                let steps: Vec<String> = plan
                    .fetch_all(&pool)
                    .await
                    .expect("a plan")
                    .iter()
                    .map(|r| r.get::<String, _>("detail"))
                    .collect();
                for step in &steps {
                    assert!(
                        !(step.starts_with("SCAN t")
                            || step.contains("SCAN tasks")
                            || step.contains("SCAN attempts")),
                        "{what} ({rows} rows) scans: {steps:?}"
                    );
                }
            }
        }
    }
}
