//! Placeholder substitution: the agent holds a placeholder (`WARDEN_EXAMPLE_TOKEN`), and on
//! requests to the configured host only, warden swaps in the real secret — in headers
//! (including inside `Authorization: Basic`), the query, the path and the body (streamed, with
//! placeholders split across chunks still found). A placeholder sent anywhere else is left as
//! it is and flagged in the log. Secrets are read in `request_filter` after policy (admission),
//! applied by `upstream_request_filter` and `request_body_filter`.

use crate::compile_error::{CompileError, CompileErrors};
use crate::credentials::{LiveSource, SourceCache, Unavailable};
use crate::policy::HostPattern;
use crate::refresh::Lease;
use crate::scrub::Replacer;
use crate::secret::{Secret, SecretSource};
use crate::target::{Authority, Scheme};
use serde::Deserialize;
use std::path::Path;

/// Where a placeholder is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// Request header values (and the credentials inside `Basic` authorization).
    Headers,
    /// The query string.
    Query,
    /// The path.
    Path,
    /// The request body.
    Body,
}

/// One `substitutions` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubstitutionConfig {
    /// The destination the secret belongs to.
    pub host: HostPattern,
    /// What the agent sends instead of the secret.
    pub placeholder: String,
    /// Where the secret is read from, at request time.
    pub source: SecretSource,
    /// Where to replace; default all four.
    #[serde(default = "all_places", rename = "in")]
    pub places: Vec<Place>,
    /// Also substitute on plain-HTTP requests (never by default).
    #[serde(default)]
    pub allow_plaintext: bool,
}

fn all_places() -> Vec<Place> {
    vec![Place::Headers, Place::Query, Place::Path, Place::Body]
}

/// A compiled substitution.
#[derive(Debug)]
pub struct Substitution {
    host: HostPattern,
    /// The placeholder text.
    pub placeholder: String,
    source: LiveSource,
    places: Vec<Place>,
    allow_plaintext: bool,
}

/// The compiled `substitutions` section.
#[derive(Debug, Default)]
pub struct Substitutions {
    list: Vec<Substitution>,
}

/// A substitution in force for one request: what to replace, with what, where.
#[derive(Debug, Clone)]
pub struct Active {
    /// The placeholder.
    pub placeholder: String,
    /// The secret.
    pub secret: Secret,
    /// Where it applies.
    pub places: Vec<Place>,
    /// The value's lease, when it came from a refreshing source.
    pub lease: Option<Lease>,
}

impl Active {
    /// Whether it applies in `place`.
    pub fn applies(&self, place: Place) -> bool {
        self.places.contains(&place)
    }
}

/// Compiles `entries` under config key `key`; every bad entry is reported.
pub fn compile(
    entries: &[SubstitutionConfig],
    key: &str,
    base_dir: &Path,
) -> Result<Substitutions, CompileErrors> {
    let mut errors = Vec::new();
    let mut list = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = &e.placeholder;
        if p.len() < 6 || !p.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(CompileError::new(
                format!("{key}[{i}].placeholder"),
                "must be at least 6 visible ASCII characters, so it cannot match by accident"
                    .into(),
            ));
        }
        if let Err((field, message)) = crate::refresh::validate(&e.source) {
            errors.push(CompileError::new(
                format!("{key}[{i}].source{field}"),
                message,
            ));
        }
        if e.places.is_empty() {
            errors.push(CompileError::new(
                format!("{key}[{i}].in"),
                "names no place".into(),
            ));
        }
        list.push(Substitution {
            host: e.host.clone(),
            placeholder: p.clone(),
            source: LiveSource::new(e.source.clone(), base_dir),
            places: e.places.clone(),
            allow_plaintext: e.allow_plaintext,
        });
    }
    if errors.is_empty() {
        Ok(Substitutions { list })
    } else {
        Err(errors)
    }
}

