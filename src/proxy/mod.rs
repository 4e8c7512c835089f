//! The Pingora glue: [`Warden`] implements `ProxyHttp` for every request (plain absolute-form
//! and inside intercepted tunnels), and the front door turns raw connections into either
//! HTTP sessions for it or blind tunnels. Each phase builds plain inputs from the `Session`,
//! calls a stage module (`target`, `policy`, `tls`, `telemetry`) and applies the result.

mod buffered;
mod ctx;
mod edit;
mod front_door;
mod head;
mod http1;
mod llm;
mod tunnel;
mod upgrade;
mod warden;

pub use ctx::RequestCtx;
pub use front_door::FrontDoor;
pub use warden::Warden;

use crate::reason::{error_body, Reason};
use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;

/// The request id to use: the client's `X-Request-Id` when it is a sane token, else a new one.
pub(crate) fn request_id_from(value: Option<&[u8]>) -> String {
    match value {
        Some(v)
            if !v.is_empty() && v.len() <= 200 && v.iter().all(|b| (0x21..=0x7e).contains(b)) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

use edit::X_REQUEST_ID;
const PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");

/// The `Proxy-Authenticate` challenge sent with every 407.
const PROXY_CHALLENGE: &str = "Basic realm=\"warden\"";

/// The response head warden sends for `reason`.
pub(super) fn refusal_head(
    reason: Reason,
    request_id: &str,
    body_len: usize,
) -> Result<ResponseHeader> {
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

/// Maps a Pingora error to a reason. Errors warden raised itself carry their reason in the ctx
/// and never reach here.
fn reason_for(e: &Error) -> Reason {
    use ErrorType::*;
    if out_of_fds(e) {
        // Creating the upstream socket failed: Pingora calls it internal, but to the client it
        // is a connect that could not be made.
        return Reason::UpstreamConnectFailed;
    }
    match e.esource() {
        ErrorSource::Downstream => match e.etype() {
            ReadTimedout | WriteTimedout => Reason::IdleTimeout,
            InvalidHTTPHeader => Reason::MalformedRequest,
            _ => Reason::ClientError,
        },
        ErrorSource::Upstream | ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
            ConnectTimedout | TLSHandshakeTimedout => Reason::UpstreamConnectTimeout,
            ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
            | ConnectProxyFailure | AcceptError => Reason::UpstreamConnectFailed,
            TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => {
                Reason::UpstreamTlsError
            }
            ReadTimedout | WriteTimedout => Reason::UpstreamTimeout,
            HTTPStatus(_) | InvalidHTTPHeader | H1Error | H2Error | H2Downgrade | InvalidH2
            | ConnectionClosed | ReadError | WriteError => Reason::UpstreamError,
            _ if *e.esource() == ErrorSource::Upstream => Reason::UpstreamError,
            _ => Reason::Internal,
        },
    }
}

/// Whether `e` comes from running out of file descriptors (EMFILE, ENFILE).
pub(super) fn out_of_fds(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|code| code == 23 || code == 24)
}

/// [`reason_for`], knowing whether the connection was upgraded: a client that stops sending
/// mid-body is a stalled request body, answered `408 request_body_timeout`; an upgraded one
/// that goes quiet is an idle connection.
pub(super) fn reason_in(e: &Error, upgraded: bool) -> Reason {
    match reason_for(e) {
        Reason::IdleTimeout if !upgraded && *e.esource() == ErrorSource::Downstream => {
            Reason::RequestBodyTimeout
        }
        r => r,
    }
}

/// Converts a body the front door writes into raw HTTP/1.1 bytes: the same head and body
/// `request_filter` sends, for connections that never reach the HTTP engine.
pub(crate) fn raw_refusal(
    reason: Reason,
    host: Option<&str>,
    rule: Option<&str>,
    request_id: &str,
) -> Vec<u8> {
    let body: Bytes = error_body(reason, host, rule, Some(request_id));
    let status = http::StatusCode::from_u16(reason.status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let challenge = if status.as_u16() == 407 {
        format!("proxy-authenticate: {PROXY_CHALLENGE}\r\n")
    } else {
        String::new()
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nproxy-status: {}\r\n{challenge}x-request-id: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        reason.proxy_status(),
        request_id,
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_kept_only_when_sane() {
        assert_eq!(request_id_from(Some(b"abc-123")), "abc-123");
        assert_eq!(request_id_from(None).len(), 32);
        assert_ne!(request_id_from(Some(b"has space")), "has space");
        assert_ne!(request_id_from(Some(&[b'a'; 201])).len(), 201);
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        // Content-Length with Transfer-Encoding is vetted as the head is read
        // (`head::tests::what_pingora_would_refuse_bare_gets_a_reason`).
        assert_eq!(
            crate::target::check_head(2000, b"http://a.test/", &[], None, 1024),
            Err(Reason::HeadersTooLarge)
        );
    }

    #[test]
    fn raw_refusals_are_complete_http_responses() {
        let raw = raw_refusal(Reason::BadAuthority, None, None, "rid");
        let text = String::from_utf8(raw).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains(
            "proxy-status: warden; error=http_request_error; details=\"bad_authority\"\r\n"
        ));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
