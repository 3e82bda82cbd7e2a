//! Hostile or broken peers: each is refused with a specific reason while the coordinator keeps
//! serving the honest nodes. One test per hostile input of issue #6; `docs/RELIABILITY.md`
//! ("Hostile input") maps each to its test.
//!
//! The hostile peers are driven by hand over real QUIC connections with real consortium
//! certificates: "mallory" is an admitted member that misbehaves, and the hand-driven coordinator
//! of `medfed_e2e::attacker`, holding the coordinator's certificate, tests what the node refuses.

use std::net::SocketAddr;
use std::time::Duration;

use medfed_certs::{Role, TlsFiles, Validity, make_request, revoke, sign_request};
use medfed_coordinator::listener::BAD_HELLO;
use medfed_coordinator::{RunningCoordinator, TrainingReport};
use medfed_e2e::attacker::HandCoordinator;
use medfed_e2e::{Consortium, allow_plaintext, subscribe};
use medfed_node::trainer::{ComputeDevice, TchTrainer};
use medfed_node::{NodeError, NodeOutcome};
use medfed_protocol::architecture::{Architecture, LayerSpec, Shape};
use medfed_protocol::codec::{self, MAX_FRAME_LEN};
use medfed_protocol::evaluation::ScoreBins;
use medfed_protocol::messages::{
    DeclineReason, Declined, Hello, Message, ModelChunk, ModelOffer, ModelReceived,
    PROTOCOL_VERSION, RefusalReason, Refused, RoundKeys, RoundStart, SecAggSetup, Welcome,
};
use medfed_protocol::model::{Model, ModelKind, ModelSpec};
use medfed_protocol::round::LeftOut;
use medfed_protocol::schema::Schema;
use medfed_protocol::secagg::{
    ExpectDirectory, KeyAdvertisement, MaskedInput, ParticipantState, RoundParams, ShareDelivery,
    SharePackage,
};
use medfed_protocol::stats::Standardization;
use medfed_protocol::task::TrainingPlan;
use medfed_protocol::transfer::split_model;
use medfed_transport::{MessageReader, client_endpoint, send_message};

const HONEST: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
const WITH_MALLORY: [&str; 4] = ["hospital-a", "hospital-b", "hospital-c", "mallory"];

// ---------------------------------------------------------------------------------------------
// Framing: over the cap, truncated, garbage.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frame_over_the_cap_is_refused_and_the_others_train() {
    // A header announcing 100 MiB, then a little of it.
    let mut bytes = (100u32 << 20).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 1024]);
    refused_framing(bytes, "exceeds the").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncated_frame_is_refused_and_the_others_train() {
    // A header promising 100 bytes, then 10 of them and the end of the stream.
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[1u8; 10]);
    refused_framing(bytes, "stream ended inside a frame").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_bytes_are_refused_and_the_others_train() {
    // A frame of valid length whose body decodes to no message. (Random bytes without a valid
    // header almost always announce a frame over the cap: the test above.)
    let body = b"\xff\xfe garbage, not a medfed message \x00\x01";
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    refused_framing(bytes, "malformed message").await;
}

/// Sends `bytes` where the coordinator expects a frame, twice: first instead of a `Hello` (the
/// connection is closed, the close reason naming the fault), then, from an admitted connection,
/// as the answer to every request (that node is left out of the round with the same reason).
/// The honest nodes train throughout.
async fn refused_framing(bytes: Vec<u8>, fault: &str) {
    subscribe();
    let consortium = Consortium::new(&WITH_MALLORY, 100);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(1, 3))
        .await;
    let addr = coordinator.local_addr();

    let first = connect_raw(&consortium, "mallory", addr).await;
    let (mut send, _recv) = first.open_bi().await.unwrap();
    // The coordinator may stop the stream before all of it is written.
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    let closed = tokio::time::timeout(Duration::from_secs(10), first.closed())
        .await
        .expect("the coordinator closes a connection whose hello is not a valid frame");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, BAD_HELLO.into());
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(reason.contains(fault), "close reason {reason:?}");
        }
        other => panic!("expected an application close, got {other}"),
    }

    let (mallory, _) = admit(&consortium, "mallory", addr).await;
    let mallory = serve(mallory, move |_| bytes.clone());
    let report = honest_nodes_train(&consortium, coordinator).await;
    let why = dropped(&report, "mallory");
    assert!(
        matches!(why, LeftOut::Framing { detail } if detail.contains(fault)),
        "mallory left out because: {why:?}"
    );
    mallory.abort();
}

