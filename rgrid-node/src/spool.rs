//! The offline spool: every result is written under `STATE_DIR/spool` before it is sent (a new
//! file, fsync, rename, fsync of the directory) and removed only once the head has acknowledged
//! it. At start the node reads back what is there and delivers it again, so a node restarted on
//! its state dir loses no result that had finished; the head deduplicates by attempt.
//!
//! Bounded: at most [`MAX_RESULTS`] results and `spool_max_bytes` bytes. A result that would
//! pass either cap is not written: it is kept in memory only (as every result was before there
//! was a spool: lost if the node restarts before the head acknowledges it), and a warning says
//! so. The spool empties as the head acknowledges.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rgrid_core::protocol::AttemptReport;
use rgrid_core::AttemptId;

use crate::lock;

/// Most results the spool holds at once.
pub(crate) const MAX_RESULTS: usize = 10_000;

/// Ending of a spooled result's file name; files being written end in `.tmp`.
const SUFFIX: &str = "result";

/// Why the spool cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the result spool {dir}: {source}; check that the state dir is writable")]
pub struct SpoolError {
    dir: PathBuf,
    source: std::io::Error,
}

/// The results on disk that the head has not acknowledged.
pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// The size of each spooled result.
    held: Arc<Mutex<HashMap<AttemptId, u64>>>,
}

impl Spool {
    /// Opens (creates) `state_dir/spool`; returns it with the results it holds, oldest first.
    /// Half-written files of a node that died while writing are removed; a file that does not
    /// decode (a torn disk, a file from elsewhere) is logged and moved aside, never fatal.
    pub(crate) fn open(
        state_dir: &Path,
        max_bytes: u64,
    ) -> Result<(Self, Vec<AttemptReport>), SpoolError> {
        let dir = state_dir.join("spool");
        let error = |source| SpoolError {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(error)?;
        let mut reports = Vec::new();
        let mut held = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(error)? {
            let path = entry.map_err(error)?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some(SUFFIX) => {}
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            let bytes = std::fs::read(&path).map_err(error)?;
            match postcard::from_bytes::<AttemptReport>(&bytes) {
                Ok(report) if path == file_of(&dir, report.attempt) => {
                    held.insert(report.attempt, bytes.len() as u64);
                    reports.push(report);
                }
                _ => {
                    tracing::warn!(file = %path.display(), "a spooled result does not decode; moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        reports.sort_by_key(|r| r.finished_at_ms);
        if !reports.is_empty() {
            tracing::info!(
                results = reports.len(),
                "results spooled by an earlier run; delivering them"
            );
        }
        let spool = Self {
            dir,
            max_bytes,
            held: Arc::new(Mutex::new(held)),
        };
        Ok((spool, reports))
    }

    /// Writes `report` durably (file, fsync, rename, directory fsync). When it cannot (full,
    /// disk error) the result stays in memory only, and that is logged.
    pub(crate) async fn write(&self, report: &AttemptReport) {
        let attempt = report.attempt;
        let bytes = match postcard::to_allocvec(report) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(%attempt, error = %err, "cannot encode the result for the spool");
                return;
            }
        };
        let size = bytes.len() as u64;
        {
            let mut held = lock(&self.held);
            let used: u64 = held.values().sum();
            if held.len() >= MAX_RESULTS || used.saturating_add(size) > self.max_bytes {
                tracing::warn!(
                    %attempt,
                    spooled = held.len(),
                    spooled_bytes = used,
                    max_bytes = self.max_bytes,
                    "the result spool is full; this result is kept in memory only until the head acknowledges it"
                );
                return;
            }
            held.insert(attempt, size);
        }
        let dir = self.dir.clone();
        let written =
            tokio::task::spawn_blocking(move || write_durably(&dir, attempt, &bytes)).await;
        let failed = match written {
            Ok(Ok(())) => return,
            Ok(Err(err)) => err.to_string(),
            Err(err) => err.to_string(),
        };
        lock(&self.held).remove(&attempt);
        tracing::warn!(%attempt, error = %failed, "cannot spool the result; it is kept in memory only");
    }

    /// The head acknowledged `attempt`: its file goes. (Lost removals only mean a repeat the
    /// head ignores.)
    pub(crate) fn remove(&self, attempt: AttemptId) {
        if lock(&self.held).remove(&attempt).is_none() {
            return;
        }
        let path = file_of(&self.dir, attempt);
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), error = %err, "cannot remove an acknowledged result from the spool");
        }
    }

    /// How many results are spooled, and their bytes.
    pub(crate) fn depth(&self) -> (usize, u64) {
        let held = lock(&self.held);
        (held.len(), held.values().sum())
    }

    /// Is a result of `attempt` spooled?
    pub(crate) fn holds(&self, attempt: AttemptId) -> bool {
        lock(&self.held).contains_key(&attempt)
    }
}

fn file_of(dir: &Path, attempt: AttemptId) -> PathBuf {
    dir.join(format!("{}.{}.{SUFFIX}", attempt.task, attempt.attempt))
}

fn write_durably(dir: &Path, attempt: AttemptId, bytes: &[u8]) -> std::io::Result<()> {
    let path = file_of(dir, attempt);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rgrid_core::protocol::ExitStatus;
    use rgrid_core::TaskId;

    fn report(attempt: u32, stdout: &[u8]) -> AttemptReport {
        AttemptReport {
            attempt: AttemptId {
                task: TaskId::new(),
                attempt,
            },
            exit: ExitStatus::Exited(0),
            stdout: stdout.to_vec(),
            stderr: Vec::new(),
            started_at_ms: 1,
            finished_at_ms: u64::from(attempt),
            outputs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn results_survive_a_reopen_until_removed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (spool, none) = Spool::open(dir.path(), 1 << 20).expect("opens");
        assert!(none.is_empty());
        let (a, b) = (report(1, b"a"), report(2, b"b"));
        spool.write(&a).await;
        spool.write(&b).await;
        spool.remove(a.attempt);
        // A torn write and a stray file are not results.
        std::fs::write(dir.path().join("spool/x.1.tmp"), b"half").expect("write");
        std::fs::write(dir.path().join("spool/junk.1.result"), b"junk").expect("write");
        drop(spool);
        let (spool, back) = Spool::open(dir.path(), 1 << 20).expect("reopens");
        assert_eq!(back, vec![b]);
        assert!(spool.holds(back[0].attempt));
        assert!(!dir.path().join("spool/x.1.tmp").exists());
        assert!(dir.path().join("spool/junk.1.bad").exists());
    }

    #[tokio::test]
    async fn a_full_spool_keeps_the_result_in_memory_only() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (spool, _) = Spool::open(dir.path(), 100).expect("opens");
        let small = report(1, b"fits");
        let large = report(2, &[b'x'; 200]);
        spool.write(&small).await;
        spool.write(&large).await;
        assert!(spool.holds(small.attempt));
        assert!(!spool.holds(large.attempt), "past the byte cap");
        let (_, back) = Spool::open(dir.path(), 100).expect("reopens");
        assert_eq!(back, vec![small]);
    }
}
