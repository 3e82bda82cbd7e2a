//! The coordinator's configuration file (`coordinator.toml`).
//!
//! Relative paths are resolved against the folder holding the configuration file, so a
//! consortium folder can be moved as a whole.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use medfed_audit::bias::FairnessSettings;
use medfed_audit::model_card::CardText;
use medfed_certs::TlsFiles;
use medfed_protocol::distributed_dp::{DEFAULT_ROUNDING_BETA, DEFAULT_SCALED_CLIP};
use medfed_protocol::evaluation::{DecisionThreshold, ScoreBins};
use medfed_protocol::manifest::{
    DistributedDpPlan, FINAL_EVALUATION_ONLY, FractionalBitsRule, SecureAggregationPlan,
    ThresholdRule, TrainingRule,
};
use medfed_protocol::model::ModelConfig;

use crate::task_model::check_model_config;
use medfed_protocol::secagg::encoding::UpdateEncoding;
use medfed_protocol::task::TrainingPlan;
use serde::Deserialize;

pub use crate::faults::{PausePhase, PausePoint};
use crate::strategy::StrategyConfig;

/// The whole configuration, as resolved.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Folder for the SQLite state and the checkpoints.
    pub data_dir: PathBuf,
    /// The consortium's data schema file.
    pub schema: PathBuf,
    /// The consortium's member list (`medfed-certs members`), whose digest the task manifest
    /// states so that each hospital can compare it with the list it pins.
    pub members: PathBuf,
    /// The coordinator's TLS material and the consortium CA (and CRL).
    pub tls: TlsFiles,
    /// What to train and how.
    pub task: TaskConfig,
    /// Server-side optimiser.
    pub strategy: StrategyConfig,
    /// Secure aggregation of every figure the nodes send.
    pub secure_aggregation: SecureAggregationConfig,
    /// The bias audit: suppression threshold and the consortium's fairness policy.
    pub fairness: FairnessSettings,
    /// The consortium's own words for the released model's card (`[model_card]`: intended
    /// use, population, outcome, limitations, developers, contact), all optional.
    pub model_card: CardText,
    /// The operator's dashboard and Prometheus metrics (`[dashboard]`); off when absent.
    pub dashboard: Option<DashboardConfig>,
    /// Test-only fault injection: stop at a point of a round and wait forever, so that a test
    /// can kill the process exactly there. Never set it in a real consortium.
    pub danger_pause_at: Option<PausePoint>,
}

/// The dashboard's listener (`[dashboard]`): the live page, its JSON and event stream, and
/// Prometheus `/metrics`, read-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardConfig {
    /// TCP address to serve on. A loopback address serves plain HTTP to this machine only;
    /// any other needs [`Self::tls`] and [`Self::token_file`].
    pub listen: SocketAddr,
    /// Serve HTTPS with the coordinator's own certificate and key (`[tls] cert` and `key`).
    pub tls: bool,
    /// A file holding the token every request must present (`Authorization: Bearer TOKEN`, or
    /// once as `?token=TOKEN`, which sets a cookie).
    pub token_file: Option<PathBuf>,
}

/// The shortest token a dashboard accepts, in characters.
pub const MIN_DASHBOARD_TOKEN_LEN: usize = 32;

/// Secure aggregation settings. On by default; turning it off makes every node's figures
/// visible to the coordinator, and the coordinator says so in its log every round.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationConfig {
    /// Whether figures are masked so the coordinator learns only their sum.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Shares needed to rebuild a node's secrets; default ⌊2h/3⌋ + 1 of its h holders.
    #[serde(default)]
    pub threshold: Option<usize>,
    /// Each node pairs with this many neighbours (SecAgg+); default: with every other node.
    #[serde(default)]
    pub neighbours: Option<usize>,
    /// Clipping bound B of each coordinate of a node's weighted update `n·Δ`.
    #[serde(default = "default_update_clip")]
    pub update_clip: f64,
    /// Fractional bits of the update's fixed point; default: as many as fit (n · B · 2^bits <
    /// 2^31, with one bit of margin).
    #[serde(default)]
    pub fractional_bits: Option<u32>,
    /// Quantised uploads: each value of the update clipped to `update_clip`, quantised with
    /// stochastic rounding and packed into a lane of this many bits, `32 / upload_bits` values
    /// a word (8: four, a quarter of the fixed point's upload). The levels per value follow
    /// each round's number of hospitals `n`, as many bits `b` as keep `n · (2^b − 1) <
    /// 2^upload_bits`. Default: none (one fixed-point word per value). Not with
    /// `[task.distributed_dp]`.
    #[serde(default)]
    pub upload_bits: Option<u32>,
}

