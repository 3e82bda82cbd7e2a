//! The model card of the released model: what it is for, what it was trained and judged on, how
//! well it discriminates and is calibrated, what privacy it cost, the fairness verdict and its
//! limitations, in one JSON file ([`ModelCard`], `model_card.json`) and one self-contained page
//! ([`html::render`], `model_card.html`) beside the signed audit reports.
//!
//! The sections follow the TRIPOD+AI reporting items where they apply (Collins et al., "TRIPOD+AI
//! statement: updated guidance for reporting clinical prediction models that use regression or
//! machine learning methods", BMJ 2024;385:e078378): [`TRIPOD_AI_ITEMS`] maps each item the card
//! covers to its JSON key, and every HTML heading names its item. Items about the study rather
//! than the model (ethics, funding, registration, …) are left to the consortium's own write-up.
//!
//! ```text
//!  coordinator, when training ends:
//!    configuration [model_card] ─┐
//!    schema, statistics summary ─┼─▶ ModelCard ─▶ model_card.json, model_card.html
//!    released model, its report ─┤   (binds the released round, model hash, checkpoint
//!    pooled counts of its round ─┘    SHA-256 and the SHA-256 of the report that judged it)
//!  auditor:  medfed-audit verify --reports … --card model_card.json  (check_against_chain)
//! ```
//!
//! What the card does *not* do: it invents no per-hospital figure. The coordinator only ever
//! holds sums over hospitals, so the data section gives the pooled (possibly noised) counts and
//! says so; the performance intervals ignore evaluation noise (see [`figures`]). The card is
//! bound to the signed chain by the report's SHA-256, [`check_against_chain`] checks every
//! figure it copies from a report, and the coordinator signs the card file with its report key
//! ([`signature`], `model_card.json.sig`) for the text no report carries.

pub mod figures;
pub mod html;
pub mod signature;

use serde::{Deserialize, Serialize};

use medfed_protocol::evaluation::EvalMetrics;
use medfed_protocol::model::{ModelKind, ModelSpec};
use medfed_protocol::report::{AttributeFairness, AuditReport, NodePrivacy};
use medfed_protocol::schema::{ColumnKind, MISSING_LEVEL, MissingMode, Schema};
use medfed_protocol::stats::FederatedSummary;

pub use figures::{Calibration, Intervals, PooledCounts};
pub use signature::{CardSignature, MODEL_CARD_SIGNATURE};

/// The `format` string of every card this module writes and reads.
pub const MODEL_CARD_FORMAT: &str = "medfed-model-card/1";

/// File name of the card's JSON in the reports folder.
pub const MODEL_CARD_JSON: &str = "model_card.json";

/// File name of the card's page in the reports folder.
pub const MODEL_CARD_HTML: &str = "model_card.html";

/// What the card says of per-hospital data figures.
pub const PER_SITE_NOTE: &str = "The coordinator only ever holds sums over hospitals (under \
     secure aggregation it never sees one hospital's figures), so every data figure here is \
     pooled over the hospitals listed; no per-hospital row count is known to it.";

/// The consortium's own words for the card: `[model_card]` in the coordinator's configuration.
///
/// ```toml
/// [model_card]
/// title = "Preterm birth risk at the first antenatal visit"
/// intended_use = "Flag pregnancies for a specialist review at the first visit"
/// population = "Singleton pregnancies booked before 20 weeks at the four clinics"
/// outcome = "Birth before 37 completed weeks"
/// limitations = ["Trained on 2019–2021 bookings only"]
/// developers = "The consortium's data science group"
/// contact = "modelcard@example.org"
/// ```
///
/// Every key is optional; an unknown key is refused. What is left out, the card says was not
/// stated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CardText {
    /// The card's title (TRIPOD+AI 1); by default one from the outcome column.
    pub title: Option<String>,
    /// What the model is for, where in the care pathway and for whom (TRIPOD+AI 3b).
    pub intended_use: Option<String>,
    /// The target population (TRIPOD+AI 3b, 6a–b).
    pub population: Option<String>,
    /// The outcome in words (TRIPOD+AI 8a); the schema's label definition is given beside it.
    pub outcome: Option<String>,
    /// Limitations the consortium states (TRIPOD+AI 26), before the generated ones.
    pub limitations: Vec<String>,
    /// Who developed the model.
    pub developers: Option<String>,
    /// Whom to contact about it.
    pub contact: Option<String>,
}

