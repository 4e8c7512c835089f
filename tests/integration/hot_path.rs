//! What the intercepted hot path shares between tunnels: one leaf per host however many
//! CONNECTs race for it, one upstream connection for many client tunnels, and client TLS
//! sessions that can be resumed.

use crate::common::*;
use tokio::io::AsyncWriteExt;

const ADMIN: &str = "admin:\n  listen: 127.0.0.1:0\n";

/// Sends one request in an intercepted tunnel and returns its request id.
async fn get_in_tunnel(w: &TestWarden, authority: &str, connection: &str) -> String {
    let mut s = w.tls_tunnel(authority, "origin.test").await;
    let req =
        format!("GET /echo HTTP/1.1\r\nHost: {authority}\r\nConnection: {connection}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    head.lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("x-request-id on the response")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_connects_to_a_new_host_mint_one_leaf() {
    let origin = Origin::https().await;
    let w = std::sync::Arc::new(TestWarden::with("all", "").await);
    let authority = format!("origin.test:{}", origin.port());
    let tunnels: Vec<_> = (0..100)
        .map(|_| {
            let (w, authority) = (w.clone(), authority.clone());
            tokio::spawn(async move { get_in_tunnel(&w, &authority, "close").await })
        })
        .collect();
    for t in tunnels {
        t.await.expect("every tunnel got its answer");
    }
    assert_eq!(w.mints(), 1, "one leaf for 100 racing CONNECTs");
    assert_eq!(origin.seen().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_connection_per_lane_serves_many_client_tunnels() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("origin.test:{}", origin.port());
    for _ in 0..5 {
        let id = get_in_tunnel(&w, &authority, "close").await;
        // The line is written after the upstream connection went back to the pool.
        let line = log_for(&id).await;
        assert_eq!(line["kind"], "intercepted");
    }
    assert_eq!(origin.seen().len(), 5);
    // Tunnels are dealt to the lanes in turn, and each lane pools its own: one upstream TLS
    // handshake per lane, however many tunnels.
    assert_eq!(
        origin.connections(),
        w.lanes().min(5),
        "five tunnels, one upstream TLS handshake per lane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_their_tls_sessions() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", ADMIN).await;
    let url = format!("https://origin.test:{}/echo", origin.port());
    // One curl run, two URLs, each on its own connection (HTTP/1.1 and Connection: close;
    // over h2 curl would multiplex both on one): curl offers the session from the first
    // handshake on the second.
    let out = w
        .curl(&[
            "--http1.1",
            "--fail",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-H",
            "Connection: close",
            &url,
            &url,
        ])
        .await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(origin.seen().len(), 2);
    let m = w.scrape().await;
    let handshakes = |resumed: &str| {
        metric_value(
            &m,
            &format!("warden_client_tls_handshakes_total{{resumed=\"{resumed}\"}}"),
        )
    };
    assert_eq!(handshakes("false"), Some(1.0), "{m}");
    assert_eq!(handshakes("true"), Some(1.0), "{m}");
}
