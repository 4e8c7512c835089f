//! Secret sources that refresh: an OAuth2 token endpoint that rotates refresh tokens, a
//! script that fails and recovers, one refresh for many waiting requests, the 401 eviction,
//! and the canaries that must stay out of logs, metrics, error bodies and `warden check`.

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openssl::ssl::SslAcceptor;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const CANARY: &str = "CANARYsrc9q";
const CLIENT_SECRET: &str = "cs/CANARYsrc9q+client";

/// Serves one hyper service per connection on 127.0.0.1:0, over TLS with `tls`.
async fn serve<F, Fut>(handler: F, tls: Option<SslAcceptor>) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tls.map(Arc::new);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let Some(acceptor) = tls else {
                    let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    return;
                };
                let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if std::pin::Pin::new(&mut s).accept().await.is_ok() {
                    let _ = http.serve_connection(TokioIo::new(s), svc).await;
                }
            });
        }
    });
    addr
}

/// A token endpoint: `grant_type=refresh_token` with the client secret and the refresh token
/// it issued last answers access token N and a new refresh token N; anything else is
/// `400 invalid_grant`. Counts the grants and when each was made.
struct TokenEndpoint {
    addr: SocketAddr,
    scheme: &'static str,
    /// When each granted request arrived.
    issued: Arc<Mutex<Vec<Instant>>>,
    refused: Arc<AtomicUsize>,
}

fn access_token(n: usize) -> String {
    format!("at/{CANARY}+{n}")
}

fn refresh_token(n: usize) -> String {
    format!("rt-{CANARY}-{n}")
}

impl TokenEndpoint {
    async fn start(expires_in: u64, delay: Duration) -> TokenEndpoint {
        TokenEndpoint::start_on(expires_in, delay, None).await
    }

    async fn start_on(expires_in: u64, delay: Duration, tls: Option<SslAcceptor>) -> TokenEndpoint {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issued = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(Mutex::new(refresh_token(0)));
        let (issued2, refused2) = (issued.clone(), refused.clone());
        let addr = serve(move |req: Request<hyper::body::Incoming>| {
            let (issued, refused, current) = (issued2.clone(), refused2.clone(), current.clone());
            async move {
                let arrived = Instant::now();
                tokio::time::sleep(delay).await;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: Vec<(String, String)> = String::from_utf8_lossy(&body)
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), percent_decode(v)))
                    .collect();
                let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let valid = field("grant_type").as_deref() == Some("refresh_token")
                    && field("client_id").as_deref() == Some("warden-test")
                    && field("client_secret").as_deref() == Some(CLIENT_SECRET)
                    && field("refresh_token") == Some(current.lock().unwrap().clone());
                if !valid {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return json_response(
                        400,
                        json!({"error": "invalid_grant", "error_description": format!("bad {CANARY}")}),
                    );
                }
                let n = {
                    let mut issued = issued.lock().unwrap();
                    issued.push(arrived);
                    issued.len()
                };
                *current.lock().unwrap() = refresh_token(n);
                json_response(
                    200,
                    json!({
                        "access_token": access_token(n),
                        "token_type": "Bearer",
                        "expires_in": expires_in,
                        "refresh_token": refresh_token(n),
                    }),
                )
            }
        }, tls)
        .await;
        TokenEndpoint {
            addr,
            scheme,
            issued,
            refused,
        }
    }

    fn url(&self) -> String {
        format!("{}://{}/oauth/token", self.scheme, self.addr)
    }

    fn grants(&self) -> usize {
        self.issued.lock().unwrap().len()
    }

    /// Every token request, granted or refused.
    fn calls(&self) -> usize {
        self.grants() + self.refused.load(Ordering::SeqCst)
    }
}

