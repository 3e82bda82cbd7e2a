//! Each hospital owns its privacy budget: it declines the round that would exceed it, and its
//! ledger survives a restart.

use medfed_e2e::{
    Consortium, allow_plaintext, dp_sgd_policy, round_one_by_hand, subscribe, tolerate_dropouts,
};
use medfed_node::config::{
    EvaluationNoiseConfig, NoiseMultiplier, PrivacyConfig, PrivacyMode, StatisticsNoiseConfig,
};
use medfed_node::ledger::PrivacyLedger;
use medfed_node::trainer::{ComputeDevice, TchTrainer};
use medfed_protocol::accounting::Accountant;
use medfed_protocol::evaluation::ScoreBins;
use medfed_protocol::messages::{DeclineReason, Message, RoundStart};
use medfed_protocol::model::{Model, ModelSpec};
use medfed_protocol::privacy::epsilon;
use medfed_protocol::stats::Standardization;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_declines_the_round_that_would_exceed_its_budget_and_keeps_its_ledger() {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 120);
    let mut config = consortium.coordinator_config(3, 2);
    // Two of three suffice to unmask, so the round goes on when one node declines.
    config.secure_aggregation.threshold = Some(2);
    let task = config.task.clone();
    // hospital-c trains on 90 rows with batches of 16 for 2 epochs: q = 16/90, 2 · round(90/16)
    // = 12 noisy steps a round. Its budget fits one round at σ = 1, not two.
    let (q, steps) = (16.0 / 90.0, 12);
    let one_round = epsilon(q, 1.0, steps, 1e-5).unwrap().0;
    let two_rounds = epsilon(q, 1.0, 2 * steps, 1e-5).unwrap().0;
    let target = 1.1 * one_round;
    assert!(
        two_rounds > target,
        "premise: {one_round} then {two_rounds}"
    );
    let policy = dp_sgd_policy(target);

    let coordinator = consortium.start_coordinator(config).await;
    let console = coordinator.console().clone();
    let addr = coordinator.local_addr();
    let mut c_config = consortium.node_config("hospital-c", addr);
    tolerate_dropouts(&mut c_config);
    c_config.privacy = Some(policy);
    let mut nodes: Vec<_> = names[..2]
        .iter()
        .map(|n| {
            let mut config = consortium.node_config(n, addr);
            tolerate_dropouts(&mut config);
            consortium.spawn_node(config)
        })
        .collect();
    nodes.push(consortium.spawn_node(c_config.clone()));
    let report = coordinator
        .wait()
        .await
        .expect("training goes on without the node out of budget");
    assert_eq!(
        report.rounds[0].participants,
        names.map(String::from).to_vec()
    );
    // The coordinator records what hospital-c declared it has spent; the others train without DP.
    let declared = &report.rounds[0].privacy;
    assert_eq!(declared.len(), 1, "{declared:?}");
    assert_eq!(declared[0].node, "hospital-c");
    assert!((declared[0].epsilon - one_round).abs() < 1e-9 && declared[0].delta == 1e-5);
    for round in &report.rounds[1..] {
        assert_eq!(
            round.participants,
            ["hospital-a", "hospital-b"],
            "round {}",
            round.round
        );
        let (_, why) = round
            .dropped
            .iter()
            .find(|(who, _)| who == "hospital-c")
            .expect("c declined");
        assert!(why.is_budget_spent(), "{why}");
    }
    // The operator's console shows the same: hospital-c's declared ε, its drop-outs by reason,
    // and the count in the metrics.
    let summary = console.summary();
    let c = summary
        .nodes
        .iter()
        .find(|n| n.name == "hospital-c")
        .unwrap();
    assert_eq!(c.rounds_joined, 1);
    assert_eq!(c.epsilon, Some(declared[0].epsilon));
    let declines = summary
        .totals
        .dropouts
        .get("declined")
        .copied()
        .unwrap_or(0);
    assert!(
        declines >= report.rounds.len() as u64 - 1,
        "{:?}",
        summary.totals
    );
    for round in &summary.rounds[1..] {
        assert!(
            round
                .dropped
                .iter()
                .any(|d| d.name == "hospital-c" && d.reason == "declined"),
            "{:?}",
            round.dropped
        );
    }
    assert_eq!(
        medfed_e2e::http::metric(
            &console.render_metrics(),
            "medfed_node_dropouts_total{reason=\"declined\"}"
        ),
        Some(declines as f64)
    );
    for node in nodes {
        node.await.unwrap().unwrap();
    }

    // One release in the ledger, within budget.
    let ledger = PrivacyLedger::read(&c_config.state_dir).unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!((ledger[0].round, ledger[0].steps), (1, steps));
    assert!(
        (ledger[0].epsilon_after - one_round).abs() < 1e-9 && ledger[0].epsilon_after <= target
    );

    // A restarted node reads its ledger back and still refuses to train. It is asked in the
    // clear, which this restart allows, so that only the budget can refuse the round.
    let mut restarted = c_config.clone();
    allow_plaintext(&mut restarted);
    let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
    let mut hospital = medfed_node::prepare_node(&restarted, Box::new(trainer)).unwrap();
    let spent = hospital.privacy_spent().unwrap();
    assert!(
        (spent.epsilon - one_round).abs() < 1e-9 && spent.delta == 1e-5,
        "restart reset the budget: {spent:?}"
    );
    let start = round_one_by_hand(&mut hospital, &task, "hospital-c");
    match hospital.handle_round(&start) {
        Message::Declined(d) => assert_eq!(d.reason, DeclineReason::BudgetSpent),
        other => panic!("a node out of budget must decline, got {other:?}"),
    }
    assert_eq!(PrivacyLedger::read(&c_config.state_dir).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_is_spent_once_the_noised_update_has_left_even_if_the_round_then_fails_for_it() {
    use medfed_node::config::CrashPoint;

    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];
    let consortium = Consortium::new(&names, 100);
    let mut config = consortium.coordinator_config(1, 2);
    config.secure_aggregation.threshold = Some(2);
    // All four must be in round 1, however slowly each connects on a loaded machine.
    config.task.start_nodes = Some(4);
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let policy = dp_sgd_policy(50.0);
    let mut configs = Vec::new();
    for name in names {
        let mut node = consortium.node_config(name, addr);
        tolerate_dropouts(&mut node);
        node.privacy = Some(policy.clone());
        // c stops after sharing its keys: its noised update never leaves. d stops right after
        // sending its masked update: it left, so it is spent.
        node.danger_crash_after = match name {
            "hospital-c" => Some(CrashPoint {
                round: 1,
                after: "secagg_shares",
            }),
            "hospital-d" => Some(CrashPoint {
                round: 1,
                after: "secagg_input",
            }),
            _ => None,
        };
        configs.push(node);
    }
    let nodes: Vec<_> = configs
        .iter()
        .map(|c| consortium.spawn_node(c.clone()))
        .collect();
    let report = coordinator
        .wait()
        .await
        .expect("the round completes with a, b and d's input");
    assert_eq!(
        report.rounds[0].participants,
        ["hospital-a", "hospital-b", "hospital-d"]
    );
    for node in nodes {
        let _ = node.await.unwrap();
    }
    let entries = |i: usize| PrivacyLedger::read(&configs[i].state_dir).unwrap().len();
    assert_eq!((entries(0), entries(1)), (1, 1));
    assert_eq!(entries(2), 0, "an update that never left costs nothing");
    assert_eq!(
        entries(3),
        1,
        "an update that left is spent, though its node crashed"
    );
}

