//! The container credentials endpoint (`GET /_warden/aws/credentials` on the proxy listener,
//! outside any tunnel): who is asking — the `Authorization` header is the client's proxy token,
//! as AWS SDKs send `AWS_CONTAINER_AUTHORIZATION_TOKEN` — and the ECS-format JSON answer with
//! the client's role credentials. Called by `request_filter` before admission, which would
//! refuse an origin-form request.

use super::sts::RoleCredentials;
use super::{Aws, CREDENTIALS_PATH};
use crate::auth::{Client, Presented};
use crate::config::Snapshot;
use crate::reason::Reason;
use crate::registry::Registry;
use bytes::Bytes;
use std::sync::Arc;

/// Tokens longer than this are refused unread.
const MAX_TOKEN: usize = 4096;

/// A refusal of the endpoint: the reason, and the client when it was identified.
pub type Refused = (Reason, Option<Arc<Client>>);

/// Whether a request is for the endpoint: `GET` of its path, in origin form, outside a tunnel.
pub fn is_endpoint(method: &str, raw_target: &[u8], in_tunnel: bool) -> bool {
    let path = raw_target.split(|&b| b == b'?').next().unwrap_or_default();
    !in_tunnel && method == "GET" && path == CREDENTIALS_PATH.as_bytes()
}

/// The client whose token `authorization` (every `Authorization` value) is, and its `aws`
/// section. [`Reason::AwsTokenInvalid`] for a missing, repeated or unknown token, and always
/// when `proxy.auth` is off (there is no token to check); [`Reason::AwsNotConfigured`] (with
/// the client) when its profile has no `aws` section. Every token is compared in constant time.
pub fn authorize(
    snap: &Snapshot,
    registry: &Registry,
    authorization: &[&[u8]],
) -> Result<(Arc<Client>, Arc<Aws>), Refused> {
    let invalid = (Reason::AwsTokenInvalid, None);
    let token = match authorization {
        [one] if !one.is_empty() && one.len() <= MAX_TOKEN => one.trim_ascii(),
        _ => return Err(invalid),
    };
    if !snap.requires_auth() || token.is_empty() {
        return Err(invalid);
    }
    let presented = Presented {
        name: None,
        token: token.to_vec(),
    };
    let client = snap
        .auth
        .as_ref()
        .and_then(|c| c.matching(&presented))
        .or_else(|| registry.authenticate(&presented))
        .ok_or(invalid)?;
    match client.profile.aws.clone() {
        Some(aws) => Ok((client, aws)),
        None => Err((Reason::AwsNotConfigured, Some(client))),
    }
}

/// The answer, in the format AWS SDKs read from a container credentials provider.
pub fn body(creds: &RoleCredentials, aws: &Aws) -> Bytes {
    let json = serde_json::json!({
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key.expose(),
        "Token": creds.session_token.expose(),
        "Expiration": humantime::format_rfc3339_seconds(creds.expiration).to_string(),
        "RoleArn": aws.key.role_arn,
    });
    Bytes::from(json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CompileOptions, Config};
    use std::path::Path;

    fn snap(auth: bool) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let aws = "aws: { role_arn: 'arn:aws:iam::1:role/r', region: us-east-1, source: { access_key_id: { type: static, value: a }, secret_access_key: { type: static, value: b } } }";
        let clients = match auth {
            true => format!("  auth:\n    clients:\n      - {{ name: a, token: {{ type: static, value: tok-a }}, {aws} }}\n      - {{ name: b, token: {{ type: static, value: tok-b }} }}\n"),
            false => String::new(),
        };
        let text = format!(
            "proxy:\n  listen: 127.0.0.1:0\n{clients}tls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\n",
            dir.path().display()
        );
        Config::parse(&text, Path::new("."))
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap()
    }

    #[test]
    fn a_clients_own_aws_section_replaces_the_top_level_one_and_others_inherit_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = "source: { access_key_id: { type: static, value: a }, secret_access_key: { type: static, value: b } }";
        let text = format!(
            "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - {{ name: a, token: {{ type: static, value: tok-a }}, aws: {{ role_arn: 'arn:aws:iam::1:role/own', region: eu-west-1, {src} }} }}\n      - {{ name: b, token: {{ type: static, value: tok-b }} }}\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\naws: {{ role_arn: 'arn:aws:iam::1:role/shared', region: us-east-1, resign: ['*.amazonaws.com'], {src} }}\n",
            dir.path().display()
        );
        let s = Config::parse(&text, Path::new("."))
            .unwrap()
            .compile(CompileOptions { create_ca: false })
            .unwrap();
        let r = Registry::default();
        let (_, own) = authorize(&s, &r, &[b"tok-a"]).unwrap();
        let (_, shared) = authorize(&s, &r, &[b"tok-b"]).unwrap();
        assert_eq!(own.key.role_arn, "arn:aws:iam::1:role/own");
        assert_eq!(own.sts.as_str(), "https://sts.eu-west-1.amazonaws.com/");
        assert!(own.resign.is_empty(), "the whole section is replaced");
        assert_eq!(shared.key.role_arn, "arn:aws:iam::1:role/shared");
        assert_eq!(shared.key.session_name, "warden");
        // Re-signed hosts must be intercepted.
        let dest = crate::target::parse_authority(b"s3.us-east-1.amazonaws.com:443", None).unwrap();
        assert!(s.profile.inspects(&dest));
        assert!(!s
            .auth
            .as_ref()
            .unwrap()
            .get("a")
            .unwrap()
            .profile
            .inspects(&dest));
    }

    #[test]
    fn only_a_get_of_the_path_outside_a_tunnel_is_the_endpoint() {
        assert!(is_endpoint("GET", b"/_warden/aws/credentials", false));
        assert!(is_endpoint("GET", b"/_warden/aws/credentials?x=1", false));
        assert!(!is_endpoint("GET", b"/_warden/aws/credentials", true));
        assert!(!is_endpoint("POST", b"/_warden/aws/credentials", false));
        assert!(!is_endpoint("GET", b"/_warden/aws/credentials/", false));
        assert!(!is_endpoint(
            "GET",
            b"http://x/_warden/aws/credentials",
            false
        ));
    }

    #[test]
    fn the_token_picks_the_client_and_anything_else_is_refused() {
        let s = snap(true);
        let r = Registry::default();
        let (client, aws) = authorize(&s, &r, &[b"tok-a"]).unwrap();
        assert_eq!(
            (&*client.name, aws.key.session_name.as_str()),
            ("a", "warden-a")
        );
        let reason = |values: &[&[u8]]| authorize(&s, &r, values).map(|_| ()).unwrap_err().0;
        assert_eq!(reason(&[]), Reason::AwsTokenInvalid);
        assert_eq!(reason(&[b"wrong"]), Reason::AwsTokenInvalid);
        assert_eq!(reason(&[b"tok-a", b"tok-a"]), Reason::AwsTokenInvalid);
        assert_eq!(reason(&[b"Bearer tok-a"]), Reason::AwsTokenInvalid);
        assert_eq!(reason(&[b"tok-b"]), Reason::AwsNotConfigured);
        // Without proxy.auth there is no token to check: always refused.
        assert_eq!(
            authorize(&snap(false), &r, &[b"anything"])
                .map(|_| ())
                .unwrap_err()
                .0,
            Reason::AwsTokenInvalid
        );
    }
}
