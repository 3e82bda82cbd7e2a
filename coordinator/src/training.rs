//! The coordinator's training loop: federated statistics, then training rounds, then a final
//! evaluation, each driven as parallel request/answer exchanges with the connected nodes.
//!
//! A round is applied whole or not at all: the new model's checkpoint is written atomically, and
//! only then is the round marked completed in SQLite, in one transaction with the optimiser
//! state. A coordinator restarted after a crash resumes after the last completed round.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use medfed_certs::channel::{ChannelError, server_endpoint};
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::evaluation::EvalMetrics;
use medfed_protocol::messages::{
    Contribution, ContributionKind, Finished, Message, RefusalReason, RoundStart, StatsRequest,
};
use medfed_protocol::model::{Model, ModelError, ModelSpec};
use medfed_protocol::schema::{Schema, SchemaError};
use medfed_protocol::stats::{FederatedSummary, Standardization, StatsError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::checkpoint::{CheckpointError, read_checkpoint, write_checkpoint};
use crate::config::CoordinatorConfig;
use crate::exchange::{self, ExchangeError};
use crate::listener::{self, Admission};
use crate::registry::Registry;
use crate::store::{CompletedRound, Store, StoreError};
use crate::strategy::{ServerOptimizer, StrategyError, build_optimizer, mean_delta};

/// Key of the federated standardisation in the state store.
const STANDARDIZATION_KEY: &str = "standardization";
/// Key of the summary of the statistics round.
const SUMMARY_KEY: &str = "federated_summary";
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
    /// The final model.
    pub final_model: Model,
    /// Path of the final model's checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// The last completed round.
    pub last_round: u64,
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
        None => (
            0,
            Model::new(spec.clone(), spec.initial_parameters(config.task.seed))?,
        ),
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
    let session = random_session();
    let admission = Arc::new(Admission {
        session,
        schema_digest: schema.digest(),
        model_spec: spec,
        rounds: config.task.rounds,
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
    let trainer = Trainer {
        config,
        schema,
        store,
        registry,
        session,
        model,
        optimizer,
        round,
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
    schema: Schema,
    store: Arc<Mutex<Store>>,
    registry: Arc<Registry>,
    session: u64,
    model: Model,
    /// The server optimiser (behind a mutex only so the trainer can be shared across tasks).
    optimizer: Mutex<Box<dyn ServerOptimizer>>,
    /// Last completed round.
    round: u64,
}

/// Sum of the contributions of one exchange round.
struct Gathered {
    sum: Vec<f64>,
    participants: Vec<String>,
    dropped: Vec<(String, String)>,
}

impl Trainer {
    async fn run(mut self) -> Result<TrainingReport, CoordinatorError> {
        let standardization = self.standardization().await?;
        let mut reports = Vec::new();
        let mut checkpoint = None;
        while self.round < self.config.task.rounds {
            let round = self.round + 1;
            let (report, path) = self.train_round(round, &standardization).await?;
            reports.push(report);
            checkpoint = Some(path);
        }
        let final_evaluation = self.final_evaluation(&standardization).await?;
        self.finish().await;
        Ok(TrainingReport {
            rounds: reports,
            final_evaluation,
            final_model: self.model,
            checkpoint,
            last_round: self.round,
        })
    }

    /// The consortium's standardisation: from the state store, or from a statistics round.
    async fn standardization(&mut self) -> Result<Standardization, CoordinatorError> {
        if let Some(known) = lock(&self.store).get_json::<Standardization>(STANDARDIZATION_KEY)? {
            return Ok(known);
        }
        let span = info_span!("statistics");
        async {
            let request = Message::StatsRequest(StatsRequest { session: self.session, round: 0 });
            let expected_len = self.schema.stats_len();
            let session = self.session;
            for attempt in 1..=self.config.task.round_attempts {
                let gathered = self
                    .gather(None, request.clone(), move |answer| {
                        check_contribution(answer, session, 0, ContributionKind::Stats, expected_len)
                    })
                    .await;
                match gathered {
                    Ok(g) => {
                        let standardization = Standardization::from_summed_stats(&self.schema, &g.sum)?;
                        let summary = FederatedSummary::from_summed_stats(&self.schema, &g.sum)?;
                        {
                            let store = lock(&self.store);
                            store.put_json(STANDARDIZATION_KEY, &standardization)?;
                            store.put_json(SUMMARY_KEY, &summary)?;
                        }
                        info!(nodes = g.participants.len(), summary = %serde_json::to_string(&summary).unwrap_or_default(), "federated statistics computed");
                        return Ok(standardization);
                    }
                    Err(e) => warn!(attempt, error = %e, "statistics round failed"),
                }
            }
            Err(CoordinatorError::GaveUp { round: 0 })
        }
        .instrument(span)
        .await
    }

    /// Runs round `round` until it is applied or the attempts run out.
    async fn train_round(
        &mut self,
        round: u64,
        standardization: &Standardization,
    ) -> Result<(RoundReport, PathBuf), CoordinatorError> {
        let span = info_span!("round", round);
        async {
            for attempt in 1..=self.config.task.round_attempts {
                let started = Instant::now();
                lock(&self.store).begin_round(round, &self.model.hash(), now_ms())?;
                match self.round_exchange(round, true, standardization).await {
                    Ok((gathered, layout)) => {
                        let (report, path) = self.apply(round, gathered, layout, started)?;
                        return Ok((report, path));
                    }
                    Err(reason) => {
                        warn!(attempt, %reason, "round failed; it will be restarted");
                        lock(&self.store).abort_round(round, &reason.to_string(), now_ms())?;
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
        train: bool,
        standardization: &Standardization,
    ) -> Result<(Gathered, RoundLayout), RoundFailure> {
        let layout = RoundLayout {
            params: self.model.params.len(),
            train,
        };
        let request = Message::RoundStart(RoundStart {
            session: self.session,
            round,
            model_hash: self.model.hash(),
            train,
            plan: self.config.task.plan(round),
            standardization: standardization.clone(),
        });
        let session = self.session;
        let model = Arc::new(self.model.clone());
        let gathered = self
            .gather(Some((model, round)), request, move |answer| {
                check_contribution(
                    answer,
                    session,
                    round,
                    ContributionKind::Round,
                    layout.len(),
                )
            })
            .await?;
        Ok((gathered, layout))
    }

    /// Sends `request` to every connected node in parallel (pushing `model` first to nodes that
    /// lack it) and sums the answers that pass `check` before the round deadline.
    async fn gather(
        &self,
        model: Option<(Arc<Model>, u64)>,
        request: Message,
        check: impl Fn(Message) -> Result<Vec<f64>, ExchangeError> + Clone + Send + Sync + 'static,
    ) -> Result<Gathered, RoundFailure> {
        let min = self.config.task.min_nodes;
        let nodes = self
            .registry
            .wait_for(min, self.config.task.wait_for_nodes())
            .await;
        if nodes.len() < min {
            return Err(RoundFailure::TooFewNodes {
                have: nodes.len(),
                need: min,
            });
        }
        let deadline = tokio::time::Instant::now() + self.config.task.round_deadline();
        let session = self.session;
        let mut tasks = JoinSet::new();
        for node in nodes {
            let (request, check, model) = (request.clone(), check.clone(), model.clone());
            tasks.spawn(async move {
                let exchange = async {
                    if let Some((model, round)) = &model
                        && node.held_model() != Some(model.hash())
                    {
                        exchange::push_model(&node, model, session, *round).await?;
                    }
                    check(exchange::request(&node, &request).await?)
                };
                let result = tokio::time::timeout_at(deadline, exchange)
                    .await
                    .unwrap_or(Err(ExchangeError::Deadline));
                (node, result)
            });
        }
        let mut gathered = Gathered {
            sum: Vec::new(),
            participants: Vec::new(),
            dropped: Vec::new(),
        };
        while let Some(joined) = tasks.join_next().await {
            let Ok((node, result)) = joined else { continue };
            match result {
                Ok(values) => {
                    add_into(&mut gathered.sum, &values);
                    gathered.participants.push(node.identity.clone());
                }
                Err(e) => {
                    warn!(node = %node.identity, error = %e, "node left out of the round");
                    gathered
                        .dropped
                        .push((node.identity.clone(), e.to_string()));
                }
            }
        }
        gathered.participants.sort();
        if gathered.participants.len() < min {
            return Err(RoundFailure::TooFewAnswers {
                have: gathered.participants.len(),
                need: min,
            });
        }
        Ok(gathered)
    }

    /// Applies a round's summed update, checkpoints the model and records the round.
    fn apply(
        &mut self,
        round: u64,
        gathered: Gathered,
        layout: RoundLayout,
        started: Instant,
    ) -> Result<(RoundReport, PathBuf), CoordinatorError> {
        let totals = layout
            .decode(&gathered.sum)
            .ok_or_else(|| CoordinatorError::Internal("sum length".into()))?;
        let evaluation = totals.eval.metrics();
        let (delta, weight) = totals
            .update
            .ok_or_else(|| CoordinatorError::Internal("no update block".into()))?;
        let mean = mean_delta(&delta, weight)?;
        let mut params = self.model.params.clone();
        let optimizer = self
            .optimizer
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        optimizer.try_apply(&mut params, &mean)?;
        let optimizer_state = optimizer.state();
        let model = Model::new(self.model.spec.clone(), params)?;
        let path = write_checkpoint(&self.config.data_dir.join("checkpoints"), round, &model)?;
        let report = RoundReport {
            round,
            participants: gathered.participants,
            dropped: gathered.dropped,
            start_model_evaluation: evaluation,
            model_hash: model.hash().to_hex(),
            seconds: started.elapsed().as_secs_f64(),
        };
        lock(&self.store).complete_round(&CompletedRound {
            round,
            model_hash: model.hash(),
            checkpoint_path: path.clone(),
            participants: report.participants.clone(),
            metrics: serde_json::to_value(&report).unwrap_or_default(),
            optimizer_state: Some(optimizer_state),
            finished_at_ms: now_ms(),
        })?;
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
            None => info!(nodes = report.participants.len(), "round applied"),
        }
        self.model = model;
        self.round = round;
        Ok((report, path))
    }

    /// Evaluates the final model on every node's held-out split.
    async fn final_evaluation(
        &mut self,
        standardization: &Standardization,
    ) -> Result<Option<EvalMetrics>, CoordinatorError> {
        let round = self.round + 1;
        let span = info_span!("final_evaluation", model_round = self.round);
        async {
            for attempt in 1..=self.config.task.round_attempts {
                match self.round_exchange(round, false, standardization).await {
                    Ok((gathered, layout)) => {
                        let metrics = layout.decode(&gathered.sum).and_then(|t| t.eval.metrics());
                        lock(&self.store)
                            .put_json(FINAL_EVALUATION_KEY, &(self.round, &metrics))?;
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
                        return Ok(metrics);
                    }
                    Err(reason) => warn!(attempt, %reason, "final evaluation failed"),
                }
            }
            Ok(None)
        }
        .instrument(span)
        .await
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
) -> Result<Vec<f64>, ExchangeError> {
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
    if let Some(i) = contribution.values.iter().position(|v| !v.is_finite()) {
        return reject(RefusalReason::BadContribution {
            detail: format!("value {i} is not finite"),
        });
    }
    Ok(contribution.values)
}

/// Element-wise `sum += values`, starting from an empty sum.
fn add_into(sum: &mut Vec<f64>, values: &[f64]) {
    if sum.is_empty() {
        sum.extend_from_slice(values);
    } else {
        for (s, v) in sum.iter_mut().zip(values) {
            *s += v;
        }
    }
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
    #[error("only {have} nodes connected, {need} needed")]
    TooFewNodes { have: usize, need: usize },
    #[error("only {have} nodes answered before the deadline, {need} needed")]
    TooFewAnswers { have: usize, need: usize },
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
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}
