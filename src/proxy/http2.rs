//! The HTTP/2 connection loop inside an intercepted tunnel whose client chose ALPN `h2`.
//! Every stream is handed to Pingora's HTTP engine ([`HttpServerApp::process_new_http`], all
//! `ProxyHttp` phases) as its own session, exactly like an HTTP/1.1 request. What is
//! connection-wide is bounded here, each by a `limits` key: concurrent streams, the header
//! list size (`max_request_header_bytes`), the receive windows, and — counted by a
//! [`FrameGuard`] on the decrypted bytes before the h2 codec sees them — `RST_STREAM`
//! (rapid reset), `PING` and `SETTINGS` rates and header blocks split into too many or too
//! large `CONTINUATION` frames. A client over a bound gets `GOAWAY` (`ENHANCE_YOUR_CALM`) and
//! one log line with reason `h2_flood`.

use super::http1::Peer;
use crate::config::Limits;
use crate::reason::Reason;
use crate::state::Shared;
use crate::telemetry::{CanonicalLog, Kind};
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Digest, Stream};
use pingora_core::server::ShutdownWatch;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// How long a connection over a bound may take to receive its `GOAWAY`.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);
/// Streams Pingora's acceptance checks may refuse as malformed before the connection goes.
const MAX_MALFORMED_STREAMS: usize = 32;

/// Which bound a client broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flood {
    Resets(u32),
    Pings(u32),
    Settings(u32),
    /// A header block over `max_request_header_bytes`, in bytes.
    HeaderBytes(usize),
    /// A header block split into more frames than any client needs.
    HeaderFrames(usize),
    MalformedStreams,
}

impl Flood {
    /// The log line's detail, naming the key that bounds it.
    fn detail(self) -> String {
        match self {
            Flood::Resets(n) => format!(
                "more than {n} RST_STREAM frames in one second (limits.h2_max_resets_per_second)"
            ),
            Flood::Pings(n) => {
                format!("more than {n} PING frames in one second (limits.h2_max_pings_per_second)")
            }
            Flood::Settings(n) => format!(
                "more than {n} SETTINGS frames in one second (limits.h2_max_settings_per_second)"
            ),
            Flood::HeaderBytes(n) => {
                format!("a header block of more than {n} bytes (limits.max_request_header_bytes)")
            }
            Flood::HeaderFrames(n) => {
                format!("a header block split into more than {n} HEADERS/CONTINUATION frames")
            }
            Flood::MalformedStreams => {
                format!("more than {MAX_MALFORMED_STREAMS} malformed streams")
            }
        }
    }
}

/// The bounds a [`FrameScan`] enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameLimits {
    pub resets_per_second: u32,
    pub pings_per_second: u32,
    pub settings_per_second: u32,
    pub header_block_bytes: usize,
}

impl FrameLimits {
    pub(super) fn of(limits: &Limits) -> Self {
        FrameLimits {
            resets_per_second: limits.h2_max_resets_per_second,
            pings_per_second: limits.h2_max_pings_per_second,
            settings_per_second: limits.h2_max_settings_per_second,
            header_block_bytes: limits.max_request_header_bytes,
        }
    }

    /// Frames one header block may take: a full 1 KiB per frame at the least. Clients send
    /// blocks in frames of 16 KiB or more, so this only stops floods of tiny or empty
    /// `CONTINUATION`s, which cost a frame's work each and grow no buffer.
    fn header_block_frames(&self) -> usize {
        self.header_block_bytes.div_ceil(1024) + 1
    }
}

/// Frame types counted (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// Follows the frames a client sends, from the preface on, reading only their 9-byte headers,
/// and counts what the bounds are about.
#[derive(Debug)]
pub(super) struct FrameScan {
    limits: FrameLimits,
    preface_left: usize,
    header: [u8; 9],
    header_have: usize,
    payload_left: usize,
    /// Inside a header block (HEADERS without END_HEADERS, then CONTINUATIONs).
    block: Option<(usize, usize)>,
    window: Option<Instant>,
    resets: u32,
    pings: u32,
    settings: u32,
}

impl FrameScan {
    pub(super) fn new(limits: FrameLimits) -> Self {
        FrameScan {
            limits,
            preface_left: PREFACE_LEN,
            header: [0; 9],
            header_have: 0,
            payload_left: 0,
            block: None,
            window: None,
            resets: 0,
            pings: 0,
            settings: 0,
        }
    }

