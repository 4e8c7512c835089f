//! Blind tunnels: a CONNECT that needs no inspection is resolved once, dialed within the
//! connect timeout, answered `200`, and spliced byte for byte both ways until both sides have
//! closed or the connection has been idle for `limits.idle_timeout`. Called by the front door.

use crate::config::Snapshot;
use crate::policy::{DnsCache, NetworkPolicy};
use crate::reason::Reason;
use crate::runtime::Runtime;
use crate::target::Authority;
use crate::telemetry::CanonicalLog;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

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
    (runtime, own): (&Runtime, &[SocketAddr]),
    line: &mut CanonicalLog,
) -> Result<(), Reason> {
    let limits = &snap.limits;
    let timeout = limits.upstream_connect_timeout;
    let (upstream, early) = match snap.upstream_proxy.as_ref().filter(|p| p.carries(dest)) {
        Some(parent) => {
            // The parent resolves the destination: warden checks what it can see of it, and
            // dials the parent's checked address.
            network.check_through_parent(dest, own)?;
            let addr = network
                .resolve_parent(&runtime.dns, &parent.authority, timeout, own)
                .await?;
            let auth = parent.authorization(&runtime.sources).await?;
            super::chained::open(addr, dest, auth.as_ref(), timeout)
                .await
                .map_err(|e| e.reason())?
        }
        None => (
            direct(network, &runtime.dns, dest, timeout, own).await?,
            Bytes::new(),
        ),
    };
    line.status = Some(200);
    if !answered && established(client).await.is_err() {
        line.reason = Some(Reason::ClientError.code());
        return Ok(());
    }
    if !early.is_empty() && client.write_all(&early).await.is_err() {
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

/// Resolves `dest` once, checks every answer, and dials exactly the address that passed.
async fn direct(
    network: &NetworkPolicy,
    dns: &DnsCache,
    dest: &Authority,
    timeout: Duration,
    own: &[SocketAddr],
) -> Result<TcpStream, Reason> {
    let addr = network.resolve_checked(dns, dest, timeout, own).await?;
    let upstream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(Reason::UpstreamConnectTimeout),
        Ok(Err(_)) => return Err(Reason::UpstreamConnectFailed),
        Ok(Ok(s)) => s,
    };
    // Small TLS records must not wait for delayed ACKs.
    let _ = upstream.set_nodelay(true);
    Ok(upstream)
}

/// Most bytes moved per read. A direction holds a buffer only while bytes flow: it takes one
/// to read and gives it back as soon as a read would wait, so an idle tunnel holds none (two
/// held for good made each idle blind tunnel cost 37.6 KiB).
const SPLICE_BUFFER: usize = 16 * 1024;

/// Tells the client its CONNECT was accepted.
pub(super) async fn established(stream: &mut L4Stream) -> std::io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    stream.flush().await
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
    Splice::new(client, upstream, idle).await
}

/// Which end of a direction failed.
enum Failed {
    Read,
    Write,
}

/// One direction of a splice: bytes read from one side and written to the other.
#[derive(Default)]
struct Direction {
    /// Bytes read and not yet all written; `None` while the direction waits for its reader.
    buf: Option<BytesMut>,
    /// How much of `buf` has been written.
    written: usize,
    /// Written bytes not yet flushed.
    unflushed: bool,
    /// The reader has ended; the writer is shut down next.
    eof: bool,
    done: bool,
    /// Bytes written.
    bytes: u64,
}

