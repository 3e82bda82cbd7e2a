//! A checked [`Architecture`](medfed_protocol::architecture::Architecture) as libtorch tensors:
//! built from the flat parameter vector, run forward, and run forward on a [`Tape`] that keeps
//! what per-example gradients need (each parameterised layer's input and output).

use medfed_protocol::architecture::{CheckedArchitecture, LayerSpec, NORM_EPS, Shape};
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use tch::{Device, Kind, TchError, Tensor};

use crate::trainer::params::{flat_values, step_by_flat};

/// The model as tensors, layer by layer.
pub(crate) struct Network {
    /// The shape of one example, to reshape the flat feature rows.
    input: Shape,
    /// The top-level layers, input side first.
    layers: Vec<Module>,
}

/// One layer with its tensors (a PyTorch module).
pub(super) enum Module {
    /// `a·Wᵀ + b` on `[B, in]`.
    Linear { weight: Tensor, bias: Tensor },
    /// Rows of `weight` picked by the category indices `[B, T]`.
    Embedding { weight: Tensor },
    /// A 1-D (`weight` `[O, C, k]`) or 2-D (`[O, C, k, k]`) convolution.
    Conv {
        weight: Tensor,
        bias: Tensor,
        geometry: ConvGeometry,
    },
    /// Max or average pooling, 1-D or 2-D, without padding.
    Pool {
        max: bool,
        two_d: bool,
        kernel: i64,
        stride: i64,
    },
    /// Group normalisation with a per-channel affine transform.
    GroupNorm {
        groups: i64,
        weight: Tensor,
        bias: Tensor,
    },
    /// Layer normalisation of the last dimension with an elementwise affine transform.
    LayerNorm { weight: Tensor, bias: Tensor },
    /// Inverted dropout with drop probability `p`.
    Dropout { p: f64 },
    /// An elementwise activation.
    Activation(Activation),
    /// Everything but the batch dimension into one.
    Flatten,
    /// `x + body(x)`.
    Residual(Vec<Self>),
}

/// A convolution's geometry; padding is on both sides of every spatial dimension.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvGeometry {
    /// 2-D (square kernel) rather than 1-D.
    pub(super) two_d: bool,
    /// Kernel size.
    pub(super) kernel: i64,
    /// Stride.
    pub(super) stride: i64,
    /// Zero padding.
    pub(super) padding: i64,
}

/// A parameter-free elementwise function.
#[derive(Clone, Copy, Debug)]
pub(super) enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
}

/// Where dropout masks come from in a forward pass.
pub(crate) enum Masks<'a> {
    /// No dropout: scoring.
    Off,
    /// Fresh masks, every value kept independently with probability `1 − p`, drawn from a
    /// ChaCha20 stream. Each example's mask is its own rows, so examples stay independent, as
    /// per-example clipping needs.
    Draw(&'a mut ChaCha20Rng),
    /// The masks of an earlier pass, in the order its dropout layers drew them, each sliced to
    /// this pass's examples (tests replay a batch's masks one example at a time).
    #[cfg(test)]
    Replay(std::collections::VecDeque<Tensor>),
}

/// What a forward pass kept for per-example gradients.
#[derive(Default)]
pub(crate) struct Tape {
    /// One record per parameterised layer, in flat-parameter order.
    pub(super) records: Vec<Record>,
    /// The dropout masks drawn, in order (kept for tests to replay).
    pub(super) masks: Vec<Tensor>,
}

/// A parameterised layer's input and output in one forward pass.
pub(super) struct Record {
    /// Which layer, with what per-example gradients need of it.
    pub(super) site: Site,
    /// Its input activation `a` (category indices for an embedding), not tracked by autograd.
    pub(super) input: Tensor,
    /// Its output `z`, in the autograd graph: the backward pass gives `∂L/∂z`.
    pub(super) output: Tensor,
}

