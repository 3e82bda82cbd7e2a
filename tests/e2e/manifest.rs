//! The signed task manifest: every node checks the coordinator's plan before it joins, and
//! refuses any request that departs from it. The departure is played by a hand-driven
//! coordinator holding the consortium coordinator's real certificate and key.

use std::time::Duration;

use medfed_certs::channel::{MessageReader, send_message, server_endpoint};
use medfed_certs::coordinator_report_key;
use medfed_coordinator::manifest::MANIFEST_FILE;
use medfed_e2e::{Consortium, allow_plaintext, subscribe};
use medfed_node::NodeError;
use medfed_node::egress::EgressLog;
use medfed_node::manifest::ManifestRefusal;
use medfed_protocol::codec::MAX_FRAME_LEN;
use medfed_protocol::manifest::{SignedManifest, TaskManifest};
use medfed_protocol::messages::{
    DeclineReason, Declined, Finished, Message, PolicyViolation, RoundStart, Welcome,
};
use medfed_protocol::model::Model;
use medfed_protocol::stats::Standardization;
use medfed_protocol::transfer::split_model;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

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
    let consortium = Consortium::new(&["hospital-a"], 60);
    let endpoint = server_endpoint(
        &consortium.certs.coordinator_tls(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    // A hospital that takes part alone and in the clear, so that only the manifest stands
    // between the requests below and its figures.
    let mut config = consortium.node_config("hospital-a", addr);
    allow_plaintext(&mut config);
    let node = consortium.spawn_node(config.clone());
    let connection = endpoint.accept().await.unwrap().await.expect("handshake");
    let (mut send, recv) = connection.accept_bi().await.unwrap();
    let hello = MessageReader::new(recv, MAX_FRAME_LEN).expect().await;
    assert!(matches!(hello, Ok(Message::Hello(_))), "{hello:?}");
    // Manifest M: two rounds in the clear, signed with the coordinator's real key.
    let mut plan = consortium.coordinator_config(2, 1);
    plan.secure_aggregation.enabled = false;
    let signed = consortium.signed_manifest(&plan);
    let manifest = signed.manifest.clone();
    let session = 0x3a11;
    send_message(
        &mut send,
        &Message::Welcome(Welcome {
            session,
            identity: "hospital-a".into(),
            manifest: signed,
        }),
    )
    .await
    .unwrap();
    send.finish().unwrap();
    let ask = |request: Message| {
        let connection = connection.clone();
        async move {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            send_message(&mut send, &request).await.unwrap();
            let _ = send.finish();
            tokio::time::timeout(
                Duration::from_secs(60),
                MessageReader::new(recv, MAX_FRAME_LEN).expect(),
            )
            .await
            .expect("the node answers")
            .expect("a well-formed answer")
        }
    };
    let model = Model::new(manifest.model.clone(), manifest.model.initial_parameters(1)).unwrap();
    let (offer, chunks) = split_model(&model, session, 1);
    let (stream, recv) = connection.open_bi().await.unwrap();
    let mut stream = stream;
    send_message(&mut stream, &Message::ModelOffer(offer))
        .await
        .unwrap();
    for chunk in chunks {
        send_message(&mut stream, &Message::ModelChunk(chunk))
            .await
            .unwrap();
    }
    let _ = stream.finish();
    let received = MessageReader::new(recv, MAX_FRAME_LEN)
        .expect()
        .await
        .unwrap();
    assert!(
        matches!(received, Message::ModelReceived(_)),
        "{received:?}"
    );

    let start = |manifest: &TaskManifest, round: u64, attempt: u32| RoundStart {
        session,
        round,
        attempt,
        model_hash: model.hash(),
        train: true,
        plan: manifest.training.plan(round),
        standardization: Standardization::identity(manifest.model.input_dim),
        secure_aggregation: None,
    };
    let departs = |answer: Message| {
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
    };
    // A larger learning rate, a larger batch, a round beyond M's two: each is declined.
    let mut faster = start(&manifest, 1, 1);
    faster.plan.learning_rate *= 10.0;
    departs(ask(Message::RoundStart(faster)).await);
    let mut bigger = start(&manifest, 1, 2);
    bigger.plan.batch_size *= 4;
    departs(ask(Message::RoundStart(bigger)).await);
    departs(ask(Message::RoundStart(start(&manifest, 3, 1))).await);
    // Nothing but the decline left the node for them: no figures, no ledger-worthy release.
    let kinds: Vec<(Option<u64>, String)> = EgressLog::read(&config.state_dir)
        .unwrap()
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
    // The round as M states it is answered.
    let answer = ask(Message::RoundStart(start(&manifest, 1, 3))).await;
    assert!(matches!(answer, Message::Contribution(_)), "{answer:?}");
    let done = ask(Message::Finished(Finished {
        session,
        round: 1,
        model_hash: model.hash(),
    }))
    .await;
    assert!(matches!(done, Message::Finished(_)));
    let outcome = tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .expect("the node stops")
        .unwrap()
        .expect("the node ends well");
    assert_eq!(outcome.manifest, manifest.digest().to_hex());
}
