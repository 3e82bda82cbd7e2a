//! DP-SGD on libtorch: exact per-example gradients in one batched pass, per-example clipping,
//! Gaussian noise from the caller's CSPRNG, and an SGD step scaled by the expected batch size.
//!
//! For the supported models (linear layers with ReLU between them, one logit, BCE-with-logits)
//! the backward pass is written out by hand on whole batches, keeping every example apart:
//!
//! ```text
//!  forward   a₀ = x,  zₗ = aₗ₋₁·Wₗᵀ + bₗ,  aₗ = relu(zₗ) (or zₗ for the logit)   all B × dₗ
//!  backward  δ_L = σ(z_L) − y                   gradient of each example's own loss
//!            δₗ₋₁ = (δₗ·Wₗ) ⊙ 1[zₗ₋₁ > 0]
//!  example i ∂ℓᵢ/∂Wₗ = δₗ,ᵢ ⊗ aₗ₋₁,ᵢ,  ∂ℓᵢ/∂bₗ = δₗ,ᵢ
//! ```
//!
//! A training step never builds the `B × out × in` per-example weight gradients: since each is
//! an outer product, its norm is `‖δₗ,ᵢ‖·‖aₗ₋₁,ᵢ‖`, and the sum of the clipped ones is
//! `(c ⊙ δₗ)ᵀ·aₗ₋₁` for clip factors `c`. The test-only `per_example_gradients` builds them in
//! full; tests check both forms against one autograd pass per example.
//!
//! An example whose loss or gradient norm is not finite (a crafted model can overflow `f32` on
//! one patient's features only) contributes zero to the clipped sum and the step goes on. Its
//! rows are masked with `where`, never multiplied by zero: `0 × ∞` and `0 × NaN` are NaN, and
//! one NaN row would spread through `(c ⊙ δₗ)ᵀ·aₗ₋₁` to every coordinate of the sum. Zero is a
//! vector of norm at most C, so the sensitivity DP-SGD's accounting assumes still holds, and
//! whether the step happens no longer depends on which patients were sampled: a coordinator
//! cannot use a refusal as a membership oracle.

use medfed_protocol::model::ModelSpec;
use medfed_protocol::task::TrainingPlan;
use rand::CryptoRng;
use tch::{Device, Kind, Reduction, TchError, Tensor};

use super::params::step_by_flat;
use super::tch_trainer::{Mlp, to_tensors};
use super::{
    DpConfig, PrivateTrainOutcome, TrainError, TrainProgress, check_inputs, check_plan, noise,
};
use crate::examples::Examples;

/// What every DP-SGD run checks besides its model's own inputs: a plan it can follow, DP
/// parameters that describe a run, and data to sample from.
pub(crate) fn check_private_run(
    plan: &TrainingPlan,
    dp: &DpConfig,
    data: &Examples,
) -> Result<(), TrainError> {
    check_plan(plan)?;
    dp.validate()?;
    if data.is_empty() {
        return Err(TrainError::EmptyData);
    }
    Ok(())
}

