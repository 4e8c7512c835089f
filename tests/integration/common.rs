//! The shared test harness: warden started in-process on 127.0.0.1:0 from YAML text and shut
//! down on drop; origins on 127.0.0.1:0 (HTTP, HTTPS with a CA made at test time, WebSocket
//! echo, a slow origin); clients trusting warden's CA; captured canonical log lines.

#![allow(dead_code)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Bound on every wait in a test; nothing here should come close.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- log capture

struct Capture {
    lines: Mutex<Vec<String>>,
    /// Operational lines (every other target), as `LEVEL target: message`.
    ops: Mutex<Vec<String>>,
    notify: Notify,
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.target() == warden::telemetry::ACCESS_TARGET {
            if std::env::var_os("WARDEN_TEST_LOG").is_some() {
                eprintln!("ACCESS {}", record.args());
            }
            self.lines.lock().unwrap().push(record.args().to_string());
            self.notify.notify_waiters();
        } else {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            if std::env::var_os("WARDEN_TEST_LOG").is_some() {
                eprintln!("{line}");
            }
            self.ops.lock().unwrap().push(line);
            self.notify.notify_waiters();
        }
    }
    fn flush(&self) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture {
            lines: Mutex::new(Vec::new()),
            ops: Mutex::new(Vec::new()),
            notify: Notify::new(),
        }));
        let _ = log::set_logger(c);
        let level = match std::env::var("WARDEN_TEST_LOG").as_deref() {
            Ok("debug") => log::LevelFilter::Debug,
            _ => log::LevelFilter::Info,
        };
        log::set_max_level(level);
        c
    })
}

/// Every canonical line captured so far, raw.
pub fn all_log_lines() -> Vec<String> {
    capture().lines.lock().unwrap().clone()
}

/// Every operational (non-canonical) line captured so far: `LEVEL target: message`.
pub fn all_ops_lines() -> Vec<String> {
    capture().ops.lock().unwrap().clone()
}

/// Waits (bounded) for an operational line matching `pred`.
pub async fn wait_ops_line(pred: impl Fn(&str) -> bool) -> String {
    wait_in(|c| &c.ops, "operational line", 0, pred).await
}

/// How many canonical lines have been captured so far: pass it to `wait_log_since` to match
/// only lines logged after this point. Keys that other tests' lines can share (a client's
/// ephemeral port is reused once its connection is gone) need it.
pub fn log_mark() -> usize {
    capture().lines.lock().unwrap().len()
}

/// Waits (bounded) for a line of one captured list (`pick`) matching `pred`.
async fn wait_in(
    pick: impl Fn(&Capture) -> &Mutex<Vec<String>>,
    what: &str,
    skip: usize,
    pred: impl Fn(&str) -> bool,
) -> String {
    let c = capture();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let notified = c.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(l) = pick(c).lock().unwrap().iter().skip(skip).find(|l| pred(l)) {
            return l.clone();
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let captured = pick(c).lock().unwrap().join("\n");
            panic!("no matching {what}; captured:\n{captured}");
        }
    }
}

/// Waits (bounded) for a raw canonical line matching `pred`.
pub async fn wait_line(pred: impl Fn(&str) -> bool) -> String {
    wait_in(|c| &c.lines, "log line", 0, pred).await
}

/// Waits (bounded) for a JSON canonical line matching `pred`.
pub async fn wait_log(pred: impl Fn(&Value) -> bool) -> Value {
    wait_log_since(0, pred).await
}

/// Waits (bounded) for a JSON canonical line matching `pred` among those captured after
/// `mark` (from `log_mark`).
pub async fn wait_log_since(mark: usize, pred: impl Fn(&Value) -> bool) -> Value {
    let line = wait_in(
        |c| &c.lines,
        "log line",
        mark,
        |l| serde_json::from_str::<Value>(l).is_ok_and(|v| pred(&v)),
    )
    .await;
    serde_json::from_str(&line).unwrap()
}

