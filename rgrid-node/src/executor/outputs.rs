//! A task's declared outputs ([`rgrid_core::task::OutputSpec`]), collected after it exits 0 into
//! `STATE_DIR/outputs` as files named by a random id, hashed as they are written and capped at
//! `max_output_bytes`, then uploaded to the head as objects (see `session`).
//!
//! From a container, Docker's archive of the path is read in chunks into a temporary tar: a
//! single regular file is extracted from it (the output is that file's content); anything else
//! (a directory) stays the tar. The process executor reads the path under the task's working
//! directory, which stands in for the container's root.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rgrid_core::object::{Hasher, ObjectRef};
use rgrid_core::resources::format_size;
use rgrid_core::task::OutputSpec;
use tokio::io::AsyncWriteExt;

/// Room for tar headers and padding around a single file's content.
const TAR_SLACK: u64 = 64 << 10;

/// A collected output on the node's disk, removed when dropped.
#[derive(Debug)]
pub struct Collected {
    pub name: String,
    pub object: ObjectRef,
    pub file: PathBuf,
}

impl Drop for Collected {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Where outputs are collected, and how large one may be.
#[derive(Clone, Debug)]
pub(crate) struct OutputDir {
    dir: PathBuf,
    max_bytes: u64,
}

/// Why an output could not be collected: the task's fault (missing, too large) or the node's.
#[derive(Debug)]
pub(crate) enum Uncollected {
    Task(String),
    Node(String),
}

impl OutputDir {
    /// Opens (creates) `dir`, removing what an earlier run of the node left there.
    /// How large an output may be (`max_output_bytes`): a declared output, or what a workload
    /// writes to stdout or stderr.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, max_bytes })
    }

    fn temp(&self, what: &str) -> PathBuf {
        self.dir.join(format!(
            "{what}-{}",
            hex::encode(rgrid_core::tls::random_bytes::<8>())
        ))
    }

    fn too_large(&self, output: &OutputSpec) -> Uncollected {
        Uncollected::Task(format!(
            "output {} ({}) is larger than max_output_bytes = {}",
            output.name,
            output.path,
            format_size(self.max_bytes)
        ))
    }

    /// Collects `output` from Docker's tar archive of its path, as `archive` yields it; `missing`
    /// tells an error that means the path does not exist.
    pub(crate) async fn collect_archive<E: std::fmt::Display>(
        &self,
        output: &OutputSpec,
        mut archive: impl Stream<Item = Result<Bytes, E>> + Unpin,
        missing: impl Fn(&E) -> bool,
    ) -> Result<Collected, Uncollected> {
        let tar_path = self.temp("archive");
        let node = |e: std::io::Error| {
            Uncollected::Node(format!("cannot write output {}: {e}", output.name))
        };
        let written = async {
            let mut file = tokio::fs::File::create(&tar_path).await.map_err(node)?;
            let mut size = 0u64;
            while let Some(chunk) = archive.next().await {
                let chunk = chunk.map_err(|e| {
                    if missing(&e) {
                        Uncollected::Task(format!(
                            "declared output {} is missing: no file or directory {} in the container",
                            output.name, output.path
                        ))
                    } else {
                        Uncollected::Node(format!(
                            "cannot read output {} from the container: {e}",
                            output.name
                        ))
                    }
                })?;
                size += chunk.len() as u64;
                if size > self.max_bytes.saturating_add(TAR_SLACK) {
                    return Err(self.too_large(output));
                }
                file.write_all(&chunk).await.map_err(node)?;
            }
            file.flush().await.map_err(node)
        }
        .await;
        if let Err(err) = written {
            let _ = tokio::fs::remove_file(&tar_path).await;
            return Err(err);
        }
        let file_path = self.temp("output");
        let (max, name) = (self.max_bytes, output.name.clone());
        let (tar, file) = (tar_path.clone(), file_path.clone());
        let unpacked = tokio::task::spawn_blocking(move || single_file_or_tar(&tar, &file, max))
            .await
            .map_err(|e| Uncollected::Node(format!("output {name}: {e}")));
        let collected = match unpacked {
            Ok(Ok(Unpacked::File(object))) => {
                let _ = std::fs::remove_file(&tar_path);
                Ok(Collected {
                    name: output.name.clone(),
                    object,
                    file: file_path.clone(),
                })
            }
            Ok(Ok(Unpacked::Tar(object))) => Ok(Collected {
                name: output.name.clone(),
                object,
                file: tar_path.clone(),
            }),
            Ok(Err(err)) if is_too_large(&err) => Err(self.too_large(output)),
            Ok(Err(err)) => Err(Uncollected::Node(format!(
                "cannot unpack output {}: {err}",
                output.name
            ))),
            Err(err) => Err(err),
        };
        if collected.is_err() {
            let _ = std::fs::remove_file(&tar_path);
            let _ = std::fs::remove_file(&file_path);
        }
        collected
    }

