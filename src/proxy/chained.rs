//! Connections through the parent proxy (`upstream_proxy`). Called by `upstream_peer` (as the
//! peer's `custom_l4`: Pingora then runs TLS to the origin, SNI, verification and ALPN inside
//! the tunnel) and by blind tunnels. The parent's address was resolved and checked before;
//! this dials exactly it and asks it for the origin with `CONNECT`.

use super::upgrade;
use crate::parent::{handshake, ParentError};
use crate::target::Authority;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_error::{Error, ErrorType, Result};
use std::hash::{Hash, Hasher};
use std::time::Duration;
use tokio::net::TcpStream;

/// Opens a TCP connection to the parent at `parent` within `timeout`, and a tunnel through it
/// to `dest`. Returns the stream and the bytes the origin already sent.
pub(super) async fn open(
    parent: std::net::SocketAddr,
    dest: &Authority,
    auth: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<(TcpStream, Bytes), ParentError> {
    let mut tcp = dial(parent, timeout).await?;
    let rest = handshake(&mut tcp, dest, auth, timeout)
        .await
        .inspect_err(|e| log_refusal(parent, e))?;
    Ok((tcp, rest))
}

/// A TCP connection to the parent within `timeout`.
async fn dial(parent: std::net::SocketAddr, timeout: Duration) -> Result<TcpStream, ParentError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(parent)).await {
        Err(_) => return Err(ParentError::Unreachable("connect timed out".into())),
        Ok(Err(e)) => return Err(ParentError::Unreachable(e.kind().to_string())),
        Ok(Ok(tcp)) => tcp,
    };
    // Small TLS records must not wait for delayed ACKs.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The operational line for a parent that would not open a tunnel (never its credentials).
fn log_refusal(parent: std::net::SocketAddr, e: &ParentError) {
    match e {
        ParentError::Refused { .. } => log::warn!("upstream_proxy {parent}: {e}"),
        _ => log::info!("upstream_proxy {parent}: {e}"),
    }
}

/// Pingora's connector for a peer behind the parent: the peer's address is the parent's.
#[derive(Debug)]
pub(super) struct ParentConnect {
    /// The origin asked for with `CONNECT`; `None` for a plain request the parent itself
    /// takes in absolute form.
    pub tunnel_to: Option<Authority>,
    /// `Proxy-Authorization` for the parent (sensitive).
    pub auth: Option<HeaderValue>,
    /// Bound on the connect and on the parent's answer, each.
    pub timeout: Duration,
    /// An upgrade connection: reads after writes yield once (see `upgrade`).
    pub upgrade: bool,
}

#[async_trait]
impl L4Connect for ParentConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "parent proxy is not TCP");
        };
        let opened = match &self.tunnel_to {
            Some(dest) => open(*inet, dest, self.auth.as_ref(), self.timeout).await,
            None => dial(*inet, self.timeout)
                .await
                .map(|tcp| (tcp, Bytes::new())),
        };
        let (tcp, rest) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let etype = match e {
                    ParentError::Unreachable(_) => ErrorType::ConnectRefused,
                    ParentError::Timeout(_) => ErrorType::ConnectTimedout,
                    _ => ErrorType::ConnectProxyFailure,
                };
                return Err(Error::because(etype, "through upstream_proxy", e));
            }
        };
        let mut stream = if self.upgrade {
            upgrade::yielding(tcp)
        } else {
            Stream::from(tcp)
        };
        if !rest.is_empty() {
            stream.rewind(&rest);
        }
        Ok(stream)
    }
}

/// The pool group of connections through the parent to `dest`: apart from direct ones, from
/// other origins' (the peer address is the parent's for all of them) and from upgrades.
pub(super) fn pool_group(dest: &Authority, tunnelled: bool, upgrade: bool) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        "warden upstream_proxy",
        dest.to_string(),
        tunnelled,
        upgrade,
    )
        .hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[test]
    fn pool_groups_differ_per_origin_and_way_and_never_match_direct_ones() {
        let groups = [
            pool_group(&dest("a.test:443"), true, false),
            pool_group(&dest("a.test:8443"), true, false),
            pool_group(&dest("b.test:443"), true, false),
            pool_group(&dest("a.test:443"), true, true),
            pool_group(&dest("a.test:443"), false, false),
        ];
        let distinct: std::collections::HashSet<_> = groups.iter().collect();
        assert_eq!(distinct.len(), groups.len());
        assert!(!groups.contains(&0), "0 is the direct peers' group");
        assert!(!groups.contains(&upgrade::UPGRADE_POOL_GROUP));
    }
}
