//! The consortium's own TorchScript module, trained and scored through libtorch's TorchScript
//! runtime (tch's `CModule`).
//!
//! The module's bytes come from the hospital's approved files ([`ApprovedModules`]), read and
//! hashed again at every load; the module must have exactly the parameters the manifest
//! declares (names and shapes), which take the round's values before anything runs.
//!
//! Plain training is the module's own forward and backward pass on each mini-batch, at full
//! speed. DP-SGD needs each example's gradient, which a module of arbitrary code gives only one
//! example at a time: [`TorchScriptModel::clipped_sum`] runs a forward and backward pass per
//! example (exact, whatever the module does, batch-mixing layers included; 35× the plain step
//! at batch 64 for the committed model, `cargo bench -p medfed-node --bench torchscript_dp_sgd`).
//! Scoring takes one row per pass too, and an example or row the module's code fails on counts
//! as not finite, so that neither a DP release nor an evaluation depends on it.

use std::collections::HashMap;
use std::io::Cursor;

use medfed_protocol::model::ModelSpec;
use medfed_protocol::task::TrainingPlan;
use medfed_protocol::torchscript::TorchScriptModule;
use rand::CryptoRng;
use tch::{CModule, Device, Kind, Reduction, TchError, Tensor};

use super::dp_sgd::{ClippedSum, check_private_run, dp_sgd_loop};
use super::params::{flat_values, step_by_flat, step_by_grads};
use super::tch_trainer::{mean_bce, pos_weight_tensor, sgd_loop, to_tensors};
use super::{
    DpConfig, PrivateTrainOutcome, TchTrainer, TrainError, TrainOutcome, TrainProgress,
    check_inputs, check_plan,
};
use crate::examples::Examples;
use crate::modules::ApprovedModules;

/// Where a module runs: the CPU, whatever the node's device. On CUDA, a module's failing index
/// or probability check is a device-side assert that breaks the whole context and surfaces on
/// a later call, outside the per-example handling that keeps failures from depending on the
/// data.
pub(crate) const MODULE_DEVICE: Device = Device::Cpu;

/// A loaded module whose parameters hold a given flat vector.
pub(crate) struct TorchScriptModel {
    module: CModule,
    /// The module's parameters in the manifest's order (the flat vector's).
    params: Vec<Tensor>,
}

impl TorchScriptModel {
    /// Loads the approved module `declared` names on [`MODULE_DEVICE`], checks that its
    /// parameters are exactly the declared ones, and gives them the values of `flat` (whose
    /// length the caller checked).
    pub(crate) fn load(
        modules: &ApprovedModules,
        declared: &TorchScriptModule,
        flat: &[f32],
    ) -> Result<Self, TrainError> {
        let device = MODULE_DEVICE;
        let bytes = modules
            .bytes(&declared.sha256)
            .map_err(|e| TrainError::Module(e.to_string()))?;
        let module = CModule::load_data_on_device(&mut Cursor::new(bytes), device)?;
        let mut named: HashMap<String, Tensor> = module.named_parameters()?.into_iter().collect();
        if named.len() != declared.tensors.len() {
            let mut names: Vec<&String> = named.keys().collect();
            names.sort();
            return Err(TrainError::ModuleMismatch(format!(
                "the module has {} parameters ({names:?}), the task declares {}",
                named.len(),
                declared.tensors.len()
            )));
        }
        let _no_grad = tch::no_grad_guard();
        let mut params = Vec::with_capacity(declared.tensors.len());
        let mut rest = flat;
        for tensor in &declared.tensors {
            let Some(p) = named.remove(&tensor.name) else {
                return Err(TrainError::ModuleMismatch(format!(
                    "the module has no parameter `{}`",
                    tensor.name
                )));
            };
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
            if p.size() != shape {
                return Err(TrainError::ModuleMismatch(format!(
                    "parameter `{}` has shape {:?} in the module, {:?} in the task",
                    tensor.name,
                    p.size(),
                    tensor.shape
                )));
            }
            let (values, tail) = rest.split_at(tensor.numel().min(rest.len()));
            rest = tail;
            let values = Tensor::f_from_slice(values)?
                .f_view(shape.as_slice())?
                .f_to_device(device)?;
            // The module's own parameter (not a detached copy), so that its forward pass
            // reads these values and its backward pass fills this tensor's gradient.
            let mut p = p;
            p.f_copy_(&values)?;
            params.push(p.f_set_requires_grad(true)?);
        }
        Ok(Self { module, params })
    }