impl Direction {
    /// Moves what it can from `from` to `to`; `moved` is set when anything was read or
    /// written. Ready when the direction has closed (the reader ended, the writer was shut
    /// down) or failed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut R>,
        mut to: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<Result<(), Failed>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        while !self.done {
            if let Some(buf) = &self.buf {
                if self.written < buf.len() {
                    match ready!(to.as_mut().poll_write(cx, &buf[self.written..])) {
                        Ok(0) | Err(_) => return Poll::Ready(Err(Failed::Write)),
                        Ok(n) => {
                            self.written += n;
                            self.bytes += n as u64;
                            self.unflushed = true;
                            *moved = true;
                        }
                    }
                    continue;
                }
            }
            if self.unflushed {
                if ready!(to.as_mut().poll_flush(cx)).is_err() {
                    return Poll::Ready(Err(Failed::Write));
                }
                self.unflushed = false;
            }
            if self.eof {
                // The peer may already be gone; the other direction still decides the end.
                let _ = ready!(to.as_mut().poll_shutdown(cx));
                self.done = true;
                break;
            }
            let buf = self
                .buf
                .get_or_insert_with(|| BytesMut::with_capacity(SPLICE_BUFFER));
            buf.clear();
            self.written = 0;
            match poll_read_buf(from.as_mut(), cx, buf) {
                Poll::Pending => {
                    // Waiting costs no buffer; the next poll takes one again.
                    self.buf = None;
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Failed::Read)),
                Poll::Ready(Ok(0)) => {
                    self.buf = None;
                    self.eof = true;
                    *moved = true;
                }
                Poll::Ready(Ok(_)) => *moved = true,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Capacity of the buffer this direction holds (0 while it waits for bytes).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.as_ref().map_or(0, BytesMut::capacity)
    }
}

