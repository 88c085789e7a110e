//! The project's test and load tooling: a vLLM-like mock replica (also used as a library by the
//! gateway's integration tests and demo) and the load generator (`loadgen`).

pub mod loadgen;
pub mod mock;

pub use mock::{ErrorBody, MockConfig, MockReplica, MockStats};