impl Substitutions {
    /// Reads the secrets of every substitution for a request to `dest` over `scheme` (plain
    /// HTTP only with `allow_plaintext`), waiting without blocking for a refreshing source
    /// that has no valid value. Fails closed on the first that cannot be read.
    pub async fn activate(
        &self,
        sources: &SourceCache,
        dest: &Authority,
        scheme: Scheme,
    ) -> Result<Vec<Active>, Unavailable> {
        let mut active = Vec::new();
        let applying = self
            .list
            .iter()
            .filter(|s| s.host.matches(dest) && (scheme == Scheme::Https || s.allow_plaintext));
        for s in applying {
            let (secret, lease) = s.source.read(sources).await.map_err(|e| Unavailable {
                which: format!("substitution {} for host {}", s.placeholder, s.host),
                source_name: s.source.describe(),
                cause: e.to_string(),
            })?;
            active.push(Active {
                placeholder: s.placeholder.clone(),
                secret,
                places: s.places.clone(),
                lease,
            });
        }
        Ok(active)
    }

    /// Whether a substitution names `dest` (its tunnels must be intercepted).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.list.iter().any(|s| s.host.matches(dest))
    }

    /// Whether `text` carries a placeholder that belongs to another host than `dest`.
    pub fn foreign_placeholder_in(&self, dest: &Authority, text: &[u8]) -> bool {
        self.list.iter().any(|s| {
            !s.host.matches(dest)
                && text
                    .windows(s.placeholder.len())
                    .any(|w| w == s.placeholder.as_bytes())
        })
    }
}

/// `text` with each placeholder replaced by its secret percent-encoded for a URL, for the
/// active substitutions that apply in `place`; `None` when nothing was replaced.
pub fn in_url(active: &[Active], place: Place, text: &str) -> Option<String> {
    let mut out = text.to_string();
    let mut changed = false;
    for a in active.iter().filter(|a| a.applies(place)) {
        if out.contains(&a.placeholder) {
            out = out.replace(&a.placeholder, &percent_encode(a.secret.expose()));
            changed = true;
        }
    }
    changed.then_some(out)
}

/// The replacer for `place`: each placeholder that applies there, to its secret; `None` when
/// none does. Built once per request.
pub fn replacer(active: &[Active], place: Place) -> Option<Replacer> {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = active
        .iter()
        .filter(|a| a.applies(place))
        .map(|a| {
            (
                a.placeholder.as_bytes().to_vec(),
                a.secret.expose().as_bytes().to_vec(),
            )
        })
        .collect();
    (!pairs.is_empty()).then(|| Replacer::new(pairs))
}