#[test]
fn noised_evaluation_counts_are_charged_to_the_ledger_and_declined_past_the_budget() {
    use medfed_node::ledger::Release;
    use medfed_protocol::eval_release::sensitivity;
    use medfed_protocol::evaluation::{EvalCounts, MAX_EXAMPLE_LOSS};
    use medfed_protocol::fairness::{GROUP_SCORE_BINS, GroupCounts};

    let consortium = Consortium::new(&["hospital-a"], 80);
    let task = consortium.coordinator_config(1, 1).task;
    // The test schema audits sex and age: Δ = √(4 + 2·2). One release at σ = 2 costs the
    // Gaussian mechanism's ε at noise multiplier 2/√8.
    let sigma = 2.0;
    let cost = epsilon(1.0, sigma / sensitivity(2), 1, 1e-5).unwrap().0;
    assert!((sigma / sensitivity(2) - sigma / 8f64.sqrt()).abs() < 1e-12);
    let spec = ModelSpec::from_config(task.model.clone(), 6).expect("the task's model");
    let model = Model::new(spec.clone(), spec.initial_parameters(1)).unwrap();
    let evaluate = |target_epsilon: f64| {
        let mut config = consortium.node_config("hospital-a", "127.0.0.1:9".parse().unwrap());
        config.state_dir = consortium
            .dir
            .path()
            .join(format!("state-{target_epsilon}"));
        config.privacy = Some(PrivacyConfig {
            target_epsilon,
            delta: 1e-5,
            noise_multiplier: NoiseMultiplier::Fixed(1.0),
            max_grad_norm: 1.0,
            accountant: Accountant::Rdp,
            evaluation: EvaluationNoiseConfig {
                noise: sigma,
                loss_clip: MAX_EXAMPLE_LOSS,
            },
            statistics: StatisticsNoiseConfig::exact(),
            mode: PrivacyMode::Local,
            max_local_epsilon: None,
        });
        let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
        allow_plaintext(&mut config);
        let mut hospital = medfed_node::prepare_node(&config, Box::new(trainer)).unwrap();
        hospital.enter_session(5, "hospital-a");
        hospital.accept_model(model.clone(), 5, 1);
        // An evaluation-only round in the clear (secure aggregation off).
        let start = RoundStart {
            session: 5,
            round: 1,
            attempt: 1,
            model_hash: model.hash(),
            train: false,
            evaluate: true,
            score_bins: ScoreBins::FINE,
            decision_threshold: Default::default(),
            plan: task.plan(1),
            standardization: Standardization::identity(6),
            secure_aggregation: None,
        };
        let answer = hospital.handle_round(&start);
        (answer, PrivacyLedger::read(&config.state_dir).unwrap())
    };

    // Below the cost of one release: declined, nothing charged.
    let (answer, ledger) = evaluate(0.9 * cost);
    match answer {
        Message::Declined(d) => assert_eq!(d.reason, DeclineReason::BudgetSpent),
        other => panic!("expected a decline, got {other:?}"),
    }
    assert!(ledger.is_empty());

    // Within budget: the counts leave noised, and their cost is in the ledger first.
    let (answer, ledger) = evaluate(1.1 * cost);
    let Message::Contribution(contribution) = answer else {
        panic!("expected the counts, got {answer:?}");
    };
    assert_eq!(ledger.len(), 1);
    let entry = &ledger[0];
    assert_eq!(entry.release, Release::EvaluationCounts);
    assert_eq!((entry.sample_rate, entry.steps), (1.0, 1));
    assert!((entry.epsilon_after - cost).abs() < 1e-12);
    let declared = contribution
        .privacy
        .expect("the node declares what it spent");
    assert_eq!(declared.epsilon, entry.epsilon_after);
    // Every count is an integer; 20 held-out rows, so n is 20 plus noise.
    let values = contribution.values.to_f64_vec();
    let eval = EvalCounts::from_vector(&values[..EvalCounts::VECTOR_LEN]).unwrap();
    assert!((eval.n - 20.0).abs() <= 8.0 * sigma, "{}", eval.n);
    assert!(
        values[2..EvalCounts::VECTOR_LEN]
            .iter()
            .all(|v| v.fract() == 0.0)
    );
    // The audit groups follow, each with the coarser 100-bin histograms, every cell an integer.
    let groups = &values[EvalCounts::VECTOR_LEN..];
    assert!(!groups.is_empty() && groups.len().is_multiple_of(GroupCounts::VECTOR_LEN));
    assert_eq!(GroupCounts::VECTOR_LEN, 4 + 2 * GROUP_SCORE_BINS);
    assert!(groups.iter().all(|v| v.fract() == 0.0));
}

