//! Declared architectures: a model written as a list of layers (linear, embedding, 1-D and 2-D
//! convolution, pooling, group and layer normalisation, dropout, activations, flatten, residual
//! blocks) over a declared input shape, for a binary classifier that ends in one logit.
//!
//! An [`Architecture`] can come from a peer, so nothing here trusts it: [`Architecture::check`]
//! infers every layer's output shape from the input shape with checked arithmetic and refuses,
//! naming the layer, any architecture that is inconsistent or too large, before anything is
//! allocated for it. Only a checked architecture yields a parameter layout
//! ([`CheckedArchitecture::tensors`]) and initial parameters
//! ([`CheckedArchitecture::initial_parameters`]).
//!
//! ```text
//!  Architecture { input, layers } ──check──▶ CheckedArchitecture
//!                                  ├─ layers(): each layer's path, input and output shape
//!                                  ├─ tensors(): PyTorch names and shapes, flat order
//!                                  └─ initial_parameters(seed): PyTorch-like, ChaCha20
//! ```
//!
//! Tensor names are those of the equivalent PyTorch `nn.Sequential`, a residual block being a
//! module whose children are numbered as in a nested `nn.Sequential`: layer 2 of a model whose
//! layer 1 is a residual block gives `1.2.weight`. A model of linear layers with a ReLU between
//! each has exactly the layout and initial parameters of the same
//! [`ModelKind::Mlp`](crate::model::ModelKind::Mlp).
//!
//! Batch normalisation is deliberately absent: it mixes the examples of a batch, so an
//! example's gradient would depend on the others and per-example clipping would bound nothing.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::model::{MAX_PARAMS, TensorSpec};

/// Most layers an architecture may have, counting those inside residual blocks and the blocks
/// themselves.
pub const MAX_LAYERS: usize = 128;

/// Deepest nesting of residual blocks: a block inside a block inside a block inside a block.
pub const MAX_DEPTH: usize = 4;

/// Most values one example's activation may hold at any layer: 2^24, 64 MiB as `f32`. Bounds
/// the memory a forward pass of a received architecture needs per example.
pub const MAX_ACTIVATION: usize = 1 << 24;

/// Most values one example's forward pass may hold over all its layers together, convolutions'
/// unfolded inputs included: 2^26, 256 MiB as `f32`. With [`MAX_ACTIVATION`] it bounds what a
/// received architecture makes a node allocate per example, whatever its depth.
pub const MAX_TOTAL_ACTIVATION: usize = 1 << 26;

/// The epsilon every normalisation layer adds to the variance, PyTorch's default.
pub const NORM_EPS: f64 = 1e-5;

/// A model declared layer by layer: the shape of one example, and the layers applied to it in
/// order. Written in a configuration file as
///
/// ```toml
/// input = { kind = "image", channels = 1, height = 28, width = 28 }
/// layers = [
///     { kind = "conv2d", out_channels = 16, kernel = 5 },
///     { kind = "relu" },
///     { kind = "max_pool2d", kernel = 2 },
///     { kind = "flatten" },
///     { kind = "linear", out = 1 },
/// ]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// The shape of one example; never [`Shape::Tokens`].
    pub input: Shape,
    /// The layers, input side first.
    pub layers: Vec<LayerSpec>,
}

/// The shape of one example's activation (the batch dimension left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Shape {
    /// A vector of features, `[features]`. As a model's input to an embedding, a vector of
    /// category indices.
    Features {
        /// Its length.
        features: usize,
    },
    /// One embedding vector per categorical input, `[count, dim]`: an embedding's output.
    Tokens {
        /// How many categorical inputs.
        count: usize,
        /// The embedding dimension.
        dim: usize,
    },
    /// A multichannel sequence, `[channels, len]`, as `nn.Conv1d` takes it.
    Sequence {
        /// Channels.
        channels: usize,
        /// Length.
        len: usize,
    },
    /// A multichannel image, `[channels, height, width]`, as `nn.Conv2d` takes it.
    Image {
        /// Channels.
        channels: usize,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
    },
}

/// One layer of an [`Architecture`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// `nn.Linear(features, out)` on [`Shape::Features`].
    Linear {
        /// Output width.
        out: usize,
    },
    /// `nn.Embedding(num_embeddings, dim)`: the model's first layer, on [`Shape::Features`]
    /// holding category indices in `0..num_embeddings`; gives [`Shape::Tokens`].
    Embedding {
        /// Number of categories (rows of the table).
        num_embeddings: usize,
        /// Length of each category's vector.
        dim: usize,
    },
    /// `nn.Conv1d(channels, out_channels, kernel, stride, padding)` on [`Shape::Sequence`].
    Conv1d {
        /// Output channels.
        out_channels: usize,
        /// Kernel length.
        kernel: usize,
        /// Stride, 1 unless given.
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on each side, less than the kernel; 0 unless given.
        #[serde(default)]
        padding: usize,
    },
    /// `nn.Conv2d(channels, out_channels, kernel, stride, padding)`, square kernel, on
    /// [`Shape::Image`].
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel height and width.
        kernel: usize,
        /// Stride in both directions, 1 unless given.
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on each side, less than the kernel; 0 unless given.
        #[serde(default)]
        padding: usize,
    },
    /// `nn.MaxPool1d(kernel, stride)` on [`Shape::Sequence`].
    MaxPool1d {
        /// Window length.
        kernel: usize,
        /// Stride; the kernel unless given, as in PyTorch.
        #[serde(default)]
        stride: Option<usize>,
    },
    /// `nn.AvgPool1d(kernel, stride)` on [`Shape::Sequence`].
    AvgPool1d {
        /// Window length.
        kernel: usize,
        /// Stride; the kernel unless given, as in PyTorch.
        #[serde(default)]
        stride: Option<usize>,
    },
    /// `nn.MaxPool2d(kernel, stride)`, square window, on [`Shape::Image`].
    MaxPool2d {
        /// Window height and width.
        kernel: usize,
        /// Stride; the kernel unless given, as in PyTorch.
        #[serde(default)]
        stride: Option<usize>,
    },
    /// `nn.AvgPool2d(kernel, stride)`, square window, on [`Shape::Image`].
    AvgPool2d {
        /// Window height and width.
        kernel: usize,
        /// Stride; the kernel unless given, as in PyTorch.
        #[serde(default)]
        stride: Option<usize>,
    },
    /// `nn.GroupNorm(groups, channels)` with a per-channel affine transform, on
    /// [`Shape::Sequence`] or [`Shape::Image`] (or [`Shape::Features`], each feature a channel).
    GroupNorm {
        /// Number of groups; divides the channels.
        groups: usize,
    },
    /// `nn.LayerNorm(last)`: normalises the last dimension of [`Shape::Features`] or
    /// [`Shape::Tokens`], with an elementwise affine transform.
    LayerNorm,
    /// `nn.Dropout(p)`: each value zeroed with probability `p` in training, the rest scaled by
    /// `1/(1 − p)`; the identity when scoring.
    Dropout {
        /// The probability of dropping a value, in `[0, 1)`.
        p: f64,
    },
    /// `nn.ReLU()`.
    Relu,
    /// `nn.Tanh()`.
    Tanh,
    /// `nn.Sigmoid()`.
    Sigmoid,
    /// `nn.GELU()` (the exact, erf form).
    Gelu,
    /// `nn.Flatten()`: any shape to [`Shape::Features`].
    Flatten,
    /// `x + body(x)`, where `body` is the given layers in sequence and keeps the shape.
    Residual {
        /// The block's body, input side first.
        layers: Vec<Self>,
    },
}

