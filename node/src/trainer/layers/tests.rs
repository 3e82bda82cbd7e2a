//! Per-example gradients of every layer kind against autograd run on one example at a time.
//!
//! The tensors are `f64`: the per-example path and autograd sum in different orders (a bmm over
//! unfolded patches against a convolution's backward kernel), and in `f32` their round-off
//! alone is about 1e-6 relative, too close to the 1e-5 bar to tell a wrong formula from noise.
//! In `f64` a correct formula agrees to about 1e-12.

use std::collections::VecDeque;

use medfed_protocol::architecture::{Architecture, CheckedArchitecture, LayerSpec, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use tch::{Device, Kind, Reduction, Tensor};

use super::network::{Masks, Network};
use super::per_example::{
    clipped_gradient_sum, per_example_gradients, per_example_losses, per_example_sq_norms,
};

/// The agreement the issue asks for.
const TOLERANCE: f64 = 1e-5;

fn checked(input: Shape, layers: Vec<LayerSpec>) -> CheckedArchitecture {
    Architecture { input, layers }.check().unwrap()
}

fn features(features: usize) -> Shape {
    Shape::Features { features }
}

fn image(channels: usize, height: usize, width: usize) -> Shape {
    Shape::Image {
        channels,
        height,
        width,
    }
}

fn linear(out: usize) -> LayerSpec {
    LayerSpec::Linear { out }
}

/// PyTorch-like initial parameters, each moved by N(0, 0.1²) so that normalisation layers are
/// not the identity and no gradient vanishes by symmetry.
fn params(arch: &CheckedArchitecture, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    arch.initial_parameters(seed)
        .into_iter()
        .map(|v| v + 0.1 * rng.sample::<f32, _>(StandardNormal))
        .collect()
}

fn net64(arch: &CheckedArchitecture, params: &[f32]) -> Network {
    Network::from_flat(arch, params, Kind::Double, Device::Cpu, true).unwrap()
}

/// `rows` examples of standard normal features and alternating labels, as `f64`.
fn normal_inputs(arch: &CheckedArchitecture, rows: usize, seed: u64) -> (Tensor, Tensor) {
    let width = arch.architecture().input.numel().unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let x: Vec<f64> = (0..rows * width)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    (
        Tensor::from_slice(&x).view([rows as i64, width as i64]),
        labels(rows),
    )
}

/// Labels 1, 0, 1, … as `[rows, 1]` `f64`.
fn labels(rows: usize) -> Tensor {
    let y: Vec<f64> = (0..rows).map(|i| ((i + 1) % 2) as f64).collect();
    Tensor::from_slice(&y).view([rows as i64, 1])
}

fn replay(masks: &[Tensor]) -> Masks<'static> {
    Masks::Replay(masks.iter().map(Tensor::shallow_clone).collect())
}

/// Row `i`: autograd's gradient of example `i`'s loss alone (PyTorch's own BCE with
/// `pos_weight`), the network run on that example only, with its rows of the dropout masks.
fn autograd_one_at_a_time(
    arch: &CheckedArchitecture,
    params: &[f32],
    x: &Tensor,
    y: &Tensor,
    pos_weight: f64,
    masks: &[Tensor],
) -> Tensor {
    let rows = x.size()[0];
    let weight = Tensor::from_slice(&[pos_weight]);
    let mut out = Vec::new();
    for i in 0..rows {
        let net = net64(arch, params);
        let masks: VecDeque<Tensor> = masks.iter().map(|m| m.narrow(0, i, 1)).collect();
        let logits = net
            .forward(&x.narrow(0, i, 1), &mut Masks::Replay(masks), None)
            .unwrap();
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(
            &y.narrow(0, i, 1),
            None,
            Some(weight.shallow_clone()),
            Reduction::Sum,
        );
        loss.backward();
        let grads: Vec<Tensor> = net
            .params()
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    p.zeros_like().reshape([-1])
                }
            })
            .collect();
        out.push(Tensor::cat(&grads, 0));
    }
    Tensor::stack(&out, 0)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Checks every per-example form of `arch` on `(x, y)` against autograd, one example at a
