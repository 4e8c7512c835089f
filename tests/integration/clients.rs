//! Real Python clients through warden's HTTP/2 inside intercepted tunnels: grpcio (all four
//! call kinds, trailers, statuses, an injected credential, refusals), httpx with `http2=True`
//! and the official OpenAI SDK against the fake LLM provider; and both official SDKs raising
//! their rate-limit errors on a spent client budget; the Anthropic SDK through a relay, its
//! login in the base URL. The scripts live in
//! tests/clients/ and run on the venv `.ci/deps` makes; each prints its result as JSON.

use crate::common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Bound on one script's run: Python start-up and imports on a busy 2-core machine, then
/// calls that each finish within [`WAIT`].
const SCRIPT_WAIT: Duration = Duration::from_secs(60);

const CANARY: &str = "CANARY-grpc-5d1e8";

/// The venv's interpreter. A missing or stale venv fails the test: the suite's Python clients
/// are part of it, not optional.
pub(crate) fn python() -> PathBuf {
    let venv = repo_dir().join("target/pyenv");
    let py = venv.join("bin/python");
    let pins = std::fs::read(repo_dir().join("tests/clients/requirements.txt"))
        .expect("tests/clients/requirements.txt is readable");
    let stamp = std::fs::read_to_string(venv.join("requirements.sha256")).unwrap_or_default();
    assert!(
        py.is_file() && stamp.trim() == sha256_hex(&pins),
        "the Python test clients are not installed in {} (or not the versions \
         tests/clients/requirements.txt pins): run `bash .ci/deps`",
        venv.display()
    );
    py
}

/// `tests/clients/<script>` on the venv's Python, with no proxy settings but those given.
pub(crate) fn script(name: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo_dir().join("tests/clients").join(name))
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    without_client_env(&mut cmd);
    cmd
}

/// [`script`] with warden as its proxy (`proxy` is warden's URL, maybe with user info) and
/// warden's CA as its only trust. grpcio reads the lower-case variable, httpx either.
pub(crate) fn client_script(name: &str, w: &TestWarden, proxy: &str) -> Command {
    let mut cmd = script(name);
    cmd.env("HTTPS_PROXY", proxy)
        .env("https_proxy", proxy)
        .env("WARDEN_CA_FILE", w.dir.path().join("ca.crt"));
    cmd
}

/// A running script whose stdout is read a JSON line at a time.
pub(crate) struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    stderr_task: tokio::task::JoinHandle<()>,
    name: String,
}

impl Py {
    pub(crate) fn spawn(mut cmd: Command, name: &str) -> Py {
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("the venv's Python runs");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        let stderr_task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Py {
            child,
            stdin,
            stdout,
            stderr,
            stderr_task,
            name: name.to_string(),
        }
    }

    /// Fails the test with the script's stderr, read to its end (the script is killed first
    /// if it still runs).
    async fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, &mut self.stderr_task).await;
        panic!(
            "{}: {what}; its stderr:\n{}",
            self.name,
            self.stderr.lock().unwrap()
        )
    }

    /// The next stdout line, as JSON; `None` at EOF.
    pub(crate) async fn next(&mut self) -> Option<Value> {
        match tokio::time::timeout(SCRIPT_WAIT, self.stdout.next_line()).await {
            Err(_) => self.fail("no output in time").await,
            Ok(Err(e)) => self.fail(&format!("reading its output failed: {e}")).await,
            Ok(Ok(None)) => None,
            Ok(Ok(Some(line))) => match serde_json::from_str(&line) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.fail(&format!("printed a line that is not JSON: {line}"))
                        .await
                }
            },
        }
    }

    pub(crate) async fn line(&mut self) -> Value {
        match self.next().await {
            Some(v) => v,
            None => self.fail("exited before printing its result").await,
        }
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin, reads every line left and checks the script exited 0.
    pub(crate) async fn finish(mut self) -> Vec<Value> {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        while let Some(v) = self.next().await {
            rest.push(v);
        }
        match tokio::time::timeout(SCRIPT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => rest,
            Ok(Ok(status)) => self.fail(&format!("exited with {status}")).await,
            _ => self.fail("did not exit in time").await,
        }
    }
}

/// Runs a script to the end and returns the JSON object it printed last.
pub(crate) async fn run(cmd: Command, name: &str) -> Value {
    let out = Py::spawn(cmd, name).finish().await;
    out.last()
        .cloned()
        .unwrap_or_else(|| panic!("{name} printed nothing"))
}

