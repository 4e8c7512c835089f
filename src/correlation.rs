//! Session correlation: requests to configured targets carry a session id and a sequence
//! number, so an audit trail on the other side can be joined with warden's log. The number is
//! allocated once per matching request in `request_filter` — before policy, so denied requests
//! consume one too — and the same number is set by `upstream_request_filter` and written in the
//! canonical line (`seq`). Numbers are unique and dense under concurrency.

use crate::compile_error::{CompileError, CompileErrors};
use crate::policy::{normalize_path, HostPattern, PathGlob};
use crate::target::Authority;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `correlation` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationConfig {
    /// `auto` (random at start-up) or a fixed string.
    #[serde(default = "auto")]
    pub session_id: String,
    /// Header carrying the session id.
    #[serde(default = "default_session_header")]
    pub session_header: String,
    /// Header carrying the sequence number.
    #[serde(default = "default_sequence_header")]
    pub sequence_header: String,
    /// Which requests are correlated.
    pub targets: Vec<TargetConfig>,
}

fn auto() -> String {
    "auto".into()
}

fn default_session_header() -> String {
    "X-Warden-Session-Id".into()
}

fn default_sequence_header() -> String {
    "X-Warden-Sequence-Number".into()
}

/// One `correlation.targets` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Host pattern (optional port).
    pub host: HostPattern,
    /// Path pattern; default `/**`.
    #[serde(default)]
    pub path: Option<PathGlob>,
}

/// The compiled section: headers, targets, and the session state.
#[derive(Debug)]
pub struct Correlation {
    /// `session_id` as written, to tell whether a reload keeps the session.
    session_config: String,
    state: Arc<SessionState>,
    session_header: HeaderName,
    sequence_header: HeaderName,
    targets: Vec<(HostPattern, Option<PathGlob>)>,
}

/// The session id and the next sequence number: per start, kept across reloads.
#[derive(Debug)]
struct SessionState {
    session: HeaderValue,
    next: AtomicU64,
}

impl CorrelationConfig {
    /// Compiles the section under config key `key`; every bad field is reported.
    pub fn compile(&self, key: &str) -> Result<Correlation, CompileErrors> {
        let mut errors = Vec::new();
        let mut header = |field: &str, v: &str| {
            HeaderName::from_bytes(v.as_bytes())
                .map_err(|_| {
                    errors.push(CompileError::new(
                        format!("{key}.{field}"),
                        format!("`{v}` is not a header name"),
                    ))
                })
                .ok()
        };
        let session_header = header("session_header", &self.session_header);
        let sequence_header = header("sequence_header", &self.sequence_header);
        let id = if self.session_id == "auto" {
            uuid::Uuid::new_v4().to_string()
        } else {
            self.session_id.clone()
        };
        let session = HeaderValue::from_str(&id).ok().filter(|_| !id.is_empty());
        if session.is_none() {
            errors.push(CompileError::new(
                format!("{key}.session_id"),
                "is not a valid header value".to_string(),
            ));
        }
        if self.targets.is_empty() {
            errors.push(CompileError::new(
                format!("{key}.targets"),
                "lists no target".into(),
            ));
        }
        let (Some(session), Some(session_header), Some(sequence_header)) =
            (session, session_header, sequence_header)
        else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Correlation {
            session_config: self.session_id.clone(),
            state: Arc::new(SessionState {
                session,
                next: AtomicU64::new(1),
            }),
            session_header,
            sequence_header,
            targets: self
                .targets
                .iter()
                .map(|t| (t.host.clone(), t.path.clone()))
                .collect(),
        })
    }
}

