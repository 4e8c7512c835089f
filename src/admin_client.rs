//! `warden client add|get|list|remove`: a thin client of the clients API, for shell users. It
//! finds the admin listener, its token and its certificate in the config file, sends one
//! request through Pingora's HTTP connector and prints the JSON answer.

use crate::config::Config;
use anyhow::{bail, Context};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Where and how to reach the clients API.
#[derive(Debug)]
pub struct Target {
    addr: SocketAddr,
    token: crate::secret::Secret,
    /// `admin.tls`'s certificate, trusted as the listener's root.
    cert: Option<std::path::PathBuf>,
}

impl Target {
    /// The API named by the config file: `admin.listen` (a wildcard address means this
    /// host's loopback), `admin.token`, `admin.tls`.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Target> {
        let admin = &cfg.file.admin;
        let file = cfg
            .path
            .as_ref()
            .map_or_else(|| "the config".to_string(), |p| p.display().to_string());
        let Some(mut addr) = admin.listen else {
            bail!("{file}: admin.listen is not set; the clients API is served there");
        };
        let Some(source) = &admin.token else {
            bail!("{file}: admin.token is not set; the clients API is off");
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let token = source.read(&cfg.base_dir).with_context(|| "admin.token")?;
        let cert = admin.tls.as_ref().map(|t| cfg.base_dir.join(&t.cert));
        Ok(Target { addr, token, cert })
    }

    /// Sends `method path` (with a JSON `body`) and returns the status and the answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, String)> {
        let tls = self.cert.is_some();
        let mut peer = HttpPeer::new(self.addr, tls, "localhost".to_string());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        if let Some(cert) = &self.cert {
            let pem = std::fs::read(cert).with_context(|| format!("{}", cert.display()))?;
            let roots = openssl::x509::X509::stack_from_pem(&pem)
                .with_context(|| format!("{}: not PEM", cert.display()))?;
            peer.options.ca = Some(Arc::new(roots.into_boxed_slice()));
            // The certificate is trusted as it is: the CLI talks to the listener it names.
            peer.options.verify_hostname = false;
        }
        let connector = Connector::new(None);
        let (mut session, _) = connector
            .get_http_session(&peer)
            .await
            .with_context(|| format!("cannot reach the admin listener at {}", self.addr))?;
        let mut req = RequestHeader::build(method, path.as_bytes(), None)?;
        req.insert_header("host", self.addr.to_string())?;
        req.insert_header("authorization", format!("Bearer {}", self.token.expose()))?;
        let body = body.unwrap_or_default();
        req.insert_header("content-type", "application/json")?;
        req.insert_header("content-length", body.len().to_string())?;
        session.write_request_header(Box::new(req)).await?;
        session
            .write_request_body(bytes::Bytes::from(body), true)
            .await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        let mut answer = Vec::new();
        while let Some(chunk) = session.read_response_body().await? {
            answer.extend_from_slice(&chunk);
        }
        Ok((status, String::from_utf8_lossy(&answer).into_owned()))
    }
}