/// Where a layer sits: its index in the model, then its index in each enclosing residual block,
/// outermost first. Displayed as PyTorch names modules: `2.1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerPath(pub Vec<usize>);

/// One layer of a checked architecture, with its inferred shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedLayer {
    /// Where it sits.
    pub path: LayerPath,
    /// Its input shape.
    pub input: Shape,
    /// Its output shape.
    pub output: Shape,
    /// Its parameter tensors, in flat order (empty for a layer without parameters; for a
    /// residual block, empty: its body's layers follow it and hold them).
    pub tensors: Vec<TensorSpec>,
}

/// An [`Architecture`] that [`Architecture::check`] accepted, with every layer's shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedArchitecture {
    architecture: Architecture,
    layers: Vec<CheckedLayer>,
    param_count: usize,
    activations: usize,
}

/// Why an architecture was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchitectureError {
    /// The model has no layers.
    #[error("the architecture has no layers")]
    NoLayers,
    /// The declared input shape cannot be a model's input.
    #[error("the input shape {shape} is invalid: {problem}")]
    Input {
        /// The declared shape.
        shape: Shape,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// One layer does not fit its input, or is itself invalid.
    #[error("layer {path} ({kind}) on input {input}: {problem}")]
    Layer {
        /// Where the layer sits.
        path: LayerPath,
        /// The layer's kind, as configuration files name it.
        kind: &'static str,
        /// The shape it receives.
        input: Shape,
        /// What is wrong.
        problem: LayerProblem,
    },
    /// The model's output is not one logit.
    #[error("the model must end in one logit (features = 1), but it ends in {output}")]
    NotOneLogit {
        /// The last layer's output shape.
        output: Shape,
    },
    /// More layers than [`MAX_LAYERS`].
    #[error("the architecture has more than {max} layers (residual blocks and their bodies count)")]
    TooManyLayers {
        /// The cap.
        max: usize,
    },
    /// Residual blocks nested deeper than [`MAX_DEPTH`].
    #[error("layer {path}: residual blocks are nested more than {max} deep")]
    TooDeep {
        /// The block that goes one level too deep.
        path: LayerPath,
        /// The cap.
        max: usize,
    },
    /// A model without a single parameter: nothing to train.
    #[error("the architecture has no parameters to train")]
    NoParameters,
    /// One example's forward pass would hold more than [`MAX_TOTAL_ACTIVATION`] values.
    #[error("layer {path}: one example's forward pass would hold more than {max} values")]
    TooManyActivations {
        /// The layer at which the total passes the cap.
        path: LayerPath,
        /// The cap.
        max: usize,
    },
    /// More parameters than [`MAX_PARAMS`].
    #[error("layer {path}: the model would have more than {max} parameters")]
    TooManyParams {
        /// The layer at which the count passes the cap.
        path: LayerPath,
        /// The cap.
        max: usize,
    },
}

/// What is wrong with one layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerProblem {
    /// A size that must be positive is zero.
    #[error("{what} is zero")]
    Zero {
        /// Which size.
        what: &'static str,
    },
    /// The layer does not take this kind of input.
    #[error("it takes {expected}")]
    WrongInput {
        /// The inputs it takes.
        expected: &'static str,
    },
    /// The kernel or window is larger than the input.
    #[error("kernel {kernel} is larger than the input's {extent}")]
    KernelTooLarge {
        /// The kernel size.
        kernel: usize,
        /// The input's extent along the dimension.
        extent: usize,
    },
    /// Padding more than half the kernel, whose windows would lie mostly in the zeros.
    #[error("padding {padding} is more than half of kernel {kernel}")]
    PaddingTooLarge {
        /// The padding.
        padding: usize,
        /// The kernel size.
        kernel: usize,
    },
    /// A stride longer than the (padded) input, which would skip all but the first window.
    #[error("stride {stride} is longer than the input's {extent} (padding included)")]
    StrideTooLarge {
        /// The stride.
        stride: usize,
        /// The input's extent along the dimension, padding included.
        extent: usize,
    },
    /// A convolution whose unfolded input (input channels × kernel size × output positions)
    /// would hold more than [`MAX_ACTIVATION`] values per example.
    #[error("its unfolded input would hold more than {max} values per example")]
    TooLargeUnfold {
        /// The cap.
        max: usize,
    },
    /// Group normalisation whose groups do not divide the channels.
    #[error("{groups} groups do not divide {channels} channels")]
    GroupsDoNotDivide {
        /// Groups.
        groups: usize,
        /// Channels.
        channels: usize,
    },
    /// A dropout probability outside `[0, 1)`.
    #[error("dropout probability {p} is not in [0, 1)")]
    DropoutRate {
        /// The probability as written.
        p: String,
    },
    /// An embedding that is not the model's first layer.
    #[error("an embedding must be the model's first layer (it reads category indices)")]
    EmbeddingNotFirst,
    /// A residual block whose body changes the shape.
    #[error("a residual block must keep its input's shape, but its body gives {output}")]
    ResidualChangesShape {
        /// The body's output shape.
        output: Shape,
    },
    /// A residual block with no layers.
    #[error("a residual block needs at least one layer")]
    EmptyResidual,
    /// The layer's output, for one example, would hold more than [`MAX_ACTIVATION`] values (or
    /// its size overflows).
    #[error("its output would hold more than {max} values per example")]
    TooLargeOutput {
        /// The cap.
        max: usize,
    },
}

impl Architecture {
    /// Infers every layer's shapes and checks the whole architecture: positive sizes, each
    /// layer fitting its input, residual blocks that keep their shape, one logit at the end, and
    /// the caps [`MAX_LAYERS`], [`MAX_DEPTH`], [`MAX_ACTIVATION`] and [`MAX_PARAMS`].
    ///
    /// Never panics and never overflows, whatever the sizes: an architecture may come from a
    /// peer.
    pub fn check(&self) -> Result<CheckedArchitecture, ArchitectureError> {
        check_input(self.input)?;
        if self.layers.is_empty() {
            return Err(ArchitectureError::NoLayers);
        }
        let mut walk = Walk {
            layers: Vec::new(),
            param_count: 0,
            activations: 0,
        };
        let output = walk.sequence(&self.layers, self.input, &LayerPath::default())?;
        if output != (Shape::Features { features: 1 }) {
            return Err(ArchitectureError::NotOneLogit { output });
        }
        if walk.param_count == 0 {
            return Err(ArchitectureError::NoParameters);
        }
        Ok(CheckedArchitecture {
            architecture: self.clone(),
            layers: walk.layers,
            param_count: walk.param_count,
            activations: walk.activations,
        })
    }
}

impl CheckedArchitecture {
    /// The architecture as declared.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// Every layer in order (a residual block, then its body's layers), with its shapes.
    pub fn layers(&self) -> &[CheckedLayer] {
        &self.layers
    }

