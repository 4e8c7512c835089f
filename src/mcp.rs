//! MCP tool policy on Streamable HTTP endpoints: the `mcp` section, what a POST body asks
//! (JSON-RPC requests, notifications and batches, with the `mcp-method` / `mcp-name` headers
//! checked against the body), the verdict on its `tools/call`s, the JSON-RPC answers warden
//! gives for denied calls, and `tools/list` results with denied tools taken out, in JSON bodies
//! and SSE events alike. Called by the MCP exchange that `request_filter` runs
//! (`proxy::mcp`).

use crate::compile_error::{CompileError, CompileErrors};
use crate::llm::sse::{self, Framer};
use crate::llm::LlmMode;
use crate::policy::{normalize_path, HostPattern, PathGlob};
use crate::reason::Reason;
use crate::target::Authority;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// One `mcp` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The MCP server's host (optional `:port`); its tunnels are intercepted.
    pub host: HostPattern,
    /// The endpoint's path pattern (as in `network.rules`); absent: every path on the host.
    #[serde(default)]
    pub path: Option<PathGlob>,
    /// Non-empty: only tools matching one of these globs may be listed or called.
    #[serde(default)]
    pub allow_tools: Vec<String>,
    /// Globs on tool names that may not be listed or called; deny wins.
    #[serde(default)]
    pub deny_tools: Vec<String>,
    /// `enforce` or `report` (log `would_deny`, change nothing).
    #[serde(default)]
    pub mode: LlmMode,
}

/// A compiled `mcp` entry.
#[derive(Debug)]
pub struct McpPolicy {
    host: HostPattern,
    path: Option<PathGlob>,
    /// Its config key (`mcp[0]`, `proxy.auth.clients[1].mcp[0]`).
    key: String,
    /// `mode: report`.
    pub report: bool,
    deny_tools: Vec<(String, GlobMatcher)>,
    allow_tools: Option<GlobSet>,
}

/// The compiled `mcp` section: the first entry naming a destination and path applies.
#[derive(Debug, Default)]
pub struct McpRules {
    list: Vec<Arc<McpPolicy>>,
}

/// Compiles `entries` under config key `key`; every bad glob is reported.
pub fn compile(entries: &[McpConfig], key: &str) -> Result<McpRules, CompileErrors> {
    let mut errors = Vec::new();
    let mut list = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = |field: &str, j: usize| format!("{key}[{i}].{field}[{j}]");
        let glob = |field: &str, j: usize, g: &str| {
            Glob::new(g).map_err(|err| {
                CompileError::new(at(field, j), format!("`{g}` is not a glob: {err}"))
            })
        };
        let mut deny_tools = Vec::new();
        for (j, t) in e.deny_tools.iter().enumerate() {
            match glob("deny_tools", j, t) {
                Ok(g) => deny_tools.push((t.clone(), g.compile_matcher())),
                Err(err) => errors.push(err),
            }
        }
        let mut allow = GlobSetBuilder::new();
        for (j, t) in e.allow_tools.iter().enumerate() {
            match glob("allow_tools", j, t) {
                Ok(g) => {
                    allow.add(g);
                }
                Err(err) => errors.push(err),
            }
        }
        let allow_tools = match e.allow_tools.is_empty() {
            true => None,
            false => allow
                .build()
                .map_err(|err| {
                    errors.push(CompileError::new(
                        format!("{key}[{i}].allow_tools"),
                        err.to_string(),
                    ))
                })
                .ok(),
        };
        list.push(Arc::new(McpPolicy {
            host: e.host.clone(),
            path: e.path.clone(),
            key: format!("{key}[{i}]"),
            report: e.mode == LlmMode::Report,
            deny_tools,
            allow_tools,
        }));
    }
    match errors.is_empty() {
        true => Ok(McpRules { list }),
        false => Err(errors),
    }
}

