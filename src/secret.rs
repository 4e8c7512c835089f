//! Secrets: where they come from (`env`, `file`, `static`, and the refreshing `process` and
//! `oauth2`, run by `refresh`) and a wrapper that never prints its value and compares
//! in constant time. Read by `auth` when the config is compiled (client tokens).

use serde::Deserialize;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
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

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl Hash for Secret {
    // Sources are keyed by what they are (a refreshing source keeps its cached value across a
    // reload that keeps it); the key never leaves the process.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
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

/// Where a secret is read from: `{ type: env, var: NAME }`, `{ type: file, path: FILE }`,
/// `{ type: static, value: "..." }`, or one that refreshes: `{ type: process, command: [...],
/// ttl: 5m }` and `{ type: oauth2, token_url, client_id, client_secret, refresh_token, scope }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
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
    /// A command run without a shell (10 s timeout); its standard output is the secret,
    /// cached for `ttl`.
    Process {
        /// Program and arguments; a relative program path with a `/` resolves against the
        /// config file's folder, a bare name through `PATH`.
        command: Vec<String>,
        /// How long a value is used (refreshed in the background at 75% of it).
        #[serde(default = "default_process_ttl", with = "humantime_serde")]
        ttl: Duration,
    },
    /// An OAuth 2.0 access token, from a refresh token (RFC 6749 section 6).
    Oauth2 {
        /// The token endpoint: `https://`, or `http://` to a loopback address.
        token_url: String,
        /// The client id, sent in the form body.
        client_id: String,
        /// The client secret (`env`, `file` or `static`), sent in the form body; absent for a
        /// public client.
        #[serde(default)]
        client_secret: Option<Box<SecretSource>>,
        /// The refresh token (`env`, `file` or `static`). One the endpoint rotates is kept,
        /// and written back to a `file` source.
        refresh_token: Box<SecretSource>,
        /// The scope to ask for, if any.
        #[serde(default)]
        scope: Option<String>,
    },
}

fn default_process_ttl() -> Duration {
    Duration::from_secs(300)
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
    /// A refreshing source where a secret is read once, when the config is compiled.
    #[error("{0} refreshes, so it is read at request time only (credentials and substitutions); this key takes an env, file or static source")]
    RequestTimeOnly(String),
    /// A refreshing source could not give a value: the command or the token endpoint failed.
    #[error("{source_name}: {cause}")]
    Refresh {
        /// `process op`, `oauth2 https://...`.
        source_name: String,
        /// What went wrong (never a value).
        cause: String,
    },
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
            SecretSource::Process { .. } | SecretSource::Oauth2 { .. } => {
                return Err(SecretError::RequestTimeOnly(self.describe()))
            }
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
            SecretSource::Process { command, .. } => {
                format!("process {}", command.first().map_or("", String::as_str))
            }
            SecretSource::Oauth2 { token_url, .. } => {
                // The query is left out: it is the one part of a URL that may carry a key.
                let shown = token_url.split(['?', '#']).next().unwrap_or_default();
                format!("oauth2 {shown}")
            }
        }
    }

    /// Whether it refreshes (`process`, `oauth2`): read at request time through a
    /// refresher, never by [`SecretSource::read`].
    pub fn refreshes(&self) -> bool {
        matches!(
            self,
            SecretSource::Process { .. } | SecretSource::Oauth2 { .. }
        )
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

    #[test]
    fn refreshing_sources_parse_are_named_without_values_and_are_not_read_at_compile_time() {
        let p: SecretSource =
            serde_yaml::from_str("{ type: process, command: [op, read, 'op://v/i/f'] }").unwrap();
        assert_eq!(p.describe(), "process op");
        assert!(matches!(p, SecretSource::Process { ttl, .. } if ttl == Duration::from_secs(300)));
        let err = p.read(Path::new(".")).unwrap_err().to_string();
        assert!(err.starts_with("process op refreshes"), "{err}");
        let o: SecretSource = serde_yaml::from_str(
            "{ type: oauth2, token_url: 'https://id.test/token?key=K', client_id: c, client_secret: { type: static, value: CANARY-cs }, refresh_token: { type: env, var: RT }, scope: repo }",
        )
        .unwrap();
        assert_eq!(o.describe(), "oauth2 https://id.test/token");
        assert!(o.refreshes());
        assert!(!format!("{o:?}").contains("CANARY"));
        assert!(serde_yaml::from_str::<SecretSource>(
            "{ type: process, command: [x], ttl: 5m, shell: true }"
        )
        .is_err());
    }
}
