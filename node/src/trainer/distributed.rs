//! One round of distributed DP on libtorch: Poisson sampling from the caller's CSPRNG, exact
//! per-example gradients at the round's global model, per-example clipping, and the node's
//! integer sum with its noise share (`medfed_protocol::distributed_dp::NodeSum`).
//!
//! ```text
//!  rows ─Poisson(q), CSPRNG─▶ batch ─per_example_gradients─▶ [B, P] ─clip_per_example(C)─▶
//!  each row ─NodeSum::add_example (×γ, conditional rounding, Σ)─▶ NodeSum::finish (clamp,
//!  + N_Z(0, σ_share²), words) ─▶ the update block of the masked vector
//! ```
//!
//! No step is taken: the model is the round's global one throughout (DP-FedSGD, one global
//! step per round; `docs/DISTRIBUTED_DP.md` §1 says why several local steps would void the
//! central guarantee). A sampled example whose gradient is not finite contributes zero, as in
//! DP-SGD (`dp_sgd.rs`): zero is within the clipping norm, and whether the call succeeds never
//! depends on which examples were sampled.

use medfed_protocol::distributed_dp::DdpParams;
use medfed_protocol::model::{ModelKind, ModelSpec};
use rand::{CryptoRng, Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tch::{Device, Kind, Tensor};

use super::dp_sgd::{clip_per_example, per_example_gradients};
use super::layers::{self, Masks, Network};
use super::tch_trainer::{Mlp, to_tensors};
use super::torchscript::TorchScriptModel;
use super::{
    DistributedOutcome, DistributedRound, TrainError, check_inputs, check_pos_weight, noise,
};
use crate::examples::Examples;
use crate::modules::ApprovedModules;

/// Most examples whose full per-example gradients are held at once (`CHUNK × P` floats).
const CHUNK: usize = 256;

/// Most gradient values one pass holds (`rows × P`): 2^25, 128 MiB as `f32`, four times that
/// with the clipped, `f64` and host copies.
const PASS_VALUES: usize = 1 << 25;

/// [`Trainer::distributed_sum`](super::Trainer::distributed_sum) on `device`.
#[allow(clippy::too_many_arguments)]
pub(super) fn distributed_sum(
    device: Device,
    modules: &ApprovedModules,
    spec: &ModelSpec,
    params: &[f32],
    data: &Examples,
    DistributedRound {
        sample_rate,
        pos_weight,
    }: DistributedRound,
    ddp: &DdpParams,
    rng: &mut dyn CryptoRng,
) -> Result<DistributedOutcome, TrainError> {
    check_inputs(spec, params, data)?;
    if !(sample_rate > 0.0 && sample_rate <= 1.0) {
        return Err(TrainError::InvalidDpConfig("sample_rate is not in (0, 1]"));
    }
    check_pos_weight(pos_weight)?;
    if data.is_empty() {
        return Err(TrainError::EmptyData);
    }
    if ddp.config().dimension != params.len() {
        return Err(TrainError::ParamCount {
            expected: ddp.config().dimension,
            actual: params.len(),
        });
    }
    let _no_grad = tch::no_grad_guard();
    let (features, labels) = to_tensors(data, device)?;
    let clip = ddp.config().clip_norm;
    let batch = noise::poisson_sample(rng, data.len(), sample_rate);
    let mut gradients = PerExample::new(spec, params, device, modules, rng)?;
    let mut sum = ddp.node_sum();
    let mut non_finite_examples = 0u64;
    let mut example = vec![0.0f64; params.len()];
    for chunk in batch.chunks(gradients.rows_per_pass(params.len())) {
        let index = Tensor::f_from_slice(chunk)?.f_to_device(device)?;
        let x = features.f_index_select(0, &index)?;
        let y = labels.f_index_select(0, &index)?;
        let clipped = clip_per_example(&gradients.of(&x, &y, pos_weight)?, clip)?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?
            .f_reshape([-1])?;
        let clipped = Vec::<f64>::try_from(&clipped)?;
        for row in clipped.chunks_exact(params.len()) {
            if row.iter().any(|g| !g.is_finite()) {
                // Contributes zero, which adds nothing to the sum.
                non_finite_examples += 1;
                continue;
            }
            example.copy_from_slice(row);
            sum.add_example(&example, rng)?;
        }
    }
    Ok(DistributedOutcome {
        words: sum.finish(rng),
        sampled: batch.len() as u64,
        non_finite_examples,
    })
}

/// Each example's gradient at the round's model, whatever its kind.
enum PerExample {
    /// An MLP or logistic regression: `dp_sgd`'s factored gradients.
    Mlp(Mlp),
    /// A declared architecture, with the stream its dropout masks come from (seeded from the
    /// caller's CSPRNG: the masks, like the sample, stay secret) and the rows one of its passes
    /// takes.
    Layers(Network, Box<ChaCha20Rng>, usize),
    /// A TorchScript module: one pass per example.
    TorchScript(Box<TorchScriptModel>),
}

impl PerExample {
    fn new(
        spec: &ModelSpec,
        params: &[f32],
        device: Device,
        modules: &ApprovedModules,
        rng: &mut dyn CryptoRng,
    ) -> Result<Self, TrainError> {
        Ok(match &spec.kind {
            ModelKind::TorchScript(module) => {
                let mut model = TorchScriptModel::load(modules, module, params)?;
                // Training mode, as DP-SGD's passes: not whatever mode the file was saved in.
                model.set_training(true)?;
                Self::TorchScript(Box::new(model))
            }
            ModelKind::Layers(architecture) => Self::Layers(
                Network::from_flat(architecture, params, Kind::Float, device, true)?,
                Box::new(ChaCha20Rng::from_seed(rng.random())),
                layers::rows_per_pass(architecture),
            ),
            _ => Self::Mlp(Mlp::from_flat(spec, params, device, false)?),
        })
    }

    /// How many examples' gradients one pass builds: at most [`CHUNK`], and for a large model
    /// as few as keep the `[B, P]` matrix, and a declared model's activations, within what a
    /// pass may hold; at least one.
    fn rows_per_pass(&self, params: usize) -> usize {
        let by_gradients = (PASS_VALUES / params.max(1)).max(1);
        let by_model = match self {
            Self::Mlp(_) => CHUNK,
            Self::Layers(_, _, rows) => *rows,
            Self::TorchScript(_) => CHUNK,
        };
        CHUNK.min(by_gradients).min(by_model)
    }

    /// The `[B, P]` per-example gradients of the batch `(x, y)`.
    fn of(&mut self, x: &Tensor, y: &Tensor, pos_weight: f64) -> Result<Tensor, TrainError> {
        match self {
            Self::TorchScript(model) => model.per_example_gradients(x, y, pos_weight),
            Self::Mlp(model) => Ok(per_example_gradients(model, x, y, pos_weight)?),
            Self::Layers(net, masks, _) => {
                Ok(
                    layers::per_example_gradients(net, x, y, pos_weight, &mut Masks::Draw(masks))?
                        .0,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use medfed_protocol::distributed_dp::DdpConfig;
    use medfed_protocol::model::ModelKind;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::StandardNormal;

    use super::*;
    use crate::trainer::{ComputeDevice, TchTrainer, Trainer};

    /// A round sampling at `sample_rate`, every example weighing 1.
    fn round(sample_rate: f64) -> DistributedRound {
        DistributedRound {
            sample_rate,
            pos_weight: 1.0,
        }
    }

    fn spec() -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![4] },
            input_dim: 3,
        }
    }

    /// Rows of `width` standard normal features (×3); the label says whether the first two sum
    /// above zero.
    fn examples(rows: usize, width: usize, seed: u64) -> Examples {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut features = Vec::with_capacity(rows * width);
        let mut labels = Vec::with_capacity(rows);
        for _ in 0..rows {
            let x: Vec<f32> = (0..width)
                .map(|_| 3.0 * rng.sample::<f32, _>(StandardNormal))
                .collect();
            labels.push(if x[0] + x[1] > 0.0 { 1.0 } else { 0.0 });
            features.extend(x);
        }
        Examples {
            num_features: width,
            features,
            labels,
        }
    }

    /// Parameters with `γC = 2^20` and `z = 10^-3`: the decoded noise has sd `10^-3·C` per
    /// coordinate and each example's rounding is off by less than `1/γ = 2^-20·C`.
    fn nearly_exact(dimension: usize, clip: f64) -> DdpParams {
        DdpParams::new(DdpConfig {
            scale: 1_048_576.0 / clip,
            ..DdpConfig::new(clip, dimension, 1, 1, 1e-3)
        })
        .unwrap()
    }

    /// A small CNN on 1×6×6 images: convolution, ReLU, flatten, linear.
    fn cnn() -> ModelSpec {
        use medfed_protocol::architecture::{Architecture, LayerSpec, Shape};
        let architecture = Architecture {
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
                    padding: 0,
                },
                LayerSpec::Relu,
                LayerSpec::Flatten,
                LayerSpec::Linear { out: 1 },
            ],
        };
        ModelSpec {
            kind: ModelKind::Layers(Box::new(architecture.check().unwrap())),
            input_dim: 36,
        }
    }

    #[test]
    fn the_decoded_sum_is_the_sum_of_the_clipped_per_example_gradients() {
        for spec in [spec(), cnn()] {
            let params = spec.initial_parameters(5);
            let data = examples(300, spec.input_dim, 1);
            let _no_grad = tch::no_grad_guard();
            let (x, y) = to_tensors(&data, Device::Cpu).unwrap();
            let mut unused = ChaCha20Rng::seed_from_u64(0);
            let grads = PerExample::new(
                &spec,
                &params,
                Device::Cpu,
                &ApprovedModules::default(),
                &mut unused,
            )
            .unwrap()
            .of(&x, &y, 1.0)
            .unwrap();
            // Clipping at the median norm binds for half the examples, so both paths are
            // exercised.
            let mut norms = Vec::<f64>::try_from(&grads.f_square().unwrap().sum_dim_intlist(
                1,
                false,
                Kind::Double,
            ))
            .unwrap();
            norms.sort_by(f64::total_cmp);
            let clip = norms[norms.len() / 2].sqrt();

            let ddp = nearly_exact(params.len(), clip);
            let mut trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(2);
            // q = 1: every row is sampled, in more than one chunk.
            let outcome = trainer
                .distributed_sum(&spec, &params, &data, round(1.0), &ddp, &mut rng)
                .unwrap();
            assert_eq!((outcome.sampled, outcome.non_finite_examples), (300, 0));
            let decoded = ddp.decode_sum(&outcome.words, 1).unwrap();

            // The reference: the same gradients, clipped, summed in f64 without any rounding.
            let clipped = clip_per_example(&grads, clip)
                .unwrap()
                .to_kind(Kind::Double)
                .sum_dim_intlist(0, false, Kind::Double);
            let reference = Vec::<f64>::try_from(&clipped).unwrap();
            let tolerance = 6.0 * ddp.noise_std_of_sum(1) + 300.0 / ddp.config().scale;
            let largest = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                largest > 100.0 * tolerance,
                "a signal to compare: {largest}"
            );
            for (i, (got, want)) in decoded.iter().zip(&reference).enumerate() {
                assert!(
                    (got - want).abs() < tolerance,
                    "coordinate {i}: {got} vs {want} (tolerance {tolerance})"
                );
            }
        }
    }

    #[test]
    fn the_sample_follows_the_rate_and_the_noise_covers_an_empty_one() {
        let spec = spec();
        let params = spec.initial_parameters(5);
        let data = examples(2000, 3, 3);
        let ddp = nearly_exact(params.len(), 1.0);
        let mut trainer = TchTrainer::new(ComputeDevice::Cpu).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let outcome = trainer
            .distributed_sum(&spec, &params, &data, round(0.1), &ddp, &mut rng)
            .unwrap();
        // Binomial(2000, 0.1): mean 200, sd 13.4.
        assert!(
            (140..=260).contains(&outcome.sampled),
            "{}",
            outcome.sampled
        );
        // Real noise (z = 1, one share carries it all): the decoded vector of a sample from a
        // tiny rate is noise of sd ≈ C per coordinate, not the gradients.
        let noisy = DdpParams::new(DdpConfig::new(1.0, params.len(), 1, 1, 1.0)).unwrap();
        let words = trainer
            .distributed_sum(&spec, &params, &data, round(1e-9), &noisy, &mut rng)
            .unwrap();
        assert_eq!(words.sampled, 0);
        let decoded = noisy.decode_sum(&words.words, 1).unwrap();
        let rms = (decoded.iter().map(|v| v * v).sum::<f64>() / decoded.len() as f64).sqrt();
        assert!((0.6..1.5).contains(&rms), "noise rms {rms}");
        // A mismatched dimension or rate is refused before anything is drawn.
        assert!(matches!(
            trainer.distributed_sum(&spec, &params[1..], &data, round(0.1), &ddp, &mut rng),
            Err(TrainError::ParamCount { .. })
        ));
        assert!(matches!(
            trainer.distributed_sum(&spec, &params, &data, round(0.0), &ddp, &mut rng),
            Err(TrainError::InvalidDpConfig(_))
        ));
    }
}
