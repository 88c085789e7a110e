//! `round_robin`: each replica in turn, skipping those already tried for this request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Balancer, Endpoint};

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(&self, endpoints: &[Arc<Endpoint>], tried: &[usize]) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start.wrapping_add(i)) % n)
            .find(|i| !tried.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::endpoint::tests::endpoints;

    #[test]
    fn cycles_through_all_replicas_evenly() {
        let eps = endpoints(3);
        let rr = RoundRobin::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[rr.pick(&eps, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn never_picks_a_tried_replica_and_ends_when_all_are_tried() {
        let eps = endpoints(3);
        let rr = RoundRobin::default();
        for _ in 0..10 {
            let a = rr.pick(&eps, &[]).unwrap();
            let b = rr.pick(&eps, &[a]).unwrap();
            assert_ne!(a, b);
            let c = rr.pick(&eps, &[a, b]).unwrap();
            assert!(c != a && c != b);
            assert_eq!(rr.pick(&eps, &[a, b, c]), None);
        }
        assert_eq!(rr.pick(&[], &[]), None);
    }
}