fn json_response(status: u16, v: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn percent_decode(v: &str) -> String {
    let v = v.replace('+', " ");
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A plain origin recording the credential headers it receives. `/hold401` answers 401, once
/// `hold` such requests have arrived (so they all carried the same value).
struct CredOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl CredOrigin {
    async fn start(header: &'static str, hold: usize) -> CredOrigin {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let barrier = Arc::new(tokio::sync::Barrier::new(hold.max(1)));
        let seen2 = seen.clone();
        let addr = serve(
            move |req: Request<hyper::body::Incoming>| {
                let (seen, barrier) = (seen2.clone(), barrier.clone());
                async move {
                    let value = req
                        .headers()
                        .get(header)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    seen.lock().unwrap().push(value);
                    if req.uri().path() == "/hold401" {
                        barrier.wait().await;
                        return Response::builder()
                            .status(401)
                            .body(Full::new(Bytes::from_static(b"token expired")))
                            .unwrap();
                    }
                    Response::new(Full::new(Bytes::from_static(b"ok")))
                }
            },
            None,
        )
        .await;
        CredOrigin { addr, seen }
    }

    fn last(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://origin.test:{}{path}", self.addr.port())
    }
}

fn oauth2_source(endpoint: &TokenEndpoint, refresh: &str) -> String {
    format!(
        "{{ type: oauth2, token_url: '{}', client_id: warden-test, client_secret: {{ type: static, value: '{CLIENT_SECRET}' }}, refresh_token: {refresh}, scope: 'read write' }}",
        endpoint.url()
    )
}

/// The config: plain-HTTP credential on the origin's port (`allow_plaintext`), metrics on.
fn config(port: u16, header: &str, source: &str) -> String {
    default_yaml(
        "auto",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\ncredentials:\n  - host: origin.test:{port}\n    header: {header}\n    allow_plaintext: true\n    source: {source}\n"
        ),
    )
}

/// Every form a leaked secret could take in text: raw, base64 (standard and URL-safe), and
/// percent-encoded.
fn forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let pct: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    vec![
        secret.to_string(),
        b64.trim_end_matches('=').to_string(),
        url,
        pct,
    ]
}

fn assert_no_leak(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        for form in forms(secret) {
            assert!(!text.contains(&form), "{what} holds `{form}`:\n{text}");
        }
    }
    assert!(!text.contains(CANARY), "{what} holds the canary:\n{text}");
}

/// The canaries everywhere warden writes: canonical and operational log lines, `/metrics`.
async fn assert_no_leaks(w: &TestWarden, secrets: &[String]) {
    assert_no_leak("the access log", &all_log_lines().join("\n"), secrets);
    assert_no_leak("the operational log", &all_ops_lines().join("\n"), secrets);
    assert_no_leak("the metrics", &w.scrape().await, secrets);
}

