//! Credential injection: the secrets the agent never holds. A `credentials` entry names a host
//! pattern, a header, a format and a secret source. `request_filter` picks the entry matching
//! the connection identity (never the `Host` header) once policy has allowed the request, and
//! reads its secret — failing the request closed when it cannot be read. `upstream_request_filter`
//! then sets the header, overwriting whatever the client sent.

use crate::compile_error::{CompileError, CompileErrors};
use crate::policy::{GrantHosts, HostPattern};
use crate::refresh::{Lease, Refresher, Refreshers};
use crate::secret::{Secret, SecretError, SecretSource};
use crate::target::{Authority, Scheme};
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// One `credentials` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The destination it belongs to.
    pub host: HostPattern,
    /// Header to set; default `Authorization`.
    #[serde(default)]
    pub header: Option<String>,
    /// Value template with `{secret}`; default `Bearer {secret}` for `Authorization`, else
    /// `{secret}`.
    #[serde(default)]
    pub format: Option<String>,
    /// A name `network.grants` can allow this credential's host by.
    #[serde(default)]
    pub grant: Option<String>,
    /// Where the secret is read from, at request time.
    pub source: SecretSource,
    /// Also inject into plain-HTTP requests to this host (never by default).
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// A compiled credential.
#[derive(Debug)]
pub struct Credential {
    host: HostPattern,
    /// The header it sets.
    pub header: HeaderName,
    prefix: String,
    suffix: String,
    /// Its grant, if any.
    pub grant: Option<String>,
    source: LiveSource,
    allow_plaintext: bool,
}

/// The compiled `credentials` section.
#[derive(Debug, Default)]
pub struct Credentials {
    list: Vec<Credential>,
}

/// A credential whose secret could not be read: which one (by grant and host), and why.
#[derive(Debug, thiserror::Error)]
#[error("credential {which} ({source_name}): {cause}")]
pub struct Unavailable {
    /// `grant github` or `host api.github.com`.
    pub which: String,
    /// `env GITHUB_TOKEN`, `file /run/token`, `static value`.
    pub source_name: String,
    /// What went wrong.
    pub cause: String,
}

/// Compiles `entries`; `key` is the config key they sit under (for error messages). Every
/// bad field of every entry is reported.
pub fn compile(
    entries: &[CredentialConfig],
    key: &str,
    base_dir: &Path,
) -> Result<Credentials, CompileErrors> {
    let (credentials, errors) = compile_lenient(entries, key, base_dir);
    if errors.is_empty() {
        Ok(credentials)
    } else {
        Err(errors)
    }
}

/// [`compile`] that also returns the credentials when some entries are bad: a bad field is
/// reported and replaced by its default, so the sections that look credentials up by grant
/// (`network.grants`) are checked in the same run without spurious errors of their own.
pub(crate) fn compile_lenient(
    entries: &[CredentialConfig],
    key: &str,
    base_dir: &Path,
) -> (Credentials, CompileErrors) {
    let mut errors = Vec::new();
    let mut list = Vec::new();
    for (i, c) in entries.iter().enumerate() {
        let at = |field: &str| format!("{key}[{i}].{field}");
        let header_name = c.header.as_deref().unwrap_or("authorization");
        let header = HeaderName::from_bytes(header_name.as_bytes()).unwrap_or_else(|_| {
            errors.push(CompileError::new(
                at("header"),
                format!("`{header_name}` is not a header name"),
            ));
            http::header::AUTHORIZATION
        });
        let format = c.format.clone().unwrap_or_else(|| {
            if header == http::header::AUTHORIZATION {
                "Bearer {secret}".into()
            } else {
                "{secret}".into()
            }
        });
        let (prefix, suffix) = match format
            .split_once("{secret}")
            .filter(|(_, rest)| !rest.contains("{secret}"))
        {
            Some((prefix, suffix)) => {
                if HeaderValue::from_str(&format!("{prefix}x{suffix}")).is_err() {
                    errors.push(CompileError::new(
                        at("format"),
                        "is not a valid header value".into(),
                    ));
                }
                (prefix, suffix)
            }
            None => {
                errors.push(CompileError::new(
                    at("format"),
                    "must contain {secret} exactly once".to_string(),
                ));
                ("", "")
            }
        };
        if c.grant.as_deref().is_some_and(str::is_empty) {
            errors.push(CompileError::new(at("grant"), "must not be empty".into()));
        }
        if let Err((field, message)) = crate::refresh::validate(&c.source) {
            errors.push(CompileError::new(
                format!("{}{field}", at("source")),
                message,
            ));
        }
        list.push(Credential {
            host: c.host.clone(),
            header,
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            grant: c.grant.clone(),
            source: LiveSource::new(c.source.clone(), base_dir),
            allow_plaintext: c.allow_plaintext,
        });
    }
    (Credentials { list }, errors)
}

