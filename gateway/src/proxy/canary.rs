//! Stage 6: which version serves this request — the canary with probability weight/100
//! (sticky clients by a stable hash of their key or a header), otherwise stable; or the
//! version the client pinned with `model = "name@version"`. The choice is made once, from the
//! snapshot the request started with, and kept to the end whatever changes meanwhile.

use crate::fields::Fields;

use crate::auth::Principal;
use crate::canary::split;
use crate::config::Sticky;
use crate::state::Route;

/// Which arm a request is on (access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Stable,
    Canary,
    Pinned,
}

/// The version picked for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionChoice {
    /// Index into `Route::versions`.
    pub index: usize,
    pub arm: Arm,
}

pub fn choose(
    route: &Route,
    pinned: Option<usize>,
    principal: &Principal,
    headers: &Fields,
) -> VersionChoice {
    if let Some(index) = pinned {
        return VersionChoice {
            index,
            arm: Arm::Pinned,
        };
    }
    let stable = VersionChoice {
        index: route.stable,
        arm: Arm::Stable,
    };
    let Some(c) = &route.canary else {
        return stable;
    };
    let sticky_id = match &c.sticky {
        Sticky::None => None,
        Sticky::ApiKey => principal.name().map(|n| split::bucket(n.as_bytes())),
        Sticky::Header(h) => headers.get(h.as_str()).map(split::bucket),
    };
    let bucket = sticky_id.unwrap_or_else(split::random_bucket);
    if split::on_canary(c.weight_percent, bucket) {
        VersionChoice {
            index: c.index,
            arm: Arm::Canary,
        }
    } else {
        stable
    }
}
