//! Address classes for the SSRF guard (IPv4 embedded in IPv6 classified by what it carries),
//! and whether an address is one of warden's own listeners (loop detection).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `addr` is one of warden's own listeners (a wildcard listener owns its port on
/// loopback and on the wildcard address).
pub(super) fn is_own(addr: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|o| {
        o.port() == addr.port()
            && (o.ip() == addr.ip()
                || (o.ip().is_unspecified()
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
    })
}

/// What kind of address an IP is, for the SSRF guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Routable on the internet.
    Public,
    /// 127/8, ::1.
    Loopback,
    /// RFC 1918, ULA fc00::/7, site-local fec0::/10.
    Private,
    /// 169.254/16 (cloud metadata), fe80::/10.
    LinkLocal,
    /// 100.64/10 (carrier-grade NAT; also some metadata services).
    SharedAddressSpace,
    /// 224/4, ff00::/8.
    Multicast,
    /// 0/8, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// Documentation ranges (TEST-NETs, 2001:db8::/32).
    Documentation,
    /// Reserved, benchmarking, protocol-assignment and other special-purpose ranges.
    Reserved,
}

/// Classifies an address; IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) is
/// classified by the embedded address.
pub fn classify_addr(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(ip) {
                let class = classify_v4(v4);
                // ::a.b.c.d with a public a.b.c.d is still a deprecated, reserved form.
                return if class == AddrClass::Public && v6.segments()[..6] == [0; 6] {
                    AddrClass::Reserved
                } else {
                    class
                };
            }
            classify_v6(v6)
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let o = ip.octets();
    match o {
        [0, ..] => AddrClass::Unspecified,
        [127, ..] => AddrClass::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => AddrClass::Private,
        [169, 254, ..] => AddrClass::LinkLocal,
        [100, 64..=127, ..] => AddrClass::SharedAddressSpace,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => AddrClass::Documentation,
        [255, 255, 255, 255] => AddrClass::Broadcast,
        [224..=239, ..] => AddrClass::Multicast,
        [240..=255, ..] | [192, 0, 0, _] | [192, 88, 99, _] | [198, 18..=19, ..] => {
            AddrClass::Reserved
        }
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        AddrClass::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        AddrClass::Documentation
    } else if (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) || (s[0] == 0x2001 && s[1] < 0x0200) {
        // Discard-only 100::/64 and IETF protocol assignments 2001::/23.
        AddrClass::Reserved
    } else if s[0] & 0xe000 != 0x2000 {
        // Outside global unicast 2000::/3.
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// The IPv4 address an IPv6 address carries: mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo
/// `2001::/32` (the client address, stored inverted).
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) > (0, 1) => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, _, _, _, hi, lo] => {
            Some(low(hi, lo))
        }
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        [0x2001, 0, _, _, _, _, hi, lo] => Some(low(!hi, !lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedAddressSpace),
            ("100.100.100.200", SharedAddressSpace),
            ("100.128.0.1", Public),
            ("0.0.0.0", Unspecified),
            ("255.255.255.255", Broadcast),
            ("224.0.0.1", Multicast),
            ("240.0.0.1", Reserved),
            ("192.0.2.1", Documentation),
            ("198.51.100.1", Documentation),
            ("203.0.113.1", Documentation),
            ("198.18.0.1", Reserved),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fe80::1", LinkLocal),
            ("fc00::1", Private),
            ("fd00:ec2::254", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("2606:4700::1111", Public),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Public),
            ("2002:7f00:1::", Loopback),
            ("2002:0a00:0001::", Private),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Private),
            ("100::1", Reserved),
        ];
        for (ip, want) in cases {
            assert_eq!(classify_addr(ip.parse().unwrap()), *want, "{ip}");
        }
    }
}