/// Waits for the canonical line of the request with `id`.
pub async fn log_for(id: &str) -> Value {
    let id = id.to_string();
    wait_log(move |v| v["request_id"] == id.as_str()).await
}

// ---------------------------------------------------------------- test CA

/// A CA made at test time, for origin certificates.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and key (PEM) for an origin.
pub struct OriginCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn issue(&self, names: &[&str]) -> OriginCert {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        OriginCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The CA all test origins' certificates come from (warden trusts it via upstream_ca_file).
pub fn origin_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| TestCa::new("warden test origin CA"))
}

/// Names every TLS test origin's certificate covers (all resolved to 127.0.0.1 by warden).
pub const ORIGIN_NAMES: &[&str] = &[
    "origin.test",
    "direct.test",
    "a.test",
    "b.test",
    "c.test",
    "ws.test",
    "anthropic.test",
    "openai.test",
    "grpc.test",
    "grpc2.test",
    "mcp.test",
];

pub fn origin_acceptor(cert: &OriginCert) -> SslAcceptor {
    origin_acceptor_builder(cert).build()
}

pub fn origin_acceptor_builder(cert: &OriginCert) -> openssl::ssl::SslAcceptorBuilder {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate_chain_file(&c).unwrap();
    b.set_private_key_file(&k, SslFiletype::PEM).unwrap();
    b
}

// ---------------------------------------------------------------- warden

/// A warden running in this process.
pub struct TestWarden {
    pub running: Option<warden::Running>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
}

impl TestWarden {
    /// How many lanes serve the proxy: each has its own upstream pool, so an origin is
    /// dialled at most once per lane its tunnels landed on (they are dealt out in turn).
    pub fn lanes(&self) -> usize {
        self.running.as_ref().map_or(1, |r| r.lanes())
    }

    /// Starts warden from YAML text. `{dir}` is replaced by a fresh temp dir (CA files live
    /// there) and `{origin_ca}` by the path of the test origins' CA.
    pub async fn start(yaml: &str) -> TestWarden {
        let dir = test_dir();
        let cfg = warden::Config::parse(&fill(yaml, &dir), dir.path()).expect("test config parses");
        TestWarden::launch(cfg, dir).await
    }

    async fn launch(cfg: warden::Config, dir: tempfile::TempDir) -> TestWarden {
        let snap = cfg
            .compile(warden::CompileOptions { create_ca: true })
            .expect("test config compiles");
        let ca_pem = snap.tls.ca.cert_pem().to_string();
        let running = warden::start(snap).await.expect("warden starts");
        TestWarden {
            addr: running.proxy_addr(),
            running: Some(running),
            dir,
            ca_pem,
        }
    }

    /// Starts warden from a config *file* (so it can be reloaded), written from YAML text
    /// with the same placeholders as [`TestWarden::start`].
    pub async fn start_file(yaml: &str) -> TestWarden {
        let dir = test_dir();
        let path = dir.path().join("warden.yaml");
        std::fs::write(&path, fill(yaml, &dir)).unwrap();
        let cfg = warden::Config::load(&path).expect("test config parses");
        TestWarden::launch(cfg, dir).await
    }

    /// The admin endpoint's `/metrics` text (the config must set `admin.listen`).
    pub async fn scrape(&self) -> String {
        let running = self.running.as_ref().expect("warden is running");
        scrape(running.admin_addr().expect("admin.listen is set")).await
    }

