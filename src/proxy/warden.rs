//! [`Warden`], the `ProxyHttp` implementation every request runs through (plain absolute-form
//! and inside intercepted tunnels). Each phase reads the session, calls one stage and applies
//! what it returns: admission plans the request, `forward` edits its head, the edit helpers
//! ([`super::edit`]) apply those edits and the response-side rules, and the context fills the
//! canonical line as the request goes.

use super::ctx::{Delivered, RequestCtx};
use super::edit;
use crate::admission::admit_request;
use crate::forward::{upstream_edits, Incoming};
use crate::reason::Reason;
use crate::state::Shared;
use crate::telemetry::{redact_query, Kind};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// The `ProxyHttp` implementation.
pub struct Warden {
    pub(super) shared: Arc<Shared>,
}

impl Warden {
    /// A proxy reading its config from `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Warden { shared }
    }

    /// Answers the request with warden's own refusal for `reason` and closes the connection.
    pub(super) async fn refuse(&self, session: &mut Session, ctx: &mut RequestCtx, reason: Reason) {
        self.shared.metrics.refused(reason);
        if ctx.line.request_id.is_none() {
            // A failure before `request_filter` ran: the refusal still carries an id.
            ctx.line.request_id = Some(super::head::request_id_from(None));
        }
        ctx.reason = Some(reason);
        ctx.line.status = Some(reason.status());
        if ctx.flow.grpc {
            return self.refuse_grpc(session, ctx, reason).await;
        }
        let host = ctx.host();
        let head = edit::refusal(
            reason,
            host.as_deref(),
            ctx.line.rule.as_deref(),
            ctx.request_id(),
        );
        let head = head.and_then(|(mut head, body)| {
            if let Some(secs) = ctx.flow.retry_after {
                head.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
            }
            Ok((head, body))
        });
        match head {
            Ok((head, body)) => {
                if let Err(e) = session.write_error_response(head, body).await {
                    log::debug!("writing a refusal failed: {e}");
                }
            }
            Err(e) => log::warn!("building a refusal failed: {e}"),
        }
    }
}

impl Warden {
    /// Refuses a gRPC call the way gRPC clients read it: trailers-only, `grpc-status` and
    /// `grpc-message` naming the reason.
    async fn refuse_grpc(&self, session: &mut Session, ctx: &mut RequestCtx, reason: Reason) {
        let sized = session.as_http2().is_none();
        let status = crate::grpc::status_for(reason);
        ctx.line.grpc_status = Some(status);
        ctx.line.status = Some(200);
        let head = match crate::grpc::refusal_head(reason, ctx.request_id(), sized) {
            Ok(head) => Box::new(head),
            Err(e) => return log::warn!("building a gRPC refusal failed: {e}"),
        };
        let written = match session.as_downstream_mut() {
            // One HEADERS frame with END_STREAM: what gRPC calls trailers-only.
            ServerSession::H2(h2) => h2.write_response_header(head, true),
            _ => {
                // Like every refusal on HTTP/1.x: the body the client may still be sending
                // is not read, so the connection closes.
                session.set_keepalive(None);
                session.write_response_header(head, true).await
            }
        };
        if let Err(e) = written {
            log::debug!("writing a gRPC refusal failed: {e}");
        }
    }
}

