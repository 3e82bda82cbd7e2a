//! The bias audit end to end: a planted bias fails the consortium's policy, and the audited
//! per-group figures — of each sensitive attribute and of their intersection — are exactly those
//! of the pooled held-out data, though no hospital's own counts ever reached the coordinator.
//! With evaluation noise on, they are within noise of it, and every node's ledger charges it.

use std::collections::BTreeMap;
use std::path::Path;

use medfed_coordinator::store::Store;
use medfed_e2e::{Consortium, SCHEMA, biased_csv, subscribe};
use medfed_node::NodeConfig;
use medfed_node::config::{
    DEFAULT_STATISTICS_NOISE, EvaluationNoiseConfig, NoiseMultiplier, PrivacyConfig, PrivacyMode,
};
use medfed_node::egress::EgressLog;
use medfed_node::ledger::{PrivacyLedger, Release};
use medfed_node::trainer::{ComputeDevice, TchTrainer, Trainer};
use medfed_protocol::accounting::Accountant;
use medfed_protocol::eval_release::sensitivity;
use medfed_protocol::evaluation::{MAX_EXAMPLE_LOSS, ScoreBins};
use medfed_protocol::fairness::{FairnessPolicy, GroupCounts, GroupReport, SuppressionReason};
use medfed_protocol::model::Model;
use medfed_protocol::schema::Schema;
use medfed_protocol::stats::Standardization;
use medfed_protocol::stats_release::sensitivity as stats_sensitivity;

/// The test schema, auditing the intersection of sex and age bands as well.
fn schema_with_intersection() -> String {
    SCHEMA.replace(
        "sensitive = [\"sex\", \"age\"]",
        "sensitive = [\"sex\", \"age\"]\nintersections = [[\"sex\", \"age\"]]",
    )
}

