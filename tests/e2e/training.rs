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

/// Blanks declared in the schema are trained on, not refused: blood pressure imputed with the
/// consortium's mean of the present values (and an indicator), smoking's blanks and `NA`s one
/// more level. The statistics round, the nodes' standardisation and training all take them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_train_on_blanks_the_schema_declares_imputed_or_a_level() {
    subscribe();
    let consortium = Consortium::new(&NODES, 240);
    let blanks = consortium.declare_and_blank_missing_values(&NODES);
    assert!(blanks > 90, "{blanks}");

    let (report, _) = consortium
        .train(consortium.coordinator_config(3, 3), &NODES)
        .await;
    assert_eq!(report.last_round, 3);
    assert!(report.rounds.iter().all(|r| r.participants.len() == 3));
    let first = report.rounds[0]
        .start_model_evaluation
        .clone()
        .expect("initial model evaluated");
    let last = report.final_evaluation.clone().expect("final evaluation");
    // Every row kept: a quarter of 3 × 240 held out.
    assert_eq!(last.examples, 180);
    assert!(
        last.loss.is_finite() && last.loss < first.loss,
        "{first:?} → {last:?}"
    );
    assert!(last.auc.unwrap() > 0.7, "{last:?}");
    // Two more inputs than the plain schema: blood pressure's indicator, smoking's level.
    let schema = std::fs::read_to_string(&consortium.schema).unwrap();
    let parsed = medfed_protocol::schema::Schema::parse(&schema).unwrap();
    assert_eq!(parsed.num_features(), 8);
    assert_eq!(report.final_model.spec.input_dim, 8);
}

/// Issue 15, item 6: hospitals name their coordinator by host name (`localhost:PORT` here,
/// resolved by the system's resolver), and the TLS name they expect defaults to that host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_find_the_coordinator_by_its_host_name() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let config = consortium.coordinator_config(1, 3);
    let (report, nodes) = consortium
        .train_with(config, &NODES, |node| {
            let port = node.coordinator.port();
            node.coordinator = format!("localhost:{port}").parse().unwrap();
        })
        .await;
    assert_eq!(report.last_round, 1);
    assert_eq!(report.rounds[0].participants.len(), 3);
    for node in nodes {
        assert_eq!(node.coordinator.host_name(), Some("localhost"));
    }
}
