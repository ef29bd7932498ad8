//! Element-wise operators with lean gradients: ReLU and a per-channel affine map with constant
//! coefficients (BatchNorm in inference mode, a constant bias).
//!
//! The gradient-based metrics (survey §3.2.3, HAWQ-V2 Eq. 21–23: Hutchinson probes by double
//! backward; §3.1 and §3.4 gradient methods) spend much of their time in element-wise
//! backward passes. Built from candle's generic ops, BatchNorm in inference mode is three
//! broadcast ops whose backward also computes full-size gradients for the constant operands
//! (then sums them away), and ReLU's backward builds a zero tensor, a comparison mask and a
//! conversion before the product. Here each is one operator whose backward is one pass:
//! - `y = (x − m_c) · a_c + b_c` (channel c of dimension 1, rounded step by step in f32 as the
//!   generic ops do, so values are bit-identical): `dx = a_c · dy`, itself a channel affine
//!   map, so any order of derivative stays one pass;
//! - `y = max(x, 0)`: `dx = dy · [x ≥ 0]` (candle's convention at 0), a mask product that is
//!   linear in `dy` and has zero derivative in `x` (almost everywhere), so its own backward is
//!   the same mask product.
//!
//! Complexity: one pass over the tensor per operator and per derivative.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use crate::conv2d::f32_data;

/// `y[n, c, …] = (x[n, c, …] − m[c]) · a[c] + b[c]` with constant coefficients.
#[derive(Clone)]
struct ChannelAffine {
    /// `None`: no subtraction.
    m: Option<Arc<Vec<f32>>>,
    a: Arc<Vec<f32>>,
    /// `None`: no offset (the derivative of an affine map).
    b: Option<Arc<Vec<f32>>>,
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "mixprec-channel-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let x = f32_data(op, "input", s, l)?;
        let dims = l.dims();
        let c = self.a.len();
        if dims.len() < 2 || dims[1] != c {
            bail!("{op}: {c} coefficients for an input of shape {dims:?}")
        }
        let inner: usize = dims[2..].iter().product();
        let mut y = vec![0f32; x.len()];
        if inner > 0 {
            for (k, (yc, xc)) in y.chunks_mut(inner).zip(x.chunks(inner)).enumerate() {
                let ch = k % c;
                let a = self.a[ch];
                let m = self.m.as_ref().map_or(0.0, |m| m[ch]);
                let b = self.b.as_ref().map_or(0.0, |b| b[ch]);
                match (self.m.is_some(), self.b.is_some()) {
                    (true, true) => yc
                        .iter_mut()
                        .zip(xc)
                        .for_each(|(y, &x)| *y = (x - m) * a + b),
                    (false, true) => yc.iter_mut().zip(xc).for_each(|(y, &x)| *y = x * a + b),
                    (true, false) => yc.iter_mut().zip(xc).for_each(|(y, &x)| *y = (x - m) * a),
                    (false, false) => yc.iter_mut().zip(xc).for_each(|(y, &x)| *y = x * a),
                }
            }
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let scale = ChannelAffine {
            m: None,
            a: self.a.clone(),
            b: None,
        };
        Ok(Some(grad.contiguous()?.apply_op1(scale)?))
    }
}

/// `(x − m[c]) · a[c] + b[c]` over dimension 1 of `x` (f32, CPU; a missing `m` or `b` is
/// skipped), differentiable to any order in `x`; the coefficients are constants (no gradient
/// flows to them).
pub fn channel_affine(
    x: &Tensor,
    m: Option<Vec<f32>>,
    a: Vec<f32>,
    b: Option<Vec<f32>>,
) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ChannelAffine {
        m: m.map(Arc::new),
        a: Arc::new(a),
        b: b.map(Arc::new),
    })
}

/// `y = max(x, 0)`.
struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "mixprec-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(self.name(), "input", s, l)?;
        let y = x.iter().map(|&v| v.max(0.0)).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2(arg, PositiveMask)?))
    }
}

/// `g · [x ≥ 0]` (the ReLU derivative applied to `g`).
struct PositiveMask;

impl CustomOp2 for PositiveMask {
    fn name(&self) -> &'static str {
        "mixprec-positive-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (g, x) = (
            f32_data(op, "gradient", s1, l1)?,
            f32_data(op, "input", s2, l2)?,
        );
        if l1.dims() != l2.dims() {
            bail!("{op}: shapes {:?} and {:?} differ", l1.dims(), l2.dims())
        }
        let y = g
            .iter()
            .zip(x)
            .map(|(&g, &x)| if x >= 0.0 { g } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _g: &Tensor,
        x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Linear in g; piecewise constant in x.
        Ok((Some(grad.contiguous()?.apply_op2(x, PositiveMask)?), None))
    }
}

/// `max(x, 0)` for f32 CPU tensors, differentiable to any order (derivative 1 at 0, as
/// candle's own ReLU).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Value, gradient and one Hessian-vector product of `sum(r ⊙ f(x)²)` for the lean
    /// operators and for candle's generic ones agree.
    #[test]
    fn lean_operators_match_generic_ones_to_second_order() {
        let dev = Device::Cpu;
        let xs: Vec<f32> = (0..2 * 3 * 4)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let r = Tensor::from_vec(
            (0..24).map(|i| (i % 5) as f32 - 2.0).collect::<Vec<_>>(),
            (2, 3, 4),
            &dev,
        )
        .unwrap();
        let v = Tensor::from_vec(
            (0..24)
                .map(|i| ((i * 7) % 3) as f32 - 1.0)
                .collect::<Vec<_>>(),
            (2, 3, 4),
            &dev,
        )
        .unwrap();
        let (m, a, b) = (
            vec![0.2f32, -0.1, 0.0],
            vec![0.5f32, -1.5, 2.0],
            vec![0.1f32, 0.0, -0.3],
        );
        let lean = |x: &Tensor| {
            let y = channel_affine(x, Some(m.clone()), a.clone(), Some(b.clone())).unwrap();
            relu(&y).unwrap()
        };
        let generic = |x: &Tensor| {
            let mt = Tensor::from_vec(m.clone(), (1, 3, 1), &dev).unwrap();
            let at = Tensor::from_vec(a.clone(), (1, 3, 1), &dev).unwrap();
            let bt = Tensor::from_vec(b.clone(), (1, 3, 1), &dev).unwrap();
            x.broadcast_sub(&mt)
                .unwrap()
                .broadcast_mul(&at)
                .unwrap()
                .broadcast_add(&bt)
                .unwrap()
                .relu()
                .unwrap()
        };
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let x = Var::from_slice(&xs, (2, 3, 4), &dev).unwrap();
            let y = f(x.as_tensor());
            let loss = (y.sqr().unwrap() * &r).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
            let hv = (&g * &v).unwrap().sum_all().unwrap().backward().unwrap();
            let hv = hv.get(x.as_tensor()).unwrap().clone();
            [y, g, hv].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        crate::init();
        let (l, g) = (run(&lean), run(&generic));
        for (what, (a, b)) in ["value", "gradient", "Hessian-vector product"]
            .iter()
            .zip(l.iter().zip(&g))
        {
            assert!(a.iter().any(|v| *v != 0.0), "{what} is all zero");
            // Bit-identical values; gradients up to summation order.
            for (x, y) in a.iter().zip(b) {
                if *what == "value" {
                    assert_eq!(x.to_bits(), y.to_bits(), "{x} vs {y}");
                }
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{what}: {x} vs {y}"
                );
            }
        }
    }
}
