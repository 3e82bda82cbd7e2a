//! What a node does with each request: the hospital-side rules, apart from the network.
//!
//! [`Hospital`] holds the node's data, the model it was sent and what it has answered in the
//! coordinator's current session. It answers the coordinator's requests, refusing those from
//! another session or round and replays of a round it already answered.

use std::collections::{HashMap, HashSet};

use medfed_protocol::accounting::Mechanism;
use medfed_protocol::contribution::{LocalUpdate, RoundLayout, RoundResult};
use medfed_protocol::distributed_dp::DdpParams;
use medfed_protocol::eval_release::EvaluationNoise;
use medfed_protocol::evaluation::{DecisionThreshold, EvalCounts, EvalMetrics, ScoreBins};
use medfed_protocol::fairness::GroupCounts;
use medfed_protocol::manifest::{Departure, Digest32, PrivacyMode, SignedManifest, TaskManifest};
use medfed_protocol::messages::{
    Contribution, ContributionKind, DeclineReason, Declined, FigureOutOfRange, Message,
    ModelReceived, PlainFigures, PolicyViolation, PrivacySpent, RefusalReason, Refused, RoundKeys,
    RoundStart, SecAggSetup, SiteFigure, SiteFigureRequest, StatsRequest,
};
use medfed_protocol::model::{Model, ModelError, ModelHash, ModelKind, ModelSpec};
use medfed_protocol::schema::Schema;
use medfed_protocol::secagg::encoding::{BlockEncoding, VectorEncoding};
use medfed_protocol::secagg::{
    ExpectDirectory, ParticipantState, PeerVerifier, RoundParams, SecAggError, Signer,
};
use medfed_protocol::stats::{
    ClippedValues, Standardization, StatsError, StatsLayout, stats_contribution,
};
use medfed_protocol::stats_release::StatisticsNoise;
use medfed_protocol::task::TrainingPlan;
use rand::{SeedableRng, TryRngCore};

use crate::auto_noise::AutoNoiseMultiplier;
use crate::config::{NoiseMultiplier, PrivacyConfig};
use crate::data::Dataset;
use crate::egress::now_ms;
use crate::examples::Examples;
use crate::ledger::{LedgerEntry, PrivacyLedger, Release, epsilon_of, local_epsilon_of};
use crate::manifest::{
    LISTED_ROUNDS, LocalForecast, ManifestApproval, ManifestRefusal, PrivacyForecast, RoundCost,
    check_manifest,
};
use crate::policy::{NodePolicy, PolicyGate};
use crate::progress::Progress;
use crate::releases::{ExactFigures, ReleaseRecord};
use crate::site_figures::{SiteFigureStore, SiteVector};
use crate::trainer::{DistributedRound, DpConfig, TrainError, TrainProgress, Trainer};
use crate::validation::{self, SiteValidation};

/// A hospital's node: its data, its model and its session bookkeeping.
pub struct Hospital {
    /// The consortium schema the data follows.
    schema: Schema,
    /// Training split, not standardised.
    train: Dataset,
    /// Held-out split, not standardised.
    held_out: Dataset,
    /// For each held-out row, the audit groups it belongs to (at most one per audited
    /// attribute, intersections included).
    held_out_groups: Vec<Vec<usize>>,
    /// Local computation.
    trainer: Box<dyn Trainer>,
    /// The model last received from the coordinator.
    model: Option<Model>,
    /// The coordinator session whose requests are answered.
    session: Option<u64>,
    /// `(round, attempt)` pairs answered in the current session: a second request for one is a
    /// replay. A restarted round comes as a new attempt.
    answered: HashSet<(u64, u32)>,
    /// This node's identity, as the coordinator read it from its certificate.
    identity: Option<String>,
    /// Signs this node's round keys and checks its peers'.
    credentials: Option<Credentials>,
    /// The secure aggregation in progress, if any. A new request discards it: its figures
    /// and their ledger entries go together, or not at all.
    secagg: Option<OpenAggregation>,
    /// The hospital's privacy policy and ledger; `None`: training is not differentially private.
    privacy: Option<Privacy>,
    /// The releases the coordinator plans, for choosing σ automatically.
    schedule: Schedule,
    /// σ chosen for the plan, under `noise_multiplier = "auto"`.
    auto_noise_multiplier: AutoNoiseMultiplier,
    /// What the hospital agrees to release.
    policy: PolicyGate,
    /// Exact figures already released into secure sums, and over whom.
    exact_releases: ReleaseRecord,
    /// The task manifest approved for the current coordinator, with its digest: every request
    /// must follow it. The network driver ([`crate::client`]) approves one before it enters a
    /// session; `None` only for a hospital driven directly (tests), which checks no plan.
    manifest: Option<(TaskManifest, Digest32)>,
    /// The hospital's own record of every model scored on its held-out patients (never sent);
    /// `None`: no record is kept.
    validation: Option<SiteValidation>,
    /// The final evaluation's vectors, kept to release as the site figure when the hospital
    /// opted in (`[policy] release_site_figures`) and the manifest lists it.
    site_figures: SiteFigureStore,
}

/// A secure aggregation this node takes part in: its state, which exact figures
/// the masked vector carries, and the ledger entries of its noised figures, recorded just before
/// the masked input leaves.
struct OpenAggregation {
    session: u64,
    round: u64,
    /// The exact figures the vector carries, if any.
    exact: Option<ExactFigures>,
    /// The manifest's site-figure hospitals, when the vector carries evaluation counts: they
    /// are counted out of the sum's survivors ([`PolicyGate::check_revealers`]).
    revealers: Vec<String>,
    /// The evaluation vector to journal as this node's site figure when the masked input
    /// leaves, with the attempt it belongs to.
    site: Option<(u32, SiteVector)>,
    state: ParticipantState,
    /// Ledger entries of the noised figures; recorded before the masked input leaves.
    pending: Vec<LedgerEntry>,
}

/// The hospital's differential-privacy policy and its ledger.
pub struct Privacy {
    /// Budget and DP-SGD settings.
    pub config: PrivacyConfig,
    /// Every release so far.
    pub ledger: PrivacyLedger,
}

impl Privacy {
    /// In distributed mode, the local ε the ledger would reach with `next` (each release's
    /// local mechanisms) added; `None` in local mode, where there is one composition only.
    fn local_epsilon_after(&self, next: &[Mechanism]) -> Result<Option<f64>, DeclineReason> {
        let config = &self.config;
        (config.mode == PrivacyMode::Distributed)
            .then(|| {
                self.ledger
                    .local_epsilon(config.accountant, next, config.delta)
            })
            .transpose()
            .map_err(accountant_failure)
    }
}

/// The noise of one round's private releases and what they will cost.
struct PrivateRound {
    /// DP-SGD settings, in training rounds of a task in local mode.
    dp: Option<DpConfig>,
    /// Distributed DP's round, in training rounds of a task in distributed mode.
    distributed: Option<DistributedStep>,
    /// Noise on the evaluation counts, when the hospital asks for it.
    evaluation: Option<EvaluationNoise>,
    /// The round's releases in the order they are recorded: training first.
    releases: Vec<PlannedRelease>,
}

/// One round of distributed DP, as the approved manifest sets it: the parameters every node
/// and the coordinator build from it, and the per-example sampling rate.
struct DistributedStep {
    params: DdpParams,
    sample_rate: f64,
}

impl DistributedStep {
    /// The step a task under `manifest` asks for, if it plans distributed DP.
    fn of(manifest: &TaskManifest) -> Result<Option<Self>, DeclineReason> {
        let Some(plan) = &manifest.distributed_dp else {
            return Ok(None);
        };
        let params = plan
            .params(manifest.model.layout().len())
            .map_err(|e| local_failure(format!("distributed DP: {e}")))?;
        Ok(Some(Self {
            params,
            sample_rate: plan.sample_rate,
        }))
    }
}

/// One release a round will make and the ε spent once it counts.
struct PlannedRelease {
    /// What is released, and how.
    terms: ReleaseTerms,
    /// ε spent once this release counts, the round's earlier releases included.
    epsilon_after: f64,
    /// For a node in distributed mode, the local ε spent once it counts.
    local_epsilon_after: Option<f64>,
    /// The noised example count an [`Release::ExampleCount`] release carries.
    released_count: Option<f64>,
}

/// One private release's terms: what it releases, its mechanisms as the accountants compose
/// them, and the `(q, σ, steps)` the ledger shows for it (for a count release, the Gaussian
/// step at σ/Δ that Rényi DP charges it as).
#[derive(Clone, Debug, PartialEq)]
struct ReleaseTerms {
    release: Release,
    mechanisms: Vec<Mechanism>,
    /// The local guarantee of a distributed release (empty: the same as `mechanisms`).
    local_mechanisms: Vec<Mechanism>,
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
}

impl ReleaseTerms {
    /// DP-SGD: `steps` Poisson-subsampled Gaussian steps.
    fn training(sample_rate: f64, noise_multiplier: f64, steps: u64) -> Self {
        Self {
            release: Release::Training,
            mechanisms: vec![Mechanism::SubsampledGaussian {
                sample_rate,
                noise_multiplier,
                steps,
            }],
            local_mechanisms: Vec::new(),
            sample_rate,
            noise_multiplier,
            steps,
        }
    }

