//! Per-request state: the snapshot the request runs on, the plan admission made, the
//! canonical line (filled as the request goes, so `logging` only adds what it alone knows),
//! and the streaming state of the bodies.

use crate::admission::{Refusal, RequestPlan};
use crate::config::Snapshot;
use crate::llm::ws::{ClientCheck, WsPolicy};
use crate::llm::{Denial, LlmPolicy, Usage};
use crate::reason::Reason;
use crate::scrub::Replacer;
use crate::target::{Scheme, Target, TunnelIdentity};
use crate::telemetry::{redact_query, CanonicalLog, Capture, Kind, Open};
use crate::transform::BodyRewriter;
use pingora_error::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Instant;

/// Per-request state, created in `new_ctx` with the snapshot this request runs on.
pub struct RequestCtx {
    /// The config this request runs on, start to end.
    pub(super) snap: Arc<Snapshot>,
    pub(super) started: Instant,
    /// The intercepted tunnel the request came through.
    pub(super) tunnel: Option<TunnelIdentity>,
    /// What admission decided; `None` until it admitted the request.
    pub(super) plan: Option<RequestPlan>,
    /// The reason warden refused or failed the request, once decided.
    pub(super) reason: Option<Reason>,
    /// The canonical line so far.
    pub(super) line: CanonicalLog,
    /// Body streaming state.
    pub(super) flow: Flow,
}

/// What the bodies need as they stream.
pub(super) struct Flow {
    /// The request body as the agent sent it (before substitution), bounded.
    pub(super) request_capture: Capture,
    /// The response body as the agent received it (after scrubbing), bounded.
    pub(super) response_capture: Capture,
    /// Masks this request's credential-like header values in captured bodies.
    pub(super) log_redactor: Option<Replacer>,
    /// Substitutes placeholders in the request body as it streams upstream.
    pub(super) body_replacer: Option<Replacer>,
    /// Applies `replace_body` rules to a text response as it streams.
    pub(super) body_rewriter: Option<BodyRewriter>,
    /// The LLM API call this request is, if it is one.
    pub(super) llm: Option<LlmCall>,
    /// Responses WebSocket: policy on the server's events.
    pub(super) ws_policy: Option<WsPolicy>,
    /// Responses WebSocket: the model check on the client's events.
    pub(super) ws_client: Option<ClientCheck>,
    /// Counts an upgraded (WebSocket) connection as open while it lasts.
    pub(super) websocket: Option<Open>,
    /// The request is a gRPC call: refusals take gRPC's trailers-only shape.
    pub(super) grpc: bool,
    /// Seconds a budget refusal tells the client to wait (`retry-after`).
    pub(super) retry_after: Option<u64>,
    /// A request to re-sign, with the role credentials it gets (`aws.resign`).
    pub(super) aws: Option<Box<(crate::aws::resign::Shape, crate::aws::sts::RoleCredentials)>>,
    /// A plain request sent to the parent proxy: in absolute form, with this
    /// `Proxy-Authorization` (sensitive) when `upstream_proxy.auth` is set.
    pub(super) via_parent: Option<Option<http::HeaderValue>>,
}

/// What the session says about a finished exchange, for the last fields of the line.
pub(super) struct Delivered {
    /// The status of the response head sent, if one was.
    pub(super) status: Option<u16>,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) upgraded: bool,
}

impl RequestCtx {
    /// A request about to start on `snap`.
    pub(super) fn new(snap: Arc<Snapshot>) -> Self {
        let capture = snap.log.body_capture_bytes;
        RequestCtx {
            snap,
            started: Instant::now(),
            tunnel: None,
            plan: None,
            reason: None,
            line: CanonicalLog::new(Kind::Plain),
            flow: Flow {
                request_capture: Capture::new(capture),
                response_capture: Capture::new(capture),
                log_redactor: None,
                body_replacer: None,
                body_rewriter: None,
                llm: None,
                ws_policy: None,
                ws_client: None,
                websocket: None,
                grpc: false,
                retry_after: None,
                aws: None,
                via_parent: None,
            },
        }
    }

    /// The request id; empty before `request_filter` ran.
    pub(super) fn request_id(&self) -> &str {
        self.line.request_id.as_deref().unwrap_or_default()
    }

