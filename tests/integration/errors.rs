//! Errors warden writes itself: each with a status, `Proxy-Status`, a JSON body with a stable
//! reason code, and a log line; nothing hangs and the origin is never contacted for a bad
//! request.

use crate::common::*;
use serde_json::Value;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

async fn refusal_of(resp: reqwest::Response, status: u16, reason: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let ps = resp.headers()["proxy-status"].to_str().unwrap().to_string();
    assert!(ps.contains(&format!("details=\"{reason}\"")), "{ps}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["reason"], reason);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_an_untrusted_certificate_is_a_502() {
    let origin = Origin::https_untrusted().await;
    let w = TestWarden::with("all", "").await;
    let r = w
        .client()
        .get(format!("https://origin.test:{}/echo", origin.port()))
        .header("x-request-id", "untrusted-1")
        .send()
        .await
        .unwrap();
    let v = refusal_of(r, 502, "upstream_tls_error").await;
    assert_eq!(v["host"], "origin.test");
    assert!(
        origin.seen().is_empty(),
        "no request sent over unverified TLS"
    );
    let line = log_for("untrusted-1").await;
    assert_eq!(line["reason"], "upstream_tls_error");
    assert_eq!(line["status"], 502);
    assert_error_field(&line, "upstream InvalidCert: TLS connect() failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_is_a_502() {
    let port = closed_port().await;
    let w = TestWarden::with("all", "").await;
    let r = w
        .client()
        .get(format!("http://origin.test:{port}/"))
        .header("x-request-id", "refused-1")
        .send()
        .await
        .unwrap();
    refusal_of(r, 502, "upstream_connect_failed").await;
    let line = log_for("refused-1").await;
    assert_eq!(line["reason"], "upstream_connect_failed");
    assert_error_field(&line, "upstream ConnectRefused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_origin_is_a_504_within_the_configured_timeout() {
    let slow = SlowOrigin::start().await;
    let w = TestWarden::with("all", "limits:\n  upstream_first_byte_timeout: 1s\n").await;
    let started = Instant::now();
    let r = w
        .client()
        .get(format!("http://origin.test:{}/", slow.addr.port()))
        .header("x-request-id", "slow-1")
        .send()
        .await
        .unwrap();
    refusal_of(r, 504, "upstream_timeout").await;
    // Bounded by the configured timeout, not by the client's.
    assert!(started.elapsed() < WAIT / 2, "took {:?}", started.elapsed());
    assert_eq!(log_for("slow-1").await["status"], 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_a_502() {
    let w = TestWarden::with("all", "limits:\n  upstream_connect_timeout: 2s\n").await;
    let r = w
        .client()
        .get("http://no-such-host.invalid/")
        .send()
        .await
        .unwrap();
    refusal_of(r, 502, "dns_error").await;
}

/// Sends raw bytes as the first thing on a connection; returns the refusal and checks that the
/// connection is closed.
async fn raw_refusal(w: &TestWarden, raw: &str, status: u16, reason: &str) {
    let mut s = w.tcp().await;
    s.write_all(raw.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, status, reason);
    assert_closed(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_ambiguous_requests_are_400_and_never_reach_the_origin() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let a = format!("origin.test:{}", origin.port());
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("POST http://{a}/ HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
            "ambiguous_framing",
        ),
        (
            format!("GET http://{a}/ HTTP/1.1\r\nHost: {a}\r\nHost: {a}\r\n\r\n"),
            400,
            "ambiguous_framing",
        ),
        (
            format!("GET http://user@{a}/ HTTP/1.1\r\n\r\n"),
            400,
            "bad_authority",
        ),
        (
            format!("GET http://0x7f.1:{}/ HTTP/1.1\r\n\r\n", origin.port()),
            400,
            "non_canonical_host",
        ),
        (
            format!("GET http://2130706433:{}/ HTTP/1.1\r\n\r\n", origin.port()),
            400,
            "non_canonical_host",
        ),
        ("CONNECT 0x7f.1:443 HTTP/1.1\r\n\r\n".into(), 400, "non_canonical_host"),
        ("CONNECT origin.test HTTP/1.1\r\n\r\n".into(), 400, "bad_authority"),
        (
            format!("GET http://{a}/ HTTP/1.1\r\nHost: b.test\r\n\r\n"),
            421,
            "host_mismatch",
        ),
        ("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400, "origin_form_to_proxy"),
        (
            format!("GET https://{a}/ HTTP/1.1\r\n\r\n"),
            400,
            "tls_downgrade",
        ),
        (format!("GET ftp://{a}/ HTTP/1.1\r\n\r\n"), 400, "unsupported_scheme"),
        ("\x16\x03\x01 not http at all\r\n\r\n".into(), 400, "malformed_request"),
        (
            format!(
                "GET http://{a}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "y".repeat(70 * 1024)
            ),
            431,
            "headers_too_large",
        ),
    ];
    for (raw, status, reason) in &cases {
        raw_refusal(&w, raw, *status, reason).await;
    }
    assert!(
        origin.seen().is_empty(),
        "origin contacted: {:?}",
        origin.seen()
    );
    assert_eq!(origin.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_request_later_on_a_kept_alive_connection_is_refused_too() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let a = format!("origin.test:{}", origin.port());
    let mut s = w.tcp().await;
    s.write_all(format!("GET http://{a}/echo HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(
        format!("POST http://{a}/echo HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX-Request-Id: cl-te-2\r\n\r\n0\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 400, "ambiguous_framing");
    assert_closed(&mut s).await;
    assert_eq!(
        origin.seen().len(),
        1,
        "only the first request reached the origin"
    );
    assert_eq!(log_for("cl-te-2").await["reason"], "ambiguous_framing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_request_header_bytes_sets_the_head_limit() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "limits:\n  max_request_header_bytes: 2048\n").await;
    let a = format!("origin.test:{}", origin.port());
    let ok = format!(
        "GET http://{a}/ HTTP/1.1\r\nHost: {a}\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(1000)
    );
    let mut s = w.tcp().await;
    s.write_all(ok.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let big = format!(
        "GET http://{a}/ HTTP/1.1\r\nHost: {a}\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(3000)
    );
    raw_refusal(&w, &big, 431, "headers_too_large").await;
    // Also on a later request of a kept-alive connection.
    s.write_all(big.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 431, "headers_too_large");
    assert_eq!(origin.seen().len(), 1);
}
