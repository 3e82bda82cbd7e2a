//! The shared model: its architecture, the layout of its parameters as one flat vector, its
//! deterministic initialisation and its content hash.
//!
//! Parameters travel and are aggregated as one `f32` vector. The layout names each tensor the way
//! PyTorch's `nn.Sequential` would (`0.weight`, `0.bias`, `2.weight`, …, with a ReLU at every odd
//! index), so a checkpoint loads into the equivalent PyTorch module unchanged.

use std::fmt;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::architecture::{Architecture, ArchitectureError, CheckedArchitecture, LayerSpec, Shape};
use crate::torchscript::{
    TorchScriptError, TorchScriptModule, module_digest, read_initial_parameters,
};

/// Most parameters a model may have: 2^28, 1 GiB as `f32`. Far above any model the consortium
/// trains, and low enough that an architecture received from a peer can neither overflow the
/// parameter count nor make the receiver reserve unbounded memory ([`ModelSpec::validate`]).
pub const MAX_PARAMS: usize = 1 << 28;

/// The architecture of the consortium's model: a binary classifier producing one logit.
///
/// Serialised externally tagged (`{"mlp": {"hidden": [..]}}` in JSON), which bincode supports;
/// configuration files use the friendlier [`ModelConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// One linear layer: `Linear(input_dim, 1)`.
    LogisticRegression,
    /// Linear layers with the given hidden widths and a ReLU after each hidden layer.
    Mlp {
        /// Width of each hidden layer, input side first. Empty means logistic regression.
        hidden: Vec<usize>,
    },
    /// A declared architecture (see [`crate::architecture`]), checked: convolutions, pooling,
    /// normalisation, embeddings, residual blocks and the rest, over the input shape it
    /// declares, whose size is the spec's `input_dim`.
    Layers(Box<CheckedArchitecture>),
    /// The consortium's own TorchScript module, named by the SHA-256 of its file, with its
    /// parameters' names and shapes (see [`crate::torchscript`]). Its input is the spec's
    /// `input_dim` features per row.
    TorchScript(Box<TorchScriptModule>),
}

/// An architecture as written in a configuration file: `{ kind = "mlp", hidden = [32, 16] }`,
/// `{ kind = "logistic_regression" }`, or a declared one:
///
/// ```toml
/// [task.model]
/// kind = "layers"
/// input = { kind = "image", channels = 1, height = 28, width = 28 }
/// layers = [
///     { kind = "conv2d", out_channels = 8, kernel = 5 },
///     { kind = "relu" },
///     { kind = "flatten" },
///     { kind = "linear", out = 1 },
/// ]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// One linear layer.
    LogisticRegression,
    /// A multi-layer perceptron.
    Mlp {
        /// Width of each hidden layer, input side first.
        hidden: Vec<usize>,
    },
    /// A declared architecture: the shape of one example, and the layers in order.
    Layers {
        /// The shape of one example.
        input: Shape,
        /// The layers, input side first.
        layers: Vec<LayerSpec>,
    },
    /// The consortium's own TorchScript module: the module file (`torch.jit.save` output),
    /// whose SHA-256 the manifest carries, and the safetensors file of its parameters (names,
    /// shapes, initial values) written beside it. Read by the coordinator
    /// ([`ModelSpec::torchscript`]), which never runs the module.
    #[serde(rename = "torchscript")]
    TorchScript {
        /// The module file.
        module: PathBuf,
        /// Its parameters, as safetensors.
        parameters: PathBuf,
    },
}

impl ModelConfig {
    /// The configuration with its file paths passed through `resolve` (a configuration file's
    /// relative paths are relative to the file).
    pub fn resolve_paths(self, resolve: impl Fn(PathBuf) -> PathBuf) -> Self {
        match self {
            Self::TorchScript { module, parameters } => Self::TorchScript {
                module: resolve(module),
                parameters: resolve(parameters),
            },
            other => other,
        }
    }
}

impl TryFrom<ModelConfig> for ModelKind {
    type Error = ModelError;

