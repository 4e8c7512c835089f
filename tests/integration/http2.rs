//! HTTP/2 inside intercepted tunnels: real clients (curl --http2, the `h2` crate) and a raw
//! frame writer for what no well-behaved client sends (connection-specific headers, control
//! bytes, floods), against h2 and HTTP/1.1 origins. Every stream runs the same policy as an
//! HTTP/1.1 request; every connection bound answers with the frame RFC 9113 names.

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

const CANARY: &str = "h2-canary-secret-5b1f0e";

/// The usual test config plus `extra` top-level keys, intercepting everything, with an admin
/// listener for metrics.
async fn warden(tls_extra: &str, extra: &str) -> TestWarden {
    TestWarden::start(&default_yaml(
        "all",
        tls_extra,
        &format!("{extra}admin:\n  listen: 127.0.0.1:0\n"),
    ))
    .await
}

/// A tunnel to `authority` whose TLS offered ALPN `protos` (wire form); returns the stream
/// and the protocol warden picked.
async fn tunnel_alpn(
    w: &TestWarden,
    authority: &str,
    protos: &[u8],
) -> (SslStream<TcpStream>, Option<Vec<u8>>) {
    let tcp = w.connect(authority).await;
    let sni = authority.split(':').next().unwrap();
    tls_alpn(tcp, sni, &w.ca_pem, protos).await
}

/// TLS over an open tunnel `tcp`, offering ALPN `protos` (wire form) and trusting `ca_pem`;
/// returns the stream and the protocol picked.
pub(crate) async fn tls_alpn(
    tcp: TcpStream,
    sni: &str,
    ca_pem: &str,
    protos: &[u8],
) -> (SslStream<TcpStream>, Option<Vec<u8>>) {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    for cert in openssl::x509::X509::stack_from_pem(ca_pem.as_bytes()).unwrap() {
        b.cert_store_mut().add_cert(cert).unwrap();
    }
    b.set_alpn_protos(protos).unwrap();
    let ssl = b.build().configure().unwrap().into_ssl(sni).unwrap();
    let mut s = SslStream::new(ssl, tcp).unwrap();
    tokio::time::timeout(WAIT, std::pin::Pin::new(&mut s).connect())
        .await
        .expect("TLS handshake finished")
        .expect("TLS handshake succeeded");
    let picked = s.ssl().selected_alpn_protocol().map(<[u8]>::to_vec);
    (s, picked)
}

pub(crate) const H2_H1: &[u8] = b"\x02h2\x08http/1.1";

/// An `h2` crate client on a new tunnel to `authority` (ALPN h2 asserted).
async fn h2_client(w: &TestWarden, authority: &str) -> h2::client::SendRequest<Bytes> {
    let (tls, picked) = tunnel_alpn(w, authority, H2_H1).await;
    assert_eq!(picked.as_deref(), Some(&b"h2"[..]), "warden picks h2");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends `req` (with `body`) and reads the whole response.
pub(crate) async fn exchange(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: &[u8],
) -> (http::response::Parts, Bytes, Option<http::HeaderMap>) {
    let mut send = send.clone().ready().await.expect("connection ready");
    let (resp, mut stream) = send
        .send_request(req, body.is_empty())
        .expect("request sent");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .unwrap();
    }
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("response in time")
        .expect("response");
    let (parts, mut recv) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, recv.data()).await.unwrap() {
        let chunk = chunk.expect("body chunk");
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.expect("trailers");
    (parts, Bytes::from(out), trailers)
}

