//! The PROXY protocol (v1 text, v2 binary) a TCP load balancer puts in front of each
//! connection (`proxy.proxy_protocol`): where the header ends and which client address it
//! names. Called by the front door before the first request head; parsing is `ppp`'s.

use ppp::PartialResult;
use serde::Deserialize;
use std::net::SocketAddr;

/// `proxy.proxy_protocol`: whether connections to the proxy port start with a PROXY header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Bytes are never interpreted as a header: `PROXY ...` is just a bad request.
    #[default]
    Off,
    /// A header is read when the connection starts with one; otherwise the connection is
    /// served as it is. Anyone who can reach the port can claim any address.
    Optional,
    /// Every connection must start with a valid header (warden behind a load balancer).
    Required,
}

/// The most a header may take, TLVs included. A v1 header is at most 107 bytes; a v2 header
/// from a load balancer carries a few TLVs (an id, TLS facts), far below this.
pub const MAX_HEADER_BYTES: usize = 4096;

/// The v1 header's start: `PROXY` and its separator.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX_BYTES: usize = 107;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// They are the start of a header (or of its signature): read more.
    NeedMore,
    /// They do not start with a header.
    Absent,
    /// A whole header of `len` bytes; what follows belongs to the client's stream.
    /// `source` is the client it names, or `None` when it names none to use (v2 `LOCAL`,
    /// v1 `UNKNOWN`, unspecified and Unix families): then the TCP peer is the client.
    Header {
        /// The header's length in bytes.
        len: usize,
        /// The client address it carries.
        source: Option<SocketAddr>,
    },
    /// A header that says it is longer than [`MAX_HEADER_BYTES`].
    TooLarge,
    /// A header that cannot be parsed; the text says why (no client bytes in it).
    Invalid(String),
}

/// Classifies the first bytes of a connection (`buf`, possibly followed by request bytes).
pub fn step(buf: &[u8]) -> Step {
    let v2 = ppp::v2::PROTOCOL_PREFIX;
    if buf.is_empty() {
        return Step::NeedMore;
    }
    if buf.starts_with(v2) {
        return v2_step(buf);
    }
    if buf.starts_with(V1_PREFIX) {
        return v1_step(buf);
    }
    if v2.starts_with(buf) || V1_PREFIX.starts_with(buf) {
        return Step::NeedMore;
    }
    Step::Absent
}

fn v2_step(buf: &[u8]) -> Step {
    use ppp::v2::{Addresses, Command, Header, ParseError};
    // The 16-byte fixed part ends with the length of the rest.
    const FIXED: usize = 16;
    match Header::try_from(buf) {
        Ok(h) if h.len() > MAX_HEADER_BYTES => Step::TooLarge,
        Ok(h) => {
            let source = match (h.command, h.addresses) {
                (Command::Local, _) => None,
                (Command::Proxy, Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, Addresses::Unix(_) | Addresses::Unspecified) => None,
            };
            // TLVs (after the addresses) are skipped: they are inside `len`.
            Step::Header {
                len: h.len(),
                source,
            }
        }
        Err(ParseError::Partial(_, rest)) if FIXED + rest > MAX_HEADER_BYTES => Step::TooLarge,
        Err(e) if e.is_incomplete() => Step::NeedMore,
        Err(e) => Step::Invalid(format!("PROXY v2 header: {e}")),
    }
}

