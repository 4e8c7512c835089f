//! Admission: the ordered decisions a CONNECT or a request passes before anything is done on
//! its behalf — who the client is (auth), whether its destination and, for requests, its
//! method and path are allowed (policy), how a CONNECT is carried (intercepted or blind), and
//! which credential a request carries (read only once it is allowed). Called by the front door
//! for every CONNECT and by `request_filter` for every request. Free of `Session`, so the order
//! (DESIGN invariant 2) is tested here.

use crate::auth::Client;
use crate::config::Snapshot;
use crate::policy::{Denial, Mode};
use crate::reason::Reason;
use crate::secret::Secret;
use crate::substitution::Active;
use crate::target::{Authority, Target, TunnelIdentity};
use http::header::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::sync::Arc;

/// A CONNECT that may proceed.
#[derive(Debug)]
pub struct ConnectAdmission {
    /// The authenticated client, when auth is on.
    pub client: Option<Arc<Client>>,
    /// Terminate TLS (true) or tunnel blind (false).
    pub intercept: bool,
    /// Some rule must see inside this tunnel (credentials, headers, llm, ...): a tunnel that
    /// turns out not to carry TLS may not fall back to a blind splice.
    pub inspect: bool,
    /// In report mode: what it would have been denied for.
    pub would_deny: Option<Reason>,
}

/// A request that may proceed.
#[derive(Debug)]
pub struct RequestAdmission {
    /// The authenticated client, when auth is on.
    pub client: Option<Arc<Client>>,
    /// In report mode: what it would have been denied for.
    pub would_deny: Option<Reason>,
    /// The credential to set on the upstream request, already read.
    pub credential: Option<Injection>,
    /// The correlation sequence number, when the request is a correlation target.
    pub seq: Option<u64>,
    /// Placeholder substitutions in force, secrets already read.
    pub substitutions: Vec<Active>,
}

/// A credential header to set upstream.
#[derive(Debug)]
pub struct Injection {
    /// Header name.
    pub header: HeaderName,
    /// Header value (marked sensitive).
    pub value: HeaderValue,
    /// The credential's grant.
    pub grant: Option<String>,
    /// The secret itself, for scrubbing responses that echo it.
    pub secret: Secret,
}

/// Why a CONNECT or request is refused.
#[derive(Debug)]
pub struct Refusal {
    /// The reason code.
    pub reason: Reason,
    /// The config entry that decided it.
    pub rule: Option<String>,
    /// Operator detail for the log (never a secret).
    pub detail: Option<String>,
    /// The client, when it was identified before the refusal.
    pub client: Option<Arc<Client>>,
    /// The sequence number the request consumed, when it was a correlation target.
    pub seq: Option<u64>,
}

impl Refusal {
    fn new(reason: Reason, client: Option<Arc<Client>>) -> Self {
        Refusal {
            reason,
            rule: None,
            detail: None,
            client,
            seq: None,
        }
    }

    fn denied(denial: Denial, client: Option<Arc<Client>>) -> Self {
        Refusal {
            reason: denial.reason,
            rule: denial.rule,
            detail: None,
            client,
            seq: None,
        }
    }
}

/// Who sent a request: inside a tunnel the CONNECT's client (which must still be configured),
/// otherwise the request's own `Proxy-Authorization`. `None` when auth is off.
pub fn identify(
    snap: &Snapshot,
    tunnel: Option<&TunnelIdentity>,
    proxy_auth: &[&[u8]],
) -> Result<Option<Arc<Client>>, Reason> {
    let Some(clients) = &snap.auth else {
        return Ok(None);
    };
    match tunnel {
        Some(t) => t
            .client
            .as_deref()
            .and_then(|name| clients.get(name))
            .cloned()
            .map(Some)
            .ok_or(Reason::AuthInvalid),
        None => clients.authenticate(proxy_auth).map(Some),
    }
}

