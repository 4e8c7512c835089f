//! Host patterns and name resolution: which destinations a rule names (`tls.passthrough` now,
//! the network allow/deny lists later) and where a destination resolves (`network.resolve`
//! overrides first, then DNS). Called by the front door for CONNECT decisions and blind-tunnel
//! dialing, and by `upstream_peer` for proxied requests.

use crate::config::NotYetSupported;
use crate::reason::Reason;
use crate::target::{parse_host, split_authority, Authority, Host};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A host pattern from the config: `api.example.com`, `*.example.com` (subdomains only, not
/// the apex), `*` (any name), or an IP literal; each with an optional `:port`. Without a port it
/// applies to ports 80 and 443. Names are compared case-insensitively, trailing dots ignored,
/// IDNs as punycode. IP-literal destinations are only matched by IP patterns, never by globs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPattern {
    kind: PatternKind,
    port: Option<u16>,
    source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternKind {
    Any,
    Exact(Host),
    /// `.example.com` for `*.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// True when `dest` is named by this pattern.
    pub fn matches(&self, dest: &Authority) -> bool {
        let port_ok = match self.port {
            Some(p) => p == dest.port,
            None => dest.port == 80 || dest.port == 443,
        };
        port_ok
            && match (&self.kind, &dest.host) {
                (PatternKind::Exact(h), host) => h == host,
                (PatternKind::Any, Host::Name(_)) => true,
                (PatternKind::Suffix(suffix), Host::Name(n)) => {
                    n.len() > suffix.len() && n.ends_with(suffix.as_str())
                }
                (_, Host::Ip(_)) => false,
            }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        let invalid = |why: &str| format!("`{source}` is not a valid host pattern: {why}");
        let (kind, port) = if source == "*" {
            (PatternKind::Any, None)
        } else if let Some(rest) = source.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(invalid("only one leading `*.` label is allowed"));
            }
            match split_authority(rest.as_bytes()) {
                Ok((Host::Name(n), port)) => (PatternKind::Suffix(format!(".{n}")), port),
                Ok((Host::Ip(_), _)) => return Err(invalid("a wildcard cannot precede an IP")),
                Err(r) => return Err(invalid(r.present().message)),
            }
        } else if source.contains('*') {
            return Err(invalid(
                "a wildcard must be a whole leading label, as in `*.example.com`",
            ));
        } else {
            match split_authority(source.as_bytes()) {
                Ok((host, port)) => (PatternKind::Exact(host), port),
                Err(r) => return Err(invalid(r.present().message)),
            }
        };
        Ok(HostPattern { kind, port, source })
    }
}

/// True when any pattern in `patterns` names `dest`.
pub fn any_matches(patterns: &[HostPattern], dest: &Authority) -> bool {
    patterns.iter().any(|p| p.matches(dest))
}

/// The `network` section. Only `resolve` is supported so far; the policy keys are recognised
/// and refused at load until network policy lands, so they are never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Static name → address overrides, used before DNS.
    #[serde(default)]
    pub resolve: BTreeMap<String, IpAddr>,
    #[serde(default, rename = "policy")]
    _policy: Option<NotYetSupported>,
    #[serde(default, rename = "allow")]
    _allow: Option<NotYetSupported>,
    #[serde(default, rename = "deny")]
    _deny: Option<NotYetSupported>,
    #[serde(default, rename = "grants")]
    _grants: Option<NotYetSupported>,
    #[serde(default, rename = "rules")]
    _rules: Option<NotYetSupported>,
    #[serde(default, rename = "private_networks")]
    _private_networks: Option<NotYetSupported>,
    #[serde(default, rename = "allow_cidrs")]
    _allow_cidrs: Option<NotYetSupported>,
}

impl NetworkConfig {
    /// Compiles the resolver overrides; fails naming the entry whose name is not a host name.
    pub fn compile(&self) -> Result<Resolver, (String, String)> {
        let mut overrides = HashMap::new();
        for (name, ip) in &self.resolve {
            match parse_host(name) {
                Ok(Host::Name(n)) => {
                    overrides.insert(n, *ip);
                }
                _ => {
                    return Err((
                        format!("network.resolve.{name}"),
                        format!("`{name}` is not a host name"),
                    ))
                }
            }
        }
        Ok(Resolver { overrides })
    }
}

/// Resolves destinations: IP literals as they are, `network.resolve` overrides, then DNS.
#[derive(Debug, Default)]
pub struct Resolver {
    overrides: HashMap<String, IpAddr>,
}

impl Resolver {
    /// The one address to dial for `dest`. DNS is bounded by `timeout`; no answer, an error or
    /// the timeout all yield [`Reason::DnsError`].
    pub async fn resolve(&self, dest: &Authority, timeout: Duration) -> Result<SocketAddr, Reason> {
        let name = match &dest.host {
            Host::Ip(ip) => return Ok(SocketAddr::new(*ip, dest.port)),
            Host::Name(name) => name,
        };
        if let Some(ip) = self.overrides.get(name) {
            return Ok(SocketAddr::new(*ip, dest.port));
        }
        let lookup = tokio::net::lookup_host((name.as_str(), dest.port));
        match tokio::time::timeout(timeout, lookup).await {
            Ok(Ok(mut addrs)) => addrs.next().ok_or(Reason::DnsError),
            Ok(Err(_)) | Err(_) => Err(Reason::DnsError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> HostPattern {
        HostPattern::try_from(s.to_string()).unwrap()
    }

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = pat("*.example.com");
        assert!(p.matches(&dest("api.example.com:443")));
        assert!(p.matches(&dest("a.b.EXAMPLE.com.:80")));
        assert!(!p.matches(&dest("example.com:443")));
        assert!(!p.matches(&dest("evilexample.com:443")));
        assert!(!p.matches(&dest("api.example.com:8443")));
    }

    #[test]
    fn ports_default_to_80_and_443() {
        let p = pat("example.org:8443");
        assert!(p.matches(&dest("example.org:8443")));
        assert!(!p.matches(&dest("example.org:443")));
        assert!(pat("example.org").matches(&dest("example.org:80")));
    }

    #[test]
    fn globs_never_match_ip_literals() {
        assert!(!pat("*").matches(&dest("10.0.0.1:443")));
        assert!(pat("*").matches(&dest("a.test:443")));
        assert!(pat("10.0.0.1").matches(&dest("10.0.0.1:443")));
    }

    #[test]
    fn idn_patterns_compare_as_punycode() {
        assert!(pat("bücher.example").matches(&dest("xn--bcher-kva.example:443")));
    }

    #[test]
    fn rejects_malformed_globs_naming_them() {
        for bad in ["*example.com", "api.*.com", "*.*.com", "*.", ""] {
            let err = HostPattern::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[tokio::test]
    async fn overrides_win_over_dns_and_ips_pass_through() {
        let cfg: NetworkConfig =
            serde_yaml::from_str("resolve: { API.Example.Test: 127.0.0.9 }").unwrap();
        let r = cfg.compile().unwrap();
        let t = Duration::from_secs(1);
        assert_eq!(
            r.resolve(&dest("api.example.test:443"), t).await.unwrap(),
            "127.0.0.9:443".parse().unwrap()
        );
        assert_eq!(
            r.resolve(&dest("127.0.0.2:80"), t).await.unwrap(),
            "127.0.0.2:80".parse().unwrap()
        );
        assert_eq!(
            r.resolve(&dest("no-such-host.invalid:80"), t).await,
            Err(Reason::DnsError)
        );
    }
}
