//! The `oauth2` source: exchanges a refresh token for an access token at the token endpoint
//! (RFC 6749 section 6; client authentication in the form body, section 2.3.1), bounded in
//! time and size, and writes a rotated refresh token back to its file atomically. Called by a
//! refresher in `refresh`.

use crate::secret::Secret;
use openssl::x509::X509;
use serde::Deserialize;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// The whole token request, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest token response read.
const MAX_RESPONSE: usize = 64 * 1024;
/// The lifetime of a token whose response has no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Checks a `token_url` when the config is compiled: an absolute `https://` URL (or `http://`
/// to a loopback address: the client secret crosses it), without user info.
pub fn check_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|_| "is not an absolute URL".to_string())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user info: use client_id and client_secret".into());
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https (http only to a loopback address)".into()),
        _ => Err("must be an https URL".into()),
    }
}

/// One token request.
pub struct Request<'a> {
    /// The endpoint.
    pub token_url: &'a str,
    /// `client_id`.
    pub client_id: &'a str,
    /// `client_secret`, for a confidential client.
    pub client_secret: Option<&'a Secret>,
    /// The refresh token to exchange.
    pub refresh_token: &'a Secret,
    /// `scope`, if configured.
    pub scope: Option<&'a str>,
}

/// What the endpoint answered: the access token and its lifetime, and a rotated refresh
/// token when it sent one.
pub struct Answer {
    /// The access token.
    pub access_token: Secret,
    /// Its lifetime: `expires_in`, or [`DEFAULT_LIFETIME`].
    pub lifetime: Duration,
    /// The new refresh token, if the endpoint rotated it.
    pub refresh_token: Option<Secret>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<Secret>,
    expires_in: Option<u64>,
    refresh_token: Option<Secret>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
}

/// The HTTP client for token requests, trusting `roots` (system roots plus
/// `tls.upstream_ca_file`) or the system roots alone, following no redirect, using no proxy.
pub fn client(roots: Option<&[X509]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    for root in roots.unwrap_or_default() {
        let der = root.to_der().map_err(|e| format!("trust list: {e}"))?;
        let cert = reqwest::Certificate::from_der(&der).map_err(|e| format!("trust list: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// POSTs `grant_type=refresh_token` to the endpoint with `client` (see [`client`]). Fails on
/// a transport error, a non-2xx answer (naming its OAuth `error` code), or a response without
/// `access_token`; the cause never holds a token.
pub async fn exchange(req: &Request<'_>, client: &reqwest::Client) -> Result<Answer, String> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", req.refresh_token.expose()),
        ("client_id", req.client_id),
    ];
    if let Some(secret) = req.client_secret {
        form.push(("client_secret", secret.expose()));
    }
    if let Some(scope) = req.scope {
        form.push(("scope", scope));
    }
    let mut response = client
        .post(req.token_url)
        .header(http::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("token request failed: {}", e.without_url()))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the token response failed: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(format!("the token response is over {MAX_RESPONSE} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(format!(
            "the token endpoint answered {}{}",
            status.as_u16(),
            error_code(&body)
        ));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|_| "the token response is not the JSON of a token".to_string())?;
    let secret = parsed
        .access_token
        .filter(|t| !t.expose().is_empty())
        .ok_or("the token response has no access_token")?;
    let lifetime = parsed
        .expires_in
        .filter(|&s| s > 0)
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok(Answer {
        access_token: secret,
        lifetime,
        refresh_token: parsed.refresh_token.filter(|t| !t.expose().is_empty()),
    })
}

/// ` (error invalid_grant)` from an OAuth error body: the code only, when it is a plain
/// token (its description is free text, left out).
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .and_then(|e| e.error)
        .filter(|c| {
            c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
        .map(|c| format!(" (error {c})"))
        .unwrap_or_default()
}

/// Replaces the file at `path` with `value` and a newline, atomically (a temporary file in
/// the same folder, renamed over it), keeping the file's permissions.
pub fn write_back(path: &Path, value: &Secret) -> std::io::Result<()> {
    let permissions = std::fs::metadata(path)?.permissions();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.as_file().set_permissions(permissions)?;
    tmp.write_all(value.expose().as_bytes())?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_https_or_loopback_http_token_urls() {
        assert!(check_url("https://id.example.com/oauth/token").is_ok());
        assert!(check_url("http://127.0.0.1:8080/token").is_ok());
        assert!(check_url("http://[::1]:8080/token").is_ok());
        assert!(check_url("http://localhost/token").is_ok());
        assert!(check_url("http://id.example.com/token").is_err());
        assert!(check_url("ftp://id.example.com/token").is_err());
        assert!(check_url("https://a:b@id.example.com/token").is_err());
        assert!(check_url("/token").is_err());
    }

    #[test]
    fn only_a_plain_error_code_is_kept_from_an_error_body() {
        assert_eq!(
            error_code(br#"{"error":"invalid_grant","error_description":"token CANARY"}"#),
            " (error invalid_grant)"
        );
        assert_eq!(error_code(br#"{"error":"has spaces CANARY"}"#), "");
        assert_eq!(error_code(b"<html>"), "");
    }

    #[test]
    fn a_written_back_token_replaces_the_file_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_back(&path, &Secret::new("new-token")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-token\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
