//! Benchmarks of speculative-actions: criterion benches (`benches/`), the synthetic two-build
//! workload they and `cargo xtask workload` / `cargo xtask bench-report` use ([`workload`]),
//! and the helper binaries the report runs (`sa-workload`, `sa-floor`).

pub mod workload;
