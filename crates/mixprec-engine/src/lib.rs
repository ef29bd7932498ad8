//! mixprec-engine
pub mod kernels;
