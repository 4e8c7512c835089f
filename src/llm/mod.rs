//! LLM policy: which API a request speaks (Anthropic Messages, OpenAI Chat Completions and
//! Responses), the model and tool rules of an `llm` entry, and the provider-shaped denials the
//! official SDKs surface as errors. The request side is checked by [`inspect_request`] before
//! anything goes upstream; JSON responses by [`inspect_json`]; SSE streams and Responses
//! WebSocket events by [`stream::StreamPolicy`], which holds only tool-call blocks.

pub mod frame;
mod json;
pub mod sse;
pub mod stream;
pub mod ws;

use self::json::str_at;
use crate::budget::Exceeded;
use crate::compile_error::{CompileError, CompileErrors};
use crate::policy::HostPattern;
use crate::reason::Reason;
use crate::target::Authority;
use bytes::Bytes;
use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// `llm[].provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Chat Completions and Responses.
    Openai,
}

impl Provider {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Openai => "openai",
        }
    }
}

/// The API a request speaks, chosen by provider and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/responses` (or a WebSocket to it).
    Responses,
}

/// The API of `method path` for `provider`, or `None` when the request is not one warden
/// understands (it is then proxied without LLM policy).
pub fn api_for(provider: Provider, method: &str, path: &str, upgrade: bool) -> Option<Api> {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    match (provider, method, path, upgrade) {
        (Provider::Anthropic, "POST", "/v1/messages", false) => Some(Api::Messages),
        (Provider::Openai, "POST", "/v1/chat/completions", false) => Some(Api::ChatCompletions),
        (Provider::Openai, "POST", "/v1/responses", false) => Some(Api::Responses),
        (Provider::Openai, "GET", "/v1/responses" | "/v1/realtime", true) => Some(Api::Responses),
        _ => None,
    }
}

/// `llm[].mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmMode {
    /// Denials are enforced.
    #[default]
    Enforce,
    /// Everything is evaluated, nothing changed; denials are logged as `would_deny`.
    Report,
}

/// One `llm` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The API host(s) it applies to; they are always intercepted.
    pub host: HostPattern,
    /// Which provider's APIs the host speaks.
    pub provider: Provider,
    /// enforce or report.
    #[serde(default)]
    pub mode: LlmMode,
    /// Globs on the request's `model`; absent: any model.
    #[serde(default)]
    pub allow_models: Option<Vec<String>>,
    /// Globs on tool names; deny wins.
    #[serde(default)]
    pub deny_tools: Vec<String>,
    /// Non-empty: only tools matching one of these may be called.
    #[serde(default)]
    pub allow_tools: Vec<String>,
    /// Regexes on a tool call's JSON arguments.
    #[serde(default)]
    pub deny_arguments: Vec<ArgumentRuleConfig>,
}

/// One `llm[].deny_arguments` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgumentRuleConfig {
    /// Glob on the tool name.
    pub tool: String,
    /// Regex searched for in the call's JSON arguments.
    pub pattern: String,
}

/// A compiled `llm` entry.
#[derive(Debug)]
pub struct LlmPolicy {
    host: HostPattern,
    /// Its config key (`llm[0]`, `proxy.auth.clients[1].llm[0]`).
    key: String,
    /// The provider.
    pub provider: Provider,
    /// `mode: report`.
    pub report: bool,
    allow_models: Option<Vec<(String, GlobMatcher)>>,
    deny_tools: Vec<(String, GlobMatcher)>,
    allow_tools: Option<GlobSet>,
    deny_arguments: Vec<(GlobMatcher, Regex)>,
}

/// Why an LLM exchange was (or would have been) refused: the reason code, the tool or model
/// named, and the agent-readable message put into the provider's error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `llm_tool_denied`, `llm_model_denied`, `llm_body_too_large`, ...
    pub reason: Reason,
    /// The tool refused, if a tool call was.
    pub tool: Option<String>,
    /// What the agent reads.
    pub message: String,
    /// The config entry that decided it (`llm[0].deny_tools`), for the log line.
    pub rule: Option<String>,
    /// The client budget that refused the call (reason `budget_exceeded`): it decides the
    /// rate-limit error type and the `retry-after`.
    pub budget: Option<Box<Exceeded>>,
}