    /// One round of distributed DP: centrally the sum of `t` shares, locally this node's share
    /// alone (`docs/DISTRIBUTED_DP.md` §3).
    fn distributed(step: &DistributedStep) -> Self {
        let q = step.sample_rate;
        Self {
            release: Release::DistributedTraining,
            mechanisms: vec![step.params.central_mechanism(q, 1)],
            local_mechanisms: vec![step.params.local_mechanism(q, 1)],
            sample_rate: q,
            noise_multiplier: step.params.config().noise_multiplier,
            steps: 1,
        }
    }

    /// A release of noised counts: `mechanisms`, charged by Rényi DP as one Gaussian step at
    /// `noise_multiplier` (σ/Δ).
    fn counts(release: Release, mechanisms: Vec<Mechanism>, noise_multiplier: f64) -> Self {
        Self {
            release,
            mechanisms,
            local_mechanisms: Vec::new(),
            sample_rate: 1.0,
            noise_multiplier,
            steps: 1,
        }
    }

    /// The mechanisms of `times` such releases.
    fn repeated(&self, times: u64) -> impl Iterator<Item = Mechanism> + '_ {
        self.mechanisms.iter().map(move |m| m.repeated(times))
    }

    /// The mechanisms the local composition counts for this release.
    fn local(&self) -> &[Mechanism] {
        if self.local_mechanisms.is_empty() {
            &self.mechanisms
        } else {
            &self.local_mechanisms
        }
    }

    /// The local mechanisms of `times` such releases.
    fn repeated_local(&self, times: u64) -> impl Iterator<Item = Mechanism> + '_ {
        self.local().iter().map(move |m| m.repeated(times))
    }

    /// The ledger entry of this release, made in `round`, once it counts.
    fn entry(self, round: u64, privacy: &Privacy, epsilon_after: f64) -> LedgerEntry {
        LedgerEntry {
            time_ms: now_ms(),
            round,
            release: self.release,
            mechanisms: self.mechanisms,
            accountant: privacy.config.accountant,
            steps: self.steps,
            sample_rate: self.sample_rate,
            noise_multiplier: self.noise_multiplier,
            delta: privacy.config.delta,
            epsilon_after,
            released_count: None,
            local_mechanisms: self.local_mechanisms,
            local_epsilon_after: None,
        }
    }
}

/// The releases a task plans, as far as choosing σ needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedule {
    /// Training rounds.
    rounds: u64,
    /// Evaluations: the training rounds the schedule evaluates, and the final evaluation.
    evaluations: u64,
}

impl Default for Schedule {
    /// One round, evaluated, and the final evaluation: what a hospital driven without a
    /// manifest (tests) plans for.
    fn default() -> Self {
        Self {
            rounds: 1,
            evaluations: 2,
        }
    }
}

impl Schedule {
    /// The schedule of a task manifest.
    fn of(manifest: &TaskManifest) -> Self {
        let rounds = manifest.rounds.max(1);
        Self {
            rounds,
            evaluations: manifest.releases.evaluated_rounds(rounds)
                + u64::from(manifest.releases.final_evaluation),
        }
    }
}

/// What secure aggregation needs from the node's certificate and the consortium CA.
pub struct Credentials {
    /// Signs with the node's certificate key.
    pub signer: Box<dyn Signer + Send>,
    /// Checks peers' certificates and signatures.
    pub verifier: Box<dyn PeerVerifier + Send>,
}

impl Hospital {
    /// A node over its two data splits.
    pub fn new(
        schema: Schema,
        train: Dataset,
        held_out: Dataset,
        trainer: Box<dyn Trainer>,
    ) -> Self {
        let held_out_groups = held_out
            .sensitive
            .iter()
            .map(|row| schema.audit_groups_of(row))
            .collect();
        Self {
            schema,
            train,
            held_out,
            held_out_groups,
            trainer,
            model: None,
            session: None,
            answered: HashSet::new(),
            identity: None,
            credentials: None,
            secagg: None,
            privacy: None,
            schedule: Schedule::default(),
            auto_noise_multiplier: AutoNoiseMultiplier::default(),
            policy: PolicyGate::new(NodePolicy::default(), None, HashMap::new()),
            exact_releases: ReleaseRecord::in_memory(),
            manifest: None,
            validation: None,
            site_figures: SiteFigureStore::in_memory(),
        }
    }

    /// Keeps the hospital's own validation record: every model the consortium sends is scored
    /// on the held-out patients and recorded on site.
    pub fn with_validation(mut self, validation: SiteValidation) -> Self {
        self.validation = Some(validation);
        self
    }

    /// Keeps the final evaluation's vectors in `store`, for the site figure.
    pub fn with_site_figures(mut self, store: SiteFigureStore) -> Self {
        self.site_figures = store;
        self
    }

    /// Puts the node under the hospital's policy, with its record of exact releases.
    pub fn with_policy(mut self, policy: PolicyGate, exact_releases: ReleaseRecord) -> Self {
        self.policy = policy;
        self.exact_releases = exact_releases;
        self
    }

    /// Makes training differentially private under the hospital's policy and ledger.
    pub fn with_privacy(mut self, privacy: Privacy) -> Self {
        self.privacy = Some(privacy);
        self
    }

    /// The (ε, δ) this node has spent so far, if it trains privately.
    pub fn privacy_spent(&self) -> Option<PrivacySpent> {
        let privacy = self.privacy.as_ref()?;
        let delta = privacy.config.delta;
        privacy
            .ledger
            .epsilon(privacy.config.accountant, &[], delta)
            .ok()
            .map(|epsilon| PrivacySpent { epsilon, delta })
    }

    /// The hospital's privacy mode: its `[privacy] mode`, local without a `[privacy]` section.
    fn privacy_mode(&self) -> PrivacyMode {
        self.privacy
            .as_ref()
            .map_or(PrivacyMode::Local, |p| p.config.mode)
    }

    /// The distributed-DP step of the approved task (`None` in a local task), or why the node
    /// must decline: the task's privacy mode is not the hospital's (a hospital in distributed
    /// mode without an approved distributed manifest counts as facing a local task).
    fn distributed_step(&self) -> Result<Option<DistributedStep>, DeclineReason> {
        let step = match &self.manifest {
            Some((manifest, _)) => DistributedStep::of(manifest)?,
            None => None,
        };
        let task = if step.is_some() {
            PrivacyMode::Distributed
        } else {
            PrivacyMode::Local
        };
        let node = self.privacy_mode();
        if node != task {
            tracing::warn!(%node, %task, "declining: the task's privacy mode is not the hospital's");
            return Err(DeclineReason::Policy(PolicyViolation::PrivacyMode {
                node,
                task,
            }));
        }
        Ok(step)
    }

    /// The noise of a round's private releases — DP-SGD in a training round (or distributed
    /// DP's share in a distributed task), the evaluation counts' noise when the hospital turned
    /// it on — or why the node must decline it: a round that would take the node past its
    /// budget (central, and in distributed mode local) is refused before any computation.
    /// `None`: the round releases nothing private.
    fn private_round(
        &self,
        start: &RoundStart,
        distributed: Option<DistributedStep>,
    ) -> Result<Option<PrivateRound>, DeclineReason> {
        let Some(privacy) = &self.privacy else {
            return Ok(None);
        };
        let config = &privacy.config;
        let evaluation = evaluation_noise(config)?;
        let statistics = statistics_noise(config)?;
        let distributed = distributed.filter(|_| start.train);
        let (mut planned, dp) = self.round_releases(
            config,
            (evaluation.as_ref(), statistics.as_ref()),
            self.schedule,
            (start.train, start.evaluate),
            &start.plan,
            distributed.as_ref(),
        )?;
        // A node that has released no noised example count (it missed the statistics round)
        // releases one now, once, to weigh its update with (see `update_weight`). A distributed
        // round has no weight.
        let mut count = None;
        if let Some(noise) = statistics
            .as_ref()
            .filter(|_| start.train && distributed.is_none())
            && privacy.ledger.released_count().is_none()
        {
            let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
            count = Some(noise.noised_count(self.train.examples.len() as u64, &mut rng));
            planned.insert(
                0,
                ReleaseTerms::counts(
                    Release::ExampleCount,
                    noise.count_mechanisms(),
                    noise.sigma(),
                ),
            );
        }
        if planned.is_empty() {
            return Ok(None);
        }
        let mut releases = Vec::with_capacity(planned.len());
        let (mut next, mut next_local) = (Vec::new(), Vec::new());
        for terms in planned {
            next.extend_from_slice(&terms.mechanisms);
            next_local.extend_from_slice(terms.local());
            let epsilon_after = privacy
                .ledger
                .epsilon(config.accountant, &next, config.delta)
                .map_err(accountant_failure)?;
            let local_epsilon_after = privacy.local_epsilon_after(&next_local)?;
            let released_count = count.filter(|_| terms.release == Release::ExampleCount);
            releases.push(PlannedRelease {
                terms,
                epsilon_after,
                local_epsilon_after,
                released_count,
            });
        }
        if let Some(last) = releases.last() {
            within_budget(config, last.epsilon_after, "this round")?;
            within_local_budget(config, last.local_epsilon_after, "this round")?;
        }
        Ok(Some(PrivateRound {
            dp,
            distributed,
            evaluation,
            releases,
        }))
    }

