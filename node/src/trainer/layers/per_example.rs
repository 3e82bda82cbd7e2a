//! Exact per-example gradients of a [`Network`], vectorised over the batch, as Opacus computes
//! them: one forward pass on a [`Tape`] keeping each parameterised layer's input `a` and output
//! `z`, the batch loss as the *sum* of the per-example losses, one autograd backward for
//! `δ = ∂L/∂z` of every such layer (the sum makes `δ`'s row `i` example `i`'s own), then each
//! layer's per-example parameter gradients from `(a, δ)`:
//!
//! ```text
//!  linear      ∂ℓᵢ/∂W = δᵢ ⊗ aᵢ, ∂ℓᵢ/∂b = δᵢ            never built: ‖·‖² = ‖δᵢ‖²·(‖aᵢ‖² + 1),
//!                                                         Σᵢ cᵢ∂ℓᵢ/∂W = (c ⊙ δ)ᵀ·a
//!  conv        ∂ℓᵢ/∂W = δᵢ·unfold(aᵢ)ᵀ, ∂ℓᵢ/∂b = Σ_positions δᵢ   (im2col, one bmm)
//!  embedding   ∂ℓᵢ/∂W[v] = Σ_{t: idx[i,t] = v} δ[i,t]      (index_add; never B × rows × dim)
//!  group/layer norm   ∂ℓᵢ/∂γ = Σ_positions x̂ᵢ ⊙ δᵢ, ∂ℓᵢ/∂β = Σ_positions δᵢ
//!                     x̂ the input normalised without the affine transform
//! ```
//!
//! Pooling, activations, dropout, flatten and residual additions have no parameters: autograd
//! carries `δ` through them. No layer mixes examples (there is no batch normalisation), so row
//! `i` of every `δ` depends on example `i` alone.
//!
//! [`clipped_gradient_sum`] follows `dp_sgd::clipped_gradient_sum`'s rules: an example whose
//! loss or gradient's squared norm is not finite contributes exactly zero, masked with `where`.

use tch::{Device, Kind, Reduction, TchError, Tensor};

use super::network::{Masks, Network, Record, Site, Tape};
use crate::trainer::dp_sgd::{ClippedSum, clip_factors};
use medfed_protocol::architecture::NORM_EPS;

/// The sum over the batch `(x, y)` of each example's gradient clipped to L2 norm `max_norm`,
/// with the losses; see the module's doc for the non-finite rules. Equal to clipping the rows
/// of `per_example_gradients` (test-only) and summing them, without building those rows where
/// the layer allows (linear layers, embeddings).
pub(crate) fn clipped_gradient_sum(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    max_norm: f64,
    pos_weight: f64,
    masks: &mut Masks<'_>,
) -> Result<ClippedSum, TchError> {
    let pass = backprop(net, x, y, pos_weight, masks)?;
    let _no_grad = tch::no_grad_guard();
    let norm_sq = sq_norms(&pass.layers, x)?;
    let counts = norm_sq
        .f_isfinite()?
        .f_logical_and(&pass.losses.f_isfinite()?)?;
    // `where`, not a product with the mask: 0 × NaN would poison the whole sum.
    let factor = clip_factors(&norm_sq.f_sqrt()?, max_norm)?.f_where_scalarother(&counts, 0.0)?;
    let mut parts = Vec::new();
    for layer in &pass.layers {
        layer.clipped_sum(&factor, &counts, &mut parts)?;
    }
    let losses = pass.losses.f_where_scalarother(&counts, 0.0)?;
    let skipped = counts.f_logical_not()?.f_sum(Kind::Double)?;
    // One device-to-host transfer for both figures.
    let stats =
        Tensor::f_stack(&[losses.f_sum(Kind::Double)?, skipped], 0)?.f_to_device(Device::Cpu)?;
    let stats = Vec::<f64>::try_from(&stats)?;
    Ok(ClippedSum {
        sum: Tensor::f_cat(&parts, 0)?,
        loss_sum: stats[0],
        // A count of at most B, exact in f64.
        skipped: stats[1] as u64,
    })
}

