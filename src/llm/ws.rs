//! The two directions of policy on the Responses WebSocket transport, over the frames of
//! [`frame`](super::frame): server events through [`EventPolicy`], client `response.create`
//! events checked against `allow_models`. `permessage-deflate` is kept off for LLM hosts (the
//! extension offer is removed from the upgrade request), so payloads are plain.

use super::frame::{FrameError, FrameReader, CLOSE, CONTINUATION, TEXT};
use super::stream::{EventPolicy, Transport};
use super::{Api, Denial, LlmPolicy};
use crate::reason::Reason;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use std::sync::Arc;

/// Policy on the server-to-client direction: JSON events in text messages go through
/// [`EventPolicy`]; control frames pass at once (a close waits behind a held block).
#[derive(Debug)]
pub struct WsPolicy {
    reader: FrameReader,
    /// The event-level policy.
    pub events: EventPolicy,
    message: Option<(u8, BytesMut, BytesMut)>,
    limit: usize,
}

impl WsPolicy {
    /// Policy for the Responses events of one WebSocket.
    pub fn new(policy: Arc<LlmPolicy>, limit: usize) -> Self {
        WsPolicy {
            reader: FrameReader::default(),
            events: EventPolicy::new(Api::Responses, Transport::WebSocket, policy, limit),
            message: None,
            limit,
        }
    }

    /// Feeds bytes from the upstream; returns what goes to the client now.
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let reader = &mut self.reader;
        if let Some(out) = self.events.bypass(|| reader.take_rest(), chunk) {
            return out;
        }
        let mut out = BytesMut::new();
        self.reader.push(chunk);
        loop {
            let frame = match self.reader.next_frame(self.limit) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let d = Denial::new(
                        match e {
                            FrameError::TooLarge => Reason::LlmBodyTooLarge,
                            FrameError::Unsupported => Reason::LlmResponseUnreadable,
                        },
                        "warden (the egress proxy) stopped the response: a WebSocket frame could not be checked.",
                    );
                    self.events.passthrough_or_deny(d, &mut out);
                    if self.events.passthrough() {
                        if let Some((_, raw, _)) = self.message.take() {
                            out.extend_from_slice(&raw);
                        }
                        out.extend_from_slice(&self.reader.take_rest());
                    }
                    break;
                }
            };
            match frame.opcode {
                CLOSE => self.events.on_message(frame.raw, None, &mut out),
                op if op >= 0x8 => out.extend_from_slice(&frame.raw),
                op => {
                    let (_, raw, payload) = self
                        .message
                        .get_or_insert_with(|| (op, BytesMut::new(), BytesMut::new()));
                    raw.extend_from_slice(&frame.raw);
                    payload.extend_from_slice(&frame.payload);
                    if payload.len() > self.limit {
                        self.message = None;
                        let d = Denial::new(
                            Reason::LlmBodyTooLarge,
                            "warden (the egress proxy) stopped the response: a message grew past limits.llm_buffer_bytes.",
                        );
                        self.events.passthrough_or_deny(d, &mut out);
                        break;
                    }
                    if frame.fin {
                        if let Some((op, raw, payload)) = self.message.take() {
                            let text = (op == TEXT).then(|| String::from_utf8_lossy(&payload));
                            self.events
                                .on_message(raw.freeze(), text.as_deref(), &mut out);
                        }
                    }
                }
            }
            if self.events.finished() {
                break;
            }
        }
        out.freeze()
    }
}

/// Policy on the client-to-server direction: `response.create` events are checked against
/// `allow_models`, then by the caller's budget check (each is an LLM call), before they are
/// forwarded.
#[derive(Debug)]
pub struct ClientCheck {
    reader: FrameReader,
    policy: Arc<LlmPolicy>,
    message: Option<(BytesMut, BytesMut)>,
    limit: usize,
    blocked: bool,
    /// In report mode, the first refusal that was not enforced.
    pub would_deny: Option<Denial>,
    /// The model of the latest `response.create` that named one: the one a refusal was
    /// about (nothing is forwarded after it), else the one in use when the socket closed.
    pub model: Option<String>,
}

impl ClientCheck {
    /// Checks the client frames of one WebSocket.
    pub fn new(policy: Arc<LlmPolicy>, limit: usize) -> Self {
        ClientCheck {
            reader: FrameReader::default(),
            policy,
            message: None,
            limit,
            blocked: false,
            would_deny: None,
            model: None,
        }
    }

