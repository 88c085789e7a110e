//! `least_inflight`: the eligible replica with the fewest requests in flight per unit of
//! weight; ties are broken at random (never "first in the list wins", which would pile every
//! burst onto replica 0).

use super::{Balancer, PickCtx};

#[derive(Default)]
pub struct LeastInflight;

impl Balancer for LeastInflight {
    fn pick(&self, ctx: &PickCtx<'_>) -> Option<usize> {
        let mut best: Option<(usize, u64, u64)> = None; // (index, inflight, weight)
        let mut ties = 0u32;
        for i in (0..ctx.endpoints.len()).filter(|&i| ctx.eligible(i)) {
            let load = ctx.endpoints[i].inflight() as u64;
            let w = u64::from(ctx.weight(i));
            match best {
                // load_i / w_i < load_b / w_b, compared without division.
                Some((_, bl, bw)) if load * bw > bl * w => {}
                Some((_, bl, bw)) if load * bw == bl * w => {
                    // Reservoir sampling: each of k tied replicas wins with probability 1/k.
                    ties += 1;
                    if fastrand::u32(..ties) == 0 {
                        best = Some((i, load, w));
                    }
                }
                _ => {
                    best = Some((i, load, w));
                    ties = 1;
                }
            }
        }
        best.map(|(i, _, _)| i)
    }
}
