//! Loads `warden.yaml` (the CONFIG.md contract) into typed per-section config and compiles it
//! into the immutable [`Snapshot`] that the front door reads once per connection and the
//! ProxyHttp phases read once per request (`new_ctx`). `compile()` is where files are read and
//! cross-field rules checked; it never panics, and every error names the key and its line.

use crate::auth::{AuthConfig, Client, Clients};
use crate::correlation::{Correlation, CorrelationConfig};
use crate::credentials::{CredentialConfig, Credentials};
use crate::headers::{HeaderRuleConfig, HeaderRules};
use crate::policy::{NetworkConfig, NetworkPolicy};
use crate::substitution::{SubstitutionConfig, Substitutions};
use crate::telemetry::LogConfig;
use crate::tls::{CertAuthority, TlsConfig, TlsPolicy};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A config error: which key, on which line (when known), and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl std::error::Error for ConfigError {}

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
    /// Response transformers per destination.
    #[serde(default)]
    pub transforms: Vec<crate::transform::TransformConfig>,
    /// Session id and sequence headers on matching requests.
    #[serde(default)]
    pub correlation: Option<CorrelationConfig>,
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
}

/// `admin`: where `/healthz`, `/readyz` and `/metrics` are served; absent = no admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin listener address.
    pub listen: Option<SocketAddr>,
}

/// `limits`: every wait and buffer is bounded; these are the knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head accepted (bytes).
    pub max_request_header_bytes: usize,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: 64 * 1024,
            llm_buffer_bytes: 10 * 1024 * 1024,
            llm_keepalive_interval: Duration::from_secs(5),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            cert_cache_entries: 10_000,
            shutdown_grace: Duration::from_secs(10),
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
    /// The admin listen address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Interception decisions, the CA, leaf cache and upstream trust.
    pub tls: TlsPolicy,
    /// Network policy, the SSRF guard and resolution.
    pub network: NetworkPolicy,
    /// The clients, when `proxy.auth` is configured.
    pub auth: Option<Clients>,
    /// Credentials injected per destination.
    pub credentials: Credentials,
    /// Header rules per destination.
    pub headers: HeaderRules,
    /// Session correlation, when configured.
    pub correlation: Option<Correlation>,
    /// Placeholder substitutions per destination.
    pub substitutions: Substitutions,
    /// LLM policy per API host.
    pub llm: crate::llm::LlmRules,
    /// Response transformers per destination.
    pub transforms: crate::transform::Transforms,
    /// Log level and format.
    pub log: crate::telemetry::LogSettings,
    /// Timeouts and bounds.
    pub limits: Limits,
    /// The echoed-secret maskers built for this config's requests.
    pub maskers: crate::scrub::Maskers,
}

impl Snapshot {
    /// The network policy for `client`: its own section if it has one, else the top-level one.
    pub fn network_for<'a>(&'a self, client: Option<&'a Client>) -> &'a NetworkPolicy {
        client
            .and_then(|c| c.network.as_ref())
            .unwrap_or(&self.network)
    }

    /// The header rules for `client`: its own if it has them, else the top-level ones.
    pub fn headers_for<'a>(&'a self, client: Option<&'a Client>) -> &'a HeaderRules {
        client
            .and_then(|c| c.headers.as_ref())
            .unwrap_or(&self.headers)
    }

    /// The correlation section for `client`: its own if it has one, else the top-level one.
    pub fn correlation_for<'a>(&'a self, client: Option<&'a Client>) -> Option<&'a Correlation> {
        client
            .and_then(|c| c.correlation.as_ref())
            .or(self.correlation.as_ref())
    }

    /// The substitutions for `client`: its own if it has them, else the top-level ones.
    pub fn substitutions_for<'a>(&'a self, client: Option<&'a Client>) -> &'a Substitutions {
        client
            .and_then(|c| c.substitutions.as_ref())
            .unwrap_or(&self.substitutions)
    }

    /// The LLM policy for `client`: its own if it has one, else the top-level one.
    pub fn llm_for<'a>(&'a self, client: Option<&'a Client>) -> &'a crate::llm::LlmRules {
        client.and_then(|c| c.llm.as_ref()).unwrap_or(&self.llm)
    }

