//! The coordinator's training loop: federated statistics, then training rounds, then a final
//! evaluation, each driven as parallel request/answer exchanges with the connected nodes.
//!
//! A round is applied whole or not at all: the new model's checkpoint is written atomically, and
//! only then is the round marked completed in SQLite, in one transaction with the optimiser
//! state. A coordinator restarted after a crash resumes after the last completed round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use medfed_audit::bias::{self as audit, AttributeAudit};
use medfed_audit::checkpoint::{
    CheckpointError, checkpoint_file_name, read_checkpoint, write_checkpoint,
};
use medfed_audit::reports::{ReportWriteError, ReportWriter};
use medfed_certs::{ConsortiumVerifier, MemberList, load_report_signing_key};
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::distributed_dp::{DdpError, DdpParams};
use medfed_protocol::evaluation::{EvalCounts, EvalMetrics};
use medfed_protocol::manifest::{SecureAggregationPlan, TaskManifest};
use medfed_protocol::messages::{
    Contribution, ContributionKind, DeclineReason, Finished, Message, PlainFigures, PrivacySpent,
    RefusalReason, Refused, RoundKeys, RoundStart, SecAggSetup, StatsRequest,
};
use medfed_protocol::model::{Model, ModelError, ModelSpec};
use medfed_protocol::report::{AuditReport, NodePrivacy, REPORT_FORMAT, file_sha256};
use medfed_protocol::schema::{Schema, SchemaError};
use medfed_protocol::secagg::encoding::{BlockEncoding, VectorEncoding};
use medfed_protocol::secagg::fixed_point::FixedPoint;
use medfed_protocol::secagg::{ExpectKeys, Participant, RoundParams, SecAggError, ShareDelivery};
use medfed_protocol::stats::{FederatedSummary, Standardization, StatsError};
use medfed_transport::{ChannelError, server_endpoint};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{CoordinatorConfig, PausePhase, PausePoint};
use crate::exchange::{self, ExchangeError, ModelPush};
use crate::listener::{self, Admission};
use crate::manifest::{ManifestBuildError, signed_manifest, write_manifest};
use crate::phases::{Phase, PhaseClock};
use crate::registry::{NodeHandle, Registry};
use crate::store::{CompletedRound, Store, StoreError};
use crate::strategy::{
    ServerOptimizer, StrategyError, build_optimizer, distributed_delta, mean_delta,
};

/// Key of the federated standardisation in the state store.
const STANDARDIZATION_KEY: &str = "standardization";
/// Key of the summary of the statistics round.
const SUMMARY_KEY: &str = "federated_summary";
/// How many standard deviations of the statistics' noise a round's declared example count may
/// lie from their noised count (six: honest hospitals are refused about once in 500 million
/// rounds).
const COUNT_NOISE_TOLERANCE: f64 = 6.0;
/// State-store key of the hospitals whose statistics were summed, sorted.
const STATS_PARTICIPANTS_KEY: &str = "statistics_participants";
/// State-store key of the hospitals whose held-out counts were first summed, sorted.
const EVALUATION_PARTICIPANTS_KEY: &str = "evaluation_participants";
/// Key of the final evaluation.
const FINAL_EVALUATION_KEY: &str = "final_evaluation";

/// What one applied round did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundReport {
    /// Round number, from 1.
    pub round: u64,
    /// Nodes whose contribution is in the sum.
    pub participants: Vec<String>,
    /// Nodes asked but left out, with the reason.
    pub dropped: Vec<(String, String)>,
    /// `(node, ε, δ)` each node declared it has spent, this round included.
    pub privacy: Vec<(String, f64, f64)>,
    /// Bias audit of the model the round started from, per sensitive attribute.
    pub fairness: Vec<AttributeAudit>,
    /// Pooled held-out metrics of the model the round started from (the previous round's model).
    pub start_model_evaluation: Option<EvalMetrics>,
    /// Hash of the model after the round.
    pub model_hash: String,
    /// Wall-clock seconds the round took.
    pub seconds: f64,
}

/// What a whole run did.
#[derive(Clone, Debug)]
pub struct TrainingReport {
    /// Rounds applied in this run (earlier runs' rounds are in the state store).
    pub rounds: Vec<RoundReport>,
    /// Pooled held-out metrics of the final model.
    pub final_evaluation: Option<EvalMetrics>,
    /// Bias audit of the final model, per sensitive attribute.
    pub final_fairness: Vec<AttributeAudit>,
    /// The final model.
    pub final_model: Model,
    /// Path of the final model's checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// The last completed round.
    pub last_round: u64,
    /// Bytes received from each node during this run (the nodes' egress logs should agree).
    pub bytes_received: BTreeMap<String, u64>,
    /// Why training stopped before the planned rounds, if it did: too few nodes had privacy
    /// budget left for another round.
    pub stopped_early: Option<String>,
}

/// A coordinator serving on its endpoint and training in the background.
#[derive(Debug)]
pub struct RunningCoordinator {
    local_addr: SocketAddr,
    training: tokio::task::JoinHandle<Result<TrainingReport, CoordinatorError>>,
}

impl RunningCoordinator {
    /// The address the coordinator listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for training to finish.
    pub async fn wait(self) -> Result<TrainingReport, CoordinatorError> {
        self.training
            .await
            .map_err(|e| CoordinatorError::Internal(e.to_string()))?
    }

    /// Stops the coordinator now, as a crash would (nothing is flushed that was not already).
    pub fn abort(&self) {
        self.training.abort();
    }
}