    /// The private releases of one round, in the order they are recorded: DP-SGD in a training round (distributed DP's round when `distributed` is given), then, in a round that evaluates, the evaluation
    /// counts' noise when the hospital turned it on — and the DP-SGD settings, for a task of
    /// `schedule` whose evaluation counts and statistics are noised as given.
    fn round_releases(
        &self,
        config: &PrivacyConfig,
        (evaluation, statistics): (Option<&EvaluationNoise>, Option<&StatisticsNoise>),
        schedule: Schedule,
        (train, evaluate): (bool, bool),
        plan: &TrainingPlan,
        distributed: Option<&DistributedStep>,
    ) -> Result<(Vec<ReleaseTerms>, Option<DpConfig>), DeclineReason> {
        let attributes = self.schema.audit_attributes().len();
        let mut planned: Vec<ReleaseTerms> = Vec::new();
        let mut dp = None;
        if let Some(step) = distributed.filter(|_| train) {
            planned.push(ReleaseTerms::distributed(step));
        } else if train {
            let n = self.train.examples.len();
            if n == 0 {
                return Err(local_failure("no training examples"));
            }
            let sample_rate = (f64::from(plan.batch_size) / n as f64).min(1.0);
            let mut training = DpConfig {
                noise_multiplier: 0.0,
                max_grad_norm: config.max_grad_norm,
                sample_rate,
            };
            let steps = u64::from(plan.local_epochs) * training.steps_per_epoch();
            training.noise_multiplier = match config.noise_multiplier {
                NoiseMultiplier::Fixed(sigma) => sigma,
                NoiseMultiplier::Auto => {
                    // Leave room for the noised evaluation counts of every round the schedule
                    // evaluates and of the final evaluation, and for the noised statistics.
                    let mut other: Vec<Mechanism> = Vec::new();
                    if let Some(noise) = evaluation {
                        let counts = evaluation_terms(noise, attributes);
                        other.extend(counts.repeated(schedule.evaluations));
                    }
                    if let Some(noise) = statistics {
                        other.extend(noise.mechanisms(&self.schema));
                    }
                    self.auto_noise_multiplier
                        .choose(
                            config,
                            other,
                            sample_rate,
                            schedule.rounds.saturating_mul(steps),
                        )
                        .map_err(|e| {
                            local_failure(format!("cannot choose a noise multiplier: {e}"))
                        })?
                }
            };
            planned.push(ReleaseTerms::training(
                sample_rate,
                training.noise_multiplier,
                steps,
            ));
            dp = Some(training);
        }
        if let Some(noise) = evaluation.filter(|_| evaluate) {
            planned.push(evaluation_terms(noise, attributes));
        }
        Ok((planned, dp))
    }

    /// The weight of this node's update in the average: the count of training examples it
    /// released, at least 1. Under `[privacy]` with the statistics noised, that is the noised
    /// count its latest statistics release carried (recorded in the ledger), or else the noised
    /// count this round releases alone ([`Release::ExampleCount`], planned by
    /// `private_round`): reusing a released figure costs nothing, and no exact count leaves.
    /// Otherwise the statistics released the exact count, which is used.
    fn update_weight(&self, private: Option<&PrivateRound>) -> Result<f64, DeclineReason> {
        let noised = match &self.privacy {
            Some(privacy) => statistics_noise(&privacy.config)?.is_some(),
            None => false,
        };
        let Some(privacy) = self.privacy.as_ref().filter(|_| noised) else {
            return Ok(self.train.examples.len() as f64);
        };
        privacy
            .ledger
            .released_count()
            .or_else(|| private?.releases.iter().find_map(|r| r.released_count))
            .map(|count| count.max(1.0))
            .ok_or_else(|| local_failure("no noised example count to weigh the update with"))
    }

    /// What a task under `manifest` would cost this hospital in ε, on top of its ledger (see
    /// [`Self::forecast_privacy`]). `None`: the hospital does not train privately.
    pub fn privacy_forecast(
        &self,
        manifest: &TaskManifest,
    ) -> Result<Option<PrivacyForecast>, DeclineReason> {
        self.privacy
            .as_ref()
            .map(|p| self.forecast_privacy(&p.config, p.ledger.entries(), manifest))
            .transpose()
    }

    /// What a task under `manifest` would cost in ε under the privacy policy `config`, on top
    /// of the ledger `entries`: after the statistics round (when they are noised), after each
    /// training round (every round when there are at most [`LISTED_ROUNDS`], else the first and
    /// the last) and after the final evaluation — with the same accountant calls as a round's
    /// own check. Every figure after the statistics round counts them.
    pub fn forecast_privacy(
        &self,
        config: &PrivacyConfig,
        entries: &[LedgerEntry],
        manifest: &TaskManifest,
    ) -> Result<PrivacyForecast, DeclineReason> {
        let evaluation = evaluation_noise(config)?;
        let statistics = statistics_noise(config)?;
        let noise = (evaluation.as_ref(), statistics.as_ref());
        let rounds = manifest.rounds;
        let schedule = Schedule::of(manifest);
        let distributed = DistributedStep::of(manifest)?;
        // A training round's DP-SGD (or distributed DP's round), and one evaluation's counts
        // (as the final evaluation releases them: every evaluation releases the same).
        let (training, _) = self.round_releases(
            config,
            noise,
            schedule,
            (true, false),
            &manifest.training.plan(1),
            distributed.as_ref(),
        )?;
        let (one_evaluation, _) = self.round_releases(
            config,
            noise,
            schedule,
            (false, true),
            &manifest.training.plan(rounds.saturating_add(1)),
            None,
        )?;
        // The statistics round releases once, before every training round.
        let statistics_release: Vec<Mechanism> = statistics
            .as_ref()
            .map(|n| n.mechanisms(&self.schema))
            .unwrap_or_default();
        let accountant = |next: &[Mechanism], local: bool| {
            let compose = if local { local_epsilon_of } else { epsilon_of };
            compose(entries, next, config.accountant, config.delta).map_err(accountant_failure)
        };
        // Every training round releases the same mechanisms: k of them compose as each run k
        // times as often; the evaluations of the rounds the schedule evaluates likewise. The
        // local composition swaps in each release's local mechanisms.
        let after = |trained: u64, final_evaluation: bool, local: bool| {
            let evaluations =
                manifest.releases.evaluated_rounds(trained) + u64::from(final_evaluation);
            let mut next = statistics_release.clone();
            for terms in &training {
                if local {
                    next.extend(terms.repeated_local(trained));
                } else {
                    next.extend(terms.repeated(trained));
                }
            }
            next.extend(one_evaluation.iter().flat_map(|t| t.repeated(evaluations)));
            accountant(&next, local)
        };
        let listed: Vec<u64> = if rounds <= LISTED_ROUNDS {
            (1..=rounds).collect()
        } else {
            vec![1, rounds]
        };
        let costs = |local: bool| -> Result<Vec<RoundCost>, DeclineReason> {
            let mut costs = Vec::with_capacity(listed.len() + 1);
            for &round in &listed {
                costs.push(RoundCost {
                    round,
                    train: true,
                    epsilon_after: after(round, false, local)?,
                });
            }
            if manifest.releases.final_evaluation {
                costs.push(RoundCost {
                    round: rounds.saturating_add(1),
                    train: false,
                    epsilon_after: after(rounds, true, local)?,
                });
            }
            Ok(costs)
        };
        let local = (config.mode == PrivacyMode::Distributed)
            .then(|| -> Result<LocalForecast, DeclineReason> {
                Ok(LocalForecast {
                    max_local_epsilon: config.max_local_epsilon,
                    spent: accountant(&[], true)?,
                    rounds: costs(true)?,
                })
            })
            .transpose()?;
        let accountant = |next: &[Mechanism]| accountant(next, false);
        let costs = costs(false)?;
        Ok(PrivacyForecast {
            target_epsilon: config.target_epsilon,
            delta: config.delta,
            spent: accountant(&[])?,
            statistics: statistics
                .is_some()
                .then(|| accountant(&statistics_release))
                .transpose()?,
            noise_multiplier: training
                .iter()
                .find(|r| matches!(r.release, Release::Training | Release::DistributedTraining))
                .map(|r| r.noise_multiplier),
            rounds: costs,
            local,
        })
    }

    /// Checks a task manifest against the hospital's policy, schema, pinned member list and
    /// privacy budget (its signature aside): `Err` if the node would refuse to join under it;
    /// otherwise what it would cost in ε. A budget that covers the first round but not every
    /// planned one is accepted with a warning: the node declines the rounds beyond it.
    pub fn check_plan(
        &self,
        manifest: &TaskManifest,
    ) -> Result<Option<PrivacyForecast>, ManifestRefusal> {
        self.check_plan_with(
            manifest,
            self.privacy
                .as_ref()
                .map(|p| (&p.config, p.ledger.entries())),
        )
    }

