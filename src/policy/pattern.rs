//! The patterns the policy is written in: host patterns (`network.allow`/`deny`, rules,
//! `tls.passthrough`, credential and header hosts), path globs, and the matching form of a
//! request path that path globs are compared with (and the ambiguity check that comes first).

use crate::target::{split_authority, Authority, Host};
use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;

/// A host pattern from the config: `api.example.com`, `*.example.com` (subdomains only, not
/// the apex), `*` (any name), or an IP literal; each with an optional `:port`. Without a port it
/// applies to ports 80 and 443. Names are compared case-insensitively, trailing dots ignored,
/// IDNs as punycode. IP-literal destinations are only matched by IP patterns, never by globs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPattern {
    kind: PatternKind,
    port: Option<u16>,
    source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternKind {
    Any,
    Exact(Host),
    /// `.example.com` for `*.example.com`.
    Suffix(String),
    /// An address range; matches IP-literal destinations only.
    Cidr(IpNet),
}

impl HostPattern {
    /// The port written after the host, if any (none means 80 and 443).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// True when both patterns name the same hosts, whatever their ports.
    pub fn same_hosts(&self, other: &HostPattern) -> bool {
        self.kind == other.kind
    }

    /// True when `dest` is named by this pattern.
    // Called per rule and per entry from the policy in the next module: without the hint the
    // call is not inlined across the module boundary, and 1,000 rules cost 10% more.
    #[inline]
    pub fn matches(&self, dest: &Authority) -> bool {
        let port_ok = match self.port {
            Some(p) => p == dest.port,
            None => dest.port == 80 || dest.port == 443,
        };
        port_ok
            && match (&self.kind, &dest.host) {
                (PatternKind::Exact(h), host) => h == host,
                (PatternKind::Any, Host::Name(_)) => true,
                (PatternKind::Suffix(suffix), Host::Name(n)) => {
                    n.len() > suffix.len() && n.ends_with(suffix.as_str())
                }
                (PatternKind::Cidr(net), Host::Ip(ip)) => net.contains(ip),
                (_, Host::Ip(_)) | (PatternKind::Cidr(_), Host::Name(_)) => false,
            }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        let invalid = |why: &str| format!("`{source}` is not a valid host pattern: {why}");
        let (kind, port) = if source == "*" {
            (PatternKind::Any, None)
        } else if let Some(rest) = source.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(invalid("only one leading `*.` label is allowed"));
            }
            match split_authority(rest.as_bytes()) {
                Ok((Host::Name(n), port)) => (PatternKind::Suffix(format!(".{n}")), port),
                Ok((Host::Ip(_), _)) => return Err(invalid("a wildcard cannot precede an IP")),
                Err(r) => return Err(invalid(r.present().message)),
            }
        } else if let Some((net, len_and_port)) = source.split_once('/') {
            let (len, port) = match len_and_port.split_once(':') {
                Some((len, port)) => (len, Some(port)),
                None => (len_and_port, None),
            };
            let net: IpNet = format!("{net}/{len}")
                .parse()
                .map_err(|_| invalid("not a CIDR range (`10.0.0.0/8`, `fd00::/8`)"))?;
            let port = match port {
                None => None,
                Some(p) => Some(
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| invalid("bad port"))?,
                ),
            };
            (PatternKind::Cidr(net.trunc()), port)
        } else if source.contains('*') {
            return Err(invalid(
                "a wildcard must be a whole leading label, as in `*.example.com`",
            ));
        } else {
            match split_authority(source.as_bytes()) {
                Ok((host, port)) => (PatternKind::Exact(host), port),
                Err(r) => return Err(invalid(r.present().message)),
            }
        };
        Ok(HostPattern { kind, port, source })
    }
}

/// True when any pattern in `patterns` names `dest`.
#[inline]
pub fn any_matches(patterns: &[HostPattern], dest: &Authority) -> bool {
    patterns.iter().any(|p| p.matches(dest))
}

/// A path pattern: literal segments, `*` (one segment) and a final `**` (the rest, including
/// nothing). Matched against [`normalize_path`] segments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathGlob(Vec<PathSegment>);

impl TryFrom<String> for PathGlob {
    type Error = String;

    fn try_from(glob: String) -> Result<Self, String> {
        let Some(rest) = glob.strip_prefix('/') else {
            return Err(format!("`{glob}` is not a path pattern: it starts with /"));
        };
        let raw: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::new();
        for (i, seg) in raw.iter().enumerate() {
            segments.push(match *seg {
                "**" if i + 1 == raw.len() => PathSegment::Rest,
                "**" => return Err(format!("`{glob}`: `**` may only end a path")),
                "*" => PathSegment::One,
                lit if lit.contains('*') => {
                    return Err(format!("`{glob}`: `*` stands for a whole segment"))
                }
                lit => PathSegment::Literal(glob_literal(&glob, lit)?),
            });
        }
        Ok(PathGlob(segments))
    }
}

