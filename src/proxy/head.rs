//! Reading and vetting one HTTP/1.x request head, bounded in size and time. Every request
//! head a client sends goes through here before Pingora sees it: the front door reads the
//! first one of each connection, the HTTP/1 loop ([`super::http1`]) every later one and
//! those inside intercepted tunnels. Whatever Pingora's own parser would answer with a bare
//! `400`/`405` is refused here instead, with a reason code and a log line.

use crate::reason::Reason;
use bytes::BytesMut;
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::ResponseHeader;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most header lines in one head (Pingora's own limit).
const MAX_HEADERS: usize = 256;

/// One request head, parsed.
pub(super) struct Head {
    /// Everything read so far: the head and any bytes that followed it.
    pub bytes: BytesMut,
    pub head_len: usize,
    pub method: String,
    pub target: Vec<u8>,
    /// `HTTP/1.0` (0) or `HTTP/1.1` (1).
    pub version: u8,
    pub hosts: Vec<Vec<u8>>,
    pub proxy_auth: Vec<Vec<u8>>,
    pub content_length: Vec<Vec<u8>>,
    pub transfer_encoding: Vec<Vec<u8>>,
    pub upgrade: bool,
    pub request_id: String,
}

/// Why no head could be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// The client closed, or stayed silent, before sending any byte of a head: nobody to
    /// answer.
    Closed,
    /// Part of a head arrived, but not all of it in time.
    Timeout,
    TooLarge,
    Malformed(String),
}

/// How long a head may take.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wait {
    /// The whole head by this instant (the first request of a connection).
    Until(Instant),
    /// Up to `idle` for its first byte (a kept-alive connection), then `whole` for the rest.
    Idle { idle: Duration, whole: Duration },
}

/// Reads until one whole request head is in `buf` (which may already hold bytes: pipelined
/// leftovers of the previous request), at most `max` bytes, within `wait`.
pub(super) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
    max: usize,
    wait: Wait,
) -> Result<Head, HeadError> {
    let mut deadline = match wait {
        Wait::Until(t) => Some(t),
        Wait::Idle { whole, .. } if !buf.is_empty() => Some(Instant::now() + whole),
        Wait::Idle { .. } => None,
    };
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse(&buf, max)? {
                let mut head = head;
                head.bytes = buf;
                return Ok(head);
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let limit = match (deadline, wait) {
            (Some(t), _) | (None, Wait::Until(t)) => t,
            (None, Wait::Idle { idle, .. }) => Instant::now() + idle,
        };
        let n = match tokio::time::timeout_at(limit.into(), stream.read_buf(&mut buf)).await {
            Ok(r) => r,
            // Nothing of a head yet: an idle connection, closed without an answer.
            Err(_) if buf.is_empty() => return Err(HeadError::Closed),
            Err(_) => return Err(HeadError::Timeout),
        };
        if let (None, Wait::Idle { whole, .. }) = (deadline, wait) {
            // The first bytes of a kept-alive connection's next head start its clock.
            deadline = Some(Instant::now() + whole);
        }
        match n {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed("closed mid-head".into())),
            Ok(_) => {}
            Err(_) if buf.is_empty() => return Err(HeadError::Closed),
            Err(e) => return Err(HeadError::Malformed(format!("read failed mid-head: {e}"))),
        }
    }
}

/// Parses `buf` as a request head: `None` while it is incomplete.
fn parse(buf: &[u8], max: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            if head_len > max {
                return Err(HeadError::TooLarge);
            }
            let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
            else {
                return Err(HeadError::Malformed("incomplete request line".into()));
            };
            // The request line exactly as sent (after any empty lines before it): a raw
            // control byte or space in the target is refused here rather than escaped.
            let start = buf
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(0);
            let line = buf[start..]
                .split(|b| *b == b'\n')
                .next()
                .unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if crate::target::check_request_line(line).is_err() {
                return Err(HeadError::Malformed(
                    "control byte or space in the request line".into(),
                ));
            }
            let mut head = Head {
                bytes: BytesMut::new(),
                head_len,
                method: method.to_string(),
                target: target.as_bytes().to_vec(),
                version,
                hosts: Vec::new(),
                proxy_auth: Vec::new(),
                content_length: Vec::new(),
                transfer_encoding: Vec::new(),
                upgrade: false,
                request_id: String::new(),
            };
            let mut request_id = None;
            for h in req.headers.iter() {
                let name = h.name;
                if name.eq_ignore_ascii_case("host") {
                    head.hosts.push(h.value.to_vec());
                } else if name.eq_ignore_ascii_case("proxy-authorization") {
                    head.proxy_auth.push(h.value.to_vec());
                } else if name.eq_ignore_ascii_case("x-request-id") {
                    request_id = Some(h.value);
                } else if name.eq_ignore_ascii_case("content-length") {
                    head.content_length.push(h.value.to_vec());
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    head.transfer_encoding.push(h.value.to_vec());
                } else if name.eq_ignore_ascii_case("upgrade") {
                    head.upgrade = true;
                }
            }
            head.request_id = request_id_from(request_id);
            Ok(Some(head))
        }
        Ok(httparse::Status::Partial) if buf.len() > max => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// How the body after a head is delimited, for the HTTP/1 loop to hand Pingora exactly one
