//! The LLM API exchange. A call to an API warden understands (`llm` entry + method + path) is
//! not left to Pingora's proxy loop: its request body must be read and the model checked
//! before anything goes upstream, and while a tool call is held the client must get
//! keep-alives even when the origin is silent — neither fits the body-filter callbacks, which
//! only run when bytes arrive. So `request_filter` runs the exchange here, with the same
//! phases (`upstream_peer`, `upstream_request_filter`, `response_filter`) and Pingora's own
//! upstream connector, and returns "response sent". Errors take the usual path
//! (`fail_to_proxy`, `logging`), marked with their side (`into_up`/`into_down`) here, since
//! Pingora's own loop that would mark them is not running.

use super::ctx::{LlmCall, RequestCtx};
use super::warden::Warden;
use crate::llm::stream::{SsePolicy, KEEPALIVE};
use crate::llm::{self, Api, Denial, LlmPolicy};
use crate::reason::Reason;
use crate::telemetry::Capture;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What kind of response body the exchange is relaying.
enum Body {
    Sse(Box<SsePolicy>),
    Json,
    Pass,
}

fn header_str(resp: &ResponseHeader, name: header::HeaderName) -> Option<&str> {
    resp.headers.get(name).and_then(|v| v.to_str().ok())
}

impl Warden {
    /// Notes a denial in the ctx (log, metrics); `report` turns it into `would_deny`.
    pub(super) fn note_denial(&self, ctx: &mut RequestCtx, d: &Denial, report: bool) {
        if ctx.deny(d, report) {
            self.shared.metrics.refused(d.reason);
        }
    }

    /// Answers with the provider's own error shape, before any response head went out.
    pub(super) async fn refuse_llm(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        provider: llm::Provider,
        d: &Denial,
        close: bool,
    ) -> Result<bool> {
        self.note_denial(ctx, d, false);
        let body = llm::error_body(provider, d);
        let status = d.reason.status();
        ctx.line.status = Some(status);
        // warden's own refusal head (JSON, Proxy-Status, X-Request-Id, close), in the
        // provider's terms: SDKs must not retry (a spent window they may, after
        // `retry-after`), and a fully read request may keep the connection.
        let mut head = crate::refusal::head(d.reason, ctx.request_id(), body.len())?;
        let retry_after = d.budget.as_ref().and_then(|b| b.retry_after);
        match retry_after {
            Some(secs) => head.insert_header(header::RETRY_AFTER, secs.to_string())?,
            None => head.insert_header("x-should-retry", "false")?,
        }
        if provider == llm::Provider::Anthropic {
            head.insert_header("request-id", ctx.request_id())?;
        }
        if close {
            session.set_keepalive(None);
        } else {
            head.remove_header(&header::CONNECTION);
        }
        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(|e| e.into_down())?;
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(|e| e.into_down())?;
        Ok(true)
    }

    /// Runs one LLM API call end to end (see the module doc). Returns `Ok(true)`: the
    /// response was written here.
    pub(super) async fn llm_exchange(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: Arc<LlmPolicy>,
        api: Api,
    ) -> Result<bool> {
        let limit = ctx.snap.limits.llm_buffer_bytes;
        let provider = policy.provider;
        ctx.flow.llm = Some(LlmCall::new(policy.clone()));

        // 1. The request body, bounded, before anything goes upstream.
        let (body, complete) = read_bounded(session, ctx, limit).await?;
        if !complete {
            let d = Denial::new(
                Reason::LlmRequestTooLarge,
                format!(
                    "warden (the egress proxy) refused the request: its body is larger than limits.llm_buffer_bytes ({limit} bytes), so its model cannot be checked."
                ),
            );
            if !policy.report {
                return self.refuse_llm(session, ctx, provider, &d, true).await;
            }
            self.note_denial(ctx, &d, true);
        } else {
            let facts = llm::inspect_request(&body);
            if let Some(call) = ctx.flow.llm.as_mut() {
                call.model = facts.model.clone();
            }
            if let Err(d) = policy.check_model(facts.model.as_deref()) {
                if !policy.report {
                    return self.refuse_llm(session, ctx, provider, &d, false).await;
                }
                self.note_denial(ctx, &d, true);
            }
        }
        // The client's budgets, last before the upstream: a refused call is not counted.
        if let Some(spender) = ctx.spender() {
            if let Err(d) = self.admit_llm_call(&spender, true) {
                return self.refuse_llm(session, ctx, provider, &d, !complete).await;
            }
        }

        // 2. The upstream request, through the same phases as any other.
        let (peer, req, first) = self.buffered_request(session, ctx, body, complete).await?;
        let idle = ctx.snap.limits.idle_timeout;
        let mut up = self
            .open_and_send(session, ctx, &peer, req, first, complete)
            .await?;
        let result = self.relay(session, ctx, &mut up, &policy, api).await;
        let answered = up.response_header().is_some_and(|r| r.status.is_success());
        self.charge_llm_call(session, ctx, answered);
        self.finish_upstream(up, &peer, result.is_ok(), idle).await;
        result
    }