/// Every example's gradient of its own loss, as a `[B, P]` matrix in flat-parameter order, with
/// the dropout masks the pass drew. DP-SGD uses [`clipped_gradient_sum`], which never builds it;
/// distributed DP (`trainer::distributed`) needs each clipped gradient itself.
pub(crate) fn per_example_gradients(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    pos_weight: f64,
    masks: &mut Masks<'_>,
) -> Result<(Tensor, Vec<Tensor>), TchError> {
    let pass = backprop(net, x, y, pos_weight, masks)?;
    let _no_grad = tch::no_grad_guard();
    let mut columns = Vec::new();
    for layer in &pass.layers {
        layer.full(&mut columns)?;
    }
    Ok((Tensor::f_cat(&columns, 1)?, pass.masks))
}

/// The squared L2 norm of each example's whole gradient, `[B]`, summed layer by layer.
/// Test-only: [`clipped_gradient_sum`] computes them on its own pass.
#[cfg(test)]
pub(crate) fn per_example_sq_norms(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    pos_weight: f64,
    masks: &mut Masks<'_>,
) -> Result<Tensor, TchError> {
    let pass = backprop(net, x, y, pos_weight, masks)?;
    let _no_grad = tch::no_grad_guard();
    sq_norms(&pass.layers, x)
}

/// The per-example losses `[B]` of logits `[B, 1]` against labels `[B, 1]`: BCE-with-logits,
/// a positive example's weighted by `pos_weight` (`1 + (pos_weight − 1)·y` for 0/1 labels,
/// PyTorch's `pos_weight`).
pub(crate) fn per_example_losses(
    logits: &Tensor,
    y: &Tensor,
    pos_weight: f64,
) -> Result<Tensor, TchError> {
    let mut losses =
        logits.f_binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::None)?;
    if pos_weight != 1.0 {
        let weights = y.f_mul_scalar(pos_weight - 1.0)?.f_add_scalar(1.0)?;
        losses = losses.f_mul(&weights)?;
    }
    losses.f_reshape([-1])
}

/// One layer's per-example gradients in the cheapest form that is exact.
enum LayerGrads {
    /// Linear: weight `δᵢ ⊗ aᵢ`, bias `δᵢ`; `delta` `[B, O]`, `input` `[B, I]`.
    Outer { delta: Tensor, input: Tensor },
    /// Embedding: row `indices[i, t]` of the table gets `delta[i, t]`; `indices` `[B, T]`,
    /// `delta` `[B, T, D]`, the table `rows` rows.
    Rows {
        rows: i64,
        indices: Tensor,
        delta: Tensor,
    },
    /// Each of the layer's tensors' per-example gradients, `[B, numel]` each.
    Full(Vec<Tensor>),
}

/// What [`backprop`] gives.
struct Pass {
    /// The parameterised layers' per-example gradients, in flat order.
    layers: Vec<LayerGrads>,
    /// Each example's loss, `[B]`, not tracked.
    losses: Tensor,
    /// The dropout masks the forward pass drew.
    #[cfg_attr(not(test), allow(dead_code))]
    masks: Vec<Tensor>,
}

/// The forward pass on a tape, one backward pass of the summed losses for every recorded
/// layer's `δ`, and each layer's per-example gradients.
fn backprop(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    pos_weight: f64,
    masks: &mut Masks<'_>,
) -> Result<Pass, TchError> {
    // The forward pass must build the graph even if the caller turned gradients off.
    let (tape, losses, deltas) = tch::with_grad(|| {
        let mut tape = Tape::default();
        let logits = net.forward(x, masks, Some(&mut tape))?;
        let losses = per_example_losses(&logits, y, pos_weight)?;
        let total = losses.f_sum(losses.kind())?;
        let outputs: Vec<&Tensor> = tape.records.iter().map(|r| &r.output).collect();
        let deltas = Tensor::f_run_backward(&[&total], &outputs, false, false)?;
        Ok::<_, TchError>((tape, losses, deltas))
    })?;
    let _no_grad = tch::no_grad_guard();
    let layers = tape
        .records
        .iter()
        .zip(deltas)
        .map(|(record, delta)| layer_grads(record, delta))
        .collect::<Result<_, _>>()?;
    Ok(Pass {
        layers,
        losses: losses.f_detach()?,
        masks: tape.masks,
    })
}