/// tests/clients/grpc_server.py: a grpcio TLS origin for grpc.test and grpc2.test (test
/// origin CA) that wants `Bearer <secret>`, reporting every call it receives.
struct GrpcOrigin {
    port: u16,
    server: Py,
    _certs: tempfile::TempDir,
}

impl GrpcOrigin {
    async fn start(secret: &str) -> GrpcOrigin {
        let certs = tempfile::tempdir().unwrap();
        let cert = origin_ca().issue(&["grpc.test", "grpc2.test"]);
        let (c, k) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        let mut cmd = script("grpc_server.py");
        cmd.arg(&c).arg(&k).env("GRPC_ORIGIN_SECRET", secret);
        let mut server = Py::spawn(cmd, "grpc_server.py");
        let port = server.line().await["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("the server printed its port");
        GrpcOrigin {
            port,
            server,
            _certs: certs,
        }
    }

    /// Stops the server and returns every call it received, in order.
    async fn calls(self) -> Vec<Value> {
        self.server.finish().await
    }
}

fn methods(calls: &[Value]) -> Vec<&str> {
    calls.iter().filter_map(|c| c["method"].as_str()).collect()
}

/// Asserts a gRPC call's log line: over HTTP/2, named service and method, this grpc-status.
async fn grpc_line(id: &str, method: &str, status: u64) -> Value {
    let line = log_for(id).await;
    assert_eq!(line["http_version"], "2", "{line}");
    assert_eq!(line["grpc_service"], "test.Echo", "{line}");
    assert_eq!(line["grpc_method"], method, "{line}");
    assert_eq!(line["grpc_status"], status, "{line}");
    line
}

fn assert_no_canary_logged() {
    for l in all_log_lines() {
        assert!(!l.contains(CANARY), "secret in log: {l}");
    }
}

fn credential_yaml(port: u16) -> String {
    format!(
        "credentials:\n  - host: grpc.test:{port}\n    source: {{ type: static, value: {CANARY} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_of_every_kind_keep_trailers_and_statuses_and_get_the_injected_credential() {
    let origin = GrpcOrigin::start(CANARY).await;
    let port = origin.port;
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!(
            "  allow_cidrs: [127.0.0.0/8]\n  rules:\n    - \"deny POST grpc.test:{port} /test.Echo/Forbidden\"\n"
        ),
        &credential_yaml(port),
    ))
    .await;
    let mut cmd = client_script("grpc_calls.py", &w, &w.proxy_url());
    cmd.args([
        "grpc-kinds".to_string(),
        format!("grpc.test:{port}"),
        format!("grpc2.test:{port}"),
    ]);
    let out = run(cmd, "grpc_calls.py").await;
    assert!(!out.to_string().contains(CANARY), "{out}");

    assert_eq!(out["unary"]["code"], "OK", "{out}");
    assert_eq!(out["unary"]["reply"], "echo:hello");
    assert_eq!(out["unary"]["trailers"]["x-trailer"], "unary-done");
    assert_eq!(
        out["server_stream"]["replies"],
        json!(["part-0", "part-1", "part-2"])
    );
    assert_eq!(
        out["server_stream"]["trailers"]["x-trailer"],
        "server-stream-done"
    );
    assert_eq!(out["client_stream"]["reply"], "a+b+c");
    assert_eq!(
        out["client_stream"]["trailers"]["x-trailer"],
        "client-stream-done"
    );
    assert_eq!(out["bidi"]["replies"], json!(["0:x", "1:y", "2:z", "3:w"]));
    assert_eq!(out["bidi"]["trailers"]["x-trailer"], "bidi-done");
    // The origin's own error status, message and binary trailer arrive as it sent them.
    assert_eq!(out["missing"]["code"], "NOT_FOUND", "{out}");
    assert_eq!(out["missing"]["details"], "no such widget: 42");
    assert_eq!(out["missing"]["trailers"]["x-why-bin"], "0001feff");
    // The policy's refusal is a gRPC status naming the reason, not a transport error.
    assert_eq!(out["forbidden"]["code"], "PERMISSION_DENIED", "{out}");
    let details = out["forbidden"]["details"].as_str().unwrap();
    assert!(details.starts_with("policy_denied_rule: "), "{details}");
    // grpc2.test has no credential: the origin's own check refuses it.
    assert_eq!(out["uncredentialed"]["code"], "UNAUTHENTICATED", "{out}");
    assert_eq!(
        out["uncredentialed"]["details"],
        "missing or wrong bearer credential"
    );
    assert_eq!(out["after"]["reply"], "echo:again");

