//! Loads `warden.yaml` (the CONFIG.md contract) into typed per-section config and compiles it
//! into the immutable [`Snapshot`] that the front door reads once per connection and the
//! ProxyHttp phases read once per request (`new_ctx`). `compile()` is where files are read and
//! cross-field rules checked; it never panics, and every error names the key and its line.

mod error;
mod locate;

pub use error::{ConfigError, ConfigErrors};
pub use locate::locate;

use crate::auth::{AuthConfig, Client, ClientConfig, Clients};
use crate::compile_error::{keep, CompileError, CompileErrors};
use crate::correlation::{Correlation, CorrelationConfig};
use crate::credentials::CredentialConfig;
use crate::headers::HeaderRuleConfig;
use crate::policy::{HostPattern, NetworkConfig};
use crate::profile::{Profile, ProfileConfig};
use crate::secret::{Secret, SecretSource};
use crate::substitution::SubstitutionConfig;
use crate::telemetry::LogConfig;
use crate::tls::{CertAuthority, TlsConfig, TlsPolicy};
use locate::from_yaml_error;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The file as written (the CONFIG.md shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Config format version; only `1` exists.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The forward proxy listener.
    pub proxy: ProxyConfig,
    /// The admin listener (health endpoints and metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The CA, interception and upstream trust.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Name resolution (and, later, network policy).
    #[serde(default)]
    pub network: NetworkConfig,
    /// Log level and format.
    #[serde(default)]
    pub log: LogConfig,
    /// Timeouts and bounds.
    #[serde(default)]
    pub limits: Limits,
    /// Secrets injected per destination.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Headers set on and removed from upstream requests, per destination.
    #[serde(default)]
    pub headers: Vec<HeaderRuleConfig>,
    /// Placeholders the agent holds, swapped for secrets toward their host.
    #[serde(default)]
    pub substitutions: Vec<SubstitutionConfig>,
    /// Model and tool-call policy per LLM API host.
    #[serde(default)]
    pub llm: Vec<crate::llm::LlmConfig>,
    /// Tool policy per MCP endpoint.
    #[serde(default)]
    pub mcp: Vec<crate::mcp::McpConfig>,
    /// Response transformers per destination.
    #[serde(default)]
    pub transforms: Vec<crate::transform::TransformConfig>,
    /// Session id and sequence headers on matching requests.
    #[serde(default)]
    pub correlation: Option<CorrelationConfig>,
    /// Where clients registered at runtime are kept.
    #[serde(default)]
    pub state: crate::store::StateConfig,
    /// Named targets reached as `/relay/{name}/…` on the proxy port.
    #[serde(default)]
    pub relays: Vec<crate::relay::RelayConfig>,
    /// The AWS role agents get credentials of, and the hosts whose requests are re-signed.
    #[serde(default)]
    pub aws: Option<crate::aws::AwsConfig>,
    /// A parent proxy upstream connections go through.
    #[serde(default)]
    pub upstream_proxy: Option<crate::parent::UpstreamProxyConfig>,
}

fn default_version() -> u32 {
    1
}

/// `proxy`: the forward-proxy listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address of the one listener for absolute-form HTTP and CONNECT.
    pub listen: SocketAddr,
    /// Client authentication; absent means none.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Allow a non-loopback `listen` without `auth`.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Connections the kernel queues before warden accepts them (capped by the kernel's
    /// `net.core.somaxconn`). Needs a restart to change.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Whether connections start with a PROXY protocol header (from an L4 load balancer).
    #[serde(default)]
    pub proxy_protocol: crate::proxy_protocol::Mode,
}

fn default_backlog() -> u32 {
    4096
}

/// `admin`: where `/healthz`, `/readyz` and `/metrics` are served; absent = no admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin listener address.
    pub listen: Option<SocketAddr>,
    /// Enables the clients API (`/v1/clients`, `Authorization: Bearer`).
    #[serde(default)]
    pub token: Option<SecretSource>,
    /// Requires `Authorization: Bearer` on `/metrics`.
    #[serde(default)]
    pub metrics_token: Option<SecretSource>,
    /// Serves the admin listener over TLS.
    #[serde(default)]
    pub tls: Option<AdminTls>,
    /// Allows the clients API beyond loopback without `tls`.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// The compiled `state` section.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// `state.backend`.
    pub backend: crate::store::Backend,
    /// `state.path`, resolved.
    pub path: Option<PathBuf>,
    /// `state.url`.
    pub url: Option<String>,
    /// `state.key_prefix`.
    pub key_prefix: String,
    /// `state.on_unavailable`.
    pub on_unavailable: crate::store::OnUnavailable,
    /// Seals registered clients' secret values (`state.encryption_key`).
    pub sealer: Option<Arc<crate::store::Sealer>>,
}

/// `admin.tls`: the admin listener's certificate chain and key (PEM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// `limits`: every wait and buffer is bounded; these are the knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head accepted (bytes).
    pub max_request_header_bytes: usize,
    /// A whole request head must arrive within this, on every request of a connection: on
    /// the first from the connection's start (or the end of the tunnel's TLS handshake), on
    /// later ones from their first byte.
    #[serde(with = "humantime_serde")]
    pub request_header_timeout: Duration,
    /// A request body may pause at most this long between reads.
    #[serde(with = "humantime_serde")]
    pub request_body_idle_timeout: Duration,
    /// Largest upstream response head accepted (bytes); a larger one gets `502
    /// upstream_header_too_large`.
    pub max_response_header_bytes: usize,
    /// Most bytes of an LLM request or response (or of a held tool call) buffered to check it.
    pub llm_buffer_bytes: usize,
    /// While a tool call is held, an SSE keep-alive comment is sent this often.
    #[serde(with = "humantime_serde")]
    pub llm_keepalive_interval: Duration,
    /// TCP (+TLS) connect to an upstream.
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// Wait for the upstream's response (and between reads of it).
    #[serde(with = "humantime_serde")]
    pub upstream_first_byte_timeout: Duration,
    /// Idle keep-alive connections, tunnels and WebSockets are closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most leaf certificates kept in the cache.
    pub cert_cache_entries: usize,
    /// On SIGTERM, how long in-flight requests may take to finish before exit.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most streams open at once on one HTTP/2 client connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub h2_max_concurrent_streams: u32,
    /// Most `RST_STREAM` frames a client may send in one second before the connection gets a
    /// `GOAWAY` (rapid reset, CVE-2023-44487).
    pub h2_max_resets_per_second: u32,
    /// Most `PING` frames a client may send in one second.
    pub h2_max_pings_per_second: u32,
    /// Most `SETTINGS` frames a client may send in one second.
    pub h2_max_settings_per_second: u32,
    /// Receive window of one HTTP/2 stream: what a client may send before warden reads it.
    pub h2_stream_window_bytes: u32,
    /// Receive window of a whole HTTP/2 connection, across its streams.
    pub h2_connection_window_bytes: u32,
    /// Most distinct client names given their own `client` metric label; later ones are
    /// labelled `other`, so a large or changing client list cannot grow the metrics unbounded.
    pub metric_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: 64 * 1024,
            request_header_timeout: Duration::from_secs(10),
            request_body_idle_timeout: Duration::from_secs(30),
            max_response_header_bytes: 64 * 1024,
            llm_buffer_bytes: 10 * 1024 * 1024,
            llm_keepalive_interval: Duration::from_secs(5),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            cert_cache_entries: 10_000,
            shutdown_grace: Duration::from_secs(10),
            h2_max_concurrent_streams: 100,
            h2_max_resets_per_second: 100,
            h2_max_pings_per_second: 100,
            h2_max_settings_per_second: 20,
            h2_stream_window_bytes: 256 * 1024,
            h2_connection_window_bytes: 1024 * 1024,
            metric_clients: crate::telemetry::DEFAULT_METRIC_CLIENTS,
        }
    }
}

