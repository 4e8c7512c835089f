//! Network policy: which destinations a rule names (host globs, IPs, CIDRs — used by
//! `network.allow`/`deny` and `tls.passthrough`), whether a destination is allowed, and where it
//! may be dialled: resolved once (`network.resolve` overrides, then DNS), every address
//! classified (the SSRF guard), warden's own listeners refused (loop detection), and exactly the
//! checked address returned for dialling. Called by the front door (CONNECT decisions, blind
//! tunnels), `request_filter` (host decisions) and `upstream_peer` (checked resolution).

use crate::config::KeyErrors;
use crate::credentials::Credentials;
use crate::reason::Reason;
use crate::target::{parse_host, split_authority, Authority, Host};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// An address range; matches IP-literal destinations only.
    Cidr(IpNet),
}

impl HostPattern {
    /// The port written after the host, if any (none means 80 and 443).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// True when both patterns name the same hosts, whatever their ports.
    pub fn same_hosts(&self, other: &HostPattern) -> bool {
        self.kind == other.kind
    }

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
                (PatternKind::Cidr(net), Host::Ip(ip)) => net.contains(ip),
                (_, Host::Ip(_)) | (PatternKind::Cidr(_), Host::Name(_)) => false,
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
        } else if let Some((net, len_and_port)) = source.split_once('/') {
            let (len, port) = match len_and_port.split_once(':') {
                Some((len, port)) => (len, Some(port)),
                None => (len_and_port, None),
            };
            let net: IpNet = format!("{net}/{len}")
                .parse()
                .map_err(|_| invalid("not a CIDR range (`10.0.0.0/8`, `fd00::/8`)"))?;
            let port = match port {
                None => None,
                Some(p) => Some(
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| invalid("bad port"))?,
                ),
            };
            (PatternKind::Cidr(net.trunc()), port)
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

/// `network.policy`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Only destinations in `allow` (minus `deny`).
    Strict,
    /// Everything but `deny`.
    #[default]
    Permissive,
}

/// `network.mode`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are enforced.
    #[default]
    Enforce,
    /// Host-policy denials are logged as `would_deny` and the request goes through. The SSRF
    /// guard and loop detection are enforced in both modes.
    Report,
}

/// `network.private_networks`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivateNetworks {
    /// Refuse non-public addresses unless `allow_cidrs` covers them.
    #[default]
    Deny,
    /// Allow them (warden's own listeners are still refused).
    Allow,
}

/// The `network` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// strict or permissive.
    #[serde(default)]
    pub policy: PolicyKind,
    /// enforce or report.
    #[serde(default)]
    pub mode: Mode,
    /// Destinations allowed under `strict`.
    #[serde(default)]
    pub allow: Vec<HostPattern>,
    /// Destinations always denied (deny wins).
    #[serde(default)]
    pub deny: Vec<HostPattern>,
    /// The SSRF guard on resolved addresses.
    #[serde(default)]
    pub private_networks: PrivateNetworks,
    /// Non-public ranges allowed despite the guard.
    #[serde(default)]
    pub allow_cidrs: Vec<IpNet>,
    /// Static name → address overrides, used before DNS and checked like DNS answers.
    #[serde(default)]
    pub resolve: BTreeMap<String, IpAddr>,
    /// Allow the hosts of every credential with one of these grants.
    #[serde(default)]
    pub grants: Vec<String>,
    /// L7 rules, first match wins, on every request (plain or inside an intercepted tunnel).
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Whether rule paths match case-sensitively.
    #[serde(default)]
    pub rules_case: RulesCase,
}

/// `network.rules_case`: how rule paths compare with request paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesCase {
    /// `/Admin` and `/admin` are different paths, as RFC 3986 and most origins have it.
    #[default]
    Sensitive,
    /// Both sides are case-folded before matching, for origins that fold case (IIS, Windows
    /// file servers, case-insensitive routers).
    Insensitive,
}

impl NetworkConfig {
    /// Compiles the section against the credentials in force (for `grants`); fails naming
    /// every `resolve` entry that is not a host name and every grant no credential carries.
    pub fn compile(&self, credentials: &Credentials) -> Result<NetworkPolicy, KeyErrors> {
        let mut errors = Vec::new();
        let mut allow = self.allow.clone();
        for grant in &self.grants {
            match credentials.grant_hosts(grant) {
                Some(hosts) => allow.extend(hosts),
                None => errors.push((
                    "network.grants".to_string(),
                    format!("no credential has grant `{grant}`"),
                )),
            }
        }
        let mut overrides = HashMap::new();
        for (name, ip) in &self.resolve {
            match parse_host(name) {
                Ok(Host::Name(n)) => {
                    overrides.insert(n, *ip);
                }
                _ => errors.push((
                    format!("network.resolve.{name}"),
                    format!("`{name}` is not a host name"),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NetworkPolicy {
            kind: self.policy,
            mode: self.mode,
            allow,
            deny: self.deny.clone(),
            private_networks: self.private_networks,
            allow_cidrs: self.allow_cidrs.iter().map(IpNet::trunc).collect(),
            rules: self
                .rules
                .iter()
                .map(|r| r.folded(self.rules_case))
                .collect(),
            rules_case: self.rules_case,
            resolver: Resolver { overrides },
        })
    }
}

/// A host-policy verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDecision {
    /// The destination may be reached (subject to the address checks).
    Allow,
    /// Refused by `rule`.
    Deny {
        /// Which entry refused it (e.g. `network.deny: evil.example.com`).
        rule: String,
    },
}

/// A refusal: why, and which config entry decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The reason code.
    pub reason: Reason,
    /// The deciding entry, when one did.
    pub rule: Option<String>,
}

/// The compiled `network` section.
#[derive(Debug)]
pub struct NetworkPolicy {
    kind: PolicyKind,
    /// enforce or report.
    pub mode: Mode,
    allow: Vec<HostPattern>,
    deny: Vec<HostPattern>,
    private_networks: PrivateNetworks,
    allow_cidrs: Vec<IpNet>,
    rules: Vec<Rule>,
    rules_case: RulesCase,
    resolver: Resolver,
}

impl NetworkPolicy {
    /// Whether `dest` may be reached by name (or literal), before any DNS: deny wins, then
    /// `strict` requires an `allow` entry.
    pub fn decide_host(&self, dest: &Authority) -> HostDecision {
        if let Some(p) = self.deny.iter().find(|p| p.matches(dest)) {
            return HostDecision::Deny {
                rule: format!("network.deny: {p}"),
            };
        }
        match self.kind {
            PolicyKind::Permissive => HostDecision::Allow,
            PolicyKind::Strict if any_matches(&self.allow, dest) => HostDecision::Allow,
            PolicyKind::Strict => HostDecision::Deny {
                rule: "network.policy: strict (not in network.allow)".into(),
            },
        }
    }

