//! The HTTP/1.x connection loop, plain or decrypted inside an intercepted tunnel. warden reads
//! every request head itself ([`super::head`]): within `limits.request_header_timeout`, vetted
//! so that nothing reaches Pingora's bare `400`/`405` answers, and refused with warden's own
//! answer and a log line otherwise. Each request is then handed to Pingora's HTTP engine
//! ([`HttpServerApp::process_new_http`], all `ProxyHttp` phases) on a [`Conn`] that lets it
//! read exactly that request's head and body and no further, so pipelined requests wait their
//! turn and are answered in order instead of being dropped with the connection.

use super::head::{read_head, request_id_from, BodyFraming, Head, HeadError, Wait};
use crate::reason::Reason;
use crate::refusal;
use crate::state::Shared;
use crate::target::TunnelIdentity;
use crate::telemetry::{CanonicalLog, Kind};
use bytes::{Buf, BytesMut};
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes read ahead of Pingora at a time.
const READ_AHEAD: usize = 4096;

/// Who is on the other end of a connection, for the lines the loop writes itself.
pub(super) struct Peer {
    pub client_addr: Option<SocketAddr>,
    /// The intercepted tunnel this connection is the inside of, if it is one.
    pub tunnel: Option<TunnelIdentity>,
    /// When the first head's clock started: the accept, or the end of the TLS handshake.
    pub started: Instant,
}

/// Serves every HTTP/1.x request on `stream` until the client or a response closes it, each
/// one through `http` (Pingora's engine). `first` is the head the front door already read
/// (plain connections).
pub(super) async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    shared: &Shared,
    http: &Arc<A>,
    stream: Stream,
    mut first: Option<Head>,
    peer: Peer,
    shutdown: &ShutdownWatch,
) {
    let mut conn = Conn::new(stream);
    let mut served = 0u64;
    let mut shutdown_rx = shutdown.clone();
    loop {
        let snap = shared.snapshot.load_full();
        let limits = &snap.limits;
        let head = match first.take() {
            Some(head) => head,
            None => {
                if *shutdown.borrow() {
                    return;
                }
                let wait = if served == 0 {
                    Wait::Until(peer.started + limits.request_header_timeout)
                } else {
                    Wait::Idle {
                        idle: limits.idle_timeout,
                        whole: limits.request_header_timeout,
                    }
                };
                let started = Instant::now();
                let pending = std::mem::take(&mut conn.pending);
                let read = read_head(
                    &mut conn.inner,
                    pending,
                    limits.max_request_header_bytes,
                    wait,
                );
                let read = tokio::select! {
                    biased;
                    r = read => r,
                    _ = shutdown_rx.changed() => return,
                };
                let failed = |e: HeadError| match e {
                    HeadError::Closed => None,
                    HeadError::Timeout => Some((
                        Reason::RequestHeaderTimeout,
                        format!(
                            "request head incomplete after {:?}",
                            limits.request_header_timeout
                        ),
                    )),
                    HeadError::TooLarge => Some((Reason::HeadersTooLarge, String::new())),
                    HeadError::Malformed(why) => Some((Reason::MalformedRequest, why)),
                };
                match read {
                    Ok(head) => head,
                    Err(e) => {
                        if let Some((reason, detail)) = failed(e) {
                            let started = if served == 0 { peer.started } else { started };
                            refuse_inside(shared, &mut conn, &peer, None, reason, detail, started)
                                .await;
                        }
                        return;
                    }
                }
            }
        };
        let framing = match head.vet() {
            Ok(framing) => framing,
            Err((reason, detail)) => {
                let started = Instant::now();
                refuse_inside(
                    shared,
                    &mut conn,
                    &peer,
                    Some(&head),
                    reason,
                    detail,
                    started,
                )
                .await;
                return;
            }
        };
        conn.expect(head, framing);
        let mut session = ServerSession::new_http1(Box::new(conn));
        let keepalive = (!*shutdown.borrow()).then(|| limits.idle_timeout.as_secs().max(1));
        session.set_keepalive(keepalive);
        drop(snap);
        let Some(reused) = http.process_new_http(session, shutdown).await else {
            return;
        };
        let (stream, _) = reused.consume();
        conn = match stream.into_any().downcast::<Conn>() {
            Ok(conn) => *conn,
            Err(_) => return,
        };
        served += 1;
    }
}

