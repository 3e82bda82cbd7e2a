//! Writes seed corpora for every fuzz target from real encoded values: one message of every kind
//! (secure-aggregation messages from an honest round), honest coordinator streams, a model and
//! its chunks, the repository's schema and CSV heads, and a signed report.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus` (run by
//! `scripts/fuzz`); each seed file is named after its content's hash, so reruns add nothing.

use std::path::{Path, PathBuf};

use medfed_fuzz::{
    AcceptAll, NoSigner, ROUND, SESSION, VECTOR_LEN, accept_all, honest_server_ops, put, rng,
    round_params,
};
use medfed_protocol::evaluation::ScoreBins;
use medfed_protocol::codec::frame;
use medfed_protocol::evaluation::EvalMetrics;
use medfed_protocol::fairness::{FairnessReport, PolicyCheck, PolicyOutcome};
use medfed_protocol::messages::{
    Contribution, ContributionKind, DeclineReason, Declined, Finished, Hello, Message, ModelReceived,
    PlainFigures, PrivacySpent, RefusalReason, Refused, RoundKeys, RoundStart, SecAggSetup,
    StatsRequest, Welcome,
};
use medfed_protocol::manifest::{
    Digest32, FractionalBitsRule, MANIFEST_FORMAT, ReleasePlan, SecureAggregationPlan,
    SignedManifest, StrategyRecord, TaskManifest, ThresholdRule, TrainingRule,
};
use medfed_protocol::model::{Model, ModelKind, ModelSpec};
use medfed_protocol::report::{
    AttributeFairness, AuditReport, NodePrivacy, REPORT_FORMAT, SignedReport, file_sha256,
};
use medfed_protocol::secagg::encoding::UpdateEncoding;
use medfed_protocol::secagg::fixed_point::FixedPoint;
use medfed_protocol::secagg::shamir::{SHARE_VALUE_LEN, Share};
use medfed_protocol::secagg::{ExpectDirectory, ExpectKeys, ParticipantState};
use medfed_protocol::stats::Standardization;
use medfed_protocol::task::TrainingPlan;
use medfed_protocol::transfer::split_model;
use ring::signature::Ed25519KeyPair;

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    let messages = every_message();
    let mut stream = Vec::new();
    for message in &messages {
        let bytes = frame(message).unwrap();
        write(&root, "message_decode", &bytes[4..]);
        for selector in [2u8, 3] {
            write(&root, "frame_decoder", &[&[selector][..], &bytes].concat());
        }
        stream.extend(bytes);
    }
    write(&root, "frame_decoder", &[&[3u8][..], &stream].concat());
    write(&root, "frame_decoder", &[&[0x47u8][..], &stream].concat());

    for mode in 0..4u8 {
        let share = Share {
            x: 1,
            y: vec![0; SHARE_VALUE_LEN],
        };
        let mut plaintext = vec![mode];
        put(&(2u16, 1u16, share.clone(), share), &mut plaintext);
        write(&root, "secagg_share_plaintext", &plaintext);
    }

    for (selector, n, threshold, drop) in [
        (0u8, 4, 3, None),
        (0, 4, 3, Some(2)),
        (4, 5, 2, Some(5)),
        (7, 5, 5, None),
    ] {
        let (ops, _) = honest_server_ops(n, threshold, drop);
        let mut bytes = vec![selector];
        for op in &ops {
            put(op, &mut bytes);
        }
        write(&root, "secagg_server", &bytes);
    }

    for spec in [
        ModelSpec {
            kind: ModelKind::LogisticRegression,
            input_dim: 3,
        },
        ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![4, 2] },
            input_dim: 5,
        },
    ] {
        let model = Model::new(spec.clone(), spec.initial_parameters(1)).unwrap();
        let (offer, chunks) = split_model(&model, 7, 2);
        let mut bytes = vec![0u8];
        put(&(offer, chunks), &mut bytes);
        write(&root, "model_transfer", &bytes);
        let mut bytes = vec![1u8];
        put(&(model.spec, model.params), &mut bytes);
        write(&root, "model_transfer", &bytes);
    }

    let schema = std::fs::read(repo.join("config/heart/schema.toml")).unwrap();
    write(&root, "schema_parse", &schema);
    let doc_example = "drop = [\"id\", \"dataset\"]\nsensitive = [\"sex\", \"age\"]\n[label]\ncolumn = \"num\"\npositive = [\"1\", \"2\", \"3\", \"4\"]\nnegative = [\"0\"]\n[[columns]]\nname = \"age\"\ntype = \"numeric\"\n[[columns]]\nname = \"sex\"\ntype = \"categorical\"\nlevels = [\"Female\", \"Male\"]\n";
    write(&root, "schema_parse", doc_example.as_bytes());

    for name in [
        "cleveland.csv",
        "hungary.csv",
        "switzerland.csv",
        "va_long_beach.csv",
    ] {
        let text = std::fs::read_to_string(repo.join("data/heart").join(name)).unwrap();
        let head: Vec<&str> = text.lines().take(12).collect();
        write(
            &root,
            "csv_load",
            format!("{}\n", head.join("\n")).as_bytes(),
        );
    }

    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let mut previous = None;
    for round in 1..=2 {
        let signed = SignedReport::sign(report(round, previous.clone()), &key).unwrap();
        let file = signed.to_json_pretty().unwrap();
        write(&root, "report_verify", &file);
        previous = Some(file_sha256(&file));
    }
}