impl Credentials {
    /// The credential for a request to `dest` over `scheme`: the first entry naming the
    /// destination, if it may be sent that way (plain HTTP only with `allow_plaintext`).
    pub fn for_request(&self, dest: &Authority, scheme: Scheme) -> Option<&Credential> {
        self.list
            .iter()
            .find(|c| c.host.matches(dest))
            .filter(|c| scheme == Scheme::Https || c.allow_plaintext)
    }

    /// Whether some credential names `dest` (its tunnels must be intercepted).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.list.iter().any(|c| c.host.matches(dest))
    }

    /// The host patterns of the credentials, by grant, for compiling `network.grants`; a grant
    /// no credential carries is absent.
    pub fn grant_hosts(&self) -> GrantHosts {
        let mut grants = GrantHosts::new();
        for c in &self.list {
            if let Some(grant) = &c.grant {
                grants
                    .entry(grant.clone())
                    .or_default()
                    .push(c.host.clone());
            }
        }
        grants
    }
}

impl Credential {
    /// The header value to send, the secret in it (for scrubbing echoes) and, for a
    /// refreshing source, the lease on the value (an upstream 401 evicts it), reading the
    /// secret now: waiting, without blocking, for a refresh when there is no valid value. Fails
    /// closed, naming the credential and its source but never a value.
    pub async fn read(&self, sources: &SourceCache) -> Result<Read, Unavailable> {
        let unavailable = |cause: String| Unavailable {
            which: self.describe(),
            source_name: self.source.source.describe(),
            cause,
        };
        let (secret, lease) = self
            .source
            .read(sources)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut value = HeaderValue::from_str(&format!(
            "{}{}{}",
            self.prefix,
            secret.expose(),
            self.suffix
        ))
        .map_err(|_| unavailable("the secret is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Read {
            value,
            secret,
            lease,
        })
    }

    /// `grant github`, or `host api.github.com` when it has no grant.
    pub fn describe(&self) -> String {
        match &self.grant {
            Some(g) => format!("grant {g}"),
            None => format!("host {}", self.host),
        }
    }
}

/// A credential read for one request.
#[derive(Debug)]
pub struct Read {
    /// The header value (marked sensitive).
    pub value: HeaderValue,
    /// The secret in it.
    pub secret: Secret,
    /// The value's lease, when it came from a refreshing source.
    pub lease: Option<Lease>,
}

/// A secret source read at request time. File contents are cached (in [`SourceCache`]) and
/// re-read when the file's modification time or size changes, so rotation needs no reload.
/// A refreshing source (`process`, `oauth2`) is read through its [`Refresher`], found once in
/// the runtime cache by what the source is.
#[derive(Debug)]
pub(crate) struct LiveSource {
    source: SecretSource,
    base_dir: PathBuf,
    refresher: OnceLock<Arc<Refresher>>,
}

/// File sources read so far, by path, with the stamp they were read at, and the refreshing
/// sources' cached values: runtime state, kept across reloads (a reload reads no unchanged
/// file again, and runs no command nor token request for a source it keeps).
#[derive(Debug)]
pub struct SourceCache {
    files: quick_cache::sync::Cache<PathBuf, ((SystemTime, u64), Secret)>,
    /// The refreshing sources.
    pub refreshers: Arc<Refreshers>,
}

