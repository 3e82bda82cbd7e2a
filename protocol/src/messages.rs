//! Every message that crosses the wire, in either direction.
//!
//! Each exchange is one bidirectional QUIC stream opened by the coordinator (except the node's
//! opening `Hello`): a request, then the node's answer. Every request carries the coordinator's
//! `session` (fresh random per coordinator start) and the `round`, and every answer echoes both,
//! so a message from another round, another coordinator run, or a replay is recognised and
//! refused.

use serde::{Deserialize, Serialize};

use crate::evaluation::{DecisionThreshold, ScoreBins};
use crate::manifest::{PrivacyMode, SignedManifest};
use crate::model::{ModelHash, ModelSpec};
use crate::secagg::encoding::UpdateEncoding;
use crate::secagg::{
    ConsistencyRequest, ConsistencySignature, KeyAdvertisement, KeyDirectory, MaskedInput,
    MaskedInputChunk, RoundParams, ShareDelivery, SharePackage, UnmaskRequest, UnmaskResponse,
};
use crate::stats::Standardization;
use crate::task::TrainingPlan;

/// Version of the wire protocol; part of the ALPN string.
pub const PROTOCOL_VERSION: u32 = 12;

/// QUIC application close code with which a coordinator that has given up its task closes
/// every connection (the close reason says why): a node stops there, with that reason, instead of
/// reconnecting to a coordinator that will not come back.
pub const CLOSE_TASK_STOPPED: u32 = 4;

/// ALPN identifier negotiated in the TLS handshake. A peer speaking another version fails the
/// handshake with TLS's `no_application_protocol` alert.
pub const ALPN: &[u8] = b"medfed/12";

/// Size of one model chunk on the model stream.
pub const MODEL_CHUNK_LEN: usize = 1 << 20;

/// Any message of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Node → coordinator, first message on the first stream.
    Hello(Hello),
    /// Coordinator → node: admitted.
    Welcome(Welcome),
    /// Either side: the request or the connection is refused, with the reason.
    Refused(Refused),
    /// Coordinator → node: send your federated-statistics contribution.
    StatsRequest(StatsRequest),
    /// Coordinator → node: the model of a round follows in chunks on this stream.
    ModelOffer(ModelOffer),
    /// Coordinator → node: one piece of the model.
    ModelChunk(ModelChunk),
    /// Node → coordinator: the model arrived whole and its hash checks out.
    ModelReceived(ModelReceived),
    /// Coordinator → node: evaluate (and train, if asked) on the round's model.
    RoundStart(RoundStart),
    /// Node → coordinator: figures to be summed over nodes.
    Contribution(Contribution),
    /// Node → coordinator: the node sits this round out.
    Declined(Declined),
    /// Coordinator → node: training is over.
    Finished(Finished),
    /// Node → coordinator: its signed round keys (the answer to a request under secure
    /// aggregation, once its figures are ready).
    SecAggKeys(RoundKeys),
    /// Coordinator → node: everyone's signed keys.
    SecAggDirectory(KeyDirectory),
    /// Node → coordinator: its encrypted shares for its neighbours.
    SecAggShares(SharePackage),
    /// Coordinator → node: the shares addressed to it.
    SecAggDelivery(ShareDelivery),
    /// Node → coordinator: its masked figures.
    SecAggInput(MaskedInput),
    /// Coordinator → node: who sent masked figures, for the node to sign.
    SecAggConsistency(ConsistencyRequest),
    /// Node → coordinator: its signature on the survivor set.
    SecAggSignature(ConsistencySignature),
    /// Coordinator → node: who sent masked figures, with the survivors' signatures on it.
    SecAggUnmask(UnmaskRequest),
    /// Node → coordinator: the shares that remove the masks.
    SecAggUnmaskShares(UnmaskResponse),
    /// Coordinator → node: send the evaluation vector you put into the final evaluation's sum
    /// (only to a hospital the manifest lists in [`crate::manifest::ReleasePlan::site_figures`]).
    SiteFigureRequest(SiteFigureRequest),
    /// Node → coordinator: its own evaluation vector of the final evaluation.
    SiteFigure(SiteFigure),
    /// Node → coordinator: one consecutive piece of its masked figures. A node sends its
    /// masked input as these, in order, on one stream, so that the coordinator adds each piece
    /// to the sum as it comes and never holds a whole input.
    SecAggInputChunk(MaskedInputChunk),
}

