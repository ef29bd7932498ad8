//! mixprec-quant
