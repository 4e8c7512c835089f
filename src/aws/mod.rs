//! AWS credentials: the `aws` section (a role warden assumes with STS from long-lived source
//! keys, and the hosts whose SigV4 requests it re-signs) compiled into [`Aws`], part of a
//! client's profile. The assumed-role credentials are served to agents on the container
//! credentials endpoint ([`endpoint`]) and used to re-sign agents' requests signed with dummy
//! keys ([`resign`]); [`sessions`] keeps them, per role, across reloads, and [`sts`] fetches
//! them. Compiled with the profile; read by `request_filter` and `upstream_request_filter`.

pub mod endpoint;
pub mod resign;
pub mod sessions;
pub mod sts;

use crate::compile_error::{CompileError, CompileErrors};
use crate::policy::{any_matches, HostPattern};
use crate::secret::SecretSource;
use crate::target::Authority;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The path of the container credentials endpoint on the proxy listener.
pub const CREDENTIALS_PATH: &str = "/_warden/aws/credentials";

/// `aws` (top level, or a client's own, which replaces it for that client).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The role warden assumes (`arn:aws:iam::123456789012:role/agent`).
    pub role_arn: String,
    /// The region of the STS endpoint (and of the default one).
    pub region: String,
    /// How long an assumed-role session lasts (15m to 12h).
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub session_duration: Duration,
    /// `ExternalId` sent with AssumeRole, when the role's trust policy asks for one.
    #[serde(default)]
    pub external_id: Option<String>,
    /// `RoleSessionName`; default `warden` (`warden-<client>` in a client's own section).
    #[serde(default)]
    pub session_name: Option<String>,
    /// The long-lived keys that call AssumeRole.
    pub source: AwsSource,
    /// STS endpoint; default `https://sts.<region>.amazonaws.com`.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// Hosts whose SigV4-signed requests warden re-signs with the role's credentials.
    #[serde(default)]
    pub resign: Vec<HostPattern>,
}

/// `aws.source`: where the access key pair is read from (at each AssumeRole call).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSource {
    /// The access key id.
    pub access_key_id: SecretSource,
    /// The secret access key.
    pub secret_access_key: SecretSource,
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

/// Which assumed-role session a request needs: the cache key of [`sessions::Sessions`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleKey {
    /// The role.
    pub role_arn: String,
    /// `ExternalId`, if any.
    pub external_id: Option<String>,
    /// `RoleSessionName`.
    pub session_name: String,
    /// Session length in seconds.
    pub duration_secs: u64,
    /// The STS endpoint URL.
    pub sts_endpoint: String,
    /// The source keys, by where they are read from (never their values).
    pub source: String,
}

/// The compiled `aws` section.
#[derive(Debug)]
pub struct Aws {
    /// Which session it assumes.
    pub key: RoleKey,
    /// The region AssumeRole is signed for.
    pub region: String,
    /// Where the source keys are read from.
    pub source: AwsSource,
    /// The folder relative secret files are read from.
    pub base_dir: PathBuf,
    /// The STS endpoint, parsed.
    pub sts: reqwest::Url,
    /// `aws.resign`.
    pub resign: Vec<HostPattern>,
}

impl Aws {
    /// Whether requests to `dest` are re-signed (and so must be intercepted).
    pub fn resigns(&self, dest: &Authority) -> bool {
        any_matches(&self.resign, dest)
    }
}