impl Message {
    /// The round a message belongs to, where it carries one (`Hello` and `Welcome` do not).
    pub fn round(&self) -> Option<u64> {
        Some(match self {
            Self::Hello(_) | Self::Welcome(_) => return None,
            Self::Refused(m) => m.round,
            Self::StatsRequest(m) => m.round,
            Self::ModelOffer(m) => m.round,
            Self::ModelChunk(m) => m.round,
            Self::ModelReceived(m) => m.round,
            Self::RoundStart(m) => m.round,
            Self::Contribution(m) => m.round,
            Self::Declined(m) => m.round,
            Self::Finished(m) => m.round,
            Self::SecAggKeys(m) => m.keys.round,
            Self::SecAggDirectory(m) => m.round,
            Self::SecAggShares(m) => m.round,
            Self::SecAggDelivery(m) => m.round,
            Self::SecAggInput(m) => m.round,
            Self::SecAggConsistency(m) => m.round,
            Self::SecAggSignature(m) => m.round,
            Self::SecAggUnmask(m) => m.round,
            Self::SecAggUnmaskShares(m) => m.round,
            Self::SiteFigureRequest(m) => m.round,
            Self::SiteFigure(m) => m.round,
            Self::SecAggInputChunk(m) => m.round,
        })
    }

    /// Short name of the message kind, for logs and the egress log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Welcome(_) => "welcome",
            Self::Refused(_) => "refused",
            Self::StatsRequest(_) => "stats_request",
            Self::ModelOffer(_) => "model_offer",
            Self::ModelChunk(_) => "model_chunk",
            Self::ModelReceived(_) => "model_received",
            Self::RoundStart(_) => "round_start",
            Self::Contribution(_) => "contribution",
            Self::Declined(_) => "declined",
            Self::Finished(_) => "finished",
            Self::SecAggKeys(_) => "secagg_keys",
            Self::SecAggDirectory(_) => "secagg_directory",
            Self::SecAggShares(_) => "secagg_shares",
            Self::SecAggDelivery(_) => "secagg_delivery",
            Self::SecAggInput(_) => "secagg_input",
            Self::SecAggConsistency(_) => "secagg_consistency",
            Self::SecAggSignature(_) => "secagg_signature",
            Self::SecAggUnmask(_) => "secagg_unmask",
            Self::SecAggUnmaskShares(_) => "secagg_unmask_shares",
            Self::SiteFigureRequest(_) => "site_figure_request",
            Self::SiteFigure(_) => "site_figure",
            Self::SecAggInputChunk(_) => "secagg_input_chunk",
        }
    }
}

/// A node introduces itself. Its identity is not in the message: it is the subject of the
/// certificate it presented in the TLS handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the node.
    pub protocol_version: u32,
    /// Digest of the node's data schema; must equal the coordinator's.
    pub schema_digest: [u8; 32],
    /// Hash of the model the node already holds, if any (saves a download after a reconnect).
    pub model_hash: Option<ModelHash>,
    /// The model a push cut short left the node with: the push of that model resumes after
    /// the chunks the node verified (saves re-sending them after a reconnect).
    pub partial_model: Option<PartialModel>,
}

/// How much of a model a node holds: its first `chunks` chunks, each checked against the
/// offer's digest of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialModel {
    /// Hash of the whole model.
    pub hash: ModelHash,
    /// Chunks held, from the first.
    pub chunks: u32,
}

