use medfed_protocol::evaluation::EvalMetrics;
use medfed_protocol::fairness::GroupCounts;
use medfed_protocol::model::{ModelKind, ModelSpec};
use medfed_protocol::report::{AuditReport, NodePrivacy, REPORT_FORMAT};
use medfed_protocol::schema::Schema;
use medfed_protocol::stats::{CategoricalSummary, FederatedSummary, NumericSummary};

use super::*;

const SCHEMA: &str = r#"
sensitive = ["sex", "race"]
[label]
column = "preterm"
positive = ["yes"]
negative = ["no"]
[[columns]]
name = "age"
type = "numeric"
range = [15, 50]
[[columns]]
name = "bmi"
type = "numeric"
range = [15, 60]
missing = "impute"
[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
[[columns]]
name = "smoker"
type = "categorical"
levels = ["no", "yes"]
missing = "level"
[[columns]]
name = "race"
type = "categorical"
levels = ["A", "B"]
input = false
"#;

fn schema() -> Schema {
    Schema::parse(SCHEMA).expect("schema")
}

fn summary() -> FederatedSummary {
    FederatedSummary {
        n: 400,
        numeric: vec![
            NumericSummary {
                column: "age".into(),
                mean: 29.5,
                std: 5.1,
                present: None,
            },
            NumericSummary {
                column: "bmi".into(),
                mean: 26.0,
                std: 4.0,
                present: Some(370),
            },
        ],
        categorical: vec![
            CategoricalSummary {
                column: "sex".into(),
                levels: vec!["F".into(), "M".into()],
                counts: vec![390, 10],
            },
            CategoricalSummary {
                column: "smoker".into(),
                levels: vec!["no".into(), "yes".into(), MISSING_LEVEL.into()],
                counts: vec![300, 88, 12],
            },
        ],
        count_noise: 8.0,
    }
}

fn report(round: u64, privacy: f64) -> AuditReport {
    AuditReport {
        format: REPORT_FORMAT.to_owned(),
        round,
        created_at_ms: 0,
        model_sha256: format!("{round:064x}"),
        checkpoint_sha256: Some(format!("{:064x}", round + 100)),
        participants: vec!["clinic-a".into(), "clinic-b".into()],
        absent_members: Vec::new(),
        privacy: vec![NodePrivacy {
            node: "clinic-a".into(),
            epsilon: privacy,
            delta: 1e-5,
        }],
        evaluation: Some(EvalMetrics {
            examples: 200,
            loss: 0.45,
            accuracy: 0.7,
            auc: Some(0.86),
            prevalence: 0.3,
        }),
        not_evaluated: None,
        fairness: Vec::new(),
        approved: true,
        site_evaluations: Vec::new(),
        previous_report_sha256: None,
    }
}

fn pooled() -> PooledCounts {
    let mut positive = vec![0.0; 20];
    let mut negative = vec![0.0; 20];
    for i in 0..20 {
        positive[i] = i as f64;
        negative[i] = (20 - i) as f64;
    }
    PooledCounts {
        n: 400.0,
        loss_sum: 180.0,
        confusion: GroupCounts {
            tp: 150.0,
            fp: 60.0,
            tn: 150.0,
            fn_: 40.0,
            positive_scores: positive,
            negative_scores: negative,
        },
    }
}

/// A card as the coordinator assembles one, for the released model of round 2 judged by
/// `chain[1]`, with the last report `chain[2]`.
fn card(text: &CardText, chain: &[(AuditReport, String)]) -> ModelCard {
    let schema = schema();
    let (judged, sha) = &chain[1];
    let last = &chain[chain.len() - 1].0;
    let spec = ModelSpec {
        kind: ModelKind::Mlp { hidden: vec![8] },
        input_dim: schema.num_features(),
    };
    let mut card = ModelCard {
        format: MODEL_CARD_FORMAT.to_owned(),
        created_at_ms: 1,
        title: title(text, &schema),
        released_model: ReleasedModel {
            round: judged.round,
            model_sha256: judged.model_sha256.clone(),
            checkpoint_sha256: judged.checkpoint_sha256.clone(),
            model_file_sha256: "f".repeat(64),
            report_sha256: Some(sha.clone()),
            verdict: judged.verdict().to_string(),
            release_rule: "lowest_loss".into(),
        },
        intended_use: intended_use(text, &schema),
        data: data_summary(
            &schema,
            Some(&summary()),
            vec!["clinic-a".into(), "clinic-b".into()],
        ),
        predictors: predictors(&schema),
        model: ModelDescription {
            architecture: architecture(&spec),
            input_features: schema.feature_names(),
            parameters: 8 * schema.num_features() + 8 + 8 + 1,
            output: "risk".into(),
            decision_threshold: 0.3,
            rounds_planned: 3,
            rounds_completed: 3,
            server_strategy: "{\"name\":\"fed_avg\"}".into(),
            local_epochs: 1,
            learning_rate: 0.1,
            batch_size: 16,
            pos_weight: 2.0,
            privacy_mechanism: "local".into(),
            secure_aggregation: true,
            score_bins: 20,
        },
        privacy: PrivacySection {
            as_of_round: Some(last.round),
            per_site: last.privacy.clone(),
        },
        performance: Some(Performance {
            sites: judged.participants.clone(),
            absent_members: judged.absent_members.clone(),
            evaluation: judged.evaluation.clone().unwrap(),
            intervals: Some(Intervals::from_counts(&pooled())),
            note: figures::INTERVAL_NOTE.into(),
        }),
        calibration: Calibration::from_counts(&pooled()),
        fairness: fairness_section(Some(judged)),
        limitations: Vec::new(),
        tripod_ai: tripod_items(),
    };
    card.limitations = text
        .limitations
        .iter()
        .map(|t| Limitation {
            source: "consortium".into(),
            text: t.clone(),
        })
        .chain(
            generated_limitations(&card)
                .into_iter()
                .map(|text| Limitation {
                    source: "generated".into(),
                    text,
                }),
        )
        .collect();
    card
}

fn chain() -> Vec<(AuditReport, String)> {
    (0..3)
        .map(|r| {
            (
                report(r, 0.5 * (r + 1) as f64),
                format!("{:064x}", r + 1000),
            )
        })
        .collect()
}

fn refs(chain: &[(AuditReport, String)]) -> Vec<(&AuditReport, &str)> {
    chain.iter().map(|(r, s)| (r, s.as_str())).collect()
}

#[test]
fn the_card_text_parses_from_toml_and_refuses_an_unknown_key() {
    let text: CardText = toml::from_str(
        r#"
        intended_use = "Flag pregnancies for review"
        population = "Singleton pregnancies"
        limitations = ["Bookings from 2019 only"]
        contact = "mc@example.org"
        "#,
    )
    .unwrap();
    assert_eq!(
        text.intended_use.as_deref(),
        Some("Flag pregnancies for review")
    );
    assert_eq!(text.limitations, ["Bookings from 2019 only"]);
    assert_eq!(text.outcome, None);
    let refused = toml::from_str::<CardText>("intended_usage = \"typo\"").unwrap_err();
    assert!(refused.to_string().contains("intended_usage"), "{refused}");
    assert_eq!(toml::from_str::<CardText>("").unwrap(), CardText::default());
}

#[test]
fn the_data_summary_counts_missing_values_by_mode_and_never_per_site() {
    let data = data_summary(&schema(), Some(&summary()), vec!["clinic-a".into()]);
    assert_eq!(data.pooled_rows, Some(400));
    assert_eq!(data.count_noise_sd, 8.0);
    // Refused at the hospital: not counted, so not claimed to be zero.
    assert_eq!(data.numeric[0].missing, None);
    assert_eq!(data.numeric[0].missing_mode, "refuse");
    // Imputed: the rows less the present values.
    assert_eq!(data.numeric[1].missing, Some(30));
    assert_eq!(data.numeric[1].missing_mode, "impute");
    assert_eq!(data.categorical[0].missing, None);
    // A missing level: its count.
    assert_eq!(data.categorical[1].missing, Some(12));
    assert_eq!(data.per_site, PER_SITE_NOTE);
    // Without the statistics summary nothing is invented.
    let unknown = data_summary(&schema(), None, Vec::new());
    assert_eq!(unknown.pooled_rows, None);
    assert!(unknown.numeric.is_empty() && unknown.categorical.is_empty());
}

#[test]
fn predictors_list_inputs_then_audit_only_attributes_and_the_outcome_comes_from_the_label() {
    let schema = schema();
    let listed = predictors(&schema);
    let names: Vec<(&str, bool)> = listed.iter().map(|p| (p.name.as_str(), p.input)).collect();
    assert_eq!(
        names,
        [
            ("age", true),
            ("bmi", true),
            ("sex", true),
            ("smoker", true),
            ("race", false)
        ]
    );
    let use_ = intended_use(&CardText::default(), &schema);
    assert_eq!(
        use_.outcome_definition,
        "column `preterm`: positive when yes, negative when no"
    );
    assert_eq!(
        title(&CardText::default(), &schema),
        "Prediction model for preterm (medfed federated model)"
    );
}

#[test]
fn an_image_predictor_is_described_by_its_declaration() {
    let schema = Schema::parse(medfed_protocol::schema::EXAMPLE_IMAGE_SCHEMA).unwrap();
    let listed = predictors(&schema);
    assert_eq!(listed[1].name, "scan");
    assert_eq!(
        listed[1].kind,
        "image 1×2×3 (other sizes refused), mean [0.0], std [1.0]"
    );
    assert!(listed[1].input);
}

#[test]
fn the_architecture_names_every_layer() {
    let mlp = ModelSpec {
        kind: ModelKind::Mlp { hidden: vec![8, 4] },
        input_dim: 13,
    };
    assert_eq!(
        architecture(&mlp),
        "multi-layer perceptron: Linear(13 → 8), ReLU, Linear(8 → 4), ReLU, Linear(4 → 1), sigmoid"
    );
    let lr = ModelSpec {
        kind: ModelKind::LogisticRegression,
        input_dim: 5,
    };
    assert_eq!(
        architecture(&lr),
        "logistic regression: Linear(5 → 1), sigmoid"
    );
}

#[test]
fn generated_limitations_state_the_evaluation_noise_and_selection() {
    let chain = chain();
    let card = card(&CardText::default(), &chain);
    let text: Vec<&str> = card.limitations.iter().map(|l| l.text.as_str()).collect();
    assert!(
        text[0].starts_with("Evaluated on 200 held-out patients pooled from 2 hospital(s)"),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("standard deviation 8.0")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("20-bin score histograms")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("optimistic by the selection")),
        "{text:?}"
    );
    assert!(text.contains(&PER_SITE_NOTE));
}