impl Denial {
    /// A denial with no tool named.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            tool: None,
            message: message.into(),
            rule: None,
            budget: None,
        }
    }

    /// The call refused because `client` spent a budget.
    pub fn over_budget(client: &str, exceeded: Exceeded) -> Self {
        Denial {
            reason: Reason::BudgetExceeded,
            tool: None,
            message: exceeded.message(client),
            rule: Some(exceeded.rule.clone()),
            budget: Some(Box::new(exceeded)),
        }
    }

    /// The provider's error type: a spent budget reads as the provider's own rate limit
    /// (or, for the lifetime total, OpenAI's quota error) so SDKs raise their rate-limit
    /// error; every other denial is a permission error.
    fn error_type(&self, provider: Provider) -> &'static str {
        match (&self.budget, provider) {
            (None, _) => "permission_error",
            (Some(_), Provider::Anthropic) => "rate_limit_error",
            (Some(e), Provider::Openai) if e.is_quota() => "insufficient_quota",
            (Some(_), Provider::Openai) => "rate_limit_exceeded",
        }
    }

    /// The OpenAI error `code`: the reason code, or for a spent budget OpenAI's own code
    /// (which is what clients that tell a quota from a rate limit look at).
    fn code(&self) -> &'static str {
        match &self.budget {
            Some(_) => self.error_type(Provider::Openai),
            None => self.reason.code(),
        }
    }
}

fn glob(key: &str, pattern: &str) -> Result<GlobMatcher, CompileError> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| CompileError::new(key.to_string(), format!("`{pattern}` is not a glob: {e}")))
}

/// The `Ok` values of `results`, every `Err` moved into `errors`.
fn keep_ok<T>(
    results: impl IntoIterator<Item = Result<T, CompileError>>,
    errors: &mut CompileErrors,
) -> Vec<T> {
    results
        .into_iter()
        .filter_map(|r| r.map_err(|e| errors.push(e)).ok())
        .collect()
}

/// The compiled `llm` section: the first entry naming a destination applies.
#[derive(Debug, Default)]
pub struct LlmRules {
    list: Vec<Arc<LlmPolicy>>,
}

/// Compiles `entries` under config key `key`; every bad glob and regex is reported.
pub fn compile(entries: &[LlmConfig], key: &str) -> Result<LlmRules, CompileErrors> {
    let mut errors = Vec::new();
    let mut list = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let k = |field: &str, j: usize| format!("{key}[{i}].{field}[{j}]");
        let allow_models = e.allow_models.as_ref().map(|models| {
            keep_ok(
                models
                    .iter()
                    .enumerate()
                    .map(|(j, m)| Ok((m.clone(), glob(&k("allow_models", j), m)?))),
                &mut errors,
            )
        });
        let deny_tools = keep_ok(
            e.deny_tools
                .iter()
                .enumerate()
                .map(|(j, t)| Ok((t.clone(), glob(&k("deny_tools", j), t)?))),
            &mut errors,
        );
        let allow_tools = if e.allow_tools.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for g in keep_ok(
                e.allow_tools.iter().enumerate().map(|(j, t)| {
                    Glob::new(t).map_err(|err| {
                        CompileError::new(
                            k("allow_tools", j),
                            format!("`{t}` is not a glob: {err}"),
                        )
                    })
                }),
                &mut errors,
            ) {
                set.add(g);
            }
            set.build()
                .map_err(|err| {
                    errors.push(CompileError::new(
                        format!("{key}[{i}].allow_tools"),
                        err.to_string(),
                    ))
                })
                .ok()
        };
        let mut deny_arguments = Vec::new();
        for (j, a) in e.deny_arguments.iter().enumerate() {
            // Both halves are checked, so a bad tool glob does not hide a bad pattern.
            let tool = glob(&format!("{}.tool", k("deny_arguments", j)), &a.tool)
                .map_err(|e| errors.push(e));
            let re = regex::RegexBuilder::new(&a.pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|err| {
                    errors.push(CompileError::new(
                        format!("{}.pattern", k("deny_arguments", j)),
                        format!("is not a regex: {err}"),
                    ))
                });
            if let (Ok(tool), Ok(re)) = (tool, re) {
                deny_arguments.push((tool, re));
            }
        }
        list.push(Arc::new(LlmPolicy {
            host: e.host.clone(),
            key: format!("{key}[{i}]"),
            provider: e.provider,
            report: e.mode == LlmMode::Report,
            allow_models,
            deny_tools,
            allow_tools,
            deny_arguments,
        }));
    }
    if errors.is_empty() {
        Ok(LlmRules { list })
    } else {
        Err(errors)
    }
}

