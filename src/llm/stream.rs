//! Streaming tool-call policy. Events (SSE events, or WebSocket text messages for the
//! Responses transport) pass through as soon as they are complete; only a tool-call block is
//! held — `content_block_start`…`content_block_stop` (Messages), the `tool_calls` chunks until
//! the `finish_reason` (Chat Completions), `output_item.added`…`output_item.done` for a call
//! (Responses) — then evaluated, and released unchanged or replaced by the provider's
//! terminal error. Everything held is bounded by `limits.llm_buffer_bytes`.

use super::frame;
use super::json::str_at;
use super::sse::{self, Framer};
use super::{
    error_envelope, is_call_item, is_tool_block, responses_failure, Api, Denial, LlmPolicy, Usage,
};
use crate::reason::Reason;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// How events reach the client, which decides how a denial is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `text/event-stream`.
    Sse,
    /// Text frames of a WebSocket (server to client, unmasked).
    WebSocket,
}

/// A tool call being assembled from a held block.
#[derive(Debug)]
struct Pending {
    /// Block index (Messages), `choice << 32 | index` (Chat) or output index (Responses).
    key: u64,
    name: String,
    arguments: String,
    done: bool,
}

#[derive(Debug)]
struct Hold {
    queue: BytesMut,
    calls: Vec<Pending>,
    since: Instant,
}

/// The event-level policy of one response stream.
#[derive(Debug)]
pub struct EventPolicy {
    api: Api,
    transport: Transport,
    policy: Arc<LlmPolicy>,
    limit: usize,
    hold: Option<Hold>,
    /// Token usage seen so far.
    pub usage: Usage,
    /// Names of the tool calls evaluated, in order.
    pub tools: Vec<String>,
    /// The enforced denial that ended the stream.
    pub denied: Option<Denial>,
    /// In report mode, the first denial that was not enforced.
    pub would_deny: Option<Denial>,
    max_seq: u64,
    response: Option<Value>,
    finished: bool,
    passthrough: bool,
    /// Tokens of the responses that ended since [`EventPolicy::take_ended_tokens`] was
    /// last called: a WebSocket carries many responses, each counted as it ends.
    ended_tokens: u64,
}

impl EventPolicy {
    /// Policy for one stream of `api` events; at most `limit` bytes are held.
    pub fn new(api: Api, transport: Transport, policy: Arc<LlmPolicy>, limit: usize) -> Self {
        EventPolicy {
            api,
            transport,
            policy,
            limit,
            hold: None,
            usage: Usage::default(),
            tools: Vec::new(),
            denied: None,
            would_deny: None,
            max_seq: 0,
            response: None,
            finished: false,
            passthrough: false,
            ended_tokens: 0,
        }
    }

    /// The tokens (input + output) of the Responses that ended since the last call.
    pub fn take_ended_tokens(&mut self) -> u64 {
        std::mem::take(&mut self.ended_tokens)
    }

    /// When the block being held started, if one is.
    pub fn holding_since(&self) -> Option<Instant> {
        self.hold.as_ref().map(|h| h.since)
    }

    /// True once a denial ended the stream: nothing more goes to the client.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Takes one complete event: `raw` is what goes to the client if it passes, `data` its
    /// payload (SSE `data`, or the WebSocket message text).
    pub fn on_message(&mut self, raw: Bytes, data: Option<&str>, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        if self.passthrough {
            out.extend_from_slice(&raw);
            return;
        }
        let mut complete = false;
        match data {
            Some(d) if d.trim_start().starts_with('{') => {
                if let Ok(v) = serde_json::from_str::<Value>(d) {
                    complete = self.observe(&v);
                }
            }
            Some(d) if d.trim() == "[DONE]" => complete = self.hold.is_some(),
            _ => {}
        }
        match &mut self.hold {
            Some(h) => {
                h.queue.extend_from_slice(&raw);
                if complete {
                    self.evaluate(out);
                } else if h.queue.len() > self.limit {
                    self.overflow(out);
                }
            }
            None => out.extend_from_slice(&raw),
        }
    }

    /// The stream ended: a block still held is evaluated with what arrived.
    pub fn end(&mut self, out: &mut BytesMut) {
        if self.hold.is_some() && !self.finished {
            self.evaluate(out);
        }
    }

