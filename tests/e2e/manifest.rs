//! The signed task manifest: every node checks the coordinator's plan before it joins, and
//! refuses any request that departs from it. The departure is played by the hand-driven
//! coordinator of `medfed_e2e::attacker`, holding the consortium coordinator's real certificate
//! and key.

use std::time::Duration;

use medfed_certs::coordinator_report_key;
use medfed_coordinator::manifest::MANIFEST_FILE;
use medfed_e2e::attacker::{HandCoordinator, SecureExchange};
use medfed_e2e::{Consortium, subscribe};
use medfed_node::NodeError;
use medfed_node::egress::EgressLog;
use medfed_node::manifest::ManifestRefusal;
use medfed_node::trainer::{ComputeDevice, TchTrainer};
use medfed_protocol::manifest::{ManifestError, SignedManifest};
use medfed_protocol::messages::{DeclineReason, Declined, Message, PolicyViolation, RoundStart};

const A: &str = "hospital-a";
const NODES: [&str; 3] = [A, "hospital-b", "hospital-c"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_approves_the_signed_manifest_of_a_normal_run() {
    subscribe();
    let consortium = Consortium::new(&NODES, 120);
    let config = consortium.coordinator_config(2, 3);
    let data_dir = config.data_dir.clone();
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let nodes: Vec<_> = NODES
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();
    let report = coordinator.wait().await.expect("training completes");
    assert_eq!(report.last_round, 2);

    // The coordinator wrote the manifest it sent; it is signed with its certificate's key.
    let text = std::fs::read_to_string(data_dir.join(MANIFEST_FILE)).expect("manifest.json");
    let signed = SignedManifest::from_json(&text).expect("a signed manifest");
    let key = coordinator_report_key(
        &consortium.certs.coordinator.cert,
        &consortium.certs.ca_cert,
    )
    .unwrap();
    let digest = signed.verify(&key).expect("the coordinator's signature");
    assert_eq!(signed.manifest.rounds, 2);
    assert_eq!(signed.manifest.min_nodes, 3);
    assert!(signed.manifest.secure_aggregation.is_some());
    // Every node approved exactly that manifest, and followed it to the end.
    for node in nodes {
        let outcome = node.await.unwrap().expect("node finishes");
        assert_eq!(outcome.manifest, digest.to_hex());
        assert_eq!(outcome.last_round, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_to_join_under_a_manifest_its_policy_rejects() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    // Sums over two hospitals: each would have one other hospital in its sums; the default
    // policy requires two.
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(1, 2))
        .await;
    let config = consortium.node_config("hospital-a", coordinator.local_addr());
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        consortium.spawn_node(config.clone()),
    )
    .await
    .expect("the node stops")
    .unwrap();
    match result {
        Err(NodeError::ManifestRefused(ManifestRefusal::TooFewOtherHospitals {
            min_nodes: 2,
            required: 2,
        })) => {}
        other => panic!("expected the manifest to be refused, got {other:?}"),
    }
    // Nothing but the hello left the node.
    let kinds: Vec<String> = EgressLog::read(&config.state_dir)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["hello"]);
    coordinator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_departure_mid_run_is_refused() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // Manifest M: two rounds over at least three hospitals, secure aggregation with the
    // defaults; every hospital under its default policy approves it.
    coordinator.set_rounds(2);
    coordinator.admit_all(&NODES).await;
    let manifest = coordinator.manifest().manifest;
    let model = coordinator.model(1);
    coordinator.push_all(&model, 1).await;
    let figures = coordinator.round_figures(&model, 1, true);
    let request = |round: u64, attempt: u32, change: &dyn Fn(&mut RoundStart)| {
        let mut start = coordinator.round_start(&model, round, attempt, true, None);
        start.secure_aggregation = Some(coordinator.setup(round, &NODES, &figures));
        change(&mut start);
        Message::RoundStart(start)
    };
    // A larger learning rate, a larger batch, a round beyond M's two: each sum would pass the
    // hospital's policy (members only, two others, threshold above the floor), and each
    // request is declined as a departure from M before anything is computed.
    let departures = [
        request(1, 1, &|s| s.plan.learning_rate *= 10.0),
        request(1, 2, &|s| s.plan.batch_size *= 4),
        request(3, 1, &|_| {}),
    ];
    for departure in &departures {
        let answer = coordinator.ask(A, departure).await;
        assert!(
            matches!(
                answer,
                Message::Declined(Declined {
                    reason: DeclineReason::Policy(PolicyViolation::DepartsFromManifest),
                    ..
                })
            ),
            "expected a departure decline, got {answer:?}"
        );
    }
    // Nothing but the declines left the node for them, and nothing was charged.
    let kinds: Vec<(Option<u64>, String)> = coordinator
        .egress(A)
        .into_iter()
        .map(|e| (e.round, e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (None, "hello".to_owned()),
            (Some(1), "model_received".to_owned()),
            (Some(1), "declined".to_owned()),
            (Some(1), "declined".to_owned()),
            (Some(3), "declined".to_owned()),
        ]
    );
    assert!(coordinator.ledger(A).is_empty());
    // Round 1 as M states it goes through, securely summed.
    let start = coordinator.round_start(&model, 1, 3, true, None);
    assert_eq!(start.plan, manifest.training.plan(1));
    let mut exchange = SecureExchange::round(&coordinator, &model, start, &NODES);
    exchange
        .run(&coordinator)
        .await
        .expect("the planned round is summed");
    let outcomes = coordinator.finish(&model).await;
    for (name, outcome) in outcomes {
        assert_eq!(
            outcome.expect("the node ends well").manifest,
            manifest.digest().to_hex(),
            "{name}"
        );
    }
}

#[test]
fn a_new_manifest_is_checked_from_scratch_and_a_refused_one_leaves_nothing_approved() {
    let consortium = Consortium::new(&NODES, 60);
    let config = consortium.node_config(A, "127.0.0.1:9".parse().unwrap());
    let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
    let mut hospital = medfed_node::prepare_node(&config, Box::new(trainer)).unwrap();
    let key = coordinator_report_key(
        &consortium.certs.coordinator.cert,
        &consortium.certs.ca_cert,
    )
    .unwrap();
    // A first coordinator session's manifest, then a restarted coordinator's other one: each
    // is approved on its own.
    let first = consortium.signed_manifest(&consortium.coordinator_config(2, 3));
    let approved = hospital.approve_manifest(&first, &key).unwrap().digest;
    assert_eq!(hospital.approved_manifest(), Some(approved));
    let second = consortium.signed_manifest(&consortium.coordinator_config(5, 3));
    let replaced = hospital.approve_manifest(&second, &key).unwrap().digest;
    assert_ne!(replaced, approved);
    assert_eq!(hospital.approved_manifest(), Some(replaced));
    // One the policy refuses (sums over two hospitals) leaves none approved: the node answers
    // nothing under the earlier one.
    let small = consortium.signed_manifest(&consortium.coordinator_config(2, 2));
    assert!(matches!(
        hospital.approve_manifest(&small, &key),
        Err(ManifestRefusal::TooFewOtherHospitals { .. })
    ));
    assert_eq!(hospital.approved_manifest(), None);
    // Nor does a manifest whose signature is another manifest's.
    let forged = SignedManifest {
        manifest: second.manifest.clone(),
        signature: first.signature.clone(),
    };
    assert!(matches!(
        hospital.approve_manifest(&forged, &key),
        Err(ManifestRefusal::Manifest(ManifestError::BadSignature))
    ));
    assert_eq!(hospital.approved_manifest(), None);
}
