//! A malicious coordinator against real nodes (issue 12): each test plays one attack with the
//! hand-driven coordinator of `medfed_e2e::attacker`, which holds the consortium's real
//! coordinator certificate (and whose operator runs the consortium CA), and asserts from the
//! nodes' egress logs and privacy ledgers what left them and what did not.

use medfed_e2e::attacker::{ExchangeFailure, HandCoordinator, Puppet, SecureExchange, Step};
use medfed_e2e::{Consortium, subscribe, tolerate_dropouts};
use medfed_node::NodeConfig;
use medfed_node::config::{EvaluationNoiseConfig, NoiseMultiplier, PrivacyConfig, PrivacyMode};
use medfed_node::egress::EgressEntry;
use medfed_node::ledger::Release;
use medfed_node::policy::{Fraction, NodePolicy, SiteFigures};
use medfed_node::trainer::{ComputeDevice, TchTrainer};
use medfed_protocol::accounting::Accountant;
use medfed_protocol::messages::{
    DeclineReason, Declined, Message, PolicyViolation, RoundStart, SiteFigureRequest,
};
use medfed_protocol::model::{Model, ModelKind};
use medfed_protocol::secagg::{SecAggError, SecretKind};
use medfed_protocol::task::TrainingPlan;

const A: &str = "hospital-a";
const B: &str = "hospital-b";
const C: &str = "hospital-c";
const D: &str = "hospital-d";

/// Patients per hospital: 45 to train on, 15 held out.
const ROWS: usize = 60;

