//! Every answer warden writes itself: the JSON body, the head (for Pingora, or as raw HTTP/1.1
//! bytes for connections that never reach the HTTP engine) and the raw writer. Both forms of
//! the head come from one list of headers, so a refusal reads the same whichever path sent
//! it. Called by `request_filter`, `fail_to_proxy`, the LLM exchange, the front door and the
//! HTTP/1 loop; what a [`Reason`] means (status, code, hint) lives in [`crate::reason`].

use crate::reason::Reason;
use crate::target::Authority;
use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The request id header: echoed on every refusal, and set on requests and responses warden
/// forwards.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// RFC 9209's `Proxy-Status`, naming the error type and warden's reason code.
const PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");

/// The `Proxy-Authenticate` challenge sent with every 407.
const PROXY_CHALLENGE: &str = "Basic realm=\"warden\"";

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    reason: &'a str,
    host: Option<&'a str>,
    rule: Option<&'a str>,
    hint: &'a str,
    request_id: Option<&'a str>,
}

/// The JSON body warden writes for `reason`. `host`, `rule` and `request_id` are echoed so an
/// agent can tell which destination was refused and by what; none carries a secret.
pub fn body(
    reason: Reason,
    host: Option<&str>,
    rule: Option<&str>,
    request_id: Option<&str>,
) -> Bytes {
    let p = reason.present();
    let body = ErrorBody {
        error: p.message,
        reason: p.code,
        host,
        rule,
        hint: p.hint,
        request_id,
    };
    // Serialising a struct of strings cannot fail; fall back to a fixed body rather than panic.
    let mut out = serde_json::to_vec(&body)
        .unwrap_or_else(|_| br#"{"error":"internal","reason":"internal_error"}"#.to_vec());
    out.push(b'\n');
    Bytes::from(out)
}

/// The Pingora response head for `reason` with a body of `body_len` bytes. Fails only if
/// `request_id` is not a valid header value (ids are vetted tokens or generated).
pub fn head(reason: Reason, request_id: &str, body_len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(reason.status(), Some(7))?;
    if reason.status() == 407 {
        resp.insert_header(header::PROXY_AUTHENTICATE, PROXY_CHALLENGE)?;
    }
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    resp.insert_header(PROXY_STATUS, reason.proxy_status())?;
    resp.insert_header(X_REQUEST_ID, request_id)?;
    resp.insert_header(header::CONNECTION, "close")?;
    Ok(resp)
}

/// The whole refusal for `reason` as raw HTTP/1.1 bytes, head and body: the head of [`head`]
/// as Pingora puts it on the wire, for connections that never reach the HTTP engine.
pub fn raw(reason: Reason, host: Option<&str>, rule: Option<&str>, request_id: &str) -> Vec<u8> {
    raw_with(reason, host, rule, request_id, None)
}

/// [`raw`] with a `retry-after` of that many seconds (a spent budget).
pub fn raw_with(
    reason: Reason,
    host: Option<&str>,
    rule: Option<&str>,
    request_id: &str,
    retry_after: Option<u64>,
) -> Vec<u8> {
    let body = body(reason, host, rule, Some(request_id));
    let mut resp = match head(reason, request_id, body.len()) {
        Ok(resp) => resp,
        // Ids are vetted or generated, so this is a bug: answer without the id, not at all.
        Err(_) => match head(reason, "-", body.len()) {
            Ok(resp) => resp,
            Err(_) => return Vec::new(),
        },
    };
    if let Some(secs) = retry_after {
        // A number is always a valid header value.
        let _ = resp.insert_header(header::RETRY_AFTER, secs.to_string());
    }
    let status = resp.status;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    resp.header_to_h1_wire(&mut out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// Writes the refusal for `reason` as raw HTTP/1.1 and closes the stream: for connections
/// (or requests) that never reach the HTTP engine. Best effort: the client may be gone.
pub async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reason: Reason,
    dest: Option<&Authority>,
    rule: Option<&str>,
    request_id: &str,
) {
    write_with(stream, reason, dest, rule, request_id, None).await;
}

/// [`write`] with a `retry-after` of that many seconds (a spent budget).
pub async fn write_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reason: Reason,
    dest: Option<&Authority>,
    rule: Option<&str>,
    request_id: &str,
    retry_after: Option<u64>,
) {
    let host = dest.map(|d| d.host.to_string());
    let raw = raw_with(reason, host.as_deref(), rule, request_id, retry_after);
    let _ = stream.write_all(&raw).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_json_with_the_reason_code() {
        let body = body(Reason::UpstreamTlsError, Some("a.test"), None, Some("id-1"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["reason"], "upstream_tls_error");
        assert_eq!(v["host"], "a.test");
        assert_eq!(v["request_id"], "id-1");
        assert!(v["hint"].as_str().unwrap().contains("upstream_ca_file"));
    }

    #[test]
    fn raw_refusals_are_complete_http_responses() {
        let raw = raw(Reason::BadAuthority, None, None, "rid");
        let text = String::from_utf8(raw).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains(
            "proxy-status: warden; error=http_request_error; details=\"bad_authority\"\r\n"
        ));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn raw_and_pingora_refusals_carry_the_same_status_headers_and_body() {
        for reason in Reason::ALL {
            let raw = raw(reason, Some("a.test"), Some("rule-1"), "rid-7");
            let mut parsed = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut parsed);
            let httparse::Status::Complete(head_len) = resp.parse(&raw).unwrap() else {
                panic!("{reason:?}: incomplete head");
            };
            let body = body(reason, Some("a.test"), Some("rule-1"), Some("rid-7"));
            let pingora = head(reason, "rid-7", body.len()).unwrap();
            assert_eq!(resp.code, Some(pingora.status.as_u16()), "{reason:?}");
            assert_eq!(resp.reason, pingora.status.canonical_reason(), "{reason:?}");
            let raw_headers: Vec<(String, &[u8])> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value))
                .collect();
            let pingora_headers: Vec<(String, &[u8])> = pingora
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes()))
                .collect();
            assert_eq!(raw_headers, pingora_headers, "{reason:?}");
            assert_eq!(&raw[head_len..], &body[..], "{reason:?}");
        }
    }

    #[test]
    fn only_a_407_carries_the_basic_challenge_in_either_form() {
        let raw_407 = String::from_utf8(raw(Reason::AuthRequired, None, None, "r")).unwrap();
        let challenge = "\r\nproxy-authenticate: basic realm=\"warden\"\r\n";
        assert!(
            raw_407.to_ascii_lowercase().contains(challenge),
            "{raw_407}"
        );
        let head_407 = head(Reason::AuthRequired, "r", 0).unwrap();
        assert_eq!(
            head_407.headers[header::PROXY_AUTHENTICATE],
            "Basic realm=\"warden\""
        );
        let raw_400 = String::from_utf8(raw(Reason::BadAuthority, None, None, "r")).unwrap();
        assert!(!raw_400.to_ascii_lowercase().contains("proxy-authenticate"));
        let head_400 = head(Reason::BadAuthority, "r", 0).unwrap();
        assert!(!head_400.headers.contains_key(header::PROXY_AUTHENTICATE));
    }
}