    let calls = origin.calls().await;
    assert_eq!(
        methods(&calls),
        [
            "Unary",
            "ServerStream",
            "ClientStream",
            "Bidi",
            "Missing",
            "Unary",
            "Unary"
        ],
        "the refused call never reached the origin: {calls:?}"
    );
    for c in &calls {
        let uncredentialed = c["request_id"] == "grpc-kinds-uncredentialed";
        assert_eq!(c["authorized"], !uncredentialed, "{c}");
    }

    let line = grpc_line("grpc-kinds-unary", "Unary", 0).await;
    assert_eq!(line["injected"], "authorization", "{line}");
    grpc_line("grpc-kinds-server-stream", "ServerStream", 0).await;
    grpc_line("grpc-kinds-client-stream", "ClientStream", 0).await;
    grpc_line("grpc-kinds-bidi", "Bidi", 0).await;
    grpc_line("grpc-kinds-missing", "Missing", 5).await;
    let line = grpc_line("grpc-kinds-forbidden", "Forbidden", 7).await;
    assert_eq!(line["reason"], "policy_denied_rule", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    let line = grpc_line("grpc-kinds-uncredentialed", "Unary", 16).await;
    assert!(line["injected"].is_null(), "{line}");
    assert!(line["reason"].is_null(), "{line}");
    assert_no_canary_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_removed_by_a_reload_gets_unauthenticated_inside_its_open_tunnel() {
    let origin = GrpcOrigin::start(CANARY).await;
    let port = origin.port;
    let yaml = |names: &[&str]| {
        let list: String = names
            .iter()
            .map(|n| {
                format!("      - {{ name: {n}, token: {{ type: static, value: tok-{n} }} }}\n")
            })
            .collect();
        default_yaml("all", "", &credential_yaml(port)).replace(
            "proxy:\n  listen: 127.0.0.1:0\n",
            &format!("proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n{list}"),
        )
    };
    let w = TestWarden::start_file(&yaml(&["alpha", "beta"])).await;
    let target = format!("grpc.test:{port}");
    let as_alpha = format!("http://alpha:tok-alpha@{}", w.addr);
    let mut cmd = client_script("grpc_reauth.py", &w, &as_alpha);
    cmd.args(["grpc-reauth", &target]);
    let mut client = Py::spawn(cmd, "grpc_reauth.py");
    let first = client.line().await;
    assert_eq!(first["first"]["code"], "OK", "{first}");
    w.reload(&yaml(&["beta"])).unwrap();
    client.send("go").await;
    let second = client.line().await;
    assert_eq!(second["second"]["code"], "UNAUTHENTICATED", "{second}");
    let details = second["second"]["details"].as_str().unwrap();
    assert!(details.starts_with("auth_invalid: "), "{details}");
    client.finish().await;
    let line = grpc_line("grpc-reauth-second", "Unary", 16).await;
    assert_eq!(line["reason"], "auth_invalid", "{line}");

    // A new tunnel for the removed client is refused at its CONNECT: the call never starts,
    // and grpcio reports the proxy as unavailable.
    let mut cmd = client_script("grpc_reauth.py", &w, &as_alpha);
    cmd.args(["grpc-reauth-new", &target]);
    let mut client = Py::spawn(cmd, "grpc_reauth.py");
    let first = client.line().await;
    assert_eq!(first["first"]["code"], "UNAVAILABLE", "{first}");
    let line = wait_log(|v| {
        v["method"] == "CONNECT" && v["port"] == port && v["reason"] == "auth_invalid"
    })
    .await;
    assert_eq!(line["status"], 407, "{line}");
    drop(client);

    let calls = origin.calls().await;
    assert_eq!(methods(&calls), ["Unary"], "{calls:?}");
    assert_eq!(calls[0]["request_id"], "grpc-reauth-first");
    assert_no_canary_logged();
}

/// A Chat Completions JSON answer calling `tool`.
fn chat_json(tool: &str) -> String {
    json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-5", "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": tool, "arguments": "{}"}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
    .to_string()
}

/// warden in front of OpenAI-compatible fake providers on `ports`, denying the `bash` tool.
async fn openai_warden(ports: &[u16]) -> TestWarden {
    let llm: String = ports
        .iter()
        .map(|p| {
            format!("  - host: \"openai.test:{p}\"\n    provider: openai\n    deny_tools: [bash]\n")
        })
        .collect();
    TestWarden::with("all", &format!("llm:\n{llm}")).await
}

fn chat_request(stream: bool) -> Value {
    json!({"model": "gpt-5", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpx_speaks_http2_to_warden_and_gets_llm_policy_on_json_and_sse() {
    let echo = Origin::https().await;
    let json_origin = LlmOrigin::start(Script::json(200, &chat_json("bash"))).await;
    let allowed_text = fixture("chat_completions.sse", "read_file");
    let allowed = LlmOrigin::start(Script::sse(&allowed_text, 7)).await;
    let denied = LlmOrigin::start(Script::sse(&fixture("chat_completions.sse", "bash"), 5)).await;
    let w = openai_warden(&[json_origin.port(), allowed.port(), denied.port()]).await;
    let chat = |o: &LlmOrigin| format!("https://openai.test:{}/v1/chat/completions", o.port());
    let plan = json!([
        {"name": "echo", "method": "GET", "url": format!("https://origin.test:{}/echo", echo.port()),
         "headers": {"x-request-id": "httpx-echo"}},
        {"name": "json", "method": "POST", "url": chat(&json_origin), "json": chat_request(false),
         "headers": {"x-request-id": "httpx-json"}},
        {"name": "allowed", "method": "POST", "url": chat(&allowed), "json": chat_request(true),
         "stream": true, "headers": {"x-request-id": "httpx-allowed"}},
        {"name": "denied", "method": "POST", "url": chat(&denied), "json": chat_request(true),
         "stream": true, "headers": {"x-request-id": "httpx-denied"}},
    ]);
    let mut cmd = client_script("httpx_calls.py", &w, &w.proxy_url());
    cmd.arg(plan.to_string());
    let out = run(cmd, "httpx_calls.py").await;
    for name in ["echo", "json", "allowed", "denied"] {
        assert_eq!(out[name]["http_version"], "HTTP/2", "{name}: {out}");
    }

    // Downstream h2, upstream whatever the origin speaks (HTTP/1.1 here).
    assert_eq!(out["echo"]["status"], 200, "{out}");
    let echoed: Value = serde_json::from_str(out["echo"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["version"], "HTTP/1.1");
    let line = log_for("httpx-echo").await;
    assert_eq!(line["http_version"], "2", "{line}");
    assert_eq!(line["status"], 200, "{line}");

    assert_eq!(out["json"]["status"], 403, "{out}");
    assert_eq!(out["json"]["headers"]["x-should-retry"], "false");
    let v: Value = serde_json::from_str(out["json"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "llm_tool_denied", "{v}");

    assert_eq!(out["allowed"]["status"], 200, "{out}");
    assert_eq!(out["allowed"]["body"], allowed_text.as_str());

    assert_eq!(out["denied"]["status"], 200, "{out}");
    let body = out["denied"]["body"].as_str().unwrap();
    assert!(!body.contains("[DONE]"), "{body}");
    assert!(!body.contains("\"name\":\"bash\""), "{body}");
    assert!(body.contains("\"content\":\"Hi\""), "{body}");
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    let v: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
    assert_eq!(v["error"]["code"], "llm_tool_denied", "{v}");

    for (id, reason) in [
        ("httpx-json", Some("llm_tool_denied")),
        ("httpx-allowed", None),
        ("httpx-denied", Some("llm_tool_denied")),
    ] {
        let line = log_for(id).await;
        assert_eq!(line["http_version"], "2", "{line}");
        assert_eq!(line["provider"], "openai", "{line}");
        assert_eq!(line["reason"].as_str(), reason, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_over_http2_streams_allowed_tool_calls_whole_and_raises_on_denied_ones() {
    let allowed = LlmOrigin::start(Script::sse_events(&fixture(
        "chat_completions.sse",
        "read_file",
    )))
    .await;
    let denied = LlmOrigin::start(Script::sse(&fixture("chat_completions.sse", "bash"), 5)).await;
    let json_denied = LlmOrigin::start(Script::json(200, &chat_json("bash"))).await;
    let w = openai_warden(&[allowed.port(), denied.port(), json_denied.port()]).await;
    let base = |o: &LlmOrigin| format!("https://openai.test:{}/v1", o.port());
    let mut cmd = client_script("openai_chat.py", &w, &w.proxy_url());
    cmd.args([
        "sdk".to_string(),
        base(&allowed),
        base(&denied),
        base(&json_denied),
    ]);
    let out = run(cmd, "openai_chat.py").await;

    let ok = &out["allowed"];
    assert!(ok["error"].is_null(), "{out}");
    assert_eq!(ok["content"], "Hi");
    assert_eq!(
        ok["tool_calls"],
        json!({"0": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
               "1": {"name": "read_file", "arguments": "{}"}})
    );
    assert_eq!(ok["finish_reason"], "tool_calls");
    assert_eq!(ok["usage"]["prompt_tokens"], 9, "{ok}");
    assert_eq!(ok["usage"]["completion_tokens"], 4, "{ok}");

    // The stream's error event is what the SDK raises; the held call never reached it.
    let bad = &out["denied"];
    assert_eq!(bad["error"]["type"], "APIError", "{out}");
    assert_eq!(bad["error"]["body"]["code"], "llm_tool_denied", "{out}");
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("`bash`"),
        "{out}"
    );
    assert_eq!(
        bad["content"], "Hi",
        "the text before the tool call arrived"
    );
    assert!(!bad["tool_calls"].to_string().contains("bash"), "{out}");

    // A whole answer is refused with 403, which the SDK does not retry.
    let refused = &out["json_denied"]["error"];
    assert_eq!(refused["type"], "PermissionDeniedError", "{out}");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["body"]["code"], "llm_tool_denied", "{out}");
    assert_eq!(json_denied.received().len(), 1, "no retry");

    for (id, reason) in [
        ("sdk-allowed", None),
        ("sdk-denied", Some("llm_tool_denied")),
        ("sdk-json-denied", Some("llm_tool_denied")),
    ] {
        let line = log_for(id).await;
        assert_eq!(line["http_version"], "2", "{line}");
        assert_eq!(line["provider"], "openai", "{line}");
        assert_eq!(line["model"], "gpt-5", "{line}");
        assert_eq!(line["reason"].as_str(), reason, "{line}");
    }
    let line = log_for("sdk-allowed").await;
    assert!(
        line["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("read_file"))),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_and_anthropic_sdks_raise_their_rate_limit_errors_on_a_spent_budget() {
    use crate::budget::{budget_yaml, clear_of_a_window_end, CHAT_JSON, MESSAGE_JSON};
    // Day windows (UTC), and a minute to spare for Python's start-up.
    clear_of_a_window_end(Duration::from_secs(86_400), Duration::from_secs(60)).await;
    let openai = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let anthropic = LlmOrigin::start(Script::json(200, MESSAGE_JSON)).await;
    let w = TestWarden::start(&budget_yaml(
        &[
            ("openai", "openai.test", openai.port()),
            ("anthropic", "anthropic.test", anthropic.port()),
        ],
        &[
            ("run-window", "{ llm_tokens_per_day: 10 }"),
            ("run-quota", "{ llm_tokens_total: 10 }"),
            ("run-claude", "{ llm_tokens_per_day: 10 }"),
        ],
        "",
    ))
    .await;
    let proxy = |name: &str| format!("http://{name}:tok-{name}@{}", w.addr);
    let openai_base = format!("https://openai.test:{}/v1", openai.port());
    let calls = json!([
        {"sdk": "openai", "base_url": openai_base, "proxy": proxy("run-window"), "id": "sdk-budget-window"},
        {"sdk": "openai", "base_url": openai_base, "proxy": proxy("run-quota"), "id": "sdk-budget-quota"},
        {"sdk": "anthropic", "base_url": format!("https://anthropic.test:{}", anthropic.port()),
         "proxy": proxy("run-claude"), "id": "sdk-budget-claude"},
    ]);
    let mut cmd = client_script("budget_sdks.py", &w, &w.proxy_url());
    cmd.arg(calls.to_string());
    let out = run(cmd, "budget_sdks.py").await;

    // The first call of each went through and reported its usage; the second raised the
    // SDK's own rate-limit error (max_retries=0: nothing was waited out).
    let window = &out[0];
    assert_eq!(window["usage"]["prompt_tokens"], 11, "{out}");
    assert_eq!(window["error"]["type"], "RateLimitError", "{out}");
    assert_eq!(window["error"]["status"], 429);
    assert_eq!(
        window["error"]["body"]["code"], "rate_limit_exceeded",
        "{out}"
    );
    assert!(window["error"]["retry_after"].is_string(), "{out}");
    assert!(window["error"]["should_retry"].is_null(), "{out}");
    let quota = &out[1];
    assert_eq!(quota["error"]["type"], "RateLimitError", "{out}");
    assert_eq!(
        quota["error"]["body"]["code"], "insufficient_quota",
        "{out}"
    );
    assert_eq!(
        quota["error"]["body"]["type"], "insufficient_quota",
        "{out}"
    );
    assert_eq!(quota["error"]["should_retry"], "false", "{out}");
    assert!(quota["error"]["retry_after"].is_null(), "{out}");
    let claude = &out[2];
    assert_eq!(claude["usage"]["input_tokens"], 11, "{out}");
    assert_eq!(claude["error"]["type"], "RateLimitError", "{out}");
    assert_eq!(claude["error"]["status"], 429);
    assert_eq!(
        claude["error"]["body"]["error"]["type"], "rate_limit_error",
        "{out}"
    );
    assert!(claude["error"]["retry_after"].is_string(), "{out}");
    // The refused calls never reached the providers.
    assert_eq!(openai.received().len(), 2);
    assert_eq!(anthropic.received().len(), 1);
    for (id, client) in [
        ("sdk-budget-window-2", "run-window"),
        ("sdk-budget-quota-2", "run-quota"),
        ("sdk-budget-claude-2", "run-claude"),
    ] {
        let line = log_for(id).await;
        assert_eq!(line["reason"], "budget_exceeded", "{line}");
        assert_eq!(line["client"], client, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_reaches_its_api_through_a_relay_with_its_login_in_the_base_url() {
    use crate::budget::MESSAGE_JSON;
    let json_origin = LlmOrigin::start(Script::json(200, MESSAGE_JSON)).await;
    let sse_origin = LlmOrigin::start(Script::sse(&fixture("anthropic.sse", "read_file"), 7)).await;
    let yaml = default_yaml(
        "auto",
        "",
        &format!(
            "relays:\n  - {{ name: claude, target: \"https://anthropic.test:{0}\" }}\n  - {{ name: claude-stream, target: \"https://anthropic.test:{1}\" }}\n\
             credentials:\n  - {{ host: \"anthropic.test:{0}\", header: x-api-key, source: {{ type: static, value: sk-ant-REAL-relay }} }}\n  - {{ host: \"anthropic.test:{1}\", header: x-api-key, source: {{ type: static, value: sk-ant-REAL-relay }} }}\n\
             llm:\n  - {{ host: \"anthropic.test:{0}\", provider: anthropic }}\n  - {{ host: \"anthropic.test:{1}\", provider: anthropic }}\n",
            json_origin.port(),
            sse_origin.port()
        ),
    )
    .replace(
        "proxy:\n  listen: 127.0.0.1:0\n",
        "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - { name: run-42, token: { type: static, value: relay-tok } }\n",
    );
    let w = TestWarden::start(&yaml).await;
    // The JSON call goes through one relay, the stream through the other: two base URLs.
    let mut cmd = script("relay_sdk.py");
    cmd.args([
        format!("http://run-42:relay-tok@{}/relay/claude", w.addr),
        "json".into(),
    ]);
    let out = run(cmd, "relay_sdk.py").await;
    assert_eq!(out["json"]["text"], "ok", "{out}");
    assert_eq!(out["json"]["usage"], 11, "{out}");
    let mut cmd = script("relay_sdk.py");
    cmd.args([
        format!("http://run-42:relay-tok@{}/relay/claude-stream", w.addr),
        "stream".into(),
    ]);
    let streamed = run(cmd, "relay_sdk.py").await;
    assert!(
        streamed["stream"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Let me look.")),
        "{streamed}"
    );
    let got = &json_origin.received()[0];
    assert!(got.head.starts_with("POST /v1/messages "), "{}", got.head);
    let lower = got.head.to_ascii_lowercase();
    assert!(
        lower.contains("x-api-key: sk-ant-real-relay"),
        "{}",
        got.head
    );
    assert!(
        !lower.contains("authorization"),
        "the login stays with warden: {}",
        got.head
    );
    for id in ["relay-sdk-json", "relay-sdk-stream"] {
        let line = log_for(id).await;
        assert_eq!(line["kind"], "relay", "{line}");
        assert_eq!(line["client"], "run-42", "{line}");
        assert_eq!(line["provider"], "anthropic", "{line}");
    }
}
