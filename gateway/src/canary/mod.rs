//! Canary releases: the weighted, sticky split between a model's stable and canary versions
//! (`split.rs`), per-version request/error/TTFT windows (`stats.rs`), the SLO guard that rolls a
//! breaching canary back and steps a healthy one forward (`guard.rs`), and the deployment tree
//! of versioned directories with its `current` symlink (`versions.rs`).

pub mod guard;
pub mod split;
pub mod stats;
pub mod versions;
