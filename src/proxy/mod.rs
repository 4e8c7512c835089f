//! The Pingora glue: [`Warden`] implements `ProxyHttp` for every request (plain absolute-form
//! and inside intercepted tunnels), and the front door turns raw connections into either
//! HTTP sessions for it or blind tunnels. Each phase builds plain inputs from the `Session`,
//! calls a stage module (`target`, `policy`, `tls`, `telemetry`) and applies the result.

mod buffered;
mod front_door;
mod head;
mod http1;
mod llm;
mod tunnel;
mod upgrade;

use head::{request_id_from, response_head_len};

pub use front_door::FrontDoor;

use crate::admission::admit_request;
use crate::auth::Client;
use crate::config::Snapshot;
use crate::reason::{out_of_fds, reason_in, Reason};
use crate::refusal::{self, X_REQUEST_ID};
use crate::scrub::Replacer;
use crate::state::Shared;
use crate::substitution::{self, Active, Place};
use crate::target::{check_head, Scheme, Target, TunnelIdentity};
use crate::telemetry::{redact_query, CanonicalLog, Capture, Kind};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

/// The `ProxyHttp` implementation.
pub struct Warden {
    shared: Arc<Shared>,
}

impl Warden {
    /// A proxy reading its config from `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Warden { shared }
    }
}

/// Per-request state, created in `new_ctx` with the snapshot this request runs on.
pub struct RequestCtx {
    snap: Arc<Snapshot>,
    started: Instant,
    request_id: String,
    client_addr: Option<String>,
    method: String,
    tunnel: Option<TunnelIdentity>,
    /// The authenticated client (`proxy.auth`).
    client: Option<Arc<Client>>,
    target: Option<Target>,
    reason: Option<Reason>,
    /// The config entry behind a denial.
    rule: Option<String>,
    /// In report mode, what the request would have been denied for.
    would_deny: Option<Reason>,
    /// The credential header to set upstream (read after policy allowed the request).
    inject: Option<(HeaderName, HeaderValue)>,
    /// The injected credential's grant, for the log and metrics.
    grant: Option<String>,
    /// Set once the credential was put on an upstream request.
    injected: bool,
    /// Masks the injected secret in the response, should the origin echo it.
    scrubber: Option<Replacer>,
    /// The correlation sequence number of this request.
    seq: Option<u64>,
    /// Placeholder substitutions in force (secrets read).
    substitutions: Vec<Active>,
    /// Substitutes placeholders in the request body as it streams upstream.
    body_replacer: Option<Replacer>,
    /// A note for the log that did not stop the request.
    alert: Option<&'static str>,
    /// The request body as the agent sent it (before substitution), bounded.
    request_capture: Capture,
    /// The response body as the agent received it (after scrubbing), bounded.
    response_capture: Capture,
    /// Masks this request's credential-like header values in captured bodies.
    log_redactor: Option<Replacer>,
    /// Counts an upgraded (WebSocket) connection as open while it lasts.
    websocket: Option<crate::telemetry::Open>,
    /// Operator detail on a failure warden decided itself (never a secret).
    error: Option<String>,
    /// Status of a response warden wrote itself.
    status: Option<u16>,
    /// The destination has an `llm` entry (responses are asked for uncompressed).
    llm_host: bool,
    /// The LLM API call this request is, if it is one.
    llm: Option<llm::LlmCall>,
    /// Response transformers for the destination.
    transforms: Vec<Arc<crate::transform::Transform>>,
    /// Applies `replace_body` rules to a text response as it streams.
    body_rewriter: Option<crate::transform::BodyRewriter>,
    /// Responses WebSocket: policy on the server's events.
    ws_policy: Option<crate::llm::ws::WsPolicy>,
    /// Responses WebSocket: the model check on the client's events.
    ws_client: Option<crate::llm::ws::ClientCheck>,
}

/// The header operations request and response heads share, for [`rewrite_headers`].
trait Head {
    fn map(&self) -> &http::HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
}

