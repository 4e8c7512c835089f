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
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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

/// The compiled section: headers and targets, and which session it numbers in.
#[derive(Debug)]
pub struct Correlation {
    key: SessionKey,
    /// The fixed session id; `None` for `auto`.
    fixed: Option<HeaderValue>,
    session_header: HeaderName,
    sequence_header: HeaderName,
    targets: Vec<(HostPattern, Option<PathGlob>)>,
}

/// Which session a section numbers in: its owner (a client with its own section, or the top
/// level) and `session_id` as written. A reload that keeps both keeps the session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    owner: Option<Arc<str>>,
    session_config: String,
}

/// The session id and the next sequence number of one session.
#[derive(Debug)]
struct SessionState {
    session: HeaderValue,
    next: AtomicU64,
}

/// A sequence number allocated to a request, and the session it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlated {
    /// The sequence number.
    pub seq: u64,
    /// The session id.
    pub session: HeaderValue,
}

/// Every session in force: per start, kept across reloads (runtime state, not config).
#[derive(Debug, Default)]
pub struct Sessions {
    states: RwLock<HashMap<SessionKey, Arc<SessionState>>>,
}

impl Sessions {
    fn state(&self, c: &Correlation) -> Arc<SessionState> {
        // A poisoned lock only means another request panicked holding it; the map is intact.
        if let Some(s) = self
            .states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.key)
        {
            return s.clone();
        }
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        states
            .entry(c.key.clone())
            .or_insert_with(|| {
                let session = c.fixed.clone().unwrap_or_else(|| {
                    // A UUID is always a valid header value.
                    HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                        .unwrap_or(HeaderValue::from_static("auto"))
                });
                Arc::new(SessionState {
                    session,
                    next: AtomicU64::new(1),
                })
            })
            .clone()
    }

    /// Ends every session no section in `keep` numbers in (after a reload).
    pub fn retain<'a>(&self, keep: impl IntoIterator<Item = &'a Correlation>) {
        let keep: Vec<&SessionKey> = keep.into_iter().map(|c| &c.key).collect();
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keep.contains(&k));
    }
}

impl CorrelationConfig {
    /// Compiles the section under config key `key` for `owner` (the client whose own section
    /// it is; `None` at the top level); every bad field is reported.
    pub fn compile(&self, key: &str, owner: Option<&str>) -> Result<Correlation, CompileErrors> {
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
        let id = &self.session_id;
        let auto = id == "auto";
        let session = HeaderValue::from_str(id).ok().filter(|_| !id.is_empty());
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
            key: SessionKey {
                owner: owner.map(Arc::from),
                session_config: self.session_id.clone(),
            },
            fixed: (!auto).then_some(session),
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
    /// The next sequence number in `sessions` if a request to `dest` with `path` is a
    /// target, else `None` (and nothing is allocated).
    pub fn allocate(
        &self,
        sessions: &Sessions,
        dest: &Authority,
        path: &str,
    ) -> Option<Correlated> {
        if !self.has_for(dest) {
            return None;
        }
        let segments = normalize_path(path);
        let hit = self.targets.iter().any(|(host, glob)| {
            host.matches(dest) && glob.as_ref().is_none_or(|g| g.matches(&segments))
        });
        if !hit {
            return None;
        }
        let state = sessions.state(self);
        Some(Correlated {
            seq: state.next.fetch_add(1, Ordering::Relaxed),
            session: state.session.clone(),
        })
    }

    /// Whether a target names `dest` (its tunnels must be intercepted).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.targets.iter().any(|(host, _)| host.matches(dest))
    }

    /// The two headers to set for an allocated number, overwriting client values.
    pub fn headers(&self, c: &Correlated) -> [(HeaderName, HeaderValue); 2] {
        [
            (self.session_header.clone(), c.session.clone()),
            (self.sequence_header.clone(), HeaderValue::from(c.seq)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corr(yaml: &str) -> Correlation {
        serde_yaml::from_str::<CorrelationConfig>(yaml)
            .unwrap()
            .compile("correlation", None)
            .unwrap()
    }

    fn dest(s: &str) -> Authority {
        crate::target::parse_authority(s.as_bytes(), None).unwrap()
    }

    #[test]
    fn only_targets_allocate_and_numbers_are_dense() {
        let c = corr("targets: [{ host: coder.test, path: /api/v2/aibridge/** }]");
        let s = Sessions::default();
        let seq = |host: &str, path: &str| c.allocate(&s, &dest(host), path).map(|a| a.seq);
        assert_eq!(seq("other.test:443", "/api/v2/aibridge/x"), None);
        assert_eq!(seq("coder.test:443", "/api/v1"), None);
        assert_eq!(seq("coder.test:443", "/api/v2/aibridge/x"), Some(1));
        let second = c.allocate(&s, &dest("coder.test:443"), "/api/v2/aibridge");
        assert_eq!(second.as_ref().map(|a| a.seq), Some(2));
        let seven = Correlated {
            seq: 7,
            ..second.unwrap()
        };
        let [(sh, sv), (qh, qv)] = c.headers(&seven);
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
        let s = Sessions::default();
        let one = c.allocate(&s, &dest("a.test:443"), "/anything").unwrap();
        assert_eq!(one.seq, 1);
        let [(sh, sv), (qh, _)] = c.headers(&one);
        assert_eq!(
            (sh.as_str(), sv.to_str().unwrap(), qh.as_str()),
            ("x-session", "run-42", "x-seq")
        );
    }

    #[test]
    fn a_reload_keeps_the_session_and_its_numbering() {
        let s = Sessions::default();
        let old = corr("targets: [{ host: a.test }]");
        let first = old.allocate(&s, &dest("a.test:443"), "/").unwrap();
        assert_eq!(first.seq, 1);
        // The recompiled section, configured the same way, numbers on in the same session.
        let new = corr("targets: [{ host: '*.test' }]");
        s.retain([&new]);
        let next = new.allocate(&s, &dest("b.test:443"), "/").unwrap();
        assert_eq!((next.seq, &next.session), (2, &first.session));
        let fixed = corr("session_id: other\ntargets: [{ host: a.test }]");
        s.retain([&fixed]);
        let other = fixed.allocate(&s, &dest("a.test:443"), "/").unwrap();
        assert_eq!((other.seq, other.session.to_str().unwrap()), (1, "other"));
        // Back to `auto`: the first session ended with the reload that dropped it.
        s.retain([&new]);
        let fresh = new.allocate(&s, &dest("a.test:443"), "/").unwrap();
        assert_eq!(fresh.seq, 1);
        assert_ne!(fresh.session, first.session);
        // A client's own section is its own session, even configured like the top level's.
        let own = serde_yaml::from_str::<CorrelationConfig>("targets: [{ host: a.test }]")
            .unwrap()
            .compile("correlation", Some("a"))
            .unwrap();
        assert_eq!(own.allocate(&s, &dest("a.test:443"), "/").unwrap().seq, 1);
    }

    #[test]
    fn bad_sections_name_their_key() {
        let bad = |y: &str| {
            serde_yaml::from_str::<CorrelationConfig>(y)
                .unwrap()
                .compile("correlation", None)
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
