//! Proxy authentication: which configured client a connection or request belongs to, from
//! `Proxy-Authorization: Basic base64(name:token)` or `Bearer token`, compared in constant
//! time; and the per-client sections that replace the top-level ones for that client. Called
//! by the front door on CONNECT and by `request_filter` on plain requests; requests inside an
//! intercepted tunnel keep the CONNECT's identity.

use crate::compile_error::{keep, CompileError, CompileErrors};
use crate::correlation::CorrelationConfig;
use crate::credentials::CredentialConfig;
use crate::headers::HeaderRuleConfig;
use crate::policy::NetworkConfig;
use crate::profile::{Profile, ProfileConfig};
use crate::reason::Reason;
use crate::secret::{Secret, SecretSource};
use crate::substitution::SubstitutionConfig;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Presented credentials longer than this are refused without being parsed.
const MAX_CREDENTIALS: usize = 4096;

/// `proxy.auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The clients allowed to use the proxy.
    pub clients: Vec<ClientConfig>,
}

/// One `proxy.auth.clients` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The identity in logs, audit and metrics.
    pub name: String,
    /// Where the client's token is read from.
    pub token: SecretSource,
    /// Replaces the top-level `network` section for this client.
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// Replaces the top-level `credentials` section for this client.
    #[serde(default)]
    pub credentials: Option<Vec<CredentialConfig>>,
    /// Replaces the top-level `headers` section for this client.
    #[serde(default)]
    pub headers: Option<Vec<HeaderRuleConfig>>,
    /// Replaces the top-level `substitutions` section for this client.
    #[serde(default)]
    pub substitutions: Option<Vec<SubstitutionConfig>>,
    /// Replaces the top-level `llm` section for this client.
    #[serde(default)]
    pub llm: Option<Vec<crate::llm::LlmConfig>>,
    /// Replaces the top-level `mcp` section for this client.
    #[serde(default)]
    pub mcp: Option<Vec<crate::mcp::McpConfig>>,
    /// Replaces the top-level `correlation` section for this client.
    #[serde(default)]
    pub correlation: Option<CorrelationConfig>,
    /// Replaces the top-level `transforms` section for this client.
    #[serde(default)]
    pub transforms: Option<Vec<crate::transform::TransformConfig>>,
    /// The client's budgets (there is no top-level one).
    #[serde(default)]
    pub budget: Option<crate::budget::BudgetConfig>,
    /// Replaces the top-level `aws` section for this client (its own role).
    #[serde(default)]
    pub aws: Option<crate::aws::AwsConfig>,
}

/// A configured client: from the file, or registered at runtime ([`crate::registry`]).
#[derive(Debug)]
pub struct Client {
    /// Its name.
    pub name: Arc<str>,
    token: Token,
    /// Its compiled policy: its own sections, the top-level ones for the rest.
    pub profile: Arc<Profile>,
    /// Cancelled when the client is revoked: its live connections close.
    pub revoked: CancellationToken,
}

/// How a client's token is held: read from its source (file clients), or only as a SHA-256
/// hash (registered clients: nothing can give it back).
#[derive(Debug)]
pub enum Token {
    /// The token itself, read from its source.
    Plain(Secret),
    /// Its SHA-256 only.
    Hash([u8; 32]),
}

impl Token {
    /// Constant-time comparison with a presented token.
    fn matches(&self, presented: &[u8]) -> bool {
        match self {
            Token::Plain(secret) => secret.matches(presented),
            Token::Hash(hash) => openssl::memcmp::eq(hash, &openssl::sha::sha256(presented)),
        }
    }
}

/// Credentials a request presented: `Basic` gives a name and a token, `Bearer` a token.
#[derive(Debug)]
pub struct Presented {
    /// The client name (`Basic` only).
    pub name: Option<String>,
    /// The token.
    pub token: Vec<u8>,
}

/// Parses every `Proxy-Authorization` value of a request. [`Reason::AuthRequired`] when none
/// was sent; [`Reason::AuthInvalid`] when it is duplicated, malformed or too long.
pub fn presented(values: &[&[u8]]) -> Result<Presented, Reason> {
    let value = match values {
        [] => return Err(Reason::AuthRequired),
        [one] => *one,
        _ => return Err(Reason::AuthInvalid),
    };
    if value.len() > MAX_CREDENTIALS {
        return Err(Reason::AuthInvalid);
    }
    let text = std::str::from_utf8(value).map_err(|_| Reason::AuthInvalid)?;
    let (scheme, rest) = text.trim().split_once(' ').ok_or(Reason::AuthInvalid)?;
    let rest = rest.trim();
    let (name, token) = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = openssl::base64::decode_block(rest).map_err(|_| Reason::AuthInvalid)?;
        let text = String::from_utf8(decoded).map_err(|_| Reason::AuthInvalid)?;
        let (name, token) = text.split_once(':').ok_or(Reason::AuthInvalid)?;
        (Some(name.to_string()), token.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        (None, rest.as_bytes().to_vec())
    } else {
        return Err(Reason::AuthInvalid);
    };
    if token.is_empty() {
        return Err(Reason::AuthInvalid);
    }
    Ok(Presented { name, token })
}