// Pingora's request and response heads have the same methods but no shared trait.
macro_rules! impl_head {
    ($($t:ty),*) => {$(
        impl Head for $t {
            fn map(&self) -> &http::HeaderMap {
                &self.headers
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn append(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
        }
    )*};
}

impl_head!(RequestHeader, ResponseHeader);

/// Rewrites every header value `f` changes, keeping the order of multi-valued headers.
fn rewrite_headers(head: &mut impl Head, f: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Result<()> {
    let hit: Vec<HeaderName> = head
        .map()
        .iter()
        .filter(|(_, v)| f(v.as_bytes()).is_some())
        .map(|(n, _)| n.clone())
        .collect();
    for name in hit {
        let values: Vec<Vec<u8>> = head
            .map()
            .get_all(&name)
            .iter()
            .map(|v| f(v.as_bytes()).unwrap_or_else(|| v.as_bytes().to_vec()))
            .collect();
        head.remove(&name);
        for v in values {
            let value = HeaderValue::from_bytes(&v)
                .map_err(|e| Error::because(ErrorType::InternalError, "rewritten header", e))?;
            head.append(name.clone(), value)?;
        }
    }
    Ok(())
}

impl Warden {
    /// Swaps placeholders for secrets in the upstream request's headers, path and query, and
    /// arms the body replacer (whose output length is unknown, so `Content-Length` goes and
    /// the body is sent chunked).
    fn substitute(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let active = &ctx.substitutions;
        if let Some(replacer) = substitution::header_replacer(active) {
            rewrite_headers(upstream, |v| substitution::in_header(&replacer, v))?;
        }
        let path = upstream.uri.path().to_string();
        let query = upstream.uri.query().map(str::to_string);
        let new_path = substitution::in_url(active, Place::Path, &path);
        let new_query = query
            .as_deref()
            .and_then(|q| substitution::in_url(active, Place::Query, q));
        if new_path.is_some() || new_query.is_some() {
            let path = new_path.unwrap_or(path);
            let uri = match new_query.or(query) {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri = uri
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "substituted URI", e))?;
            upstream.set_uri(uri);
        }
        let in_body: Vec<(Vec<u8>, Vec<u8>)> = active
            .iter()
            .filter(|a| a.applies(Place::Body))
            .map(|a| {
                (
                    a.placeholder.as_bytes().to_vec(),
                    a.secret.expose().as_bytes().to_vec(),
                )
            })
            .collect();
        if !in_body.is_empty() && !session.is_body_empty() {
            upstream.remove_header(&header::CONTENT_LENGTH);
            ctx.body_replacer = Some(Replacer::new(in_body));
        }
        Ok(())
    }
}

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

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1), plus the proxy's own.
const HOP_BY_HOP: [&str; 7] = [
    "proxy-authorization",
    "proxy-connection",
    "proxy-authenticate",
    "keep-alive",
    "te",
    "trailer",
    "http2-settings",
];

fn tunnel_identity(session: &Session) -> Option<TunnelIdentity> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<TunnelIdentity>()
        .cloned()
}

impl Warden {
    /// After admission: an LLM API call runs its own exchange (`proxy::llm`); a Responses
    /// WebSocket gets its model checked now and its frames checked after the 101.
    async fn route_llm(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(target) = ctx.target.as_ref() else {
            return Ok(false);
        };
        ctx.transforms = ctx.snap.transforms.for_dest(&target.authority);
        let Some(policy) = ctx
            .snap
            .llm_for(ctx.client.as_deref())
            .for_dest(&target.authority)
            .cloned()
        else {
            return Ok(false);
        };
        ctx.llm_host = true;
        let upgrade = session.is_upgrade_req();
        let Some(api) = crate::llm::api_for(policy.provider, &ctx.method, &target.path, upgrade)
        else {
            return Ok(false);
        };
        if upgrade && api != crate::llm::Api::Responses {
            return Ok(false);
        }
        if !upgrade {
            return self.llm_exchange(session, ctx, policy, api).await;
        }
        let mut call = llm::LlmCall::new(policy.clone());
        call.model = query_param(&target.path, "model");
        ctx.llm = Some(call);
        if let Some(model) = ctx.llm.as_ref().and_then(|c| c.model.clone()) {
            if let Err(d) = policy.check_model(Some(&model)) {
                if !policy.report {
                    return self
                        .refuse_llm(session, ctx, policy.provider, &d, true)
                        .await;
                }
                self.note_denial(ctx, &d, true);
            }
        }
        let limit = ctx.snap.limits.llm_buffer_bytes;
        ctx.ws_policy = Some(crate::llm::ws::WsPolicy::new(policy.clone(), limit));
        ctx.ws_client = Some(crate::llm::ws::ClientCheck::new(policy, limit));
        Ok(false)
    }

