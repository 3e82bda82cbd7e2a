//! One request/answer exchange with a node, on a fresh bidirectional stream.

use std::time::Duration;

use bytes::Bytes;
use medfed_protocol::codec::{self, CodecError, InputPieceFrame, MAX_FRAME_LEN};
use medfed_protocol::messages::{Message, ModelOffer, ModelReceived, RefusalReason};
use medfed_protocol::model::{Model, ModelHash};
use medfed_protocol::round::LeftOut;
use medfed_protocol::secagg::{INPUT_CHUNK_WORDS, InputPiece, MaskedInput, PieceHeader};
use medfed_protocol::transfer::{model_chunk, model_offer};
use medfed_transport::{ChannelError, MessageReader, RecvStream, send_message, send_shared_frames};
use tokio::sync::mpsc;
use tracing::info;

use crate::registry::NodeHandle;

/// Where the pieces of a masked input go as they arrive: the driver, which adds each to the
/// round's sum straight from its frame's bytes, with the index of the participant they came
/// from.
pub type InputPieces = mpsc::Sender<(u16, InputPieceFrame)>;

/// Sends `request` and returns the node's single answer. A masked input sent in pieces is
/// passed on to `pieces`, one piece at a time as it arrives (participant `index`'s), and never
/// held whole; the answer is then the input's header, its figures being already in the sum.
pub async fn request(
    node: &NodeHandle,
    request: &Message,
    pieces: Option<(&InputPieces, u16)>,
) -> Result<Message, ExchangeError> {
    let (mut send, recv) = node
        .connection
        .open_bi()
        .await
        .map_err(|e| ExchangeError::Connection(e.to_string()))?;
    send_message(&mut send, request).await?;
    // The stream only ends once both directions have; ignore a node that already reset it.
    send.finish().await;
    let mut reader = Counted::new(node, MessageReader::new(recv, MAX_FRAME_LEN));
    let answer = match pieces {
        // A masked input's pieces are read in place, not decoded into vectors.
        Some((pieces, index)) => match reader.next_piece(pieces).await? {
            (Answer::Piece(first), slot) => {
                return pass_on_pieces(&mut reader, (first, slot), pieces, index).await;
            }
            (Answer::Message(answer), _) => *answer,
        },
        None => reader.next().await?.ok_or(ChannelError::StreamEnded)?,
    };
    reader.end_of_stream().await.map(|()| answer)
}

/// How long a node may take to send a frame of its masked input once the coordinator has
/// given it a slot: a piece of 256 KiB needs 140 kbit/s.
const PIECE_READ_LIMIT: Duration = Duration::from_secs(15);

/// The longest frame that may answer a share delivery: a masked input's piece of
/// [`INPUT_CHUNK_WORDS`] words and its header (a whole masked input, a refusal or a decline
/// fit too, if no longer).
const MAX_PIECE_FRAME: usize = 4 * INPUT_CHUNK_WORDS + 1024;

/// A frame of an answer that may come in pieces.
enum Answer {
    /// A piece of a masked input, read in place.
    Piece(InputPieceFrame),
    /// Any other message, decoded.
    Message(Box<Message>),
}

/// A reader whose bytes are added to the node's count as they are read, so that an exchange
/// the round stops waiting for (its last piece already summed) has counted them all.
struct Counted<'a> {
    node: &'a NodeHandle,
    reader: MessageReader,
    counted: u64,
}

impl<'a> Counted<'a> {
    fn new(node: &'a NodeHandle, reader: MessageReader) -> Self {
        Self {
            node,
            reader,
            counted: 0,
        }
    }

    /// Adds the bytes read since the last count to the node's.
    fn count(&mut self) {
        let read = self.reader.bytes_received();
        self.node.add_received(read - self.counted);
        self.counted = read;
    }

    /// The next message (`None` at the end of the stream), its bytes counted.
    async fn next(&mut self) -> Result<Option<Message>, ExchangeError> {
        let next = self.reader.next().await;
        self.count();
        Ok(next?)
    }

