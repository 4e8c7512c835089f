//! Relays: an agent that must reach a target directly (it is in NO_PROXY) sends
//! `/relay/{name}/{path}` to warden's proxy port as an ordinary origin-form request, and warden
//! carries it to the target with every rule of a proxied request.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

const TOKEN: &str = "relay-client-token";

/// Auth on (client `run-42`), loopback origins allowed, `extra` appended.
fn relay_yaml(extra: &str) -> String {
    default_yaml(
        "auto",
        "",
        &format!("admin:\n  listen: 127.0.0.1:0\n{extra}"),
    )
    .replace(
        "proxy:\n  listen: 127.0.0.1:0\n",
        &format!("proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - {{ name: run-42, token: {{ type: static, value: {TOKEN} }} }}\n"),
    )
}

/// curl straight at warden (no proxy), `args` after the URL.
async fn curl_direct(url: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--noproxy", "*", "-i"])
        .arg(url)
        .args(args)
        .output()
        .await
        .expect("curl runs (installed by .ci/deps)")
}

fn split(out: &std::process::Output) -> (String, Vec<u8>) {
    let raw = &out.stdout;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("a response head: {}", String::from_utf8_lossy(raw)));
    (
        String::from_utf8_lossy(&raw[..at + 4]).into_owned(),
        raw[at + 4..].to_vec(),
    )
}

#[tokio::test]
async fn a_relay_carries_method_path_query_headers_and_a_streamed_body_to_its_target() {
    let origin = Origin::https().await;
    let w = TestWarden::start(&relay_yaml(&format!(
        "relays:\n  - {{ name: hostapi, target: \"https://origin.test:{}/base\" }}\ncredentials:\n  - {{ host: \"origin.test:{}\", header: x-api-key, source: {{ type: static, value: relay-canary-secret }} }}\n",
        origin.port(),
        origin.port()
    )))
    .await;
    let body = pattern(1 << 20);
    let path = w.dir.path().join("body.bin");
    std::fs::write(&path, &body).unwrap();
    // The login rides in the URL's userinfo, as in a base URL an SDK is given.
    let url = format!("http://run-42:{TOKEN}@{}/relay/hostapi/x/y?q=1", w.addr);
    let upload = format!("@{}", path.display());
    let out = curl_direct(
        &url,
        &[
            "-X",
            "PUT",
            "-H",
            "x-request-id: relay-1",
            "-H",
            "x-agent: kept",
            "-H",
            "content-type: application/octet-stream",
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            &upload,
        ],
    )
    .await;
    let (head, echo) = split(&out);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: Value = serde_json::from_slice(&echo).unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["uri"], "/base/x/y?q=1");
    assert_eq!(echo["body_len"], 1 << 20);
    assert_eq!(echo["body_sha256"], sha256_hex(&body));
    let seen = &origin.seen()[0];
    assert_eq!(
        seen.header("host"),
        Some(format!("origin.test:{}", origin.port()).as_str())
    );
    assert_eq!(seen.header("x-agent"), Some("kept"));
    assert_eq!(seen.header("x-api-key"), Some("relay-canary-secret"));
    // The userinfo login was warden's: it does not go to the target.
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    let line = log_for("relay-1").await;
    assert_eq!(line["kind"], "relay");
    assert_eq!(line["relay"], "hostapi");
    assert_eq!(line["client"], "run-42");
    assert_eq!(line["scheme"], "https");
    assert_eq!(line["host"], "origin.test");
    assert_eq!(line["path"], "/base/x/y?q=[redacted]");
    assert_eq!(line["injected"], "x-api-key");
    assert_eq!(line["status"], 200);
    let text = line.to_string();
    assert!(!text.contains("relay-canary-secret") && !text.contains(TOKEN));
    let metrics = w.scrape().await;
    assert!(
        metrics.contains("warden_requests_total{client=\"run-42\",http_version=\"1.1\",kind=\"relay\",status_class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("relay-canary-secret") && !metrics.contains(TOKEN));
}

#[tokio::test]
async fn proxy_authorization_also_identifies_and_the_agents_own_authorization_is_kept() {
    let origin = Origin::http().await;
    let w = TestWarden::start(&relay_yaml(&format!(
        "relays:\n  - {{ name: plain, target: \"http://origin.test:{}\" }}\n",
        origin.port()
    )))
    .await;
    let out = curl_direct(
        &format!("http://{}/relay/plain/v1/models", w.addr),
        &[
            "-H",
            &format!("proxy-authorization: Bearer {TOKEN}"),
            "-H",
            "authorization: Bearer agent-own-key",
        ],
    )
    .await;
    let (head, body) = split(&out);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["uri"], "/v1/models");
    let seen = &origin.seen()[0];
    assert_eq!(seen.header("authorization"), Some("Bearer agent-own-key"));
    assert_eq!(seen.header("proxy-authorization"), None);
}

