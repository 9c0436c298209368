//! Task outputs (stdout, stderr), stored content-addressed under `STATE_DIR/outputs/`: the file
//! name is the SHA-256 of the content, so identical outputs are stored once and a replayed result
//! rewrites nothing.

use std::path::PathBuf;

use rgrid_core::tls::sha256_hex;

/// The output directory.
#[derive(Clone, Debug)]
pub(crate) struct OutputStore {
    dir: PathBuf,
}

impl OutputStore {
    pub(crate) fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Stores `bytes` durably and returns their hash. Empty outputs are not stored.
    pub(crate) async fn put(&self, bytes: Vec<u8>) -> std::io::Result<Option<String>> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let hash = sha256_hex(&bytes);
            let path = dir.join(&hash);
            if !path.exists() {
                use std::io::Write;
                let tmp = dir.join(format!("{hash}.tmp-{}", uuid::Uuid::new_v4()));
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
            }
            Ok(Some(hash))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The content stored under `hash`; nothing for no hash.
    pub(crate) async fn get(&self, hash: Option<&str>) -> std::io::Result<Vec<u8>> {
        let Some(hash) = hash else {
            return Ok(Vec::new());
        };
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(std::io::Error::other(format!("bad output hash {hash:?}")));
        }
        tokio::fs::read(self.dir.join(hash)).await
    }
}