    /// [`Self::check_plan`] under the privacy policy and ledger entries given (`None`: no
    /// private training) rather than the node's own: what `medfed-node plan` uses, reading the
    /// ledger without opening it for writing.
    pub fn check_plan_with(
        &self,
        manifest: &TaskManifest,
        privacy: Option<(&PrivacyConfig, &[LedgerEntry])>,
    ) -> Result<Option<PrivacyForecast>, ManifestRefusal> {
        check_manifest(
            manifest,
            self.policy.policy(),
            self.policy.members(),
            &self.schema,
        )?;
        let node = privacy.map_or(PrivacyMode::Local, |(config, _)| config.mode);
        let task = manifest.privacy_mode();
        if node != task {
            return Err(ManifestRefusal::PrivacyMode { node, task });
        }
        let forecast = privacy
            .map(|(config, entries)| self.forecast_privacy(config, entries, manifest))
            .transpose()
            .map_err(|_| ManifestRefusal::PrivacyUnpriced)?;
        if let Some(forecast) = &forecast {
            let first = forecast.rounds.first().map_or(0.0, |r| r.epsilon_after);
            if first > forecast.target_epsilon {
                return Err(ManifestRefusal::BudgetTooSmall {
                    first_round_epsilon: first,
                    target_epsilon: forecast.target_epsilon,
                });
            }
            if let Some(local) = &forecast.local
                && let Some(cap) = local.max_local_epsilon
            {
                let first = local.rounds.first().map_or(0.0, |r| r.epsilon_after);
                if first > cap {
                    return Err(ManifestRefusal::LocalBudgetTooSmall {
                        first_round_local_epsilon: first,
                        max_local_epsilon: cap,
                    });
                }
                if local.total() > cap {
                    tracing::warn!(
                        total_local_epsilon = local.total(),
                        max_local_epsilon = cap,
                        "the local privacy cap does not cover every planned round: the node will decline the rounds beyond it"
                    );
                }
            }
            let total = forecast.total();
            if total > forecast.target_epsilon {
                tracing::warn!(
                    total_epsilon = total,
                    target_epsilon = forecast.target_epsilon,
                    "the privacy budget does not cover every planned round: the node will decline the rounds beyond it"
                );
            }
        }
        Ok(forecast)
    }

    /// The schema the node's data follows.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Verifies the coordinator's signed task manifest with its Ed25519 key (from the
    /// certificate it presented), checks it against the hospital's policy, schema, pinned
    /// member list and privacy budget, and on success holds it as the plan every later request
    /// must follow. Any earlier approval is dropped first: a new coordinator session is
    /// checked from scratch, and a refused manifest leaves nothing approved.
    pub fn approve_manifest(
        &mut self,
        signed: &SignedManifest,
        coordinator_key: &[u8; 32],
    ) -> Result<ManifestApproval, ManifestRefusal> {
        let previous = self.manifest.take().map(|(_, digest)| digest);
        let digest = signed.verify(coordinator_key)?;
        let manifest = &signed.manifest;
        let forecast = self.check_plan(manifest)?;
        self.trainer
            .check_model(&manifest.model)
            .map_err(|e| ManifestRefusal::Model(e.to_string()))?;
        if previous.is_some_and(|p| p != digest) {
            tracing::info!(previous = %previous.unwrap_or(digest), manifest = %digest, "the coordinator presents a different task manifest; checked from scratch");
        }
        tracing::info!(
            manifest = %digest,
            rounds = manifest.rounds,
            min_nodes = manifest.min_nodes,
            secure_aggregation = manifest.secure_aggregation.is_some(),
            "task manifest approved"
        );
        self.schedule = Schedule::of(manifest);
        self.manifest = Some((manifest.clone(), digest));
        Ok(ManifestApproval { digest, forecast })
    }

    /// The digest of the approved task manifest, if any.
    pub fn approved_manifest(&self) -> Option<Digest32> {
        self.manifest.as_ref().map(|(_, digest)| *digest)
    }

    /// Declines a request that departs from the approved manifest, logging how.
    fn manifest_departure(
        &self,
        check: impl Fn(&TaskManifest) -> Result<(), Departure>,
    ) -> Option<PolicyViolation> {
        let (manifest, digest) = self.manifest.as_ref()?;
        let departure = check(manifest).err()?;
        tracing::warn!(%departure, manifest = %digest, "the request departs from the approved task manifest");
        Some(PolicyViolation::DepartsFromManifest)
    }

    /// Gives the node the keys it needs for secure aggregation.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The schema's digest, announced in `Hello`.
    pub fn schema_digest(&self) -> [u8; 32] {
        self.schema.digest()
    }

    /// Hash of the model held, if any.
    pub fn model_hash(&self) -> Option<ModelHash> {
        self.model.as_ref().map(Model::hash)
    }