/// A parsed config file and where it came from (relative paths resolve against its folder).
#[derive(Debug)]
pub struct Config {
    /// The typed content.
    pub file: FileConfig,
    /// The source text, kept so compile errors can point at a line.
    pub text: String,
    /// The file's path, when it came from one.
    pub path: Option<PathBuf>,
    /// The folder relative paths are resolved against.
    pub base_dir: PathBuf,
}

/// Options for [`Config::compile`].
#[derive(Debug, Clone, Copy)]
pub struct CompileOptions {
    /// Write a new CA pair when both files are absent (`run`, `ca`); otherwise (`check`) an
    /// absent pair is replaced by an in-memory CA so the rest is still validated.
    pub create_ca: bool,
}

/// The compiled, immutable runtime form of a config. One `Arc<Snapshot>` is loaded per request.
#[derive(Debug)]
pub struct Snapshot {
    /// The forward proxy listen address.
    pub proxy_listen: SocketAddr,
    /// The proxy listener's accept queue length (`proxy.backlog`).
    pub proxy_backlog: u32,
    /// `proxy.proxy_protocol`: read per connection, so a reload applies to new ones.
    pub proxy_protocol: crate::proxy_protocol::Mode,
    /// The admin listen address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// `admin.token`, read: the clients API is on (and proxy auth with it).
    pub admin_token: Option<Secret>,
    /// `admin.metrics_token`, read: `/metrics` wants it as a Bearer token.
    pub metrics_token: Option<Secret>,
    /// `admin.tls`, paths resolved.
    pub admin_tls: Option<AdminTls>,
    /// The config file's folder: relative paths in registered clients resolve against it.
    pub base_dir: PathBuf,
    /// `state`, compiled (read once at start: changing it needs a restart).
    pub state: StateSettings,
    /// Interception decisions, the CA, leaf cache and upstream trust.
    pub tls: TlsPolicy,
    /// The clients, when `proxy.auth` is configured, each with its profile.
    pub auth: Option<Clients>,
    /// The profile of every client without sections of its own (and of every request when
    /// auth is off): the top-level sections.
    pub profile: Arc<Profile>,
    /// Log level and format.
    pub log: crate::telemetry::LogSettings,
    /// `log.file` and `log.access_file`, resolved (opened once, at start: a reload that
    /// changes them warns and keeps the files in use).
    pub log_files: crate::telemetry::LogFiles,
    /// Timeouts and bounds.
    pub limits: Limits,
    /// `relays`, compiled.
    pub relays: crate::relay::Relays,
    /// `upstream_proxy`, compiled: the parent proxy, if any.
    pub upstream_proxy: Option<Arc<crate::parent::Parent>>,
}

impl Snapshot {
    /// Whether requests must authenticate: clients in the file, or the clients API on.
    pub fn requires_auth(&self) -> bool {
        self.auth.is_some() || self.admin_token.is_some()
    }

    /// The profile `client` runs under: its own, or the default one.
    pub fn profile<'a>(&'a self, client: Option<&'a Client>) -> &'a Arc<Profile> {
        client.map_or(&self.profile, |c| &c.profile)
    }

    /// Every correlation section in force: the default profile's and the clients' own.
    pub fn correlations(&self) -> impl Iterator<Item = &Correlation> {
        let clients = self.auth.iter().flat_map(|a| a.iter());
        std::iter::once(&self.profile)
            .chain(clients.map(|c| &c.profile))
            .filter_map(|p| p.correlation.as_deref())
    }
}

