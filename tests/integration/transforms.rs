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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_transforms_replace_the_top_level_ones() {
    let origin = Origin::http().await;
    let port = origin.port();
    // Client `own` has a section of its own, which only sets x-client; `shared` gets the
    // top-level section.
    let clients = format!(
        "  auth:\n    clients:\n      - {{ name: shared, token: {{ type: static, value: tok-shared }} }}\n      - name: own\n        token: {{ type: static, value: tok-own }}\n        transforms: [{{ host: \"origin.test:{port}\", set_headers: {{ x-client: own }} }}]\n"
    );
    let yaml = yaml(port).replace(
        "proxy:\n  listen: 127.0.0.1:0\n",
        &format!("proxy:\n  listen: 127.0.0.1:0\n{clients}"),
    );
    let w = TestWarden::start(&yaml).await;
    let as_client = |name: &str| {
        w.client_builder()
            .proxy(
                reqwest::Proxy::all(w.proxy_url())
                    .unwrap()
                    .basic_auth(name, &format!("tok-{name}")),
            )
            .build()
            .unwrap()
    };
    let url = format!("http://origin.test:{port}/echo");
    let shared = as_client("shared").get(&url).send().await.unwrap();
    assert_eq!(shared.headers()["cache-control"], "no-store");
    assert!(shared.headers().get("x-client").is_none());
    let body: Value = shared.json().await.unwrap();
    assert_eq!(body["method"], "[GET seen]");
    let own = as_client("own").get(&url).send().await.unwrap();
    assert_eq!(own.headers()["x-client"], "own");
    assert!(own.headers().get("cache-control").is_none());
    let body: Value = own.json().await.unwrap();
    assert_eq!(
        body["method"], "GET",
        "the top-level body rule is not the client's"
    );
}
