//! Large task outputs (stdout, stderr over [`rgrid_core::protocol::INLINE_RESULT_BYTES`]),
//! stored content-addressed under `STATE_DIR/outputs/`: the file name is the SHA-256 of the
//! content, so identical outputs are stored once and a replayed result rewrites nothing. Small
//! outputs live in the task's database row. Together with the attempts' logs ([`crate::logs`])
//! they share one [`OutputQuota`] (`max_total_output_bytes`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rgrid_core::tls::sha256_hex;

use crate::store::Output;

/// The bytes task outputs take on the head's disk (large results under `outputs/`, attempt logs
/// under `logs/`), at most `max_total_output_bytes`: past it, outputs are not kept (a result
/// without its large stdout, a log cut short, each saying so).
#[derive(Debug)]
pub(crate) struct OutputQuota {
    used: AtomicU64,
    max: u64,
}

impl OutputQuota {
    /// The quota, with what `dirs` hold already counted as used.
    pub(crate) fn new(max: u64, dirs: &[&Path]) -> Arc<Self> {
        let used = dirs.iter().map(|dir| bytes_under(dir)).sum();
        Arc::new(Self {
            used: AtomicU64::new(used),
            max,
        })
    }

    /// Takes `bytes` of the quota; false (and nothing taken) when they do not fit.
    pub(crate) fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken for a write that failed.
    pub(crate) fn give_back(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

/// The size of the files under `dir` (0 when it does not exist).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// The output directory.
#[derive(Clone, Debug)]
pub(crate) struct OutputStore {
    dir: PathBuf,
    quota: Arc<OutputQuota>,
}

impl OutputStore {
    pub(crate) fn new(dir: PathBuf, quota: Arc<OutputQuota>) -> std::io::Result<Self> {
        rgrid_core::tls::create_private_dir(&dir)?;
        Ok(Self { dir, quota })
    }

    /// Stores `bytes` durably (the file and the directory entry) and returns their hash. Empty
    /// outputs are not stored; those over the quota neither (an error of kind `QuotaExceeded`).
    pub(crate) async fn put(&self, bytes: Vec<u8>) -> std::io::Result<Option<String>> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let dir = self.dir.clone();
        let quota = self.quota.clone();
        tokio::task::spawn_blocking(move || {
            let hash = sha256_hex(&bytes);
            let path = dir.join(&hash);
            if !path.exists() {
                if !quota.take(bytes.len() as u64) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::QuotaExceeded,
                        format!(
                            "{} of task output would take the head past max_total_output_bytes = {} ({} used)",
                            bytes.len(),
                            quota.max(),
                            quota.used()
                        ),
                    ));
                }
                let tmp = dir.join(format!("{hash}.tmp-{}", uuid::Uuid::new_v4()));
                let written = (|| {
                    let mut file = rgrid_core::tls::create_private_file(&tmp)?;
                    file.write_all(&bytes)?;
                    file.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    // The rename is durable only once the directory is.
                    std::fs::File::open(&dir)?.sync_all()
                })();
                if let Err(err) = written {
                    quota.give_back(bytes.len() as u64);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(err);
                }
            }
            Ok(Some(hash))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The content stored under `hash`.
    pub(crate) async fn get(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(std::io::Error::other(format!("bad output hash {hash:?}")));
        }
        tokio::fs::read(self.dir.join(hash)).await
    }

    /// The bytes of a task's stdout or stderr as its row holds it.
    pub(crate) async fn load(&self, output: &Output) -> std::io::Result<Vec<u8>> {
        match output {
            Output::Empty => Ok(Vec::new()),
            Output::Inline(bytes) => Ok(bytes.clone()),
            Output::Stored(hash) => self.get(hash).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails gives its room in the quota back and leaves no file.
    #[tokio::test]
    async fn a_failed_write_takes_nothing_of_the_quota() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let outputs = dir.path().join("outputs");
        let quota = OutputQuota::new(100, &[&outputs]);
        let store = OutputStore::new(outputs.clone(), quota.clone()).expect("the store");
        std::fs::remove_dir(&outputs).expect("removed");
        let failed = store.put(vec![1; 60]).await;
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(quota.used(), 0);
        std::fs::create_dir(&outputs).expect("created again");
        let hash = store
            .put(vec![1; 60])
            .await
            .expect("stored")
            .expect("a hash");
        assert_eq!(quota.used(), 60);
        assert_eq!(std::fs::read_dir(&outputs).expect("listed").count(), 1);
        assert_eq!(store.get(&hash).await.expect("read"), vec![1; 60]);
    }
}