/// request at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyFraming {
    Sized(u64),
    Chunked,
    /// A WebSocket (or other) upgrade: after the head, the stream is the application's.
    Open,
}

impl Head {
    /// Checks what Pingora would otherwise refuse with a bare status, and says how the body
    /// is framed. `Err` carries the reason and an operator detail.
    pub(super) fn vet(&self) -> Result<BodyFraming, (Reason, String)> {
        if self.method.eq_ignore_ascii_case("CONNECT") {
            return Err((
                Reason::UnexpectedConnect,
                "CONNECT after the first request of a connection".into(),
            ));
        }
        self.vet_authority()?;
        let ambiguous = |why: &str| Err((Reason::AmbiguousFraming, why.to_string()));
        if !self.transfer_encoding.is_empty() {
            if !self.content_length.is_empty() {
                return ambiguous("Content-Length with Transfer-Encoding");
            }
            if self.version == 0 {
                return ambiguous("Transfer-Encoding on an HTTP/1.0 request");
            }
            let last = self
                .transfer_encoding
                .last()
                .and_then(|v| v.rsplit(|b| *b == b',').next())
                .map(|t| t.trim_ascii())
                .unwrap_or_default();
            if !last.eq_ignore_ascii_case(b"chunked") {
                return ambiguous("the final transfer coding is not chunked");
            }
            return Ok(if self.upgrade_request() {
                BodyFraming::Open
            } else {
                BodyFraming::Chunked
            });
        }
        let mut length = None;
        for value in &self.content_length {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                let n = std::str::from_utf8(token)
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok());
                match (n, length) {
                    (None, _) => return ambiguous("Content-Length is not a number"),
                    (Some(n), Some(l)) if n != l => {
                        return ambiguous("Content-Length values differ")
                    }
                    (Some(n), _) => length = Some(n),
                }
            }
        }
        if self.upgrade_request() {
            return Ok(BodyFraming::Open);
        }
        Ok(BodyFraming::Sized(length.unwrap_or(0)))
    }

    /// A request Pingora treats as an upgrade (HTTP/1.1 with `Upgrade`).
    fn upgrade_request(&self) -> bool {
        self.upgrade && self.version == 1
    }

    /// Pingora refuses an absolute-form target whose authority differs from `Host` byte for
    /// byte, carries userinfo or is ambiguous; so does warden, first.
    fn vet_authority(&self) -> Result<(), (Reason, String)> {
        if self.hosts.len() > 1 {
            return Err((Reason::AmbiguousFraming, "more than one Host".into()));
        }
        match raw_target_authority(&self.target) {
            RawTargetAuthority::None => Ok(()),
            RawTargetAuthority::AmbiguousAuthority => Err((
                Reason::BadAuthority,
                "ambiguous absolute-form authority".into(),
            )),
            RawTargetAuthority::Absolute { authority, .. } => {
                if authority.contains(&b'@') {
                    return Err((
                        Reason::BadAuthority,
                        "userinfo in the request target".into(),
                    ));
                }
                if http::uri::Authority::try_from(authority).is_err() {
                    return Err((Reason::BadAuthority, "unparseable authority".into()));
                }
                match self.hosts.first() {
                    Some(host) if host.as_slice() != authority => Err((
                        Reason::HostMismatch,
                        "Host differs from the request target's authority".into(),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The request id to use: the client's `X-Request-Id` when it is a sane token, else a new one.
pub(super) fn request_id_from(value: Option<&[u8]>) -> String {
    match value {
        Some(v)
            if !v.is_empty() && v.len() <= 200 && v.iter().all(|b| (0x21..=0x7e).contains(b)) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// The size of a response head on the wire: status line, header lines, blank line.
pub(super) fn response_head_len(head: &ResponseHeader) -> usize {
    let lines: usize = head
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    "HTTP/1.1 200 \r\n\r\n".len() + head.status.canonical_reason().map_or(0, str::len) + lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<BodyFraming, Reason> {
        match parse(text.as_bytes(), 64 * 1024) {
            Ok(Some(h)) => h.vet().map_err(|(r, _)| r),
            Ok(None) => panic!("incomplete head in test"),
            Err(_) => Err(Reason::MalformedRequest),
        }
    }

    #[test]
    fn framing_follows_content_length_chunked_or_upgrade() {
        let get = "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n";
        assert_eq!(head(get), Ok(BodyFraming::Sized(0)));
        let sized = "POST http://a.test/ HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n";
        assert_eq!(head(sized), Ok(BodyFraming::Sized(5)));
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(head(chunked), Ok(BodyFraming::Chunked));
        let ws = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert_eq!(head(ws), Ok(BodyFraming::Open));
        let ws10 = "GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(head(ws10), Ok(BodyFraming::Sized(0)));
    }

    #[test]
    fn what_pingora_would_refuse_bare_gets_a_reason() {
        for (text, reason) in [
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reason::AmbiguousFraming,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reason::AmbiguousFraming,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Reason::AmbiguousFraming,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                Reason::AmbiguousFraming,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
                Reason::AmbiguousFraming,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                Reason::AmbiguousFraming,
            ),
            (
                "CONNECT a.test:443 HTTP/1.1\r\n\r\n",
                Reason::UnexpectedConnect,
            ),
            (
                "GET https://a.test:443/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                Reason::HostMismatch,
            ),
            (
                "GET http://u@a.test/ HTTP/1.1\r\n\r\n",
                Reason::BadAuthority,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Reason::AmbiguousFraming,
            ),
            (
                "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                Reason::MalformedRequest,
            ),
            (
                "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
                Reason::MalformedRequest,
            ),
            ("GET /a\tb HTTP/1.1\r\n\r\n", Reason::MalformedRequest),
            ("GET / HTTP/1.1\r\nX\r: a\r\n\r\n", Reason::MalformedRequest),
        ] {
            assert_eq!(head(text), Err(reason), "{text:?}");
        }
    }

    /// Whatever Pingora's own request reader refuses, warden refuses first, so no client ever
    /// gets Pingora's bare answer. Both read the same bytes over a real socket.
    #[tokio::test]
    async fn warden_refuses_every_head_pingoras_reader_refuses() {
        use pingora_core::protocols::http::v1::server::HttpSession;
        use pingora_core::protocols::l4::stream::Stream as L4Stream;
        use tokio::io::AsyncWriteExt;
        let pieces = [
            "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
            "GET http://a.test:80/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "GET http://[::1/ HTTP/1.1\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1,2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab",
            "POST / HTTP/1.1\r\nContent-Length: 0x2\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET /a\x01b HTTP/1.1\r\n\r\n",
            "GET /a\x7fb HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: \x01\r\n\r\n",
            "GET / HTTP/1.1\r\n X: y\r\n\r\n",
            "GET / HTTP/1.2\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "G\x00T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\n\n",
            "GET http://a.test/%2e%2e/ HTTP/1.1\r\n\r\n",
            "GET http:/\\a.test/ HTTP/1.1\r\n\r\n",
            "GET http://a.test\\@b.test/ HTTP/1.1\r\n\r\n",
            "CONNECT a.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for text in pieces {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(text.as_bytes()).await.unwrap();
            client.shutdown().await.unwrap();
            let mut session = HttpSession::new(Box::new(L4Stream::from(server)));
            let pingora_ok = matches!(session.read_request().await, Ok(Some(_)));
            let ours = match parse(text.as_bytes(), 64 * 1024) {
                Ok(Some(h)) => h.vet().is_ok(),
                Ok(None) => false,
                Err(_) => false,
            };
            assert!(
                pingora_ok || !ours,
                "Pingora refuses {text:?} but warden would pass it on"
            );
        }
    }

    #[test]
    fn request_ids_from_clients_are_kept_only_when_sane() {
        assert_eq!(request_id_from(Some(b"abc-123")), "abc-123");
        assert_eq!(request_id_from(None).len(), 32);
        assert_ne!(request_id_from(Some(b"has space")), "has space");
        assert_ne!(request_id_from(Some(&[b'a'; 201])).len(), 201);
    }
}