/// Both directions of a tunnel and its idle timer, polled in one task so that neither
/// direction waits on the other's writes.
struct Splice<C, U> {
    client: C,
    upstream: U,
    to_upstream: Direction,
    to_client: Direction,
    idle: Duration,
    last_moved: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<C, U> Splice<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn new(client: C, upstream: U, idle: Duration) -> Self {
        let now = Instant::now();
        Splice {
            client,
            upstream,
            to_upstream: Direction::default(),
            to_client: Direction::default(),
            idle,
            last_moved: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    fn counts(&self, ended_by: Option<Reason>) -> Spliced {
        Spliced {
            from_client: self.to_upstream.bytes,
            to_client: self.to_client.bytes,
            ended_by,
        }
    }
}

impl<C, U> Future for Splice<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Spliced;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Spliced> {
        let this = self.get_mut();
        let mut moved = false;
        let up = this.to_upstream.poll_copy(
            cx,
            Pin::new(&mut this.client),
            Pin::new(&mut this.upstream),
            &mut moved,
        );
        if let Poll::Ready(Err(failed)) = up {
            let reason = match failed {
                Failed::Read => Reason::ClientError,
                Failed::Write => Reason::UpstreamError,
            };
            return Poll::Ready(this.counts(Some(reason)));
        }
        let down = this.to_client.poll_copy(
            cx,
            Pin::new(&mut this.upstream),
            Pin::new(&mut this.client),
            &mut moved,
        );
        if let Poll::Ready(Err(failed)) = down {
            let reason = match failed {
                Failed::Read => Reason::UpstreamError,
                Failed::Write => Reason::ClientError,
            };
            return Poll::Ready(this.counts(Some(reason)));
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(this.counts(None));
        }
        if moved {
            // Reset lazily, when the timer fires: most reads then cost no timer update.
            this.last_moved = Instant::now();
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let deadline = this.last_moved + this.idle;
            if deadline <= Instant::now() {
                return Poll::Ready(this.counts(Some(Reason::IdleTimeout)));
            }
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(20);

    /// Two ends of a real loopback connection.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// Polls `splice` once, as the runtime would on a spurious wake-up.
    async fn poll_once<C, U>(splice: &mut Splice<C, U>) -> Poll<Spliced>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *splice).poll(cx))).await
    }

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

    #[tokio::test(start_paused = true)]
    async fn bytes_keep_a_tunnel_open_and_the_idle_timeout_counts_from_the_last_of_them() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(splice(client, upstream, Duration::from_secs(120)));
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(100)).await;
            client_peer.write_all(b"x").await.unwrap();
            let mut got = [0u8; 1];
            upstream_peer.read_exact(&mut got).await.unwrap();
        }
        let out = task.await.unwrap();
        assert_eq!(out.ended_by, Some(Reason::IdleTimeout));
        assert_eq!(out.from_client, 2);
        let open = started.elapsed();
        assert!(
            open >= Duration::from_secs(320) && open < Duration::from_secs(321),
            "closed after {open:?}, not 120 s after the last byte"
        );
    }

    #[tokio::test]
    async fn an_idle_tunnel_holds_no_buffers_once_bytes_have_moved_both_ways() {
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, mut upstream_peer) = tcp_pair().await;
        let mut s = Splice::new(L4Stream::from(client), upstream, Duration::from_secs(60));
        let mut got = [0u8; 5];
        client_peer.write_all(b"hello").await.unwrap();
        tokio::select! {
            _ = &mut s => panic!("the tunnel ended"),
            r = upstream_peer.read_exact(&mut got) => r.map(|_| ()).unwrap(),
        }
        upstream_peer.write_all(b"world").await.unwrap();
        tokio::select! {
            _ = &mut s => panic!("the tunnel ended"),
            r = client_peer.read_exact(&mut got) => r.map(|_| ()).unwrap(),
        }
        assert_eq!(&got, b"world");
        assert!(poll_once(&mut s).await.is_pending());
        assert_eq!(
            (s.to_upstream.held(), s.to_client.held()),
            (0, 0),
            "an idle direction holds no buffer"
        );
    }

    #[tokio::test]
    async fn rewound_bytes_go_upstream_before_what_the_client_sends_next() {
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, mut upstream_peer) = tcp_pair().await;
        let mut client = L4Stream::from(client);
        client.rewind(b"early ");
        let task = tokio::spawn(splice(client, upstream, Duration::from_secs(60)));
        let mut got = [0u8; 6];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(
            &got, b"early ",
            "rewound bytes arrive before the client sends more"
        );
        client_peer.write_all(b"late").await.unwrap();
        let mut got = [0u8; 4];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"late");
        drop(client_peer);
        drop(upstream_peer);
        let out = task.await.unwrap();
        assert_eq!(out.from_client, 10);
    }

    #[tokio::test]
    async fn a_half_close_is_passed_on_and_the_other_way_keeps_flowing() {
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, mut upstream_peer) = tcp_pair().await;
        let task = tokio::spawn(splice(L4Stream::from(client), upstream, WAIT));
        client_peer.write_all(b"request").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, upstream_peer.read_to_end(&mut got))
            .await
            .expect("the half-close reached upstream")
            .unwrap();
        assert_eq!(got, b"request");
        upstream_peer.write_all(b"late reply").await.unwrap();
        drop(upstream_peer);
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, client_peer.read_to_end(&mut got))
            .await
            .expect("upstream's close reached the client")
            .unwrap();
        assert_eq!(got, b"late reply");
        let out = task.await.unwrap();
        assert_eq!(
            out,
            Spliced {
                from_client: 7,
                to_client: 10,
                ended_by: None
            }
        );
    }

    #[tokio::test]
    async fn large_transfers_both_ways_arrive_intact_while_the_client_reads_only_after_sending() {
        const SIZE: usize = 1024 * 1024;
        let data =
            |seed: usize| -> Vec<u8> { (0..SIZE).map(|i| ((i * 7 + seed) % 251) as u8).collect() };
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, upstream_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(splice(client, upstream, WAIT));
        // The upstream reads and writes at once; the client writes everything before it reads,
        // so the tunnel must keep taking the client's bytes while its reply waits.
        let (mut up_read, mut up_write) = tokio::io::split(upstream_peer);
        let up_sent = data(1);
        let writer = tokio::spawn(async move {
            up_write.write_all(&up_sent).await.unwrap();
            up_write.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            up_read.read_to_end(&mut got).await.unwrap();
            got
        });
        let client_side = async {
            client_peer.write_all(&data(0)).await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            client_peer.read_to_end(&mut got).await.unwrap();
            got
        };
        let got_by_client = tokio::time::timeout(WAIT, client_side)
            .await
            .expect("both transfers finished");
        writer.await.unwrap();
        let got_upstream = reader.await.unwrap();
        assert!(got_upstream == data(0), "the upload arrived intact");
        assert!(got_by_client == data(1), "the download arrived intact");
        let out = task.await.unwrap();
        assert_eq!((out.from_client, out.to_client), (SIZE as u64, SIZE as u64));
        assert_eq!(out.ended_by, None);
    }

    #[tokio::test]
    async fn a_write_to_a_closed_upstream_ends_the_tunnel_with_upstream_error() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, upstream_peer) = tokio::io::duplex(64);
        drop(upstream_peer);
        let task = tokio::spawn(splice(client, upstream, WAIT));
        client_peer.write_all(b"anyone?").await.unwrap();
        let out = task.await.unwrap();
        assert_eq!(out.ended_by, Some(Reason::UpstreamError));
    }
}