    /// Feeds bytes from the client; returns what to forward and, if a call was refused, the
    /// denial (nothing is forwarded from then on). `admit` is asked about each
    /// `response.create` the model check let through; its refusal (a spent budget) is
    /// enforced even in `mode: report`, which is about `llm` policy only.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        admit: &mut dyn FnMut() -> Result<(), Denial>,
    ) -> (Bytes, Option<Denial>) {
        let mut out = BytesMut::new();
        if self.blocked {
            return (out.freeze(), None);
        }
        self.reader.push(chunk);
        loop {
            let frame = match self.reader.next_frame(self.limit) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    // Not checkable: forwarded as is; the model check needs readable text.
                    if let Some((raw, _)) = self.message.take() {
                        out.extend_from_slice(&raw);
                    }
                    out.extend_from_slice(&self.reader.take_rest());
                    break;
                }
            };
            if frame.opcode >= 0x8 {
                out.extend_from_slice(&frame.raw);
                continue;
            }
            let is_text =
                frame.opcode == TEXT || (frame.opcode == CONTINUATION && self.message.is_some());
            let (raw, payload) = self
                .message
                .get_or_insert_with(|| (BytesMut::new(), BytesMut::new()));
            raw.extend_from_slice(&frame.raw);
            if is_text {
                payload.extend_from_slice(&frame.payload);
            }
            if !frame.fin {
                continue;
            }
            let Some((raw, payload)) = self.message.take() else {
                continue;
            };
            let (creates, checked) = self.check(&payload);
            if let Err(d) = checked {
                if self.policy.report {
                    self.would_deny.get_or_insert(d);
                } else {
                    self.blocked = true;
                    return (out.freeze(), Some(d));
                }
            }
            if creates {
                if let Err(d) = admit() {
                    self.blocked = true;
                    return (out.freeze(), Some(d));
                }
            }
            out.extend_from_slice(&raw);
        }
        (out.freeze(), None)
    }

    /// Whether the message starts a response (`response.create`), and the model check.
    fn check(&mut self, payload: &[u8]) -> (bool, Result<(), Denial>) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return (false, Ok(()));
        };
        if v.get("type").and_then(Value::as_str) != Some("response.create") {
            return (false, Ok(()));
        }
        let model = v
            .get("model")
            .or_else(|| v.pointer("/response/model"))
            .and_then(Value::as_str);
        if let Some(m) = model {
            self.model = Some(m.to_string());
        }
        (true, self.policy.check_model(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::frame::{encode, masked};

    fn policy(extra: &str) -> Arc<LlmPolicy> {
        crate::llm::test_policy("openai", extra)
    }

    fn event(v: &str) -> Bytes {
        encode(TEXT, v.as_bytes())
    }

    #[test]
    fn server_events_pass_and_denied_calls_end_with_failed_and_close_1008() {
        let p = policy(", deny_tools: [bash]");
        let mut ws = WsPolicy::new(p.clone(), 1 << 20);
        let created =
            event(r#"{"type":"response.created","sequence_number":1,"response":{"id":"r1"}}"#);
        assert_eq!(ws.feed(&created), created);
        let added = event(
            r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"type":"function_call","name":"bash","arguments":""}}"#,
        );
        assert!(ws.feed(&added).is_empty());
        let ping = encode(0x9, b"p");
        assert_eq!(ws.feed(&ping), ping, "control frames are not held");
        let done = event(
            r#"{"type":"response.output_item.done","sequence_number":3,"output_index":0,"item":{"type":"function_call","name":"bash","arguments":"{}"}}"#,
        );
        let out = ws.feed(&done);
        let mut r = FrameReader::default();
        r.push(&out);
        let e = r.next_frame(1 << 20).unwrap().unwrap();
        let e: Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(e["type"], "error");
        assert_eq!(e["status"], 403);
        assert_eq!(e["sequence_number"], 4);
        let f = r.next_frame(1 << 20).unwrap().unwrap();
        let f: Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(f["type"], "response.failed");
        assert_eq!(f["sequence_number"], 5);
        let c = r.next_frame(1 << 20).unwrap().unwrap();
        assert_eq!(c.opcode, CLOSE);
        assert_eq!(&c.payload[..2], &1008u16.to_be_bytes());
        assert!(ws.feed(&created).is_empty(), "nothing after the close");
    }

    #[test]
    fn client_response_create_is_checked_against_allowed_models() {
        let p = policy(", allow_models: ['gpt-5*']");
        let mut c = ClientCheck::new(p, 1 << 20);
        let mut admit = || Ok(());
        let ok = masked(
            TEXT,
            true,
            br#"{"type":"response.create","model":"gpt-5-codex"}"#,
        );
        let (fwd, d) = c.feed(&ok, &mut admit);
        assert_eq!(&fwd[..], &ok[..]);
        assert!(d.is_none());
        assert_eq!(c.model.as_deref(), Some("gpt-5-codex"));
        // Fragmented, split mid-frame.
        let mut bad = masked(TEXT, false, br#"{"type":"response.create","#);
        bad.extend(masked(CONTINUATION, true, br#""model":"gpt-4o"}"#));
        let (fwd, d) = c.feed(&bad[..5], &mut admit);
        assert!(fwd.is_empty() && d.is_none());
        let (fwd, d) = c.feed(&bad[5..], &mut admit);
        assert!(fwd.is_empty());
        assert_eq!(d.unwrap().reason, Reason::LlmModelDenied);
        assert_eq!(
            c.model.as_deref(),
            Some("gpt-4o"),
            "the refused model is the one kept"
        );
        assert!(
            c.feed(&ok, &mut admit).0.is_empty(),
            "nothing is forwarded after a refusal"
        );
    }

    #[test]
    fn each_response_create_is_admitted_by_the_caller_even_in_report_mode() {
        let mut c = ClientCheck::new(policy(", mode: report"), 1 << 20);
        let mut asked = 0;
        let mut admit = || {
            asked += 1;
            if asked > 1 {
                Err(Denial::new(Reason::BudgetExceeded, "spent"))
            } else {
                Ok(())
            }
        };
        let other = masked(TEXT, true, br#"{"type":"session.update"}"#);
        let create = masked(TEXT, true, br#"{"type":"response.create","model":"gpt-5"}"#);
        let (fwd, d) = c.feed(&other, &mut admit);
        assert_eq!(&fwd[..], &other[..]);
        assert!(d.is_none());
        let (fwd, d) = c.feed(&create, &mut admit);
        assert_eq!(&fwd[..], &create[..]);
        assert!(d.is_none());
        let (fwd, d) = c.feed(&create, &mut admit);
        assert!(fwd.is_empty());
        assert_eq!(d.unwrap().reason, Reason::BudgetExceeded);
        assert_eq!(asked, 2, "only response.create is a call");
    }
}
