//! `proxy.proxy_protocol`: a real HAProxy in TCP mode in front of warden (`send-proxy-v2` and
//! `send-proxy`), clients on another loopback address than the balancer's, and hand-made
//! headers for what a balancer never sends (broken, oversized, split, pipelined).

use crate::common::*;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The clients' source address: HAProxy listens and dials from 127.0.0.1, so a log line that
/// shows this one took it from the header.
const CLIENT_IP: &str = "127.0.0.2";

/// A real HAProxy forwarding TCP to warden with a PROXY header, killed on drop.
struct Haproxy {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Haproxy {
    /// Starts `haproxy -db` in front of `warden` with `send` (`send-proxy-v2` or
    /// `send-proxy`), ready once its port accepts.
    async fn start(warden: SocketAddr, send: &str) -> Haproxy {
        let port = closed_port().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend in\n  bind 127.0.0.1:{port}\n  default_backend warden\nbackend warden\n  server w {warden} {send}\n"
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy runs (installed by .ci/deps)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy did not listen on {addr}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Haproxy {
            addr,
            _dir: dir,
            _child: child,
        }
    }
}

/// A TCP connection to `to` from [`CLIENT_IP`] (Linux routes all of 127/8 to lo).
async fn from_client_ip(to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{CLIENT_IP}:0").parse().unwrap()).unwrap();
    let s = s.connect(to).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn warden_yaml(intercept: &str, mode: &str, extra: &str) -> String {
    default_yaml(
        intercept,
        "",
        &format!("admin:\n  listen: 127.0.0.1:0\n{extra}"),
    )
    .replace(
        "  listen: 127.0.0.1:0\ntls:",
        &format!("  listen: 127.0.0.1:0\n  proxy_protocol: {mode}\ntls:"),
    )
}

async fn start(intercept: &str, mode: &str, extra: &str) -> TestWarden {
    let w = TestWarden::start(&warden_yaml(intercept, mode, extra)).await;
    let conf = w.running.as_ref().unwrap().shared().snapshot.load();
    assert_eq!(
        format!("{:?}", conf.proxy_protocol).to_lowercase(),
        mode,
        "the key took effect"
    );
    w
}

fn get(port: u16, id: &str) -> String {
    format!("GET http://origin.test:{port}/echo HTTP/1.1\r\nHost: origin.test:{port}\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n")
}

/// A v1 header naming `client`.
fn v1(client: &str) -> String {
    let client: SocketAddr = client.parse().unwrap();
    format!(
        "PROXY TCP4 {} 127.0.0.1 {} 9080\r\n",
        client.ip(),
        client.port()
    )
}

/// A v2 PROXY header naming `client`, with a TLV to skip.
fn v2(client: &str) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Type, Version};
    let addrs = (
        client.parse::<SocketAddr>().unwrap(),
        "127.0.0.1:9080".parse().unwrap(),
    );
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addrs)
        .write_tlv(Type::UniqueId, b"balancer-id")
        .unwrap()
        .build()
        .unwrap()
}