impl Default for SecureAggregationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: None,
            neighbours: None,
            update_clip: default_update_clip(),
            fractional_bits: None,
            upload_bits: None,
        }
    }
}

impl SecureAggregationConfig {
    /// The update's encoding for `participants` nodes (the manifest's rule,
    /// [`SecureAggregationPlan::update_encoding`]).
    pub fn update_encoding(&self, participants: usize) -> UpdateEncoding {
        self.plan().update_encoding(participants)
    }

    /// The plan's update encoding rule (neighbours and threshold left at their defaults).
    pub(crate) fn plan(&self) -> SecureAggregationPlan {
        SecureAggregationPlan {
            neighbours: None,
            threshold: ThresholdRule::TwoThirdsPlusOne,
            update_clip: self.update_clip,
            fractional_bits: self
                .fractional_bits
                .map_or(FractionalBitsRule::Fit, FractionalBitsRule::Fixed),
            upload_bits: self.upload_bits,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_update_clip() -> f64 {
    1024.0
}

/// Which model the coordinator releases at the end of training (`[task] release`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseRule {
    /// The final model, whatever its held-out figures.
    #[default]
    Last,
    /// The audited model with the lowest pooled held-out loss (the final one on a tie).
    ///
    /// The pooled held-out figures then choose the model as well as describe it, so its
    /// reported loss is optimistic by the selection; with few rounds and many held-out
    /// patients, slightly. Where hospitals noise their evaluation counts the choice is made on
    /// noised losses: post-processing, so it costs no privacy, but noise can pick a worse round.
    LowestLoss,
}

/// The training task.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Architecture.
    pub model: ModelConfig,
    /// Number of training rounds.
    pub rounds: u64,
    /// A round needs at least this many nodes answering to be applied.
    pub min_nodes: usize,
    /// Seed of the initial model and of the nodes' batch orders.
    #[serde(default)]
    pub seed: u64,
    /// Local training hyper-parameters.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Seconds a node has to answer a round; later answers count as a dropout.
    #[serde(default = "default_round_deadline")]
    pub round_deadline_secs: f64,
    /// Seconds to wait for `min_nodes` nodes to connect before a round.
    #[serde(default = "default_wait_for_nodes")]
    pub wait_for_nodes_secs: f64,
    /// Attempts at a round (after dropouts below `min_nodes`) before giving up.
    #[serde(default = "default_round_attempts")]
    pub round_attempts: u32,
    /// Before its first exchange, a coordinator (freshly started or restarted) waits up to
    /// `wait_for_nodes_secs` for this many nodes, so that hospitals connecting a moment apart
    /// all take part from the first round; rounds then go on with at least `min_nodes`.
    /// `None` (the default) starts as soon as `min_nodes` are connected.
    #[serde(default)]
    pub start_nodes: Option<usize>,
    /// The evaluation schedule: training rounds 1, 1 + k, 1 + 2k, … evaluate their starting
    /// model on the pooled held-out data (and audit it); the others release only the update, so
    /// hospitals whose evaluation counts are noised pay for fewer releases. The final model is
    /// always evaluated. Default 1: every round; `"final"`: no training round, only the final
    /// model (stored as [`FINAL_EVALUATION_ONLY`]).
    #[serde(
        default = "default_evaluate_every",
        deserialize_with = "evaluation_schedule"
    )]
    pub evaluate_every: u64,
    /// Bins of the score histograms in every evaluation (`[task.score_bins]`, `evaluation` for
    /// the pooled evaluation, default 1000, and `group` for each audit group, default 100; each
    /// a multiple of 10). Hospitals that noise their evaluation counts add noise to every bin,
    /// so a consortium whose hospitals do chooses coarse histograms (for example 20 and 10).
    #[serde(default)]
    pub score_bins: ScoreBins,
    /// The decision threshold (`decision_threshold`, default 0.5): a patient whose predicted
    /// probability is at least this is flagged positive, in every evaluation's confusion
    /// matrix, the fairness audit and the released model's class. A rare outcome needs one
    /// below 0.5 (near its prevalence, say), or the model flags nobody. Strictly between 0 and 1.
    #[serde(default)]
    pub decision_threshold: DecisionThreshold,
    /// Which audited model the coordinator releases as `model.safetensors` when training ends
    /// (`release`, default `"last"`): the final model, or the one with the lowest pooled
    /// held-out loss over every audited round.
    #[serde(default)]
    pub release: ReleaseRule,
    /// The hospitals (certificate names) that release their own site figure of the final
    /// evaluation (`site_figures`, default none): external validation per site. The list goes
    /// into the signed manifest, so every hospital approves who reveals and counts them out of
    /// every evaluation sum it joins; a listed hospital releases only if its own policy
    /// (`release_site_figures`) also says so.
    #[serde(default)]
    pub site_figures: Vec<String>,
    /// Distributed differential privacy of the training rounds (`[task.distributed_dp]`):
    /// each round is one DP-FedSGD step, the hospitals add their shares of the noise before
    /// masking, and the coordinator divides the decoded sum by `sample_rate` times the pooled
    /// noised example count of the statistics round. `None` (the default): each hospital
    /// trains locally under its own policy.
    #[serde(default)]
    pub distributed_dp: Option<DistributedDpConfig>,
}