    /// Everything decidable before DNS: host policy (in report mode a denial becomes
    /// `Ok(Some(reason))`, "would deny"), and for IP-literal destinations the loop and SSRF
    /// checks. `own` are warden's bound listener addresses.
    pub fn authorize(
        &self,
        dest: &Authority,
        own: &[SocketAddr],
    ) -> Result<Option<Reason>, Denial> {
        let mut would_deny = None;
        if let HostDecision::Deny { rule } = self.decide_host(dest) {
            match self.mode {
                Mode::Enforce => {
                    return Err(Denial {
                        reason: Reason::PolicyDeniedHost,
                        rule: Some(rule),
                    })
                }
                Mode::Report => would_deny = Some(Reason::PolicyDeniedHost),
            }
        }
        if let Host::Ip(ip) = dest.host {
            let addr = SocketAddr::new(ip, dest.port);
            if is_own(addr, own) {
                return Err(Denial {
                    reason: Reason::LoopDetected,
                    rule: None,
                });
            }
            self.check_addr(ip).map_err(|reason| Denial {
                reason,
                rule: Some("network.private_networks: deny".into()),
            })?;
        }
        Ok(would_deny)
    }

    /// Whether any rule names `dest`: its requests must be seen, so a CONNECT to it is
    /// intercepted (or refused when it cannot be).
    pub fn has_rules_for(&self, dest: &Authority) -> bool {
        self.rules.iter().any(|r| r.host.matches(dest))
    }

    /// The L7 rules for one request. For a destination that has rules, a path origins could read
    /// more than one way ([`check_path`]) is refused with [`Reason::AmbiguousPath`]; otherwise
    /// the first rule matching method, destination and matching form of the path
    /// ([`normalize_path`], case-folded under `rules_case: insensitive`) decides, and no match
    /// leaves the host decision standing. In report mode a refusal becomes `Ok(Some(reason))`.
    pub fn decide_request(
        &self,
        method: &str,
        dest: &Authority,
        path: &str,
    ) -> Result<Option<Reason>, Denial> {
        if !self.has_rules_for(dest) {
            return Ok(None);
        }
        let refuse = |reason: Reason, rule: String| match self.mode {
            Mode::Report => Ok(Some(reason)),
            Mode::Enforce => Err(Denial {
                reason,
                rule: Some(rule),
            }),
        };
        if let Err(why) = check_path(path) {
            return refuse(
                Reason::AmbiguousPath,
                format!("network.rules apply to this host, and {why}"),
            );
        }
        let mut segments = normalize_path(path);
        if self.rules_case == RulesCase::Insensitive {
            for s in &mut segments {
                *s = fold_case(s);
            }
        }
        let Some((i, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(method, dest, &segments))
        else {
            return Ok(None);
        };
        if rule.allow {
            return Ok(None);
        }
        refuse(
            Reason::PolicyDeniedRule,
            format!("network.rules[{i}]: {}", rule.source),
        )
    }

    /// The SSRF guard for one address: [`Reason::PrivateAddress`] for a non-public address
    /// (including IPv4 embedded in IPv6) that no `allow_cidrs` entry covers.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), Reason> {
        if self.private_networks == PrivateNetworks::Allow {
            return Ok(());
        }
        let class = classify_addr(ip);
        if class == AddrClass::Public {
            return Ok(());
        }
        let embedded = embedded_ipv4(ip).map(IpAddr::V4);
        let covered = |a: IpAddr| self.allow_cidrs.iter().any(|n| n.contains(&a));
        if covered(ip) || embedded.is_some_and(covered) {
            Ok(())
        } else {
            Err(Reason::PrivateAddress)
        }
    }

    /// Resolves `dest` once and returns the one address to dial: the first answer that is not
    /// one of warden's own listeners (`own`) and passes [`Self::check_addr`]. When no answer is
    /// left: [`Reason::LoopDetected`] if one pointed at warden, else
    /// [`Reason::PrivateAddress`]; [`Reason::DnsError`] when nothing resolved.
    pub async fn resolve_checked(
        &self,
        dns: &DnsCache,
        dest: &Authority,
        timeout: Duration,
        own: &[SocketAddr],
    ) -> Result<SocketAddr, Reason> {
        let answers = self.resolver.resolve_all(dns, dest, timeout).await?;
        self.pick_checked(&answers, own)
    }

    /// The first of `answers` that may be dialled (see [`Self::resolve_checked`]).
    pub fn pick_checked(
        &self,
        answers: &[SocketAddr],
        own: &[SocketAddr],
    ) -> Result<SocketAddr, Reason> {
        let mut refused = Reason::DnsError;
        for &addr in answers {
            if is_own(addr, own) {
                refused = Reason::LoopDetected;
                continue;
            }
            match self.check_addr(addr.ip()) {
                Ok(()) => return Ok(addr),
                Err(r) if refused != Reason::LoopDetected => refused = r,
                Err(_) => {}
            }
        }
        Err(refused)
    }
}

/// One L7 rule: `"allow|deny METHODS HOSTGLOB PATHGLOB"`, e.g.
/// `"allow GET,HEAD api.github.com /repos/**"`. METHODS is a comma list or `*`; PATHGLOB
/// segments are literals, `*` (one segment) or a final `**` (the rest, including nothing).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Rule {
    allow: bool,
    /// `None`: any method.
    methods: Option<Vec<String>>,
    host: HostPattern,
    path: PathGlob,
    source: String,
}

/// A path pattern: literal segments, `*` (one segment) and a final `**` (the rest, including
/// nothing). Matched against [`normalize_path`] segments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathGlob(Vec<PathSegment>);

impl TryFrom<String> for PathGlob {
    type Error = String;

