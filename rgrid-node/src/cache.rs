//! The node's cache of objects (task inputs), by hash, in `STATE_DIR/objects`: capped in bytes
//! (`object_cache_bytes`), the least recently used objects that no running attempt holds
//! evicted beyond it. A missing object is fetched from the head on a stream of its own, into a
//! temporary file, verified as it arrives, and renamed to its hash only once whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use quinn::Connection;
use rgrid_core::object::{Incoming, ObjectRef};
use rgrid_core::protocol::{ErrorKind, Request, Response};
use rgrid_core::transport::open_request;
use tokio::io::AsyncWriteExt;

use crate::executor::NotRun;

/// One cached object.
struct Entry {
    size: u64,
    /// A use counter's value at the last use: the smallest is the least recently used.
    last_use: u64,
    /// Attempts holding it (staged into their containers): not evicted while above 0.
    holds: u32,
}

#[derive(Default)]
struct State {
    entries: HashMap<[u8; 32], Entry>,
    total: u64,
    uses: u64,
}

/// The cache (see the module docs).
pub(crate) struct ObjectCache {
    dir: PathBuf,
    cap: u64,
    state: Mutex<State>,
}

/// An object held in the cache for an attempt; released when dropped.
pub(crate) struct Held {
    cache: Arc<ObjectCache>,
    object: ObjectRef,
    /// The cached file.
    pub path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = lock(&self.cache.state);
        if let Some(entry) = state.entries.get_mut(&self.object.sha256) {
            entry.holds = entry.holds.saturating_sub(1);
        }
        drop(state);
        self.cache.evict();
    }
}

impl ObjectCache {
    /// Opens the cache in `dir`, keeping the objects already there and removing leftovers of
    /// interrupted fetches.
    pub(crate) fn open(dir: PathBuf, cap: u64) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let sha256 = name.to_str().and_then(ObjectRef::parse_hex);
            match sha256 {
                Some(sha256) => {
                    let size = entry.metadata()?.len();
                    state.total += size;
                    state.entries.insert(
                        sha256,
                        Entry {
                            size,
                            last_use: 0,
                            holds: 0,
                        },
                    );
                }
                None => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let cache = Arc::new(Self {
            dir,
            cap,
            state: Mutex::new(state),
        });
        cache.evict();
        Ok(cache)
    }

    fn path(&self, object: &ObjectRef) -> PathBuf {
        self.dir.join(object.hex())
    }

    /// Takes a hold on `object` if it is cached.
    fn hold_cached(self: &Arc<Self>, object: ObjectRef) -> Option<Held> {
        let mut state = lock(&self.state);
        state.uses += 1;
        let uses = state.uses;
        let entry = state.entries.get_mut(&object.sha256)?;
        entry.last_use = uses;
        entry.holds += 1;
        Some(Held {
            cache: self.clone(),
            object,
            path: self.path(&object),
        })
    }

    /// `object` in the cache, fetched from the head over `connection` when missing, held until
    /// the returned [`Held`] is dropped. An object the head does not have fails the task; a
    /// transfer that fails hands the attempt back.
    pub(crate) async fn hold(
        self: &Arc<Self>,
        object: ObjectRef,
        connection: &Connection,
    ) -> Result<Held, NotRun> {
        if let Some(held) = self.hold_cached(object) {
            return Ok(held);
        }
        let temp = self.dir.join(format!(
            "{}.partial-{}",
            object.hex(),
            hex::encode(rgrid_core::tls::random_bytes::<8>())
        ));
        let fetched = fetch(object, connection, &temp).await;
        if let Err(err) = fetched {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(err);
        }
        let path = self.path(&object);
        tokio::fs::rename(&temp, &path)
            .await
            .map_err(|e| NotRun::Node(format!("cannot keep input {object} in the cache: {e}")))?;
        {
            let mut state = lock(&self.state);
            // Fetched twice at once: the second rename replaced the same bytes.
            if !state.entries.contains_key(&object.sha256) {
                state.total += object.size;
                state.entries.insert(
                    object.sha256,
                    Entry {
                        size: object.size,
                        last_use: 0,
                        holds: 0,
                    },
                );
            }
        }
        let held = self
            .hold_cached(object)
            .ok_or_else(|| NotRun::Node(format!("input {object} left the cache at once")))?;
        self.evict();
        Ok(held)
    }