    /// The method; empty before `request_filter` ran.
    pub(super) fn method(&self) -> &str {
        self.line.method.as_deref().unwrap_or_default()
    }

    /// The plan, for the phases after admission.
    pub(super) fn plan(&self) -> Result<&RequestPlan> {
        match &self.plan {
            Some(p) => Ok(p),
            None => Error::e_explain(ErrorType::InternalError, "no plan after request_filter"),
        }
    }

    /// Records where the request goes.
    fn target(&mut self, t: &Target) {
        self.line.scheme = Some(t.scheme.as_str());
        self.line.host = Some(t.authority.host.to_string());
        self.line.port = Some(t.authority.port);
        self.line.path = Some(redact_query(&t.path).into_owned());
    }

    /// Takes admission's plan, noting what it decided in the line.
    pub(super) fn admitted(&mut self, plan: RequestPlan) {
        self.target(&plan.target);
        self.line.client = plan.client.as_ref().map(|c| c.name.to_string());
        self.line.seq = plan.seq.as_ref().map(|c| c.seq);
        self.line.would_deny = plan.would_deny.map(Reason::code);
        self.line.alert = plan.alert;
        self.line.relay = plan.relay.as_ref().map(|r| r.name.to_string());
        self.plan = Some(plan);
    }

    /// Notes admission's refusal in the line; returns its reason.
    pub(super) fn refused(&mut self, refusal: Refusal) -> Reason {
        if let Some(detail) = &refusal.detail {
            log::warn!("{detail}");
        }
        if let Some(t) = &refusal.target {
            self.target(t);
        }
        if let Some(c) = &refusal.client {
            self.line.client = Some(c.name.to_string());
        }
        self.line.seq = refusal.seq;
        self.line.relay = refusal.relay.as_deref().map(str::to_string);
        self.line.rule = refusal.rule;
        self.line.error = refusal.detail;
        refusal.reason
    }

    /// The credential went onto the upstream request.
    pub(super) fn injected(&mut self) -> Option<&str> {
        let c = self.plan.as_ref()?.credential.as_ref()?;
        self.line.injected = Some(c.header.as_str().to_string());
        self.line.grant.clone_from(&c.grant);
        c.grant.as_deref()
    }

    /// Notes an LLM denial; `report` turns it into `would_deny`. Returns whether it counts
    /// as a refusal (for metrics).
    pub(super) fn deny(&mut self, d: &Denial, report: bool) -> bool {
        if report {
            self.line.would_deny.get_or_insert(d.reason.code());
            if self.line.rule.is_none() {
                self.line.rule.clone_from(&d.rule);
            }
            if let Some(call) = self.flow.llm.as_mut() {
                call.outcome = "would_deny";
            }
            return false;
        }
        self.reason = Some(d.reason);
        self.line.rule.clone_from(&d.rule);
        self.line.error = d.tool.as_ref().map(|t| format!("tool {t}"));
        if let Some(call) = self.flow.llm.as_mut() {
            call.outcome = "denied";
        }
        true
    }

    /// Notes a failure Pingora reports: its reason (unless warden decided one already), and
    /// the detail of running out of file descriptors. Returns the reason.
    pub(super) fn failed(&mut self, e: &Error, upgraded: bool) -> Reason {
        let reason = *self.reason.get_or_insert_with(|| reason_of(e, upgraded));
        if crate::reason::out_of_fds(e) && self.line.error.is_none() {
            self.line.error = Some(format!("out of file descriptors: {}", e.root_cause()));
        }
        reason
    }

    /// The destination host for a refusal body: the target's, else the tunnel's.
    pub(super) fn host(&self) -> Option<String> {
        self.line
            .host
            .clone()
            .or_else(|| self.tunnel.as_ref().map(|t| t.authority.host.to_string()))
    }

