//! Credential injection: the agent never holds the secret; warden adds it only for the
//! connection identity it belongs to, over verified TLS, after policy allowed the request.

use crate::common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const CANARY: &str = "CANARY-cred-7f3a9";

fn header_of(seen: &Seen, name: &str) -> Option<String> {
    seen.header(name).map(str::to_string)
}

async fn warden_with_credentials(intercept: &str, network: &str, credentials: &str) -> TestWarden {
    TestWarden::start(&network_yaml(
        intercept,
        &format!("  allow_cidrs: [127.0.0.0/8]\n{network}"),
        &format!("credentials:\n{credentials}"),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_is_injected_only_for_its_host_over_tls_and_overwrites_the_client_value() {
    let origin = Origin::https().await;
    let plain = Origin::http().await;
    let port = origin.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!(
            "  - host: origin.test:{port}\n    grant: github\n    source: {{ type: static, value: {CANARY} }}\n  - host: origin.test:{}\n    header: x-api-key\n    source: {{ type: static, value: {CANARY} }}\n",
            plain.port()
        ),
    )
    .await;
    // auto intercepts the credential's host: a client trusting only warden's CA gets through.
    let client = w.client();
    let r = client
        .get(format!("https://origin.test:{port}/echo"))
        .header("authorization", "Bearer agent-supplied")
        .header("x-request-id", "cred-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = origin.seen();
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
    let line = log_for("cred-1").await;
    assert_eq!(line["injected"], "authorization");
    assert_eq!(line["grant"], "github");
    // A sibling host (same origin, other name) gets nothing.
    let r = client
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await;
    // a.test has no credential, so auto tunnels it blind and warden's CA does not apply.
    assert!(r.is_err());
    // Plain HTTP to the credential's host: no injection without allow_plaintext.
    let r = client
        .get(format!("http://origin.test:{}/echo", plain.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(header_of(&plain.seen()[0], "x-api-key").is_none());
    // No log line holds the secret (the metrics scrape is checked in the grants test).
    for l in all_log_lines() {
        assert!(!l.contains(CANARY), "secret in log: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_trick_gets_no_credential() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = warden_with_credentials(
        "all",
        "",
        &format!("  - host: origin.test:{port}\n    source: {{ type: static, value: {CANARY} }}\n"),
    )
    .await;
    // Tunnel to a.test, claim to be origin.test in Host: refused, nothing injected or sent.
    let mut s = w.tls_tunnel(&format!("a.test:{port}"), "a.test").await;
    s.write_all(format!("GET /echo HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 421, "host_mismatch");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_credential_fails_closed_and_a_rotated_file_is_picked_up() {
    let origin = Origin::https().await;
    let port = origin.port();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let w = warden_with_credentials(
        "all",
        "",
        &format!(
            "  - host: origin.test:{port}\n    source: {{ type: file, path: {} }}\n  - host: a.test:{port}\n    grant: broken\n    source: {{ type: env, var: WARDEN_TEST_UNSET_CREDENTIAL }}\n",
            token.display()
        ),
    )
    .await;
    let client = w.client();
    let r = client
        .get(format!("https://a.test:{port}/echo"))
        .header("x-request-id", "cred-unavailable")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "credential_unavailable");
    assert!(origin.seen().is_empty(), "nothing sent upstream");
    assert_eq!(origin.connections(), 0, "not even a connection");
    let line = log_for("cred-unavailable").await;
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("grant broken (env WARDEN_TEST_UNSET_CREDENTIAL)"),
        "{line}"
    );
    let url = format!("https://origin.test:{port}/echo");
    client.get(&url).send().await.unwrap();
    std::fs::write(&token, "rotated-token-2\n").unwrap();
    client.get(&url).send().await.unwrap();
    let seen = origin.seen();
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some("Bearer first-token")
    );
    assert_eq!(
        header_of(&seen[1], "authorization").as_deref(),
        Some("Bearer rotated-token-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_allow_credential_hosts_under_strict_policy_and_injections_are_counted() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(
        &network_yaml(
            "auto",
            "  allow_cidrs: [127.0.0.0/8]\n  policy: strict\n  grants: [github]\n",
            &format!(
                "credentials:\n  - host: origin.test:{port}\n    grant: github\n    source: {{ type: static, value: {CANARY} }}\nadmin:\n  listen: 127.0.0.1:0\n"
            ),
        ),
    )
    .await;
    let client = w.client();
    let ok = client
        .get(format!("https://origin.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let denied = client
        .get(format!("http://a.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let metrics = w.scrape().await;
    assert!(
        metrics.contains("warden_credential_injections_total{grant=\"github\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(CANARY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_never_reads_its_credential() {
    let origin = Origin::http().await;
    let port = origin.port();
    // The credential cannot be read: if policy ran after the read, this would be a 502.
    let w = warden_with_credentials(
        "all",
        &format!("  deny: [\"origin.test:{port}\"]\n"),
        &format!(
            "  - host: origin.test:{port}\n    allow_plaintext: true\n    source: {{ type: env, var: WARDEN_TEST_NEVER_READ }}\n"
        ),
    )
    .await;
    let r = w
        .client()
        .get(format!("http://origin.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "policy_denied_host");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_echoing_the_secret_is_scrubbed_before_the_agent_sees_it() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!("  - host: origin.test:{port}\n    source: {{ type: static, value: {CANARY} }}\n"),
    )
    .await;
    let client = w.client();
    // The JSON echo carries every request header back in the body.
    let body = client
        .get(format!("https://origin.test:{port}/echo"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(CANARY), "secret echoed in body: {body}");
    assert!(body.contains("Bearer [redacted]"), "{body}");
    let v: Value = serde_json::from_str(&body).expect("still valid JSON (same length)");
    assert!(v["headers"].is_array());
    // And in a response header.
    let r = client
        .get(format!("https://origin.test:{port}/echo-header"))
        .send()
        .await
        .unwrap();
    let echoed = r.headers()["x-echo-auth"].to_str().unwrap().to_string();
    assert!(!echoed.contains(CANARY), "{echoed}");
    assert!(echoed.starts_with("Bearer [redacted]"), "{echoed}");
    // The origin did receive it, uncompressed responses requested.
    let seen = origin.seen();
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
    assert_eq!(
        header_of(&seen[0], "accept-encoding").as_deref(),
        Some("identity")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_apply_to_websocket_upgrades() {
    let origin = Origin::https().await; // hyper origin: records the upgrade request's headers
    let port = origin.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!("  - host: ws.test:{port}\n    source: {{ type: static, value: {CANARY} }}\n"),
    )
    .await;
    let authority = format!("ws.test:{port}");
    let mut s = w.tls_tunnel(&authority, "ws.test").await;
    s.write_all(format!("GET /ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let _ = read_response(&mut s).await;
    let seen = origin.seen();
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(
        header_of(&seen[0], "authorization").as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
}

/// A canary whose base64 holds `+` and `/` at every alignment, and that percent-encoders
/// disagree on (`?~>~ ()!` and a space).
const ENCODED_CANARY: &str = "CANARY-enc-7f3a9?~>~ (x)!";

pub(crate) fn b64(engine: &base64::engine::GeneralPurpose, data: &str) -> String {
    base64::Engine::encode(engine, data)
}

/// Percent-encodes every byte but letters, digits and `keep`, in upper- or lower-case hex;
/// `plus` writes a space as `+`, as forms do.
fn pct(s: &str, keep: &str, lower: bool, plus: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b' ' if plus => "+".to_string(),
            _ if b.is_ascii_alphanumeric() || keep.as_bytes().contains(&b) => {
                (b as char).to_string()
            }
            _ if lower => format!("%{b:02x}"),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every form of `secret` an agent must not see: raw; the base64 characters that depend on it
/// alone at each alignment, standard and URL-safe; the percent-encodings of
/// `encodeURIComponent`, Python's `quote` and forms, in either case.
pub(crate) fn leaked_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let mut forms = vec![secret.to_string()];
    for engine in [&STANDARD, &URL_SAFE] {
        for offset in 0..3usize {
            let e = b64(engine, &format!("{}{secret}", "\0".repeat(offset)));
            let (start, end) = ((8 * offset).div_ceil(6), 8 * (offset + secret.len()) / 6);
            forms.push(e[start..end].to_string());
        }
    }
    for lower in [false, true] {
        forms.push(pct(secret, "-_.!~*'()", lower, false));
        forms.push(pct(secret, "-_.~/", lower, false));
        forms.push(pct(secret, "*-._", lower, true));
    }
    forms
}

/// An HTTPS origin that answers every request with its `Authorization` echoed in encoded forms:
/// in response headers, and in a chunked body sent a few bytes per chunk, each chunk its own
/// write, so every form reaches warden cut across chunks. Records the body lengths it sent.
pub(crate) struct EncodingEcho {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) sent: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl EncodingEcho {
    pub(crate) async fn start() -> EncodingEcho {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = std::sync::Arc::new(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES)));
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    let head = read_head(&mut s).await;
                    let v = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(": ")?;
                            name.eq_ignore_ascii_case("authorization").then_some(value)
                        })
                        .unwrap_or_default()
                        .to_string();
                    let secret = v.strip_prefix("Bearer ").unwrap_or(&v);
                    let body = [
                        format!("raw: {v}"),
                        format!("b64-0: {}", b64(&STANDARD, secret)),
                        format!("b64-1: {}", b64(&STANDARD, &v)),
                        format!("b64-2: {}", b64(&STANDARD, &format!("user:{secret}"))),
                        format!("url-0: {}", b64(&URL_SAFE, secret)),
                        format!("url-1: {}", b64(&URL_SAFE_NO_PAD, &format!("x{secret}"))),
                        format!("url-2: {}", b64(&URL_SAFE, &format!("xy{secret}"))),
                        format!("uri-component: {}", pct(&v, "-_.!~*'()", false, false)),
                        format!("uri-component-lower: {}", pct(&v, "-_.!~*'()", true, false)),
                        format!("quote: {}", pct(&v, "-_.~/", false, false)),
                        format!("form: {}", pct(&v, "*-._", false, true)),
                        String::new(),
                    ]
                    .join("\n");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\nx-echo-b64: {}\r\nx-echo-url: {}\r\nx-echo-pct: {}\r\n\r\n",
                        b64(&STANDARD, &v),
                        b64(&URL_SAFE, &format!("xy{secret}")),
                        pct(&v, "-_.!~*'()", false, false),
                    );
                    record.lock().unwrap().push(body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let mut rest = body.as_bytes();
                    for size in (1..=7).cycle() {
                        if rest.is_empty() {
                            break;
                        }
                        let (piece, more) = rest.split_at(size.min(rest.len()));
                        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                        chunk.extend_from_slice(piece);
                        chunk.extend_from_slice(b"\r\n");
                        if s.write_all(&chunk).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                        rest = more;
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                    let _ = s.shutdown().await;
                });
            }
        });
        EncodingEcho {
            addr,
            sent,
            _task: task,
        }
    }
}

/// Fetches `/` from the encoding echo through `w` with request id `id` (and `authorization`,
/// if given); returns what the agent got (head values and body) and the request's log line.
pub(crate) async fn fetch_echo(
    w: &TestWarden,
    origin: &EncodingEcho,
    id: &str,
    authorization: Option<&str>,
) -> (String, String, Value) {
    let mut req = w
        .client()
        .get(format!("https://origin.test:{}/", origin.addr.port()))
        .header("x-request-id", id);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers: String = r
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let body = r.text().await.unwrap();
    (headers, body, log_for(id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_echoed_encoded_is_masked_in_headers_body_and_log() {
    let origin = EncodingEcho::start().await;
    let port = origin.addr.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!(
            "  - host: origin.test:{port}\n    source: {{ type: static, value: '{ENCODED_CANARY}' }}\nlog:\n  body_capture_bytes: 8192\n"
        ),
    )
    .await;
    let (headers, body, line) = fetch_echo(&w, &origin, "enc-1", None).await;
    // Same length as sent, every form cut across chunks, and each line masked.
    assert_eq!(origin.sent.lock().unwrap().as_slice(), &[body.len()]);
    assert_eq!(body.lines().count(), 11, "{body}");
    for l in body.lines() {
        assert!(l.contains("[redacted]"), "not masked: {l}");
    }
    for h in ["x-echo-b64", "x-echo-url", "x-echo-pct"] {
        assert!(headers.contains(&format!("{h}: ")), "{headers}");
    }
    let logged = line.to_string();
    assert_eq!(
        line["response_body"].as_str(),
        Some(body.as_str()),
        "{line}"
    );
    let forms = leaked_forms(ENCODED_CANARY);
    // The URL-safe alphabet is really exercised.
    assert!(
        forms[1..4].iter().all(|f| f.contains(['+', '/'])),
        "{forms:?}"
    );
    for form in &forms {
        assert!(
            !headers.contains(form.as_str()),
            "{form} in headers:\n{headers}"
        );
        assert!(!body.contains(form.as_str()), "{form} in body:\n{body}");
        assert!(
            !logged.contains(form.as_str()),
            "{form} in the log line: {logged}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_too_short_for_its_own_base64_is_masked_inside_the_encoded_header_value() {
    let origin = EncodingEcho::start().await;
    let port = origin.addr.port();
    let w = warden_with_credentials(
        "auto",
        "",
        &format!("  - host: origin.test:{port}\n    source: {{ type: static, value: k3y! }}\nlog:\n  body_capture_bytes: 8192\n"),
    )
    .await;
    let (headers, body, line) = fetch_echo(&w, &origin, "enc-short", None).await;
    use base64::engine::general_purpose::STANDARD;
    let encoded = b64(&STANDARD, "Bearer k3y!");
    let core = &encoded[..encoded.len() - 2];
    assert!(!headers.contains(core), "{headers}");
    assert!(headers.contains("x-echo-b64: [redacted]"), "{headers}");
    assert!(body.contains("b64-1: [redacted]"), "{body}");
    assert!(!body.contains(core), "{body}");
    assert!(!body.contains("k3y!"), "{body}");
    assert_eq!(
        line["response_body"].as_str(),
        Some(body.as_str()),
        "{line}"
    );
    assert!(!line.to_string().contains(core), "{line}");
}
