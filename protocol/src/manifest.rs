//! The task manifest: the whole plan of a training task, stated once by the coordinator and
//! signed with its report key, so that every hospital can check it against its own policy
//! before it joins, and refuse any request that departs from it afterwards.
//!
//! ```text
//!  coordinator.toml ─▶ TaskManifest ─canonical JSON─▶ SHA-256 ─Ed25519 (report key)─▶ SignedManifest
//!                                                                                     │ Welcome
//!  node: verify (key from the coordinator's certificate) ─▶ policy ─▶ approved ◀──────┘
//!        every StatsRequest / RoundStart ─▶ TaskManifest::check_* ─▶ answer or decline
//! ```
//!
//! The canonical encoding is compact JSON of the fields in declaration order: the manifest
//! holds no map with unordered keys (strategy hyper-parameters are a sorted map), its floats are
//! finite ([`TaskManifest::validate`]) and written in their shortest round-trip form, so the
//! same manifest always gives the same bytes, whichever side encodes it.

use std::collections::BTreeMap;

use ring::digest;
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::distributed_dp::{DdpConfig, DdpError, DdpParams};
use crate::evaluation::{DecisionThreshold, ScoreBins};
use crate::messages::{RoundStart, SecAggSetup, StatsRequest};
use crate::model::ModelSpec;
use crate::secagg::RoundParams;
use crate::secagg::encoding::UpdateEncoding;
use crate::secagg::fixed_point::FixedPoint;
use crate::secagg::quantized::{MAX_LANE_BITS, MIN_LANE_BITS, Quantized};
use crate::task::TrainingPlan;

/// The manifest format this code writes and reads. Format 2 added
/// [`TaskManifest::distributed_dp`] (always encoded, `null` when absent: the wire codec is not
/// self-describing), which changes every manifest's canonical bytes.
pub const MANIFEST_FORMAT: &str = "medfed-task-manifest/2";

/// Domain separation of the manifest's signature: the coordinator's report key signs
/// `MANIFEST_SIGNATURE_DOMAIN ‖ SHA-256(canonical manifest)`, never a bare digest that could be
/// mistaken for another signed object.
pub const MANIFEST_SIGNATURE_DOMAIN: &[u8] = b"medfed-task-manifest-signature-v1\0";

/// Multiplier of the per-round seed rule: round `r` trains with seed
/// `seed_base · SEED_STRIDE + r` (wrapping in 64 bits).
pub const SEED_STRIDE: u64 = 1_000_003;

/// A 32-byte digest, written as 64 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest32(pub [u8; 32]);

impl Digest32 {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Digest32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest32 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest32 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut out = [0; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| serde::de::Error::custom("expected 64 hex digits"))?;
        Ok(Self(out))
    }
}

/// The whole plan of a training task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// Digest of the consortium's data schema ([`crate::schema::Schema::digest`]).
    pub schema_digest: Digest32,
    /// Digest of the consortium's member list (`medfed_certs::MemberList::digest`).
    pub members_digest: Digest32,
    /// Architecture of the model.
    pub model: ModelSpec,
    /// Training rounds planned; the final evaluation comes after the last one.
    pub rounds: u64,
    /// A round is applied only with at least this many hospitals' figures in its sum.
    pub min_nodes: u64,
    /// Local training of every round.
    pub training: TrainingRule,
    /// The server-side optimiser, for the record (it never reaches the nodes' data).
    pub strategy: StrategyRecord,
    /// Secure aggregation of every figure; `None`: figures travel in the clear.
    pub secure_aggregation: Option<SecureAggregationPlan>,
    /// What each hospital releases.
    pub releases: ReleasePlan,
    /// Distributed differential privacy of the training rounds: each round is one DP-FedSGD
    /// step whose noise the hospitals add in shares before masking. `None`: each hospital
    /// trains under its own policy (local DP-SGD, or none).
    pub distributed_dp: Option<DistributedDpPlan>,
}

/// Where the training noise of a task, or of a hospital, is added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyMode {
    /// Each hospital's own DP-SGD noises its update (or it trains without DP).
    #[default]
    Local,
    /// Distributed DP under secure aggregation ([`DistributedDpPlan`]): each hospital adds a
    /// share of the noise of one global DP-FedSGD step, and the unmasked sum carries all of it.
    Distributed,
}

impl PrivacyMode {
    /// `local` or `distributed`, as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Distributed => "distributed",
        }
    }
}

impl std::fmt::Display for PrivacyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Distributed differential privacy under secure aggregation, as the consortium declares it
/// (`[task.distributed_dp]` in the coordinator's configuration): everything
/// [`DdpConfig`] needs but the dimension, which is the model's parameter count, and the
/// per-example sampling rate of each round. See [`crate::distributed_dp`] and
/// `docs/DISTRIBUTED_DP.md`.
///
/// A task with it needs secure aggregation over the complete graph (no neighbours) with the
/// threshold rule fixed at [`Self::threshold`]: the central guarantee is that of the sum of
/// `t` noise shares, the fewest an unmasked sum holds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedDpPlan {
    /// q: each training row is in a round's sample independently with this probability.
    pub sample_rate: f64,
    /// z: the noise multiplier the sum of `t` shares carries.
    pub noise_multiplier: f64,
    /// C: the per-example L2 clipping norm.
    pub clip_norm: f64,
    /// γ: integer units per gradient unit.
    pub scale: f64,
    /// β of conditional rounding.
    pub rounding_beta: f64,
    /// t: the secure-aggregation threshold, the fewest inputs an unmasked sum holds.
    pub threshold: u64,
    /// n: the most participants a round may have (the encoding's headroom is sized for it).
    pub max_nodes: u64,
}

impl DistributedDpPlan {
    /// The configuration of a model of `dimension` parameters.
    pub fn config(&self, dimension: usize) -> DdpConfig {
        DdpConfig {
            clip_norm: self.clip_norm,
            scale: self.scale,
            dimension,
            nodes: usize::try_from(self.max_nodes).unwrap_or(usize::MAX),
            threshold: usize::try_from(self.threshold).unwrap_or(usize::MAX),
            noise_multiplier: self.noise_multiplier,
            rounding_beta: self.rounding_beta,
        }
    }

    /// The checked parameters for a model of `dimension` parameters.
    pub fn params(&self, dimension: usize) -> Result<DdpParams, DdpError> {
        DdpParams::new(self.config(dimension))
    }
}

/// The training plan of every round; only the seed depends on the round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRule {
    /// Passes over the training split per round.
    pub local_epochs: u32,
    /// Step size of local SGD.
    pub learning_rate: f64,
    /// Examples per mini-batch.
    pub batch_size: u32,
    /// Base of the per-round seed: round `r` uses `seed_base · 1 000 003 + r` (wrapping).
    pub seed_base: u64,
    /// Weight of a positive example's loss ([`TrainingPlan::pos_weight`]).
    #[serde(default = "unit_weight")]
    pub pos_weight: f64,
}

/// A positive example's loss weighs as much as a negative one's: plain binary cross-entropy.
fn unit_weight() -> f64 {
    1.0
}

