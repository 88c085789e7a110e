//! `weighted_round_robin`: nginx's smooth weighted round robin — each replica gets its weight's
//! share, interleaved rather than in bursts (weights 5,1,1 give a a b a c a a, not a a a a a b c).

use std::sync::{Arc, Mutex};

use super::{Balancer, Endpoint};

pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(weights: Vec<u32>) -> Self {
        let weights: Vec<i64> = weights.into_iter().map(|w| i64::from(w.max(1))).collect();
        let current = Mutex::new(vec![0; weights.len()]);
        Self { weights, current }
    }
}

impl Balancer for SmoothWeighted {
    fn pick(&self, endpoints: &[Arc<Endpoint>], tried: &[usize]) -> Option<usize> {
        let n = endpoints.len().min(self.weights.len());
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in (0..n).filter(|i| !tried.contains(i)) {
            current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::endpoint::tests::endpoints;

    #[test]
    fn shares_follow_weights_and_interleave() {
        let eps = endpoints(3);
        let w = SmoothWeighted::new(vec![5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| w.pick(&eps, &[]).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[w.pick(&eps, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn skips_tried_replicas() {
        let eps = endpoints(2);
        let w = SmoothWeighted::new(vec![100, 1]);
        for _ in 0..20 {
            assert_eq!(w.pick(&eps, &[0]), Some(1));
        }
        assert_eq!(w.pick(&eps, &[0, 1]), None);
    }
}