impl Config {
    /// Reads and parses `path`. Errors name the file, key and line.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            key: None,
            line: None,
            message: format!("cannot read config file: {e}"),
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cfg = Config::parse(&text, &base_dir).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses YAML text; relative paths in it resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = serde_yaml::from_str(text).map_err(|e| from_yaml_error(&e, text))?;
        // Maps with free keys (`network.resolve`, `headers[].set`) keep the last of two equal
        // keys without a word; YAML forbids them, so refuse them as struct fields are.
        serde_yaml::from_str::<serde_yaml::Value>(text).map_err(|e| from_yaml_error(&e, text))?;
        if file.version != 1 {
            return Err(ConfigError {
                file: None,
                key: Some("version".into()),
                line: locate(text, "version"),
                message: format!(
                    "unsupported version {}; this warden reads version 1",
                    file.version
                ),
            });
        }
        Ok(Config {
            file,
            text: text.to_string(),
            path: None,
            base_dir: base_dir.to_path_buf(),
        })
    }

    /// An error about `key`, located in this file.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            key: Some(key.to_string()),
            line: locate(&self.text, key),
            message: message.into(),
        }
    }

    /// Resolves a path from the file against the config's folder.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Validates everything, reads the CA (creating it if allowed and absent) and the upstream
    /// trust file, and returns the runtime snapshot: pure data, so a reload compiles the same
    /// way (what lives across reloads is in [`crate::runtime::Runtime`]). Every section is
    /// compiled even when an earlier one failed, so the error lists everything wrong with the
    /// file.
    pub fn compile(&self, opts: CompileOptions) -> Result<Snapshot, ConfigErrors> {
        let f = &self.file;
        let mut errors: CompileErrors = Vec::new();
        let mut fail =
            |key: &str, message: &str| errors.push(CompileError::new(key.into(), message.into()));
        // Port 0 asks for an ephemeral port each, so two of them never collide.
        if f.admin.listen == Some(f.proxy.listen) && f.proxy.listen.port() != 0 {
            fail("admin.listen", "must differ from proxy.listen");
        }
        if f.limits.cert_cache_entries == 0 {
            fail("limits.cert_cache_entries", "must be at least 1");
        }
        if f.limits.llm_buffer_bytes < 1024 {
            fail("limits.llm_buffer_bytes", "must be at least 1024");
        }
        if f.limits.max_request_header_bytes < 1024 {
            fail("limits.max_request_header_bytes", "must be at least 1024");
        }
        if f.limits.max_response_header_bytes < 1024 {
            fail("limits.max_response_header_bytes", "must be at least 1024");
        }
        if f.proxy.backlog == 0 {
            fail("proxy.backlog", "must be at least 1");
        }
        for (key, n) in [
            (
                "limits.h2_max_concurrent_streams",
                f.limits.h2_max_concurrent_streams,
            ),
            (
                "limits.h2_max_resets_per_second",
                f.limits.h2_max_resets_per_second,
            ),
            (
                "limits.h2_max_pings_per_second",
                f.limits.h2_max_pings_per_second,
            ),
            (
                "limits.h2_max_settings_per_second",
                f.limits.h2_max_settings_per_second,
            ),
        ] {
            if n == 0 {
                fail(key, "must be at least 1");
            }
        }
        // RFC 9113 §6.5.2 and §6.9.1: at least the protocol's default, at most 2^31 - 1.
        for (key, n) in [
            (
                "limits.h2_stream_window_bytes",
                f.limits.h2_stream_window_bytes,
            ),
            (
                "limits.h2_connection_window_bytes",
                f.limits.h2_connection_window_bytes,
            ),
        ] {
            if !(65_535..=(1 << 31) - 1).contains(&n) {
                fail(key, "must be between 65535 and 2147483647");
            }
        }
        for (key, d) in [
            (
                "limits.upstream_connect_timeout",
                f.limits.upstream_connect_timeout,
            ),
            (
                "limits.upstream_first_byte_timeout",
                f.limits.upstream_first_byte_timeout,
            ),
            ("limits.idle_timeout", f.limits.idle_timeout),
            (
                "limits.request_header_timeout",
                f.limits.request_header_timeout,
            ),
            (
                "limits.request_body_idle_timeout",
                f.limits.request_body_idle_timeout,
            ),
            (
                "limits.llm_keepalive_interval",
                f.limits.llm_keepalive_interval,
            ),
        ] {
            if d.is_zero() {
                fail(key, "must be longer than zero");
            }
        }
        let admin_token = match (&f.admin.token, f.admin.listen) {
            (None, _) => None,
            (Some(_), None) => {
                fail(
                    "admin.token",
                    "needs admin.listen: the clients API is served there",
                );
                None
            }
            (Some(source), Some(listen)) => {
                if !listen.ip().is_loopback() && f.admin.tls.is_none() && !f.admin.allow_plaintext {
                    fail(
                        "admin.listen",
                        "serves the clients API beyond loopback: set admin.tls, or admin.allow_plaintext: true",
                    );
                }
                source
                    .read(&self.base_dir)
                    .map_err(|e| fail("admin.token", &e.to_string()))
                    .ok()
            }
        };
        let metrics_token = f.admin.metrics_token.as_ref().and_then(|source| {
            if f.admin.listen.is_none() {
                fail(
                    "admin.metrics_token",
                    "needs admin.listen: /metrics is served there",
                );
            }
            source
                .read(&self.base_dir)
                .map_err(|e| fail("admin.metrics_token", &e.to_string()))
                .ok()
        });
        let admin_tls = f.admin.tls.as_ref().map(|t| AdminTls {
            cert: self.resolve_path(&t.cert),
            key: self.resolve_path(&t.key),
        });
        if f.proxy.auth.is_none()
            && admin_token.is_none()
            && !f.proxy.listen.ip().is_loopback()
            && !f.proxy.allow_unauthenticated
        {
            fail(
                "proxy.listen",
                "listens beyond loopback without proxy.auth; configure clients, or set proxy.allow_unauthenticated: true",
            );
        }
        let state = self.state_settings(&mut errors);
        let log_files = f
            .log
            .files(|p| self.resolve_path(p))
            .map_err(|es| {
                for (key, message) in es {
                    errors.push(CompileError::new(key.into(), message));
                }
            })
            .unwrap_or_default();
        let relays = keep(crate::relay::compile(&f.relays, "relays"), &mut errors);
        let upstream_proxy = match &f.upstream_proxy {
            None => None,
            Some(c) => match c.compile(&self.base_dir) {
                Ok(parent) => Some(Arc::new(parent)),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
        };
        let (profile, profile_errors) =
            crate::profile::compile_lenient(&self.sections(), None, "", &self.base_dir);
        errors.extend(profile_errors);
        let profile = profile.map(Arc::new);
        let auth = match (&f.proxy.auth, &profile) {
            (Some(a), Some(default)) => {
                keep(a.compile(&self.base_dir, default), &mut errors).map(Some)
            }
            (Some(a), None) => {
                // The top level failed (its errors are listed): the clients are still checked,
                // over the top-level credentials alone so their grants resolve, and their own
                // errors are listed too.
                let credentials = ProfileConfig {
                    credentials: Some(&f.credentials),
                    ..ProfileConfig::default()
                };
                let (fallback, _) =
                    crate::profile::compile_lenient(&credentials, None, "", &self.base_dir);
                if let Some(fallback) = fallback {
                    let _ = keep(a.compile(&self.base_dir, &Arc::new(fallback)), &mut errors);
                }
                None
            }
            (None, _) => Some(None),
        };
        let ca = CertAuthority::load_or_create(
            &self.resolve_path(&f.tls.ca_cert),
            &self.resolve_path(&f.tls.ca_key),
            opts.create_ca,
        )
        .map_err(|e| errors.push(CompileError::new(e.key().into(), e.to_string())))
        .ok();
        let tls = match ca {
            Some(ca) => f
                .tls
                .compile(Arc::new(ca), |p| self.resolve_path(p))
                .map(Some),
            // Without a CA there is no policy to build, but the trust file is still checked.
            None => f.tls.upstream_roots(|p| self.resolve_path(p)).map(|_| None),
        }
        .map_err(|e| errors.push(CompileError::new(e.key().into(), e.to_string())))
        .ok()
        .flatten();
        let (Some(tls), Some(auth), Some(profile), Some(relays)) = (tls, auth, profile, relays)
        else {
            return Err(self.errors(errors));
        };
        if !errors.is_empty() {
            return Err(self.errors(errors));
        }
        Ok(Snapshot {
            proxy_listen: f.proxy.listen,
            proxy_backlog: f.proxy.backlog,
            proxy_protocol: f.proxy.proxy_protocol,
            admin_listen: f.admin.listen,
            admin_token,
            metrics_token,
            admin_tls,
            base_dir: self.base_dir.clone(),
            state,
            tls,
            auth,
            profile,
            log: f.log.compile(),
            log_files,
            limits: f.limits.clone(),
            relays,
            upstream_proxy,
        })
    }

    /// The `state` section: `embedded` needs a `path`; the key is read now.
    fn state_settings(&self, errors: &mut CompileErrors) -> StateSettings {
        let st = &self.file.state;
        if st.backend == crate::store::Backend::Embedded && st.path.is_none() {
            errors.push(CompileError::new(
                "state.path".into(),
                "is required with state.backend: embedded (the store file)".into(),
            ));
        }
        if st.backend == crate::store::Backend::Redis {
            match &st.url {
                None => errors.push(CompileError::new(
                    "state.url".into(),
                    "is required with state.backend: redis (redis://host:port/db)".into(),
                )),
                Some(url) if redis::Client::open(url.as_str()).is_err() => errors.push(
                    CompileError::new("state.url".into(), "is not a redis:// URL".into()),
                ),
                Some(_) => {}
            }
        }
        let sealer = st.encryption_key.as_ref().and_then(|source| {
            source
                .read(&self.base_dir)
                .map_err(|e| {
                    errors.push(CompileError::new(
                        "state.encryption_key".into(),
                        e.to_string(),
                    ))
                })
                .ok()
                .map(|key| Arc::new(crate::store::Sealer::new(&key)))
        });
        StateSettings {
            backend: st.backend,
            path: st.path.as_ref().map(|p| self.resolve_path(p)),
            url: st.url.clone(),
            key_prefix: st.key_prefix.clone(),
            on_unavailable: st.on_unavailable,
            sealer,
        }
    }

    /// The top-level sections: the default profile, inherited by every client.
    pub fn sections(&self) -> ProfileConfig<'_> {
        let f = &self.file;
        ProfileConfig {
            client: None,
            network: Some(&f.network),
            credentials: Some(&f.credentials),
            headers: Some(&f.headers),
            substitutions: Some(&f.substitutions),
            llm: Some(&f.llm),
            mcp: Some(&f.mcp),
            transforms: Some(&f.transforms),
            correlation: Some(f.correlation.as_ref()),
            budget: None,
            aws: Some(f.aws.as_ref()),
        }
    }

    /// Compile errors located in this file, in file order.
    fn errors(&self, errors: CompileErrors) -> ConfigErrors {
        let mut list: Vec<ConfigError> = errors
            .into_iter()
            .map(|e| self.error(&e.key, e.message))
            .collect();
        // Unlocated errors last; the sort is stable, so one line's errors keep their order.
        list.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        if list.is_empty() {
            // Every section that failed pushed its errors; this only guards the invariant.
            list.push(ConfigError {
                file: self.path.clone(),
                key: None,
                line: None,
                message: "does not compile".into(),
            });
        }
        ConfigErrors(list)
    }
}

