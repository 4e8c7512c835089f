//! The front door: the first thing every client connection meets. It reads the PROXY
//! protocol header a load balancer sends (`proxy.proxy_protocol`), then the first request
//! head (both bounded in size and time); anything but CONNECT is rewound and handed to the HTTP
//! engine running [`Warden`](super::Warden). A CONNECT is decided here — blind tunnel, or
//! interception: `200`, TLS accept with a leaf for the CONNECT host, the tunnel identity bound
//! to the connection, and the decrypted stream handed to the same HTTP engine.

use super::head::{read_head, request_id_from, Head, HeadError, Wait};
use super::http1::{self, Peer};
use super::http2;
use super::tunnel::{self, established};
use super::warden::Warden;
use crate::admission::{admit_connect, ConnectAdmission, Refusal};
use crate::budget::now_ms;
use crate::config::Snapshot;
use crate::proxy_protocol::{self, Mode};
use crate::reason::Reason;
use crate::refusal;
use crate::state::Shared;
use crate::target::{check_head, classify_connect, Authority, TunnelIdentity};
use crate::telemetry::{CanonicalLog, Kind};
use crate::tls::{interception_acceptor, LeafCallbacks};
use bytes::{Bytes, BytesMut};
use openssl::ssl::SslAcceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Ssl, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// A TLS record of type handshake starts every ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Handles each accepted connection.
pub struct FrontDoor {
    shared: Arc<Shared>,
    http: Arc<HttpProxy<Warden>>,
    /// Offers ALPN `h2` and `http/1.1`.
    acceptor: SslAcceptor,
    /// Offers `http/1.1` only (`tls.http2: false`, or a `tls.http1_only` host).
    acceptor_h1: SslAcceptor,
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
            acceptor: interception_acceptor(true)?,
            acceptor_h1: interception_acceptor(false)?,
        })
    }

    /// A front door handing HTTP to another engine, sharing this one's TLS acceptors and so
    /// their session cache: a client resumes its session whichever lane it lands on.
    pub fn for_engine(&self, http: Arc<HttpProxy<Warden>>) -> Self {
        FrontDoor {
            shared: self.shared.clone(),
            http,
            acceptor: self.acceptor.clone(),
            acceptor_h1: self.acceptor_h1.clone(),
        }
    }

    /// Serves one accepted client connection to its end.
    pub async fn serve(self: Arc<Self>, mut stream: L4Stream, shutdown: ShutdownWatch) {
        let snap = self.shared.snapshot.load_full();
        let started = Instant::now();
        // The header is the start of the first request head: one deadline covers both.
        let deadline = started + snap.limits.request_header_timeout;
        if let Err(refused) = proxy_header(&mut stream, snap.proxy_protocol, deadline).await {
            if let Some((reason, detail)) = refused {
                self.refuse_unframed(&stream, &snap, started, reason, detail);
            }
            return;
        }
        // From here on the socket digest names the client (the header's, when there was one):
        // every log line, metric and request of this connection reads it from there.
        let event = Event {
            started,
            client_addr: client_addr(&stream),
            client: None,
        };
        let mut head = match read_head(
            &mut stream,
            BytesMut::new(),
            snap.limits.max_request_header_bytes,
            Wait::Until(deadline),
        )
        .await
        {
            Ok(head) => head,
            Err(HeadError::Closed) => return,
            Err(e) => {
                let (reason, detail) = match e {
                    HeadError::Timeout => (
                        Reason::RequestHeaderTimeout,
                        format!(
                            "request head incomplete after {:?}",
                            snap.limits.request_header_timeout
                        ),
                    ),
                    HeadError::TooLarge => (Reason::HeadersTooLarge, String::new()),
                    HeadError::Malformed(why) => (Reason::MalformedRequest, why),
                    HeadError::Closed => return,
                };
                return self
                    .refuse(stream, &snap, &event, None, reason, Some(detail))
                    .await;
            }
        };
        if !head.method.eq_ignore_ascii_case("CONNECT") {
            // Pre-check the first head with the rules request_filter applies, so requests that
            // Pingora's parser would answer with a bare 400 still get a reason and a log line.
            // Relays and warden's own endpoints are routed by request_filter.
            let hosts: Vec<&[u8]> = head.hosts.iter().map(Vec::as_slice).collect();
            let checked = if crate::relay::served_locally(&head.target) {
                (head.head_len <= snap.limits.max_request_header_bytes)
                    .then_some(())
                    .ok_or(Reason::HeadersTooLarge)
            } else {
                check_head(
                    head.head_len,
                    &head.target,
                    &hosts,
                    None,
                    snap.limits.max_request_header_bytes,
                )
                .map(|_| ())
            }
            .map_err(|r| (r, None))
            .and_then(|_| head.vet().map_err(|(r, d)| (r, Some(d))));
            if let Err((reason, detail)) = checked {
                return self
                    .refuse(stream, &snap, &event, Some(&head), reason, detail)
                    .await;
            }
            let _open = self.shared.metrics.open(Kind::Plain);
            let peer = Peer {
                client_addr: event.client_addr,
                tunnel: None,
                started,
            };
            let stream = Box::new(super::buffered::Buffered::new(stream));
            http1::serve(
                &self.shared,
                &self.http,
                stream,
                Some(head),
                peer,
                &shutdown,
            )
            .await;
            return;
        }
        let dest = match classify_connect(&head.target) {
            Ok(dest) => dest,
            Err(reason) => {
                return self
                    .refuse(stream, &snap, &event, Some(&head), reason, None)
                    .await
            }
        };
        // Decide before side effects: nothing is resolved, minted or dialled for a refusal.
        let values: Vec<&[u8]> = head.proxy_auth.iter().map(Vec::as_slice).collect();
        let admitted = match admit_connect(
            &snap,
            &self.shared.runtime.registry,
            &self.shared.own_addrs,
            &values,
            &dest,
        ) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let event = Event {
                    client: refusal.client.as_ref().map(|c| c.name.clone()),
                    ..event
                };
                return self
                    .refuse_connect(stream, &snap, &event, &head, &dest, refusal, None)
                    .await;
            }
        };
        let event = Event {
            client: admitted.client.as_ref().map(|c| c.name.clone()),
            ..event
        };
        let revoked = admitted.client.as_ref().map(|c| c.revoked.clone());
        // `requests_per_second`: a blind tunnel is one request; an intercepted one only needs
        // a token to be there, since each request inside takes its own.
        if let Err((refusal, retry_after)) = self.connect_budget(&admitted, !admitted.intercept) {
            return self
                .refuse_connect(stream, &snap, &event, &head, &dest, refusal, retry_after)
                .await;
        }
        let network = &snap.profile(admitted.client.as_deref()).network;
        let would_deny = admitted.would_deny;
        let mut rest = Bytes::copy_from_slice(&head.bytes[head.head_len..]);
        // The head's buffer is not needed for the tunnel's lifetime.
        let request_id = std::mem::take(&mut head.request_id);
        drop(head);
        // A CONNECT that waited in the accept queue may belong to a client that has given up:
        // dial nothing, mint nothing, and say so in the log rather than as a 200 tunnel.
        if client_gone(&stream) {
            let mut line = event.line(Kind::Connect);
            line.request_id = Some(request_id);
            fill_connect(&mut line, &dest);
            line.reason = Some(Reason::ClientError.code());
            line.error = Some("client closed before the tunnel was set up".into());
            line.took(event.started.elapsed());
            self.shared.metrics.record(line, snap.log);
            return;
        }
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
                // HTTP through CONNECT), so splice it blind rather than break it. Blind, it is
                // one request: it takes its token now (the 200 is already sent, so a bucket
                // emptied meanwhile cannot refuse it any more).
                intercept = false;
                let _ = self.connect_budget(&admitted, true);
            }
        }
        if intercept {
            stream.rewind(&rest);
            let served = self.intercept(
                stream,
                dest.clone(),
                request_id.clone(),
                &snap,
                &event,
                shutdown,
            );
            if until_revoked(revoked.as_ref(), served).await.is_none() {
                self.connect_failed(
                    &snap,
                    &event,
                    &request_id,
                    &dest,
                    Reason::ClientRevoked,
                    None,
                );
            }
        } else {
            let mut line = event.line(Kind::Tunnel);
            line.request_id = Some(request_id.clone());
            line.would_deny = would_deny.map(Reason::code);
            fill_connect(&mut line, &dest);
            let own = &self.shared.own_addrs;
            let _open = self.shared.metrics.open(Kind::Tunnel);
            let spliced = tunnel::blind(
                &mut stream,
                answered,
                rest,
                &dest,
                &snap,
                network,
                (&self.shared.runtime, own),
                &mut line,
            );
            let spliced = until_revoked(revoked.as_ref(), spliced).await;
            match spliced.unwrap_or(Err(Reason::ClientRevoked)) {
                Ok(()) => {}
                Err(Reason::ClientRevoked) => {
                    line.status = Some(200);
                    line.reason = Some(Reason::ClientRevoked.code());
                }
                Err(reason) => {
                    line.status = Some(reason.status());
                    line.reason = Some(reason.code());
                    self.shared.metrics.refused(reason);
                    refusal::write(&mut stream, reason, Some(&dest), None, &request_id).await;
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
        let leaves = &self.shared.runtime.leaves;
        let leaf = match leaves.leaf_for(&snap.tls.ca, &dest.host, on_mint).await {
            Ok(leaf) => leaf,
            Err(e) => return fail(Reason::Internal, Some(e.to_string())),
        };
        let identity = TunnelIdentity {
            authority: dest.clone(),
            client: event.client.clone(),
            sni: None,
        };
        let callbacks = LeafCallbacks {
            leaf,
            identity: identity.clone(),
        };
        let stream = super::buffered::Buffered::new(stream);
        let acceptor = if snap.tls.h2_for(&dest) {
            &self.acceptor
        } else {
            &self.acceptor_h1
        };
        let handshake = handshake_with_callback(acceptor, stream, &callbacks);
        // The handshake is the start of the tunnel's first request: a client trickling it
        // is bounded like one trickling a head.
        let bound = snap.limits.request_header_timeout;
        let tls = match tokio::time::timeout(bound, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let error = crate::telemetry::error_text(&e);
                return fail(Reason::ClientTlsError, Some(error));
            }
            Err(_) => {
                let error = format!("TLS handshake incomplete after {bound:?}");
                return fail(Reason::RequestHeaderTimeout, Some(error));
            }
        };
        let resumed = tls.get_ssl().is_some_and(|ssl| ssl.session_reused());
        self.shared.metrics.client_handshake(resumed);
        let _open = self.shared.metrics.open(Kind::Intercepted);
        let peer = Peer {
            client_addr: event.client_addr,
            tunnel: Some(identity),
            started: Instant::now(),
        };
        if tls.selected_alpn_proto() == Some(ALPN::H2) {
            return http2::serve(&self.shared, &self.http, Box::new(tls), peer, &shutdown).await;
        }
        http1::serve(
            &self.shared,
            &self.http,
            Box::new(tls),
            None,
            peer,
            &shutdown,
        )
        .await;
    }
}