impl Correlation {
    /// The next sequence number if a request to `dest` with `path` is a target, else `None`
    /// (and nothing is allocated).
    pub fn allocate(&self, dest: &Authority, path: &str) -> Option<u64> {
        if !self.has_for(dest) {
            return None;
        }
        let segments = normalize_path(path);
        let hit = self.targets.iter().any(|(host, glob)| {
            host.matches(dest) && glob.as_ref().is_none_or(|g| g.matches(&segments))
        });
        hit.then(|| self.state.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Keeps `previous`'s session (id and numbering) when the session is configured the same
    /// way: `auto` means one random id per start, not per reload.
    pub fn continue_from(&mut self, previous: &Correlation) {
        if self.session_config == previous.session_config {
            self.state = previous.state.clone();
        }
    }

    /// Whether a target names `dest` (its tunnels must be intercepted).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.targets.iter().any(|(host, _)| host.matches(dest))
    }

    /// The two headers to set for sequence number `seq`, overwriting client values.
    pub fn headers(&self, seq: u64) -> [(HeaderName, HeaderValue); 2] {
        [
            (self.session_header.clone(), self.state.session.clone()),
            (self.sequence_header.clone(), HeaderValue::from(seq)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corr(yaml: &str) -> Correlation {
        serde_yaml::from_str::<CorrelationConfig>(yaml)
            .unwrap()
            .compile("correlation")
            .unwrap()
    }

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[test]
    fn only_targets_allocate_and_numbers_are_dense() {
        let c = corr("targets: [{ host: coder.test, path: /api/v2/aibridge/** }]");
        assert_eq!(
            c.allocate(&dest("other.test:443"), "/api/v2/aibridge/x"),
            None
        );
        assert_eq!(c.allocate(&dest("coder.test:443"), "/api/v1"), None);
        assert_eq!(
            c.allocate(&dest("coder.test:443"), "/api/v2/aibridge/x"),
            Some(1)
        );
        assert_eq!(
            c.allocate(&dest("coder.test:443"), "/api/v2/aibridge"),
            Some(2)
        );
        let [(sh, sv), (qh, qv)] = c.headers(7);
        assert_eq!(sh.as_str(), "x-warden-session-id");
        assert_eq!(sv.to_str().unwrap().len(), 36, "auto: a random UUID");
        assert_eq!(
            (qh.as_str(), qv.to_str().unwrap()),
            ("x-warden-sequence-number", "7")
        );
    }

    #[test]
    fn fixed_ids_and_custom_headers() {
        let c = corr(
            "session_id: run-42\nsession_header: X-Session\nsequence_header: X-Seq\ntargets: [{ host: '*.test' }]",
        );
        assert_eq!(c.allocate(&dest("a.test:443"), "/anything"), Some(1));
        let [(sh, sv), (qh, _)] = c.headers(1);
        assert_eq!(
            (sh.as_str(), sv.to_str().unwrap(), qh.as_str()),
            ("x-session", "run-42", "x-seq")
        );
    }

    #[test]
    fn a_reload_keeps_the_session_and_its_numbering() {
        let old = corr("targets: [{ host: a.test }]");
        assert_eq!(old.allocate(&dest("a.test:443"), "/"), Some(1));
        let mut new = corr("targets: [{ host: '*.test' }]");
        new.continue_from(&old);
        assert_eq!(new.allocate(&dest("b.test:443"), "/"), Some(2));
        assert_eq!(new.headers(2)[0].1, old.headers(2)[0].1, "same session id");
        let mut fixed = corr("session_id: other\ntargets: [{ host: a.test }]");
        fixed.continue_from(&old);
        assert_eq!(
            fixed.allocate(&dest("a.test:443"), "/"),
            Some(1),
            "a new session"
        );
    }

    #[test]
    fn bad_sections_name_their_key() {
        let bad = |y: &str| {
            serde_yaml::from_str::<CorrelationConfig>(y)
                .unwrap()
                .compile("correlation")
                .unwrap_err()[0]
                .key
                .clone()
        };
        assert_eq!(bad("targets: []"), "correlation.targets");
        assert_eq!(
            bad("session_header: 'a b'\ntargets: [{ host: a.test }]"),
            "correlation.session_header"
        );
        assert_eq!(
            bad("session_id: ''\ntargets: [{ host: a.test }]"),
            "correlation.session_id"
        );
    }
}
