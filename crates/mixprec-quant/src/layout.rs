//! Tensor layouts and the partition of a tensor into parameter-sharing blocks
//! (per tensor, per channel, per group; survey §2.3–2.4).

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::scheme::Granularity;

/// Shape of a tensor and the axis that indexes its channels.
///
/// Conv and GEMM weights in `[out, ...]` layout use axis 0; NCHW activations use axis 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorLayout {
    /// Dimensions, outermost first (row-major storage).
    pub shape: Vec<usize>,
    /// The channel axis (`< shape.len()`, ignored for a scalar shape `[]`).
    pub channel_axis: usize,
}

impl TensorLayout {
    /// A layout with an explicit channel axis.
    pub fn new(shape: Vec<usize>, channel_axis: usize) -> Self {
        TensorLayout {
            shape,
            channel_axis,
        }
    }

    /// A weight in `[out, ...]` layout: channel axis 0.
    pub fn weight(shape: &[usize]) -> Self {
        TensorLayout::new(shape.to_vec(), 0)
    }

    /// A flat vector of `len` elements (one channel per element under channel granularity is
    /// rarely wanted; use it with tensor granularity).
    pub fn flat(len: usize) -> Self {
        TensorLayout::new(vec![len], 0)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of channels (size of the channel axis; 1 for a scalar).
    pub fn channels(&self) -> usize {
        self.shape.get(self.channel_axis).copied().unwrap_or(1)
    }

    /// Elements per channel.
    pub fn channel_len(&self) -> usize {
        self.numel() / self.channels().max(1)
    }

    /// Checks the axis, that `values` matches the shape, is non-empty and finite.
    pub fn check(&self, values: &[f32]) -> Result<()> {
        if !self.shape.is_empty() && self.channel_axis >= self.shape.len() {
            return Err(QuantError::BadAxis {
                axis: self.channel_axis,
                shape: self.shape.clone(),
            });
        }
        if self.numel() != values.len() {
            return Err(QuantError::ShapeMismatch {
                shape: self.shape.clone(),
                expected: self.numel(),
                got: values.len(),
            });
        }
        check_finite(values, "values")
    }
}

/// Rejects empty slices and NaN / infinite values.
pub(crate) fn check_finite(values: &[f32], what: &str) -> Result<()> {
    if values.is_empty() {
        return Err(QuantError::EmptyTensor {
            what: what.to_string(),
        });
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite {
            what: what.to_string(),
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// The blocks of a tensor under a granularity, in channel-major order: block `b` holds the
/// elements `order[b*len .. (b+1)*len]` of the original tensor.
#[derive(Debug, Clone)]
pub(crate) struct Blocks {
    /// Original flat index of each element in channel-major order; `None` = identity.
    order: Option<Vec<usize>>,
    /// Elements per block.
    pub len: usize,
    /// Number of blocks.
    pub count: usize,
}

impl Blocks {
    /// Partitions `layout` (assumed checked) by `granularity`.
    pub fn new(layout: &TensorLayout, granularity: Granularity) -> Result<Self> {
        let numel = layout.numel();
        let (count, len) = match granularity {
            Granularity::Tensor => (1, numel),
            Granularity::Channel => (layout.channels(), layout.channel_len()),
            Granularity::Group(n) => {
                let len = layout.channel_len();
                if n == 0 || !len.is_multiple_of(n) {
                    return Err(QuantError::GroupSize { group: n, len });
                }
                (numel / n, n)
            }
        };
        let axis = layout.channel_axis;
        let order = if granularity == Granularity::Tensor || axis == 0 || layout.shape.is_empty() {
            None
        } else {
            let channels = layout.shape[axis];
            let inner: usize = layout.shape[axis + 1..].iter().product();
            let outer: usize = layout.shape[..axis].iter().product();
            let mut order = Vec::with_capacity(numel);
            for c in 0..channels {
                for o in 0..outer {
                    let base = (o * channels + c) * inner;
                    order.extend(base..base + inner);
                }
            }
            Some(order)
        };
        Ok(Blocks { order, len, count })
    }

    /// Copies block `b` of `values` into `buf`.
    pub fn gather(&self, values: &[f32], b: usize, buf: &mut Vec<f32>) {
        buf.clear();
        let range = b * self.len..(b + 1) * self.len;
        match &self.order {
            None => buf.extend_from_slice(&values[range]),
            Some(order) => buf.extend(order[range].iter().map(|&i| values[i])),
        }
    }

    /// Writes `block` back as block `b` of `out`.
    pub fn scatter(&self, block: &[f32], b: usize, out: &mut [f32]) {
        let range = b * self.len..(b + 1) * self.len;
        match &self.order {
            None => out[range].copy_from_slice(block),
            Some(order) => {
                for (&i, &v) in order[range].iter().zip(block) {
                    out[i] = v;
                }
            }
        }
    }

    /// Applies `f(block_index, block_values, block_output)` to every block and returns the
    /// outputs in the original layout.
    pub fn map<F>(&self, values: &[f32], mut f: F) -> Result<Vec<f32>>
    where
        F: FnMut(usize, &[f32], &mut [f32]) -> Result<()>,
    {
        let mut out = vec![0.0; values.len()];
        let mut buf = Vec::with_capacity(self.len);
        let mut res = vec![0.0; self.len];
        for b in 0..self.count {
            self.gather(values, b, &mut buf);
            f(b, &buf, &mut res)?;
            self.scatter(&res, b, &mut out);
        }
        Ok(out)
    }

    /// The values in channel-major order (rows of `channel_len` elements).
    pub fn channel_major(&self, values: &[f32]) -> Vec<f32> {
        match &self.order {
            None => values.to_vec(),
            Some(order) => order.iter().map(|&i| values[i]).collect(),
        }
    }

    /// Inverse of [`Blocks::channel_major`].
    pub fn restore_order(&self, data: &[f32]) -> Vec<f32> {
        match &self.order {
            None => data.to_vec(),
            Some(order) => {
                let mut out = vec![0.0; data.len()];
                for (&i, &v) in order.iter().zip(data) {
                    out[i] = v;
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_axis_one_groups_by_channel() {
        // Shape [2, 3, 2] (N, C, W), channel axis 1: channel c holds n*6 + c*2 + w.
        let layout = TensorLayout::new(vec![2, 3, 2], 1);
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let blocks = Blocks::new(&layout, Granularity::Channel).unwrap();
        assert_eq!((blocks.count, blocks.len), (3, 4));
        let mut buf = Vec::new();
        blocks.gather(&values, 1, &mut buf);
        assert_eq!(buf, vec![2.0, 3.0, 8.0, 9.0]);
        let round = blocks.map(&values, |_, v, o| {
            o.copy_from_slice(v);
            Ok(())
        });
        assert_eq!(round.unwrap(), values);
        let groups = Blocks::new(&layout, Granularity::Group(2)).unwrap();
        groups.gather(&values, 3, &mut buf);
        assert_eq!(buf, vec![8.0, 9.0]);
        assert!(matches!(
            Blocks::new(&layout, Granularity::Group(3)),
            Err(QuantError::GroupSize { group: 3, len: 4 })
        ));
    }
}