    /// The credentials for `client`: its own if it has them, else the top-level ones.
    pub fn credentials_for<'a>(&'a self, client: Option<&'a Client>) -> &'a Credentials {
        client
            .and_then(|c| c.credentials.as_ref())
            .unwrap_or(&self.credentials)
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
        let file: FileConfig = serde_yaml::from_str(text).map_err(|e| from_yaml_error(&e))?;
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
    /// trust file, and returns the runtime snapshot.
    pub fn compile(&self, opts: CompileOptions) -> Result<Snapshot, ConfigError> {
        self.compile_over(opts, None)
    }

    /// [`Config::compile`] for a reload: what should outlive the old snapshot carries over —
    /// the CA and its leaf cache when the CA certificate is unchanged, and correlation
    /// sessions (id and numbering) configured the same way.
    pub fn compile_over(
        &self,
        opts: CompileOptions,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let f = &self.file;
        // Port 0 asks for an ephemeral port each, so two of them never collide.
        if f.admin.listen == Some(f.proxy.listen) && f.proxy.listen.port() != 0 {
            return Err(self.error("admin.listen", "must differ from proxy.listen"));
        }
        if f.limits.cert_cache_entries == 0 {
            return Err(self.error("limits.cert_cache_entries", "must be at least 1"));
        }
        if f.limits.llm_buffer_bytes < 1024 {
            return Err(self.error("limits.llm_buffer_bytes", "must be at least 1024"));
        }
        if f.limits.max_request_header_bytes < 1024 {
            return Err(self.error("limits.max_request_header_bytes", "must be at least 1024"));
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
                "limits.llm_keepalive_interval",
                f.limits.llm_keepalive_interval,
            ),
        ] {
            if d.is_zero() {
                return Err(self.error(key, "must be longer than zero"));
            }
        }
        if f.proxy.auth.is_none()
            && !f.proxy.listen.ip().is_loopback()
            && !f.proxy.allow_unauthenticated
        {
            return Err(self.error(
                "proxy.listen",
                "listens beyond loopback without proxy.auth; configure clients, or set proxy.allow_unauthenticated: true",
            ));
        }
        let credentials =
            crate::credentials::compile(&f.credentials, "credentials", &self.base_dir)
                .map_err(|(key, msg)| self.error(&key, msg))?;
        let headers = crate::headers::compile(&f.headers, "headers")
            .map_err(|(key, msg)| self.error(&key, msg))?;
        let substitutions =
            crate::substitution::compile(&f.substitutions, "substitutions", &self.base_dir)
                .map_err(|(key, msg)| self.error(&key, msg))?;
        let llm = crate::llm::compile(&f.llm, "llm").map_err(|(key, msg)| self.error(&key, msg))?;
        let transforms = crate::transform::compile(&f.transforms, "transforms")
            .map_err(|(key, msg)| self.error(&key, msg))?;
        let mut correlation = match &f.correlation {
            Some(c) => Some(
                c.compile("correlation")
                    .map_err(|(key, msg)| self.error(&key, msg))?,
            ),
            None => None,
        };
        if let (Some(new), Some(old)) = (
            correlation.as_mut(),
            previous.and_then(|p| p.correlation.as_ref()),
        ) {
            new.continue_from(old);
        }
        let auth = match &f.proxy.auth {
            Some(a) => Some(
                a.compile(
                    &self.base_dir,
                    &credentials,
                    previous.and_then(|p| p.auth.as_ref()),
                )
                .map_err(|(key, msg)| self.error(&key, msg))?,
            ),
            None => None,
        };
        let network = f
            .network
            .compile(&credentials)
            .map_err(|(key, msg)| self.error(&key, msg))?;
        let ca = CertAuthority::load_or_create(
            &self.resolve_path(&f.tls.ca_cert),
            &self.resolve_path(&f.tls.ca_key),
            opts.create_ca,
            f.limits.cert_cache_entries,
        )
        .map_err(|e| self.error(e.key(), e.to_string()))?;
        let ca = match previous {
            Some(prev) if prev.tls.ca.cert_pem() == ca.cert_pem() => prev.tls.ca.clone(),
            _ => Arc::new(ca),
        };
        let tls = f
            .tls
            .compile(ca, |p| self.resolve_path(p))
            .map_err(|e| self.error(e.key(), e.to_string()))?;
        Ok(Snapshot {
            proxy_listen: f.proxy.listen,
            admin_listen: f.admin.listen,
            tls,
            network,
            auth,
            credentials,
            headers,
            correlation,
            substitutions,
            llm,
            transforms,
            log: f.log.compile(),
            limits: f.limits.clone(),
            maskers: crate::scrub::Maskers::default(),
        })
    }
}

