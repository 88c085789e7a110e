//! Stage 6: which version of the model serves this request. Until canary routing lands this is
//! always the stable version; the choice is a value of its own so the weighted, sticky split
//! slots in here without reshaping the stages around it.

use crate::state::Route;

/// The version picked for one request; it keeps it to the end, whatever changes meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionChoice {
    /// Index into `Route::versions`.
    pub index: usize,
}

pub fn choose(route: &Route) -> VersionChoice {
    VersionChoice {
        index: route.stable,
    }
}
