//! The clients API on the admin listener: registering, listing, replacing and revoking
//! clients at runtime, over real sockets, and real proxy clients using the tokens it gives.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const ADMIN_TOKEN: &str = "admin-token-3c1f9e";
const CANARY: &str = "registered-secret-8d2a71";

/// warden with the clients API on (`admin.token`), `extra` appended.
async fn api_warden(extra: &str) -> TestWarden {
    TestWarden::start_file(&default_yaml(
        "all",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token: {{ type: static, value: {ADMIN_TOKEN} }}\n{extra}"
        ),
    ))
    .await
}

fn admin_url(w: &TestWarden, path: &str) -> String {
    let addr = w.running.as_ref().unwrap().admin_addr().unwrap();
    format!("http://{addr}{path}")
}

fn admin() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// `method path` with the admin token and `body`; the status and the JSON answer.
async fn call(w: &TestWarden, method: &str, path: &str, body: Option<String>) -> (u16, Value) {
    let mut req = admin()
        .request(method.parse().unwrap(), admin_url(w, path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn put(w: &TestWarden, name: &str, body: Value) -> (u16, Value) {
    call(
        w,
        "PUT",
        &format!("/v1/clients/{name}"),
        Some(body.to_string()),
    )
    .await
}

/// A reqwest client using warden with `name:token`.
fn as_client(w: &TestWarden, name: &str, token: &str) -> reqwest::Client {
    with_proxy(
        w,
        reqwest::Proxy::all(w.proxy_url())
            .unwrap()
            .basic_auth(name, token),
    )
}

/// A reqwest client using `proxy` and trusting warden's CA only.
fn with_proxy(w: &TestWarden, proxy: reqwest::Proxy) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(proxy)
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(w.ca_pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// A client's own network section: only `host` (plus the test names' resolution).
fn only(host: &str) -> Value {
    json!({
        "policy": "strict",
        "allow": [host],
        "allow_cidrs": ["127.0.0.0/8"],
        "resolve": { "a.test": "127.0.0.1", "b.test": "127.0.0.1" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_token_the_api_is_404_and_with_a_wrong_one_401() {
    let w = TestWarden::start(&default_yaml("all", "", "admin:\n  listen: 127.0.0.1:0\n")).await;
    let r = admin()
        .get(admin_url(&w, "/v1/clients"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        admin()
            .get(admin_url(&w, "/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let w = api_warden("").await;
    for auth in [None, Some("Bearer wrong-token"), Some("Basic YTpi")] {
        let mut req = admin().get(admin_url(&w, "/v1/clients"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    let m = w.scrape().await;
    assert_eq!(
        metric_value(&m, "warden_admin_requests_total{result=\"unauthorized\"}"),
        Some(3.0)
    );
    let logs = all_log_lines().join("\n");
    assert!(!logs.contains("wrong-token"), "the token is never logged");
    // /metrics and the health checks need no token.
    assert_eq!(
        admin()
            .get(admin_url(&w, "/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_client_gets_a_token_once_and_its_own_policy() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = api_warden("").await;
    let (status, body) = put(
        &w,
        "run-1",
        json!({
            "network": only(&format!("a.test:{port}")),
            "credentials": [{
                "host": format!("a.test:{port}"),
                "source": { "type": "static", "value": CANARY }
            }]
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64, "256 bits, hex");
    // The listing never gives the token or a secret value back.
    let (status, list) = call(&w, "GET", "/v1/clients", None).await;
    assert_eq!(status, 200);
    let shown = list.to_string();
    assert!(
        !shown.contains(&token) && !shown.contains(CANARY),
        "{shown}"
    );
    assert_eq!(list["clients"][0]["name"], "run-1");
    assert_eq!(
        list["clients"][0]["credentials"][0]["source"]["type"],
        "static"
    );
    let (status, one) = call(&w, "GET", "/v1/clients/run-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(one["network"]["policy"], "strict");

    // The token works through the proxy, with the client's policy and credential.
    let client = as_client(&w, "run-1", &token);
    let r = client
        .get(format!("https://a.test:{port}/echo"))
        .header("x-request-id", "api-run-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        origin.seen()[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );
    let line = log_for("api-run-1").await;
    assert_eq!(line["client"], "run-1");
    assert!(!line.to_string().contains(CANARY));
    // Bearer works too; b.test is outside its allow list.
    let bearer = with_proxy(
        &w,
        reqwest::Proxy::all(w.proxy_url())
            .unwrap()
            .custom_http_auth(format!("Bearer {token}").parse().unwrap()),
    );
    let denied = bearer
        .get(format!("https://b.test:{port}/echo"))
        .send()
        .await;
    assert!(denied.is_err(), "b.test is refused at the CONNECT");
    // With the API on, every request must authenticate.
    let anonymous = w
        .client()
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await;
    assert!(anonymous.is_err());
    let m = w.scrape().await;
    assert_eq!(metric_value(&m, "warden_clients_registered"), Some(1.0));
    assert!(!m.contains(&token) && !m.contains(CANARY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_token_a_replacement_and_file_names() {
    let origin = Origin::https().await;
    let port = origin.port();
    let file_client = "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - { name: from-file, token: { type: static, value: file-token-0123456789 } }\n";
    let yaml = default_yaml(
        "all",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token: {{ type: static, value: {ADMIN_TOKEN} }}\n"
        ),
    )
    .replace("proxy:\n  listen: 127.0.0.1:0\n", file_client);
    let w = TestWarden::start(&yaml).await;
    let token = "chosen-token-0123456789abcdef";
    let (status, body) = put(
        &w,
        "run-2",
        json!({ "token": token, "network": only(&format!("a.test:{port}")) }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("token").is_none(), "a chosen token is not echoed");
    // One tunnel, kept open across the replacement.
    let mut tunnel = {
        let auth = openssl::base64::encode_block(format!("run-2:{token}").as_bytes());
        let tcp = w
            .connect_with(
                &format!("a.test:{port}"),
                &format!("Proxy-Authorization: Basic {auth}\r\n"),
            )
            .await;
        tls_connect(tcp, "a.test", &w.ca_pem).await
    };
    let get = format!("GET /echo HTTP/1.1\r\nHost: a.test:{port}\r\n\r\n");
    tunnel.write_all(get.as_bytes()).await.unwrap();
    assert!(read_response(&mut tunnel)
        .await
        .0
        .starts_with("HTTP/1.1 200"));
    // Replaced with the same token and a header rule: the open tunnel keeps serving, under
    // the new policy.
    let (status, _) = put(
        &w,
        "run-2",
        json!({
            "token": token,
            "network": only(&format!("a.test:{port}")),
            "headers": [{ "host": format!("a.test:{port}"), "set": { "x-policy": "v2" } }]
        }),
    )
    .await;
    assert_eq!(status, 200, "a replacement");
    tunnel.write_all(get.as_bytes()).await.unwrap();
    assert!(read_response(&mut tunnel)
        .await
        .0
        .starts_with("HTTP/1.1 200"));
    assert_eq!(origin.seen().last().unwrap().header("x-policy"), Some("v2"));
    // A file client's name cannot be registered or deleted.
    let (status, body) = put(&w, "from-file", json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = call(&w, "DELETE", "/v1/clients/from-file", None).await;
    assert_eq!(status, 409);
    // Another client's token is refused.
    let (status, body) = put(&w, "run-3", json!({ "token": token })).await;
    assert_eq!((status, body["pointer"].as_str()), (400, Some("/token")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_get_a_clear_4xx_and_change_nothing() {
    let w = api_warden("").await;
    let (status, _) = put(&w, "keep", json!({})).await;
    assert_eq!(status, 201);
    let before = call(&w, "GET", "/v1/clients", None).await.1;
    let long = "x".repeat(65);
    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        ("ok-name", "{not json".into(), 400, Some(""), "not JSON"),
        ("ok-name", "[1]".into(), 400, Some(""), "object"),
        (
            "ok-name",
            json!({"nosuch": 1}).to_string(),
            400,
            Some("/nosuch"),
            "unknown field `nosuch`",
        ),
        (
            "ok-name",
            json!({"credentials": [{"host": "a.test", "source": {"type": "process", "command": ["id"]}}]})
                .to_string(),
            400,
            Some("/credentials/0/source"),
            "config file only",
        ),
        (
            "ok-name",
            json!({"network": {"policy": "sometimes"}}).to_string(),
            400,
            Some("/network/policy"),
            "unknown variant",
        ),
        (
            "ok-name",
            json!({"network": {"rules": ["allow GET a.test"]}}).to_string(),
            400,
            Some("/network/rules/0"),
            "",
        ),
        (
            "ok-name",
            json!({"llm": [{"host": "a.test", "provider": "openai", "deny_tools": ["["]}]})
                .to_string(),
            400,
            Some("/llm/0/deny_tools/0"),
            "",
        ),
        (
            "ok-name",
            json!({"token": "short"}).to_string(),
            400,
            Some("/token"),
            "16 to 4096",
        ),
        (
            "ok-name",
            json!({"expires_in": "2h", "expires_at": "2030-01-01T00:00:00Z"}).to_string(),
            400,
            Some("/expires_at"),
            "not both",
        ),
        (
            "ok-name",
            json!({"expires_in": "soon"}).to_string(),
            400,
            Some("/expires_in"),
            "duration",
        ),
        (
            "ok-name",
            json!({"expires_at": "2001-01-01T00:00:00Z"}).to_string(),
            400,
            Some("/expires_at"),
            "future",
        ),
        (
            "ok-name",
            json!({"name": "other"}).to_string(),
            400,
            Some("/name"),
            "URL",
        ),
        ("Bad-Name", "{}".into(), 400, None, "a-z"),
        (&long, "{}".into(), 400, None, "a-z"),
    ];
    for (name, body, status, pointer, message) in cases {
        let (got, answer) = call(
            &w,
            "PUT",
            &format!("/v1/clients/{name}"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["pointer"].as_str(), pointer, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{body}: {answer}"
        );
    }
    // The message is the one `warden check` gives for the same entry in the file.
    let llm = json!({"llm": [{"host": "a.test", "provider": "openai", "deny_tools": ["["]}]});
    let (_, answer) = put(&w, "ok-name", llm).await;
    let yaml = "version: 1\nproxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: c\n        token: { type: static, value: t }\n        llm: [{ host: a.test, provider: openai, deny_tools: ['['] }]\n";
    let file_errors = warden::Config::parse(yaml, w.dir.path())
        .unwrap()
        .compile(warden::CompileOptions { create_ca: false })
        .unwrap_err();
    let file_message = file_errors
        .iter()
        .find(|e| e.key.as_deref() == Some("proxy.auth.clients[0].llm[0].deny_tools[0]"))
        .map(|e| e.message.clone())
        .unwrap();
    assert_eq!(answer["error"], file_message);
    // Too large a body, methods and paths.
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(1024 * 1024 + 1));
    let (status, _) = call(&w, "PUT", "/v1/clients/big", Some(big)).await;
    assert_eq!(status, 413);
    assert_eq!(
        call(&w, "POST", "/v1/clients/keep", Some("{}".into()))
            .await
            .0,
        405
    );
    assert_eq!(
        call(&w, "PUT", "/v1/clients", Some("{}".into())).await.0,
        405
    );
    assert_eq!(call(&w, "GET", "/v1/clients/nosuch", None).await.0, 404);
    assert_eq!(call(&w, "DELETE", "/v1/clients/nosuch", None).await.0, 404);
    assert_eq!(
        call(&w, "GET", "/v1/clients", None).await.1,
        before,
        "nothing changed"
    );
    let m = w.scrape().await;
    assert!(metric_value(&m, "warden_admin_requests_total{result=\"refused\"}") >= Some(18.0));
}

/// Polls `f` until it is true, within `WAIT`.
pub(crate) async fn eventually(mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_revokes_at_once_and_closes_live_tunnels() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = api_warden("").await;
    let (_, body) = put(&w, "run-4", json!({})).await;
    let token = body["token"].as_str().unwrap().to_string();
    let auth = openssl::base64::encode_block(format!("run-4:{token}").as_bytes());
    let header = format!("Proxy-Authorization: Basic {auth}\r\n");
    // An intercepted tunnel in use.
    let tcp = w.connect_with(&format!("a.test:{port}"), &header).await;
    let mut tunnel = tls_connect(tcp, "a.test", &w.ca_pem).await;
    let get = format!("GET /echo HTTP/1.1\r\nHost: a.test:{port}\r\n\r\n");
    tunnel.write_all(get.as_bytes()).await.unwrap();
    assert!(read_response(&mut tunnel)
        .await
        .0
        .starts_with("HTTP/1.1 200"));
    let deleted_at = Instant::now();
    let (status, _) = call(&w, "DELETE", "/v1/clients/run-4", None).await;
    assert_eq!(status, 204);
    // The tunnel closes within a second.
    assert_closed(&mut tunnel).await;
    assert!(
        deleted_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        deleted_at.elapsed()
    );
    let line = wait_log(|v| v["reason"] == "client_revoked" && v["client"] == "run-4").await;
    assert_eq!(line["kind"], "connect");
    // New CONNECTs are refused.
    let mut s = w.tcp().await;
    s.write_all(
        format!("CONNECT a.test:{port} HTTP/1.1\r\nHost: a.test:{port}\r\n{header}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 407, "auth_invalid");
    assert_eq!(
        call(&w, "GET", "/v1/clients", None).await.1["clients"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expires_by_itself() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = api_warden("").await;
    let (status, body) = put(&w, "short-lived", json!({ "expires_in": "1s" })).await;
    assert_eq!(status, 201);
    assert!(body["expires_at"].is_string());
    let token = body["token"].as_str().unwrap().to_string();
    let client = as_client(&w, "short-lived", &token);
    let r = client
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(async || call(&w, "GET", "/v1/clients/short-lived", None).await.0 == 404).await;
    let after = as_client(&w, "short-lived", &token)
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await;
    assert!(
        after.is_err(),
        "an expired client is refused at the CONNECT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_registered_clients_and_they_inherit_the_new_top_level() {
    let origin = Origin::https().await;
    let port = origin.port();
    let yaml = |extra: &str| {
        default_yaml(
            "all",
            "",
            &format!(
                "admin:\n  listen: 127.0.0.1:0\n  token: {{ type: static, value: {ADMIN_TOKEN} }}\n{extra}"
            ),
        )
    };
    let w = TestWarden::start_file(&yaml("")).await;
    let (_, body) = put(&w, "run-5", json!({})).await;
    let token = body["token"].as_str().unwrap().to_string();
    let headers = format!("headers:\n  - host: a.test:{port}\n    set: {{ x-top: reloaded }}\n");
    w.reload(&yaml(&headers)).unwrap();
    let r = as_client(&w, "run-5", &token)
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin.seen()[0].header("x-top"), Some("reloaded"));
    assert_eq!(
        call(&w, "GET", "/v1/clients", None).await.1["clients"][0]["name"],
        "run-5"
    );
}

/// `warden client ARGS -c FILE` as a child process: (exit code, stdout, stderr).
async fn cli(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("client")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_gets_and_removes_over_an_admin_listener_on_tls() {
    let cert = origin_ca().issue(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("admin.crt"), dir.path().join("admin.key"));
    // The chain file carries the CA, which the CLI trusts as the listener's root.
    std::fs::write(&cert_path, format!("{}{}", cert.cert_pem, origin_ca().pem)).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let admin = |listen: &str| {
        format!(
            "admin:\n  listen: {listen}\n  token: {{ type: static, value: {ADMIN_TOKEN} }}\n  tls: {{ cert: {}, key: {} }}\n",
            cert_path.display(),
            key_path.display()
        )
    };
    let w = TestWarden::start(&default_yaml("all", "", &admin("127.0.0.1:0"))).await;
    let bound = w.running.as_ref().unwrap().admin_addr().unwrap();
    // The CLI reads the same config, with the address warden bound.
    let config = w.dir.path().join("cli.yaml");
    std::fs::write(
        &config,
        fill(&default_yaml("all", "", &admin(&bound.to_string())), &w.dir),
    )
    .unwrap();
    // Plain HTTP to a TLS listener gets nowhere.
    assert!(admin_plain_fails(bound).await);

    let (code, out, err) = cli(
        &config,
        &[
            "add",
            "cli-run",
            "--json",
            "{\"network\":{\"policy\":\"strict\"}}",
            "--expires-in",
            "1h",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    let token = added["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert!(added["expires_at"].is_string());
    let (code, out, _) = cli(&config, &["list"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("cli-run") && !out.contains(token), "{out}");
    let (code, out, _) = cli(&config, &["get", "cli-run"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["network"]["policy"],
        "strict"
    );
    let (code, _, _) = cli(&config, &["remove", "cli-run"]).await;
    assert_eq!(code, Some(0));
    // A refusal is printed and fails the command.
    let (code, out, err) = cli(&config, &["get", "cli-run"]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("no registered client"), "{out}");
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = cli(&config, &["add", "Bad Name"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("a-z"), "{err}");
    let (code, out, err) = cli(&config, &["add", "ok", "--json", "{\"nosuch\":1}"]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("/nosuch") && err.contains("400"), "{out}{err}");
}

/// Whether a plain-HTTP request to `addr` fails (the listener speaks TLS).
async fn admin_plain_fails(addr: std::net::SocketAddr) -> bool {
    admin()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
}

/// warden with `state.backend: embedded` in `dir`, `extra` appended.
fn embedded_yaml(dir: &std::path::Path, key: bool, admin_listen: &str) -> String {
    let key = if key {
        "  encryption_key: { type: static, value: state-key-for-tests }\n"
    } else {
        ""
    };
    default_yaml(
        "all",
        "",
        &format!(
            "admin:\n  listen: {admin_listen}\n  token: {{ type: static, value: {ADMIN_TOKEN} }}\nstate:\n  backend: embedded\n  path: {}\n{key}",
            dir.join("state.redb").display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_backend_keeps_clients_across_a_restart_with_secrets_sealed() {
    let origin = Origin::https().await;
    let port = origin.port();
    let state = tempfile::tempdir().unwrap();
    let w = TestWarden::start(&embedded_yaml(state.path(), true, "127.0.0.1:0")).await;
    let (status, body) = put(
        &w,
        "kept",
        json!({
            "credentials": [{
                "host": format!("a.test:{port}"),
                "source": { "type": "static", "value": CANARY }
            }]
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    stop(w).await;
    // Nothing secret is in the file: neither the credential nor the proxy token.
    let file = std::fs::read(state.path().join("state.redb")).unwrap();
    let has = |needle: &[u8]| file.windows(needle.len()).any(|w| w == needle);
    assert!(!has(CANARY.as_bytes()), "the secret is sealed at rest");
    assert!(!has(token.as_bytes()), "only the token's hash is kept");

    let w = TestWarden::start(&embedded_yaml(state.path(), true, "127.0.0.1:0")).await;
    let r = as_client(&w, "kept", &token)
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the client survived the restart");
    assert_eq!(
        origin.seen()[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );
    // Deleted, it stays deleted.
    assert_eq!(call(&w, "DELETE", "/v1/clients/kept", None).await.0, 204);
    stop(w).await;
    let w = TestWarden::start(&embedded_yaml(state.path(), true, "127.0.0.1:0")).await;
    assert_eq!(call(&w, "GET", "/v1/clients/kept", None).await.0, 404);

    // Without a key, a backend that writes refuses static values; references are fine.
    let bare = tempfile::tempdir().unwrap();
    let w = TestWarden::start(&embedded_yaml(bare.path(), false, "127.0.0.1:0")).await;
    let secret =
        json!({"credentials": [{"host": "a.test", "source": {"type": "static", "value": CANARY}}]});
    let (status, answer) = put(&w, "plain", secret).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("state.encryption_key"));
    let reference = json!({"credentials": [{"host": "a.test", "source": {"type": "env", "var": "SOME_TOKEN"}}]});
    assert_eq!(put(&w, "plain", reference).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_registration_leaves_the_embedded_store_consistent() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("origin-ca.pem"), &origin_ca().pem).unwrap();
    let config = dir.path().join("w.yaml");
    let dirs = tempfile::TempDir::new_in(dir.path()).unwrap();
    std::fs::write(
        &config,
        fill(&embedded_yaml(state.path(), true, "127.0.0.1:0"), &dirs)
            .replace(dirs.path().to_str().unwrap(), dir.path().to_str().unwrap()),
    )
    .unwrap();
    let admin_of = |line: &str| -> String {
        let at = line
            .find("admin=")
            .expect("admin address in the start line")
            + 6;
        line[at..].split_whitespace().next().unwrap().to_string()
    };
    let mut first = crate::cli::Running::start(&config);
    let admin = admin_of(&first.wait_for("warden listening"));
    let client = admin_client();
    // Four writers register clients one after another, concurrently; the process is killed
    // once ten are acknowledged, with the others' registrations in flight.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, admin, acked) = (client.clone(), admin.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for j in 0..100 {
                let i = w * 100 + j;
                let body =
                    json!({ "network": { "policy": "strict", "allow": [format!("h{i}.test")] } });
                let sent = client
                    .put(format!("http://{admin}/v1/clients/c{i}"))
                    .bearer_auth(ADMIN_TOKEN)
                    .body(body.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 201 => acked.lock().unwrap().push(format!("c{i}")),
                    _ => return,
                }
            }
        }));
    }
    eventually(async || acked.lock().unwrap().len() >= 10).await;
    first.child.kill().unwrap();
    for w in writers {
        let _ = w.await;
    }
    let accepted = acked.lock().unwrap().clone();
    assert!(
        accepted.len() < 400,
        "the kill came before every registration was made"
    );
    let _ = first.child.wait();
    let mut second = crate::cli::Running::start(&config);
    let admin = admin_of(&second.wait_for("warden listening"));
    let list: Value = client
        .get(format!("http://{admin}/v1/clients"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    // Every registration that was acknowledged is there, whole; the rest are whole or absent.
    for name in &accepted {
        assert!(
            names.contains(name),
            "{name} was acknowledged but is gone: {names:?}"
        );
    }
    for c in list["clients"].as_array().unwrap() {
        let n: usize = c["name"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(c["network"]["allow"][0], format!("h{n}.test"), "{c}");
    }
}

/// Stops `w` and waits until it has let go of everything (its state store among them).
async fn stop(mut w: TestWarden) {
    let running = w.running.take().unwrap();
    assert!(running.shutdown(Duration::from_secs(10)).await);
}

fn admin_client() -> reqwest::Client {
    admin()
}

fn redis_yaml(url: &str, prefix: &str) -> String {
    default_yaml(
        "all",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token: {{ type: static, value: {ADMIN_TOKEN} }}\nstate:\n  backend: redis\n  url: {url}\n  key_prefix: \"{prefix}\"\n  encryption_key: {{ type: static, value: fleet-key }}\n"
        ),
    )
}

/// Polls `f` until true; the time it took.
async fn within(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < WAIT, "not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert!(took <= limit, "took {took:?}, more than {limit:?}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_registrations_and_revocations() {
    let origin = Origin::https().await;
    let port = origin.port();
    let mut redis = RedisServer::start().await;
    let a = TestWarden::start(&redis_yaml(&redis.url(), "fleet1:")).await;
    let b = TestWarden::start(&redis_yaml(&redis.url(), "fleet1:")).await;
    let url = format!("https://a.test:{port}/echo");

    // Registered on A, usable through B within a second.
    let (status, body) = put(
        &a,
        "shared",
        json!({ "credentials": [{ "host": format!("a.test:{port}"), "source": { "type": "static", "value": CANARY } }] }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    within(Duration::from_secs(1), async || {
        call(&b, "GET", "/v1/clients/shared", None).await.0 == 200
    })
    .await;
    let r = as_client(&b, "shared", &token)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        origin.seen()[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str()),
        "the sealed secret opened on the other instance"
    );

    // Revoked on B, refused by A within a second; A's open tunnel closes.
    let auth = openssl::base64::encode_block(format!("shared:{token}").as_bytes());
    let tcp = a
        .connect_with(
            &format!("a.test:{port}"),
            &format!("Proxy-Authorization: Basic {auth}\r\n"),
        )
        .await;
    let mut tunnel = tls_connect(tcp, "a.test", &a.ca_pem).await;
    assert_eq!(call(&b, "DELETE", "/v1/clients/shared", None).await.0, 204);
    within(Duration::from_secs(1), async || {
        call(&a, "GET", "/v1/clients/shared", None).await.0 == 404
    })
    .await;
    assert_closed(&mut tunnel).await;
    assert!(as_client(&a, "shared", &token)
        .get(&url)
        .send()
        .await
        .is_err());

    // Redis down: known clients keep working from each instance's copy; registration is 503.
    let (_, body) = put(&a, "known", json!({})).await;
    let known = body["token"].as_str().unwrap().to_string();
    within(Duration::from_secs(1), async || {
        call(&b, "GET", "/v1/clients/known", None).await.0 == 200
    })
    .await;
    redis.stop().await;
    for w in [&a, &b] {
        let r = as_client(w, "known", &known)
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a known client works while redis is down");
    }
    let (status, answer) = put(&a, "while-down", json!({})).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("state store"),
        "{answer}"
    );
    eventually(async || metric_value(&a.scrape().await, "warden_state_available") == Some(0.0))
        .await;

    // Redis back: both follow it again, and what is registered on one reaches the other.
    redis.run().await;
    eventually(async || metric_value(&b.scrape().await, "warden_state_available") == Some(1.0))
        .await;
    eventually(async || put(&a, "after", json!({})).await.0 == 201).await;
    within(Duration::from_secs(1), async || {
        call(&b, "GET", "/v1/clients/after", None).await.0 == 200
    })
    .await;
    assert_eq!(
        call(&b, "GET", "/v1/clients/known", None).await.0,
        200,
        "kept across the outage"
    );
    assert_eq!(call(&b, "GET", "/v1/clients/while-down", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_clients_budget_is_enforced_and_shown() {
    let origin = Origin::http().await;
    let port = origin.port();
    let w = api_warden("").await;
    let (status, body) = put(
        &w,
        "metered",
        json!({ "budget": { "requests_per_second": 1 } }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(
        call(&w, "GET", "/v1/clients/metered", None).await.1["budget"]["requests_per_second"],
        1
    );
    let client = as_client(&w, "metered", &token);
    let url = format!("http://origin.test:{port}/echo");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let over = client.get(&url).send().await.unwrap();
    assert_eq!(over.status(), 429, "one request a second");
    assert!(over.headers().contains_key("retry-after"));
    assert_eq!(origin.seen().len(), 1);
    // A bad budget key is refused with its pointer.
    let (status, answer) = put(&w, "metered", json!({ "budget": { "tokens_per_week": 5 } })).await;
    assert_eq!(
        (status, answer["pointer"].as_str()),
        (400, Some("/budget/tokens_per_week")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_websocket_of_a_revoked_client_ends_at_its_next_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};
    let origin = WsOrigin::start(false).await;
    let w = api_warden("").await;
    let (_, body) = put(&w, "ws-run", json!({})).await;
    let token = body["token"].as_str().unwrap().to_string();
    let authority = format!("ws.test:{}", origin.addr.port());
    let auth = openssl::base64::encode_block(format!("ws-run:{token}").as_bytes());
    let mut s = w.tcp().await;
    let req = format!(
        "GET http://{authority}/ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nProxy-Authorization: Basic {auth}\r\nX-Request-Id: ws-revoked\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(s, Role::Client, None).await;
    ws.send(Message::text("before")).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "before");
    assert_eq!(call(&w, "DELETE", "/v1/clients/ws-run", None).await.0, 204);
    let _ = ws.send(Message::text("after")).await;
    let next = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the socket ends");
    assert!(
        !matches!(next, Some(Ok(Message::Text(_)))),
        "nothing is relayed after the revocation: {next:?}"
    );
    let line = log_for("ws-revoked").await;
    assert_eq!(line["reason"], "client_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleets_with_different_key_prefixes_share_nothing_on_one_redis() {
    let redis = RedisServer::start().await;
    let one = TestWarden::start(&redis_yaml(&redis.url(), "one:")).await;
    let also_one = TestWarden::start(&redis_yaml(&redis.url(), "one:")).await;
    let two = TestWarden::start(&redis_yaml(&redis.url(), "two:")).await;
    assert_eq!(put(&one, "mine", json!({})).await.0, 201);
    // The same prefix sees it; once it has, the other prefix has had as long and has not.
    within(Duration::from_secs(1), async || {
        call(&also_one, "GET", "/v1/clients/mine", None).await.0 == 200
    })
    .await;
    assert_eq!(call(&two, "GET", "/v1/clients/mine", None).await.0, 404);
    // A name taken under one prefix is free under the other.
    assert_eq!(
        put(&two, "mine", json!({})).await.0,
        201,
        "a new client there"
    );
}
