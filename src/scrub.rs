//! Response scrubbing: a secret warden injected must not come back to the agent in a response
//! (an echo endpoint, an error page quoting the request). Each occurrence is replaced by a mask
//! of the same length, so `Content-Length` and keep-alive are untouched. Bodies are scanned as
//! they stream: only a tail that could be the start of a secret is held back for the next
//! chunk, so ordinary streaming (SSE, chunked) is not delayed. Called by `response_filter`
//! (headers) and `response_body_filter` (body) for requests that carried a credential.

use bytes::{Bytes, BytesMut};

const MASK: &[u8] = b"[redacted]";

/// Masks secrets in one response, across chunk boundaries.
#[derive(Debug)]
pub struct Scrubber {
    needles: Vec<Vec<u8>>,
    carry: BytesMut,
}

impl Scrubber {
    /// A scrubber for these secrets (empty ones are ignored).
    pub fn new(secrets: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Scrubber {
            needles: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
            carry: BytesMut::new(),
        }
    }

    /// Masks every secret in `value` (a header value, say); `None` when none occurs.
    pub fn scrub_value(&self, value: &[u8]) -> Option<Vec<u8>> {
        let mut out = value.to_vec();
        self.mask_all(&mut out).then_some(out)
    }

    /// Feeds one body chunk; returns what may be sent now. At `end`, everything left is sent.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut data = buf.to_vec();
        self.mask_all(&mut data);
        if !end {
            let hold = self.partial_tail(&data);
            self.carry = BytesMut::from(&data[data.len() - hold..]);
            data.truncate(data.len() - hold);
        }
        Bytes::from(data)
    }

    /// Replaces every occurrence of every secret in place; true if any was found.
    fn mask_all(&self, data: &mut [u8]) -> bool {
        let mut found = false;
        for needle in &self.needles {
            let mut i = 0;
            while i + needle.len() <= data.len() {
                if &data[i..i + needle.len()] == needle.as_slice() {
                    for (j, b) in data[i..i + needle.len()].iter_mut().enumerate() {
                        *b = MASK.get(j).copied().unwrap_or(b'*');
                    }
                    found = true;
                    i += needle.len();
                } else {
                    i += 1;
                }
            }
        }
        found
    }

    /// The length of the longest suffix of `data` that is a proper prefix of some secret.
    fn partial_tail(&self, data: &[u8]) -> usize {
        self.needles
            .iter()
            .map(|n| {
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

    fn run(secret: &str, chunks: &[&str]) -> (String, Vec<usize>) {
        let mut s = Scrubber::new([secret.as_bytes().to_vec()]);
        let mut out = String::new();
        let mut sizes = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let b = s.feed(c.as_bytes(), i + 1 == chunks.len());
            sizes.push(b.len());
            out.push_str(std::str::from_utf8(&b).unwrap());
        }
        (out, sizes)
    }

    #[test]
    fn masks_secrets_split_across_chunks_keeping_the_length() {
        let secret = "ghp_SECRETTOKEN123";
        let whole = format!("{{\"auth\":\"Bearer {secret}\"}}");
        for split in 1..whole.len() {
            let (a, b) = whole.split_at(split);
            let (out, _) = run(secret, &[a, b]);
            assert_eq!(out.len(), whole.len(), "split at {split}");
            assert!(!out.contains(secret), "split at {split}: {out}");
            assert!(out.contains("[redacted]********"), "{out}");
        }
    }

    #[test]
    fn holds_back_only_what_could_start_a_secret() {
        // SSE events that do not end in a secret prefix go out whole, at once.
        let (_, sizes) = run("TOKEN", &["data: a\n\n", "data: b\n\n", ""]);
        assert_eq!(sizes, vec![9, 9, 0]);
        // "TO" might begin TOKEN: held until the next chunk says otherwise; then the final
        // "T" of "TOAST" might, so it waits for the end.
        let (out, sizes) = run("TOKEN", &["abc TO", "AST", ""]);
        assert_eq!(sizes, vec![4, 4, 1]);
        assert_eq!(out, "abc TOAST");
    }

    #[test]
    fn short_secrets_are_masked_without_growing() {
        let (out, _) = run("abc", &["xabcx"]);
        assert_eq!(out, "x[rex");
        let s = Scrubber::new([b"abc".to_vec()]);
        assert_eq!(s.scrub_value(b"Bearer abc").unwrap(), b"Bearer [re");
        assert!(s.scrub_value(b"nothing").is_none());
    }
}