impl McpRules {
    /// The entry for a request to `dest` with `path` (query included): the first whose host
    /// and path pattern match the path's matching form.
    pub fn for_request(&self, dest: &Authority, path: &str) -> Option<&Arc<McpPolicy>> {
        let mut segments = None;
        self.list.iter().find(|p| {
            p.host.matches(dest)
                && p.path
                    .as_ref()
                    .is_none_or(|g| g.matches(segments.get_or_insert_with(|| normalize_path(path))))
        })
    }

    /// Whether an entry names `dest` (its tunnels are intercepted).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.list.iter().any(|p| p.host.matches(dest))
    }
}

/// A tool the policy refuses: which one, the entry that decided and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDenial {
    /// The tool's name.
    pub tool: String,
    /// The config entry (`mcp[0].deny_tools[1]`), for the log line.
    pub rule: String,
    /// Why, for the agent.
    pub why: String,
}

impl ToolDenial {
    /// What the agent reads in the tool result: the tool, the reason code and the rule.
    pub fn message(&self) -> String {
        format!(
            "warden (the egress proxy) refused the call to MCP tool `{}` ({}): {}. Do not call it again; choose another way.",
            self.tool,
            Reason::McpToolDenied.code(),
            self.why
        )
    }
}

impl McpPolicy {
    /// Checks a tool name: `deny_tools` first, then `allow_tools`.
    pub fn check_tool(&self, name: &str) -> Result<(), ToolDenial> {
        let deny = |why: String, rule: String| {
            Err(ToolDenial {
                tool: name.to_string(),
                rule: format!("{}.{rule}", self.key),
                why,
            })
        };
        if let Some(j) = self.deny_tools.iter().position(|(_, g)| g.is_match(name)) {
            let pattern = &self.deny_tools[j].0;
            return deny(
                format!("it matches mcp.deny_tools entry `{pattern}`"),
                format!("deny_tools[{j}]"),
            );
        }
        match &self.allow_tools {
            Some(allowed) if !allowed.is_match(name) => deny(
                "it is not in mcp.allow_tools".to_string(),
                "allow_tools".to_string(),
            ),
            _ => Ok(()),
        }
    }
}

/// The MCP routing headers of a request, every value as sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutingHeaders<'a> {
    /// `mcp-method`.
    pub method: &'a [&'a [u8]],
    /// `mcp-name`.
    pub name: &'a [&'a [u8]],
}

/// One JSON-RPC message a client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request, answered by its `id`.
    Request {
        /// The id, echoed in the answer.
        id: Value,
        /// The method.
        method: String,
        /// The tool a `tools/call` names.
        tool: Option<String>,
    },
    /// A notification: never answered.
    Notification {
        /// The method.
        method: String,
        /// The tool a `tools/call` names.
        tool: Option<String>,
    },
    /// A response to a request of the server's.
    Response,
}

impl Message {
    fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            Message::Response => None,
        }
    }

    fn tool(&self) -> Option<&str> {
        match self {
            Message::Request { tool, .. } | Message::Notification { tool, .. } => tool.as_deref(),
            Message::Response => None,
        }
    }
}

/// A POST body read as MCP: its messages, and whether it was a batch (a JSON array).
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// The body was a JSON array.
    pub batch: bool,
}

/// Why a body is refused before anything is decided: `mcp_malformed` or `mcp_ambiguous`, with
/// what was wrong (for the log; it names no value but the methods and tools sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The reason code.
    pub reason: Reason,
    /// What was wrong.
    pub detail: String,
}

fn malformed(detail: impl Into<String>) -> Unreadable {
    Unreadable {
        reason: Reason::McpMalformed,
        detail: detail.into(),
    }
}

fn ambiguous(detail: impl Into<String>) -> Unreadable {
    Unreadable {
        reason: Reason::McpAmbiguous,
        detail: detail.into(),
    }
}