/// A task that evaluates every other round: the rounds off the schedule release no counts —
/// no ledger entry for them at a hospital that noises its counts, no evaluation in the round's
/// report, no audit report of their starting model, and a smaller masked vector — and each
/// hospital's automatic σ is chosen for the evaluations the schedule makes, not for one a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rounds_off_the_evaluation_schedule_release_no_counts_and_are_not_charged_for_them() {
    check_evaluation_schedule(2, [true, false, true]).await;
}

/// `evaluate_every = "final"`: no training round evaluates; only the final model's counts are
/// released and charged, and σ is planned for that one evaluation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_final_only_schedule_only_the_final_model_is_evaluated_and_charged() {
    use medfed_protocol::manifest::FINAL_EVALUATION_ONLY;

    check_evaluation_schedule(FINAL_EVALUATION_ONLY, [false; 3]).await;
}

/// Trains three rounds evaluating every `every` rounds, at hospitals that noise their counts
/// (the default), and checks what `evaluated` (round by round) says left and was charged.
async fn check_evaluation_schedule(every: u64, evaluated: [bool; 3]) {
    use medfed_node::egress::EgressLog;
    use medfed_node::ledger::Release;

    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 80);
    let mut config = consortium.coordinator_config(3, 3);
    config.task.evaluate_every = every;
    let reports = config.data_dir.join("reports");
    let (report, nodes) = consortium
        .train_with(config, &names, |node| {
            node.privacy = Some(PrivacyConfig {
                target_epsilon: 8.0,
                delta: 1e-5,
                noise_multiplier: NoiseMultiplier::Auto,
                max_grad_norm: 1.0,
                accountant: Accountant::Rdp,
                // The defaults: evaluation counts and statistics noised, the statistics charged
                // once, before round 1.
                evaluation: Default::default(),
                statistics: Default::default(),
                mode: PrivacyMode::Local,
                max_local_epsilon: None,
            });
        })
        .await;
    // A round off the schedule has no pooled figures. (One on it may have none either: the
    // noised pooled count can come out at zero or below, and the report then says "no
    // evaluation data"; what it released is checked below, from the reports and egress logs.)
    for (round, evaluated) in report.rounds.iter().zip(evaluated) {
        assert!(
            evaluated || round.start_model_evaluation.is_none(),
            "round {} is off the schedule but has pooled figures",
            round.round
        );
    }
    // Audit reports of the models the evaluating rounds started from, and of the final one.
    let audited = evaluated.iter().copied().chain([true]);
    for (model_round, audited) in audited.enumerate() {
        let path = reports.join(format!("round-{model_round:05}.json"));
        assert_eq!(path.is_file(), audited, "{}", path.display());
    }
    let evaluation_rounds: Vec<u64> = evaluated
        .iter()
        .chain(&[true])
        .zip(1..)
        .filter_map(|(&e, round)| e.then_some(round))
        .collect();
    for node in &nodes {
        let ledger = PrivacyLedger::read(&node.state_dir).unwrap();
        let charged = |release: Release| -> Vec<u64> {
            ledger
                .iter()
                .filter(|e| e.release == release)
                .map(|e| e.round)
                .collect()
        };
        assert_eq!(charged(Release::Statistics), [0]);
        assert_eq!(charged(Release::Training), [1, 2, 3]);
        assert_eq!(charged(Release::EvaluationCounts), evaluation_rounds);
        // The whole budget is planned for these releases: the last one ends just inside it.
        let last = ledger.last().unwrap().epsilon_after;
        assert!(
            last <= 8.0 && last > 7.5,
            "ε after the final evaluation: {last}"
        );
        let inputs: Vec<(u64, u64)> = EgressLog::read(&node.state_dir)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "secagg_input")
            .filter_map(|e| Some((e.round?, e.bytes)))
            .collect();
        let size = |round: u64| inputs.iter().find(|(r, _)| *r == round).unwrap().1;
        for (round, &evaluates) in (1..).zip(&evaluated) {
            if evaluates {
                continue;
            }
            // A round off the schedule sends a smaller vector than every round that evaluates.
            for &other in evaluation_rounds.iter().filter(|&&r| r <= 3) {
                assert!(
                    size(round) < size(other),
                    "{}: {inputs:?}",
                    node.state_dir.display()
                );
            }
        }
    }
}