/// Answers a request the loop refused before Pingora saw it, logs it, and closes.
async fn refuse_inside(
    shared: &Shared,
    conn: &mut Conn,
    peer: &Peer,
    head: Option<&Head>,
    reason: Reason,
    detail: String,
    started: Instant,
) {
    let snap = shared.snapshot.load();
    let request_id = head
        .map(|h| h.request_id.clone())
        .unwrap_or_else(|| request_id_from(None));
    let dest = peer.tunnel.as_ref().map(|t| &t.authority);
    refusal::write(&mut conn.inner, reason, dest, None, &request_id).await;
    let host = dest.map(|d| d.host.to_string());
    shared.metrics.refused(reason);
    let kind = if peer.tunnel.is_some() {
        Kind::Intercepted
    } else {
        Kind::Plain
    };
    let mut line = CanonicalLog::new(kind);
    line.request_id = Some(request_id);
    line.client_addr = peer.client_addr.map(|a| a.to_string());
    if let Some(t) = &peer.tunnel {
        line.client = t.client.as_deref().map(str::to_string);
        line.scheme = Some("https");
        line.host = host;
        line.port = Some(t.authority.port);
        line.intercepted = true;
    }
    line.method = head.map(|h| h.method.clone());
    line.status = Some(reason.status());
    line.reason = Some(reason.code());
    line.error = (!detail.is_empty()).then_some(detail);
    line.took(started.elapsed());
    shared.metrics.record(line, snap.log);
}

/// A client connection as Pingora's HTTP engine sees it: it yields one request (head, then
/// body as framed) and then holds back whatever the client sent next until the loop reads it
/// as the next head. Pingora therefore never reads past a request, and keeps the connection.
pub(super) struct Conn {
    inner: Stream,
    /// Read from `inner`, not yet given to Pingora.
    pending: BytesMut,
    /// Head bytes Pingora has still to read.
    head_left: usize,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Sized(u64),
    Chunked(ChunkScan),
    Open,
    /// The request is complete; what follows belongs to the next one.
    Done,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("pending", &self.pending.len())
            .field("head_left", &self.head_left)
            .field("body", &self.body)
            .finish()
    }
}

impl Conn {
    fn new(inner: Stream) -> Self {
        Conn {
            inner,
            pending: BytesMut::new(),
            head_left: 0,
            body: Body::Done,
        }
    }

    /// Arms the connection for `head`, whose bytes (and what followed them) become pending.
    fn expect(&mut self, head: Head, framing: BodyFraming) {
        self.head_left = head.head_len;
        self.pending = head.bytes;
        self.body = match framing {
            BodyFraming::Sized(0) => Body::Done,
            BodyFraming::Sized(n) => Body::Sized(n),
            BodyFraming::Chunked => Body::Chunked(ChunkScan::default()),
            BodyFraming::Open => Body::Open,
        };
    }
}

/// Gives Pingora up to `n` of the `pending` bytes.
fn give(pending: &mut BytesMut, buf: &mut ReadBuf<'_>, n: usize) -> usize {
    let n = n.min(pending.len()).min(buf.remaining());
    buf.put_slice(&pending[..n]);
    pending.advance(n);
    if pending.is_empty() {
        // An idle connection holds no read-ahead buffer.
        *pending = BytesMut::new();
    }
    n
}