/// Admits a CONNECT to `dest`: auth, host policy (IP literals also checked against the SSRF
/// guard and warden's own addresses `own`), then interception. A host some rule must see
/// inside (L7 rules, credentials, header rules) is intercepted; when `tls.intercept` or
/// `passthrough` would tunnel it blind instead, it is refused rather than left unchecked.
pub fn admit_connect(
    snap: &Snapshot,
    own: &[SocketAddr],
    proxy_auth: &[&[u8]],
    dest: &Authority,
) -> Result<ConnectAdmission, Refusal> {
    let client = identify(snap, None, proxy_auth).map_err(|r| Refusal::new(r, None))?;
    let c = client.as_deref();
    let network = snap.network_for(c);
    let mut would_deny = network
        .authorize(dest, own)
        .map_err(|d| Refusal::denied(d, client.clone()))?;
    let inspect = network.has_rules_for(dest)
        || snap.credentials_for(c).has_for(dest)
        || snap.headers_for(c).has_for(dest)
        || snap
            .correlation_for(c)
            .is_some_and(|corr| corr.has_for(dest))
        || snap.substitutions_for(c).has_for(dest)
        || snap.llm_for(c).has_for(dest)
        || !snap.transforms.for_dest(dest).is_empty();
    let intercept = snap.tls.intercepts(dest, inspect);
    if inspect && !intercept {
        let rule = "network.rules, credentials, headers, substitutions, correlation, llm or transforms apply to this host, but tls.intercept/passthrough tunnel it blind";
        match network.mode {
            Mode::Enforce => {
                return Err(Refusal::denied(
                    Denial {
                        reason: Reason::PolicyDeniedRule,
                        rule: Some(rule.into()),
                    },
                    client,
                ))
            }
            Mode::Report => would_deny = would_deny.or(Some(Reason::PolicyDeniedRule)),
        }
    }
    Ok(ConnectAdmission {
        client,
        intercept,
        inspect,
        would_deny,
    })
}