/// The kind of a parameterised layer, as per-example gradients need it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Site {
    /// Weight `[O, I]` and bias `[O]`.
    Linear,
    /// A table of `rows` rows.
    Embedding { rows: i64 },
    /// A convolution.
    Conv(ConvGeometry),
    /// Group normalisation in `groups` groups.
    GroupNorm { groups: i64 },
    /// Layer normalisation of the last dimension.
    LayerNorm,
}

impl Network {
    /// Builds the tensors of `arch` from `params` (whose length the caller has checked against
    /// [`CheckedArchitecture::param_count`]) as `kind` on `device`; parameters track gradients
    /// if `requires_grad`.
    pub(crate) fn from_flat(
        arch: &CheckedArchitecture,
        params: &[f32],
        kind: Kind,
        device: Device,
        requires_grad: bool,
    ) -> Result<Self, TchError> {
        let mut builder = Builder {
            checked: arch.layers().iter(),
            rest: params,
            kind,
            device,
            requires_grad,
        };
        let layers = builder.sequence(&arch.architecture().layers)?;
        Ok(Self {
            input: arch.architecture().input,
            layers,
        })
    }

    /// Logits `[B, 1]` for feature rows `x` `[B, width]`; with a `tape`, records each
    /// parameterised layer's input and output, and each dropout mask.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        masks: &mut Masks<'_>,
        mut tape: Option<&mut Tape>,
    ) -> Result<Tensor, TchError> {
        let rows = x.size().first().copied().unwrap_or(0);
        let mut shape = vec![rows];
        shape.extend(self.input.dims().iter().map(|&d| d as i64));
        let h = x.f_reshape(&shape)?;
        run(&self.layers, h, masks, &mut tape)
    }

    /// The parameter tensors in flat order.
    pub(crate) fn params(&self) -> Vec<&Tensor> {
        let mut out = Vec::new();
        collect_params(&self.layers, &mut out);
        out
    }

    /// The parameters as one flat `f32` vector in layout order.
    pub(crate) fn to_flat(&self) -> Result<Vec<f32>, TchError> {
        flat_values(&self.params())
    }

    /// `p ← p − scale·g` for every parameter, where `grad` is flat in layout order.
    pub(crate) fn step(&self, grad: &Tensor, scale: f64) -> Result<(), TchError> {
        step_by_flat(&self.params(), grad, scale)
    }
}

/// Builds layers from their specs, taking each layer's tensors from the flat vector in turn.
struct Builder<'a> {
    /// The checked layers, in the order the walk meets them.
    checked: std::slice::Iter<'a, medfed_protocol::architecture::CheckedLayer>,
    /// The flat parameters not yet used.
    rest: &'a [f32],
    kind: Kind,
    device: Device,
    requires_grad: bool,
}