#[test]
fn noised_statistics_are_charged_to_the_ledger_counted_per_release_and_declined_past_the_budget() {
    use medfed_e2e::SCHEMA;
    use medfed_node::ledger::Release;
    use medfed_protocol::messages::{ContributionKind, StatsRequest};
    use medfed_protocol::schema::Schema;
    use medfed_protocol::stats::StatsLayout;
    use medfed_protocol::stats_release::sensitivity;

    let consortium = Consortium::new(&["hospital-a"], 80);
    // The test schema has two numeric and two categorical columns: Δ = √(1 + 2·2 + 2). One
    // release at σ costs the Gaussian mechanism's ε at noise multiplier σ/√7.
    let schema = Schema::parse(SCHEMA).unwrap();
    assert_eq!(sensitivity(&schema), 7f64.sqrt());
    let sigma = medfed_node::config::DEFAULT_STATISTICS_NOISE;
    let multiplier = sigma / sensitivity(&schema);
    let cost = epsilon(1.0, multiplier, 1, 1e-5).unwrap().0;
    let twice = epsilon(1.0, multiplier, 2, 1e-5).unwrap().0;
    let thrice = epsilon(1.0, multiplier, 3, 1e-5).unwrap().0;
    assert!(cost < twice && twice < thrice);
    let hospital = |target_epsilon: f64, statistics: StatisticsNoiseConfig| {
        let mut config = consortium.node_config("hospital-a", "127.0.0.1:9".parse().unwrap());
        config.state_dir = consortium
            .dir
            .path()
            .join(format!("state-{target_epsilon}-{}", statistics.noise));
        config.privacy = Some(PrivacyConfig {
            target_epsilon,
            delta: 1e-5,
            noise_multiplier: NoiseMultiplier::Fixed(1.0),
            max_grad_norm: 1.0,
            accountant: Accountant::Rdp,
            evaluation: EvaluationNoiseConfig::exact(),
            statistics,
            mode: PrivacyMode::Local,
            max_local_epsilon: None,
        });
        allow_plaintext(&mut config);
        let trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
        let mut hospital = medfed_node::prepare_node(&config, Box::new(trainer)).unwrap();
        hospital.enter_session(5, "hospital-a");
        (hospital, config.state_dir)
    };
    // Statistics in the clear (secure aggregation off), so that only the budget can refuse.
    let request = StatsRequest {
        session: 5,
        round: 0,
        secure_aggregation: None,
    };

    // Below the cost of one release: declined before anything is computed, nothing charged.
    let (mut poor, state) = hospital(0.9 * cost, StatisticsNoiseConfig::default());
    match poor.handle_stats(&request) {
        Message::Declined(d) => assert_eq!(d.reason, DeclineReason::BudgetSpent),
        other => panic!("expected a decline, got {other:?}"),
    }
    assert!(PrivacyLedger::read(&state).unwrap().is_empty());

    // Within budget: the statistics leave noised, their cost in the ledger first; each release
    // is charged again (a second draw of noise), until the budget is spent.
    let (mut node, state) = hospital((twice + thrice) / 2.0, StatisticsNoiseConfig::default());
    let (train, _) = node.sizes();
    let layout = StatsLayout::of(node.schema());
    let mut counts = Vec::new();
    for (release, epsilon_after) in [(1, cost), (2, twice)] {
        let Message::Contribution(contribution) = node.handle_stats(&request) else {
            panic!("expected the statistics");
        };
        assert_eq!(contribution.kind, ContributionKind::Stats);
        let ledger = PrivacyLedger::read(&state).unwrap();
        assert_eq!(ledger.len(), release);
        let entry = ledger.last().unwrap();
        assert_eq!((entry.round, entry.release), (0, Release::Statistics));
        assert_eq!((entry.sample_rate, entry.steps), (1.0, 1));
        assert!((entry.noise_multiplier - multiplier).abs() < 1e-12);
        assert!((entry.epsilon_after - epsilon_after).abs() < 1e-9);
        let declared = contribution
            .privacy
            .expect("the node declares what it spent");
        assert_eq!(declared.epsilon, entry.epsilon_after);
        let values = contribution.values.to_f64_vec();
        assert_eq!(values.len(), layout.len());
        assert!(values.iter().all(|v| v.fract() == 0.0));
        // n is the training split's size plus noise of σ.
        assert!(
            (values[0] - train as f64).abs() <= 6.0 * sigma,
            "{}",
            values[0]
        );
        counts.push(values[0]);
    }
    // A third release would pass the budget: declined, not charged.
    match node.handle_stats(&request) {
        Message::Declined(d) => assert_eq!(d.reason, DeclineReason::BudgetSpent),
        other => panic!("expected a decline, got {other:?}"),
    }
    assert_eq!(PrivacyLedger::read(&state).unwrap().len(), 2);

    // Exact statistics (noise off) cost nothing and are the same every time.
    let (mut exact, state) = hospital(0.9 * cost, StatisticsNoiseConfig::exact());
    let mut answers = Vec::new();
    for _ in 0..2 {
        let Message::Contribution(contribution) = exact.handle_stats(&request) else {
            panic!("expected the exact statistics");
        };
        assert_eq!(contribution.privacy.map(|p| p.epsilon), Some(0.0));
        answers.push(contribution.values.to_f64_vec());
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0][0], train as f64);
    assert!(PrivacyLedger::read(&state).unwrap().is_empty());
    // Two noised releases of n are two independent draws around it.
    assert!(
        counts
            .iter()
            .all(|n| (n - answers[0][0]).abs() <= 6.0 * sigma)
    );
}