// ---------------------------------------------------------------------------------------------
// 1. Plaintext on request.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn figures_asked_for_in_the_clear_never_leave() {
    subscribe();
    let consortium = Consortium::new(&[A], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A]).await;
    let model = coordinator.model(1);
    coordinator.push_all(&model, 1).await;

    // Statistics, a training round and an evaluation round, each without secure aggregation.
    let mut answers = vec![coordinator.ask(A, &coordinator.stats_request(None)).await];
    for (round, train) in [(1, true), (2, false)] {
        let start = coordinator.round_start(&model, round, 1, train, None);
        answers.push(coordinator.ask(A, &Message::RoundStart(start)).await);
    }

    let egress = coordinator.egress(A);
    let clear: Vec<String> = egress
        .iter()
        .filter(|e| e.kind == "contribution")
        .map(|e| format!("round {}: {} bytes", e.round.unwrap_or_default(), e.bytes))
        .collect();
    assert!(
        clear.is_empty(),
        "{A} sent its figures in the clear because the coordinator asked: {clear:?}"
    );
    for round in 0..=2 {
        assert_only_refusals(&egress, round, A);
    }
    for answer in &answers {
        assert_eq!(
            decline_reason(answer),
            Some(&DeclineReason::Policy(PolicyViolation::PlaintextRequested)),
            "{answer:?}"
        );
    }
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Both shares of one victim.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivor_sets_that_differ_between_nodes_get_no_unmasking_share() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C, D], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B, C, D]).await;

    // A threshold of 2 for the victim alone is below its floor (t > 2/3 of 4 holders).
    let figures = coordinator.stats_figures();
    let mut low = coordinator.setup(0, &[A, B, C, D], &figures);
    low.params.threshold = 2;
    let answer = coordinator
        .ask(A, &coordinator.stats_request(Some(low)))
        .await;
    assert_eq!(
        decline_reason(&answer),
        Some(&DeclineReason::Policy(
            PolicyViolation::ThresholdBelowFloor {
                threshold: 2,
                holders: 4
            }
        )),
        "{answer:?}"
    );

    // Honest parameters; then hospital-a and hospital-b are told the victim survived (they
    // would reveal shares of its self-mask seed), hospital-c and hospital-d that it dropped
    // (shares of its mask key).
    let mut exchange = split_survivors(SecureExchange::stats(&coordinator, &[A, B, C, D]));
    let _ = exchange.run(&coordinator).await;
    assert_no_unmasking_share(&coordinator, &exchange);
    // Each signed the set it was told, and was sent fewer than t = 3 signatures on it.
    for node in [A, B, C, D] {
        let answer = first_answer(&exchange, node, Step::Unmask);
        assert_eq!(
            decline_reason(answer),
            Some(&DeclineReason::SecureAggregationAborted),
            "{node} answered {answer:?}"
        );
    }
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_victim_given_its_own_threshold_reveals_nothing() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C, D], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // Every hospital here accepts any threshold the protocol allows, so that only the protocol
    // stands between the coordinator and the victim.
    for name in [A, B, C, D] {
        let mut config = coordinator.node_config(name);
        config.policy.threshold_floor = Fraction {
            numerator: 0,
            denominator: 1,
        };
        coordinator.admit(config).await;
    }
    // The victim alone gets t = 2: two shares of each of its secrets would rebuild it, and the
    // survivor sets are split as above. Since the task manifest states the threshold rule
    // (⌊2h/3⌋+1, so 3 of 4 holders), the victim takes its own threshold for a departure from
    // the plan it approved and declines before it computes anything: no key, no share, no
    // masked figure of it is in the round. (That the signed parameter digest would stop the
    // same attack a step later is the protocol's own test,
    // `regression_issue_12_per_node_parameters_fail_at_the_peers` in `protocol/src/secagg/`.)
    let exchange = SecureExchange::stats(&coordinator, &[A, B, C, D])
        .on_setup(|node, setup| {
            if node == A {
                setup.params.threshold = 2;
            }
        })
        .relay_refused_keys();
    let mut exchange = split_survivors(exchange);
    let _ = exchange.run(&coordinator).await;
    let answer = first_answer(&exchange, A, Step::Request);
    assert_eq!(
        decline_reason(answer),
        Some(&DeclineReason::Policy(PolicyViolation::DepartsFromManifest)),
        "{A} answered {answer:?}"
    );
    assert_eq!(sent_in_round(&coordinator.egress(A), 0), ["declined"]);
    // Nobody holds, or revealed, any share of the victim's secrets.
    for answer in &exchange.answers {
        if let Message::SecAggUnmaskShares(response) = &answer.message {
            assert!(
                response.self_mask_shares.iter().all(|(p, _)| *p != 1)
                    && response.mask_key_shares.iter().all(|(p, _)| *p != 1),
                "{} revealed a share of {A}'s secrets",
                answer.node
            );
        }
    }
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Unverifiable sums.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_unmasking_share_fails_the_sum_instead_of_changing_it() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B, C]).await;
    // hospital-b, malicious, alters its share of hospital-a's self-mask seed.
    let mut exchange =
        SecureExchange::stats(&coordinator, &[A, B, C]).on_answer(|step, node, answer| {
            if let (Step::Unmask, B, Message::SecAggUnmaskShares(response)) = (step, node, answer) {
                for (peer, share) in &mut response.self_mask_shares {
                    if *peer == 1 {
                        share.y[0] ^= 1;
                    }
                }
            }
        });
    let summed = exchange.run(&coordinator).await;
    assert!(
        matches!(
            summed,
            Err(ExchangeFailure::Server(SecAggError::CommitmentMismatch {
                index: 1,
                secret: SecretKind::SelfMaskSeed
            }))
        ),
        "a tampered share gave {:?}",
        summed.map(|sum| format!("a sum with n = {}", sum[0]))
    );
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limb_out_of_range_fails_the_sum_instead_of_changing_it() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B, C]).await;
    let n: usize = [A, B, C]
        .iter()
        .map(|name| training_rows(&coordinator.node_config(name)))
        .sum();
    // hospital-b, malicious, adds 2^20 to the lowest 16-bit limb of its count n (masked words
    // are uniform, so only the sum can show it): n would grow by 16.
    let mut exchange =
        SecureExchange::stats(&coordinator, &[A, B, C]).on_answer(|step, node, answer| {
            if let (Step::Delivery, B, Message::SecAggInput(input)) = (step, node, answer) {
                input.values[0] = input.values[0].wrapping_add(1 << 20);
            }
        });
    let summed = exchange.run(&coordinator).await;
    assert!(
        matches!(
            summed,
            Err(ExchangeFailure::Server(SecAggError::LimbOutOfRange {
                position: 0,
                summed_inputs: 3,
                ..
            }))
        ),
        "a limb out of range gave {:?} (the three hold n = {n})",
        summed.map(|sum| format!("a sum with n = {}", sum[0]))
    );
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Who is in the sum.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_in_the_roster_is_refused_before_anything_is_computed() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B]).await;
    let true_n = training_rows(&coordinator.node_config(A));

    // The operator's CA mints certificates for names outside the consortium, and the
    // coordinator plays them. Each roster gives the victim two other "hospitals".
    let rosters: [(&[&str], &[&str]); 2] = [
        // The whole attack: a sum over the victim and two strangers is the victim's figures.
        (&[A, "stranger", "clinic-x"], &["stranger", "clinic-x"]),
        // A stranger beside a real hospital.
        (&[A, B, "stranger"], &["stranger"]),
    ];
    for (members, puppets) in rosters {
        let (exchange, learnt) =
            run_with_puppets(&coordinator, &consortium, members, puppets).await;
        for node in members.iter().filter(|m| !puppets.contains(m)) {
            let egress = coordinator.egress(node);
            let sent = sent_in_round(&egress, 0);
            assert!(
                sent.iter().all(|kind| is_refusal_kind(kind)),
                "{node} took part in a sum over {members:?} (puppets {puppets:?}): it sent \
                 {sent:?}; the coordinator learnt {}",
                describe_sum(&learnt, puppets.len() + 1 == members.len(), true_n)
            );
            let answer = first_answer(&exchange, node, Step::Request);
            assert!(
                matches!(
                    decline_reason(answer),
                    Some(DeclineReason::Policy(PolicyViolation::NotAMember { identity }))
                        if puppets.contains(&identity.as_str())
                ),
                "{node} answered {answer:?}"
            );
        }
    }
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_key_under_a_members_name_is_refused_at_the_key_directory() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B]).await;
    let true_n = training_rows(&coordinator.node_config(A));

    // The operator's CA mints a second key under real members' names: the roster names only
    // members, so each node learns of the impostor from the certificate in the key directory.
    let rosters: [(&[&str], &[&str]); 2] = [
        // The whole attack: the victim and two impostors.
        (&[A, B, C], &[B, C]),
        // An impostor beside a real hospital.
        (&[A, B, C], &[C]),
    ];
    for (members, puppets) in rosters {
        let (exchange, learnt) =
            run_with_puppets(&coordinator, &consortium, members, puppets).await;
        for node in members.iter().filter(|m| !puppets.contains(m)) {
            let egress = coordinator.egress(node);
            let sent = sent_in_round(&egress, 0);
            // Fresh public keys, signed, are all that may leave before the directory.
            assert!(
                sent.iter()
                    .all(|kind| is_refusal_kind(kind) || *kind == "secagg_keys"),
                "{node} took part in a sum over {members:?} with impostors {puppets:?}: it sent \
                 {sent:?}; the coordinator learnt {}",
                describe_sum(&learnt, puppets.len() + 1 == members.len(), true_n)
            );
            let answer = first_answer(&exchange, node, Step::Directory);
            assert_eq!(
                decline_reason(answer),
                Some(&DeclineReason::SecureAggregationAborted),
                "{node} answered {answer:?}"
            );
        }
    }
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sum_with_too_few_other_hospitals_is_refused() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B]).await;
    let model = coordinator.model(1);
    coordinator.push_all(&model, 1).await;

    // Statistics and an evaluation round over the victim and one other hospital: each learns
    // the other's figures from the sum, and so can the coordinator, given either.
    let mut stats = SecureExchange::stats(&coordinator, &[A, B]);
    let learnt_stats = stats.run(&coordinator).await;
    let start = coordinator.round_start(&model, 1, 1, false, None);
    let mut round = SecureExchange::round(&coordinator, &model, start, &[A, B]);
    let learnt_round = round.run(&coordinator).await;

    for node in [A, B] {
        for exchange in [&stats, &round] {
            let answer = first_answer(exchange, node, Step::Request);
            assert_eq!(
                decline_reason(answer),
                Some(&DeclineReason::Policy(
                    PolicyViolation::TooFewOtherHospitals {
                        others: 1,
                        required: NodePolicy::default().min_other_hospitals,
                    }
                )),
                "{node} answered {answer:?}"
            );
        }
        let egress = coordinator.egress(node);
        for (number, learnt) in [(0, &learnt_stats), (1, &learnt_round)] {
            let sent = sent_in_round(&egress, number);
            assert!(
                sent.iter().all(|kind| is_refusal_kind(kind)),
                "{node} took part in a sum over two hospitals in round {number}: it sent {sent:?}; \
                 the sum was {}",
                if learnt.is_ok() {
                    "unmasked"
                } else {
                    "not unmasked"
                }
            );
        }
    }
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statistics_over_overlapping_sets_are_released_once() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C, D], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B, C, D]).await;
    let true_n = training_rows(&coordinator.node_config(A));

    // Sums over every three of four: a's figures are (S_abc + S_abd + S_acd − 2·S_bcd) / 3.
    let mut sums = Vec::new();
    for members in differencing_rosters() {
        let mut exchange = SecureExchange::stats(&coordinator, &members);
        sums.push(exchange.run(&coordinator).await.ok());
    }
    let recovered = difference(&sums);
    for node in [A, B, C, D] {
        assert_released_once(&coordinator.egress(node), &[0], node, &recovered, true_n);
    }
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_is_weighed_by_the_noised_count_the_ledger_records_never_the_exact_one() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C, D], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // Training rounds 2 to 5, none of which evaluates: each sum carries updates and weights only.
    coordinator.set_rounds(5);
    coordinator.plan_mut().task.evaluate_every = 10;
    for name in [A, B, C, D] {
        let mut config = coordinator.node_config(name);
        config.privacy = Some(private_training());
        coordinator.admit(config).await;
    }
    // A coordinator that skipped the statistics round (it knows no noised count of anyone's)
    // sums the four rounds over every three of four hospitals: if a node weighed its updates by
    // one fixed number, differencing the sums' weight figures gives hospital-a's exactly.
    let mut sums = Vec::new();
    for (round, members) in (2..).zip(differencing_rosters()) {
        let model = coordinator.model(round);
        coordinator.push_all(&model, round).await;
        let start = coordinator.round_start(&model, round, 1, true, None);
        assert!(!start.evaluate);
        let mut exchange = SecureExchange::round(&coordinator, &model, start, &members);
        sums.push(exchange.run(&coordinator).await.ok());
    }
    let recovered = difference(&sums).expect("all four sums unmasked");
    let weight = *recovered.last().expect("a weight figure");
    // What the attacker learns is the noised count hospital-a released once, in its first
    // training round, with its charge in the ledger before it left: never its exact count.
    let ledger = coordinator.ledger(A);
    let counts: Vec<_> = ledger
        .iter()
        .filter(|e| e.release == Release::ExampleCount)
        .collect();
    assert_eq!(counts.len(), 1, "{ledger:?}");
    assert_eq!(counts[0].round, 2);
    let released = counts[0].released_count.expect("the count it released");
    assert!(
        (weight - released.max(1.0)).abs() < 1e-3,
        "the sums give hospital-a's weight as {weight}, but its ledger says it released {released} \
         (exact count {})",
        training_rows(&coordinator.node_config(A))
    );
    assert!(counts[0].epsilon_after > 0.0 && !counts[0].mechanisms.is_empty());
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evaluation_counts_of_one_model_over_overlapping_sets_are_released_once() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C, D], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.admit_all(&[A, B, C, D]).await;
    let true_n = held_out_rows(&coordinator.node_config(A));
    let model = coordinator.model(1);
    coordinator.push_all(&model, 1).await;

    // The same model evaluated in attempts 1 to 4 of round 1, over every three of four.
    let mut sums = Vec::new();
    for (attempt, members) in (1..).zip(differencing_rosters()) {
        let start = coordinator.round_start(&model, 1, attempt, false, None);
        let mut exchange = SecureExchange::round(&coordinator, &model, start, &members);
        sums.push(exchange.run(&coordinator).await.ok());
    }
    let recovered = difference(&sums);
    for node in [A, B, C, D] {
        assert_released_once(&coordinator.egress(node), &[1], node, &recovered, true_n);
    }
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_out_counts_of_different_models_over_overlapping_sets_are_released_once() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C, D], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.set_rounds(4);
    coordinator.admit_all(&[A, B, C, D]).await;
    let true_n = held_out_rows(&coordinator.node_config(A));

    // Rounds 1 to 4, each from a model of its own, each evaluated, over every three of four.
    // The models' confusion counts differ, but every group's patient and outcome counts do
    // not: differencing the four sums gives hospital-a's per-group counts, whatever the models.
    let mut sums = Vec::new();
    for (round, members) in (1..).zip(differencing_rosters()) {
        let model = coordinator.model(round);
        coordinator.push_all(&model, round).await;
        let start = coordinator.round_start(&model, round, 1, true, None);
        assert!(start.evaluate);
        let mut exchange = SecureExchange::round(&coordinator, &model, start, &members);
        sums.push(exchange.run(&coordinator).await.ok());
    }
    let recovered = difference(&sums);
    for node in [A, B, C, D] {
        assert_released_once(
            &coordinator.egress(node),
            &[1, 2, 3, 4],
            node,
            &recovered,
            true_n,
        );
    }
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evaluation_off_the_manifest_schedule_is_declined_before_anything_is_computed() {
    use medfed_e2e::attacker::Figures;
    use medfed_protocol::manifest::FINAL_EVALUATION_ONLY;

    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // The signed plan the hospitals approve: the final model alone is evaluated.
    coordinator.set_rounds(3);
    coordinator.plan_mut().task.evaluate_every = FINAL_EVALUATION_ONLY;
    for name in [A, B, C] {
        let mut config = coordinator.node_config(name);
        // The defaults: noised evaluation counts, each release charged.
        config.privacy = Some(PrivacyConfig {
            evaluation: Default::default(),
            ..private_training()
        });
        coordinator.admit(config).await;
    }
    let model = coordinator.model(2);
    coordinator.push_all(&model, 2).await;
    // Round 2 asks for the evaluation counts anyway, with a well-formed setup sized for them.
    let Figures::Round(mut layout) = coordinator.round_figures(&model, 2, true) else {
        unreachable!("a round's figures")
    };
    assert!(!layout.evaluate);
    layout.evaluate = true;
    let setup = coordinator.setup(2, &[A, B, C], &Figures::Round(layout));
    let start = RoundStart {
        evaluate: true,
        ..coordinator.round_start(&model, 2, 1, true, Some(setup))
    };
    for node in [A, B, C] {
        assert_declined_as_a_departure(&coordinator, node, &start, "an unscheduled evaluation")
            .await;
    }
    // The same round by the schedule (no evaluation) is taken: the decline was the schedule's.
    let figures = coordinator.round_figures(&model, 2, true);
    let setup = coordinator.setup(2, &[A, B, C], &figures);
    let start = coordinator.round_start(&model, 2, 2, true, Some(setup));
    let answer = coordinator.ask(A, &Message::RoundStart(start)).await;
    assert!(matches!(answer, Message::SecAggKeys(_)), "{answer:?}");
    coordinator.finish(&model).await;
}

