//! Streaming find-and-replace over headers and bodies, bounded and chunk-boundary safe. Two
//! uses: masking a secret an origin echoes back, raw or encoded (same-length mask, so
//! `Content-Length` and keep-alive are untouched; `response_filter` and
//! `response_body_filter`), and substituting a placeholder with its secret on the way upstream
//! (`upstream_request_filter`, `request_body_filter`). Only a tail that could begin a needle is
//! held back between chunks, so streams (SSE, chunked uploads) are not delayed.

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

const MASK: &[u8] = b"[redacted]";

/// The shortest base64 core masked. A core of `k` characters pins down `6k` bits of the secret;
/// below 36 bits the same characters turn up in innocent base64 (any encoded data that shares
/// four bytes with the secret at that alignment: "YWJj" is in the base64 of every text that
/// starts "abc"), and masking them would corrupt unrelated images, JWTs and tokens. Secrets of
/// five bytes or more reach it at every alignment; a shorter one is still masked raw,
/// percent-encoded, and inside the base64 of the header value it was sent in.
const MIN_BASE64_CORE: usize = 6;

/// The forms an origin may echo `secret` in, each worth masking: the raw bytes, the
/// percent-encodings common encoders produce (upper- and lower-case hex), and the base64
/// "cores" in the standard and URL-safe alphabets at each of the three alignments the secret
/// can sit at inside a larger base64 string (the characters that depend on the secret's bytes
/// alone, without padding). Cores shorter than [`MIN_BASE64_CORE`] are left out. Empty for an
/// empty secret; never contains duplicates.
fn echo_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms: Vec<Vec<u8>> = Vec::new();
    let mut add = |form: Vec<u8>| {
        if !form.is_empty() && !forms.contains(&form) {
            forms.push(form);
        }
    };
    add(secret.to_vec());
    for style in &PERCENT_STYLES {
        for hex in [UPPER_HEX, LOWER_HEX] {
            add(percent_encode(secret, style, hex));
        }
    }
    for engine in [&STANDARD, &URL_SAFE] {
        for core in base64_cores(engine, secret) {
            add(core);
        }
    }
    forms
}

