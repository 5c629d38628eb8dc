//! Cross-crate tests live in `it/` and `crash/`; this library holds the crash test's parts
//! shared by its processes (`src/bin`) and the test itself.

pub mod crash;
