//! Plain absolute-form HTTP through the proxy: keep-alive, bodies, methods, statuses, headers,
//! request ids.

use crate::common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_share_a_connection_and_carry_one_request_id_everywhere() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let client = w.client();
    let url = format!("http://origin.test:{}/echo", origin.port());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32, "generated id");
        // Reading the body to its end returns the connection to the client's pool.
        r.bytes().await.unwrap();
        let seen = origin.seen();
        assert_eq!(
            seen.last().unwrap().header("x-request-id"),
            Some(id.as_str())
        );
        assert_eq!(seen.last().unwrap().uri, "/echo", "origin-form upstream");
        lines.push(log_for(&id).await);
    }
    assert_eq!(
        lines[0]["client_addr"], lines[1]["client_addr"],
        "kept alive"
    );
    assert_eq!(lines[0]["kind"], "plain");
    assert_eq!(lines[0]["intercepted"], false);
    assert_eq!(origin.connections(), 1, "upstream connection reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_is_kept_upstream_in_the_response_and_in_the_log() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let r = w
        .client()
        .get(format!("http://origin.test:{}/echo", origin.port()))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-42");
    assert_eq!(
        origin.seen()[0].header("x-request-id"),
        Some("client-id-42")
    );
    let line = log_for("client-id-42").await;
    assert_eq!(line["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_chunked_request_bodies_and_large_responses_arrive_intact() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let client = w.client();
    let url = format!("http://origin.test:{}/echo", origin.port());
    let body = pattern(5 * 1024 * 1024);
    let want = sha256_hex(&body);

    // Content-Length body.
    let r: Value = client
        .put(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["body_len"], body.len());
    assert_eq!(r["body_sha256"], want.as_str());

    // Chunked body (no length known up front).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = client
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["body_sha256"], want.as_str());
    let chunked = origin.seen().last().unwrap().clone();
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));

    // A response over 1 MiB.
    let n = 1_500_000;
    let got = client
        .get(format!("http://origin.test:{}/bytes/{n}", origin.port()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), n);
    assert!(got[..] == pattern(n)[..], "response body intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_forwarded() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let client = w.client();
    let url = format!("http://origin.test:{}/echo", origin.port());
    for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let r = client.request(method, &url).body("x").send().await.unwrap();
        assert_eq!(r.status(), 200, "{m}");
        let body = r.bytes().await.unwrap();
        if m == "HEAD" {
            assert!(body.is_empty());
        }
        assert_eq!(origin.seen().last().unwrap().method, m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_and_response_headers_pass_through() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let client = w.client();
    for code in [201u16, 204, 301, 404, 418, 503] {
        let r = client
            .get(format!(
                "http://origin.test:{}/status/{code}",
                origin.port()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code);
        assert_eq!(r.headers()["x-origin"], "yes");
        assert_eq!(r.headers()["x-status-test"], code.to_string().as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authorization_is_never_forwarded_upstream() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::http(w.proxy_url())
                .unwrap()
                .basic_auth("agent", "proxy-token-canary"),
        )
        .build()
        .unwrap();
    let r = client
        .get(format!("http://origin.test:{}/echo", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = &origin.seen()[0];
    assert!(seen.header("proxy-authorization").is_none());
    assert!(!format!("{seen:?}").contains("proxy-token-canary"));
}
