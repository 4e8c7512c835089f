//! Profiles: everything that applies to one client, compiled once into one immutable value —
//! network policy, credentials, header rules, substitutions, LLM policy, transforms and
//! correlation. The top-level sections compile into the default profile, which every client
//! without a section of its own shares; a client's own sections replace the top-level ones of
//! the same name, section by section. [`compile`] is the one function that does it, for the
//! file's clients and for any other source of clients alike. Requests select their profile
//! once ([`crate::Snapshot::profile`]).

use crate::budget::{Budget, BudgetConfig};
use crate::compile_error::{keep, CompileErrors};
use crate::correlation::{Correlation, CorrelationConfig};
use crate::credentials::{self, CredentialConfig, Credentials};
use crate::headers::{HeaderRuleConfig, HeaderRules};
use crate::llm::{LlmConfig, LlmRules};
use crate::mcp::{McpConfig, McpRules};
use crate::policy::{NetworkConfig, NetworkPolicy};
use crate::substitution::{SubstitutionConfig, Substitutions};
use crate::target::Authority;
use crate::transform::{TransformConfig, Transforms};
use std::path::Path;
use std::sync::Arc;

/// The compiled policy of one client (or of every client without sections of its own).
/// Sections are shared, not copied, between a client's profile and the default one.
#[derive(Debug)]
pub struct Profile {
    /// Hosts, rules, the SSRF guard and `network.resolve`.
    pub network: Arc<NetworkPolicy>,
    /// Credentials injected per destination.
    pub credentials: Arc<Credentials>,
    /// Header rules per destination.
    pub headers: Arc<HeaderRules>,
    /// Placeholder substitutions per destination.
    pub substitutions: Arc<Substitutions>,
    /// LLM policy per API host.
    pub llm: Arc<LlmRules>,
    /// MCP tool policy per endpoint.
    pub mcp: Arc<McpRules>,
    /// Response transformers per destination.
    pub transforms: Arc<Transforms>,
    /// Session correlation, when configured.
    pub correlation: Option<Arc<Correlation>>,
    /// The client's budgets; `None` for the default profile and clients without one.
    pub budget: Option<Arc<Budget>>,
    /// The AWS role and re-signed hosts, when configured.
    pub aws: Option<Arc<crate::aws::Aws>>,
}

/// The sections a profile is compiled from, as written. `None` takes the section from the
/// profile the new one inherits from; for the default profile every section is given.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProfileConfig<'a> {
    /// The client whose sections these are; `None` for the top level.
    pub client: Option<&'a str>,
    /// `network`.
    pub network: Option<&'a NetworkConfig>,
    /// `credentials`.
    pub credentials: Option<&'a [CredentialConfig]>,
    /// `headers`.
    pub headers: Option<&'a [HeaderRuleConfig]>,
    /// `substitutions`.
    pub substitutions: Option<&'a [SubstitutionConfig]>,
    /// `llm`.
    pub llm: Option<&'a [LlmConfig]>,
    /// `mcp`.
    pub mcp: Option<&'a [McpConfig]>,
    /// `transforms`.
    pub transforms: Option<&'a [TransformConfig]>,
    /// `correlation`: `Some(None)` is "no correlation", `None` inherits.
    pub correlation: Option<Option<&'a CorrelationConfig>>,
    /// `budget`: a client's own, never inherited (counts are kept per client name).
    pub budget: Option<&'a BudgetConfig>,
    /// `aws`: `Some(None)` is "no aws section", `None` inherits.
    pub aws: Option<Option<&'a crate::aws::AwsConfig>>,
}

impl ProfileConfig<'_> {
    /// Whether the section replaces none of the inherited ones (the client shares them).
    pub fn is_empty(&self) -> bool {
        self.network.is_none()
            && self.credentials.is_none()
            && self.headers.is_none()
            && self.substitutions.is_none()
            && self.llm.is_none()
            && self.mcp.is_none()
            && self.transforms.is_none()
            && self.correlation.is_none()
            && self.budget.is_none()
            && self.aws.is_none()
    }
}

/// Compiles `section` into a profile: its sections compiled, the others shared with
/// `inherit` (or, without one, compiled empty). Error keys are `key` + `.` + the section's own key (`key` empty: top level).
/// Every section is compiled even when another failed, so all errors show at once; a bad
/// credential entry is reported without hiding the others from `network.grants`.
pub fn compile(
    section: &ProfileConfig<'_>,
    inherit: Option<&Profile>,
    key: &str,
    base_dir: &Path,
) -> Result<Profile, CompileErrors> {
    match compile_lenient(section, inherit, key, base_dir) {
        (Some(profile), errors) if errors.is_empty() => Ok(profile),
        (_, errors) => Err(errors),
    }
}