    /// The architecture a configuration declares; a declared one only once
    /// [`Architecture::check`] accepts it. A TorchScript module is named by its files, which
    /// [`ModelSpec::torchscript`] reads: [`ModelError::TorchScriptFiles`] here.
    fn try_from(config: ModelConfig) -> Result<Self, ModelError> {
        Ok(match config {
            ModelConfig::LogisticRegression => Self::LogisticRegression,
            ModelConfig::Mlp { hidden } => Self::Mlp { hidden },
            ModelConfig::Layers { input, layers } => {
                Self::Layers(Box::new(Architecture { input, layers }.check()?))
            }
            ModelConfig::TorchScript { .. } => return Err(ModelError::TorchScriptFiles),
        })
    }
}

/// An architecture applied to a given number of input features.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Which architecture.
    pub kind: ModelKind,
    /// Number of input features after encoding (one-hot categories included).
    pub input_dim: usize,
}

/// One tensor of the model: its PyTorch-style name and its shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name as in a PyTorch `state_dict` of the equivalent `nn.Sequential`, e.g. `0.weight`.
    pub name: String,
    /// Shape, row-major: `[out, in]` for weights, `[out]` for biases.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of scalars in the tensor; `usize::MAX` if that overflows (an architecture that
    /// [`ModelSpec::validate`] refuses, so no parameter vector ever fits it).
    pub fn numel(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX)
    }
}

/// One fully connected layer of the model, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearLayer {
    /// Index of the layer inside `nn.Sequential` (0, 2, 4, …).
    pub sequential_index: usize,
    /// Input width.
    pub fan_in: usize,
    /// Output width.
    pub fan_out: usize,
    /// Whether a ReLU follows this layer (every layer but the last).
    pub relu_after: bool,
}

/// Where each tensor lives inside the flat parameter vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    tensors: Vec<TensorSpec>,
    layers: Vec<LinearLayer>,
}

impl ParamLayout {
    /// Tensors in vector order: for each layer its weight then its bias.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// The linear layers of a [`ModelKind::Mlp`] or [`ModelKind::LogisticRegression`], input
    /// side first; empty for a [`ModelKind::Layers`].
    pub fn layers(&self) -> &[LinearLayer] {
        &self.layers
    }

    /// Total number of parameters; `usize::MAX` if that overflows (see [`TensorSpec::numel`]).
    pub fn len(&self) -> usize {
        self.tensors
            .iter()
            .try_fold(0usize, |n, t| n.checked_add(t.numel()))
            .unwrap_or(usize::MAX)
    }

    /// Whether the model has no parameters (never true for a valid spec).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits a flat parameter vector into `(tensor, values)` pairs.
    ///
    /// Returns `None` if `params` does not have exactly [`Self::len`] values.
    pub fn split<'a>(&'a self, params: &'a [f32]) -> Option<Vec<(&'a TensorSpec, &'a [f32])>> {
        if params.len() != self.len() {
            return None;
        }
        let mut rest = params;
        let mut out = Vec::with_capacity(self.tensors.len());
        for tensor in &self.tensors {
            let (head, tail) = rest.split_at(tensor.numel());
            out.push((tensor, head));
            rest = tail;
        }
        Some(out)
    }
}