/// Why a connection was refused before its first request: `None` when it sent nothing
/// (nobody to tell), else the reason and what was wrong.
type Unframed = Option<(Reason, String)>;

/// Reads the PROXY protocol header `mode` asks for, within `deadline` and at most
/// [`proxy_protocol::MAX_HEADER_BYTES`]. Whatever was read past the header (or every byte
/// read, when `optional` found none) is put back for the request reader. The header's client
/// address replaces the peer's in the stream's socket digest, the one place the rest of the
/// connection reads it from; a header naming no client (v2 `LOCAL`, `UNKNOWN`, Unix or
/// unspecified families) leaves the TCP peer there.
async fn proxy_header(
    stream: &mut L4Stream,
    mode: Mode,
    deadline: Instant,
) -> Result<(), Unframed> {
    use proxy_protocol::{step, Step, MAX_HEADER_BYTES};
    if mode == Mode::Off {
        return Ok(());
    }
    let invalid = |why: String| Err(Some((Reason::ProxyProtocolInvalid, why)));
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        match step(&buf) {
            Step::NeedMore => {}
            Step::Absent if mode == Mode::Required => {
                let why = "the connection did not start with a PROXY protocol header".into();
                return Err(Some((Reason::ProxyProtocolMissing, why)));
            }
            Step::Absent => {
                stream.rewind(&buf);
                return Ok(());
            }
            Step::Header { len, source } => {
                if let Some(source) = source {
                    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
                    // A new digest's cells are empty: this cannot fail.
                    let _ = digest.peer_addr.set(Some(source.into()));
                    stream.set_socket_digest(digest);
                }
                stream.rewind(&buf[len..]);
                return Ok(());
            }
            Step::TooLarge => {
                return invalid(format!("PROXY header over {MAX_HEADER_BYTES} bytes"));
            }
            Step::Invalid(why) => return invalid(why),
        }
        // A header still incomplete at the bound is over it (a v1 one is refused earlier).
        let room = MAX_HEADER_BYTES.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return invalid(format!("PROXY header over {MAX_HEADER_BYTES} bytes"));
        }
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk[..room]));
        match read.await {
            Err(_) if buf.is_empty() => return Err(None),
            Err(_) => {
                let why = "PROXY header incomplete at limits.request_header_timeout".into();
                return Err(Some((Reason::RequestHeaderTimeout, why)));
            }
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return Err(None),
            Ok(Ok(0)) | Ok(Err(_)) => return invalid("closed mid-header".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs `fut` until it ends, or until `revoked` is cancelled (`None`: it was dropped, which
/// closes whatever connection it served).
async fn until_revoked<F: std::future::Future>(
    revoked: Option<&tokio_util::sync::CancellationToken>,
    fut: F,
) -> Option<F::Output> {
    match revoked {
        None => Some(fut.await),
        Some(r) => tokio::select! {
            out = fut => Some(out),
            _ = r.cancelled() => None,
        },
    }
}

/// Whether the client has already closed its side, without waiting: the socket, peeked
/// without blocking, reports end of stream (or an error). It asks the kernel, not the
/// runtime's readiness (which can lag a FIN that arrived while the connection sat in the
/// accept queue), and nothing is consumed. Not a zero timeout either: tokio's timer rounds
/// that up to its next 1 ms tick, and every CONNECT would wait for it.
fn client_gone(stream: &L4Stream) -> bool {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    let mut probe = [0u8; 1];
    match recv(
        stream.as_raw_fd(),
        &mut probe,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// The connection's client address, as its socket digest holds it.
fn client_addr(stream: &L4Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().copied()
}

fn fill_connect(line: &mut CanonicalLog, dest: &Authority) {
    line.method = Some("CONNECT".into());
    line.scheme = Some("https");
    line.host = Some(dest.host.to_string());
    line.port = Some(dest.port);
}

impl FrontDoor {
    /// Logs and counts a connection refused before its first request (a PROXY header
    /// missing, broken or late), which is closed without an answer: whoever sent it does
    /// not speak the protocol a reply would be in.
    fn refuse_unframed(
        &self,
        stream: &L4Stream,
        snap: &Snapshot,
        started: Instant,
        reason: Reason,
        detail: String,
    ) {
        self.shared.metrics.refused(reason);
        let mut line = CanonicalLog::new(Kind::Plain);
        line.client_addr = client_addr(stream).map(|a| a.to_string());
        line.request_id = Some(request_id_from(None));
        line.reason = Some(reason.code());
        line.error = Some(detail);
        line.took(started.elapsed());
        self.shared.metrics.record(line, snap.log);
    }

    /// Answers a connection that never reaches the HTTP engine, logs it, and closes.
    async fn refuse(
        &self,
        mut stream: L4Stream,
        snap: &Snapshot,
        event: &Event,
        head: Option<&Head>,
        reason: Reason,
        detail: Option<String>,
    ) {
        let request_id = head
            .map(|h| h.request_id.clone())
            .unwrap_or_else(|| request_id_from(None));
        self.shared.metrics.refused(reason);
        refusal::write(&mut stream, reason, None, None, &request_id).await;
        let connect = head.is_some_and(|h| h.method.eq_ignore_ascii_case("CONNECT"));
        let mut line = event.line(if connect { Kind::Connect } else { Kind::Plain });
        line.request_id = Some(request_id);
        line.method = head.map(|h| h.method.clone());
        line.status = Some(reason.status());
        line.reason = Some(reason.code());
        line.error = detail.filter(|d| !d.is_empty());
        line.took(event.started.elapsed());
        self.shared.metrics.record(line, snap.log);
    }

    /// The client's `requests_per_second` for a CONNECT (`take`: it counts as a request);
    /// a spent bucket is a refusal with its `retry-after`.
    fn connect_budget(
        &self,
        admitted: &ConnectAdmission,
        take: bool,
    ) -> Result<(), (Refusal, Option<u64>)> {
        let Some(client) = &admitted.client else {
            return Ok(());
        };
        let Some(budget) = &client.profile.budget else {
            return Ok(());
        };
        let budgets = &self.shared.runtime.budgets;
        let admitted_now = budgets.admit_request(&client.name, budget, now_ms(), take);
        let standing = budgets.standing(&client.name, budget, now_ms());
        self.shared.metrics.budget_standing(&client.name, &standing);
        admitted_now.map_err(|e| {
            self.shared.metrics.budget_denied(&client.name, e.key);
            let refusal = Refusal {
                reason: Reason::BudgetExceeded,
                rule: Some(e.rule),
                detail: None,
                client: Some(client.clone()),
                seq: None,
                target: None,
                relay: None,
            };
            (refusal, e.retry_after)
        })
    }

    /// Refuses a CONNECT that policy (or a spent budget, with its `retry-after`) denied,
    /// logs it, and closes.
    #[allow(clippy::too_many_arguments)]
    async fn refuse_connect(
        &self,
        mut stream: L4Stream,
        snap: &Snapshot,
        event: &Event,
        head: &Head,
        dest: &Authority,
        refusal: Refusal,
        retry_after: Option<u64>,
    ) {
        let rule = refusal.rule.as_deref();
        self.shared.metrics.refused(refusal.reason);
        refusal::write_with(
            &mut stream,
            refusal.reason,
            Some(dest),
            rule,
            &head.request_id,
            retry_after,
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
