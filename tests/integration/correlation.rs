//! Session correlation headers: set on targets only, one dense number per request.

use crate::common::*;

fn correlated(port: u16, extra_network: &str) -> String {
    network_yaml(
        "auto",
        &format!("  allow_cidrs: [127.0.0.0/8]\n{extra_network}"),
        &format!(
            "correlation:\n  session_id: run-42\n  targets:\n    - host: origin.test:{port}\n      path: /api/**\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_get_the_headers_spoofs_are_overwritten_and_the_log_agrees() {
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::start(&correlated(port, "")).await;
    let client = w.client();
    let r = client
        .get(format!("http://origin.test:{port}/api/v1"))
        .header("x-warden-session-id", "spoofed")
        .header("x-warden-sequence-number", "999")
        .header("x-request-id", "corr-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    client
        .get(format!("http://origin.test:{port}/other"))
        .send()
        .await
        .unwrap();
    let seen = origin.seen();
    assert_eq!(seen[0].header("x-warden-session-id"), Some("run-42"));
    assert_eq!(seen[0].header("x-warden-sequence-number"), Some("1"));
    assert!(
        seen[1].header("x-warden-session-id").is_none(),
        "not a target"
    );
    assert!(seen[1].header("x-warden-sequence-number").is_none());
    assert_eq!(log_for("corr-1").await["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_distinct_dense_numbers_and_denials_consume_one() {
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::start(&correlated(
        port,
        &format!("  rules: [\"deny * origin.test:{port} /api/denied\"]\n"),
    ))
    .await;
    let client = w.client();
    let mut joins = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        joins.push(tokio::spawn(async move {
            let r = client
                .get(format!("http://origin.test:{port}/api/{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let mut numbers: Vec<u64> = origin
        .seen()
        .iter()
        .map(|s| {
            s.header("x-warden-sequence-number")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=200).collect::<Vec<u64>>(), "unique and dense");
    // A denied request consumes the next number, and its log line says which.
    let r = client
        .get(format!("http://origin.test:{port}/api/denied"))
        .header("x-request-id", "corr-denied")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(log_for("corr-denied").await["seq"], 201);
    client
        .get(format!("http://origin.test:{port}/api/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        origin
            .seen()
            .last()
            .unwrap()
            .header("x-warden-sequence-number"),
        Some("202")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_correlation_nothing_is_added() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "").await;
    w.client()
        .get(format!("http://origin.test:{}/api/x", origin.port()))
        .header("x-request-id", "corr-off")
        .send()
        .await
        .unwrap();
    let seen = &origin.seen()[0];
    assert!(seen.header("x-warden-session-id").is_none());
    assert!(seen.header("x-warden-sequence-number").is_none());
    assert!(log_for("corr-off").await["seq"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlated_https_hosts_are_intercepted_under_auto() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(&correlated(port, "")).await;
    // Trusting only warden's CA works only if the tunnel was intercepted.
    let r = w
        .client()
        .get(format!("https://origin.test:{port}/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        origin.seen()[0].header("x-warden-sequence-number"),
        Some("1")
    );
}
