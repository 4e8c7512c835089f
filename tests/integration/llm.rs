//! LLM policy end to end: a fake provider origin speaking each API exactly (JSON and SSE, split
//! at awkward byte boundaries), real clients through warden, and the log line and metrics.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::Notify;

/// (fixture, path, provider, host) of each streaming API.
const APIS: [(&str, &str, &str, &str); 3] = [
    (
        "anthropic.sse",
        "/v1/messages",
        "anthropic",
        "anthropic.test",
    ),
    (
        "chat_completions.sse",
        "/v1/chat/completions",
        "openai",
        "openai.test",
    ),
    ("responses.sse", "/v1/responses", "openai", "openai.test"),
];

fn llm_yaml(host: &str, port: u16, provider: &str, rules: &str, extra: &str) -> String {
    default_yaml(
        "auto",
        "",
        &format!(
            "llm:\n  - host: \"{host}:{port}\"\n    provider: {provider}\n{rules}{extra}admin:\n  listen: 127.0.0.1:0\n"
        ),
    )
}

const RULES: &str = "    allow_models: [\"claude-*\", \"gpt-5*\"]\n    deny_tools: [bash]\n";

async fn post(w: &TestWarden, url: &str, id: &str, body: Value) -> reqwest::Response {
    w.client()
        .post(url)
        .header("x-request-id", id)
        .header("x-api-key", "sk-ant-agent-key")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn request_for(path: &str, model: &str, stream: bool) -> Value {
    if path == "/v1/responses" {
        json!({ "model": model, "input": "hi", "stream": stream, "tools": [{"type": "function", "name": "bash"}] })
    } else {
        json!({ "model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "hi"}] })
    }
}

/// A fake provider answering every call with `script`, warden in front of it with [`RULES`]
/// and `extra` config, and the URL of `path` on it.
async fn provider_with(
    script: Script,
    host: &str,
    provider: &str,
    path: &str,
    extra: &str,
) -> (LlmOrigin, TestWarden, String) {
    let origin = LlmOrigin::start(script).await;
    let w = TestWarden::start(&llm_yaml(host, origin.port(), provider, RULES, extra)).await;
    let url = format!("https://{host}:{}{path}", origin.port());
    (origin, w, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_tool_calls_stream_through_byte_for_byte() {
    for (i, (fixture_name, path, provider, host)) in APIS.iter().enumerate() {
        let text = fixture(fixture_name, "read_file");
        // 7-byte pieces: events and even UTF-8 split across chunks.
        let (origin, w, url) = provider_with(Script::sse(&text, 7), host, provider, path, "").await;
        let id = format!("llm-sse-ok-{i}");
        let model_ok = if *provider == "anthropic" {
            "claude-sonnet-4"
        } else {
            "gpt-5"
        };
        let resp = post(&w, &url, &id, request_for(path, model_ok, true)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), text, "{path}");
        let line = log_for(&id).await;
        assert_eq!(line["provider"], *provider);
        assert_eq!(line["model"], model_ok);
        assert!(
            line["tools"]
                .as_array()
                .unwrap()
                .contains(&json!("read_file")),
            "{line}"
        );
        assert!(line["input_tokens"].as_u64().unwrap() > 0, "{line}");
        assert!(line["output_tokens"].as_u64().unwrap() > 0, "{line}");
        assert!(line["reason"].is_null(), "{line}");
        // The origin was asked for an uncompressed body.
        let seen = origin.received();
        assert!(seen[0]
            .head
            .to_ascii_lowercase()
            .contains("accept-encoding: identity"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_tool_calls_end_the_stream_in_each_providers_error_shape() {
    for (i, (fixture_name, path, provider, host)) in APIS.iter().enumerate() {
        let text = fixture(fixture_name, "bash");
        let (_origin, w, url) =
            provider_with(Script::sse(&text, 5), host, provider, path, "").await;
        let id = format!("llm-sse-deny-{i}");
        let model = if *provider == "anthropic" {
            "claude-x"
        } else {
            "gpt-5"
        };
        let resp = post(&w, &url, &id, request_for(path, model, true)).await;
        assert_eq!(resp.status(), 200, "the head went out before the tool call");
        let body = resp.text().await.unwrap();
        let events: Vec<&str> = body.split_inclusive("\n\n").collect();
        let last = events.last().unwrap();
        match *path {
            "/v1/messages" => {
                assert!(last.starts_with("event: error\ndata: "), "{body}");
                let v: Value =
                    serde_json::from_str(last.trim_start_matches("event: error\ndata: ").trim())
                        .unwrap();
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "permission_error");
                assert!(v["error"]["message"].as_str().unwrap().contains("`bash`"));
                // The text before the tool call reached the client.
                assert!(body.contains("Let me look."));
            }
            "/v1/chat/completions" => {
                assert!(!body.contains("[DONE]"), "{body}");
                let v: Value =
                    serde_json::from_str(last.trim_start_matches("data: ").trim()).unwrap();
                assert_eq!(v["error"]["code"], "llm_tool_denied");
                assert!(v["error"]["param"].is_null());
                assert!(body.contains("\"content\":\"Hi\""));
            }
            _ => {
                let n = events.len();
                let error: Value = serde_json::from_str(
                    events[n - 2]
                        .trim_start_matches("event: error\ndata: ")
                        .trim(),
                )
                .unwrap();
                let failed: Value = serde_json::from_str(
                    events[n - 1]
                        .trim_start_matches("event: response.failed\ndata: ")
                        .trim(),
                )
                .unwrap();
                assert_eq!(error["error"]["code"], "llm_tool_denied");
                assert_eq!(error["sequence_number"], 5, "after the highest number seen");
                assert_eq!(failed["sequence_number"], 6);
                assert_eq!(failed["response"]["status"], "failed");
            }
        }
        assert!(
            !body.contains("\"name\":\"bash\""),
            "the held call never reached the client"
        );
        let line = log_for(&id).await;
        assert_eq!(line["reason"], "llm_tool_denied");
        assert!(
            line["tools"].as_array().unwrap().contains(&json!("bash")),
            "{line}"
        );
        let metrics = w.scrape().await;
        assert_eq!(
            metric_value(&metrics, &format!("warden_llm_requests_total{{model=\"{model}\",outcome=\"denied\",provider=\"{provider}\"}}")),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            metric_value(&metrics, "warden_denials_total{reason=\"llm_tool_denied\"}"),
            Some(1.0)
        );
    }
}

fn json_response(path: &str, tool: &str) -> String {
    match path {
        "/v1/messages" => json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [{"type": "text", "text": "ok"}, {"type": "tool_use", "id": "toolu_1", "name": tool, "input": {"command": "ls"}}], "stop_reason": "tool_use", "usage": {"input_tokens": 11, "output_tokens": 7}}),
        "/v1/chat/completions" => json!({"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": tool, "arguments": "{}"}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}),
        _ => json!({"id": "resp_1", "object": "response", "status": "completed", "output": [{"type": "function_call", "name": tool, "arguments": "{}", "call_id": "c"}], "usage": {"input_tokens": 11, "output_tokens": 7}}),
    }
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_responses_are_checked_whole() {
    for (i, (_, path, provider, host)) in APIS.iter().enumerate() {
        let model = if *provider == "anthropic" {
            "claude-x"
        } else {
            "gpt-5"
        };
        for tool in ["read_file", "bash"] {
            let body = json_response(path, tool);
            let (_origin, w, url) =
                provider_with(Script::json(200, &body), host, provider, path, "").await;
            let id = format!("llm-json-{i}-{tool}");
            let resp = post(&w, &url, &id, request_for(path, model, false)).await;
            if tool == "read_file" {
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.text().await.unwrap(), body);
                let line = log_for(&id).await;
                assert_eq!(line["input_tokens"], 11);
                assert_eq!(line["output_tokens"], 7);
                let metrics = w.scrape().await;
                assert_eq!(
                    metric_value(&metrics, &format!("warden_llm_tokens_total{{kind=\"output\",model=\"{model}\",provider=\"{provider}\"}}")),
                    Some(7.0),
                    "{metrics}"
                );
                continue;
            }
            assert_eq!(resp.status(), 403);
            assert_eq!(resp.headers()["content-type"], "application/json");
            assert_eq!(resp.headers()["x-should-retry"], "false");
            assert!(resp.headers()["proxy-status"]
                .to_str()
                .unwrap()
                .contains("llm_tool_denied"));
            let v: Value = resp.json().await.unwrap();
            if *provider == "anthropic" {
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "permission_error");
            } else {
                assert_eq!(v["error"]["code"], "llm_tool_denied");
                assert!(v["error"]["param"].is_null());
            }
            let line = log_for(&id).await;
            assert_eq!(line["reason"], "llm_tool_denied");
            assert_eq!(line["status"], 403);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_completions_are_logged_only_with_capture_llm_bodies() {
    let path = "/v1/messages";
    let body = json_response(path, "read_file");
    for (capture, id) in [(false, "llm-capture-off"), (true, "llm-capture-on")] {
        let extra = format!("log:\n  capture_llm_bodies: {capture}\n");
        let (_origin, w, url) = provider_with(
            Script::json(200, &body),
            "anthropic.test",
            "anthropic",
            path,
            &extra,
        )
        .await;
        let mut request = request_for(path, "claude-x", false);
        request["messages"][0]["content"] = json!("PROMPT-MARK-4471");
        let resp = post(&w, &url, id, request).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
        let line = log_for(id).await;
        if capture {
            assert!(
                line["request_body"]
                    .as_str()
                    .unwrap()
                    .contains("PROMPT-MARK-4471"),
                "{line}"
            );
            assert!(
                line["response_body"]
                    .as_str()
                    .unwrap()
                    .contains("read_file"),
                "{line}"
            );
        } else {
            assert!(line["request_body"].is_null(), "{line}");
            assert!(line["response_body"].is_null(), "{line}");
            assert!(!line.to_string().contains("PROMPT-MARK-4471"));
        }
        // Other calls keep their captures either way.
        let plain = w
            .client()
            .post(url.replace("/v1/messages", "/v1/other"))
            .header("x-request-id", format!("{id}-other"))
            .body("not an llm call")
            .send()
            .await
            .unwrap();
        plain.text().await.unwrap();
        let other = log_for(&format!("{id}-other")).await;
        assert_eq!(other["request_body"], "not an llm call", "{other}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_model_never_reaches_the_origin() {
    let (origin, w, url) = provider_with(
        Script::json(200, "{}"),
        "anthropic.test",
        "anthropic",
        "/v1/messages",
        "",
    )
    .await;
    let resp = post(
        &w,
        &url,
        "llm-model-deny",
        request_for("/v1/messages", "gpt-4o", true),
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "permission_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("gpt-4o") && msg.contains("claude-*"), "{msg}");
    assert!(origin.received().is_empty(), "the origin saw nothing");
    let line = log_for("llm-model-deny").await;
    assert_eq!(line["reason"], "llm_model_denied");
    assert_eq!(line["rule"], "llm[0].allow_models");
    assert_eq!(line["model"], "gpt-4o");
    // The connection stays usable: the same client goes on with an allowed model.
    let ok = post(
        &w,
        &url,
        "llm-model-ok",
        request_for("/v1/messages", "claude-x", false),
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(origin.received().len(), 1);
    // Labels stay bounded: a refused model is counted as "other".
    let metrics = w.scrape().await;
    assert_eq!(
        metric_value(
            &metrics,
            "warden_llm_requests_total{model=\"other\",outcome=\"denied\",provider=\"anthropic\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_changes_nothing_and_logs_would_deny() {
    let text = fixture("anthropic.sse", "bash");
    let origin = LlmOrigin::start(Script::sse(&text, 3)).await;
    let rules = format!("    mode: report\n{RULES}");
    let w = TestWarden::start(&llm_yaml(
        "anthropic.test",
        origin.port(),
        "anthropic",
        &rules,
        "",
    ))
    .await;
    let url = format!("https://anthropic.test:{}/v1/messages", origin.port());
    let resp = post(
        &w,
        &url,
        "llm-report",
        request_for("/v1/messages", "gpt-4o", true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), text);
    assert_eq!(origin.received().len(), 1);
    let line = log_for("llm-report").await;
    assert!(line["reason"].is_null(), "{line}");
    assert_eq!(line["would_deny"], "llm_model_denied");
}

/// Reads the response until `pred` holds for what arrived, or fails after the bound.
async fn read_until(resp: &mut reqwest::Response, got: &mut String, pred: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pred(got) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("arrived in time")
            .unwrap()
            .expect("stream still open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A streaming call whose origin sends the first `before` events of the recorded Anthropic
/// stream, then waits for the returned gate before sending the rest.
struct Gated {
    text: String,
    gate: Arc<Notify>,
    resp: reqwest::Response,
    _origin: LlmOrigin,
    _warden: TestWarden,
}

async fn gated(before: usize, extra: &str, id: &str) -> Gated {
    let text = fixture("anthropic.sse", "read_file");
    let events: Vec<&str> = text.split_inclusive("\n\n").collect();
    let gate = Arc::new(Notify::new());
    let script = Script {
        steps: vec![
            Step::Send(events[..before].concat().into_bytes()),
            Step::Wait(gate.clone()),
            Step::Send(events[before..].concat().into_bytes()),
        ],
        ..Script::sse("", 1)
    };
    let origin = LlmOrigin::start(script).await;
    let port = origin.port();
    let w = TestWarden::start(&llm_yaml("anthropic.test", port, "anthropic", RULES, extra)).await;
    let url = format!("https://anthropic.test:{port}/v1/messages");
    let resp = post(&w, &url, id, request_for("/v1/messages", "claude-x", true)).await;
    Gated {
        text,
        gate,
        resp,
        _origin: origin,
        _warden: w,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_text_delta_arrives_before_the_origin_sends_the_second() {
    let Gated {
        text,
        gate,
        mut resp,
        ..
    } = gated(3, "", "llm-ttft").await;
    let mut got = String::new();
    // The origin is blocked on the gate: the delta can only be here if nothing buffered it.
    read_until(&mut resp, &mut got, |g| g.contains("Let me look.")).await;
    gate.notify_one();
    got.push_str(&resp.text().await.unwrap());
    assert_eq!(got, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_flow_while_a_tool_call_is_held() {
    // The origin stops after the tool block's start and first argument delta.
    let Gated {
        text,
        gate,
        mut resp,
        ..
    } = gated(
        6,
        "limits:\n  llm_keepalive_interval: 100ms\n",
        "llm-keepalive",
    )
    .await;
    let mut got = String::new();
    read_until(&mut resp, &mut got, |g| {
        g.matches(": keep-alive\n\n").count() >= 2
    })
    .await;
    assert!(
        !got.contains("tool_use"),
        "the tool block is still held: {got}"
    );
    gate.notify_one();
    got.push_str(&resp.text().await.unwrap());
    assert_eq!(
        got.replace(": keep-alive\n\n", ""),
        text,
        "keep-alives only sit between events"
    );
}

/// A Chat Completions stream whose origin stops inside the tool-call block (calls to
/// `get_weather`, then `tool`) while the client, having read the text before it, resets the
/// connection; then the origin sends the rest. Returns the log line and the metrics.
async fn client_gone_while_a_call_is_held(tool: &str, id: &str) -> (Value, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let text = fixture("chat_completions.sse", tool);
    let events: Vec<&str> = text.split_inclusive("\n\n").collect();
    let gate = Arc::new(Notify::new());
    let script = Script {
        steps: vec![
            Step::Send(events[..2].concat().into_bytes()),
            Step::Wait(gate.clone()),
            Step::Send(events[2..].concat().into_bytes()),
        ],
        ..Script::sse("", 1)
    };
    let (origin, w, _) = provider_with(
        script,
        "openai.test",
        "openai",
        "/v1/chat/completions",
        "limits:\n  llm_keepalive_interval: 60s\n",
    )
    .await;
    let authority = format!("openai.test:{}", origin.port());
    let mut tls = w.tls_tunnel(&authority, "openai.test").await;
    let body = request_for("/v1/chat/completions", "gpt-5", true).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {authority}\r\nx-request-id: {id}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"content\":\"Hi\"") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("the text arrived in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // A reset, not a FIN: warden's next write to the client fails at once.
    tls.get_ref().set_zero_linger().unwrap();
    drop(tls);
    gate.notify_one();
    let line = log_for(id).await;
    (line, w.scrape().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_logged_as_one_even_when_the_client_is_gone_before_it_is_written() {
    // warden denies `bash` and writes the error event to a dead socket: the denial was
    // decided before that write failed, so it is what the line and the metrics say.
    let (line, metrics) = client_gone_while_a_call_is_held("bash", "llm-deny-gone").await;
    assert_eq!(line["reason"], "llm_tool_denied", "{line}");
    assert_eq!(line["rule"], "llm[0].deny_tools[0]", "{line}");
    assert_eq!(line["tools"], json!(["get_weather", "bash"]), "{line}");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.starts_with("tool bash; downstream WriteError"),
        "{line}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "warden_llm_requests_total{model=\"gpt-5\",outcome=\"denied\",provider=\"openai\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "warden_denials_total{reason=\"llm_tool_denied\"}"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_is_a_client_error_not_an_upstream_one() {
    let (line, metrics) = client_gone_while_a_call_is_held("read_file", "llm-allow-gone").await;
    assert_eq!(line["reason"], "client_error", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .starts_with("downstream WriteError"),
        "{line}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "warden_llm_requests_total{model=\"gpt-5\",outcome=\"error\",provider=\"openai\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_buffer_bound_fail_closed() {
    let big = json!({ "content": [{"type": "text", "text": "x".repeat(5000)}] }).to_string();
    let (origin, w, url) = provider_with(
        Script::json(200, &big),
        "openai.test",
        "openai",
        "/v1/chat/completions",
        "limits:\n  llm_buffer_bytes: 2048\n",
    )
    .await;
    let resp = post(
        &w,
        &url,
        "llm-too-large",
        request_for("/v1/chat/completions", "gpt-5", false),
    )
    .await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "llm_body_too_large");
    assert_eq!(
        log_for("llm-too-large").await["reason"],
        "llm_body_too_large"
    );
    // A request body past the bound is refused before anything goes upstream.
    let mut req = request_for("/v1/chat/completions", "gpt-5", false);
    req["padding"] = json!("y".repeat(4000));
    let resp = post(&w, &url, "llm-req-too-large", req).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(origin.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_on_an_llm_host_are_proxied_untouched() {
    let origin = LlmOrigin::start(Script::json(200, "{\"data\":[]}")).await;
    let w = TestWarden::start(&llm_yaml("openai.test", origin.port(), "openai", RULES, "")).await;
    let resp = w
        .client()
        .get(format!("https://openai.test:{}/v1/models", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "{\"data\":[]}");
}

mod websocket {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<tokio_openssl::SslStream<tokio::net::TcpStream>>;

    async fn open(
        w: &TestWarden,
        port: u16,
        query: &str,
        id: &str,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let authority = format!("openai.test:{port}");
        let tls = w.tls_tunnel(&authority, "openai.test").await;
        let mut req = format!("wss://{authority}/v1/responses{query}")
            .into_client_request()
            .unwrap();
        let h = req.headers_mut();
        h.insert("x-request-id", id.parse().unwrap());
        h.insert(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits"
                .parse()
                .unwrap(),
        );
        tokio_tungstenite::client_async(req, tls)
            .await
            .map(|(ws, _)| ws)
    }

    async fn next(ws: &mut Ws) -> Message {
        tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("valid frame")
    }

    fn create(model: &str) -> Message {
        Message::text(json!({"type": "response.create", "model": model, "input": "hi"}).to_string())
    }

    async fn start(tool: &str) -> (ResponsesWsOrigin, TestWarden, Vec<String>) {
        let events = sse_data(&fixture("responses.sse", tool));
        let origin = ResponsesWsOrigin::start(events.clone()).await;
        let w = TestWarden::start(&llm_yaml(
            "openai.test",
            origin.addr.port(),
            "openai",
            RULES,
            "",
        ))
        .await;
        (origin, w, events)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn allowed_events_pass_unchanged() {
        let (origin, w, events) = start("read_file").await;
        let mut ws = open(&w, origin.addr.port(), "", "ws-llm-ok").await.unwrap();
        // Two responses on one socket; the line names the model of the latest.
        for model in ["gpt-5", "gpt-5-mini"] {
            ws.send(create(model)).await.unwrap();
            for e in &events {
                assert_eq!(next(&mut ws).await.into_text().unwrap().as_str(), e);
            }
        }
        ws.close(None).await.unwrap();
        // Frames stay readable: the compression offer never reached the origin.
        let headers = origin.headers.lock().unwrap().clone();
        assert!(
            !headers.iter().any(|(k, _)| k == "sec-websocket-extensions"),
            "{headers:?}"
        );
        let line = log_for("ws-llm-ok").await;
        assert_eq!(line["upgraded"], true);
        assert_eq!(line["provider"], "openai");
        assert_eq!(line["model"], "gpt-5-mini", "{line}");
        assert_eq!(line["input_tokens"], 20);
        let metrics = w.scrape().await;
        assert_eq!(
            metric_value(
                &metrics,
                "warden_llm_requests_total{model=\"gpt-5-mini\",outcome=\"allowed\",provider=\"openai\"}"
            ),
            Some(1.0),
            "{metrics}"
        );
    }

    async fn expect_denial(ws: &mut Ws, seq: u64, code: &str) {
        let error: Value = serde_json::from_str(&next(ws).await.into_text().unwrap()).unwrap();
        assert_eq!(error["type"], "error");
        assert_eq!(error["status"], 403);
        assert_eq!(error["error"]["code"], code);
        assert_eq!(error["sequence_number"], seq);
        let failed: Value = serde_json::from_str(&next(ws).await.into_text().unwrap()).unwrap();
        assert_eq!(failed["type"], "response.failed");
        assert_eq!(failed["sequence_number"], seq + 1);
        match next(ws).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
            other => panic!("expected close 1008, got {other:?}"),
        }
        // The client answers the close; warden ends the connection.
        let end = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time");
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_denied_function_call_fails_the_response_and_closes_1008() {
        let (origin, w, events) = start("bash").await;
        let mut ws = open(&w, origin.addr.port(), "", "ws-llm-deny")
            .await
            .unwrap();
        ws.send(create("gpt-5")).await.unwrap();
        for e in &events[..2] {
            assert_eq!(next(&mut ws).await.into_text().unwrap().as_str(), e);
        }
        expect_denial(&mut ws, 5, "llm_tool_denied").await;
        let line = log_for("ws-llm-deny").await;
        assert_eq!(line["reason"], "llm_tool_denied");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_model_is_never_forwarded() {
        let (origin, w, _) = start("read_file").await;
        let mut ws = open(&w, origin.addr.port(), "", "ws-llm-model")
            .await
            .unwrap();
        ws.send(create("gpt-4o")).await.unwrap();
        expect_denial(&mut ws, 1, "llm_model_denied").await;
        assert!(origin.messages.lock().unwrap().is_empty());
        let line = log_for("ws-llm-model").await;
        assert_eq!(line["reason"], "llm_model_denied", "{line}");
        assert_eq!(line["model"], "gpt-4o", "{line}");
        // A model named on the upgrade itself is refused before the 101.
        let err = open(&w, origin.addr.port(), "?model=gpt-4o", "ws-llm-model-q")
            .await
            .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
            other => panic!("expected 403, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_llm_section_replaces_the_top_level_one() {
    let text = fixture("anthropic.sse", "shell");
    let origin = LlmOrigin::start(Script::sse(&text, 11)).await;
    let port = origin.port();
    // Top level: shell may run, but never `rm -rf`. Client `strict`: only read_* tools.
    let clients = format!(
        "  auth:\n    clients:\n      - {{ name: open, token: {{ type: static, value: tok-open }} }}\n      - name: strict\n        token: {{ type: static, value: tok-strict }}\n        llm: [{{ host: \"anthropic.test:{port}\", provider: anthropic, allow_tools: [\"read_*\"] }}]\n"
    );
    let yaml = llm_yaml(
        "anthropic.test",
        port,
        "anthropic",
        "    deny_arguments: [{ tool: \"sh*\", pattern: \"rm\\\\s+-rf\" }]\n",
        "",
    )
    .replace(
        "proxy:\n  listen: 127.0.0.1:0\n",
        &format!("proxy:\n  listen: 127.0.0.1:0\n{clients}"),
    );
    let w = TestWarden::start(&yaml).await;
    let url = format!("https://anthropic.test:{port}/v1/messages");
    for (client, id, why) in [
        ("open", "llm-client-open", "deny_arguments[0]"),
        ("strict", "llm-client-strict", "allow_tools"),
    ] {
        let proxy = reqwest::Proxy::all(w.proxy_url())
            .unwrap()
            .basic_auth(client, &format!("tok-{client}"));
        let c = reqwest::Client::builder()
            .proxy(proxy)
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(w.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let body = c
            .post(&url)
            .header("x-request-id", id)
            .json(&request_for("/v1/messages", "claude-x", true))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("event: error") && body.contains(why),
            "{client}: {body}"
        );
        let line = log_for(id).await;
        assert_eq!(line["client"], client);
        assert_eq!(line["reason"], "llm_tool_denied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_body_placeholders_reach_the_provider_but_never_the_log() {
    let canary = "sk-ant-CANARY-4242424242";
    let secret = "real-secret-CANARY-777";
    let text = fixture("anthropic.sse", "read_file");
    let origin = LlmOrigin::start(Script::sse(&text, 64)).await;
    let port = origin.port();
    let extra = format!(
        "credentials:\n  - {{ host: \"anthropic.test:{port}\", header: x-api-key, source: {{ type: static, value: {canary} }} }}\nsubstitutions:\n  - {{ host: \"anthropic.test:{port}\", placeholder: WARDEN_PH_TOKEN, source: {{ type: static, value: {secret} }} }}\n"
    );
    let w = TestWarden::start(&llm_yaml(
        "anthropic.test",
        port,
        "anthropic",
        RULES,
        &extra,
    ))
    .await;
    let url = format!("https://anthropic.test:{port}/v1/messages");
    let mut req = request_for("/v1/messages", "claude-x", true);
    req["messages"][0]["content"] = json!("use WARDEN_PH_TOKEN please");
    let resp = post(&w, &url, "llm-secrets", req).await;
    assert_eq!(resp.text().await.unwrap(), text);
    let seen = &origin.received()[0];
    assert!(
        seen.head.contains(&format!("x-api-key: {canary}")),
        "{}",
        seen.head
    );
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body["messages"][0]["content"],
        format!("use {secret} please")
    );
    let line = log_for("llm-secrets").await;
    let raw = line.to_string();
    assert!(!raw.contains(canary) && !raw.contains(secret), "{raw}");
    assert_eq!(line["injected"], "x-api-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expecting_100_continue_gets_it_and_the_origin_gets_the_whole_body() {
    use tokio::io::AsyncWriteExt;
    let origin = LlmOrigin::start(Script::json(200, "{\"ok\":true}")).await;
    let port = origin.port();
    let w = TestWarden::start(&llm_yaml("anthropic.test", port, "anthropic", RULES, "")).await;
    let authority = format!("anthropic.test:{port}");
    let mut tls = w.tls_tunnel(&authority, "anthropic.test").await;
    let body = request_for("/v1/messages", "claude-x", false).to_string();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // Nothing but the head was sent: the 100 must come from warden.
    let interim = read_head(&mut tls).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    tls.write_all(body.as_bytes()).await.unwrap();
    let (resp, got) = read_response(&mut tls).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(got, b"{\"ok\":true}");
    let seen = &origin.received()[0];
    assert_eq!(seen.body, body.as_bytes());
    assert!(
        !seen.head.to_ascii_lowercase().contains("expect:"),
        "{}",
        seen.head
    );
}
