//! `p2c_ewma`: power of two choices over cost = (in-flight + 1) × latency EWMA ÷ weight, where
//! the latency is a stream's time to first token or a non-stream's response time. Two random
//! eligible replicas are compared and the cheaper one wins: nearly as good as scanning all of
//! them, without every gateway instance herding onto the same "best" replica.

use super::{Balancer, PickCtx};

#[derive(Default)]
pub struct P2cEwma;

/// Random draws tried before falling back to counting the eligible replicas.
const DRAWS: usize = 8;

impl Balancer for P2cEwma {
    fn pick(&self, ctx: &PickCtx<'_>) -> Option<usize> {
        let n = ctx.endpoints.len();
        let (a, b) = match two_by_drawing(ctx, n) {
            Some(pair) => pair,
            None => two_by_counting(ctx, n)?,
        };
        let Some(b) = b else { return Some(a) };
        let cost = |i: usize| ctx.endpoints[i].cost(ctx.now, ctx.decay, ctx.weight(i));
        let (ca, cb) = (cost(a), cost(b));
        Some(if ca < cb || (ca == cb && fastrand::bool()) {
            a
        } else {
            b
        })
    }
}

/// Usually almost every replica is eligible: a few random draws find two in O(1).
fn two_by_drawing(ctx: &PickCtx<'_>, n: usize) -> Option<(usize, Option<usize>)> {
    if n < 2 {
        return None;
    }
    let mut first = None;
    for _ in 0..DRAWS {
        let i = fastrand::usize(..n);
        if first == Some(i) || !ctx.eligible(i) {
            continue;
        }
        match first {
            None => first = Some(i),
            Some(a) => return Some((a, Some(i))),
        }
    }
    None
}

/// Exact: two distinct eligible replicas uniformly at random (or the only one), in two passes.
fn two_by_counting(ctx: &PickCtx<'_>, n: usize) -> Option<(usize, Option<usize>)> {
    let count = (0..n).filter(|&i| ctx.eligible(i)).count();
    match count {
        0 => return None,
        1 => return (0..n).find(|&i| ctx.eligible(i)).map(|i| (i, None)),
        _ => {}
    }
    let r1 = fastrand::usize(..count);
    let mut r2 = fastrand::usize(..count - 1);
    if r2 >= r1 {
        r2 += 1;
    }
    let (mut a, mut b) = (None, None);
    for (rank, i) in (0..n).filter(|&i| ctx.eligible(i)).enumerate() {
        if rank == r1 {
            a = Some(i);
        }
        if rank == r2 {
            b = Some(i);
        }
    }
    Some((a?, Some(b?)))
}
