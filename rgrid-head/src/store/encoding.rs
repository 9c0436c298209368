//! The encoding of the task specs the store keeps, versioned apart from the wire.
//!
//! A stored spec is the postcard encoding of a [`TaskSpec`], the bytes a node is sent; postcard
//! is not self-describing, so bytes written by an older head decode only as the shape that
//! head wrote. The database records which version its blobs are (`store_meta`,
//! `task_spec_encoding`, migration 0014); [`upgrade`] converts every blob of an older version
//! once, when the head opens the database, in one transaction, so that everything after
//! (recovery's paged reads, listings, assignments) decodes the current shape only, with no
//! check per row. A database of a newer version than this head knows is refused.
//!
//! Versions:
//! - 2: written before the version was recorded: the protocol 2 spec ([`TaskSpecV2`], no
//!   `inputs`), or the protocol 3 one. The head did not record which, so each blob is read as
//!   version 3 first (an exact decode: a version 2 blob is one field short of it).
//! - 3: the protocol 3 spec, with `inputs` ([`TaskSpecV3`]).
//! - 4: the protocol 4 spec, with `outputs` (and inputs that may name other tasks' outputs: an
//!   enum variant appended, so version 3's inputs decode as they are). Current.
//!
//! Adding version 5 (say, `TaskSpec` gains a field):
//! 1. replace the alias [`TaskSpecV4`] with a copy of `TaskSpec` as it is before the change
//!    (the shape version 4 wrote; freeze a nested type too when it changes other than by an
//!    appended enum variant), with `From<TaskSpecV4> for TaskSpec`;
//! 2. in [`convert`], decode version 4 blobs as `TaskSpecV4` and take every older one through
//!    it to the new `TaskSpec`;
//! 3. bump [`CURRENT`] to 5, and add a test blob of version 4 to the tests below.

use rgrid_core::task::{Constraints, Input, NetworkMode, RetryPolicy, Strategy};
use rgrid_core::{Resources, TaskId, TaskSpec};
use serde::Deserialize;

use super::{Pool, StoreError};

/// The version this head writes.
pub(crate) const CURRENT: i64 = 4;

/// The key of the version in `store_meta`.
const KEY: &str = "task_spec_encoding";

/// Rows converted per query.
const PAGE: i64 = 1000;

/// The shape version 4 writes: today's [`TaskSpec`].
pub(crate) type TaskSpecV4 = TaskSpec;

/// The protocol 3 spec: the shape before `outputs` (field order is the encoding).
#[derive(Deserialize)]
pub(crate) struct TaskSpecV3 {
    id: TaskId,
    image: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    resources: Resources,
    constraints: Constraints,
    strategy: Strategy,
    timeout_ms: Option<u64>,
    retry: RetryPolicy,
    network: NetworkMode,
    priority: i32,
    read_only_rootfs: bool,
    inputs: Vec<Input>,
}

impl From<TaskSpecV3> for TaskSpecV4 {
    fn from(old: TaskSpecV3) -> Self {
        Self {
            id: old.id,
            image: old.image,
            command: old.command,
            env: old.env,
            workdir: old.workdir,
            resources: old.resources,
            constraints: old.constraints,
            strategy: old.strategy,
            timeout_ms: old.timeout_ms,
            retry: old.retry,
            network: old.network,
            priority: old.priority,
            read_only_rootfs: old.read_only_rootfs,
            inputs: old.inputs,
            outputs: Vec::new(),
        }
    }
}

/// The protocol 2 spec: the shape before `inputs` (field order is the encoding).
#[derive(Deserialize)]
pub(crate) struct TaskSpecV2 {
    id: TaskId,
    image: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    resources: Resources,
    constraints: Constraints,
    strategy: Strategy,
    timeout_ms: Option<u64>,
    retry: RetryPolicy,
    network: NetworkMode,
    priority: i32,
    read_only_rootfs: bool,
}

impl From<TaskSpecV2> for TaskSpecV3 {
    fn from(old: TaskSpecV2) -> Self {
        Self {
            id: old.id,
            image: old.image,
            command: old.command,
            env: old.env,
            workdir: old.workdir,
            resources: old.resources,
            constraints: old.constraints,
            strategy: old.strategy,
            timeout_ms: old.timeout_ms,
            retry: old.retry,
            network: old.network,
            priority: old.priority,
            read_only_rootfs: old.read_only_rootfs,
            inputs: Vec::new(),
        }
    }
}

fn exact<T: serde::de::DeserializeOwned>(blob: &[u8]) -> Result<T, StoreError> {
    rgrid_core::frame::decode(blob).map_err(|e| StoreError::Corrupt {
        what: "task spec",
        detail: e.to_string(),
    })
}