impl ModelSpec {
    /// The model a configuration declares over `input_dim` encoded features, validated.
    pub fn from_config(config: ModelConfig, input_dim: usize) -> Result<Self, ModelError> {
        let spec = Self {
            kind: ModelKind::try_from(config)?,
            input_dim,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The spec of a TorchScript module over `input_dim` features, from the bytes of its
    /// module file (hashed, never run) and of its parameters' safetensors file, with the
    /// initial parameter vector that file holds.
    pub fn torchscript(
        module: &[u8],
        parameters: &[u8],
        input_dim: usize,
    ) -> Result<(Self, Vec<f32>), ModelError> {
        let (tensors, initial) = read_initial_parameters(parameters)?;
        let spec = Self {
            kind: ModelKind::TorchScript(Box::new(TorchScriptModule {
                sha256: module_digest(module),
                tensors,
            })),
            input_dim,
        };
        spec.validate()?;
        Ok((spec, initial))
    }

    /// Widths of the linear layers' outputs, input side first; the last is always 1 (one
    /// logit). Empty for a declared architecture, which is not a stack of linear layers.
    fn widths(&self) -> Vec<usize> {
        let mut widths = match &self.kind {
            ModelKind::LogisticRegression => Vec::new(),
            ModelKind::Mlp { hidden } => hidden.clone(),
            ModelKind::Layers(_) | ModelKind::TorchScript(_) => return Vec::new(),
        };
        widths.push(1);
        widths
    }

    /// Checks that every width is positive and that the model has at most [`MAX_PARAMS`]
    /// parameters; for a declared architecture (checked when it was built or decoded), that
    /// its input shape holds `input_dim` values.
    pub fn validate(&self) -> Result<(), ModelError> {
        if let ModelKind::TorchScript(module) = &self.kind {
            module.validate()?;
            return if self.input_dim == 0 || self.input_dim > MAX_PARAMS {
                Err(ModelError::ZeroWidth {
                    what: "input".into(),
                })
            } else {
                Ok(())
            };
        }
        if let ModelKind::Layers(architecture) = &self.kind {
            // An embedding reads category indices, and no schema column encodes one yet (a
            // categorical is one-hot). A task whose features are standardised numbers would
            // make an embedding's index check depend on the patients' values.
            if let Some(LayerSpec::Embedding { .. }) = architecture.architecture().layers.first() {
                return Err(ModelError::EmbeddingWithoutIndices);
            }
            let declared = architecture.architecture().input.numel();
            return if declared == Some(self.input_dim) {
                Ok(())
            } else {
                Err(ModelError::InputShape {
                    shape: architecture.architecture().input,
                    input_dim: self.input_dim,
                })
            };
        }
        if self.input_dim == 0 {
            return Err(ModelError::ZeroWidth {
                what: "input".into(),
            });
        }
        if let Some(pos) = self.widths().iter().position(|&w| w == 0) {
            return Err(ModelError::ZeroWidth {
                what: format!("hidden layer {pos}"),
            });
        }
        // Checked: the widths may come from a peer, and their products can overflow.
        let mut count = 0usize;
        let mut fan_in = self.input_dim;
        for fan_out in self.widths() {
            count = fan_in
                .checked_mul(fan_out)
                .and_then(|weights| weights.checked_add(fan_out))
                .and_then(|layer| count.checked_add(layer))
                .filter(|&count| count <= MAX_PARAMS)
                .ok_or(ModelError::TooLarge { max: MAX_PARAMS })?;
            fan_in = fan_out;
        }
        Ok(())
    }

    /// The parameter layout of this architecture.
    pub fn layout(&self) -> ParamLayout {
        match &self.kind {
            ModelKind::Layers(architecture) => {
                return ParamLayout {
                    tensors: architecture.tensors().cloned().collect(),
                    layers: Vec::new(),
                };
            }
            ModelKind::TorchScript(module) => {
                return ParamLayout {
                    tensors: module.tensors.clone(),
                    layers: Vec::new(),
                };
            }
            ModelKind::LogisticRegression | ModelKind::Mlp { .. } => {}
        }
        let widths = self.widths();
        let mut tensors = Vec::new();
        let mut layers = Vec::new();
        let mut fan_in = self.input_dim;
        for (i, &fan_out) in widths.iter().enumerate() {
            let index = 2 * i;
            tensors.push(TensorSpec {
                name: format!("{index}.weight"),
                shape: vec![fan_out, fan_in],
            });
            tensors.push(TensorSpec {
                name: format!("{index}.bias"),
                shape: vec![fan_out],
            });
            layers.push(LinearLayer {
                sequential_index: index,
                fan_in,
                fan_out,
                relu_after: i + 1 < widths.len(),
            });
            fan_in = fan_out;
        }
        ParamLayout { tensors, layers }
    }

    /// Initial parameters, as PyTorch's `nn.Linear` draws them (uniform in ±1/√fan_in for weights
    /// and biases), from a ChaCha20 stream seeded with `seed`: every party derives the same model.
    ///
    /// Empty for a TorchScript module, whose initial values come with it (its safetensors
    /// file, [`Self::torchscript`]); a model built from an empty vector is refused for its
    /// length.
    pub fn initial_parameters(&self, seed: u64) -> Vec<f32> {
        match &self.kind {
            ModelKind::Layers(architecture) => return architecture.initial_parameters(seed),
            ModelKind::TorchScript(_) => return Vec::new(),
            ModelKind::LogisticRegression | ModelKind::Mlp { .. } => {}
        }
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let layout = self.layout();
        let mut params = Vec::with_capacity(layout.len());
        for layer in layout.layers() {
            let bound = 1.0 / (layer.fan_in as f64).sqrt();
            for _ in 0..layer.fan_in * layer.fan_out + layer.fan_out {
                params.push(rng.random_range(-bound..bound) as f32);
            }
        }
        params
    }
}

/// SHA-256 content hash of a model: architecture, layout and parameter values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelHash(pub [u8; 32]);

impl ModelHash {
    /// Hashes a model: each tensor's name and shape, then its values as little-endian `f32`.
    /// A declared architecture's hash starts with the architecture itself (its JSON form, with
    /// its length), since activations, pooling and the rest have no tensors to name them.
    ///
    /// Returns `None` if `params` does not fit the spec's layout.
    pub fn of(spec: &ModelSpec, params: &[f32]) -> Option<Self> {
        let layout = spec.layout();
        let mut ctx = digest::Context::new(&digest::SHA256);
        match &spec.kind {
            ModelKind::Layers(architecture) => {
                let text = serde_json::to_vec(architecture.architecture()).ok()?;
                ctx.update(b"medfed-model-layers-v1\n");
                ctx.update(&(text.len() as u64).to_le_bytes());
                ctx.update(&text);
            }
            ModelKind::TorchScript(module) => {
                // The module's code is its file's digest; its tensors follow as any model's.
                ctx.update(b"medfed-model-torchscript-v1\n");
                ctx.update(&module.sha256.0);
            }
            ModelKind::LogisticRegression | ModelKind::Mlp { .. } => {
                ctx.update(b"medfed-model-v1\n");
            }
        }
        for (tensor, values) in layout.split(params)? {
            ctx.update(tensor.name.as_bytes());
            for dim in &tensor.shape {
                ctx.update(&(*dim as u64).to_le_bytes());
            }
            for v in values {
                ctx.update(&v.to_le_bytes());
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Some(Self(out))
    }

    /// Lower-case hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ModelHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelHash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ModelHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A model as it travels: architecture plus parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Architecture and input width.
    pub spec: ModelSpec,
    /// Flat parameters in [`ParamLayout`] order.
    pub params: Vec<f32>,
}

impl Model {
    /// Builds a model, checking that the parameters fit the architecture.
    pub fn new(spec: ModelSpec, params: Vec<f32>) -> Result<Self, ModelError> {
        spec.validate()?;
        let expected = spec.layout().len();
        if params.len() != expected {
            return Err(ModelError::WrongLength {
                expected,
                actual: params.len(),
            });
        }
        if let Some(index) = params.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { index });
        }
        Ok(Self { spec, params })
    }

    /// The model's content hash.
    pub fn hash(&self) -> ModelHash {
        // `new` and every constructor keep `params` the layout's length.
        ModelHash::of(&self.spec, &self.params).unwrap_or(ModelHash([0; 32]))
    }

    /// The probability of the positive class (the sigmoid of the network's output) for each row
    /// of `features`, rows of `spec.input_dim` standardised features one after the other; `None`
    /// if `features` is not a whole number of rows, or for a [`ModelKind::Layers`] model, which
    /// only a libtorch trainer scores.
    ///
    /// The forward pass of the equivalent `torch.nn.Sequential` (linear layers, a ReLU after each
    /// but the last), without libtorch: each layer accumulates in `f64` and rounds its outputs
    /// to `f32`, so scores agree with libtorch's `f32` forward pass to about 1e-7. A row on
    /// which the network's output is undefined gets a NaN, as from libtorch.
    pub fn probabilities(&self, features: &[f32]) -> Option<Vec<f32>> {
        let width = self.spec.input_dim;
        if width == 0
            || !features.len().is_multiple_of(width)
            || matches!(
                self.spec.kind,
                ModelKind::Layers(_) | ModelKind::TorchScript(_)
            )
        {
            return None;
        }
        let layout = self.spec.layout();
        let tensors = layout.split(&self.params)?;
        let mut scores = Vec::with_capacity(features.len() / width);
        let (mut input, mut output) = (Vec::new(), Vec::new());
        for row in features.chunks_exact(width) {
            input.clear();
            input.extend_from_slice(row);
            for (layer, pair) in layout.layers().iter().zip(tensors.chunks_exact(2)) {
                let (weights, bias) = (pair[0].1, pair[1].1);
                output.clear();
                for (out, weight_row) in weights.chunks_exact(layer.fan_in).enumerate() {
                    let z = weight_row
                        .iter()
                        .zip(&input)
                        .fold(f64::from(bias[out]), |acc, (&w, &x)| {
                            acc + f64::from(w) * f64::from(x)
                        }) as f32;
                    // A ReLU that keeps a NaN a NaN, as PyTorch's does (`f32::max` would not).
                    let relu = |z: f32| if z > 0.0 || z.is_nan() { z } else { 0.0 };
                    output.push(if layer.relu_after { relu(z) } else { z });
                }
                std::mem::swap(&mut input, &mut output);
            }
            let logit = f64::from(input.first().copied().unwrap_or(f32::NAN));
            scores.push((1.0 / (1.0 + (-logit).exp())) as f32);
        }
        Some(scores)
    }
}

/// A model that does not fit its declared architecture.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// A layer of width zero.
    #[error("the model's {what} width is zero")]
    ZeroWidth {
        /// Which layer.
        what: String,
    },
    /// The parameter vector has the wrong length for the architecture.
    #[error("model has {actual} parameters, its architecture needs {expected}")]
    WrongLength {
        /// Length the layout needs.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// The architecture has more than [`MAX_PARAMS`] parameters.
    #[error("the model would have more than {max} parameters")]
    TooLarge {
        /// The cap.
        max: usize,
    },
    /// A declared architecture that [`Architecture::check`] refuses.
    #[error("{0}")]
    Architecture(#[from] ArchitectureError),
    /// A declared architecture that starts with an embedding: no schema encodes the category
    /// indices it reads.
    #[error(
        "the architecture starts with an embedding, which reads category indices, and no schema column encodes one (categoricals are one-hot)"
    )]
    EmbeddingWithoutIndices,
    /// A declared architecture whose input shape does not hold the spec's input width.
    #[error("the architecture's input, {shape}, does not hold the {input_dim} input features")]
    InputShape {
        /// The architecture's declared input shape.
        shape: Shape,
        /// The spec's input width (the schema's encoded features).
        input_dim: usize,
    },
    /// A TorchScript module whose declared parameters are refused.
    #[error("{0}")]
    TorchScript(#[from] TorchScriptError),
    /// A TorchScript module configured by its files where only a declared architecture can
    /// be read ([`ModelSpec::torchscript`] reads the files).
    #[error("a TorchScript model is read from its module and parameter files")]
    TorchScriptFiles,
    /// A parameter is NaN or infinite.
    #[error("model parameter {index} is not finite")]
    NonFinite {
        /// Position in the flat vector.
        index: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![8, 4] },
            input_dim: 5,
        }
    }