/// The characters of `secret`'s base64 that depend on its bytes alone, when it starts 0, 1 and
/// 2 bytes into the encoded data: the leading characters that mix in what comes before, the
/// trailing ones that mix in what comes after, and padding are cut.
fn base64_cores(engine: &base64::engine::GeneralPurpose, secret: &[u8]) -> Vec<Vec<u8>> {
    (0..3usize)
        .filter_map(|offset| {
            let mut data = vec![0u8; offset];
            data.extend_from_slice(secret);
            let encoded = engine.encode(&data).into_bytes();
            let start = (8 * offset).div_ceil(6);
            let end = 8 * data.len() / 6;
            encoded
                .get(start..end)
                .filter(|core| core.len() >= MIN_BASE64_CORE)
                .map(<[u8]>::to_vec)
        })
        .collect()
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";
const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// What one family of encoders leaves as it is, and whether it writes a space as `+`.
struct PercentStyle {
    keep: fn(u8) -> bool,
    space_as_plus: bool,
}

/// The families differ only on `!'()*~/` and the space, so a secret made of letters, digits and
/// `-._` yields just the raw form and the every-byte form.
const PERCENT_STYLES: [PercentStyle; 6] = [
    // RFC 3986 unreserved: Python `quote(s, safe='')`, most URL libraries.
    PercentStyle {
        keep: unreserved,
        space_as_plus: false,
    },
    // Python `quote` with its default `safe='/'`.
    PercentStyle {
        keep: |b| unreserved(b) || b == b'/',
        space_as_plus: false,
    },
    // JavaScript `encodeURIComponent`.
    PercentStyle {
        keep: |b| unreserved(b) || b"!'()*".contains(&b),
        space_as_plus: false,
    },
    // HTML forms and `URLSearchParams` (application/x-www-form-urlencoded).
    PercentStyle {
        keep: |b| b.is_ascii_alphanumeric() || b"*-._".contains(&b),
        space_as_plus: true,
    },
    // Python `quote_plus`, Go `url.QueryEscape`.
    PercentStyle {
        keep: unreserved,
        space_as_plus: true,
    },
    // Every byte escaped, as some encoders do to be safe.
    PercentStyle {
        keep: |_| false,
        space_as_plus: false,
    },
];

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn percent_encode(s: &[u8], style: &PercentStyle, hex: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3);
    for &b in s {
        if (style.keep)(b) {
            out.push(b);
        } else if b == b' ' && style.space_as_plus {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    out
}

/// How matches are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Leftmost match first, then the first needle listed; each occurrence gets its
    /// replacement.
    Substitute,
    /// Every byte inside any occurrence of any needle is masked, overlapping occurrences
    /// included, so a needle found inside or across another cannot leave a piece unmasked.
    Mask,
}

/// How needles are found.
enum Search {
    /// One automaton over every needle.
    Automaton(AhoCorasick),
    /// One substring searcher per needle (SIMD-accelerated): for a few needles, and when the
    /// automaton cannot be built (its state count would overflow).
    Scan(Vec<memchr::memmem::Finder<'static>>),
}

/// Needle sets this small (placeholders, the log redactor's header values: built per request)
/// keep a searcher per needle, which costs next to nothing to build; an automaton pays off from
/// a handful of needles up (a secret's encoded forms, built once per set by [`Maskers`]).
const SCAN_AT_MOST: usize = 3;

/// The needles of a [`Replacer`] and how they are found: built once, shared by every stream
/// that uses them.
struct Needles {
    needles: Vec<Vec<u8>>,
    /// Substitution: one per needle. Masking: empty (the mask is made per masked run).
    replacements: Vec<Vec<u8>>,
    mode: Mode,
    search: Search,
    /// Which bytes occur in some needle.
    has_byte: [bool; 256],
}

/// Replaces needles with their replacements in one stream, across chunk boundaries.
pub struct Replacer {
    set: Arc<Needles>,
    /// Bytes held back: they may begin a needle.
    carry: BytesMut,
    /// Masking: how many leading carry bytes an occurrence that began before them covers.
    covered: usize,
    /// Masking: the mask offset of the first carry byte, if it continues a masked run.
    run: Option<usize>,
}

impl std::fmt::Debug for Replacer {
    // Needles and replacements are secrets and placeholders: never in a log or panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replacer")
            .field("needles", &self.set.needles.len())
            .field("held", &self.carry.len())
            .finish()
    }
}

impl Replacer {
    /// Replaces each `(needle, replacement)`: the leftmost occurrence first, at one position
    /// the first needle listed. Empty needles are ignored.
    pub fn new(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let (needles, replacements) = pairs.into_iter().filter(|(n, _)| !n.is_empty()).unzip();
        Replacer::over(Arc::new(Needles::build(
            needles,
            replacements,
            Mode::Substitute,
        )))
    }

    /// Masks each secret in every form an origin may echo it in (raw, percent-encoded, and in
    /// base64 at any offset) with `[redacted]`, cut or padded with `*` to the length of the
    /// masked run, so nothing grows.
    pub fn masking(secrets: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let secrets: Vec<Vec<u8>> = secrets.into_iter().collect();
        Replacer::masking_verbatim(echo_needles(&secrets, &[]))
    }

    /// Masks exactly these byte strings, as [`Replacer::masking`] does, without adding encoded
    /// forms. Empty needles are ignored.
    pub fn masking_verbatim(needles: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Replacer::over(Arc::new(Needles::masking(needles)))
    }

    fn over(set: Arc<Needles>) -> Self {
        Replacer {
            set,
            carry: BytesMut::new(),
            covered: 0,
            run: None,
        }
    }

    /// `value` with every needle replaced; `None` when none occurs.
    pub fn replace_value(&self, value: &[u8]) -> Option<Vec<u8>> {
        // Most values hold no needle: answer those without building a copy.
        self.set.find_from(value, 0)?;
        let (out, found) = match self.set.mode {
            Mode::Substitute => {
                let (out, found, _) = self.set.substitute(value, value.len());
                (out, found)
            }
            Mode::Mask => {
                let (out, found, _) = self.set.mask(value, value.len(), 0, None);
                (out, found)
            }
        };
        found.then_some(out)
    }

    /// Feeds one body chunk; returns what may be sent now. At `end`, everything left is sent.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let hold = if end { 0 } else { self.partial_tail(&buf) };
        let ready = buf.len() - hold;
        let (out, sent) = match self.set.mode {
            Mode::Substitute => {
                let (out, _, sent) = self.set.substitute(&buf, ready);
                (out, sent)
            }
            Mode::Mask => {
                let (out, _, state) = self.set.mask(&buf, ready, self.covered, self.run);
                (self.covered, self.run) = state;
                (out, ready)
            }
        };
        self.carry = BytesMut::from(&buf[sent..]);
        Bytes::from(out)
    }

    /// The length of the longest suffix of `data` that is a proper prefix of some needle.
    pub(crate) fn partial_tail(&self, data: &[u8]) -> usize {
        self.set.partial_tail(data)
    }
}

