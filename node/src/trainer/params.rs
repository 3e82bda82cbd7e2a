//! What every libtorch model does with its parameter tensors, whatever its kind (the MLP, a
//! declared architecture, a TorchScript module): read them out as the flat vector, and step
//! them by their own gradients or by a flat gradient. Tensors are given in the flat vector's
//! order.

use tch::{Device, Kind, TchError, Tensor};

/// The parameters as one flat `f32` vector, in order.
pub(crate) fn flat_values(params: &[&Tensor]) -> Result<Vec<f32>, TchError> {
    let mut flat = Vec::new();
    for p in params {
        let p = p
            .f_detach()?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_view([-1])?;
        flat.extend(Vec::<f32>::try_from(&p)?);
    }
    Ok(flat)
}

/// Plain SGD's step: `p ← p − lr·∇p` for every parameter with a gradient, which is then
/// cleared.
pub(crate) fn step_by_grads(params: &[&Tensor], learning_rate: f64) -> Result<(), TchError> {
    let _no_grad = tch::no_grad_guard();
    for p in params {
        let mut grad = p.f_grad()?;
        if !grad.defined() {
            continue;
        }
        let _ = p
            .shallow_clone()
            .f_sub_(&grad.f_mul_scalar(learning_rate)?)?;
        let _ = grad.f_zero_()?;
    }
    Ok(())
}

/// DP-SGD's step: `p ← p − scale·g` for every parameter, where `grad` is flat, in order.
pub(crate) fn step_by_flat(params: &[&Tensor], grad: &Tensor, scale: f64) -> Result<(), TchError> {
    let _no_grad = tch::no_grad_guard();
    let mut offset = 0;
    for p in params {
        let n = p.numel() as i64;
        let step = grad
            .f_narrow(0, offset, n)?
            .f_view_as(p)?
            .f_mul_scalar(scale)?;
        let _ = p.shallow_clone().f_sub_(&step)?;
        offset += n;
    }
    Ok(())
}
