//! Parses and validates where a request is going: the CONNECT authority, absolute-form URIs and
//! `Host` headers, normalised into one [`Authority`]. Called by the front door (the first head on
//! every connection) and by `request_filter` (every request, including those inside tunnels).
//! Pure functions, no I/O, so every rule is unit-tested here.

use crate::reason::Reason;
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A destination host: a lower-case ASCII (punycode) name, or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, lower-case, punycode, without a trailing dot.
    Name(String),
    /// A literal address (canonical dotted quad, or bracketed IPv6 in the request).
    Ip(IpAddr),
}

impl Host {
    /// The name as used for SNI, certificate SANs and glob matching (IPv6 without brackets).
    pub fn as_str_unbracketed(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A host and port: the one identity a connection or request is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    /// The destination host.
    pub host: Host,
    /// The destination port.
    pub port: u16,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The scheme a request travels with toward the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (absolute-form request to the proxy).
    Http,
    /// HTTPS (a request inside an intercepted CONNECT tunnel).
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A validated request destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// How the request reaches the upstream.
    pub scheme: Scheme,
    /// Where it goes.
    pub authority: Authority,
    /// The origin-form path and query to send upstream (`/` when the URI had none).
    pub path: String,
}

/// Who and where an intercepted tunnel is for. The front door attaches it to the TLS
/// connection (Pingora's `SslDigest` extension), so every request in the tunnel is bound to the
/// CONNECT authority and the client cannot forge or change it.
#[derive(Clone, Debug)]
pub struct TunnelIdentity {
    /// The CONNECT authority: the only destination of this tunnel.
    pub authority: Authority,
    /// The client that authenticated the CONNECT (`proxy.auth`), if any.
    pub client: Option<std::sync::Arc<str>>,
    /// The SNI the client sent in its ClientHello, if any.
    pub sni: Option<String>,
}

impl TunnelIdentity {
    /// False when the client's SNI names another host than the CONNECT authority.
    pub fn sni_matches(&self) -> bool {
        match &self.sni {
            None => true,
            Some(sni) => parse_host(sni).is_ok_and(|h| h == self.authority.host),
        }
    }
}

/// Parses `host[:port]` as it appears in a CONNECT line, an absolute URI or a `Host` header.
///
/// `default_port` applies when no port is given; `None` makes the port mandatory (CONNECT).
/// Fails with [`Reason::BadAuthority`] for anything unusable (userinfo, empty host, bad port,
/// unbracketed IPv6) and [`Reason::NonCanonicalHost`] for numeric hosts that are not a canonical
/// dotted quad (`0x7f.1`, `2130706433`, `017.0.0.1`), which other parsers read differently.
pub fn parse_authority(raw: &[u8], default_port: Option<u16>) -> Result<Authority, Reason> {
    let (host, port) = split_authority(raw)?;
    let port = match port {
        Some(port) => port,
        None => default_port.ok_or(Reason::BadAuthority)?,
    };
    Ok(Authority { host, port })
}

/// Parses `host[:port]` into a normalised host and the port, if one was written.
pub fn split_authority(raw: &[u8]) -> Result<(Host, Option<u16>), Reason> {
    let raw = std::str::from_utf8(raw).map_err(|_| Reason::BadAuthority)?;
    if raw.is_empty() || raw.contains('@') || raw.chars().any(|c| c.is_whitespace()) {
        return Err(Reason::BadAuthority);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(Reason::BadAuthority)?;
        let ip: Ipv6Addr = v6.parse().map_err(|_| Reason::BadAuthority)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(Reason::BadAuthority)?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        };
        if host.contains(':') {
            return Err(Reason::BadAuthority);
        }
        (parse_host(host)?, port)
    };
    Ok((host, port.map(parse_port).transpose()?))
}

fn parse_port(p: &str) -> Result<u16, Reason> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::BadAuthority);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(Reason::BadAuthority),
        Ok(port) => Ok(port),
    }
}