/// The needles that mask `secrets` in every form [`echo_forms`] lists, and `header_values` (the
/// header values the secrets were sent in) in base64; without duplicates. A header value is
/// not masked raw or percent-encoded as a whole: those forms hold the secret's own raw or
/// percent-encoded form, which is masked, and leaving the scheme around it (`Bearer`) readable
/// helps whoever debugs the echo. Its base64 is: a secret too short for base64 cores of its
/// own is still caught inside the encoded value.
fn echo_needles(secrets: &[Vec<u8>], header_values: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut needles: Vec<Vec<u8>> = Vec::new();
    let forms = secrets.iter().flat_map(|s| echo_forms(s)).chain(
        header_values
            .iter()
            .flat_map(|v| [&STANDARD, &URL_SAFE].map(|e| base64_cores(e, v)))
            .flatten(),
    );
    for form in forms {
        if !needles.contains(&form) {
            needles.push(form);
        }
    }
    needles
}

/// A set's secrets and the header values they went in: what a masker is built from.
type EchoSet = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// How many secret sets [`Maskers`] keeps built.
const MASKERS_CACHED: usize = 64;

/// The maskers for the secret sets requests carry, built once per set and kept (a bounded
/// number; the least used are evicted): with the encoded forms a set has a dozen or more
/// needles, whose automaton takes over 100 µs to build, while a request's secrets
/// (its credential and substitutions) repeat from one request to the next. Lives in the
/// config snapshot, so a reload drops every set it held.
pub struct Maskers {
    built: quick_cache::sync::Cache<EchoSet, Arc<Needles>>,
}

impl Default for Maskers {
    fn default() -> Self {
        Maskers {
            built: quick_cache::sync::Cache::new(MASKERS_CACHED),
        }
    }
}

impl std::fmt::Debug for Maskers {
    // The cache keys are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maskers")
            .field("sets", &self.built.len())
            .finish()
    }
}

impl Maskers {
    /// A masker for one response: each secret in every form [`Replacer::masking`] masks, and
    /// the base64 of each header value the secrets were sent in. Built now, or taken from the
    /// sets already built.
    pub fn masking(&self, secrets: Vec<Vec<u8>>, header_values: Vec<Vec<u8>>) -> Replacer {
        let key = (secrets, header_values);
        let set = match self.built.get(&key) {
            Some(set) => set,
            None => {
                let set = Arc::new(Needles::masking(echo_needles(&key.0, &key.1)));
                self.built.insert(key, set.clone());
                set
            }
        };
        Replacer::over(set)
    }
}

impl Needles {
    fn masking(needles: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let needles = needles.into_iter().filter(|n| !n.is_empty()).collect();
        Needles::build(needles, Vec::new(), Mode::Mask)
    }

    fn build(needles: Vec<Vec<u8>>, replacements: Vec<Vec<u8>>, mode: Mode) -> Self {
        let kind = match mode {
            Mode::Substitute => MatchKind::LeftmostFirst,
            // At each position the longest occurrence, which covers every shorter one there.
            Mode::Mask => MatchKind::LeftmostLongest,
        };
        // A contiguous NFA: a DFA would scan a little faster but take ~0.5 MiB per set.
        let automaton = (needles.len() > SCAN_AT_MOST).then(|| {
            AhoCorasick::builder()
                .match_kind(kind)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(&needles)
        });
        let search = match automaton {
            Some(Ok(ac)) => Search::Automaton(ac),
            // Only when its state count would overflow: scanning still works.
            Some(Err(_)) | None => Search::Scan(finders(&needles)),
        };
        let mut has_byte = [false; 256];
        for &b in needles.iter().flatten() {
            has_byte[usize::from(b)] = true;
        }
        Needles {
            needles,
            replacements,
            mode,
            search,
            has_byte,
        }
    }

