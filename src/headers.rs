//! Header rules: per destination, headers set on (overwritten or added) and removed from the
//! upstream request. Called by `upstream_request_filter`, before credential injection so a
//! credential always has the last word on its own header.

use crate::compile_error::{CompileError, CompileErrors};
use crate::policy::HostPattern;
use crate::target::Authority;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One `headers` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRuleConfig {
    /// The destinations it applies to.
    pub host: HostPattern,
    /// Headers to set, overwriting any the client sent.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to drop.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct HeaderRule {
    host: HostPattern,
    /// Set after removal.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed first.
    pub remove: Vec<HeaderName>,
}

/// The compiled `headers` section.
#[derive(Debug, Default)]
pub struct HeaderRules {
    list: Vec<HeaderRule>,
}

/// Compiles `entries` under config key `key`; names and values are checked here, once, and
/// every bad one is reported.
pub fn compile(entries: &[HeaderRuleConfig], key: &str) -> Result<HeaderRules, CompileErrors> {
    let mut errors = Vec::new();
    let mut list = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match set_and_remove(&e.set, &e.remove, &format!("{key}[{i}]"), "set", "remove") {
            Ok((set, remove)) => list.push(HeaderRule {
                host: e.host.clone(),
                set,
                remove,
            }),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(HeaderRules { list })
    } else {
        Err(errors)
    }
}

/// Headers to set (name, value) and names to remove, checked.
pub(crate) type SetAndRemove = (Vec<(HeaderName, HeaderValue)>, Vec<HeaderName>);

/// Header lists to set and to remove, as written under `entry.set_field` and
/// `entry.remove_field`, checked once; errors name the key, all of them. Shared with
/// `transforms`.
pub(crate) fn set_and_remove(
    set: &BTreeMap<String, String>,
    remove: &[String],
    entry: &str,
    set_field: &str,
    remove_field: &str,
) -> Result<SetAndRemove, CompileErrors> {
    let mut errors = Vec::new();
    let name = |field: &str, n: &str, errors: &mut CompileErrors| {
        let parsed = HeaderName::from_bytes(n.as_bytes()).ok();
        if parsed.is_none() {
            errors.push(CompileError::new(
                format!("{entry}.{field}"),
                format!("`{n}` is not a header name"),
            ));
        }
        parsed
    };
    let mut pairs = Vec::new();
    for (written, v) in set {
        let n = name(set_field, written, &mut errors);
        let value = HeaderValue::from_str(v).ok();
        if value.is_none() {
            errors.push(CompileError::new(
                format!("{entry}.{set_field}.{written}"),
                "is not a valid header value".to_string(),
            ));
        }
        if let (Some(n), Some(v)) = (n, value) {
            pairs.push((n, v));
        }
    }
    let names: Vec<HeaderName> = remove
        .iter()
        .filter_map(|n| name(remove_field, n, &mut errors))
        .collect();
    if errors.is_empty() {
        Ok((pairs, names))
    } else {
        Err(errors)
    }
}

impl HeaderRules {
    /// Every rule naming `dest`, in config order.
    pub fn for_dest<'a>(&'a self, dest: &'a Authority) -> impl Iterator<Item = &'a HeaderRule> {
        self.list.iter().filter(move |r| r.host.matches(dest))
    }

    /// Whether a rule names `dest` (its tunnels must be intercepted for the rule to apply).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.for_dest(dest).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_their_hosts_and_bad_entries_name_their_key() {
        let entries: Vec<HeaderRuleConfig> = serde_yaml::from_str(
            "- { host: api.test, set: { anthropic-beta: tools }, remove: [x-debug] }",
        )
        .unwrap();
        let rules = compile(&entries, "headers").unwrap();
        let dest = crate::target::parse_authority(b"api.test:443", None).unwrap();
        let r: Vec<_> = rules.for_dest(&dest).collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].set[0].0.as_str(), "anthropic-beta");
        assert_eq!(r[0].remove[0].as_str(), "x-debug");
        let other = crate::target::parse_authority(b"other.test:443", None).unwrap();
        assert!(!rules.has_for(&other));
        let bad: Vec<HeaderRuleConfig> =
            serde_yaml::from_str("- { host: a.test, set: { 'bad name': x } }").unwrap();
        assert_eq!(
            compile(&bad, "headers").unwrap_err()[0].key,
            "headers[0].set"
        );
        let bad: Vec<HeaderRuleConfig> =
            serde_yaml::from_str("- { host: a.test, set: { x-a: \"line\\nbreak\" } }").unwrap();
        assert_eq!(
            compile(&bad, "headers").unwrap_err()[0].key,
            "headers[0].set.x-a"
        );
    }
}