/// What `warden check` reports besides errors, each located like a [`ConfigError`]. Nothing
/// in it holds a secret value: sources are named by variable or path, never by content.
#[derive(Debug, Default)]
pub struct Findings {
    /// What will fail at request time as things stand: secret sources that cannot be read
    /// now. Not errors, because sources are read live and may appear later; `check --strict`
    /// makes them errors.
    pub warnings: Vec<ConfigError>,
    /// What works as written but may surprise: an entry whose host has no port (80 and 443
    /// only) while the allow list names that host only on other ports.
    pub notes: Vec<ConfigError>,
}

impl Config {
    /// Looks for what `compile` accepts but will fail or surprise later: reads every secret
    /// source that requests read live (credentials and substitutions, top level and per
    /// client) and compares portless entries with the allow list. Client tokens are not here:
    /// they are read by `compile`, which refuses an unreadable one.
    pub fn findings(&self) -> Findings {
        let mut findings = Findings {
            warnings: self.unreadable_sources(),
            notes: self.port_notes(),
        };
        findings.notes.extend(self.relay_notes());
        findings.notes.extend(self.refreshing_notes());
        if self.file.proxy.proxy_protocol == crate::proxy_protocol::Mode::Optional {
            findings.notes.push(self.error(
                "proxy.proxy_protocol",
                "optional: anyone who can reach the proxy port can send a PROXY header and claim any client address (logs, metrics); behind a load balancer use required, and let only the balancer reach the port".to_string(),
            ));
        }
        let clients = self
            .file
            .proxy
            .auth
            .iter()
            .flat_map(|a| a.clients.iter().enumerate());
        let aws = clients
            .filter_map(|(j, c)| Some((format!("proxy.auth.clients[{j}].aws"), c.aws.as_ref()?)));
        for (key, aws) in self
            .file
            .aws
            .iter()
            .map(|a| ("aws".to_string(), a))
            .chain(aws)
        {
            for (key, why) in aws.unreadable(&key, &self.base_dir) {
                findings.warnings.push(self.error(&key, why));
            }
        }
        findings.warnings.extend(self.log_dir_warnings());
        if !self.file.tls.http2 && !self.file.tls.http1_only.is_empty() {
            findings.warnings.push(self.error(
                "tls.http1_only",
                "has no effect: tls.http2 is false, so every host is on HTTP/1.1".to_string(),
            ));
        }
        for list in [&mut findings.warnings, &mut findings.notes] {
            list.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        }
        findings
    }

    /// A warning for each log file whose directory is missing here: `run` fails on it, but
    /// `check` may run on another machine than warden.
    fn log_dir_warnings(&self) -> Vec<ConfigError> {
        let log = &self.file.log;
        [("log.file", &log.file), ("log.access_file", &log.access_file)]
            .into_iter()
            .filter_map(|(key, path)| {
                let path = self.resolve_path(path.as_deref()?);
                let dir = path.parent()?;
                (!dir.is_dir()).then(|| {
                    self.error(
                        key,
                        format!(
                            "the directory {} does not exist here: warden run fails unless it exists and is writable where warden runs",
                            dir.display()
                        ),
                    )
                })
            })
            .collect()
    }

    /// A note for each relay whose target the top-level network section refuses: requests
    /// through it get 403 unless a client's own network section allows the target.
    fn relay_notes(&self) -> Vec<ConfigError> {
        let Ok(relays) = crate::relay::compile(&self.file.relays, "relays") else {
            return Vec::new();
        };
        let (Some(profile), _) =
            crate::profile::compile_lenient(&self.sections(), None, "", &self.base_dir)
        else {
            return Vec::new();
        };
        relays
            .targets()
            .filter(|(_, dest)| profile.network.authorize(dest, &[]).is_err())
            .map(|(i, dest)| {
                self.error(
                    &format!("relays[{i}].target"),
                    format!("names {dest}, which the network section refuses: requests through this relay get 403 unless a client's own network section allows it"),
                )
            })
            .collect()
    }