/// The coordinator admits a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Random identifier of this coordinator run.
    pub session: u64,
    /// The identity the coordinator read from the node's certificate.
    pub identity: String,
    /// The task's whole plan (model, rounds, hyper-parameters, secure aggregation, releases),
    /// signed with the coordinator's report key; the node checks it before it joins.
    pub manifest: SignedManifest,
}

/// Why a request or a connection was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    /// Session of the refused request, when known.
    pub session: u64,
    /// Round of the refused request, when known.
    pub round: u64,
    /// What was wrong.
    pub reason: RefusalReason,
}

/// Reasons to refuse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    ProtocolVersion {
        /// Version the peer announced.
        theirs: u32,
        /// Version this side speaks.
        ours: u32,
    },
    /// The node's data schema differs from the consortium's.
    #[error("the node's data schema does not match the consortium's (digest {theirs} vs {ours})")]
    SchemaMismatch {
        /// Hex digest of the node's schema.
        theirs: String,
        /// Hex digest of the coordinator's schema.
        ours: String,
    },
    /// Another connection already holds this identity.
    #[error("node {identity} is already connected")]
    DuplicateIdentity {
        /// The identity.
        identity: String,
    },
    /// A message that was not expected at this point of the exchange.
    #[error("unexpected {got} message (expected {expected})")]
    UnexpectedMessage {
        /// Kind received.
        got: String,
        /// Kind expected.
        expected: String,
    },
    /// A message from another coordinator run.
    #[error("message from session {got}, current session is {expected}")]
    WrongSession {
        /// Session in the message.
        got: u64,
        /// Current session.
        expected: u64,
    },
    /// A message for another round.
    #[error("message for round {got}, current round is {expected}")]
    WrongRound {
        /// Round in the message.
        got: u64,
        /// Current round.
        expected: u64,
    },
    /// A request for a round the node already answered in this session (a replay).
    #[error("round {round} was already answered in this session (replay)")]
    Replay {
        /// The repeated round.
        round: u64,
    },
    /// The model does not match its announced hash or the architecture.
    #[error("model rejected: {detail}")]
    BadModel {
        /// What was wrong.
        detail: String,
    },
    /// A contribution of the wrong kind, length or precision, or with non-finite values.
    #[error("contribution rejected: {detail}")]
    BadContribution {
        /// What was wrong.
        detail: String,
    },
    /// A secure-aggregation share relayed from another participant failed authentication (its
    /// ciphertext was altered, or it was not sealed for this participant): that participant
    /// should be left out of the round.
    #[error("the secure-aggregation share from participant {from} failed authentication")]
    ShareAuthentication {
        /// The sender's index in the round.
        from: u16,
    },
}

/// Request for the node's federated-statistics contribution over its training split: the count,
/// each numeric column's sum and sum of squares on its clipping grid, and each categorical
/// level's count, all integers, noised when the node noises them (see [`crate::stats`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsRequest {
    /// Coordinator run.
    pub session: u64,
    /// Always 0: statistics precede training round 1.
    pub round: u64,
    /// Secure aggregation of the statistics; `None` only if the consortium turned it off.
    pub secure_aggregation: Option<SecAggSetup>,
}

/// How the figures of one exchange are securely aggregated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecAggSetup {
    /// The participants, threshold and neighbour graph.
    pub params: RoundParams,
    /// Clipping bound and fixed-point bits, or quantisation, of the model update (other figures
    /// are encoded exactly).
    pub update_encoding: UpdateEncoding,
}

/// Announces a model, whose chunks from [`ModelOffer::first_chunk`] on follow on the same stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelOffer {
    /// Coordinator run.
    pub session: u64,
    /// Round whose model this is.
    pub round: u64,
    /// Architecture.
    pub spec: ModelSpec,
    /// Hash of the whole model ([`ModelHash::of`]).
    pub hash: ModelHash,
    /// Number of parameters.
    pub params: u64,
    /// Number of [`ModelChunk`]s the model is made of.
    pub chunks: u32,
    /// The first chunk sent on this stream: 0, or where a push of the same model to this node
    /// was cut short (the node's [`Hello::partial_model`]).
    pub first_chunk: u32,
    /// SHA-256 of each chunk's bytes, so that a node keeps only chunks it has checked.
    pub chunk_digests: Vec<[u8; 32]>,
}