/// The model card. See the [module docs](self); each field names its TRIPOD+AI items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Always [`MODEL_CARD_FORMAT`].
    pub format: String,
    /// When the card was written, Unix milliseconds.
    pub created_at_ms: i64,
    /// TRIPOD+AI 1: the title.
    pub title: String,
    /// The released model and the report that judged it (TRIPOD+AI 22: which model this is).
    pub released_model: ReleasedModel,
    /// TRIPOD+AI 3b, 8a: intended use, population and outcome.
    pub intended_use: IntendedUse,
    /// TRIPOD+AI 5a, 6a, 10, 11: the data, pooled over the hospitals.
    pub data: DataSummary,
    /// TRIPOD+AI 9a: the predictors, with how a missing value is handled.
    pub predictors: Vec<Predictor>,
    /// TRIPOD+AI 12c, 13, 15, 22: the model and how it was trained.
    pub model: ModelDescription,
    /// The differential-privacy budget each hospital declared spent.
    pub privacy: PrivacySection,
    /// TRIPOD+AI 12e, 23a: pooled held-out performance with 95% intervals; `None` when the
    /// released model has no evaluation.
    pub performance: Option<Performance>,
    /// TRIPOD+AI 12e, 23a: calibration; `None` when the pooled counts of the released model's
    /// evaluation are not known.
    pub calibration: Option<Calibration>,
    /// TRIPOD+AI 14, 23a: the fairness audit of the released model and its verdict.
    pub fairness: FairnessSection,
    /// TRIPOD+AI 26: limitations, the consortium's and the generated ones.
    pub limitations: Vec<Limitation>,
    /// The TRIPOD+AI items the card covers and where ([`TRIPOD_AI_ITEMS`]).
    pub tripod_ai: Vec<TripodItem>,
}

/// Which model the card describes, bound to the signed report chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedModel {
    /// The released model's round.
    pub round: u64,
    /// Lower-case hex of its [`ModelHash`](medfed_protocol::model::ModelHash).
    pub model_sha256: String,
    /// SHA-256 of its round checkpoint file, as its report records it.
    pub checkpoint_sha256: Option<String>,
    /// SHA-256 of the released model file (`model.safetensors`).
    pub model_file_sha256: String,
    /// SHA-256 of the audit report file that judged it; `None` when the model was released
    /// unjudged (its evaluation never completed).
    pub report_sha256: Option<String>,
    /// That report's verdict (`APPROVED`, `NOT APPROVED`, `NOT EVALUATED (…)`), or `UNJUDGED`.
    pub verdict: String,
    /// The rule that chose it (`last`, `lowest_loss`).
    pub release_rule: String,
}

/// TRIPOD+AI 3b and 8a.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntendedUse {
    /// The consortium's statement of intended use.
    pub intended_use: Option<String>,
    /// The target population.
    pub population: Option<String>,
    /// The outcome in the consortium's words.
    pub outcome: Option<String>,
    /// The outcome as the schema defines it: the label column and its values.
    pub outcome_definition: String,
    /// Who developed the model.
    pub developers: Option<String>,
    /// Whom to contact.
    pub contact: Option<String>,
}

/// TRIPOD+AI 5a, 6a, 10, 11: the data behind the standardisation, from the statistics round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSummary {
    /// The hospitals whose statistics were summed.
    pub sites: Vec<String>,
    /// Why there is no per-hospital figure ([`PER_SITE_NOTE`]).
    pub per_site: String,
    /// Training rows over those hospitals (noised when they noise their statistics); `None`
    /// when the summary is not known.
    pub pooled_rows: Option<u64>,
    /// Standard deviation of the noise in each pooled count (0: exact).
    pub count_noise_sd: f64,
    /// Each numeric column's pooled mean, spread and missing count.
    pub numeric: Vec<NumericColumn>,
    /// Each categorical column's pooled level counts and missing count.
    pub categorical: Vec<CategoricalColumn>,
}

/// One numeric column's pooled figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericColumn {
    /// The column.
    pub column: String,
    /// Mean of its (clipped, grid-rounded) values.
    pub mean: f64,
    /// Their population standard deviation.
    pub std: f64,
    /// `refuse`, `level` or `impute`.
    pub missing_mode: String,
    /// Rows whose value is missing (imputed); `None` when missing values are refused at the
    /// hospital and never counted.
    pub missing: Option<u64>,
}

