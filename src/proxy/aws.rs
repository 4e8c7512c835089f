//! The AWS glue: the container credentials endpoint answered from `request_filter` (before
//! admission), the role credentials a request to an `aws.resign` host will be signed with
//! (fetched in `request_filter`, so an STS failure refuses before anything is dialled), and
//! the re-signing of its head in `upstream_request_filter`. The stage is [`crate::aws`].

use super::ctx::RequestCtx;
use super::warden::Warden;
use crate::aws::sessions::Reach;
use crate::aws::sts::RoleCredentials;
use crate::aws::{endpoint, resign, Aws, CREDENTIALS_PATH};
use crate::config::Snapshot;
use crate::reason::Reason;
use crate::scrub::Replacer;
use crate::target::{parse_authority, Authority};
use http::header;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::SystemTime;

impl Warden {
    /// Answers `GET /_warden/aws/credentials` outside a tunnel; `false` for any other request.
    pub(super) async fn aws_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let req = session.req_header();
        if !endpoint::is_endpoint(req.method.as_str(), req.raw_path(), ctx.tunnel.is_some()) {
            return Ok(false);
        }
        ctx.line.path = Some(CREDENTIALS_PATH.into());
        let auth: Vec<&[u8]> = req
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let (client, aws) =
            match endpoint::authorize(&ctx.snap, &self.shared.runtime.registry, &auth) {
                Ok(found) => found,
                Err((reason, client)) => {
                    ctx.line.client = client.map(|c| c.name.to_string());
                    self.refuse(session, ctx, reason).await;
                    return Ok(true);
                }
            };
        ctx.line.client = Some(client.name.to_string());
        let creds = match self.role_credentials(&ctx.snap, &aws).await {
            Ok(creds) => creds,
            Err(e) => {
                log::warn!("AWS credentials for client {}: {e}", client.name);
                ctx.line.error = Some(e);
                self.refuse(session, ctx, Reason::CredentialUnavailable)
                    .await;
                return Ok(true);
            }
        };
        let body = endpoint::body(&creds, &aws);
        let mut head = ResponseHeader::build(200, Some(4))?;
        head.insert_header(header::CONTENT_TYPE, "application/json")?;
        head.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        head.insert_header(header::CACHE_CONTROL, "no-store")?;
        head.insert_header(super::edit::X_REQUEST_ID, ctx.request_id())?;
        ctx.line.status = Some(200);
        session.write_response_header(Box::new(head), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    /// For an admitted request to an `aws.resign` host: checks it is SigV4-shaped and gets the
    /// role credentials it will be signed with. Returns `true` when it was refused.
    pub(super) async fn aws_prepare(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let plan = ctx.plan()?;
        let Some(aws) = plan
            .profile
            .aws
            .clone()
            .filter(|a| a.resigns(&plan.target.authority))
        else {
            return Ok(false);
        };
        let has_body = !session.is_body_empty();
        let req = session.req_header();
        let shape = match resign::inspect(&req.uri, &req.headers, has_body) {
            Ok(shape) => shape,
            Err(reason) => {
                self.refuse(session, ctx, reason).await;
                return Ok(true);
            }
        };
        let creds = match self.role_credentials(&ctx.snap, &aws).await {
            Ok(creds) => creds,
            Err(e) => {
                log::warn!("AWS credentials for {}: {e}", aws.key.role_arn);
                ctx.line.error = Some(e);
                self.refuse(session, ctx, Reason::CredentialUnavailable)
                    .await;
                return Ok(true);
            }
        };
        // Signed with the role's own credentials (from the endpoint): nothing to replace.
        if shape.access_key_id == creds.access_key_id {
            return Ok(false);
        }
        let masked = vec![creds.session_token.expose().as_bytes().to_vec()];
        if let Some(plan) = ctx.plan.as_mut() {
            plan.scrub = Some(Replacer::masking(plan_secrets(plan).chain(masked)));
        }
        ctx.flow.aws = Some(Box::new((shape, creds)));
        Ok(false)
    }

    /// Re-signs the upstream head as it will be sent, when [`Self::aws_prepare`] kept a shape.
    pub(super) fn aws_sign(
        &self,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Kept, not taken: a retried upstream request is signed again.
        let Some(pending) = ctx.flow.aws.clone() else {
            return Ok(());
        };
        let (shape, creds) = &*pending;
        let scheme = ctx.plan()?.target.scheme.as_str();
        let out = resign::Outgoing {
            method: upstream.method.as_str(),
            scheme,
            uri: &upstream.uri,
            headers: &upstream.headers,
        };
        let signed = resign::sign(shape, creds, out, SystemTime::now())
            .map_err(|e| Error::because(ErrorType::InternalError, "aws re-signing", e))?;
        super::edit::apply(upstream, signed.ops)?;
        let masked = [
            creds.session_token.expose().as_bytes().to_vec(),
            signed.signature.into_bytes(),
        ];
        if let Some(plan) = ctx.plan.as_mut() {
            plan.scrub = Some(Replacer::masking(plan_secrets(plan).chain(masked)));
        }
        ctx.line.injected = Some(header::AUTHORIZATION.as_str().into());
        self.shared.metrics.injected(Some("aws"));
        Ok(())
    }

    /// Credentials for `aws`'s role: the STS host resolved and checked like any destination
    /// (`network.resolve`, DNS, the SSRF guard), then the kept session or a new one.
    async fn role_credentials(
        &self,
        snap: &Snapshot,
        aws: &Aws,
    ) -> std::result::Result<RoleCredentials, String> {
        let host = aws.sts.host_str().unwrap_or_default();
        let port = aws.sts.port_or_known_default().unwrap_or(443);
        let dest: Authority = parse_authority(host.as_bytes(), Some(port))
            .map_err(|r| format!("aws.sts_endpoint: {}", r.code()))?;
        let limits = &snap.limits;
        let addr = snap
            .profile
            .network
            .resolve_checked(
                &self.shared.runtime.dns,
                &dest,
                limits.upstream_connect_timeout,
                &self.shared.own_addrs,
            )
            .await
            .map_err(|r| format!("aws.sts_endpoint {dest}: {}", r.code()))?;
        let reach = Reach {
            addr,
            roots: &snap.tls.upstream_roots,
            connect_timeout: limits.upstream_connect_timeout,
            // STS answers at once or not at all: its wait is not an LLM's.
            timeout: limits.upstream_connect_timeout
                + limits
                    .upstream_first_byte_timeout
                    .min(std::time::Duration::from_secs(30)),
        };
        self.shared
            .runtime
            .aws
            .credentials(aws, reach)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The secrets a plan already adds (its credential's header value, its substitutions'), to
/// keep masking them beside the AWS ones.
fn plan_secrets(plan: &crate::admission::RequestPlan) -> impl Iterator<Item = Vec<u8>> + '_ {
    let credential = plan.credential.iter().map(|c| c.value.as_bytes().to_vec());
    let substituted = plan
        .substitutions
        .iter()
        .map(|s| s.secret.expose().as_bytes().to_vec());
    credential.chain(substituted)
}