// ---------------------------------------------------------------------------------------------
// Messages of the wrong round or phase, replays.
// ---------------------------------------------------------------------------------------------

// A message of the right phase for another round is left out with a typed reason in the round
// engine's unit tests (`medfed_protocol::round`, `every_kind_of_bad_answer_…`).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_of_the_wrong_phase_is_refused_and_the_round_goes_on() {
    subscribe();
    let consortium = Consortium::new(&WITH_MALLORY, 100);
    let coordinator = consortium
        .start_coordinator(all_four_from_the_start(&consortium))
        .await;
    let addr = coordinator.local_addr();
    let (mallory, _) = admit(&consortium, "mallory", addr).await;
    let credentials = medfed_node::credentials(&consortium.node_config("mallory", addr)).unwrap();
    // Mallory advertises proper signed keys, then answers the key directory (which asks for
    // encrypted shares) with a masked input, the message of the phase after.
    let mallory = serve(mallory, move |request| {
        frame(&match request {
            Message::ModelOffer(offer) => model_received(&offer),
            Message::StatsRequest(r) => match r.secure_aggregation {
                Some(setup) => {
                    keys_message(round_keys(&setup, "mallory", credentials.signer.as_ref()).1)
                }
                None => decline(r.session, r.round),
            },
            Message::RoundStart(r) => match r.secure_aggregation {
                Some(setup) => {
                    keys_message(round_keys(&setup, "mallory", credentials.signer.as_ref()).1)
                }
                None => decline(r.session, r.round),
            },
            Message::SecAggDirectory(directory) => Message::SecAggInput(MaskedInput {
                session: directory.session,
                round: directory.round,
                values: vec![0; 8],
            }),
            other => other,
        })
    });
    let report = honest_nodes_train(&consortium, coordinator).await;
    assert_eq!(
        *dropped(&report, "mallory"),
        LeftOut::Unexpected {
            got: "secagg_input".into(),
            expected: "secagg_shares".into()
        }
    );
    mallory.abort();

    // The node side: a secure-aggregation step when no secure aggregation is open.
    let config = consortium.node_config("hospital-a", addr);
    let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
    let mut hospital = medfed_node::prepare_node(&config, Box::new(trainer)).unwrap();
    hospital.enter_session(41, "hospital-a");
    let delivery = Message::SecAggDelivery(ShareDelivery {
        session: 41,
        round: 1,
        shares: Vec::new(),
        senders: vec![1, 2, 3],
    });
    match hospital.handle_secagg(&delivery) {
        Message::Refused(Refused {
            reason: RefusalReason::UnexpectedMessage { got, expected },
            ..
        }) => {
            assert_eq!(got, "secagg_delivery");
            assert!(
                expected.contains("no secure aggregation is open"),
                "{expected}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_request_is_refused_by_the_node() {
    subscribe();
    let consortium = Consortium::new(&["hospital-a"], 60);
    let fake = admit_alone(&consortium).await;
    let model = fake.model(1);
    assert!(matches!(
        fake.push(ALONE, &model, 1).await,
        Message::ModelReceived(_)
    ));
    let start = plain_round(&fake, &model);
    assert!(
        matches!(fake.ask(ALONE, &start).await, Message::Contribution(_)),
        "the first request is answered"
    );
    // The same request again, on a new stream of the same connection, is a replay: it is
    // refused without training again.
    match fake.ask(ALONE, &start).await {
        Message::Refused(Refused {
            reason: RefusalReason::Replay { round: 1 },
            ..
        }) => {}
        other => panic!("expected a replay refusal, got {other:?}"),
    }
    // And a request from another coordinator run than the one that welcomed the node.
    let Message::RoundStart(mut foreign) = start else {
        unreachable!()
    };
    foreign.session ^= 1;
    foreign.round = 2;
    match fake.ask(ALONE, &Message::RoundStart(foreign)).await {
        Message::Refused(Refused {
            reason: RefusalReason::WrongSession { .. },
            ..
        }) => {}
        other => panic!("expected a wrong-session refusal, got {other:?}"),
    }
    let outcome = finish_alone(fake, &model).await;
    assert_eq!(outcome.model_hash, model.hash().to_hex());
}

#[test]
fn node_refuses_replayed_and_foreign_session_requests() {
    let consortium = Consortium::new(&["hospital-a"], 60);
    let mut config = consortium.node_config("hospital-a", "127.0.0.1:9".parse().unwrap());
    allow_plaintext(&mut config);
    let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
    let mut hospital = medfed_node::prepare_node(&config, Box::new(trainer)).unwrap();
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
        evaluate: true,
        score_bins: ScoreBins::FINE,
        decision_threshold: Default::default(),
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
    // A model pushed under another session is not kept.
    let other = Model::new(spec.clone(), spec.initial_parameters(2)).unwrap();
    assert!(matches!(
        hospital.accept_model(other, 99, 2),
        Message::Refused(Refused {
            reason: RefusalReason::WrongSession { .. },
            ..
        })
    ));
    assert_eq!(hospital.model_hash(), Some(model.hash()));
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

// ---------------------------------------------------------------------------------------------
// Identity.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_claiming_another_identity_is_refused() {
    subscribe();
    let consortium = Consortium::new(&WITH_MALLORY, 100);
    let coordinator = consortium
        .start_coordinator(all_four_from_the_start(&consortium))
        .await;
    let addr = coordinator.local_addr();
    // `Hello` names nobody: the identity is the certificate's, whatever the node would claim.
    let (mallory, welcome) = admit(&consortium, "mallory", addr).await;
    assert_eq!(welcome.identity, "mallory");
    let credentials = medfed_node::credentials(&consortium.node_config("mallory", addr)).unwrap();
    // Where a message does carry an identity — a participant's index in secure aggregation —
    // mallory advertises its round keys as hospital-a's.
    let mallory = serve(mallory, move |request| {
        let claim = |setup: &SecAggSetup| {
            let (_, mut keys) = round_keys(setup, "mallory", credentials.signer.as_ref());
            keys.index = setup.params.index_of("hospital-a").unwrap();
            keys_message(keys)
        };
        frame(&match request {
            Message::ModelOffer(offer) => model_received(&offer),
            Message::StatsRequest(r) => r
                .secure_aggregation
                .as_ref()
                .map_or_else(|| decline(r.session, r.round), claim),
            Message::RoundStart(r) => r
                .secure_aggregation
                .as_ref()
                .map_or_else(|| decline(r.session, r.round), claim),
            other => other,
        })
    });
    let report = honest_nodes_train(&consortium, coordinator).await;
    let why = dropped(&report, "mallory");
    assert!(
        matches!(why, LeftOut::SecureAggregation { detail }
            if detail.contains("advertised keys under another participant's index")),
        "{why:?}"
    );
    mallory.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_connection_with_the_same_certificate_replaces_the_first() {
    subscribe();
    let consortium = Consortium::new(&HONEST, 100);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(1, 3))
        .await;
    let addr = coordinator.local_addr();
    // A connection holding hospital-a's certificate is admitted as hospital-a …
    let (first, welcome) = admit(&consortium, "hospital-a", addr).await;
    assert_eq!(welcome.identity, "hospital-a");
    // … and when the hospital-a node connects too, the newer connection replaces it (a node
    // that restarted must not wait for its old connection to time out).
    let a = consortium.spawn_node(consortium.node_config("hospital-a", addr));
    let closed = tokio::time::timeout(Duration::from_secs(20), first.closed())
        .await
        .expect("the older connection is closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            assert_eq!(reason, "replaced by a newer connection");
        }
        other => panic!("expected an application close, got {other}"),
    }
    let others: Vec<_> = HONEST[1..]
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();
    let report = coordinator.wait().await.expect("training completes");
    assert_eq!(report.rounds[0].participants, HONEST.map(String::from));
    for node in std::iter::once(a).chain(others) {
        node.await.unwrap().expect("honest node finishes");
    }
}

// ---------------------------------------------------------------------------------------------
// Secure aggregation: shares that fail authentication.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn share_that_fails_authentication_leaves_its_sender_out() {
    // Mallory follows the protocol with the participant state machine, except that it flips a
    // byte of the ciphertext of the share it sends hospital-a.
    let report = train_beside_mallory(|mallory| {
        mallory
            .on_shares(|params, package| {
                for share in &mut package.shares {
                    if Some(share.to) == params.index_of("hospital-a") {
                        share.ciphertext[0] ^= 1;
                    }
                }
            })
            .on_delivery(|honest| {
                // Its masked input comes after hospital-a's report of the bad share: an
                // accusation against a node whose input is already in the running sum is not
                // acted on (the protocol tests cover that case), this one is.
                std::thread::sleep(Duration::from_secs(2));
                (honest.to_vec(), None)
            })
    })
    .await;
    // Hospital-a could not authenticate mallory's share and said whose it was: mallory is left
    // out of the round (its masks removed as a dropout's; the first attempt, which lost both,
    // was restarted without it) and the honest three complete it.
    assert_eq!(
        *dropped(&report, "mallory"),
        LeftOut::ShareAuthentication {
            peer: "hospital-a".into()
        }
    );
    assert_eq!(report.final_evaluation.as_ref().unwrap().examples, 75);
}

