//! What goes upstream: the edits a planned request's head gets before it is sent — the request
//! line in origin-form, hop-by-hop and `Connection`-listed headers dropped, a `Host` when the
//! client sent none, the request id, header rules, correlation, placeholder substitution in
//! headers, path and query, the credential (last, so it has the last word on its header), and
//! what keeps responses readable (identity encoding, no WebSocket compression). A pure function
//! of the plan and the head; `upstream_request_filter` applies the ops in order.

use crate::admission::RequestPlan;
use crate::refusal::X_REQUEST_ID;
use crate::scrub::Replacer;
use crate::substitution::{self, Place};
use crate::target::Scheme;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// One edit of the upstream head, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Drops every value of a header.
    Remove(HeaderName),
    /// Sets a header to one value, replacing any others.
    Set(HeaderName, HeaderValue),
    /// Replaces a header's values with these, in order.
    Values(HeaderName, Vec<HeaderValue>),
    /// The request target to send.
    Uri(http::Uri),
}

/// The edits for one request, and the body replacer when placeholders apply in the body.
#[derive(Debug, Default)]
pub struct Edits {
    /// Applied in order.
    pub ops: Vec<HeaderOp>,
    /// Substitutes placeholders in the request body as it streams (its length changes, so
    /// `Content-Length` is among the removed headers).
    pub body: Option<Replacer>,
    /// The credential header is among the ops.
    pub injects: bool,
}

/// The request head as it came in: what the edits are computed from.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The request target.
    pub uri: &'a http::Uri,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// The client asks for an upgrade (WebSocket).
    pub upgrade: bool,
    /// A request body follows.
    pub has_body: bool,
    /// The request id to send.
    pub request_id: &'a str,
    /// Client frames are checked (Responses WebSocket): no compression extension.
    pub checks_frames: bool,
}

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1), plus the proxy's own.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    HeaderName::from_static("http2-settings"),
];

/// Why a head could not be edited (never the client's fault: a substituted value that is no
/// longer a valid header value or URI).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EditError(&'static str);

/// The edits `plan` makes to `req` on its way upstream.
pub fn upstream_edits(plan: &RequestPlan, req: Incoming<'_>) -> Result<Edits, EditError> {
    let mut ops = Vec::with_capacity(16);
    // A relayed request goes to the relay target's path, not to `/relay/{name}/…`.
    let relayed: http::Uri;
    let req = match &plan.relay {
        Some(_) => {
            relayed = plan
                .target
                .path
                .parse()
                .map_err(|_| EditError("a relayed path does not parse as a URI"))?;
            Incoming {
                uri: &relayed,
                ..req
            }
        }
        None => req,
    };
    ops.push(HeaderOp::Uri(req.uri.clone()));
    for name in HOP_BY_HOP {
        ops.push(HeaderOp::Remove(name));
    }
    let listed = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !(t.is_empty() || req.upgrade && t == "upgrade"));
    let mut host_listed = false;
    let mut te_listed = false;
    for name in listed {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            host_listed |= name == header::HOST;
            te_listed |= name == header::TE;
            ops.push(HeaderOp::Remove(name));
        }
    }
    // `TE: trailers` is end to end in effect: the one TE HTTP/2 allows (RFC 9113 §8.2.2), and
    // what gRPC servers require before they answer with trailers.
    let mut te = req.headers.get_all(header::TE).iter().peekable();
    if !te_listed
        && te.peek().is_some()
        && te.all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"))
    {
        ops.push(HeaderOp::Set(
            header::TE,
            HeaderValue::from_static("trailers"),
        ));
    }
    if !req.upgrade {
        ops.push(HeaderOp::Remove(header::CONNECTION));
        ops.push(HeaderOp::Remove(header::UPGRADE));
    }
    let target = &plan.target;
    // A relayed request's Host names warden; the target's goes upstream.
    if host_listed || plan.relay.is_some() || !req.headers.contains_key(header::HOST) {
        let default_port = match target.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let host = if target.authority.port == default_port {
            target.authority.host.to_string()
        } else {
            target.authority.to_string()
        };
        ops.push(HeaderOp::Set(header::HOST, value(host.as_bytes())?));
    }
    ops.push(HeaderOp::Set(
        X_REQUEST_ID,
        value(req.request_id.as_bytes())?,
    ));
    for rule in plan.profile.headers.for_dest(&target.authority) {
        ops.extend(rule.remove.iter().cloned().map(HeaderOp::Remove));
        ops.extend(
            rule.set
                .iter()
                .map(|(n, v)| HeaderOp::Set(n.clone(), v.clone())),
        );
    }
    if let (Some(seq), Some(corr)) = (&plan.seq, &plan.profile.correlation) {
        ops.extend(
            corr.headers(seq)
                .into_iter()
                .map(|(n, v)| HeaderOp::Set(n, v)),
        );
    }
    if plan.relay.as_ref().is_some_and(|r| r.strip_authorization) {
        // The userinfo of the relay URL identified the client to warden.
        ops.push(HeaderOp::Remove(header::AUTHORIZATION));
    }
    let mut body = None;
    if !plan.substitutions.is_empty() {
        body = substitute(plan, req, &mut ops)?;
    }
    let injects = plan.credential.is_some();
    if let Some(c) = &plan.credential {
        // Overwrites whatever the client sent under that name.
        ops.push(HeaderOp::Set(c.header.clone(), c.value.clone()));
    }
    if plan.needs_identity() {
        ops.push(HeaderOp::Set(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        ));
    }
    if req.checks_frames {
        // Frames must stay readable: no permessage-deflate.
        ops.push(HeaderOp::Remove(header::SEC_WEBSOCKET_EXTENSIONS));
    }
    Ok(Edits { ops, body, injects })
}

