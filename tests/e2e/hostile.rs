//! Hostile or broken peers: each is refused with a specific reason while the coordinator keeps
//! serving the honest nodes.

use std::time::Duration;

use medfed_certs::channel::{MessageReader, client_endpoint, send_message};
use medfed_e2e::{Consortium, subscribe};
use medfed_protocol::codec::MAX_FRAME_LEN;
use medfed_protocol::messages::{
    Hello, Message, ModelReceived, PROTOCOL_VERSION, RoundKeys, SecAggSetup,
};
use medfed_protocol::schema::Schema;
use medfed_protocol::secagg::KeyAdvertisement;

const HONEST: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// A hand-driven client holding a valid consortium certificate.
async fn connect_raw(
    consortium: &Consortium,
    name: &str,
    addr: std::net::SocketAddr,
) -> quinn::Connection {
    let tls = consortium.certs.node_tls(name).unwrap();
    let endpoint = client_endpoint(&medfed_certs::TlsFiles { crl: None, ..tls }).unwrap();
    endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("handshake with a valid certificate")
}

fn schema_digest(consortium: &Consortium) -> [u8; 32] {
    Schema::parse(&std::fs::read_to_string(&consortium.schema).unwrap())
        .unwrap()
        .digest()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frame_over_the_cap_closes_that_connection_only() {
    subscribe();
    let consortium = Consortium::new(&["hospital-a", "hospital-b", "hospital-c", "mallory"], 100);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(1, 3))
        .await;
    let addr = coordinator.local_addr();

    let mallory = connect_raw(&consortium, "mallory", addr).await;
    let (mut send, _recv) = mallory.open_bi().await.unwrap();
    // A frame header announcing 100 MiB, then some of its bytes.
    send.write_all(&(100u32 << 20).to_be_bytes()).await.unwrap();
    send.write_all(&[0u8; 1024]).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), mallory.closed()).await;
    assert!(
        closed.is_ok(),
        "the coordinator must close a connection that sends an oversized frame"
    );

    let honest: Vec<_> = HONEST
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();
    let report = coordinator.wait().await.expect("honest nodes train");
    assert_eq!(report.rounds[0].participants.len(), 3);
    for node in honest {
        node.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contribution_for_another_round_is_refused_and_the_round_goes_on() {
    subscribe();
    let consortium = Consortium::new(&["hospital-a", "hospital-b", "hospital-c", "mallory"], 100);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(1, 3))
        .await;
    let addr = coordinator.local_addr();

    let mallory = connect_raw(&consortium, "mallory", addr).await;
    let (mut send, recv) = mallory.open_bi().await.unwrap();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        schema_digest: schema_digest(&consortium),
        model_hash: None,
    };
    send_message(&mut send, &Message::Hello(hello))
        .await
        .unwrap();
    send.finish().unwrap();
    let welcome = MessageReader::new(recv, MAX_FRAME_LEN)
        .expect()
        .await
        .unwrap();
    assert!(matches!(welcome, Message::Welcome(_)), "{welcome:?}");

    // Mallory answers every request: it accepts the model, then contributes to the wrong round.
    let mallory_task = tokio::spawn(async move {
        while let Ok((mut send, recv)) = mallory.accept_bi().await {
            let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
            let reply = match reader.expect().await.unwrap() {
                Message::ModelOffer(offer) => {
                    while reader.next().await.unwrap().is_some() {}
                    Message::ModelReceived(ModelReceived {
                        session: offer.session,
                        round: offer.round,
                        hash: offer.hash,
                    })
                }
                Message::StatsRequest(r) => {
                    wrong_round_keys(r.session, r.round, r.secure_aggregation)
                }
                Message::RoundStart(start) => {
                    wrong_round_keys(start.session, start.round, start.secure_aggregation)
                }
                other => other,
            };
            let _ = send_message(&mut send, &reply).await;
            let _ = send.finish();
        }
    });

    let honest: Vec<_> = HONEST
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();
    let report = coordinator
        .wait()
        .await
        .expect("the round completes with the honest nodes");
    let round = &report.rounds[0];
    assert_eq!(round.participants, HONEST.map(String::from).to_vec());
    let (who, why) = round
        .dropped
        .iter()
        .find(|(who, _)| who == "mallory")
        .expect("mallory dropped");
    assert!(why.contains("round 2, expected round 1"), "{who}: {why}");
    for node in honest {
        node.await.unwrap().unwrap();
    }
    mallory_task.abort();
}

#[test]
fn node_refuses_replayed_and_foreign_session_requests() {
    use medfed_node::trainer::{ComputeDevice, TchTrainer};
    use medfed_protocol::messages::{RefusalReason, Refused, RoundStart};
    use medfed_protocol::model::{Model, ModelKind, ModelSpec};
    use medfed_protocol::stats::Standardization;
    use medfed_protocol::task::TrainingPlan;

    let consortium = Consortium::new(&["hospital-a"], 60);
    let config = consortium.node_config("hospital-a", "127.0.0.1:9".parse().unwrap());
    let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
    let mut hospital = medfed_node::prepare(&config, Box::new(trainer)).unwrap();
    let spec = ModelSpec {
        kind: ModelKind::LogisticRegression,
        input_dim: 6,
    };
    let model = Model::new(spec.clone(), spec.initial_parameters(1)).unwrap();
    hospital.enter_session(41, "hospital-a");
    hospital.accept_model(model.clone(), 41, 1);
    let start = RoundStart {
        session: 41,
        round: 1,
        attempt: 1,
        model_hash: model.hash(),
        train: true,
        plan: TrainingPlan::default(),
        standardization: Standardization::identity(6),
        secure_aggregation: None,
    };
    assert!(matches!(
        hospital.handle_round(&start),
        Message::Contribution(_)
    ));
    // The same request again is a replay, and is refused without training.
    assert!(matches!(
        hospital.handle_round(&start),
        Message::Refused(Refused {
            reason: RefusalReason::Replay { round: 1 },
            ..
        })
    ));
    // A request from another coordinator run than the one that welcomed this node.
    let foreign = RoundStart {
        session: 99,
        round: 2,
        attempt: 1,
        ..start.clone()
    };
    assert!(matches!(
        hospital.handle_round(&foreign),
        Message::Refused(Refused {
            reason: RefusalReason::WrongSession {
                got: 99,
                expected: 41
            },
            ..
        })
    ));
    // A request to train a model the node was never sent.
    let unknown = RoundStart {
        round: 3,
        model_hash: medfed_protocol::model::ModelHash([7; 32]),
        ..start
    };
    assert!(matches!(
        hospital.handle_round(&unknown),
        Message::Refused(Refused {
            reason: RefusalReason::BadModel { .. },
            ..
        })
    ));
}

/// Keys advertised for the round after the one asked about.
fn wrong_round_keys(session: u64, round: u64, setup: Option<SecAggSetup>) -> Message {
    let index = setup
        .and_then(|s| s.params.index_of("mallory"))
        .unwrap_or(0);
    Message::SecAggKeys(RoundKeys {
        keys: KeyAdvertisement {
            session,
            round: round + 1,
            index,
            cipher_public: [1; 32],
            mask_public: [2; 32],
            signature: vec![0; 64],
        },
        privacy: None,
    })
}
