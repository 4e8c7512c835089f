//! The STS call: `AssumeRole` signed with the source keys (SigV4, the official signer), and
//! its XML answer read into [`RoleCredentials`]. Called by [`super::sessions`] when a role's
//! session is missing or due for refresh; the HTTP client it is given trusts the system roots
//! and `tls.upstream_ca_file`.

use super::Aws;
use crate::secret::{Secret, SecretError};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use std::time::{Duration, SystemTime};

/// An answer bigger than this is not an AssumeRole answer.
const MAX_ANSWER: usize = 64 * 1024;

/// Temporary credentials of an assumed role.
#[derive(Clone)]
pub struct RoleCredentials {
    /// The access key id (not a secret: it names the key).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token.
    pub session_token: Secret,
    /// When STS says they expire.
    pub expiration: SystemTime,
    /// When they were fetched.
    pub fetched: SystemTime,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl RoleCredentials {
    /// When to fetch new ones: at 75% of their lifetime, and at least five minutes before
    /// they expire.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .expiration
            .duration_since(self.fetched)
            .unwrap_or_default();
        let early = self.fetched + life.mul_f64(0.75);
        let late = self
            .expiration
            .checked_sub(Duration::from_secs(300))
            .unwrap_or(self.fetched)
            .max(self.fetched);
        early.min(late)
    }
}

/// Why no credentials came back. Names sources and STS error codes, never a value.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// A source key could not be read.
    #[error("aws.source: {0}")]
    Source(#[from] SecretError),
    /// STS answered with an error.
    #[error("STS AssumeRole failed: HTTP {status}, code {code}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The STS error code (`AccessDenied`, `InvalidClientTokenId`, ...).
        code: String,
    },
    /// STS could not be reached.
    #[error("STS AssumeRole failed: {0}")]
    Transport(String),
    /// The answer was not an AssumeRole answer.
    #[error("STS AssumeRole failed: unreadable answer ({0})")]
    Malformed(&'static str),
    /// The request could not be signed.
    #[error("STS AssumeRole failed: cannot sign ({0})")]
    Signing(String),
}

/// Calls `AssumeRole` for `aws` through `http`, within `timeout`.
pub async fn assume_role(
    http: &reqwest::Client,
    aws: &Aws,
    timeout: Duration,
) -> Result<RoleCredentials, StsError> {
    let akid = aws.source.access_key_id.read(&aws.base_dir)?;
    let secret = aws.source.secret_access_key.read(&aws.base_dir)?;
    let body = form(aws);
    let host = aws.sts.host_str().unwrap_or_default();
    let host_header = match aws.sts.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let headers = [
        ("host", host_header.as_str()),
        ("content-type", content_type),
    ];
    let identity = aws_credential_types::Credentials::new(
        akid.expose(),
        secret.expose(),
        None,
        None,
        "warden",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&aws.region)
        .name("sts")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| StsError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        aws.sts.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| StsError::Signing(e.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| StsError::Signing(e.to_string()))?
        .into_parts();
    let mut req = http
        .post(aws.sts.clone())
        .timeout(timeout)
        .header("content-type", content_type)
        .body(body);
    for (name, value) in instructions.headers() {
        req = req.header(name, value);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| StsError::Transport(transport(&e)))?;
    let status = resp.status().as_u16();
    let text = read_bounded(resp).await?;
    if !(200..300).contains(&status) {
        return Err(StsError::Refused {
            status,
            code: error_code(&text).unwrap_or_else(|| "unknown".into()),
        });
    }
    parse_credentials(&text)
}

/// What went wrong on the way, without the URL's query or anything from the answer.
fn transport(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    match cause.is_empty() {
        true => what.into(),
        false => format!("{what}: {cause}"),
    }
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<String, StsError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| StsError::Transport(transport(&e)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(StsError::Malformed("too large"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| StsError::Malformed("not UTF-8"))
}

/// The AssumeRole form body.
fn form(aws: &Aws) -> String {
    let k = &aws.key;
    let duration = k.duration_secs.to_string();
    let mut pairs = vec![
        ("Action", "AssumeRole"),
        ("Version", "2011-06-15"),
        ("RoleArn", k.role_arn.as_str()),
        ("RoleSessionName", k.session_name.as_str()),
        ("DurationSeconds", duration.as_str()),
    ];
    if let Some(id) = &k.external_id {
        pairs.push(("ExternalId", id));
    }
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The `Code` of an STS `ErrorResponse`, if it is a plausible one (letters, digits, dots).
pub fn error_code(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let code = doc
        .descendants()
        .find(|n| n.has_tag_name("Code"))?
        .text()?
        .trim();
    let ok = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    ok.then(|| code.to_string())
}

/// The credentials in an `AssumeRoleResponse`.
pub fn parse_credentials(xml: &str) -> Result<RoleCredentials, StsError> {
    let doc = roxmltree::Document::parse(xml).map_err(|_| StsError::Malformed("not XML"))?;
    let creds = doc
        .descendants()
        .find(|n| n.has_tag_name("Credentials"))
        .ok_or(StsError::Malformed("no Credentials"))?;
    let field = |name: &'static str| {
        creds
            .children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(StsError::Malformed(name))
    };
    let expiration = humantime::parse_rfc3339_weak(field("Expiration")?.trim_end_matches('Z'))
        .map_err(|_| StsError::Malformed("Expiration"))?;
    let access_key_id = field("AccessKeyId")?;
    if !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StsError::Malformed("AccessKeyId"));
    }
    Ok(RoleCredentials {
        access_key_id: access_key_id.to_string(),
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: Secret::new(field("SessionToken")?),
        expiration,
        fetched: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>CANARY-SECRET</SecretAccessKey>
      <SessionToken>CANARY-TOKEN</SessionToken>
      <Expiration>2030-01-02T03:04:05.123Z</Expiration>
    </Credentials>
  </AssumeRoleResult>
</AssumeRoleResponse>"#;

    #[test]
    fn an_answer_gives_credentials_that_never_print_their_secrets() {
        let c = parse_credentials(ANSWER).unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.session_token.expose(), "CANARY-TOKEN");
        assert_eq!(
            humantime::format_rfc3339_seconds(c.expiration).to_string(),
            "2030-01-02T03:04:05Z"
        );
        assert!(!format!("{c:?}").contains("CANARY"));
        assert!(matches!(
            parse_credentials("<AssumeRoleResponse/>"),
            Err(StsError::Malformed("no Credentials"))
        ));
    }

    #[test]
    fn an_error_answer_gives_its_code_only_when_it_looks_like_one() {
        let xml = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>";
        assert_eq!(error_code(xml).as_deref(), Some("AccessDenied"));
        let odd = "<ErrorResponse><Error><Code>leak me please</Code></Error></ErrorResponse>";
        assert_eq!(error_code(odd), None);
        assert_eq!(error_code("not xml"), None);
    }

    #[test]
    fn refresh_comes_at_three_quarters_or_five_minutes_before_expiry() {
        let at = |life: u64| {
            let fetched = SystemTime::UNIX_EPOCH;
            let c = RoleCredentials {
                access_key_id: "A".into(),
                secret_access_key: Secret::new("s"),
                session_token: Secret::new("t"),
                expiration: fetched + Duration::from_secs(life),
                fetched,
            };
            c.refresh_at().duration_since(fetched).unwrap().as_secs()
        };
        assert_eq!(at(3600), 2700);
        assert_eq!(at(900), 600);
        assert_eq!(at(60), 0);
    }
}
