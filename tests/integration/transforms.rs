//! Response transformers: headers set and removed, text bodies rewritten as they stream, other
//! bodies untouched.

use crate::common::*;
use serde_json::Value;

fn yaml(port: u16) -> String {
    default_yaml(
        "auto",
        "",
        &format!(
            "transforms:\n  - host: \"origin.test:{port}\"\n    set_headers: {{ cache-control: no-store }}\n    remove_headers: [x-origin]\n    replace_body:\n      - {{ pattern: '\"method\":\"(GET|POST)\"', with: '\"method\":\"[$1 seen]\"' }}\n"
        ),
    )
}

async fn check(w: &TestWarden, base: &str) {
    let client = w.client();
    for _ in 0..2 {
        let resp = client.get(format!("{base}/echo")).send().await.unwrap();
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert!(resp.headers().get("x-origin").is_none());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["method"], "[GET seen]");
    }
    // Binary bodies are not text: untouched, Content-Length kept.
    let resp = client
        .get(format!("{base}/bytes/5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], "5000");
    assert!(resp.headers().get("x-origin").is_none());
    assert_eq!(resp.bytes().await.unwrap().to_vec(), pattern(5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_rewrite_plain_http_responses() {
    let origin = Origin::http().await;
    let w = TestWarden::start(&yaml(origin.port())).await;
    check(&w, &format!("http://origin.test:{}", origin.port())).await;
    // Rewritten (chunked) responses leave upstream connections reusable: three requests
    // need fewer than three. (A request may overtake the release of the previous one's
    // connection to the pool, so exactly one is not guaranteed.)
    assert!(origin.connections() < 3, "{}", origin.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transformed_host_is_intercepted_and_rewritten() {
    let origin = Origin::https().await;
    let w = TestWarden::start(&yaml(origin.port())).await;
    check(&w, &format!("https://origin.test:{}", origin.port())).await;
    let seen = origin.seen();
    assert_eq!(seen[0].header("accept-encoding"), Some("identity"));
}
