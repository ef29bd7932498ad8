//! mixprec-exec