    /// The parameter tensors, in the flat vector's order.
    pub(crate) fn params(&self) -> Vec<&Tensor> {
        self.params.iter().collect()
    }

    /// Number of parameters, the flat vector's length.
    fn num_params(&self) -> i64 {
        self.params.iter().map(|p| p.numel() as i64).sum()
    }

    /// Training mode (dropout on) or evaluation mode.
    pub(crate) fn set_training(&mut self, training: bool) -> Result<(), TchError> {
        if training {
            self.module.f_set_train()
        } else {
            self.module.f_set_eval()
        }
    }

    /// The logits of the rows of `x` (`[rows, input_dim]`), shape `[rows, 1]`: the module
    /// must return one value per row.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let rows = x.size().first().copied().unwrap_or(0);
        let out = self.module.forward_ts(&[x])?;
        // `f_kind`, not `kind`, which panics on a type tch does not name.
        let kind = out.f_kind();
        if out.numel() as i64 != rows || !matches!(kind, Ok(Kind::Float)) {
            return Err(TrainError::ModuleOutput {
                shape: out.size(),
                kind: kind.map_or_else(|e| e.to_string(), |k| format!("{k:?}")),
                rows,
            });
        }
        Ok(out.f_reshape([rows, 1])?)
    }

    /// The gradients as one flat `[P]` vector (zero for a parameter the loss did not reach),
    /// and clears them.
    fn take_flat_grad(&self) -> Result<Tensor, TchError> {
        let mut parts = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut grad = p.f_grad()?;
            if grad.defined() {
                parts.push(grad.f_detach_copy()?.f_reshape([-1])?);
                let _ = grad.f_zero_()?;
            } else {
                parts.push(Tensor::f_zeros(
                    [p.numel() as i64],
                    (Kind::Float, MODULE_DEVICE),
                )?);
            }
        }
        Tensor::f_cat(&parts, 0)
    }

    /// Example `i`'s loss and its flat gradient, from a pass over that example alone.
    fn example_gradient(
        &self,
        x: &Tensor,
        y: &Tensor,
        i: i64,
        pos_weight: Option<&Tensor>,
    ) -> Result<(f64, Tensor), TrainError> {
        let loss = tch::with_grad(|| -> Result<_, TrainError> {
            let logit = self.forward(&x.f_narrow(0, i, 1)?)?;
            let loss = logit.f_binary_cross_entropy_with_logits::<&Tensor>(
                &y.f_narrow(0, i, 1)?,
                None,
                pos_weight,
                Reduction::Sum,
            )?;
            loss.f_backward()?;
            Ok(loss.f_double_value(&[])?)
        })?;
        Ok((loss, self.take_flat_grad()?))
    }

    /// [`Self::example_gradient`], or `None` where the module's pass fails on this example
    /// (its gradients cleared): a module's code may fail on some patients' values, and whether
    /// a DP release happens must never depend on them, so such an example counts as one whose
    /// gradient is not finite.
    fn example_gradient_or_none(
        &self,
        x: &Tensor,
        y: &Tensor,
        i: i64,
        pos_weight: Option<&Tensor>,
    ) -> Result<Option<(f64, Tensor)>, TrainError> {
        match self.example_gradient(x, y, i, pos_weight) {
            Ok(example) => Ok(Some(example)),
            Err(_) => {
                let _cleared = self.take_flat_grad()?;
                Ok(None)
            }
        }
    }

    /// Every example's gradient of its own loss, `[B, P]`, one pass per example; a row of NaN
    /// for an example the module fails on (which distributed DP then counts as not finite).
    pub(crate) fn per_example_gradients(
        &self,
        x: &Tensor,
        y: &Tensor,
        pos_weight: f64,
    ) -> Result<Tensor, TrainError> {
        let weight = pos_weight_tensor(pos_weight, MODULE_DEVICE)?;
        let rows = x.size().first().copied().unwrap_or(0);
        let mut out = Vec::with_capacity(usize::try_from(rows).unwrap_or(0));
        let total = self.num_params();
        for i in 0..rows {
            out.push(
                match self.example_gradient_or_none(x, y, i, weight.as_ref())? {
                    Some((_, grad)) => grad,
                    None => Tensor::f_full([total], f64::NAN, (Kind::Float, MODULE_DEVICE))?,
                },
            );
        }
        Ok(Tensor::f_stack(&out, 0)?)
    }

    /// The sum of the batch's per-example gradients, each clipped to L2 norm `max_norm`; an
    /// example whose loss or gradient is not finite, or on which the module fails, contributes
    /// zero and is counted as skipped
    /// (as in `dp_sgd::clipped_gradient_sum`).
    pub(crate) fn clipped_sum(
        &self,
        x: &Tensor,
        y: &Tensor,
        max_norm: f64,
        pos_weight: f64,
    ) -> Result<ClippedSum, TrainError> {
        let weight = pos_weight_tensor(pos_weight, MODULE_DEVICE)?;
        let rows = x.size().first().copied().unwrap_or(0);
        let total = self.num_params();
        let mut sum = Tensor::f_zeros([total], (Kind::Float, MODULE_DEVICE))?;
        let (mut loss_sum, mut skipped) = (0.0, 0u64);
        for i in 0..rows {
            let Some((loss, grad)) = self.example_gradient_or_none(x, y, i, weight.as_ref())?
            else {
                skipped += 1;
                continue;
            };
            let norm = grad.f_norm()?.f_double_value(&[])?;
            if !(loss.is_finite() && norm.is_finite()) {
                skipped += 1;
                continue;
            }
            let factor = if norm > max_norm {
                max_norm / norm
            } else {
                1.0
            };
            let _ = sum.f_add_(&grad.f_mul_scalar(factor)?)?;
            loss_sum += loss;
        }
        Ok(ClippedSum {
            sum,
            loss_sum,
            skipped,
        })
    }

    /// The parameters as one flat vector in the manifest's order.
    pub(crate) fn to_flat(&self) -> Result<Vec<f32>, TrainError> {
        Ok(flat_values(&self.params())?)
    }
}

