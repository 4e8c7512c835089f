//! L7 rules against the path forms origins read differently, over real sockets: each spelling
//! of a denied path is either refused as ambiguous or matched by the rule, in absolute-form
//! requests and inside intercepted tunnels, and the origin never sees it; raw control bytes in
//! a request line are refused on every connection; `network.rules_case` folds case.

use crate::common::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A deny rule for `/smuggled` on both origins' ports, nothing else.
fn smuggled_yaml(intercept: &str, ports: &[u16], case: &str) -> String {
    let rules: String = ports
        .iter()
        .map(|p| format!("    - \"deny * origin.test:{p} /smuggled\"\n"))
        .collect();
    network_yaml(
        intercept,
        &format!("  allow_cidrs: [127.0.0.0/8]\n{case}  rules:\n{rules}"),
        "",
    )
}

/// The spellings of `/smuggled` the issue found reaching the origin, and a few more of the same
/// families, with what warden answers for each.
const SMUGGLED: &[(&str, u16, &str)] = &[
    ("/smuggled", 403, "policy_denied_rule"),
    ("/smuggled;x", 403, "policy_denied_rule"),
    ("/smuggled%3bx", 403, "policy_denied_rule"),
    ("/SMUGGLED", 403, "policy_denied_rule"),
    ("/smuggled.", 403, "policy_denied_rule"),
    ("/smuggled%20", 403, "policy_denied_rule"),
    ("/smuggled%00", 400, "ambiguous_path"),
    ("/%2573muggled", 400, "ambiguous_path"),
    ("/%C0%AFsmuggled", 400, "ambiguous_path"),
    ("/%E2%80%8Bsmuggled", 400, "ambiguous_path"),
    ("/x/../smuggled", 403, "policy_denied_rule"),
    ("/x/%2e%2e/smuggled", 403, "policy_denied_rule"),
    ("/x/..;/smuggled", 400, "ambiguous_path"),
    ("/x/..%20/smuggled", 400, "ambiguous_path"),
    ("/;v=1/smuggled", 400, "ambiguous_path"),
    ("/Smuggled.%20;y", 403, "policy_denied_rule"),
    ("/%C5%BFmuggled", 403, "policy_denied_rule"),
    ("/smuggled%2f", 400, "ambiguous_path"),
    ("/smuggled%5C", 400, "ambiguous_path"),
    ("/smuggled%09", 400, "ambiguous_path"),
    ("/smu%C2%ADggled", 400, "ambiguous_path"),
    ("/smu%ADggled", 400, "ambiguous_path"),
    ("/%%37%33muggled", 400, "ambiguous_path"),
];

