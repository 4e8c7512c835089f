//! Stable reason codes for everything warden refuses or fails, the one exhaustive mapping
//! from a reason to what the client sees (status, `Proxy-Status` type, message and hint), and
//! the map from a Pingora error to a reason (`fail_to_proxy`, `logging`). Rendered into
//! responses by [`crate::refusal`]; used by the front door and the canonical log line alike.

use pingora_error::{Error, ErrorSource, ErrorType};

/// Why warden answered a request itself, or why a connection ended early.
///
/// The string form ([`Reason::code`]) is part of the contract: it appears in response bodies,
/// `Proxy-Status`, log lines and (later) metric labels, and never changes meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request head could not be parsed as HTTP/1.x.
    MalformedRequest,
    /// The request head is larger than `limits.max_request_header_bytes`.
    HeadersTooLarge,
    /// The authority (CONNECT target, absolute-URI host or `Host`) is missing or unusable.
    BadAuthority,
    /// A numeric host in a non-canonical form (`0x7f.1`, `2130706433`, `017.0.0.1`).
    NonCanonicalHost,
    /// Both `Content-Length` and `Transfer-Encoding`, or more than one `Host`.
    AmbiguousFraming,
    /// A path on a host with `network.rules` that origins could read more than one way: an
    /// encoded NUL or other control character, invalid or overlong UTF-8, an invisible
    /// character, an escape that survives one decoding (`%2541`), or an encoded `/` or `\`.
    AmbiguousPath,
    /// An origin-form request (`GET /path`) sent to the proxy port outside a tunnel.
    OriginFormToProxy,
    /// `/relay/{name}/` names no configured relay.
    RelayUnknown,
    /// A relay path that could climb out of the target's base path (`..`, encoded slashes).
    RelayPathInvalid,
    /// `https://` in absolute form: the client asked the proxy to downgrade TLS.
    TlsDowngrade,
    /// An absolute-form URI with a scheme other than `http`.
    UnsupportedScheme,
    /// `Host` (or SNI) inside a tunnel names another host than the CONNECT authority.
    HostMismatch,
    /// No `Proxy-Authorization` was sent and the proxy requires one.
    AuthRequired,
    /// The `Proxy-Authorization` sent is malformed or matches no client.
    AuthInvalid,
    /// The client was revoked (deleted or expired) while its connection was open.
    ClientRevoked,
    /// The destination is refused by `network.deny` or not in `network.allow` (strict).
    PolicyDeniedHost,
    /// A `network.rules` entry denies this method and path.
    PolicyDeniedRule,
    /// The destination resolved only to non-public addresses (the SSRF guard).
    PrivateAddress,
    /// The destination is warden itself (its proxy or admin listener).
    LoopDetected,
    /// A credential for this destination could not be read; nothing was sent upstream.
    CredentialUnavailable,
    /// The destination name did not resolve.
    DnsError,
    /// The upstream refused or reset the TCP connection.
    UpstreamConnectFailed,
    /// The upstream did not accept the connection within `limits.upstream_connect_timeout`.
    UpstreamConnectTimeout,
    /// The parent proxy (`upstream_proxy.url`) refused the connection or did not accept it in
    /// time.
    ParentUnreachable,
    /// The parent proxy answered warden's `CONNECT` with 403 or 407: it refuses the
    /// destination, or `upstream_proxy.auth` is missing or wrong.
    ParentRefused,
    /// The upstream's certificate did not verify, or its TLS handshake failed.
    UpstreamTlsError,
    /// The upstream accepted but sent nothing within `limits.upstream_first_byte_timeout`.
    UpstreamTimeout,
    /// The upstream closed or broke the connection mid-response, or sent an invalid response.
    UpstreamError,
    /// The client sent something other than a TLS ClientHello into an intercepted tunnel.
    ClientNotTls,
    /// The TLS handshake with the client failed (for example it does not trust warden's CA).
    ClientTlsError,
    /// The client went away or stopped sending before the exchange completed.
    ClientError,
    /// A connection stayed silent longer than `limits.idle_timeout`.
    IdleTimeout,
    /// A request head did not arrive whole within `limits.request_header_timeout`.
    RequestHeaderTimeout,
    /// A request body paused longer than `limits.request_body_idle_timeout`.
    RequestBodyTimeout,
    /// `CONNECT` after another request on the same connection, or inside a tunnel.
    UnexpectedConnect,
    /// The upstream's response head is larger than `limits.max_response_header_bytes`.
    UpstreamHeaderTooLarge,
    /// The request names a model `llm.allow_models` does not allow.
    LlmModelDenied,
    /// The model called a tool that `llm` policy denies.
    LlmToolDenied,
    /// An LLM request body is larger than `limits.llm_buffer_bytes`.
    LlmRequestTooLarge,
    /// An LLM response (or a held part of it) is larger than `limits.llm_buffer_bytes`.
    LlmBodyTooLarge,
    /// An LLM response warden must check could not be read (compressed or not the API's shape).
    LlmResponseUnreadable,
    /// The client spent one of its budgets (`proxy.auth.clients[].budget`): the request was
    /// not sent; `retry-after` says when the window frees up.
    BudgetExceeded,
    /// A `tools/call` for a tool the `mcp` policy refuses: not forwarded, answered as a tool
    /// result with `isError: true` (HTTP 200) naming this code.
    McpToolDenied,
    /// An MCP request whose `mcp-method` / `mcp-name` headers disagree with its body.
    McpAmbiguous,
    /// A POST to an MCP endpoint whose body is not JSON-RPC.
    McpMalformed,
    /// A POST to an MCP endpoint larger than `limits.llm_buffer_bytes`.
    McpRequestTooLarge,
    /// An MCP response warden must filter could not be read (compressed, or over the limit).
    McpResponseUnreadable,
    /// An HTTP/2 client broke a connection bound (`RST_STREAM`, `PING` or `SETTINGS` rate,
    /// header block size or frames, malformed streams): it got `GOAWAY`.
    H2Flood,
    /// The container credentials endpoint was called without a client's proxy token
    /// (or with `proxy.auth` off).
    AwsTokenInvalid,
    /// The container credentials endpoint was called by a client with no `aws` section.
    AwsNotConfigured,
    /// A request to an `aws.resign` host is not SigV4-signed (header or presigned query).
    AwsUnsigned,
    /// A request to an `aws.resign` host carries a payload warden cannot re-sign (chunk
    /// signatures chained from the seed, or a body without `x-amz-content-sha256`).
    AwsPayloadUnsupported,
    /// `proxy.proxy_protocol: required` and the connection did not start with a PROXY
    /// protocol header: closed without an answer.
    ProxyProtocolMissing,
    /// A PROXY protocol header that cannot be parsed, is cut short or is over its size
    /// bound: closed without an answer.
    ProxyProtocolInvalid,
    /// A bug or resource failure inside warden.
    Internal,
}

