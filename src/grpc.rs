//! gRPC as warden sees it: which requests are gRPC calls, the service and method a call names
//! (for the log line), the `grpc-status` it ended with, and how a refusal is put to a gRPC
//! client — HTTP 200, `content-type: application/grpc` and trailers-only `grpc-status` /
//! `grpc-message`, so the client raises a status error (`PERMISSION_DENIED`,
//! `UNAUTHENTICATED`, ...) instead of a protocol error. Called by the refusal path and the
//! log-filling phases.

use crate::reason::Reason;
use http::header::{self, HeaderMap, HeaderName};
use pingora_error::Result;
use pingora_http::ResponseHeader;

/// The trailer (or trailers-only header) carrying a call's status code.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The trailer carrying a call's status message.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a request with this `content-type` is a gRPC call (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web`, ...).
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type
        .is_some_and(|ct| ct.len() >= 16 && ct[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// The service and method of a call's path, `/package.Service/Method`.
pub fn call(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next()?;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The status code in `headers` (trailers, or the head of a trailers-only response).
pub fn status_in(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The gRPC status warden answers `reason` with: `PERMISSION_DENIED` (7) for policy
/// denials, `UNAUTHENTICATED` (16) for proxy auth, `RESOURCE_EXHAUSTED` (8) for a spent
/// budget, `UNAVAILABLE` (14) for an unreachable or failing upstream, `INTERNAL` (13) for a
/// malformed request or warden's own failure — gRPC's own mapping of those HTTP statuses.
pub fn status_for(reason: Reason) -> u32 {
    match reason.status() {
        401 | 407 => 16,
        403 | 421 => 7,
        429 => 8,
        502..=504 => 14,
        _ => 13,
    }
}

/// `grpc-message` for `reason`: its code, then its message, percent-encoded as the gRPC
/// spec asks (bytes outside printable ASCII, and `%`).
pub fn message_for(reason: Reason) -> String {
    let p = reason.present();
    let mut out = String::new();
    for b in format!("{}: {}", p.code, p.message).bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The trailers-only response refusing a call for `reason`. `sized`: the client speaks
/// HTTP/1.x (gRPC-Web), where the empty body needs a `content-length`.
pub fn refusal_head(reason: Reason, request_id: &str, sized: bool) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header(GRPC_STATUS, status_for(reason).to_string())?;
    resp.insert_header(GRPC_MESSAGE, message_for(reason))?;
    resp.insert_header("proxy-status", reason.proxy_status())?;
    resp.insert_header(crate::refusal::X_REQUEST_ID, request_id)?;
    if sized {
        resp.insert_header(header::CONTENT_LENGTH, "0")?;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_grpc_content_types() {
        assert!(is_grpc(Some(b"application/grpc")));
        assert!(is_grpc(Some(b"application/grpc+proto")));
        assert!(is_grpc(Some(b"Application/GRPC-web")));
        assert!(!is_grpc(Some(b"application/json")));
        assert!(!is_grpc(Some(b"application/grp")));
        assert!(!is_grpc(None));
    }

    #[test]
    fn splits_service_and_method() {
        assert_eq!(
            call("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(call("/a/b/c"), None);
        assert_eq!(call("/onlyservice"), None);
        assert_eq!(call("//m"), None);
    }

    #[test]
    fn maps_reasons_to_grpc_statuses() {
        assert_eq!(status_for(Reason::PolicyDeniedHost), 7);
        assert_eq!(status_for(Reason::PolicyDeniedRule), 7);
        assert_eq!(status_for(Reason::HostMismatch), 7);
        assert_eq!(status_for(Reason::AuthRequired), 16);
        assert_eq!(status_for(Reason::AuthInvalid), 16);
        assert_eq!(status_for(Reason::UpstreamConnectFailed), 14);
        assert_eq!(status_for(Reason::UpstreamTimeout), 14);
        assert_eq!(status_for(Reason::MalformedRequest), 13);
    }

    #[test]
    fn the_message_names_the_reason_and_is_percent_encoded() {
        let m = message_for(Reason::PolicyDeniedRule);
        assert!(m.starts_with("policy_denied_rule: "), "{m}");
        assert!(m.bytes().all(|b| (0x20..0x7f).contains(&b)));
        let head = refusal_head(Reason::PolicyDeniedHost, "rid", false).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(status_in(&head.headers), Some(7));
        assert!(head.headers.get(header::CONTENT_LENGTH).is_none());
        let sized = refusal_head(Reason::AuthRequired, "rid", true).unwrap();
        assert_eq!(status_in(&sized.headers), Some(16));
        assert_eq!(sized.headers[header::CONTENT_LENGTH], "0");
    }
}