/// A blob of `version` as one of [`CURRENT`]: `None` when its bytes stay the same.
pub(crate) fn convert(version: i64, blob: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let v3 = match version {
        CURRENT => return Ok(None),
        // Either shape: the protocol 3 one is an exact decode, a protocol 2 blob is one field
        // short of it.
        2 => match exact::<TaskSpecV3>(blob) {
            Ok(v3) => v3,
            Err(_) => exact::<TaskSpecV2>(blob)?.into(),
        },
        3 => exact::<TaskSpecV3>(blob)?,
        _ => {
            return Err(StoreError::Corrupt {
                what: "task spec encoding",
                detail: format!("no conversion from version {version}"),
            })
        }
    };
    Ok(Some(super::encode(&TaskSpecV4::from(v3))))
}

/// Brings the database's task specs to [`CURRENT`] (once: nothing to do when they are).
pub(crate) async fn upgrade(pool: &Pool) -> Result<(), StoreError> {
    let (from, converted) = match pool {
        Pool::Sqlite(pool) => sqlite::upgrade(pool).await?,
        Pool::Postgres(pool) => postgres::upgrade(pool).await?,
    };
    if from != CURRENT {
        tracing::info!(
            from,
            to = CURRENT,
            converted,
            "stored task specs converted to the current encoding"
        );
    }
    Ok(())
}

/// One module per backend with the same functions over that backend's pool.
macro_rules! encoding {
    ($name:ident, $db:ty) => {
        pub(crate) mod $name {
            use sqlx::Row as _;

            use super::{convert, CURRENT, KEY, PAGE};
            use crate::store::StoreError;

            /// Converts every spec of an older version in one transaction; returns the
            /// version found and how many blobs changed.
            pub(crate) async fn upgrade(pool: &sqlx::Pool<$db>) -> Result<(i64, u64), StoreError> {
                let mut tx = pool.begin().await?;
                let version: i64 = sqlx::query("SELECT value FROM store_meta WHERE key = $1")
                    .bind(KEY)
                    .fetch_one(&mut *tx)
                    .await?
                    .get("value");
                if version > CURRENT {
                    return Err(StoreError::Corrupt {
                        what: "task spec encoding",
                        detail: format!(
                            "the database's task specs are version {version}, written by a newer head; this head reads up to version {CURRENT}: run the newer head"
                        ),
                    });
                }
                if version == CURRENT {
                    return Ok((version, 0));
                }
                let mut converted = 0;
                let mut after = String::new();
                loop {
                    let rows = sqlx::query(
                        "SELECT id, spec FROM tasks WHERE id > $1 ORDER BY id LIMIT $2",
                    )
                    .bind(&after)
                    .bind(PAGE)
                    .fetch_all(&mut *tx)
                    .await?;
                    let Some(last) = rows.last() else { break };
                    after = last.get("id");
                    for row in &rows {
                        let id: String = row.get("id");
                        let spec: Vec<u8> = row.get("spec");
                        let new = convert(version, &spec).map_err(|e| StoreError::Corrupt {
                            what: "task spec",
                            detail: format!("task {id}: {e}"),
                        })?;
                        if let Some(new) = new {
                            sqlx::query("UPDATE tasks SET spec = $1 WHERE id = $2")
                                .bind(new)
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            converted += 1;
                        }
                    }
                }
                sqlx::query("UPDATE store_meta SET value = $1 WHERE key = $2")
                    .bind(CURRENT)
                    .bind(KEY)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok((version, converted))
            }
        }
    };
}

encoding!(sqlite, sqlx::Sqlite);
encoding!(postgres, sqlx::Postgres);

