//! Framing: each message is a 4-byte big-endian length followed by its bincode 2 encoding.
//!
//! Decoding is incremental: feed whatever bytes arrived into a [`FrameDecoder`], then take whole
//! messages out. "Is a whole frame buffered?" ([`FrameDecoder::check`]) is answered apart from "parse
//! it", and a frame that declares more than the cap is refused from its header alone, before its
//! body is buffered. Trailing bytes inside a frame are an error.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;

use crate::messages::Message;
use crate::secagg::{InputPiece, MaskedInputChunk, PieceHeader, add_le_words};

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
        let Some(declared) = self.declared_len() else {
            return Ok(None);
        };
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
        match self.next_frame()? {
            Some(body) => decode_body(&body).map(Some),
            None => Ok(None),
        }
    }

    /// Takes the next whole frame's body (without its length prefix) out of the buffer, if one
    /// is there, undecoded: for [`InputPieceFrame::parse`], then [`decode_body`].
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, CodecError> {
        let Some(total) = self.check()? else {
            return Ok(None);
        };
        let mut frame = self.buf.split_to(total);
        frame.advance(HEADER_LEN);
        Ok(Some(frame.freeze()))
    }

    /// The body length the next frame's header declares, once its 4 bytes are buffered.
    pub fn declared_len(&self) -> Option<usize> {
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
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

/// A [`Message::SecAggInputChunk`] frame read in place: its header decoded, its words left in
/// the frame's bytes, to be added from there into the coordinator's sum
/// ([`InputPiece::add_to`]) without being copied into a vector first.
#[derive(Clone, Debug)]
pub struct InputPieceFrame {
    body: Bytes,
    header: PieceHeader,
    words: Range<usize>,
}

/// The fields of a [`MaskedInputChunk`] as the wire has them, its words borrowed.
#[derive(Deserialize)]
struct BorrowedPiece<'a> {
    session: u64,
    round: u64,
    offset: u32,
    total: u32,
    #[serde(borrow)]
    values: &'a [u8],
}

impl InputPieceFrame {
    /// Reads a frame body: `Ok(None)` if it holds another kind of message (decode it with
    /// [`decode_body`]); an error if it is a masked-input piece that does not decode, has a
    /// partial word or trailing bytes, exactly as [`decode_body`] would refuse it.
    pub fn parse(body: Bytes) -> Result<Option<Self>, CodecError> {
        let malformed = |e: bincode::error::DecodeError| CodecError::Malformed(e.to_string());
        let (variant, _) =
            bincode::serde::decode_from_slice::<u32, _>(&body, config()).map_err(malformed)?;
        if Some(variant) != input_chunk_variant() {
            return Ok(None);
        }
        let ((_, piece), used) = bincode::serde::borrow_decode_from_slice::<
            (u32, BorrowedPiece<'_>),
            _,
        >(&body, config())
        .map_err(malformed)?;
        if used != body.len() {
            return Err(CodecError::TrailingBytes {
                extra: body.len() - used,
            });
        }
        if !piece.values.len().is_multiple_of(4) {
            return Err(CodecError::Malformed(format!(
                "{} bytes is not a whole number of words",
                piece.values.len()
            )));
        }
        // The words are the message's last field: they end the body.
        let words = body.len() - piece.values.len()..body.len();
        let header = PieceHeader {
            session: piece.session,
            round: piece.round,
            offset: piece.offset,
            total: piece.total,
        };
        Ok(Some(Self {
            body,
            header,
            words,
        }))
    }

    /// The piece's words, as little-endian bytes.
    pub fn word_bytes(&self) -> &[u8] {
        self.body.get(self.words.clone()).unwrap_or_default()
    }
}

impl InputPiece for InputPieceFrame {
    fn header(&self) -> PieceHeader {
        self.header
    }

    fn word_count(&self) -> usize {
        self.words.len() / 4
    }

