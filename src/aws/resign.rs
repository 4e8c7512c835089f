//! SigV4 re-signing: a request to an `aws.resign` host must arrive SigV4-signed (with any
//! keys, typically dummy ones); [`inspect`] checks its shape and [`sign`] drops the agent's
//! signature and signs the upstream head again with the assumed role's credentials, in the
//! same form (an `Authorization` header, or a presigned query keeping its `X-Amz-Expires`),
//! for the region and service the agent signed for. Only the head is signed: the payload hash
//! is kept as the agent sent it in `x-amz-content-sha256` (a literal SHA-256 the origin checks
//! against the body, `UNSIGNED-PAYLOAD`, `STREAMING-UNSIGNED-PAYLOAD-TRAILER`); payloads
//! whose chunks are signed from the seed signature are refused. `inspect` runs in
//! `request_filter`, `sign` in `upstream_request_filter` on the head as it will be sent.

use super::sts::RoleCredentials;
use crate::forward::HeaderOp;
use crate::reason::Reason;
use aws_sigv4::http_request::{
    sign as sigv4_sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use std::time::{Duration, SystemTime};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The SHA-256 of an empty payload.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Presigned query parameters the agent's signature consists of.
const SIGNATURE_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];
/// Headers the signer writes itself.
const SIGNER_HEADERS: [&str; 3] = ["authorization", "x-amz-date", "x-amz-security-token"];

/// Where the agent's signature was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
    Header,
    /// A presigned URL, valid this long.
    Query {
        /// `X-Amz-Expires`.
        expires: Duration,
    },
}

/// What [`inspect`] read from an agent's signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The form of the signature.
    pub form: Form,
    /// The access key id the agent signed with.
    pub access_key_id: String,
    /// The region of its credential scope.
    pub region: String,
    /// The service of its credential scope.
    pub service: String,
    /// The headers it signed (lower case).
    pub signed_headers: Vec<String>,
    /// The payload hash to sign, as the agent declared it.
    pub payload: String,
}

/// Checks that a request is SigV4-shaped: [`Reason::AwsUnsigned`] when it carries no
/// signature (or two, or a malformed one), [`Reason::AwsPayloadUnsupported`] when its payload
/// cannot be carried under a new signature.
pub fn inspect(uri: &http::Uri, headers: &HeaderMap, has_body: bool) -> Result<Shape, Reason> {
    let auth: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    let query = query_pairs(uri.query().unwrap_or_default());
    let presigned = query
        .iter()
        .any(|(k, _)| SIGNATURE_PARAMS.contains(&k.as_str()));
    let (form, credential, signed) = match (auth.as_slice(), presigned) {
        ([one], false) => {
            let text = one.to_str().map_err(|_| Reason::AwsUnsigned)?;
            let rest = text
                .strip_prefix(ALGORITHM)
                .filter(|r| r.starts_with(' '))
                .ok_or(Reason::AwsUnsigned)?;
            let mut credential = None;
            let mut signed = None;
            let mut signature = None;
            for part in rest.split(',') {
                match part.trim().split_once('=') {
                    Some(("Credential", v)) => credential = Some(v.to_string()),
                    Some(("SignedHeaders", v)) => signed = Some(v.to_string()),
                    Some(("Signature", v)) => signature = Some(v.to_string()),
                    _ => return Err(Reason::AwsUnsigned),
                }
            }
            if !signature.as_deref().is_some_and(is_hex64) {
                return Err(Reason::AwsUnsigned);
            }
            (Form::Header, credential, signed)
        }
        ([], true) => {
            let get = |name: &str| {
                let mut values = query.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
                match (values.next(), values.next()) {
                    (Some(v), None) => Some(v.clone()),
                    _ => None,
                }
            };
            let expires = get("X-Amz-Expires")
                .and_then(|e| e.parse::<u64>().ok())
                .filter(|e| (1..=604_800).contains(e))
                .ok_or(Reason::AwsUnsigned)?;
            let algorithm_ok = get("X-Amz-Algorithm").as_deref() == Some(ALGORITHM);
            let date_ok = get("X-Amz-Date").is_some();
            if !algorithm_ok || !date_ok || !get("X-Amz-Signature").as_deref().is_some_and(is_hex64)
            {
                return Err(Reason::AwsUnsigned);
            }
            let form = Form::Query {
                expires: Duration::from_secs(expires),
            };
            (form, get("X-Amz-Credential"), get("X-Amz-SignedHeaders"))
        }
        _ => return Err(Reason::AwsUnsigned),
    };
    let credential = credential.ok_or(Reason::AwsUnsigned)?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(Reason::AwsUnsigned);
    };
    let scope_ok = !akid.is_empty()
        && date.len() == 8
        && date.bytes().all(|b| b.is_ascii_digit())
        && [region, service]
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !scope_ok {
        return Err(Reason::AwsUnsigned);
    }
    let signed_headers: Vec<String> = signed
        .ok_or(Reason::AwsUnsigned)?
        .split(';')
        .map(str::to_ascii_lowercase)
        .collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(Reason::AwsUnsigned);
    }
    let declared = match &form {
        Form::Header => single(headers, "x-amz-content-sha256")?,
        Form::Query { .. } => query
            .iter()
            .find(|(k, _)| k == "X-Amz-Content-Sha256")
            .map(|(_, v)| v.clone())
            .or_else(|| Some("UNSIGNED-PAYLOAD".into())),
    };
    let payload = match declared {
        Some(p) if is_hex64(&p) => p.to_ascii_lowercase(),
        Some(p) if p == "UNSIGNED-PAYLOAD" || p == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => p,
        Some(_) => return Err(Reason::AwsPayloadUnsupported),
        None if has_body => return Err(Reason::AwsPayloadUnsupported),
        None => EMPTY_SHA256.into(),
    };
    Ok(Shape {
        form,
        access_key_id: akid.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        payload,
    })
}