/// Opens the state, binds the endpoint and starts training.
pub async fn start(config: CoordinatorConfig) -> Result<RunningCoordinator, CoordinatorError> {
    let schema_text =
        std::fs::read_to_string(&config.schema).map_err(|source| CoordinatorError::Io {
            path: config.schema.clone(),
            source,
        })?;
    let schema = Schema::parse(&schema_text).map_err(|source| CoordinatorError::Schema {
        path: config.schema.clone(),
        source,
    })?;
    std::fs::create_dir_all(config.data_dir.join("checkpoints")).map_err(|source| {
        CoordinatorError::Io {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    let store = Store::open(&config.data_dir.join("state.sqlite"))?;
    let spec = ModelSpec {
        kind: config.task.model.clone().into(),
        input_dim: schema.num_features(),
    };
    spec.validate()?;

    let resumed = store.last_completed_round()?;
    let (round, model) = match &resumed {
        Some(done) => {
            let (round, model) = read_checkpoint(&done.checkpoint_path)?;
            if round != done.round || model.spec != spec {
                return Err(CoordinatorError::StateMismatch(format!(
                    "checkpoint {} holds round {round} of {:?}, the state says round {} of {:?}",
                    done.checkpoint_path.display(),
                    model.spec,
                    done.round,
                    spec
                )));
            }
            info!(round, hash = %model.hash(), "resuming after the last completed round");
            (round, model)
        }
        None => {
            let initial = Model::new(spec.clone(), spec.initial_parameters(config.task.seed))?;
            // The initial model is audited too; its checkpoint lets auditors check its hash. A
            // run killed before round 1 completed may have written it, and its audit report may
            // already name the file's SHA-256: an equal checkpoint is kept byte for byte (the
            // encoding's metadata order is not stable across runs).
            let dir = config.data_dir.join("checkpoints");
            let kept = read_checkpoint(&dir.join(checkpoint_file_name(0)))
                .is_ok_and(|(round, model)| round == 0 && model == initial);
            if !kept {
                write_checkpoint(&dir, 0, &initial)?;
            }
            (0, initial)
        }
    };
    let optimizer = build_optimizer(
        &config.strategy,
        model.params.len(),
        resumed
            .as_ref()
            .and_then(|done| done.optimizer_state.clone()),
    )?;

    let endpoint = server_endpoint(&config.tls, config.listen)?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|source| CoordinatorError::Io {
            path: "socket".into(),
            source,
        })?;
    let signed = signed_manifest(&config, &schema)?;
    let members: Vec<String> = MemberList::load(&config.members)
        .map_err(ManifestBuildError::from)?
        .names()
        .map(str::to_owned)
        .collect();
    let manifest_path = write_manifest(&config.data_dir, &signed)?;
    info!(
        manifest = %signed.manifest.digest(),
        file = %manifest_path.display(),
        "task manifest signed"
    );
    let manifest = signed.manifest.clone();
    if manifest.model != spec {
        return Err(CoordinatorError::Internal(
            "the manifest's model differs from the configured one".into(),
        ));
    }
    let session = random_session();
    let admission = Arc::new(Admission {
        session,
        schema_digest: schema.digest(),
        manifest: signed,
    });
    let registry = Arc::new(Registry::default());
    let store = Arc::new(Mutex::new(store));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let on_admit: listener::OnAdmit = {
        let store = store.clone();
        Arc::new(move |identity: &str| {
            if let Err(e) = lock(&store).node_seen(identity, now_ms()) {
                warn!(error = %e, "cannot record node in state");
            }
        })
    };
    tokio::spawn(listener::serve(
        endpoint.clone(),
        admission,
        registry.clone(),
        on_admit,
        shutdown_rx,
    ));
    info!(%local_addr, session = format_args!("{session:016x}"), "coordinator listening");

    let optimizer = Mutex::new(optimizer);
    let peer_verifier = ConsortiumVerifier::new(&config.tls)
        .map_err(|source| CoordinatorError::PeerVerifier { source })?;
    let signing_key = load_report_signing_key(&config.tls.key)?;
    let reports = ReportWriter::open(&config.data_dir.join("reports"), signing_key)?;
    let trainer = Trainer {
        config,
        manifest,
        schema,
        store,
        registry,
        session,
        model,
        optimizer,
        round,
        reports,
        members,
        left_out: Mutex::new(BTreeMap::new()),
        sum_buffer: Mutex::new(Vec::new()),
        peer_verifier,
        distributed: None,
    };
    let training = tokio::spawn(async move {
        let result = trainer.run().await;
        let _ = shutdown_tx.send(true);
        endpoint.close(0u32.into(), b"training finished");
        result
    });
    Ok(RunningCoordinator {
        local_addr,
        training,
    })
}

/// The training loop's state.
struct Trainer {
    config: CoordinatorConfig,
    /// The signed plan every node approved: each round's plan, threshold and update encoding
    /// come from it.
    manifest: TaskManifest,
    schema: Schema,
    store: Arc<Mutex<Store>>,
    registry: Arc<Registry>,
    session: u64,
    model: Model,
    /// The server optimiser (behind a mutex only so the trainer can be shared across tasks).
    optimizer: Mutex<Box<dyn ServerOptimizer>>,
    /// Last completed round.
    round: u64,
    /// The signed, chained audit reports.
    reports: ReportWriter,
    /// The consortium's members (the manifest's member list), for the reports' absent members.
    members: Vec<String>,
    /// Nodes left out of the remaining attempts of a round, `(round, identity)` → why: a node
    /// whose secure-aggregation share a peer could not authenticate.
    left_out: Mutex<BTreeMap<(u64, String), String>>,
    /// The last secure-aggregation round's sum, once decoded: the next round sums into it
    /// (zeroed first), so that each round does not fault in a fresh model-sized allocation.
    sum_buffer: Mutex<Vec<u32>>,
    /// Checks the nodes' signatures on the survivor set against their certificates, so that a
    /// bad one is left out rather than relayed (every node would then refuse to unmask).
    peer_verifier: ConsortiumVerifier,
    /// Under distributed DP (`[task.distributed_dp]`), what decodes each round's sum; set once
    /// the statistics round has given the public denominator.
    distributed: Option<DistributedDecoder>,
}

/// How the coordinator reads a distributed-DP update block: the parameters every node built
/// from the manifest, and the public denominator `q·N` (`N` the pooled noised example count of
/// the statistics round), never a figure a node reports about its batch.
struct DistributedDecoder {
    params: DdpParams,
    denominator: f64,
}

/// A node's answer to one exchange: its index in the round, the node, and what it sent.
type Answer = (u16, Arc<NodeHandle>, Result<Message, ExchangeError>);

/// Sum of the contributions of one exchange round.
#[derive(Default)]
struct Gathered {
    sum: Vec<f64>,
    participants: Vec<String>,
    dropped: Vec<(String, String)>,
    /// `(node, declared privacy spent)` for nodes that train privately.
    privacy: Vec<(String, PrivacySpent)>,
    /// Nodes that declined because the round would take them past their privacy budget.
    budget_spent: Vec<String>,
    /// Under distributed DP, the round's pseudo-update `−lr·Σg/(q·N)` decoded from the sum.
    distributed_delta: Option<Vec<f64>>,
}

impl Gathered {
    /// Records the privacy a node declares it has spent.
    fn declare(&mut self, node: &NodeHandle, privacy: Option<PrivacySpent>) {
        if let Some(spent) = privacy {
            info!(node = %node.identity, epsilon = spent.epsilon, delta = spent.delta, "node's declared privacy spent");
            self.privacy.push((node.identity.clone(), spent));
        }
    }

    /// Hands each answer to `accept`; a failed exchange or a refused answer leaves that node
    /// out.
    fn take(
        &mut self,
        answers: Vec<Answer>,
        mut accept: impl FnMut(u16, &Arc<NodeHandle>, Message) -> Result<(), ExchangeError>,
    ) {
        for (index, node, answer) in answers {
            if let Err(e) = answer.and_then(|message| accept(index, &node, message)) {
                self.drop(&node, &e);
            }
        }
    }

    /// Leaves a node out, with the reason, for the log and the round report.
    fn drop(&mut self, node: &NodeHandle, error: &ExchangeError) {
        warn!(node = %node.identity, %error, "node left out of the round");
        if let ExchangeError::Declined(DeclineReason::BudgetSpent) = error {
            self.budget_spent.push(node.identity.clone());
        }
        self.dropped
            .push((node.identity.clone(), error.to_string()));
    }
}

/// What to collect from the nodes in one exchange round.
struct Collection<'a> {
    /// Round number (0: statistics).
    round: u64,
    /// Layout of the figures.
    kind: ContributionKind,
    /// Figures per node.
    value_len: usize,
    /// The model to push first, in training and evaluation rounds.
    model: Option<Arc<Model>>,
    /// The request, given the secure-aggregation setup (`None` when it is off).
    request: Box<dyn Fn(Option<SecAggSetup>) -> Message + Send + Sync + 'a>,
    /// How the figures are encoded for secure aggregation, given the update's fixed point.
    encoding: Box<dyn Fn(&FixedPoint) -> VectorEncoding + Send + Sync + 'a>,
}

impl Trainer {
    async fn run(mut self) -> Result<TrainingReport, CoordinatorError> {
        // A restarted coordinator also waits for the hospitals its evaluations were summed
        // over: without all of them, no round could evaluate.
        let evaluated = self.evaluation_participants().map_or(0, |e| e.len());
        let start = self.config.task.start_nodes.unwrap_or(0).max(evaluated);
        if start > 0 {
            let wait = self.config.task.wait_for_nodes();
            let connected = self.registry.wait_for(start, wait).await.len();
            info!(connected, wanted = start, "starting");
        }
        let standardization = self.standardization().await?;
        self.distributed = self.distributed_decoder()?;
        let mut reports = Vec::new();
        let mut checkpoint = None;
        let mut stopped_early = None;
        while self.round < self.config.task.rounds {
            let round = self.round + 1;
            match self.train_round(round, &standardization).await? {
                Some((report, path)) => {
                    reports.push(report);
                    checkpoint = Some(path);
                }
                None => {
                    let why = format!(
                        "training stopped after round {} of {}: too few nodes have privacy budget left for another round",
                        self.round, self.config.task.rounds
                    );
                    warn!("{why}");
                    stopped_early = Some(why);
                    break;
                }
            }
        }
        if checkpoint.is_none() && self.round > 0 {
            // Every round was applied by an earlier run: the final model is that run's last.
            checkpoint = Some(
                self.config
                    .data_dir
                    .join("checkpoints")
                    .join(checkpoint_file_name(self.round)),
            );
        }
        let (final_evaluation, final_fairness) = self.final_evaluation(&standardization).await?;
        self.finish().await;
        let bytes_received = self.registry.bytes_received();
        Ok(TrainingReport {
            bytes_received,
            rounds: reports,
            final_evaluation,
            final_fairness,
            final_model: self.model,
            checkpoint,
            last_round: self.round,
            stopped_early,
        })
    }

    /// The consortium's standardisation: from the state store, or from a statistics round.
    async fn standardization(&mut self) -> Result<Standardization, CoordinatorError> {
        if let Some(known) = lock(&self.store).get_json::<Standardization>(STANDARDIZATION_KEY)? {
            return Ok(known);
        }
        let span = info_span!("statistics");
        async {
            let session = self.session;
            let stats_len = self.schema.stats_len();
            for attempt in 1..=self.config.task.round_attempts {
                danger_pause(self.config.danger_pause_at, 0, PausePhase::RoundStarted).await;
                let collection = Collection {
                    round: 0,
                    kind: ContributionKind::Stats,
                    value_len: stats_len,
                    model: None,
                    request: Box::new(move |secure_aggregation| {
                        Message::StatsRequest(StatsRequest { session, round: 0, secure_aggregation })
                    }),
                    encoding: Box::new(move |_| VectorEncoding::new(vec![(stats_len, BlockEncoding::Wide)])),
                };
                let gathered = self.gather(collection).await;
                match gathered {
                    Ok(g) => {
                        let standardization = Standardization::from_summed_stats(&self.schema, &g.sum)?;
                        let summary = FederatedSummary::from_summed_stats(&self.schema, &g.sum)?;
                        {
                            // The standardisation goes last: once it is stored, a restarted
                            // coordinator skips this round, so the summary must already be there.
                            let store = lock(&self.store);
                            store.put_json(SUMMARY_KEY, &summary)?;
                            store.put_json(STATS_PARTICIPANTS_KEY, &g.participants)?;
                            store.put_json(STANDARDIZATION_KEY, &standardization)?;
                        }
                        info!(nodes = g.participants.len(), summary = %serde_json::to_string(&summary).unwrap_or_default(), "federated statistics computed");
                        danger_pause(self.config.danger_pause_at, 0, PausePhase::RoundCompleted).await;
                        return Ok(standardization);
                    }
                    Err(e) => {
                        warn!(attempt, error = %e, "statistics round failed");
                        retry_pause(attempt).await;
                    }
                }
            }
            Err(CoordinatorError::GaveUp { round: 0 })
        }
        .instrument(span)
        .await
    }

    /// The decoder of distributed-DP update blocks, when the manifest plans distributed DP:
    /// its parameters, and the public denominator `q·N` with `N` the pooled noised example
    /// count the statistics round gave. Without that count the task cannot start.
    fn distributed_decoder(&self) -> Result<Option<DistributedDecoder>, CoordinatorError> {
        let (Some(plan), Some(params)) = (
            self.manifest.distributed_dp.as_ref(),
            self.manifest.distributed_params(),
        ) else {
            return Ok(None);
        };
        let params = params.map_err(|e| CoordinatorError::DistributedDp(e.to_string()))?;
        let summary = lock(&self.store).get_json::<FederatedSummary>(SUMMARY_KEY)?;
        let Some(summary) = summary.filter(|s| s.n > 0) else {
            return Err(CoordinatorError::DistributedDp(
                "the statistics round left no pooled example count N to divide the sum by (q·N)"
                    .into(),
            ));
        };
        let denominator = plan.sample_rate * summary.n as f64;
        info!(
            sample_rate = plan.sample_rate,
            pooled_examples = summary.n,
            denominator,
            noise_multiplier = plan.noise_multiplier,
            threshold = plan.threshold,
            noise_std_at_threshold = params.noise_std_of_sum(params.config().threshold),
            "distributed DP: each round is one DP-FedSGD step over the public denominator q·N"
        );
        Ok(Some(DistributedDecoder {
            params,
            denominator,
        }))
    }

    /// Runs round `round` until it is applied or the attempts run out; `None` when too few
    /// nodes have privacy budget left for it (training stops: they would decline every retry).
    async fn train_round(
        &mut self,
        round: u64,
        standardization: &Standardization,
    ) -> Result<Option<(RoundReport, PathBuf)>, CoordinatorError> {
        let span = info_span!("round", round);
        async {
            for attempt in 1..=self.config.task.round_attempts {
                let started = Instant::now();
                lock(&self.store).begin_round(round, &self.model.hash(), now_ms())?;
                danger_pause(self.config.danger_pause_at, round, PausePhase::RoundStarted).await;
                match self
                    .round_exchange(round, attempt, true, standardization)
                    .await
                {
                    Ok((gathered, layout)) => {
                        let (report, path) = self.apply(round, gathered, layout, started).await?;
                        return Ok(Some((report, path)));
                    }
                    Err(reason @ RoundFailure::BudgetSpent { .. }) => {
                        warn!(attempt, %reason, "round abandoned");
                        lock(&self.store).abort_round(round, &reason.to_string(), now_ms())?;
                        return Ok(None);
                    }
                    Err(reason) => {
                        warn!(attempt, %reason, "round failed; it will be restarted");
                        lock(&self.store).abort_round(round, &reason.to_string(), now_ms())?;
                        retry_pause(attempt).await;
                    }
                }
            }
            Err(CoordinatorError::GaveUp { round })
        }
        .instrument(span)
        .await
    }

    /// Asks every connected node for its round vector and sums them.
    async fn round_exchange(
        &self,
        round: u64,
        attempt: u32,
        train: bool,
        standardization: &Standardization,
    ) -> Result<(Gathered, RoundLayout), RoundFailure> {
        // Nodes send exact evaluation counts into sums over one set of hospitals only (the
        // held-out patients' per-group counts do not change with the model). Once that set is
        // known, a training round evaluates on schedule only over it, and not in a retry (an
        // evaluating attempt that lost a hospital fails, as its nodes refuse to unmask a sum
        // over others); the evaluation-only round asks that set alone.
        let scheduled = self.manifest.releases.evaluates(round, train);
        let evaluated_with = self.evaluation_participants();
        let mut roster = self.roster(round);
        if let (false, Some(evaluated)) = (train, &evaluated_with) {
            if !evaluated.iter().all(|h| roster.contains(h)) {
                return Err(RoundFailure::EvaluationParticipants {
                    before: evaluated.clone(),
                    now: roster,
                });
            }
            self.leave_out_all_but(round, evaluated, &roster);
            roster.clone_from(evaluated);
        }
        let same_hospitals = evaluated_with.as_ref().is_none_or(|e| *e == roster);
        let first_try = attempt == 1 || evaluated_with.is_none();
        let evaluate = scheduled && (!train || (same_hospitals && first_try));
        if scheduled && !evaluate {
            info!(
                round,
                attempt,
                "the round's evaluation is left out: a retry, or its hospitals are not those \
                 whose held-out counts were summed before"
            );
        }
        let score_bins = self.manifest.releases.score_bins;
        let layout = RoundLayout {
            params: self.model.params.len(),
            train,
            evaluate,
            groups: self.schema.audit_groups().len(),
            bins: score_bins,
            distributed: train && self.distributed.is_some(),
        };
        let session = self.session;
        let model_hash = self.model.hash();
        let plan = self.manifest.training.plan(round);
        let learning_rate = plan.learning_rate;
        let collection = Collection {
            round,
            kind: ContributionKind::Round,
            value_len: layout.len(),
            model: Some(Arc::new(self.model.clone())),
            request: Box::new(move |secure_aggregation| {
                Message::RoundStart(RoundStart {
                    session,
                    round,
                    attempt,
                    model_hash,
                    train,
                    evaluate,
                    score_bins,
                    plan: plan.clone(),
                    standardization: standardization.clone(),
                    secure_aggregation,
                })
            }),
            encoding: Box::new(move |fixed| layout.encoding(fixed)),
        };
        let mut gathered = self.gather(collection).await?;
        if layout.distributed {
            gathered.distributed_delta =
                Some(self.distributed_delta(&gathered, layout, learning_rate)?);
        } else if train {
            self.check_example_count(&gathered)?;
        }
        if evaluate && evaluated_with.is_none() {
            let mut participants = gathered.participants.clone();
            participants.sort();
            lock(&self.store)
                .put_json(EVALUATION_PARTICIPANTS_KEY, &participants)
                .map_err(|e| RoundFailure::Store(e.to_string()))?;
        }
        Ok((gathered, layout))
    }

    /// Under distributed DP, the round's pseudo-update from the unmasked sum: the words
    /// decoded over the survivors ([`DdpParams::decode_sum`], which refuses a sum over fewer
    /// than `t` or a coordinate out of range), divided by the public `q·N`, times `−lr`.
    fn distributed_delta(
        &self,
        gathered: &Gathered,
        layout: RoundLayout,
        learning_rate: f64,
    ) -> Result<Vec<f64>, RoundFailure> {
        let decoder = self
            .distributed
            .as_ref()
            .ok_or_else(|| RoundFailure::Store("no distributed-DP decoder".into()))?;
        let words = layout
            .decode(&gathered.sum)
            .and_then(|totals| totals.distributed_sum)
            .ok_or_else(|| RoundFailure::Store("the sum does not fit the round layout".into()))?;
        let gradient_sum = decoder
            .params
            .decode_sum(&words, gathered.participants.len())?;
        Ok(distributed_delta(
            &gradient_sum,
            decoder.denominator,
            learning_rate,
        )?)
    }

    /// The hospitals whose held-out counts were first summed, if any were.
    fn evaluation_participants(&self) -> Option<Vec<String>> {
        lock(&self.store)
            .get_json::<Vec<String>>(EVALUATION_PARTICIPANTS_KEY)
            .ok()
            .flatten()
    }

    /// Leaves every hospital of `roster` not in `keep` out of round `round`.
    fn leave_out_all_but(&self, round: u64, keep: &[String], roster: &[String]) {
        let mut left_out = self
            .left_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for hospital in roster.iter().filter(|h| !keep.contains(h)) {
            left_out.insert(
                (round, hospital.clone()),
                "not among the hospitals whose held-out counts were summed before".to_owned(),
            );
        }
    }

    /// The hospitals a round would ask now, sorted: those connected, less those left out of
    /// the round.
    fn roster(&self, round: u64) -> Vec<String> {
        let left_out = self
            .left_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut roster: Vec<String> = self
            .registry
            .connected()
            .iter()
            .map(|node| node.identity.clone())
            .filter(|identity| !left_out.contains_key(&(round, identity.clone())))
            .collect();
        roster.sort();
        roster
    }

    /// When a round's hospitals are exactly those of the statistics round, the training
    /// examples they declare in their updates (Σn, the update's weight) must be the examples
    /// their statistics counted: a hospital that inflated its n to weigh more in the average is
    /// caught here, and the round fails rather than being applied. Where the statistics were
    /// noised, their count is compared within [`COUNT_NOISE_TOLERANCE`] standard deviations of
    /// its noise: an inflation smaller than that goes unseen.
    fn check_example_count(&self, gathered: &Gathered) -> Result<(), RoundFailure> {
        let (summary, counted) = {
            let store = lock(&self.store);
            (
                store.get_json::<FederatedSummary>(SUMMARY_KEY),
                store.get_json::<Vec<String>>(STATS_PARTICIPANTS_KEY),
            )
        };
        let (Ok(Some(summary)), Ok(Some(counted))) = (summary, counted) else {
            return Ok(());
        };
        if counted != gathered.participants {
            return Ok(());
        }
        let declared = gathered.sum.last().copied().unwrap_or(f64::NAN);
        let tolerance = 0.5 + COUNT_NOISE_TOLERANCE * summary.count_noise;
        if (declared - summary.n as f64).abs() > tolerance {
            return Err(RoundFailure::ExampleCountMismatch {
                declared,
                counted: summary.n,
                tolerance,
            });
        }
        Ok(())
    }

    /// Collects one set of figures from every connected node — in parallel, pushing the model
    /// first to nodes that lack it — and returns their sum: unmasked by secure aggregation, or,
    /// if the consortium turned that off, summed in the clear.
    async fn gather(&self, collection: Collection<'_>) -> Result<Gathered, RoundFailure> {
        let min = self.config.task.min_nodes;
        let mut nodes = self
            .registry
            .wait_for(min, self.config.task.wait_for_nodes())
            .await;
        let left_out: Vec<(String, String)> = {
            let left_out = self
                .left_out
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            nodes.retain(|node| !left_out.contains_key(&(collection.round, node.identity.clone())));
            left_out
                .iter()
                .filter(|((round, _), _)| *round == collection.round)
                .map(|((_, identity), why)| (identity.clone(), why.clone()))
                .collect()
        };
        if nodes.len() < min {
            return Err(RoundFailure::TooFewNodes {
                have: nodes.len(),
                need: min,
            });
        }
        let nodes: Vec<(u16, Arc<NodeHandle>)> = nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| (i as u16 + 1, node))
            .collect();
        let mut gathered = if let Some(settings) = &self.manifest.secure_aggregation {
            self.gather_secure(settings, &collection, &nodes).await?
        } else {
            warn!(
                "secure aggregation is OFF: the coordinator sees every node's figures in the clear"
            );
            let gathered = self.gather_plain(&collection, &nodes).await;
            self.check_budgets(nodes.len(), &gathered)?;
            gathered
        };
        danger_pause(
            self.config.danger_pause_at,
            collection.round,
            PausePhase::Unmasked,
        )
        .await;
        gathered.dropped.extend(left_out);
        if gathered.participants.len() < min {
            return Err(RoundFailure::TooFewAnswers {
                have: gathered.participants.len(),
                need: min,
            });
        }
        Ok(gathered)
    }

    /// Fails the round for good when the nodes whose privacy budget is spent leave fewer than
    /// `min_nodes` of the `asked`: they would decline every retry too.
    fn check_budgets(&self, asked: usize, gathered: &Gathered) -> Result<(), RoundFailure> {
        let need = self.config.task.min_nodes;
        let spent = &gathered.budget_spent;
        if !spent.is_empty() && asked.saturating_sub(spent.len()) < need {
            return Err(RoundFailure::BudgetSpent {
                nodes: spent.clone(),
                need,
            });
        }
        Ok(())
    }

    /// Plain summation (secure aggregation turned off).
    async fn gather_plain(
        &self,
        collection: &Collection<'_>,
        nodes: &[(u16, Arc<NodeHandle>)],
    ) -> Gathered {
        let request = (collection.request)(None);
        let answers = self
            .exchange_all(nodes, collection.model.as_ref(), collection.round, |_| {
                request.clone()
            })
            .await;
        let mut gathered = Gathered::default();
        for (_, node, answer) in answers {
            let checked = answer.and_then(|message| {
                check_contribution(
                    message,
                    self.session,
                    collection.round,
                    collection.kind,
                    collection.value_len,
                )
            });
            match checked {
                Ok(contribution) => {
                    add_into(&mut gathered.sum, &contribution.values);
                    gathered.participants.push(node.identity.clone());
                    gathered.declare(&node, contribution.privacy);
                }
                Err(e) => gathered.drop(&node, &e),
            }
        }
        gathered.participants.sort();
        gathered
    }

    /// Secure aggregation: keys, shares, masked inputs, signatures on the survivor set,
    /// unmasking; only the sum is learnt.
    async fn gather_secure(
        &self,
        settings: &SecureAggregationPlan,
        collection: &Collection<'_>,
        nodes: &[(u16, Arc<NodeHandle>)],
    ) -> Result<Gathered, RoundFailure> {
        let fixed = settings.update_encoding(nodes.len());
        let encoding = (collection.encoding)(&fixed);
        encoding.check_capacity(nodes.len())?;
        let participants: Vec<Participant> = nodes
            .iter()
            .map(|(index, node)| Participant {
                index: *index,
                identity: node.identity.clone(),
            })
            .collect();
        let mut params = RoundParams {
            session: self.session,
            round: collection.round,
            participants,
            threshold: 0,
            neighbours: settings.neighbours(),
            graph_seed: random_bytes(),
            vector_len: encoding.encoded_len(),
            // Bound to the manifest every node approved: a node shown another one refuses.
            encoding_digest: encoding.task_digest(&self.manifest.digest().0),
        };
        params.threshold = settings.threshold.threshold(params.holders_per_secret());
        let setup = SecAggSetup {
            params: params.clone(),
            update_encoding: fixed,
        };
        let mut gathered = Gathered::default();
        let by_index: BTreeMap<u16, Arc<NodeHandle>> = nodes.iter().cloned().collect();
        let subset = |indices: &[u16]| -> Vec<(u16, Arc<NodeHandle>)> {
            indices
                .iter()
                .filter_map(|i| by_index.get(i).map(|n| (*i, n.clone())))
                .collect()
        };

        let mut clock = PhaseClock::start();
        // Phase 1: the figures are computed; each node answers with its signed round keys.
        let mut server = ExpectKeys::new(params)?;
        let request = (collection.request)(Some(setup));
        let answers = self
            .exchange_all(nodes, collection.model.as_ref(), collection.round, |_| {
                request.clone()
            })
            .await;
        let mut declared = Vec::new();
        gathered.take(answers, |index, node, message| match message {
            Message::SecAggKeys(RoundKeys { keys, privacy }) => {
                declared.push((node.clone(), privacy));
                server
                    .handle_keys(index, keys, node.certificate.clone())
                    .map_err(rejected)
            }
            other => Err(unexpected(other, "secagg_keys")),
        });
        for (node, privacy) in declared {
            gathered.declare(&node, privacy);
        }
        self.check_budgets(nodes.len(), &gathered)?;
        let (mut server, directory) = server.finish()?;
        clock.lap(Phase::Keys);
        danger_pause(
            self.config.danger_pause_at,
            collection.round,
            PausePhase::KeysCollected,
        )
        .await;

        // Phase 2: encrypted shares for the neighbours.
        let answers = self
            .exchange_all(
                &subset(&server.participants()),
                None,
                collection.round,
                |_| Message::SecAggDirectory(directory.clone()),
            )
            .await;
        gathered.take(answers, |index, _, message| match message {
            Message::SecAggShares(package) => {
                server.handle_package(index, package).map_err(rejected)
            }
            other => Err(unexpected(other, "secagg_shares")),
        });
        let buffer = std::mem::take(&mut *self.sum_buffer());
        let (mut server, mut deliveries) = server.finish_into(buffer)?;
        clock.lap(Phase::Shares);
        danger_pause(
            self.config.danger_pause_at,
            collection.round,
            PausePhase::SharesRelayed,
        )
        .await;

        // Phase 3: masked inputs, summed as they arrive.
        let answers = self
            .exchange_all(
                &subset(&server.participants()),
                None,
                collection.round,
                |index| {
                    Message::SecAggDelivery(deliveries.remove(&index).unwrap_or_else(|| {
                        ShareDelivery {
                            session: self.session,
                            round: collection.round,
                            shares: Vec::new(),
                            senders: Vec::new(),
                        }
                    }))
                },
            )
            .await;
        // A node whose share a peer could not authenticate is left out: its masked input is
        // not summed (its masks are removed as a dropout's), and it sits out the round's
        // remaining attempts. The peer that reported it refused this phase, and is a dropout too.
        let accused = self.accused_of_bad_shares(collection.round, &answers, &by_index);
        let inputs_received = answers
            .iter()
            .filter(|(_, _, answer)| matches!(answer, Ok(Message::SecAggInput(_))))
            .count();
        gathered.take(answers, |index, _, message| {
            if let Some(peer) = accused.get(&index) {
                return Err(ExchangeError::ShareAuthentication { peer: peer.clone() });
            }
            match message {
                Message::SecAggInput(input) => server.handle_input(index, &input).map_err(rejected),
                other => Err(unexpected(other, "secagg_input")),
            }
        });
        if inputs_received > 0 {
            danger_pause(
                self.config.danger_pause_at,
                collection.round,
                PausePhase::MaskedInputs,
            )
            .await;
        }
        let (mut server, consistency) = server.finish()?;
        clock.lap(Phase::Inputs);

        // Phase 4: each survivor signs the survivor set; a bad signature leaves its signer out.
        let answers = self
            .exchange_all(
                &subset(&server.participants()),
                None,
                collection.round,
                |_| Message::SecAggConsistency(consistency.clone()),
            )
            .await;
        gathered.take(answers, |index, _, message| match message {
            Message::SecAggSignature(signature) => server
                .handle_signature(index, signature, &self.peer_verifier)
                .map_err(rejected),
            other => Err(unexpected(other, "secagg_signature")),
        });
        let (mut server, unmask) = server.finish()?;
        clock.lap(Phase::Consistency);

        // Phase 5: the shares that remove the masks, from the survivors that signed.
        let answers = self
            .exchange_all(
                &subset(&server.participants()),
                None,
                collection.round,
                |_| Message::SecAggUnmask(unmask.clone()),
            )
            .await;
        gathered.take(answers, |index, _, message| match message {
            Message::SecAggUnmaskShares(response) => {
                server.handle_response(index, response).map_err(rejected)
            }
            other => Err(unexpected(other, "secagg_unmask_shares")),
        });
        // The sum holds the masked inputs of exactly the phase-3 survivors (U3), including any
        // that then failed to unmask; the count encoding removes one offset per input summed.
        let survivors = server.survivors();
        let sum = server.finish()?;
        let decoded = encoding.decode_sum(&sum, survivors.len());
        clock.lap(Phase::Unmask);
        clock.log(collection.round);
        *self.sum_buffer() = sum;
        gathered.sum = decoded?;
        gathered.participants = survivors
            .iter()
            .filter_map(|i| by_index.get(i).map(|n| n.identity.clone()))
            .collect();
        gathered.participants.sort();
        Ok(gathered)
    }

    /// The buffer the next secure-aggregation round sums into.
    fn sum_buffer(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.sum_buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The participants whose shares a peer reported as failing authentication, by index, with
    /// that peer's identity; each is also left out of the round's remaining attempts.
    fn accused_of_bad_shares(
        &self,
        round: u64,
        answers: &[Answer],
        by_index: &BTreeMap<u16, Arc<NodeHandle>>,
    ) -> BTreeMap<u16, String> {
        let mut accused = BTreeMap::new();
        for (index, node, answer) in answers {
            let Ok(Message::Refused(Refused {
                reason: RefusalReason::ShareAuthentication { from },
                ..
            })) = answer
            else {
                continue;
            };
            let Some(sender) = by_index.get(from).filter(|_| from != index) else {
                continue;
            };
            warn!(node = %sender.identity, peer = %node.identity, "a peer could not authenticate this node's secure-aggregation share; leaving it out of the round");
            self.left_out
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry((round, sender.identity.clone()))
                .or_insert_with(|| {
                    format!(
                        "left out of the round: its secure-aggregation share for {} failed authentication",
                        node.identity
                    )
                });
            accused
                .entry(*from)
                .or_insert_with(|| node.identity.clone());
        }
        accused
    }

    /// Sends each node its request on a fresh stream (pushing `model` first where needed) and
    /// waits for the answers, until the round deadline.
    async fn exchange_all(
        &self,
        nodes: &[(u16, Arc<NodeHandle>)],
        model: Option<&Arc<Model>>,
        round: u64,
        mut request: impl FnMut(u16) -> Message,
    ) -> Vec<Answer> {
        let deadline = tokio::time::Instant::now() + self.config.task.round_deadline();
        let session = self.session;
        let pause = model.and(self.config.danger_pause_at);
        let mut tasks = JoinSet::new();
        // Hashed, split and framed once for all the nodes that lack it.
        let push = model.map(|model| Arc::new(ModelPush::new(model, session, round)));
        for (index, node) in nodes {
            let (index, node, push, request) =
                (*index, node.clone(), push.clone(), request(*index));
            tasks.spawn(async move {
                let exchange = async {
                    if let Some(push) = &push
                        && node.held_model() != Some(push.hash())
                    {
                        exchange::push_model(&node, push).await?;
                    }
                    danger_pause(pause, round, PausePhase::ModelPushed).await;
                    exchange::request(&node, &request).await
                };
                let result = tokio::time::timeout_at(deadline, exchange)
                    .await
                    .unwrap_or(Err(ExchangeError::Deadline));
                (index, node, result)
            });
        }
        let mut answers = Vec::with_capacity(nodes.len());
        while let Some(joined) = tasks.join_next().await {
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|(index, _, _)| *index);
        answers
    }

    /// Applies a round's summed update, checkpoints the model and records the round.
    async fn apply(
        &mut self,
        round: u64,
        gathered: Gathered,
        layout: RoundLayout,
        started: Instant,
    ) -> Result<(RoundReport, PathBuf), CoordinatorError> {
        let totals = layout
            .decode(&gathered.sum)
            .ok_or_else(|| CoordinatorError::Internal("sum length".into()))?;
        let evaluation = totals.eval.as_ref().and_then(EvalCounts::metrics);
        let fairness = if totals.eval.is_some() {
            audit::audit(&self.schema, &totals.groups, &self.config.fairness)
        } else {
            Vec::new()
        };
        audit::log(&fairness);
        let mean = match gathered.distributed_delta {
            Some(delta) => delta,
            None => {
                let (delta, weight) = totals
                    .update
                    .ok_or_else(|| CoordinatorError::Internal("no update block".into()))?;
                mean_delta(&delta, weight)?
            }
        };
        let mut params = self.model.params.clone();
        let optimizer = self
            .optimizer
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        optimizer.try_apply(&mut params, &mean)?;
        let optimizer_state = optimizer.state();
        let model = Model::new(self.model.spec.clone(), params)?;
        let path = write_checkpoint(&self.config.data_dir.join("checkpoints"), round, &model)?;
        let pause = self.config.danger_pause_at;
        danger_pause(pause, round, PausePhase::CheckpointWritten).await;
        let report = RoundReport {
            round,
            participants: gathered.participants,
            dropped: gathered.dropped,
            privacy: gathered
                .privacy
                .iter()
                .map(|(n, p)| (n.clone(), p.epsilon, p.delta))
                .collect(),
            start_model_evaluation: evaluation,
            fairness,
            model_hash: model.hash().to_hex(),
            seconds: started.elapsed().as_secs_f64(),
        };
        // The audit of the round's starting model goes into the chain before the round counts
        // as completed: a crash in between re-runs the round, and the chain skips the repeat. A
        // round off the evaluation schedule has nothing to audit.
        if layout.evaluate {
            let start_model = self.model.clone();
            self.write_report(
                round - 1,
                &start_model,
                &report.participants,
                &gathered.privacy,
                report.start_model_evaluation.clone(),
                report.fairness.clone(),
            )?;
        }
        danger_pause(pause, round, PausePhase::ReportWritten).await;
        lock(&self.store).complete_round(&CompletedRound {
            round,
            model_hash: model.hash(),
            checkpoint_path: path.clone(),
            participants: report.participants.clone(),
            metrics: serde_json::to_value(&report).unwrap_or_default(),
            optimizer_state: Some(optimizer_state),
            finished_at_ms: now_ms(),
        })?;
        danger_pause(pause, round, PausePhase::RoundCompleted).await;
        match &report.start_model_evaluation {
            Some(m) => info!(
                nodes = report.participants.len(),
                examples = m.examples,
                auc = m.auc.unwrap_or(f64::NAN),
                accuracy = m.accuracy,
                loss = m.loss,
                seconds = report.seconds,
                "round applied (metrics: model of round {} on pooled held-out data)",
                round - 1
            ),
            None => info!(
                nodes = report.participants.len(),
                seconds = report.seconds,
                "round applied"
            ),
        }
        self.model = model;
        self.round = round;
        Ok((report, path))
    }

    /// Evaluates the final model on every node's held-out split.
    async fn final_evaluation(
        &mut self,
        standardization: &Standardization,
    ) -> Result<(Option<EvalMetrics>, Vec<AttributeAudit>), CoordinatorError> {
        let round = self.round + 1;
        let span = info_span!("final_evaluation", model_round = self.round);
        async {
            for attempt in 1..=self.config.task.round_attempts {
                danger_pause(self.config.danger_pause_at, round, PausePhase::RoundStarted).await;
                match self
                    .round_exchange(round, attempt, false, standardization)
                    .await
                {
                    Ok((gathered, layout)) => {
                        let totals = layout.decode(&gathered.sum);
                        let metrics = totals
                            .as_ref()
                            .and_then(|t| t.eval.as_ref())
                            .and_then(EvalCounts::metrics);
                        let fairness = totals
                            .map(|t| audit::audit(&self.schema, &t.groups, &self.config.fairness))
                            .unwrap_or_default();
                        audit::log(&fairness);
                        lock(&self.store)
                            .put_json(FINAL_EVALUATION_KEY, &(self.round, &metrics, &fairness))?;
                        let model = self.model.clone();
                        let path = self.write_report(self.round, &model, &gathered.participants, &gathered.privacy, metrics.clone(), fairness.clone())?;
                        danger_pause(self.config.danger_pause_at, round, PausePhase::ReportWritten).await;
                        if let Some(path) = path {
                            info!(report = %path.display(), page = %self.reports.page_path().display(), "audit report written");
                        }
                        if let Some(m) = &metrics {
                            info!(
                                nodes = gathered.participants.len(),
                                examples = m.examples,
                                auc = m.auc.unwrap_or(f64::NAN),
                                accuracy = m.accuracy,
                                loss = m.loss,
                                "final model evaluated on pooled held-out data"
                            );
                        }
                        return Ok((metrics, fairness));
                    }
                    Err(reason) => {
                        warn!(attempt, %reason, "final evaluation failed");
                        retry_pause(attempt).await;
                    }
                }
            }
            Ok((None, Vec::new()))
        }
        .instrument(span)
        .await
    }

    /// Appends the signed audit report of the model of `model_round` to the chain.
    fn write_report(
        &mut self,
        model_round: u64,
        model: &Model,
        participants: &[String],
        privacy: &[(String, PrivacySpent)],
        evaluation: Option<EvalMetrics>,
        fairness: Vec<AttributeAudit>,
    ) -> Result<Option<PathBuf>, CoordinatorError> {
        let checkpoint = self
            .config
            .data_dir
            .join("checkpoints")
            .join(checkpoint_file_name(model_round));
        let checkpoint_sha256 = std::fs::read(&checkpoint)
            .ok()
            .map(|bytes| file_sha256(&bytes));
        let report = AuditReport {
            format: REPORT_FORMAT.to_owned(),
            round: model_round,
            created_at_ms: now_ms(),
            model_sha256: model.hash().to_hex(),
            checkpoint_sha256,
            participants: participants.to_vec(),
            absent_members: self
                .members
                .iter()
                .filter(|member| !participants.contains(member))
                .cloned()
                .collect(),
            privacy: privacy
                .iter()
                .map(|(node, p)| NodePrivacy {
                    node: node.clone(),
                    epsilon: p.epsilon,
                    delta: p.delta,
                })
                .collect(),
            evaluation,
            approved: fairness.iter().all(|a| a.policy.approved),
            fairness,
            previous_report_sha256: None,
        };
        Ok(self.reports.append(report)?)
    }

    /// Tells every connected node that training is over.
    async fn finish(&self) {
        let message = Message::Finished(Finished {
            session: self.session,
            round: self.round,
            model_hash: self.model.hash(),
        });
        let mut tasks = JoinSet::new();
        for node in self.registry.connected() {
            let message = message.clone();
            tasks.spawn(async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    exchange::request(&node, &message),
                )
                .await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Checks that an answer is the expected contribution and returns its values.
fn check_contribution(
    answer: Message,
    session: u64,
    round: u64,
    kind: ContributionKind,
    len: usize,
) -> Result<Contribution, ExchangeError> {
    let contribution: Contribution = match answer {
        Message::Contribution(c) => c,
        Message::Declined(d) => return Err(ExchangeError::Declined(d.reason)),
        Message::Refused(r) => return Err(ExchangeError::Refused(r.reason)),
        other => {
            return Err(ExchangeError::Unexpected {
                got: other.kind(),
                expected: "contribution",
            });
        }
    };
    let reject = |reason| Err(ExchangeError::Rejected(reason));
    if contribution.session != session {
        return reject(RefusalReason::WrongSession {
            got: contribution.session,
            expected: session,
        });
    }
    if contribution.round != round {
        return reject(RefusalReason::WrongRound {
            got: contribution.round,
            expected: round,
        });
    }
    if contribution.kind != kind || contribution.values.len() != len {
        return reject(RefusalReason::BadContribution {
            detail: format!(
                "{:?} of {} values, expected {kind:?} of {len}",
                contribution.kind,
                contribution.values.len()
            ),
        });
    }
    // Sums of squares lose too much in f32; round vectors may come at either precision.
    if kind == ContributionKind::Stats && matches!(contribution.values, PlainFigures::Single(_)) {
        return reject(RefusalReason::BadContribution {
            detail: "statistics must be sent as f64, not f32".into(),
        });
    }
    if let Some(i) = contribution.values.first_non_finite() {
        return reject(RefusalReason::BadContribution {
            detail: format!("value {i} is not finite"),
        });
    }
    Ok(contribution)
}

/// Test-only fault injection (`danger_pause_at`): at the configured point, says so on standard
/// error and waits forever, so that a test can kill the process exactly there.
async fn danger_pause(at: Option<PausePoint>, round: u64, phase: PausePhase) {
    if at != Some(PausePoint { round, phase }) {
        return;
    }
    warn!(round, %phase, "pausing on purpose (danger_pause_at)");
    eprintln!("DANGER: paused at round {round} phase {phase}");
    std::future::pending::<()>().await;
}

/// Waits a little longer after each failed attempt, so nodes that are still connecting can join.
async fn retry_pause(attempt: u32) {
    tokio::time::sleep(std::time::Duration::from_millis(500) * 2u32.saturating_pow(attempt.min(5)))
        .await;
}

fn rejected(error: SecAggError) -> ExchangeError {
    ExchangeError::SecureAggregation(error.to_string())
}

fn unexpected(message: Message, expected: &'static str) -> ExchangeError {
    match message {
        Message::Declined(d) => ExchangeError::Declined(d.reason),
        Message::Refused(r) => ExchangeError::Refused(r.reason),
        other => ExchangeError::Unexpected {
            got: other.kind(),
            expected,
        },
    }
}

/// Public randomness from the OS CSPRNG (the neighbour graph's seed).
fn random_bytes() -> [u8; 32] {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // Only the graph's shape depends on it; a fixed graph is still correct and private.
        bytes = [7; 32];
    }
    bytes
}

/// Adds checked figures into the round's `f64` sum, which starts empty.
fn add_into(sum: &mut Vec<f64>, values: &PlainFigures) {
    if sum.is_empty() {
        sum.resize(values.len(), 0.0);
    }
    values.add_to(sum);
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random session identifier from the OS CSPRNG.
fn random_session() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    // The OS CSPRNG failing is unrecoverable; fall back to the clock only to stay distinct.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return now_ms() as u64;
    }
    u64::from_le_bytes(bytes)
}

/// Why a round could not be completed (it is restarted).
#[derive(Debug, thiserror::Error)]
enum RoundFailure {
    #[error("secure aggregation aborted: {0}")]
    SecureAggregation(#[from] SecAggError),
    #[error("only {have} nodes connected, {need} needed")]
    TooFewNodes { have: usize, need: usize },
    #[error("only {have} nodes answered before the deadline, {need} needed")]
    TooFewAnswers { have: usize, need: usize },
    #[error(
        "the privacy budget of {nodes:?} is spent: fewer than the {need} nodes needed can train"
    )]
    BudgetSpent { nodes: Vec<String>, need: usize },
    #[error(
        "the hospitals declare {declared} training examples, their statistics counted {counted} \
         (give or take {tolerance})"
    )]
    ExampleCountMismatch {
        declared: f64,
        counted: u64,
        tolerance: f64,
    },
    #[error(
        "the held-out counts were summed over {before:?}; the hospitals now are {now:?}, and \
         a node sends exact counts into one sum only"
    )]
    EvaluationParticipants {
        before: Vec<String>,
        now: Vec<String>,
    },
    #[error("state store: {0}")]
    Store(String),
    #[error("the distributed-DP update cannot be decoded: {0}")]
    DistributedDecode(#[from] DdpError),
    #[error("the distributed-DP update cannot be averaged: {0}")]
    DistributedAverage(#[from] StrategyError),
}

/// Why the coordinator stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The schema file is invalid.
    #[error("schema {}: {source}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: SchemaError,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The server optimiser refused the update.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The model does not fit its architecture.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The statistics could not be turned into a standardisation.
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// The endpoint could not be set up.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The state store and the checkpoints disagree.
    #[error("state does not match the checkpoints: {0}")]
    StateMismatch(String),
    /// A round failed every attempt.
    #[error("round {round} failed every attempt; see the log for each node's reason")]
    GaveUp {
        /// The round.
        round: u64,
    },
    /// An audit report could not be written.
    #[error(transparent)]
    Reports(#[from] ReportWriteError),
    /// The coordinator's key cannot sign reports.
    #[error("the coordinator's key cannot sign audit reports: {0}")]
    SigningKey(#[from] medfed_certs::CertError),
    /// The CA certificate or CRL cannot be used to check the nodes' signatures.
    #[error("cannot check the nodes' secure-aggregation signatures: {source}")]
    PeerVerifier {
        /// Cause.
        source: medfed_certs::CertError,
    },
    /// Distributed DP cannot start: its configuration is not usable for the model, or the
    /// statistics round left no pooled example count to divide by.
    #[error("distributed DP cannot start: {0}")]
    DistributedDp(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// The task manifest cannot be made, signed or written.
    #[error("task manifest: {0}")]
    Manifest(#[from] ManifestBuildError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contribution(kind: ContributionKind, values: PlainFigures) -> Message {
        Message::Contribution(Contribution {
            session: 7,
            round: 2,
            kind,
            values,
            privacy: None,
        })
    }

    /// The detail of a `BadContribution` rejection.
    fn rejection(result: Result<Contribution, ExchangeError>) -> String {
        match result {
            Err(ExchangeError::Rejected(RefusalReason::BadContribution { detail })) => detail,
            other => panic!("expected a bad-contribution rejection, got {other:?}"),
        }
    }

    #[test]
    fn round_vectors_are_accepted_at_either_precision_and_summed_in_f64() {
        let mut sum = Vec::new();
        for values in [
            PlainFigures::Single(vec![1.0, 0.5, f32::MAX]),
            PlainFigures::Double(vec![2.0, 0.25, 1.0]),
            PlainFigures::Single(vec![3.0, 0.125, f32::MAX]),
        ] {
            let message = contribution(ContributionKind::Round, values);
            let checked = check_contribution(message, 7, 2, ContributionKind::Round, 3).unwrap();
            add_into(&mut sum, &checked.values);
        }
        // Twice f32::MAX overflows f32, not the f64 sum.
        assert_eq!(sum, vec![6.0, 0.875, 2.0 * f64::from(f32::MAX) + 1.0]);
    }

    #[test]
    fn statistics_sent_as_f32_are_refused() {
        let stats = |values| contribution(ContributionKind::Stats, values);
        let detail = rejection(check_contribution(
            stats(PlainFigures::Single(vec![4.0, 2.0, 1.0])),
            7,
            2,
            ContributionKind::Stats,
            3,
        ));
        assert!(
            detail.contains("statistics must be sent as f64"),
            "{detail}"
        );
        let exact = PlainFigures::Double(vec![4.0, 2.0, 1.0]);
        let checked =
            check_contribution(stats(exact.clone()), 7, 2, ContributionKind::Stats, 3).unwrap();
        assert_eq!(checked.values, exact);
    }

    #[test]
    fn non_finite_or_misshapen_figures_are_refused_at_either_precision() {
        let round = |values| {
            rejection(check_contribution(
                contribution(ContributionKind::Round, values),
                7,
                2,
                ContributionKind::Round,
                3,
            ))
        };
        for values in [
            PlainFigures::Single(vec![1.0, f32::INFINITY, 0.0]),
            PlainFigures::Single(vec![1.0, f32::NAN, 0.0]),
            PlainFigures::Double(vec![1.0, f64::NEG_INFINITY, 0.0]),
        ] {
            let detail = round(values);
            assert_eq!(detail, "value 1 is not finite");
        }
        let detail = round(PlainFigures::Single(vec![1.0, 2.0]));
        assert!(detail.contains("of 2 values"), "{detail}");
    }
}
