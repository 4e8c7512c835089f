//! Blind tunnels: a CONNECT that needs no inspection is resolved once, dialed within the
//! connect timeout, answered `200`, and spliced byte for byte both ways until both sides have
//! closed or the connection has been idle for `limits.idle_timeout`. Called by the front door.

use super::front_door::established;
use crate::config::Snapshot;
use crate::policy::NetworkPolicy;
use crate::reason::Reason;
use crate::target::Authority;
use crate::telemetry::CanonicalLog;
use bytes::Bytes;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const SPLICE_BUFFER: usize = 16 * 1024;

/// Dials `dest` and splices `client` to it, recording status, bytes and how it ended in
/// `line`. Fails before anything was spliced, with the reason to answer. `answered`: the
/// client already has its `200` (a tunnel that was to be intercepted but carries no TLS).
#[allow(clippy::too_many_arguments)]
pub(super) async fn blind(
    client: &mut L4Stream,
    answered: bool,
    rest: Bytes,
    dest: &Authority,
    snap: &Snapshot,
    network: &NetworkPolicy,
    own: &[SocketAddr],
    line: &mut CanonicalLog,
) -> Result<(), Reason> {
    let limits = &snap.limits;
    // Resolve once, check every answer, dial exactly the address that passed.
    let addr = network
        .resolve_checked(dest, limits.upstream_connect_timeout, own)
        .await?;
    let upstream =
        match tokio::time::timeout(limits.upstream_connect_timeout, TcpStream::connect(addr)).await
        {
            Err(_) => return Err(Reason::UpstreamConnectTimeout),
            Ok(Err(_)) => return Err(Reason::UpstreamConnectFailed),
            Ok(Ok(s)) => s,
        };
    // Small TLS records must not wait for delayed ACKs.
    let _ = upstream.set_nodelay(true);
    line.status = Some(200);
    if !answered && established(client).await.is_err() {
        line.reason = Some(Reason::ClientError.code());
        return Ok(());
    }
    client.rewind(&rest);
    let spliced = splice(client, upstream, limits.idle_timeout).await;
    line.bytes_in = spliced.from_client;
    line.bytes_out = spliced.to_client;
    line.reason = spliced.ended_by.map(Reason::code);
    Ok(())
}

/// Byte counts of a finished splice, and why it ended when it was not a clean close.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Spliced {
    pub from_client: u64,
    pub to_client: u64,
    pub ended_by: Option<Reason>,
}

/// Copies both ways, passing half-closes on, until both directions are closed or nothing has
/// moved for `idle`.
pub(super) async fn splice<C, U>(client: C, upstream: U, idle: Duration) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut cbuf = vec![0u8; SPLICE_BUFFER];
    let mut ubuf = vec![0u8; SPLICE_BUFFER];
    let (mut client_open, mut upstream_open) = (true, true);
    let mut out = Spliced::default();
    while client_open || upstream_open {
        tokio::select! {
            r = cr.read(&mut cbuf), if client_open => match r {
                Ok(0) => {
                    client_open = false;
                    let _ = uw.shutdown().await;
                }
                Ok(n) => {
                    if uw.write_all(&cbuf[..n]).await.is_err() || uw.flush().await.is_err() {
                        out.ended_by = Some(Reason::UpstreamError);
                        break;
                    }
                    out.from_client += n as u64;
                }
                Err(_) => {
                    out.ended_by = Some(Reason::ClientError);
                    break;
                }
            },
            r = ur.read(&mut ubuf), if upstream_open => match r {
                Ok(0) => {
                    upstream_open = false;
                    let _ = cw.shutdown().await;
                }
                Ok(n) => {
                    if cw.write_all(&ubuf[..n]).await.is_err() || cw.flush().await.is_err() {
                        out.ended_by = Some(Reason::ClientError);
                        break;
                    }
                    out.to_client += n as u64;
                }
                Err(_) => {
                    out.ended_by = Some(Reason::UpstreamError);
                    break;
                }
            },
            _ = tokio::time::sleep(idle) => {
                out.ended_by = Some(Reason::IdleTimeout);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splices_both_ways_and_counts_bytes() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let task = tokio::spawn(splice(client, upstream, Duration::from_secs(5)));
        client_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        upstream_peer.write_all(b"world!").await.unwrap();
        let mut buf = [0u8; 6];
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world!");
        drop(client_peer);
        drop(upstream_peer);
        let out = task.await.unwrap();
        assert_eq!((out.from_client, out.to_client), (5, 6));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_closed() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let out = splice(client, upstream, Duration::from_secs(120)).await;
        assert_eq!(out.ended_by, Some(Reason::IdleTimeout));
    }
}
