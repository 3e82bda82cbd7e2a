//! The run summary: what the coordinator knows about its run, in one JSON document that it
//! keeps up to date in `summary.json` in its state folder, serves to its dashboard and reads
//! back for `medfed-coordinator status`.
//!
//! It holds only what the coordinator already knows: the task, the nodes' connection states
//! and the figures they declare (their ε), and pooled figures (sums over hospitals). Nothing in
//! it is one hospital's figure that secure aggregation hides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medfed_transport::TransportKind;
use serde::{Deserialize, Serialize};

/// The format tag of [`RunSummary`]; a reader refuses another.
pub const SUMMARY_FORMAT: &str = "medfed-run-summary/1";

/// The summary's file name in the state folder.
pub const SUMMARY_FILE: &str = "summary.json";

/// The whole run, as the coordinator sees it now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// [`SUMMARY_FORMAT`].
    pub format: String,
    /// When this summary was last changed, Unix milliseconds.
    pub updated_at_ms: i64,
    /// The coordinator process.
    pub coordinator: CoordinatorInfo,
    /// What the consortium trains (from the signed task manifest).
    pub task: TaskInfo,
    /// Where the run is.
    pub state: RunState,
    /// Why the run stopped early or failed, if it did.
    pub stopped: Option<String>,
    /// The round in progress, if one is.
    pub current: Option<CurrentRound>,
    /// Every node seen in this run, by certificate name, in name order.
    pub nodes: Vec<NodeSummary>,
    /// Connections refused at admission, by certificate subject (or `unknown` when the
    /// handshake did not get that far) and reason.
    pub refused: Vec<RefusedSummary>,
    /// The completed rounds of this run, oldest first: the latest
    /// [`MAX_ROUNDS_KEPT`](super::MAX_ROUNDS_KEPT) (the totals count every one).
    pub rounds: Vec<RoundSummary>,
    /// The final model's pooled held-out evaluation, once done.
    pub final_evaluation: Option<PooledEvaluation>,
    /// The released model, once written.
    pub released: Option<ReleasedModel>,
    /// Counters over the whole run.
    pub totals: Totals,
}

/// The coordinator process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    /// Its process id.
    pub pid: u32,
    /// medfed's version.
    pub version: String,
    /// The UDP address it listens on.
    pub listen: String,
    /// When it started, Unix milliseconds.
    pub started_at_ms: i64,
    /// The rounds completed by earlier runs of this task, before this process resumed it.
    pub resumed_after_round: u64,
    /// The dashboard's address (`http://…/` or `https://…/`), when it is on.
    pub dashboard: Option<String>,
}

/// What the consortium trains.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The signed task manifest's digest (hex SHA-256).
    pub manifest_digest: String,
    /// The model, in words (`mlp 32-16`, `logistic regression`).
    pub model: String,
    /// The model's parameter count.
    pub parameters: usize,
    /// Training rounds planned.
    pub rounds_planned: u64,
    /// Nodes a round needs.
    pub min_nodes: usize,
    /// Whether every figure is summed under secure aggregation.
    pub secure_aggregation: bool,
    /// The consortium's members, by certificate name.
    pub members: Vec<String>,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for enough nodes to connect.
    #[default]
    WaitingForNodes,
    /// The federated statistics round (round 0).
    Statistics,
    /// Training rounds.
    Training,
    /// The final model's evaluation.
    FinalEvaluation,
    /// Training finished.
    Finished,
    /// The run gave up (see [`RunSummary::stopped`]).
    Failed,
}

impl RunState {
    /// The state in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::WaitingForNodes => "waiting for nodes",
            Self::Statistics => "federated statistics",
            Self::Training => "training",
            Self::FinalEvaluation => "final evaluation",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }
}

/// The round in progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CurrentRound {
    /// The round: 0 for the statistics, `rounds + 1` for the final evaluation.
    pub round: u64,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The phase in progress.
    pub phase: RoundPhase,
    /// When the attempt began, Unix milliseconds.
    pub started_at_ms: i64,
    /// When the phase began, Unix milliseconds.
    pub phase_started_at_ms: i64,
    /// When the phase's deadline passes, Unix milliseconds, while answers are awaited.
    pub deadline_at_ms: Option<i64>,
}

/// A phase of a round, in the order a round passes them.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RoundPhase {
    /// Waiting for enough nodes.
    #[default]
    WaitingForNodes,
    /// The request is out (the model pushed first where a node lacks it): the nodes compute
    /// and answer (under secure aggregation, with their round keys).
    Request,
    /// Secure aggregation: the encrypted shares.
    Shares,
    /// Secure aggregation: the masked inputs.
    Inputs,
    /// Secure aggregation: the consistency check.
    Consistency,
    /// Secure aggregation: unmasking the sum.
    Unmask,
    /// The sum is known: the new model, its checkpoint and audit report are being written.
    Applying,
}

impl RoundPhase {
    /// The phase's name, as in the summary and the metrics' labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::WaitingForNodes => "waiting_for_nodes",
            Self::Request => "request",
            Self::Shares => "shares",
            Self::Inputs => "inputs",
            Self::Consistency => "consistency",
            Self::Unmask => "unmask",
            Self::Applying => "applying",
        }
    }
}