/// Placeholders swapped for secrets in the headers as the ops so far leave them, in the path
/// and query, and a body replacer (whose output length is unknown, so `Content-Length` goes
/// and the body is sent chunked).
fn substitute(
    plan: &RequestPlan,
    req: Incoming<'_>,
    ops: &mut Vec<HeaderOp>,
) -> Result<Option<Replacer>, EditError> {
    let active = &plan.substitutions;
    if let Some(replacer) = substitution::replacer(active, Place::Headers) {
        let current = effective(req.headers, ops);
        for name in current.keys() {
            let values: Vec<&HeaderValue> = current.get_all(name).iter().collect();
            if !values
                .iter()
                .any(|v| substitution::in_header(&replacer, v.as_bytes()).is_some())
            {
                continue;
            }
            let rewritten = values
                .iter()
                .map(|v| match substitution::in_header(&replacer, v.as_bytes()) {
                    Some(new) => value(&new),
                    None => Ok((*v).clone()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            ops.push(HeaderOp::Values(name.clone(), rewritten));
        }
    }
    let path = req.uri.path();
    let query = req.uri.query();
    let new_path = substitution::in_url(active, Place::Path, path);
    let new_query = query.and_then(|q| substitution::in_url(active, Place::Query, q));
    if new_path.is_some() || new_query.is_some() {
        let path = new_path.as_deref().unwrap_or(path);
        let uri = match new_query.as_deref().or(query) {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let uri = uri
            .parse::<http::Uri>()
            .map_err(|_| EditError("a substituted URI does not parse"))?;
        ops.push(HeaderOp::Uri(uri));
    }
    let body = substitution::replacer(active, Place::Body).filter(|_| req.has_body);
    if body.is_some() {
        ops.push(HeaderOp::Remove(header::CONTENT_LENGTH));
    }
    Ok(body)
}

/// The headers `ops` leave of `headers`.
fn effective(headers: &HeaderMap, ops: &[HeaderOp]) -> HeaderMap {
    let mut out = headers.clone();
    for op in ops {
        match op {
            HeaderOp::Remove(n) => {
                out.remove(n);
            }
            HeaderOp::Set(n, v) => {
                out.insert(n.clone(), v.clone());
            }
            HeaderOp::Values(n, vs) => {
                out.remove(n);
                for v in vs {
                    out.append(n.clone(), v.clone());
                }
            }
            HeaderOp::Uri(_) => {}
        }
    }
    out
}

fn value(bytes: &[u8]) -> Result<HeaderValue, EditError> {
    HeaderValue::from_bytes(bytes).map_err(|_| EditError("an edited header value is not valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{admit_request, RequestHead};
    use crate::config::{CompileOptions, Config};
    use crate::runtime::Runtime;
    use std::path::Path;

    /// The plan for a plain GET of `url` under a config with `extra` sections.
    fn plan(extra: &str, url: &str) -> RequestPlan {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "proxy:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\n{extra}",
            dir.path().display()
        );
        let snap = Config::parse(&text, Path::new("."))
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap();
        let head = RequestHead {
            method: "GET",
            raw_target: url.as_bytes(),
            hosts: &[],
            proxy_auth: &[],
            authorization: &[],
            raw: b"",
            tunnel: None,
            upgrade: false,
            scheme: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(admit_request(&snap, &Runtime::default(), &[], &head))
            .unwrap()
    }

    fn edits(plan: &RequestPlan, headers: &[(&str, &str)], upgrade: bool) -> Edits {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: http::Uri = "/p?q=1".parse().unwrap();
        let req = Incoming {
            uri: &uri,
            headers: &map,
            upgrade,
            has_body: true,
            request_id: "rid",
            checks_frames: false,
        };
        upstream_edits(plan, req).unwrap()
    }

    fn sets<'a>(e: &'a Edits, name: &str) -> Vec<&'a str> {
        e.ops
            .iter()
            .filter_map(|op| match op {
                HeaderOp::Set(n, v) if n == name => v.to_str().ok(),
                _ => None,
            })
            .collect()
    }

    fn removes(e: &Edits, name: &str) -> bool {
        e.ops
            .iter()
            .any(|op| matches!(op, HeaderOp::Remove(n) if n == name))
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go_but_an_upgrade_keeps_its_own() {
        let p = plan("", "http://a.test/p");
        let e = edits(
            &p,
            &[("connection", "x-secret, Upgrade"), ("host", "a.test")],
            false,
        );
        for name in [
            "proxy-authorization",
            "te",
            "x-secret",
            "upgrade",
            "connection",
        ] {
            assert!(removes(&e, name), "{name}");
        }
        let e = edits(
            &p,
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            true,
        );
        assert!(!removes(&e, "upgrade") && !removes(&e, "connection"));
        assert_eq!(sets(&e, "x-request-id"), ["rid"]);
    }

    #[test]
    fn te_trailers_alone_is_kept_for_grpc() {
        let p = plan("", "http://a.test/p");
        let e = edits(&p, &[("te", "trailers"), ("host", "a.test")], false);
        assert_eq!(sets(&e, "te"), ["trailers"]);
        let e = edits(&p, &[("te", "gzip, trailers")], false);
        assert!(sets(&e, "te").is_empty());
        let e = edits(&p, &[("te", "trailers"), ("connection", "te")], false);
        assert!(sets(&e, "te").is_empty());
    }

    #[test]
    fn a_missing_host_gets_the_target_with_a_port_only_when_it_is_not_the_default() {
        assert_eq!(
            sets(&edits(&plan("", "http://a.test/p"), &[], false), "host"),
            ["a.test"]
        );
        let odd = plan("", "http://a.test:8080/p");
        assert_eq!(sets(&edits(&odd, &[], false), "host"), ["a.test:8080"]);
        // A Host the client lists in Connection is dropped, so warden sets one.
        let e = edits(
            &odd,
            &[("host", "a.test:8080"), ("connection", "host")],
            false,
        );
        assert!(removes(&e, "host"));
        assert_eq!(sets(&e, "host"), ["a.test:8080"]);
        assert!(sets(&edits(&odd, &[("host", "a.test:8080")], false), "host").is_empty());
    }

    #[test]
    fn the_credential_comes_last_and_responses_are_asked_for_uncompressed() {
        let p = plan(
            "headers: [{ host: a.test, set: { authorization: from-rule, x-team: a } }]\ncredentials: [{ host: a.test, allow_plaintext: true, source: { type: static, value: s3cr3t } }]\n",
            "http://a.test/p",
        );
        let e = edits(&p, &[("authorization", "from-client")], false);
        assert!(e.injects);
        let auth: Vec<usize> = e
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, HeaderOp::Set(n, _) if n == "authorization"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(sets(&e, "authorization"), ["from-rule", "Bearer s3cr3t"]);
        assert!(auth[0] < auth[1]);
        assert_eq!(sets(&e, "accept-encoding"), ["identity"]);
        assert_eq!(sets(&e, "x-team"), ["a"]);
    }

    #[test]
    fn placeholders_are_replaced_in_headers_as_the_rules_leave_them_in_the_url_and_the_body() {
        let p = plan(
            "headers: [{ host: a.test, set: { x-key: 'key=PLACEHOLDER_1' } }]\nsubstitutions: [{ host: a.test, placeholder: PLACEHOLDER_1, allow_plaintext: true, source: { type: static, value: v@1 } }]\n",
            "http://a.test/p",
        );
        let mut map = HeaderMap::new();
        map.append("x-a", HeaderValue::from_static("PLACEHOLDER_1"));
        map.append("x-a", HeaderValue::from_static("plain"));
        let uri: http::Uri = "/p/PLACEHOLDER_1?k=PLACEHOLDER_1".parse().unwrap();
        let req = Incoming {
            uri: &uri,
            headers: &map,
            upgrade: false,
            has_body: true,
            request_id: "rid",
            checks_frames: false,
        };
        let e = upstream_edits(&p, req).unwrap();
        let values = |name: &str| {
            e.ops.iter().find_map(|op| match op {
                HeaderOp::Values(n, vs) if n == name => {
                    Some(vs.iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>())
                }
                _ => None,
            })
        };
        // Order of a multi-valued header is kept; the rule's value is substituted too.
        assert_eq!(values("x-a"), Some(vec!["v@1", "plain"]));
        assert_eq!(values("x-key"), Some(vec!["key=v@1"]));
        let uri = e.ops.iter().rev().find_map(|op| match op {
            HeaderOp::Uri(u) => Some(u.to_string()),
            _ => None,
        });
        assert_eq!(uri.as_deref(), Some("/p/v%401?k=v%401"));
        assert!(e.body.is_some() && removes(&e, "content-length"));
    }
}