/// The params key a method's `mcp-name` header mirrors (as the MCP SDKs define it).
fn name_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// An `mcp-name` value as MCP clients encode it: verbatim, or `=?base64?…?=` for values that
/// are not plain printable ASCII. `None` when the sentinel does not decode to UTF-8.
fn decode_name(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        None => Some(text.to_string()),
        Some(payload) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .ok()?;
            String::from_utf8(bytes).ok()
        }
    }
}

fn read_message(v: &Value) -> Result<(Message, Option<String>), Unreadable> {
    let Value::Object(m) = v else {
        return Err(malformed("a JSON-RPC message is not a JSON object"));
    };
    let Some(method) = m.get("method") else {
        if m.contains_key("result") || m.contains_key("error") {
            return Ok((Message::Response, None));
        }
        return Err(malformed(
            "a JSON-RPC message has neither a method nor a result",
        ));
    };
    let Some(method) = method.as_str() else {
        return Err(malformed("a JSON-RPC method is not a string"));
    };
    let params = m.get("params");
    if params.is_some_and(|p| !p.is_object() && !p.is_array()) {
        return Err(malformed(format!(
            "`{method}` has params that are not an object"
        )));
    }
    // What the `mcp-name` header must match: the tool, prompt or resource the body names.
    let named = match name_key(method) {
        Some(key) => match params.and_then(|p| p.get(key)) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => return Err(malformed(format!("`{method}` names no `{key}` string"))),
        },
        None => None,
    };
    let tool = (method == "tools/call").then(|| named.clone()).flatten();
    let method = method.to_string();
    let msg = match m.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Message::Request {
            id: id.clone(),
            method,
            tool,
        },
        Some(_) => return Err(malformed("a JSON-RPC id is not a string or a number")),
        None => Message::Notification { method, tool },
    };
    Ok((msg, named))
}

/// Reads a POST body: one JSON-RPC message or a batch of them. The routing headers must agree
/// with the body: each at most once, and when present, `mcp-method` equal to the (single)
/// message's method and `mcp-name` to the tool, prompt or resource it names; otherwise the
/// request is ambiguous (an origin routing by the header and one reading the body would run
/// different things), and a batch with either header is too.
pub fn read_request(body: &[u8], headers: RoutingHeaders<'_>) -> Result<Exchange, Unreadable> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("the body is not JSON ({e})")))?;
    // Parsers differ on a repeated key (the first or the last wins, or an error): a body with
    // one could name one tool to warden and another to the server.
    if let Err(e) = serde_json::from_slice::<UniqueKeys>(body) {
        return Err(ambiguous(format!("the body repeats a key ({e})")));
    }
    let (values, batch) = match &v {
        Value::Array(a) if a.is_empty() => return Err(malformed("the batch is empty")),
        Value::Array(a) => (a.iter().collect::<Vec<_>>(), true),
        other => (vec![other], false),
    };
    let mut messages = Vec::with_capacity(values.len());
    let mut named = None;
    for value in values {
        let (msg, n) = read_message(value)?;
        messages.push(msg);
        named = n;
    }
    if headers.method.len() > 1 || headers.name.len() > 1 {
        return Err(ambiguous(
            "an mcp-method or mcp-name header is sent more than once",
        ));
    }
    if (!headers.method.is_empty() || !headers.name.is_empty()) && batch {
        return Err(ambiguous(
            "a batch carries an mcp-method or mcp-name header, which names one message",
        ));
    }
    let body_method = messages.first().and_then(Message::method);
    if let Some(raw) = headers.method.first() {
        if body_method.map(str::as_bytes) != Some(*raw) {
            return Err(ambiguous(format!(
                "the mcp-method header does not match the body's method `{}`",
                body_method.unwrap_or("(none)")
            )));
        }
    }
    if let Some(raw) = headers.name.first() {
        let decoded = decode_name(raw);
        if named.is_none() || decoded != named {
            return Err(ambiguous(format!(
                "the mcp-name header does not match what the body's `{}` names",
                body_method.unwrap_or("(none)")
            )));
        }
    }
    Ok(Exchange { messages, batch })
}

