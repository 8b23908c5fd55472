//! Shared by the fuzz target, the seed corpus generator and the stable replay
//! test in `tests/properties.rs` (which includes these files with `#[path]`).
pub mod check;
pub mod seeds;
