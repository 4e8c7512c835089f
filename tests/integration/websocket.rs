//! WebSockets through an intercepted tunnel and through plain HTTP, riding Pingora's upgrade
//! handling.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) async fn echo_100<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    for i in 0..100 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
    }
    for i in 0..100 {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("echo arrived")
            .unwrap()
            .unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("message {i}"));
    }
    ws.send(Message::binary(vec![7u8; 70_000])).await.unwrap();
    let big = ws.next().await.unwrap().unwrap();
    assert_eq!(big.into_data().len(), 70_000);
    ws.close(None).await.unwrap();
}

pub(crate) async fn check_log(id: &str) {
    let line = log_for(id).await;
    assert_eq!(line["kind"], "websocket");
    assert_eq!(line["status"], 101);
    assert_eq!(line["upgraded"], true);
    assert!(line["bytes_in"].as_u64().unwrap() > 70_000, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 70_000, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_an_intercepted_tunnel() {
    let origin = WsOrigin::start(true).await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("ws.test:{}", origin.addr.port());
    let tls = w.tls_tunnel(&authority, "ws.test").await;
    let mut req = format!("wss://{authority}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-request-id", "ws-intercepted".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    echo_100(&mut ws).await;
    check_log("ws-intercepted").await;
}

/// Opens a WebSocket with an absolute-form upgrade request to the proxy.
pub(crate) async fn plain_ws(
    w: &TestWarden,
    authority: &str,
    id: &str,
) -> WebSocketStream<tokio::net::TcpStream> {
    plain_ws_with(w, authority, id, "").await
}

/// [`plain_ws`] with extra header lines (each ending in CRLF) on the upgrade request.
pub(crate) async fn plain_ws_with(
    w: &TestWarden,
    authority: &str,
    id: &str,
    headers: &str,
) -> WebSocketStream<tokio::net::TcpStream> {
    plain_ws_over(w.tcp().await, authority, id, headers).await
}

/// [`plain_ws_with`] on a connection to warden already open (and perhaps already written to).
pub(crate) async fn plain_ws_over(
    mut s: tokio::net::TcpStream,
    authority: &str,
    id: &str,
    headers: &str,
) -> WebSocketStream<tokio::net::TcpStream> {
    let req = format!(
        "GET http://{authority}/ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Request-Id: {id}\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    WebSocketStream::from_raw_socket(s, Role::Client, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_plain_http() {
    let origin = WsOrigin::start(false).await;
    let w = TestWarden::with("all", "").await;
    let authority = format!("ws.test:{}", origin.addr.port());
    let mut ws = plain_ws(&w, &authority, "ws-plain").await;
    echo_100(&mut ws).await;
    check_log("ws-plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_after_the_idle_timeout() {
    let origin = WsOrigin::start(false).await;
    let w = TestWarden::with("all", "limits:\n  idle_timeout: 1s\n").await;
    let authority = format!("ws.test:{}", origin.addr.port());
    let mut ws = plain_ws(&w, &authority, "ws-idle").await;
    // Nothing is sent; warden must end the connection on its own.
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("closed by warden");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let line = log_for("ws-idle").await;
    assert_eq!(line["upgraded"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_summarize_websocket_frames_and_mask_secrets_in_them() {
    let origin = WsOrigin::start(false).await;
    let w = TestWarden::with("all", "log:\n  format: text\n").await;
    let authority = format!("ws.test:{}", origin.addr.port());
    let mut ws = plain_ws_with(
        &w,
        &authority,
        "ws-frames",
        "Authorization: Bearer sk-canary-4242\r\n",
    )
    .await;
    let sent = [
        Message::text("hello"),
        Message::text("token sk-canary-4242"),
        Message::binary(vec![1u8, 2, 3]),
    ];
    for m in &sent {
        ws.send(m.clone()).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("echo arrived")
            .unwrap()
            .unwrap();
        assert_eq!(&echo, m);
    }
    ws.close(None).await.unwrap();
    let line = wait_line(|l| l.contains("request_id=ws-frames")).await;
    // Client frames are masked on the wire; the summary shows them unmasked, secrets aside.
    let frames = r#"text(5) \"hello\", text(20) \"token [redacted]****\", binary(3)"#;
    assert!(
        line.contains(&format!(r#"request_body="{frames}, close(0)""#)),
        "{line}"
    );
    assert!(
        line.contains(&format!(r#"response_body="{frames}"#)),
        "{line}"
    );
    assert!(!line.contains("sk-canary"), "{line}");
}