    /// The model held, if any.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Number of training and held-out examples.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.examples.len(), self.held_out.examples.len())
    }

    /// Enters a coordinator session (after `Welcome`) under the identity the coordinator read
    /// from this node's certificate. A new session — a restarted coordinator — starts a fresh
    /// record of answered rounds.
    pub fn enter_session(&mut self, session: u64, identity: &str) {
        if self.session != Some(session) {
            self.session = Some(session);
            self.answered.clear();
            self.secagg = None;
        }
        self.identity = Some(identity.to_owned());
    }

    /// The refusal to send if a request is not from the current session.
    fn session_refusal(&self, session: u64, round: u64) -> Option<Message> {
        match self.session {
            Some(current) if current == session => None,
            current => Some(refusal(
                session,
                round,
                RefusalReason::WrongSession {
                    got: session,
                    expected: current.unwrap_or(0),
                },
            )),
        }
    }

    /// Answers a statistics request with this node's count, sums and sums of squares on the
    /// schema's clipping grid, and level counts — under the hospital's policy, noised and
    /// charged to the ledger when the hospital has a `[privacy]` section (unless it turned the
    /// statistics' noise off).
    ///
    /// Noised statistics are charged per release, like any noised figure, and may go into any
    /// sum the policy allows; exact statistics (no `[privacy]`, or `noise = 0`) go into a sum over
    /// one set of hospitals only ([`ExactFigures::Statistics`]). The values clipped into their
    /// columns' ranges are counted in the node's log, never sent.
    pub fn handle_stats(&mut self, request: &StatsRequest) -> Message {
        let (session, round) = (request.session, request.round);
        if let Some(refused) = self.session_refusal(session, round) {
            return refused;
        }
        // A new request closes whatever aggregation was open: its figures never leave.
        self.secagg = None;
        let noise = match self.privacy.as_ref().map(|p| statistics_noise(&p.config)) {
            Some(Ok(noise)) => noise,
            Some(Err(reason)) => return decline(session, round, reason),
            None => None,
        };
        let exact = noise.is_none().then_some(ExactFigures::Statistics);
        let params = request.secure_aggregation.as_ref().map(|s| &s.params);
        if let Err(violation) = self.admit_request(round, params, exact.as_ref(), &[]) {
            return policy_decline(session, round, violation);
        }
        // The hospital's own rules first (their reasons are the more specific), then the plan
        // it approved.
        if let Some(violation) = self.manifest_departure(|m| m.check_stats_request(request)) {
            return policy_decline(session, round, violation);
        }
        let entries = match self.statistics_release(round, noise.as_ref()) {
            Ok(entries) => entries,
            Err(reason) => return decline(session, round, reason),
        };
        let local = match stats_contribution(&self.schema, &self.train.examples.features) {
            Ok(local) => local,
            Err(e) => {
                return decline(
                    session,
                    round,
                    local_failure(format!("statistics failed: {e}")),
                );
            }
        };
        log_clipped(&local.clipped);
        let mut values = local.values;
        let mut entries = entries;
        if let Some(noise) = &noise {
            // Noise, like DP-SGD's, comes from a CSPRNG seeded by the operating system.
            let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
            if let Err(e) = noise.apply(&self.schema, &mut values, &mut rng) {
                return decline(
                    session,
                    round,
                    local_failure(format!("statistics noise failed: {e}")),
                );
            }
            // The noised count of training examples (the vector's first figure) becomes the
            // node's update weight: recorded with the release that carries it.
            for entry in &mut entries {
                entry.released_count = values.get(StatsLayout::COUNT).copied();
            }
        }
        let encoding = VectorEncoding::new(vec![(values.len(), BlockEncoding::Wide)]);
        let figures = Figures {
            kind: ContributionKind::Stats,
            values,
            exact,
            entries,
            revealers: Vec::new(),
            site: None,
        };
        self.send_figures(
            session,
            round,
            figures,
            request
                .secure_aggregation
                .as_ref()
                .map(|setup| (setup, encoding)),
        )
    }

    /// The ledger entry of noised statistics (none for exact ones), or why the node must
    /// decline them: statistics that would take it past its budget are refused before anything
    /// is computed.
    fn statistics_release(
        &self,
        round: u64,
        noise: Option<&StatisticsNoise>,
    ) -> Result<Vec<LedgerEntry>, DeclineReason> {
        let (Some(noise), Some(privacy)) = (noise, &self.privacy) else {
            return Ok(Vec::new());
        };
        let config = &privacy.config;
        let terms = ReleaseTerms::counts(
            Release::Statistics,
            noise.mechanisms(&self.schema),
            noise.noise_multiplier(&self.schema),
        );
        let epsilon_after = privacy
            .ledger
            .epsilon(config.accountant, &terms.mechanisms, config.delta)
            .map_err(accountant_failure)?;
        within_budget(config, epsilon_after, "the noised statistics")?;
        // In distributed mode the statistics count in the local composition too, unchanged.
        let local_epsilon_after = privacy.local_epsilon_after(&terms.mechanisms)?;
        within_local_budget(config, local_epsilon_after, "the noised statistics")?;
        let mut entry = terms.entry(round, privacy, epsilon_after);
        entry.local_epsilon_after = local_epsilon_after;
        Ok(vec![entry])
    }

    /// How many values of each numeric column of the training split lie outside the schema's
    /// range, and are clipped into it in the statistics: for the hospital's own eyes.
    pub fn clipped_values(&self) -> Result<Vec<ClippedValues>, StatsError> {
        stats_contribution(&self.schema, &self.train.examples.features).map(|s| s.clipped)
    }

    /// Checks a request against the hospital's policy before anything is computed: how the
    /// figures would be sent and to whom, the attempt caps, and exact figures already released
    /// into a sum over hospitals the request leaves out.
    fn admit_request(
        &self,
        round: u64,
        params: Option<&RoundParams>,
        exact: Option<&ExactFigures>,
        revealers: &[String],
    ) -> Result<(), PolicyViolation> {
        let me = self.identity.as_deref().unwrap_or_default();
        self.policy.check_request(params, me)?;
        if let Some(params) = params {
            self.policy.check_revealers(
                params.participants.iter().map(|p| p.identity.as_str()),
                me,
                revealers,
            )?;
        }
        self.policy.check_attempt(round)?;
        if let (Some(params), Some(exact)) = (params, exact)
            && !self.exact_releases.may_release_among(
                exact,
                params.participants.iter().map(|p| p.identity.as_str()),
            )
        {
            return Err(PolicyViolation::AlreadyReleased);
        }
        Ok(())
    }

    /// Sends figures: masked under secure aggregation (this returns the signed round keys that
    /// open it), or in the clear when the hospital's policy allows it (statistics as `f64`,
    /// round vectors as `f32`; a round figure beyond `f32` declines the round). The figures'
    /// ledger entries go into the ledger just before the figures leave, and travel with the
    /// secure aggregation's state until then.
    fn send_figures(
        &mut self,
        session: u64,
        round: u64,
        figures: Figures,
        secure: Option<(&SecAggSetup, VectorEncoding)>,
    ) -> Message {
        let privacy = match (figures.entries.last(), &self.privacy) {
            (Some(entry), Some(_)) => Some(PrivacySpent {
                epsilon: entry.epsilon_after,
                delta: entry.delta,
            }),
            _ => self.privacy_spent(),
        };
        let Some((setup, encoding)) = secure else {
            let values = match plain_figures(figures.kind, figures.values) {
                Ok(values) => values,
                Err(e) => {
                    return decline(
                        session,
                        round,
                        local_failure(format!("cannot send the figures: {e}")),
                    );
                }
            };
            if let Err(reason) = self.record_site(round, figures.site) {
                return decline(session, round, reason);
            }
            if let Err(reason) = self.record_release(round, figures.entries) {
                return decline(session, round, reason);
            }
            return Message::Contribution(Contribution {
                session,
                round,
                kind: figures.kind,
                values,
                privacy,
            });
        };
        match self.start_secure_aggregation(setup, &encoding, figures, privacy) {
            Ok(message) => message,
            Err(e) => decline(
                session,
                round,
                aggregation_aborted(format!("secure aggregation: {e}")),
            ),
        }
    }

    fn start_secure_aggregation(
        &mut self,
        setup: &SecAggSetup,
        encoding: &VectorEncoding,
        figures: Figures,
        privacy: Option<PrivacySpent>,
    ) -> Result<Message, SecAggError> {
        let params = &setup.params;
        let credentials = self
            .credentials
            .as_ref()
            .ok_or_else(|| SecAggError::BadParams("this node has no signing key".into()))?;
        let me = self
            .identity
            .as_deref()
            .and_then(|identity| params.index_of(identity))
            .ok_or_else(|| SecAggError::BadParams("this node is not a participant".into()))?;
        if encoding.encoded_len() != params.vector_len {
            return Err(SecAggError::BadParams(format!(
                "the round expects {} words, this node's figures encode to {}",
                params.vector_len,
                encoding.encoded_len()
            )));
        }
        // The digest is part of the parameters every peer signs over: checking it here means no
        // participant encodes its figures otherwise than the others, or under another task
        // manifest than the one this node approved.
        let expected = match self.approved_manifest() {
            Some(task) => encoding.task_digest(&task.0),
            None => encoding.digest(),
        };
        if expected != params.encoding_digest {
            return Err(SecAggError::BadParams(
                "the round's encoding, or its task manifest, is not the one this node's figures use"
                    .into(),
            ));
        }
        encoding.check_capacity(params.n())?;
        // Stochastic rounding draws one number per figure: a CSPRNG seeded once from the OS,
        // rather than one `getrandom` system call per figure (10^5 of them for a 10^5-parameter
        // model).
        let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
        let input = encoding.encode(&figures.values, &mut rng)?;
        let (state, keys) = ExpectDirectory::new(
            params.clone(),
            me,
            input,
            credentials.signer.as_ref(),
            &mut rng,
        )?;
        self.secagg = Some(OpenAggregation {
            session: params.session,
            round: params.round,
            exact: figures.exact,
            revealers: figures.revealers,
            site: figures.site,
            state: ParticipantState::Directory(state),
            pending: figures.entries,
        });
        Ok(Message::SecAggKeys(RoundKeys { keys, privacy }))
    }

    /// Journals (with fsync) the vector about to leave as this node's candidate site figure of
    /// the final evaluation, if it is one; `Err` holds the reason to decline: a vector that
    /// could later be released as the site figure never leaves unrecorded.
    fn record_site(
        &mut self,
        round: u64,
        site: Option<(u32, SiteVector)>,
    ) -> Result<(), DeclineReason> {
        let Some((attempt, vector)) = site else {
            return Ok(());
        };
        self.site_figures
            .record_sent(round, attempt, vector)
            .map_err(|e| local_failure(format!("cannot record the site figure: {e}")))
    }

    /// Appends a release's ledger entries (with fsync) and counts the release against the
    /// attempt caps; `Err` holds the reason to decline: nothing is sent whose cost is not
    /// recorded.
    fn record_release(
        &mut self,
        round: u64,
        entries: Vec<LedgerEntry>,
    ) -> Result<(), DeclineReason> {
        self.policy
            .check_attempt(round)
            .map_err(DeclineReason::Policy)?;
        if let Some(privacy) = self.privacy.as_mut() {
            for entry in entries {
                let (epsilon, delta, sigma) =
                    (entry.epsilon_after, entry.delta, entry.noise_multiplier);
                let release = entry.release.as_str();
                privacy
                    .ledger
                    .append(entry)
                    .map_err(|e| local_failure(format!("cannot record the privacy cost: {e}")))?;
                tracing::info!(
                    epsilon,
                    delta,
                    sigma,
                    release,
                    "privacy spent so far (recorded before the figures left)"
                );
            }
        }
        self.policy.count_release(round);
        Ok(())
    }

    /// Answers a secure-aggregation step (directory, delivery, consistency request, unmask
    /// request). A step for another round, out of order or repeated is refused; an aggregation
    /// that fails is dropped, and if it failed on a peer's share that does not authenticate, the
    /// refusal names that peer ([`RefusalReason::ShareAuthentication`]). Before this node signs
    /// the survivor set, and again before it reveals any share, the survivors' identities go
    /// through the hospital's policy (`admit_sum`): enough other hospitals, members only, and
    /// exact figures only into the one sum they went into before.
    pub fn handle_secagg(&mut self, message: &Message) -> Message {
        let (session, round) = match message {
            Message::SecAggDirectory(m) => (m.session, m.round),
            Message::SecAggDelivery(m) => (m.session, m.round),
            Message::SecAggConsistency(m) => (m.session, m.round),
            Message::SecAggUnmask(m) => (m.session, m.round),
            other => {
                return refusal(
                    self.session.unwrap_or(0),
                    0,
                    RefusalReason::UnexpectedMessage {
                        got: other.kind().into(),
                        expected: "a secure-aggregation step".into(),
                    },
                );
            }
        };
        if let Some(refused) = self.session_refusal(session, round) {
            return refused;
        }
        // The open aggregation is taken out: a step that fails leaves none behind.
        let Some(mut open) = self
            .secagg
            .take_if(|open| open.session == session && open.round == round)
        else {
            return refusal(
                session,
                round,
                RefusalReason::UnexpectedMessage {
                    got: message.kind().into(),
                    expected: "no secure aggregation is open for this round".into(),
                },
            );
        };
        let Some(credentials) = self.credentials.as_ref() else {
            return decline(
                session,
                round,
                aggregation_aborted("this node has no credentials"),
            );
        };
        let mut rng = rand::rngs::OsRng.unwrap_err();
        // The hospital's last word on who is in the sum, asked before this node signs the
        // survivor set and again before it reveals any share (when the first release of exact
        // figures into it is recorded).
        let me = self.identity.clone().unwrap_or_default();
        let (gate, exact_releases) = (&self.policy, &mut self.exact_releases);
        let mut refused = None;
        let mut check = |survivors: &[&str], record: bool| {
            admit_sum(
                gate,
                exact_releases,
                &me,
                survivors,
                (open.exact.as_ref(), &open.revealers),
                record,
            )
            .map_err(|violation| {
                let detail = violation.to_string();
                refused = Some(violation);
                SecAggError::RefusedByPolicy { detail }
            })
        };
        let answer = match message {
            Message::SecAggDirectory(directory) => open
                .state
                .handle_directory(directory, credentials.verifier.as_ref(), &mut rng)
                .map(Message::SecAggShares),
            Message::SecAggDelivery(delivery) => open
                .state
                .handle_delivery(delivery)
                .map(Message::SecAggInput),
            Message::SecAggConsistency(request) => open
                .state
                .handle_consistency(request, credentials.signer.as_ref(), &mut |survivors| {
                    check(survivors, false)
                })
                .map(Message::SecAggSignature),
            Message::SecAggUnmask(request) => open
                .state
                .handle_unmask(request, credentials.verifier.as_ref(), &mut |survivors| {
                    check(survivors, true)
                })
                .map(Message::SecAggUnmaskShares),
            _ => unreachable!("filtered above"),
        };
        if let Some(violation) = refused {
            return policy_decline(session, round, violation);
        }
        let answer = match answer {
            // The masked input carries the noised figures: their cost goes into the ledger
            // first, and the release counts against the attempt caps.
            Ok(Message::SecAggInput(input)) => {
                if let Err(reason) = self.record_site(round, open.site.take()) {
                    return decline(session, round, reason);
                }
                match self.record_release(round, std::mem::take(&mut open.pending)) {
                    Ok(()) => Ok(Message::SecAggInput(input)),
                    Err(reason) => return decline(session, round, reason),
                }
            }
            other => other,
        };
        match answer {
            Ok(answer) => {
                if !matches!(open.state, ParticipantState::Done) {
                    self.secagg = Some(open);
                }
                answer
            }
            // A share that fails authentication names its sender, so the coordinator can leave
            // that participant out rather than this one.
            Err(SecAggError::ShareAuthentication { from }) => {
                tracing::warn!(from, "a secure-aggregation share failed authentication");
                refusal(session, round, RefusalReason::ShareAuthentication { from })
            }
            Err(e) => decline(
                session,
                round,
                aggregation_aborted(format!("secure aggregation aborted: {e}")),
            ),
        }
    }

    /// Stores a model that arrived whole and checked out, if it comes from the current session.
    pub fn accept_model(&mut self, model: Model, session: u64, round: u64) -> Message {
        if let Some(refused) = self.session_refusal(session, round) {
            return refused;
        }
        // The client checked the offer against the manifest; checked again here, where the
        // model is kept, so that no other path can keep one the hospital did not approve.
        if let Some((manifest, _)) = &self.manifest
            && manifest.model != model.spec
        {
            return refusal(
                session,
                round,
                RefusalReason::BadModel {
                    detail: "the model's architecture is not the approved manifest's".into(),
                },
            );
        }
        let hash = model.hash();
        self.model = Some(model);
        Message::ModelReceived(ModelReceived {
            session,
            round,
            hash,
        })
    }

    /// Answers a round: evaluates the round's model on the held-out split and, when asked,
    /// trains from it and returns the weighted update — under the hospital's policy.
    pub fn handle_round(&mut self, start: &RoundStart) -> Message {
        let (session, round) = (start.session, start.round);
        if let Some(refused) = self.session_refusal(session, round) {
            return refused;
        }
        if self.answered.contains(&(round, start.attempt)) {
            return refusal(session, round, RefusalReason::Replay { round });
        }
        // A new request closes whatever aggregation was open: its figures never leave, and
        // with them goes their ledger entry.
        self.secagg = None;
        let Some(model) = self.model.as_ref().filter(|m| m.hash() == start.model_hash) else {
            return refusal(
                session,
                round,
                RefusalReason::BadModel {
                    detail: format!("this node does not hold model {}", start.model_hash),
                },
            );
        };
        if let Err(e) = start.score_bins.check() {
            return decline(session, round, local_failure(e.to_string()));
        }
        if let Err(e) = start.standardization.validate(&self.schema) {
            tracing::warn!(error = %e, "the coordinator's standardisation is not valid");
            return policy_decline(session, round, PolicyViolation::BadStandardization);
        }
        // The hospital's own check of the model, on its own patients (recorded on site, never
        // sent), before any rule can decline the round: a node whose budget is spent still
        // learns how the consortium's model does on its patients.
        let mut held_out = self.held_out.examples.clone();
        if let Err(e) = start
            .standardization
            .standardize(&self.schema, &mut held_out.features)
        {
            return decline(
                session,
                round,
                local_failure(format!("standardisation failed: {e}")),
            );
        }
        let validate = self
            .validation
            .as_ref()
            .is_some_and(|v| !v.contains(&start.model_hash));
        // A model that cannot score the patients is recorded nowhere; a round that evaluates
        // finds out again below, and declines.
        let scores = (start.evaluate || validate)
            .then(|| held_out_scores(self.trainer.as_mut(), model, &held_out))
            .and_then(Result::ok);
        if let (Some(validation), Some(scores)) = (self.validation.as_mut(), &scores)
            && validate
        {
            let counts =
                validation::site_counts(scores, &held_out.labels, start.decision_threshold);
            if let Err(e) = validation.record(round, &start.model_hash, &counts) {
                // The hospital's own record; the round goes on without it.
                tracing::warn!(error = %e, "cannot record the model's validation on this site");
            } else if let Some(metrics) = counts.metrics() {
                // For the hospital's eyes only: never sent.
                tracing::info!(
                    round,
                    patients = metrics.examples,
                    auc = metrics.auc.unwrap_or(f64::NAN),
                    loss = metrics.loss,
                    accuracy = metrics.accuracy,
                    "the round's model on this site's held-out patients (kept here, not sent)"
                );
            }
        }
        // The evaluation counts, in a round that evaluates, are exact unless the hospital noises
        // them.
        let noised_evaluation = self
            .privacy
            .as_ref()
            .is_some_and(|p| evaluation_noise(&p.config).is_ok_and(|n| n.is_some()));
        let exact = (start.evaluate && !noised_evaluation).then_some(ExactFigures::HeldOut);
        // Evaluation counts go only into sums that keep enough hospitals once the manifest's
        // site-figure hospitals are subtracted.
        let revealers = match (&self.manifest, start.evaluate) {
            (Some((manifest, _)), true) => manifest.releases.site_figures.clone(),
            _ => Vec::new(),
        };
        let params = start.secure_aggregation.as_ref().map(|s| &s.params);
        if let Err(violation) = self.admit_request(round, params, exact.as_ref(), &revealers) {
            return policy_decline(session, round, violation);
        }
        // The hospital's own rules first (their reasons are the more specific), then the plan
        // it approved: nothing is computed for release for a request that departs from it.
        if let Some(violation) = self.manifest_departure(|m| m.check_round_start(start)) {
            return policy_decline(session, round, violation);
        }
        let distributed = match self.distributed_step() {
            Ok(step) => step.filter(|_| start.train),
            Err(reason) => return decline(session, round, reason),
        };
        // Distributed DP's words carry only this node's share of the noise: they leave masked,
        // never in the clear, whatever the rest of the policy allows.
        if distributed.is_some() && start.secure_aggregation.is_none() {
            return policy_decline(session, round, PolicyViolation::PlaintextRequested);
        }
        let private = match self.private_round(start, distributed) {
            Ok(private) => private,
            Err(reason) => return decline(session, round, reason),
        };
        let distributed = private.as_ref().is_some_and(|p| p.distributed.is_some());
        let weight = match (start.train && !distributed)
            .then(|| self.update_weight(private.as_ref()))
            .transpose()
        {
            Ok(weight) => weight,
            Err(reason) => return decline(session, round, reason),
        };
        // The training split, imputed and standardised, when the round trains.
        let train = match start
            .train
            .then(|| {
                let mut train = self.train.examples.clone();
                start
                    .standardization
                    .standardize(&self.schema, &mut train.features)
                    .map(|()| train)
            })
            .transpose()
        {
            Ok(train) => train,
            Err(e) => {
                return decline(
                    session,
                    round,
                    local_failure(format!("standardisation failed: {e}")),
                );
            }
        };
        let result = evaluate_and_train(
            self.trainer.as_mut(),
            model,
            (&held_out, scores.as_deref()),
            start,
            train.as_ref(),
            private.as_ref(),
            (&self.held_out_groups, self.schema.audit_groups().len()),
        );
        let layout = RoundLayout {
            params: model.params.len(),
            train: start.train,
            evaluate: start.evaluate,
            groups: self.schema.audit_groups().len(),
            bins: start.score_bins,
            distributed,
        };
        let LocalOutcome {
            evaluation,
            mut trained,
            distributed_words,
            steps,
        } = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                return decline(
                    session,
                    round,
                    local_failure(format!("local computation failed: {e}")),
                );
            }
        };
        // The update's weight is the count the statistics released, not the exact one.
        if let (Some((_, trained_weight)), Some(weight)) = (trained.as_mut(), weight) {
            *trained_weight = weight;
        }
        // The noised figures' ledger entries, recorded just before the figures leave.
        let entries = match (&private, self.privacy.as_ref()) {
            (Some(private), Some(privacy)) => private
                .releases
                .iter()
                .map(|planned| {
                    let terms = match planned.terms.release {
                        // A training entry records the noisy steps actually taken.
                        Release::Training => ReleaseTerms::training(
                            planned.terms.sample_rate,
                            planned.terms.noise_multiplier,
                            steps,
                        ),
                        Release::DistributedTraining
                        | Release::EvaluationCounts
                        | Release::Statistics
                        | Release::ExampleCount => planned.terms.clone(),
                    };
                    let mut entry = terms.entry(round, privacy, planned.epsilon_after);
                    entry.released_count = planned.released_count;
                    entry.local_epsilon_after = planned.local_epsilon_after;
                    entry
                })
                .collect(),
            _ => Vec::new(),
        };
        let update = trained.as_ref().map(|(params, weight)| LocalUpdate {
            start: &model.params,
            trained: params,
            weight: *weight,
        });
        let Some(values) = layout.encode(&RoundResult {
            evaluation,
            update,
            distributed_sum: distributed_words.as_deref(),
        }) else {
            return decline(
                session,
                round,
                local_failure("local result does not fit the round layout"),
            );
        };
        self.answered.insert((round, start.attempt));
        let secure = start
            .secure_aggregation
            .as_ref()
            .map(|setup| (setup, layout.encoding(&setup.update_encoding)));
        // The final evaluation's vector (no update: the whole vector is the evaluation block),
        // kept as the site figure when this hospital releases one.
        let site = (!start.train && start.evaluate && self.reveals_site_figure(noised_evaluation))
            .then(|| {
                (
                    start.attempt,
                    SiteVector {
                        noised: noised_evaluation,
                        values: values.clone(),
                    },
                )
            });
        let figures = Figures {
            kind: ContributionKind::Round,
            values,
            exact,
            entries,
            revealers,
            site,
        };
        self.send_figures(session, round, figures, secure)
    }
}

