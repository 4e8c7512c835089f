//! MCP tool policy with the official MCP Python SDK on both ends: its client (the default
//! 2026-07-28 per-request protocol, and its legacy initialize/session mode) through warden
//! with `HTTPS_PROXY`, and its `MCPServer` over Streamable HTTP (TLS, on loopback) as the
//! origin. Denied tools are not listed and their calls never reach the server; the server's
//! credential comes from warden; headers that disagree with the body are refused.

use crate::clients::{client_script, run, script, Py};
use crate::common::*;
use serde_json::{json, Value};

const CANARY: &str = "CANARY-mcp-7a3f1";

/// tests/clients/mcp_server.py for mcp.test (test origin CA), wanting `Bearer <CANARY>`.
struct McpOrigin {
    port: u16,
    server: Py,
    _certs: tempfile::TempDir,
}

impl McpOrigin {
    async fn start() -> McpOrigin {
        let certs = tempfile::tempdir().unwrap();
        let cert = origin_ca().issue(&["mcp.test"]);
        let (c, k) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        let mut cmd = script("mcp_server.py");
        cmd.arg(&c).arg(&k).env("MCP_ORIGIN_SECRET", CANARY);
        let mut server = Py::spawn(cmd, "mcp_server.py");
        let port = server.line().await["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("the server printed its port");
        McpOrigin {
            port,
            server,
            _certs: certs,
        }
    }

    fn url(&self) -> String {
        format!("https://mcp.test:{}/mcp", self.port)
    }

    /// Stops the server; returns every line it printed (requests and tool runs), in order.
    async fn seen(self) -> Vec<Value> {
        self.server.finish().await
    }
}

/// warden with the MCP entry (`mode`) and the server's credential from `credentials`.
async fn mcp_warden(port: u16, mode: &str) -> TestWarden {
    TestWarden::with(
        "auto",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\ncredentials:\n  - host: mcp.test:{port}\n    source: {{ type: static, value: {CANARY} }}\nmcp:\n  - host: mcp.test:{port}\n    path: /mcp\n    deny_tools: [\"delete_*\"]\n    mode: {mode}\n"
        ),
    )
    .await
}

async fn sdk_client(w: &TestWarden, origin: &McpOrigin, mode: &str) -> Value {
    let mut cmd = client_script("mcp_calls.py", w, &w.proxy_url());
    cmd.args([origin.url(), mode.to_string()]);
    run(cmd, "mcp_calls.py").await
}

fn tools_run(seen: &[Value]) -> Vec<&str> {
    seen.iter().filter_map(|l| l["tool"].as_str()).collect()
}

/// The canary, raw and encoded, is nowhere in the log, the metrics or `texts`.
async fn assert_canary_kept(w: &TestWarden, texts: &[String]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(CANARY);
    let b64_header = base64::engine::general_purpose::STANDARD.encode(format!("Bearer {CANARY}"));
    let metrics = w.scrape().await;
    let logs = all_log_lines();
    for text in logs.iter().chain(texts).chain([&metrics]) {
        for needle in [CANARY, &b64, &b64_header] {
            assert!(!text.contains(needle), "secret leaked: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_in_both_modes_is_never_offered_nor_lets_through_a_denied_tool() {
    let origin = McpOrigin::start().await;
    let port = origin.port;
    let w = mcp_warden(port, "enforce").await;
    let modern = sdk_client(&w, &origin, "auto").await;
    let legacy = sdk_client(&w, &origin, "legacy").await;
    for (out, version) in [(&modern, "2026-07-28"), (&legacy, "2025-11-25")] {
        assert_eq!(out["protocol_version"], version, "{out}");
        // delete_all is never offered...
        assert_eq!(out["tools"], json!(["echo", "count"]), "{out}");
        // ...an allowed call answers...
        assert_eq!(
            out["echo"],
            json!({"is_error": false, "text": "hello"}),
            "{out}"
        );
        // ...a denied one is a tool error the model reads, naming the reason...
        assert_eq!(out["denied"]["is_error"], true, "{out}");
        let text = out["denied"]["text"].as_str().unwrap();
        assert!(
            text.contains("mcp_tool_denied") && text.contains("`delete_all`"),
            "{text}"
        );
        // ...and a streamed answer (progress events, then the result) arrives whole.
        assert_eq!(
            out["count"],
            json!({"is_error": false, "text": "counted 3"}),
            "{out}"
        );
        assert_eq!(out["progress"], json!([1.0, 2.0, 3.0]), "{out}");
    }
    let seen = origin.seen().await;
    // The denied calls never reached the server; every request carried the credential the
    // client never had.
    assert_eq!(
        tools_run(&seen),
        ["echo", "count", "echo", "count"],
        "{seen:?}"
    );
    let requests: Vec<&Value> = seen.iter().filter(|l| l["http"].is_string()).collect();
    assert!(requests.iter().all(|r| r["authorized"] == true), "{seen:?}");
    // Modern: per-request, with the method in a header; legacy: a session and its GET stream.
    assert!(
        requests
            .iter()
            .any(|r| r["mcp_method"] == "server/discover"),
        "{seen:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r["http"] == "GET" && r["session"] == true),
        "{seen:?}"
    );
    assert!(requests.iter().any(|r| r["http"] == "DELETE"), "{seen:?}");

    let denied = wait_log(|v| v["mcp_tool"] == "delete_all" && v["port"] == port).await;
    assert_eq!(denied["reason"], "mcp_tool_denied", "{denied}");
    assert_eq!(denied["mcp_method"], "tools/call", "{denied}");
    assert_eq!(denied["status"], 200, "{denied}");
    assert_eq!(denied["rule"], "mcp[0].deny_tools[0]", "{denied}");
    assert_eq!(
        denied["injected"],
        Value::Null,
        "not sent upstream: {denied}"
    );
    let allowed = wait_log(|v| v["mcp_tool"] == "echo" && v["port"] == port).await;
    assert_eq!(allowed["injected"], "authorization", "{allowed}");
    assert_eq!(allowed["reason"], Value::Null, "{allowed}");
    let metrics = w.scrape().await;
    assert_eq!(
        metric_value(&metrics, "warden_denials_total{reason=\"mcp_tool_denied\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert_canary_kept(&w, &[modern.to_string(), legacy.to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_lists_and_forwards_a_denied_tool_and_logs_would_deny() {
    let origin = McpOrigin::start().await;
    let port = origin.port;
    let w = mcp_warden(port, "report").await;
    let out = sdk_client(&w, &origin, "auto").await;
    assert_eq!(
        out["tools"],
        json!(["echo", "delete_all", "count"]),
        "{out}"
    );
    assert_eq!(
        out["denied"],
        json!({"is_error": false, "text": "deleted everything"}),
        "{out}"
    );
    let seen = origin.seen().await;
    assert_eq!(
        tools_run(&seen),
        ["echo", "delete_all", "count"],
        "{seen:?}"
    );
    let line = wait_log(|v| v["mcp_tool"] == "delete_all" && v["port"] == port).await;
    assert_eq!(line["would_deny"], "mcp_tool_denied", "{line}");
    assert_eq!(line["reason"], Value::Null, "{line}");
    assert_eq!(line["rule"], "mcp[0].deny_tools[0]", "{line}");
    let listing = wait_log(|v| v["mcp_method"] == "tools/list" && v["port"] == port).await;
    assert_eq!(listing["would_deny"], "mcp_tool_denied", "{listing}");
    assert_canary_kept(&w, &[out.to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_that_disagree_smuggle_or_batch_a_denied_call_never_reach_the_server() {
    let origin = McpOrigin::start().await;
    let w = mcp_warden(origin.port, "enforce").await;
    let client = w.client();
    let url = origin.url();
    let post = |id: &str, body: &str, headers: &[(&str, &str)]| {
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("x-request-id", id)
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let call = |tool: &str| {
        json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
            .to_string()
    };
    let mut bodies = Vec::new();
    // The header names an allowed tool, the body a denied one (and the other way round): an
    // origin routing by either could run what policy did not see.
    for (id, body, headers) in [
        (
            "mcp-raw-name",
            call("delete_all"),
            vec![("mcp-method", "tools/call"), ("mcp-name", "echo")],
        ),
        (
            "mcp-raw-method",
            call("delete_all"),
            vec![("mcp-method", "tools/list")],
        ),
        (
            "mcp-raw-twice",
            call("echo"),
            vec![("mcp-name", "echo"), ("mcp-name", "delete_all")],
        ),
    ] {
        let resp = post(id, &body, &headers).await.unwrap();
        assert_eq!(resp.status(), 400, "{id}");
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["reason"], "mcp_ambiguous", "{id}: {text}");
        assert_eq!(log_for(id).await["reason"], "mcp_ambiguous");
        bodies.push(text);
    }
    let resp = post("mcp-raw-json", "{\"jsonrpc\":", &[]).await.unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"reason\":\"mcp_malformed\""), "{text}");
    bodies.push(text);

    // A batch with a denied call is answered whole, in the batch: nothing of it is sent.
    let batch = format!(
        "[{},{{\"jsonrpc\":\"2.0\",\"id\":\"b\",\"method\":\"tools/list\"}}]",
        call("delete_all")
    );
    let resp = post("mcp-raw-batch", &batch, &[]).await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer[0]["id"], 9, "{answer}");
    assert_eq!(answer[0]["result"]["isError"], true, "{answer}");
    assert_eq!(answer[1]["id"], "b", "{answer}");
    assert_eq!(answer[1]["error"]["code"], -32000, "{answer}");
    // A denied call sent as a notification is dropped, and nothing answers it.
    let note = r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_all"}}"#;
    let resp = post("mcp-raw-note", note, &[]).await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.text().await.unwrap(), "");
    // A client that takes only SSE gets the refusal as an SSE message event.
    let resp = client
        .post(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "s-123")
        .body(call("delete_all"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["mcp-session-id"], "s-123");
    let text = resp.text().await.unwrap();
    let data = text
        .strip_prefix("event: message\ndata: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{text}"));
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["result"]["isError"], true, "{v}");
    bodies.push(text);

    // Over HTTP/2 inside the tunnel, the same answer.
    let out = w
        .curl(&[
            "--http2",
            "-H",
            "content-type: application/json",
            "-H",
            "x-request-id: mcp-raw-h2",
            "-w",
            "\n%{http_version}",
            "--data-binary",
            &call("delete_all"),
            &url,
        ])
        .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').expect("curl output");
    assert_eq!(version, "2", "{text}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        (&v["id"], &v["result"]["isError"]),
        (&json!(9), &json!(true)),
        "{v}"
    );
    assert_eq!(log_for("mcp-raw-h2").await["reason"], "mcp_tool_denied");

    let seen = origin.seen().await;
    assert!(seen.is_empty(), "the server saw {seen:?}");
    assert_canary_kept(&w, &bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_get_stream_and_a_paginated_json_listing_lose_denied_tools_and_keep_the_session_id() {
    let listing = |id: u64, cursor: Option<&str>| {
        let mut result =
            json!({"tools": [{"name": "delete_all"}, {"name": "echo"}, {"name": "delete_rest"}]});
        if let Some(c) = cursor {
            result["nextCursor"] = json!(c);
        }
        json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
    };
    let stream = format!(
        "id: 1\nevent: message\ndata: {}\n\n: keep-alive\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}}\n\n",
        listing(4, None)
    );
    let sse = LlmOrigin::start(Script::sse(&stream, 13)).await;
    let json_origin = LlmOrigin::start(Script::json(200, &listing(5, Some("page-2")))).await;
    let entries: String = [sse.port(), json_origin.port()]
        .iter()
        .map(|p| {
            format!("  - {{ host: \"mcp.test:{p}\", path: /mcp, deny_tools: [\"delete_*\"] }}\n")
        })
        .collect();
    let w = TestWarden::with("auto", &format!("mcp:\n{entries}")).await;
    let client = w.client();
    let resp = client
        .get(format!("https://mcp.test:{}/mcp", sse.port()))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "sess-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let want = format!(
        "id: 1\nevent: message\ndata: {}\n\n: keep-alive\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}}\n\n",
        json!({"jsonrpc": "2.0", "id": 4, "result": {"tools": [{"name": "echo"}]}})
    );
    assert_eq!(text, want);
    let head = &sse.received()[0].head;
    assert!(
        head.to_ascii_lowercase()
            .contains("mcp-session-id: sess-42"),
        "{head}"
    );

    let resp = client
        .post(format!("https://mcp.test:{}/mcp", json_origin.port()))
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{"cursor":"page-1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"jsonrpc": "2.0", "id": 5, "result": {"tools": [{"name": "echo"}], "nextCursor": "page-2"}})
    );
}