/// One node, by certificate name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The subject of its certificate.
    pub name: String,
    /// What it is doing.
    pub state: NodeState,
    /// Why it was dropped or disconnected, when it was.
    pub reason: Option<String>,
    /// Completed rounds of this run whose sum holds its contribution.
    pub rounds_joined: u64,
    /// The ε it last declared spent (with [`Self::delta`]), if it declared one.
    pub epsilon: Option<f64>,
    /// The δ of [`Self::epsilon`].
    pub delta: Option<f64>,
    /// Bytes received from it in this run.
    pub bytes_in: u64,
    /// When it was last admitted or last answered, Unix milliseconds.
    pub last_seen_ms: i64,
    /// The transport of its latest connection: `quic`, or `tcp` where its hospital blocks UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportKind>,
}

/// What a node is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Connected, not in a round.
    #[default]
    Connected,
    /// Asked in the current phase; its answer is awaited (it trains or evaluates).
    Training,
    /// It answered the current phase.
    Answered,
    /// Left out of the current attempt (see [`NodeSummary::reason`]).
    Dropped,
    /// Its connection closed.
    Disconnected,
}

/// Connections refused at admission under one subject and reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefusedSummary {
    /// The subject of the certificate, or `unknown` when the handshake failed before it.
    pub subject: String,
    /// The kind of reason (the metrics' label).
    pub reason: String,
    /// The last refusal's message.
    pub detail: String,
    /// How many times.
    pub count: u64,
    /// The last time, Unix milliseconds.
    pub last_at_ms: i64,
}

/// One completed round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    /// The round number.
    pub round: u64,
    /// How many nodes' contributions are in its sum (who: [`Self::participants`]).
    pub participants: Vec<String>,
    /// Nodes asked but left out, with the kind of reason.
    pub dropped: Vec<DroppedNode>,
    /// The pooled held-out evaluation of the model the round started from (the model of round
    /// `round - 1`), when the round evaluated.
    pub evaluation: Option<PooledEvaluation>,
    /// The fairness policy's verdict on that model, when it was audited.
    pub fairness: Option<FairnessVerdict>,
    /// The round's signed audit report, relative to the state folder.
    pub report: Option<String>,
    /// Wall-clock seconds the round took (its successful attempt).
    pub seconds: f64,
    /// Seconds per phase of the successful attempt, by [`RoundPhase::name`].
    pub phase_seconds: BTreeMap<String, f64>,
    /// Seconds spent writing the checkpoint and committing the round (with their fsyncs).
    pub checkpoint_seconds: f64,
    /// Bytes received from every node during the round.
    pub bytes_in: u64,
    /// When it completed, Unix milliseconds.
    pub completed_at_ms: i64,
}

/// A node left out of a round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DroppedNode {
    /// The node's certificate name.
    pub name: String,
    /// The kind of reason (the metrics' label).
    pub reason: String,
    /// The reason in words.
    pub detail: String,
}

/// Pooled held-out figures of one model: sums over hospitals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PooledEvaluation {
    /// The round whose model was evaluated (0: the initial model).
    pub model_round: u64,
    /// Held-out examples over every hospital summed.
    pub examples: u64,
    /// Area under the ROC curve (`None` when one class is absent).
    pub auc: Option<f64>,
    /// Accuracy at the decision threshold.
    pub accuracy: f64,
    /// Mean binary cross-entropy.
    pub loss: f64,
}

/// The fairness policy's verdict on one audited model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FairnessVerdict {
    /// Whether every audited attribute passed every check of the policy.
    pub approved: bool,
    /// The attributes audited.
    pub attributes: Vec<String>,
    /// The attributes that failed a check.
    pub failed: Vec<String>,
}

/// The released model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleasedModel {
    /// The round whose model it is.
    pub round: u64,
    /// Its file.
    pub file: PathBuf,
}

/// Counters over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Training rounds completed in this run.
    pub rounds_completed: u64,
    /// Attempts that failed (and were retried or given up).
    pub attempts_failed: u64,
    /// Bytes received from every node in this run.
    pub bytes_received: u64,
    /// Nodes left out of an attempt, by kind of reason.
    pub dropouts: BTreeMap<String, u64>,
    /// Connections refused at admission, by kind of reason.
    pub refusals: BTreeMap<String, u64>,
}

/// Why a summary file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is not a run summary.
    #[error("{path} is not a run summary: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: serde_json::Error,
    },
    /// The file is a run summary of another format.
    #[error("{path} is a run summary of format {found:?}; this medfed reads {SUMMARY_FORMAT:?}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it states.
        found: String,
    },
}

impl RunSummary {
    /// Reads a summary file.
    pub fn read(path: &Path) -> Result<Self, SummaryError> {
        let text = std::fs::read_to_string(path).map_err(|source| SummaryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse = |source| SummaryError::Parse {
            path: path.to_owned(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(parse)?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != SUMMARY_FORMAT {
            return Err(SummaryError::Format {
                path: path.to_owned(),
                found: format.to_owned(),
            });
        }
        serde_json::from_value(value).map_err(parse)
    }

    /// The node named `name`, added (connected) if it is new.
    pub(crate) fn node_mut(&mut self, name: &str) -> &mut NodeSummary {
        let at = match self.nodes.binary_search_by(|n| n.name.as_str().cmp(name)) {
            Ok(at) => at,
            Err(at) => {
                self.nodes.insert(
                    at,
                    NodeSummary {
                        name: name.to_owned(),
                        ..NodeSummary::default()
                    },
                );
                at
            }
        };
        &mut self.nodes[at]
    }

    /// The pooled evaluations over the run, by model round: each round's and the final one.
    pub fn evaluations(&self) -> impl Iterator<Item = &PooledEvaluation> {
        self.rounds
            .iter()
            .filter_map(|r| r.evaluation.as_ref())
            .chain(self.final_evaluation.as_ref())
    }
}