    /// The next frame, which must be there: a masked input's piece read in place, or else
    /// the message decoded, with the slot in `pieces` it is to go to. Its bytes counted.
    ///
    /// The slot is taken once the frame's header is in and before the rest is read: the
    /// frames held by the coordinator, being read or waiting to be summed, are as many as
    /// `pieces` has slots whatever the number of nodes, and none is longer than a piece's
    /// ([`MAX_PIECE_FRAME`]; a longer one is refused unread). The rest of each node's input
    /// waits in its stream, under flow control (up to the stream's receive window). A node
    /// must then send the frame within [`PIECE_READ_LIMIT`], so that a node stalling inside a
    /// piece holds its slot no longer.
    async fn next_piece<'p>(
        &mut self,
        pieces: &'p InputPieces,
    ) -> Result<(Answer, mpsc::Permit<'p, (u16, InputPieceFrame)>), ExchangeError> {
        let declared = self.reader.next_frame_len().await;
        self.count();
        let len = declared?.ok_or(ChannelError::StreamEnded)?;
        if len > MAX_PIECE_FRAME {
            return Err(ExchangeError::Channel(ChannelError::Codec(
                CodecError::FrameTooLarge {
                    len,
                    max: MAX_PIECE_FRAME,
                },
            )));
        }
        let slot = pieces.reserve().await.map_err(|_| round_moved_on())?;
        let next = tokio::time::timeout(PIECE_READ_LIMIT, self.reader.next_frame()).await;
        self.count();
        let next = next.map_err(|_| {
            ExchangeError::Connection(format!(
                "a frame of the masked input took over {} s to arrive",
                PIECE_READ_LIMIT.as_secs()
            ))
        })?;
        let body = next?.ok_or(ChannelError::StreamEnded)?;
        let framing = |e: CodecError| ExchangeError::Channel(ChannelError::Codec(e));
        let answer = match InputPieceFrame::parse(body.clone()).map_err(framing)? {
            Some(piece) => Answer::Piece(piece),
            None => Answer::Message(Box::new(codec::decode_body(&body).map_err(framing)?)),
        };
        Ok((answer, slot))
    }

    /// Expects the end of the stream: anything more is a violation.
    async fn end_of_stream(&mut self) -> Result<(), ExchangeError> {
        match self.next().await? {
            None => Ok(()),
            Some(extra) => Err(ExchangeError::Unexpected {
                got: extra.kind(),
                expected: "end of stream",
            }),
        }
    }
}

