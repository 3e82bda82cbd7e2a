//! Scoring patients with a consortium model file, on site (`medfed-node predict`).
//!
//! ```text
//!  model file ─▶ schema, standardisation, threshold, network   (medfed_audit::model_file)
//!  patients.csv ─▶ read_rows(schema) ─▶ kept rows ─▶ standardise ─▶ network ─▶ sigmoid
//!                                   └─▶ bad rows ─▶ errors file (row, column, cell, reason)
//!  scores file: row, id, score, class at the threshold [, label]
//! ```
//!
//! Rows are read and encoded by the same reader as training ([`crate::data::read_rows`]),
//! imputed and standardised by the same function (`Standardization::standardize`), and scored by the trainer's `predict` — libtorch's forward
//! pass, the one the node's evaluation uses, so that the scores of the held-out rows reproduce
//! the consortium's evaluation bit for bit — or, in a build without libtorch, by the model's own
//! forward pass ([`Model::probabilities`], within about 1e-7 of libtorch). Nothing here touches
//! the network, the ledger or the egress log: scoring releases nothing.

use std::path::{Path, PathBuf};

use medfed_audit::model_file::{ModelFile, Scoring};
use medfed_protocol::evaluation::{EVAL_SCORE_BINS, EvalCounts, EvalMetrics};
use medfed_protocol::model::{Model, ModelKind};

use crate::data::{Dataset, RowProblem};
use crate::trainer::{TrainError, Trainer};

/// What scoring a set of rows gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The probability of the positive class for each kept row, in file order.
    pub scores: Vec<f32>,
    /// How many of them are flagged positive at the model's threshold.
    pub flagged: usize,
    /// The metrics of the scores against the rows' labels, when the file has labels (the same
    /// counts and formulas as the consortium's evaluation).
    pub metrics: Option<EvalMetrics>,
}

/// Scores the rows of `dataset` (encoded by the model's schema, not standardised) with the
/// model file's model and scoring.
pub fn score(
    model: &Model,
    scoring: &Scoring,
    dataset: &Dataset,
    trainer: &mut dyn Trainer,
) -> Result<Scored, PredictError> {
    let mut examples = dataset.examples.clone();
    scoring
        .standardization
        .standardize(&scoring.schema, &mut examples.features)?;
    let scores = if examples.is_empty() {
        Vec::new()
    } else {
        match trainer.predict(&model.spec, &model.params, &examples) {
            Err(TrainError::Unavailable)
                if matches!(
                    model.spec.kind,
                    ModelKind::Layers(_) | ModelKind::TorchScript(_)
                ) =>
            {
                return Err(PredictError::NeedsLibtorch);
            }
            Err(TrainError::Unavailable) => {
                model
                    .probabilities(&examples.features)
                    .ok_or(PredictError::Width {
                        expected: model.spec.input_dim,
                    })?
            }
            other => other?,
        }
    };
    let threshold = scoring.decision_threshold;
    let flagged = scores.iter().filter(|&&s| threshold.flags(s)).count();
    let metrics = dataset
        .labelled
        .then(|| {
            EvalCounts::from_predictions_at(&scores, &examples.labels, EVAL_SCORE_BINS, threshold)
                .metrics()
        })
        .flatten();
    Ok(Scored {
        scores,
        flagged,
        metrics,
    })
}

/// The scoring a model file carries, or why it cannot score: a checkpoint written before the
/// statistics round (or by a coordinator older than model files) carries none.
pub fn scoring_of<'a>(file: &'a ModelFile, path: &Path) -> Result<&'a Scoring, PredictError> {
    file.scoring
        .as_ref()
        .ok_or_else(|| PredictError::NoScoring {
            path: path.to_owned(),
        })
}