/// The one value of header `name`, if sent; two values are refused.
fn single(headers: &HeaderMap, name: &str) -> Result<Option<String>, Reason> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| Reason::AwsPayloadUnsupported),
        _ => Err(Reason::AwsPayloadUnsupported),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A query string's pairs, decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The head edits that re-sign a request, and the new signature (for the echo scrubber).
#[derive(Debug)]
pub struct Signed {
    /// Applied after every other edit.
    pub ops: Vec<HeaderOp>,
    /// The signature computed.
    pub signature: String,
}

/// Why a head could not be signed (never the client's values).
#[derive(Debug, thiserror::Error)]
#[error("SigV4 re-signing failed: {0}")]
pub struct SignError(String);

/// The request as it goes upstream.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// The origin-form target (path and query) to send.
    pub uri: &'a http::Uri,
    /// The headers to send, after every other edit.
    pub headers: &'a HeaderMap,
}

/// Re-signs `req` (shaped as `shape`) with `creds`, at `now`.
pub fn sign(
    shape: &Shape,
    creds: &RoleCredentials,
    req: Outgoing<'_>,
    now: SystemTime,
) -> Result<Signed, SignError> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| SignError("no Host header".into()))?;
    let mut settings = SigningSettings::default();
    if shape.service == "s3" {
        // S3 signs the path as sent, neither normalised nor encoded again.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    // The query without the agent's signature.
    let kept: Vec<&str> = req
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split('=').next().unwrap_or_default();
            let key = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            !(matches!(shape.form, Form::Query { .. }) && SIGNATURE_PARAMS.contains(&key.as_str()))
        })
        .collect();
    let query = kept.join("&");
    if let Form::Query { expires } = shape.form {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
    }
    let path = req.uri.path();
    let url = match query.is_empty() {
        true => format!("{}://{host}{path}", req.scheme),
        false => format!("{}://{host}{path}?{query}", req.scheme),
    };
    let mut headers: Vec<(&str, &str)> = vec![("host", host)];
    for name in &shape.signed_headers {
        if name == "host" || SIGNER_HEADERS.contains(&name.as_str()) {
            continue;
        }
        for v in req.headers.get_all(name.as_str()) {
            let v = v
                .to_str()
                .map_err(|_| SignError(format!("header {name} is not text")))?;
            headers.push((name.as_str(), v));
        }
    }
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose(),
        Some(creds.session_token.expose().to_string()),
        None,
        "warden",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&shape.region)
        .name(&shape.service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        req.method,
        url,
        headers.into_iter(),
        SignableBody::Precomputed(shape.payload.clone()),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, signature) = sigv4_sign(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let mut ops = Vec::new();
    match shape.form {
        Form::Header => {
            for name in SIGNER_HEADERS {
                ops.push(HeaderOp::Remove(HeaderName::from_static(name)));
            }
            for (name, value) in instructions.headers() {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| SignError(e.to_string()))?;
                let mut value =
                    HeaderValue::from_str(value).map_err(|e| SignError(e.to_string()))?;
                value.set_sensitive(true);
                ops.push(HeaderOp::Set(name, value));
            }
        }
        Form::Query { .. } => {
            let mut out = form_urlencoded::Serializer::new(query);
            for (name, value) in instructions.params() {
                out.append_pair(name, value);
            }
            let target = format!("{path}?{}", out.finish());
            let uri = target
                .parse::<http::Uri>()
                .map_err(|e| SignError(e.to_string()))?;
            ops.push(HeaderOp::Uri(uri));
        }
    }
    Ok(Signed { ops, signature })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn auth(scope: &str, signed: &str) -> String {
        format!("AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed}, Signature={SIG}")
    }

    const SCOPE: &str = "AKIDUMMY/20261202/us-east-1/s3/aws4_request";

    fn creds() -> RoleCredentials {
        RoleCredentials {
            access_key_id: "ASIAROLE".into(),
            secret_access_key: Secret::new("role-secret"),
            session_token: Secret::new("role-token"),
            expiration: SystemTime::now() + Duration::from_secs(3600),
            fetched: SystemTime::now(),
        }
    }

    #[test]
    fn a_header_signed_request_is_read_with_its_scope_and_payload() {
        let uri: http::Uri = "/bucket/key".parse().unwrap();
        let h = headers(&[
            (
                "authorization",
                &auth(SCOPE, "host;x-amz-content-sha256;x-amz-date"),
            ),
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ]);
        let s = inspect(&uri, &h, true).unwrap();
        assert_eq!((s.region.as_str(), s.service.as_str()), ("us-east-1", "s3"));
        assert_eq!(s.access_key_id, "AKIDUMMY");
        assert_eq!(s.payload, "STREAMING-UNSIGNED-PAYLOAD-TRAILER");
        assert_eq!(s.form, Form::Header);
    }

    #[test]
    fn unsigned_and_unsupported_requests_are_refused_with_their_reason() {
        let uri: http::Uri = "/b/k".parse().unwrap();
        let good = auth(SCOPE, "host;x-amz-date");
        let short_date = auth("AK/2026/us-east-1/s3/aws4_request", "host");
        let no_host = auth(SCOPE, "x-amz-date");
        type Case<'a> = (Vec<(&'a str, &'a str)>, bool, Reason);
        let cases: Vec<Case> = vec![
            (vec![], false, Reason::AwsUnsigned),
            (
                vec![("authorization", "Bearer x")],
                false,
                Reason::AwsUnsigned,
            ),
            (
                vec![("authorization", "AWS4-HMAC-SHA256 Credential=a/b")],
                false,
                Reason::AwsUnsigned,
            ),
            (
                vec![("authorization", &good), ("authorization", &good)],
                false,
                Reason::AwsUnsigned,
            ),
            (
                vec![("authorization", &short_date)],
                false,
                Reason::AwsUnsigned,
            ),
            (
                vec![("authorization", &no_host)],
                false,
                Reason::AwsUnsigned,
            ),
            (
                vec![("authorization", &good)],
                true,
                Reason::AwsPayloadUnsupported,
            ),
            (
                vec![
                    ("authorization", &good),
                    ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
                ],
                true,
                Reason::AwsPayloadUnsupported,
            ),
        ];
        for (pairs, body, want) in cases {
            assert_eq!(
                inspect(&uri, &headers(&pairs), body),
                Err(want),
                "{pairs:?}"
            );
        }
        // No body and no declared hash: the empty payload's.
        let s = inspect(&uri, &headers(&[("authorization", &good)]), false).unwrap();
        assert_eq!(s.payload, EMPTY_SHA256);
        // Both a header and a presigned query: ambiguous.
        let both: http::Uri = format!("/b/k?X-Amz-Signature={SIG}").parse().unwrap();
        assert_eq!(
            inspect(&both, &headers(&[("authorization", &good)]), false),
            Err(Reason::AwsUnsigned)
        );
    }

    #[test]
    fn a_header_signature_is_replaced_with_one_from_the_role() {
        let uri: http::Uri = "/bucket/key".parse().unwrap();
        let h = headers(&[
            ("host", "s3.us-east-1.amazonaws.com"),
            (
                "authorization",
                &auth(SCOPE, "host;x-amz-content-sha256;x-amz-date"),
            ),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("x-amz-date", "20261202T000000Z"),
            ("x-request-id", "added-later"),
        ]);
        let shape = inspect(&uri, &h, false).unwrap();
        let req = Outgoing {
            method: "GET",
            scheme: "https",
            uri: &uri,
            headers: &h,
        };
        let signed = sign(
            &shape,
            &creds(),
            req,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
        .unwrap();
        let set: Vec<(String, String)> = signed
            .ops
            .iter()
            .filter_map(|op| match op {
                HeaderOp::Set(n, v) => Some((n.to_string(), v.to_str().unwrap().to_string())),
                _ => None,
            })
            .collect();
        let authz = &set.iter().find(|(n, _)| n == "authorization").unwrap().1;
        assert!(
            authz.starts_with(
                "AWS4-HMAC-SHA256 Credential=ASIAROLE/20270115/us-east-1/s3/aws4_request"
            ),
            "{authz}"
        );
        assert!(
            authz.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
            ),
            "{authz}"
        );
        assert!(authz.ends_with(&signed.signature));
        assert!(set
            .iter()
            .any(|(n, v)| n == "x-amz-security-token" && v == "role-token"));
        assert!(!authz.contains(SIG));
    }

    #[test]
    fn a_presigned_url_is_presigned_again_keeping_its_expiry() {
        let uri: http::Uri = format!(
            "/bucket/key?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDUMMY%2F20261202%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261202T000000Z&X-Amz-Expires=600&X-Amz-SignedHeaders=host&X-Amz-Signature={SIG}"
        )
        .parse()
        .unwrap();
        let h = headers(&[("host", "s3.us-east-1.amazonaws.com")]);
        let shape = inspect(&uri, &h, false).unwrap();
        assert_eq!(
            shape.form,
            Form::Query {
                expires: Duration::from_secs(600)
            }
        );
        assert_eq!(shape.payload, "UNSIGNED-PAYLOAD");
        let req = Outgoing {
            method: "GET",
            scheme: "https",
            uri: &uri,
            headers: &h,
        };
        let signed = sign(&shape, &creds(), req, SystemTime::now()).unwrap();
        let [HeaderOp::Uri(new)] = signed.ops.as_slice() else {
            panic!("{:?}", signed.ops)
        };
        let q = new.query().unwrap();
        assert!(
            new.path() == "/bucket/key" && q.starts_with("versionId=3&"),
            "{new}"
        );
        let pairs = query_pairs(q);
        let get = |k: &str| {
            pairs
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("X-Amz-Expires"), ["600"]);
        assert_eq!(get("X-Amz-Security-Token"), ["role-token"]);
        assert_eq!(get("X-Amz-Signature"), [signed.signature.as_str()]);
        assert!(get("X-Amz-Credential")[0].starts_with("ASIAROLE/"));
    }
}