/// A piece of a model: consecutive parameters as little-endian `f32`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelChunk {
    /// Coordinator run.
    pub session: u64,
    /// Round whose model this is.
    pub round: u64,
    /// Position of the chunk, from 0.
    pub index: u32,
    /// Parameter bytes (bincode writes a `Vec<u8>` as its length and the raw bytes).
    pub bytes: Vec<u8>,
}

/// The node holds the offered model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReceived {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// Hash the node computed over what it received.
    pub hash: ModelHash,
}

/// Opens a round at a node: evaluate the round's model on the held-out split, then, if `train`,
/// train locally from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundStart {
    /// Coordinator run.
    pub session: u64,
    /// Round number, from 1.
    pub round: u64,
    /// Which attempt at the round, from 1: a round restarted after too many dropouts is asked
    /// again as a new attempt, while a repeated request for the same attempt is a replay.
    pub attempt: u32,
    /// Hash of the model to start from; the node must hold exactly this model.
    pub model_hash: ModelHash,
    /// Whether to train (false: the final, evaluation-only round).
    pub train: bool,
    /// Whether to evaluate the round's starting model on the held-out split (the task's
    /// evaluation schedule, [`crate::manifest::ReleasePlan::evaluates`]); always true in the
    /// evaluation-only round.
    pub evaluate: bool,
    /// Bins of the evaluation's and the audit groups' score histograms (the manifest's).
    pub score_bins: ScoreBins,
    /// Threshold of the evaluation's and the audit groups' confusion matrices (the manifest's).
    pub decision_threshold: DecisionThreshold,
    /// Local training hyper-parameters.
    pub plan: TrainingPlan,
    /// Consortium-wide feature standardisation from the statistics round.
    pub standardization: Standardization,
    /// Secure aggregation of the round's figures; `None` only if the consortium turned it off.
    pub secure_aggregation: Option<SecAggSetup>,
}

/// Asks a hospital that opted in for its own site figure: the evaluation vector it put into the
/// sum of one attempt at the final evaluation (the evaluation-only round).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteFigureRequest {
    /// Coordinator run.
    pub session: u64,
    /// The final evaluation's round.
    pub round: u64,
    /// The attempt whose sum the coordinator kept.
    pub attempt: u32,
}

/// A hospital's own site figure: the evaluation block of its round vector (the evaluation
/// counts, then each audit group's, as [`crate::contribution::RoundLayout`] lays them out with
/// no update) exactly as it went into the final evaluation's sum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteFigure {
    /// Coordinator run.
    pub session: u64,
    /// The final evaluation's round.
    pub round: u64,
    /// The attempt it went into.
    pub attempt: u32,
    /// Whether the counts carry the hospital's evaluation noise (`false`: exact counts).
    pub noised: bool,
    /// The evaluation block.
    pub values: Vec<f64>,
}

/// What kind of vector a [`Contribution`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContributionKind {
    /// Federated statistics (`[n, sums…, sums of squares…, level counts…]`, integers; see
    /// [`crate::stats::StatsLayout`]).
    Stats,
    /// Round vector: evaluation counts, then (when training) the weighted update and its weight.
    Round,
}

/// The privacy a node declares it has spent, for the coordinator's records and the audit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpent {
    /// ε spent over the node's lifetime, this round included.
    pub epsilon: f64,
    /// The δ it is accounted at.
    pub delta: f64,
}

/// A node's first answer under secure aggregation: its signed round keys, and the privacy it
/// has spent (`None` if it does not train privately).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundKeys {
    /// The signed keys.
    pub keys: KeyAdvertisement,
    /// Declared privacy spent.
    pub privacy: Option<PrivacySpent>,
}