/// Figures ready to leave, with what the policy and the ledger need to know about them.
struct Figures {
    /// Their layout.
    kind: ContributionKind,
    /// The figures.
    values: Vec<f64>,
    /// Which exact figures they carry, if any.
    exact: Option<ExactFigures>,
    /// Ledger entries of their noised parts.
    entries: Vec<LedgerEntry>,
    /// The manifest's site-figure hospitals, when the figures carry evaluation counts.
    revealers: Vec<String>,
    /// The final evaluation's vector and its attempt, when it is this node's site figure.
    site: Option<(u32, SiteVector)>,
}

impl Hospital {
    /// Whether this node releases its site figure of counts that are `noised` (or exact): its
    /// policy allows it and the approved manifest lists it.
    fn reveals_site_figure(&self, noised: bool) -> bool {
        let me = self.identity.as_deref().unwrap_or_default();
        self.policy.policy().release_site_figures.allows(noised)
            && self
                .manifest
                .as_ref()
                .is_some_and(|(manifest, _)| manifest.releases.reveals(me))
    }

    /// Answers a request for this hospital's own site figure: the very evaluation vector it
    /// put into the named attempt at the final evaluation, from its journal (a restarted node
    /// sends the same vector, never a fresh noise draw). Declined unless the hospital's policy
    /// releases site figures of such counts and the approved manifest lists it; declined for an
    /// attempt whose figures never left this node as a final evaluation, or once another
    /// attempt's figure was released.
    ///
    /// Privacy: a noised vector released again is post-processing of the release that put it
    /// into the sum, so no ε is charged (see [`crate::site_figures`]); exact counts carry no ε
    /// and are recorded as released alone ([`ExactFigures::SiteFigure`]).
    pub fn handle_site_figure(&mut self, request: &SiteFigureRequest) -> Message {
        let (session, round) = (request.session, request.round);
        if let Some(refused) = self.session_refusal(session, round) {
            return refused;
        }
        let opted_in = self.policy.policy().release_site_figures.opted_in();
        if !opted_in || !self.reveals_site_figure(true) && !self.reveals_site_figure(false) {
            tracing::warn!(
                round,
                opted_in,
                "refusing a site figure: this hospital's policy or its approved manifest does not release one"
            );
            return policy_decline(session, round, PolicyViolation::SiteFigureNotOptedIn);
        }
        let vector = match self.site_figures.check(round, request.attempt) {
            Ok(vector) => vector,
            Err(e) => {
                tracing::warn!(error = %e, "refusing a site figure");
                return policy_decline(session, round, PolicyViolation::SiteFigureUnavailable);
            }
        };
        if !self.reveals_site_figure(vector.noised) {
            tracing::warn!(
                round,
                noised = vector.noised,
                "refusing a site figure: the policy does not release counts like these"
            );
            return policy_decline(session, round, PolicyViolation::SiteFigureNotOptedIn);
        }
        let me = self.identity.clone().unwrap_or_default();
        if !vector.noised
            && let Err(e) = self
                .exact_releases
                .admit(&ExactFigures::SiteFigure, [me.as_str()])
        {
            tracing::warn!(error = %e, "refusing a site figure");
            return policy_decline(session, round, PolicyViolation::AlreadyReleased);
        }
        if let Err(e) = self.site_figures.release(round, request.attempt) {
            tracing::warn!(error = %e, "refusing a site figure");
            return decline(
                session,
                round,
                local_failure(format!("cannot record the site figure: {e}")),
            );
        }
        tracing::info!(
            round,
            attempt = request.attempt,
            noised = vector.noised,
            "releasing this site's own figure of the final evaluation (the vector already in its sum)"
        );
        Message::SiteFigure(SiteFigure {
            session,
            round,
            attempt: request.attempt,
            noised: vector.noised,
            values: vector.values,
        })
    }
}

