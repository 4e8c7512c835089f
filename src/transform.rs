//! Response transformers (`transforms`): per destination, headers set on and removed from the
//! response, and `replace_body` regex rules applied to text bodies as they stream, with a
//! bounded carry-over window. Applied in `upstream_response_filter` (heads) and
//! `response_body_filter` (bodies), and by the LLM exchange for the responses it writes.

use crate::compile_error::{CompileError, CompileErrors};
use crate::policy::HostPattern;
use crate::target::Authority;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use regex::bytes::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How far behind the stream a body rule may look: a match may span at most this many bytes
/// beyond a chunk boundary to be found whole. Longer matches straddling a boundary are missed.
pub const WINDOW: usize = 4096;

/// One `transforms` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The destinations whose responses it changes.
    pub host: HostPattern,
    /// Response headers to set (overwriting).
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// Response headers to drop.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// Regex replacements on text bodies, applied in order.
    #[serde(default)]
    pub replace_body: Vec<ReplaceConfig>,
}

/// One `replace_body` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceConfig {
    /// Regex to find.
    pub pattern: String,
    /// Replacement; `$1`, `${name}` refer to groups.
    pub with: String,
}

/// A compiled entry.
#[derive(Debug)]
pub struct Transform {
    host: HostPattern,
    /// Set after removal.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Removed first.
    pub remove_headers: Vec<HeaderName>,
    /// Body rules.
    pub replace_body: Vec<(Regex, Vec<u8>)>,
}

/// The compiled `transforms` section.
#[derive(Debug, Default)]
pub struct Transforms {
    list: Vec<Arc<Transform>>,
}

/// Compiles `entries` under config key `key`; every bad field is reported.
pub fn compile(entries: &[TransformConfig], key: &str) -> Result<Transforms, CompileErrors> {
    let mut errors = Vec::new();
    let mut list = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let headers = crate::headers::set_and_remove(
            &e.set_headers,
            &e.remove_headers,
            &format!("{key}[{i}]"),
            "set_headers",
            "remove_headers",
        )
        .map_err(|e| errors.extend(e));
        let mut replace_body = Vec::new();
        for (j, r) in e.replace_body.iter().enumerate() {
            let at = format!("{key}[{i}].replace_body[{j}].pattern");
            match regex::bytes::RegexBuilder::new(&r.pattern)
                .size_limit(1 << 20)
                .build()
            {
                Err(err) => errors.push(CompileError::new(at, format!("is not a regex: {err}"))),
                Ok(re) if re.is_match(b"") => errors.push(CompileError::new(
                    at,
                    "matches the empty string; it would insert text everywhere".to_string(),
                )),
                Ok(re) => replace_body.push((re, r.with.clone().into_bytes())),
            }
        }
        if let Ok((set_headers, remove_headers)) = headers {
            list.push(Arc::new(Transform {
                host: e.host.clone(),
                set_headers,
                remove_headers,
                replace_body,
            }));
        }
    }
    if errors.is_empty() {
        Ok(Transforms { list })
    } else {
        Err(errors)
    }
}

impl Transforms {
    /// Every entry naming `dest`, in config order.
    pub fn for_dest(&self, dest: &Authority) -> Vec<Arc<Transform>> {
        self.list
            .iter()
            .filter(|t| t.host.matches(dest))
            .cloned()
            .collect()
    }

    /// Whether an entry names `dest` (its tunnels are intercepted).
    pub fn has_for(&self, dest: &Authority) -> bool {
        self.list.iter().any(|t| t.host.matches(dest))
    }
}

/// Whether a response of this content type is text that body rules may change.
pub fn is_text(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/x-ndjson"
                | "application/x-www-form-urlencoded"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
}

/// One regex rule applied to a stream: bytes that might still be part of a match wait, at most
/// [`WINDOW`] of them (twice that while a match is growing).
#[derive(Debug)]
struct Stage {
    re: Regex,
    with: Vec<u8>,
    buf: BytesMut,
}