    /// Reads one event; returns whether it completes the held block.
    fn observe(&mut self, v: &Value) -> bool {
        if let Some(n) = v.get("sequence_number").and_then(Value::as_u64) {
            self.max_seq = self.max_seq.max(n);
        }
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        match self.api {
            Api::Messages => match kind {
                "message_start" => {
                    if let Some(u) = v.pointer("/message/usage") {
                        self.usage.update(u);
                    }
                    false
                }
                "message_delta" => {
                    if let Some(u) = v.get("usage") {
                        self.usage.update(u);
                    }
                    false
                }
                "content_block_start"
                    if is_tool_block(v.pointer("/content_block/type").and_then(Value::as_str)) =>
                {
                    let input = v.pointer("/content_block/input");
                    let arguments = match input {
                        Some(Value::Object(o)) if !o.is_empty() => {
                            input.map(Value::to_string).unwrap_or_default()
                        }
                        _ => String::new(),
                    };
                    self.start(Pending {
                        key: index(v, "/index"),
                        name: str_at(v, "/content_block/name"),
                        arguments,
                        done: false,
                    });
                    false
                }
                "content_block_delta" => {
                    if let Some(p) = self.pending(index(v, "/index")) {
                        if let Some(s) = v.pointer("/delta/partial_json").and_then(Value::as_str) {
                            p.arguments.push_str(s);
                        }
                    }
                    false
                }
                "content_block_stop" => {
                    let key = index(v, "/index");
                    self.finish_call(key, None)
                }
                _ => false,
            },
            Api::ChatCompletions => {
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage.update(u);
                }
                let mut finish = false;
                for choice in v
                    .get("choices")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let c = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let calls = choice
                        .pointer("/delta/tool_calls")
                        .and_then(Value::as_array);
                    for call in calls.into_iter().flatten() {
                        let key =
                            (c << 32) | call.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let name = call.pointer("/function/name").and_then(Value::as_str);
                        let args = call.pointer("/function/arguments").and_then(Value::as_str);
                        if self.pending(key).is_none() {
                            self.start(Pending {
                                key,
                                name: String::new(),
                                arguments: String::new(),
                                done: false,
                            });
                        }
                        if let Some(p) = self.pending(key) {
                            if let Some(n) = name {
                                p.name.push_str(n);
                            }
                            if let Some(a) = args {
                                p.arguments.push_str(a);
                            }
                        }
                    }
                    if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                        finish = true;
                    }
                }
                if finish {
                    if let Some(h) = &mut self.hold {
                        h.calls.iter_mut().for_each(|p| p.done = true);
                    }
                }
                finish && self.hold.is_some()
            }
            Api::Responses => match kind {
                "response.created" | "response.in_progress" => {
                    if let Some(r) = v.get("response") {
                        self.response = Some(r.clone());
                    }
                    false
                }
                "response.completed" | "response.incomplete" | "response.failed" => {
                    if let Some(u) = v.pointer("/response/usage") {
                        let mut one = Usage::default();
                        one.update(u);
                        self.ended_tokens += one
                            .input
                            .unwrap_or(0)
                            .saturating_add(one.output.unwrap_or(0));
                        self.usage.update(u);
                    }
                    false
                }
                "response.output_item.added"
                    if is_call_item(v.pointer("/item/type").and_then(Value::as_str)) =>
                {
                    self.start(Pending {
                        key: index(v, "/output_index"),
                        name: str_at(v, "/item/name"),
                        arguments: str_at(v, "/item/arguments"),
                        done: false,
                    });
                    false
                }
                "response.function_call_arguments.delta"
                | "response.custom_tool_call_input.delta" => {
                    if let Some(p) = self.pending(index(v, "/output_index")) {
                        if let Some(s) = v.get("delta").and_then(Value::as_str) {
                            p.arguments.push_str(s);
                        }
                    }
                    false
                }
                "response.output_item.done" => {
                    let item = v.get("item");
                    let args = item
                        .and_then(|i| i.get("arguments").or(i.get("input")))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    self.finish_call(index(v, "/output_index"), args)
                }
                _ => false,
            },
        }
    }

    fn start(&mut self, call: Pending) {
        match &mut self.hold {
            Some(h) => h.calls.push(call),
            None => {
                self.hold = Some(Hold {
                    queue: BytesMut::new(),
                    calls: vec![call],
                    since: Instant::now(),
                })
            }
        }
    }

    fn pending(&mut self, key: u64) -> Option<&mut Pending> {
        self.hold
            .as_mut()?
            .calls
            .iter_mut()
            .find(|p| p.key == key && !p.done)
    }

    /// Marks a call complete; true when every held call is.
    fn finish_call(&mut self, key: u64, arguments: Option<String>) -> bool {
        let Some(p) = self.pending(key) else {
            return false;
        };
        if let Some(a) = arguments {
            p.arguments = a;
        }
        p.done = true;
        self.hold
            .as_ref()
            .is_some_and(|h| h.calls.iter().all(|p| p.done))
    }

    fn evaluate(&mut self, out: &mut BytesMut) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let mut denial = None;
        for call in &hold.calls {
            self.tools.push(call.name.clone());
            if denial.is_none() {
                let args = if call.arguments.is_empty() {
                    "{}"
                } else {
                    call.arguments.as_str()
                };
                denial = self.policy.check_tool(&call.name, args).err();
            }
        }
        match denial {
            Some(d) if !self.policy.report => self.deny(d, out),
            Some(d) => {
                self.would_deny.get_or_insert(d);
                out.extend_from_slice(&hold.queue);
            }
            None => out.extend_from_slice(&hold.queue),
        }
    }

    /// More than the buffer bound is held: fail closed, or (report) let it all through.
    fn overflow(&mut self, out: &mut BytesMut) {
        let d = Denial::new(
            Reason::LlmBodyTooLarge,
            format!(
                "warden (the egress proxy) stopped the response: a tool call grew past limits.llm_buffer_bytes ({} bytes) before it could be checked.",
                self.limit
            ),
        );
        self.passthrough_or_deny(d, out);
    }

    /// Gives up on a stream it cannot check: deny (enforce), or pass everything (report).
    pub fn passthrough_or_deny(&mut self, d: Denial, out: &mut BytesMut) {
        if self.policy.report {
            self.would_deny.get_or_insert(d);
            if let Some(h) = self.hold.take() {
                out.extend_from_slice(&h.queue);
            }
            self.passthrough = true;
        } else {
            self.hold = None;
            self.deny(d, out);
        }
    }

    /// True when parsing was given up (report mode over the bound).
    pub fn passthrough(&self) -> bool {
        self.passthrough
    }

    /// What a transport sends for `chunk` without parsing it: nothing after a denial, the
    /// bytes as they came once parsing was given up (after what the transport still held,
    /// from `held`). `None`: parse as usual.
    pub fn bypass(&self, held: impl FnOnce() -> Bytes, chunk: &[u8]) -> Option<Bytes> {
        if self.finished {
            return Some(Bytes::new());
        }
        if !self.passthrough {
            return None;
        }
        let mut out = BytesMut::from(&held()[..]);
        out.extend_from_slice(chunk);
        Some(out.freeze())
    }

    /// Writes the terminal error for `d` and ends the stream.
    pub fn deny(&mut self, d: Denial, out: &mut BytesMut) {
        let provider = self.policy.provider;
        let seq = self.max_seq + 1;
        match (self.transport, self.api) {
            (Transport::Sse, Api::Messages) => {
                sse_event(out, Some("error"), &error_envelope(provider, &d));
            }
            (Transport::Sse, Api::ChatCompletions) => {
                sse_event(out, None, &error_envelope(provider, &d));
            }
            (Transport::Sse, Api::Responses) => {
                let (error, failed) = responses_failure(&d, seq, self.response.as_ref());
                sse_event(out, Some("error"), &error);
                sse_event(out, Some("response.failed"), &failed);
            }
            (Transport::WebSocket, _) => {
                let (mut error, failed) = responses_failure(&d, seq, self.response.as_ref());
                error["status"] = json!(d.reason.status());
                out.extend_from_slice(&frame::encode(frame::TEXT, error.to_string().as_bytes()));
                out.extend_from_slice(&frame::encode(frame::TEXT, failed.to_string().as_bytes()));
                out.extend_from_slice(&frame::close_frame(1008, d.reason.code()));
            }
        }
        self.denied = Some(d);
        self.finished = true;
    }
}

