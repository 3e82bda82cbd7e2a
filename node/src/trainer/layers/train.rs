//! Training a declared architecture: plain mini-batch SGD, and DP-SGD as
//! [`Trainer::train_private`](crate::trainer::Trainer::train_private) does it for the MLP, with
//! the per-example gradients of [`super::per_example`].

use medfed_protocol::architecture::{CheckedArchitecture, LayerSpec};
use medfed_protocol::task::TrainingPlan;
use rand::{CryptoRng, Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tch::{Device, Kind, TchError, Tensor};

use super::network::{Masks, Network};
use super::per_example::{clipped_gradient_sum, per_example_losses};
use super::rows_per_pass;
use crate::examples::Examples;
use crate::trainer::dp_sgd::{ClippedSum, check_private_run, dp_sgd_loop};
use crate::trainer::params::step_by_grads;
use crate::trainer::tch_trainer::{sgd_loop, to_tensors};
use crate::trainer::{
    DpConfig, PrivateTrainOutcome, TchTrainer, TrainError, TrainOutcome, TrainProgress, check_plan,
    check_shapes,
};

/// Rows scored per forward pass in [`TchTrainer::predict_layers`].
const PREDICT_BATCH: usize = 8192;

impl TchTrainer {
    /// [`Trainer::train`](crate::trainer::Trainer::train) for a declared architecture:
    /// `plan.local_epochs` epochs of mini-batch SGD on the mean BCE-with-logits loss (a positive
    /// example's weighted by `plan.pos_weight`), batches shuffled and dropout masks drawn from
    /// ChaCha20 streams seeded with `plan.seed`.
    ///
    /// Stops with [`TrainError::NonFiniteLoss`] as plain training of the MLP does.
    pub fn train_layers(
        &mut self,
        arch: &CheckedArchitecture,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainOutcome, TrainError> {
        check_layer_inputs(arch, initial, data)?;
        check_plan(plan)?;
        if data.is_empty() {
            return Err(TrainError::EmptyData);
        }
        let net = Network::from_flat(arch, initial, Kind::Float, self.device(), true)?;
        let (features, labels) = to_tensors(data, self.device())?;
        // Dropout masks from their own stream of the seed; the batch order takes stream 0.
        let mut dropout_rng = ChaCha20Rng::seed_from_u64(plan.seed);
        dropout_rng.set_stream(1);
        let outcome = sgd_loop(
            self.device(),
            (&features, &labels),
            plan,
            progress,
            &mut |x, y| {
                let logits = net.forward(x, &mut Masks::Draw(&mut dropout_rng), None)?;
                Ok(per_example_losses(&logits, y, plan.pos_weight)?.f_mean(Kind::Float)?)
            },
            &mut || Ok(step_by_grads(&net.params(), plan.learning_rate)?),
        )?;
        Ok(TrainOutcome {
            params: net.to_flat()?,
            ..outcome
        })
    }

    /// [`Trainer::train_private`](crate::trainer::Trainer::train_private) for a declared
    /// architecture, with the same contract: Poisson sampling and Gaussian noise from
    /// `noise_rng`, each example's whole gradient clipped to `dp.max_grad_norm`, the noisy sum
    /// divided by the expected batch size, a non-finite example contributing zero. Dropout
    /// masks come from a ChaCha20 stream seeded once per call from `noise_rng`.
    #[allow(clippy::too_many_arguments)]
    pub fn train_layers_private(
        &mut self,
        arch: &CheckedArchitecture,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        dp: &DpConfig,
        noise_rng: &mut dyn CryptoRng,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<PrivateTrainOutcome, TrainError> {
        check_layer_inputs(arch, initial, data)?;
        check_private_run(plan, dp, data)?;
        let device = self.device();
        let net = Network::from_flat(arch, initial, Kind::Float, device, true)?;
        let (features, labels) = to_tensors(data, device)?;
        // Drawn only when the model has dropout, so that a model without it consumes
        // `noise_rng` exactly as `dp_sgd` does (tests compare the two on an MLP).
        let dropout_seed = if has_dropout(arch) {
            noise_rng.random()
        } else {
            [0; 32]
        };
        let mut dropout_rng = ChaCha20Rng::from_seed(dropout_seed);
        let run = dp_sgd_loop(
            device,
            (&features, &labels),
            initial.len(),
            plan,
            dp,
            noise_rng,
            progress,
            &mut |x, y| {
                // In passes sized by the model alone, so that no batch the sampling draws makes
                // memory, and so success, depend on its size.
                Ok(clipped_sum_in_passes(
                    &net,
                    (x, y),
                    rows_per_pass(arch),
                    dp.max_grad_norm,
                    plan.pos_weight,
                    &mut Masks::Draw(&mut dropout_rng),
                )?)
            },
            &mut |grad, scale| net.step(grad, scale),
        )?;
        Ok(PrivateTrainOutcome {
            params: net.to_flat()?,
            steps: run.steps,
            mean_loss: run.mean_loss,
            non_finite_examples: run.skipped,
        })
    }
}

impl TchTrainer {
    /// [`Trainer::predict`](crate::trainer::Trainer::predict) for a declared architecture:
    /// the probability of the positive class for every row of `data`, dropout off; NaN where
    /// the model's output is undefined.
    pub fn predict_layers(
        &mut self,
        arch: &CheckedArchitecture,
        params: &[f32],
        data: &Examples,
    ) -> Result<Vec<f32>, TrainError> {
        check_layer_inputs(arch, params, data)?;
        let _no_grad = tch::no_grad_guard();
        let net = Network::from_flat(arch, params, Kind::Float, self.device(), false)?;
        let width = data.num_features;
        let mut scores = Vec::with_capacity(data.len());
        let rows = PREDICT_BATCH.min(rows_per_pass(arch));
        // `check_layer_inputs` made `width` the architecture's input size, never zero.
        for chunk in data.features.chunks(rows * width.max(1)) {
            let rows = (chunk.len() / width.max(1)) as i64;
            let x = Tensor::f_from_slice(chunk)?
                .f_view([rows, width as i64])?
                .f_to_device(self.device())?;
            let p = net
                .forward(&x, &mut Masks::Off, None)?
                .f_sigmoid()?
                .f_to_device(Device::Cpu)?
                .f_reshape([-1])?;
            scores.extend(Vec::<f32>::try_from(&p)?);
        }
        Ok(scores)
    }
}

/// Checks that `params` and `data` fit `arch`: the parameter count, finite parameters, the
/// feature width, and, for a model that starts with an embedding, that every feature is a
/// category index of its table.
pub(crate) fn check_layer_inputs(
    arch: &CheckedArchitecture,
    params: &[f32],
    data: &Examples,
) -> Result<(), TrainError> {
    // `check` keeps the input's size within MAX_ACTIVATION, so it does not overflow.
    let width = arch.architecture().input.numel().unwrap_or(usize::MAX);
    check_shapes(arch.param_count(), width, params, data)?;
    check_category_indices(arch, data)
}

/// For a model that starts with an embedding, checks that every feature of `data` (whole rows
/// of the architecture's input) is a category index of its table.
pub(crate) fn check_category_indices(
    arch: &CheckedArchitecture,
    data: &Examples,
) -> Result<(), TrainError> {
    let width = data.num_features.max(1);
    if let Some(LayerSpec::Embedding { num_embeddings, .. }) = arch.architecture().layers.first() {
        let bad = data
            .features
            .iter()
            .position(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < *num_embeddings));
        if let Some(at) = bad {
            return Err(TrainError::CategoryIndex {
                row: at / width,
                column: at % width,
                categories: *num_embeddings,
            });
        }
    }
    Ok(())
}

/// [`clipped_gradient_sum`] over the batch `(x, y)` taken `rows` examples at a time and added
/// up, which is the same sum: clipping is per example. `dp_sgd_loop` never asks for an empty
/// batch's.
fn clipped_sum_in_passes(
    net: &Network,
    (x, y): (&Tensor, &Tensor),
    rows: usize,
    max_norm: f64,
    pos_weight: f64,
    masks: &mut Masks<'_>,
) -> Result<ClippedSum, TchError> {
    let total_rows = x.size().first().copied().unwrap_or(0);
    let step = i64::try_from(rows.max(1)).unwrap_or(i64::MAX);
    let mut start = 0;
    let mut total: Option<ClippedSum> = None;
    loop {
        let len = step.min(total_rows - start);
        let part = clipped_gradient_sum(
            net,
            &x.f_narrow(0, start, len)?,
            &y.f_narrow(0, start, len)?,
            max_norm,
            pos_weight,
            masks,
        )?;
        let sum = match total {
            None => part,
            Some(sum) => ClippedSum {
                sum: sum.sum.f_add(&part.sum)?,
                loss_sum: sum.loss_sum + part.loss_sum,
                skipped: sum.skipped + part.skipped,
            },
        };
        start += len;
        if start >= total_rows {
            return Ok(sum);
        }
        total = Some(sum);
    }
}

/// Whether any layer of `arch` is a dropout layer.
fn has_dropout(arch: &CheckedArchitecture) -> bool {
    arch.layers()
        .iter()
        .any(|l| matches!(arch.spec_at(&l.path), Some(LayerSpec::Dropout { .. })))
}

#[cfg(test)]
mod tests {
    use medfed_protocol::architecture::{Architecture, Shape};
    use medfed_protocol::model::{ModelKind, ModelSpec};
    use rand_distr::StandardNormal;

    use super::*;
    use crate::trainer::{ComputeDevice, Trainer};

    fn cpu() -> TchTrainer {
        TchTrainer::new(ComputeDevice::Cpu).unwrap()
    }

    fn plan(epochs: u32, lr: f64) -> TrainingPlan {
        TrainingPlan {
            local_epochs: epochs,
            learning_rate: lr,
            batch_size: 16,
            seed: 3,
            pos_weight: 1.0,
        }
    }

    fn dp(noise_multiplier: f64, max_grad_norm: f64, sample_rate: f64) -> DpConfig {
        DpConfig {
            noise_multiplier,
            max_grad_norm,
            sample_rate,
        }
    }

    fn mlp_layers(input: usize, hidden: usize) -> CheckedArchitecture {
        Architecture {
            input: Shape::Features { features: input },
            layers: vec![
                LayerSpec::Linear { out: hidden },
                LayerSpec::Relu,
                LayerSpec::Linear { out: 1 },
            ],
        }
        .check()
        .unwrap()
    }

    /// 1×6×6 images whose label says whether the left half is brighter than the right.
    fn cnn() -> CheckedArchitecture {
        Architecture {
            input: Shape::Image {
                channels: 1,
                height: 6,
                width: 6,
            },
            layers: vec![
                LayerSpec::Conv2d {
                    out_channels: 2,
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                },
                LayerSpec::GroupNorm { groups: 1 },
                LayerSpec::Relu,
                LayerSpec::Dropout { p: 0.1 },
                LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: None,
                },
                LayerSpec::Flatten,
                LayerSpec::Linear { out: 1 },
            ],
        }
        .check()
        .unwrap()
    }

    fn images(rows: usize, seed: u64) -> Examples {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut data = Examples {
            num_features: 36,
            ..Examples::default()
        };
        for _ in 0..rows {
            let x: Vec<f32> = (0..36).map(|_| rng.sample(StandardNormal)).collect();
            let left: f32 = (0..36).filter(|i| i % 6 < 3).map(|i| x[i]).sum();
            let right: f32 = (0..36).filter(|i| i % 6 >= 3).map(|i| x[i]).sum();
            data.features.extend(x);
            data.labels.push(if left > right { 1.0 } else { 0.0 });
        }
        data
    }

    fn random_features(rows: usize, width: usize, seed: u64) -> Examples {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut data = Examples {
            num_features: width,
            ..Examples::default()
        };
        for _ in 0..rows {
            let x: Vec<f32> = (0..width).map(|_| rng.sample(StandardNormal)).collect();
            data.labels.push(if x[0] - x[1] > 0.0 { 1.0 } else { 0.0 });
            data.features.extend(x);
        }
        data
    }

    /// The mean loss of `params` on all of `data`, without dropout.
    fn mean_loss(arch: &CheckedArchitecture, params: &[f32], data: &Examples) -> f64 {
        let net = Network::from_flat(arch, params, Kind::Float, Device::Cpu, false).unwrap();
        let (x, y) = to_tensors(data, Device::Cpu).unwrap();
        let logits = net.forward(&x, &mut Masks::Off, None).unwrap();
        per_example_losses(&logits, &y, 1.0)
            .unwrap()
            .mean(Kind::Double)
            .double_value(&[])
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn an_mlp_declared_as_layers_trains_as_the_mlp_does() {
        let arch = mlp_layers(5, 8);
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![8] },
            input_dim: 5,
        };
        // Through the `Trainer` trait, as the node calls it: a `ModelKind::Layers` spec.
        let layers = ModelSpec {
            kind: ModelKind::Layers(Box::new(arch.clone())),
            input_dim: 5,
        };
        let init = spec.initial_parameters(4);
        assert_eq!(layers.initial_parameters(4), init);
        let data = random_features(100, 5, 1);
        let plan = plan(2, 0.3);
        let ours = cpu()
            .train(&layers, &init, &data, &plan, &mut |_| {})
            .unwrap();
        let theirs = cpu()
            .train(&spec, &init, &data, &plan, &mut |_| {})
            .unwrap();
        assert_eq!(ours.steps, theirs.steps);
        assert!(max_diff(&ours.params, &theirs.params) < 1e-5);
        assert!(
            max_diff(&ours.params, &init) > 1e-2,
            "training moved nothing"
        );

        let dp = dp(1.0, 0.5, 0.2);
        let mut rng_a = ChaCha20Rng::seed_from_u64(9);
        let mut rng_b = ChaCha20Rng::seed_from_u64(9);
        let ours = cpu()
            .train_private(&layers, &init, &data, &plan, &dp, &mut rng_a, &mut |_| {})
            .unwrap();
        let theirs = cpu()
            .train_private(&spec, &init, &data, &plan, &dp, &mut rng_b, &mut |_| {})
            .unwrap();
        assert_eq!(ours.steps, theirs.steps);
        assert_eq!(ours.steps, 10);
        assert!(
            max_diff(&ours.params, &theirs.params) < 1e-5,
            "DP-SGD on layers and on the MLP differ by {}",
            max_diff(&ours.params, &theirs.params)
        );
    }

    #[test]
    fn plain_and_private_training_of_a_cnn_lower_its_loss() {
        let arch = cnn();
        let init = arch.initial_parameters(2);
        let data = images(128, 5);
        let before = mean_loss(&arch, &init, &data);
        let plain = cpu()
            .train_layers(&arch, &init, &data, &plan(4, 0.2), &mut |_| {})
            .unwrap();
        let after_plain = mean_loss(&arch, &plain.params, &data);
        assert!(
            after_plain < before - 0.1,
            "plain: {before} to {after_plain}"
        );

        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut calls = 0;
        let private = cpu()
            .train_layers_private(
                &arch,
                &init,
                &data,
                &plan(4, 1.0),
                &dp(0.1, 1.0, 0.25),
                &mut rng,
                &mut |_| calls += 1,
            )
            .unwrap();
        assert_eq!(private.steps, 16);
        assert_eq!(calls, 16);
        assert_eq!(private.non_finite_examples, 0);
        let after_private = mean_loss(&arch, &private.params, &data);
        assert!(
            after_private < before - 0.05,
            "DP-SGD: {before} to {after_private}"
        );
    }

    #[test]
    fn private_training_follows_the_callers_rng_only() {
        let arch = cnn();
        let init = arch.initial_parameters(2);
        let data = images(40, 6);
        let run = |seed| {
            cpu()
                .train_layers_private(
                    &arch,
                    &init,
                    &data,
                    &plan(1, 0.5),
                    &dp(1.0, 1.0, 0.5),
                    &mut ChaCha20Rng::seed_from_u64(seed),
                    &mut |_| {},
                )
                .unwrap()
                .params
        };
        assert_eq!(run(1), run(1));
        assert!(max_diff(&run(1), &run(2)) > 1e-3);
    }

    #[test]
    fn inputs_that_do_not_fit_the_architecture_are_refused() {
        let arch = mlp_layers(4, 3);
        let init = arch.initial_parameters(1);
        let data = random_features(10, 4, 1);
        let plan = plan(1, 0.1);
        let mut trainer = cpu();
        let err = trainer
            .train_layers(&arch, &init[1..], &data, &plan, &mut |_| {})
            .unwrap_err();
        assert_eq!(
            err,
            TrainError::ParamCount {
                expected: 19,
                actual: 18
            }
        );
        let mut bad = init.clone();
        bad[5] = f32::NAN;
        let err = trainer
            .train_layers(&arch, &bad, &data, &plan, &mut |_| {})
            .unwrap_err();
        assert_eq!(err, TrainError::NonFiniteParam { index: 5 });
        let wide = random_features(10, 5, 1);
        let err = trainer
            .train_layers(&arch, &init, &wide, &plan, &mut |_| {})
            .unwrap_err();
        assert_eq!(
            err,
            TrainError::FeatureWidth {
                expected: 4,
                actual: 5
            }
        );
        let err = trainer
            .train_layers_private(
                &arch,
                &init,
                &data,
                &plan,
                &dp(1.0, 1.0, 0.0),
                &mut ChaCha20Rng::seed_from_u64(1),
                &mut |_| {},
            )
            .unwrap_err();
        assert!(matches!(err, TrainError::InvalidDpConfig(_)));
    }

    #[test]
    fn an_embedding_model_refuses_features_that_are_not_category_indices() {
        let arch = Architecture {
            input: Shape::Features { features: 2 },
            layers: vec![
                LayerSpec::Embedding {
                    num_embeddings: 3,
                    dim: 2,
                },
                LayerSpec::Flatten,
                LayerSpec::Linear { out: 1 },
            ],
        }
        .check()
        .unwrap();
        let init = arch.initial_parameters(1);
        let mut data = Examples {
            num_features: 2,
            features: vec![0.0, 2.0, 1.0, 1.0],
            labels: vec![1.0, 0.0],
        };
        let outcome = cpu()
            .train_layers_private(
                &arch,
                &init,
                &data,
                &plan(1, 0.5),
                &dp(0.5, 1.0, 1.0),
                &mut ChaCha20Rng::seed_from_u64(1),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(outcome.steps, 1);
        for (bad, column) in [(3.0, 1), (-1.0, 1), (0.5, 1), (f32::NAN, 1)] {
            data.features[3] = bad;
            let err = cpu()
                .train_layers(&arch, &init, &data, &plan(1, 0.5), &mut |_| {})
                .unwrap_err();
            assert_eq!(
                err,
                TrainError::CategoryIndex {
                    row: 1,
                    column,
                    categories: 3
                },
                "value {bad}"
            );
        }
    }

    #[test]
    fn a_batch_clipped_in_passes_sums_as_it_does_whole() {
        let arch = cnn();
        let params = arch.initial_parameters(3);
        let net = Network::from_flat(&arch, &params, Kind::Float, Device::Cpu, true).unwrap();
        let data = images(37, 8);
        let (x, y) = to_tensors(&data, Device::Cpu).unwrap();
        let sum =
            |rows| clipped_sum_in_passes(&net, (&x, &y), rows, 0.05, 1.0, &mut Masks::Off).unwrap();
        let whole = sum(1000);
        for rows in [1, 5, 36] {
            let parts = sum(rows);
            let difference =
                f64::try_from(whole.sum.f_sub(&parts.sum).unwrap().abs().max()).unwrap();
            assert!(difference < 1e-5, "{rows} rows a pass: off by {difference}");
            assert!((whole.loss_sum - parts.loss_sum).abs() < 1e-4);
            assert_eq!(whole.skipped, parts.skipped);
        }
        // Clipping binds, so the sum is not the plain gradient's.
        assert!(f64::try_from(whole.sum.abs().max()).unwrap() > 0.0);
    }
}
