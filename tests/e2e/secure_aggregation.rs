//! Secure aggregation end to end: a node crashes after sharing its keys, and the round still
//! yields exactly the survivors' FedAvg; a node that crashes after sending its masked input stays
//! in the sum, and the counts decode exactly with it.

use std::net::SocketAddr;
use std::path::PathBuf;

use medfed_coordinator::TrainingReport;
use medfed_coordinator::config::TaskConfig;
use medfed_coordinator::store::Store;
use medfed_e2e::{Consortium, allow_plaintext, subscribe};
use medfed_node::config::CrashPoint;
use medfed_node::trainer::{ComputeDevice, TchTrainer};
use medfed_node::{NodeError, NodeOutcome};
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::evaluation::ScoreBins;
use medfed_protocol::messages::{ContributionKind, Message, RoundStart};
use medfed_protocol::model::{Model, ModelSpec};
use medfed_protocol::stats::Standardization;
use tokio::task::JoinHandle;

const NODES: [&str; 4] = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_after_sharing_keys_leaves_the_exact_fedavg_of_the_survivors() {
    let mut run = CrashedRun::start("secagg_shares").await;
    run.hospital_d_crashed().await;
    let report = &run.report;
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

    // Plain FedAvg over the three survivors, each training exactly as it did in the round.
    let (initial, layout, sum) = run.plain_round_sum(&NODES[..3]);
    let weight = layout.decode(&sum).unwrap().update_weight.unwrap();
    let delta = &sum[layout.update_range().unwrap()];
    let expected: Vec<f32> = initial
        .params
        .iter()
        .zip(delta)
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
    run.survivors_finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_after_its_masked_input_stays_in_the_exactly_decoded_counts() {
    let mut run = CrashedRun::start("secagg_input").await;
    run.hospital_d_crashed().await;
    let round = &run.report.rounds[0];
    // Its masked input was summed before it crashed: it is one of the round's participants.
    assert_eq!(round.participants, NODES);

    // The pooled evaluation counts every held-out row of all four nodes: the count encoding's
    // offsets were removed for four inputs (one fewer or more would be off by 2^31).
    let (_, layout, sum) = run.plain_round_sum(&NODES);
    let totals = layout.decode(&sum).unwrap();
    let evaluation = round
        .start_model_evaluation
        .as_ref()
        .expect("the round's starting model is evaluated");
    assert_eq!(evaluation.examples as f64, totals.eval.as_ref().unwrap().n);
    // Counts only: the plain figures carry the loss sum as f32.
    let pooled = totals.eval.as_ref().unwrap().metrics().unwrap();
    assert_eq!(
        (evaluation.accuracy, evaluation.auc, evaluation.prevalence),
        (pooled.accuracy, pooled.auc, pooled.prevalence),
        "pooled evaluation of all four nodes"
    );
    assert!((evaluation.loss - pooled.loss).abs() < 1e-4 * pooled.loss.max(1.0));
    run.survivors_finish().await;
}

/// A one-round secure-aggregation run of `NODES` in which hospital-d crashes right after
/// sending its `after` message of round 1.
struct CrashedRun {
    consortium: Consortium,
    task: TaskConfig,
    state: PathBuf,
    addr: SocketAddr,
    report: TrainingReport,
    /// The nodes' tasks, in `NODES` order (hospital-d's last).
    nodes: Vec<JoinHandle<Result<NodeOutcome, NodeError>>>,
}

impl CrashedRun {
    /// Runs the round to its end (the coordinator's report).
    async fn start(after: &'static str) -> Self {
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
                node.danger_crash_after = Some(CrashPoint { round: 1, after });
            }
            nodes.push(consortium.spawn_node(node));
        }
        let report = coordinator
            .wait()
            .await
            .expect("the round survives the crash");
        Self {
            consortium,
            task,
            state,
            addr,
            report,
            nodes,
        }
    }

    /// Asserts that hospital-d's task ended in its crash.
    async fn hospital_d_crashed(&mut self) {
        let crashed = self.nodes.pop().unwrap().await.unwrap();
        assert!(
            matches!(crashed, Err(NodeError::Crashed { .. })),
            "{crashed:?}"
        );
    }

    /// Waits for the other nodes, which finish normally.
    async fn survivors_finish(self) {
        for node in self.nodes {
            node.await.unwrap().expect("survivor finishes");
        }
    }

    /// Round 1 recomputed in the clear: each of `names` trains on the round's starting model as
    /// it did in the round, and their plain round vectors are summed. Returns that model, the
    /// round vector's layout and the sum.
    fn plain_round_sum(&self, names: &[&str]) -> (Model, RoundLayout, Vec<f64>) {
        let (consortium, task, addr) = (&self.consortium, &self.task, self.addr);
        let standardization: Standardization = Store::open(&self.state)
            .unwrap()
            .get_json("standardization")
            .unwrap()
            .expect("statistics stored");
        let spec = ModelSpec::from_config(task.model.clone(), 6).expect("the task's model");
        let initial = Model::new(spec.clone(), spec.initial_parameters(task.seed)).unwrap();
        let layout = RoundLayout {
            params: initial.params.len(),
            train: true,
            evaluate: true,
            groups: 5,
            bins: ScoreBins::FINE,
            distributed: false,
        };
        let start = RoundStart {
            session: 1,
            round: 1,
            attempt: 1,
            model_hash: initial.hash(),
            train: true,
            evaluate: true,
            score_bins: ScoreBins::FINE,
            decision_threshold: Default::default(),
            plan: task.plan(1),
            standardization,
            secure_aggregation: None,
        };
        let mut sum = vec![0.0; layout.len()];
        for name in names {
            let mut config = consortium.node_config(name, addr);
            allow_plaintext(&mut config);
            let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
            let mut hospital = medfed_node::prepare_node(&config, Box::new(trainer)).unwrap();
            hospital.enter_session(1, name);
            hospital.accept_model(initial.clone(), 1, 1);
            match hospital.handle_round(&start) {
                Message::Contribution(c) if c.kind == ContributionKind::Round => {
                    c.values.add_to(&mut sum);
                }
                other => panic!("{other:?}"),
            }
        }
        (initial, layout, sum)
    }
}
