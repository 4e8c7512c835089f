//! Proxy authentication and per-client policy over real sockets.

use crate::common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Two clients: `alpha` may reach a.test only, `beta` b.test only (on `port`). `beta`'s
/// token comes from a file in the returned folder, which must outlive the proxy.
async fn two_clients(port: u16) -> (TestWarden, tempfile::TempDir) {
    let clients = format!(
        "  auth:\n    clients:\n      - name: alpha\n        token: {{ type: static, value: tok-alpha }}\n        network: {{ policy: strict, allow: [\"a.test:{port}\"], allow_cidrs: [127.0.0.0/8], resolve: {{ a.test: 127.0.0.1, b.test: 127.0.0.1 }} }}\n      - name: beta\n        token: {{ type: file, path: beta.token }}\n        network: {{ policy: strict, allow: [\"b.test:{port}\"], allow_cidrs: [127.0.0.0/8], resolve: {{ a.test: 127.0.0.1, b.test: 127.0.0.1 }} }}\n"
    );
    let yaml = default_yaml("all", "", "").replace(
        "proxy:\n  listen: 127.0.0.1:0\n",
        &format!("proxy:\n  listen: 127.0.0.1:0\n{clients}"),
    );
    // The file token lives beside the config.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("beta.token");
    std::fs::write(&token, "tok-beta\n").unwrap();
    let yaml = yaml.replace("path: beta.token", &format!("path: {}", token.display()));
    (TestWarden::start(&yaml).await, dir)
}

fn client_as(w: &TestWarden, user: &str, token: &str) -> reqwest::Client {
    w.client_builder()
        .proxy(
            reqwest::Proxy::all(w.proxy_url())
                .unwrap()
                .basic_auth(user, token),
        )
        .build()
        .unwrap()
}

async fn raw_407(w: &TestWarden, raw: &str, reason: &str) {
    let mut s = w.tcp().await;
    s.write_all(raw.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 407, reason);
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"warden\""),
        "{head}"
    );
    assert_closed(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_malformed_credentials_get_407_for_connect_and_plain() {
    let origin = Origin::http().await;
    let (w, _tokens) = two_clients(origin.port()).await;
    let a = format!("a.test:{}", origin.port());
    let basic = |s: &str| openssl::base64::encode_block(s.as_bytes());
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "auth_required"),
        (
            format!("Proxy-Authorization: Basic {}\r\n", basic("alpha:wrong")),
            "auth_invalid",
        ),
        (
            format!("Proxy-Authorization: Basic {}\r\n", basic("beta:tok-alpha")),
            "auth_invalid",
        ),
        ("Proxy-Authorization: Basic !!!\r\n".into(), "auth_invalid"),
        ("Proxy-Authorization: \r\n".into(), "auth_invalid"),
        (
            "Proxy-Authorization: Bearer CANARY-wrong-token\r\n".into(),
            "auth_invalid",
        ),
        (
            "Proxy-Authorization: Bearer tok-alpha\r\nProxy-Authorization: Bearer tok-alpha\r\n"
                .into(),
            "auth_invalid",
        ),
        (
            format!("Proxy-Authorization: Bearer {}\r\n", "x".repeat(8192)),
            "auth_invalid",
        ),
    ];
    for (auth, reason) in &cases {
        raw_407(&w, &format!("CONNECT {a} HTTP/1.1\r\n{auth}\r\n"), reason).await;
        raw_407(
            &w,
            &format!("GET http://{a}/echo HTTP/1.1\r\nHost: {a}\r\n{auth}\r\n"),
            reason,
        )
        .await;
    }
    assert!(origin.seen().is_empty());
    for line in all_log_lines() {
        assert!(
            !line.contains("CANARY-wrong-token"),
            "presented token logged: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_its_own_network_policy_and_is_named_in_the_log() {
    let http = Origin::http().await;
    let https = Origin::https().await;
    let (w, _tokens) = two_clients(http.port()).await;
    let alpha = client_as(&w, "alpha", "tok-alpha");
    let beta = client_as(&w, "beta", "tok-beta");
    let get = |c: &reqwest::Client, host: &str, id: &str| {
        c.get(format!("http://{host}:{}/echo", http.port()))
            .header("x-request-id", id)
            .send()
    };
    assert_eq!(
        get(&alpha, "a.test", "alpha-a").await.unwrap().status(),
        200
    );
    assert_eq!(get(&beta, "b.test", "beta-b").await.unwrap().status(), 200);
    let denied = get(&alpha, "b.test", "alpha-b").await.unwrap();
    assert_eq!(denied.status(), 403);
    let v: Value = denied.json().await.unwrap();
    assert_eq!(v["reason"], "policy_denied_host");
    assert_eq!(get(&beta, "a.test", "beta-a").await.unwrap().status(), 403);
    assert_eq!(log_for("alpha-a").await["client"], "alpha");
    assert_eq!(log_for("beta-b").await["client"], "beta");
    assert_eq!(log_for("alpha-b").await["client"], "alpha");
    // CONNECT: alpha's tunnel to b.test is refused before the 200.
    let mut s = w.tcp().await;
    s.write_all(
        format!(
            "CONNECT b.test:{} HTTP/1.1\r\nProxy-Authorization: Bearer tok-alpha\r\n\r\n",
            https.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 403, "policy_denied_host");
    // The origins saw only the allowed requests, and never a Proxy-Authorization.
    let seen = http.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.header("proxy-authorization").is_none()));
    assert_eq!(https.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_keeps_the_connect_identity_and_inner_proxy_authorization_is_stripped() {
    let origin = Origin::https().await;
    let (w, _tokens) = two_clients(origin.port()).await;
    let authority = format!("a.test:{}", origin.port());
    let tcp = w
        .connect_with(&authority, "Proxy-Authorization: Bearer tok-alpha\r\n")
        .await;
    let mut s = tls_connect(tcp, "a.test", &w.ca_pem).await;
    // An inner Proxy-Authorization naming another client changes nothing and is not forwarded.
    s.write_all(format!("GET /echo HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Bearer tok-beta\r\nX-Request-Id: tunnel-id-1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(origin.seen()[0].header("proxy-authorization").is_none());
    assert_eq!(log_for("tunnel-id-1").await["client"], "alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_authenticates_with_proxy_user() {
    let origin = Origin::https().await;
    let (w, _tokens) = two_clients(origin.port()).await;
    let url = format!("https://b.test:{}/status/200", origin.port());
    let out = w
        .curl(&["--fail", "--proxy-user", "beta:tok-beta", &url])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!("http://b.test:{}/status/200", origin.port());
    let out = w
        .curl(&["-o", "/dev/null", "-w", "%{http_code}", &url])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "407");
}