impl Client {
    /// A client registered at runtime.
    pub fn registered(
        name: &str,
        token: Token,
        profile: Arc<Profile>,
        revoked: CancellationToken,
    ) -> Self {
        Client {
            name: Arc::from(name),
            token,
            profile,
            revoked,
        }
    }
}

/// The compiled client list.
#[derive(Debug)]
pub struct Clients {
    clients: Vec<Arc<Client>>,
}

impl ClientConfig {
    /// The client's own sections, for [`crate::profile::compile`].
    pub fn sections(&self) -> ProfileConfig<'_> {
        ProfileConfig {
            client: Some(&self.name),
            network: self.network.as_ref(),
            credentials: self.credentials.as_deref(),
            headers: self.headers.as_deref(),
            substitutions: self.substitutions.as_deref(),
            llm: self.llm.as_deref(),
            mcp: self.mcp.as_deref(),
            transforms: self.transforms.as_deref(),
            correlation: self.correlation.as_ref().map(Some),
            budget: self.budget.as_ref(),
            aws: self.aws.as_ref().map(Some),
        }
    }
}

impl AuthConfig {
    /// Reads every token and compiles each client's profile over `default` (the top-level
    /// sections; a client without sections of its own shares it). Errors carry the config
    /// key; every client's are reported.
    pub fn compile(
        &self,
        base_dir: &Path,
        default: &Arc<Profile>,
    ) -> Result<Clients, CompileErrors> {
        let mut errors = Vec::new();
        let mut names = HashSet::new();
        let mut clients = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let key = format!("proxy.auth.clients[{i}]");
            // Each section is compiled even when another failed, so all errors show at once.
            let before = errors.len();
            if c.name.is_empty() || c.name.contains(':') || c.name.len() > 64 {
                errors.push(CompileError::new(
                    format!("{key}.name"),
                    "a client name is 1-64 characters without ':'".into(),
                ));
            } else if !names.insert(c.name.clone()) {
                errors.push(CompileError::new(
                    format!("{key}.name"),
                    format!("client `{}` is listed twice", c.name),
                ));
            }
            let token = c
                .token
                .read(base_dir)
                .map_err(|e| errors.push(CompileError::new(format!("{key}.token"), e.to_string())))
                .ok();
            let sections = c.sections();
            let profile = if sections.is_empty() {
                Some(default.clone())
            } else {
                keep(
                    crate::profile::compile(&sections, Some(default), &key, base_dir),
                    &mut errors,
                )
                .map(Arc::new)
            };
            if errors.len() > before {
                continue;
            }
            let (Some(token), Some(profile)) = (token, profile) else {
                continue;
            };
            clients.push(Arc::new(Client {
                name: Arc::from(c.name.as_str()),
                token: Token::Plain(token),
                profile,
                revoked: CancellationToken::new(),
            }));
        }
        if self.clients.is_empty() {
            errors.push(CompileError::new(
                "proxy.auth.clients".into(),
                "lists no client; remove proxy.auth to run without authentication".into(),
            ));
        }
        if errors.is_empty() {
            Ok(Clients { clients })
        } else {
            Err(errors)
        }
    }
}

impl Clients {
    /// The client presenting `values` (every `Proxy-Authorization` header of the request).
    /// [`Reason::AuthRequired`] when none was sent; [`Reason::AuthInvalid`] when it is
    /// duplicated, malformed, too long or matches no client. Every client's token is compared,
    /// so timing does not reveal which part was wrong.
    pub fn authenticate(&self, values: &[&[u8]]) -> Result<Arc<Client>, Reason> {
        self.matching(&presented(values)?)
            .ok_or(Reason::AuthInvalid)
    }

    /// The client whose name (if given) and token match `p`. Every client's token is
    /// compared, so timing does not reveal which part was wrong.
    pub fn matching(&self, p: &Presented) -> Option<Arc<Client>> {
        let mut found = None;
        for c in &self.clients {
            let token_ok = c.token.matches(&p.token);
            let name_ok = p.name.as_deref().is_none_or(|n| n == &*c.name);
            if token_ok && name_ok && found.is_none() {
                found = Some(c.clone());
            }
        }
        found
    }