    /// Rewrites the config file (atomically) and reloads it, as SIGHUP does.
    pub fn reload(&self, yaml: &str) -> Result<u64, warden::ConfigErrors> {
        let path = self.dir.path().join("warden.yaml");
        let tmp = self.dir.path().join("warden.yaml.tmp");
        std::fs::write(&tmp, fill(yaml, &self.dir)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        warden::reload::reload_from(&path, self.running.as_ref().unwrap().shared())
    }

    /// The usual test config: intercept `intercept`, test names resolved to loopback, the
    /// origins' CA trusted; `extra` is appended (top-level keys).
    pub async fn with(intercept: &str, extra: &str) -> TestWarden {
        TestWarden::start(&default_yaml(intercept, "", extra)).await
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the running warden keeps across reloads.
    pub fn runtime(&self) -> &warden::runtime::Runtime {
        let running = self.running.as_ref().expect("warden is running");
        &running.shared().runtime
    }

    pub fn mints(&self) -> u64 {
        self.runtime().leaves.mints()
    }

    pub fn cached_leaves(&self) -> usize {
        self.runtime().leaves.cached()
    }

    /// A reqwest client using warden as its proxy for http and https, trusting warden's CA
    /// only.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(self.proxy_url()).unwrap())
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .timeout(WAIT)
    }

    /// Runs curl through this warden, trusting its CA: `-sS --max-time 20 -x <proxy>
    /// --cacert <ca>`, then `args`.
    pub async fn curl(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "-x"])
            .arg(self.proxy_url())
            .arg("--cacert")
            .arg(self.dir.path().join("ca.crt"))
            .args(args)
            .output()
            .await
            .expect("curl runs (installed by .ci/deps)")
    }

    /// Raw TCP to the proxy port.
    pub async fn tcp(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// Opens a CONNECT tunnel to `authority` and returns the stream after the 200.
    pub async fn connect(&self, authority: &str) -> TcpStream {
        self.connect_with(authority, "").await
    }

    /// [`TestWarden::connect`] with extra CONNECT header lines (each ending in CRLF).
    pub async fn connect_with(&self, authority: &str, headers: &str) -> TcpStream {
        let mut s = self.tcp().await;
        s.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answered {head}");
        s
    }

    /// Opens an intercepted tunnel to `authority` and completes TLS, verifying warden's leaf
    /// for `sni`.
    pub async fn tls_tunnel(
        &self,
        authority: &str,
        sni: &str,
    ) -> tokio_openssl::SslStream<TcpStream> {
        let tcp = self.connect(authority).await;
        tls_connect(tcp, sni, &self.ca_pem).await
    }
}

impl Drop for TestWarden {
    fn drop(&mut self) {
        drop(self.running.take());
    }
}

/// A fresh folder for one warden, holding the test origins' CA.
fn test_dir() -> tempfile::TempDir {
    capture();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("origin-ca.pem"), &origin_ca().pem).unwrap();
    dir
}

/// Fetches `/metrics` from an admin address, bypassing any proxy.
pub async fn scrape(admin: SocketAddr) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (`name{labels}`, exactly) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Replaces `{dir}` and `{origin_ca}` in test YAML.
pub fn fill(yaml: &str, dir: &tempfile::TempDir) -> String {
    yaml.replace("{dir}", dir.path().to_str().unwrap()).replace(
        "{origin_ca}",
        dir.path().join("origin-ca.pem").to_str().unwrap(),
    )
}

/// The usual config with `listen` on port 0.
pub fn default_yaml(intercept: &str, tls_extra: &str, extra: &str) -> String {
    full_yaml(
        intercept,
        tls_extra,
        "  allow_cidrs: [127.0.0.0/8]\n",
        extra,
    )
}

/// The usual config with these `network` keys (two-space indented) instead of the loopback
/// exception.
pub fn network_yaml(intercept: &str, network: &str, extra: &str) -> String {
    full_yaml(intercept, "", network, extra)
}

fn full_yaml(intercept: &str, tls_extra: &str, network: &str, extra: &str) -> String {
    let resolve: String = ORIGIN_NAMES
        .iter()
        .map(|n| format!("    {n}: 127.0.0.1\n"))
        .collect();
    format!(
        "version: 1\nproxy:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: {{dir}}/ca.crt\n  ca_key: {{dir}}/ca.key\n  intercept: {intercept}\n  upstream_ca_file: {{origin_ca}}\n{tls_extra}network:\n{network}  resolve:\n{resolve}{extra}"
    )
}