    /// The peer, upstream head and first body bytes of a request whose body was read into
    /// `body` (all of it when `complete`), through the same phases as any other request.
    pub(super) async fn buffered_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: BytesMut,
        complete: bool,
    ) -> Result<(Box<HttpPeer>, pingora_http::RequestHeader, Bytes)> {
        let peer = self.upstream_peer(session, ctx).await?;
        let mut req = session.req_header().clone();
        self.upstream_request_filter(session, &mut req, ctx).await?;
        req.remove_header(&header::EXPECT);
        let mut first = body.freeze();
        if let Some(r) = ctx.flow.body_replacer.as_mut() {
            first = r.feed(&first, complete);
        }
        if complete {
            req.remove_header(&header::TRANSFER_ENCODING);
            req.insert_header(header::CONTENT_LENGTH, first.len().to_string())?;
        } else if ctx.flow.body_replacer.is_some() {
            req.remove_header(&header::CONTENT_LENGTH);
            req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok((peer, req, first))
    }

    /// Returns the upstream connection to the pool when its response was read whole (`ok`),
    /// and closes it otherwise.
    pub(super) async fn finish_upstream(
        &self,
        mut up: HttpSession,
        peer: &HttpPeer,
        ok: bool,
        idle: Duration,
    ) {
        if ok && up.response_done() {
            self.shared
                .connector
                .0
                .release_http_session(up, peer, Some(idle))
                .await;
        } else {
            up.shutdown().await;
        }
    }

    /// Opens an upstream connection to `peer` and sends the request (head, the buffered
    /// `first` bytes, the rest of the body if `complete` is false), reading the response head.
    pub(super) async fn open_and_send(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        peer: &HttpPeer,
        req: pingora_http::RequestHeader,
        first: Bytes,
        complete: bool,
    ) -> Result<HttpSession> {
        let limits = ctx.snap.limits.clone();
        // A pooled connection may have been closed by the origin meanwhile: when sending on
        // one fails before any response byte, the buffered request is sent again on another.
        let mut attempts = 0;
        loop {
            let (mut up, reused) = self.shared.connector.0.get_http_session(peer).await?;
            up.set_write_timeout(Some(limits.idle_timeout));
            up.set_read_timeout(Some(limits.upstream_first_byte_timeout));
            let mut req = req.clone();
            super::edit::fit_upstream(&mut req, up.as_http2().is_some())?;
            match self
                .send(session, ctx, &mut up, req, first.clone(), complete)
                .await
            {
                Ok(()) => return Ok(up),
                Err(e) if reused && complete && attempts < 2 => {
                    attempts += 1;
                    log::debug!("retrying a buffered request on a new connection: {e}");
                    up.shutdown().await;
                }
                Err(e) => {
                    up.shutdown().await;
                    return Err(e);
                }
            }
        }
    }

    /// Sends the request (head, buffered body, the rest if it was not all buffered) and reads
    /// the response head.
    async fn send(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        req: pingora_http::RequestHeader,
        first: Bytes,
        complete: bool,
    ) -> Result<()> {
        up.write_request_header(Box::new(req))
            .await
            .map_err(|e| e.into_up())?;
        up.write_request_body(first, complete)
            .await
            .map_err(|e| e.into_up())?;
        if !complete {
            while let Some(chunk) = session
                .read_request_body()
                .await
                .map_err(|e| e.into_down())?
            {
                ctx.flow.request_capture.record(&chunk);
                let end = session.is_body_done();
                let chunk = match ctx.flow.body_replacer.as_mut() {
                    Some(r) => r.feed(&chunk, end),
                    None => chunk,
                };
                up.write_request_body(chunk, end)
                    .await
                    .map_err(|e| e.into_up())?;
            }
        }
        up.finish_request_body().await.map_err(|e| e.into_up())?;
        up.read_response_header().await.map_err(|e| e.into_up())
    }

    /// Relays the response whose head `send` read, applying policy to its body.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        policy: &Arc<LlmPolicy>,
        api: Api,
    ) -> Result<bool> {
        let limit = ctx.snap.limits.llm_buffer_bytes;
        let provider = policy.provider;
        let Some(resp) = up.response_header().cloned() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no upstream response head");
        };
        super::edit::within_head_limit(ctx, &resp)?;
        let status = resp.status.as_u16();
        if let Some(plan) = ctx.plan.as_ref() {
            plan.upstream_answered(status, &self.shared.runtime);
        }
        let content_type = header_str(&resp, header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let encoded = header_str(&resp, header::CONTENT_ENCODING)
            .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let mut mode = if !(200..300).contains(&status) {
            Body::Pass
        } else if content_type.starts_with("text/event-stream") {
            Body::Sse(Box::new(SsePolicy::new(api, policy.clone(), limit)))
        } else if content_type.contains("json") {
            Body::Json
        } else {
            Body::Pass
        };
        if encoded && !matches!(mode, Body::Pass) {
            let d = Denial::new(
                Reason::LlmResponseUnreadable,
                "warden (the egress proxy) could not check the response: the provider sent it compressed.",
            );
            if !policy.report {
                return self.refuse_llm(session, ctx, provider, &d, true).await;
            }
            self.note_denial(ctx, &d, true);
            mode = Body::Pass;
        }
        let mut head = resp;
        super::edit::fit_downstream(&mut head, session.as_http2().is_some())?;
        self.response_filter(session, &mut head, ctx).await?;
        super::edit::transform_head(&mut head, ctx)?;

        match mode {
            Body::Json => self.relay_json(session, ctx, up, head, policy, api).await,
            Body::Sse(sse) => self.relay_sse(session, ctx, up, head, *sse).await,
            Body::Pass => {
                self.write_head(session, head, ctx).await?;
                self.relay_rest(session, ctx, up).await
            }
        }
    }

    /// Writes the response head; a body warden may change goes out chunked.
    pub(super) async fn write_head(
        &self,
        session: &mut Session,
        mut head: ResponseHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        if ctx.flow.body_rewriter.is_some() && head.headers.contains_key(header::CONTENT_LENGTH) {
            head.remove_header(&header::CONTENT_LENGTH);
            head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(|e| e.into_down())
    }

    /// Relays the rest of the response body as it comes, through the response-side edits.
    pub(super) async fn relay_rest(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
    ) -> Result<bool> {
        loop {
            let chunk = up.read_response_body().await.map_err(|e| e.into_up())?;
            let end = chunk.is_none() || up.response_done();
            let out = super::edit::outgoing(ctx, chunk.unwrap_or_default(), end);
            session
                .write_response_body(Some(out), end)
                .await
                .map_err(|e| e.into_down())?;
            if end {
                return Ok(true);
            }
        }
    }

    async fn relay_json(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        head: ResponseHeader,
        policy: &Arc<LlmPolicy>,
        api: Api,
    ) -> Result<bool> {
        let limit = ctx.snap.limits.llm_buffer_bytes;
        let provider = policy.provider;
        let mut body = BytesMut::new();
        let mut over = false;
        while let Some(chunk) = up.read_response_body().await.map_err(|e| e.into_up())? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                over = true;
                break;
            }
            if up.response_done() {
                break;
            }
        }
        let verdict = if over {
            Err(Denial::new(
                Reason::LlmBodyTooLarge,
                format!(
                    "warden (the egress proxy) stopped the response: it is larger than limits.llm_buffer_bytes ({limit} bytes), so its tool calls cannot be checked."
                ),
            ))
        } else {
            match llm::inspect_json(api, &body) {
                Some((calls, usage)) => {
                    let mut first = Ok(());
                    if let Some(call) = ctx.flow.llm.as_mut() {
                        call.usage = usage;
                        call.tools = calls.iter().map(|c| c.name.clone()).collect();
                    }
                    for c in &calls {
                        if first.is_ok() {
                            first = policy.check_tool(&c.name, &c.arguments);
                        }
                    }
                    first
                }
                None => Err(Denial::new(
                    Reason::LlmResponseUnreadable,
                    "warden (the egress proxy) could not check the response: it is not valid JSON.",
                )),
            }
        };
        if let Err(d) = verdict {
            if !policy.report {
                return self.refuse_llm(session, ctx, provider, &d, over).await;
            }
            self.note_denial(ctx, &d, true);
        }
        self.charge_reported(ctx);
        self.write_head(session, head, ctx).await?;
        let end = !over;
        let out = super::edit::outgoing(ctx, body.freeze(), end);
        session
            .write_response_body(Some(out), end)
            .await
            .map_err(|e| e.into_down())?;
        if over {
            self.relay_rest(session, ctx, up).await
        } else {
            Ok(true)
        }
    }

    async fn relay_sse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        mut head: ResponseHeader,
        mut sse: SsePolicy,
    ) -> Result<bool> {
        if head.headers.contains_key(header::CONTENT_LENGTH) {
            head.remove_header(&header::CONTENT_LENGTH);
            head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        self.write_head(session, head, ctx).await?;
        let result = self.relay_events(session, ctx, up, &mut sse).await;
        // Whatever ended the relay, what the stream showed is recorded: a denial decided
        // before a failed write (the client gone as the error event went out) is still the
        // outcome, not the write error after it.
        let events = &sse.events;
        if let Some(call) = ctx.flow.llm.as_mut() {
            call.usage = events.usage;
            call.tools = events.tools.clone();
        }
        if let Some(d) = events.denied.clone() {
            self.note_denial(ctx, &d, false);
        } else if let Some(d) = events.would_deny.clone() {
            self.note_denial(ctx, &d, true);
        }
        result
    }

    async fn relay_events(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        sse: &mut SsePolicy,
    ) -> Result<bool> {
        let interval = ctx.snap.limits.llm_keepalive_interval;
        // Keep-alives go between events; a body rewriter may be holding part of one.
        let keepalives = ctx.flow.body_rewriter.is_none();
        let mut last_keepalive: Option<Instant> = None;
        loop {
            let holding = sse.events.holding_since().filter(|_| keepalives);
            let chunk =
                read_with_keepalives(up, session, holding, &mut last_keepalive, interval).await?;
            let end = chunk.is_none() || up.response_done();
            let out = sse.feed(chunk.as_deref().unwrap_or_default(), end);
            let done = end || sse.events.finished();
            let out = super::edit::outgoing(ctx, out, done);
            if done {
                if let Some(call) = ctx.flow.llm.as_mut() {
                    call.usage = sse.events.usage;
                }
                self.charge_reported(ctx);
            }
            if !out.is_empty() || done {
                session
                    .write_response_body(Some(out), done)
                    .await
                    .map_err(|e| e.into_down())?;
            }
            if done {
                return Ok(true);
            }
        }
    }
}