    /// Every source requests read live, with its key and host.
    fn live_sources(&self) -> Vec<(String, &SecretSource, &HostPattern)> {
        let f = &self.file;
        let mut sources: Vec<(String, &SecretSource, &HostPattern)> = Vec::new();
        fn add<'a>(
            sources: &mut Vec<(String, &'a SecretSource, &'a HostPattern)>,
            prefix: &str,
            credentials: &'a [CredentialConfig],
            substitutions: &'a [SubstitutionConfig],
        ) {
            for (i, c) in credentials.iter().enumerate() {
                sources.push((
                    format!("{prefix}credentials[{i}].source"),
                    &c.source,
                    &c.host,
                ));
            }
            for (i, s) in substitutions.iter().enumerate() {
                sources.push((
                    format!("{prefix}substitutions[{i}].source"),
                    &s.source,
                    &s.host,
                ));
            }
        }
        add(&mut sources, "", &f.credentials, &f.substitutions);
        for (j, c) in f
            .proxy
            .auth
            .iter()
            .flat_map(|a| a.clients.iter().enumerate())
        {
            add(
                &mut sources,
                &format!("proxy.auth.clients[{j}]."),
                c.credentials.as_deref().unwrap_or_default(),
                c.substitutions.as_deref().unwrap_or_default(),
            );
        }
        sources
    }

    fn unreadable_sources(&self) -> Vec<ConfigError> {
        let mut checked = Vec::new();
        for (key, source, host) in self.live_sources() {
            match source {
                // Not run by check: the command or token endpoint is left to request time,
                // but the secrets an oauth2 source sends are read now.
                SecretSource::Oauth2 {
                    client_secret,
                    refresh_token,
                    ..
                } => {
                    let client_secret = client_secret.as_deref();
                    checked
                        .extend(client_secret.map(|s| (format!("{key}.client_secret"), s, host)));
                    checked.push((format!("{key}.refresh_token"), &**refresh_token, host));
                }
                SecretSource::Process { .. } => {}
                _ => checked.push((key, source, host)),
            }
        }
        checked
            .into_iter()
            .filter_map(|(key, source, host)| {
                // SecretError names the variable or file, never what was read.
                let why = source.read(&self.base_dir).err()?;
                Some(self.error(
                    &key,
                    format!(
                        "cannot be read now ({why}); requests to `{host}` will fail with 502 credential_unavailable until it can"
                    ),
                ))
            })
            .collect()
    }

    /// A note for each refreshing source: what runs at request time, which check does not run.
    fn refreshing_notes(&self) -> Vec<ConfigError> {
        let notes = self
            .live_sources()
            .into_iter()
            .filter_map(|(key, source, _)| {
                let what = match source {
                    SecretSource::Process { ttl, .. } => format!(
                        "{} runs at request time, its output cached for {} (check does not run it)",
                        source.describe(),
                        humantime::format_duration(*ttl)
                    ),
                    SecretSource::Oauth2 { .. } => format!(
                        "{} is asked for an access token at request time (check does not call it)",
                        source.describe()
                    ),
                    _ => return None,
                };
                Some(self.error(&key, what))
            });
        notes.collect()
    }

    fn port_notes(&self) -> Vec<ConfigError> {
        let f = &self.file;
        let top = HostEntries::of(f);
        let mut notes = Vec::new();
        self.note_ports(&top.all(), "network.allow", &f.network.allow, &mut notes);
        for (j, c) in f
            .proxy
            .auth
            .iter()
            .flat_map(|a| a.clients.iter().enumerate())
        {
            let own = HostEntries::of_client(&format!("proxy.auth.clients[{j}]."), c);
            match &c.network {
                // The client's allow list governs the top-level sections it inherits too.
                Some(n) => self.note_ports(
                    &own.over(&top),
                    &format!("proxy.auth.clients[{j}].network.allow"),
                    &n.allow,
                    &mut notes,
                ),
                None => self.note_ports(&own.all(), "network.allow", &f.network.allow, &mut notes),
            }
        }
        notes
    }

    /// A note for each entry without a port whose host `allow` (at `allow_key`) names only on
    /// ports other than 80 and 443.
    fn note_ports(
        &self,
        entries: &[(String, &HostPattern)],
        allow_key: &str,
        allow: &[HostPattern],
        notes: &mut Vec<ConfigError>,
    ) {
        for (key, pattern) in entries.iter().filter(|(_, p)| p.port().is_none()) {
            let same: Vec<(usize, &HostPattern)> = allow
                .iter()
                .enumerate()
                .filter(|(_, a)| a.same_hosts(pattern))
                .collect();
            let covered = same
                .iter()
                .any(|(_, a)| matches!(a.port(), None | Some(80) | Some(443)));
            let Some(port) = same
                .first()
                .and_then(|(_, a)| a.port())
                .filter(|_| !covered)
            else {
                continue;
            };
            let named: Vec<String> = same
                .iter()
                .map(|(i, a)| {
                    let k = format!("{allow_key}[{i}]");
                    match locate(&self.text, &k) {
                        Some(line) => format!("{k} `{a}` (line {line})"),
                        None => format!("{k} `{a}`"),
                    }
                })
                .collect();
            notes.push(self.error(
                key,
                format!(
                    "`{pattern}` has no port, so it means ports 80 and 443 only, but the host is allowed only as {}; write `{pattern}:{port}` if this entry is meant for that port",
                    named.join(" and ")
                ),
            ));
        }
    }
}

/// Host patterns with their config keys (`credentials[0].host`).
type KeyedHosts<'a> = Vec<(String, &'a HostPattern)>;

/// The host patterns of the per-destination sections, by section, with their keys.
struct HostEntries<'a> {
    sections: Vec<Section<'a>>,
}

/// One section's hosts with their keys; `None` when the section is absent.
type Section<'a> = (&'static str, Option<KeyedHosts<'a>>);