#[async_trait]
impl ProxyHttp for Warden {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.snapshot.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        edit::begin(session, ctx);
        if self.aws_endpoint(session, ctx).await? {
            return Ok(true);
        }
        let heard = edit::Heard::of(session);
        let shared = &self.shared;
        let head = heard.head(ctx.tunnel.as_ref());
        match admit_request(&ctx.snap, &shared.runtime, &shared.own_addrs, &head).await {
            Ok(plan) => ctx.admitted(plan),
            Err(refusal) => {
                let reason = ctx.refused(refusal);
                self.refuse(session, ctx, reason).await;
                return Ok(true);
            }
        }
        edit::set_timeouts(session, &ctx.snap.limits);
        if self.over_request_budget(session, ctx).await? || self.aws_prepare(session, ctx).await? {
            return Ok(true);
        }
        if let Some(answered) = self.route_mcp(session, ctx).await? {
            return Ok(answered);
        }
        self.route_llm(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let upgrade = edit::upgrade(session);
        let dialled = edit::dial(&self.shared, &ctx.snap, ctx.plan()?, upgrade).await;
        match dialled {
            Ok(d) => {
                ctx.flow.via_parent = d.via_parent;
                Ok(d.peer)
            }
            Err((reason, e)) => {
                ctx.reason = Some(reason);
                Err(e)
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let edits = upstream_edits(ctx.plan()?, incoming(session, upstream, ctx))
            .map_err(|e| Error::because(ErrorType::InternalError, "upstream head", e))?;
        edit::apply(upstream, edits.ops)?;
        self.aws_sign(upstream, ctx)?;
        if let Some(auth) = &ctx.flow.via_parent {
            edit::to_parent(upstream, &ctx.plan()?.target.authority, auth.as_ref())?;
        }
        ctx.flow.body_replacer = edits.body;
        if edits.injects {
            self.shared.metrics.injected(ctx.injected());
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        edit::within_head_limit(ctx, upstream_response)?;
        if ctx.flow.via_parent.is_some() && upstream_response.status == 407 {
            // The parent's own challenge, not the origin's: the agent must not read it as
            // warden asking for its credentials.
            let dest = ctx.plan()?.target.authority.to_string();
            log::warn!("upstream_proxy refused {dest} with 407: upstream_proxy.auth is missing or not accepted");
            ctx.reason = Some(Reason::ParentRefused);
            return Error::e_explain(ErrorType::HTTPStatus(407), "the parent proxy answered 407");
        }
        if let Some(plan) = ctx.plan.as_ref() {
            plan.upstream_answered(upstream_response.status.as_u16(), &self.shared.runtime);
        }
        // Before Pingora fixes the framing: a removed Content-Length becomes chunked.
        edit::transform_head(upstream_response, ctx)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        edit::still_admitted(session, ctx)?;
        if let Some(chunk) = body.as_deref() {
            ctx.flow.request_capture.record(chunk);
        }
        if session.was_upgraded() && ctx.flow.ws_client.is_some() {
            return self.ws_client_frames(session, body, ctx).await;
        }
        if let Some(replacer) = ctx.flow.body_replacer.as_mut() {
            let chunk = body.take().unwrap_or_default();
            *body = edit::end_body(replacer.feed(&chunk, end_of_stream), end_of_stream);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(edit::X_REQUEST_ID, ctx.request_id())?;
        if upstream_response.status == 101 {
            ctx.flow.websocket = Some(self.shared.metrics.open(Kind::Websocket));
            // Both directions carry frames from here on: the log gets a summary of them.
            ctx.flow.request_capture.summarize_frames();
            ctx.flow.response_capture.summarize_frames();
        } else {
            ctx.flow.ws_policy = None;
            ctx.flow.ws_client = None;
        }
        if let Some(scrub) = ctx.plan.as_ref().and_then(|p| p.scrub.as_ref()) {
            edit::rewrite_headers(upstream_response, |v| scrub.replace_value(v))?;
        }
        if ctx.flow.grpc {
            // A trailers-only answer carries its status in the head.
            ctx.line.grpc_status = crate::grpc::status_in(&upstream_response.headers);
        }
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        if let Some(scrub) = ctx.plan.as_ref().and_then(|p| p.scrub.as_ref()) {
            edit::rewrite_trailers(trailers, |v| scrub.replace_value(v))?;
        }
        if ctx.flow.grpc {
            ctx.line.grpc_status = crate::grpc::status_in(trailers);
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        edit::still_admitted(session, ctx)?;
        if let Some(ws) = ctx.flow.ws_policy.as_mut() {
            let was_finished = ws.events.finished();
            let chunk = body.take().unwrap_or_default();
            *body = Some(ws.feed(&chunk));
            if let Some(d) = ws.events.denied.clone().filter(|_| !was_finished) {
                self.note_denial(ctx, &d, false);
            }
            self.charge_ws_responses(ctx);
        }
        let chunk = body.take().unwrap_or_default();
        *body = Some(edit::outgoing(ctx, chunk, end_of_stream));
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
        let reason = ctx.failed(e, session.was_upgraded());
        // A client that is gone or stalled has nobody to answer, nor one already answered.
        let silent = matches!(reason, Reason::ClientError | Reason::IdleTimeout)
            || session.response_written().is_some();
        if !silent {
            self.refuse(session, ctx, reason).await;
        }
        FailToProxy {
            error_code: if silent { 0 } else { reason.status() },
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // The canonical line records every failure, with the reason code.
        true
    }

    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let path = String::from_utf8_lossy(req.raw_path());
        format!("{} {}", req.method, redact_query(&path))
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.line.request_id.is_none() {
            // The head never parsed; Pingora answered it. Nothing reached warden's phases.
            return;
        }
        self.charge_ws_end(session, ctx);
        let delivered = Delivered {
            status: session.response_written().map(|r| r.status.as_u16()),
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            upgraded: session.was_upgraded(),
        };
        let line = ctx.finish(delivered, e);
        self.shared.metrics.record(line, ctx.snap.log);
    }
}

/// What `upstream_request_filter` hands the header edits: the request as it will go upstream.
fn incoming<'a>(
    session: &mut Session,
    upstream: &'a RequestHeader,
    ctx: &'a RequestCtx,
) -> Incoming<'a> {
    Incoming {
        uri: &upstream.uri,
        headers: &upstream.headers,
        upgrade: edit::upgrade(session),
        has_body: !session.is_body_empty(),
        request_id: ctx.request_id(),
        checks_frames: ctx.flow.ws_policy.is_some(),
    }
}
