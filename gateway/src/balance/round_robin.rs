//! `round_robin`: each eligible replica in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickCtx};

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &PickCtx<'_>) -> Option<usize> {
        let n = ctx.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .find(|&i| ctx.eligible(i))
    }
}
