//! Independent simulation of a lowered model: the fake-quant arithmetic in `f64`, used to check
//! the integer engine bit for bit.
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021), Eq. 24 and 25. Each layer dequantizes its
//! codes up to the layer's common factor `s_x·s_w[c]` — the operands are `q_x - z_x` and
//! `q_w` as `f64` — and convolves / multiplies them with the direct loops of
//! [`crate::reference`] (no im2col, no packing, no SIMD, weights read from the dense code
//! stream, not from the kernels' panels). Since every partial sum is an integer below `2^53`,
//! this is exactly the real-valued fake-quant product divided by `s_x·s_w[c]`; it is then
//! requantized with the SAME dyadic multipliers as the engine, rounded half away from zero in
//! 128-bit arithmetic. Pooling runs on the same `f64` window loops. Concat, Mul and broadcast
//! Adds use the same dyadic numbers on centred `f64` codes; a Sigmoid / Tanh / LeakyRelu is
//! evaluated per element in `f64` and quantized with the fake-quant rule (round half to even),
//! not read from the engine's lookup table; a Transpose is recomputed by index arithmetic. So any difference from
//! [`QuantModel::trace`] is a bug in the packed kernels or the engine's bookkeeping.
//! Complexity: that of the direct loops (no threads): use a handful of samples.

use std::collections::BTreeMap;

use crate::error::{EngineError, Result};
use crate::kernels::{Dyadic, OutputRange};
use crate::model::{
    clamp_f32, softmax, LayerGeometry, LayerOutput, PoolStep, QuantModel, Step, Trace,
};
use crate::reference::{conv2d_f64, gemm_f64, pool_windows, PoolGeometry};

enum Val {
    Codes(Vec<u8>),
    Float(Vec<f32>),
}

/// `round_half_away_from_zero(v·m / 2^s)` in `i128`.
fn dyadic_mul(v: i64, m: i64, s: u32) -> i64 {
    let p = v as i128 * m as i128;
    if s == 0 {
        return p as i64;
    }
    let d = 1i128 << s;
    let q = (p.abs() + d / 2) / d;
    (if p < 0 { -q } else { q }) as i64
}

fn store(v: i64, r: &OutputRange) -> u8 {
    (v + r.zero_point as i64).clamp(r.qmin as i64, r.qmax as i64) as u8
}

fn apply(d: &Dyadic, v: i64, r: &OutputRange) -> u8 {
    store(dyadic_mul(v, d.multiplier() as i64, d.shift()), r)
}

fn geo(p: &PoolStep) -> PoolGeometry {
    PoolGeometry {
        in_shape: p.in_shape,
        out_hw: p.out_hw,
        kernel: p.kernel,
        strides: p.strides,
        pads: p.pads,
        dilations: p.dilations,
    }
}