/// [`Trainer::train_private`](super::Trainer::train_private) on `device`.
#[allow(clippy::too_many_arguments)]
pub(super) fn train_private(
    device: Device,
    spec: &ModelSpec,
    initial: &[f32],
    data: &Examples,
    plan: &TrainingPlan,
    dp: &DpConfig,
    rng: &mut dyn CryptoRng,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<PrivateTrainOutcome, TrainError> {
    check_inputs(spec, initial, data)?;
    check_private_run(plan, dp, data)?;
    // Gradients are computed by hand; autograd would only cost time.
    let _no_grad = tch::no_grad_guard();
    let model = Mlp::from_flat(spec, initial, device, false)?;
    let (features, labels) = to_tensors(data, device)?;

    let run = dp_sgd_loop(
        device,
        (&features, &labels),
        initial.len(),
        plan,
        dp,
        rng,
        progress,
        &mut |x, y| {
            Ok(clipped_gradient_sum(
                &model,
                x,
                y,
                dp.max_grad_norm,
                plan.pos_weight,
            )?)
        },
        &mut |grad, scale| step_by_flat(&model.params(), grad, scale),
    )?;
    Ok(PrivateTrainOutcome {
        params: model.to_flat()?,
        steps: run.steps,
        mean_loss: run.mean_loss,
        non_finite_examples: run.skipped,
    })
}

/// What [`dp_sgd_loop`] did.
pub(crate) struct DpRun {
    /// Steps taken.
    pub steps: u64,
    /// Examples that contributed zero (a non-finite loss or gradient).
    pub skipped: u64,
    /// Mean loss of the last epoch's counted examples.
    pub mean_loss: f64,
}

/// DP-SGD's loop, whatever the model: `plan.local_epochs` epochs of `round(1/q)` steps, each
/// Poisson-sampling its batch from `rng`, summing the batch's clipped per-example gradients
/// with `clipped_sum`, adding Gaussian noise of standard deviation `σ·C` from `rng` and
/// stepping with `step` scaled by the learning rate over the *expected* batch size (Opacus's
/// convention). An empty batch still steps (on the noise alone), so that whether a step
/// happens never depends on the data.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dp_sgd_loop(
    device: Device,
    (features, labels): (&Tensor, &Tensor),
    num_params: usize,
    plan: &TrainingPlan,
    dp: &DpConfig,
    rng: &mut dyn CryptoRng,
    progress: &mut dyn FnMut(TrainProgress),
    clipped_sum: &mut dyn FnMut(&Tensor, &Tensor) -> Result<ClippedSum, TrainError>,
    step: &mut dyn FnMut(&Tensor, f64) -> Result<(), TchError>,
) -> Result<DpRun, TrainError> {
    let rows = usize::try_from(features.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let batches = usize::try_from(dp.steps_per_epoch()).unwrap_or(usize::MAX);
    let step_scale = plan.learning_rate / (dp.sample_rate * rows as f64);
    let noise_std = dp.noise_multiplier * dp.max_grad_norm;
    let mut run = DpRun {
        steps: 0,
        skipped: 0,
        mean_loss: 0.0,
    };
    let mean = |sum: f64, n: usize| if n == 0 { 0.0 } else { sum / n as f64 };
    for epoch in 1..=plan.local_epochs {
        let mut loss_sum = 0.0;
        let mut seen = 0usize;
        for b in 1..=batches {
            let batch = noise::poisson_sample(rng, rows, dp.sample_rate);
            let mut grad = if batch.is_empty() {
                Tensor::f_zeros([num_params as i64], (Kind::Float, device))?
            } else {
                let index = Tensor::f_from_slice(&batch)?.f_to_device(device)?;
                let x = features.f_index_select(0, &index)?;
                let y = labels.f_index_select(0, &index)?;
                let clipped = clipped_sum(&x, &y)?;
                // Examples that did not count contributed zero; the step goes on regardless.
                run.skipped += clipped.skipped;
                loss_sum += clipped.loss_sum;
                seen += batch
                    .len()
                    .saturating_sub(usize::try_from(clipped.skipped).unwrap_or(usize::MAX));
                clipped.sum
            };
            if noise_std > 0.0 {
                let noise = noise::gaussian(rng, num_params, noise_std);
                let noise = Tensor::f_from_slice(&noise)?.f_to_device(device)?;
                let _ = grad.f_add_(&noise)?;
            }
            step(&grad, step_scale)?;
            run.steps += 1;
            progress(TrainProgress {
                epoch,
                epochs: plan.local_epochs,
                batch: b,
                batches,
                loss: mean(loss_sum, seen),
            });
        }
        run.mean_loss = mean(loss_sum, seen);
    }
    Ok(run)
}

/// Every example's gradient of its own BCE-with-logits loss, as a `[B, P]` matrix whose row `i`
/// is example `i`'s gradient in [`ParamLayout`](medfed_protocol::model::ParamLayout) order.
///
/// `x` is `[B, input_dim]`, `y` is `[B, 1]`. Exact, and vectorised: one batched forward and
/// backward pass, each weight gradient an outer product `einsum("bi,bj->bij", δ, a)`. DP-SGD
/// uses [`clipped_gradient_sum`] instead, and tests check it against this full form;
/// distributed DP (`super::distributed`) needs each clipped gradient itself.
pub(crate) fn per_example_gradients(
    model: &Mlp,
    x: &Tensor,
    y: &Tensor,
    pos_weight: f64,
) -> Result<Tensor, TchError> {
    let pass = backprop(model, x, y, pos_weight)?;
    let rows = x.size()[0];
    let mut columns = Vec::with_capacity(2 * pass.deltas.len());
    for (delta, input) in pass.deltas.iter().zip(&pass.inputs) {
        let weight = Tensor::f_einsum("bi,bj->bij", &[delta, input], None::<&[i64]>)?;
        columns.push(weight.f_reshape([rows, -1])?);
        columns.push(delta.shallow_clone());
    }
    Tensor::f_cat(&columns, 1)
}

/// Scales each row of `grads` (`[B, P]`, one example per row) by `min(1, max_norm/‖row‖)`, so that
/// no row's L2 norm exceeds `max_norm`; rows already within it are returned unchanged.
pub(crate) fn clip_per_example(grads: &Tensor, max_norm: f64) -> Result<Tensor, TchError> {
    let norms = grads
        .f_square()?
        .f_sum_dim_intlist(1, false, Kind::Float)?
        .f_sqrt()?;
    let factor = clip_factors(&norms, max_norm)?;
    grads.f_mul(&factor.f_unsqueeze(1)?)
}

/// What one batch contributes to a DP-SGD step, before noise.
pub(crate) struct ClippedSum {
    /// Sum over the batch of the clipped per-example gradients, flat, `[P]`; an example that
    /// did not count contributes exactly zero.
    pub(crate) sum: Tensor,
    /// Sum of the losses of the examples that counted.
    pub(crate) loss_sum: f64,
    /// Examples whose loss or gradient norm was not finite, and so did not count.
    pub(crate) skipped: u64,
}

/// The sum of the per-example gradients of the batch `(x, y)`, each clipped to L2 norm
/// `max_norm`, without building the per-example gradients: equal to
/// `clip_per_example(per_example_gradients(..)).sum(0)` when every example counts.
///
/// An example counts when its loss and its gradient's squared norm are finite (a gradient whose
/// squared norm overflows `f32` does not count either). One that does not count contributes
/// exactly zero to the sum and nothing to the loss, whatever the other examples are: it is
/// masked row by row, so the other examples' contributions are those of a batch without it.
pub(crate) fn clipped_gradient_sum(
    model: &Mlp,
    x: &Tensor,
    y: &Tensor,
    max_norm: f64,
    pos_weight: f64,
) -> Result<ClippedSum, TchError> {
    let pass = backprop(model, x, y, pos_weight)?;
    let norm_sq = per_example_sq_norms(&pass, x)?;
    let counts = norm_sq
        .f_isfinite()?
        .f_logical_and(&pass.losses.f_isfinite()?)?;
    let counts_row = counts.f_unsqueeze(1)?;
    let factor = clip_factors(&norm_sq.f_sqrt()?, max_norm)?.f_unsqueeze(1)?;
    let mut parts = Vec::with_capacity(2 * pass.deltas.len());
    for (delta, input) in pass.deltas.iter().zip(&pass.inputs) {
        // `where`, not a product with the mask: 0 × NaN would poison the whole sum.
        let scaled = delta
            .f_mul(&factor)?
            .f_where_scalarother(&counts_row, 0.0)?;
        let input = input.f_where_scalarother(&counts_row, 0.0)?;
        parts.push(scaled.f_tr()?.f_mm(&input)?.f_reshape([-1])?);
        parts.push(scaled.f_sum_dim_intlist(0, false, Kind::Float)?);
    }
    let losses = pass.losses.f_where_scalarother(&counts, 0.0)?;
    let skipped = counts.f_logical_not()?.f_sum(Kind::Float)?;
    // One device-to-host transfer for both figures.
    let stats = Tensor::f_stack(&[losses.f_sum(Kind::Float)?, skipped], 0)?
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?;
    let stats = Vec::<f64>::try_from(&stats)?;
    Ok(ClippedSum {
        sum: Tensor::f_cat(&parts, 0)?,
        loss_sum: stats[0],
        // A count of at most B, held exactly in f32 for any batch that fits in memory.
        skipped: stats[1] as u64,
    })
}

/// The squared L2 norm of each example's whole gradient, `[B]`, from the factored form:
/// `‖gᵢ‖² = Σₗ ‖δₗ,ᵢ‖²·(‖aₗ₋₁,ᵢ‖² + 1)`, the weight's outer product and the bias. Row `i`
/// depends on example `i` alone.
fn per_example_sq_norms(pass: &Backprop, x: &Tensor) -> Result<Tensor, TchError> {
    let mut norm_sq: Option<Tensor> = None;
    for (delta, input) in pass.deltas.iter().zip(&pass.inputs) {
        let delta_sq = row_sq_norms(delta)?;
        let input_sq = row_sq_norms(input)?.f_add_scalar(1.0)?;
        let layer = delta_sq.f_mul(&input_sq)?;
        norm_sq = Some(match norm_sq {
            None => layer,
            Some(total) => total.f_add(&layer)?,
        });
    }
    // A model has at least one layer (`ModelSpec::validate`); an empty sum is zero anyway.
    match norm_sq {
        Some(n) => Ok(n),
        None => Tensor::f_zeros([x.size()[0]], (Kind::Float, x.device())),
    }
}

/// Activations kept from the forward pass and error signals from the backward pass.
struct Backprop {
    /// Each layer's input `aₗ₋₁`, `[B, fan_in]`, input side first.
    inputs: Vec<Tensor>,
    /// Each layer's `δₗ`, the gradient of each example's loss with respect to the layer's output
    /// before its ReLU, `[B, fan_out]`, input side first.
    deltas: Vec<Tensor>,
    /// Each example's BCE-with-logits loss, `[B]`.
    losses: Tensor,
}

/// The forward pass and the hand-written backward pass of the per-example losses, a positive
/// example's weighted by `pos_weight` ([`TrainingPlan::pos_weight`]).
fn backprop(model: &Mlp, x: &Tensor, y: &Tensor, pos_weight: f64) -> Result<Backprop, TchError> {
    let layers = model.layers.len();
    let mut inputs = Vec::with_capacity(layers);
    let mut pre_activations = Vec::with_capacity(layers);
    let mut h = x.shallow_clone();
    for (w, b, relu) in &model.layers {
        let z = h.f_linear(w, Some(b))?;
        inputs.push(h);
        h = if *relu {
            z.f_relu()?
        } else {
            z.shallow_clone()
        };
        pre_activations.push(z);
    }
    let mut losses =
        h.f_binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::None)?;
    // ∂ℓᵢ/∂logitᵢ = σ(logitᵢ) − yᵢ for ℓ = BCE-with-logits.
    let mut grad_out = h.f_sigmoid()?.f_sub(y)?;
    if pos_weight != 1.0 {
        // A positive example's loss, and so its gradient, weighs `pos_weight`: wᵢ = 1 + (p − 1)·yᵢ
        // for 0/1 labels, PyTorch's `pos_weight`. Clipping comes after, on the weighted gradient.
        let weights = y.f_mul_scalar(pos_weight - 1.0)?.f_add_scalar(1.0)?;
        losses = losses.f_mul(&weights)?;
        grad_out = grad_out.f_mul(&weights)?;
    }
    let losses = losses.f_reshape([-1])?;
    let mut deltas = Vec::with_capacity(layers);
    for (l, (w, _, relu)) in model.layers.iter().enumerate().rev() {
        let delta = if *relu {
            // ReLU's derivative, zero at zero as torch takes it.
            pre_activations[l].f_threshold_backward(&grad_out, 0.0)?
        } else {
            grad_out
        };
        grad_out = delta.f_mm(w)?;
        deltas.push(delta);
    }
    deltas.reverse();
    Ok(Backprop {
        inputs,
        deltas,
        losses,
    })
}

