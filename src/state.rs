//! The state every connection and request shares: the config snapshot in force, warden's own
//! addresses, metrics, the LLM upstream connector and the runtime state. Built once by `server::start`, swapped
//! into by `reload`, read by the front door, every phase and the admin endpoint.

use crate::config::Snapshot;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;

/// State shared by the front door and every request: the current config snapshot and
/// warden's own listener addresses (never a destination: loop detection).
#[derive(Debug)]
pub struct Shared {
    /// The compiled config; loaded once per connection (front door) or request (`new_ctx`).
    pub snapshot: ArcSwap<Snapshot>,
    /// The bound proxy and admin addresses.
    pub own_addrs: Vec<std::net::SocketAddr>,
    /// This instance's metrics.
    pub metrics: Metrics,
    /// The config generation in force (1 at start, +1 per successful reload).
    pub generation: std::sync::atomic::AtomicU64,
    /// The upstream connector LLM exchanges use.
    pub connector: LlmConnector,
    /// What lives across reloads: leaves, DNS answers, correlation sessions, secret files.
    pub runtime: crate::runtime::Runtime,
}

/// Pingora's upstream connector for LLM exchanges (its own pool).
pub struct LlmConnector(pub pingora_core::connectors::http::Connector);

impl std::fmt::Debug for LlmConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LlmConnector")
    }
}

impl Default for LlmConnector {
    fn default() -> Self {
        LlmConnector(pingora_core::connectors::http::Connector::new(None))
    }
}
