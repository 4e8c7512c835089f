//! Runtime state: what lives across reloads, held beside the config snapshot in the shared
//! state. The snapshot is pure data compiled from the file; this owns the caches and counters
//! requests build up — minted leaves, DNS answers, correlation sessions, secret files read and refreshed
//! values, the echoed-secret maskers, the clients' budget counts and assumed AWS roles. A reload swaps the snapshot and leaves this alone, so no
//! compile step carries anything over.

use crate::budget::Budgets;
use crate::config::Snapshot;
use crate::correlation::Sessions;
use crate::credentials::SourceCache;
use crate::policy::DnsCache;
use crate::registry::Registry;
use crate::scrub::Maskers;
use crate::tls::Leaves;

/// State that outlives any one config snapshot.
#[derive(Debug)]
pub struct Runtime {
    /// Leaves minted per CA and host.
    pub leaves: Leaves,
    /// System-resolver answers (`network.resolve` overrides are config, not cached here).
    pub dns: DnsCache,
    /// Correlation sessions: id and numbering.
    pub sessions: Sessions,
    /// Secret files read, by path and stamp.
    pub sources: SourceCache,
    /// Built echoed-secret maskers.
    pub maskers: Maskers,
    /// Clients registered through the admin API.
    pub registry: Registry,
    /// Budget counts per client name: a client whose budget changes keeps them.
    pub budgets: Budgets,
    /// Assumed AWS role sessions, per role.
    pub aws: crate::aws::sessions::Sessions,
}

impl Runtime {
    /// The runtime for the first snapshot (its `limits.cert_cache_entries` sizes the leaf
    /// cache for the life of the process).
    pub fn new(first: &Snapshot) -> Self {
        let runtime = Runtime {
            leaves: Leaves::new(first.limits.cert_cache_entries),
            ..Runtime::default()
        };
        runtime
            .sources
            .refreshers
            .set_roots(first.tls.upstream_roots.clone());
        runtime
    }

    /// After a reload to `snap`: registered clients compiled over the new top level, and
    /// correlation sessions no section numbers in any more end.
    pub fn reloaded(&self, snap: &Snapshot) {
        self.sources
            .refreshers
            .set_roots(snap.tls.upstream_roots.clone());
        self.registry.recompile(snap);
        let registered = self.registry.profiles();
        let theirs = registered.iter().filter_map(|p| p.correlation.as_deref());
        self.sessions.retain(snap.correlations().chain(theirs));
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            leaves: Leaves::new(crate::config::Limits::default().cert_cache_entries),
            dns: DnsCache::default(),
            sessions: Sessions::default(),
            sources: SourceCache::default(),
            maskers: Maskers::default(),
            registry: Registry::default(),
            budgets: Budgets::default(),
            aws: Default::default(),
        }
    }
}
