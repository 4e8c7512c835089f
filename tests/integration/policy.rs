//! Network policy over real sockets: host allow/deny decided before any side effect, the SSRF
//! guard on resolved addresses, dialling exactly the checked address, loop detection, report
//! mode, and upgrades authorised like any request.

use crate::common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

fn dns_lookups(w: &TestWarden) -> u64 {
    w.runtime().dns.lookups()
}

async fn connect_refusal(w: &TestWarden, authority: &str, status: u16, reason: &str) -> Value {
    let mut s = w.tcp().await;
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, status, reason);
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-status: warden; error=http_request_denied"),
        "{head}"
    );
    assert_closed(&mut s).await;
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_connect_causes_no_dns_no_mint_and_no_origin_connection() {
    let origin = Origin::https().await;
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!(
            "  allow_cidrs: [127.0.0.0/8]\n  deny: [\"origin.test:{}\", \"*.denied.example\"]\n",
            origin.port()
        ),
        "",
    ))
    .await;
    // A name warden would have to ask DNS for: denied before any lookup.
    let body = connect_refusal(&w, "api.denied.example:443", 403, "policy_denied_host").await;
    assert_eq!(body["host"], "api.denied.example");
    assert_eq!(body["rule"], "network.deny: *.denied.example");
    assert!(body["hint"].as_str().unwrap().contains("will not help"));
    // A name that resolves to a live origin: denied before any connection or leaf.
    connect_refusal(
        &w,
        &format!("origin.test:{}", origin.port()),
        403,
        "policy_denied_host",
    )
    .await;
    assert_eq!(dns_lookups(&w), 0, "no DNS query for a denied CONNECT");
    assert_eq!(origin.connections(), 0, "no upstream connection");
    assert_eq!(w.mints(), 0, "no certificate minted");
    let port = origin.port();
    let line = wait_log(move |v| v["reason"] == "policy_denied_host" && v["port"] == port).await;
    assert_eq!(line["kind"], "connect");
    assert_eq!(line["status"], 403);
    assert!(line["rule"].as_str().unwrap().starts_with("network.deny"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_policy_allows_only_listed_hosts_for_plain_and_tunnelled_requests() {
    let origin = Origin::http().await;
    let tls_origin = Origin::https().await;
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!(
            "  policy: strict\n  allow_cidrs: [127.0.0.0/8]\n  allow: [\"origin.test:{}\", \"origin.test:{}\"]\n",
            origin.port(),
            tls_origin.port()
        ),
        "",
    ))
    .await;
    let client = w.client();
    let ok = client
        .get(format!("http://origin.test:{}/echo", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = client
        .get(format!("https://origin.test:{}/echo", tls_origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let denied = client
        .get(format!("http://a.test:{}/echo", origin.port()))
        .header("x-request-id", "strict-denied")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let v: Value = denied.json().await.unwrap();
    assert_eq!(v["reason"], "policy_denied_host");
    assert_eq!(v["rule"], "network.policy: strict (not in network.allow)");
    let err = client
        .get(format!("https://a.test:{}/echo", tls_origin.port()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    assert_eq!(origin.seen().len(), 1);
    assert_eq!(tls_origin.seen().len(), 1);
    assert_eq!(
        log_for("strict-denied").await["reason"],
        "policy_denied_host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_to_loopback_forms_are_refused_as_private() {
    let origin = Origin::http().await;
    let tls_origin = Origin::https().await;
    let port = origin.port();
    for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let yaml = network_yaml("all", "", "").replace(
            "    origin.test: 127.0.0.1\n",
            &format!("    origin.test: \"{ip}\"\n"),
        );
        let w = TestWarden::start(&yaml).await;
        // Plain request: refused after resolution, before dialling.
        let r = w
            .client()
            .get(format!("http://origin.test:{port}/echo"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{ip}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["reason"], "private_address", "{ip}");
        // Intercepted tunnel: the request inside is refused the same way.
        let r = w
            .client()
            .get(format!("https://origin.test:{}/echo", tls_origin.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{ip}");
    }
    // Blind tunnel: refused before the 200.
    let yaml = network_yaml("none", "", "");
    let w = TestWarden::start(&yaml).await;
    connect_refusal(
        &w,
        &format!("origin.test:{}", tls_origin.port()),
        403,
        "private_address",
    )
    .await;
    // IP literals are checked before anything else.
    connect_refusal(&w, &format!("127.0.0.1:{port}"), 403, "private_address").await;
    assert!(origin.seen().is_empty() && tls_origin.seen().is_empty());
    assert_eq!(origin.connections() + tls_origin.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_cidrs_admits_loopback_and_the_checked_address_is_the_one_dialled() {
    let origin = Origin::http_on("127.0.0.2").await;
    let yaml = network_yaml("all", "  allow_cidrs: [127.0.0.2/32]\n", "").replace(
        "    origin.test: 127.0.0.1\n",
        "    origin.test: 127.0.0.2\n",
    );
    let w = TestWarden::start(&yaml).await;
    let r = w
        .client()
        .get(format!("http://origin.test:{}/echo", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The origin listens on 127.0.0.2 only: the connection went to the checked address.
    assert_eq!(origin.addr.ip().to_string(), "127.0.0.2");
    assert_eq!(origin.connections(), 1);
    // 127.0.0.1 is not covered by 127.0.0.2/32.
    let r = w
        .client()
        .get(format!("http://127.0.0.1:{}/echo", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_wardens_own_listeners_are_loops() {
    let w = TestWarden::with("all", "admin:\n  listen: 127.0.0.1:0\n").await;
    let proxy = w.addr;
    let admin = w.running.as_ref().unwrap().admin_addr().unwrap();
    connect_refusal(&w, &proxy.to_string(), 403, "loop_detected").await;
    connect_refusal(&w, &admin.to_string(), 403, "loop_detected").await;
    let r = w
        .client()
        .get(format!("http://{proxy}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "loop_detected");
    // A name that resolves to warden is caught at resolution.
    let r = w
        .client()
        .get(format!("http://origin.test:{}/metrics", admin.port()))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "loop_detected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_websocket_upgrade_never_reaches_the_origin() {
    let origin = WsOrigin::start(false).await;
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!(
            "  allow_cidrs: [127.0.0.0/8]\n  deny: [\"ws.test:{}\"]\n",
            origin.addr.port()
        ),
        "",
    ))
    .await;
    let a = format!("ws.test:{}", origin.addr.port());
    let mut s = w.tcp().await;
    s.write_all(format!("GET http://{a}/ws HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 403, "policy_denied_host");
    assert_closed(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_lets_a_denied_request_through_and_logs_would_deny() {
    let origin = Origin::http().await;
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!(
            "  mode: report\n  allow_cidrs: [127.0.0.0/8]\n  deny: [\"origin.test:{}\"]\n",
            origin.port()
        ),
        "",
    ))
    .await;
    let r = w
        .client()
        .get(format!("http://origin.test:{}/echo", origin.port()))
        .header("x-request-id", "report-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin.seen().len(), 1);
    let line = log_for("report-1").await;
    assert_eq!(line["would_deny"], "policy_denied_host");
    assert!(line["reason"].is_null());
}

fn rules_yaml(intercept: &str, port: u16, extra_network: &str) -> String {
    network_yaml(
        intercept,
        &format!(
            "  allow_cidrs: [127.0.0.0/8]\n{extra_network}  rules:\n    - \"allow GET,HEAD origin.test:{port} /repos/**\"\n    - \"deny * origin.test:{port} /**\"\n"
        ),
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_make_auto_intercept_and_decide_every_request_in_the_tunnel() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(&rules_yaml("auto", port, "")).await;
    let client = w.client(); // trusts warden's CA only: success means the tunnel was intercepted
    let ok = client
        .get(format!("https://origin.test:{port}/repos/a/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(w.mints(), 1);
    for (method, path) in [
        ("DELETE", "/repos/a/b"),
        ("GET", "/admin"),
        ("GET", "/repos/../admin"),
        ("GET", "/repos/%2e%2e/admin"),
    ] {
        let r = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("https://origin.test:{port}{path}"),
            )
            .header("x-request-id", format!("rule-{method}-{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["reason"], "policy_denied_rule");
        assert_eq!(
            v["rule"],
            format!("network.rules[1]: deny * origin.test:{port} /**").as_str()
        );
    }
    // Only the allowed request reached the origin; other hosts are not intercepted by auto.
    assert_eq!(origin.seen().len(), 1);
    let line = log_for("rule-DELETE-/repos/a/b").await;
    assert_eq!(line["reason"], "policy_denied_rule");
    assert_eq!(line["kind"], "intercepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_call_over_http1_is_refused_trailers_only_with_an_empty_sized_body() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(&rules_yaml("auto", port, "")).await;
    let authority = format!("origin.test:{port}");
    let mut s = w.tls_tunnel(&authority, "origin.test").await;
    // One empty gRPC message frame (flag, 4-byte length).
    let req = format!(
        "POST /pkg.Svc/Call HTTP/1.1\r\nHost: {authority}\r\ncontent-type: application/grpc-web+proto\r\nx-request-id: grpc-web-deny\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        lower.contains("content-type: application/grpc\r\n"),
        "{head}"
    );
    assert!(lower.contains("grpc-status: 7\r\n"), "{head}");
    assert!(
        lower.contains("grpc-message: policy_denied_rule: "),
        "{head}"
    );
    assert!(lower.contains("content-length: 0\r\n"), "{head}");
    assert!(body.is_empty());
    // As with every refusal on HTTP/1.x, the unread request body ends the connection.
    assert_closed(&mut s).await;
    assert!(origin.seen().is_empty());
    let line = log_for("grpc-web-deny").await;
    assert_eq!(line["http_version"], "1.1", "{line}");
    assert_eq!(line["grpc_service"], "pkg.Svc", "{line}");
    assert_eq!(line["grpc_status"], 7, "{line}");
    assert_eq!(line["reason"], "policy_denied_rule", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_apply_to_plain_http_too() {
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::start(&rules_yaml("auto", port, "")).await;
    let client = w.client();
    let base = format!("http://origin.test:{port}");
    assert_eq!(
        client
            .get(format!("{base}/repos/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .post(format!("{base}/repos/x"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // Raw request lines, as sent (HTTP clients would normalise these before sending).
    let a = format!("origin.test:{port}");
    for (path, status, reason) in [
        ("/repos/../admin", 403, "policy_denied_rule"),
        ("/repos/%2e%2e/admin", 403, "policy_denied_rule"),
        // An encoded separator is a separator to some origins only: refused, not matched.
        ("/repos%2F..%2Fadmin", 400, "ambiguous_path"),
    ] {
        let mut s = w.tcp().await;
        s.write_all(format!("GET http://{a}{path} HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert_refusal(&head, &body, status, reason);
    }
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_a_host_that_would_be_tunnelled_blind_fail_closed() {
    let origin = Origin::https().await;
    let w = TestWarden::start(&rules_yaml("none", origin.port(), "")).await;
    let body = connect_refusal(
        &w,
        &format!("origin.test:{}", origin.port()),
        403,
        "policy_denied_rule",
    )
    .await;
    assert!(body["rule"].as_str().unwrap().contains("tunnel it blind"));
    assert_eq!(origin.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_logs_a_rule_denial_and_lets_it_through() {
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::start(&rules_yaml("auto", port, "  mode: report\n")).await;
    let r = w
        .client()
        .delete(format!("http://origin.test:{port}/repos/x"))
        .header("x-request-id", "rule-report-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        log_for("rule-report-1").await["would_deny"],
        "policy_denied_rule"
    );
}
