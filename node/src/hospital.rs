//! What a node does with each request: the hospital-side rules, apart from the network.
//!
//! [`Hospital`] holds the node's data, the model it was sent and what it has answered in the
//! coordinator's current session. It answers the coordinator's requests, refusing those from
//! another session or round and replays of a round it already answered.

use std::collections::HashSet;

use medfed_protocol::contribution::{LocalUpdate, RoundLayout, RoundResult};
use medfed_protocol::evaluation::{EvalCounts, EvalMetrics};
use medfed_protocol::messages::{
    Contribution, ContributionKind, Message, ModelReceived, RefusalReason, Refused, RoundStart,
    StatsRequest,
};
use medfed_protocol::model::{Model, ModelError, ModelHash, ModelKind, ModelSpec};
use medfed_protocol::schema::Schema;
use medfed_protocol::stats::{Standardization, StatsError, stats_contribution};
use medfed_protocol::task::TrainingPlan;

use crate::data::Dataset;
use crate::examples::Examples;
use crate::progress::Progress;
use crate::trainer::{TrainError, Trainer};

/// A hospital's node: its data, its model and its session bookkeeping.
pub struct Hospital {
    /// The consortium schema the data follows.
    schema: Schema,
    /// Training split, not standardised.
    train: Dataset,
    /// Held-out split, not standardised.
    held_out: Dataset,
    /// Local computation.
    trainer: Box<dyn Trainer>,
    /// The model last received from the coordinator.
    model: Option<Model>,
    /// The coordinator session whose requests are answered.
    session: Option<u64>,
    /// Rounds answered in the current session: a second request for one is a replay.
    answered: HashSet<u64>,
}

impl Hospital {
    /// A node over its two data splits.
    pub fn new(
        schema: Schema,
        train: Dataset,
        held_out: Dataset,
        trainer: Box<dyn Trainer>,
    ) -> Self {
        Self {
            schema,
            train,
            held_out,
            trainer,
            model: None,
            session: None,
            answered: HashSet::new(),
        }
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

    /// Enters a coordinator session (after `Welcome`). A new session — a restarted
    /// coordinator — starts a fresh record of answered rounds.
    pub fn enter_session(&mut self, session: u64) {
        if self.session != Some(session) {
            self.session = Some(session);
            self.answered.clear();
        }
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

    /// Answers a statistics request with this node's count, sums and sums of squares.
    pub fn handle_stats(&mut self, request: &StatsRequest) -> Message {
        if let Some(refused) = self.session_refusal(request.session, request.round) {
            return refused;
        }
        let examples = &self.train.examples;
        match stats_contribution(&examples.features, examples.num_features) {
            Ok(values) => Message::Contribution(Contribution {
                session: request.session,
                round: request.round,
                kind: ContributionKind::Stats,
                values,
            }),
            Err(e) => decline(
                request.session,
                request.round,
                format!("statistics failed: {e}"),
            ),
        }
    }

    /// Stores a model that arrived whole and checked out.
    pub fn accept_model(&mut self, model: Model, session: u64, round: u64) -> Message {
        let hash = model.hash();
        self.model = Some(model);
        Message::ModelReceived(ModelReceived {
            session,
            round,
            hash,
        })
    }

    /// Answers a round: evaluates the round's model on the held-out split and, when asked,
    /// trains from it and returns the weighted update.
    pub fn handle_round(&mut self, start: &RoundStart) -> Message {
        let (session, round) = (start.session, start.round);
        if let Some(refused) = self.session_refusal(session, round) {
            return refused;
        }
        if self.answered.contains(&round) {
            return refusal(session, round, RefusalReason::Replay { round });
        }
        let Some(model) = self.model.as_ref().filter(|m| m.hash() == start.model_hash) else {
            return refusal(
                session,
                round,
                RefusalReason::BadModel {
                    detail: format!("this node does not hold model {}", start.model_hash),
                },
            );
        };
        if start.standardization.num_features() != self.schema.num_features() {
            return refusal(
                session,
                round,
                RefusalReason::BadContribution {
                    detail: "standardisation does not fit the schema".into(),
                },
            );
        }
        let mut held_out = self.held_out.examples.clone();
        start.standardization.apply(&mut held_out.features);
        let result = evaluate_and_train(
            self.trainer.as_mut(),
            model,
            &held_out,
            start,
            &self.train.examples,
        );
        let layout = RoundLayout {
            params: model.params.len(),
            train: start.train,
        };
        match result {
            Ok(LocalOutcome { eval, trained }) => {
                let update = trained.as_ref().map(|(params, weight)| LocalUpdate {
                    start: &model.params,
                    trained: params,
                    weight: *weight,
                });
                match layout.encode(&RoundResult { eval, update }) {
                    Some(values) => {
                        self.answered.insert(round);
                        Message::Contribution(Contribution {
                            session,
                            round,
                            kind: ContributionKind::Round,
                            values,
                        })
                    }
                    None => decline(
                        session,
                        round,
                        "local result does not fit the round layout".into(),
                    ),
                }
            }
            Err(e) => decline(session, round, format!("local computation failed: {e}")),
        }
    }
}

/// A node's local result for one round.
struct LocalOutcome {
    /// Evaluation counts of the round's model on the held-out split.
    eval: EvalCounts,
    /// Trained parameters and their weight (the number of training examples), when training.
    trained: Option<(Vec<f32>, f64)>,
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
        let sums = stats_contribution(&train.features, train.num_features)?;
        let standardization = Standardization::from_summed_stats(&self.schema, &sums)?;
        let spec = ModelSpec {
            kind,
            input_dim: self.schema.num_features(),
        };
        let mut model = Model::new(spec.clone(), spec.initial_parameters(seed))?;
        let (mut train, mut held_out) = (train.clone(), self.held_out.examples.clone());
        standardization.apply(&mut train.features);
        standardization.apply(&mut held_out.features);
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

/// Evaluation counts of `model` on the (standardised) held-out split, and, when the round
/// trains, the locally trained parameters with their weight.
fn evaluate_and_train(
    trainer: &mut dyn Trainer,
    model: &Model,
    held_out: &Examples,
    start: &RoundStart,
    train: &Examples,
) -> Result<LocalOutcome, TrainError> {
    let eval = if held_out.is_empty() {
        EvalCounts::zero()
    } else {
        let scores = trainer.predict(&model.spec, &model.params, held_out)?;
        EvalCounts::from_predictions(&scores, &held_out.labels)
    };
    if !start.train {
        return Ok(LocalOutcome {
            eval,
            trained: None,
        });
    }
    let mut train = train.clone();
    start.standardization.apply(&mut train.features);
    let mut progress = Progress::new(start.round);
    let outcome = trainer.train(&model.spec, &model.params, &train, &start.plan, &mut |p| {
        progress.update(&p)
    });
    progress.finish();
    let outcome = outcome?;
    Ok(LocalOutcome {
        eval,
        trained: Some((outcome.params, train.len() as f64)),
    })
}

fn refusal(session: u64, round: u64, reason: RefusalReason) -> Message {
    Message::Refused(Refused {
        session,
        round,
        reason,
    })
}

fn decline(session: u64, round: u64, reason: String) -> Message {
    Message::Declined(medfed_protocol::messages::Declined {
        session,
        round,
        reason,
    })
}
