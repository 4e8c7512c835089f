//! Relays (`relays`): named targets an agent reaches as `/relay/{name}/{path…}` on the proxy
//! port, for destinations it must address directly (a `NO_PROXY` host, a host-side service).
//! Compiled with the config; `request_filter` (through admission) maps an origin-form request
//! to the target's URL, and from there it is an ordinary request to that target.

use crate::compile_error::{CompileError, CompileErrors};
use crate::reason::Reason;
use crate::target::{parse_authority, Scheme, Target};
use serde::Deserialize;
use std::sync::Arc;

/// The path prefix relayed requests arrive under.
pub const PREFIX: &str = "/relay/";

/// One `relays` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The name in `/relay/{name}/`.
    pub name: String,
    /// `http(s)://host[:port][/base]`: where requests go, the relayed path appended to `base`.
    pub target: String,
}

/// A compiled relay.
#[derive(Debug)]
struct Relay {
    name: Arc<str>,
    scheme: Scheme,
    authority: crate::target::Authority,
    /// The target's path without a trailing `/` (empty for the root).
    base: String,
}

/// The compiled `relays` section.
#[derive(Debug, Default)]
pub struct Relays {
    list: Vec<Relay>,
}

/// A request mapped through a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The relay's name.
    pub name: Arc<str>,
    /// Where the request goes: the target's scheme and authority, and its path.
    pub target: Target,
}

/// Whether an origin-form request target is one the proxy port routes itself: a relay, or
/// warden's own endpoints under `/_warden/`. The front door hands these to the HTTP engine
/// instead of refusing them as origin-form requests to a proxy.
pub fn served_locally(raw_target: &[u8]) -> bool {
    raw_target.starts_with(PREFIX.as_bytes())
        || raw_target == b"/relay"
        || raw_target.starts_with(b"/relay?")
        || raw_target.starts_with(b"/_warden/")
}

/// Compiles `entries` (under config key `key`), reporting every bad entry.
pub fn compile(entries: &[RelayConfig], key: &str) -> Result<Relays, CompileErrors> {
    let mut errors = Vec::new();
    let mut list: Vec<Relay> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = |field: &str| format!("{key}[{i}].{field}");
        let name_ok = !e.name.is_empty()
            && e.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && e.name != "."
            && e.name != "..";
        if !name_ok {
            errors.push(CompileError::new(
                at("name"),
                "must be letters, digits, `-`, `_` or `.` (it is a path segment)".into(),
            ));
        } else if names.contains(&e.name.as_str()) {
            errors.push(CompileError::new(
                at("name"),
                format!("`{}` is already a relay", e.name),
            ));
        }
        match parse_target(&e.target) {
            Ok((scheme, authority, base)) => list.push(Relay {
                name: e.name.as_str().into(),
                scheme,
                authority,
                base,
            }),
            Err(message) => errors.push(CompileError::new(at("target"), message.into())),
        }
        names.push(&e.name);
    }
    if errors.is_empty() {
        Ok(Relays { list })
    } else {
        Err(errors)
    }
}

fn parse_target(text: &str) -> Result<(Scheme, crate::target::Authority, String), &'static str> {
    const SHAPE: &str = "must be an http:// or https:// URL: scheme://host[:port][/base]";
    let uri: http::Uri = text.parse().map_err(|_| SHAPE)?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        _ => return Err(SHAPE),
    };
    let authority = uri.authority().ok_or(SHAPE)?.as_str();
    if authority.contains('@') {
        return Err("must not carry userinfo: credentials come from the credentials section");
    }
    let default = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let authority = parse_authority(authority.as_bytes(), Some(default)).map_err(|_| SHAPE)?;
    if uri.query().is_some() || text.contains('#') {
        return Err("must not have a query or fragment: only a base path");
    }
    let base = uri.path().trim_end_matches('/');
    if escapes(base.as_bytes()) {
        return Err("has a base path with `.`/`..` segments or encoded slashes");
    }
    Ok((scheme, authority, base.to_string()))
}

