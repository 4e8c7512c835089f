//! Admission: the ordered decisions a CONNECT or a request passes before anything is done on
//! its behalf — who the client is (auth), whether its destination and, for requests, its
//! method and path are allowed (policy), how a CONNECT is carried (intercepted or blind), and
//! which credential a request carries (read only once it is allowed). Called by the front door
//! for every CONNECT and by `request_filter` for every request. Free of `Session`, so the order
//! (DESIGN invariant 2) is tested here.

use crate::auth::Client;
use crate::config::Snapshot;
use crate::correlation::Correlated;
use crate::credentials::Unavailable;
use crate::llm::LlmPolicy;
use crate::policy::{Denial, Mode};
use crate::profile::Profile;
use crate::reason::Reason;
use crate::refresh::Lease;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::scrub::Replacer;
use crate::substitution::Active;
use crate::target::{check_head, Authority, Target, TunnelIdentity};
use crate::transform::Transform;
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

/// A request as admission sees it: plain facts read from its head, nothing of the session.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a str,
    /// The request target as sent (absolute-form, or origin-form inside a tunnel).
    pub raw_target: &'a [u8],
    /// Every `Host` header value.
    pub hosts: &'a [&'a [u8]],
    /// Every `Proxy-Authorization` header value.
    pub proxy_auth: &'a [&'a [u8]],
    /// Every `Authorization` header value: a relayed request's identity may come as
    /// `Basic` userinfo from the relay URL.
    pub authorization: &'a [&'a [u8]],
    /// The raw head as read, for its size and for placeholders bound elsewhere.
    pub raw: &'a [u8],
    /// The intercepted tunnel the request came through, if any.
    pub tunnel: Option<&'a TunnelIdentity>,
    /// The request asks for an upgrade (WebSocket).
    pub upgrade: bool,
    /// An HTTP/2 stream's `:scheme` (empty when it sent none); `None` for HTTP/1.x.
    pub scheme: Option<&'a str>,
}

/// Everything decided about an admitted request, from which every later phase works.
#[derive(Debug)]
pub struct RequestPlan {
    /// Where it goes.
    pub target: Target,
    /// The authenticated client, when auth is on.
    pub client: Option<Arc<Client>>,
    /// The profile it runs under.
    pub profile: Arc<Profile>,
    /// In report mode: what it would have been denied for.
    pub would_deny: Option<Reason>,
    /// The credential to set on the upstream request, already read.
    pub credential: Option<Injection>,
    /// The correlation sequence number and session, when the request is a correlation target.
    pub seq: Option<Correlated>,
    /// Placeholder substitutions in force, secrets already read.
    pub substitutions: Vec<Active>,
    /// Masks every secret warden adds, raw or encoded, should the origin echo it; `None`
    /// when warden adds none.
    pub scrub: Option<Replacer>,
    /// The LLM entry for the destination, if it has one.
    pub llm: Option<Arc<LlmPolicy>>,
    /// The MCP entry for the destination and path, if it has one.
    pub mcp: Option<Arc<crate::mcp::McpPolicy>>,
    /// Response transformers for the destination.
    pub transforms: Vec<Arc<Transform>>,
    /// A note for the log that did not stop the request.
    pub alert: Option<&'static str>,
    /// The relay the request came through, if it did.
    pub relay: Option<RelayUse>,
    /// The leases on the values read from refreshing sources: an upstream 401 evicts them.
    pub leases: Vec<Lease>,
}

/// A request that came through a relay (`/relay/{name}/…`).
#[derive(Debug)]
pub struct RelayUse {
    /// The relay's name.
    pub name: Arc<str>,
    /// The client identified itself with `Authorization: Basic` (userinfo in the relay URL),
    /// which is warden's and is not forwarded.
    pub strip_authorization: bool,
}