/// One categorical column's pooled figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalColumn {
    /// The column.
    pub column: String,
    /// Its levels (the missing level last when missing is a level).
    pub levels: Vec<String>,
    /// Rows with each level.
    pub counts: Vec<u64>,
    /// `refuse`, `level` or `impute`.
    pub missing_mode: String,
    /// Rows whose value is missing (the missing level's count); `None` when refused.
    pub missing: Option<u64>,
}

/// TRIPOD+AI 9a: one predictor (or audit-only attribute).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predictor {
    /// The column.
    pub name: String,
    /// `numeric [low, high]` or `categorical: a, b, c`.
    pub kind: String,
    /// `refuse`, `level` or `impute`.
    pub missing_mode: String,
    /// Whether it is a model input; `false` for an attribute read only for the audit.
    pub input: bool,
}

/// TRIPOD+AI 12c, 13, 15, 22: the model and its training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDescription {
    /// The layers, for example `Linear(13 → 8), ReLU, Linear(8 → 1), sigmoid`.
    pub architecture: String,
    /// The encoded input features, in order.
    pub input_features: Vec<String>,
    /// Number of parameters.
    pub parameters: usize,
    /// What the model outputs and how it is turned into a class (TRIPOD+AI 15).
    pub output: String,
    /// The decision threshold.
    pub decision_threshold: f64,
    /// Training rounds planned.
    pub rounds_planned: u64,
    /// Training rounds completed.
    pub rounds_completed: u64,
    /// The server optimiser, as configured (JSON).
    pub server_strategy: String,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Local learning rate.
    pub learning_rate: f64,
    /// Local batch size.
    pub batch_size: u32,
    /// Weight of a positive example's loss (TRIPOD+AI 13, class imbalance).
    pub pos_weight: f64,
    /// The training rule's privacy: distributed DP with its parameters, or each hospital's own
    /// local policy.
    pub privacy_mechanism: String,
    /// Whether every figure was summed under secure aggregation.
    pub secure_aggregation: bool,
    /// Bins of the pooled evaluation's score histograms.
    pub score_bins: u32,
}

/// The privacy each hospital declared spent by the end of training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// The round of the last report, whose declarations these are.
    pub as_of_round: Option<u64>,
    /// Each hospital's declared (ε, δ), as the last report records it.
    pub per_site: Vec<NodePrivacy>,
}

/// TRIPOD+AI 12e, 23a: pooled held-out performance of the released model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Performance {
    /// The hospitals whose held-out patients are in the figures.
    pub sites: Vec<String>,
    /// Members whose held-out patients are not.
    pub absent_members: Vec<String>,
    /// The report's pooled evaluation, verbatim.
    pub evaluation: EvalMetrics,
    /// The same figures with 95% intervals; `None` when the pooled counts are not known.
    pub intervals: Option<Intervals>,
    /// What the intervals cover ([`figures::INTERVAL_NOTE`]).
    pub note: String,
}

/// TRIPOD+AI 14: the fairness audit of the released model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairnessSection {
    /// The report's verdict.
    pub verdict: String,
    /// Why: each failing check with its value and limit, or that all passed.
    pub reasons: Vec<String>,
    /// The report's per-attribute audit, verbatim.
    pub attributes: Vec<AttributeFairness>,
}

/// TRIPOD+AI 26: one limitation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limitation {
    /// `consortium` (from the configuration) or `generated` (from the figures).
    pub source: String,
    /// The limitation.
    pub text: String,
}

/// One TRIPOD+AI item the card covers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripodItem {
    /// The item's number, for example `23a`.
    pub item: String,
    /// Its topic.
    pub topic: String,
    /// The card's JSON key that answers it.
    pub section: String,
}

/// The TRIPOD+AI items the card covers: (item, topic, JSON key).
pub const TRIPOD_AI_ITEMS: [(&str, &str, &str); 16] = [
    ("1", "Title", "title"),
    ("3b", "Target population and intended use", "intended_use"),
    ("5a", "Source of data", "data"),
    ("6a", "Setting and number of centres", "data"),
    ("8a", "Outcome", "intended_use"),
    ("9a", "Predictors", "predictors"),
    ("10", "Sample size", "data"),
    ("11", "Missing data", "data"),
    ("12c", "Model type and training", "model"),
    ("12e", "Performance measures", "performance"),
    ("13", "Class imbalance", "model"),
    ("14", "Fairness", "fairness"),
    ("15", "Model output", "model"),
    ("22", "Model specification", "released_model"),
    ("23a", "Model performance with intervals", "performance"),
    ("26", "Limitations", "limitations"),
];