impl Reason {
    /// Every reason: the closed set the reason-code labels and bodies draw from.
    pub const ALL: [Reason; 55] = [
        Reason::MalformedRequest,
        Reason::HeadersTooLarge,
        Reason::BadAuthority,
        Reason::NonCanonicalHost,
        Reason::AmbiguousFraming,
        Reason::AmbiguousPath,
        Reason::OriginFormToProxy,
        Reason::RelayUnknown,
        Reason::RelayPathInvalid,
        Reason::TlsDowngrade,
        Reason::UnsupportedScheme,
        Reason::HostMismatch,
        Reason::AuthRequired,
        Reason::AuthInvalid,
        Reason::ClientRevoked,
        Reason::PolicyDeniedHost,
        Reason::PolicyDeniedRule,
        Reason::PrivateAddress,
        Reason::LoopDetected,
        Reason::CredentialUnavailable,
        Reason::DnsError,
        Reason::UpstreamConnectFailed,
        Reason::UpstreamConnectTimeout,
        Reason::ParentUnreachable,
        Reason::ParentRefused,
        Reason::UpstreamTlsError,
        Reason::UpstreamTimeout,
        Reason::UpstreamError,
        Reason::ClientNotTls,
        Reason::ClientTlsError,
        Reason::ClientError,
        Reason::IdleTimeout,
        Reason::RequestHeaderTimeout,
        Reason::RequestBodyTimeout,
        Reason::UnexpectedConnect,
        Reason::UpstreamHeaderTooLarge,
        Reason::LlmModelDenied,
        Reason::LlmToolDenied,
        Reason::LlmRequestTooLarge,
        Reason::LlmBodyTooLarge,
        Reason::LlmResponseUnreadable,
        Reason::BudgetExceeded,
        Reason::McpToolDenied,
        Reason::McpAmbiguous,
        Reason::McpMalformed,
        Reason::McpRequestTooLarge,
        Reason::McpResponseUnreadable,
        Reason::H2Flood,
        Reason::AwsTokenInvalid,
        Reason::AwsNotConfigured,
        Reason::AwsUnsigned,
        Reason::AwsPayloadUnsupported,
        Reason::ProxyProtocolMissing,
        Reason::ProxyProtocolInvalid,
        Reason::Internal,
    ];
}

