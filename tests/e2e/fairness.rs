//! The bias audit end to end: a planted bias fails the consortium's policy, and the audited
//! per-group figures are exactly those of the pooled held-out data, though no hospital's own
//! counts ever reached the coordinator.

use std::collections::BTreeMap;

use medfed_coordinator::store::Store;
use medfed_e2e::{Consortium, biased_csv, subscribe};
use medfed_node::egress::EgressLog;
use medfed_node::trainer::{ComputeDevice, TchTrainer, Trainer};
use medfed_protocol::fairness::{FairnessPolicy, GroupCounts, GroupReport};
use medfed_protocol::schema::Schema;
use medfed_protocol::stats::Standardization;

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
    assert!(report.final_fairness.iter().any(|a| a.attribute == "age"));

    // The pooled per-group counts, computed here from every hospital's held-out rows.
    let schema = Schema::parse(&std::fs::read_to_string(&consortium.schema).unwrap()).unwrap();
    let standardization: Standardization = Store::open(&state)
        .unwrap()
        .get_json("standardization")
        .unwrap()
        .unwrap();
    let model = &report.final_model;
    let mut pooled: BTreeMap<String, GroupCounts> = BTreeMap::new();
    for config in &configs {
        let dataset = medfed_node::data::load_csv(&config.data.csv, &schema).unwrap();
        let (_, held_out) = dataset
            .split(config.data.holdout_fraction, config.data.split_seed)
            .unwrap();
        let mut examples = held_out.examples.clone();
        standardization.apply(&mut examples.features);
        let scores = TchTrainer::new(ComputeDevice::Cpu)
            .unwrap()
            .predict(&model.spec, &model.params, &examples)
            .unwrap();
        let sex_column = held_out
            .sensitive_columns
            .iter()
            .position(|c| c == "sex")
            .unwrap();
        for (i, row) in held_out.sensitive.iter().enumerate() {
            let counts = GroupCounts::from_predictions(&scores[i..=i], &examples.labels[i..=i]);
            pooled
                .entry(row[sex_column].clone())
                .or_insert_with(GroupCounts::zero)
                .add(&counts);
        }
    }
    for group in &sex.report.groups {
        let GroupReport::Reported { group, metrics } = group else {
            panic!("no group is that small")
        };
        let expected = pooled[group].metrics().unwrap();
        assert_eq!(metrics.n, expected.n, "{group}");
        assert_eq!(metrics.selection_rate, expected.selection_rate, "{group}");
        assert_eq!(metrics.tpr, expected.tpr, "{group}");
        assert_eq!(metrics.fpr, expected.fpr, "{group}");
    }

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
