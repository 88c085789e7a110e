//! Configuration: the file (`file.rs`) is validated (`validate.rs`) into immutable runtime
//! types (`runtime.rs`). Nothing half-valid ever reaches the gateway.

pub mod file;
pub mod runtime;
pub mod validate;

use std::path::Path;

pub use runtime::*;

/// Why a configuration could not be loaded. `Display` lists every problem, one per line.
#[derive(Debug)]
pub enum ConfigError {
    Read { path: String, error: String },
    Parse(String),
    Invalid(Vec<String>),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read { path, error } => write!(f, "cannot read {path}: {error}"),
            Self::Parse(e) => write!(f, "{}", e.trim_end()),
            Self::Invalid(errs) => {
                write!(f, "{} error(s):", errs.len())?;
                for e in errs {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let file = parse_file(text)?;
    validate::validate(&file).map_err(ConfigError::Invalid)
}

/// Parses configuration text into the file types without validating.
pub fn parse_file(text: &str) -> Result<file::FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    parse(&text)
}