#[test]
fn the_card_round_trips_through_json_and_refuses_another_format() {
    let chain = chain();
    let card = card(&CardText::default(), &chain);
    let bytes = card.to_json_pretty().unwrap();
    assert_eq!(ModelCard::from_json(&bytes).unwrap(), card);
    let mut other = card.clone();
    other.format = "medfed-model-card/9".into();
    let bytes = other.to_json_pretty().unwrap();
    assert!(matches!(
        ModelCard::from_json(&bytes),
        Err(CardError::Format { .. })
    ));
    assert!(matches!(
        ModelCard::from_json(b"{\"format\": 1"),
        Err(CardError::Malformed { .. })
    ));
}

#[test]
fn a_card_checks_against_the_report_that_judged_its_model() {
    let chain = chain();
    let card = card(&CardText::default(), &chain);
    assert_eq!(check_against_chain(&card, refs(&chain)), Ok(1));

    let mismatch = |edit: fn(&mut ModelCard)| {
        let mut forged = card.clone();
        edit(&mut forged);
        check_against_chain(&forged, refs(&chain))
    };
    assert_eq!(
        mismatch(|c| c.performance.as_mut().unwrap().evaluation.auc = Some(0.99)),
        Err(CardError::Mismatch {
            field: "performance.evaluation",
            round: 1
        })
    );
    assert_eq!(
        mismatch(|c| c.released_model.model_sha256 = "e".repeat(64)),
        Err(CardError::Mismatch {
            field: "released_model.model_sha256",
            round: 1
        })
    );
    assert_eq!(
        mismatch(|c| c.privacy.per_site[0].epsilon = 0.1),
        Err(CardError::Mismatch {
            field: "privacy",
            round: 1
        })
    );
    assert_eq!(
        mismatch(|c| c.released_model.verdict = "NOT APPROVED".into()),
        Err(CardError::Mismatch {
            field: "verdict",
            round: 1
        })
    );
    assert!(matches!(
        mismatch(|c| c.released_model.report_sha256 = Some("0".repeat(64))),
        Err(CardError::UnknownReport { .. })
    ));
    assert_eq!(
        mismatch(|c| c.released_model.report_sha256 = None),
        Err(CardError::Unjudged)
    );
}