    /// Client frames of a Responses WebSocket: a `response.create` naming a refused model is
    /// not forwarded; the client gets the error events and a close 1008 instead. Anything the
    /// client sends after a denial (its close reply) ends the connection.
    async fn ws_client_frames(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let chunk = body.take().unwrap_or_default();
        let denied = ctx.ws_policy.as_ref().is_some_and(|w| w.events.finished());
        if denied {
            if chunk.is_empty() {
                *body = Some(chunk);
                return Ok(());
            }
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "WebSocket closed after an llm policy denial",
            );
        }
        let Some(check) = ctx.ws_client.as_mut() else {
            *body = Some(chunk);
            return Ok(());
        };
        let (forward, denial) = check.feed(&chunk);
        *body = Some(forward);
        if let Some(d) = denial {
            let mut out = bytes::BytesMut::new();
            if let Some(ws) = ctx.ws_policy.as_mut() {
                ws.events.deny(d.clone(), &mut out);
            }
            self.note_denial(ctx, &d, false);
            session
                .write_response_body(Some(out.freeze()), false)
                .await?;
        }
        Ok(())
    }

    /// `transforms` on a response head: headers removed, then set; a text body that body
    /// rules apply to loses its Content-Length (it is rewritten as it streams).
    fn transform_head(&self, head: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        if ctx.transforms.is_empty() {
            return Ok(());
        }
        for t in &ctx.transforms {
            for name in &t.remove_headers {
                head.remove_header(name);
            }
            for (name, value) in &t.set_headers {
                head.insert_header(name.clone(), value.clone())?;
            }
        }
        let status = head.status.as_u16();
        let has_body = !matches!(status, 101 | 204 | 304) && ctx.method != "HEAD";
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
            ctx.body_rewriter = crate::transform::BodyRewriter::new(&ctx.transforms);
            if ctx.body_rewriter.is_some() {
                head.remove_header(&header::CONTENT_LENGTH);
            }
        }
        Ok(())
    }

    /// What goes to the client for a chunk of response body: body rules, then the echoed-
    /// secret mask (last, so nothing can reintroduce a secret), then the log capture.
    fn outgoing(&self, ctx: &mut RequestCtx, chunk: Bytes, end: bool) -> Bytes {
        let mut chunk = chunk;
        if let Some(r) = ctx.body_rewriter.as_mut() {
            chunk = r.feed(&chunk, end);
        }
        if let Some(scrubber) = ctx.scrubber.as_mut() {
            chunk = scrubber.feed(&chunk, end);
        }
        ctx.response_capture.record(&chunk);
        chunk
    }

    /// Answers the request with warden's own refusal for `reason` and closes the connection.
    async fn refuse(&self, session: &mut Session, ctx: &mut RequestCtx, reason: Reason) {
        self.shared.metrics.refused(reason);
        ctx.reason = Some(reason);
        ctx.status = Some(reason.status());
        let host = ctx
            .target
            .as_ref()
            .map(|t| t.authority.host.to_string())
            .or_else(|| ctx.tunnel.as_ref().map(|t| t.authority.host.to_string()));
        let body = refusal::body(
            reason,
            host.as_deref(),
            ctx.rule.as_deref(),
            Some(&ctx.request_id),
        );
        match refusal::head(reason, &ctx.request_id, body.len()) {
            Ok(head) => {
                if let Err(e) = session.write_error_response(head, body).await {
                    log::debug!("writing a refusal failed: {e}");
                }
            }
            Err(e) => log::warn!("building a refusal failed: {e}"),
        }
    }
}