/// Why a card could not be written, read or matched to its reports.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    /// The card's JSON could not be written (a non-finite float).
    #[error("cannot encode the model card: {detail}")]
    Encode {
        /// serde_json's message.
        detail: String,
    },
    /// The bytes are not a card: bad JSON, unknown or missing fields.
    #[error("the model card is malformed: {detail}")]
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// The card's `format` is not [`MODEL_CARD_FORMAT`].
    #[error("the model card has format {found:?}, expected {MODEL_CARD_FORMAT:?}")]
    Format {
        /// The format found.
        found: String,
    },
    /// The card names no report (the model was released unjudged), so nothing binds it.
    #[error("the model card names no audit report: its model was released unjudged")]
    Unjudged,
    /// No report of the chain has the SHA-256 the card names.
    #[error("the model card names report {sha256}, which is not in the chain")]
    UnknownReport {
        /// The SHA-256 the card names.
        sha256: String,
    },
    /// The card's signature names another key than the coordinator's.
    #[error("the model card is signed by {found}, not the coordinator's report key")]
    WrongSigner {
        /// The signer key the signature file names.
        found: String,
    },
    /// The signature does not verify over the card file's bytes: the card was edited.
    #[error("the model card's signature does not verify: the card file was edited")]
    BadSignature,
    /// A figure the card copies from a report differs from the report's.
    #[error("the model card's {field} differs from the report of round {round}")]
    Mismatch {
        /// The card's field.
        field: &'static str,
        /// The report's round.
        round: u64,
    },
}

impl ModelCard {
    /// The card as written to [`MODEL_CARD_JSON`]: pretty JSON and one `\n`.
    pub fn to_json_pretty(&self) -> Result<Vec<u8>, CardError> {
        pretty_json(self)
    }

    /// Reads a card, refusing unknown fields and another format.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CardError> {
        let card: Self = serde_json::from_slice(bytes).map_err(|e| CardError::Malformed {
            detail: e.to_string(),
        })?;
        if card.format != MODEL_CARD_FORMAT {
            return Err(CardError::Format { found: card.format });
        }
        Ok(card)
    }
}

/// The card's title: the consortium's, or one naming the outcome column.
pub fn title(text: &CardText, schema: &Schema) -> String {
    text.title.clone().unwrap_or_else(|| {
        format!(
            "Prediction model for {} (medfed federated model)",
            schema.label().column()
        )
    })
}

/// TRIPOD+AI 3b and 8a from the consortium's text and the schema's label.
pub fn intended_use(text: &CardText, schema: &Schema) -> IntendedUse {
    let label = schema.label();
    IntendedUse {
        intended_use: text.intended_use.clone(),
        population: text.population.clone(),
        outcome: text.outcome.clone(),
        outcome_definition: format!(
            "column `{}`: positive when {}, negative when {}",
            label.column(),
            label.positive().join(" or "),
            label.negative().join(" or ")
        ),
        developers: text.developers.clone(),
        contact: text.contact.clone(),
    }
}

/// TRIPOD+AI 9a: the schema's predictors, then its audit-only attributes.
pub fn predictors(schema: &Schema) -> Vec<Predictor> {
    let describe = |column: &medfed_protocol::schema::Column, input: bool| Predictor {
        name: column.name().to_owned(),
        kind: match column.kind() {
            ColumnKind::Numeric { range } => {
                format!("numeric, clipped to [{}, {}]", range.low(), range.high())
            }
            ColumnKind::Categorical { levels } => format!("categorical: {}", levels.join(", ")),
            ColumnKind::Image(image) => image.to_string(),
        },
        missing_mode: column.missing().to_string(),
        input,
    };
    schema
        .columns()
        .iter()
        .map(|c| describe(c, true))
        .chain(
            schema
                .audit_only_columns()
                .iter()
                .map(|c| describe(c, false)),
        )
        .collect()
}