#[test]
fn the_page_escapes_every_string_and_loads_nothing() {
    let chain = chain();
    let text = CardText {
        title: Some("<script>alert(1)</script>".into()),
        intended_use: Some("a & b <img src=x onerror=alert(1)>".into()),
        limitations: vec!["\"quoted\" 'single'".into()],
        ..CardText::default()
    };
    let mut card = card(&text, &chain);
    card.data.sites.push("<b>evil</b>".into());
    let page = html::render(&card);
    assert!(!page.contains("<script"), "an unescaped script tag");
    assert!(!page.contains("<img"), "an unescaped image tag");
    assert!(!page.contains("<b>evil"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("a &amp; b &lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.contains("&quot;quoted&quot; &#39;single&#39;"));
    assert!(page.contains("&lt;b&gt;evil&lt;/b&gt;"));
    // Self-contained: no remote or script loads, and a policy forbidding them.
    for loads in ["src=\"http", "href=\"http", "<link", "<script", "@import"] {
        assert!(!page.contains(loads), "{loads}");
    }
    assert!(page.contains("default-src 'none'"));
    // The sections an auditor follows name their TRIPOD+AI items, and the plot is inline SVG
    // with one point per occupied bin.
    for heading in [
        "TRIPOD+AI 3b, 8a",
        "TRIPOD+AI 12e, 23a",
        "TRIPOD+AI 26",
        "TRIPOD+AI 14",
    ] {
        assert!(page.contains(heading), "{heading}");
    }
    let points = card
        .calibration
        .as_ref()
        .unwrap()
        .table
        .iter()
        .filter(|b| b.observed.is_some())
        .count();
    assert_eq!(page.matches("<circle").count(), points);
    assert!(page.contains("not stated in the consortium's configuration"));
}