/// Writes `bytes` into `root/target/<sha256>`.
fn write(root: &Path, target: &str, bytes: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&file_sha256(bytes)[..16]), bytes).unwrap();
}

/// One message of every kind; the secure-aggregation ones from an honest 3-participant round.
fn every_message() -> Vec<Message> {
    let spec = ModelSpec {
        kind: ModelKind::Mlp { hidden: vec![4, 3] },
        input_dim: 5,
    };
    let model = Model::new(spec.clone(), spec.initial_parameters(1)).unwrap();
    let (offer, chunks) = split_model(&model, SESSION, ROUND);
    let params = round_params(3, 2);
    let setup = SecAggSetup {
        params: params.clone(),
        update_encoding: UpdateEncoding::Fixed(FixedPoint {
            clip: 1.0,
            fractional_bits: 16,
        }),
    };
    let mut messages = vec![
        Message::Hello(Hello {
            protocol_version: 1,
            schema_digest: [3; 32],
            model_hash: Some(model.hash()),
            partial_model: None,
        }),
        Message::Welcome(Welcome {
            session: SESSION,
            identity: "hospital-1".into(),
            manifest: SignedManifest {
                manifest: TaskManifest {
                    format: MANIFEST_FORMAT.into(),
                    schema_digest: Digest32([3; 32]),
                    members_digest: Digest32([4; 32]),
                    releases: ReleasePlan::for_task(9, 2, spec.layout().len(), ScoreBins::FINE),
                    model: spec,
                    rounds: 9,
                    min_nodes: 3,
                    training: TrainingRule {
                        local_epochs: 1,
                        learning_rate: 0.05,
                        batch_size: 32,
                        seed_base: 7,
                    },
                    strategy: StrategyRecord {
                        name: "fed_avg".into(),
                        hyper_parameters: [("server_learning_rate".to_owned(), 1.0)].into(),
                    },
                    secure_aggregation: Some(SecureAggregationPlan {
                        neighbours: Some(4),
                        threshold: ThresholdRule::TwoThirdsPlusOne,
                        update_clip: 1024.0,
                        fractional_bits: FractionalBitsRule::Fit,
                        upload_bits: None,
                    }),
                    distributed_dp: None,
                },
                signature: "ab".repeat(64),
            },
        }),
        Message::Refused(Refused {
            session: SESSION,
            round: ROUND,
            reason: RefusalReason::WrongRound {
                got: 2,
                expected: 3,
            },
        }),
        Message::StatsRequest(StatsRequest {
            session: SESSION,
            round: 0,
            secure_aggregation: Some(setup.clone()),
        }),
        Message::ModelOffer(offer),
        Message::ModelChunk(chunks[0].clone()),
        Message::ModelReceived(ModelReceived {
            session: SESSION,
            round: ROUND,
            hash: model.hash(),
        }),
        Message::RoundStart(RoundStart {
            session: SESSION,
            round: ROUND,
            attempt: 1,
            model_hash: model.hash(),
            train: true,
            evaluate: true,
            score_bins: ScoreBins::FINE,
            plan: TrainingPlan::default(),
            standardization: Standardization {
                mean: vec![1.5, 0.0],
                std: vec![2.0, 1.0],
            },
            secure_aggregation: Some(setup),
        }),
        Message::Contribution(Contribution {
            session: SESSION,
            round: ROUND,
            kind: ContributionKind::Round,
            values: PlainFigures::Single(vec![0.5, -1.0, 3e38]),
            privacy: Some(PrivacySpent {
                epsilon: 1.5,
                delta: 1e-5,
            }),
        }),
        Message::Declined(Declined {
            session: SESSION,
            round: ROUND,
            reason: DeclineReason::BudgetSpent,
        }),
        Message::Finished(Finished {
            session: SESSION,
            round: ROUND,
            model_hash: model.hash(),
        }),
    ];

    let mut rng = rng(5);
    let mut server = ExpectKeys::new(params.clone()).unwrap();
    let mut states = Vec::new();
    for index in 1..=3u16 {
        let (state, keys) = ExpectDirectory::new(
            params.clone(),
            index,
            vec![index.into(); VECTOR_LEN],
            &NoSigner,
            &mut rng,
        )
        .unwrap();
        messages.push(Message::SecAggKeys(RoundKeys {
            keys: keys.clone(),
            privacy: None,
        }));
        server.handle_keys(index, keys, vec![index as u8]).unwrap();
        states.push(ParticipantState::Directory(state));
    }
    let (mut server, directory) = server.finish().unwrap();
    messages.push(Message::SecAggDirectory(directory.clone()));
    for (i, state) in states.iter_mut().enumerate() {
        let package = state
            .handle_directory(&directory, &AcceptAll, &mut rng)
            .unwrap();
        messages.push(Message::SecAggShares(package.clone()));
        server.handle_package(i as u16 + 1, package).unwrap();
    }
    let (mut server, deliveries) = server.finish().unwrap();
    for (i, state) in states.iter_mut().enumerate().take(2) {
        let delivery = &deliveries[&(i as u16 + 1)];
        messages.push(Message::SecAggDelivery(delivery.clone()));
        let input = state.handle_delivery(delivery).unwrap();
        messages.push(Message::SecAggInput(input.clone()));
        server.handle_input(i as u16 + 1, &input).unwrap();
    }
    let (mut server, consistency) = server.finish().unwrap();
    messages.push(Message::SecAggConsistency(consistency.clone()));
    for (i, state) in states.iter_mut().enumerate().take(2) {
        let signature = state
            .handle_consistency(&consistency, &NoSigner, &mut accept_all)
            .unwrap();
        messages.push(Message::SecAggSignature(signature.clone()));
        server
            .handle_signature(i as u16 + 1, signature, &AcceptAll)
            .unwrap();
    }
    let (_, request) = server.finish().unwrap();
    messages.push(Message::SecAggUnmask(request.clone()));
    let response = states[0]
        .handle_unmask(&request, &AcceptAll, &mut accept_all)
        .unwrap();
    messages.push(Message::SecAggUnmaskShares(response));
    messages
}

