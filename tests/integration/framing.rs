//! Message framing across every body rewriter, byte for byte: a raw origin records exactly what
//! reaches it on each pooled connection and parses it strictly, as a real server would, so a
//! stray byte after a body is the start of the next request there.

use crate::common::*;
use crate::substitutions::{warden as substitution_warden, PLACEHOLDER, SECRET};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One HTTP/1.1 message read strictly: its head and its body, decoded.
pub struct Message {
    pub head: String,
    pub body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Why a message could not be read.
#[derive(Debug)]
pub enum Bad {
    /// The peer closed between messages.
    Eof,
    /// Anything a strict parser rejects.
    Malformed(String),
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<(), Bad> {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
        .await
        .map_err(|_| Bad::Malformed("read timed out".into()))?
        .map_err(|e| Bad::Malformed(e.to_string()))?;
    if n == 0 {
        return Err(Bad::Eof);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<Vec<u8>, Bad> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Ok(l);
        }
        fill(s, buf).await?;
    }
}

async fn exact<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<Vec<u8>, Bad> {
    while buf.len() < n {
        fill(s, buf).await?;
    }
    Ok(buf.drain(..n).collect())
}

/// Reads one message from `s` (bytes already read but not consumed live in `buf`). A head must
/// start at the first byte: anything else, like a stray `0\r\n\r\n`, is malformed.
pub async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    request: bool,
) -> Result<Message, Bad> {
    let mut lines = Vec::new();
    loop {
        let l = match line(s, buf).await {
            Err(Bad::Eof) if lines.is_empty() && buf.is_empty() => return Err(Bad::Eof),
            Err(Bad::Eof) => return Err(Bad::Malformed("closed mid-head".into())),
            r => r?,
        };
        if l.is_empty() {
            break;
        }
        lines.push(String::from_utf8(l).map_err(|_| Bad::Malformed("not UTF-8".into()))?);
    }
    let start = &lines[0];
    let ok = if request {
        let parts: Vec<&str> = start.split(' ').collect();
        parts.len() == 3 && parts[2].starts_with("HTTP/1.")
    } else {
        start.starts_with("HTTP/1.1 ")
    };
    if !ok {
        return Err(Bad::Malformed(format!("start line {start:?}")));
    }
    let head = lines.join("\r\n");
    let mut msg = Message {
        head,
        body: Vec::new(),
    };
    let bodiless = !request && (start.contains(" 204 ") || start.contains(" 304 "));
    if bodiless {
        return Ok(msg);
    }
    if msg
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let size = line(s, buf).await?;
            let size = std::str::from_utf8(&size)
                .ok()
                .and_then(|t| usize::from_str_radix(t, 16).ok())
                .ok_or_else(|| Bad::Malformed(format!("chunk size {size:?}")))?;
            if size == 0 {
                // No trailers: the terminator's blank line follows at once.
                if !line(s, buf).await?.is_empty() {
                    return Err(Bad::Malformed("trailer after the last chunk".into()));
                }
                break;
            }
            msg.body.extend(exact(s, buf, size).await?);
            if exact(s, buf, 2).await? != b"\r\n" {
                return Err(Bad::Malformed("chunk not followed by CRLF".into()));
            }
        }
    } else if let Some(len) = msg.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| Bad::Malformed("content-length".into()))?;
        msg.body = exact(s, buf, len).await?;
    } else if !request {
        return Err(Bad::Malformed("response without framing".into()));
    }
    Ok(msg)
}

/// What the raw origin saw on one connection.
#[derive(Default)]
pub struct Conn {
    /// Every byte received, in order.
    pub raw: Vec<u8>,
    /// The requests it parsed: start line and decoded body.
    pub requests: Vec<(String, Vec<u8>)>,
    /// Set when the bytes did not parse as a request where one had to start.
    pub error: Option<String>,
}

/// A TLS origin that parses requests strictly, answers each with a JSON body naming its
/// number on the connection and its path, and records every byte.
pub struct RawOrigin {
    pub port: u16,
    pub conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start() -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = Arc::new(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES)));
        let conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>> = Arc::default();
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = Arc::new(Mutex::new(Conn::default()));
                conns2.lock().unwrap().push(conn.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut s).accept().await.is_ok() {
                        serve(&mut s, &conn).await;
                    }
                });
            }
        });
        RawOrigin {
            port,
            conns,
            _task: task,
        }
    }
}