#[tokio::test]
async fn unknown_names_escaping_paths_and_missing_logins_are_refused_before_anything_is_sent() {
    let origin = Origin::http().await;
    let w = TestWarden::start(&relay_yaml(&format!(
        "relays:\n  - {{ name: hostapi, target: \"http://origin.test:{}/base\" }}\n",
        origin.port()
    )))
    .await;
    let login = format!("run-42:{TOKEN}");
    let cases: [(&str, bool, u16, &str); 7] = [
        ("/relay/nope/x", true, 404, "relay_unknown"),
        ("/relay/", true, 404, "relay_unknown"),
        ("/relay/hostapi/../admin", true, 400, "relay_path_invalid"),
        (
            "/relay/hostapi/%2e%2e/admin",
            true,
            400,
            "relay_path_invalid",
        ),
        ("/relay/hostapi/a%2Fb", true, 400, "relay_path_invalid"),
        ("/relay/hostapi/x", false, 407, "auth_required"),
        ("/elsewhere", true, 400, "origin_form_to_proxy"),
    ];
    for (path, with_login, status, reason) in cases {
        let url = if with_login {
            format!("http://{login}@{}{path}", w.addr)
        } else {
            format!("http://{}{path}", w.addr)
        };
        let out = curl_direct(&url, &["--path-as-is"]).await;
        let (head, body) = split(&out);
        assert_refusal(&head, &body, status, reason);
    }
    let out = curl_direct(
        &format!("http://run-42:wrong@{}/relay/hostapi/x", w.addr),
        &[],
    )
    .await;
    let (head, body) = split(&out);
    assert_refusal(&head, &body, 407, "auth_invalid");
    assert!(head
        .to_ascii_lowercase()
        .contains("proxy-authenticate: basic"));
    assert!(origin.seen().is_empty(), "nothing reached the target");
    let line = wait_log(|l| l["reason"] == "relay_unknown").await;
    assert_eq!(line["kind"], "relay");
    let line = wait_log(|l| l["reason"] == "auth_invalid" && l["relay"] == "hostapi").await;
    assert_eq!(line["kind"], "relay");
    assert!(!line.to_string().contains("wrong"));
}

#[tokio::test]
async fn the_targets_network_policy_rules_and_ssrf_guard_apply_to_a_relay() {
    let origin = Origin::http().await;
    let port = origin.port();
    let relays = format!(
        "relays:\n  - {{ name: ok, target: \"http://origin.test:{port}/api\" }}\n  - {{ name: other, target: \"http://b.test:{port}/\" }}\n"
    );
    let w = TestWarden::start(&relay_yaml(&relays).replace(
        "network:\n",
        &format!("network:\n  policy: strict\n  allow: [\"origin.test:{port}\"]\n  rules:\n    - \"deny * origin.test:{port} /api/admin/**\"\n    - \"allow GET origin.test:{port} /**\"\n    - \"deny * origin.test:{port} /**\"\n"),
    ))
    .await;
    let login = format!("run-42:{TOKEN}");
    let get = |path: &str| format!("http://{login}@{}{path}", w.addr);
    let (head, _) = split(&curl_direct(&get("/relay/ok/v1"), &[]).await);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = split(&curl_direct(&get("/relay/ok/admin/users"), &[]).await);
    assert_refusal(&head, &body, 403, "policy_denied_rule");
    let (head, body) = split(&curl_direct(&get("/relay/ok/v1"), &["-X", "DELETE"]).await);
    assert_refusal(&head, &body, 403, "policy_denied_rule");
    let (head, body) = split(&curl_direct(&get("/relay/other/"), &[]).await);
    assert_refusal(&head, &body, 403, "policy_denied_host");
    assert_eq!(origin.seen().len(), 1);

    // Without the loopback exception, the SSRF guard refuses the target's resolved address.
    let guarded = TestWarden::start(&network_yaml("auto", "", &relays)).await;
    let out = curl_direct(&format!("http://{}/relay/ok/v1", guarded.addr), &[]).await;
    let (head, body) = split(&out);
    assert_refusal(&head, &body, 403, "private_address");
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn header_rules_substitutions_transforms_correlation_and_scrubbing_apply_through_a_relay() {
    let origin = Origin::https().await;
    let port = origin.port();
    let dest = format!("\"origin.test:{port}\"");
    let w = TestWarden::start(&relay_yaml(&format!(
        "relays:\n  - {{ name: h, target: \"https://origin.test:{port}\" }}\n\
         credentials:\n  - {{ host: {dest}, source: {{ type: static, value: relay-echo-secret }} }}\n\
         headers:\n  - {{ host: {dest}, set: {{ x-set: by-warden }}, remove: [x-drop] }}\n\
         substitutions:\n  - {{ host: {dest}, placeholder: WARDEN_RELAY_KEY, source: {{ type: static, value: real-relay-key }} }}\n\
         transforms:\n  - {{ host: {dest}, set_headers: {{ x-transformed: \"1\" }} }}\n\
         correlation:\n  session_id: fixed-session\n  targets:\n    - {{ host: {dest} }}\n"
    )))
    .await;
    let out = curl_direct(
        &format!(
            "http://run-42:{TOKEN}@{}/relay/h/echo-header?key=WARDEN_RELAY_KEY",
            w.addr
        ),
        &["-H", "x-drop: 1", "-H", "x-request-id: relay-rules"],
    )
    .await;
    let (head, _) = split(&out);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-transformed: 1"), "{head}");
    // The origin echoed the credential back: the client sees it masked.
    assert!(!head.contains("relay-echo-secret"), "{head}");
    assert!(lower.contains("x-echo-auth:"), "{head}");
    let seen = &origin.seen()[0];
    assert_eq!(seen.uri, "/echo-header?key=real-relay-key");
    assert_eq!(seen.header("x-set"), Some("by-warden"));
    assert_eq!(seen.header("x-drop"), None);
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer relay-echo-secret")
    );
    assert_eq!(seen.header("x-warden-session-id"), Some("fixed-session"));
    assert_eq!(seen.header("x-warden-sequence-number"), Some("1"));
    let line = log_for("relay-rules").await;
    assert_eq!(
        (line["kind"].as_str(), line["seq"].as_u64()),
        (Some("relay"), Some(1))
    );
}