/// A vector that the coordinator only ever adds to the other nodes' vectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// Layout of `values`.
    pub kind: ContributionKind,
    /// The figures, at the precision the node sends them.
    pub values: PlainFigures,
    /// Declared privacy spent (`None` if the node does not train privately).
    pub privacy: Option<PrivacySpent>,
}

/// A plain contribution's figures, at the precision the node sends them (8 or 4 bytes a
/// figure on the wire). Under secure aggregation the figures travel as masked 32-bit words
/// instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PlainFigures {
    /// Exact `f64`: statistics, whose integer sums of squares can exceed `f32`'s exact range.
    Double(Vec<f64>),
    /// `f32`: round vectors. Their counts are small integers, exact in `f32`, and the update
    /// is computed from `f32` parameters.
    Single(Vec<f32>),
}

impl PlainFigures {
    /// Narrows `values` to [`PlainFigures::Single`], refusing a value that does not fit an
    /// `f32` (one that is not finite, or that rounds to infinity) rather than sending it as
    /// infinity.
    pub fn single(values: &[f64]) -> Result<Self, FigureOutOfRange> {
        values
            .iter()
            .enumerate()
            .map(|(index, &value)| {
                // Rounds to nearest; a finite value beyond `f32::MAX` becomes infinite.
                let narrow = value as f32;
                if narrow.is_finite() {
                    Ok(narrow)
                } else {
                    Err(FigureOutOfRange { index, value })
                }
            })
            .collect::<Result<_, _>>()
            .map(Self::Single)
    }

    /// Number of figures.
    pub fn len(&self) -> usize {
        match self {
            Self::Double(values) => values.len(),
            Self::Single(values) => values.len(),
        }
    }

    /// Whether there are no figures.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of the first figure that is not finite, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            Self::Double(values) => values.iter().position(|v| !v.is_finite()),
            Self::Single(values) => values.iter().position(|v| !v.is_finite()),
        }
    }

    /// Adds the figures, widened to `f64`, into `sum` element by element; figures beyond
    /// `sum`'s length are ignored.
    pub fn add_to(&self, sum: &mut [f64]) {
        match self {
            Self::Double(values) => {
                for (s, v) in sum.iter_mut().zip(values) {
                    *s += v;
                }
            }
            Self::Single(values) => {
                for (s, v) in sum.iter_mut().zip(values) {
                    *s += f64::from(*v);
                }
            }
        }
    }

    /// The figures widened to `f64` (a copy).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Self::Double(values) => values.clone(),
            Self::Single(values) => values.iter().copied().map(f64::from).collect(),
        }
    }
}

/// A figure does not fit the `f32` a round vector is sent in.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("figure {index} ({value}) does not fit in an f32")]
pub struct FigureOutOfRange {
    /// Position of the figure.
    pub index: usize,
    /// The figure.
    pub value: f64,
}

/// The node sits the round out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Declined {
    /// Coordinator run.
    pub session: u64,
    /// Round.
    pub round: u64,
    /// Why, from a fixed set: the node's free-text details stay in its own log, since text
    /// shaped by the data could tell the coordinator something about the patients.
    pub reason: DeclineReason,
}

/// Why a node declines a request. Every reason depends only on the request, the node's policy
/// and its ledger (which the coordinator's own requests determine), never on patient data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum DeclineReason {
    /// The round would take the node past its own privacy budget. Such a node declines every
    /// later training round too, so the coordinator stops training once too few nodes have budget
    /// left, rather than retrying.
    #[error("the round would exceed the hospital's privacy budget")]
    BudgetSpent,
    /// The request breaks the hospital's policy.
    #[error("the hospital's policy refuses the request: {0}")]
    Policy(PolicyViolation),
    /// The node's local computation failed (the details are in the node's own log).
    #[error("the node's local computation failed")]
    LocalFailure,
    /// Secure aggregation was aborted at the node (the details are in the node's own log).
    #[error("secure aggregation was aborted at the node")]
    SecureAggregationAborted,
}

