//! mixprec-graph
