//! Client connections with user-space read and write buffers, as Pingora's own listeners give
//! them (`L4BufferSettings`, not settable on streams accepted outside Pingora's listener
//! stack). Reads: one syscall fills the buffer, so TLS record headers and bodies are not read
//! separately. Writes: Pingora flushes where it must (after a response head without
//! `Content-Length`, after each chunk, at the end of a body), so a small response's head and
//! body leave in one segment instead of two.

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufStream, ReadBuf};

/// Read buffer: a request's TLS record header and body in one read. Small, because every idle
/// tunnel holds it (`cargo bench --bench tunnels`: 62.7 KiB per idle intercepted tunnel with
/// 2 + 4 KiB, 84 KiB with 16 + 8 KiB, for about 3% of keep-alive throughput).
const READ_BUFFER: usize = 2 * 1024;
/// Write buffer: a typical response head and small body together.
const WRITE_BUFFER: usize = 4 * 1024;

/// A client connection with read and write buffers.
#[derive(Debug)]
pub struct Buffered(BufStream<L4Stream>);

impl Buffered {
    /// Buffers `stream` (anything already rewound into it is read first).
    pub fn new(stream: L4Stream) -> Self {
        Buffered(BufStream::with_capacity(READ_BUFFER, WRITE_BUFFER, stream))
    }
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        // What is still buffered goes out before the close.
        let _ = self.0.flush().await;
        Shutdown::shutdown(self.0.get_mut()).await;
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.0.get_ref().id()
    }
}

impl Ssl for Buffered {}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.0.get_ref().get_timing_digest()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.0.get_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.0.get_ref().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.get_mut().set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Buffered {}