// ---------------------------------------------------------------------------------------------
// A masked input's frames: the coordinator holds a few, of a piece's size, whatever the nodes.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masked_input_frame_longer_than_a_piece_is_refused_unread_and_the_others_train() {
    // A header announcing a frame of 2 MiB (four pieces' worth), then a little of it: the
    // coordinator refuses it from the header, before it takes a slot or reads the body.
    let mut bytes = (2u32 << 20).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 1024]);
    let why = mallory_answers_its_delivery_with(move |_| (bytes.clone(), None)).await;
    assert!(
        matches!(&why, LeftOut::Framing { detail } if detail.contains("2097152 bytes exceeds")),
        "mallory left out because: {why:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_stalling_inside_a_piece_is_cut_off_and_the_others_train() {
    // Mallory sends the first 100 bytes of its honest masked input and then nothing for 20 s
    // (the phase deadline is 60 s; after the 20 s its stream ends, inside the frame): the
    // coordinator cuts it off 15 s after giving it a slot, before any piece of it is summed,
    // and sums the honest three.
    let why = mallory_answers_its_delivery_with(|honest| {
        (honest[..100].to_vec(), Some(Duration::from_secs(20)))
    })
    .await;
    assert!(
        matches!(&why, LeftOut::Connection { detail } if detail.contains("took over 15 s")),
        "mallory left out because: {why:?}"
    );
}

