//! Quantised uploads (issue 18, item 5): the update packed four values a word under secure
//! aggregation trains as well as the fixed point and uploads a quarter of the update's bytes.

use medfed_coordinator::config::CoordinatorConfig;
use medfed_coordinator::training::TrainingReport;
use medfed_e2e::{Consortium, SCHEMA, subscribe};
use medfed_node::egress::EgressLog;
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::model::ModelConfig;
use medfed_protocol::schema::Schema;
use medfed_protocol::secagg::encoding::UpdateEncoding;
use medfed_protocol::secagg::fixed_point::FixedPoint;
use medfed_protocol::secagg::quantized::Quantized;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
const ROUNDS: u64 = 4;
/// B: the largest coordinate of `n·Δ` the demo's model takes in these rounds is well inside it,
/// so the step `2B/L` (L = 63 for three hospitals in 8-bit lanes) is small against the update.
const CLIP: f64 = 64.0;

/// A consortium of its own (its own state folders), trained with `upload_bits`; the report and
/// each node's bytes of masked input per training round.
async fn train(upload_bits: Option<u32>) -> (TrainingReport, Vec<Vec<(u64, u64)>>) {
    let consortium = Consortium::new(&NODES, 240);
    let mut config: CoordinatorConfig = consortium.coordinator_config(ROUNDS, 3);
    // The demo's MLP, 18-32-16-1 there.
    config.task.model = ModelConfig::Mlp {
        hidden: vec![32, 16],
    };
    config.secure_aggregation.update_clip = CLIP;
    config.secure_aggregation.upload_bits = upload_bits;
    let (report, configs) = consortium.train(config, &NODES).await;
    let inputs = configs
        .iter()
        .map(|config| {
            let mut per_round = std::collections::BTreeMap::new();
            for entry in EgressLog::read(&config.state_dir).unwrap() {
                if entry.kind.starts_with("secagg_input")
                    && let Some(round) = entry.round.filter(|r| (1..=ROUNDS).contains(r))
                {
                    *per_round.entry(round).or_insert(0) += entry.bytes;
                }
            }
            per_round.into_iter().collect()
        })
        .collect();
    (report, inputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quantised_uploads_train_as_well_and_send_a_quarter_of_the_update() {
    subscribe();
    let (fixed, fixed_inputs) = train(None).await;
    let (quantised, quantised_inputs) = train(Some(8)).await;
    for report in [&fixed, &quantised] {
        assert_eq!(report.last_round, ROUNDS);
        assert!(report.rounds.iter().all(|r| r.participants.len() == 3));
    }

    // The pooled held-out AUC of the final model is close to the fixed point's.
    let auc = |report: &TrainingReport| report.final_evaluation.as_ref().unwrap().auc.unwrap();
    let first = quantised.rounds[0]
        .start_model_evaluation
        .as_ref()
        .unwrap()
        .auc
        .unwrap();
    let (auc_fixed, auc_quantised) = (auc(&fixed), auc(&quantised));
    assert!(
        auc_quantised > first + 0.05 && (auc_quantised - auc_fixed).abs() < 0.02,
        "AUC {first} → fixed point {auc_fixed}, quantised {auc_quantised}"
    );

    // Each training round's masked input is its encoded words, 4 bytes each, and a frame's
    // header: the update block takes ⌈params / 4⌉ words instead of params.
    let params = quantised.final_model.params.len();
    let layout = RoundLayout {
        params,
        train: true,
        evaluate: true,
        groups: Schema::parse(SCHEMA).unwrap().audit_groups().len(),
        bins: Default::default(),
        distributed: false,
    };
    let words = |update: UpdateEncoding| layout.encoding(&update).encoded_len() as u64;
    let packed = words(UpdateEncoding::Quantized(Quantized::fit(CLIP, 8, 3)));
    let unpacked = words(UpdateEncoding::Fixed(FixedPoint {
        clip: CLIP,
        fractional_bits: 16,
    }));
    assert_eq!(unpacked - packed, (params - params.div_ceil(4)) as u64);
    for (node, (q, f)) in quantised_inputs.iter().zip(&fixed_inputs).enumerate() {
        assert_eq!(q.len(), ROUNDS as usize, "node {node}: {q:?}");
        for (&(round, bytes), &(_, fixed_bytes)) in q.iter().zip(f) {
            assert!(
                (4 * packed..4 * packed + 64).contains(&bytes),
                "node {node} round {round}: {bytes} bytes for {packed} words"
            );
            assert!(
                (4 * unpacked..4 * unpacked + 64).contains(&fixed_bytes),
                "node {node} round {round}: {fixed_bytes} bytes for {unpacked} words"
            );
        }
    }
}