    #[test]
    fn the_forward_pass_is_the_sequential_networks() {
        // 2 → [2] → 1: h = relu(W1 x + b1), logit = w2·h + b2.
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![2] },
            input_dim: 2,
        };
        #[rustfmt::skip]
        let params = vec![
            1.0, -1.0, 0.5, 2.0, // W1 (out × in)
            0.0, -1.0,           // b1
            1.5, -0.5,           // w2
            0.25,                // b2
        ];
        let model = Model::new(spec, params).unwrap();
        let rows = [0.5f32, 0.25, -1.0, 2.0];
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        // Row 1: h = relu([0.25, -0.25]) = [0.25, 0]; logit 0.625.
        // Row 2: h = relu([-3, 2.5]) = [0, 2.5]; logit −1.
        let want = [sigmoid(0.625), sigmoid(-1.0)];
        let got = model.probabilities(&rows).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-7, "{got:?} vs {want:?}");
        }
        assert_eq!(model.probabilities(&rows[..3]), None);
        assert_eq!(model.probabilities(&[]), Some(Vec::new()));
    }

    #[test]
    fn mlp_layout_uses_pytorch_sequential_names() {
        let layout = mlp().layout();
        let names: Vec<_> = layout.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"
            ]
        );
        assert_eq!(layout.tensors()[0].shape, vec![8, 5]);
        assert_eq!(layout.tensors()[4].shape, vec![1, 4]);
        assert_eq!(layout.len(), 8 * 5 + 8 + 4 * 8 + 4 + 4 + 1);
        assert!(layout.layers()[1].relu_after && !layout.layers()[2].relu_after);
    }

    #[test]
    fn logistic_regression_is_one_linear_layer() {
        let spec = ModelSpec {
            kind: ModelKind::LogisticRegression,
            input_dim: 3,
        };
        let layout = spec.layout();
        assert_eq!(layout.len(), 4);
        assert_eq!(layout.layers().len(), 1);
    }

    #[test]
    fn initialisation_is_deterministic_and_bounded() {
        let spec = mlp();
        let a = spec.initial_parameters(7);
        assert_eq!(a, spec.initial_parameters(7));
        assert_ne!(a, spec.initial_parameters(8));
        let bound = 1.0 / 5f32.sqrt();
        assert!(a[..48].iter().all(|v| v.abs() <= bound));
    }

    #[test]
    fn hash_changes_with_any_parameter() {
        let spec = mlp();
        let mut params = spec.initial_parameters(1);
        let before = ModelHash::of(&spec, &params).unwrap();
        params[17] += 1e-6;
        assert_ne!(before, ModelHash::of(&spec, &params).unwrap());
        assert!(ModelHash::of(&spec, &params[1..]).is_none());
    }

    #[test]
    fn model_rejects_wrong_length_and_nan() {
        let spec = mlp();
        let n = spec.layout().len();
        assert_eq!(
            Model::new(spec.clone(), vec![0.0; n - 1]),
            Err(ModelError::WrongLength {
                expected: n,
                actual: n - 1
            })
        );
        let mut params = vec![0.0; n];
        params[3] = f32::NAN;
        assert_eq!(
            Model::new(spec, params),
            Err(ModelError::NonFinite { index: 3 })
        );
    }

    /// Found by the `model_transfer` fuzz target: widths whose product overflows `usize` made
    /// `ParamLayout::len` panic ("attempt to multiply with overflow") instead of refusing.
    #[test]
    fn regression_fuzz_overflowing_widths_are_refused_not_panicked_on() {
        let spec = ModelSpec {
            kind: ModelKind::Mlp {
                hidden: vec![usize::MAX / 3, 7],
            },
            input_dim: 1 << 40,
        };
        assert_eq!(spec.layout().len(), usize::MAX);
        assert_eq!(
            spec.validate(),
            Err(ModelError::TooLarge { max: MAX_PARAMS })
        );
        assert!(ModelHash::of(&spec, &[0.0; 8]).is_none());
        assert_eq!(
            Model::new(spec, vec![0.0; 8]),
            Err(ModelError::TooLarge { max: MAX_PARAMS })
        );
        let just_over = ModelSpec {
            kind: ModelKind::LogisticRegression,
            input_dim: MAX_PARAMS,
        };
        assert!(just_over.validate().is_err());
        let at_cap = ModelSpec {
            kind: ModelKind::LogisticRegression,
            input_dim: MAX_PARAMS - 1,
        };
        assert_eq!(at_cap.validate(), Ok(()));
    }
}