impl<'a> HostEntries<'a> {
    fn section<T: 'a>(
        prefix: &str,
        name: &'static str,
        entries: Option<&'a [T]>,
        host: impl Fn(&'a T) -> &'a HostPattern,
    ) -> Section<'a> {
        let keyed = entries.map(|e| {
            e.iter()
                .enumerate()
                .map(|(i, t)| (format!("{prefix}{name}[{i}].host"), host(t)))
                .collect()
        });
        (name, keyed)
    }

    /// The per-destination sections, at the top level or in a client (`prefix`).
    fn common(
        prefix: &str,
        credentials: Option<&'a [CredentialConfig]>,
        substitutions: Option<&'a [SubstitutionConfig]>,
        headers: Option<&'a [HeaderRuleConfig]>,
        llm: Option<&'a [crate::llm::LlmConfig]>,
        mcp: Option<&'a [crate::mcp::McpConfig]>,
        correlation: Option<&'a CorrelationConfig>,
    ) -> Vec<Section<'a>> {
        vec![
            Self::section(prefix, "credentials", credentials, |c| &c.host),
            Self::section(prefix, "substitutions", substitutions, |s| &s.host),
            Self::section(prefix, "headers", headers, |h| &h.host),
            Self::section(prefix, "llm", llm, |l| &l.host),
            Self::section(prefix, "mcp", mcp, |m| &m.host),
            Self::section(
                &format!("{prefix}correlation."),
                "targets",
                correlation.map(|c| c.targets.as_slice()),
                |t| &t.host,
            ),
        ]
    }

    /// Every section of the top level.
    fn of(f: &'a FileConfig) -> Self {
        let mut sections = Self::common(
            "",
            Some(&f.credentials),
            Some(&f.substitutions),
            Some(&f.headers),
            Some(&f.llm),
            Some(&f.mcp),
            f.correlation.as_ref(),
        );
        sections.push(Self::section("", "transforms", Some(&f.transforms), |t| {
            &t.host
        }));
        let passthrough = f.tls.passthrough.iter().enumerate();
        let passthrough = passthrough.map(|(i, p)| (format!("tls.passthrough[{i}]"), p));
        sections.push(("tls.passthrough", Some(passthrough.collect())));
        let http1_only = f.tls.http1_only.iter().enumerate();
        let http1_only = http1_only.map(|(i, p)| (format!("tls.http1_only[{i}]"), p));
        sections.push(("tls.http1_only", Some(http1_only.collect())));
        HostEntries { sections }
    }

    /// The sections a client has of its own (`None` where it inherits the top level's).
    fn of_client(prefix: &str, c: &'a ClientConfig) -> Self {
        HostEntries {
            sections: Self::common(
                prefix,
                c.credentials.as_deref(),
                c.substitutions.as_deref(),
                c.headers.as_deref(),
                c.llm.as_deref(),
                c.mcp.as_deref(),
                c.correlation.as_ref(),
            ),
        }
    }

    fn all(&self) -> KeyedHosts<'a> {
        self.sections
            .iter()
            .flat_map(|(_, e)| e.iter().flatten().cloned())
            .collect()
    }

    /// What is in force for a client: its own sections, and `top`'s where it has none.
    fn over(&self, top: &HostEntries<'a>) -> KeyedHosts<'a> {
        top.sections
            .iter()
            .flat_map(|(name, inherited)| {
                let own = self.sections.iter().find(|(n, _)| n == name);
                match own {
                    Some((_, Some(own))) => own.clone(),
                    _ => inherited.clone().unwrap_or_default(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::locate::humanize;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("."))
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse("version: 1\nproxy:\n  listen: 127.0.0.1:0\n  lisen: x\n").unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("lisen"), "{err}");
        assert_eq!(err.key.as_deref(), Some("proxy"), "{err}");
    }

    #[test]
    fn mcp_errors_name_the_entry_key_and_line_in_a_client_too() {
        let err = parse(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: a\n        token: { type: static, value: t }\n        mcp:\n          - host: m.test\n            deny_tools: ['[x']\nmcp:\n  - host: m.test\n    path: /mcp\n    allow_tools: ['{']\n",
        )
        .unwrap()
        .compile(CompileOptions { create_ca: false })
        .unwrap_err();
        let found: Vec<(Option<&str>, Option<usize>)> =
            err.iter().map(|e| (e.key.as_deref(), e.line)).collect();
        assert!(
            found.contains(&(Some("mcp[0].allow_tools[0]"), Some(13))),
            "{found:?}"
        );
        assert!(
            found.contains(&(Some("proxy.auth.clients[0].mcp[0].deny_tools[0]"), Some(9))),
            "{found:?}"
        );
        for bad in ["tools: [x]", "path: mcp", "mode: audit"] {
            let text =
                format!("proxy: {{ listen: 127.0.0.1:0 }}\nmcp:\n  - {{ host: m.test, {bad} }}\n");
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, Some(3), "{bad}: {err}");
        }
    }

    #[test]
    fn llm_and_transform_errors_name_the_entry_and_line() {
        let err = parse(
            "proxy: { listen: 127.0.0.1:0 }\nllm:\n  - host: a.test\n    provider: openai\n    deny_arguments: [{ tool: x, pattern: '(' }]\n",
        )
        .unwrap()
        .compile(CompileOptions { create_ca: false })
        .unwrap_err();
        let err = err.first();
        assert_eq!(
            err.key.as_deref(),
            Some("llm[0].deny_arguments[0].pattern"),
            "{err}"
        );
        assert_eq!(err.line, Some(5), "{err}");
        let err =
            parse("proxy: { listen: 127.0.0.1:0 }\nllm:\n  - { host: a.test, provider: x }\n")
                .unwrap_err();
        assert!(err.message.contains("anthropic"), "{err}");
        let err = parse(
            "proxy:\n  listen: 127.0.0.1:0\ntransforms:\n  - { host: a.test, colour: red }\n",
        )
        .unwrap_err();
        assert!(err.message.contains("colour"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err =
            parse("proxy: { listen: 127.0.0.1:0 }\ntls:\n  intercept: sometimes\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("tls.intercept"), "{err}");
        assert_eq!(err.line, Some(3));
        let err =
            parse("proxy: { listen: 127.0.0.1:0 }\nlimits:\n  idle_timeout: soon\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("limits.idle_timeout"), "{err}");
        let err = parse("proxy: { listen: 127.0.0.1:0 }\ntls:\n  passthrough: ['*example.com']\n")
            .unwrap_err();
        assert!(err.message.contains("*example.com"), "{err}");
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn llm_limits_have_floors() {
        let cfg =
            parse("proxy: { listen: 127.0.0.1:0 }\nlimits:\n  llm_buffer_bytes: 10\n").unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err()
            .first()
            .clone();
        assert_eq!(err.key.as_deref(), Some("limits.llm_buffer_bytes"), "{err}");
        let cfg = parse("proxy: { listen: 127.0.0.1:0 }\nlimits:\n  llm_keepalive_interval: 0s\n")
            .unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err()
            .first()
            .clone();
        assert_eq!(
            err.key.as_deref(),
            Some("limits.llm_keepalive_interval"),
            "{err}"
        );
    }

    #[test]
    fn admin_and_proxy_must_not_share_an_address() {
        let cfg = parse("proxy: { listen: 127.0.0.1:9080 }\nadmin: { listen: 127.0.0.1:9080 }\n")
            .unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err()
            .first()
            .clone();
        assert_eq!(err.key.as_deref(), Some("admin.listen"));
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn a_public_listener_without_auth_needs_explicit_consent() {
        let cfg = parse("proxy: { listen: 0.0.0.0:9080 }\n").unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err()
            .first()
            .clone();
        assert_eq!(err.key.as_deref(), Some("proxy.listen"));
        let cfg = parse("proxy: { listen: 0.0.0.0:9080, allow_unauthenticated: true }\n").unwrap();
        assert!(cfg.compile(CompileOptions { create_ca: false }).is_ok());
        let cfg = parse(
            "proxy:\n  listen: 0.0.0.0:9080\n  auth:\n    clients: [{ name: a, token: { type: static, value: t } }]\n",
        )
        .unwrap();
        assert!(cfg.compile(CompileOptions { create_ca: false }).is_ok());
    }

    #[test]
    fn an_unknown_budget_key_names_the_key_and_its_line() {
        let err = parse(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: a\n        token: { type: static, value: t }\n        budget:\n          llm_tokens_per_minute: 10\n          llm_tokens_per_week: 10\n",
        )
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("proxy.auth.clients[0].budget"),
            "{err}"
        );
        assert!(err.message.contains("llm_tokens_per_week"), "{err}");
        assert_eq!(err.line, Some(9), "{err}");
        // A budget alone gives the client a profile of its own, carrying it.
        let snap = parse(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: a\n        token: { type: static, value: t }\n        budget: { llm_tokens_total: 5, requests_per_second: 0 }\nlimits: { metric_clients: 3 }\n",
        )
        .unwrap()
        .compile(CompileOptions { create_ca: false })
        .unwrap();
        let budget = snap
            .auth
            .as_ref()
            .unwrap()
            .get("a")
            .unwrap()
            .profile
            .budget
            .clone();
        let budget = budget.expect("the client's budget");
        assert_eq!(budget.limit(crate::budget::BudgetKey::TokensTotal), Some(5));
        assert_eq!(
            budget.rule(crate::budget::BudgetKey::TokensTotal),
            "proxy.auth.clients[0].budget.llm_tokens_total"
        );
        assert_eq!(
            budget.limit(crate::budget::BudgetKey::RequestsPerSecond),
            None
        );
        assert!(snap.profile.budget.is_none(), "no top-level budget");
        assert_eq!(snap.limits.metric_clients, 3);
    }

    #[test]
    fn an_unreadable_client_token_names_the_client_entry() {
        let cfg = parse(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: a\n        token: { type: env, var: WARDEN_TEST_ABSENT_TOKEN }\n",
        )
        .unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err()
            .first()
            .clone();
        assert_eq!(err.key.as_deref(), Some("proxy.auth.clients[0].token"));
        assert!(err.message.contains("WARDEN_TEST_ABSENT_TOKEN"));
        assert_eq!(err.line, Some(6), "{err}");
    }

    #[test]
    fn version_other_than_one_is_refused() {
        let err = parse("version: 2\nproxy: { listen: 127.0.0.1:0 }\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("version"));
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn proxy_section_is_required() {
        let err = parse("version: 1\n").unwrap_err();
        assert!(err.message.contains("proxy"), "{err}");
    }

    fn compile_errors(text: &str) -> Vec<(String, Option<usize>)> {
        parse(text)
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap_err()
            .iter()
            .map(|e| (e.key.clone().unwrap_or_default(), e.line))
            .collect()
    }

    #[test]
    fn compile_reports_every_error_in_file_order_with_key_and_line() {
        let text = "\
proxy:
  listen: 127.0.0.1:0
limits:
  cert_cache_entries: 0
  idle_timeout: 0s
credentials:
  - host: a.test
    header: 'bad header'
    source: { type: static, value: s }
headers:
  - host: b.test
    set: { 'bad name': x }
llm:
  - host: c.test
    provider: openai
    deny_tools: ['a[', 'b[']
transforms:
  - host: d.test
    replace_body: [{ pattern: '(', with: x }]
correlation:
  session_header: 'a b'
  targets: []
network:
  grants: [nosuch]
";
        let want: Vec<(String, Option<usize>)> = [
            ("limits.cert_cache_entries", 4),
            ("limits.idle_timeout", 5),
            ("credentials[0].header", 8),
            ("headers[0].set", 12),
            ("llm[0].deny_tools[0]", 16),
            ("llm[0].deny_tools[1]", 16),
            ("transforms[0].replace_body[0].pattern", 19),
            ("correlation.session_header", 21),
            ("correlation.targets", 22),
            ("network.grants", 24),
        ]
        .into_iter()
        .map(|(k, l)| (k.to_string(), Some(l)))
        .collect();
        assert_eq!(compile_errors(text), want);
    }

    #[test]
    fn the_clients_api_needs_a_listener_and_tls_beyond_loopback() {
        let keys = |admin: &str| -> Vec<String> {
            let text = format!("proxy:\n  listen: 127.0.0.1:0\nadmin:\n{admin}");
            match parse(&text)
                .unwrap()
                .compile(CompileOptions { create_ca: false })
            {
                Ok(_) => Vec::new(),
                Err(e) => e
                    .iter()
                    .filter_map(|e| e.key.clone())
                    .filter(|k| k.starts_with("admin"))
                    .collect(),
            }
        };
        let token = "  token: { type: static, value: t }\n";
        assert_eq!(keys(token), ["admin.token"], "no listener");
        assert_eq!(
            keys(&format!("  listen: 0.0.0.0:9090\n{token}")),
            ["admin.listen"],
            "beyond loopback without tls"
        );
        assert!(keys(&format!(
            "  listen: 0.0.0.0:9090\n{token}  allow_plaintext: true\n"
        ))
        .is_empty());
        assert!(keys(&format!(
            "  listen: 0.0.0.0:9090\n{token}  tls: {{ cert: a.crt, key: a.key }}\n"
        ))
        .is_empty());
        assert!(keys(&format!("  listen: 127.0.0.1:9090\n{token}")).is_empty());
        assert_eq!(
            keys("  listen: 127.0.0.1:9090\n  token: { type: env, var: WARDEN_TEST_NO_ADMIN_TOKEN }\n"),
            ["admin.token"],
            "unreadable"
        );
        // Without a token, a wildcard admin listener is fine (health and metrics only).
        assert!(keys("  listen: 0.0.0.0:9090\n").is_empty());
    }

    #[test]
    fn http2_bounds_must_be_usable() {
        let text = "\
proxy:
  listen: 127.0.0.1:0
limits:
  h2_max_concurrent_streams: 0
  h2_max_resets_per_second: 0
  h2_max_pings_per_second: 0
  h2_max_settings_per_second: 0
  h2_stream_window_bytes: 1000
  h2_connection_window_bytes: 2147483648
";
        let keys: Vec<String> = compile_errors(text).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "limits.h2_max_concurrent_streams",
                "limits.h2_max_resets_per_second",
                "limits.h2_max_pings_per_second",
                "limits.h2_max_settings_per_second",
                "limits.h2_stream_window_bytes",
                "limits.h2_connection_window_bytes",
            ]
        );
    }

    #[test]
    fn http2_and_http1_only_decide_h2_per_host() {
        let cfg = parse(
            "proxy: { listen: 127.0.0.1:0 }\ntls:\n  http1_only: [legacy.test, 'x.test:8443']\n",
        )
        .unwrap();
        let tls = &cfg.file.tls;
        assert!(tls.http2, "on by default");
        let on = |host: &str, port: u16| {
            let dest =
                crate::target::parse_authority(format!("{host}:{port}").as_bytes(), None).unwrap();
            !crate::policy::any_matches(&tls.http1_only, &dest)
        };
        assert!(!on("legacy.test", 443));
        assert!(
            on("legacy.test", 8443),
            "a pattern without a port means 80 and 443"
        );
        assert!(!on("x.test", 8443));
        assert!(on("other.test", 443));
        let off =
            parse("proxy: { listen: 127.0.0.1:0 }\ntls:\n  http2: false\n  http1_only: [a.test]\n")
                .unwrap();
        let warnings = off.findings().warnings;
        assert_eq!(warnings[0].key.as_deref(), Some("tls.http1_only"));
        assert!(warnings[0].message.contains("tls.http2 is false"));
    }

    #[test]
    fn every_client_error_is_reported_and_a_bad_credential_does_not_hide_its_grant() {
        let text = "\
proxy:
  listen: 127.0.0.1:0
  auth:
    clients:
      - name: a
        token: { type: env, var: WARDEN_TEST_ABSENT_TOKEN_2 }
      - name: b
        token: { type: static, value: t }
        headers: [{ host: x.test, remove: ['bad name'] }]
credentials:
  - host: api.test
    grant: api
    format: nope
    source: { type: static, value: s }
network:
  grants: [api]
";
        // `network.grants: [api]` resolves although credentials[0] is bad, so no error there.
        assert_eq!(
            compile_errors(text),
            [
                ("proxy.auth.clients[0].token".to_string(), Some(6)),
                (
                    "proxy.auth.clients[1].headers[0].remove".to_string(),
                    Some(9)
                ),
                ("credentials[0].format".to_string(), Some(13)),
            ]
        );
    }

    #[test]
    fn a_duplicate_key_is_reported_at_the_repeated_key() {
        let cases = [
            // The top level: serde_yaml alone says line 1, where the mapping starts.
            (
                "proxy:\n  listen: 127.0.0.1:0\nlimits:\n  idle_timeout: 3s\nproxy:\n  listen: 127.0.0.1:1\n",
                5,
            ),
            (
                "# head\n\nproxy:\n  listen: 127.0.0.1:0\nlimits:\n  idle_timeout: 3s\n  # c\n  idle_timeout: 4s\n",
                8,
            ),
            (
                "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - host: a.test\n    source: { type: static, value: s }\n    host: b.test\n",
                5,
            ),
            // Free-form maps kept the last value silently before.
            (
                "proxy: { listen: 127.0.0.1:0 }\nnetwork:\n  resolve:\n    a.test: 127.0.0.1\n    b.test: 127.0.0.1\n    a.test: 127.0.0.2\n",
                6,
            ),
        ];
        for (text, line) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, Some(line), "{err}");
            assert!(err.message.contains("duplicate"), "{err}");
        }
    }

    #[test]
    fn numbers_and_durations_are_described_in_words() {
        let cases = [
            (
                "limits: { cert_cache_entries: lots }",
                "expected a whole number",
            ),
            (
                "limits: { cert_cache_entries: -3 }",
                "expected a whole number",
            ),
            (
                "limits: { max_request_header_bytes: 99999999999999999999999 }",
                "integer `99999999999999999999999`, expected a whole number",
            ),
            (
                "log: { body_capture_bytes: 1.5 }",
                "expected a whole number",
            ),
            ("version: x", "expected a whole number"),
            (
                "limits: { idle_timeout: 10 }",
                "expected a duration such as 10s or 500ms",
            ),
            (
                "limits: { shutdown_grace: soon }",
                "expected a duration such as 10s or 500ms",
            ),
        ];
        for (extra, want) in cases {
            let err = parse(&format!("proxy: {{ listen: 127.0.0.1:0 }}\n{extra}\n")).unwrap_err();
            assert!(err.message.contains(want), "{extra}: {err}");
            for rust in ["usize", "u32", "u64", "u128"] {
                assert!(!err.message.contains(rust), "{extra}: {err}");
            }
        }
        assert_eq!(
            humanize("expected u16, expected u8s, expected a duration"),
            "expected a whole number from 0 to 65535, expected u8s, expected a duration such as 10s or 500ms"
        );
    }

    #[test]
    fn unreadable_sources_are_warnings_that_name_key_and_line_but_no_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("present"), "FILE-CANARY\n").unwrap();
        let text = "\
proxy:
  listen: 127.0.0.1:0
  auth:
    clients:
      - name: a
        token: { type: static, value: TOKEN-CANARY }
        substitutions:
          - host: s.test
            placeholder: WARDEN_SUB_1
            source: { type: file, path: absent-file }
credentials:
  - host: ok.test
    source: { type: static, value: STATIC-CANARY }
  - host: api.test
    source: { type: env, var: WARDEN_TEST_UNSET_SOURCE_VAR }
  - host: f.test
    source: { type: file, path: present }
  - host: e.test
    source: { type: static, value: '' }
";
        let cfg = Config::parse(text, dir.path()).unwrap();
        // Sources are read live: an unreadable one does not stop the config from compiling.
        cfg.compile(CompileOptions { create_ca: false }).unwrap();
        let findings = cfg.findings();
        let got: Vec<(&str, Option<usize>)> = findings
            .warnings
            .iter()
            .map(|w| (w.key.as_deref().unwrap_or_default(), w.line))
            .collect();
        assert_eq!(
            got,
            [
                ("proxy.auth.clients[0].substitutions[0].source", Some(10)),
                ("credentials[1].source", Some(15)),
                ("credentials[3].source", Some(19)),
            ]
        );
        let shown = format!("{findings:?}");
        assert!(shown.contains("WARDEN_TEST_UNSET_SOURCE_VAR"), "{shown}");
        assert!(shown.contains("absent-file"), "{shown}");
        assert!(shown.contains("credential_unavailable"), "{shown}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(findings.notes.is_empty(), "{shown}");
    }

    #[test]
    fn a_portless_entry_gets_a_note_when_its_host_is_allowed_only_on_other_ports() {
        let notes = |allow: &str, entry_host: &str| -> Vec<String> {
            let text = format!(
                "proxy:\n  listen: 127.0.0.1:0\ncredentials:\n  - host: '{entry_host}'\n    source: {{ type: static, value: s }}\nnetwork:\n  policy: strict\n  allow:\n    - other.test\n    - {allow}\n"
            );
            parse(&text)
                .unwrap()
                .findings()
                .notes
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let got = notes("api.test:8443", "api.test");
        assert_eq!(got.len(), 1, "{got:?}");
        for part in [
            "line 4: credentials[0].host:",
            "network.allow[1] `api.test:8443` (line 10)",
            "80 and 443",
            "api.test:8443",
        ] {
            assert!(got[0].contains(part), "{part} in {}", got[0]);
        }
        let none: &[(&str, &str)] = &[
            ("api.test", "api.test"),
            ("'api.test:443'", "api.test"),
            ("api.test:8443", "api.test:8443"),
            ("api.test:8443", "other.test"),
            ("'*.api.test:8443'", "api.test"),
        ];
        for (allow, host) in none {
            assert_eq!(notes(allow, host), Vec::<String>::new(), "{allow} {host}");
        }
    }

    #[test]
    fn a_client_network_section_is_compared_with_the_entries_in_force_for_it() {
        let text = "\
proxy:
  listen: 127.0.0.1:0
  auth:
    clients:
      - name: a
        token: { type: static, value: t }
        network: { policy: strict, allow: ['llm.test:8443'] }
      - name: b
        token: { type: static, value: t }
        headers: [{ host: h.test, remove: [x-a] }]
llm:
  - { host: llm.test, provider: openai }
network:
  allow: ['h.test:9443']
";
        let notes: Vec<(String, Option<usize>)> = parse(text)
            .unwrap()
            .findings()
            .notes
            .iter()
            .map(|n| (n.key.clone().unwrap_or_default(), n.line))
            .collect();
        assert_eq!(
            notes,
            [
                // Client b's own header rule under the top-level allow list.
                (
                    "proxy.auth.clients[1].headers[0].host".to_string(),
                    Some(10)
                ),
                // Client a inherits the top-level llm entry under its own allow list.
                ("llm[0].host".to_string(), Some(12)),
            ]
        );
    }

    #[test]
    fn limits_parse_human_durations() {
        let cfg = parse("proxy: { listen: 127.0.0.1:0 }\nlimits: { idle_timeout: 2m, upstream_connect_timeout: 1500ms }\n").unwrap();
        assert_eq!(cfg.file.limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(
            cfg.file.limits.upstream_connect_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(cfg.file.limits.cert_cache_entries, 10_000);
    }
}
