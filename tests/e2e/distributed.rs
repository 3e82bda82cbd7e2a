//! Distributed DP under secure aggregation (`[task.distributed_dp]`, `[privacy] mode =
//! "distributed"`): each hospital adds its share of one DP-FedSGD step's noise before masking,
//! records the central and the local guarantee before anything leaves, and the coordinator
//! divides the decoded sum by the public `q·N`.

use medfed_coordinator::config::DistributedDpConfig;
use medfed_e2e::{Consortium, subscribe, tolerate_dropouts};
use medfed_node::config::{
    CrashPoint, EvaluationNoiseConfig, NoiseMultiplier, PrivacyConfig, PrivacyMode,
    StatisticsNoiseConfig,
};
use medfed_node::egress::EgressLog;
use medfed_node::ledger::{PrivacyLedger, Release, epsilon_of, local_epsilon_of};
use medfed_protocol::accounting::{self, Accountant, Mechanism};

/// A hospital in distributed mode: the central ε is capped at 50, the local one not.
pub(crate) fn distributed_policy() -> PrivacyConfig {
    PrivacyConfig {
        target_epsilon: 50.0,
        delta: 1e-5,
        // Not used in distributed mode: the task's noise multiplier is.
        noise_multiplier: NoiseMultiplier::Fixed(1.0),
        max_grad_norm: 1.0,
        accountant: Accountant::Rdp,
        // Exact evaluation counts: the ledger holds the statistics and the training rounds.
        evaluation: EvaluationNoiseConfig::exact(),
        // Noised statistics: their pooled example count is the coordinator's public N.
        statistics: StatisticsNoiseConfig::default(),
        mode: PrivacyMode::Distributed,
        max_local_epsilon: None,
    }
}

/// q = 0.2, z = 1, C = 1, threshold `t` of at most 3.
pub(crate) fn plan(threshold: usize) -> DistributedDpConfig {
    DistributedDpConfig {
        sample_rate: 0.2,
        noise_multiplier: 1.0,
        clip_norm: 1.0,
        threshold,
        max_nodes: 3,
        scale: None,
        rounding_beta: None,
    }
}