/// Reads the request body into a buffer of at most about `limit` bytes; `false` when it did not
/// all fit (the rest is still to be read). A client waiting for `100 Continue` (curl does for
/// larger bodies) gets it from warden: the origin sees the whole body at once.
pub(super) async fn read_bounded(
    session: &mut Session,
    ctx: &mut RequestCtx,
    limit: usize,
) -> Result<(BytesMut, bool)> {
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|e| e.into_down())?;
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        ctx.flow.request_capture.record(&chunk);
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Ok((body, false));
        }
    }
    Ok((body, true))
}

/// Reads the next upstream body chunk; while a tool call is held, writes an SSE keep-alive to
/// the client every `interval` of silence.
async fn read_with_keepalives(
    up: &mut HttpSession,
    session: &mut Session,
    holding: Option<Instant>,
    last: &mut Option<Instant>,
    interval: Duration,
) -> Result<Option<Bytes>> {
    let read = up.read_response_body();
    tokio::pin!(read);
    loop {
        let Some(since) = holding else {
            return read.await.map_err(|e| e.into_up());
        };
        let from = match *last {
            Some(l) if l > since => l,
            _ => since,
        };
        let deadline = tokio::time::Instant::from_std(from + interval);
        tokio::select! {
            r = &mut read => return r.map_err(|e| e.into_up()),
            _ = tokio::time::sleep_until(deadline) => {
                session
                    .write_response_body(Some(Bytes::from_static(KEEPALIVE)), false)
                    .await
                    .map_err(|e| e.into_down())?;
                *last = Some(Instant::now());
            }
        }
    }
}

