//! mixprec-engine