/// `[task.distributed_dp]`: what every hospital in distributed mode approves in the manifest.
///
/// ```toml
/// [task.distributed_dp]
/// sample_rate = 0.1        # q: each training row is in a round's sample with this probability
/// noise_multiplier = 1.0   # z: the noise of the sum of `threshold` shares, in clipping norms
/// clip_norm = 1.0          # C: per-example L2 clipping norm
/// threshold = 2            # t: the secure-aggregation threshold (fixed)
/// max_nodes = 3            # n: the most participants a round may have
/// # scale = 16384 / clip_norm, rounding_beta = 2^-20 by default
/// ```
///
/// Secure aggregation must be on, over the complete graph; its threshold is fixed at
/// `threshold` (leave `[secure_aggregation] threshold` unset, or set it to the same value).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedDpConfig {
    /// q.
    pub sample_rate: f64,
    /// z.
    pub noise_multiplier: f64,
    /// C.
    pub clip_norm: f64,
    /// t.
    pub threshold: usize,
    /// n.
    pub max_nodes: usize,
    /// γ; default `DEFAULT_SCALED_CLIP / clip_norm`.
    #[serde(default)]
    pub scale: Option<f64>,
    /// β of conditional rounding; default `DEFAULT_ROUNDING_BETA`.
    #[serde(default)]
    pub rounding_beta: Option<f64>,
}

impl DistributedDpConfig {
    /// The plan as the manifest states it, defaults filled in.
    pub fn plan(&self) -> DistributedDpPlan {
        DistributedDpPlan {
            sample_rate: self.sample_rate,
            noise_multiplier: self.noise_multiplier,
            clip_norm: self.clip_norm,
            scale: self.scale.unwrap_or(DEFAULT_SCALED_CLIP / self.clip_norm),
            rounding_beta: self.rounding_beta.unwrap_or(DEFAULT_ROUNDING_BETA),
            threshold: self.threshold as u64,
            max_nodes: self.max_nodes as u64,
        }
    }
}

/// Local training hyper-parameters sent to every node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Local epochs per round.
    #[serde(default = "default_epochs")]
    pub local_epochs: u32,
    /// Local SGD step size.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Mini-batch size.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Weight of a positive example's loss (`pos_weight`, default 1): for a rare outcome,
    /// about (negatives / positives) balances the classes, so that the model does not learn to
    /// flag nobody. DP-SGD clips each weighted gradient, so privacy is unchanged.
    #[serde(default = "default_pos_weight")]
    pub pos_weight: f64,
}

fn default_pos_weight() -> f64 {
    1.0
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            local_epochs: default_epochs(),
            learning_rate: default_learning_rate(),
            batch_size: default_batch_size(),
            pos_weight: default_pos_weight(),
        }
    }
}

impl TaskConfig {
    /// The training plan of a round: the configured hyper-parameters and a per-round seed (the
    /// manifest's rule, [`TrainingRule::plan`]).
    pub fn plan(&self, round: u64) -> TrainingPlan {
        self.training_rule().plan(round)
    }