/// Issue 13's accounting rule, end to end: with every release private, as `[privacy]` makes it
/// by default — noised statistics, noised evaluation counts (here on coarse histograms), DP-SGD,
/// and the update weighed by the noised count — every message a node's egress log shows carrying figures derived from its patients has
/// its ledger entries for exactly what it carried, and the ε the node declared is its ledger's
/// entries composed from scratch, under either accountant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_release_private_each_figure_message_is_in_the_ledger_and_the_ledger_recomposes_to_the_declared_epsilon()
 {
    use std::collections::BTreeMap;

    use medfed_node::egress::EgressLog;
    use medfed_node::ledger::{Release, epsilon_of};
    use medfed_node::validation::SiteValidation;

    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 120);
    let rounds = 3;
    let mut config = consortium.coordinator_config(rounds, 3);
    // Rounds 1 and 3 evaluate their starting model, round 2 does not; then the final model.
    config.task.evaluate_every = 2;
    config.task.score_bins = ScoreBins {
        evaluation: 20,
        group: 10,
    };
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let accountants = [Accountant::Rdp, Accountant::Pld, Accountant::Pld];
    let configs: Vec<_> = names
        .iter()
        .zip(accountants)
        .map(|(name, accountant)| {
            let mut node = consortium.node_config(name, addr);
            node.privacy = Some(PrivacyConfig {
                target_epsilon: 20.0,
                delta: 1e-5,
                noise_multiplier: NoiseMultiplier::Auto,
                max_grad_norm: 1.0,
                accountant,
                // The defaults: evaluation counts and statistics noised.
                evaluation: Default::default(),
                statistics: Default::default(),
                mode: PrivacyMode::Local,
                max_local_epsilon: None,
            });
            node
        })
        .collect();
    let nodes: Vec<_> = configs
        .iter()
        .map(|c| consortium.spawn_node(c.clone()))
        .collect();
    let report = coordinator.wait().await.expect("training completes");
    for node in nodes {
        node.await.unwrap().unwrap();
    }
    assert_eq!(report.rounds.len(), rounds as usize);

    // What each round's figures carry: the statistics in round 0; the update (with the
    // weight, the statistics' noised count) and, by the schedule, the evaluation counts in each
    // training round; the final evaluation's counts after the last.
    let carried = |round: u64| -> Vec<Release> {
        match round {
            0 => vec![Release::Statistics],
            r if r <= rounds => {
                let mut kinds = vec![Release::Training];
                if (r - 1) % 2 == 0 {
                    kinds.push(Release::EvaluationCounts);
                }
                kinds
            }
            _ => vec![Release::EvaluationCounts],
        }
    };
    for ((config, accountant), name) in configs.iter().zip(accountants).zip(names) {
        let egress = EgressLog::read(&config.state_dir).unwrap();
        let ledger = PrivacyLedger::read(&config.state_dir).unwrap();
        let figure_rounds: Vec<u64> = egress
            .iter()
            .filter(|e| matches!(e.kind.as_str(), "secagg_input" | "contribution"))
            .map(|e| e.round.expect("a figure message names its round"))
            .collect();
        assert_eq!(
            figure_rounds,
            (0..=rounds + 1).collect::<Vec<_>>(),
            "{name}"
        );
        let mut charged: BTreeMap<u64, Vec<Release>> = BTreeMap::new();
        for entry in &ledger {
            charged.entry(entry.round).or_default().push(entry.release);
            assert_eq!(entry.accountant, accountant, "{name}");
            assert!(!entry.mechanisms.is_empty(), "{name}");
        }
        for round in &figure_rounds {
            assert_eq!(
                charged.remove(round).unwrap_or_default(),
                carried(*round),
                "{name}: round {round}'s figures left with other ledger entries"
            );
        }
        assert!(
            charged.is_empty(),
            "{name}: charged without a release: {charged:?}"
        );
        // The weight is the statistics' noised count: no example count released on its own.
        assert!(ledger[0].released_count.is_some(), "{name}");
        // The hospital's own exact check of every model it was sent (round 1's starting
        // model to the final one), kept on site: one line per model, and no message for it.
        let validation = SiteValidation::read(&config.state_dir).unwrap();
        let checked: Vec<u64> = validation.iter().map(|v| v.round).collect();
        assert_eq!(checked, (1..=rounds + 1).collect::<Vec<_>>(), "{name}");
        assert!(
            validation
                .iter()
                .all(|v| v.counts().is_some_and(|c| c.n > 0.0)),
            "{name}"
        );

        // ε from scratch, entry by entry and in all, is what the node recorded and declared.
        let policy = config.privacy.as_ref().unwrap();
        for i in 0..ledger.len() {
            let recomposed = epsilon_of(&ledger[..=i], &[], accountant, policy.delta).unwrap();
            assert!(
                (recomposed - ledger[i].epsilon_after).abs() <= 1e-9 * recomposed,
                "{name}: entry {i} recorded {} but the ledger composes to {recomposed}",
                ledger[i].epsilon_after
            );
        }
        let total = ledger.last().unwrap().epsilon_after;
        assert!(total <= policy.target_epsilon, "{name}: {total}");
        let last_round = report.rounds.last().unwrap();
        let declared = last_round
            .privacy
            .iter()
            .find(|p| p.node == *name)
            .map(|p| p.epsilon)
            .expect("declared");
        let after_last_round = ledger
            .iter()
            .rfind(|e| e.round == last_round.round)
            .unwrap()
            .epsilon_after;
        assert_eq!(declared, after_last_round, "{name}");
    }
}
