//! What the phases apply to Pingora's heads and session: the request's first facts in the
//! line, timeouts, the upstream peer, [`HeaderOp`]s, response transforms and the echoed-secret
//! mask, and the body helpers. Decisions are made by the stages; this only carries them out.

use super::ctx::RequestCtx;
use super::upgrade;
use crate::admission::{RequestHead, RequestPlan};
use crate::config::{Limits, Snapshot};
use crate::forward::HeaderOp;
use crate::reason::Reason;
use crate::scrub::Replacer;
use crate::state::Shared;
use crate::target::{Authority, Scheme, Target, TunnelIdentity};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) use crate::refusal::X_REQUEST_ID;

/// Header names whose values are never logged, not even echoed inside a captured body.
const SENSITIVE: [&str; 8] = [
    "authorization",
    "cookie",
    "token",
    "key",
    "secret",
    "session",
    "password",
    "credential",
];

/// The request's first facts, into the line: tunnel, client address, method, request id, and
/// the redactor for captured bodies.
pub(super) fn begin(session: &Session, ctx: &mut RequestCtx) {
    ctx.tunnel = tunnel_identity(session);
    ctx.line.client_addr = session.client_addr().map(|a| a.to_string());
    let req = session.req_header();
    ctx.line.method = Some(req.method.as_str().to_string());
    ctx.line.http_version = Some(match req.version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    });
    let content_type = req.headers.get(header::CONTENT_TYPE);
    ctx.flow.grpc = crate::grpc::is_grpc(content_type.map(HeaderValue::as_bytes));
    if ctx.flow.grpc {
        let path = req.uri.path();
        if let Some((service, method)) = crate::grpc::call(path) {
            ctx.line.grpc_service = Some(service.to_string());
            ctx.line.grpc_method = Some(method.to_string());
        }
    }
    let id = req.headers.get(&X_REQUEST_ID).map(HeaderValue::as_bytes);
    ctx.line.request_id = Some(super::head::request_id_from(id));
    if ctx.snap.log.body_capture_bytes > 0 {
        ctx.flow.log_redactor = sensitive_values(req);
    }
}

fn tunnel_identity(session: &Session) -> Option<TunnelIdentity> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<TunnelIdentity>()
        .cloned()
}

/// A redactor for the values of the request's credential-like headers (the whole value, and
/// the part after an auth scheme such as `Bearer`), or `None` if there are none.
fn sensitive_values(req: &RequestHeader) -> Option<Replacer> {
    let mut values = Vec::new();
    for (name, value) in req.headers.iter() {
        let name = name.as_str();
        if !SENSITIVE.iter().any(|s| name.contains(s)) {
            continue;
        }
        let v = value.as_bytes();
        if let Some(pos) = v.iter().rposition(|b| *b == b' ') {
            values.push(v[pos + 1..].to_vec());
        }
        values.push(v.to_vec());
    }
    values.retain(|v| v.len() >= 4);
    (!values.is_empty()).then(|| Replacer::masking_verbatim(values))
}

/// What admission reads of a request head, borrowed from the session.
pub(super) struct Heard<'s> {
    req: &'s RequestHeader,
    raw: Bytes,
    hosts: Vec<&'s [u8]>,
    proxy_auth: Vec<&'s [u8]>,
    authorization: Vec<&'s [u8]>,
    upgrade: bool,
}

impl<'s> Heard<'s> {
    /// The session's request head. An HTTP/2 stream's `:authority` counts as its `Host` (a
    /// `Host` header naming the same authority adds nothing; one naming another makes two),
    /// and its raw head is the HTTP/1-style rendering of its header list.
    pub(super) fn of(session: &'s Session) -> Self {
        let req = session.req_header();
        let mut hosts = values(req, header::HOST);
        let raw = match (session.as_http1(), session.as_http2()) {
            (Some(h1), _) => h1.get_headers_raw_bytes(),
            (None, Some(h2)) => {
                if let Some(authority) = req.uri.authority().map(|a| a.as_str().as_bytes()) {
                    hosts.retain(|h| *h != authority);
                    hosts.insert(0, authority);
                }
                h2.pseudo_raw_h1_request_header()
            }
            (None, None) => Bytes::new(),
        };
        Heard {
            req,
            raw,
            hosts,
            proxy_auth: values(req, header::PROXY_AUTHORIZATION),
            authorization: values(req, header::AUTHORIZATION),
            upgrade: upgrade(session),
        }
    }