impl LlmRules {
    /// The entry for `dest`: the first that names it.
    pub fn for_dest(&self, dest: &Authority) -> Option<&Arc<LlmPolicy>> {
        self.list.iter().find(|p| p.host.matches(dest))
    }

    /// Whether an entry names `dest` (its tunnels are intercepted).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.for_dest(dest).is_some()
    }
}

impl LlmPolicy {
    /// Checks the request's model against `allow_models`.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), Denial> {
        let Some(allowed) = &self.allow_models else {
            return Ok(());
        };
        let list = || {
            allowed
                .iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match model {
            Some(m) if allowed.iter().any(|(_, g)| g.is_match(m)) => Ok(()),
            Some(m) => Err(Denial::new(
                Reason::LlmModelDenied,
                format!(
                    "warden (the egress proxy) refused model `{m}`: it is not in llm.allow_models ({}). Use one of those models.",
                    list()
                ),
            )),
            None => Err(Denial::new(
                Reason::LlmModelDenied,
                format!(
                    "warden (the egress proxy) refused the request: it names no model it can check against llm.allow_models ({}).",
                    list()
                ),
            )),
        }
        .map_err(|d: Denial| Denial {
            rule: Some(format!("{}.allow_models", self.key)),
            ..d
        })
    }

    /// Checks one complete tool call: `deny_tools` first, then `allow_tools`, then
    /// `deny_arguments` on the call's JSON arguments.
    pub fn check_tool(&self, name: &str, arguments: &str) -> Result<(), Denial> {
        let deny = |why: String, rule: String| {
            Err(Denial {
                reason: Reason::LlmToolDenied,
                tool: Some(name.to_string()),
                message: format!(
                    "warden (the egress proxy) refused the model's call to tool `{name}`: {why}. Do not call it again; choose another way."
                ),
                rule: Some(format!("{}.{rule}", self.key)),
                budget: None,
            })
        };
        if let Some(j) = self.deny_tools.iter().position(|(_, g)| g.is_match(name)) {
            let pattern = &self.deny_tools[j].0;
            return deny(
                format!("it matches llm.deny_tools entry `{pattern}`"),
                format!("deny_tools[{j}]"),
            );
        }
        if let Some(allowed) = &self.allow_tools {
            if !allowed.is_match(name) {
                return deny(
                    "it is not in llm.allow_tools".to_string(),
                    "allow_tools".to_string(),
                );
            }
        }
        for (i, (tool, re)) in self.deny_arguments.iter().enumerate() {
            if tool.is_match(name) && re.is_match(arguments) {
                return deny(
                    format!(
                        "its arguments match llm.deny_arguments[{i}] (`{}`)",
                        re.as_str()
                    ),
                    format!("deny_arguments[{i}]"),
                );
            }
        }
        Ok(())
    }

    /// The `model` metric label: the model when an `allow_models` entry names it, else `other`
    /// (so the label set stays bounded by the config).
    pub fn model_label(&self, model: Option<&str>) -> String {
        match (model, &self.allow_models) {
            (Some(m), Some(allowed)) if allowed.iter().any(|(_, g)| g.is_match(m)) => m.to_string(),
            _ => "other".to_string(),
        }
    }
}

/// What a request body says, read before anything goes upstream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// `model`.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// Names of the tools the request defines.
    pub tools: Vec<String>,
    /// Whether the body parsed as a JSON object.
    pub parsed: bool,
}

/// Reads `model`, `stream` and the tool definitions from a request body.
pub fn inspect_request(body: &[u8]) -> RequestFacts {
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) else {
        return RequestFacts::default();
    };
    let tools = v
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| {
                    t.get("name")
                        .or_else(|| t.pointer("/function/name"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    RequestFacts {
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        tools,
        parsed: true,
    }
}

/// A tool call found in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// Its arguments as JSON text.
    pub arguments: String,
}

/// Token usage reported by the provider.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens, cached ones included.
    pub input: Option<u64>,
    /// Generated (output) tokens.
    pub output: Option<u64>,
}