fn index(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0)
}

fn sse_event(out: &mut BytesMut, event: Option<&str>, data: &Value) {
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The SSE comment written while a tool call is held, so client watchdogs see bytes.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Tool-call policy over an SSE response body.
#[derive(Debug)]
pub struct SsePolicy {
    framer: Framer,
    /// The event-level policy (usage, tools, denial).
    pub events: EventPolicy,
    limit: usize,
}

impl SsePolicy {
    /// Policy for one SSE body of `api`.
    pub fn new(api: Api, policy: Arc<LlmPolicy>, limit: usize) -> Self {
        SsePolicy {
            framer: Framer::new(),
            events: EventPolicy::new(api, Transport::Sse, policy, limit),
            limit,
        }
    }

    /// Feeds one chunk of the upstream body; returns what may go to the client now.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let framer = &mut self.framer;
        if let Some(out) = self.events.bypass(|| framer.take_rest(), chunk) {
            return out;
        }
        let mut out = BytesMut::new();
        self.framer.push(chunk);
        while let Some(raw) = self.framer.next_event() {
            let ev = sse::parse(&raw);
            self.events.on_message(raw, ev.data.as_deref(), &mut out);
            if self.events.finished() {
                return out.freeze();
            }
        }
        if self.framer.buffered() > self.limit {
            let d = Denial::new(
                Reason::LlmBodyTooLarge,
                format!(
                    "warden (the egress proxy) stopped the response: one event grew past limits.llm_buffer_bytes ({} bytes).",
                    self.limit
                ),
            );
            self.events.passthrough_or_deny(d, &mut out);
            if self.events.passthrough() {
                out.extend_from_slice(&self.framer.take_rest());
            }
            return out.freeze();
        }
        if end {
            let rest = self.framer.take_rest();
            if !rest.is_empty() {
                let ev = sse::parse(&rest);
                self.events.on_message(rest, ev.data.as_deref(), &mut out);
            }
            self.events.end(&mut out);
        }
        out.freeze()
    }

    /// Bytes held: the partial event plus the held block.
    pub fn held(&self) -> usize {
        self.framer.buffered() + self.events.hold.as_ref().map_or(0, |h| h.queue.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(extra: &str, provider: &str) -> Arc<LlmPolicy> {
        crate::llm::test_policy(provider, extra)
    }

    fn run(p: &mut SsePolicy, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&p.feed(c, i + 1 == chunks.len()));
        }
        out
    }

    const ANTHROPIC: &str = include_str!("../../tests/fixtures/anthropic.sse");

    #[test]
    fn allowed_tool_calls_pass_byte_for_byte_and_usage_is_read() {
        let stream = ANTHROPIC.replace("TOOL", "read_file");
        let mut p = SsePolicy::new(
            Api::Messages,
            policy(", deny_tools: [bash]", "anthropic"),
            1 << 20,
        );
        assert_eq!(run(&mut p, &[stream.as_bytes()]), stream.as_bytes());
        assert_eq!(p.events.tools, vec!["read_file"]);
        assert_eq!(
            p.events.usage,
            Usage {
                input: Some(12),
                output: Some(42)
            }
        );
        assert!(p.events.denied.is_none());
    }

    #[test]
    fn text_passes_at_once_and_only_the_tool_block_is_held() {
        let stream = ANTHROPIC.replace("TOOL", "bash");
        let events: Vec<&str> = stream.split_inclusive("\n\n").collect();
        let mut p = SsePolicy::new(
            Api::Messages,
            policy(", deny_tools: [bash]", "anthropic"),
            1 << 20,
        );
        for e in &events[..4] {
            assert_eq!(&p.feed(e.as_bytes(), false)[..], e.as_bytes());
        }
        assert!(p.feed(events[4].as_bytes(), false).is_empty());
        assert!(p.events.holding_since().is_some());
        for e in &events[5..8] {
            assert!(p.feed(e.as_bytes(), false).is_empty());
        }
        let out = p.feed(events[8].as_bytes(), false);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            out.starts_with(
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"permission_error\""
            ),
            "{out}"
        );
        assert!(out.contains("`bash`"));
        assert!(
            p.feed(events[9].as_bytes(), true).is_empty(),
            "nothing after the denial"
        );
        assert_eq!(
            p.events.denied.as_ref().unwrap().reason,
            Reason::LlmToolDenied
        );
    }

    #[test]
    fn report_mode_changes_nothing_but_records_would_deny() {
        let stream = ANTHROPIC.replace("TOOL", "bash");
        let mut p = SsePolicy::new(
            Api::Messages,
            policy(", mode: report, deny_tools: [bash]", "anthropic"),
            1 << 20,
        );
        assert_eq!(run(&mut p, &[stream.as_bytes()]), stream.as_bytes());
        assert_eq!(
            p.events.would_deny.as_ref().unwrap().tool.as_deref(),
            Some("bash")
        );
        assert!(p.events.denied.is_none());
    }

    #[test]
    fn argument_rules_see_the_assembled_arguments() {
        let stream = ANTHROPIC.replace("TOOL", "shell");
        let mut p = SsePolicy::new(
            Api::Messages,
            policy(
                ", deny_arguments: [{ tool: 'sh*', pattern: 'rm\\s+-rf' }]",
                "anthropic",
            ),
            1 << 20,
        );
        let out = run(&mut p, &[stream.as_bytes()]);
        assert!(String::from_utf8_lossy(&out).contains("deny_arguments[0]"));
    }

    const CHAT: &str = include_str!("../../tests/fixtures/chat_completions.sse");

    #[test]
    fn chat_completions_hold_every_call_until_the_finish() {
        let mut p = SsePolicy::new(
            Api::ChatCompletions,
            policy(", deny_tools: [bash]", "openai"),
            1 << 20,
        );
        let ok = CHAT.replace("TOOL", "read");
        assert_eq!(run(&mut p, &[ok.as_bytes()]), ok.as_bytes());
        assert_eq!(p.events.tools, vec!["get_weather", "read"]);
        assert_eq!(
            p.events.usage,
            Usage {
                input: Some(9),
                output: Some(4)
            }
        );

        let mut p = SsePolicy::new(
            Api::ChatCompletions,
            policy(", deny_tools: [bash]", "openai"),
            1 << 20,
        );
        let bad = CHAT.replace("TOOL", "bash");
        let out = String::from_utf8(run(&mut p, &[bad.as_bytes()])).unwrap();
        let first = CHAT.split_inclusive("\n\n").next().unwrap();
        assert!(out.starts_with(first));
        assert!(out.ends_with("\"code\":\"llm_tool_denied\"}}\n\n"), "{out}");
        assert!(!out.contains("[DONE]") && !out.contains("get_weather"));
    }

    const RESPONSES: &str = include_str!("../../tests/fixtures/responses.sse");

    #[test]
    fn responses_denials_carry_the_next_sequence_numbers() {
        let mut p = SsePolicy::new(
            Api::Responses,
            policy(", deny_tools: [bash]", "openai"),
            1 << 20,
        );
        let ok = RESPONSES.replace("TOOL", "read");
        assert_eq!(run(&mut p, &[ok.as_bytes()]), ok.as_bytes());
        assert_eq!(
            p.events.usage,
            Usage {
                input: Some(20),
                output: Some(8)
            }
        );

        let mut p = SsePolicy::new(
            Api::Responses,
            policy(", deny_tools: [bash]", "openai"),
            1 << 20,
        );
        let bad = RESPONSES.replace("TOOL", "bash");
        let out = String::from_utf8(run(&mut p, &[bad.as_bytes()])).unwrap();
        let tail: Vec<&str> = out.split_inclusive("\n\n").skip(2).collect();
        assert_eq!(tail.len(), 2, "{out}");
        let error: Value =
            serde_json::from_str(tail[0].trim_start_matches("event: error\ndata: ").trim())
                .unwrap();
        assert_eq!(error["sequence_number"], 5);
        assert_eq!(error["error"]["code"], "llm_tool_denied");
        let failed: Value = serde_json::from_str(
            tail[1]
                .trim_start_matches("event: response.failed\ndata: ")
                .trim(),
        )
        .unwrap();
        assert_eq!(failed["sequence_number"], 6);
        assert_eq!(failed["response"]["id"], "resp_1");
    }

    #[test]
    fn a_held_block_past_the_bound_fails_closed() {
        let stream = ANTHROPIC.replace("TOOL", "read");
        let mut p = SsePolicy::new(Api::Messages, policy("", "anthropic"), 200);
        let out = String::from_utf8(run(&mut p, &[stream.as_bytes()])).unwrap();
        assert!(out.contains("llm_buffer_bytes"), "{out}");
        assert_eq!(p.events.denied.unwrap().reason, Reason::LlmBodyTooLarge);
        let mut p = SsePolicy::new(Api::Messages, policy(", mode: report", "anthropic"), 200);
        assert_eq!(run(&mut p, &[stream.as_bytes()]), stream.as_bytes());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_output(cuts in proptest::collection::vec(0..2000usize, 0..16), tool in prop_oneof![Just("bash"), Just("read")], api in 0..3usize) {
            let (api, provider, text) = [(Api::Messages, "anthropic", ANTHROPIC), (Api::ChatCompletions, "openai", CHAT), (Api::Responses, "openai", RESPONSES)][api];
            let stream = text.replace("TOOL", tool);
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&bytes[last..c]); last = c; }
            chunks.push(&bytes[last..]);
            let p = || SsePolicy::new(api, policy(", deny_tools: [bash]", provider), 1 << 20);
            let mut whole = p();
            let mut split = p();
            prop_assert_eq!(run(&mut whole, &[bytes]), run(&mut split, &chunks));
            prop_assert_eq!(whole.events.tools, split.events.tools);
        }

        #[test]
        fn garbage_never_panics_and_stays_within_the_bound(data in proptest::collection::vec(any::<u8>(), 0..4096), api in 0..3usize) {
            let api = [Api::Messages, Api::ChatCompletions, Api::Responses][api];
            let mut p = SsePolicy::new(api, policy("", "openai"), 512);
            for chunk in data.chunks(97) {
                let _ = p.feed(chunk, false);
                prop_assert!(p.held() <= 512 + 97);
            }
            let _ = p.feed(b"", true);
        }
    }
}