impl TrainingRule {
    /// The plan of round `round` (the final evaluation's round included).
    pub fn plan(&self, round: u64) -> TrainingPlan {
        TrainingPlan {
            local_epochs: self.local_epochs,
            learning_rate: self.learning_rate,
            batch_size: self.batch_size,
            seed: self.seed_base.wrapping_mul(SEED_STRIDE).wrapping_add(round),
            pos_weight: self.pos_weight,
        }
    }
}

/// The server optimiser's name and hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyRecord {
    /// `fed_avg`, `fed_adam` or `fed_yogi`.
    pub name: String,
    /// Its hyper-parameters by name.
    pub hyper_parameters: BTreeMap<String, f64>,
}

/// How figures are securely aggregated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationPlan {
    /// Neighbours each participant pairs with (SecAgg+); `None`: everyone with everyone.
    pub neighbours: Option<u64>,
    /// The threshold of a round, given its share holders.
    pub threshold: ThresholdRule,
    /// Clip bound B of each coordinate of the weighted update.
    pub update_clip: f64,
    /// Fractional bits of the update's fixed point.
    pub fractional_bits: FractionalBitsRule,
    /// Quantised uploads: the update's values are clipped to `update_clip`, quantised with
    /// stochastic rounding and packed `32 / upload_bits` a word, each in a lane of this many
    /// bits ([`Quantized`]), instead of one fixed-point word each (`fractional_bits` is then
    /// unused). In the canonical bytes like every field (`null` when `None`).
    #[serde(default)]
    pub upload_bits: Option<u32>,
}

/// How a round's threshold follows from the holders `h` of each secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    /// `⌊2h/3⌋ + 1` ([`RoundParams::default_threshold`]).
    TwoThirdsPlusOne,
    /// This many shares, whatever `h`.
    Fixed(u64),
}

impl ThresholdRule {
    /// The threshold for `holders` share holders.
    pub fn threshold(self, holders: usize) -> usize {
        match self {
            Self::TwoThirdsPlusOne => RoundParams::default_threshold(holders),
            Self::Fixed(t) => usize::try_from(t).unwrap_or(usize::MAX),
        }
    }
}

/// How many fractional bits the update's fixed point has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FractionalBitsRule {
    /// As many as fit a sum over the round's participants `n`, with a bit of margin:
    /// `clamp(⌊log2(2^31 / (n · B))⌋ − 1, 0, 30)`.
    Fit,
    /// This many.
    Fixed(u32),
}

impl SecureAggregationPlan {
    /// The update's encoding for a round of `participants`: its fixed point, or, with
    /// [`Self::upload_bits`], its quantisation with as many level bits as a sum of
    /// `participants` inputs fits ([`Quantized::fit`]: the largest `b` with
    /// `participants · (2^b − 1) < 2^upload_bits`), the same round size the fixed point's
    /// [`FractionalBitsRule::Fit`] follows.
    pub fn update_encoding(&self, participants: usize) -> UpdateEncoding {
        match self.upload_bits {
            Some(lane_bits) => {
                UpdateEncoding::Quantized(Quantized::fit(self.update_clip, lane_bits, participants))
            }
            None => UpdateEncoding::Fixed(self.fixed_point(participants)),
        }
    }

    /// Refuses quantised uploads whose lanes are outside [`MIN_LANE_BITS`,
    /// [`MAX_LANE_BITS`]] or leave a round of `participants` less than one level bit.
    pub fn check_quantization(&self, participants: usize) -> Result<(), String> {
        let Some(bits) = self.upload_bits else {
            return Ok(());
        };
        if !(self.update_clip > 0.0 && (2.0 * self.update_clip).is_finite()) {
            return Err(format!(
                "update_clip = {} cannot be quantised: it must be positive, with 2 · update_clip \
                 finite",
                self.update_clip
            ));
        }
        if !(MIN_LANE_BITS..=MAX_LANE_BITS).contains(&bits) {
            return Err(format!(
                "upload_bits = {bits} is not in {MIN_LANE_BITS}..={MAX_LANE_BITS} (bits per \
                 quantised value, at least two values a 32-bit word)"
            ));
        }
        let fit = Quantized::fit(self.update_clip, bits, participants);
        if fit.level_bits == 0 {
            return Err(format!(
                "upload_bits = {bits} leaves a round of {participants} hospitals no level bit: \
                 {participants} · (2^1 − 1) ≥ 2^{bits} (raise upload_bits or lower the number \
                 of hospitals)"
            ));
        }
        Ok(())
    }

    /// The update's fixed point for a round of `participants`.
    fn fixed_point(&self, participants: usize) -> FixedPoint {
        let fractional_bits = match self.fractional_bits {
            FractionalBitsRule::Fixed(bits) => bits,
            FractionalBitsRule::Fit => {
                let room = f64::from(1u32 << 31) / (participants.max(1) as f64 * self.update_clip);
                (room.log2().floor() as i64 - 1).clamp(0, 30) as u32
            }
        };
        FixedPoint {
            clip: self.update_clip,
            fractional_bits,
        }
    }

    /// The neighbour count as the round parameters carry it.
    pub fn neighbours(&self) -> Option<usize> {
        self.neighbours
            .map(|k| usize::try_from(k).unwrap_or(usize::MAX))
    }

    /// Whether `setup` follows this plan: the neighbour count, the threshold for its holders
    /// and the update's encoding for its participants.
    fn check(&self, setup: &SecAggSetup) -> Result<(), Departure> {
        let params = &setup.params;
        if params.neighbours != self.neighbours() {
            return Err(Departure::Neighbours {
                got: params.neighbours,
                planned: self.neighbours(),
            });
        }
        let planned = self.threshold.threshold(params.holders_per_secret());
        if params.threshold != planned {
            return Err(Departure::Threshold {
                got: params.threshold,
                planned,
            });
        }
        let encoding = self.update_encoding(params.n());
        if setup.update_encoding != encoding {
            return Err(Departure::UpdateEncoding {
                got: setup.update_encoding,
                planned: encoding,
            });
        }
        // A round of more hospitals than the quantisation has room for (a member list longer
        // than `min_nodes` allows): declined now, before the node trains for nothing.
        if let Err(reason) = self.check_quantization(params.n()) {
            return Err(Departure::Quantization { reason });
        }
        Ok(())
    }
}

/// What each hospital releases, in figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePlan {
    /// The statistics round (round 0): count, sums and sums of squares per feature.
    pub statistics_figures: u64,
    /// Every round: evaluation counts of the round's starting model on the held-out split.
    pub evaluation_figures: u64,
    /// Every round: the audit groups whose counts are released.
    pub audit_groups: u64,
    /// Figures of each audit group's counts.
    pub audit_group_figures: u64,
    /// Every training round: the weighted update and its weight (parameters + 1).
    pub update_figures: u64,
    /// Whether the final model is evaluated after the last round (evaluation and audit-group
    /// counts, no update).
    pub final_evaluation: bool,
    /// Training rounds evaluate their starting model every this many rounds: rounds 1,
    /// 1 + k, 1 + 2k, …; the others release no evaluation or audit-group counts. 1: every round;
    /// [`FINAL_EVALUATION_ONLY`] (0): no training round, only the final evaluation.
    #[serde(default = "every_round")]
    pub evaluate_every: u64,
    /// Bins of the score histograms in the evaluation and audit-group counts.
    #[serde(default)]
    pub score_bins: ScoreBins,
    /// The decision threshold of the evaluation's and audit groups' confusion matrices (and of
    /// the released model's class).
    #[serde(default)]
    pub decision_threshold: DecisionThreshold,
    /// The hospitals (certificate names, sorted, each once) that release their own site figure
    /// of the final evaluation: after the evaluation-only round the coordinator asks each of
    /// them for the very evaluation vector it put into that round's sum. Being in the signed
    /// manifest, the list is approved by every hospital, which then counts a revealer out of
    /// every evaluation sum it joins (see [`Self::unrevealed`]). Empty: no site figures.
    #[serde(default)]
    pub site_figures: Vec<String>,
}