/// Files whose contents are cached (least recently used beyond this are read again).
const SOURCE_CACHE_ENTRIES: usize = 4096;

impl Default for SourceCache {
    fn default() -> Self {
        SourceCache {
            files: quick_cache::sync::Cache::new(SOURCE_CACHE_ENTRIES),
            refreshers: Arc::default(),
        }
    }
}

impl LiveSource {
    /// Names the source (`env X`, `file F`, `static value`).
    pub(crate) fn describe(&self) -> String {
        self.source.describe()
    }

    pub(crate) fn new(source: SecretSource, base_dir: &Path) -> Self {
        LiveSource {
            source,
            base_dir: base_dir.to_path_buf(),
            refresher: OnceLock::new(),
        }
    }

    /// The secret now, and its lease when the source refreshes.
    pub(crate) async fn read(
        &self,
        cache: &SourceCache,
    ) -> Result<(Secret, Option<Lease>), SecretError> {
        if self.source.refreshes() {
            let refresher = self
                .refresher
                .get_or_init(|| cache.refreshers.get(&self.source, &self.base_dir));
            let (secret, lease) = refresher.read(&cache.refreshers).await?;
            return Ok((secret, Some(lease)));
        }
        self.read_now(cache).map(|s| (s, None))
    }

    fn read_now(&self, cache: &SourceCache) -> Result<Secret, SecretError> {
        let SecretSource::File { path } = &self.source else {
            return self.source.read(&self.base_dir);
        };
        let path = self.base_dir.join(path);
        let meta = std::fs::metadata(&path).map_err(|e| SecretError::File {
            path: path.clone(),
            kind: e.kind(),
        })?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if let Some((at, secret)) = cache.files.get(&path) {
            if at == stamp {
                return Ok(secret);
            }
        }
        let secret = self.source.read(&self.base_dir)?;
        cache.files.insert(path, (stamp, secret.clone()));
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SOURCES: std::sync::LazyLock<SourceCache> =
        std::sync::LazyLock::new(SourceCache::default);

    impl Credential {
        fn read_sync(&self, sources: &SourceCache) -> Result<(HeaderValue, Secret), Unavailable> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(self.read(sources)).map(|r| (r.value, r.secret))
        }
    }

    fn creds(yaml: &str, dir: &Path) -> Credentials {
        let entries: Vec<CredentialConfig> = serde_yaml::from_str(yaml).unwrap();
        compile(&entries, "credentials", dir).unwrap()
    }

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[test]
    fn defaults_and_formats() {
        let c = creds(
            "- { host: api.test, source: { type: static, value: s3cr3t } }\n- { host: other.test, header: x-api-key, source: { type: static, value: k } }\n- { host: fmt.test, header: x-t, format: 'token={secret};', source: { type: static, value: v } }\n",
            Path::new("."),
        );
        let a = c.for_request(&dest("api.test:443"), Scheme::Https).unwrap();
        assert_eq!(a.header, http::header::AUTHORIZATION);
        assert_eq!(a.read_sync(&SOURCES).unwrap().0, "Bearer s3cr3t");
        assert!(a.read_sync(&SOURCES).unwrap().0.is_sensitive());
        let b = c
            .for_request(&dest("other.test:443"), Scheme::Https)
            .unwrap();
        assert_eq!(
            (b.header.as_str(), b.read_sync(&SOURCES).unwrap().0),
            ("x-api-key", HeaderValue::from_static("k"))
        );
        let f = c.for_request(&dest("fmt.test:443"), Scheme::Https).unwrap();
        assert_eq!(f.read_sync(&SOURCES).unwrap().0, "token=v;");
    }

    #[test]
    fn only_the_named_host_over_tls_unless_plaintext_is_allowed() {
        let c = creds(
            "- { host: api.test, source: { type: static, value: s } }\n- { host: plain.test, allow_plaintext: true, source: { type: static, value: s } }\n",
            Path::new("."),
        );
        assert!(c
            .for_request(&dest("api.test:443"), Scheme::Https)
            .is_some());
        assert!(c.for_request(&dest("api.test:80"), Scheme::Http).is_none());
        assert!(c
            .for_request(&dest("evil-api.test:443"), Scheme::Https)
            .is_none());
        assert!(c
            .for_request(&dest("sub.api.test:443"), Scheme::Https)
            .is_none());
        assert!(c
            .for_request(&dest("api.test:8443"), Scheme::Https)
            .is_none());
        assert!(c
            .for_request(&dest("plain.test:80"), Scheme::Http)
            .is_some());
        assert!(c.has_for(&dest("api.test:443")));
    }