fn v1_step(buf: &[u8]) -> Step {
    use ppp::v1::{Addresses, BinaryParseError, Header, ParseError};
    // The parser reads a header cut short inside a field ("... 51000 90") as a bad value:
    // hand it only a whole line, which ends at the first LF within the v1 bound.
    let Some(end) = buf.iter().take(V1_MAX_BYTES).position(|&b| b == b'\n') else {
        return if buf.len() < V1_MAX_BYTES {
            Step::NeedMore
        } else {
            Step::TooLarge
        };
    };
    match Header::try_from(&buf[..=end]) {
        Ok(h) => {
            let source = match h.addresses {
                Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Unknown => None,
            };
            Step::Header {
                len: h.header.len(),
                source,
            }
        }
        Err(BinaryParseError::Parse(ParseError::HeaderTooLong)) => Step::TooLarge,
        Err(e) if e.is_incomplete() => Step::NeedMore,
        Err(e) => Step::Invalid(format!("PROXY v1 header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Type, Version};

    fn v2(command: Command, addresses: impl Into<ppp::v2::Addresses>, tlv: bool) -> Vec<u8> {
        let b = Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses);
        let b = if tlv {
            b.write_tlv(Type::UniqueId, b"an-id-from-the-balancer")
                .expect("tlv")
        } else {
            b
        };
        b.build().expect("header")
    }

    fn addrs(src: &str) -> (SocketAddr, SocketAddr) {
        (
            src.parse().expect("addr"),
            "127.0.0.1:9080".parse().expect("addr"),
        )
    }

    #[test]
    fn reads_a_v1_header_and_leaves_the_request_after_it() {
        let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 9080\r\n";
        let mut buf = header.to_vec();
        buf.extend_from_slice(b"GET http://a.test/ HTTP/1.1\r\n\r\n");
        assert_eq!(
            step(&buf),
            Step::Header {
                len: header.len(),
                source: Some("192.0.2.7:51000".parse().expect("addr")),
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 51000 9080\r\n";
        assert!(matches!(step(v6), Step::Header { source: Some(a), .. } if a.is_ipv6()));
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            step(unknown),
            Step::Header {
                len: unknown.len(),
                source: None
            }
        );
    }

    #[test]
    fn reads_a_v2_header_skipping_its_tlvs() {
        let header = v2(Command::Proxy, addrs("192.0.2.7:51000"), true);
        let mut buf = header.clone();
        buf.extend_from_slice(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n");
        assert_eq!(
            step(&buf),
            Step::Header {
                len: header.len(),
                source: Some("192.0.2.7:51000".parse().expect("addr")),
            }
        );
        let v6 = (
            "[2001:db8::1]:51000".parse::<SocketAddr>().expect("addr"),
            "[::1]:9080".parse::<SocketAddr>().expect("addr"),
        );
        let v6 = v2(Command::Proxy, v6, false);
        assert!(matches!(step(&v6), Step::Header { source: Some(a), .. } if a.is_ipv6()));
    }

    #[test]
    fn a_v2_local_header_or_an_unspecified_family_names_no_client() {
        let local = v2(Command::Local, addrs("192.0.2.7:51000"), false);
        assert!(matches!(step(&local), Step::Header { source: None, .. }));
        let unspec = v2(Command::Proxy, ppp::v2::Addresses::Unspecified, false);
        assert!(matches!(step(&unspec), Step::Header { source: None, .. }));
        let unix = ppp::v2::Addresses::Unix(ppp::v2::Unix::new([1; 108], [2; 108]));
        let unix = v2(Command::Proxy, unix, false);
        assert!(matches!(step(&unix), Step::Header { source: None, .. }));
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 9080\r\n".to_vec();
        let v2 = v2(Command::Proxy, addrs("192.0.2.7:51000"), true);
        for header in [v1, v2] {
            for n in 0..header.len() {
                assert_eq!(step(&header[..n]), Step::NeedMore, "{n} bytes");
            }
        }
    }

    #[test]
    fn other_bytes_are_no_header() {
        for plain in [
            &b"GET http://a.test/ HTTP/1.1\r\n"[..],
            b"POST http://a.test/ HTTP/1.1\r\n",
            b"PROXZ",
            b"\r\n\r\nX",
            b"\x16\x03\x01",
        ] {
            assert_eq!(step(plain), Step::Absent, "{plain:?}");
        }
    }

    #[test]
    fn garbage_and_oversized_headers_are_refused() {
        assert!(matches!(
            step(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"),
            Step::Invalid(_)
        ));
        assert!(matches!(step(b"PROXY TCP9 a b c d\r\n"), Step::Invalid(_)));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert_eq!(step(&long), Step::TooLarge);
        // A v2 header that announces more than the bound is refused before it is read.
        let mut big = ppp::v2::PROTOCOL_PREFIX.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(step(&big), Step::TooLarge);
        let mut bad_version = ppp::v2::PROTOCOL_PREFIX.to_vec();
        bad_version.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]);
        assert!(matches!(step(&bad_version), Step::Invalid(_)));
    }

    #[test]
    fn mode_reads_from_yaml_with_off_as_the_default() {
        let mode = |s: &str| serde_yaml::from_str::<Mode>(s);
        assert_eq!(mode("off").expect("off"), Mode::Off);
        assert_eq!(mode("optional").expect("optional"), Mode::Optional);
        assert_eq!(mode("required").expect("required"), Mode::Required);
        assert!(mode("on").is_err());
        assert_eq!(Mode::default(), Mode::Off);
    }
}
