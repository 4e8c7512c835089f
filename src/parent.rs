//! The parent proxy (`upstream_proxy`): which destinations go through it, the
//! `Proxy-Authorization` warden sends it, and the `CONNECT` handshake that opens a tunnel
//! through it. Called by `upstream_peer` (intercepted and plain requests) and by the front
//! door's blind tunnels; the connections themselves are made in `proxy::chained`.
//!
//! Through a parent warden resolves and dials only the parent; origin names are sent to it
//! as written and the parent resolves them. Everything warden decides per request (identity,
//! policy, rules, credentials, upstream TLS verification) is unchanged.

use crate::compile_error::CompileError;
use crate::credentials::{LiveSource, SourceCache};
use crate::policy::HostPattern;
use crate::reason::Reason;
use crate::secret::SecretSource;
use crate::target::{Authority, Host};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The port of a parent URL that names none: Squid's default.
pub const DEFAULT_PORT: u16 = 3128;

/// Largest response head accepted from the parent for a `CONNECT`.
const MAX_CONNECT_RESPONSE: usize = 16 * 1024;

/// `upstream_proxy`: a parent HTTP proxy every upstream connection goes through, except for
/// the hosts in `no_proxy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamProxyConfig {
    /// `http://host[:port]` (port 3128 when absent). No user info, path or query.
    pub url: String,
    /// `user:password` for the parent, sent Base64-encoded as `Proxy-Authorization: Basic`.
    #[serde(default)]
    pub auth: Option<SecretSource>,
    /// Destinations reached directly (host patterns; without a port they mean 80 and 443).
    #[serde(default)]
    pub no_proxy: Vec<HostPattern>,
}

/// The compiled parent: where it is, how to authenticate to it, and who bypasses it.
#[derive(Debug)]
pub struct Parent {
    /// The parent's host and port, as resolved through `network.resolve` or DNS.
    pub authority: Authority,
    auth: Option<LiveSource>,
    no_proxy: Vec<HostPattern>,
}

impl UpstreamProxyConfig {
    /// Validates the section: errors name `upstream_proxy.url`, `upstream_proxy.auth...`.
    pub fn compile(&self, base_dir: &Path) -> Result<Parent, Vec<CompileError>> {
        let mut errors = Vec::new();
        let authority = match parse_url(&self.url) {
            Ok(a) => Some(a),
            Err(m) => {
                errors.push(CompileError::new("upstream_proxy.url".into(), m));
                None
            }
        };
        if let Some(source) = &self.auth {
            if let Err((field, message)) = crate::refresh::validate(source) {
                errors.push(CompileError::new(
                    format!("upstream_proxy.auth{field}"),
                    message,
                ));
            }
        }
        match authority {
            Some(authority) if errors.is_empty() => Ok(Parent {
                authority,
                auth: self
                    .auth
                    .as_ref()
                    .map(|s| LiveSource::new(s.clone(), base_dir)),
                no_proxy: self.no_proxy.clone(),
            }),
            _ => Err(errors),
        }
    }
}

/// Parses a parent URL. The message never repeats the URL: it might hold a password.
fn parse_url(url: &str) -> Result<Authority, String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "must be http://host[:port]: TLS to the parent proxy is not supported (TLS to origins runs inside its tunnel)".into()
        } else {
            "must be http://host[:port]".into()
        });
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err("must not carry user info: put `user:password` in upstream_proxy.auth".into());
    }
    if authority.is_empty() || authority.contains(['/', '?', '#']) {
        return Err("must be http://host[:port], without a path or query".into());
    }
    crate::target::parse_authority(authority.as_bytes(), Some(DEFAULT_PORT))
        .map_err(|_| "names no valid host and port (http://host[:port])".into())
}

impl Parent {
    /// Whether connections to `dest` go through the parent (it matches no `no_proxy` entry).
    pub fn carries(&self, dest: &Authority) -> bool {
        !self.no_proxy.iter().any(|p| p.matches(dest))
    }