    /// Removes least recently used objects nobody holds until the cache fits its cap.
    fn evict(&self) {
        let mut state = lock(&self.state);
        while state.total > self.cap {
            let victim = state
                .entries
                .iter()
                .filter(|(_, e)| e.holds == 0)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(sha256, e)| (*sha256, e.size));
            let Some((sha256, size)) = victim else {
                break; // all held by running attempts
            };
            state.entries.remove(&sha256);
            state.total = state.total.saturating_sub(size);
            let path = self.dir.join(hex::encode(sha256));
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %err, "cannot evict a cached object");
            }
        }
    }

    /// Bytes cached (for tests and metrics).
    #[cfg(test)]
    fn total(&self) -> u64 {
        lock(&self.state).total
    }
}

/// Downloads `object` from the head into `path`, verifying it.
async fn fetch(object: ObjectRef, connection: &Connection, path: &Path) -> Result<(), NotRun> {
    let node_fault = |what: &str, err: &dyn std::fmt::Display| {
        NotRun::Node(format!(
            "cannot fetch input {object} from the head: {what}: {err}"
        ))
    };
    let mut stream = open_request(connection, &Request::GetObject(object))
        .await
        .map_err(|e| node_fault("request", &e))?;
    let _ = stream.send.get_mut().finish();
    match stream
        .recv
        .expect()
        .await
        .map_err(|e| node_fault("answer", &e))?
    {
        Response::Object(announced) if announced == object => {}
        Response::Error(e) if e.kind == ErrorKind::NotFound => {
            return Err(NotRun::Task(format!("input {object}: {}", e.message)))
        }
        Response::Error(e) => return Err(node_fault("refused", &e.message)),
        other => return Err(node_fault("unexpected answer", &format!("{other:?}"))),
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| node_fault("cache file", &e))?;
    let mut incoming = Incoming::new(stream.recv.into_raw(), object);
    while let Some(chunk) = incoming
        .chunk()
        .await
        .map_err(|e| node_fault("transfer", &e))?
    {
        file.write_all(&chunk)
            .await
            .map_err(|e| node_fault("cache file", &e))?;
    }
    file.flush()
        .await
        .map_err(|e| node_fault("cache file", &e))?;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &Arc<ObjectCache>, bytes: &[u8]) -> ObjectRef {
        let object = ObjectRef::of(bytes);
        std::fs::write(cache.path(&object), bytes).expect("written");
        let mut state = lock(&cache.state);
        state.total += object.size;
        state.entries.insert(
            object.sha256,
            Entry {
                size: object.size,
                last_use: 0,
                holds: 0,
            },
        );
        drop(state);
        object
    }

    #[test]
    fn the_least_recently_used_unheld_object_is_evicted_and_leftovers_removed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("abc.partial-1"), b"half").expect("written");
        let cache = ObjectCache::open(dir.path().to_path_buf(), 10).expect("opens");
        assert!(!dir.path().join("abc.partial-1").exists());
        let a = put(&cache, b"aaaa");
        let b = put(&cache, b"bbbb");
        let held_a = cache.hold_cached(a).expect("cached");
        drop(cache.hold_cached(b).expect("cached"));
        // 4 + 4 + 4 > 10: b is unheld and older than c; a is held.
        let c = put(&cache, b"cccc");
        let held_c = cache.hold_cached(c).expect("cached");
        cache.evict();
        assert!(cache.hold_cached(b).is_none(), "b was evicted");
        assert!(!cache.path(&b).exists());
        assert_eq!(cache.total(), 8);
        // Over the cap again: d, never used, goes before a once a is released.
        let d = put(&cache, b"dddd");
        drop(held_a);
        assert!(!cache.path(&d).exists(), "d was evicted");
        assert!(cache.path(&a).exists(), "a stays");
        drop(held_c);
        // Reopened, the cache keeps what fits.
        let reopened = ObjectCache::open(dir.path().to_path_buf(), 10).expect("opens");
        assert!(reopened.total() <= 10);
    }
}