    #[test]
    fn unreadable_sources_fail_closed_naming_the_credential_not_the_value() {
        let c = creds(
            "- { host: api.test, grant: github, source: { type: env, var: WARDEN_TEST_NO_CRED } }\n",
            Path::new("."),
        );
        let err = c
            .for_request(&dest("api.test:443"), Scheme::Https)
            .unwrap()
            .read_sync(&SOURCES)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "credential grant github (env WARDEN_TEST_NO_CRED): environment variable WARDEN_TEST_NO_CRED is not set"
        );
    }

    #[test]
    fn file_sources_follow_rotation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "first\n").unwrap();
        let c = creds(
            "- { host: api.test, source: { type: file, path: tok } }\n",
            dir.path(),
        );
        let cred = c.for_request(&dest("api.test:443"), Scheme::Https).unwrap();
        assert_eq!(cred.read_sync(&SOURCES).unwrap().0, "Bearer first");
        std::fs::write(dir.path().join("tok"), "second-longer\n").unwrap();
        assert_eq!(cred.read_sync(&SOURCES).unwrap().0, "Bearer second-longer");
        std::fs::remove_file(dir.path().join("tok")).unwrap();
        assert!(cred.read_sync(&SOURCES).is_err());
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "FILE-CANARY\n").unwrap();
        let c = creds(
            "- { host: a.test, source: { type: static, value: STATIC-CANARY } }\n- { host: b.test, source: { type: file, path: tok } }\n",
            dir.path(),
        );
        let (value, secret) = c
            .for_request(&dest("b.test:443"), Scheme::Https)
            .unwrap()
            .read_sync(&SOURCES)
            .unwrap();
        let shown = format!("{c:?} {value:?} {secret:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
    }

    #[test]
    fn bad_entries_name_their_key() {
        let bad = |yaml: &str| {
            let entries: Vec<CredentialConfig> = serde_yaml::from_str(yaml).unwrap();
            compile(&entries, "credentials", Path::new("."))
                .unwrap_err()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bad("- { host: a.test, header: 'bad header', source: { type: static, value: s } }"),
            ["credentials[0].header"]
        );
        assert_eq!(
            bad("- { host: a.test, format: 'no placeholder', source: { type: static, value: s } }"),
            ["credentials[0].format"]
        );
        assert_eq!(
            bad("- { host: a.test, format: '{secret}{secret}', source: { type: static, value: s } }"),
            ["credentials[0].format"]
        );
    }

    #[test]
    fn every_bad_field_of_every_entry_is_reported() {
        let entries: Vec<CredentialConfig> = serde_yaml::from_str(
            "- { host: a.test, header: 'bad header', format: nope, source: { type: static, value: s } }\n- { host: b.test, source: { type: static, value: s } }\n- { host: c.test, grant: '', source: { type: static, value: s } }\n",
        )
        .unwrap();
        let errors = compile(&entries, "credentials", Path::new(".")).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "credentials[0].header",
                "credentials[0].format",
                "credentials[2].grant"
            ]
        );
        // The grant lookup still sees every entry, so `network.grants` is checked alongside.
        let (lenient, _) = compile_lenient(&entries, "credentials", Path::new("."));
        assert_eq!(lenient.list.len(), 3);
    }

    #[test]
    fn grants_collect_their_hosts() {
        let c = creds(
            "- { host: api.github.com, grant: github, source: { type: static, value: s } }\n- { host: '*.githubusercontent.com', grant: github, source: { type: static, value: s } }\n",
            Path::new("."),
        );
        let grants = c.grant_hosts();
        assert_eq!(grants["github"].len(), 2);
        assert!(!grants.contains_key("gitlab"));
    }
}