/// [`compile`], keeping the profile when only credential entries were bad (they are left
/// out), so what depends on it (the clients' sections, their grants) is still checked.
pub(crate) fn compile_lenient(
    section: &ProfileConfig<'_>,
    inherit: Option<&Profile>,
    key: &str,
    base_dir: &Path,
) -> (Option<Profile>, CompileErrors) {
    let at = |field: &str| {
        if key.is_empty() {
            field.to_string()
        } else {
            format!("{key}.{field}")
        }
    };
    let mut errors = Vec::new();
    let empty = ProfileConfig::empty();
    let section = match inherit {
        Some(_) => *section,
        None => section.or(&empty),
    };
    let credentials = match (section.credentials, inherit) {
        (Some(entries), _) => {
            let (compiled, e) = credentials::compile_lenient(entries, &at("credentials"), base_dir);
            errors.extend(e);
            Arc::new(compiled)
        }
        (None, Some(p)) => p.credentials.clone(),
        (None, None) => Arc::default(),
    };
    let network = match (section.network, inherit) {
        (Some(n), _) => keep(
            // The policy names its own keys (`network.…`): they go under the client's.
            n.compile(&credentials.grant_hosts())
                .map_err(|e| match key {
                    "" => e,
                    _ => e.into_iter().map(|e| e.under(key)).collect(),
                }),
            &mut errors,
        )
        .map(Arc::new),
        (None, Some(p)) => Some(p.network.clone()),
        (None, None) => None,
    };
    let headers = inherit_or(
        section.headers,
        inherit.map(|p| &p.headers),
        &mut errors,
        |e| crate::headers::compile(e, &at("headers")),
    );
    let substitutions = inherit_or(
        section.substitutions,
        inherit.map(|p| &p.substitutions),
        &mut errors,
        |e| crate::substitution::compile(e, &at("substitutions"), base_dir),
    );
    let llm = inherit_or(section.llm, inherit.map(|p| &p.llm), &mut errors, |e| {
        crate::llm::compile(e, &at("llm"))
    });
    let mcp = inherit_or(section.mcp, inherit.map(|p| &p.mcp), &mut errors, |e| {
        crate::mcp::compile(e, &at("mcp"))
    });
    let transforms = inherit_or(
        section.transforms,
        inherit.map(|p| &p.transforms),
        &mut errors,
        |e| crate::transform::compile(e, &at("transforms")),
    );
    let correlation = match section.correlation {
        Some(Some(c)) => keep(c.compile(&at("correlation"), section.client), &mut errors)
            .map(|c| Some(Arc::new(c))),
        Some(None) => Some(None),
        None => Some(inherit.and_then(|p| p.correlation.clone())),
    };
    let aws = match section.aws {
        Some(Some(c)) => keep(c.compile(&at("aws"), section.client, base_dir), &mut errors)
            .map(|a| Some(Arc::new(a))),
        Some(None) => Some(None),
        None => Some(inherit.and_then(|p| p.aws.clone())),
    };
    let budget = section
        .budget
        .map(|b| Arc::new(b.compile(&at("budget"))))
        .filter(|b| !b.is_unlimited());
    let profile = match (
        network,
        headers,
        substitutions,
        llm,
        mcp,
        transforms,
        correlation,
        aws,
    ) {
        (
            Some(network),
            Some(headers),
            Some(substitutions),
            Some(llm),
            Some(mcp),
            Some(transforms),
            Some(correlation),
            Some(aws),
        ) => Some(Profile {
            network,
            credentials,
            headers,
            substitutions,
            llm,
            mcp,
            transforms,
            correlation,
            budget,
            aws,
        }),
        _ => None,
    };
    (profile, errors)
}

/// A section compiled by `compile` when given, else the inherited one.
fn inherit_or<C: ?Sized, T>(
    given: Option<&C>,
    inherited: Option<&Arc<T>>,
    errors: &mut CompileErrors,
    compile: impl FnOnce(&C) -> Result<T, CompileErrors>,
) -> Option<Arc<T>> {
    match (given, inherited) {
        (Some(c), _) => keep(compile(c), errors).map(Arc::new),
        (None, Some(p)) => Some(p.clone()),
        // `compile` fills every section when there is nothing to inherit from.
        (None, None) => None,
    }
}

static EMPTY_NETWORK: std::sync::LazyLock<NetworkConfig> =
    std::sync::LazyLock::new(NetworkConfig::default);