/// The pooled counts of every audit group, `(attribute, group)` → counts, computed here from
/// every hospital's held-out rows with `model`.
fn pooled_group_counts(
    schema_path: &Path,
    state: &Path,
    configs: &[NodeConfig],
    model: &Model,
) -> BTreeMap<(String, String), GroupCounts> {
    let schema = Schema::parse(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let standardization: Standardization = Store::open(state)
        .unwrap()
        .get_json("standardization")
        .unwrap()
        .unwrap();
    let groups = schema.audit_groups();
    let mut pooled = BTreeMap::new();
    for config in configs {
        let (_, held_out) = medfed_node::data::load_split(
            &config.data.csv,
            &config.data.holdout,
            &schema,
            &Default::default(),
        )
        .unwrap();
        let mut examples = held_out.examples.clone();
        standardization.apply(&mut examples.features);
        let scores = TchTrainer::new(ComputeDevice::Cpu)
            .unwrap()
            .predict(&model.spec, &model.params, &examples)
            .unwrap();
        assert_eq!(held_out.sensitive_columns, schema.sensitive());
        for (i, row) in held_out.sensitive.iter().enumerate() {
            let counts = GroupCounts::from_predictions(&scores[i..=i], &examples.labels[i..=i]);
            for g in schema.audit_groups_of(row) {
                pooled
                    .entry((groups[g].attribute.clone(), groups[g].group.clone()))
                    .or_insert_with(GroupCounts::zero)
                    .add(&counts);
            }
        }
    }
    pooled
}

/// The consortium's policy in these tests: the smallest selection rate at least half the largest.
fn policy() -> FairnessPolicy {
    FairnessPolicy {
        min_demographic_parity_ratio: Some(0.5),
        ..FairnessPolicy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_planted_bias_the_same_policy_passes() {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 200);
    let mut config = consortium.coordinator_config(3, 3);
    config.fairness.policy = policy();
    let (report, _) = consortium.train(config, &names).await;
    let sex = report
        .final_fairness
        .iter()
        .find(|a| a.attribute == "sex")
        .expect("sex audited");
    assert!(sex.policy.approved, "{:?}", sex.policy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_bias_fails_the_policy_and_the_audit_matches_the_pooled_data() {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 200);
    std::fs::write(&consortium.schema, schema_with_intersection()).unwrap();
    // At hospital-b, nine in ten women with the outcome are recorded without it.
    std::fs::write(consortium.csv("hospital-b"), biased_csv(200, 2, 0.9)).unwrap();
    let mut config = consortium.coordinator_config(3, 3);
    config.fairness.policy = FairnessPolicy {
        max_equalized_odds_difference: Some(0.05),
        ..FairnessPolicy::default()
    };
    let state = config.data_dir.join("state.sqlite");
    let (report, configs) = consortium.train(config, &names).await;

    let sex = report
        .final_fairness
        .iter()
        .find(|a| a.attribute == "sex")
        .expect("sex audited");
    assert!(
        !sex.policy.approved,
        "the planted bias must fail the policy: {:?}",
        sex.policy
    );
    let audited: Vec<&str> = report
        .final_fairness
        .iter()
        .map(|a| a.attribute.as_str())
        .collect();
    assert_eq!(audited, ["sex", "age", "sex×age"]);
    // The policy applies to the intersection as to each attribute.
    let crossed = &report.final_fairness[2];
    assert_eq!(crossed.policy.checks.len(), 1, "{:?}", crossed.policy);

    // Every audited group, intersections included, is the pooled held-out data's; a group is
    // suppressed exactly when the pooled data has fewer than 10 of its patients, positives or
    // negatives, and says which.
    let pooled = pooled_group_counts(&consortium.schema, &state, &configs, &report.final_model);
    let mut reported = Vec::new();
    for audit in &report.final_fairness {
        for group in &audit.report.groups {
            match group {
                GroupReport::Reported { group, metrics } => {
                    let key = (audit.attribute.clone(), group.clone());
                    let expected = pooled[&key].metrics().unwrap();
                    assert_eq!(metrics.n, expected.n, "{key:?}");
                    assert_eq!(metrics.selection_rate, expected.selection_rate, "{key:?}");
                    assert_eq!(metrics.tpr, expected.tpr, "{key:?}");
                    assert_eq!(metrics.fpr, expected.fpr, "{key:?}");
                    let c = &pooled[&key];
                    assert!(c.n().min(c.tp + c.fn_).min(c.fp + c.tn) >= 10.0, "{key:?}");
                    reported.push(key);
                }
                GroupReport::Suppressed { group, reason } => {
                    let key = (audit.attribute.clone(), group.clone());
                    let zero = GroupCounts::zero();
                    let c = pooled.get(&key).unwrap_or(&zero);
                    let short = match reason {
                        SuppressionReason::TooFewExamples => c.n(),
                        SuppressionReason::TooFewPositives => c.tp + c.fn_,
                        SuppressionReason::TooFewNegatives => c.fp + c.tn,
                    };
                    assert!(short < 10.0, "{key:?}: {reason:?} with {short}");
                }
            }
        }
    }
    // Both sexes, the three age bands, and some of their six pairs (the others are short of
    // patients, positives or negatives).
    let singles = reported.iter().filter(|(a, _)| a != "sex×age").count();
    assert_eq!(singles, 5, "{reported:?}");
    assert!(reported.len() > singles, "{reported:?}");

    // Every figure left the hospitals masked: no plain contribution was ever sent.
    for config in &configs {
        let kinds: Vec<String> = EgressLog::read(&config.state_dir)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(!kinds.iter().any(|k| k == "contribution"), "{kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_evaluation_noise_the_audit_is_within_noise_of_the_pooled_data_and_each_ledger_charges_it()
 {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 200);
    std::fs::write(&consortium.schema, schema_with_intersection()).unwrap();
    let rounds = 2;
    let mut config = consortium.coordinator_config(rounds, 3);
    // Noised counts go with coarse histograms: every bin carries its own noise.
    let bins = ScoreBins {
        evaluation: 20,
        group: 10,
    };
    config.task.score_bins = bins;
    let state = config.data_dir.join("state.sqlite");
    let sigma = 2.0;
    let policy = PrivacyConfig {
        target_epsilon: 1000.0,
        delta: 1e-5,
        noise_multiplier: NoiseMultiplier::Fixed(1.0),
        max_grad_norm: 1.0,
        accountant: Accountant::Rdp,
        evaluation: EvaluationNoiseConfig {
            noise: sigma,
            loss_clip: MAX_EXAMPLE_LOSS,
        },
        // The default: noised statistics, charged in round 0.
        statistics: Default::default(),
        mode: PrivacyMode::Local,
        max_local_epsilon: None,
    };
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let configs: Vec<NodeConfig> = names
        .iter()
        .map(|name| {
            let mut node = consortium.node_config(name, addr);
            node.privacy = Some(policy.clone());
            node
        })
        .collect();
    let nodes: Vec<_> = configs
        .iter()
        .map(|c| consortium.spawn_node(c.clone()))
        .collect();
    let report = coordinator.wait().await.expect("training completes");
    for node in nodes {
        node.await.unwrap().unwrap();
    }
    assert_eq!(report.rounds.len(), rounds as usize);
    let final_evaluation = report
        .final_evaluation
        .as_ref()
        .expect("a final evaluation");
    assert!(final_evaluation.auc.is_some());
    // Each node's final-evaluation masked input carried the coarse layout: 2 + 4 + 2·20
    // evaluation figures and 4 + 2·10 for each audit group, in two-word counts.
    let groups = Schema::parse(&schema_with_intersection())
        .unwrap()
        .audit_groups()
        .len();
    let counts = |bins: ScoreBins| (bins.evaluation_len() + groups * bins.group_len()) as u64;
    let (coarse_counts, fine_counts) = (counts(bins), counts(ScoreBins::FINE));
    for config in &configs {
        let egress = EgressLog::read(&config.state_dir).unwrap();
        let input = egress
            .iter()
            .find(|e| e.kind == "secagg_input" && e.round == Some(3))
            .expect("a final-evaluation masked input");
        assert!(
            input.bytes < 8 * fine_counts / 4 && input.bytes >= 8 * coarse_counts,
            "{} bytes for {coarse_counts} counts",
            input.bytes
        );
    }

    // The statistics round charges the noised statistics; each round charges the update and
    // then the noised counts; the final evaluation charges the counts alone. Three audited
    // attributes (sex, age, sex×age): Δ = √(4 + 2·3). Two numeric and two categorical columns:
    // the statistics' Δ = √(1 + 2·2 + 2).
    let multiplier = sigma / sensitivity(3);
    assert!((multiplier - sigma / 10f64.sqrt()).abs() < 1e-12);
    let schema = Schema::parse(&schema_with_intersection()).unwrap();
    let statistics_multiplier = DEFAULT_STATISTICS_NOISE / stats_sensitivity(&schema);
    assert!((statistics_multiplier - DEFAULT_STATISTICS_NOISE / 7f64.sqrt()).abs() < 1e-12);
    for (config, name) in configs.iter().zip(names) {
        let ledger = PrivacyLedger::read(&config.state_dir).unwrap();
        let kinds: Vec<(u64, Release)> = ledger.iter().map(|e| (e.round, e.release)).collect();
        assert_eq!(
            kinds,
            [
                (0, Release::Statistics),
                (1, Release::Training),
                (1, Release::EvaluationCounts),
                (2, Release::Training),
                (2, Release::EvaluationCounts),
                (3, Release::EvaluationCounts),
            ],
            "{name}"
        );
        for entry in ledger
            .iter()
            .filter(|e| e.release == Release::EvaluationCounts)
        {
            assert_eq!((entry.sample_rate, entry.steps), (1.0, 1), "{name}");
            assert!(
                (entry.noise_multiplier - multiplier).abs() < 1e-12,
                "{name}"
            );
        }
        let statistics = &ledger[0];
        assert_eq!(
            (statistics.sample_rate, statistics.steps),
            (1.0, 1),
            "{name}"
        );
        assert!((statistics.noise_multiplier - statistics_multiplier).abs() < 1e-12);
        assert!(
            ledger
                .windows(2)
                .all(|w| w[0].epsilon_after < w[1].epsilon_after)
        );
        // The ε the node declared each round is the one after its evaluation counts.
        for round in &report.rounds {
            let declared = round
                .privacy
                .iter()
                .find(|p| p.node == *name)
                .map(|p| p.epsilon)
                .expect("declared");
            let entries: Vec<_> = ledger.iter().filter(|e| e.round == round.round).collect();
            assert_eq!(declared, entries[1].epsilon_after, "{name}");
            assert!(declared > entries[0].epsilon_after);
        }
    }

    // The audited counts are the pooled truth plus the three nodes' noise (σ√3 per cell,
    // clamped at 0): within six of those standard deviations per sum of cells.
    let pooled = pooled_group_counts(&consortium.schema, &state, &configs, &report.final_model);
    let cell_sd = sigma * 3f64.sqrt();
    let (mut compared, mut differing) = (0, 0);
    for audit in &report.final_fairness {
        for group in &audit.report.groups {
            let GroupReport::Reported { group, metrics } = group else {
                continue;
            };
            let key = (audit.attribute.clone(), group.clone());
            let truth = &pooled[&key];
            // n sums four cells, the selected count two.
            let n = metrics.n as f64;
            assert!(
                (n - truth.n()).abs() <= 6.0 * cell_sd * 2.0,
                "{key:?}: {n} vs {}",
                truth.n()
            );
            let selected = metrics.selection_rate.value * n;
            let true_selected = truth.tp + truth.fp;
            assert!(
                (selected - true_selected).abs() <= 6.0 * cell_sd * 2f64.sqrt() + 1e-6,
                "{key:?}: {selected} vs {true_selected}"
            );
            compared += 1;
            if n != truth.n() {
                differing += 1;
            }
        }
    }
    let audited: Vec<&str> = report
        .final_fairness
        .iter()
        .map(|a| a.attribute.as_str())
        .collect();
    assert_eq!(audited, ["sex", "age", "sex×age"]);
    assert!(compared >= 5, "{compared} groups reported");
    assert!(differing > 0, "the audited counts carry no noise");
}

/// A member that never takes part: every audit report names it as absent (its held-out patients
/// are not in the figures), and the page says which rounds' figures come from fewer than every
/// member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_name_the_members_whose_counts_are_missing_and_the_page_marks_them() {
    use medfed_protocol::report::SignedReport;

    subscribe();
    let members = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];
    let consortium = Consortium::new(&members, 60);
    let config = consortium.coordinator_config(1, 3);
    let reports = config.data_dir.join("reports");
    let (report, _) = consortium.train_with(config, &members[..3], |_| {}).await;
    assert_eq!(report.last_round, 1);
    for round in [0, 1] {
        let path = reports.join(format!("round-{round:05}.json"));
        let bytes = std::fs::read(&path).unwrap();
        let signed = SignedReport::from_json(&bytes).unwrap().report;
        assert_eq!(signed.participants, &members[..3], "{}", path.display());
        assert_eq!(signed.absent_members, ["hospital-d"], "{}", path.display());
    }
    let page = std::fs::read_to_string(reports.join("index.html")).unwrap();
    assert!(
        page.contains("round 0 (absent: hospital-d); round 1 (absent: hospital-d)"),
        "{page}"
    );
    assert!(page.contains("These figures come from 3 of the member hospitals: hospital-d"));
}

/// An attribute the consortium audits without the model using it (`input = false`): its
/// groups' figures are the pooled held-out data's, and the model's input width is that of the
/// schema without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_audit_only_attribute_is_audited_and_never_a_model_input() {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 200);
    let schema = SCHEMA.replace(
        "sensitive = [\"sex\", \"age\"]",
        "sensitive = [\"sex\", \"age\", \"insurance\"]",
    ) + "\n[[columns]]\nname = \"insurance\"\ntype = \"categorical\"\n\
           levels = [\"public\", \"private\"]\ninput = false\n";
    std::fs::write(&consortium.schema, &schema).unwrap();
    let schema = Schema::parse(&schema).unwrap();
    assert_eq!(
        schema.num_features(),
        Schema::parse(SCHEMA).unwrap().num_features()
    );
    // Each hospital's file gains the column, which the model must not see.
    for name in names {
        let path = consortium.csv(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let cell = match i {
                0 => "insurance",
                i if i % 3 == 0 => "private",
                _ => "public",
            };
            out.push_str(&format!("{line},{cell}\n"));
        }
        std::fs::write(&path, out).unwrap();
    }
    let config = consortium.coordinator_config(2, 3);
    let state = config.data_dir.join("state.sqlite");
    let (report, configs) = consortium.train(config, &names).await;

    assert_eq!(report.final_model.spec.input_dim, schema.num_features());
    let audited: Vec<&str> = report
        .final_fairness
        .iter()
        .map(|a| a.attribute.as_str())
        .collect();
    assert_eq!(audited, ["sex", "age", "insurance"]);
    let insurance = &report.final_fairness[2];
    let pooled = pooled_group_counts(&consortium.schema, &state, &configs, &report.final_model);
    let mut groups = Vec::new();
    for group in &insurance.report.groups {
        let GroupReport::Reported { group, metrics } = group else {
            panic!("both insurance groups have enough patients: {group:?}");
        };
        let expected = pooled[&("insurance".to_owned(), group.clone())]
            .metrics()
            .unwrap();
        assert_eq!(metrics.n, expected.n, "{group}");
        assert_eq!(metrics.selection_rate, expected.selection_rate, "{group}");
        assert_eq!(metrics.tpr, expected.tpr, "{group}");
        groups.push(group.as_str());
    }
    assert_eq!(groups, ["public", "private"], "the schema's level order");
}

/// A consortium that holds out no rows at all: each audit report says "no evaluation data"
/// and claims no approval, and the chain still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_held_out_rows_the_audit_says_no_evaluation_data() {
    use medfed_protocol::report::{NotEvaluated, SignedReport, Verdict};

    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 60);
    let mut config = consortium.coordinator_config(1, 3);
    config.fairness.policy = policy();
    let reports = config.data_dir.join("reports");
    let (report, _) = consortium
        .train_with(config, &names, |node| {
            node.data.holdout = medfed_node::data::Holdout::Fraction {
                fraction: 0.0,
                seed: 0,
            }
        })
        .await;
    assert!(report.final_evaluation.is_none());
    assert!(report.final_fairness.is_empty());
    for round in [0, 1] {
        let path = reports.join(format!("round-{round:05}.json"));
        let signed = SignedReport::from_json(&std::fs::read(&path).unwrap())
            .unwrap()
            .report;
        assert_eq!(
            signed.verdict(),
            Verdict::NotEvaluated(NotEvaluated::NoEvaluationData),
            "{}",
            path.display()
        );
        assert!(!signed.approved && signed.fairness.is_empty());
    }
    let page = std::fs::read_to_string(reports.join("index.html")).unwrap();
    assert!(page.contains("NO EVALUATION DATA") && !page.contains("NOT APPROVED"));
}
