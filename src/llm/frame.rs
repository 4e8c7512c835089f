//! WebSocket frames (RFC 6455 §5): the header parser, a bounded incremental frame reader
//! (unmasking client frames) and the frames warden writes itself. Shared by the Responses
//! WebSocket policy (`ws`), the denial it writes into a stream (`stream`) and the log's frame
//! summary; it knows nothing of LLM events.

use bytes::{Bytes, BytesMut};

/// Continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Text frame.
pub const TEXT: u8 = 0x1;
/// Binary frame.
pub const BINARY: u8 = 0x2;
/// Close frame.
pub const CLOSE: u8 = 0x8;
/// Ping frame.
pub const PING: u8 = 0x9;
/// Pong frame.
pub const PONG: u8 = 0xA;

/// A frame header's fields (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Final fragment of a message.
    pub fin: bool,
    /// The three reserved bits (RSV1 is 0b100: a compressed message under permessage-deflate).
    pub rsv: u8,
    /// Opcode.
    pub opcode: u8,
    /// The masking key (client frames).
    pub mask: Option<[u8; 4]>,
    /// Header bytes, masking key included.
    pub len: usize,
    /// Payload bytes that follow the header.
    pub payload_len: u64,
}

/// Parses the frame header at the start of `b`; `None` until all of it has arrived. Used by
/// [`FrameReader`] and by the log's frame summary, which reads headers without keeping
/// payloads.
pub fn parse_head(b: &[u8]) -> Option<FrameHead> {
    let (first, second) = (*b.first()?, *b.get(1)?);
    let (payload_len, mut len) = match second & 0x7f {
        126 => (u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => {
            let n: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if second & 0x80 != 0 {
        let k: [u8; 4] = b.get(len..len + 4)?.try_into().ok()?;
        len += 4;
        Some(k)
    } else {
        None
    };
    Some(FrameHead {
        fin: first & 0x80 != 0,
        rsv: (first >> 4) & 0x7,
        opcode: first & 0x0f,
        mask,
        len,
        payload_len,
    })
}

/// One frame: header fields, the unmasked payload and the exact bytes it came as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Final fragment of a message.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Bytes,
    /// The frame as received.
    pub raw: Bytes,
}

/// Why frames could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announces more than the bound.
    TooLarge,
    /// Reserved bits are set (a compression extension) or the header is invalid.
    Unsupported,
}

/// Reads frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// Appends bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Everything buffered, as received.
    pub fn take_rest(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// The next complete frame whose payload is at most `max_payload` bytes.
    pub fn next_frame(&mut self, max_payload: usize) -> Result<Option<Frame>, FrameError> {
        let b = &self.buf[..];
        if b.len() >= 2 && b[0] & 0x70 != 0 {
            return Err(FrameError::Unsupported);
        }
        let Some(head) = parse_head(b) else {
            return Ok(None);
        };
        let len = usize::try_from(head.payload_len).map_err(|_| FrameError::TooLarge)?;
        if len > max_payload {
            return Err(FrameError::TooLarge);
        }
        if b.len() < head.len + len {
            return Ok(None);
        }
        let raw = self.buf.split_to(head.len + len).freeze();
        let mut payload = raw.slice(head.len..);
        if let Some(k) = head.mask {
            let unmasked: Vec<u8> = payload
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ k[i % 4])
                .collect();
            payload = Bytes::from(unmasked);
        }
        Ok(Some(Frame {
            fin: head.fin,
            opcode: head.opcode,
            payload,
            raw,
        }))
    }
}

/// An unmasked, final frame (server to client).
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.extend_from_slice(&[0x80 | opcode]);
    match payload.len() {
        n if n < 126 => out.extend_from_slice(&[n as u8]),
        n if n <= usize::from(u16::MAX) => {
            out.extend_from_slice(&[126]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.extend_from_slice(&[127]);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out.freeze()
}

/// A close frame with `code` and a reason (cut to fit the 125-byte control payload).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let reason = reason.as_bytes();
    payload.extend_from_slice(&reason[..reason.len().min(123)]);
    encode(CLOSE, &payload)
}

/// A masked frame, as a client sends it (tests build client traffic with it).
#[cfg(test)]
pub(crate) fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_class_and_split() {
        for len in [0usize, 125, 126, 70_000] {
            let payload = vec![b'x'; len];
            let wire = encode(TEXT, &payload);
            for split in [0, 1, 2, wire.len() / 2, wire.len()] {
                let mut r = FrameReader::default();
                r.push(&wire[..split]);
                let first = r.next_frame(1 << 20).unwrap();
                r.push(&wire[split..]);
                let f = first.or_else(|| r.next_frame(1 << 20).unwrap()).unwrap();
                assert_eq!(f.payload.len(), len);
                assert_eq!(f.raw, wire);
            }
        }
        let mut r = FrameReader::default();
        r.push(&masked(TEXT, true, b"hello"));
        assert_eq!(&r.next_frame(10).unwrap().unwrap().payload[..], b"hello");
        r.push(&encode(TEXT, &[0; 100]));
        assert_eq!(r.next_frame(10), Err(FrameError::TooLarge));
        let mut r = FrameReader::default();
        r.push(&[0xC1, 0x00]);
        assert_eq!(r.next_frame(10), Err(FrameError::Unsupported));
    }
}
