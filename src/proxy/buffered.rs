//! Client connections with user-space read and write buffers, as Pingora's own listeners give
//! them (`L4BufferSettings`, not settable on streams accepted outside Pingora's listener
//! stack). Reads: one syscall fills the buffer, so TLS record headers and bodies are not read
//! separately. Writes: Pingora flushes where it must (after a response head without
//! `Content-Length`, after each chunk, at the end of a body), so a small response's head and
//! body leave in one segment instead of two, and a large body leaves in segments of up to
//! [`WRITE_LIMIT`] rather than one per TLS record.

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
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};

/// Read buffer: a request's TLS record header and body in one read. Small, because every idle
/// tunnel holds it (`cargo bench --bench tunnels`: 62.7 KiB per idle intercepted tunnel with
/// 2 + 4 KiB, 84 KiB with 16 + 8 KiB, for about 3% of keep-alive throughput).
const READ_BUFFER: usize = 2 * 1024;
/// Write buffer kept between flushes: a typical response head and small body together.
const WRITE_BUFFER: usize = 4 * 1024;
/// Most bytes held before they are written out: four full TLS records per send. The buffer
/// grows to this only while a large body is being written and is given back at the next
/// flush, so an idle tunnel holds at most [`WRITE_BUFFER`]. (A 64 KiB buffer held for good
/// made an idle tunnel cost 121.5 KiB instead of 62.7; one send per 16 KiB TLS record cost
/// 12-19% of the request rate on 1 MiB bodies.)
const WRITE_LIMIT: usize = 64 * 1024;

/// A client connection with read and write buffers.
#[derive(Debug)]
pub struct Buffered {
    inner: BufReader<L4Stream>,
    /// Bytes accepted from the caller and not yet written.
    pending: Vec<u8>,
    /// How much of `pending` has been written.
    written: usize,
}

impl Buffered {
    /// Buffers `stream` (anything already rewound into it is read first).
    pub fn new(stream: L4Stream) -> Self {
        Buffered {
            inner: BufReader::with_capacity(READ_BUFFER, stream),
            pending: Vec::new(),
            written: 0,
        }
    }

    fn stream(&self) -> &L4Stream {
        self.inner.get_ref()
    }

    /// Writes out everything pending (the allocation is kept).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() + buf.len() > WRITE_LIMIT {
            ready!(this.poll_drain(cx))?;
            if buf.len() >= WRITE_LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        if this.pending.capacity() == 0 {
            this.pending.reserve(WRITE_BUFFER.max(buf.len()));
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.pending.capacity() > WRITE_BUFFER {
            this.pending = Vec::new();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        // What is still buffered goes out before the close.
        let _ = tokio::io::AsyncWriteExt::flush(self).await;
        Shutdown::shutdown(self.inner.get_mut()).await;
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.stream().id()
    }
}

impl Ssl for Buffered {}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.stream().get_timing_digest()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.stream().get_proxy_digest()
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Buffered {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Buffered, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Buffered::new(L4Stream::from(server)), client)
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush() {
        let (mut b, mut peer) = pair().await;
        b.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        b.write_all(b"body").await.unwrap();
        assert_eq!(b.pending.len(), 23, "nothing written before the flush");
        b.flush().await.unwrap();
        assert!(b.pending.is_empty());
        let mut got = [0u8; 23];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\nbody");
    }

    #[tokio::test]
    async fn a_large_body_goes_out_in_bounded_segments_and_the_buffer_shrinks_back() {
        let (mut b, mut peer) = pair().await;
        let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1024 * 1024];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        for record in body.chunks(16 * 1024 + 22) {
            b.write_all(record).await.unwrap();
            assert!(b.pending.len() <= WRITE_LIMIT);
        }
        b.flush().await.unwrap();
        assert!(
            b.pending.capacity() <= WRITE_BUFFER,
            "idle tunnels hold little"
        );
        assert_eq!(reader.await.unwrap(), body);
    }

    #[tokio::test]
    async fn reads_pass_through_after_rewound_bytes() {
        let (b, mut peer) = pair().await;
        let mut stream = b.inner.into_inner();
        stream.rewind(b"GET ");
        let mut b = Buffered::new(stream);
        peer.write_all(b"/ HTTP/1.1\r\n").await.unwrap();
        let mut got = [0u8; 16];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
    }
}
