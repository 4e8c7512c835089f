//! The MCP exchange on a Streamable HTTP endpoint (an `mcp` entry's host and path). A POST's
//! body is read whole (bounded) and its calls decided before anything goes upstream: a denied
//! `tools/call` is answered here as a JSON-RPC tool result and never forwarded. A forwarded
//! POST's answer (JSON or SSE), like the GET stream's events, has its `tools/list` results
//! filtered on the way back. `request_filter` runs it, on the same phases and upstream
//! connector as the LLM exchange (`proxy::llm`); the decisions are `crate::mcp`'s.

use super::ctx::RequestCtx;
use super::warden::Warden;
use crate::mcp::{self, McpPolicy, RoutingHeaders, SseFilter, ToolDenial};
use crate::reason::Reason;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora_core::protocols::http::client::HttpSession;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use serde_json::Value;
use std::sync::Arc;

const SESSION_ID: &str = "mcp-session-id";

/// What kind of response body the exchange relays.
enum Body {
    Json,
    Sse,
    Pass,
}

impl Warden {
    /// After admission: a POST or a GET (the server's stream) to an MCP endpoint runs the MCP
    /// exchange and returns `Some(true)`; anything else is left to the proxy loop (`None`).
    pub(super) async fn route_mcp(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
        let Some(policy) = ctx.plan()?.mcp.clone() else {
            return Ok(None);
        };
        let (body, complete) = match ctx.method() {
            "POST" => {
                let limit = ctx.snap.limits.llm_buffer_bytes;
                let (body, complete) = super::llm::read_bounded(session, ctx, limit).await?;
                if self
                    .mcp_decide(session, ctx, &policy, &body, complete)
                    .await?
                {
                    return Ok(Some(true));
                }
                (body, complete)
            }
            // The server's stream: nothing to decide; its events are filtered.
            "GET" if !super::edit::upgrade(session) => (BytesMut::new(), true),
            _ => return Ok(None),
        };
        let (peer, req, first) = self.buffered_request(session, ctx, body, complete).await?;
        let idle = ctx.snap.limits.idle_timeout;
        let mut up = self
            .open_and_send(session, ctx, &peer, req, first, complete)
            .await?;
        let result = self.mcp_relay(session, ctx, &mut up, &policy).await;
        self.finish_upstream(up, &peer, result.is_ok(), idle).await;
        result.map(Some)
    }

