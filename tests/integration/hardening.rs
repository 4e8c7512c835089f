//! Slow and malformed clients, pipelining and missing bounds, over raw sockets: every request
//! head is timed as a whole, every refusal is warden's own (JSON reason, `Proxy-Status`, a log
//! line, a denial count), pipelined requests are answered in order, and oversized upstream
//! heads are refused.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const QUICK: &str = "limits:\n  request_header_timeout: 400ms\n  request_body_idle_timeout: 400ms\nadmin:\n  listen: 127.0.0.1:0\n";

async fn quick() -> TestWarden {
    TestWarden::with("auto", QUICK).await
}

/// Reads a refusal (JSON body with Content-Length), checks it, and returns its JSON body.
async fn refusal<S: AsyncRead + Unpin>(s: &mut S, status: u16, reason: &str) -> Value {
    let (head, body) = read_response(s).await;
    assert_refusal(&head, &body, status, reason);
    serde_json::from_slice(&body).unwrap()
}

/// Sends `bytes` one at a time, waiting up to `gap` for an answer after each, and returns the
/// first answer bytes (empty if none came before `bytes` ran out or the peer closed).
async fn dribble<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    gap: Duration,
) -> Vec<u8> {
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            break;
        }
        let mut probe = [0u8; 512];
        match tokio::time::timeout(gap, s.read(&mut probe)).await {
            Ok(Ok(n)) => return probe[..n].to_vec(),
            Ok(Err(_)) => return Vec::new(),
            Err(_) => {}
        }
    }
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_head_sent_a_byte_at_a_time_gets_408_once_the_whole_head_is_late() {
    let origin = Origin::http().await;
    let w = quick().await;
    let mut s = w.tcp().await;
    let head = format!(
        "GET http://origin.test:{}/ HTTP/1.1\r\nX-Request-Id: slow-first\r\nX-Pad: {}",
        origin.port(),
        "a".repeat(200)
    );
    let started = Instant::now();
    // Each byte arrives well within any per-read bound; only the whole-head bound ends it,
    // long before the last byte would have been sent (about 5 s). Its clock started at the
    // accept, a little before this one.
    let answer = dribble(&mut s, head.as_bytes(), Duration::from_millis(20)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let mut r = (&answer[..]).chain(&mut s);
    let body = refusal(&mut r, 408, "request_header_timeout").await;
    assert_eq!(body["reason"], "request_header_timeout");
    assert_closed(&mut s).await;
    let line = wait_log(|v| v["reason"] == "request_header_timeout" && v["kind"] == "plain").await;
    assert_eq!(line["status"], 408);
    assert!(origin.seen().is_empty());
    let metrics = w.scrape().await;
    assert!(
        metric_value(
            &metrics,
            "warden_denials_total{reason=\"request_header_timeout\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_inside_a_tunnel_after_a_good_request_gets_408_and_a_log_line() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", QUICK).await;
    let authority = format!("origin.test:{}", origin.port());
    let mut t = w.tls_tunnel(&authority, "origin.test").await;
    t.write_all(format!("GET /first HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut t).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The kept-alive connection's next head starts, then stalls byte by byte.
    let next = format!("GET /second HTTP/1.1\r\nHost: {authority}\r\nX-Request-Id: slow-in-tunnel\r\nX-Pad: {}\r\n\r\n", "b".repeat(400));
    let started = Instant::now();
    let answer = dribble(&mut t, next.as_bytes(), Duration::from_millis(10)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut r = (&answer[..]).chain(&mut t);
    let body = refusal(&mut r, 408, "request_header_timeout").await;
    assert!(body["host"] == "origin.test");
    let line =
        wait_log(|v| v["reason"] == "request_header_timeout" && v["kind"] == "intercepted").await;
    assert_eq!(line["host"], "origin.test");
    assert_eq!(
        origin.seen().len(),
        1,
        "only the first request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_without_an_answer() {
    let w = quick().await;
    let mut s = w.tcp().await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed within the head timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer to a connection that asked nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_request_body_timeout() {
    let origin = Origin::http().await;
    let w = quick().await;
    let mut s = w.tcp().await;
    s.write_all(
        format!(
            "POST http://origin.test:{}/ HTTP/1.1\r\nX-Request-Id: stalled-body\r\nContent-Length: 100\r\n\r\nonly-a-part",
            origin.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    refusal(&mut s, 408, "request_body_timeout").await;
    let line = log_for("stalled-body").await;
    assert_eq!(line["reason"], "request_body_timeout");
    assert_eq!(line["status"], 408);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pingora_would_refuse_bare_get_wardens_answer_inside_tunnels() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", QUICK).await;
    let authority = format!("origin.test:{}", origin.port());
    let port = origin.port();
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("GET / HTTP/1.1\r\nHost: {authority}\r\nX-Fold: a\r\n b\r\n\r\n"),
            400,
            "malformed_request",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {authority}\r\nX-Nul: a\0b\r\n\r\n"),
            400,
            "malformed_request",
        ),
        (
            format!("POST / HTTP/1.0\r\nHost: {authority}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
            "ambiguous_framing",
        ),
        (
            format!("POST / HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"),
            400,
            "ambiguous_framing",
        ),
        (
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
            400,
            "unexpected_connect",
        ),
        (
            format!("GET https://origin.test:{port}/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"),
            421,
            "host_mismatch",
        ),
    ];
    for (request, status, reason) in cases {
        let mut t = w.tls_tunnel(&authority, "origin.test").await;
        // After a good request, so these are later heads on the connection.
        t.write_all(format!("GET /ok HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut t).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        t.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut t).await;
        assert!(!head.contains("Pingora"), "{head}");
        assert_refusal(&head, &body, status, reason);
        assert_closed(&mut t).await;
        wait_log(|v| v["reason"] == reason && v["kind"] == "intercepted").await;
    }
    let metrics = w.scrape().await;
    for reason in [
        "malformed_request",
        "ambiguous_framing",
        "unexpected_connect",
    ] {
        let series = format!("warden_denials_total{{reason=\"{reason}\"}}");
        assert!(
            metric_value(&metrics, &series).unwrap_or(0.0) >= 1.0,
            "{series}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_after_a_plain_request_is_refused_with_a_reason() {
    let origin = Origin::http().await;
    let w = quick().await;
    let mut s = w.tcp().await;
    let port = origin.port();
    s.write_all(format!("GET http://origin.test:{port}/ HTTP/1.1\r\n\r\nCONNECT origin.test:{port} HTTP/1.1\r\nX-Request-Id: late-connect\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    refusal(&mut s, 400, "unexpected_connect").await;
    assert_eq!(
        log_for("late-connect").await["reason"],
        "unexpected_connect"
    );
}

fn echoed_uri(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["uri"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_plain_requests_are_all_answered_in_order() {
    let origin = Origin::http().await;
    let w = quick().await;
    let port = origin.port();
    let mut s = w.tcp().await;
    let mut batch = String::new();
    for i in 0..3 {
        batch.push_str(&format!(
            "GET http://origin.test:{port}/p{i} HTTP/1.1\r\nX-Request-Id: pipe-{i}\r\n\r\n"
        ));
    }
    batch.push_str(&format!(
        "POST http://origin.test:{port}/p3 HTTP/1.1\r\nX-Request-Id: pipe-3\r\nContent-Length: 5\r\n\r\nhello"
    ));
    batch.push_str(&format!(
        "POST http://origin.test:{port}/p4 HTTP/1.1\r\nX-Request-Id: pipe-4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ));
    batch.push_str(&format!(
        "GET http://origin.test:{port}/p5 HTTP/1.1\r\nX-Request-Id: pipe-5\r\n\r\n"
    ));
    s.write_all(batch.as_bytes()).await.unwrap();
    for i in 0..6 {
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
        assert!(head.contains(&format!("pipe-{i}")), "{i}: {head}");
        assert_eq!(echoed_uri(&body), format!("/p{i}"));
        log_for(&format!("pipe-{i}")).await;
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_inside_a_tunnel_are_all_answered_in_order() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", QUICK).await;
    let authority = format!("origin.test:{}", origin.port());
    let mut t = w.tls_tunnel(&authority, "origin.test").await;
    let mut batch = String::new();
    for i in 0..4 {
        batch.push_str(&format!(
            "POST /t{i} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 2\r\n\r\nhi"
        ));
    }
    t.write_all(batch.as_bytes()).await.unwrap();
    for i in 0..4 {
        let (head, body) = read_response(&mut t).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
        assert_eq!(echoed_uri(&body), format!("/t{i}"));
    }
}

/// A plain origin whose response carries one header of `size` bytes.
async fn big_header_origin(size: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = read_head(&mut s).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "h".repeat(size)
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upstream_response_head_gets_502() {
    let big = big_header_origin(100 * 1024).await;
    let small = big_header_origin(1024).await;
    let w = TestWarden::with("auto", "limits:\n  max_response_header_bytes: 8192\n").await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(format!("GET http://origin.test:{small}/ HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(
        format!("GET http://origin.test:{big}/ HTTP/1.1\r\nX-Request-Id: big-head\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    refusal(&mut s, 502, "upstream_header_too_large").await;
    assert_eq!(
        log_for("big-head").await["reason"],
        "upstream_header_too_large"
    );
    // The default bound (64 KiB) refuses the 100 KiB head too.
    let w = TestWarden::with("auto", "").await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(format!("GET http://origin.test:{big}/ HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    refusal(&mut s, 502, "upstream_header_too_large").await;
}

/// The accept queue length of the listener on `port`, as the kernel reports it.
fn backlog_of(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss runs (iproute2, installed by .ci/deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    // State Recv-Q Send-Q Local Peer: for a listener, Send-Q is the backlog.
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no listener line for port {port}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_follows_proxy_backlog() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096);
    let w = quick().await;
    assert_eq!(backlog_of(w.addr.port()), 4096.min(somaxconn));
    let yaml = default_yaml("auto", "", "").replace(
        "  listen: 127.0.0.1:0\n",
        "  listen: 127.0.0.1:0\n  backlog: 77\n",
    );
    let w = TestWarden::start(&yaml).await;
    assert_eq!(backlog_of(w.addr.port()), 77);
}

/// warden's binary under a low descriptor limit, killed when the test ends.
struct Starved(Launched);

impl Starved {
    fn start(config: &std::path::Path, fds: u32) -> Starved {
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            &format!("ulimit -n {fds} && exec \"$0\" run -c \"$1\""),
        ])
        .arg(env!("CARGO_BIN_EXE_warden"))
        .arg(config);
        Starved(Launched::start(cmd))
    }
}

impl std::ops::Deref for Starved {
    type Target = Launched;
    fn deref(&self) -> &Launched {
        &self.0
    }
}

impl std::ops::DerefMut for Starved {
    fn deref_mut(&mut self) -> &mut Launched {
        &mut self.0
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_accepts_log_once_dials_fail_by_name_and_gone_clients_are_not_dialled() {
    let first = Origin::http().await;
    let second = Origin::http().await;
    // The blind tunnel's destination counts what reaches it.
    let tunnel_target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel_port = tunnel_target.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warden.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nproxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: {d}/ca.crt\n  ca_key: {d}/ca.key\n  intercept: none\nnetwork:\n  allow_cidrs: [127.0.0.0/8]\n  resolve:\n    origin.test: 127.0.0.1\nlimits:\n  request_header_timeout: 60s\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut w = tokio::task::block_in_place(|| Starved::start(&config, 64));
    // A kept-alive client connection, opened while descriptors remain.
    let mut kept = TcpStream::connect(w.proxy).await.unwrap();
    kept.write_all(format!("GET http://origin.test:{}/ HTTP/1.1\r\n\r\n", first.port()).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut kept).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Idle connections until warden can accept no more (the rest wait in the backlog).
    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(TcpStream::connect(w.proxy).await.unwrap());
    }
    tokio::task::block_in_place(|| w.wait_for(|l| l.contains("accept failed")));
    // A CONNECT queued behind them, whose client gives up before warden gets to it.
    let mut gone = TcpStream::connect(w.proxy).await.unwrap();
    gone.write_all(
        format!("CONNECT 127.0.0.1:{tunnel_port} HTTP/1.1\r\nX-Request-Id: gave-up\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    drop(gone);
    // A request that needs a new upstream connection cannot get a socket.
    kept.write_all(
        format!(
            "GET http://origin.test:{}/ HTTP/1.1\r\nX-Request-Id: no-fds\r\n\r\n",
            second.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    refusal(&mut kept, 502, "upstream_connect_failed").await;
    // The process stays out of descriptors a while, failing an accept every 100 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(held);
    let line = tokio::task::block_in_place(|| w.wait_for(|l| l.contains("gave-up")));
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["reason"], "client_error", "{line}");
    assert!(
        line["status"].is_null(),
        "not logged as a 200 tunnel: {line}"
    );
    let no_fds = w
        .drain()
        .iter()
        .find(|l| l.contains("no-fds"))
        .cloned()
        .expect("the failed dial was logged");
    let no_fds: Value = serde_json::from_str(&no_fds).unwrap();
    assert_eq!(no_fds["reason"], "upstream_connect_failed");
    assert!(
        no_fds["error"]
            .as_str()
            .is_some_and(|e| e.contains("out of file descriptors")),
        "{no_fds}"
    );
    let metrics = scrape(w.admin).await;
    let failed = metric_value(&metrics, "warden_accept_errors_total{cause=\"fds\"}").unwrap();
    assert!(failed >= 3.0, "accept failures counted: {failed}");
    let logged = w
        .drain()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(logged, 1, "one line per interval, however many failures");
    // Nothing was dialled for the client that had gone.
    let accepted = tokio::time::timeout(Duration::from_millis(50), tunnel_target.accept()).await;
    assert!(accepted.is_err(), "the tunnel target was dialled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_inside_a_tunnel_is_cut_at_the_head_timeout() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", QUICK).await;
    let authority = format!("origin.test:{}", origin.port());
    let mut t = w.connect(&authority).await;
    // The first bytes of a ClientHello record, then nothing more.
    t.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = Instant::now();
    assert_closed(&mut t).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let line =
        wait_log(|v| v["kind"] == "connect" && v["reason"] == "request_header_timeout").await;
    assert_eq!(line["host"], "origin.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_heads_at_once_are_all_cut_at_the_head_timeout() {
    let w = quick().await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut s = w.tcp().await;
        s.write_all(format!("GET http://origin.test/{i} HTTP/1.1\r\nX-Slow: ").as_bytes())
            .await
            .unwrap();
        clients.push(s);
    }
    let answers = futures_util::future::join_all(clients.into_iter().map(|mut s| async move {
        let (head, _) = read_response(&mut s).await;
        head
    }))
    .await;
    for head in &answers {
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    }
    // Every one within the bound, not each after its own per-read wait.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_upstream_head_echoing_the_credential_never_puts_it_in_the_log() {
    const CANARY: &str = "CANARY-badhead-5ecret";
    // The origin echoes the header it received inside a head that does not parse.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let head = read_head(&mut s).await;
            let echoed = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .unwrap_or("")
                .to_string();
            let resp = format!("HTTP/1.1 200 OK\r\nX-Echo: {echoed}\r\nnot a header\r\n\r\n");
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    let w = TestWarden::with(
        "auto",
        &format!(
            "credentials:\n  - host: \"origin.test:{port}\"\n    allow_plaintext: true\n    source: {{ type: static, value: \"{CANARY}\" }}\n"
        ),
    )
    .await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(
        format!(
            "GET http://origin.test:{port}/ HTTP/1.1\r\nX-Request-Id: bad-upstream-head\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let body = refusal(&mut s, 502, "upstream_error").await;
    assert!(!body.to_string().contains(CANARY));
    let line = log_for("bad-upstream-head").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("InvalidHTTPHeader")),
        "{line}"
    );
    for l in all_log_lines() {
        assert!(!l.contains(CANARY), "secret in a log line: {l}");
    }
}