impl RequestPlan {
    /// After the upstream answered `status`: a 401 evicts the refreshing values the request
    /// carried (each refreshes once, however many requests it failed).
    pub fn upstream_answered(&self, status: u16, runtime: &Runtime) {
        if status == 401 {
            for lease in &self.leases {
                lease.rejected(&runtime.sources.refreshers);
            }
        }
    }

    /// Whether the response must come uncompressed: scanned for an echoed secret, parsed for
    /// LLM policy, or rewritten.
    pub fn needs_identity(&self) -> bool {
        self.scrub.is_some()
            || self.llm.is_some()
            || self.mcp.is_some()
            || self.transforms.iter().any(|t| !t.replace_body.is_empty())
    }
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
    /// Where the request was going, once that was known.
    pub target: Option<Box<Target>>,
    /// The relay it came through, once that was known.
    pub relay: Option<Arc<str>>,
}

impl Refusal {
    fn new(reason: Reason, client: Option<Arc<Client>>) -> Self {
        Refusal {
            reason,
            rule: None,
            detail: None,
            client,
            seq: None,
            target: None,
            relay: None,
        }
    }

    fn denied(denial: Denial, client: Option<Arc<Client>>) -> Self {
        Refusal {
            reason: denial.reason,
            rule: denial.rule,
            ..Refusal::new(denial.reason, client)
        }
    }
}

/// Who sent a request: inside a tunnel the CONNECT's client (which must still be configured),
/// otherwise the request's own `Proxy-Authorization`. `None` when auth is off.
pub fn identify(
    snap: &Snapshot,
    registry: &Registry,
    tunnel: Option<&TunnelIdentity>,
    proxy_auth: &[&[u8]],
) -> Result<Option<Arc<Client>>, Reason> {
    if !snap.requires_auth() {
        return Ok(None);
    }
    let file = snap.auth.as_ref();
    match tunnel {
        // The CONNECT's client, as it is now: a revoked one is refused, a replaced one runs
        // under its new policy.
        Some(t) => {
            let name = t.client.as_deref().ok_or(Reason::AuthInvalid)?;
            file.and_then(|c| c.get(name).cloned())
                .or_else(|| registry.get(name))
                .map(Some)
                .ok_or(Reason::AuthInvalid)
        }
        None => {
            let presented = crate::auth::presented(proxy_auth)?;
            file.and_then(|c| c.matching(&presented))
                .or_else(|| registry.authenticate(&presented))
                .map(Some)
                .ok_or(Reason::AuthInvalid)
        }
    }
}