    /// An empty file standing for `output`: what the noop executor (a benchmarking aid)
    /// produces, so that its tasks can feed dependants.
    pub(crate) async fn collect_empty(
        &self,
        output: &OutputSpec,
    ) -> Result<Collected, Uncollected> {
        let file = self.temp("empty");
        tokio::fs::File::create(&file)
            .await
            .map_err(|e| Uncollected::Node(format!("cannot write output {}: {e}", output.name)))?;
        Ok(Collected {
            name: output.name.clone(),
            object: ObjectRef::of(b""),
            file,
        })
    }

    /// Collects `output` from the host: its path under `root` (a file as it is, a directory as
    /// a tar).
    pub(crate) async fn collect_host(
        &self,
        output: &OutputSpec,
        root: &Path,
    ) -> Result<Collected, Uncollected> {
        let source = root.join(output.path.trim_start_matches('/'));
        let target = self.temp("output");
        let (max, file) = (self.max_bytes, target.clone());
        let name = output.name.clone();
        let copied = tokio::task::spawn_blocking(move || copy_or_tar(&source, &file, &name, max))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        match copied {
            Ok(object) => Ok(Collected {
                name: output.name.clone(),
                object,
                file: target,
            }),
            Err(err) => {
                let _ = std::fs::remove_file(&target);
                Err(match err.kind() {
                    std::io::ErrorKind::NotFound => Uncollected::Task(format!(
                        "declared output {} is missing: no file or directory {} in the task's working directory",
                        output.name, output.path
                    )),
                    _ if is_too_large(&err) => self.too_large(output),
                    _ => Uncollected::Node(format!("cannot collect output {}: {err}", output.name)),
                })
            }
        }
    }
}

