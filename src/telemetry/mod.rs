//! The record of what warden did: the canonical log line (one per request, per blind tunnel,
//! per CONNECT refused at the front door and per failed client handshake) and the process
//! logger in `log`, the log files it may write (each from its own thread) in `files`, and the
//! Prometheus registry the line is counted into in `metrics`. Called from the `logging` phase, the front door and the admin endpoint.

mod files;
mod log;
mod metrics;

pub use self::files::{describe, LogFileError, LogFiles, QUEUE_BYTES, QUEUE_LINES};
pub use self::log::{
    destination_changes, error_text, init_logger, log_destinations, log_lines_dropped,
    redact_query, reopen_log_files, CanonicalLog, Capture, Kind, LogConfig, LogFormat, LogLevel,
    LogSettings, ACCESS_TARGET, FRAME_EXCERPT_BYTES,
};
pub use self::metrics::{Metrics, Open, DEFAULT_METRIC_CLIENTS, OTHER_CLIENTS};