/// Admits one request to `target`: identity, a correlation number (allocated before policy, so
/// a denied request consumes one too), host policy, L7 rules, and only then the credential
/// read (an unreadable credential refuses with `credential_unavailable`).
pub fn admit_request(
    snap: &Snapshot,
    own: &[SocketAddr],
    tunnel: Option<&TunnelIdentity>,
    proxy_auth: &[&[u8]],
    method: &str,
    target: &Target,
) -> Result<RequestAdmission, Refusal> {
    let client = identify(snap, tunnel, proxy_auth).map_err(|r| Refusal::new(r, None))?;
    let c = client.as_deref();
    let dest = &target.authority;
    let seq = snap
        .correlation_for(c)
        .and_then(|corr| corr.allocate(dest, &target.path));
    let denied = |d: Denial| Refusal {
        seq,
        ..Refusal::denied(d, client.clone())
    };
    let network = snap.network_for(c);
    let host = network.authorize(dest, own).map_err(denied)?;
    let rule = network
        .decide_request(method, dest, &target.path)
        .map_err(denied)?;
    // The credential is bound to the connection identity, never to the Host header.
    let credential = match snap.credentials_for(c).for_request(dest, target.scheme) {
        None => None,
        Some(cred) => match cred.read() {
            Ok((value, secret)) => Some(Injection {
                header: cred.header.clone(),
                value,
                grant: cred.grant.clone(),
                secret,
            }),
            Err(e) => {
                return Err(Refusal {
                    reason: Reason::CredentialUnavailable,
                    rule: None,
                    detail: Some(e.to_string()),
                    client,
                    seq,
                })
            }
        },
    };
    let substitutions = snap
        .substitutions_for(c)
        .activate(dest, target.scheme)
        .map_err(|e| Refusal {
            reason: Reason::CredentialUnavailable,
            rule: None,
            detail: Some(e.to_string()),
            client: client.clone(),
            seq,
        })?;
    Ok(RequestAdmission {
        client,
        would_deny: host.or(rule),
        credential,
        seq,
        substitutions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CompileOptions, Config};
    use crate::target::Scheme;
    use std::path::Path;

    fn snap_with(intercept: &str, yaml: &str) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - {{ name: a, token: {{ type: static, value: tok }} }}\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\n  intercept: {intercept}\n{yaml}",
            dir.path().display()
        );
        Config::parse(&text, Path::new("."))
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap()
    }

    fn snap(yaml: &str) -> Snapshot {
        snap_with("auto", yaml)
    }

    fn target(s: &str, path: &str) -> Target {
        Target {
            scheme: Scheme::Https,
            authority: crate::target::parse_authority(s.as_bytes(), None).unwrap(),
            path: path.into(),
        }
    }

    const AUTH: &[&[u8]] = &[b"Bearer tok"];

    #[test]
    fn authentication_comes_before_policy() {
        let s = snap("network: { deny: [bad.test] }\n");
        let r = admit_request(&s, &[], None, &[], "GET", &target("bad.test:443", "/")).unwrap_err();
        assert_eq!(r.reason, Reason::AuthRequired);
        let r =
            admit_request(&s, &[], None, AUTH, "GET", &target("bad.test:443", "/")).unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedHost);
        assert_eq!(r.client.as_deref().map(|c| &*c.name), Some("a"));
    }

    #[test]
    fn a_denied_request_never_reads_its_credential() {
        let s = snap(
            "network: { rules: ['deny DELETE api.test /**'] }\ncredentials:\n  - { host: api.test, source: { type: env, var: WARDEN_TEST_ADMISSION_UNSET } }\n",
        );
        let t = target("api.test:443", "/x");
        let r = admit_request(&s, &[], None, AUTH, "DELETE", &t).unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedRule);
        let r = admit_request(&s, &[], None, AUTH, "GET", &t).unwrap_err();
        assert_eq!(r.reason, Reason::CredentialUnavailable);
        assert!(r.detail.unwrap().contains("WARDEN_TEST_ADMISSION_UNSET"));
    }

    #[test]
    fn a_clients_own_network_section_sets_its_own_rules_case() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - {{ name: a, token: {{ type: static, value: tok }}, network: {{ rules_case: insensitive, rules: ['deny * api.test /admin'] }} }}\n      - {{ name: b, token: {{ type: static, value: tok-b }} }}\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\nnetwork: {{ rules: ['deny * api.test /admin'] }}\n",
            dir.path().display()
        );
        let s = Config::parse(&text, Path::new("."))
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap();
        let t = target("api.test:443", "/ADMIN");
        let r = admit_request(&s, &[], None, AUTH, "GET", &t).unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedRule);
        // Client b has no network section of its own: the top-level one is case-sensitive.
        assert!(admit_request(&s, &[], None, &[b"Bearer tok-b"], "GET", &t).is_ok());
        let r = admit_request(&s, &[], None, AUTH, "GET", &target("api.test:443", "/a%00"));
        assert_eq!(r.unwrap_err().reason, Reason::AmbiguousPath);
    }

    #[test]
    fn hosts_that_need_inspection_are_intercepted_or_refused() {
        let creds = "credentials:\n  - { host: api.test, source: { type: static, value: s } }\n";
        let dest = crate::target::parse_authority(b"api.test:443", None).unwrap();
        let other = crate::target::parse_authority(b"other.test:443", None).unwrap();
        let auto = snap_with("auto", creds);
        assert!(admit_connect(&auto, &[], AUTH, &dest).unwrap().intercept);
        assert!(!admit_connect(&auto, &[], AUTH, &other).unwrap().intercept);
        let none = snap_with("none", creds);
        let r = admit_connect(&none, &[], AUTH, &dest).unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedRule);
        assert!(!admit_connect(&none, &[], AUTH, &other).unwrap().intercept);
        let report = snap_with("none", &format!("{creds}network: {{ mode: report }}\n"));
        let a = admit_connect(&report, &[], AUTH, &dest).unwrap();
        assert!(!a.intercept);
        assert_eq!(a.would_deny, Some(Reason::PolicyDeniedRule));
        let missing = admit_connect(&auto, &[], &[], &dest).unwrap_err();
        assert_eq!(missing.reason, Reason::AuthRequired);
    }
}