    /// The `Proxy-Authorization` value for the parent (marked sensitive), if `auth` is set.
    /// A source that cannot be read is [`Reason::CredentialUnavailable`]: nothing is sent.
    pub async fn authorization(&self, cache: &SourceCache) -> Result<Option<HeaderValue>, Reason> {
        let Some(source) = &self.auth else {
            return Ok(None);
        };
        let (secret, _lease) = source.read(cache).await.map_err(|e| {
            log::warn!(
                "upstream_proxy.auth ({}) could not be read: {e}",
                source.describe()
            );
            Reason::CredentialUnavailable
        })?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret.expose());
        let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
            .map_err(|_| Reason::CredentialUnavailable)?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Why a tunnel through the parent did not open.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The parent could not be reached (refused, reset, or no answer in time).
    #[error("parent proxy unreachable: {0}")]
    Unreachable(String),
    /// The parent answered the `CONNECT` with 403 or 407: it refuses warden or the destination.
    #[error("parent proxy refused CONNECT {dest} with {status}")]
    Refused {
        /// The destination asked for.
        dest: String,
        /// The parent's status.
        status: u16,
    },
    /// The parent answered with another failure (it could not reach the destination).
    #[error("parent proxy could not open CONNECT {dest}: {status}")]
    Failed {
        /// The destination asked for.
        dest: String,
        /// The parent's status.
        status: u16,
    },
    /// The parent's answer was not an HTTP response head, or too large, or cut short.
    #[error("parent proxy sent an invalid CONNECT response")]
    Invalid,
    /// The parent did not answer the `CONNECT` in time.
    #[error("parent proxy did not answer CONNECT {0} in time")]
    Timeout(String),
}

/// The reason for a Pingora error whose root cause is a parent proxy's failure, if it is one.
pub fn reason_of(e: &pingora_error::Error) -> Option<Reason> {
    e.root_cause()
        .downcast_ref::<ParentError>()
        .map(ParentError::reason)
}

impl ParentError {
    /// The reason a client sees for this failure.
    pub fn reason(&self) -> Reason {
        match self {
            ParentError::Unreachable(_) => Reason::ParentUnreachable,
            ParentError::Refused { .. } => Reason::ParentRefused,
            ParentError::Failed { status: 504, .. } | ParentError::Timeout(_) => {
                Reason::UpstreamConnectTimeout
            }
            ParentError::Failed { .. } => Reason::UpstreamConnectFailed,
            ParentError::Invalid => Reason::UpstreamError,
        }
    }
}

