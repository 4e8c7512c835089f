//! The canonical log line: exactly one per request, every field, and never a secret.

use crate::common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canonical_line_carries_every_field() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    let r = w
        .client()
        .post(format!(
            "http://origin.test:{}/echo?q=hidden&page=2",
            origin.port()
        ))
        .header("x-request-id", "fields-1")
        .body("12345")
        .send()
        .await
        .unwrap();
    let body_len = r.bytes().await.unwrap().len() as u64;
    let line = log_for("fields-1").await;
    let ts = line["ts"].as_str().unwrap();
    assert!(ts.contains('T') && ts.ends_with('Z'), "{ts}");
    assert_eq!(line["kind"], "plain");
    assert!(line["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(line["method"], "POST");
    assert_eq!(line["scheme"], "http");
    assert_eq!(line["host"], "origin.test");
    assert_eq!(line["port"], origin.port());
    assert_eq!(line["path"], "/echo?q=[redacted]&page=[redacted]");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["bytes_out"], body_len);
    assert_eq!(line["intercepted"], false);
    assert_eq!(line["upgraded"], false);
    assert!(line["reason"].is_null());
    assert!(line["error"].is_null());
    let count = all_log_lines()
        .iter()
        .filter(|l| l.contains("\"request_id\":\"fields-1\""))
        .count();
    assert_eq!(count, 1, "exactly one line per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_text_writes_logfmt() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "log:\n  format: text\n").await;
    let r = w
        .client()
        .get(format!("https://origin.test:{}/echo", origin.port()))
        .header("x-request-id", "logfmt-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = wait_line(|l| l.contains("request_id=logfmt-1")).await;
    assert!(line.starts_with("ts="), "{line}");
    for part in [
        "kind=intercepted",
        "method=GET",
        "scheme=https",
        "host=origin.test",
        "status=200",
        "intercepted=true",
        "upgraded=false",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    assert!(
        !line.contains("reason="),
        "null fields are left out: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_headers_and_queries_never_reach_the_log() {
    let http = Origin::http().await;
    let https = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::all(w.proxy_url())
                .unwrap()
                .basic_auth("agent", "CANARY-proxy-pass"),
        )
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(w.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let urls = [
        format!("http://origin.test:{}/echo?token=CANARY-query", http.port()),
        format!(
            "https://origin.test:{}/echo?token=CANARY-query",
            https.port()
        ),
        format!(
            "http://origin.test:{}/status/500?key=CANARY-query",
            http.port()
        ),
    ];
    let mut ids = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let id = format!("canary-{i}");
        let r = client
            .get(url)
            .header("authorization", "Bearer CANARY-authorization")
            .header("cookie", "session=CANARY-cookie")
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert!(r.status().as_u16() >= 200);
        ids.push(id);
    }
    // A refused request carrying secrets is logged too, without them.
    let mut s = w.tcp().await;
    s.write_all(b"GET /x?token=CANARY-query HTTP/1.1\r\nAuthorization: Bearer CANARY-authorization\r\nX-Request-Id: canary-refused\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"));
    ids.push("canary-refused".into());
    for id in &ids {
        log_for(id).await;
    }
    // The origins did get what the client sent (the canary is real)...
    assert_eq!(
        http.seen()[0].header("authorization"),
        Some("Bearer CANARY-authorization")
    );
    // ...and no log line holds any of it.
    for line in all_log_lines() {
        assert!(!line.contains("CANARY"), "secret in log line: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_warn_writes_no_canonical_lines() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "log:\n  level: warn\n").await;
    let a = format!("origin.test:{}", origin.port());
    let mut s = w.tcp().await;
    for id in ["quiet-1", "quiet-2"] {
        s.write_all(
            format!("GET http://{a}/echo HTTP/1.1\r\nHost: {a}\r\nX-Request-Id: {id}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // The second response on the connection comes after the first request's logging phase.
    assert!(
        !all_log_lines().iter().any(|l| l.contains("quiet-1")),
        "a canonical line was written at level warn"
    );
}
