//! L7 rules (`network.rules`): parsing `"allow|deny METHODS HOSTGLOB PATHGLOB"` and matching
//! one against a request's method, destination and normalised path segments.

use super::pattern::{HostPattern, PathGlob};
use crate::target::Authority;
use serde::Deserialize;

/// `network.rules_case`: how rule paths compare with request paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesCase {
    /// `/Admin` and `/admin` are different paths, as RFC 3986 and most origins have it.
    #[default]
    Sensitive,
    /// Both sides are case-folded before matching, for origins that fold case (IIS, Windows
    /// file servers, case-insensitive routers).
    Insensitive,
}

/// One L7 rule: `"allow|deny METHODS HOSTGLOB PATHGLOB"`, e.g.
/// `"allow GET,HEAD api.github.com /repos/**"`. METHODS is a comma list or `*`; PATHGLOB
/// segments are literals, `*` (one segment) or a final `**` (the rest, including nothing).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Rule {
    /// allow or deny.
    pub(super) allow: bool,
    /// `None`: any method.
    methods: Option<Vec<String>>,
    /// The destinations it applies to.
    pub(super) host: HostPattern,
    path: PathGlob,
    /// The rule as written, for the log.
    pub(super) source: String,
}

impl TryFrom<String> for Rule {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        let invalid = |why: &str| format!("`{source}` is not a valid rule: {why}");
        let parts: Vec<&str> = source.split_whitespace().collect();
        let [action, methods, host, path] = parts[..] else {
            return Err(invalid("expected \"allow|deny METHODS HOSTGLOB PATHGLOB\""));
        };
        let allow = match action {
            "allow" => true,
            "deny" => false,
            _ => return Err(invalid("the action is allow or deny")),
        };
        let methods = if methods == "*" {
            None
        } else {
            let list: Vec<String> = methods.split(',').map(str::to_ascii_uppercase).collect();
            if list
                .iter()
                .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(invalid("METHODS is `*` or a comma list like GET,HEAD"));
            }
            Some(list)
        };
        let host = HostPattern::try_from(host.to_string()).map_err(|e| invalid(&e))?;
        let path = PathGlob::try_from(path.to_string()).map_err(|e| invalid(&e))?;
        Ok(Rule {
            allow,
            methods,
            host,
            path,
            source,
        })
    }
}

impl Rule {
    /// The rule as compiled under `case`.
    pub(super) fn folded(&self, case: RulesCase) -> Rule {
        match case {
            RulesCase::Sensitive => self.clone(),
            RulesCase::Insensitive => Rule {
                path: self.path.folded(),
                ..self.clone()
            },
        }
    }

    #[inline]
    pub(super) fn matches(&self, method: &str, dest: &Authority, segments: &[String]) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self.host.matches(dest)
            && self.path.matches(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_rules_are_refused_naming_the_rule() {
        for bad in [
            "allow GET api.github.com",
            "permit GET api.github.com /",
            "allow G-T api.github.com /",
            "allow GET *github.com /",
            "allow GET api.github.com repos",
            "allow GET api.github.com /**/x",
            "allow GET api.github.com /re*",
        ] {
            let err = Rule::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
