//! The record of what warden did: the canonical log line (one per request, per blind tunnel,
//! per CONNECT refused at the front door and per failed client handshake) and the process
//! logger in `log`, and the Prometheus registry the line is counted into in
//! `metrics`. Called from the `logging` phase, the front door and the admin endpoint.

mod log;
mod metrics;

pub use self::log::{
    error_text, init_logger, redact_query, CanonicalLog, Capture, Kind, LogConfig, LogFormat,
    LogLevel, LogSettings, ACCESS_TARGET, FRAME_EXCERPT_BYTES,
};
pub use self::metrics::{Metrics, Open, DEFAULT_METRIC_CLIENTS, OTHER_CLIENTS};