/// How a [`Reason`] is presented: status, RFC 9209 error type and a one-line hint.
#[derive(Clone, Copy, Debug)]
pub struct Presentation {
    /// The HTTP status warden answers with.
    pub status: u16,
    /// The stable reason code.
    pub code: &'static str,
    /// The RFC 9209 `Proxy-Status` error type.
    pub proxy_error: &'static str,
    /// A one-line, human and agent readable message.
    pub message: &'static str,
    /// A one-line hint on what to do about it.
    pub hint: &'static str,
}

impl Reason {
    /// The one place a reason becomes a status, a code and a message.
    pub const fn present(self) -> Presentation {
        use Reason::*;
        let (status, code, proxy_error, message, hint) = match self {
            MalformedRequest => (
                400,
                "malformed_request",
                "http_request_error",
                "the request could not be parsed",
                "send a well-formed HTTP/1.1 request",
            ),
            HeadersTooLarge => (
                431,
                "headers_too_large",
                "http_request_error",
                "the request head is too large",
                "send fewer or smaller headers",
            ),
            BadAuthority => (
                400,
                "bad_authority",
                "http_request_error",
                "the request target has no usable host and port",
                "use http://host[:port]/path, or CONNECT host:port for https",
            ),
            NonCanonicalHost => (
                400,
                "non_canonical_host",
                "http_request_error",
                "numeric hosts must be canonical dotted-quad IPv4 or bracketed IPv6",
                "write the address as a.b.c.d",
            ),
            AmbiguousFraming => (
                400,
                "ambiguous_framing",
                "http_request_error",
                "the request framing is ambiguous (Content-Length with Transfer-Encoding, or several Host headers)",
                "send exactly one of Content-Length or Transfer-Encoding, and one Host",
            ),
            AmbiguousPath => (
                400,
                "ambiguous_path",
                "http_request_error",
                "the request path can be read more than one way (an encoded NUL, control or invisible character, invalid UTF-8, an escape left after one decoding, or an encoded / or \\)",
                "percent-encode the path once, as UTF-8, without %2F, %5C, %25XX or invisible characters",
            ),
            OriginFormToProxy => (
                400,
                "origin_form_to_proxy",
                "http_request_error",
                "this port is a forward proxy; requests need an absolute URI",
                "set HTTP_PROXY/HTTPS_PROXY to this address instead of calling it directly",
            ),
            RelayUnknown => (
                404,
                "relay_unknown",
                "http_request_error",
                "no relay has this name",
                "use /relay/{name}/path with a name from the relays section",
            ),
            RelayPathInvalid => (
                400,
                "relay_path_invalid",
                "http_request_error",
                "the relay path could climb out of the target's base path (a . or .. segment, an encoded / or \\, or a broken escape)",
                "send the path below the relay without dot segments or encoded slashes",
            ),
            TlsDowngrade => (
                400,
                "tls_downgrade",
                "http_request_error",
                "https:// URIs must be tunnelled with CONNECT, not sent in plain text",
                "use HTTPS_PROXY so the client sends CONNECT for https URLs",
            ),
            UnsupportedScheme => (
                400,
                "unsupported_scheme",
                "http_request_error",
                "only http:// absolute URIs and CONNECT are supported",
                "use http:// or CONNECT",
            ),
            HostMismatch => (
                421,
                "host_mismatch",
                "http_request_denied",
                "the Host header does not match the tunnel's CONNECT authority",
                "open a new CONNECT tunnel for each destination host",
            ),
            AuthRequired => (
                407,
                "auth_required",
                "http_request_denied",
                "this proxy requires authentication",
                "send Proxy-Authorization: Basic base64(client:token) or Bearer token",
            ),
            AuthInvalid => (
                407,
                "auth_invalid",
                "http_request_denied",
                "the proxy credentials are malformed or not valid",
                "check the client name and token given to this agent; retrying the same credentials will not help",
            ),
            ClientRevoked => (
                407,
                "client_revoked",
                "http_request_denied",
                "the client was revoked while this connection was open",
                "the client was deleted or expired; register it again for new credentials",
            ),
            PolicyDeniedHost => (
                403,
                "policy_denied_host",
                "http_request_denied",
                "this destination is not allowed by warden's network policy",
                "the destination is blocked by policy; retrying or bypassing the proxy will not help — ask the operator to allow it",
            ),
            PolicyDeniedRule => (
                403,
                "policy_denied_rule",
                "http_request_denied",
                "this method and path are not allowed by warden's network rules",
                "the request is blocked by policy; retrying or bypassing the proxy will not help — ask the operator to allow it",
            ),
            PrivateAddress => (
                403,
                "private_address",
                "http_request_denied",
                "the destination resolves to a private, loopback, link-local or otherwise non-public address",
                "non-public addresses are blocked by policy; retrying or bypassing the proxy will not help",
            ),
            LoopDetected => (
                403,
                "loop_detected",
                "http_request_denied",
                "the destination is warden itself",
                "send requests to their real destination through warden, not to warden's own ports",
            ),
            CredentialUnavailable => (
                502,
                "credential_unavailable",
                "proxy_internal_error",
                "warden could not read the credential for this destination; nothing was sent",
                "the operator must fix the credential's source; retrying will not help until then",
            ),
            DnsError => (
                502,
                "dns_error",
                "dns_error",
                "the destination host name did not resolve",
                "check the host name",
            ),
            UpstreamConnectFailed => (
                502,
                "upstream_connect_failed",
                "connection_refused",
                "the destination refused the connection",
                "check that the destination is up and listening on that port",
            ),
            UpstreamConnectTimeout => (
                504,
                "upstream_connect_timeout",
                "connection_timeout",
                "the destination did not accept the connection in time",
                "the destination may be down or unreachable; retry later",
            ),
            ParentUnreachable => (
                502,
                "parent_proxy_unreachable",
                "connection_refused",
                "warden could not connect to its parent proxy",
                "the operator must check upstream_proxy.url and that the parent proxy is up; retry later",
            ),
            ParentRefused => (
                502,
                "parent_proxy_refused",
                "connection_refused",
                "warden's parent proxy refused to open a tunnel to the destination",
                "the parent proxy denies this destination or warden's upstream_proxy.auth; retrying will not help — ask the operator",
            ),
            UpstreamTlsError => (
                502,
                "upstream_tls_error",
                "tls_certificate_error",
                "the destination's TLS certificate did not verify",
                "warden always verifies upstream certificates; fix the destination or add its CA to tls.upstream_ca_file",
            ),
            UpstreamTimeout => (
                504,
                "upstream_timeout",
                "http_response_timeout",
                "the destination did not answer in time",
                "the destination is slow or stuck; retry later",
            ),
            UpstreamError => (
                502,
                "upstream_error",
                "http_protocol_error",
                "the destination closed the connection or sent an invalid response",
                "retry later",
            ),
            ProxyProtocolMissing => (
                400,
                "proxy_protocol_missing",
                "http_request_error",
                "the connection did not start with a PROXY protocol header",
                "connect through the load balancer; proxy.proxy_protocol is required",
            ),
            ProxyProtocolInvalid => (
                400,
                "proxy_protocol_invalid",
                "http_request_error",
                "the PROXY protocol header is malformed, cut short or too large",
                "send one PROXY protocol v1 or v2 header (the load balancer's send-proxy)",
            ),
            ClientNotTls => (
                400,
                "client_not_tls",
                "tls_protocol_error",
                "the tunnel expected a TLS ClientHello",
                "speak TLS inside CONNECT tunnels to intercepted hosts",
            ),
            ClientTlsError => (
                400,
                "client_tls_error",
                "tls_protocol_error",
                "the TLS handshake with the client failed",
                "trust warden's CA certificate (see `warden ca`)",
            ),
            ClientError => (
                400,
                "client_error",
                "http_request_error",
                "the client closed or broke the connection",
                "",
            ),
            IdleTimeout => (
                408,
                "idle_timeout",
                "http_request_error",
                "the connection was idle too long",
                "",
            ),
            RequestHeaderTimeout => (
                408,
                "request_header_timeout",
                "http_request_error",
                "the request head did not arrive in time",
                "send the whole request head at once; warden waits limits.request_header_timeout for it",
            ),
            RequestBodyTimeout => (
                408,
                "request_body_timeout",
                "http_request_error",
                "the request body stalled",
                "keep sending the body; warden waits limits.request_body_idle_timeout between reads",
            ),
            UnexpectedConnect => (
                400,
                "unexpected_connect",
                "http_request_error",
                "CONNECT is accepted only as the first request on a connection to the proxy",
                "open a new connection to the proxy for each CONNECT",
            ),
            UpstreamHeaderTooLarge => (
                502,
                "upstream_header_too_large",
                "http_response_header_section_size",
                "the destination's response head is too large",
                "the destination sent more header bytes than limits.max_response_header_bytes allows",
            ),
            LlmModelDenied => (
                403,
                "llm_model_denied",
                "http_request_denied",
                "llm policy does not allow this model",
                "use a model listed in llm.allow_models",
            ),
            LlmToolDenied => (
                403,
                "llm_tool_denied",
                "http_request_denied",
                "llm policy does not allow this tool call",
                "do not call this tool again; choose another way",
            ),
            LlmRequestTooLarge => (
                413,
                "llm_request_too_large",
                "http_request_error",
                "the LLM request body is larger than warden may buffer to check it",
                "send a smaller request, or raise limits.llm_buffer_bytes",
            ),
            LlmBodyTooLarge => (
                502,
                "llm_body_too_large",
                "http_response_content_length",
                "the LLM response is larger than warden may buffer to check it",
                "ask for a shorter answer, or raise limits.llm_buffer_bytes",
            ),
            LlmResponseUnreadable => (
                502,
                "llm_response_unreadable",
                "http_protocol_error",
                "the LLM response could not be read to apply policy",
                "the provider answered in a form warden cannot check (for example compressed)",
            ),
            BudgetExceeded => (
                429,
                "budget_exceeded",
                "http_request_denied",
                "this client has spent one of its budgets, so the request was not sent",
                "wait the seconds retry-after gives before sending again; ask the operator to raise the client's budget if it is too small",
            ),
            McpToolDenied => (
                403,
                "mcp_tool_denied",
                "http_request_denied",
                "mcp policy does not allow this tool",
                "do not call this tool again; choose another way",
            ),
            McpAmbiguous => (
                400,
                "mcp_ambiguous",
                "http_request_error",
                "the mcp-method or mcp-name header does not match the JSON-RPC body (or is sent twice, or on a batch)",
                "send the headers exactly as the body's method and tool name, once each",
            ),
            McpMalformed => (
                400,
                "mcp_malformed",
                "http_request_error",
                "the body sent to this MCP endpoint is not JSON-RPC",
                "send one JSON-RPC message (or a batch) as JSON",
            ),
            McpRequestTooLarge => (
                413,
                "mcp_request_too_large",
                "http_request_error",
                "the MCP request body is larger than warden may buffer to check it",
                "send a smaller request, or raise limits.llm_buffer_bytes",
            ),
            McpResponseUnreadable => (
                502,
                "mcp_response_unreadable",
                "http_protocol_error",
                "the MCP server's response could not be read to apply the tool policy",
                "the server answered compressed or larger than limits.llm_buffer_bytes",
            ),
            H2Flood => (
                400,
                "h2_flood",
                "http_protocol_error",
                "the HTTP/2 connection broke one of warden's bounds and was closed with GOAWAY",
                "send fewer RST_STREAM, PING or SETTINGS frames, and smaller header blocks (see limits.h2_*)",
            ),
            AwsTokenInvalid => (
                401,
                "aws_token_invalid",
                "http_request_denied",
                "the AWS credentials endpoint needs the client's proxy token in Authorization",
                "set AWS_CONTAINER_AUTHORIZATION_TOKEN to this agent's proxy token",
            ),
            AwsNotConfigured => (
                404,
                "aws_not_configured",
                "http_request_denied",
                "no AWS role is configured for this client",
                "ask the operator to add an aws section for this client",
            ),
            AwsUnsigned => (
                403,
                "aws_unsigned",
                "http_request_denied",
                "requests to this AWS host must be SigV4-signed (any keys: warden re-signs them)",
                "sign with the AWS SDK or CLI using any access key; warden replaces the signature",
            ),
            AwsPayloadUnsupported => (
                400,
                "aws_payload_unsupported",
                "http_request_error",
                "warden cannot re-sign this payload (per-chunk signatures, or a body without x-amz-content-sha256)",
                "send x-amz-content-sha256 (UNSIGNED-PAYLOAD or the body's SHA-256) and no chunk signatures, or use the container credentials endpoint",
            ),
            Internal => (
                500,
                "internal_error",
                "proxy_internal_error",
                "warden failed internally",
                "retry; report it if it persists",
            ),
        };
        Presentation {
            status,
            code,
            proxy_error,
            message,
            hint,
        }
    }