impl ReleasePlan {
    /// Whether `identity` releases its own site figure of the final evaluation.
    pub fn reveals(&self, identity: &str) -> bool {
        self.site_figures.iter().any(|h| h == identity)
    }

    /// How many of `sum` (the hospitals of an evaluation sum) release no site figure.
    ///
    /// The coordinator sees only sums; but a hospital that also releases its own evaluation
    /// vector lets it subtract that vector from the sum, leaving the sum over the others. Under
    /// the manifest's revealers, an evaluation sum over `S` protects its members' counts only as
    /// a sum over `S` less the revealers, which is what this counts.
    pub fn unrevealed<'a>(&self, sum: impl IntoIterator<Item = &'a str>) -> usize {
        sum.into_iter().filter(|h| !self.reveals(h)).count()
    }

    /// The same plan with distributed DP's update block: one word per parameter, no weight.
    pub fn distributed(mut self) -> Self {
        self.update_figures = self.update_figures.saturating_sub(1);
        self
    }
}

/// The evaluation schedule under which no training round evaluates: only the final model is
/// evaluated (when [`ReleasePlan::final_evaluation`] is on). The cheapest schedule for hospitals
/// that noise their evaluation counts.
pub const FINAL_EVALUATION_ONLY: u64 = 0;

/// The default evaluation schedule: every round.
fn every_round() -> u64 {
    1
}

impl ReleasePlan {
    /// What a round with `groups` audit groups, a `params`-parameter model and score histograms
    /// of `score_bins` releases.
    pub fn for_task(
        statistics_figures: usize,
        groups: usize,
        params: usize,
        score_bins: ScoreBins,
    ) -> Self {
        Self {
            statistics_figures: statistics_figures as u64,
            evaluation_figures: score_bins.evaluation_len() as u64,
            audit_groups: groups as u64,
            audit_group_figures: score_bins.group_len() as u64,
            update_figures: params as u64 + 1,
            final_evaluation: true,
            evaluate_every: 1,
            score_bins,
            decision_threshold: DecisionThreshold::DEFAULT,
            site_figures: Vec::new(),
        }
    }

    /// Whether round `round` evaluates its starting model: a training round by the schedule
    /// ([`Self::evaluate_every`]), the evaluation-only round always.
    pub fn evaluates(&self, round: u64, train: bool) -> bool {
        !train
            || (self.evaluate_every != FINAL_EVALUATION_ONLY
                && round.saturating_sub(1).is_multiple_of(self.evaluate_every))
    }

    /// How many of `rounds` training rounds evaluate, by the schedule.
    pub fn evaluated_rounds(&self, rounds: u64) -> u64 {
        match self.evaluate_every {
            FINAL_EVALUATION_ONLY => 0,
            every => rounds.div_ceil(every),
        }
    }

    /// Figures of one round's vector.
    pub fn round_figures(&self, train: bool, evaluate: bool) -> u64 {
        let counts = self
            .evaluation_figures
            .saturating_add(self.audit_groups.saturating_mul(self.audit_group_figures));
        (if evaluate { counts } else { 0 }).saturating_add(if train {
            self.update_figures
        } else {
            0
        })
    }
}