    /// The parameter tensors, in flat order: each parameterised layer's weight, then its bias.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorSpec> {
        self.layers.iter().flat_map(|l| &l.tensors)
    }

    /// Total number of parameters; at least one, at most [`MAX_PARAMS`].
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// Values one example's forward pass holds over all its layers, convolutions' unfolded
    /// inputs included; at most [`MAX_TOTAL_ACTIVATION`]. What a trainer sizes its passes by.
    pub fn activations_per_example(&self) -> usize {
        self.activations
    }

    /// Initial parameters as PyTorch's defaults draw them, from a ChaCha20 stream seeded with
    /// `seed`, in flat order, so that every party derives the same model: linear and
    /// convolution weights and biases uniform in `±1/√fan_in` (`fan_in` the input width, or
    /// input channels × kernel size), embeddings standard normal, normalisation weights one and
    /// biases zero.
    pub fn initial_parameters(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut params = Vec::with_capacity(self.param_count);
        for layer in &self.layers {
            let Some(spec) = self.spec_at(&layer.path) else {
                continue;
            };
            match spec {
                LayerSpec::Linear { .. } | LayerSpec::Conv1d { .. } | LayerSpec::Conv2d { .. } => {
                    // A weight's shape is `[out, fan_in…]`: its fan-in is the rest of the shape.
                    let fan_in = layer
                        .tensors
                        .first()
                        .map_or(1, |w| w.shape.iter().skip(1).product::<usize>());
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    for tensor in &layer.tensors {
                        for _ in 0..tensor.numel() {
                            params.push(rng.random_range(-bound..bound) as f32);
                        }
                    }
                }
                LayerSpec::Embedding { .. } => {
                    for tensor in &layer.tensors {
                        for _ in 0..tensor.numel() {
                            params.push(standard_normal(&mut rng) as f32);
                        }
                    }
                }
                LayerSpec::GroupNorm { .. } | LayerSpec::LayerNorm => {
                    if let [weight, bias] = layer.tensors.as_slice() {
                        params.extend(std::iter::repeat_n(1.0, weight.numel()));
                        params.extend(std::iter::repeat_n(0.0, bias.numel()));
                    }
                }
                _ => {}
            }
        }
        params
    }

    /// A one-line description for people: the input shape, then each layer's path, kind and
    /// output shape, then the sigmoid; for example `layers on image [1, 28, 28]: 0 conv2d →
    /// image [8, 24, 24], 1 relu → image [8, 24, 24], …, sigmoid`.
    pub fn describe(&self) -> String {
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|layer| {
                let kind = self.spec_at(&layer.path).map_or("?", LayerSpec::kind);
                format!("{} {kind} → {}", layer.path, layer.output)
            })
            .collect();
        format!(
            "layers on {}: {}, sigmoid",
            self.architecture.input,
            layers.join(", ")
        )
    }

    /// The layer at `path`, if there is one.
    pub fn spec_at(&self, path: &LayerPath) -> Option<&LayerSpec> {
        let (first, rest) = path.0.split_first()?;
        let mut spec = self.architecture.layers.get(*first)?;
        for &i in rest {
            match spec {
                LayerSpec::Residual { layers } => spec = layers.get(i)?,
                _ => return None,
            }
        }
        Some(spec)
    }
}

/// Longest architecture text a binary decoder accepts (see [`CheckedArchitecture`]'s serde
/// form): far above the [`MAX_LAYERS`] layers' few kilobytes.
pub const MAX_ARCHITECTURE_TEXT: usize = 64 << 10;

// `check` refuses a dropout probability that is NaN, the one field without a reflexive
// equality, so a checked architecture's equality is an equivalence.
impl Eq for CheckedArchitecture {}

/// Serialised as its [`Architecture`]: field by field in self-describing formats (JSON, TOML),
/// and as that JSON text in binary ones (bincode), whose decoders cannot read the configuration
/// form's `kind` tags. Deserialising checks the architecture, so a peer's that
/// [`Architecture::check`] refuses never becomes a `CheckedArchitecture`; the JSON text is capped
/// at [`MAX_ARCHITECTURE_TEXT`] bytes, and serde_json's recursion limit bounds its nesting
/// before the check does.
impl Serialize for CheckedArchitecture {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.architecture.serialize(serializer)
        } else {
            serde_json::to_string(&self.architecture)
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for CheckedArchitecture {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let architecture = if deserializer.is_human_readable() {
            Architecture::deserialize(deserializer)?
        } else {
            let text = String::deserialize(deserializer)?;
            if text.len() > MAX_ARCHITECTURE_TEXT {
                return Err(D::Error::custom(format!(
                    "an architecture of {} bytes is longer than the {MAX_ARCHITECTURE_TEXT} allowed",
                    text.len()
                )));
            }
            serde_json::from_str(&text).map_err(D::Error::custom)?
        };
        architecture.check().map_err(D::Error::custom)
    }
}

impl LayerSpec {
    /// The layer's kind as configuration files name it (`"conv2d"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Linear { .. } => "linear",
            Self::Embedding { .. } => "embedding",
            Self::Conv1d { .. } => "conv1d",
            Self::Conv2d { .. } => "conv2d",
            Self::MaxPool1d { .. } => "max_pool1d",
            Self::AvgPool1d { .. } => "avg_pool1d",
            Self::MaxPool2d { .. } => "max_pool2d",
            Self::AvgPool2d { .. } => "avg_pool2d",
            Self::GroupNorm { .. } => "group_norm",
            Self::LayerNorm => "layer_norm",
            Self::Dropout { .. } => "dropout",
            Self::Relu => "relu",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
            Self::Gelu => "gelu",
            Self::Flatten => "flatten",
            Self::Residual { .. } => "residual",
        }
    }
}

impl Shape {
    /// Values in one example of this shape; `None` if that overflows `usize`.
    pub fn numel(&self) -> Option<usize> {
        match *self {
            Self::Features { features } => Some(features),
            Self::Tokens { count, dim } => count.checked_mul(dim),
            Self::Sequence { channels, len } => channels.checked_mul(len),
            Self::Image {
                channels,
                height,
                width,
            } => channels.checked_mul(height)?.checked_mul(width),
        }
    }

    /// The dimensions, batch left out, as a tensor of one example has them.
    pub fn dims(&self) -> Vec<usize> {
        match *self {
            Self::Features { features } => vec![features],
            Self::Tokens { count, dim } => vec![count, dim],
            Self::Sequence { channels, len } => vec![channels, len],
            Self::Image {
                channels,
                height,
                width,
            } => vec![channels, height, width],
        }
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, index) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{index}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Features { features } => write!(f, "features [{features}]"),
            Self::Tokens { count, dim } => write!(f, "tokens [{count}, {dim}]"),
            Self::Sequence { channels, len } => write!(f, "sequence [{channels}, {len}]"),
            Self::Image {
                channels,
                height,
                width,
            } => write!(f, "image [{channels}, {height}, {width}]"),
        }
    }
}

/// serde's default for a stride.
fn one() -> usize {
    1
}

/// Checks a model's declared input shape.
fn check_input(shape: Shape) -> Result<(), ArchitectureError> {
    let problem = if matches!(shape, Shape::Tokens { .. }) {
        Some("tokens come only out of an embedding layer; declare features of category indices")
    } else if shape.dims().contains(&0) {
        Some("a dimension is zero")
    } else if shape.numel().is_none_or(|n| n > MAX_ACTIVATION) {
        Some("one example would hold more than MAX_ACTIVATION values")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ArchitectureError::Input { shape, problem }),
        None => Ok(()),
    }
}

