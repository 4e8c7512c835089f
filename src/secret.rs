//! Secrets: where they come from (`env`, `file`, `static`) and a wrapper that never prints its
//! value and compares in constant time. Read by `auth` when the config is compiled (client
//! tokens).

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A secret value. `Debug` and `Display` print `[redacted]`; compare with [`Secret::matches`].
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send it (e.g. an injected header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value: both sides are hashed first, so
    /// neither the content nor the length of the secret leaks through timing.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let a = openssl::sha::sha256(self.0.as_bytes());
        let b = openssl::sha::sha256(presented);
        openssl::memcmp::eq(&a, &b)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret is read from: `{ type: env, var: NAME }`, `{ type: file, path: FILE }` or
/// `{ type: static, value: "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable of warden's process.
    Env {
        /// Variable name.
        var: String,
    },
    /// A file; one trailing newline is dropped.
    File {
        /// Path, relative to the config file's folder.
        path: PathBuf,
    },
    /// A value written in the config.
    Static {
        /// The value.
        value: Secret,
    },
}

/// A secret that could not be read. Names the source, never a value.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The variable is unset or not UTF-8.
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// The file could not be read.
    #[error("cannot read secret file {path}: {kind}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong (the OS error kind, never the content).
        kind: std::io::ErrorKind,
    },
    /// The source yielded an empty value.
    #[error("{0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Reads the secret now. Relative file paths resolve against `base_dir`.
    pub fn read(&self, base_dir: &Path) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::Env { var } => {
                std::env::var(var).map_err(|_| SecretError::EnvUnset(var.clone()))?
            }
            SecretSource::File { path } => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    base_dir.join(path)
                };
                let text = std::fs::read_to_string(&path).map_err(|e| SecretError::File {
                    path: path.clone(),
                    kind: e.kind(),
                })?;
                text.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_string()
            }
            SecretSource::Static { value } => value.expose().to_string(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.describe()));
        }
        Ok(Secret(value))
    }

    /// Names the source for logs and errors (`env RUN42_TOKEN`, `file /run/token`, `static`).
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env { var } => format!("env {var}"),
            SecretSource::File { path } => format!("file {}", path.display()),
            SecretSource::Static { .. } => "static value".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("CANARY-123");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        let src: SecretSource =
            serde_yaml::from_str("{ type: static, value: CANARY-123 }").unwrap();
        assert!(!format!("{src:?}").contains("CANARY"));
    }

    #[test]
    fn matching_is_exact() {
        let s = Secret::new("token-1");
        assert!(s.matches(b"token-1"));
        assert!(!s.matches(b"token-12"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn sources_read_and_fail_naming_the_source_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), "from-file\n").unwrap();
        let file: SecretSource = serde_yaml::from_str("{ type: file, path: t }").unwrap();
        assert_eq!(file.read(dir.path()).unwrap().expose(), "from-file");
        let missing: SecretSource = serde_yaml::from_str("{ type: file, path: nope }").unwrap();
        let err = missing.read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("not found"), "{err}");
        let env: SecretSource =
            serde_yaml::from_str("{ type: env, var: WARDEN_TEST_UNSET_VAR_X }").unwrap();
        assert_eq!(
            env.read(dir.path()).unwrap_err().to_string(),
            "environment variable WARDEN_TEST_UNSET_VAR_X is not set"
        );
        let empty: SecretSource = serde_yaml::from_str("{ type: static, value: '' }").unwrap();
        assert!(empty.read(dir.path()).is_err());
        assert!(serde_yaml::from_str::<SecretSource>("{ type: vault, path: x }").is_err());
    }
}