/// TLS client handshake over `io`, trusting only `ca_pem`, verifying `sni`.
pub async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    sni: &str,
    ca_pem: &str,
) -> tokio_openssl::SslStream<S> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    let store = b.cert_store_mut();
    for cert in openssl::x509::X509::stack_from_pem(ca_pem.as_bytes()).unwrap() {
        store.add_cert(cert).unwrap();
    }
    b.set_verify(SslVerifyMode::PEER);
    let ssl = b.build().configure().unwrap().into_ssl(sni).unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, io).unwrap();
    tokio::time::timeout(WAIT, Pin::new(&mut s).connect())
        .await
        .expect("TLS handshake finished")
        .expect("TLS handshake succeeded");
    s
}

/// Reads one response/request head (up to the blank line), byte by byte.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("head arrived in time")
            .unwrap();
        assert!(
            n == 1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads a full HTTP/1.1 response with Content-Length; returns (head, body).
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (String, Vec<u8>) {
    let head = read_head(s).await;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    (head, body)
}

/// Asserts the peer closes the connection (EOF or reset) within the bound.
pub async fn assert_closed<S: AsyncRead + Unpin>(s: &mut S) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "expected close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("connection was not closed"),
    }
}

/// Checks a log line's `error` field: it starts with `prefix` and has no padding.
pub fn assert_error_field(line: &Value, prefix: &str) {
    let error = line["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {line}"));
    assert_eq!(error, error.trim(), "padded error field: {line}");
    assert!(error.starts_with(prefix), "error not {prefix}…: {line}");
}

/// Parses a JSON refusal and checks status, reason and Proxy-Status.
pub fn assert_refusal(head: &str, body: &[u8], status: u16, reason: &str) {
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status}, got {head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("proxy-status: warden; error=")
            && lower.contains(&format!("details=\"{reason}\"")),
        "Proxy-Status missing or wrong in {head}"
    );
    let v: Value = serde_json::from_slice(body).expect("JSON body");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["hint"].is_string());
}

// ---------------------------------------------------------------- origins

/// What an origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP or HTTPS origin on 127.0.0.1:0.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Plain HTTP origin.
    pub async fn http() -> Origin {
        Origin::start(None).await
    }

    /// HTTPS origin with a certificate from the test origin CA for [`ORIGIN_NAMES`].
    pub async fn https() -> Origin {
        Origin::start(Some(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES)))).await
    }

    /// HTTPS origin that also speaks HTTP/2: it offers ALPN `h2` and `http/1.1`, and serves
    /// whichever the client picks.
    pub async fn https_h2() -> Origin {
        let mut acceptor = origin_acceptor_builder(&origin_ca().issue(ORIGIN_NAMES));
        acceptor.set_alpn_select_callback(|_, offered| {
            openssl::ssl::select_next_proto(b"\x02h2\x08http/1.1", offered)
                .ok_or(openssl::ssl::AlpnError::NOACK)
        });
        Origin::start(Some(acceptor.build())).await
    }

    /// HTTPS origin whose certificate comes from a CA nobody trusts.
    pub async fn https_untrusted() -> Origin {
        let rogue = TestCa::new("rogue CA");
        Origin::start(Some(origin_acceptor(&rogue.issue(ORIGIN_NAMES)))).await
    }

    /// Plain HTTP origin on `ip` (e.g. 127.0.0.2), recording the local address of each
    /// accepted connection.
    pub async fn http_on(ip: &str) -> Origin {
        Origin::start_on(ip, None).await
    }

    async fn start(tls: Option<SslAcceptor>) -> Origin {
        Origin::start_on("127.0.0.1", tls).await
    }

    async fn start_on(ip: &str, tls: Option<SslAcceptor>) -> Origin {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tls = tls.map(Arc::new);
        let (seen2, conns2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, seen.clone()));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(tcp), svc)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                            let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                            if Pin::new(&mut s).accept().await.is_err() {
                                return;
                            }
                            if s.ssl().selected_alpn_protocol() == Some(b"h2") {
                                let h2 = hyper::server::conn::http2::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                );
                                let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                            } else {
                                let _ = builder
                                    .serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            seen,
            connections,
            _task: task,
        }
    }
}