impl AwsConfig {
    /// Validates the section. `key` is where it sits (`aws`, `proxy.auth.clients[0].aws`);
    /// `client` names the client whose section it is, for the default session name.
    pub fn compile(
        &self,
        key: &str,
        client: Option<&str>,
        base_dir: &Path,
    ) -> Result<Aws, CompileErrors> {
        let mut errors = Vec::new();
        let mut fail =
            |k: &str, m: &str| errors.push(CompileError::new(format!("{key}.{k}"), m.into()));
        let arn_ok = self.role_arn.starts_with("arn:")
            && self.role_arn.split(':').count() == 6
            && self
                .role_arn
                .split(':')
                .nth(5)
                .is_some_and(|r| r.starts_with("role/") && r.len() > 5);
        if !arn_ok {
            fail(
                "role_arn",
                "is not a role ARN (arn:aws:iam::<account>:role/<name>)",
            );
        }
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            fail("region", "is not a region name (like us-east-1)");
        }
        let secs = self.session_duration.as_secs();
        if !(900..=43_200).contains(&secs) || self.session_duration.subsec_nanos() != 0 {
            fail("session_duration", "must be whole seconds from 15m to 12h");
        }
        if let Some(id) = &self.external_id {
            let ok = (2..=1224).contains(&id.len()) && id.bytes().all(name_byte);
            if !ok {
                fail(
                    "external_id",
                    "must be 2-1224 characters of [A-Za-z0-9+=,.@:/_-]",
                );
            }
        }
        let session_name = match (&self.session_name, client) {
            (Some(n), _) => n.clone(),
            (None, Some(c)) => format!("warden-{c}"),
            (None, None) => "warden".into(),
        };
        let name_ok = (2..=64).contains(&session_name.len())
            && session_name
                .bytes()
                .all(|b| name_byte(b) && b != b':' && b != b'/');
        if !name_ok {
            let m = match self.session_name {
                Some(_) => "must be 2-64 characters of [A-Za-z0-9+=,.@_-]",
                None => {
                    "is needed: the client's name does not make a valid default (warden-<client>)"
                }
            };
            fail("session_name", m);
        }
        let endpoint = self
            .sts_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.region));
        let sts = match reqwest::Url::parse(&endpoint) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() && u.query().is_none() => {
                Some(u)
            }
            _ => {
                fail("sts_endpoint", "must be an https:// URL without a query");
                None
            }
        };
        match (errors.is_empty(), sts) {
            (true, Some(sts)) => Ok(Aws {
                key: RoleKey {
                    role_arn: self.role_arn.clone(),
                    external_id: self.external_id.clone(),
                    session_name,
                    duration_secs: secs,
                    sts_endpoint: sts.to_string(),
                    source: format!(
                        "{} / {}",
                        self.source.access_key_id.describe(),
                        self.source.secret_access_key.describe()
                    ),
                },
                region: self.region.clone(),
                source: self.source.clone(),
                base_dir: base_dir.to_path_buf(),
                sts,
                resign: self.resign.clone(),
            }),
            _ => Err(errors),
        }
    }
}

impl AwsConfig {
    /// The source keys that cannot be read now, each with its key under `key` and why (the
    /// variable or file, never a value), for `warden check`.
    pub fn unreadable(&self, key: &str, base_dir: &Path) -> Vec<(String, String)> {
        let keys = [
            ("access_key_id", &self.source.access_key_id),
            ("secret_access_key", &self.source.secret_access_key),
        ];
        keys.into_iter()
            .filter_map(|(name, source)| {
                let why = source.read(base_dir).err()?;
                Some((
                    format!("{key}.source.{name}"),
                    format!("cannot be read now ({why}); AWS credentials and re-signing will fail with 502 credential_unavailable until it can"),
                ))
            })
            .collect()
    }
}

/// The characters IAM allows in external ids and session names.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+=,.@:/_-".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str) -> AwsConfig {
        serde_yaml::from_str(&format!(
            "role_arn: arn:aws:iam::123456789012:role/agent\nregion: us-east-1\nsource: {{ access_key_id: {{ type: env, var: A }}, secret_access_key: {{ type: env, var: B }} }}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn a_minimal_section_takes_the_documented_defaults() {
        let aws = section("").compile("aws", None, Path::new(".")).unwrap();
        assert_eq!(aws.key.duration_secs, 3600);
        assert_eq!(aws.key.session_name, "warden");
        assert_eq!(aws.sts.as_str(), "https://sts.us-east-1.amazonaws.com/");
        assert!(aws.resign.is_empty());
        let theirs = section("")
            .compile("x.aws", Some("run-42"), Path::new("."))
            .unwrap();
        assert_eq!(theirs.key.session_name, "warden-run-42");
        assert_eq!(theirs.key.source, "env A / env B");
    }

    #[test]
    fn every_bad_key_is_named() {
        let bad = section("session_duration: 5m\nexternal_id: 'x'\nsession_name: 'a b'\nsts_endpoint: http://sts.test\n");
        let mut cfg = bad.clone();
        cfg.role_arn = "arn:aws:iam::1:user/x".into();
        cfg.region = "US East".into();
        let keys: Vec<String> = cfg
            .compile("aws", None, Path::new("."))
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "aws.role_arn",
                "aws.region",
                "aws.session_duration",
                "aws.external_id",
                "aws.session_name",
                "aws.sts_endpoint"
            ]
        );
        assert!(
            serde_yaml::from_str::<AwsConfig>("role_arn: x\nregion: y\nsource: {}\nbogus: 1")
                .is_err()
        );
    }
}