/// A JSON value that parses only when no object in it repeats a key (keys compared as
/// decoded, so `"name"` and `"na\u006de"` are the same).
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("a repeated key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
}

impl Exchange {
    /// The methods, comma-separated (the first 8), for the log line.
    pub fn methods(&self) -> Option<String> {
        join(self.messages.iter().filter_map(Message::method))
    }

    /// The tools `tools/call`s name, comma-separated (the first 8), for the log line.
    pub fn tools(&self) -> Option<String> {
        join(self.messages.iter().filter_map(Message::tool))
    }
}

/// Up to 8 names, each cut to 128 bytes, comma-separated; `None` when there are none.
fn join<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    let cut = |s: &'a str| {
        let mut end = s.len().min(128);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    };
    let list: Vec<&str> = names.take(8).map(cut).collect();
    (!list.is_empty()).then(|| list.join(","))
}

/// What warden does with a POST body.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Calls to tools the policy refuses (in report mode: would refuse).
    pub denials: Vec<ToolDenial>,
    /// warden's own answer, when nothing is forwarded: the JSON-RPC responses (empty when the
    /// body held only notifications, answered `202 Accepted`). `None`: forward the body.
    pub answer: Option<Vec<Value>>,
}

/// Decides a body: each `tools/call` (request or notification) is checked. In enforce mode a
/// body with a denied call is not forwarded at all: a denied request gets a tool result with
/// `isError: true` naming the reason; in a batch, every other request gets a JSON-RPC error
/// saying it was not sent; notifications get nothing.
pub fn decide(policy: &McpPolicy, ex: &Exchange) -> Verdict {
    let checks: Vec<Option<ToolDenial>> = ex
        .messages
        .iter()
        .map(|m| m.tool().and_then(|t| policy.check_tool(t).err()))
        .collect();
    let denials: Vec<ToolDenial> = checks.iter().flatten().cloned().collect();
    if denials.is_empty() || policy.report {
        return Verdict {
            denials,
            answer: None,
        };
    }
    let answer = ex
        .messages
        .iter()
        .zip(&checks)
        .filter_map(|(m, denied)| match (m, denied) {
            (Message::Request { id, .. }, Some(d)) => Some(tool_refusal(id, &d.message())),
            (Message::Request { id, method, .. }, None) => Some(batch_refusal(id, method)),
            _ => None,
        })
        .collect();
    Verdict {
        denials,
        answer: Some(answer),
    }
}

/// A `tools/call` result with `isError: true` whose text says why: what the model reads.
/// `resultType` is what 2026-07-28 results carry; earlier revisions ignore it.
pub fn tool_refusal(id: &Value, text: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "content": [{"type": "text", "text": text}],
            "isError": true,
            "resultType": "complete",
        },
    })
}

fn batch_refusal(id: &Value, method: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": -32000,
            "message": format!(
                "warden (the egress proxy) did not send this `{method}` request: its batch holds a tools/call it refused ({}). Send it again without that call.",
                Reason::McpToolDenied.code()
            ),
        },
    })
}

/// Whether a client's `Accept` takes only SSE (then warden's own answers are SSE too).
pub fn accepts_only_sse(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let types: Vec<String> = accept
        .split(',')
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    let json = types
        .iter()
        .any(|t| matches!(t.as_str(), "application/json" | "application/*" | "*/*"));
    !json && types.iter().any(|t| t == "text/event-stream")
}

/// warden's answer as a body: JSON (one object, or an array for a batch), or one SSE
/// `message` event per response. Returns the content type and the bytes.
pub fn render(answer: &[Value], batch: bool, sse: bool) -> (&'static str, Bytes) {
    if sse {
        let mut out = String::new();
        for v in answer {
            out.push_str("event: message\ndata: ");
            out.push_str(&v.to_string());
            out.push_str("\n\n");
        }
        return ("text/event-stream", Bytes::from(out));
    }
    let text = match (batch, answer) {
        (false, [one]) => one.to_string(),
        _ => Value::Array(answer.to_vec()).to_string(),
    };
    ("application/json", Bytes::from(text))
}