/// A part of the hospital's policy a request breaks (see the node's `[policy]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// Figures were requested without secure aggregation, which the hospital requires.
    #[error("figures were requested in the clear; the hospital requires secure aggregation")]
    PlaintextRequested,
    /// The sum would hold fewer other hospitals than the hospital requires.
    #[error(
        "the sum would hold {others} other hospitals; the hospital requires at least {required}"
    )]
    TooFewOtherHospitals {
        /// Other hospitals in the sum.
        others: usize,
        /// The hospital's minimum.
        required: usize,
    },
    /// The secure-aggregation threshold is below the hospital's floor.
    #[error("threshold {threshold} of {holders} share holders is below the hospital's floor")]
    ThresholdBelowFloor {
        /// The threshold asked for.
        threshold: usize,
        /// Holders of each secret.
        holders: usize,
    },
    /// A participant is not on the consortium's member list the hospital holds, or its
    /// certificate's key is not the one pinned there.
    #[error("participant {identity} is not a pinned consortium member")]
    NotAMember {
        /// The participant's identity as the request names it.
        identity: String,
    },
    /// The node has already released figures for this many attempts at the round.
    #[error("the round was already attempted {cap} times (the hospital's cap)")]
    AttemptCapPerRound {
        /// The cap.
        cap: u32,
    },
    /// The node has already spent its retries for the task.
    #[error("the hospital's {cap} retries for the task are spent")]
    AttemptCapPerTask {
        /// The cap.
        cap: u32,
    },
    /// Exact (un-noised) figures that were already released would be released again into a sum
    /// over other hospitals: differencing two such sums would isolate one hospital's figures.
    #[error("these exact figures were already released into a sum over other hospitals")]
    AlreadyReleased,
    /// The standardisation sent does not fit the schema or is not a valid one.
    #[error("the standardisation does not fit the schema")]
    BadStandardization,
    /// The task's privacy mode is not the hospital's: a hospital in distributed mode takes part
    /// only in a task that plans distributed DP, and one in local mode only in one that does
    /// not.
    #[error("the task's privacy mode is {task}; the hospital's is {node}")]
    PrivacyMode {
        /// The hospital's `[privacy] mode` (local without a `[privacy]` section).
        node: PrivacyMode,
        /// The task's.
        task: PrivacyMode,
    },
    /// The request departs from the task manifest the hospital approved (another round, plan
    /// or secure-aggregation setup); what differs stays in the node's log.
    #[error("the request departs from the approved task manifest")]
    DepartsFromManifest,
    /// An evaluation sum would hold too few hospitals that do not also release their own site
    /// figure: subtracting the revealed figures from the sum would leave a sum over fewer
    /// other hospitals than the hospital requires.
    #[error(
        "the evaluation sum would hold {others} other hospitals that keep their figures to \
         themselves (the manifest's site-figure hospitals subtracted); the hospital requires \
         at least {required}"
    )]
    RevealersLeaveTooFew {
        /// Other hospitals in the sum that release no site figure.
        others: usize,
        /// The hospital's minimum.
        required: usize,
    },
    /// A site figure was asked of a hospital whose policy, or whose approved manifest, does
    /// not release one.
    #[error("this hospital does not release its site figure")]
    SiteFigureNotOptedIn,
    /// A site figure was asked for an evaluation this hospital put no figures into, or for
    /// another one than the one it already released.
    #[error("no site figure of that evaluation can be released")]
    SiteFigureUnavailable,
}

