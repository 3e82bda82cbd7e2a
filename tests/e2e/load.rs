//! The load harness in miniature: 20 light nodes (no libtorch) through one SecAgg+ round with 6
//! neighbours each. The light trainer's perturbations are known, so the round's FedAvg is known:
//! the coordinator's unmasked sum must give it to the fixed point's resolution.
//! `scripts/load` runs the full-size version (100 nodes, 10^5 parameters).

use medfed_e2e::load::{expected_fedavg, spawn_light_node};
use medfed_e2e::{Consortium, SCHEMA, subscribe, synthetic_csv};
use medfed_protocol::model::ModelSpec;
use medfed_protocol::schema::Schema;
use medfed_protocol::secagg::encoding::UpdateEncoding;

const NODES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_light_nodes_finish_a_secagg_plus_round_with_the_predicted_fedavg() {
    subscribe();
    let names: Vec<String> = (1..=NODES).map(|i| format!("node-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let consortium = Consortium::new(&refs, 4);
    // Different sizes, so that the example weighting shows in the average.
    for (i, name) in names.iter().enumerate() {
        std::fs::write(
            consortium.csv(name),
            synthetic_csv(16 + 2 * i, i as u64 + 1),
        )
        .unwrap();
    }
    let mut config = consortium.coordinator_config(1, NODES);
    config.secure_aggregation.neighbours = Some(6);
    let spec = ModelSpec::from_config(
        config.task.model.clone(),
        Schema::parse(SCHEMA).unwrap().num_features(),
    )
    .expect("the task's model");
    let initial = spec.initial_parameters(config.task.seed);
    let UpdateEncoding::Fixed(fixed) = config.secure_aggregation.update_encoding(NODES) else {
        panic!("the default update encoding is a fixed point");
    };
    let resolution = 0.5f64.powi(fixed.fractional_bits as i32);

    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let mut nodes = Vec::new();
    let mut weights = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let site = i as u64 + 1;
        let (task, examples) =
            spawn_light_node(consortium.node_config(name, addr), site).expect("node starts");
        nodes.push(task);
        weights.push((site, examples));
    }
    let report = coordinator.wait().await.expect("training completes");
    for node in nodes {
        node.await.expect("node task").expect("node finishes");
    }

    let round = &report.rounds[0];
    assert_eq!(round.participants.len(), NODES, "{:?}", round.dropped);
    assert!(round.dropped.is_empty(), "{:?}", round.dropped);
    let expected = expected_fedavg(&initial, &weights);
    // Each node's update is rounded (stochastically) to the fixed point, so the weighted mean is
    // within one step of it; a mask left in the sum, or a node missing, is far off.
    let worst = report
        .final_model
        .params
        .iter()
        .zip(&expected)
        .map(|(got, want)| f64::from(got - want).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= resolution + 1e-6,
        "largest deviation from the predicted FedAvg: {worst} (fixed-point step {resolution})"
    );
    assert_ne!(report.final_model.params, initial, "the model moved");
}
