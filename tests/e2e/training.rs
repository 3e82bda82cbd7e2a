//! Training end to end, and nodes the coordinator must refuse while the others train on.

use medfed_certs::{Role, Validity, make_request, revoke, sign_request};
use medfed_coordinator::checkpoint::read_checkpoint;
use medfed_e2e::{Consortium, subscribe};
use medfed_node::NodeError;

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

/// Starts a consortium of three good nodes plus one whose TLS files come from `intruder`, and
/// checks that the intruder is refused at the handshake while the three train to the end.
async fn refused_while_others_train(
    intruder: impl FnOnce(&Consortium) -> medfed_certs::TlsFiles,
    alert: &str,
) {
    subscribe();
    let consortium = Consortium::new(&["hospital-a", "hospital-b", "hospital-c", "intruder"], 120);
    let intruder_tls = intruder(&consortium);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(2, 3))
        .await;
    let addr = coordinator.local_addr();
    let bad =
        consortium.spawn_node(consortium.node_config_with_tls("intruder", addr, intruder_tls));
    let good: Vec<_> = NODES
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();

    match bad.await.unwrap() {
        Err(NodeError::TlsRefused { alert: got, detail }) => {
            assert!(got.contains(alert), "alert {got:?}: {detail}")
        }
        other => panic!("intruder should be refused at the handshake, got {other:?}"),
    }
    let report = coordinator
        .wait()
        .await
        .expect("training completes without the intruder");
    assert_eq!(report.last_round, 2);
    assert!(
        report
            .rounds
            .iter()
            .all(|r| r.participants.len() == 3 && !r.participants.contains(&"intruder".into()))
    );
    for node in good {
        node.await.unwrap().expect("good node finishes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_a_foreign_ca_certificate_is_refused() {
    refused_while_others_train(
        |c| {
            let foreign = c.dir.path().join("foreign");
            let other = medfed_certs::make_dev_consortium(&foreign, &["intruder".into()]).unwrap();
            // It trusts our coordinator, but its own certificate comes from another CA.
            medfed_certs::TlsFiles {
                ca_cert: c.certs.ca_cert.clone(),
                ..other.node_tls("intruder").unwrap()
            }
        },
        // Same CA name, other key: the signature check fails (TLS decrypt_error).
        "another CA",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_a_revoked_certificate_is_refused() {
    refused_while_others_train(
        |c| {
            let tls = c.certs.node_tls("intruder").unwrap();
            revoke(&c.certs.dir, &tls.cert).unwrap();
            tls
        },
        "revoked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_an_expired_certificate_is_refused() {
    refused_while_others_train(
        |c| {
            let site = c.dir.path().join("site");
            std::fs::create_dir_all(&site).unwrap();
            let csr = make_request(&site, "intruder").unwrap();
            let now = time::OffsetDateTime::now_utc();
            let expired = Validity {
                not_before: now - time::Duration::days(30),
                not_after: now - time::Duration::days(1),
            };
            let cert = site.join("intruder.pem");
            sign_request(&c.certs.dir, &csr, &cert, Role::Node, expired, &[]).unwrap();
            medfed_certs::TlsFiles {
                ca_cert: c.certs.ca_cert.clone(),
                cert,
                key: site.join("intruder.key"),
                crl: None,
            }
        },
        "expired",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_aggregation_can_be_turned_off_explicitly() {
    subscribe();
    let consortium = Consortium::new(&NODES, 120);
    let mut config = consortium.coordinator_config(2, 3);
    config.secure_aggregation.enabled = false;
    let (report, _) = consortium.train(config, &NODES).await;
    assert_eq!(report.last_round, 2);
    assert!(report.rounds.iter().all(|r| r.participants.len() == 3));
}