/// A glob literal as request segments are compared with it: percent-decoded, and refused when
/// no request could match it (a `;` parameter, a trailing dot or space, a dot-segment: matching
/// ignores or resolves those) or when a request spelling it would be ambiguous.
fn glob_literal(glob: &str, lit: &str) -> Result<String, String> {
    check_path(lit).map_err(|why| format!("`{glob}`: `{lit}` is ambiguous: {why}"))?;
    let decoded = percent_decode(lit);
    match normalize_path(lit).as_slice() {
        [only] if *only == decoded => Ok(decoded),
        [] => Err(format!(
            "`{glob}`: `{lit}` is resolved away when requests are matched (`.` and `..` resolve)"
        )),
        matched => Err(format!(
            "`{glob}`: requests are matched with `;` parameters and trailing dots and spaces \
             stripped and `.`/`..` resolved, so `{lit}` would be matched as `{}`; write that",
            matched.join("/")
        )),
    }
}

impl PathGlob {
    /// Whether the (already normalised) `segments` match.
    #[inline]
    pub fn matches(&self, segments: &[String]) -> bool {
        path_matches(&self.0, segments)
    }

    /// The glob with its literals case-folded like request segments under
    /// `rules_case: insensitive`.
    pub(super) fn folded(&self) -> PathGlob {
        PathGlob(
            self.0
                .iter()
                .map(|s| match s {
                    PathSegment::Literal(l) => PathSegment::Literal(fold_case(l)),
                    other => other.clone(),
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Literal(String),
    /// `*`
    One,
    /// `**`
    Rest,
}

#[inline]
fn path_matches(glob: &[PathSegment], segments: &[String]) -> bool {
    match glob.split_first() {
        None => segments.is_empty(),
        Some((PathSegment::Rest, _)) => true,
        Some((PathSegment::One, rest)) => {
            !segments.is_empty() && path_matches(rest, &segments[1..])
        }
        Some((PathSegment::Literal(l), rest)) => {
            segments.first() == Some(l) && path_matches(rest, &segments[1..])
        }
    }
}

/// The matching form of a path, in segments: query dropped, percent-escapes decoded (so
/// `%2e%2e` and `%2F` cannot hide a segment), `/` and `\` both separators, each segment cut at
/// its first `;` (path parameters: `/a;jsessionid=1`, `/..;/`) and stripped of trailing dots
/// and spaces (`/a.`, `/a%20`, which Windows origins fold), empty and `.` segments dropped, `..`
/// applied. The forwarded path is never changed; this is only what rules compare.
pub fn normalize_path(path: &str) -> Vec<String> {
    let decoded = percent_decode(path_part(path));
    let mut out: Vec<String> = Vec::new();
    for seg in decoded.split(['/', '\\']) {
        match strip_params(seg) {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => match s.trim_end_matches(['.', ' ']) {
                "" => {}
                key => out.push(key.to_string()),
            },
        }
    }
    out
}

/// The path without its query (or a fragment a client should not have sent).
fn path_part(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

/// A segment without its `;` parameters.
fn strip_params(seg: &str) -> &str {
    seg.split(';').next().unwrap_or("")
}

/// Case folding for `rules_case: insensitive`: lower case of upper case, so that characters
/// whose upper case is ASCII fold like it (`ſ` like `s`, the Kelvin sign like `k`), as an
/// origin comparing upper-cased paths would see them.
pub(super) fn fold_case(s: &str) -> String {
    s.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Why a path is ambiguous: origins (and the proxies in front of them) would read it in more
/// than one way, so no rule can be matched against it with confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// `%2F` or `%5C`: a separator to some origins, part of a segment to others.
    EncodedSeparator,
    /// An escape is left after one decoding (`%2541`, `%%34%31`): origins that decode twice
    /// see another path.
    DoubleEncoded,
    /// The decoded bytes are not UTF-8 (including overlong forms such as `%C0%AF` for `/`), or
    /// carry U+FFFD, which is what a lenient decoder makes of such bytes.
    InvalidUtf8,
    /// A decoded control character: NUL, tab, line breaks, other C0, DEL, C1.
    ControlCharacter,
    /// A decoded character that renders as nothing (Unicode's default-ignorable code points:
    /// zero-width space and joiners, bidi controls, soft hyphen, BOM, variation selectors,
    /// tag characters).
    InvisibleCharacter,
    /// A segment that is empty, `.` or `..` only once `;` parameters or trailing dots and
    /// spaces are stripped (`..;x`, `.. `, `...`, `;x`): some origins resolve it, others keep it.
    DotSegment,
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ambiguity::EncodedSeparator => "the path has an encoded `/` or `\\` (%2F, %5C)",
            Ambiguity::DoubleEncoded => "the path is still percent-encoded after one decoding",
            Ambiguity::InvalidUtf8 => "the path decodes to invalid or overlong UTF-8",
            Ambiguity::ControlCharacter => "the path decodes to a control character",
            Ambiguity::InvisibleCharacter => "the path decodes to an invisible character",
            Ambiguity::DotSegment => {
                "a path segment is `.` or `..` or empty only once `;` parameters or trailing \
                 dots and spaces are stripped"
            }
        })
    }
}

/// Whether origins could read `path` (the part before `?`) in more than one way; see
/// [`Ambiguity`]. Only paths to hosts with rules are checked: elsewhere warden matches nothing
/// against the path and forwards it as sent.
pub fn check_path(path: &str) -> Result<(), Ambiguity> {
    let raw = path_part(path).as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match escape_at(raw, i) {
            Some(b'/' | b'\\') => return Err(Ambiguity::EncodedSeparator),
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(raw[i]);
                i += 1;
            }
        }
    }
    if (0..decoded.len()).any(|i| escape_at(&decoded, i).is_some()) {
        return Err(Ambiguity::DoubleEncoded);
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| Ambiguity::InvalidUtf8)?;
    for c in text.chars() {
        if c == char::REPLACEMENT_CHARACTER {
            return Err(Ambiguity::InvalidUtf8);
        }
        if c.is_control() {
            return Err(Ambiguity::ControlCharacter);
        }
        if is_default_ignorable(c) {
            return Err(Ambiguity::InvisibleCharacter);
        }
    }
    let hides_a_dot_segment = text.split(['/', '\\']).any(|seg| {
        let stripped = strip_params(seg).trim_end_matches(['.', ' ']);
        !matches!(seg, "" | "." | "..")
            && (stripped.is_empty() || matches!(strip_params(seg), "." | ".."))
    });
    if hides_a_dot_segment {
        return Err(Ambiguity::DotSegment);
    }
    Ok(())
}