/// Serves requests on one connection until it closes or sends something that is not one.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, conn: &Arc<Mutex<Conn>>) {
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        match read_message(&mut RecordRead { s, conn }, &mut buf, true).await {
            Ok(m) => {
                n += 1;
                let start = m.head.lines().next().unwrap_or("").to_string();
                let path = start.split(' ').nth(1).unwrap_or("").to_string();
                conn.lock().unwrap().requests.push((start, m.body));
                let body = format!("{{\"reply\":{n},\"path\":\"{path}\"}}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() || s.flush().await.is_err() {
                    return;
                }
            }
            Err(Bad::Eof) => return,
            Err(Bad::Malformed(why)) => {
                conn.lock().unwrap().error = Some(why);
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
                return;
            }
        }
    }
}

/// Records the plaintext the parser reads, so the record is what a server sees after TLS.
struct RecordRead<'a, S> {
    s: &'a mut S,
    conn: &'a Arc<Mutex<Conn>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordRead<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.s).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.conn.lock().unwrap().raw.extend(new);
        r
    }
}

/// A tunnel to the raw origin through warden, TLS verified against warden's CA.
async fn tunnel(
    w: &TestWarden,
    host: &str,
    port: u16,
) -> tokio_openssl::SslStream<tokio::net::TcpStream> {
    w.tls_tunnel(&format!("{host}:{port}"), host).await
}

