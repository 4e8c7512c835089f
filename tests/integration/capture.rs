//! Body capture for the log line: bounded, and never in the way of a stream.

use crate::common::*;
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_does_not_delay_an_sse_stream() {
    let origin = SseOrigin::start().await;
    let w = TestWarden::with("all", "log:\n  body_capture_bytes: 8192\n").await;
    let r = w
        .client()
        .get(format!("http://origin.test:{}/events", origin.addr.port()))
        .header("x-request-id", "sse-1")
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    // The origin holds the second event until this one has arrived.
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("first event arrived while the origin still held the second")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    origin.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: second\n\n");
    let line = log_for("sse-1").await;
    assert_eq!(line["response_body"], "data: first\n\ndata: second\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_is_bounded_and_can_be_turned_off() {
    let origin = Origin::http().await;
    let w = TestWarden::with("all", "log:\n  body_capture_bytes: 16\n").await;
    w.client()
        .post(format!("http://origin.test:{}/bytes/100", origin.port()))
        .header("x-request-id", "cap-16")
        .body("0123456789abcdefghijklmnop")
        .send()
        .await
        .unwrap();
    let line = log_for("cap-16").await;
    assert_eq!(line["request_body"], "0123456789abcdef…");
    assert_eq!(
        line["response_body"].as_str().unwrap().chars().count(),
        16 + 1
    );
    let off = TestWarden::with("all", "log:\n  body_capture_bytes: 0\n").await;
    off.client()
        .post(format!("http://origin.test:{}/echo", origin.port()))
        .header("x-request-id", "cap-0")
        .body("hello")
        .send()
        .await
        .unwrap();
    let line = log_for("cap-0").await;
    assert!(line["request_body"].is_null());
    assert!(line["response_body"].is_null());
}