impl<'a> ProfileConfig<'a> {
    /// Every section present and empty, as a file without them compiles.
    fn empty() -> ProfileConfig<'static> {
        ProfileConfig {
            client: None,
            network: Some(&EMPTY_NETWORK),
            credentials: Some(&[]),
            headers: Some(&[]),
            substitutions: Some(&[]),
            llm: Some(&[]),
            mcp: Some(&[]),
            transforms: Some(&[]),
            correlation: Some(None),
            budget: None,
            aws: Some(None),
        }
    }

    /// This section, with what it lacks taken from `other`.
    fn or(&self, other: &ProfileConfig<'a>) -> ProfileConfig<'a> {
        ProfileConfig {
            client: self.client,
            network: self.network.or(other.network),
            credentials: self.credentials.or(other.credentials),
            headers: self.headers.or(other.headers),
            substitutions: self.substitutions.or(other.substitutions),
            llm: self.llm.or(other.llm),
            mcp: self.mcp.or(other.mcp),
            transforms: self.transforms.or(other.transforms),
            correlation: self.correlation.or(other.correlation),
            budget: self.budget.or(other.budget),
            aws: self.aws.or(other.aws),
        }
    }
}

impl Profile {
    /// Whether some rule must see inside a tunnel to `dest` (L7 rules, credentials, header
    /// rules, correlation, substitutions, LLM or MCP policy, or transforms): it must be intercepted.
    pub fn inspects(&self, dest: &Authority) -> bool {
        self.network.has_rules_for(dest)
            || self.credentials.has_for(dest)
            || self.headers.has_for(dest)
            || self.correlation.as_ref().is_some_and(|c| c.has_for(dest))
            || self.substitutions.has_for(dest)
            || self.llm.has_for(dest)
            || self.mcp.has_for(dest)
            || self.transforms.has_for(dest)
            || self.aws.as_ref().is_some_and(|a| a.resigns(dest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClientConfig;
    use crate::config::{CompileOptions, Config};

    /// A client section with every kind of section in it.
    const SECTION: &str = "\
network: { policy: strict, allow: ['api.test'], grants: [own], rules: ['deny DELETE api.test /**'] }
credentials: [{ host: api.test, grant: own, source: { type: static, value: s3cr3t } }]
headers: [{ host: api.test, set: { x-team: a }, remove: [x-debug] }]
substitutions: [{ host: api.test, placeholder: PLACEHOLDER_A, source: { type: static, value: v } }]
llm: [{ host: llm.test, provider: openai, allow_models: ['gpt-*'] }]
transforms: [{ host: api.test, set_headers: { x-seen: 'yes' } }]
correlation: { session_id: run-a, targets: [{ host: api.test }] }
";

    fn file(dir: &Path) -> String {
        let indented: String = SECTION.lines().map(|l| format!("        {l}\n")).collect();
        format!(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: a\n        token: {{ type: static, value: tok-a }}\n{indented}      - name: b\n        token: {{ type: static, value: tok-b }}\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\nheaders: [{{ host: top.test, set: {{ x-top: '1' }} }}]\n",
            dir.display()
        )
    }

    #[test]
    fn a_section_compiles_to_the_same_profile_from_the_file_and_directly() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Config::parse(&file(dir.path()), dir.path())
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap();
        let clients = snap.auth.as_ref().unwrap();
        let from_file = &clients.get("a").unwrap().profile;
        let client: ClientConfig = serde_yaml::from_str(&format!(
            "name: a\ntoken: {{ type: static, value: tok-a }}\n{SECTION}"
        ))
        .unwrap();
        let direct = compile(
            &client.sections(),
            Some(&snap.profile),
            "proxy.auth.clients[0]",
            dir.path(),
        )
        .unwrap();
        // Debug prints every compiled field (secrets as `[redacted]`).
        assert_eq!(format!("{direct:?}"), format!("{from_file:?}"));
        assert!(format!("{direct:?}").contains("PLACEHOLDER_A"));
        // A client without sections of its own shares the default profile.
        let b = &clients.get("b").unwrap().profile;
        assert!(Arc::ptr_eq(b, &snap.profile));
        assert!(!Arc::ptr_eq(from_file, &snap.profile));
    }

    #[test]
    fn a_clients_sections_replace_the_top_level_ones_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Config::parse(&file(dir.path()), dir.path())
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap();
        let top = &snap.profile;
        let only_llm = ProfileConfig {
            client: Some("c"),
            llm: Some(&[]),
            ..ProfileConfig::default()
        };
        let c = compile(&only_llm, Some(top), "proxy.auth.clients[2]", dir.path()).unwrap();
        assert!(
            Arc::ptr_eq(&c.headers, &top.headers),
            "inherited, not copied"
        );
        assert!(Arc::ptr_eq(&c.network, &top.network));
        assert!(!Arc::ptr_eq(&c.llm, &top.llm));
        // Errors carry the client's key.
        let bad: Vec<HeaderRuleConfig> =
            serde_yaml::from_str("[{ host: a.test, remove: ['bad name'] }]").unwrap();
        let with_bad = ProfileConfig {
            headers: Some(&bad),
            ..only_llm
        };
        let errors =
            compile(&with_bad, Some(top), "proxy.auth.clients[2]", dir.path()).unwrap_err();
        assert_eq!(errors[0].key, "proxy.auth.clients[2].headers[0].remove");
    }
}
