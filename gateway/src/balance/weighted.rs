//! `weighted_round_robin`: nginx's smooth weighted round robin — each replica gets its weight's
//! share, interleaved rather than in bursts (weights 5,1,1 give a a b a c a a, not a a a a a b c).

use std::sync::Mutex;

use super::{Balancer, PickCtx};

pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(n: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; n]),
        }
    }
}

impl Balancer for SmoothWeighted {
    fn pick(&self, ctx: &PickCtx<'_>) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let n = ctx.endpoints.len().min(current.len());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in (0..n).filter(|&i| ctx.eligible(i)) {
            let w = i64::from(ctx.weight(i));
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}