    fn try_from(glob: String) -> Result<Self, String> {
        let Some(rest) = glob.strip_prefix('/') else {
            return Err(format!("`{glob}` is not a path pattern: it starts with /"));
        };
        let raw: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::new();
        for (i, seg) in raw.iter().enumerate() {
            segments.push(match *seg {
                "**" if i + 1 == raw.len() => PathSegment::Rest,
                "**" => return Err(format!("`{glob}`: `**` may only end a path")),
                "*" => PathSegment::One,
                lit if lit.contains('*') => {
                    return Err(format!("`{glob}`: `*` stands for a whole segment"))
                }
                lit => PathSegment::Literal(glob_literal(&glob, lit)?),
            });
        }
        Ok(PathGlob(segments))
    }
}

/// A glob literal as request segments are compared with it: percent-decoded, and refused when
/// no request could match it (a `;` parameter, a trailing dot or space, a dot-segment: matching
/// ignores or resolves those) or when a request spelling it would be ambiguous.
fn glob_literal(glob: &str, lit: &str) -> Result<String, String> {
    check_path(lit).map_err(|why| format!("`{glob}`: `{lit}` is ambiguous: {why}"))?;
    let decoded = percent_decode(lit);
    match normalize_path(lit).as_slice() {
        [only] if *only == decoded => Ok(decoded),
        [] => Err(format!(
            "`{glob}`: `{lit}` is resolved away when requests are matched (`.` and `..` resolve)"
        )),
        matched => Err(format!(
            "`{glob}`: requests are matched with `;` parameters and trailing dots and spaces \
             stripped and `.`/`..` resolved, so `{lit}` would be matched as `{}`; write that",
            matched.join("/")
        )),
    }
}

impl PathGlob {
    /// Whether the (already normalised) `segments` match.
    pub fn matches(&self, segments: &[String]) -> bool {
        path_matches(&self.0, segments)
    }

    /// The glob with its literals case-folded like request segments under
    /// `rules_case: insensitive`.
    fn folded(&self) -> PathGlob {
        PathGlob(
            self.0
                .iter()
                .map(|s| match s {
                    PathSegment::Literal(l) => PathSegment::Literal(fold_case(l)),
                    other => other.clone(),
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Literal(String),
    /// `*`
    One,
    /// `**`
    Rest,
}

impl TryFrom<String> for Rule {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        let invalid = |why: &str| format!("`{source}` is not a valid rule: {why}");
        let parts: Vec<&str> = source.split_whitespace().collect();
        let [action, methods, host, path] = parts[..] else {
            return Err(invalid("expected \"allow|deny METHODS HOSTGLOB PATHGLOB\""));
        };
        let allow = match action {
            "allow" => true,
            "deny" => false,
            _ => return Err(invalid("the action is allow or deny")),
        };
        let methods = if methods == "*" {
            None
        } else {
            let list: Vec<String> = methods.split(',').map(str::to_ascii_uppercase).collect();
            if list
                .iter()
                .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(invalid("METHODS is `*` or a comma list like GET,HEAD"));
            }
            Some(list)
        };
        let host = HostPattern::try_from(host.to_string()).map_err(|e| invalid(&e))?;
        let path = PathGlob::try_from(path.to_string()).map_err(|e| invalid(&e))?;
        Ok(Rule {
            allow,
            methods,
            host,
            path,
            source,
        })
    }
}

impl Rule {
    /// The rule as compiled under `case`.
    fn folded(&self, case: RulesCase) -> Rule {
        match case {
            RulesCase::Sensitive => self.clone(),
            RulesCase::Insensitive => Rule {
                path: self.path.folded(),
                ..self.clone()
            },
        }
    }

    fn matches(&self, method: &str, dest: &Authority, segments: &[String]) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self.host.matches(dest)
            && self.path.matches(segments)
    }
}

fn path_matches(glob: &[PathSegment], segments: &[String]) -> bool {
    match glob.split_first() {
        None => segments.is_empty(),
        Some((PathSegment::Rest, _)) => true,
        Some((PathSegment::One, rest)) => {
            !segments.is_empty() && path_matches(rest, &segments[1..])
        }
        Some((PathSegment::Literal(l), rest)) => {
            segments.first() == Some(l) && path_matches(rest, &segments[1..])
        }
    }
}

/// The matching form of a path, in segments: query dropped, percent-escapes decoded (so
/// `%2e%2e` and `%2F` cannot hide a segment), `/` and `\` both separators, each segment cut at
/// its first `;` (path parameters: `/a;jsessionid=1`, `/..;/`) and stripped of trailing dots
/// and spaces (`/a.`, `/a%20`, which Windows origins fold), empty and `.` segments dropped, `..`
/// applied. The forwarded path is never changed; this is only what rules compare.
pub fn normalize_path(path: &str) -> Vec<String> {
    let decoded = percent_decode(path_part(path));
    let mut out: Vec<String> = Vec::new();
    for seg in decoded.split(['/', '\\']) {
        match strip_params(seg) {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => match s.trim_end_matches(['.', ' ']) {
                "" => {}
                key => out.push(key.to_string()),
            },
        }
    }
    out
}

/// The path without its query (or a fragment a client should not have sent).
fn path_part(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

/// A segment without its `;` parameters.
fn strip_params(seg: &str) -> &str {
    seg.split(';').next().unwrap_or("")
}

/// Case folding for `rules_case: insensitive`: lower case of upper case, so that characters
/// whose upper case is ASCII fold like it (`ſ` like `s`, the Kelvin sign like `k`), as an
/// origin comparing upper-cased paths would see them.
fn fold_case(s: &str) -> String {
    s.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Why a path is ambiguous: origins (and the proxies in front of them) would read it in more
/// than one way, so no rule can be matched against it with confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// `%2F` or `%5C`: a separator to some origins, part of a segment to others.
    EncodedSeparator,
    /// An escape is left after one decoding (`%2541`, `%%34%31`): origins that decode twice
    /// see another path.
    DoubleEncoded,
    /// The decoded bytes are not UTF-8 (including overlong forms such as `%C0%AF` for `/`), or
    /// carry U+FFFD, which is what a lenient decoder makes of such bytes.
    InvalidUtf8,
    /// A decoded control character: NUL, tab, line breaks, other C0, DEL, C1.
    ControlCharacter,
    /// A decoded character that renders as nothing (Unicode's default-ignorable code points:
    /// zero-width space and joiners, bidi controls, soft hyphen, BOM, variation selectors,
    /// tag characters).
    InvisibleCharacter,
    /// A segment that is empty, `.` or `..` only once `;` parameters or trailing dots and
    /// spaces are stripped (`..;x`, `.. `, `...`, `;x`): some origins resolve it, others keep it.
    DotSegment,
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ambiguity::EncodedSeparator => "the path has an encoded `/` or `\\` (%2F, %5C)",
            Ambiguity::DoubleEncoded => "the path is still percent-encoded after one decoding",
            Ambiguity::InvalidUtf8 => "the path decodes to invalid or overlong UTF-8",
            Ambiguity::ControlCharacter => "the path decodes to a control character",
            Ambiguity::InvisibleCharacter => "the path decodes to an invisible character",
            Ambiguity::DotSegment => {
                "a path segment is `.` or `..` or empty only once `;` parameters or trailing \
                 dots and spaces are stripped"
            }
        })
    }
}

