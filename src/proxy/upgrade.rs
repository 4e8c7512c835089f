//! Upstream connections for upgrade (WebSocket) requests. Called by `upstream_peer` for
//! requests that ask for an upgrade, so they keep riding Pingora's native upgrade handling
//! without its teardown race.
//!
//! Pingora 0.9.1 can tear an HTTP/1 upgrade down right after the `101`
//! (<https://github.com/cloudflare/pingora/issues/946>): an upgrade request has an empty body,
//! whose end marker is queued for the upstream half before it starts; if the upstream half
//! reads the `101` *before* it takes that marker, it then reads the marker as the end of the
//! upgraded tunnel and closes it. The marker is always queued before the upstream half first
//! runs, so the race is lost only when the `101` is already readable at that moment — a fast
//! (local) origin on a busy machine. These connections make every read that follows a write
//! yield once to the scheduler, so the already-queued marker is always taken first. They live
//! in their own connection pool (`group_key`), so an upgrade never reuses a plain connection.

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, OrErr, Result};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Pool group for upgrade connections, apart from plain request connections.
pub(super) const UPGRADE_POOL_GROUP: u64 = 0x7761_7264_656e_7570;

/// Dials upstreams for upgrade requests (see the module docs).
#[derive(Debug)]
pub(super) struct UpgradeConnect {
    /// Bound on the TCP connect.
    pub timeout: Duration,
}

#[async_trait]
impl L4Connect for UpgradeConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "upgrade upstream is not TCP");
        };
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(inet)).await {
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("timeout {:?} connecting to {inet}", self.timeout),
                )
            }
            Ok(res) => res.or_err(ErrorType::ConnectRefused, "connecting upgrade upstream")?,
        };
        tcp.set_nodelay(true)
            .or_err(ErrorType::ConnectError, "setting TCP_NODELAY")?;
        Ok(yielding(tcp))
    }
}

/// `tcp` as a stream whose reads after a write yield once (see the module docs).
pub(super) fn yielding(tcp: TcpStream) -> Stream {
    let socket = YieldAfterWrite {
        inner: tcp,
        wrote: false,
    };
    Stream::from(VirtualSocketStream::new(Box::new(socket)))
}

/// A TCP stream whose first read after any write returns `Pending` once (having woken itself),
/// letting other ready work on the task run first.
#[derive(Debug)]
struct YieldAfterWrite {
    inner: TcpStream,
    wrote: bool,
}

impl AsyncRead for YieldAfterWrite {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.wrote {
            self.wrote = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for YieldAfterWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl VirtualSocket for YieldAfterWrite {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.inner.set_nodelay(true),
            // Keep-alive probes are not needed on a connection bounded by the idle timeout.
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_and_writes_pass_through_unchanged() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong").await.unwrap();
            buf
        });
        let connect = UpgradeConnect {
            timeout: Duration::from_secs(5),
        };
        let mut stream = connect.connect(&SocketAddr::Inet(addr)).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(&server.await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let connect = UpgradeConnect {
            timeout: Duration::from_secs(5),
        };
        let err = connect.connect(&SocketAddr::Inet(addr)).await.unwrap_err();
        assert_eq!(err.etype(), &ErrorType::ConnectRefused);
    }
}
