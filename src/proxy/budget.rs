//! Client budgets in the glue: `requests_per_second` on every request after admission (a
//! spent bucket is warden's JSON `429`, or the provider's error shape on an LLM API), the LLM
//! budgets before a call goes upstream, and the tokens a call used once it is over (from the
//! usage the response reported, else estimated from the bytes). The counting itself is
//! [`crate::budget`]; this reads the session and the plan, and records the metrics.

use super::ctx::RequestCtx;
use super::warden::Warden;
use crate::budget::{now_ms, Budget, Exceeded};
use crate::llm::{Denial, Usage};
use crate::reason::Reason;
use pingora_error::Result;
use pingora_proxy::Session;
use std::sync::Arc;

/// Bytes per token when a call ended without usage: the usual rule of thumb for English text
/// and JSON with the providers' tokenizers.
const BYTES_PER_TOKEN: u64 = 4;

/// Who a request is counted under: the authenticated client and its budget, if it has one.
#[derive(Clone)]
pub(super) struct Spender {
    client: Arc<str>,
    budget: Option<Arc<Budget>>,
}

impl RequestCtx {
    /// The client a request is counted under; `None` without auth (budgets are per client).
    pub(super) fn spender(&self) -> Option<Spender> {
        let plan = self.plan.as_ref()?;
        let client = plan.client.as_ref()?;
        Some(Spender {
            client: client.name.clone(),
            budget: plan.profile.budget.clone(),
        })
    }
}

/// The tokens a call is estimated to have used from its body bytes, rounded up.
fn estimate(request_bytes: u64, response_bytes: u64) -> Usage {
    Usage {
        input: Some(request_bytes.div_ceil(BYTES_PER_TOKEN)),
        output: Some(response_bytes.div_ceil(BYTES_PER_TOKEN)),
    }
}

fn total(usage: &Usage) -> u64 {
    usage
        .input
        .unwrap_or(0)
        .saturating_add(usage.output.unwrap_or(0))
}

impl Warden {
    /// `requests_per_second` for one admitted request: returns `true` when it was refused
    /// (the answer is written).
    pub(super) async fn over_request_budget(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(Spender {
            client,
            budget: Some(budget),
        }) = ctx.spender()
        else {
            return Ok(false);
        };
        let budgets = &self.shared.runtime.budgets;
        let admitted = budgets.admit_request(&client, &budget, now_ms(), true);
        self.publish(&client, &budget);
        let Err(exceeded) = admitted else {
            return Ok(false);
        };
        self.shared.metrics.budget_denied(&client, exceeded.key);
        if let Some((policy, _)) = self.llm_api(session, ctx)? {
            // An LLM API client gets its provider's rate-limit error; the body is unread.
            let d = Denial::over_budget(&client, exceeded);
            return self
                .refuse_llm(session, ctx, policy.provider, &d, true)
                .await;
        }
        ctx.line.rule = Some(exceeded.rule.clone());
        ctx.flow.retry_after = exceeded.retry_after;
        self.refuse(session, ctx, Reason::BudgetExceeded).await;
        Ok(true)
    }

    /// Before an LLM call goes upstream: its token windows must not be spent and its calls
    /// per minute not at their limit. `count`: the call is counted (an exchange, a Responses
    /// WebSocket `response.create`); a WebSocket upgrade is only checked.
    pub(super) fn admit_llm_call(&self, spender: &Spender, count: bool) -> Result<(), Denial> {
        let budgets = &self.shared.runtime.budgets;
        let budget = spender.budget.as_deref();
        let now = now_ms();
        let admitted = if count {
            budgets.admit_call(&spender.client, budget, now)
        } else {
            budgets.check_call(&spender.client, budget, now)
        };
        if let Some(b) = budget {
            self.publish(&spender.client, b);
        }
        admitted.map_err(|e: Exceeded| {
            self.shared.metrics.budget_denied(&spender.client, e.key);
            Denial::over_budget(&spender.client, e)
        })
    }

    /// After an LLM exchange: the tokens its response reported are counted (unless
    /// [`Self::charge_reported`] already did); when it reported none although the upstream
    /// answered with success, an estimate from the request and response bytes is counted and
    /// the line says so (`tokens_estimated`).
    pub(super) fn charge_llm_call(&self, session: &Session, ctx: &mut RequestCtx, ok: bool) {
        let Some(call) = ctx.flow.llm.as_mut().filter(|c| !c.charged) else {
            return;
        };
        if call.usage.input.is_none() && call.usage.output.is_none() {
            if !ok {
                return;
            }
            call.usage = estimate(
                session.body_bytes_read() as u64,
                session.body_bytes_sent() as u64,
            );
            call.estimated = true;
        }
        self.charge_reported(ctx);
    }

    /// The usage a response reported, counted before its last bytes are written: a client
    /// that sends its next call the moment this one ends meets the spent budget. Once per
    /// call, and nothing while the call has no usage.
    pub(super) fn charge_reported(&self, ctx: &mut RequestCtx) {
        let spender = ctx.spender();
        let Some(call) = ctx.flow.llm.as_mut() else {
            return;
        };
        if call.charged || (call.usage.input.is_none() && call.usage.output.is_none()) {
            return;
        }
        call.charged = true;
        if let Some(s) = spender {
            self.spend(&s, total(&call.usage));
        }
    }

    /// A Responses WebSocket: the tokens of the responses that ended in the events just read.
    pub(super) fn charge_ws_responses(&self, ctx: &mut RequestCtx) {
        let spender = ctx.spender();
        let Some(ws) = ctx.flow.ws_policy.as_mut() else {
            return;
        };
        let tokens = ws.events.take_ended_tokens();
        if let Some(s) = spender.filter(|_| tokens > 0) {
            self.spend(&s, tokens);
        }
    }

    /// A Responses WebSocket that closed without any response reporting usage, after it
    /// carried bytes: its tokens are estimated from them, like a stream without usage.
    pub(super) fn charge_ws_end(&self, session: &Session, ctx: &mut RequestCtx) {
        let spender = ctx.spender();
        let (Some(ws), Some(call)) = (ctx.flow.ws_policy.as_mut(), ctx.flow.llm.as_mut()) else {
            return;
        };
        let (read, sent) = (
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
        let seen = ws.events.usage.input.is_some() || ws.events.usage.output.is_some();
        if seen || !session.was_upgraded() || read + sent == 0 {
            return;
        }
        ws.events.usage = estimate(read, sent);
        call.estimated = true;
        if let Some(s) = spender {
            self.spend(&s, total(&ws.events.usage));
        }
    }

    fn spend(&self, spender: &Spender, tokens: u64) {
        self.shared
            .runtime
            .budgets
            .spend(&spender.client, tokens, now_ms());
        if let Some(b) = &spender.budget {
            self.publish(&spender.client, b);
        }
    }

    /// Records what is left of `client`'s budgets for `warden_budget_remaining_ratio`.
    fn publish(&self, client: &str, budget: &Budget) {
        let standing = self
            .shared
            .runtime
            .budgets
            .standing(client, budget, now_ms());
        self.shared.metrics.budget_standing(client, &standing);
    }
}