#[tokio::test]
async fn llm_policy_applies_to_a_call_through_a_relay() {
    let text = fixture("anthropic.sse", "bash");
    let origin = LlmOrigin::start(Script::sse(&text, 7)).await;
    let w = TestWarden::start(&relay_yaml(&format!(
        "relays:\n  - {{ name: claude, target: \"https://anthropic.test:{0}\" }}\nllm:\n  - {{ host: \"anthropic.test:{0}\", provider: anthropic, deny_tools: [bash] }}\n",
        origin.port()
    )))
    .await;
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{}/relay/claude/v1/messages", w.addr))
        .basic_auth("run-42", Some(TOKEN))
        .header("x-request-id", "relay-llm")
        .json(&json!({ "model": "claude-x", "max_tokens": 8, "stream": true, "messages": [{"role": "user", "content": "hi"}] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("event: error") && body.contains("permission_error"),
        "{body}"
    );
    let line = log_for("relay-llm").await;
    assert_eq!(line["kind"], "relay");
    assert_eq!(line["reason"], "llm_tool_denied");
    assert_eq!(line["provider"], "anthropic");
    let received = origin.received();
    assert!(
        received[0].head.starts_with("POST /v1/messages "),
        "{}",
        received[0].head
    );
}

#[tokio::test]
async fn a_websocket_upgrade_through_a_relay_reaches_the_target() {
    let origin = WsOrigin::start(true).await;
    let w = TestWarden::start(&relay_yaml(&format!(
        "relays:\n  - {{ name: ws, target: \"https://origin.test:{}/socket\" }}\n",
        origin.addr.port()
    )))
    .await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/relay/ws/chat", w.addr),
    )
    .unwrap();
    let basic = base64_login("run-42", TOKEN);
    req.headers_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    req.headers_mut()
        .insert("x-request-id", "relay-ws".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send("through the relay".into()).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "through the relay");
    ws.close(None).await.unwrap();
    drop(ws);
    let line = log_for("relay-ws").await;
    assert_eq!(line["kind"], "websocket");
    assert_eq!(line["relay"], "ws");
    assert_eq!(line["status"], 101);
}

#[tokio::test]
async fn relay_entries_are_validated_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = fill(
        &relay_yaml("relays:\n  - { name: \"a b\", target: \"https://x.test\" }\n  - { name: ok, target: \"gopher://x.test\" }\n"),
        &dir,
    );
    let err = warden::Config::parse(&text, dir.path())
        .unwrap()
        .compile(warden::CompileOptions { create_ca: true })
        .unwrap_err()
        .to_string();
    assert!(err.contains("relays[0].name"), "{err}");
    assert!(err.contains("relays[1].target"), "{err}");
}

fn base64_login(name: &str, token: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{name}:{token}"))
}