impl Usage {
    /// Reads a provider `usage` object (either naming scheme), keeping what it lacks.
    pub fn update(&mut self, usage: &Value) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        let input = match (n("input_tokens"), n("prompt_tokens")) {
            (Some(i), _) => Some(
                i + n("cache_creation_input_tokens").unwrap_or(0)
                    + n("cache_read_input_tokens").unwrap_or(0),
            ),
            (None, p) => p,
        };
        if input.is_some() {
            self.input = input;
        }
        if let Some(o) = n("output_tokens").or_else(|| n("completion_tokens")) {
            self.output = Some(o);
        }
    }
}

/// Tool-call arguments as text: strings as they are, anything else serialised.
fn arguments_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// The tool calls and usage of a complete JSON response, or `None` if it is not JSON.
pub fn inspect_json(api: Api, body: &[u8]) -> Option<(Vec<ToolCall>, Usage)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut usage = Usage::default();
    if let Some(u) = v.get("usage") {
        usage.update(u);
    }
    let items = |ptr: &str| {
        v.pointer(ptr)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut calls = Vec::new();
    match api {
        Api::Messages => {
            for block in items("/content") {
                if is_tool_block(block.get("type").and_then(Value::as_str)) {
                    calls.push(ToolCall {
                        name: str_at(&block, "/name"),
                        arguments: arguments_text(block.get("input")),
                    });
                }
            }
        }
        Api::ChatCompletions => {
            for choice in items("/choices") {
                let calls_in = choice
                    .pointer("/message/tool_calls")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for call in calls_in {
                    calls.push(ToolCall {
                        name: str_at(&call, "/function/name"),
                        arguments: arguments_text(call.pointer("/function/arguments")),
                    });
                }
                if let Some(f) = choice.pointer("/message/function_call") {
                    calls.push(ToolCall {
                        name: str_at(f, "/name"),
                        arguments: arguments_text(f.get("arguments")),
                    });
                }
            }
        }
        Api::Responses => {
            for item in items("/output") {
                if is_call_item(item.get("type").and_then(Value::as_str)) {
                    calls.push(ToolCall {
                        name: str_at(&item, "/name"),
                        arguments: arguments_text(item.get("arguments").or(item.get("input"))),
                    });
                }
            }
        }
    }
    Some((calls, usage))
}

/// Anthropic content blocks that call a tool.
pub(crate) fn is_tool_block(kind: Option<&str>) -> bool {
    matches!(kind, Some("tool_use" | "server_tool_use" | "mcp_tool_use"))
}

/// Responses output items that call a tool.
pub(crate) fn is_call_item(kind: Option<&str>) -> bool {
    matches!(
        kind,
        Some("function_call" | "custom_tool_call" | "mcp_call")
    )
}

/// The provider's error object for `denial` (the envelope of a 4xx/5xx JSON body, of an
/// Anthropic `event: error`, and of a Chat Completions error chunk).
pub fn error_envelope(provider: Provider, denial: &Denial) -> Value {
    match provider {
        Provider::Anthropic => json!({
            "type": "error",
            "error": { "type": denial.error_type(provider), "message": denial.message },
        }),
        Provider::Openai => json!({
            "error": {
                "message": denial.message,
                "type": denial.error_type(provider),
                "param": null,
                "code": denial.code(),
            }
        }),
    }
}

/// The JSON body of a refusal written before any response head went out.
pub fn error_body(provider: Provider, denial: &Denial) -> Bytes {
    Bytes::from(error_envelope(provider, denial).to_string())
}

/// The Responses `error` event and the `response.failed` event that follows it, numbered
/// `seq` and `seq + 1`. `response` is the response object the stream announced, if any.
pub fn responses_failure(denial: &Denial, seq: u64, response: Option<&Value>) -> (Value, Value) {
    let code = denial.code();
    let error = json!({
        "type": denial.error_type(Provider::Openai),
        "code": code,
        "message": denial.message,
        "param": null,
    });
    let event = json!({
        "type": "error",
        "sequence_number": seq,
        "code": code,
        "message": denial.message,
        "param": null,
        "error": error,
    });
    let mut resp = match response {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => json!({ "object": "response" }),
    };
    resp["status"] = json!("failed");
    resp["error"] = json!({ "code": code, "message": denial.message });
    let failed = json!({
        "type": "response.failed",
        "sequence_number": seq + 1,
        "response": resp,
    });
    (event, failed)
}