    /// Scans the next bytes the client sent. `now` is asked only when a counted frame
    /// arrives.
    pub(super) fn feed(
        &mut self,
        mut bytes: &[u8],
        now: impl Fn() -> Instant,
    ) -> Result<(), Flood> {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header_have).min(bytes.len());
            self.header[self.header_have..self.header_have + n].copy_from_slice(&bytes[..n]);
            self.header_have += n;
            bytes = &bytes[n..];
            if self.header_have == 9 {
                self.header_have = 0;
                self.frame(&now)?;
            }
        }
        Ok(())
    }

    /// One complete frame header.
    fn frame(&mut self, now: &impl Fn() -> Instant) -> Result<(), Flood> {
        let h = self.header;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        self.payload_left = len;
        match kind {
            HEADERS | CONTINUATION => {
                let (bytes, frames) = match (kind, self.block) {
                    (CONTINUATION, Some((b, f))) => (b + len, f + 1),
                    _ => (len, 1),
                };
                if bytes > self.limits.header_block_bytes {
                    return Err(Flood::HeaderBytes(self.limits.header_block_bytes));
                }
                let most = self.limits.header_block_frames();
                if frames > most {
                    return Err(Flood::HeaderFrames(most));
                }
                self.block = (flags & FLAG_END_HEADERS == 0).then_some((bytes, frames));
            }
            RST_STREAM => self.count(now, |s| &mut s.resets)?,
            PING if flags & FLAG_ACK == 0 => self.count(now, |s| &mut s.pings)?,
            SETTINGS if flags & FLAG_ACK == 0 => self.count(now, |s| &mut s.settings)?,
            _ => {}
        }
        Ok(())
    }

    /// Counts one frame in the current one-second window.
    fn count(
        &mut self,
        now: &impl Fn() -> Instant,
        counter: fn(&mut Self) -> &mut u32,
    ) -> Result<(), Flood> {
        let t = now();
        match self.window {
            Some(start) if t.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(t);
                self.resets = 0;
                self.pings = 0;
                self.settings = 0;
            }
        }
        *counter(self) += 1;
        let l = &self.limits;
        if self.resets > l.resets_per_second {
            return Err(Flood::Resets(l.resets_per_second));
        }
        if self.pings > l.pings_per_second {
            return Err(Flood::Pings(l.pings_per_second));
        }
        if self.settings > l.settings_per_second {
            return Err(Flood::Settings(l.settings_per_second));
        }
        Ok(())
    }
}

/// The client's decrypted stream as the h2 codec reads it, scanned by a [`FrameScan`]. Once a
/// bound is broken it reads nothing more (the codec only gets to write its `GOAWAY`) and
/// reports the flood on its watch.
pub(super) struct FrameGuard {
    inner: Stream,
    scan: FrameScan,
    tripped: watch::Sender<Option<Flood>>,
    /// A bound was broken: nothing more is read.
    stopped: bool,
}

impl std::fmt::Debug for FrameGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameGuard")
            .field("scan", &self.scan)
            .finish()
    }
}

impl AsyncRead for FrameGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stopped {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(flood) = this.scan.feed(&buf.filled()[before..], Instant::now) {
            this.stopped = true;
            this.tripped.send_replace(Some(flood));
        }
        Poll::Ready(Ok(()))
    }
}

super::io::delegate_stream!(FrameGuard);

/// The h2 codec's settings for a client connection, from `limits`. Extended CONNECT
/// (`SETTINGS_ENABLE_CONNECT_PROTOCOL`) is never enabled, so a `:protocol` stream is refused.
fn options(limits: &Limits) -> h2_server::H2Options {
    let mut b = h2_server::H2Options::new();
    let header_list = u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX);
    b.max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(header_list)
        .initial_window_size(limits.h2_stream_window_bytes)
        .initial_connection_window_size(limits.h2_connection_window_bytes)
        .max_send_buffer_size(limits.h2_stream_window_bytes as usize);
    b
}