/// Sends one raw request head on `s` and checks warden's refusal.
async fn expect_refusal<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    head: &str,
    status: u16,
    reason: &str,
) {
    s.write_all(head.as_bytes()).await.unwrap();
    let (resp, body) = read_response(s).await;
    assert_refusal(&resp, &body, status, reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_denied_path_is_refused_or_denied_plain_and_in_a_tunnel() {
    let origin = Origin::http().await;
    let tls_origin = Origin::https().await;
    let (port, tls_port) = (origin.port(), tls_origin.port());
    let w = TestWarden::start(&smuggled_yaml(
        "auto",
        &[port, tls_port],
        "  rules_case: insensitive\n",
    ))
    .await;
    for (path, status, reason) in SMUGGLED {
        let a = format!("origin.test:{port}");
        let mut s = w.tcp().await;
        let head = format!("GET http://{a}{path} HTTP/1.1\r\nHost: {a}\r\n\r\n");
        expect_refusal(&mut s, &head, *status, reason).await;

        let a = format!("origin.test:{tls_port}");
        let mut t = w.tls_tunnel(&a, "origin.test").await;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {a}\r\n\r\n");
        expect_refusal(&mut t, &head, *status, reason).await;
    }
    // The origins work and record what reaches them: only paths that are not `/smuggled`.
    let client = w.client();
    for base in [
        format!("http://origin.test:{port}"),
        format!("https://origin.test:{tls_port}"),
    ] {
        for path in ["/smuggled/sub", "/smuggledx", "/other;x"] {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{base}{path}");
        }
    }
    for o in [&origin, &tls_origin] {
        let uris: Vec<String> = o.seen().into_iter().map(|s| s.uri).collect();
        assert_eq!(uris, ["/smuggled/sub", "/smuggledx", "/other;x"]);
    }
    let line = wait_log(|v| v["reason"] == "ambiguous_path" && v["kind"] == "intercepted").await;
    assert_eq!(line["status"], 400);
    assert!(line["rule"].as_str().unwrap().starts_with("network.rules"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_case_decides_whether_an_upper_case_path_is_matched() {
    let origin = Origin::http().await;
    let port = origin.port();
    let url = format!("http://origin.test:{port}/SMUGGLED");
    // Default (sensitive): `/SMUGGLED` is another path, and reaches the origin.
    let w = TestWarden::start(&smuggled_yaml("auto", &[port], "")).await;
    assert_eq!(w.client().get(&url).send().await.unwrap().status(), 200);
    drop(w);
    let w = TestWarden::start(&smuggled_yaml(
        "auto",
        &[port],
        "  rules_case: insensitive\n",
    ))
    .await;
    let r = w.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "policy_denied_rule");
    let uris: Vec<String> = origin.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        uris,
        ["/SMUGGLED"],
        "only the sensitive warden forwarded it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_control_byte_in_a_request_line_is_refused_on_every_connection() {
    // No rules at all: this refusal holds for every host.
    let origin = Origin::http().await;
    let tls_origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let plain = format!("origin.test:{}", origin.port());
    let tunnel = format!("origin.test:{}", tls_origin.port());
    for bad in ["/a\tb", "/a\x01b", "/a\x7fb", "/a b", "/a\rb", "/a?q=\tx"] {
        // The first request on a plain connection.
        let mut s = w.tcp().await;
        let head = format!("GET http://{plain}{bad} HTTP/1.1\r\nHost: {plain}\r\n\r\n");
        expect_refusal(&mut s, &head, 400, "malformed_request").await;
        assert_closed(&mut s).await;
        // A later request on a kept-alive plain connection.
        let mut s = w.tcp().await;
        let ok = format!("GET http://{plain}/ok HTTP/1.1\r\nHost: {plain}\r\n\r\n");
        s.write_all(ok.as_bytes()).await.unwrap();
        assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 200"));
        expect_refusal(&mut s, &head, 400, "malformed_request").await;
        assert_closed(&mut s).await;
        // The first and a later request inside an intercepted tunnel.
        let head = format!("GET {bad} HTTP/1.1\r\nHost: {tunnel}\r\n\r\n");
        let mut t = w.tls_tunnel(&tunnel, "origin.test").await;
        expect_refusal(&mut t, &head, 400, "malformed_request").await;
        assert_closed(&mut t).await;
        let mut t = w.tls_tunnel(&tunnel, "origin.test").await;
        let ok = format!("GET /ok HTTP/1.1\r\nHost: {tunnel}\r\n\r\n");
        t.write_all(ok.as_bytes()).await.unwrap();
        assert!(read_response(&mut t).await.0.starts_with("HTTP/1.1 200"));
        expect_refusal(&mut t, &head, 400, "malformed_request").await;
        assert_closed(&mut t).await;
    }
    for o in [&origin, &tls_origin] {
        assert!(o.seen().iter().all(|s| s.uri == "/ok"), "{:?}", o.seen());
        assert_eq!(o.seen().len(), 6);
    }
    // Other tests log malformed requests too: this one's is the one to origin.test.
    let line = wait_log(|v| {
        v["reason"] == "malformed_request"
            && v["kind"] == "intercepted"
            && v["host"] == "origin.test"
    })
    .await;
    assert_eq!(line["status"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_without_rules_forward_encoded_paths_as_sent() {
    let origin = Origin::http().await;
    let port = origin.port();
    // Rules for another host only: origin.test has none, so nothing here is ambiguous to warden.
    let w = TestWarden::start(&network_yaml(
        "auto",
        "  allow_cidrs: [127.0.0.0/8]\n  rules: [\"deny * other.test /smuggled\"]\n",
        "",
    ))
    .await;
    let paths = [
        "/smuggled%00",
        "/%2573muggled",
        "/a%2Fb",
        "/%E2%80%8Bx",
        "/a;b",
    ];
    for path in paths {
        let a = format!("origin.test:{port}");
        let mut s = w.tcp().await;
        s.write_all(format!("GET http://{a}{path} HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 200"));
    }
    let uris: Vec<String> = origin.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, paths);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_still_close_at_shutdown() {
    // The front door waits for each next request line itself; shutdown must end that wait.
    let origin = Origin::http().await;
    let tls_origin = Origin::https().await;
    let mut w = TestWarden::with("all", "").await;
    let plain = format!("origin.test:{}", origin.port());
    let mut s = w.tcp().await;
    let ok = format!("GET http://{plain}/ok HTTP/1.1\r\nHost: {plain}\r\n\r\n");
    s.write_all(ok.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 200"));
    let tunnel = format!("origin.test:{}", tls_origin.port());
    let mut t = w.tls_tunnel(&tunnel, "origin.test").await;
    let ok = format!("GET /ok HTTP/1.1\r\nHost: {tunnel}\r\n\r\n");
    t.write_all(ok.as_bytes()).await.unwrap();
    assert!(read_response(&mut t).await.0.starts_with("HTTP/1.1 200"));
    let running = w.running.take().unwrap();
    let started = std::time::Instant::now();
    assert!(
        running.shutdown(std::time::Duration::from_secs(10)).await,
        "idle connections drained"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_closed(&mut s).await;
    assert_closed(&mut t).await;
}