/// A coordinator that asks for a round at another decision threshold than the manifest's (moving
/// patients between the cells of the released confusion matrices, say to isolate the few above a
/// high cut-off) or with another positive-class weight (reshaping what the update says about the
/// positive patients) is declined by every hospital before anything is computed: nothing but
/// the decline leaves, and nothing is charged. The same round at the manifest's values is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_at_another_threshold_or_class_weight_is_declined_before_anything_is_computed() {
    use medfed_protocol::evaluation::DecisionThreshold;

    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    coordinator.set_rounds(3);
    for name in [A, B, C] {
        let mut config = coordinator.node_config(name);
        config.privacy = Some(private_training());
        coordinator.admit(config).await;
    }
    let model = coordinator.model(1);
    coordinator.push_all(&model, 1).await;
    let figures = coordinator.round_figures(&model, 1, true);
    let honest = |attempt| {
        let setup = coordinator.setup(1, &[A, B, C], &figures);
        coordinator.round_start(&model, 1, attempt, true, Some(setup))
    };
    let planned = honest(1);
    let departures = [
        (
            "decision threshold 0.95",
            RoundStart {
                decision_threshold: DecisionThreshold::new(0.95).unwrap(),
                ..honest(1)
            },
        ),
        ("pos_weight 50", {
            let mut start = honest(2);
            start.plan.pos_weight = 50.0;
            start
        }),
    ];
    assert_ne!(
        planned.decision_threshold,
        departures[0].1.decision_threshold
    );
    for (what, start) in departures {
        for node in [A, B, C] {
            assert_declined_as_a_departure(&coordinator, node, &start, what).await;
        }
    }
    // The same round at the manifest's threshold and weight is taken: the declines were theirs.
    let answer = coordinator.ask(A, &Message::RoundStart(honest(3))).await;
    assert!(matches!(answer, Message::SecAggKeys(_)), "{answer:?}");
    coordinator.finish(&model).await;
}