/// The state of one walk over an architecture: what [`Architecture::check`] accumulates.
struct Walk {
    layers: Vec<CheckedLayer>,
    param_count: usize,
    /// Values held per example so far: every layer's output, and each convolution's unfolded
    /// input.
    activations: usize,
}

impl Walk {
    /// Checks `layers` in sequence from `input`, inside the block at `parent` (the model itself
    /// at the empty path); returns the last output shape.
    fn sequence(
        &mut self,
        layers: &[LayerSpec],
        input: Shape,
        parent: &LayerPath,
    ) -> Result<Shape, ArchitectureError> {
        let mut shape = input;
        for (i, spec) in layers.iter().enumerate() {
            let mut path = parent.clone();
            path.0.push(i);
            if self.layers.len() >= MAX_LAYERS {
                return Err(ArchitectureError::TooManyLayers { max: MAX_LAYERS });
            }
            shape = self.layer(spec, shape, path)?;
        }
        Ok(shape)
    }

    /// Checks one layer at `path` on `input`; returns its output shape.
    fn layer(
        &mut self,
        spec: &LayerSpec,
        input: Shape,
        path: LayerPath,
    ) -> Result<Shape, ArchitectureError> {
        let fail = |path: &LayerPath, problem| ArchitectureError::Layer {
            path: path.clone(),
            kind: spec.kind(),
            input,
            problem,
        };
        if let LayerSpec::Residual { layers } = spec {
            // `path` has one index per enclosing block plus the block's own.
            if path.0.len() > MAX_DEPTH {
                return Err(ArchitectureError::TooDeep {
                    path,
                    max: MAX_DEPTH,
                });
            }
            if layers.is_empty() {
                return Err(fail(&path, LayerProblem::EmptyResidual));
            }
            let index = self.layers.len();
            self.layers.push(CheckedLayer {
                path: path.clone(),
                input,
                output: input,
                tensors: Vec::new(),
            });
            let output = self.sequence(layers, input, &path)?;
            if output != input {
                let path = self.layers[index].path.clone();
                return Err(fail(&path, LayerProblem::ResidualChangesShape { output }));
            }
            return Ok(input);
        }
        let (output, shapes) =
            layer_shapes(spec, input, &path).map_err(|problem| fail(&path, problem))?;
        let Some(held) = output.numel().filter(|&n| n <= MAX_ACTIVATION) else {
            return Err(fail(
                &path,
                LayerProblem::TooLargeOutput {
                    max: MAX_ACTIVATION,
                },
            ));
        };
        let unfolded = unfolded_input(spec, input, output).ok_or_else(|| {
            fail(
                &path,
                LayerProblem::TooLargeUnfold {
                    max: MAX_ACTIVATION,
                },
            )
        })?;
        self.activations = self
            .activations
            .checked_add(held)
            .and_then(|n| n.checked_add(unfolded))
            .filter(|&n| n <= MAX_TOTAL_ACTIVATION)
            .ok_or_else(|| ArchitectureError::TooManyActivations {
                path: path.clone(),
                max: MAX_TOTAL_ACTIVATION,
            })?;
        let mut tensors = Vec::with_capacity(shapes.len());
        for (name, shape) in shapes {
            let tensor = TensorSpec {
                name: format!("{path}.{name}"),
                shape,
            };
            self.param_count = self
                .param_count
                .checked_add(tensor.numel())
                .filter(|&n| n <= MAX_PARAMS)
                .ok_or_else(|| ArchitectureError::TooManyParams {
                    path: path.clone(),
                    max: MAX_PARAMS,
                })?;
            tensors.push(tensor);
        }
        self.layers.push(CheckedLayer {
            path,
            input,
            output,
            tensors,
        });
        Ok(output)
    }
}