impl Relays {
    /// Each relay's index and target authority, in config order.
    pub fn targets(&self) -> impl Iterator<Item = (usize, &crate::target::Authority)> {
        self.list.iter().map(|r| &r.authority).enumerate()
    }

    /// Maps `raw_target` (`/relay/{name}/{path}?{query}`) through its relay: `None` when it is
    /// not a relay path, [`Reason::RelayUnknown`] for a name no relay has, and
    /// [`Reason::RelayPathInvalid`] for a path that could climb out of the target's base
    /// (`.`/`..` segments, raw or encoded, encoded `/` or `\`, broken escapes).
    pub fn route(&self, raw_target: &[u8]) -> Option<Result<Routed, Reason>> {
        let rest = raw_target.strip_prefix(b"/relay")?;
        let rest = match rest.first() {
            None | Some(b'?') => return Some(Err(Reason::RelayUnknown)),
            Some(b'/') => &rest[1..],
            Some(_) => return None,
        };
        let end = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?'))
            .unwrap_or(rest.len());
        let (name, rest) = rest.split_at(end);
        let Some(relay) = self.list.iter().find(|r| r.name.as_bytes() == name) else {
            return Some(Err(Reason::RelayUnknown));
        };
        let (path, query) = match rest.iter().position(|&b| b == b'?') {
            Some(q) => (&rest[..q], Some(&rest[q..])),
            None => (rest, None),
        };
        if escapes(path) {
            return Some(Err(Reason::RelayPathInvalid));
        }
        let Ok(path) = std::str::from_utf8(path) else {
            return Some(Err(Reason::RelayPathInvalid));
        };
        let mut upstream = format!("{}{path}", relay.base);
        if upstream.is_empty() {
            upstream.push('/');
        }
        if let Some(q) = query {
            upstream.push_str(&String::from_utf8_lossy(q));
        }
        Some(Ok(Routed {
            name: relay.name.clone(),
            target: Target {
                scheme: relay.scheme,
                authority: relay.authority.clone(),
                path: upstream,
            },
        }))
    }
}

/// Whether a path could resolve above where it starts: a `.` or `..` segment (raw, or
/// percent-encoded once or twice), an encoded `/` or `\` (once or twice), a raw `\`, or a `%`
/// that starts no escape.
fn escapes(path: &[u8]) -> bool {
    if path.contains(&b'\\') {
        return true;
    }
    path.split(|&b| b == b'/').any(|segment| {
        let Some(once) = percent_decode(segment) else {
            return true;
        };
        let Some(twice) = percent_decode(&once) else {
            return true;
        };
        [&once, &twice].iter().any(|s| {
            s.as_slice() == b"." || s.as_slice() == b".." || s.contains(&b'/') || s.contains(&b'\\')
        })
    })
}