/// What filtering a response body (or an SSE event's data) did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    /// The new text, when tools were taken out.
    pub changed: Option<Vec<u8>>,
    /// The tools taken out (in report mode: that would have been).
    pub removed: Vec<ToolDenial>,
}

/// Takes the tools the policy refuses out of every `tools/list` result (a response whose
/// `result.tools` is an array) in `text`, one message or a batch. Text that is not JSON is
/// left alone: no client can read a listing from it either. Page by page: a result with
/// `nextCursor` is filtered like any other, and the cursor kept.
pub fn filter_listing(policy: &McpPolicy, text: &[u8]) -> Listing {
    let Ok(mut v) = serde_json::from_slice::<Value>(text) else {
        return Listing::default();
    };
    let mut removed = Vec::new();
    let mut changed = false;
    let messages: Vec<&mut Value> = match &mut v {
        Value::Array(a) => a.iter_mut().collect(),
        one => vec![one],
    };
    for m in messages {
        if m.get("method").is_some() {
            continue;
        }
        let Some(Value::Array(tools)) = m.pointer_mut("/result/tools") else {
            continue;
        };
        tools.retain(|t| {
            let verdict = match t.get("name").and_then(Value::as_str) {
                Some(name) => policy.check_tool(name),
                // A tool without a name cannot be checked, nor called.
                None => Err(ToolDenial {
                    tool: String::new(),
                    rule: policy.key.clone(),
                    why: "it has no name".into(),
                }),
            };
            match verdict {
                Ok(()) => true,
                Err(d) => {
                    removed.push(d);
                    policy.report
                }
            }
        });
        changed |= !policy.report && !removed.is_empty();
    }
    Listing {
        changed: changed.then(|| v.to_string().into_bytes()),
        removed,
    }
}

/// `tools/list` filtering over an SSE stream (a POST's answer or the GET stream): each event
/// goes out as soon as it is complete, unchanged unless its data is a listing with refused
/// tools, which is rewritten with them taken out (its other fields kept, in order).
#[derive(Debug)]
pub struct SseFilter {
    framer: Framer,
    policy: Arc<McpPolicy>,
    limit: usize,
    /// Tools taken out so far (report mode: that would have been).
    pub removed: Vec<ToolDenial>,
    /// An event grew past the limit: in enforce mode the stream must end.
    pub over: bool,
}

impl SseFilter {
    /// A filter holding at most `limit` bytes of an unfinished event.
    pub fn new(policy: Arc<McpPolicy>, limit: usize) -> Self {
        SseFilter {
            framer: Framer::new(),
            policy,
            limit,
            removed: Vec::new(),
            over: false,
        }
    }