    /// Decides a POST body; returns `true` when warden answered it (a refusal, or its own
    /// JSON-RPC answer to denied calls), `false` when it goes upstream.
    async fn mcp_decide(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: &McpPolicy,
        body: &[u8],
        complete: bool,
    ) -> Result<bool> {
        if !complete {
            let limit = ctx.snap.limits.llm_buffer_bytes;
            let detail = format!("the body is larger than limits.llm_buffer_bytes ({limit})");
            return self
                .mcp_unreadable(session, ctx, policy, Reason::McpRequestTooLarge, detail)
                .await;
        }
        let headers = &session.req_header().headers;
        let values = |name: &str| -> Vec<&[u8]> {
            headers.get_all(name).iter().map(|v| v.as_bytes()).collect()
        };
        let (method, name) = (values("mcp-method"), values("mcp-name"));
        let read = mcp::read_request(
            body,
            RoutingHeaders {
                method: &method,
                name: &name,
            },
        );
        let exchange = match read {
            Ok(ex) => ex,
            Err(u) => {
                return self
                    .mcp_unreadable(session, ctx, policy, u.reason, u.detail)
                    .await
            }
        };
        ctx.line.mcp_method = exchange.methods();
        ctx.line.mcp_tool = exchange.tools();
        let verdict = mcp::decide(policy, &exchange);
        self.note_tool_denials(ctx, policy, &verdict.denials);
        match verdict.answer {
            Some(answer) => {
                self.mcp_answer(session, ctx, &answer, exchange.batch)
                    .await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A body that cannot be decided: refused with `reason` (`true`), or in report mode noted
    /// as `would_deny` and forwarded (`false`).
    async fn mcp_unreadable(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: &McpPolicy,
        reason: Reason,
        detail: String,
    ) -> Result<bool> {
        ctx.line.error = Some(detail);
        if policy.report {
            ctx.line.would_deny.get_or_insert(reason.code());
            return Ok(false);
        }
        self.refuse(session, ctx, reason).await;
        Ok(true)
    }

    /// Notes refused tools in the line (the tool, the rule) and the metrics; in report mode
    /// as `would_deny`.
    fn note_tool_denials(&self, ctx: &mut RequestCtx, policy: &McpPolicy, denials: &[ToolDenial]) {
        let Some(first) = denials.first() else {
            return;
        };
        let tools: Vec<&str> = denials.iter().map(|d| d.tool.as_str()).collect();
        ctx.line.rule.get_or_insert_with(|| first.rule.clone());
        if policy.report {
            ctx.line
                .would_deny
                .get_or_insert(Reason::McpToolDenied.code());
            return;
        }
        ctx.line.error = Some(format!("tool {} denied", tools.join(",")));
        if ctx.reason.replace(Reason::McpToolDenied).is_none() {
            self.shared.metrics.refused(Reason::McpToolDenied);
        }
    }

    /// Writes warden's own JSON-RPC answer (`202` and no body when there is none to give):
    /// JSON, or SSE when the client accepts only that, with the session id it sent.
    async fn mcp_answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        answer: &[Value],
        batch: bool,
    ) -> Result<()> {
        let req = session.req_header();
        let accept = req
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (content_type, body) = mcp::render(answer, batch, mcp::accepts_only_sse(accept));
        let status = if answer.is_empty() { 202 } else { 200 };
        let mut head = ResponseHeader::build(status, Some(4))?;
        if !answer.is_empty() {
            head.insert_header(header::CONTENT_TYPE, content_type)?;
        }
        let body = if answer.is_empty() {
            Bytes::new()
        } else {
            body
        };
        head.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        head.insert_header(super::edit::X_REQUEST_ID, ctx.request_id())?;
        if let Some(id) = req.headers.get(SESSION_ID) {
            head.insert_header(SESSION_ID, id.clone())?;
        }
        ctx.line.status = Some(status);
        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(|e| e.into_down())?;
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(|e| e.into_down())
    }

    /// Relays the response whose head was read, filtering `tools/list` results in it.
    async fn mcp_relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        policy: &Arc<McpPolicy>,
    ) -> Result<bool> {
        let Some(resp) = up.response_header().cloned() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no upstream response head");
        };
        super::edit::within_head_limit(ctx, &resp)?;
        let text = |name| resp.headers.get(name).and_then(|v| v.to_str().ok());
        let content_type = text(header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let encoded = text(header::CONTENT_ENCODING)
            .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let mut mode = match resp.status.as_u16() {
            200..=299 if content_type.starts_with("text/event-stream") => Body::Sse,
            200..=299 if content_type.contains("json") => Body::Json,
            _ => Body::Pass,
        };
        if encoded && !matches!(mode, Body::Pass) {
            let detail = "the MCP server answered compressed".to_string();
            let reason = Reason::McpResponseUnreadable;
            if self
                .mcp_unreadable(session, ctx, policy, reason, detail)
                .await?
            {
                return Ok(true);
            }
            mode = Body::Pass;
        }
        let mut head = resp;
        super::edit::fit_downstream(&mut head, session.as_http2().is_some())?;
        self.response_filter(session, &mut head, ctx).await?;
        super::edit::transform_head(&mut head, ctx)?;
        match mode {
            Body::Json => self.mcp_relay_json(session, ctx, up, head, policy).await,
            Body::Sse => self.mcp_relay_sse(session, ctx, up, head, policy).await,
            Body::Pass => {
                self.write_head(session, head, ctx).await?;
                self.relay_rest(session, ctx, up).await
            }
        }
    }

    /// A JSON answer: read whole (bounded), its listings filtered, sent with its new length.
    async fn mcp_relay_json(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        mut head: ResponseHeader,
        policy: &Arc<McpPolicy>,
    ) -> Result<bool> {
        let limit = ctx.snap.limits.llm_buffer_bytes;
        let mut body = BytesMut::new();
        let mut over = false;
        while let Some(chunk) = up.read_response_body().await.map_err(|e| e.into_up())? {
            body.extend_from_slice(&chunk);
            over = body.len() > limit;
            if over || up.response_done() {
                break;
            }
        }
        let mut out = body.freeze();
        if over {
            let detail = format!("the response is larger than limits.llm_buffer_bytes ({limit})");
            let reason = Reason::McpResponseUnreadable;
            if self
                .mcp_unreadable(session, ctx, policy, reason, detail)
                .await?
            {
                return Ok(true);
            }
        } else {
            let listing = mcp::filter_listing(policy, &out);
            self.note_hidden(ctx, policy, &listing.removed);
            if let Some(changed) = listing.changed {
                out = Bytes::from(changed);
                if head.headers.contains_key(header::CONTENT_LENGTH) {
                    head.insert_header(header::CONTENT_LENGTH, out.len().to_string())?;
                }
            }
        }
        self.write_head(session, head, ctx).await?;
        let out = super::edit::outgoing(ctx, out, !over);
        session
            .write_response_body(Some(out), !over)
            .await
            .map_err(|e| e.into_down())?;
        match over {
            true => self.relay_rest(session, ctx, up).await,
            false => Ok(true),
        }
    }

    /// An SSE answer or the GET stream: each event out as soon as it is complete.
    async fn mcp_relay_sse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &mut HttpSession,
        mut head: ResponseHeader,
        policy: &Arc<McpPolicy>,
    ) -> Result<bool> {
        if head.headers.contains_key(header::CONTENT_LENGTH) {
            head.remove_header(&header::CONTENT_LENGTH);
            head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        self.write_head(session, head, ctx).await?;
        let mut filter = SseFilter::new(policy.clone(), ctx.snap.limits.llm_buffer_bytes);
        let result = loop {
            let chunk = match up.read_response_body().await {
                Ok(c) => c,
                Err(e) => break Err(e.into_up()),
            };
            let end = chunk.is_none() || up.response_done();
            let out = filter.feed(chunk.as_deref().unwrap_or_default(), end);
            if filter.over && !policy.report {
                ctx.reason = Some(Reason::McpResponseUnreadable);
                break Error::e_explain(ErrorType::Custom("mcp"), "an SSE event over the limit");
            }
            let out = super::edit::outgoing(ctx, out, end);
            if !out.is_empty() || end {
                if let Err(e) = session.write_response_body(Some(out), end).await {
                    break Err(e.into_down());
                }
            }
            if end {
                break Ok(true);
            }
        };
        let removed = std::mem::take(&mut filter.removed);
        self.note_hidden(ctx, policy, &removed);
        result
    }

    /// Notes tools taken out of listings: in report mode as `would_deny` with the rule.
    fn note_hidden(&self, ctx: &mut RequestCtx, policy: &McpPolicy, removed: &[ToolDenial]) {
        let Some(first) = removed.first() else {
            return;
        };
        if policy.report {
            ctx.line
                .would_deny
                .get_or_insert(Reason::McpToolDenied.code());
            ctx.line.rule.get_or_insert_with(|| first.rule.clone());
        }
        let hidden: Vec<&str> = removed.iter().map(|d| d.tool.as_str()).take(8).collect();
        log::debug!("mcp: tools/list without {}", hidden.join(","));
    }
}
