//! The head's objects: immutable blobs named by SHA-256, kept through the `object_store` crate
//! in a directory under the state dir (default) or an S3-compatible bucket (`[objects] url`),
//! under the name `PREFIX/HEX`.
//!
//! [`Objects`] owns the index of what is stored (hash → size, last use, pinned), loaded from the
//! store's listing (and the database's pins) at start: it answers listings, enforces the quota
//! (`max_object_bytes`, counting uploads in progress) and drives retention: an object that no
//! open task needs ([`TaskHolds`], counted by the loop) and no client pinned is deleted once
//! unused for `object_retention`. An upload is written to the store only after its last byte was verified against
//! its name: a mismatched or oversize upload leaves nothing behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{GetResultPayload, ObjectStore, PutPayload, WriteMultipart};
use rgrid_core::object::{
    Incoming, ObjectInfo, ObjectPage, ObjectQuery, ObjectRef, TransferError, MAX_PAGE_OBJECTS,
};
use rgrid_core::resources::format_size;
use rgrid_core::task::{InputSource, TaskSpec};
use rgrid_core::time::unix_ms;
use tokio::io::AsyncRead;

use crate::config::ObjectsConfig;
use crate::store::{Store, StoreError};

/// Uploads up to this size are verified in memory and stored with one write; larger ones go
/// through a multipart upload in parts of this size (S3's minimum part is 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// Parts of one upload in flight to the store at once: with [`PART_BYTES`], what one upload
/// may hold in memory.
const PARTS_IN_FLIGHT: usize = 2;

/// Uploads received at once; more wait (their bytes wait in QUIC's flow control). With
/// [`PART_BYTES`] and [`PARTS_IN_FLIGHT`], this bounds what uploads hold in memory: at most
/// `16 × 3 × 8 MiB`.
const CONCURRENT_UPLOADS: usize = 16;