/// One recorded layer's per-example gradients from its input and its `δ`.
fn layer_grads(record: &Record, delta: Tensor) -> Result<LayerGrads, TchError> {
    let a = &record.input;
    let rows = delta.size().first().copied().unwrap_or(0);
    Ok(match record.site {
        Site::Linear => LayerGrads::Outer {
            delta,
            input: a.shallow_clone(),
        },
        Site::Embedding { rows: table } => LayerGrads::Rows {
            rows: table,
            indices: a.shallow_clone(),
            delta,
        },
        Site::Conv(g) => {
            // unfold(a): [B, C·k(·k), positions], in the order of the weight's `[C, k(, k)]`.
            let unfolded = if g.two_d {
                a.f_im2col(
                    [g.kernel, g.kernel],
                    [1, 1],
                    [g.padding, g.padding],
                    [g.stride, g.stride],
                )?
            } else {
                a.f_unsqueeze(2)?
                    .f_im2col([1, g.kernel], [1, 1], [0, g.padding], [1, g.stride])?
            };
            let out_channels = delta.size().get(1).copied().unwrap_or(0);
            let delta = delta.f_reshape([rows, out_channels, -1])?;
            let weight = delta.f_bmm(&unfolded.f_transpose(1, 2)?)?;
            LayerGrads::Full(vec![
                weight.f_reshape([rows, -1])?,
                delta.f_sum_dim_intlist(2, false, None::<Kind>)?,
            ])
        }
        Site::GroupNorm { groups } => {
            let normalised = a.f_group_norm::<Tensor>(groups, None, None, NORM_EPS, false)?;
            let channels = a.size().get(1).copied().unwrap_or(0);
            let per_channel = |t: &Tensor| {
                t.f_reshape([rows, channels, -1])?
                    .f_sum_dim_intlist(2, false, None::<Kind>)
            };
            LayerGrads::Full(vec![
                per_channel(&normalised.f_mul(&delta)?)?,
                per_channel(&delta)?,
            ])
        }
        Site::LayerNorm => {
            let last = a.size().last().copied().unwrap_or(0);
            let normalised = a.f_layer_norm::<Tensor>([last], None, None, NORM_EPS, false)?;
            let per_element = |t: &Tensor| {
                t.f_reshape([rows, -1, last])?
                    .f_sum_dim_intlist(1, false, None::<Kind>)
            };
            LayerGrads::Full(vec![
                per_element(&normalised.f_mul(&delta)?)?,
                per_element(&delta)?,
            ])
        }
    })
}

impl LayerGrads {
    /// The squared L2 norm of each example's gradient of this layer's parameters, `[B]`.
    fn sq_norms(&self) -> Result<Tensor, TchError> {
        match self {
            Self::Outer { delta, input } => {
                row_sq_norms(delta)?.f_mul(&row_sq_norms(input)?.f_add_scalar(1.0)?)
            }
            Self::Rows {
                rows,
                indices,
                delta,
            } => {
                // Sum δ over each example's repeated indices, then square: a category that an
                // example uses twice gets the sum of both δ in one row.
                let batch = delta.size().first().copied().unwrap_or(0);
                let dim = delta.size().last().copied().unwrap_or(0);
                let keys = example_keys(indices, *rows)?;
                let (unique, inverse, _) = keys.f_internal_unique2(true, true, false)?;
                let unique_rows = unique.size().first().copied().unwrap_or(0);
                let summed = Tensor::f_zeros([unique_rows, dim], (delta.kind(), delta.device()))?
                    .f_index_add(0, &inverse, &delta.f_reshape([-1, dim])?)?;
                let owner = unique.f_div_scalar_mode(*rows, "floor")?;
                Tensor::f_zeros([batch], (delta.kind(), delta.device()))?.f_index_add(
                    0,
                    &owner,
                    &row_sq_norms(&summed)?,
                )
            }
            Self::Full(grads) => {
                let mut total: Option<Tensor> = None;
                for g in grads {
                    let n = row_sq_norms(g)?;
                    total = Some(match total {
                        None => n,
                        Some(t) => t.f_add(&n)?,
                    });
                }
                total.ok_or_else(|| TchError::Shape("a layer without parameters".into()))
            }
        }
    }