/// Deterministic body bytes for `/bytes/N`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    openssl::sha::sha256(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let version = format!("{:?}", req.version());
    seen.lock().unwrap().push(Seen {
        version: version.clone(),
        method: method.clone(),
        uri: uri.clone(),
        headers: headers.clone(),
    });
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::builder().header("x-origin", "yes");
    if path == "/echo-header" {
        // Echo the Authorization header back, as some error pages and echo services do.
        if let Some((_, v)) = headers.iter().find(|(k, _)| k == "authorization") {
            resp = resp.header("x-echo-auth", v.as_str());
        }
    }
    let resp = if path == "/v1/chat/completions" {
        // A Chat Completions stream that calls `read_file`.
        resp.header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from(fixture(
                "chat_completions.sse",
                "read_file",
            ))))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        resp.body(Full::new(Bytes::from(pattern(n))))
    } else if let Some(code) = path.strip_prefix("/status/") {
        resp.status(code.parse::<u16>().unwrap_or(500))
            .header("x-status-test", code)
            .body(Full::new(Bytes::from_static(b"status body")))
    } else {
        let echo = json!({
            "version": version,
            "method": method,
            "uri": uri,
            "headers": headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "body_len": body.len(),
            "body_sha256": sha256_hex(&body),
        });
        resp.header("content-type", "application/json")
            .body(Full::new(Bytes::from(echo.to_string())))
    };
    Ok(resp.unwrap())
}

/// An origin that accepts connections and reads, but never answers.
pub struct SlowOrigin {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl SlowOrigin {
    pub async fn start() -> SlowOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        SlowOrigin { addr, _task: task }
    }
}

/// A WebSocket echo origin (plain or TLS).
pub struct WsOrigin {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl WsOrigin {
    pub async fn start(tls: bool) -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.then(|| Arc::new(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES))));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => echo_ws(tcp).await,
                        Some(a) => {
                            let ssl = openssl::ssl::Ssl::new(a.context()).unwrap();
                            let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                            if Pin::new(&mut s).accept().await.is_ok() {
                                echo_ws(s).await;
                            }
                        }
                    }
                });
            }
        });
        WsOrigin { addr, _task: task }
    }
}

async fn echo_ws<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// The runtime a `harness = false` bench runs on, or `None` when it was not started with
/// `--bench` (`cargo test --all-targets` builds and runs benches; there is nothing to time then).
pub fn bench_runtime() -> Option<tokio::runtime::Runtime> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    )
}

/// A port nothing listens on.
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// The repository's folder (for conf/ and the binary's tests).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An SSE origin that sends one event, then waits for `release` before sending the second and
/// ending the stream: a client can only see the first event early if nothing buffers it.
pub struct SseOrigin {
    pub addr: SocketAddr,
    pub release: Arc<Notify>,
    _task: tokio::task::JoinHandle<()>,
}

impl SseOrigin {
    pub async fn start() -> SseOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let release = Arc::new(Notify::new());
        let gate = release.clone();
        let task = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = read_head(&mut s).await;
            let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(chunk("data: first\n\n").as_bytes()).await;
            gate.notified().await;
            let _ = s.write_all(chunk("data: second\n\n").as_bytes()).await;
            let _ = s.write_all(b"0\r\n\r\n").await;
        });
        SseOrigin {
            addr,
            release,
            _task: task,
        }
    }
}

/// An origin that answers one request only when released, and says when it has it.
pub struct GatedOrigin {
    pub addr: SocketAddr,
    pub received: Arc<Notify>,
    pub release: Arc<Notify>,
    _task: tokio::task::JoinHandle<()>,
}

impl GatedOrigin {
    pub async fn start() -> GatedOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (received, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (got, gate) = (received.clone(), release.clone());
        let task = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = read_head(&mut s).await;
            got.notify_one();
            gate.notified().await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
                .await;
        });
        GatedOrigin {
            addr,
            received,
            release,
            _task: task,
        }
    }
}