/// Admits a CONNECT to `dest`: auth, host policy (IP literals also checked against the SSRF
/// guard and warden's own addresses `own`), then interception. A host some rule must see
/// inside (L7 rules, credentials, header rules) is intercepted; when `tls.intercept` or
/// `passthrough` would tunnel it blind instead, it is refused rather than left unchecked.
pub fn admit_connect(
    snap: &Snapshot,
    registry: &Registry,
    own: &[SocketAddr],
    proxy_auth: &[&[u8]],
    dest: &Authority,
) -> Result<ConnectAdmission, Refusal> {
    let client = identify(snap, registry, None, proxy_auth).map_err(|r| Refusal::new(r, None))?;
    let profile = snap.profile(client.as_deref());
    let network = &profile.network;
    let mut would_deny = network
        .authorize(dest, own)
        .map_err(|d| Refusal::denied(d, client.clone()))?;
    let inspect = profile.inspects(dest);
    let intercept = snap.tls.intercepts(dest, inspect);
    if inspect && !intercept {
        let rule = "network.rules, credentials, headers, substitutions, correlation, llm, mcp or transforms apply to this host, but tls.intercept/passthrough tunnel it blind";
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

/// Admits one request and plans it: the head's size and target (bound to the tunnel inside
/// one), identity, a correlation number (allocated before policy, so a denied request consumes
/// one too), host policy, L7 rules, and only then the credential and substitution reads (an
/// unreadable secret refuses with `credential_unavailable`). A refreshing source with no valid
/// value is awaited, never blocking the worker.
pub async fn admit_request(
    snap: &Snapshot,
    runtime: &Runtime,
    own: &[SocketAddr],
    head: &RequestHead<'_>,
) -> Result<RequestPlan, Refusal> {
    // An HTTP/2 stream inside a tunnel: no CONNECT within it (HTTP/1.1 heads are vetted for
    // that as they are read), and only `https`, the scheme the tunnel carries.
    if head.method.eq_ignore_ascii_case("CONNECT") {
        return Err(Refusal::new(Reason::UnexpectedConnect, None));
    }
    if head
        .scheme
        .is_some_and(|s| !s.eq_ignore_ascii_case("https"))
    {
        return Err(Refusal::new(Reason::UnsupportedScheme, None));
    }
    let (target, relay) = locate(snap, head).map_err(|r| Refusal::new(r, None))?;
    // A relay URL cannot carry proxy headers: its userinfo (`Authorization: Basic`) may
    // identify the client instead, and is then warden's alone.
    let from_userinfo = relay.is_some() && head.proxy_auth.is_empty() && snap.requires_auth();
    let userinfo: Vec<&[u8]> = match from_userinfo {
        true => head
            .authorization
            .iter()
            .copied()
            .filter(|v| v.len() > 6 && v[..6].eq_ignore_ascii_case(b"basic "))
            .collect(),
        false => Vec::new(),
    };
    let presented = if from_userinfo {
        &userinfo[..]
    } else {
        head.proxy_auth
    };
    let relay = relay.map(|name| RelayUse {
        name,
        strip_authorization: !userinfo.is_empty(),
    });
    let client =
        identify(snap, &runtime.registry, head.tunnel, presented).map_err(|r| Refusal {
            target: Some(Box::new(target.clone())),
            relay: relay.as_ref().map(|r| r.name.clone()),
            ..Refusal::new(r, None)
        })?;
    let profile = snap.profile(client.as_deref()).clone();
    let dest = &target.authority;
    let seq = profile
        .correlation
        .as_ref()
        .and_then(|corr| corr.allocate(&runtime.sessions, dest, &target.path));
    let refused = |reason: Reason, rule: Option<String>, detail: Option<String>| Refusal {
        reason,
        rule,
        detail,
        client: client.clone(),
        seq: seq.as_ref().map(|c| c.seq),
        target: Some(Box::new(target.clone())),
        relay: relay.as_ref().map(|r| r.name.clone()),
    };
    let denied = |d: Denial| refused(d.reason, d.rule, None);
    let network = &profile.network;
    let host = network.authorize(dest, own).map_err(denied)?;
    let rule = network
        .decide_request(head.method, dest, &target.path)
        .map_err(denied)?;
    // The credential is bound to the connection identity, never to the Host header.
    let unavailable =
        |e: Unavailable| refused(Reason::CredentialUnavailable, None, Some(e.to_string()));
    let cred = profile.credentials.for_request(dest, target.scheme);
    let read = match cred {
        Some(c) => Some(c.read(&runtime.sources).await.map_err(unavailable)?),
        None => None,
    };
    let substitutions = profile
        .substitutions
        .activate(&runtime.sources, dest, target.scheme)
        .await
        .map_err(unavailable)?;
    let leases: Vec<Lease> = read
        .iter()
        .filter_map(|r| r.lease.clone())
        .chain(substitutions.iter().filter_map(|s| s.lease.clone()))
        .collect();
    // Every secret warden adds is masked if the origin echoes it back, raw or encoded, and so
    // is the base64 of the header value it went in.
    let secrets: Vec<Vec<u8>> = read
        .iter()
        .map(|r| &r.secret)
        .chain(substitutions.iter().map(|s| &s.secret))
        .map(|s| s.expose().as_bytes().to_vec())
        .collect();
    let values: Vec<Vec<u8>> = read.iter().map(|r| r.value.as_bytes().to_vec()).collect();
    let scrub = (!secrets.is_empty()).then(|| runtime.maskers.masking(secrets, values));
    let credential = cred.zip(read).map(|(c, r)| Injection {
        header: c.header.clone(),
        value: r.value,
        grant: c.grant.clone(),
    });
    // A placeholder headed for a host it does not belong to is left alone, and flagged: the
    // agent may be trying to exfiltrate, or is misconfigured.
    let alert = profile
        .substitutions
        .foreign_placeholder_in(dest, head.raw)
        .then_some("placeholder_to_foreign_host");
    let llm = profile.llm.for_dest(dest).cloned();
    let mcp = profile.mcp.for_request(dest, &target.path).cloned();
    let transforms = profile.transforms.for_dest(dest);
    Ok(RequestPlan {
        target,
        client,
        profile,
        would_deny: host.or(rule),
        credential,
        seq,
        substitutions,
        scrub,
        llm,
        mcp,
        transforms,
        alert,
        relay,
        leases,
    })
}

/// Where a request goes: through a relay (an origin-form `/relay/{name}/…` outside a tunnel),
/// or where its target and the tunnel say ([`check_head`]).
fn locate(snap: &Snapshot, head: &RequestHead<'_>) -> Result<(Target, Option<Arc<str>>), Reason> {
    let routed = match head.tunnel {
        None => snap.relays.route(head.raw_target),
        Some(_) => None,
    };
    let Some(routed) = routed else {
        let target = check_head(
            head.raw.len(),
            head.raw_target,
            head.hosts,
            head.tunnel,
            snap.limits.max_request_header_bytes,
        )?;
        return Ok((target, None));
    };
    if head.raw.len() > snap.limits.max_request_header_bytes {
        return Err(Reason::HeadersTooLarge);
    }
    if head.hosts.len() > 1 {
        return Err(Reason::AmbiguousFraming);
    }
    // The Host names warden itself; the target is the relay's.
    let routed = routed?;
    Ok((routed.target, Some(routed.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CompileOptions, Config};
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

    /// Admits `method` to `url`: absolute-form `http://` with `proxy_auth`, or `https://` as a
    /// request inside client a's intercepted tunnel.
    fn admit(
        s: &Snapshot,
        proxy_auth: &[&[u8]],
        method: &str,
        url: &str,
    ) -> Result<RequestPlan, Refusal> {
        let (tunnel, raw_target) = match url.strip_prefix("https://") {
            Some(rest) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let tunnel = TunnelIdentity {
                    authority: crate::target::parse_authority(authority.as_bytes(), Some(443))
                        .unwrap(),
                    client: Some("a".into()),
                    sni: None,
                };
                (Some(tunnel), path)
            }
            None => (None, url),
        };
        let head = RequestHead {
            method,
            raw_target: raw_target.as_bytes(),
            hosts: &[],
            proxy_auth,
            authorization: &[],
            raw: b"",
            tunnel: tunnel.as_ref(),
            upgrade: false,
            scheme: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(admit_request(s, &Runtime::default(), &[], &head))
    }

    const AUTH: &[&[u8]] = &[b"Bearer tok"];

    #[test]
    fn authentication_comes_before_policy() {
        let s = snap("network: { deny: [bad.test] }\n");
        let r = admit(&s, &[], "GET", "http://bad.test/").unwrap_err();
        assert_eq!(r.reason, Reason::AuthRequired);
        let r = admit(&s, AUTH, "GET", "http://bad.test/").unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedHost);
        assert_eq!(r.client.as_deref().map(|c| &*c.name), Some("a"));
    }

    fn relayed(
        s: &Snapshot,
        proxy_auth: &[&[u8]],
        authorization: &[&[u8]],
        raw_target: &str,
    ) -> Result<RequestPlan, Refusal> {
        let head = RequestHead {
            method: "GET",
            raw_target: raw_target.as_bytes(),
            hosts: &[b"127.0.0.1:9080"],
            proxy_auth,
            authorization,
            raw: b"",
            tunnel: None,
            upgrade: false,
            scheme: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(admit_request(s, &Runtime::default(), &[], &head))
    }

    #[test]
    fn a_relayed_request_is_identified_by_proxy_authorization_or_the_urls_userinfo() {
        let s = snap(
            "relays: [{ name: h, target: 'https://api.test:8443/base' }]
",
        );
        // base64("a:tok")
        let basic: &[&[u8]] = &[b"Basic YTp0b2s="];
        let p = relayed(&s, AUTH, &[b"Bearer agent-own"], "/relay/h/x?q=1").unwrap();
        assert_eq!(p.target.path, "/base/x?q=1");
        assert_eq!(p.target.authority.to_string(), "api.test:8443");
        let r = p.relay.unwrap();
        assert_eq!((&*r.name, r.strip_authorization), ("h", false));
        let p = relayed(&s, &[], basic, "/relay/h/x").unwrap();
        assert_eq!(p.client.as_deref().map(|c| &*c.name), Some("a"));
        assert!(p.relay.unwrap().strip_authorization);
        // The same 407 rules as elsewhere: nothing, a Bearer meant for the target, a bad login.
        for auth in [
            &[][..],
            &[&b"Bearer tok"[..]][..],
            &[&b"Basic YTp3cm9uZw=="[..]][..],
        ] {
            let r = relayed(&s, &[], auth, "/relay/h/x").unwrap_err();
            assert!(matches!(
                r.reason,
                Reason::AuthRequired | Reason::AuthInvalid
            ));
            assert_eq!(r.relay.as_deref(), Some("h"));
        }
        let r = relayed(&s, AUTH, &[], "/relay/nope/x").unwrap_err();
        assert_eq!(r.reason, Reason::RelayUnknown);
        let r = relayed(&s, AUTH, &[], "/relay/h/../x").unwrap_err();
        assert_eq!(r.reason, Reason::RelayPathInvalid);
        // Anything else origin-form to the proxy port is still refused.
        let r = relayed(&s, AUTH, &[], "/other").unwrap_err();
        assert_eq!(r.reason, Reason::OriginFormToProxy);
    }

    #[test]
    fn a_relayed_request_meets_the_targets_policy() {
        let s = snap(
            "relays: [{ name: h, target: 'https://api.test/base' }]
network: { policy: strict, allow: [api.test], rules: ['deny * api.test /base/admin/**', 'allow * api.test /**'] }
credentials: [{ host: api.test, source: { type: static, value: s3cr3t } }]
",
        );
        let p = relayed(&s, AUTH, &[], "/relay/h/ok").unwrap();
        assert!(p.credential.is_some());
        let r = relayed(&s, AUTH, &[], "/relay/h/admin/x").unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedRule);
        let other = snap(
            "relays: [{ name: h, target: 'https://other.test/' }]
network: { policy: strict, allow: [api.test] }
",
        );
        let r = relayed(&other, AUTH, &[], "/relay/h/").unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedHost);
    }

    #[test]
    fn a_denied_request_never_reads_its_credential() {
        let s = snap(
            "network: { rules: ['deny DELETE api.test /**'] }\ncredentials:\n  - { host: api.test, source: { type: env, var: WARDEN_TEST_ADMISSION_UNSET } }\n",
        );
        let r = admit(&s, &[], "DELETE", "https://api.test/x").unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedRule);
        let r = admit(&s, &[], "GET", "https://api.test/x").unwrap_err();
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
        let r = admit(&s, AUTH, "GET", "http://api.test/ADMIN").unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedRule);
        // Client b has no network section of its own: the top-level one is case-sensitive.
        assert!(admit(&s, &[b"Bearer tok-b"], "GET", "http://api.test/ADMIN").is_ok());
        let r = admit(&s, AUTH, "GET", "http://api.test/a%00");
        assert_eq!(r.unwrap_err().reason, Reason::AmbiguousPath);
    }

    #[test]
    fn hosts_that_need_inspection_are_intercepted_or_refused() {
        let creds = "credentials:\n  - { host: api.test, source: { type: static, value: s } }\n";
        let dest = crate::target::parse_authority(b"api.test:443", None).unwrap();
        let other = crate::target::parse_authority(b"other.test:443", None).unwrap();
        let auto = snap_with("auto", creds);
        assert!(
            admit_connect(&auto, &Registry::default(), &[], AUTH, &dest)
                .unwrap()
                .intercept
        );
        assert!(
            !admit_connect(&auto, &Registry::default(), &[], AUTH, &other)
                .unwrap()
                .intercept
        );
        let none = snap_with("none", creds);
        let r = admit_connect(&none, &Registry::default(), &[], AUTH, &dest).unwrap_err();
        assert_eq!(r.reason, Reason::PolicyDeniedRule);
        assert!(
            !admit_connect(&none, &Registry::default(), &[], AUTH, &other)
                .unwrap()
                .intercept
        );
        let report = snap_with("none", &format!("{creds}network: {{ mode: report }}\n"));
        let a = admit_connect(&report, &Registry::default(), &[], AUTH, &dest).unwrap();
        assert!(!a.intercept);
        assert_eq!(a.would_deny, Some(Reason::PolicyDeniedRule));
        let missing = admit_connect(&auto, &Registry::default(), &[], &[], &dest).unwrap_err();
        assert_eq!(missing.reason, Reason::AuthRequired);
    }

    #[test]
    fn mcp_endpoints_are_intercepted_and_a_clients_own_section_replaces_the_top_level_one() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - {{ name: a, token: {{ type: static, value: tok }}, mcp: [{{ host: m.test, path: /a }}] }}\n      - {{ name: b, token: {{ type: static, value: tok-b }} }}\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\nmcp: [{{ host: m.test, path: /mcp }}]\n",
            dir.path().display()
        );
        let s = Config::parse(&text, Path::new("."))
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap();
        const B: &[&[u8]] = &[b"Bearer tok-b"];
        let planned = |auth, url| admit(&s, auth, "POST", url).unwrap().mcp.is_some();
        assert!(planned(AUTH, "http://m.test/a"));
        assert!(!planned(AUTH, "http://m.test/mcp"));
        assert!(planned(B, "http://m.test/mcp"));
        assert!(!planned(B, "http://m.test/a"));
        assert!(admit(&s, B, "POST", "http://m.test/mcp")
            .unwrap()
            .needs_identity());
        let dest = crate::target::parse_authority(b"m.test:443", None).unwrap();
        for auth in [AUTH, B] {
            let c = admit_connect(&s, &Registry::default(), &[], auth, &dest).unwrap();
            assert!(c.intercept && c.inspect);
        }
    }

    #[test]
    fn a_clients_own_transforms_replace_the_top_level_ones() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - {{ name: a, token: {{ type: static, value: tok }}, transforms: [{{ host: api.test, remove_headers: [server] }}] }}\n      - {{ name: b, token: {{ type: static, value: tok-b }} }}\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\ntransforms: [{{ host: api.test, set_headers: {{ x-top: '1' }} }}, {{ host: other.test, set_headers: {{ x-top: '1' }} }}]\n",
            dir.path().display()
        );
        let s = Config::parse(&text, Path::new("."))
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap();
        let a = admit(&s, AUTH, "GET", "http://api.test/").unwrap();
        assert_eq!(a.transforms.len(), 1);
        assert_eq!(a.transforms[0].remove_headers[0].as_str(), "server");
        assert!(admit(&s, AUTH, "GET", "http://other.test/")
            .unwrap()
            .transforms
            .is_empty());
        let b = admit(&s, &[b"Bearer tok-b"], "GET", "http://api.test/").unwrap();
        assert_eq!(b.transforms[0].set_headers[0].0.as_str(), "x-top");
    }
}