/// Writes the scores file: a header `row[,ID],score,class[,label]`, then one line per kept row
/// (`row` as a spreadsheet numbers it, the id cell when `id_column` names one, the score in the
/// shortest decimal that reads back as the same `f32`, the class 1 or 0 at the threshold, and
/// the label 1 or 0 when the file has labels).
pub fn write_scores(
    path: &Path,
    dataset: &Dataset,
    scored: &Scored,
    scoring: &Scoring,
    id_column: Option<&str>,
) -> Result<(), PredictError> {
    let mut out = csv_writer(path)?;
    let io = |e: csv::Error| PredictError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut header = vec!["row"];
    header.extend(id_column);
    header.extend(["score", "class"]);
    if dataset.labelled {
        header.push("label");
    }
    out.write_record(&header).map_err(io)?;
    let class = |positive: bool| if positive { "1" } else { "0" };
    for (i, score) in scored.scores.iter().enumerate() {
        let mut record = vec![dataset.rows.get(i).map_or_else(String::new, u64::to_string)];
        if id_column.is_some() {
            record.push(dataset.ids.get(i).cloned().unwrap_or_default());
        }
        record.push(score.to_string());
        record.push(class(scoring.decision_threshold.flags(*score)).to_owned());
        if dataset.labelled {
            let label = dataset.examples.labels.get(i).is_some_and(|&l| l >= 0.5);
            record.push(class(label).to_owned());
        }
        out.write_record(&record).map_err(io)?;
    }
    out.flush().map_err(|e| PredictError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Writes the errors file: a header `row,column,value,problem,message`, then one line per
/// problem of a row that was not scored (`problem` a fixed name per kind, for counting;
/// `message` the whole explanation).
pub fn write_problems(path: &Path, problems: &[RowProblem]) -> Result<(), PredictError> {
    let mut out = csv_writer(path)?;
    let io = |e: csv::Error| PredictError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    };
    out.write_record(["row", "column", "value", "problem", "message"])
        .map_err(io)?;
    for problem in problems {
        out.write_record([
            problem.row.to_string(),
            problem.column.clone().unwrap_or_default(),
            problem.raw.clone(),
            problem.reason.kind().to_owned(),
            problem.to_string(),
        ])
        .map_err(io)?;
    }
    out.flush().map_err(|e| PredictError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn csv_writer(path: &Path) -> Result<csv::Writer<std::fs::File>, PredictError> {
    csv::Writer::from_path(path).map_err(|e| PredictError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Why patients could not be scored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PredictError {
    /// The model file carries no scoring.
    #[error(
        "{} carries no schema and standardisation to score with (a checkpoint written before \
         the statistics round, or by an older coordinator); use a later round's checkpoint or \
         the released model.safetensors",
        path.display()
    )]
    NoScoring {
        /// The model file.
        path: PathBuf,
    },
    /// The encoded rows do not fit the model's input width.
    #[error("the encoded rows do not have the model's {expected} features")]
    Width {
        /// The model's input width.
        expected: usize,
    },
    /// A declared architecture, in a build without libtorch, which alone scores one.
    #[error(
        "the model is a declared architecture or a TorchScript module, which only libtorch scores: use a medfed-node built with the `torch` feature (the default)"
    )]
    NeedsLibtorch,
    /// The rows could not be imputed and standardised.
    #[error("cannot standardise the rows: {0}")]
    Standardize(#[from] medfed_protocol::stats::StatsError),
    /// libtorch could not score.
    #[error("scoring failed: {0}")]
    Trainer(#[from] TrainError),
    /// An output file could not be written.
    #[error("cannot write {}: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use medfed_protocol::architecture::{Architecture, LayerSpec, Shape};
    use medfed_protocol::evaluation::DecisionThreshold;
    use medfed_protocol::model::ModelSpec;
    use medfed_protocol::schema::{EXAMPLE_SCHEMA, Schema};
    use medfed_protocol::stats::Standardization;

    use super::*;
    use crate::examples::Examples;
    use crate::trainer::NoTrainer;

    #[test]
    fn a_declared_model_without_libtorch_is_refused_by_name_not_by_width() {
        let schema = Schema::parse(EXAMPLE_SCHEMA).unwrap();
        let width = schema.num_features();
        let architecture = Architecture {
            input: Shape::Features { features: width },
            layers: vec![LayerSpec::Linear { out: 1 }],
        };
        let spec = ModelSpec {
            kind: ModelKind::Layers(Box::new(architecture.check().unwrap())),
            input_dim: width,
        };
        let model = Model::new(spec.clone(), spec.initial_parameters(1)).unwrap();
        let scoring = Scoring::new(
            EXAMPLE_SCHEMA.to_owned(),
            Standardization::identity(width),
            DecisionThreshold::default(),
            &spec,
        )
        .unwrap();
        let dataset = Dataset {
            examples: Examples {
                num_features: width,
                features: vec![0.5; width],
                labels: vec![1.0],
            },
            rows: vec![2],
            ..Dataset::default()
        };
        let refused = score(&model, &scoring, &dataset, &mut NoTrainer).unwrap_err();
        assert!(matches!(refused, PredictError::NeedsLibtorch), "{refused}");
    }
}
