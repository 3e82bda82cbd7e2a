//! One request/answer exchange with a node, on a fresh bidirectional stream.

use medfed_certs::channel::{ChannelError, MessageReader, send_message};
use medfed_protocol::codec::MAX_FRAME_LEN;
use medfed_protocol::messages::{Message, ModelReceived, RefusalReason};
use medfed_protocol::model::Model;
use medfed_protocol::transfer::split_model;

use crate::registry::NodeHandle;

/// Sends `request` and returns the node's single answer.
pub async fn request(node: &NodeHandle, request: &Message) -> Result<Message, ExchangeError> {
    let (mut send, recv) = node
        .connection
        .open_bi()
        .await
        .map_err(|e| ExchangeError::Connection(e.to_string()))?;
    send_message(&mut send, request).await?;
    // The stream only ends once both directions have; ignore a node that already reset it.
    let _ = send.finish();
    read_answer(node, recv).await
}

/// Sends the model in chunks on its own stream and waits for the node to confirm its hash.
pub async fn push_model(
    node: &NodeHandle,
    model: &Model,
    session: u64,
    round: u64,
) -> Result<(), ExchangeError> {
    let (offer, chunks) = split_model(model, session, round);
    let hash = offer.hash;
    let (mut send, recv) = node
        .connection
        .open_bi()
        .await
        .map_err(|e| ExchangeError::Connection(e.to_string()))?;
    send_message(&mut send, &Message::ModelOffer(offer)).await?;
    for chunk in chunks {
        send_message(&mut send, &Message::ModelChunk(chunk)).await?;
    }
    let _ = send.finish();
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

async fn read_answer(node: &NodeHandle, recv: quinn::RecvStream) -> Result<Message, ExchangeError> {
    let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
    let answer = read_single(&mut reader).await;
    node.add_received(reader.bytes_received());
    answer
}

/// Reads exactly one message and the end of the stream: anything after it is a violation.
async fn read_single(reader: &mut MessageReader) -> Result<Message, ExchangeError> {
    let answer = reader.expect().await?;
    if let Some(extra) = reader.next().await? {
        return Err(ExchangeError::Unexpected {
            got: extra.kind(),
            expected: "end of stream",
        });
    }
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
    /// The answer is of the right kind but its contents are wrong.
    #[error("node's answer rejected: {0}")]
    Rejected(RefusalReason),
    /// The node's secure-aggregation message broke the protocol.
    #[error("secure aggregation: {0}")]
    SecureAggregation(String),
    /// The node declined the round.
    #[error("node declined: {0}")]
    Declined(String),
    /// No answer before the round deadline.
    #[error("no answer before the round deadline")]
    Deadline,
}