/// One step of a scripted LLM origin's response.
#[derive(Clone)]
pub enum Step {
    /// Send these bytes (one HTTP chunk when the response is chunked).
    Send(Vec<u8>),
    /// Wait until the test releases the gate.
    Wait(Arc<Notify>),
    /// Pause, as a model thinks before its first token.
    Pause(Duration),
}

/// A scripted response: status, content type, whether chunked, and the body in steps.
#[derive(Clone)]
pub struct Script {
    pub status: u16,
    pub content_type: &'static str,
    pub chunked: bool,
    pub steps: Vec<Step>,
}

impl Script {
    /// An SSE stream sent in pieces of at most `piece` bytes (awkward boundaries on purpose).
    pub fn sse(text: &str, piece: usize) -> Script {
        Script {
            status: 200,
            content_type: "text/event-stream",
            chunked: true,
            steps: text
                .as_bytes()
                .chunks(piece)
                .map(|c| Step::Send(c.to_vec()))
                .collect(),
        }
    }

    /// An SSE stream sent one event per write, as providers send them.
    pub fn sse_events(text: &str) -> Script {
        Script {
            steps: text
                .split_inclusive("\n\n")
                .map(|e| Step::Send(e.as_bytes().to_vec()))
                .collect(),
            ..Script::sse("", 1)
        }
    }

    /// A JSON body with Content-Length.
    pub fn json(status: u16, body: &str) -> Script {
        Script {
            status,
            content_type: "application/json",
            chunked: false,
            steps: vec![Step::Send(body.as_bytes().to_vec())],
        }
    }
}

/// What a scripted origin received: the request head and body.
#[derive(Clone, Debug)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

