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

impl Shared {
    /// After the start and every successful reload: `limits.metric_clients` applied, and the
    /// budget gauges recorded afresh from the counts for the clients and budgets now in
    /// force (a budget no longer configured stops being reported; one kept keeps its counts).
    pub fn configured(&self) {
        let snap = self.snapshot.load();
        self.metrics.cap_clients(snap.limits.metric_clients);
        self.metrics.clear_budget_standing();
        let now = crate::budget::now_ms();
        for client in snap.auth.iter().flat_map(|a| a.iter()) {
            if let Some(budget) = &client.profile.budget {
                let standing = self.runtime.budgets.standing(&client.name, budget, now);
                self.metrics.budget_standing(&client.name, &standing);
            }
        }
    }
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
