//! The optimisers against hand-computed steps, their state round trips, and bad input.

use super::optimizers::sign;
use super::*;

fn adam(lr: f64, beta1: f64, beta2: f64, tau: f64) -> StrategyConfig {
    StrategyConfig::FedAdam {
        server_learning_rate: lr,
        beta1,
        beta2,
        tau,
    }
}

#[test]
fn config_defaults_and_tags() {
    let c: StrategyConfig = serde_json::from_str(r#"{"name":"fed_adam"}"#).unwrap();
    assert_eq!(c, adam(1e-2, 0.9, 0.99, 1e-3));
    let c: StrategyConfig = serde_json::from_str(r#"{"name":"fed_avg"}"#).unwrap();
    assert_eq!(c, StrategyConfig::default());
    let c: StrategyConfig = serde_json::from_str(r#"{"name":"fed_yogi","tau":0.5}"#).unwrap();
    assert_eq!(
        c,
        StrategyConfig::FedYogi {
            server_learning_rate: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.5
        }
    );
    let json = serde_json::to_value(adam(0.1, 0.8, 0.9, 1e-2)).unwrap();
    assert_eq!(json["name"], "fed_adam");
    assert!(serde_json::from_str::<StrategyConfig>(r#"{"name":"fed_avg","lr":1}"#).is_err());
}

#[test]
fn a_distributed_round_under_fed_avg_is_one_sgd_step_over_the_public_denominator() {
    // Σg = (4, −8) over q·N = 2 is the mean gradient (2, −4); lr 0.5 steps it to (−1, 2).
    let delta = distributed_delta(&[4.0, -8.0], 2.0, 0.5).unwrap();
    assert_eq!(delta, vec![-1.0, 2.0]);
    let mut optimizer = build_optimizer(
        &StrategyConfig::FedAvg {
            server_learning_rate: 1.0,
        },
        2,
        None,
    )
    .unwrap();
    let mut w = [1.0f32, 1.0];
    optimizer.try_apply(&mut w, &delta).unwrap();
    assert_eq!(w, [0.0, 3.0]);
    assert_eq!(
        distributed_delta(&[1.0], 0.0, 0.1),
        Err(StrategyError::NoExamples { sum_n: 0.0 })
    );
    assert_eq!(
        distributed_delta(&[1.0, f64::NAN], 1.0, 0.1),
        Err(StrategyError::NonFinite { index: 1 })
    );
}

#[test]
fn mean_delta_divides_and_refuses_no_examples() {
    assert_eq!(mean_delta(&[2.0, -4.0], 4.0).unwrap(), vec![0.5, -1.0]);
    assert_eq!(
        mean_delta(&[1.0], 0.0),
        Err(StrategyError::NoExamples { sum_n: 0.0 })
    );
    assert!(matches!(
        mean_delta(&[1.0], -3.0),
        Err(StrategyError::NoExamples { .. })
    ));
    assert!(matches!(
        mean_delta(&[1.0], f64::NAN),
        Err(StrategyError::NoExamples { .. })
    ));
    assert_eq!(
        mean_delta(&[1.0, f64::INFINITY], 2.0),
        Err(StrategyError::NonFinite { index: 1 })
    );
}

#[test]
fn fedavg_with_unit_lr_is_the_weighted_average_of_node_models() {
    let global = [0.5f32, -1.0, 2.0];
    let nodes: [(f64, [f32; 3]); 3] = [
        (10.0, [1.0, 0.0, 2.0]),
        (30.0, [0.0, -2.0, 4.0]),
        (60.0, [2.0, 1.0, -1.0]),
    ];
    // What each node contributes, and what secure aggregation sums.
    let mut sum_delta = vec![0.0f64; 3];
    let mut sum_n = 0.0;
    for (n, w) in &nodes {
        for i in 0..3 {
            sum_delta[i] += n * (f64::from(w[i]) - f64::from(global[i]));
        }
        sum_n += n;
    }
    let delta = mean_delta(&sum_delta, sum_n).unwrap();
    let mut opt = build_optimizer(&StrategyConfig::default(), 3, None).unwrap();
    let mut model = global;
    opt.try_apply(&mut model, &delta).unwrap();
    for i in 0..3 {
        let avg: f64 = nodes.iter().map(|(n, w)| n * f64::from(w[i])).sum::<f64>() / sum_n;
        assert!(
            (f64::from(model[i]) - avg).abs() < 1e-6,
            "{i}: {} vs {avg}",
            model[i]
        );
    }
    assert_eq!(
        opt.state(),
        OptimizerState {
            step: 1,
            moments: vec![]
        }
    );
    assert_eq!(opt.name(), "fed_avg");
}

#[test]
fn fedavg_server_learning_rate_scales_the_step() {
    let cfg = StrategyConfig::FedAvg {
        server_learning_rate: 0.5,
    };
    let mut opt = build_optimizer(&cfg, 2, None).unwrap();
    let mut x = [1.0f32, 1.0];
    opt.apply(&mut x, &[2.0, -4.0]);
    assert_eq!(x, [2.0, -1.0]);
}

#[test]
fn fedadam_matches_a_hand_computation_of_two_steps() {
    let (lr, b1, b2, tau) = (0.1, 0.9, 0.99, 0.01);
    let mut opt = build_optimizer(&adam(lr, b1, b2, tau), 2, None).unwrap();
    let mut x = [1.0f32, -2.0];
    let d1 = [0.5, -0.2];
    let d2 = [0.1, 0.3];
    opt.apply(&mut x, &d1);
    opt.apply(&mut x, &d2);

    // Step 1, coordinate 0: m = 0.1·0.5 = 0.05; v = 0.99·1e-4 + 0.01·0.25 = 0.002599;
    //   x = 1 + 0.1·0.05/(√0.002599 + 0.01).
    // Step 2: m = 0.9·0.05 + 0.1·0.1 = 0.055; v = 0.99·0.002599 + 0.01·0.01 = 0.00267301;
    //   x += 0.1·0.055/(√0.00267301 + 0.01).
    let x0_1 = (1.0f64 + 0.1 * 0.05 / (0.002599f64.sqrt() + 0.01)) as f32;
    let x0_2 = (f64::from(x0_1) + 0.1 * 0.055 / (0.00267301f64.sqrt() + 0.01)) as f32;
    // Coordinate 1: m = −0.02, v = 0.99·1e-4 + 0.01·0.04 = 0.000499;
    //   then m = −0.018 + 0.03 = 0.012, v = 0.99·0.000499 + 0.01·0.09 = 0.00139401.
    let x1_1 = (-2.0f64 + 0.1 * -0.02 / (0.000499f64.sqrt() + 0.01)) as f32;
    let x1_2 = (f64::from(x1_1) + 0.1 * 0.012 / (0.00139401f64.sqrt() + 0.01)) as f32;
    assert!(
        (x[0] - x0_2).abs() <= f32::EPSILON * 4.0,
        "{} vs {x0_2}",
        x[0]
    );
    assert!(
        (x[1] - x1_2).abs() <= f32::EPSILON * 4.0,
        "{} vs {x1_2}",
        x[1]
    );
    // Loose check of the magnitudes, so that a wrong formula cannot match by accident.
    assert!((x0_2 - 1.1711).abs() < 1e-3, "{x0_2}");

    let state = opt.state();
    assert_eq!(state.step, 2);
    assert!((state.moments[0][0] - 0.055).abs() < 1e-12);
    assert!((state.moments[1][0] - 0.00267301).abs() < 1e-12);
    assert!((state.moments[0][1] - 0.012).abs() < 1e-12);
    assert!((state.moments[1][1] - 0.00139401).abs() < 1e-12);
    assert_eq!(opt.name(), "fed_adam");
}

#[test]
fn fedyogi_second_moment_moves_towards_delta_squared_additively() {
    let cfg = StrategyConfig::FedYogi {
        server_learning_rate: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.01,
    };
    let mut opt = build_optimizer(&cfg, 1, None).unwrap();
    let mut x = [0.0f32];
    opt.apply(&mut x, &[0.5]);
    // v = 1e-4 − 0.01·0.25·sign(1e-4 − 0.25) = 1e-4 + 0.0025.
    let v = opt.state().moments[1][0];
    assert!((v - 0.0026).abs() < 1e-12, "{v}");
    opt.apply(&mut x, &[0.01]);
    // v = 0.0026 − 0.01·1e-4·sign(0.0026 − 1e-4) = 0.0026 − 1e-6.
    let v = opt.state().moments[1][0];
    assert!((v - 0.002599).abs() < 1e-12, "{v}");
    assert_eq!(opt.name(), "fed_yogi");
    assert_eq!(sign(0.0), 0.0);
}

#[test]
fn exported_state_resumes_identically_to_an_uninterrupted_run() {
    let len = 50;
    let deltas: Vec<Vec<f64>> = (0..6)
        .map(|t| {
            (0..len)
                .map(|i| ((i * 7 + t * 13) % 11) as f64 / 10.0 - 0.5)
                .collect()
        })
        .collect();
    let start: Vec<f32> = (0..len).map(|i| i as f32 / 17.0).collect();
    for cfg in [
        StrategyConfig::default(),
        adam(0.05, 0.9, 0.99, 1e-3),
        StrategyConfig::FedYogi {
            server_learning_rate: 0.05,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        },
    ] {
        let mut straight = build_optimizer(&cfg, len, None).unwrap();
        let mut a = start.clone();
        for d in &deltas {
            straight.apply(&mut a, d);
        }

        let mut first = build_optimizer(&cfg, len, None).unwrap();
        let mut b = start.clone();
        for d in &deltas[..3] {
            first.apply(&mut b, d);
        }
        // Persist through JSON, as the store does, then "restart".
        let json = serde_json::to_string(&first.state()).unwrap();
        drop(first);
        let restored: OptimizerState = serde_json::from_str(&json).unwrap();
        let mut second = build_optimizer(&cfg, len, Some(restored)).unwrap();
        for d in &deltas[3..] {
            second.apply(&mut b, d);
        }
        assert_eq!(a, b, "{cfg:?}");
        assert_eq!(straight.state(), second.state(), "{cfg:?}");
    }
}

#[test]
fn invalid_configs_and_states_are_refused() {
    assert!(matches!(
        build_optimizer(
            &StrategyConfig::FedAvg {
                server_learning_rate: 0.0
            },
            3,
            None
        ),
        Err(StrategyError::InvalidParameter {
            name: "server_learning_rate",
            ..
        })
    ));
    assert!(matches!(
        build_optimizer(&adam(0.1, 1.0, 0.99, 1e-3), 3, None),
        Err(StrategyError::InvalidParameter { name: "beta1", .. })
    ));
    assert!(matches!(
        build_optimizer(&adam(0.1, 0.9, 0.99, 0.0), 3, None),
        Err(StrategyError::InvalidParameter { name: "tau", .. })
    ));
    let adam_state = build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 3, None)
        .unwrap()
        .state();
    assert!(matches!(
        build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 4, Some(adam_state.clone())),
        Err(StrategyError::StateMismatch { .. })
    ));
    assert!(matches!(
        build_optimizer(&StrategyConfig::default(), 3, Some(adam_state)),
        Err(StrategyError::StateMismatch { .. })
    ));
    let avg_state = OptimizerState {
        step: 4,
        moments: vec![],
    };
    assert!(matches!(
        build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 3, Some(avg_state)),
        Err(StrategyError::StateMismatch { .. })
    ));
}

#[test]
fn try_apply_checks_lengths_and_leaves_the_model_alone() {
    let mut opt = build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 3, None).unwrap();
    let mut x = [1.0f32; 3];
    assert_eq!(
        opt.try_apply(&mut x, &[0.1; 2]),
        Err(StrategyError::LengthMismatch {
            expected: 3,
            actual: 2
        })
    );
    assert_eq!(
        opt.try_apply(&mut x[..2], &[0.1; 3]),
        Err(StrategyError::LengthMismatch {
            expected: 3,
            actual: 2
        })
    );
    assert_eq!(
        opt.try_apply(&mut x, &[0.1, f64::NAN, 0.0]),
        Err(StrategyError::NonFinite { index: 1 })
    );
    assert_eq!(x, [1.0; 3]);
    assert_eq!(opt.state().step, 0);
}

#[test]
fn a_summed_update_read_in_pieces_moves_the_model_as_its_whole_mean_does() {
    // Longer than a piece, after a block of counts: several pieces, each at its offset.
    let len = (1 << 18) + 7;
    let counts = [5.0, 6.0, 7.0];
    let delta: Vec<f64> = (0..len).map(|i| ((i % 13) as f64 - 6.0) * 0.5).collect();
    let weight = 4.0;
    let sum = RoundSum::Figures([&counts[..], &delta, &[weight]].concat());
    let update = counts.len()..counts.len() + len;
    let yogi = StrategyConfig::FedYogi {
        server_learning_rate: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    };
    let start: Vec<f32> = (0..len).map(|i| (i % 5) as f32).collect();
    let (mut whole, mut pieces) = (start.clone(), start.clone());
    let mut by_whole = build_optimizer(&yogi, len, None).unwrap();
    let mut by_pieces = build_optimizer(&yogi, len, None).unwrap();
    for _ in 0..2 {
        by_whole
            .try_apply(&mut whole, &mean_delta(&delta, weight).unwrap())
            .unwrap();
        apply_summed_update(
            by_pieces.as_mut(),
            &mut pieces,
            &sum,
            update.clone(),
            weight,
        )
        .unwrap();
    }
    assert_eq!(pieces, whole);
    assert_ne!(pieces, start);
    assert_eq!(by_pieces.state(), by_whole.state());

    // A figure that is not finite in the last piece: nothing changes.
    let mut bad = sum.to_vec();
    bad[update.end - 1] = f64::INFINITY;
    let before = by_pieces.state();
    let result = apply_summed_update(
        by_pieces.as_mut(),
        &mut pieces,
        &RoundSum::Figures(bad),
        update.clone(),
        weight,
    );
    assert_eq!(result, Err(StrategyError::NonFinite { index: len - 1 }));
    assert_eq!((&pieces, by_pieces.state()), (&whole, before.clone()));
    // A finite sum whose mean is not (a tiny weight, as a node could send without secure
    // aggregation): nothing changes either.
    let mut huge = vec![0.0; counts.len() + len + 1];
    huge[counts.len() + 5] = 1e300;
    assert_eq!(
        apply_summed_update(
            by_pieces.as_mut(),
            &mut pieces,
            &RoundSum::Figures(huge),
            update.clone(),
            1e-300,
        ),
        Err(StrategyError::NonFinite { index: 5 })
    );
    assert_eq!((&pieces, by_pieces.state()), (&whole, before));
    let mut model = start.clone();
    for (weight, range, expected) in [
        (
            0.0,
            update.clone(),
            StrategyError::NoExamples { sum_n: 0.0 },
        ),
        (
            weight,
            update.start..update.end - 1,
            StrategyError::LengthMismatch {
                expected: len,
                actual: len - 1,
            },
        ),
    ] {
        assert_eq!(
            apply_summed_update(by_pieces.as_mut(), &mut model, &sum, range, weight),
            Err(expected)
        );
    }
    assert_eq!(model, start);
}