/// Training is over; the node may disconnect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// Coordinator run.
    pub session: u64,
    /// Last completed round.
    pub round: u64,
    /// Hash of the final global model.
    pub model_hash: ModelHash,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{FrameDecoder, MAX_FRAME_LEN, frame};
    use crate::model::{Model, ModelKind};
    use crate::secagg::fixed_point::FixedPoint;
    use crate::transfer::split_model;

    /// One message of every kind, with every nested type filled in.
    fn every_message() -> Vec<Message> {
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![4, 3] },
            input_dim: 5,
        };
        let model = Model::new(spec.clone(), spec.initial_parameters(1)).unwrap();
        let (offer, chunks) = split_model(&model, 7, 2);
        let participants = vec![crate::secagg::Participant {
            index: 1,
            identity: "h".into(),
        }];
        let setup = SecAggSetup {
            params: RoundParams {
                session: 7,
                round: 2,
                participants,
                threshold: 2,
                neighbours: None,
                graph_seed: [1; 32],
                vector_len: 10,
                encoding_digest: [2; 32],
            },
            update_encoding: UpdateEncoding::Fixed(FixedPoint {
                clip: 1.0,
                fractional_bits: 16,
            }),
        };
        let standardization = Standardization {
            mean: vec![1.5, 0.0],
            std: vec![2.0, 1.0],
        };
        vec![
            Message::Hello(Hello {
                protocol_version: 1,
                schema_digest: [3; 32],
                model_hash: Some(model.hash()),
                partial_model: None,
            }),
            Message::Welcome(Welcome {
                session: 7,
                identity: "h".into(),
                manifest: SignedManifest {
                    manifest: crate::manifest::tests::example(),
                    signature: "ab".repeat(64),
                },
            }),
            Message::Refused(Refused {
                session: 7,
                round: 2,
                reason: RefusalReason::Replay { round: 2 },
            }),
            Message::StatsRequest(StatsRequest {
                session: 7,
                round: 0,
                secure_aggregation: Some(setup.clone()),
            }),
            Message::ModelOffer(offer),
            Message::ModelChunk(chunks[0].clone()),
            Message::ModelReceived(ModelReceived {
                session: 7,
                round: 2,
                hash: model.hash(),
            }),
            Message::RoundStart(RoundStart {
                session: 7,
                round: 2,
                attempt: 1,
                model_hash: model.hash(),
                train: true,
                evaluate: true,
                score_bins: ScoreBins::FINE,
                decision_threshold: DecisionThreshold::DEFAULT,
                plan: TrainingPlan::default(),
                standardization,
                secure_aggregation: Some(setup),
            }),
            Message::Contribution(Contribution {
                session: 7,
                round: 2,
                kind: ContributionKind::Round,
                values: PlainFigures::Single(vec![0.5, -1.0, 3e38]),
                privacy: Some(PrivacySpent {
                    epsilon: 1.5,
                    delta: 1e-5,
                }),
            }),
            Message::Contribution(Contribution {
                session: 7,
                round: 0,
                kind: ContributionKind::Stats,
                values: PlainFigures::Double(vec![4.0, 1e300, -0.25]),
                privacy: None,
            }),
            Message::Declined(Declined {
                session: 7,
                round: 2,
                reason: DeclineReason::Policy(PolicyViolation::TooFewOtherHospitals {
                    others: 1,
                    required: 2,
                }),
            }),
            Message::Finished(Finished {
                session: 7,
                round: 2,
                model_hash: model.hash(),
            }),
            Message::SiteFigureRequest(SiteFigureRequest {
                session: 7,
                round: 4,
                attempt: 2,
            }),
            Message::SiteFigure(SiteFigure {
                session: 7,
                round: 4,
                attempt: 2,
                noised: true,
                values: vec![12.0, -1.0, 0.25],
            }),
            Message::SecAggInputChunk(MaskedInputChunk {
                session: 7,
                round: 2,
                offset: 4,
                total: 7,
                values: vec![1, u32::MAX, 3],
            }),
            Message::SecAggConsistency(ConsistencyRequest {
                session: 7,
                round: 2,
                survivors: vec![1, 3, 300],
            }),
            Message::SecAggSignature(ConsistencySignature {
                session: 7,
                round: 2,
                signature: vec![9; 71],
            }),
            Message::SecAggUnmask(UnmaskRequest {
                session: 7,
                round: 2,
                survivors: vec![1, 3, 300],
                signatures: vec![(1, vec![4; 70]), (300, vec![5; 72])],
            }),
        ]
    }

    #[test]
    fn masked_inputs_travel_as_four_bytes_a_word() {
        let values: Vec<u32> = (0..1000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let message = Message::SecAggInput(MaskedInput {
            session: 7,
            round: 2,
            values,
        });
        let bytes = frame(&message).unwrap();
        assert!(bytes.len() < 4000 + 16, "{} bytes", bytes.len());
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        decoder.feed(&bytes);
        assert_eq!(decoder.next_message().unwrap(), Some(message));
        // A frame cut short is not decoded.
        let mut broken = bytes.clone();
        broken.truncate(bytes.len() - 1);
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        decoder.feed(&broken);
        assert!(decoder.next_message().unwrap().is_none());
    }

    #[test]
    fn alpn_names_the_protocol_version() {
        assert_eq!(ALPN, format!("medfed/{PROTOCOL_VERSION}").as_bytes());
    }

    #[test]
    fn round_vectors_travel_as_four_bytes_a_figure() {
        let contribution = |values| {
            frame(&Message::Contribution(Contribution {
                session: 7,
                round: 2,
                kind: ContributionKind::Round,
                values,
                privacy: None,
            }))
            .unwrap()
            .len()
        };
        let single = contribution(PlainFigures::Single(vec![0.5; 1000]));
        let double = contribution(PlainFigures::Double(vec![0.5; 1000]));
        assert!(single < 4000 + 16, "{single} bytes");
        assert_eq!(double - single, 4000);
    }

    #[test]
    fn narrowing_refuses_what_does_not_fit_an_f32() {
        let fits = [0.0, -1.5, 1e38, -3.4e38, f64::from(f32::MAX), 1e-50];
        let PlainFigures::Single(narrow) = PlainFigures::single(&fits).unwrap() else {
            panic!("not single");
        };
        assert_eq!(narrow, vec![0.0, -1.5, 1e38, -3.4e38, f32::MAX, 0.0]);
        // Finite in f64, infinite in f32: refused, not sent as infinity.
        for (value, index) in [(1e39, 1), (-1e300, 1), (f64::INFINITY, 1), (f64::NAN, 1)] {
            let err = PlainFigures::single(&[1.0, value, 2.0]).unwrap_err();
            assert_eq!(err.index, index);
            assert!(err.to_string().contains("does not fit in an f32"), "{err}");
        }
    }

    #[test]
    fn figures_add_in_f64_and_report_non_finite_values() {
        let single = PlainFigures::Single(vec![1.0, 0.5, f32::MAX]);
        let double = PlainFigures::Double(vec![1e300, 0.25, 1.0]);
        assert_eq!((single.len(), double.len()), (3, 3));
        assert!(!single.is_empty() && PlainFigures::Single(vec![]).is_empty());
        let mut sum = vec![0.0; 3];
        single.add_to(&mut sum);
        double.add_to(&mut sum);
        single.add_to(&mut sum);
        // f32::MAX twice overflows f32 but not the f64 sum.
        assert_eq!(
            sum,
            vec![2.0 + 1e300, 1.25, 2.0 * f64::from(f32::MAX) + 1.0]
        );
        assert_eq!(single.first_non_finite(), None);
        assert_eq!(
            PlainFigures::Single(vec![1.0, 2.0, f32::NAN]).first_non_finite(),
            Some(2)
        );
        assert_eq!(
            PlainFigures::Double(vec![f64::NEG_INFINITY]).first_non_finite(),
            Some(0)
        );
        assert_eq!(single.to_f64_vec(), vec![1.0, 0.5, f64::from(f32::MAX)]);
    }

    #[test]
    fn every_message_survives_the_codec() {
        for message in every_message() {
            let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
            decoder.feed(&frame(&message).unwrap());
            assert_eq!(
                decoder.next_message().unwrap().as_ref(),
                Some(&message),
                "{}",
                message.kind()
            );
        }
    }
}