    /// The leftmost occurrence starting at or after `from`, as (start, end, needle); at one
    /// start, the first listed (substituting) or the longest (masking).
    fn find_from(&self, data: &[u8], from: usize) -> Option<(usize, usize, usize)> {
        match &self.search {
            Search::Automaton(ac) => ac
                .find(Input::new(data).range(from..))
                .map(|m| (m.start(), m.end(), m.pattern().as_usize())),
            Search::Scan(finders) => {
                let mut best: Option<(usize, usize, usize)> = None;
                for (k, finder) in finders.iter().enumerate() {
                    let Some(at) = finder.find(&data[from..]) else {
                        continue;
                    };
                    let (start, end) = (from + at, from + at + self.needles[k].len());
                    let better = best.is_none_or(|(s, e, _)| {
                        start < s || (start == s && self.mode == Mode::Mask && end > e)
                    });
                    if better {
                        best = Some((start, end, k));
                    }
                }
                best
            }
        }
    }

    /// Substitutes the occurrences in `data` that start before `ready`, searching all of it: one
    /// that starts before `ready` and ends after it is complete (else the held tail would have
    /// begun at or before its start). Returns the output, whether anything was replaced, and
    /// how much of `data` it consumed (`ready`, or the end of an occurrence that reached past).
    fn substitute(&self, data: &[u8], ready: usize) -> (Vec<u8>, bool, usize) {
        let mut out = Vec::with_capacity(data.len());
        let mut found = false;
        let mut i = 0;
        while let Some((start, end, k)) = self.find_from(data, i).filter(|m| m.0 < ready) {
            out.extend_from_slice(&data[i..start]);
            out.extend_from_slice(&self.replacements[k]);
            i = end;
            found = true;
        }
        let sent = ready.max(i);
        out.extend_from_slice(&data[i.min(sent)..sent]);
        (out, found, sent)
    }

    /// Masks `data[..ready]`: every byte of an occurrence that starts before `ready`, and the
    /// first `covered` bytes (the rest of an occurrence from the previous chunk), each masked
    /// run reading `[redacted]***` from its start; `run` continues a run that ended where
    /// `data` begins. Returns the output, whether anything was masked, and the `covered` and
    /// `run` state for the bytes from `ready` on.
    fn mask(
        &self,
        data: &[u8],
        ready: usize,
        covered: usize,
        run: Option<usize>,
    ) -> (Vec<u8>, bool, (usize, Option<usize>)) {
        let mut out = Vec::with_capacity(ready);
        let mut found = covered > 0;
        let mut written = 0;
        // The masked run being grown: start, end, mask offset at its start.
        let mut open: Option<(usize, usize, usize)> =
            (covered > 0 || run.is_some()).then(|| (0, covered, run.unwrap_or(0)));
        let mut emit = |out: &mut Vec<u8>, (start, end, offset): (usize, usize, usize)| {
            let (start, end) = (start.min(ready), end.min(ready));
            out.extend_from_slice(&data[written..start]);
            out.extend((start..end).map(|p| mask_byte(offset + p - start)));
            written = written.max(end);
        };
        let mut from = 0;
        // Each start is visited, so occurrences that overlap are all found.
        while let Some((start, end, _)) = self.find_from(data, from).filter(|m| m.0 < ready) {
            found = true;
            match open.as_mut() {
                Some(o) if start <= o.1 => o.1 = o.1.max(end),
                _ => {
                    if let Some(o) = open.take() {
                        emit(&mut out, o);
                    }
                    open = Some((start, end, 0));
                }
            }
            from = start + 1;
        }
        let mut state = (0, None);
        if let Some((start, end, offset)) = open {
            emit(&mut out, (start, end, offset));
            // Reaching `ready`, the run goes on into the held bytes if a match continues it.
            if end >= ready {
                state = (end - ready, Some(offset + ready - start));
            }
        }
        out.extend_from_slice(&data[written..ready]);
        (out, found, state)
    }