    /// The local training every round asks for, as the manifest states it.
    pub fn training_rule(&self) -> TrainingRule {
        TrainingRule {
            local_epochs: self.training.local_epochs,
            learning_rate: self.training.learning_rate,
            batch_size: self.training.batch_size,
            seed_base: self.seed,
            pos_weight: self.training.pos_weight,
        }
    }

    /// The round deadline.
    pub fn round_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.round_deadline_secs.max(0.0))
    }

    /// How long to wait for nodes.
    pub fn wait_for_nodes(&self) -> Duration {
        Duration::from_secs_f64(self.wait_for_nodes_secs.max(0.0))
    }
}

fn default_round_deadline() -> f64 {
    120.0
}
fn default_wait_for_nodes() -> f64 {
    300.0
}
fn default_evaluate_every() -> u64 {
    1
}

/// `evaluate_every`: a positive number of rounds, or `"final"`.
fn evaluation_schedule<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Every(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Every(0) => Err(serde::de::Error::custom(
            "evaluate_every must be at least 1, or \"final\" for the final model only",
        )),
        Raw::Every(every) => Ok(every),
        Raw::Text(text) if text == "final" => Ok(FINAL_EVALUATION_ONLY),
        Raw::Text(text) => Err(serde::de::Error::custom(format!(
            "evaluate_every must be a number of rounds or \"final\", not {text:?}"
        ))),
    }
}

fn default_round_attempts() -> u32 {
    3
}
fn default_epochs() -> u32 {
    1
}
fn default_learning_rate() -> f64 {
    0.05
}
fn default_batch_size() -> u32 {
    32
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    data_dir: PathBuf,
    schema: PathBuf,
    members: PathBuf,
    tls: RawTls,
    task: TaskConfig,
    #[serde(default)]
    strategy: Option<StrategyConfig>,
    #[serde(default)]
    secure_aggregation: SecureAggregationConfig,
    #[serde(default)]
    fairness: FairnessSettings,
    #[serde(default)]
    model_card: CardText,
    #[serde(default)]
    dashboard: Option<RawDashboard>,
    #[serde(default)]
    danger_pause_at: Option<PausePoint>,
}

/// `[dashboard]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    listen: SocketAddr,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

/// TLS paths as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
    /// Accept a CRL past its nextUpdate (off: such a CRL is refused).
    #[serde(default)]
    allow_expired_crl: bool,
}