/// The byte `%XX` at `i` stands for, if there is one.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    match bytes.get(i..i + 3)? {
        [b'%', h, l] => Some(((hex(*h)? << 4) | hex(*l)?) as u8),
        _ => None,
    }
}

/// Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt, Unicode 15):
/// characters that render as nothing, so two paths that look the same can differ by them.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> HostPattern {
        HostPattern::try_from(s.to_string()).unwrap()
    }

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = pat("*.example.com");
        assert!(p.matches(&dest("api.example.com:443")));
        assert!(p.matches(&dest("a.b.EXAMPLE.com.:80")));
        assert!(!p.matches(&dest("example.com:443")));
        assert!(!p.matches(&dest("evilexample.com:443")));
        assert!(!p.matches(&dest("api.example.com:8443")));
    }

    #[test]
    fn ports_default_to_80_and_443() {
        let p = pat("example.org:8443");
        assert!(p.matches(&dest("example.org:8443")));
        assert!(!p.matches(&dest("example.org:443")));
        assert!(pat("example.org").matches(&dest("example.org:80")));
    }

    #[test]
    fn globs_never_match_ip_literals() {
        assert!(!pat("*").matches(&dest("10.0.0.1:443")));
        assert!(pat("*").matches(&dest("a.test:443")));
        assert!(pat("10.0.0.1").matches(&dest("10.0.0.1:443")));
    }

    #[test]
    fn idn_patterns_compare_as_punycode() {
        assert!(pat("bücher.example").matches(&dest("xn--bcher-kva.example:443")));
    }

    #[test]
    fn rejects_malformed_globs_naming_them() {
        for bad in ["*example.com", "api.*.com", "*.*.com", "*.", ""] {
            let err = HostPattern::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("api.github.com", "api.github.com:443", true),
            ("api.github.com", "API.GitHub.com.:443", true),
            ("api.github.com", "api.github.com:80", true),
            ("api.github.com", "api.github.com:8443", false),
            ("api.github.com", "github.com:443", false),
            ("api.github.com", "xapi.github.com:443", false),
            ("*.example.com", "a.example.com:443", true),
            ("*.example.com", "a.b.example.com:443", true),
            ("*.example.com", "example.com:443", false),
            ("*.example.com", "evilexample.com:443", false),
            ("*.example.com", "example.com.evil.test:443", false),
            ("*.example.com:8443", "a.example.com:8443", true),
            ("*.example.com:8443", "a.example.com:443", false),
            ("example.org:8443", "example.org:8443", true),
            ("*", "anything.test:443", true),
            ("*", "anything.test:22", false),
            ("*", "10.1.2.3:443", false),
            ("10.0.0.0/8", "10.1.2.3:443", true),
            ("10.0.0.0/8", "11.1.2.3:443", false),
            ("10.0.0.0/8:22", "10.1.2.3:22", true),
            ("10.0.0.0/8", "ten.example:443", false),
            ("fd00::/8", "[fd12::1]:443", true),
            ("127.0.0.1", "127.0.0.1:80", true),
            ("127.0.0.1", "localhost:80", false),
            ("bücher.example", "xn--bcher-kva.example:443", true),
        ];
        for (p, d, want) in cases {
            assert_eq!(pat(p).matches(&dest(d)), *want, "{p} vs {d}");
        }
    }

    #[test]
    fn paths_normalise_like_an_origin_would() {
        assert_eq!(normalize_path("/a/./b/../c//d?x=/e"), ["a", "c", "d"]);
        assert_eq!(normalize_path("/%61%2Fb"), ["a", "b"]);
        assert_eq!(normalize_path("/../../etc"), ["etc"]);
        assert_eq!(normalize_path("/a\\..\\b"), ["b"]);
        assert!(normalize_path("/").is_empty());
    }

    #[test]
    fn matching_strips_parameters_and_trailing_dots_and_spaces_per_segment() {
        let cases: &[(&str, &[&str])] = &[
            ("/a;x/b;y=1", &["a", "b"]),
            ("/a%3bx", &["a"]),
            ("/a./b..", &["a", "b"]),
            ("/a%20/b%20.%20", &["a", "b"]),
            ("/v1.0/x", &["v1.0", "x"]),
            ("/x/..;/a", &["a"]),
            ("/x/./a/.", &["x", "a"]),
            ("/.a", &[".a"]),
            ("/A", &["A"]),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path), *want, "{path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_named_by_their_ambiguity() {
        use Ambiguity::*;
        let cases: &[(&str, Result<(), Ambiguity>)] = &[
            ("/a/b;c/d.", Ok(())),
            ("/b%C3%BCcher", Ok(())),
            ("/bücher", Ok(())),
            ("/a?q=%00%2F%25%32%35", Ok(())),
            ("/a%2Fb", Err(EncodedSeparator)),
            ("/a%2fb", Err(EncodedSeparator)),
            ("/a%5cb", Err(EncodedSeparator)),
            ("/%2573", Err(DoubleEncoded)),
            ("/%252F", Err(DoubleEncoded)),
            ("/%%37%33", Err(DoubleEncoded)),
            ("/%25zz", Ok(())),
            ("/100%", Ok(())),
            ("/%C0%AF", Err(InvalidUtf8)),
            ("/%E0%80%AF", Err(InvalidUtf8)),
            ("/%ED%A0%80", Err(InvalidUtf8)),
            ("/%FF", Err(InvalidUtf8)),
            ("/\u{FFFD}", Err(InvalidUtf8)),
            ("/%00", Err(ControlCharacter)),
            ("/a%09", Err(ControlCharacter)),
            ("/a%0D%0A", Err(ControlCharacter)),
            ("/a%7F", Err(ControlCharacter)),
            ("/a%C2%85", Err(ControlCharacter)),
            ("/%E2%80%8Bx", Err(InvisibleCharacter)),
            ("/x%C2%AD", Err(InvisibleCharacter)),
            ("/%E2%80%AEx", Err(InvisibleCharacter)),
            ("/%EF%BB%BFx", Err(InvisibleCharacter)),
            ("/%E2%81%A0x", Err(InvisibleCharacter)),
            ("/%F3%A0%80%81x", Err(InvisibleCharacter)),
            ("/x/..;/a", Err(DotSegment)),
            ("/x/.. /a", Err(DotSegment)),
            ("/x/..%20/a", Err(DotSegment)),
            ("/x/.../a", Err(DotSegment)),
            ("/;x/a", Err(DotSegment)),
            ("/a/%20", Err(DotSegment)),
            ("/x/../a", Ok(())),
            ("/x/%2e%2e/a", Ok(())),
        ];
        for (path, want) in cases {
            assert_eq!(check_path(path), *want, "{path}");
        }
    }
}