    fn add_to(&self, sum: &mut [u32]) {
        add_le_words(sum, self.word_bytes());
    }
}

/// The index bincode gives [`Message::SecAggInputChunk`] on the wire (found once, by encoding
/// one: it follows the enum's order).
fn input_chunk_variant() -> Option<u32> {
    static VARIANT: OnceLock<Option<u32>> = OnceLock::new();
    *VARIANT.get_or_init(|| {
        let empty = Message::SecAggInputChunk(MaskedInputChunk {
            session: 0,
            round: 0,
            offset: 0,
            total: 0,
            values: Vec::new(),
        });
        let body = bincode::serde::encode_to_vec(&empty, config()).ok()?;
        bincode::serde::decode_from_slice::<u32, _>(&body, config())
            .ok()
            .map(|(variant, _)| variant)
    })
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
        let first_len = frame(&sample()).unwrap().len() - HEADER_LEN;
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut out = Vec::new();
        for (i, b) in bytes.into_iter().enumerate() {
            // The first frame's length is known from its header's fourth byte on.
            let declared = (i >= HEADER_LEN).then_some(first_len);
            if out.is_empty() {
                assert_eq!(decoder.declared_len(), declared, "byte {i}");
            }
            decoder.feed(&[b]);
            while let Some(m) = decoder.next_message().unwrap() {
                out.push(m);
            }
        }
        decoder.finish().unwrap();
        assert_eq!(decoder.declared_len(), None);
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

    fn piece(offset: u32, total: u32, values: Vec<u32>) -> MaskedInputChunk {
        MaskedInputChunk {
            session: 5,
            round: 2,
            offset,
            total,
            values,
        }
    }

    /// The body of `message`'s frame (without its length prefix).
    fn body(message: &Message) -> Vec<u8> {
        frame(message).unwrap()[HEADER_LEN..].to_vec()
    }

    #[test]
    fn an_input_piece_is_read_in_place_and_sums_as_decoded() {
        let chunk = piece(3, 10, vec![1, u32::MAX, 0x0102_0304, 7]);
        let body = Bytes::from(body(&Message::SecAggInputChunk(chunk.clone())));
        let frame = InputPieceFrame::parse(body.clone()).unwrap().unwrap();
        assert_eq!(frame.header(), chunk.header());
        assert_eq!(
            frame.header(),
            PieceHeader {
                session: 5,
                round: 2,
                offset: 3,
                total: 10
            }
        );
        assert_eq!(frame.word_count(), 4);
        let (mut in_place, mut decoded) = (vec![5u32; 4], vec![5u32; 4]);
        frame.add_to(&mut in_place);
        let Message::SecAggInputChunk(back) = decode_body(&body).unwrap() else {
            panic!("a piece decodes as a piece");
        };
        back.add_to(&mut decoded);
        assert_eq!(in_place, decoded);
        assert_eq!(in_place, vec![6, 4, 0x0102_0309, 12]);
        // A shorter sum takes only the words it has.
        let mut short = vec![0u32; 2];
        frame.add_to(&mut short);
        assert_eq!(short, vec![1, u32::MAX]);
    }

    #[test]
    fn other_messages_are_left_to_decode_body() {
        assert!(
            InputPieceFrame::parse(Bytes::from(body(&sample())))
                .unwrap()
                .is_none()
        );
        let input = Message::SecAggInput(crate::secagg::MaskedInput {
            session: 5,
            round: 2,
            values: vec![1, 2, 3],
        });
        assert!(
            InputPieceFrame::parse(Bytes::from(body(&input)))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_input_pieces_are_errors_as_decode_body_finds_them() {
        let good = body(&Message::SecAggInputChunk(piece(0, 4, vec![9, 8, 7, 6])));
        // Truncated anywhere: in the header, in the words, or with nothing at all.
        for cut in [0, 1, 3, good.len() - 5, good.len() - 1] {
            let truncated = Bytes::copy_from_slice(&good[..cut]);
            assert!(decode_body(&truncated).is_err());
            assert!(
                matches!(
                    InputPieceFrame::parse(truncated),
                    Err(CodecError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        // Trailing bytes after the words.
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            InputPieceFrame::parse(Bytes::from(long.clone())).unwrap_err(),
            decode_body(&long).unwrap_err()
        );
        // A byte string that is not a whole number of words: its length says 15 bytes.
        let words_at = good.len() - 16;
        let mut partial = good[..words_at - 1].to_vec();
        partial.push(15);
        partial.extend_from_slice(&good[words_at..good.len() - 1]);
        assert!(decode_body(&partial).is_err());
        assert!(matches!(
            InputPieceFrame::parse(Bytes::from(partial)),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn frames_come_out_whole_and_undecoded() {
        let chunk = Message::SecAggInputChunk(piece(0, 2, vec![1, 2]));
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let bytes = frame(&chunk).unwrap();
        decoder.feed(&bytes[..bytes.len() - 1]);
        assert_eq!(decoder.next_frame().unwrap(), None);
        decoder.feed(&bytes[bytes.len() - 1..]);
        let body = decoder.next_frame().unwrap().unwrap();
        assert_eq!(decode_body(&body).unwrap(), chunk);
        assert!(decoder.finish().is_ok());
    }
}