/// A node's local result for one round.
struct LocalOutcome {
    /// Evaluation counts of the round's model on the held-out split, and the same per audit
    /// group, in a round that evaluates.
    evaluation: Option<(EvalCounts, Vec<GroupCounts>)>,
    /// Trained parameters and their weight (the number of training examples, until
    /// [`Hospital::handle_round`] puts the released count in its place), when training in a
    /// local task.
    trained: Option<(Vec<f32>, f64)>,
    /// The node's noised integer sum as words, when training in a distributed task.
    distributed_words: Option<Vec<u32>>,
    /// Optimiser steps taken (noisy steps under DP-SGD).
    steps: u64,
}

impl Hospital {
    /// Trains on this hospital's data alone — standardised with its own statistics, from the
    /// same initial model, for `rounds` rounds of `plan` — and evaluates on its own held-out
    /// split: what the hospital would get without the consortium. Sends nothing.
    pub fn local_only(
        &mut self,
        kind: ModelKind,
        plan: &TrainingPlan,
        rounds: u64,
        seed: u64,
    ) -> Result<Option<EvalMetrics>, LocalOnlyError> {
        let train = &self.train.examples;
        let sums = stats_contribution(&self.schema, &train.features)?.values;
        let standardization = Standardization::from_summed_stats(&self.schema, &sums)?;
        let spec = ModelSpec {
            kind,
            input_dim: self.schema.num_features(),
        };
        let mut model = Model::new(spec.clone(), spec.initial_parameters(seed))?;
        let (mut train, mut held_out) = (train.clone(), self.held_out.examples.clone());
        standardization.standardize(&self.schema, &mut train.features)?;
        standardization.standardize(&self.schema, &mut held_out.features)?;
        for round in 1..=rounds {
            let plan = TrainingPlan {
                seed: plan.seed.wrapping_add(round),
                ..plan.clone()
            };
            let outcome = self
                .trainer
                .train(&spec, &model.params, &train, &plan, &mut |_| {})?;
            model = Model::new(spec.clone(), outcome.params)?;
        }
        let scores = self.trainer.predict(&spec, &model.params, &held_out)?;
        Ok(EvalCounts::from_predictions(&scores, &held_out.labels).metrics())
    }
}

/// Why local-only training failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalOnlyError {
    /// Local statistics could not be computed.
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// The model does not fit its architecture.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training or prediction failed.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// In a round that evaluates, the evaluation counts of `model` on the (standardised) held-out
/// split — noised when the hospital noises them — and, when the round trains (`train`, the
/// standardised training split, is then given), the locally trained parameters with their
/// weight (with DP-SGD when the round is private).
fn evaluate_and_train(
    trainer: &mut dyn Trainer,
    model: &Model,
    (held_out, scores): (&Examples, Option<&[f32]>),
    start: &RoundStart,
    train: Option<&Examples>,
    private: Option<&PrivateRound>,
    audit_groups: (&[Vec<usize>], usize),
) -> Result<LocalOutcome, TrainError> {
    let evaluation = if start.evaluate {
        let noise = private.and_then(|p| p.evaluation.as_ref());
        let scores = match scores {
            Some(scores) => scores.to_vec(),
            None => held_out_scores(trainer, model, held_out)?,
        };
        Some(evaluate(
            &scores,
            held_out,
            noise,
            audit_groups,
            (start.score_bins, start.decision_threshold),
        ))
    } else {
        None
    };
    let Some(train) = train.filter(|_| start.train) else {
        return Ok(LocalOutcome {
            evaluation,
            trained: None,
            distributed_words: None,
            steps: 0,
        });
    };
    if let Some(step) = private.and_then(|p| p.distributed.as_ref()) {
        // The sample and the noise share come from a CSPRNG seeded by the operating system.
        let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
        let outcome = trainer.distributed_sum(
            &model.spec,
            &model.params,
            train,
            DistributedRound {
                sample_rate: step.sample_rate,
                pos_weight: start.plan.pos_weight,
            },
            &step.params,
            &mut rng,
        )?;
        // For the hospital's eyes only: the batch size is private and never sent.
        tracing::info!(
            sampled = outcome.sampled,
            non_finite = outcome.non_finite_examples,
            "distributed DP: clipped per-example gradients summed with this node's noise share"
        );
        return Ok(LocalOutcome {
            evaluation,
            trained: None,
            distributed_words: Some(outcome.words),
            steps: 1,
        });
    }
    let mut progress = Progress::new(start.round);
    let mut report = |p: TrainProgress| progress.update(&p);
    let (params, steps) = match private.and_then(|p| p.dp.as_ref()) {
        Some(dp) => {
            // Batches and noise come from a CSPRNG seeded by the operating system.
            let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
            let outcome = trainer.train_private(
                &model.spec,
                &model.params,
                train,
                &start.plan,
                dp,
                &mut rng,
                &mut report,
            )?;
            if outcome.non_finite_examples > 0 {
                // For the hospital's eyes only: never sent.
                tracing::warn!(
                    examples = outcome.non_finite_examples,
                    "examples whose gradient was not finite under this model contributed nothing"
                );
            }
            (outcome.params, outcome.steps)
        }
        None => {
            let outcome =
                trainer.train(&model.spec, &model.params, train, &start.plan, &mut report)?;
            (outcome.params, outcome.steps)
        }
    };
    progress.finish();
    Ok(LocalOutcome {
        evaluation,
        trained: Some((params, train.len() as f64)),
        distributed_words: None,
        steps,
    })
}