async fn poll<T>(what: &str, mut step: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = step().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_token_is_refreshed_at_75_percent_of_expires_in_and_the_rotated_refresh_token_is_written_back(
) {
    let endpoint = TokenEndpoint::start(8, Duration::ZERO).await;
    let origin = Origin::https().await;
    let port = origin.port();
    let dir = tempfile::tempdir().unwrap();
    let rt_file = dir.path().join("refresh-token");
    std::fs::write(&rt_file, format!("{}\n", refresh_token(0))).unwrap();
    std::fs::set_permissions(&rt_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let source = oauth2_source(
        &endpoint,
        &format!("{{ type: file, path: {} }}", rt_file.display()),
    );
    let yaml = default_yaml(
        "auto",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\ncredentials:\n  - host: origin.test:{port}\n    source: {source}\n"
        ),
    );
    let w = TestWarden::start_file(&yaml).await;
    let client = w.client();
    let url = format!("https://origin.test:{port}/echo");
    let auth = |i: usize| {
        let seen = origin.seen();
        seen.get(i)
            .and_then(|s| s.header("authorization"))
            .map(str::to_string)
    };
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(auth(0), Some(format!("Bearer {}", access_token(1))));
    // The rotated refresh token replaced the file's, with its mode.
    assert_eq!(
        std::fs::read_to_string(&rt_file).unwrap(),
        format!("{}\n", refresh_token(1))
    );
    let mode = std::fs::metadata(&rt_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    // Requests keep the first token until 75% of expires_in (6 of 8 s), when one of them
    // starts the refresh in the background; none fails or waits for it.
    let mut n = 1;
    poll("the second token", async || {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        n += 1;
        (auth(n - 1) == Some(format!("Bearer {}", access_token(2)))).then_some(())
    })
    .await;
    let issued = endpoint.issued.lock().unwrap().clone();
    assert_eq!(issued.len(), 2);
    let gap = issued[1] - issued[0];
    assert!(
        gap >= Duration::from_millis(5900) && gap < Duration::from_secs(8),
        "refreshed after {gap:?}"
    );
    assert_eq!(
        endpoint.refused.load(Ordering::SeqCst),
        0,
        "the rotated token was used"
    );
    assert_eq!(
        std::fs::read_to_string(&rt_file).unwrap(),
        format!("{}\n", refresh_token(2))
    );
    // A reload that keeps the source keeps its token: no new grant.
    assert!(w.reload(&yaml).is_ok());
    client.get(&url).send().await.unwrap();
    assert_eq!(auth(n), Some(format!("Bearer {}", access_token(2))));
    assert_eq!(endpoint.grants(), 2);
    let metrics = w.scrape().await;
    assert_eq!(
        metric_value(
            &metrics,
            "warden_credential_refreshes_total{outcome=\"ok\"}"
        ),
        Some(2.0)
    );
    let secrets: Vec<String> = (0..3)
        .flat_map(|i| [access_token(i), refresh_token(i)])
        .chain([CLIENT_SECRET.to_string()])
        .collect();
    assert_no_leaks(&w, &secrets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_make_exactly_one_refresh() {
    // A slow endpoint: every request arrives while the one refresh is in flight.
    let endpoint = TokenEndpoint::start(3600, Duration::from_millis(500)).await;
    let origin = CredOrigin::start("authorization", 1).await;
    let source = oauth2_source(
        &endpoint,
        &format!("{{ type: static, value: '{}' }}", refresh_token(0)),
    );
    let w = TestWarden::start(&config(origin.addr.port(), "authorization", &source)).await;
    let client = w.client();
    let url = origin.url("/x");
    let requests = (0..100).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url).send().await.map(|r| r.status()) })
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().unwrap(), 200);
    }
    assert_eq!(endpoint.calls(), 1, "one refresh for all of them");
    let seen = origin.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 100);
    let want = format!("Bearer {}", access_token(1));
    assert!(seen.iter().all(|v| *v == want), "{seen:?}");
    let metrics = w.scrape().await;
    assert_eq!(
        metric_value(
            &metrics,
            "warden_credential_refreshes_total{outcome=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_no_leaks(&w, &[access_token(1), refresh_token(0), refresh_token(1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_evicts_the_token_and_refreshes_once_however_many_requests_it_failed() {
    let endpoint = TokenEndpoint::start(3600, Duration::ZERO).await;
    let origin = CredOrigin::start("authorization", 5).await;
    let source = oauth2_source(
        &endpoint,
        &format!("{{ type: static, value: '{}' }}", refresh_token(0)),
    );
    let w = TestWarden::start(&config(origin.addr.port(), "authorization", &source)).await;
    let client = w.client();
    assert_eq!(
        client.get(origin.url("/a")).send().await.unwrap().status(),
        200
    );
    assert_eq!(endpoint.grants(), 1);
    // Five requests carry token 1 and are all refused together.
    let refused = (0..5).map(|_| {
        let (client, url) = (client.clone(), origin.url("/hold401"));
        tokio::spawn(async move {
            let r = client.get(&url).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        })
    });
    for r in futures_util::future::join_all(refused).await {
        // The 401 itself reaches the client: its body cannot be replayed.
        assert_eq!(
            r.unwrap(),
            (reqwest::StatusCode::UNAUTHORIZED, "token expired".into())
        );
    }
    let first = format!("Bearer {}", access_token(1));
    assert!(origin.seen.lock().unwrap()[1..].iter().all(|v| *v == first));
    assert_eq!(
        client.get(origin.url("/b")).send().await.unwrap().status(),
        200
    );
    assert_eq!(origin.last(), format!("Bearer {}", access_token(2)));
    assert_eq!(endpoint.calls(), 2, "one refresh for the burst of 401s");
    wait_ops_line(|l| l.contains("evicted: the upstream answered 401")).await;
    assert_no_leaks(&w, &[access_token(1), access_token(2), refresh_token(0)]).await;
}

fn write_script(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("secret.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nmode=$(cat \"$1\")\ncase \"$mode\" in\n  ok*) echo \"proc/CANARYsrc9q+${mode#ok}\" ;;\n  *) echo \"vault session expired (STDERR-MARK)\" >&2; exit 4 ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn proc_value(n: usize) -> String {
    format!("proc/{CANARY}+{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_keeps_its_value_until_it_expires_then_fails_closed_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path());
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "ok1").unwrap();
    let origin = CredOrigin::start("x-api-key", 1).await;
    let source = format!(
        "{{ type: process, command: ['{}', '{}'], ttl: 2s }}",
        script.display(),
        mode.display()
    );
    let w = TestWarden::start(&config(origin.addr.port(), "x-api-key", &source)).await;
    let client = w.client();
    let url = origin.url("/x");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(origin.last(), proc_value(1));
    std::fs::write(&mode, "fail").unwrap();
    // The refresh at 1.5 s fails: the value is kept, every request still carries it.
    let name = format!("process {}", script.display());
    let failed = |l: &str| l.contains(&name) && l.contains("refresh failed");
    poll("the failed refresh", async || {
        let r = client.get(&url).send().await.unwrap();
        if all_ops_lines().iter().any(|l| failed(l)) {
            return Some(());
        }
        assert_eq!(r.status(), 200);
        assert_eq!(origin.last(), proc_value(1));
        None
    })
    .await;
    let warned = wait_ops_line(failed).await;
    assert!(warned.starts_with("WARN"), "{warned}");
    assert!(
        warned.contains("the current value is kept until it expires"),
        "{warned}"
    );
    assert!(
        warned.contains("exit status: 4: stderr: vault session expired (STDERR-MARK)"),
        "{warned}"
    );
    // Once it expires: 502 credential_unavailable, nothing sent, the log naming the source.
    let (body, id) = poll("the value to expire", async || {
        let r = client.get(&url).send().await.unwrap();
        let id = r.headers().get("x-request-id")?.to_str().ok()?.to_string();
        (r.status() == 502).then_some(())?;
        Some((r.text().await.unwrap(), id))
    })
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "credential_unavailable");
    let sent = origin.seen.lock().unwrap().len();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 502);
    assert_eq!(origin.seen.lock().unwrap().len(), sent, "nothing sent");
    let line = log_for(&id).await;
    let error = line["error"].as_str().unwrap();
    assert!(error.contains(&format!("({name})")), "{error}");
    assert!(error.contains("STDERR-MARK"), "{error}");
    // It recovers at the next try after the backoff.
    std::fs::write(&mode, "ok2").unwrap();
    poll("the recovered value", async || {
        let r = client.get(&url).send().await.unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
    assert_eq!(origin.last(), proc_value(2));
    let failures = w.scrape().await;
    assert!(
        metric_value(
            &failures,
            "warden_credential_refreshes_total{outcome=\"error\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{failures}"
    );
    assert_no_leak("the 502 body", &body, &[proc_value(1)]);
    assert_no_leaks(&w, &[proc_value(1), proc_value(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substitution_reads_a_refreshing_source_and_a_401_refreshes_it() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let script = dir.path().join("count.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho x >> \"$1\"\necho \"sub/CANARYsrc9q+$(wc -l < \"$1\" | tr -d ' ')\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let origin = CredOrigin::start("x-api-key", 1).await;
    let yaml = default_yaml(
        "auto",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nsubstitutions:\n  - host: origin.test:{}\n    placeholder: WARDEN_SUB_TOKEN\n    allow_plaintext: true\n    source: {{ type: process, command: ['{}', '{}'], ttl: 1h }}\n",
            origin.addr.port(),
            script.display(),
            count.display()
        ),
    );
    let w = TestWarden::start(&yaml).await;
    let client = w.client();
    let send = |path: &str| {
        client
            .get(origin.url(path))
            .header("x-api-key", "WARDEN_SUB_TOKEN")
            .send()
    };
    assert_eq!(send("/x").await.unwrap().status(), 200);
    assert_eq!(origin.last(), format!("sub/{CANARY}+1"));
    assert_eq!(send("/y").await.unwrap().status(), 200);
    assert_eq!(
        origin.last(),
        format!("sub/{CANARY}+1"),
        "cached for its ttl"
    );
    assert_eq!(send("/hold401").await.unwrap().status(), 401);
    assert_eq!(send("/z").await.unwrap().status(), 200);
    assert_eq!(origin.last(), format!("sub/{CANARY}+2"));
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);
    assert_no_leaks(&w, &[format!("sub/{CANARY}+1"), format!("sub/{CANARY}+2")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_refuses_fails_the_request_closed_naming_the_endpoint() {
    let endpoint = TokenEndpoint::start(3600, Duration::ZERO).await;
    let origin = CredOrigin::start("authorization", 1).await;
    // A refresh token the endpoint never issued: invalid_grant.
    let source = oauth2_source(&endpoint, "{ type: static, value: 'rt-CANARYsrc9q-stale' }");
    let w = TestWarden::start(&config(origin.addr.port(), "authorization", &source)).await;
    let r = w
        .client()
        .get(origin.url("/x"))
        .header("x-request-id", "oauth-refused")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("credential_unavailable"), "{body}");
    assert!(origin.seen.lock().unwrap().is_empty());
    let line = log_for("oauth-refused").await;
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("(oauth2 {})", endpoint.url()))
            && error.contains("answered 400 (error invalid_grant)"),
        "{error}"
    );
    assert_no_leak("the 502 body", &body, &["rt-CANARYsrc9q-stale".into()]);
    assert_no_leaks(&w, &["rt-CANARYsrc9q-stale".into(), CLIENT_SECRET.into()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_token_endpoint_is_trusted_through_upstream_ca_file_and_an_untrusted_one_is_refused(
) {
    let trusted = origin_acceptor(&origin_ca().issue(&["127.0.0.1"]));
    let rogue = origin_acceptor(&TestCa::new("rogue CA").issue(&["127.0.0.1"]));
    let good = TokenEndpoint::start_on(3600, Duration::ZERO, Some(trusted)).await;
    let bad = TokenEndpoint::start_on(3600, Duration::ZERO, Some(rogue)).await;
    let (a, b) = (
        CredOrigin::start("authorization", 1).await,
        CredOrigin::start("authorization", 1).await,
    );
    let entry = |origin: &CredOrigin, endpoint: &TokenEndpoint| {
        let refresh = format!("{{ type: static, value: '{}' }}", refresh_token(0));
        format!(
            "  - host: origin.test:{}\n    allow_plaintext: true\n    source: {}\n",
            origin.addr.port(),
            oauth2_source(endpoint, &refresh)
        )
    };
    let yaml = default_yaml(
        "auto",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\ncredentials:\n{}{}",
            entry(&a, &good),
            entry(&b, &bad)
        ),
    );
    let w = TestWarden::start(&yaml).await;
    let client = w.client();
    assert_eq!(client.get(a.url("/x")).send().await.unwrap().status(), 200);
    assert_eq!(a.last(), format!("Bearer {}", access_token(1)));
    let r = client
        .get(b.url("/x"))
        .header("x-request-id", "oauth-untrusted")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        bad.calls(),
        0,
        "no token request reached an endpoint warden does not trust"
    );
    let line = log_for("oauth-untrusted").await;
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("(oauth2 {})", bad.url()))
            && error.contains("token request failed"),
        "{error}"
    );
    assert_no_leaks(&w, &[access_token(1), refresh_token(0), refresh_token(1)]).await;
}

#[test]
fn keys_read_once_at_load_refuse_refreshing_sources_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "proxy:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\n",
        dir.path().display()
    );
    for (yaml, key) in [
        (
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - { name: a, token: { type: process, command: [op, read, x] } }\n",
            "proxy.auth.clients[0].token",
        ),
        (
            "admin:\n  listen: 127.0.0.1:0\n  token: { type: process, command: [op] }\n",
            "admin.token",
        ),
        (
            "state:\n  encryption_key: { type: oauth2, token_url: 'https://id.test/t', client_id: c, refresh_token: { type: env, var: X } }\n",
            "state.encryption_key",
        ),
        (
            "credentials:\n  - { host: a.test, source: { type: oauth2, token_url: 'http://id.test/t', client_id: c, refresh_token: { type: env, var: X } } }\n",
            "credentials[0].source.token_url",
        ),
        (
            "substitutions:\n  - { host: a.test, placeholder: WARDEN_X_TOKEN, source: { type: process, command: [x], ttl: 0s } }\n",
            "substitutions[0].source.ttl",
        ),
    ] {
        let text = if yaml.starts_with("proxy:") {
            format!("{yaml}tls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\n", dir.path().display())
        } else {
            format!("{base}{yaml}")
        };
        let err = warden::Config::parse(&text, dir.path())
            .unwrap()
            .compile(warden::CompileOptions { create_ca: true })
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{key} missing in {err}");
    }
}

#[test]
fn check_notes_refreshing_sources_without_running_them_or_printing_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let script = dir.path().join("s.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\necho x\n", ran.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        format!(
            "proxy:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\ncredentials:\n  - host: a.test\n    source: {{ type: process, command: ['{1}', '{CANARY}-arg'], ttl: 5m }}\n  - host: b.test\n    source: {{ type: oauth2, token_url: 'https://id.test/token?key={CANARY}', client_id: c, client_secret: {{ type: static, value: '{CLIENT_SECRET}' }}, refresh_token: {{ type: env, var: WARDEN_SOURCES_TEST_UNSET }} }}\n",
            dir.path().display(),
            script.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "-c", file.to_str().unwrap()])
        .env_remove("WARDEN_SOURCES_TEST_UNSET")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for want in [
        &format!(
            "credentials[0].source: process {} runs at request time, its output cached for 5m (check does not run it)",
            script.display()
        ),
        "credentials[1].source: oauth2 https://id.test/token is asked for an access token at request time (check does not call it)",
        "warning: ",
        "credentials[1].source.refresh_token: cannot be read now (environment variable WARDEN_SOURCES_TEST_UNSET is not set)",
    ] {
        assert!(text.contains(want), "`{want}` missing in:\n{text}");
    }
    assert!(!ran.exists(), "check ran the command");
    assert_no_leak("check output", &text, &[CLIENT_SECRET.into()]);
}