#[async_trait]
impl ProxyHttp for Warden {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let snap = self.shared.snapshot.load_full();
        let capture = snap.log.body_capture_bytes;
        RequestCtx {
            request_capture: Capture::new(capture),
            response_capture: Capture::new(capture),
            log_redactor: None,
            websocket: None,
            snap,
            started: Instant::now(),
            request_id: String::new(),
            client_addr: None,
            method: String::new(),
            tunnel: None,
            client: None,
            target: None,
            reason: None,
            rule: None,
            would_deny: None,
            inject: None,
            grant: None,
            injected: false,
            scrubber: None,
            seq: None,
            substitutions: Vec::new(),
            body_replacer: None,
            alert: None,

            error: None,
            status: None,
            llm_host: false,
            llm: None,
            transforms: Vec::new(),
            body_rewriter: None,
            ws_policy: None,
            ws_client: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.tunnel = tunnel_identity(session);
        ctx.client_addr = session.client_addr().map(|a| a.to_string());
        let req = session.req_header();
        ctx.method = req.method.as_str().to_string();
        ctx.request_id = request_id_from(req.headers.get(&X_REQUEST_ID).map(HeaderValue::as_bytes));
        let raw = session
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes())
            .unwrap_or_default();
        let hosts: Vec<&[u8]> = req
            .headers
            .get_all(header::HOST)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let limits = &ctx.snap.limits;
        let checked = check_head(
            raw.len(),
            req.raw_path(),
            &hosts,
            ctx.tunnel.as_ref(),
            limits.max_request_header_bytes,
        );
        let idle = limits.idle_timeout;
        match checked {
            Ok(target) => ctx.target = Some(target),
            Err(reason) => {
                self.refuse(session, ctx, reason).await;
                return Ok(true);
            }
        }
        if ctx.snap.log.body_capture_bytes > 0 {
            ctx.log_redactor = sensitive_values(session.req_header());
        }
        let proxy_auth: Vec<&[u8]> = session
            .req_header()
            .headers
            .get_all(header::PROXY_AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let Some(target) = ctx.target.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no target after check_head");
        };
        let admitted = admit_request(
            &ctx.snap,
            &self.shared.own_addrs,
            ctx.tunnel.as_ref(),
            &proxy_auth,
            &ctx.method,
            target,
        );
        match admitted {
            Ok(a) => {
                ctx.client = a.client;
                ctx.seq = a.seq;
                ctx.would_deny = a.would_deny;
                // Every secret warden adds is masked if the origin echoes it back, raw or
                // encoded, and so is the base64 of the header value it went in.
                let secrets: Vec<Vec<u8>> = a
                    .credential
                    .iter()
                    .map(|c| &c.secret)
                    .chain(a.substitutions.iter().map(|s| &s.secret))
                    .map(|s| s.expose().as_bytes().to_vec())
                    .collect();
                let values: Vec<Vec<u8>> = a
                    .credential
                    .iter()
                    .map(|c| c.value.as_bytes().to_vec())
                    .collect();
                if !secrets.is_empty() {
                    ctx.scrubber = Some(ctx.snap.maskers.masking(secrets, values));
                }
                if let Some(c) = a.credential {
                    ctx.grant = c.grant;
                    ctx.inject = Some((c.header, c.value));
                }
                ctx.substitutions = a.substitutions;
                // A placeholder headed for a host it does not belong to is left alone, and
                // flagged: the agent may be trying to exfiltrate, or is misconfigured.
                if let Some(t) = &ctx.target {
                    let foreign = ctx.snap.substitutions_for(ctx.client.as_deref());
                    if foreign.foreign_placeholder_in(&t.authority, &raw) {
                        ctx.alert = Some("placeholder_to_foreign_host");
                    }
                }
            }
            Err(refusal) => {
                if let Some(detail) = &refusal.detail {
                    log::warn!("{detail}");
                }
                ctx.client = refusal.client;
                ctx.seq = refusal.seq;
                ctx.rule = refusal.rule;
                ctx.error = refusal.detail;
                self.refuse(session, ctx, refusal.reason).await;
                return Ok(true);
            }
        }
        session.set_keepalive(Some(idle.as_secs().max(1)));
        // A body may pause only so long between reads; an upgraded connection (its frames
        // ride the same reads) may stay quiet as long as any idle connection.
        let body_idle = if session.is_upgrade_req() {
            idle
        } else {
            ctx.snap.limits.request_body_idle_timeout
        };
        session.set_read_timeout(Some(body_idle));
        session.set_write_timeout(Some(idle));
        self.route_llm(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(target) = ctx.target.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no target after request_filter");
        };
        let limits = &ctx.snap.limits;
        // Resolve once, check every answer, and dial exactly the address that passed.
        let addr = match ctx
            .snap
            .network_for(ctx.client.as_deref())
            .resolve_checked(
                &target.authority,
                limits.upstream_connect_timeout,
                &self.shared.own_addrs,
            )
            .await
        {
            Ok(addr) => addr,
            Err(reason) => {
                ctx.reason = Some(reason);
                let etype = match reason {
                    Reason::DnsError => ErrorType::ConnectNoRoute,
                    _ => ErrorType::HTTPStatus(reason.status()),
                };
                return Error::e_explain(
                    etype,
                    format!("{} refused: {}", target.authority.host, reason.code()),
                );
            }
        };
        let sni = target.authority.host.as_str_unbracketed();
        let mut peer = HttpPeer::new(addr, target.scheme == Scheme::Https, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(limits.upstream_connect_timeout);
        o.total_connection_timeout = Some(limits.upstream_connect_timeout);
        // An upgraded connection may stay quiet for as long as the idle bound allows.
        o.read_timeout = Some(if session.is_upgrade_req() {
            limits.idle_timeout
        } else {
            limits.upstream_first_byte_timeout
        });
        o.write_timeout = Some(limits.idle_timeout);
        o.idle_timeout = Some(limits.idle_timeout);
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = ctx.snap.tls.upstream_roots.clone();
        if session.is_upgrade_req() {
            o.custom_l4 = Some(Arc::new(upgrade::UpgradeConnect {
                timeout: limits.upstream_connect_timeout,
            }));
            peer.group_key = upgrade::UPGRADE_POOL_GROUP;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The request line goes upstream in origin-form.
        let uri = upstream.uri.clone();
        upstream.set_uri(uri);
        let upgrade = session.is_upgrade_req();
        let listed: Vec<String> = upstream
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        for name in HOP_BY_HOP {
            upstream.remove_header(name);
        }
        for name in &listed {
            if !(upgrade && name == "upgrade") {
                upstream.remove_header(name.as_str());
            }
        }
        if !upgrade {
            upstream.remove_header(&header::CONNECTION);
            upstream.remove_header(&header::UPGRADE);
        }
        if let Some(target) = &ctx.target {
            if upstream.headers.get(header::HOST).is_none() {
                let default_port = match target.scheme {
                    Scheme::Http => 80,
                    Scheme::Https => 443,
                };
                let host = if target.authority.port == default_port {
                    target.authority.host.to_string()
                } else {
                    target.authority.to_string()
                };
                upstream.insert_header(header::HOST, host)?;
            }
        }
        upstream.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(target) = &ctx.target {
            let rules = ctx.snap.headers_for(ctx.client.as_deref());
            for rule in rules.for_dest(&target.authority) {
                for name in &rule.remove {
                    upstream.remove_header(name);
                }
                for (name, value) in &rule.set {
                    upstream.insert_header(name.clone(), value.clone())?;
                }
            }
        }
        if let Some(seq) = ctx.seq {
            if let Some(corr) = ctx.snap.correlation_for(ctx.client.as_deref()) {
                for (name, value) in corr.headers(seq) {
                    upstream.insert_header(name, value)?;
                }
            }
        }
        if !ctx.substitutions.is_empty() {
            self.substitute(session, upstream, ctx)?;
        }
        if let Some((name, value)) = ctx.inject.clone() {
            // Overwrites whatever the client sent under that name.
            upstream.insert_header(name, value)?;
            self.shared.metrics.injected(ctx.grant.as_deref());
            ctx.injected = true;
        }
        let rewrites_body = ctx.transforms.iter().any(|t| !t.replace_body.is_empty());
        if ctx.scrubber.is_some() || ctx.llm_host || rewrites_body {
            // An uncompressed response can be scanned for an echoed secret, parsed for LLM
            // policy, or rewritten.
            upstream.insert_header(header::ACCEPT_ENCODING, "identity")?;
        }
        if ctx.ws_policy.is_some() {
            // Frames must stay readable: no permessage-deflate.
            upstream.remove_header("sec-websocket-extensions");
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let limit = ctx.snap.limits.max_response_header_bytes;
        if response_head_len(upstream_response) > limit {
            ctx.reason = Some(Reason::UpstreamHeaderTooLarge);
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                format!("upstream response head over {limit} bytes"),
            );
        }
        // Before Pingora fixes the framing: a removed Content-Length becomes chunked.
        self.transform_head(upstream_response, ctx)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body.as_deref() {
            ctx.request_capture.record(chunk);
        }
        if session.was_upgraded() && ctx.ws_client.is_some() {
            return self.ws_client_frames(session, body, ctx).await;
        }
        if let Some(replacer) = ctx.body_replacer.as_mut() {
            let chunk = body.take().unwrap_or_default();
            *body = end_body(replacer.feed(&chunk, end_of_stream), end_of_stream);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if upstream_response.status == 101 {
            ctx.websocket = Some(self.shared.metrics.open(Kind::Websocket));
            // Both directions carry frames from here on: the log gets a summary of them.
            ctx.request_capture.summarize_frames();
            ctx.response_capture.summarize_frames();
        } else {
            ctx.ws_policy = None;
            ctx.ws_client = None;
        }
        if let Some(scrubber) = &ctx.scrubber {
            rewrite_headers(upstream_response, |v| scrubber.replace_value(v))?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(ws) = ctx.ws_policy.as_mut() {
            let was_finished = ws.events.finished();
            let chunk = body.take().unwrap_or_default();
            *body = Some(ws.feed(&chunk));
            if !was_finished {
                if let Some(d) = ws.events.denied.clone() {
                    self.note_denial(ctx, &d, false);
                }
            }
        }
        let chunk = body.take().unwrap_or_default();
        *body = Some(self.outgoing(ctx, chunk, end_of_stream));
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let reason = *ctx
            .reason
            .get_or_insert_with(|| reason_in(e, session.was_upgraded()));
        if out_of_fds(e) && ctx.error.is_none() {
            ctx.error = Some(format!("out of file descriptors: {}", e.root_cause()));
        }
        let code = match reason {
            // The client is gone or stalled; there is nobody to answer.
            Reason::ClientError | Reason::IdleTimeout => 0,
            _ if session.response_written().is_some() => 0,
            _ => {
                if ctx.request_id.is_empty() {
                    ctx.request_id = request_id_from(None);
                }
                self.refuse(session, ctx, reason).await;
                reason.status()
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // The canonical line records every failure, with the reason code.
        true
    }

    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {}",
            req.method,
            redact_query(&String::from_utf8_lossy(req.raw_path()))
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.request_id.is_empty() {
            // The head never parsed; Pingora answered it. Nothing reached warden's phases.
            return;
        }
        let upgraded = session.was_upgraded();
        let kind = if upgraded {
            Kind::Websocket
        } else if ctx.tunnel.is_some() {
            Kind::Intercepted
        } else {
            Kind::Plain
        };
        let mut line = CanonicalLog::new(kind);
        line.request_id = Some(std::mem::take(&mut ctx.request_id));
        line.seq = ctx.seq;
        line.client = ctx.client.as_ref().map(|c| c.name.to_string()).or_else(|| {
            ctx.tunnel
                .as_ref()
                .and_then(|t| t.client.as_deref().map(str::to_string))
        });
        line.client_addr = ctx.client_addr.take();
        line.method = Some(std::mem::take(&mut ctx.method));
        match (&ctx.target, &ctx.tunnel) {
            (Some(t), _) => {
                line.scheme = Some(t.scheme.as_str());
                line.host = Some(t.authority.host.to_string());
                line.port = Some(t.authority.port);
                line.path = Some(redact_query(&t.path).into_owned());
            }
            (None, Some(tunnel)) => {
                line.scheme = Some(Scheme::Https.as_str());
                line.host = Some(tunnel.authority.host.to_string());
                line.port = Some(tunnel.authority.port);
            }
            (None, None) => {}
        }
        line.status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.status);
        line.bytes_in = session.body_bytes_read() as u64;
        line.bytes_out = session.body_bytes_sent() as u64;
        line.intercepted = ctx.tunnel.is_some();
        line.upgraded = upgraded;
        if let Some(e) = e {
            let reason = *ctx.reason.get_or_insert_with(|| reason_in(e, upgraded));
            // A detail warden noted first (a denial's tool) stays first: the failure after it
            // (the client gone as the error went out) only adds to it.
            let failure = crate::telemetry::error_text(e);
            line.error = Some(match ctx.error.take() {
                Some(detail) => format!("{detail}; {failure}"),
                None => failure,
            });
            line.reason = Some(reason.code());
        } else {
            line.reason = ctx.reason.map(Reason::code);
            line.error = ctx.error.take();
        }
        line.rule = ctx.rule.take();
        line.alert = ctx.alert;
        line.request_body = ctx.request_capture.text(ctx.log_redactor.as_ref());
        line.response_body = ctx.response_capture.text(ctx.log_redactor.as_ref());
        line.would_deny = ctx.would_deny.map(Reason::code);
        if ctx.injected {
            line.injected = ctx
                .inject
                .as_ref()
                .map(|(name, _)| name.as_str().to_string());
            line.grant = ctx.grant.take();
        }
        if let Some(call) = ctx.llm.as_mut() {
            // The latest model a `response.create` named, else the upgrade's `?model=`.
            if let Some(model) = ctx.ws_client.as_ref().and_then(|c| c.model.clone()) {
                call.model = Some(model);
            }
            if let Some(ws) = &ctx.ws_policy {
                call.usage = ws.events.usage;
                call.tools = ws.events.tools.clone();
                if ws.events.denied.is_none() {
                    if let Some(d) = ws
                        .events
                        .would_deny
                        .as_ref()
                        .or(ctx.ws_client.as_ref().and_then(|c| c.would_deny.as_ref()))
                    {
                        call.outcome = "would_deny";
                        line.would_deny = line.would_deny.or(Some(d.reason.code()));
                    }
                }
            }
            call.record(&mut line);
        }
        line.took(ctx.started.elapsed());
        self.shared.metrics.record(line, ctx.snap.log);
    }
}

/// What a request body filter hands back to Pingora for a rewritten chunk. Pingora writes any
/// `Some` chunk to a chunked upstream body, and an empty chunk is itself the terminator, so
/// the last (empty) piece must be `None`: `Some(b"")` at the end put `0\r\n\r\n` on the wire
/// twice, and the origin read the second one as the start of the next request on that pooled
/// connection. Before the end, `None` would mean "end of body", so an empty chunk stays
/// `Some` (Pingora skips it).
fn end_body(out: Bytes, end_of_stream: bool) -> Option<Bytes> {
    (!(out.is_empty() && end_of_stream)).then_some(out)
}

/// The first value of query parameter `name` in a path with query.
fn query_param(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}