async fn denials(w: &TestWarden, reason: &str) -> f64 {
    let text = w.scrape().await;
    metric_value(
        &text,
        &format!("warden_denials_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Asserts warden closes `s` without writing a byte.
async fn assert_closed_silently(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("connection was not closed"),
    }
}

/// Through HAProxy: a plain request and a request in a tunnel (intercepted with `all`, blind
/// with `none`) each log the client's own address, not the balancer's.
async fn through_haproxy(send: &str, intercept: &str) {
    let origin = Origin::http().await;
    let https = Origin::https().await;
    let w = start(intercept, "required", "").await;
    let lb = Haproxy::start(w.addr, send).await;

    let mut s = from_client_ip(lb.addr).await;
    let me = s.local_addr().unwrap();
    let id = format!("pp-{send}-plain");
    s.write_all(get(origin.port(), &id).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let line = log_for(&id).await;
    assert_eq!(line["client_addr"], me.to_string(), "{line}");

    let mark = log_mark();
    let mut s = from_client_ip(lb.addr).await;
    let me = s.local_addr().unwrap();
    let authority = format!("origin.test:{}", https.port());
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let ca = if intercept == "all" {
        w.ca_pem.clone()
    } else {
        origin_ca().pem.clone()
    };
    let mut tls = tls_connect(s, "origin.test", &ca).await;
    let id = format!("pp-{send}-tunnel");
    tls.write_all(
        format!("GET /echo HTTP/1.1\r\nHost: {authority}\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(tls);
    let me = me.to_string();
    let line: Value = if intercept == "all" {
        log_for(&id).await
    } else {
        wait_log_since(mark, move |v| {
            v["kind"] == "tunnel" && v["client_addr"] == me.as_str()
        })
        .await
    };
    assert_eq!(
        line["client_addr"].as_str().unwrap().split(':').next(),
        Some(CLIENT_IP),
        "{line}"
    );

    // Straight to warden, from the same address: no header, refused.
    let before = denials(&w, "proxy_protocol_missing").await;
    let mark = log_mark();
    let mut s = from_client_ip(w.addr).await;
    let me = s.local_addr().unwrap().to_string();
    s.write_all(get(origin.port(), "pp-direct").as_bytes())
        .await
        .unwrap();
    assert_closed_silently(&mut s).await;
    let line = wait_log_since(mark, move |v| v["client_addr"] == me.as_str()).await;
    assert_eq!(line["reason"], "proxy_protocol_missing", "{line}");
    assert!(line["status"].is_null(), "nothing was answered: {line}");
    assert_eq!(denials(&w, "proxy_protocol_missing").await, before + 1.0);
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.header("x-request-id") != Some("pp-direct")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_gives_warden_the_clients_address_in_plain_and_intercepted_requests()
{
    through_haproxy("send-proxy-v2", "all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_gives_warden_the_clients_address_in_plain_requests_and_blind_tunnels(
) {
    through_haproxy("send-proxy", "none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_reads_a_header_when_there_is_one_and_serves_plain_connections_too() {
    let origin = Origin::http().await;
    let w = start("all", "optional", "").await;
    // Header and request in one write: the request after the header is not lost.
    let mut s = w.tcp().await;
    let mut bytes = v2("192.0.2.10:40001");
    bytes.extend_from_slice(get(origin.port(), "pp-opt-header").as_bytes());
    s.write_all(&bytes).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        log_for("pp-opt-header").await["client_addr"],
        "192.0.2.10:40001"
    );

    let mut s = w.tcp().await;
    let me = s.local_addr().unwrap().to_string();
    s.write_all(get(origin.port(), "pp-opt-plain").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(log_for("pp-opt-plain").await["client_addr"], me);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_never_reads_a_header_so_one_is_a_bad_request() {
    let origin = Origin::http().await;
    let w = start("all", "off", "").await;
    let mark = log_mark();
    let mut s = w.tcp().await;
    let me = s.local_addr().unwrap().to_string();
    let bytes = format!("{}{}", v1("192.0.2.11:40002"), get(origin.port(), "pp-off"));
    s.write_all(bytes.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 400, "malformed_request");
    let line = wait_log_since(mark, move |v| v["client_addr"] == me.as_str()).await;
    assert_eq!(line["reason"], "malformed_request");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_truncated_oversized_and_late_headers_are_refused_with_a_reason_and_counted() {
    let w = start("all", "required", "limits:\n  request_header_timeout: 1s\n").await;
    let mut oversized = ppp::v2::PROTOCOL_PREFIX.to_vec();
    oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let cases: Vec<(&str, Vec<u8>, bool, &str, &str)> = vec![
        (
            "garbage",
            b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n".to_vec(),
            false,
            "proxy_protocol_invalid",
            "PROXY v1 header",
        ),
        (
            "bad v2 version",
            [ppp::v2::PROTOCOL_PREFIX, &[0x31u8, 0x11, 0, 12][..]].concat(),
            false,
            "proxy_protocol_invalid",
            "PROXY v2 header",
        ),
        (
            "oversized",
            oversized,
            false,
            "proxy_protocol_invalid",
            "PROXY header over 4096 bytes",
        ),
        (
            "truncated",
            b"PROXY TCP4 192.0.2.1".to_vec(),
            true,
            "proxy_protocol_invalid",
            "closed mid-header",
        ),
        (
            "late",
            b"PROXY TCP4 192.0.2.1".to_vec(),
            false,
            "request_header_timeout",
            "PROXY header incomplete",
        ),
    ];
    for (what, bytes, close, reason, error) in cases {
        let before = denials(&w, reason).await;
        let mark = log_mark();
        let mut s = w.tcp().await;
        let me = s.local_addr().unwrap().to_string();
        s.write_all(&bytes).await.unwrap();
        if close {
            s.shutdown().await.unwrap();
        }
        assert_closed_silently(&mut s).await;
        let line = wait_log_since(mark, move |v| v["client_addr"] == me.as_str()).await;
        assert_eq!(line["reason"], reason, "{what}: {line}");
        assert_error_field(&line, error);
        assert_eq!(denials(&w, reason).await, before + 1.0, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_split_over_segments_is_read_whole_and_the_request_after_it_served() {
    let origin = Origin::http().await;
    let w = start("all", "required", "").await;
    for (id, header) in [
        ("pp-split-v2", v2("192.0.2.12:40003")),
        ("pp-split-v1", v1("192.0.2.12:40004").into_bytes()),
    ] {
        let mut s = w.tcp().await;
        s.set_nodelay(true).unwrap();
        // Each piece its own segment: the signature cut inside, then the rest.
        for piece in header.chunks(5) {
            s.write_all(piece).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        }
        s.write_all(get(origin.port(), id).as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{id}: {head}");
        let want = if id.ends_with("v2") {
            "192.0.2.12:40003"
        } else {
            "192.0.2.12:40004"
        };
        assert_eq!(log_for(id).await["client_addr"], want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_local_header_leaves_the_peer_as_the_client() {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let origin = Origin::http().await;
    let w = start("all", "required", "").await;
    let mut s = w.tcp().await;
    let me = s.local_addr().unwrap().to_string();
    let addrs = ("192.0.2.13:1".parse::<SocketAddr>().unwrap(), w.addr);
    let mut bytes = Builder::with_addresses(Version::Two | Command::Local, Protocol::Stream, addrs)
        .build()
        .unwrap();
    bytes.extend_from_slice(get(origin.port(), "pp-local").as_bytes());
    s.write_all(&bytes).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(log_for("pp-local").await["client_addr"], me);
}

#[test]
fn check_warns_that_optional_lets_anyone_claim_an_address() {
    let run = |mode: &str| {
        check_config(&format!(
            "version: 1\nproxy:\n  listen: 127.0.0.1:0\n  proxy_protocol: {mode}\ntls:\n  ca_cert: ca.crt\n  ca_key: ca.key\n"
        ))
    };
    let (code, out) = run("optional");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("proxy.proxy_protocol") && out.contains("claim any client address"),
        "{out}"
    );
    let (code, out) = run("required");
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("claim any client address"), "{out}");
    let (code, out) = run("on");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("proxy_protocol"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_in_a_tunnel_behind_haproxy_log_the_clients_address() {
    let origin = Origin::https_h2().await;
    let w = start("all", "required", "").await;
    let lb = Haproxy::start(w.addr, "send-proxy-v2").await;
    let mut s = from_client_ip(lb.addr).await;
    let me = s.local_addr().unwrap().to_string();
    let authority = format!("origin.test:{}", origin.port());
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let (tls, picked) =
        crate::http2::tls_alpn(s, "origin.test", &w.ca_pem, crate::http2::H2_H1).await;
    assert_eq!(picked.as_deref(), Some(&b"h2"[..]), "warden picks h2");
    let (mut send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for id in ["pp-h2-first", "pp-h2-second"] {
        let req = http::Request::builder()
            .uri(format!("https://{authority}/echo"))
            .header("x-request-id", id)
            .body(())
            .unwrap();
        let (parts, _, _) = crate::http2::exchange(&mut send, req, b"").await;
        assert_eq!(parts.status, 200, "{id}");
        let line = log_for(id).await;
        assert_eq!(line["http_version"], "2", "{line}");
        assert_eq!(line["client_addr"], me.as_str(), "{line}");
    }
    assert!(origin.seen().iter().all(|s| s.version == "HTTP/2.0"));
    // No metric is labelled by address: `client` is the identity ("-" without auth).
    let text = w.scrape().await;
    assert_eq!(
        metric_value(
            &text,
            "warden_requests_total{client=\"-\",http_version=\"2\",kind=\"intercepted\",status_class=\"2xx\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(!text.contains(CLIENT_IP), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_after_a_v2_header_echo_and_log_the_headers_address() {
    // Plain ws:// in absolute form, after a hand-made header with a TLV to skip.
    let origin = WsOrigin::start(false).await;
    let w = start("all", "required", "").await;
    let authority = format!("ws.test:{}", origin.addr.port());
    let mut s = w.tcp().await;
    s.write_all(&v2("192.0.2.20:40020")).await.unwrap();
    let mut ws = crate::websocket::plain_ws_over(s, &authority, "pp-ws-plain", "").await;
    crate::websocket::echo_100(&mut ws).await;
    drop(ws);
    crate::websocket::check_log("pp-ws-plain").await;
    assert_eq!(
        log_for("pp-ws-plain").await["client_addr"],
        "192.0.2.20:40020"
    );

    // wss:// in an intercepted tunnel, HAProxy's send-proxy-v2 in front.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let origin = WsOrigin::start(true).await;
    let lb = Haproxy::start(w.addr, "send-proxy-v2").await;
    let mut s = from_client_ip(lb.addr).await;
    let me = s.local_addr().unwrap().to_string();
    let authority = format!("ws.test:{}", origin.addr.port());
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let tls = tls_connect(s, "ws.test", &w.ca_pem).await;
    let mut req = format!("wss://{authority}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-request-id", "pp-ws-tunnel".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    crate::websocket::echo_100(&mut ws).await;
    drop(ws);
    crate::websocket::check_log("pp-ws-tunnel").await;
    assert_eq!(log_for("pp-ws-tunnel").await["client_addr"], me.as_str());
}