/// Serves every stream of the HTTP/2 connection on `stream` through `http` (Pingora's
/// engine), until the client closes it, it has been idle (no open stream) for
/// `limits.idle_timeout`, warden shuts down (graceful `GOAWAY`, open streams finish), or it
/// breaks a bound.
pub(super) async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    shared: &Shared,
    http: &Arc<A>,
    stream: Stream,
    peer: Peer,
    shutdown: &ShutdownWatch,
) {
    let snap = shared.snapshot.load_full();
    let limits = &snap.limits;
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let (tripped, mut flood) = watch::channel(None);
    let guard = FrameGuard {
        inner: stream,
        scan: FrameScan::new(FrameLimits::of(limits)),
        tripped,
        stopped: false,
    };
    let handshake = h2_server::handshake(Box::new(guard), Some(options(limits)));
    let mut conn = match tokio::time::timeout(limits.request_header_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return log::debug!("h2 handshake with a client failed: {e}"),
        Err(_) => return log::debug!("h2 handshake with a client timed out"),
    };
    let idle = limits.idle_timeout;
    drop(snap);
    let mut streams = JoinSet::new();
    let mut shutdown_rx = shutdown.clone();
    let mut draining = false;
    let mut malformed = 0usize;
    loop {
        // With no stream open: idle for `idle_timeout` starts the graceful close; once closing,
        // a client that does not answer the GOAWAY's PING within GOAWAY_FLUSH is let go.
        let quiet = streams.is_empty();
        let wait = if draining { GOAWAY_FLUSH } else { idle };
        let timer = async {
            if quiet {
                tokio::time::sleep(wait).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = flood.changed() => {
                let broken = *flood.borrow();
                if let Some(broken) = broken {
                    return goaway(shared, &mut conn, &peer, broken).await;
                }
                continue;
            }
            _ = shutdown_rx.changed(), if !draining => {
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            _ = timer => {
                if draining {
                    return;
                }
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
            accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
        };
        match accepted {
            Err(e) => return ended(shared, &peer, &e),
            Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                let why = "a malformed HTTP/2 request (its target or authority) was reset";
                log_line(shared, &peer, Reason::MalformedRequest, why.to_string());
                malformed += 1;
                if malformed > MAX_MALFORMED_STREAMS {
                    return goaway(shared, &mut conn, &peer, Flood::MalformedStreams).await;
                }
            }
            Ok(Some(H2Accept::Session(session))) => {
                let http = http.clone();
                let shutdown = shutdown.clone();
                streams.spawn(async move {
                    let session = ServerSession::new_http2(session);
                    http.process_new_http(session, &shutdown).await;
                });
            }
        }
    }
}

/// Sends `GOAWAY` (`ENHANCE_YOUR_CALM`) to a client that broke a bound, gives it
/// [`GOAWAY_FLUSH`] to leave, and logs the connection's end.
async fn goaway(
    shared: &Shared,
    conn: &mut h2::server::Connection<Stream, bytes::Bytes>,
    peer: &Peer,
    flood: Flood,
) {
    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
    let drain = async { while let Some(Ok(_)) = conn.accept().await {} };
    let _ = tokio::time::timeout(GOAWAY_FLUSH, drain).await;
    log_line(shared, peer, Reason::H2Flood, flood.detail());
}

/// A connection that ended in an error: when warden's codec ended it (`GOAWAY` for a
/// protocol violation, such as a header value with CR, LF or NUL), one log line says so; a
/// client that went away is not worth one.
fn ended(shared: &Shared, peer: &Peer, e: &pingora_error::Error) {
    let h2 = e.root_cause().downcast_ref::<h2::Error>();
    match h2 {
        Some(h2)
            if h2.is_go_away() && !h2.is_remote() && h2.reason() != Some(h2::Reason::NO_ERROR) =>
        {
            let why = format!("HTTP/2 connection closed by warden: {h2}");
            log_line(shared, peer, Reason::MalformedRequest, why);
        }
        _ => log::debug!("h2 client connection ended: {e}"),
    }
}

/// One line (and the refusal count) for something the connection loop refused itself.
fn log_line(shared: &Shared, peer: &Peer, reason: Reason, detail: String) {
    shared.metrics.refused(reason);
    let mut line = CanonicalLog::new(Kind::Intercepted);
    line.request_id = Some(super::head::request_id_from(None));
    line.client_addr = peer.client_addr.map(|a| a.to_string());
    if let Some(t) = &peer.tunnel {
        line.client = t.client.as_deref().map(str::to_string);
        line.scheme = Some("https");
        line.host = Some(t.authority.host.to_string());
        line.port = Some(t.authority.port);
    }
    line.intercepted = true;
    line.http_version = Some("2");
    line.reason = Some(reason.code());
    line.error = Some(detail);
    line.took(peer.started.elapsed());
    shared.metrics.record(line, shared.snapshot.load().log);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FrameLimits {
        FrameLimits {
            resets_per_second: 3,
            pings_per_second: 2,
            settings_per_second: 2,
            header_block_bytes: 4096,
        }
    }

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(9 + len, 0);
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[test]
    fn counts_resets_per_second_across_split_reads() {
        let t0 = Instant::now();
        let mut scan = FrameScan::new(limits());
        let mut bytes = preface();
        for _ in 0..3 {
            bytes.extend(frame(RST_STREAM, 0, 4));
        }
        // Byte by byte: frame headers split anywhere are still read whole.
        for b in &bytes {
            scan.feed(std::slice::from_ref(b), || t0).unwrap();
        }
        assert_eq!(
            scan.feed(&frame(RST_STREAM, 0, 4), || t0),
            Err(Flood::Resets(3))
        );
        // A new second starts a new count.
        let mut scan = FrameScan::new(limits());
        scan.feed(&bytes, || t0).unwrap();
        let later = t0 + Duration::from_millis(1001);
        scan.feed(&frame(RST_STREAM, 0, 4), || later).unwrap();
    }

    #[test]
    fn acks_are_not_counted_but_pings_and_settings_are() {
        let t0 = Instant::now();
        let mut scan = FrameScan::new(limits());
        scan.feed(&preface(), || t0).unwrap();
        for _ in 0..10 {
            scan.feed(&frame(PING, FLAG_ACK, 8), || t0).unwrap();
            scan.feed(&frame(SETTINGS, FLAG_ACK, 0), || t0).unwrap();
        }
        scan.feed(&frame(PING, 0, 8), || t0).unwrap();
        scan.feed(&frame(PING, 0, 8), || t0).unwrap();
        assert_eq!(scan.feed(&frame(PING, 0, 8), || t0), Err(Flood::Pings(2)));
        let mut scan = FrameScan::new(limits());
        scan.feed(&preface(), || t0).unwrap();
        scan.feed(&frame(SETTINGS, 0, 6), || t0).unwrap();
        scan.feed(&frame(SETTINGS, 0, 6), || t0).unwrap();
        assert_eq!(
            scan.feed(&frame(SETTINGS, 0, 6), || t0),
            Err(Flood::Settings(2))
        );
    }

    #[test]
    fn bounds_header_blocks_in_bytes_and_frames() {
        let t0 = Instant::now();
        let mut scan = FrameScan::new(limits());
        scan.feed(&preface(), || t0).unwrap();
        scan.feed(&frame(HEADERS, 0, 2048), || t0).unwrap();
        scan.feed(&frame(CONTINUATION, 0, 2048), || t0).unwrap();
        assert_eq!(
            scan.feed(&frame(CONTINUATION, 0, 1), || t0),
            Err(Flood::HeaderBytes(4096))
        );
        // Empty CONTINUATIONs grow no buffer but are bounded in number.
        let mut scan = FrameScan::new(limits());
        scan.feed(&preface(), || t0).unwrap();
        scan.feed(&frame(HEADERS, 0, 10), || t0).unwrap();
        for _ in 0..4 {
            scan.feed(&frame(CONTINUATION, 0, 0), || t0).unwrap();
        }
        assert_eq!(
            scan.feed(&frame(CONTINUATION, 0, 0), || t0),
            Err(Flood::HeaderFrames(5))
        );
        // END_HEADERS closes the block: the next one starts from nothing.
        let mut scan = FrameScan::new(limits());
        scan.feed(&preface(), || t0).unwrap();
        for _ in 0..100 {
            scan.feed(&frame(HEADERS, FLAG_END_HEADERS, 4000), || t0)
                .unwrap();
            scan.feed(&frame(0, 0, 16_000), || t0).unwrap();
        }
    }
}
