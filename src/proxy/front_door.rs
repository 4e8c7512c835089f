//! The front door: the first thing every client connection meets. It reads the first request
//! head (bounded in size and time); anything but CONNECT is rewound and handed to the HTTP
//! engine running [`Warden`](super::Warden). A CONNECT is decided here — blind tunnel, or
//! interception: `200`, TLS accept with a leaf for the CONNECT host, the tunnel identity bound
//! to the connection, and the decrypted stream handed to the same HTTP engine. Between the
//! requests of a connection, the front door reads each request line before the HTTP engine
//! does, so bytes that engine would escape are refused as the client sent them.

use super::tunnel;
use super::{check_head, raw_refusal, request_id_from, Shared, Warden};
use crate::admission::{admit_connect, Refusal};
use crate::config::Snapshot;
use crate::reason::Reason;
use crate::target::{check_request_line, classify_connect, Authority, TunnelIdentity};
use crate::telemetry::{CanonicalLog, Kind};
use crate::tls::{interception_acceptor, LeafCallbacks};
use bytes::{Bytes, BytesMut};
use openssl::ssl::SslAcceptor;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::{GetSocketDigest, Ssl, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A TLS record of type handshake starts every ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Handles each accepted connection.
pub struct FrontDoor {
    shared: Arc<Shared>,
    http: Arc<HttpProxy<Warden>>,
    acceptor: SslAcceptor,
}

/// The first request head, parsed.
struct Head {
    /// Everything read so far (the head and any bytes that followed it).
    bytes: BytesMut,
    head_len: usize,
    method: String,
    target: Vec<u8>,
    hosts: Vec<Vec<u8>>,
    names: Vec<Vec<u8>>,
    proxy_auth: Vec<Vec<u8>>,
    request_id: String,
}

enum HeadError {
    /// The client closed (or sent nothing) before a full head arrived.
    Closed,
    /// No complete head within the idle bound.
    Timeout,
    TooLarge,
    Malformed,
}

/// Where a front-door event's log line starts from.
struct Event {
    started: Instant,
    client_addr: Option<SocketAddr>,
    /// The authenticated client, once known.
    client: Option<Arc<str>>,
}

impl Event {
    fn line(&self, kind: Kind) -> CanonicalLog {
        let mut line = CanonicalLog::new(kind);
        line.client_addr = self.client_addr.map(|a| a.to_string());
        line.client = self.client.as_deref().map(str::to_string);
        line
    }
}

impl FrontDoor {
    /// A front door handing HTTP to `http` and reading config from `shared`.
    pub fn new(
        shared: Arc<Shared>,
        http: Arc<HttpProxy<Warden>>,
    ) -> Result<Self, openssl::error::ErrorStack> {
        Ok(FrontDoor {
            shared,
            http,
            acceptor: interception_acceptor()?,
        })
    }

    /// Serves one accepted client connection to its end.
    pub async fn serve(self: Arc<Self>, mut stream: L4Stream, shutdown: ShutdownWatch) {
        let snap = self.shared.snapshot.load_full();
        let event = Event {
            started: Instant::now(),
            client_addr: stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied())),
            client: None,
        };
        let mut head = match read_head(
            &mut stream,
            snap.limits.max_request_header_bytes,
            snap.limits.idle_timeout,
        )
        .await
        {
            Ok(head) => head,
            Err(HeadError::Closed | HeadError::Timeout) => return,
            Err(HeadError::TooLarge) => {
                return self
                    .refuse(stream, &snap, &event, None, Reason::HeadersTooLarge)
                    .await
            }
            Err(HeadError::Malformed) => {
                return self
                    .refuse(stream, &snap, &event, None, Reason::MalformedRequest)
                    .await
            }
        };
        if !head.method.eq_ignore_ascii_case("CONNECT") {
            // Pre-check the first head with the rules request_filter applies, so requests that
            // Pingora's parser would answer with a bare 400 still get a reason and a log line.
            let names: Vec<&[u8]> = head.names.iter().map(Vec::as_slice).collect();
            let hosts: Vec<&[u8]> = head.hosts.iter().map(Vec::as_slice).collect();
            if let Err(reason) = check_head(
                head.head_len,
                &names,
                &head.target,
                &hosts,
                None,
                snap.limits.max_request_header_bytes,
            ) {
                return self
                    .refuse(stream, &snap, &event, Some(&head), reason)
                    .await;
            }
            stream.rewind(&head.bytes);
            let _open = self.shared.metrics.open(Kind::Plain);
            let stream = Box::new(super::buffered::Buffered::new(stream));
            self.serve_http(stream, true, &event, None, &shutdown).await;
            return;
        }
        let dest = match classify_connect(&head.target) {
            Ok(dest) => dest,
            Err(reason) => {
                return self
                    .refuse(stream, &snap, &event, Some(&head), reason)
                    .await
            }
        };
        // Decide before side effects: nothing is resolved, minted or dialled for a refusal.
        let values: Vec<&[u8]> = head.proxy_auth.iter().map(Vec::as_slice).collect();
        let admitted = match admit_connect(&snap, &self.shared.own_addrs, &values, &dest) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let event = Event {
                    client: refusal.client.as_ref().map(|c| c.name.clone()),
                    ..event
                };
                return self
                    .refuse_connect(stream, &snap, &event, &head, &dest, refusal)
                    .await;
            }
        };
        let event = Event {
            client: admitted.client.as_ref().map(|c| c.name.clone()),
            ..event
        };
        let network = snap.network_for(admitted.client.as_deref());
        let would_deny = admitted.would_deny;
        let mut rest = Bytes::copy_from_slice(&head.bytes[head.head_len..]);
        // The head's buffer is not needed for the tunnel's lifetime.
        let request_id = std::mem::take(&mut head.request_id);
        drop(head);
        let mut intercept = admitted.intercept;
        let answered = intercept;
        if intercept {
            let failed = |reason: Reason, error: Option<String>| {
                self.connect_failed(&snap, &event, &request_id, &dest, reason, error)
            };
            if established(&mut stream).await.is_err() {
                return failed(Reason::ClientError, None);
            }
            // Look at the first byte before minting anything: TLS opens with a handshake record.
            let first = match rest.first() {
                Some(b) => *b,
                None => {
                    let mut b = [0u8; 1];
                    match tokio::time::timeout(snap.limits.idle_timeout, stream.read(&mut b)).await
                    {
                        Ok(Ok(1)) => {
                            rest = Bytes::copy_from_slice(&b);
                            b[0]
                        }
                        Ok(_) => return failed(Reason::ClientError, None),
                        Err(_) => return failed(Reason::IdleTimeout, None),
                    }
                }
            };
            if first != TLS_HANDSHAKE_RECORD {
                if admitted.inspect {
                    let why = format!("first byte 0x{first:02x} is not a TLS handshake");
                    return failed(Reason::ClientNotTls, Some(why));
                }
                // Nothing needs to see inside (intercept: all alone): not TLS (ws://, plain
                // HTTP through CONNECT), so splice it blind rather than break it.
                intercept = false;
            }
        }
        if intercept {
            stream.rewind(&rest);
            self.intercept(stream, dest, request_id, &snap, &event, shutdown)
                .await;
        } else {
            let mut line = event.line(Kind::Tunnel);
            line.request_id = Some(request_id.clone());
            line.would_deny = would_deny.map(Reason::code);
            fill_connect(&mut line, &dest);
            let own = &self.shared.own_addrs;
            let _open = self.shared.metrics.open(Kind::Tunnel);
            match tunnel::blind(
                &mut stream,
                answered,
                rest,
                &dest,
                &snap,
                network,
                own,
                &mut line,
            )
            .await
            {
                Ok(()) => {}
                Err(reason) => {
                    line.status = Some(reason.status());
                    line.reason = Some(reason.code());
                    self.shared.metrics.refused(reason);
                    write_refusal(&mut stream, reason, Some(&dest), None, &request_id).await;
                }
            }
            line.took(event.started.elapsed());
            self.shared.metrics.record(line, snap.log);
        }
    }

    /// Logs an accepted CONNECT that ended before its tunnel could be served.
    fn connect_failed(
        &self,
        snap: &Snapshot,
        event: &Event,
        request_id: &str,
        dest: &Authority,
        reason: Reason,
        error: Option<String>,
    ) {
        let mut line = event.line(Kind::Connect);
        line.request_id = Some(request_id.to_string());
        fill_connect(&mut line, dest);
        line.status = Some(200);
        line.intercepted = true;
        line.reason = Some(reason.code());
        line.error = error;
        line.took(event.started.elapsed());
        self.shared.metrics.record(line, snap.log);
    }

    /// Terminates TLS with a leaf for the CONNECT host and serves the decrypted stream.
    async fn intercept(
        &self,
        stream: L4Stream,
        dest: Authority,
        request_id: String,
        snap: &Snapshot,
        event: &Event,
        shutdown: ShutdownWatch,
    ) {
        let fail = |reason: Reason, error: Option<String>| {
            self.connect_failed(snap, event, &request_id, &dest, reason, error)
        };
        let mint_duration = self.shared.metrics.mint_duration.clone();
        let on_mint = move |d: Duration| mint_duration.observe(d.as_secs_f64());
        let leaf = match snap.tls.ca.leaf_for(&dest.host, on_mint).await {
            Ok(leaf) => leaf,
            Err(e) => return fail(Reason::Internal, Some(e.to_string())),
        };
        let callbacks = LeafCallbacks {
            leaf,
            identity: TunnelIdentity {
                authority: dest.clone(),
                client: event.client.clone(),
                sni: None,
            },
        };
        let stream = super::buffered::Buffered::new(stream);
        let handshake = handshake_with_callback(&self.acceptor, stream, &callbacks);
        let tls = match tokio::time::timeout(snap.limits.idle_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return fail(Reason::ClientTlsError, Some(e.to_string())),
            Err(_) => return fail(Reason::IdleTimeout, Some("TLS handshake timed out".into())),
        };
        let resumed = tls.get_ssl().is_some_and(|ssl| ssl.session_reused());
        self.shared.metrics.client_handshake(resumed);
        let _open = self.shared.metrics.open(Kind::Intercepted);
        self.serve_http(Box::new(tls), false, event, Some(&dest), &shutdown)
            .await;
    }

    /// Serves the HTTP/1 requests of a client connection (plain, or a decrypted tunnel to
    /// `dest`) until it closes. This is Pingora's keep-alive loop (`HttpServerApp::process_new`),
    /// except that each request line is read here first and checked as the client sent it
    /// ([`check_request_line`]), then handed to the engine as the start of its request.
    /// `first_checked`: the first head was already read and checked (plain connections).
    async fn serve_http(
        &self,
        mut stream: Stream,
        first_checked: bool,
        event: &Event,
        dest: Option<&Authority>,
        shutdown: &ShutdownWatch,
    ) {
        if !matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1)) {
            // HTTP/2 has no request line to escape.
            self.http.process_new(stream, shutdown).await;
            return;
        }
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut checked = first_checked;
        loop {
            let prefix = if std::mem::take(&mut checked) {
                None
            } else {
                let (max, idle) = {
                    let snap = self.shared.snapshot.load();
                    (
                        snap.limits.max_request_header_bytes,
                        snap.limits.idle_timeout,
                    )
                };
                let mut stop = shutdown.clone();
                let read = tokio::select! {
                    biased;
                    read = read_request_line(&mut stream, max, idle) => read,
                    _ = stop.wait_for(|down| *down) => return,
                };
                match read {
                    Ok(line) => match line.verdict {
                        Ok(()) => Some(line.bytes),
                        Err(reason) => {
                            let method = line.method;
                            return self
                                .refuse_request_line(stream, event, dest, method, reason)
                                .await;
                        }
                    },
                    Err(HeadError::TooLarge) => {
                        let reason = Reason::HeadersTooLarge;
                        return self
                            .refuse_request_line(stream, event, dest, None, reason)
                            .await;
                    }
                    Err(HeadError::Closed | HeadError::Timeout | HeadError::Malformed) => return,
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // Pingora's defaults for a connection's first request.
                    let down = *shutdown.borrow();
                    session.set_keepalive(if down { None } else { Some(60) });
                    session.set_keepalive_reuses_remaining(
                        self.http
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            // warden leaves pipelining off (Pingora's default): a reused connection carries no
            // bytes of its own, so these are the whole start of the next request.
            if let Some(prefix) = prefix {
                session.set_pipelined_prefix(prefix);
            }
            let Some(reused) = self.http.process_new_http(session, shutdown).await else {
                return;
            };
            (stream, settings) = reused.consume();
        }
    }

    /// Answers a request line [`check_request_line`] refused (or one too long to finish), logs
    /// it, and closes: its framing cannot be trusted past that line.
    async fn refuse_request_line(
        &self,
        mut stream: Stream,
        event: &Event,
        dest: Option<&Authority>,
        method: Option<String>,
        reason: Reason,
    ) {
        let snap = self.shared.snapshot.load();
        let request_id = request_id_from(None);
        self.shared.metrics.refused(reason);
        write_refusal(&mut stream, reason, dest, None, &request_id).await;
        let mut line = event.line(if dest.is_some() {
            Kind::Intercepted
        } else {
            Kind::Plain
        });
        if let Some(dest) = dest {
            line.scheme = Some("https");
            line.host = Some(dest.host.to_string());
            line.port = Some(dest.port);
            line.intercepted = true;
        }
        line.request_id = Some(request_id);
        line.method = method;
        line.status = Some(reason.status());
        line.reason = Some(reason.code());
        line.took(event.started.elapsed());
        self.shared.metrics.record(line, snap.log);
    }
}

fn fill_connect(line: &mut CanonicalLog, dest: &Authority) {
    line.method = Some("CONNECT".into());
    line.scheme = Some("https");
    line.host = Some(dest.host.to_string());
    line.port = Some(dest.port);
}

/// Tells the client its CONNECT was accepted.
pub(super) async fn established(stream: &mut L4Stream) -> std::io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    stream.flush().await
}