    /// Every client, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.clients.iter()
    }

    /// The client named `name`, if it is still configured.
    pub fn get(&self, name: &str) -> Option<&Arc<Client>> {
        self.clients.iter().find(|c| &*c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_profile() -> Arc<Profile> {
        let empty = ProfileConfig::default();
        Arc::new(crate::profile::compile(&empty, None, "", Path::new(".")).unwrap())
    }

    fn clients() -> Clients {
        let cfg: AuthConfig = serde_yaml::from_str(
            "clients:\n  - { name: a, token: { type: static, value: tok-a } }\n  - { name: b, token: { type: static, value: tok-b }, network: { policy: strict } }\n",
        )
        .unwrap();
        cfg.compile(Path::new("."), &default_profile()).unwrap()
    }

    fn basic(user_token: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            openssl::base64::encode_block(user_token.as_bytes())
        )
        .into_bytes()
    }

    #[test]
    fn basic_and_bearer_identify_the_client() {
        let c = clients();
        assert_eq!(&*c.authenticate(&[&basic("a:tok-a")]).unwrap().name, "a");
        assert_eq!(&*c.authenticate(&[b"Bearer tok-b"]).unwrap().name, "b");
        assert_eq!(&*c.authenticate(&[b"bearer  tok-b "]).unwrap().name, "b");
        let b = c.authenticate(&[b"Bearer tok-b"]).unwrap();
        let a = c.authenticate(&[b"Bearer tok-a"]).unwrap();
        assert!(
            !Arc::ptr_eq(&a.profile, &b.profile),
            "b has its own network section"
        );
    }

    #[test]
    fn bad_credentials_table() {
        let c = clients();
        let long = vec![b'A'; 8192];
        let cases: Vec<(Vec<&[u8]>, Reason)> = vec![
            (vec![], Reason::AuthRequired),
            (vec![b"Bearer tok-a", b"Bearer tok-a"], Reason::AuthInvalid),
            (vec![b""], Reason::AuthInvalid),
            (vec![b"Basic"], Reason::AuthInvalid),
            (vec![b"Basic !!notbase64!!"], Reason::AuthInvalid),
            (vec![b"Digest abc"], Reason::AuthInvalid),
            (vec![b"Bearer wrong"], Reason::AuthInvalid),
            (vec![b"Bearer "], Reason::AuthInvalid),
            (vec![&long], Reason::AuthInvalid),
            (vec![b"\xff\xfe"], Reason::AuthInvalid),
        ];
        for (values, want) in cases {
            assert_eq!(c.authenticate(&values).unwrap_err(), want, "{values:?}");
        }
        // Right token under another client's name, and a token without a name.
        assert_eq!(
            c.authenticate(&[&basic("b:tok-a")]).unwrap_err(),
            Reason::AuthInvalid
        );
        assert_eq!(
            c.authenticate(&[&basic("a")]).unwrap_err(),
            Reason::AuthInvalid
        );
    }

    #[test]
    fn unreadable_tokens_and_bad_names_are_config_errors() {
        let cfg: AuthConfig = serde_yaml::from_str(
            "clients:\n  - { name: a, token: { type: env, var: WARDEN_TEST_NO_SUCH_TOKEN } }\n",
        )
        .unwrap();
        let e = cfg
            .compile(Path::new("."), &default_profile())
            .unwrap_err()
            .remove(0);
        assert_eq!(e.key, "proxy.auth.clients[0].token");
        assert!(e.message.contains("WARDEN_TEST_NO_SUCH_TOKEN"), "{e}");
        let cfg: AuthConfig = serde_yaml::from_str(
            "clients:\n  - { name: a, token: { type: static, value: x } }\n  - { name: a, token: { type: static, value: y } }\n",
        )
        .unwrap();
        assert_eq!(
            cfg.compile(Path::new("."), &default_profile()).unwrap_err()[0].key,
            "proxy.auth.clients[1].name"
        );
        let cfg: AuthConfig = serde_yaml::from_str(
            "clients:\n  - { name: a, token: { type: static, value: x }, llm: [{ host: a.test, provider: openai, deny_tools: ['['] }] }\n",
        )
        .unwrap();
        assert_eq!(
            cfg.compile(Path::new("."), &default_profile()).unwrap_err()[0].key,
            "proxy.auth.clients[0].llm[0].deny_tools[0]"
        );
    }
}