impl Warden {
    /// After admission: an LLM API call runs its own exchange (`proxy::llm`); a Responses
    /// WebSocket gets its model checked now and its frames checked after the 101.
    pub(super) async fn route_llm(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some((policy, api)) = self.llm_api(session, ctx)? else {
            return Ok(false);
        };
        if !ctx.snap.log.capture_llm_bodies {
            // Prompts and completions stay out of the log unless asked for.
            ctx.flow.request_capture = Capture::new(0);
            ctx.flow.response_capture = Capture::new(0);
        }
        if !super::edit::upgrade(session) {
            return self.llm_exchange(session, ctx, policy, api).await;
        }
        let mut call = LlmCall::new(policy.clone());
        call.model = query_param(&ctx.plan()?.target.path, "model");
        let model = call.model.clone();
        ctx.flow.llm = Some(call);
        if let Some(model) = model {
            if let Err(d) = policy.check_model(Some(&model)) {
                if !policy.report {
                    return self
                        .refuse_llm(session, ctx, policy.provider, &d, true)
                        .await;
                }
                self.note_denial(ctx, &d, true);
            }
        }
        // The socket's calls are counted one `response.create` at a time; a client whose
        // budget is spent now is refused before the 101.
        if let Some(spender) = ctx.spender() {
            if let Err(d) = self.admit_llm_call(&spender, false) {
                return self
                    .refuse_llm(session, ctx, policy.provider, &d, true)
                    .await;
            }
        }
        let limit = ctx.snap.limits.llm_buffer_bytes;
        ctx.flow.ws_policy = Some(crate::llm::ws::WsPolicy::new(policy.clone(), limit));
        ctx.flow.ws_client = Some(crate::llm::ws::ClientCheck::new(policy, limit));
        Ok(false)
    }

