//! Stage 5: the request's `model` (a name or an alias) to its `Route`.

use std::sync::Arc;

use crate::error::GatewayError;
use crate::state::{Route, Snapshot};

pub fn resolve(snapshot: &Snapshot, model: &str) -> Result<Arc<Route>, GatewayError> {
    snapshot
        .routes
        .get(model)
        .cloned()
        .ok_or_else(|| GatewayError::ModelNotFound(model.to_owned()))
}