impl CoordinatorConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path.parent().unwrap_or_else(|| Path::new(".")))
            .map_err(|e| e.in_file(path))
    }

    /// Parses configuration text, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: None,
            message: e.to_string(),
        })?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let config = Self {
            listen: raw.listen,
            data_dir: resolve(raw.data_dir),
            schema: resolve(raw.schema),
            members: resolve(raw.members),
            tls: TlsFiles {
                ca_cert: resolve(raw.tls.ca_cert),
                cert: resolve(raw.tls.cert),
                key: resolve(raw.tls.key),
                crl: raw.tls.crl.map(resolve),
                allow_expired_crl: raw.tls.allow_expired_crl,
            },
            task: TaskConfig {
                model: raw.task.model.resolve_paths(resolve),
                ..raw.task
            },
            strategy: raw.strategy.unwrap_or_default(),
            secure_aggregation: raw.secure_aggregation,
            fairness: raw.fairness,
            model_card: raw.model_card,
            dashboard: raw.dashboard.map(|d| DashboardConfig {
                listen: d.listen,
                tls: d.tls,
                token_file: d.token_file.map(resolve),
            }),
            danger_pause_at: raw.danger_pause_at,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses a test-only fault-injection setting in a build that has no fault injection (it
    /// would silently do nothing). Checked when a file is read and again at start, for a
    /// configuration built in code.
    pub fn check_fault_injection(&self) -> Result<(), ConfigError> {
        if self.danger_pause_at.is_some() && !crate::faults::ENABLED {
            return Err(ConfigError::FaultInjection {
                key: "danger_pause_at",
            });
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.check_fault_injection()?;
        let task = &self.task;
        let invalid = |message: &str| {
            Err(ConfigError::Invalid {
                path: None,
                message: message.to_owned(),
            })
        };
        if task.min_nodes == 0 {
            return invalid("task.min_nodes must be at least 1");
        }
        if task.start_nodes.is_some_and(|n| n < task.min_nodes) {
            return invalid("task.start_nodes must be at least task.min_nodes");
        }
        if task.training.batch_size == 0 {
            return invalid("task.training.batch_size must be at least 1");
        }
        if task.training.local_epochs == 0 {
            return invalid("task.training.local_epochs must be at least 1");
        }
        if !(task.training.learning_rate.is_finite() && task.training.learning_rate > 0.0) {
            return invalid("task.training.learning_rate must be a positive number");
        }
        if !(task.training.pos_weight.is_finite() && task.training.pos_weight > 0.0) {
            return invalid("task.training.pos_weight must be a positive number");
        }
        if !(task.round_deadline_secs.is_finite() && task.round_deadline_secs > 0.0) {
            return invalid("task.round_deadline_secs must be positive");
        }
        if let Err(e) = task.score_bins.check() {
            return invalid(&format!("task.score_bins: {e}"));
        }
        if task.round_attempts == 0 {
            return invalid("task.round_attempts must be at least 1");
        }
        if let Err(e) = check_model_config(&task.model) {
            return invalid(&format!("task.model: {e}"));
        }
        if let Some(dashboard) = &self.dashboard
            && !dashboard.listen.ip().is_loopback()
            && !(dashboard.tls && dashboard.token_file.is_some())
        {
            return invalid(&format!(
                "dashboard.listen = {} is reachable from other machines: set dashboard.tls = true and dashboard.token_file (or listen on 127.0.0.1)",
                dashboard.listen
            ));
        }
        let secure = &self.secure_aggregation;
        if !(secure.update_clip.is_finite() && secure.update_clip > 0.0) {
            return invalid("secure_aggregation.update_clip must be a positive number");
        }
        if secure.threshold.is_some_and(|t| t < 2) {
            return invalid("secure_aggregation.threshold must be at least 2");
        }
        if let Some(bits) = secure.upload_bits {
            if !secure.enabled {
                return invalid(&format!(
                    "secure_aggregation.upload_bits = {bits} quantises the masked uploads, but secure aggregation is off (turn it on or remove upload_bits)"
                ));
            }
            if task.distributed_dp.is_some() {
                return invalid(&format!(
                    "secure_aggregation.upload_bits = {bits} cannot be combined with [task.distributed_dp]: distributed DP's update block is already integer words of Z(2^32), its noise sized for them (remove one of the two)"
                ));
            }
            // The fewest hospitals a round can have must leave at least one level bit; the
            // member list's size, the most, is checked when the manifest is built.
            if let Err(e) = secure.plan().check_quantization(task.min_nodes) {
                return invalid(&format!("secure_aggregation.{e}"));
            }
        }
        // Settings that parse but can never run a round: refused now, not after round 0 has
        // failed round_attempts times.
        if secure.enabled && task.min_nodes < 2 {
            return invalid(
                "task.min_nodes = 1 can never run with secure aggregation on: a secure sum needs at least 2 hospitals (set task.min_nodes to 2 or more)",
            );
        }
        if let Some(threshold) = secure
            .threshold
            .filter(|t| secure.enabled && *t > task.min_nodes)
        {
            return invalid(&format!(
                "secure_aggregation.threshold = {threshold} is more than task.min_nodes = {}: a round with {} hospitals could never be unmasked (raise task.min_nodes or lower the threshold)",
                task.min_nodes, task.min_nodes
            ));
        }
        Ok(())
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this format.
    #[error("{}: {message}", path.as_ref().map_or_else(|| "configuration".into(), |p| p.display().to_string()))]
    Syntax {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A `danger_*` setting in a build without fault injection (release builds and the demo).
    #[error(
        "{key} is a test-only fault-injection setting; this build has no fault injection \
         (the `fault-injection` cargo feature)"
    )]
    FaultInjection {
        /// The setting.
        key: &'static str,
    },
    /// A value is out of range, or values that can never run together.
    #[error("{}: {message}", path.as_ref().map_or_else(|| "invalid configuration".into(), |p| p.display().to_string()))]
    Invalid {
        /// The file, when known.
        path: Option<PathBuf>,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl ConfigError {
    fn in_file(self, file: &Path) -> Self {
        match self {
            Self::Syntax { message, .. } => Self::Syntax {
                path: Some(file.to_owned()),
                message,
            },
            Self::Invalid { message, .. } => Self::Invalid {
                path: Some(file.to_owned()),
                message,
            },
            other => other,
        }
    }
}
