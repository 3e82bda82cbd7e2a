//! Training end to end. (Nodes the coordinator must refuse while the others train on are in
//! `hostile.rs`.)

use medfed_audit::checkpoint::read_checkpoint;
use medfed_e2e::{Consortium, allow_plaintext, subscribe};

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_train_a_better_global_model_over_quic() {
    subscribe();
    let consortium = Consortium::new(&NODES, 240);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(4, 3))
        .await;
    let addr = coordinator.local_addr();
    let nodes: Vec<_> = NODES
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();

    let report = coordinator.wait().await.expect("training completes");
    assert_eq!(report.last_round, 4);
    assert_eq!(report.rounds.len(), 4);
    for round in &report.rounds {
        assert_eq!(
            round.participants,
            NODES.map(String::from).to_vec(),
            "round {}",
            round.round
        );
    }
    let first = report.rounds[0]
        .start_model_evaluation
        .clone()
        .expect("initial model evaluated");
    let last = report
        .final_evaluation
        .clone()
        .expect("final model evaluated");
    // Pooled held-out split: a quarter of 3 × 240 rows.
    assert_eq!(last.examples, 180);
    let (auc0, auc1) = (first.auc.unwrap(), last.auc.unwrap());
    assert!(auc1 > auc0 + 0.05 && auc1 > 0.75, "AUC {auc0} → {auc1}");
    assert!(last.loss < first.loss);

    // The checkpoint holds the final model, and every node ended holding it too.
    let (round, model) = read_checkpoint(report.checkpoint.as_ref().unwrap()).expect("checkpoint");
    assert_eq!(round, 4);
    assert_eq!(model, report.final_model);
    for node in nodes {
        let outcome = node.await.unwrap().expect("node finishes");
        assert_eq!(outcome.model_hash, model.hash().to_hex());
        assert_eq!(outcome.last_round, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_aggregation_can_be_turned_off_explicitly() {
    subscribe();
    let consortium = Consortium::new(&NODES, 120);
    let mut config = consortium.coordinator_config(2, 3);
    config.secure_aggregation.enabled = false;
    // Each hospital must agree to it too.
    let (report, _) = consortium.train_with(config, &NODES, allow_plaintext).await;
    assert_eq!(report.last_round, 2);
    assert!(report.rounds.iter().all(|r| r.participants.len() == 3));
}