/// A layer's output shape on `input`, and its parameter tensors' names and shapes (a shape's
/// product may overflow: the caller checks it). Not for residual blocks.
type LayerShapes = (Shape, Vec<(&'static str, Vec<usize>)>);

/// See [`LayerShapes`]; `path` tells whether the layer is the model's first.
fn layer_shapes(
    spec: &LayerSpec,
    input: Shape,
    path: &LayerPath,
) -> Result<LayerShapes, LayerProblem> {
    const FEATURES: &str = "features (flatten first)";
    let affine = |n: usize| vec![("weight", vec![n]), ("bias", vec![n])];
    Ok(match *spec {
        LayerSpec::Linear { out } => {
            let Shape::Features { features } = input else {
                return Err(LayerProblem::WrongInput { expected: FEATURES });
            };
            positive(out, "out")?;
            (
                Shape::Features { features: out },
                vec![("weight", vec![out, features]), ("bias", vec![out])],
            )
        }
        LayerSpec::Embedding {
            num_embeddings,
            dim,
        } => {
            if path.0 != [0] {
                return Err(LayerProblem::EmbeddingNotFirst);
            }
            let Shape::Features { features } = input else {
                return Err(LayerProblem::WrongInput {
                    expected: "features holding category indices",
                });
            };
            positive(num_embeddings, "num_embeddings")?;
            positive(dim, "dim")?;
            (
                Shape::Tokens {
                    count: features,
                    dim,
                },
                vec![("weight", vec![num_embeddings, dim])],
            )
        }
        LayerSpec::Conv1d {
            out_channels,
            kernel,
            stride,
            padding,
        } => {
            let Shape::Sequence { channels, len } = input else {
                return Err(LayerProblem::WrongInput {
                    expected: "a sequence",
                });
            };
            positive(out_channels, "out_channels")?;
            let len = conv_extent(len, kernel, stride, padding)?;
            (
                Shape::Sequence {
                    channels: out_channels,
                    len,
                },
                vec![
                    ("weight", vec![out_channels, channels, kernel]),
                    ("bias", vec![out_channels]),
                ],
            )
        }
        LayerSpec::Conv2d {
            out_channels,
            kernel,
            stride,
            padding,
        } => {
            let Shape::Image {
                channels,
                height,
                width,
            } = input
            else {
                return Err(LayerProblem::WrongInput {
                    expected: "an image",
                });
            };
            positive(out_channels, "out_channels")?;
            (
                Shape::Image {
                    channels: out_channels,
                    height: conv_extent(height, kernel, stride, padding)?,
                    width: conv_extent(width, kernel, stride, padding)?,
                },
                vec![
                    ("weight", vec![out_channels, channels, kernel, kernel]),
                    ("bias", vec![out_channels]),
                ],
            )
        }
        LayerSpec::MaxPool1d { kernel, stride } | LayerSpec::AvgPool1d { kernel, stride } => {
            let Shape::Sequence { channels, len } = input else {
                return Err(LayerProblem::WrongInput {
                    expected: "a sequence",
                });
            };
            let len = conv_extent(len, kernel, stride.unwrap_or(kernel), 0)?;
            (Shape::Sequence { channels, len }, Vec::new())
        }
        LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride } => {
            let Shape::Image {
                channels,
                height,
                width,
            } = input
            else {
                return Err(LayerProblem::WrongInput {
                    expected: "an image",
                });
            };
            let stride = stride.unwrap_or(kernel);
            (
                Shape::Image {
                    channels,
                    height: conv_extent(height, kernel, stride, 0)?,
                    width: conv_extent(width, kernel, stride, 0)?,
                },
                Vec::new(),
            )
        }
        LayerSpec::GroupNorm { groups } => {
            let channels = match input {
                Shape::Features { features } => features,
                Shape::Sequence { channels, .. } | Shape::Image { channels, .. } => channels,
                Shape::Tokens { .. } => {
                    return Err(LayerProblem::WrongInput {
                        expected: "features, a sequence or an image",
                    });
                }
            };
            positive(groups, "groups")?;
            if !channels.is_multiple_of(groups) {
                return Err(LayerProblem::GroupsDoNotDivide { groups, channels });
            }
            (input, affine(channels))
        }
        LayerSpec::LayerNorm => {
            let last = match input {
                Shape::Features { features } => features,
                Shape::Tokens { dim, .. } => dim,
                Shape::Sequence { .. } | Shape::Image { .. } => {
                    return Err(LayerProblem::WrongInput {
                        expected: "features or tokens (use group_norm on a sequence or an image)",
                    });
                }
            };
            (input, affine(last))
        }
        LayerSpec::Dropout { p } => {
            // A negative zero is refused too: it would compare equal to 0 but hash apart.
            if !(0.0..1.0).contains(&p) || p.is_sign_negative() {
                return Err(LayerProblem::DropoutRate { p: format!("{p}") });
            }
            (input, Vec::new())
        }
        LayerSpec::Relu | LayerSpec::Tanh | LayerSpec::Sigmoid | LayerSpec::Gelu => {
            (input, Vec::new())
        }
        LayerSpec::Flatten => {
            let features = input.numel().ok_or(LayerProblem::TooLargeOutput {
                max: MAX_ACTIVATION,
            })?;
            (Shape::Features { features }, Vec::new())
        }
        LayerSpec::Residual { .. } => {
            // `Walk::layer` handles blocks itself; reaching here is a caller's mistake, which
            // is reported rather than panicked on.
            return Err(LayerProblem::WrongInput {
                expected: "a residual block's body",
            });
        }
    })
}

/// The output length of a convolution or pooling window along one dimension:
/// `(extent + 2·padding − kernel) / stride + 1`, checked.
fn conv_extent(
    extent: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<usize, LayerProblem> {
    positive(kernel, "kernel")?;
    positive(stride, "stride")?;
    if padding > kernel / 2 {
        return Err(LayerProblem::PaddingTooLarge { padding, kernel });
    }
    // The kernel must fit the input itself, not only its padding: otherwise a kernel is bounded
    // by nothing but the parameter cap, and so is the unfolded input.
    if kernel > extent {
        return Err(LayerProblem::KernelTooLarge { kernel, extent });
    }
    // padding ≤ kernel/2 ≤ extent/2, so the sum fits whenever the extent does; checked all the
    // same.
    let padded = padding
        .checked_mul(2)
        .and_then(|p| extent.checked_add(p))
        .ok_or(LayerProblem::TooLargeOutput {
            max: MAX_ACTIVATION,
        })?;
    if stride > padded {
        return Err(LayerProblem::StrideTooLarge {
            stride,
            extent: padded,
        });
    }
    Ok((padded - kernel) / stride + 1)
}

/// The values a convolution's unfolded input holds per example (input channels × kernel size ×
/// output positions), 0 for any other layer; `None` above [`MAX_ACTIVATION`] or on overflow.
fn unfolded_input(spec: &LayerSpec, input: Shape, output: Shape) -> Option<usize> {
    let (channels, window) = match (spec, input) {
        (&LayerSpec::Conv1d { kernel, .. }, Shape::Sequence { channels, .. }) => (channels, kernel),
        (&LayerSpec::Conv2d { kernel, .. }, Shape::Image { channels, .. }) => {
            (channels, kernel.checked_mul(kernel)?)
        }
        _ => return Some(0),
    };
    let positions = match output {
        Shape::Sequence { len, .. } => len,
        Shape::Image { height, width, .. } => height.checked_mul(width)?,
        _ => return Some(0),
    };
    channels
        .checked_mul(window)?
        .checked_mul(positions)
        .filter(|&n| n <= MAX_ACTIVATION)
}

/// `Err(Zero)` naming `what` if `n` is zero.
fn positive(n: usize, what: &'static str) -> Result<(), LayerProblem> {
    if n == 0 {
        Err(LayerProblem::Zero { what })
    } else {
        Ok(())
    }
}

/// One standard normal draw by Box–Muller, with `libm` so that every platform draws the same.
fn standard_normal(rng: &mut ChaCha20Rng) -> f64 {
    // 1 − U is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelKind, ModelSpec};

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

    fn conv2d(out_channels: usize, kernel: usize) -> LayerSpec {
        LayerSpec::Conv2d {
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
        }
    }

    /// The benchmark's CNN on 1×28×28 images.
    fn small_cnn() -> Architecture {
        Architecture {
            input: image(1, 28, 28),
            layers: vec![
                conv2d(16, 5),
                LayerSpec::GroupNorm { groups: 4 },
                LayerSpec::Relu,
                LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: None,
                },
                conv2d(32, 5),
                LayerSpec::Relu,
                LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: None,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        }
    }

    fn layer_error(arch: &Architecture) -> (String, LayerProblem) {
        match arch.check() {
            Err(ArchitectureError::Layer { path, problem, .. }) => (path.to_string(), problem),
            other => panic!("expected a layer error, got {other:?}"),
        }
    }

    #[test]
    fn cnn_shapes_are_inferred_layer_by_layer() {
        let checked = small_cnn().check().unwrap();
        let outputs: Vec<Shape> = checked.layers().iter().map(|l| l.output).collect();
        assert_eq!(
            outputs,
            vec![
                image(16, 24, 24),
                image(16, 24, 24),
                image(16, 24, 24),
                image(16, 12, 12),
                image(32, 8, 8),
                image(32, 8, 8),
                image(32, 4, 4),
                features(512),
                features(1),
            ]
        );
        assert_eq!(checked.layers()[4].input, image(16, 12, 12));
        // 16·25 + 16, 16 + 16, 32·16·25 + 32, 512 + 1.
        assert_eq!(checked.param_count(), 416 + 32 + 12_832 + 513);
        assert_eq!(checked.initial_parameters(3).len(), checked.param_count());
    }

    #[test]
    fn strides_padding_and_one_dimensional_layers_follow_pytorch_formulas() {
        let arch = Architecture {
            input: Shape::Sequence {
                channels: 3,
                len: 50,
            },
            layers: vec![
                LayerSpec::Conv1d {
                    out_channels: 8,
                    kernel: 5,
                    stride: 2,
                    padding: 2,
                },
                LayerSpec::AvgPool1d {
                    kernel: 3,
                    stride: Some(2),
                },
                LayerSpec::MaxPool1d {
                    kernel: 2,
                    stride: None,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        let checked = arch.check().unwrap();
        let outputs: Vec<Shape> = checked.layers().iter().map(|l| l.output).collect();
        // (50 + 4 − 5)/2 + 1 = 25; (25 − 3)/2 + 1 = 12; (12 − 2)/2 + 1 = 6.
        assert_eq!(
            outputs[..3],
            [
                Shape::Sequence {
                    channels: 8,
                    len: 25
                },
                Shape::Sequence {
                    channels: 8,
                    len: 12
                },
                Shape::Sequence {
                    channels: 8,
                    len: 6
                },
            ]
        );
        assert_eq!(outputs[3], features(48));
        let strided = Architecture {
            input: image(2, 9, 7),
            layers: vec![
                LayerSpec::Conv2d {
                    out_channels: 4,
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        // (9 + 2 − 3)/2 + 1 = 5, (7 + 2 − 3)/2 + 1 = 4.
        assert_eq!(strided.check().unwrap().layers()[0].output, image(4, 5, 4));
    }

    #[test]
    fn layout_names_follow_nested_sequential_numbering() {
        let arch = Architecture {
            input: features(6),
            layers: vec![
                linear(8),
                LayerSpec::Relu,
                LayerSpec::Residual {
                    layers: vec![
                        LayerSpec::LayerNorm,
                        linear(8),
                        LayerSpec::Residual {
                            layers: vec![LayerSpec::Tanh, linear(8)],
                        },
                    ],
                },
                LayerSpec::Dropout { p: 0.1 },
                linear(1),
            ],
        };
        let checked = arch.check().unwrap();
        let names: Vec<(&str, &[usize])> = checked
            .tensors()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("0.weight", &[8, 6][..]),
                ("0.bias", &[8][..]),
                ("2.0.weight", &[8][..]),
                ("2.0.bias", &[8][..]),
                ("2.1.weight", &[8, 8][..]),
                ("2.1.bias", &[8][..]),
                ("2.2.1.weight", &[8, 8][..]),
                ("2.2.1.bias", &[8][..]),
                ("4.weight", &[1, 8][..]),
                ("4.bias", &[1][..]),
            ]
        );
        let paths: Vec<String> = checked
            .layers()
            .iter()
            .map(|l| l.path.to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "0", "1", "2", "2.0", "2.1", "2.2", "2.2.0", "2.2.1", "3", "4"
            ]
        );
        assert_eq!(
            checked.spec_at(&LayerPath(vec![2, 2, 0])),
            Some(&LayerSpec::Tanh)
        );
        assert_eq!(checked.spec_at(&LayerPath(vec![1, 0])), None);
    }

    #[test]
    fn an_mlp_declared_as_layers_matches_the_mlp_model_kind() {
        let arch = Architecture {
            input: features(5),
            layers: vec![
                linear(7),
                LayerSpec::Relu,
                linear(3),
                LayerSpec::Relu,
                linear(1),
            ],
        };
        let mlp = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![7, 3] },
            input_dim: 5,
        };
        let checked = arch.check().unwrap();
        let tensors: Vec<TensorSpec> = checked.tensors().cloned().collect();
        assert_eq!(tensors, mlp.layout().tensors());
        assert_eq!(checked.initial_parameters(9), mlp.initial_parameters(9));
    }

    #[test]
    fn initialisation_is_deterministic_with_pytorch_like_bounds() {
        let arch = Architecture {
            input: Shape::Features { features: 4 },
            layers: vec![
                LayerSpec::Embedding {
                    num_embeddings: 100,
                    dim: 10,
                },
                LayerSpec::LayerNorm,
                LayerSpec::Flatten,
                linear(3),
                LayerSpec::GroupNorm { groups: 3 },
                linear(1),
            ],
        };
        let checked = arch.check().unwrap();
        let a = checked.initial_parameters(1);
        assert_eq!(a, checked.initial_parameters(1));
        assert_ne!(a, checked.initial_parameters(2));
        let (embedding, rest) = a.split_at(1000);
        let mean = embedding.iter().map(|&v| f64::from(v)).sum::<f64>() / 1000.0;
        let var = embedding
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / 1000.0;
        // Standard errors 0.032 and about 0.045.
        assert!(mean.abs() < 0.15, "mean {mean}");
        assert!((var - 1.0).abs() < 0.2, "variance {var}");
        // Layer norm over 10: ones then zeros.
        assert_eq!(&rest[..10], &[1.0; 10]);
        assert_eq!(&rest[10..20], &[0.0; 10]);
        // Linear 40 → 3: uniform in ±1/√40.
        let bound = 1.0 / 40f32.sqrt();
        let linear = &rest[20..20 + 123];
        assert!(linear.iter().all(|v| v.abs() <= bound));
        assert!(linear.iter().any(|v| v.abs() > bound / 2.0));
        assert_eq!(&rest[143..146], &[1.0; 3]);
        assert_eq!(&rest[146..149], &[0.0; 3]);
        let conv = small_cnn().check().unwrap().initial_parameters(4);
        // Conv 1 → 16, kernel 5: fan-in 25.
        assert!(conv[..416].iter().all(|v| v.abs() <= 0.2));
        assert!(conv[..416].iter().any(|v| v.abs() > 0.15));
    }

    #[test]
    fn a_kernel_larger_than_its_input_is_refused_naming_the_layer() {
        let mut arch = small_cnn();
        arch.layers[4] = conv2d(32, 13);
        let (path, problem) = layer_error(&arch);
        assert_eq!(path, "4");
        assert_eq!(
            problem,
            LayerProblem::KernelTooLarge {
                kernel: 13,
                extent: 12
            }
        );
        let message = arch.check().unwrap_err().to_string();
        assert!(message.starts_with("layer 4 (conv2d) on input image [16, 12, 12]"));
        arch.layers[4] = LayerSpec::Conv2d {
            out_channels: 32,
            kernel: 3,
            stride: 1,
            padding: 3,
        };
        assert_eq!(
            layer_error(&arch).1,
            LayerProblem::PaddingTooLarge {
                padding: 3,
                kernel: 3
            }
        );
    }

    #[test]
    fn a_residual_block_that_changes_shape_is_refused() {
        let arch = Architecture {
            input: features(4),
            layers: vec![
                LayerSpec::Residual {
                    layers: vec![linear(4), LayerSpec::Relu, linear(5)],
                },
                linear(1),
            ],
        };
        assert_eq!(
            layer_error(&arch),
            (
                "0".into(),
                LayerProblem::ResidualChangesShape {
                    output: features(5)
                }
            )
        );
        let empty = Architecture {
            input: features(4),
            layers: vec![LayerSpec::Residual { layers: vec![] }, linear(1)],
        };
        assert_eq!(layer_error(&empty).1, LayerProblem::EmptyResidual);
    }

    #[test]
    fn groups_must_divide_channels() {
        let mut arch = small_cnn();
        arch.layers[1] = LayerSpec::GroupNorm { groups: 5 };
        assert_eq!(
            layer_error(&arch),
            (
                "1".into(),
                LayerProblem::GroupsDoNotDivide {
                    groups: 5,
                    channels: 16
                }
            )
        );
        arch.layers[1] = LayerSpec::GroupNorm { groups: 0 };
        assert_eq!(layer_error(&arch).1, LayerProblem::Zero { what: "groups" });
    }

    #[test]
    fn the_model_must_end_in_one_logit() {
        let mut arch = small_cnn();
        arch.layers[8] = linear(2);
        assert_eq!(
            arch.check(),
            Err(ArchitectureError::NotOneLogit {
                output: features(2)
            })
        );
        arch.layers.truncate(7);
        assert_eq!(
            arch.check(),
            Err(ArchitectureError::NotOneLogit {
                output: image(32, 4, 4)
            })
        );
        arch.layers.clear();
        assert_eq!(arch.check(), Err(ArchitectureError::NoLayers));
    }

    #[test]
    fn zero_sizes_are_refused() {
        let arch = Architecture {
            input: image(1, 0, 28),
            layers: vec![LayerSpec::Flatten, linear(1)],
        };
        assert!(matches!(arch.check(), Err(ArchitectureError::Input { .. })));
        let arch = Architecture {
            input: features(3),
            layers: vec![linear(0), linear(1)],
        };
        assert_eq!(
            layer_error(&arch),
            ("0".into(), LayerProblem::Zero { what: "out" })
        );
        let mut cnn = small_cnn();
        cnn.layers[3] = LayerSpec::MaxPool2d {
            kernel: 2,
            stride: Some(0),
        };
        assert_eq!(layer_error(&cnn).1, LayerProblem::Zero { what: "stride" });
        cnn.layers[0] = conv2d(0, 5);
        assert_eq!(
            layer_error(&cnn),
            (
                "0".into(),
                LayerProblem::Zero {
                    what: "out_channels"
                }
            )
        );
    }

    #[test]
    fn layers_on_the_wrong_kind_of_input_are_refused() {
        let mut cnn = small_cnn();
        cnn.layers.remove(7); // no flatten before the linear layer
        assert!(matches!(
            layer_error(&cnn),
            (path, LayerProblem::WrongInput { .. }) if path == "7"
        ));
        let mut cnn = small_cnn();
        cnn.layers[1] = LayerSpec::LayerNorm;
        assert!(matches!(
            layer_error(&cnn).1,
            LayerProblem::WrongInput { .. }
        ));
        let tokens_in = Architecture {
            input: Shape::Tokens { count: 2, dim: 3 },
            layers: vec![LayerSpec::Flatten, linear(1)],
        };
        assert!(matches!(
            tokens_in.check(),
            Err(ArchitectureError::Input { .. })
        ));
        let late_embedding = Architecture {
            input: features(3),
            layers: vec![
                LayerSpec::Relu,
                LayerSpec::Embedding {
                    num_embeddings: 4,
                    dim: 2,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert_eq!(
            layer_error(&late_embedding),
            ("1".into(), LayerProblem::EmbeddingNotFirst)
        );
    }

    #[test]
    fn dropout_rates_outside_zero_to_one_are_refused() {
        for p in [-0.1, 1.0, f64::NAN, f64::INFINITY] {
            let arch = Architecture {
                input: features(3),
                layers: vec![LayerSpec::Dropout { p }, linear(1)],
            };
            assert!(
                matches!(layer_error(&arch).1, LayerProblem::DropoutRate { .. }),
                "p = {p}"
            );
        }
    }

    #[test]
    fn sizes_that_would_overflow_are_refused_without_panicking() {
        let huge = Architecture {
            input: features(1 << 20),
            layers: vec![linear(1 << 20), linear(1)],
        };
        assert_eq!(
            huge.check(),
            Err(ArchitectureError::TooManyParams {
                path: LayerPath(vec![0]),
                max: MAX_PARAMS
            })
        );
        let overflow = Architecture {
            input: features(3),
            layers: vec![
                LayerSpec::Embedding {
                    num_embeddings: usize::MAX,
                    dim: usize::MAX,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert!(matches!(
            overflow.check(),
            Err(ArchitectureError::Layer {
                problem: LayerProblem::TooLargeOutput { .. },
                ..
            }) | Err(ArchitectureError::TooManyParams { .. })
        ));
        let wide = Architecture {
            input: image(usize::MAX, usize::MAX, 2),
            layers: vec![LayerSpec::Flatten, linear(1)],
        };
        assert!(matches!(wide.check(), Err(ArchitectureError::Input { .. })));
        let padded = Architecture {
            input: Shape::Sequence {
                channels: 1,
                len: 4,
            },
            layers: vec![
                LayerSpec::Conv1d {
                    out_channels: 1,
                    kernel: usize::MAX,
                    stride: 1,
                    padding: usize::MAX / 2,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert!(matches!(
            layer_error(&padded).1,
            LayerProblem::KernelTooLarge { .. }
        ));
        let blown_up = Architecture {
            input: features(1 << 12),
            layers: vec![
                LayerSpec::Embedding {
                    num_embeddings: 2,
                    dim: 1 << 13,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert_eq!(
            layer_error(&blown_up),
            (
                "0".into(),
                LayerProblem::TooLargeOutput {
                    max: MAX_ACTIVATION
                }
            )
        );
    }

    #[test]
    fn too_many_layers_and_too_deep_nesting_are_refused() {
        let mut layers = vec![LayerSpec::Relu; MAX_LAYERS];
        layers.push(linear(1));
        let long = Architecture {
            input: features(1),
            layers,
        };
        assert_eq!(
            long.check(),
            Err(ArchitectureError::TooManyLayers { max: MAX_LAYERS })
        );
        let mut body = vec![LayerSpec::Relu];
        for _ in 0..=MAX_DEPTH {
            body = vec![LayerSpec::Residual { layers: body }];
        }
        let deep = Architecture {
            input: features(1),
            layers: [body, vec![linear(1)]].concat(),
        };
        assert_eq!(
            deep.check(),
            Err(ArchitectureError::TooDeep {
                path: LayerPath(vec![0; MAX_DEPTH + 1]),
                max: MAX_DEPTH
            })
        );
        // Exactly MAX_DEPTH levels is allowed.
        let mut body = vec![LayerSpec::Relu];
        for _ in 0..MAX_DEPTH {
            body = vec![LayerSpec::Residual { layers: body }];
        }
        let deepest = Architecture {
            input: features(1),
            layers: [body, vec![linear(1)]].concat(),
        };
        assert!(deepest.check().is_ok());
    }

    #[test]
    fn configuration_text_round_trips_and_unknown_fields_are_refused() {
        let text = r#"
            input = { kind = "image", channels = 1, height = 28, width = 28 }
            layers = [
                { kind = "conv2d", out_channels = 16, kernel = 5 },
                { kind = "group_norm", groups = 4 },
                { kind = "relu" },
                { kind = "max_pool2d", kernel = 2 },
                { kind = "conv2d", out_channels = 32, kernel = 5 },
                { kind = "relu" },
                { kind = "max_pool2d", kernel = 2 },
                { kind = "flatten" },
                { kind = "linear", out = 1 },
            ]
        "#;
        let arch: Architecture = toml::from_str(text).unwrap();
        assert_eq!(arch, small_cnn());
        let json = serde_json::to_string(&arch).unwrap();
        assert_eq!(serde_json::from_str::<Architecture>(&json).unwrap(), arch);
        let typo = text.replace("kernel = 5 }", "kernal = 5 }");
        assert!(toml::from_str::<Architecture>(&typo).is_err());
        let unknown = text.replace("\"relu\"", "\"batch_norm\"");
        assert!(toml::from_str::<Architecture>(&unknown).is_err());
    }

    /// `small_cnn` as a model spec over 784 features.
    fn cnn_spec() -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Layers(Box::new(small_cnn().check().unwrap())),
            input_dim: 784,
        }
    }

    #[test]
    fn a_declared_model_travels_in_a_frame_and_in_json_and_is_checked_on_arrival() {
        use crate::codec::{decode_body, frame};
        use crate::messages::{Message, ModelOffer};
        let spec = cnn_spec();
        let offer = Message::ModelOffer(ModelOffer {
            session: 1,
            round: 2,
            spec: spec.clone(),
            hash: crate::model::ModelHash([7; 32]),
            params: spec.layout().len() as u64,
            chunks: 1,
            first_chunk: 0,
            chunk_digests: vec![[0; 32]],
        });
        let bytes = frame(&offer).unwrap();
        assert_eq!(decode_body(&bytes[4..]).unwrap(), offer);

        // In JSON (checkpoints, the manifest) it is the configuration form, tags and all.
        let json = serde_json::to_string(&spec).unwrap();
        assert!(
            json.contains(r#"{"kind":"conv2d","out_channels":16,"kernel":5"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);

        // An architecture that `check` refuses never decodes, from either form: the same bytes
        // with the last layer giving two logits.
        let two_logits = |text: &[u8]| {
            let needle = br#""out":1"#;
            let at = text
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap();
            let mut tampered = text.to_vec();
            tampered[at + needle.len() - 1] = b'2';
            tampered
        };
        let error = decode_body(&two_logits(&bytes)[4..]).unwrap_err();
        assert!(error.to_string().contains("one logit"), "{error}");
        let error = serde_json::from_slice::<ModelSpec>(&two_logits(json.as_bytes())).unwrap_err();
        assert!(error.to_string().contains("one logit"), "{error}");

        // Nor does an architecture text longer than the cap, whatever it says.
        let long = " ".repeat(MAX_ARCHITECTURE_TEXT + 1);
        let config = bincode::config::standard();
        let encoded = bincode::serde::encode_to_vec(&long, config).unwrap();
        let error = bincode::serde::decode_from_slice::<CheckedArchitecture, _>(&encoded, config)
            .unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
    }

    #[test]
    fn a_declared_models_hash_covers_the_layers_that_have_no_tensors() {
        let spec = cnn_spec();
        let params = spec.initial_parameters(3);
        let mut tanh = small_cnn();
        tanh.layers[2] = LayerSpec::Tanh;
        let tanh = ModelSpec {
            kind: ModelKind::Layers(Box::new(tanh.check().unwrap())),
            input_dim: 784,
        };
        assert_eq!(tanh.layout(), spec.layout());
        let hash = crate::model::ModelHash::of(&spec, &params).unwrap();
        assert_ne!(crate::model::ModelHash::of(&tanh, &params).unwrap(), hash);
        assert_eq!(
            crate::model::ModelHash::of(&cnn_spec(), &params).unwrap(),
            hash
        );
    }

    #[test]
    fn a_configured_model_is_checked_against_the_schemas_width() {
        use crate::model::{ModelConfig, ModelError};
        let config = |layers: Vec<LayerSpec>| ModelConfig::Layers {
            input: image(1, 28, 28),
            layers,
        };
        let spec = ModelSpec::from_config(config(small_cnn().layers), 784).unwrap();
        assert_eq!(spec, cnn_spec());
        assert_eq!(
            ModelSpec::from_config(config(small_cnn().layers), 785),
            Err(ModelError::InputShape {
                shape: image(1, 28, 28),
                input_dim: 785
            })
        );
        // An embedding first checks its inputs are category indices, which no schema encodes:
        // a task with one would make that check depend on the patients' values.
        let embedding = ModelConfig::Layers {
            input: features(4),
            layers: vec![
                LayerSpec::Embedding {
                    num_embeddings: 10,
                    dim: 3,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert_eq!(
            ModelSpec::from_config(embedding, 4),
            Err(ModelError::EmbeddingWithoutIndices)
        );
        let mut bad = small_cnn().layers;
        bad[4] = conv2d(32, 13);
        let error = ModelSpec::from_config(config(bad), 784).unwrap_err();
        assert_eq!(
            error.to_string(),
            "layer 4 (conv2d) on input image [16, 12, 12]: kernel 13 is larger than the input's 12"
        );
    }

    /// Architectures a coordinator could send to make a node allocate or compute without bound
    /// within the per-layer caps: each is refused by `check`, naming why.
    #[test]
    fn architectures_that_would_exhaust_a_nodes_memory_are_refused() {
        let sequence = |channels, len| Shape::Sequence { channels, len };
        let conv1d = |kernel, stride, padding| LayerSpec::Conv1d {
            out_channels: 1,
            kernel,
            stride,
            padding,
        };
        // A kernel the size of the parameter cap over padding alone: 2^29 padded values
        // unfolded per example.
        let padded_away = Architecture {
            input: sequence(1, 1),
            layers: vec![
                conv1d((1 << 28) - 1, (1 << 28) - 1, (1 << 28) - 2),
                LayerSpec::Flatten,
            ],
        };
        assert!(matches!(
            layer_error(&padded_away).1,
            LayerProblem::PaddingTooLarge { .. }
        ));
        let huge_kernel = Architecture {
            input: image(1, 2048, 2048),
            layers: vec![
                LayerSpec::Conv2d {
                    out_channels: 1,
                    kernel: 2049,
                    stride: 1,
                    padding: 1024,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert!(matches!(
            layer_error(&huge_kernel).1,
            LayerProblem::KernelTooLarge {
                kernel: 2049,
                extent: 2048
            }
        ));
        // Every dimension within its cap, the unfolded input (64 × 25 × 512²) far above.
        let wide_unfold = Architecture {
            input: image(64, 512, 512),
            layers: vec![
                LayerSpec::Conv2d {
                    out_channels: 1,
                    kernel: 5,
                    stride: 1,
                    padding: 2,
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert!(matches!(
            layer_error(&wide_unfold).1,
            LayerProblem::TooLargeUnfold { .. }
        ));
        // Each activation within its cap, 120 of them far above the total.
        let mut deep = vec![linear(1 << 23)];
        deep.extend(std::iter::repeat_n(LayerSpec::Relu, 120));
        deep.push(linear(1));
        let deep = Architecture {
            input: features(16),
            layers: deep,
        };
        assert!(matches!(
            deep.check(),
            Err(ArchitectureError::TooManyActivations { .. })
        ));
        // A stride that would wrap to a negative number in libtorch.
        let striding = Architecture {
            input: sequence(1, 64),
            layers: vec![
                LayerSpec::MaxPool1d {
                    kernel: 2,
                    stride: Some(usize::MAX),
                },
                LayerSpec::Flatten,
                linear(1),
            ],
        };
        assert!(matches!(
            layer_error(&striding).1,
            LayerProblem::StrideTooLarge { .. }
        ));
        // Nothing to train.
        let no_parameters = Architecture {
            input: sequence(1, 64),
            layers: vec![
                LayerSpec::AvgPool1d {
                    kernel: 64,
                    stride: None,
                },
                LayerSpec::Flatten,
            ],
        };
        assert_eq!(no_parameters.check(), Err(ArchitectureError::NoParameters));
        // A negative zero, equal to 0 but not the same text (nor hash).
        let negative_zero = Architecture {
            input: features(4),
            layers: vec![LayerSpec::Dropout { p: -0.0 }, linear(1)],
        };
        assert!(matches!(
            layer_error(&negative_zero).1,
            LayerProblem::DropoutRate { .. }
        ));
        // The benchmark's CNN is well within every cap, and says how much it holds: each
        // output, and both convolutions' unfolded inputs (1·5²·24² and 16·5²·8²).
        let cnn = small_cnn().check().unwrap();
        let outputs = 16 * 24 * 24 * 3 + 16 * 12 * 12 + 32 * 8 * 8 * 2 + 32 * 4 * 4 * 2 + 1;
        let unfolded = 25 * 24 * 24 + 16 * 25 * 8 * 8;
        assert_eq!(cnn.activations_per_example(), outputs + unfolded);
    }
}
