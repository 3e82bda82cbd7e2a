//! Secure aggregation end to end: a node crashes after sharing its keys, and the round still
//! yields exactly the survivors' FedAvg.

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