/// A coordinator that signs one task manifest for hospital-a and another for the rest (say, in
/// distributed DP, a noise scale that leaves everyone else's shares negligible, so that the sum
/// carries hospital-a's share alone) gets no masked input from anyone: each node checks the
/// round's encoding digest against the manifest it approved, and the peers' signed parameters
/// then differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hospitals_shown_different_task_manifests_never_share_a_sum() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // hospital-a approves a one-round task; the others, shown the same task with three rounds,
    // approve another manifest. Round 1's requests are the same under both.
    coordinator.set_rounds(1);
    coordinator.admit_all(&[A]).await;
    let task_of_a = coordinator.manifest().manifest.digest();
    coordinator.set_rounds(3);
    coordinator.admit_all(&[B, C]).await;
    assert_ne!(coordinator.manifest().manifest.digest(), task_of_a);
    let model = coordinator.model(1);
    coordinator.push_all(&model, 1).await;
    let figures = coordinator.round_figures(&model, 1, true);

    // The parameters bound to the others' manifest, sent to all: hospital-a refuses them.
    let start = coordinator.round_start(&model, 1, 1, true, None);
    let mut same = SecureExchange::round(&coordinator, &model, start, &[A, B, C]);
    let _ = same.run(&coordinator).await;
    assert!(
        !matches!(
            first_answer(&same, A, Step::Request),
            Message::SecAggKeys(_)
        ),
        "hospital-a took part under a manifest it never approved"
    );
    // Each node's parameters bound to its own manifest: the peers' signatures disagree.
    let start = coordinator.round_start(&model, 1, 2, true, None);
    let mut split = SecureExchange::round(&coordinator, &model, start, &[A, B, C]).on_setup(
        move |node, setup| {
            if node == A {
                let encoding = figures.encoding(&setup.update_encoding);
                setup.params.encoding_digest = encoding.task_digest(&task_of_a.0);
            }
        },
    );
    assert!(split.run(&coordinator).await.is_err());
    for node in [A, B, C] {
        let inputs = coordinator
            .egress(node)
            .iter()
            .filter(|e| e.round == Some(1) && e.kind == "secagg_input")
            .count();
        assert_eq!(inputs, 0, "{node} sent a masked input");
    }
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// 4. A release without a ledger entry.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_noised_update_leaves_without_its_ledger_entry() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let (coordinator, model) = with_a_private_victim(&consortium).await;

    // Attempt 1 of round 1 up to the share delivery: the noised update is computed and its
    // ledger entry pending.
    let start = coordinator.round_start(&model, 1, 1, true, None);
    let mut first = SecureExchange::round(&coordinator, &model, start, &[A, B, C]);
    first.request(&coordinator).await.expect("keys");
    first.directory(&coordinator).await.expect("shares");
    // Attempt 2 of the same round, with a plan the node cannot train with.
    let figures = coordinator.round_figures(&model, 1, true);
    let setup = coordinator.setup(1, &[A, B, C], &figures);
    let bad = RoundStart {
        plan: TrainingPlan {
            learning_rate: -1.0,
            ..TrainingPlan::default()
        },
        ..coordinator.round_start(&model, 1, 2, true, Some(setup))
    };
    let second = coordinator.ask(A, &Message::RoundStart(bad)).await;
    assert!(
        !matches!(second, Message::SecAggKeys(_)),
        "a plan with a negative learning rate was taken"
    );
    // Attempt 1 goes on: the share delivery asks for the masked input.
    let _ = first.deliver(&coordinator).await;
    let input_left = first
        .answers_of(A)
        .any(|a| a.step == Step::Delivery && matches!(a.message, Message::SecAggInput(_)));

    assert_every_release_is_charged(&coordinator, A, &format!("masked input sent: {input_left}"));
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// 5. A membership oracle.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_crafted_to_overflow_on_some_patients_is_answered_as_any_other() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // The plan states two rounds with batches of the whole split.
    coordinator.set_rounds(2);
    coordinator.plan_mut().task.training.batch_size = ROWS as u32;
    for name in [A, B, C] {
        let mut config = coordinator.node_config(name);
        config.privacy = Some(private_training());
        coordinator.admit(config).await;
    }
    // The model overflows f32 exactly on patients older than an age of the coordinator's
    // choosing (raw ages: it sends the identity standardisation). Round 1 targets nobody;
    // round 2 hospital-a's ten oldest patients, whom every step samples (batches of the whole
    // split).
    let ages = csv_ages(&consortium, A);
    let targets = [ages[ages.len() - 1] + 10.0, ages[ages.len() - 11] + 0.05];
    let mut answers = Vec::new();
    for (round, age) in (1..).zip(targets) {
        let model = overflowing_model(&coordinator, age);
        coordinator.push_all(&model, round).await;
        let start = coordinator.round_start(&model, round, 1, true, None);
        let mut exchange = SecureExchange::round(&coordinator, &model, start, &[A, B, C]);
        let summed = exchange.run(&coordinator).await;
        let kinds: Vec<&str> = exchange.answers_of(A).map(|a| a.message.kind()).collect();
        answers.push((kinds.join(" "), summed.is_ok()));
    }
    assert_eq!(
        answers[0], answers[1],
        "{A} answered a model that overflows on patients older than {:.1} unlike one that \
         overflows on nobody: whether such a patient is in its data shows",
        targets[1]
    );
    let egress = coordinator.egress(A);
    let declined: Vec<_> = egress.iter().filter(|e| e.kind == "declined").collect();
    assert!(declined.is_empty(), "{declined:?}");
    // Both rounds released a noised update, and both were charged; the first also released
    // the noised example count that weighs both (this hand-driven task has no statistics round).
    let charged: Vec<(u64, Release)> = coordinator
        .ledger(A)
        .iter()
        .map(|e| (e.round, e.release))
        .collect();
    assert_eq!(
        charged,
        [
            (1, Release::ExampleCount),
            (1, Release::Training),
            (2, Release::Training)
        ],
        "{answers:?}"
    );
    let model = coordinator.model(1);
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Retry drain.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_a_round_again_and_again_stops_at_the_attempt_cap() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let (coordinator, model) = with_a_private_victim(&consortium).await;

    // Each attempt runs to the masked inputs (the noised update leaves, and is charged), then
    // the coordinator claims a failure and restarts the round.
    let cap = NodePolicy::default().max_attempts_per_round;
    let attempts = cap + 2;
    let mut opened = Vec::new();
    for attempt in 1..=attempts {
        let start = coordinator.round_start(&model, 1, attempt, true, None);
        let mut exchange = SecureExchange::round(&coordinator, &model, start, &[A, B, C]);
        exchange.request(&coordinator).await.expect("keys");
        let answer = exchange
            .answers_of(A)
            .find(|a| a.step == Step::Request)
            .map(|a| a.message.clone())
            .expect("an answer");
        opened.push(answer);
        if exchange.directory(&coordinator).await.is_ok() {
            let _ = exchange.deliver(&coordinator).await;
        }
    }

    let charged = coordinator
        .ledger(A)
        .iter()
        .filter(|e| e.round == 1 && e.release == Release::Training)
        .count();
    assert!(
        charged <= cap as usize,
        "{A} was charged {charged} times for round 1 over {attempts} attempts; its cap is {cap}"
    );
    for (attempt, answer) in (1..).zip(&opened).skip(cap as usize) {
        assert_eq!(
            decline_reason(answer),
            Some(&DeclineReason::Policy(
                PolicyViolation::AttemptCapPerRound { cap }
            )),
            "attempt {attempt} past the cap: {A} answered {answer:?}"
        );
    }
    assert_every_release_is_charged(&coordinator, A, "after the restarts");
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// Site figures (issue 14): asked of a hospital that did not opt in, and revealers that would
// shrink an evaluation sum.
// ---------------------------------------------------------------------------------------------