/// An HTTPS origin (test CA, [`ORIGIN_NAMES`]) that answers every request with `script`,
/// keeping connections alive, recording what it received.
pub struct LlmOrigin {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl LlmOrigin {
    pub async fn start(script: Script) -> LlmOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Arc::new(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES)));
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rec, conns) = (received.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // A streaming server sends each event at once, as providers do.
                let _ = tcp.set_nodelay(true);
                let (acceptor, script, rec) = (acceptor.clone(), script.clone(), rec.clone());
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    let mut s = tokio::io::BufReader::new(tls);
                    loop {
                        // The client may close a kept-alive connection between requests.
                        match tokio::io::AsyncBufReadExt::fill_buf(&mut s).await {
                            Ok([]) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let (head, body) = read_response(&mut s).await;
                        rec.lock().unwrap().push(Received { head, body });
                        if serve_script(&mut s, &script).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        LlmOrigin {
            addr,
            received,
            connections,
            _task: task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve_script<S: AsyncWrite + Unpin>(s: &mut S, script: &Script) -> std::io::Result<()> {
    let total: usize = script
        .steps
        .iter()
        .map(|st| match st {
            Step::Send(b) => b.len(),
            Step::Wait(_) | Step::Pause(_) => 0,
        })
        .sum();
    let framing = if script.chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {total}")
    };
    let head = format!(
        "HTTP/1.1 {} X\r\ncontent-type: {}\r\n{framing}\r\n\r\n",
        script.status, script.content_type
    );
    s.write_all(head.as_bytes()).await?;
    for step in &script.steps {
        match step {
            Step::Send(b) if script.chunked => {
                let mut c = format!("{:x}\r\n", b.len()).into_bytes();
                c.extend_from_slice(b);
                c.extend_from_slice(b"\r\n");
                s.write_all(&c).await?;
            }
            Step::Send(b) => s.write_all(b).await?,
            Step::Wait(gate) => gate.notified().await,
            Step::Pause(d) => tokio::time::sleep(*d).await,
        }
        s.flush().await?;
    }
    if script.chunked {
        s.write_all(b"0\r\n\r\n").await?;
    }
    s.flush().await
}

/// A recorded provider stream from `tests/fixtures`, with `TOOL` as the called tool's name.
pub fn fixture(name: &str, tool: &str) -> String {
    std::fs::read_to_string(repo_dir().join("tests/fixtures").join(name))
        .unwrap()
        .replace("TOOL", tool)
}

/// A Responses WebSocket origin (TLS): for every `response.create` it receives, it sends
/// `events` as text frames. It records the handshake headers and the messages it received.
pub struct ResponsesWsOrigin {
    pub addr: SocketAddr,
    pub headers: Arc<Mutex<Vec<(String, String)>>>,
    pub messages: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl ResponsesWsOrigin {
    pub async fn start(events: Vec<String>) -> ResponsesWsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Arc::new(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES)));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (h2, m2) = (headers.clone(), messages.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, events, h, m) =
                    (acceptor.clone(), events.clone(), h2.clone(), m2.clone());
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    // The callback's signature is tungstenite's; its error type is not ours.
                    #[allow(clippy::result_large_err)]
                    let record =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            let mut h = h.lock().unwrap();
                            for (k, v) in req.headers() {
                                h.push((
                                    k.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                ));
                            }
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, record).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        let Ok(text) = msg.into_text() else { continue };
                        m.lock().unwrap().push(text.to_string());
                        if text.contains("response.create") {
                            for e in &events {
                                if ws
                                    .send(tokio_tungstenite::tungstenite::Message::text(e.clone()))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        ResponsesWsOrigin {
            addr,
            headers,
            messages,
            _task: task,
        }
    }
}

/// The `data:` payloads of a recorded SSE stream, in order.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- the binary

/// The real binary (or a shell that execs it), started on port 0: its listen addresses come
/// from its start-up line, and every later stderr line (the log) is kept for the test.
pub struct Launched {
    pub child: std::process::Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Launched {
    /// Starts `cmd` with stderr piped and waits for warden's start-up line.
    pub fn start(mut cmd: std::process::Command) -> Launched {
        use std::io::BufRead;
        let mut child = cmd
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("warden starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let unset: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let mut launched = Launched {
            child,
            proxy: unset,
            admin: unset,
            lines,
            seen: Vec::new(),
        };
        let line = launched.wait_for(|l| l.contains("warden listening"));
        let addr = |key: &str| -> SocketAddr {
            line.split(&format!("{key}="))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.trim_end_matches('"').parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line}"))
        };
        launched.proxy = addr("proxy");
        launched.admin = addr("admin");
        launched
    }

    /// Blocks until a stderr line matches (call it off the async workers, e.g. in
    /// `block_in_place`), and returns it.
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT)
                .expect("the awaited line appeared");
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }

    /// Every stderr line so far, including those not yet awaited.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// A real `redis-server` on a loopback port, with its data in a folder (append-only file on,
/// so a restart keeps what was written).
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut r = RedisServer {
            port: closed_port().await,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.run().await;
        r
    }

    pub async fn run(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (installed by .ci/deps)");
        self.child = Some(child);
        // Ready once it answers PING.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf)
                        .await
                        .is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// `warden check -c FILE` on `yaml`, written to a file of its own in a fresh folder (relative
/// paths in it resolve there): the exit code, and standard output and error together.
pub fn check_config(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warden.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("the warden binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Every variable through which a client picks up a proxy or a trust store (each also in
/// upper case): removed from a client's command so that only what a test sets applies.
const CLIENT_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "grpc_proxy",
    "no_grpc_proxy",
    "ssl_cert_file",
    "ssl_cert_dir",
    "requests_ca_bundle",
    "curl_ca_bundle",
    "git_ssl_cainfo",
    "node_extra_ca_certs",
    "node_use_env_proxy",
    "java_tool_options",
    "jdk_java_options",
];

/// Removes the test process's own proxy and trust settings ([`CLIENT_ENV`]) from `cmd`.
pub fn without_client_env(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for var in CLIENT_ENV {
        cmd.env_remove(var).env_remove(var.to_ascii_uppercase());
    }
    cmd
}
