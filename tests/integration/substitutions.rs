//! Placeholder substitution: the agent holds a placeholder; the secret appears only on the
//! wire to its host.

use crate::common::*;
use serde_json::Value;

pub(crate) const SECRET: &str = "CANARY-subst/9+z";
pub(crate) const PLACEHOLDER: &str = "WARDEN_EXAMPLE_TOKEN";

/// warden with one substitution toward `origin.test:port`.
pub(crate) async fn warden(port: u16) -> TestWarden {
    TestWarden::start(&default_yaml(
        "auto",
        "",
        &format!(
            "substitutions:\n  - host: origin.test:{port}\n    placeholder: {PLACEHOLDER}\n    source: {{ type: static, value: \"{SECRET}\" }}\n"
        ),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_become_the_secret_in_headers_basic_auth_query_path_and_body() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = warden(port).await;
    let client = w.client();
    // A JSON body whose placeholder is split across chunks.
    let body = format!("{{\"token\":\"{PLACEHOLDER}\",\"n\":1}}");
    let (a, b) = body.split_at(14);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(a.as_bytes().to_vec()), Ok(b.as_bytes().to_vec())];
    let r = client
        .post(format!(
            "https://origin.test:{port}/v1/{PLACEHOLDER}/x?key={PLACEHOLDER}&n=2"
        ))
        .header("x-api-key", PLACEHOLDER)
        .basic_auth("user", Some(PLACEHOLDER))
        .header("x-request-id", "subst-1")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed = r.text().await.unwrap();
    let seen = origin.seen();
    let s = &seen[0];
    assert_eq!(s.header("x-api-key"), Some(SECRET));
    let basic = s
        .header("authorization")
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let decoded = openssl::base64::decode_block(basic).unwrap();
    assert_eq!(decoded, format!("user:{SECRET}").as_bytes());
    assert_eq!(
        s.uri,
        "/v1/CANARY-subst%2F9%2Bz/x?key=CANARY-subst%2F9%2Bz&n=2"
    );
    let v: Value = serde_json::from_str(&echoed).expect("echo JSON");
    let want = format!("{{\"token\":\"{SECRET}\",\"n\":1}}");
    assert_eq!(v["body_sha256"], sha256_hex(want.as_bytes()).as_str());
    // The origin's echo of the secret never reaches the agent.
    assert!(!echoed.contains(SECRET), "{echoed}");
    // A Content-Length body changes length: it goes upstream chunked, with the right bytes.
    let fixed = format!("a={PLACEHOLDER}");
    let r = client
        .put(format!("https://origin.test:{port}/echo"))
        .body(fixed)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], format!("a={SECRET}").len());
    let last = origin.seen().last().unwrap().clone();
    assert!(last.header("content-length").is_none());
    assert_eq!(last.header("transfer-encoding"), Some("chunked"));
    let line = log_for("subst-1").await;
    assert_eq!(
        line["path"],
        format!("/v1/{PLACEHOLDER}/x?key=[redacted]&n=[redacted]").as_str()
    );
    for l in all_log_lines() {
        assert!(!l.contains(SECRET), "secret in log: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_sent_to_another_host_is_left_alone_and_flagged() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(&default_yaml(
        "all",
        "",
        &format!(
            "substitutions:\n  - host: origin.test:{port}\n    placeholder: {PLACEHOLDER}\n    source: {{ type: static, value: \"{SECRET}\" }}\n"
        ),
    ))
    .await;
    let r = w
        .client()
        .get(format!("https://a.test:{port}/echo?k={PLACEHOLDER}"))
        .header("x-api-key", PLACEHOLDER)
        .header("x-request-id", "subst-foreign")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = &origin.seen()[0];
    assert_eq!(s.header("x-api-key"), Some(PLACEHOLDER));
    assert!(s.uri.contains(PLACEHOLDER));
    assert_eq!(
        log_for("subst-foreign").await["alert"],
        "placeholder_to_foreign_host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_secret_echoed_encoded_is_masked_in_headers_body_and_log() {
    use crate::credentials::{fetch_echo, leaked_forms, EncodingEcho};
    let origin = EncodingEcho::start().await;
    let w = TestWarden::start(&default_yaml(
        "auto",
        "",
        &format!(
            "substitutions:\n  - host: origin.test:{}\n    placeholder: {PLACEHOLDER}\n    source: {{ type: static, value: \"{SECRET}\" }}\nlog:\n  body_capture_bytes: 8192\n",
            origin.addr.port()
        ),
    ))
    .await;
    let (headers, body, line) = fetch_echo(
        &w,
        &origin,
        "subst-enc",
        Some(&format!("Bearer {PLACEHOLDER}")),
    )
    .await;
    assert_eq!(origin.sent.lock().unwrap().as_slice(), &[body.len()]);
    assert!(body.lines().all(|l| l.contains("[redacted]")), "{body}");
    assert_eq!(
        line["response_body"].as_str(),
        Some(body.as_str()),
        "{line}"
    );
    let logged = line.to_string();
    for form in leaked_forms(SECRET) {
        assert!(!headers.contains(&form), "{form} in headers:\n{headers}");
        assert!(!body.contains(&form), "{form} in body:\n{body}");
        assert!(!logged.contains(&form), "{form} in the log line: {logged}");
    }
}
