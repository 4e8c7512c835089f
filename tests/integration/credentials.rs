//! Credential injection: the agent never holds the secret; warden adds it only for the
//! connection identity it belongs to, over verified TLS, after policy allowed the request.

use crate::common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const CANARY: &str = "CANARY-cred-7f3a9";

fn header_of(seen: &Seen, name: &str) -> Option<String> {
    seen.header(name).map(str::to_string)
}

async fn warden_with_credentials(intercept: &str, network: &str, credentials: &str) -> TestWarden {
    TestWarden::start(&network_yaml(
        intercept,
        &format!("  allow_cidrs: [127.0.0.0/8]\n{network}"),
        &format!("credentials:\n{credentials}"),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_is_injected_only_for_its_host_over_tls_and_overwrites_the_client_value() {
    let origin = Origin::https().await;
    let plain = Origin::http().await;
    let port = origin.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!(
            "  - host: origin.test:{port}\n    grant: github\n    source: {{ type: static, value: {CANARY} }}\n  - host: origin.test:{}\n    header: x-api-key\n    source: {{ type: static, value: {CANARY} }}\n",
            plain.port()
        ),
    )
    .await;
    // auto intercepts the credential's host: a client trusting only warden's CA gets through.
    let client = w.client();
    let r = client
        .get(format!("https://origin.test:{port}/echo"))
        .header("authorization", "Bearer agent-supplied")
        .header("x-request-id", "cred-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = origin.seen();
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
    let line = log_for("cred-1").await;
    assert_eq!(line["injected"], "authorization");
    assert_eq!(line["grant"], "github");
    // A sibling host (same origin, other name) gets nothing.
    let r = client
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await;
    // a.test has no credential, so auto tunnels it blind and warden's CA does not apply.
    assert!(r.is_err());
    // Plain HTTP to the credential's host: no injection without allow_plaintext.
    let r = client
        .get(format!("http://origin.test:{}/echo", plain.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(header_of(&plain.seen()[0], "x-api-key").is_none());
    // No log line holds the secret (the metrics scrape is checked in the grants test).
    for l in all_log_lines() {
        assert!(!l.contains(CANARY), "secret in log: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_trick_gets_no_credential() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = warden_with_credentials(
        "all",
        "",
        &format!("  - host: origin.test:{port}\n    source: {{ type: static, value: {CANARY} }}\n"),
    )
    .await;
    // Tunnel to a.test, claim to be origin.test in Host: refused, nothing injected or sent.
    let mut s = w.tls_tunnel(&format!("a.test:{port}"), "a.test").await;
    s.write_all(format!("GET /echo HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 421, "host_mismatch");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_credential_fails_closed_and_a_rotated_file_is_picked_up() {
    let origin = Origin::https().await;
    let port = origin.port();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let w = warden_with_credentials(
        "all",
        "",
        &format!(
            "  - host: origin.test:{port}\n    source: {{ type: file, path: {} }}\n  - host: a.test:{port}\n    grant: broken\n    source: {{ type: env, var: WARDEN_TEST_UNSET_CREDENTIAL }}\n",
            token.display()
        ),
    )
    .await;
    let client = w.client();
    let r = client
        .get(format!("https://a.test:{port}/echo"))
        .header("x-request-id", "cred-unavailable")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "credential_unavailable");
    assert!(origin.seen().is_empty(), "nothing sent upstream");
    assert_eq!(origin.connections(), 0, "not even a connection");
    let line = log_for("cred-unavailable").await;
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("grant broken (env WARDEN_TEST_UNSET_CREDENTIAL)"),
        "{line}"
    );
    let url = format!("https://origin.test:{port}/echo");
    client.get(&url).send().await.unwrap();
    std::fs::write(&token, "rotated-token-2\n").unwrap();
    client.get(&url).send().await.unwrap();
    let seen = origin.seen();
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some("Bearer first-token")
    );
    assert_eq!(
        header_of(&seen[1], "authorization").as_deref(),
        Some("Bearer rotated-token-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_allow_credential_hosts_under_strict_policy_and_injections_are_counted() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(
        &network_yaml(
            "auto",
            "  allow_cidrs: [127.0.0.0/8]\n  policy: strict\n  grants: [github]\n",
            &format!(
                "credentials:\n  - host: origin.test:{port}\n    grant: github\n    source: {{ type: static, value: {CANARY} }}\nadmin:\n  listen: 127.0.0.1:0\n"
            ),
        ),
    )
    .await;
    let client = w.client();
    let ok = client
        .get(format!("https://origin.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let denied = client
        .get(format!("http://a.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let metrics = w.scrape().await;
    assert!(
        metrics.contains("warden_credential_injections_total{grant=\"github\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(CANARY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_never_reads_its_credential() {
    let origin = Origin::http().await;
    let port = origin.port();
    // The credential cannot be read: if policy ran after the read, this would be a 502.
    let w = warden_with_credentials(
        "all",
        &format!("  deny: [\"origin.test:{port}\"]\n"),
        &format!(
            "  - host: origin.test:{port}\n    allow_plaintext: true\n    source: {{ type: env, var: WARDEN_TEST_NEVER_READ }}\n"
        ),
    )
    .await;
    let r = w
        .client()
        .get(format!("http://origin.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "policy_denied_host");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_echoing_the_secret_is_scrubbed_before_the_agent_sees_it() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!("  - host: origin.test:{port}\n    source: {{ type: static, value: {CANARY} }}\n"),
    )
    .await;
    let client = w.client();
    // The JSON echo carries every request header back in the body.
    let body = client
        .get(format!("https://origin.test:{port}/echo"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(CANARY), "secret echoed in body: {body}");
    assert!(body.contains("Bearer [redacted]"), "{body}");
    let v: Value = serde_json::from_str(&body).expect("still valid JSON (same length)");
    assert!(v["headers"].is_array());
    // And in a response header.
    let r = client
        .get(format!("https://origin.test:{port}/echo-header"))
        .send()
        .await
        .unwrap();
    let echoed = r.headers()["x-echo-auth"].to_str().unwrap().to_string();
    assert!(!echoed.contains(CANARY), "{echoed}");
    assert!(echoed.starts_with("Bearer [redacted]"), "{echoed}");
    // The origin did receive it, uncompressed responses requested.
    let seen = origin.seen();
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
    assert_eq!(
        header_of(&seen[0], "accept-encoding").as_deref(),
        Some("identity")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_apply_to_websocket_upgrades() {
    let origin = Origin::https().await; // hyper origin: records the upgrade request's headers
    let port = origin.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!("  - host: ws.test:{port}\n    source: {{ type: static, value: {CANARY} }}\n"),
    )
    .await;
    let authority = format!("ws.test:{port}");
    let mut s = w.tls_tunnel(&authority, "ws.test").await;
    s.write_all(format!("GET /ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let _ = read_response(&mut s).await;
    let seen = origin.seen();
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
}
