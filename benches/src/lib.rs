//! Shared inputs of the criterion benchmarks of speculative-actions (the benches are in
//! `benches/`); inputs are deterministic so runs compare.