/// A header value with placeholders replaced, including inside `Basic` credentials (decoded,
/// replaced, re-encoded); `None` when nothing was replaced.
pub fn in_header(replacer: &Replacer, value: &[u8]) -> Option<Vec<u8>> {
    if let Some(b64) = value
        .strip_prefix(b"Basic ")
        .or_else(|| value.strip_prefix(b"basic "))
    {
        let decoded = std::str::from_utf8(b64)
            .ok()
            .and_then(|t| openssl::base64::decode_block(t.trim()).ok());
        if let Some(replaced) = decoded.as_deref().and_then(|d| replacer.replace_value(d)) {
            let mut out = b"Basic ".to_vec();
            out.extend_from_slice(openssl::base64::encode_block(&replaced).as_bytes());
            return Some(out);
        }
    }
    replacer.replace_value(value)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static SOURCES: std::sync::LazyLock<SourceCache> =
        std::sync::LazyLock::new(SourceCache::default);

    impl Substitutions {
        fn activate_sync(
            &self,
            sources: &SourceCache,
            dest: &Authority,
            scheme: Scheme,
        ) -> Result<Vec<Active>, Unavailable> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(self.activate(sources, dest, scheme))
        }
    }

    fn subs(yaml: &str) -> Substitutions {
        let entries: Vec<SubstitutionConfig> = serde_yaml::from_str(yaml).unwrap();
        compile(&entries, "substitutions", Path::new(".")).unwrap()
    }

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    const ONE: &str = "- { host: api.test, placeholder: WARDEN_TOKEN, source: { type: static, value: 's3cr/t+1' } }";

    #[test]
    fn only_the_named_host_over_tls() {
        let s = subs(ONE);
        assert_eq!(
            s.activate_sync(&SOURCES, &dest("api.test:443"), Scheme::Https)
                .unwrap()
                .len(),
            1
        );
        assert!(s
            .activate_sync(&SOURCES, &dest("api.test:80"), Scheme::Http)
            .unwrap()
            .is_empty());
        assert!(s
            .activate_sync(&SOURCES, &dest("other.test:443"), Scheme::Https)
            .unwrap()
            .is_empty());
        assert!(s.foreign_placeholder_in(&dest("other.test:443"), b"x WARDEN_TOKEN y"));
        assert!(!s.foreign_placeholder_in(&dest("api.test:443"), b"x WARDEN_TOKEN y"));
    }

    #[test]
    fn headers_basic_auth_and_urls() {
        let s = subs(ONE);
        let a = s
            .activate_sync(&SOURCES, &dest("api.test:443"), Scheme::Https)
            .unwrap();
        let h = replacer(&a, Place::Headers).unwrap();
        assert_eq!(
            in_header(&h, b"token WARDEN_TOKEN").unwrap(),
            b"token s3cr/t+1"
        );
        let basic = format!(
            "Basic {}",
            openssl::base64::encode_block(b"user:WARDEN_TOKEN")
        );
        let out = in_header(&h, basic.as_bytes()).unwrap();
        let decoded = openssl::base64::decode_block(
            std::str::from_utf8(&out)
                .unwrap()
                .strip_prefix("Basic ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(decoded, b"user:s3cr/t+1");
        assert!(in_header(&h, b"nothing here").is_none());
        assert_eq!(
            in_url(&a, Place::Query, "key=WARDEN_TOKEN&x=1").unwrap(),
            "key=s3cr%2Ft%2B1&x=1"
        );
        assert_eq!(
            in_url(&a, Place::Path, "/v1/WARDEN_TOKEN/x").unwrap(),
            "/v1/s3cr%2Ft%2B1/x"
        );
    }

    #[test]
    fn places_limit_where_it_applies_and_bad_entries_are_refused() {
        let s = subs("- { host: api.test, placeholder: WARDEN_TOKEN, in: [body], source: { type: static, value: v } }");
        let a = s
            .activate_sync(&SOURCES, &dest("api.test:443"), Scheme::Https)
            .unwrap();
        assert!(replacer(&a, Place::Headers).is_none());
        assert!(in_url(&a, Place::Query, "k=WARDEN_TOKEN").is_none());
        assert!(a[0].applies(Place::Body));
        let bad = |y: &str| {
            let e: Vec<SubstitutionConfig> = serde_yaml::from_str(y).unwrap();
            compile(&e, "substitutions", Path::new("."))
                .unwrap_err()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bad("- { host: a.test, placeholder: abc, source: { type: static, value: v } }"),
            ["substitutions[0].placeholder"]
        );
        assert_eq!(
            bad("- { host: a.test, placeholder: WARDEN_X1, in: [], source: { type: static, value: v } }"),
            ["substitutions[0].in"]
        );
        assert_eq!(
            bad("- { host: a.test, placeholder: abc, in: [], source: { type: static, value: v } }\n- { host: b.test, placeholder: xyz, source: { type: static, value: v } }"),
            [
                "substitutions[0].placeholder",
                "substitutions[0].in",
                "substitutions[1].placeholder"
            ]
        );
    }

    #[test]
    fn an_unreadable_secret_fails_closed() {
        let s = subs("- { host: api.test, placeholder: WARDEN_TOKEN, source: { type: env, var: WARDEN_TEST_SUBST_UNSET } }");
        let err = s
            .activate_sync(&SOURCES, &dest("api.test:443"), Scheme::Https)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WARDEN_TEST_SUBST_UNSET") && err.contains("WARDEN_TOKEN"),
            "{err}"
        );
    }
}
