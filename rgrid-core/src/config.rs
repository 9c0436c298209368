//! Reading the daemons' TOML config files.

use std::path::{Path, PathBuf};

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

/// Reads and parses a TOML config file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parses a `K=V` label given on a command line (`--label site=eu-1`).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not a label: use K=V"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_key_equals_value() {
        assert_eq!(
            super::parse_label(" site = b "),
            Ok(("site".to_owned(), "b".to_owned()))
        );
        assert_eq!(
            super::parse_label("k="),
            Ok(("k".to_owned(), String::new()))
        );
        assert!(super::parse_label("=v").is_err());
        assert!(super::parse_label("site").is_err());
    }
}