    /// The LLM API an admitted request calls, with the `llm` entry that applies: `None` when
    /// it calls none warden understands (a WebSocket other than the Responses one included).
    pub(super) fn llm_api(
        &self,
        session: &Session,
        ctx: &RequestCtx,
    ) -> Result<Option<(Arc<LlmPolicy>, Api)>> {
        let plan = ctx.plan()?;
        let Some(policy) = plan.llm.clone() else {
            return Ok(None);
        };
        let upgrade = super::edit::upgrade(session);
        let api = crate::llm::api_for(policy.provider, ctx.method(), &plan.target.path, upgrade);
        Ok(api
            .filter(|a| !upgrade || *a == Api::Responses)
            .map(|a| (policy, a)))
    }

    /// Client frames of a Responses WebSocket: a `response.create` naming a refused model is
    /// not forwarded; the client gets the error events and a close 1008 instead. Anything the
    /// client sends after a denial (its close reply) ends the connection.
    pub(super) async fn ws_client_frames(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let chunk = body.take().unwrap_or_default();
        let denied = ctx
            .flow
            .ws_policy
            .as_ref()
            .is_some_and(|w| w.events.finished());
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
        let spender = ctx.spender();
        let Some(check) = ctx.flow.ws_client.as_mut() else {
            *body = Some(chunk);
            return Ok(());
        };
        // Each `response.create` is a call: counted, and refused on a spent budget.
        let mut admit = || match &spender {
            Some(s) => self.admit_llm_call(s, true),
            None => Ok(()),
        };
        let (forward, denial) = check.feed(&chunk, &mut admit);
        *body = Some(forward);
        if let Some(d) = denial {
            let mut out = bytes::BytesMut::new();
            if let Some(ws) = ctx.flow.ws_policy.as_mut() {
                ws.events.deny(d.clone(), &mut out);
            }
            self.note_denial(ctx, &d, false);
            session
                .write_response_body(Some(out.freeze()), false)
                .await?;
        }
        Ok(())
    }
}

/// The first value of query parameter `name` in a path with query.
fn query_param(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}