    /// Feeds a chunk; returns what may go to the client now. After `over` is set in enforce
    /// mode nothing more comes out; in report mode the rest passes unchanged.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        if self.over {
            return match self.policy.report {
                true => Bytes::copy_from_slice(chunk),
                false => Bytes::new(),
            };
        }
        self.framer.push(chunk);
        let mut out = BytesMut::new();
        while let Some(event) = self.framer.next_event() {
            out.extend_from_slice(&self.event(&event));
        }
        if end {
            let rest = self.framer.take_rest();
            out.extend_from_slice(&self.event(&rest));
        } else if self.framer.buffered() > self.limit {
            self.over = true;
            if self.policy.report {
                out.extend_from_slice(&self.framer.take_rest());
            }
        }
        out.freeze()
    }

    fn event(&mut self, raw: &Bytes) -> Bytes {
        let Some(data) = sse::parse(raw).data else {
            return raw.clone();
        };
        let listing = filter_listing(&self.policy, data.as_bytes());
        self.removed.extend(listing.removed);
        let Some(new) = listing.changed else {
            return raw.clone();
        };
        // The event's other fields, in order, with its data lines replaced by one.
        let text = String::from_utf8_lossy(raw);
        let mut out = String::new();
        let mut data_written = false;
        for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
            let field = line.split(':').next().unwrap_or_default();
            if field != "data" {
                out.push_str(line);
                out.push('\n');
            } else if !data_written {
                out.push_str("data: ");
                out.push_str(&String::from_utf8_lossy(&new));
                out.push('\n');
                data_written = true;
            }
        }
        out.push('\n');
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> McpRules {
        let entries: Vec<McpConfig> = serde_yaml::from_str(yaml).unwrap();
        compile(&entries, "mcp").unwrap()
    }

    fn policy(yaml: &str) -> Arc<McpPolicy> {
        rules(yaml).list[0].clone()
    }

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), Some(443)).unwrap()
    }

    const DENY: &str = "[{ host: mcp.test, path: /mcp, deny_tools: ['delete_*'] }]";

    fn read(body: &str, method: &[&str], name: &[&str]) -> Result<Exchange, Unreadable> {
        let m: Vec<&[u8]> = method.iter().map(|s| s.as_bytes()).collect();
        let n: Vec<&[u8]> = name.iter().map(|s| s.as_bytes()).collect();
        read_request(
            body.as_bytes(),
            RoutingHeaders {
                method: &m,
                name: &n,
            },
        )
    }

    #[test]
    fn an_entry_applies_to_its_host_and_path_in_matching_form() {
        let r = rules(DENY);
        assert!(r.for_request(&dest("mcp.test"), "/mcp").is_some());
        assert!(r.for_request(&dest("mcp.test"), "/mcp/?x=1").is_some());
        assert!(r.for_request(&dest("mcp.test"), "/a/../mcp;x").is_some());
        assert!(r.for_request(&dest("mcp.test"), "/other").is_none());
        assert!(r.for_request(&dest("other.test"), "/mcp").is_none());
        assert!(r.has_for(&dest("mcp.test")));
        let any_path = rules("[{ host: mcp.test }]");
        assert!(any_path.for_request(&dest("mcp.test"), "/x/y").is_some());
    }

    #[test]
    fn bad_globs_are_errors_naming_their_key() {
        let entries: Vec<McpConfig> =
            serde_yaml::from_str("[{ host: a.test, deny_tools: ['[x'], allow_tools: [ok, '{'] }]")
                .unwrap();
        let errors = compile(&entries, "mcp").unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["mcp[0].deny_tools[0]", "mcp[0].allow_tools[1]"]);
        assert!(serde_yaml::from_str::<Vec<McpConfig>>("[{ host: a.test, tools: [] }]").is_err());
    }

    #[test]
    fn deny_wins_over_allow_and_allow_lists_the_only_tools() {
        let p = policy(
            "[{ host: a.test, allow_tools: ['read_*', delete_x], deny_tools: ['delete_*'] }]",
        );
        assert!(p.check_tool("read_file").is_ok());
        let d = p.check_tool("delete_x").unwrap_err();
        assert_eq!(d.rule, "mcp[0].deny_tools[0]");
        assert!(d.message().contains("mcp_tool_denied"), "{}", d.message());
        assert_eq!(
            p.check_tool("write").unwrap_err().rule,
            "mcp[0].allow_tools"
        );
    }

    #[test]
    fn a_denied_call_is_answered_as_a_tool_error_with_its_id_echoed() {
        let p = policy(DENY);
        let ex = read(
            r#"{"jsonrpc":"2.0","id":"a-7","method":"tools/call","params":{"name":"delete_all","arguments":{}}}"#,
            &["tools/call"],
            &["delete_all"],
        )
        .unwrap();
        let v = decide(&p, &ex);
        assert_eq!(v.denials[0].tool, "delete_all");
        let answer = v.answer.unwrap();
        assert_eq!(answer[0]["id"], "a-7");
        assert_eq!(answer[0]["result"]["isError"], true);
        let text = answer[0]["result"]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("mcp_tool_denied") && text.contains("delete_all"),
            "{text}"
        );
        let (ct, body) = render(&answer, ex.batch, false);
        assert_eq!(ct, "application/json");
        assert!(body.starts_with(b"{\"jsonrpc\""));
        let (ct, body) = render(&answer, ex.batch, true);
        assert_eq!(ct, "text/event-stream");
        assert!(body.starts_with(b"event: message\ndata: {") && body.ends_with(b"}\n\n"));
        // An allowed call goes through; report mode forwards a denied one too.
        let ok = read(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(decide(&p, &ok).answer, None);
        let report = policy("[{ host: a.test, deny_tools: ['delete_*'], mode: report }]");
        let v = decide(&report, &ex);
        assert_eq!((v.denials.len(), v.answer), (1, None));
    }

    #[test]
    fn a_batch_with_a_denied_call_is_answered_whole_and_notifications_never() {
        let p = policy(DENY);
        let ex = read(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all"}},
                {"jsonrpc":"2.0","method":"notifications/progress","params":{}},
                {"jsonrpc":"2.0","id":3,"result":{}}]"#,
            &[],
            &[],
        )
        .unwrap();
        assert!(ex.batch);
        assert_eq!(
            ex.methods().as_deref(),
            Some("tools/list,tools/call,notifications/progress")
        );
        assert_eq!(ex.tools().as_deref(), Some("delete_all"));
        let answer = decide(&p, &ex).answer.unwrap();
        assert_eq!(answer.len(), 2);
        assert_eq!(
            (&answer[0]["id"], &answer[0]["error"]["code"]),
            (&json!(1), &json!(-32000))
        );
        assert_eq!(
            (&answer[1]["id"], &answer[1]["result"]["isError"]),
            (&json!(2), &json!(true))
        );
        let (_, body) = render(&answer, true, false);
        assert!(body.starts_with(b"["));
        // A denied call sent as a notification is not forwarded, and nothing answers it.
        let note = read(
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_x"}}"#,
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(decide(&p, &note).answer, Some(vec![]));
    }

    /// A body, its `mcp-method` and `mcp-name` values, and the refusal it gets.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], Option<Reason>);

    #[test]
    fn headers_that_disagree_with_the_body_are_ambiguous() {
        let call =
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all"}}"#;
        let table: &[Case] = &[
            (call, &["tools/call"], &["delete_all"], None),
            (call, &[], &[], None),
            (call, &["tools/list"], &[], Some(Reason::McpAmbiguous)),
            (call, &["tools/call"], &["echo"], Some(Reason::McpAmbiguous)),
            (
                call,
                &["tools/call", "tools/call"],
                &[],
                Some(Reason::McpAmbiguous),
            ),
            (
                call,
                &[],
                &["delete_all", "delete_all"],
                Some(Reason::McpAmbiguous),
            ),
            // The SDKs' base64 form of a name decodes before it is compared.
            (call, &[], &["=?base64?ZGVsZXRlX2FsbA==?="], None),
            (
                call,
                &[],
                &["=?base64?ZWNobw==?="],
                Some(Reason::McpAmbiguous),
            ),
            (call, &[], &["=?base64?!!?="], Some(Reason::McpAmbiguous)),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                &[],
                &["echo"],
                Some(Reason::McpAmbiguous),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                &["tools/call"],
                &[],
                Some(Reason::McpAmbiguous),
            ),
            (
                &format!("[{call}]"),
                &["tools/call"],
                &[],
                Some(Reason::McpAmbiguous),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_all"}}"#,
                &[],
                &[],
                Some(Reason::McpAmbiguous),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#,
                &[],
                &[],
                Some(Reason::McpAmbiguous),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","na\u006de":"x"}}"#,
                &[],
                &[],
                Some(Reason::McpAmbiguous),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":{"b":1,"b":2}}}}"#,
                &[],
                &[],
                Some(Reason::McpAmbiguous),
            ),
            ("{not json", &[], &[], Some(Reason::McpMalformed)),
            ("[]", &[], &[], Some(Reason::McpMalformed)),
            ("[1]", &[], &[], Some(Reason::McpMalformed)),
            (
                r#"{"jsonrpc":"2.0","id":1}"#,
                &[],
                &[],
                Some(Reason::McpMalformed),
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                &[],
                &[],
                Some(Reason::McpMalformed),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
                &[],
                &[],
                Some(Reason::McpMalformed),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"x"}"#,
                &[],
                &[],
                Some(Reason::McpMalformed),
            ),
        ];
        for (body, method, name, want) in table {
            let got = read(body, method, name).err().map(|u| u.reason);
            assert_eq!(got, *want, "{body} {method:?} {name:?}");
        }
    }

    #[test]
    fn listings_lose_denied_tools_page_by_page_and_keep_the_rest() {
        let p = policy(DENY);
        let page = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"},{"name":"delete_all"},{"title":"nameless"}],"nextCursor":"p2"}}"#;
        let l = filter_listing(&p, page.as_bytes());
        let v: Value = serde_json::from_slice(&l.changed.unwrap()).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name": "echo"}]));
        assert_eq!(v["result"]["nextCursor"], "p2");
        assert_eq!(v["id"], 2);
        assert_eq!(l.removed[0].tool, "delete_all");
        // Nothing to take out, other results and other text are left byte for byte.
        for text in [
            r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"}]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
            r#"{"jsonrpc":"2.0","method":"x","params":{"result":{"tools":[{"name":"delete_a"}]}}}"#,
            "not json",
        ] {
            assert_eq!(
                filter_listing(&p, text.as_bytes()),
                Listing::default(),
                "{text}"
            );
        }
        let report = policy("[{ host: a.test, deny_tools: ['delete_*'], mode: report }]");
        let l = filter_listing(&report, page.as_bytes());
        assert!(l.changed.is_none());
        assert_eq!(l.removed.len(), 2);
    }

    #[test]
    fn sse_listings_are_filtered_in_any_chunking_and_other_events_pass_byte_for_byte() {
        let stream = "event: message\r\nid: 5\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"delete_all\"},{\"name\":\"echo\"}]}}\r\n\r\n: ping\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n";
        let want = "event: message\nid: 5\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"echo\"}]}}\n\n: ping\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n";
        for cut in [1, 7, 40, 100, stream.len()] {
            let mut f = SseFilter::new(policy(DENY), 1 << 20);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(cut) {
                out.extend_from_slice(&f.feed(piece, false));
            }
            out.extend_from_slice(&f.feed(b"", true));
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut {cut}");
            assert_eq!(f.removed.len(), 1);
        }
    }

    #[test]
    fn an_sse_event_over_the_limit_ends_the_stream_unless_reporting() {
        let mut f = SseFilter::new(policy(DENY), 16);
        assert_eq!(&f.feed(b"data: 1\n\n", false)[..], b"data: 1\n\n");
        assert!(f
            .feed(b"data: a long event without an end", false)
            .is_empty());
        assert!(f.over);
        assert!(f.feed(b"\n\ndata: 2\n\n", true).is_empty());
        let mut r = SseFilter::new(policy("[{ host: a.test, mode: report }]"), 16);
        assert_eq!(
            &r.feed(b"data: a long event without an end", false)[..],
            b"data: a long event without an end"
        );
    }

    #[test]
    fn only_an_sse_only_accept_gets_sse_answers() {
        assert!(accepts_only_sse(Some("text/event-stream")));
        assert!(!accepts_only_sse(Some(
            "application/json, text/event-stream"
        )));
        assert!(!accepts_only_sse(Some("text/event-stream, */*;q=0.1")));
        assert!(!accepts_only_sse(None));
    }
}
