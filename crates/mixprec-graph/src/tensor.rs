//! Host tensors held by the graph: initializers, constants and folded shape values.

use crate::error::{GraphError, Result};

/// Element storage of a host tensor. Floating types are widened or narrowed to `f32`; integer
/// and boolean types are held as `i64` (they only feed shapes, indices and casts).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// Any integer or boolean type, widened.
    I64(Vec<i64>),
}

/// The largest tensor mixprec accepts from a file (elements), guarding against hostile sizes.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// A dense, row-major host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: TensorData,
}

impl Tensor {
    /// A float tensor; errors if the element count does not match the shape.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        check_len(&shape, data.len())?;
        Ok(Self {
            shape,
            data: TensorData::F32(data),
        })
    }
    /// An integer tensor; errors if the element count does not match the shape.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self> {
        check_len(&shape, data.len())?;
        Ok(Self {
            shape,
            data: TensorData::I64(data),
        })
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True for float tensors.
    pub fn is_float(&self) -> bool {
        matches!(self.data, TensorData::F32(_))
    }
    /// Elements as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// Elements as i64 (floats truncated toward zero, as ONNX Cast does).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I64(v) => v.clone(),
        }
    }
    /// Borrow float elements, if this is a float tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let want = checked_numel(shape).ok_or_else(|| GraphError::BadTensor {
        name: String::new(),
        detail: format!("shape {shape:?} is too large"),
    })?;
    if want != len {
        return Err(GraphError::BadTensor {
            name: String::new(),
            detail: format!("shape {shape:?} needs {want} elements, got {len}"),
        });
    }
    Ok(())
}

/// Product of dims, `None` on overflow or above [`MAX_ELEMENTS`]. Size-0 dimensions do not
/// hide huge ones: the product of the non-zero dimensions must fit too, so that any partial
/// product of the shape (as Flatten or Reshape compute) stays in range.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    let mut n: usize = 1;
    let mut nonzero: usize = 1;
    for &d in shape {
        n = n.checked_mul(d)?;
        nonzero = nonzero.checked_mul(d.max(1))?;
    }
    (nonzero <= MAX_ELEMENTS).then_some(n)
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