async fn write_refusal<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reason: Reason,
    dest: Option<&Authority>,
    rule: Option<&str>,
    request_id: &str,
) {
    let host = dest.map(|d| d.host.to_string());
    let raw = raw_refusal(reason, host.as_deref(), rule, request_id);
    // Best effort: the client may already be gone.
    let _ = stream.write_all(&raw).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

impl FrontDoor {
    /// Answers a connection that never reaches the HTTP engine, logs it, and closes.
    async fn refuse(
        &self,
        mut stream: L4Stream,
        snap: &Snapshot,
        event: &Event,
        head: Option<&Head>,
        reason: Reason,
    ) {
        let request_id = head
            .map(|h| h.request_id.clone())
            .unwrap_or_else(|| request_id_from(None));
        self.shared.metrics.refused(reason);
        write_refusal(&mut stream, reason, None, None, &request_id).await;
        let connect = head.is_some_and(|h| h.method.eq_ignore_ascii_case("CONNECT"));
        let mut line = event.line(if connect { Kind::Connect } else { Kind::Plain });
        line.request_id = Some(request_id);
        line.method = head.map(|h| h.method.clone());
        line.status = Some(reason.status());
        line.reason = Some(reason.code());
        line.took(event.started.elapsed());
        self.shared.metrics.record(line, snap.log);
    }

    /// Refuses a CONNECT that policy denied, logs it, and closes.
    async fn refuse_connect(
        &self,
        mut stream: L4Stream,
        snap: &Snapshot,
        event: &Event,
        head: &Head,
        dest: &Authority,
        refusal: Refusal,
    ) {
        let rule = refusal.rule.as_deref();
        self.shared.metrics.refused(refusal.reason);
        write_refusal(
            &mut stream,
            refusal.reason,
            Some(dest),
            rule,
            &head.request_id,
        )
        .await;
        let mut line = event.line(Kind::Connect);
        line.request_id = Some(head.request_id.clone());
        fill_connect(&mut line, dest);
        line.status = Some(refusal.reason.status());
        line.reason = Some(refusal.reason.code());
        line.rule = refusal.rule;
        line.took(event.started.elapsed());
        self.shared.metrics.record(line, snap.log);
    }
}

/// A request line as read by [`read_request_line`].
struct RequestLine {
    /// Everything read so far: the line, and whatever followed it.
    bytes: BytesMut,
    /// The method, when the line starts with a token.
    method: Option<String>,
    /// [`check_request_line`]'s verdict on the line.
    verdict: Result<(), Reason>,
}

/// Reads until the next request line has arrived (skipping the empty lines RFC 9112 lets a
/// client send before it), at most `max` bytes, waiting at most `timeout` for each read.
async fn read_request_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<RequestLine, HeadError> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let n = match tokio::time::timeout(timeout, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(Err(_)) => return Err(HeadError::Closed),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let start = buf.iter().position(|b| !matches!(b, b'\r' | b'\n'));
        let end = start.and_then(|start| {
            let len = buf[start..].iter().position(|b| *b == b'\n')?;
            Some((start, start + len))
        });
        let Some((start, end)) = end else {
            if buf.len() > max {
                return Err(HeadError::TooLarge);
            }
            continue;
        };
        let line = &buf[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let method = line
            .split(|b| *b == b' ')
            .next()
            .filter(|m| !m.is_empty() && m.iter().all(u8::is_ascii_alphabetic))
            .map(|m| String::from_utf8_lossy(m).into_owned());
        let verdict = check_request_line(line);
        return Ok(RequestLine {
            bytes: buf,
            method,
            verdict,
        });
    }
}

/// Reads until one full request head has arrived, at most `max` bytes, waiting at most
/// `timeout` for each read.
async fn read_head(
    stream: &mut L4Stream,
    max: usize,
    timeout: Duration,
) -> Result<Head, HeadError> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let n = match tokio::time::timeout(timeout, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(Err(_)) => return Err(HeadError::Closed),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let (Some(method), Some(target)) = (req.method, req.path) else {
                    return Err(HeadError::Malformed);
                };
                let method = method.to_string();
                let target = target.as_bytes().to_vec();
                let mut hosts = Vec::new();
                let mut names = Vec::new();
                let mut request_id = None;
                let mut proxy_auth = Vec::new();
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("host") {
                        hosts.push(h.value.to_vec());
                    } else if h.name.eq_ignore_ascii_case("proxy-authorization") {
                        proxy_auth.push(h.value.to_vec());
                    } else if h.name.eq_ignore_ascii_case("x-request-id") {
                        request_id = Some(h.value);
                    }
                    names.push(h.name.as_bytes().to_vec());
                }
                let request_id = request_id_from(request_id);
                return Ok(Head {
                    bytes: buf,
                    head_len,
                    method,
                    target,
                    hosts,
                    names,
                    proxy_auth,
                    request_id,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() > max => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}
