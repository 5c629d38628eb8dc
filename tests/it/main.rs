//! Cross-crate tests: one test binary, one module per area.

mod liveness;