/// Mallory follows the protocol until its share delivery, which it answers with what `answer`
/// makes of its honest masked input's frame; the honest three train. Returns why mallory was
/// left out.
async fn mallory_answers_its_delivery_with(
    answer: impl FnMut(&[u8]) -> (Vec<u8>, Option<Duration>) + Send + 'static,
) -> LeftOut {
    let report = train_beside_mallory(|mallory| mallory.on_delivery(answer)).await;
    dropped(&report, "mallory").clone()
}

/// The honest three train for a round, with all four members asked from the start, beside a
/// mallory that `configure` gives its hooks. Checks the round never summed a wrong figure: its
/// pooled held-out counts are exactly the honest nodes' (3 × 25).
async fn train_beside_mallory(configure: impl FnOnce(Mallory) -> Mallory) -> TrainingReport {
    subscribe();
    let consortium = Consortium::new(&WITH_MALLORY, 100);
    let coordinator = consortium
        .start_coordinator(all_four_from_the_start(&consortium))
        .await;
    let mallory = configure(Mallory::new(&consortium, coordinator.local_addr()).await).serve();
    let report = honest_nodes_train(&consortium, coordinator).await;
    let start = report.rounds[0].start_model_evaluation.as_ref().unwrap();
    assert_eq!(start.examples, 75);
    mallory.abort();
    report
}

/// What mallory makes of its share package (given the round's parameters).
type SharesHook = Box<dyn FnMut(&RoundParams, &mut SharePackage) + Send>;
/// What mallory answers a share delivery with, given its honest masked input's frame: the bytes
/// to send, and how long to stall after them before ending the stream.
type DeliveryHook = Box<dyn FnMut(&[u8]) -> (Vec<u8>, Option<Duration>) + Send>;