    /// Appends this layer's tensors' sums `Σᵢ factorᵢ·gᵢ` (flat) to `parts`, leaving out the
    /// examples not in `counts`. `factor` is already zero for those; the gradients are masked
    /// too, since `0 × ∞` is NaN.
    fn clipped_sum(
        &self,
        factor: &Tensor,
        counts: &Tensor,
        parts: &mut Vec<Tensor>,
    ) -> Result<(), TchError> {
        let counts_row = counts.f_unsqueeze(1)?;
        match self {
            Self::Outer { delta, input } => {
                let scaled = delta
                    .f_mul(&factor.f_unsqueeze(1)?)?
                    .f_where_scalarother(&counts_row, 0.0)?;
                let input = input.f_where_scalarother(&counts_row, 0.0)?;
                parts.push(scaled.f_tr()?.f_mm(&input)?.f_reshape([-1])?);
                parts.push(scaled.f_sum_dim_intlist(0, false, None::<Kind>)?);
            }
            Self::Rows {
                rows,
                indices,
                delta,
            } => {
                let dim = delta.size().last().copied().unwrap_or(0);
                let scaled = delta
                    .f_mul(&factor.f_reshape([-1, 1, 1])?)?
                    .f_where_scalarother(&counts.f_reshape([-1, 1, 1])?, 0.0)?;
                let table = Tensor::f_zeros([*rows, dim], (delta.kind(), delta.device()))?
                    .f_index_add(0, &indices.f_reshape([-1])?, &scaled.f_reshape([-1, dim])?)?;
                parts.push(table.f_reshape([-1])?);
            }
            Self::Full(grads) => {
                let weights = factor.f_unsqueeze(0)?;
                for g in grads {
                    let g = g.f_where_scalarother(&counts_row, 0.0)?;
                    parts.push(weights.f_mm(&g)?.f_reshape([-1])?);
                }
            }
        }
        Ok(())
    }

    /// Appends this layer's tensors' per-example gradients, `[B, numel]` each, to `columns`.
    fn full(&self, columns: &mut Vec<Tensor>) -> Result<(), TchError> {
        match self {
            Self::Outer { delta, input } => {
                let rows = delta.size()[0];
                let weight = Tensor::f_einsum("bi,bj->bij", &[delta, input], None::<&[i64]>)?;
                columns.push(weight.f_reshape([rows, -1])?);
                columns.push(delta.shallow_clone());
            }
            Self::Rows {
                rows,
                indices,
                delta,
            } => {
                let batch = delta.size()[0];
                let dim = *delta.size().last().unwrap_or(&0);
                let keys = example_keys(indices, *rows)?;
                let grads = Tensor::f_zeros([batch * rows, dim], (delta.kind(), delta.device()))?
                    .f_index_add(0, &keys, &delta.f_reshape([-1, dim])?)?;
                columns.push(grads.f_reshape([batch, -1])?);
            }
            Self::Full(grads) => columns.extend(grads.iter().map(Tensor::shallow_clone)),
        }
        Ok(())
    }
}

/// The squared norm of every example's gradient, all layers together, `[B]`.
fn sq_norms(layers: &[LayerGrads], x: &Tensor) -> Result<Tensor, TchError> {
    let mut total: Option<Tensor> = None;
    for layer in layers {
        let n = layer.sq_norms()?;
        total = Some(match total {
            None => n,
            Some(t) => t.f_add(&n)?,
        });
    }
    // Every checked architecture ends in a parameterised layer; an empty sum is zero anyway.
    match total {
        Some(t) => Ok(t),
        None => Tensor::f_zeros(
            [x.size().first().copied().unwrap_or(0)],
            (x.kind(), x.device()),
        ),
    }
}

/// `i·rows + indices[i, t]` for every example `i` and position `t`, flat: a key per (example,
/// table row).
fn example_keys(indices: &Tensor, rows: i64) -> Result<Tensor, TchError> {
    let batch = indices.size().first().copied().unwrap_or(0);
    Tensor::f_arange(batch, (Kind::Int64, indices.device()))?
        .f_mul_scalar(rows)?
        .f_unsqueeze(1)?
        .f_add(indices)?
        .f_reshape([-1])
}

/// The squared L2 norm of each row of a `[B, d]` matrix.
fn row_sq_norms(m: &Tensor) -> Result<Tensor, TchError> {
    m.f_square()?.f_sum_dim_intlist(1, false, None::<Kind>)
}