/// One percent-decoding of `s`; `None` when a `%` starts no two-hex-digit escape.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relays(yaml: &str) -> Relays {
        let entries: Vec<RelayConfig> = serde_yaml::from_str(yaml).unwrap();
        compile(&entries, "relays").unwrap()
    }

    fn errors(yaml: &str) -> Vec<String> {
        let entries: Vec<RelayConfig> = serde_yaml::from_str(yaml).unwrap();
        compile(&entries, "relays")
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn upstream(r: &Relays, raw: &str) -> Result<String, Reason> {
        r.route(raw.as_bytes())
            .expect("a relay path")
            .map(|routed| routed.target.path)
    }

    #[test]
    fn a_relay_path_maps_onto_the_targets_base_with_its_query() {
        let r = relays(
            "- { name: hostapi, target: 'https://api.internal.test:8443/base' }\n- { name: root, target: 'http://plain.test' }\n- { name: slash, target: 'https://s.test/v1/' }\n",
        );
        assert_eq!(
            upstream(&r, "/relay/hostapi/x/y?q=1"),
            Ok("/base/x/y?q=1".into())
        );
        assert_eq!(upstream(&r, "/relay/hostapi"), Ok("/base".into()));
        assert_eq!(upstream(&r, "/relay/hostapi/"), Ok("/base/".into()));
        assert_eq!(upstream(&r, "/relay/hostapi?a=b"), Ok("/base?a=b".into()));
        assert_eq!(upstream(&r, "/relay/root"), Ok("/".into()));
        assert_eq!(upstream(&r, "/relay/root/a%20b"), Ok("/a%20b".into()));
        assert_eq!(upstream(&r, "/relay/slash/models"), Ok("/v1/models".into()));
        let routed = r.route(b"/relay/hostapi/x").unwrap().unwrap();
        assert_eq!(&*routed.name, "hostapi");
        assert_eq!(routed.target.scheme, Scheme::Https);
        assert_eq!(
            routed.target.authority.to_string(),
            "api.internal.test:8443"
        );
        let root = r.route(b"/relay/root/").unwrap().unwrap();
        assert_eq!(
            (root.target.scheme, root.target.authority.port),
            (Scheme::Http, 80)
        );
    }

    #[test]
    fn unknown_names_and_other_paths_are_told_apart() {
        let r = relays("- { name: hostapi, target: 'https://a.test/base' }\n");
        for raw in [
            "/relay/nope/x",
            "/relay/",
            "/relay",
            "/relay?x=1",
            "/relay/HOSTAPI/x",
        ] {
            assert_eq!(upstream(&r, raw), Err(Reason::RelayUnknown), "{raw}");
        }
        assert!(r.route(b"/relayed/x").is_none());
        assert!(r.route(b"/other").is_none());
        assert!(served_locally(b"/relay/x") && served_locally(b"/_warden/aws/credentials"));
        assert!(!served_locally(b"/relayed") && !served_locally(b"/"));
    }

    #[test]
    fn paths_that_could_climb_out_of_the_base_are_refused() {
        let r = relays("- { name: h, target: 'https://a.test/base' }\n");
        for raw in [
            "/relay/h/../admin",
            "/relay/h/x/../../admin",
            "/relay/h/./x",
            "/relay/h/%2e%2e/admin",
            "/relay/h/%2E./admin",
            "/relay/h/.%2e",
            "/relay/h/%252e%252e/admin",
            "/relay/h/a%2fb",
            "/relay/h/a%2Fb",
            "/relay/h/a%5cb",
            "/relay/h/a%255cb",
            "/relay/h/a\\..\\b",
            "/relay/h/a%zz",
            "/relay/h/a%2",
        ] {
            assert_eq!(upstream(&r, raw), Err(Reason::RelayPathInvalid), "{raw}");
        }
        // Dots inside a segment and in the query are ordinary text.
        assert_eq!(upstream(&r, "/relay/h/a..b/.x"), Ok("/base/a..b/.x".into()));
        assert_eq!(
            upstream(&r, "/relay/h/x?p=../y"),
            Ok("/base/x?p=../y".into())
        );
    }

    #[test]
    fn bad_entries_are_named_by_key() {
        let errs = errors(
            "- { name: 'a/b', target: 'https://a.test' }\n- { name: ok, target: 'ftp://a.test' }\n- { name: ok, target: 'https://u:p@a.test/' }\n- { name: q, target: 'https://a.test/x?y=1' }\n- { name: d, target: 'https://a.test/x/../y' }\n- { name: '', target: 'https://a.test' }\n",
        );
        assert_eq!(errs.len(), 7, "{errs:?}");
        assert!(errs[0].starts_with("relays[0].name"));
        assert!(errs[1].starts_with("relays[1].target"));
        assert!(errs[2].starts_with("relays[2].name") && errs[2].contains("already"));
        assert!(errs[3].starts_with("relays[2].target") && errs[3].contains("userinfo"));
        assert!(!errs[3].contains("u:p"));
        assert!(errs[4].starts_with("relays[3].target") && errs[4].contains("query"));
        assert!(errs[5].starts_with("relays[4].target"));
        assert!(errs[6].starts_with("relays[5].name"));
    }
}