/// Sends `request` on its own tunnel, then a GET on a second tunnel, and checks that each got
/// its own answer and that the origin received exactly one well-framed message for each: no
/// stray bytes between them.
async fn two_tunnels(w: &TestWarden, origin: &RawOrigin, host: &str, request: &[u8]) {
    let port = origin.port;
    let mut a = tunnel(w, host, port).await;
    a.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let first = read_message(&mut a, &mut buf, false).await.unwrap();
    assert!(first.head.starts_with("HTTP/1.1 200"), "{}", first.head);
    let first_body = String::from_utf8_lossy(&first.body).to_string();
    assert!(first_body.contains("first\""), "{first_body}");
    let mut b = tunnel(w, host, port).await;
    b.write_all(format!("GET /second HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let second = read_message(&mut b, &mut buf, false).await.unwrap();
    assert!(second.head.starts_with("HTTP/1.1 200"), "{}", second.head);
    let second_body = String::from_utf8_lossy(&second.body).to_string();
    assert!(
        second_body.contains("\"path\":\"/second\""),
        "the second tunnel got another answer: {second_body}"
    );
}

/// What the origin received on each connection so far. Called once the second request was
/// answered: a stray byte after the first body was written before the first response was
/// read, so by then the origin has read it and failed to parse it as a request.
fn origin_record(w: TestWarden, origin: &RawOrigin) -> Vec<(Vec<u8>, Conn)> {
    drop(w);
    origin
        .conns
        .lock()
        .unwrap()
        .iter()
        .map(|c| {
            let c = std::mem::take(&mut *c.lock().unwrap());
            (c.raw.clone(), c)
        })
        .collect()
}

/// Every connection parsed cleanly: no stray bytes where a request had to start.
fn assert_clean(record: &[(Vec<u8>, Conn)], expect_body: &[u8]) {
    let mut firsts = 0;
    for (raw, c) in record {
        assert!(
            c.error.is_none(),
            "origin read {:?} on a connection: {:?}",
            c.error,
            String::from_utf8_lossy(raw)
        );
        for (start, body) in &c.requests {
            if start.contains("/first") {
                firsts += 1;
                assert_eq!(
                    String::from_utf8_lossy(body),
                    String::from_utf8_lossy(expect_body)
                );
            }
        }
    }
    assert_eq!(firsts, 1, "the first request reached the origin once");
}

fn chunked_post(host: &str, port: u16, chunks: &[&str]) -> Vec<u8> {
    let mut out = format!(
        "POST /first HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for c in chunks {
        out.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    out.push_str("0\r\n\r\n");
    out.into_bytes()
}

fn sized_post(host: &str, port: u16, body: &str) -> Vec<u8> {
    format!(
        "POST /first HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The one place a terminator can come from: the origin's raw bytes hold exactly as many
/// `0\r\n\r\n` terminators as chunked requests were sent.
fn terminators(record: &[(Vec<u8>, Conn)]) -> usize {
    record
        .iter()
        .map(|(raw, _)| raw.windows(7).filter(|w| w == b"\r\n0\r\n\r\n").count())
        .sum()
}

/// One request through a substitution host on a fresh origin and warden, then a second
/// tunnel's; the origin's record of both, checked clean.
async fn substituted(request: impl Fn(u16) -> Vec<u8>, expect: &str) -> Vec<(Vec<u8>, Conn)> {
    let origin = RawOrigin::start().await;
    let w = substitution_warden(origin.port).await;
    two_tunnels(&w, &origin, "origin.test", &request(origin.port)).await;
    let record = origin_record(w, &origin);
    assert_clean(&record, expect.as_bytes());
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_chunked_body_ends_once_and_the_next_tunnel_gets_its_own_answer() {
    for (body, expect) in [
        (vec!["hello"], "hello".to_string()),
        (
            vec!["tok=", "WARDEN_EX", "AMPLE_TOKEN", "&x=1"],
            format!("tok={SECRET}&x=1"),
        ),
        (vec![], String::new()),
    ] {
        let record = substituted(|port| chunked_post("origin.test", port, &body), &expect).await;
        assert_eq!(
            terminators(&record),
            1,
            "one end-of-body marker on the wire"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substituted_sized_and_empty_bodies_are_framed_exactly() {
    for (body, expect) in [
        (format!("a={PLACEHOLDER}"), format!("a={SECRET}")),
        ("plain".to_string(), "plain".to_string()),
        (String::new(), String::new()),
    ] {
        let record = substituted(|port| sized_post("origin.test", port, &body), &expect).await;
        assert!(terminators(&record) <= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_request_body_reaches_the_origin_framed_once() {
    let origin = RawOrigin::start().await;
    let port = origin.port;
    let w = TestWarden::start(&default_yaml(
        "auto",
        "",
        &format!("llm:\n  - host: \"openai.test:{port}\"\n    provider: openai\n"),
    ))
    .await;
    let body = ["{\"model\":\"gpt-5\",", "\"messages\":[]}"];
    // The LLM exchange answers only its API paths; point the request at one.
    let text = String::from_utf8(chunked_post("openai.test", port, &body)).unwrap();
    let req = text.replacen("POST /first", "POST /v1/chat/completions?first", 1);
    two_tunnels(&w, &origin, "openai.test", req.as_bytes()).await;
    let record = origin_record(w, &origin);
    for (raw, c) in &record {
        assert!(c.error.is_none(), "{:?}", String::from_utf8_lossy(raw));
    }
    let bodies: Vec<&Vec<u8>> = record
        .iter()
        .flat_map(|(_, c)| c.requests.iter())
        .filter(|(s, _)| s.contains("chat/completions"))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(bodies, [&body.concat().into_bytes()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transformed_response_ends_once_and_the_next_request_on_the_tunnel_is_answered() {
    let origin = RawOrigin::start().await;
    let port = origin.port;
    let w = TestWarden::start(&default_yaml(
        "auto",
        "",
        &format!(
            "transforms:\n  - host: \"origin.test:{port}\"\n    replace_body:\n      - {{ pattern: 'reply', with: 'answer' }}\n"
        ),
    ))
    .await;
    let mut t = tunnel(&w, "origin.test", port).await;
    let mut buf = Vec::new();
    for (i, path) in ["/one", "/two", "/three"].iter().enumerate() {
        t.write_all(format!("GET {path} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let m = read_message(&mut t, &mut buf, false).await.unwrap();
        assert!(m.head.starts_with("HTTP/1.1 200"), "{}", m.head);
        assert!(
            m.header("content-length").is_none(),
            "rewritten bodies go chunked"
        );
        let body = String::from_utf8_lossy(&m.body).to_string();
        assert!(
            body.contains("\"answer\":") && body.contains(path),
            "{body}"
        );
        assert!(buf.is_empty(), "bytes after response {i}: {buf:?}");
    }
}
