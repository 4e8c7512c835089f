//! Network policy: which destinations a rule names (host globs, IPs, CIDRs — used by
//! `network.allow`/`deny` and `tls.passthrough`), whether a destination is allowed, and where it
//! may be dialled: resolved once (`network.resolve` overrides, then DNS), every address
//! classified (the SSRF guard), warden's own listeners refused (loop detection), and exactly the
//! checked address returned for dialling. Called by the front door (CONNECT decisions, blind
//! tunnels), `request_filter` (host decisions) and `upstream_peer` (checked resolution).

mod address;
mod pattern;
mod resolve;
mod rules;

pub use address::{classify_addr, embedded_ipv4, AddrClass};
pub use pattern::{any_matches, check_path, normalize_path, Ambiguity, HostPattern, PathGlob};
pub use resolve::{DnsCache, Resolver};
pub use rules::{Rule, RulesCase};

use crate::compile_error::{CompileError, CompileErrors};
use crate::reason::Reason;
use crate::target::{parse_host, Authority, Host};
use address::is_own;
use ipnet::IpNet;
use pattern::fold_case;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// The hosts each grant allows: grant name → the host patterns of every credential carrying it,
/// in credential order. Built by whoever compiled the credentials in force, so the policy needs
/// nothing of credentials but these names and hosts.
pub type GrantHosts = HashMap<String, Vec<HostPattern>>;

impl NetworkConfig {
    /// Compiles the section; `grants` are the hosts of the credentials in force, by grant (see
    /// [`GrantHosts`]). Fails naming every `resolve` entry that is not a host name and every
    /// grant no credential carries.
    pub fn compile(&self, grants: &GrantHosts) -> Result<NetworkPolicy, CompileErrors> {
        let mut errors = Vec::new();
        let mut allow = self.allow.clone();
        for grant in &self.grants {
            match grants.get(grant) {
                Some(hosts) => allow.extend(hosts.iter().cloned()),
                None => errors.push(CompileError::new(
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
                _ => errors.push(CompileError::new(
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
            resolver: Resolver::with_overrides(overrides),
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

    /// The destination check when a parent proxy carries the connection: warden resolves
    /// nothing for `dest` (the parent does), but a literal address is still checked like a
    /// resolved one — it is all warden can see of where the connection ends.
    pub fn check_through_parent(&self, dest: &Authority, own: &[SocketAddr]) -> Result<(), Reason> {
        match dest.host {
            Host::Name(_) => Ok(()),
            Host::Ip(ip) => self
                .pick_checked(&[SocketAddr::new(ip, dest.port)], own)
                .map(|_| ()),
        }
    }

    /// Resolves the parent proxy `parent` once (through `network.resolve`, then DNS) and
    /// returns the one address to dial. The operator named it, so any unicast address may be
    /// dialled (a corporate proxy is usually private); warden's own listeners are
    /// [`Reason::LoopDetected`], unspecified and multicast answers are skipped. Nothing left:
    /// [`Reason::ParentUnreachable`].
    pub async fn resolve_parent(
        &self,
        dns: &DnsCache,
        parent: &Authority,
        timeout: Duration,
        own: &[SocketAddr],
    ) -> Result<SocketAddr, Reason> {
        let answers = self
            .resolver
            .resolve_all(dns, parent, timeout)
            .await
            .map_err(|_| Reason::ParentUnreachable)?;
        let mut refused = Reason::ParentUnreachable;
        for &addr in &answers {
            if is_own(addr, own) {
                refused = Reason::LoopDetected;
                continue;
            }
            if !addr.ip().is_unspecified() && !addr.ip().is_multicast() {
                return Ok(addr);
            }
        }
        Err(refused)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[tokio::test]
    async fn overrides_win_over_dns_and_ips_pass_through() {
        let cfg: NetworkConfig = serde_yaml::from_str(
            "resolve: { API.Example.Test: 127.0.0.9 }\nprivate_networks: allow",
        )
        .unwrap();
        let p = cfg.compile(&GrantHosts::new()).unwrap();
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
            .compile(&GrantHosts::new())
            .unwrap()
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
        let grants = GrantHosts::from([(
            "github".to_string(),
            vec![HostPattern::try_from("api.github.com".to_string()).unwrap()],
        )]);
        let cfg: NetworkConfig = serde_yaml::from_str("policy: strict\ngrants: [github]").unwrap();
        let p = cfg.compile(&grants).unwrap();
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
        let errors = cfg.compile(&grants).unwrap_err();
        let found: Vec<(&str, bool)> = errors
            .iter()
            .map(|CompileError { key, message: msg }| {
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