/// Whether origins could read `path` (the part before `?`) in more than one way; see
/// [`Ambiguity`]. Only paths to hosts with rules are checked: elsewhere warden matches nothing
/// against the path and forwards it as sent.
pub fn check_path(path: &str) -> Result<(), Ambiguity> {
    let raw = path_part(path).as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match escape_at(raw, i) {
            Some(b'/' | b'\\') => return Err(Ambiguity::EncodedSeparator),
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(raw[i]);
                i += 1;
            }
        }
    }
    if (0..decoded.len()).any(|i| escape_at(&decoded, i).is_some()) {
        return Err(Ambiguity::DoubleEncoded);
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| Ambiguity::InvalidUtf8)?;
    for c in text.chars() {
        if c == char::REPLACEMENT_CHARACTER {
            return Err(Ambiguity::InvalidUtf8);
        }
        if c.is_control() {
            return Err(Ambiguity::ControlCharacter);
        }
        if is_default_ignorable(c) {
            return Err(Ambiguity::InvisibleCharacter);
        }
    }
    let hides_a_dot_segment = text.split(['/', '\\']).any(|seg| {
        let stripped = strip_params(seg).trim_end_matches(['.', ' ']);
        !matches!(seg, "" | "." | "..")
            && (stripped.is_empty() || matches!(strip_params(seg), "." | ".."))
    });
    if hides_a_dot_segment {
        return Err(Ambiguity::DotSegment);
    }
    Ok(())
}

/// The byte `%XX` at `i` stands for, if there is one.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    match bytes.get(i..i + 3)? {
        [b'%', h, l] => Some(((hex(*h)? << 4) | hex(*l)?) as u8),
        _ => None,
    }
}

/// Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt, Unicode 15):
/// characters that render as nothing, so two paths that look the same can differ by them.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `addr` is one of warden's own listeners (a wildcard listener owns its port on
/// loopback and on the wildcard address).
fn is_own(addr: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|o| {
        o.port() == addr.port()
            && (o.ip() == addr.ip()
                || (o.ip().is_unspecified()
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
    })
}

/// What kind of address an IP is, for the SSRF guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Routable on the internet.
    Public,
    /// 127/8, ::1.
    Loopback,
    /// RFC 1918, ULA fc00::/7, site-local fec0::/10.
    Private,
    /// 169.254/16 (cloud metadata), fe80::/10.
    LinkLocal,
    /// 100.64/10 (carrier-grade NAT; also some metadata services).
    SharedAddressSpace,
    /// 224/4, ff00::/8.
    Multicast,
    /// 0/8, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// Documentation ranges (TEST-NETs, 2001:db8::/32).
    Documentation,
    /// Reserved, benchmarking, protocol-assignment and other special-purpose ranges.
    Reserved,
}

/// Classifies an address; IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) is
/// classified by the embedded address.
pub fn classify_addr(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(ip) {
                let class = classify_v4(v4);
                // ::a.b.c.d with a public a.b.c.d is still a deprecated, reserved form.
                return if class == AddrClass::Public && v6.segments()[..6] == [0; 6] {
                    AddrClass::Reserved
                } else {
                    class
                };
            }
            classify_v6(v6)
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let o = ip.octets();
    match o {
        [0, ..] => AddrClass::Unspecified,
        [127, ..] => AddrClass::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => AddrClass::Private,
        [169, 254, ..] => AddrClass::LinkLocal,
        [100, 64..=127, ..] => AddrClass::SharedAddressSpace,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => AddrClass::Documentation,
        [255, 255, 255, 255] => AddrClass::Broadcast,
        [224..=239, ..] => AddrClass::Multicast,
        [240..=255, ..] | [192, 0, 0, _] | [192, 88, 99, _] | [198, 18..=19, ..] => {
            AddrClass::Reserved
        }
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        AddrClass::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        AddrClass::Documentation
    } else if (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) || (s[0] == 0x2001 && s[1] < 0x0200) {
        // Discard-only 100::/64 and IETF protocol assignments 2001::/23.
        AddrClass::Reserved
    } else if s[0] & 0xe000 != 0x2000 {
        // Outside global unicast 2000::/3.
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// The IPv4 address an IPv6 address carries: mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo
/// `2001::/32` (the client address, stored inverted).
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) > (0, 1) => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, _, _, _, hi, lo] => {
            Some(low(hi, lo))
        }
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        [0x2001, 0, _, _, _, _, hi, lo] => Some(low(!hi, !lo)),
        _ => None,
    }
}

/// How long a DNS answer is reused. The system resolver gives no TTLs; this keeps one lookup
/// from costing every request (a lookup is a trip through the blocking pool) while following
/// changes within seconds. Every use of a cached answer is checked again (the SSRF guard).
const DNS_CACHE_TTL: Duration = Duration::from_secs(10);

/// Names whose answers are cached (least recently used beyond this are evicted).
const DNS_CACHE_ENTRIES: usize = 4096;

/// Resolves destinations: IP literals as they are, `network.resolve` overrides, then DNS
/// (answers cached in a [`DnsCache`]).
#[derive(Debug, Default)]
pub struct Resolver {
    overrides: HashMap<String, IpAddr>,
}