fn from_yaml_error(e: &serde_yaml::Error) -> ConfigError {
    // serde_yaml's message already carries the key path ("tls.intercept: ...") and the
    // position; keep the message and expose the line separately.
    let full = e.to_string();
    // The position is reported separately.
    let full = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let (key, message) = match full.split_once(": ") {
        Some((k, rest)) if !k.is_empty() && !k.contains(' ') => (Some(k.to_string()), rest),
        _ => (None, full),
    };
    ConfigError {
        file: None,
        key,
        line: e.location().map(|l| l.line()),
        message: message.to_string(),
    }
}

/// Finds the line of a dotted key (`tls.ca_key`, `proxy.auth.clients[1].token`) in
/// block-style YAML, for errors found after parsing. Returns the line of the deepest part found,
/// or `None` (flow style, absent key).
pub fn locate(text: &str, dotted: &str) -> Option<usize> {
    // (line index, indent of the content, content without a list marker)
    let lines: Vec<(usize, usize, &str)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') {
                return None;
            }
            Some((i, line.len() - body.len(), body))
        })
        .collect();
    fn key_of(body: &str) -> Option<&str> {
        body.split_once(':')
            .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''))
    }
    let mut found = None;
    let mut from = 0; // index into `lines`
    let mut min_indent = 0;
    for segment in dotted.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let mut hit = None;
        for (pos, &(i, indent, body)) in lines.iter().enumerate().skip(from) {
            let (indent, body) = match body.strip_prefix("- ") {
                Some(rest) => (indent + 2, rest),
                None => (indent, body),
            };
            if pos > from && indent < min_indent {
                break;
            }
            if indent >= min_indent && key_of(body) == Some(key) {
                hit = Some((pos, i, indent));
                break;
            }
        }
        let Some((pos, line, indent)) = hit else {
            return found;
        };
        found = Some(line + 1);
        from = pos + 1;
        min_indent = indent + 1;
        if let Some(n) = index {
            let mut item_indent = None;
            let mut seen = 0;
            let mut item = None;
            for (pos, &(i, indent, body)) in lines.iter().enumerate().skip(from) {
                if indent < min_indent {
                    break;
                }
                if !body.starts_with("- ") || item_indent.is_some_and(|d| d != indent) {
                    continue;
                }
                item_indent = Some(indent);
                if seen == n {
                    item = Some((pos, i, indent + 2));
                    break;
                }
                seen += 1;
            }
            let Some((pos, line, indent)) = item else {
                return found;
            };
            found = Some(line + 1);
            from = pos;
            min_indent = indent;
        }
    }
    found
}

#[cfg(test)]
mod tests {
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
    fn llm_and_transform_errors_name_the_entry_and_line() {
        let err = parse(
            "proxy: { listen: 127.0.0.1:0 }\nllm:\n  - host: a.test\n    provider: openai\n    deny_arguments: [{ tool: x, pattern: '(' }]\n",
        )
        .and_then(|c| c.compile(CompileOptions { create_ca: false }).map(|_| c))
        .unwrap_err();
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
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("limits.llm_buffer_bytes"), "{err}");
        let cfg = parse("proxy: { listen: 127.0.0.1:0 }\nlimits:\n  llm_keepalive_interval: 0s\n")
            .unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err();
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
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("admin.listen"));
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn a_public_listener_without_auth_needs_explicit_consent() {
        let cfg = parse("proxy: { listen: 0.0.0.0:9080 }\n").unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err();
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
    fn an_unreadable_client_token_names_the_client_entry() {
        let cfg = parse(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: a\n        token: { type: env, var: WARDEN_TEST_ABSENT_TOKEN }\n",
        )
        .unwrap();
        let err = cfg
            .compile(CompileOptions { create_ca: false })
            .unwrap_err();
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

    #[test]
    fn locate_finds_nested_keys() {
        let text = "a: 1\ntls:\n  # c\n  ca_cert: x\n  ca_key: y\nlimits:\n  ca_key: z\n";
        assert_eq!(locate(text, "tls.ca_key"), Some(5));
        assert_eq!(locate(text, "limits.ca_key"), Some(7));
        assert_eq!(locate(text, "a"), Some(1));
        assert_eq!(locate(text, "nope"), None);
        let list = "proxy:\n  auth:\n    clients:\n      - name: a\n        token: x\n      - name: b\n        # c\n        token: y\n";
        assert_eq!(locate(list, "proxy.auth.clients[0].token"), Some(5));
        assert_eq!(locate(list, "proxy.auth.clients[1].token"), Some(8));
        assert_eq!(locate(list, "proxy.auth.clients[1].name"), Some(6));
        assert_eq!(locate(list, "proxy.auth.clients[5].name"), Some(3));
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