#[cfg(test)]
mod tests {
    use rgrid_core::{ObjectRef, TaskId, TaskState};
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::store::{decode_spec, encode, RetryPolicy, Store};

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-schema-0003.db"
    );

    async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open(url, RetryPolicy::default(), &TaskTracker::new()).await
    }

    /// A version 3 blob: the protocol 3 spec is today's without its last field, `outputs`
    /// (an empty list is one zero byte).
    fn v3_blob(spec: &TaskSpec) -> Vec<u8> {
        assert!(spec.outputs.is_empty());
        let mut blob = encode(spec);
        assert_eq!(blob.pop(), Some(0));
        blob
    }

    /// A version 2 blob: the protocol 2 spec is version 3's without its last field, `inputs`.
    fn v2_blob(spec: &TaskSpec) -> Vec<u8> {
        assert!(spec.inputs.is_empty());
        let mut blob = v3_blob(spec);
        assert_eq!(blob.pop(), Some(0));
        blob
    }

    #[test]
    fn older_blobs_convert() {
        let spec = TaskSpec::new("img").command(["echo", "hi"]).priority(3);
        let converted = convert(2, &v2_blob(&spec))
            .expect("a protocol 2 spec converts")
            .expect("its bytes change");
        assert_eq!(decode_spec(&converted).expect("decodes"), spec);
        // A protocol 3 spec, written before the version was recorded or after.
        let with_input = spec.input("/in", ObjectRef::of(b"x"));
        for version in [2, 3] {
            let converted = convert(version, &v3_blob(&with_input))
                .expect("a protocol 3 spec converts")
                .expect("its bytes change");
            assert_eq!(decode_spec(&converted).expect("decodes"), with_input);
        }
        let current = with_input.output("out", "/out");
        assert_eq!(convert(CURRENT, &encode(&current)).expect("converts"), None);
        // Neither shape: an error that names it, nothing guessed.
        let err = convert(2, &[1, 2, 3]).expect_err("garbage");
        assert!(err.to_string().contains("task spec"), "{err}");
    }

    /// A database a head of schema 0003 (protocol 2: specs without inputs) wrote, made once
    /// with that schema's migrations and old-shape specs: the current head migrates it,
    /// converts its specs, recovers its open tasks and reads its finished one.
    #[tokio::test]
    async fn a_database_of_schema_0003_opens_and_its_tasks_decode() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("rgrid.db");
        std::fs::copy(FIXTURE, &path).expect("the fixture is copied");
        let url = format!("sqlite://{}", path.display());
        for _ in 0..2 {
            // Twice: the second open finds the current version and converts nothing.
            let store = open(&url).await.expect("the old database opens");
            let open_tasks = store.recover_page(None, 10).await.expect("recovers");
            assert_eq!(open_tasks.len(), 2, "the queued and the running task");
            let queued = decode_spec(&open_tasks[0].spec).expect("a converted spec decodes");
            assert_eq!(queued.image, "rgrid-busybox:latest");
            assert_eq!(queued.command, ["echo", "a"]);
            assert_eq!(queued.env, [("K".to_owned(), "V".to_owned())]);
            assert_eq!(queued.constraints.selector[0].to_string(), "site=eu-1");
            assert_eq!(queued.priority, 5);
            assert!(queued.read_only_rootfs && queued.inputs.is_empty());
            assert_eq!(queued.id, open_tasks[0].id);
            let running = decode_spec(&open_tasks[1].spec).expect("decodes");
            assert_eq!((running.priority, running.retry.node_loss), (-1, 2));
            assert_eq!(open_tasks[1].latest.map(|a| a.attempt), Some(1));
            let done: TaskId = "01900000-0000-7000-8000-00000000000c"
                .parse()
                .expect("an id");
            let finished = store.task(done).await.expect("reads").expect("stored");
            assert_eq!(finished.state, TaskState::Succeeded);
            assert_eq!(
                decode_spec(&finished.spec).expect("decodes").command,
                ["echo", "c"]
            );
            assert_eq!(store.nodes().await.expect("nodes").len(), 1);
        }
    }

    /// The same conversion on PostgreSQL: a version 2 row next to a protocol 3 one.
    #[tokio::test]
    async fn version_2_rows_convert_on_postgres() {
        let Some(url) = crate::store::test_postgres_database().await else {
            return;
        };
        let store = open(&url).await.expect("a store");
        let Pool::Postgres(pool) = &store.pool else {
            panic!("a PostgreSQL store");
        };
        let old = TaskSpec::new("old").command(["a"]);
        let new = TaskSpec::new("new").input("/in", ObjectRef::of(b"x"));
        for (spec, blob) in [(&old, v2_blob(&old)), (&new, v3_blob(&new))] {
            sqlx::query(
                "INSERT INTO tasks (id, spec, state, submitted_at_ms) VALUES ($1, $2, 'queued', 1)",
            )
            .bind(spec.id.to_string())
            .bind(blob)
            .execute(pool)
            .await
            .expect("a row of the old encoding");
        }
        sqlx::query("UPDATE store_meta SET value = 2 WHERE key = 'task_spec_encoding'")
            .execute(pool)
            .await
            .expect("the version goes back");
        let store = open(&url).await.expect("reopens");
        let mut specs: Vec<TaskSpec> = store
            .recover_page(None, 10)
            .await
            .expect("recovers")
            .iter()
            .map(|t| decode_spec(&t.spec).expect("decodes"))
            .collect();
        specs.sort_by_key(|s| s.image.clone());
        assert_eq!(specs, [new, old]);
    }

    /// A database a newer head wrote is refused with a message that says so, and left as it is.
    #[tokio::test]
    async fn a_newer_encoding_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("rgrid.db").display());
        let store = open(&url).await.expect("a store");
        let Pool::Sqlite(pool) = &store.pool else {
            panic!("a SQLite store");
        };
        sqlx::query("UPDATE store_meta SET value = 99 WHERE key = 'task_spec_encoding'")
            .execute(pool)
            .await
            .expect("a version from the future");
        let err = open(&url).await.err().expect("refused");
        assert!(err.to_string().contains("newer head"), "{err}");
        let version: i64 =
            sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'task_spec_encoding'")
                .fetch_one(pool)
                .await
                .expect("reads");
        assert_eq!(version, 99);
    }
}