/// An admitted mallory that follows the protocol with the participant state machine, except
/// where a hook changes what it sends.
struct Mallory {
    connection: quinn::Connection,
    credentials: medfed_node::hospital::Credentials,
    shares: SharesHook,
    delivery: DeliveryHook,
}

impl Mallory {
    async fn new(consortium: &Consortium, addr: SocketAddr) -> Self {
        let (connection, _) = admit(consortium, "mallory", addr).await;
        let credentials =
            medfed_node::credentials(&consortium.node_config("mallory", addr)).unwrap();
        Self {
            connection,
            credentials,
            shares: Box::new(|_, _| {}),
            delivery: Box::new(|honest| (honest.to_vec(), None)),
        }
    }

    fn on_shares(
        mut self,
        hook: impl FnMut(&RoundParams, &mut SharePackage) + Send + 'static,
    ) -> Self {
        self.shares = Box::new(hook);
        self
    }

    fn on_delivery(
        mut self,
        hook: impl FnMut(&[u8]) -> (Vec<u8>, Option<Duration>) + Send + 'static,
    ) -> Self {
        self.delivery = Box::new(hook);
        self
    }

    /// Answers the coordinator's requests until the connection ends.
    fn serve(self) -> tokio::task::JoinHandle<()> {
        let Self {
            connection,
            credentials,
            mut shares,
            mut delivery,
        } = self;
        let mut state = ParticipantState::Done;
        let mut params = None;
        serve_stalling(connection, move |request| {
            let mut rng = rand::rng();
            let round = request.round().unwrap_or(0);
            let answer = match request {
                Message::ModelOffer(offer) => Ok(model_received(&offer)),
                Message::StatsRequest(medfed_protocol::messages::StatsRequest {
                    secure_aggregation: Some(setup),
                    ..
                })
                | Message::RoundStart(RoundStart {
                    secure_aggregation: Some(setup),
                    ..
                }) => {
                    let (next, keys) = round_keys(&setup, "mallory", credentials.signer.as_ref());
                    state = ParticipantState::Directory(next);
                    params = Some(setup.params);
                    Ok(keys_message(keys))
                }
                Message::SecAggDirectory(directory) => state
                    .handle_directory(&directory, credentials.verifier.as_ref(), &mut rng)
                    .map(|mut package| {
                        if let Some(params) = &params {
                            shares(params, &mut package);
                        }
                        Message::SecAggShares(package)
                    }),
                Message::SecAggDelivery(request) => {
                    let input = state.handle_delivery(&request).map(Message::SecAggInput);
                    return delivery(&frame(&input.unwrap_or_else(|_| decline(0, round))));
                }
                Message::SecAggConsistency(request) => state
                    .handle_consistency(&request, credentials.signer.as_ref(), &mut |_| Ok(()))
                    .map(Message::SecAggSignature),
                Message::SecAggUnmask(request) => state
                    .handle_unmask(&request, credentials.verifier.as_ref(), &mut |_| Ok(()))
                    .map(Message::SecAggUnmaskShares),
                other => Ok(other),
            };
            (frame(&answer.unwrap_or_else(|_| decline(0, round))), None)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Model transfer: a malformed model chunk, at the node.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_model_chunk_is_refused_by_the_node() {
    subscribe();
    let consortium = Consortium::new(&["hospital-a"], 60);
    let fake = admit_alone(&consortium).await;
    let model = fake.model(1);
    let (offer, chunks) = split_model(&model, fake.session(), 1);
    assert_eq!(chunks.len(), 1);

    let refusal = |answer: Message| match answer {
        Message::Refused(Refused {
            reason: RefusalReason::BadModel { detail },
            ..
        }) => detail,
        other => panic!("expected the model to be refused, got {other:?}"),
    };
    // A chunk out of place.
    let mut misplaced = chunks[0].clone();
    misplaced.index = 1;
    let detail = refusal(send_model(&fake, &offer, &[misplaced]).await);
    assert!(
        detail.contains("chunk 1 arrived, expected chunk 0"),
        "{detail}"
    );
    // A chunk of the wrong length.
    let mut short = chunks[0].clone();
    short.bytes.truncate(short.bytes.len() - 4);
    let detail = refusal(send_model(&fake, &offer, &[short]).await);
    assert!(detail.contains("bytes, expected"), "{detail}");
    // A chunk altered on the way: refused as it arrives, against its digest in the offer.
    let mut tampered = chunks[0].clone();
    tampered.bytes[0] ^= 1;
    let detail = refusal(send_model(&fake, &offer, &[tampered.clone()]).await);
    assert!(
        detail.contains("chunk 0 does not match its digest in the offer"),
        "{detail}"
    );
    // An offer whose digests vouch for the altered chunk: the whole model's hash still does not
    // match the one announced.
    let mut vouching = offer.clone();
    vouching.chunk_digests[0]
        .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &tampered.bytes).as_ref());
    let detail = refusal(send_model(&fake, &vouching, &[tampered]).await);
    assert!(detail.contains("differs from the announced"), "{detail}");
    // An offer of another, enormous architecture is refused before anything is allocated.
    let huge = ModelOffer {
        spec: ModelSpec {
            kind: ModelKind::Mlp {
                hidden: vec![1 << 40],
            },
            input_dim: 1 << 40,
        },
        params: u64::MAX,
        ..offer.clone()
    };
    let detail = refusal(send_model(&fake, &huge, &[]).await);
    assert!(detail.contains("differs from the consortium's"), "{detail}");
    // Nor can the coordinator swap the approved MLP for a declared architecture of the same
    // input, however small.
    let declared = Architecture {
        input: Shape::Features {
            features: offer.spec.input_dim,
        },
        layers: vec![LayerSpec::Linear { out: 1 }],
    };
    let swapped = ModelSpec {
        kind: ModelKind::Layers(Box::new(declared.check().unwrap())),
        ..offer.spec.clone()
    };
    let swapped = Model::new(swapped.clone(), swapped.initial_parameters(1)).unwrap();
    let (swapped_offer, swapped_chunks) = split_model(&swapped, fake.session(), 1);
    let detail = refusal(send_model(&fake, &swapped_offer, &swapped_chunks).await);
    assert!(detail.contains("differs from the consortium's"), "{detail}");
    // An offer that claims to resume a push this node never received: there is no prefix to
    // trust, so nothing is taken on the coordinator's word.
    let resuming = ModelOffer {
        first_chunk: 1,
        ..offer.clone()
    };
    let detail = refusal(send_model(&fake, &resuming, &[]).await);
    assert!(
        detail.contains("resumes at chunk 1 of a model this node holds no part of"),
        "{detail}"
    );

    // The node kept none of them: asked to train on the tampered model, it says it lacks it.
    let mut bad = model.clone();
    bad.params[0] = f32::from_le_bytes({
        let mut b = model.params[0].to_le_bytes();
        b[0] ^= 1;
        b
    });
    let detail = refusal(fake.ask(ALONE, &plain_round(&fake, &bad)).await);
    assert!(detail.contains("does not hold model"), "{detail}");
    // It is still serving: the intact model is accepted and trained on.
    assert!(matches!(
        fake.push(ALONE, &model, 1).await,
        Message::ModelReceived(_)
    ));
    assert!(matches!(
        fake.ask(ALONE, &plain_round(&fake, &model)).await,
        Message::Contribution(_)
    ));
    let outcome = finish_alone(fake, &model).await;
    assert_eq!(outcome.model_hash, model.hash().to_hex());
}

// ---------------------------------------------------------------------------------------------
// Certificates: refused at the TLS handshake.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_a_foreign_ca_certificate_is_refused() {
    refused_while_others_train(
        |c| {
            let foreign = c.dir.path().join("foreign");
            let other = medfed_certs::make_dev_consortium(&foreign, &["intruder".into()]).unwrap();
            // It trusts our coordinator, but its own certificate comes from another CA.
            TlsFiles {
                ca_cert: c.certs.ca_cert.clone(),
                ..other.node_tls("intruder").unwrap()
            }
        },
        // Same CA name, other key: the signature check fails (TLS decrypt_error).
        "another CA",
        "BadSignature",
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
        "TLS alert 44",
        "invalid peer certificate: Revoked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_an_expired_certificate_is_refused() {
    let now = time::OffsetDateTime::now_utc();
    refused_while_others_train(
        |c| {
            intruder_certificate(
                c,
                Validity {
                    not_before: now - time::Duration::days(30),
                    not_after: now - time::Duration::days(1),
                },
            )
        },
        "TLS alert 45",
        "invalid peer certificate: certificate expired",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_a_not_yet_valid_certificate_is_refused() {
    let now = time::OffsetDateTime::now_utc();
    refused_while_others_train(
        |c| {
            intruder_certificate(
                c,
                Validity {
                    not_before: now + time::Duration::days(1),
                    not_after: now + time::Duration::days(30),
                },
            )
        },
        "TLS alert 45",
        "invalid peer certificate: certificate not valid yet",
    )
    .await;
}

/// Starts a consortium of three good nodes plus one whose TLS files come from `intruder`, and
/// checks that the intruder is refused at the handshake — with a TLS alert containing
/// `expected_alert`, and the coordinator's reason in the close containing `reason` — while the
/// three train to the end.
async fn refused_while_others_train(
    intruder: impl FnOnce(&Consortium) -> TlsFiles,
    expected_alert: &str,
    reason: &str,
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
    let good: Vec<_> = HONEST
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();

    match bad.await.unwrap() {
        Err(NodeError::TlsRefused { alert, detail }) => assert!(
            alert.contains(expected_alert) && detail.contains(reason),
            "alert {alert:?}: {detail}"
        ),
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
            .all(|r| r.participants == HONEST.map(String::from))
    );
    for node in good {
        node.await.unwrap().expect("good node finishes");
    }
}

/// A certificate for "intruder" from the consortium CA, valid over `validity`.
fn intruder_certificate(consortium: &Consortium, validity: Validity) -> TlsFiles {
    let site = consortium.dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let csr = make_request(&site, "intruder").unwrap();
    let cert = site.join("intruder.pem");
    sign_request(
        &consortium.certs.dir,
        &csr,
        &cert,
        Role::Node,
        validity,
        &[],
    )
    .unwrap();
    TlsFiles {
        ca_cert: consortium.certs.ca_cert.clone(),
        cert,
        key: site.join("intruder.key"),
        crl: None,
        allow_expired_crl: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// A hand-driven client holding `name`'s consortium certificate.
async fn connect_raw(consortium: &Consortium, name: &str, addr: SocketAddr) -> quinn::Connection {
    let tls = consortium.certs.node_tls(name).unwrap();
    let endpoint = client_endpoint(&TlsFiles { crl: None, ..tls }).unwrap();
    endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("handshake with a valid certificate")
}

/// A hand-driven client that said `Hello` and was welcomed.
async fn admit(
    consortium: &Consortium,
    name: &str,
    addr: SocketAddr,
) -> (quinn::Connection, Welcome) {
    let connection = connect_raw(consortium, name, addr).await;
    let (mut send, recv) = medfed_transport::Connection::from(connection.clone())
        .open_bi()
        .await
        .unwrap();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        schema_digest: schema(consortium).digest(),
        model_hash: None,
        partial_model: None,
    };
    send_message(&mut send, &Message::Hello(hello))
        .await
        .unwrap();
    send.finish().await;
    match MessageReader::new(recv, MAX_FRAME_LEN).expect().await {
        Ok(Message::Welcome(welcome)) => (connection, welcome),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Answers every request on `connection` with the bytes `answer` returns for it (a model
/// offer's chunks are read first), then finishes that stream.
fn serve(
    connection: quinn::Connection,
    mut answer: impl FnMut(Message) -> Vec<u8> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    serve_stalling(connection, move |request| (answer(request), None))
}

/// [`serve`], except that an answer may stall after its bytes, for the time it names, before
/// its stream ends.
fn serve_stalling(
    connection: quinn::Connection,
    mut answer: impl FnMut(Message) -> (Vec<u8>, Option<Duration>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut send, recv)) = connection.accept_bi().await {
            let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
            let Ok(request) = reader.expect().await else {
                continue;
            };
            if matches!(request, Message::ModelOffer(_)) {
                while let Ok(Some(_)) = reader.next().await {}
            }
            let (bytes, stall) = answer(request);
            let _ = send.write_all(&bytes).await;
            if let Some(stall) = stall {
                tokio::time::sleep(stall).await;
            }
            let _ = send.finish();
        }
    })
}

/// Starts the honest nodes, waits for training to end and for each node to finish with the
/// final model; checks that every round summed exactly the honest nodes.
async fn honest_nodes_train(
    consortium: &Consortium,
    coordinator: RunningCoordinator,
) -> TrainingReport {
    let addr = coordinator.local_addr();
    let honest: Vec<_> = HONEST
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();
    let report = coordinator
        .wait()
        .await
        .expect("the round completes with the honest nodes");
    for round in &report.rounds {
        assert_eq!(
            round.participants,
            HONEST.map(String::from),
            "round {}",
            round.round
        );
    }
    for node in honest {
        let outcome = node.await.unwrap().expect("honest node finishes");
        assert_eq!(outcome.model_hash, report.final_model.hash().to_hex());
    }
    report
}

/// Why `who` was left out of the first round.
fn dropped<'a>(report: &'a TrainingReport, who: &str) -> &'a LeftOut {
    report.rounds[0]
        .dropped
        .iter()
        .find(|(name, _)| name == who)
        .map(|(_, why)| why)
        .unwrap_or_else(|| panic!("{who} not left out: {:?}", report.rounds[0].dropped))
}

/// A one-round configuration that waits for mallory and the three honest nodes before its first
/// exchange, so that every exchange has all four, however slowly each connects.
fn all_four_from_the_start(consortium: &Consortium) -> medfed_coordinator::CoordinatorConfig {
    let mut config = consortium.coordinator_config(1, 3);
    config.task.start_nodes = Some(4);
    config
}

fn schema(consortium: &Consortium) -> Schema {
    Schema::parse(&std::fs::read_to_string(&consortium.schema).unwrap()).unwrap()
}

fn frame(message: &Message) -> Vec<u8> {
    codec::frame(message).unwrap()
}

fn model_received(offer: &ModelOffer) -> Message {
    Message::ModelReceived(ModelReceived {
        session: offer.session,
        round: offer.round,
        hash: offer.hash,
    })
}

fn decline(session: u64, round: u64) -> Message {
    Message::Declined(Declined {
        session,
        round,
        reason: DeclineReason::LocalFailure,
    })
}

/// `name`'s first secure-aggregation state and its signed round keys, over a zero input.
fn round_keys(
    setup: &SecAggSetup,
    name: &str,
    signer: &dyn medfed_protocol::secagg::Signer,
) -> (ExpectDirectory, KeyAdvertisement) {
    let params = setup.params.clone();
    let me = params.index_of(name).expect("a participant");
    let input = vec![0; params.vector_len];
    ExpectDirectory::new(params, me, input, signer, &mut rand::rng()).unwrap()
}

fn keys_message(keys: KeyAdvertisement) -> Message {
    Message::SecAggKeys(RoundKeys {
        keys,
        privacy: None,
    })
}

/// The one node of the tests that face the hand-driven coordinator alone.
const ALONE: &str = "hospital-a";

/// A hand-driven coordinator (holding the consortium's coordinator certificate) that admitted
/// hospital-a alone, in the clear: what these tests check is not the hospital's policy.
async fn admit_alone(consortium: &Consortium) -> HandCoordinator<'_> {
    let mut fake = HandCoordinator::bind(consortium);
    // Its plan says so: one hospital, figures in the clear.
    fake.plan_mut().task.min_nodes = 1;
    fake.plan_mut().secure_aggregation.enabled = false;
    let mut config = fake.node_config(ALONE);
    allow_plaintext(&mut config);
    fake.admit(config).await;
    fake
}

/// Round 1 on `model`, attempt 1, training, in the clear.
fn plain_round(fake: &HandCoordinator<'_>, model: &Model) -> Message {
    Message::RoundStart(fake.round_start(model, 1, 1, true, None))
}

/// Offers a model and sends `chunks` on one stream; returns the node's answer.
async fn send_model(
    fake: &HandCoordinator<'_>,
    offer: &ModelOffer,
    chunks: &[ModelChunk],
) -> Message {
    let mut messages = vec![Message::ModelOffer(offer.clone())];
    messages.extend(chunks.iter().cloned().map(Message::ModelChunk));
    fake.exchange(ALONE, &messages).await
}

/// Tells the node training is over and returns how it ended.
async fn finish_alone(fake: HandCoordinator<'_>, model: &Model) -> NodeOutcome {
    let mut outcomes = fake.finish(model).await;
    outcomes
        .remove(ALONE)
        .expect("the node's outcome")
        .expect("the node ends well")
}