    /// The length of the longest suffix of `data` that is a proper prefix of some needle.
    fn partial_tail(&self, data: &[u8]) -> usize {
        let Some(&last) = data.last() else {
            return 0;
        };
        // Most reads end in a byte no needle has (a newline, a quote): nothing to hold.
        if !self.has_byte[usize::from(last)] {
            return 0;
        }
        let mut longest = 0;
        for n in &self.needles {
            let top = (n.len() - 1).min(data.len());
            if top <= longest {
                continue;
            }
            // Only prefixes ending in `data`'s last byte can match: the longest first.
            let found = memchr::memrchr_iter(last, &n[longest..top])
                .map(|j| longest + j + 1)
                .find(|&k| data.ends_with(&n[..k]));
            if let Some(k) = found {
                longest = k;
            }
        }
        longest
    }
}

fn finders(needles: &[Vec<u8>]) -> Vec<memchr::memmem::Finder<'static>> {
    needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n).into_owned())
        .collect()
}

fn mask_byte(offset: usize) -> u8 {
    MASK.get(offset).copied().unwrap_or(b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

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

    // ---- encoded echoes: these use only the streaming API, so they ran against raw-only masking

    const RICH: &str = "k3y/+= ~!*'()>?";

    fn b64(engine: &base64::engine::GeneralPurpose, data: &[u8]) -> String {
        base64::Engine::encode(engine, data)
    }

    /// `text` fed in one chunk, then in two at every cut, then a byte at a time: the output is
    /// the same every way and keeps the length.
    fn masked_every_way(r: impl Fn() -> Replacer, text: &str) -> String {
        let (whole, _) = run(r(), &[text, ""]);
        assert_eq!(whole.len(), text.len(), "{whole}");
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(run(r(), &[a, b]).0, whole, "cut at {cut}");
        }
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let bytes: Vec<&str> = bytes.iter().map(String::as_str).chain([""]).collect();
        assert_eq!(run(r(), &bytes).0, whole, "a byte at a time");
        whole
    }

    #[test]
    fn masks_the_base64_of_a_secret_at_every_alignment_in_both_alphabets() {
        let secret = "s3cr3t~>?~>?";
        for engine in [&STANDARD, &URL_SAFE] {
            for prefix in ["", "u", "us", "user:"] {
                for suffix in ["", "x", "!?"] {
                    let data = format!("{prefix}{secret}{suffix}");
                    let encoded = b64(engine, data.as_bytes());
                    let text = format!("auth={encoded};");
                    let out = masked_every_way(|| mask(secret), &text);
                    // Only the characters that mix in the bytes around the secret survive.
                    let keep_head = 5 + (8 * prefix.len()).div_ceil(6);
                    let keep_tail = text.len() - (5 + 8 * (prefix.len() + secret.len()) / 6);
                    assert_eq!(out[..keep_head], text[..keep_head], "{text} -> {out}");
                    assert_eq!(
                        out[out.len() - keep_tail..],
                        text[text.len() - keep_tail..],
                        "{text} -> {out}"
                    );
                    let masked = &out[keep_head..out.len() - keep_tail];
                    assert!(masked.starts_with("[redacted]**"), "{text} -> {out}");
                    assert!(masked.bytes().skip(10).all(|b| b == b'*'), "{out}");
                }
            }
        }
        // The alphabets differ for this secret at every alignment (`+/` against `-_`).
        for prefix in ["", "u", "us"] {
            let data = format!("{prefix}{secret}");
            assert_ne!(
                b64(&STANDARD, data.as_bytes()),
                b64(&URL_SAFE, data.as_bytes())
            );
        }
    }

    #[test]
    fn masks_the_percent_encodings_common_encoders_produce_in_either_case() {
        // The encodings of RICH, as the named encoders print them.
        let encoded = [
            // encodeURIComponent
            "k3y%2F%2B%3D%20~!*'()%3E%3F",
            // URLSearchParams
            "k3y%2F%2B%3D+%7E%21*%27%28%29%3E%3F",
            // Python quote(s, safe='')
            "k3y%2F%2B%3D%20~%21%2A%27%28%29%3E%3F",
            // Python quote(s)
            "k3y/%2B%3D%20~%21%2A%27%28%29%3E%3F",
            // Python quote_plus(s)
            "k3y%2F%2B%3D+~%21%2A%27%28%29%3E%3F",
            // every byte
            "%6B%33%79%2F%2B%3D%20%7E%21%2A%27%28%29%3E%3F",
        ];
        for form in encoded {
            for form in [form.to_string(), lower_hex(form)] {
                let text = format!("?q={form}&x=1");
                let out = masked_every_way(|| mask(RICH), &text);
                assert_eq!(out, format!("?q={}&x=1", mask_of(form.len())), "{text}");
            }
        }
    }

    fn lower_hex(form: &str) -> String {
        let mut out = String::new();
        let mut hex_left = 0;
        for c in form.chars() {
            if hex_left > 0 {
                out.push(c.to_ascii_lowercase());
                hex_left -= 1;
            } else {
                hex_left = if c == '%' { 2 } else { 0 };
                out.push(c);
            }
        }
        out
    }

    fn mask_of(len: usize) -> String {
        (0..len)
            .map(|j| MASK.get(j).copied().unwrap_or(b'*') as char)
            .collect()
    }

    #[test]
    fn masks_every_form_of_an_echoed_header_value_split_across_chunks() {
        let secret = "ghp_S3cr3t~Token?";
        let value = format!("Bearer {secret}");
        let body = format!(
            "{{\"raw\":\"{value}\",\"b64\":\"{}\",\"url\":\"{}\",\"basic\":\"{}\",\"pct\":\"{}\"}}",
            b64(&STANDARD, value.as_bytes()),
            b64(&URL_SAFE, format!("x{value}").as_bytes()),
            b64(&STANDARD, format!("user:{secret}").as_bytes()),
            "Bearer%20ghp_S3cr3t~Token%3f",
        );
        let r = || Replacer::masking([secret.as_bytes().to_vec(), value.as_bytes().to_vec()]);
        let out = masked_every_way(r, &body);
        assert!(!out.contains("S3cr3t"), "{out}");
        for engine in [&STANDARD, &URL_SAFE] {
            for prefix in ["", "x", "xy"] {
                let e = b64(engine, format!("{prefix}{secret}").as_bytes());
                // The middle of any encoding of the secret is gone.
                assert!(!out.contains(&e[4..e.len() - 4]), "{out}");
            }
        }
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        for key in ["raw", "b64", "url", "basic", "pct"] {
            assert!(
                v[key].as_str().unwrap().contains("[redacted]"),
                "{key}: {out}"
            );
        }
    }

    #[test]
    fn overlapping_needles_are_masked_as_one_run() {
        // The raw secret inside the formatted value: one run, not a mask inside a mask.
        let r = Replacer::masking([b"ghp_SECRET".to_vec(), b"Bearer ghp_SECRET".to_vec()]);
        assert_eq!(
            r.replace_value(b"auth: Bearer ghp_SECRET!").unwrap(),
            b"auth: [redacted]*******!"
        );
        // Two needles that overlap without either containing the other.
        let out = masked_every_way(
            || Replacer::masking([b"abcdef".to_vec(), b"defghi".to_vec()]),
            "xxabcdefghixx",
        );
        assert_eq!(out, "xx[redactedxx");
        // One that starts before another ends, found again after it.
        let out = masked_every_way(
            || Replacer::masking([b"abcdef".to_vec(), b"efgh12".to_vec()]),
            "abcdefgh12.",
        );
        assert_eq!(out, "[redacted].");
    }

    #[test]
    fn a_secret_ending_a_chunk_in_its_own_first_byte_is_still_masked() {
        // The final "a" could begin another "abca", so it is held; the secret ends there.
        let (out, _) = run(mask("abca"), &["xabca", "y", ""]);
        assert_eq!(out, "x[redy");
    }

    #[test]
    fn an_occurrence_ending_inside_a_tail_held_for_another_needle_is_still_found() {
        // "de" may begin "dexyz", so it is held; "abcde" ends there and must not leak.
        let (out, _) = run(
            Replacer::masking([b"abcde".to_vec(), b"dexyz".to_vec()]),
            &["abcde", "f", ""],
        );
        assert_eq!(out, "[redaf");
        let (out, _) = run(
            Replacer::new([
                (b"abcde".to_vec(), b"1".to_vec()),
                (b"dexyz".to_vec(), b"2".to_vec()),
            ]),
            &["abcde", "f", ""],
        );
        assert_eq!(out, "1f");
    }

    #[test]
    fn a_short_secret_is_not_masked_in_innocent_base64() {
        // "abcd" encodes to a core of five characters at best: common in unrelated base64.
        let innocent = b64(&STANDARD, b"abcdefgh and more text");
        assert_eq!(run(mask("abcd"), &[&innocent, ""]).0, innocent);
    }

    // ---- the needle set and the two search engines

    #[test]
    fn echo_forms_of_a_plain_token_are_raw_every_byte_escaped_and_six_base64_cores() {
        let forms = echo_forms(b"ghp_abcdefghij");
        let text: Vec<String> = forms
            .iter()
            .map(|f| String::from_utf8(f.clone()).unwrap())
            .collect();
        assert_eq!(text[0], "ghp_abcdefghij");
        assert!(text.contains(&"%67%68%70%5F%61%62%63%64%65%66%67%68%69%6A".to_string()));
        assert!(text.contains(&"%67%68%70%5f%61%62%63%64%65%66%67%68%69%6a".to_string()));
        // No `+/` in its base64: the URL-safe cores are the standard ones.
        assert_eq!(forms.len(), 3 + 3, "{text:?}");
        assert!(echo_forms(b"").is_empty());
        assert!(echo_forms(b"abcd")
            .iter()
            .all(|f| f.len() < MIN_BASE64_CORE || f.contains(&b'%') || f == b"abcd"));
    }

    #[test]
    fn maskers_build_each_secret_set_once_and_never_show_it() {
        let maskers = Maskers::default();
        let set = |s: &str| {
            (
                vec![s.as_bytes().to_vec()],
                vec![format!("Bearer {s}").into_bytes()],
            )
        };
        let (s, v) = set("ghp_abcdefghij");
        let a = maskers.masking(s.clone(), v.clone());
        let b = maskers.masking(s, v);
        assert!(Arc::ptr_eq(&a.set, &b.set));
        let (s, v) = set("ghp_klmnopqrst");
        let c = maskers.masking(s, v);
        assert!(!Arc::ptr_eq(&a.set, &c.set));
        // The cached set masks the value's base64 as well as the secret's forms.
        let echoed = b64(&STANDARD, b"Bearer ghp_abcdefghij");
        assert!(a.replace_value(echoed.as_bytes()).is_some());
        assert!(!format!("{maskers:?}").contains("ghp_"), "{maskers:?}");
    }

    /// `r` searching one needle at a time, and the same through an automaton.
    fn both_engines(r: Replacer) -> [Replacer; 2] {
        let engine = |search| {
            Replacer::over(Arc::new(Needles {
                needles: r.set.needles.clone(),
                replacements: r.set.replacements.clone(),
                mode: r.set.mode,
                search,
                has_byte: r.set.has_byte,
            }))
        };
        let kind = match r.set.mode {
            Mode::Substitute => MatchKind::LeftmostFirst,
            Mode::Mask => MatchKind::LeftmostLongest,
        };
        let ac = AhoCorasick::builder()
            .match_kind(kind)
            .build(&r.set.needles)
            .unwrap();
        [
            engine(Search::Scan(finders(&r.set.needles))),
            engine(Search::Automaton(ac)),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_and_either_engine_give_the_same_result(
            needles in proptest::collection::vec("[xyz]{1,8}", 1..6),
            text in "[wxyz]{0,60}",
            cuts in proptest::collection::vec(0..60usize, 0..8),
        ) {
            let needles: Vec<Vec<u8>> = needles.into_iter().map(String::into_bytes).collect();
            let masking = || Replacer::masking_verbatim(needles.clone());
            let substituting = || Replacer::new(needles.iter().map(|n| (n.clone(), b"#".to_vec())));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                chunks.push(&text[at..c]);
                at = c;
            }
            chunks.push("");
            for make in [&masking as &dyn Fn() -> Replacer, &substituting] {
                let whole = run(make(), &[&text, ""]).0;
                for r in both_engines(make()) {
                    proptest::prop_assert_eq!(&run(r, &chunks).0, &whole);
                }
                if let Some(v) = make().replace_value(text.as_bytes()) {
                    proptest::prop_assert_eq!(String::from_utf8(v).unwrap(), whole);
                }
            }
            // Masking keeps the length, and no needle survives it.
            let masked = run(masking(), &chunks).0;
            proptest::prop_assert_eq!(masked.len(), text.len());
            for n in &needles {
                proptest::prop_assert!(!masked.as_bytes().windows(n.len()).any(|w| w == &n[..]));
            }
        }
    }
}