/// Why the object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("object store {url}: {source}")]
    Open {
        url: String,
        source: object_store::Error,
    },
    #[error("object store {url}: cannot list what it holds: {source}")]
    List {
        url: String,
        source: object_store::Error,
    },
    #[error("object store directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// Why an upload or a download failed; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferFailed {
    #[error("storing {size} more bytes would take the objects past their quota: {stored} stored and {reserved} being uploaded of max_object_bytes = {quota}; delete objects (or wait for retention) or raise [objects] max_object_bytes", size = format_size(*.size), stored = format_size(*.stored), reserved = format_size(*.reserved), quota = format_size(*.quota))]
    Quota {
        size: u64,
        stored: u64,
        reserved: u64,
        quota: u64,
    },
    #[error("upload refused, nothing stored: {0}")]
    Received(#[from] TransferError),
    #[error("no object {0}: it was never uploaded, or retention deleted it")]
    NotFound(ObjectRef),
    #[error("the object store failed: {0}")]
    Store(#[from] object_store::Error),
    #[error("cannot record the pin: {0}")]
    Pin(#[from] StoreError),
}

/// One stored object in the index.
#[derive(Clone, Copy, Debug)]
struct Entry {
    size: u64,
    used_at_ms: u64,
}

/// What is stored, and what is being uploaded.
#[derive(Debug, Default)]
struct Index {
    objects: BTreeMap<[u8; 32], Entry>,
    /// Sum of the sizes in `objects`.
    stored: u64,
    /// Sum of the sizes of uploads in progress.
    reserved: u64,
    /// Objects a client pinned (durable in the database).
    pinned: HashSet<[u8; 32]>,
}

impl Index {
    /// Adds a stored object (in place of the same one stored meanwhile).
    fn insert(&mut self, sha256: [u8; 32], entry: Entry) {
        if let Some(old) = self.objects.insert(sha256, entry) {
            self.stored = self.stored.saturating_sub(old.size);
        }
        self.stored += entry.size;
        crate::metrics::objects_stored(self.objects.len(), self.stored);
    }

    fn remove(&mut self, sha256: &[u8; 32]) {
        if let Some(old) = self.objects.remove(sha256) {
            self.stored = self.stored.saturating_sub(old.size);
            crate::metrics::objects_stored(self.objects.len(), self.stored);
        }
    }
}

/// Per object, how many open tasks need it: retention keeps those. The loop, which knows what
/// each open task holds (its object inputs, and the outputs of the dependencies it waits with),
/// takes and gives back the counts; retention only reads them. Held in memory only: a restarted
/// loop counts its open tasks again.
#[derive(Debug, Default)]
pub(crate) struct TaskHolds(Mutex<HashMap<[u8; 32], u32>>);

impl TaskHolds {
    pub(crate) fn hold(&self, objects: &[ObjectRef]) {
        let mut counts = lock(&self.0);
        for object in objects {
            *counts.entry(object.sha256).or_default() += 1;
        }
    }

    pub(crate) fn release(&self, objects: &[ObjectRef]) {
        let mut counts = lock(&self.0);
        for object in objects {
            if let std::collections::hash_map::Entry::Occupied(mut count) =
                counts.entry(object.sha256)
            {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
    }

    pub(crate) fn count(&self, sha256: &[u8; 32]) -> u32 {
        lock(&self.0).get(sha256).copied().unwrap_or(0)
    }
}

/// The head's objects (see the module docs).
pub(crate) struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// Set for the local directory: what to fsync so a stored object survives a power loss.
    local_dir: Option<std::path::PathBuf>,
    quota: u64,
    index: Mutex<Index>,
    holds: Arc<TaskHolds>,
    /// Permits for uploads being received ([`CONCURRENT_UPLOADS`]).
    uploads: tokio::sync::Semaphore,
}

/// Room taken in the quota by an upload in progress; given back when dropped.
pub(crate) struct Reservation<'a> {
    objects: &'a Objects,
    object: ObjectRef,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut index = lock(&self.objects.index);
        index.reserved = index.reserved.saturating_sub(self.object.size);
    }
}

impl Objects {
    /// Opens the configured store and reads its index from the store's listing; `pinned` are
    /// the pins the database holds.
    pub(crate) async fn open(
        config: &ObjectsConfig,
        state_dir: &Path,
        pinned: Vec<ObjectRef>,
    ) -> Result<Self, ObjectsError> {
        let quota = config.max_object_bytes()?;
        let (store, prefix, local_dir, url): (Arc<dyn ObjectStore>, _, _, _) = match &config.url {
            Some(url) => {
                let (bucket, prefix) = ObjectsConfig::parse_s3_url(url)
                    .map_err(crate::config::ConfigError::Invalid)?;
                // Credentials, region and endpoint from the environment only (AWS_*).
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|source| ObjectsError::Open {
                        url: url.clone(),
                        source,
                    })?;
                (Arc::new(store), StorePath::from(prefix), None, url.clone())
            }
            None => {
                let dir = state_dir.join("objects");
                std::fs::create_dir_all(&dir).map_err(|source| ObjectsError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
                let url = dir.display().to_string();
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(
                    |source| ObjectsError::Open {
                        url: url.clone(),
                        source,
                    },
                )?;
                (Arc::new(store), StorePath::default(), Some(dir), url)
            }
        };
        let mut index = Index::default();
        let mut listing = store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|source| ObjectsError::List {
                url: url.clone(),
                source,
            })?;
            let name = meta.location.filename().unwrap_or_default();
            let Some(sha256) = ObjectRef::parse_hex(name) else {
                tracing::debug!(location = %meta.location, "not an object; ignored");
                continue;
            };
            index.insert(
                sha256,
                Entry {
                    size: meta.size,
                    used_at_ms: u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
                },
            );
        }
        drop(listing);
        index.pinned = pinned.into_iter().map(|object| object.sha256).collect();
        tracing::info!(store = %url, objects = index.objects.len(), bytes = index.stored, pinned = index.pinned.len(), "object store opened");
        Ok(Self {
            store,
            prefix,
            local_dir,
            quota,
            index: Mutex::new(index),
            holds: Arc::default(),
            uploads: tokio::sync::Semaphore::new(CONCURRENT_UPLOADS),
        })
    }

    /// The counts the loop keeps of what open tasks need.
    pub(crate) fn task_holds(&self) -> Arc<TaskHolds> {
        self.holds.clone()
    }

    /// Whether retention may delete a stored object.
    fn keeps(&self, index: &Index, sha256: &[u8; 32]) -> bool {
        index.pinned.contains(sha256) || self.holds.count(sha256) > 0
    }

    /// Pins a stored object (`pinned`) or unpins it, durably in `store` before it answers. An
    /// unpinned object is unused from now on (retention counts from the unpin).
    pub(crate) async fn pin(
        &self,
        object: ObjectRef,
        pinned: bool,
        by: &str,
        store: &Store,
    ) -> Result<(), TransferFailed> {
        if !pinned {
            store.unpin_object(&object).await?;
            let mut index = lock(&self.index);
            index.pinned.remove(&object.sha256);
            if let Some(entry) = index.objects.get_mut(&object.sha256) {
                entry.used_at_ms = unix_ms();
            }
            return Ok(());
        }
        // Marked first, so that retention cannot delete it while the pin is written.
        let newly = {
            let mut index = lock(&self.index);
            match index.objects.get(&object.sha256) {
                Some(entry) if entry.size == object.size => {}
                _ => return Err(TransferFailed::NotFound(object)),
            }
            index.pinned.insert(object.sha256)
        };
        if let Err(err) = store.pin_object(&object, by, unix_ms()).await {
            if newly {
                lock(&self.index).pinned.remove(&object.sha256);
            }
            return Err(err.into());
        }
        Ok(())
    }

    fn path(&self, object: &ObjectRef) -> StorePath {
        self.prefix.child(object.hex())
    }

    /// Makes room for an upload of `object`: `None` when it is stored already (its use is
    /// recorded), an error when it would exceed the quota.
    pub(crate) fn reserve(
        &self,
        object: ObjectRef,
    ) -> Result<Option<Reservation<'_>>, TransferFailed> {
        let mut index = lock(&self.index);
        if let Some(entry) = index.objects.get_mut(&object.sha256) {
            entry.used_at_ms = unix_ms();
            return Ok(None);
        }
        let after = index
            .stored
            .saturating_add(index.reserved)
            .saturating_add(object.size);
        if after > self.quota {
            return Err(TransferFailed::Quota {
                size: object.size,
                stored: index.stored,
                reserved: index.reserved,
                quota: self.quota,
            });
        }
        index.reserved += object.size;
        Ok(Some(Reservation {
            objects: self,
            object,
        }))
    }

    /// Stores `bytes` as an object (nothing new when it is stored already).
    pub(crate) async fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectRef, TransferFailed> {
        let object = ObjectRef::of(bytes);
        if let Some(reservation) = self.reserve(object)? {
            self.store(reservation, Incoming::new(bytes, object))
                .await?;
        }
        Ok(object)
    }

    /// Receives the reserved object from `incoming` and stores it once verified.
    pub(crate) async fn store<R: AsyncRead + Unpin>(
        &self,
        reservation: Reservation<'_>,
        mut incoming: Incoming<R>,
    ) -> Result<(), TransferFailed> {
        let object = reservation.object;
        let path = self.path(&object);
        let _permit = self.uploads.acquire().await.map_err(|_| {
            TransferFailed::Store(object_store::Error::Generic {
                store: "objects",
                source: "the head is shutting down".into(),
            })
        })?;
        if object.size <= PART_BYTES as u64 {
            let mut chunks = Vec::new();
            while let Some(chunk) = incoming.chunk().await? {
                chunks.push(chunk);
            }
            self.store.put(&path, PutPayload::from_iter(chunks)).await?;
        } else {
            let upload = self.store.put_multipart(&path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let received = async {
                while let Some(chunk) = incoming.chunk().await? {
                    writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                    writer.put(chunk);
                }
                Ok::<_, TransferFailed>(())
            }
            .await;
            match received {
                // Verified: only now does the object appear under its name.
                Ok(()) => {
                    writer.finish().await?;
                }
                Err(err) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(error = %abort, "cannot abort a refused upload");
                    }
                    return Err(err);
                }
            }
        }
        self.sync(&object).await?;
        lock(&self.index).insert(
            object.sha256,
            Entry {
                size: object.size,
                used_at_ms: unix_ms(),
            },
        );
        drop(reservation);
        tracing::debug!(%object, "object stored");
        Ok(())
    }

    /// Makes a stored object durable in the local directory (an S3 store is durable once it
    /// answers).
    async fn sync(&self, object: &ObjectRef) -> Result<(), TransferFailed> {
        let Some(dir) = &self.local_dir else {
            return Ok(());
        };
        let file = dir.join(object.hex());
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| {
            TransferFailed::Store(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: source.into(),
            })
        })
    }

    /// The bytes of a stored object: the file itself for the local directory (read in large
    /// chunks, not the store's small ones), else the store's stream of chunks.
    pub(crate) async fn read(
        &self,
        object: ObjectRef,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, TransferFailed> {
        {
            let mut index = lock(&self.index);
            match index.objects.get_mut(&object.sha256) {
                Some(entry) if entry.size == object.size => entry.used_at_ms = unix_ms(),
                _ => return Err(TransferFailed::NotFound(object)),
            }
        }
        match self.store.get(&self.path(&object)).await {
            Ok(found) => Ok(match found.payload {
                GetResultPayload::File(file, _) => Box::new(tokio::fs::File::from_std(file)),
                GetResultPayload::Stream(chunks) => Box::new(tokio_util::io::StreamReader::new(
                    chunks.map_err(std::io::Error::other),
                )),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(TransferFailed::NotFound(object)),
            Err(err) => Err(err.into()),
        }
    }

    /// Whether the head stores `object`.
    pub(crate) fn is_stored(&self, object: &ObjectRef) -> bool {
        lock(&self.index)
            .objects
            .get(&object.sha256)
            .is_some_and(|entry| entry.size == object.size)
    }

    /// Refuses a task whose inputs name an object the head does not hold; records the use of
    /// those it does (retention counts from the submit).
    pub(crate) fn check_inputs(&self, spec: &TaskSpec) -> Result<(), String> {
        let now = unix_ms();
        let mut index = lock(&self.index);
        for input in &spec.inputs {
            // Another task's output is checked against that task (see `cluster::dependencies`).
            let InputSource::Object(object) = &input.source else {
                continue;
            };
            match index.objects.get_mut(&object.sha256) {
                Some(entry) if entry.size == object.size => entry.used_at_ms = now,
                _ => {
                    return Err(format!(
                        "input {}: no object {object}; upload it first (put_file, rgrid put)",
                        input.path
                    ))
                }
            }
        }
        Ok(())
    }

    /// One page of the index.
    pub(crate) fn page(&self, query: &ObjectQuery) -> ObjectPage {
        let limit = query.limit.min(MAX_PAGE_OBJECTS) as usize;
        let index = lock(&self.index);
        let start = match &query.after {
            Some(after) => std::ops::Bound::Excluded(after.sha256),
            None => std::ops::Bound::Unbounded,
        };
        let objects: Vec<ObjectInfo> = index
            .objects
            .range((start, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(sha256, entry)| ObjectInfo {
                object: ObjectRef {
                    sha256: *sha256,
                    size: entry.size,
                },
                used_at_ms: entry.used_at_ms,
                tasks: self.holds.count(sha256),
                pinned: index.pinned.contains(sha256),
            })
            .collect();
        let next = (objects.len() == limit && limit > 0)
            .then(|| objects.last().map(|o| o.object))
            .flatten();
        ObjectPage {
            objects,
            next,
            stored_bytes: index.stored,
            quota_bytes: self.quota,
        }
    }

    /// Deletes the objects not used since `retention` before now that nothing keeps; returns
    /// how many.
    pub(crate) async fn expire(&self, retention: Duration) -> usize {
        let cutoff =
            unix_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let expired: Vec<ObjectRef> = {
            let index = lock(&self.index);
            index
                .objects
                .iter()
                .filter(|(sha256, entry)| entry.used_at_ms < cutoff && !self.keeps(&index, sha256))
                .map(|(sha256, entry)| ObjectRef {
                    sha256: *sha256,
                    size: entry.size,
                })
                .collect()
        };
        let mut deleted = 0;
        for object in expired {
            // Out of the index first, so no download starts on what is being deleted; put back
            // if the store refuses.
            let entry = {
                let mut index = lock(&self.index);
                match index.objects.get(&object.sha256) {
                    Some(entry)
                        if entry.used_at_ms < cutoff && !self.keeps(&index, &object.sha256) =>
                    {
                        let entry = *entry;
                        index.remove(&object.sha256);
                        entry
                    }
                    _ => continue, // used, pinned or needed again meanwhile
                }
            };
            match self.store.delete(&self.path(&object)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(%object, "object expired and deleted");
                    deleted += 1;
                }
                Err(err) => {
                    tracing::warn!(%object, error = %err, "cannot delete an expired object; keeping it");
                    lock(&self.index).insert(object.sha256, entry);
                }
            }
        }
        deleted
    }
}

/// Deletes expired objects every `retention / 10` (at most every minute) until `shutdown`.
pub(crate) async fn retain(
    objects: Arc<Objects>,
    retention: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let period = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                objects.expire(retention).await;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