/// The scores of `model` on the (standardised) held-out split.
fn held_out_scores(
    trainer: &mut dyn Trainer,
    model: &Model,
    held_out: &Examples,
) -> Result<Vec<f32>, TrainError> {
    if held_out.is_empty() {
        return Ok(Vec::new());
    }
    trainer.predict(&model.spec, &model.params, held_out)
}

/// The evaluation counts of `scores` (a model's on the held-out split) and of each audit
/// group's rows (`row_groups[i]`: the groups of held-out row `i`), noised with `noise` when the
/// hospital noises them.
fn evaluate(
    scores: &[f32],
    held_out: &Examples,
    noise: Option<&EvaluationNoise>,
    (row_groups, group_count): (&[Vec<usize>], usize),
    (bins, threshold): (ScoreBins, DecisionThreshold),
) -> (EvalCounts, Vec<GroupCounts>) {
    let undefined = medfed_protocol::evaluation::undefined_scores(scores);
    if undefined > 0 {
        // For the hospital's eyes only: such scores count as ½, whatever the patient.
        tracing::warn!(
            patients = undefined,
            "the round's model gives no probability for some held-out patients"
        );
    }
    let mut eval = EvalCounts::from_predictions_at(
        scores,
        &held_out.labels,
        bins.evaluation as usize,
        threshold,
    );
    let mut members: Vec<(Vec<f32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); group_count];
    for ((score, label), groups) in scores.iter().zip(&held_out.labels).zip(row_groups) {
        for &group in groups {
            if let Some((s, l)) = members.get_mut(group) {
                s.push(*score);
                l.push(*label);
            }
        }
    }
    let mut groups: Vec<GroupCounts> = members
        .iter()
        .map(|(s, l)| GroupCounts::from_predictions_at(s, l, bins.group as usize, threshold))
        .collect();
    if let Some(noise) = noise {
        // Noise, like DP-SGD's, comes from a CSPRNG seeded by the operating system.
        let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
        noise.apply(scores, &held_out.labels, &mut eval, &mut groups, &mut rng);
    }
    (eval, groups)
}

/// The hospital's check of a secure sum's survivors: enough other hospitals (and enough of
/// them that release no site figure, when the sum carries evaluation counts), members only,
/// and exact figures only into the one sum they went into before. With `record`, the first such
/// sum is recorded (before any share leaves).
fn admit_sum(
    gate: &PolicyGate,
    exact_releases: &mut ReleaseRecord,
    me: &str,
    survivors: &[&str],
    (exact, revealers): (Option<&ExactFigures>, &[String]),
    record: bool,
) -> Result<(), PolicyViolation> {
    gate.check_sum(survivors.iter().copied(), me)?;
    gate.check_revealers(survivors.iter().copied(), me, revealers)?;
    let Some(exact) = exact else {
        return Ok(());
    };
    let outcome = if record {
        exact_releases.admit(exact, survivors.iter().copied())
    } else {
        exact_releases.check(exact, survivors.iter().copied())
    };
    outcome.map_err(|e| {
        tracing::warn!(error = %e, "refusing this survivor set");
        PolicyViolation::AlreadyReleased
    })
}

/// `Ok` if a release that leaves the hospital at `epsilon_after` stays within its budget;
/// otherwise the decline, logged with what `release` was.
fn within_budget(
    config: &PrivacyConfig,
    epsilon_after: f64,
    release: &str,
) -> Result<(), DeclineReason> {
    if epsilon_after > config.target_epsilon {
        tracing::warn!(
            epsilon_after,
            target_epsilon = config.target_epsilon,
            delta = config.delta,
            release,
            "declining: the release would take the hospital past its privacy budget"
        );
        return Err(DeclineReason::BudgetSpent);
    }
    Ok(())
}

/// `Ok` if a release that leaves the hospital at local ε `local_epsilon_after` (in distributed
/// mode) stays within its `max_local_epsilon`, when it sets one; otherwise the decline, logged
/// with what `release` was.
fn within_local_budget(
    config: &PrivacyConfig,
    local_epsilon_after: Option<f64>,
    release: &str,
) -> Result<(), DeclineReason> {
    if let (Some(local), Some(cap)) = (local_epsilon_after, config.max_local_epsilon)
        && local > cap
    {
        tracing::warn!(
            local_epsilon_after = local,
            max_local_epsilon = cap,
            delta = config.delta,
            release,
            "declining: the release would take the hospital past its local privacy cap"
        );
        return Err(DeclineReason::BudgetSpent);
    }
    Ok(())
}

/// The release of one evaluation's counts under `noise`, with `attributes` audited attributes.
fn evaluation_terms(noise: &EvaluationNoise, attributes: usize) -> ReleaseTerms {
    ReleaseTerms::counts(
        Release::EvaluationCounts,
        noise.mechanisms(attributes),
        noise.noise_multiplier(attributes),
    )
}

/// The reason to decline when the accountant refuses the figures.
fn accountant_failure(e: impl std::fmt::Display) -> DeclineReason {
    local_failure(format!("privacy accountant: {e}"))
}

/// The statistics' noise under the hospital's privacy policy; `None` when it turned it off.
fn statistics_noise(config: &PrivacyConfig) -> Result<Option<StatisticsNoise>, DeclineReason> {
    config
        .statistics
        .noise()
        .map_err(|e| local_failure(format!("privacy.statistics: {e}")))
}

/// Logs, for the hospital's eyes only, the values the statistics clipped into their columns'
/// ranges.
fn log_clipped(clipped: &[ClippedValues]) {
    for column in clipped.iter().filter(|c| c.total() > 0) {
        tracing::info!(
            column = %column.column,
            below = column.below,
            above = column.above,
            "values outside the schema's range, clipped into it in the statistics (these counts are not sent)"
        );
    }
}

/// The evaluation counts' noise, when the hospital turned it on.
fn evaluation_noise(config: &PrivacyConfig) -> Result<Option<EvaluationNoise>, DeclineReason> {
    config
        .evaluation
        .noise()
        .map_err(|e| local_failure(format!("privacy.evaluation: {e}")))
}

fn refusal(session: u64, round: u64, reason: RefusalReason) -> Message {
    Message::Refused(Refused {
        session,
        round,
        reason,
    })
}

fn decline(session: u64, round: u64, reason: DeclineReason) -> Message {
    Message::Declined(Declined {
        session,
        round,
        reason,
    })
}

/// Declines a request that breaks the hospital's policy, logging why.
fn policy_decline(session: u64, round: u64, violation: PolicyViolation) -> Message {
    tracing::warn!(%violation, "declining: the request breaks the hospital's policy");
    decline(session, round, DeclineReason::Policy(violation))
}

/// The reason sent for a failed local computation; the details stay in the node's log, since
/// they may depend on the data.
fn local_failure(detail: impl std::fmt::Display) -> DeclineReason {
    tracing::warn!(%detail, "local computation failed");
    DeclineReason::LocalFailure
}

/// The reason sent for an aborted secure aggregation; the details stay in the node's log.
fn aggregation_aborted(detail: impl std::fmt::Display) -> DeclineReason {
    tracing::warn!(%detail, "secure aggregation aborted");
    DeclineReason::SecureAggregationAborted
}

/// The figures of a plain contribution at the precision their kind travels at: statistics
/// exact in `f64` (sums of squares need it), round vectors in `f32`. A round figure that does
/// not fit an `f32` is refused rather than sent as infinity.
fn plain_figures(
    kind: ContributionKind,
    values: Vec<f64>,
) -> Result<PlainFigures, FigureOutOfRange> {
    match kind {
        ContributionKind::Stats => Ok(PlainFigures::Double(values)),
        ContributionKind::Round => PlainFigures::single(&values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_travel_exact_and_round_vectors_as_f32() {
        let stats = vec![3.0, 1e300, 0.1];
        assert_eq!(
            plain_figures(ContributionKind::Stats, stats.clone()).unwrap(),
            PlainFigures::Double(stats)
        );
        assert_eq!(
            plain_figures(ContributionKind::Round, vec![20.0, 0.5, -1e30]).unwrap(),
            PlainFigures::Single(vec![20.0, 0.5, -1e30])
        );
    }

    #[test]
    fn a_round_figure_beyond_f32_is_declined_not_sent_as_infinity() {
        let err = plain_figures(ContributionKind::Round, vec![20.0, 0.5, 1e39]).unwrap_err();
        assert_eq!(err.index, 2);
        assert!(err.to_string().contains("figure 2"), "{err}");
    }
}