/// time: the full `[B, P]` matrix, the squared norms, and the clipped sum against clipping the
/// matrix's rows (with a bound that clips some examples and not others).
fn check_against_autograd(arch: &CheckedArchitecture, x: &Tensor, y: &Tensor, pos_weight: f64) {
    let params = params(arch, 7);
    let net = net64(arch, &params);
    let mut dropout_rng = ChaCha20Rng::seed_from_u64(11);
    let (full, masks) =
        per_example_gradients(&net, x, y, pos_weight, &mut Masks::Draw(&mut dropout_rng)).unwrap();
    let reference = autograd_one_at_a_time(arch, &params, x, y, pos_weight, &masks);
    let rows = x.size()[0];
    assert_eq!(full.size(), [rows, arch.param_count() as i64]);
    // A test that cannot fail would compare zeros with zeros.
    let scale = reference.abs().max().double_value(&[]);
    assert!(scale > 1e-3, "reference gradients are all near zero");
    let diff = max_abs_diff(&full, &reference);
    assert!(diff < TOLERANCE, "per-example gradients differ by {diff}");

    let norms_sq = reference.square().sum_dim_intlist(1, false, Kind::Double);
    let ours = per_example_sq_norms(&net, x, y, pos_weight, &mut replay(&masks)).unwrap();
    let diff = max_abs_diff(&ours, &norms_sq);
    assert!(
        diff < TOLERANCE * norms_sq.max().double_value(&[]).max(1.0),
        "norms differ by {diff}"
    );

    let norms = norms_sq.sqrt();
    let max_norm = norms.median().double_value(&[]);
    let factors = (norms.reciprocal() * max_norm).clamp_max(1.0);
    let expected = (&reference * factors.unsqueeze(1)).sum_dim_intlist(0, false, Kind::Double);
    let clipped =
        clipped_gradient_sum(&net, x, y, max_norm, pos_weight, &mut replay(&masks)).unwrap();
    let diff = max_abs_diff(&clipped.sum, &expected);
    assert!(diff < TOLERANCE, "clipped sums differ by {diff}");
    assert_eq!(clipped.skipped, 0);
    let net_losses = per_example_losses(
        &net.forward(x, &mut replay(&masks), None).unwrap(),
        y,
        pos_weight,
    )
    .unwrap();
    let loss_sum = net_losses.sum(Kind::Double).double_value(&[]);
    assert!((clipped.loss_sum - loss_sum).abs() < 1e-9);
}