/// The messages a node may send: none but the secure aggregation's carries a figure.
const NODE_MESSAGES: [&str; 8] = [
    "hello",
    "model_received",
    "secagg_keys",
    "secagg_shares",
    "secagg_input",
    "secagg_signature",
    "secagg_unmask_shares",
    "finished",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_distributed_task_learns_and_every_ledger_holds_both_guarantees_of_each_round() {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 200);
    let rounds = 40;
    let mut config = consortium.coordinator_config(rounds, 3);
    config.task.distributed_dp = Some(plan(3));
    // One DP-FedSGD step a round: the mean clipped gradient over q·N, times the rate.
    config.task.training.learning_rate = 0.5;
    let initial = consortium.signed_manifest(&config);
    assert!(initial.manifest.distributed_dp.is_some());
    let (report, nodes) = consortium
        .train_with(config, &names, |node| {
            node.privacy = Some(distributed_policy());
        })
        .await;
    assert_eq!(report.rounds.len() as u64, rounds);
    for round in &report.rounds {
        assert_eq!(round.participants, names.map(String::from).to_vec());
    }

    // The model learns: the final model's pooled held-out loss is below the initial model's,
    // and its AUC well above chance and the initial model's (five runs: loss 0.71 to
    // 0.53–0.62, AUC 0.41–0.43 to 0.84; the loss is not monotone round to round).
    let first = report.rounds[0]
        .start_model_evaluation
        .clone()
        .expect("round 1 evaluates the initial model");
    let last = report.final_evaluation.clone().expect("final evaluation");
    eprintln!(
        "distributed DP: initial loss {:.4} AUC {:?}, final loss {:.4} AUC {:?}",
        first.loss, first.auc, last.loss, last.auc
    );
    assert!(last.loss < first.loss - 0.03, "{first:?} then {last:?}");
    let (first_auc, last_auc) = (first.auc.unwrap(), last.auc.unwrap());
    assert!(
        last_auc > 0.7 && last_auc > first_auc + 0.2,
        "{first:?} then {last:?}"
    );

    for (name, node) in names.iter().zip(&nodes) {
        let ledger = PrivacyLedger::read(&node.state_dir).unwrap();
        // One distributed entry a round, with both mechanisms, and no local DP-SGD.
        let distributed: Vec<_> = ledger
            .iter()
            .filter(|e| e.release == Release::DistributedTraining)
            .collect();
        assert_eq!(
            distributed.iter().map(|e| e.round).collect::<Vec<_>>(),
            (1..=rounds).collect::<Vec<_>>()
        );
        assert!(ledger.iter().all(|e| e.release != Release::Training));
        for entry in &distributed {
            let summands = |m: &[Mechanism]| match m {
                [
                    Mechanism::DistributedDiscreteGaussian {
                        summands,
                        sample_rate,
                        steps: 1,
                        ..
                    },
                ] if *sample_rate == 0.2 => *summands,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(summands(&entry.mechanisms), 3, "the sum of t shares");
            assert_eq!(summands(&entry.local_mechanisms), 1, "this node's share");
            let local = entry.local_epsilon_after.expect("the local ε is recorded");
            assert!(local > entry.epsilon_after, "{name}: {entry:?}");
        }
        // The reported (central) ε is the composition of the ledger's entries recomputed from
        // their mechanisms; the local one swaps in each round's share alone and is larger.
        let mechanisms: Vec<Mechanism> = ledger
            .iter()
            .flat_map(|e| e.mechanisms().into_owned())
            .collect();
        let central = accounting::epsilon(Accountant::Rdp, &mechanisms, 1e-5).unwrap();
        assert_eq!(
            central,
            epsilon_of(&ledger, &[], Accountant::Rdp, 1e-5).unwrap()
        );
        let last_entry = ledger.last().unwrap();
        assert!((last_entry.epsilon_after - central).abs() < 1e-9 * central);
        let declared = report
            .rounds
            .last()
            .unwrap()
            .privacy
            .iter()
            .find(|p| p.node == *name)
            .map(|p| p.epsilon)
            .expect("the node declares its ε");
        let before_final: Vec<_> = ledger
            .iter()
            .filter(|e| e.round <= rounds)
            .cloned()
            .collect();
        let at_last_round = epsilon_of(&before_final, &[], Accountant::Rdp, 1e-5).unwrap();
        assert!(
            (declared - at_last_round).abs() < 1e-9 * at_last_round,
            "{name}: declared {declared}, ledger {at_last_round}"
        );
        let local = local_epsilon_of(&ledger, &[], Accountant::Rdp, 1e-5).unwrap();
        assert!(
            (last_entry.local_epsilon_after.unwrap() - local).abs() < 1e-9 * local,
            "{name}"
        );
        assert!(local > central, "{name}: local {local}, central {central}");
        eprintln!("{name}: central ε {central:.4}, local ε {local:.4}");

        // Nothing that left the node carried figures outside the secure aggregation's input.
        let egress = EgressLog::read(&node.state_dir).unwrap();
        for entry in &egress {
            assert!(
                NODE_MESSAGES.contains(&entry.kind.as_str()),
                "{name} sent {}",
                entry.kind
            );
        }
        let inputs = egress.iter().filter(|e| e.kind == "secagg_input").count() as u64;
        assert_eq!(inputs, 1 + rounds + 1, "{name}: statistics, rounds, final");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_completes_with_threshold_survivors_when_a_hospital_drops_before_its_input() {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 120);
    let mut config = consortium.coordinator_config(2, 2);
    config.task.distributed_dp = Some(plan(2));
    config.task.start_nodes = Some(3);
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let configs: Vec<_> = names
        .iter()
        .map(|name| {
            let mut node = consortium.node_config(name, addr);
            tolerate_dropouts(&mut node);
            node.privacy = Some(distributed_policy());
            // c drops out of round 1 after the masks are set up (keys and shares sent), before
            // its masked input: the sum is over a and b alone, t = 2 of them.
            if *name == "hospital-c" {
                node.danger_crash_after = Some(CrashPoint {
                    round: 1,
                    after: "secagg_shares",
                });
            }
            node
        })
        .collect();
    let handles: Vec<_> = configs
        .iter()
        .map(|c| consortium.spawn_node(c.clone()))
        .collect();
    let report = coordinator
        .wait()
        .await
        .expect("the rounds complete with two survivors");
    for handle in handles {
        let _ = handle.await.unwrap();
    }
    assert_eq!(report.rounds.len(), 2);
    for round in &report.rounds {
        assert_eq!(round.participants, ["hospital-a", "hospital-b"]);
    }
    // The dropped hospital's share never left: nothing charged for round 1. The survivors
    // charged one distributed entry each round.
    let distributed_rounds = |i: usize| -> Vec<u64> {
        PrivacyLedger::read(&configs[i].state_dir)
            .unwrap()
            .iter()
            .filter(|e| e.release == Release::DistributedTraining)
            .map(|e| e.round)
            .collect()
    };
    assert_eq!(distributed_rounds(0), [1, 2]);
    assert_eq!(distributed_rounds(1), [1, 2]);
    assert!(distributed_rounds(2).is_empty());
}

#[test]
fn a_hospital_in_distributed_mode_declines_a_round_of_a_task_that_is_not_distributed() {
    use medfed_e2e::{allow_plaintext, round_one_by_hand};
    use medfed_node::trainer::{ComputeDevice, TchTrainer};
    use medfed_protocol::messages::{DeclineReason, Message, PolicyViolation};

    let consortium = Consortium::new(&["hospital-a"], 80);
    let task = consortium.coordinator_config(1, 1).task;
    let mut config = consortium.node_config("hospital-a", "127.0.0.1:9".parse().unwrap());
    // In the clear and alone, so that only the mode can refuse the round.
    allow_plaintext(&mut config);
    config.privacy = Some(distributed_policy());
    let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
    let mut hospital = medfed_node::prepare_node(&config, Box::new(trainer)).unwrap();
    // No distributed manifest approved: the round is a local one.
    let start = round_one_by_hand(&mut hospital, &task, "hospital-a");
    match hospital.handle_round(&start) {
        Message::Declined(d) => assert_eq!(
            d.reason,
            DeclineReason::Policy(PolicyViolation::PrivacyMode {
                node: PrivacyMode::Distributed,
                task: PrivacyMode::Local,
            })
        ),
        other => panic!("a distributed node must decline a local round, got {other:?}"),
    }
    assert!(PrivacyLedger::read(&config.state_dir).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_declines_the_round_that_would_pass_its_local_cap_and_training_stops() {
    use medfed_e2e::SCHEMA;
    use medfed_node::config::DEFAULT_STATISTICS_NOISE;
    use medfed_protocol::schema::Schema;
    use medfed_protocol::stats_release::StatisticsNoise;

    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 120);
    let mut config = consortium.coordinator_config(3, 3);
    config.task.distributed_dp = Some(plan(3));
    // The local ε after the statistics and one round, and after two: the cap lies between.
    let manifest = consortium.signed_manifest(&config).manifest;
    let params = manifest.distributed_params().unwrap().unwrap();
    let statistics = StatisticsNoise::new(DEFAULT_STATISTICS_NOISE)
        .unwrap()
        .mechanisms(&Schema::parse(SCHEMA).unwrap());
    let local_after = |rounds: u64| {
        let mut all = statistics.clone();
        all.push(params.local_mechanism(0.2, rounds));
        accounting::epsilon(Accountant::Rdp, &all, 1e-5).unwrap()
    };
    let cap = (local_after(1) + local_after(2)) / 2.0;
    let (report, nodes) = consortium
        .train_with(config, &names, |node| {
            let mut policy = distributed_policy();
            policy.max_local_epsilon = Some(cap);
            node.privacy = Some(policy);
        })
        .await;
    assert_eq!(report.rounds.len(), 1, "{report:?}");
    assert!(report.stopped_early.is_some());
    for node in &nodes {
        let ledger = PrivacyLedger::read(&node.state_dir).unwrap();
        let rounds: Vec<u64> = ledger
            .iter()
            .filter(|e| e.release == Release::DistributedTraining)
            .map(|e| e.round)
            .collect();
        assert_eq!(rounds, [1]);
        let local = local_epsilon_of(&ledger, &[], Accountant::Rdp, 1e-5).unwrap();
        assert!((local - local_after(1)).abs() < 1e-9 * local && local <= cap);
    }
}