impl Stage {
    fn feed(&mut self, input: &[u8], end: bool) -> Vec<u8> {
        self.buf.extend_from_slice(input);
        let len = self.buf.len();
        let cut = if end { len } else { len.saturating_sub(WINDOW) };
        let mut out = Vec::with_capacity(len);
        let mut last = 0;
        let mut stop = cut;
        for caps in self.re.captures_iter(&self.buf) {
            let Some(m) = caps.get(0) else { continue };
            if m.start() >= cut || (m.end() > cut && !end) {
                // Could still grow, or not yet be whole: decide when more has arrived, unless
                // waiting would hold more than the bound.
                if len - m.start() <= 2 * WINDOW || m.start() >= cut {
                    stop = m.start().max(last);
                    break;
                }
            }
            out.extend_from_slice(&self.buf[last..m.start()]);
            caps.expand(&self.with, &mut out);
            last = m.end();
            stop = stop.max(last);
        }
        let stop = stop.max(last).min(len);
        out.extend_from_slice(&self.buf[last..stop]);
        let _ = self.buf.split_to(stop);
        out
    }
}

/// Applies body rules, in order, to one response body as it streams.
#[derive(Debug)]
pub struct BodyRewriter {
    stages: Vec<Stage>,
}

impl BodyRewriter {
    /// A rewriter for every body rule of `transforms`, or `None` when they have none.
    pub fn new(transforms: &[Arc<Transform>]) -> Option<Self> {
        let stages: Vec<Stage> = transforms
            .iter()
            .flat_map(|t| t.replace_body.iter())
            .map(|(re, with)| Stage {
                re: re.clone(),
                with: with.clone(),
                buf: BytesMut::new(),
            })
            .collect();
        (!stages.is_empty()).then_some(BodyRewriter { stages })
    }

    /// Feeds one chunk; returns what may be sent now. At `end` everything left is sent.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let mut data = chunk.to_vec();
        for stage in &mut self.stages {
            data = stage.feed(&data, end);
        }
        Bytes::from(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rewriter(yaml: &str) -> BodyRewriter {
        let entries: Vec<TransformConfig> = serde_yaml::from_str(yaml).unwrap();
        let t = compile(&entries, "transforms").unwrap();
        BodyRewriter::new(&t.list).unwrap()
    }

    fn run(r: &mut BodyRewriter, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&r.feed(c, i + 1 == chunks.len()));
        }
        out
    }

    const RULES: &str = "- host: a.test\n  replace_body:\n    - { pattern: 'secret-[0-9]+', with: '[redacted]' }\n    - { pattern: '(?P<w>world)', with: 'big ${w}' }\n";

    #[test]
    fn replaces_across_chunks_and_expands_groups() {
        let mut r = rewriter(RULES);
        let out = run(&mut r, &[b"hello wor", b"ld, secret-12", b"34 ok"]);
        assert_eq!(out, b"hello big world, [redacted] ok");
    }

    #[test]
    fn bodies_without_matches_stream_with_a_bounded_delay() {
        let mut r = rewriter(RULES);
        let big = vec![b'x'; 3 * WINDOW];
        let out = r.feed(&big, false);
        // Each of the two rules holds back at most one window.
        assert_eq!(out.len(), WINDOW, "only the windows are held back");
        assert_eq!(r.feed(b"", true).len(), 2 * WINDOW);
    }

    #[test]
    fn bad_rules_name_their_key_and_text_types_are_recognised() {
        let bad: Vec<TransformConfig> =
            serde_yaml::from_str("- { host: a.test, replace_body: [{ pattern: 'a*', with: b }] }")
                .unwrap();
        assert_eq!(
            compile(&bad, "transforms").unwrap_err()[0].key,
            "transforms[0].replace_body[0].pattern"
        );
        let bad: Vec<TransformConfig> =
            serde_yaml::from_str("- { host: a.test, remove_headers: ['bad name'] }").unwrap();
        assert_eq!(
            compile(&bad, "transforms").unwrap_err()[0].key,
            "transforms[0].remove_headers"
        );
        assert!(is_text(Some(b"text/html; charset=utf-8")));
        assert!(is_text(Some(b"application/problem+json")));
        assert!(!is_text(Some(b"image/png")));
        assert!(!is_text(None));
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_result(text in "[a-z0-9 -]{0,300}", cuts in proptest::collection::vec(0..300usize, 0..8)) {
            let text = format!("{text} secret-42 world {text}");
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&bytes[last..c]); last = c; }
            chunks.push(&bytes[last..]);
            let whole = run(&mut rewriter(RULES), &[bytes]);
            prop_assert_eq!(run(&mut rewriter(RULES), &chunks), whole);
        }
    }
}