/// Normalises a host name: IDNA to punycode, lower case, trailing dot dropped; numeric hosts
/// must be canonical IPv4.
pub fn parse_host(raw: &str) -> Result<Host, Reason> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(Reason::BadAuthority);
    }
    // Map first: UTS 46 turns full-width digits into ASCII ones, so the numeric check must see
    // the mapped form.
    let ascii = idna::domain_to_ascii(trimmed).map_err(|_| Reason::BadAuthority)?;
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii).to_string();
    if ascii.is_empty() || ascii.len() > 253 {
        return Err(Reason::BadAuthority);
    }
    if looks_numeric(&ascii) {
        return match ascii.parse::<Ipv4Addr>() {
            // Canonical as written, not merely after mapping (full-width digits are refused).
            Ok(ip) if ip.to_string() == ascii && ascii == trimmed => Ok(Host::Ip(IpAddr::V4(ip))),
            _ => Err(Reason::NonCanonicalHost),
        };
    }
    let labels_ok = ascii.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return Err(Reason::BadAuthority);
    }
    Ok(Host::Name(ascii))
}

/// WHATWG URL rule: a host whose last label is a number (decimal or 0x-hex) is an IPv4 address
/// attempt, whatever the other labels are.
fn looks_numeric(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    if last.is_empty() {
        return false;
    }
    if let Some(hex) = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    last.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a request line as the client sent it, without its line ending: `METHOD SP target SP
/// version`, with no control byte anywhere (a raw tab, NUL, CR, DEL) and no space inside the
/// target. Pingora's parser percent-escapes such bytes in the target (`/a\tb` becomes `/a%09b`)
/// and goes on, so the origin would be sent a path the client never wrote; warden refuses them
/// instead, on every host, with [`Reason::MalformedRequest`].
pub fn check_request_line(line: &[u8]) -> Result<(), Reason> {
    let spaces = line.iter().filter(|b| **b == b' ').count();
    if spaces != 2 || line.iter().any(u8::is_ascii_control) {
        return Err(Reason::MalformedRequest);
    }
    Ok(())
}

/// Validates the target of a `CONNECT` line: authority-form with a mandatory port.
pub fn classify_connect(raw_target: &[u8]) -> Result<Authority, Reason> {
    if raw_target.first() == Some(&b'/') || raw_target.windows(3).any(|w| w == b"://") {
        return Err(Reason::BadAuthority);
    }
    parse_authority(raw_target, None)
}

/// Validates a request that reached the HTTP engine and says where it goes.
///
/// `tunnel` is the CONNECT authority when the request arrived inside an intercepted tunnel;
/// then the target must be origin-form (or absolute-form naming the same authority) and any
/// `Host` must name the tunnel's host ([`Reason::HostMismatch`] otherwise). Outside a tunnel
/// the target must be an absolute `http://` URI.
pub fn classify_request(
    raw_target: &[u8],
    hosts: &[&[u8]],
    tunnel: Option<&Authority>,
) -> Result<Target, Reason> {
    if hosts.len() > 1 {
        return Err(Reason::AmbiguousFraming);
    }
    let host_header = hosts.first().copied();
    match tunnel {
        Some(bound) => {
            let path = match raw_target_authority(raw_target) {
                RawTargetAuthority::None if raw_target.first() == Some(&b'/') => {
                    String::from_utf8_lossy(raw_target).into_owned()
                }
                RawTargetAuthority::None if raw_target == b"*" => "*".to_string(),
                RawTargetAuthority::Absolute {
                    scheme,
                    authority,
                    path_and_query,
                } if scheme.eq_ignore_ascii_case(b"https") => {
                    if parse_authority(authority, Some(bound.port))? != *bound {
                        return Err(Reason::HostMismatch);
                    }
                    origin_path(path_and_query)
                }
                _ => return Err(Reason::BadAuthority),
            };
            if let Some(h) = host_header {
                // A Host without a port names the tunnel's port: clients omit the default.
                if parse_authority(h, Some(bound.port))? != *bound {
                    return Err(Reason::HostMismatch);
                }
            }
            Ok(Target {
                scheme: Scheme::Https,
                authority: bound.clone(),
                path,
            })
        }
        None => match raw_target_authority(raw_target) {
            RawTargetAuthority::None => {
                if raw_target.first() == Some(&b'/') || raw_target == b"*" {
                    Err(Reason::OriginFormToProxy)
                } else {
                    Err(Reason::UnsupportedScheme)
                }
            }
            RawTargetAuthority::AmbiguousAuthority => Err(Reason::BadAuthority),
            RawTargetAuthority::Absolute {
                scheme,
                authority,
                path_and_query,
            } => {
                if scheme.eq_ignore_ascii_case(b"https") {
                    return Err(Reason::TlsDowngrade);
                }
                if !scheme.eq_ignore_ascii_case(b"http") {
                    return Err(Reason::UnsupportedScheme);
                }
                let authority = parse_authority(authority, Some(80))?;
                if let Some(h) = host_header {
                    if parse_authority(h, Some(80))? != authority {
                        return Err(Reason::HostMismatch);
                    }
                }
                Ok(Target {
                    scheme: Scheme::Http,
                    authority,
                    path: origin_path(path_and_query),
                })
            }
        },
    }
}

/// Validates one request head against the size limit and the tunnel's identity, then
/// classifies where it goes. Shared by the front door (first head) and `request_filter` (every
/// head). Framing (`Content-Length` with `Transfer-Encoding`, and the rest) was vetted when
/// the head was read (`proxy::head`), before Pingora saw it.
pub fn check_head(
    head_len: usize,
    raw_target: &[u8],
    hosts: &[&[u8]],
    tunnel: Option<&TunnelIdentity>,
    max_header_bytes: usize,
) -> Result<Target, Reason> {
    if head_len > max_header_bytes {
        return Err(Reason::HeadersTooLarge);
    }
    if let Some(t) = tunnel {
        if !t.sni_matches() {
            return Err(Reason::HostMismatch);
        }
    }
    classify_request(raw_target, hosts, tunnel.map(|t| &t.authority))
}

fn origin_path(path_and_query: &[u8]) -> String {
    match path_and_query.first() {
        None => "/".to_string(),
        Some(b'?') => format!("/{}", String::from_utf8_lossy(path_and_query)),
        Some(_) => String::from_utf8_lossy(path_and_query).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, port: u16) -> Authority {
        Authority {
            host: Host::Name(n.to_string()),
            port,
        }
    }

    #[test]
    fn parses_names_ips_and_ports() {
        let cases: &[(&str, Option<u16>, Result<Authority, Reason>)] = &[
            ("example.com:443", None, Ok(name("example.com", 443))),
            ("Example.COM.:8443", None, Ok(name("example.com", 8443))),
            ("example.com", Some(80), Ok(name("example.com", 80))),
            ("example.com", None, Err(Reason::BadAuthority)),
            (
                "127.0.0.1:80",
                None,
                Ok(Authority {
                    host: Host::Ip("127.0.0.1".parse().unwrap()),
                    port: 80,
                }),
            ),
            (
                "[::1]:443",
                None,
                Ok(Authority {
                    host: Host::Ip("::1".parse().unwrap()),
                    port: 443,
                }),
            ),
            ("::1:443", None, Err(Reason::BadAuthority)),
            ("user@example.com:443", None, Err(Reason::BadAuthority)),
            ("example.com:0", None, Err(Reason::BadAuthority)),
            ("example.com:65536", None, Err(Reason::BadAuthority)),
            ("example.com:", None, Err(Reason::BadAuthority)),
            ("example.com:+80", None, Err(Reason::BadAuthority)),
            (":443", None, Err(Reason::BadAuthority)),
            ("exa mple.com:443", None, Err(Reason::BadAuthority)),
            (
                "bücher.example:443",
                None,
                Ok(name("xn--bcher-kva.example", 443)),
            ),
        ];
        for (raw, default, want) in cases {
            assert_eq!(
                &parse_authority(raw.as_bytes(), *default),
                want,
                "parsing {raw:?}"
            );
        }
    }

    #[test]
    fn rejects_non_canonical_numeric_hosts() {
        for raw in [
            "0x7f.1:80",
            "2130706433:80",
            "017.0.0.1:80",
            "127.1:80",
            "0x7f000001:80",
            "1.2.3.4.5:80",
            "foo.123:80",
            "１２７.０.０.１:80",
        ] {
            assert_eq!(
                parse_authority(raw.as_bytes(), None),
                Err(Reason::NonCanonicalHost),
                "parsing {raw:?}"
            );
        }
    }

    #[test]
    fn request_lines_with_control_bytes_or_inner_spaces_are_malformed() {
        for ok in [
            &b"GET /a HTTP/1.1"[..],
            b"GET http://a.test/a%09b?q=%00 HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            "GET /b\u{fc}cher HTTP/1.1".as_bytes(),
        ] {
            assert_eq!(check_request_line(ok), Ok(()), "{}", ok.escape_ascii());
        }
        for bad in [
            &b"GET /a\tb HTTP/1.1"[..],
            b"GET /a?q=\t HTTP/1.1",
            b"GET /a\x00 HTTP/1.1",
            b"GET /a\x7f HTTP/1.1",
            b"GET /a\rb HTTP/1.1",
            b"GET /a b HTTP/1.1",
            b"GET  /a HTTP/1.1",
            b"GET\t/a HTTP/1.1",
            b"GET /a",
            b"",
        ] {
            assert_eq!(
                check_request_line(bad),
                Err(Reason::MalformedRequest),
                "{}",
                bad.escape_ascii()
            );
        }
    }

    #[test]
    fn connect_needs_authority_form_with_port() {
        assert_eq!(classify_connect(b"api.test:443"), Ok(name("api.test", 443)));
        assert_eq!(classify_connect(b"api.test"), Err(Reason::BadAuthority));
        assert_eq!(
            classify_connect(b"http://api.test:443/"),
            Err(Reason::BadAuthority)
        );
        assert_eq!(classify_connect(b"/"), Err(Reason::BadAuthority));
    }

    #[test]
    fn plain_requests_need_absolute_http_uris() {
        let ok = classify_request(b"http://a.test:8080/x?y=1", &[b"a.test:8080"], None).unwrap();
        assert_eq!(ok.authority, name("a.test", 8080));
        assert_eq!(ok.path, "/x?y=1");
        assert_eq!(ok.scheme, Scheme::Http);
        assert_eq!(
            classify_request(b"http://a.test", &[], None).unwrap().path,
            "/"
        );
        let cases: &[(&[u8], Reason)] = &[
            (b"/x", Reason::OriginFormToProxy),
            (b"https://a.test/", Reason::TlsDowngrade),
            (b"ftp://a.test/", Reason::UnsupportedScheme),
            (b"http:/\\a.test/", Reason::BadAuthority),
            (b"http://0x7f.1/", Reason::NonCanonicalHost),
        ];
        for (target, want) in cases {
            assert_eq!(
                classify_request(target, &[], None),
                Err(*want),
                "{}",
                String::from_utf8_lossy(target)
            );
        }
        assert_eq!(
            classify_request(b"http://a.test/", &[b"b.test"], None),
            Err(Reason::HostMismatch)
        );
        assert_eq!(
            classify_request(b"http://a.test/", &[b"a.test", b"a.test"], None),
            Err(Reason::AmbiguousFraming)
        );
    }

    #[test]
    fn tunnel_requests_are_bound_to_the_connect_authority() {
        let bound = name("api.test", 443);
        let ok = classify_request(b"/v1?x", &[b"API.test"], Some(&bound)).unwrap();
        assert_eq!(ok.authority, bound);
        assert_eq!(ok.scheme, Scheme::Https);
        assert_eq!(ok.path, "/v1?x");
        assert!(classify_request(b"/v1", &[b"api.test:443"], Some(&bound)).is_ok());
        assert!(classify_request(b"/v1", &[], Some(&bound)).is_ok());
        assert_eq!(
            classify_request(b"/v1", &[b"evil.test"], Some(&bound)),
            Err(Reason::HostMismatch)
        );
        assert_eq!(
            classify_request(b"/v1", &[b"api.test:8443"], Some(&bound)),
            Err(Reason::HostMismatch)
        );
        assert_eq!(
            classify_request(b"https://evil.test/v1", &[], Some(&bound)),
            Err(Reason::HostMismatch)
        );
        assert_eq!(
            classify_request(b"https://api.test/v1", &[], Some(&bound))
                .unwrap()
                .path,
            "/v1"
        );
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        // Content-Length with Transfer-Encoding is vetted as the head is read
        // (`proxy::head::tests::what_pingora_would_refuse_bare_gets_a_reason`).
        assert_eq!(
            check_head(2000, b"http://a.test/", &[], None, 1024),
            Err(Reason::HeadersTooLarge)
        );
    }
}
