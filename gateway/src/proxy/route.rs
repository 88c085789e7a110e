//! Stage 5: the request's `model` (a name, an alias, or `name@version` to pin a version) to its
//! `Route`.

use std::sync::Arc;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::state::{Route, Snapshot};

/// The route, and the pinned version's index when the client asked for one.
pub fn resolve(
    snapshot: &Snapshot,
    model: &str,
    principal: &Principal,
    auth_enabled: bool,
) -> Result<(Arc<Route>, Option<usize>), GatewayError> {
    if let Some(route) = snapshot.routes.get(model) {
        return Ok((route.clone(), None));
    }
    let not_found = || GatewayError::ModelNotFound(model.to_owned());
    let (name, version) = model.rsplit_once('@').ok_or_else(not_found)?;
    let route = snapshot.routes.get(name).ok_or_else(not_found)?;
    let index = route
        .versions
        .iter()
        .position(|p| &*p.version == version)
        .ok_or_else(not_found)?;
    let allowed = !auth_enabled || principal.key.as_ref().is_some_and(|k| k.pin_versions);
    if !allowed {
        return Err(GatewayError::PinNotAllowed(model.to_owned()));
    }
    Ok((route.clone(), Some(index)))
}

/// The route of a name or alias (no pins): `GET /v1/models/{id}`.
pub fn resolve_name(snapshot: &Snapshot, model: &str) -> Result<Arc<Route>, GatewayError> {
    snapshot
        .routes
        .get(model)
        .cloned()
        .ok_or_else(|| GatewayError::ModelNotFound(model.to_owned()))
}