/// The compiled policy of one `llm` entry for `api.test`: `provider` plus extra flow-map keys
/// (`", deny_tools: [bash]"`). The unit tests' shorthand.
#[cfg(test)]
pub(crate) fn test_policy(provider: &str, extra: &str) -> Arc<LlmPolicy> {
    let yaml = format!("- {{ host: api.test, provider: {provider}{extra} }}");
    let entries: Vec<LlmConfig> = serde_yaml::from_str(&yaml).unwrap();
    compile(&entries, "llm").unwrap().list[0].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Arc<LlmPolicy> {
        let entries: Vec<LlmConfig> = serde_yaml::from_str(yaml).unwrap();
        let rules = compile(&entries, "llm").unwrap();
        rules.list[0].clone()
    }

    #[test]
    fn apis_are_chosen_by_provider_and_path() {
        use Provider::*;
        assert_eq!(
            api_for(Anthropic, "POST", "/v1/messages", false),
            Some(Api::Messages)
        );
        assert_eq!(
            api_for(Anthropic, "POST", "/v1/messages?beta=true", false),
            Some(Api::Messages)
        );
        assert_eq!(
            api_for(Anthropic, "POST", "/v1/chat/completions", false),
            None
        );
        assert_eq!(
            api_for(Openai, "POST", "/v1/chat/completions", false),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            api_for(Openai, "POST", "/v1/responses", false),
            Some(Api::Responses)
        );
        assert_eq!(
            api_for(Openai, "GET", "/v1/responses", true),
            Some(Api::Responses)
        );
        assert_eq!(api_for(Openai, "GET", "/v1/models", false), None);
        assert_eq!(
            api_for(Openai, "POST", "/v1/messages/count_tokens", false),
            None
        );
    }

    #[test]
    fn models_tools_and_arguments_are_checked_in_order() {
        let p = policy(
            r#"- host: api.test
  provider: anthropic
  allow_models: ["claude-*"]
  deny_tools: ["bash", "computer_*"]
  allow_tools: ["read_*", "shell*", "bash", "computer_use"]
  deny_arguments: [{ tool: "shell*", pattern: "rm\\s+-rf" }]
"#,
        );
        assert!(p.check_model(Some("claude-sonnet-4")).is_ok());
        let d = p.check_model(Some("gpt-4o")).unwrap_err();
        assert_eq!(d.reason, Reason::LlmModelDenied);
        assert!(d.message.contains("gpt-4o") && d.message.contains("claude-*"));
        assert!(p.check_model(None).is_err());
        assert_eq!(p.model_label(Some("claude-x")), "claude-x");
        assert_eq!(p.model_label(Some("gpt-4o")), "other");

        assert!(p.check_tool("read_file", "{}").is_ok());
        let d = p.check_tool("bash", "{}").unwrap_err();
        assert_eq!(d.tool.as_deref(), Some("bash"));
        assert!(
            d.message.contains("llm.deny_tools entry `bash`"),
            "{}",
            d.message
        );
        assert!(
            p.check_tool("computer_use", "{}").is_err(),
            "deny wins over allow"
        );
        assert!(p
            .check_tool("write_file", "{}")
            .unwrap_err()
            .message
            .contains("allow_tools"));
        assert!(p.check_tool("shell_exec", r#"{"cmd":"ls"}"#).is_ok());
        let d = p
            .check_tool("shell_exec", r#"{"cmd":"rm  -rf /"}"#)
            .unwrap_err();
        assert!(d.message.contains("deny_arguments[0]"), "{}", d.message);
    }

    #[test]
    fn bad_globs_and_regexes_name_their_key() {
        let entries: Vec<LlmConfig> = serde_yaml::from_str(
            "- { host: a.test, provider: openai, deny_arguments: [{ tool: x, pattern: '(' }] }",
        )
        .unwrap();
        assert_eq!(
            compile(&entries, "llm").unwrap_err()[0].key,
            "llm[0].deny_arguments[0].pattern"
        );
        let entries: Vec<LlmConfig> =
            serde_yaml::from_str("- { host: a.test, provider: openai, deny_tools: ['a[' ] }")
                .unwrap();
        assert_eq!(
            compile(&entries, "llm").unwrap_err()[0].key,
            "llm[0].deny_tools[0]"
        );
        assert!(
            serde_yaml::from_str::<Vec<LlmConfig>>("- { host: a.test, provider: gemini }").is_err()
        );
    }

    #[test]
    fn request_facts_and_json_tool_calls_per_api() {
        let f = inspect_request(
            br#"{"model":"gpt-4o","stream":true,"tools":[{"type":"function","function":{"name":"f"}},{"name":"g"}]}"#,
        );
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert!(f.stream && f.parsed);
        assert_eq!(f.tools, vec!["f", "g"]);
        assert!(!inspect_request(b"not json").parsed);

        let (calls, usage) = inspect_json(
            Api::Messages,
            br#"{"content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t","name":"bash","input":{"command":"ls"}}],"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "bash".into(),
                arguments: r#"{"command":"ls"}"#.into()
            }]
        );
        assert_eq!(
            usage,
            Usage {
                input: Some(15),
                output: Some(3)
            }
        );

        let (calls, usage) = inspect_json(
            Api::ChatCompletions,
            br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"a","arguments":"{\"x\":1}"}},{"function":{"name":"b","arguments":"{}"}}]}}],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, r#"{"x":1}"#);
        assert_eq!(
            usage,
            Usage {
                input: Some(7),
                output: Some(2)
            }
        );

        let (calls, _) = inspect_json(
            Api::Responses,
            br#"{"output":[{"type":"message"},{"type":"function_call","name":"f","arguments":"{}"}]}"#,
        )
        .unwrap();
        assert_eq!(calls[0].name, "f");
        assert!(inspect_json(Api::Responses, b"\x1f\x8b\x08").is_none());
    }

    #[test]
    fn envelopes_have_each_providers_shape() {
        let d = Denial {
            reason: Reason::LlmToolDenied,
            tool: Some("bash".into()),
            message: "no".into(),
            rule: None,
            budget: None,
        };
        let a = error_envelope(Provider::Anthropic, &d);
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "permission_error");
        let o = error_envelope(Provider::Openai, &d);
        assert_eq!(o["error"]["code"], "llm_tool_denied");
        assert!(o["error"]["param"].is_null());
        let (e, f) = responses_failure(
            &d,
            7,
            Some(&json!({"id": "resp_1", "status": "in_progress"})),
        );
        assert_eq!(e["sequence_number"], 7);
        assert_eq!(e["error"]["message"], "no");
        assert_eq!(f["sequence_number"], 8);
        assert_eq!(f["response"]["id"], "resp_1");
        assert_eq!(f["response"]["status"], "failed");
    }

    #[test]
    fn a_spent_budget_reads_as_each_providers_rate_limit_or_quota_error() {
        use crate::budget::{BudgetKey, Exceeded};
        let over = |key, retry_after| {
            Denial::over_budget(
                "run-1",
                Exceeded {
                    key,
                    limit: 10,
                    retry_after,
                    rule: format!("proxy.auth.clients[0].budget.{}", BudgetKey::name(key)),
                },
            )
        };
        let window = over(BudgetKey::TokensPerMinute, Some(12));
        assert_eq!(window.reason, Reason::BudgetExceeded);
        assert_eq!(
            window.rule.as_deref(),
            Some("proxy.auth.clients[0].budget.llm_tokens_per_minute")
        );
        let a = error_envelope(Provider::Anthropic, &window);
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "rate_limit_error");
        assert!(a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llm_tokens_per_minute"));
        let o = error_envelope(Provider::Openai, &window);
        assert_eq!(o["error"]["type"], "rate_limit_exceeded");
        assert_eq!(o["error"]["code"], "rate_limit_exceeded");
        let quota = over(BudgetKey::TokensTotal, None);
        let o = error_envelope(Provider::Openai, &quota);
        assert_eq!(o["error"]["type"], "insufficient_quota");
        assert_eq!(o["error"]["code"], "insufficient_quota");
        assert_eq!(
            error_envelope(Provider::Anthropic, &quota)["error"]["type"],
            "rate_limit_error"
        );
        let (e, _) = responses_failure(&window, 1, None);
        assert_eq!(e["code"], "rate_limit_exceeded");
        assert_eq!(e["error"]["type"], "rate_limit_exceeded");
    }
}