/// The request for `node`'s site figure of attempt 1 at the final evaluation (round 2).
fn site_figure_request(coordinator: &HandCoordinator<'_>) -> Message {
    Message::SiteFigureRequest(SiteFigureRequest {
        session: coordinator.session(),
        round: 2,
        attempt: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_that_did_not_opt_in_gives_no_site_figure_even_when_the_manifest_lists_it() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // The signed manifest says hospital-a reveals its site figure; hospital-a's policy does
    // not. Sums over two hospitals are accepted, so the evaluation itself goes through.
    coordinator.plan_mut().task.site_figures = vec![A.into()];
    for name in [A, B, C] {
        let mut config = coordinator.node_config(name);
        tolerate_dropouts(&mut config);
        config.privacy = Some(PrivacyConfig {
            evaluation: Default::default(),
            ..private_training()
        });
        coordinator.admit(config).await;
    }
    let model = coordinator.model(2);
    coordinator.push_all(&model, 2).await;
    let start = coordinator.round_start(&model, 2, 1, false, None);
    assert!(start.evaluate, "the final evaluation");
    let mut exchange = SecureExchange::round(&coordinator, &model, start, &[A, B, C]);
    exchange
        .run(&coordinator)
        .await
        .expect("the final evaluation is summed");
    let charged_before = coordinator.ledger(A).len();

    // Asked for the vector it just put into the sum: hospital-a declines, and so does
    // hospital-b, which neither opted in nor is listed.
    for node in [A, B] {
        let answer = coordinator
            .ask(node, &site_figure_request(&coordinator))
            .await;
        assert_eq!(
            decline_reason(&answer),
            Some(&DeclineReason::Policy(
                PolicyViolation::SiteFigureNotOptedIn
            )),
            "{node} answered {answer:?}"
        );
        let egress = coordinator.egress(node);
        assert!(
            egress.iter().all(|e| e.kind != "site_figure"),
            "{node} sent a site figure"
        );
        assert_eq!(
            egress.last().map(|e| e.kind.as_str()),
            Some("declined"),
            "the refusal is the last thing that left {node}"
        );
    }
    assert_eq!(
        coordinator.ledger(A).len(),
        charged_before,
        "nothing more was released"
    );
    coordinator.finish(&model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evaluation_sum_the_revealers_would_shrink_below_the_minimum_gets_no_counts() {
    subscribe();
    let consortium = Consortium::new(&[A, B, C], ROWS);
    let mut coordinator = HandCoordinator::bind(&consortium);
    // hospital-b and hospital-c would reveal their own figures: subtracted from a sum over
    // {a, b, c}, they would leave hospital-a's counts alone.
    coordinator.plan_mut().task.site_figures = vec![B.into(), C.into()];
    for name in [A, B, C] {
        let mut config = coordinator.node_config(name);
        if name == A {
            config.privacy = Some(PrivacyConfig {
                evaluation: Default::default(),
                ..private_training()
            });
        } else {
            config.policy.release_site_figures = SiteFigures::Exact;
        }
        coordinator.admit(config).await;
    }
    let model = coordinator.model(2);
    coordinator.push_all(&model, 2).await;
    let start = coordinator.round_start(&model, 2, 1, false, None);
    let mut exchange = SecureExchange::round(&coordinator, &model, start, &[A, B, C]);
    assert!(
        exchange.run(&coordinator).await.is_err(),
        "nothing is summed"
    );
    let required = NodePolicy::default().min_other_hospitals;
    for (node, others) in [(A, 0), (B, 1), (C, 1)] {
        assert_eq!(
            decline_reason(first_answer(&exchange, node, Step::Request)),
            Some(&DeclineReason::Policy(
                PolicyViolation::RevealersLeaveTooFew { others, required }
            )),
            "{node}"
        );
        assert_only_refusals(&coordinator.egress(node), 2, node);
    }
    assert!(
        coordinator.ledger(A).iter().all(|e| e.round != 2),
        "no evaluation counts were charged, none left"
    );
    // A revealer asked for the site figure of an evaluation it put nothing into declines.
    let answer = coordinator.ask(B, &site_figure_request(&coordinator)).await;
    assert_eq!(
        decline_reason(&answer),
        Some(&DeclineReason::Policy(
            PolicyViolation::SiteFigureUnavailable
        )),
        "{answer:?}"
    );
    assert_only_refusals(&coordinator.egress(B), 2, B);
    coordinator.finish(&model).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Tells hospital-a and hospital-b that all four survived, and hospital-c and hospital-d that
/// hospital-a (index 1) dropped out, both when asking them to sign the survivor set and when
/// asking them to unmask (with the signatures collected on the set each is told).
fn split_survivors(exchange: SecureExchange) -> SecureExchange {
    exchange
        .on_consistency(|node, request| {
            if node == C || node == D {
                request.survivors.retain(|&index| index != 1);
            }
        })
        .on_unmask(|node, request| {
            if node == C || node == D {
                request.survivors.retain(|&index| index != 1);
            }
        })
}

/// Checks that none of `nodes` revealed an unmasking share (in round 0).
fn assert_no_unmasking_share(coordinator: &HandCoordinator<'_>, exchange: &SecureExchange) {
    // What the coordinator holds of hospital-a's (index 1) two secrets.
    let (mut seed_shares, mut key_shares) = (0, 0);
    for answer in &exchange.answers {
        if let Message::SecAggUnmaskShares(response) = &answer.message {
            seed_shares += response
                .self_mask_shares
                .iter()
                .filter(|(p, _)| *p == 1)
                .count();
            key_shares += response
                .mask_key_shares
                .iter()
                .filter(|(p, _)| *p == 1)
                .count();
        }
    }
    for node in [A, B, C, D] {
        let egress = coordinator.egress(node);
        let sent = sent_in_round(&egress, 0);
        assert!(
            !sent.contains(&"secagg_unmask_shares"),
            "{node} revealed unmasking shares although the survivor sets differ: it sent \
             {sent:?}; the coordinator holds {seed_shares} shares of {A}'s self-mask seed and \
             {key_shares} of its mask key"
        );
    }
}

/// Every three of four hospitals; a's figures are the first three sums' total less twice the
/// fourth, over three.
fn differencing_rosters() -> [Vec<&'static str>; 4] {
    [vec![A, B, C], vec![A, B, D], vec![A, C, D], vec![B, C, D]]
}

/// a's figures from the four sums of [`differencing_rosters`], when all four were unmasked.
fn difference(sums: &[Option<Vec<f64>>]) -> Option<Vec<f64>> {
    let [Some(abc), Some(abd), Some(acd), Some(bcd)] = sums else {
        return None;
    };
    Some(
        (0..abc.len())
            .map(|i| (abc[i] + abd[i] + acd[i] - 2.0 * bcd[i]) / 3.0)
            .collect(),
    )
}

/// Checks that `node` sent each deterministic figure of `rounds` in at most one masked input
/// and revealed unmasking shares for it at most once.
fn assert_released_once(
    egress: &[EgressEntry],
    rounds: &[u64],
    node: &str,
    recovered: &Option<Vec<f64>>,
    true_n: usize,
) {
    let count = |kind: &str| {
        egress
            .iter()
            .filter(|e| e.kind == kind && e.round.is_some_and(|r| rounds.contains(&r)))
            .count()
    };
    let (inputs, unmasked) = (count("secagg_input"), count("secagg_unmask_shares"));
    assert!(
        inputs <= 1 && unmasked <= 1,
        "{node} released the same figures into {inputs} sums and unmasked {unmasked} of them; \
         by differencing, the coordinator learnt {}",
        describe_sum(&recovered.clone().ok_or(()), true, true_n)
    );
}

/// Checks that every masked input or plain contribution `node` sent in a training round has
/// exactly one training entry in its ledger, and every entry one release.
fn assert_every_release_is_charged(coordinator: &HandCoordinator<'_>, node: &str, context: &str) {
    let mut rounds = std::collections::BTreeMap::<u64, (usize, usize)>::new();
    for entry in coordinator.egress(node) {
        if let (Some(round @ 1..), "secagg_input" | "contribution") =
            (entry.round, entry.kind.as_str())
        {
            rounds.entry(round).or_default().0 += 1;
        }
    }
    for entry in coordinator.ledger(node) {
        if entry.release == Release::Training {
            rounds.entry(entry.round).or_default().1 += 1;
        }
    }
    for (round, (released, charged)) in rounds {
        assert_eq!(
            released, charged,
            "{node} released its noised update {released} times in round {round}, its ledger \
             records {charged} ({context})"
        );
    }
}

/// What a sum tells the coordinator about hospital-a, for a failure message.
fn describe_sum<E>(sum: &Result<Vec<f64>, E>, victim_alone: bool, true_n: usize) -> String {
    match sum {
        Ok(sum) if victim_alone => format!(
            "{A}'s exact figures: n = {} ({A} holds {true_n}), then {:?}…",
            sum[0],
            &sum[1..sum.len().min(4)]
        ),
        Ok(sum) => format!("a sum with n = {}", sum[0]),
        Err(_) => "nothing (the sum was not unmasked)".into(),
    }
}

/// The kinds of message sent in `round`, in order.
fn sent_in_round(egress: &[EgressEntry], round: u64) -> Vec<&str> {
    egress
        .iter()
        .filter(|e| e.round == Some(round))
        .map(|e| e.kind.as_str())
        .collect()
}

/// Checks that nothing but refusals left `node` in `round`.
fn assert_only_refusals(egress: &[EgressEntry], round: u64, node: &str) {
    let sent = sent_in_round(egress, round);
    assert!(
        sent.iter().all(|kind| is_refusal_kind(kind)),
        "{node} sent {sent:?} in round {round}"
    );
}

/// Whether a message kind carries no figures: a decline, a refusal, or the receipt of a model
/// pushed before the request.
fn is_refusal_kind(kind: &str) -> bool {
    matches!(kind, "declined" | "refused" | "model_received")
}

/// Asks `node` to start the round `start`, which departs from the signed manifest (`what`), and
/// checks that it is declined as such before anything is computed: only refusals left the node
/// in that round, and nothing was charged for it.
async fn assert_declined_as_a_departure(
    coordinator: &HandCoordinator<'_>,
    node: &str,
    start: &RoundStart,
    what: &str,
) {
    let answer = coordinator
        .ask(node, &Message::RoundStart(start.clone()))
        .await;
    assert_eq!(
        decline_reason(&answer),
        Some(&DeclineReason::Policy(PolicyViolation::DepartsFromManifest)),
        "{node} at {what}: {answer:?}"
    );
    assert_only_refusals(&coordinator.egress(node), start.round, node);
    let charged: Vec<_> = coordinator
        .ledger(node)
        .into_iter()
        .filter(|e| e.round == start.round)
        .collect();
    assert!(
        charged.is_empty(),
        "{node} was charged at {what}: {charged:?}"
    );
}

/// Why `answer` declines, if it does.
fn decline_reason(answer: &Message) -> Option<&DeclineReason> {
    match answer {
        Message::Declined(Declined { reason, .. }) => Some(reason),
        _ => None,
    }
}

/// `node`'s first answer to `step` in `exchange`.
fn first_answer<'a>(exchange: &'a SecureExchange, node: &str, step: Step) -> &'a Message {
    exchange
        .answers_of(node)
        .find(|a| a.step == step)
        .map(|a| &a.message)
        .unwrap_or_else(|| panic!("{node} was not asked {step:?}: {:?}", exchange.answers))
}

/// Runs a statistics exchange over `members`, the harness playing `puppets` under certificates
/// the consortium CA minted for them; returns the exchange and what it summed.
async fn run_with_puppets(
    coordinator: &HandCoordinator<'_>,
    consortium: &Consortium,
    members: &[&str],
    puppets: &[&str],
) -> (SecureExchange, Result<Vec<f64>, ExchangeFailure>) {
    let mut exchange = SecureExchange::stats(coordinator, members);
    for puppet in puppets {
        exchange = exchange.with_puppet(Puppet::mint(consortium, puppet));
    }
    let learnt = exchange.run(coordinator).await;
    (exchange, learnt)
}

/// A hospital's DP-SGD policy with room for many rounds.
/// A hand-driven coordinator with A training under DP-SGD and B, C without, all three holding
/// the round-1 model.
async fn with_a_private_victim(consortium: &Consortium) -> (HandCoordinator<'_>, Model) {
    let mut coordinator = HandCoordinator::bind(consortium);
    let mut victim = coordinator.node_config(A);
    victim.privacy = Some(private_training());
    coordinator.admit(victim).await;
    coordinator.admit_all(&[B, C]).await;
    let model = coordinator.model(1);
    coordinator.push_all(&model, 1).await;
    (coordinator, model)
}

fn private_training() -> PrivacyConfig {
    PrivacyConfig {
        target_epsilon: 1000.0,
        delta: 1e-5,
        noise_multiplier: NoiseMultiplier::Fixed(1.0),
        max_grad_norm: 1.0,
        accountant: Accountant::Rdp,
        evaluation: EvaluationNoiseConfig::exact(),
        statistics: Default::default(),
        mode: PrivacyMode::Local,
        max_local_epsilon: None,
    }
}

/// A model whose output overflows `f32` (to +∞) on exactly the patients older than `age`, and
/// is finite, with finite gradients, on every other: a first hidden unit `10^30 · (age − a)`
/// weighed `10^30` into the output.
fn overflowing_model(coordinator: &HandCoordinator<'_>, age: f64) -> Model {
    let mut model = coordinator.model(1);
    let inputs = model.spec.input_dim;
    let column = coordinator
        .schema()
        .feature_names()
        .iter()
        .position(|name| name == "age")
        .expect("an age feature");
    let ModelKind::Mlp { hidden } = &model.spec.kind else {
        panic!("the consortium model is an MLP");
    };
    let width = hidden[0];
    // Layout: W₁ [width, inputs] row-major, b₁ [width], W₂ [1, width], b₂ [1].
    let params = &mut model.params;
    params[..inputs].fill(0.0);
    params[column] = 1e30;
    params[width * inputs] = -1e30 * age as f32;
    params[width * inputs + width] = 1e30;
    model
}

/// The ages in hospital `name`'s CSV, ascending.
fn csv_ages(consortium: &Consortium, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(consortium.csv(name)).expect("the CSV");
    let mut ages: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(1).expect("an age column"))
        .map(|age| age.parse().expect("a numeric age"))
        .collect();
    ages.sort_by(f64::total_cmp);
    ages
}

/// The hospital's number of training rows.
fn training_rows(config: &NodeConfig) -> usize {
    sizes(config).0
}

/// The hospital's number of held-out rows.
fn held_out_rows(config: &NodeConfig) -> usize {
    sizes(config).1
}

fn sizes(config: &NodeConfig) -> (usize, usize) {
    let trainer = TchTrainer::new(ComputeDevice::Cpu).expect("libtorch");
    medfed_node::prepare(config, Box::new(trainer))
        .expect("valid data")
        .sizes()
}