impl TaskManifest {
    /// Checks what the canonical encoding and the rules need: the format, positive finite
    /// numbers, at least one node.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |reason: &str| Err(ManifestError::Invalid(reason.to_owned()));
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(self.format.clone()));
        }
        if self.min_nodes == 0 {
            return invalid("min_nodes must be at least 1");
        }
        let training = &self.training;
        if !(training.learning_rate.is_finite() && training.learning_rate > 0.0) {
            return invalid("the learning rate must be a positive number");
        }
        if training.local_epochs == 0 || training.batch_size == 0 {
            return invalid("local epochs and batch size must be at least 1");
        }
        if !(training.pos_weight.is_finite() && training.pos_weight > 0.0) {
            return invalid("the positive class's loss weight must be a positive number");
        }
        let bins = self.releases.score_bins;
        if let Err(e) = bins.check() {
            return invalid(&e.to_string());
        }
        if self.releases.evaluation_figures != bins.evaluation_len() as u64
            || self.releases.audit_group_figures != bins.group_len() as u64
        {
            return invalid("the evaluation figures do not match the score bins");
        }
        let revealers = &self.releases.site_figures;
        if revealers.iter().any(String::is_empty) || !revealers.is_sorted_by(|a, b| a < b) {
            return invalid("the site-figure hospitals must be named, sorted and each once");
        }
        if !revealers.is_empty() && !self.releases.final_evaluation {
            return invalid("site figures are of the final evaluation, which the task leaves out");
        }
        if self
            .strategy
            .hyper_parameters
            .values()
            .any(|v| !v.is_finite())
        {
            return invalid("a strategy hyper-parameter is not a finite number");
        }
        if let Some(secure) = &self.secure_aggregation
            && !(secure.update_clip.is_finite() && secure.update_clip > 0.0)
        {
            return invalid("the update clip must be a positive number");
        }
        if let Some(secure) = &self.secure_aggregation {
            let fewest = usize::try_from(self.min_nodes).unwrap_or(usize::MAX);
            secure
                .check_quantization(fewest)
                .map_err(ManifestError::Invalid)?;
            if secure.upload_bits.is_some() && self.distributed_dp.is_some() {
                return invalid(
                    "quantised uploads (upload_bits) and distributed DP cannot be combined: \
                     distributed DP's update block is already integer words",
                );
            }
        }
        if let Some(plan) = &self.distributed_dp {
            self.validate_distributed(plan)?;
        }
        Ok(())
    }

    /// The task's privacy mode: distributed when it plans distributed DP.
    pub fn privacy_mode(&self) -> PrivacyMode {
        if self.distributed_dp.is_some() {
            PrivacyMode::Distributed
        } else {
            PrivacyMode::Local
        }
    }

    /// The parameters of distributed DP, when the task has it: `None` without it, and an error
    /// when its configuration is not a valid one for this model.
    pub fn distributed_params(&self) -> Option<Result<DdpParams, DdpError>> {
        let plan = self.distributed_dp.as_ref()?;
        Some(plan.params(self.model.layout().len()))
    }

    /// Distributed DP needs secure aggregation over the complete graph with the plan's fixed
    /// threshold (the central guarantee counts `t` shares in every unmasked sum), a sampling
    /// rate in (0, 1], and a configuration [`DdpParams::new`] accepts for the model.
    fn validate_distributed(&self, plan: &DistributedDpPlan) -> Result<(), ManifestError> {
        let invalid = |reason: String| Err(ManifestError::Invalid(reason));
        let Some(secure) = &self.secure_aggregation else {
            return invalid("distributed DP needs secure aggregation".into());
        };
        if secure.neighbours.is_some() {
            return invalid(
                "distributed DP needs secure aggregation over the complete graph (no neighbours)"
                    .into(),
            );
        }
        if secure.threshold != ThresholdRule::Fixed(plan.threshold) {
            return invalid(format!(
                "distributed DP's threshold {} is not the secure-aggregation threshold rule {:?}",
                plan.threshold, secure.threshold
            ));
        }
        if !(plan.sample_rate > 0.0 && plan.sample_rate <= 1.0) {
            return invalid(format!(
                "distributed DP's sample rate {} is not in (0, 1]",
                plan.sample_rate
            ));
        }
        if plan.max_nodes < self.min_nodes {
            return invalid(format!(
                "distributed DP's max_nodes {} is below min_nodes {}",
                plan.max_nodes, self.min_nodes
            ));
        }
        if self.model.validate().is_err() {
            return invalid("the model is not valid".into());
        }
        if let Some(Err(e)) = self.distributed_params() {
            return invalid(format!("distributed DP: {e}"));
        }
        Ok(())
    }

    /// The canonical encoding (see the module's documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising plain structs, sorted maps, strings and finite numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical encoding: the manifest's hash, as nodes log it.
    pub fn digest(&self) -> Digest32 {
        let mut out = [0; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, &self.canonical_bytes()).as_ref());
        Digest32(out)
    }

    /// Signs the manifest with the coordinator's report key.
    pub fn sign(self, key: &Ed25519KeyPair) -> Result<SignedManifest, ManifestError> {
        self.validate()?;
        let signature = key.sign(&signed_bytes(&self.digest())).as_ref().to_vec();
        Ok(SignedManifest {
            manifest: self,
            signature: hex::encode(signature),
        })
    }

    /// Whether a statistics request follows the manifest.
    pub fn check_stats_request(&self, request: &StatsRequest) -> Result<(), Departure> {
        if request.round != 0 {
            return Err(Departure::StatisticsRound {
                round: request.round,
            });
        }
        self.check_setup(request.secure_aggregation.as_ref())
    }

    /// Whether a round's request follows the manifest: its round is planned, its training plan
    /// is the round's, and its secure aggregation is the manifest's.
    pub fn check_round_start(&self, start: &RoundStart) -> Result<(), Departure> {
        // Training rounds are 1..=rounds; the evaluation-only round after the last completed
        // one may come early, when training stopped for lack of budget.
        let last = if start.train {
            self.rounds
        } else {
            self.rounds.saturating_add(1)
        };
        if start.round == 0 || start.round > last {
            return Err(Departure::RoundOutsidePlan {
                round: start.round,
                train: start.train,
                rounds: self.rounds,
            });
        }
        if !start.train && !self.releases.final_evaluation {
            return Err(Departure::UnplannedEvaluation { round: start.round });
        }
        // A training round may leave out a scheduled evaluation — it releases less; an honest
        // coordinator does so when the hospitals differ from those the held-out counts went
        // into before — but may not add one, and the evaluation-only round evaluates.
        let scheduled = self.releases.evaluates(start.round, start.train);
        if (start.evaluate && !scheduled) || (!start.evaluate && !start.train) {
            return Err(Departure::EvaluationSchedule {
                round: start.round,
                evaluate: start.evaluate,
                every: self.releases.evaluate_every,
            });
        }
        if start.evaluate && start.score_bins != self.releases.score_bins {
            return Err(Departure::ScoreBins {
                got: start.score_bins,
                planned: self.releases.score_bins,
            });
        }
        if start.evaluate && start.decision_threshold != self.releases.decision_threshold {
            return Err(Departure::DecisionThreshold {
                got: start.decision_threshold,
                planned: self.releases.decision_threshold,
            });
        }
        let planned = self.training.plan(start.round);
        let field = if start.plan.local_epochs != planned.local_epochs {
            Some(PlanField::LocalEpochs)
        } else if start.plan.learning_rate.to_bits() != planned.learning_rate.to_bits() {
            Some(PlanField::LearningRate)
        } else if start.plan.batch_size != planned.batch_size {
            Some(PlanField::BatchSize)
        } else if start.plan.seed != planned.seed {
            Some(PlanField::Seed)
        } else if start.plan.pos_weight.to_bits() != planned.pos_weight.to_bits() {
            Some(PlanField::PosWeight)
        } else {
            None
        };
        if let Some(field) = field {
            return Err(Departure::Plan {
                field,
                got: start.plan.clone(),
                planned,
            });
        }
        self.check_setup(start.secure_aggregation.as_ref())
    }

    fn check_setup(&self, setup: Option<&SecAggSetup>) -> Result<(), Departure> {
        match (&self.secure_aggregation, setup) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(Departure::SecureAggregationLeftOut),
            (None, Some(_)) => Err(Departure::SecureAggregationUnplanned),
            (Some(plan), Some(setup)) => {
                let n = setup.params.n() as u64;
                if n < self.min_nodes {
                    return Err(Departure::TooFewParticipants {
                        participants: n,
                        min_nodes: self.min_nodes,
                    });
                }
                if let Some(distributed) = &self.distributed_dp
                    && n > distributed.max_nodes
                {
                    return Err(Departure::TooManyParticipants {
                        participants: n,
                        max_nodes: distributed.max_nodes,
                    });
                }
                plan.check(setup)
            }
        }
    }
}

/// The bytes the coordinator's key signs: the domain, then the manifest's digest.
fn signed_bytes(digest: &Digest32) -> Vec<u8> {
    let mut bytes = MANIFEST_SIGNATURE_DOMAIN.to_vec();
    bytes.extend_from_slice(&digest.0);
    bytes
}

/// A manifest with the coordinator's Ed25519 signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The plan.
    pub manifest: TaskManifest,
    /// Ed25519 signature over [`MANIFEST_SIGNATURE_DOMAIN`] ‖ the manifest's digest, in hex.
    pub signature: String,
}

impl SignedManifest {
    /// Checks the manifest and its signature by the holder of `public_key` (the coordinator's
    /// Ed25519 key, from its certificate); returns the manifest's digest.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<Digest32, ManifestError> {
        self.manifest.validate()?;
        let digest = self.manifest.digest();
        let signature = hex::decode(&self.signature).map_err(|_| ManifestError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&signed_bytes(&digest), &signature)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok(digest)
    }

    /// The manifest file as written (`manifest.json`): pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a manifest file.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        serde_json::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))
    }
}

/// A manifest that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Another format than [`MANIFEST_FORMAT`].
    #[error("manifest format {0:?} is not {MANIFEST_FORMAT:?}")]
    Format(String),
    /// A value the rules cannot use.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// The signature is not the coordinator's over this manifest.
    #[error("the manifest's signature does not verify with the coordinator's key")]
    BadSignature,
    /// The file is not a manifest.
    #[error("not a signed manifest: {0}")]
    Syntax(String),
}

