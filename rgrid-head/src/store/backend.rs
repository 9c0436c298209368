//! The SQL of the store, written once and compiled for each backend (SQLite, PostgreSQL): the
//! queries use `$N` placeholders and types both backends share (TEXT, 64-bit integers, bytes,
//! booleans); each backend has its own migrations.

/// One module per backend with the same functions over that backend's pool.
macro_rules! backend {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use rgrid_core::protocol::AttemptInfo;
            use rgrid_core::{NodeId, TaskId, TaskState};
            use sqlx::Row as _;

            use crate::store::{
                decode, encode, parse_id, to_i64, to_u32, to_u64, Batch, StoreError, StoredNode,
                StoredTask, StoredToken, Write,
            };

            type Db = $db;
            pub(crate) type Pool = sqlx::Pool<Db>;
            type Row = <Db as sqlx::Database>::Row;

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

            /// Every task that has not reached a terminal state, in submission order.
            pub(crate) async fn open_tasks(pool: &Pool) -> Result<Vec<StoredTask>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM tasks
                     WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'unschedulable', 'lost')
                     ORDER BY submitted_at_ms, id",
                )
                .fetch_all(pool)
                .await?;
                let mut tasks = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut task = task_from_row(&row)?;
                    task.attempts = attempts(pool, task.spec.id).await?;
                    tasks.push(task);
                }
                Ok(tasks)
            }

            /// One task, whatever its state.
            pub(crate) async fn task(pool: &Pool, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
                let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let mut task = task_from_row(&row)?;
                task.attempts = attempts(pool, id).await?;
                Ok(Some(task))
            }

            async fn attempts(pool: &Pool, task: TaskId) -> Result<Vec<AttemptInfo>, StoreError> {
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


            fn task_from_row(row: &Row) -> Result<StoredTask, StoreError> {
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


            pub(crate) async fn commit(pool: &Pool, batches: &[Batch]) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                for write in batches.iter().flat_map(|b| &b.writes) {
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
                        node_losses,
                        failures,
                    } => {
                        sqlx::query(
                            "UPDATE tasks SET state = $2, finished_at_ms = $3, exit_code = $4, reason = $5,
                             stdout_hash = $6, stderr_hash = $7, node_losses = $8, failures = $9
                             WHERE id = $1",
                        )
                        .bind(task.to_string())
                        .bind(state.as_str())
                        .bind(to_i64(*finished_at_ms))
                        .bind(exit_code)
                        .bind(reason)
                        .bind(stdout_hash)
                        .bind(stderr_hash)
                        .bind(i64::from(*node_losses))
                        .bind(i64::from(*failures))
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

backend!(sqlite, sqlx::Sqlite);
backend!(postgres, sqlx::Postgres);