/// TRIPOD+AI 5a, 6a, 10, 11: the pooled data figures of the statistics round.
///
/// Missing counts: an imputed numeric column's missing rows are the pooled rows less its
/// present count; a categorical column whose missing values are a level counts them in
/// [`MISSING_LEVEL`]; a column that refuses them has none among the rows counted (a hospital
/// refuses such rows before anything is summed), which the card gives as `None`, not 0.
pub fn data_summary(
    schema: &Schema,
    summary: Option<&FederatedSummary>,
    sites: Vec<String>,
) -> DataSummary {
    let mode = |name: &str| {
        schema
            .columns()
            .iter()
            .find(|c| c.name() == name)
            .map_or(MissingMode::Refuse, |c| c.missing())
    };
    let numeric = summary
        .map(|s| {
            s.numeric
                .iter()
                .map(|c| {
                    let missing_mode = mode(&c.column);
                    NumericColumn {
                        column: c.column.clone(),
                        mean: c.mean,
                        std: c.std,
                        missing_mode: missing_mode.to_string(),
                        missing: (missing_mode == MissingMode::Impute)
                            .then(|| s.n.saturating_sub(c.present.unwrap_or(s.n))),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let categorical = summary
        .map(|s| {
            s.categorical
                .iter()
                .map(|c| {
                    let missing_mode = mode(&c.column);
                    let missing = c
                        .levels
                        .iter()
                        .position(|l| l == MISSING_LEVEL)
                        .and_then(|i| c.counts.get(i).copied());
                    CategoricalColumn {
                        column: c.column.clone(),
                        levels: c.levels.clone(),
                        counts: c.counts.clone(),
                        missing_mode: missing_mode.to_string(),
                        missing: (missing_mode == MissingMode::Level)
                            .then_some(missing.unwrap_or(0)),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    DataSummary {
        sites,
        per_site: PER_SITE_NOTE.to_owned(),
        pooled_rows: summary.map(|s| s.n),
        count_noise_sd: summary.map_or(0.0, |s| s.count_noise),
        numeric,
        categorical,
    }
}

/// The layers of `spec`, for example `Linear(13 → 8), ReLU, Linear(8 → 1), sigmoid`.
pub fn architecture(spec: &ModelSpec) -> String {
    let hidden: &[usize] = match &spec.kind {
        ModelKind::LogisticRegression => &[],
        ModelKind::Mlp { hidden } => hidden,
        ModelKind::Layers(architecture) => return architecture.describe(),
        ModelKind::TorchScript(module) => return module.describe(),
    };
    let mut layers = Vec::new();
    let mut width = spec.input_dim;
    for &h in hidden {
        layers.push(format!("Linear({width} → {h}), ReLU"));
        width = h;
    }
    layers.push(format!("Linear({width} → 1), sigmoid"));
    let name = if hidden.is_empty() {
        "logistic regression"
    } else {
        "multi-layer perceptron"
    };
    format!("{name}: {}", layers.join(", "))
}

/// TRIPOD+AI 14: the verdict of `report` with its reasons, and its audit verbatim.
pub fn fairness_section(report: Option<&AuditReport>) -> FairnessSection {
    let Some(report) = report else {
        return FairnessSection {
            verdict: "UNJUDGED".to_owned(),
            reasons: vec!["the released model's evaluation did not complete: no audit".to_owned()],
            attributes: Vec::new(),
        };
    };
    let mut reasons: Vec<String> =
        report
            .fairness
            .iter()
            .flat_map(|a| {
                a.policy.checks.iter().filter(|c| !c.passed).map(move |c| {
                    format!("FAIL {}: {}", a.attribute, html::check_text(c, &a.report))
                })
            })
            .collect();
    if let Some(why) = report.not_evaluated {
        reasons.push(why.to_string());
    } else if reasons.is_empty() {
        let checks: usize = report.fairness.iter().map(|a| a.policy.checks.len()).sum();
        reasons.push(if checks == 0 {
            format!(
                "{} attribute(s) audited; the consortium's fairness policy sets no limit, so \
                 no check could fail",
                report.fairness.len()
            )
        } else {
            format!(
                "all {checks} fairness checks of {} attribute(s) passed",
                report.fairness.len()
            )
        });
    }
    FairnessSection {
        verdict: report.verdict().to_string(),
        reasons,
        attributes: report.fairness.clone(),
    }
}

/// The limitations the figures show, in words (TRIPOD+AI 26), for a card whose other sections
/// are filled in.
pub fn generated_limitations(card: &ModelCard) -> Vec<String> {
    let mut out = Vec::new();
    match &card.performance {
        Some(p) => out.push(format!(
            "Evaluated on {} held-out patients pooled from {} hospital(s) ({}), split from the \
             same hospitals' data as the training rows: internal validation only, no external \
             validation.",
            p.evaluation.examples,
            p.sites.len(),
            p.sites.join(", ")
        )),
        None => out.push(
            "The released model has no pooled held-out evaluation: its performance is unknown."
                .to_owned(),
        ),
    }
    if let Some(p) = &card.performance
        && !p.absent_members.is_empty()
    {
        out.push(format!(
            "Held-out patients of {} are not in the figures.",
            p.absent_members.join(", ")
        ));
    }
    if card.data.count_noise_sd > 0.0 {
        out.push(format!(
            "The data figures are noised for differential privacy: each pooled count carries \
             noise of standard deviation {:.1}.",
            card.data.count_noise_sd
        ));
    }
    out.push(PER_SITE_NOTE.to_owned());
    if let Some(c) = &card.calibration {
        out.push(format!(
            "Calibration is computed from {}-bin score histograms (each score taken as its \
             bin's centre), grouped into {} bins.",
            c.histogram_bins,
            c.table.len()
        ));
    }
    if card.performance.is_some() {
        out.push(figures::INTERVAL_NOTE.to_owned());
    }
    if card.released_model.release_rule == "lowest_loss" {
        out.push(
            "The released model was chosen by its pooled held-out loss, so the same held-out \
             figures both chose and describe it: they are optimistic by the selection."
                .to_owned(),
        );
    }
    out
}

/// The [`TRIPOD_AI_ITEMS`] as the card lists them.
pub fn tripod_items() -> Vec<TripodItem> {
    TRIPOD_AI_ITEMS
        .iter()
        .map(|(item, topic, section)| TripodItem {
            item: (*item).to_owned(),
            topic: (*topic).to_owned(),
            section: (*section).to_owned(),
        })
        .collect()
}

/// Checks `card` against the report chain (`chain`: every report with its file's SHA-256,
/// oldest first, as [`verify_chain`](medfed_protocol::report::verify_chain) accepted it): the
/// report it names is in the chain and describes the card's round, model and checkpoint; the
/// card's evaluation, fairness audit and verdict are that report's; its privacy figures are the
/// last report's. Returns the judged round.
pub fn check_against_chain<'a>(
    card: &ModelCard,
    chain: impl IntoIterator<Item = (&'a AuditReport, &'a str)>,
) -> Result<u64, CardError> {
    let chain: Vec<(&AuditReport, &str)> = chain.into_iter().collect();
    let released = &card.released_model;
    let sha = released
        .report_sha256
        .as_deref()
        .ok_or(CardError::Unjudged)?;
    let report = chain
        .iter()
        .find(|(_, s)| *s == sha)
        .map(|(r, _)| *r)
        .ok_or_else(|| CardError::UnknownReport {
            sha256: sha.to_owned(),
        })?;
    let round = report.round;
    let expect = |ok: bool, field: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(CardError::Mismatch { field, round })
        }
    };
    expect(released.round == round, "released_model.round")?;
    expect(
        released.model_sha256 == report.model_sha256,
        "released_model.model_sha256",
    )?;
    expect(
        released.checkpoint_sha256 == report.checkpoint_sha256,
        "released_model.checkpoint_sha256",
    )?;
    expect(
        released.verdict == report.verdict().to_string()
            && card.fairness.verdict == released.verdict,
        "verdict",
    )?;
    expect(
        card.performance.as_ref().map(|p| &p.evaluation) == report.evaluation.as_ref(),
        "performance.evaluation",
    )?;
    expect(
        card.performance.as_ref().is_none_or(|p| {
            p.sites == report.participants && p.absent_members == report.absent_members
        }),
        "performance.sites",
    )?;
    expect(
        card.fairness.attributes == report.fairness,
        "fairness.attributes",
    )?;
    let last = chain.last().map(|(r, _)| *r);
    expect(
        card.privacy.as_of_round == last.map(|r| r.round)
            && Some(&card.privacy.per_site) == last.map(|r| &r.privacy),
        "privacy",
    )?;
    Ok(round)
}

/// `value` as pretty JSON and one `\n`: how the card and its signature file are written.
fn pretty_json(value: &impl Serialize) -> Result<Vec<u8>, CardError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| CardError::Encode {
        detail: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests;