/// `min(1, max_norm / n)` for each norm `n` (1 for a zero norm).
pub(crate) fn clip_factors(norms: &Tensor, max_norm: f64) -> Result<Tensor, TchError> {
    norms
        .f_reciprocal()?
        .f_mul_scalar(max_norm)?
        .f_clamp_max(1.0)
}

/// The squared L2 norm of each row of a `[B, d]` matrix.
fn row_sq_norms(m: &Tensor) -> Result<Tensor, TchError> {
    m.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)
}

#[cfg(test)]
mod tests {
    use medfed_protocol::model::ModelKind;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::StandardNormal;

    use super::*;
    use crate::trainer::{ComputeDevice, TchTrainer, Trainer};

    fn mlp(input_dim: usize, hidden: &[usize]) -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Mlp {
                hidden: hidden.to_vec(),
            },
            input_dim,
        }
    }

    fn logistic(input_dim: usize) -> ModelSpec {
        ModelSpec {
            kind: ModelKind::LogisticRegression,
            input_dim,
        }
    }

    fn plan(epochs: u32, lr: f64) -> TrainingPlan {
        TrainingPlan {
            local_epochs: epochs,
            learning_rate: lr,
            batch_size: 32,
            seed: 0,
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

    fn cpu() -> TchTrainer {
        TchTrainer::new(ComputeDevice::Cpu).unwrap()
    }

    /// `rows` examples with standard normal features and labels from a noisy linear rule.
    fn random_examples(rows: usize, width: usize, seed: u64) -> Examples {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut data = Examples {
            num_features: width,
            ..Examples::default()
        };
        for _ in 0..rows {
            let x: Vec<f32> = (0..width).map(|_| rng.sample(StandardNormal)).collect();
            let s = x.iter().step_by(2).sum::<f32>() - x.iter().skip(1).step_by(2).sum::<f32>();
            let label = s + rng.sample::<f32, _>(StandardNormal) > 0.0;
            data.features.extend(x);
            data.labels.push(if label { 1.0 } else { 0.0 });
        }
        data
    }

    fn tensors(data: &Examples) -> (Tensor, Tensor) {
        to_tensors(data, Device::Cpu).unwrap()
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.reshape([-1])).unwrap()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn row_norms(grads: &Tensor) -> Vec<f64> {
        let rows = grads.size()[0];
        (0..rows)
            .map(|i| {
                to_vec(&grads.get(i))
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    }

    fn no_progress() -> impl FnMut(TrainProgress) {
        |_| {}
    }

    #[test]
    fn per_example_gradients_match_one_autograd_pass_per_example() {
        // PyTorch's own `pos_weight` is the reference for a weighted positive class.
        for (spec, pos_weight) in [
            (mlp(8, &[4]), 1.0),
            (mlp(8, &[4, 3]), 1.0),
            (logistic(8), 1.0),
            (mlp(8, &[4, 3]), 6.5),
            (logistic(8), 0.25),
        ] {
            let params = spec.initial_parameters(7);
            let data = random_examples(16, 8, 1);
            let (x, y) = tensors(&data);
            let model = Mlp::from_flat(&spec, &params, Device::Cpu, false).unwrap();
            let grads = per_example_gradients(&model, &x, &y, pos_weight).unwrap();
            let torch_weight = Tensor::from_slice(&[pos_weight as f32]);
            assert_eq!(grads.size(), [16, params.len() as i64]);

            for i in 0..16 {
                let single = Mlp::from_flat(&spec, &params, Device::Cpu, true).unwrap();
                let loss = single
                    .forward(&x.narrow(0, i, 1))
                    .unwrap()
                    .binary_cross_entropy_with_logits::<&Tensor>(
                        &y.narrow(0, i, 1),
                        None,
                        Some(&torch_weight),
                        Reduction::Sum,
                    );
                loss.backward();
                let mut want = Vec::new();
                for (w, b, _) in &single.layers {
                    want.extend(to_vec(&w.grad()));
                    want.extend(to_vec(&b.grad()));
                }
                let got = to_vec(&grads.get(i));
                let diff = max_abs_diff(&got, &want);
                assert!(
                    diff < 1e-5,
                    "{spec:?}, pos_weight {pos_weight}, example {i}: differs by {diff}"
                );
            }
        }
    }

    #[test]
    fn clipping_bounds_every_norm_and_leaves_small_gradients_alone() {
        let spec = mlp(8, &[4]);
        let params = spec.initial_parameters(3);
        let data = random_examples(64, 8, 2);
        let (x, y) = tensors(&data);
        let model = Mlp::from_flat(&spec, &params, Device::Cpu, false).unwrap();
        let grads = per_example_gradients(&model, &x, &y, 1.0).unwrap();
        let before = row_norms(&grads);
        // Halfway between two middle norms, so that exactly half the examples are clipped.
        let mut sorted = before.clone();
        sorted.sort_by(f64::total_cmp);
        let c = (sorted[31] + sorted[32]) / 2.0;
        let clipped = clip_per_example(&grads, c).unwrap();
        let after = row_norms(&clipped);
        let mut unchanged = 0;
        for i in 0..64 {
            assert!(
                after[i] <= c * (1.0 + 1e-6),
                "example {i}: {} > {c}",
                after[i]
            );
            if before[i] <= c {
                assert_eq!(to_vec(&clipped.get(i as i64)), to_vec(&grads.get(i as i64)));
                unchanged += 1;
            } else {
                assert!((after[i] / c - 1.0).abs() < 1e-5, "{} vs {c}", after[i]);
            }
        }
        assert_eq!(unchanged, 32);
    }

    #[test]
    fn the_factored_clipped_sum_equals_clipping_the_full_per_example_gradients() {
        let spec = mlp(8, &[6, 4]);
        let params = spec.initial_parameters(5);
        let data = random_examples(32, 8, 3);
        let (x, y) = tensors(&data);
        let model = Mlp::from_flat(&spec, &params, Device::Cpu, false).unwrap();
        let grads = per_example_gradients(&model, &x, &y, 1.0).unwrap();
        for c in [1e-3, 0.3, 1e6] {
            let want = clip_per_example(&grads, c)
                .unwrap()
                .sum_dim_intlist(0, false, Kind::Float);
            let got = clipped_gradient_sum(&model, &x, &y, c, 1.0).unwrap();
            let diff = max_abs_diff(&to_vec(&got.sum), &to_vec(&want));
            assert!(diff < 1e-5, "C = {c}: differs by {diff}");
            assert_eq!(got.skipped, 0);
            let losses = model
                .forward(&x)
                .unwrap()
                .binary_cross_entropy_with_logits::<Tensor>(&y, None, None, Reduction::Sum)
                .double_value(&[]);
            assert!((got.loss_sum - losses).abs() < 1e-5 * losses.max(1.0));
        }
    }

    #[test]
    fn without_noise_or_clipping_one_full_batch_epoch_is_one_sgd_step() {
        for spec in [mlp(8, &[4]), logistic(5)] {
            let data = random_examples(40, spec.input_dim, 4);
            let init = spec.initial_parameters(9);
            let mut trainer = cpu();
            let sgd_plan = TrainingPlan {
                batch_size: 40,
                ..plan(1, 0.3)
            };
            let sgd = trainer
                .train(&spec, &init, &data, &sgd_plan, &mut no_progress())
                .unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(0);
            let private = trainer
                .train_private(
                    &spec,
                    &init,
                    &data,
                    &plan(1, 0.3),
                    &dp(0.0, 1e9, 1.0),
                    &mut rng,
                    &mut no_progress(),
                )
                .unwrap();
            assert_eq!((sgd.steps, private.steps), (1, 1));
            let diff = max_abs_diff(&sgd.params, &private.params);
            assert!(diff < 1e-5, "{spec:?}: differs by {diff}");
            assert!((sgd.mean_loss - private.mean_loss).abs() < 1e-5);
            assert_ne!(private.params, init);
        }
    }

    #[test]
    fn noise_is_reproducible_from_the_seed_and_varies_with_it() {
        let spec = mlp(6, &[8]);
        let data = random_examples(50, 6, 5);
        let init = spec.initial_parameters(1);
        let run = |seed| {
            cpu()
                .train_private(
                    &spec,
                    &init,
                    &data,
                    &plan(2, 0.1),
                    &dp(1.1, 1.0, 0.2),
                    &mut ChaCha20Rng::seed_from_u64(seed),
                    &mut no_progress(),
                )
                .unwrap()
        };
        let a = run(7);
        assert_eq!(a.steps, 2 * 5);
        assert_eq!(a, run(7));
        assert_ne!(a.params, run(8).params);
    }

    #[test]
    fn noise_has_standard_deviation_sigma_c_over_q_n() {
        // The noise swamps the gradients (each step's clipped sum has norm at most C·|B|), so the
        // change in the parameters is the noise of two steps: std √2·lr·σ·C/(q·N) per coordinate.
        let spec = mlp(40, &[64]);
        let data = random_examples(20, 40, 6);
        let init = spec.initial_parameters(2);
        let (sigma, c, q, lr) = (1e4, 0.5, 0.5, 1.0);
        let out = cpu()
            .train_private(
                &spec,
                &init,
                &data,
                &plan(1, lr),
                &dp(sigma, c, q),
                &mut ChaCha20Rng::seed_from_u64(11),
                &mut no_progress(),
            )
            .unwrap();
        assert_eq!(out.steps, 2);
        let moves: Vec<f64> = out
            .params
            .iter()
            .zip(&init)
            .map(|(a, b)| f64::from(a - b))
            .collect();
        let n = moves.len() as f64;
        let mean = moves.iter().sum::<f64>() / n;
        let std = (moves.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want = 2f64.sqrt() * lr * sigma * c / (q * 20.0);
        // 2689 coordinates: the estimate's relative standard error is about 1.4%.
        assert!((std / want - 1.0).abs() < 0.06, "std {std}, want {want}");
        assert!(mean.abs() < 0.1 * want, "mean {mean}");
    }

    #[test]
    fn empty_batches_still_take_a_step() {
        let spec = logistic(3);
        let data = random_examples(2, 3, 7);
        let init = spec.initial_parameters(0);
        let mut calls = 0;
        let out = cpu()
            .train_private(
                &spec,
                &init,
                &data,
                &plan(2, 0.1),
                &dp(0.0, 1.0, 0.01),
                &mut ChaCha20Rng::seed_from_u64(3),
                &mut |p| {
                    assert_eq!(p.batches, 100);
                    calls += 1;
                },
            )
            .unwrap();
        assert_eq!((out.steps, calls), (200, 200));
        assert!(out.mean_loss.is_finite());
    }

    #[test]
    fn private_logistic_regression_still_learns() {
        let spec = logistic(4);
        let data = random_examples(2000, 4, 8);
        let init = vec![0.0; spec.layout().len()];
        let mut trainer = cpu();
        let out = trainer
            .train_private(
                &spec,
                &init,
                &data,
                &plan(3, 0.5),
                &dp(1.0, 1.0, 0.05),
                &mut ChaCha20Rng::seed_from_u64(4),
                &mut no_progress(),
            )
            .unwrap();
        assert_eq!(out.steps, 3 * 20);
        let probs = trainer.predict(&spec, &out.params, &data).unwrap();
        let right = probs
            .iter()
            .zip(&data.labels)
            .filter(|(p, y)| (**p > 0.5) == (**y > 0.5))
            .count();
        // The rule with label noise allows about 84%.
        assert!(right > 1500, "{right} of 2000 right");
    }

    #[test]
    fn invalid_dp_parameters_are_rejected() {
        let spec = logistic(3);
        let data = random_examples(10, 3, 9);
        let init = spec.initial_parameters(0);
        let mut trainer = cpu();
        let bad = [
            dp(1.0, 1.0, 0.0),
            dp(1.0, 1.0, 1.5),
            dp(1.0, 1.0, f64::NAN),
            dp(1.0, 0.0, 0.5),
            dp(1.0, -1.0, 0.5),
            dp(1.0, f64::INFINITY, 0.5),
            dp(-0.1, 1.0, 0.5),
            dp(f64::NAN, 1.0, 0.5),
            dp(f64::INFINITY, 1.0, 0.5),
        ];
        for config in bad {
            let result = trainer.train_private(
                &spec,
                &init,
                &data,
                &plan(1, 0.1),
                &config,
                &mut ChaCha20Rng::seed_from_u64(0),
                &mut no_progress(),
            );
            assert!(
                matches!(result, Err(TrainError::InvalidDpConfig(_))),
                "{config:?}: {result:?}"
            );
        }
        assert_eq!(dp(0.0, 1.0, 1.0).validate(), Ok(()));
        assert_eq!(dp(1.0, 1.0, 0.3).steps_per_epoch(), 3);
        assert_eq!(dp(1.0, 1.0, 1.0).steps_per_epoch(), 1);
    }

    /// `rows` random examples of width 4 whose last feature is 0, and the parameters of an MLP
    /// `4 → [3] → 1` whose first hidden unit weighs that feature by 3·10³⁸: harmless on these
    /// rows, but any row with a last feature of 2 overflows `f32` to +∞ in that unit.
    fn crafted_model_and_data(rows: usize) -> (ModelSpec, Vec<f32>, Examples) {
        let spec = mlp(4, &[3]);
        let mut params = spec.initial_parameters(21);
        // Layout: W₁ [3, 4] row-major first, so W₁[0][3] is at index 3.
        params[3] = 3e38;
        let mut data = random_examples(rows, 4, 22);
        for i in 0..rows {
            data.features[4 * i + 3] = 0.0;
        }
        (spec, params, data)
    }

    /// `data` with one more row, the target: features `[0.3, -0.2, 0.5, 2.0]`, label 1.
    fn with_target(data: &Examples) -> Examples {
        let mut out = data.clone();
        out.features.extend([0.3, -0.2, 0.5, 2.0]);
        out.labels.push(1.0);
        out
    }

    #[test]
    fn an_example_that_overflows_contributes_zero_instead_of_aborting_the_step() {
        let (spec, init, others) = crafted_model_and_data(15);
        let all = with_target(&others);
        let train = |data: &Examples, epochs: u32, sigma: f64| {
            cpu().train_private(
                &spec,
                &init,
                data,
                &plan(epochs, 0.2),
                &dp(sigma, 1.0, 1.0),
                &mut ChaCha20Rng::seed_from_u64(5),
                &mut no_progress(),
            )
        };

        // With noise, as a node trains: the target is sampled at every step and neither stops
        // training nor changes its shape.
        let noisy = train(&all, 3, 1.0).expect("a non-finite example must not abort DP-SGD");
        assert_eq!(noisy.steps, train(&others, 3, 1.0).unwrap().steps);
        assert_eq!(noisy.steps, 3);
        assert_eq!(noisy.non_finite_examples, 3, "the target, once a step");
        assert!(noisy.params.iter().all(|p| p.is_finite()));
        assert!(noisy.mean_loss.is_finite());

        // Without noise the target adds exactly nothing to a step: the sum is the others' alone,
        // divided by the expected batch size q·N of the whole data set (N = 16 with the target,
        // 15 without).
        let with = train(&all, 1, 0.0).unwrap();
        let without = train(&others, 1, 0.0).unwrap();
        assert_eq!(
            (with.non_finite_examples, without.non_finite_examples),
            (1, 0)
        );
        let summed = |params: &[f32], n: f32| -> Vec<f32> {
            params.iter().zip(&init).map(|(p, i)| (i - p) * n).collect()
        };
        let diff = max_abs_diff(&summed(&with.params, 16.0), &summed(&without.params, 15.0));
        assert!(diff < 1e-5, "clipped sums differ by {diff}");
        assert_ne!(with.params, init);

        // A batch holding only the target: the update is exactly zero.
        let alone = with_target(&Examples {
            num_features: 4,
            ..Examples::default()
        });
        let out = train(&alone, 3, 0.0).unwrap();
        assert_eq!((out.steps, out.non_finite_examples), (3, 3));
        assert_eq!(out.params, init);
        assert_eq!(out.mean_loss, 0.0);
    }

    #[test]
    fn a_poisoned_example_leaves_the_others_norms_and_clipped_sum_unchanged() {
        let (spec, params, others) = crafted_model_and_data(12);
        let model = Mlp::from_flat(&spec, &params, Device::Cpu, false).unwrap();
        let (x, y) = tensors(&others);
        let clean_norms =
            to_vec(&per_example_sq_norms(&backprop(&model, &x, &y, 1.0).unwrap(), &x).unwrap());
        let clean = clipped_gradient_sum(&model, &x, &y, 0.5, 1.0).unwrap();
        assert_eq!(clean.skipped, 0);

        // The crafted overflow (+∞ activation, then ∞·0 and ∞ − ∞ further on), and a NaN
        // feature: each poisons only its own row, also through the factored sum's matrix product.
        let mut nan = others.clone();
        nan.features.extend([0.1, f32::NAN, 0.2, 0.0]);
        nan.labels.push(0.0);
        for poisoned in [with_target(&others), nan] {
            let (px, py) = tensors(&poisoned);
            let pass = backprop(&model, &px, &py, 1.0).unwrap();
            let norms = to_vec(&per_example_sq_norms(&pass, &px).unwrap());
            assert!(
                !norms[12].is_finite(),
                "the poisoned row's norm: {}",
                norms[12]
            );
            for (i, (a, b)) in norms.iter().zip(&clean_norms).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.max(1e-6),
                    "example {i}: {a} vs {b}"
                );
            }
            let got = clipped_gradient_sum(&model, &px, &py, 0.5, 1.0).unwrap();
            assert_eq!(got.skipped, 1);
            let sum = to_vec(&got.sum);
            assert!(sum.iter().all(|v| v.is_finite()));
            let diff = max_abs_diff(&sum, &to_vec(&clean.sum));
            assert!(diff < 1e-6, "clipped sums differ by {diff}");
            assert!((got.loss_sum - clean.loss_sum).abs() < 1e-6 * clean.loss_sum);
        }
    }

    #[test]
    fn an_infinite_feature_is_counted_not_reported() {
        let spec = logistic(2);
        let mut data = random_examples(10, 2, 10);
        data.features[0] = f32::INFINITY;
        let out = cpu()
            .train_private(
                &spec,
                &spec.initial_parameters(0),
                &data,
                &plan(2, 0.1),
                &dp(1.0, 1.0, 1.0),
                &mut ChaCha20Rng::seed_from_u64(0),
                &mut no_progress(),
            )
            .unwrap();
        assert_eq!((out.steps, out.non_finite_examples), (2, 2));
        assert!(out.params.iter().all(|p| p.is_finite()));
    }
}