impl TchTrainer {
    /// [`Trainer::train`] for a TorchScript module: plain mini-batch SGD through the module's
    /// own backward pass.
    pub(super) fn train_module(
        &mut self,
        spec: &ModelSpec,
        module: &TorchScriptModule,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainOutcome, TrainError> {
        check_inputs(spec, initial, data)?;
        check_plan(plan)?;
        if data.is_empty() {
            return Err(TrainError::EmptyData);
        }
        let device = MODULE_DEVICE;
        let mut model = TorchScriptModel::load(self.modules(), module, initial)?;
        model.set_training(true)?;
        let (features, labels) = to_tensors(data, device)?;
        let pos_weight = pos_weight_tensor(plan.pos_weight, device)?;
        let outcome = sgd_loop(
            device,
            (&features, &labels),
            plan,
            progress,
            &mut |x, y| Ok(mean_bce(&model.forward(x)?, y, pos_weight.as_ref())?),
            &mut || Ok(step_by_grads(&model.params(), plan.learning_rate)?),
        )?;
        Ok(TrainOutcome {
            params: model.to_flat()?,
            ..outcome
        })
    }

    /// [`Trainer::train_private`] for a TorchScript module: DP-SGD with each example's
    /// gradient from its own pass ([`TorchScriptModel::clipped_sum`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn train_module_private(
        &mut self,
        spec: &ModelSpec,
        module: &TorchScriptModule,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        dp: &DpConfig,
        noise_rng: &mut dyn CryptoRng,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<PrivateTrainOutcome, TrainError> {
        check_inputs(spec, initial, data)?;
        check_private_run(plan, dp, data)?;
        let device = MODULE_DEVICE;
        let mut model = TorchScriptModel::load(self.modules(), module, initial)?;
        model.set_training(true)?;
        let (features, labels) = to_tensors(data, device)?;
        let run = dp_sgd_loop(
            device,
            (&features, &labels),
            initial.len(),
            plan,
            dp,
            noise_rng,
            progress,
            &mut |x, y| model.clipped_sum(x, y, dp.max_grad_norm, plan.pos_weight),
            &mut |grad, scale| step_by_flat(&model.params(), grad, scale),
        )?;
        Ok(PrivateTrainOutcome {
            params: model.to_flat()?,
            steps: run.steps,
            mean_loss: run.mean_loss,
            non_finite_examples: run.skipped,
        })
    }

    /// [`Trainer::check_model`](super::Trainer::check_model) for a TorchScript module: loads
    /// it with zero parameters, scores one row of zeros and trains on it (forward and backward
    /// in training mode, as DP-SGD does each example).
    pub(super) fn check_module(
        &mut self,
        spec: &ModelSpec,
        module: &TorchScriptModule,
    ) -> Result<(), TrainError> {
        spec.validate()?;
        let zeros = vec![0.0; spec.layout().len()];
        let mut model = TorchScriptModel::load(self.modules(), module, &zeros)?;
        let x = Tensor::f_zeros([1, spec.input_dim as i64], (Kind::Float, MODULE_DEVICE))?;
        let y = Tensor::f_zeros([1, 1], (Kind::Float, MODULE_DEVICE))?;
        model.set_training(false)?;
        let _scored = tch::no_grad(|| model.forward(&x))?;
        model.set_training(true)?;
        let _trained = model.example_gradient(&x, &y, 0, None)?;
        Ok(())
    }

    /// [`Trainer::predict`] for a TorchScript module, in evaluation mode.
    pub(super) fn predict_module(
        &mut self,
        spec: &ModelSpec,
        module: &TorchScriptModule,
        params: &[f32],
        data: &Examples,
    ) -> Result<Vec<f32>, TrainError> {
        check_inputs(spec, params, data)?;
        let _no_grad = tch::no_grad_guard();
        let mut model = TorchScriptModel::load(self.modules(), module, params)?;
        model.set_training(false)?;
        let width = data.num_features.max(1);
        let features = Tensor::f_from_slice(&data.features)?
            .f_view([data.len() as i64, width as i64])?
            .f_to_device(MODULE_DEVICE)?;
        let score = |row: i64| -> Result<f32, TrainError> {
            let p = model
                .forward(&features.f_narrow(0, row, 1)?)?
                .f_sigmoid()?
                .f_double_value(&[0, 0])?;
            Ok(p as f32)
        };
        // One row per pass: a module's code may mix the rows of a batch (a mean over it, eval-
        // mode batch statistics), which would let one patient move every other's score, and
        // the evaluation's noise assumes one patient moves one row. A row the module fails on
        // gets an undefined score (NaN, as for a row whose output is not finite), so that
        // whether an evaluation completes never depends on the patients' values.
        let mut out = Vec::with_capacity(data.len());
        for row in 0..data.len() as i64 {
            out.push(score(row).unwrap_or(f32::NAN));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use medfed_protocol::model::{ModelKind, ModelSpec, TensorSpec};
    use medfed_protocol::torchscript::{module_digest, read_initial_parameters};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::trainer::{ComputeDevice, Trainer};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/torchscript");

    /// The committed gated risk model (`scripts/torchscript_model.py`): its spec, initial
    /// values, and a trainer that approves it.
    fn risk_model() -> (ModelSpec, Vec<f32>, TchTrainer) {
        let module = std::path::Path::new(FIXTURES).join("risk_model.pt");
        let parameters = std::fs::read(format!("{FIXTURES}/risk_model.safetensors")).unwrap();
        let (spec, initial) =
            ModelSpec::torchscript(&std::fs::read(&module).unwrap(), &parameters, 6).unwrap();
        let modules = ApprovedModules::load(vec![module]).unwrap();
        let mut trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
        trainer.approve_modules(modules);
        (spec, initial, trainer)
    }

    fn declared(spec: &ModelSpec) -> &TorchScriptModule {
        match &spec.kind {
            ModelKind::TorchScript(module) => module,
            other => panic!("not a TorchScript spec: {other:?}"),
        }
    }

    /// Rows whose label is whether `x0 + x3 > 0`.
    fn examples(rows: usize, seed: u64) -> Examples {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut features = Vec::with_capacity(rows * 6);
        let mut labels = Vec::with_capacity(rows);
        for _ in 0..rows {
            let row: Vec<f32> = (0..6).map(|_| rng.random_range(-1.0..1.0)).collect();
            labels.push(f32::from(row[0] + row[3] > 0.0));
            features.extend(row);
        }
        Examples {
            num_features: 6,
            features,
            labels,
        }
    }

    fn plan(epochs: u32, learning_rate: f64) -> TrainingPlan {
        TrainingPlan {
            local_epochs: epochs,
            learning_rate,
            batch_size: 16,
            seed: 3,
            pos_weight: 1.0,
        }
    }

    /// The gated model's score computed by hand from the flat vector: a sigmoid of
    /// `out.w · (tanh(A x + a) ⊙ σ(G x + g)) + out.b`.
    fn by_hand(spec: &ModelSpec, params: &[f32], x: &[f32]) -> f32 {
        let layout = spec.layout();
        let tensors: HashMap<&str, &[f32]> = layout
            .split(params)
            .unwrap()
            .into_iter()
            .map(|(t, v)| (t.name.as_str(), v))
            .collect();
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut logit = f64::from(tensors["out.bias"][0]);
        for h in 0..8 {
            let dot = |w: &[f32], b: &[f32]| {
                f64::from(b[h])
                    + (0..6)
                        .map(|i| f64::from(w[h * 6 + i]) * f64::from(x[i]))
                        .sum::<f64>()
            };
            let a = dot(tensors["a.weight"], tensors["a.bias"]).tanh();
            let g = sigmoid(dot(tensors["g.weight"], tensors["g.bias"]));
            logit += f64::from(tensors["out.weight"][h]) * a * g;
        }
        sigmoid(logit) as f32
    }

    #[test]
    fn the_module_scores_with_the_values_it_is_given() {
        let (spec, initial, mut trainer) = risk_model();
        let data = examples(20, 1);
        // Other values than the file's: the module must compute with the round's parameters.
        let params: Vec<f32> = initial.iter().map(|v| v * 1.5 - 0.01).collect();
        let scores = trainer.predict(&spec, &params, &data).unwrap();
        for (row, score) in data.features.chunks(6).zip(&scores) {
            let expected = by_hand(&spec, &params, row);
            assert!((score - expected).abs() < 1e-5, "{score} vs {expected}");
        }
    }

    #[test]
    fn per_example_gradients_are_each_examples_own_pass_and_sum_to_the_batch_gradient() {
        let (spec, initial, trainer) = risk_model();
        let data = examples(7, 2);
        let model = TorchScriptModel::load(trainer.modules(), declared(&spec), &initial).unwrap();
        let (x, y) = to_tensors(&data, Device::Cpu).unwrap();
        let grads = model.per_example_gradients(&x, &y, 2.0).unwrap();
        assert_eq!(grads.size(), [7, initial.len() as i64]);
        // One example alone, through the module's own autograd, as a batch of one.
        let weight = Tensor::from_slice(&[2.0f32]);
        for i in [0i64, 4] {
            let logit = model.forward(&x.narrow(0, i, 1)).unwrap();
            let loss = logit.binary_cross_entropy_with_logits::<&Tensor>(
                &y.narrow(0, i, 1),
                None,
                Some(&weight),
                Reduction::Sum,
            );
            loss.backward();
            let alone = model.take_flat_grad().unwrap();
            let diff = f64::try_from((grads.get(i) - alone).abs().max()).unwrap();
            assert!(diff < 1e-6, "example {i}: {diff}");
        }
        // Their sum is the gradient of the batch's summed loss, from one batched pass.
        let loss = model
            .forward(&x)
            .unwrap()
            .binary_cross_entropy_with_logits::<&Tensor>(&y, None, Some(&weight), Reduction::Sum);
        loss.backward();
        let batch = model.take_flat_grad().unwrap();
        let diff = f64::try_from(
            (grads.sum_dim_intlist(0, false, Kind::Float) - batch)
                .abs()
                .max(),
        )
        .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn the_clipped_sum_clips_each_example_to_the_bound() {
        let (spec, initial, trainer) = risk_model();
        let data = examples(9, 3);
        let model = TorchScriptModel::load(trainer.modules(), declared(&spec), &initial).unwrap();
        let (x, y) = to_tensors(&data, Device::Cpu).unwrap();
        let grads = model.per_example_gradients(&x, &y, 1.0).unwrap();
        let bound = 0.05;
        let clipped = super::super::dp_sgd::clip_per_example(&grads, bound).unwrap();
        let sum = model.clipped_sum(&x, &y, bound, 1.0).unwrap();
        assert_eq!(sum.skipped, 0);
        let diff = f64::try_from(
            (clipped.sum_dim_intlist(0, false, Kind::Float) - &sum.sum)
                .abs()
                .max(),
        )
        .unwrap();
        assert!(diff < 1e-6, "{diff}");
        // Every example's gradient of the committed model exceeds 0.05: all were clipped.
        let norm = f64::try_from(sum.sum.norm()).unwrap();
        assert!(norm <= 9.0 * bound + 1e-6, "{norm}");
    }

    #[test]
    fn plain_and_private_training_learn_the_pattern() {
        let (spec, initial, mut trainer) = risk_model();
        let data = examples(400, 4);
        let accuracy = |params: &[f32], trainer: &mut TchTrainer| {
            let scores = trainer.predict(&spec, params, &data).unwrap();
            let right = scores
                .iter()
                .zip(&data.labels)
                .filter(|(s, y)| (**s > 0.5) == (**y > 0.5))
                .count();
            right as f64 / data.len() as f64
        };
        let before = accuracy(&initial, &mut trainer);
        let plain = trainer
            .train(&spec, &initial, &data, &plan(20, 0.5), &mut |_| {})
            .unwrap();
        let after = accuracy(&plain.params, &mut trainer);
        assert!(after > 0.9 && after > before + 0.2, "{before} → {after}");

        let dp = DpConfig {
            noise_multiplier: 0.5,
            max_grad_norm: 1.0,
            sample_rate: 0.1,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let private = trainer
            .train_private(
                &spec,
                &initial,
                &data,
                &plan(10, 0.5),
                &dp,
                &mut rng,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(private.steps, 100);
        let after = accuracy(&private.params, &mut trainer);
        assert!(after > 0.85, "{before} → {after}");
    }

    /// A module whose code raises on some patients' values (any feature above 3): DP-SGD,
    /// distributed DP's gradients and scoring all complete, the failing example counting as
    /// one whose gradient is not finite and its score undefined, so that neither a release nor
    /// an evaluation depends on whether such a patient is in the data.
    #[test]
    fn a_module_that_fails_on_some_patients_fails_no_release() {
        let path = std::path::Path::new(FIXTURES).join("fails_on_large_values.pt");
        let (spec, initial, _) = risk_model();
        let mut module = declared(&spec).clone();
        module.sha256 = module_digest(&std::fs::read(&path).unwrap());
        let spec = ModelSpec {
            kind: ModelKind::TorchScript(Box::new(module.clone())),
            input_dim: 6,
        };
        let mut trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
        trainer.approve_modules(ApprovedModules::load(vec![path]).unwrap());
        assert_eq!(trainer.check_model(&spec), Ok(()));
        let mut data = examples(40, 7);
        data.features[3 * 6 + 2] = 5.0;
        let scores = trainer.predict(&spec, &initial, &data).unwrap();
        assert_eq!(scores.len(), 40);
        assert!(scores[3].is_nan());
        assert!(
            scores
                .iter()
                .enumerate()
                .all(|(i, s)| i == 3 || s.is_finite())
        );

        let model = TorchScriptModel::load(trainer.modules(), &module, &initial).unwrap();
        let (x, y) = to_tensors(&data, Device::Cpu).unwrap();
        let sum = model.clipped_sum(&x, &y, 1.0, 1.0).unwrap();
        assert_eq!(sum.skipped, 1);
        // The others' clipped sum is what it is without the failing patient.
        let without: Vec<i64> = (0..40).filter(|&i| i != 3).collect();
        let index = Tensor::from_slice(&without);
        let clean = model
            .clipped_sum(
                &x.index_select(0, &index),
                &y.index_select(0, &index),
                1.0,
                1.0,
            )
            .unwrap();
        assert_eq!(clean.skipped, 0);
        let diff = f64::try_from((&sum.sum - &clean.sum).abs().max()).unwrap();
        assert!(diff < 1e-6, "{diff}");
        let grads = model.per_example_gradients(&x, &y, 1.0).unwrap();
        let finite = grads.isfinite().all_dim(1, false);
        let finite = Vec::<bool>::try_from(&finite).unwrap();
        assert!(finite.iter().enumerate().all(|(i, f)| *f == (i != 3)));

        let dp = DpConfig {
            noise_multiplier: 1.0,
            max_grad_norm: 1.0,
            sample_rate: 1.0,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let outcome = trainer
            .train_private(
                &spec,
                &initial,
                &data,
                &plan(1, 0.1),
                &dp,
                &mut rng,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(outcome.non_finite_examples, 1);
    }

    #[test]
    fn a_module_that_is_not_the_declared_one_is_refused() {
        let (spec, initial, mut trainer) = risk_model();
        let data = examples(4, 6);
        // Not approved: the v2 module (another forward pass over the same parameters).
        let v2 = std::fs::read(format!("{FIXTURES}/risk_model_v2.pt")).unwrap();
        let mut other = declared(&spec).clone();
        other.sha256 = module_digest(&v2);
        let other_spec = ModelSpec {
            kind: ModelKind::TorchScript(Box::new(other)),
            input_dim: 6,
        };
        let refused = trainer.predict(&other_spec, &initial, &data).unwrap_err();
        assert!(
            matches!(&refused, TrainError::Module(m) if m.contains("not one the hospital approved")),
            "{refused}"
        );
        // Approved, but declared with a parameter the module does not have.
        let mut renamed = declared(&spec).clone();
        renamed.tensors[0] = TensorSpec {
            name: "b.weight".into(),
            shape: renamed.tensors[0].shape.clone(),
        };
        let renamed = ModelSpec {
            kind: ModelKind::TorchScript(Box::new(renamed)),
            input_dim: 6,
        };
        let refused = trainer.predict(&renamed, &initial, &data).unwrap_err();
        assert!(
            matches!(&refused, TrainError::ModuleMismatch(m) if m.contains("b.weight")),
            "{refused}"
        );
        // The check a node makes before approving a task, on no data, finds the same.
        assert_eq!(trainer.check_model(&spec), Ok(()));
        assert!(matches!(
            trainer.check_model(&renamed),
            Err(TrainError::ModuleMismatch(_))
        ));
        // Approved, with the parameters of another width: the shapes disagree.
        let parameters = std::fs::read(format!("{FIXTURES}/risk_model.safetensors")).unwrap();
        let (mut tensors, _) = read_initial_parameters(&parameters).unwrap();
        let first = tensors.iter_mut().find(|t| t.name == "a.weight").unwrap();
        first.shape = vec![6, 8];
        let reshaped = ModelSpec {
            kind: ModelKind::TorchScript(Box::new(TorchScriptModule {
                sha256: declared(&spec).sha256,
                tensors,
            })),
            input_dim: 6,
        };
        let refused = trainer.predict(&reshaped, &initial, &data).unwrap_err();
        assert!(
            matches!(&refused, TrainError::ModuleMismatch(m) if m.contains("a.weight")),
            "{refused}"
        );
        // A task of another input width: the module fails on any row, which the check before
        // approval finds on rows of zeros; scoring, were it asked, leaves every row undefined
        // rather than fail (and panics on nothing).
        let wide = ModelSpec {
            input_dim: 5,
            ..spec.clone()
        };
        let five = Examples {
            num_features: 5,
            features: vec![0.0; 10],
            labels: vec![0.0, 1.0],
        };
        assert!(trainer.check_model(&wide).is_err());
        let scores = trainer.predict(&wide, &initial, &five).unwrap();
        assert!(scores.len() == 2 && scores.iter().all(|s| s.is_nan()));
    }
}