/// Reads more from the client into `pending`. Ready(Ok(false)) at end of stream.
fn fill(
    inner: &mut Stream,
    pending: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    pending.reserve(READ_AHEAD);
    match tokio_util::io::poll_read_buf(Pin::new(inner), cx, pending) {
        Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
        Poll::Ready(Ok(_)) => Poll::Ready(Ok(true)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_left > 0 {
            // The whole head is pending: the loop read it.
            let n = this.head_left;
            this.head_left -= give(&mut this.pending, buf, n);
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.body {
                Body::Open => {
                    if !this.pending.is_empty() {
                        give(&mut this.pending, buf, usize::MAX);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Body::Sized(left) => {
                    if this.pending.is_empty() && *left >= buf.remaining() as u64 {
                        // Nothing can be read past the body: straight into Pingora's buffer.
                        let before = buf.filled().len();
                        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                        if let Poll::Ready(Ok(())) = r {
                            *left -= (buf.filled().len() - before) as u64;
                            if *left == 0 {
                                this.body = Body::Done;
                            }
                        }
                        return r;
                    }
                    if this.pending.is_empty()
                        && !std::task::ready!(fill(&mut this.inner, &mut this.pending, cx))?
                    {
                        return Poll::Ready(Ok(()));
                    }
                    let want = usize::try_from(*left).unwrap_or(usize::MAX);
                    let n = give(&mut this.pending, buf, want);
                    if let Body::Sized(left) = &mut this.body {
                        *left -= n as u64;
                        if *left == 0 {
                            this.body = Body::Done;
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                Body::Chunked(scan) => {
                    if this.pending.is_empty() {
                        if !std::task::ready!(fill(&mut this.inner, &mut this.pending, cx))? {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    let window = this.pending.len().min(buf.remaining());
                    let n = scan.feed(&this.pending[..window]);
                    let done = scan.done();
                    give(&mut this.pending, buf, n);
                    if done {
                        this.body = Body::Done;
                    }
                    return Poll::Ready(Ok(()));
                }
                Body::Done => {
                    if !this.pending.is_empty() {
                        // The client pipelined its next request: it waits until this one is
                        // answered. Pingora only reads here to notice a client that closed.
                        return Poll::Pending;
                    }
                    return match std::task::ready!(fill(&mut this.inner, &mut this.pending, cx)) {
                        Ok(false) => Poll::Ready(Ok(())),
                        Ok(true) => Poll::Pending,
                        Err(e) => Poll::Ready(Err(e)),
                    };
                }
            }
        }
    }
}

super::io::delegate_stream!(Conn);

/// Finds where a chunked body ends (RFC 9112 §7.1), so the request's bytes are told from the
/// next request's. It only delimits: Pingora still parses and validates the body. Anything
/// malformed ends the scan at once, so Pingora sees the bad bytes and refuses them.
#[derive(Debug, Default)]
pub(super) struct ChunkScan {
    state: Scan,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// In a chunk-size line: the size so far and its digit count.
    #[default]
    SizeStart,
    Size(u64, u8),
    /// After the size, in a chunk extension, until the line ends.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

impl ChunkScan {
    /// Consumes bytes of the body from `bytes`; returns how many belong to it (all of them
    /// unless the body ends inside `bytes`).
    pub(super) fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() && self.state != Scan::Done {
            let b = bytes[i];
            self.state = match self.state {
                Scan::SizeStart => match hex(b) {
                    Some(d) => Scan::Size(d, 1),
                    None => Scan::Done,
                },
                Scan::Size(n, digits) => match hex(b) {
                    Some(d) if digits < 15 => Scan::Size(n * 16 + d, digits + 1),
                    Some(_) => Scan::Done,
                    None if b == b'\r' => Scan::SizeLf(n),
                    None if b == b'\n' => chunk_or_trailer(n),
                    None if b == b';' || b == b' ' || b == b'\t' => Scan::Extension(n),
                    None => Scan::Done,
                },
                Scan::Extension(n) => match b {
                    b'\r' => Scan::SizeLf(n),
                    b'\n' => chunk_or_trailer(n),
                    _ => Scan::Extension(n),
                },
                Scan::SizeLf(n) if b == b'\n' => chunk_or_trailer(n),
                Scan::SizeLf(_) => Scan::Done,
                Scan::Data(n) => {
                    let take = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        Scan::DataCr
                    } else {
                        Scan::Data(left)
                    };
                    continue;
                }
                Scan::DataCr if b == b'\r' => Scan::DataLf,
                Scan::DataCr if b == b'\n' => Scan::SizeStart,
                Scan::DataCr => Scan::Done,
                Scan::DataLf if b == b'\n' => Scan::SizeStart,
                Scan::DataLf => Scan::Done,
                Scan::TrailerStart if b == b'\r' => Scan::FinalLf,
                Scan::TrailerStart if b == b'\n' => Scan::Done,
                Scan::TrailerStart | Scan::Trailer => match b {
                    b'\r' => Scan::TrailerLf,
                    b'\n' => Scan::TrailerStart,
                    _ => Scan::Trailer,
                },
                Scan::TrailerLf if b == b'\n' => Scan::TrailerStart,
                Scan::TrailerLf => Scan::Done,
                Scan::FinalLf => Scan::Done,
                Scan::Done => Scan::Done,
            };
            i += 1;
        }
        i
    }

    /// The body has ended (or could not be delimited).
    pub(super) fn done(&self) -> bool {
        self.state == Scan::Done
    }
}

fn chunk_or_trailer(size: u64) -> Scan {
    if size == 0 {
        Scan::TrailerStart
    } else {
        Scan::Data(size)
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], piece: usize) -> usize {
        let mut scan = ChunkScan::default();
        let mut used = 0;
        for chunk in body.chunks(piece) {
            used += scan.feed(chunk);
            if scan.done() {
                break;
            }
        }
        assert!(scan.done(), "body end found");
        used
    }

    #[test]
    fn a_chunked_body_ends_exactly_at_its_terminator_in_any_split() {
        let body =
            b"5\r\nhello\r\n1a;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\n\r\n";
        let stream = [&body[..], &next[..]].concat();
        for piece in 1..stream.len() {
            assert_eq!(scan_all(&stream, piece), body.len(), "piece {piece}");
        }
        let bare = b"3\nabc\n0\n\nGET";
        assert_eq!(scan_all(bare, 1), bare.len() - 3);
    }

    #[test]
    fn malformed_chunk_framing_ends_the_scan_at_the_bad_byte() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\rX",
            b"3\r\nabcX",
            b"1234567890abcdef0\r\n",
        ] {
            let used = scan_all(bad, bad.len());
            assert!(used <= bad.len());
        }
    }
}