fn report(round: u64, previous: Option<String>) -> AuditReport {
    AuditReport {
        format: REPORT_FORMAT.to_owned(),
        round,
        created_at_ms: 1_700_000_000_000,
        model_sha256: file_sha256(b"model"),
        checkpoint_sha256: Some(file_sha256(b"checkpoint")),
        participants: vec!["hospital-a".to_owned(), "hospital-b".to_owned()],
        absent_members: Vec::new(),
        privacy: vec![NodePrivacy {
            node: "hospital-a".to_owned(),
            epsilon: 1.0 / 3.0,
            delta: 1e-5,
        }],
        evaluation: Some(EvalMetrics {
            examples: 1234,
            loss: 0.456,
            accuracy: 0.8123,
            auc: Some(0.9),
            prevalence: 0.25,
        }),
        not_evaluated: None,
        fairness: vec![AttributeFairness {
            attribute: "sex".to_owned(),
            report: FairnessReport {
                min_count: 20,
                decision_threshold: 0.5,
                groups: Vec::new(),
                disparities: None,
            },
            policy: PolicyOutcome {
                checks: vec![PolicyCheck {
                    name: "max_demographic_parity_difference".to_owned(),
                    threshold: 0.1,
                    value: Some(0.05),
                    passed: true,
                    undefined: None,
                }],
                approved: true,
            },
        }],
        approved: true,
        site_evaluations: Vec::new(),
        previous_report_sha256: previous,
    }
}