/// Answers from the system resolver, cached for [`DNS_CACHE_TTL`]; concurrent lookups of one
/// name share one query. Runtime state: kept across reloads, shared by every client's policy
/// (an override is config and never reaches it).
#[derive(Debug)]
pub struct DnsCache {
    lookups: AtomicU64,
    answers: quick_cache::sync::Cache<String, (Vec<IpAddr>, std::time::Instant)>,
}

impl Default for DnsCache {
    fn default() -> Self {
        DnsCache {
            lookups: AtomicU64::new(0),
            answers: quick_cache::sync::Cache::new(DNS_CACHE_ENTRIES),
        }
    }
}

impl DnsCache {
    /// Name lookups sent to DNS since start (overrides and IP literals are not lookups).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

impl Resolver {
    /// Every address for `dest`, DNS answers from and into `dns`. DNS is bounded by
    /// `timeout`; no answer, an error or the timeout all yield [`Reason::DnsError`].
    pub async fn resolve_all(
        &self,
        dns: &DnsCache,
        dest: &Authority,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, Reason> {
        let name = match &dest.host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, dest.port)]),
            Host::Name(name) => name,
        };
        if let Some(ip) = self.overrides.get(name) {
            return Ok(vec![SocketAddr::new(*ip, dest.port)]);
        }
        let with_port = |ips: &[IpAddr]| {
            ips.iter()
                .map(|ip| SocketAddr::new(*ip, dest.port))
                .collect()
        };
        if let Some((ips, at)) = dns.answers.get(name.as_str()) {
            if at.elapsed() < DNS_CACHE_TTL {
                return Ok(with_port(&ips));
            }
            dns.answers.remove(name.as_str());
        }
        let (ips, _) = dns
            .answers
            .get_or_insert_async(name.as_str(), async {
                dns.lookups.fetch_add(1, Ordering::Relaxed);
                let lookup = tokio::net::lookup_host((name.as_str(), 0));
                match tokio::time::timeout(timeout, lookup).await {
                    Ok(Ok(addrs)) => {
                        let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                        if ips.is_empty() {
                            Err(Reason::DnsError)
                        } else {
                            Ok((ips, std::time::Instant::now()))
                        }
                    }
                    Ok(Err(_)) | Err(_) => Err(Reason::DnsError),
                }
            })
            .await?;
        Ok(with_port(&ips))
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
        let cfg: NetworkConfig = serde_yaml::from_str(
            "resolve: { API.Example.Test: 127.0.0.9 }\nprivate_networks: allow",
        )
        .unwrap();
        let p = cfg.compile(&Credentials::default()).unwrap();
        let t = Duration::from_secs(1);
        let dns = DnsCache::default();
        assert_eq!(
            p.resolve_checked(&dns, &dest("api.example.test:443"), t, &[])
                .await,
            Ok("127.0.0.9:443".parse().unwrap())
        );
        assert_eq!(
            p.resolve_checked(&dns, &dest("127.0.0.2:80"), t, &[]).await,
            Ok("127.0.0.2:80".parse().unwrap())
        );
        assert_eq!(dns.lookups(), 0);
        assert_eq!(
            p.resolve_checked(&dns, &dest("no-such-host.invalid:80"), t, &[])
                .await,
            Err(Reason::DnsError)
        );
        assert_eq!(dns.lookups(), 1);
        // Answers are reused: a second request for a name costs no query.
        let first = p.resolve_checked(&dns, &dest("localhost:80"), t, &[]).await;
        assert_eq!(dns.lookups(), 2);
        let second = p.resolve_checked(&dns, &dest("localhost:81"), t, &[]).await;
        assert_eq!(dns.lookups(), 2, "cached");
        assert_eq!(first.map(|a| a.ip()), second.map(|a| a.ip()));
    }

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str::<NetworkConfig>(yaml)
            .unwrap()
            .compile(&Credentials::default())
            .unwrap()
    }

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("api.github.com", "api.github.com:443", true),
            ("api.github.com", "API.GitHub.com.:443", true),
            ("api.github.com", "api.github.com:80", true),
            ("api.github.com", "api.github.com:8443", false),
            ("api.github.com", "github.com:443", false),
            ("api.github.com", "xapi.github.com:443", false),
            ("*.example.com", "a.example.com:443", true),
            ("*.example.com", "a.b.example.com:443", true),
            ("*.example.com", "example.com:443", false),
            ("*.example.com", "evilexample.com:443", false),
            ("*.example.com", "example.com.evil.test:443", false),
            ("*.example.com:8443", "a.example.com:8443", true),
            ("*.example.com:8443", "a.example.com:443", false),
            ("example.org:8443", "example.org:8443", true),
            ("*", "anything.test:443", true),
            ("*", "anything.test:22", false),
            ("*", "10.1.2.3:443", false),
            ("10.0.0.0/8", "10.1.2.3:443", true),
            ("10.0.0.0/8", "11.1.2.3:443", false),
            ("10.0.0.0/8:22", "10.1.2.3:22", true),
            ("10.0.0.0/8", "ten.example:443", false),
            ("fd00::/8", "[fd12::1]:443", true),
            ("127.0.0.1", "127.0.0.1:80", true),
            ("127.0.0.1", "localhost:80", false),
            ("bücher.example", "xn--bcher-kva.example:443", true),
        ];
        for (p, d, want) in cases {
            assert_eq!(pat(p).matches(&dest(d)), *want, "{p} vs {d}");
        }
    }

    #[test]
    fn deny_wins_and_strict_needs_allow() {
        let p = policy("policy: strict\nallow: ['*.ok.test']\ndeny: ['bad.ok.test']");
        assert_eq!(p.decide_host(&dest("a.ok.test:443")), HostDecision::Allow);
        assert!(matches!(
            p.decide_host(&dest("bad.ok.test:443")),
            HostDecision::Deny { rule } if rule == "network.deny: bad.ok.test"
        ));
        assert!(matches!(
            p.decide_host(&dest("other.test:443")),
            HostDecision::Deny { .. }
        ));
        let open = policy("deny: ['bad.test']");
        assert_eq!(
            open.decide_host(&dest("other.test:443")),
            HostDecision::Allow
        );
    }

    #[test]
    fn report_mode_turns_host_denials_into_would_deny_but_not_the_ssrf_guard() {
        let p = policy("mode: report\ndeny: ['bad.test']");
        assert_eq!(
            p.authorize(&dest("bad.test:443"), &[]),
            Ok(Some(Reason::PolicyDeniedHost))
        );
        assert_eq!(
            p.authorize(&dest("127.0.0.1:443"), &[]).unwrap_err().reason,
            Reason::PrivateAddress
        );
    }

    #[test]
    fn ip_literals_are_checked_before_any_lookup() {
        let p = policy("allow_cidrs: ['127.0.0.0/8']");
        let own: SocketAddr = "127.0.0.1:9080".parse().unwrap();
        assert_eq!(p.authorize(&dest("127.0.0.1:80"), &[own]), Ok(None));
        assert_eq!(
            p.authorize(&dest("127.0.0.1:9080"), &[own])
                .unwrap_err()
                .reason,
            Reason::LoopDetected
        );
        let wildcard: SocketAddr = "0.0.0.0:9080".parse().unwrap();
        assert_eq!(
            p.authorize(&dest("127.0.0.1:9080"), &[wildcard])
                .unwrap_err()
                .reason,
            Reason::LoopDetected
        );
        assert_eq!(
            p.authorize(&dest("10.0.0.1:80"), &[own])
                .unwrap_err()
                .reason,
            Reason::PrivateAddress
        );
    }

    #[test]
    fn address_classes() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedAddressSpace),
            ("100.100.100.200", SharedAddressSpace),
            ("100.128.0.1", Public),
            ("0.0.0.0", Unspecified),
            ("255.255.255.255", Broadcast),
            ("224.0.0.1", Multicast),
            ("240.0.0.1", Reserved),
            ("192.0.2.1", Documentation),
            ("198.51.100.1", Documentation),
            ("203.0.113.1", Documentation),
            ("198.18.0.1", Reserved),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fe80::1", LinkLocal),
            ("fc00::1", Private),
            ("fd00:ec2::254", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("2606:4700::1111", Public),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Public),
            ("2002:7f00:1::", Loopback),
            ("2002:0a00:0001::", Private),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Private),
            ("100::1", Reserved),
        ];
        for (ip, want) in cases {
            assert_eq!(classify_addr(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_non_public_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "10.0.0.1",
            "100.64.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let p = policy(&format!("resolve: {{ meta.test: '{ip}' }}"));
            assert_eq!(
                p.resolve_checked(
                    &DnsCache::default(),
                    &dest("meta.test:80"),
                    Duration::from_secs(1),
                    &[]
                )
                .await,
                Err(Reason::PrivateAddress),
                "{ip}"
            );
        }
        let p = policy("resolve: { local.test: 127.0.0.2 }\nallow_cidrs: ['127.0.0.0/8']");
        assert_eq!(
            p.resolve_checked(
                &DnsCache::default(),
                &dest("local.test:80"),
                Duration::from_secs(1),
                &[]
            )
            .await,
            Ok("127.0.0.2:80".parse().unwrap())
        );
        // Embedded loopback is covered by a loopback exception too.
        let p = policy("resolve: { m.test: '::ffff:127.0.0.1' }\nallow_cidrs: ['127.0.0.0/8']");
        assert!(p
            .resolve_checked(
                &DnsCache::default(),
                &dest("m.test:80"),
                Duration::from_secs(1),
                &[]
            )
            .await
            .is_ok());
    }

    #[test]
    fn mixed_answers_keep_only_allowed_addresses() {
        let p = policy("allow_cidrs: ['127.0.0.0/8']");
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let own = [a("127.0.0.1:9080")];
        assert_eq!(
            p.pick_checked(&[a("10.0.0.1:80"), a("127.0.0.5:80")], &own),
            Ok(a("127.0.0.5:80"))
        );
        assert_eq!(
            p.pick_checked(&[a("10.0.0.1:80"), a("169.254.169.254:80")], &own),
            Err(Reason::PrivateAddress)
        );
        assert_eq!(
            p.pick_checked(&[a("127.0.0.1:9080"), a("10.0.0.1:9080")], &own),
            Err(Reason::LoopDetected)
        );
        assert_eq!(p.pick_checked(&[], &own), Err(Reason::DnsError));
    }

    #[test]
    fn bad_cidrs_and_patterns_are_refused_at_load() {
        for bad in ["10.0.0.0/33", "10.0.0.0/8:0", "nothost/8"] {
            assert!(HostPattern::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert!(serde_yaml::from_str::<NetworkConfig>("allow_cidrs: ['10.0.0.0/40']").is_err());
        assert!(serde_yaml::from_str::<NetworkConfig>("rules: ['allow * a']").is_err());
    }

    #[test]
    fn rule_table_first_match_wins() {
        let p = policy(
            "rules:\n  - \"allow GET,HEAD api.github.com /repos/**\"\n  - \"allow POST api.github.com /repos/*/issues\"\n  - \"deny * api.github.com /**\"\n",
        );
        let gh = dest("api.github.com:443");
        let cases: &[(&str, &str, bool)] = &[
            ("GET", "/repos/a/b", true),
            ("get", "/repos/a/b?x=1", true),
            ("HEAD", "/repos", true),
            ("GET", "/repos/../user", false),
            ("GET", "/repos/%2e%2e/user", false),
            ("GET", "/repos%2F..%2Fuser", false),
            ("GET", "//repos//a", true),
            ("POST", "/repos/a/issues", true),
            ("POST", "/repos/a/b/issues", false),
            ("POST", "/repos/a", false),
            ("DELETE", "/repos/a/b", false),
            ("GET", "/user", false),
            ("GET", "/", false),
        ];
        for (method, path, allowed) in cases {
            let got = p.decide_request(method, &gh, path);
            assert_eq!(got.is_ok(), *allowed, "{method} {path}: {got:?}");
        }
        let denial = p.decide_request("GET", &gh, "/user").unwrap_err();
        assert_eq!(denial.reason, Reason::PolicyDeniedRule);
        assert_eq!(
            denial.rule.as_deref(),
            Some("network.rules[2]: deny * api.github.com /**")
        );
        // Other hosts are untouched by these rules.
        assert_eq!(
            p.decide_request("DELETE", &dest("x.test:443"), "/"),
            Ok(None)
        );
        assert!(p.has_rules_for(&gh));
        assert!(!p.has_rules_for(&dest("x.test:443")));
    }

    #[test]
    fn report_mode_turns_rule_denials_into_would_deny() {
        let p = policy("mode: report\nrules: ['deny DELETE *.test /**']");
        assert_eq!(
            p.decide_request("DELETE", &dest("a.test:443"), "/x"),
            Ok(Some(Reason::PolicyDeniedRule))
        );
    }

    #[test]
    fn malformed_rules_are_refused_naming_the_rule() {
        for bad in [
            "allow GET api.github.com",
            "permit GET api.github.com /",
            "allow G-T api.github.com /",
            "allow GET *github.com /",
            "allow GET api.github.com repos",
            "allow GET api.github.com /**/x",
            "allow GET api.github.com /re*",
        ] {
            let err = Rule::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn paths_normalise_like_an_origin_would() {
        assert_eq!(normalize_path("/a/./b/../c//d?x=/e"), ["a", "c", "d"]);
        assert_eq!(normalize_path("/%61%2Fb"), ["a", "b"]);
        assert_eq!(normalize_path("/../../etc"), ["etc"]);
        assert_eq!(normalize_path("/a\\..\\b"), ["b"]);
        assert!(normalize_path("/").is_empty());
    }

    #[test]
    fn matching_strips_parameters_and_trailing_dots_and_spaces_per_segment() {
        let cases: &[(&str, &[&str])] = &[
            ("/a;x/b;y=1", &["a", "b"]),
            ("/a%3bx", &["a"]),
            ("/a./b..", &["a", "b"]),
            ("/a%20/b%20.%20", &["a", "b"]),
            ("/v1.0/x", &["v1.0", "x"]),
            ("/x/..;/a", &["a"]),
            ("/x/./a/.", &["x", "a"]),
            ("/.a", &[".a"]),
            ("/A", &["A"]),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path), *want, "{path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_named_by_their_ambiguity() {
        use Ambiguity::*;
        let cases: &[(&str, Result<(), Ambiguity>)] = &[
            ("/a/b;c/d.", Ok(())),
            ("/b%C3%BCcher", Ok(())),
            ("/bücher", Ok(())),
            ("/a?q=%00%2F%25%32%35", Ok(())),
            ("/a%2Fb", Err(EncodedSeparator)),
            ("/a%2fb", Err(EncodedSeparator)),
            ("/a%5cb", Err(EncodedSeparator)),
            ("/%2573", Err(DoubleEncoded)),
            ("/%252F", Err(DoubleEncoded)),
            ("/%%37%33", Err(DoubleEncoded)),
            ("/%25zz", Ok(())),
            ("/100%", Ok(())),
            ("/%C0%AF", Err(InvalidUtf8)),
            ("/%E0%80%AF", Err(InvalidUtf8)),
            ("/%ED%A0%80", Err(InvalidUtf8)),
            ("/%FF", Err(InvalidUtf8)),
            ("/\u{FFFD}", Err(InvalidUtf8)),
            ("/%00", Err(ControlCharacter)),
            ("/a%09", Err(ControlCharacter)),
            ("/a%0D%0A", Err(ControlCharacter)),
            ("/a%7F", Err(ControlCharacter)),
            ("/a%C2%85", Err(ControlCharacter)),
            ("/%E2%80%8Bx", Err(InvisibleCharacter)),
            ("/x%C2%AD", Err(InvisibleCharacter)),
            ("/%E2%80%AEx", Err(InvisibleCharacter)),
            ("/%EF%BB%BFx", Err(InvisibleCharacter)),
            ("/%E2%81%A0x", Err(InvisibleCharacter)),
            ("/%F3%A0%80%81x", Err(InvisibleCharacter)),
            ("/x/..;/a", Err(DotSegment)),
            ("/x/.. /a", Err(DotSegment)),
            ("/x/..%20/a", Err(DotSegment)),
            ("/x/.../a", Err(DotSegment)),
            ("/;x/a", Err(DotSegment)),
            ("/a/%20", Err(DotSegment)),
            ("/x/../a", Ok(())),
            ("/x/%2e%2e/a", Ok(())),
        ];
        for (path, want) in cases {
            assert_eq!(check_path(path), *want, "{path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_only_on_hosts_with_rules_and_only_logged_in_report_mode() {
        let p = policy("rules: ['deny * a.test /smuggled']");
        let denial = p
            .decide_request("GET", &dest("a.test:443"), "/%2573muggled")
            .unwrap_err();
        assert_eq!(denial.reason, Reason::AmbiguousPath);
        assert_eq!(
            denial.rule.as_deref(),
            Some("network.rules apply to this host, and the path is still percent-encoded after one decoding")
        );
        assert_eq!(
            p.decide_request("GET", &dest("b.test:443"), "/%2573muggled"),
            Ok(None)
        );
        let report = policy("mode: report\nrules: ['deny * a.test /smuggled']");
        assert_eq!(
            report.decide_request("GET", &dest("a.test:443"), "/%00"),
            Ok(Some(Reason::AmbiguousPath))
        );
    }

    #[test]
    fn rules_case_insensitive_folds_both_the_rule_and_the_path() {
        let a = dest("a.test:443");
        let sensitive = policy("rules: ['deny * a.test /Admin/*']");
        let insensitive = policy("rules_case: insensitive\nrules: ['deny * a.test /Admin/*']");
        let cases: &[(&str, bool, bool)] = &[
            ("/Admin/x", true, true),
            ("/admin/x", false, true),
            ("/ADMIN/X", false, true),
            ("/%41dmin/x", true, true),
            ("/Admin./x", true, true),
            ("/Admin;v=1/x", true, true),
            ("/other/x", false, false),
        ];
        for (path, denied_sensitive, denied_insensitive) in cases {
            let got = sensitive.decide_request("GET", &a, path);
            assert_eq!(got.is_err(), *denied_sensitive, "sensitive {path}: {got:?}");
            let got = insensitive.decide_request("GET", &a, path);
            assert_eq!(
                got.is_err(),
                *denied_insensitive,
                "insensitive {path}: {got:?}"
            );
        }
        // Characters whose upper case is ASCII fold like it: an origin comparing upper-cased
        // paths reads `/ſmuggled` (long s) as `/SMUGGLED`.
        let p = policy("rules_case: insensitive\nrules: ['deny * a.test /smuggled']");
        for path in ["/%C5%BFmuggled", "/SMUGGLED", "/sMuGgLeD"] {
            assert_eq!(
                p.decide_request("GET", &a, path).unwrap_err().reason,
                Reason::PolicyDeniedRule,
                "{path}"
            );
        }
        assert!(serde_yaml::from_str::<NetworkConfig>("rules_case: folded").is_err());
    }

    #[test]
    fn glob_literals_no_request_could_match_are_refused_at_load() {
        for (bad, says) in [
            ("/a;v=1", "matched as `a`"),
            ("/a.", "matched as `a`"),
            ("/a%20", "matched as `a`"),
            ("/x/..", "resolved away"),
            ("/.", "resolved away"),
            ("/a%2Fb", "ambiguous"),
            ("/%2561", "ambiguous"),
            ("/a%00", "ambiguous"),
            ("/%E2%80%8Ba", "ambiguous"),
            ("/..;x", "ambiguous"),
        ] {
            let err = PathGlob::try_from(bad.to_string()).unwrap_err();
            assert!(
                err.contains(&format!("`{bad}`")) && err.contains(says),
                "{bad}: {err}"
            );
        }
        // Escapes in a literal stand for what they decode to, as in a request.
        let p = policy("rules: ['deny * a.test /my%20doc/b%C3%BCcher']");
        let a = dest("a.test:443");
        assert!(p.decide_request("GET", &a, "/my%20doc/bücher").is_err());
        assert!(p.decide_request("GET", &a, "/my doc/b%c3%bccher").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Path pieces that normalisation treats specially, mixed with plain ones.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "a",
                "B",
                "é",
                "%C3%A9",
                ".",
                "..",
                "...",
                ";",
                ";v=1",
                "%3B",
                " ",
                "%20",
                "%2e",
                "%2E%2e",
                "%25",
                "%2541",
                "%2F",
                "\\",
                "/",
                "//",
                "%3F",
                "%23",
                "?",
                "~",
                "%00",
                "%E2%80%8B",
                "%C0%AF",
                "%",
            ])
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..12).prop_map(|p| format!("/{}", p.concat()))
        }

        /// Re-encodes a matching form as a path that spells exactly those segments.
        fn spell(segments: &[String]) -> String {
            let mut out = String::new();
            for s in segments {
                out.push('/');
                for c in s.chars() {
                    match c {
                        '%' => out.push_str("%25"),
                        '?' => out.push_str("%3F"),
                        '#' => out.push_str("%23"),
                        c => out.push(c),
                    }
                }
            }
            out
        }

        /// Spellings of `/smuggled` an origin may read as `/smuggled`.
        fn smuggled() -> impl Strategy<Value = String> {
            let letters = prop::collection::vec((any::<bool>(), any::<bool>()), 8);
            let prefix = prop::sample::select(vec!["", "/", "/x/..", "/./", "//", "/x/%2e%2e"]);
            let suffix = prop::sample::select(vec![
                "", ".", "..", "%20", ". ", ";x", "%3Bx=1", ".;x", "/", "?q=1", "%2e",
            ]);
            (prefix, letters, suffix).prop_map(|(prefix, letters, suffix)| {
                let mut p = format!("{prefix}/");
                for (c, (upper, encode)) in "smuggled".chars().zip(letters) {
                    let c = if upper { c.to_ascii_uppercase() } else { c };
                    if encode {
                        p.push_str(&format!("%{:02X}", c as u32));
                    } else {
                        p.push(c);
                    }
                }
                p.push_str(suffix);
                p
            })
        }

        proptest! {
            #[test]
            fn normalisation_is_idempotent(p in path()) {
                let once = normalize_path(&p);
                prop_assert_eq!(normalize_path(&spell(&once)), once);
            }

            #[test]
            fn any_spelling_of_the_denied_path_is_refused_or_denied(p in smuggled()) {
                let policy = policy("rules_case: insensitive\nrules: ['deny * a.test /smuggled']");
                let denial = policy.decide_request("GET", &dest("a.test:443"), &p);
                prop_assert!(denial.is_err(), "{} passed", p);
            }

            #[test]
            fn a_path_matched_as_the_denied_one_is_never_let_through(p in path()) {
                let policy = policy("rules: ['deny * a.test /a/B']");
                let got = policy.decide_request("GET", &dest("a.test:443"), &p);
                if normalize_path(&p) == ["a", "B"] {
                    prop_assert!(got.is_err(), "{} passed", p);
                }
                if got.is_ok() {
                    prop_assert!(check_path(&p).is_ok());
                }
            }
        }
    }

    #[test]
    fn grants_allow_their_credentials_hosts_under_strict() {
        let entries: Vec<crate::credentials::CredentialConfig> = serde_yaml::from_str(
            "- { host: api.github.com, grant: github, source: { type: static, value: s } }",
        )
        .unwrap();
        let creds = crate::credentials::compile(&entries, "credentials", std::path::Path::new("."))
            .unwrap();
        let cfg: NetworkConfig = serde_yaml::from_str("policy: strict\ngrants: [github]").unwrap();
        let p = cfg.compile(&creds).unwrap();
        assert_eq!(
            p.decide_host(&dest("api.github.com:443")),
            HostDecision::Allow
        );
        assert!(matches!(
            p.decide_host(&dest("gitlab.com:443")),
            HostDecision::Deny { .. }
        ));
        let cfg: NetworkConfig = serde_yaml::from_str(
            "grants: [gitlab, github, bitbucket]\nresolve: { 'a b': 127.0.0.1 }",
        )
        .unwrap();
        let errors = cfg.compile(&creds).unwrap_err();
        let found: Vec<(&str, bool)> = errors
            .iter()
            .map(|(key, msg)| {
                (
                    key.as_str(),
                    msg.contains("gitlab") || msg.contains("bitbucket") || msg.contains("a b"),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("network.grants", true),
                ("network.grants", true),
                ("network.resolve.a b", true)
            ],
            "every unknown grant and bad resolve name: {errors:?}"
        );
    }
}