/// A field of the training plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanField {
    /// Local epochs.
    LocalEpochs,
    /// Learning rate.
    LearningRate,
    /// Batch size.
    BatchSize,
    /// The per-round seed.
    Seed,
    /// The weight of a positive example's loss.
    PosWeight,
}

/// How a request departs from the approved manifest (for the node's own log; on the wire the
/// node sends only `PolicyViolation::DepartsFromManifest`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Departure {
    /// Statistics were asked for in another round than 0.
    #[error("statistics requested for round {round}; the manifest plans them in round 0")]
    StatisticsRound {
        /// The round asked.
        round: u64,
    },
    /// A round the manifest does not plan.
    #[error("round {round} (train: {train}) is outside the manifest's {rounds} rounds")]
    RoundOutsidePlan {
        /// The round asked.
        round: u64,
        /// Whether it trains.
        train: bool,
        /// Planned training rounds.
        rounds: u64,
    },
    /// The round's score histograms are not binned as the manifest says.
    #[error(
        "score histograms of {} and {} bins asked; the manifest plans {} and {}",
        got.evaluation, got.group, planned.evaluation, planned.group
    )]
    ScoreBins {
        /// The bins asked.
        got: ScoreBins,
        /// The manifest's.
        planned: ScoreBins,
    },
    /// The round's confusion matrices are not at the manifest's decision threshold.
    #[error("decision threshold {got} asked; the manifest plans {planned}")]
    DecisionThreshold {
        /// The threshold asked.
        got: DecisionThreshold,
        /// The manifest's.
        planned: DecisionThreshold,
    },
    /// An evaluation-only round the manifest does not plan.
    #[error("evaluation-only round {round} is not planned")]
    UnplannedEvaluation {
        /// The round asked.
        round: u64,
    },
    /// The round's evaluation departs from the schedule: asked off schedule, or left out of the
    /// evaluation-only round.
    #[error(
        "round {round} asks evaluate = {evaluate}; the manifest evaluates every {every} rounds (0: the final model only)"
    )]
    EvaluationSchedule {
        /// The round asked.
        round: u64,
        /// Whether it asked for an evaluation.
        evaluate: bool,
        /// The manifest's schedule.
        every: u64,
    },
    /// The training plan differs.
    #[error("the training plan's {field:?} differs: {got:?}, planned {planned:?}")]
    Plan {
        /// The first field that differs.
        field: PlanField,
        /// The plan sent.
        got: TrainingPlan,
        /// The manifest's plan for the round.
        planned: TrainingPlan,
    },
    /// Secure aggregation left out, though the manifest plans it.
    #[error("secure aggregation is left out; the manifest plans it")]
    SecureAggregationLeftOut,
    /// Secure aggregation asked for, though the manifest has it off.
    #[error("secure aggregation is asked for; the manifest has it off")]
    SecureAggregationUnplanned,
    /// Fewer participants than the manifest's minimum.
    #[error("{participants} participants; the manifest needs at least {min_nodes}")]
    TooFewParticipants {
        /// Participants in the round.
        participants: u64,
        /// The manifest's minimum.
        min_nodes: u64,
    },
    /// More participants than distributed DP's encoding is sized for.
    #[error("{participants} participants; distributed DP is sized for at most {max_nodes}")]
    TooManyParticipants {
        /// Participants in the round.
        participants: u64,
        /// The plan's `max_nodes`.
        max_nodes: u64,
    },
    /// Another neighbour count.
    #[error("neighbours {got:?}, planned {planned:?}")]
    Neighbours {
        /// Sent.
        got: Option<usize>,
        /// Planned.
        planned: Option<usize>,
    },
    /// Another threshold than the manifest's rule gives.
    #[error("threshold {got}, the manifest's rule gives {planned}")]
    Threshold {
        /// Sent.
        got: usize,
        /// Planned.
        planned: usize,
    },
    /// Another update encoding than the manifest's rule gives.
    #[error("update encoding {got:?}, the manifest's rule gives {planned:?}")]
    UpdateEncoding {
        /// Sent.
        got: UpdateEncoding,
        /// Planned.
        planned: UpdateEncoding,
    },
    /// A round the manifest's quantisation has no room for.
    #[error("{reason}")]
    Quantization {
        /// Which numbers do not fit.
        reason: String,
    },
}

