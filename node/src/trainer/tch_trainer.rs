//! The libtorch trainer: plain mini-batch SGD on the model's flat parameter vector, and DP-SGD
//! through [`super::dp_sgd`].

use std::num::NonZeroUsize;

use medfed_protocol::distributed_dp::DdpParams;
use medfed_protocol::model::{ModelKind, ModelSpec};
use medfed_protocol::task::TrainingPlan;
use rand::seq::SliceRandom;
use rand::{CryptoRng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tch::{Device, Reduction, TchError, Tensor};

use super::params::{flat_values, step_by_grads};
use super::{
    ComputeDevice, DistributedOutcome, DistributedRound, DpConfig, PrivateTrainOutcome, TrainError,
    TrainOutcome, TrainProgress, Trainer, check_inputs, check_plan, distributed, dp_sgd,
    torchscript,
};
use crate::examples::Examples;
use crate::modules::ApprovedModules;

/// Rows scored per forward pass in [`Trainer::predict`].
const PREDICT_BATCH: usize = 8192;

/// A [`Trainer`] that computes with libtorch, on the CPU or a CUDA device.
///
/// Each call builds the model's tensors from the flat vector it is given, so one trainer serves
/// every round and every model. On the CPU the result depends only on the inputs: the batch
/// order comes from a ChaCha20 stream seeded with the plan's seed, not from torch's RNG.
#[derive(Debug)]
pub struct TchTrainer {
    /// Where tensors live and computation happens.
    device: Device,
    /// The TorchScript modules the hospital approved, which alone it runs.
    modules: ApprovedModules,
}

impl TchTrainer {
    /// Creates a trainer on `device`; [`ComputeDevice::Auto`] picks CUDA when libtorch sees it.
    pub fn new(device: ComputeDevice) -> Result<Self, TrainError> {
        let device = match device {
            ComputeDevice::Cpu => Device::Cpu,
            ComputeDevice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
            ComputeDevice::Cuda => return Err(TrainError::CudaUnavailable),
            ComputeDevice::Auto => Device::cuda_if_available(),
        };
        Ok(Self {
            device,
            modules: ApprovedModules::default(),
        })
    }

    /// The TorchScript modules this trainer may run.
    pub fn modules(&self) -> &ApprovedModules {
        &self.modules
    }

    /// The device this trainer computes on.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// Sets libtorch's number of intra-op CPU threads for the whole process.
///
/// Left alone, libtorch uses one thread per core; call this only when the node's configuration
/// asks for a number, since it affects every libtorch user in the process.
pub fn set_torch_threads(threads: NonZeroUsize) {
    tch::set_num_threads(i32::try_from(threads.get()).unwrap_or(i32::MAX));
}

impl Trainer for TchTrainer {
    fn approve_modules(&mut self, modules: ApprovedModules) {
        self.modules = modules;
    }

    fn check_model(&mut self, spec: &ModelSpec) -> Result<(), TrainError> {
        match &spec.kind {
            ModelKind::TorchScript(module) => self.check_module(spec, module),
            _ => Ok(()),
        }
    }

    fn train(
        &mut self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainOutcome, TrainError> {
        match &spec.kind {
            ModelKind::Layers(architecture) => {
                // The spec's own rules (its input width, no embedding first); the layer
                // trainer checks the parameters and the data against the architecture itself.
                spec.validate()?;
                return self.train_layers(architecture, initial, data, plan, progress);
            }
            ModelKind::TorchScript(module) => {
                return self.train_module(spec, module, initial, data, plan, progress);
            }
            ModelKind::LogisticRegression | ModelKind::Mlp { .. } => {}
        }
        check_inputs(spec, initial, data)?;
        check_plan(plan)?;
        if data.is_empty() {
            return Err(TrainError::EmptyData);
        }
        let model = Mlp::from_flat(spec, initial, self.device, true)?;
        let (features, labels) = to_tensors(data, self.device)?;
        let pos_weight = pos_weight_tensor(plan.pos_weight, self.device)?;
        let outcome = sgd_loop(
            self.device,
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

    fn train_private(
        &mut self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        dp: &DpConfig,
        noise_rng: &mut dyn CryptoRng,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<PrivateTrainOutcome, TrainError> {
        match &spec.kind {
            ModelKind::Layers(architecture) => {
                spec.validate()?;
                return self.train_layers_private(
                    architecture,
                    initial,
                    data,
                    plan,
                    dp,
                    noise_rng,
                    progress,
                );
            }
            ModelKind::TorchScript(module) => {
                return self.train_module_private(
                    spec, module, initial, data, plan, dp, noise_rng, progress,
                );
            }
            ModelKind::LogisticRegression | ModelKind::Mlp { .. } => {}
        }
        dp_sgd::train_private(
            self.device,
            spec,
            initial,
            data,
            plan,
            dp,
            noise_rng,
            progress,
        )
    }

    fn distributed_sum(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        data: &Examples,
        round: DistributedRound,
        ddp: &DdpParams,
        rng: &mut dyn CryptoRng,
    ) -> Result<DistributedOutcome, TrainError> {
        let device = match spec.kind {
            ModelKind::TorchScript(_) => torchscript::MODULE_DEVICE,
            _ => self.device,
        };
        distributed::distributed_sum(device, &self.modules, spec, params, data, round, ddp, rng)
    }

    fn predict(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        data: &Examples,
    ) -> Result<Vec<f32>, TrainError> {
        match &spec.kind {
            ModelKind::Layers(architecture) => {
                spec.validate()?;
                return self.predict_layers(architecture, params, data);
            }
            ModelKind::TorchScript(module) => {
                return self.predict_module(spec, module, params, data);
            }
            ModelKind::LogisticRegression | ModelKind::Mlp { .. } => {}
        }
        check_inputs(spec, params, data)?;
        let _no_grad = tch::no_grad_guard();
        let model = Mlp::from_flat(spec, params, self.device, false)?;
        let width = data.num_features;
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.features.chunks(PREDICT_BATCH * width) {
            let rows = chunk.len() / width;
            let x = Tensor::f_from_slice(chunk)?
                .f_view([rows as i64, width as i64])?
                .f_to_device(self.device)?;
            let p = model
                .forward(&x)?
                .f_sigmoid()?
                .f_view([-1])?
                .f_to_device(Device::Cpu)?;
            out.extend(Vec::<f32>::try_from(&p)?);
        }
        Ok(out)
    }
}

impl From<TchError> for TrainError {
    fn from(e: TchError) -> Self {
        Self::Torch(e.to_string())
    }
}

/// The model as tensors: for each linear layer, its weight `[out, in]`, its bias `[out]` and
/// whether a ReLU follows. Tensors are in [`ParamLayout`](medfed_protocol::model::ParamLayout)
/// order.
pub(super) struct Mlp {
    /// `(weight, bias, relu_after)` per layer, input side first.
    pub(super) layers: Vec<(Tensor, Tensor, bool)>,
}

impl Mlp {
    /// Builds the tensors from a flat vector whose length the caller has checked.
    pub(super) fn from_flat(
        spec: &ModelSpec,
        params: &[f32],
        device: Device,
        requires_grad: bool,
    ) -> Result<Self, TrainError> {
        let layout = spec.layout();
        let mut rest = params;
        let mut layers = Vec::with_capacity(layout.layers().len());
        for layer in layout.layers() {
            let (out, inp) = (layer.fan_out, layer.fan_in);
            let (w, tail) = rest.split_at(out * inp);
            let (b, tail) = tail.split_at(out);
            rest = tail;
            let w = leaf(w, &[out as i64, inp as i64], device, requires_grad)?;
            let b = leaf(b, &[out as i64], device, requires_grad)?;
            layers.push((w, b, layer.relu_after));
        }
        Ok(Self { layers })
    }

    /// Logits, shape `[rows, 1]`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let mut h = x.shallow_clone();
        for (w, b, relu) in &self.layers {
            h = h.f_linear(w, Some(b))?;
            if *relu {
                h = h.f_relu()?;
            }
        }
        Ok(h)
    }

    /// The parameter tensors in layout order: each layer's weight, then its bias.
    pub(super) fn params(&self) -> Vec<&Tensor> {
        self.layers.iter().flat_map(|(w, b, _)| [w, b]).collect()
    }

    /// The parameters as one flat vector in layout order.
    pub(super) fn to_flat(&self) -> Result<Vec<f32>, TrainError> {
        Ok(flat_values(&self.params())?)
    }
}

/// A tensor of the given shape holding `values`, on `device`, tracking gradients if asked.
fn leaf(
    values: &[f32],
    shape: &[i64],
    device: Device,
    requires_grad: bool,
) -> Result<Tensor, TchError> {
    Tensor::f_from_slice(values)?
        .f_view(shape)?
        .f_to_device(device)?
        .f_detach()?
        .f_set_requires_grad(requires_grad)
}

/// The features as `[rows, width]` and the labels as `[rows, 1]`, both `f32` on `device`.
pub(super) fn to_tensors(data: &Examples, device: Device) -> Result<(Tensor, Tensor), TchError> {
    let rows = data.len() as i64;
    let features = Tensor::f_from_slice(&data.features)?
        .f_view([rows, data.num_features as i64])?
        .f_to_device(device)?;
    let labels = Tensor::f_from_slice(&data.labels)?
        .f_view([rows, 1])?
        .f_to_device(device)?;
    Ok((features, labels))
}

/// PyTorch's own `pos_weight` as a tensor on `device`; none at 1, so that plain BCE computes
/// as it always did.
pub(super) fn pos_weight_tensor(
    pos_weight: f64,
    device: Device,
) -> Result<Option<Tensor>, TchError> {
    (pos_weight != 1.0)
        .then(|| Tensor::f_from_slice(&[pos_weight as f32])?.f_to_device(device))
        .transpose()
}

/// Plain SGD's batch loss: the mean BCE-with-logits of `logits` against `y`.
pub(super) fn mean_bce(
    logits: &Tensor,
    y: &Tensor,
    pos_weight: Option<&Tensor>,
) -> Result<Tensor, TchError> {
    logits.f_binary_cross_entropy_with_logits::<&Tensor>(y, None, pos_weight, Reduction::Mean)
}

/// Plain mini-batch SGD's loop, whatever the model: `plan.local_epochs` epochs over the rows in
/// an order shuffled by a ChaCha20 stream seeded with `plan.seed`, each batch's mean loss from
/// `batch_loss` backpropagated and applied by `step`. Stops with [`TrainError::NonFiniteLoss`]
/// on a batch whose loss is not finite (plain SGD makes no privacy claim, so it may stop on the
/// data's account; DP-SGD never does). The outcome's `params` are left empty for the caller.
pub(crate) fn sgd_loop(
    device: Device,
    (features, labels): (&Tensor, &Tensor),
    plan: &TrainingPlan,
    progress: &mut dyn FnMut(TrainProgress),
    batch_loss: &mut dyn FnMut(&Tensor, &Tensor) -> Result<Tensor, TrainError>,
    step: &mut dyn FnMut() -> Result<(), TrainError>,
) -> Result<TrainOutcome, TrainError> {
    let rows = usize::try_from(features.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let batch_size = usize::try_from(plan.batch_size)
        .unwrap_or(usize::MAX)
        .min(rows)
        .max(1);
    let batches = rows.div_ceil(batch_size);
    let mut rng = ChaCha20Rng::seed_from_u64(plan.seed);
    let mut order: Vec<i64> = (0..rows as i64).collect();
    let mut steps = 0u64;
    let mut epoch_loss = 0.0;
    for epoch in 1..=plan.local_epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut seen = 0usize;
        for (b, chunk) in order.chunks(batch_size).enumerate() {
            let index = Tensor::f_from_slice(chunk)?.f_to_device(device)?;
            let x = features.f_index_select(0, &index)?;
            let y = labels.f_index_select(0, &index)?;
            let loss = batch_loss(&x, &y)?;
            let value = loss.f_double_value(&[])?;
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch,
                    batch: b + 1,
                });
            }
            loss.f_backward()?;
            step()?;
            steps += 1;
            loss_sum += value * chunk.len() as f64;
            seen += chunk.len();
            progress(TrainProgress {
                epoch,
                epochs: plan.local_epochs,
                batch: b + 1,
                batches,
                loss: loss_sum / seen as f64,
            });
        }
        epoch_loss = loss_sum / seen as f64;
    }
    Ok(TrainOutcome {
        params: Vec::new(),
        steps,
        mean_loss: epoch_loss,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use medfed_protocol::evaluation::{EvalCounts, UNDEFINED_SCORE, undefined_scores};
    use medfed_protocol::model::{Model, ModelKind};

    use super::*;

    fn cpu() -> TchTrainer {
        TchTrainer::new(ComputeDevice::Cpu).unwrap()
    }

    fn plan(epochs: u32, lr: f64, batch: u32, seed: u64) -> TrainingPlan {
        TrainingPlan {
            local_epochs: epochs,
            learning_rate: lr,
            batch_size: batch,
            seed,
            pos_weight: 1.0,
        }
    }

    fn logistic(input_dim: usize) -> ModelSpec {
        ModelSpec {
            kind: ModelKind::LogisticRegression,
            input_dim,
        }
    }

    fn mlp(input_dim: usize, hidden: &[usize]) -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Mlp {
                hidden: hidden.to_vec(),
            },
            input_dim,
        }
    }

    /// `rows` points in `[-1, 1]^width` labelled by the sign of `w·x + 0.1` for a fixed `w`,
    /// keeping only points at least `margin` from the boundary.
    fn separable(rows: usize, width: usize, margin: f32, seed: u64) -> Examples {
        use rand::Rng;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..width)
            .map(|i| if i % 2 == 0 { 1.0 } else { -0.5 })
            .collect();
        let mut data = Examples {
            num_features: width,
            ..Examples::default()
        };
        while data.len() < rows {
            let x: Vec<f32> = (0..width).map(|_| rng.random_range(-1.0..1.0)).collect();
            let s: f32 = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + 0.1;
            if s.abs() < margin {
                continue;
            }
            data.features.extend(x);
            data.labels.push(if s > 0.0 { 1.0 } else { 0.0 });
        }
        data
    }

    fn accuracy(probs: &[f32], labels: &[f32]) -> f64 {
        let right = probs
            .iter()
            .zip(labels)
            .filter(|(p, y)| (**p > 0.5) == (**y > 0.5))
            .count();
        right as f64 / labels.len() as f64
    }

    fn no_progress() -> impl FnMut(TrainProgress) {
        |_| {}
    }

    #[test]
    fn logistic_regression_separates_a_separable_set() {
        let spec = logistic(4);
        let data = separable(400, 4, 0.1, 1);
        let init = spec.initial_parameters(3);
        let mut trainer = cpu();
        let before = accuracy(&trainer.predict(&spec, &init, &data).unwrap(), &data.labels);
        let out = trainer
            .train(
                &spec,
                &init,
                &data,
                &plan(30, 0.5, 16, 9),
                &mut no_progress(),
            )
            .unwrap();
        let after = accuracy(
            &trainer.predict(&spec, &out.params, &data).unwrap(),
            &data.labels,
        );
        assert!(after > 0.95, "accuracy {before} -> {after}");
        assert_eq!(out.steps, 30 * 25);
    }

    #[test]
    fn a_positive_class_weight_makes_a_rare_outcome_flagged() {
        use rand::Rng;
        // About one patient in ten is positive, and never with certainty.
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let mut data = Examples {
            num_features: 3,
            ..Examples::default()
        };
        for _ in 0..600 {
            let x: [f32; 3] = [0.0; 3].map(|_| rng.random_range(-1.0..1.0));
            let risk = 1.0 / (1.0 + (-(2.0 * x[0] - 2.8)).exp());
            data.features.extend(x);
            data.labels
                .push(if rng.random::<f32>() < risk { 1.0 } else { 0.0 });
        }
        let positives = data.labels.iter().filter(|&&l| l == 1.0).count();
        assert!((30..=120).contains(&positives), "{positives} positives");
        let spec = logistic(3);
        let init = spec.initial_parameters(1);
        let recall = |pos_weight: f64| {
            let mut t = cpu();
            let mut p = plan(30, 0.5, 32, 4);
            p.pos_weight = pos_weight;
            let trained = t
                .train(&spec, &init, &data, &p, &mut no_progress())
                .unwrap();
            let scores = t.predict(&spec, &trained.params, &data).unwrap();
            let flagged = scores
                .iter()
                .zip(&data.labels)
                .filter(|&(&s, &l)| l == 1.0 && s >= 0.5)
                .count();
            flagged as f64 / positives as f64
        };
        let (plain, weighted) = (recall(1.0), recall(9.0));
        assert!(
            plain < 0.3 && weighted > 0.6,
            "recall at 0.5: {plain} unweighted, {weighted} with pos_weight 9"
        );
        // A weight that is not a positive number is refused.
        let mut bad = plan(1, 0.1, 32, 0);
        bad.pos_weight = 0.0;
        assert!(matches!(
            cpu().train(&spec, &init, &data, &bad, &mut no_progress()),
            Err(TrainError::InvalidPlan(_))
        ));
    }

    #[test]
    fn mlp_loss_decreases_and_progress_is_reported() {
        let spec = mlp(6, &[16, 8]);
        let data = separable(250, 6, 0.0, 2);
        let init = spec.initial_parameters(4);
        let mut seen = Vec::new();
        let out = cpu()
            .train(&spec, &init, &data, &plan(20, 0.1, 32, 5), &mut |p| {
                seen.push(p)
            })
            .unwrap();
        // 250 rows in batches of 32: 7 full batches and a partial one of 26.
        assert_eq!(seen.len(), 20 * 8);
        assert_eq!(out.steps, 160);
        let first = seen.iter().find(|p| p.batch == p.batches).unwrap();
        let last = seen.last().unwrap();
        assert_eq!(
            (first.epoch, last.epoch, last.batch, last.batches),
            (1, 20, 8, 8)
        );
        assert_eq!(last.loss, out.mean_loss);
        assert!(
            out.mean_loss < 0.7 * first.loss,
            "loss {} -> {}",
            first.loss,
            out.mean_loss
        );
        assert_eq!(out.params.len(), spec.layout().len());
    }

    #[test]
    fn zero_learning_rate_returns_the_initial_parameters_exactly() {
        let spec = mlp(5, &[7, 3]);
        let data = separable(50, 5, 0.0, 3);
        let init = spec.initial_parameters(11);
        let out = cpu()
            .train(&spec, &init, &data, &plan(3, 0.0, 8, 1), &mut no_progress())
            .unwrap();
        assert_eq!(out.params, init);
        assert_eq!(out.steps, 3 * 7);
    }

    #[test]
    fn shape_mismatches_are_errors_not_panics() {
        let spec = mlp(5, &[4]);
        let data = separable(20, 5, 0.0, 4);
        let init = spec.initial_parameters(1);
        let p = plan(1, 0.1, 4, 0);
        let mut t = cpu();
        let n = init.len();
        assert_eq!(
            t.train(&spec, &init[1..], &data, &p, &mut no_progress()),
            Err(TrainError::ParamCount {
                expected: n,
                actual: n - 1
            })
        );
        assert_eq!(
            t.predict(&spec, &[init.clone(), vec![0.0]].concat(), &data),
            Err(TrainError::ParamCount {
                expected: n,
                actual: n + 1
            })
        );
        let narrow = separable(20, 3, 0.0, 4);
        assert_eq!(
            t.train(&spec, &init, &narrow, &p, &mut no_progress()),
            Err(TrainError::FeatureWidth {
                expected: 5,
                actual: 3
            })
        );
        assert_eq!(
            t.predict(&spec, &init, &narrow),
            Err(TrainError::FeatureWidth {
                expected: 5,
                actual: 3
            })
        );
        let mut ragged = data.clone();
        ragged.features.pop();
        assert!(matches!(
            t.train(&spec, &init, &ragged, &p, &mut no_progress()),
            Err(TrainError::MalformedExamples {
                rows: 20,
                width: 5,
                expected: 100,
                actual: 99
            })
        ));
        let empty = Examples {
            num_features: 5,
            ..Examples::default()
        };
        assert_eq!(
            t.train(&spec, &init, &empty, &p, &mut no_progress()),
            Err(TrainError::EmptyData)
        );
        assert_eq!(t.predict(&spec, &init, &empty), Ok(Vec::new()));
        assert!(matches!(
            t.train(&spec, &init, &data, &plan(1, 0.1, 0, 0), &mut no_progress()),
            Err(TrainError::InvalidPlan(_))
        ));
        let mut nan = init.clone();
        nan[2] = f32::NAN;
        assert_eq!(
            t.predict(&spec, &nan, &data),
            Err(TrainError::NonFiniteParam { index: 2 })
        );
    }

    #[test]
    fn divergence_is_reported() {
        let spec = logistic(2);
        let mut data = separable(10, 2, 0.0, 5);
        data.features[0] = f32::INFINITY;
        let init = spec.initial_parameters(0);
        let err = cpu()
            .train(
                &spec,
                &init,
                &data,
                &plan(1, 0.1, 100, 0),
                &mut no_progress(),
            )
            .unwrap_err();
        assert_eq!(err, TrainError::NonFiniteLoss { epoch: 1, batch: 1 });
    }

    #[test]
    fn same_seed_gives_identical_parameters() {
        let spec = mlp(6, &[12, 6]);
        let data = separable(120, 6, 0.0, 6);
        let init = spec.initial_parameters(2);
        let run = |seed| {
            cpu()
                .train(
                    &spec,
                    &init,
                    &data,
                    &plan(4, 0.2, 10, seed),
                    &mut no_progress(),
                )
                .unwrap()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a.params, run(43).params);
    }

    #[test]
    fn predict_matches_a_hand_computed_logistic_value() {
        let spec = logistic(2);
        // weight [0.5, -1.0], bias 0.25
        let params = [0.5, -1.0, 0.25];
        let data = Examples {
            num_features: 2,
            features: vec![2.0, 1.0, 0.0, 0.0, -1.0, 3.0],
            labels: vec![1.0, 0.0, 0.0],
        };
        let got = cpu().predict(&spec, &params, &data).unwrap();
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let want = [sigmoid(0.25), sigmoid(0.25), sigmoid(-3.25)];
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn libtorch_and_the_pure_rust_forward_pass_give_the_same_scores() {
        // What `medfed-node predict` relies on in a build without libtorch.
        use rand::Rng;
        let spec = mlp(7, &[16, 8]);
        let model = Model::new(spec.clone(), spec.initial_parameters(5)).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let rows = 300;
        let data = Examples {
            num_features: 7,
            features: (0..rows * 7).map(|_| rng.random_range(-3.0..3.0)).collect(),
            labels: vec![0.0; rows],
        };
        let torch = cpu().predict(&spec, &model.params, &data).unwrap();
        let rust = model.probabilities(&data.features).unwrap();
        assert_eq!(torch.len(), rows);
        let worst = torch
            .iter()
            .zip(&rust)
            .map(|(t, r)| (t - r).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "largest difference {worst}");
    }

    #[test]
    fn a_model_undefined_on_one_patient_still_evaluates_every_row() {
        // MLP 2 → [2] → 1 whose hidden units both weigh the first feature by 3·10³⁸ and whose
        // logit is their difference: ∞ − ∞ = NaN for a first feature of 2, finite at 0.
        let spec = mlp(2, &[2]);
        let params = [3e38, 0.0, 3e38, 0.0, 0.0, 0.0, 1.0, -1.0, 0.1];
        let data = Examples {
            num_features: 2,
            features: vec![0.0, 1.0, 0.0, -1.0, 2.0, 0.5, 0.0, 0.3],
            labels: vec![1.0, 0.0, 1.0, 0.0],
        };
        let scores = cpu().predict(&spec, &params, &data).unwrap();
        assert_eq!(scores.len(), 4);
        assert!(scores[2].is_nan(), "{scores:?}");
        let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
        for i in [0, 1, 3] {
            assert!((scores[i] - sigmoid(0.1)).abs() < 1e-6, "{scores:?}");
        }
        // The node's evaluation counts every row, the undefined one as a score of ½.
        let counts = EvalCounts::from_predictions(&scores, &data.labels);
        let mut defined = scores.clone();
        defined[2] = UNDEFINED_SCORE;
        assert_eq!(counts, EvalCounts::from_predictions(&defined, &data.labels));
        assert_eq!((counts.n, undefined_scores(&scores)), (4.0, 1));
    }

    #[test]
    fn one_sgd_step_matches_the_analytic_gradient() {
        // Logistic regression, one batch of all rows: ∇w = mean((σ(z) − y)·x), ∇b = mean(σ(z) − y).
        let spec = logistic(2);
        let params = [0.5f32, -1.0, 0.25];
        let data = Examples {
            num_features: 2,
            features: vec![2.0, 1.0, 0.0, 0.0, -1.0, 3.0],
            labels: vec![1.0, 0.0, 1.0],
        };
        let lr = 0.5;
        let out = cpu()
            .train(
                &spec,
                &params,
                &data,
                &plan(1, lr, 3, 0),
                &mut no_progress(),
            )
            .unwrap();
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let mut grad = [0.0f64; 3];
        for i in 0..3 {
            let x = [
                f64::from(data.features[2 * i]),
                f64::from(data.features[2 * i + 1]),
            ];
            let z = 0.5 * x[0] - x[1] + 0.25;
            let r = sigmoid(z) - f64::from(data.labels[i]);
            grad[0] += r * x[0] / 3.0;
            grad[1] += r * x[1] / 3.0;
            grad[2] += r / 3.0;
        }
        for k in 0..3 {
            let want = f64::from(params[k]) - lr * grad[k];
            assert!(
                (f64::from(out.params[k]) - want).abs() < 1e-6,
                "{:?}",
                out.params
            );
        }
    }

    /// Timing for the heart-sized workload; run with
    /// `cargo test --release -p medfed-node trainer::tch_trainer::tests::timing -- --nocapture`.
    #[test]
    fn timing_heart_sized_mlp() {
        let spec = mlp(18, &[32, 16]);
        let data = separable(300, 18, 0.0, 7);
        let init = spec.initial_parameters(1);
        let mut trainer = cpu();
        let p = plan(5, 0.05, 32, 1);
        trainer
            .train(&spec, &init, &data, &p, &mut no_progress())
            .unwrap();
        let runs = 20;
        let start = Instant::now();
        for _ in 0..runs {
            trainer
                .train(&spec, &init, &data, &p, &mut no_progress())
                .unwrap();
        }
        let train = start.elapsed() / runs;
        let start = Instant::now();
        for _ in 0..runs {
            trainer.predict(&spec, &init, &data).unwrap();
        }
        let predict = start.elapsed() / runs;
        println!(
            "300 rows x 18 features, MLP [32, 16], 5 epochs, batch 32: train {train:?}, \
             predict {predict:?} ({} threads)",
            tch::get_num_threads()
        );
    }
}
