//! mixprec-alloc