    /// The head as admission takes it, arrived through `tunnel`.
    pub(super) fn head<'a>(&'a self, tunnel: Option<&'a TunnelIdentity>) -> RequestHead<'a> {
        RequestHead {
            method: self.req.method.as_str(),
            raw_target: self.req.raw_path(),
            hosts: &self.hosts,
            proxy_auth: &self.proxy_auth,
            authorization: &self.authorization,
            raw: &self.raw,
            tunnel,
            upgrade: self.upgrade,
            scheme: (self.req.version == http::Version::HTTP_2)
                .then(|| self.req.uri.scheme_str().unwrap_or("")),
        }
    }
}

/// Every value of header `name`, as bytes.
fn values(req: &RequestHeader, name: HeaderName) -> Vec<&[u8]> {
    req.headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

/// The upstream peer for `plan`: the destination resolved once, every answer checked, and
/// exactly the address that passed dialled. A refusal comes with the reason decided.
pub(super) async fn dial(
    shared: &Shared,
    snap: &Snapshot,
    plan: &RequestPlan,
    upgrade: bool,
) -> Result<Dialled, (Reason, Box<Error>)> {
    let dest = &plan.target.authority;
    let network = &plan.profile.network;
    let timeout = snap.limits.upstream_connect_timeout;
    let own = &shared.own_addrs;
    if let Some(parent) = snap.upstream_proxy.as_ref().filter(|p| p.carries(dest)) {
        let through = async {
            network.check_through_parent(dest, own)?;
            let addr = network
                .resolve_parent(&shared.runtime.dns, &parent.authority, timeout, own)
                .await?;
            let auth = parent.authorization(&shared.runtime.sources).await?;
            Ok(chained_peer(addr, auth, &plan.target, snap, upgrade))
        };
        return through
            .await
            .map_err(|reason| (reason, unresolved(reason, dest)));
    }
    let resolved = network
        .resolve_checked(&shared.runtime.dns, dest, timeout, own)
        .await;
    match resolved {
        Ok(addr) => Ok(Dialled {
            peer: peer(addr, &plan.target, snap, upgrade),
            via_parent: None,
        }),
        Err(reason) => Err((reason, unresolved(reason, dest))),
    }
}

/// The peer `upstream_peer` returns, and how the request head must travel.
pub(super) struct Dialled {
    /// The peer to connect to (or reuse a pooled connection of).
    pub peer: Box<HttpPeer>,
    /// A plain request to the parent proxy: absolute form, with this `Proxy-Authorization`.
    pub via_parent: Option<Option<HeaderValue>>,
}

/// The peer for `target` through the parent at `parent`. HTTPS and upgrades ride a `CONNECT`
/// tunnel (TLS, SNI and verification for the origin's name, inside it); a plain request goes
/// to the parent itself, in absolute form. Pooled apart per origin and from direct peers.
fn chained_peer(
    parent: SocketAddr,
    auth: Option<HeaderValue>,
    target: &Target,
    snap: &Snapshot,
    upgrade: bool,
) -> Dialled {
    let mut p = peer(parent, target, snap, upgrade);
    let tunnelled = target.scheme == Scheme::Https || upgrade;
    p.group_key = super::chained::pool_group(&target.authority, tunnelled, upgrade);
    let (tunnel_to, via_parent) = if tunnelled {
        (Some(target.authority.clone()), None)
    } else {
        (None, Some(auth.clone()))
    };
    p.options.custom_l4 = Some(Arc::new(super::chained::ParentConnect {
        tunnel_to,
        auth: if tunnelled { auth } else { None },
        timeout: snap.limits.upstream_connect_timeout,
        upgrade,
    }));
    Dialled {
        peer: p,
        via_parent,
    }
}

/// The request head as the parent proxy takes a plain request: the target in absolute form
/// (`http://host:port/path`) and warden's `Proxy-Authorization` for it (the agent's was
/// removed with the other `Proxy-*` headers).
pub(super) fn to_parent(
    upstream: &mut RequestHeader,
    dest: &crate::target::Authority,
    auth: Option<&HeaderValue>,
) -> Result<()> {
    let mut target = format!("http://{dest}").into_bytes();
    let path = upstream.raw_path();
    if !path.starts_with(b"/") {
        target.push(b'/');
    }
    target.extend_from_slice(path);
    upstream.set_raw_path(&target)?;
    upstream.remove_header(&header::PROXY_AUTHORIZATION);
    if let Some(v) = auth {
        upstream.insert_header(header::PROXY_AUTHORIZATION, v.clone())?;
    }
    Ok(())
}

/// Whether the request is an upgrade warden honours: HTTP/1.1 with `Upgrade: websocket`, the
/// same test Pingora's upstream request policy applies. Any other protocol (`h2c` above all)
/// would switch the connection to frames no phase reads: Pingora drops its `Upgrade`,
/// `Connection` and `HTTP2-Settings` on the way upstream and refuses a `101` the origin sends
/// anyway, and warden times and routes the request as a plain one.
pub(super) fn upgrade(session: &Session) -> bool {
    session.is_upgrade_req()
        && session
            .req_header()
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The admitted request's timeouts: a body may pause only so long between reads; an upgraded
/// connection (its frames ride the same reads) may stay quiet as long as any idle connection.
pub(super) fn set_timeouts(session: &mut Session, limits: &Limits) {
    let idle = limits.idle_timeout;
    session.set_keepalive(Some(idle.as_secs().max(1)));
    let body_idle = if upgrade(session) {
        idle
    } else {
        limits.request_body_idle_timeout
    };
    session.set_read_timeout(Some(body_idle));
    session.set_write_timeout(Some(idle));
}

/// The peer for `target` at the checked address `addr`.
pub(super) fn peer(
    addr: SocketAddr,
    target: &Target,
    snap: &Snapshot,
    upgrade: bool,
) -> Box<HttpPeer> {
    let limits = &snap.limits;
    let sni = target.authority.host.as_str_unbracketed();
    let mut peer = HttpPeer::new(addr, target.scheme == Scheme::Https, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(limits.upstream_connect_timeout);
    o.total_connection_timeout = Some(limits.upstream_connect_timeout);
    // An upgraded connection may stay quiet for as long as the idle bound allows.
    o.read_timeout = Some(if upgrade {
        limits.idle_timeout
    } else {
        limits.upstream_first_byte_timeout
    });
    o.write_timeout = Some(limits.idle_timeout);
    o.idle_timeout = Some(limits.idle_timeout);
    o.verify_cert = true;
    o.verify_hostname = true;
    o.ca = snap.tls.upstream_roots.clone();
    if target.scheme == Scheme::Https && !upgrade && snap.tls.h2_for(&target.authority) {
        // The origin picks: h2 connections are multiplexed, and pooled by peer (address,
        // SNI, trust), so tunnels and clients bound for the same origin share them.
        o.alpn = ALPN::H2H1;
        o.max_h2_streams = H2_STREAMS_PER_UPSTREAM;
    }
    if upgrade {
        o.custom_l4 = Some(Arc::new(upgrade::UpgradeConnect {
            timeout: limits.upstream_connect_timeout,
        }));
        peer.group_key = upgrade::UPGRADE_POOL_GROUP;
    }
    Box::new(peer)
}

/// An upgraded connection (WebSocket) whose client was revoked ends at its next frame, either
/// way: a plain `ws://` connection has no tunnel for the revocation to close.
pub(super) fn still_admitted(session: &Session, ctx: &mut RequestCtx) -> Result<()> {
    let revoked = ctx
        .plan
        .as_ref()
        .and_then(|p| p.client.as_ref())
        .is_some_and(|c| c.revoked.is_cancelled());
    if revoked && session.was_upgraded() {
        ctx.reason = Some(Reason::ClientRevoked);
        return Error::e_explain(ErrorType::ConnectionClosed, "the client was revoked");
    }
    Ok(())
}

/// Streams warden opens at once on one upstream HTTP/2 connection before it dials another.
const H2_STREAMS_PER_UPSTREAM: usize = 100;

/// Fits a request head built for the client's connection to the upstream's HTTP version, for
/// the exchanges warden sends itself (Pingora's proxy loop does the same for the rest):
/// HTTP/1.1 as is; HTTP/2 without connection-specific headers, its `Host` moved into an
/// absolute URI's authority.
pub(super) fn fit_upstream(req: &mut RequestHeader, h2: bool) -> Result<()> {
    if !h2 {
        req.set_version(http::Version::HTTP_11);
        return Ok(());
    }
    for name in [
        "transfer-encoding",
        "connection",
        "upgrade",
        "keep-alive",
        "proxy-connection",
    ] {
        req.remove_header(name);
    }
    req.set_version(http::Version::HTTP_2);
    let host = req.remove_header(&header::HOST);
    let authority = match host {
        Some(h) => http::uri::Authority::try_from(h.as_bytes())
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream authority", e))?,
        None => {
            req.uri.authority().cloned().ok_or_else(|| {
                Error::explain(ErrorType::InvalidHTTPHeader, "no upstream authority")
            })?
        }
    };
    let path = req
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = http::Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream URI", e))?;
    req.set_uri(uri);
    Ok(())
}

/// Fits a response head read from the upstream to the client's HTTP version, for the
/// exchanges warden relays itself: an HTTP/2 origin's head going to an HTTP/1.1 client
/// becomes HTTP/1.1, chunked when it has no length (HTTP/2 frames end a body; HTTP/1.1 needs
/// framing).
pub(super) fn fit_downstream(head: &mut ResponseHeader, h2: bool) -> Result<()> {
    if h2 || head.version != http::Version::HTTP_2 {
        return Ok(());
    }
    head.set_version(http::Version::HTTP_11);
    let status = head.status.as_u16();
    let bodyless = matches!(status, 100..=199 | 204 | 304);
    if !bodyless && !head.headers.contains_key(header::CONTENT_LENGTH) {
        head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// The error for a destination that did not resolve to an allowed address.
fn unresolved(reason: Reason, dest: &Authority) -> Box<Error> {
    let etype = match reason {
        Reason::DnsError => ErrorType::ConnectNoRoute,
        _ => ErrorType::HTTPStatus(reason.status()),
    };
    Error::explain(etype, format!("{} refused: {}", dest.host, reason.code()))
}

/// Applies `ops` to the upstream head, in order.
pub(super) fn apply(upstream: &mut RequestHeader, ops: Vec<HeaderOp>) -> Result<()> {
    for op in ops {
        match op {
            HeaderOp::Remove(name) => {
                upstream.remove_header(&name);
            }
            HeaderOp::Set(name, value) => {
                upstream.insert_header(name, value)?;
            }
            HeaderOp::Values(name, values) => {
                upstream.remove_header(&name);
                for v in values {
                    upstream.append_header(name.clone(), v)?;
                }
            }
            HeaderOp::Uri(uri) => upstream.set_uri(uri),
        }
    }
    Ok(())
}

/// Rewrites every response header value `f` changes, keeping the order of multi-valued
/// headers.
pub(super) fn rewrite_headers(
    head: &mut ResponseHeader,
    f: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<()> {
    let hit: Vec<HeaderName> = head
        .headers
        .iter()
        .filter(|(_, v)| f(v.as_bytes()).is_some())
        .map(|(n, _)| n.clone())
        .collect();
    for name in hit {
        let values: Vec<Vec<u8>> = head
            .headers
            .get_all(&name)
            .iter()
            .map(|v| f(v.as_bytes()).unwrap_or_else(|| v.as_bytes().to_vec()))
            .collect();
        head.remove_header(&name);
        for v in values {
            let value = HeaderValue::from_bytes(&v)
                .map_err(|e| Error::because(ErrorType::InternalError, "rewritten header", e))?;
            head.append_header(name.clone(), value)?;
        }
    }
    Ok(())
}

/// Rewrites every trailer value `f` changes (the echoed-secret mask on gRPC and other
/// trailers).
pub(super) fn rewrite_trailers(
    trailers: &mut http::HeaderMap,
    f: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<()> {
    for value in trailers.values_mut() {
        if let Some(v) = f(value.as_bytes()) {
            *value = HeaderValue::from_bytes(&v)
                .map_err(|e| Error::because(ErrorType::InternalError, "rewritten trailer", e))?;
        }
    }
    Ok(())
}

/// `transforms` on a response head: headers removed, then set; a text body that body rules
/// apply to loses its Content-Length (it is rewritten as it streams).
pub(super) fn transform_head(head: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let Some(plan) = ctx.plan.as_ref().filter(|p| !p.transforms.is_empty()) else {
        return Ok(());
    };
    for t in &plan.transforms {
        for name in &t.remove_headers {
            head.remove_header(name);
        }
        for (name, value) in &t.set_headers {
            head.insert_header(name.clone(), value.clone())?;
        }
    }
    let status = head.status.as_u16();
    let has_body = !matches!(status, 101 | 204 | 304) && ctx.method() != "HEAD";
    let encoded = head
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let text = crate::transform::is_text(
        head.headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
    );
    if has_body && text && !encoded {
        ctx.flow.body_rewriter = crate::transform::BodyRewriter::new(&plan.transforms);
        if ctx.flow.body_rewriter.is_some() {
            head.remove_header(&header::CONTENT_LENGTH);
        }
    }
    Ok(())
}

/// What goes to the client for a chunk of response body: body rules, then the echoed-secret
/// mask (last, so nothing can reintroduce a secret), then the log capture.
pub(super) fn outgoing(ctx: &mut RequestCtx, chunk: Bytes, end: bool) -> Bytes {
    let mut chunk = chunk;
    if let Some(r) = ctx.flow.body_rewriter.as_mut() {
        chunk = r.feed(&chunk, end);
    }
    if let Some(scrub) = ctx.plan.as_mut().and_then(|p| p.scrub.as_mut()) {
        chunk = scrub.feed(&chunk, end);
    }
    ctx.flow.response_capture.record(&chunk);
    chunk
}

/// What a request body filter hands back to Pingora for a rewritten chunk. Pingora writes any
/// `Some` chunk to a chunked upstream body, and an empty chunk is itself the terminator, so
/// the last (empty) piece must be `None`: `Some(b"")` at the end put `0\r\n\r\n` on the wire
/// twice, and the origin read the second one as the start of the next request on that pooled
/// connection. Before the end, `None` would mean "end of body", so an empty chunk stays
/// `Some` (Pingora skips it).
pub(super) fn end_body(out: Bytes, end_of_stream: bool) -> Option<Bytes> {
    (!(out.is_empty() && end_of_stream)).then_some(out)
}

/// warden's refusal for `reason`, as a Pingora head and its body.
pub(super) fn refusal(
    reason: Reason,
    host: Option<&str>,
    rule: Option<&str>,
    request_id: &str,
) -> Result<(ResponseHeader, Bytes)> {
    let body = crate::refusal::body(reason, host, rule, Some(request_id));
    let head = crate::refusal::head(reason, request_id, body.len())?;
    Ok((head, body))
}

/// Refuses an upstream response head over `limits.max_response_header_bytes`
/// (`upstream_header_too_large`), in every path that relays one.
pub(super) fn within_head_limit(ctx: &mut RequestCtx, head: &ResponseHeader) -> Result<()> {
    let limit = ctx.snap.limits.max_response_header_bytes;
    if super::head::response_head_len(head) > limit {
        ctx.reason = Some(Reason::UpstreamHeaderTooLarge);
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            format!("upstream response head over {limit} bytes"),
        );
    }
    Ok(())
}
