//! The user-facing config error: located in the file (path, key, line) and displayed the way
//! `warden check` and a failed start or reload print it.

use std::fmt;
use std::path::PathBuf;

/// A config error: which key, on which line (when known), and what is wrong with it.
// Display is written by hand: what it starts with depends on which of file and line are known.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: Option<PathBuf>,
    /// The dotted key path, e.g. `tls.ca_key`.
    pub key: Option<String>,
    /// 1-based line of the key in the file.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every error `compile` found, in file order; never empty. Displayed one per line.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub(super) Vec<ConfigError>);

impl ConfigErrors {
    /// The first error in file order.
    pub fn first(&self) -> &ConfigError {
        // Built only from a non-empty list (see `Config::errors` and `From<ConfigError>`).
        &self.0[0]
    }

    /// Every error, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
