//! Secure aggregation end to end: a node crashes after sharing its keys, and the round still
//! yields exactly the survivors' FedAvg; a node that crashes after sending its masked input stays
//! in the sum, and the counts decode exactly with it.

use medfed_coordinator::store::Store;
use medfed_e2e::{Consortium, subscribe};
use medfed_node::config::CrashPoint;
use medfed_node::trainer::{ComputeDevice, TchTrainer};
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::messages::{ContributionKind, Message, RoundStart};
use medfed_protocol::model::{Model, ModelSpec};
use medfed_protocol::stats::Standardization;

const NODES: [&str; 4] = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_after_sharing_keys_leaves_the_exact_fedavg_of_the_survivors() {
    subscribe();
    let consortium = Consortium::new(&NODES, 150);
    let config = consortium.coordinator_config(1, 3);
    let task = config.task.clone();
    let state = config.data_dir.join("state.sqlite");
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let mut nodes = Vec::new();
    for name in NODES {
        let mut node = consortium.node_config(name, addr);
        if name == "hospital-d" {
            node.danger_crash_after = Some(CrashPoint {
                round: 1,
                after: "secagg_shares",
            });
        }
        nodes.push(consortium.spawn_node(node));
    }
    let report = coordinator
        .wait()
        .await
        .expect("the round survives the crash");
    let round = &report.rounds[0];
    assert_eq!(
        round.participants,
        ["hospital-a", "hospital-b", "hospital-c"]
    );
    assert!(
        round.dropped.iter().any(|(who, _)| who == "hospital-d"),
        "{:?}",
        round.dropped
    );
    let crashed = nodes.pop().unwrap().await.unwrap();
    assert!(
        matches!(crashed, Err(medfed_node::NodeError::Crashed { .. })),
        "{crashed:?}"
    );

    // Plain FedAvg over the three survivors, each training exactly as it did in the round.
    let standardization: Standardization = Store::open(&state)
        .unwrap()
        .get_json("standardization")
        .unwrap()
        .expect("statistics stored");
    let spec = ModelSpec {
        kind: task.model.clone().into(),
        input_dim: 6,
    };
    let initial = Model::new(spec.clone(), spec.initial_parameters(task.seed)).unwrap();
    let layout = RoundLayout {
        params: initial.params.len(),
        train: true,
        groups: 5,
    };
    let start = RoundStart {
        session: 1,
        round: 1,
        attempt: 1,
        model_hash: initial.hash(),
        train: true,
        plan: task.plan(1),
        standardization,
        secure_aggregation: None,
    };
    let mut sum = vec![0.0; layout.len()];
    for name in &NODES[..3] {
        let config = consortium.node_config(name, addr);
        let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
        let mut hospital = medfed_node::prepare(&config, Box::new(trainer)).unwrap();
        hospital.enter_session(1, name);
        hospital.accept_model(initial.clone(), 1, 1);
        match hospital.handle_round(&start) {
            Message::Contribution(c) if c.kind == ContributionKind::Round => {
                c.values.add_to(&mut sum);
            }
            other => panic!("{other:?}"),
        }
    }
    let (delta, weight) = layout.decode(&sum).unwrap().update.unwrap();
    let expected: Vec<f32> = initial
        .params
        .iter()
        .zip(&delta)
        .map(|(w, d)| (f64::from(*w) + d / weight) as f32)
        .collect();
    let worst = expected
        .iter()
        .zip(&report.final_model.params)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // Fixed point with 18 fractional bits on n·Δ, divided by Σn ≈ 340: far below 1e-5.
    assert!(
        worst < 1e-5,
        "securely aggregated model differs from plain FedAvg by {worst}"
    );
    assert!(report.final_model.params != initial.params);
    for node in nodes {
        node.await.unwrap().expect("survivor finishes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_after_its_masked_input_stays_in_the_exactly_decoded_counts() {
    subscribe();
    let consortium = Consortium::new(&NODES, 150);
    let config = consortium.coordinator_config(1, 3);
    let task = config.task.clone();
    let state = config.data_dir.join("state.sqlite");
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let mut nodes = Vec::new();
    for name in NODES {
        let mut node = consortium.node_config(name, addr);
        if name == "hospital-d" {
            node.danger_crash_after = Some(CrashPoint {
                round: 1,
                after: "secagg_input",
            });
        }
        nodes.push(consortium.spawn_node(node));
    }
    let report = coordinator
        .wait()
        .await
        .expect("the round survives the crash");
    let round = &report.rounds[0];
    // Its masked input was summed before it crashed: it is one of the round's participants.
    assert_eq!(round.participants, NODES);
    let crashed = nodes.pop().unwrap().await.unwrap();
    assert!(
        matches!(crashed, Err(medfed_node::NodeError::Crashed { .. })),
        "{crashed:?}"
    );

    // The pooled evaluation counts every held-out row of all four nodes: the count encoding's
    // offsets were removed for four inputs (one fewer or more would be off by 2^31).
    let standardization: Standardization = Store::open(&state)
        .unwrap()
        .get_json("standardization")
        .unwrap()
        .expect("statistics stored");
    let spec = ModelSpec {
        kind: task.model.clone().into(),
        input_dim: 6,
    };
    let initial = Model::new(spec.clone(), spec.initial_parameters(task.seed)).unwrap();
    let layout = RoundLayout {
        params: initial.params.len(),
        train: true,
        groups: 5,
    };
    let start = RoundStart {
        session: 1,
        round: 1,
        attempt: 1,
        model_hash: initial.hash(),
        train: true,
        plan: task.plan(1),
        standardization,
        secure_aggregation: None,
    };
    let mut sum = vec![0.0; layout.len()];
    for name in &NODES {
        let config = consortium.node_config(name, addr);
        let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
        let mut hospital = medfed_node::prepare(&config, Box::new(trainer)).unwrap();
        hospital.enter_session(1, name);
        hospital.accept_model(initial.clone(), 1, 1);
        match hospital.handle_round(&start) {
            Message::Contribution(c) if c.kind == ContributionKind::Round => {
                c.values.add_to(&mut sum);
            }
            other => panic!("{other:?}"),
        }
    }
    let totals = layout.decode(&sum).unwrap();
    let evaluation = round
        .start_model_evaluation
        .as_ref()
        .expect("the round's starting model is evaluated");
    assert_eq!(evaluation.examples as f64, totals.eval.n);
    // Counts only: the plain figures carry the loss sum as f32.
    let pooled = totals.eval.metrics().unwrap();
    assert_eq!(
        (evaluation.accuracy, evaluation.auc, evaluation.prevalence),
        (pooled.accuracy, pooled.auc, pooled.prevalence),
        "pooled evaluation of all four nodes"
    );
    assert!((evaluation.loss - pooled.loss).abs() < 1e-4 * pooled.loss.max(1.0));
    for node in nodes {
        node.await.unwrap().expect("survivor finishes");
    }
}