fn get(uri: &str, id: &str) -> Request<()> {
    Request::builder()
        .uri(uri)
        .header("x-request-id", id)
        .body(())
        .unwrap()
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_h2_inside_the_tunnel_with_a_credential_and_a_mib_both_ways() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden(
        "",
        &format!(
            "credentials:\n  - host: a.test:{port}\n    grant: h2test\n    source: {{ type: static, value: {CANARY} }}\n"
        ),
    )
    .await;
    let upload = w.dir.path().join("upload.bin");
    std::fs::write(&upload, pattern(1 << 20)).unwrap();
    let out = w
        .curl(&[
            "--http2",
            "-H",
            "x-request-id: h2-curl-up",
            "-w",
            "\n%{http_version}",
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("https://a.test:{port}/echo"),
        ])
        .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').expect("curl output");
    assert_eq!(version, "2", "curl spoke h2 inside the tunnel: {text}");
    let echo = json_of(body.as_bytes());
    assert_eq!(echo["body_len"], 1 << 20);
    assert_eq!(echo["body_sha256"], sha256_hex(&pattern(1 << 20)));
    assert_eq!(echo["version"], "HTTP/2.0", "the origin picked h2 too");
    let seen = origin.seen();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );
    let line = log_for("h2-curl-up").await;
    assert_eq!(line["http_version"], "2");
    assert_eq!(line["injected"], "authorization");
    assert_eq!(line["bytes_in"], 1 << 20);
    assert!(!line.to_string().contains(CANARY));

    let down = w.dir.path().join("down.bin");
    let out = w
        .curl(&[
            "--http2",
            "-H",
            "x-request-id: h2-curl-down",
            "-o",
            down.to_str().unwrap(),
            "-w",
            "%{http_version}",
            &format!("https://a.test:{port}/bytes/{}", 1 << 20),
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2");
    assert_eq!(
        sha256_hex(&std::fs::read(&down).unwrap()),
        sha256_hex(&pattern(1 << 20))
    );
    let line = log_for("h2-curl-down").await;
    assert_eq!(line["bytes_out"], 1 << 20);
    let m = w.scrape().await;
    assert!(
        metric_value(
            &m,
            "warden_requests_total{client=\"-\",http_version=\"2\",kind=\"intercepted\",status_class=\"2xx\"}"
        ) >= Some(2.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_origin_serves_an_h2_client_and_an_h2_origin_an_http1_client() {
    let h1 = Origin::https().await;
    let h2 = Origin::https_h2().await;
    let w = warden("", "").await;
    let mut send = h2_client(&w, &format!("a.test:{}", h1.port())).await;
    let uri = format!("https://a.test:{}/echo", h1.port());
    let (parts, body, _) = exchange(&mut send, get(&uri, "h2-to-h1"), b"").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json_of(&body)["version"], "HTTP/1.1");
    assert_eq!(log_for("h2-to-h1").await["http_version"], "2");
    // reqwest here speaks HTTP/1.1 only; the origin still gets h2 from warden.
    let r = w
        .client()
        .get(format!("https://a.test:{}/echo", h2.port()))
        .header("x-request-id", "h1-to-h2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], "HTTP/2.0");
    assert_eq!(log_for("h1-to-h2").await["http_version"], "1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnels_to_an_h2_origin_share_one_upstream_connection_per_lane() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden("", "").await;
    for (i, host) in ["a.test", "a.test", "b.test"].iter().enumerate() {
        let mut send = h2_client(&w, &format!("{host}:{port}")).await;
        let uri = format!("https://{host}:{port}/echo");
        let (parts, _, _) = exchange(&mut send, get(&uri, &format!("h2-pool-{i}")), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
    }
    // a.test twice: one upstream connection per lane the two tunnels landed on (they are
    // dealt out in turn). b.test is another destination (its own SNI): one more.
    assert_eq!(origin.seen().len(), 3);
    assert_eq!(
        origin.connections(),
        w.lanes().min(2) + 1,
        "one h2 connection per destination and lane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_only_hosts_and_http2_off_keep_both_sides_on_http1() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden(&format!("  http1_only: [\"a.test:{port}\"]\n"), "").await;
    let (_, picked) = tunnel_alpn(&w, &format!("a.test:{port}"), H2_H1).await;
    assert_eq!(picked.as_deref(), Some(&b"http/1.1"[..]));
    let (_, picked) = tunnel_alpn(&w, &format!("b.test:{port}"), H2_H1).await;
    assert_eq!(picked.as_deref(), Some(&b"h2"[..]));
    let r = w
        .client()
        .get(format!("https://a.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["version"], "HTTP/1.1");

    let w = warden("  http2: false\n", "").await;
    let (_, picked) = tunnel_alpn(&w, &format!("b.test:{port}"), H2_H1).await;
    assert_eq!(picked.as_deref(), Some(&b"http/1.1"[..]));
    // A client offering only h2 gets no ALPN answer, and so speaks HTTP/1.1.
    let (_, picked) = tunnel_alpn(&w, &format!("b.test:{port}"), b"\x02h2").await;
    assert_eq!(picked, None);
    let r = w
        .client()
        .get(format!("https://b.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_gets_the_policy_an_http1_request_gets() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!(
            "  allow_cidrs: [127.0.0.0/8]\n  rules:\n    - \"allow GET a.test:{port} /ok/**\"\n    - \"allow GET a.test:{port} /echo-header\"\n    - \"allow POST a.test:{port} /echo\"\n    - \"deny * a.test:{port} /**\"\n"
        ),
        &format!(
            "substitutions:\n  - host: a.test:{port}\n    placeholder: WARDEN_PLACEHOLDER_H2\n    source: {{ type: static, value: \"{CANARY}\" }}\nlog:\n  body_capture_bytes: 4096\n"
        ),
    ))
    .await;
    let mut send = h2_client(&w, &format!("a.test:{port}")).await;
    // An L7 rule refuses one stream; the connection keeps serving the others.
    let uri = format!("https://a.test:{port}/admin");
    let (parts, body, _) = exchange(&mut send, get(&uri, "h2-rule"), b"").await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&body)["reason"], "policy_denied_rule");
    let line = log_for("h2-rule").await;
    assert_eq!(line["reason"], "policy_denied_rule");
    assert_eq!(line["http_version"], "2");
    // Placeholders in the path, the headers and the DATA frames become the secret upstream.
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("https://a.test:{port}/echo"))
        .header("x-request-id", "h2-subst")
        .header("x-api-key", "WARDEN_PLACEHOLDER_H2")
        .body(())
        .unwrap();
    let (parts, body, _) = exchange(&mut send, req, b"{\"key\":\"WARDEN_PLACEHOLDER_H2\"}").await;
    assert_eq!(parts.status, StatusCode::OK);
    let echo = json_of(&body);
    let expected = format!("{{\"key\":\"{CANARY}\"}}");
    assert_eq!(echo["body_sha256"], sha256_hex(expected.as_bytes()));
    let seen = origin.seen();
    assert_eq!(seen.last().unwrap().header("x-api-key"), Some(CANARY));
    let line = log_for("h2-subst").await;
    assert!(!line.to_string().contains(CANARY), "{line}");
    // An origin echoing the secret back has it masked on the way to the client.
    let req = Request::builder()
        .uri(format!("https://a.test:{port}/echo-header"))
        .header("authorization", "Bearer WARDEN_PLACEHOLDER_H2")
        .body(())
        .unwrap();
    let (parts, _, _) = exchange(&mut send, req, b"").await;
    let echoed = parts.headers["x-echo-auth"].to_str().unwrap();
    assert!(!echoed.contains(CANARY), "{echoed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_and_transforms_apply_to_concurrent_streams() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden(
        "",
        &format!(
            "correlation:\n  session_id: run-h2\n  targets:\n    - host: a.test:{port}\n      path: /api/**\ntransforms:\n  - host: \"a.test:{port}\"\n    set_headers: {{ cache-control: no-store }}\n    remove_headers: [x-origin]\n    replace_body:\n      - {{ pattern: '\"method\":\"GET\"', with: '\"method\":\"[GET seen]\"' }}\n"
        ),
    )
    .await;
    let send = h2_client(&w, &format!("a.test:{port}")).await;
    // Eight streams at once on one connection: each gets its own sequence number.
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut send = send.clone();
        let uri = format!("https://a.test:{port}/api/{i}");
        calls.push(tokio::spawn(async move {
            exchange(&mut send, get(&uri, &format!("h2-corr-{i}")), b"").await
        }));
    }
    for call in calls {
        let (parts, body, _) = call.await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["cache-control"], "no-store");
        assert!(parts.headers.get("x-origin").is_none());
        assert!(String::from_utf8_lossy(&body).contains("\"method\":\"[GET seen]\""));
    }
    let mut seqs: Vec<String> = origin
        .seen()
        .iter()
        .map(|s| {
            assert_eq!(s.header("x-warden-session-id"), Some("run-h2"));
            s.header("x-warden-sequence-number").unwrap().to_string()
        })
        .collect();
    seqs.sort_by_key(|n| n.parse::<u64>().unwrap());
    assert_eq!(seqs, (1..=8).map(|n| n.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_other_than_the_connect_host_is_421_and_only_https_is_served() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden("", "").await;
    let mut send = h2_client(&w, &format!("a.test:{port}")).await;
    let uri = format!("https://b.test:{port}/echo");
    let (parts, body, _) = exchange(&mut send, get(&uri, "h2-authority"), b"").await;
    assert_eq!(parts.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(json_of(&body)["reason"], "host_mismatch");
    let uri = format!("https://a.test:{}/echo", port + 1);
    let (parts, _, _) = exchange(&mut send, get(&uri, "h2-port"), b"").await;
    assert_eq!(parts.status, StatusCode::MISDIRECTED_REQUEST);
    let uri = format!("http://a.test:{port}/echo");
    let (parts, body, _) = exchange(&mut send, get(&uri, "h2-scheme"), b"").await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&body)["reason"], "unsupported_scheme");
    // A Host header naming another host than :authority is two authorities.
    let req = Request::builder()
        .uri(format!("https://a.test:{port}/echo"))
        .header("host", "b.test")
        .body(())
        .unwrap();
    let (parts, _, _) = exchange(&mut send, req, b"").await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    // CONNECT inside the tunnel is refused.
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("b.test:{port}"))
        .header("x-request-id", "h2-connect")
        .body(())
        .unwrap();
    let (parts, body, _) = exchange(&mut send, req, b"").await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&body)["reason"], "unexpected_connect");
    assert_eq!(log_for("h2-connect").await["reason"], "unexpected_connect");
    assert!(origin.seen().is_empty(), "nothing reached the origin");
    // Extended CONNECT is never advertised.
    assert!(!send.is_extended_connect_protocol_enabled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_policy_applies_to_sse_over_h2_on_both_sides() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let llm = |deny: &str| {
        format!(
            "llm:\n  - host: \"a.test:{port}\"\n    provider: openai\n    deny_tools: [{deny}]\n"
        )
    };
    let chat = |id: &str| {
        Request::builder()
            .method(Method::POST)
            .uri(format!("https://a.test:{port}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-request-id", id)
            .body(())
            .unwrap()
    };
    let body = br#"{"model":"gpt-5","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let w = warden("", &llm("bash")).await;
    let mut send = h2_client(&w, &format!("a.test:{port}")).await;
    let (parts, got, _) = exchange(&mut send, chat("h2-llm-ok"), body).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(got, fixture("chat_completions.sse", "read_file").as_bytes());
    assert_eq!(
        origin.seen()[0].version,
        "HTTP/2.0",
        "the LLM exchange spoke h2 upstream"
    );
    let line = log_for("h2-llm-ok").await;
    assert_eq!(line["http_version"], "2");
    assert_eq!(line["provider"], "openai");
    let tools = line["tools"].as_array().unwrap();
    assert!(tools.contains(&Value::from("read_file")), "{line}");

    let w = warden("", &llm("read_file")).await;
    let mut send = h2_client(&w, &format!("a.test:{port}")).await;
    let (parts, got, _) = exchange(&mut send, chat("h2-llm-denied"), body).await;
    assert_eq!(parts.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("llm_tool_denied"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert_eq!(log_for("h2-llm-denied").await["reason"], "llm_tool_denied");
    // An HTTP/1.1 client gets the same from the h2 origin.
    let r = w
        .client()
        .post(format!("https://a.test:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "h1-llm-h2")
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("llm_tool_denied"));
    assert!(origin.seen().iter().all(|s| s.version == "HTTP/2.0"));
}

// ---------------------------------------------------------------- raw frames

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as read: type, flags, stream, payload.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// An HTTP/2 client that writes frames byte by byte as told, for what the `h2` crate refuses
/// to send.
struct Raw {
    s: SslStream<TcpStream>,
    /// The server's first SETTINGS.
    settings: Vec<(u16, u32)>,
    /// The server's connection window increment, if it sent one at the start.
    window_update: Option<u32>,
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, new names, no Huffman.
fn hpack(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

impl Raw {
    /// Opens a tunnel with ALPN h2, sends the preface and empty SETTINGS, and reads the
    /// server's SETTINGS (and a connection WINDOW_UPDATE if it comes at once).
    async fn open(w: &TestWarden, authority: &str) -> Raw {
        let (s, picked) = tunnel_alpn(w, authority, b"\x02h2").await;
        assert_eq!(picked.as_deref(), Some(&b"h2"[..]));
        let mut raw = Raw {
            s,
            settings: Vec::new(),
            window_update: None,
        };
        raw.s
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        raw.send(SETTINGS, 0, 0, &[]).await;
        loop {
            let f = raw.read().await.expect("the server's SETTINGS");
            match f.kind {
                SETTINGS if f.flags & 1 == 0 => {
                    raw.settings = f.settings();
                    raw.send(SETTINGS, 1, 0, &[]).await;
                }
                WINDOW_UPDATE if f.stream == 0 => {
                    raw.window_update =
                        Some(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                }
                SETTINGS => break,
                _ => {}
            }
            if !raw.settings.is_empty() && raw.window_update.is_some() {
                break;
            }
        }
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        // A server that already hung up is what some tests expect: the caller reads that.
        let _ = self.s.write_all(&f).await;
    }

    /// A request's HEADERS on `stream`.
    async fn request(
        &mut self,
        stream: u32,
        authority: &str,
        extra: &[(&str, &[u8])],
        end_stream: bool,
    ) {
        let mut fields: Vec<(&str, &[u8])> = vec![
            (":method", b"GET"),
            (":scheme", b"https"),
            (":authority", authority.as_bytes()),
            (":path", b"/echo"),
        ];
        if end_stream {
            fields[0].1 = b"GET";
        } else {
            fields[0].1 = b"POST";
        }
        fields.extend_from_slice(extra);
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.send(HEADERS, flags, stream, &hpack(&fields)).await;
    }

    /// The next frame, or `None` once the connection closed (or nothing came in time).
    async fn read(&mut self) -> Option<Frame> {
        let mut h = [0u8; 9];
        match tokio::time::timeout(WAIT, self.s.read_exact(&mut h)).await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let mut payload = vec![0; len];
        self.s.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads until a frame `pred` accepts (returned), or the connection ends (`None`).
    async fn until(&mut self, pred: impl Fn(&Frame) -> bool) -> Option<Frame> {
        while let Some(f) = self.read().await {
            if pred(&f) {
                return Some(f);
            }
        }
        None
    }

    async fn reset_of(&mut self, stream: u32) -> Option<u32> {
        self.until(|f| f.kind == RST_STREAM && f.stream == stream || f.kind == GOAWAY)
            .await
            .filter(|f| f.kind == RST_STREAM)
            .map(|f| f.error_code())
    }

    async fn goaway(&mut self) -> Option<u32> {
        self.until(|f| f.kind == GOAWAY)
            .await
            .map(|f| f.error_code())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_specific_headers_and_control_bytes_are_refused_per_stream() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden("", "").await;
    let authority = format!("a.test:{port}");
    let mut raw = Raw::open(&w, &authority).await;
    let bad: [(&str, &[u8]); 6] = [
        ("connection", b"keep-alive"),
        ("transfer-encoding", b"chunked"),
        ("upgrade", b"h2c"),
        ("keep-alive", b"timeout=5"),
        ("proxy-connection", b"keep-alive"),
        ("te", b"gzip"),
    ];
    for (i, field) in bad.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        raw.request(stream, &authority, &[*field], true).await;
        assert_eq!(
            raw.reset_of(stream).await,
            Some(PROTOCOL_ERROR),
            "{} is refused with RST_STREAM(PROTOCOL_ERROR)",
            field.0
        );
    }
    // Extended CONNECT (`:protocol`) was never enabled.
    let fields: [(&str, &[u8]); 5] = [
        (":method", b"CONNECT"),
        (":protocol", b"websocket"),
        (":scheme", b"https"),
        (":authority", authority.as_bytes()),
        (":path", b"/chat"),
    ];
    raw.send(HEADERS, END_HEADERS | END_STREAM, 41, &hpack(&fields))
        .await;
    assert_eq!(raw.reset_of(41).await, Some(PROTOCOL_ERROR));
    // A value with CR, LF or NUL cannot be split into a second header line upstream: the
    // codec refuses it as a protocol error and ends the connection.
    for (i, value) in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\0b"]
        .iter()
        .enumerate()
    {
        let mut raw = Raw::open(&w, &authority).await;
        raw.request(1, &authority, &[("x-split", value)], true)
            .await;
        let f = raw
            .until(|f| f.kind == RST_STREAM && f.stream == 1 || f.kind == GOAWAY)
            .await
            .expect("refused");
        assert_eq!(f.error_code(), PROTOCOL_ERROR, "value {i}: {f:?}");
        if f.kind == GOAWAY {
            let line = wait_log(|v| {
                v["reason"] == "malformed_request"
                    && v["port"] == port
                    && v["error"].as_str().is_some_and(|e| e.contains("HTTP/2"))
            })
            .await;
            assert_eq!(line["http_version"], "2");
        }
    }
    assert!(origin.seen().is_empty(), "nothing reached the origin");
    // The connection still serves well-formed streams on a fresh client.
    let mut send = h2_client(&w, &authority).await;
    let uri = format!("https://{authority}/echo");
    let (parts, _, _) = exchange(&mut send, get(&uri, "h2-after-bad"), b"").await;
    assert_eq!(parts.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_that_disagrees_with_the_data_frames_is_refused() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden("", "").await;
    let authority = format!("a.test:{port}");
    let mut raw = Raw::open(&w, &authority).await;
    raw.request(1, &authority, &[("content-length", b"10")], false)
        .await;
    raw.send(DATA, END_STREAM, 1, b"12345").await;
    assert_eq!(raw.reset_of(1).await, Some(PROTOCOL_ERROR));
    raw.request(3, &authority, &[("content-length", b"2")], false)
        .await;
    raw.send(DATA, END_STREAM, 3, b"12345").await;
    assert_eq!(raw.reset_of(3).await, Some(PROTOCOL_ERROR));
    // No origin saw a whole request with a body that disagrees with its length.
    for seen in origin.seen() {
        assert_ne!(seen.header("content-length"), Some("5"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_advertise_the_configured_streams_and_windows() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden(
        "",
        "limits:\n  h2_max_concurrent_streams: 2\n  h2_stream_window_bytes: 65535\n  h2_connection_window_bytes: 1048576\n  max_request_header_bytes: 8192\n",
    )
    .await;
    let authority = format!("a.test:{port}");
    let mut raw = Raw::open(&w, &authority).await;
    let setting = |id: u16| raw.settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(setting(0x3), Some(2), "MAX_CONCURRENT_STREAMS");
    assert_eq!(setting(0x6), Some(8192), "MAX_HEADER_LIST_SIZE");
    assert_eq!(
        setting(0x8),
        None,
        "ENABLE_CONNECT_PROTOCOL is not advertised"
    );
    // 65535 is the protocol's default: it need not be sent.
    assert!(matches!(setting(0x4), None | Some(65535)));
    if raw.window_update.is_none() {
        let f = raw
            .until(|f| f.kind == WINDOW_UPDATE && f.stream == 0)
            .await;
        raw.window_update = f.map(|f| u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
    }
    assert_eq!(
        raw.window_update,
        Some(1048576 - 65535),
        "connection window"
    );
    // Two streams may be open; the third is refused.
    raw.request(1, &authority, &[], false).await;
    raw.request(3, &authority, &[], false).await;
    raw.request(5, &authority, &[], false).await;
    assert_eq!(raw.reset_of(5).await, Some(REFUSED_STREAM));
}

/// A TLS origin that accepts connections and never completes a handshake: a request to it
/// waits for its upstream, and nothing reads the client's body meanwhile.
async fn stalled_origin() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_past_the_stream_window_gets_a_flow_control_error() {
    let (port, _origin) = stalled_origin().await;
    let w = warden("", "limits:\n  h2_stream_window_bytes: 65535\n").await;
    let authority = format!("a.test:{port}");
    let mut raw = Raw::open(&w, &authority).await;
    raw.request(1, &authority, &[], false).await;
    let chunk = vec![b'x'; 16_384];
    for _ in 0..4 {
        raw.send(DATA, 0, 1, &chunk).await;
    }
    // 65536 bytes: one past the window warden granted.
    raw.send(DATA, 0, 1, &chunk[..4]).await;
    assert_eq!(raw.reset_of(1).await, Some(FLOW_CONTROL_ERROR));

    // The connection's window bounds all streams together.
    let w = warden(
        "",
        "limits:\n  h2_stream_window_bytes: 1048576\n  h2_connection_window_bytes: 65535\n",
    )
    .await;
    let mut raw = Raw::open(&w, &authority).await;
    raw.request(1, &authority, &[], false).await;
    raw.request(3, &authority, &[], false).await;
    for stream in [1, 3] {
        raw.send(DATA, 0, stream, &chunk).await;
        raw.send(DATA, 0, stream, &chunk).await;
    }
    assert_eq!(raw.goaway().await, Some(FLOW_CONTROL_ERROR));
}

/// Sends `flood` on a fresh connection and expects GOAWAY(ENHANCE_YOUR_CALM) and a log line
/// naming `key`.
async fn expect_flood(limits: &str, key: &str, flood: impl AsyncFn(&mut Raw, &str)) {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden("", &format!("limits:\n{limits}")).await;
    let authority = format!("a.test:{port}");
    let mut raw = Raw::open(&w, &authority).await;
    flood(&mut raw, &authority).await;
    assert_eq!(raw.goaway().await, Some(ENHANCE_YOUR_CALM), "{key}");
    let line = wait_log(|v| v["reason"] == "h2_flood" && v["port"] == port).await;
    assert!(line["error"].as_str().unwrap().contains(key), "{line}");
    assert_eq!(line["http_version"], "2");
    let m = w.scrape().await;
    assert_eq!(
        metric_value(&m, "warden_denials_total{reason=\"h2_flood\"}"),
        Some(1.0),
        "{m}"
    );
    // The connection is closed after the GOAWAY.
    assert!(raw.read().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway() {
    expect_flood(
        "  h2_max_resets_per_second: 5\n",
        "limits.h2_max_resets_per_second",
        async |raw: &mut Raw, authority: &str| {
            for i in 0..10u32 {
                let stream = 1 + 2 * i;
                raw.request(stream, authority, &[], false).await;
                raw.send(RST_STREAM, 0, stream, &8u32.to_be_bytes()).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_get_goaway() {
    expect_flood(
        "  h2_max_pings_per_second: 5\n",
        "limits.h2_max_pings_per_second",
        async |raw: &mut Raw, _: &str| {
            for i in 0..10u64 {
                raw.send(PING, 0, 0, &i.to_be_bytes()).await;
            }
        },
    )
    .await;
    expect_flood(
        "  h2_max_settings_per_second: 5\n",
        "limits.h2_max_settings_per_second",
        async |raw: &mut Raw, _: &str| {
            for _ in 0..10 {
                raw.send(SETTINGS, 0, 0, &[]).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_get_goaway() {
    // Empty CONTINUATIONs grow no buffer; they are bounded in number.
    expect_flood(
        "  max_request_header_bytes: 4096\n",
        "HEADERS/CONTINUATION frames",
        async |raw: &mut Raw, authority: &str| {
            let block = hpack(&[
                (":method", b"GET"),
                (":scheme", b"https"),
                (":authority", authority.as_bytes()),
                (":path", b"/"),
            ]);
            raw.send(HEADERS, END_STREAM, 1, &block).await;
            for _ in 0..100 {
                raw.send(CONTINUATION, 0, 1, &[]).await;
            }
        },
    )
    .await;
    // A header block larger than the header list bound, however it is split.
    expect_flood(
        "  max_request_header_bytes: 4096\n",
        "limits.max_request_header_bytes",
        async |raw: &mut Raw, _: &str| {
            let big = hpack(&[("x-big", &[b'a'; 3000])]);
            raw.send(HEADERS, END_STREAM, 1, &big).await;
            raw.send(CONTINUATION, 0, 1, &big).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grpc_call_is_trailers_only_with_permission_denied() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!(
            "  allow_cidrs: [127.0.0.0/8]\n  rules:\n    - \"allow POST a.test:{port} /pkg.Svc/Allowed\"\n    - \"deny * a.test:{port} /**\"\n"
        ),
        "",
    ))
    .await;
    let send = h2_client(&w, &format!("a.test:{port}")).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("https://a.test:{port}/pkg.Svc/Denied"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-request-id", "grpc-denied")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, mut body) = ready.send_request(req, false).unwrap();
    // warden may answer (and end the stream) before the message is sent: refused on its
    // head, the call's body is not needed.
    let _ = body.send_data(Bytes::from_static(b"\0\0\0\0\x02hi"), true);
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "7");
    let message = h["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("policy_denied_rule: "), "{message}");
    assert!(
        resp.body().is_end_stream(),
        "trailers-only: the HEADERS frame ends the stream"
    );
    let line = log_for("grpc-denied").await;
    assert_eq!(line["grpc_service"], "pkg.Svc");
    assert_eq!(line["grpc_method"], "Denied");
    assert_eq!(line["grpc_status"], 7);
    assert_eq!(line["reason"], "policy_denied_rule");
    assert_eq!(line["status"], 200);
    assert!(origin.seen().is_empty());
    // gRPC-Web over HTTP/1.1 reads the same shape, with an empty sized body.
    let r = w
        .client()
        .post(format!("https://a.test:{port}/pkg.Svc/Denied"))
        .header("content-type", "application/grpc-web+proto")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "7");
    assert_eq!(r.headers()["content-length"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_port_does_not_speak_h2_without_a_tunnel() {
    let w = warden("", "").await;
    let mut s = w.tcp().await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_with_goaway_after_the_idle_timeout() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let w = warden("", "limits:\n  idle_timeout: 1s\n").await;
    let authority = format!("a.test:{port}");
    let mut raw = Raw::open(&w, &authority).await;
    let started = std::time::Instant::now();
    assert_eq!(raw.goaway().await, Some(0), "GOAWAY(NO_ERROR)");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    // A client that does not answer the GOAWAY's PING is let go soon after.
    while let Some(f) = raw.read().await {
        assert!(matches!(f.kind, PING | GOAWAY), "{f:?}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "closed, not timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_to_idle_h2_connections_and_drains() {
    let origin = Origin::https_h2().await;
    let port = origin.port();
    let mut w = warden("", "").await;
    let authority = format!("a.test:{port}");
    let mut send = h2_client(&w, &authority).await;
    let uri = format!("https://{authority}/echo");
    let (parts, _, _) = exchange(&mut send, get(&uri, "h2-before-shutdown"), b"").await;
    assert_eq!(parts.status, StatusCode::OK);
    let mut raw = Raw::open(&w, &authority).await;
    let running = w.running.take().unwrap();
    let started = std::time::Instant::now();
    assert!(
        running.shutdown(std::time::Duration::from_secs(10)).await,
        "idle h2 connections drained"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(raw.goaway().await, Some(0), "GOAWAY(NO_ERROR)");
    assert!(
        send.clone().ready().await.is_err(),
        "the h2 client saw the close"
    );
}