impl Builder<'_> {
    fn sequence(&mut self, specs: &[LayerSpec]) -> Result<Vec<Module>, TchError> {
        specs.iter().map(|spec| self.layer(spec)).collect()
    }

    fn layer(&mut self, spec: &LayerSpec) -> Result<Module, TchError> {
        // `check` listed every layer in walk order with its tensors.
        let tensors = match self.checked.next() {
            Some(layer) => layer.tensors.clone(),
            None => return Err(TchError::Shape("architecture walk out of step".into())),
        };
        let mut params = Vec::with_capacity(tensors.len());
        for tensor in &tensors {
            let n = tensor.numel();
            if n > self.rest.len() {
                return Err(TchError::Shape("too few parameters".into()));
            }
            let (values, rest) = self.rest.split_at(n);
            self.rest = rest;
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
            params.push(
                Tensor::f_from_slice(values)?
                    .f_view(shape.as_slice())?
                    .f_to_kind(self.kind)?
                    .f_to_device(self.device)?
                    .f_detach()?
                    .f_set_requires_grad(self.requires_grad)?,
            );
        }
        let mut params = params.into_iter();
        let mut next = || {
            params
                .next()
                .ok_or_else(|| TchError::Shape("a layer lacks a tensor".into()))
        };
        let conv = |two_d, kernel: usize, stride: usize, padding: usize| ConvGeometry {
            two_d,
            kernel: kernel as i64,
            stride: stride as i64,
            padding: padding as i64,
        };
        Ok(match *spec {
            LayerSpec::Linear { .. } => Module::Linear {
                weight: next()?,
                bias: next()?,
            },
            LayerSpec::Embedding { .. } => Module::Embedding { weight: next()? },
            LayerSpec::Conv1d {
                kernel,
                stride,
                padding,
                ..
            } => Module::Conv {
                weight: next()?,
                bias: next()?,
                geometry: conv(false, kernel, stride, padding),
            },
            LayerSpec::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => Module::Conv {
                weight: next()?,
                bias: next()?,
                geometry: conv(true, kernel, stride, padding),
            },
            LayerSpec::MaxPool1d { kernel, stride } | LayerSpec::AvgPool1d { kernel, stride } => {
                Module::Pool {
                    max: matches!(spec, LayerSpec::MaxPool1d { .. }),
                    two_d: false,
                    kernel: kernel as i64,
                    stride: stride.unwrap_or(kernel) as i64,
                }
            }
            LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride } => {
                Module::Pool {
                    max: matches!(spec, LayerSpec::MaxPool2d { .. }),
                    two_d: true,
                    kernel: kernel as i64,
                    stride: stride.unwrap_or(kernel) as i64,
                }
            }
            LayerSpec::GroupNorm { groups } => Module::GroupNorm {
                groups: groups as i64,
                weight: next()?,
                bias: next()?,
            },
            LayerSpec::LayerNorm => Module::LayerNorm {
                weight: next()?,
                bias: next()?,
            },
            LayerSpec::Dropout { p } => Module::Dropout { p },
            LayerSpec::Relu => Module::Activation(Activation::Relu),
            LayerSpec::Tanh => Module::Activation(Activation::Tanh),
            LayerSpec::Sigmoid => Module::Activation(Activation::Sigmoid),
            LayerSpec::Gelu => Module::Activation(Activation::Gelu),
            LayerSpec::Flatten => Module::Flatten,
            LayerSpec::Residual { ref layers } => Module::Residual(self.sequence(layers)?),
            // `LayerSpec` is defined in this workspace; a new kind must be added here.
        })
    }
}

/// Runs `layers` in sequence on `h`.
fn run(
    layers: &[Module],
    mut h: Tensor,
    masks: &mut Masks<'_>,
    tape: &mut Option<&mut Tape>,
) -> Result<Tensor, TchError> {
    for layer in layers {
        h = apply(layer, h, masks, tape)?;
    }
    Ok(h)
}

