//! The error every section compiler returns: which key is wrong and why, before the key is
//! located in the file. A leaf, so that the compilers (`policy`, `credentials`, `headers`, `llm`,
//! ...) depend on it and not on `config`, which turns these into located
//! [`ConfigError`](crate::config::ConfigError)s.

/// One compile error: the dotted key path (`proxy.auth.clients[1].token`) and what is wrong
/// with its value.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{key}: {message}")]
pub struct CompileError {
    /// The dotted key path, e.g. `network.resolve.a b`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl CompileError {
    /// An error at `key`.
    pub fn new(key: String, message: String) -> Self {
        CompileError { key, message }
    }

    /// The same error with `prefix.` before its key: a section compiled inside another one
    /// (a client's `network`) names keys from its own root.
    pub fn under(self, prefix: &str) -> Self {
        CompileError {
            key: format!("{prefix}.{}", self.key),
            message: self.message,
        }
    }
}

/// A section's compile errors: every one found, in the order found. [`Config::compile`]
/// locates them in the file.
///
/// [`Config::compile`]: crate::config::Config::compile
pub type CompileErrors = Vec<CompileError>;

/// The value of `result`, or `None` with its errors moved into `errors`: how a compile step
/// keeps going past a bad section to report the rest.
pub(crate) fn keep<T>(result: Result<T, CompileErrors>, errors: &mut CompileErrors) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            errors.extend(e);
            None
        }
    }
}