    /// The stable code, e.g. `upstream_tls_error`.
    pub const fn code(self) -> &'static str {
        self.present().code
    }

    /// The status warden answers with for this reason.
    pub const fn status(self) -> u16 {
        self.present().status
    }

    /// The `Proxy-Status` header value (RFC 9209) for this reason.
    pub fn proxy_status(self) -> String {
        let p = self.present();
        format!("warden; error={}; details=\"{}\"", p.proxy_error, p.code)
    }
}

/// Maps a Pingora error to a reason. Errors warden raised itself carry their reason in the
/// request context and never reach here. Running out of file descriptors is a connect that
/// could not be made; otherwise the side the error came from and its type decide.
pub fn reason_for(e: &Error) -> Reason {
    use ErrorType::*;
    if out_of_fds(e) {
        // Creating the upstream socket failed: Pingora calls it internal, but to the client it
        // is a connect that could not be made.
        return Reason::UpstreamConnectFailed;
    }
    let upstream = match e.esource() {
        ErrorSource::Downstream => {
            return match e.etype() {
                ReadTimedout | WriteTimedout => Reason::IdleTimeout,
                InvalidHTTPHeader => Reason::MalformedRequest,
                // Whatever else fails on the client's side is the client's doing.
                _ => Reason::ClientError,
            };
        }
        ErrorSource::Upstream => true,
        ErrorSource::Internal | ErrorSource::Unset => false,
    };
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => Reason::UpstreamConnectTimeout,
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
        | ConnectProxyFailure | AcceptError => Reason::UpstreamConnectFailed,
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => {
            Reason::UpstreamTlsError
        }
        ReadTimedout | WriteTimedout => Reason::UpstreamTimeout,
        HTTPStatus(_) | InvalidHTTPHeader | H1Error | H2Error | H2Downgrade | InvalidH2
        | ConnectionClosed | ReadError | WriteError => Reason::UpstreamError,
        // Types that name no network failure: the origin's fault when raised on its side,
        // warden's own otherwise.
        FileOpenError | FileCreateError | FileReadError | FileWriteError | InternalError
        | UnknownError | Custom(_) | CustomCode(..) => {
            if upstream {
                Reason::UpstreamError
            } else {
                Reason::Internal
            }
        }
    }
}