/// Passes a masked input's pieces on, from `first` (with its slot), until the last, then
/// expects the end of the stream; returns the input's header.
async fn pass_on_pieces(
    reader: &mut Counted<'_>,
    first: (InputPieceFrame, mpsc::Permit<'_, (u16, InputPieceFrame)>),
    pieces: &InputPieces,
    index: u16,
) -> Result<Message, ExchangeError> {
    let PieceHeader { session, round, .. } = first.0.header();
    let (mut piece, mut slot) = first;
    loop {
        let header = piece.header();
        let last = header.offset as usize + piece.word_count() >= header.total as usize;
        slot.send((index, piece));
        if last {
            break;
        }
        (piece, slot) = match reader.next_piece(pieces).await? {
            (Answer::Piece(next), slot) => (next, slot),
            (Answer::Message(other), _) => {
                return Err(ExchangeError::Unexpected {
                    got: other.kind(),
                    expected: "secagg_input_chunk",
                });
            }
        };
    }
    reader.end_of_stream().await?;
    Ok(Message::SecAggInput(MaskedInput {
        session,
        round,
        values: Vec::new(),
    }))
}

/// The round no longer takes pieces: it ended (its deadline passed, or it failed).
fn round_moved_on() -> ExchangeError {
    ExchangeError::Connection("the round moved on".into())
}

/// A model split into its offer and chunks and framed once, to be pushed to every node that
/// lacks it: one hash and one encoding per round rather than one per node (with 100 nodes and
/// 10^5 parameters, the per-node copies were a third of the coordinator's CPU time and 40 MB).
/// Only the small offer is framed per node, since it says where that node's push starts. The
/// frames are made one chunk at a time straight from the parameters, so building a push holds
/// the model's bytes once; the round drops it once its requests are answered.
#[derive(Debug)]
pub struct ModelPush {
    offer: ModelOffer,
    /// Each chunk's frame, back to back, and where each starts; `Err` holds why the model could
    /// not be framed (a chunk over the frame cap: not with the chunk size `model_chunk` uses).
    /// The frames are shared by every node's stream, not copied into each (a QUIC stream keeps
    /// the bytes it has not had acknowledged: 20 pushes at once held 38 MB of copies).
    chunks: Result<(Bytes, Vec<usize>), String>,
}

impl ModelPush {
    /// Splits and frames `model` for `round` of `session`.
    pub fn new(model: &Model, session: u64, round: u64) -> Self {
        let offer = model_offer(model, session, round);
        // Each frame is the chunk's bytes and a few bytes of header.
        let mut out = Vec::with_capacity(4 * model.params.len() + 64 * offer.chunks as usize);
        let chunks = (0..offer.chunks)
            .filter_map(|index| model_chunk(model, session, round, index))
            .try_fold(Vec::new(), |mut starts, chunk| {
                starts.push(out.len());
                codec::encode_frame(&Message::ModelChunk(chunk), MAX_FRAME_LEN, &mut out)?;
                Ok::<_, CodecError>(starts)
            })
            .map(|starts| (Bytes::from(out), starts))
            .map_err(|e| e.to_string());
        Self { offer, chunks }
    }

    /// The hash of the model.
    pub fn hash(&self) -> ModelHash {
        self.offer.hash
    }
}

/// Sends the model in chunks on its own stream, from where a push of it cut short left the node
/// (its `Hello` said), and waits for the node to confirm its hash.
pub async fn push_model(node: &NodeHandle, model: &ModelPush) -> Result<(), ExchangeError> {
    let framing =
        |e: &String| ExchangeError::Channel(ChannelError::Codec(CodecError::Encode(e.clone())));
    let (frames, starts) = model.chunks.as_ref().map_err(framing)?;
    let (session, round, hash) = (model.offer.session, model.offer.round, model.offer.hash);
    let first_chunk = node.resume_point(hash, model.offer.chunks);
    let offer = ModelOffer {
        first_chunk,
        ..model.offer.clone()
    };
    let from = starts
        .get(first_chunk as usize)
        .copied()
        .unwrap_or(frames.len());
    if first_chunk > 0 {
        info!(node = %node.identity, first_chunk, chunks = offer.chunks, "resuming a model push cut short");
    }
    let (mut send, recv) = node
        .connection
        .open_bi()
        .await
        .map_err(|e| ExchangeError::Connection(e.to_string()))?;
    send_message(&mut send, &Message::ModelOffer(offer)).await?;
    send_shared_frames(&mut send, frames.slice(from..)).await?;
    send.finish().await;
    match read_answer(node, recv).await? {
        Message::ModelReceived(ModelReceived {
            session: s,
            round: r,
            hash: h,
        }) if s == session && r == round && h == hash => {
            node.set_held_model(hash);
            Ok(())
        }
        Message::Refused(refused) => Err(ExchangeError::Refused(refused.reason)),
        other => Err(ExchangeError::Unexpected {
            got: other.kind(),
            expected: "model_received",
        }),
    }
}

/// Reads exactly one message and the end of the stream (anything after it is a violation),
/// its bytes counted for the node.
async fn read_answer(node: &NodeHandle, recv: RecvStream) -> Result<Message, ExchangeError> {
    let mut reader = Counted::new(node, MessageReader::new(recv, MAX_FRAME_LEN));
    let answer = reader.next().await?.ok_or(ChannelError::StreamEnded)?;
    reader.end_of_stream().await?;
    Ok(answer)
}

/// Why an exchange with a node failed. The node is left out of the round; the coordinator goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The connection failed or closed.
    #[error("connection lost: {0}")]
    Connection(String),
    /// The stream carried bad bytes.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The node refused the request.
    #[error("node refused: {0}")]
    Refused(RefusalReason),
    /// The node answered with the wrong kind of message.
    #[error("node sent {got}, expected {expected}")]
    Unexpected {
        /// Kind received.
        got: &'static str,
        /// Kind expected.
        expected: &'static str,
    },
}

impl From<ExchangeError> for LeftOut {
    fn from(error: ExchangeError) -> Self {
        match error {
            ExchangeError::Connection(detail) => Self::Connection { detail },
            ExchangeError::Channel(e) => Self::Framing {
                detail: e.to_string(),
            },
            ExchangeError::Refused(reason) => Self::Refused { reason },
            ExchangeError::Unexpected { got, expected } => Self::Unexpected {
                got: got.to_owned(),
                expected: expected.to_owned(),
            },
        }
    }
}