/// The `CONNECT` request for `dest`, with the parent's authorization when there is one.
fn connect_request(dest: &Authority, auth: Option<&HeaderValue>) -> Vec<u8> {
    let target = match &dest.host {
        Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", dest.port),
        _ => dest.to_string(),
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(v) = auth {
        req.extend_from_slice(b"Proxy-Authorization: ");
        req.extend_from_slice(v.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Asks the parent on `stream` for a tunnel to `dest` and reads its answer within `timeout`.
/// Returns the bytes that followed the parent's `2xx` head (already the destination's).
pub async fn handshake<S>(
    stream: &mut S,
    dest: &Authority,
    auth: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<Bytes, ParentError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        stream
            .write_all(&connect_request(dest, auth))
            .await
            .map_err(|e| ParentError::Unreachable(e.kind().to_string()))?;
        stream
            .flush()
            .await
            .map_err(|e| ParentError::Unreachable(e.kind().to_string()))?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if buf.len() >= MAX_CONNECT_RESPONSE {
                return Err(ParentError::Invalid);
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| ParentError::Unreachable(e.kind().to_string()))?;
            if n == 0 {
                return Err(ParentError::Invalid);
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Partial) => continue,
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.ok_or(ParentError::Invalid)?;
                    let dest = dest.to_string();
                    return match status {
                        200..=299 => Ok(buf.split_off(len).freeze()),
                        403 | 407 => Err(ParentError::Refused { dest, status }),
                        _ => Err(ParentError::Failed { dest, status }),
                    };
                }
                Err(_) => return Err(ParentError::Invalid),
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(ParentError::Timeout(dest.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[test]
    fn urls_are_http_with_a_default_port_and_nothing_else() {
        assert_eq!(
            parse_url("http://corp-proxy:3128"),
            Ok(dest("corp-proxy:3128"))
        );
        assert_eq!(parse_url("http://corp-proxy"), Ok(dest("corp-proxy:3128")));
        assert_eq!(
            parse_url("http://10.0.0.1:8080/"),
            Ok(dest("10.0.0.1:8080"))
        );
        for (bad, says) in [
            ("https://corp-proxy:3128", "TLS to the parent"),
            ("socks5://corp-proxy:1080", "must be http://"),
            ("corp-proxy:3128", "must be http://"),
            ("http://", "without a path"),
            ("http://corp-proxy:3128/path", "without a path"),
            ("http://corp-proxy:0", "no valid host"),
            ("http://corp-proxy:x", "no valid host"),
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_repeating_it() {
        let err = parse_url("http://user:hunter2canary@corp-proxy:3128").unwrap_err();
        assert!(err.contains("upstream_proxy.auth"), "{err}");
        assert!(!err.contains("hunter2canary"), "{err}");
    }

    #[test]
    fn no_proxy_hosts_go_direct_with_default_ports() {
        let cfg: UpstreamProxyConfig = serde_yaml::from_str(
            "url: http://p:3128\nno_proxy: [\"*.internal.test\", \"direct.test:8443\"]",
        )
        .unwrap();
        let parent = cfg.compile(Path::new(".")).unwrap();
        assert!(!parent.carries(&dest("a.internal.test:443")));
        assert!(!parent.carries(&dest("a.internal.test:80")));
        assert!(parent.carries(&dest("a.internal.test:8080")));
        assert!(!parent.carries(&dest("direct.test:8443")));
        assert!(parent.carries(&dest("direct.test:443")));
        assert!(parent.carries(&dest("api.example.test:443")));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_yaml::from_str::<UpstreamProxyConfig>("url: http://p\nbypass: []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bypass"), "{err}");
    }

    #[tokio::test]
    async fn auth_is_user_password_sent_as_basic_and_marked_sensitive() {
        let cfg: UpstreamProxyConfig =
            serde_yaml::from_str("url: http://p\nauth: { type: static, value: \"alice:s3cret\" }")
                .unwrap();
        let parent = cfg.compile(Path::new(".")).unwrap();
        let v = parent
            .authorization(&SourceCache::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.as_bytes(), b"Basic YWxpY2U6czNjcmV0");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("YWxp"));
    }

    #[tokio::test]
    async fn an_unreadable_auth_source_is_credential_unavailable() {
        let cfg: UpstreamProxyConfig = serde_yaml::from_str(
            "url: http://p\nauth: { type: env, var: WARDEN_TEST_PARENT_AUTH_UNSET }",
        )
        .unwrap();
        let parent = cfg.compile(Path::new(".")).unwrap();
        let got = parent.authorization(&SourceCache::default()).await;
        assert_eq!(got, Err(Reason::CredentialUnavailable));
    }

    async fn answer(response: &'static [u8]) -> (Result<Bytes, ParentError>, Vec<u8>) {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = far.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buf[..n]);
            }
            far.write_all(response).await.unwrap();
            seen
        });
        let auth = HeaderValue::from_static("Basic YTpi");
        let got = handshake(
            &mut near,
            &dest("api.example.test:443"),
            Some(&auth),
            Duration::from_secs(5),
        )
        .await;
        (got, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_2xx_opens_the_tunnel_and_keeps_what_followed() {
        let (got, sent) = answer(b"HTTP/1.1 200 Connection established\r\n\r\nEARLY").await;
        assert_eq!(got.unwrap(), Bytes::from_static(b"EARLY"));
        assert_eq!(
            sent,
            b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\nProxy-Authorization: Basic YTpi\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn parent_answers_map_to_reasons() {
        let table: [(&'static [u8], Reason); 5] = [
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                Reason::ParentRefused,
            ),
            (b"HTTP/1.1 403 Forbidden\r\n\r\n", Reason::ParentRefused),
            (
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                Reason::UpstreamConnectFailed,
            ),
            (
                b"HTTP/1.1 504 Gateway Timeout\r\n\r\n",
                Reason::UpstreamConnectTimeout,
            ),
            (b"SSH-2.0-nope\r\n\r\n", Reason::UpstreamError),
        ];
        for (response, want) in table {
            let (got, _) = answer(response).await;
            assert_eq!(got.unwrap_err().reason(), want);
        }
    }
}