impl QuantModel {
    /// Runs the model through the independent `f64` simulation (see the module docs); the
    /// result must equal [`QuantModel::trace`] code for code.
    pub fn simulate(&self, input: &[f32], batch: usize) -> Result<Trace> {
        self.check_input(input, batch)?;
        let mut vals: Vec<Option<Val>> = (0..self.tensors.len()).map(|_| None).collect();
        vals[self.input] = Some(Val::Float(input.to_vec()));
        for step in &self.steps {
            let codes = |t: usize| -> Result<&[u8]> {
                match &vals[t] {
                    Some(Val::Codes(c)) => Ok(c),
                    _ => Err(EngineError::Invalid(format!(
                        "tensor '{}' holds no codes",
                        self.tensors[t].name
                    ))),
                }
            };
            let params = |t: usize| {
                self.tensors[t].params.ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "tensor '{}' holds no codes",
                        self.tensors[t].name
                    ))
                })
            };
            let centred = |t: usize| -> Result<Vec<f64>> {
                let z = params(t)?.zero_point;
                Ok(codes(t)?.iter().map(|&q| (q as i32 - z) as f64).collect())
            };
            let out = match step {
                Step::Quantize { input, output, ops } => {
                    let p = params(*output)?;
                    let Some(Val::Float(x)) = &vals[*input] else {
                        return Err(EngineError::Invalid("input is not float".into()));
                    };
                    // Input normalisation is float preprocessing by definition: the same `f32`
                    // operations as the float graph, in order.
                    let mut x = x.clone();
                    for op in ops {
                        op.apply(&mut x);
                    }
                    Val::Codes(x.iter().map(|&v| p.quantize(v)).collect())
                }
                Step::Dequantize { input, .. } => {
                    let p = params(*input)?;
                    Val::Float(codes(*input)?.iter().map(|&q| p.dequantize(q)).collect())
                }
                Step::Layer(l) => {
                    let x = centred(l.input)?;
                    let w = &self.weights[l.weights];
                    let wv: Vec<f64> = w.values().iter().map(|&v| v as f64).collect();
                    let (acc, ch, inner) = match &l.geometry {
                        LayerGeometry::Conv {
                            input,
                            output,
                            params,
                        } => {
                            let s = &w.shape;
                            (
                                conv2d_f64(
                                    &x,
                                    batch,
                                    *input,
                                    &wv,
                                    [s[0], s[1], s[2], s[3]],
                                    params,
                                    [output[1], output[2]],
                                ),
                                output[0],
                                output[1] * output[2],
                            )
                        }
                        LayerGeometry::Gemm { rows, k, n } => {
                            (gemm_f64(&x, batch * rows, *k, &wv, *n), *n, 1)
                        }
                    };
                    let mut codes_out = Vec::new();
                    let mut floats_out = Vec::new();
                    for blk in acc.chunks_exact(ch * inner) {
                        for (c, row) in blk.chunks_exact(inner).enumerate() {
                            for &a in row {
                                let v = a + l.bias[c] as f64;
                                match &l.out {
                                    LayerOutput::Codes { multipliers, range } => {
                                        let d = &multipliers
                                            [if multipliers.len() == 1 { 0 } else { c }];
                                        codes_out.push(apply(d, v as i64, range));
                                    }
                                    LayerOutput::Float { scales, lo, hi } => {
                                        floats_out.push(clamp_f32(
                                            (v * scales[c]) as f32,
                                            *lo,
                                            *hi,
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    match l.out {
                        LayerOutput::Codes { .. } => Val::Codes(codes_out),
                        LayerOutput::Float { .. } => Val::Float(floats_out),
                    }
                }
                Step::Add(a) => {
                    let (x, y) = (centred(a.a)?, centred(a.b)?);
                    if a.b_inner == 0 || x.len() != y.len() * a.b_inner {
                        return Err(EngineError::Invalid(format!(
                            "Add '{}': operands do not broadcast",
                            a.name
                        )));
                    }
                    Val::Codes(
                        x.iter()
                            .enumerate()
                            .map(|(i, &p)| {
                                let q = y[i / a.b_inner];
                                let s = a.ma as i128 * p as i128 + a.mb as i128 * q as i128;
                                let d = 1i128 << a.shift;
                                let r = (s.abs() + d / 2) / d;
                                store((if s < 0 { -r } else { r }) as i64, &a.range)
                            })
                            .collect(),
                    )
                }
                Step::Concat(c) => {
                    let r = params(c.output)?.range();
                    let ins = c
                        .inputs
                        .iter()
                        .map(|&t| centred(t))
                        .collect::<Result<Vec<_>>>()?;
                    let mut out = Vec::new();
                    for s in 0..batch {
                        for o in 0..c.outer {
                            for ((x, &blk), m) in ins.iter().zip(&c.blocks).zip(&c.multipliers) {
                                let start = (s * c.outer + o) * blk;
                                let Some(src) = x.get(start..start + blk) else {
                                    return Err(EngineError::Invalid(format!(
                                        "Concat '{}': an input is too short",
                                        c.name
                                    )));
                                };
                                out.extend(src.iter().map(|&v| match m {
                                    // Same quantization: the centred value re-offset.
                                    None => store(v as i64, &r),
                                    Some(d) => apply(d, v as i64, &r),
                                }));
                            }
                        }
                    }
                    Val::Codes(out)
                }
                Step::Lookup(l) => {
                    // The function evaluated per element, quantized with the fake-quant rule
                    // (round half to even), not read from the step's table.
                    let (pi, po) = (params(l.input)?, params(l.output)?);
                    let x = centred(l.input)?;
                    Val::Codes(
                        x.iter()
                            .map(|&v| {
                                let y = l.function.eval(v * pi.scale as f64);
                                let q =
                                    (y / po.scale as f64).round_ties_even() + po.zero_point as f64;
                                q.clamp(po.qmin as f64, po.qmax as f64) as u8
                            })
                            .collect(),
                    )
                }
                Step::Mul(m) => {
                    let (x, y) = (centred(m.a)?, centred(m.b)?);
                    if m.inner == 0 || x.len() != y.len() * m.inner {
                        return Err(EngineError::Invalid(format!(
                            "Mul '{}': operands do not broadcast",
                            m.name
                        )));
                    }
                    Val::Codes(
                        x.iter()
                            .enumerate()
                            .map(|(i, &p)| {
                                apply(&m.multiplier, (p * y[i / m.inner]) as i64, &m.range)
                            })
                            .collect(),
                    )
                }
                Step::Transpose(t) => {
                    // Direct index arithmetic on the centred values.
                    let x = centred(t.input)?;
                    let r = params(t.output)?.range();
                    let rank = t.in_shape.len();
                    let per: usize = t.in_shape.iter().product();
                    let out_shape: Vec<usize> = t.perm.iter().map(|&a| t.in_shape[a]).collect();
                    let mut out = vec![0u8; x.len()];
                    for (i, &v) in x.iter().enumerate() {
                        let (s, mut rem) = (i / per.max(1), i % per.max(1));
                        let mut idx = vec![0usize; rank];
                        for a in (0..rank).rev() {
                            idx[a] = rem % t.in_shape[a];
                            rem /= t.in_shape[a];
                        }
                        let mut o = 0;
                        for k in 0..rank {
                            o = o * out_shape[k] + idx[t.perm[k]];
                        }
                        out[s * per + o] = store(v as i64, &r);
                    }
                    Val::Codes(out)
                }
                Step::MaxPool(p) => {
                    // Input and output share one quantization: the centred maximum, re-offset.
                    let x = centred(p.input)?;
                    let r = params(p.output)?.range();
                    let m = pool_windows(&x, batch, &geo(p), |v, _| {
                        v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x))
                    });
                    Val::Codes(m.iter().map(|&v| store(v as i64, &r)).collect())
                }
                Step::AvgPool(p) => {
                    let x = centred(p.input)?;
                    let r = params(p.output)?.range();
                    let cip = p.count_include_pad;
                    let sums = pool_windows(&x, batch, &geo(p), |v, _| v.iter().sum::<f64>());
                    let counts = pool_windows(&x, batch, &geo(p), |v, padded| {
                        (if cip { padded } else { v.len() }) as f64
                    });
                    let mut out = Vec::with_capacity(sums.len());
                    for (&sum, &n) in sums.iter().zip(&counts) {
                        let d = (n as usize)
                            .checked_sub(1)
                            .and_then(|i| p.multipliers.get(i))
                            .ok_or_else(|| {
                                EngineError::Invalid(format!(
                                    "AveragePool '{}': no multiplier for {n} elements",
                                    p.name
                                ))
                            })?;
                        out.push(apply(d, sum as i64, &r));
                    }
                    Val::Codes(out)
                }
                Step::Clamp { input, lo, hi, .. } => Val::Codes(
                    codes(*input)?
                        .iter()
                        .map(|&q| (q as i32).clamp(*lo, *hi) as u8)
                        .collect(),
                ),
                Step::Requant {
                    input,
                    output,
                    multiplier,
                    ..
                } => {
                    let r = params(*output)?.range();
                    let x = centred(*input)?;
                    Val::Codes(x.iter().map(|&v| apply(multiplier, v as i64, &r)).collect())
                }
                Step::Softmax {
                    input,
                    outer,
                    len,
                    inner,
                    ..
                } => {
                    let Some(Val::Float(x)) = &vals[*input] else {
                        return Err(EngineError::Invalid("softmax input is not float".into()));
                    };
                    let mut v = x.clone();
                    softmax(&mut v, *outer, *len, *inner);
                    Val::Float(v)
                }
            };
            vals[step.output()] = Some(out);
        }
        let Some(Val::Float(output)) = vals[self.output].take() else {
            return Err(EngineError::Invalid("the model output is not float".into()));
        };
        let mut codes = BTreeMap::new();
        for (t, v) in self.tensors.iter().zip(vals) {
            if let Some(Val::Codes(c)) = v {
                codes.insert(t.name.clone(), c);
            }
        }
        Ok(Trace { codes, output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dyadic_rounding_matches_the_engine_on_ties_and_extremes() {
        assert_eq!(dyadic_mul(5, 1, 1), 3);
        assert_eq!(dyadic_mul(-5, 1, 1), -3);
        assert_eq!(dyadic_mul(-6, 1, 2), -2);
        assert_eq!(dyadic_mul(7, 3, 0), 21);
        for (v, m, s) in [
            (123_456i64, 0x5555_5555i64, 32u32),
            (-99_999, 1 << 30, 31),
            (1, 1, 62),
        ] {
            let d = Dyadic::new(m as i32, s).unwrap();
            assert_eq!(dyadic_mul(v, m, s), d.apply(v as i32));
        }
        let r = OutputRange::u8(100);
        assert_eq!(store(200, &r), 255);
        assert_eq!(store(-200, &r), 0);
    }
}