#[test]
fn linear_layers_and_activations_match_autograd() {
    let arch = checked(
        features(5),
        vec![
            linear(6),
            LayerSpec::Tanh,
            linear(4),
            LayerSpec::Gelu,
            linear(3),
            LayerSpec::Sigmoid,
            linear(2),
            LayerSpec::Relu,
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 9, 1);
    check_against_autograd(&arch, &x, &y, 1.0);
}

#[test]
fn a_positive_examples_weight_is_pytorchs_pos_weight() {
    let arch = checked(features(4), vec![linear(3), LayerSpec::Relu, linear(1)]);
    let (x, y) = normal_inputs(&arch, 6, 2);
    check_against_autograd(&arch, &x, &y, 3.5);
}

#[test]
fn conv1d_with_stride_padding_and_1d_pooling_matches_autograd() {
    let arch = checked(
        Shape::Sequence {
            channels: 3,
            len: 17,
        },
        vec![
            LayerSpec::Conv1d {
                out_channels: 4,
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            LayerSpec::Relu,
            LayerSpec::MaxPool1d {
                kernel: 2,
                stride: None,
            },
            LayerSpec::Conv1d {
                out_channels: 2,
                kernel: 2,
                stride: 1,
                padding: 0,
            },
            LayerSpec::AvgPool1d {
                kernel: 2,
                stride: Some(1),
            },
            LayerSpec::Flatten,
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 5, 3);
    check_against_autograd(&arch, &x, &y, 1.0);
}

#[test]
fn conv2d_with_stride_padding_and_average_pooling_matches_autograd() {
    let arch = checked(
        image(2, 9, 8),
        vec![
            LayerSpec::Conv2d {
                out_channels: 3,
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            LayerSpec::Tanh,
            LayerSpec::AvgPool2d {
                kernel: 2,
                stride: Some(1),
            },
            LayerSpec::Flatten,
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 5, 4);
    check_against_autograd(&arch, &x, &y, 1.0);
}

#[test]
fn group_norm_on_images_and_on_features_matches_autograd() {
    let arch = checked(
        image(4, 5, 5),
        vec![
            LayerSpec::GroupNorm { groups: 2 },
            LayerSpec::Relu,
            LayerSpec::Flatten,
            linear(6),
            LayerSpec::GroupNorm { groups: 3 },
            LayerSpec::Tanh,
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 6, 5);
    check_against_autograd(&arch, &x, &y, 1.0);
}

#[test]
fn layer_norm_matches_autograd() {
    let arch = checked(
        features(7),
        vec![
            LayerSpec::LayerNorm,
            linear(5),
            LayerSpec::LayerNorm,
            LayerSpec::Relu,
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 6, 6);
    check_against_autograd(&arch, &x, &y, 1.0);
}

#[test]
fn embedding_with_repeated_categories_matches_autograd() {
    // A vocabulary of 5 for 4 inputs: most examples use some category twice, whose gradient
    // row is then the sum of both positions' δ.
    let arch = checked(
        features(4),
        vec![
            LayerSpec::Embedding {
                num_embeddings: 5,
                dim: 3,
            },
            LayerSpec::LayerNorm,
            LayerSpec::Flatten,
            linear(4),
            LayerSpec::Relu,
            linear(1),
        ],
    );
    let rows = 8;
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let x: Vec<f64> = (0..rows * 4)
        .map(|_| f64::from(rng.random_range(0..5u8)))
        .collect();
    let repeats = x
        .chunks(4)
        .filter(|row| (1..4).any(|i| row[..i].contains(&row[i])))
        .count();
    assert!(repeats > 0, "no example repeats a category");
    let x = Tensor::from_slice(&x).view([rows as i64, 4]);
    check_against_autograd(&arch, &x, &labels(rows), 1.0);
}

#[test]
fn dropout_masks_are_per_example_and_match_autograd() {
    let arch = checked(
        features(6),
        vec![
            linear(8),
            LayerSpec::Relu,
            LayerSpec::Dropout { p: 0.5 },
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 6, 8);
    check_against_autograd(&arch, &x, &y, 1.0);
    let net = net64(&arch, &params(&arch, 7));
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let (_, masks) = per_example_gradients(&net, &x, &y, 1.0, &mut Masks::Draw(&mut rng)).unwrap();
    assert_eq!(masks.len(), 1);
    assert_eq!(masks[0].size(), [6, 8]);
    // Values 0 or 1/(1 − p) = 2, both present, and different rows for different examples.
    let kept = masks[0].eq(2.0).sum(Kind::Int64).int64_value(&[]);
    let dropped = masks[0].eq(0.0).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(kept + dropped, 48);
    assert!(kept > 10 && dropped > 10, "kept {kept}, dropped {dropped}");
    assert!(max_abs_diff(&masks[0].get(0), &masks[0].get(1)) > 0.0);
}

#[test]
fn nested_residual_blocks_match_autograd() {
    let arch = checked(
        features(5),
        vec![
            linear(6),
            LayerSpec::Residual {
                layers: vec![
                    LayerSpec::LayerNorm,
                    linear(6),
                    LayerSpec::Relu,
                    LayerSpec::Residual {
                        layers: vec![linear(6), LayerSpec::Tanh],
                    },
                ],
            },
            LayerSpec::Relu,
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 7, 9);
    check_against_autograd(&arch, &x, &y, 1.0);
}

#[test]
fn a_small_cnn_matches_autograd() {
    let arch = checked(
        image(1, 12, 12),
        vec![
            LayerSpec::Conv2d {
                out_channels: 4,
                kernel: 3,
                stride: 1,
                padding: 0,
            },
            LayerSpec::GroupNorm { groups: 2 },
            LayerSpec::Relu,
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: None,
            },
            LayerSpec::Conv2d {
                out_channels: 6,
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::Residual {
                layers: vec![LayerSpec::GroupNorm { groups: 3 }, LayerSpec::Relu],
            },
            LayerSpec::Flatten,
            linear(1),
        ],
    );
    let (x, y) = normal_inputs(&arch, 6, 10);
    check_against_autograd(&arch, &x, &y, 2.0);
}

#[test]
fn a_non_finite_example_contributes_zero_and_the_others_are_untouched() {
    let arch = checked(
        image(1, 6, 6),
        vec![
            LayerSpec::Conv2d {
                out_channels: 2,
                kernel: 3,
                stride: 1,
                padding: 0,
            },
            LayerSpec::GroupNorm { groups: 1 },
            LayerSpec::Relu,
            LayerSpec::Flatten,
            linear(3),
            LayerSpec::Relu,
            linear(1),
        ],
    );
    let net = net64(&arch, &params(&arch, 7));
    let (x, y) = normal_inputs(&arch, 5, 11);
    let clean = clipped_gradient_sum(&net, &x, &y, 0.5, 1.0, &mut Masks::Off).unwrap();
    for poison in [f64::INFINITY, f64::NAN, 1e300] {
        let bad_row = Tensor::full([1, 36], poison, (Kind::Double, Device::Cpu));
        let x_bad = Tensor::cat(&[x.narrow(0, 0, 2), bad_row, x.narrow(0, 2, 3)], 0);
        let y_bad = Tensor::cat(&[y.narrow(0, 0, 2), labels(1), y.narrow(0, 2, 3)], 0);
        let with_bad =
            clipped_gradient_sum(&net, &x_bad, &y_bad, 0.5, 1.0, &mut Masks::Off).unwrap();
        assert_eq!(with_bad.skipped, 1, "poison {poison}");
        assert!(bool::try_from(with_bad.sum.isfinite().all()).unwrap());
        assert!(
            max_abs_diff(&with_bad.sum, &clean.sum) < 1e-12,
            "poison {poison}"
        );
        assert!((with_bad.loss_sum - clean.loss_sum).abs() < 1e-12);
    }
}

#[test]
fn the_f32_network_agrees_with_the_f64_one() {
    let arch = checked(
        image(1, 8, 8),
        vec![
            LayerSpec::Conv2d {
                out_channels: 3,
                kernel: 3,
                stride: 1,
                padding: 0,
            },
            LayerSpec::GroupNorm { groups: 3 },
            LayerSpec::Relu,
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: None,
            },
            LayerSpec::Flatten,
            linear(1),
        ],
    );
    let params = params(&arch, 3);
    let (x, y) = normal_inputs(&arch, 8, 12);
    let net32 = Network::from_flat(&arch, &params, Kind::Float, Device::Cpu, true).unwrap();
    let sum32 = clipped_gradient_sum(
        &net32,
        &x.to_kind(Kind::Float),
        &y.to_kind(Kind::Float),
        1.0,
        1.0,
        &mut Masks::Off,
    )
    .unwrap();
    let sum64 =
        clipped_gradient_sum(&net64(&arch, &params), &x, &y, 1.0, 1.0, &mut Masks::Off).unwrap();
    assert_eq!(sum32.sum.kind(), Kind::Float);
    let diff = max_abs_diff(&sum32.sum.to_kind(Kind::Double), &sum64.sum);
    assert!(diff < 1e-5, "f32 and f64 differ by {diff}");
}

#[test]
fn the_network_round_trips_its_flat_parameters() {
    let arch = checked(
        features(3),
        vec![
            LayerSpec::Embedding {
                num_embeddings: 4,
                dim: 2,
            },
            LayerSpec::Flatten,
            linear(2),
            LayerSpec::GroupNorm { groups: 1 },
            linear(1),
        ],
    );
    let params = params(&arch, 5);
    let net = Network::from_flat(&arch, &params, Kind::Float, Device::Cpu, false).unwrap();
    assert_eq!(net.to_flat().unwrap(), params);
    let names: Vec<Vec<i64>> = net.params().iter().map(|p| p.size()).collect();
    let layout: Vec<Vec<i64>> = arch
        .tensors()
        .map(|t| t.shape.iter().map(|&d| d as i64).collect())
        .collect();
    assert_eq!(names, layout);
}