    /// The finished line: what only the end knows (status, bytes, the failure, captures, the
    /// LLM call), added to what the phases filled in.
    pub(super) fn finish(&mut self, d: Delivered, e: Option<&Error>) -> CanonicalLog {
        let mut line = std::mem::replace(&mut self.line, CanonicalLog::new(Kind::Plain));
        line.kind = if d.upgraded {
            Kind::Websocket
        } else if self.tunnel.is_some() {
            Kind::Intercepted
        } else if line.relay.is_some()
            || matches!(
                self.reason,
                Some(Reason::RelayUnknown | Reason::RelayPathInvalid)
            )
        {
            Kind::Relay
        } else {
            Kind::Plain
        };
        if line.client.is_none() {
            line.client = self
                .tunnel
                .as_ref()
                .and_then(|t| t.client.as_deref().map(str::to_string));
        }
        if line.host.is_none() {
            if let Some(t) = &self.tunnel {
                line.scheme = Some(Scheme::Https.as_str());
                line.host = Some(t.authority.host.to_string());
                line.port = Some(t.authority.port);
            }
        }
        line.status = d.status.or(line.status);
        line.bytes_in = d.bytes_in;
        line.bytes_out = d.bytes_out;
        line.intercepted = self.tunnel.is_some();
        line.upgraded = d.upgraded;
        if let Some(e) = e {
            self.reason.get_or_insert_with(|| reason_of(e, d.upgraded));
            // A detail warden noted first (a denial's tool) stays first: the failure after it
            // (the client gone as the error went out) only adds to it.
            let failure = crate::telemetry::error_text(e);
            line.error = Some(match line.error.take() {
                Some(detail) => format!("{detail}; {failure}"),
                None => failure,
            });
        }
        line.reason = self.reason.map(Reason::code);
        let redactor = self.flow.log_redactor.as_ref();
        line.request_body = self.flow.request_capture.text(redactor);
        line.response_body = self.flow.response_capture.text(redactor);
        self.finish_llm(&mut line);
        line.took(self.started.elapsed());
        line
    }

    fn finish_llm(&mut self, line: &mut CanonicalLog) {
        let flow = &mut self.flow;
        let Some(call) = flow.llm.as_mut() else {
            return;
        };
        // The latest model a `response.create` named, else the upgrade's `?model=`.
        if let Some(model) = flow.ws_client.as_ref().and_then(|c| c.model.clone()) {
            call.model = Some(model);
        }
        if let Some(ws) = &flow.ws_policy {
            call.usage = ws.events.usage;
            call.tools = ws.events.tools.clone();
            if ws.events.denied.is_none() {
                let client = flow.ws_client.as_ref().and_then(|c| c.would_deny.as_ref());
                if let Some(d) = ws.events.would_deny.as_ref().or(client) {
                    call.outcome = "would_deny";
                    line.would_deny = line.would_deny.or(Some(d.reason.code()));
                }
            }
        }
        call.record(line);
    }
}

/// What one LLM call did, for the log line and metrics.
#[derive(Debug)]
pub(super) struct LlmCall {
    /// The entry that applied.
    pub policy: Arc<LlmPolicy>,
    /// The model the request named.
    pub model: Option<String>,
    /// Usage reported.
    pub usage: Usage,
    /// Tools the model called.
    pub tools: Vec<String>,
    /// allowed, denied, would_deny or error.
    pub outcome: &'static str,
    /// `usage` is warden's estimate: the call ended without one.
    pub estimated: bool,
    /// The reported usage was counted against the budgets before the response's last bytes
    /// went out (so the client's next call already sees it).
    pub charged: bool,
}

impl LlmCall {
    /// A call about to be checked.
    pub(super) fn new(policy: Arc<LlmPolicy>) -> Self {
        LlmCall {
            policy,
            model: None,
            usage: Usage::default(),
            tools: Vec::new(),
            outcome: "allowed",
            estimated: false,
            charged: false,
        }
    }

    /// Fills the LLM fields of the canonical line.
    pub(super) fn record(&self, line: &mut CanonicalLog) {
        line.provider = Some(self.policy.provider.label());
        line.model = self.model.clone();
        line.tools = (!self.tools.is_empty()).then(|| self.tools.clone());
        line.input_tokens = self.usage.input;
        line.output_tokens = self.usage.output;
        line.tokens_estimated = Some(self.estimated);
        let outcome = match (self.outcome, line.reason) {
            ("allowed", Some(_)) => "error",
            (o, _) => o,
        };
        line.llm_labels = Some((self.policy.model_label(self.model.as_deref()), outcome));
    }
}

/// The reason for a failure Pingora reports: a parent proxy's own, else the one its type gives.
fn reason_of(e: &Error, upgraded: bool) -> Reason {
    crate::parent::reason_of(e).unwrap_or_else(|| crate::reason::reason_in(e, upgraded))
}
