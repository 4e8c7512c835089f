//! CONNECT interception: TLS terminated with warden's leaf, requests in the tunnel proxied to a
//! verified TLS origin, bound to the CONNECT authority.

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_https_requests_on_one_tunnel_reach_the_tls_origin_in_origin_form() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    // The client trusts only warden's CA: success means it verified warden's leaf.
    let client = w.client();
    let url = format!("https://origin.test:{}/echo?x=1", origin.port());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["x-request-id"].to_str().unwrap().to_string());
        // Reading the body to its end is what returns the connection to the client's pool.
        r.bytes().await.unwrap();
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(s.uri, "/echo?x=1", "origin-form request line upstream");
        assert!(s.header("proxy-authorization").is_none());
        assert_eq!(
            s.header("host"),
            Some(format!("origin.test:{}", origin.port()).as_str())
        );
    }
    let first = log_for(&ids[0]).await;
    let second = log_for(&ids[1]).await;
    assert_eq!(first["kind"], "intercepted");
    assert_eq!(first["intercepted"], true);
    assert_eq!(
        first["client_addr"], second["client_addr"],
        "both requests rode one tunnel"
    );
    assert_eq!(w.mints(), 1, "one leaf for one host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_works_through_an_intercepted_tunnel() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let url = format!("https://origin.test:{}/status/201", origin.port());
    let out = w.curl(&["--fail", &url]).await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"status body");
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_proxy_headers_inside_the_tunnel_are_not_forwarded() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("origin.test:{}", origin.port());
    let mut s = w.tls_tunnel(&authority, "origin.test").await;
    let req = format!(
        "GET /echo HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = origin.seen();
    let got = &seen[0];
    for gone in [
        "proxy-authorization",
        "proxy-connection",
        "x-hop",
        "keep-alive",
    ] {
        assert!(got.header(gone).is_none(), "{gone} was forwarded");
    }
    assert_eq!(got.header("x-kept"), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_naming_another_host_is_refused_and_never_routed() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("origin.test:{}", origin.port());
    let mut s = w.tls_tunnel(&authority, "origin.test").await;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: mismatch-1\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 421, "host_mismatch");
    assert_closed(&mut s).await;
    assert!(origin.seen().is_empty(), "origin never contacted");
    assert_eq!(origin.connections(), 0);
    let line = log_for("mismatch-1").await;
    assert_eq!(line["reason"], "host_mismatch");
    assert_eq!(line["status"], 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sni_naming_another_host_is_refused() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("origin.test:{}", origin.port());
    let tcp = w.connect(&authority).await;
    // SNI a.test, but the tunnel (and so the leaf) is for origin.test.
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .into_ssl("a.test")
        .unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut s).connect().await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 421, "host_mismatch");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_tls_bytes_into_a_tunnel_that_must_be_inspected_close_it() {
    let origin = Origin::https().await;
    // A header rule must see inside this host's traffic: plaintext cannot go through blind.
    let w = TestWarden::with(
        "all",
        &format!(
            "headers:\n  - {{ host: \"origin.test:{}\", set: {{ x-team: a }} }}\n",
            origin.port()
        ),
    )
    .await;
    let mut s = w.connect(&format!("origin.test:{}", origin.port())).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    assert_closed(&mut s).await;
    let port = origin.port();
    let line = wait_log(move |v| v["reason"] == "client_not_tls" && v["port"] == port).await;
    assert_eq!(line["kind"], "connect");
    assert_eq!(line["method"], "CONNECT");
    assert_eq!(
        w.mints(),
        0,
        "nothing minted for a client that never spoke TLS"
    );
    assert_eq!(origin.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clienthello_pipelined_with_the_connect_is_handled() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("origin.test:{}", origin.port());
    // Run the TLS client over an in-memory pipe so its ClientHello can be sent in the same
    // write as the CONNECT, before the 200 arrives.
    let (client_side, mut pump) = tokio::io::duplex(64 * 1024);
    let ca = w.ca_pem.clone();
    let auth2 = authority.clone();
    let tls = tokio::spawn(async move {
        let mut s = tls_connect(client_side, "origin.test", &ca).await;
        s.write_all(format!("GET /echo HTTP/1.1\r\nHost: {auth2}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(&mut s).await
    });
    let mut hello = vec![0u8; 16 * 1024];
    let n = pump.read(&mut hello).await.unwrap();
    assert_eq!(hello[0], 0x16, "a TLS handshake record");
    let mut first =
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes();
    first.extend_from_slice(&hello[..n]);
    let mut tcp = w.tcp().await;
    tcp.write_all(&first).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut pump).await;
    });
    let (head, _) = tokio::time::timeout(WAIT, tls).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_cache_is_bounded_and_a_second_connect_mints_nothing() {
    let origin = Origin::https().await;
    let w = TestWarden::start(&default_yaml(
        "all",
        "",
        "limits:\n  cert_cache_entries: 2\n",
    ))
    .await;
    for host in ["a.test", "b.test", "c.test"] {
        let r = w
            .client()
            .get(format!("https://{host}:{}/echo", origin.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(w.mints(), 3);
    assert!(
        w.cached_leaves() <= 2,
        "{} leaves cached",
        w.cached_leaves()
    );
    // A new tunnel (new client) to the host minted last reuses its cached leaf.
    let r = w
        .client()
        .get(format!("https://c.test:{}/echo", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(w.mints(), 3, "cache hit mints nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_warden_fails_the_handshake_and_is_logged() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(w.proxy_url()).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(origin_ca().pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap();
    let err = client
        .get(format!("https://b.test:{}/echo", origin.port()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let port = origin.port();
    let line = wait_log(move |v| v["reason"] == "client_tls_error" && v["port"] == port).await;
    assert_eq!(line["host"], "b.test");
    assert_error_field(&line, "TLSHandshakeFailure: ");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_through_connect_under_intercept_all_is_tunnelled_blind() {
    use futures_util::{SinkExt, StreamExt};
    // ws:// through a proxy is a CONNECT carrying plain HTTP: with nothing to inspect, it is
    // spliced as it is instead of being cut off for not being TLS.
    let origin = WsOrigin::start(false).await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("ws.test:{}", origin.addr.port());
    let tcp = w.connect(&authority).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{authority}/"), tcp)
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "hello");
    ws.close(None).await.unwrap();
    drop(ws);
    // The tunnel's line is written when it closes.
    let port = origin.addr.port();
    let line = wait_log(move |v| v["kind"] == "tunnel" && v["port"] == port).await;
    assert_eq!(line["status"], 200);
    assert_eq!(w.mints(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_stripped_and_the_request_goes_as_http1() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("origin.test:{}", origin.port());
    let mut s = w.tls_tunnel(&authority, "origin.test").await;
    let req = format!(
        "GET /echo HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = origin.seen();
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(seen[0].header(gone).is_none(), "{gone} was forwarded");
    }
    // The connection stays HTTP/1.1, every request still checked one by one.
    s.write_all(format!("GET /echo HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(origin.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_switching_protocols_unasked_gets_no_tunnel() {
    // An origin that answers every request with a 101, as one that honours h2c (or anything)
    // would: the client must not end up in an opaque stream to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = std::sync::Arc::new(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES)));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                let _ = read_head(&mut tls).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nPRI-FROM-ORIGIN")
                    .await;
                let _ = tls.flush().await;
                // Hold the switched connection until warden drops it.
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest).await;
            });
        }
    });
    let w = TestWarden::with("all", "").await;
    let authority = format!("origin.test:{port}");
    let mut s = w.tls_tunnel(&authority, "origin.test").await;
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nX-Request-Id: h2c-101\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(!head.starts_with("HTTP/1.1 101"), "{head}");
    assert_refusal(&head, &body, 502, "upstream_error");
    let line = log_for("h2c-101").await;
    assert_eq!(line["reason"], "upstream_error");
    assert_eq!(line["upgraded"], false);
}