/// Whether `e` comes from running out of file descriptors (EMFILE, ENFILE).
pub fn out_of_fds(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|code| code == 23 || code == 24)
}

/// [`reason_for`], knowing whether the connection was upgraded: a client that stops sending
/// mid-body is a stalled request body, answered `408 request_body_timeout`; an upgraded one
/// that goes quiet is an idle connection.
pub fn reason_in(e: &Error, upgraded: bool) -> Reason {
    match reason_for(e) {
        Reason::IdleTimeout if !upgraded && *e.esource() == ErrorSource::Downstream => {
            Reason::RequestBodyTimeout
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_code_and_a_status() {
        let codes: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert!((400..600).contains(&r.status()), "{r:?}");
        }
    }

    #[test]
    fn proxy_status_names_the_rfc9209_type_and_the_code() {
        assert_eq!(
            Reason::UpstreamTimeout.proxy_status(),
            "warden; error=http_response_timeout; details=\"upstream_timeout\""
        );
    }

    #[test]
    fn pingora_errors_map_to_reasons_by_side_and_type() {
        use ErrorType::*;
        let up = |t| Error::new(t).into_up();
        let down = |t| Error::new(t).into_down();
        let internal = |t| Error::new(t).into_in();
        let unset = |t| Error::new(t);
        let table: Vec<(Box<Error>, Reason)> = vec![
            (down(ReadTimedout), Reason::IdleTimeout),
            (down(InvalidHTTPHeader), Reason::MalformedRequest),
            (down(ConnectionClosed), Reason::ClientError),
            (down(InternalError), Reason::ClientError),
            (up(ConnectTimedout), Reason::UpstreamConnectTimeout),
            (up(TLSHandshakeTimedout), Reason::UpstreamConnectTimeout),
            (up(ConnectRefused), Reason::UpstreamConnectFailed),
            (unset(ConnectError), Reason::UpstreamConnectFailed),
            (up(InvalidCert), Reason::UpstreamTlsError),
            (up(ReadTimedout), Reason::UpstreamTimeout),
            (up(H1Error), Reason::UpstreamError),
            (internal(HTTPStatus(502)), Reason::UpstreamError),
            (up(InternalError), Reason::UpstreamError),
            (up(Custom("x")), Reason::UpstreamError),
            (internal(InternalError), Reason::Internal),
            (unset(UnknownError), Reason::Internal),
            (internal(FileReadError), Reason::Internal),
        ];
        for (e, want) in table {
            assert_eq!(reason_for(&e), want, "{e}");
        }
        let emfile = Error::because(
            InternalError,
            "socket",
            std::io::Error::from_raw_os_error(24),
        );
        assert_eq!(reason_for(&emfile), Reason::UpstreamConnectFailed);
    }

    #[test]
    fn a_client_silent_mid_body_is_a_body_timeout_unless_upgraded() {
        let e = Error::new(ErrorType::ReadTimedout).into_down();
        assert_eq!(reason_in(&e, false), Reason::RequestBodyTimeout);
        assert_eq!(reason_in(&e, true), Reason::IdleTimeout);
        let e = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(reason_in(&e, false), Reason::UpstreamTimeout);
    }
}
