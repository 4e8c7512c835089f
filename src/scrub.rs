//! Streaming find-and-replace over headers and bodies, bounded and chunk-boundary safe. Two
//! uses: masking a secret an origin echoes back (same-length mask, so `Content-Length` and
//! keep-alive are untouched; `response_filter` and `response_body_filter`), and substituting a
//! placeholder with its secret on the way upstream (`upstream_request_filter`,
//! `request_body_filter`). Only a tail that could begin a needle is held back between chunks,
//! so streams (SSE, chunked uploads) are not delayed.

use bytes::{Bytes, BytesMut};

const MASK: &[u8] = b"[redacted]";

/// Replaces needles with their replacements in one stream, across chunk boundaries.
pub struct Replacer {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// One substring searcher per needle (SIMD-accelerated).
    finders: Vec<memchr::memmem::Finder<'static>>,
    carry: BytesMut,
}

impl std::fmt::Debug for Replacer {
    // Needles and replacements are secrets and placeholders: never in a log or panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replacer")
            .field("pairs", &self.pairs.len())
            .field("held", &self.carry.len())
            .finish()
    }
}

impl Replacer {
    /// Replaces each `(needle, replacement)`; empty needles are ignored.
    pub fn new(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> =
            pairs.into_iter().filter(|(n, _)| !n.is_empty()).collect();
        let finders = pairs
            .iter()
            .map(|(n, _)| memchr::memmem::Finder::new(n).into_owned())
            .collect();
        Replacer {
            pairs,
            finders,
            carry: BytesMut::new(),
        }
    }

    /// Masks each secret with `[redacted]`, cut or padded with `*` to the secret's length.
    pub fn masking(secrets: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Replacer::new(secrets.into_iter().map(|s| {
            let mask = (0..s.len())
                .map(|j| MASK.get(j).copied().unwrap_or(b'*'))
                .collect();
            (s, mask)
        }))
    }

    /// `value` with every needle replaced; `None` when none occurs.
    pub fn replace_value(&self, value: &[u8]) -> Option<Vec<u8>> {
        let (out, found) = self.replace_all(value);
        found.then_some(out)
    }

    /// Feeds one body chunk; returns what may be sent now. At `end`, everything left is sent.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let hold = if end { 0 } else { self.partial_tail(&buf) };
        let ready = buf.len() - hold;
        let (out, _) = self.replace_all(&buf[..ready]);
        self.carry = BytesMut::from(&buf[ready..]);
        Bytes::from(out)
    }

    /// Replaces every occurrence, leftmost first; at one position the first needle listed wins.
    fn replace_all(&self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len());
        let mut found = false;
        let mut i = 0;
        loop {
            let mut next: Option<(usize, usize)> = None;
            for (k, finder) in self.finders.iter().enumerate() {
                if let Some(at) = finder.find(&data[i..]) {
                    if next.is_none_or(|(best, _)| i + at < best) {
                        next = Some((i + at, k));
                    }
                }
            }
            let Some((at, k)) = next else {
                out.extend_from_slice(&data[i..]);
                return (out, found);
            };
            let (needle, replacement) = &self.pairs[k];
            out.extend_from_slice(&data[i..at]);
            out.extend_from_slice(replacement);
            i = at + needle.len();
            found = true;
        }
    }

    /// The length of the longest suffix of `data` that is a proper prefix of some needle.
    pub(crate) fn partial_tail(&self, data: &[u8]) -> usize {
        self.pairs
            .iter()
            .map(|(n, _)| {
                (1..n.len().min(data.len() + 1))
                    .rev()
                    .find(|&k| data.ends_with(&n[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut r: Replacer, chunks: &[&str]) -> (String, Vec<usize>) {
        let mut out = String::new();
        let mut sizes = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let b = r.feed(c.as_bytes(), i + 1 == chunks.len());
            sizes.push(b.len());
            out.push_str(std::str::from_utf8(&b).unwrap());
        }
        (out, sizes)
    }

    fn mask(secret: &str) -> Replacer {
        Replacer::masking([secret.as_bytes().to_vec()])
    }

    #[test]
    fn masks_secrets_split_across_chunks_keeping_the_length() {
        let secret = "ghp_SECRETTOKEN123";
        let whole = format!("{{\"auth\":\"Bearer {secret}\"}}");
        for split in 1..whole.len() {
            let (a, b) = whole.split_at(split);
            let (out, _) = run(mask(secret), &[a, b]);
            assert_eq!(out.len(), whole.len(), "split at {split}");
            assert!(!out.contains(secret), "split at {split}: {out}");
            assert!(out.contains("[redacted]********"), "{out}");
        }
    }

    #[test]
    fn holds_back_only_what_could_start_a_secret() {
        // SSE events that do not end in a secret prefix go out whole, at once.
        let (_, sizes) = run(mask("TOKEN"), &["data: a\n\n", "data: b\n\n", ""]);
        assert_eq!(sizes, vec![9, 9, 0]);
        // "TO" might begin TOKEN: held until the next chunk says otherwise; then the final
        // "T" of "TOAST" might, so it waits for the end.
        let (out, sizes) = run(mask("TOKEN"), &["abc TO", "AST", ""]);
        assert_eq!(sizes, vec![4, 4, 1]);
        assert_eq!(out, "abc TOAST");
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let r = mask("ghp_SECRETTOKEN123");
        assert!(!format!("{r:?}").contains("SECRET"), "{r:?}");
    }

    #[test]
    fn short_secrets_are_masked_without_growing() {
        let (out, _) = run(mask("abc"), &["xabcx"]);
        assert_eq!(out, "x[rex");
        let s = mask("abc");
        assert_eq!(s.replace_value(b"Bearer abc").unwrap(), b"Bearer [re");
        assert!(s.replace_value(b"nothing").is_none());
    }

    #[test]
    fn substitutes_placeholders_of_another_length_across_chunks() {
        let placeholder = "WARDEN_TOKEN";
        let whole = format!("{{\"key\":\"{placeholder}\",\"n\":1}}");
        for split in 0..=whole.len() {
            let (a, b) = whole.split_at(split);
            let r = Replacer::new([(
                placeholder.as_bytes().to_vec(),
                b"real-secret-value".to_vec(),
            )]);
            let (out, _) = run(r, &[a, b]);
            assert_eq!(
                out, "{\"key\":\"real-secret-value\",\"n\":1}",
                "split at {split}"
            );
        }
    }
}