/// After an exit 0, collects each of `outputs` with `collect` into `execution`; the first that
/// fails fails the attempt (the task's fault) or hands it back (the node's).
pub(crate) async fn collect_all<'a, F, Fut>(
    execution: &mut super::Execution,
    outputs: &'a [OutputSpec],
    mut collect: F,
) where
    F: FnMut(&'a OutputSpec) -> Fut,
    Fut: Future<Output = Result<Collected, Uncollected>>,
{
    if execution.exit != rgrid_core::protocol::ExitStatus::Exited(0) {
        return;
    }
    for output in outputs {
        match collect(output).await {
            Ok(collected) => execution.outputs.push(collected),
            Err(failed) => {
                execution.outputs.clear();
                execution.exit = match failed {
                    Uncollected::Task(message) => {
                        rgrid_core::protocol::ExitStatus::OutputFailed(message)
                    }
                    Uncollected::Node(message) => {
                        rgrid_core::protocol::ExitStatus::HandedBack(message)
                    }
                };
                return;
            }
        }
    }
}

/// How often an output upload is tried before the attempt is handed back.
const UPLOAD_TRIES: u32 = 3;

/// Uploads collected outputs to the head as objects, each read from its file in chunks; the
/// connection is waited for as for inputs. `Err`: the exit status the attempt ends with instead
/// (refused by the head: the task fails; the head out of reach: handed back).
pub(crate) async fn upload(
    connection: &tokio::sync::watch::Sender<Option<quinn::Connection>>,
    collected: &[Collected],
    stopped: &tokio_util::sync::CancellationToken,
) -> Result<Vec<rgrid_core::object::NamedObject>, rgrid_core::protocol::ExitStatus> {
    use rgrid_core::protocol::ExitStatus;
    use rgrid_core::transport::{put_object, PutError};
    let mut uploaded = Vec::with_capacity(collected.len());
    let mut watch = connection.subscribe();
    for output in collected {
        let mut tries = 0;
        loop {
            tries += 1;
            let current = tokio::select! {
                c = watch.wait_for(Option::is_some) => c.ok().and_then(|c| c.clone()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => None,
                _ = stopped.cancelled() => None,
            };
            let Some(current) = current else {
                return Err(ExitStatus::HandedBack(format!(
                    "no connection to the head to upload output {}",
                    output.name
                )));
            };
            let file = tokio::fs::File::open(&output.file).await.map_err(|e| {
                ExitStatus::HandedBack(format!("cannot read output {}: {e}", output.name))
            })?;
            match put_object(&current, output.object, file).await {
                Ok(()) => break,
                Err(PutError::Refused(refusal)) => {
                    return Err(ExitStatus::OutputFailed(format!(
                        "the head refused output {}: {}",
                        output.name, refusal.message
                    )))
                }
                Err(err) if tries >= UPLOAD_TRIES => {
                    return Err(ExitStatus::HandedBack(format!(
                        "cannot upload output {}: {err}",
                        output.name
                    )))
                }
                Err(err) => {
                    tracing::debug!(output = %output.name, error = %err, "output upload failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << tries)).await;
                }
            }
        }
        uploaded.push(rgrid_core::object::NamedObject {
            name: output.name.clone(),
            object: output.object,
        });
    }
    Ok(uploaded)
}

/// What an archive held.
enum Unpacked {
    /// One regular file, extracted.
    File(ObjectRef),
    /// Anything else: the archive is the output.
    Tar(ObjectRef),
}

/// The error a [`Capped`] writer gives past its cap.
#[derive(Debug, thiserror::Error)]
#[error("over the size cap")]
struct TooLarge;

fn is_too_large(err: &std::io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<TooLarge>())
}

/// Writes through, hashing and counting, and fails past `max` bytes.
struct Capped<W> {
    inner: W,
    hasher: Hasher,
    max: u64,
}

impl<W: Write> Capped<W> {
    fn new(inner: W, max: u64) -> Self {
        Self {
            inner,
            hasher: Hasher::default(),
            max,
        }
    }

    fn finish(mut self) -> std::io::Result<ObjectRef> {
        self.inner.flush()?;
        Ok(self.hasher.finish())
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.hasher.size() + buf.len() as u64 > self.max {
            return Err(std::io::Error::other(TooLarge));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn single_file_or_tar(tar: &Path, file: &Path, max: u64) -> std::io::Result<Unpacked> {
    let mut archive = tar::Archive::new(std::fs::File::open(tar)?);
    let mut entries = archive.entries()?;
    if let Some(entry) = entries.next() {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let mut out = Capped::new(std::fs::File::create(file)?, max);
            std::io::copy(&mut entry, &mut out)?;
            let object = out.finish()?;
            drop(entry);
            if entries.next().is_none() {
                return Ok(Unpacked::File(object));
            }
        }
    }
    let _ = std::fs::remove_file(file);
    let mut hashed = Capped::new(std::io::sink(), max);
    std::io::copy(&mut std::fs::File::open(tar)?, &mut hashed)?;
    Ok(Unpacked::Tar(hashed.finish()?))
}

fn copy_or_tar(source: &Path, target: &Path, name: &str, max: u64) -> std::io::Result<ObjectRef> {
    let meta = std::fs::metadata(source)?;
    let out = Capped::new(std::fs::File::create(target)?, max);
    if meta.is_dir() {
        let mut builder = tar::Builder::new(out);
        let top = source
            .file_name()
            .map_or_else(|| name.into(), std::ffi::OsStr::to_os_string);
        builder.append_dir_all(top, source)?;
        builder.into_inner()?.finish()
    } else {
        let mut out = out;
        std::io::copy(&mut std::fs::File::open(source)?, &mut out)?;
        out.finish()
    }
}
