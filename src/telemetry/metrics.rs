//! warden's Prometheus metrics: one owned registry per running instance, counted from the
//! canonical line as it is emitted (so the two never disagree) and from the front door, the
//! TLS layer and reloads. Rendered for the admin endpoint's `/metrics`.

use super::log::{CanonicalLog, Kind, LogSettings};
use crate::budget::{BudgetKey, Standing};
use crate::reason::Reason;
use crate::tls::Leaves;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

/// The `client` label of every client past `limits.metric_clients`.
pub const OTHER_CLIENTS: &str = "other";

/// `limits.metric_clients` when the file does not set it.
pub const DEFAULT_METRIC_CLIENTS: usize = 1000;

/// warden's metrics, in a registry owned by one running instance (no global registry, so two
/// instances can share a process). Label values come from bounded sets only.
pub struct Metrics {
    registry: Registry,
    denials: IntCounterVec,
    upstream_errors: IntCounterVec,
    injections: IntCounterVec,
    reloads: IntCounterVec,
    requests: IntCounterVec,
    durations: HistogramVec,
    bytes: IntCounterVec,
    /// Connections open now, by kind (plain, intercepted, tunnel, websocket).
    pub active: IntGaugeVec,
    /// Leaf mint latency.
    pub mint_duration: Histogram,
    names: Vec<String>,
    last_reload_success: IntGauge,
    generation: IntGauge,
    cert_cache_entries: IntGauge,
    cert_mints: IntCounter,
    client_handshakes: IntCounterVec,
    llm_requests: IntCounterVec,
    llm_tokens: IntCounterVec,
    accept_errors: IntCounterVec,
    admin_requests: IntCounterVec,
    /// Clients registered through the admin API now.
    pub clients_registered: IntGauge,
    /// 1 while the state store answers (always, for memory and embedded), 0 while it is down.
    pub state_available: IntGauge,
    budget_denials: IntCounterVec,
    budget_remaining: GaugeVec,
    credential_refreshes: IntCounterVec,
    log_lines_dropped: IntCounterVec,
    /// The latest standing of each labelled client's budgets, turned into the gauge at each
    /// scrape (a window that ended since reads as full).
    budget_standing: Mutex<HashMap<(String, &'static str), Standing>>,
    /// Client names with their own label, first come first labelled, up to `client_cap`.
    clients: RwLock<HashSet<String>>,
    client_cap: AtomicUsize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every warden metric registered.
    pub fn new() -> Self {
        // The definitions are constants: failing to build one is a bug, caught by the tests.
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("warden_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let denials = IntCounterVec::new(
            Opts::new(
                "warden_denials_total",
                "Requests and connections warden refused itself (4xx), by reason code.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "warden_upstream_errors_total",
                "Requests that failed toward the upstream (5xx), by reason code.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let injections = IntCounterVec::new(
            Opts::new(
                "warden_credential_injections_total",
                "Credentials injected into upstream requests, by grant (\"none\" without one).",
            ),
            &["grant"],
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "warden_config_reloads_total",
                "Config reloads, by result (success or failure).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let last_reload_success = IntGauge::new(
            "warden_config_last_reload_success",
            "1 if the last reload (or the start) succeeded, 0 if it failed.",
        )
        .expect("static metric definition");
        last_reload_success.set(1);
        let generation = IntGauge::new(
            "warden_config_generation",
            "The config generation in force: 1 at start, +1 per successful reload.",
        )
        .expect("static metric definition");
        generation.set(1);
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let requests = IntCounterVec::new(
            Opts::new(
                "warden_requests_total",
                "Exchanges recorded by a canonical log line, by kind, status class, client and the client's HTTP version.",
            ),
            &["kind", "status_class", "client", "http_version"],
        )
        .expect("static metric definition");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "warden_request_duration_seconds",
                "Time from the first byte read to the log line, by kind.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0,
            ]),
            &["kind"],
        )
        .expect("static metric definition");
        let bytes = IntCounterVec::new(
            Opts::new(
                "warden_bytes_total",
                "Body bytes (tunnels: all bytes) by direction: in from clients, out to clients.",
            ),
            &["direction"],
        )
        .expect("static metric definition");
        let active = IntGaugeVec::new(
            Opts::new(
                "warden_active_connections",
                "Client connections open now, by kind.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let mint_duration = Histogram::with_opts(
            HistogramOpts::new(
                "warden_cert_mint_duration_seconds",
                "Time to mint one leaf certificate.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )
        .expect("static metric definition");
        for kind in ["plain", "intercepted", "tunnel", "websocket"] {
            active.with_label_values(&[kind]);
        }
        for direction in ["in", "out"] {
            bytes.with_label_values(&[direction]);
        }
        let cert_cache_entries = IntGauge::new(
            "warden_cert_cache_entries",
            "Leaf certificates currently cached.",
        )
        .expect("static metric definition");
        let cert_mints = IntCounter::new(
            "warden_cert_mints_total",
            "Leaf certificates minted since start.",
        )
        .expect("static metric definition");
        let client_handshakes = IntCounterVec::new(
            Opts::new(
                "warden_client_tls_handshakes_total",
                "TLS handshakes completed with clients in intercepted tunnels, by whether the client resumed a session (true, false).",
            ),
            &["resumed"],
        )
        .expect("static metric definition");
        for resumed in ["true", "false"] {
            client_handshakes.with_label_values(&[resumed]);
        }
        let llm_requests = IntCounterVec::new(
            Opts::new(
                "warden_llm_requests_total",
                "LLM API calls, by provider, model (an allow_models match, else \"other\") and outcome (allowed, denied, would_deny, error).",
            ),
            &["provider", "model", "outcome"],
        )
        .expect("static metric definition");
        let llm_tokens = IntCounterVec::new(
            Opts::new(
                "warden_llm_tokens_total",
                "Tokens the providers reported (or warden estimated from the bytes, when a call ended without usage: tokens_estimated in the log line), by provider, model and kind (input or output).",
            ),
            &["provider", "model", "kind"],
        )
        .expect("static metric definition");
        let accept_errors = IntCounterVec::new(
            Opts::new(
                "warden_accept_errors_total",
                "Failed accepts on the proxy and admin listeners, by cause (fds: out of file descriptors, other).",
            ),
            &["cause"],
        )
        .expect("static metric definition");
        for cause in ["fds", "other"] {
            accept_errors.with_label_values(&[cause]);
        }
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "warden_admin_requests_total",
                "Clients API requests, by result (ok, refused: a 4xx for the request, unauthorized: no valid admin token).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        for result in ["ok", "refused", "unauthorized"] {
            admin_requests.with_label_values(&[result]);
        }
        let clients_registered = IntGauge::new(
            "warden_clients_registered",
            "Clients registered through the admin API.",
        )
        .expect("static metric definition");
        let state_available = IntGauge::new(
            "warden_state_available",
            "1 while the state store (state.backend) answers, 0 while it is down: registration then answers 503 and known clients keep working.",
        )
        .expect("static metric definition");
        state_available.set(1);
        let budget_denials = IntCounterVec::new(
            Opts::new(
                "warden_budget_denials_total",
                "Requests refused because the client spent a budget, by client and budget (the budget key, e.g. llm_tokens_per_minute).",
            ),
            &["client", "budget"],
        )
        .expect("static metric definition");
        let budget_remaining = GaugeVec::new(
            Opts::new(
                "warden_budget_remaining_ratio",
                "The share of each configured client budget left now, 0 to 1 (clients labelled \"other\" have none).",
            ),
            &["client", "budget"],
        )
        .expect("static metric definition");
        let credential_refreshes = IntCounterVec::new(
            Opts::new(
                "warden_credential_refreshes_total",
                "Refreshes of process and oauth2 secret sources, by outcome (ok, error).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let log_lines_dropped = IntCounterVec::new(
            Opts::new(
                "warden_log_lines_dropped_total",
                "Log lines a log file did not take, by file (log: log.file, access: log.access_file): its queue was full (the disk is slower than the traffic) or a write failed. Requests never wait on a log file.",
            ),
            &["file"],
        )
        .expect("static metric definition");
        for file in ["log", "access"] {
            log_lines_dropped.with_label_values(&[file]);
        }
        let mut collectors = vec![
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(durations.clone()),
            Box::new(bytes.clone()),
            Box::new(active.clone()),
            Box::new(mint_duration.clone()),
            Box::new(denials.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(injections.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(generation.clone()),
            Box::new(cert_cache_entries.clone()),
            Box::new(cert_mints.clone()),
            Box::new(client_handshakes.clone()),
            Box::new(llm_requests.clone()),
            Box::new(llm_tokens.clone()),
            Box::new(accept_errors.clone()),
            Box::new(admin_requests.clone()),
            Box::new(clients_registered.clone()),
            Box::new(state_available.clone()),
            Box::new(budget_denials.clone()),
            Box::new(budget_remaining.clone()),
            Box::new(credential_refreshes.clone()),
            Box::new(log_lines_dropped.clone()),
        ];
        // CPU seconds, resident memory, open and maximum file descriptors, read from /proc
        // at each scrape (`process_*`, the names every Prometheus exporter uses).
        #[cfg(target_os = "linux")]
        collectors.push(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let mut names = Vec::new();
        for c in collectors {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            let _ = registry.register(c);
        }
        Metrics {
            registry,
            denials,
            upstream_errors,
            injections,
            reloads,
            requests,
            durations,
            bytes,
            active,
            mint_duration,
            names,
            last_reload_success,
            generation,
            cert_cache_entries,
            cert_mints,
            client_handshakes,
            llm_requests,
            llm_tokens,
            accept_errors,
            admin_requests,
            clients_registered,
            state_available,
            budget_denials,
            budget_remaining,
            credential_refreshes,
            log_lines_dropped,
            budget_standing: Mutex::default(),
            clients: RwLock::default(),
            client_cap: AtomicUsize::new(DEFAULT_METRIC_CLIENTS),
        }
    }

    /// Brings `warden_credential_refreshes_total` up to the runtime's counts (at each scrape).
    pub fn refreshes_seen(&self, ok: u64, failed: u64) {
        for (outcome, count) in [("ok", ok), ("error", failed)] {
            let counter = self.credential_refreshes.with_label_values(&[outcome]);
            counter.inc_by(count.saturating_sub(counter.get()));
        }
    }

    /// Counts a clients API request by its result: `ok`, `refused` or `unauthorized`.
    pub fn admin_request(&self, result: &'static str) {
        self.admin_requests.with_label_values(&[result]).inc();
    }

    /// Sets `limits.metric_clients`: how many client names get a label of their own. Names
    /// already labelled keep theirs; a lower cap labels only new names `other`.
    pub fn cap_clients(&self, cap: usize) {
        self.client_cap.store(cap, Ordering::Relaxed);
    }

    /// The `client` label for `name`: its own while fewer than `limits.metric_clients`
    /// names have one (or it already has one), else [`OTHER_CLIENTS`].
    pub fn client_label<'a>(&self, name: &'a str) -> &'a str {
        // Every line asks: the common answer takes only the shared lock.
        let known = self.clients.read().unwrap_or_else(|p| p.into_inner());
        if known.contains(name) {
            return name;
        }
        drop(known);
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        if clients.contains(name) || clients.len() < self.client_cap.load(Ordering::Relaxed) {
            clients.insert(name.to_string());
            return name;
        }
        OTHER_CLIENTS
    }

    /// Counts a request `client` sent that budget `key` refused.
    pub fn budget_denied(&self, client: &str, key: BudgetKey) {
        let label = self.client_label(client);
        self.budget_denials
            .with_label_values(&[label, key.name()])
            .inc();
    }

    /// Records how much of each of `client`'s budgets is left. A client labelled `other`
    /// gets no gauge: shares of different clients' budgets do not add up.
    pub fn budget_standing(&self, client: &str, standing: &[(BudgetKey, Standing)]) {
        let label = self.client_label(client);
        if label == OTHER_CLIENTS && client != OTHER_CLIENTS {
            return;
        }
        let mut map = self
            .budget_standing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (key, s) in standing {
            map.insert((label.to_string(), key.name()), *s);
        }
    }

    /// Reads every recorded window's use again (`used(client, budget, window start)`), so the
    /// gauge is current at the scrape: with a store shared by a fleet, other instances' use
    /// shows as soon as it is synced.
    pub fn refresh_budget_windows(&self, used: impl Fn(&str, BudgetKey, u64) -> u64) {
        let mut map = self
            .budget_standing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for ((client, name), s) in map.iter_mut() {
            let Some(key) = BudgetKey::ALL.into_iter().find(|k| k.name() == *name) else {
                continue;
            };
            if let Standing::Window {
                used: u, ends_ms, ..
            } = s
            {
                let window = match key.window_secs() {
                    Some(w) => (*ends_ms / 1000).saturating_sub(w),
                    None => 0,
                };
                *u = used(client, key, window);
            }
        }
    }

    /// Forgets every budget gauge: after a reload, before the budgets in force are recorded
    /// again, so a budget no longer configured stops being reported.
    pub fn clear_budget_standing(&self) {
        let mut map = self
            .budget_standing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.clear();
        self.budget_remaining.reset();
    }

    /// Counts a failed accept; `fds` when the process is out of file descriptors.
    pub fn accept_error(&self, fds: bool) {
        let cause = if fds { "fds" } else { "other" };
        self.accept_errors.with_label_values(&[cause]).inc();
    }

    /// Counts a completed client TLS handshake in an intercepted tunnel.
    pub fn client_handshake(&self, resumed: bool) {
        let label = if resumed { "true" } else { "false" };
        self.client_handshakes.with_label_values(&[label]).inc();
    }

    /// Counts a connection of `kind` as open until the returned guard is dropped.
    pub fn open(&self, kind: Kind) -> Open {
        let gauge = self.active.with_label_values(&[kind.as_str()]);
        gauge.inc();
        Open(gauge)
    }

    /// Every metric name this registry exports (for the dashboard test).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Counts what a canonical line records, then emits it: the one place per-exchange
    /// metrics and the log line are produced, so they cannot disagree.
    pub fn record(&self, mut line: CanonicalLog, settings: LogSettings) {
        // Every writer of `error` gets the same shape: no padding, never an empty string.
        line.error = line
            .error
            .take()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty());
        let kind = line.kind.as_str();
        let status_class = match line.status {
            Some(s) => ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .get((s / 100).saturating_sub(1) as usize)
                .copied()
                .unwrap_or("other"),
            None => "none",
        };
        let client = line.client.as_deref().map_or("-", |c| self.client_label(c));
        let version = line.http_version.unwrap_or("-");
        self.requests
            .with_label_values(&[kind, status_class, client, version])
            .inc();
        self.durations
            .with_label_values(&[kind])
            .observe(line.duration_ms / 1000.0);
        self.bytes.with_label_values(&["in"]).inc_by(line.bytes_in);
        self.bytes
            .with_label_values(&["out"])
            .inc_by(line.bytes_out);
        if let (Some(provider), Some((model, outcome))) = (line.provider, &line.llm_labels) {
            self.llm_requests
                .with_label_values(&[provider, model, outcome])
                .inc();
            for (kind, n) in [("input", line.input_tokens), ("output", line.output_tokens)] {
                if let Some(n) = n {
                    self.llm_tokens
                        .with_label_values(&[provider, model, kind])
                        .inc_by(n);
                }
            }
        }
        line.emit(settings);
    }

    /// Records a reload attempt and the generation now in force.
    pub fn reloaded(&self, success: bool, generation: u64) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        self.last_reload_success.set(i64::from(success));
        self.generation.set(generation as i64);
    }

    /// Counts one injected credential under its configured grant.
    pub fn injected(&self, grant: Option<&str>) {
        self.injections
            .with_label_values(&[grant.unwrap_or("none")])
            .inc();
    }

    /// Counts a response warden wrote itself for `reason`: 4xx as a denial, 5xx as an
    /// upstream error, labelled with the same code as the body and the log line.
    pub fn refused(&self, reason: Reason) {
        let family = if reason.status() < 500 {
            &self.denials
        } else {
            &self.upstream_errors
        };
        family.with_label_values(&[reason.code()]).inc();
    }

    /// The Prometheus text for a scrape, with the certificate figures read from `leaves`.
    pub fn render(&self, leaves: &Leaves) -> Vec<u8> {
        self.cert_cache_entries.set(leaves.cached() as i64);
        let now_ms = crate::budget::now_ms();
        let standing = self
            .budget_standing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for ((client, key), s) in standing.iter() {
            self.budget_remaining
                .with_label_values(&[client.as_str(), key])
                .set(s.remaining_at(now_ms));
        }
        drop(standing);
        let minted = leaves.mints();
        let seen = self.cert_mints.get();
        if minted > seen {
            self.cert_mints.inc_by(minted - seen);
        }
        // The process logger's files are the process's, not this instance's: their counts
        // are read at each scrape, as the mints are.
        for (file, dropped) in super::log::log_lines_dropped() {
            let counter = self.log_lines_dropped.with_label_values(&[file]);
            let seen = counter.get();
            if dropped > seen {
                counter.inc_by(dropped - seen);
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("encoding metrics failed: {e}");
        }
        out
    }
}

/// An open connection, counted in `warden_active_connections` until dropped.
#[derive(Debug)]
pub struct Open(IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
