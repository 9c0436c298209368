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
/// 1,024 rows and at most three of each smaller size. (The widest row, a finish, has 13
/// placeholders: 13,312 a statement, under SQLite's 32,766 and PostgreSQL's 65,535.)
pub(super) const CHUNKS: [usize; 6] = [1024, 256, 64, 16, 4, 1];

/// The states of a finished task, as the guards of every task update spell them (and as the
/// partial index `tasks_open_id` does, so that the recovery query can use it).
const OPEN: &str = "state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost')";

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

/// The statement texts of the task path for one backend (`blob` is its bytes type; `numbered`
/// its placeholders are `$N`, else `?`), one per kind and chunk size.
pub(super) struct TaskSql {
    pub insert: Vec<String>,
    pub attempts: Vec<String>,
    pub attempt_ends: Vec<String>,
    pub counters: Vec<String>,
    pub finishes: Vec<String>,
}

impl TaskSql {
    pub(super) fn new(blob: &str, numbered: bool) -> Self {
        let rows = |row: &str, n: usize| rows(row, n, numbered);
        let per_chunk = |make: &dyn Fn(usize) -> String| CHUNKS.iter().map(|&n| make(n)).collect();
        Self {
            insert: per_chunk(&|n| {
                format!(
                    "INSERT INTO tasks (id, spec, state, submitted_at_ms) VALUES {}
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                    rows("(?, ?, 'queued', ?)", n)
                )
            }),
            attempts: per_chunk(&|n| {
                format!(
                    "INSERT INTO attempts (task, attempt, node, node_name, started_at_ms)
                     SELECT v.column1, v.column2, v.column3, v.column4, v.column5
                     FROM (VALUES {}) AS v JOIN tasks t ON t.id = v.column1
                     WHERE t.{OPEN}
                     ON CONFLICT (task, attempt) DO NOTHING",
                    rows(
                        "(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT))",
                        n
                    )
                )
            }),
            attempt_ends: per_chunk(&|n| {
                format!(
                    "UPDATE attempts SET ended_at_ms = v.column3, outcome = v.column4
                     FROM (VALUES {}) AS v
                     WHERE attempts.task = v.column1 AND attempts.attempt = v.column2
                       AND attempts.ended_at_ms IS NULL",
                    rows(
                        "(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT))",
                        n
                    )
                )
            }),
            counters: per_chunk(&|n| {
                format!(
                    "UPDATE tasks SET node_losses = v.column2, failures = v.column3
                     FROM (VALUES {}) AS v WHERE tasks.id = v.column1 AND tasks.{OPEN}",
                    rows("(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT))", n)
                )
            }),
            finishes: per_chunk(&|n| {
                format!(
                    "UPDATE tasks SET state = v.column2, finished_at_ms = v.column3,
                       exit_code = v.column4, reason = v.column5, stdout = v.column6,
                       stderr = v.column7, stdout_hash = v.column8, stderr_hash = v.column9,
                       attempt = v.column10, node = v.column11, node_losses = v.column12,
                       failures = v.column13
                     FROM (VALUES {}) AS v WHERE tasks.id = v.column1 AND tasks.{OPEN}",
                    rows(
                        &format!(
                            "(CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), \
                             CAST(? AS TEXT), CAST(? AS {blob}), CAST(? AS {blob}), CAST(? AS TEXT), \
                             CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS BIGINT), \
                             CAST(? AS BIGINT))"
                        ),
                        n
                    )
                )
            }),
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
    ($name:ident, $db:ty, $blob:literal, $numbered:literal) => {
        pub(crate) mod $name {
            use std::collections::HashSet;

            use rgrid_core::protocol::AttemptInfo;
            use rgrid_core::{NodeId, TaskId, TaskState};
            use sqlx::Row as _;

            use super::{chunks, TaskSql, OPEN};
            use crate::store::batch::{Output, Write, WriteBatch};
            use crate::store::{
                decode, encode, parse_id, to_i64, to_u32, to_u64, LatestAttempt, ListedTask,
                RecoveredTask, StoreError, StoredNode, StoredTask, StoredToken,
            };

            type Db = $db;
            pub(crate) type Pool = sqlx::Pool<Db>;
            pub(crate) type Conn = sqlx::pool::PoolConnection<Db>;
            type Row = <Db as sqlx::Database>::Row;

            pub(crate) fn task_sql() -> TaskSql {
                TaskSql::new($blob, $numbered)
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
            pub(crate) async fn node_exists(pool: &Pool, id: NodeId) -> Result<bool, StoreError> {
                let row = sqlx::query("SELECT 1 FROM nodes WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await?;
                Ok(row.is_some())
            }

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
                           t.reason, t.stdout, t.stderr, t.stdout_hash, t.stderr_hash,
                           a.node AS a_node, a.node_name AS a_node_name,
                           a.started_at_ms AS a_started, a.ended_at_ms AS a_ended,
                           a.outcome AS a_outcome
                         FROM tasks t LEFT JOIN attempts a ON a.task = t.id AND a.attempt = t.attempt
                         WHERE t.id IN ({})",
                        super::rows("?", super::CHUNKS[size], $numbered)
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
                            .bind(to_i64(row.submitted_at_ms));
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
                for (size, chunk) in chunks(&batch.attempts) {
                    let mut query = sqlx::query(&sql.attempts[size]);
                    for row in chunk {
                        query = query
                            .bind(row.task.to_string())
                            .bind(i64::from(row.attempt))
                            .bind(row.node.to_string())
                            .bind(&row.node_name)
                            .bind(to_i64(row.started_at_ms));
                    }
                    query.execute(&mut *tx).await?;
                }
                for (size, chunk) in chunks(&batch.attempt_ends) {
                    let mut query = sqlx::query(&sql.attempt_ends[size]);
                    for row in chunk {
                        query = query
                            .bind(row.task.to_string())
                            .bind(i64::from(row.attempt))
                            .bind(to_i64(row.ended_at_ms))
                            .bind(&row.outcome);
                    }
                    query.execute(&mut *tx).await?;
                }
                for (size, chunk) in chunks(&batch.counters) {
                    let mut query = sqlx::query(&sql.counters[size]);
                    for row in chunk {
                        query = query
                            .bind(row.task.to_string())
                            .bind(i64::from(row.node_losses))
                            .bind(i64::from(row.failures));
                    }
                    query.execute(&mut *tx).await?;
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
                            .bind(i64::from(row.failures));
                    }
                    query.execute(&mut *tx).await?;
                }
                for write in &batch.other {
                    apply(&mut tx, write).await?;
                }
                tx.commit().await?;
                Ok(known)
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
                    Write::UseToken { id } => {
                        sqlx::query("UPDATE join_tokens SET used = TRUE WHERE id = $1")
                            .bind(id)
                            .execute(conn)
                            .await?;
                    }
                }
                Ok(())
            }
        }
    };
}

backend!(sqlite, sqlx::Sqlite, "BLOB", false);
backend!(postgres, sqlx::Postgres, "BYTEA", true);

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
