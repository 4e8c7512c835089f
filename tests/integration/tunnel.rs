//! Blind tunnels: CONNECTs that need no inspection carry TLS end to end.

use crate::common::*;

/// A client that trusts only the test origins' CA, not warden's.
fn origin_trusting_client(w: &TestWarden) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(w.proxy_url()).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(origin_ca().pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_host_is_tunnelled_blind_with_the_origins_own_certificate() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(&default_yaml(
        "all",
        &format!("  passthrough: [\"direct.test:{port}\"]\n"),
        "",
    ))
    .await;
    // Trusting only the origin's CA works only if warden did not terminate TLS.
    let client = origin_trusting_client(&w);
    let r = client
        .get(format!("https://direct.test:{port}/bytes/3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 3000);
    assert_eq!(w.mints(), 0, "no leaf minted for a passthrough host");
    drop(client);
    let line = wait_log(move |v| v["kind"] == "tunnel" && v["port"] == port).await;
    assert_eq!(line["method"], "CONNECT");
    assert_eq!(line["host"], "direct.test");
    assert_eq!(line["status"], 200);
    assert_eq!(line["intercepted"], false);
    assert!(line["bytes_in"].as_u64().unwrap() > 100, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 3000, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    // The same host with warden's CA only fails: it really is the origin's certificate.
    let err = w
        .client()
        .get(format!("https://direct.test:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercept_none_and_auto_tunnel_blind() {
    let origin = Origin::https().await;
    for mode in ["none", "auto"] {
        let w = TestWarden::with(mode, "").await;
        let r = origin_trusting_client(&w)
            .get(format!("https://origin.test:{}/echo", origin.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{mode}");
        assert_eq!(w.mints(), 0, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_a_closed_port_is_answered_502_not_200() {
    let port = closed_port().await;
    let w = TestWarden::with("none", "").await;
    let mut s = w.tcp().await;
    use tokio::io::AsyncWriteExt;
    s.write_all(
        format!("CONNECT origin.test:{port} HTTP/1.1\r\nX-Request-Id: tunnel-refused\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 502, "upstream_connect_failed");
    assert_closed(&mut s).await;
    let line = log_for("tunnel-refused").await;
    assert_eq!(line["kind"], "tunnel");
    assert_eq!(line["status"], 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_through_a_blind_tunnel_arrives_intact_and_is_counted() {
    const SIZE: usize = 8 * 1024 * 1024;
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::with("none", "").await;
    let client = origin_trusting_client(&w);
    let body = client
        .get(format!("https://origin.test:{port}/bytes/{SIZE}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), SIZE);
    assert!(body == pattern(SIZE), "the body arrived intact");
    drop(client);
    let line = wait_log(move |v| v["kind"] == "tunnel" && v["port"] == port).await;
    assert!(line["bytes_out"].as_u64().unwrap() > SIZE as u64, "{line}");
}
