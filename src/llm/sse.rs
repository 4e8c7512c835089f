//! An incremental Server-Sent Events framer: bytes in, whole raw events out (byte for byte, so
//! what is released is exactly what the origin sent). Lines may end in `\n`, `\r\n` or `\r`; an
//! empty line ends an event. The caller bounds [`Framer::buffered`].

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into raw events.
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
    /// Where scanning resumes.
    pos: usize,
    /// Start of the line being scanned.
    line_start: usize,
}

impl Framer {
    /// A framer with nothing buffered.
    pub fn new() -> Self {
        Framer::default()
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held that do not yet form a complete event.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, terminator included.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let len = self.buf.len();
        while self.pos < len {
            let Some(off) = memchr::memchr2(b'\n', b'\r', &self.buf[self.pos..]) else {
                self.pos = len;
                break;
            };
            let at = self.pos + off;
            let mut end = at + 1;
            if self.buf[at] == b'\r' {
                if at + 1 == len {
                    // A `\r` at the end may be half of `\r\n`: wait for the next byte.
                    self.pos = at;
                    return None;
                }
                if self.buf[at + 1] == b'\n' {
                    end = at + 2;
                }
            }
            let empty_line = at == self.line_start;
            self.pos = end;
            self.line_start = end;
            if empty_line {
                self.pos = 0;
                self.line_start = 0;
                return Some(self.buf.split_to(end).freeze());
            }
        }
        None
    }

    /// Everything still buffered (at the end of the stream: a last, unterminated event).
    pub fn take_rest(&mut self) -> Bytes {
        self.pos = 0;
        self.line_start = 0;
        self.buf.split().freeze()
    }
}

/// The fields of one event that policy reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `event:`.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` when there were none.
    pub data: Option<String>,
}

/// Parses a raw event (as [`Framer::next_event`] returns it). Comments and unknown fields are
/// ignored; invalid UTF-8 is replaced.
pub fn parse(raw: &[u8]) -> Event {
    let text = String::from_utf8_lossy(raw);
    let mut ev = Event::default();
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => ev.event = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    ev.data = data;
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(chunks: &[&[u8]]) -> (Vec<Bytes>, Bytes) {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c);
            while let Some(e) = f.next_event() {
                out.push(e);
            }
        }
        (out, f.take_rest())
    }

    #[test]
    fn splits_on_blank_lines_of_any_line_ending() {
        let (ev, rest) = events(&[b"event: a\ndata: 1\n\ndata: 2\r\n\r\ndata: 3\r\rdata: 4"]);
        assert_eq!(ev.len(), 3);
        assert_eq!(&ev[0][..], b"event: a\ndata: 1\n\n");
        assert_eq!(&ev[1][..], b"data: 2\r\n\r\n");
        assert_eq!(&ev[2][..], b"data: 3\r\r");
        assert_eq!(&rest[..], b"data: 4");
        // A trailing `\r` waits: it may be the first half of `\r\n`.
        let (ev, _) = events(&[b"data: x\r\n\r", b"\n"]);
        assert_eq!(&ev[0][..], b"data: x\r\n\r\n");
    }

    #[test]
    fn parses_fields_comments_and_multiline_data() {
        let e = parse(b": keep-alive\nevent: message_start\ndata: {\"a\":\ndata:1}\nid: 3\n\n");
        assert_eq!(e.event.as_deref(), Some("message_start"));
        assert_eq!(e.data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(parse(b": only a comment\n\n"), Event::default());
    }

    const RECORDED: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n: comment\n\ndata: a\ndata: b\n\nevent: content_block_delta\rdata: {\"text\":\"\xc3\xa9\"}\r\r";

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(cuts in proptest::collection::vec(0..RECORDED.len(), 0..12)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&RECORDED[last..c]);
                last = c;
            }
            chunks.push(&RECORDED[last..]);
            let (whole, whole_rest) = events(&[RECORDED]);
            let (split, split_rest) = events(&chunks);
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(&whole_rest, &split_rest);
            // The last event ends in `\r\r` at the very end: it waits for a possible `\n`.
            prop_assert_eq!(whole.len(), 4);
            let mut joined: Vec<u8> = whole.iter().flat_map(|e| e.iter().copied()).collect();
            joined.extend_from_slice(&whole_rest);
            prop_assert_eq!(&joined[..], RECORDED);
        }

        #[test]
        fn garbage_never_panics_and_loses_no_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048), split in 0usize..2048) {
            let split = split.min(data.len());
            let (ev, rest) = events(&[&data[..split], &data[split..]]);
            let total: usize = ev.iter().map(Bytes::len).sum::<usize>() + rest.len();
            prop_assert_eq!(total, data.len());
            for e in &ev {
                let _ = parse(e);
            }
        }
    }
}
