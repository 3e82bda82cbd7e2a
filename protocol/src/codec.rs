//! Framing: each message is a 4-byte big-endian length followed by its bincode 2 encoding.
//!
//! Decoding is incremental: feed whatever bytes arrived into a [`FrameDecoder`], then take whole
//! messages out. "Is a whole frame buffered?" ([`FrameDecoder::check`]) is answered apart from "parse
//! it", and a frame that declares more than the cap is refused from its header alone, before its
//! body is buffered. Trailing bytes inside a frame are an error.

use bytes::{Buf, BufMut, BytesMut};

use crate::messages::Message;

/// Largest frame payload accepted by default (64 MiB). Models larger than this travel in chunks.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// Bytes of the length prefix.
const HEADER_LEN: usize = 4;

/// bincode configuration shared by encoder and decoder: varint integers, and a decode limit
/// equal to the frame cap so a hostile length inside a frame cannot make us allocate more.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Appends one framed message to `out`.
pub fn encode_frame(
    message: &Message,
    max_len: usize,
    out: &mut impl BufMut,
) -> Result<(), CodecError> {
    let body = bincode::serde::encode_to_vec(message, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() > max_len.min(MAX_FRAME_LEN) {
        return Err(CodecError::FrameTooLarge {
            len: body.len(),
            max: max_len.min(MAX_FRAME_LEN),
        });
    }
    // The length fits in u32: it is at most MAX_FRAME_LEN (64 MiB).
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    Ok(())
}

/// Encodes one message as a standalone frame.
pub fn frame(message: &Message) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_frame(message, MAX_FRAME_LEN, &mut out)?;
    Ok(out)
}

/// Decodes a frame body (without its length prefix), refusing trailing bytes.
pub fn decode_body(body: &[u8]) -> Result<Message, CodecError> {
    let (message, used) = bincode::serde::decode_from_slice::<Message, _>(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(message)
}

/// Incremental decoder of a byte stream into messages.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_len` (capped at [`MAX_FRAME_LEN`]).
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_len: max_len.min(MAX_FRAME_LEN),
        }
    }

    /// Buffers bytes received from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether a whole frame is buffered: `Ok(Some(total_len))` if so, `Ok(None)` if more bytes
    /// are needed, and an error as soon as the header declares a frame over the cap.
    pub fn check(&self) -> Result<Option<usize>, CodecError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let declared =
            u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if declared > self.max_len {
            return Err(CodecError::FrameTooLarge {
                len: declared,
                max: self.max_len,
            });
        }
        let total = HEADER_LEN + declared;
        Ok((self.buf.len() >= total).then_some(total))
    }

    /// Takes the next whole message out of the buffer, if one is there.
    pub fn next_message(&mut self) -> Result<Option<Message>, CodecError> {
        let Some(total) = self.check()? else {
            return Ok(None);
        };
        let mut frame = self.buf.split_to(total);
        frame.advance(HEADER_LEN);
        decode_body(&frame).map(Some)
    }

    /// Call at end of stream: an incomplete frame left in the buffer is an error.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

/// Why bytes could not be turned into messages, or a message into bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame declares (or would need) more bytes than the cap.
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    FrameTooLarge {
        /// Declared or encoded length.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an incomplete frame)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
    /// The frame body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The frame holds a valid message followed by extra bytes.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// Number of extra bytes.
        extra: usize,
    },
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{
        Contribution, ContributionKind, DeclineReason, Declined, PlainFigures, StatsRequest,
    };

    fn sample() -> Message {
        Message::Declined(Declined {
            session: 7,
            round: 3,
            reason: DeclineReason::BudgetSpent,
        })
    }

    #[test]
    fn frames_roundtrip_when_fed_byte_by_byte() {
        let mut bytes = frame(&sample()).unwrap();
        bytes.extend(
            frame(&Message::StatsRequest(StatsRequest {
                session: 1,
                round: 0,
                secure_aggregation: None,
            }))
            .unwrap(),
        );
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut out = Vec::new();
        for b in bytes {
            decoder.feed(&[b]);
            while let Some(m) = decoder.next_message().unwrap() {
                out.push(m);
            }
        }
        decoder.finish().unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], sample());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.feed(&(2048u32).to_be_bytes());
        assert_eq!(
            decoder.check(),
            Err(CodecError::FrameTooLarge {
                len: 2048,
                max: 1024
            })
        );
        let long = Message::Contribution(Contribution {
            session: 0,
            round: 0,
            kind: ContributionKind::Round,
            values: PlainFigures::Single(vec![0.5; 500]),
            privacy: None,
        });
        assert!(matches!(
            encode_frame(&long, 1024, &mut Vec::new()),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_garbage_and_trailing_bytes_are_errors() {
        let bytes = frame(&sample()).unwrap();
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        decoder.feed(&bytes[..bytes.len() - 1]);
        assert_eq!(decoder.next_message(), Ok(None));
        assert!(matches!(
            decoder.finish(),
            Err(CodecError::Truncated { .. })
        ));

        let mut garbage = FrameDecoder::new(MAX_FRAME_LEN);
        garbage.feed(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            garbage.next_message(),
            Err(CodecError::Malformed(_))
        ));

        let mut body = bytes[4..].to_vec();
        body.push(0);
        assert_eq!(
            decode_body(&body),
            Err(CodecError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn hostile_inner_length_cannot_allocate_past_the_cap() {
        // A Declined whose string claims 2^60 bytes: refused without allocating.
        let mut body = vec![9u8]; // variant index of Declined
        body.extend([0, 0]); // session 0, round 0 (varints)
        body.push(253); // varint marker for a u64 length
        body.extend((1u64 << 60).to_le_bytes());
        assert!(matches!(decode_body(&body), Err(CodecError::Malformed(_))));
    }
}