/// One layer's forward pass.
fn apply(
    layer: &Module,
    h: Tensor,
    masks: &mut Masks<'_>,
    tape: &mut Option<&mut Tape>,
) -> Result<Tensor, TchError> {
    let (site, output) = match layer {
        Module::Linear { weight, bias } => (Site::Linear, h.f_linear(weight, Some(bias))?),
        Module::Embedding { weight } => {
            // The caller checked that every value is a whole number in range.
            let h = h.f_to_kind(Kind::Int64)?;
            let rows = weight.size().first().copied().unwrap_or(0);
            let z = Tensor::f_embedding(weight, &h, -1, false, false)?;
            return Ok(record(tape, Site::Embedding { rows }, h, z));
        }
        Module::Conv {
            weight,
            bias,
            geometry: g,
        } => {
            let z = if g.two_d {
                h.f_conv2d(
                    weight,
                    Some(bias),
                    [g.stride, g.stride],
                    [g.padding, g.padding],
                    [1, 1],
                    1,
                )?
            } else {
                h.f_conv1d(weight, Some(bias), [g.stride], [g.padding], [1], 1)?
            };
            (Site::Conv(*g), z)
        }
        Module::Pool {
            max,
            two_d,
            kernel,
            stride,
        } => {
            let (k, s) = (*kernel, *stride);
            return match (max, two_d) {
                (true, true) => h.f_max_pool2d([k, k], [s, s], [0, 0], [1, 1], false),
                (false, true) => h.f_avg_pool2d([k, k], [s, s], [0, 0], false, true, None),
                (true, false) => h.f_max_pool1d([k], [s], [0], [1], false),
                (false, false) => h.f_avg_pool1d([k], [s], [0], false, true),
            };
        }
        Module::GroupNorm {
            groups,
            weight,
            bias,
        } => (
            Site::GroupNorm { groups: *groups },
            h.f_group_norm(*groups, Some(weight), Some(bias), NORM_EPS, false)?,
        ),
        Module::LayerNorm { weight, bias } => (
            Site::LayerNorm,
            h.f_layer_norm(weight.size(), Some(weight), Some(bias), NORM_EPS, false)?,
        ),
        Module::Dropout { p } => return dropout(h, *p, masks, tape),
        Module::Activation(a) => {
            return match a {
                Activation::Relu => h.f_relu(),
                Activation::Tanh => h.f_tanh(),
                Activation::Sigmoid => h.f_sigmoid(),
                Activation::Gelu => h.f_gelu("none"),
            };
        }
        Module::Flatten => return h.f_flatten(1, -1),
        Module::Residual(body) => {
            let out = run(body, h.shallow_clone(), masks, tape)?;
            return out.f_add(&h);
        }
    };
    Ok(record(tape, site, h, output))
}

/// Records a parameterised layer's input and output if there is a tape; returns the output.
fn record(tape: &mut Option<&mut Tape>, site: Site, input: Tensor, output: Tensor) -> Tensor {
    if let Some(tape) = tape {
        tape.records.push(Record {
            site,
            input: input.detach(),
            output: output.shallow_clone(),
        });
    }
    output
}

/// Inverted dropout of `h` with the masks `masks` gives.
///
/// The masks come from a ChaCha20 stream, not from torch's generator: torch's is one global,
/// unseeded state shared by the whole process, while a stream the caller seeds keeps training
/// reproducible on the CPU (plain training seeds it from the plan, DP-SGD from its CSPRNG).
/// Dropout's randomness needs no secrecy for DP-SGD's guarantee, which holds for any fixed
/// masks: clipping bounds each example's gradient whatever its mask, and the batch sample and
/// the noise, which must stay secret, still come from the caller's CSPRNG.
fn dropout(
    h: Tensor,
    p: f64,
    masks: &mut Masks<'_>,
    tape: &mut Option<&mut Tape>,
) -> Result<Tensor, TchError> {
    let mask = match masks {
        Masks::Off => return Ok(h),
        Masks::Draw(rng) => {
            let keep = 1.0 / (1.0 - p);
            let values: Vec<f64> = (0..h.numel())
                .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
                .collect();
            Tensor::f_from_slice(&values)?
                .f_view(h.size().as_slice())?
                .f_to_kind(h.kind())?
                .f_to_device(h.device())?
        }
        #[cfg(test)]
        Masks::Replay(queue) => queue
            .pop_front()
            .ok_or_else(|| TchError::Shape("no dropout mask to replay".into()))?,
    };
    if let Some(tape) = tape {
        tape.masks.push(mask.shallow_clone());
    }
    h.f_mul(&mask)
}

/// Appends the parameter tensors of `layers` to `out` in flat order.
fn collect_params<'a>(layers: &'a [Module], out: &mut Vec<&'a Tensor>) {
    for layer in layers {
        match layer {
            Module::Linear { weight, bias }
            | Module::Conv { weight, bias, .. }
            | Module::GroupNorm { weight, bias, .. }
            | Module::LayerNorm { weight, bias } => {
                out.push(weight);
                out.push(bias);
            }
            Module::Embedding { weight } => out.push(weight),
            Module::Residual(body) => collect_params(body, out),
            Module::Pool { .. }
            | Module::Dropout { .. }
            | Module::Activation(_)
            | Module::Flatten => {}
        }
    }
}