#[cfg(test)]
pub(crate) mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    use super::*;
    use crate::model::{ModelHash, ModelKind};
    use crate::secagg::Participant;
    use crate::stats::Standardization;

    pub(crate) fn example() -> TaskManifest {
        TaskManifest {
            format: MANIFEST_FORMAT.into(),
            schema_digest: Digest32([1; 32]),
            members_digest: Digest32([2; 32]),
            model: ModelSpec {
                kind: ModelKind::Mlp { hidden: vec![8] },
                input_dim: 6,
            },
            rounds: 3,
            min_nodes: 3,
            training: TrainingRule {
                local_epochs: 2,
                learning_rate: 0.1,
                batch_size: 16,
                seed_base: 11,
                pos_weight: 1.0,
            },
            strategy: StrategyRecord {
                name: "fed_avg".into(),
                hyper_parameters: BTreeMap::from([("server_learning_rate".into(), 1.0)]),
            },
            secure_aggregation: Some(SecureAggregationPlan {
                neighbours: None,
                threshold: ThresholdRule::TwoThirdsPlusOne,
                update_clip: 1024.0,
                fractional_bits: FractionalBitsRule::Fit,
                upload_bits: None,
            }),
            releases: ReleasePlan::for_task(13, 4, 65, ScoreBins::FINE),
            distributed_dp: None,
        }
    }

    /// [`example`] under distributed DP: t = 2 of at most 3 nodes, fixed threshold.
    pub(crate) fn distributed_example() -> TaskManifest {
        let mut manifest = example();
        let secure = manifest.secure_aggregation.as_mut().unwrap();
        secure.threshold = ThresholdRule::Fixed(2);
        manifest.releases = manifest.releases.distributed();
        manifest.distributed_dp = Some(DistributedDpPlan {
            sample_rate: 0.1,
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            scale: crate::distributed_dp::DEFAULT_SCALED_CLIP,
            rounding_beta: crate::distributed_dp::DEFAULT_ROUNDING_BETA,
            threshold: 2,
            max_nodes: 3,
        });
        manifest
    }

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    /// Every way of changing one field of the example.
    fn one_field_changed() -> Vec<(&'static str, TaskManifest)> {
        let base = example();
        let with = |f: &dyn Fn(&mut TaskManifest)| {
            let mut m = base.clone();
            f(&mut m);
            m
        };
        let secure = |f: &dyn Fn(&mut SecureAggregationPlan)| {
            with(&|m| f(m.secure_aggregation.as_mut().unwrap()))
        };
        vec![
            ("format", with(&|m| m.format.push('x'))),
            ("schema", with(&|m| m.schema_digest.0[31] ^= 1)),
            ("members", with(&|m| m.members_digest.0[0] ^= 1)),
            (
                "model kind",
                with(&|m| m.model.kind = ModelKind::LogisticRegression),
            ),
            ("input dim", with(&|m| m.model.input_dim += 1)),
            ("rounds", with(&|m| m.rounds += 1)),
            ("min nodes", with(&|m| m.min_nodes += 1)),
            ("epochs", with(&|m| m.training.local_epochs += 1)),
            (
                "learning rate",
                with(&|m| m.training.learning_rate = 0.1000001),
            ),
            ("batch size", with(&|m| m.training.batch_size += 1)),
            ("seed", with(&|m| m.training.seed_base += 1)),
            ("strategy", with(&|m| m.strategy.name = "fed_adam".into())),
            (
                "strategy hyper-parameter",
                with(&|m| {
                    m.strategy
                        .hyper_parameters
                        .insert("server_learning_rate".into(), 0.5);
                }),
            ),
            (
                "secure aggregation off",
                with(&|m| m.secure_aggregation = None),
            ),
            ("neighbours", secure(&|s| s.neighbours = Some(4))),
            ("upload bits", secure(&|s| s.upload_bits = Some(8))),
            (
                "threshold",
                secure(&|s| s.threshold = ThresholdRule::Fixed(3)),
            ),
            ("clip", secure(&|s| s.update_clip = 512.0)),
            (
                "fractional bits",
                secure(&|s| s.fractional_bits = FractionalBitsRule::Fixed(12)),
            ),
            ("statistics", with(&|m| m.releases.statistics_figures += 1)),
            ("evaluation", with(&|m| m.releases.evaluation_figures += 1)),
            ("audit groups", with(&|m| m.releases.audit_groups += 1)),
            (
                "group figures",
                with(&|m| m.releases.audit_group_figures += 1),
            ),
            ("update", with(&|m| m.releases.update_figures += 1)),
            (
                "final evaluation",
                with(&|m| m.releases.final_evaluation = false),
            ),
            (
                "site figures",
                with(&|m| m.releases.site_figures = vec!["hospital-a".into()]),
            ),
            ("distributed DP", distributed_example()),
            ("distributed DP's noise", {
                let mut m = distributed_example();
                m.distributed_dp.as_mut().unwrap().noise_multiplier = 1.5;
                m
            }),
        ]
    }

    #[test]
    fn the_digest_is_stable_and_sensitive_to_every_field() {
        let base = example();
        assert_eq!(base.digest(), example().digest());
        // Through the wire codec and through the file, the digest is the same.
        let signed = base.clone().sign(&key()).unwrap();
        let welcome = crate::messages::Message::Welcome(crate::messages::Welcome {
            session: 1,
            identity: "h".into(),
            manifest: signed.clone(),
        });
        let mut decoder = crate::codec::FrameDecoder::new(crate::codec::MAX_FRAME_LEN);
        decoder.feed(&crate::codec::frame(&welcome).unwrap());
        let Some(crate::messages::Message::Welcome(decoded)) = decoder.next_message().unwrap()
        else {
            panic!("not a welcome");
        };
        assert_eq!(decoded.manifest.manifest.digest(), base.digest());
        let read = SignedManifest::from_json(&signed.to_json()).unwrap();
        assert_eq!(read.manifest.digest(), base.digest());
        let mut seen = std::collections::HashSet::from([base.digest()]);
        for (what, changed) in one_field_changed() {
            assert!(
                seen.insert(changed.digest()),
                "{what} does not change the digest"
            );
        }
    }

    #[test]
    fn the_signature_verifies_and_fails_on_any_change() {
        let key = key();
        let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        let signed = example().sign(&key).unwrap();
        assert_eq!(signed.verify(&public), Ok(example().digest()));
        for (what, changed) in one_field_changed() {
            let forged = SignedManifest {
                manifest: changed,
                signature: signed.signature.clone(),
            };
            assert!(forged.verify(&public).is_err(), "{what} still verifies");
        }
        // Another key's signature, or a mangled one, does not verify.
        let other = example().sign(&self::key()).unwrap();
        assert_eq!(other.verify(&public), Err(ManifestError::BadSignature));
        let mut mangled = signed.clone();
        mangled.signature.replace_range(0..2, "00");
        mangled.signature.replace_range(2..4, "ff");
        assert_eq!(mangled.verify(&public), Err(ManifestError::BadSignature));
        let not_hex = SignedManifest {
            signature: "zz".into(),
            ..signed
        };
        assert_eq!(not_hex.verify(&public), Err(ManifestError::BadSignature));
    }

    #[test]
    fn quantised_uploads_need_a_level_bit_for_the_fewest_hospitals_and_no_distributed_dp() {
        let quantised = |bits: u32, min_nodes: u64| {
            let mut m = example();
            m.min_nodes = min_nodes;
            m.secure_aggregation.as_mut().unwrap().upload_bits = Some(bits);
            m
        };
        assert_eq!(quantised(8, 3).validate(), Ok(()));
        assert_eq!(quantised(2, 3).validate(), Ok(()));
        // 4-bit lanes: 15 hospitals get one level bit (15 · 1 < 16), 16 none.
        assert_eq!(quantised(4, 15).validate(), Ok(()));
        match quantised(4, 16).validate() {
            Err(ManifestError::Invalid(reason)) => {
                assert!(reason.contains("16 hospitals no level bit"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        for bits in [0, 1, 17, 32] {
            assert!(
                matches!(
                    quantised(bits, 3).validate(),
                    Err(ManifestError::Invalid(_))
                ),
                "{bits}"
            );
        }
        let mut distributed = quantised(8, 3);
        distributed.distributed_dp = Some(DistributedDpPlan {
            sample_rate: 0.1,
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            scale: 16384.0,
            rounding_beta: 2f64.powi(-20),
            threshold: 2,
            max_nodes: 3,
        });
        distributed.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(2);
        match distributed.validate() {
            Err(ManifestError::Invalid(reason)) => {
                assert!(reason.contains("distributed DP"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_manifest_with_unusable_numbers_is_refused_before_signing() {
        let mut nan = example();
        nan.training.learning_rate = f64::NAN;
        assert!(matches!(nan.sign(&key()), Err(ManifestError::Invalid(_))));
        let mut format = example();
        format.format = "medfed-task-manifest/0".into();
        assert!(matches!(format.sign(&key()), Err(ManifestError::Format(_))));
        assert!(matches!(
            SignedManifest::from_json("{\"manifest\": 1}"),
            Err(ManifestError::Syntax(_))
        ));
    }

    fn setup(manifest: &TaskManifest, n: u16) -> SecAggSetup {
        let plan = manifest.secure_aggregation.as_ref().unwrap();
        let mut params = RoundParams {
            session: 1,
            round: 1,
            participants: (1..=n)
                .map(|index| Participant {
                    index,
                    identity: format!("h{index}"),
                })
                .collect(),
            threshold: 0,
            neighbours: plan.neighbours(),
            graph_seed: [0; 32],
            vector_len: 10,
            encoding_digest: [0; 32],
        };
        params.threshold = plan.threshold.threshold(params.holders_per_secret());
        SecAggSetup {
            params,
            update_encoding: plan.update_encoding(usize::from(n)),
        }
    }

    fn start(manifest: &TaskManifest, round: u64, train: bool) -> RoundStart {
        RoundStart {
            session: 1,
            round,
            attempt: 1,
            model_hash: ModelHash([0; 32]),
            train,
            evaluate: manifest.releases.evaluates(round, train),
            score_bins: manifest.releases.score_bins,
            decision_threshold: manifest.releases.decision_threshold,
            plan: manifest.training.plan(round),
            standardization: Standardization {
                mean: vec![],
                std: vec![],
            },
            secure_aggregation: Some(setup(manifest, 4)),
        }
    }

    #[test]
    fn an_evaluation_off_the_schedule_is_a_departure() {
        let mut m = example();
        m.releases.evaluate_every = 2;
        assert_eq!(m.releases.evaluated_rounds(3), 2);
        let scheduled: Vec<bool> = (1..=3).map(|r| m.releases.evaluates(r, true)).collect();
        assert_eq!(scheduled, [true, false, true]);
        // The evaluation-only round always evaluates.
        assert!(m.releases.evaluates(4, false));
        for round in 1..=3 {
            let mut request = start(&m, round, true);
            assert_eq!(m.check_round_start(&request), Ok(()));
            request.evaluate = !request.evaluate;
            // Leaving a scheduled evaluation out releases less: allowed; adding one is not.
            let expected = if request.evaluate {
                Err(Departure::EvaluationSchedule {
                    round,
                    evaluate: true,
                    every: 2,
                })
            } else {
                Ok(())
            };
            assert_eq!(m.check_round_start(&request), expected, "round {round}");
        }
        let mut final_evaluation = start(&m, 4, false);
        final_evaluation.evaluate = false;
        assert!(m.check_round_start(&final_evaluation).is_err());
        // Under the final-only schedule, no training round evaluates and none may.
        m.releases.evaluate_every = FINAL_EVALUATION_ONLY;
        m.validate().unwrap();
        assert_eq!(m.releases.evaluated_rounds(3), 0);
        assert!(m.releases.evaluates(4, false));
        for round in 1..=3 {
            let mut request = start(&m, round, true);
            assert!(!request.evaluate);
            assert_eq!(m.check_round_start(&request), Ok(()));
            request.evaluate = true;
            assert!(m.check_round_start(&request).is_err(), "round {round}");
        }
    }

    #[test]
    fn histograms_binned_other_than_the_manifest_says_are_a_departure() {
        let coarse = ScoreBins {
            evaluation: 20,
            group: 10,
        };
        let mut m = example();
        m.releases = ReleasePlan::for_task(13, 4, 65, coarse);
        m.validate().unwrap();
        let mut request = start(&m, 1, true);
        assert_eq!(m.check_round_start(&request), Ok(()));
        request.score_bins = ScoreBins::FINE;
        assert_eq!(
            m.check_round_start(&request),
            Err(Departure::ScoreBins {
                got: ScoreBins::FINE,
                planned: coarse
            })
        );
        // A manifest whose figures do not follow from its bins, or with bins that cannot be
        // used, is refused.
        m.releases.evaluation_figures += 2;
        assert!(m.validate().is_err());
        m.releases = ReleasePlan::for_task(13, 4, 65, coarse);
        m.releases.score_bins.group = 0;
        assert!(m.validate().is_err());
    }

    #[test]
    fn confusion_matrices_at_another_threshold_than_the_manifests_are_a_departure() {
        let mut m = example();
        let rare = DecisionThreshold::new(0.15).unwrap();
        m.releases.decision_threshold = rare;
        m.validate().unwrap();
        let mut request = start(&m, 1, true);
        assert_eq!(request.decision_threshold, rare);
        assert_eq!(m.check_round_start(&request), Ok(()));
        request.decision_threshold = DecisionThreshold::DEFAULT;
        assert_eq!(
            m.check_round_start(&request),
            Err(Departure::DecisionThreshold {
                got: DecisionThreshold::DEFAULT,
                planned: rare
            })
        );
        // The threshold is signed: another threshold is another manifest.
        assert_ne!(m.digest(), example().digest());
    }

    #[test]
    fn site_figure_hospitals_are_signed_named_once_and_need_the_final_evaluation() {
        let mut m = example();
        m.releases.site_figures = vec!["hospital-a".into(), "hospital-c".into()];
        m.validate().unwrap();
        assert!(m.releases.reveals("hospital-a"));
        assert!(!m.releases.reveals("hospital-b"));
        // Of the sum {a, b, c}, only b's counts stay hidden once a and c reveal theirs.
        assert_eq!(
            m.releases
                .unrevealed(["hospital-a", "hospital-b", "hospital-c"]),
            1
        );
        // Who reveals is part of what every hospital approves.
        assert_ne!(m.digest(), example().digest());
        let refused = |change: &dyn Fn(&mut TaskManifest)| {
            let mut bad = m.clone();
            change(&mut bad);
            assert!(
                matches!(bad.validate(), Err(ManifestError::Invalid(_))),
                "{:?}",
                bad.releases.site_figures
            );
        };
        refused(&|m| m.releases.site_figures.push("hospital-a".into()));
        refused(&|m| m.releases.site_figures.reverse());
        refused(&|m| m.releases.site_figures.push(String::new()));
        refused(&|m| m.releases.final_evaluation = false);
        // A manifest file written before the field existed reads as revealing nobody.
        let mut json: serde_json::Value =
            serde_json::from_slice(&example().canonical_bytes()).unwrap();
        json["releases"]
            .as_object_mut()
            .unwrap()
            .remove("site_figures");
        let read: TaskManifest = serde_json::from_value(json).unwrap();
        assert!(read.releases.site_figures.is_empty());
    }

    #[test]
    fn requests_that_follow_the_manifest_pass() {
        let m = example();
        for round in 1..=3 {
            assert_eq!(m.check_round_start(&start(&m, round, true)), Ok(()));
        }
        // The final evaluation comes after the last round, or earlier if training stopped.
        assert_eq!(m.check_round_start(&start(&m, 4, false)), Ok(()));
        assert_eq!(m.check_round_start(&start(&m, 2, false)), Ok(()));
        let stats = StatsRequest {
            session: 1,
            round: 0,
            secure_aggregation: Some(setup(&m, 3)),
        };
        assert_eq!(m.check_stats_request(&stats), Ok(()));
        // The per-round seed follows the stated rule.
        assert_eq!(m.training.plan(2).seed, 11 * 1_000_003 + 2);
    }

    #[test]
    fn distributed_dp_is_stated_in_the_canonical_encoding_either_way() {
        let text = String::from_utf8(example().canonical_bytes()).unwrap();
        assert!(text.contains(r#""distributed_dp":null"#), "{text}");
        let read: TaskManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(read.distributed_dp, None);
        let distributed = distributed_example();
        let text = String::from_utf8(distributed.canonical_bytes()).unwrap();
        assert!(
            text.contains(r#""distributed_dp":{"sample_rate":0.1"#),
            "{text}"
        );
        let read: TaskManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(read, distributed);
    }

    #[test]
    fn distributed_dp_needs_fixed_threshold_secure_aggregation_and_a_usable_configuration() {
        let good = distributed_example();
        good.validate().unwrap();
        let params = good.distributed_params().unwrap().unwrap();
        assert_eq!(params.config().dimension, 65);
        assert_eq!(params.config().threshold, 2);
        let refused = |change: &dyn Fn(&mut TaskManifest), needle: &str| {
            let mut m = good.clone();
            change(&mut m);
            match m.validate() {
                Err(ManifestError::Invalid(reason)) => {
                    assert!(reason.contains(needle), "{needle}: {reason}");
                }
                other => panic!("{needle}: {other:?}"),
            }
        };
        refused(&|m| m.secure_aggregation = None, "needs secure aggregation");
        refused(
            &|m| m.secure_aggregation.as_mut().unwrap().neighbours = Some(2),
            "complete graph",
        );
        refused(
            &|m| m.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::TwoThirdsPlusOne,
            "threshold",
        );
        refused(
            &|m| m.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(3),
            "threshold",
        );
        refused(
            &|m| m.distributed_dp.as_mut().unwrap().sample_rate = 0.0,
            "sample rate",
        );
        refused(
            &|m| m.distributed_dp.as_mut().unwrap().sample_rate = 1.5,
            "sample rate",
        );
        refused(
            &|m| m.distributed_dp.as_mut().unwrap().max_nodes = 2,
            "max_nodes",
        );
        refused(
            &|m| m.distributed_dp.as_mut().unwrap().noise_multiplier = 0.0,
            "noise multiplier",
        );
        refused(
            &|m| {
                let plan = m.distributed_dp.as_mut().unwrap();
                plan.threshold = 4;
                m.secure_aggregation.as_mut().unwrap().threshold = ThresholdRule::Fixed(4);
            },
            "threshold 4",
        );
    }

    #[test]
    fn a_distributed_round_with_more_participants_than_planned_is_a_departure() {
        let m = distributed_example();
        let mut s = start(&m, 2, true);
        s.secure_aggregation = Some(setup(&m, 3));
        m.check_round_start(&s).unwrap();
        s.secure_aggregation = Some(setup(&m, 4));
        assert_eq!(
            m.check_round_start(&s).unwrap_err(),
            Departure::TooManyParticipants {
                participants: 4,
                max_nodes: 3
            }
        );
    }

    #[test]
    fn every_departure_is_caught() {
        let m = example();
        let departs = |change: &dyn Fn(&mut RoundStart)| {
            let mut s = start(&m, 2, true);
            change(&mut s);
            m.check_round_start(&s).unwrap_err()
        };
        assert!(matches!(
            departs(&|s| s.round = 4),
            Departure::RoundOutsidePlan { round: 4, .. }
        ));
        assert!(matches!(
            departs(&|s| {
                s.round = 5;
                s.train = false;
            }),
            Departure::RoundOutsidePlan { round: 5, .. }
        ));
        assert!(matches!(
            departs(&|s| s.round = 0),
            Departure::RoundOutsidePlan { .. }
        ));
        for (field, change) in [
            (
                PlanField::LearningRate,
                &(|s: &mut RoundStart| s.plan.learning_rate *= 10.0) as &dyn Fn(&mut RoundStart),
            ),
            (PlanField::BatchSize, &|s: &mut RoundStart| {
                s.plan.batch_size = 1
            }),
            (PlanField::PosWeight, &|s: &mut RoundStart| {
                s.plan.pos_weight = 20.0
            }),
            (PlanField::LocalEpochs, &|s: &mut RoundStart| {
                s.plan.local_epochs = 50
            }),
            (PlanField::Seed, &|s: &mut RoundStart| s.plan.seed += 1),
        ] {
            assert!(
                matches!(departs(change), Departure::Plan { field: f, .. } if f == field),
                "{field:?}"
            );
        }
        assert_eq!(
            departs(&|s| s.secure_aggregation = None),
            Departure::SecureAggregationLeftOut
        );
        assert!(matches!(
            departs(&|s| s.secure_aggregation.as_mut().unwrap().params.threshold = 2),
            Departure::Threshold { got: 2, planned: 3 }
        ));
        assert!(matches!(
            departs(&|s| s.secure_aggregation.as_mut().unwrap().params.neighbours = Some(2)),
            Departure::Neighbours { .. }
        ));
        assert!(matches!(
            departs(
                &|s| s.secure_aggregation.as_mut().unwrap().update_encoding =
                    UpdateEncoding::Fixed(FixedPoint {
                        clip: 1024.0,
                        fractional_bits: 1,
                    })
            ),
            Departure::UpdateEncoding { .. }
        ));
        // A coordinator that sends the fixed point where the manifest quantises, or other
        // lanes or levels than the manifest's rule gives for the round, is caught.
        let mut quantised = m.clone();
        quantised.secure_aggregation.as_mut().unwrap().upload_bits = Some(8);
        let planned = start(&quantised, 2, true);
        assert_eq!(quantised.check_round_start(&planned), Ok(()));
        assert_eq!(
            planned.secure_aggregation.as_ref().unwrap().update_encoding,
            UpdateEncoding::Quantized(Quantized {
                clip: 1024.0,
                level_bits: 6,
                lane_bits: 8
            })
        );
        assert!(matches!(
            quantised.check_round_start(&start(&m, 2, true)),
            Err(Departure::UpdateEncoding { .. })
        ));
        for (level_bits, lane_bits) in [(7, 8), (5, 8), (14, 16)] {
            let mut other = planned.clone();
            other.secure_aggregation.as_mut().unwrap().update_encoding =
                UpdateEncoding::Quantized(Quantized {
                    clip: 1024.0,
                    level_bits,
                    lane_bits,
                });
            assert!(matches!(
                quantised.check_round_start(&other),
                Err(Departure::UpdateEncoding { .. })
            ));
        }
        // Two-bit lanes hold a sum of three one-bit levels, not four: a round of four
        // hospitals (a member list longer than min_nodes lets through) is declined before
        // anything is trained, even with the encoding the rule gives (no level bit).
        let mut narrow = m.clone();
        narrow.secure_aggregation.as_mut().unwrap().upload_bits = Some(2);
        let four = start(&narrow, 2, true);
        assert!(matches!(
            narrow.check_round_start(&four),
            Err(Departure::Quantization { .. })
        ));
        assert!(matches!(
            departs(&|s| s.secure_aggregation = Some(setup(&m, 2))),
            Departure::TooFewParticipants {
                participants: 2,
                min_nodes: 3
            }
        ));
        let mut plain = m.clone();
        plain.secure_aggregation = None;
        assert_eq!(
            plain.check_round_start(&start(&m, 1, true)),
            Err(Departure::SecureAggregationUnplanned)
        );
        let mut no_final = m.clone();
        no_final.releases.final_evaluation = false;
        assert!(matches!(
            no_final.check_round_start(&start(&m, 4, false)),
            Err(Departure::UnplannedEvaluation { round: 4 })
        ));
        let stats = StatsRequest {
            session: 1,
            round: 1,
            secure_aggregation: Some(setup(&m, 3)),
        };
        assert!(matches!(
            m.check_stats_request(&stats),
            Err(Departure::StatisticsRound { round: 1 })
        ));
    }
}
