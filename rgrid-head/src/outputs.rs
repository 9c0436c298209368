//! Large task outputs (stdout, stderr over [`rgrid_core::protocol::INLINE_RESULT_BYTES`]),
//! stored content-addressed under `STATE_DIR/outputs/`: the file name is the SHA-256 of the
//! content, so identical outputs are stored once and a replayed result rewrites nothing. Small
//! outputs live in the task's database row.

use std::io::Write as _;
use std::path::PathBuf;

use rgrid_core::tls::sha256_hex;

/// The output directory.
#[derive(Clone, Debug)]
pub(crate) struct OutputStore {
    dir: PathBuf,
}

impl OutputStore {
    pub(crate) fn new(dir: PathBuf) -> std::io::Result<Self> {
        rgrid_core::tls::create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Stores `bytes` durably (the file and the directory entry) and returns their hash. Empty
    /// outputs are not stored.
    pub(crate) async fn put(&self, bytes: Vec<u8>) -> std::io::Result<Option<String>> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let hash = sha256_hex(&bytes);
            let path = dir.join(&hash);
            if !path.exists() {
                let tmp = dir.join(format!("{hash}.tmp-{}", uuid::Uuid::new_v4()));
                let mut file = rgrid_core::tls::create_private_file(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                // The rename is durable only once the directory is.
                std::fs::File::open(&dir)?.sync_all()?;
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
}
